"""GPUs, nodes and clusters as self-checking config objects, with the public presets.

Every constant has its source in docs/gpu.md. Units: bytes, bytes/s (one direction),
FLOP/s, seconds, watts. Capacities in the data sheets' "GB" are binary (nvidia-smi reports
40,960 MiB on an A100-40GB), so they are stored as GiB.

The efficiencies are model constants, one per GPU or link, identical in every run: the
fraction of a peak that a kernel or collective reaches at large sizes. Size-dependent
losses (wave quantization, memory-bound small matrices, latency) are computed from the
shapes in `waferscale.baselines.gpu.step`, not folded into these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from waferscale.baselines.errors import GpuConfigError

GIB = 2**30
GB = 1e9
#: FlashAttention generations, oldest first.
FLASH_KERNELS = ("fa1", "fa2", "fa3")
#: Head dimensions each generation has kernels for; another head dimension runs the next
#: larger kernel (padded). FlashAttention 1 dispatches to 32, 64 or 128; FlashAttention 2
#: (and 3 here) to multiples of 32 up to 256.
FLASH_HEAD_DIMS = {"fa1": (32, 64, 128), "fa2": tuple(range(32, 257, 32)),
                   "fa3": tuple(range(32, 257, 32))}


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not math.isfinite(value) or value <= 0:
            raise GpuConfigError(f"{type(obj).__name__} {getattr(obj, 'name', '')!s}: "
                                 f"{name} must be a positive number, got {value!r}")


def _fraction(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int | float) or not 0 < value <= 1:
            raise GpuConfigError(f"{type(obj).__name__} {getattr(obj, 'name', '')!s}: "
                                 f"{name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class GpuSpec:
    """One GPU.

    ``peak_flops`` is the dense 16-bit tensor-core peak (no 2:4 sparsity). ``nvlink_bandwidth``
    is per GPU and per direction (half the data sheet's bidirectional total).
    ``gemm_efficiency`` is the fraction of peak a large, well-shaped GEMM reaches;
    ``flash_efficiency`` maps each FlashAttention generation that runs on this GPU
    (``fa1``, ``fa2``, ``fa3``) to the fraction of peak its forward + backward reaches on the
    FLOPs it executes;
    ``memory_efficiency`` the fraction of HBM bandwidth a streaming (elementwise) kernel
    reaches. ``min_kernel_seconds`` is the floor of any kernel's time (launch and tail):
    tiny kernels cost at least this much.
    """

    name: str
    peak_flops: float
    hbm_bytes: float
    hbm_bandwidth: float
    sms: int
    nvlink_bandwidth: float
    tdp_watts: float
    gemm_efficiency: float
    flash_efficiency: tuple[tuple[str, float], ...]
    memory_efficiency: float = 0.8
    min_kernel_seconds: float = 4e-6

    def __post_init__(self) -> None:
        if not self.name:
            raise GpuConfigError("GpuSpec: name must not be empty")
        _positive(self, "peak_flops", "hbm_bytes", "hbm_bandwidth", "sms", "nvlink_bandwidth",
                  "tdp_watts", "min_kernel_seconds")
        _fraction(self, "gemm_efficiency", "memory_efficiency")
        if not isinstance(self.sms, int):
            raise GpuConfigError(f"GpuSpec {self.name}: sms must be an integer")
        if not self.flash_efficiency:
            raise GpuConfigError(f"GpuSpec {self.name}: flash_efficiency needs at least one "
                                 f"kernel generation")
        for kernel, value in self.flash_efficiency:
            if kernel not in FLASH_KERNELS or not 0 < value <= 1:
                raise GpuConfigError(f"GpuSpec {self.name}: flash_efficiency entry "
                                     f"({kernel!r}, {value!r}) needs a kernel in "
                                     f"{', '.join(FLASH_KERNELS)} and a value in (0, 1]")

    def flash_kernel(self, kernel: str = "latest") -> str:
        """The generation that runs when a stack asks for ``kernel``: ``latest`` is the newest
        listed for this GPU; a generation this GPU does not list runs as the newest older
        one (or the oldest listed)."""
        table = dict(self.flash_efficiency)
        if kernel == "latest":
            return max(table, key=FLASH_KERNELS.index)
        if kernel not in FLASH_KERNELS:
            raise GpuConfigError(f"unknown FlashAttention kernel {kernel!r}; known: "
                                 f"{', '.join(FLASH_KERNELS)}, latest")
        if kernel in table:
            return kernel
        older = [k for k in table if FLASH_KERNELS.index(k) < FLASH_KERNELS.index(kernel)]
        if older:
            return max(older, key=FLASH_KERNELS.index)
        return min(table, key=FLASH_KERNELS.index)

    def flash(self, kernel: str = "latest") -> float:
        """Efficiency of the FlashAttention generation that runs for ``kernel``."""
        return dict(self.flash_efficiency)[self.flash_kernel(kernel)]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class NodeSpec:
    """A server: ``gpus_per_node`` GPUs on NVLink, ``nics_per_node`` network ports.

    ``nic_bandwidth`` is per port and direction. ``family`` is the preset this node derives
    from (power and prices are looked up by it, see ``waferscale/baselines/prices.toml``).
    ``host_memory_bytes`` and ``host_memory_bandwidth`` bound CPU offload;
    ``pcie_bandwidth`` is per GPU and direction. ``collective_sms`` is how many SMs of each
    GPU a running collective occupies (NCCL: one thread block per channel; two channels per
    network port on these nodes).
    """

    name: str
    gpu: GpuSpec
    gpus_per_node: int
    nics_per_node: int
    nic_bandwidth: float
    host_memory_bytes: float
    host_memory_bandwidth: float
    pcie_bandwidth: float = 25 * GB
    nvlink_efficiency: float = 0.65
    nic_efficiency: float = 0.9
    nvlink_latency: float = 5e-6
    network_latency: float = 10e-6
    collective_sms: int = 16
    family: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise GpuConfigError("NodeSpec: name must not be empty")
        if not isinstance(self.gpu, GpuSpec):
            raise GpuConfigError(f"NodeSpec {self.name}: gpu must be a GpuSpec")
        for name in ("gpus_per_node", "nics_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GpuConfigError(f"NodeSpec {self.name}: {name} must be a positive "
                                     f"integer, got {value!r}")
        if not self.family:
            object.__setattr__(self, "family", self.name)
        _positive(self, "nic_bandwidth", "host_memory_bytes",
                  "host_memory_bandwidth", "pcie_bandwidth", "nvlink_latency",
                  "network_latency")
        _fraction(self, "nvlink_efficiency", "nic_efficiency")
        if not isinstance(self.collective_sms, int) or not 0 <= self.collective_sms \
                < self.gpu.sms:
            raise GpuConfigError(f"NodeSpec {self.name}: collective_sms must be an integer "
                                 f"in [0, {self.gpu.sms}), got {self.collective_sms!r}")

    @property
    def nvlink_effective(self) -> float:
        """Bytes/s one GPU moves over NVLink in a collective."""
        return self.gpu.nvlink_bandwidth * self.nvlink_efficiency

    @property
    def node_network_effective(self) -> float:
        """Bytes/s all of a node's ports move together, one direction."""
        return self.nics_per_node * self.nic_bandwidth * self.nic_efficiency

    def with_gpus_per_node(self, gpus: int) -> NodeSpec:
        """The same node populated with ``gpus`` GPUs (its ports scale with them)."""
        if not isinstance(gpus, int) or gpus < 1:
            raise GpuConfigError(f"--gpus-per-node must be a positive integer, got {gpus!r}")
        if gpus == self.gpus_per_node:
            return self
        scale = gpus / self.gpus_per_node
        return replace(self, name=f"{self.name}x{gpus}", gpus_per_node=gpus,
                       nics_per_node=max(1, round(self.nics_per_node * scale)))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "gpu"}
        d["gpu"] = self.gpu.name
        return d


