"""Per-colour routes of every router, and the checks that catch bad ones before a run.

A route says, for one colour at one PE, which ports the router accepts that colour from
(rx) and which ports it copies each such wavelet to (tx, several = multicast). That is the
whole routing model of the hardware, so wrong routes are wrong programs: the checks here
turn a wavelet that would fall off the grid, be dropped by a neighbour that does not listen,
or circle forever into a `RouteError` that names the PE and the colour.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import ColorBudgetError, RouteError
from waferscale.fabric.cycle.grid import Where, select
from waferscale.fabric.cycle.ports import BIT, DELTA, NAMES, OPPOSITE, R, mask_names, port_mask
from waferscale.hardware.spec import WaferSpec


def shifted(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``a`` moved by (dr, dc) over the last two axes, zero-filled: out[r+dr, c+dc] = a[r, c]."""
    out = np.zeros_like(a)
    rows, cols = a.shape[-2:]
    src_r = slice(max(0, -dr), rows - max(0, dr))
    dst_r = slice(max(0, dr), rows - max(0, -dr))
    src_c = slice(max(0, -dc), cols - max(0, dc))
    dst_c = slice(max(0, dc), cols - max(0, -dc))
    out[..., dst_r, dst_c] = a[..., src_r, src_c]
    return out


class RouteTable:
    """rx/tx port masks per (colour, PE), as uint8 arrays shaped [colours, rows, cols]."""

    def __init__(self, spec: WaferSpec, rows: int, cols: int) -> None:
        self.spec, self.rows, self.cols = spec, rows, cols
        self.rx = np.zeros((spec.colors, rows, cols), dtype=np.uint8)
        self.tx = np.zeros((spec.colors, rows, cols), dtype=np.uint8)

    def check_color(self, color: int, mask: np.ndarray | None = None) -> None:
        """Reject colour ids outside the program budget, naming a PE that would use it."""
        budget = self.spec.routable_colors
        if not isinstance(color, (int, np.integer)) or not 0 <= int(color) < budget:
            pe = "(0,0)"
            if mask is not None and mask.any():
                r, c = np.argwhere(mask)[0]
                pe = f"({r},{c})"
            raise ColorBudgetError(
                f"colour {color!r} on PE {pe}: programs may use colours 0..{budget - 1} "
                f"(spec.colors={self.spec.colors} minus {self.spec.reserved_colors} reserved "
                f"by the runtime); reuse a colour on disjoint PEs or split the program")

    def set(self, color: int, rx: object, tx: object, where: Where = None,
            replace: bool = False) -> None:
        """Set the route of ``color`` on the PEs ``where`` selects.

        Overlapping an existing route is an error unless ``replace``: routes are hardware
        configuration, and silently overwriting one usually means two primitives were given
        the same colour.
        """
        mask = select(where, self.rows, self.cols, f"route for colour {color}")
        self.check_color(color, mask)
        rxm, txm = port_mask(rx), port_mask(tx)  # type: ignore[arg-type]
        if not replace:
            clash = mask & ((self.rx[color] | self.tx[color]) != 0)
            if clash.any():
                r, c = np.argwhere(clash)[0]
                raise RouteError(
                    f"PE ({r},{c}) colour {color}: already routed (rx="
                    f"{mask_names(int(self.rx[color, r, c]))}, tx="
                    f"{mask_names(int(self.tx[color, r, c]))}); pass replace=True to change "
                    f"it or use another colour")
        self.rx[color][mask] = rxm
        self.tx[color][mask] = txm

    def used_colors(self) -> list[int]:
        return [int(k) for k in np.flatnonzero((self.rx | self.tx).reshape(
            self.spec.colors, -1).any(axis=1))]

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Every wavelet must have somewhere to go: raise on the first route that loses one."""
        rows, cols = self.rows, self.cols
        routed = (self.rx | self.tx) != 0
        for k in self.used_colors():
            self.check_color(k, routed[k])
        for p in range(4):
            dr, dc = DELTA[p]
            sends = (self.tx & BIT[p]) != 0
            recvs = (self.rx & BIT[p]) != 0
            edge = np.zeros((rows, cols), dtype=bool)
            if dr < 0:
                edge[0, :] = True
            if dr > 0:
                edge[-1, :] = True
            if dc < 0:
                edge[:, 0] = True
            if dc > 0:
                edge[:, -1] = True
            self._fail(sends & edge, "sends {port} off the edge of the {grid} grid", p)
            self._fail(recvs & edge, "receives from {port}, off the edge of the {grid} grid", p)
            # the neighbour reached through p must listen on the opposite port
            listens = shifted((self.rx & BIT[OPPOSITE[p]]) != 0, -dr, -dc)
            self._fail(sends & ~edge & ~listens,
                       "sends {port} to PE {nb}, whose route for this colour does not "
                       "receive from {opp}; the wavelets would be dropped", p)
        lost = (self.rx != 0) & (self.tx == 0)
        self._fail(lost, "receives (rx={rx}) but sends nowhere (tx is empty)", None)
        stray = (self.tx != 0) & (self.rx == 0)
        self._fail(stray, "sends (tx={tx}) but receives from nowhere (rx is empty)", None)
        self._check_loops()

    def _fail(self, bad: np.ndarray, text: str, port: int | None) -> None:
        if not bad.any():
            return
        k, r, c = (int(v) for v in np.argwhere(bad)[0])
        nb = ""
        if port is not None:
            nb = f"({r + DELTA[port][0]},{c + DELTA[port][1]})"
        message = text.format(
            port=NAMES[port] if port is not None else "", opp=NAMES[OPPOSITE[port]]
            if port is not None else "", nb=nb, grid=f"{self.rows}x{self.cols}",
            rx=mask_names(int(self.rx[k, r, c])), tx=mask_names(int(self.tx[k, r, c])))
        count = int(bad.sum())
        more = f" ({count - 1} more PEs like it)" if count > 1 else ""
        raise RouteError(f"PE ({r},{c}) colour {k}: route {message}{more}")

    def _check_loops(self) -> None:
        """Kahn's algorithm on each colour's send graph, all colours at once.

        A colour's wavelets follow every tx edge, so any cycle in that graph makes them
        circulate (and, with multicast, multiply) forever.
        """
        out = [(self.tx & BIT[p]) != 0 for p in range(4)]
        indeg = sum(shifted(out[p].astype(np.int32), *DELTA[p]) for p in range(4))
        alive = (self.tx & 0x0F) != 0
        alive |= indeg > 0
        frontier = alive & (indeg == 0)
        while frontier.any():
            for p in range(4):
                indeg -= shifted((out[p] & frontier).astype(np.int32), *DELTA[p])
            alive &= ~frontier
            frontier = alive & (indeg == 0)
        if not alive.any():
            return
        k, r, c = (int(v) for v in np.argwhere(alive)[0])
        # walk backwards through live predecessors until a PE repeats: that is a cycle
        seen: dict[tuple[int, int], int] = {}
        path: list[tuple[int, int]] = []
        while (r, c) not in seen:
            seen[(r, c)] = len(path)
            path.append((r, c))
            for p in range(4):
                pr, pc = r - DELTA[p][0], c - DELTA[p][1]
                if (0 <= pr < self.rows and 0 <= pc < self.cols and alive[k, pr, pc]
                        and out[p][k, pr, pc]):
                    r, c = pr, pc
                    break
        cycle = path[seen[(r, c)]:][::-1]
        cycle.append(cycle[0])
        text = " -> ".join(f"({a},{b})" for a, b in cycle)
        raise RouteError(f"PE ({cycle[0][0]},{cycle[0][1]}) colour {k}: route loops "
                         f"{text}; wavelets would circulate forever, break the loop")


class Channels:
    """The routes compiled to flat per-channel tables the vectorised router steps over.

    A channel is one router input queue: (colour, PE, input port). Each has exactly one
    feeder (the link from that side, or the compute engine's ramp), so at most one wavelet
    enters it per cycle. CE queues (colour, PE) follow the router channels in one index
    space; one extra sentinel index pads the arbitration matrix.
    """

    def __init__(self, table: RouteTable) -> None:
        spec, rows, cols = table.spec, table.rows, table.cols
        self.rows, self.cols, self.pes = rows, cols, rows * cols
        ncol = spec.colors
        rx = table.rx.reshape(ncol, -1)
        tx = table.tx.reshape(ncol, -1)
        color_l, pe_l, in_l = [], [], []
        for port in range(5):
            if port == R:
                has = (rx & BIT[R]) != 0
            else:
                dr, dc = DELTA[port]
                # the neighbour on side `port` must send towards us
                feeds = shifted((table.tx & BIT[OPPOSITE[port]]) != 0, -dr, -dc)
                has = ((rx & BIT[port]) != 0) & feeds.reshape(ncol, -1)
            k, p = np.nonzero(has)
            color_l.append(k)
            pe_l.append(p)
            in_l.append(np.full(k.size, port))
        self.ch_color = np.concatenate(color_l).astype(np.int64)
        self.ch_pe = np.concatenate(pe_l).astype(np.int64)
        self.ch_in = np.concatenate(in_l).astype(np.int64)
        nch = self.nch = self.ch_color.size
        self.ch_tx = tx[self.ch_color, self.ch_pe].astype(np.uint8)
        ck, cp = np.nonzero((tx & BIT[R]) != 0)
        self.cq_color, self.cq_pe = ck.astype(np.int64), cp.astype(np.int64)
        self.ncq = ck.size
        self.sentinel = nch + self.ncq
        # lookups: (colour, PE, in-port) -> channel; (colour, PE) -> CE queue
        self.ch_of = np.full((ncol, self.pes, 5), self.sentinel, dtype=np.int64)
        self.ch_of[self.ch_color, self.ch_pe, self.ch_in] = np.arange(nch)
        self.cq_of = np.full((ncol, self.pes), -1, dtype=np.int64)
        self.cq_of[ck, cp] = nch + np.arange(self.ncq)
        self.up_of = np.where(self.ch_of[:, :, R] < nch, self.ch_of[:, :, R], -1)
        # destination of each (channel, out-port)
        dest = np.full((nch, 5), self.sentinel, dtype=np.int64)
        r0, c0 = self.ch_pe // cols, self.ch_pe % cols
        for port in range(4):
            sel = (self.ch_tx & BIT[port]) != 0
            nr, nc = r0[sel] + DELTA[port][0], c0[sel] + DELTA[port][1]
            dest[sel, port] = self.ch_of[self.ch_color[sel], nr * cols + nc, OPPOSITE[port]]
        sel = (self.ch_tx & BIT[R]) != 0
        dest[sel, R] = self.cq_of[self.ch_color[sel], self.ch_pe[sel]]
        self.dest = dest
        self._build_links()

    def _build_links(self) -> None:
        """Group the (channel, out-port) requests by output link: one row per link."""
        ch, port = np.nonzero(((self.ch_tx[:, None] >> np.arange(5)) & 1) != 0)
        link = self.ch_pe[ch] * 5 + port
        order = np.lexsort((self.ch_color[ch], link))
        ch, port, link = ch[order], port[order], link[order]
        links, first, counts = np.unique(link, return_index=True, return_counts=True)
        width = int(counts.max()) if counts.size else 1
        rank = np.arange(ch.size) - np.repeat(first, counts)
        row = np.repeat(np.arange(links.size), counts)
        self.link_id = links
        self.link_pe = links // 5
        self.link_port = links % 5
        self.link_bit = (1 << self.link_port).astype(np.uint8)
        self.link_ch = np.full((links.size, width), self.sentinel, dtype=np.int64)
        self.link_ch[row, rank] = ch
        self.link_dst = np.full((links.size, width), self.sentinel, dtype=np.int64)
        self.link_dst[row, rank] = self.dest[ch, port]
        self.width = width
