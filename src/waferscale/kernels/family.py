"""What a kernel family declares, in one typed object, and the stage it runs as.

A *family* (`KernelFamily`) is everything the compiler and the runtime need to know about
one kernel: which ATen ops (or matched patterns) it lowers, its typed parameters
(`StageParams`, a frozen dataclass beside the kernel), how it sizes itself on a rectangle
(layout search, closed-form ``cost()``, SRAM), its FLOPs, and how it executes in each mode
(pipelined today). The compiler and the runtime never compare a stage's kind with a
string: they ask `registry.family(kind)` and call the family. A new kernel is one module
that defines its family plus one line in `kernels.registry`.

A `Stage` is the plan's unit: one kernel on its own rectangle (or a host fallback), with
its family's parameters and, once sized, its `Sizing`. Stages are frozen values: sizing
returns a new stage (`dataclasses.replace`), it never edits one in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from waferscale import disk_cache
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import BYTES
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import DTYPE_NAMES, Graph, Node, Ref, map_refs

#: Torch dtype names -> fabric storage dtypes (what a stage computes in).
TORCH_TO_FABRIC = {str(t).removeprefix("torch."): d for t, d in DTYPE_NAMES.items()}
FLOAT_DTYPES = tuple(TORCH_TO_FABRIC)


@dataclass(frozen=True)
class StageParams:
    """Base of every family's parameters (a frozen dataclass checked on construction)."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def without_names(self) -> StageParams:
        """The parameters with every graph node name dropped. Sizing never reads a name,
        so the repeated layers of a model, equal but for their names, size alike and can
        share what sizing found (`Stage.as_sized`). A family whose parameters hold names
        overrides this."""
        return self


@dataclass(frozen=True)
class Sizing:
    """Where and how fast a stage's kernel runs: the result of `KernelFamily.size`."""

    rect: tuple[int, int] = (0, 0)
    cost_cycles: float = 0.0
    sram_per_pe: int = 0
    algorithm: str = ""
    fits: bool = True
    why_not: str = ""


@dataclass(frozen=True)
class Stage:
    """One kernel on its own rectangle (or a host fallback); see the module docstring."""

    name: str
    kind: str
    nodes: tuple[str, ...]
    dtype: str = "fp32"
    params: StageParams = field(default_factory=StageParams)
    flops: float = 0.0
    weight_bytes: int = 0
    inputs: tuple[str, ...] = ()          # stages feeding this one
    sizing: Sizing = Sizing()
    move_cycles: float = 0.0

    @property
    def rect(self) -> tuple[int, int]:
        return self.sizing.rect

    @property
    def cost_cycles(self) -> float:
        return self.sizing.cost_cycles

    @property
    def sram_per_pe(self) -> int:
        return self.sizing.sram_per_pe

    @property
    def algorithm(self) -> str:
        return self.sizing.algorithm

    @property
    def fits(self) -> bool:
        return self.sizing.fits

    @property
    def why_not(self) -> str:
        return self.sizing.why_not

    @property
    def pes(self) -> int:
        return self.rect[0] * self.rect[1]

    def as_sized(self) -> Stage:
        """What `KernelFamily.size` reads of this stage, as a hashable key: the stage
        without its names (its own, its nodes', its producers', the parameters') and
        without a previous sizing. The placer memoises sizings on it, so the twelve equal
        layers of a transformer are sized once per rectangle instead of twelve times."""
        return dataclasses.replace(self, name="", nodes=(), inputs=(),
                                   params=self.params.without_names(), sizing=Sizing(),
                                   move_cycles=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "nodes": list(self.nodes),
                "dtype": self.dtype, "params": self.params.to_json(), "flops": self.flops,
                "weight_bytes": self.weight_bytes, "rect": list(self.rect),
                "algorithm": self.algorithm, "cost_cycles": self.cost_cycles,
                "move_cycles": self.move_cycles, "sram_per_pe": self.sram_per_pe,
                "fits": self.fits, "why_not": self.why_not, "inputs": list(self.inputs)}


@dataclass(frozen=True)
class StageRun:
    """What running a stage measured."""

    cycles: float
    sram_peak: int
    busy_fraction: float
    density: float | None = None


