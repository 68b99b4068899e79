"""Pipelined execution: every stage on its own rectangle, values from the kernels' run().

The graph is walked in order. Constants are resident (their SRAM is charged to the stage
that reads them); every other node is executed by the kernel family of its kind
(`kernels.registry`): kernel stages run on a fabric the size of their rectangle (values
and cycles from the fabric; a family whose clocks no value changes reads the figures an
earlier stage with the same `family.figures_key` measured, and computes the same values
without the fabric, as the GEMM's rounds do by `gemm._round_key`), nodes fused into
another family's stage give their values only (their cycles are the stage's), host
fallbacks run in PyTorch and their inputs and outputs cross the system I/O. Layout nodes
run as exact torch relabelings/copies on the values (their fabric cost was planned as data
movement). Each stage's measured cycles are checked against the plan's closed-form
``cost()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from waferscale.compiler.program import Program
from waferscale.fabric.defective import link_extra_at
from waferscale.hardware.defects import Remap
from waferscale.ir import Graph, Ref, per_graph
from waferscale.kernels.family import ExecContext, StageRun, is_layout
from waferscale.kernels.registry import HOST, family


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


def _last_uses(g: Graph, stages: dict[str, Any]) -> dict[int, list[str]]:
    """Node position -> the values no node after it reads (never an output). A node in a
    stage counts as reading at the stage's last node, where fused chains run. Freeing
    them as the run goes keeps one layer's activations alive, not the whole model's:
    GenSLM-25M at 10,240 tokens held every intermediate of its 8 layers (about 10 GB)."""
    pos = {name: i for i, name in enumerate(g.nodes)}
    last = {s.name: max((pos[n] for n in s.nodes if n in pos), default=-1)
            for s in stages.values()}
    end = {name: max(pos[name], last.get(node.meta.get("stage", ""), -1))
           for name, node in g.nodes.items()}
    drop: dict[int, list[str]] = {}
    for name, users in g.users().items():
        if users and "<output>" not in users and g.nodes[name].op != "const":
            drop.setdefault(max(end[u] for u in users), []).append(name)
    return drop


#: `_last_uses` of the graphs run in this process (`ir.per_graph`): a training step runs
#: the same two graphs every step, and walking every node's inputs was ~2 % of a step.
_DROPS: dict[int, dict[int, list[str]]] = {}


def execute(program: Program, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
            *, timing_only: bool = False, remap: Remap | None = None
            ) -> tuple[list[Any], dict[str, StageRun]]:
    """Run the program; returns the flat outputs and what each stage measured.

    ``remap``: run on a defective wafer. Every stage's fabric then charges the detours of
    the links under its placed rectangle (values are unchanged, cycles can only grow).
    """
    g = program.graph
    env: dict[str, Any] = {}
    leaves = _flat_inputs(program, args, kwargs or {})
    for name, value in zip(g.user_inputs, leaves, strict=False):
        env[name] = _meta(value) if timing_only else value
    env.update({k: _meta(v) for k, v in g.constants.items()} if timing_only else g.constants)
    ctx = ExecContext(program.spec, g, env, timing_only,
                      stage_link_extra(program, remap) if remap is not None else None)
    runs: dict[str, StageRun] = {}
    stages = {s.name: s for s in program.stages}
    drop = per_graph(_DROPS, g, lambda: _last_uses(g, stages))
    for i, node in enumerate(g.nodes.values()):
        for name in drop.get(i - 1, ()):   # read by nothing from here on: free it
            env.pop(name, None)
        if node.op != "call" or node.name in env:
            continue
        if is_layout(node):
            if node.short in ("view", "_unsafe_view"):
                # kernel outputs are dense; a view of them is a reshape (same values)
                x, shape = ctx.value(node.args)[:2]
                env[node.name] = torch.reshape(x, shape)
            else:
                env[node.name] = ctx.host(node)
            continue
        st = stages[node.meta["stage"]]
        fam = family(node.meta["kind"])
        if fam.kind != st.kind:     # fused into another family's stage: its value only
            fam.execute_fused(ctx, st, node)
        else:
            measured = (fam if st.fits else HOST).execute(ctx, st, node)
            if measured is not None:
                runs[st.name] = measured
        if timing_only and env.get(node.name) is None:
            env[node.name] = _empty(node.meta)
    outs = [env[o.name] if isinstance(o, Ref) else o for o in g.outputs]
    return outs, runs


__all__ = ["execute", "stage_link_extra"]
