"""Typed errors of the floorplanner and router.

They live beside the code that raises them (and derive from the package's shared classes in
:mod:`waferscale.errors`) so a caller can catch ``WaferscaleError`` for any user mistake or
the specific class here when it wants to react, e.g. fall back to weight streaming.
"""

from __future__ import annotations

from waferscale.errors import RouteError, SramOverflowError, WaferscaleError


class PlacementError(WaferscaleError):
    """A placement problem is malformed or cannot be legalised. The message names the blocks."""


class ConstraintError(PlacementError):
    """Contradictory constraints: pinned or reserved rectangles that overlap or leave the
    wafer, a pinned rectangle too small for its block, a net to an unknown block. Carries
    ``blocks``: the names involved."""

    def __init__(self, message: str, *, blocks: list[str] | None = None) -> None:
        super().__init__(message)
        self.blocks = list(blocks or [])


class BlockSramError(PlacementError, SramOverflowError):
    """A block's state does not fit the SRAM of the whole free wafer. Carries ``block`` and
    ``excess_bytes`` (how much more SRAM it would need)."""

    def __init__(self, message: str, *, block: str, excess_bytes: float) -> None:
        super().__init__(message)
        self.block = block
        self.excess_bytes = excess_bytes


class RoutingError(RouteError):
    """The nets cannot be routed within the colour budget. Carries ``region`` (a
    :class:`~waferscale.fabric.grid.Rect` around the worst PE), ``colors_needed`` and
    ``colors_available``."""

    def __init__(self, message: str, *, region: object, colors_needed: int,
                 colors_available: int) -> None:
        super().__init__(message)
        self.region = region
        self.colors_needed = colors_needed
        self.colors_available = colors_available
