"""A cluster of simulated systems on Ray: data parallel, the user's code unchanged.

``Trainer(..., systems=N)`` (`waferscale.train`) hands its model here when N > 1. What the
real cluster does (../shared/reference/hardware.md, "Execution modes"; docs/clusters.md)
and what each part of it is here:

* every **system** is a Ray actor (`SystemActor`): its own process holding its own copy
  of the user's model compiled by ``torch.compile(backend="waferscale")`` (its own wafer
  programs). Each step it receives the weights MemoryX broadcast and its shard of the
  global batch, runs the user's forward and ``backward()`` on its simulated wafer and
  sends its weight gradients out, scaled by its share of the global loss;
* **SwarmX** is an actor (`runtime.swarmx.SwarmX`) that sums the systems' gradients in the
  tree's fixed order (fan-out ``SystemSpec.swarmx_fanout``): the sum does not depend on
  which system finishes first;
* **MemoryX** is an actor holding the fp32 master weights and the optimizer state
  (`runtime.memoryx.MemoryX`, the single-system code): it applies one update per step to
  the reduced gradient and returns the new weights, which go into Ray's object store once
  and are read by every system (the broadcast).

The driver only routes object references: gradients go from the systems to SwarmX to
MemoryX without passing through it. Ray is started on demand (`RaySession`): a local Ray
with this machine's cores, no dashboard, its logs kept off the terminal; ``address`` (or
``RAY_ADDRESS``) joins an existing cluster instead. Nothing here is imported on the
single-system path.

Faults: a system (or SwarmX, or MemoryX) that dies during a step is reported in
`Cluster.faults`, replaced by a new actor, and the step is run again from the state of
the last completed step (MemoryX's state is snapshotted in the object store after every
step; a run that checkpoints every step has the same state on disk). The reduction order
is fixed, so the final weights equal those of a run without the fault, to the bit.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from waferscale.hardware.system import CS2_SYSTEM, SystemSpec
from waferscale.runtime.memoryx import MemoryX, OptimizerConfig
from waferscale.runtime.swarmx import ClusterError, SwarmX, check_systems, split_batch

#: Attempts of one step when actors die during it (each attempt replaces the dead ones).
STEP_ATTEMPTS = 3
#: Seconds to wait for a TCP connection to ``--address`` before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------- Ray session --
class RaySession:
    """Ray for a cluster run: joins what is running, or starts (and later stops) a local
    Ray. ``address``: ``host:port`` of a running cluster's head (``ray start --head``),
    ``ray://host:port`` (Ray Client), ``auto``; None reads ``RAY_ADDRESS``, and with
    neither a local Ray is started with this machine's cores and no dashboard."""

    def __init__(self, address: str | None = None) -> None:
        import ray

        self.owned = False
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.address = address
        if ray.is_initialized():
            return
        check_address(address)
        try:
            if address is None:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
            else:
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"--address {address}: cannot join a Ray cluster there "
                               f"({_one_line(exc)}); start one with `ray start --head` or "
                               f"drop --address and unset RAY_ADDRESS to run a local Ray"
                               ) from exc
        self.owned = True

    def close(self) -> None:
        import ray

        if self.owned and ray.is_initialized():
            ray.shutdown()
        self.owned = False


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_address(address: str | None) -> None:
    """A `ClusterError` with the fix when nothing answers at ``address`` (or, when it is
    None, at ``RAY_ADDRESS``) within a few seconds, instead of Ray's own minute of
    retries; ``auto`` and ``local`` are left to Ray."""
    option = "--address"
    if address is None and os.environ.get("RAY_ADDRESS"):
        address, option = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address is None or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ClusterError(f"{option} {address!r}: use host:port of the Ray head (e.g. "
                           f"127.0.0.1:6379), ray://host:10001, or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)),
                                      timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(f"{option} {address}: no Ray cluster answers there ({reason}); "
                           f"start one with `ray start --head` on that machine, or drop "
                           f"--address and unset RAY_ADDRESS to run a local Ray") from None


# ----------------------------------------------------------------------- the model's bytes --
def pickle_model(model: torch.nn.Module) -> bytes:
    """The model as bytes any Ray worker can load: classes of installed packages by
    reference, the user's own modules (a script, a test file, ``file.py:factory``) by
    value, so a worker that cannot import them still gets them."""
    from ray import cloudpickle

    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}
    by_value = []
    for m in model.modules():
        name = type(m).__module__
        mod = sys.modules.get(name)
        if mod is None or name.split(".")[0] in ("waferscale", "torch", "transformers"):
            continue
        file = os.path.realpath(getattr(mod, "__file__", "") or "")
        if file and not any(file.startswith(p + os.sep) for p in installed):
            by_value.append(mod)
    for mod in by_value:
        cloudpickle.register_pickle_by_value(mod)
    try:
        return cloudpickle.dumps(model)
    finally:
        for mod in by_value:
            cloudpickle.unregister_pickle_by_value(mod)


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def flat_master(mx: MemoryX) -> np.ndarray:
    """MemoryX's fp32 master weights as one flat array (what is broadcast)."""
    if not mx.master:
        return np.zeros(0, np.float32)
    return torch.cat([w.reshape(-1) for w in mx.master]).numpy()


