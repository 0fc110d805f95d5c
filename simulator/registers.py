"""Register images of the simulated devices, laid out and encoded by their profiles.

Each Modbus unit id on a bus has four tables; each configured device owns the addresses its
profile's blocks give it (`Profile.address`). `refresh` writes the physics state into the
registers with the profile codec; a master's write is decoded with the same codec and becomes a
command to the simulated AC or relay, so the bytes on the wire are exactly what the profile says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from drivers.modbus.profile import BIT_TABLES, Point, Profile, decode, encode
from drivers.modbus.pulse import ALL_RELAYS_ADDRESS, COIL_FLIP, COIL_OFF, COIL_ON
from edge.core.config import ModbusDevice
from simulator.physics import FANS, MODES, AcUnit, Fan, MeterSnapshot, Mode, RelayBoard, SchoolPhysics

Table = Literal["coil", "discrete", "holding", "input"]
TABLES: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
FC_TABLE: dict[int, Table] = {1: "coil", 2: "discrete", 3: "holding", 4: "input",
                              5: "coil", 6: "holding", 15: "coil", 16: "holding"}

# Modbus exception codes
ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03
DEVICE_FAILURE = 0x04



class ModbusError(Exception):
    """A request the device answers with a Modbus exception code."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"exception {code:#04x}: {why}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Span:
    """Addresses [start, end) of one table that a device owns."""

    table: Table
    start: int
    end: int

    def overlaps(self, table: Table, start: int, count: int) -> bool:
        return table == self.table and start < self.end and self.start < start + count


Apply = Callable[[], None]


class DeviceModel:
    """One configured Modbus device: its address spans, its refresh and its write handling."""

    def __init__(self, device: ModbusDevice, profile: Profile) -> None:
        self.device = device
        self.profile = profile
        self.spans = [Span(blk.table, self.addr(name, 0), self.addr(name, 0) + blk.size)
                      for name, blk in profile.blocks.items()]
        self.writable: dict[Table, set[int]] = {t: set() for t in TABLES}
        for p in profile.points:
            if p.writable:
                table, start = self.write_location(p)
                self.writable[table].update(range(start, start + p.words))

    def addr(self, block: str, offset: int) -> int:
        return self.profile.address(block, offset, self.device.index or 0, self.device.offset)

    def read_location(self, p: Point) -> tuple[Table, int]:
        return self.profile.blocks[p.block].table, self.addr(p.block, p.offset)

    def write_location(self, p: Point) -> tuple[Table, int]:
        block = p.write_block or p.block
        offset = p.write_offset if p.write_offset is not None else p.offset
        return self.profile.blocks[block].table, self.addr(block, offset)

    def values(self) -> dict[str, Any]:
        """Current field values to serve (by profile point name)."""
        return {}

    def refresh(self, mem: UnitMemory) -> None:
        """Write the current state into the register image."""
        values = self.values()
        for p in self.profile.points:
            if p.field not in values:
                continue
            locations = [self.read_location(p)]
            if p.write_block is not None:
                locations.append(self.write_location(p))  # keep a control block in step with the status
            for table, start in locations:
                try:
                    words = encode(p, values[p.field], mem.get(table, start))
                except ValueError:
                    continue  # a value this model cannot express (e.g. an enum it lacks): leave the register
                mem.put(table, start, words)

    def plan_write(self, mem: UnitMemory, table: Table, start: int, values: Sequence[int]) -> Apply:
        """Validate a write touching this device; return what applying it does."""
        end = start + len(values)
        for name, blk in self.profile.blocks.items():
            b0 = self.addr(name, 0)
            if blk.write_whole and blk.table == table and start < b0 + blk.size and b0 < end \
                    and not (start <= b0 and b0 + blk.size <= end):
                raise ModbusError(ILLEGAL_VALUE, f"{self.device.id}: block {name} must be written whole")

        def word(a: int) -> int:
            return values[a - start] if start <= a < end else mem.get(table, a)

        fields: dict[str, Any] = {}
        for p in self.profile.points:
            if not p.writable:
                continue
            wtable, w0 = self.write_location(p)
            if wtable != table or not (w0 < end and start < w0 + p.words):
                continue
            got = decode(p, [word(w0 + i) for i in range(p.words)])
            if got.rejected is not None:
                raise ModbusError(ILLEGAL_VALUE, f"{self.device.id}: {p.field} {got.rejected.value}")
            fields[p.field] = got.value
        return self.command(fields)

    def command(self, fields: dict[str, Any]) -> Apply:
        del fields
        return lambda: None


class AcModel(DeviceModel):
    def __init__(self, device: ModbusDevice, profile: Profile, unit: AcUnit) -> None:
        super().__init__(device, profile)
        self.unit = unit

    def values(self) -> dict[str, Any]:
        u = self.unit
        temp = round(min(60.0, max(-10.0, u.room_temp_c)), 1)
        return {"power_on": u.power_on, "mode": u.mode, "fan": u.fan, "setpoint_c": u.setpoint_c,
                "real_setpoint_c": u.setpoint_c, "room_temp_c": temp, "fault_code": u.fault_code,
                "alarm": u.fault_code != 0}

    def command(self, fields: dict[str, Any]) -> Apply:
        power = fields.get("power_on")
        mode_v, fan_v, sp = fields.get("mode"), fields.get("fan"), fields.get("setpoint_c")
        mode: Mode | None = next((m for m in MODES if m == mode_v), None)
        fan: Fan | None = next((f for f in FANS if f == fan_v), None)

        def apply() -> None:
            self.unit.command(power_on=None if power is None else bool(power), mode=mode, fan=fan,
                              setpoint_c=None if sp is None else float(sp))

        return apply


class MeterModel(DeviceModel):
    def __init__(self, device: ModbusDevice, profile: Profile, physics: SchoolPhysics) -> None:
        super().__init__(device, profile)
        self.physics = physics

    def values(self) -> dict[str, Any]:
        snap: MeterSnapshot = self.physics.meter.snapshot()
        return dict(snap.fields())


class RelayModel(DeviceModel):
    """A relay board. `pulse_scale` is simulated seconds per second of the board's own pulse timer: the
    timer keeps the gateway's (real) time, so a 5 s unlock lasts 5 s for the gateway at any speed."""

    def __init__(self, device: ModbusDevice, profile: Profile, board: RelayBoard, pulse_scale: float = 1.0) -> None:
        super().__init__(device, profile)
        self.board = board
        self.pulse_scale = pulse_scale
        self.channel_field = {f"ch{i}": i for i in range(len(board.coils))}

    def values(self) -> dict[str, Any]:
        return {f"ch{i}": on for i, on in enumerate(self.board.coils)}

    def command(self, fields: dict[str, Any]) -> Apply:
        def apply() -> None:
            for name, on in fields.items():
                if name in self.channel_field:
                    self.board.set(self.channel_field[name], bool(on))

        return apply

    def coil_write(self, address: int, value: int, now: float) -> None:
        """FC05 as the Waveshare board reads it: on/off/flip, all channels, or the profile's timed pulse."""
        n = len(self.board.coils)
        if self._pulse(address, value, now):
            return
        base = self.addr("coils", 0)
        targets = range(n) if address == base + ALL_RELAYS_ADDRESS else [address - base]
        if any(not 0 <= ch < n for ch in targets):
            raise ModbusError(ILLEGAL_ADDRESS, f"{self.device.id}: no coil at {address:#06x}")
        if value not in (COIL_ON, COIL_OFF, COIL_FLIP):
            raise ModbusError(ILLEGAL_VALUE, f"{self.device.id}: FC05 value {value:#06x}")
        for ch in targets:
            self.board.set(ch, not self.board.coils[ch] if value == COIL_FLIP else value == COIL_ON)

    def _pulse(self, address: int, value: int, now: float) -> bool:
        """Run the pulse at `address` (`value` steps of the profile's `pulse:`); False if it is no pulse address."""
        pulse = self.profile.pulse
        if pulse is None:
            return False
        for base, on in ((pulse.on_address, True), (pulse.off_address, False)):
            if base is not None and base <= address < base + len(self.board.coils):
                if value > pulse.max_steps:
                    raise ModbusError(ILLEGAL_VALUE, f"{self.device.id}: pulse of {value} steps, "
                                                     f"at most {pulse.max_steps}")
                self.board.flash(address - base, on, value * pulse.step_s * self.pulse_scale, now)
                return True
        return False


class UnitMemory:
    """The register tables of one unit id, and the devices that live in them."""

    def __init__(self, unit: int, devices: Sequence[DeviceModel]) -> None:
        self.unit = unit
        self.devices = list(devices)
        self.valid: dict[Table, tuple[int, int] | None] = {}
        self.tables: dict[Table, list[int]] = {}
        self.holes: dict[Table, set[int]] = {t: set() for t in TABLES}
        for table in TABLES:
            spans = [s for d in self.devices for s in d.spans if s.table == table]
            gap_fill = all(d.profile.limits.gap_fill for d in self.devices)
            if not spans:
                self.valid[table] = None
                self.tables[table] = []
                continue
            lo, hi = min(s.start for s in spans), max(s.end for s in spans)
            self.valid[table] = (lo, hi)
            if not gap_fill:  # only the blocks themselves answer
                self.holes[table] = {a for a in range(lo, hi) if not any(s.start <= a < s.end for s in spans)}
            self.tables[table] = [0] * hi
        self.max_regs = min(d.profile.limits.max_read_registers for d in self.devices)
        self.max_bits = min(d.profile.limits.max_read_bits for d in self.devices)
        self.even_count = any(d.profile.limits.even_count for d in self.devices)
        self.even_address = any(d.profile.limits.even_address for d in self.devices)

    def get(self, table: Table, address: int) -> int:
        mem = self.tables[table]
        return mem[address] if 0 <= address < len(mem) else 0

    def put(self, table: Table, address: int, words: Iterable[int]) -> None:
        mem = self.tables[table]
        for i, w in enumerate(words):
            if 0 <= address + i < len(mem):
                mem[address + i] = w & 0xFFFF if table not in BIT_TABLES else int(bool(w))

    def refresh(self) -> None:
        for d in self.devices:
            d.refresh(self)

    def _check_range(self, table: Table, address: int, count: int) -> None:
        span = self.valid[table]
        if span is None:
            raise ModbusError(ILLEGAL_FUNCTION, f"unit {self.unit} has no {table} table")
        if not (span[0] <= address and address + count <= span[1]):
            raise ModbusError(ILLEGAL_ADDRESS, f"unit {self.unit}: {table} {address}+{count} outside {span}")
        holes = self.holes[table]
        if holes and any(a in holes for a in range(address, address + count)):
            raise ModbusError(ILLEGAL_ADDRESS, f"unit {self.unit}: {table} {address}+{count} not mapped")

    def read(self, fc: int, address: int, count: int) -> list[int]:
        table = FC_TABLE[fc]
        limit = self.max_bits if table in BIT_TABLES else self.max_regs
        if not 1 <= count <= limit:
            raise ModbusError(ILLEGAL_VALUE, f"unit {self.unit}: count {count} outside 1..{limit}")
        if table not in BIT_TABLES and ((self.even_count and count % 2) or (self.even_address and address % 2)):
            raise ModbusError(ILLEGAL_ADDRESS, f"unit {self.unit}: float registers need even address and count")
        self._check_range(table, address, count)
        return self.tables[table][address:address + count]

    def touched(self, fc: int, address: int, count: int) -> list[DeviceModel]:
        """Devices a request concerns: those whose blocks it overlaps, else single-device units' device."""
        table = FC_TABLE.get(fc)
        hit = [d for d in self.devices if table is not None and any(s.overlaps(table, address, count)
                                                                    for s in d.spans)]
        if fc == 5 and not hit:  # the flash command's address is an opcode, not a coil
            hit = [d for d in self.devices if isinstance(d, RelayModel)]
        return hit or [d for d in self.devices if d.profile.sub_units is None]

    def write(self, fc: int, address: int, values: Sequence[int]) -> None:
        """FC06/15/16: validate against every device touched, then store and apply."""
        table = FC_TABLE[fc]
        self._check_range(table, address, len(values))
        owned: set[int] = set()
        for d in self.devices:
            owned |= d.writable[table]
        if any(a not in owned for a in range(address, address + len(values))):
            raise ModbusError(ILLEGAL_ADDRESS, f"unit {self.unit}: {table} {address}+{len(values)} is read-only")
        plans = [d.plan_write(self, table, address, values) for d in self.devices
                 if any(s.overlaps(table, address, len(values)) for s in d.spans)
                 or any(a in d.writable[table] for a in range(address, address + len(values)))]
        self.put(table, address, values)
        for apply in plans:
            apply()
        self.refresh()

    def coil_write(self, address: int, value: int, now: float) -> None:
        """FC05 (including the Waveshare flash command)."""
        relays = [d for d in self.devices if isinstance(d, RelayModel)]
        if relays:
            relays[0].coil_write(address, value, now)
            self.refresh()
            return
        if value not in (COIL_ON, COIL_OFF):
            raise ModbusError(ILLEGAL_VALUE, f"unit {self.unit}: FC05 value {value:#06x}")
        self.write(15, address, [int(value == COIL_ON)])
