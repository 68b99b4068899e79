"""`generate` on the wafer: the tokens transformers' ``generate`` would give, and how fast.

``waferscale.compile_lm(model, spec=..., grid=...)`` returns a `CompiledLM`; its
``generate(input_ids, max_new_tokens=N, ...)`` takes the same arguments as transformers'
(greedy by default; ``do_sample``, ``temperature``, ``top_k``, ``top_p``; the model's
``generation_config`` supplies the rest) and returns the same ``[batch, prompt + N]``
tokens, and ``report()`` says what the wafer would take to produce them.

Where the numbers come from (one line each; details in docs/inference.md):

* **values**: the model's forward, compiled for the wafer by `waferscale.compile`
  (pipelined program, real weights) and run on the fabric simulator once per generated
  token over the whole prefix. The program is compiled once for the longest prefix
  (``prompt + N - 1`` tokens); a shorter prefix is padded at the end, which changes
  nothing before it (causal attention, per-token norms and positions), so the logits at
  the prefix's last position are those a KV-cached step computes (``use_cache``
  semantics). The generation loop itself is transformers' own ``generate`` with
  ``use_cache=False`` and the model's forward served by that program, so logits
  processors, sampling (the same ``torch.multinomial`` draws from the global RNG: same
  seed, same tokens), ``eos`` handling and padding are transformers' code, not a copy.
* **cycles**: the inference plan (`compiler.inference.plan_inference`): prefill with
  MeshGEMM and the flash-attention kernel, decode with MeshGEMV and the KV-cache attention
  kernel, weights and cache resident, all from the kernels' closed-form ``cost()``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from waferscale.compiler.errors import CompileError
from waferscale.compiler.floorplan import FloorplanConfig
from waferscale.compiler.inference import DecoderShape, InferencePlan, plan_inference
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import fabric_dtype

#: The value program's floorplanner settings: its placement changes no value (and no
#: reported cycle: those come from the inference plan), so a short anneal does.
VALUE_PLACER = FloorplanConfig(time_limit_s=None, moves_per_block=4, seed=0)



class GenerateError(CompileError):
    """A generation request this engine cannot serve (padding in the prompt, a cache
    passed in, a model built without weights, no ``max_new_tokens``)."""


class _Logits(torch.nn.Module):
    """The model's forward as the compiler captures it: ids in, all positions' logits out,
    no cache. It calls the class's forward, not the instance's (which `generate` serves
    from the compiled program while it runs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = type(self.model).forward(self.model, input_ids=input_ids, use_cache=False)
        return out.logits if hasattr(out, "logits") else out[0]


class CompiledLM:
    """A causal LM compiled for generation on the wafer (module docstring).

    ``spec``: the wafer; ``grid``: ``"RxC"`` (or a pair) restricting the inference plan to
    a sub-rectangle of it (the value path is not affected); ``dtype``: the storage dtype
    the plan assumes (default: the model's parameters').
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
        self._programs: dict[tuple[int, int], Any] = {}
        self.last_generation: dict[str, Any] | None = None
        self.plan(1, 1, 1)        # a bad grid or an unknown architecture fails here

    # ------------------------------------------------------------------ timing ---------
    def plan(self, batch: int, prompt_len: int, new_tokens: int, *, sampling: str = "greedy"
             ) -> InferencePlan:
        """The inference plan (cycles from the kernels' closed forms) for a request."""
        return plan_inference(self.shape, self.spec, grid=self.grid, batch=batch,
                              prompt_len=prompt_len, new_tokens=new_tokens, dtype=self.dtype,
                              sampling=sampling)

    def report(self) -> dict[str, Any]:
        """The last ``generate``'s figures (`InferencePlan.report` plus what ran)."""
        if self.last_generation is None:
            raise GenerateError("nothing generated yet: call generate() first, or plan() "
                                "for an estimate")
        return dict(self.last_generation)

    # ------------------------------------------------------------------ values ---------
    def program(self, batch: int, length: int) -> Any:
        """The compiled forward for ``batch`` sequences of ``length`` tokens (cached)."""
        key = (batch, length)
        if key not in self._programs:
            from waferscale.api import compile as wafer_compile

            ids = torch.zeros((batch, length), dtype=torch.long)
            with torch.random.fork_rng(devices=[]):
                prog = wafer_compile(_Logits(self.model), (ids,), spec=self.spec,
                                     placer_config=VALUE_PLACER)
            if prog.mode != "pipelined":
                raise GenerateError(
                    f"the forward compiled in {prog.mode} mode: only a model that runs "
                    f"pipelined here (real weights that fit the wafer) can produce tokens; "
                    f"plan() gives the timing of any model")
            self._programs[key] = prog
        return self._programs[key]

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
        if kwargs.get("use_cache") is not None:
            kwargs.pop("use_cache")
        batch, prompt = input_ids.shape
        length = prompt + max_new_tokens - 1
        if prompt + max_new_tokens > self.shape.positions:
            raise GenerateError(f"prompt {prompt} + {max_new_tokens} new tokens exceed the "
                                f"model's {self.shape.positions} positions")
        prog = self.program(batch, length)
        runs = {"count": 0}
        model = self.model
        original = type(model).forward

        @functools.wraps(original)
        def forward(*args: Any, **kw: Any) -> Any:
            return self._serve(prog, length, runs, *args, **kw)

        model.forward = forward.__get__(model)   # type: ignore[method-assign]
        try:
            out = model.generate(input_ids, max_new_tokens=max_new_tokens, use_cache=False,
                                 **kwargs)
        finally:
            del model.forward
        seqs = out if isinstance(out, torch.Tensor) else out.sequences
        new = int(seqs.shape[1] - prompt)
        do_sample = kwargs.get("do_sample")
        if do_sample is None:
            do_sample = bool(getattr(model.generation_config, "do_sample", False))
        plan = self.plan(batch, prompt, max(1, new), sampling="sample" if do_sample
                         else "greedy")
        rep = plan.report()
        rep.update({
            "tokens_generated": new,
            "forward_runs": runs["count"],
            "values": (f"compiled forward (pipelined program of {length} tokens, batch "
                       f"{batch}) run on the fabric simulator once per token over the "
                       f"prefix; cycles from the inference plan's closed forms"),
            "value_program_mode": prog.mode,
        })
        self.last_generation = rep
        return out

    def _serve(self, prog: Any, length: int, runs: dict[str, int], *args: Any,
               **kw: Any) -> Any:
        """The model's forward during `generate`: the prefix padded to the program's
        length, run on the wafer, its logits cut back to the prefix."""
        from transformers.modeling_outputs import CausalLMOutputWithPast

        ids = kw.pop("input_ids", None)
        if ids is None and args:
            self_arg, *rest = args
            ids = rest[0] if rest else None
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
        if n > length:
            raise GenerateError(f"the forward was asked for {n} tokens, more than the "
                                f"compiled {length}")
        padded = torch.zeros((ids.shape[0], length), dtype=ids.dtype)
        padded[:, :n] = ids
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            logits = prog(padded)
        runs["count"] += 1
        logits = logits[:, :n]
        keep = kw.get("logits_to_keep") or kw.get("num_logits_to_keep")
        if isinstance(keep, int) and keep > 0:
            logits = logits[:, -keep:]
        return CausalLMOutputWithPast(logits=logits)


def compile_lm(model: torch.nn.Module, *, spec: WaferSpec | str | None = "wse2",
               grid: str | tuple[int, int] | None = None, dtype: str | None = None,
               name: str | None = None) -> CompiledLM:
    """A `CompiledLM` for a transformers causal LM (Llama, Mistral, Qwen2, GPT-2)."""
    return CompiledLM(model, spec=spec, grid=grid, dtype=dtype, name=name)


__all__ = ["CompiledLM", "GenerateError", "compile_lm"]
