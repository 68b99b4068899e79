"""The Plotly figures of the HTML report, each built from a bundle's dicts as they are
(`waferscale.report.html_data`): the floorplan, the link-load heat map, the pipeline and
weight-streaming timelines, the scaling curves and the validation errors.

Every builder returns None when the bundle lacks what it draws; the page then says why.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

#: The longest side of the link-load heat map, in cells: the wafer's link loads are shown
#: max-pooled over square blocks of PEs so that the page stays small (about 200 x 150).
LOAD_CELLS = 200
#: Samples drawn in the pipeline timeline (the first fills the pipeline, the next follow
#: one period apart).
PIPELINE_SAMPLES = 3

_RECT = re.compile(r"^\s*(\d+)x(\d+)@\((\d+),(\d+)\)\s*$")
_FONT = dict(family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif", size=12)


def parse_rect(text: Any) -> tuple[int, int, int, int] | None:
    """``"HxW@(row,col)"`` (how a report prints a placed rectangle) as (row, col, H, W);
    None for a rectangle without a position (weight streaming: the whole wafer) or host."""
    m = _RECT.match(str(text))
    if not m:
        return None
    h, w, r, c = (int(g) for g in m.groups())
    return r, c, h, w


def _layout(fig: go.Figure, title: str, height: int, **kw: Any) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=15)), height=height,
                      margin=dict(l=60, r=20, t=50, b=50), font=_FONT,
                      paper_bgcolor="white", plot_bgcolor="white", **kw)
    return fig


def _n(v: Any, fmt: str = ",.0f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _wafer_size(bundle: dict[str, Any]) -> tuple[int, int] | None:
    fp = bundle.get("floorplan")
    if isinstance(fp, dict) and isinstance(fp.get("spec"), dict):
        return int(fp["spec"]["rows"]), int(fp["spec"]["cols"])
    comp = bundle.get("compile") or {}
    try:
        from waferscale.hardware import get_spec

        s = get_spec(str(comp.get("spec", "wse2")))
        return int(s.rows), int(s.cols)
    except Exception:  # a custom spec file that is not here: fit the rectangles instead
        return None


def placed_blocks(bundle: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[int, ...]]]:
    """(stage row, (row, col, rows, cols)) of every stage placed on the wafer, in pipeline
    order: from the floorplanner's rectangles when the bundle has them, else from the
    rectangles the report prints."""
    comp = bundle.get("compile") or {}
    blocks = (bundle.get("floorplan") or {}).get("blocks") or {}
    out = []
    for s in comp.get("stages") or []:
        rect = blocks.get(s["stage"])
        rect = tuple(int(v) for v in rect) if rect else parse_rect(s.get("rect"))
        if rect:
            out.append((s, rect))
    return out


def stage_hover(s: dict[str, Any], rect: tuple[int, ...] | None = None) -> str:
    """The tooltip of a stage: stage, kernel, rectangle, cycles, SRAM, utilisation."""
    lines = [f"<b>{s['stage']}</b>", f"kernel: {s.get('kind', '?')} ({s.get('algorithm', '')})"]
    if rect:
        r, c, h, w = rect
        lines.append(f"rect: {h} x {w} PEs at ({r}, {c})")
    lines += [f"PEs: {_n(s.get('pes'))}",
              f"cycles: {_n(s.get('cycles'))} (cost() {_n(s.get('cost_cycles'))}; stage "
              f"{_n(s.get('stage_cycles'))})",
              f"SRAM: {_n(s.get('sram_per_pe'))} B per PE ({_n(s.get('sram_bytes'))} B)",
              f"utilisation: {_n(s.get('utilisation'), '.1%')}"]
    return "<br>".join(lines)


def floorplan_figure(bundle: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """Every placed kernel's rectangle coloured by pipeline position; hovering one shows
    its stage, kernel, cycles, SRAM and utilisation. Returns (figure, rectangles drawn)."""
    blocks = placed_blocks(bundle)
    if not blocks:
        return None
    comp = bundle.get("compile") or {}
    size = _wafer_size(bundle) or (max(r + h for _, (r, c, h, w) in blocks),
                                   max(c + w for _, (r, c, h, w) in blocks))
    rows, cols = size
    n = len(blocks)
    colours = sample_colorscale("Viridis", [i / max(n - 1, 1) for i in range(n)])
    fig = go.Figure()
    fig.add_shape(type="rect", x0=0, y0=0, x1=cols, y1=rows, line=dict(color="#888", width=1),
                  fillcolor="#f4f4f4", layer="below")
    for (s, (r, c, h, w)), colour in zip(blocks, colours, strict=True):
        fig.add_trace(go.Scatter(
            x=[c, c + w, c + w, c, c], y=[r, r, r + h, r + h, r], mode="lines",
            fill="toself", fillcolor=colour, line=dict(color="rgba(0,0,0,0.55)", width=0.6),
            hoveron="fills", name=stage_hover(s, (r, c, h, w)),
            hoverlabel=dict(namelength=-1, align="left"), showlegend=False))
    reserved = (bundle.get("floorplan") or {}).get("reserved") or []
    for r, c, h, w in reserved:
        fig.add_trace(go.Scatter(
            x=[c, c + w, c + w, c, c], y=[r, r, r + h, r + h, r], mode="lines", fill="toself",
            fillcolor="rgba(120,120,120,0.5)", fillpattern=dict(shape="/"),
            line=dict(color="#555", width=0.6), hoveron="fills",
            name=f"reserved: {h} x {w} PEs at ({r}, {c})", hoverlabel=dict(namelength=-1),
            showlegend=False))
    fig.add_trace(go.Scatter(  # the colour bar only
        x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
        marker=dict(colorscale="Viridis", cmin=0, cmax=max(n - 1, 1), color=[0],
                    showscale=True, colorbar=dict(title=dict(text="pipeline<br>position"),
                                                  thickness=12))))
    fig.update_xaxes(range=[0, cols], title_text="column (PE)", showgrid=False, zeroline=False,
                     constrain="domain")
    fig.update_yaxes(range=[rows, 0], title_text="row (PE)", showgrid=False, zeroline=False,
                     scaleanchor="x", scaleratio=1, constrain="domain")
    util = comp.get("utilization")
    title = (f"Floorplan: {n} kernels on {rows} x {cols} PEs"
             + (f" (utilisation {util:.0%})" if isinstance(util, float) else ""))
    _layout(fig, title, 640, hovermode="closest")
    return fig, n


def link_loads(floorplan: dict[str, Any]) -> np.ndarray:
    """The busiest outgoing link of every PE, in wavelets per sample: the routed bands of
    the serialised placement summed with the router's own `accumulate_loads`."""
    from waferscale.compiler.floorplan.route import DIR_NAMES, Band, accumulate_loads
    from waferscale.fabric.grid import Rect

    rows, cols = int(floorplan["spec"]["rows"]), int(floorplan["spec"]["cols"])
    direction = {name: d for d, name in DIR_NAMES.items()}
    bands = [Band(direction[d], Rect(int(r), int(c), int(h), int(w)), float(load))
             for route in floorplan.get("routes") or []
             for d, r, c, h, w, load in route.get("bands") or []]
    return accumulate_loads(bands, rows, cols).max(axis=0)


