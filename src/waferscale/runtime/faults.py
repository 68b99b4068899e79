"""A core that fails while the stencil runs: detect, remap around it, resume from a checkpoint.

Manufacturing defects are hidden once, before a program starts (`waferscale.hardware.
defects`). A core can also die in the field. The recovery modelled here is the ordinary
checkpoint/restart one, made cheap by the spares:

1. The run proceeds in segments of ``checkpoint_every`` steps. After each segment the state
   (``u``, ``u_prev`` as NumPy arrays, the step count and the cycles so far) is copied out:
   that is the checkpoint. Its boundary is a sync point, so each segment starts on a
   drained fabric and segment cycles simply add up.
2. A fault ``(row, col, step)`` names a *logical* PE of the program rectangle and the
   0-based step during which it fails. It is detected at the end of that step; the steps
   from the last checkpoint up to and including it are thrown away (their values are
   suspect), and their cycles are counted as lost.
3. The physical core behind that PE is added to the defect map and the wafer remapped. The
   logical rectangle is unchanged, so the program's data layout is too; only link costs
   change (a new `Fabric` with the new ``link_extra``). If the row's spares are used up the
   remap raises `SparesExhaustedError` and so does this run: there is nothing to resume on.
   Faults during the same step are detected together at its end: one remap for all of
   them and one recomputation (three faults in one step redo the segment once, not three
   times). The same PE reported twice in a step is one failed core: it takes one spare
   (`DefectMap.with_failed` counts only newly failed cores). A fault on a PE at a later
   step, after that PE was moved to a spare, is the new core failing and takes another.
4. The run resumes from the checkpoint. Values do not depend on link latencies, so the final
   field is bit-identical to a run that never saw the fault; the report proves it.

The leapfrog scheme needs ``u`` and ``u_prev``; `stencil.run` returns both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from waferscale.errors import DefectError
from waferscale.fabric.defective import fabric_from_remap
from waferscale.hardware.defects import DefectMap, Remap
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import stencil


@dataclass(frozen=True)
class Fault:
    """Logical PE ``(row, col)`` fails during 0-based time step ``step``."""

    row: int
    col: int
    step: int


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to resume the stencil: both time levels, the step, cycles so far."""

    step: int
    u: np.ndarray
    u_prev: np.ndarray
    cycles: float


def draw_fault(shape: tuple[int, int, int], steps: int, seed: int) -> Fault:
    """A fault at a uniformly drawn PE of the ``[y, x, z]`` grid and step, from ``seed``."""
    rng = np.random.default_rng(seed)
    y, x, _ = shape
    return Fault(int(rng.integers(y)), int(rng.integers(x)), int(rng.integers(steps)))


def _check_fault(fault: Fault, rows: int, cols: int, steps: int) -> None:
    for name, value, limit in (("row", fault.row, rows), ("col", fault.col, cols),
                               ("step", fault.step, steps)):
        if not isinstance(value, int | np.integer) or not 0 <= value < limit:
            raise DefectError(f"fault field {name} is {value!r}, expected an integer in "
                              f"[0, {limit})")


def _advance(spec: WaferSpec, remap: Remap, cp: Checkpoint, vel: np.ndarray, n: int
             ) -> tuple[Checkpoint, float]:
    """Run ``n`` steps from ``cp`` on the wafer ``remap`` describes; the next checkpoint."""
    y, x, _ = cp.u.shape
    result = stencil.run(fabric_from_remap(spec, remap, y, x), cp.u, cp.u_prev, vel, n)
    return Checkpoint(cp.step + n, result.u, result.u_prev, cp.cycles + result.cycles), \
        result.cycles


def _segmented(spec: WaferSpec, remap: Remap, start: Checkpoint, vel: np.ndarray,
               steps: int, every: int) -> Checkpoint:
    cp = start
    while cp.step < steps:
        cp, _ = _advance(spec, remap, cp, vel, min(every, steps - cp.step))
    return cp


