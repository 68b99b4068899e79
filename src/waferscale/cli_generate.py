"""`waferscale generate`: LLM inference on the wafer, prefill and decode with a KV cache.

    waferscale generate MODEL --prompt-len P --new-tokens N [--batch B] [--spec S]
                              [--grid RxC] [--sample] [--estimate] [--json]

MODEL is an LLM preset (`waferscale.workloads.llm`: llama3-8b, llama3.1-8b, llama3.1-70b,
mistral-7b, qwen2-7b, gpt2, gpt2-medium, gpt2-large, gpt2-xl) or ``file.py:factory``
returning a transformers causal LM. The figures (time to first token, prefill and decode
tokens/s, SRAM per PE for the weights and the KV cache) come from the inference plan
(`waferscale.compiler.inference`). Presets and every model with ``--estimate`` are built
on the meta device and only planned; a factory's model with weights, small enough
(`SIMULATE_PARAMS_LIMIT`, `SIMULATE_TOKENS_LIMIT`), also generates its tokens on the
simulated wafer (`waferscale.generate`) from a random prompt.

The main CLI calls `register(app)`; the command runs under its error contract
(`waferscale.cli_contract._guard`: a user mistake prints one line ``error: ...`` and exits 2; with
``--json`` stdout carries exactly one strict JSON document, also on error).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from waferscale.cli_contract import JsonOpt
from waferscale.errors import WaferscaleError

#: Above these a model with weights is planned, not simulated (the value run prefills the
#: prompt on the host and runs every decode step's kernels on the fabric simulator).
SIMULATE_PARAMS_LIMIT = 20_000_000
SIMULATE_TOKENS_LIMIT = 64


def _count(text: str, option: str) -> int:
    from waferscale.cli_gpu import parse_count

    return parse_count(text, option)


def _load(model: str, meta: bool) -> Any:
    """The model; a factory that raises or returns no causal LM is the user's to fix."""
    from waferscale.models import ModelSpecError, load_llm
    from waferscale.workloads.llm import LLM_PRESETS

    if model in LLM_PRESETS:
        return load_llm(model, meta=meta)
    try:
        m = load_llm(model, meta=meta)
    except WaferscaleError:
        raise
    except Exception as exc:  # the user's code: reported as theirs, with its line
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith((str(Path(__file__).parent), "<"))]
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        raise ModelSpecError(f"model {model}: loading it raised {type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:300]}{where} (fix the file or "
                             f"the factory)") from exc
    if not hasattr(m, "generate") or not hasattr(m, "config"):
        raise ModelSpecError(f"model {model}: the factory returned {type(m).__name__}, not a "
                             f"transformers causal LM (generate needs one)")
    return m


def generate_report(model: str, *, prompt_len: int, new_tokens: int, batch: int = 1,
                    spec: str = "wse2", grid: str | None = None, estimate: bool = False,
                    sample: bool = False, seed: int = 0) -> dict[str, Any]:
    """The ``generate`` command's document: the inference plan's figures, and the tokens
    when the model is simulated (module docstring)."""
    import torch

    from waferscale.generate import compile_lm
    from waferscale.hardware import get_spec
    from waferscale.models import META_ABOVE
    from waferscale.workloads.llm import LLM_PRESETS

    wafer = get_spec(spec)
    # a preset too big to simulate here is built without weights (its count is known)
    big = model in LLM_PRESETS and LLM_PRESETS[model].params > min(META_ABOVE,
                                                                   SIMULATE_PARAMS_LIMIT)
    m = _load(model, estimate or big)
    lm = compile_lm(m, spec=wafer, grid=grid, name=model)
    params = lm.shape.parameters()
    simulate = not lm.meta and params <= SIMULATE_PARAMS_LIMIT \
        and prompt_len + new_tokens <= SIMULATE_TOKENS_LIMIT
    notes: list[str] = []
    if lm.meta:
        why = "" if estimate else (f"; {params:,} parameters, over the "
                                   f"{SIMULATE_PARAMS_LIMIT:,} this command simulates here")
        notes.append(f"estimate: built on the meta device (no weights{why}), planned and "
                     f"timed with the kernels' closed-form cost()")
    elif not simulate:
        notes.append(f"estimate: {params:,} parameters and {prompt_len + new_tokens} tokens "
                     f"are over what this command simulates here ({SIMULATE_PARAMS_LIMIT:,} "
                     f"parameters, {SIMULATE_TOKENS_LIMIT} tokens); planned and timed with the "
                     f"kernels' closed-form cost()")
    if simulate:
        vocab = int(m.config.vocab_size)
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab, (batch, prompt_len), generator=gen)
        kw: dict[str, Any] = {"do_sample": sample}
        if sample:
            torch.manual_seed(seed)
        out = lm.generate(ids, max_new_tokens=new_tokens, **kw)
        rep = lm.report()
        rep["mode"] = "simulated"
        rep["prompt_ids"] = ids.tolist()
        rep["tokens"] = out[:, prompt_len:].tolist()
        notes.append(f"simulated: random weights and a random prompt (seed {seed}); the "
                     f"tokens are what transformers' generate gives for the same model")
    else:
        plan = lm.plan(batch, prompt_len, new_tokens,
                       sampling="sample" if sample else "greedy")
        rep = plan.report()
        rep["mode"] = "estimate"
    rep["model"] = model
    rep["notes"] = notes + list(rep.get("notes", []))
    return rep


