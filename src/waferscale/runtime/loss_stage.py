"""Cross-entropy of the model's logits on its own rectangle (the `loss` kernel).

`waferscale run` traces the model without labels (so the compiled program serves any
batch's targets) and computes the loss here from the logits. A model traced *with*
``labels=`` gets the same kernel inside the graph (`kernels.loss.fuse_cross_entropy`).
"""

from __future__ import annotations

import numpy as np
import torch

from waferscale.fabric import Fabric, MeshTensor
from waferscale.hardware.spec import WaferSpec
from waferscale.kernels import loss as loss_kernel
from waferscale.kernels.family import StageRun, to_np


def wafer_cross_entropy(spec: WaferSpec, logits: torch.Tensor, targets: torch.Tensor,
                        ignore_index: int = -100) -> tuple[float, StageRun, tuple[int, int]]:
    """Mean next-token loss of ``logits`` [.., V] against ``targets`` [..] on the fabric."""
    v = logits.shape[-1]
    x = to_np(logits).reshape(-1, v)
    t = targets.reshape(-1).numpy().astype(np.int64)
    rows, cols = min(x.shape[0], 128), min(v, 16)
    fab = Fabric(spec, rows, cols)
    dtype = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[logits.dtype]
    lm = MeshTensor.from_numpy(fab, x, dtype=dtype)
    loss, _grad = loss_kernel.run(lm, t, ignore_index=ignore_index)
    value = float(loss.to_numpy().reshape(-1)[0])
    s = fab.stats()
    return value, StageRun(fab.elapsed(), int(fab.sram.peak()), s["busy_fraction"]), (rows, cols)


__all__ = ["wafer_cross_entropy"]
