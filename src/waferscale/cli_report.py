"""`waferscale report`: one self-contained HTML page of a model on the wafer.

    waferscale report MODEL [--seq S] [--batch B] [--estimate] [--train] [--compare ...]
                      [--out report.html] [--json]
    waferscale report --from result.json [--out report.html] [--json]

The main CLI calls `register(app)`; the command runs under the main CLI's error contract
(`waferscale.cli_contract._guard`: a user mistake prints one line ``error: ...`` and exits 2; with
``--json`` stdout carries exactly one JSON document, also on error). Long phases show a
spinner on stderr, nothing under ``--json``. `demo_report` writes the demo's page.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from waferscale.errors import WaferscaleError

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout: the "
                                                      "page's path, sections and data.")]

#: The demo's page, in the current directory (the temporary directory if that is not
#: writable).
DEMO_REPORT = "waferscale-demo.html"


def _progress(quiet: bool) -> Any:
    """``step(text)``: a spinner on stderr while a phase runs, then one line with its time;
    nothing when ``quiet`` (``--json``)."""
    if quiet:
        return lambda text: contextlib.nullcontext()
    from rich.console import Console

    err = Console(stderr=True)

    @contextlib.contextmanager
    def step(text: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with err.status(f"{text} ..."):
            yield
        err.print(f"[green]done[/green] {text} ({time.perf_counter() - t0:,.1f} s)")
    return step


def report_command(model: str | None, from_: str | None, out: str, seq: int | None,
                   batch: int | None, estimate: bool, train: bool, dtype: str | None,
                   compare: bool, systems: str | None, nodes: str | None, gpu: str | None,
                   stack: str | None, tokens: str | None, validation: str | None, spec: str,
                   json_out: bool) -> None:
    from waferscale.cli_contract import _emit, console
    from waferscale.report import html_data
    from waferscale.report.html import check_html_path, write_report

    if model is None and from_ is None:
        raise WaferscaleError("give a MODEL (e.g. genslm-25m) or --from result.json")
    if model is not None and from_ is not None:
        raise WaferscaleError(f"give a MODEL ({model}) or --from ({from_}), not both")
    check_html_path(out)
    compare_opts = {"--systems": systems, "--nodes": nodes, "--gpu": gpu, "--stack": stack,
                    "--tokens": tokens}
    if from_ is not None:
        given = [name for name, v in (("--seq", seq), ("--batch", batch), ("--dtype", dtype),
                                      ("--validation", validation), *compare_opts.items())
                 if v is not None]
        given += [name for name, v in (("--estimate", estimate), ("--train", train),
                                       ("--compare", compare)) if v]
        if given:
            raise WaferscaleError(f"{', '.join(given)}: only with a MODEL (--from renders the "
                                  f"saved result as it is)")
        bundle = html_data.bundle_from_document(html_data.read_document(from_),
                                                Path(from_).name)
    else:
        assert model is not None
        from waferscale.cli_gpu import parse_counts, parse_tokens
        from waferscale.hardware import get_spec

        get_spec(spec)  # a bad spec is named before anything runs
        if dtype is not None and not train:
            raise WaferscaleError("--dtype applies to --train (the training step's precision)")
        opts = None
        if compare or any(v is not None for v in compare_opts.values()):
            d = html_data.CompareOptions()
            opts = html_data.CompareOptions(
                systems=parse_counts(systems, "--systems") if systems else d.systems,
                nodes=parse_counts(nodes, "--nodes") if nodes else d.nodes,
                gpu=gpu or d.gpu, stack=stack or d.stack,
                tokens=parse_tokens(tokens) if tokens else d.tokens)
        words = ["waferscale report", model] + [
            f"{name} {v}" for name, v in (("--seq", seq), ("--batch", batch), ("--dtype", dtype),
                                          *compare_opts.items(), ("--validation", validation))
            if v is not None] + [name for name, v in (("--estimate", estimate),
                                                      ("--train", train), ("--compare", compare))
                                 if v]
        if spec != "wse2":
            words.append(f"--spec {spec}")
        bundle = html_data.build_bundle(
            model, seq=2048 if seq is None else seq, batch=1 if batch is None else batch,
            estimate=estimate or train, train=train, dtype=dtype or "fp16", spec=spec,
            compare=opts, validation=validation or "quick",
            command=" ".join(words), step=_progress(json_out))
    path, present = write_report(bundle, out)
    size = path.stat().st_size
    if json_out:
        _emit({"out": str(path), "bytes": size, "sections": present, "report": bundle})
        return
    console.print(f"wrote {path} ({size / 1e6:,.1f} MB; sections: {', '.join(present)}): open "
                  f"it in a browser (no network needed)")


def demo_path() -> Path:
    """Where the demo writes its page: `DEMO_REPORT` in the current directory, or in the
    temporary directory when the current one is not writable."""
    here = Path.cwd()
    if os.access(here, os.W_OK):
        return here / DEMO_REPORT
    return Path(tempfile.gettempdir()) / DEMO_REPORT


def demo_report(run: dict[str, Any], stencil: dict[str, Any]) -> Path:
    """Write the page of what ``waferscale demo`` ran (the GenSLM run on the fabric with
    its placement, the full-wafer stencil, the validation table) and return its path."""
    from waferscale.report import html_data
    from waferscale.report.html import write_report

    bundle = html_data.demo_bundle(run, stencil, html_data.floorplan_of(run))
    return write_report(bundle, demo_path())[0].resolve()


def register(app: typer.Typer) -> None:
    """Add ``report`` to the main CLI's ``app``."""

    @app.command(name="report")
    def report(
            model: Annotated[str | None, typer.Argument(
                help="preset (genslm-25m, genslm-250m, genslm-2.5b, genslm-25b, gpt2) or "
                     "path/file.py:factory; or give --from")] = None,
            from_: Annotated[str | None, typer.Option(
                "--from", help="render a saved result: the --json output of report, compile, "
                               "run, compile --train, compare, scaling, validate, gpu "
                               "--validate, stencil or demo, or a page this command wrote")]
            = None,
            out: Annotated[str, typer.Option("--out", help="the HTML page to write")]
            = "report.html",
            seq: Annotated[int | None, typer.Option(
                "--seq", help="tokens per sample (default 2048)")] = None,
            batch: Annotated[int | None, typer.Option(
                "--batch", help="samples per batch (default 1)")] = None,
            estimate: Annotated[bool, typer.Option(
                "--estimate", help="plan and time only (meta device, no weights)")] = False,
            train: Annotated[bool, typer.Option(
                "--train", help="a training step (forward + backward) in weight-streaming "
                                "mode on meta weights (implies --estimate)")] = False,
            dtype: Annotated[str | None, typer.Option(
                "--dtype", help="with --train: fp16 (default), bf16 or fp32")] = None,
            compare: Annotated[bool, typer.Option(
                "--compare", help="add the wafer vs GPU cluster table and scaling curves (as "
                                  "`waferscale compare`; implied by its options below)")]
            = False,
            systems: Annotated[str | None, typer.Option(
                "--systems", help="wafer system counts (default 1,2,4,8,16)")] = None,
            nodes: Annotated[str | None, typer.Option(
                "--nodes", help="GPU node counts (default 1,8,64,256)")] = None,
            gpu: Annotated[str | None, typer.Option(
                "--gpu", help="a100-40gb (default), a100-80gb, h100 or h200")] = None,
            stack: Annotated[str | None, typer.Option(
                "--stack", help="GPU software stack: tuned (default) or genslm-2022")] = None,
            tokens: Annotated[str | None, typer.Option(
                "--tokens", help="tokens to train, e.g. 1e10 (default) or 15B")] = None,
            validation: Annotated[str | None, typer.Option(
                "--validation", help="the validation table: quick (closed-form cost, default),"
                                     " full (fabric runs, about 10 s) or none")] = None,
            spec: Annotated[str, typer.Option(
                "--spec", help="Preset (wse1, wse2, wse3) or a .toml file.")] = "wse2",
            json_out: JsonOpt = False) -> None:
        """One self-contained HTML page: floorplan, link load, stages, timeline, GPU
        comparison, validation and assumptions."""
        from waferscale.cli_contract import _guard
        _guard(lambda: report_command(model, from_, out, seq, batch, estimate, train, dtype,
                                      compare, systems, nodes, gpu, stack, tokens, validation,
                                      spec, json_out))


__all__ = ["DEMO_REPORT", "demo_path", "demo_report", "register", "report_command"]
