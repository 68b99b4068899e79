"""`WaferSpec`: every hardware constant the simulator uses, in one validated object.

A spec is plain data. Nothing else in the package hard-codes a hardware number: kernels,
the fabric model and the compiler read them from here, so a user can ask "what if the SRAM
were 96 KB" by changing one field. Each preset value is sourced in docs/hardware.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waferscale.errors import SpecError

#: Operations the compute engine has SIMD widths for.
OPS = ("fmac", "mul", "add")
#: Storage dtypes of the fabric model. ``mixed`` is not a storage dtype: it names the
#: fp16 x fp16 -> fp32 accumulate datapath (the SDK's ``fmachs``).
DTYPES = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class SimdWidths:
    """Elements per cycle per PE for each (datapath, op).

    bf16 shares the 16-bit datapath (an assumption: the public SDK tables list fp16 only).
    """

    fp16_fmac: int = 4
    fp16_mul: int = 4
    fp16_add: int = 4
    mixed_fmac: int = 2
    fp32_fmac: int = 1
    fp32_mul: int = 1
    fp32_add: int = 2

    def width(self, dtype: str, op: str, accumulate: str | None = None) -> int:
        """SIMD width for ``op`` on ``dtype`` storage, with an optional wider accumulator.

        A 16-bit FMAC that accumulates in fp32 runs on the mixed datapath.
        """
        if dtype not in DTYPES:
            raise SpecError(f"dtype {dtype!r} has no SIMD width; use one of {', '.join(DTYPES)}")
        if op not in OPS:
            raise SpecError(f"op {op!r} has no SIMD width; use one of {', '.join(OPS)}")
        if dtype == "fp32":
            return getattr(self, f"fp32_{op}")
        if op == "fmac" and accumulate == "fp32":
            return self.mixed_fmac
        return getattr(self, f"fp16_{op}")


@dataclass(frozen=True)
class WaferSpec:
    """A wafer-scale engine as programs see it, plus the physical facts behind it.

    ``rows`` x ``cols`` is the largest rectangle of PEs a program may use (the host I/O
    layer takes the rest of the fabric). Energy fields are estimates (see docs/hardware.md).
    """

    name: str = "custom"
    # -- fabric geometry
    rows: int = 994
    cols: int = 755
    fabric_rows: int = 996
    fabric_cols: int = 757
    spare_fraction: float = 0.015
    core_area_mm2: float = 0.05
    wafer_area_mm2: float = 46225.0
    cores: int = 850_000
    # -- processing element
    sram_bytes: int = 48 * 1024
    sram_banks: int = 8
    clock_hz: float = 0.85e9
    max_clock_hz: float = 1.1e9
    simd: SimdWidths = field(default_factory=SimdWidths)
    mem_reads_per_cycle: int = 2
    mem_writes_per_cycle: int = 1
    mem_word_bits: int = 64
    # -- fabric
    wavelet_bits: int = 32
    color_bits: int = 5
    hop_cycles: int = 1
    ramp_cycles: int = 2
    ramp_wavelets_per_cycle: int = 1
    colors: int = 24
    reserved_colors: int = 6
    links_per_pe: int = 4
    redundant_links_per_pe: int = 4
    # -- system
    io_bits_per_s: float = 1.2e12
    power_w: float = 15_000.0
    # -- energy (estimates)
    energy_pj_per_flop: float = 0.5
    energy_pj_per_sram_access: float = 1.0
    energy_pj_per_hop: float = 0.4

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"spec name must be a non-empty string, got {self.name!r}")
        positive_int = (
            "rows", "cols", "fabric_rows", "fabric_cols", "cores", "sram_bytes", "sram_banks",
            "mem_reads_per_cycle", "mem_writes_per_cycle", "mem_word_bits", "wavelet_bits",
            "color_bits", "hop_cycles", "ramp_wavelets_per_cycle", "colors", "links_per_pe",
        )
        for name in positive_int:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"spec {self.name!r}: field {name} must be a positive integer, "
                                f"got {value!r}")
        for name in ("ramp_cycles", "reserved_colors", "redundant_links_per_pe"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"spec {self.name!r}: field {name} must be an integer >= 0, "
                                f"got {value!r}")
        positive_float = ("core_area_mm2", "wafer_area_mm2", "clock_hz", "max_clock_hz",
                          "io_bits_per_s", "power_w")
        for name in positive_float:
            value = getattr(self, name)
            if not _finite_number(value) or value <= 0:
                raise SpecError(f"spec {self.name!r}: field {name} must be a positive, finite "
                                f"number, got {value!r}")
        for name in ("energy_pj_per_flop", "energy_pj_per_sram_access", "energy_pj_per_hop"):
            value = getattr(self, name)
            if not _finite_number(value) or value < 0:
                raise SpecError(f"spec {self.name!r}: field {name} must be a finite number "
                                f">= 0, got {value!r}")
        if not _finite_number(self.spare_fraction):
            raise SpecError(f"spec {self.name!r}: field spare_fraction must be a number in "
                            f"[0, 0.5), got {self.spare_fraction!r}")
        if not 0.0 <= self.spare_fraction < 0.5:
            raise SpecError(f"spec {self.name!r}: field spare_fraction must be in [0, 0.5), "
                            f"got {self.spare_fraction!r}")
        if self.rows > self.fabric_rows or self.cols > self.fabric_cols:
            raise SpecError(
                f"spec {self.name!r}: program rectangle {self.rows}x{self.cols} is larger than "
                f"the fabric {self.fabric_rows}x{self.fabric_cols}; shrink rows/cols")
        if self.clock_hz > self.max_clock_hz:
            raise SpecError(f"spec {self.name!r}: field clock_hz {self.clock_hz:g} exceeds "
                            f"max_clock_hz {self.max_clock_hz:g}")
        if self.sram_bytes % self.sram_banks:
            raise SpecError(f"spec {self.name!r}: field sram_bytes {self.sram_bytes} must divide "
                            f"into sram_banks {self.sram_banks} equal banks")
        if self.reserved_colors >= self.colors:
            raise SpecError(f"spec {self.name!r}: field reserved_colors {self.reserved_colors} "
                            f"leaves no routable colour of {self.colors}")
        if self.colors > 2 ** self.color_bits:
            raise SpecError(f"spec {self.name!r}: field colors {self.colors} needs more than "
                            f"color_bits={self.color_bits} bits")
        if not isinstance(self.simd, SimdWidths):
            raise SpecError(f"spec {self.name!r}: field simd must be a SimdWidths")
        for f in dataclasses.fields(self.simd):
            value = getattr(self.simd, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SpecError(f"spec {self.name!r}: field simd.{f.name} must be a positive "
                                f"integer, got {value!r}")

    # -- derived figures -------------------------------------------------------------
    @property
    def pes(self) -> int:
        """PEs in the program rectangle."""
        return self.rows * self.cols

    @property
    def sram_bank_bytes(self) -> int:
        return self.sram_bytes // self.sram_banks

    @property
    def routable_colors(self) -> int:
        """Colours left to programs once the runtime's reserved ones are taken."""
        return self.colors - self.reserved_colors

    @property
    def wavelet_bytes(self) -> int:
        return self.wavelet_bits // 8

    def peak_flops(self, dtype: str = "fp16", pes: int | None = None) -> float:
        """Peak FLOP/s from FMAC width x 2 FLOP x PEs x clock (dense, no zero skipping)."""
        width = self.simd.width(dtype, "fmac")
        return 2.0 * width * (self.pes if pes is None else pes) * self.clock_hz

    @property
    def memory_bandwidth_bytes_per_s(self) -> float:
        """SRAM bandwidth of the program rectangle: (reads + writes) x word x PEs x clock."""
        per_cycle = (self.mem_reads_per_cycle + self.mem_writes_per_cycle) * self.mem_word_bits / 8
        return per_cycle * self.pes * self.clock_hz

    @property
    def fabric_bandwidth_bits_per_s(self) -> float:
        """Aggregate link bandwidth: one wavelet per link direction per cycle, 4 links per PE."""
        return self.links_per_pe * self.wavelet_bits * self.pes * self.clock_hz

    @property
    def total_sram_bytes(self) -> int:
        return self.sram_bytes * self.pes

    def seconds(self, cycles: float) -> float:
        return float(cycles) / self.clock_hz

    def replace(self, **changes: Any) -> WaferSpec:
        """A copy with some fields changed, validated again."""
        return _build(self.name if "name" not in changes else changes["name"],
                      {**_as_dict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite: a NaN clock passed
    every ``<= 0`` test and flowed into every figure."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _as_dict(spec: WaferSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def _build(name: str, values: dict[str, Any]) -> WaferSpec:
    known = {f.name for f in dataclasses.fields(WaferSpec)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SpecError(f"spec {name!r}: unknown field(s) {', '.join(unknown)}; known fields are "
                        f"listed in docs/hardware.md")
    values = dict(values)
    simd = values.get("simd")
    if isinstance(simd, dict):
        simd_known = {f.name for f in dataclasses.fields(SimdWidths)}
        bad = sorted(set(simd) - simd_known)
        if bad:
            raise SpecError(f"spec {name!r}: unknown simd field(s) {', '.join(bad)}; "
                            f"use {', '.join(sorted(simd_known))}")
        values["simd"] = SimdWidths(**simd)
    values["name"] = name
    return WaferSpec(**values)


def spec_from_toml(path: str | Path) -> WaferSpec:
    """Load a spec from TOML: optional ``base = "wse2"`` plus any fields to override."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist; pass a preset name "
                        f"({', '.join(PRESETS)}) or a TOML file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec file {path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec file {path} cannot be read ({type(exc).__name__}: "
                        f"{exc}); pass a UTF-8 TOML file") from None
    base_name = data.pop("base", None)
    name = data.pop("name", path.stem)
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in PRESETS:
            raise SpecError(f"spec file {path}: base {base_name!r} is not a preset; use one of "
                            f"{', '.join(PRESETS)}")
        base = _as_dict(PRESETS[base_name])
        if isinstance(data.get("simd"), dict):
            data["simd"] = {**base["simd"], **data["simd"]}
        values = {**base, **data}
    else:
        values = data
    return _build(name, values)


def custom_spec(name: str = "custom", base: str | None = None, **fields: Any) -> WaferSpec:
    """A spec from keyword arguments, e.g. ``custom_spec(rows=16, cols=16)`` for a toy wafer.

    With ``base`` the other fields come from that preset; otherwise from the WSE-2 defaults.
    Setting only ``rows``/``cols`` smaller than the fabric shrinks the fabric with them.
    """
    if base is not None and base not in PRESETS:
        raise SpecError(f"unknown base preset {base!r}; use one of {', '.join(PRESETS)}")
    values = _as_dict(PRESETS[base or "wse2"])
    # A toy wafer: the fabric is the program rectangle unless said otherwise.
    fields.setdefault("fabric_rows", fields.get("rows", values["fabric_rows"]))
    fields.setdefault("fabric_cols", fields.get("cols", values["fabric_cols"]))
    if "rows" in fields or "cols" in fields:
        rows, cols = fields.get("rows", values["rows"]), fields.get("cols", values["cols"])
        if isinstance(rows, int) and isinstance(cols, int):
            fields.setdefault("cores", max(rows * cols, 1))
    if isinstance(fields.get("simd"), dict):
        fields["simd"] = {**values["simd"], **fields["simd"]}
    return _build(name, {**values, **fields})


def get_spec(spec: str | Path | WaferSpec | None = None) -> WaferSpec:
    """Resolve a preset name, a TOML path or a spec object to a `WaferSpec`."""
    if spec is None:
        return PRESETS["wse2"]
    if isinstance(spec, WaferSpec):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    if text.endswith(".toml") or Path(text).is_file():
        return spec_from_toml(text)
    raise SpecError(f"unknown spec {text!r}; use a preset ({', '.join(PRESETS)}) or a .toml file")


# The built-in specs. Every number is sourced in docs/hardware.md (section per preset).
WSE1 = WaferSpec(
    # Every value: docs/hardware.md, section "WSE-1". [S] read in a source, [E] derived
    # there, [A] assumed (no public figure).
    name="wse1",
    rows=633, cols=633, fabric_rows=633, fabric_cols=633,  # [E] square, sqrt(400k cores)
    spare_fraction=0.015,                  # [S] HC31 (the WSE-1 talk): 1-1.5 % spare cores
    core_area_mm2=46225.0 / 400_000 * 0.9,  # [E] wafer / cores, 90 % of it in cores [A]
    wafer_area_mm2=46225.0,                # [S] 215 x 215 mm
    cores=400_000,                         # [S] HC31
    sram_bytes=48 * 1024, sram_banks=8,    # [E] 18 GB [S] / 400k = 48 KiB (18.3 GiB); banks [A]
    clock_hz=0.85e9, max_clock_hz=1.1e9,   # [A] as WSE-2; 9 PB/s [S] at 24 B/cycle is 0.94 GHz
    simd=SimdWidths(),                     # [A] as WSE-2: no public per-op table for WSE-1
    io_bits_per_s=1.2e12,                  # [S] 12 x 100 GbE
    power_w=20_000.0,                      # [S] about 20 kW
    energy_pj_per_flop=1.0, energy_pj_per_sram_access=2.0, energy_pj_per_hop=0.8,  # [E] 16 nm
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
