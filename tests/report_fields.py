"""What two compile reports of the same inputs may differ in: their wall-clock figures.
Tests of the disk caches compare a cached compile's report with a fresh one's through
`without_wall_clock`."""

from __future__ import annotations

from typing import Any

#: Wall-clock figures: the only ones a cache may change.
WALL = {"compile_seconds", "place_seconds", "wall_s"}


def without_wall_clock(x: Any) -> Any:
    """A report (nested dicts and lists) without its `WALL` figures."""
    if isinstance(x, dict):
        return {k: without_wall_clock(v) for k, v in x.items() if k not in WALL}
    if isinstance(x, list):
        return [without_wall_clock(v) for v in x]
    return x