def link_load_figure(bundle: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """Heat map of the routed link loads (max-pooled to at most `LOAD_CELLS` cells a side),
    with the kernels' outlines. Returns (figure, outlines drawn)."""
    fp = bundle.get("floorplan")
    if not isinstance(fp, dict) or "routes" not in fp or "spec" not in fp:
        return None
    load = link_loads(fp)
    rows, cols = load.shape
    f = max(1, math.ceil(max(rows, cols) / LOAD_CELLS))
    pr, pc = math.ceil(rows / f) * f, math.ceil(cols / f) * f
    padded = np.zeros((pr, pc))
    padded[:rows, :cols] = load
    pooled = padded.reshape(pr // f, f, pc // f, f).max(axis=(1, 3))
    peak = float(load.max()) if load.size else 0.0
    fig = go.Figure(go.Heatmap(
        z=pooled, x0=f / 2, dx=f, y0=f / 2, dy=f, colorscale="Inferno", zmin=0,
        colorbar=dict(title=dict(text="wavelets /<br>sample"), thickness=12),
        hovertemplate=(f"PEs around row %{{y:.0f}}, column %{{x:.0f}} ({f} x {f} block)<br>"
                       "busiest link: %{z:,.0f} wavelets / sample<extra></extra>")))
    outlines = placed_blocks(bundle)
    for _, (r, c, h, w) in outlines:
        fig.add_shape(type="rect", x0=c, y0=r, x1=c + w, y1=r + h,
                      line=dict(color="rgba(255,255,255,0.35)", width=0.6))
    fig.update_xaxes(range=[0, cols], title_text="column (PE)", showgrid=False, zeroline=False,
                     constrain="domain")
    fig.update_yaxes(range=[rows, 0], title_text="row (PE)", showgrid=False, zeroline=False,
                     scaleanchor="x", scaleratio=1, constrain="domain")
    _layout(fig, f"Link load: busiest link per PE (peak {peak:,.0f} wavelets / sample)", 640)
    return fig, len(outlines)


def pipeline_figure(comp: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """Pipelined mode: the first `PIPELINE_SAMPLES` samples through the stages. A sample
    passes stage after stage (the report's pipeline fill is the sum of the stage times);
    the next enters one period (the bottleneck stage's time) later. Returns (figure,
    stages drawn)."""
    if "weight_streaming" in comp or not comp.get("period_cycles"):
        return None
    stages = [s for s in comp.get("stages") or [] if (s.get("stage_cycles") or 0) > 0]
    if not stages:
        return None
    us = 1e6 / float(comp["clock_hz"])
    period = float(comp["period_cycles"]) * us
    names = [s["stage"] for s in stages]
    dur = np.array([float(s["stage_cycles"]) for s in stages]) * us
    start = np.concatenate([[0.0], np.cumsum(dur)[:-1]])
    bottleneck = comp.get("bottleneck")
    fig = go.Figure()
    colours = ["#3b6fb6", "#e08a2c", "#4a9a5b", "#9b59b6"]
    for k in range(PIPELINE_SAMPLES):
        fig.add_trace(go.Bar(
            y=names, x=dur, base=start + k * period, orientation="h", name=f"sample {k}",
            marker=dict(color=colours[k % len(colours)],
                        line=dict(width=[2 if n == bottleneck else 0 for n in names],
                                  color="#c0392b")),
            customdata=np.stack([start + k * period, dur], axis=1),
            hovertemplate=(f"sample {k}<br>%{{y}}: starts %{{customdata[0]:,.2f}} us, "
                           "takes %{customdata[1]:,.3f} us<extra></extra>")))
    fig.update_yaxes(autorange="reversed", title_text="stage (pipeline order)",
                     tickfont=dict(size=9 if len(names) > 40 else 11))
    fig.update_xaxes(title_text="microseconds from the first sample's entry")
    height = int(min(1800, max(360, 16 * len(names) + 160)))
    _layout(fig, f"Pipeline timeline: period {period:,.2f} us (bottleneck {bottleneck}, "
                 f"outlined), fill {comp.get('pipeline_fill_seconds', 0) * 1e6:,.1f} us",
            height, barmode="overlay", legend=dict(orientation="h", y=1.02, x=0.5,
                                                   xanchor="center", yanchor="bottom"))
    return fig, len(names)


_BOUND_COLOURS = {"weight I/O": "#e08a2c", "compute": "#3b6fb6", "gradient I/O": "#8e44ad"}


def streaming_layers(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-layer rows of the weight-streaming timeline (training step, else the
    forward pass of a weight-streaming compile)."""
    train = bundle.get("training") or {}
    if train.get("layers"):
        return list(train["layers"])
    ws = (bundle.get("compile") or {}).get("weight_streaming") or {}
    return list(ws.get("layers") or [])


def streaming_figure(bundle: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """Weight streaming: every layer's span in its graph's timeline (one panel per graph:
    forward, backward), coloured by what bounds it, and its compute, weights-in and
    gradients-out times. Returns (figure, layer rows drawn)."""
    layers = streaming_layers(bundle)
    if not layers:
        return None
    graphs = list(dict.fromkeys(str(row.get("graph", "forward")) for row in layers))
    label = [f"{row.get('graph', 'forward')}: {row.get('layer') or '(unattributed)'}"
             for row in layers]
    counts = [sum(1 for row in layers if row.get("graph", "forward") == g) for g in graphs]
    fig = make_subplots(rows=len(graphs), cols=2, shared_yaxes=False, column_widths=[0.6, 0.4],
                        horizontal_spacing=0.14, vertical_spacing=0.08,
                        row_heights=[max(c, 3) for c in counts],
                        subplot_titles=[t for g in graphs for t in
                                        (f"{g}: span of each layer (ms into the {g} graph)",
                                         f"{g}: time per resource (ms)")])
    shown: set[str] = set()
    for gi, g in enumerate(graphs, start=1):
        rows = [(lab, row) for lab, row in zip(label, layers, strict=True)
                if row.get("graph", "forward") == g]
        for bound in dict.fromkeys(str(row.get("bound")) for _, row in rows):
            sel = [(lab, row) for lab, row in rows if str(row.get("bound")) == bound]
            fig.add_trace(go.Bar(
                y=[lab for lab, _ in sel],
                x=[(row["end_s"] - row["start_s"]) * 1e3 for _, row in sel],
                base=[row["start_s"] * 1e3 for _, row in sel], orientation="h",
                name=f"{bound}-bound", legendgroup=bound, showlegend=bound not in shown,
                marker_color=_BOUND_COLOURS.get(bound, "#777"),
                customdata=[[row.get("stages"), row.get("start_s", 0) * 1e3,
                             row.get("end_s", 0) * 1e3] for _, row in sel],
                hovertemplate=("%{y}<br>%{customdata[0]} stages, %{customdata[1]:,.3f} to "
                               "%{customdata[2]:,.3f} ms<extra>" + bound + "-bound</extra>")),
                row=gi, col=1)
            shown.add(bound)
        for key, name, colour in (("compute_s", "compute", "#3b6fb6"),
                                  ("weight_in_s", "weights in", "#e08a2c"),
                                  ("grad_out_s", "gradients out", "#8e44ad")):
            fig.add_trace(go.Bar(
                y=[lab for lab, _ in rows], x=[row.get(key, 0) * 1e3 for _, row in rows],
                orientation="h", name=name, legendgroup=f"t-{name}",
                showlegend=gi == 1, marker_color=colour, opacity=0.85,
                hovertemplate=f"%{{y}}<br>{name}: %{{x:,.4f}} ms<extra></extra>"),
                row=gi, col=2)
        fig.update_yaxes(autorange="reversed", row=gi, col=1,
                         tickfont=dict(size=9 if len(rows) > 40 else 11))
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=gi, col=2)
        fig.update_xaxes(title_text="ms", row=gi, col=1)
        fig.update_xaxes(title_text="ms", row=gi, col=2)
    height = int(min(2400, max(420, 15 * len(layers) + 140 * len(graphs))))
    _layout(fig, "Weight-streaming timeline per layer", height, barmode="group",
            legend=dict(orientation="v", y=1.0, x=1.01, xanchor="left", yanchor="top"),
            bargap=0.15)
    fig.update_layout(margin=dict(t=80, r=150))
    return fig, len(layers)


def scaling_figure(compare: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """Samples/s against devices (wafer systems, GPUs) on log axes, from the comparison's
    rows; rows that do not run (out of memory, unavailable) are listed in the table only.
    Returns (figure, points drawn)."""
    rows = [r for r in compare.get("rows") or [] if r.get("samples_per_second")]
    if not rows:
        return None
    fig = go.Figure()
    points = 0
    for system, name, colour, symbol in (("wafer", "wafer systems", "#c0392b", "diamond"),
                                         ("gpu", "GPU cluster", "#3b6fb6", "circle")):
        sel = sorted((r for r in rows if r.get("system") == system),
                     key=lambda r: r.get("devices") or 0)
        if not sel:
            continue
        points += len(sel)
        fig.add_trace(go.Scatter(
            x=[r["devices"] for r in sel], y=[r["samples_per_second"] for r in sel],
            mode="lines+markers", name=name, line=dict(color=colour),
            marker=dict(symbol=symbol, size=10, color=colour),
            customdata=[[r.get("label"), r.get("layout") or r.get("mode") or "",
                         r.get("time_to_train_days"), r.get("cost")] for r in sel],
            hovertemplate=("%{customdata[0]}<br>%{customdata[1]}<br>%{y:,.3f} samples/s"
                           "<br>time to train %{customdata[2]:,.1f} days, cost "
                           "%{customdata[3]:,.0f}<extra></extra>")))
    ticks = sorted({r["devices"] for r in rows if r.get("devices")})
    fig.update_xaxes(type="log", title_text="devices (wafer systems or GPUs)", tickvals=ticks,
                     ticktext=[f"{t:,}" for t in ticks])
    fig.update_yaxes(type="log", title_text="training samples / s", dtick=1,
                     exponentformat="power")
    _layout(fig, f"Scaling: {compare.get('model')} at {compare.get('seq', 0):,} tokens "
                 f"({compare.get('stack')} GPU stack)", 440, hovermode="closest")
    return fig, points


def systems_figure(scaling: dict[str, Any]) -> tuple[go.Figure, int] | None:
    """A training step on 1 to N systems (`waferscale scaling`): samples/s and scaling
    efficiency against the number of systems, from the report's rows (and its wider scan,
    when it has one). Returns (figure, points drawn)."""
    rows = [r for r in scaling.get("rows") or [] if r.get("samples_per_second")]
    if not rows:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(
        x=[r["systems"] for r in rows], y=[r["samples_per_second"] for r in rows],
        mode="lines+markers", name="samples / s", marker=dict(size=10, color="#c0392b"),
        line=dict(color="#c0392b"),
        customdata=[[r.get("global_batch"), r.get("bound"), r.get("seconds_per_step")]
                    for r in rows],
        hovertemplate=("%{x} systems: %{y:,.3f} samples/s<br>global batch %{customdata[0]}, "
                       "%{customdata[1]}-bound, step %{customdata[2]:.4g} s<extra></extra>")),
        secondary_y=False)
    fig.add_trace(go.Scatter(
        x=[r["systems"] for r in rows], y=[100 * r.get("scaling_efficiency", 0) for r in rows],
        mode="lines+markers", name="scaling efficiency", marker=dict(symbol="square", size=8,
                                                                    color="#3b6fb6"),
        line=dict(color="#3b6fb6", dash="dot"),
        hovertemplate="%{x} systems: efficiency %{y:.1f} %<extra></extra>"), secondary_y=True)
    scan = [r for r in scaling.get("scan") or [] if r.get("scaling_efficiency") is not None]
    if scan:
        fig.add_trace(go.Scatter(
            x=[r["systems"] for r in scan], y=[100 * r["scaling_efficiency"] for r in scan],
            mode="lines", name="efficiency, wider scan", line=dict(color="#8a8f99", dash="dash"),
            hovertemplate="%{x} systems: efficiency %{y:.1f} %<extra></extra>"),
            secondary_y=True)
    ticks = sorted({r["systems"] for r in rows + scan})
    fig.update_xaxes(type="log", title_text="systems", tickvals=ticks)
    fig.update_yaxes(type="log", title_text="training samples / s", dtick=1,
                     exponentformat="power", secondary_y=False)
    fig.update_yaxes(title_text="scaling efficiency (%)", range=[0, 105], tickmode="array",
                     tickvals=[0, 20, 40, 60, 80, 100], showgrid=False, secondary_y=True)
    _layout(fig, f"A training step on 1 to {max(r['systems'] for r in rows)} systems "
                 f"({scaling.get('scaling', 'weak')} scaling)", 420, hovermode="closest",
            legend=dict(orientation="h", y=1.02, x=0.5, xanchor="center", yanchor="bottom"))
    return fig, len(rows)


def validation_figure(validation: list[dict[str, Any]] | None,
                      gpu: dict[str, Any] | None) -> tuple[go.Figure, int] | None:
    """Signed error of every validated value against its published measurement: the wafer
    cases (green within their band, red outside, grey without one) and the GPU model's
    G1-G12 rows. Returns (figure, bars drawn)."""
    fig = go.Figure()
    bars = 0
    # measured values only: a published bound's "error" is 0 when it holds (see the table)
    wafer = [r for r in validation or [] if isinstance(r.get("error"), int | float)
             and r.get("relation", "=") == "="]
    if wafer:
        bars += len(wafer)
        fig.add_trace(go.Bar(
            y=[r["name"] for r in wafer], x=[100 * r["error"] for r in wafer], orientation="h",
            name="wafer vs hardware",
            marker_color=[{True: "#4a9a5b", False: "#c0392b"}.get(r.get("passed"), "#8a8f99")
                          for r in wafer],
            customdata=[[r.get("ours"), r.get("published"), r.get("unit"), r.get("band", "")]
                        for r in wafer],
            hovertemplate=("%{y}<br>ours %{customdata[0]:.4g} vs published %{customdata[1]:.4g}"
                           " %{customdata[2]}<br>error %{x:+.1f} % (band %{customdata[3]})"
                           "<extra></extra>")))
    rows = [r for r in (gpu or {}).get("rows") or [] if isinstance(r.get("error"), int | float)]
    if rows:
        bars += len(rows)
        fig.add_trace(go.Bar(
            y=[f"{r['case']}: {r['metric']}" for r in rows], x=[100 * r["error"] for r in rows],
            orientation="h", name="GPU model vs measurements",
            marker_color=["#3b6fb6" if r.get("within_goal") else "#c0392b" for r in rows],
            hovertemplate="%{y}<br>error %{x:+.1f} %<extra></extra>"))
    if not bars:
        return None
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), automargin=True)
    fig.update_xaxes(title_text="error against the published figure (%)", zeroline=True,
                     zerolinecolor="#333")
    _layout(fig, "Validation: error of each value against its published measurement",
            int(min(1400, max(320, 22 * bars + 140))), showlegend=True,
            legend=dict(orientation="h", y=1.02, x=0.5, xanchor="center", yanchor="bottom"))
    return fig, bars


__all__ = ["floorplan_figure", "link_load_figure", "link_loads", "parse_rect",
           "pipeline_figure", "placed_blocks", "scaling_figure", "stage_hover",
           "streaming_figure", "streaming_layers", "systems_figure", "validation_figure"]
