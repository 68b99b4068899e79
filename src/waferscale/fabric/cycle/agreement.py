"""Agreement of the fast model with the cycle simulator, primitive by primitive.

For every primitive, grid and message size, both fidelities run the same data: the table
row carries both cycle counts, their relative error (fast - cycle) / cycle, and whether the
values of the two agree with each other and with NumPy. The cycle simulator is the
reference. `implied_formulas` states the closed forms the simulator's hardware model
implies, so a disagreement can be fixed in `waferscale.fabric.timing` by formula.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from waferscale.errors import SramOverflowError
from waferscale.fabric import movement as mv
from waferscale.fabric.cycle import runs
from waferscale.fabric.dtypes import move_wavelets
from waferscale.fabric.grid import Fabric, Rect
from waferscale.fabric.movement import ktree_reduce
from waferscale.fabric.tensor import MeshTensor
from waferscale.hardware.spec import WaferSpec, custom_spec

PRIMITIVES = ("shift", "shift cyclic", "shift fp16", "multicast row", "multicast col",
              "chain reduce", "tree reduce", "ktree reduce", "allreduce", "stream")
GRIDS_FULL = (4, 8, 16, 32, 64)
SIZES_FULL = (1, 4, 16, 64, 256, 1024, 4096)
GRIDS_QUICK = (4, 8, 16)
SIZES_QUICK = (1, 16, 256)
TOLERANCE = 0.05


def default_spec() -> WaferSpec:
    """A WSE-2 PE on a 64 x 64 toy wafer, the largest grid of the table."""
    return custom_spec(name="agreement", rows=64, cols=64)


def _stream_rects(n: int) -> tuple[Rect, Rect]:
    """A 2 x 2 block (1 x 1 on 4 x 4) moved diagonally by half the grid."""
    side = 1 if n <= 4 else 2
    return Rect(0, 0, side, side), Rect(n // 2, n // 2, side, side)


def _fast(spec: WaferSpec, primitive: str, n: int, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Run ``primitive`` on the fast model; return (cycles, values on the compared PEs)."""
    f = Fabric(spec, n, n)
    b = x.shape[-1]
    if primitive in ("shift", "shift cyclic"):
        y = mv.shift(MeshTensor.from_numpy(f, x), "east", 1, primitive == "shift cyclic")
        return float(y.ready.max()), y.to_numpy()
    if primitive == "multicast row":
        t = MeshTensor.from_numpy(f, x[:, 0, :], f.rect(0, 0, n, 1), row_map=0, col_map=None)
        y = mv.multicast(t, f.full, "row")
        return float(y.ready.max()), np.asarray(y.tiles)[:, :, 0]
    if primitive == "multicast col":
        t = MeshTensor.from_numpy(f, x[0, :, :], f.rect(0, 0, 1, n), row_map=None, col_map=0)
        y = mv.multicast(t, f.full, "col")
        return float(y.ready.max()), np.asarray(y.tiles)[:, :, 0]
    if primitive == "shift fp16":
        # 2b 16-bit values per PE moved as b 32-bit words, two values per wavelet
        t = MeshTensor.from_numpy(f, _halves(x), dtype="fp16")
        sender = t.like(t.tiles, t.ready, allocate=False)
        sender.valid = move_wavelets(sender.valid, "fp16", spec.wavelet_bits)
        y = mv.shift(sender, "east", 1)
        return float(y.ready.max()), y.to_numpy().astype(np.float32)
    if primitive in ("chain reduce", "tree reduce"):
        t = MeshTensor(f, f.full, (n, b), "fp32", 0, "partial", x[:, :, None, :])
        y = mv.reduce(t, "row", primitive.split()[0], "first")
        return float(y.ready.max()), y.to_numpy()
    if primitive == "ktree reduce":
        t = MeshTensor(f, f.full, (n, b), "fp32", 0, "partial", x[:, :, None, :])
        y, _ = ktree_reduce(t, "row", 2)
        return float(y.ready.max()), y.to_numpy()
    if primitive == "allreduce":
        t = MeshTensor(f, f.full, (b,), "fp32", "partial", "partial", x)
        y = mv.allreduce(t, "both")
        return float(y.ready.max()), np.asarray(y.tiles)
    if primitive == "stream":
        src, dst = _stream_rects(n)
        t = MeshTensor.from_numpy(f, x[src.slices], rect=src)
        y = mv.stream(t, dst)
        return float(y.ready.max()), y.to_numpy()
    raise ValueError(f"unknown primitive {primitive!r}; use one of {', '.join(PRIMITIVES)}")


