"""`waferscale gpu`, `waferscale compare` and `waferscale quote`: the GPU-cluster baseline.

The main CLI calls `register(app)`, which adds the three commands; they run under the main
CLI's error contract (`waferscale.cli_contract._guard`: a user mistake prints one line
``error: ...`` and exits 2; with ``--json`` stdout carries exactly one strict JSON document,
also on error).
Numbers and lists are parsed here, not by Typer, so that a malformed value is such a
one-line error too. The baselines are imported inside the commands: registering them costs
nothing at start-up.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

import typer
from rich.table import Table

from waferscale.cli_contract import JsonOpt
from waferscale.errors import WaferscaleError

SeqOpt = Annotated[str, typer.Option("--seq", help="tokens per sequence")]
GpuOpt = Annotated[str, typer.Option("--gpu", help="a100-40gb, a100-80gb, h100 or h200")]
NodeOpt = Annotated[str | None, typer.Option(
    "--node", help="polaris, dgx-a100-40gb, dgx-a100, dgx-h100, hgx-h200 (default: the "
                   "usual node of --gpu)")]
GpnOpt = Annotated[str | None, typer.Option("--gpus-per-node", help="GPUs in each node")]
StackOpt = Annotated[str, typer.Option("--stack", help="genslm-2022 or tuned")]
SpecOpt = Annotated[str, typer.Option("--spec", help="wafer preset for the wafer column")]
PricesOpt = Annotated[str | None, typer.Option(
    "--prices", help="prices/power TOML (default: the packaged prices.toml)")]

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(text: str, option: str) -> int:
    """A positive integer option."""
    try:
        value = int(str(text).strip().replace("_", ""))
    except ValueError:
        raise WaferscaleError(f"{option} {text!r} must be a positive integer") from None
    if value < 1:
        raise WaferscaleError(f"{option} {text!r} must be a positive integer")
    return value


def parse_counts(text: str, option: str) -> list[int]:
    """A comma-separated list of positive integers, e.g. ``1,8,64``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise WaferscaleError(f"{option} {text!r}: give one or more positive integers, "
                              f"comma-separated (e.g. 1,8,64)")
    return [parse_count(p, option) for p in parts]


