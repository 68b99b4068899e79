"""Differential fuzzing, long profile: thousands of random small PyTorch modules through
`waferscale.compile`, compared with eager PyTorch (the suite's fast profile is
tests/test_fuzz_compile.py; the generator and the tolerances are tests/fuzz_graphs.py).

Every case is compiled pipelined, run on the simulated wafer and compared with eager at
the dtype's tolerance, then compiled in estimate mode (``--no-estimate`` skips that);
both reports must be strict JSON. Case ``i`` is ``generate(Random(seed + i))``: a failure
prints its seed and the case, which `check_case` reproduces.

    python benchmarks/bench_fuzz.py --cases 3000 --workers 2
    python benchmarks/bench_fuzz.py --repro 1234      # one seed, verbose

Prints cases/s, mismatches (beyond tolerance) and crashes (any exception, or a graph
that does not compile to pipelined mode), the worst error per dtype and the host
fallbacks seen.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_graphs as fg  # noqa: E402


def _init() -> None:
    import torch
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def one(job: tuple[int, int, bool]) -> dict[str, Any]:
    seed, max_ops, estimate = job
    case = fg.generate(fg.Draw.from_random(random.Random(seed)), max_ops=max_ops)
    t0 = time.perf_counter()
    out = fg.check_case(case, estimate=estimate)
    return {"seed": seed, "status": out.status, "detail": out.detail, "error": out.error,
            "dtype": case.dtype, "fallbacks": out.fallbacks, "case": repr(case),
            "seconds": time.perf_counter() - t0, "skipped": out.detail.startswith("skipped")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--workers", type=int, default=max(1, mp.cpu_count()))
    ap.add_argument("--max-ops", type=int, default=6)
    ap.add_argument("--no-estimate", action="store_true", help="skip the estimate-mode compile")
    ap.add_argument("--repro", type=int, default=None, help="run one seed and print it")
    ap.add_argument("--every", type=int, default=100,
                    help="print the running figures every this many cases (a run stopped "
                         "early still says how far it got)")
    args = ap.parse_args(argv)
    if args.repro is not None:
        _init()
        r = one((args.repro, args.max_ops, not args.no_estimate))
        print(r["case"])
        print(r["status"], r["detail"], f"error {r['error']:.3g}", f"{r['seconds']:.1f} s")
        return r
    jobs = [(args.seed + i, args.max_ops, not args.no_estimate) for i in range(args.cases)]
    counts: collections.Counter[str] = collections.Counter()
    worst: dict[str, float] = {}
    fallbacks: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(args.workers, initializer=_init) as pool:
        for i, r in enumerate(pool.imap_unordered(one, jobs, chunksize=4), 1):
            counts[r["status"]] += 1
            counts["skipped"] += r["skipped"]
            worst[r["dtype"]] = max(worst.get(r["dtype"], 0.0), r["error"])
            fallbacks.update(r["fallbacks"])
            if r["status"] != "ok":
                failures.append(r)
                print(f"[{r['status']}] seed {r['seed']}: {r['detail']}\n{r['case']}",
                      flush=True)
            if i % args.every == 0 or i == len(jobs):
                wall = time.perf_counter() - t0
                print(f"{i} cases, {i / wall:.2f} cases/s, {counts['mismatch']} mismatches, "
                      f"{counts['crash']} crashes, worst error/scale "
                      + ", ".join(f"{k} {v:.3g}" for k, v in sorted(worst.items())), flush=True)
    wall = time.perf_counter() - t0
    summary = {"cases": len(jobs), "seconds": wall, "cases_per_second": len(jobs) / wall,
               "ok": counts["ok"], "mismatches": counts["mismatch"],
               "crashes": counts["crash"], "skipped_nonfinite_reference": counts["skipped"],
               "worst_error_over_scale": worst, "workers": args.workers,
               "estimate_mode": not args.no_estimate,
               "host_fallbacks": dict(fallbacks.most_common()),
               "failing_seeds": [f["seed"] for f in failures]}
    print(f"\n{summary['cases']} cases in {wall:,.0f} s on {args.workers} workers: "
          f"{summary['cases_per_second']:.2f} cases/s; {summary['mismatches']} mismatches, "
          f"{summary['crashes']} crashes ({summary['skipped_nonfinite_reference']} skipped: "
          f"float64 result not finite)")
    print("worst |wafer - eager| / scale: " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                         sorted(worst.items())))
    print("host fallbacks (op: cases): " + ", ".join(f"{k} {v}" for k, v in
                                                      fallbacks.most_common(12)))
    return summary


if __name__ == "__main__":
    main()
