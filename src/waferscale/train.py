"""Training on the simulated wafer: the user's model and loop, the wafer's gradients,
MemoryX's optimizer.

``Trainer`` runs a training step the way a user writes it, ``loss = model(**batch).loss;
loss.backward()``, with the model compiled by ``torch.compile(backend="waferscale")`` in
the chosen mode (pipelined when it fits, weight streaming otherwise, or as asked): the
forward and backward graphs run on the simulated wafer and give eager's gradients. The
optimizer step is MemoryX's (`runtime.memoryx`): it owns the fp32 master weights and the
optimizer state and streams the new weights back, matching `torch.optim` numerically.
Each step reports its loss and the simulated samples/s of the step (the compiled graphs'
timelines: `runtime.weight_streaming` in weight-streaming mode, the pipeline's periods in
pipelined mode). Checkpoints (`runtime.checkpoint`) make a resumed run continue bit for
bit.

``systems=N`` trains on a cluster of N simulated systems (`runtime.cluster`, on Ray): the
global batch ``batches(i)`` is split over the systems, SwarmX sums their gradients in a
fixed tree order and MemoryX updates once; the model and the step the user wrote are the
same (docs/clusters.md). With N = 1 nothing of Ray is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from waferscale import backend
from waferscale.api import MODES
from waferscale.compiler.errors import CompileError
from waferscale.runtime import checkpoint
from waferscale.runtime.memoryx import MemoryX, OptimizerConfig
from waferscale.runtime.weight_streaming import step_samples_per_second


@dataclass(frozen=True)
class StepResult:
    """One training step: its loss, the simulated throughput and how it was run."""

    step: int
    loss: float
    samples_per_second: float
    mode: str
    wall_seconds: float


@dataclass
class Trainer:
    """A model, its MemoryX and the compiled step (module docstring).

    ``batches(i)`` gives the keyword inputs of step i (with ``labels=`` for a causal LM):
    a function of i, so the data position of a checkpoint is its step. ``systems``: how
    many simulated systems share each step's batch (data parallel, on Ray when > 1);
    ``address``: a running Ray cluster to join instead of starting a local one.
    """

    model: torch.nn.Module
    batches: Callable[[int], dict[str, Any]]
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mode: str = "auto"
    spec: str = "wse2"
    max_side: int | None = None
    systems: int = 1
    address: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.mode == "estimate":
            raise CompileError(f"training mode {self.mode!r}: use auto, pipelined or "
                               f"weight_streaming")
        from waferscale.runtime.swarmx import check_systems

        check_systems(self.systems)
        self.memoryx = MemoryX(self.model, self.optimizer)
        self._graphs: list[Any] = []
        self._cluster: Any = None
        if self.systems > 1:
            from waferscale.runtime.cluster import Cluster

            if self.mode == "pipelined":
                raise CompileError(f"{self.systems} systems run in weight-streaming mode "
                                   f"(SwarmX streams every layer's weights to all of "
                                   f"them): use mode weight_streaming or auto")
            self.mode = "weight_streaming"
            self._cluster = Cluster(self.model, self.optimizer, self.systems,
                                    mode=self.mode, spec=self.spec, max_side=self.max_side,
                                    address=self.address)
            return
        self._step = torch.compile(self.model, backend="waferscale",
                                   options={"mode": self.mode, "spec": self.spec,
                                            "max_side": self.max_side})

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Systems lost during the run and what was done (a cluster; empty otherwise)."""
        return self._cluster.faults if self._cluster is not None else []

    def inject_fault(self, step: int, system: int) -> None:
        """Kill system ``system`` in the middle of step ``step`` (tests of recovery)."""
        if self._cluster is None:
            raise CompileError("inject_fault needs a cluster (systems > 1)")
        self._cluster.inject_fault(step, system)

    def close(self) -> None:
        """Stop the cluster's actors (and the local Ray it started); no-op on one system."""
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def step_count(self) -> int:
        return self.memoryx.step_count

    def run(self, steps: int) -> Iterator[StepResult]:
        """Steps ``step_count + 1 .. steps``, one result each."""
        if self._cluster is not None:
            yield from self._run_cluster(steps)
            return
        self.model.train()
        while self.memoryx.step_count < steps:
            i = self.memoryx.step_count
            batch = self.batches(i)
            t0 = time.perf_counter()
            before = len(backend.COMPILED)
            out = self._step(**batch)
            loss = out.loss if hasattr(out, "loss") else out
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise CompileError("a training step needs a scalar loss: call the model with "
                                   "labels= or return the loss")
            loss.backward()
            if len(backend.COMPILED) > before:   # (re)compiled this step
                self._graphs = backend.COMPILED[before:]
            self.memoryx.apply()
            n = _batch_size(batch)
            yield StepResult(i + 1, float(loss.detach()), self.samples_per_second(n),
                             self.modes(), time.perf_counter() - t0)

    def _run_cluster(self, steps: int) -> Iterator[StepResult]:
        cluster = self._cluster
        try:
            while cluster.step_count < steps:
                i = cluster.step_count
                batch = self.batches(i)
                t0 = time.perf_counter()
                loss = cluster.step(batch)
                self.memoryx.step_count = cluster.step_count
                n = _batch_size(batch)
                yield StepResult(i + 1, loss, cluster.samples_per_second(n), self.modes(),
                                 time.perf_counter() - t0)
        except GeneratorExit:             # the caller stopped early: still hand back
            cluster.pull(self.memoryx)
            raise
        cluster.pull(self.memoryx)         # the user's model holds the trained weights

    def modes(self) -> str:
        if self._cluster is not None:
            return f"{self.mode} x{self.systems}"
        return "+".join(sorted({c.program.mode for c in self._graphs})) or "?"

    def samples_per_second(self, batch: int) -> float:
        """Simulated throughput of one step (`weight_streaming.step_samples_per_second`);
        ``batch``: the global batch."""
        if self._cluster is not None:
            return self._cluster.samples_per_second(batch)
        return step_samples_per_second(self._graphs, self.spec, batch,
                                            self.optimizer.name)

    def save(self, directory: str, meta: dict[str, Any]) -> str:
        if self._cluster is not None:
            self._cluster.pull(self.memoryx)
        return str(checkpoint.save(directory, self.model, self.memoryx, meta))

    def resume(self, directory: str) -> dict[str, Any]:
        meta = checkpoint.load(directory, self.model, self.memoryx)
        if self._cluster is not None:
            self._cluster.push(self.memoryx)
        return meta


