"""A disk cache of captured graphs, so an estimate compile of a preset skips building and
exporting the model when the same capture was made before.

Why: ``waferscale compile genslm-25b --estimate`` spent most of its wall time importing
transformers, building the meta model and running ``torch.export`` (about 7 of 10 s on
the development machine); the plan, placement and report after the capture take about
a second. A capture depends only on the model's config, the input shapes and dtypes and
the code that captures it, so it can be reused across runs.

What is cached: the graph `capture.capture` returns (before lowering, which edits it in
place), the example inputs as meta tensors (shapes and dtypes: all an estimate reads of
them) and the compile's train-mode note. Entries are keyed by a SHA-256 of

* the caller's description of the model (preset name, sequence length, batch, layers),
* the waferscale version and a digest of every ``.py`` and ``.json`` file of the
  installed package (the capture code, the preset table and the shipped GPT-NeoX configs:
  any edit to them is a different key, so a development tree never reads a stale entry),
* the torch, transformers and Python versions (the exported graph is theirs),
* `FORMAT` (the layout of an entry).

Where: ``$WAFERSCALE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/waferscale``, else
``~/.cache/waferscale``; entries live under ``captures/`` there, one file each, written
atomically (a temporary file renamed into place), so concurrent compiles never read a
half-written entry. ``WAFERSCALE_NO_CACHE=1`` turns the cache off; deleting the directory
is always safe. An entry that cannot be read (truncated, written by another version of a
library) counts as a miss and is removed.

Pickling: ``Node.fn`` holds torch op overloads, which pickle refuses; they are written as
their qualified names (``aten::mm.default``) and looked up in ``torch.ops`` on load. The
graph's ``out_spec`` (the model's output structure, a pytree spec naming a transformers
class) is kept pickled on load (`PickledSpec`): unpickling it imports transformers, about
0.6 s of CPU that an estimate, which never calls the program, does not need.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import pickle
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from waferscale.ir import Graph

#: Layout of a cache entry; bump it when `save` writes something `load` cannot read.
FORMAT = 2


def cache_dir() -> Path | None:
    """The directory captures are cached in, or None when ``WAFERSCALE_NO_CACHE`` is set."""
    if os.environ.get("WAFERSCALE_NO_CACHE", "") not in ("", "0"):
        return None
    root = os.environ.get("WAFERSCALE_CACHE_DIR")
    if root:
        return Path(root) / "captures"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "waferscale" / "captures"


@lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of every ``.py`` and ``.json`` file of the waferscale package (path and
    bytes): what a capture's code and the presets' configs are made of."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json")
                       and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def key(**parts: Any) -> str:
    """The cache key of a capture described by ``parts`` (JSON-able values), in the
    environment that makes it (see the module docstring)."""
    from waferscale import __version__

    doc = {"format": FORMAT, "waferscale": __version__, "source": source_digest(),
           "torch": torch.__version__, "transformers": _version("transformers"),
           "python": list(sys.version_info[:2]), "parts": parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


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
    root = cache_dir()
    if root is None:
        return
    buf = io.BytesIO()
    spec, g.out_spec = g.out_spec, None
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(
            {"graph": g, "out_spec": pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL),
             "example": pytree.tree_map(_meta, example_inputs), "note": note})
    finally:
        g.out_spec = spec
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{k}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, root / f"{k}.pkl")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load(k: str) -> tuple[Graph, Any, str] | None:
    """The capture stored under ``k``: ``(graph, example inputs on meta, note)``, or None.
    The graph's ``out_spec`` is a `PickledSpec`."""
    root = cache_dir()
    if root is None:
        return None
    path = root / f"{k}.pkl"
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)  # noqa: S301 - our own cache directory, written by save
        g, example, note = entry["graph"], entry["example"], entry["note"]
        g.out_spec = PickledSpec(entry["out_spec"])
    except FileNotFoundError:
        return None
    except Exception:  # unreadable: a truncated file, another library version's pickle
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if not isinstance(g, Graph) or not isinstance(note, str):
        return None
    return g, example, note


__all__ = ["FORMAT", "PickledSpec", "cache_dir", "key", "load", "save", "source_digest"]
