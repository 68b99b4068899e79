"""The capture cache behind estimate compiles of presets (`compiler.capture_cache`): a
compile from a cached capture reports exactly what a fresh capture does, entries are
keyed by the shapes, a broken entry is a miss, and the cache can be turned off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from report_fields import without_wall_clock

from waferscale.compiler import capture_cache
from waferscale.report.compile import compile_report


def _report(seq: int = 64) -> dict[str, Any]:
    return compile_report("genslm-25m", seq=seq, batch=1, estimate=True, strict=False)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WAFERSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WAFERSCALE_NO_CACHE", raising=False)
    return tmp_path / "captures"


def test_hit_reports_what_a_fresh_capture_does(cache: Path) -> None:
    fresh = _report()
    entries = list(cache.glob("*.pkl"))
    assert len(entries) == 1
    cached = _report()
    assert without_wall_clock(cached) == without_wall_clock(fresh)
    assert list(cache.glob("*.pkl")) == entries   # read, not written again


def test_keyed_by_shapes(cache: Path) -> None:
    _report(64)
    _report(128)
    assert len(list(cache.glob("*.pkl"))) == 2
    assert capture_cache.key(model="genslm-25m", seq=64) != \
        capture_cache.key(model="genslm-25m", seq=128)


def test_broken_entry_is_a_miss(cache: Path) -> None:
    fresh = _report()
    (entry,) = cache.glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:100])   # truncated
    assert without_wall_clock(_report()) == without_wall_clock(fresh)
    assert entry.stat().st_size > 100             # rewritten whole


def test_off(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFERSCALE_NO_CACHE", "1")
    assert capture_cache.cache_dir() is None
    _report()
    assert not cache.exists()
