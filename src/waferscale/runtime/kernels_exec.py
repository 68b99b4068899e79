"""Run one planned stage on its own fabric rectangle: real values (or timing only) + cycles.

Each stage gets a fresh `Fabric` the size of its rectangle, so its clocks start at zero and
``fabric.elapsed()`` is the stage's time; the kernels' ``run()`` compute the values. This
module is the bridge from torch tensors (what the graph carries) to MeshTensors and back.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch

from waferscale.compiler.plan import (
    TORCH_TO_FABRIC,
    Stage,
    gemm_extra_cycles,
    stage_extra_bytes,
)
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware.spec import WaferSpec
from waferscale.kernels import attention, embedding, gemm, loss, norm
from waferscale.kernels import elementwise as ew
from waferscale.kernels import reduce as reduce_kernel


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).cpu().numpy() if x.is_floating_point() \
        else x.detach().cpu().numpy()


def to_torch(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor of ``x`` (a read-only array, e.g. a broadcast, is copied: torch
    tensors are writable)."""
    a = np.asarray(x, dtype=np.float32)   # not ascontiguousarray: it makes a 0-d array 1-d
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C")
    return torch.from_numpy(a).to(dtype)


class StageRun:
    """What running a stage measured."""

    def __init__(self, cycles: float, sram_peak: int, busy: float, nnz_fraction: float | None
                 = None) -> None:
        self.cycles = cycles
        self.sram_peak = sram_peak
        self.busy_fraction = busy
        self.density = nnz_fraction


#: Stage name -> ``[4, rows, cols]`` detour cycles of its links on a defective wafer. Set by
#: `pipelined.execute` for the duration of a run, so that every ``run_*`` builds its fabric
#: with the remap's latencies without each signature having to carry them.
LINK_EXTRA: ContextVar[dict[str, np.ndarray] | None] = ContextVar("LINK_EXTRA", default=None)


#: Run compiled attention stages step by step on the fabric even on a perfect wafer (the
#: tests set it to check the closed-form path against the simulation).
SIMULATE_ATTENTION = False


def _fabric(spec: WaferSpec, st: Stage, timing_only: bool) -> Fabric:
    extra = (LINK_EXTRA.get() or {}).get(st.name)
    return Fabric(spec, st.rect[0], st.rect[1], timing_only=timing_only, link_extra=extra)


def _done(fab: Fabric, extra: float = 0.0, density: float | None = None) -> StageRun:
    s = fab.stats()
    return StageRun(fab.elapsed() + extra, int(fab.sram.peak()), s["busy_fraction"], density)


