"""`waferscale validate`: the published cases, their keys and the agreement bands."""

import math

import pytest

from waferscale.report import validation as v

KEYS = {"name", "ours", "published", "error", "unit", "note"}


@pytest.fixture(scope="module")
def quick_cases():
    return v.validation_cases(quick=True)


def test_every_case_has_the_keys_the_cli_prints(quick_cases):
    assert len(quick_cases) >= 7
    for case in quick_cases:
        assert KEYS <= set(case)
        assert isinstance(case["name"], str) and case["note"]
        for key in ("ours", "published", "error"):
            assert isinstance(case[key], float) and math.isfinite(case[key])


def test_gemv_within_thirty_percent_of_waferllm(quick_cases):
    gemv = [c for c in quick_cases if c["name"].startswith("GEMV")]
    assert [c["published"] for c in gemv] == [1.2, 2.03]
    for case in gemv:
        assert case["unit"] == "us" and abs(case["error"]) <= 0.30 and case["passed"]
        assert "1.1 GHz" in case["note"] and "PEs" in case["note"]   # clock and grid stated


def test_gemm_claims(quick_cases):
    """All of WaferLLM's GEMM claims hold. MeshGEMM's "over 70 %" at 720^2 holds only
    because blocks are forwarded as they arrive (double buffered: 0.64, since a 3x3x3
    step's delivery outlasts its compute; docs/validation.md)."""
    gemm = [c for c in quick_cases if c["name"].startswith("GEMM")]
    assert len(gemm) == 5
    for case in gemm:
        assert case["relation"] in (">", "<")
        assert case["passed"] and case["error"] == 0.0
    mesh = next(c for c in gemm if "MeshGEMM" in c["name"])
    assert 0.70 < mesh["ours"] < 0.86          # 0.85: every step compute-bound (padding)
    assert "double buffered it would be 0.64" in mesh["note"]


def test_andromeda_peak_from_the_spec(quick_cases):
    case = next(c for c in quick_cases if c["name"].startswith("Andromeda"))
    assert case["unit"] == "PFLOP/s" and case["published"] == 120.0
    assert case["passed"] and abs(case["error"]) < 0.01


def test_summary_is_within_the_issue_goal(quick_cases):
    s = v.summary(quick_cases)
    assert s["cases"] == len(quick_cases)
    assert s["median_abs_error"] <= s["goal"]["median_abs_error"]
    assert s["max_abs_error"] <= s["goal"]["max_abs_error"]
    stencil = next(c for c in quick_cases if "stencil" in c["name"])
    assert abs(stencil["error"]) < 0.20      # -16.5 %: the 15 % band is not met yet
    assert s["failed"] == [stencil["name"]]


def test_bound_error_is_the_signed_shortfall():
    case = v._bound_case("x", 0.56, 0.70, ">", "fraction", "n")
    assert not case["passed"] and case["error"] == pytest.approx(-0.2)
    case = v._bound_case("x", 0.6, 0.5, "<", "fraction", "n")
    assert not case["passed"] and case["error"] == pytest.approx(0.2)


def test_fabric_runs_agree_with_the_closed_form():
    full = v.gemv_cases(quick=False)
    quick = v.gemv_cases(quick=True)
    for a, b in zip(full, quick, strict=True):
        assert a["ours"] == pytest.approx(b["ours"], rel=0.01)
        assert "timing-only fabric run" in a["note"]


def test_stencil_case_is_included_when_the_kernel_has_one(quick_cases):
    try:
        from waferscale.kernels.stencil import validation_case  # noqa: F401
    except ImportError:
        pytest.skip("no stencil validation case")
    assert any("stencil" in c["name"].lower() for c in quick_cases)
