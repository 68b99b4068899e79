"""Pipelined execution: every stage on its own rectangle, values from the kernels' run().

The graph is walked in order. Constants are resident (their SRAM is charged to the stage
that reads them); kernel stages run on a fabric the size of their rectangle (values and
cycles from the fabric); layout nodes run as exact torch relabelings/copies on the values
(their fabric cost was planned as data movement); host fallbacks run in PyTorch and their
inputs and outputs cross the system I/O. Each stage's measured cycles are checked against
the plan's closed-form ``cost()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from waferscale.compiler.ir import Ref, map_refs
from waferscale.compiler.lower import FLASH_CPU
from waferscale.compiler.program import Program
from waferscale.fabric.defective import link_extra_at
from waferscale.hardware.defects import Remap
from waferscale.runtime import kernels_exec as kx
from waferscale.runtime.kernels_exec import StageRun


def _flat_inputs(program: Program, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
    if program.graph.source == "torch.compile":
        leaves = list(args)
    return leaves


def _meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if isinstance(x, (tuple, list)):
        return type(x)(_meta(v) for v in x)
    return x


def _empty(meta: dict[str, Any]) -> Any:
    """A meta tensor (or tuple) standing for a value a timing-only run does not compute."""
    shape, dtype = meta.get("shape"), meta.get("dtype")
    if isinstance(dtype, list):
        return tuple(torch.empty(s, dtype=getattr(torch, d), device="meta")
                     for s, d in zip(shape, dtype, strict=True))
    return torch.empty(shape or [], dtype=getattr(torch, dtype or "float32"), device="meta")


def _norm_stats(x: torch.Tensor, dims: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and rstd outputs of ``native_layer_norm`` over the last ``dims`` axes (the
    kernel computes them; a training graph saves them for its backward), in fp32."""
    axes = list(range(x.dim() - dims, x.dim()))
    xf = x.float()
    return (xf.mean(dim=axes, keepdim=True),
            torch.rsqrt(xf.var(dim=axes, unbiased=False, keepdim=True) + eps))


def stage_link_extra(program: Program, remap: Remap) -> dict[str, np.ndarray]:
    """Each placed stage's ``[4, rows, cols]`` detour cycles on the remapped wafer.

    A stage's kernel grid (``Stage.rect``) sits at the top-left corner of the rectangle the
    floorplanner placed it in, so its links are the remap's links at that corner; the
    wafer-wide array is computed once and sliced per stage.
    """
    full = remap.link_extra_cycles(program.spec.hop_cycles)
    out: dict[str, np.ndarray] = {}
    for st in program.stages:
        r = program.placement.get(st.name)
        if r is None or not st.pes:
            continue
        out[st.name] = link_extra_at(full, r.row, r.col, st.rect[0], st.rect[1])
    return out


def execute(program: Program, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
            *, timing_only: bool = False, remap: Remap | None = None
            ) -> tuple[list[Any], dict[str, StageRun]]:
    """Run the program; returns the flat outputs and what each stage measured.

    ``remap``: run on a defective wafer. Every stage's fabric then charges the detours of
    the links under its placed rectangle (values are unchanged, cycles can only grow).
    """
    if remap is None:
        return _execute(program, args, kwargs, timing_only)
    token = kx.LINK_EXTRA.set(stage_link_extra(program, remap))
    try:
        return _execute(program, args, kwargs, timing_only)
    finally:
        kx.LINK_EXTRA.reset(token)