def run_gemm(spec: WaferSpec, st: Stage, a: torch.Tensor, b: torch.Tensor,
             bias: torch.Tensor | None, alpha: float = 1.0, beta: float = 1.0,
             timing_only: bool = False) -> tuple[torch.Tensor | None, StageRun]:
    """mm / addmm / bmm via `gemm.run` (MeshGEMM, fp32 accumulate).

    A bmm's batch entries are independent GEMMs, so they run side by side: the plan's
    ``tiling`` (group rows x group cols) of ``grid`` x ``grid`` sub-grids tiles the stage's
    rectangle, and each round puts one entry on every group of one fabric (disjoint
    rectangles, ``gemm.run(origin=)``); a round lasts as long as its slowest group, and the
    rounds follow one another (``ceil(batch / groups)`` of them, as the plan's cost says).
    An mm/addmm the plan split by rows (``msplit`` chunks of ``mrows`` tokens) runs the same
    way: chunk i of A against the weight, which each group holds a copy of; the chunks'
    products stacked back are the product (the rows of A @ B are independent)."""
    p = int(st.params.get("grid", st.rect[0]))
    gr, gc = (int(v) for v in st.params.get("tiling", (1, 1)))
    slots = max(1, gr * gc)
    skip = "a" if st.params.get("skip") else None
    a3 = a if a.dim() == 3 else a.unsqueeze(0)
    b3 = b if b.dim() == 3 else b.unsqueeze(0)
    # an mm/addmm whose M rows the plan split over the groups: entry i = rows chunk i
    # against the whole (replicated) weight
    split = a.dim() == 2 and int(st.params.get("msplit", 1)) > 1
    mg = int(st.params.get("mrows", a3.shape[1])) if split else int(a3.shape[1])
    n_entries = -(-int(a3.shape[1]) // mg) if split else int(a3.shape[0])

    def entry(i: int) -> tuple[Any, Any]:
        if split:
            rows = a3[0, i * mg:(i + 1) * mg]
            if rows.shape[0] < p:
                # a last chunk shorter than the grid side (every PE row needs a block):
                # zero rows up to p, no slower than a full chunk, cropped below
                rows = torch.cat([rows, rows.new_zeros(p - rows.shape[0], rows.shape[1])])
            return rows, b3[0]
        return a3[i], b3[i]

    outs, cycles, peak, busy = [], 0.0, 0, []
    density = None
    nnz, total = 0, 0
    rounds = -(-n_entries // slots)
    for r in range(rounds):
        fab = _fabric(spec, st, timing_only)
        slowest = 0.0
        # dense entries of one shape on fresh sub-grids with the same link latencies run
        # the same clocks, translated: run the first, copy its sub-grid's state to the rest
        first: dict[tuple[Any, ...], tuple[tuple[int, int], float, float]] = {}
        for j in range(min(slots, n_entries - r * slots)):
            ai, bi = entry(r * slots + j)
            origin = ((j // gc) * p, (j % gc) * p)
            key = (tuple(ai.shape), tuple(bi.shape))
            seen = first.get(key) if skip is None else None
            if seen is not None and _same_links(fab, seen[0], origin, p):
                _copy_region(fab, seen[0], origin, p, seen[2])
                if not timing_only:
                    outs.append(gemm._product(to_np(ai), to_np(bi), st.dtype))
                slowest = max(slowest, seen[1])
                continue
            hops = fab.wavelet_hops
            if timing_only:
                res = gemm.run(tuple(ai.shape), tuple(bi.shape), grid=p, fabric=fab,
                               dtype=st.dtype, accumulate="fp32", skip=skip, origin=origin)
            else:
                an = to_np(ai)
                if skip:
                    nnz, total = nnz + int(np.count_nonzero(an)), total + an.size
                res = gemm.run(an, to_np(bi), grid=p, fabric=fab, dtype=st.dtype,
                               accumulate="fp32", skip=skip, origin=origin)
                outs.append(res.value)
            first.setdefault(key, (origin, res.cycles, fab.wavelet_hops - hops))
            slowest = max(slowest, res.cycles)
        cycles += slowest
        peak = max(peak, int(fab.sram.peak()))
        busy.append(fab.stats()["busy_fraction"])
    if skip and total:
        density = nnz / total
    peak += stage_extra_bytes(st, p, mg)
    run = StageRun(cycles + gemm_extra_cycles(spec, st, p, mg, rounds), peak,
                   float(np.mean(busy)), density)
    if timing_only:
        return None, run
    if split:
        out = np.concatenate(outs, axis=0)[:a3.shape[1]]
    else:
        out = np.stack(outs) if a.dim() == 3 else outs[0]
    if alpha != 1.0:
        out = out * np.float32(alpha)
    if bias is not None:
        out = out + np.float32(beta) * to_np(bias)
    out = to_storage(out.astype(np.float32), st.dtype)
    return to_torch(out, a.dtype), run


def _same_links(fab: Fabric, src: tuple[int, int], dst: tuple[int, int], p: int) -> bool:
    """Whether two p x p sub-grids have the same link latencies (the only input of a
    dense GEMM's clocks that depends on where it sits)."""
    a = fab.link_extra[:, src[0]:src[0] + p, src[1]:src[1] + p]
    b = fab.link_extra[:, dst[0]:dst[0] + p, dst[1]:dst[1] + p]
    return bool(np.array_equal(a, b))


def _copy_region(fab: Fabric, src: tuple[int, int], dst: tuple[int, int], p: int,
                 hops: float) -> None:
    """Leave the fabric as if the GEMM run on the ``src`` sub-grid had also run on the
    untouched ``dst`` one.

    Why it is exact: `gemm.run` (dense, fp32 accumulate) touches only its p x p sub-grid,
    starts from zero clocks there (fresh fabric, disjoint sub-grids), and its clock
    arithmetic (max and +) does not depend on the position except through the link
    latencies, which `_same_links` checked equal. So every per-PE clock and counter of the
    ``dst`` run is the ``src`` one's, the wavelet-hop total grows by the same amount, and
    the SRAM use (hence the high-water mark, already reached at ``src``) is the same.
    """
    (r0, c0), (r1, c1) = src, dst
    s0 = (slice(r0, r0 + p), slice(c0, c0 + p))
    s1 = (slice(r1, r1 + p), slice(c1, c1 + p))
    for arr in (fab.ce_clock, fab.busy, fab.stalled, fab.flops, fab.mem_bytes,
                fab.sram.used):
        arr[s1] = arr[s0]
    for arr in (fab.port_clock, fab.port_wavelets):
        arr[(slice(None), *s1)] = arr[(slice(None), *s0)]
    fab.wavelet_hops += hops


def run_attention(spec: WaferSpec, st: Stage, q: torch.Tensor, k: torch.Tensor,
                  v: torch.Tensor, scale: float | None, timing_only: bool = False
                  ) -> tuple[torch.Tensor | None, StageRun]:
    """Causal attention on the stage's rectangle (`attention`; fold, K/V mode and split
    from the plan).

    Unless `SIMULATE_ATTENTION` is set, the values come from PyTorch's attention in fp32
    with the kernel's storage rounding (they differ from the kernel's online softmax only
    in rounding order, within its tolerances), and the clocks from `attention.cost` on a
    perfect wafer: the kernel tests prove cost() equal to `attention.run`'s clocks for
    every layout. Simulating the kernel step by step took ~60 % of GenSLM-25M's fabric
    wall time at seq 1,024 and about a minute per layer at 10,240, for the same numbers.
    On a defective wafer the kernel runs timing-only on the fabric, which charges the
    detours of the stage's links; the values stay the same as on a perfect wafer."""
    layout = _attention_layout(st)
    b, h, s, d = q.shape
    if SIMULATE_ATTENTION and not timing_only:
        fab = _fabric(spec, st, False)
        out = attention.run(fab, to_np(q), to_np(k), to_np(v), dtype=st.dtype, causal=True,
                            scale=scale, **layout)
        return to_torch(out.to_numpy().reshape(b, h, s, d), q.dtype), _done(fab)
    if SIMULATE_ATTENTION or LINK_EXTRA.get() is not None:
        fab = _fabric(spec, st, True)
        z = np.broadcast_to(np.float32(0), (b, h, s, d))
        attention.run(fab, z, z, z, dtype=st.dtype, causal=True, scale=scale, **layout)
        run = _done(fab)
    else:
        run = _attention_closed_form(spec, st, b * h, s, d)
    if timing_only:
        return None, run
    qs, ks, vs = (torch.from_numpy(to_storage(to_np(x), st.dtype).astype(np.float32))
                  for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                           scale=scale)
    return to_torch(to_storage(out.numpy(), st.dtype), q.dtype), run


def attention_lse(q: torch.Tensor, k: torch.Tensor, scale: float | None,
                  block: int = 1024) -> torch.Tensor:
    """Each query row's causal log-sum-exp of its scaled scores, [batch, heads, seq] fp32:
    the second output of the CPU flash attention, which its backward reads. The kernel
    keeps every row's running max m and sum l (`kernels.attention`), and m + log l is this
    value; it is computed here on the host arrays, in query blocks so that 10,240 tokens
    do not need the whole [seq, seq] score matrix at once."""
    s, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf = q.float(), k.float()
    out = []
    for i in range(0, s, block):
        scores = (qf[..., i:i + block, :] @ kf.transpose(-1, -2)) * scale
        rows = torch.arange(i, min(i + block, s)).unsqueeze(-1)
        scores = scores.masked_fill(torch.arange(s) > rows, float("-inf"))
        out.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(out, dim=-1)


def _attention_layout(st: Stage) -> dict[str, Any]:
    """The kernel options the plan chose (`plan._size_attention`); shift defaults."""
    return {"fold": st.params.get("fold", 1), "kv": st.params.get("kv", "shift"),
            "split": st.params.get("split", 1)}


def _attention_closed_form(spec: WaferSpec, st: Stage, groups: int, seq: int, head_dim: int
                           ) -> StageRun:
    """What `attention.run` would measure on a perfect wafer, from the kernel's closed
    forms: cycles, SRAM peak and the CE busy share (chain position l runs l + 1 of the L
    steps: `attention.mean_busy_cycles`)."""
    layout = _attention_layout(st)
    kp = attention.plan(spec, groups, seq, head_dim, st.rect, dtype=st.dtype, **layout)
    cycles = attention.cost(spec, groups, seq, head_dim, st.rect, dtype=st.dtype, **layout)
    busy = attention.mean_busy_cycles(spec, kp) / cycles if cycles else 0.0
    return StageRun(cycles, int(kp.sram()["peak"]), busy)


def _mesh(fab: Fabric, x2: np.ndarray | tuple[int, int], dtype: str) -> MeshTensor:
    if isinstance(x2, tuple):
        return MeshTensor.empty(fab, x2, dtype=dtype)
    return MeshTensor.from_numpy(fab, x2, dtype=dtype)


def run_layer_norm(spec: WaferSpec, st: Stage, x: torch.Tensor, w: torch.Tensor | None,
                   b: torch.Tensor | None, eps: float, timing_only: bool = False
                   ) -> tuple[torch.Tensor | None, StageRun]:
    fab = _fabric(spec, st, timing_only)
    h = x.shape[-1]
    t = x.numel() // h
    if timing_only:
        xm = _mesh(fab, (t, h), st.dtype)
        norm.run(xm, None if w is None else np.zeros(h, np.float32),
                 None if b is None else np.zeros(h, np.float32), eps=eps)
        return None, _done(fab)
    xm = _mesh(fab, to_np(x).reshape(t, h), st.dtype)
    out = norm.run(xm, None if w is None else to_np(w), None if b is None else to_np(b),
                   eps=eps)
    return to_torch(out.to_numpy().reshape(x.shape), x.dtype), _done(fab)


def layer_norm_values(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None,
                      eps: float, dtype: str) -> torch.Tensor:
    """A layer norm fused in front of a GEMM (`plan.fuse_prologues`): `norm.run`'s
    arithmetic (fp32 two-pass statistics, one rounding of the output to the storage
    dtype) on the plain [..., hidden] array; its cycles are part of the GEMM stage's
    (`plan.prologue_cycles`). The row sums are added in one order instead of per tile
    then across the row: rounding order only."""
    x32 = to_np(x).astype(np.float32)
    mean = x32.mean(-1, keepdims=True, dtype=np.float32)
    dev = x32 - mean
    var = np.square(dev).sum(-1, keepdims=True, dtype=np.float32) / np.float32(x.shape[-1])
    y = dev * (np.float32(1) / np.sqrt(var + np.float32(eps)))
    if w is not None:
        y = y * to_np(w).astype(np.float32)
    if b is not None:
        y = y + to_np(b).astype(np.float32)
    return to_torch(to_storage(y, dtype), x.dtype)


def run_softmax(spec: WaferSpec, st: Stage, x: torch.Tensor, timing_only: bool = False
                ) -> tuple[torch.Tensor | None, StageRun]:
    fab = _fabric(spec, st, timing_only)
    h = x.shape[-1]
    t = x.numel() // h
    xm = _mesh(fab, (t, h) if timing_only else to_np(x).reshape(t, h), st.dtype)
    out = ew.softmax(xm, log=st.params.get("log", False))
    if timing_only:
        return None, _done(fab)
    return to_torch(out.to_numpy().reshape(x.shape), x.dtype), _done(fab)


def run_embedding(spec: WaferSpec, st: Stage, table: torch.Tensor, ids: torch.Tensor,
                  timing_only: bool = False) -> tuple[torch.Tensor | None, StageRun]:
    fab = _fabric(spec, st, timing_only)
    flat = ids.reshape(-1)
    layout = st.params.get("layout", "replicated")
    if timing_only:
        return None, StageRun(embedding.cost(spec, flat.numel(), table.shape[0], table.shape[1],
                                             st.rect, dtype=st.dtype, layout=layout),
                              embedding.sram_bytes(flat.numel(), table.shape[0],
                                                   table.shape[1], st.rect, st.dtype,
                                                   layout=layout), 1.0)
    out = embedding.run(fab, flat.numpy(), to_np(table), dtype=st.dtype, layout=layout)
    val = out.to_numpy().reshape(*ids.shape, table.shape[1])
    return to_torch(val, table.dtype), _done(fab)


def run_reduce(spec: WaferSpec, st: Stage, x: torch.Tensor, meta: dict[str, Any],
               timing_only: bool = False) -> tuple[torch.Tensor | None, StageRun]:
    """A sum over leading or trailing dims (`lower.reduce_layout`) on the reduce kernel."""
    fab = _fabric(spec, st, timing_only)
    rows, cols, axis = st.params["rows"], st.params["cols"], st.params["axis"]
    xm = _mesh(fab, (rows, cols) if timing_only else to_np(x).reshape(rows, cols), st.dtype)
    out = reduce_kernel.run(xm, axis)
    if timing_only:
        return None, _done(fab)
    return to_torch(out.to_numpy().reshape(meta["shape"]), x.dtype), _done(fab)


def run_cross_entropy(spec: WaferSpec, st: Stage, logits: torch.Tensor, targets: torch.Tensor,
                      timing_only: bool = False) -> tuple[torch.Tensor | None, StageRun]:
    """The loss kernel on the stage's rectangle (`compiler.match_loss`). The kernel gives
    the mean over targets that are not ignored (and the gradient, in the same sweep); a
    ``sum`` reduction is that mean times their count."""
    fab = _fabric(spec, st, timing_only)
    t, v, ii = st.params["tokens"], st.params["vocab"], st.params["ignore_index"]
    xm = _mesh(fab, (t, v) if timing_only else to_np(logits).reshape(t, v), st.dtype)
    tgt = np.zeros(t, np.int64) if timing_only else targets.reshape(-1).numpy()
    mean, _grad = loss.run(xm, tgt, ignore_index=ii)
    if timing_only:
        return None, _done(fab)
    value = np.float32(mean.to_numpy().reshape(-1)[0])
    if st.params["reduction"] == "sum":
        value = value * np.float32((tgt != ii).sum())
    return torch.tensor(float(value), dtype=torch.float32), _done(fab)


# ------------------------------------------------------------------ fused pointwise -------
def _pw_value(short: str, node_args: tuple[Any, ...], kwargs: dict[str, Any],
              vals: list[Any]) -> np.ndarray:
    """An ATen pointwise op on fp32 NumPy tiles (the elementwise kernels' value functions)."""
    fns = ew.POINTWISE
    x = vals[0]
    y = vals[1] if len(vals) > 1 else None
    if short in ("add", "sub"):
        alpha = kwargs.get("alpha", 1)
        r = y * np.float32(alpha) if alpha != 1 else y
        return fns[short][1](x, r)
    if short == "rsub":
        return np.subtract(y, x)
    if short in ("mul", "maximum", "minimum"):
        return {"mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum}[short](x, y)
    if short == "div":
        mode = kwargs.get("rounding_mode")
        q = np.divide(x, y)
        return np.trunc(q) if mode == "trunc" else np.floor(q) if mode == "floor" else q
    if short == "pow":
        return np.power(x, y)
    if short == "sqrt":
        return np.sqrt(x)
    if short == "abs":
        return np.abs(x)
    if short == "clamp_min":
        return np.maximum(x, y)
    if short == "where":
        return np.where(x.astype(bool), y, vals[2])
    if short in ("_to_copy", "copy", "fill"):
        return (y if short != "_to_copy" else x) * np.float32(1)
    if short == "gelu":
        key = "gelu_fast" if kwargs.get("approximate", "none") == "tanh" else "gelu"
        return fns[key][1](x)
    return fns[short][1](x)


def _op_value(node: Any, vals: list[Any]) -> np.ndarray:
    """One pointwise node on fp32 operands, rounded to its storage dtype (as PyTorch
    rounds after every op), as fp32: the value step of fused stages and epilogues."""
    with np.errstate(all="ignore"):
        res = _pw_value(node.short, node.args, node.kwargs, vals)
    return to_storage(np.asarray(res, np.float32), TORCH_TO_FABRIC[node.meta["dtype"]]).astype(
        np.float32, copy=False)


def run_pointwise(spec: WaferSpec, st: Stage, graph: Any, env: dict[str, Any],
                  timing_only: bool = False) -> tuple[dict[str, torch.Tensor], StageRun]:
    """A fused chain: operands are distributed over the rectangle with the output's layout
    ([tokens, last]) and the whole chain is charged as one pass (`plan.fused_cycles`) on
    the stage's fabric (SRAM for every operand and the output, one execute). The values
    are the kernels' value functions rounded to the storage dtype after each op (as
    PyTorch does), computed on the whole [..., last] array: elementwise, so the same
    per-element operations as on the PE tiles, bit for bit."""
    from waferscale.compiler.ir import Ref
    from waferscale.compiler.plan import fused_cycles

    fab = _fabric(spec, st, timing_only)
    last = graph.nodes[st.nodes[-1]]
    shape = tuple(last.meta["shape"])
    numel = math.prod(shape)
    h = shape[-1] if shape else 1
    t = max(1, numel // max(1, h))
    # the plan's layout: [tokens, last], or the flattened elements in rows as wide as the
    # rectangle (`plan.pointwise_layout`), padded at the end
    t, h = (int(v) for v in st.params.get("layout", (t, h)))
    probe = MeshTensor(fab, fab.full, (t, h), st.dtype, 0, 1, None, allocate=False)
    tile = float(np.prod(probe.tile_shape))
    cyc = fused_cycles(spec, tile, st.dtype, st.params["ops"], st.params["reads"])
    members = set(st.nodes)
    # operands: SRAM for each external tensor operand and the output
    for i in range(st.params["reads"] + 1):
        fab.sram.alloc(f"pw{i}", 0, 0, probe.bytes_per_pe())
    fab.execute(fab.full, cyc, 0.0)
    out_vals: dict[str, torch.Tensor] = {}
    if not timing_only:
        # Values on the plain array, not on the PE tiles: every op is elementwise and runs
        # in fp32 with the same per-op rounding to the storage dtype, so an element's value
        # does not depend on which PE holds it (or on the padding the tiles add). Spreading
        # every operand into tiles and gathering the result back cost more than the ops.
        local: dict[str, np.ndarray] = {}

        def plain(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                full = to_np(v).astype(np.float32, copy=False)
                return full if full.ndim == 0 else np.broadcast_to(full, shape)
            return np.float32(v) if isinstance(v, (int, float, bool)) else v

        for name in st.nodes:
            node = graph.nodes[name]
            vals = []
            for a in node.args:
                if isinstance(a, Ref):
                    vals.append(local[a.name] if a.name in members else plain(env[a.name]))
                else:
                    vals.append(plain(a) if not isinstance(a, (list, tuple)) else a)
            local[name] = _op_value(node, vals)
        dtype = getattr(torch, last.meta["dtype"])
        # a fresh, writable array: the result must not alias an operand or a view
        out_vals[last.name] = to_torch(np.array(np.broadcast_to(local[last.name], shape),
                                                np.float32), dtype)
    return out_vals, _done(fab)


def run_epilogue_node(node: Any, env: dict[str, Any]) -> torch.Tensor:
    """One pointwise op fused into a GEMM stage (`plan.fuse_epilogues`): the same value
    function and per-op rounding to the storage dtype as `run_pointwise`, on the whole
    output (elementwise, so tiling it over the groups' PEs changes no value); its cycles
    are part of the GEMM stage's (`plan.epilogue_cycles`)."""
    from waferscale.compiler.ir import Ref

    shape = tuple(node.meta["shape"])
    vals = []
    for a in node.args:
        v = env[a.name] if isinstance(a, Ref) else a
        if isinstance(v, torch.Tensor):
            vals.append(to_np(v).astype(np.float32))
        elif isinstance(v, (int, float, bool)):
            vals.append(np.float32(v))
        else:
            vals.append(v)
    res = np.broadcast_to(_op_value(node, vals), shape)
    return to_torch(res, getattr(torch, node.meta["dtype"]))


__all__ = ["StageRun", "attention_lse", "layer_norm_values", "run_attention", "run_embedding",
           "run_cross_entropy", "run_epilogue_node", "run_gemm", "run_layer_norm",
           "run_pointwise", "run_reduce", "run_softmax",
           "to_np", "to_torch"]
