"""The ``waferscale`` backend of ``torch.compile``.

torch.compile hands a backend torch-level graphs; ``aot_autograd`` turns them into core-ATen
forward (and, for training, backward) graphs, which reach ``fw_compiler``/``bw_compiler``
here and go through the same lowering as ``waferscale.compile``. Graph breaks (e.g.
data-dependent control flow) are handled by dynamo: the pieces it can capture run on the
wafer, the rest in eager PyTorch. Each compiled piece is recorded in ``COMPILED`` so its
report can be read.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from waferscale.compiler.capture import fold_constants, from_fx
from waferscale.hardware.spec import get_spec
from waferscale.ir import eliminate_dead

#: Reports of the graphs compiled by the backend, most recent last.
COMPILED: list[Any] = []
_OPTIONS: dict[str, Any] = {"spec": "wse2", "max_side": None}


def configure(spec: str = "wse2", max_side: int | None = None) -> None:
    """Which wafer the backend compiles for (torch.compile passes no options of ours)."""
    _OPTIONS.update(spec=spec, max_side=max_side)


def _compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    from waferscale.api import CompiledModel, lower_graph

    g = from_fx(gm)
    # aot_autograd calls the compiler with its fake mode active: folding under it would
    # store FakeTensors as constants (an arange-built causal mask), which have no values
    # when the program runs, and reading a constant's values (is this mask causal?) fails
    with unset_fake_temporarily():
        fold_constants(g)
        eliminate_dead(g)
        prog = lower_graph(g, get_spec(_OPTIONS["spec"]), max_side=_OPTIONS["max_side"])
    compiled = CompiledModel(prog, tuple(example_inputs))
    COMPILED.append(compiled)
    if prog.mode != "pipelined":
        return gm.forward   # too big to execute here: run eagerly, the report has the plan

    def run(*args: Any) -> Any:
        outs = compiled(*args)
        return outs if isinstance(outs, (list, tuple)) else (outs,)

    run._boxed_call = False  # type: ignore[attr-defined]
    return run


def decompositions(training: bool) -> dict[Any, Any]:
    """Core ATen; for graphs that will be differentiated, less the decomposition of
    ``_scaled_dot_product_flash_attention_for_cpu``. In torch 2.13 that decomposition
    returns the attention *probabilities* where the op returns the log-sum-exp, and the
    fused CPU backward reads that output as the log-sum-exp: every gradient through
    attention came out wrong (0.85 max error on a 1-layer GPT-NeoX whose largest gradient
    is 0.21; torch's own comment says inductor must exclude it). Kept whole, the op runs in
    PyTorch on the host (a reported fallback). Inference never reads that output, so there
    the decomposition stays and attention runs on the wafer's GEMM and softmax kernels."""
    table = torch._decomp.core_aten_decompositions()
    if training:
        table.pop(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default, None)
    return table


def _aot(training: bool) -> Any:
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=_compiler, bw_compiler=_compiler,
                        decompositions=decompositions(training))


_TRAINING, _INFERENCE = _aot(True), _aot(False)


def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """What torch.compile calls (the package's ``torch_dynamo_backends`` entry point names
    it, so ``backend="waferscale"`` works without importing this module). Dynamo compiles
    a frame again when grad mode changes, so the mode here is the caller's."""
    return (_TRAINING if torch.is_grad_enabled() else _INFERENCE)(gm, example_inputs)


def register() -> None:
    """Register ``backend="waferscale"`` with torch.compile (idempotent): for a source tree
    used without installing (no entry point); an installed package is found lazily."""
    from torch._dynamo import list_backends
    from torch._dynamo.backends.registry import register_backend

    if "waferscale" in list_backends(exclude_tags=()):
        return
    register_backend(name="waferscale")(backend)


register()

__all__ = ["COMPILED", "backend", "configure", "register"]
