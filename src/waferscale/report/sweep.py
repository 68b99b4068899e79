"""`waferscale sweep`: a grid of training-step estimates as Ray tasks, one table out.

The grid is model x sequence length x wafer spec x cluster size (x per-system batch,
dtype, optimizer). The slow part of a configuration is capturing and planning its training
step (`report.training.capture_plans`); the cluster size only changes the SwarmX timeline
(`report.scaling.step_row`), so one Ray task captures a (model, seq, spec, batch) point and
returns a row per cluster size. Tasks run on the same engine as a functional cluster
(`runtime.cluster.RaySession`: a local Ray with this machine's cores, or ``--address``),
one CPU each.

The table is reproducible: the rows are sorted by configuration, every figure comes from
the deterministic planners, and nothing that varies between runs (wall times, hosts) is in
it; those go in the JSON beside it. A configuration that cannot be estimated (a model
without a config at that length, a stage that fits no wafer) is a row with its one-line
error, not a failed sweep.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waferscale.errors import WaferscaleError
from waferscale.hardware.system import CS2_SYSTEM, SystemSpec

#: The table's columns, in order.
COLUMNS = ("model", "seq", "spec", "dtype", "optimizer", "batch_per_system", "systems",
           "global_batch", "tree_levels", "seconds_per_step", "samples_per_second",
           "tokens_per_second", "scaling_efficiency", "bound", "activation_policy",
           "swarmx_exposed_seconds", "error")


def _split(text: str | list[Any], option: str, cast: Callable[[str], Any] = str
           ) -> list[Any]:
    if not isinstance(text, str):
        return list(text)
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise WaferscaleError(f"{option} {text!r}: use a comma-separated list") from None
    if not values:
        raise WaferscaleError(f"{option}: give at least one value")
    return values


def point_rows(model: str, seq: int, spec: str, batch: int, dtype: str, optimizer: str,
               systems: list[int], system: SystemSpec = CS2_SYSTEM) -> list[dict[str, Any]]:
    """One captured (model, seq, spec, batch) point timed for every cluster size (what a
    Ray task runs); an estimate that fails gives rows with its error."""
    import torch

    from waferscale.report.scaling import scaling_rows
    from waferscale.report.training import TRAIN_DTYPES, capture_plans, load_meta_step

    key = dict(model=model, seq=seq, spec=spec, dtype=dtype, optimizer=optimizer,
               batch_per_system=batch)
    try:
        m, example, _ = load_meta_step(model, seq=seq, batch=batch, dtype=dtype)
        plans = capture_plans(m, example, spec=spec)
        rows = scaling_rows(lambda _b: plans, system, systems=systems, seq=seq, batch=batch,
                            optimizer=optimizer,
                            grad_elem_bytes=torch.finfo(TRAIN_DTYPES[dtype]).bits // 8)
    except Exception as exc:  # noqa: BLE001 - one configuration's failure is a row
        msg = " ".join(str(exc).split())
        msg = msg if isinstance(exc, WaferscaleError) else f"{type(exc).__name__}: {msg}"
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        return [{**key, "systems": n, "global_batch": n * batch, "error": msg}
                for n in systems]
    return [{**key, **{k: r[k] for k in COLUMNS if k in r}, "error": ""} for r in rows]


def sweep(models: str | list[str], seqs: str | list[int], systems: str | list[int], *,
          specs: str | list[str] = "wse2", batch: int = 1, dtype: str = "fp16",
          optimizer: str = "adamw", address: str | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the grid (module docstring) and return ``{"rows": [...], "configurations": n,
    ...}``; ``on_progress(done, total)`` after each captured point."""
    from waferscale.models import PRESETS
    from waferscale.report.scaling import parse_systems
    from waferscale.report.training import TRAIN_DTYPES
    from waferscale.runtime.cluster import RaySession, check_address

    models = _split(models, "--models")
    seqs = _split(seqs, "--seq", int)
    specs = _split(specs, "--spec")
    sizes = parse_systems(systems)
    for m in models:
        if m not in PRESETS and not (":" in m and m.split(":")[0].endswith(".py")):
            raise WaferscaleError(f"--models: {m!r} is neither a preset "
                                  f"({', '.join(PRESETS)}) nor path/file.py:factory")
    if any(s < 2 for s in seqs) or batch < 1:
        raise WaferscaleError("--seq values must be at least 2 and --batch at least 1")
    if dtype not in TRAIN_DTYPES:
        raise WaferscaleError(f"--dtype {dtype!r}: use one of {', '.join(TRAIN_DTYPES)}")
    from waferscale.hardware.spec import get_spec

    for s in specs:
        get_spec(s)     # a bad spec is named before anything starts
    check_address(address)
    points = [(m, q, s) for m in models for q in seqs for s in specs]
    t0 = time.perf_counter()
    session = RaySession(address)
    try:
        import ray

        task = ray.remote(num_cpus=1, max_retries=1)(point_rows)
        pending = {task.remote(m, q, s, batch, dtype, optimizer, sizes): (m, q, s)
                   for m, q, s in points}
        rows: list[dict[str, Any]] = []
        done = 0
        if on_progress is not None:
            on_progress(0, len(points))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                rows.extend(ray.get(ref))
                done += 1
                if on_progress is not None:
                    on_progress(done, len(points))
    finally:
        session.close()
    order = {m: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: (order[r["model"]], r["seq"], r["spec"], r["systems"]))
    rows = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    return {"configurations": len(rows), "points_captured": len(points),
            "grid": {"models": models, "seq": seqs, "spec": specs, "systems": sizes,
                     "batch_per_system": batch, "dtype": dtype, "optimizer": optimizer},
            "failed": sum(1 for r in rows if r["error"]),
            "wall_seconds": time.perf_counter() - t0, "rows": rows}


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The table as CSV (columns `COLUMNS`; floats as Python writes them: exact)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def write_table(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the CSV table atomically-enough for a report (the directory must exist)."""
    out = Path(path)
    if out.suffix.lower() != ".csv":
        raise WaferscaleError(f"--out {path}: the table is CSV; name it *.csv")
    if not out.parent.is_dir():
        raise WaferscaleError(f"--out {path}: the directory {out.parent} does not exist")
    out.write_text(to_csv(rows))
    return out


__all__ = ["COLUMNS", "point_rows", "sweep", "to_csv", "write_table"]
