"""MemoryX: the weight store that owns the master weights and applies the optimizer.

In weight-streaming training the wafer never updates a weight: it sends each layer's
gradients out through SwarmX, and MemoryX, which holds the fp32 master copy and the
optimizer state, applies the update and streams the new weights in for the next step
(docs/weight-streaming.md). This class is that component for functional runs: it owns
fp32 master tensors for a model's parameters, takes the gradients the wafer computed, and
applies AdamW or SGD with momentum with the same arithmetic, in the same order, as
`torch.optim.AdamW` / `torch.optim.SGD` (single-tensor path), so N steps give the same
weights as eager PyTorch with that optimizer. The model's parameters are then overwritten
with the new weights (in the model's dtype: what streams to the wafer).

Its time is `hardware.system.SystemSpec.update_seconds` (memory-bound); its state is what a
checkpoint saves (`state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from waferscale.errors import WaferscaleError

OPTIMIZERS = ("adamw", "sgd")


class OptimizerConfigError(WaferscaleError):
    """An optimizer setting out of range (names the setting and the range)."""


@dataclass(frozen=True)
class OptimizerConfig:
    """The update rule MemoryX applies; the defaults are torch.optim's."""

    name: str = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    momentum: float = 0.9

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise OptimizerConfigError(f"optimizer {self.name!r}: use one of "
                                       f"{', '.join(OPTIMIZERS)}")
        for key, value, lo, hi in (("lr", self.lr, 0.0, math.inf),
                                   ("beta1", self.betas[0], 0.0, 1.0),
                                   ("beta2", self.betas[1], 0.0, 1.0),
                                   ("eps", self.eps, 0.0, math.inf),
                                   ("weight_decay", self.weight_decay, 0.0, math.inf),
                                   ("momentum", self.momentum, 0.0, 1.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and lo <= value < hi or (key == "lr" and value == 0)):
                raise OptimizerConfigError(f"optimizer {key} = {value!r}: must be finite, "
                                           f"in [{lo}, {hi})")

    def torch_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The eager optimizer this config matches (for references and tests)."""
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, eps=self.eps,
                                     weight_decay=self.weight_decay, foreach=False)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, foreach=False)


class MemoryX:
    """Master weights and optimizer state of one model, updated from streamed gradients."""

    def __init__(self, model: torch.nn.Module, config: OptimizerConfig) -> None:
        self.config = config
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.master = [p.detach().to(torch.float32).clone() for p in self.params]
        self.m = [torch.zeros_like(w) for w in self.master]
        self.v = [torch.zeros_like(w) for w in self.master] if config.name == "adamw" else []
        self.step_count = 0

    @property
    def parameters(self) -> int:
        return sum(w.numel() for w in self.master)

    def apply(self) -> None:
        """One optimizer step from the parameters' ``.grad`` (what SwarmX delivered), then
        stream the new weights back into the model and clear the gradients."""
        self.step_count += 1
        c = self.config
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.detach().to(torch.float32)
            w = self.master[i]
            if c.name == "adamw":
                self._adamw(w, g, self.m[i], self.v[i])
            else:
                self._sgd(w, g, i)
            with torch.no_grad():
                p.copy_(w.to(p.dtype))
            p.grad = None

    def _adamw(self, w: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor
               ) -> None:
        """`torch.optim.AdamW`'s single-tensor step, operation for operation."""
        c, t = self.config, self.step_count
        b1, b2 = c.betas
        w.mul_(1 - c.lr * c.weight_decay)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1 = 1 - b1 ** t
        bc2 = 1 - b2 ** t
        step_size = c.lr / bc1
        denom = (v.sqrt() / math.sqrt(bc2)).add_(c.eps)
        w.addcdiv_(m, denom, value=-step_size)

    def _sgd(self, w: torch.Tensor, g: torch.Tensor, i: int) -> None:
        """`torch.optim.SGD` with momentum (dampening 0, not Nesterov), single-tensor."""
        c = self.config
        if c.weight_decay:
            g = g.add(w, alpha=c.weight_decay)
        if c.momentum:
            if self.step_count == 1:
                self.m[i].copy_(g)
            else:
                self.m[i].mul_(c.momentum).add_(g)
            g = self.m[i]
        w.add_(g, alpha=-c.lr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Master weights and optimizer state, flat (for safetensors)."""
        out: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.names):
            out[f"master/{name}"] = self.master[i]
            out[f"m/{name}"] = self.m[i]
            if self.v:
                out[f"v/{name}"] = self.v[i]
        out["step"] = torch.tensor([self.step_count], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict` (a typed error names what is missing or mismatched)."""
        for i, name in enumerate(self.names):
            for key, store in (("master", self.master), ("m", self.m), ("v", self.v)):
                if key == "v" and not self.v:
                    continue
                t = state.get(f"{key}/{name}")
                if t is None or t.shape != store[i].shape:
                    raise WaferscaleError(f"checkpoint does not match the model: {key}/{name} "
                                          f"is {'missing' if t is None else tuple(t.shape)}, "
                                          f"expected {tuple(store[i].shape)}")
                store[i].copy_(t)
        self.step_count = int(state["step"][0])
        with torch.no_grad():
            for p, w in zip(self.params, self.master, strict=True):
                p.copy_(w.to(p.dtype))


__all__ = ["MemoryX", "OPTIMIZERS", "OptimizerConfig", "OptimizerConfigError"]
