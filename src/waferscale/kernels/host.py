"""The host fallback: an op with no wafer kernel runs in PyTorch on the host.

It has no rectangle; its time is the system I/O its inputs and outputs cross
(``io_bytes`` over `WaferSpec.io_bits_per_s`). Integer ops that read only the model's
inputs (labels shifted and masked: ``meta['input_only']``) run in the host's input
pipeline before the batch is sent, so only their results cross the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from waferscale.errors import KernelShapeError
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Node
from waferscale.kernels.family import (
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
)


@dataclass(frozen=True)
class HostParams(StageParams):
    """The op run on the host and the bytes that cross the system I/O for it."""

    io_bytes: int
    op: str

    def __post_init__(self) -> None:
        if self.io_bytes < 0:
            raise KernelShapeError(f"host op {self.op}: io_bytes {self.io_bytes} < 0")


def run_on_host(ctx: ExecContext, st: Stage, node: Node) -> StageRun:
    """The op in PyTorch with its deterministic algorithms; the stage is charged its planned
    I/O time.

    Why deterministic: a training graph's embedding backward falls back to ``index_put``
    with ``accumulate=True``, which by default adds the rows of repeated ids in whatever
    order PyTorch's threads reach them; on a busy machine the wafer's losses then differed
    in the last bit from run to run. The deterministic kernel adds them in one order (the
    one a quiet machine's runs gave: the losses of 8 GenSLM-25M steps are the same bits).
    Ops without a deterministic kernel run as before (``warn_only``)."""
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        ctx.env[node.name] = ctx.host(node)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    return StageRun(st.cost_cycles, 0, 0.0)


class Host(KernelFamily):
    """Every op no kernel family lowers (module docstring)."""

    kind = "fallback"
    on_wafer = False

    def claims(self, node: Node) -> bool:
        return False  # what nothing else lowers falls here; it claims nothing itself

    def describe(self, g: Graph, nodes: list[Node], dtype: str) -> tuple[HostParams, float]:
        io = 0 if all(n.meta.get("input_only") for n in nodes) else sum(
            g.nodes[i].meta.get("out_bytes", 0) for n in nodes
            for i in n.inputs if g.nodes[i].op != "const")
        io += sum(n.meta.get("out_bytes", 0) for n in nodes)
        return HostParams(int(io), nodes[0].target), 0.0

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[HostParams, Sizing]:
        p: HostParams = st.params  # type: ignore[assignment]
        return p, Sizing((0, 0), p.io_bytes * 8 / spec.io_bits_per_s * spec.clock_hz, 0,
                         "host (PyTorch), over system I/O")

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun | None:
        if node.short == "getitem":   # an element of a host op's tuple: no time of its own
            ctx.env[node.name] = ctx.host(node)
            return None
        return run_on_host(ctx, st, node)


FAMILY = Host()

__all__ = ["FAMILY", "HostParams", "run_on_host"]
