"""Training on the simulated wafer against eager PyTorch: loss curves and wall time.

    .venv/bin/python benchmarks/bench_train.py [--model genslm-25m] [--steps 20]
        [--seq 1024] [--layers N] [--mode auto]

Trains MODEL on the built-in genomes with `waferscale.train.train_on_genomes` (forward and
backward graphs on the simulated wafer, the optimizer in MemoryX) and the same steps in
eager PyTorch, and prints per step both losses and the wall time of each side here, the
simulated samples/s, and the ratios of the totals and of the best steps (the simulator's
overhead; both run on this machine in the same process; the first wafer step compiles).
"""

from __future__ import annotations

import argparse
import json
from importlib.resources import files

from waferscale.train import train_on_genomes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="genslm-25m")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    fasta = str(files("waferscale.workloads") / "data" / "example_genomes.fasta")
    rep = train_on_genomes(args.model, fasta, steps=args.steps, batch=args.batch,
                           seq=args.seq, lr=args.lr, mode=args.mode, layers=args.layers,
                           eager=True)
    if args.json:
        print(json.dumps(rep, indent=1, default=str))
        return
    print(f"{args.model} seq {args.seq} batch {args.batch} layers {args.layers or 'all'}: "
          f"mode {rep['mode']}, {rep['parameters']:,} parameters")
    print("step  wafer loss   eager loss   |diff|     wafer s   eager s")
    for i, (a, b, wa, we) in enumerate(zip(rep["losses"], rep["eager_losses"],
                                            rep["step_wall_seconds"],
                                            rep["eager_step_wall_seconds"], strict=True), 1):
        print(f"{i:4d}  {a:10.6f}  {b:10.6f}  {abs(a - b):.2e}  {wa:8.2f}  {we:8.2f}")
    print(f"max |loss difference| {rep['max_loss_difference']:.2e}")
    print(f"simulated {rep['samples_per_second']:,.2f} samples/s; wall here: wafer "
          f"{rep['wall_seconds']:.1f} s, eager {rep['eager_wall_seconds']:.1f} s, ratio "
          f"{rep['wall_seconds'] / max(rep['eager_wall_seconds'], 1e-9):.1f}x")
    # the first wafer step also compiles both graphs: the best step is the steady state
    best, best_eager = min(rep["step_wall_seconds"]), min(rep["eager_step_wall_seconds"])
    print(f"best step: wafer {best:.2f} s, eager {best_eager:.2f} s, ratio "
          f"{best / max(best_eager, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