def parse_tokens(text: str) -> float:
    """A token count: ``1e10``, ``15000000000``, ``15B``, ``300b``, ``1.5T``, ``500M``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*",
                     str(text))
    if not m:
        raise WaferscaleError(f"--tokens {text!r}: give a positive number such as 1e10, 15B "
                              f"or 1.5T")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if not math.isfinite(value) or value <= 0:
        raise WaferscaleError(f"--tokens {text!r} must be a positive number")
    return value


def _f(value: Any, fmt: str = ",.1f", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, fmt)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} d"


# -- gpu ----------------------------------------------------------------------------------
def gpu_command(model: str | None, validate: bool, seq: str, gpu: str, node: str | None,
                gpus_per_node: str | None, nodes: str, stack: str, json_out: bool) -> None:
    from waferscale.cli_contract import _emit, console

    if validate:
        from waferscale.baselines.gpu import validation_report

        rep = validation_report()
        if json_out:
            _emit(rep)
            return
        _print_validation(rep, console)
        return
    if model is None:
        raise WaferscaleError("give a MODEL (e.g. genslm-2.5b) or --validate")
    from waferscale.baselines.gpu import ClusterSpec, get_stack, model_shape, node_for, run_stack

    shape = model_shape(model)
    s = parse_count(seq, "--seq")
    gpn = parse_count(gpus_per_node, "--gpus-per-node") if gpus_per_node else None
    node_spec = node_for(gpu, node, gpn)
    st = get_stack(stack)
    ests = [run_stack(shape, s, ClusterSpec(node_spec, n), st)
            for n in parse_counts(nodes, "--nodes")]
    if json_out:
        _emit({"model": model, "seq": s, "stack": st.name, "shape": shape.to_dict(),
               "estimates": [e.to_dict() for e in ests]})
        return
    console.print(f"[bold]{model}[/bold] ({shape.params / 1e9:.3g} B parameters), seq {s:,}, "
                  f"stack {st.name}: {st.description}")
    table = Table("nodes", "GPUs", "layout", "samples/s", "step", "MFU*", "GiB/GPU", "fits")
    for e in ests:
        table.add_row(str(e.cluster.nodes), str(e.cluster.gpus), e.layout.label(),
                      _f(e.samples_per_second, ",.2f"), _duration(e.seconds_per_step),
                      _f(e.mfu, ".1%"), f"{e.memory.total / 2**30:,.1f}",
                      "yes" if e.fits else "OOM")
    console.print(table)
    console.print("* model FLOPs (no recompute, full non-causal attention: Megatron's "
                  "convention) over peak")
    for e in ests:
        if e.oom_reason:
            console.print(f"{e.cluster.nodes} node(s): {e.oom_reason}")


def _print_validation(rep: dict[str, Any], console: Any) -> None:
    table = Table(title="GPU model vs public measurements (docs/gpu.md G1-G12)")
    for c in ("case", "metric", "predicted", "measured", "error", "note"):
        table.add_column(c, overflow="fold")
    for r in rep["rows"]:
        pred = r["predicted"]
        table.add_row(r["case"], r["metric"],
                      f"{pred:,.1f}" if isinstance(pred, float) else str(pred),
                      f"{r['measured']:,.1f}" if isinstance(r["measured"], float | int)
                      else str(r["measured"]),
                      f"{r['error']:+.1%}" if r["error"] is not None
                      else ("agrees" if r["within_goal"] else "DISAGREES"),
                      r["note"])
    console.print(table)
    s = rep["summary"]
    console.print(f"{s['within_goal']}/{s['numeric_rows']} numeric rows within "
                  f"{s['goal']:.0%}; |error| median {s['median_abs_error']:.1%}, max "
                  f"{s['max_abs_error']:.1%}; signed median {s['median_signed_error']:+.1%}; "
                  f"verdicts {s['verdicts_agree']}/{s['verdict_rows']} agree")


# -- compare ------------------------------------------------------------------------------
def compare_command(model: str, seq: str, systems: str, gpu: str, node: str | None,
                    gpus_per_node: str | None, nodes: str, stack: str, tokens: str, spec: str,
                    prices: str | None, json_out: bool) -> None:
    from waferscale.baselines.compare import compare_report
    from waferscale.cli_contract import _emit, console

    rep = compare_report(model, seq=parse_count(seq, "--seq"),
                         systems=parse_counts(systems, "--systems"), gpu=gpu,
                         gpus_per_node=parse_count(gpus_per_node, "--gpus-per-node")
                         if gpus_per_node else None, node=node,
                         nodes=parse_counts(nodes, "--nodes"), stack=stack,
                         tokens=parse_tokens(tokens), spec=spec, prices_path=prices)
    if json_out:
        _emit(rep)
        return
    cur = rep["currency"]
    console.print(f"[bold]{model}[/bold] ({rep['params'] / 1e9:.3g} B parameters), seq "
                  f"{rep['seq']:,}, {rep['tokens']:.3g} tokens to train; GPU stack "
                  f"{rep['stack']}")
    table = Table("system", "layout / mode", "samples/s", "time to train", "energy kWh",
                  f"cost {cur}", "runs")
    for r in rep["rows"]:
        runs = "yes" if r["samples_per_second"] is not None else \
            ("OOM" if r["oom_reason"] else "n/a")
        table.add_row(r["label"], r["layout"] or r["mode"], _f(r["samples_per_second"], ",.2f"),
                      _duration(r["time_to_train_seconds"]), _f(r["energy_kwh"], ",.0f"),
                      _f(r["cost"], ",.0f"), runs)
    console.print(table)
    for r in rep["rows"]:
        why = r["oom_reason"] or r["unavailable_reason"]
        if why:
            console.print(f"{r['label']}: {why}")
    for a in rep["assumptions"]:
        console.print(f"assumption: {a}")


# -- quote --------------------------------------------------------------------------------
def quote_command(model: str, tokens: str, seq: str, systems: str, gpus: str | None, gpu: str,
                  node: str | None, gpus_per_node: str | None, stack: str, spec: str,
                  prices: str | None, json_out: bool) -> None:
    from waferscale.baselines.compare import quote_report
    from waferscale.cli_contract import _emit, console

    rep = quote_report(model, tokens=parse_tokens(tokens), seq=parse_count(seq, "--seq"),
                       systems=parse_count(systems, "--systems"),
                       gpus=parse_counts(gpus, "--gpus") if gpus else None, gpu=gpu,
                       gpus_per_node=parse_count(gpus_per_node, "--gpus-per-node")
                       if gpus_per_node else None, node=node, stack=stack, spec=spec,
                       prices_path=prices)
    if json_out:
        _emit(rep)
        return
    cur = rep["currency"]
    console.print(f"[bold]Quote[/bold]: train {model} ({rep['params'] / 1e9:.3g} B parameters) "
                  f"on {rep['tokens']:.3g} tokens of {rep['seq']:,}-token sequences")
    table = Table("option", "runs", "samples/s", "time", f"rate {cur}/h", f"cost {cur}",
                  "energy kWh")
    for o in rep["options"]:
        table.add_row(o["option"], "yes" if o["runs"] else "no",
                      _f(o["samples_per_second"], ",.2f"),
                      _duration(None if o["hours"] is None else o["hours"] * 3600),
                      _f(o["rate_per_hour"], ",.2f"), _f(o["cost"], ",.0f"),
                      _f(o["energy_kwh"], ",.0f"))
    console.print(table)
    if rep["cheapest"]:
        console.print(f"cheapest: {rep['cheapest']}; fastest: {rep['fastest']}")
    for o in rep["options"]:
        if o["why_not"]:
            console.print(f"{o['option']}: {o['why_not']}")
        if o["layout"]:
            console.print(f"{o['option']}: layout {o['layout']} ({o['stack']})")
    for a in rep["assumptions"]:
        console.print(f"assumption: {a}")
    console.print(f"prices: {rep['prices']['file']} (energy {rep['prices']['energy_price_per_kwh']}"
                  f" {cur}/kWh, PUE {rep['prices']['pue']}); every entry cites its source")


# -- registration -------------------------------------------------------------------------
def register(app: typer.Typer) -> None:
    """Add ``gpu``, ``compare`` and ``quote`` to the main CLI's ``app``."""

    @app.command(name="gpu")
    def gpu(model: Annotated[str | None, typer.Argument(
                help="genslm-25m/250m/2.5b/25b, gpt2 or a GPT-NeoX config.json")] = None,
            validate: Annotated[bool, typer.Option(
                "--validate", help="public measurements G1-G12 vs this model")] = False,
            seq: SeqOpt = "10240", gpu: GpuOpt = "a100-40gb", node: NodeOpt = None,
            gpus_per_node: GpnOpt = None,
            nodes: Annotated[str, typer.Option("--nodes", help="node counts, e.g. 1,8,64")]
            = "1",
            stack: StackOpt = "tuned", json_out: JsonOpt = False) -> None:
        """GPU-cluster model: one model's layout, speed and memory, or --validate."""
        from waferscale.cli_contract import _guard
        _guard(lambda: gpu_command(model, validate, seq, gpu, node, gpus_per_node, nodes,
                                   stack, json_out))

    @app.command(name="compare")
    def compare(model: Annotated[str, typer.Argument(help="model preset or config.json")],
                seq: SeqOpt = "10240",
                systems: Annotated[str, typer.Option(
                    "--systems", help="wafer system counts, e.g. 1,2,4,16")] = "1",
                gpu: GpuOpt = "a100-40gb", node: NodeOpt = None, gpus_per_node: GpnOpt = None,
                nodes: Annotated[str, typer.Option(
                    "--nodes", help="GPU node counts, e.g. 1,8,64,256")] = "1,8,64,256",
                stack: StackOpt = "tuned",
                tokens: Annotated[str, typer.Option(
                    "--tokens", help="tokens to train, e.g. 1e10 or 15B")] = "1e10",
                spec: SpecOpt = "wse2", prices: PricesOpt = None,
                json_out: JsonOpt = False) -> None:
        """Wafer vs GPU cluster on the same model and sequence: speed, fit, energy, cost."""
        from waferscale.cli_contract import _guard
        _guard(lambda: compare_command(model, seq, systems, gpu, node, gpus_per_node, nodes,
                                       stack, tokens, spec, prices, json_out))

    @app.command(name="quote")
    def quote(model: Annotated[str, typer.Argument(help="model preset or config.json")],
              tokens: Annotated[str, typer.Option(
                  "--tokens", help="tokens to train, e.g. 1e10 or 15B")],
              seq: SeqOpt = "10240",
              systems: Annotated[str, typer.Option("--systems", help="wafer systems")] = "1",
              gpus: Annotated[str | None, typer.Option(
                  "--gpus", help="GPU counts to quote, e.g. 32,512 (whole nodes)")] = None,
              gpu: GpuOpt = "a100-40gb", node: NodeOpt = None, gpus_per_node: GpnOpt = None,
              stack: StackOpt = "tuned", spec: SpecOpt = "wse2", prices: PricesOpt = None,
              json_out: JsonOpt = False) -> None:
        """Time and cost to train MODEL on --tokens: wafer systems vs GPU cloud."""
        from waferscale.cli_contract import _guard
        _guard(lambda: quote_command(model, tokens, seq, systems, gpus, gpu, node,
                                     gpus_per_node, stack, spec, prices, json_out))


__all__ = ["compare_command", "gpu_command", "parse_count", "parse_counts", "parse_tokens",
           "quote_command", "register"]
