"""One self-contained HTML page of a report (``waferscale report``, ``waferscale demo``).

The page renders a bundle (`waferscale.report.html_data`: the dicts the commands print, the
serialised placement, the assumption tables of docs/) with Plotly: plotly.js is inlined
once, so the file opens in a browser without a network. It holds the summary figures, the
floorplan of the wafer (hovering a kernel's rectangle shows its stage, kernel, cycles, SRAM
and utilisation), the link-load heat map, the per-stage table (click a header to sort),
the pipeline or weight-streaming timeline, the scaling curves and wafer-vs-GPU table when
a comparison was run, the validation table and the assumptions with their sources.

    bundle = build_bundle("genslm-25m", seq=2048, estimate=True)
    write_report(bundle, "report.html")
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from waferscale.errors import WaferscaleError
from waferscale.report import html_figures as figs

#: Plotly's configuration for every chart: no logo, no link to Plotly's cloud.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "modeBarButtonsToRemove": ["sendDataToCloud", "select2d", "lasso2d"]}

Column = tuple[str, Callable[[dict[str, Any]], Any], str]  # (header, value, format)

#: The element that carries the page's data (the bundle, strict JSON).
DATA_TAG = '<script type="application/json" id="waferscale-data">'


def check_html_path(path: str | Path, option: str = "--out") -> Path:
    """``path`` if the page can be written there, else a `WaferscaleError` saying why:
    ends in .html or .htm, not a directory, in a directory that exists and is writable.
    Checked before the work that produces the page."""
    import os

    p = Path(path)
    if p.is_dir():
        raise WaferscaleError(f"{option} {path}: is a directory (give a file name such as "
                              f"{p / 'report.html'})")
    if p.suffix.lower() not in (".html", ".htm"):
        raise WaferscaleError(f"{option} {path}: the report is an HTML page (end the name in "
                              f".html)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise WaferscaleError(f"{option} {path}: directory {parent} does not exist (create it "
                              f"first)")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise WaferscaleError(f"{option} {path}: not writable (choose a path you can write)")
    return p


# -- formatting ---------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v: Any, spec: str = "") -> str:
    """A cell's text: numbers by ``spec`` (``%`` for a fraction, ``s`` for a duration),
    None as a dash, everything else as text."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if spec == "s" and _finite(v):
        return duration(float(v))
    if spec and _finite(v):
        return format(v, spec)
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, list | tuple):
        return ", ".join(str(x) for x in v)
    return str(v)


def duration(seconds: float) -> str:
    """Seconds in the unit that reads best (ns to days)."""
    a = abs(seconds)
    for limit, scale, unit in ((1e-6, 1e9, "ns"), (1e-3, 1e6, "us"), (1.0, 1e3, "ms"),
                               (120.0, 1.0, "s"), (7200.0, 1 / 60, "min"),
                               (3 * 86400.0, 1 / 3600, "h")):
        if a < limit:
            return f"{seconds * scale:,.3g} {unit}"
    return f"{seconds / 86400:,.1f} d"


