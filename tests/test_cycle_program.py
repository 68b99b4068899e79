"""Cycle simulator, compute side: tasks, DSD ops, SIMD widths, async overlap, registers."""

import numpy as np
import pytest

from waferscale.fabric.cycle import (
    Activate,
    AddReg,
    Arg,
    Block,
    Cond,
    CycleSim,
    FabIn,
    FabOut,
    Mem,
    Reg,
    Scalar,
    SetReg,
    Unblock,
    add,
    fmac,
    mov,
    mul,
)
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=16, cols=16)


def one_pe(body, spec=SPEC, n=64, **arrays):
    sim = CycleSim(spec, 1, 1)
    for name, value in arrays.items():
        sim.alloc(name, n, init=value)
    sim.task("main", body, entry=True)
    return sim, sim.run()


@pytest.mark.parametrize("op, width_field", [("add", "fp32_add"), ("mul", "fp32_mul"),
                                             ("fmac", "fp32_fmac")])
def test_vector_ops_run_at_simd_width(op, width_field):
    n = 64
    a = np.arange(n, dtype=np.float32)
    b = np.full(n, 2.0, dtype=np.float32)
    instr = {"add": add(Mem("y"), Mem("a"), Mem("b"), n),
             "mul": mul(Mem("y"), Mem("a"), Mem("b"), n),
             "fmac": fmac(Mem("y"), Mem("a"), Mem("b"), Scalar(3.0), n)}[op]
    sim, res = one_pe([instr], a=a, b=b, y=0.0)
    expected = {"add": a + b, "mul": a * b, "fmac": a + b * 3.0}[op]
    np.testing.assert_array_equal(sim.read("y")[0, 0], expected)
    assert res.cycles == n // getattr(SPEC.simd, width_field)


def test_memory_ports_limit_a_wide_simd():
    n = 64
    wide = custom_spec(rows=1, cols=1, simd={"fp32_add": 8})
    # 2 read ports of 64-bit words feed 2 operands x 2 fp32: the port, not the ALU, limits
    _, res = one_pe([add(Mem("y"), Mem("a"), Mem("b"), n)], spec=wide, a=1.0, b=2.0, y=0.0)
    assert res.cycles == n // 2
    # one operand read, one 64-bit write port: still 2 per cycle
    _, res = one_pe([mov(Mem("y"), Mem("a"), n)], spec=wide, a=1.0, y=0.0)
    assert res.cycles == n // 2
    # with 32-bit words the same op is one element per cycle
    narrow = custom_spec(rows=1, cols=1, simd={"fp32_add": 8}, mem_word_bits=32)
    _, res = one_pe([mov(Mem("y"), Mem("a"), n)], spec=narrow, a=1.0, y=0.0)
    assert res.cycles == n


def test_async_ops_overlap_and_sync_ops_serialise():
    n = 50
    body_sync = [mul(Mem("y"), Mem("a"), Scalar(2.0), n), mul(Mem("z"), Mem("b"), Scalar(3.0), n)]
    _, sync = one_pe(body_sync, a=1.0, b=1.0, y=0.0, z=0.0)
    assert sync.cycles == 2 * n
    # a send from memory (1 read) overlaps a scale (1 read + 1 write): ports suffice
    sim = CycleSim(SPEC, 1, 2)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    for name in ("a", "y", "r"):
        sim.alloc(name, n, init=1.0)
    sim.task("main", [mov(FabOut(0), Mem("a"), n, async_=True),
                      mul(Mem("y"), Mem("a"), Scalar(2.0), n)], where=(0, 0), entry=True)
    sim.task("recv", [mov(Mem("r"), FabIn(0), n)], where=(0, 1), entry=True)
    res = sim.run(trace=True)
    ends = [e.cycle for e in res.trace.events if e.kind == "end" and e.pe == (0, 0)]
    assert max(ends) <= n + 1          # both ops on PE (0,0) done in about n cycles
    np.testing.assert_array_equal(sim.read("y")[0, 0], 2.0)


