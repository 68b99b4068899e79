"""MODEL as the commands and benchmarks name it: a preset or ``path/file.py:factory``.

The preset names and parameter counts are the workload's own table
(`waferscale.workloads.presets`); this module only turns a name into a module with example
inputs, so that the CLI, the tests and the benchmarks all build the same model the same way
(and the CLI is left to parse arguments and print).

A ``factory()`` returns a module (whose ``config.vocab_size`` sizes random ``input_ids``)
or ``(module, example_inputs)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from waferscale.compiler.errors import CompileError
from waferscale.workloads.llm import LLM_PRESETS
from waferscale.workloads.presets import GENSLM_PRESETS, MODEL_NAMES

#: The LLM presets (`workloads.llm`: published configs) other than ``gpt2``, which keeps
#: its meaning here (the 2-layer model of `build_gpt2`); `load_llm` builds all of them.
LLM_ONLY: tuple[str, ...] = tuple(n for n in LLM_PRESETS if n not in MODEL_NAMES)
#: Every preset MODEL may name: the GenSLM sizes, ``gpt2``, then the LLM presets.
PRESETS: tuple[str, ...] = MODEL_NAMES + LLM_ONLY
#: Tokens per sample the commands use when ``--seq`` is not given (`default_seq`).
DEFAULT_SEQ = 2048
#: Above this many parameters a preset is built on the meta device (no weights here).
META_ABOVE = 1_000_000_000
#: GPT-2 small, rounded; the GenSLM counts come from the preset table.
GPT2_PARAMS = 124_000_000


def default_seq(model: str) -> int:
    """`DEFAULT_SEQ`, or the model's learned position table when it is shorter: ``gpt2``
    (`build_gpt2`, GPT-2 small's 1,024 positions) refused ``compile gpt2`` on the defaults.
    The GPT-2 sizes of `workloads.llm` build a table as long as the sequence."""
    if model == "gpt2":
        return min(DEFAULT_SEQ, int(LLM_PRESETS["gpt2"].config["n_positions"]))
    return DEFAULT_SEQ


class ModelSpecError(CompileError):
    """MODEL is neither a preset nor a loadable ``file.py:factory``."""


def preset_params(name: str) -> int:
    """Parameter count of a preset, known before building it: callers use it to decide
    whether the weights can be materialised at all (see ``META_ABOVE``)."""
    if name in LLM_ONLY:
        return LLM_PRESETS[name].params
    return GENSLM_PRESETS[name].params if name in GENSLM_PRESETS else GPT2_PARAMS


def load_model(model: str, *, seq: int, batch: int, meta: bool = False, layers: int | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any] | tuple[Any, ...], int]:
    """(module, example inputs, vocabulary size) for MODEL.

    ``meta`` builds a preset without weights (enough to plan and time it); ``layers`` keeps
    only the first decoder layers, for quick runs. The vocabulary size is 0 when a factory's
    model has no ``config.vocab_size``.
    """
    if model in LLM_ONLY:
        m = load_llm(model, meta=meta, layers=layers)
        vocab = int(m.config.vocab_size)
        return m, {"input_ids": torch.randint(0, vocab, (batch, seq))}, vocab
    if model in PRESETS:
        return _load_preset(model, seq=seq, batch=batch, meta=meta, layers=layers)
    return _load_factory(model, seq=seq, batch=batch)


def load_llm(model: str, *, meta: bool, layers: int | None = None) -> torch.nn.Module:
    """A causal LM for ``waferscale generate``: an LLM preset (`workloads.llm`, ``gpt2``
    being the published 12-layer GPT-2 here) on the meta device or with random weights, or
    a ``file.py:factory``'s module."""
    if model in LLM_PRESETS:
        from waferscale.workloads.llm import build_llm

        return build_llm(model, device="meta" if meta else "cpu", layers=layers)
    return _load_factory(model, seq=1, batch=1)[0]


def _load_preset(model: str, *, seq: int, batch: int, meta: bool, layers: int | None
                 ) -> tuple[torch.nn.Module, dict[str, Any], int]:
    from waferscale.workloads import build_model

    kw: dict[str, Any] = {"seq_len": seq}
    if meta:
        kw["device"] = "meta"
    m = build_model(model, **kw)
    if layers is not None:
        truncate_layers(m, layers)
    vocab = int(m.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, seq))
    return m, {"input_ids": ids}, vocab


def _load_factory(model: str, *, seq: int, batch: int
                  ) -> tuple[torch.nn.Module, dict[str, Any] | tuple[Any, ...], int]:
    """Import ``path/file.py`` and call ``factory()``; every way this can fail is a
    `ModelSpecError` naming what to change, never an import traceback."""
    if ":" not in model or not model.split(":")[0].endswith(".py"):
        raise ModelSpecError(f"model {model!r}: use a preset ({', '.join(PRESETS)}) or "
                             f"path/file.py:factory")
    path, factory = model.rsplit(":", 1)
    if not Path(path).is_file():
        raise ModelSpecError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, factory):
        raise ModelSpecError(f"{path} has no function {factory!r}")
    made = getattr(mod, factory)()
    if isinstance(made, tuple):
        m, example = made
    else:
        m = made
        vocab = _vocab_size(m)
        if not vocab:
            raise ModelSpecError(f"{factory}() returned a model without config.vocab_size; "
                                 f"return (model, example_inputs) instead")
        example = {"input_ids": torch.randint(0, vocab, (batch, seq))}
    return m, example, _vocab_size(m)


def _vocab_size(m: Any) -> int:
    return int(getattr(getattr(m, "config", None), "vocab_size", 0) or 0)


def truncate_layers(m: torch.nn.Module, layers: int) -> None:
    """Keep the first ``layers`` decoder layers of a GPT-NeoX or GPT-2 model, in place.

    A shorter model of the same width compiles and simulates in seconds, which is what
    tests and quick runs need; ``config.num_hidden_layers`` follows so the model stays
    self-consistent. A model of another shape, or ``layers`` not below the depth, is left
    unchanged.
    """
    base = getattr(m, "gpt_neox", None) or getattr(m, "transformer", None)
    blocks = getattr(base, "layers", None) or getattr(base, "h", None)
    if blocks is not None and layers < len(blocks):
        del blocks[layers:]
        m.config.num_hidden_layers = layers


__all__ = ["GPT2_PARAMS", "LLM_ONLY", "META_ABOVE", "PRESETS", "ModelSpecError", "load_llm",
           "load_model", "preset_params", "truncate_layers"]
