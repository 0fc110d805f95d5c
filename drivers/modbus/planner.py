"""Request planner: turn devices' polled points into as few Modbus read requests as each device allows.

Pure functions. Reads of devices that share a unit id, a table and a poll period are merged: ranges
are joined across gaps of unused registers up to ``limits.max_gap`` (when ``limits.gap_fill``), a
request never exceeds 125 registers or the profile's own cap, SDM630-style even starts and counts are
kept, and a multi-word point is never split across two requests.  ``plan_per_value`` and
``plan_contiguous`` are the naive planners the benchmarks compare against.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.profile import BIT_TABLES, READ_FC, Limits, Point, Profile, Table

MAX_READ_REGISTERS = 125  # Modbus spec: FC03/FC04 return at most 125 registers
MAX_READ_BITS = 2000  # Modbus spec: FC01/FC02 return at most 2000 bits


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One configured Modbus device as the planner and the engine see it."""

    device_id: str
    profile: Profile
    unit: int
    index: int | None = None
    offset: int = 0
    poll_s: float = 1.0
    timeout_s: float | None = None

    def address(self, block: str, offset: int) -> int:
        return self.profile.address(block, offset, self.index or 0, self.offset)

    def read_address(self, point: Point) -> int:
        return self.address(point.block, point.offset)

    def write_target(self, point: Point) -> tuple[Table, int]:
        """Table and address a write of `point` goes to."""
        block = point.write_block or point.block
        offset = point.write_offset if point.write_offset is not None else point.offset
        return self.profile.blocks[block].table, self.address(block, offset)


@dataclass(frozen=True, slots=True)
class Part:
    """The words of one device's point inside a request."""

    device_id: str
    point: Point
    address: int

    @property
    def end(self) -> int:
        return self.address + self.point.words

    def __repr__(self) -> str:
        return f"Part({self.device_id}.{self.point.field}@{self.address})"


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read transaction: unit, table, range, period, and which points it feeds."""

    unit: int
    table: Table
    address: int
    count: int
    poll_s: float
    parts: tuple[Part, ...] = field(default=(), compare=False)

    @property
    def key(self) -> tuple[int, Table, int, int]:
        return (self.unit, self.table, self.address, self.count)

    @property
    def function_code(self) -> int:
        return READ_FC[self.table]

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.device_id for p in self.parts))

    def words(self, part: Part, data: Sequence[int]) -> Sequence[int]:
        """The slice of a response's `data` that holds `part`."""
        start = part.address - self.address
        return data[start : start + part.point.words]


@dataclass(frozen=True, slots=True)
class _Rules:
    cap: int
    max_gap: int
    gap_fill: bool
    even_count: bool
    even_address: bool


def _rules(table: Table, limits: Iterable[Limits]) -> _Rules:
    """The strictest rules of every profile sharing a request (normally they are one device)."""
    lims = list(limits)
    bits = table in BIT_TABLES
    cap = min(MAX_READ_BITS if bits else MAX_READ_REGISTERS,
              *(lim.max_read_bits if bits else lim.max_read_registers for lim in lims))
    even_count = any(lim.even_count for lim in lims)
    if even_count:
        cap -= cap % 2
    return _Rules(
        cap=cap,
        max_gap=min(lim.max_gap for lim in lims),
        gap_fill=all(lim.gap_fill for lim in lims),
        even_count=even_count,
        even_address=any(lim.even_address for lim in lims),
    )


def parts_of(spec: DeviceSpec, fields: Collection[str] | None = None) -> list[Part]:
    """Parts for the polled points of `spec` (or exactly `fields`, polled or not)."""
    points = spec.profile.points
    chosen = [p for p in points if p.poll] if fields is None else [p for p in points if p.field in fields]
    return [Part(spec.device_id, p, spec.read_address(p)) for p in chosen]


GroupKey = tuple[int, Table, float]


def _groups(specs: Iterable[DeviceSpec], fields: Collection[str] | None = None
            ) -> dict[GroupKey, tuple[list[Part], list[Limits]]]:
    groups: dict[GroupKey, tuple[list[Part], list[Limits]]] = defaultdict(lambda: ([], []))
    for spec in specs:
        for part in parts_of(spec, fields):
            table = spec.profile.blocks[part.point.block].table
            parts, limits = groups[(spec.unit, table, spec.poll_s)]
            parts.append(part)
            limits.append(spec.profile.limits)
    return groups