def load_flat(params: list[torch.nn.Parameter], flat: np.ndarray) -> None:
    """Weights streamed in: the fp32 master values in each parameter's dtype (as
    `MemoryX.apply` writes them on one system)."""
    src = torch.from_numpy(np.asarray(flat))
    off = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(src[off:off + n].view(p.shape).to(p.dtype))
            off += n


# -------------------------------------------------------------------------------- actors --
class SystemActor:
    """One simulated system (module docstring): the user's model on its own wafer."""

    def __init__(self, model_bytes: bytes, index: int, mode: str, spec: str,
                 max_side: int | None) -> None:
        from ray import cloudpickle

        from waferscale import backend  # noqa: F401 - registers backend="waferscale"

        self.index = index
        self.spec = spec
        self.model = cloudpickle.loads(model_bytes)
        self.params = [p for _, p in _trainable(self.model)]
        self.size = sum(p.numel() for p in self.params)
        self.model.train()
        self._step = torch.compile(self.model, backend="waferscale",
                                   options={"mode": mode, "spec": spec, "max_side": max_side})
        self.graphs: list[Any] = []

    def ping(self) -> int:
        return os.getpid()

    def step(self, weights: np.ndarray, shard: dict[str, Any], weight: float,
             die: bool = False) -> tuple[tuple[float, tuple[bool, ...]], np.ndarray]:
        """Load the broadcast weights, run the user's step on ``shard``, return (loss,
        which parameters got a gradient) and the gradients x ``weight``, flat fp32."""
        from waferscale import backend

        load_flat(self.params, weights)
        before = len(backend.COMPILED)
        out = self._step(**shard)
        loss = out.loss if hasattr(out, "loss") else out
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ClusterError("a training step needs a scalar loss: call the model with "
                               "labels= or return the loss")
        if die:          # a fault injected by a test: the process dies mid-step
            os._exit(1)
        loss.backward()
        if len(backend.COMPILED) > before:
            self.graphs = backend.COMPILED[before:]
        flat = np.zeros(self.size, np.float32)
        has = []
        off = 0
        for p in self.params:
            n = p.numel()
            if p.grad is not None:
                g = p.grad.detach().to(torch.float32).reshape(-1)
                flat[off:off + n] = (g * weight).numpy()
            has.append(p.grad is not None)
            p.grad = None
            off += n
        return (float(loss.detach()), tuple(has)), flat

    def samples_per_second(self, batch: int, systems: int, optimizer: str,
                           system: SystemSpec) -> float:
        from waferscale.runtime.weight_streaming import step_samples_per_second

        return step_samples_per_second(self.graphs, self.spec, batch, optimizer,
                                            systems=systems, system=system)


class MemoryXActor:
    """MemoryX of a cluster (module docstring): `runtime.memoryx.MemoryX` in its own
    process, fed the reduced gradient."""

    def __init__(self, model_bytes: bytes, config: OptimizerConfig) -> None:
        from ray import cloudpickle

        self.model = cloudpickle.loads(model_bytes)
        self.mx = MemoryX(self.model, config)

    def ping(self) -> int:
        return os.getpid()

    def apply(self, grad: np.ndarray, has: tuple[bool, ...]) -> tuple[int, np.ndarray]:
        src = torch.from_numpy(np.asarray(grad))
        off = 0
        for p, got in zip(self.mx.params, has, strict=True):
            n = p.numel()
            p.grad = src[off:off + n].view(p.shape).to(p.dtype).clone() if got else None
            off += n
        self.mx.apply()
        return self.mx.step_count, flat_master(self.mx)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.mx.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> int:
        self.mx.load_state_dict(state)
        return self.mx.step_count


