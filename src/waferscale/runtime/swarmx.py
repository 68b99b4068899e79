"""SwarmX: the broadcast/reduce tree between MemoryX and the systems of a cluster.

The real SwarmX (../shared/reference/hardware.md, "Execution modes") broadcasts each
layer's weights from MemoryX to every system and, on the way back, sums the systems'
weight gradients in a tree of 1:4 nodes, so MemoryX receives one gradient and applies one
update. This module is that tree for functional runs (`Tree`, `tree_sum`) and the checks
every entry point shares (`check_systems`, `split_batch`); its timing is
`hardware.system.SystemSpec.tree_latency_s` / `tree_bytes_per_s`, used by
`runtime.weight_streaming` (docs/clusters.md).

The order of the additions is fixed by the tree: systems ``0 .. N-1`` are the leaves in
order, each node adds its children left to right (``((c0 + c1) + c2) + c3``) and the
levels go up until one sum is left. Floating-point addition is not associative, so that
fixed order is what makes a cluster run bit-for-bit reproducible whatever order the
gradients arrive in. Nothing here imports Ray or torch: the arrays are NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from waferscale.errors import WaferscaleError
from waferscale.hardware.system import CS2_SYSTEM, SystemSpec


class ClusterError(WaferscaleError):
    """A cluster setting that cannot work: a system count out of range, a batch that does
    not split over the systems, a Ray cluster that cannot be reached (names the fix)."""


def check_systems(systems: int, system: SystemSpec = CS2_SYSTEM, option: str = "--systems"
                  ) -> int:
    """``systems`` if a SwarmX tree of ``system`` can serve it, else a `ClusterError`."""
    if isinstance(systems, bool) or not isinstance(systems, int) or systems < 1:
        raise ClusterError(f"{option} {systems}: a cluster needs at least 1 system (use "
                           f"{option} 1 for one system, up to {system.max_systems})")
    if systems > system.max_systems:
        raise ClusterError(f"{option} {systems}: one SwarmX tree serves at most "
                           f"{system.max_systems} systems ({system.name}); use "
                           f"{option} {system.max_systems} or fewer")
    return systems


def split_batch(batch: int, systems: int, option: str = "--batch") -> int:
    """Samples per system when ``batch`` samples per step are split over ``systems``
    systems; a `ClusterError` with the fix when they do not split evenly."""
    if systems > batch:
        raise ClusterError(f"{option} {batch} cannot be split over {systems} systems (each "
                           f"needs at least one sample): use {option} {systems} or more, "
                           f"or --systems {batch} or fewer")
    if batch % systems:
        lo = batch - batch % systems
        raise ClusterError(f"{option} {batch} does not split evenly over {systems} systems: "
                           f"use a multiple of {systems} ({lo or systems} or "
                           f"{lo + systems})")
    return batch // systems


@dataclass(frozen=True)
class Tree:
    """The SwarmX tree over ``systems`` leaves with ``fanout``-way nodes.

    ``levels[k]`` lists the nodes of level k (k = 0 nearest the systems), each node the
    index range of the level below that it adds (leaves for k = 0)."""

    systems: int
    fanout: int
    levels: tuple[tuple[tuple[int, int], ...], ...]

    @classmethod
    def build(cls, systems: int, fanout: int) -> Tree:
        if systems < 1 or fanout < 2:
            raise ClusterError(f"a SwarmX tree needs at least 1 system and fan-out 2 (got "
                               f"{systems} systems, fan-out {fanout})")
        levels = []
        width = systems
        while True:
            nodes = tuple((i, min(i + fanout, width)) for i in range(0, width, fanout))
            levels.append(nodes)
            width = len(nodes)
            if width == 1:
                break
        return cls(systems, fanout, tuple(levels))

    @property
    def depth(self) -> int:
        """Levels a gradient crosses (one system still crosses one: MemoryX is behind
        SwarmX); equals `SystemSpec.tree_levels`."""
        return len(self.levels)

    def reduce(self, values: Sequence[Any]) -> Any:
        """The sum of ``values`` (one per system, in system order) in the tree's order."""
        if len(values) != self.systems:
            raise ClusterError(f"the tree has {self.systems} leaves, got {len(values)} "
                               f"gradients")
        row = list(values)
        for nodes in self.levels:
            nxt = []
            for lo, hi in nodes:
                acc = row[lo].copy() if hi - lo > 1 else row[lo]
                for j in range(lo + 1, hi):
                    acc += row[j]          # in place: left to right, the fixed order
                nxt.append(acc)
            row = nxt
        return row[0]


def tree_sum(values: Sequence[np.ndarray], fanout: int = CS2_SYSTEM.swarmx_fanout
             ) -> np.ndarray:
    """``values`` summed in the SwarmX tree's fixed order (module docstring)."""
    return Tree.build(len(values), fanout).reduce(values)


class SwarmX:
    """The reduction component of a functional cluster (a Ray actor in `runtime.cluster`):
    takes every system's flat gradient and returns their sum in the tree's order."""

    def __init__(self, systems: int, fanout: int) -> None:
        self.tree = Tree.build(systems, fanout)

    def ping(self) -> int:
        import os

        return os.getpid()

    def reduce(self, *grads: np.ndarray) -> np.ndarray:
        return self.tree.reduce([np.asarray(g, dtype=np.float32) for g in grads])


__all__ = ["ClusterError", "SwarmX", "Tree", "check_systems", "split_batch", "tree_sum"]