@dataclass(frozen=True)
class ClusterSpec:
    """``nodes`` identical nodes on one network."""

    node: NodeSpec
    nodes: int

    def __post_init__(self) -> None:
        if not isinstance(self.node, NodeSpec):
            raise GpuConfigError("ClusterSpec: node must be a NodeSpec")
        if not isinstance(self.nodes, int) or isinstance(self.nodes, bool) or self.nodes < 1:
            raise GpuConfigError(f"ClusterSpec: nodes must be a positive integer, "
                                 f"got {self.nodes!r}")

    @property
    def gpus(self) -> int:
        return self.nodes * self.node.gpus_per_node

    @property
    def gpu(self) -> GpuSpec:
        return self.node.gpu

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node.to_dict(), "nodes": self.nodes, "gpus": self.gpus}


# -- presets (sources: docs/gpu.md, "Hardware") --------------------------------------------
A100_40GB = GpuSpec("a100-40gb", peak_flops=312e12, hbm_bytes=40 * GIB,
                    hbm_bandwidth=1555 * GB, sms=108, nvlink_bandwidth=300 * GB,
                    tdp_watts=400, gemm_efficiency=0.75,
                    flash_efficiency=(("fa1", 0.32), ("fa2", 0.55)))
A100_80GB = replace(A100_40GB, name="a100-80gb", hbm_bytes=80 * GIB, hbm_bandwidth=2039 * GB)
H100 = GpuSpec("h100", peak_flops=989e12, hbm_bytes=80 * GIB, hbm_bandwidth=3350 * GB,
               sms=132, nvlink_bandwidth=450 * GB, tdp_watts=700, gemm_efficiency=0.7,
               flash_efficiency=(("fa2", 0.35), ("fa3", 0.55)))
