"""GEMV and the 25-point stencil as wavelet programs, checked against NumPy."""

import pytest

from waferscale.fabric.cycle.gemv import run_gemv
from waferscale.fabric.cycle.stencil import RADIUS, run_stencil
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=16, cols=16)


@pytest.mark.parametrize("rows, cols, m, n", [(1, 1, 3, 2), (2, 3, 4, 5), (4, 4, 8, 8),
                                               (3, 5, 2, 7)])
def test_gemv(rows, cols, m, n):
    run = run_gemv(SPEC, rows, cols, m, n)
    assert run.max_error() < 1e-5
    # every x element costs the data task m fmac cycles plus its two control instructions
    assert run.cycles >= n * (m + 2) + (m + (2 * SPEC.ramp_cycles + 2) * (cols - 1))


@pytest.mark.parametrize("rows, cols, nz", [(1, 1, 4), (1, 6, 3), (3, 2, 5), (6, 7, 8),
                                             (9, 10, 6)])
def test_stencil_step(rows, cols, nz):
    run = run_stencil(SPEC, rows, cols, nz)
    assert run.max_error() < 1e-5
    # 25 vector ops of nz elements at one fp32 FMAC per cycle: the compute floor
    assert run.cycles >= (6 * RADIUS + 1) * nz


def test_stencil_overlaps_communication_with_compute():
    nz = 32
    run = run_stencil(SPEC, 9, 9, nz)
    compute = (6 * RADIUS + 1) * nz
    # the x exchange hides under the z terms, the y exchange under the x terms
    assert run.cycles < compute + 4 * (nz + 20)
    centre = run.result.stats["busy"][4, 4]
    assert centre >= compute