def _execute(program: Program, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
             timing_only: bool) -> tuple[list[Any], dict[str, StageRun]]:
    g, spec = program.graph, program.spec
    env: dict[str, Any] = {}
    leaves = _flat_inputs(program, args, kwargs or {})
    for name, value in zip(g.user_inputs, leaves, strict=False):
        env[name] = _meta(value) if timing_only else value
    env.update({k: _meta(v) for k, v in g.constants.items()} if timing_only else g.constants)
    runs: dict[str, StageRun] = {}
    stages = {s.name: s for s in program.stages}
    last_of = {s.nodes[-1]: s for s in program.stages}

    def val(x: Any) -> Any:
        return map_refs(x, lambda r: env[r.name])

    for node in g.nodes.values():
        if node.op != "call" or node.name in env:
            continue
        kind = node.meta.get("kind")
        if kind in ("relabel", "move") or (kind == "fallback" and node.short == "getitem"):
            if node.short in ("view", "_unsafe_view"):
                # kernel outputs are dense; a view of them is a reshape (same values)
                x, shape = val(node.args)[:2]
                env[node.name] = torch.reshape(x, shape)
            else:
                env[node.name] = node.fn(*val(node.args), **val(node.kwargs))
            continue
        if kind == "pointwise":
            home = stages.get(node.meta.get("stage", ""))
            if home is not None and home.kind == "gemm":  # fused into the GEMM's stage
                env[node.name] = (_empty(node.meta) if timing_only
                                  else kx.run_epilogue_node(node, env))
                continue
            st = last_of.get(node.name)
            if st is None:
                continue
            outs, run = kx.run_pointwise(spec, st, g, env, timing_only)
            env.update(outs)
            if timing_only:
                env[node.name] = _empty(node.meta)
            runs[st.name] = run
            continue
        st = stages[node.meta["stage"]]
        a = val(node.args)
        if kind == "fallback" or not st.fits:
            env[node.name] = node.fn(*a, **val(node.kwargs))
            runs[st.name] = StageRun(st.cost_cycles, 0, 0.0)
        elif kind == "gemm":
            kw = node.kwargs
            if node.short == "addmm":
                out, run = kx.run_gemm(spec, st, a[1], a[2], a[0], kw.get("alpha", 1.0),
                                       kw.get("beta", 1.0), timing_only)
            else:
                out, run = kx.run_gemm(spec, st, a[0], a[1], None, timing_only=timing_only)
            env[node.name], runs[st.name] = out, run
        elif kind == "attention":
            scale = node.kwargs.get("scale")
            out, runs[st.name] = kx.run_attention(spec, st, a[0], a[1], a[2], scale,
                                                  timing_only)
            if out is not None and node.short == FLASH_CPU:   # (output, row log-sum-exp)
                out = (out, kx.attention_lse(a[0], a[1], scale))
            env[node.name] = out
        elif kind == "layer_norm" and st.kind == "gemm":  # a prologue of the GEMM's stage
            x, shape, w, b, eps = a[:5]
            env[node.name] = (_empty(node.meta) if timing_only else
                              (kx.layer_norm_values(x, w, b, float(eps), st.dtype),
                               *_norm_stats(x, len(shape), float(eps))))
            continue
        elif kind == "layer_norm":
            x, shape, w, b, eps = a[:5]
            out, run = kx.run_layer_norm(spec, st, x, w, b, float(eps), timing_only)
            env[node.name] = None if out is None else (out, *_norm_stats(x, len(shape),
                                                                         float(eps)))
            runs[st.name] = run
        elif kind == "softmax":
            env[node.name], runs[st.name] = kx.run_softmax(spec, st, a[0], timing_only)
        elif kind == "embedding":
            env[node.name], runs[st.name] = kx.run_embedding(spec, st, a[0], a[1], timing_only)
        elif kind == "reduce":
            env[node.name], runs[st.name] = kx.run_reduce(spec, st, a[0], node.meta,
                                                          timing_only)
        elif kind == "cross_entropy":
            env[node.name], runs[st.name] = kx.run_cross_entropy(spec, st, a[0], a[1],
                                                                 timing_only)
        else:
            env[node.name] = node.fn(*a, **val(node.kwargs))
        if timing_only and env.get(node.name) is None:
            env[node.name] = _empty(node.meta)
    outs = [env[o.name] if isinstance(o, Ref) else o for o in g.outputs]
    return outs, runs


__all__ = ["execute", "stage_link_extra"]
