"""Run-time faults: detect, remap around the dead core, resume from the last checkpoint."""

import numpy as np
import pytest

from waferscale.errors import DefectError, SparesExhaustedError
from waferscale.fabric import Fabric
from waferscale.hardware import DefectMap, custom_spec
from waferscale.kernels import stencil
from waferscale.runtime import Fault, run_with_faults
from waferscale.runtime.faults import draw_fault

SPEC = custom_spec(rows=32, cols=32)        # 1 spare per row
SHAPE = (12, 12, 8)
RNG = np.random.default_rng(0)
U0, UP = (RNG.standard_normal(SHAPE).astype(np.float32) for _ in range(2))
VEL = (0.01 * RNG.random(SHAPE)).astype(np.float32)


def test_fault_recovers_bit_identical_values():
    u, rep = run_with_faults(SPEC, U0, UP, VEL, 7, 3, Fault(5, 5, 4))
    plain = stencil.run(Fabric(SPEC, 12, 12), U0, UP, VEL, 7)
    assert np.array_equal(u, plain.u)
    assert rep["max_error"] == 0.0
    f = rep["fault"]
    assert f["pe"] == [5, 5] and f["step"] == 4 and f["checkpoint_step"] == 3
    assert f["steps_recomputed"] == 2                    # steps 3 and 4 are redone
    assert f["cycles_kept"] > 0 and f["cycles_lost"] > 0
    assert rep["checkpoints"] == [0, 3, 6, 7]
    assert rep["defects_before"] == 0 and rep["defects_after"] == 1
    assert rep["detour_links_after"] == 1 and rep["detour_extra_cycles"] > 0
    assert rep["cycles"] == pytest.approx(rep["cycles_fault_free"] + rep["cycles_lost"]
                                          + rep["detour_extra_cycles"])


def test_fault_on_checkpoint_step_loses_one_step():
    _, rep = run_with_faults(SPEC, U0, UP, VEL, 6, 2, Fault(2, 3, 4))
    assert rep["fault"]["checkpoint_step"] == 4 and rep["fault"]["steps_recomputed"] == 1
    assert rep["max_error"] == 0.0


def test_no_fault_matches_segmented_baseline():
    u, rep = run_with_faults(SPEC, U0, UP, VEL, 4, 2)
    assert rep["fault"] is None and rep["cycles"] == rep["cycles_fault_free"]
    assert np.array_equal(u, stencil.run(Fabric(SPEC, 12, 12), U0, UP, VEL, 4).u)


def test_drawn_fault_is_reproducible():
    a = run_with_faults(SPEC, U0, UP, VEL, 5, 2, seed=3)[1]
    b = run_with_faults(SPEC, U0, UP, VEL, 5, 2, seed=3)[1]
    assert a["fault"] == b["fault"] and a["max_error"] == 0.0
    assert a["fault"]["pe"] == [draw_fault(SHAPE, 5, 3).row, draw_fault(SHAPE, 5, 3).col]


def test_two_faults_and_existing_defects():
    dmap = DefectMap.from_coords(SPEC, [(9, 2)])
    u, rep = run_with_faults(SPEC, U0, UP, VEL, 6, 2, [Fault(1, 1, 1), Fault(7, 10, 5)],
                             defect_map=dmap)
    assert len(rep["faults"]) == 2 and rep["defects_after"] == 3
    assert rep["steps_recomputed"] == 2 + 2 and rep["max_error"] == 0.0


def test_second_fault_in_a_row_exhausts_spares():
    with pytest.raises(SparesExhaustedError):
        run_with_faults(SPEC, U0, UP, VEL, 4, 2, [Fault(5, 5, 1), Fault(5, 8, 2)])


@pytest.mark.parametrize("fault", [Fault(12, 0, 0), Fault(0, -1, 0), Fault(0, 0, 4)])
def test_bad_fault_is_rejected(fault):
    with pytest.raises(DefectError, match="fault field"):
        run_with_faults(SPEC, U0, UP, VEL, 4, 2, fault)


def test_simultaneous_faults_recover_in_one_recomputation():
    """Was: three faults in one step were recovered one after another (9 steps recomputed
    instead of 3); they are detected together, so one remap and one recomputation."""
    faults = [Fault(1, 1, 4), Fault(4, 7, 4), Fault(9, 3, 4)]
    u, rep = run_with_faults(SPEC, U0, UP, VEL, 7, 2, faults)
    assert rep["steps_recomputed"] == 1 and len(rep["recoveries"]) == 1
    assert rep["recoveries"][0]["faults"] == 3 and rep["recoveries"][0]["cores_failed"] == 3
    assert {f["recovery"] for f in rep["faults"]} == {0} and rep["defects_after"] == 3
    assert rep["cycles_lost"] == rep["recoveries"][0]["cycles_lost"]
    assert rep["max_error"] == 0.0
    assert np.array_equal(u, stencil.run(Fabric(SPEC, 12, 12), U0, UP, VEL, 7).u)
    assert rep["cycles"] == pytest.approx(rep["cycles_fault_free"] + rep["cycles_lost"]
                                          + rep["detour_extra_cycles"])


def test_repeated_fault_on_a_pe_takes_one_spare():
    """Was: the same PE reported twice consumed a second spare (the second report read
    the spare the first had moved the PE to). With one spare per row, two reports of PE
    (5, 5) at step 1 used to exhaust row 5; now they are one failed core."""
    u, rep = run_with_faults(SPEC, U0, UP, VEL, 4, 2, [Fault(5, 5, 1), Fault(5, 5, 1)])
    assert rep["defects_after"] == 1 and rep["recoveries"][0]["cores_failed"] == 1
    assert [f["duplicate"] for f in rep["faults"]] == [False, True]
    assert rep["faults"][0]["physical"] == rep["faults"][1]["physical"]
    assert rep["steps_recomputed"] == 2 and rep["max_error"] == 0.0


def test_later_fault_on_a_remapped_pe_is_the_spare_failing():
    """A PE that fails again at a later step now sits on the spare: that core failed, so
    it takes another spare (row 5 has one: exhausted), unlike a duplicate report."""
    with pytest.raises(SparesExhaustedError):
        run_with_faults(SPEC, U0, UP, VEL, 4, 2, [Fault(5, 5, 1), Fault(5, 5, 3)])


def test_defect_map_with_failed_counts_new_cores_only():
    dmap = DefectMap.from_coords(SPEC, [(9, 2)])
    out, new = dmap.with_failed([(9, 2), (3, 4), (3, 4)])
    assert new == 1 and out.n_defects == 2 and dmap.n_defects == 1
