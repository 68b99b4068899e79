"""The HTML report (`waferscale report`), opened in a real browser.

The pages are built from real reports (a pipelined compile with its routed placement, a
comparison with GPU clusters and the validation table; a weight-streaming compile; a
training step) and opened in headless Chromium through Playwright, driving Debian's
``chromium`` package (never a browser that Playwright downloads). The tests check that a
page loads with no console error and without asking the network for anything, that the
floorplan and the charts render with the right numbers of elements, that hovering a kernel
shows its tooltip, that the per-stage table sorts, and that a screenshot is not blank.

``.ci/run`` installs chromium when it is missing (as root, with apt). The browser tests
skip only where chromium is missing and no package manager could install it; where one
could, they fail and say how to install it.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from waferscale import cli
from waferscale.report import html_data
from waferscale.report.html import embedded_data, render_page, write_report

#: Chromium's flags on a closed network, as root, in a container (shared/reference).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
PACKAGE_MANAGERS = ("apt-get", "dnf", "yum", "apk", "zypper", "pacman")

TINY_PY = '''
import torch


class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(32, 64)
        self.b = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def f():
    return M().eval(), (torch.randn(8, 32),)
'''


# -- the pages ----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_training_step() -> Iterator[None]:
    """The comparison's wafer column and the training page time the same step (GenSLM-25M
    at 128 tokens): time it once in this module (`train_report` is a pure function)."""
    import functools

    from waferscale.report import training as tr

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr, "train_report", functools.cache(tr.train_report))
        yield


@pytest.fixture(scope="module")
def pipelined() -> dict[str, Any]:
    """GenSLM-25M (2 layers, 128 tokens) planned in pipelined mode, compared with 1 and 8
    GPU nodes (the wafer column times a training step), with the validation table."""
    return html_data.build_bundle(
        "genslm-25m", seq=128, batch=1, estimate=True, layers=2, validation="quick",
        compare=html_data.CompareOptions(systems=[1, 2, 4], nodes=[1, 8]),
        command="waferscale report genslm-25m --seq 128 --estimate --compare")


@pytest.fixture(scope="module")
def streaming() -> dict[str, Any]:
    """GenSLM-25B (all 64 layers, 512 tokens): does not fit, so weight streaming. (One
    layer now fits pipelined: its GEMMs split K over groups, spreading the weights.)"""
    return html_data.build_bundle("genslm-25b", seq=512, batch=1, estimate=True,
                                  validation="none")


@pytest.fixture(scope="module")
def training() -> dict[str, Any]:
    """One training step of GenSLM-25M at 128 tokens (forward and backward graphs)."""
    return html_data.build_bundle("genslm-25m", seq=128, batch=1, train=True,
                                  validation="none")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, pipelined: dict[str, Any],
          streaming: dict[str, Any], training: dict[str, Any]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_html")
    return {name: write_report(b, root / f"{name}.html")[0]
            for name, b in (("pipelined", pipelined), ("streaming", streaming),
                            ("training", training))}


# -- the browser ------------------------------------------------------------------------------
def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        managers = [m for m in PACKAGE_MANAGERS if shutil.which(m)]
        if not managers:
            pytest.skip("browser tests skipped: no chromium here and no package manager to "
                        "install it (on Debian/Ubuntu: apt-get install -y chromium; "
                        ".ci/run does this as root)")
        pytest.fail(f"chromium is missing but {managers[0]} could install it: run "
                    f"`apt-get update && apt-get install -y chromium` as root (.ci/run does "
                    f"this); never `playwright install`")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - the test extras install it
        pytest.fail("the Python package playwright is missing: pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A report page open in Chromium, with every console message, page error and request
    that left the file recorded."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

        def route(r: Any) -> None:
            if r.request.url.startswith("file:"):
                r.continue_()
            else:  # the page must not need the network
                self.requests.append(r.request.url)
                r.abort()
        self.page.route("**/*", route)
        self.page.goto(path.resolve().as_uri(), wait_until="load")
        self.page.wait_for_function(
            "() => Array.from(document.querySelectorAll('figure.chart'))"
            ".every(f => f.querySelector('.main-svg'))", timeout=20000)

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def count(self, selector: str) -> int:
        return int(self.js("s => document.querySelectorAll(s).length", selector))

    def charts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.js(
            "() => Array.from(document.querySelectorAll('figure.chart'))"
            ".map(f => [f.dataset.chart, f.dataset.count])")}

    def check_clean(self) -> None:
        bad = [m for m in self.console if m[0] in ("error", "warning")]
        assert not bad and not self.errors, (bad, self.errors)
        assert not self.requests, f"the page asked the network for {self.requests}"


@pytest.fixture(scope="module")
def pipelined_page(browser: Any, pages: dict[str, Path]) -> Iterator[Page]:
    """The pipelined page, opened once for the tests that read it."""
    p = Page(browser, pages["pipelined"])
    yield p
    p.page.close()


@pytest.fixture()
def open_page(browser: Any) -> Iterator[Any]:
    opened: list[Page] = []

    def _open(path: Path) -> Page:
        p = Page(browser, path)
        opened.append(p)
        return p
    yield _open
    for p in opened:
        p.page.close()


def not_blank(png: bytes, *, min_colours: int = 40, min_ink: float = 0.15) -> dict[str, float]:
    """Figures of a screenshot that tell a drawing from an empty or one-colour one."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    px = np.asarray(img.resize((img.width // 2, img.height // 2)), dtype=np.int32)
    flat = px.reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    bg = values[np.argmax(counts)]  # the commonest colour: the background
    ink = int((np.abs(flat - bg).sum(axis=1) > 30).sum())
    colours = len(values)
    stats = {"colours": colours, "ink": ink / len(flat), "width": img.width,
             "height": img.height}
    assert colours >= min_colours and ink / len(flat) >= min_ink, stats
    return stats


