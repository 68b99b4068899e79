"""`generate` on the wafer: the tokens transformers' ``generate`` would give, and how fast.

``waferscale.compile_lm(model, spec=..., grid=...)`` (or ``waferscale.compile(model,
...).generate``) returns a `CompiledLM`; its ``generate(input_ids, max_new_tokens=N, ...)``
takes the same arguments as transformers' (greedy by default; ``do_sample``,
``temperature``, ``top_k``, ``top_p``; the model's ``generation_config`` supplies the rest)
and returns the same ``[batch, prompt + N]`` tokens, and ``report()`` says what the wafer
takes to produce them.

How the tokens are produced (details in docs/inference.md):

* the generation loop is transformers' own ``generate`` (``use_cache=False``) with the
  model's forward served here, so logits processors, sampling (the same
  ``torch.multinomial`` draws from the global RNG: same seed, same tokens), ``eos``
  handling and padding are transformers' code, not a copy. The first call is the prompt
  (prefill); every later call brings the prefix one token longer, and only that token is
  computed (a decode step against the cache).
* **decode** runs the inference plan's own program (`compiler.inference.decode_program`):
  every projection is a `kernels.gemv` run on the fabric with the layer's resident weights,
  attention is a `kernels.kv_attention` run over that layer's `KvCache` (the keys and
  values as the PEs hold them; grouped-query heads read their shared K/V head; a sliding
  window is a ring of that many slots), and the local passes (norms, rotary, activation,
  residual adds) are evaluated with the kernels' value rules. Each fabric run's cycles are
  checked against the op's closed form; the decode figures of ``report()`` are the cycles
  of the steps that ran.
* **prefill** computes the prompt's keys, values and first logits with the same weights on
  the host (the prefill program's values; its cycles are the plan's MeshGEMM and flash-
  attention closed forms) and writes the keys and values into the caches, so decode starts
  from the cache prefill leaves.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waferscale.compiler.errors import CompileError
from waferscale.compiler.inference import (
    DecodeProgram,
    DecoderShape,
    InferencePlan,
    Op,
    decode_program,
    plan_inference,
)
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import fabric_dtype
from waferscale.kernels import gemv, kv_attention


class GenerateError(CompileError):
    """A generation request this engine cannot serve (padding in the prompt, a cache
    passed in, a model built without weights, no ``max_new_tokens``)."""


#: How a layer multiplies: (op name, x [..., K], W [K, N], bias or None) -> [..., N].
MatMul = Callable[[str, np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
#: How a layer attends: (layer, q [b, heads, n, d], k, v [b, kv_heads, n, d]) -> like q.
Attend = Callable[[int, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# ------------------------------------------------------------------ the weights -----------
@dataclass
class _Layer:
    """One decoder layer's weights as the wafer holds them: [K, N] matrices (q, k, v fused
    with the softmax scale folded into q's columns; gate and up fused), norm weights."""

    norm1: tuple[np.ndarray, np.ndarray | None]
    qkv: np.ndarray
    qkv_b: np.ndarray | None
    o: np.ndarray
    o_b: np.ndarray | None
    norm2: tuple[np.ndarray, np.ndarray | None]
    up: np.ndarray
    up_b: np.ndarray | None
    down: np.ndarray
    down_b: np.ndarray | None


@dataclass
class _Weights:
    layers: list[_Layer]
    embed: np.ndarray                 # [vocab, hidden]
    positions: np.ndarray | None      # [positions, hidden] (GPT-2)
    final: tuple[np.ndarray, np.ndarray | None]
    lm_head: np.ndarray               # [hidden, vocab]
    eps: float
    cos: np.ndarray | None            # rotary tables [positions, head_dim] (Llama family)
    sin: np.ndarray | None


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().to(torch.float32).cpu().numpy()


