"""Strict JSON for every document the package writes: no NaN or Infinity anywhere.

Python's `json` writes ``NaN`` and ``Infinity`` by default, which strict parsers (jq,
JavaScript's ``JSON.parse``, most other languages) reject, so one infinite figure (a
kernel that does not fit its strip has an infinite period) broke the whole document. A
non-finite number becomes ``null``, and the document says which were and why under
``non_finite``. Kept in a module of its own with no package imports, so that the
compiler (`Program.dumps`) and the CLI (`cli_contract`) share it without a layer reaching
up.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def clean(data: Any, path: str = "", bad: dict[str, str] | None = None) -> Any:
    """``data`` with every NaN or infinite float replaced by None; their paths and what
    they were go into ``bad``."""
    bad = {} if bad is None else bad
    if isinstance(data, np.generic):
        data = data.item()
    if isinstance(data, float) and not math.isfinite(data):
        bad[path or "."] = "NaN" if math.isnan(data) else ("Infinity" if data > 0
                                                             else "-Infinity")
        return None
    if isinstance(data, dict):
        return {k: clean(v, f"{path}.{k}" if path else str(k), bad) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [clean(v, f"{path}[{i}]", bad) for i, v in enumerate(data)]
    return data


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def dumps(data: Any, **kwargs: Any) -> str:
    """``data`` as strict JSON: non-finite numbers are null, and a dict gains
    ``non_finite`` naming each one's path and what it was (extra ``kwargs`` go to
    `json.dumps`, e.g. ``indent``)."""
    bad: dict[str, str] = {}
    out = clean(data, bad=bad)
    if bad and isinstance(out, dict):
        out["non_finite"] = {k: f"{v}: not a finite number (strict JSON has none); see the "
                                f"notes" for k, v in bad.items()}
    return json.dumps(out, default=_jsonable, allow_nan=False, **kwargs)


__all__ = ["clean", "dumps"]
