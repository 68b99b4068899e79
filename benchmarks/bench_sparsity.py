"""Unstructured weight sparsity on a GPT-sized MLP layer (d = 2048, FFN = 8192) on a WSE-2.

Prints cycles and speedup over dense for 0, 50, 75, 90 and 95% zero weights, for one
token (two GEMVs: [1,2048]x[2048,8192] and [1,8192]x[8192,2048]) and for 2,048 tokens
(two GEMMs of the same weights), next to the ideal 1/(1-s), and says what stops the
speedup from following it.

* 1 token: MeshGEMV on timing-only fabrics of the full size, each W block given a random
  nonzero count (binomial, as an unstructured mask gives), so every PE's FMACs follow its
  own nonzeros and the reduce starts when the slowest PE of each column is done.
* 2,048 tokens: MeshGEMM by `gemm.cost` with a uniform density (a full-size timing-only
  run takes minutes; `--fabric-scale 4` also runs the layer scaled down 4x in every
  dimension on a timing-only fabric with binomial nonzeros per block, which shows the load
  imbalance the uniform closed form leaves out).

The grid is the chooser's pick for the dense layer and stays fixed, so only sparsity
changes; the last column re-runs the chooser with the density (a sparse layer prefers
fewer, fuller PEs).

* Through the compiler (``--fc-layers``, default 34): a CS-1-era fully connected ReLU
  network (``--fc-width`` units per layer) pruned with ``torch.nn.utils.prune`` at 0, 25,
  50, 75 and 90 % unstructured weight sparsity and compiled by `waferscale.compile`. The
  GEMM stages count each weight's nonzeros from its values, skip zero weights where
  sending only the nonzeros is faster, and the fabric run charges every PE its own
  block's nonzeros; the table gives the plan's period, the measured one and how many
  layers skip their zeros.

    python benchmarks/bench_sparsity.py [--dtype fp16] [--seed 0] [--fabric-scale 0]
        [--fc-layers 34] [--fc-width 1024] [--fc-batch 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn.utils import prune

import waferscale
from waferscale.hardware import get_spec
from waferscale.kernels import gemm, gemv
from waferscale.kernels.choose import choose_gemm, choose_gemv

D, FFN, TOKENS = 2048, 8192, 2048
SPARSITY = (0.0, 0.5, 0.75, 0.9, 0.95)
FC_SPARSITY = (0.0, 0.25, 0.5, 0.75, 0.9)
LAYERS = (("up", D, FFN), ("down", FFN, D))


def binomial_nnz(rng: np.random.Generator, shape: tuple[int, int], block: int,
                 density: float) -> np.ndarray:
    """Nonzeros per block of an unstructured mask that keeps each weight with ``density``."""
    return rng.binomial(block, density, size=shape).astype(float)


def token_gemv(spec, dtype: str, rng: np.random.Generator) -> None:
    print(f"\n1 token (GEMV, MeshGEMV K=2), {dtype} with fp32 accumulate, "
          f"timing-only fabric runs")
    plans = {name: choose_gemv(1, k, n, spec=spec, dtype=dtype, algorithms=("ktree",))
             for name, k, n in LAYERS}
    for name, plan in plans.items():
        print(f"  {name}: {plan.describe()}")
    print(f"  {'sparsity':>8} {'cycles':>8} {'speedup':>8} {'ideal':>6} {'compute':>8} "
          f"{'comm':>6} {'wall s':>7} {'rechosen':>9}")
    base = None
    for s in SPARSITY:
        total = comp = 0.0
        wall = time.perf_counter()
        for name, k, n in LAYERS:
            plan = plans[name]
            kb, nb = plan.tiles
            skip = None if s == 0 else "b"
            nnz = None if s == 0 else binomial_nnz(rng, plan.grid, kb * nb, 1 - s)
            r = gemv.run((1, k), (k, n), algorithm="ktree", grid=plan.grid, spec=spec,
                         dtype=dtype, skip=skip, w_nnz=nnz)
            total += r.cycles
            comp += r.compute_cycles
        wall = time.perf_counter() - wall
        rechosen = sum(choose_gemv(1, k, n, spec=spec, dtype=dtype, algorithms=("ktree",),
                                   skip=None if s == 0 else "b", w_density=1 - s).cycles
                       for _, k, n in LAYERS)
        base = base or total
        print(f"  {s:>8.0%} {total:>8.0f} {base / total:>8.2f} {1 / (1 - s):>6.1f} "
              f"{comp:>8.0f} {1 - comp / total:>6.0%} {wall:>7.1f} {base / rechosen:>8.2f}x")
    print("  The partial sums are dense whatever the weights: the K-tree reduce and the "
          "broadcast back\n  do not shrink, so once local FMACs are a small share of the "
          "time (already at 0%:\n  communication dominates a one-token GEMV) the speedup "
          "flattens far below 1/(1-s).")


def tokens_gemm(spec, dtype: str) -> dict[str, gemm.GemmCost]:
    print(f"\n{TOKENS} tokens (GEMM, MeshGEMM), {dtype} with fp32 accumulate, cost() with a "
          f"uniform density")
    plans = {name: choose_gemm(TOKENS, k, n, spec=spec, dtype=dtype, algorithms=("meshgemm",))
             for name, k, n in LAYERS}
    for name, plan in plans.items():
        print(f"  {name}: {plan.describe()}")
    print(f"  {'sparsity':>8} {'cycles':>9} {'speedup':>8} {'ideal':>6}   "
          + "   ".join(f"{name + ' C/L per step':>24}" for name, _, _ in LAYERS)
          + f" {'rechosen':>9}")
    base = None
    dense_costs = {}
    for s in SPARSITY:
        total = 0.0
        parts = []
        for name, k, n in LAYERS:
            c = gemm.cost(TOKENS, k, n, algorithm="meshgemm", grid=plans[name].grid, spec=spec,
                          dtype=dtype, skip=None if s == 0 else "b", b_density=1 - s)
            total += c.cycles
            bound = "compute" if c.compute_cycles >= c.latency_cycles else "delivery"
            parts.append(f"{c.compute_cycles:>5.0f} / {c.latency_cycles:>3.0f} {bound:>8}")
            if s == 0:
                dense_costs[name] = c
        rechosen = sum(choose_gemm(TOKENS, k, n, spec=spec, dtype=dtype,
                                   algorithms=("meshgemm",), skip=None if s == 0 else "b",
                                   b_density=1 - s).cycles for _, k, n in LAYERS)
        base = base or total
        print(f"  {s:>8.0%} {total:>9.0f} {base / total:>8.2f} {1 / (1 - s):>6.1f}   "
              + "   ".join(f"{p:>24}" for p in parts) + f" {base / rechosen:>8.2f}x")
    print("  C: a step's FMACs; L: its delivery if both blocks left together. MeshGEMM "
          "forwards each\n  block as it arrives, so a step costs about max(C, one block's "
          "hop, both blocks through\n  one ramp), below L. Weights travel as (value, "
          "index) nonzeros, but the activation blocks\n  stay dense and every hop pays "
          "ramp and hop latency: once C falls under that floor the\n  step stops "
          "following its FMACs and the speedup leaves 1/(1-s) (here past 75 %).")
    return dense_costs


def tokens_fabric(spec, dtype: str, scale: int, rng: np.random.Generator,
                  full: dict[str, gemm.GemmCost]) -> None:
    """The 2,048-token layer scaled down ``scale``x in every dimension, on the fabric."""
    m, d, f = TOKENS // scale, D // scale, FFN // scale
    print(f"\n{m} tokens, d={d}, FFN={f} (1/{scale} scale, same blocks per PE on "
          f"{', '.join(f'{-(-c.grid // scale)}^2' for c in full.values())} PEs), MeshGEMM on "
          f"timing-only fabrics with binomial nonzeros per block (load imbalance included)")
    # the full-size grid / scale keeps the full-size blocks, so each step is the same work
    grids = {name: -(-full[name].grid // scale) for name in full}
    print(f"  {'sparsity':>8} {'cycles':>9} {'speedup':>8} {'uniform':>9} {'imbalance':>9} "
          f"{'wall s':>7}")
    base = None
    for s in SPARSITY:
        total = uniform = 0.0
        wall = time.perf_counter()
        for name, k, n in LAYERS:
            k, n = k // scale, n // scale
            p = grids[name]
            kb, nb = gemm.blocks(k, p), gemm.blocks(n, p)
            skip = None if s == 0 else "b"
            nnz = None if s == 0 else binomial_nnz(rng, (p, p), kb * nb, 1 - s)
            total += gemm.run((m, k), (k, n), algorithm="meshgemm", grid=p, spec=spec,
                              dtype=dtype, skip=skip, b_nnz=nnz).cycles
            uniform += gemm.cost(m, k, n, algorithm="meshgemm", grid=p, spec=spec,
                                 dtype=dtype, skip=skip, b_density=1 - s).cycles
        wall = time.perf_counter() - wall
        base = base or total
        print(f"  {s:>8.0%} {total:>9.0f} {base / total:>8.2f} {uniform:>9.0f} "
              f"{total / uniform - 1:>+9.1%} {wall:>7.1f}")


def fc_network(layers: int, width: int, sparsity: float, seed: int) -> torch.nn.Module:
    """``layers`` Linear + ReLU layers of ``width`` units, magnitude-pruned (unstructured,
    per layer) to ``sparsity`` zero weights and the pruning made permanent."""
    torch.manual_seed(seed)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width)
        if sparsity:
            prune.l1_unstructured(lin, "weight", amount=sparsity)
            prune.remove(lin, "weight")
        mods += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*mods).eval()


def fc_compiled(spec_name: str, layers: int, width: int, batch: int, seed: int) -> None:
    print(f"\n{layers}-layer fully connected ReLU network, width {width}, batch {batch}, "
          f"fp32, through waferscale.compile (pipelined; measured = fabric run)")
    print(f"  {'sparsity':>8} {'density':>8} {'skipping':>9} {'plan':>9} {'measured':>9} "
          f"{'speedup':>8} {'ideal':>6} {'max err':>8} {'wall s':>7}")
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed))
    base = None
    for s in FC_SPARSITY:
        wall = time.perf_counter()
        model = fc_network(layers, width, s, seed)
        cm = waferscale.compile(model, (x,), spec=spec_name)
        with torch.no_grad():
            err = float((cm(x) - model(x)).abs().max())
        rep = cm.report()
        gemms = [st for st in cm.program.stages if st.kind == "gemm"]
        density = float(np.mean([st.params.b_density for st in gemms]))
        skipping = sum(st.params.skip_weights for st in gemms)
        plan = max(st["cost_cycles"] for st in rep["stages"])
        measured = float(rep["period_cycles"])
        base = base or measured
        print(f"  {s:>8.0%} {density:>8.2f} {skipping:>4}/{len(gemms):<4} {plan:>9.0f} "
              f"{measured:>9.0f} {base / measured:>8.2f} {1 / (1 - s):>6.1f} {err:>8.1e} "
              f"{time.perf_counter() - wall:>7.1f}")
    print("  A pipelined network runs at its slowest layer's period. Skipping zero weights "
          "shortens\n  the FMACs, but fp32 nonzeros travel as (value, index) pairs (two "
          "wavelets each), so\n  a layer skips only where that is faster than sending its "
          "dense blocks.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="wse2")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fabric-scale", type=int, default=0,
                    help="also run the 2,048-token layer this many times smaller on the fabric")
    ap.add_argument("--fc-layers", type=int, default=34,
                    help="layers of the compiled fully connected network (0: skip it)")
    ap.add_argument("--fc-width", type=int, default=1024)
    ap.add_argument("--fc-batch", type=int, default=256)
    args = ap.parse_args()
    spec = get_spec(args.spec)
    rng = np.random.default_rng(args.seed)
    print(f"GPT MLP layer d={D}, FFN={FFN} on {spec.name} at {spec.clock_hz / 1e9:.2f} GHz; "
          f"speedup = dense cycles / sparse cycles, ideal = 1/(1-s)")
    token_gemv(spec, args.dtype, rng)
    dense = tokens_gemm(spec, args.dtype)
    if args.fabric_scale:
        tokens_fabric(spec, args.dtype, args.fabric_scale, rng, dense)
    if args.fc_layers:
        fc_compiled(args.spec, args.fc_layers, args.fc_width, args.fc_batch, args.seed)


if __name__ == "__main__":
    main()
