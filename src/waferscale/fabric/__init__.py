"""The fast, vectorised fabric model: PE state, MeshTensor, data movement, local compute."""

from waferscale.fabric.grid import Fabric, Rect
from waferscale.fabric.tensor import MeshTensor

__all__ = ["Fabric", "MeshTensor", "Rect"]
