"""Speed of the wavelet-level cycle simulator: simulated PE-cycles per second of wall time.

Runs a full-grid allreduce (row chain reduce, column chain reduce, column and row
broadcast) and one 25-point stencil step on 32 x 32 and 64 x 64 grids, checks the numbers
against NumPy, and prints where the wall time went. The last line is the slowest run's
rate in wall time: ``PE-cycles/s: <number>``. Each run also shows its rate per CPU second,
which is what to compare when other jobs share the machine (the load average is printed).

    python benchmarks/bench_cycle_sim.py [--wavelets 256] [--nz 64] [--grids 32 64]
"""

from __future__ import annotations

import argparse
import os
import sys

from waferscale.fabric.cycle.runs import run_allreduce
from waferscale.fabric.cycle.stencil import run_stencil
from waferscale.hardware import custom_spec


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wavelets", type=int, default=256, help="allreduce message size")
    parser.add_argument("--nz", type=int, default=64, help="stencil z-column per PE")
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args(argv)
    spec = custom_spec(name="bench", rows=max(args.grids), cols=max(args.grids))
    rates = []
    for n in args.grids:
        for name in ("allreduce", "stencil"):
            if name == "allreduce":
                run = run_allreduce(spec, n, n, args.wavelets, "both", "chain")
                ok, result = run.ok(), run.result
                what = f"allreduce {args.wavelets} wavelets"
            else:
                krun = run_stencil(spec, n, n, args.nz)
                ok, result = krun.max_error() < 1e-5, krun.result
                what = f"stencil step nz={args.nz}"
            rate = result.pe_cycles_per_s
            rates.append(rate)
            print(f"{n}x{n} {what}: {result.cycles} cycles, {result.wall_s:.2f} s wall, "
                  f"{rate:,.0f} PE-cycles/s ({result.pe_cycles_per_cpu_s:,.0f} per CPU "
                  f"second), values {'ok' if ok else 'WRONG'}")
            for line in result.profile_lines():
                print(f"    {line}")
            if not ok:
                print("values disagree with NumPy", file=sys.stderr)
                sys.exit(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} CPUs")
    slowest = min(rates)
    print(f"PE-cycles/s: {slowest:.0f}")
    return slowest


if __name__ == "__main__":
    main()
