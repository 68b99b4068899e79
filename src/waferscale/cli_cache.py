"""`waferscale cache [--clear] [--json]`: what the on-disk cache holds, and emptying it.

Compiles and runs keep captured graphs, the placer's sizings and stage figures on disk
(`waferscale.disk_cache`); they only ever hold what the code would compute again, so
clearing them costs time, never results. This command shows where they are and how big,
so a user can see what a sweep left behind and reclaim the space.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from waferscale.cli_contract import JsonOpt


def cache_report(clear: bool) -> dict[str, Any]:
    """The cache's root, whether caching is on, each folder's entries and bytes; with
    ``clear``, after deleting every entry (``removed``: the files deleted)."""
    from waferscale import disk_cache

    removed = disk_cache.clear() if clear else 0
    folders = disk_cache.usage()
    report: dict[str, Any] = {
        "root": str(disk_cache.cache_root()), "enabled": disk_cache.enabled(),
        "folders": folders, "entries": sum(f["entries"] for f in folders),
        "bytes": sum(f["bytes"] for f in folders)}
    if clear:
        report["removed"] = removed
    return report


def register(app: typer.Typer) -> None:
    """Add ``cache`` to the main CLI's ``app``."""

    @app.command(name="cache")
    def cache(clear: Annotated[bool, typer.Option(
                  "--clear", help="delete every entry (results never change, only time)")]
              = False,
              json_out: JsonOpt = False) -> None:
        """Where the on-disk cache is (WAFERSCALE_CACHE_DIR), what it holds, and --clear."""
        from waferscale.cli_contract import _emit, _guard, console

        def body() -> None:
            r = cache_report(clear)
            if json_out:
                _emit(r)
                return
            state = "on" if r["enabled"] else "off (WAFERSCALE_NO_CACHE)"
            console.print(f"cache: {r['root']} ({state})")
            for f in r["folders"]:
                console.print(f"  {f['kind']:<10} {f['entries']:>7,} entries "
                              f"{f['bytes'] / 1e6:>9.2f} MB")
            if clear:
                console.print(f"removed {r['removed']:,} files")
            console.print(f"total {r['entries']:,} entries, {r['bytes'] / 1e6:.2f} MB")
        _guard(body)


__all__ = ["cache_report", "register"]