@dataclass
class ExecContext:
    """What a family's ``execute`` reads and writes during one pipelined run: the values
    computed so far (``env``, by node name), and how to build a stage's fabric (a fresh
    one the size of its rectangle, with the detour latencies of its links on a defective
    wafer, so that ``fabric.elapsed()`` is the stage's time)."""

    spec: WaferSpec
    graph: Graph
    env: dict[str, Any]
    timing_only: bool = False
    link_extra: dict[str, np.ndarray] | None = None

    def fabric(self, st: Stage) -> Fabric:
        extra = (self.link_extra or {}).get(st.name)
        return Fabric(self.spec, st.rect[0], st.rect[1], timing_only=self.timing_only,
                      link_extra=extra)

    def value(self, x: Any) -> Any:
        """``x`` with every node reference replaced by its computed value."""
        return map_refs(x, lambda r: self.env[r.name])

    def mesh(self, fab: Fabric, x: torch.Tensor, shape: tuple[int, int], dtype: str
             ) -> MeshTensor:
        """``x`` as a [rows, cols] MeshTensor on ``fab`` (its shape only when timing)."""
        if self.timing_only:
            return MeshTensor.empty(fab, shape, dtype=dtype)
        return MeshTensor.from_numpy(fab, to_np(x).reshape(shape), dtype=dtype)

    def host(self, node: Node) -> Any:
        """The node's op run in PyTorch on its values (layout ops, fallbacks)."""
        assert node.fn is not None, f"{node.name} has no host callable"
        return node.fn(*self.value(node.args), **self.value(node.kwargs))


class KernelFamily(ABC):
    """One kernel family: lowering, parameters, sizing, cost and execution (module doc).

    Class attributes a family sets:

    * ``kind``: the stage kind it owns (the registry's key; written in ``meta['kind']``).
    * ``targets``: ATen op names (``node.short``) or full targets it lowers.
    * ``on_wafer``: False only for the host fallback (no rectangle, timed by system I/O).
    * ``fuses_into``: ``"epilogue"`` / ``"prologue"`` when a stage of this family can be
      absorbed by a stage whose family `hosts` it (pointwise chains, layer norms after and
      before a GEMM); ``None`` otherwise.
    """

    kind: ClassVar[str]
    targets: ClassVar[frozenset[str]] = frozenset()
    on_wafer: ClassVar[bool] = True
    fuses_into: ClassVar[str | None] = None

    # ---------------------------------------------------------------- lowering --------
    def claims(self, node: Node) -> bool:
        """Whether ``node`` is one of this family's ops (before checking it can run)."""
        return node.short in self.targets or node.target in self.targets

    def rejects(self, node: Node, g: Graph) -> str | None:
        """Why the kernel cannot run this claimed node (it falls back to the host), or
        None when it can. The default needs float results; families add their limits."""
        if not float_out(node):
            return f"no kernel for {node.meta.get('dtype')} results"
        return None

    def annotate(self, node: Node, g: Graph) -> None:  # noqa: B027 - optional hook
        """Write what later passes read of a node this family lowers (``meta``)."""

    def match(self, g: Graph) -> int:
        """A graph rewrite run before lowering (e.g. a decomposed loss recognised as one
        node of this family's target); returns the number of rewrites."""
        return 0

    def group(self, g: Graph) -> int:
        """A pass after lowering that groups this family's nodes into stages (``meta
        ['group']``: the group's first node); returns the number of groups. Default: each
        node is a stage of its own."""
        return 0

    # ---------------------------------------------------------------- planning --------
    @abstractmethod
    def describe(self, g: Graph, nodes: list[Node], dtype: str) -> tuple[StageParams, float]:
        """The stage's parameters and FLOPs from its nodes (the first one is the kernel
        op; a group family gets all its members)."""

    def weight_bytes(self, g: Graph, nodes: list[Node], dtype: str) -> int:
        """Bytes of the constants the stage keeps resident on its rectangle."""
        consts = {i for n in nodes for i in n.inputs if g.nodes[i].op == "const"}
        return int(sum(g.constants[c].numel() * BYTES[dtype] for c in consts
                       if c in g.constants and hasattr(g.constants[c], "numel")))

    @abstractmethod
    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[StageParams, Sizing]:
        """Layout, rectangle, closed-form cycles and SRAM per PE: inside ``bounds`` (a
        placed rectangle) or, at planning time, on about ``area`` PEs. May raise
        `KernelError` (the stage then does not fit, with that reason)."""

    def notes(self, st: Stage) -> list[str]:
        """Assumptions the report must state about this stage."""
        return []

    # ---------------------------------------------------------------- fusion ----------
    def hosts(self, st: Stage, role: str) -> bool:
        """Whether this stage can absorb a stage that `fuses_into` ``role``."""
        return False

    def absorb(self, st: Stage, other: Stage, role: str, *, streamed: int = 0,
               numel: int | None = None) -> Stage | None:
        """``st`` with ``other`` fused in (as ``role``), or None when the shapes do not
        allow it. An epilogue's ``streamed`` operands arrive from other stages tile for
        tile; ``numel``: a chain over a slice of ``st``'s output has that many elements."""
        return None

    def reads_as_input(self, st: Stage, node: Node, name: str) -> bool:
        """Whether ``node``, this stage's kernel node, reads value ``name`` as the operand
        a prologue produces (a GEMM's activations)."""
        return False

    # ---------------------------------------------------------------- execution -------
    @abstractmethod
    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun | None:
        """Pipelined mode: run ``node`` of stage ``st`` on its fabric, write its value into
        ``ctx.env`` (unless ``ctx.timing_only``) and return what the fabric measured (None
        for a member node whose stage is measured at another node)."""

    def execute_fused(self, ctx: ExecContext, st: Stage, node: Node) -> None:
        """Pipelined mode, a node of this family fused into another family's stage: its
        value only (its cycles are part of the host stage's)."""
        raise NotImplementedError(f"{self.kind} nodes are not fused into other stages")