def run_with_faults(spec: WaferSpec | str | None, u0: np.ndarray, u_prev0: np.ndarray,
                    vel: np.ndarray, steps: int, checkpoint_every: int,
                    faults: Fault | Sequence[Fault] | None = None, *, seed: int | None = None,
                    defect_map: DefectMap | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the stencil with checkpoints, surviving run-time core failures.

    ``faults``: one `Fault`, several, or ``None`` to draw one from ``seed`` (no fault if
    ``seed`` is also ``None``). ``defect_map``: the manufacturing defects the run starts
    with (default: a perfect wafer). Returns the final ``u`` and a plain-JSON report:
    per fault its PE, physical core, step, the checkpoint resumed from, the steps
    recomputed and cycles lost by its recovery (shared by the faults of one step:
    ``recovery`` indexes ``recoveries``; ``duplicate`` marks a PE reported twice);
    overall the cycles with and without faults, the extra cycles the new detours cost,
    and the max error against the fault-free run (0 when recovery is right).
    Raises `SparesExhaustedError` when a failed core cannot be remapped.
    """
    spec = get_spec(spec)
    if not isinstance(steps, int) or steps < 1:
        raise DefectError(f"field steps must be a positive integer, got {steps!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise DefectError(f"field checkpoint_every must be a positive integer, got "
                          f"{checkpoint_every!r}")
    u0 = np.asarray(u0, dtype=np.float32)
    y, x, _ = u0.shape
    if faults is None:
        faults = [] if seed is None else [draw_fault(u0.shape, steps, seed)]
    elif isinstance(faults, Fault):
        faults = [faults]
    pending = sorted(faults, key=lambda f: f.step)
    for fault in pending:
        _check_fault(fault, y, x, steps)

    dmap = DefectMap.perfect(spec) if defect_map is None else defect_map
    remap = Remap.from_defects(dmap, spec)
    start = Checkpoint(0, u0, np.asarray(u_prev0, dtype=np.float32), 0.0)
    baseline = _segmented(spec, remap, start, vel, steps, checkpoint_every)

    cp, records, checkpoints = start, [], [0]
    recoveries: list[dict[str, Any]] = []
    defects_before = remap.n_defects
    while cp.step < steps:
        n = min(checkpoint_every, steps - cp.step)
        if pending and pending[0].step < cp.step + n:
            step = pending[0].step
            group = [f for f in pending if f.step == step]    # detected together
            pending = pending[len(group):]
            k = step - cp.step + 1                # steps run until the faults are detected
            fabric = fabric_from_remap(spec, remap, y, x)
            lost = stencil.run(fabric, cp.u, cp.u_prev, vel, k).cycles
            cores = [tuple(int(v) for v in remap.logical_to_physical[f.row, f.col])
                     for f in group]
            dmap, new = dmap.with_failed(cores)
            remap = Remap.from_defects(dmap, spec)      # SparesExhaustedError propagates
            first = len(records)
            for f, (pr, pc) in zip(group, cores, strict=True):
                records.append({"pe": [f.row, f.col], "physical": [pr, pc], "step": f.step,
                                "checkpoint_step": cp.step, "steps_recomputed": k,
                                "cycles_lost": lost, "cycles_kept": cp.cycles,
                                "recovery": len(recoveries),
                                "duplicate": [f.row, f.col] in (r["pe"] for r in
                                                               records[first:])})
            recoveries.append({"step": step, "checkpoint_step": cp.step, "faults": len(group),
                               "cores_failed": new, "steps_recomputed": k,
                               "cycles_lost": lost})
            cp = dataclasses.replace(cp, cycles=cp.cycles + lost)
            continue
        cp, _ = _advance(spec, remap, cp, vel, n)
        checkpoints.append(cp.step)

    lost_total = sum(r["cycles_lost"] for r in recoveries)
    report: dict[str, Any] = {
        "faults": records,
        "fault": records[0] if records else None,
        "recoveries": recoveries,
        "checkpoint_every": checkpoint_every,
        "checkpoints": checkpoints,
        "steps": steps,
        "steps_recomputed": sum(r["steps_recomputed"] for r in recoveries),
        "cycles": cp.cycles,
        "cycles_fault_free": baseline.cycles,
        "cycles_lost": lost_total,
        "detour_extra_cycles": cp.cycles - lost_total - baseline.cycles,
        "defects_before": defects_before,
        "defects_after": remap.n_defects,
        "detour_links_after": remap.summary()["detour_links"],
        "max_error": float(np.max(np.abs(cp.u.astype(np.float64)
                                         - baseline.u.astype(np.float64)))),
    }
    return cp.u, report
