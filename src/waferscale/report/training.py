"""Training-step figures in weight-streaming mode, from captured training graphs.

A training step is captured the way a user runs it: ``torch.compile(model,
backend="waferscale")``, a forward with labels and ``loss.backward()``. aot_autograd hands
the backend the forward and the backward graphs; the backend marks which of their inputs
are weights (the parameters are graph inputs there, not constants) and which outputs are
weight gradients, and compiles both in weight-streaming mode. On meta weights nothing is
computed: the graphs are only planned and timed, so a 25B-parameter step is estimated
here in seconds. The step's figures come from both graphs' streaming plans
(`runtime.weight_streaming.training_report`), not from the forward times three.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from waferscale import backend
from waferscale.compiler.capture import first_blocks, repeated_blocks
from waferscale.compiler.errors import CompileError, FitError
from waferscale.compiler.streaming import StreamPlan, replicate_layers
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.hardware.system import CS2_SYSTEM, SystemSpec
from waferscale.runtime.swarmx import check_systems
from waferscale.runtime.weight_streaming import training_plans, training_report

#: Storage dtypes a training estimate can be asked for (the master weights stay fp32 in
#: MemoryX; the wafer computes and streams in this dtype).
TRAIN_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def _as_cpu_if_meta(model: torch.nn.Module, example: dict[str, Any]
                    ) -> Iterator[dict[str, Any]]:
    """A meta-device model traced as if its weights were on the CPU, without memory.

    Why: PyTorch picks an attention implementation by device. On the meta device SDPA
    decomposes to the math path, whose [heads x seq, seq] score matrix the backward keeps
    (at 10,240 tokens it fits no wafer); on the CPU it stays the fused flash attention and
    its backward, which the wafer's attention kernels run. Fake tensors on the CPU device
    (storage-free: `FakeTensorMode`) give the CPU's graph at the meta device's cost."""
    meta = any(p.device.type == "meta" for p in model.parameters())
    if not meta:
        yield example
        return
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        yield {k: torch.empty(v.shape, dtype=v.dtype) if isinstance(v, torch.Tensor) else v
               for k, v in example.items()}


def capture_training_step(model: torch.nn.Module, example: dict[str, Any], *,
                          spec: str = "wse2", max_side: int | None = None
                          ) -> list[Any]:
    """Compile one forward + backward of ``model`` (a causal LM called with ``labels=``)
    in weight-streaming mode; the compiled graphs (`api.CompiledModel`), in order."""
    with _as_cpu_if_meta(model, example) as example:
        return _traced_step(model, example, spec, max_side)


def _traced_step(model: torch.nn.Module, example: dict[str, Any], spec: str,
                 max_side: int | None) -> list[Any]:
    torch._dynamo.reset()
    before = len(backend.COMPILED)
    step = torch.compile(model, backend="waferscale",
                         options={"mode": "weight_streaming", "spec": spec, "on_error": "raise",
                                  "max_side": max_side})
    model.train()
    try:
        out = step(**example)
    except torch._dynamo.exc.BackendCompilerFailed as exc:   # the backend's own error
        raise exc.inner_exception from None
    loss = out.loss if hasattr(out, "loss") else out
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CompileError("a training step needs a scalar loss: call the model with "
                           "labels= (a causal LM) or return the loss")
    loss.backward()
    graphs = backend.COMPILED[before:]
    del backend.COMPILED[before:]
    torch._dynamo.reset()
    return graphs


@dataclass(frozen=True)
class StepPlans:
    """A captured training step's forward and backward streaming plans and what the
    reports say about the capture (`capture_plans`)."""

    fw: StreamPlan
    bw: StreamPlan
    spec: WaferSpec
    info: dict[str, Any]


def _replicated_step(model: torch.nn.Module, example: dict[str, Any], spec: str
                     ) -> tuple[list[Any], StreamPlan, StreamPlan, int] | None:
    """One training step traced with three of the model's identical layers, its plans
    grown to all of them (`compiler.streaming.replicate_layers`); None when the model has
    no such stack or its plans do not show three separable layers.

    Why: dynamo and aot_autograd cost time and memory per op traced, so a 64-layer step
    costs about 20 times a 3-layer one, while the layers' stages are the same (checked
    against whole traces in tests/test_capture_replicate.py)."""
    found = repeated_blocks(model)
    if found is None or len(found[1]) <= 3:
        return None
    prefix, blocks = found
    with first_blocks(model, prefix, 3):
        graphs = _traced_step(model, example, spec, None)
    fw, bw = training_plans([c.program for c in graphs])
    fw_n, bw_n = replicate_layers(fw, len(blocks)), replicate_layers(bw, len(blocks))
    if fw_n is None or bw_n is None:
        return None
    return graphs, fw_n, bw_n, len(blocks)


def capture_plans(model: torch.nn.Module, example: dict[str, Any], *, spec: str = "wse2",
                  replicate: bool | None = None) -> StepPlans:
    """Capture one training step of ``model`` and return its streaming plans (the slow
    part: tracing and planning); the timelines (`training_report`) are then cheap, for
    any system count (`report.scaling`). ``replicate``: trace three of the model's
    identical layers and replicate the middle one (`_replicated_step`); ``None``
    (default) does so for meta-device models, which are only estimated."""
    t0 = time.perf_counter()
    if replicate is None:
        replicate = any(p.device.type == "meta" for p in model.parameters())
    with _as_cpu_if_meta(model, example) as example:
        grown = _replicated_step(model, example, spec) if replicate else None
        if grown is not None:
            graphs, fw, bw, n_layers = grown
            traced = f"3 of {n_layers} identical layers traced; layer 1's plan stands for " \
                     f"layers 1-{n_layers - 2}"
        else:
            graphs = _traced_step(model, example, spec, None)
            fw, bw = training_plans([c.program for c in graphs])
            traced = "every layer traced"
    wspec = get_spec(spec)
    backward = sum(1 for c in graphs if any(n.meta.get("param_grad")
                                            for n in c.program.graph.nodes.values()))
    info = dict(spec=wspec.name,
                graphs={"forward": len(graphs) - backward, "backward": backward},
                parameters=sum(p.numel() for p in model.parameters()),
                traced=traced,
                fallback_ops=[f for c in graphs for f in c.program.fallback_ops()],
                compile_seconds=time.perf_counter() - t0,
                notes=sorted({n for c in graphs for n in c.program.notes}))
    return StepPlans(fw, bw, wspec, info)


def train_estimate(model: torch.nn.Module, example: dict[str, Any], *, batch: int,
                   tokens: int, spec: str = "wse2", systems: int = 1,
                   optimizer: str = "adamw", system: SystemSpec = CS2_SYSTEM,
                   grad_elem_bytes: int = 2) -> dict[str, Any]:
    """Samples/s of a training step in weight-streaming mode, with the per-layer timeline
    (compute, weight in, gradient out, optimizer), what bounds it and the activations'
    policy; ``grad_elem_bytes``: bytes per gradient element streamed out; ``systems``: a
    data-parallel cluster, ``batch`` samples on each system (docs/clusters.md)."""
    check_systems(systems, system)
    plans = capture_plans(model, example, spec=spec)
    rep = training_report(plans.fw, plans.bw, plans.spec, system, batch=batch, tokens=tokens,
                          systems=systems, grad_elem_bytes=grad_elem_bytes,
                          optimizer=optimizer)
    rep.update(system=system.name, **plans.info)
    return rep


def load_meta_step(model: str, *, seq: int, batch: int, dtype: str = "fp16"
                   ) -> tuple[torch.nn.Module, dict[str, Any], int]:
    """A preset (or ``file.py:factory``) on the meta device in ``dtype`` with its
    training inputs (labels = inputs), and the bytes of one streamed gradient element."""
    from waferscale.errors import WaferscaleError
    from waferscale.models import load_model

    if seq < 2 or batch < 1:
        raise WaferscaleError(f"--seq {seq} must be at least 2 and --batch {batch} at least 1")
    if dtype not in TRAIN_DTYPES:
        raise WaferscaleError(f"--dtype {dtype!r}: use one of {', '.join(TRAIN_DTYPES)}")
    m, example, _ = load_model(model, seq=seq, batch=batch, meta=True)
    m = m.to(device="meta", dtype=TRAIN_DTYPES[dtype])   # a factory builds on the CPU
    ids = example["input_ids"].to("meta")
    return m, {"input_ids": ids, "labels": ids}, torch.finfo(TRAIN_DTYPES[dtype]).bits // 8


def train_report(model: str, *, seq: int, batch: int, dtype: str = "fp16",
                 spec: str = "wse2", systems: int = 1, optimizer: str = "adamw"
                 ) -> dict[str, Any]:
    """`waferscale compile MODEL --train --estimate [--systems N]`: a preset (or
    ``file.py:factory``) built on the meta device in ``dtype``, one training step planned
    and timed; with ``systems`` > 1, ``batch`` samples on each of N systems."""
    check_systems(systems)
    m, example, grad_bytes = load_meta_step(model, seq=seq, batch=batch, dtype=dtype)
    try:
        rep = train_estimate(m, example, batch=batch, tokens=batch * seq, spec=spec,
                             systems=systems, optimizer=optimizer,
                             grad_elem_bytes=grad_bytes)
    except FitError as exc:
        raise FitError(f"{exc} (--seq {seq}, --batch {batch}); "
                       f"{_longest_that_fits(model, seq, batch, dtype, spec)}") from exc
    rep.update(model=model, seq=seq, batch=batch, dtype=dtype)
    return rep


def _longest_that_fits(model: str, seq: int, batch: int, dtype: str, spec: str) -> str:
    """What to say about the longest sequence whose training step fits, when ``seq``'s
    does not even one stage at a time (with activations recomputed or offloaded): halve
    until a step fits, then bisect to within a sixteenth of ``seq``. Each try is a capture
    (seconds with three traced layers), so this costs a handful of them."""
    def fits(s: int) -> bool:
        m, example, _ = load_meta_step(model, seq=s, batch=batch, dtype=dtype)
        try:
            capture_plans(m, example, spec=spec)
        except FitError:
            return False
        return True

    bad, good = seq, None
    s = seq // 2
    while s >= 2:
        if fits(s):
            good = s
            break
        bad, s = s, s // 2
    if good is None:
        return "no sequence of 2 or more tokens fits at this batch"
    while bad - good > max(1, seq // 16):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return f"the longest --seq that fits is between {good} and {bad - 1} (use --seq {good})"


__all__ = ["TRAIN_DTYPES", "StepPlans", "capture_plans", "capture_training_step",
           "load_meta_step", "train_estimate", "train_report"]
