"""torch.compile(backend="waferscale") on graphs it cannot run whole: graph breaks are said
(the op and the user's line), a graph that fails to compile or run runs in eager PyTorch
with a warning instead of crashing the user's program, and `backend.summary()` says what
ran where and why."""

from __future__ import annotations

import io
import json
import warnings

import pytest
import torch

import waferscale.api
from waferscale import backend


class _Breaks(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cumsum(self.l(x), -1)
        print("a graph break")  # noqa: T201 - dynamo cannot trace print
        return torch.softmax(y, -1) + x.nonzero().sum()


class _Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l(x))


def _line(text: str) -> int:
    import inspect
    src, first = inspect.getsourcelines(_Breaks.forward)
    return first + next(i for i, s in enumerate(src) if text in s)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    torch._dynamo.reset()
    backend.clear()
    backend._WARNED.clear()


def _run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list]:
    with warnings.catch_warnings(record=True) as rec, torch.no_grad():
        warnings.simplefilter("always")
        out = torch.compile(model, backend="waferscale")(x)
    return out, [w for w in rec if issubclass(w.category, backend.GraphBreakWarning)]


def test_graph_breaks_name_the_op_and_the_line(capsys) -> None:
    """Was: dynamo's graph breaks ran their code eagerly with nothing said."""
    m = _Breaks().eval()
    x = torch.randn(3, 4)
    out, said = _run(m, x)
    torch.testing.assert_close(out, m(x))
    texts = [str(w.message) for w in said]
    assert any("print" in t and f"test_backend_summary.py:{_line('print(')}" in t
               for t in texts)
    assert any("aten.nonzero.default" in t and f":{_line('nonzero')}" in t for t in texts)
    assert all(w.filename == __file__ for w in said)        # the user's line, not ours
    s = backend.summary()
    json.dumps(s, allow_nan=False)
    assert s["on_wafer"] >= 2 and not s["eager"]
    assert {b["site"].rsplit(":", 1)[1] for b in s["graph_breaks"]} == \
        {str(_line("print(")), str(_line("nonzero"))}
    assert s["host_ops"].get("aten.cumsum.default") == 1
    cumsum = next(f for g in s["graphs"] for f in g.get("host_ops", [])
                  if f["op"] == "aten.cumsum.default")
    assert "no wafer kernel" in cumsum["reason"] and "cumsum" in cumsum["sources"][0]
    buf = io.StringIO()
    backend.print_summary(buf)
    text = buf.getvalue()
    assert "graph break" in text and "wafer [gemm x1]" in text and "cumsum" in text


def test_a_graph_that_fails_to_compile_runs_eagerly(monkeypatch) -> None:
    """A failure inside the backend is a warning and an eager graph, not the user's
    crash; the summary says why."""
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("routing needs 19 colours but programs have 18")

    monkeypatch.setattr(waferscale.api, "lower_graph", broken)
    m = _Plain().eval()
    x = torch.randn(2, 4)
    out, said = _run(m, x)
    torch.testing.assert_close(out, m(x))
    assert len(said) == 1 and "19 colours" in str(said[0].message)
    assert said[0].filename == __file__
    s = backend.summary()
    assert s["on_wafer"] == 0 and "compile failed: RuntimeError" in s["eager"][0]["reason"]


def test_a_graph_whose_run_fails_runs_eagerly_from_then_on(monkeypatch) -> None:
    def broken(self: object, *args: object) -> None:
        raise ValueError("a kernel bug")

    monkeypatch.setattr(waferscale.api.CompiledModel, "__call__", broken)
    m = _Plain().eval()
    x = torch.randn(2, 4)
    out, said = _run(m, x)
    torch.testing.assert_close(out, m(x))
    assert len(said) == 1 and "failed on the wafer" in str(said[0].message)
    assert "run failed: ValueError: a kernel bug" in backend.summary()["eager"][0]["reason"]


def test_a_whole_graph_on_the_wafer_says_so() -> None:
    m = _Plain().eval()
    x = torch.randn(2, 4)
    out, said = _run(m, x)
    torch.testing.assert_close(out, m(x))
    assert said == []
    s = backend.summary()
    assert s["on_wafer"] == 1 and s["graphs"][0]["wafer_stages"] == {"gemm": 1} \
        and s["graph_breaks"] == [] and s["host_ops"] == {}
