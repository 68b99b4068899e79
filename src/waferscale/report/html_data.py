"""The data behind the HTML report: one JSON document (a "bundle") of the reports that the
commands print, gathered once and rendered by `waferscale.report.html`.

A bundle holds the dicts exactly as `compile_report` / `run_report`, `train_report`,
`compare_report`, `validation_cases` and the GPU model's `validation_report` return them,
plus the floorplanner's serialised result (rectangles and routed bands, the format of
`compiler.floorplan.serialize.to_dict`) and the assumption tables read from docs/. Nothing
here recomputes a figure: the page shows what the commands report. ``waferscale report
--json`` prints the bundle, and ``waferscale report --from FILE`` renders a saved bundle or
any single result that a command printed with ``--json`` (`bundle_from_document`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waferscale.errors import WaferscaleError

#: The bundle's format tag (``bundle["format"]``); `bundle_from_document` checks it.
FORMAT = "waferscale.report/1"

#: The repository's docs/ (an editable install); absent from an installed wheel, where the
#: assumption tables are left out and the page says so.
DOCS = Path(__file__).resolve().parents[3] / "docs"

Step = Callable[[str], AbstractContextManager[Any]]


@dataclass(frozen=True)
class CompareOptions:
    """What `compare_report` is asked for (``waferscale compare``'s options)."""

    systems: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    nodes: list[int] = field(default_factory=lambda: [1, 8, 64, 256])
    gpu: str = "a100-40gb"
    stack: str = "tuned"
    tokens: float = 1e10


def floorplan_of(report: dict[str, Any]) -> dict[str, Any] | None:
    """The serialised placement of a compile/run report (None in weight-streaming mode)."""
    fp = report.get("floorplan")
    return fp if isinstance(fp, dict) else None


# -- assumptions read from docs/ ------------------------------------------------------------
def _plain(text: str) -> str:
    """Markdown's code and bold marks removed (the page shows plain text)."""
    return text.replace("**", "").replace("`", "")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def doc_section(doc: str, heading: Callable[[str], bool]) -> dict[str, Any] | None:
    """The first section of ``docs/<doc>`` whose heading satisfies ``heading``: its title,
    the first table in it (header and rows) and its prose (when it has no table)."""
    path = DOCS / doc
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, ln in enumerate(lines)
                  if ln.startswith("#") and heading(ln.lstrip("#").strip())), None)
    if start is None:
        return None
    body: list[str] = []
    for ln in lines[start + 1:]:
        if ln.startswith("#"):  # the section's own text, up to the next heading
            break
        body.append(_plain(ln))
    table = [ln for ln in body if ln.strip().startswith("|")]
    header: list[str] = []
    rows: list[list[str]] = []
    if len(table) >= 2:
        header = _cells(table[0])
        rows = [_cells(ln) for ln in table[2:]
                if not re.fullmatch(r"[\s|:-]*", ln)]
    text = " ".join(ln.strip() for ln in body if ln.strip() and not ln.strip().startswith("|"))
    return {"doc": f"docs/{doc}", "section": _plain(lines[start].lstrip("#").strip()),
            "header": header, "rows": rows, "text": "" if rows else text}


def docs_assumptions(spec: str, *, streaming: bool, compare: bool) -> list[dict[str, Any]]:
    """The assumption tables that apply to a report: the hardware spec's constants with
    their sources (docs/hardware.md), MemoryX/SwarmX parameters when weights stream
    (docs/weight-streaming.md), the GPU presets when GPUs are compared (docs/gpu.md)."""
    wanted: list[tuple[str, Callable[[str], bool]]] = [
        ("hardware.md", lambda h: h.lower().startswith("hardware specs")),
        ("hardware.md", lambda h: f"(`{spec}`" in h),
    ]
    if streaming:
        wanted.append(("weight-streaming.md", lambda h: h.startswith("Parameters")))
    if compare:
        wanted.append(("gpu.md", lambda h: h.startswith("Hardware")))
        wanted.append(("gpu.md", lambda h: h.startswith("Prices and power")))
    out = []
    for doc, pick in wanted:
        sec = doc_section(doc, pick)
        if sec is not None:
            out.append(sec)
    return out


# -- building a bundle ---------------------------------------------------------------------
def _no_step(_: str) -> AbstractContextManager[Any]:
    return nullcontext()


def empty_bundle(title: str, command: str | None = None) -> dict[str, Any]:
    import waferscale

    return {"format": FORMAT, "version": waferscale.__version__, "title": title,
            "command": command, "compile": None, "floorplan": None, "training": None,
            "compare": None, "scaling": None, "validation": None, "validation_summary": None,
            "gpu_validation": None, "stencil": None, "docs": [], "docs_note": None}


