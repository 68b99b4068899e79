"""Data movement between PEs: tiles really move, and clocks advance by `timing`'s formulas.

Every primitive works on *lines*: the rows of a rectangle (moving east/west) or its columns
(moving south/north). A line view turns any [rows, cols] state array into [lines, position],
reversed when data moves toward lower positions, so one implementation serves all four
directions. Contention: each link and ramp is a port with its own clock; traffic that shares
one serialises (see `Fabric.occupy`).

The line helpers (`line_view`, `local_view`, `line_port`, `send`, `deliver`, `load_links`,
`path_extra`, `execute_line`) are public so that kernels with their own communication
patterns (e.g. `kernels._lines`: permutations, chains over chosen PEs) account traffic with
exactly the same port model as the primitives here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from waferscale.errors import GridError, ShapeError
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.grid import EAST, NORTH, RAMP_IN, RAMP_OUT, SOUTH, WEST, Fabric, Rect
from waferscale.fabric.tensor import MeshTensor
from waferscale.fabric.timing import (
    CE_LATENCY,
    chain_step_cycles,
    ktree_group_size,
    ktree_groups,
    leader_index,
    queue_steal,
    tree_levels,
)

DIRECTIONS = {"east": ("row", EAST, False), "west": ("row", WEST, True),
              "south": ("col", SOUTH, False), "north": ("col", NORTH, True)}
View = Callable[[np.ndarray], np.ndarray]


def line_view(rect: Rect, axis: str, reverse: bool) -> View:
    """A function mapping a fabric-shaped array to its [line, position] view over ``rect``."""
    if axis not in ("row", "col"):
        raise ShapeError(f"mesh axis {axis!r}: use 'row' (east-west) or 'col' (north-south)")

    def view(array: np.ndarray) -> np.ndarray:
        sub = array[rect.slices]
        sub = sub if axis == "row" else sub.T
        return sub[:, ::-1] if reverse else sub

    return view


def local_view(axis: str, reverse: bool) -> tuple[View, View]:
    """(to_line, from_line) for arrays already shaped like the rectangle (tiles, clocks)."""
    def to_line(array: np.ndarray) -> np.ndarray:
        sub = array if axis == "row" else np.swapaxes(array, 0, 1)
        return sub[:, ::-1] if reverse else sub

    def from_line(array: np.ndarray) -> np.ndarray:
        sub = array[:, ::-1] if reverse else array
        return np.ascontiguousarray(sub if axis == "row" else np.swapaxes(sub, 0, 1))

    return to_line, from_line


def line_port(axis: str, reverse: bool) -> int:
    forward = EAST if axis == "row" else SOUTH
    backward = WEST if axis == "row" else NORTH
    return backward if reverse else forward


def deliver(fabric: Fabric, view: View, head: np.ndarray, wavelets: np.ndarray,
             serial: np.ndarray | float, mask: np.ndarray) -> np.ndarray:
    """Receive messages whose first wavelet reaches the router at ``head``.

    Returns when each message is complete in its destination CE: the ramp into the CE takes
    one wavelet per cycle (shared with other arrivals), the message arrives at one wavelet
    per ``serial`` cycles, and the last one climbs the ramp in T_R cycles.
    """
    spec = fabric.spec
    ramp = view(fabric.port_clock[RAMP_IN])
    begin = np.maximum(head, ramp)
    freed = begin + wavelets / spec.ramp_wavelets_per_cycle
    done = np.maximum(freed, head + serial * (wavelets - 1) + 1) + spec.ramp_cycles
    # masked in-place updates: the arithmetic of np.where chains, fewer passes
    np.copyto(ramp, freed, where=mask)
    counted = view(fabric.port_wavelets[RAMP_IN])
    np.add(counted, wavelets, out=counted, where=mask)
    return done


def send(fabric: Fabric, view: View, ready: np.ndarray, wavelets: np.ndarray,
          mask: np.ndarray) -> np.ndarray:
    """Start sends from CEs: each waits for its data and its ramp out, which it then holds.

    Returns when the first wavelet goes down the ramp: a sending CE reads it from memory
    the cycle before (measured against the cycle simulator); PEs that send nothing do not
    pay that cycle.
    """
    ramp = view(fabric.port_clock[RAMP_OUT])
    start = np.maximum(ready, ramp) + mask      # the CE reads the first element first
    np.copyto(ramp, start + wavelets, where=mask)
    counted = view(fabric.port_wavelets[RAMP_OUT])
    np.add(counted, wavelets, out=counted, where=mask)
    return start


def load_links(fabric: Fabric, view: View, port: int, start: np.ndarray,
                load: np.ndarray) -> None:
    """Account ``load`` wavelets on the links leaving each position, from ``start``."""
    clock = view(fabric.port_clock[port])
    np.copyto(clock, np.maximum(clock, start) + load, where=load > 0)
    view(fabric.port_wavelets[port])[...] += load
    fabric.wavelet_hops += float(load.sum())


def path_extra(fabric: Fabric, view: View, port: int) -> np.ndarray:
    """Cumulative detour cycles along each line: extra[p] = sum of link extras before p."""
    extra = view(fabric.link_extra[port])
    cum = np.zeros((extra.shape[0], extra.shape[1] + 1))
    if fabric.detours and extra.any():  # no detours anywhere: the sums stay zeros
        np.cumsum(extra, axis=1, out=cum[:, 1:])
    return cum


# ---------------------------------------------------------------------------- shift --------
def _shift_setup(t: MeshTensor, direction: str, distance: int) -> tuple[str, bool, int]:
    if direction not in DIRECTIONS:
        raise ShapeError(f"shift direction {direction!r}: use east, west, south or north")
    axis, _, reverse = DIRECTIONS[direction]
    length = t.rect.cols if axis == "row" else t.rect.rows
    if not 0 < distance < length:
        raise GridError(f"shift distance {distance} must be between 1 and {length - 1} on a "
                        f"line of {length} PEs")
    return axis, reverse, length


def _part(wav: np.ndarray, uniform: float | None, lo: int, hi: int) -> np.ndarray | float:
    """Positions lo..hi-1 of a [lines, length] wavelet array, or its one value if uniform
    (a scalar operand saves reading a full array in every update it takes part in)."""
    return wav[:, lo:hi] if uniform is None else uniform


Getter = Callable[[str, int], np.ndarray]


def _full_state(fabric: Fabric) -> Getter:
    """The port state ``kind`` of ``port`` as a full [rows, cols] array."""
    return lambda kind, port: getattr(fabric, kind)[port]


def _load_span(fabric: Fabric, get: Getter, view: View, port: int, start: np.ndarray,
               load: np.ndarray | float, lo: int, hi: int, positive: bool,
               lines: int = 1) -> None:
    """`load_links` for links lo..hi-1 only (the others carry nothing), exact for integral
    loads: the same clock update, the hop count summed without the zeros. ``lines``: how
    many lines each row of the views stands for (a compact state holds one for all)."""
    clock = view(get("port_clock", port))[:, lo:hi]
    if positive:
        np.maximum(clock, start, out=clock)
        clock += load
    else:
        load = np.broadcast_to(load, clock.shape)
        np.copyto(clock, np.maximum(clock, start) + load, where=load > 0)
    counted = view(get("port_wavelets", port))[:, lo:hi]
    counted += load
    # whole numbers: the total is the same in any order, so a uniform load is one product
    fabric.wavelet_hops += float(load * (clock.size * lines)) if np.ndim(load) == 0 \
        else float(np.sum(np.broadcast_to(load, clock.shape)))


def _shift_state(t: MeshTensor, axis: str, ports: tuple[int, ...], uniform: float | None
                 ) -> tuple[Getter, np.ndarray, np.ndarray, int]:
    """What a one-hop shift of ``t`` along ``axis`` works on: a getter of the port states,
    ``t``'s ready times, the array its result's ready times go in, and how many lines
    each row of these stands for.

    Compact (see `Fabric`) when the shift covers the whole fabric, tiles are one size,
    there are no detours, and the ready times and every port it touches are alike on all
    lines: then each is one line (grown to the line's length) for all of them, and the
    same operations on it give every line's values. Otherwise full arrays.
    """
    fabric, rect = t.fabric, t.rect
    across = 0 if axis == "row" else 1          # the fabric axis that counts the lines
    ready = t._ready
    compact = (fabric._compact(rect) and uniform is not None and not fabric.detours
               and isinstance(ready, np.ndarray) and ready.ndim == 2
               and ready.shape[across] == 1
               and all(fabric._ports[kind][p].shape[across] == 1
                       for kind in ("port_clock", "port_wavelets") for p in ports))
    if not compact:
        return _full_state(fabric), t.ready, np.empty(rect.shape), 1
    shape = (1, rect.cols) if axis == "row" else (rect.rows, 1)
    return (lambda kind, port: fabric._port_as(kind, port, shape),
            np.broadcast_to(ready, shape), np.empty(shape), rect.shape[across])


def shift(t: MeshTensor, direction: str, distance: int = 1, cyclic: bool = False
          ) -> MeshTensor:
    """Every PE sends its tile ``distance`` PEs toward ``direction``.

    Non-cyclic: PEs with no sender receive zeros. Cyclic: the tiles that fall off the end
    travel back along the line to the other end (a mesh has no wrap-around links), which
    is why plain Cannon's algorithm is slow on a mesh.

    The clocks and counters are those of `shift_reference`, operation for operation; this
    version works on the spans of the line that send, carry or receive instead of masks
    over whole lines, takes a uniform tile size as a scalar, writes the new ready times in
    place, and (for whole-number wavelet counts, where any summation order is exact) reads
    the one-hop link loads straight from the counts instead of through a prefix sum.
    """
    axis, reverse, length = _shift_setup(t, direction, distance)
    fabric, spec = t.fabric, t.fabric.spec
    info = t.wavelet_info()
    d, m = distance, length - distance
    if not (d == 1 and info.integral):
        return shift_reference(t, direction, distance, cyclic)
    view = line_view(t.rect, axis, reverse)
    local, unlocal = local_view(axis, reverse)
    port, back = line_port(axis, reverse), line_port(axis, not reverse)
    wav, w = local(t.wavelets()), info.uniform
    get, ready, out_ready, lines = _shift_state(
        t, axis, (RAMP_OUT, port, RAMP_IN) + ((back,) if cyclic else ()), w)
    ready = local(ready)
    # senders: every PE but the last (cyclic: all); `send` with its mask
    senders = length if cyclic else m
    ramp = view(get("port_clock", RAMP_OUT))
    start = np.maximum(ready, ramp)
    start[:, :senders] += 1
    np.add(start[:, :senders], _part(wav, w, 0, senders), out=ramp[:, :senders])
    view(get("port_wavelets", RAMP_OUT))[:, :senders] += _part(wav, w, 0, senders)
    # one hop: the link leaving position q carries q's tile, the last link nothing
    begin = start.min(axis=1, keepdims=True)
    _load_span(fabric, get, view, port, begin, _part(wav, w, 0, m), 0, m, info.positive,
               lines)
    arrive = local(out_ready)
    heads = arrive[:, d:]
    np.add(start[:, :m], spec.ramp_cycles, out=heads)
    heads += d * spec.hop_cycles
    if fabric.detours:
        extra = path_extra(fabric, view, port)
        heads += extra[:, d:length]
        heads -= extra[:, :m]
    first = d
    if cyclic:
        # the wrap flow goes back over every link of the line, to position 0
        back_view = line_view(t.rect, axis, not reverse)
        _load_span(fabric, get, back_view, back, begin, _part(wav, w, m, length), 0,
                   length - 1, info.positive, lines)
        wrap = arrive[:, :d]
        np.add(start[:, m:], spec.ramp_cycles, out=wrap)
        wrap += m * spec.hop_cycles
        if fabric.detours:
            back_extra = path_extra(fabric, back_view, back)
            wrap += back_extra[:, length - 1:length] - back_extra[:, 0:1]
        first = 0
    _deliver_span(fabric, get, view, arrive[:, first:], _roll_part(wav, w, d, first),
                  min(d, m), first)
    if not cyclic:
        arrive[:, :d] = ready[:, :d]
    tiles = None
    if t.tiles is not None:
        moved = local(t.tiles)
        out = np.empty_like(moved) if cyclic else np.zeros_like(moved)
        out[:, d:] = moved[:, :m]
        if cyclic:
            out[:, :d] = moved[:, m:]
        tiles = unlocal(out)
    return t.like(tiles, out_ready, own_ready=True)


def _roll_part(wav: np.ndarray, uniform: float | None, d: int, first: int
               ) -> np.ndarray | float:
    """Wavelets arriving at positions first.. of a shift by ``d`` (the senders' counts)."""
    if uniform is not None:
        return uniform
    rolled = np.empty_like(wav)
    rolled[:, d:] = wav[:, :wav.shape[1] - d]
    rolled[:, :d] = wav[:, wav.shape[1] - d:]
    return rolled[:, first:]


def _deliver_span(fabric: Fabric, get: Getter, view: View, heads: np.ndarray,
                  wavelets: np.ndarray | float, serial: float, first: int) -> None:
    """`deliver` to positions first.. of every line, all of which receive; the completion
    times overwrite ``heads`` (the same operations in the same order)."""
    spec = fabric.spec
    ramp = view(get("port_clock", RAMP_IN))[:, first:]
    freed = np.maximum(heads, ramp)
    freed += wavelets if spec.ramp_wavelets_per_cycle == 1 \
        else np.divide(wavelets, spec.ramp_wavelets_per_cycle)
    heads += serial * (wavelets - 1)
    heads += 1
    np.maximum(freed, heads, out=heads)
    heads += spec.ramp_cycles
    ramp[...] = freed
    counted = view(get("port_wavelets", RAMP_IN))[:, first:]
    counted += wavelets


def shift_reference(t: MeshTensor, direction: str, distance: int = 1, cyclic: bool = False
                    ) -> MeshTensor:
    """`shift` written plainly with masks over whole lines: the reference the fast version
    is tested against, and the path for multi-hop shifts and fractional wavelet counts."""
    axis, reverse, length = _shift_setup(t, direction, distance)
    fabric, spec = t.fabric, t.fabric.spec
    view = line_view(t.rect, axis, reverse)
    local, unlocal = local_view(axis, reverse)
    d = distance
    port, back = line_port(axis, reverse), line_port(axis, not reverse)
    wav = local(t.wavelets())
    ready = local(t.ready)
    lines = wav.shape[0]
    send_mask = np.zeros_like(wav, dtype=bool)
    send_mask[:, : length - d] = True
    if cyclic:
        send_mask[:, length - d:] = True
    start = send(fabric, view, ready, wav, send_mask)

    # forward flows p -> p + d; link q carries the flows with p <= q < p + d
    fwd_wav = np.where(send_mask[:, : length - d], wav[:, : length - d], 0.0)
    cum = np.concatenate([np.zeros((lines, 1)), np.cumsum(fwd_wav, axis=1)], axis=1)
    q = np.arange(length - 1)
    lo, hi = np.clip(q - d + 1, 0, length - d), np.clip(q + 1, 0, length - d)
    load = np.zeros((lines, length))
    load[:, : length - 1] = cum[:, hi] - cum[:, lo]
    load_links(fabric, view, port, start.min(axis=1, keepdims=True), load)
    share = min(d, length - d)
    extra = path_extra(fabric, view, port)
    arrive = np.full((lines, length), -np.inf)
    head = start[:, : length - d] + spec.ramp_cycles + d * spec.hop_cycles \
        + extra[:, d:length] - extra[:, : length - d]
    arrive_mask = np.zeros_like(send_mask)
    arrive_mask[:, d:] = True
    heads = np.zeros((lines, length))
    heads[:, d:] = head
    wav_in = np.zeros((lines, length))
    wav_in[:, d:] = wav[:, : length - d]
    if cyclic:
        # wrap flows p -> p + d - length travel backwards length - d hops
        back_extra = path_extra(fabric, line_view(t.rect, axis, not reverse), back)
        src = np.arange(length - d, length)
        dst = src + d - length
        hops = length - d
        rev_src, rev_dst = length - 1 - src, length - 1 - dst
        detour = back_extra[:, rev_dst] - back_extra[:, rev_src]
        heads[:, :d] = start[:, length - d:] + spec.ramp_cycles + hops * spec.hop_cycles \
            + detour
        wav_in[:, :d] = wav[:, length - d:]
        arrive_mask[:, :d] = True
        back_load = np.zeros((lines, length))
        wrap_wav = wav[:, length - d:]
        # backward link from q+1 to q carries wrap flows whose path covers it: dst <= q < src
        for k in range(d):  # d is a small distance, not a PE count
            covered = (q >= dst[k]) & (q < src[k])
            back_load[:, : length - 1] += covered[None, :] * wrap_wav[:, k:k + 1]
        back_view = line_view(t.rect, axis, not reverse)
        load_links(fabric, back_view, back, start.min(axis=1, keepdims=True),
                    back_load[:, ::-1][:, list(range(1, length)) + [0]])
    arrive = deliver(fabric, view, heads, wav_in, share, arrive_mask)
    new_ready = np.where(arrive_mask, arrive, ready)

    tiles = None
    if t.tiles is not None:
        moved = local(t.tiles)
        out = np.zeros_like(moved)
        out[:, d:] = moved[:, : length - d]
        if cyclic:
            out[:, :d] = moved[:, length - d:]
        tiles = unlocal(out)
    return t.like(tiles, unlocal(new_ready))


# ------------------------------------------------------------------------ multicast -------
def multicast(t: MeshTensor, dst: Rect, axis: str) -> MeshTensor:
    """Flood the tile of each line's root PE to every PE of that line of ``dst``.

    ``t`` occupies a single column (axis='row') or row (axis='col') inside ``dst``; that is
    the root of each line. The result is replicated along ``axis``.
    """
    fabric, spec = t.fabric, t.fabric.spec
    src = t.rect
    if axis == "row":
        ok = src.cols == 1 and src.row == dst.row and src.rows == dst.rows \
            and dst.col <= src.col < dst.col + dst.cols
        root, length = src.col - dst.col, dst.cols
        along = t.col_map
    else:
        ok = src.rows == 1 and src.col == dst.col and src.cols == dst.cols \
            and dst.row <= src.row < dst.row + dst.rows
        root, length = src.row - dst.row, dst.rows
        along = t.row_map
    if not ok:
        raise GridError(f"multicast along {axis}: source {src} must be one PE wide along the "
                        f"{axis} and lie inside the destination {dst}")
    if isinstance(along, int) or along == "partial":
        raise ShapeError(f"multicast along {axis} needs a tensor that is whole on its root "
                         f"PE, but {t.name!r} is {'split' if along != 'partial' else 'partial'} "
                         f"along that mesh axis; reduce or gather it first")
    view = line_view(dst, axis, False)
    local, unlocal = local_view(axis, False)
    lines = (dst.rows if axis == "row" else dst.cols)
    wav = local(t.wavelets())[:, :1]           # [lines, 1]
    ready = local(t.ready)[:, :1]
    pos = np.arange(length)[None, :]
    root_mask = pos == root
    ramp_out = view(fabric.port_clock[RAMP_OUT])[:, root:root + 1]
    start = np.maximum(ready, ramp_out) + 1      # the CE reads the first element first
    ramp_out[...] = start + wav
    view(fabric.port_wavelets[RAMP_OUT])[:, root:root + 1] += wav
    heads = np.zeros((lines, length))
    for reverse in (False, True):
        rview = line_view(dst, axis, reverse)
        port = line_port(axis, reverse)
        r = root if not reverse else length - 1 - root
        extra = path_extra(fabric, rview, port)
        if r < length - 1:
            load = np.zeros((lines, length))
            load[:, r:length - 1] = wav
            load_links(fabric, rview, port, start, load)
            dist = np.arange(1, length - r)
            h = start + spec.ramp_cycles + dist[None, :] * spec.hop_cycles \
                + extra[:, r + 1:length] - extra[:, r:r + 1]
            if reverse:
                heads[:, :root] = h[:, ::-1]
            else:
                heads[:, root + 1:] = h
    mask = ~np.broadcast_to(root_mask, (lines, length))
    wav_all = np.broadcast_to(wav, (lines, length))
    arrive = deliver(fabric, view, heads, wav_all, 1.0, mask)
    new_ready = np.where(mask, arrive, np.broadcast_to(ready, (lines, length)))

    tiles = None
    if t.tiles is not None:
        base = local(t.tiles)[:, :1]
        tiles = unlocal(np.broadcast_to(base, (lines, length, *base.shape[2:])))
    kwargs = {"col_map": None} if axis == "row" else {"row_map": None}
    return t.like(tiles, unlocal(new_ready), rect=dst, **kwargs)


# --------------------------------------------------------------------------- reduce -------
def reduce(t: MeshTensor, axis: str, algorithm: str = "chain", root: str = "first",
           op: str = "sum") -> MeshTensor:
    """Combine the tiles of each line into the PE at one end (``root``: 'first' or 'last').

    ``op`` is "sum" or "max" (both one CE operation per arriving wavelet, so they cost the
    same).

    Chain: every PE adds what arrives from upstream to its own tile and forwards it; stages
    pipeline wavelet by wavelet. Tree: at level l, PEs 2**l apart pair up; levels run one
    after the other on a line (level-synchronous), as `timing.tree_reduce_cycles` counts.
    Each receiving PE spends one add per wavelet on its compute engine. The result occupies
    the root column (axis='row') or row (axis='col'), no longer split along ``axis``.
    """
    if algorithm not in ("chain", "tree"):
        raise ShapeError(f"reduce algorithm {algorithm!r}: use 'chain' or 'tree'")
    if root not in ("first", "last"):
        raise ShapeError(f"reduce root {root!r}: use 'first' or 'last'")
    if op not in ("sum", "max"):
        raise ShapeError(f"reduce op {op!r}: use 'sum' or 'max'")
    along = t.row_map if axis == "col" else t.col_map
    if isinstance(along, int):
        raise ShapeError(f"reduce along {axis}: tensor {t.name!r} is blocked along that mesh "
                         f"axis (different data per PE); only partial or replicated tiles "
                         f"can be summed")
    fabric, spec = t.fabric, t.fabric.spec
    # Position 0 of the (possibly reversed) line is the far end; the root is the last one.
    reverse = root == "first"
    view = line_view(t.rect, axis, reverse)
    local, unlocal = local_view(axis, reverse)
    port = line_port(axis, reverse)
    wav = local(t.wavelets())
    lines, length = wav.shape
    ready = np.maximum(local(t.ready), view(fabric.ce_clock))
    extra = path_extra(fabric, view, port)
    if algorithm == "chain":
        step = chain_step_cycles(spec)
        pos = np.arange(length)[None, :]
        # emit[i] = max_{j <= i}(ready[j] + step*(i-j) + detour(j..i)): a running max
        cost = step * pos + extra[:, :length]
        emit = np.maximum.accumulate(ready - cost, axis=1) + cost
        load = np.zeros((lines, length))
        load[:, : length - 1] = wav[:, : length - 1]
        load_links(fabric, view, port, emit, load)
        send(fabric, view, emit, wav, np.arange(length)[None, :] < length - 1)
        in_mask = np.broadcast_to(pos >= 1, (lines, length))
        busy = np.where(in_mask, wav, 0.0)
        heads = emit
        arrive = deliver(fabric, view, heads, np.where(in_mask, wav, 0.0), 1.0, in_mask)
        done = np.where(in_mask, np.maximum(arrive - spec.ramp_cycles,
                                            emit + wav), ready)
        execute_line(fabric, t.rect, axis, reverse, busy, emit)
        result_ready = done[:, -1:]
    else:
        cur = ready.copy()
        for level in range(tree_levels(length)):
            span = 2 ** level
            # positions counted from the root (the last position of the line)
            from_root = length - 1 - np.arange(length)
            senders = (from_root % (2 * span) == span)
            receivers_idx = np.nonzero(senders)[0] + span
            senders_idx = np.nonzero(senders)[0]
            if senders_idx.size == 0:
                continue
            send_mask = np.zeros((lines, length), dtype=bool)
            send_mask[:, senders_idx] = True
            # level-synchronous: a level starts once the previous one is done on the line
            cur = np.maximum(cur, cur.max(axis=1, keepdims=True)) if level else cur
            start = send(fabric, view, cur, wav, send_mask)
            load = np.zeros((lines, length))
            for k in range(span):  # a level's messages use disjoint link segments
                load[:, senders_idx + k] += wav[:, senders_idx]
            load_links(fabric, view, port, start, load)
            heads = np.zeros((lines, length))
            recv_mask = np.zeros((lines, length), dtype=bool)
            recv_mask[:, receivers_idx] = True
            heads[:, receivers_idx] = start[:, senders_idx] + spec.ramp_cycles \
                + span * spec.hop_cycles + extra[:, receivers_idx] - extra[:, senders_idx]
            wav_in = np.zeros((lines, length))
            wav_in[:, receivers_idx] = wav[:, senders_idx]
            arrive = deliver(fabric, view, heads, wav_in, 1.0, recv_mask)
            busy = np.where(recv_mask, wav_in, 0.0)
            execute_line(fabric, t.rect, axis, reverse, busy, np.where(
                recv_mask, arrive - wav_in - spec.ramp_cycles, 0.0))
            cur = np.where(recv_mask, np.maximum(arrive, cur + wav_in), cur)
        result_ready = cur[:, -1:]

    tiles = None
    if t.tiles is not None:
        lines_of_tiles = local(t.tiles).astype(np.float32, copy=False)
        combined = lines_of_tiles.sum(axis=1, keepdims=True) if op == "sum" \
            else lines_of_tiles.max(axis=1, keepdims=True)
        tiles = unlocal(to_storage(combined, t.dtype))
    root_index = 0 if root == "first" else (t.rect.cols if axis == "row" else t.rect.rows) - 1
    if axis == "row":
        out_rect = Rect(t.rect.row, t.rect.col + root_index, t.rect.rows, 1)
        kwargs = {"col_map": None}
    else:
        out_rect = Rect(t.rect.row + root_index, t.rect.col, 1, t.rect.cols)
        kwargs = {"row_map": None}
    return t.like(tiles, unlocal(result_ready), rect=out_rect, **kwargs)


def execute_line(fabric: Fabric, rect: Rect, axis: str, reverse: bool, busy: np.ndarray,
                  start: np.ndarray) -> None:
    """Charge ``busy`` add cycles to each PE's CE from ``start`` (line coordinates)."""
    _, unlocal = local_view(axis, reverse)
    fabric.execute(rect, unlocal(busy), unlocal(start), flops=unlocal(busy))


def allreduce(t: MeshTensor, axis: str = "row", algorithm: str = "chain", op: str = "sum"
              ) -> MeshTensor:
    """Every PE of each line gets the line's sum (or max): reduce to the first PE, then
    flood back. ``axis='both'`` reduces rows then columns and broadcasts back down and
    across. The intermediate buffers on the root PEs are released once sent on.

    ``algorithm="ktree"`` (sums only): MeshGEMV's K-tree (K = 2, `ktree_reduce`) into the
    middle of each line, whose upper level crosses routers without touching their ramps,
    then a flood from the middle to both ends: on a line of P PEs about P + 6 sqrt(P)
    cycles for one wavelet, where the chain takes 7 P.
    """
    if algorithm == "ktree":
        if op != "sum":
            raise ShapeError(f"allreduce op {op!r} with the k-tree: only 'sum'")
        return _ktree_allreduce(t, axis)
    if axis == "both":
        row_sum = reduce(t, "row", algorithm, op=op)
        total = reduce(row_sum, "col", algorithm, op=op)
        column = multicast(total, row_sum.rect, "col")
        total.free()
        row_sum.free()
        out = multicast(column, t.rect, "row")
        column.free()
        return out
    summed = reduce(t, axis, algorithm, root="first", op=op)
    out = multicast(summed, t.rect, axis)
    summed.free()
    return out


def _ktree_allreduce(t: MeshTensor, axis: str) -> MeshTensor:
    if axis == "both":
        rows = _ktree_allreduce_line(t, "row", ktree_reduce)
        out = _ktree_allreduce_line(rows, "col", ktree_reduce)
        rows.free()
        return out
    return _ktree_allreduce_line(t, axis, ktree_reduce)


def _ktree_allreduce_line(t: MeshTensor, axis: str, ktree_reduce: Callable[..., Any]
                          ) -> MeshTensor:
    summed, _ = ktree_reduce(t, axis, 2)
    out = multicast(summed, t.rect, axis)
    summed.free()
    return out


# --------------------------------------------------------------------------- stream -------
def stream(t: MeshTensor, dst: Rect) -> MeshTensor:
    """Move every tile to the same position in ``dst`` along X-then-Y routes.

    All flows have the same offset, so the flows of a row share its east-west links and
    those of a column its north-south links: the busiest link serialises them.
    """
    fabric, spec = t.fabric, t.fabric.spec
    src = t.rect
    if dst.shape != src.shape:
        raise GridError(f"stream: destination {dst} must have the shape of the source {src}")
    fabric.rect(dst.row, dst.col, dst.rows, dst.cols)
    d_rows, d_cols = dst.row - src.row, dst.col - src.col
    wav = t.wavelets()
    share = max(min(abs(d_cols), src.cols), min(abs(d_rows), src.rows), 1)
    hops = abs(d_rows) + abs(d_cols)
    # work on the bounding box of source and destination, not the whole wafer
    box = Rect(min(src.row, dst.row), min(src.col, dst.col),
               max(src.row, dst.row) + src.rows - min(src.row, dst.row),
               max(src.col, dst.col) + src.cols - min(src.col, dst.col))
    box_view = line_view(box, "row", False)
    start = send(fabric, line_view(src, "row", False), t.ready, wav,
                  np.ones(src.shape, dtype=bool))
    begin = np.full(box.shape, start.min())
    rows = np.arange(src.rows)[:, None] + src.row - box.row     # flow rows in the box
    cols = np.arange(src.cols)[None, :] + src.col - box.col     # flow source columns
    detour = np.zeros(src.shape)
    if d_cols:
        port = EAST if d_cols > 0 else WEST
        lo, covered = _coverage(src.col, src.cols, d_cols)
        load = np.zeros(box.shape)
        load[src.row - box.row:src.row - box.row + src.rows,
             lo - box.col:lo - box.col + covered.size] = \
            covered[None, :] * wav.mean(axis=1, keepdims=True)
        load_links(fabric, box_view, port, begin, load)
        cum = path_extra(fabric, box_view, port)        # [box rows, box cols + 1]
        first, last = (cols, cols + d_cols) if d_cols > 0 else (cols + d_cols + 1, cols + 1)
        detour += cum[rows, last] - cum[rows, first]
    if d_rows:
        port = SOUTH if d_rows > 0 else NORTH
        lo, covered = _coverage(src.row, src.rows, d_rows)
        load = np.zeros(box.shape)
        load[lo - box.row:lo - box.row + covered.size,
             dst.col - box.col:dst.col - box.col + dst.cols] = \
            covered[:, None] * wav.mean(axis=0)[None, :]
        load_links(fabric, box_view, port, begin, load)
        cum = path_extra(fabric, line_view(box, "col", False), port)   # [box cols, rows+1]
        dcol = cols + d_cols
        first, last = (rows, rows + d_rows) if d_rows > 0 else (rows + d_rows + 1, rows + 1)
        detour += cum[dcol, last] - cum[dcol, first]
    heads = start + spec.ramp_cycles + hops * spec.hop_cycles + detour
    arrive = deliver(fabric, line_view(dst, "row", False), heads, wav, float(share),
                      np.ones(dst.shape, dtype=bool))
    tiles = None if t.tiles is None else t.tiles.copy()
    return t.like(tiles, arrive, rect=dst)


def _coverage(first: int, count: int, offset: int) -> tuple[int, np.ndarray]:
    """How many of ``count`` parallel flows, starting at ``first..first+count-1`` and moving
    ``offset`` positions, cross the link leaving each position. Returns (first position,
    counts) for the span the flows touch; links are indexed by the PE they leave."""
    lo = min(first, first + offset)
    span = count + abs(offset)
    leave = np.arange(count) + first - lo if offset > 0 else np.arange(count) + first - lo \
        + offset + 1
    diff = np.zeros(span + 1)
    np.add.at(diff, leave, 1.0)
    np.add.at(diff, leave + abs(offset), -1.0)
    return lo, np.cumsum(diff)[:-1]


# ----------------------------------------------------------------------------- halo -------
def halo_exchange(t: MeshTensor, radius: int) -> dict[str, list[MeshTensor]]:
    """Every PE multicasts its tile to the ``radius`` nearest PEs in each of the four
    directions (router fan-out: one send out of the CE, each link then carries the
    ``radius`` streams passing over it). Returns, per direction the data came *from*
    ('west' = from lower columns, ...), the neighbour tiles at distance 1..radius; PEs
    beyond the rectangle's edge contribute zeros (a Dirichlet boundary).

    The receive buffers are the caller's: a program allocates them once (their SRAM is
    static on the hardware), so the neighbour tensors returned here charge no SRAM.
    """
    fabric, spec = t.fabric, t.fabric.spec
    if radius < 1:
        raise GridError(f"halo radius must be at least 1, got {radius}")
    full_mask = np.ones(t.rect.shape, dtype=bool)
    start = send(fabric, line_view(t.rect, "row", False), t.ready, t.wavelets(), full_mask)
    out: dict[str, list[MeshTensor]] = {}
    done = np.full(t.rect.shape, -np.inf)
    for source, direction in (("west", "east"), ("east", "west"), ("north", "south"),
                              ("south", "north")):
        axis, port, reverse = DIRECTIONS[direction]
        view = line_view(t.rect, axis, reverse)
        local, unlocal = local_view(axis, reverse)
        wav, begin = local(t.wavelets()), local(start)
        lines, length = wav.shape
        # senders within `radius` upstream of each PE, and the wavelets they bring
        cum = np.concatenate([np.zeros((lines, 1)), np.cumsum(wav, axis=1)], axis=1)
        pos = np.arange(length)
        lo = np.clip(pos - radius, 0, None)
        incoming = cum[:, pos] - cum[:, lo]
        # each link leaving p carries the streams of the `radius` PEs up to p
        link = cum[:, pos + 1] - cum[:, np.clip(pos + 1 - radius, 0, None)]
        link[:, -1] = 0.0
        load_links(fabric, view, port, begin, link)
        extra = path_extra(fabric, view, port)
        nearest = np.full((lines, length), np.inf)
        nearest[:, 1:] = begin[:, :-1] + spec.ramp_cycles + spec.hop_cycles \
            + extra[:, 1:length] - extra[:, : length - 1]
        mask = incoming > 0
        # a receiver takes data once its own tile is ready: its buffers are free from then
        head = np.where(mask, np.maximum(nearest, local(t.ready)), 0.0)
        arrive = deliver(fabric, view, head, incoming, 1.0, mask)
        done = np.maximum(done, unlocal(np.where(mask, arrive, -np.inf)))
        out[source] = [_neighbour(t, local, unlocal, k, length) for k in range(1, radius + 1)]
    ready = np.maximum(done, t.ready)
    for tensors in out.values():
        for n in tensors:
            n.ready = ready
    return out


def _neighbour(t: MeshTensor, local: View, unlocal: View, k: int, length: int
               ) -> MeshTensor:
    """The tile of the PE ``k`` upstream (zeros past the edge); clocks are set by the caller."""
    tiles = None
    if t.tiles is not None:
        moved = local(t.tiles)
        shifted = np.zeros_like(moved)
        if k < length:
            shifted[:, k:] = moved[:, : length - k]
        tiles = unlocal(shifted)
    return t.like(tiles, t.ready, allocate=False)

# ------------------------------------------------ reduces over chosen PEs of a line -----
# Reduces over chosen PEs of a line: the chains and the K-tree that only some PEs compute in.
#
# `movement.reduce`'s chain adds at every PE (each stage: ramp down, add, ramp up, one hop:
# ``2*T_R + 2`` cycles, HPDC'24). When the PEs that hold addends are spread out, or when a
# line is reduced in stages, most PEs between two that add only pass wavelets on in their
# routers, one cycle per hop, and never touch their ramp:
#
# * `chain_into`: a pipelined chain reduce over an increasing set of positions of a line;
#   a stage over h hops costs ``2*T_R + h + 1`` cycles (the ramps and the add only at its
#   ends, one cycle per router in between);
# * `ktree_reduce`: MeshGEMV's K-tree (WaferLLM, OSDI'25), HPDC'24's multi-level reduce:
#   groups of ceil(n**(1/K)) PEs reduce into their middle member from both sides, and the
#   group leaders do the same over pass-through routers at the next level.
#
# `ktree_reduce_cycles` is the same schedule in closed form. The wavelet-level version is
# `waferscale.fabric.cycle.collectives.ktree_reduce_phase`; `waferscale validate
# --agreement` compares the two.



def line_length(rect: Rect, axis: str) -> int:
    return rect.cols if axis == "row" else rect.rows


def chain_into(fabric: Fabric, rect: Rect, axis: str, reverse: bool, ready: np.ndarray,
               wav: np.ndarray, members: np.ndarray, *, arrival: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pipelined chain reduce along ``members`` (increasing positions, in the coordinates of
    the direction ``reverse`` picks) into the last member; returns when its sum is complete.

    ``ready``/``wav`` are [lines, n] arrays in those coordinates. Stage i forwards the running
    sum from members[i-1] to members[i] over h hops; like `movement.reduce`'s chain it adds
    2*T_R + h + 1 cycles of latency (ramp down, h hops, ramp up, add) and streams the
    wavelets behind the first one. Each receiver spends one add per wavelet on its CE.
    ``arrival=True`` also returns when the stream reaches the last member.
    """
    spec = fabric.spec
    view = line_view(rect, axis, reverse)
    port = line_port(axis, reverse)
    lines, n = wav.shape
    s = np.asarray(members, dtype=int)
    extra = path_extra(fabric, view, port)
    hops = np.diff(s)
    steps = 2 * spec.ramp_cycles + hops * spec.hop_cycles + CE_LATENCY
    cost = np.concatenate([[0.0], np.cumsum(steps)])[None, :] + extra[:, s] - extra[:, s[:1]]
    r = ready[:, s]
    emit = np.maximum.accumulate(r - cost, axis=1) + cost
    m_wav = wav[:, s]
    # senders: every member but the root, each at its emit time
    full = np.zeros((lines, n))
    send_mask = np.zeros((lines, n), dtype=bool)
    send_mask[:, s[:-1]] = True
    full[:, s] = emit
    send(fabric, view, full, wav, send_mask)
    # links between consecutive members carry the sender's wavelets from its emit time
    load = np.zeros((lines, n))
    link_start = np.zeros((lines, n))
    span = np.arange(s[0], s[-1])
    stage = np.searchsorted(s, span, side="right") - 1    # the member sending over each link
    load[:, span] = m_wav[:, stage]
    link_start[:, span] = emit[:, stage]
    load_links(fabric, view, port, link_start, load)
    recv = np.zeros((lines, n), dtype=bool)
    recv[:, s[1:]] = True
    heads = np.zeros((lines, n))
    heads[:, s[1:]] = emit[:, 1:]
    wav_in = np.zeros((lines, n))
    wav_in[:, s[1:]] = m_wav[:, :-1]
    arrive = deliver(fabric, view, heads, wav_in, 1.0, recv)
    busy = np.where(recv, wav_in, 0.0)
    execute_line(fabric, rect, axis, reverse, busy, np.where(recv, heads, 0.0))
    done = np.maximum(arrive[:, s[-1]] - spec.ramp_cycles, emit[:, -1] + m_wav[:, -2])
    return (done, emit[:, -1]) if arrival else done


def ktree_reduce(t: MeshTensor, axis: str, levels: int = 2) -> tuple[MeshTensor, int]:
    """MeshGEMV's K-tree reduce of a tensor that is partial along ``axis``'s lines.

    Level 1 cuts each line into groups of g = ceil(n**(1/K)) PEs; each group reduces into
    its middle PE by two pipelined chains, one from each side. Level 2 does the same over the
    group leaders (g hops apart), and so on for K levels, so the critical path is about
    K * g / 2 chain stages (WaferLLM: N**(1/K) * K / 2 routing stages). Returns the sum on
    the root line (one PE wide, as `movement.reduce` returns it) and the root position.
    """
    along = t.row_map if axis == "col" else t.col_map
    if along != "partial":
        raise ShapeError(f"ktree_reduce along {axis}: tensor {t.name!r} must hold "
                               f"partial sums along that mesh axis, not {along!r}")
    fabric = t.fabric
    n = line_length(t.rect, axis)
    local, unlocal = local_view(axis, False)
    ce = local(fabric.ce_clock[t.rect.slices])
    ready = np.maximum(local(t.ready), ce)
    wav = local(t.wavelets()).astype(float)
    members = np.arange(n)
    if n > 1:
        size = ktree_group_size(n, levels)
        for _ in range(levels):
            leaders = []
            for group in ktree_groups(members, size):
                c = leader_index(group.size)
                leader = int(group[c])
                leaders.append(leader)
                if group.size == 1:
                    continue
                done = np.full(ready.shape[0], -np.inf)
                # the shorter side first: its stream reaches the leader's ramp first
                first = None
                if c > 0:
                    first = chain_into(fabric, t.rect, axis, False, ready, wav, group[: c + 1],
                                       arrival=True)
                    done = np.maximum(done, first[0])
                lower = n - 1 - group[c:][::-1]
                flipped = (ready[:, ::-1], wav[:, ::-1])
                second, arrive = chain_into(fabric, t.rect, axis, True, *flipped, lower,
                                            arrival=True)
                done = np.maximum(done, second)
                if first is not None:
                    # the upper side's stream queues while the lower one is taken in
                    b = wav[:, leader]
                    steal = queue_steal(b, arrive, first[0] - b, first[0])
                    done = done + steal
                    ramp = local(fabric.port_clock[RAMP_IN][t.rect.slices])
                    ramp[:, leader] += steal
                    fabric.port_clock[RAMP_IN][t.rect.slices] = unlocal(ramp)
                ce = local(fabric.ce_clock[t.rect.slices])
                ready[:, leader] = np.maximum(done, ce[:, leader])
            members = np.asarray(leaders)
            if members.size == 1:
                break
    root = int(members[0])
    tiles = None
    if t.tiles is not None:
        summed = local(t.tiles).sum(axis=1, keepdims=True, dtype=np.float32)
        tiles = unlocal(to_storage(summed, t.dtype))
    if axis == "row":
        out_rect = Rect(t.rect.row, t.rect.col + root, t.rect.rows, 1)
        maps = {"col_map": None}
    else:
        out_rect = Rect(t.rect.row + root, t.rect.col, 1, t.rect.cols)
        maps = {"row_map": None}
    out_ready = unlocal(ready[:, root:root + 1])
    return t.like(tiles, out_ready, rect=out_rect, **maps), root
