"""The command line: --json prints one document; user mistakes print one line, exit 2."""

import json

from typer.testing import CliRunner

from waferscale.cli import app

runner = CliRunner()


def test_info_json():
    result = runner.invoke(app, ["info", "--json", "--spec", "wse3"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["spec"]["name"] == "wse3" and data["derived"]["pes"] == 1174 * 755


def test_stencil_small_simulation_json():
    result = runner.invoke(app, ["stencil", "--grid", "12x10x30", "--steps", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "simulate"
    assert data["max_relative_error_vs_numpy"] < 1e-5
    assert data["seconds"] > 0 and data["fabric_loads_per_cell_step"] == 17


def test_stencil_full_estimate_json_carries_seconds():
    result = runner.invoke(app, ["stencil", "--estimate", "--json"])
    data = json.loads(result.stdout)
    assert data["grid"] == [755, 994, 1000]
    assert 0.04 < data["seconds"] < 0.09


def test_user_mistakes_are_one_line():
    for args in (["stencil", "--grid", "800x994x10", "--estimate"],
                 ["stencil", "--grid", "12by10"],
                 ["info", "--spec", "wse9"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert result.stderr.strip().startswith("error: ") and "\n" not in result.stderr.strip()


def test_compile_defaults_fit_every_models_positions():
    """``compile gpt2`` on its defaults: the 2,048 tokens of the others would overrun its
    1,024-position table, so the default is the table's length there."""
    from waferscale.models import DEFAULT_SEQ, default_seq

    assert default_seq("gpt2") == 1024 and default_seq("genslm-25m") == DEFAULT_SEQ
    result = runner.invoke(app, ["compile", "gpt2", "--estimate", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"] == 1024