def _cycle(spec: WaferSpec, primitive: str, n: int, b: int) -> tuple[runs.PrimitiveRun,
                                                                     np.ndarray]:
    """Run ``primitive`` on the cycle simulator; return the run and the compared values."""
    if primitive in ("shift", "shift cyclic"):
        run = runs.run_shift(spec, n, n, b, "east", 1, primitive == "shift cyclic")
        return run, run.output
    if primitive.startswith("multicast"):
        run = runs.run_multicast(spec, n, n, b, primitive.split()[1], 0)
        return run, run.output
    if primitive == "shift fp16":
        run = runs.run_shift(spec, n, n, b, "east", 1)   # the packed words, bit for bit
        return run, _unpack(run.output)
    if primitive in ("chain reduce", "tree reduce"):
        run = runs.run_reduce(spec, n, n, b, "row", primitive.split()[0], "first")
        return run, run.output[:, 0, :]
    if primitive == "ktree reduce":
        run = runs.run_ktree_reduce(spec, n, n, b, "row", 2)
        root = int(np.flatnonzero(run.mask[0])[0])
        return run, run.output[:, root, :]
    if primitive == "allreduce":
        run = runs.run_allreduce(spec, n, n, b, "both", "chain")
        return run, run.output
    if primitive == "stream":
        src, dst = _stream_rects(n)
        run = runs.run_stream(spec, n, n, b, (src.row, src.col, src.rows, src.cols),
                              (dst.row, dst.col, dst.rows, dst.cols))
        return run, run.output[dst.slices]
    raise ValueError(f"unknown primitive {primitive!r}; use one of {', '.join(PRIMITIVES)}")


def _halves(x: np.ndarray) -> np.ndarray:
    """The 2b fp16 values whose bit patterns are the b float32 words of ``x`` [n, n, b]
    (the packed tile a 16-bit shift moves), as float32 numbers (`to_numpy` storage)."""
    return np.ascontiguousarray(x).view(np.float16).astype(np.float32)


def _unpack(words: np.ndarray) -> np.ndarray:
    """Packed float32 words -> the fp16 values they carry, as float32."""
    return np.ascontiguousarray(words.astype(np.float32)).view(np.float16).astype(np.float32)


def agreement_row(spec: WaferSpec, primitive: str, n: int, b: int, seed: int = 0
                  ) -> dict[str, Any]:
    """One row: both fidelities on an n x n grid with b wavelets per PE."""
    wall = time.perf_counter()
    run, cycle_values = _cycle(spec, primitive, n, b)
    x = np.random.default_rng(seed).standard_normal((n, n, b)).astype(np.float32)
    note = ""
    try:
        fast_cycles, fast_values = _fast(spec, primitive, n, x)
    except SramOverflowError as exc:
        # the fast model keeps intermediates the in-place wavelet program does not; timing
        # does not depend on SRAM size, so compare on a PE with room for them
        note = f"fast model ran with 4x SRAM: {exc}"
        fast_cycles, fast_values = _fast(spec.replace(sram_bytes=4 * spec.sram_bytes),
                                         primitive, n, x)
    error = (fast_cycles - run.cycles) / run.cycles
    finite = np.abs(fast_values[np.isfinite(fast_values)])
    scale = float(finite.max()) if finite.size else 0.0
    return {
        "primitive": primitive,
        "grid": f"{n}x{n}",
        "wavelets": b,
        "fast_cycles": fast_cycles,
        "cycle_cycles": run.cycles,
        "error": error,
        "within_tolerance": abs(error) <= TOLERANCE,
        "values_match_numpy": run.ok(),
        "values_match_fast": bool(np.allclose(
            cycle_values, fast_values, rtol=1e-5, equal_nan=True,
            atol=4e-6 * max(scale, 1e-30))),
        "wall_s": time.perf_counter() - wall,
        "note": note,
    }