def nbytes(n: Any) -> str:
    """A byte count in kB, MB, GB or TB (decimal)."""
    if not _finite(n):
        return "-"
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(n) >= scale:
            return f"{n / scale:,.3g} {unit}"
    return f"{n:,.0f} B"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def table(columns: list[Column], rows: Iterable[dict[str, Any]], *, table_id: str,
          sortable: bool = True, caption: str | None = None) -> str:
    """An HTML table; numeric columns sort by value (``data-v``), text ones by text."""
    rows = list(rows)
    head = []
    for label, value, _ in columns:
        numeric = any(_finite(value(r)) for r in rows)
        head.append(f'<th data-type="{"num" if numeric else "text"}" scope="col" '
                    f'title="click to sort">{_e(label)}</th>')
    body = []
    for r in rows:
        cells = []
        for _, value, spec in columns:
            v = value(r)
            key = v if _finite(v) else ("" if v is None else str(v))
            cls = ' class="num"' if _finite(v) else ""
            cells.append(f'<td{cls} data-v="{_e(key)}">{_e(fmt(v, spec))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    cls = "data sortable" if sortable else "data"
    return (f'<div class="table-wrap"><table class="{cls}" id="{_e(table_id)}" '
            f'data-rows="{len(rows)}">{cap}<thead><tr>{"".join(head)}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def _chart(name: str, fig: Any, count: int) -> str:
    """A Plotly figure as a ``<figure>`` (the page's one plotly.js draws it)."""
    import plotly.io as pio

    height = int(fig.layout.height or 450)
    div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"chart-{name}",
                      config=PLOTLY_CONFIG, default_width="100%",
                      default_height=f"{height}px", validate=False)
    return (f'<figure class="chart" data-chart="{_e(name)}" data-count="{count}">{div}'
            f"</figure>")


def _cards(items: list[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
        for k, v in items if v not in (None, "", "-")) + "</div>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


# -- sections -------------------------------------------------------------------------------
def _summary(bundle: dict[str, Any]) -> str:
    out = []
    comp = bundle.get("compile")
    if comp:
        ws = comp.get("weight_streaming")
        items = [("model", str(comp.get("model", "?"))), ("mode", str(comp.get("mode"))),
                 ("spec", f"{comp.get('spec')} at {fmt(comp.get('clock_hz', 0) / 1e9, '.2f')} "
                          f"GHz"),
                 ("figures from", str(comp.get("measured"))),
                 ("seq x batch", f"{fmt(comp.get('seq'))} x {fmt(comp.get('batch'))}"),
                 ("samples / s", fmt(comp.get("samples_per_second"), ",.4g")),
                 ("tokens / s", fmt(comp.get("tokens_per_second"), ",.4g"))]
        if ws:
            items += [("bound", str(ws.get("bound"))),
                      ("time per batch", fmt(ws.get("seconds_per_batch"), "s"))]
        else:
            items += [("bottleneck", f"{comp.get('bottleneck')} ({comp.get('bottleneck_kind')})"),
                      ("period", f"{fmt(comp.get('period_cycles'), ',.0f')} cycles"),
                      ("pipeline fill", fmt(comp.get("pipeline_fill_seconds"), "s"))]
        items += [("parameters", fmt(comp.get("parameters"), ",.0f")),
                  ("PEs used", fmt(comp.get("pes_used"), ",.0f")),
                  ("SRAM used", f"{nbytes(comp.get('sram_bytes'))} of "
                                f"{nbytes(comp.get('wafer_sram_bytes'))}")]
        if not ws:  # the placement's figures (weight streaming places nothing side by side)
            items += [("utilisation", fmt(comp.get("utilization"), ".1%")),
                      ("FLOP utilisation", fmt(comp.get("flop_utilization"), ".1%")),
                      ("colours used", fmt(comp.get("colors_used"))),
                      ("peak link load", fmt(comp.get("peak_link_load"), ",.0f"))]
        items += [("compile time", fmt(comp.get("compile_seconds"), "s")),
                  ("host fallback ops", str(sum(f.get("count", 0)
                                                for f in comp.get("fallback_ops") or [])))]
        if "loss" in comp:
            items += [("loss on the wafer", fmt(comp.get("loss"), ".6f")),
                      ("eager PyTorch loss", fmt(comp.get("eager_loss"), ".6f")),
                      ("max logit error", fmt(comp.get("max_logit_error"), ".2e")),
                      ("fabric simulation wall", fmt(comp.get("wall_fabric_s"), "s"))]
        out.append(_cards(items))
    train = bundle.get("training")
    if train:
        out.append(f"<h3>Training step: {_e(train.get('model'))}, seq {fmt(train.get('seq'))}, "
                   f"batch {fmt(train.get('batch'))}, {_e(train.get('dtype'))}</h3>")
        out.append(_cards([
            ("mode", f"{train.get('mode')} on {train.get('spec')} + {train.get('system')}"),
            ("time per step", fmt(train.get("seconds_per_step"), "s")),
            ("samples / s", fmt(train.get("samples_per_second"), ",.4g")),
            ("tokens / s", fmt(train.get("tokens_per_second"), ",.4g")),
            ("forward", fmt(train.get("forward_seconds"), "s")),
            ("backward", fmt(train.get("backward_seconds"), "s")),
            ("bound", str(train.get("bound"))),
            ("optimizer", str(train.get("optimizer"))),
            ("activations", str(train.get("activation_policy"))),
            ("weights streamed", nbytes(train.get("weight_bytes_streamed"))),
            ("parameters", fmt(train.get("parameters"), ",.0f")),
            ("compile time", fmt(train.get("compile_seconds"), "s"))]))
    if not out:
        return ""
    return _section("summary", "Summary", "".join(out))


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _wafer(bundle: dict[str, Any]) -> str:
    comp = bundle.get("compile")
    if not comp:
        return ""
    fp = figs.floorplan_figure(bundle)
    load = figs.link_load_figure(bundle)
    parts = []
    if fp is None:
        why = ("weight streaming: every stage runs on the whole wafer in turn, so there is no "
               "floorplan of kernels side by side" if "weight_streaming" in comp else
               "no stage of this model was placed on the wafer")
        return _section("wafer", "The wafer", _note(why))
    parts.append(_chart("floorplan", *fp))
    if load is not None:
        parts.append(_chart("linkload", *load))
    body = f'<div class="pair">{"".join(parts)}</div>'
    if load is None:
        body += _note("link loads are not in this result: the routed placement was not saved "
                      "with it (`waferscale report MODEL` includes it)")
    body += _note("Hover a rectangle for its stage, kernel, cycles, SRAM and utilisation; drag "
                  "to zoom, double-click to reset. Rectangles are the floorplanner's: each "
                  "kernel's own grid lies inside its rectangle.")
    return _section("wafer", "The wafer: floorplan and link load", body)


def _stage_rows(bundle: dict[str, Any]) -> tuple[list[Column], list[dict[str, Any]], str]:
    comp = bundle.get("compile")
    if comp and comp.get("stages"):
        rows = [dict(s, index=i) for i, s in enumerate(comp["stages"])]
        cols: list[Column] = [
            ("#", lambda r: r["index"], ""), ("stage", lambda r: r["stage"], ""),
            ("kernel", lambda r: r.get("kind"), ""),
            ("algorithm", lambda r: r.get("algorithm"), ""),
            ("rect", lambda r: r.get("rect"), ""), ("PEs", lambda r: r.get("pes"), ",.0f"),
            ("SRAM / PE (B)", lambda r: r.get("sram_per_pe"), ",.0f"),
            ("cycles", lambda r: r.get("cycles"), ",.0f"),
            ("cost() cycles", lambda r: r.get("cost_cycles"), ",.0f"),
            ("stage cycles", lambda r: r.get("stage_cycles"), ",.0f"),
            ("utilisation", lambda r: r.get("utilisation"), ".1%"),
            ("FLOPs", lambda r: r.get("flops"), ".3g"), ("ops", lambda r: r.get("ops"), "")]
        if any(r.get("cost_agreement") is not None for r in rows):
            cols.append(("measured / cost()", lambda r: r.get("cost_agreement"), ".4f"))
        return cols, rows, f"{len(rows)} stages of {comp.get('model', 'the model')}"
    train = bundle.get("training")
    if train:
        rows = []
        for graph in ("forward", "backward"):
            for i, s in enumerate((train.get(graph) or {}).get("stages") or []):
                rows.append(dict(s, graph=graph, index=i))
        cols = [("graph", lambda r: r["graph"], ""), ("#", lambda r: r["index"], ""),
                ("stage", lambda r: r["stage"], ""), ("kernel", lambda r: r.get("kind"), ""),
                ("layer", lambda r: r.get("layer") or "", ""),
                ("compute", lambda r: r.get("compute_s"), "s"),
                ("weights in", lambda r: r.get("weight_in_s"), "s"),
                ("gradients out", lambda r: r.get("grad_out_s"), "s"),
                ("start", lambda r: r.get("start_s"), "s"), ("end", lambda r: r.get("end_s"), "s"),
                ("weight bytes", lambda r: r.get("weight_bytes"), ",.0f"),
                ("bound", lambda r: r.get("bound"), "")]
        return cols, rows, f"{len(rows)} stages of the training step"
    return [], [], ""


def _stages(bundle: dict[str, Any]) -> str:
    cols, rows, caption = _stage_rows(bundle)
    if not rows:
        return ""
    body = table(cols, rows, table_id="stage-table", caption=caption + " (click a header to "
                                                                      "sort)")
    ws = (bundle.get("compile") or {}).get("weight_streaming")
    if ws and ws.get("forward", {}).get("stages"):
        srows = ws["forward"]["stages"]
        body += "<h3>Weight streaming: each stage on the whole wafer</h3>" + table(
            [("stage", lambda r: r["stage"], ""), ("kernel", lambda r: r.get("kind"), ""),
             ("layer", lambda r: r.get("layer") or "", ""),
             ("compute", lambda r: r.get("compute_s"), "s"),
             ("weights in", lambda r: r.get("weight_in_s"), "s"),
             ("start", lambda r: r.get("start_s"), "s"), ("end", lambda r: r.get("end_s"), "s"),
             ("weight bytes", lambda r: r.get("weight_bytes"), ",.0f"),
             ("bound", lambda r: r.get("bound"), "")], srows, table_id="streaming-table")
    return _section("stages", "Stages", body)


def _timeline(bundle: dict[str, Any]) -> str:
    parts = []
    comp = bundle.get("compile") or {}
    pipe = figs.pipeline_figure(comp) if comp else None
    if pipe is not None:
        parts.append(_chart("pipeline", *pipe))
    stream = figs.streaming_figure(bundle)
    if stream is not None:
        parts.append(_chart("streaming", *stream))
        layers = figs.streaming_layers(bundle)
        parts.append(table([("graph", lambda r: r.get("graph"), ""),
                            ("layer", lambda r: r.get("layer") or "(unattributed)", ""),
                            ("stages", lambda r: r.get("stages"), ""),
                            ("compute", lambda r: r.get("compute_s"), "s"),
                            ("weights in", lambda r: r.get("weight_in_s"), "s"),
                            ("gradients out", lambda r: r.get("grad_out_s"), "s"),
                            ("start", lambda r: r.get("start_s"), "s"),
                            ("end", lambda r: r.get("end_s"), "s"),
                            ("bound", lambda r: r.get("bound"), "")], layers,
                           table_id="layer-table", caption="per layer"))
    if not parts:
        return ""
    return _section("timeline", "Timeline", "".join(parts))


def _compare(bundle: dict[str, Any]) -> str:
    cmp_ = bundle.get("compare")
    if not cmp_:
        return ""
    cur = cmp_.get("currency", "")
    parts = [f"<p>{_e(cmp_.get('model'))} ({fmt((cmp_.get('params') or 0) / 1e9, '.3g')} B "
             f"parameters), {fmt(cmp_.get('seq'))} tokens per sample, "
             f"{fmt(cmp_.get('tokens'), '.3g')} tokens to train; GPU stack "
             f"{_e(cmp_.get('stack'))}: {_e(cmp_.get('stack_description', ''))}</p>"]
    sc = figs.scaling_figure(cmp_)
    if sc is not None:
        parts.append(_chart("scaling", *sc))
    parts.append(table(
        [("system", lambda r: r.get("label"), ""),
         ("layout / mode", lambda r: r.get("layout") or r.get("mode"), ""),
         ("devices", lambda r: r.get("devices"), ",.0f"),
         ("samples / s", lambda r: r.get("samples_per_second"), ",.4g"),
         ("time to train", lambda r: r.get("time_to_train_seconds"), "s"),
         ("energy (kWh)", lambda r: r.get("energy_kwh"), ",.0f"),
         (f"cost ({cur})", lambda r: r.get("cost"), ",.0f"),
         ("memory / GPU (GiB)", lambda r: r.get("memory_gib_per_device"), ",.1f"),
         ("MFU", lambda r: r.get("mfu"), ".1%"),
         ("runs", lambda r: "yes" if r.get("samples_per_second") else
          ("out of memory" if r.get("oom_reason") else "n/a"), ""),
         ("why not", lambda r: r.get("oom_reason") or r.get("unavailable_reason") or "", "")],
        cmp_.get("rows") or [], table_id="compare-table", caption="wafer vs GPU cluster"))
    return _section("compare", "Scaling and the wafer vs GPUs", "".join(parts))


def _systems(bundle: dict[str, Any]) -> str:
    sc = bundle.get("scaling")
    if not sc:
        return ""
    parts = [f"<p>{_e(sc.get('model'))}, {fmt(sc.get('seq'))} tokens per sample, "
             f"{_e(sc.get('dtype', ''))}, {_e(sc.get('scaling', 'weak'))} scaling on one SwarmX "
             f"tree (waferscale scaling)</p>"]
    fig = figs.systems_figure(sc)
    if fig is not None:
        parts.append(_chart("systems", *fig))
    parts.append(table(
        [("systems", lambda r: r.get("systems"), ",.0f"),
         ("tree levels", lambda r: r.get("tree_levels"), ""),
         ("global batch", lambda r: r.get("global_batch"), ",.0f"),
         ("samples / s", lambda r: r.get("samples_per_second"), ",.4g"),
         ("speed-up", lambda r: r.get("speedup"), ",.3g"),
         ("efficiency", lambda r: r.get("scaling_efficiency"), ".1%"),
         ("step", lambda r: r.get("seconds_per_step"), "s"),
         ("SwarmX exposed", lambda r: r.get("swarmx_exposed_seconds"), "s"),
         ("bound", lambda r: r.get("bound"), "")], sc.get("rows") or [],
        table_id="systems-table", caption="per cluster size"))
    lin = sc.get("linearity")
    if isinstance(lin, dict) and lin:
        parts.append(_note("; ".join(f"{k}: {fmt(v)}" for k, v in lin.items())))
    return _section("systems", "Scaling over systems", "".join(parts))


def _stencil(bundle: dict[str, Any]) -> str:
    st = bundle.get("stencil")
    if not st:
        return ""
    pub = st.get("published") or {}
    rows = [("seconds", st.get("seconds"), pub.get("seconds")),
            ("Gcell / s", st.get("gcell_per_s"), pub.get("gcell_per_s")),
            ("TFLOP / s", st.get("tflop_per_s"), pub.get("tflop_per_s")),
            ("MFLOP / s per PE", st.get("mflop_per_s_per_pe"), pub.get("mflop_per_s_per_pe")),
            ("busy fraction", st.get("busy_fraction"), pub.get("busy_fraction")),
            ("FLOPs per cell-step (executed)", st.get("flops_per_cell_step_executed"),
             pub.get("flops_executed")),
            ("memory accesses per cell-step", st.get("memory_accesses_per_cell_step"),
             pub.get("memory_accesses")),
            ("fabric loads per cell-step", st.get("fabric_loads_per_cell_step"),
             pub.get("fabric_loads"))]
    grid = "x".join(str(g) for g in st.get("grid") or [])
    body = table([("figure", lambda r: r["f"], ""), ("ours", lambda r: r["o"], ""),
                  ("SC22 (755x994x1000)", lambda r: r["p"], "")],
                 [{"f": f, "o": o, "p": p} for f, o, p in rows], table_id="stencil-table",
                 sortable=False, caption=f"25-point stencil {grid}, {st.get('steps')} steps, "
                                         f"{st.get('spec')} ({st.get('mode')})")
    return _section("stencil", "The SC22 stencil on the full wafer", body)


def _validation(bundle: dict[str, Any]) -> str:
    val = bundle.get("validation")
    gpu = bundle.get("gpu_validation")
    if not val and not gpu:
        return ""
    parts = []
    vf = figs.validation_figure(val, gpu)
    if vf is not None:
        parts.append(_chart("validation", *vf))
    vs = bundle.get("validation_summary") or {}
    cap = "published hardware measurements vs this simulator (waferscale validate)"
    if vs.get("median_abs_error") is not None:
        cap += (f": median |error| {fmt(vs.get('median_abs_error'), '.1%')}, max "
                f"{fmt(vs.get('max_abs_error'), '.1%')} ({vs.get('worst_case')})")
    if val:
        parts.append(table([("case", lambda r: r.get("name"), ""),
                            ("ours", lambda r: r.get("ours"), ",.4g"),
                            ("published", lambda r: r.get("published"), ",.4g"),
                            ("unit", lambda r: r.get("unit"), ""),
                            ("error", lambda r: r.get("error"), "+.1%"),
                            ("band", lambda r: r.get("band", ""), ""),
                            ("within band", lambda r: r.get("passed"), ""),
                            ("note", lambda r: r.get("note"), "")], val,
                           table_id="validation-table", caption=cap))
    if gpu:
        s = gpu.get("summary") or {}
        parts.append(table([("case", lambda r: r.get("case"), ""),
                            ("metric", lambda r: r.get("metric"), ""),
                            ("predicted", lambda r: r.get("predicted"), ",.4g"),
                            ("measured", lambda r: r.get("measured"), ",.4g"),
                            ("error", lambda r: r.get("error"), "+.1%"),
                            ("within goal", lambda r: r.get("within_goal"), ""),
                            ("note", lambda r: r.get("note"), "")], gpu.get("rows") or [],
                           table_id="gpu-validation-table",
                           caption=f"GPU model vs public measurements G1-G12 (waferscale gpu "
                                   f"--validate): {s.get('within_goal')}/{s.get('numeric_rows')}"
                                   f" within {fmt(s.get('goal'), '.0%')}, median |error| "
                                   f"{fmt(s.get('median_abs_error'), '.1%')}"))
    return _section("validation", "Validation", "".join(parts))


def _cell(k: int) -> Callable[[dict[Any, Any]], Any]:
    return lambda r: r.get(k, "")


def _assumptions(bundle: dict[str, Any]) -> str:
    items: list[tuple[str, str]] = []
    comp = bundle.get("compile") or {}
    for n in comp.get("notes") or []:
        items.append((n, "the compile report (notes)"))
    for f in comp.get("fallback_ops") or []:
        items.append((f"host fallback: {f.get('op')} x{f.get('count')} "
                      f"({f.get('reason', 'no wafer kernel')}) at "
                      f"{'; '.join(f.get('sources') or [])}", "the compile report"))
    train = bundle.get("training") or {}
    for n in train.get("notes") or []:
        items.append((n, "the training report (notes)"))
    if train.get("activation_policy_reason"):
        items.append((f"activations: {train.get('activation_policy')} "
                      f"({train['activation_policy_reason']})", "the training report"))
    cmp_ = bundle.get("compare") or {}
    for a in cmp_.get("assumptions") or []:
        items.append((a, "the comparison (assumptions)"))
    sources = dict.fromkeys(s for r in cmp_.get("rows") or [] for s in r.get("sources") or [])
    for s in sources:
        items.append((f"price or power: {s}", f"the prices file ({cmp_.get('prices')})"))
    for n in (bundle.get("scaling") or {}).get("notes") or []:
        items.append((n, "the scaling report (notes)"))
    st = bundle.get("stencil") or {}
    if st.get("note"):
        items.append((st["note"], "the stencil report"))
    parts = []
    if items:
        parts.append(table([("assumption or note", lambda r: r["a"], ""),
                            ("source", lambda r: r["s"], "")],
                           [{"a": a, "s": s} for a, s in items], table_id="notes-table",
                           sortable=False, caption="recorded with this run's results"))
    for i, sec in enumerate(bundle.get("docs") or []):
        title = f"{sec.get('doc')}: {sec.get('section')}"
        if sec.get("rows"):
            header = sec.get("header") or []
            cols: list[Column] = [(h, _cell(k), "") for k, h in enumerate(header)]
            rows = [dict(enumerate(r)) for r in sec["rows"]]
            parts.append(f"<h3>{_e(title)}</h3>" + table(
                cols, rows, table_id=f"doc-table-{i}", sortable=False))
        elif sec.get("text"):
            parts.append(f"<h3>{_e(title)}</h3><p class=\"doc\">{_e(sec['text'])}</p>")
    if bundle.get("docs_note"):
        parts.append(_note(bundle["docs_note"]))
    if not parts:
        return ""
    parts.append(_note("Tags in the docs' tables: [S] read in the named source, [E] derived or "
                       "estimated (the derivation is given), [A] an assumption with no public "
                       "figure."))
    return _section("assumptions", "Assumptions and sources", "".join(parts))


SECTIONS: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [
    ("summary", "Summary", _summary), ("wafer", "Wafer", _wafer), ("stages", "Stages", _stages),
    ("timeline", "Timeline", _timeline), ("systems", "Systems", _systems),
    ("compare", "vs GPUs", _compare),
    ("stencil", "Stencil", _stencil), ("validation", "Validation", _validation),
    ("assumptions", "Assumptions", _assumptions)]

_CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f7f8fa; --accent:#3b6fb6; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial,
       sans-serif; color: var(--fg); background: var(--bg); }
header { background:#1d2330; color:#fff; padding:18px 28px 12px; }
header h1 { margin:0 0 4px; font-size:21px; }
header .sub { color:#c5cbd8; font-size:13px; }
header code { color:#fff; }
nav { position: sticky; top:0; z-index:10; background:#fff; border-bottom:1px solid var(--line);
      padding:6px 28px; }
nav a { margin-right:16px; color: var(--accent); text-decoration:none; font-weight:500; }
main { max-width: 1500px; margin: 0 auto; padding: 8px 28px 40px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; margin:18px 0;
          padding: 6px 18px 14px; }
h2 { font-size:18px; margin:12px 0 10px; }
h3 { font-size:15px; margin:16px 0 6px; }
.cards { display:grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap:8px; }
.card { border:1px solid var(--line); border-radius:6px; padding:6px 10px; background:#fbfcfd; }
.card .k { color: var(--muted); font-size:12px; }
.card .v { font-size:15px; font-weight:600; word-break: break-word; }
.pair { display:grid; grid-template-columns: 1fr 1fr; gap:12px; }
@media (max-width: 1100px) { .pair { grid-template-columns: 1fr; } }
figure.chart { margin: 8px 0; min-width:0; }
.table-wrap { max-height: 560px; overflow:auto; border:1px solid var(--line); border-radius:6px;
              margin: 6px 0 10px; }
table.data { border-collapse: collapse; width:100%; font-size:12.5px; }
table.data caption { text-align:left; padding:6px 8px; color: var(--muted); caption-side: top; }
table.data th { position: sticky; top:0; background:#eef1f6; text-align:left; padding:5px 8px;
                border-bottom:1px solid var(--line); white-space:nowrap; }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th[aria-sort=ascending]::after { content:" \\25B2"; font-size:10px; }
table.sortable th[aria-sort=descending]::after { content:" \\25BC"; font-size:10px; }
table.data td { padding:4px 8px; border-bottom:1px solid #eef0f4; vertical-align: top; }
table.data td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
table.data tr:hover td { background:#f3f7fd; }
p.note { color: var(--muted); font-size:12.5px; margin:6px 0; }
p.doc { font-size:13px; }
footer { color: var(--muted); font-size:12px; text-align:center; padding: 0 0 24px; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (t) {
  var heads = t.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, i) {
    th.addEventListener("click", function () {
      var asc = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var num = th.getAttribute("data-type") === "num";
      var body = t.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[i].getAttribute("data-v"), y = b.cells[i].getAttribute("data-v");
        var c;
        if (num) {
          x = x === "" ? -Infinity : parseFloat(x); y = y === "" ? -Infinity : parseFloat(y);
          c = x < y ? -1 : (x > y ? 1 : 0);
        } else {
          c = x.localeCompare(y);
        }
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def render_page(bundle: dict[str, Any]) -> tuple[str, list[str]]:
    """The page of ``bundle`` as one HTML document (plotly.js inlined), and the ids of
    the sections it has."""
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    import waferscale

    rendered = [(sid, label, fn(bundle)) for sid, label, fn in SECTIONS]
    present = [(sid, label, body) for sid, label, body in rendered if body]
    nav = "".join(f'<a href="#{sid}">{_e(label)}</a>' for sid, label, _ in present)
    title = str(bundle.get("title") or "waferscale report")
    command = bundle.get("command")
    sub = (f"<code>{_e(command)}</code> &middot; " if command else "") + \
        f"waferscale {_e(bundle.get('version') or waferscale.__version__)}"
    body = "".join(b for _, _, b in present) or _note("this result holds nothing to show")
    # the data behind the page, for `waferscale report --from` and for readers
    data = json.dumps(bundle, default=str, allow_nan=False, separators=(",", ":")) \
        .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style>"
        "<script>window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
        f"<script>{get_plotlyjs()}</script></head>"
        f"<body data-sections=\"{_e(','.join(sid for sid, _, _ in present))}\">"
        f"<header><h1>{_e(title)}</h1><div class=\"sub\">{sub}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>self-contained page: plotly.js {_e(get_plotlyjs_version())} is inlined, "
        "no network is needed to view it; the data behind it is in the "
        "<code>waferscale-data</code> script element</footer>"
        f"{DATA_TAG}{data}</script>"
        f"<script>{_SORT_JS}</script></body></html>\n"), [sid for sid, _, _ in present]


def render_html(bundle: dict[str, Any]) -> str:
    """The page of ``bundle`` as one HTML document (plotly.js inlined)."""
    return render_page(bundle)[0]


def embedded_data(page: str) -> Any:
    """The bundle a page carries (its ``waferscale-data`` element), or None."""
    start = page.find(DATA_TAG)
    if start < 0:
        return None
    start += len(DATA_TAG)
    end = page.find("</script>", start)
    return json.loads(page[start:end]) if end > 0 else None


def _strict(x: Any) -> Any:
    """``x`` with non-finite floats as None (the embedded data is strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    return x


def write_report(bundle: dict[str, Any], path: str | Path) -> tuple[Path, list[str]]:
    """Write the page of ``bundle`` to ``path`` (checked by `check_html_path`); the path
    and the ids of the page's sections."""
    p = check_html_path(path)
    page, present = render_page(_strict(bundle))
    p.write_text(page, encoding="utf-8")
    return p, present


__all__ = ["DATA_TAG", "check_html_path", "duration", "embedded_data", "fmt", "nbytes",
           "render_html", "render_page", "table", "write_report"]
