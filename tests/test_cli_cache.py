"""`waferscale cache`: where the disk cache is, what it holds, and --clear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from waferscale import disk_cache
from waferscale.cli import app

runner = CliRunner()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WAFERSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WAFERSCALE_NO_CACHE", raising=False)
    return tmp_path


def _json(*args: str) -> dict:
    result = runner.invoke(app, ["cache", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_counts_entries_and_clears_them(root: Path) -> None:
    assert _json() == {"root": str(root), "enabled": True, "folders": [], "entries": 0,
                       "bytes": 0}
    for i in range(3):
        disk_cache.write("rounds", f"r{i}", b"x" * 10)
    disk_cache.write("sizings", "s", b"y" * 100)
    r = _json()
    assert [(f["kind"], f["entries"], f["bytes"]) for f in r["folders"]] == \
        [("rounds", 3, 30), ("sizings", 1, 100)]
    assert (r["entries"], r["bytes"]) == (4, 130)
    cleared = _json("--clear")
    assert cleared["removed"] == 4 and cleared["entries"] == 0 and cleared["bytes"] == 0
    assert disk_cache.read("rounds", "r0") is None


def test_says_when_caching_is_off(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAFERSCALE_NO_CACHE", "1")
    assert _json()["enabled"] is False
    result = runner.invoke(app, ["cache"])
    assert result.exit_code == 0
    assert "off (WAFERSCALE_NO_CACHE)" in " ".join(result.stdout.split())   # rich wraps
