"""Estimate-mode capture of repeated decoder layers: export two layers, replicate the rest.

The replicated graph must be the whole model's: same ops, parameters, FLOPs, bytes and the
same plan timing as a layer-by-layer export of every layer (checked on GenSLM-25M, small
enough to export whole in a few seconds).
"""

from __future__ import annotations

import pytest

from waferscale.api import CompiledModel, lower_graph
from waferscale.compiler import capture as cap
from waferscale.hardware import get_spec
from waferscale.models import load_model

KEYS = ("samples_per_second", "tokens_per_second", "period_cycles", "pipeline_fill_seconds",
        "flops_per_batch", "weight_bytes", "parameters", "sram_bytes", "pes_used",
        "sram_needed_bytes")


def _report(replicate: bool) -> tuple[dict, int]:
    m, example, _ = load_model("genslm-25m", seq=128, batch=1, meta=True)
    g = cap.capture(m, example, replicate=replicate)
    prog = lower_graph(g, get_spec("wse2"), mode="estimate")
    return CompiledModel(prog, example).report(), len(g.nodes)


def test_replicated_layers_give_the_full_export_estimate() -> None:
    full, n_full = _report(False)
    rep, n_rep = _report(True)
    assert n_rep == n_full
    assert rep["op_counts"] == full["op_counts"]
    assert rep["mode"] == full["mode"]
    for key in KEYS:
        assert rep[key] == pytest.approx(full[key], rel=1e-3), key
    assert [s["kind"] for s in rep["stages"]] == [s["kind"] for s in full["stages"]]
    assert [s["stage_cycles"] for s in rep["stages"]] == pytest.approx(
        [s["stage_cycles"] for s in full["stages"]], rel=1e-3)


def test_replication_finds_the_decoder_and_keeps_each_layers_parameters() -> None:
    m, example, _ = load_model("genslm-25m", seq=64, batch=1, meta=True)
    prefix, blocks = cap.repeated_blocks(m)
    assert prefix == "gpt_neox.layers" and len(blocks) == m.config.num_hidden_layers
    g = cap.capture_replicated(m, example)
    assert g is not None
    assert len(m.gpt_neox.layers) == m.config.num_hidden_layers  # model restored
    ids = {id(t) for t in g.constants.values()}
    for p in m.parameters():
        assert id(p) in ids


def test_real_weight_models_are_exported_whole_by_default() -> None:
    m, example, _ = load_model("genslm-25m", seq=16, batch=1, layers=3)
    g = cap.capture(m, example)
    assert not any(name.endswith("_l2") for name in g.nodes)