H200 = replace(H100, name="h200", hbm_bytes=141 * GIB, hbm_bandwidth=4800 * GB)

GPUS: dict[str, GpuSpec] = {g.name: g for g in (A100_40GB, A100_80GB, H100, H200)}

#: Polaris (ALCF): 4 x A100-40GB, 2 Slingshot-11 ports of 200 Gb/s, 512 GB DDR4 on one
#: EPYC 7543P (8 channels DDR4-3200).
POLARIS = NodeSpec("polaris", A100_40GB, gpus_per_node=4, nics_per_node=2,
                   nic_bandwidth=25 * GB, host_memory_bytes=512 * GB,
                   host_memory_bandwidth=204.8 * GB)
#: NVIDIA DGX A100: 8 GPUs on NVSwitch, 8 HDR 200 Gb/s ports, 2 EPYC 7742.
DGX_A100_40GB = NodeSpec("dgx-a100-40gb", A100_40GB, gpus_per_node=8, nics_per_node=8,
                         nic_bandwidth=25 * GB, host_memory_bytes=1024 * GB,
                         host_memory_bandwidth=409.6 * GB)
DGX_A100 = replace(DGX_A100_40GB, name="dgx-a100", family="dgx-a100", gpu=A100_80GB,
                   host_memory_bytes=2048 * GB)
#: NVIDIA DGX H100: 8 GPUs, 8 NDR 400 Gb/s ports.
DGX_H100 = NodeSpec("dgx-h100", H100, gpus_per_node=8, nics_per_node=8, nic_bandwidth=50 * GB,
                    host_memory_bytes=2048 * GB,
                    host_memory_bandwidth=614.4 * GB, pcie_bandwidth=50 * GB)
HGX_H200 = replace(DGX_H100, name="hgx-h200", family="hgx-h200", gpu=H200)

NODES: dict[str, NodeSpec] = {n.name: n for n in (POLARIS, DGX_A100_40GB, DGX_A100, DGX_H100,
                                                  HGX_H200)}

#: The node a bare ``--gpu NAME`` means.
DEFAULT_NODE_FOR_GPU = {"a100-40gb": "polaris", "a100-80gb": "dgx-a100", "h100": "dgx-h100",
                        "h200": "hgx-h200"}


def get_gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise GpuConfigError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}") from None


def get_node(name: str) -> NodeSpec:
    try:
        return NODES[name.lower()]
    except KeyError:
        raise GpuConfigError(f"unknown node {name!r}; known: {', '.join(NODES)}") from None


def node_for(gpu: str | None = None, node: str | None = None,
             gpus_per_node: int | None = None) -> NodeSpec:
    """The node a command means: ``node`` by name, else the usual node of ``gpu``; with
    ``gpus_per_node`` the same node populated with that many GPUs."""
    if node is not None:
        n = get_node(node)
        if gpu is not None and get_gpu(gpu).name != n.gpu.name:
            n = replace(n, name=f"{n.name}-{gpu}", gpu=get_gpu(gpu))
    else:
        g = get_gpu(gpu or "a100-40gb")
        n = get_node(DEFAULT_NODE_FOR_GPU[g.name])
    if gpus_per_node is not None:
        n = n.with_gpus_per_node(gpus_per_node)
    return n


__all__ = ["A100_40GB", "A100_80GB", "DGX_A100", "DGX_A100_40GB", "DGX_H100", "FLASH_HEAD_DIMS",
           "FLASH_KERNELS", "GB", "GIB", "GPUS", "H100", "H200", "HGX_H200", "NODES", "POLARIS",
           "ClusterSpec", "GpuSpec", "NodeSpec", "get_gpu", "get_node", "node_for"]
