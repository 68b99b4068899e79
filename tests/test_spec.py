"""WaferSpec: presets, custom specs, TOML, validation with errors that name the field."""

import pytest

from waferscale.errors import SpecError
from waferscale.hardware import PRESETS, custom_spec, get_spec, spec_from_toml


def test_presets_and_derived_figures():
    wse2 = get_spec("wse2")
    assert get_spec() is wse2
    assert (wse2.rows, wse2.cols, wse2.sram_bytes) == (994, 755, 48 * 1024)
    # hardware.md [E]: 4 FMAC x 2 FLOP x 850k cores x 1.1 GHz = 7.5 PFLOP/s
    assert 2 * wse2.simd.fp16_fmac * wse2.cores * wse2.max_clock_hz == pytest.approx(7.48e15)
    assert wse2.peak_flops("fp16") == 2 * 4 * wse2.pes * wse2.clock_hz
    assert wse2.routable_colors == 18
    assert PRESETS["wse3"].simd.fp16_fmac == 8
    assert PRESETS["wse3"].spare_fraction == pytest.approx(0.072, abs=0.001)


def test_toy_wafer_is_one_line():
    toy = custom_spec(rows=16, cols=16)
    assert (toy.rows, toy.cols, toy.fabric_rows, toy.fabric_cols, toy.pes) == (16, 16, 16, 16, 256)


def test_replace_validates_again():
    with pytest.raises(SpecError, match="sram_bytes"):
        get_spec("wse2").replace(sram_bytes=-1)


@pytest.mark.parametrize("field,value", [("rows", 0), ("clock_hz", -1.0), ("colors", 64),
                                         ("spare_fraction", 0.9), ("reserved_colors", 30),
                                         ("ramp_cycles", -2), ("simd", {"fp16_fmac": 0})])
def test_bad_fields_are_named(field, value):
    with pytest.raises(SpecError, match=field.split("_")[0]):
        custom_spec(**{field: value})


def test_unknown_field_and_preset():
    with pytest.raises(SpecError, match="unknown field"):
        custom_spec(sram_kb=96)
    with pytest.raises(SpecError, match="unknown spec 'wse9'"):
        get_spec("wse9")


def test_toml_roundtrip(tmp_path):
    path = tmp_path / "big_sram.toml"
    path.write_text('base = "wse2"\nsram_bytes = 98304\n[simd]\nfp16_fmac = 8\n')
    spec = spec_from_toml(path)
    assert spec.name == "big_sram" and spec.sram_bytes == 98304
    assert spec.simd.fp16_fmac == 8 and spec.simd.fp32_fmac == 1
    assert get_spec(str(path)).sram_bytes == 98304


def test_malformed_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("rows = = 3\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        spec_from_toml(path)
    path.write_text('base = "wse7"\n')
    with pytest.raises(SpecError, match="base 'wse7'"):
        spec_from_toml(path)


def test_wse1_preset_against_its_published_totals():
    # docs/hardware.md, WSE-1: 400k cores, 18 GB SRAM, 9 PB/s memory, 100 Pb/s fabric
    wse1, wse2 = get_spec("wse1"), get_spec("wse2")
    assert wse1.cores == 400_000
    assert wse1.pes == pytest.approx(wse1.cores, rel=0.005)       # 633 x 633, no host I/O
    assert wse1.sram_bytes * wse1.cores / 2**30 == pytest.approx(18, rel=0.02)
    # memory and fabric bandwidth per core are WSE-2's (20 PB/s and 220 Pb/s over 850k):
    # the same ports and links, which is why its SIMD and port fields are taken from WSE-2
    assert 9e15 / 400_000 == pytest.approx(20e15 / 850_000, rel=0.05)
    assert 100e15 / 400_000 == pytest.approx(220e15 / 850_000, rel=0.05)
    assert (wse1.mem_reads_per_cycle, wse1.mem_word_bits, wse1.wavelet_bits) == \
        (wse2.mem_reads_per_cycle, wse2.mem_word_bits, wse2.wavelet_bits)
