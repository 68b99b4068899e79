"""Router ports and their bit masks.

A route names ports as letters so programs read like the SDK's ``rx=WEST, tx=EAST``; the
simulator stores port sets as 5-bit masks so a whole grid of routes is one uint8 array.
"""

from __future__ import annotations

from collections.abc import Iterable

from waferscale.errors import RouteError

N, E, S, W, R = 0, 1, 2, 3, 4
NAMES = ("N", "E", "S", "W", "R")
LONG = ("north", "east", "south", "west", "ramp")
#: Row/column step of a wavelet leaving through each mesh port (the ramp does not move).
DELTA = ((-1, 0), (0, 1), (1, 0), (0, -1), (0, 0))
#: The port a wavelet enters through at the neighbour it reaches.
OPPOSITE = (S, W, N, E, R)
BIT = tuple(1 << p for p in range(5))

_ALIASES = {name: i for i, name in enumerate(NAMES)}
_ALIASES.update({name: i for i, name in enumerate(LONG)})
_ALIASES.update({"RAMP": R, "CE": R})


def port_mask(ports: str | int | Iterable[str | int] | None) -> int:
    """A port set from ``"WR"``, ``"west,ramp"``, ``["W", "R"]`` or port ints.

    Letters are accepted run together because routes are written many times in a program
    and short strings keep them readable.
    """
    if ports is None:
        return 0
    items: list[str | int]
    if isinstance(ports, int):
        items = [ports]
    elif isinstance(ports, str):
        text = ports.strip()
        if "," in text or " " in text:
            items = [p for p in text.replace(",", " ").split() if p]
        elif text.upper() in _ALIASES:
            items = [text]
        else:
            items = list(text)
    else:
        items = list(ports)
    mask = 0
    for item in items:
        if isinstance(item, int):
            if not 0 <= item < 5:
                raise RouteError(f"port {item} does not exist; ports are 0..4 (N, E, S, W, R)")
            mask |= BIT[item]
            continue
        key = item.upper() if len(item) <= 4 else item.lower()
        key = key if key in _ALIASES else item.lower()
        if key not in _ALIASES:
            raise RouteError(f"port {item!r} does not exist; use N, E, S, W or R (ramp)")
        mask |= BIT[_ALIASES[key]]
    return mask


def mask_names(mask: int) -> str:
    """``"ER"`` for a mask with east and ramp: the inverse of `port_mask` for messages."""
    return "".join(NAMES[p] for p in range(5) if mask & BIT[p]) or "-"
