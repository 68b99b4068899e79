"""The public measurements G1-G12 of docs/gpu.md, predicted from their configuration alone.

Each case states its model, cluster, stack and layout as the source describes them (where
the source leaves a value out, the assumed value is named in the case's note); the model
predicts the figure the source reports, in the source's own FLOP convention. Nothing is
fitted per case: all cases share one set of hardware constants and stack definitions.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from waferscale.baselines.gpu.config import (
    DEEPSPEED_ZERO3_2021,
    MEGATRON_2021,
    MEGATRON_DEEPSPEED_2022,
    MEGATRON_DEEPSPEED_2023,
    Parallel,
    Stack,
)
from waferscale.baselines.gpu.estimate import GpuEstimate, estimate
from waferscale.baselines.gpu.hardware import DGX_A100, DGX_A100_40GB, ClusterSpec, NodeSpec
from waferscale.baselines.gpu.shapes import TransformerShape, gpt

#: Goal of the validation: every numeric case within this relative error.
GOAL = 0.15
SECONDS_PER_DAY = 86400.0
GPT3_TOKENS = 300e9


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    predicted: float | str | None
    measured: float | str
    unit: str
    note: str

    @property
    def error(self) -> float | None:
        """Signed relative error, predicted / measured - 1 (None for a verdict row)."""
        if isinstance(self.predicted, int | float) and isinstance(self.measured, int | float):
            return self.predicted / self.measured - 1.0
        return None

    @property
    def agrees(self) -> bool:
        err = self.error
        if err is None:
            return self.predicted == self.measured
        return abs(err) <= GOAL

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case, "metric": self.metric, "predicted": self.predicted,
                "measured": self.measured, "unit": self.unit, "error": self.error,
                "within_goal": self.agrees, "note": self.note}


def _cluster(node: NodeSpec, gpus: int) -> ClusterSpec:
    return ClusterSpec(node, gpus // node.gpus_per_node)


def _run(shape: TransformerShape, seq: int, node: NodeSpec, stack: Stack,
         layout: Parallel) -> GpuEstimate:
    return estimate(shape, seq, _cluster(node, layout.gpus), stack, layout)


def _tflops(est: GpuEstimate) -> float | None:
    return est.tflops_per_gpu("megatron")


def _days(shape: TransformerShape, seq: int, tokens: float, gpus: int, tflops: float) -> float:
    """Days to train ``tokens`` at ``tflops`` per GPU (Megatron's FLOP count, full
    recompute), the arithmetic of Narayanan et al. section 5.1."""
    flops = shape.megatron_flops_per_token(seq, recompute=True) * tokens
    return flops / (gpus * tflops * 1e12) / SECONDS_PER_DAY


def _layout_note(est: GpuEstimate) -> str:
    return f"{est.stack.name}, {est.cluster.gpu.name}, {est.layout.label()}"


# -- the cases ----------------------------------------------------------------------------
S = 2048
GPT_1_7B = gpt("gpt-1.7b", 24, 2304, 24)
GPT_7_5B = gpt("gpt-7.5b", 36, 4096, 32)
GPT_18_4B = gpt("gpt-18.4b", 40, 6144, 48)
GPT_39_1B = gpt("gpt-39.1b", 48, 8192, 64)
GPT_145_6B = gpt("gpt-145.6b", 80, 12288, 96)
GPT_1T = gpt("gpt-1008b", 128, 25600, 160)
GPT_175B = gpt("gpt-174.6b", 96, 12288, 96)
GPT_530B = gpt("gpt-529.6b", 105, 20480, 128)
#: The long-sequence model of GenSLM's Megatron-DeepSpeed runs (docs/gpu.md): 64 layers,
#: hidden 6144, 64 heads; FFN 4h and the GPT-2 vocabulary padded as Megatron does (assumed).
LONG_25B = TransformerShape("genslm-long-25b", layers=64, hidden=6144, heads=64,
                            ffn=4 * 6144, vocab=51200, positions="rotary",
                            attention_dropout=0.1, hidden_dropout=0.1)


def _weak_scaling(case: str, shape: TransformerShape, t: int, p: int, gpus: int, batch: int,
                  measured: float, aggregate_pflops: float | None = None) -> list[Row]:
    d = gpus // (t * p)
    est = _run(shape, S, DGX_A100, MEGATRON_2021,
               Parallel(tp=t, pp=p, dp=d, micro_batch=1, global_batch=batch, zero=0,
                        recompute="full"))
    tf = _tflops(est)
    note = _layout_note(est) + "; micro-batch 1 assumed (the table does not give it)"
    rows = [Row(case, "TFLOP/s per GPU", tf, measured, "TFLOP/s", note)]
    if aggregate_pflops is not None:
        rows.append(Row(case, "aggregate PFLOP/s", None if tf is None else tf * gpus / 1e3,
                        aggregate_pflops, "PFLOP/s", f"{gpus} GPUs"))
    return rows


def _zero3(case: str, shape: TransformerShape, gpus: int, mb: int, measured: float,
           days: float) -> list[Row]:
    est = _run(shape, S, DGX_A100, DEEPSPEED_ZERO3_2021,
               Parallel(tp=1, pp=1, dp=gpus, micro_batch=mb, global_batch=gpus * mb, zero=3,
                        recompute="full"))
    tf = _tflops(est)
    note = _layout_note(est)
    return [Row(case, "TFLOP/s per GPU", tf, measured, "TFLOP/s", note),
            Row(case, "days for 300B tokens",
                None if tf is None else _days(shape, S, GPT3_TOKENS, gpus, tf), days, "days",
                "from the predicted rate")]


def case_rows() -> list[Row]:
    """Every validation row, G1 to G12, in order."""
    rows: list[Row] = []
    rows += _weak_scaling("G1", GPT_1_7B, 1, 1, 32, 512, 137)
    rows += _weak_scaling("G2", GPT_7_5B, 4, 1, 128, 512, 142)
    rows += _weak_scaling("G3", GPT_18_4B, 8, 1, 256, 1024, 135)
    rows += _weak_scaling("G4", GPT_39_1B, 8, 2, 512, 1536, 138)
    rows += _weak_scaling("G5", GPT_145_6B, 8, 8, 1536, 2304, 148, 227.1)
    rows += _weak_scaling("G6", GPT_1T, 8, 64, 3072, 3072, 163, 502.0)
    rows += _zero3("G7", GPT_175B, 384, 4, 144, 90)
    rows += _zero3("G8", GPT_175B, 1536, 1, 44, 74)
    rows += _zero3("G9", GPT_530B, 2240, 1, 48, 140)
    # G10: PTD-P on 768 GPUs; t = 8 and p = 12 (96 layers in 12 stages of 8) assumed
    est = _run(GPT_175B, S, DGX_A100, MEGATRON_2021,
               Parallel(tp=8, pp=12, dp=8, micro_batch=1, global_batch=1536, recompute="full"))
    tf = _tflops(est)
    rows.append(Row("G10", "TFLOP/s per GPU", tf, 149, "TFLOP/s",
                    _layout_note(est) + "; t=8, p=12 assumed"))
    rows.append(Row("G10", "days for 300B tokens",
                    None if tf is None else _days(GPT_175B, S, GPT3_TOKENS, 768, tf), 43,
                    "days", "from the predicted rate"))
    rows += _long_sequence_rows()
    # G12: the section 5.1 worked example: 1,024 GPUs at the stated 140 TFLOP/s
    rows.append(Row("G12", "days for 300B tokens at 140 TFLOP/s",
                    _days(GPT_175B, S, GPT3_TOKENS, 1024, 140.0), 34, "days",
                    "exact FLOP count (eq. 3) instead of the paper's 8TP/(nX) rounding"))
    est = _run(GPT_175B, S, DGX_A100, MEGATRON_2021,
               Parallel(tp=8, pp=16, dp=8, micro_batch=1, global_batch=1536, recompute="full"))
    tf = _tflops(est)
    rows.append(Row("G12", "days for 300B tokens at the predicted rate",
                    None if tf is None else _days(GPT_175B, S, GPT3_TOKENS, 1024, tf), 34,
                    "days", _layout_note(est) + f"; predicted {tf or 0:.0f} TFLOP/s; t=8, "
                    "p=16 assumed"))
    return rows


def _long_sequence_rows() -> list[Row]:
    """G11: 32 A100-40GB (4 DGX nodes), TP 32, micro-batch 1; the new stack at every length
    the source gives (full recompute: without it 64k and 128k do not fit 40 GB), the old
    stack's out-of-memory verdicts (no recompute assumed)."""
    rows: list[Row] = []
    new = Parallel(tp=32, pp=1, dp=1, micro_batch=1, global_batch=1, recompute="full")
    for seq, measured in ((2048, 68.0), (4096, 80.0), (8192, 86.0), (16384, 92.0),
                          (32768, 100.0), (65536, 106.0), (131072, 119.0)):
        est = _run(LONG_25B, seq, DGX_A100_40GB, MEGATRON_DEEPSPEED_2023, new)
        note = _layout_note(est) + "; Megatron-DeepSpeed's FLOP count (full attention)"
        if not est.fits:
            note += f"; {est.oom_reason}"
        rows.append(Row("G11", f"new stack TFLOP/s per GPU at {seq // 1024}k",
                        _tflops(est), measured, "TFLOP/s", note))
    old = Parallel(tp=32, pp=1, dp=1, micro_batch=1, global_batch=1, recompute="none")
    for seq, verdict in ((4096, "fits"), (8192, "OOM")):
        est = _run(LONG_25B, seq, DGX_A100_40GB, MEGATRON_DEEPSPEED_2022, old)
        rows.append(Row("G11", f"old stack at {seq // 1024}k", "fits" if est.fits else "OOM",
                        verdict, "verdict",
                        _layout_note(est) + f"; {est.memory.total / 2**30:.1f} GiB needed, "
                        f"{est.memory.usable / 2**30:.1f} GiB usable"))
    return rows


def summary(rows: list[Row]) -> dict[str, Any]:
    errors = [r.error for r in rows if r.error is not None]
    absolute = [abs(e) for e in errors]
    verdicts = [r for r in rows if isinstance(r.measured, str)]
    missing = [f"{r.case} {r.metric}" for r in rows
               if r.predicted is None]
    return {
        "numeric_rows": len(errors),
        "median_abs_error": statistics.median(absolute) if absolute else None,
        "median_signed_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(absolute) if absolute else None,
        "within_goal": sum(1 for a in absolute if a <= GOAL),
        "goal": GOAL,
        "verdict_rows": len(verdicts),
        "verdicts_agree": sum(1 for r in verdicts if r.agrees),
        "unpredicted": missing,
    }


def validation_report(rows_fn: Callable[[], list[Row]] = case_rows) -> dict[str, Any]:
    rows = rows_fn()
    return {"rows": [r.to_dict() for r in rows], "summary": summary(rows)}


__all__ = ["GOAL", "Row", "case_rows", "summary", "validation_report"]
