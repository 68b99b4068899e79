"""Wavelet-level cycle simulator for small fabrics (up to ~64 x 64 PEs).

The reference for the fast model in `waferscale.fabric`: routers with per-colour queues and
round-robin links, ramps with the spec's latency, compute engines running SPMD task programs
over memory and fabric DSDs. `agreement` compares the two.
"""

from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.config import CycleConfig
from waferscale.fabric.cycle.isa import (
    Activate,
    AddReg,
    Arg,
    Block,
    Cond,
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
    sub,
)
from waferscale.fabric.cycle.sim import CycleSim, RunResult
from waferscale.fabric.cycle.trace import Event, Trace

__all__ = [
    "Activate", "AddReg", "Arg", "Block", "Cond", "CycleConfig", "CycleSim", "Event", "FabIn",
    "FabOut", "Mem", "Reg", "RunResult", "Scalar", "SetReg", "Trace", "Unblock", "add", "fmac",
    "isa", "mov", "mul", "sub",
]
