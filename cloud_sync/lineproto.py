"""InfluxDB line protocol (CONTRACT.md section 4): points, escaping, and the gzip request body."""

from __future__ import annotations

import gzip
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_MEASUREMENT_ESC = str.maketrans({",": r"\,", " ": r"\ ", "\\": "\\\\", "\n": " ", "\r": " "})
_KEY_ESC = str.maketrans({",": r"\,", " ": r"\ ", "=": r"\=", "\\": "\\\\", "\n": " ", "\r": " "})


def escape_measurement(s: str) -> str:
    """Commas, spaces and backslashes escaped; newlines (not representable) become spaces."""
    return s.translate(_MEASUREMENT_ESC)


def escape_key(s: str) -> str:
    """A tag key, tag value or field key: commas, spaces, equals signs and backslashes escaped."""
    return s.translate(_KEY_ESC)


def format_float(v: float) -> str:
    """Always a float in line protocol (no `i` suffix): a field never changes type (Influx 400s on that)."""
    return repr(float(v))


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]      # sorted by key (what Influx recommends)
    fields: tuple[tuple[str, float], ...]
    ts_ms: int

    def line(self) -> str:
        """One line of line protocol (ms precision), without the newline."""
        tags = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in self.tags if k and v)
        fields = ",".join(f"{escape_key(k)}={format_float(v)}" for k, v in self.fields)
        return f"{escape_measurement(self.measurement)}{tags} {fields} {self.ts_ms}"


def make_point(measurement: str, tags: Mapping[str, str | None], fields: Mapping[str, Any], ts_ms: int) -> Point | None:
    """A point with the numeric fields only (bools 0/1; None, NaN, inf and text skipped); None if none is left."""
    out: list[tuple[str, float]] = []
    for k, v in fields.items():
        if isinstance(v, bool):
            out.append((k, 1.0 if v else 0.0))
        elif isinstance(v, int | float) and math.isfinite(v):
            out.append((k, float(v)))
    if not out:
        return None
    return Point(measurement, tuple(sorted((k, v) for k, v in tags.items() if v)), tuple(out), ts_ms)


def encode_body(lines: Iterable[str]) -> bytes:
    """The gzip request body."""
    return gzip.compress("\n".join(lines).encode() + b"\n", compresslevel=6)