class RowFamily(KernelFamily):
    """A kernel over a 2-D [rows, cols] tensor laid out rows over PE rows and cols over PE
    columns (`row_rect`: about the planned area, grown until the tiles fit the SRAM, or the
    placed rectangle): layer norm, softmax, reduce, the loss. It declares its tensor's
    ``extent``, its SRAM per PE on r x c PEs, its closed-form cycles and its algorithm;
    the sizing is shared."""

    @abstractmethod
    def extent(self, p: Any) -> tuple[int, int]:
        """(rows, cols) of the tensor the kernel sweeps."""

    @abstractmethod
    def sram_bytes(self, p: Any, dtype: str, r: int, c: int) -> int:
        """SRAM per PE on r x c PEs."""

    @abstractmethod
    def cycles(self, spec: WaferSpec, p: Any, dtype: str, rect: tuple[int, int]) -> float:
        """The kernel's closed-form ``cost()`` on ``rect``."""

    @abstractmethod
    def algorithm(self, p: Any) -> str:
        """One line for the report."""

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[StageParams, Sizing]:
        p, dt = st.params, st.dtype
        rect = row_rect(spec, *self.extent(p), area, bounds,
                        lambda r, c: self.sram_bytes(p, dt, r, c))
        return p, Sizing(rect, self.cycles(spec, p, dt, rect), self.sram_bytes(p, dt, *rect),
                         self.algorithm(p))


# ------------------------------------------------------------------ shared helpers -------
#: Node kinds of layout ops (not stages): ``relabel`` changes how the next kernel reads
#: the tiles (free), ``move`` moves elements between PEs (charged as a stream).
RELABEL, MOVE = "relabel", "move"


def is_layout(node: Node) -> bool:
    """A relabelling or data-moving layout node (lowered by `compiler.lower`)."""
    return node.meta.get("kind") in (RELABEL, MOVE)


def moves_data(node: Node) -> bool:
    """A layout node whose elements change PE (a slice, cat, permute ...)."""
    return node.meta.get("kind") == MOVE


def float_out(node: Node) -> bool:
    """Every output is a float the PEs hold (ops like native_layer_norm and the CPU flash
    attention return several)."""
    d = node.meta.get("dtype")
    outs = d if isinstance(d, list) else [d]
    return bool(outs) and all(isinstance(x, str) and x in FLOAT_DTYPES for x in outs)


def fabric_dtype_of(node: Node) -> str:
    """The storage dtype a node's stage computes in (its first output's)."""
    d = node.meta.get("dtype")
    d = d[0] if isinstance(d, list) else d
    return TORCH_TO_FABRIC.get(str(d), "fp32")


def shape_of(g: Graph, x: Any) -> list[int]:
    """The shape of the value an argument refers to ([] for a non-reference)."""
    if isinstance(x, Ref):
        s = g.nodes[x.name].meta.get("shape")
        return list(s) if s and isinstance(s[0], int) else list(s[0]) if s else []
    return []


def rows_cols(shape: list[int]) -> tuple[int, int]:
    """[..., H] -> (tokens, H): activations are laid out 2-D, tokens over PE rows."""
    if not shape:
        return 1, 1
    return max(1, math.prod(shape[:-1])), max(1, shape[-1])


