"""Causal attention of GenSLM-25M (hidden 512, 8 heads of 64, rotary 25%) at 1,024 and 10,240
tokens on a WSE-2: simulated cycles and time, wall time, peak SRAM per PE.

Two layouts per length: "8 cols" is one column per head (K/V shifted down the query
blocks, rotary inside the kernel) with as many rows as the closed-form cost says is
fastest; "best" is `attention.choose_layout` on the whole wafer without rotary (the
compiler applies rotary on the QKV GEMM's rectangle), which folds each head's chain over
columns, streams K/V down it and splits the keys. 1,024 tokens run with real values and
are checked against PyTorch; 10,240 tokens run timing-only (same clocks, no values)
unless --values is given.

    python benchmarks/bench_attention.py [--seqs 1024 10240] [--dtype fp16] [--values]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from waferscale.errors import WaferscaleError
from waferscale.fabric import Fabric
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware import get_spec
from waferscale.kernels import attention as at
from waferscale.kernels import rotary

HEADS, HEAD_DIM, ROTARY_PCT = 8, 64, 0.25


def best_rows(spec, seq: int, dtype: str) -> int:
    """Rows with the lowest closed-form cost among block sizes 1..64 that fit."""
    best, best_cost = 0, float("inf")
    for tq in range(max(1, -(-seq // spec.rows)), 65):
        rows = -(-seq // tq)
        try:
            c = at.cost(spec, HEADS, seq, HEAD_DIM, (rows, HEADS), dtype=dtype,
                        rotary_pct=ROTARY_PCT)
        except WaferscaleError:     # a block size that does not fit: skip it
            continue
        if c < best_cost:
            best, best_cost = rows, c
    return best


def reference(q, k, v, dtype: str, pct: float) -> np.ndarray:
    q, k, v = (to_storage(a, dtype).astype(np.float32) for a in (q, k, v))
    rot = rotary.rotary_dims(HEAD_DIM, pct)
    cos, sin = (t.astype(np.float32) for t in rotary.tables(q.shape[1], rot, 10000.0, dtype))
    q = to_storage(rotary.rotate(q, cos, sin, rot), dtype).astype(np.float32)
    k = to_storage(rotary.rotate(k, cos, sin, rot), dtype).astype(np.float32)
    return torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True).numpy()


def bench(seq: int, dtype: str, values: bool, best: bool = False) -> dict[str, float]:
    spec = get_spec("wse2")
    pct = 0.0 if best else ROTARY_PCT
    if best:
        lay = at.choose_layout(spec, HEADS, seq, HEAD_DIM, max_rows=spec.rows,
                               max_cols=spec.cols, dtype=dtype)
        rows, cols = lay.rows, lay.cols
        how = {"fold": lay.fold, "kv": lay.kv, "split": lay.split}
    else:
        rows, cols, how = best_rows(spec, seq, dtype), HEADS, {}
    fabric = Fabric(spec, rows, cols, timing_only=not values)
    rng = np.random.default_rng(0)
    if values:
        q, k, v = (rng.standard_normal((HEADS, seq, HEAD_DIM)).astype(np.float32)
                   for _ in range(3))
    else:
        q = k = v = np.broadcast_to(np.float32(0), (HEADS, seq, HEAD_DIM))
    t0 = time.perf_counter()
    out = at.run(fabric, q, k, v, dtype=dtype, rotary_pct=pct, **how)
    wall = time.perf_counter() - t0
    stats = fabric.stats()
    t1 = time.perf_counter()
    closed = at.cost(spec, HEADS, seq, HEAD_DIM, (rows, cols), dtype=dtype, rotary_pct=pct,
                     **how)
    cost_wall = time.perf_counter() - t1
    plan = at.plan(spec, HEADS, seq, HEAD_DIM, (rows, cols), dtype=dtype, rotary_pct=pct,
                   **how)
    useful = at.flops(HEADS, seq, HEAD_DIM)
    peak = spec.peak_flops(dtype, pes=rows * cols)
    result = {
        "seq": seq, "layout": ("best: " + ", ".join(f"{k} {v}" for k, v in how.items())
                               if best else "8 cols"),
        "rows": rows, "cols": cols, "block": plan.tq,
        "cycles": stats["cycles"], "cost_cycles": closed,
        "seconds": stats["seconds"], "wall_s": wall, "cost_wall_s": cost_wall,
        "sram_peak": stats["sram_peak_bytes"], "busy": stats["busy_fraction"],
        "efficiency": useful / stats["seconds"] / peak,
        "max_error": float("nan"),
    }
    if values:
        ref = reference(q, k, v, dtype, pct)
        result["max_error"] = float(np.abs(out.to_numpy().astype(np.float32) - ref).max())
    return result


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 10240])
    parser.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--values", action="store_true",
                        help="compute values for every length (slow at 10,240)")
    args = parser.parse_args(argv)
    spec = get_spec("wse2")
    print(f"causal attention, GenSLM-25M heads ({HEADS} x {HEAD_DIM}, rotary "
          f"{ROTARY_PCT:.0%}), {args.dtype}, {spec.name} at {spec.clock_hz / 1e9:g} GHz")
    print(f"{'seq':>6} {'PEs':>9} {'block':>5} {'cycles':>11} {'cost()':>11} {'sim time':>10} "
          f"{'wall':>7} {'SRAM/PE':>9} {'busy':>5} {'eff':>5} {'max err':>8}")
    results = []
    for seq in args.seqs:
        for best in (False, True):
            r = bench(seq, args.dtype, args.values or seq <= 2048, best)
            results.append(r)
            err = "timing" if np.isnan(r["max_error"]) else f"{r['max_error']:.1e}"
            print(f"{seq:>6} {r['rows']:>4}x{r['cols']:<4} {r['block']:>5} "
                  f"{r['cycles']:>11,.0f} {r['cost_cycles']:>11,.0f} "
                  f"{r['seconds'] * 1e3:>8.3f}ms {r['wall_s']:>6.2f}s "
                  f"{r['sram_peak']:>7,.0f} B {r['busy']:>5.2f} {r['efficiency']:>5.1%} "
                  f"{err:>8}  {r['layout']}")
    print("cycles: simulated on the fabric; cost(): closed form; eff: useful FLOPs / peak of "
          "the PEs used; busy: CE-busy share (causal rows finish early)")
    return results


if __name__ == "__main__":
    main()
