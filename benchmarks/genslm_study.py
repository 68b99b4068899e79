"""The GenSLM study: GenSLM-25M/250M/2.5B/25B at 10,240 tokens on 1/2/4/16 wafers against
1..256 GPU nodes, in GenSLM's own 2022 stack (as configured, and with activation
checkpointing for every size) and in a tuned one.

    .venv/bin/python benchmarks/genslm_study.py [--out DIR] [--gpu a100-40gb] [--no-wafer]

Writes ``DIR/genslm_study.md`` (the tables), ``DIR/genslm_study.json`` (every row, as
`waferscale compare --json` gives it) and ``DIR/genslm_study.png`` (samples/s against
devices, one panel per model). Which configurations run out of memory, and why, is part of
the result. Speedups are per device (one wafer system against one GPU, each at its best
fitting configuration in the study) and per dollar (samples per unit of rental cost).

The wafer column goes through `waferscale.baselines.compare.wafer_training_estimate`:
a weight-streaming training step from captured graphs, N systems = N x one (see its
assumptions);
a model the wafer side cannot build at 10,240 tokens is reported as unavailable.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from waferscale.baselines.compare import (
    SYSTEMS_ASSUMPTION,
    TRAINING_ASSUMPTION,
    WaferFigure,
    compare_report,
    gpu_row,
    load_prices,
    wafer_training_estimate,
)
from waferscale.baselines.gpu import (
    ClusterSpec,
    estimate,
    genslm_2022_layout,
    get_stack,
    model_shape,
    node_for,
)

MODELS = ("genslm-25m", "genslm-250m", "genslm-2.5b", "genslm-25b")
SYSTEMS = (1, 2, 4, 16)
NODES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STACKS = ("genslm-2022", "genslm-2022+ckpt", "tuned")
#: GenSLM's 2022 recipe with activation checkpointing switched on for every size (its
#: configs ask for it only for 25B): what the old stack could have done at best.
CKPT = "genslm-2022+ckpt"
SEQ = 10240
TOKENS = 15e9        # about 1.5 M genomes of 10,240 codons: one pass over a GenSLM-sized set


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r["samples_per_second"] is not None]
    return max(ok, key=lambda r: r[key]) if ok else None


def _checkpointed_rows(model: str, gpu: str) -> list[dict[str, Any]]:
    shape, node, stack = model_shape(model), node_for(gpu), get_stack("genslm-2022")
    prices = load_prices()
    rows = []
    for n in NODES:
        cluster = ClusterSpec(node, n)
        layout = replace(genslm_2022_layout(shape, cluster), recompute="full")
        row = gpu_row(estimate(shape, SEQ, cluster, stack, layout), TOKENS, prices)
        row["stack"] = CKPT
        rows.append(row)
    return rows


def study(gpu: str, with_wafer: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"seq": SEQ, "tokens": TOKENS, "gpu": gpu, "models": {},
                           "assumptions": [TRAINING_ASSUMPTION, SYSTEMS_ASSUMPTION]}
    for model in MODELS:
        t0 = time.perf_counter()
        if with_wafer:
            fig = wafer_training_estimate(model, SEQ)
        else:
            fig = WaferFigure(model, SEQ, "wse2", None, None, "skipped", "skipped",
                              unavailable_reason="--no-wafer")

        def cached(m: str, s: int, spec: str, fig: WaferFigure = fig) -> WaferFigure:
            return fig

        rows: list[dict[str, Any]] = []
        for i, stack in enumerate(s for s in STACKS if s != CKPT):
            rep = compare_report(model, seq=SEQ, systems=list(SYSTEMS), gpu=gpu,
                                 nodes=list(NODES), stack=stack, tokens=TOKENS,
                                 wafer_fn=cached)
            rows += [r for r in rep["rows"] if r["system"] == "gpu" or i == 0]
        rows += _checkpointed_rows(model, gpu)
        for r in rows:
            sps = r["samples_per_second"]
            r["samples_per_second_per_device"] = None if sps is None else sps / r["devices"]
            r["samples_per_dollar"] = None if sps is None else \
                sps * 3600 / r["price_per_hour"]
        wafer = [r for r in rows if r["system"] == "wafer"]
        summary: dict[str, Any] = {"params": rep["params"], "wafer_mode": fig.label,
                                   "wafer_unavailable": fig.unavailable_reason}
        for stack in STACKS:
            gpu_rows = [r for r in rows if r["stack"] == stack]
            ooms = [r for r in gpu_rows if r["oom_reason"]]
            best_dev = _best(gpu_rows, "samples_per_second_per_device")
            best_usd = _best(gpu_rows, "samples_per_dollar")
            s: dict[str, Any] = {
                "runs_on_nodes": [r["nodes"] for r in gpu_rows if r["oom_reason"] is None],
                "oom_on_nodes": [r["nodes"] for r in ooms],
                "oom_reason": ooms[-1]["oom_reason"] if ooms else None,
                "best_per_gpu": None if best_dev is None else {
                    "label": best_dev["label"], "layout": best_dev["layout"],
                    "samples_per_second_per_gpu": best_dev["samples_per_second_per_device"]},
                "max_samples_per_second": None if best_dev is None else max(
                    r["samples_per_second"] for r in gpu_rows
                    if r["samples_per_second"] is not None),
            }
            w = wafer[0] if wafer and wafer[0]["samples_per_second"] is not None else None
            if w and best_dev:
                s["speedup_per_device"] = (w["samples_per_second_per_device"]
                                           / best_dev["samples_per_second_per_device"])
            if w and best_usd:
                s["speedup_per_dollar"] = w["samples_per_dollar"] / best_usd["samples_per_dollar"]
            summary[stack] = s
        out["models"][model] = {"rows": rows, "summary": summary,
                                "seconds": time.perf_counter() - t0}
        print(f"{model}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _fmt(x: float | None, spec: str = ",.2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# GenSLM at {res['seq']:,} tokens: wafer vs {res['gpu']} GPU nodes", "",
             f"Time and cost to train {res['tokens']:.3g} tokens. Assumptions: "
             + "; ".join(res["assumptions"]) + ".", ""]
    lines += ["## Summary", "",
              "| model | params | wafer samples/s (1 system) | stack | GPU nodes that run | "
              "out of memory | best samples/s per GPU | wafer speedup per device | "
              "per dollar |", "|---|---|---|---|---|---|---|---|---|"]
    for model, m in res["models"].items():
        s = m["summary"]
        w = next(r for r in m["rows"] if r["system"] == "wafer")
        for stack in STACKS:
            st = s[stack]
            runs = st["runs_on_nodes"]
            oom = st["oom_on_nodes"]
            lines.append(
                f"| {model} | {s['params'] / 1e9:.3g} B | "
                f"{_fmt(w['samples_per_second']) if w['samples_per_second'] else 'n/a'} | "
                f"{stack} | {', '.join(map(str, runs)) or 'none'} | "
                f"{', '.join(map(str, oom)) or 'none'} | "
                f"{_fmt(st['best_per_gpu'] and st['best_per_gpu']['samples_per_second_per_gpu'], ',.3f')} | "  # noqa: E501
                f"{_fmt(st.get('speedup_per_device'), ',.1f')} | "
                f"{_fmt(st.get('speedup_per_dollar'), ',.2f')} |")
    lines += ["", "## Why configurations do not run", ""]
    for model, m in res["models"].items():
        s = m["summary"]
        if s["wafer_unavailable"]:
            lines.append(f"- {model}, wafer: {s['wafer_unavailable']}")
        for stack in STACKS:
            if s[stack]["oom_reason"]:
                lines.append(f"- {model}, {stack}: {s[stack]['oom_reason']}")
    lines += ["", "## All rows", "",
              "| model | system | stack | layout | samples/s | time to train | cost | "
              "energy kWh |", "|---|---|---|---|---|---|---|---|"]
    for model, m in res["models"].items():
        for r in m["rows"]:
            days = r["time_to_train_days"]
            lines.append(
                f"| {model} | {r['label']} | {r['stack'] or 'wafer'} | "
                f"{r['layout'] or r['mode']} | {_fmt(r['samples_per_second'])} | "
                f"{'-' if days is None else f'{days:,.2f} d'} | {_fmt(r['cost'], ',.0f')} | "
                f"{_fmt(r['energy_kwh'], ',.0f')} |")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(res["models"]), figsize=(4.2 * len(res["models"]), 3.8),
                             sharey=False)
    for ax, (model, m) in zip(axes, res["models"].items(), strict=True):
        for stack, style in zip(STACKS, ("o--", "v:", "s-"), strict=True):
            pts = [(r["devices"], r["samples_per_second"]) for r in m["rows"]
                   if r["stack"] == stack and r["samples_per_second"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"GPUs, {stack}")
            oom = [r["devices"] for r in m["rows"] if r["stack"] == stack and r["oom_reason"]]
            if oom:
                ax.plot(oom, [1e-2] * len(oom), "x", color="red",
                        label=f"OOM ({stack})")
        pts = [(r["devices"], r["samples_per_second"]) for r in m["rows"]
               if r["system"] == "wafer" and r["samples_per_second"] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "D-", color="black", label="wafers")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("devices (GPUs or wafer systems)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"training samples/s at {res['seq']:,} tokens")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("genslm_study"))
    ap.add_argument("--gpu", default="a100-40gb")
    ap.add_argument("--no-wafer", action="store_true",
                    help="skip the wafer estimates (they compile each model)")
    args = ap.parse_args()
    res = study(args.gpu, not args.no_wafer)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "genslm_study.json").write_text(json.dumps(res, indent=1, allow_nan=False))
    md = markdown(res)
    (args.out / "genslm_study.md").write_text(md)
    plot(res, args.out / "genslm_study.png")
    print(md)
    print(f"wrote {args.out}/genslm_study.md, .json, .png")


if __name__ == "__main__":
    main()
