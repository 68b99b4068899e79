"""Problem generators for tests and benchmarks: random pipelines and transformer stacks.

The transformer generator turns a model config (layers, width, FFN width, sequence length,
vocabulary) into per-kernel work and SRAM per token, so the placer can be measured on a
GenSLM- or GPT-2-shaped graph without the compiler. Counting conventions (stated so the
figures can be checked): a sample is one token; GEMMs cost MACs / fp16 FMAC width
PE-cycles; causal attention reads on average S/2 keys and S/2 values per token (d x S MACs);
element-wise kernels cost their ops / fp16 width; fp16 values travel two per 32-bit
wavelet; resident SRAM is fp16 weights plus the K/V cache for S tokens.
"""

from __future__ import annotations

import numpy as np

from waferscale.compiler.floorplan.problem import Block, Net, PlacementProblem
from waferscale.hardware.spec import WaferSpec


def random_pipeline(n: int, spec: WaferSpec, seed: int = 0, skip_prob: float = 0.15,
                    max_skip: int = 6, sram_fill: float = 0.3) -> PlacementProblem:
    """A chain of ``n`` kernels with random (log-normal) work, SRAM filling about
    ``sram_fill`` of the wafer, traffic to the next kernel and some skip connections
    (``skip_prob`` per kernel, up to ``max_skip`` ahead)."""
    rng = np.random.default_rng(seed)
    work = rng.lognormal(mean=10.0, sigma=1.0, size=n)
    sram_share = rng.lognormal(mean=0.0, sigma=1.0, size=n)
    sram = sram_share / sram_share.sum() * sram_fill * spec.sram_bytes * spec.pes
    blocks = [Block(f"k{i}", float(work[i]), float(sram[i])) for i in range(n)]
    traffic = rng.lognormal(mean=3.0, sigma=0.7, size=n)
    nets = [Net(f"k{i}", f"k{i + 1}", float(traffic[i])) for i in range(n - 1)]
    for i in range(n):
        if rng.random() < skip_prob:
            j = i + int(rng.integers(2, max_skip + 1))
            if j < n:
                nets.append(Net(f"k{i}", f"k{j}", float(traffic[i]) * 0.5))
    return PlacementProblem(blocks, nets, spec)


def transformer_pipeline(spec: WaferSpec, layers: int, d: int, ffn: int, seq: int,
                         heads: int, vocab: int | None = None, prefix: str = "",
                         residual: bool = True) -> PlacementProblem:
    """Layer-pipelined decoder: per layer [qkv, attn, proj, ln1, fc1, gelu, fc2, ln2]
    (plus embedding and LM head when ``vocab`` is given), with residual skip nets."""
    width = spec.simd.width("fp16", "fmac")
    ew = spec.simd.width("fp16", "add")
    blocks: list[Block] = []
    nets: list[Net] = []

    def add(name: str, macs: float, weights: float, extra_bytes: float = 0.0,
            ops: float = 0.0) -> str:
        full = f"{prefix}{name}"
        blocks.append(Block(full, macs / width + ops / ew, 2.0 * weights + extra_bytes))
        return full

    def link(a: str, b: str, values: float) -> None:
        nets.append(Net(a, b, values / 2.0))

    prev = None
    if vocab:
        prev = add("embed", 0.0, vocab * d, ops=d)
    for i in range(layers):
        qkv = add(f"l{i}.qkv", 3 * d * d, 3 * d * d + 3 * d)
        attn = add(f"l{i}.attn", d * seq, 0, extra_bytes=2 * 2 * seq * d, ops=5 * heads * seq / 2)
        proj = add(f"l{i}.proj", d * d, d * d + d)
        ln1 = add(f"l{i}.ln1", 0, 2 * d, ops=8 * d)
        fc1 = add(f"l{i}.fc1", d * ffn, d * ffn + ffn)
        gelu = add(f"l{i}.gelu", 0, 0, ops=8 * ffn)
        fc2 = add(f"l{i}.fc2", ffn * d, ffn * d + d)
        ln2 = add(f"l{i}.ln2", 0, 2 * d, ops=8 * d)
        if prev is not None:
            link(prev, qkv, d)
            if residual:
                link(prev, ln1, d)
        link(qkv, attn, 3 * d)
        link(attn, proj, d)
        link(proj, ln1, d)
        link(ln1, fc1, d)
        if residual:
            link(ln1, ln2, d)
        link(fc1, gelu, ffn)
        link(gelu, fc2, ffn)
        link(fc2, ln2, d)
        prev = ln2
    if vocab:
        head = add("lm_head", d * vocab, d * vocab)
        assert prev is not None
        link(prev, head, d)
    return PlacementProblem(blocks, nets, spec)


def genslm_like(spec: WaferSpec, config: dict, seq: int | None = None) -> PlacementProblem:
    """A GPT-NeoX (GenSLM) config dict -> transformer pipeline (HF key names)."""
    return transformer_pipeline(
        spec, layers=int(config["num_hidden_layers"]), d=int(config["hidden_size"]),
        ffn=int(config["intermediate_size"]),
        seq=int(seq or config.get("max_position_embeddings", 2048)),
        heads=int(config["num_attention_heads"]), vocab=int(config.get("vocab_size", 0)) or None)


def gpt2_small(spec: WaferSpec, seq: int = 1024) -> PlacementProblem:
    """GPT-2 small: 12 layers, d=768, FFN 3072, 12 heads, vocabulary 50,257."""
    return transformer_pipeline(spec, layers=12, d=768, ffn=3072, seq=seq, heads=12,
                                vocab=50257)
