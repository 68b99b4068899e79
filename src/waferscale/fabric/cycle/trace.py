"""What happened, cycle by cycle (small runs) and PE by PE (any run).

The trace lists every wavelet that crossed a link or a ramp, with its cycle, PE, port,
colour and value, plus the compute engines' task starts and vector instruction starts and
ends: enough to follow one wavelet through the fabric by hand. The summary counts, for each
PE, the cycles it was busy, stalled on the fabric (an instruction in flight waiting for a
wavelet or for queue space), or idle. (A memory-stall row is kept for a finer memory
model; with memory as in-order bandwidth a PE denied memory has used it, so it is busy.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.fabric.cycle.ports import DELTA, NAMES, R


@dataclass(frozen=True)
class Event:
    """One traced event. ``kind``: link (router output port), send (CE onto the ramp),
    recv (CE took a wavelet from its queue), task (task started), start/end (vector op)."""

    cycle: int
    kind: str
    pe: tuple[int, int]
    color: int | None = None
    value: float | None = None
    port: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f"PE ({self.pe[0]},{self.pe[1]})"
        if self.kind == "link":
            if self.port == "R":
                what = f"{where} router -> CE ramp"
            else:
                p = NAMES.index(self.port or "N")
                to = (self.pe[0] + DELTA[p][0], self.pe[1] + DELTA[p][1])
                what = f"{where} -{self.port}-> ({to[0]},{to[1]})"
            return f"cycle {self.cycle:5d}  {what:34s} colour {self.color:2d}  {self.value:g}"
        if self.kind == "send":
            return (f"cycle {self.cycle:5d}  {where + ' CE -> ramp':34s} colour {self.color:2d}  "
                    f"{self.value:g}")
        if self.kind == "recv":
            return (f"cycle {self.cycle:5d}  {where + ' CE <- queue':34s} colour {self.color:2d}  "
                    f"{self.value:g}")
        return f"cycle {self.cycle:5d}  {where} {self.kind} {self.detail}"


@dataclass
class Trace:
    """Events of a run in cycle order (links before CE events within a cycle)."""

    events: list[Event] = field(default_factory=list)
    truncated: bool = False

    def lines(self, limit: int | None = None, kinds: tuple[str, ...] | None = None) -> list[str]:
        chosen = [e for e in self.events if kinds is None or e.kind in kinds]
        return [str(e) for e in chosen[:limit]]

    def links(self) -> list[Event]:
        return [e for e in self.events if e.kind == "link"]

    def to_records(self) -> list[dict[str, Any]]:
        return [e.__dict__.copy() for e in self.events]


def build_trace(link_rec: list[tuple[Any, ...]], ce_rec: list[tuple[Any, ...]], cols: int,
                op_names: list[str], task_names: list[str], limit: int) -> Trace:
    """Expand the simulator's per-cycle vectors into events, keeping the first ``limit``."""
    events: list[Event] = []
    for t, pes, ports, colors, values in link_rec:
        for pe, port, color, value in zip(pes, ports, colors, values, strict=True):
            events.append(Event(int(t), "link", (int(pe) // cols, int(pe) % cols), int(color),
                                float(value), NAMES[int(port)] if port != R else "R"))
    for t, kind, pes, what, values in ce_rec:
        for j, pe in enumerate(pes):
            where = (int(pe) // cols, int(pe) % cols)
            if kind in ("send", "recv"):
                events.append(Event(int(t), kind, where, int(what[j]), float(values[j])))
            elif kind == "task":
                events.append(Event(int(t), kind, where, detail=task_names[int(what)]))
            else:
                events.append(Event(int(t), kind, where, detail=op_names[int(what)]))
    order = {"task": 0, "start": 1, "recv": 2, "send": 3, "link": 4, "end": 5}
    events.sort(key=lambda e: (e.cycle, order[e.kind], e.pe))
    return Trace(events[:limit], truncated=len(events) > limit)


def summary_table(stats: dict[str, np.ndarray], cycles: int) -> str:
    """A per-PE grid of busy %, plus totals of each state (fits a terminal up to ~16 cols)."""
    busy = stats["busy"]
    rows, cols = busy.shape
    lines = [f"per-PE busy % over {cycles} cycles (rows x cols = {rows} x {cols})"]
    if cols <= 16 and rows <= 32:
        pct = 100.0 * busy / max(cycles, 1)
        for r in range(rows):
            lines.append(" ".join(f"{v:5.1f}" for v in pct[r]))
    total = rows * cols * max(cycles, 1)
    for name in ("busy", "fabric_stall", "memory_stall", "idle"):
        lines.append(f"{name:13s} {int(stats[name].sum()):>10d} PE-cycles "
                     f"({100.0 * stats[name].sum() / total:5.1f}%)")
    return "\n".join(lines)
