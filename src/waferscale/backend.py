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

from waferscale.compiler.capture import eliminate_dead, fold_constants, from_fx
from waferscale.hardware.spec import get_spec

#: Reports of the graphs compiled by the backend, most recent last.
COMPILED: list[Any] = []
_OPTIONS: dict[str, Any] = {"spec": "wse2", "max_side": None}


def configure(spec: str = "wse2", max_side: int | None = None) -> None:
    """Which wafer the backend compiles for (torch.compile passes no options of ours)."""
    _OPTIONS.update(spec=spec, max_side=max_side)


def _compiler(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    from waferscale.api import CompiledModel, lower_graph

    g = from_fx(gm)
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


def _make_backend() -> Any:
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=_compiler, bw_compiler=_compiler,
                        decompositions=torch._decomp.core_aten_decompositions())


def register() -> None:
    """Register ``backend="waferscale"`` with torch.compile (idempotent)."""
    from torch._dynamo import list_backends
    from torch._dynamo.backends.registry import register_backend

    if "waferscale" in list_backends(exclude_tags=()):
        return
    register_backend(name="waferscale")(_make_backend())


register()

__all__ = ["COMPILED", "configure", "register"]
