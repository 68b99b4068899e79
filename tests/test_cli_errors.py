"""The CLI's error contract (cli.py's module docstring), walked over a table of bad inputs.

Every bad input, on every command, must: exit with status 2 (a user mistake) after one
line ``error: ...`` on stderr and nothing on stdout, or with ``--json`` exactly one JSON
document ``{"error": {...}}`` on stdout; never a traceback, never a hang (each case is
timed). Internal errors exit 1 with a pointer to ``--debug``. The CLI runs in-process
(`cli.main(argv)`), so the table costs seconds, not a Python start per case.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from waferscale import cli

SMALL_PY = '''
import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(8, 8)

    def forward(self, x):
        return torch.relu(self.l(x))


def f():
    return M().eval(), (torch.randn(4, 8),)


def boom():
    raise ValueError("factory failed")


def three():
    return 3


def novocab():
    return M()


def wrong():
    return M(), (torch.randn(4, 5),)


class DD(torch.nn.Module):
    def forward(self, x):
        return x[x > 0]


def dd():
    return DD(), (torch.randn(4, 8),)


def f64():
    return M().double(), (torch.randn(4, 8, dtype=torch.float64),)


class FB(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, -1)


def fb():
    return FB(), (torch.randn(4, 8),)


def notuple():
    return (M(),)


def tri():
    return M(), (torch.randn(4, 8),), 3


def notmodule():
    return "a model", (torch.randn(4, 8),)
'''

FILES: dict[str, str | bytes] = {
    "small.py": SMALL_PY,
    "syntax.py": "def f(:\n",
    "raises.py": "raise RuntimeError('boom at import')\n",
    "imports.py": "import nosuchpackage_xyz\n",
    "nan.toml": "rows = 10\nclock_hz = nan\n",
    "inf.toml": 'base = "wse2"\nio_bits_per_s = inf\n',
    "ninf.toml": 'base = "wse2"\nenergy_pj_per_hop = -inf\n',
    "nanfrac.toml": 'base = "wse2"\nspare_fraction = nan\n',
    "bad.toml": "rows = [\n",
    "unknown.toml": 'base = "wse2"\nbogus = 1\n',
    "basel.toml": "base = [1]\n",
    "base9.toml": 'base = "wse9"\n',
    "simd.toml": 'base = "wse2"\nsimd = "wide"\n',
    "simdb.toml": 'base = "wse2"\nsimd = {fp16_fmac = true}\n',
    "simdu.toml": 'base = "wse2"\nsimd = {fp64_fmac = 2}\n',
    "name.toml": 'base = "wse2"\nname = 5\n',
    "rows.toml": 'base = "wse2"\nrows = "ten"\n',
    "neg.toml": 'base = "wse2"\nsram_bytes = -1\n',
    "big.toml": 'base = "wse2"\nrows = 5000\n',
    "clock.toml": 'base = "wse2"\nclock_hz = 2e9\n',
    "bin.toml": b"\xff\xfe\x00bad",
    "bad.fasta": ">r1\nACGTNNXYZ123\n",
    "empty.fasta": "",
    "ok.fasta": ">r1\nATGAAACCCGGGTTT\n",
}


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    for name, text in FILES.items():
        path = root / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    (root / "adir.toml").mkdir()
    (root / "adir.png").mkdir()
    return root


# (argv with {d} for the fixture directory, expected exit status, a piece of the message)
BAD: list[tuple[str, int, str]] = [
    # -- the command line itself
    ("--bogus", 2, "No such option"),
    ("nosuchcommand", 2, "No such command"),
    ("--json", 2, "No such option"),
    ("info --bogus", 2, "No such option"),
    ("info extra", 2, "unexpected extra argument"),
    ("stencil --steps abc", 2, "--steps"),
    ("stencil --grid", 2, "requires an argument"),
    ("validate --bogus", 2, "No such option"),
    ("validate --quick extra", 2, "unexpected extra argument"),
    ("demo --bogus", 2, "No such option"),
    ("demo extra", 2, "unexpected extra argument"),
    ("yield --bogus", 2, "No such option"),
    ("compile", 2, "Missing argument"),
    ("compile genslm-25m --seq abc", 2, "--seq"),
    ("compile genslm-25m --batch 1.5", 2, "--batch"),
    ("compile gpt2 --seq 5000 --estimate", 2, "use at most 1024 tokens (--seq)"),
    ("compile {d}/small.py:f --weight-density 0.1", 2, "add --estimate"),
    ("compile {d}/small.py:f --estimate --weight-density 0", 2, "a number in (0, 1]"),
    ("compile {d}/small.py:f --estimate --activation-density nan", 2, "a number in (0, 1]"),
    ("compile {d}/small.py:f --estimate --weight-density abc", 2, "--weight-density"),
    ("run genslm-25m", 2, "Missing option '--fasta'"),
    ("run --fasta {d}/ok.fasta", 2, "Missing argument"),
    # -- specs: presets, files, and every malformed TOML
    ("info --spec wse9", 2, "unknown spec 'wse9'"),
    ("info --spec missing.toml", 2, "does not exist"),
    ("info --spec {d}/adir.toml", 2, "does not exist"),
    ("info --spec {d}/bad.toml", 2, "not valid TOML"),
    ("info --spec {d}/nan.toml", 2, "clock_hz must be a positive, finite number"),
    ("info --spec {d}/inf.toml", 2, "io_bits_per_s must be a positive, finite number"),
    ("info --spec {d}/ninf.toml", 2, "energy_pj_per_hop must be a finite number"),
    ("info --spec {d}/nanfrac.toml", 2, "spare_fraction"),
    ("info --spec {d}/unknown.toml", 2, "unknown field(s) bogus"),
    ("info --spec {d}/basel.toml", 2, "is not a preset"),
    ("info --spec {d}/base9.toml", 2, "is not a preset"),
    ("info --spec {d}/simd.toml", 2, "field simd must be"),
    ("info --spec {d}/simdb.toml", 2, "simd.fp16_fmac must be a positive integer"),
    ("info --spec {d}/simdu.toml", 2, "unknown simd field"),
    ("info --spec {d}/name.toml", 2, "name must be a non-empty string"),
    ("info --spec {d}/rows.toml", 2, "rows must be a positive integer"),
    ("info --spec {d}/neg.toml", 2, "sram_bytes must be a positive integer"),
    ("info --spec {d}/big.toml", 2, "larger than the fabric"),
    ("info --spec {d}/clock.toml", 2, "exceeds max_clock_hz"),
    ("info --spec {d}/bin.toml", 2, "cannot be read"),
    ("info --json --spec wse9", 2, "unknown spec"),
    ("info --json --spec {d}/nan.toml", 2, "clock_hz"),
    # -- stencil
    ("stencil --grid 12by10", 2, "must look like 755x994x1000"),
    ("stencil --grid 1.5x2x3", 2, "must look like"),
    ("stencil --grid 0x10x10", 2, "must be positive"),
    ("stencil --grid 800x994x10", 2, "shrink the grid"),
    ("stencil --grid 4x4x4", 2, "smaller than the stencil's width"),
    ("stencil --grid 12x10x100000", 2, "use z <="),
    ("stencil --steps 0", 2, "--steps 0 must be at least 1"),
    ("stencil --steps -5", 2, "must be at least 1"),
    ("stencil --grid 12x10x30 --estimate --simulate", 2, "contradict"),
    ("stencil --spec {d}/nan.toml --estimate", 2, "clock_hz"),
    ("stencil --grid x --json", 2, "must look like"),
    # -- yield
    ("yield --spec wse9", 2, "unknown spec"),
    ("yield --spec {d}/inf.toml --json", 2, "io_bits_per_s"),
    ("yield --plot {d}/nodir/y.png", 2, "does not exist"),
    ("yield --plot {d}/y.txt", 2, "unknown image format 'txt'"),
    ("yield --plot {d}/noext", 2, "no image format"),
    ("yield --plot {d}/adir.png", 2, "is a directory"),
    # -- compile: MODEL, the factory file, options
    ("compile nosuchmodel", 2, "use a preset"),
    ("compile missing.py:f", 2, "does not exist"),
    ("compile {d}/small.py", 2, "path/file.py:factory"),
    ("compile {d}/syntax.py:f", 2, "SyntaxError"),
    ("compile {d}/raises.py:f", 2, "boom at import"),
    ("compile {d}/imports.py:f", 2, "nosuchpackage_xyz"),
    ("compile {d}/small.py:nofunc", 2, "has no function 'nofunc'"),
    ("compile {d}/small.py:boom", 2, "factory failed"),
    ("compile {d}/small.py:three", 2, "without config.vocab_size"),
    ("compile {d}/small.py:novocab", 2, "without config.vocab_size"),
    ("compile {d}/small.py:notuple", 2, "not enough values to unpack"),
    ("compile {d}/small.py:tri", 2, "too many values to unpack"),
    ("compile {d}/small.py:notmodule", 2, "not a torch.nn.Module"),
    ("compile {d}/small.py:wrong", 2, "torch.export cannot capture"),
    ("compile {d}/small.py:dd", 2, "shape depends on the values"),
    ("compile {d}/small.py:f64", 2, "float64"),
    ("compile {d}/small.py:fb --strict", 2, "strict mode"),
    ("compile genslm-25m --seq 0", 2, "must be at least 1"),
    ("compile genslm-25m --batch 0", 2, "must be at least 1"),
    ("compile genslm-25m --seq 20000 --estimate", 2, "exceeds genslm-25m's 10240 positions"),
    ("compile genslm-25m --seq 10240 --batch 64", 2, "host memory"),
    ("compile genslm-25m --reserve 1,2,3", 2, "expected r,c,h,w"),
    ("compile genslm-25m --reserve a,b,c,d", 2, "expected r,c,h,w"),
    ("compile {d}/small.py:f --reserve 0,0,0,5", 2, "has no PEs"),
    ("compile {d}/small.py:f --reserve 5000,0,10,10", 2, "leaves the 994x755 wafer"),
    ("compile {d}/small.py:f --map {d}/nodir/x.png", 2, "does not exist"),
    ("compile {d}/small.py:f --map {d}/x.txt", 2, "unknown image format"),
    ("compile {d}/small.py:f --map {d}/adir.png", 2, "is a directory"),
    ("compile {d}/small.py:f --spec {d}/nan.toml", 2, "clock_hz"),
    ("compile {d}/small.py:f --spec wse9", 2, "unknown spec"),
    ("compile nosuchmodel --json", 2, "use a preset"),
    ("compile {d}/small.py:boom --json", 2, "factory failed"),
    ("compile {d}/small.py:f --json --spec wse9", 2, "unknown spec"),
    # -- run
    ("run genslm-25m --fasta {d}/missing.fasta", 2, "no such file"),
    ("run genslm-25m --fasta {d}/adir.toml", 2, "no such file"),
    ("run genslm-25m --fasta {d}/bad.fasta", 2, "invalid character 'X'"),
    ("run genslm-25m --fasta {d}/empty.fasta", 2, "no FASTA records"),
    ("run genslm-25m --fasta {d}/ok.fasta --seq 1", 2, "must be at least 2"),
    ("run genslm-25m --fasta {d}/ok.fasta --batch 0", 2, "at least 1"),
    ("run genslm-25m --fasta {d}/ok.fasta --seq 20000 --batch 1", 2, "10240 positions"),
    ("run genslm-25m --fasta {d}/ok.fasta --seq 10240 --batch 64", 2, "host memory"),
    ("run genslm-25m --fasta {d}/ok.fasta --spec wse9", 2, "unknown spec"),
    ("run nosuchmodel --fasta {d}/ok.fasta", 2, "use a preset"),
    ("run {d}/small.py:boom --fasta {d}/ok.fasta", 2, "factory failed"),
    ("run genslm-25m --fasta {d}/bad.fasta --json", 2, "invalid character"),
    # -- the commands registered from other modules follow the same contract (their
    #    messages are their modules'; here the contract only)
    ("gpu --bogus", 2, "No such option"),
    ("gpu nosuchmodel", 2, ""),
    ("gpu genslm-25m --nodes abc --json", 2, "--nodes"),
    ("compare", 2, "Missing argument"),
    ("compare genslm-25m --tokens lots", 2, "--tokens"),
    ("quote genslm-25m", 2, "Missing option '--tokens'"),
    ("train --bogus", 2, "No such option"),
    ("train nosuchmodel --fasta {d}/ok.fasta", 2, ""),
    ("report --bogus", 2, "No such option"),
    ("report nosuchmodel", 2, ""),
    # -- bicgstab (cli_bicgstab.py)
    ("bicgstab --grid 12by10", 2, "must look like 600x595x1536"),
    ("bicgstab --grid 1.5x2x3 --json", 2, "must look like"),
    ("bicgstab --grid 0x10x10", 2, "must be positive"),
    ("bicgstab --grid 700x10x10", 2, "shrink the grid"),
    ("bicgstab --grid 12x10x5000", 2, "use z <="),
    ("bicgstab --grid 12x10x5000 --json", 2, "use z <="),
    ("bicgstab --iters 0", 2, "--iters 0 must be at least 1"),
    ("bicgstab --iters abc", 2, "--iters"),
    ("bicgstab --tol -1 --grid 4x4x4", 2, "--tol"),
    ("bicgstab --grid 12x10x30 --estimate --simulate", 2, "contradict"),
    ("bicgstab --grid 600x595x1536 --simulate", 2, "functional run"),
    ("bicgstab --grid 600x595x1536 --simulate --json", 2, "over the 60 s limit"),
    ("bicgstab --spec wse9", 2, "unknown spec"),
    ("bicgstab --spec {d}/nan.toml --estimate", 2, "clock_hz"),
]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    rc = cli.main(argv)
    wall = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return rc, out, err, wall


def _check(argv: list[str], rc: int, out: str, err: str, code: int) -> dict | None:
    assert rc == code, (argv, rc, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert "Traceback" not in err
    if "--json" in argv:
        doc = json.loads(out)   # exactly one document: json.loads refuses trailing text
        assert set(doc) == {"error"} and doc["error"]["exit_code"] == code
        return doc
    assert out == "", (argv, out)
    return None


def test_bad_input_table_is_large() -> None:
    commands = {a.split()[0] for a, _, _ in BAD if not a.startswith("-")}
    assert len(BAD) >= 60
    assert commands >= {"info", "stencil", "compile", "run", "demo", "yield", "validate"}


@pytest.mark.parametrize(("args", "code", "expect"), BAD, ids=[a for a, _, _ in BAD])
def test_bad_input(args: str, code: int, expect: str, d: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    argv = args.format(d=d).split()
    rc, out, err, wall = _run(argv, capsys)
    doc = _check(argv, rc, out, err, code)
    assert expect in err, (argv, err)
    if doc is not None:
        assert expect in doc["error"]["message"]
    assert wall < 120, f"{args} took {wall:.0f} s: bad input must fail fast, not hang"


def test_internal_error_points_to_debug(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*a: object, **k: object) -> None:
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(cli, "get_spec", broken)
    rc, out, err, _ = _run(["info"], capsys)
    _check(["info"], rc, out, err, 1)
    assert "internal error: ZeroDivisionError" in err and "--debug" in err
    rc, out, err, _ = _run(["info", "--json"], capsys)
    doc = _check(["info", "--json"], rc, out, err, 1)
    assert doc is not None and doc["error"]["type"] == "ZeroDivisionError"
    # --debug anywhere on the line: the traceback, then the same one-line summary
    for argv in (["--debug", "info"], ["info", "--debug"]):
        rc, out, err, _ = _run(argv, capsys)
        assert rc == 1 and "Traceback" in err and "ZeroDivisionError" in err
        assert err.strip().splitlines()[-1].startswith("error: internal error")


def test_debug_shows_traceback_of_user_errors_too(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err, _ = _run(["info", "--spec", "wse9", "--debug"], capsys)
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error:")


def test_help_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["--help"], ["compile", "--help"]):
        rc, out, err, _ = _run(argv, capsys)
        assert rc == 0 and "Usage" in out and err == ""


def test_bare_stencil_does_not_simulate_for_an_hour(capsys: pytest.CaptureFixture[str]) -> None:
    """The full wafer's 1,000 steps would simulate for about an hour here: the default
    reports the closed-form cost at once and says why."""
    rc, out, err, wall = _run(["stencil", "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and wall < 10
    assert data["mode"] == "estimate" and "--simulate" in data["note"]
    assert data["simulation_seconds_predicted"] > cli.STENCIL_SIMULATE_LIMIT_S
    # a small grid still simulates by default, and says nothing
    rc, out, _, _ = _run(["stencil", "--grid", "12x10x30", "--steps", "2", "--json"], capsys)
    data = json.loads(out)
    assert data["mode"] == "simulate" and data["note"] is None


def test_json_is_strict_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """A figure that is not finite is null and named under ``non_finite``; json.loads
    with a strict parser (no NaN / Infinity constants) reads every document."""
    cli._emit({"a": float("inf"), "b": [1.0, float("nan")], "c": {"d": -float("inf")},
               "e": 1.5})
    out = capsys.readouterr().out

    def refuse(name: str) -> None:
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(out, parse_constant=refuse)
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"]["d"] is None
    assert set(data["non_finite"]) == {"a", "b[1]", "c.d"}
    assert data["non_finite"]["a"].startswith("Infinity")


def test_compile_json_of_a_small_model_is_strict(d: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _, _ = _run(["compile", f"{d}/small.py:f", "--json"], capsys)

    def refuse(name: str) -> None:
        raise ValueError(f"non-strict JSON constant {name}")

    data = json.loads(out, parse_constant=refuse)
    assert rc == 0 and data["mode"] == "pipelined"
