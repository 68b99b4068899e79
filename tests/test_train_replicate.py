"""Training estimates that trace three layers and replicate the middle one.

A training step of a 64-layer model costs dynamo and aot_autograd 20 times the tracing of a
3-layer one; `report.training.capture_plans` traces three and grows the plans
(`compiler.streaming.replicate_layers`). The grown plans must be the whole trace's: the
same stages (kind, layer, cycles, weights in, gradients out) in the same order, the same
kept activations and the same step figures, checked here on GenSLM-25M (8 layers, small
enough to trace whole).
"""

from __future__ import annotations

from typing import Any

import pytest

from waferscale.compiler.streaming import StreamPlan, StreamStage, replicate_layers
from waferscale.hardware.system import CS2_SYSTEM
from waferscale.report.training import capture_plans, load_meta_step
from waferscale.runtime.weight_streaming import training_report


def _without_names(x: Any) -> Any:
    """A report with the stage names (which differ: copies get suffixes) and wall times
    taken out."""
    if isinstance(x, dict):
        return {k: _without_names(v) for k, v in x.items()
                if k not in ("stage", "compile_seconds", "traced")}
    if isinstance(x, list):
        return [_without_names(v) for v in x]
    return x


def _step(replicate: bool) -> tuple[dict[str, Any], Any]:
    m, ex, grad_bytes = load_meta_step("genslm-25m", seq=128, batch=1)
    plans = capture_plans(m, ex, replicate=replicate)
    rep = training_report(plans.fw, plans.bw, plans.spec, CS2_SYSTEM, batch=1, tokens=128,
                          grad_elem_bytes=grad_bytes)
    return rep, plans


@pytest.fixture(scope="module")
def both() -> tuple[tuple[dict[str, Any], Any], tuple[dict[str, Any], Any]]:
    return _step(False), _step(True)


def test_three_traced_layers_give_the_whole_trace(both) -> None:
    (full, fp), (grown, gp) = both
    assert fp.info["traced"] == "every layer traced"
    assert gp.info["traced"].startswith("3 of 8 identical layers traced")
    for a, b in ((fp.fw, gp.fw), (fp.bw, gp.bw)):
        assert [(s.kind, s.layer, s.compute_cycles, s.weight_bytes, s.grad_bytes,
                 s.on_wafer) for s in a.stages] == [
            (s.kind, s.layer, s.compute_cycles, s.weight_bytes, s.grad_bytes, s.on_wafer)
            for s in b.stages]
        assert a.saved_bytes == b.saved_bytes
        assert sorted(a.saved_by_layer) == sorted(b.saved_by_layer)
        assert a.working_bytes == b.working_bytes
    assert _without_names(full) == _without_names(grown)
    assert gp.info["parameters"] == fp.info["parameters"]


def test_backward_rows_name_their_layers(both) -> None:
    (_, fp), _ = both
    layers = [s.layer for s in fp.bw.stages if s.layer.startswith("layer ")]
    # the backward meets the layers last first, each in one run
    order = list(dict.fromkeys(layers))
    assert order == [f"layer {i}" for i in range(7, -1, -1)]


def _stage(layer: str, cycles: float = 1.0) -> StreamStage:
    return StreamStage(f"s_{layer}", "gemm", layer, cycles, 10, 0, True)


def test_replicate_needs_three_separable_layers() -> None:
    def plan(*layers: str) -> StreamPlan:
        return StreamPlan(tuple(_stage(x) for x in layers), 0, 0, 1)

    grown = replicate_layers(plan("embed", "layer 0", "layer 1", "layer 2", "head"), 5)
    assert grown is not None
    assert [s.layer for s in grown.stages] == ["embed"] + [f"layer {i}" for i in range(5)] \
        + ["head"]
    back = replicate_layers(plan("head", "layer 2", "layer 1", "layer 0"), 5)
    assert back is not None
    assert [s.layer for s in back.stages] == ["head"] + [f"layer {i}" for i in (4, 3, 2, 1, 0)]
    # a layer split in two runs, or a fourth layer: not a three-layer trace
    assert replicate_layers(plan("layer 0", "layer 1", "layer 0", "layer 2"), 5) is None
    assert replicate_layers(plan("layer 0", "layer 1", "layer 2", "layer 3"), 5) is None