# -- without a browser ------------------------------------------------------------------------
def test_floorplan_is_the_compiles_own(pipelined: dict[str, Any]) -> None:
    """The page draws the placement of the very compile whose stages it lists."""
    comp, fp = pipelined["compile"], pipelined["floorplan"]
    assert comp["mode"].startswith("pipelined") and fp is not None
    placed = {s["stage"]: s["rect"] for s in comp["stages"] if "@" in s["rect"]}
    assert placed and set(placed) == set(fp["blocks"])
    for name, (r, c, h, w) in fp["blocks"].items():
        assert placed[name] == f"{h}x{w}@({r},{c})"
    assert fp["routes"], "routed nets: the link-load map needs them"
    from waferscale.report.html_figures import link_loads
    assert link_loads(fp).max() == pytest.approx(comp["peak_link_load"])


def test_page_is_self_contained(pipelined: dict[str, Any]) -> None:
    page, present = render_page(pipelined)
    assert present == ["summary", "wafer", "stages", "timeline", "compare", "validation",
                       "assumptions"]
    from plotly.offline import get_plotlyjs

    lib = get_plotlyjs()
    assert page.count(lib) == 1  # plotly.js inlined, once
    rest = page.replace(lib, "")
    assert "<script src" not in rest and "<link" not in rest and "http" not in rest.replace(
        "http-equiv", "")
    assert rest.count("Plotly.newPlot(") == 5
    back = embedded_data(page)
    assert back["format"] == html_data.FORMAT
    assert back["compile"]["stages"] == json.loads(json.dumps(pipelined["compile"]["stages"]))
    # the saved data renders the same page
    assert render_page(html_data.bundle_from_document(back))[1] == present


def test_text_is_escaped(pipelined: dict[str, Any]) -> None:
    b = json.loads(json.dumps(pipelined))
    b["compile"]["notes"] = ['</script><script>alert("x")</script>']
    b["compile"]["stages"][0]["stage"] = "<b>x</b></script>"
    b["title"] = "<img src=x onerror=alert(1)>"
    page, _ = render_page(b)
    from plotly.offline import get_plotlyjs

    rest = page.replace(get_plotlyjs(), "")
    assert "<script>alert" not in rest and "<img src=x" not in rest
    assert rest.count("</script>") == rest.count("<script")


# -- in the browser ---------------------------------------------------------------------------
def test_pipelined_page_renders(pipelined_page: Page, pipelined: dict[str, Any]) -> None:
    p = pipelined_page
    p.check_clean()
    stages = pipelined["compile"]["stages"]
    placed = [s for s in stages if "@" in s["rect"]]
    assert p.charts() == {"floorplan": len(placed), "linkload": len(placed),
                          "pipeline": len([s for s in stages if s["stage_cycles"] > 0]),
                          "scaling": 5,
                          "validation": p.charts()["validation"]}
    # floorplan: one filled rectangle per placed kernel
    assert p.count("#chart-floorplan .scatterlayer .js-fill") == len(placed)
    # link load: the heat map image and one outline per kernel
    assert p.count("#chart-linkload .heatmaplayer image") == 1
    assert p.count("#chart-linkload .layer-above .shapelayer path") == len(placed)
    # pipeline: one bar per stage and sample
    assert p.count("#chart-pipeline .barlayer .point") == 3 * p.charts()["pipeline"]
    # scaling: the wafer at 1, 2, 4 systems and the GPU cluster at 1, 8 nodes
    assert p.count("#chart-scaling .scatterlayer .point") == 5
    n_val = p.charts()["validation"]
    assert n_val >= 10 and p.count("#chart-validation .barlayer .point") == n_val
    # tables: every stage, every comparison row, every validation case
    assert p.js("() => document.querySelectorAll('#stage-table tbody tr').length") == \
        len(stages)
    assert p.count("#compare-table tbody tr") == 5
    assert p.count("#validation-table tbody tr") == len(pipelined["validation"])
    assert p.count("#gpu-validation-table tbody tr") == len(pipelined["gpu_validation"]["rows"])
    assert p.count("#assumptions table") >= 2
    p.check_clean()


