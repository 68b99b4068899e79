"""The weight-streaming timeline: stage by stage on the whole wafer, weights from MemoryX.

For one graph (`compiler.streaming.StreamPlan`), stage i on the wafer can start when
stage i-1 has finished and its own weights have arrived. Weights arrive over the system's
inbound stream (``SystemSpec.stream_bits_per_s``) back to back, through the SwarmX tree
(one level's latency per stage per level), double buffered: stage i's weights may start
streaming once stage i-2 has released its buffer, so a layer's weights load while the
previous layer computes. Gradients leave over the outbound direction (full duplex) as soon
as their stage ends, back to back, and MemoryX applies the optimizer to each stage's
parameters when their gradients have arrived (memory-bound: `SystemSpec.update_seconds`),
overlapping the rest of the backward pass; only what is left after the last stage is
exposed. Host fallbacks take their planned I/O time on the wafer's critical path.

Activations the backward reads (``StreamPlan.saved_bytes``) stay on the wafer when they
fit beside the largest stage's working set (policy ``keep``); otherwise they are
offloaded to MemoryX (policy ``offload``): sent out during the forward pass on the idle
outbound link and streamed back in during the backward pass ahead of the weights.
Recomputation is not modelled yet.

A cluster of N systems (``systems``) runs this schedule on every system at once: SwarmX
broadcasts each stage's weights and reduces its gradients through a tree whose depth adds
latency (log N levels) but no transfer time (docs/clusters.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from waferscale.compiler.errors import CompileError
from waferscale.compiler.program import Program
from waferscale.compiler.streaming import StreamPlan, StreamStage
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.hardware.system import CS2_SYSTEM, SystemSpec

#: Activation policies, in the order they are tried.
POLICIES = ("keep", "recompute", "offload")


@dataclass(frozen=True)
class Timeline:
    """One graph's pass through the wafer: per-stage rows and the totals."""

    rows: tuple[dict[str, Any], ...]
    seconds: float
    compute_seconds: float
    weight_in_seconds: float
    grad_out_seconds: float
    update_exposed_seconds: float

    @property
    def bound(self) -> str:
        """What the pass waits on most: compute, weight streaming or gradients out."""
        terms = {"compute": self.compute_seconds, "weight I/O": self.weight_in_seconds,
                 "gradient I/O": self.grad_out_seconds}
        return max(terms, key=terms.get)  # type: ignore[arg-type]


def timeline(sp: StreamPlan, spec: WaferSpec, system: SystemSpec, *, systems: int = 1,
             grad_elem_bytes: int = 2, optimizer: str = "adamw",
             extra_in_bytes: float = 0.0, extra_out_bytes: float = 0.0) -> Timeline:
    """The stage-by-stage schedule of module docstring; ``extra_in_bytes`` /
    ``extra_out_bytes``: offloaded activations streamed in before the first stage / out
    alongside the gradients."""
    link = system.tree_bytes_per_s()
    hop = system.tree_latency_s(systems)
    rows = []
    end_prev = end_prev2 = 0.0
    w_end = extra_in_bytes / link
    out_end = 0.0
    upd_end = 0.0
    compute = w_total = g_total = 0.0
    for s in sp.stages:
        c = spec.seconds(s.compute_cycles)
        w = s.weight_bytes / link + (hop if s.weight_bytes else 0.0)
        w_start = max(w_end, end_prev2) if s.weight_bytes else w_end
        w_end = w_start + w if s.weight_bytes else w_end
        start = max(end_prev, w_end)
        end = start + c
        gout = s.grad_bytes / link + (hop if s.grad_bytes else 0.0)
        if s.grad_bytes:
            out_end = max(out_end, end) + gout
            upd_end = max(upd_end, out_end) + system.update_seconds(
                s.grad_bytes / grad_elem_bytes, optimizer)
        waited = start - end_prev
        rows.append({"stage": s.name, "kind": s.kind, "layer": s.layer,
                     "compute_s": c, "weight_in_s": w, "grad_out_s": gout,
                     "start_s": start, "end_s": end,
                     "weight_bytes": s.weight_bytes, "grad_bytes": s.grad_bytes,
                     "bound": "weight I/O" if waited > 1e-15 and w_end >= end_prev
                     else "compute"})
        compute += c
        w_total += w
        g_total += gout
        end_prev2, end_prev = end_prev, end
    out_end = max(out_end, extra_out_bytes / link)
    total = max(end_prev, out_end, upd_end)
    return Timeline(tuple(rows), total, compute, w_total, g_total, max(0.0, upd_end - max(
        end_prev, out_end)))


