"""A GenSLM-25M training step through ``torch.compile(backend="waferscale")``: where the
simulated step's time goes (wafer kernels vs host fallbacks), gradient agreement with eager
PyTorch, and the wall time of the simulation against an eager step.

    .venv/bin/python benchmarks/bench_training.py [--seq N] [--layers L]

aot_autograd hands the backend a forward and a backward graph; each runs on the simulated
wafer, in pipelined mode when it fits (``mode``) and otherwise in weight-streaming mode,
every stage on the whole wafer (a graph that cannot be placed or routed:
``why_not_pipelined`` says why). Per graph this prints its stages, the pipeline period,
the simulated cycles of the stages on the wafer and of the host fallbacks (their I/O over
the system's 1.2 Tb/s), and which host ops they are. ``simulated_step_s`` is the sum of
all stage cycles (one sample through every stage once: the latency of a step, not the
pipeline's period).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import Counter
from typing import Any

import torch

import waferscale.backend as backend
from waferscale.workloads.genslm import build_genslm


def _graph_figures(compiled: Any) -> dict[str, Any]:
    rep = compiled.report()
    wafer = sum(s["cycles"] for s in rep["stages"] if s["kind"] != "fallback")
    host = sum(s["cycles"] for s in rep["stages"] if s["kind"] == "fallback")
    ops = Counter({f["op"].replace("aten.", ""): f["count"] for f in rep["fallback_ops"]})
    return {"mode": rep["mode"], "why_not_pipelined": [n for n in rep["notes"]
                                                       if "does not fit" in n],
            "stages": len(rep["stages"]), "period_cycles": round(rep["period_cycles"]),
            "bottleneck": rep["bottleneck"], "bottleneck_kind": rep["bottleneck_kind"],
            "wafer_cycles": round(wafer), "host_cycles": round(host),
            "host_share": round(host / (wafer + host), 3), "utilization":
            round(rep["utilization"], 3), "host_ops": dict(ops.most_common())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_genslm("genslm-25m", seq_len=args.seq)
    model.config.num_hidden_layers = args.layers
    model.gpt_neox.layers = model.gpt_neox.layers[:args.layers]
    model.train()
    eager = copy.deepcopy(model)
    ids = torch.randint(0, 69, (1, args.seq))

    before = len(backend.COMPILED)
    step = torch.compile(model, backend="waferscale")
    t0 = time.perf_counter()
    step(input_ids=ids, labels=ids).loss.backward()
    first = time.perf_counter() - t0           # compile of both graphs + one step
    model.zero_grad()
    t0 = time.perf_counter()
    loss = step(input_ids=ids, labels=ids).loss
    loss.backward()
    sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = eager(input_ids=ids, labels=ids).loss
    ref.backward()
    eager_s = time.perf_counter() - t0
    err = max(float((p.grad - q.grad).abs().max())
              for p, q in zip(model.parameters(), eager.parameters(), strict=True))
    graphs = [_graph_figures(c) for c in backend.COMPILED[before:before + 2]]
    clock = backend.COMPILED[before].report()["clock_hz"]
    cycles = sum(g["wafer_cycles"] + g["host_cycles"] for g in graphs)
    print({"seq": args.seq, "layers": args.layers, "loss": round(loss.item(), 6),
           "eager_loss": round(ref.item(), 6), "grad_max_abs_err": err,
           "simulated_step_s": cycles / clock, "sim_wall_s": round(sim, 2),
           "eager_wall_s": round(eager_s, 3), "compile_and_first_step_s": round(first, 1)})
    for name, g in zip(("forward", "backward"), graphs, strict=True):
        print(name, g)


if __name__ == "__main__":
    main()
