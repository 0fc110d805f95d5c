"""Device profiles: one YAML file per device model, describing its Modbus register map as data.

A profile lists *blocks* (a register table plus an address formula for sub-units) and *points*
(typed, scaled fields read from a block and optionally written to another).  The address of a
point for sub-unit ``index`` is ``block.base + block.stride * index + device_offset + point.offset``.
The codec here (decode/encode) is shared by the driver, the simulator and the docs generator.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


def _shipped_profiles() -> Path:
    """The source tree's profiles, or where a non-editable install put them (setup.py data_files)."""
    here = Path(__file__).resolve().parents[2] / "config" / "profiles"
    installed = Path(sys.prefix) / "share" / "campus-edge" / "profiles"
    return here if here.is_dir() or not installed.is_dir() else installed


PROFILE_DIR = _shipped_profiles()

Table = Literal["coil", "discrete", "holding", "input"]
DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]

WORDS: dict[str, int] = {"bool": 1, "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
BIT_TABLES = ("coil", "discrete")
READ_FC: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_RAW_LIMITS: dict[str, tuple[int, int]] = {
    "bool": (0, 1), "uint16": (0, 0xFFFF), "int16": (-0x8000, 0x7FFF),
    "uint32": (0, 0xFFFFFFFF), "int32": (-0x80000000, 0x7FFFFFFF),
}


class ProfileError(ValueError):
    """A profile file is missing or does not describe a valid register map."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Block(_Strict):
    """A group of registers of one table, repeated per sub-unit at ``base + stride * index``."""

    table: Table
    base: int = Field(0, ge=0, le=65535)
    stride: int = Field(0, ge=0)
    size: int = Field(1, ge=1, le=65536, description="registers (or bits) in one sub-unit's block")
    write_whole: bool = Field(
        False, description="a write must rewrite every register of the block at once (FC16)"
    )


class Point(_Strict):
    """One typed field of the device state (``power_on``, ``setpoint_c`` ...)."""

    field: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    block: str
    offset: int = Field(0, ge=0)
    datatype: DataType = "uint16"
    word_order: WordOrder = "big"
    scale: float = 1.0
    bits: tuple[int, int] | None = Field(None, description="inclusive bit range [lo, hi] in the register")
    enum: dict[int, str] | None = None
    boolean: bool = Field(False, description="the value is on/off: non-zero reads as true")
    range: tuple[float, float] | None = Field(None, description="physical range; values outside are rejected")
    unit: str | None = None
    access: Literal["r", "rw", "w"] = "r"
    write_block: str | None = Field(None, description="block written to when it differs from `block`")
    write_offset: int | None = None
    poll: bool = Field(True, description="read on every poll cycle")
    source: str = Field(min_length=3, description="datasheet reference for this register")

    @model_validator(mode="after")
    def _check(self) -> Point:
        if self.bits is not None:
            lo, hi = self.bits
            if not 0 <= lo <= hi <= 15 or WORDS[self.datatype] != 1:
                raise ValueError(f"bits {self.bits} must be 0..15 on a one-word datatype")
        if sum((self.enum is not None, self.boolean, self.scale != 1.0)) > 1:
            raise ValueError("a point is one of: enum, boolean or scaled number")
        return self

    @property
    def words(self) -> int:
        return WORDS[self.datatype]

    @property
    def writable(self) -> bool:
        return self.access in ("rw", "w")


class SubUnits(_Strict):
    """Range of the sub-unit index (`index` in the config), e.g. CoolMasterNet's virtual address."""

    min: int = Field(ge=0)
    max: int = Field(ge=0)
    label: str = "index"


class Limits(_Strict):
    """What the device accepts in one request."""

    max_read_registers: int = Field(125, ge=1, le=125)
    max_read_bits: int = Field(2000, ge=1, le=2000)
    even_count: bool = False
    even_address: bool = False
    max_gap: int = Field(16, ge=0, description="unused registers read to merge two ranges")
    gap_fill: bool = Field(True, description="the device answers reads of undefined registers")


class Serial(_Strict):
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1


class Pulse(_Strict):
    """A timed pulse the device runs itself: one write switches a channel, the device switches it back."""

    function: Literal[5] = Field(description="function code of the pulse write: FC05 with free address and value words")
    on_address: int = Field(ge=0, le=0xFFFF,
                            description="address word that switches channel 0 on for the time; channel n adds n")
    off_address: int | None = Field(None, ge=0, le=0xFFFF,
                                    description="address word that switches channel 0 off for the time, if it can")
    step_s: float = Field(gt=0, description="the value word counts the time in these units")
    max_steps: int = Field(0xFFFF, ge=1, le=0xFFFF, description="the longest time the value word holds, in steps")
    source: str = Field(min_length=3, description="datasheet reference for this command")


class Profile(_Strict):
    """A device model's complete register map."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: Literal["ac", "meter", "relay"]
    vendor: str
    model: str
    description: str = ""
    sources: list[str] = Field(min_length=1)
    serial: Serial = Serial()
    limits: Limits = Limits()
    sub_units: SubUnits | None = None
    channels: int | None = Field(None, ge=1, description="relay channels (relay boards)")
    pulse: Pulse | None = Field(None, description="a relay channel can be switched for a time by one write")
    blocks: dict[str, Block]
    points: list[Point] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Profile:
        seen: set[str] = set()
        for p in self.points:
            if p.field in seen:
                raise ValueError(f"point {p.field!r} defined twice")
            seen.add(p.field)
            for ref in (p.block, p.write_block):
                if ref is not None and ref not in self.blocks:
                    raise ValueError(f"point {p.field!r}: unknown block {ref!r}")
            blk = self.blocks[p.block]
            if p.offset + p.words > blk.size:
                raise ValueError(f"point {p.field!r}: offset {p.offset} outside block size {blk.size}")
            if (blk.table in BIT_TABLES) != (p.datatype == "bool"):
                raise ValueError(f"point {p.field!r}: datatype bool goes with coil/discrete tables only")
            if p.writable and blk.table in ("input", "discrete") and p.write_block is None:
                raise ValueError(f"point {p.field!r}: writable but its block is read-only")
        if self.pulse is not None:
            self._check_pulse(self.pulse)
        return self

    def _check_pulse(self, pulse: Pulse) -> None:
        if self.channels is None:
            raise ValueError("pulse: needs `channels`")
        spans = [(name, base, base + self.channels - 1)
                 for name, base in (("on_address", pulse.on_address), ("off_address", pulse.off_address))
                 if base is not None]
        for name, _first, last in spans:
            if last > 0xFFFF:
                raise ValueError(f"pulse.{name}: {self.channels} channels from it run past 0xFFFF")
        if len(spans) == 2 and spans[0][1] <= spans[1][2] and spans[1][1] <= spans[0][2]:
            raise ValueError("pulse: on_address and off_address ranges overlap")

    def point(self, field: str) -> Point:
        for p in self.points:
            if p.field == field:
                return p
        raise KeyError(field)

    def address(self, block: str, offset: int, index: int = 0, device_offset: int = 0) -> int:
        blk = self.blocks[block]
        return blk.base + blk.stride * index + device_offset + offset

    def check_index(self, index: int | None) -> str | None:
        """Return why `index` is not a valid sub-unit of this model, or None when it is."""
        if self.sub_units is None:
            return None if index is None else f"profile {self.name} has no sub-units; remove `index`"
        if index is None:
            return f"profile {self.name} needs `{self.sub_units.label}` ({self.sub_units.min}..{self.sub_units.max})"
        if not self.sub_units.min <= index <= self.sub_units.max:
            return (f"index {index} out of range {self.sub_units.min}..{self.sub_units.max} "
                    f"of profile {self.name}")
        return None


# ---------------------------------------------------------------------------------------------
# codec: registers <-> typed values


class Rejected(Enum):
    """Why a raw value did not become a state value."""

    OUT_OF_RANGE = "out_of_range"
    UNKNOWN_ENUM = "unknown_enum"
    NOT_A_NUMBER = "not_a_number"


@dataclass(frozen=True, slots=True)
class Decoded:
    value: Any
    rejected: Rejected | None = None


def raw_from_words(point: Point, words: Sequence[int]) -> int | float:
    """The raw number held in `words` (already the point's own words) before scaling."""
    if point.datatype in ("uint16", "bool"):
        raw: int | float = words[0]
    elif point.datatype == "int16":
        raw = words[0] - 0x10000 if words[0] & 0x8000 else words[0]
    else:
        hi, lo = (words[0], words[1]) if point.word_order == "big" else (words[1], words[0])
        data = struct.pack(">HH", hi, lo)
        fmt = {"int32": ">i", "uint32": ">I", "float32": ">f"}[point.datatype]
        raw = struct.unpack(fmt, data)[0]
    if point.bits is not None:
        lo_bit, hi_bit = point.bits
        raw = (int(raw) >> lo_bit) & ((1 << (hi_bit - lo_bit + 1)) - 1)
    return raw


def decode(point: Point, words: Sequence[int]) -> Decoded:
    """Typed value of `point` from its words; out-of-range and unknown codes are rejected."""
    raw = raw_from_words(point, words)
    if point.datatype == "bool" or point.boolean:
        return Decoded(bool(raw))
    if point.enum is not None:
        name = point.enum.get(int(raw))
        return Decoded(None, Rejected.UNKNOWN_ENUM) if name is None else Decoded(name)
    if isinstance(raw, float) and not math.isfinite(raw):
        return Decoded(None, Rejected.NOT_A_NUMBER)
    value: int | float = raw * point.scale if point.scale != 1.0 else raw
    if isinstance(value, float):
        value = round(value, 6)
    if point.range is not None and not point.range[0] <= value <= point.range[1]:
        return Decoded(None, Rejected.OUT_OF_RANGE)
    return Decoded(value)


def encode(point: Point, value: Any, current: int = 0) -> list[int]:
    """Words that store `value` for `point`; `current` is the register's present content (bit fields)."""
    if point.enum is not None:
        codes: dict[str, int] = {}
        for code, name in sorted(point.enum.items()):
            codes.setdefault(name, code)  # several codes may read as one name; write the lowest
        if value not in codes:
            raise ValueError(f"{point.field}: {value!r} is not one of {sorted(codes)}")
        raw: int | float = codes[value]
    elif point.boolean or point.datatype == "bool":
        raw = int(bool(value))
    else:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{point.field}: {value!r} is not a finite number")
        if point.range is not None and not point.range[0] <= value <= point.range[1]:
            raise ValueError(f"{point.field}: {value} outside {point.range[0]}..{point.range[1]}")
        raw = value / point.scale if point.scale != 1.0 else value
    if point.datatype == "float32":
        try:
            hi, lo = struct.unpack(">HH", struct.pack(">f", float(raw)))
        except OverflowError as exc:
            raise ValueError(f"{point.field}: {value!r} does not fit float32") from exc
        return [hi, lo] if point.word_order == "big" else [lo, hi]
    # a value the register cannot hold must not wrap around into another, valid-looking one
    num = round(raw)
    lo_raw, hi_raw = _RAW_LIMITS[point.datatype]
    if point.bits is not None:
        lo_raw, hi_raw = 0, (1 << (point.bits[1] - point.bits[0] + 1)) - 1
    if not lo_raw <= num <= hi_raw:
        raise ValueError(f"{point.field}: {value!r} does not fit the register (raw {lo_raw}..{hi_raw})")
    if point.bits is not None:
        mask = hi_raw << point.bits[0]
        return [(current & ~mask & 0xFFFF) | (num << point.bits[0])]
    if WORDS[point.datatype] == 1:
        return [num & 0xFFFF]
    hi, lo = struct.unpack(">HH", struct.pack(">i" if point.datatype == "int32" else ">I", num))
    return [hi, lo] if point.word_order == "big" else [lo, hi]


# ---------------------------------------------------------------------------------------------
# loading


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def load_profile_file(path: Path) -> Profile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ProfileError(f"{path}: a profile must be a mapping")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {_format_validation(exc)}") from exc
    if profile.name != path.stem:
        raise ProfileError(f"{path}: name {profile.name!r} must match the file name {path.stem!r}")
    return profile


def profile_dirs(extra: Sequence[Path] = ()) -> list[Path]:
    """Search order: a site's own directories first, then the profiles shipped with the package."""
    return [*extra, PROFILE_DIR]


@cache
def _load_cached(path: Path, mtime_ns: int) -> Profile:
    del mtime_ns  # part of the cache key only
    return load_profile_file(path)


def load_profile(name: str, extra_dirs: Sequence[Path] = ()) -> Profile:
    for d in profile_dirs(extra_dirs):
        path = d / f"{name}.yaml"
        if path.is_file():
            return _load_cached(path, path.stat().st_mtime_ns)
    raise ProfileError(f"unknown profile {name!r} (looked in {', '.join(str(d) for d in profile_dirs(extra_dirs))})")


def available_profiles(extra_dirs: Sequence[Path] = ()) -> list[str]:
    names: set[str] = set()
    for d in profile_dirs(extra_dirs):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)