def test_data_task_runs_once_per_wavelet_with_its_value():
    n = 12
    sim = CycleSim(SPEC, 1, 2)
    sim.route(3, "R", "E", (0, 0))
    sim.route(3, "W", "R", (0, 1))
    sim.alloc("x", n, init=np.arange(n) + 1.0)
    sim.alloc("acc", n)
    sim.reg("i", 0)
    sim.task("send", [mov(FabOut(3), Mem("x"), n)], where=(0, 0), entry=True)
    sim.task("on_wavelet", [mul(Mem("acc", offset=Reg("i")), Arg(), Scalar(10.0), 1),
                            AddReg(reg="i", value=1)], bind=3, where=(0, 1))
    sim.run()
    np.testing.assert_array_equal(sim.read("acc")[0, 1], 10.0 * (np.arange(n) + 1))
    assert sim.register("i")[0, 1] == n


def test_block_holds_wavelets_until_unblocked():
    n = 6
    sim = CycleSim(SPEC, 1, 2)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    sim.alloc("x", n, init=np.arange(n))
    sim.alloc("y", n)
    sim.alloc("w", 100)
    sim.reg("i", 0)
    sim.task("send", [mov(FabOut(0), Mem("x"), n)], where=(0, 0), entry=True)
    sim.task("take", [mov(Mem("y", offset=Reg("i")), Arg(), 1), AddReg(reg="i", value=1)],
             bind=0, where=(0, 1), blocked=True)
    sim.task("later", [mul(Mem("w"), Mem("w"), Scalar(1.0), 100), Unblock(task="take")],
             where=(0, 1), entry=True)
    res = sim.run(trace=True)
    np.testing.assert_array_equal(sim.read("y")[0, 1], np.arange(n))
    starts = [e.cycle for e in res.trace.events if e.kind == "task" and e.detail == "take"]
    assert min(starts) > 100 and len(starts) == n


def test_local_activation_conditions_and_registers():
    sim = CycleSim(SPEC, 2, 2)
    r, c = sim.coords
    sim.alloc("y", 4)
    sim.reg("k", 0)
    sim.reg("limit", np.array([[1, 2], [3, 4]]))
    sim.task("loop", [AddReg(reg="k", value=1),
                      Activate(task="loop", when=Cond("k", "<", Reg("limit"))),
                      Activate(task="done", when=Cond("k", "==", Reg("limit")))], entry=True)
    sim.task("done", [mov(Mem("y"), Scalar(np.float32(7.0)), 4)])
    sim.run()
    np.testing.assert_array_equal(sim.register("k"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(sim.read("y"), 7.0)


def test_masks_give_pes_different_code():
    sim = CycleSim(SPEC, 2, 3)
    r, c = sim.coords
    sim.alloc("y", 2)
    sim.task("main", [mov(Mem("y"), Scalar(1.0), 2, mask=c == 0),
                      mov(Mem("y"), Scalar(c.astype(np.float32) * 10), 2, mask=c > 0),
                      SetReg(reg="k", value=r * 100 + c)], entry=True)
    sim.reg("k", -1)
    res = sim.run()
    np.testing.assert_array_equal(sim.read("y")[:, :, 0], [[1, 10, 20], [1, 10, 20]])
    np.testing.assert_array_equal(sim.register("k"), [[0, 1, 2], [100, 101, 102]])
    assert res.cycles == 2          # one op (1 cycle for 2 fp32 adds-width) + SetReg


def test_block_keeps_an_activated_task_waiting():
    sim = CycleSim(SPEC, 1, 1)
    sim.alloc("y", 10)
    sim.task("a", [Block(task="b"), Activate(task="b"), mul(Mem("y"), Mem("y"), Scalar(1.0), 10),
                   Unblock(task="b")], entry=True)
    sim.task("b", [mov(Mem("y"), Scalar(5.0), 1)])
    res = sim.run(trace=True)
    b_start = [e.cycle for e in res.trace.events if e.kind == "task" and e.detail == "b"]
    assert b_start == [13]
    assert sim.read("y")[0, 0, 0] == 5.0


def test_per_pe_summary_adds_up():
    sim = CycleSim(SPEC, 1, 2)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    sim.alloc("x", 8, init=1.0)
    sim.task("s", [mov(FabOut(0), Mem("x"), 8)], where=(0, 0), entry=True)
    sim.task("r", [mov(Mem("x"), FabIn(0), 8)], where=(0, 1), entry=True)
    res = sim.run()
    total = sum(res.stats[k] for k in ("busy", "fabric_stall", "memory_stall", "idle"))
    np.testing.assert_array_equal(total, res.cycles)
    assert res.stats["busy"][0, 0] == 8
    assert res.stats["fabric_stall"][0, 1] == 1 + 2 * SPEC.ramp_cycles + 1 - 1
    assert "busy" in res.summary()
