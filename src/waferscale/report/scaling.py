"""How a training step scales from 1 to N systems on one SwarmX tree (`waferscale scaling`).

The mechanism (docs/clusters.md; ../shared/reference/hardware.md, "Execution modes"): the
cluster runs data parallel in weight-streaming mode. Every system runs the same stages on
its own samples; SwarmX broadcasts each stage's weights from MemoryX to all systems and
sums their gradients on the way back, one node per ``fanout`` children, at line rate, so
a transfer takes one system's bytes over one system's bandwidth plus one level's latency
per tree level (``ceil(log_fanout N)``, at least one). MemoryX applies one update per
step whatever N. Per stage, the weights still stream in while the previous stage computes
(double buffering) and the gradients stream out while the next one computes
(`runtime.weight_streaming.timeline`, with ``systems=N``).

Two ways to grow a cluster:

* **weak scaling** (the default; what "two systems halve the time to train" means): each
  system keeps ``batch`` samples, the global batch is N x batch. One capture serves every
  N; the step grows only by the tree latency that is not hidden behind compute;
* **strong scaling** (``global_batch``): the global batch is fixed and split, so each
  system computes on fewer samples while the weights it must receive per step stay the
  same; once a stage's compute is shorter than its weights' transfer the step is
  weight-I/O bound and adding systems stops paying. One capture per per-system batch.

Efficiency is samples/s of N systems over N x samples/s of one system with the same
per-system work (weak) or the whole global batch (strong).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from waferscale.hardware.system import CS2_SYSTEM, SystemSpec
from waferscale.runtime.swarmx import ClusterError, check_systems, split_batch
from waferscale.runtime.weight_streaming import training_report

#: A cluster size is "linear" while its scaling efficiency is at least this.
LINEAR = 0.95
#: The sizes scanned for where weak scaling stops being linear (up to the tree's limit).
SCAN = (1, 2, 4, 8, 16, 32, 64, 128, 192)


def parse_systems(text: str | list[int], option: str = "--systems",
                  system: SystemSpec = CS2_SYSTEM) -> list[int]:
    """``1,2,4,16`` -> [1, 2, 4, 16]: each a valid cluster size, no repeats, in order."""
    if isinstance(text, str):
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ClusterError(f"{option} {text!r}: use comma-separated system counts, "
                               f"e.g. 1,2,4,16") from None
    else:
        values = list(text)
    if not values:
        raise ClusterError(f"{option}: give at least one system count, e.g. 1,2,4,16")
    for v in values:
        check_systems(v, system, option)
    return sorted(set(values))


def step_row(plans: Any, system: SystemSpec, *, systems: int, batch: int, seq: int,
             optimizer: str, grad_elem_bytes: int) -> dict[str, Any]:
    """One cluster size: the step's timeline with the tree for ``systems`` systems, and
    what the tree costs (the same step with a zero-latency tree)."""
    rep = training_report(plans.fw, plans.bw, plans.spec, system, batch=batch,
                          tokens=batch * seq, systems=systems, optimizer=optimizer,
                          grad_elem_bytes=grad_elem_bytes)
    flat = training_report(plans.fw, plans.bw, plans.spec,
                           replace(system, swarmx_level_latency_s=1e-300), batch=batch,
                           tokens=batch * seq, systems=systems, optimizer=optimizer,
                           grad_elem_bytes=grad_elem_bytes)
    f, b = rep["forward"], rep["backward"]
    transfers = sum(1 for s in plans.fw.stages if s.weight_bytes) + sum(
        (1 if s.weight_bytes else 0) + (1 if s.grad_bytes else 0) for s in plans.bw.stages)
    return {
        "systems": systems, "tree_levels": rep["tree_levels"],
        "batch_per_system": batch, "global_batch": systems * batch,
        "seconds_per_step": rep["seconds_per_step"],
        "samples_per_second": rep["samples_per_second"],
        "tokens_per_second": rep["tokens_per_second"],
        "compute_seconds": f["compute_seconds"] + b["compute_seconds"],
        "weight_in_seconds": f["weight_in_seconds"] + b["weight_in_seconds"],
        "grad_out_seconds": b["grad_out_seconds"],
        "swarmx_latency_s": system.tree_latency_s(systems),
        "swarmx_transfers": transfers,
        "swarmx_exposed_seconds": max(0.0, rep["seconds_per_step"]
                                      - flat["seconds_per_step"]),
        "optimizer_exposed_seconds": rep["optimizer_exposed_seconds"],
        "bound": rep["bound"], "activation_policy": rep["activation_policy"],
    }


def scaling_rows(plans_for: Any, system: SystemSpec, *, systems: list[int], seq: int,
                 batch: int = 1, global_batch: int | None = None, optimizer: str = "adamw",
                 grad_elem_bytes: int = 2) -> list[dict[str, Any]]:
    """A row per cluster size with speed-up and efficiency (module docstring).
    ``plans_for(b)``: the step's plans at ``b`` samples per system (`StepPlans`)."""
    one_batch = batch if global_batch is None else global_batch
    base = step_row(plans_for(one_batch), system, systems=1, batch=one_batch, seq=seq,
                    optimizer=optimizer, grad_elem_bytes=grad_elem_bytes)
    rows = []
    for n in systems:
        per = batch if global_batch is None else split_batch(global_batch, n,
                                                             "--global-batch")
        row = base if n == 1 else step_row(plans_for(per), system, systems=n, batch=per,
                                           seq=seq, optimizer=optimizer,
                                           grad_elem_bytes=grad_elem_bytes)
        row = dict(row)
        row["speedup"] = row["samples_per_second"] / base["samples_per_second"]
        row["scaling_efficiency"] = row["speedup"] / n
        rows.append(row)
    return rows