def merged(plans: list[StreamPlan]) -> StreamPlan:
    """The graphs of one pass (dynamo may split a model) run one after another."""
    stages = tuple(s for p in plans for s in p.stages)

    def summed(per_layer: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
        out: dict[str, int] = {}
        for label, b in per_layer:
            out[label] = out.get(label, 0) + b
        return tuple(out.items())

    return StreamPlan(stages, sum(p.saved_bytes for p in plans),
                      max((p.working_bytes for p in plans), default=0),
                      plans[0].wafer_sram_bytes if plans else 0,
                      summed([x for p in plans for x in p.saved_by_layer]),
                      summed([x for p in plans for x in p.layer_inputs]))


def training_plans(programs: list[Program]) -> tuple[StreamPlan, StreamPlan]:
    """A training step's forward and backward streaming plans from its compiled graphs
    (a backward graph is one that produces weight gradients)."""
    def is_backward(p: Program) -> bool:
        return any(n.meta.get("param_grad") for n in p.graph.nodes.values())

    plans = [p for p in programs if p.streaming is not None]
    fw = [p.streaming for p in plans if not is_backward(p)]
    bw = [p.streaming for p in plans if is_backward(p)]
    if not fw or not bw:
        raise CompileError("a training step needs a forward and a backward graph in "
                           "weight-streaming mode (no parameter requires grad?)")
    return merged(fw), merged(bw)  # type: ignore[arg-type]


def step_samples_per_second(graphs: list[Any], spec: str, batch: int, optimizer: str,
                                 *, systems: int = 1, system: SystemSpec = CS2_SYSTEM
                                 ) -> float:
    """Simulated throughput of one training step of compiled ``graphs`` (`api.CompiledModel`
    objects: a ``program`` and ``seconds_per_batch()``) on ``batch`` samples per system:
    weight streaming's training timeline (for ``systems`` systems on one SwarmX tree) when
    every graph streams; otherwise one sample through each graph's pipeline back to back
    (its period, the wafer's time per batch) times the systems."""
    if not graphs:
        return 0.0
    if all(c.program.streaming is not None for c in graphs):
        fw, bw = training_plans([c.program for c in graphs])
        rep = training_report(fw, bw, get_spec(spec), system, batch=batch, tokens=batch,
                              systems=systems, optimizer=optimizer)
        return float(rep["samples_per_second"])
    seconds = sum(c.seconds_per_batch() for c in graphs)
    return systems * batch / seconds if seconds else 0.0


def recompute_bytes(fw: StreamPlan) -> int | None:
    """Activations a recomputing backward keeps: what is saved outside the model's layers,
    every layer's input (`StreamPlan.layer_inputs`) and one layer's saved activations at a
    time (regenerated just before that layer's backward); None without per-layer figures."""
    by = dict(fw.saved_by_layer)
    layers = [k for k in by if k.startswith("layer ")]
    if not layers or not fw.layer_inputs:
        return None
    outside = sum(v for k, v in by.items() if not k.startswith("layer "))
    return outside + sum(v for _, v in fw.layer_inputs) + max(by[k] for k in layers)


def recompute_plan(fw: StreamPlan, bw: StreamPlan) -> StreamPlan:
    """The backward with each layer's forward stages run again (their weights streamed
    again) just before the layer's first backward stage."""
    forward: dict[str, list[StreamStage]] = {}
    for st in fw.stages:
        if st.layer.startswith("layer "):
            forward.setdefault(st.layer, []).append(st)
    stages: list[StreamStage] = []
    for st in bw.stages:
        again = forward.pop(st.layer, [])
        stages += [replace(f, name=f"recompute {f.name}", grad_bytes=0) for f in again]
        stages.append(st)
    return replace(bw, stages=tuple(stages))


def activation_policy(fw: StreamPlan, bw: StreamPlan | None = None
                      ) -> list[tuple[str, str]]:
    """The policies (`POLICIES`) whose activations fit, each with why: ``keep`` when the
    saved activations fit in the wafer's SRAM beside the largest stage's working set
    (forward or backward), else ``recompute`` when the layers' inputs and one layer's
    activations do (`recompute_bytes`), and ``offload`` (to MemoryX) always. The caller
    times them and takes the fastest (`training_report`)."""
    working = max(fw.working_bytes, bw.working_bytes if bw else 0)
    free = fw.wafer_sram_bytes - working
    saved = f"{fw.saved_bytes / 1e9:.3f} GB of activations kept for the backward"
    beside = f"the largest stage's {working / 1e9:.3f} GB working set"
    if fw.saved_bytes <= free:
        return [("keep", f"{saved} fit beside {beside} "
                         f"({fw.wafer_sram_bytes / 1e9:.2f} GB of SRAM)")]
    over = f"{saved} exceed the {max(free, 0) / 1e9:.3f} GB free beside {beside}"
    out = []
    again = recompute_bytes(fw)
    if again is not None and again <= free:
        out.append(("recompute", f"{over}: each layer's input kept and its activations "
                                 f"recomputed before its backward ({again / 1e9:.3f} GB "
                                 f"at most)"))
    out.append(("offload", f"{over}: offloaded to MemoryX and streamed back"))
    return out


def training_report(fw: StreamPlan, bw: StreamPlan, spec: WaferSpec, system: SystemSpec, *,
                    batch: int, tokens: int, systems: int = 1, grad_elem_bytes: int = 2,
                    optimizer: str = "adamw") -> dict[str, Any]:
    """One training step (forward graph then backward graph) in weight-streaming mode.

    With ``systems`` > 1 the cluster runs data parallel (docs/clusters.md): every system
    runs these graphs on its own ``batch`` samples at the same time, SwarmX broadcasts each
    stage's weights to all of them and sums their gradients on the way to MemoryX, which
    updates once. The step's schedule is one system's with the tree's latency for
    ``systems`` (`SystemSpec.tree_latency_s`; the broadcast and the reduction run at one
    system's bandwidth whatever N), and samples/s counts all ``systems x batch`` samples.
    Of the activation policies that fit (`activation_policy`) the fastest step is taken."""
    timed = []
    for policy, why in activation_policy(fw, bw):
        off = float(fw.saved_bytes) if policy == "offload" else 0.0
        back = recompute_plan(fw, bw) if policy == "recompute" else bw
        f = timeline(fw, spec, system, systems=systems, extra_out_bytes=off)
        b = timeline(back, spec, system, systems=systems, grad_elem_bytes=grad_elem_bytes,
                     optimizer=optimizer, extra_in_bytes=off)
        timed.append((f.seconds + b.seconds, policy, why, f, b, back))
    step, policy, why, f, b, back = min(timed, key=lambda t: t[0])
    if len(timed) > 1:
        why += "; " + ", ".join(f"{p} {t * 1e3:.2f} ms/step" for t, p, *_ in timed)
    kept = {"keep": fw.saved_bytes, "recompute": recompute_bytes(fw) or 0}.get(policy, 0)
    return {
        "mode": "weight_streaming", "systems": systems, "optimizer": optimizer,
        "batch_per_system": batch, "global_batch": systems * batch,
        "tree_levels": system.tree_levels(systems),
        "seconds_per_step": step,
        "samples_per_second": systems * batch / step if step else 0.0,
        "tokens_per_second": systems * tokens / step if step else 0.0,
        "forward_seconds": f.seconds, "backward_seconds": b.seconds,
        "bound": _bound(f, b),
        "activation_policy": policy, "activation_policy_reason": why,
        "activation_bytes": fw.saved_bytes,
        "activation_sram_per_pe": kept / (spec.pes or 1),
        "weight_bytes_streamed": fw.weight_bytes + back.weight_bytes,
        "gradient_bytes": bw.grad_bytes,
        "optimizer_exposed_seconds": b.update_exposed_seconds,
        "forward": _summary(f), "backward": _summary(b),
        "layers": layer_rows(f, "forward") + layer_rows(b, "backward"),
    }


def forward_report(fw: StreamPlan, spec: WaferSpec, system: SystemSpec, *, batch: int,
                   tokens: int, systems: int = 1) -> dict[str, Any]:
    """Forward only (inference) in weight-streaming mode (``systems``: data parallel, as
    `training_report`)."""
    f = timeline(fw, spec, system, systems=systems)
    return {"mode": "weight_streaming", "systems": systems, "seconds_per_batch": f.seconds,
            "samples_per_second": systems * batch / f.seconds if f.seconds else 0.0,
            "tokens_per_second": systems * tokens / f.seconds if f.seconds else 0.0,
            "bound": f.bound, "forward": _summary(f), "layers": layer_rows(f, "forward")}


def _bound(f: Timeline, b: Timeline) -> str:
    terms = {"compute": f.compute_seconds + b.compute_seconds,
             "weight I/O": f.weight_in_seconds + b.weight_in_seconds,
             "gradient I/O": b.grad_out_seconds}
    return max(terms, key=terms.get)  # type: ignore[arg-type]


def _summary(t: Timeline) -> dict[str, Any]:
    return {"seconds": t.seconds, "compute_seconds": t.compute_seconds,
            "weight_in_seconds": t.weight_in_seconds, "grad_out_seconds": t.grad_out_seconds,
            "bound": t.bound, "stages": list(t.rows)}


def layer_rows(t: Timeline, graph: str) -> list[dict[str, Any]]:
    """The timeline summed per model layer (stages without a layer label are grouped by
    position between labelled ones), in pass order."""
    out: list[dict[str, Any]] = []
    for r in t.rows:
        label = r["layer"] or (out[-1]["layer"] if out else "")
        if not out or out[-1]["layer"] != label:
            out.append({"graph": graph, "layer": label, "stages": 0, "compute_s": 0.0,
                        "weight_in_s": 0.0, "grad_out_s": 0.0, "start_s": r["start_s"],
                        "end_s": r["end_s"], "weight_bytes": 0, "grad_bytes": 0})
        row = out[-1]
        row["stages"] += 1
        for k in ("compute_s", "weight_in_s", "grad_out_s", "weight_bytes", "grad_bytes"):
            row[k] += r[k]
        row["end_s"] = r["end_s"]
    for row in out:
        row["bound"] = "weight I/O" if row["weight_in_s"] > row["compute_s"] else "compute"
    return out


__all__ = ["POLICIES", "Timeline", "activation_policy", "forward_report", "layer_rows",
           "merged", "step_samples_per_second", "timeline", "training_plans",
           "training_report"]
