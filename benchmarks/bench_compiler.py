"""GenSLM-25M forward on the simulated WSE-2: fabric simulation wall time vs eager PyTorch,
and estimate-mode compile time of GenSLM-2.5B and 25B.

    .venv/bin/python benchmarks/bench_compiler.py [--long] [--big]

seq 1,024 runs with values; seq 10,240 (--long) runs timing-only (clocks on a fabric, no
values): with values it would take far longer than eager here. --big times the estimate
compiles (torch.export of the meta model dominates).
"""

from __future__ import annotations

import argparse
import time

import torch

import waferscale
from waferscale.cli_compile import compile_report, load_model


def forward(seq: int, batch: int, values: bool) -> dict[str, float]:
    m, example, _ = load_model("genslm-25m", seq=seq, batch=batch)
    t0 = time.perf_counter()
    cm = waferscale.compile(m, example)
    t1 = time.perf_counter()
    if values:
        cm(**example)
    else:
        cm.time_only(**example)
    t2 = time.perf_counter()
    with torch.no_grad():
        m(**example)
        t3 = time.perf_counter()
        m(**example)
    t4 = time.perf_counter()
    eager = t4 - t3
    rep = cm.report()
    return {"seq": seq, "values": values, "compile_s": t1 - t0, "fabric_wall_s": t2 - t1,
            "eager_wall_s": eager, "ratio": (t2 - t1) / eager,
            "tokens_per_second_wafer": rep["tokens_per_second"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--big", action="store_true")
    args = ap.parse_args()
    print(forward(1024, 1, values=True))
    if args.long:
        print(forward(10240, 1, values=False))
    if args.big:
        for name in ("genslm-2.5b", "genslm-25b"):
            t0 = time.perf_counter()
            r = compile_report(name, seq=2048, batch=1, estimate=True, strict=False)
            print(name, "estimate compile", round(time.perf_counter() - t0, 1), "s", r["mode"],
                  f"{r['samples_per_second']:.3g} samples/s (first-order)")


if __name__ == "__main__":
    main()