# ------------------------------------------------------------------------------- cluster --
def shard_batch(batch: dict[str, Any], systems: int) -> list[dict[str, Any]]:
    """The global batch split over ``systems`` along dimension 0 (tensors whose first
    dimension is the batch; anything else goes to every system unchanged)."""
    sizes = {int(v.shape[0]) for v in batch.values()
             if isinstance(v, torch.Tensor) and v.dim()}
    if len(sizes) != 1:
        raise ClusterError(f"cannot split this batch over {systems} systems: its tensors' "
                           f"first dimensions are {sorted(sizes) or 'absent'} (they must "
                           f"all be the batch size)")
    per = split_batch(sizes.pop(), systems)
    return [{k: (v[i * per:(i + 1) * per].contiguous()
                 if isinstance(v, torch.Tensor) and v.dim() else v)
             for k, v in batch.items()} for i in range(systems)]


def loss_weights(shards: list[dict[str, Any]]) -> list[float]:
    """Each system's share of the global loss. The user's loss is a mean; the global
    mean is the shards' means weighted by what they average over: samples, or, when
    ``labels`` marks ignored positions (-100), the positions a causal LM scores
    (``labels[:, 1:] != -100``: transformers' shift). Equal shares are 1/N."""
    labels = [s.get("labels") for s in shards]
    by_position = all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in labels) \
        and any(bool((t == -100).any()) for t in labels)
    counts = [int((t[:, 1:] != -100).sum()) if by_position else 1 for t in labels]
    total = sum(counts)
    if total == 0:
        return [1.0 / len(shards)] * len(shards)
    return [c / total for c in counts]


