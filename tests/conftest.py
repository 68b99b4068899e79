"""Suite-wide settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _capture_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Estimate compiles cache their captures (`compiler.capture_cache`): the suite's go to
    a temporary directory, not the user's cache (CLI subprocesses inherit it)."""
    before = os.environ.get("WAFERSCALE_CACHE_DIR")
    os.environ["WAFERSCALE_CACHE_DIR"] = str(tmp_path_factory.mktemp("capture-cache"))
    yield
    if before is None:
        os.environ.pop("WAFERSCALE_CACHE_DIR", None)
    else:
        os.environ["WAFERSCALE_CACHE_DIR"] = before
