"""GenSLM-25M forward on the simulated WSE-2: fabric simulation wall time vs eager PyTorch,
and estimate-mode compile time of GenSLM-2.5B and 25B.

    .venv/bin/python benchmarks/bench_compiler.py [--long] [--big] [--repeats N]

Both sides are timed warm (each runs once first; the fabric's first call also pays
one-time set-up: lazy imports, caches), best of ``--repeats`` runs each, interleaved so
machine noise hits both; the cold first fabric call is printed too. seq 1,024 and, with
--long, seq 10,240 run with values (the attention stage's cycles come from its closed
form on a perfect wafer: see kernels/attention.run_stage). --big times the
estimate compiles (torch.export of the meta model dominates).
"""

from __future__ import annotations

import argparse
import time

import torch

import waferscale
from waferscale.models import load_model
from waferscale.report.compile import compile_report


def forward(seq: int, batch: int, repeats: int) -> dict[str, float]:
    m, example, _ = load_model("genslm-25m", seq=seq, batch=batch)
    t0 = time.perf_counter()
    cm = waferscale.compile(m, example)
    t1 = time.perf_counter()
    cm(**example)
    cold = time.perf_counter() - t1
    fabric, eager = [], []
    with torch.no_grad():
        m(**example)
        for _ in range(repeats):
            t = time.perf_counter()
            cm(**example)
            fabric.append(time.perf_counter() - t)
            t = time.perf_counter()
            m(**example)
            eager.append(time.perf_counter() - t)
    rep = cm.report()
    return {"seq": seq, "compile_s": round(t1 - t0, 2), "fabric_cold_s": round(cold, 3),
            "fabric_wall_s": round(min(fabric), 3), "eager_wall_s": round(min(eager), 3),
            "ratio": round(min(fabric) / min(eager), 2), "mode": rep["mode"],
            "tokens_per_second_wafer": rep["tokens_per_second"],
            "bottleneck": rep.get("bottleneck")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--long", action="store_true")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(forward(1024, 1, args.repeats))
    if args.long:
        print(forward(10240, 1, args.repeats))
    if args.big:
        for name in ("genslm-2.5b", "genslm-25b"):
            t0 = time.perf_counter()
            r = compile_report(name, seq=2048, batch=1, estimate=True, strict=False)
            print(name, "estimate compile", round(time.perf_counter() - t0, 1), "s", r["mode"],
                  f"{r['samples_per_second']:.3g} samples/s ({r['mode']})")


if __name__ == "__main__":
    main()
