"""Simulator parameters that the public hardware record does not pin down.

Each one is an assumption, kept out of `WaferSpec` because it describes this model rather
than the machine; docs/cycle-simulator.md lists them with the reasoning behind the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

from waferscale.errors import SpecError


@dataclass(frozen=True)
class CycleConfig:
    """Knobs of the cycle simulator.

    ``router_queue_depth``: wavelets each per-colour router input queue holds once they have
    arrived; the link's own pipeline stages (``hop_cycles``) add to it, so credits cover the
    wire and a stream runs at one wavelet per cycle with a depth of 1 or more.
    ``ce_queue_depth``: the same for the compute engine's per-colour input queue (plus the
    ``ramp_cycles`` stages of the ramp).
    ``ce_latency``: cycles from the compute engine reading an element to its result leaving
    for the ramp or memory. One cycle reproduces the per-stage cost 2*T_R + 2 of a chain
    reduce measured on hardware (HPDC'24): ramp down, add, ramp up, hop.
    ``microthreads``: asynchronous vector ops a PE can have in flight; one more stalls the
    issuing task until one finishes.
    ``livelock_window``: cycles of instruction issue with no vector element processed and
    no wavelet moved before the run is declared a livelock.
    """

    router_queue_depth: int = 2
    ce_queue_depth: int = 4
    ce_latency: int = 1
    microthreads: int = 8
    livelock_window: int = 20_000
    trace_limit: int = 200_000

    def __post_init__(self) -> None:
        for name in ("router_queue_depth", "ce_queue_depth", "microthreads",
                     "livelock_window", "trace_limit"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"CycleConfig.{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.ce_latency, int) or self.ce_latency < 0:
            raise SpecError(f"CycleConfig.ce_latency must be an integer >= 0, "
                            f"got {self.ce_latency!r}")
