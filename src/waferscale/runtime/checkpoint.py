"""Training checkpoints: one safetensors file, written atomically.

What a run needs to continue bit for bit: the model's weights, MemoryX's master weights
and optimizer state, the step (which is also the data position: batch i is a function of
i), and PyTorch's CPU random-number state. The file is written beside the old one and
renamed over it (`os.replace` is atomic on POSIX), so a run killed mid-write leaves the
previous checkpoint intact. A checkpoint that is corrupt, of another model or of another
optimizer is a typed error that names what does not match; the file is never modified
on load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from waferscale.errors import WaferscaleError
from waferscale.runtime.memoryx import MemoryX

FILE = "checkpoint.safetensors"
FORMAT = "waferscale-train-1"


class CheckpointError(WaferscaleError):
    """A checkpoint that cannot be read or does not match the run."""


def save(directory: str | Path, model: torch.nn.Module, memoryx: MemoryX,
         meta: dict[str, Any]) -> Path:
    """Write the checkpoint of ``model`` and ``memoryx`` after ``memoryx.step_count`` steps
    (``meta``: the run's settings, JSON-serialisable) atomically; returns its path."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"--checkpoint {directory}: cannot create the directory "
                              f"({exc.strerror})") from exc
    tensors = {f"model/{n}": p.detach().contiguous() for n, p in model.named_parameters()}
    tensors.update({f"mx/{k}": v.contiguous() for k, v in memoryx.state_dict().items()})
    tensors["rng/torch"] = torch.get_rng_state()
    header = {"format": FORMAT, "step": str(memoryx.step_count),
              "optimizer": memoryx.config.name, "meta": json.dumps(meta, sort_keys=True)}
    tmp = path / (FILE + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path / FILE)
    except OSError as exc:
        raise CheckpointError(f"--checkpoint {directory}: cannot write ({exc.strerror}); the "
                              f"previous checkpoint is untouched") from exc
    return path / FILE


def load(directory: str | Path, model: torch.nn.Module, memoryx: MemoryX
         ) -> dict[str, Any]:
    """Restore ``model``, ``memoryx`` and the RNG from the checkpoint in ``directory``;
    returns its ``meta``. Nothing is changed unless the whole checkpoint matches."""
    file = Path(directory) / FILE
    if not file.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {file} (train with --checkpoint "
                              f"{directory} first)")
    try:
        tensors = load_file(str(file))
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {file} is corrupt or not a safetensors file "
                              f"({exc}); it was left as it is") from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {file} is not a waferscale training checkpoint "
                              f"(format {header.get('format')!r}, expected {FORMAT!r})")
    if header.get("optimizer") != memoryx.config.name:
        raise CheckpointError(f"checkpoint {file} was written with optimizer "
                              f"{header.get('optimizer')!r}, this run uses "
                              f"{memoryx.config.name!r}")
    params = dict(model.named_parameters())
    for name, p in params.items():
        t = tensors.get(f"model/{name}")
        if t is None or t.shape != p.shape or t.dtype != p.dtype:
            raise CheckpointError(f"checkpoint {file} does not match the model: model/{name} "
                                  f"is {'missing' if t is None else (tuple(t.shape), t.dtype)},"
                                  f" expected {(tuple(p.shape), p.dtype)}")
    mx_state = {k[3:]: v for k, v in tensors.items() if k.startswith("mx/")}
    try:
        memoryx.load_state_dict(mx_state)
    except (WaferscaleError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {file}: {exc}") from exc
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[f"model/{name}"])
    torch.set_rng_state(tensors["rng/torch"])
    return json.loads(header.get("meta", "{}"))


__all__ = ["CheckpointError", "FILE", "load", "save"]
