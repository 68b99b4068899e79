"""The built-in specs. Every number is sourced in docs/hardware.md (section per preset)."""

from __future__ import annotations

from waferscale.hardware.spec import SimdWidths, WaferSpec

WSE1 = WaferSpec(
    name="wse1",
    rows=633, cols=633, fabric_rows=633, fabric_cols=633,  # [E] sqrt(400k cores)
    spare_fraction=0.015, core_area_mm2=46225.0 / 400_000 * 0.9, wafer_area_mm2=46225.0,
    cores=400_000,
    sram_bytes=48 * 1024, sram_banks=8,
    clock_hz=0.85e9, max_clock_hz=1.1e9,
    simd=SimdWidths(),  # [E] assumed equal to WSE-2: no public per-op table for WSE-1
    io_bits_per_s=1.2e12, power_w=20_000.0,
    energy_pj_per_flop=1.0, energy_pj_per_sram_access=2.0, energy_pj_per_hop=0.8,
)

WSE2 = WaferSpec(
    name="wse2",
    rows=994, cols=755, fabric_rows=996, fabric_cols=757,
    spare_fraction=0.015, core_area_mm2=0.05, wafer_area_mm2=46225.0, cores=850_000,
    sram_bytes=48 * 1024, sram_banks=8,
    clock_hz=0.85e9, max_clock_hz=1.1e9,
    simd=SimdWidths(fp16_fmac=4, fp16_mul=4, fp16_add=4, mixed_fmac=2,
                    fp32_fmac=1, fp32_mul=1, fp32_add=2),
    mem_reads_per_cycle=2, mem_writes_per_cycle=1, mem_word_bits=64,
    wavelet_bits=32, color_bits=5, hop_cycles=1, ramp_cycles=2, ramp_wavelets_per_cycle=1,
    colors=24, reserved_colors=6, links_per_pe=4, redundant_links_per_pe=4,
    io_bits_per_s=1.2e12, power_w=15_000.0,
    energy_pj_per_flop=0.5, energy_pj_per_sram_access=1.0, energy_pj_per_hop=0.4,
)

WSE3 = WaferSpec(
    name="wse3",
    rows=1174, cols=755, fabric_rows=1176, fabric_cols=762,
    spare_fraction=70_000 / 970_000, core_area_mm2=0.05, wafer_area_mm2=46225.0,
    cores=900_000,
    sram_bytes=48 * 1024, sram_banks=8,
    clock_hz=0.85e9, max_clock_hz=1.1e9,
    simd=SimdWidths(fp16_fmac=8, fp16_mul=8, fp16_add=8, mixed_fmac=4,
                    fp32_fmac=1, fp32_mul=1, fp32_add=4),
    colors=24, reserved_colors=6,
    io_bits_per_s=1.2e12, power_w=23_000.0,
    energy_pj_per_flop=0.4, energy_pj_per_sram_access=0.8, energy_pj_per_hop=0.3,
)

PRESETS: dict[str, WaferSpec] = {"wse1": WSE1, "wse2": WSE2, "wse3": WSE3}
