"""A disk cache of captured graphs, so an estimate compile of a preset skips building and
exporting the model when the same capture was made before.

Why: ``waferscale compile genslm-25b --estimate`` spent most of its wall time importing
transformers, building the meta model and running ``torch.export`` (about 7 of 10 s on
the development machine); the plan, placement and report after the capture take about
a second. A capture depends only on the model's config, the input shapes and dtypes and
the code that captures it, so it can be reused across runs.

What is cached: the graph `capture.capture` returns (before lowering, which edits it in
place), the example inputs as meta tensors (shapes and dtypes: all an estimate reads of
them) and the compile's train-mode note. Entries are keyed by a SHA-256 of the caller's
description of the model (preset name, sequence length, batch, layers) and of the
environment that captures it (`disk_cache.environment`: the package's source digest, the
torch and transformers versions ...); they live in the ``captures/`` folder of the
compiler's cache (`disk_cache`: where, how to turn it off, atomic writes).

Pickling: ``Node.fn`` holds torch op overloads, which pickle refuses; they are written as
their qualified names (``aten::mm.default``) and looked up in ``torch.ops`` on load. The
graph's ``out_spec`` (the model's output structure, a pytree spec naming a transformers
class) is kept pickled on load (`PickledSpec`): unpickling it imports transformers, about
0.6 s of CPU that an estimate, which never calls the program, does not need.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from waferscale import disk_cache
from waferscale.ir import Graph

#: Layout of a cache entry; bump it when `save` writes something `load` cannot read.
FORMAT = 2


KIND = "captures"


def cache_dir() -> Path | None:
    """The directory captures are cached in, or None when ``WAFERSCALE_NO_CACHE`` is set."""
    return disk_cache.cache_dir(KIND)


def key(**parts: Any) -> str:
    """The cache key of a capture described by ``parts`` (JSON-able values), in the
    environment that makes it (see the module docstring)."""
    return disk_cache.key(KIND, FORMAT, parts)


def _op(name: str, overload: str) -> Any:
    """``torch.ops`` lookup of ``namespace::op`` and its overload (the pickled form)."""
    ns, op = name.split("::", 1)
    return getattr(getattr(getattr(torch.ops, ns), op), overload)


class _Pickler(pickle.Pickler):
    """Writes torch op overloads by name (pickle cannot serialise them)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch._ops.OpOverload):
            return _op, (obj._schema.name, obj._overloadname or "default")
        return NotImplemented


class PickledSpec:
    """A cached graph's ``out_spec`` still pickled (see the module docstring): `resolve`
    gives the pytree spec. Only an estimate's graph carries one (`load`'s caller compiles
    it for its report and never calls the program, which would need the real spec)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def resolve(self) -> Any:
        return pickle.loads(self.data)  # noqa: S301 - written by `save` with the entry


def _meta(x: Any) -> Any:
    return torch.empty(x.shape, dtype=x.dtype, device="meta") \
        if isinstance(x, torch.Tensor) else x


def save(k: str, g: Graph, example_inputs: Any, note: str) -> None:
    """Store a capture under key ``k`` (no-op when the cache is off or not writable)."""
    if cache_dir() is None:
        return
    buf = io.BytesIO()
    spec, g.out_spec = g.out_spec, None
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(
            {"graph": g, "out_spec": pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL),
             "example": pytree.tree_map(_meta, example_inputs), "note": note})
    finally:
        g.out_spec = spec
    disk_cache.write(KIND, k, buf.getvalue())


def _decode(entry: dict[str, Any]) -> tuple[Graph, Any, str]:
    g, example, note = entry["graph"], entry["example"], entry["note"]
    if not isinstance(g, Graph) or not isinstance(note, str):
        raise TypeError("not a capture")
    g.out_spec = PickledSpec(entry["out_spec"])
    return g, example, note


def load(k: str) -> tuple[Graph, Any, str] | None:
    """The capture stored under ``k``: ``(graph, example inputs on meta, note)``, or None.
    The graph's ``out_spec`` is a `PickledSpec`."""
    return disk_cache.read(KIND, k, _decode)


__all__ = ["FORMAT", "PickledSpec", "cache_dir", "key", "load", "save"]
