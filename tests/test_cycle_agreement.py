"""Agreement table: the fast model against the cycle simulator (the reference)."""

import pytest

from waferscale.fabric.cycle.agreement import (
    PRIMITIVES,
    agreement_row,
    agreement_rows,
    default_spec,
    format_table,
    implied_formulas,
)

SPEC = default_spec()
KEYS = {"primitive", "grid", "wavelets", "fast_cycles", "cycle_cycles", "error"}


def test_rows_have_the_published_columns():
    rows = agreement_rows(quick=True, primitives=("shift", "chain reduce"), grids=(4,),
                          sizes=(1, 16))
    assert len(rows) == 4
    for row in rows:
        assert KEYS <= set(row)
        assert row["error"] == pytest.approx(
            (row["fast_cycles"] - row["cycle_cycles"]) / row["cycle_cycles"])
    assert "over 5%" in format_table(rows) or all(r["within_tolerance"] for r in rows)


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_both_fidelities_compute_the_same_values(primitive):
    row = agreement_row(SPEC, primitive, 8, 16)
    assert row["values_match_numpy"] and row["values_match_fast"]


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_long_messages_agree_within_five_percent(primitive):
    # latency terms differ by at most a few cycles; bandwidth terms must match exactly
    row = agreement_row(SPEC, primitive, 8, 256)
    assert abs(row["error"]) <= 0.05, row


def test_chain_reduce_agrees_exactly():
    for n, b in ((4, 1), (8, 64)):
        row = agreement_row(SPEC, "chain reduce", n, b)
        assert row["fast_cycles"] == row["cycle_cycles"]


def test_implied_formulas_cover_every_primitive():
    formulas = implied_formulas()
    for primitive in PRIMITIVES:
        assert primitive.split()[0] in " ".join(formulas) or primitive in formulas


@pytest.mark.parametrize("n,b", [(8, 1), (8, 16), (16, 4), (32, 16), (32, 256)])
def test_ktree_reduce_matches_the_closed_form_exactly(n, b):
    """The K-tree on wavelets (pass-through routers at its upper level, leaders that take
    one side, then the other) against `ktree_reduce_cycles` and the fast fabric run."""
    from waferscale.fabric.cycle.runs import run_ktree_reduce
    from waferscale.fabric.timing import ktree_reduce_cycles

    run = run_ktree_reduce(SPEC, 1, n, b)
    assert run.ok()
    closed, root = ktree_reduce_cycles(SPEC, b, n)
    assert run.mask[0, root] and closed == run.cycles
    row = agreement_row(SPEC, "ktree reduce", n, b)
    assert row["fast_cycles"] == run.cycles


def test_packed_fp16_shift_moves_two_values_per_wavelet():
    row16 = agreement_row(SPEC, "shift fp16", 8, 32)
    row32 = agreement_row(SPEC, "shift", 8, 32)
    assert row16["values_match_numpy"] and row16["values_match_fast"]
    # 64 fp16 values per PE take exactly as long as 32 fp32 values
    assert row16["fast_cycles"] == row32["fast_cycles"] == row16["cycle_cycles"]