def agreement_rows(quick: bool = True, spec: WaferSpec | None = None,
                   primitives: tuple[str, ...] = PRIMITIVES,
                   grids: tuple[int, ...] | None = None, sizes: tuple[int, ...] | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None
                   ) -> list[dict[str, Any]]:
    """The agreement table. ``quick``: 3 grids x 3 sizes (seconds); else 4x4..64x64 and
    1..4096 wavelets (minutes)."""
    spec = spec or default_spec()
    grids = grids or (GRIDS_QUICK if quick else GRIDS_FULL)
    sizes = sizes or (SIZES_QUICK if quick else SIZES_FULL)
    rows = []
    for primitive in primitives:
        for n in grids:
            for b in sizes:
                row = agreement_row(spec, primitive, n, b)
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def agreement_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Max |error| over the rows, the worst row, and whether every row's values agree."""
    worst = max(rows, key=lambda r: abs(r["error"])) if rows else None
    return {"rows": len(rows), "tolerance": TOLERANCE,
            "max_abs_error": abs(worst["error"]) if worst else 0.0,
            "worst": (f"{worst['primitive']} {worst['grid']} x {worst['wavelets']}"
                      if worst else None),
            "within_tolerance": all(r["within_tolerance"] for r in rows),
            "values_agree": all(r["values_match_numpy"] and r["values_match_fast"]
                                for r in rows)}


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'primitive':14s} {'grid':>6s} {'wavelets':>8s} {'fast':>9s} {'cycle':>9s} "
             f"{'error':>8s}  values"]
    for r in rows:
        flag = "" if r["within_tolerance"] else "  <-- over 5%"
        values = "ok" if r["values_match_numpy"] and r["values_match_fast"] else "MISMATCH"
        if r.get("note"):
            values += " (fast model needed more SRAM)"
        lines.append(f"{r['primitive']:14s} {r['grid']:>6s} {r['wavelets']:>8d} "
                     f"{r['fast_cycles']:>9.0f} {r['cycle_cycles']:>9d} "
                     f"{100 * r['error']:>7.2f}%  {values}{flag}")
    return "\n".join(lines)


def implied_formulas() -> dict[str, str]:
    """Closed forms the cycle simulator's model implies (B wavelets, P PEs on a line, H hops,
    T_R = ramp_cycles, hop = hop_cycles, +1 = the CE cycle that reads the first element
    before it can enter the ramp, which HPDC'24 also counts per dependent step)."""
    return {
        "transfer": "B + H*hop + 2*T_R + 1",
        "interleaved": ("share*B + H*hop + 2*T_R + 2 - share, when `share` flows that start "
                        "at consecutive PEs interleave on their busiest link"),
        "shift": "interleaved with H = d, share = min(d, P-d); d = 1: B + hop + 2*T_R + 1",
        "shift cyclic": "max(forward with H = d, wrap with H = P-d), each interleaved",
        "multicast": "B + (P-1)*hop + 2*T_R + 1 (root at one end; else its farthest PE)",
        "chain reduce": "B + (2*T_R + hop + 1)*(P-1)",
        "tree reduce": ("sum over levels l < log2 P of (B + 2**l*hop + 2*T_R + 1) for P a "
                        "power of two; otherwise senders whose subtree is done start early"),
        "ktree reduce": ("per level, groups reduce into their middle member by two chains; "
                         "a stage over h hops is 2*T_R + h*hop + 1 (routers in between pass "
                         "wavelets on, no ramp); a leader takes its lower side, then its upper "
                         "side, whose early wavelets take ramp slots as they queue (up to "
                         "ce_queue_depth + T_R of them, one idle CE cycle each)"),
        "shift fp16": ("a shift of B 32-bit words carrying 2B 16-bit values: the fp32 shift "
                       "of B wavelets"),
        "allreduce": "chain reduce(C) + chain reduce(R) + multicast(R) + multicast(C)",
        "stream": ("interleaved, share = max(min(|dc|, w), min(|dr|, h), 1), for flows along "
                   "one axis; X-then-Y streams can take one cycle more"),
    }
