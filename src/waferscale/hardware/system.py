"""`SystemSpec`: what surrounds the wafer in weight-streaming mode: MemoryX and SwarmX.

Kept apart from `WaferSpec` (the chip): the same wafer is sold in systems whose external
memory and interconnect differ, and the cluster model (many systems on one SwarmX tree)
reads these fields alone. Every value is sourced or marked as an assumption in
docs/weight-streaming.md; change a field to explore another system.

* MemoryX holds the weights, the fp32 master copy and the optimizer state, streams each
  layer's weights to the wafer and applies the optimizer when the layer's gradients
  arrive. Its update rate is memory-bound (every parameter's master weight, gradient and
  optimizer moments are read and written once per step).
* SwarmX sits between MemoryX and the systems: it broadcasts weights down a tree of
  ``fanout``-way nodes and sums gradients up it; its latency grows with the tree's depth
  (log N levels for N systems; one system still crosses one level). Each system's port
  into the tree is ``swarmx_lanes`` parallel links (a CS-2's 12 x 100 GbE); a node forwards
  and adds at line rate, so a transfer through the tree takes its bytes over one system's
  bandwidth plus one level's latency per level, whatever N (`tree_bytes_per_s`,
  `tree_latency_s`; docs/clusters.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from waferscale.errors import SpecError

#: Bytes MemoryX reads and writes per parameter in one AdamW step: fp32 master weight,
#: gradient, first and second moments read (16 B), weight and both moments written (12 B),
#: and the new 16-bit weight for the next step's stream (2 B).
ADAMW_BYTES_PER_PARAM = 30
#: SGD with momentum: master weight, gradient, momentum read; weight, momentum written;
#: the 16-bit copy.
SGD_BYTES_PER_PARAM = 22
#: Optimizer state bytes per parameter kept in MemoryX (fp32 master + moments).
STATE_BYTES = {"adamw": 12, "sgd": 8}


@dataclass(frozen=True)
class SystemSpec:
    """MemoryX and SwarmX of one weight-streaming system (module docstring).

    ``memoryx_bytes``: capacity for weights and optimizer state.
    ``memoryx_update_bytes_per_s``: MemoryX's memory bandwidth for the optimizer step.
    ``stream_bits_per_s``: weights in and gradients out of one system (each direction;
    Ethernet is full duplex), at most the wafer's system I/O.
    ``swarmx_link_bits_per_s``, ``swarmx_fanout``, ``swarmx_level_latency_s``: one level
    of the broadcast/reduce tree; ``swarmx_lanes``: links per system into the tree.
    ``max_systems``: the largest cluster one SwarmX tree serves.
    """

    name: str = "cs2-memoryx"
    memoryx_bytes: float = 2.4e15
    memoryx_update_bytes_per_s: float = 1.0e12
    stream_bits_per_s: float = 1.2e12
    swarmx_link_bits_per_s: float = 100e9
    swarmx_fanout: int = 4
    swarmx_level_latency_s: float = 2e-6
    swarmx_lanes: int = 12
    max_systems: int = 192

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "name":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise SpecError(f"system spec {self.name!r}: {f.name} = {v!r} must be a "
                                f"finite number > 0")
        if self.swarmx_fanout < 2 or int(self.swarmx_fanout) != self.swarmx_fanout:
            raise SpecError(f"system spec {self.name!r}: swarmx_fanout = "
                            f"{self.swarmx_fanout!r} must be an integer >= 2")
        for key in ("swarmx_lanes", "max_systems"):
            if int(getattr(self, key)) != getattr(self, key):
                raise SpecError(f"system spec {self.name!r}: {key} = "
                                f"{getattr(self, key)!r} must be an integer >= 1")

    def tree_levels(self, systems: int) -> int:
        """Levels of the SwarmX tree that reaches ``systems`` systems (at least one)."""
        if systems < 1:
            raise SpecError(f"systems = {systems}: need at least one system")
        return max(1, math.ceil(math.log(systems, self.swarmx_fanout) - 1e-12))

    def tree_bytes_per_s(self) -> float:
        """Bytes per second one system sends or receives through SwarmX (each direction):
        its port (``stream_bits_per_s``) or its ``swarmx_lanes`` links, the slower."""
        return min(self.stream_bits_per_s,
                   self.swarmx_lanes * self.swarmx_link_bits_per_s) / 8.0

    def tree_latency_s(self, systems: int) -> float:
        """Latency of one broadcast or reduction through the tree to ``systems`` systems:
        one level's latency per level (log to the base ``fanout``, at least one)."""
        return self.tree_levels(systems) * self.swarmx_level_latency_s

    def update_seconds(self, params: float, optimizer: str = "adamw") -> float:
        """MemoryX's optimizer step over ``params`` parameters (memory-bound)."""
        per = {"adamw": ADAMW_BYTES_PER_PARAM, "sgd": SGD_BYTES_PER_PARAM}.get(optimizer)
        if per is None:
            raise SpecError(f"optimizer {optimizer!r}: use 'adamw' or 'sgd'")
        return params * per / self.memoryx_update_bytes_per_s


#: The CS-2's MemoryX/SwarmX as documented (values and assumptions: docs/weight-streaming.md).
CS2_SYSTEM = SystemSpec()

__all__ = ["ADAMW_BYTES_PER_PARAM", "CS2_SYSTEM", "SGD_BYTES_PER_PARAM", "STATE_BYTES",
           "SystemSpec"]
