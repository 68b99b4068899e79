"""Model-level figures from per-stage cycles: throughput, pipeline fill, bottleneck, SRAM.

Used by both modes: the pipelined run passes what the fabric measured, the estimate mode
the plan's closed-form ``cost()``. Pipeline model: stages work concurrently on successive
batches, so a batch leaves the wafer every ``max_i(T_i)`` cycles (the bottleneck stage),
where ``T_i`` = the stage's kernel cycles + its data-moving layout ops + the stream that
brings its input; the first batch needs the sum of the ``T_i`` (the fill).

Weight-streaming mode has its own timeline (`runtime.weight_streaming`).
"""

from __future__ import annotations

from typing import Any

from waferscale.compiler.program import Program
from waferscale.kernels.registry import family


def stage_times(program: Program, cycles: dict[str, float]) -> dict[str, float]:
    inbound: dict[str, float] = {}
    for r in program.routes:
        inbound[r.dst] = max(inbound.get(r.dst, 0.0), r.cycles)
    return {s.name: cycles.get(s.name, s.cost_cycles) + s.move_cycles + inbound.get(s.name, 0.0)
            for s in program.stages}


def period_cycles(program: Program, cycles: dict[str, float]) -> float:
    """Cycles between two batches leaving the pipeline: its slowest stage's time."""
    times = stage_times(program, cycles)
    return max(times.values()) if times else 0.0


def summarize(program: Program, cycles: dict[str, float], *, batch: int, tokens: int,
              sram: dict[str, int] | None = None, busy: dict[str, float] | None = None,
              measured: bool = False) -> dict[str, Any]:
    """The report of one compiled program at the given per-stage cycles."""
    spec = program.spec
    times = stage_times(program, cycles)
    stages = program.stages
    period = period_cycles(program, cycles)
    fill = sum(times.values())
    bottleneck = max(times, key=times.get) if times else ""
    rows = []
    for s in stages:
        per_pe = (sram or {}).get(s.name, s.sram_per_pe)
        rect = program.placement.get(s.name)
        rows.append({
            "stage": s.name, "kind": s.kind, "ops": len(s.nodes), "algorithm": s.algorithm,
            "rect": str(rect) if rect else (f"{s.rect[0]}x{s.rect[1]}"
                                            if family(s.kind).on_wafer else "host"),
            "pes": s.pes, "sram_per_pe": int(per_pe), "sram_bytes": int(per_pe * s.pes),
            "cycles": float(cycles.get(s.name, s.cost_cycles)),
            "cost_cycles": float(s.cost_cycles),
            "cost_agreement": (float(cycles[s.name]) / s.cost_cycles
                               if measured and s.name in cycles and s.cost_cycles else None),
            "stage_cycles": times[s.name],
            "utilisation": (busy or {}).get(s.name, s.cost_cycles / period if period else 0.0)
            * (times[s.name] / period if period and busy else 1.0),
            "flops": s.flops,
        })
    seconds = spec.seconds(period) if period else 0.0
    total_sram = sum(r["sram_bytes"] for r in rows)
    return {
        "stages": rows,
        "period_cycles": period,
        "samples_per_second": batch / seconds if seconds else 0.0,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
        "pipeline_fill_seconds": spec.seconds(fill),
        "latency_seconds": spec.seconds(fill),
        "bottleneck": bottleneck,
        "bottleneck_kind": next((s.kind for s in stages if s.name == bottleneck), ""),
        "sram_bytes": int(total_sram),
        "pes_used": int(sum(s.pes for s in stages)),
        "flops_per_batch": float(sum(s.flops for s in stages)),
    }


__all__ = ["period_cycles", "stage_times", "summarize"]
