"""Causal attention of GenSLM-25M (hidden 512, 8 heads of 64, rotary 25%) at 1,024 and 10,240
tokens on a WSE-2: simulated cycles and time, wall time, peak SRAM per PE.

The rectangle is 8 columns (one per head) by as many rows as the closed-form cost says is
fastest (smaller query blocks are faster until the K/V stream, not compute, paces the
rows). 1,024 tokens run with real fp16 values and are checked against PyTorch; 10,240
tokens run timing-only (same clocks, no values) unless --values is given.

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


def reference(q, k, v, dtype: str) -> np.ndarray:
    q, k, v = (to_storage(a, dtype).astype(np.float32) for a in (q, k, v))
    rot = rotary.rotary_dims(HEAD_DIM, ROTARY_PCT)
    cos, sin = (t.astype(np.float32) for t in rotary.tables(q.shape[1], rot, 10000.0, dtype))
    q = to_storage(rotary.rotate(q, cos, sin, rot), dtype).astype(np.float32)
    k = to_storage(rotary.rotate(k, cos, sin, rot), dtype).astype(np.float32)
    return torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True).numpy()


def bench(seq: int, dtype: str, values: bool) -> dict[str, float]:
    spec = get_spec("wse2")
    rows = best_rows(spec, seq, dtype)
    fabric = Fabric(spec, rows, HEADS, timing_only=not values)
    rng = np.random.default_rng(0)
    if values:
        q, k, v = (rng.standard_normal((HEADS, seq, HEAD_DIM)).astype(np.float32)
                   for _ in range(3))
    else:
        q = k = v = np.broadcast_to(np.float32(0), (HEADS, seq, HEAD_DIM))
    t0 = time.perf_counter()
    out = at.run(fabric, q, k, v, dtype=dtype, rotary_pct=ROTARY_PCT)
    wall = time.perf_counter() - t0
    stats = fabric.stats()
    t1 = time.perf_counter()
    closed = at.cost(spec, HEADS, seq, HEAD_DIM, (rows, HEADS), dtype=dtype,
                     rotary_pct=ROTARY_PCT)
    cost_wall = time.perf_counter() - t1
    plan = at.plan(spec, HEADS, seq, HEAD_DIM, (rows, HEADS), dtype=dtype,
                   rotary_pct=ROTARY_PCT)
    useful = at.flops(HEADS, seq, HEAD_DIM)
    peak = spec.peak_flops(dtype, pes=rows * HEADS)
    result = {
        "seq": seq, "rows": rows, "cols": HEADS, "block": plan.tq,
        "cycles": stats["cycles"], "cost_cycles": closed,
        "seconds": stats["seconds"], "wall_s": wall, "cost_wall_s": cost_wall,
        "sram_peak": stats["sram_peak_bytes"], "busy": stats["busy_fraction"],
        "efficiency": useful / stats["seconds"] / peak,
        "max_error": float("nan"),
    }
    if values:
        ref = reference(q, k, v, dtype)
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
        r = bench(seq, args.dtype, args.values or seq <= 2048)
        results.append(r)
        err = "timing" if np.isnan(r["max_error"]) else f"{r['max_error']:.1e}"
        print(f"{seq:>6} {r['rows']:>4}x{r['cols']:<4} {r['block']:>5} {r['cycles']:>11,.0f} "
              f"{r['cost_cycles']:>11,.0f} {r['seconds'] * 1e3:>8.3f}ms {r['wall_s']:>6.2f}s "
              f"{r['sram_peak']:>7,.0f} B {r['busy']:>5.2f} {r['efficiency']:>5.1%} {err:>8}")
    print("cycles: simulated on the fabric; cost(): closed form; eff: useful FLOPs / peak of "
          "the PEs used; busy: CE-busy share (causal rows finish early)")
    return results


if __name__ == "__main__":
    main()
