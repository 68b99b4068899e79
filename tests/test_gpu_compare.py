"""Side by side, the quote, the prices file and the CLI contract of `gpu`, `compare`,
`quote`. The wafer column is faked here (the real adapter compiles a model: seconds to
minutes), except where the adapter itself is tested against a stubbed report."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

import waferscale.baselines.compare as cmp
from waferscale.baselines.compare import (
    SYSTEMS_ASSUMPTION,
    TRAINING_ASSUMPTION,
    WaferFigure,
    compare_report,
    load_prices,
    quote_report,
    wafer_training_estimate,
)
from waferscale.baselines.errors import BaselineError, PriceError
from waferscale.cli import app
from waferscale.cli_gpu import parse_counts, parse_tokens
from waferscale.errors import WaferscaleError, WorkloadError

runner = CliRunner()
ROW_KEYS = {"system", "label", "samples_per_second", "oom_reason", "seconds_per_step",
            "energy_kwh", "cost", "time_to_train_seconds", "fits", "unavailable_reason"}


def fake_wafer(model: str, seq: int, spec: str) -> WaferFigure:
    return WaferFigure(model, seq, spec, 10.0, 30.0, "pipelined (estimate)",
                       f"test figure; {TRAINING_ASSUMPTION}")


def no_wafer(model: str, seq: int, spec: str) -> WaferFigure:
    return WaferFigure(model, seq, spec, None, None, "unavailable", "n/a",
                       unavailable_reason="wafer side: cannot build")


@pytest.fixture
def wafer_stub(monkeypatch):
    monkeypatch.setattr(cmp, "wafer_training_estimate", fake_wafer)


def strict(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


# -- prices -------------------------------------------------------------------------------
def test_default_prices_are_complete_and_cited():
    p = load_prices()
    assert p.currency == "USD" and p.energy_price_per_kwh > 0 and p.pue >= 1
    for name in ("a100-40gb", "a100-80gb", "h100", "h200"):
        assert p.gpu(name).price_per_hour > 0 and p.gpu(name).source
    for name in ("polaris", "dgx-a100-40gb", "dgx-a100", "dgx-h100", "hgx-h200"):
        assert p.node(name).power_watts > 0 and p.node(name).gpus
    assert p.wafer("wse2").power_watts == 23000


@pytest.mark.parametrize("text, match", [
    ("currency = 'USD'\n", "energy"),
    ("currency = 'USD'\n[energy]\nprice_per_kwh = -1\npue = 1\nsource = 's'\n", "positive"),
    ("currency = 'USD'\n[energy]\nprice_per_kwh = 0.1\npue = 1\nsource = 's'\n"
     "[gpu.a100-40gb]\nprice_per_gpu_hour = 2\n", "source"),
    ("currency = 'USD'\n[energy\n", "cannot read"),
])
def test_bad_prices_files_are_typed_errors(tmp_path, text, match):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PriceError, match=match):
        load_prices(f)
    with pytest.raises(PriceError, match="no such file"):
        load_prices(tmp_path / "missing.toml")


def test_missing_entry_names_the_table(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("currency = 'EUR'\n[energy]\nprice_per_kwh = 0.2\npue = 1.1\nsource = 's'\n")
    with pytest.raises(PriceError, match=r"\[gpu.a100-40gb\]"):
        compare_report("genslm-25m", nodes=[1], prices_path=f, wafer_fn=fake_wafer)


# -- compare and quote --------------------------------------------------------------------
def test_compare_rows_share_one_schema_and_oom_has_no_speed():
    rep = compare_report("genslm-2.5b", seq=10240, stack="genslm-2022", nodes=[1, 128],
                         systems=[1, 4], wafer_fn=fake_wafer)
    rows = rep["rows"]
    assert [r["system"] for r in rows] == ["wafer", "wafer", "gpu", "gpu"]
    for r in rows:
        assert ROW_KEYS <= set(r)
    for r in rows[2:]:
        assert r["samples_per_second"] is None and r["cost"] is None
        assert r["energy_kwh"] is None and r["seconds_per_step"] is None
        assert "out of memory" in r["oom_reason"]
    assert rows[1]["samples_per_second"] == pytest.approx(4 * rows[0]["samples_per_second"])
    assert SYSTEMS_ASSUMPTION in rows[1]["assumptions"]
    assert TRAINING_ASSUMPTION in rep["assumptions"]


def test_compare_costs_and_energy_follow_the_prices():
    rep = compare_report("genslm-25m", seq=10240, stack="tuned", nodes=[2], systems=[1],
                         tokens=1e9, wafer_fn=fake_wafer)
    p = load_prices()
    wafer, gpu = rep["rows"]
    seconds = 1e9 / (10.0 * 10240)
    assert wafer["time_to_train_seconds"] == pytest.approx(seconds)
    assert wafer["cost"] == pytest.approx(seconds / 3600 * p.wafer("wse2").price_per_hour)
    assert wafer["energy_kwh"] == pytest.approx(seconds * 23000 / 3.6e6)
    hours = gpu["time_to_train_seconds"] / 3600
    assert gpu["cost"] == pytest.approx(hours * 8 * p.gpu("a100-40gb").price_per_hour)
    assert gpu["energy_kwh"] == pytest.approx(hours * 2 * p.node("polaris").power_watts / 1e3)


def test_unavailable_wafer_is_a_row_without_numbers():
    rep = compare_report("genslm-25m", nodes=[1], wafer_fn=no_wafer)
    w = rep["rows"][0]
    assert w["samples_per_second"] is None and w["cost"] is None
    assert w["unavailable_reason"].startswith("wafer side")


def test_quote_breakdown(wafer_stub):
    rep = quote_report("genslm-25m", tokens=15e9, gpus=[8, 64], systems=2)
    assert [o["devices"] for o in rep["options"]] == [2, 8, 64]
    for o in rep["options"]:
        assert o["runs"] and o["cost"] > 0 and o["hours"] > 0 and o["sources"]
    assert rep["cheapest"] in {o["option"] for o in rep["options"]}
    assert rep["prices"]["gpu"]["a100-40gb"]["source"]
    with pytest.raises(BaselineError, match="whole number"):
        quote_report("genslm-25m", tokens=1e9, gpus=[6])


@pytest.mark.parametrize("kw", [dict(nodes=[0]), dict(systems=[]), dict(tokens=-1.0),
                                dict(stack="nope"), dict(gpu="v100"), dict(seq=0)])
def test_compare_mistakes_are_typed(kw):
    with pytest.raises(WaferscaleError):
        compare_report("genslm-25m", wafer_fn=fake_wafer, **kw)


# -- the wafer adapter (report stubbed) ---------------------------------------------------
def test_adapter_takes_the_training_step(monkeypatch):
    import waferscale.report.training as rt

    def report(model, **kw):
        assert kw == dict(seq=128, batch=1, dtype="fp16", spec="wse2")
        return {"samples_per_second": 30.0, "forward_seconds": 1 / 90.0,
                "mode": "weight_streaming", "bound": "compute", "spec": "wse2"}

    monkeypatch.setattr(rt, "train_report", report)
    fig = wafer_training_estimate("genslm-25m", 128)
    assert fig.samples_per_second == 30.0
    assert fig.forward_samples_per_second == pytest.approx(90.0)
    assert TRAINING_ASSUMPTION in fig.label and fig.unavailable_reason is None
    assert fig.mode == "weight_streaming" and "compute-bound" in fig.label


def test_adapter_passes_errors(monkeypatch):
    import waferscale.report.training as rt

    def fail(model, **kw):
        raise WorkloadError("no long config")

    monkeypatch.setattr(rt, "train_report", fail)
    fig = wafer_training_estimate("genslm-2.5b", 10240)
    assert fig.samples_per_second is None and "no long config" in fig.unavailable_reason


# -- the CLI ------------------------------------------------------------------------------
def test_parsers():
    assert parse_counts("1,8, 64", "--nodes") == [1, 8, 64]
    assert parse_tokens("15B") == 15e9 and parse_tokens("1e10") == 1e10
    assert parse_tokens("1.5T") == 1.5e12
    for bad in ("x", "-3", "1e400"):
        with pytest.raises(WaferscaleError):
            parse_tokens(bad)


def test_cli_gpu_validate_json_is_one_strict_document():
    result = runner.invoke(app, ["gpu", "--validate", "--json"])
    assert result.exit_code == 0, result.output
    data = strict(result.stdout)
    assert {r["case"] for r in data["rows"]} == {f"G{i}" for i in range(1, 13)}
    s = data["summary"]
    assert s["max_abs_error"] <= 0.15 and s["median_abs_error"] is not None


def test_cli_gpu_validate_table():
    result = runner.invoke(app, ["gpu", "--validate"])
    assert result.exit_code == 0 and "within 15%" in result.stdout


def test_cli_compare_must_show(wafer_stub):
    args = ["compare", "genslm-2.5b", "--seq", "10240", "--nodes", "1,128", "--json"]
    old = strict(runner.invoke(app, [*args, "--stack", "genslm-2022"]).stdout)
    gpu = [r for r in old["rows"] if r["system"] == "gpu"]
    assert len(gpu) == 2
    assert all(r["samples_per_second"] is None and "out of memory" in r["oom_reason"]
               for r in gpu)
    new = strict(runner.invoke(app, [*args, "--stack", "tuned"]).stdout)
    gpu = [r for r in new["rows"] if r["system"] == "gpu"]
    assert all(r["samples_per_second"] > 0 and r["oom_reason"] is None for r in gpu)
    assert all(math.isfinite(r["cost"]) for r in gpu)


def test_cli_compare_and_quote_tables(wafer_stub):
    result = runner.invoke(app, ["compare", "genslm-25m", "--nodes", "1", "--systems", "1,2"])
    assert result.exit_code == 0, result.output
    assert "assumption" in result.stdout
    result = runner.invoke(app, ["quote", "genslm-25m", "--tokens", "15B", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    assert "cheapest" in result.stdout


@pytest.mark.parametrize("args", [
    ["compare", "genslm-25m", "--nodes", "1,x"],
    ["compare", "nosuch-model"],
    ["compare", "genslm-25m", "--stack", "fast"],
    ["quote", "genslm-25m", "--tokens", "lots"],
    ["gpu"],
    ["gpu", "genslm-25m", "--gpu", "v100"],
])
def test_cli_mistakes_are_one_line_and_json(args, wafer_stub):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2
    assert strict(result.stdout)["error"]["exit_code"] == 2


def test_cli_gpu_model_json():
    result = runner.invoke(app, ["gpu", "genslm-25m", "--nodes", "1,2", "--json"])
    assert result.exit_code == 0, result.output
    data = strict(result.stdout)
    assert [e["nodes"] for e in data["estimates"]] == [1, 2]
    assert all(e["fits"] for e in data["estimates"])
