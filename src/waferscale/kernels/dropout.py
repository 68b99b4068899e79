"""Dropout with its mask drawn on the wafer: ``aten.native_dropout`` of a training graph.

A model in train mode hands the backend ``native_dropout(x, p, True)``, which returns the
scaled output and the boolean keep-mask the backward multiplies the gradient by. On the
wafer each PE draws the mask of the elements it holds, so nothing crosses the system I/O
(run on the host, the activation would go out and back, and the mask with it).

**Which mask.** Element ``i`` (row-major over the tensor) is kept when the ``i``-th
float32 of a counter-based generator (Philox4x32-10, NumPy's ``Philox``) keyed by the
call's seed is ``>= p``. A counter-based stream lets every PE start at the counter of its
own first element, so the mask does not depend on the rectangle, the tiling or the grid
the stage was placed on: a seed gives the same mask on any wafer, every run. The seed is
drawn from PyTorch's default CPU generator (`draw_seed`, one ``torch.randint`` per
dropout call), so ``torch.manual_seed(s)`` before a step fixes all of its masks. The masks
are not the ones eager PyTorch draws (its CPU dropout samples a Bernoulli tensor from its
Mersenne-Twister generator, element by element in one stream): a run compared with eager
must compare with the same masks, not the same seed (docs/weight-streaming.md).

**Cost** (per PE, over its tile): one draw from the PE's random source per element, one
compare-and-select against ``p`` and one multiply by ``1 / (1 - p)`` (`op_cycles` classes
``copy``, ``select`` and ``mul``). That the CE draws one random value per cycle per SIMD
lane is ASSUMED: the seed interview (00:17:51) names "a technique to add randomness in
hardware" among the machine's design choices, with no rate published.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from waferscale.errors import KernelShapeError
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Node, ref_name
from waferscale.kernels.elementwise import local_pass, op_cycles, tile_elements
from waferscale.kernels.family import (
    FLOAT_DTYPES,
    ExecContext,
    RowFamily,
    Stage,
    StageParams,
    StageRun,
    done,
    rows_cols,
    shape_of,
    to_np,
    to_torch,
)

KERNEL = "dropout"
#: The per-element passes of the cost (module docstring), in order.
PASSES = ("copy", "select", "mul")


def draw_seed() -> int:
    """A dropout call's seed, drawn from PyTorch's default CPU generator."""
    return int(torch.randint(0, 2**62, (1,)).item())


def keep_mask(seed: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The boolean keep-mask of a dropout call (module docstring): element i is kept when
    the i-th float32 of the Philox stream keyed by ``seed`` is >= ``p``."""
    n = int(np.prod(shape))
    u = np.random.Generator(np.random.Philox(key=seed)).random(n, dtype=np.float32)
    return (u >= np.float32(p)).reshape(shape)


def reference(x: np.ndarray, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dropout in plain NumPy: (x * mask / (1 - p), mask), fp32."""
    mask = keep_mask(seed, x.shape, p)
    scale = np.float32(0.0 if p >= 1.0 else 1.0 / (1.0 - p))
    return np.where(mask, x.astype(np.float32) * scale, np.float32(0.0)), mask


@dataclass(frozen=True)
class DropoutParams(StageParams):
    """Dropout of a [rows, cols] activation with drop probability ``p``; ``train`` False
    is the identity (the mask all ones)."""

    rows: int
    cols: int
    p: float
    train: bool = True

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1 or not 0.0 <= self.p <= 1.0:
            raise KernelShapeError(f"dropout of [{self.rows}, {self.cols}] with p {self.p}: "
                                   f"sizes must be >= 1 and 0 <= p <= 1")


def cost(spec: WaferSpec, p: DropoutParams, dtype: str, rect: tuple[int, int]) -> float:
    """Cycles of the stage on ``rect`` (every PE sweeps the padded tile)."""
    if not p.train:
        return 0.0
    tile = float(-(-p.rows // rect[0]) * -(-p.cols // rect[1]))
    return float(sum(float(op_cycles(spec, tile, dtype, op)) for op in PASSES))


class Dropout(RowFamily):
    """``native_dropout``: the mask drawn where the elements are (module docstring)."""

    kind = KERNEL
    targets = frozenset({"native_dropout"})

    def rejects(self, node: Node, g: Graph) -> str | None:
        name = ref_name(node.args[0])
        dtype = g.nodes[name].meta.get("dtype") if name is not None else None
        if dtype not in FLOAT_DTYPES:
            return f"no kernel for dropout of {dtype} values"
        return None

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[DropoutParams, float]:
        node = nodes[0]
        r, c = rows_cols(shape_of(g, node.args[0]))
        train = bool(node.args[2]) if len(node.args) > 2 and node.args[2] is not None \
            else True
        return DropoutParams(r, c, float(node.args[1]), train), 2.0 * r * c

    def extent(self, p: DropoutParams) -> tuple[int, int]:
        return p.rows, p.cols

    def sram_bytes(self, p: DropoutParams, dtype: str, r: int, c: int) -> int:
        """Input and output tiles and the mask's byte per element."""
        tile = -(-p.rows // r) * -(-p.cols // c)
        return tile * (2 * BYTES[dtype] + 1)

    def cycles(self, spec: WaferSpec, p: DropoutParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return cost(spec, p, dtype, rect)

    def algorithm(self, p: DropoutParams) -> str:
        return f"dropout p={p.p:g}: mask drawn per PE (counter-based), select, scale" \
            if p.train else "dropout in eval mode: identity"

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        p: DropoutParams = st.params  # type: ignore[assignment]
        fab = ctx.fabric(st)
        x = ctx.value(node.args[0])
        xm = ctx.mesh(fab, x, (p.rows, p.cols), st.dtype)
        if p.train:
            ready: np.ndarray | float = 0.0
            for op in PASSES:
                ready = local_pass(fab, xm.rect, tile_elements(xm), st.dtype, op, ready)
        if not ctx.timing_only:
            shape = tuple(x.shape)
            if p.train:
                out, mask = reference(to_np(x), p.p, draw_seed())
                out = to_storage(out, st.dtype)
            else:
                out, mask = to_np(x), np.ones(shape, dtype=bool)
            ctx.env[node.name] = (to_torch(out.reshape(shape), x.dtype),
                                  torch.from_numpy(mask.reshape(shape)))
        return done(fab)


FAMILY = Dropout()

__all__ = ["FAMILY", "KERNEL", "PASSES", "Dropout", "DropoutParams", "cost", "draw_seed",
           "keep_mask", "reference"]
