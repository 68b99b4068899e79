"""Slicing floorplans over a pipeline-ordered list of blocks (recursive bisection).

A node covers a contiguous run ``[lo, hi)`` of free blocks in pipeline order and a
rectangle of PEs; it splits the run at ``k`` and its rectangle with one straight cut
(``orient`` 0: a vertical cut line, splitting columns; 1: a horizontal one, splitting rows).
The cut position is not free: it gives each side PEs in proportion to the target areas of
its blocks (water filling), clamped so each side keeps enough PEs for its blocks' SRAM. So
areas follow work by construction and the tree only decides shapes and neighbourhoods;
``mirror`` swaps which side the earlier half takes. Because every subtree is a contiguous
run, consecutive pipeline stages land close together, and changing a node only moves the
blocks of its own run: annealing moves are local and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


class Node:
    """One cut (or a leaf when ``hi - lo == 1``) of a slicing tree."""

    __slots__ = ("lo", "hi", "k", "orient", "mirror", "left", "right", "rect")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.k = -1
        self.orient = 0
        self.mirror = False
        self.left: Node | None = None
        self.right: Node | None = None
        self.rect = (0, 0, 0, 0)

    @property
    def leaf(self) -> bool:
        return self.hi - self.lo == 1

    @property
    def size(self) -> int:
        return self.hi - self.lo


class Slicer:
    """Builds and realises slicing trees for the free blocks ``order`` (block ids).

    ``weight``: target areas per block id; ``need``: minimum PEs per block id;
    ``max_aspect``: hard aspect limit per block id (inf for none). Realised rectangles are
    written into ``R, C, H, W`` (per block id). ``max_rows`` / ``max_cols`` (per block id,
    inf for none): a leaf is trimmed to the part of its cell its kernel can use (the rest
    stays idle instead of widening routing footprints). ``leaf_time(block, rows, cols)``:
    the block's time in a rectangle; with it, two-block nodes are cut in the orientation
    whose slower block is faster (a GEMM wants a square, a row kernel its tokens x hidden),
    and a leaf whose time is inf (the kernel does not fit that shape) is illegal.
    """

    def __init__(self, order: np.ndarray, weight: np.ndarray, need: np.ndarray,
                 max_aspect: np.ndarray, R: np.ndarray, C: np.ndarray, H: np.ndarray,
                 W: np.ndarray, *, max_rows: np.ndarray | None = None,
                 max_cols: np.ndarray | None = None,
                 leaf_time: Callable[[int, int, int], float] | None = None) -> None:
        self.order = [int(b) for b in order]
        w = np.asarray(weight, dtype=float)[order]
        nd = np.asarray(need, dtype=np.int64)[order]
        self.cw = [0.0, *np.cumsum(w).tolist()]
        self.cn = [0, *np.cumsum(nd).tolist()]
        self.need = [int(x) for x in np.asarray(need)]
        self.max_aspect = [float(x) for x in np.asarray(max_aspect)]
        self.R, self.C, self.H, self.W = R, C, H, W
        n = len(self.need)
        self.max_rows = (np.full(n, np.inf) if max_rows is None
                         else np.asarray(max_rows, dtype=float))
        self.max_cols = (np.full(n, np.inf) if max_cols is None
                         else np.asarray(max_cols, dtype=float))
        self.leaf_time = leaf_time

    # -- cutting ---------------------------------------------------------------------
    def cut(self, lo: int, k: int, hi: int, orient: int, h: int, w: int) -> int | None:
        """Length the first half gets along the cut axis, or None if SRAM cannot fit."""
        length, breadth = (w, h) if orient == 0 else (h, w)
        if length < 2:
            return None
        wl, wr = self.cw[k] - self.cw[lo], self.cw[hi] - self.cw[k]
        frac = wl / (wl + wr) if wl + wr > 0 else (k - lo) / (hi - lo)
        # Of the two integer cuts around the ideal one, take the one whose worse side is
        # less short of its target area (rounding to nearest starves small blocks).
        x = int(math.floor(length * frac))
        if 0 < x < length - 1 and wl > 0 and wr > 0:
            if max(wl / (x + 1), wr / (length - x - 1)) < max(wl / x, wr / (length - x)):
                x += 1
        elif x == 0:
            x = 1
        x_min = max(1, -(-(self.cn[k] - self.cn[lo]) // breadth))
        x_max = length - max(1, -(-(self.cn[hi] - self.cn[k]) // breadth))
        if x_min > x_max:
            return None
        return min(max(x, x_min), x_max)

    def balanced_k(self, lo: int, hi: int) -> int:
        """Split index that halves the run's weight (the classic bisection)."""
        half = 0.5 * (self.cw[lo] + self.cw[hi])
        lo_k, hi_k = lo + 1, hi - 1
        # binary search on the prefix sums
        a, b = lo_k, hi_k
        while a < b:
            m = (a + b) // 2
            if self.cw[m] < half:
                a = m + 1
            else:
                b = m
        k = a
        if k > lo_k and abs(self.cw[k - 1] - half) <= abs(self.cw[k] - half):
            k -= 1
        return min(max(k, lo_k), hi_k)

    # -- building --------------------------------------------------------------------
    def build(self, lo: int, hi: int, r: int, c: int, h: int, w: int,
              prefer_orient: int | None = None) -> Node | None:
        """A feasible tree for run [lo, hi) in rectangle (r, c, h, w), or None.

        Tries the balanced split across the longer side first (squarish pieces), then the
        other side, then split points further from the balance: a few tries per node keep
        the search linear in practice while still getting out of tight SRAM corners.
        """
        node = Node(lo, hi)
        node.rect = (r, c, h, w)
        if hi - lo == 1:
            return node if self.place_leaf(node) else None
        if h * w < self.cn[hi] - self.cn[lo]:
            return None
        k0 = self.balanced_k(lo, hi)
        longer = 0 if w >= h else 1
        if prefer_orient is None and hi - lo == 2 and self.leaf_time is not None:
            longer = self._pair_orient(lo, r, c, h, w, longer)
        orients = [longer, 1 - longer] if prefer_orient is None else [prefer_orient,
                                                                      1 - prefer_orient]
        ks = [k0]
        for d in (1, -1, 2, -2):
            if lo < k0 + d < hi:
                ks.append(k0 + d)
        for k in ks:
            for orient in orients:
                x = self.cut(lo, k, hi, orient, h, w)
                if x is None:
                    continue
                if orient == 0:
                    left = self.build(lo, k, r, c, h, x)
                    right = self.build(k, hi, r, c + x, h, w - x) if left else None
                else:
                    left = self.build(lo, k, r, c, x, w)
                    right = self.build(k, hi, r + x, c, h - x, w) if left else None
                if left is not None and right is not None:
                    node.k, node.orient, node.left, node.right = k, orient, left, right
                    return node
        return None

    def _pair_orient(self, lo: int, r: int, c: int, h: int, w: int, default: int) -> int:
        """Of the two cuts of a two-block cell, the one whose slower block is faster."""
        assert self.leaf_time is not None
        best, pick = math.inf, default
        for orient in (default, 1 - default):
            x = self.cut(lo, lo + 1, lo + 2, orient, h, w)
            if x is None:
                continue
            a, b = self.order[lo], self.order[lo + 1]
            if orient == 0:
                t = max(self.leaf_time(a, h, x), self.leaf_time(b, h, w - x))
            else:
                t = max(self.leaf_time(a, x, w), self.leaf_time(b, h - x, w))
            if t < best:
                best, pick = t, orient
        return pick

    # -- realising -------------------------------------------------------------------
    def place_leaf(self, node: Node) -> bool:
        """Give the block its cell, trimmed to what its kernel can use (``max_rows`` x
        ``max_cols``, never below its SRAM minimum) and shrunk to honour a hard aspect
        limit."""
        r, c, h, w = node.rect
        b = self.order[node.lo]
        limit = self.max_aspect[b]
        if h <= 0 or w <= 0:
            return False
        th, tw = int(min(h, self.max_rows[b])), int(min(w, self.max_cols[b]))
        if (th, tw) != (h, w) and th * tw >= self.need[b] and (
                self.leaf_time is None
                or self.leaf_time(b, th, tw) <= self.leaf_time(b, h, w) * (1 + 1e-9)):
            h, w = th, tw
        if max(h, w) > limit * min(h, w):
            if h > w:
                h = max(1, int(math.floor(w * limit)))
            else:
                w = max(1, int(math.floor(h * limit)))
        if h * w < self.need[b]:
            return False
        if self.leaf_time is not None and not math.isfinite(self.leaf_time(b, h, w)):
            return False  # the kernel cannot run in this shape (Block.time_at says inf)
        self.R[b], self.C[b], self.H[b], self.W[b] = r, c, h, w
        return True

    def realize(self, node: Node, r: int, c: int, h: int, w: int) -> bool:
        """Lay out ``node``'s subtree in (r, c, h, w); False if some block cannot fit."""
        node.rect = (r, c, h, w)
        if node.left is None:
            return self.place_leaf(node)
        x = self.cut(node.lo, node.k, node.hi, node.orient, h, w)
        if x is None:
            return False
        if node.orient == 0:
            if node.mirror:
                return (self.realize(node.left, r, c + w - x, h, x)
                        and self.realize(node.right, r, c, h, w - x))
            return (self.realize(node.left, r, c, h, x)
                    and self.realize(node.right, r, c + x, h, w - x))
        if node.mirror:
            return (self.realize(node.left, r + h - x, c, x, w)
                    and self.realize(node.right, r, c, h - x, w))
        return (self.realize(node.left, r, c, x, w)
                and self.realize(node.right, r + x, c, h - x, w))


def sample_internal(node: Node, rng: np.random.Generator) -> Node | None:
    """A uniformly random internal node of the subtree, by one walk down (O(depth))."""
    if node.left is None:
        return None
    while True:
        assert node.left is not None and node.right is not None
        total = node.size - 1
        u = rng.random() * total
        if u < 1.0:
            return node
        u -= 1.0
        nl = node.left.size - 1
        if u < nl:
            node = node.left
        else:
            node = node.right
        if node.left is None:  # pragma: no cover - guarded by the counts above
            return None