def _load(model: torch.nn.Module, shape: DecoderShape) -> _Weights:
    """The model's weights in the wafer's layout (what loading them onto the PEs does)."""
    scale = np.float32(1.0 / math.sqrt(shape.head_dim))
    q_cols = shape.heads * shape.head_dim
    layers = []
    if shape.arch == "gpt2":
        cfg = model.config
        if cfg.activation_function != "gelu_new" or cfg.scale_attn_by_inverse_layer_idx:
            raise GenerateError(f"GPT-2 with activation {cfg.activation_function!r} / "
                                f"layer-scaled attention: the decode program knows gelu_new")
        tr = model.transformer
        for blk in tr.h:
            qkv, qkv_b = _np(blk.attn.c_attn.weight).copy(), _np(blk.attn.c_attn.bias).copy()
            qkv[:, :q_cols] *= scale
            qkv_b[:q_cols] *= scale
            layers.append(_Layer(
                (_np(blk.ln_1.weight), _np(blk.ln_1.bias)), qkv, qkv_b,
                _np(blk.attn.c_proj.weight), _np(blk.attn.c_proj.bias),
                (_np(blk.ln_2.weight), _np(blk.ln_2.bias)),
                _np(blk.mlp.c_fc.weight), _np(blk.mlp.c_fc.bias),
                _np(blk.mlp.c_proj.weight), _np(blk.mlp.c_proj.bias)))
        return _Weights(layers, _np(tr.wte.weight), _np(tr.wpe.weight),
                        (_np(tr.ln_f.weight), _np(tr.ln_f.bias)), _np(model.lm_head.weight).T,
                        float(cfg.layer_norm_epsilon), None, None)
    base = model.model
    for blk in base.layers:
        at, mlp = blk.self_attn, blk.mlp
        qkv = np.concatenate([_np(at.q_proj.weight).T * scale, _np(at.k_proj.weight).T,
                              _np(at.v_proj.weight).T], axis=1)
        qkv_b = None
        if at.q_proj.bias is not None:
            qkv_b = np.concatenate([_np(at.q_proj.bias) * scale, _np(at.k_proj.bias),
                                    _np(at.v_proj.bias)])
        up = np.concatenate([_np(mlp.gate_proj.weight).T, _np(mlp.up_proj.weight).T], axis=1)
        layers.append(_Layer((_np(blk.input_layernorm.weight), None), qkv, qkv_b,
                             _np(at.o_proj.weight).T, _np(at.o_proj.bias),
                             (_np(blk.post_attention_layernorm.weight), None), up, None,
                             _np(mlp.down_proj.weight).T, None))
    # the rotary tables of every position, from the model's own rotary module (Llama 3
    # scaling included): resident constants, as the rotary kernel keeps them
    pos = torch.arange(shape.positions)[None]
    with torch.no_grad():
        cos, sin = base.rotary_emb(torch.zeros(1, dtype=torch.float32), pos)
    eps = float(base.layers[0].input_layernorm.variance_epsilon) if base.layers else 1e-6
    return _Weights(layers, _np(base.embed_tokens.weight), None, (_np(base.norm.weight), None),
                    _np(model.lm_head.weight).T, eps, _np(cos[0]), _np(sin[0]))


