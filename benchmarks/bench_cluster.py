"""Functional cluster training: the wall time of N simulated systems on Ray vs one.

    .venv/bin/python benchmarks/bench_cluster.py [--model genslm-25m] [--layers 1]
        [--seq 64] [--batch 4] [--steps 3] [--systems 1,4] [--json]

Trains MODEL on the built-in genomes with `waferscale.train.train_on_genomes` once per
system count, the same global batch each time (``--batch``, split over the systems), and
prints per run: the wall time here (Ray's start, the actors' start-up and compile, the
steps), the final loss, the simulated samples/s of the cluster and the largest weight
difference from the one-system run. On one machine the systems share its cores, so N
systems are not N times faster here: the benchmark shows what the engine costs (every
system is a process that imports torch and compiles its model), not the simulated
speed-up (that is `waferscale scaling`).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files

import torch


def run(model: str, systems: int, args: argparse.Namespace) -> dict:
    from waferscale.models import load_model
    from waferscale.runtime.memoryx import OptimizerConfig
    from waferscale.train import Trainer, genome_batches

    fasta = str(files("waferscale.workloads") / "data" / "example_genomes.fasta")
    torch.manual_seed(0)
    m, _, vocab = load_model(model, seq=args.seq, batch=args.batch, layers=args.layers)
    batches = genome_batches(fasta, vocab, seq=args.seq, batch=args.batch)
    t0 = time.perf_counter()
    trainer = Trainer(m, batches, OptimizerConfig("sgd", lr=1e-3), mode="weight_streaming",
                      max_side=args.max_side, systems=systems)
    started = time.perf_counter() - t0
    steps = []
    for r in trainer.run(args.steps):
        steps.append(r)
    trainer.close()
    torch._dynamo.reset()
    return {"systems": systems, "wall_seconds": time.perf_counter() - t0,
            "start_seconds": started, "step_wall_seconds": [r.wall_seconds for r in steps],
            "losses": [r.loss for r in steps],
            "samples_per_second_simulated": steps[-1].samples_per_second,
            "weights": [p.detach().clone() for p in m.parameters()]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="genslm-25m")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-side", type=int, default=32)
    ap.add_argument("--systems", default="1,4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run(args.model, int(n), args) for n in args.systems.split(",")]
    ref = rows[0]["weights"]
    for r in rows:
        w = r.pop("weights")
        r["max_weight_difference_vs_first"] = max(float((a - b).abs().max())
                                                  for a, b in zip(w, ref, strict=True))
    if args.json:
        print(json.dumps({"model": args.model, "layers": args.layers, "seq": args.seq,
                          "global_batch": args.batch, "steps": args.steps, "runs": rows},
                         indent=1))
        return
    print(f"{args.model} ({args.layers} layer(s)), seq {args.seq}, global batch "
          f"{args.batch}, {args.steps} steps, SGD")
    for r in rows:
        print(f"  {r['systems']} system(s): {r['wall_seconds']:.1f} s here (start "
              f"{r['start_seconds']:.1f} s; steps "
              f"{', '.join(f'{s:.2f}' for s in r['step_wall_seconds'])} s), loss "
              f"{r['losses'][-1]:.5f}, simulated {r['samples_per_second_simulated']:,.1f} "
              f"samples/s, max |w - w(first)| {r['max_weight_difference_vs_first']:.2e}")


if __name__ == "__main__":
    main()
