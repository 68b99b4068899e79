"""Estimate mode: meta-device GenSLM, infeasibility of pipelined mode with numbers."""

from __future__ import annotations

import time

import pytest

from waferscale.report.compile import compile_report


@pytest.mark.parametrize("name", ["genslm-2.5b", "genslm-25b"])
def test_big_genslm_estimate_says_weight_streaming(name: str) -> None:
    t0 = time.perf_counter()
    r = compile_report(name, seq=2048, batch=1, estimate=True, strict=False)
    assert time.perf_counter() - t0 < 60
    assert r["mode"] == "weight_streaming"
    assert r["weight_bytes"] > r["wafer_sram_bytes"] or any("GB" in n for n in r["notes"])
    ws = r["weight_streaming"]
    assert r["samples_per_second"] == ws["samples_per_second"] > 0
    # every weight streams in once per forward: the stages' bytes add up to the weights
    assert sum(s["weight_bytes"] for s in ws["forward"]["stages"]) == r["weight_bytes"]
    assert ws["bound"] in ("compute", "weight I/O")
    assert not any("first-order" in n.lower() for n in r["notes"])


def test_small_genslm_estimate_is_pipelined() -> None:
    r = compile_report("genslm-25m", seq=128, batch=1, estimate=True, strict=True)
    assert r["mode"].startswith("pipelined") and r["fallback_ops"] == []
    assert r["tokens_per_second"] > 0