# ------------------------------------------------------------------ the program -----------
class _Run:
    """One ``generate`` call's wafer state: the caches, the tokens seen, the decode steps'
    cycles (fabric where a kernel ran, closed form for the local passes)."""

    def __init__(self, lm: CompiledLM, batch: int, capacity: int) -> None:
        self.lm = lm
        self.shape = lm.shape
        self.dtype = lm.dtype
        self.p = lm.grid_side
        self.batch = batch
        window = self.shape.sliding_window
        slots = min(capacity, window) if window else capacity
        self.caches = [kv_attention.KvCache(batch, self.shape.kv_heads, self.shape.head_dim,
                                            (self.p, self.p), slots, self.dtype)
                       for _ in range(self.shape.layers)]
        self.seen: torch.Tensor | None = None
        self.steps: list[dict[str, float]] = []

    def _r(self, x: np.ndarray) -> np.ndarray:
        """Round to the storage dtype (what each op writes back to SRAM)."""
        return to_storage(np.asarray(x, np.float32), self.dtype).astype(np.float32)

    # -- the local passes' value rules
    def _norm(self, x: np.ndarray, wb: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
        w, b = wb
        eps = np.float32(self.lm.weights.eps)
        if self.shape.arch == "gpt2":
            mu = x.mean(-1, keepdims=True, dtype=np.float32)
            var = ((x - mu) ** 2).mean(-1, keepdims=True, dtype=np.float32)
            return self._r((x - mu) / np.sqrt(var + eps) * w + b)
        ms = (x * x).mean(-1, keepdims=True, dtype=np.float32)
        return self._r(w * (x / np.sqrt(ms + eps)))

    def _rotary(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x [b, n, heads, d] at positions ``pos`` [n]: rotate-half rotary."""
        w = self.lm.weights
        if w.cos is None or w.sin is None:
            raise GenerateError(f"{self.shape.name}: no rotary tables were loaded")
        cos, sin = w.cos[pos][None, :, None], w.sin[pos][None, :, None]
        half = x.shape[-1] // 2
        rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return self._r(x * cos + rot * sin)

    def _activation(self, u: np.ndarray) -> np.ndarray:
        if self.shape.gated:
            g, up = u[..., :self.shape.ffn], u[..., self.shape.ffn:]
            return self._r(g / (1.0 + np.exp(-g)) * up)
        c = np.float32(math.sqrt(2.0 / math.pi))
        return self._r(0.5 * u * (1.0 + np.tanh(c * (u + np.float32(0.044715) * u ** 3))))

    # -- one layer, shared by prefill and decode (they differ in matmul and attention)
    def _layer(self, i: int, x: np.ndarray, pos: np.ndarray, matmul: MatMul,
               attend: Attend) -> np.ndarray:
        """x [b, n, hidden] through layer i."""
        s, lw = self.shape, self.lm.weights.layers[i]
        b, n, _ = x.shape
        qkv = matmul("qkv", self._norm(x, lw.norm1), lw.qkv, lw.qkv_b)
        hq, hk = s.heads * s.head_dim, s.kv_heads * s.head_dim
        q = qkv[..., :hq].reshape(b, n, s.heads, s.head_dim)
        k = qkv[..., hq:hq + hk].reshape(b, n, s.kv_heads, s.head_dim)
        v = qkv[..., hq + hk:].reshape(b, n, s.kv_heads, s.head_dim)
        if s.arch == "llama":
            q, k = self._rotary(q, pos), self._rotary(k, pos)
        a = attend(i, q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                   v.transpose(0, 2, 1, 3))                         # [b, heads, n, d]
        x = self._r(x + matmul("o", a.transpose(0, 2, 1, 3).reshape(b, n, hq), lw.o, lw.o_b))
        u = matmul("up", self._norm(x, lw.norm2), lw.up, lw.up_b)
        return self._r(x + matmul("down", self._activation(u), lw.down, lw.down_b))

    def _embed(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        w = self.lm.weights
        x = w.embed[ids]
        if w.positions is not None:
            x = x + w.positions[pos][None]
        return self._r(x)

    def _logits(self, x: np.ndarray, matmul: MatMul) -> np.ndarray:
        w = self.lm.weights
        return matmul("lm_head", self._norm(x, w.final), w.lm_head, None)

    # -- prefill: the prompt, its keys and values into the caches
    def prefill(self, ids: torch.Tensor) -> np.ndarray:
        """The prompt's last-position logits [b, vocab]; the caches hold its K and V."""
        n = ids.shape[1]
        pos = np.arange(n)
        window = self.shape.sliding_window

        def matmul(_: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None
                   ) -> np.ndarray:
            y = np.matmul(x, w, dtype=np.float32)
            return self._r(y if bias is None else y + bias)

        def attend(i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            self.caches[i].append(k, v)
            return _causal_gqa(q, k, v, window, self.dtype)

        x = self._embed(ids.numpy(), pos)
        for i in range(self.shape.layers):
            x = self._layer(i, x, pos, matmul, attend)
        return self._logits(x[:, -1:], matmul)[:, 0]

    # -- decode: one token per sequence through the program's kernels
    def step(self, tokens: torch.Tensor, position: int) -> np.ndarray:
        """Logits [b, vocab] of one decode step; the token's K and V appended."""
        s = self.shape
        prog = decode_program(self.lm.spec, s, self.batch, position + 1, self.p, self.dtype,
                              self.lm.sampling)
        gemvs = {o.name: o for o in prog.ops if o.kernel == "gemv"}
        att = next(o for o in prog.ops if o.kernel == "kv_attention")
        lay = att.kv
        if lay is None:
            raise GenerateError("the decode program's attention op has no cache layout")
        record = {"fabric": 0.0, "closed_form_of_fabric_ops": 0.0,
                  "local": float(sum(o.cycles * (prog.layers if o.per_layer else 1)
                                     for o in prog.ops if o.kernel == "local"))}
        pos = np.array([position])

        def charge(op: Op, measured: float) -> None:
            if measured != op.cycles:
                raise GenerateError(f"decode op {op.name}: the fabric counted {measured} "
                                    f"cycles, its closed form says {op.cycles}")
            record["fabric"] += measured
            record["closed_form_of_fabric_ops"] += op.cycles

        def matmul(name: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None
                   ) -> np.ndarray:
            op = gemvs[name]
            res = gemv.run(x.reshape(-1, w.shape[0]), w, grid=op.grid, spec=self.lm.spec,
                           dtype=self.dtype, accumulate="fp32")
            charge(op, res.cycles)
            y = res.value.reshape(*x.shape[:-1], w.shape[1])
            return self._r(y if bias is None else y + bias)

        def attend(i: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
            res = kv_attention.run(self.lm.spec, self.batch, s.kv_heads, s.group, s.head_dim,
                                   lay.context, (lay.rows, lay.cols), dtype=self.dtype,
                                   q=q[:, :, 0], k=k[:, :, 0], v=v[:, :, 0],
                                   cache=self.caches[i])
            charge(att, res.cycles)
            return res.value[:, :, None]

        x = self._embed(tokens.numpy()[:, None], pos)
        for i in range(s.layers):
            x = self._layer(i, x, pos, matmul, attend)
        logits = self._logits(x, matmul)[:, 0]
        record["cycles"] = record["fabric"] + record["local"]
        record["closed_form_cycles"] = prog.cycles
        record["context"] = float(position + 1)
        self.steps.append(record)
        return logits


def _causal_gqa(q: np.ndarray, k: np.ndarray, v: np.ndarray, window: int | None,
                dtype: str) -> np.ndarray:
    """Prefill attention of q [b, heads, n, d] (scaled) over k, v [b, kv_heads, n, d], the
    query heads of a group reading their shared K/V head (no copies), causal and, with a
    sliding window w, position i seeing positions j with i - w < j <= i (transformers'
    mask). fp32 scores, ``p`` rounded to the dtype before ``p V``, as the decode kernel."""
    b, h, n, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, kvh, h // kvh, n, d)
    s = np.einsum("bkgid,bkjd->bkgij", qg, k, dtype=np.float32)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = j <= i
    if window:
        mask &= j > i - window
    s = np.where(mask, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True), dtype=np.float32)
    denom = p.sum(-1, keepdims=True, dtype=np.float32)
    p = to_storage(p, dtype).astype(np.float32)
    o = np.einsum("bkgij,bkjd->bkgid", p, v, dtype=np.float32) / denom
    return to_storage(o.reshape(b, h, n, d), dtype).astype(np.float32)


# ------------------------------------------------------------------ the public object -----
class CompiledLM:
    """A causal LM compiled for generation on the wafer (module docstring).

    ``spec``: the wafer; ``grid``: ``"RxC"`` (or a pair) restricting the program to a
    sub-rectangle of it; ``dtype``: the storage dtype (default: the model's parameters').
    """

    def __init__(self, model: torch.nn.Module, *, spec: WaferSpec | str | None = "wse2",
                 grid: str | tuple[int, int] | None = None, dtype: str | None = None,
                 name: str | None = None) -> None:
        if not hasattr(model, "generate") or not hasattr(model, "config"):
            raise GenerateError(f"{type(model).__name__} is not a transformers causal LM "
                                f"(no generate / config); compile_lm needs one")
        self.model = model
        self.spec = get_spec(spec)
        self.grid = grid
        self.shape = DecoderShape.from_model(model, name)
        param = next(model.parameters())
        self.dtype = dtype or (fabric_dtype(param.dtype) or "fp32")
        self.meta = param.device.type == "meta"
        self.sampling = "greedy"
        self.last_generation: dict[str, Any] | None = None
        #: The square grid's side the plan uses (a bad grid or architecture fails here).
        self.grid_side = self.plan(1, 1, 1).grid[0]

    @functools.cached_property
    def weights(self) -> _Weights:
        """The weights in the wafer's layout, loaded on first use."""
        return _load(self.model, self.shape)

    # ------------------------------------------------------------------ timing ---------
    def plan(self, batch: int, prompt_len: int, new_tokens: int, *, sampling: str = "greedy"
             ) -> InferencePlan:
        """The inference plan (cycles from the kernels' closed forms) for a request."""
        return plan_inference(self.shape, self.spec, grid=self.grid, batch=batch,
                              prompt_len=prompt_len, new_tokens=new_tokens, dtype=self.dtype,
                              sampling=sampling)

    def decode_program(self, batch: int, context: int) -> DecodeProgram:
        """The ops of one decode step at ``context`` positions (what `generate` runs)."""
        return decode_program(self.spec, self.shape, batch, context, self.grid_side,
                              self.dtype, self.sampling)

    def report(self) -> dict[str, Any]:
        """The last ``generate``'s figures (`InferencePlan.report` plus what ran)."""
        if self.last_generation is None:
            raise GenerateError("nothing generated yet: call generate() first, or plan() "
                                "for an estimate")
        return dict(self.last_generation)

    # ------------------------------------------------------------------ values ---------
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None,
                 **kwargs: Any) -> Any:
        """transformers' ``generate`` with the forward run on the wafer (module docstring):
        same arguments, same tokens. Not supported: a KV cache passed in, padding in the
        prompt (an ``attention_mask`` with zeros), beam search, assistant models."""
        if self.meta:
            raise GenerateError("the model was built on the meta device (no weights): "
                                "plan() gives the timing; generating tokens needs weights")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) \
                or max_new_tokens < 1:
            raise GenerateError(f"max_new_tokens must be a positive integer, got "
                                f"{max_new_tokens!r}")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype not in (torch.long, torch.int):
            raise GenerateError("input_ids must be an integer tensor [batch, prompt_len]")
        for key in ("past_key_values", "assistant_model", "prefix_allowed_tokens_fn"):
            if kwargs.get(key) is not None:
                raise GenerateError(f"generate({key}=...) is not supported on the wafer")
        if kwargs.get("num_beams", 1) not in (1, None):
            raise GenerateError("beam search is not supported on the wafer (num_beams=1)")
        mask = kwargs.get("attention_mask")
        if mask is not None and not bool(torch.all(mask == 1)):
            raise GenerateError("prompts with padding (zeros in attention_mask) are not "
                                "supported: give prompts of one length")
        kwargs.pop("use_cache", None)
        batch, prompt = input_ids.shape
        if prompt + max_new_tokens > self.shape.positions:
            raise GenerateError(f"prompt {prompt} + {max_new_tokens} new tokens exceed the "
                                f"model's {self.shape.positions} positions")
        model = self.model
        do_sample = kwargs.get("do_sample")
        if do_sample is None:
            do_sample = bool(getattr(model.generation_config, "do_sample", False))
        self.sampling = "sample" if do_sample else "greedy"
        run = _Run(self, batch, prompt + max_new_tokens)
        original = type(model).forward

        @functools.wraps(original)
        def forward(*args: Any, **kw: Any) -> Any:
            return _serve(run, *args, **kw)

        model.forward = forward.__get__(model)   # type: ignore[method-assign]
        try:
            out = model.generate(input_ids, max_new_tokens=max_new_tokens, use_cache=False,
                                 **kwargs)
        finally:
            del model.forward
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        new = int(seqs.shape[1] - prompt)
        self.last_generation = self._report(run, batch, prompt, max(1, new))
        return out

    def _report(self, run: _Run, batch: int, prompt: int, new: int) -> dict[str, Any]:
        """The plan's figures, its decode ones replaced by the steps that ran."""
        plan = self.plan(batch, prompt, new, sampling=self.sampling)
        rep = plan.report()
        steps = run.steps
        rep["tokens_generated"] = new
        rep["forward_runs"] = 1 + len(steps)
        rep["kv_cache_bytes_per_pe"] = sum(c.bytes_per_pe for c in run.caches)
        if steps:
            cycles = [s["cycles"] for s in steps]
            per_token = (sum(self.spec.seconds(c) for c in cycles) / len(cycles)
                         + plan.io_seconds["decode_step"])
            fab = sum(s["fabric"] for s in steps)
            closed = sum(s["closed_form_of_fabric_ops"] for s in steps)
            rep["decode_seconds_per_token"] = per_token
            rep["decode_tokens_per_second"] = batch / per_token
            total = plan.ttft_seconds + per_token * len(steps)
            rep["total_seconds"] = total
            rep["end_to_end_tokens_per_second"] = batch * new / total
            rep["decode_run"] = {
                "steps": len(steps),
                "step_cycles": cycles,
                "fabric_cycles": fab,
                "fabric_cycles_closed_form": closed,
                "fabric_cost_agreement": fab / closed if closed else 1.0,
                "local_cycles_closed_form": sum(s["local"] for s in steps),
                "program_step_cycles": [s["closed_form_cycles"] for s in steps],
                "plan_step_cycles": [c for _, c in plan.decode_steps],
            }
        rep["measured"] = ("decode: the program's GEMV and KV-attention kernels run on the "
                           "fabric (their cycles equal to their closed forms, checked), local "
                           "passes closed form; prefill: cost() closed form")
        rep["values"] = ("prefill on the host with the wafer's weights, K/V written into the "
                         "caches; every decode step through the decode program: GEMVs on the "
                         "fabric, attention over the resident KV cache")
        return rep


def _serve(run: _Run, *args: Any, **kw: Any) -> Any:
    """The model's forward during `generate`: the prompt (first call) is prefilled; each
    later call must extend the tokens seen by one, which is one decode step."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    ids = kw.pop("input_ids", None)
    if ids is None and len(args) > 1:
        ids = args[1]
    if ids is None:
        raise GenerateError("generate called the model without input_ids")
    cache = kw.get("past_key_values")
    if cache is not None and getattr(cache, "get_seq_length", lambda: 1)() != 0:
        raise GenerateError("a KV cache reached the wafer forward (use_cache=False)")
    mask = kw.get("attention_mask")
    if mask is not None and not bool(torch.all(mask == 1)):
        raise GenerateError("padding in the prompt is not supported")
    pos = kw.get("position_ids")
    n = ids.shape[1]
    if pos is not None and not torch.equal(pos.reshape(-1, n)[0],
                                           torch.arange(n, device=pos.device)):
        raise GenerateError("custom position_ids are not supported")
    ids = ids.cpu()
    with torch.no_grad():
        if run.seen is None:
            logits = run.prefill(ids)
        elif n == run.seen.shape[1] + 1 and torch.equal(ids[:, :-1], run.seen):
            logits = run.step(ids[:, -1], n - 1)
        else:
            raise GenerateError("generate's forward was not called with the previous "
                                "tokens plus one (the cache on the wafer follows one "
                                "sequence per row)")
    run.seen = ids
    return CausalLMOutputWithPast(logits=torch.from_numpy(logits)[:, None])


def fabric_check(program: DecodeProgram, spec: WaferSpec | str | None
                 ) -> dict[str, tuple[float, float]]:
    """Every GEMV and KV-attention op of a decode ``program`` run timing-only on the fabric
    (no weights needed: any size, e.g. a preset's step): ``{op: (fabric cycles, closed
    form)}``. `generate` makes the same comparison with values at every step it runs."""
    spec = get_spec(spec)
    out: dict[str, tuple[float, float]] = {}
    for op in program.ops:
        if op.kernel == "gemv" and op.gemv is not None and op.grid is not None:
            m, k, n = op.gemv
            res = gemv.run((m, k), (k, n), grid=op.grid, spec=spec, dtype=program.dtype,
                           accumulate="fp32")
            out[op.name] = (res.cycles, op.cycles)
        elif op.kernel == "kv_attention" and op.kv is not None:
            lay = op.kv
            att = kv_attention.run(spec, lay.batch, lay.kv_heads, lay.group, lay.head_dim,
                                   lay.context, (lay.rows, lay.cols), dtype=lay.dtype)
            out[op.name] = (att.cycles, op.cycles)
    return out


def compile_lm(model: torch.nn.Module, *, spec: WaferSpec | str | None = "wse2",
               grid: str | tuple[int, int] | None = None, dtype: str | None = None,
               name: str | None = None) -> CompiledLM:
    """A `CompiledLM` for a transformers causal LM (Llama, Mistral, Qwen2, GPT-2)."""
    return CompiledLM(model, spec=spec, grid=grid, dtype=dtype, name=name)


__all__ = ["CompiledLM", "GenerateError", "compile_lm", "fabric_check"]