def add_docs(bundle: dict[str, Any]) -> dict[str, Any]:
    """Fill ``bundle["docs"]`` with the assumption tables that apply to what it holds."""
    comp = bundle.get("compile") or {}
    train = bundle.get("training") or {}
    spec = str(comp.get("spec") or train.get("spec") or (bundle.get("scaling") or {}).get("spec")
               or "wse2")
    streaming = "weight_streaming" in comp or bool(train) or bool(bundle.get("scaling"))
    bundle["docs"] = docs_assumptions(spec, streaming=streaming,
                                      compare=bool(bundle.get("compare")))
    bundle["docs_note"] = None if DOCS.is_dir() else \
        "docs/ is not beside this installation: the assumption tables are left out"
    return bundle


def build_bundle(model: str, *, seq: int = 2048, batch: int = 1, estimate: bool = False,
                 train: bool = False, forward: bool | None = None, dtype: str = "fp16",
                 spec: str = "wse2", compare: CompareOptions | None = None,
                 validation: str = "quick", layers: int | None = None,
                 command: str | None = None, step: Step | None = None) -> dict[str, Any]:
    """Run what ``waferscale report MODEL`` shows and gather the reports.

    ``forward`` (default: not ``train``): compile MODEL (`compile_report`, estimate or
    real weights) and keep its placement; ``train``: one training step in weight-streaming
    mode (`train_report`); ``compare``: wafer vs GPU cluster (`compare_report`, with the
    GPU model's own validation G1-G12); ``validation``: ``"quick"`` (closed-form cost of
    each case), ``"full"`` (fabric runs, about 10 s) or ``"none"``. ``step(text)`` wraps
    each long phase (the CLI shows a spinner); ``layers`` trims a preset (tests)."""
    if validation not in ("quick", "full", "none"):
        raise WaferscaleError(f"--validation {validation!r}: use quick, full or none")
    step = step or _no_step
    forward = not train if forward is None else forward
    bundle = empty_bundle(f"{model}: {'training step' if train else 'compiled'} on {spec}",
                          command)
    if forward:
        from waferscale.report.compile import compile_report

        with step(f"compiling {model} (seq {seq}, batch {batch}"
                  f"{', estimate' if estimate else ''})"):
            rep = compile_report(model, seq=seq, batch=batch, estimate=estimate, strict=False,
                                 spec=spec, layers=layers)
        bundle["compile"] = rep
        bundle["floorplan"] = floorplan_of(rep)
    if train:
        from waferscale.report.training import train_report

        with step(f"timing a training step of {model} (seq {seq}, batch {batch}, {dtype})"):
            bundle["training"] = train_report(model, seq=seq, batch=batch, dtype=dtype,
                                              spec=spec)
    if compare is not None:
        from waferscale.baselines.compare import compare_report
        from waferscale.baselines.gpu import validation_report

        with step(f"comparing with {compare.gpu} clusters (the wafer column times a training "
                  f"step)"):
            bundle["compare"] = compare_report(model, seq=seq, systems=list(compare.systems),
                                               gpu=compare.gpu, nodes=list(compare.nodes),
                                               stack=compare.stack, tokens=compare.tokens,
                                               spec=spec)
            bundle["gpu_validation"] = validation_report()
    if validation != "none":
        with step(f"validation cases ({validation})"):
            add_validation(bundle, validation == "quick")
    return add_docs(bundle)


def add_validation(bundle: dict[str, Any], quick: bool) -> None:
    """The validation cases (`waferscale validate`) and their summary, where the module
    has one."""
    from waferscale.report import validation as v

    bundle["validation"] = v.validation_cases(quick)
    if hasattr(v, "summary"):
        bundle["validation_summary"] = v.summary(bundle["validation"])


def demo_bundle(run: dict[str, Any], stencil: dict[str, Any],
                floorplan: dict[str, Any] | None, validation: str = "quick"
                ) -> dict[str, Any]:
    """The bundle of what ``waferscale demo`` ran: the GenSLM run on the fabric (its
    placement), the full-wafer stencil, and the validation table."""
    bundle = empty_bundle(f"waferscale demo: {run.get('model', 'model')} on "
                          f"{run.get('spec', 'wse2')}, and the SC22 stencil", "waferscale demo")
    bundle["compile"] = run
    bundle["floorplan"] = floorplan if floorplan is not None else run.get("floorplan")
    bundle["stencil"] = stencil
    if validation != "none":
        add_validation(bundle, validation == "quick")
    return add_docs(bundle)


