"""The machine's state over a rectangle of PEs: clocks, link occupancy, counters, SRAM.

Time is kept per PE and per port, never globally, because the hardware has no global
barrier: each compute engine (CE) runs when its data has arrived, and data movement runs on
asynchronous microthreads and the routers while the CE computes. So:

* ``ce_clock[r, c]`` is when PE (r, c)'s compute engine is next free;
* ``port_clock[p, r, c]`` is when its outgoing port ``p`` (a link E/W/S/N, or the ramp
  between router and CE in either direction) is next free;
* every tensor carries ``ready[r, c]``: when its tile is complete on that PE.

An operation starts on a PE at ``max(ce_clock, ready of its inputs)``; the gap it waits for
data is counted as *stalled*, the cycles it computes as *busy*. Everything is a NumPy array
shaped like the fabric, so no Python loop runs over PEs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from waferscale.errors import GridError
from waferscale.fabric.sram import SramAllocator
from waferscale.hardware.spec import WaferSpec, get_spec

#: Port indices of ``port_clock``/``port_wavelets``: the four links by the direction they
#: send to, then the ramp from router to CE (in) and CE to router (out).
EAST, WEST, SOUTH, NORTH, RAMP_IN, RAMP_OUT = range(6)
PORT_NAMES = ("east", "west", "south", "north", "ramp_in", "ramp_out")

#: An operation's (flops, flops_per, mem_bytes, bytes_per): see `Fabric._execute`.
Counts = tuple[np.ndarray | float, float | None, np.ndarray | float, float | None]

#: Per-PE state arrays ([rows, cols]) and per-port ones ([6, rows, cols]).
_PE_STATE = ("ce_clock", "busy", "stalled", "memory_stalled", "flops", "mem_bytes")
_PORT_STATE = ("port_clock", "port_wavelets")

# How the state is stored.
#
# Each state array is kept *compact* while it can be: as an array that broadcasts to the
# fabric's shape, (1, 1) while every PE holds the same value, (1, cols) while all rows are alike
# (after east-west traffic over the whole wafer), (rows, 1) while all columns are. The
# primitives that work on the whole fabric (`execute`, `movement.shift`) update the compact
# arrays with the same operations, element for element, that they would apply to the full
# ones, so every value is the same as with full arrays, and a step in which all PEs of a line
# do the same work costs no pass over the wafer. Reading a state array through its public
# attribute (``fabric.ce_clock``, ``fabric.port_clock``, ...) makes it full, for good: from
# then on it is one array that callers may hold and write into, as before.


def _untouched(value: np.ndarray) -> bool:
    """A compact array that is still the initial +0.0 everywhere."""
    return value.size == 1 and value.flat[0] == 0 and not np.signbit(value.flat[0])


def _expand(value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A full copy of a compact array (zeros by calloc: pages only as they are touched)."""
    return np.zeros(shape) if _untouched(value) else np.array(np.broadcast_to(value, shape))


def _expand_ports(ports: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    full = np.zeros((6, *shape))
    for p, value in enumerate(ports):
        if not _untouched(value):
            full[p] = value
    return full


def _pe_state(name: str) -> property:
    def get(self: Fabric) -> np.ndarray:
        return self._full(name)

    def put(self: Fabric, value: np.ndarray) -> None:
        self._state[name] = value

    return property(get, put, doc=f"[rows, cols] ``{name}`` of every PE (made full).")


def _port_state(kind: str) -> property:
    def get(self: Fabric) -> np.ndarray:
        return self._full_ports(kind)

    def put(self: Fabric, value: np.ndarray) -> None:
        self._ports_full[kind] = value
        self._ports[kind] = [value[p] for p in range(6)]

    return property(get, put, doc=f"[6, rows, cols] ``{kind}`` of every port (made full).")


@dataclass(frozen=True)
class Rect:
    """A rectangle of PEs: top-left corner (``row``, ``col``) and its size."""

    row: int
    col: int
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.row, self.row + self.rows), slice(self.col, self.col + self.cols))

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}@({self.row},{self.col})"