def _batch_size(batch: dict[str, Any]) -> int:
    for v in batch.values():
        if isinstance(v, torch.Tensor) and v.dim():
            return int(v.shape[0])
    return 1


def genome_batches(fasta: str, vocab: int, *, seq: int, batch: int
                   ) -> Callable[[int], dict[str, Any]]:
    """Step i's batch: ``batch`` genomes from the FASTA file starting at record
    ``i * batch`` (round robin), tokenised to ``seq`` codons, labels = the inputs (the
    model shifts them); padding is ignored by the loss."""
    from pathlib import Path

    from waferscale.errors import WaferscaleError
    from waferscale.workloads import genome_batch, read_fasta

    if not Path(fasta).is_file():
        raise WaferscaleError(f"--fasta {fasta}: no such file")
    records = read_fasta(fasta)

    def make(i: int) -> dict[str, Any]:
        k = (i * batch) % len(records)
        gb = genome_batch(records[k:] + records[:k], None, seq, batch)
        if int(gb.input_ids.max()) >= vocab:
            raise WaferscaleError(f"token id {int(gb.input_ids.max())} is outside the model's "
                                  f"vocabulary of {vocab}: use a GenSLM model for genomes")
        return {"input_ids": gb.input_ids, "labels": gb.labels}

    return make


