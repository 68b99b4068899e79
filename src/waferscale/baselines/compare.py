"""Wafer and GPU cluster side by side on the same model and sequence, and the quote.

The GPU column comes from `waferscale.baselines.gpu`. The wafer column comes from the
wafer side's public report API only, in one adapter (`wafer_training_estimate`), and its
multi-system scaling from one function (`wafer_systems_scaling`); both say exactly what they
assume, so they can be replaced when weight-streaming training and clusters land.

Every row of a comparison has the same keys (``samples_per_second`` is None when the row
does not run: out of memory on the GPUs, or a model the wafer side cannot build), so the JSON
can be read without special cases. Money and power come from a TOML file
(``waferscale/baselines/prices.toml`` by default).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from waferscale.baselines.errors import BaselineError, PriceError
from waferscale.baselines.gpu import (
    ClusterSpec,
    GpuEstimate,
    NodeSpec,
    get_stack,
    model_shape,
    node_for,
    run_stack,
)
from waferscale.errors import WaferscaleError

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0

#: What the wafer column assumes about training, stated once (it goes into every output).
TRAINING_ASSUMPTION = (
    "wafer training step in weight-streaming mode from the captured forward and backward "
    "graphs (waferscale.report.training.train_report: fp16, AdamW applied by MemoryX); its "
    "attention backward uses the shift layout only, an upper bound on its time")
#: What multi-system wafer figures assume.
SYSTEMS_ASSUMPTION = (
    "N systems = N x one system (linear data-parallel scaling assumed: wafer clusters are "
    "not modelled yet)")


# -- prices and power ---------------------------------------------------------------------
@dataclass(frozen=True)
class PriceEntry:
    """One priced or powered thing: a GPU, a node or a wafer system."""

    name: str
    price_per_hour: float | None
    power_watts: float | None
    gpus: int | None
    source: str
    date: str


@dataclass(frozen=True)
class Prices:
    """The contents of a prices TOML, checked: every price and power positive."""

    currency: str
    energy_price_per_kwh: float
    pue: float
    energy_source: str
    gpus: dict[str, PriceEntry]
    nodes: dict[str, PriceEntry]
    wafers: dict[str, PriceEntry]
    path: str

    def gpu(self, name: str) -> PriceEntry:
        return self._get(self.gpus, name, "gpu")

    def node(self, name: str) -> PriceEntry:
        return self._get(self.nodes, name, "node")

    def wafer(self, name: str) -> PriceEntry:
        return self._get(self.wafers, name, "wafer")

    def _get(self, table: dict[str, PriceEntry], name: str, kind: str) -> PriceEntry:
        if name not in table:
            raise PriceError(f"{self.path}: no [{kind}.{name}] entry; known: "
                             f"{', '.join(table) or 'none'}")
        return table[name]

    def node_watts(self, node: NodeSpec) -> float:
        """Watts of ``node``: its family's figure scaled to the GPUs it holds."""
        entry = self.node(node.family)
        assert entry.power_watts is not None and entry.gpus
        return entry.power_watts * node.gpus_per_node / entry.gpus

    def to_dict(self) -> dict[str, Any]:
        def rows(table: dict[str, PriceEntry]) -> dict[str, Any]:
            return {k: {"price_per_hour": e.price_per_hour, "power_watts": e.power_watts,
                        "source": e.source, "date": e.date} for k, e in table.items()}
        return {"file": self.path, "currency": self.currency,
                "energy_price_per_kwh": self.energy_price_per_kwh, "pue": self.pue,
                "energy_source": self.energy_source, "gpu": rows(self.gpus),
                "node": rows(self.nodes), "wafer": rows(self.wafers)}


def default_prices_path() -> Path:
    return Path(str(resources.files("waferscale.baselines").joinpath("prices.toml")))


