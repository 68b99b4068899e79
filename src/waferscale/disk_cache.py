"""The on-disk cache: where it lives, what every entry is keyed on, and how entries are
written and read so that no run ever sees a stale or half-written one.

Three caches live here, each in its own folder: captured graphs
(`compiler.capture_cache`), the kernel sizings the placer measured
(`compiler.sizing_cache`) and the figures of stages the fabric simulated
(`kernels.family.remember`: a training run's first step simulates each distinct GEMM ring). All hold
only what the code would compute again from the same inputs, so every key includes the
environment that computes it (`environment`): the waferscale version and a digest of every
``.py`` and ``.json`` file of the installed package (any edit is a different key, so a
development tree never reads an entry its own code would not write), the versions of
torch, transformers, NumPy and Python, and the entry's layout version. It does not cover a
module constant changed while the program runs (a test that monkeypatches one sets
``WAFERSCALE_NO_CACHE=1``).

Where: ``$WAFERSCALE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/waferscale``, else
``~/.cache/waferscale``. ``WAFERSCALE_NO_CACHE=1`` turns every cache off; deleting the
directory is always safe. Entries are written atomically (a temporary file renamed into
place), so concurrent compiles never read a half-written one; an entry that cannot be read
(truncated, written by another version of a library) counts as a miss and is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """The folder every cache lives under (whether or not caching is on)."""
    root = os.environ.get("WAFERSCALE_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "waferscale"


def enabled() -> bool:
    """False when ``WAFERSCALE_NO_CACHE`` is set (to anything but ``0``)."""
    return os.environ.get("WAFERSCALE_NO_CACHE", "") in ("", "0")


def cache_dir(kind: str) -> Path | None:
    """The folder entries of ``kind`` (``captures``, ``sizings``, ``figures``) live in, or
    None when ``WAFERSCALE_NO_CACHE`` is set."""
    return cache_root() / kind if enabled() else None


def usage() -> list[dict[str, Any]]:
    """Each cache folder under `cache_root`: its kind, path, entries and bytes (what
    ``waferscale cache`` prints)."""
    root = cache_root()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [f for f in folder.iterdir() if f.is_file()]
        out.append({"kind": folder.name, "path": str(folder),
                    "entries": sum(f.suffix == ".pkl" for f in files),
                    "bytes": sum(f.stat().st_size for f in files)})
    return out


def clear() -> int:
    """Delete every entry (and any temporary file a killed writer left) under
    `cache_root`; returns the files removed. The folders stay, empty."""
    root = cache_root()
    removed = 0
    for f in root.glob("*/*") if root.is_dir() else []:
        if f.is_file():
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
                removed += 1
    return removed


def source_files() -> list[Path]:
    """Every ``.py`` and ``.json`` file of the waferscale package (this file's folder), in
    a stable order: the code and the presets' configs an entry is computed with."""
    root = Path(__file__).resolve().parent
    return sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json")
                  and "__pycache__" not in p.parts)


@lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of `source_files` (each one's path in the package and bytes)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in source_files():
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


@lru_cache(maxsize=1)
def _environment() -> tuple[tuple[str, Any], ...]:
    return (("waferscale", _version("waferscale")), ("source", source_digest()),
            ("torch", _version("torch")), ("transformers", _version("transformers")),
            ("numpy", _version("numpy")), ("python", list(sys.version_info[:2])))


def environment() -> dict[str, Any]:
    """What computes an entry, besides its own inputs (see the module docstring); read
    once per process."""
    return dict(_environment())


def key(kind: str, fmt: int, parts: dict[str, Any]) -> str:
    """SHA-256 naming the entry of ``kind`` (layout version ``fmt``) computed from
    ``parts`` (JSON-able values) in this environment."""
    doc = {"kind": kind, "format": fmt, **environment(), "parts": parts}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def write(kind: str, k: str, data: bytes) -> None:
    """Store ``data`` as entry ``k`` of ``kind``, atomically (no-op when the cache is off
    or not writable: a cache never fails a compile)."""
    root = cache_dir(kind)
    if root is None:
        return
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{k}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, root / f"{k}.pkl")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def read(kind: str, k: str, decode: Callable[[Any], Any] = lambda entry: entry) -> Any:
    """Entry ``k`` of ``kind`` unpickled and passed through ``decode``, or None when it is
    absent, the cache is off, or it cannot be read or decoded (then it is removed)."""
    root = cache_dir(kind)
    if root is None:
        return None
    path = root / f"{k}.pkl"
    try:
        with open(path, "rb") as f:
            return decode(pickle.load(f))  # noqa: S301 - our own cache, written by `write`
    except FileNotFoundError:
        return None
    except Exception:  # unreadable: a truncated file, another library version's pickle
        with contextlib.suppress(OSError):
            path.unlink()
        return None


__all__ = ["cache_dir", "cache_root", "clear", "enabled", "environment", "key", "read",
           "source_digest", "source_files", "usage", "write"]