# -- reading a saved result ------------------------------------------------------------------
def _kind(doc: Any) -> str | None:
    """Which command printed ``doc`` (None: not a waferscale result)."""
    if isinstance(doc, list):
        return "validation" if doc and all(isinstance(r, dict) and "published" in r
                                           for r in doc) else None
    if not isinstance(doc, dict):
        return None
    if doc.get("format") == FORMAT:
        return "bundle"
    if isinstance(doc.get("report"), dict) and doc["report"].get("format") == FORMAT:
        return "report-json"
    if "genslm" in doc and "stencil_full_wafer" in doc:
        return "demo"
    if isinstance(doc.get("cases"), list) and _kind(doc["cases"]) == "validation":
        return "validate-json"  # `waferscale validate --json`: cases and their summary
    if isinstance(doc.get("rows"), list) and "linearity" in doc:
        return "scaling"
    if "error" in doc and isinstance(doc["error"], dict):
        return "error"
    if "activation_policy" in doc and "forward" in doc and "backward" in doc:
        return "training"
    if isinstance(doc.get("stages"), list) and "mode" in doc:
        return "compile"
    if isinstance(doc.get("rows"), list) and "currency" in doc:
        return "compare"
    if isinstance(doc.get("rows"), list) and isinstance(doc.get("summary"), dict) \
            and "goal" in doc["summary"]:
        return "gpu_validation"
    if "published" in doc and "gcell_per_s" in doc:
        return "stencil"
    return None


def bundle_from_document(doc: Any, source: str = "the file") -> dict[str, Any]:
    """A bundle from a saved JSON document: a bundle (or ``waferscale report --json``'s
    output), or one command's ``--json`` result (compile, run, compile --train, compare,
    scaling, validate, gpu --validate, stencil, demo). Anything else is a
    `WaferscaleError`."""
    kind = _kind(doc)
    if kind is None:
        raise WaferscaleError(f"--from {source}: not a waferscale result (expected the --json "
                              f"output of report, compile, run, compare, scaling, validate, "
                              f"gpu --validate, stencil or demo)")
    if kind == "error":
        raise WaferscaleError(f"--from {source}: the file holds an error, not a result "
                              f"({str(doc['error'].get('message', ''))[:300]})")
    if kind in ("bundle", "report-json"):
        b = doc if kind == "bundle" else doc["report"]
        bundle = empty_bundle(str(b.get("title") or source), b.get("command"))
        bundle.update({k: v for k, v in b.items() if k in bundle})
        return bundle
    bundle = empty_bundle(f"{source}", None)
    if kind == "validate-json":
        bundle["validation"] = doc["cases"]
        bundle["validation_summary"] = doc.get("summary")
    elif kind == "demo":
        bundle["compile"] = doc["genslm"]
        bundle["floorplan"] = doc["genslm"].get("floorplan")
        bundle["stencil"] = doc["stencil_full_wafer"]
    elif kind == "compile":
        bundle["compile"] = doc
        bundle["floorplan"] = doc.get("floorplan")
    else:
        bundle[kind] = doc
    first = (bundle.get("compile") or bundle.get("training") or bundle.get("compare")
             or bundle.get("scaling") or {})
    if first.get("model"):
        bundle["title"] = f"{first['model']} ({source})"
    return add_docs(bundle)


def read_document(path: str | Path) -> Any:
    """The JSON document in ``path``, or the data of a report page (``.html``)."""
    p = Path(path)
    if p.is_dir():
        raise WaferscaleError(f"--from {path}: is a directory (give the JSON file that a "
                              f"command wrote with --json)")
    if not p.is_file():
        raise WaferscaleError(f"--from {path}: no such file (write one with e.g. `waferscale "
                              f"compile MODEL --json > result.json`)")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".html", ".htm"):  # a page this command wrote carries its data
            from waferscale.report.html import embedded_data

            doc = embedded_data(text)
            if doc is None:
                raise WaferscaleError(f"--from {path}: an HTML file without waferscale data "
                                      f"(give a page that `waferscale report` wrote, or JSON)")
            return doc
        return json.loads(text)
    except UnicodeDecodeError:
        raise WaferscaleError(f"--from {path}: not a text file (expected JSON)") from None
    except json.JSONDecodeError as exc:
        raise WaferscaleError(f"--from {path}: not valid JSON ({exc.msg} at line {exc.lineno}, "
                              f"column {exc.colno})") from None


__all__ = ["FORMAT", "CompareOptions", "add_docs", "add_validation", "build_bundle",
           "bundle_from_document", "demo_bundle", "doc_section", "docs_assumptions",
           "empty_bundle", "floorplan_of", "read_document"]
