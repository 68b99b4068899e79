"""A compiled model on a defective wafer: same logits bit for bit, detours only in the clocks.

The defect map is built from the perfect compile's placement so that every kernel-grid
rectangle has a defective core in each of its rows (one column in from its left edge):
the remap then shifts those rows by one spare, and every logical link spanning the defect
costs an extra hop. A random map at a realistic density would mostly miss the few small
rectangles a tiny model uses and prove nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import waferscale
from waferscale.errors import SparesExhaustedError
from waferscale.fabric.defective import resolve_remap
from waferscale.hardware import get_spec
from waferscale.hardware.defects import DefectMap, Remap


@pytest.fixture(scope="module")
def genslm() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from waferscale.models import load_model

    torch.manual_seed(0)
    m, example, _ = load_model("genslm-25m", seq=16, batch=1, layers=1)
    return m, example


def _map_inside_stages(cm: waferscale.CompiledModel) -> DefectMap:
    """One defect per row of every kernel grid wider than 2 PEs, at its second column."""
    spec = cm.program.spec
    coords = []
    for st in cm.program.stages:
        r = cm.program.placement.get(st.name)
        if r is None or not st.pes or st.rect[1] < 3:
            continue
        coords += [(r.row + i, r.col + 1) for i in range(st.rect[0])]
    return DefectMap.from_coords(spec, sorted(set(coords)))


@pytest.fixture(params=["forwarding", "double buffered"])
def ring(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """MeshGEMM forwards each block as soon as it arrives (`gemm.FORWARDING`), so a detour's
    extra hop hides under a compute-bound step; double buffered, every step's blocks leave
    together at its start and the detour shows in the step. Both must give the perfect
    wafer's logits; where the schedule exposes link latency, the detours must cost."""
    from waferscale.kernels import gemm

    if request.param == "double buffered":
        monkeypatch.setattr(gemm, "FORWARDING", frozenset())
    # the sizing caches hold the other schedule's plans: the GEMM's in this process, and
    # the placer's on disk (keyed by the source, which a monkeypatch does not change)
    monkeypatch.setenv("WAFERSCALE_NO_CACHE", "1")
    for cached in (gemm._grid_table, gemm._gemm_layout):
        cached.cache_clear()
        request.addfinalizer(cached.cache_clear)
    return str(request.param)


def test_compiled_model_on_defective_wafer_same_logits_more_cycles(genslm, ring) -> None:
    m, example = genslm
    perfect = waferscale.compile(m, example)
    dmap = _map_inside_stages(perfect)
    assert dmap.n_defects > 100
    broken = waferscale.compile(m, example, defects=dmap)
    # the remap hides the defects: same placement, same program
    assert {k: tuple(vars(v).values()) for k, v in broken.program.placement.items()} == \
        {k: tuple(vars(v).values()) for k, v in perfect.program.placement.items()}

    ref = perfect(**example).logits
    out = broken(**example).logits
    assert np.array_equal(ref.numpy(), out.numpy())

    rp, rb = perfect.report(), broken.report()
    assert rb["defects"]["n_defects"] == dmap.n_defects and rp["defects"] is None
    cp = {s: r.cycles for s, r in perfect.last_run["runs"].items()}
    cb = {s: r.cycles for s, r in broken.last_run["runs"].items()}
    assert cp.keys() == cb.keys()
    assert all(cb[s] >= cp[s] for s in cp)
    assert rb["bottleneck_cycles"] >= rp["bottleneck_cycles"]
    if ring == "double buffered":
        slower = [s for s in cp if cb[s] > cp[s]]
        assert slower, "no stage paid for its detours"
        assert sum(cb.values()) > sum(cp.values())

    # timing-only runs see the same detours as the value runs
    broken.time_only(**example)
    assert {s: r.cycles for s, r in broken.last_run["runs"].items()} == cb


def test_resolve_remap_forms() -> None:
    spec = get_spec("wse2")
    assert resolve_remap(spec, None) is None
    a = resolve_remap(spec, (0.001, 3))
    b = resolve_remap(spec, (0.001, 3))
    assert isinstance(a, Remap) and np.array_equal(a.shift, b.shift) and a.n_defects > 0
    assert resolve_remap(spec, 0.0).n_defects == 0
    assert resolve_remap(spec, a) is a


def test_exhausted_spares_fail_at_compile(genslm) -> None:
    from waferscale.hardware.defects import physical_shape

    m, example = genslm
    spec = get_spec("wse2")
    spares = physical_shape(spec)[1] - spec.cols
    dmap = DefectMap.from_coords(spec, [(5, c) for c in range(spares + 1)])
    with pytest.raises(SparesExhaustedError):
        waferscale.compile(m, example, defects=dmap)

