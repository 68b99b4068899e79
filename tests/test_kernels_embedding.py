"""The vocabulary-sharded embedding: values bit-identical to a gather, fabric cycles and SRAM
equal to cost() / sram_bytes() whatever the ids, and choose_layout's pick against a brute
force over every rectangle."""

import time

import numpy as np
import pytest
import torch

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.grid import NORTH, SOUTH
from waferscale.hardware import custom_spec, get_spec
from waferscale.ir import Graph
from waferscale.kernels import embedding as em
from waferscale.kernels.family import ExecContext, Sizing, Stage

SPEC = custom_spec(rows=32, cols=32)
RNG = np.random.default_rng(5)


def make_ids(kind: str, tokens: int, vocab: int, rows: int) -> np.ndarray:
    """Random ids, one id repeated, or ids all in the first row's shard (the worst case of
    a direct owner-to-destination scheme: every token row leaves through one link)."""
    if kind == "random":
        return RNG.integers(0, vocab, tokens)
    if kind == "repeated":
        return np.full(tokens, vocab // 2)
    return RNG.integers(0, -(-vocab // rows), tokens)


# (tokens, vocab, hidden, rows, cols): vocab not divisible by rows, fewer tokens than rows,
# a single token, a single row, padded tiles, GenSLM's vocabulary.
SHAPES = [(10, 70, 16, 3, 4), (3, 50, 9, 6, 2), (1, 37, 8, 5, 3), (16, 23, 12, 4, 3),
          (5, 11, 6, 1, 2), (64, 69, 512, 8, 8), (40, 301, 20, 12, 3)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["random", "repeated", "one_shard"])
@pytest.mark.parametrize("tokens,vocab,hidden,rows,cols", SHAPES)
def test_sharded_is_a_gather_and_costs_its_closed_form(tokens, vocab, hidden, rows, cols,
                                                       kind, dtype):
    f = Fabric(SPEC, rows, cols)
    ids = make_ids(kind, tokens, vocab, rows)
    table = RNG.standard_normal((vocab, hidden)).astype(np.float32)
    y = em.run(f, ids, table, dtype=dtype, layout="sharded")
    np.testing.assert_array_equal(y.to_numpy().astype(np.float32),
                                  to_storage(table, dtype).astype(np.float32)[ids])
    assert (y.rect.rows, y.rect.cols) == (min(rows, tokens), cols)
    assert (y.row_map, y.col_map) == (0, 1)
    assert f.elapsed() == em.cost(SPEC, tokens, vocab, hidden, (rows, cols), dtype=dtype,
                                  layout="sharded")
    assert f.sram.peak() == em.sram_bytes(tokens, vocab, hidden, (rows, cols), dtype,
                                          layout="sharded")
    if min(rows, tokens) > 1:
        # the busiest column link carries at least what the worst case sends over one
        tr, tc = -(-tokens // min(rows, tokens)), -(-hidden // cols)
        busiest = f.port_wavelets[[SOUTH, NORTH]].max()
        assert busiest >= (tokens - tr) * tc


def test_timing_only_gpt2_table_as_a_shape():
    """GPT-2's table (154 MB fp32) never exists on the host: a timing-only run takes its
    shape, and the simulated clocks equal the closed form at wafer scale."""
    spec = get_spec("wse2")
    f = Fabric(spec, 13, 384, timing_only=True)
    y = em.run(f, RNG.integers(0, 50257, 1024), (50257, 768), layout="sharded")
    assert y.tiles is None and y.shape == (1024, 768)
    assert f.elapsed() == em.cost(spec, 1024, 50257, 768, (13, 384), layout="sharded")
    assert f.sram.peak() == em.sram_bytes(1024, 50257, 768, (13, 384), layout="sharded")


def test_layout_errors_say_what_to_change():
    f = Fabric(SPEC, 6, 2)
    table = np.zeros((5, 8), np.float32)
    with pytest.raises(KernelError, match="layout 'tiled'.*'sharded'"):
        em.run(f, np.array([0, 1]), table, layout="tiled")
    with pytest.raises(KernelShapeError, match="timing-only fabric"):
        em.run(f, np.array([0, 1]), (5, 8), layout="sharded")
    with pytest.raises(KernelFitError, match="use at most 5 rows"):
        em.run(f, np.array([0, 1]), table, layout="sharded")
    with pytest.raises(KernelFitError, match=r"sharded.*use at least 33 rows$"):
        em.check(SPEC, 16, 50257, 32, (2, 2), "fp16", layout="sharded")
    with pytest.raises(KernelFitError, match="shard it with layout='sharded'"):
        em.check(SPEC, 16, 50257, 4, (2, 4), "fp16")
    with pytest.raises(KernelShapeError, match="tokens = 0"):
        em.cost(SPEC, 0, 10, 4, (1, 1), layout="sharded")
    assert f.sram.peak() == 0


def _brute_force(spec, tokens, vocab, hidden, max_rows, max_cols, dtype):
    best = None
    for layout in em.LAYOUTS:
        for r in range(1, max_rows + 1):
            for c in range(1, max_cols + 1):
                try:
                    cyc = em.cost(spec, tokens, vocab, hidden, (r, c), dtype=dtype,
                                  layout=layout)
                except KernelFitError:
                    continue
                key = (cyc, r * c)
                if best is None or key < best:
                    best = key
    return best


@pytest.mark.parametrize("tokens,vocab,hidden,dtype", [(40, 3000, 24, "fp32"),
                                                       (5, 900, 16, "bf16"),
                                                       (64, 69, 48, "fp32")])
def test_choose_layout_is_the_fastest_fitting_mapping(tokens, vocab, hidden, dtype):
    spec = custom_spec(rows=24, cols=24)
    layout, r, c, cycles = em.choose_layout(spec, tokens, vocab, hidden, max_rows=24,
                                            max_cols=24, dtype=dtype)
    assert cycles == em.cost(spec, tokens, vocab, hidden, (r, c), dtype=dtype, layout=layout)
    assert (cycles, r * c) == _brute_force(spec, tokens, vocab, hidden, 24, 24, dtype)


def test_choose_layout_gpt2_and_genslm_on_wse2():
    spec = get_spec("wse2")
    em._choose.cache_clear()
    start = time.perf_counter()
    layout, r, c, cycles = em.choose_layout(spec, 1024, 50257, 768, max_rows=spec.rows,
                                            max_cols=spec.cols, dtype="fp32")
    assert time.perf_counter() - start < 0.05       # placer inner loop (~1 ms measured)
    assert layout == "sharded" and r * c * spec.sram_bytes >= 50257 * 768 * 4
    assert em.sram_bytes(1024, 50257, 768, (r, c), "fp32", layout="sharded") \
        <= spec.sram_bytes
    assert em.choose_layout(spec, 1024, 69, 512, max_rows=64, max_cols=64,
                            dtype="bf16")[0] == "replicated"
    with pytest.raises(KernelFitError, match="fits neither layout inside 200x16.*230 rows"):
        em.choose_layout(spec, 1024, 50257, 768, max_rows=200, max_cols=16, dtype="fp32")


@pytest.mark.parametrize("timing_only", [False, True])
def test_runtime_stage_runs_the_planned_layout(timing_only):
    st = Stage("embed", "embedding", ("embed",), "fp32",
               params=em.EmbeddingParams(12, 40, 10, layout="sharded"), sizing=Sizing((8, 2)))
    table = torch.randn(40, 10)
    ids = torch.randint(0, 40, (3, 4))
    ctx = ExecContext(SPEC, Graph(), {}, timing_only)
    out, run = em.run_stage(ctx, st, table, ids)
    assert run.cycles == em.cost(SPEC, 12, 40, 10, (8, 2), layout="sharded")
    assert run.sram_peak == em.sram_bytes(12, 40, 10, (8, 2), layout="sharded")
    if not timing_only:
        torch.testing.assert_close(out, table[ids], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_replicated_values_are_the_fabric_runs_bits(shape, dtype):
    """`replicated_values` (the runtime's path once a stage's figures are remembered) gives
    the replicated run's bits, signed zeros included, and refuses the ids `run` refuses."""
    tokens, vocab, hidden, rows, cols = shape
    rows = min(rows, tokens)                  # the replicated layout needs a token per row
    table = RNG.standard_normal((vocab, hidden)).astype(np.float32)
    table[0, : hidden // 2] = -0.0
    ids = make_ids("random", tokens, vocab, rows)
    ids[0] = 0
    fab = Fabric(SPEC, rows, cols)
    ran = em.run(fab, ids, table, dtype=dtype, layout="replicated").to_numpy()
    got = em.replicated_values(ids, table, dtype)
    assert got.dtype == np.float32 and got.shape == ran.shape
    assert np.array_equal(got.view(np.uint32), np.ascontiguousarray(ran, np.float32).view(
        np.uint32))
    with pytest.raises(KernelError, match="out of range"):
        em.replicated_values(np.array([0, vocab]), table, dtype)
