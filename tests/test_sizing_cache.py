"""The placer's sizing memo kept across compiles (`compiler.sizing_cache`): a compile that
reads it reports exactly what one that sizes every rectangle does, it is written once,
keyed by the wafer spec and the plan's stages, and a broken entry is a miss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from report_fields import without_wall_clock

from waferscale import disk_cache
from waferscale.compiler import sizing_cache
from waferscale.hardware.spec import get_spec
from waferscale.report.compile import compile_report


def _report(spec: str = "wse2") -> dict[str, Any]:
    return compile_report("genslm-25m", seq=64, batch=1, estimate=True, strict=False,
                          layers=2, spec=spec)


@pytest.fixture
def sizings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WAFERSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WAFERSCALE_NO_CACHE", raising=False)
    return tmp_path / sizing_cache.KIND


def test_hit_reports_what_sizing_every_rectangle_does(
        sizings: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = _report()
    (entry,) = sizings.glob("*.pkl")
    memo = sizing_cache.load(entry.stem)
    assert sizing_cache.entries(memo) > len(memo) > 0
    written = entry.stat().st_mtime_ns
    assert without_wall_clock(_report()) == without_wall_clock(fresh)
    assert entry.stat().st_mtime_ns == written          # read, not written again
    monkeypatch.setenv("WAFERSCALE_NO_CACHE", "1")
    assert without_wall_clock(_report()) == without_wall_clock(fresh)   # no cache: the same


def test_keyed_by_spec(sizings: Path) -> None:
    _report("wse2")
    _report("wse3")
    assert len(list(sizings.glob("*.pkl"))) == 2
    stages = [("stage", (), None)]
    assert sizing_cache.key(get_spec("wse2"), stages) != sizing_cache.key(get_spec("wse3"),
                                                                           stages)


def test_broken_entry_is_a_miss(sizings: Path) -> None:
    fresh = _report()
    (entry,) = sizings.glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:100])         # truncated
    assert without_wall_clock(_report()) == without_wall_clock(fresh)
    assert entry.stat().st_size > 100                   # rewritten whole
    disk_cache.write(sizing_cache.KIND, entry.stem, b"\x80\x05N.")   # a pickled None
    assert sizing_cache.load(entry.stem) == {}
    assert not entry.exists()                           # removed as unreadable


def test_keys_digest_the_package_and_nothing_else() -> None:
    """The source digest reads the waferscale package's own files: not the folder above it
    (in an installed tree that is site-packages, every library's source)."""
    import waferscale

    package = Path(waferscale.__file__).resolve().parent
    files = disk_cache.source_files()
    assert files and all(package in f.parents for f in files)
    names = {f.relative_to(package).as_posix() for f in files}
    assert {"disk_cache.py", "compiler/sizing_cache.py", "kernels/gemm.py"} <= names
