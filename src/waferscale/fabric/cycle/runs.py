"""Run one primitive on a fresh grid with random data and check it against NumPy.

Tests, the agreement table, the benchmark and the tutorial all need "a shift of B wavelets
on an R x C grid, its cycle count and whether the numbers are right"; this is that, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from waferscale.fabric.cycle import collectives as col
from waferscale.fabric.cycle.lines import DIRECTIONS, ColorPool
from waferscale.fabric.cycle.sim import CycleSim, RunResult
from waferscale.fabric.cycle.stream import stream_phase
from waferscale.hardware.spec import WaferSpec

Rect4 = tuple[int, int, int, int]


@dataclass
class PrimitiveRun:
    """A primitive's output next to the NumPy oracle, on the PEs where it is defined."""

    name: str
    output: np.ndarray          # [rows, cols, wavelets]
    expected: np.ndarray        # same shape
    mask: np.ndarray            # [rows, cols]: PEs whose output is compared
    result: RunResult

    @property
    def cycles(self) -> int:
        return self.result.cycles

    def ok(self, rtol: float = 1e-5) -> bool:
        """Equal up to float32 rounding of sums taken in another order: the absolute slack
        scales with the largest value, since a long chain's error does."""
        got, want = self.output[self.mask], self.expected[self.mask]
        scale = float(np.abs(want).max()) if want.size else 0.0
        return bool(np.allclose(got, want, rtol=rtol, atol=4e-6 * max(scale, 1e-30)))


def _setup(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int, seed: int
           ) -> tuple[CycleSim, np.ndarray, ColorPool]:
    sim = CycleSim(spec, rows, cols)
    x = np.random.default_rng(seed).standard_normal((rows, cols, wavelets)).astype(np.float32)
    sim.alloc("x", wavelets, init=x)
    return sim, x, ColorPool(sim.spec.routable_colors)


def _finish(name: str, sim: CycleSim, body: list[Any], out: str, expected: np.ndarray,
            mask: np.ndarray, trace: bool, max_cycles: int) -> PrimitiveRun:
    sim.task("main", body, entry=True)
    result = sim.run(max_cycles=max_cycles, trace=trace)
    return PrimitiveRun(name, sim.read(out).copy(), expected, mask, result)


def run_shift(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
              direction: str = "east", distance: int = 1, cyclic: bool = False,
              seed: int = 0, trace: bool = False, max_cycles: int = 1_000_000) -> PrimitiveRun:
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    sim.alloc("y", wavelets)
    body = col.shift_phase(sim, pool, "x", "y", wavelets, direction, distance, cyclic)
    axis = 1 if DIRECTIONS[direction][0] == "row" else 0
    sign = -1 if DIRECTIONS[direction][1] else 1
    ref = np.roll(x, sign * distance, axis=axis)
    if not cyclic:
        index: list[Any] = [slice(None)] * 3
        index[axis] = slice(0, distance) if sign > 0 else slice(-distance, None)
        ref[tuple(index)] = 0
    return _finish(f"shift {direction} d={distance}{' cyclic' if cyclic else ''}", sim, body,
                   "y", ref, np.ones((rows, cols), dtype=bool), trace, max_cycles)


def run_multicast(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
                  axis: str = "row", root: int = 0, seed: int = 0, trace: bool = False,
                  max_cycles: int = 1_000_000) -> PrimitiveRun:
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    body = col.multicast_phase(sim, pool, "x", wavelets, axis, root)
    src = x[:, root:root + 1] if axis == "row" else x[root:root + 1]
    return _finish(f"multicast {axis}", sim, body, "x", np.broadcast_to(src, x.shape).copy(),
                   np.ones((rows, cols), dtype=bool), trace, max_cycles)


def run_reduce(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
               axis: str = "row", algorithm: str = "chain", root: str = "first",
               seed: int = 0, trace: bool = False, max_cycles: int = 1_000_000
               ) -> PrimitiveRun:
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    body = col.reduce_phase(sim, pool, "x", wavelets, axis, algorithm, root)
    a = 1 if axis == "row" else 0
    length = x.shape[a]
    at = 0 if root == "first" else length - 1
    mask = np.zeros((rows, cols), dtype=bool)
    if a == 1:
        mask[:, at] = True
    else:
        mask[at, :] = True
    expected = np.broadcast_to(x.sum(axis=a, keepdims=True, dtype=np.float64),
                               x.shape).astype(np.float32)
    return _finish(f"{algorithm} reduce {axis}", sim, body, "x", expected, mask, trace,
                   max_cycles)


def run_ktree_reduce(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
                     axis: str = "row", levels: int = 2, seed: int = 0, trace: bool = False,
                     max_cycles: int = 1_000_000) -> PrimitiveRun:
    """The K-tree reduce of every line; compared at each line's root."""
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    body, root = col.ktree_reduce_phase(sim, pool, "x", wavelets, axis, levels)
    a = 1 if axis == "row" else 0
    mask = np.zeros((rows, cols), dtype=bool)
    if a == 1:
        mask[:, root] = True
    else:
        mask[root, :] = True
    expected = np.broadcast_to(x.sum(axis=a, keepdims=True, dtype=np.float64),
                               x.shape).astype(np.float32)
    return _finish(f"k-tree reduce {axis} (K={levels})", sim, body, "x", expected, mask,
                   trace, max_cycles)


def run_allreduce(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
                  axis: str = "row", algorithm: str = "chain", seed: int = 0,
                  trace: bool = False, max_cycles: int = 1_000_000) -> PrimitiveRun:
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    body = col.allreduce_phases(sim, pool, "x", wavelets, axis, algorithm)
    axes = (0, 1) if axis == "both" else ((1,) if axis == "row" else (0,))
    expected = np.broadcast_to(x.sum(axis=axes, keepdims=True, dtype=np.float64),
                               x.shape).astype(np.float32)
    return _finish(f"{algorithm} allreduce {axis}", sim, body, "x", expected,
                   np.ones((rows, cols), dtype=bool), trace, max_cycles)


def run_stream(spec: WaferSpec | str | None, rows: int, cols: int, wavelets: int,
               src: Rect4, dst: Rect4, seed: int = 0, trace: bool = False,
               max_cycles: int = 1_000_000) -> PrimitiveRun:
    sim, x, pool = _setup(spec, rows, cols, wavelets, seed)
    sim.alloc("y", wavelets)
    body = stream_phase(sim, pool, "x", "y", wavelets, src, dst)
    r0, c0, h, w = src
    r1, c1 = dst[0], dst[1]
    expected = np.zeros_like(x)
    expected[r1:r1 + h, c1:c1 + w] = x[r0:r0 + h, c0:c0 + w]
    mask = np.zeros((rows, cols), dtype=bool)
    mask[r1:r1 + h, c1:c1 + w] = True
    return _finish("stream", sim, body, "y", expected, mask, trace, max_cycles)
