"""Peak host memory (RSS) of the demo and of functional runs: the issue's goal is under 4 GB
for GenSLM-25M at 10,240 tokens.

The measured command runs in a child process of its own, so its peak is its own, not
this script's: ``/usr/bin/time -v``'s "Maximum resident set size" when GNU time is
installed, else the kernel's ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the same figure
for the one child this script waits for).

    python benchmarks/bench_memory.py                 # the functional run, 10,240 tokens
    python benchmarks/bench_memory.py --demo          # `waferscale demo --json` itself
    python benchmarks/bench_memory.py --seq 1024 --layers 2

Prints, per run, its peak RSS in GB, its wall time, and whether it is under the goal.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from typing import Any

GOAL_GB = 4.0

#: The functional run: `report.compile.run_report` (compile, the run on the simulated
#: wafer with values, the loss stage, eager PyTorch beside it), what `waferscale run` and
#: the demo's first part do.
RUN = """
import sys, torch
from waferscale.report.compile import run_report
from waferscale.workloads import data_path
seq, layers = int(sys.argv[1]), (int(sys.argv[2]) or None)
r = run_report("genslm-25m", str(data_path("example_genomes.fasta")), seq=seq, batch=1,
               layers=layers)
print("loss", r["loss"], "eager", r["eager_loss"])
"""


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` to completion; its peak RSS (GB), wall time and exit status."""
    timed = shutil.which("time")
    full = [timed, "-v", *cmd] if timed else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    peak_kb = None
    if timed:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak_kb = int(m.group(1)) if m else None
    if peak_kb is None:
        import resource
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    tail = (proc.stderr if proc.returncode else proc.stdout).strip().splitlines()[-1:]
    return {"command": " ".join(cmd), "peak_rss_gb": peak_kb / 1e6, "wall_s": wall,
            "exit_status": proc.returncode, "last_line": tail[0][:200] if tail else "",
            "under_goal": peak_kb / 1e6 < GOAL_GB}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=10240, help="tokens (functional run)")
    ap.add_argument("--layers", type=int, default=0, help="layers (0: all 8)")
    ap.add_argument("--demo", action="store_true", help="measure `waferscale demo --json`")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    if args.demo:
        cmd = [sys.executable, "-c", "import sys; from waferscale.cli import main; "
               "sys.exit(main())", "demo", "--json"]
    else:
        cmd = [sys.executable, "-c", RUN, str(args.seq), str(args.layers)]
    r = measure(cmd)
    what = "waferscale demo --json" if args.demo else \
        f"functional run, GenSLM-25M, {args.seq:,} tokens, {args.layers or 8} layers"
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        verdict = "under" if r["under_goal"] else "OVER"
        print(f"{what}: peak RSS {r['peak_rss_gb']:.2f} GB ({verdict} the {GOAL_GB:.0f} GB "
              f"goal), {r['wall_s']:.0f} s wall, exit {r['exit_status']}"
              f"{'' if r['exit_status'] == 0 else ': ' + r['last_line']}")
    return [r]


if __name__ == "__main__":
    main()