def why_not_linear(rows: list[dict[str, Any]], threshold: float = LINEAR) -> dict[str, Any]:
    """The largest size still at ``threshold`` efficiency, the first below it and the
    reason (the term that grew)."""
    linear = [r["systems"] for r in rows if r["scaling_efficiency"] >= threshold]
    below = [r for r in rows if r["scaling_efficiency"] < threshold]
    if not below:
        last = rows[-1]
        return {"linear_until": last["systems"], "first_below": None, "threshold": threshold,
                "why": (f"linear to {last['systems']} systems: the SwarmX tree adds "
                        f"{last['swarmx_latency_s'] * 1e6:.0f} us per transfer "
                        f"({last['tree_levels']} levels) and "
                        f"{last['swarmx_exposed_seconds'] * 1e3:.3f} ms per step is not "
                        f"hidden behind compute ({_pct(last)} of the step); the "
                        f"broadcast and the reduction run at one system's bandwidth "
                        f"whatever N, and MemoryX updates once per step")}
    r = below[0]
    one = rows[0]
    if r["batch_per_system"] < one["batch_per_system"]:
        idle = r["seconds_per_step"] - r["compute_seconds"]
        why = (f"at {r['systems']} systems each computes on {r['batch_per_system']} "
               f"sample(s): {r['compute_seconds'] * 1e3:.2f} ms of compute in a "
               f"{r['seconds_per_step'] * 1e3:.2f} ms step; the "
               f"{r['weight_in_seconds'] * 1e3:.2f} ms of weights every system receives "
               f"per step do not shrink with N, so {idle * 1e3:.2f} ms of the step is "
               f"transfer not hidden behind compute ({r['bound']}-bound)")
    elif r["swarmx_exposed_seconds"] > 0:
        why = (f"at {r['systems']} systems the tree has {r['tree_levels']} levels: "
               f"{r['swarmx_latency_s'] * 1e6:.0f} us on each of {r['swarmx_transfers']} "
               f"weight/gradient transfers, {r['swarmx_exposed_seconds'] * 1e3:.3f} ms of "
               f"it not hidden behind compute ({_pct(r)} of the step)")
    else:
        why = (f"at {r['systems']} systems the step is {r['bound']}-bound with "
               f"{r['batch_per_system']} sample(s) per system")
    return {"linear_until": linear[-1] if linear else None, "first_below": r["systems"],
            "threshold": threshold, "why": why}


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['swarmx_exposed_seconds'] / r['seconds_per_step']:.2f} %"


def swarmx_parameters(system: SystemSpec) -> dict[str, Any]:
    """The tree's parameters as the report states them (sources: docs/clusters.md)."""
    return {"name": system.name, "link_bits_per_s": system.swarmx_link_bits_per_s,
            "lanes_per_system": system.swarmx_lanes, "fanout": system.swarmx_fanout,
            "level_latency_s": system.swarmx_level_latency_s,
            "system_bytes_per_s": system.tree_bytes_per_s(),
            "max_systems": system.max_systems,
            "memoryx_update_bytes_per_s": system.memoryx_update_bytes_per_s}


