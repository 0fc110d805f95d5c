"""Write composition: which register writes store a set of field values on a device.

Pure functions.  One register goes out as FC06 (coils as FC05), a multi-word point as FC16; a bit
field is read-modify-written from the last word read, so its neighbours keep their bits; a block
marked `write_whole` (Daikin's control block) is rewritten as a whole with FC16, its other fields
from their latest values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drivers.modbus.model import WriteError
from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import Point, Table, encode


@dataclass(frozen=True, slots=True)
class Write:
    """One write request: `words` from `address` on; `multiple` sends even one register as FC16."""

    table: Table
    address: int
    words: tuple[int, ...]
    multiple: bool


def writable_points(spec: DeviceSpec, values: Mapping[str, Any]) -> list[Point]:
    """The points `values` names, each writable and each value encodable; raises WriteError."""
    if not values:
        raise WriteError("bad_request", "nothing to write")
    points = []
    for name, value in values.items():
        try:
            point = spec.profile.point(name)
        except KeyError:
            raise WriteError("bad_request", f"{spec.device_id} has no field {name!r}") from None
        if not point.writable:
            raise WriteError("bad_request", f"{spec.device_id}.{name} is read-only")
        try:
            encode(point, value)
        except (ValueError, TypeError) as exc:
            raise WriteError("out_of_range", str(exc)) from None
        points.append(point)
    return points


def compose(spec: DeviceSpec, points: Sequence[Point], values: Mapping[str, Any],
            raw: Mapping[tuple[int, Table, int], int], latest: Mapping[str, Any]) -> list[Write]:
    """Writes that store `values`; `raw` is the last word read per register, `latest` the device's values."""
    profile = spec.profile
    words: dict[tuple[Table, int], int] = {}
    whole: dict[str, tuple[Table, int, int]] = {}

    def current(table: Table, address: int, point: Point) -> int:
        if (table, address) in words:
            return words[(table, address)]
        read_table = profile.blocks[point.block].table
        word = raw.get((spec.unit, table, address))
        if word is None:  # written elsewhere than read (Daikin): start from the register we read
            word = raw.get((spec.unit, read_table, spec.read_address(point)), 0)
        return word

    for point in points:
        block = point.write_block or point.block
        if profile.blocks[block].write_whole:
            blk = profile.blocks[block]
            whole[block] = (blk.table, spec.address(block, 0), blk.size)
    for block, (table, base, size) in whole.items():
        for i in range(size):
            words[(table, base + i)] = raw.get((spec.unit, table, base + i), 0)
        for point in profile.points:
            if not point.writable or (point.write_block or point.block) != block or point.field in values:
                continue
            if point.field not in latest:
                raise WriteError("write_failed", f"{spec.device_id}.{point.field} unknown; cannot rewrite its block")
            _put(words, spec, point, latest[point.field])
    for point in points:
        table, address = spec.write_target(point)
        if (table, address) not in words:
            words[(table, address)] = current(table, address, point)
        _put(words, spec, point, values[point.field])
    out: list[Write] = []
    done: set[tuple[Table, int]] = set()
    for table, base, size in whole.values():
        out.append(Write(table, base, tuple(words[(table, base + i)] for i in range(size)), True))
        done.update((table, base + i) for i in range(size))
    for point in points:
        table, address = spec.write_target(point)
        if (table, address) in done:
            continue
        n = point.words
        out.append(Write(table, address, tuple(words[(table, address + i)] for i in range(n)), n > 1))
        done.update((table, address + i) for i in range(n))
    return out


def _put(words: dict[tuple[Table, int], int], spec: DeviceSpec, point: Point, value: Any) -> None:
    table, address = spec.write_target(point)
    encoded = encode(point, value, words.get((table, address), 0))
    for i, word in enumerate(encoded):
        words[(table, address + i)] = word