def test_hover_shows_the_kernel(pipelined_page: Page, pipelined: dict[str, Any]) -> None:
    """Hovering each kernel's rectangle shows that kernel's tooltip."""
    p = pipelined_page
    blocks = pipelined["floorplan"]["blocks"]
    stages = {s["stage"]: s for s in pipelined["compile"]["stages"]}
    to_page = """([cx, cy]) => {
        const gd = document.getElementById('chart-floorplan');
        const L = gd._fullLayout, box = gd.getBoundingClientRect();
        return [box.left + L.xaxis._offset + L.xaxis.d2p(cx),
                box.top + L.yaxis._offset + L.yaxis.d2p(cy)];
    }"""
    shows = """name => {
        const h = document.querySelector('#chart-floorplan .hoverlayer');
        return h !== null && h.textContent.startsWith(name + 'kernel:');
    }"""
    p.page.locator("#chart-floorplan").scroll_into_view_if_needed()
    p.page.mouse.move(1, 1)
    assert p.count("#chart-floorplan .hoverlayer .hovertext") == 0
    for name, (r, c, h, w) in blocks.items():
        x, y = p.js(to_page, [c + w / 2, r + h / 2])  # the rectangle's centre in the page
        p.page.mouse.move(x, y)
        try:
            p.page.wait_for_function(shows, arg=name, timeout=5000)
        except Exception:
            got = p.js("() => (document.querySelector('#chart-floorplan .hoverlayer') || {})"
                       ".textContent")
            pytest.fail(f"hovering {name} at ({x:.0f}, {y:.0f}) showed {got!r}")
        text = p.js("() => document.querySelector('#chart-floorplan .hoverlayer').textContent")
        for piece in (f"kernel: {stages[name]['kind']}", f"rect: {h} x {w} PEs at ({r}, {c})",
                      f"cycles: {stages[name]['cycles']:,.0f}", "SRAM:", "utilisation:"):
            assert piece in text, (name, piece, text)
    p.check_clean()


def test_stage_table_sorts(pipelined_page: Page, pipelined: dict[str, Any]) -> None:
    p = pipelined_page
    stages = pipelined["compile"]["stages"]
    head = p.page.locator("#stage-table thead th", has_text="stage cycles")
    first = "() => document.querySelector('#stage-table tbody tr').cells[1].textContent"
    head.click()
    assert p.js(first) == min(stages, key=lambda s: s["stage_cycles"])["stage"]
    head.click()
    assert p.js(first) == max(stages, key=lambda s: s["stage_cycles"])["stage"]
    assert head.get_attribute("aria-sort") == "descending"
    p.check_clean()


def test_screenshot_is_not_blank(pipelined_page: Page, tmp_path: Path) -> None:
    p = pipelined_page
    wafer = p.page.locator("#wafer")
    png = wafer.screenshot(path=str(tmp_path / "wafer.png"))
    stats = not_blank(png)
    assert stats["width"] > 800 and stats["height"] > 500
    # a blank page of the same size is told apart
    with pytest.raises(AssertionError):
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (stats["width"], stats["height"]), "white").save(buf, "PNG")
        not_blank(buf.getvalue())


def test_streaming_page_renders(open_page: Any, pages: dict[str, Path],
                                streaming: dict[str, Any]) -> None:
    comp = streaming["compile"]
    assert "weight_streaming" in comp and streaming["floorplan"] is None
    p = open_page(pages["streaming"])
    p.check_clean()
    layers = comp["weight_streaming"]["layers"]
    assert p.charts() == {"streaming": len(layers)}
    assert "no floorplan" in p.js("() => document.querySelector('#wafer').textContent")
    # per layer: its span, and its compute / weights-in / gradients-out bars
    assert p.count("#chart-streaming .barlayer .point") == 4 * len(layers)
    assert p.count("#streaming-table tbody tr") == len(comp["weight_streaming"]["forward"]
                                                       ["stages"])
    assert "MemoryX" in p.js("() => document.querySelector('#assumptions').textContent")
    png = p.page.locator("#timeline").screenshot()
    not_blank(png, min_colours=20, min_ink=0.05)