def _number(path: str, where: str, raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        raise PriceError(f"{path}: [{where}] {key} must be a positive number, got {value!r}")
    return float(value)


def _text(path: str, where: str, raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PriceError(f"{path}: [{where}] needs a non-empty {key} (every figure is cited)")
    return value


def load_prices(path: str | Path | None = None) -> Prices:
    """Read and check a prices TOML (the packaged default when ``path`` is None)."""
    p = Path(path) if path is not None else default_prices_path()
    name = str(path) if path is not None else "prices.toml (packaged default)"
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriceError(f"--prices {p}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PriceError(f"{name}: cannot read it ({exc})") from None
    currency = raw.get("currency")
    if not isinstance(currency, str) or not currency:
        raise PriceError(f"{name}: needs currency = \"USD\" (or another code)")
    energy = raw.get("energy")
    if not isinstance(energy, dict):
        raise PriceError(f"{name}: needs an [energy] table")
    price_kwh = _number(name, "energy", energy, "price_per_kwh")
    pue = _number(name, "energy", energy, "pue")
    if pue < 1:
        raise PriceError(f"{name}: [energy] pue must be at least 1, got {pue}")

    def table(kind: str, price_key: str | None, power: bool, gpus: bool) -> dict[str, PriceEntry]:
        out = {}
        section = raw.get(kind, {})
        if not isinstance(section, dict):
            raise PriceError(f"{name}: [{kind}] must be a table of tables")
        for key, entry in section.items():
            where = f"{kind}.{key}"
            if not isinstance(entry, dict):
                raise PriceError(f"{name}: [{where}] must be a table")
            out[key] = PriceEntry(
                key,
                _number(name, where, entry, price_key) if price_key else None,
                _number(name, where, entry, "power_watts") if power else None,
                int(_number(name, where, entry, "gpus")) if gpus else None,
                _text(name, where, entry, "source"), str(entry.get("date", "")))
        return out

    return Prices(currency, price_kwh, pue, _text(name, "energy", energy, "source"),
                  table("gpu", "price_per_gpu_hour", False, False),
                  table("node", None, True, True),
                  table("wafer", "price_per_system_hour", True, False), name)


# -- the wafer column: the one adapter ------------------------------------------------------
@dataclass(frozen=True)
class WaferFigure:
    """The wafer's training throughput for one system, or why there is none."""

    model: str
    seq: int
    spec: str
    samples_per_second: float | None
    forward_samples_per_second: float | None
    mode: str
    label: str
    unavailable_reason: str | None = None


def wafer_training_estimate(model: str, seq: int, spec: str = "wse2") -> WaferFigure:
    """Training samples/s of one wafer system for MODEL at SEQ tokens, through the public
    report API (`waferscale.report.training.train_report`: one captured training step,
    planned and timed in weight-streaming mode on meta weights; ``TRAINING_ASSUMPTION``).
    A model the wafer side cannot build or fit at SEQ is returned as unavailable with the
    wafer side's own reason, never extrapolated from another length."""
    from waferscale.report.training import train_report

    try:
        rep = train_report(model, seq=seq, batch=1, dtype="fp16", spec=spec)
    except WaferscaleError as exc:
        return WaferFigure(model, seq, spec, None, None, "unavailable",
                           "the wafer side cannot build this model at this length",
                           unavailable_reason=f"wafer side: {exc}")
    train = float(rep.get("samples_per_second") or 0.0)
    fwd_s = float(rep.get("forward_seconds") or 0.0)
    mode = str(rep.get("mode", "?"))
    label = f"{mode} training step ({rep.get('bound', '?')}-bound)"
    if train <= 0 or not math.isfinite(train):
        return WaferFigure(model, seq, spec, None, None, mode, label,
                           unavailable_reason="wafer side reported no throughput")
    return WaferFigure(model, seq, str(rep.get("spec", spec)), train,
                       1.0 / fwd_s if fwd_s > 0 else None, mode,
                       f"{label}; {TRAINING_ASSUMPTION}")


def wafer_systems_scaling(one_system: float, systems: int) -> float:
    """Samples/s of ``systems`` wafers from one system's (``SYSTEMS_ASSUMPTION``)."""
    return one_system * systems


WaferFn = Callable[[str, int, str], WaferFigure]


# -- rows ---------------------------------------------------------------------------------
def _train_time(samples_per_second: float | None, seq: int, tokens: float) -> float | None:
    if samples_per_second is None or samples_per_second <= 0:
        return None
    return tokens / (samples_per_second * seq)


def _money(seconds: float | None, devices: int, price_per_hour: float) -> float | None:
    return None if seconds is None else seconds / SECONDS_PER_HOUR * devices * price_per_hour


def _energy(seconds: float | None, watts: float, pue: float) -> float | None:
    return None if seconds is None else seconds * watts * pue / 3.6e6


def wafer_row(fig: WaferFigure, systems: int, tokens: float, prices: Prices) -> dict[str, Any]:
    entry = prices.wafer(fig.spec)
    sps = None if fig.samples_per_second is None \
        else wafer_systems_scaling(fig.samples_per_second, systems)
    seconds = _train_time(sps, fig.seq, tokens)
    watts = entry.power_watts * systems  # type: ignore[operator]
    energy = _energy(seconds, watts, prices.pue)
    assumptions = [TRAINING_ASSUMPTION]
    if systems > 1:
        assumptions.append(SYSTEMS_ASSUMPTION)
    return {
        "system": "wafer", "label": f"{systems} x {fig.spec.upper()}", "devices": systems,
        "device": fig.spec, "nodes": None, "stack": None, "mode": fig.mode,
        "mode_label": fig.label, "layout": None, "global_batch": systems,
        "samples_per_second": sps,
        "tokens_per_second": None if sps is None else sps * fig.seq,
        "seconds_per_step": None if sps is None else systems / sps,
        "fits": fig.unavailable_reason is None, "oom_reason": None,
        "unavailable_reason": fig.unavailable_reason,
        "time_to_train_seconds": seconds,
        "time_to_train_days": None if seconds is None else seconds / SECONDS_PER_DAY,
        "power_watts": watts, "energy_kwh": energy,
        "energy_cost": None if energy is None else energy * prices.energy_price_per_kwh,
        "price_per_hour": entry.price_per_hour * systems,  # type: ignore[operator]
        "cost": _money(seconds, systems, entry.price_per_hour),  # type: ignore[arg-type]
        "memory_gib_per_device": None, "mfu": None,
        "assumptions": assumptions, "sources": [entry.source],
    }


def gpu_row(est: GpuEstimate, tokens: float, prices: Prices) -> dict[str, Any]:
    cluster = est.cluster
    gpu_price = prices.gpu(cluster.gpu.name)
    watts = prices.node_watts(cluster.node) * cluster.nodes
    sps = est.samples_per_second
    seconds = _train_time(sps, est.seq, tokens)
    energy = _energy(seconds, watts, prices.pue)
    return {
        "system": "gpu",
        "label": f"{cluster.nodes} x {cluster.node.name} ({cluster.gpus} x {cluster.gpu.name})",
        "devices": cluster.gpus, "device": cluster.gpu.name, "nodes": cluster.nodes,
        "stack": est.stack.name, "mode": est.stack.name, "mode_label": est.stack.description,
        "layout": est.layout.label(), "global_batch": est.layout.global_batch,
        "samples_per_second": sps, "tokens_per_second": est.tokens_per_second,
        "seconds_per_step": est.seconds_per_step, "fits": est.fits,
        "oom_reason": est.oom_reason, "unavailable_reason": None,
        "time_to_train_seconds": seconds,
        "time_to_train_days": None if seconds is None else seconds / SECONDS_PER_DAY,
        "power_watts": watts, "energy_kwh": energy,
        "energy_cost": None if energy is None else energy * prices.energy_price_per_kwh,
        "price_per_hour": gpu_price.price_per_hour * cluster.gpus,  # type: ignore[operator]
        "cost": _money(seconds, cluster.gpus, gpu_price.price_per_hour),  # type: ignore[arg-type]
        "memory_gib_per_device": est.memory.total / 2**30, "mfu": est.mfu,
        "assumptions": [], "sources": [gpu_price.source,
                                       prices.node(cluster.node.family).source],
    }


def _positive_ints(values: list[int], option: str) -> list[int]:
    if not values:
        raise BaselineError(f"{option} needs at least one value")
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise BaselineError(f"{option} values must be positive integers, got {v!r}")
    return values


def _positive_tokens(tokens: float) -> float:
    if not isinstance(tokens, int | float) or not math.isfinite(tokens) or tokens <= 0:
        raise BaselineError(f"--tokens must be a positive number, got {tokens!r}")
    return float(tokens)


def compare_report(model: str, *, seq: int = 10240, systems: list[int] | None = None,
                   gpu: str = "a100-40gb", gpus_per_node: int | None = None,
                   node: str | None = None, nodes: list[int] | None = None,
                   stack: str = "tuned", tokens: float = 1e10, spec: str = "wse2",
                   prices_path: str | Path | None = None,
                   wafer_fn: WaferFn | None = None) -> dict[str, Any]:
    """One table: the wafer at each system count and the GPU cluster at each node count, on
    MODEL at SEQ tokens, with time to train ``tokens``, energy and cost. ``wafer_fn``
    replaces the wafer adapter (default: this module's `wafer_training_estimate`)."""
    systems = _positive_ints([1] if systems is None else systems, "--systems")
    nodes = _positive_ints([1, 8, 64, 256] if nodes is None else nodes, "--nodes")
    tokens = _positive_tokens(tokens)
    prices = load_prices(prices_path)
    shape = model_shape(model)
    shape.check_seq(seq)
    st = get_stack(stack)
    node_spec = node_for(gpu, node, gpus_per_node)
    prices.gpu(node_spec.gpu.name)
    prices.node(node_spec.family)
    fig = (wafer_fn or wafer_training_estimate)(model, seq, spec)
    rows = [wafer_row(fig, n, tokens, prices) for n in systems]
    for n in nodes:
        est = run_stack(shape, seq, ClusterSpec(node_spec, n), st)
        rows.append(gpu_row(est, tokens, prices))
    return {"model": model, "seq": seq, "tokens": tokens, "params": shape.params,
            "shape": shape.to_dict(), "stack": st.name, "stack_description": st.description,
            "currency": prices.currency, "prices": prices.path, "rows": rows,
            "assumptions": [TRAINING_ASSUMPTION, SYSTEMS_ASSUMPTION,
                            "GPU rows: waferscale.baselines.gpu (validated against G1-G12, "
                            "`waferscale gpu --validate`)",
                            "cost = rental price x devices x hours (prices file); energy = "
                            "power x time x PUE"]}


def quote_report(model: str, *, tokens: float, seq: int = 10240, systems: int = 1,
                 gpus: list[int] | None = None, gpu: str = "a100-40gb",
                 gpus_per_node: int | None = None, node: str | None = None,
                 stack: str = "tuned", spec: str = "wse2",
                 prices_path: str | Path | None = None,
                 wafer_fn: WaferFn | None = None) -> dict[str, Any]:
    """Time and cost to train MODEL on ``tokens`` tokens: wafer systems vs GPU cloud, with
    the breakdown a buyer asks for (device count, throughput, hours, rate, energy, sources,
    assumptions)."""
    tokens = _positive_tokens(tokens)
    (systems,) = _positive_ints([systems], "--systems")
    node_spec = node_for(gpu, node, gpus_per_node)
    gpn = node_spec.gpus_per_node
    gpus = _positive_ints([gpn * 8] if gpus is None else gpus, "--gpus")
    for g in gpus:
        if g % gpn:
            raise BaselineError(f"--gpus {g} is not a whole number of {node_spec.name} nodes "
                                f"({gpn} GPUs each)")
    rep = compare_report(model, seq=seq, systems=[systems], gpu=gpu, gpus_per_node=gpus_per_node,
                         node=node, nodes=[g // gpn for g in gpus], stack=stack, tokens=tokens,
                         spec=spec, prices_path=prices_path, wafer_fn=wafer_fn)
    prices = load_prices(prices_path)
    options = []
    for row in rep["rows"]:
        options.append({
            "option": row["label"], "system": row["system"], "devices": row["devices"],
            "runs": row["samples_per_second"] is not None,
            "why_not": row["oom_reason"] or row["unavailable_reason"],
            "samples_per_second": row["samples_per_second"],
            "tokens_per_second": row["tokens_per_second"],
            "hours": None if row["time_to_train_seconds"] is None
            else row["time_to_train_seconds"] / SECONDS_PER_HOUR,
            "days": row["time_to_train_days"],
            "rate_per_hour": row["price_per_hour"], "cost": row["cost"],
            "energy_kwh": row["energy_kwh"], "energy_cost": row["energy_cost"],
            "stack": row["stack"], "layout": row["layout"], "mode": row["mode_label"],
            "sources": row["sources"], "assumptions": row["assumptions"],
        })
    runnable = [o for o in options if o["cost"] is not None]
    cheapest = min(runnable, key=lambda o: o["cost"]) if runnable else None
    fastest = min(runnable, key=lambda o: o["hours"]) if runnable else None
    return {"model": model, "params": rep["params"], "seq": seq, "tokens": tokens,
            "currency": prices.currency, "options": options,
            "cheapest": cheapest["option"] if cheapest else None,
            "fastest": fastest["option"] if fastest else None,
            "prices": prices.to_dict(), "assumptions": rep["assumptions"]}


__all__ = ["SYSTEMS_ASSUMPTION", "TRAINING_ASSUMPTION", "PriceEntry", "Prices", "WaferFigure",
           "compare_report", "default_prices_path", "gpu_row", "load_prices", "quote_report",
           "wafer_row", "wafer_systems_scaling", "wafer_training_estimate"]