def _span(start: int, end: int, rules: _Rules) -> tuple[int, int]:
    """Aligned (start, count) covering [start, end) under the even rules."""
    if rules.even_address:
        start -= start % 2
    count = end - start
    if rules.even_count:
        count += count % 2
    return start, count


def _merge(key: GroupKey, parts: list[Part], rules: _Rules, gap: int,
           barriers: Sequence[tuple[int, int]], solo: Collection[str]) -> list[ReadRequest]:
    """Greedy left-to-right merge: extend the open request while the next part still fits.

    Greedy is optimal here: each request starts at the first uncovered part and reaches as far as
    the cap allows, so no plan covers the same parts with fewer requests.
    """
    unit, table, period = key
    out: list[ReadRequest] = []
    current: list[Part] = []
    start = end = 0

    def close() -> None:
        if current:
            a, n = _span(start, end, rules)
            out.append(ReadRequest(unit, table, a, n, period, tuple(current)))

    for part in sorted(parts, key=lambda p: (p.address, p.end, p.device_id)):
        if current:
            new_end = max(end, part.end)
            fits = _span(start, new_end, rules)[1] <= rules.cap
            near = part.address - end <= gap
            blocked = any(start < b_end and b_start < new_end for b_start, b_end in barriers)
            alone = part.device_id != current[0].device_id and (
                part.device_id in solo or current[0].device_id in solo)
            if fits and near and not blocked and not alone:
                current.append(part)
                end = new_end
                continue
            close()
        current, start, end = [part], part.address, part.end
    close()
    return out


def plan(specs: Iterable[DeviceSpec], *, avoid: Iterable[tuple[int, Table, int, int]] = (),
         solo: Collection[str] = (), fields: Collection[str] | None = None) -> list[ReadRequest]:
    """Fewest requests the devices allow.

    `avoid` holds (unit, table, start, end) ranges no request may cover (a failing sub-unit's
    registers); devices in `solo` are never merged with another device; `fields` restricts the
    plan to those fields (a write's read-back).
    """
    barriers: dict[tuple[int, Table], list[tuple[int, int]]] = defaultdict(list)
    for unit, table, start, end in avoid:
        barriers[(unit, table)].append((start, end))
    out: list[ReadRequest] = []
    for key, (parts, limits) in _groups(specs, fields).items():
        rules = _rules(key[1], limits)
        gap = rules.max_gap if rules.gap_fill else 0
        out.extend(_merge(key, parts, rules, gap, barriers[(key[0], key[1])], solo))
    return sorted(out, key=lambda r: (r.poll_s, r.unit, r.table, r.address))


def plan_contiguous(specs: Iterable[DeviceSpec]) -> list[ReadRequest]:
    """Naive planner: merge only directly adjacent points, never read unused registers."""
    out: list[ReadRequest] = []
    for key, (parts, limits) in _groups(specs).items():
        rules = _rules(key[1], limits)
        out.extend(_merge(key, parts, rules, 0, (), ()))
    return sorted(out, key=lambda r: (r.poll_s, r.unit, r.table, r.address))


def plan_per_value(specs: Iterable[DeviceSpec]) -> list[ReadRequest]:
    """Naive planner: one request per polled point."""
    out: list[ReadRequest] = []
    for (unit, table, period), (parts, limits) in _groups(specs).items():
        rules = _rules(table, limits)
        for part in parts:
            a, n = _span(part.address, part.end, rules)
            out.append(ReadRequest(unit, table, a, n, period, (part,)))
    return sorted(out, key=lambda r: (r.poll_s, r.unit, r.table, r.address))


def device_ranges(spec: DeviceSpec) -> list[tuple[int, Table, int, int]]:
    """(unit, table, start, end) of every polled range of a device: what `avoid` takes."""
    out = []
    for part in parts_of(spec):
        table = spec.profile.blocks[part.point.block].table
        out.append((spec.unit, table, part.address, part.end))
    return out