def test_training_page_renders(open_page: Any, pages: dict[str, Path],
                               training: dict[str, Any]) -> None:
    t = training["training"]
    p = open_page(pages["training"])
    p.check_clean()
    assert p.charts() == {"streaming": len(t["layers"])}
    # one panel per graph: forward and backward
    assert p.count("#chart-streaming .cartesianlayer > .subplot") == 4
    assert p.count("#stage-table tbody tr") == len(t["forward"]["stages"]) + \
        len(t["backward"]["stages"])
    summary = p.js("() => document.querySelector('#summary').textContent")
    assert "time per step" in summary and t["activation_policy"] in summary


# -- the command -------------------------------------------------------------------------------
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_of_a_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                open_page: Any) -> None:
    (tmp_path / "tiny.py").write_text(TINY_PY)
    out = tmp_path / "tiny.html"
    rc, stdout, err = _run(["report", f"{tmp_path / 'tiny.py'}:f", "--seq", "8",
                            "--validation", "none", "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    doc = json.loads(stdout)  # exactly one JSON document
    assert doc["out"] == str(out) and out.stat().st_size == doc["bytes"]
    assert {"summary", "wafer", "stages", "timeline"} <= set(doc["sections"])
    b = doc["report"]
    assert b["compile"]["mode"].startswith("pipelined") and b["floorplan"]["blocks"]
    p = open_page(out)
    p.check_clean()
    assert p.charts()["floorplan"] == len(b["floorplan"]["blocks"])
    # --from the JSON it printed, and --from the page itself, give the same sections
    saved = tmp_path / "result.json"
    saved.write_text(stdout)
    for src in (saved, out):
        rc, stdout2, err = _run(["report", "--from", str(src), "--out",
                                 str(tmp_path / "again.html"), "--json"], capsys)
        assert rc == 0, err
        assert json.loads(stdout2)["sections"] == doc["sections"]


def test_report_from_a_compile_result(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      pipelined: dict[str, Any]) -> None:
    """A `compile --json` result has no routed placement: the floorplan comes from the
    stages' rectangles and the page says the link loads are missing."""
    comp = dict(pipelined["compile"])
    comp.pop("floorplan", None)
    src = tmp_path / "compile.json"
    src.write_text(json.dumps(comp))
    out = tmp_path / "c.html"
    rc, stdout, err = _run(["report", "--from", str(src), "--out", str(out)], capsys)
    assert rc == 0, err
    assert str(out) in stdout and "wrote" in stdout
    page = out.read_text()
    assert 'data-chart="floorplan"' in page and 'data-chart="linkload"' not in page
    assert "link loads are not in this result" in page


def test_report_from_validate_results(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`waferscale validate --json`, as a list of cases or as cases with their summary."""
    from waferscale.report.validation import validation_cases

    cases = validation_cases(True)
    for i, doc in enumerate((cases, {"cases": cases, "summary": {"median_abs_error": 0.1}})):
        src = tmp_path / f"v{i}.json"
        src.write_text(json.dumps(doc))
        rc, out, err = _run(["report", "--from", str(src), "--out", str(tmp_path / "v.html"),
                             "--json"], capsys)
        assert rc == 0, err
        doc_out = json.loads(out)
        assert doc_out["sections"] == ["validation", "assumptions"]
        assert doc_out["report"]["validation"] == cases


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give a MODEL"),
    (["genslm-25m", "--from", "{d}/x.json"], "not both"),
    (["genslm-25m", "--out", "{d}/r.png"], "end the name in .html"),
    (["genslm-25m", "--out", "{d}"], "is a directory"),
    (["genslm-25m", "--out", "{d}/nodir/r.html"], "does not exist"),
    (["--from", "{d}/missing.json"], "no such file"),
    (["--from", "{d}/bad.json"], "not valid JSON"),
    (["--from", "{d}/other.json"], "not a waferscale result"),
    (["--from", "{d}/error.json"], "holds an error"),
    (["--from", "{d}/page.html"], "without waferscale data"),
    (["--from", "{d}/x.json", "--seq", "64"], "only with a MODEL"),
    (["genslm-25m", "--validation", "some"], "--validation"),
    (["genslm-25m", "--dtype", "bf16"], "--dtype applies to --train"),
    (["genslm-25m", "--spec", "wse9"], "wse9"),
    (["genslm-25m", "--systems", "0"], "--systems"),
    (["genslm-25m", "--seq", "ten"], "--seq"),
    (["nosuchmodel"], "nosuchmodel"),
])
def test_user_mistakes(argv: list[str], message: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    (tmp_path / "error.json").write_text('{"error": {"message": "boom", "type": "X"}}')
    (tmp_path / "page.html").write_text("<html></html>")
    args = ["report", *[a.replace("{d}", str(tmp_path)) for a in argv]]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "r.html")]
    rc, out, err = _run(args, capsys)
    assert rc == 2, (args, out, err)
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    rc, out, err = _run([*args, "--json"], capsys)
    assert rc == 2 and json.loads(out)["error"]["exit_code"] == 2
    assert not (tmp_path / "r.html").exists()