def row_rect(spec: WaferSpec, t: int, h: int, area: float,
             bounds: tuple[int, int] | None, bytes_of: Any) -> tuple[int, int]:
    """Tokens over rows, hidden over columns: about ``area`` PEs, grown until the tiles fit
    the SRAM; inside ``bounds`` the whole placed rectangle (as far as the tensor spans it),
    with fewer columns where that is what fits (a softmax keeps per-row buffers as wide as
    its column count, so a wide rectangle can overflow where a narrower one fits)."""
    if bounds is not None:
        r, c = max(1, min(t, bounds[0])), max(1, min(h, bounds[1]))
        if bytes_of(r, c) > spec.sram_bytes:
            for cc in sorted({max(1, c >> i) for i in range(1, 12)}, reverse=True):
                if bytes_of(r, cc) <= spec.sram_bytes:
                    return r, cc
        return r, c
    c = max(1, min(h, spec.cols, int(math.sqrt(max(area, 1)))))
    r = max(1, min(t, spec.rows, int(max(area, 1) // c)))
    while bytes_of(r, c) > spec.sram_bytes:
        if r < min(t, spec.rows):
            r = min(t, spec.rows, r * 2)
        elif c < min(h, spec.cols):
            c = min(h, spec.cols, c * 2)
        else:
            break
    return r, c


def to_np(x: torch.Tensor) -> np.ndarray:
    """A tensor's values as NumPy (floats as fp32: the fabric's working precision)."""
    if x.dtype == torch.float32 and x.device.type == "cpu":
        return x.detach().numpy()     # the common case without two no-op conversions
    return x.detach().to(torch.float32).cpu().numpy() if x.is_floating_point() \
        else x.detach().cpu().numpy()


def to_torch(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor of ``x`` (a read-only array, e.g. a broadcast, is copied: torch
    tensors are writable)."""
    a = np.asarray(x, dtype=np.float32)   # not ascontiguousarray: it makes a 0-d array 1-d
    if not (a.flags.c_contiguous and a.flags.writeable):
        a = np.array(a, order="C")
    return torch.from_numpy(a).to(dtype)


def done(fab: Fabric, extra: float = 0.0, density: float | None = None) -> StageRun:
    """What a stage's fabric measured: elapsed cycles (+ ``extra``), SRAM peak, busy share."""
    s = fab.stats()
    return StageRun(fab.elapsed() + extra, int(fab.sram.peak()), s["busy_fraction"], density)


def links_key(ctx: ExecContext, st: Stage) -> tuple[Any, ...] | None:
    """The detour latencies of the stage's links (`ExecContext.link_extra`) as a hashable
    key: None on a perfect wafer, else their shape, dtype and a digest of their values."""
    extra = (ctx.link_extra or {}).get(st.name)
    return None if extra is None else (extra.shape, str(extra.dtype),
                                       hashlib.sha256(extra.tobytes()).hexdigest())


#: What stages whose clocks no value can change measured, by `figures_key` (and the GEMM's
#: rounds, by `gemm._round_key`). A training step runs every stage again with the same
#: shapes (and a model's layers repeat theirs), so a family whose figures depend only on
#: the key reads them here and computes its values alone, the same bits as its fabric run
#: gives (each such family's test checks that). Bounded: cleared when full. Kept on disk
#: too (`disk_cache`'s ``figures`` folder), so a later process reads what an earlier one
#: simulated: a training run's first step simulates every distinct GEMM ring.
_FIGURES: dict[tuple[Any, ...], Any] = {}
_FIGURES_KEPT = 4096
FIGURES_KIND, FIGURES_FORMAT = "figures", 1

_Figures = TypeVar("_Figures")


def figures_key(ctx: ExecContext, st: Stage, *extra: Any) -> tuple[Any, ...]:
    """Everything the figures of a value-independent stage depend on: its family, the
    spec, its rectangle, dtype and parameters, the mode and its links' detours (the inputs
    of ``ctx.fabric(st)`` and of the family's program); ``extra``: what else the family's
    ``execute`` reads (an output shape)."""
    return (st.kind, ctx.spec, tuple(st.rect), st.dtype, st.params, ctx.timing_only,
            links_key(ctx, st), *extra)


def _entry(key: tuple[Any, ...]) -> str:
    """The disk entry of a key (its repr: the spec, parameters, shapes and digests)."""
    return disk_cache.key(FIGURES_KIND, FIGURES_FORMAT, {"figures": repr(key)})


def _keep(key: tuple[Any, ...], figures: Any) -> None:
    if len(_FIGURES) >= _FIGURES_KEPT:
        _FIGURES.clear()
    _FIGURES[key] = figures


def remembered(key: tuple[Any, ...]) -> Any:
    """The figures measured under ``key`` before, in this process or an earlier one (read
    from the disk cache the first time this process asks), or None."""
    got = _FIGURES.get(key)
    if got is None:
        got = disk_cache.read(FIGURES_KIND, _entry(key))
        if got is not None:
            _keep(key, got)
    return got


def remember(key: tuple[Any, ...], measured: _Figures) -> _Figures:
    """Keep ``measured`` under ``key`` (for `remembered`), here and on disk; returns it."""
    _keep(key, measured)
    disk_cache.write(FIGURES_KIND, _entry(key),
                     pickle.dumps(measured, protocol=pickle.HIGHEST_PROTOCOL))
    return measured


__all__ = ["ExecContext", "FIGURES_KIND", "FLOAT_DTYPES", "KernelFamily", "MOVE", "RELABEL",
           "RowFamily", "Sizing", "Stage", "StageParams", "StageRun", "TORCH_TO_FABRIC", "done",
           "fabric_dtype_of", "figures_key", "float_out", "is_layout", "links_key", "moves_data",
           "remember", "remembered", "row_rect", "rows_cols", "shape_of", "to_np", "to_torch"]