def scaling_report(model: str, *, seq: int, systems: str | list[int], batch: int = 1,
                   global_batch: int | None = None, dtype: str = "fp16", spec: str = "wse2",
                   optimizer: str = "adamw", system: SystemSpec = CS2_SYSTEM,
                   scan: bool = True) -> dict[str, Any]:
    """`waferscale scaling MODEL --systems 1,2,4,16`: the captured training step timed on
    each cluster size (module docstring); ``scan``: also find where weak scaling stops
    being linear over `SCAN` (cheap: no new capture)."""
    import time

    from waferscale.errors import WaferscaleError

    sizes = parse_systems(systems, system=system)
    if batch < 1:
        raise WaferscaleError(f"--batch {batch}: at least 1 sample per system")
    if global_batch is not None:
        for n in sizes:
            split_batch(global_batch, n, "--global-batch")

    import torch

    from waferscale.report.training import TRAIN_DTYPES, capture_plans, load_meta_step
    if dtype not in TRAIN_DTYPES:
        raise WaferscaleError(f"--dtype {dtype!r}: use one of {', '.join(TRAIN_DTYPES)}")
    grad_bytes = torch.finfo(TRAIN_DTYPES[dtype]).bits // 8
    t0 = time.perf_counter()
    cache: dict[int, Any] = {}

    def plans_for(b: int) -> Any:
        if b not in cache:
            m, example, _ = load_meta_step(model, seq=seq, batch=b, dtype=dtype)
            cache[b] = capture_plans(m, example, spec=spec)
        return cache[b]

    kw = dict(seq=seq, optimizer=optimizer)
    rows = scaling_rows(plans_for, system, systems=sizes, batch=batch,
                        global_batch=global_batch, grad_elem_bytes=grad_bytes, **kw)
    out: dict[str, Any] = {
        "model": model, "seq": seq, "dtype": dtype, "optimizer": optimizer, "spec": spec,
        "scaling": "strong" if global_batch is not None else "weak",
        "batch_per_system": None if global_batch is not None else batch,
        "global_batch": global_batch, "rows": rows,
        "linearity": why_not_linear(rows), "swarmx": swarmx_parameters(system)}
    if scan and global_batch is None:
        scanned = scaling_rows(plans_for, system, systems=list(SCAN), batch=batch,
                               grad_elem_bytes=grad_bytes, **kw)
        out["scan"] = [{k: r[k] for k in ("systems", "tree_levels", "samples_per_second",
                                          "scaling_efficiency", "swarmx_exposed_seconds")}
                       for r in scanned]
        out["scan_linearity"] = why_not_linear(scanned)
    first = next(iter(cache.values()))
    out.update(parameters=first.info["parameters"], notes=first.info["notes"],
               captures=len(cache), wall_seconds=time.perf_counter() - t0)
    return out


def plot_scaling(rep: dict[str, Any], path: str | Path) -> Path:
    """Samples/s against systems (log-log) beside ideal linear scaling, and efficiency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep.get("scan") if rep.get("scan") else rep["rows"]
    n = [r["systems"] for r in rows]
    sps = [r["samples_per_second"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.loglog(n, sps, "o-", label="model")
    a.loglog(n, [sps[0] * k / n[0] for k in n], "--", color="grey", label="linear")
    a.set_xlabel("systems")
    a.set_ylabel("samples/s")
    a.set_title(f"{rep['model']}, seq {rep['seq']}, {rep['scaling']} scaling")
    a.legend()
    b.semilogx(n, [100 * r["scaling_efficiency"] for r in rows], "o-")
    b.axhline(100 * LINEAR, color="grey", ls=":")
    b.set_ylim(0, 105)
    b.set_xlabel("systems")
    b.set_ylabel("scaling efficiency %")
    b.set_title("efficiency (dotted: linear threshold)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


__all__ = ["LINEAR", "SCAN", "parse_systems", "plot_scaling", "scaling_report",
           "scaling_rows", "step_row", "swarmx_parameters", "why_not_linear"]
