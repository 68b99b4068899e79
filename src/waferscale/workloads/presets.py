"""The model presets of the GenSLM workload, as data.

Kept apart from the builders so the table (names, files, parameter counts, corrections)
can be read and printed without importing transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

#: Positions of the base GenSLM configs; longer sequences need the ``pos10240`` files.
BASE_POSITIONS = 2048
#: Positions of the long-sequence configs: a whole SARS-CoV-2 genome in codons.
LONG_POSITIONS = 10240


@dataclass(frozen=True)
class GenslmPreset:
    """One GenSLM model size.

    ``config`` is the shipped GPT-NeoX JSON; ``long_config`` the variant with 10,240
    positions (``None`` where upstream published none: the base config with its
    ``max_position_embeddings`` raised to 10,240, the one key the published pairs differ
    in). ``upstream_name`` is the name
    GenSLM gives the model (a parameter count); ``params`` is what the shipped config
    really builds, after ``corrections`` (config keys ``build_genslm`` overrides because
    the published value cannot be built). ``note`` says why the two counts differ.
    """

    name: str
    config: str
    long_config: str | None
    upstream_name: str
    params: int
    corrections: Mapping[str, int] = field(default_factory=dict)
    note: str = ""


GENSLM_PRESETS: Mapping[str, GenslmPreset] = MappingProxyType(
    {
        "genslm-25m": GenslmPreset(
            name="genslm-25m",
            config="neox-25m.json",
            long_config="neox-25m-pos10240.json",
            upstream_name="neox_25,290,752",
            params=25_290_752,
        ),
        "genslm-250m": GenslmPreset(
            name="genslm-250m",
            config="neox-250m.json",
            long_config="neox-250m-pos10240.json",
            upstream_name="neox_244,464,576",
            params=253_429_376,
            note=(
                "the upstream name counts hidden_size 1800 (which 16 heads do not divide); "
                "the published config has 1840, which builds 253,429,376 parameters"
            ),
        ),
        "genslm-2.5b": GenslmPreset(
            name="genslm-2.5b",
            config="neox-2.5b.json",
            long_config=None,
            upstream_name="neox_2,533,931,008",
            params=2_533_931_008,
        ),
        "genslm-25b": GenslmPreset(
            name="genslm-25b",
            config="neox-25b.json",
            long_config=None,
            upstream_name="neox_25,076,188,032",
            params=25_574_854_656,
            corrections={"hidden_size": 8192},
            note=(
                "the published hidden_size 8196 is not divisible by its 64 heads, which "
                "transformers rejects (and whose fused QKV reshape cannot run); it is built "
                "with 8192 (head size 128). The upstream name counts hidden_size 8096, "
                "which 64 heads do not divide either"
            ),
        ),
    }
)

#: Every name :func:`waferscale.workloads.build_model` accepts.
MODEL_NAMES: tuple[str, ...] = (*GENSLM_PRESETS, "gpt2")
