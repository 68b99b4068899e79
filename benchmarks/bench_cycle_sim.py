"""Speed of the wavelet-level cycle simulator: simulated PE-cycles per CPU second.

Runs a full-grid allreduce (row chain reduce, column chain reduce, column and row
broadcast) and one 25-point stencil step on 32 x 32 and 64 x 64 grids, checks the numbers
against NumPy, and prints where the time went. Every rate is given as ratios to references
measured in the same run:

* the NumPy reference loop (`ComputeEngines.step` and `Router.step_numpy` from Python
  every cycle, what the compiled loop is tested against bit for bit);
* the NumPy compute engines with the compiled router step (`cejit.router_step`), the
  fastest path before the whole loop was compiled;
* one grid-wide NumPy operation (a float32 add over rows x cols values): a simulated cycle
  costs this many of them, a figure that holds on a busy or a quiet machine alike.

Rates are per CPU second of this process, steadier than wall time when other jobs share
the machine (the wall rate and the load average are printed too), for the fastest of
``--repeat`` compiled runs of each program (default 3); the first run in a process also
pages in fresh memory for its state (40-270 ms of "setup" for the 64 x 64 stencil on the
development VM, against a 0.65 s loop), and its rate is printed beside the fastest.
Issue 19's goal is 1e7 PE-cycles/s on a 64 x 64 program. The last line is the slowest of
the programs' fastest compiled runs: ``PE-cycles/s: <number>``.

    python benchmarks/bench_cycle_sim.py [--wavelets 256] [--nz 64] [--grids 32 64]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from waferscale.fabric.cycle.router import Router
from waferscale.fabric.cycle.runs import run_allreduce, run_shift
from waferscale.fabric.cycle.sim import CycleSim, RunResult
from waferscale.fabric.cycle.stencil import run_stencil
from waferscale.hardware import custom_spec


def numpy_pass_s(pes: int) -> float:
    """CPU seconds of one float32 add over ``pes`` values (fastest of many)."""
    a = np.random.default_rng(0).standard_normal(pes).astype(np.float32)
    out = np.empty_like(a)
    best = float("inf")
    for _ in range(20):
        start = time.process_time()
        for _ in range(200):
            np.add(a, a, out=out)
        best = min(best, (time.process_time() - start) / 200)
    return best


#: how each run steps: (CycleSim.compiled_from_pes, Router.compiled_from_pes)
MODES = {"compiled": (0, 0), "router": (None, 0), "numpy": (None, None)}


def simulate(spec: object, name: str, n: int, args: argparse.Namespace, mode: str
             ) -> tuple[RunResult, bool, str]:
    """One program stepped as ``mode`` says (see `MODES`); (result, values ok, what)."""
    CycleSim.compiled_from_pes, Router.compiled_from_pes = MODES[mode]
    try:
        if name == "allreduce":
            run = run_allreduce(spec, n, n, args.wavelets, "both", "chain")
            return run.result, run.ok(), f"allreduce {args.wavelets} wavelets"
        krun = run_stencil(spec, n, n, args.nz)
        return krun.result, krun.max_error() < 1e-5, f"stencil step nz={args.nz}"
    finally:
        CycleSim.compiled_from_pes, Router.compiled_from_pes = 1024, 1024


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wavelets", type=int, default=256, help="allreduce message size")
    parser.add_argument("--nz", type=int, default=64, help="stencil z-column per PE")
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeat", type=int, default=3,
                        help="compiled runs per program; the fastest is reported (the first "
                             "in a process also pages in fresh memory, printed beside it)")
    args = parser.parse_args(argv)
    spec = custom_spec(name="bench", rows=max(args.grids), cols=max(args.grids))
    for mode in ("compiled", "router"):     # load the compiled code before timing
        CycleSim.compiled_from_pes, Router.compiled_from_pes = MODES[mode]
        run_shift(spec, 2, 2, 2)
    CycleSim.compiled_from_pes, Router.compiled_from_pes = 1024, 1024
    rates = []
    for n in args.grids:
        unit = numpy_pass_s(n * n)
        for name in ("allreduce", "stencil"):
            runs = [simulate(spec, name, n, args, "compiled") for _ in range(args.repeat)]
            result, ok, what = min(runs, key=lambda r: r[0].cpu_s)
            ok = all(r[1] for r in runs) and len({r[0].cycles for r in runs}) == 1
            first = runs[0][0]
            mid, mid_ok, _ = simulate(spec, name, n, args, "router")
            ref, ref_ok, _ = simulate(spec, name, n, args, "numpy")
            rate = result.pe_cycles_per_cpu_s
            mid_rate, ref_rate = mid.pe_cycles_per_cpu_s, ref.pe_cycles_per_cpu_s
            rates.append(rate)
            cost = {k: r.cpu_s / max(r.cycles, 1) / unit
                    for k, r in (("c", result), ("m", mid), ("r", ref))}
            print(f"{n}x{n} {what}: {result.cycles} cycles, {rate:,.0f} PE-cycles per CPU "
                  f"second = {rate / ref_rate:.2f}x the NumPy loop's ({ref_rate:,.0f}), "
                  f"{rate / mid_rate:.2f}x NumPy CEs with the compiled router ({mid_rate:,.0f});"
                  f" a cycle costs {cost['c']:,.0f} grid-wide NumPy adds (NumPy loop: "
                  f"{cost['r']:,.0f}, compiled router only: {cost['m']:,.0f}); "
                  f"{result.pe_cycles_per_s:,.0f} PE-cycles/s wall; values "
                  f"{'ok' if ok and mid_ok and ref_ok else 'WRONG'}")
            for line in result.profile_lines():
                print(f"    {line}")
            print(f"    fastest of {args.repeat} compiled runs; the first in the process: "
                  f"{first.pe_cycles_per_cpu_s:,.0f} PE-cycles per CPU second "
                  f"({', '.join(first.profile_lines())})")
            same = ref.cycles == result.cycles == mid.cycles \
                and ref.link_transfers == result.link_transfers == mid.link_transfers
            if not (ok and mid_ok and ref_ok) or not same:
                print("values disagree with NumPy or between the steps", file=sys.stderr)
                sys.exit(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} CPUs")
    slowest = min(rates)
    print(f"PE-cycles/s: {slowest:.0f}")
    return slowest


if __name__ == "__main__":
    main()
