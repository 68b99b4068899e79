"""GenSLM models and genome batches: the inputs the wafer-scale engine is measured on.

GenSLM (Zvyagin et al., 2022) trains GPT-NeoX models on SARS-CoV-2 genomes read as codon
tokens. This module rebuilds that model family from the published configs with random
weights (no checkpoint is downloaded: the engine's cost depends on shapes, not on trained
values) and turns genomes into ``[batch, seq_len]`` token tensors with causal-LM labels.

transformers is imported inside the builders, not at module import, so the FASTA reader and
the tokenizer stay usable (and fast to import) without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from waferscale.errors import WorkloadError
from waferscale.workloads.fasta import Record, data_path
from waferscale.workloads.presets import (
    BASE_POSITIONS,
    GENSLM_PRESETS,
    LONG_POSITIONS,
    MODEL_NAMES,
)
from waferscale.workloads.tokenizer import CodonTokenizer

if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

#: Label value the HuggingFace causal-LM loss ignores (``CrossEntropyLoss`` default).
IGNORE_INDEX = -100

#: Attention the builders select by default. "sdpa" keeps one fused op, which the compiler
#: maps to the flash-style attention kernel (scores stay on the PEs, so 10,240 codons fit);
#: "eager" writes attention as matmul, softmax and matmul (see docs/genslm.md).
DEFAULT_ATTENTION = "sdpa"

# Keys of the published JSONs that are not GPTNeoXConfig fields of current transformers
# (dropouts of the 4.21-era config, a DeepSpeed note); dropping them keeps the config free
# of dead attributes. Dropout stays at transformers' 0.0: these are measured, not trained.
_LEGACY_KEYS = (
    "attention_probs_dropout_prob",
    "hidden_dropout_prob",
    "use_deepspeed_checkpointing",
    "_deepspeed_checkpoint_comment",
    "torch_dtype",
    "transformers_version",
)


def _check_name(name: str) -> None:
    if name not in GENSLM_PRESETS:
        known = ", ".join(GENSLM_PRESETS)
        raise WorkloadError(f"unknown GenSLM model {name!r}; known: {known}")


def genslm_config_file(name: str, seq_len: int | None = None) -> str:
    """The shipped JSON for a model and sequence length.

    Sequences longer than 2,048 tokens need the ``pos10240`` config, which upstream
    publishes for 25M and 250M only; for 2.5B and 25B the base config is read and
    `genslm_config` extends its positions (see there). A longer ``seq_len`` than 10,240 is
    an error rather than a silently extended position table.
    """
    _check_name(name)
    preset = GENSLM_PRESETS[name]
    if seq_len is not None and seq_len < 1:
        raise WorkloadError(f"seq_len must be positive, got {seq_len}")
    if seq_len is None or seq_len <= BASE_POSITIONS or preset.long_config is None:
        return preset.config
    return preset.long_config


def genslm_config(
    name: str,
    seq_len: int | None = None,
    *,
    attn_implementation: str | None = DEFAULT_ATTENTION,
    dtype: torch.dtype = torch.float32,
) -> GPTNeoXConfig:
    """The ``GPTNeoXConfig`` ``build_genslm`` uses: published values, ``use_cache=False``,
    the preset's corrections, and ``attn_implementation`` (``None`` = transformers' choice).

    ``use_cache`` is off because a KV cache object breaks ``torch.export`` and training
    never uses one.
    """
    from transformers import GPTNeoXConfig

    fname = genslm_config_file(name, seq_len)
    raw: dict[str, Any] = json.loads(data_path(fname).read_text(encoding="utf-8"))
    for key in _LEGACY_KEYS:
        raw.pop(key, None)
    raw.update(GENSLM_PRESETS[name].corrections)
    if seq_len is not None and seq_len > BASE_POSITIONS and \
            GENSLM_PRESETS[name].long_config is None:
        # The upstream pos10240 files differ from the base ones in this key alone, and
        # GPT-NeoX's rotary positions have no parameters, so the long model has the base
        # model's weights; GenSLM ran 2.5B and 25B at 10,240 (docs/genslm.md).
        raw["max_position_embeddings"] = LONG_POSITIONS
    raw["use_cache"] = False
    config = GPTNeoXConfig(**raw)
    config.dtype = dtype
    if seq_len is not None and seq_len > config.max_position_embeddings:
        raise WorkloadError(
            f"seq_len {seq_len} exceeds {name}'s {config.max_position_embeddings} positions"
        )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def _seeded_build(cls: Any, config: Any, seed: int, device: str | torch.device | None,
                  dtype: torch.dtype) -> Any:
    """Build ``cls(config)`` with weights that depend on ``seed`` only.

    Weights are drawn on the CPU in float32 from a forked RNG, then moved and cast, so a
    seed gives the same model on every device and dtype (up to rounding) and the caller's
    global RNG state is untouched. ``device="meta"`` allocates nothing: shapes only, which
    is how the 25B model is built on a laptop.
    """
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = cls(config)
        return model.to(dtype=dtype).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = cls(config)
    model = model.to(device=device, dtype=dtype)
    # eval(): dropout is 0 anyway, but eval mode states that these are measured, not trained.
    return model.eval()


def build_genslm(
    name: str,
    seed: int = 0,
    device: str | torch.device | None = None,
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    attn_implementation: str | None = DEFAULT_ATTENTION,
) -> GPTNeoXForCausalLM:
    """A randomly initialised GenSLM ``GPTNeoXForCausalLM``.

    ``name`` is one of ``genslm-25m``, ``genslm-250m``, ``genslm-2.5b``, ``genslm-25b``.
    ``seq_len`` above 2,048 selects the 10,240-position config (25M, 250M only).
    ``device="meta"`` builds shapes without weights (use it for 2.5B and 25B on a CPU
    machine). The model is returned in eval mode with ``use_cache=False``.
    """
    from transformers import GPTNeoXForCausalLM

    config = genslm_config(name, seq_len, attn_implementation=attn_implementation, dtype=dtype)
    return _seeded_build(GPTNeoXForCausalLM, config, seed, device, dtype)


def gpt2_config(
    n_layer: int = 2,
    seq_len: int | None = None,
    *,
    attn_implementation: str | None = DEFAULT_ATTENTION,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> GPT2Config:
    """``transformers.GPT2Config()`` (GPT-2 small: 768 wide, 12 heads, 50,257 tokens, 1,024
    positions) with ``n_layer`` layers, ``use_cache=False`` and any ``overrides``.

    A familiar non-genomic reference model for tests: same builder, different architecture
    (learned positions, tied embeddings, Conv1D projections).
    """
    from transformers import GPT2Config

    if n_layer < 1:
        raise WorkloadError(f"n_layer must be positive, got {n_layer}")
    config = GPT2Config(n_layer=n_layer, use_cache=False, **overrides)
    config.dtype = dtype
    if seq_len is not None and not 1 <= seq_len <= config.n_positions:
        raise WorkloadError(
            f"seq_len {seq_len} outside gpt2's 1..{config.n_positions} positions: use at "
            f"most {config.n_positions} tokens (--seq), or pass n_positions= to build a "
            "longer table"
        )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def build_gpt2(
    n_layer: int = 2,
    seed: int = 0,
    device: str | torch.device | None = None,
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    attn_implementation: str | None = DEFAULT_ATTENTION,
    **overrides: Any,
) -> GPT2LMHeadModel:
    """A randomly initialised ``GPT2LMHeadModel`` from :func:`gpt2_config` (eval mode)."""
    from transformers import GPT2LMHeadModel

    config = gpt2_config(
        n_layer, seq_len, attn_implementation=attn_implementation, dtype=dtype, **overrides
    )
    return _seeded_build(GPT2LMHeadModel, config, seed, device, dtype)


def build_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build any preset by name (``MODEL_NAMES``): the GenSLM sizes or ``gpt2``."""
    if name == "gpt2":
        return build_gpt2(**kwargs)
    if name not in GENSLM_PRESETS:
        raise WorkloadError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return build_genslm(name, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once); works on meta models."""
    return sum(p.numel() for p in model.parameters())


class GenomeBatch(NamedTuple):
    """Model inputs for causal-LM training on genomes, all ``[batch, seq_len]`` int64.

    ``labels`` equal ``input_ids`` with padding set to -100: HuggingFace causal-LM heads
    shift labels by one inside the model, and -100 keeps padding out of the loss.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def genome_batch(
    records: Sequence[Record | str],
    tokenizer: CodonTokenizer | None,
    seq_len: int,
    batch: int,
) -> GenomeBatch:
    """Tokenize genomes into a fixed-shape batch.

    Row ``i`` is genome ``records[i % len(records)]`` from its first codon, truncated or
    padded to ``seq_len`` tokens: GenSLM trains on whole genomes from the start, one per
    sample, and a workload needs a fixed shape more than distinct rows, so a batch larger
    than the record list repeats genomes. ``tokenizer`` ``None`` means the shipped
    :class:`CodonTokenizer`.
    """
    if seq_len < 1 or batch < 1:
        raise WorkloadError(f"seq_len and batch must be positive, got {seq_len} and {batch}")
    if not records:
        raise WorkloadError("genome_batch needs at least one record")
    tok = tokenizer if tokenizer is not None else CodonTokenizer()
    rows = []
    masks = []
    encoded: dict[int, tuple[list[int], list[int]]] = {}
    for i in range(batch):
        k = i % len(records)
        if k not in encoded:
            rec = records[k]
            seq = rec.sequence if isinstance(rec, Record) else rec
            enc = tok.encode(seq, max_length=seq_len, padding=True, truncation=True)
            encoded[k] = (enc.ids, enc.attention_mask)
        rows.append(encoded[k][0])
        masks.append(encoded[k][1])
    input_ids = torch.tensor(rows, dtype=torch.long)
    attention_mask = torch.tensor(masks, dtype=torch.long)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return GenomeBatch(input_ids, labels, attention_mask)
