"""JSON form of a placement (rectangles, routes, colours, figures) for compiled programs.

Plain dicts of ints, floats and strings, so a program file is readable and diffable; the
compiler stores ``to_dict(result)`` and a runtime rebuilds rectangles with ``rects_from``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from waferscale.compiler.floorplan.placer import FloorplanResult
from waferscale.compiler.floorplan.route import DIR_NAMES
from waferscale.fabric.grid import Rect

FORMAT = "waferscale.floorplan/1"


def to_dict(result: FloorplanResult) -> dict[str, Any]:
    p = result.problem
    spec = p.spec
    return {
        "format": FORMAT,
        "spec": {"name": spec.name, "rows": spec.rows, "cols": spec.cols,
                 "routable_colors": spec.routable_colors},
        "reserved": [[r.row, r.col, r.rows, r.cols] for r in p.reserved],
        "blocks": {name: [r.row, r.col, r.rows, r.cols] for name, r in result.rects.items()},
        "routes": [
            {"src": p.nets[r.net].src, "dst": p.nets[r.net].dst, "kind": r.kind,
             "color": r.color, "lanes": r.lanes,
             "bands": [[DIR_NAMES[b.direction], b.rect.row, b.rect.col, b.rect.rows,
                        b.rect.cols, b.load] for b in r.bands]}
            for r in result.routing.routes],
        "quality": result.quality.to_dict(),
        "baseline": result.baseline.to_dict() if result.baseline else None,
        "terms": result.terms,
    }


def rects_from(data: dict[str, Any]) -> dict[str, Rect]:
    """Block name -> Rect from a serialised placement."""
    if data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} placement (format={data.get('format')!r})")
    return {name: Rect(*map(int, v)) for name, v in data["blocks"].items()}


def save(result: FloorplanResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(result), indent=1))


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
