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
