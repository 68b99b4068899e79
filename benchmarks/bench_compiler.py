"""GenSLM-25M forward on the simulated WSE-2: fabric simulation wall time vs eager PyTorch,
and estimate-mode compile time of GenSLM-2.5B and 25B (or of every preset).

    .venv/bin/python benchmarks/bench_compiler.py [--long] [--big | --presets] [--repeats N]

Both sides are timed warm (each runs once first; the fabric's first call also pays
one-time set-up: lazy imports, caches), best of ``--repeats`` runs each, interleaved so
machine noise hits both; the cold first fabric call is printed too. seq 1,024 and, with
--long, seq 10,240 run with values (the attention stage's cycles come from its closed
form on a perfect wafer: see kernels/attention.run_stage). The goal (issue 19): fabric
within 1.5x of eager at both lengths.

--big times estimate compiles of GenSLM-2.5B and 25B from the command line, each in a
fresh process as a user runs it (``waferscale compile NAME --estimate --json``), three
times: with an empty cache (the model is built and exported, every kernel sized), with
the capture cached but not the placer's sizings (`compiler.capture_cache`; the sizings
folder is emptied first: what a compile of a new plan costs), and with both cached
(`compiler.sizing_cache`: what running the same compile again costs). --presets does the
same for every preset. The reference, timed in the same run, is a bare
``python -c "import torch"``: the floor of any command that touches a model. The goal:
under 5 s of wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import waferscale
from waferscale.compiler import sizing_cache
from waferscale.models import PRESETS, load_model


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
    ap.add_argument("--presets", action="store_true", help="time every preset's estimate")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.presets:
        for name, figures in estimates(tuple(PRESETS)).items():
            print(name, figures)
        return
    print(forward(1024, 1, args.repeats))
    if args.long:
        print(forward(10240, 1, args.repeats))
    if args.big:
        print(estimates(("genslm-2.5b", "genslm-25b")))


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def estimates(names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Command-line estimate compiles, fresh, with the capture cached and with the sizings
    cached too, against ``import torch`` (see the module docstring); a private cache
    directory, so earlier runs do not count."""
    cli = str(Path(sys.executable).with_name("waferscale"))
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, WAFERSCALE_CACHE_DIR=cache)
        env.pop("WAFERSCALE_NO_CACHE", None)
        torch_s = _wall([sys.executable, "-c", "import torch"], env)
        out["import torch"] = {"wall_s": round(torch_s, 2)}
        for name in names:
            cmd = [cli, "compile", name, "--estimate", "--json"]
            fresh = _wall(cmd, env)
            shutil.rmtree(Path(cache) / sizing_cache.KIND, ignore_errors=True)
            capture, cached = _wall(cmd, env), _wall(cmd, env)
            out[name] = {"fresh_s": round(fresh, 2), "capture_cached_s": round(capture, 2),
                         "cached_s": round(cached, 2),
                         "capture_cached_vs_import_torch": round(capture / torch_s, 2),
                         "cached_vs_import_torch": round(cached / torch_s, 2)}
    return out


if __name__ == "__main__":
    main()
