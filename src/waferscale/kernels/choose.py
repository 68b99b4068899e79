"""Pick the PE grid, tiling and algorithm for a GEMM or GEMV from the closed-form costs.

Why a search and not a rule: the best grid is where compute per step stops beating
delivery latency, and that depends on the dtype's SIMD width, the SRAM and the algorithm's
route lengths. `cost()` is cheap, so the chooser evaluates every grid that gives a
distinct tile size (more PEs with the same tile only add steps or hops), drops those that
do not fit the 48 KB SRAM or the rectangle, and keeps the fastest (fewest PEs on ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from waferscale.errors import KernelError, KernelFitError
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import gemm, gemv
from waferscale.kernels._common import check_datapath, distinct_parts


@dataclass(frozen=True)
class Plan:
    """The chooser's pick: which algorithm on which grid, with its tiles and cost."""

    kernel: str
    algorithm: str
    grid: Any                      # p (GEMM, a p x p grid) or (rows, cols) (GEMV)
    tiles: tuple[int, ...]         # GEMM (mb, kb, nb); GEMV (kb, nb)
    sram_bytes: int
    cycles: float
    seconds: float
    rect: tuple[int, int]
    considered: int
    cost: Any

    def describe(self) -> str:
        grid = (f"{self.grid}x{self.grid}" if isinstance(self.grid, int)
                else f"{self.grid[0]}x{self.grid[1]}")
        return (f"{self.kernel} {self.algorithm} on {grid} PEs, tiles {self.tiles}, "
                f"{self.sram_bytes} B/PE, {self.cycles:.0f} cycles "
                f"({self.seconds * 1e6:.2f} us)")


def choose_gemm(m: int, k: int, n: int, *, spec: WaferSpec | str | None = None,
                rect: tuple[int, int] | None = None, dtype: str = "fp32",
                accumulate: str | None = "fp32",
                algorithms: Sequence[str] = gemm.ALGORITHMS, skip: str | None = None,
                a_density: float = 1.0, b_density: float = 1.0) -> Plan:
    """The fastest (algorithm, p) for ``[m,k] x [k,n]`` in ``rect`` (default: the wafer)."""
    spec = get_spec(spec)
    check_datapath(gemm.KERNEL, dtype, accumulate)
    rows, cols = rect or (spec.rows, spec.cols)
    limit = min(rows, cols, m, k, n)
    candidates = sorted({p for d in (m, k, n) for p in distinct_parts(d, limit)})
    best: gemm.GemmCost | None = None
    considered = 0
    for algorithm in algorithms:
        for p in candidates:
            if gemm.sram_bytes(m, k, n, p, dtype, accumulate or "fp32", algorithm) \
                    > spec.sram_bytes:
                continue
            c = gemm.cost(m, k, n, algorithm=algorithm, grid=p, spec=spec, dtype=dtype,
                          accumulate=accumulate, skip=skip, a_density=a_density,
                          b_density=b_density)
            considered += 1
            if best is None or (c.cycles, c.grid) < (best.cycles, best.grid):
                best = c
    if best is None:
        smallest = max(limit, 1)
        need = gemm.sram_bytes(m, k, n, smallest, dtype, accumulate or "fp32",
                               algorithms[0] if algorithms else "meshgemm")
        raise KernelFitError(
            f"gemm [{m},{k}]x[{k},{n}] {dtype}: no square grid within the {rows}x{cols} "
            f"rectangle fits the {spec.sram_bytes} B SRAM (the largest, {smallest}x{smallest}"
            f", needs {need} B per PE); use a larger rectangle or split the problem")
    mb, kb, nb = (gemm.blocks(m, best.grid), gemm.blocks(k, best.grid),
                  gemm.blocks(n, best.grid))
    return Plan("gemm", best.algorithm, best.grid, (mb, kb, nb), best.sram_bytes,
                best.cycles, best.seconds, (rows, cols), considered, best)


def choose_gemv(m: int, k: int, n: int, *, spec: WaferSpec | str | None = None,
                rect: tuple[int, int] | None = None, dtype: str = "fp32",
                accumulate: str | None = "fp32",
                algorithms: Sequence[str] = gemv.ALGORITHMS, skip: str | None = None,
                levels: int = 2, x_density: float = 1.0, w_density: float = 1.0) -> Plan:
    """The fastest (algorithm, rows x cols) for ``[m,k] x [k,n]`` in ``rect``.

    Columns are independent lines (the reduction runs down each column), so more columns
    never cost latency: the chooser uses as many as N and the rectangle allow and searches
    the number of rows, which trades local FMACs against reduction length.
    """
    spec = get_spec(spec)
    check_datapath(gemv.KERNEL, dtype, accumulate)
    r_max, c_max = rect or (spec.rows, spec.cols)
    best, considered = gemv.fastest_grid(spec, m, k, n, rect=(r_max, c_max), dtype=dtype,
                                         accumulate=accumulate, algorithms=tuple(algorithms),
                                         skip=skip, levels=levels, x_density=x_density,
                                         w_density=w_density)
    kb, nb = gemv.blocks(k, best.grid[0]), gemv.blocks(n, best.grid[1])
    return Plan("gemv", best.algorithm, best.grid, (kb, nb), best.sram_bytes, best.cycles,
                best.seconds, (r_max, c_max), considered, best)


def choose(op: str, m: int, k: int, n: int, **kwargs: Any) -> Plan:
    """``choose('gemm'|'gemv', m, k, n, ...)``: one entry point for the compiler."""
    if op == "gemm":
        return choose_gemm(m, k, n, **kwargs)
    if op == "gemv":
        return choose_gemv(m, k, n, **kwargs)
    raise KernelError(f"choose: no chooser for op {op!r}; use 'gemm' or 'gemv'")


__all__ = ["Plan", "choose", "choose_gemm", "choose_gemv"]
