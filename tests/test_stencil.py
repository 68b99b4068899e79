"""The SC22 stencil: values against NumPy, cost() against the simulated cycles, scaling."""

import numpy as np
import pytest

from waferscale.errors import GridError, SramOverflowError
from waferscale.fabric import Fabric
from waferscale.hardware import custom_spec, get_spec
from waferscale.kernels import stencil as st
from waferscale.kernels import stencil_schedule as sched

RNG = np.random.default_rng(3)


def _fields(y, x, z):
    u0 = RNG.standard_normal((y, x, z)).astype(np.float32)
    return u0, RNG.standard_normal((y, x, z)).astype(np.float32), \
        np.full((y, x, z), 0.04, np.float32)


@pytest.mark.parametrize("shape,steps", [((9, 9, 9), 1), ((12, 10, 37), 3), ((16, 20, 700), 2)])
def test_values_match_numpy_and_cycles_match_cost(shape, steps):
    spec = custom_spec(rows=32, cols=32)
    y, x, z = shape
    fabric = Fabric(spec, y, x)
    u0, up, vel = _fields(*shape)
    result = st.run(fabric, u0, up, vel, steps)
    ref = st.reference(u0, up, vel, steps)
    np.testing.assert_allclose(result.u, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    # edge PEs finish early and pre-send, which hides up to one hop+ramp latency a step
    assert result.cycles == pytest.approx(st.cost(spec, x, y, z, steps), rel=1e-3)


def test_z_700_needs_two_chunks_and_fills_sram():
    spec = custom_spec(rows=32, cols=32)
    assert st.chunk_cells(spec, 700) < 700
    fabric = Fabric(spec, 10, 10, timing_only=True)
    st.run(fabric, None, None, None, 1, shape=(10, 10, 700))
    assert fabric.sram.peak() <= spec.sram_bytes


def test_timing_only_equals_full_run():
    spec = custom_spec(rows=32, cols=32)
    full = Fabric(spec, 11, 13)
    st.run(full, *_fields(11, 13, 50), 2)
    timed = Fabric(spec, 11, 13, timing_only=True)
    st.run(timed, None, None, None, 2, shape=(11, 13, 50))
    np.testing.assert_array_equal(full.ce_clock, timed.ce_clock)
    np.testing.assert_array_equal(full.port_wavelets, timed.port_wavelets)


def test_weak_scaling_is_flat():
    small = st.cost("wse2", 200, 200, 1000, 1000)
    large = st.cost("wse2", 755, 994, 1000, 1000)
    assert abs(large / small - 1) < 0.05


def test_simulated_per_step_is_grid_independent():
    spec = get_spec("wse2")
    cycles = []
    for x, y in ((20, 20), (60, 45)):
        fabric = Fabric(spec, y, x, timing_only=True)
        cycles.append(st.run(fabric, None, None, None, 2, shape=(y, x, 1000)).cycles)
    assert cycles[0] == cycles[1] == pytest.approx(st.cost(spec, 60, 45, 1000, 2), rel=1e-4)


def test_per_cell_counts_near_published():
    counts = st.cell_counts()
    assert counts["fabric_loads"] == st.PUBLISHED["fabric_loads"]
    assert abs(counts["flops"] / st.PUBLISHED["flops_executed"] - 1) < 0.1


def test_bad_grids():
    with pytest.raises(GridError, match="755x994"):
        st.cost("wse2", 800, 994, 10, 1)
    with pytest.raises(GridError, match="smaller than the stencil"):
        st.cost("wse2", 5, 50, 10, 1)
    with pytest.raises(SramOverflowError, match="z <="):
        st.chunk_cells(get_spec("wse2"), 4000)


# ---------------------------------------------------------------- the [R0] schedule -----
def test_schedule_counts_follow_the_sc22_code():
    """[R0]: 1 + nz // 401 chunks; 17 task activations per step with one chunk, 49 at
    nz = 1000; per cell 57 FLOPs, 112 SRAM accesses, 20 wavelets in and 4 out."""
    spec = get_spec("wse2")
    assert st.schedule(spec, 400).chunks == (400,)
    assert st.schedule(spec, 400).task_activations == 17
    full = st.schedule(spec, 1000)
    assert full.chunks == (334, 334, 332) and full.task_activations == 49
    counts = st.cell_counts()
    assert counts["flops"] == st.PUBLISHED["flops_executed"] == 57
    assert counts["memory_accesses"] == st.PUBLISHED["memory_accesses"] == 112
    assert (counts["wavelets_received"], counts["wavelets_sent"]) == (20, 4)


def test_shares_add_up_and_busy_is_the_issued_work():
    """busy + memory stall + fabric wait = the step; busy counts every instruction at its
    SIMD width plus tasks and DSD set-ups (SC22's 69.6 % of 64.7 cycles = 45.0 per cell)."""
    s = st.schedule("wse2", 1000)
    assert sum(s.shares.values()) == pytest.approx(1.0)
    assert s.busy_cycles / 1000 == pytest.approx(43.76, abs=0.01)
    assert s.memory_stall_cycles > 0 and s.fabric_wait_cycles > 0
    # the turns cost waiting: the step is longer than its work, shorter than SC22's
    assert s.busy_cycles + s.memory_stall_cycles < s.step_cycles < 64.7 * 1000


def test_turn_coupling_is_what_the_mechanisms_add():
    """Without one-issue-per-cycle the receive phase is ramp-bound (20 wavelets per cell,
    plus the hand-offs); with it, the phase outlasts its own work (24 per cell) because
    roots in several directions slow their neighbours' streams."""
    spec = get_spec("wse2")
    wide = st.schedule(spec, 1000, sched.Assumptions(single_issue=False))
    assert wide.phase_cycles[0] == pytest.approx(20 * 334 + 5 * wide.handoff_cycles)
    s = st.schedule(spec, 1000)
    assert s.phase_cycles[0] > s.phase_work[0] > 24 * 334
    mirrored = st.schedule(spec, 1000, sched.Assumptions(turn_alignment="mirrored"))
    assert mirrored.step_cycles < s.step_cycles


def test_bank_conflicts_are_the_memory_stall():
    spec = get_spec("wse2")
    free = st.schedule(spec, 1000, sched.Assumptions(bank_conflicts=False))
    assert free.memory_stall_cycles == 0
    # the 4-D FADD (3 streams of one 64-bit word per cycle in 8 banks): 3/8 per cycle
    assert sched.bank_stall(spec, 2000, "add", 2, 1) == pytest.approx(1000 * 3 / 8)


def test_simulated_shares_match_the_schedule():
    spec = custom_spec(rows=32, cols=32)
    fabric = Fabric(spec, 20, 20, timing_only=True)
    st.run(fabric, None, None, None, 2, shape=(20, 20, 600))
    stats = fabric.stats()
    want = st.schedule(spec, 600).shares
    assert stats["busy_fraction"] == pytest.approx(want["busy"], rel=1e-6)
    assert stats["memory_stall_fraction"] == pytest.approx(want["memory_stall"], rel=1e-6)


def _discrete_turns(b: int, queue: int, steps: int = 2, post: int = 19) -> float:
    """The receive phase wavelet by wavelet on the 5 x 5 torus: each cycle every CE issues
    one element of one ready thread, round robin (a receive with a queued wavelet, or the
    root's send when all 5 receivers of its turn have room in their ``queue``-deep queues);
    a turn ends when its root has sent b. Returns cycles per cell of a steady step (one
    chunk of b cells, then ``post`` cycles per cell of serial work)."""
    p = sched.RADIUS + 1
    members = [[(line * p + k) if d < 2 else (k * p + line) for k in range(p)]
               for d in range(4) for line in range(p)]
    free_at, marks, t = [0] * (p * p), [], 0
    rr = [0] * (p * p)
    for _ in range(steps):
        turn, sent = [0] * (4 * p), [0] * (4 * p)
        q = [[0] * 4 for _ in range(p * p)]
        got = [[0] * 4 for _ in range(p * p)]
        done = [None] * (p * p)
        while None in done:
            armed = [t >= f for f in free_at]
            for i in range(p * p):
                if not armed[i] or done[i] is not None:
                    continue
                ready = [("r", d) for d in range(4) if q[i][d]]
                for s, pes in enumerate(members):
                    if turn[s] < p and pes[turn[s]] == i and \
                            all(armed[j] and q[j][s // p] < queue for j in pes):
                        ready.append(("s", s))
                if not ready:
                    continue
                kind, x = ready[rr[i] % len(ready)]
                rr[i] += 1
                if kind == "r":
                    q[i][x] -= 1
                    got[i][x] += 1
                else:
                    for j in members[x]:
                        q[j][x // p] += 1
                    sent[x] += 1
                    if sent[x] == b:
                        turn[x], sent[x] = turn[x] + 1, 0
            t += 1
            for i in range(p * p):
                if done[i] is None and all(g == p * b for g in got[i]):
                    done[i] = t
        free_at = [d + post * b for d in done]
        marks.append(max(free_at))
    return (marks[-1] - marks[-2]) / b


def test_fluid_turns_agree_with_a_wavelet_level_version():
    """The torus solution (max-min fair rates) against round-robin issue with finite
    queues: the fluid model is a little slower, by no more than a cycle or two per cell."""
    b = 24
    _, period = sched._solve_torus((b,), 1.0, 1.0, 0.0, 0.0, (19.0 * b,), "aligned",
                                   sched.RADIUS)
    discrete = _discrete_turns(b, queue=6)
    assert 0 <= period / b - discrete < 0.05 * discrete
