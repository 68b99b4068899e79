"""The kernel sizings the placer measured, shared between stages and kept across runs.

Why: the floorplanner asks each stage's ``time_at`` for some ten thousand rectangles per
placement, and each answer sizes the stage's kernel there (a GEMM searches every grid and
tiling, attention every fold and split): most of the time of placing GenSLM-250M or
GPT-2 medium. Two things make most of these sizings repeat:

* within a run, a transformer's layers are equal but for their names, and sizing never
  reads a name (`Stage.as_sized`), so the layers share their sizings (`stage_key`);
* across runs, the same plan on the same wafer asks for the same rectangles (the placer
  is deterministic), so the memo of one compile serves the next (`load`, `save`).

A memo maps `stage_key` (the stage as sized, the elements its layout ops move, the side
cap) to ``{(rows, cols): (rectangle the kernel takes, or None where it does not fit;
kernel plus data-movement cycles)}``. Every value is what `place.stage_time_at` computes
from its key alone, given the wafer spec and the code, so an entry is keyed by the spec
and the environment (`disk_cache.environment`: the package's source digest among it); the
plan's stage keys only pick which entry a compile reads. Entries live in the ``sizings/``
folder of the compiler's cache (`disk_cache`).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable
from typing import Any

from waferscale import disk_cache
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Node
from waferscale.kernels.family import Stage

KIND = "sizings"

#: Layout of an entry; bump it when `save` writes something `load` cannot read.
FORMAT = 1

#: `stage_key` -> {(rows, cols): (rectangle or None, cycles)}.
SizingMemo = dict[tuple[Any, ...], dict[tuple[int, int], tuple[tuple[int, int] | None, float]]]


def stage_key(st: Stage, moves: list[Node], max_side: int | None) -> tuple[Any, ...]:
    """What a stage's sizing in a rectangle depends on (besides the spec and the code)."""
    return st.as_sized(), tuple(n.meta.get("numel", 0) for n in moves), max_side


def key(spec: WaferSpec, stage_keys: Iterable[tuple[Any, ...]]) -> str:
    """The entry of a plan on ``spec``: its distinct stage keys, in a stable order."""
    stages = hashlib.sha256("\n".join(sorted({repr(k) for k in stage_keys})).encode())
    return disk_cache.key(KIND, FORMAT, {"spec": repr(spec), "stages": stages.hexdigest()})


def entries(memo: SizingMemo) -> int:
    """Sizings in a memo (`save` writes a memo only when a compile added some)."""
    return sum(len(v) for v in memo.values())


def _decode(memo: Any) -> SizingMemo:
    if not isinstance(memo, dict):
        raise TypeError("not a sizing memo")
    return memo


def load(k: str) -> SizingMemo:
    """The memo stored under ``k``, or an empty one."""
    return disk_cache.read(KIND, k, _decode) or {}


def save(k: str, memo: SizingMemo) -> None:
    """Store a memo under ``k`` (no-op when the cache is off or not writable)."""
    if disk_cache.cache_dir(KIND) is not None:
        disk_cache.write(KIND, k, pickle.dumps(memo, protocol=pickle.HIGHEST_PROTOCOL))


__all__ = ["FORMAT", "KIND", "SizingMemo", "entries", "key", "load", "save", "stage_key"]