def train_on_genomes(model_name: str, fasta: str, *, steps: int, batch: int, seq: int,
                     lr: float, optimizer: str = "adamw", mode: str = "auto",
                     spec: str = "wse2", layers: int | None = None,
                     checkpoint_dir: str | None = None, resume: bool = False,
                     eager: bool = False, max_side: int | None = None,
                     systems: int = 1, address: str | None = None,
                     on_step: Callable[[StepResult], None] | None = None,
                     same_batch: bool = False) -> dict[str, Any]:
    """`waferscale train`: train MODEL on genomes from FASTA for ``steps`` steps on the
    simulated wafer, checkpointing after every step when asked; with ``eager``, the same
    steps in eager PyTorch beside it (the loss curves compared). ``systems`` > 1: a
    cluster (``batch`` is the global batch, split evenly over the systems);
    ``same_batch``: every step reads the first batch (the model fits it, so the loss
    falls within a few steps: the demo)."""
    import copy

    from waferscale.errors import WaferscaleError
    from waferscale.models import load_model
    from waferscale.runtime.swarmx import check_systems, split_batch

    if steps < 1 or batch < 1 or seq < 2:
        raise WaferscaleError(f"--steps {steps} and --batch {batch} must be at least 1 and "
                              f"--seq {seq} at least 2")
    check_systems(systems)
    split_batch(batch, systems)
    if address is not None and systems == 1:
        raise WaferscaleError(f"--address {address}: one system trains in this process; "
                              f"add --systems 2 or more to use a Ray cluster")
    if systems > 1:
        from waferscale.runtime.cluster import check_address

        check_address(address)          # or RAY_ADDRESS: before the model is built
    if systems > 1 and mode == "pipelined":
        raise WaferscaleError(f"--systems {systems} runs in weight-streaming mode (SwarmX "
                              f"streams every layer's weights to all systems): use --mode "
                              f"weight-streaming or auto")
    if resume and checkpoint_dir is None:
        raise WaferscaleError("--resume needs --checkpoint DIR (where the checkpoint is)")
    if resume and eager:
        raise WaferscaleError("--eager compares a run from its first step: drop --resume or "
                              "--eager")
    torch.manual_seed(0)
    model, _, vocab = load_model(model_name, seq=seq, batch=batch, layers=layers)
    reference = copy.deepcopy(model) if eager else None
    batches = genome_batches(fasta, vocab, seq=seq, batch=batch)
    if same_batch:
        first = batches(0)
        batches = lambda i: first  # noqa: E731 - the data position stays the step
    config = OptimizerConfig(optimizer, lr=lr)
    t_start = time.perf_counter()
    trainer = Trainer(model, batches, config, mode=mode.replace("-", "_"), spec=spec,
                      max_side=max_side, systems=systems, address=address)
    try:
        start_seconds = time.perf_counter() - t_start
        meta = {"model": model_name, "seq": seq, "batch": batch, "lr": lr, "layers": layers,
                "optimizer": optimizer}
        start = 0
        if resume:
            saved = trainer.resume(checkpoint_dir)  # type: ignore[arg-type]
            mismatch = {k: (saved.get(k), v) for k, v in meta.items() if saved.get(k) != v}
            if mismatch:
                said = ", ".join(f"{k} {a!r} there, {b!r} here"
                                 for k, (a, b) in mismatch.items())
                raise WaferscaleError(f"--resume: the checkpoint was written by another run "
                                      f"({said})")
            start = trainer.step_count
        t0 = time.perf_counter()
        rows = []
        for r in trainer.run(steps):
            rows.append(r)
            if checkpoint_dir is not None:
                trainer.save(checkpoint_dir, meta)
            if on_step is not None:
                on_step(r)
        wafer_wall = time.perf_counter() - t0
        faults = list(trainer.faults)
        modes = trainer.modes()
    finally:
        trainer.close()
    out: dict[str, Any] = {
        "model": model_name, "fasta": fasta, "steps": steps, "start_step": start,
        "batch": batch, "seq": seq, "optimizer": optimizer, "lr": lr, "mode": modes,
        "systems": systems, "batch_per_system": batch // systems,
        "losses": [r.loss for r in rows],
        "samples_per_second": rows[-1].samples_per_second if rows else 0.0,
        "wall_seconds": wafer_wall, "step_wall_seconds": [r.wall_seconds for r in rows],
        "parameters": trainer.memoryx.parameters,
        "checkpoint": checkpoint_dir}
    if systems > 1:
        out.update(cluster_start_seconds=start_seconds, faults=faults)
    torch._dynamo.reset()
    if reference is not None:
        t1 = time.perf_counter()
        opt = config.torch_optimizer(list(reference.parameters()))
        reference.train()
        eager_losses, eager_steps = [], []
        for i in range(start, steps):
            t_step = time.perf_counter()
            loss = reference(**batches(i)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            eager_losses.append(float(loss.detach()))
            eager_steps.append(time.perf_counter() - t_step)
        out.update(eager_losses=eager_losses, eager_wall_seconds=time.perf_counter() - t1,
                   eager_step_wall_seconds=eager_steps,
                   max_loss_difference=max((abs(a - b) for a, b in
                                            zip(out["losses"], eager_losses, strict=True)),
                                           default=0.0))
    return out




#: `waferscale demo`'s training run: a few steps of the whole 8-layer model on one
#: 256-codon window, in weight-streaming mode with every stage simulated on at most
#: 32 x 32 PEs (each step simulates every stage of both graphs on the fabric; a whole
#: wafer per stage would take the demo's minutes many times over).
DEMO_TRAINING = {"steps": 4, "seq": 256, "batch": 1, "lr": 1e-3, "mode": "weight_streaming",
                 "max_side": 32, "same_batch": True}


def demo_training(fasta: str, on_step: Callable[[StepResult], None] | None = None
                  ) -> dict[str, Any]:
    """A few AdamW steps of GenSLM-25M (all 8 layers) on the first window of the genomes
    in ``fasta`` on the simulated wafer, and the same steps in eager PyTorch: the loss
    falling on both, step by step (`train_on_genomes` with ``eager=True``,
    `DEMO_TRAINING`)."""
    out = train_on_genomes("genslm-25m", fasta, eager=True, on_step=on_step,
                           **DEMO_TRAINING)  # type: ignore[arg-type]
    out["timing_note"] = (f"samples_per_second times stages capped at "
                          f"{DEMO_TRAINING['max_side']} x {DEMO_TRAINING['max_side']} PEs; "
                          f"the whole wafer's: waferscale compile genslm-25m --train "
                          f"--estimate --seq {DEMO_TRAINING['seq']}")
    return out


__all__ = ["DEMO_TRAINING", "StepResult", "Trainer", "demo_training", "genome_batches",
           "train_on_genomes"]