@dataclass
class Cluster:
    """N simulated systems, SwarmX and MemoryX on Ray (module docstring)."""

    model: torch.nn.Module
    optimizer: OptimizerConfig
    systems: int
    mode: str = "auto"
    spec: str = "wse2"
    max_side: int | None = None
    system: SystemSpec = CS2_SYSTEM
    address: str | None = None
    faults: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import ray

        check_systems(self.systems, self.system)
        try:
            blob = pickle_model(self.model)
        except Exception as exc:  # noqa: BLE001 - whatever pickling raises, one line
            raise ClusterError(f"the model cannot be sent to the systems ({_one_line(exc)}): "
                               f"every attribute of a model trained on a cluster must be "
                               f"picklable (no open files, locks or lambdas)") from exc
        self.session = RaySession(self.address)
        self._ray = ray
        try:
            self._model_ref = ray.put(blob)
            self._inject: dict[int, int] = {}
            self._sps: float | None = None
            self.memoryx = self._new_memoryx()
            self.swarmx = self._new_swarmx()
            self.workers = [self._new_system(i) for i in range(self.systems)]
            mx = MemoryX(self.model, self.optimizer)
            self.weights = ray.put(flat_master(mx))
            self._snapshot = ray.put(mx.state_dict())
            self.step_count = 0
        except BaseException:
            self.session.close()
            raise

    # actors -------------------------------------------------------------------------
    def _new_system(self, i: int) -> Any:
        cls = self._ray.remote(num_cpus=0, max_restarts=0)(SystemActor)
        return cls.options(scheduling_strategy="SPREAD").remote(
            self._model_ref, i, self.mode, self.spec, self.max_side)

    def _new_memoryx(self) -> Any:
        return self._ray.remote(num_cpus=0)(MemoryXActor).remote(self._model_ref,
                                                                 self.optimizer)

    def _new_swarmx(self) -> Any:
        return self._ray.remote(num_cpus=0)(SwarmX).remote(self.systems,
                                                          self.system.swarmx_fanout)

    def inject_fault(self, step: int, system: int) -> None:
        """Make system ``system`` die in the middle of step ``step`` (1-based), once."""
        if not 0 <= system < self.systems:
            raise ClusterError(f"system {system}: the cluster has systems 0..{self.systems - 1}")
        self._inject[step] = system

    # one step -----------------------------------------------------------------------
    def step(self, batch: dict[str, Any]) -> float:
        """One data-parallel step on ``batch`` (the global batch); the global loss."""
        shards = shard_batch(batch, self.systems)
        weights = loss_weights(shards)
        for attempt in range(1, STEP_ATTEMPTS + 1):
            try:
                return self._attempt(shards, weights)
            except self._ray.exceptions.RayActorError as exc:
                self._recover(exc, attempt)
            except self._ray.exceptions.RayTaskError as exc:
                # the user's step raised on a system (a bad loss, a compile error): the
                # same error as on one system, not Ray's wrapper
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, shards: list[dict[str, Any]], weights: list[float]) -> float:
        ray = self._ray
        die = self._inject.pop(self.step_count + 1, None)
        metas, grads = [], []
        for i, (w, s, share) in enumerate(zip(self.workers, shards, weights, strict=True)):
            meta, grad = w.step.options(num_returns=2).remote(self.weights, s, share,
                                                              die == i)
            metas.append(meta)
            grads.append(grad)
        root = self.swarmx.reduce.remote(*grads)
        got = ray.get(metas)
        has = tuple(any(col) for col in zip(*(h for _, h in got), strict=True))
        count, new = self.memoryx.apply.options(num_returns=2).remote(root, has)
        ray.get(count)                    # the update happened (or its failure raises here)
        self.weights = new
        self.step_count += 1
        self._snapshot = self.memoryx.state_dict.remote()
        losses = np.array([loss * share for (loss, _), share in zip(got, weights,
                                                                       strict=True)],
                          np.float64)
        return float(losses.sum())

    def _recover(self, exc: BaseException, attempt: int) -> None:
        """Report the fault, replace every dead actor, restore MemoryX's state of the last
        completed step; the step is then run again."""
        ray = self._ray
        dead = []
        for i, w in enumerate(self.workers):
            if not _alive(ray, w):
                dead.append(f"system {i}")
                self.workers[i] = self._new_system(i)
        if not _alive(ray, self.swarmx):
            dead.append("SwarmX")
            self.swarmx = self._new_swarmx()
        mx_dead = not _alive(ray, self.memoryx)
        if mx_dead:
            dead.append("MemoryX")
            self.memoryx = self._new_memoryx()
        # MemoryX may have died mid-update: its state comes back from the last snapshot
        ray.get(self.memoryx.load_state_dict.remote(self._snapshot))
        self.weights = self.memoryx_weights()
        self.faults.append({"step": self.step_count + 1, "attempt": attempt,
                            "lost": dead or ["unknown actor"], "error": _one_line(exc),
                            "action": "replaced, step rerun from the last completed step"})
        if attempt == STEP_ATTEMPTS:
            raise ClusterError(f"step {self.step_count + 1} failed {attempt} times (actors "
                               f"lost: {', '.join(dead) or 'unknown'}; last error: "
                               f"{_one_line(exc)}); check the Ray cluster's health "
                               f"(`ray status`)") from exc
        self._sps = None

    def memoryx_weights(self) -> Any:
        """A reference to MemoryX's current master weights (flat fp32)."""
        state = self._ray.get(self.memoryx.state_dict.remote())
        names = [n for n, _ in _trainable(self.model)]
        if not names:
            return self._ray.put(np.zeros(0, np.float32))
        return self._ray.put(torch.cat([state[f"master/{n}"].reshape(-1)
                                        for n in names]).numpy())

    # the driver's copy ----------------------------------------------------------------
    def pull(self, memoryx: MemoryX) -> None:
        """MemoryX's state (master weights, optimizer state, step) into the driver's
        ``memoryx`` and its model: for checkpoints and the user's model after a run."""
        memoryx.load_state_dict(self._ray.get(self.memoryx.state_dict.remote()))

    def push(self, memoryx: MemoryX) -> None:
        """The driver's ``memoryx`` (a resumed checkpoint) into the cluster."""
        state = memoryx.state_dict()
        self._ray.get(self.memoryx.load_state_dict.remote(state))
        self._snapshot = self._ray.put(state)
        self.weights = self._ray.put(flat_master(memoryx))
        self.step_count = memoryx.step_count

    def samples_per_second(self, batch: int) -> float:
        """Simulated samples/s of the cluster (system 0's compiled graphs, the tree for
        N systems; all systems run the same graphs on equal shards)."""
        if self._sps is None:
            self._sps = float(self._ray.get(self.workers[0].samples_per_second.remote(
                batch // self.systems, self.systems, self.optimizer.name, self.system)))
        return self._sps

    def close(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            for a in [*self.workers, self.memoryx, self.swarmx]:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.session.close()


def _alive(ray: Any, actor: Any, timeout: float = 30.0) -> bool:
    try:
        ray.get(actor.ping.remote(), timeout=timeout)
        return True
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False


__all__ = ["Cluster", "ClusterError", "MemoryXActor", "RaySession", "SystemActor",
           "check_address",
           "loss_weights", "pickle_model", "shard_batch"]
