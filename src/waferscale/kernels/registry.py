"""The kernel registry: how the compiler and the runtime find a kernel family.

Every family module defines ``FAMILY`` (a `KernelFamily`); this list is the only place
that names them. Order matters for lowering only where two families could claim one op:
the first that claims it lowers it (none overlap today). The host fallback is last: it
claims nothing and takes what no family lowers.

Adding a kernel: write its module (kernel, cost, family), add its name to ``_MODULES``.
"""

from __future__ import annotations

from importlib import import_module

from waferscale.errors import KernelError
from waferscale.ir import Node
from waferscale.kernels.family import MOVE, RELABEL, KernelFamily, is_layout, moves_data

#: The family modules, in lowering order (adding a kernel family: one name here).
_MODULES = ("gemm", "gemv", "attention", "attention_backward", "norm", "elementwise", "embedding",
            "reduce", "loss", "rms_norm", "dropout", "pointwise", "host")

FAMILIES: dict[str, KernelFamily] = {
    fam.kind: fam for fam in (import_module(f"waferscale.kernels.{m}").FAMILY for m in _MODULES)}
#: The family of every op no kernel lowers.
HOST: KernelFamily = FAMILIES["fallback"]


def family(kind: str) -> KernelFamily:
    """The family of a stage (or node) kind; a typed error for an unknown one."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise KernelError(f"no kernel family {kind!r}; registered: "
                          f"{', '.join(FAMILIES)}") from None


def claiming(node: Node) -> KernelFamily | None:
    """The family whose targets include the node's op, if any."""
    return next((f for f in FAMILIES.values() if f.claims(node)), None)


def supported_ops() -> dict[str, list[str]]:
    """Every ATen op a family lowers, by family (docs and `compile --json`)."""
    return {kind: sorted(f"aten.{t}" if "." not in t else t for t in fam.targets)
            for kind, fam in FAMILIES.items() if fam.targets}


__all__ = ["FAMILIES", "HOST", "MOVE", "RELABEL", "claiming", "family", "is_layout",
           "moves_data", "supported_ops"]