class Fabric:
    """State of a ``rows`` x ``cols`` rectangle of PEs of a wafer described by ``spec``.

    ``timing_only``: tensors carry shapes and clocks but no values, so wafer-sized programs
    can be timed on a laptop; every clock advances exactly as in a full run.
    ``link_extra``: optional [4, rows, cols] extra cycles per outgoing link (E, W, S, N), the
    detours of a defect remap (see ``waferscale.hardware.defects``).
    """

    def __init__(self, spec: WaferSpec | str | None = None, rows: int | None = None,
                 cols: int | None = None, *, timing_only: bool = False,
                 link_extra: np.ndarray | None = None) -> None:
        self.spec = get_spec(spec)
        self.rows = self.spec.rows if rows is None else rows
        self.cols = self.spec.cols if cols is None else cols
        for name, value, limit in (("rows", self.rows, self.spec.rows),
                                   ("cols", self.cols, self.spec.cols)):
            if not isinstance(value, int) or value < 1:
                raise GridError(f"fabric {name} must be a positive integer, got {value!r}")
            if value > limit:
                raise GridError(
                    f"fabric of {self.rows}x{self.cols} PEs does not fit {self.spec.name}'s "
                    f"program rectangle of {self.spec.rows}x{self.spec.cols}; use at most "
                    f"{limit} {name} or a larger spec")
        self.timing_only = timing_only
        shape = (self.rows, self.cols)
        self._shape = shape
        # every state array starts compact (the note above): one value for the whole wafer
        self._state: dict[str, np.ndarray] = {name: np.zeros((1, 1)) for name in _PE_STATE}
        self._ports: dict[str, list[np.ndarray]] = {
            kind: [np.zeros((1, 1)) for _ in range(6)] for kind in _PORT_STATE}
        self._ports_full: dict[str, np.ndarray | None] = dict.fromkeys(_PORT_STATE)
        self.wavelet_hops = 0.0
        self._scratch = np.empty(0)
        if link_extra is None:
            link_extra = np.zeros((4, *shape))
        else:
            link_extra = np.asarray(link_extra, dtype=float)
            if link_extra.shape != (4, *shape):
                raise GridError(f"link_extra must have shape (4, {self.rows}, {self.cols}), "
                                f"got {link_extra.shape}")
        self.link_extra = link_extra
        self.sram = SramAllocator(self.rows, self.cols, self.spec.sram_bytes)
        self._names = 0

    ce_clock = _pe_state("ce_clock")
    busy = _pe_state("busy")
    stalled = _pe_state("stalled")
    memory_stalled = _pe_state("memory_stalled")
    flops = _pe_state("flops")
    mem_bytes = _pe_state("mem_bytes")
    port_clock = _port_state("port_clock")
    port_wavelets = _port_state("port_wavelets")

    # -- compact state (the note above) ------------------------------------------------
    def _full(self, name: str) -> np.ndarray:
        """The [rows, cols] state ``name``, made full and kept so."""
        value = self._state[name]
        if value.shape != self._shape:
            value = self._state[name] = _expand(value, self._shape)
        return value

    def _full_ports(self, kind: str) -> np.ndarray:
        """The [6, rows, cols] port state ``kind``, made full; each port's storage becomes a
        view of it, so that later in-place updates reach it."""
        full = self._ports_full[kind]
        if full is None:
            full = _expand_ports(self._ports[kind], self._shape)
            self._ports_full[kind] = full
            self._ports[kind] = [full[p] for p in range(6)]
        return full

    def _peek(self, name: str) -> np.ndarray:
        """The full [rows, cols] state without keeping it full (for summaries)."""
        value = self._state[name]
        return value if value.shape == self._shape else _expand(value, self._shape)

    def _peek_ports(self, kind: str) -> np.ndarray:
        full = self._ports_full[kind]
        return _expand_ports(self._ports[kind], self._shape) if full is None else full

    def _is_full(self, value: np.ndarray) -> bool:
        return value.shape == self._shape

    def _compact(self, rect: Rect) -> bool:
        """Whether a primitive on ``rect`` may work on the compact state: it covers the
        whole fabric."""
        return rect.row == 0 and rect.col == 0 and rect.shape == self._shape

    def _widen(self, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        target = np.broadcast_shapes(value.shape, shape)
        return value if target == value.shape else np.array(np.broadcast_to(value, target))

    def _state_as(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        """State ``name`` stored at least as wide as ``shape`` (a compact array grows), to be
        updated in place."""
        value = self._state[name] = self._widen(self._state[name], shape)
        return value

    def _port_as(self, kind: str, port: int, shape: tuple[int, int]) -> np.ndarray:
        """`_state_as` for one port of ``kind``."""
        ports = self._ports[kind]
        value = ports[port] = self._widen(ports[port], shape)
        return value

    def _add(self, name: str, value: np.ndarray | float) -> None:
        """``state += value`` over the whole fabric, in place when the state is full."""
        state = self._state[name]
        if self._is_full(state):
            state += value
        else:
            self._state[name] = state + value

    def _assign(self, name: str, value: np.ndarray) -> None:
        """``state[...] = value`` over the whole fabric (a copy: never ``value`` itself)."""
        state = self._state[name]
        if self._is_full(state):
            state[...] = value
        else:
            self._state[name] = np.array(value, dtype=float)

    @property
    def link_extra(self) -> np.ndarray:
        """[4, rows, cols] detour cycles per outgoing link (zeros on a perfect wafer)."""
        return self._link_extra

    @link_extra.setter
    def link_extra(self, value: np.ndarray) -> None:
        self._link_extra = value
        # a perfect wafer is the common case: its primitives skip adding zero detours
        self.detours = bool(value.any())

    # -- geometry ------------------------------------------------------------------------
    def rect(self, row: int = 0, col: int = 0, rows: int | None = None,
             cols: int | None = None) -> Rect:
        """A validated rectangle; defaults to the rest of the fabric from (row, col)."""
        rows = self.rows - row if rows is None else rows
        cols = self.cols - col if cols is None else cols
        if rows < 1 or cols < 1 or row < 0 or col < 0 or row + rows > self.rows \
                or col + cols > self.cols:
            raise GridError(f"rectangle {rows}x{cols} at ({row},{col}) does not fit the "
                            f"{self.rows}x{self.cols} fabric; move or shrink it")
        return Rect(row, col, rows, cols)

    @property
    def full(self) -> Rect:
        return Rect(0, 0, self.rows, self.cols)

    def fresh_name(self, stem: str) -> str:
        self._names += 1
        return f"{stem}#{self._names}"

    # -- compute engine ------------------------------------------------------------------
    def execute(self, rect: Rect, cycles: np.ndarray | float, ready: np.ndarray | float,
                flops: np.ndarray | float = 0.0, mem_bytes: np.ndarray | float = 0.0,
                memory_stall: np.ndarray | float = 0.0) -> np.ndarray:
        """Run ``cycles`` of CE work on every PE of ``rect`` once its inputs are ``ready``.

        Returns when each PE finishes. Waiting for data counts as stalled; PEs with zero
        cycles neither wait nor advance (they were not part of the operation).
        ``memory_stall``: cycles the work also waits on SRAM (bank conflicts), after it starts;
        counted apart from busy and from waiting for data.
        """
        end = self._execute(rect, cycles, ready, flops, mem_bytes, memory_stall)
        return end if end.shape == rect.shape else np.array(np.broadcast_to(end, rect.shape))

    def _execute(self, rect: Rect, cycles: np.ndarray | float, ready: np.ndarray | float,
                 flops: np.ndarray | float = 0.0, mem_bytes: np.ndarray | float = 0.0,
                 memory_stall: np.ndarray | float = 0.0, *,
                 more_ready: Sequence[np.ndarray | float] = (),
                 flops_per: float | None = None, bytes_per: float | None = None
                 ) -> np.ndarray:
        """`execute`, returning a compact array (one that broadcasts to ``rect``'s shape)
        when the state is compact: the fabric's own primitives keep it as a tensor's ready
        time.

        ``more_ready``: other inputs' ready times; the work starts after all of them (folded
        into the start time, one array fewer than taking their maximum first: the maximum
        is exact in any order). ``flops_per``/``bytes_per``: the counters gain ``flops *
        flops_per`` and ``mem_bytes * bytes_per``, the same products formed in a reused
        buffer instead of new arrays.
        """
        sl = rect.slices
        fast = np.ndim(memory_stall) == 0 and not memory_stall \
            and all(np.ndim(r) <= 2 for r in (ready, *more_ready))
        if fast and np.min(cycles) > 0:
            counts = (flops, flops_per, mem_bytes, bytes_per)
            if self._compact(rect):
                return self._execute_compact(cycles, ready, more_ready, counts)
            clock = self.ce_clock[sl]
            return self._execute_all(sl, clock, cycles, self._start(clock, ready, more_ready),
                                     counts)
        clock = self.ce_clock[sl]
        cycles = np.broadcast_to(np.asarray(cycles, dtype=float), rect.shape)
        active = cycles > 0
        if fast and clock.flags.c_contiguous:
            idle = int(active.size - np.count_nonzero(active))
            if 2 * idle <= active.size:
                return self._execute_some(sl, clock, cycles,
                                          self._start(clock, ready, more_ready),
                                          (flops, flops_per, mem_bytes, bytes_per),
                                          np.flatnonzero(~active))
        for other in more_ready:
            ready = np.maximum(ready, other)
        flops = flops if flops_per is None else flops * flops_per
        mem_bytes = mem_bytes if bytes_per is None else mem_bytes * bytes_per
        ready = np.broadcast_to(np.asarray(ready, dtype=float), rect.shape)
        start = np.maximum(clock, ready)
        # masked in-place updates: the same arithmetic as np.where chains, fewer passes
        stalled = self.stalled[sl]
        np.add(stalled, start - clock, out=stalled, where=active)
        self.busy[sl] += cycles
        end = start.copy()
        if np.any(memory_stall):
            memory_stall = np.broadcast_to(np.asarray(memory_stall, dtype=float), rect.shape)
            cycles = cycles + memory_stall
            active = cycles > 0
            self.memory_stalled[sl] += memory_stall
        np.add(start, cycles, out=end, where=active)
        np.copyto(clock, end, where=active)
        self.flops[sl] += flops
        self.mem_bytes[sl] += mem_bytes
        return end

    def _execute_some(self, sl: tuple[slice, slice], clock: np.ndarray, cycles: np.ndarray,
                      start: np.ndarray, counts: Counts, idle: np.ndarray) -> np.ndarray:
        """`execute` when at most half the PEs of the rectangle have no work (``idle``: their
        flat indices; the rectangle's state arrays are contiguous) and nothing waits on
        memory; ``start``: a fresh array of max(clock, ready).

        Masked updates cost several plain passes each over a scattered mask; here every
        update runs over the whole rectangle and the idle PEs' old values are put back
        (gathered before, scattered after), which leaves each value as the masked update
        would: idle PEs neither wait nor advance.
        """
        def flat(array: np.ndarray) -> np.ndarray:
            return array.reshape(-1)      # a view: the arrays are contiguous

        with np.errstate(invalid="ignore", over="ignore"):
            start_idle = flat(start)[idle]
            stalled = self.stalled[sl]
            kept = flat(stalled)[idle]
            stalled += np.subtract(start, clock, out=self._temp(start.shape))
            flat(stalled)[idle] = kept
            self.busy[sl] += cycles
            end = np.add(start, cycles, out=start)
            flat(end)[idle] = start_idle
            kept = flat(clock)[idle]
            clock[...] = end
            flat(clock)[idle] = kept
        self._counters(sl, counts)
        return end

    def _temp(self, shape: tuple[int, ...]) -> np.ndarray:
        """A scratch float64 array of ``shape``, reused from call to call (a fresh
        wafer-sized array costs page faults on every use). Never handed out."""
        size = int(np.prod(shape))
        if self._scratch.size < size:
            self._scratch = np.empty(size)
        return self._scratch[:size].reshape(shape)

    def _start(self, clock: np.ndarray, ready: np.ndarray | float,
               more: Sequence[np.ndarray | float]) -> np.ndarray:
        """A fresh array of max(clock, ready, *more)."""
        start = np.maximum(clock, ready)
        for other in more:
            if np.broadcast_shapes(start.shape, np.shape(other)) == start.shape:
                np.maximum(start, other, out=start)
            else:
                start = np.maximum(start, other)
        return start

    def _product(self, value: np.ndarray | float, per: float | None) -> np.ndarray | float:
        """``value * per`` (``value`` if ``per`` is None); an array product in `_temp`."""
        if per is None:
            return value
        if np.ndim(value) == 0:
            return value * per
        return np.multiply(value, per, out=self._temp(np.shape(value)))

    def _counters(self, sl: tuple[slice, slice] | None, counts: Counts) -> None:
        """Add the flops and memory bytes of an operation (``sl`` None: the whole fabric,
        compact). Counters that would only gain zero are left alone."""
        flops, flops_per, mem_bytes, bytes_per = counts
        for name, value, per in (("flops", flops, flops_per),
                                 ("mem_bytes", mem_bytes, bytes_per)):
            if np.ndim(value) or value:
                value = self._product(value, per)
                if sl is None:
                    self._add(name, value)
                else:
                    getattr(self, name)[sl] += value

    def _execute_compact(self, cycles: np.ndarray | float, ready: np.ndarray | float,
                         more_ready: Sequence[np.ndarray | float], counts: Counts
                         ) -> np.ndarray:
        """`_execute_all` over the whole fabric on the compact state: the same operations
        in the same order, on arrays as wide as the operands make them."""
        clock = self._state["ce_clock"]
        start = self._start(clock, ready, more_ready)
        gap = np.subtract(start, clock, out=self._temp(start.shape))
        self._add("stalled", gap)
        self._add("busy", cycles)
        end = np.add(start, cycles, out=start) \
            if np.broadcast_shapes(start.shape, np.shape(cycles)) == start.shape \
            else np.add(start, cycles)
        self._assign("ce_clock", end)
        self._counters(None, counts)
        return end

    def _execute_all(self, sl: tuple[slice, slice], clock: np.ndarray,
                     cycles: np.ndarray | float, start: np.ndarray, counts: Counts
                     ) -> np.ndarray:
        """`execute` when every PE of the rectangle works and nothing waits on memory;
        ``start``: a fresh array of max(clock, ready).

        The same operations in the same order, without the masks (each masked pass costs
        about three plain ones) and with no pass for a counter that gains zero; wafer-wide
        primitives run this way almost always.
        """
        gap = np.subtract(start, clock, out=self._temp(start.shape))
        self.stalled[sl] += gap
        self.busy[sl] += cycles
        end = np.add(start, cycles, out=start)
        clock[...] = end
        self._counters(sl, counts)
        return end

    # -- ports ---------------------------------------------------------------------------
    def occupy(self, port: int, rect: Rect, start: np.ndarray, wavelets: np.ndarray | float
               ) -> np.ndarray:
        """Reserve ``port`` on every PE of ``rect`` for ``wavelets`` cycles from ``start``.

        A port carries one wavelet per cycle, so traffic that shares it serialises: the
        reservation begins when both the data and the port are free. Returns that begin.
        """
        sl = rect.slices
        wavelets = np.broadcast_to(np.asarray(wavelets, dtype=float), rect.shape)
        clock = self.port_clock[port][sl]
        used = wavelets > 0
        begin = np.maximum(clock, start)
        np.copyto(begin, start, where=~used)
        np.copyto(clock, begin + wavelets, where=used)
        self.port_wavelets[port][sl] += wavelets
        return begin

    # -- summaries -----------------------------------------------------------------------
    def elapsed(self) -> float:
        """Cycles from start to the last CE or port activity anywhere on the fabric."""
        # the largest value of a compact array is that of the full one
        return float(max(self._state["ce_clock"].max(),
                         max(p.max() for p in self._ports["port_clock"])))

    def energy_joules(self) -> dict[str, float]:
        """Energy by component from the spec's per-event estimates."""
        spec = self.spec
        accesses = self._peek("mem_bytes").sum() / (spec.mem_word_bits / 8)
        parts = {
            "compute": float(self._peek("flops").sum()) * spec.energy_pj_per_flop * 1e-12,
            "sram": float(accesses) * spec.energy_pj_per_sram_access * 1e-12,
            "fabric": float(self.wavelet_hops) * spec.energy_pj_per_hop * 1e-12,
        }
        parts["total"] = sum(parts.values())
        return parts

    def stats(self) -> dict[str, float]:
        """Totals over the fabric: time, busy / stalled / idle share of PE-cycles, energy."""
        cycles = self.elapsed()
        pe_cycles = cycles * self.rows * self.cols or 1.0
        # sums over full arrays (as the state would be if full), without making it full
        busy = float(self._peek("busy").sum())
        stalled = float(self._peek("stalled").sum())
        memory = float(self._peek("memory_stalled").sum())
        link_wavelets = self._peek_ports("port_wavelets")[:4]
        return {
            "cycles": cycles,
            "seconds": self.spec.seconds(cycles),
            "busy_fraction": busy / pe_cycles,
            "stalled_fraction": stalled / pe_cycles,
            "memory_stall_fraction": memory / pe_cycles,
            "idle_fraction": max(0.0, 1.0 - (busy + stalled + memory) / pe_cycles),
            "flops": float(self._peek("flops").sum()),
            "link_wavelets": float(link_wavelets.sum()),
            "peak_link_wavelets": float(link_wavelets.max()),
            "sram_peak_bytes": float(self.sram.peak()),
            "energy_joules": self.energy_joules()["total"],
        }
