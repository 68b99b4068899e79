"""A GPU-cluster training model: presets, memory (with out-of-memory and its cause), step
time from the model's real shapes, software stacks, and its validation against public
measurements (docs/gpu.md).

    from waferscale.baselines.gpu import model_shape, node_for, ClusterSpec, get_stack, run_stack
    est = run_stack(model_shape("genslm-2.5b"), 10240, ClusterSpec(node_for("a100-40gb"), 8),
                    get_stack("tuned"))
    est.samples_per_second, est.oom_reason

It imports nothing of the wafer (see waferscale.baselines).
"""

from waferscale.baselines.gpu.config import (
    STACKS,
    USER_STACKS,
    Parallel,
    Stack,
    check_layout,
    get_stack,
)
from waferscale.baselines.gpu.estimate import (
    GpuEstimate,
    estimate,
    genslm_2022_layout,
    run_stack,
    tuned_estimate,
)
from waferscale.baselines.gpu.hardware import (
    GPUS,
    NODES,
    ClusterSpec,
    GpuSpec,
    NodeSpec,
    get_gpu,
    get_node,
    node_for,
)
from waferscale.baselines.gpu.memory import MemoryReport, gpu_memory, layer_activations
from waferscale.baselines.gpu.shapes import TransformerShape, gpt, model_shape
from waferscale.baselines.gpu.step import StepTime, step_time
from waferscale.baselines.gpu.validate import validation_report

__all__ = ["GPUS", "NODES", "STACKS", "USER_STACKS", "ClusterSpec", "GpuEstimate", "GpuSpec",
           "MemoryReport", "NodeSpec", "Parallel", "Stack", "StepTime", "TransformerShape",
           "check_layout", "estimate", "genslm_2022_layout", "get_gpu", "get_node", "get_stack",
           "gpt", "gpu_memory", "layer_activations", "model_shape", "node_for", "run_stack",
           "step_time", "tuned_estimate", "validation_report"]
