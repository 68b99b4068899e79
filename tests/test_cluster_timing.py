"""The cluster timing model (SwarmX broadcast and reduction through a tree, overlapped with
compute) on hand-made stage plans, the scaling report's reasoning, and the cluster
commands' bad inputs (one line, exit 2, one JSON document with --json)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from waferscale.cli import app
from waferscale.compiler.streaming import StreamPlan, StreamStage
from waferscale.errors import SpecError
from waferscale.hardware.spec import get_spec
from waferscale.hardware.system import SystemSpec
from waferscale.report.scaling import parse_systems, scaling_rows, why_not_linear
from waferscale.runtime.swarmx import ClusterError
from waferscale.runtime.weight_streaming import training_report

SPEC = get_spec("wse2")
#: 1 GB/s each way per system, 1 ms per tree level: round numbers.
SYS = SystemSpec(stream_bits_per_s=8e9, swarmx_level_latency_s=1e-3,
                 memoryx_update_bytes_per_s=1e15)


def _stage(name: str, seconds: float, weights: float, grads: float = 0) -> StreamStage:
    return StreamStage(name, "gemm", "", seconds * SPEC.clock_hz, int(weights), int(grads),
                       True)


def _plans(compute: float, weights: float, stages: int = 4) -> SimpleNamespace:
    """A step of ``stages`` forward and backward stages, each ``compute`` seconds per
    sample-batch with ``weights`` bytes streamed (and as many gradient bytes back)."""
    def plan(kind: str, g: float) -> StreamPlan:
        return StreamPlan(tuple(_stage(f"{kind}{i}", compute, weights, g)
                                for i in range(stages)), 0, 0, SPEC.pes * SPEC.sram_bytes)
    return SimpleNamespace(fw=plan("f", 0), bw=plan("b", weights), spec=SPEC)


def test_tree_bandwidth_and_latency_come_from_the_spec() -> None:
    s = SystemSpec()
    assert s.tree_bytes_per_s() == pytest.approx(1.2e12 / 8)     # 12 lanes x 100 Gb/s
    assert SystemSpec(swarmx_lanes=6).tree_bytes_per_s() == pytest.approx(6e11 / 8)
    assert [s.tree_latency_s(n) for n in (1, 4, 5, 16, 17, 192)] == pytest.approx(
        [2e-6, 2e-6, 4e-6, 4e-6, 6e-6, 8e-6])
    with pytest.raises(SpecError, match="swarmx_lanes"):
        SystemSpec(swarmx_lanes=1.5)


def test_compute_bound_steps_scale_linearly() -> None:
    """1 s of compute per stage, 0.1 GB (0.1 s) of weights: the tree's extra levels hide
    behind compute, so N systems give N x the samples/s to 192 systems."""
    rows = scaling_rows(lambda b: _plans(1.0, 1e8), SYS, systems=[1, 2, 4, 16, 192], seq=8)
    assert [r["tree_levels"] for r in rows] == [1, 1, 1, 2, 4]
    assert [r["scaling_efficiency"] for r in rows] == pytest.approx([1.0] * 5, rel=2e-3)
    assert rows[-1]["samples_per_second"] == pytest.approx(192 * rows[0]["samples_per_second"],
                                                           rel=2e-3)
    # what is left: the first stage's weights and the last gradients wait the tree
    assert rows[-1]["swarmx_exposed_seconds"] == pytest.approx(4 * 3e-3)
    assert why_not_linear(rows)["linear_until"] == 192


def test_weight_bound_steps_pay_the_tree_latency_per_transfer() -> None:
    """Weight-bound stages (0.1 s compute, 1 GB = 1 s of weights): each transfer waits the
    tree's latency, 1 ms per level. 16 systems (2 levels) add 1 ms per weight or gradient
    transfer on the critical path; the report names the tree as the reason."""
    rows = scaling_rows(lambda b: _plans(0.1, 1e9), SYS, systems=[1, 4, 16], seq=8)
    one, four, sixteen = rows
    assert four["seconds_per_step"] == pytest.approx(one["seconds_per_step"])
    assert sixteen["seconds_per_step"] > one["seconds_per_step"]
    assert sixteen["swarmx_exposed_seconds"] > four["swarmx_exposed_seconds"] > 0
    assert sixteen["scaling_efficiency"] < 1.0
    verdict = why_not_linear(rows, threshold=0.9999)
    assert verdict["first_below"] == 16 and "levels" in verdict["why"]


def test_strong_scaling_stops_when_compute_no_longer_hides_the_weights() -> None:
    """A fixed global batch of 16: per-system compute shrinks with N (0.25 s per sample
    per stage here), the weights per step (1 GB = 1 s per stage) do not: from 4 systems
    on a stage computes no longer than its weights take to arrive, the step is weight-I/O
    bound and efficiency falls (0.92, 0.80, 0.44, 0.23 at 2, 4, 8, 16)."""
    def plans_for(b: int) -> SimpleNamespace:
        return _plans(0.25 * b, 1e9)
    rows = scaling_rows(plans_for, SYS, systems=[1, 2, 4, 8, 16], seq=8, global_batch=16)
    assert [r["batch_per_system"] for r in rows] == [16, 8, 4, 2, 1]
    eff = [r["scaling_efficiency"] for r in rows]
    assert eff[0] == pytest.approx(1.0) and eff[1] > 0.9 and eff[-1] < 0.5
    assert [r["bound"] for r in rows] == ["compute"] * 2 + ["weight I/O"] * 3
    verdict = why_not_linear(rows)
    assert verdict["first_below"] == 2 and "weights every system receives" in verdict["why"]


def test_cluster_samples_per_second_count_every_system() -> None:
    p = _plans(1.0, 1e8)
    one = training_report(p.fw, p.bw, SPEC, SYS, batch=2, tokens=16)
    four = training_report(p.fw, p.bw, SPEC, SYS, batch=2, tokens=16, systems=4)
    assert four["global_batch"] == 8 and four["batch_per_system"] == 2
    assert four["samples_per_second"] == pytest.approx(4 * one["samples_per_second"])


def test_system_counts_are_checked() -> None:
    assert parse_systems("16,1,4,4") == [1, 4, 16]
    for bad, match in (("0", "at least 1 system"), ("1,x", "comma-separated"),
                       ("193", "at most 192"), ("", "at least one")):
        with pytest.raises(ClusterError, match=match):
            parse_systems(bad)


@pytest.mark.parametrize("args,match", [
    (["scaling", "genslm-25m", "--systems", "0"], "--systems 0"),
    (["scaling", "genslm-25m", "--systems", "2", "--global-batch", "3"],
     "does not split evenly"),
    (["scaling", "genslm-25m", "--systems", "4", "--plot", "out.txt"], "image format"),
    (["train", "genslm-25m", "--fasta", "x.fa", "--systems", "0"], "--systems 0"),
    (["train", "genslm-25m", "--fasta", "x.fa", "--systems", "4", "--batch", "2"],
     "cannot be split over 4 systems"),
    (["train", "genslm-25m", "--fasta", "x.fa", "--systems", "2", "--batch", "2",
      "--address", "127.0.0.1:1"], "no Ray cluster answers there"),
    (["train", "genslm-25m", "--fasta", "x.fa", "--address", "127.0.0.1:1"],
     "add --systems 2 or more"),
    (["sweep", "--systems", "0"], "--systems 0"),
    (["sweep", "--out", "table.txt"], "CSV"),
    (["sweep", "--models", "nope"], "neither a preset"),
])
def test_bad_cluster_input_is_one_line_and_one_json_document(args: list[str],
                                                              match: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert match in doc["error"]["message"]
    assert "\n" not in doc["error"]["message"]