def _print(rep: dict[str, Any]) -> None:
    from waferscale.cli_contract import console

    table = Table(title=f"{rep['model']} on {rep['spec']} ({rep['grid']} PEs, {rep['dtype']}, "
                        f"{rep['mode']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("prompt x batch", f"{rep['prompt_len']} x {rep['batch']}"),
        ("new tokens", str(rep["new_tokens"])),
        ("fits one grid", f"{rep['fits']}" + ("" if rep["fits"] else
                                             f" ({rep['systems']} systems)")),
        ("time to first token", f"{rep['ttft_seconds'] * 1e3:,.3f} ms"),
        ("prefill tokens/s", f"{rep['prefill_tokens_per_second']:,.0f}"),
        ("decode time per token", f"{rep['decode_seconds_per_token'] * 1e6:,.1f} us"),
        ("decode tokens/s", f"{rep['decode_tokens_per_second']:,.0f}"),
        ("SRAM per PE: weights", f"{rep['weights_bytes_per_pe']:,} B"),
        ("SRAM per PE: KV cache", f"{rep['kv_cache_bytes_per_pe']:,} B"),
        ("SRAM per PE: kernels' buffers", f"{rep['sram_per_pe']['working']:,} B of "
                                          f"{rep['sram_per_pe']['capacity']:,}"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if rep.get("tokens") is not None:
        console.print(f"tokens: {rep['tokens']}")
    for note in rep["notes"]:
        console.print(f"- {note}")


def register(app: typer.Typer) -> None:
    """Add ``generate`` to the main CLI's ``app``."""

    @app.command(name="generate")
    def generate(model: Annotated[str, typer.Argument(
                     help="llama3-8b, llama3.1-8b, llama3.1-70b, mistral-7b, qwen2-7b, gpt2, "
                          "gpt2-medium/large/xl, or file.py:factory")],
                 prompt_len: Annotated[str, typer.Option(
                     "--prompt-len", help="prompt tokens per sequence")] = "128",
                 new_tokens: Annotated[str, typer.Option(
                     "--new-tokens", help="tokens to generate per sequence")] = "32",
                 batch: Annotated[str, typer.Option("--batch", help="sequences")] = "1",
                 spec: Annotated[str, typer.Option(
                     "--spec", help="Preset (wse1, wse2, wse3) or a .toml file.")] = "wse2",
                 grid: Annotated[str | None, typer.Option(
                     "--grid", help="RxC sub-rectangle of the wafer (default: all of it)")]
                 = None,
                 sample: Annotated[bool, typer.Option(
                     "--sample", help="sample (temperature/top-k, on the host) instead of "
                                      "greedy")] = False,
                 estimate: Annotated[bool, typer.Option(
                     "--estimate", help="plan and time only (meta weights)")] = False,
                 json_out: JsonOpt = False) -> None:
        """LLM inference: prefill and decode with the KV cache, weights resident."""
        from waferscale.cli_contract import _emit, _guard

        def body() -> None:
            rep = generate_report(model, prompt_len=_count(prompt_len, "--prompt-len"),
                                  new_tokens=_count(new_tokens, "--new-tokens"),
                                  batch=_count(batch, "--batch"), spec=spec, grid=grid,
                                  estimate=estimate, sample=sample)
            if json_out:
                _emit(rep)
            else:
                _print(rep)
        _guard(body)


__all__ = ["SIMULATE_PARAMS_LIMIT", "SIMULATE_TOKENS_LIMIT", "generate_report", "register"]
