"""Typed errors for user mistakes.

Every error a user can cause derives from :class:`WaferscaleError` and carries a one-line
message that names what was wrong and what to change. The CLI prints that line instead of a
traceback; library users can catch the specific class.
"""

from __future__ import annotations


class WaferscaleError(ValueError):
    """Base class: a user-facing mistake with a one-line explanation."""


class SpecError(WaferscaleError):
    """A hardware spec field is missing, malformed or out of range."""


class GridError(WaferscaleError):
    """A rectangle or grid does not fit the fabric, or a shape does not tile it."""


class SramOverflowError(WaferscaleError):
    """A tensor does not fit the 48 KB (spec-dependent) SRAM of a processing element."""


class DtypeError(WaferscaleError):
    """A dtype the hardware model cannot store or compute with."""


class ShapeError(WaferscaleError):
    """Operand shapes or layouts do not agree."""
