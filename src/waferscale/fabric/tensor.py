"""`MeshTensor`: a tensor laid out over a rectangle of PEs.

Each mesh axis (the rectangle's rows, then its columns) is mapped to one of:

* a tensor axis (int): that axis is cut into equal contiguous blocks, one per PE along the
  mesh axis (the last blocks are padded with zeros when it does not divide);
* ``None``: every PE along the mesh axis holds the same data (replicated);
* ``"partial"``: the PEs along the mesh axis hold addends whose sum is the value (what a
  GEMV leaves before its reduction).

Tiles live in one array ``tiles[rows, cols, *tile_shape]`` so that every operation is a
vectorised NumPy expression over all PEs at once. In timing-only mode ``tiles`` is ``None``
and only the shape, the per-PE element counts and the clocks exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from waferscale.errors import GridError, ShapeError
from waferscale.fabric.dtypes import BYTES, check_dtype, elements_per_wavelet, to_storage
from waferscale.fabric.grid import Fabric, Rect

AxisMap = int | None | Literal["partial"]


#: Per-layout arrays shared (read-only) by every tensor of that layout; bounded.
_VALID_CACHE: dict[tuple[object, ...], np.ndarray] = {}
_BYTES_CACHE: dict[tuple[object, ...], np.ndarray] = {}
#: `WaveletInfo` of each cached ``valid`` array, by the same layout key.
_INFO_CACHE: dict[tuple[object, ...], WaveletInfo] = {}
_CACHE_LIMIT = 4096


@dataclass(frozen=True)
class WaveletInfo:
    """What the movement primitives' fast paths need to know about a wavelet-count array.

    ``integral``: every count is a whole number (below 2**53), so sums of counts are exact in
    float64 in any order and a fast path may add them up differently from the reference.
    ``uniform``: the one value every PE holds, or None; lets a fast path add a scalar.
    ``positive``: no PE has zero wavelets, so no "only where something is sent" mask is
    needed.
    """

    integral: bool
    uniform: float | None
    positive: bool

    @classmethod
    def of(cls, counts: np.ndarray) -> WaveletInfo:
        if counts.size == 0:
            return cls(True, None, True)
        lo, hi = float(counts.min()), float(counts.max())
        with np.errstate(invalid="ignore"):
            integral = bool(-2.0 ** 53 < lo and hi < 2.0 ** 53
                            and np.array_equal(np.floor(counts), counts))
        return cls(integral, lo if lo == hi else None, lo > 0)


def _broadcasts(shape: tuple[int, ...], full: tuple[int, int]) -> bool:
    """``shape`` is 2-D and broadcasts to ``full`` (a compact ready array)."""
    return len(shape) == 2 and all(a in (1, b) for a, b in zip(shape, full, strict=True))


def _block(n: int, parts: int) -> int:
    return math.ceil(n / parts)


def valid_extent(n: int, parts: int) -> np.ndarray:
    """Elements each of ``parts`` blocks really holds when ``n`` is cut in ceil-sized blocks."""
    t = _block(n, parts)
    return np.clip(n - np.arange(parts) * t, 0, t)


def count_nonzero_last(values: np.ndarray) -> np.ndarray:
    """Nonzeros along the last axis as float64: ``np.count_nonzero(values, axis=-1)``."""
    counts = _count_nonzero(values, uniform=False)
    assert isinstance(counts, np.ndarray)
    return counts


def _count_nonzero(values: np.ndarray, uniform: bool = True) -> np.ndarray | float:
    """`count_nonzero_last`; with ``uniform``, the one count ``k`` as a float when no value
    is zero (one count over the flags instead of the per-row sums).

    NumPy's per-row count over a short last axis (a PE's tile) runs element by element,
    slower than the FMAC it prices; here the != 0 flags are packed eight to a uint64 word
    and counted with ``np.bitwise_count`` (one popcount per word), then the words summed.
    """
    k = values.shape[-1]
    flat = values.reshape(-1, k)
    uniform = uniform and flat.size > 0
    if k == 1:
        flags = flat[:, 0] != 0
        if uniform and np.count_nonzero(flags) == flags.size:
            return 1.0
        return flags.astype(np.float64).reshape(values.shape[:-1])
    if k > 64:      # long rows: NumPy's own count is fast there, the word sums would not be
        return np.count_nonzero(flat, axis=-1).astype(np.float64).reshape(values.shape[:-1])
    width = -(-k // 8) * 8
    if uniform or width == k:
        flags = np.not_equal(flat, 0)
        if uniform and np.count_nonzero(flags) == flat.size:
            return float(k)
    if width != k:
        flags = np.zeros((flat.shape[0], width), dtype=bool)
        np.not_equal(flat, 0, out=flags[:, :k])
    words = np.bitwise_count(flags.view(np.uint64))
    total = words[:, 0].astype(np.float64)
    for j in range(1, words.shape[1]):
        total += words[:, j]
    return total.reshape(values.shape[:-1])


class MeshTensor:
    """Global ``shape`` distributed over ``rect`` of ``fabric`` by ``(row_map, col_map)``."""

    def __init__(self, fabric: Fabric, rect: Rect, shape: tuple[int, ...], dtype: str,
                 row_map: AxisMap, col_map: AxisMap, tiles: np.ndarray | None,
                 ready: np.ndarray | float = 0.0, name: str | None = None,
                 nnz: np.ndarray | None = None, allocate: bool = True,
                 own_ready: bool = False) -> None:
        self.fabric = fabric
        self.rect = rect
        self.shape = tuple(int(s) for s in shape)
        self.dtype = check_dtype(dtype)
        self.row_map = row_map
        self.col_map = col_map
        self._check_maps()
        self.tile_shape = self._tile_shape()
        if tiles is not None and tiles.shape != (*rect.shape, *self.tile_shape):
            raise ShapeError(f"tiles of shape {tiles.shape} do not match rectangle {rect} and "
                             f"tile shape {self.tile_shape}")
        self.tiles = tiles
        # ``_ready`` may be compact (it broadcasts to the rectangle's shape): a scalar ready
        # time is kept as one value, and the primitives over the whole fabric hand over
        # compact arrays (`Fabric`'s compact state); `ready` makes it full when read
        if own_ready and isinstance(ready, np.ndarray) and ready.dtype == np.float64 \
                and _broadcasts(ready.shape, rect.shape):
            self._ready = ready                   # a fresh array the primitive hands over
        elif isinstance(ready, np.ndarray) and ready.shape == rect.shape:
            self._ready = ready.astype(float)     # a copy: callers may reuse theirs
        elif np.ndim(ready) == 0:
            self._ready = np.full((1, 1), ready, dtype=float)
        else:
            self._ready = np.broadcast_to(np.asarray(ready, dtype=float), rect.shape).copy()
        self.name = name or fabric.fresh_name("t")
        self._nnz_override = nnz
        self._info: WaveletInfo | None = None
        self.valid = self._valid_elements()
        self._info = _INFO_CACHE.get(self._layout_key())
        self.allocated = False
        if allocate:
            # every PE holds the padded tile: one size, which the allocator keeps as a
            # scalar (no wafer-sized pass per tensor); kernels' tensors that hold other
            # bytes say so by overriding `bytes_per_pe`
            nbytes: np.ndarray | int = self.bytes_per_pe() \
                if type(self).bytes_per_pe is not MeshTensor.bytes_per_pe \
                else int(np.prod(self.tile_shape)) * BYTES[self.dtype]
            fabric.sram.alloc(self.name, rect.row, rect.col, nbytes, rect.shape)
            self.allocated = True

    @property
    def ready(self) -> np.ndarray:
        """[rows, cols] of the rectangle: when each PE's tile is complete (made full)."""
        ready = self._ready
        if isinstance(ready, np.ndarray) and ready.shape != self.rect.shape \
                and _broadcasts(ready.shape, self.rect.shape):
            ready = self._ready = np.array(np.broadcast_to(ready, self.rect.shape))
        return ready

    @ready.setter
    def ready(self, value: np.ndarray) -> None:
        self._ready = value

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, fabric: Fabric, array: np.ndarray, rect: Rect | None = None,
                   row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32",
                   name: str | None = None, ready: np.ndarray | float = 0.0) -> MeshTensor:
        """Distribute ``array`` over ``rect`` (default: the whole fabric)."""
        rect = rect or fabric.full
        array = np.asarray(array)
        if row_map == "partial" or col_map == "partial":
            raise ShapeError("from_numpy cannot create a partial-sum layout; distribute the "
                             "value blocked or replicated")
        probe = cls(fabric, rect, array.shape, dtype, row_map, col_map, None, allocate=False)
        tiles = None
        if not fabric.timing_only:
            tiles = probe._scatter(to_storage(array, dtype))
        return cls(fabric, rect, array.shape, dtype, row_map, col_map, tiles, ready, name)

    @classmethod
    def empty(cls, fabric: Fabric, shape: tuple[int, ...], rect: Rect | None = None,
              row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32",
              name: str | None = None, ready: np.ndarray | float = 0.0,
              nnz: np.ndarray | None = None) -> MeshTensor:
        """A tensor with a layout and clocks; zero values, or none in timing-only mode."""
        rect = rect or fabric.full
        probe = cls(fabric, rect, shape, dtype, row_map, col_map, None, allocate=False)
        tiles = None
        if not fabric.timing_only:
            tiles = np.zeros((*rect.shape, *probe.tile_shape), dtype=to_storage(
                np.zeros(0), dtype).dtype)
        return cls(fabric, rect, shape, dtype, row_map, col_map, tiles, ready, name, nnz)

    def like(self, tiles: np.ndarray | None, ready: np.ndarray, *, rect: Rect | None = None,
             shape: tuple[int, ...] | None = None, row_map: AxisMap | str = "same",
             col_map: AxisMap | str = "same", dtype: str | None = None,
             name: str | None = None, nnz: np.ndarray | None = None,
             allocate: bool = True, own_ready: bool = False) -> MeshTensor:
        """A new tensor derived from this one (same layout unless told otherwise).

        ``allocate=False`` for a view of memory that is already charged (a slice of a tile).
        ``own_ready=True``: ``ready`` is a fresh float64 array nobody else holds, kept without
        a copy (the primitives' own results; a full-wafer copy per primitive adds up).
        """
        return MeshTensor(
            self.fabric, rect or self.rect, shape or self.shape, dtype or self.dtype,
            self.row_map if row_map == "same" else row_map,
            self.col_map if col_map == "same" else col_map,
            tiles, ready, name or self.fabric.fresh_name(self.name.split("#")[0]), nnz,
            allocate, own_ready)

    # -- layout --------------------------------------------------------------------------
    def _check_maps(self) -> None:
        axes = [m for m in (self.row_map, self.col_map) if isinstance(m, int)
                and not isinstance(m, bool)]
        for m in (self.row_map, self.col_map):
            if not (m is None or m == "partial" or (isinstance(m, int)
                                                     and not isinstance(m, bool))):
                raise ShapeError(f"mesh axis map {m!r} must be a tensor axis, None or 'partial'")
        for a in axes:
            if not 0 <= a < len(self.shape):
                raise ShapeError(f"tensor of shape {self.shape} has no axis {a} to block over "
                                 f"the mesh")
        if len(axes) == 2 and axes[0] == axes[1]:
            raise ShapeError(f"tensor axis {axes[0]} cannot be blocked over both mesh axes")
        for m, parts, what in ((self.row_map, self.rect.rows, "rows"),
                               (self.col_map, self.rect.cols, "cols")):
            if isinstance(m, int) and not isinstance(m, bool) and self.shape[m] < parts:
                raise GridError(
                    f"axis {m} of size {self.shape[m]} cannot be blocked over {parts} mesh "
                    f"{what}; use a rectangle of at most {self.shape[m]} {what}")

    def _tile_shape(self) -> tuple[int, ...]:
        tile = list(self.shape)
        if isinstance(self.row_map, int):
            tile[self.row_map] = _block(self.shape[self.row_map], self.rect.rows)
        if isinstance(self.col_map, int):
            tile[self.col_map] = _block(self.shape[self.col_map], self.rect.cols)
        return tuple(tile)

    @property
    def valid(self) -> np.ndarray:
        """Elements each PE really holds (kernels may replace it, e.g. by packed wavelets)."""
        return self._valid

    @valid.setter
    def valid(self, value: np.ndarray) -> None:
        self._valid = value
        self._info = None

    def _layout_key(self) -> tuple[object, ...]:
        return (self.rect.shape, self.shape, self.tile_shape, self.row_map, self.col_map)

    def _valid_elements(self) -> np.ndarray:
        """Elements each PE really holds (edge blocks hold fewer when sizes do not divide).

        A pure function of the layout, and kernels make thousands of tensors with the same
        one (every step of a GEMM), so it is computed once per layout and shared read-only.
        """
        key = self._layout_key()
        cached = _VALID_CACHE.get(key)
        if cached is not None:
            return cached
        base = float(np.prod(self.tile_shape)) if self.tile_shape else 1.0
        valid = np.full(self.rect.shape, base)
        for m, axis in ((self.row_map, 0), (self.col_map, 1)):
            if isinstance(m, int):
                parts = self.rect.shape[axis]
                frac = valid_extent(self.shape[m], parts) / max(self.tile_shape[m], 1)
                valid *= frac[:, None] if axis == 0 else frac[None, :]
        valid.flags.writeable = False
        if len(_VALID_CACHE) > _CACHE_LIMIT:
            _VALID_CACHE.clear()
            _INFO_CACHE.clear()
        _VALID_CACHE[key] = valid
        _INFO_CACHE[key] = WaveletInfo.of(valid)
        return valid

    def bytes_per_pe(self) -> np.ndarray:
        """SRAM each PE holds: the full (padded) tile, since buffers are allocated whole.

        Shared read-only per (rectangle shape, bytes), like ``valid``.
        """
        nbytes = int(np.prod(self.tile_shape)) * BYTES[self.dtype]
        key = (self.rect.shape, nbytes)
        cached = _BYTES_CACHE.get(key)
        if cached is None:
            cached = np.full(self.rect.shape, nbytes, dtype=np.int64)
            cached.flags.writeable = False
            if len(_BYTES_CACHE) > _CACHE_LIMIT:
                _BYTES_CACHE.clear()
            _BYTES_CACHE[key] = cached
        return cached

    def _split(self) -> tuple[list[int], list[int], int | None, int | None]:
        """Shape that splits each blocked axis into (parts, tile), and where the parts sit."""
        split_shape: list[int] = []
        r_pos = c_pos = None
        for a, size in enumerate(self.tile_shape):
            if a == self.row_map:
                r_pos = len(split_shape)
                split_shape += [self.rect.rows, size]
            elif a == self.col_map:
                c_pos = len(split_shape)
                split_shape += [self.rect.cols, size]
            else:
                split_shape.append(size)
        rest = [i for i in range(len(split_shape)) if i not in (r_pos, c_pos)]
        return split_shape, rest, r_pos, c_pos

    def _scatter(self, array: np.ndarray) -> np.ndarray:
        """Global array -> tiles[rows, cols, *tile_shape] (zero-padded, no Python PE loop)."""
        split_shape, rest, r_pos, c_pos = self._split()
        full = [self.tile_shape[a] * (self.rect.rows if a == self.row_map else
                                      self.rect.cols if a == self.col_map else 1)
                for a in range(len(self.shape))]
        if list(array.shape) == full:
            padded = array      # blocks divide the axes: no padding copy to make
        else:
            padded = np.zeros(full, dtype=array.dtype)
            padded[tuple(slice(0, s) for s in array.shape)] = array
        blocks = padded.reshape(split_shape)
        # mesh axes that are replicated get a length-1 axis, broadcast below
        lead = [r_pos, c_pos]
        for k, pos in enumerate(lead):
            if pos is None:
                blocks = np.expand_dims(blocks, blocks.ndim)
                lead[k] = blocks.ndim - 1
        tiles = np.transpose(blocks, lead + rest)
        out = np.ascontiguousarray(np.broadcast_to(
            tiles, (self.rect.rows, self.rect.cols, *self.tile_shape)))
        # tiles are the fabric's own memory: never a view of the caller's array
        return out.copy() if np.may_share_memory(out, array) else out

    # -- values --------------------------------------------------------------------------
    def to_numpy(self) -> np.ndarray:
        """Gather the global value (sums partial axes, takes one copy of replicated ones)."""
        if self.tiles is None:
            raise ShapeError(f"tensor {self.name!r} has no values: the fabric runs in "
                             f"timing-only mode")
        tiles = self.tiles.astype(np.float32) if self.dtype != "fp32" else self.tiles
        tiles = tiles.sum(axis=0, keepdims=True, dtype=tiles.dtype) \
            if self.row_map == "partial" else tiles
        tiles = tiles.sum(axis=1, keepdims=True, dtype=tiles.dtype) \
            if self.col_map == "partial" else tiles
        tiles = tiles if isinstance(self.row_map, int) else tiles[:1]
        tiles = tiles if isinstance(self.col_map, int) else tiles[:, :1]
        # interleave each mesh part axis with the tile axis it was cut from, then merge
        order: list[int] = []
        for a in range(len(self.shape)):
            if a == self.row_map:
                order.append(0)
            elif a == self.col_map:
                order.append(1)
            order.append(a + 2)
        unused = [m for m in (0, 1) if m not in order]
        merged = np.transpose(tiles, unused + order).reshape(
            [self.tile_shape[a] * (tiles.shape[0] if a == self.row_map else
                                   tiles.shape[1] if a == self.col_map else 1)
             for a in range(len(self.shape))])
        return np.ascontiguousarray(merged[tuple(slice(0, s) for s in self.shape)])

    def _nnz_compact(self) -> np.ndarray | float:
        """`nnz`, or the one count every PE holds as a float when that is known cheaply (no
        zero in any tile, or a uniform layout in timing-only mode)."""
        if self._nnz_override is not None:
            return self.nnz()
        if self.tiles is None:
            return self._valid_compact()
        return _count_nonzero(self.tiles.reshape(*self.rect.shape, -1))

    def _valid_compact(self) -> np.ndarray | float:
        """`valid`, or its one value as a float when every PE holds the same (the layout's
        own counts, not ones a kernel put in their place)."""
        key = self._layout_key()
        if self._valid is _VALID_CACHE.get(key):
            info = _INFO_CACHE.get(key)
            if info is not None and info.uniform is not None:
                return info.uniform
        return self._valid

    def nnz(self) -> np.ndarray:
        """Nonzeros each PE holds: what zero-skipping hardware actually works on."""
        if self._nnz_override is not None:
            return np.broadcast_to(self._nnz_override, self.rect.shape).astype(float)
        if self.tiles is None:
            return self.valid
        return count_nonzero_last(self.tiles.reshape(*self.rect.shape, -1))

    def wavelets(self) -> np.ndarray:
        """Wavelets one PE's tile occupies on a link (`dtypes.elements_per_wavelet`)."""
        per = elements_per_wavelet(self.dtype)
        return self.valid if per == 1 else np.ceil(self.valid / per)

    def wavelet_info(self) -> WaveletInfo:
        """`WaveletInfo` of `wavelets`: cached per layout, computed once after a kernel
        replaces ``valid``."""
        if self._info is None or elements_per_wavelet(self.dtype) != 1:
            self._info = WaveletInfo.of(self.wavelets())
        return self._info

    def free(self) -> None:
        """Release this tensor's SRAM (its values stay readable)."""
        if self.allocated:
            self.fabric.sram.free(self.name)
            self.allocated = False

    def __repr__(self) -> str:
        return (f"MeshTensor({self.name!r}, shape={self.shape}, dtype={self.dtype}, "
                f"rect={self.rect}, maps=({self.row_map!r}, {self.col_map!r}))")
