"""Real Modbus servers for tests: pymodbus SimDevice servers on loopback TCP or on a serial device
(a socat pty pair from simulator.ptys).

`Unit` is one slave's register image, filled through the profile codec (so the bytes on the wire
are what a device holding those values sends).  `Server` counts every request it receives and can
be told to misbehave per unit: stay silent, answer garbage, answer exceptions for address ranges,
or answer slowly (a whole unit, or only the requests that start at one address).  It also counts
the connections clients open to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import encode
from drivers.modbus.waveshare import WaveshareCoilRequest

LOOPBACK = "127.0.0.1"
GARBAGE = bytes.fromhex("13370000ffffdeadbeef0badf00d")


@dataclass
class Unit:
    """Register image of one Modbus slave (0-based addresses)."""

    id: int
    holding: list[int] = field(default_factory=lambda: [0] * 16)
    input: list[int] = field(default_factory=lambda: [0] * 16)
    coils: list[bool] = field(default_factory=lambda: [False] * 16)
    discrete: list[bool] = field(default_factory=lambda: [False] * 16)

    def table(self, name: str) -> list[Any]:
        return {"holding": self.holding, "input": self.input, "coil": self.coils, "discrete": self.discrete}[name]

    def fill(self, spec: DeviceSpec, values: Mapping[str, Any]) -> Unit:
        """Store typed `values` of `spec`'s points where a real device would hold them."""
        for name, value in values.items():
            point = spec.profile.point(name)
            table = self.table(spec.profile.blocks[point.block].table)
            address = spec.read_address(point)
            need = address + point.words + 1
            if len(table) < need:
                table.extend([False if table in (self.coils, self.discrete) else 0] * (need - len(table)))
            if point.datatype == "bool":
                table[address] = bool(value)
                continue
            for i, word in enumerate(encode(point, value, table[address])):
                table[address + i] = word
        return self

    def device(self, action: Callable[..., Awaitable[ExcCodes | None]] | None) -> SimDevice:
        def bits(values: list[bool]) -> list[SimData]:
            padded = values + [False] * (-len(values) % 16)
            return [SimData(0, values=padded, datatype=DataType.BITS)]

        return SimDevice(id=self.id, action=action, simdata=(
            bits(self.coils), bits(self.discrete),
            [SimData(0, values=list(self.holding), datatype=DataType.REGISTERS)],
            [SimData(0, values=list(self.input), datatype=DataType.REGISTERS)]))


Action = Callable[["Server", int, int, int, list[int] | list[bool] | None], Awaitable[ExcCodes | None]]


@dataclass
class Server:
    """A counting pymodbus server over TCP (`tcp`) or RTU on a pty (`rtu`)."""

    units: list[Unit]
    silent: set[int] = field(default_factory=set)  # never answer these unit ids
    garbage: set[int] = field(default_factory=set)  # answer these with junk bytes
    refuse: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # unit -> [(fc, start, end)]
    delay_s: dict[int, float] = field(default_factory=dict)  # unit -> seconds before answering
    slow: dict[tuple[int, int], float] = field(default_factory=dict)  # (unit, start address) -> delay instead
    on_write: dict[int, Action] = field(default_factory=dict)  # unit -> hook run on writes
    counts: Counter[tuple[int, int, int, int]] = field(default_factory=Counter)  # (unit, fc, addr, count)
    log: list[tuple[float, int, int, int, int]] = field(default_factory=list)  # (monotonic, unit, fc, addr, count)
    frames: list[bytes] = field(default_factory=list)  # raw request bytes as received
    connects: int = 0  # connections opened by clients (TCP)
    port: int = 0
    rtu: bool = False
    _server: ModbusTcpServer | ModbusSerialServer | None = None

    def requests(self, unit: int | None = None, fc: int | None = None) -> int:
        return sum(n for (u, f, _a, _c), n in self.counts.items()
                   if (unit is None or u == unit) and (fc is None or f == fc))

    def keys(self, unit: int, fc: int) -> set[tuple[int, int]]:
        return {(a, c) for (u, f, a, c) in self.counts if u == unit and f == fc}

    def reset(self) -> None:
        self.counts.clear()
        self.log.clear()
        self.frames.clear()

    async def get(self, unit: int, fc: int, address: int, count: int) -> list[Any]:
        assert self._server is not None
        values: list[Any] = await self._server.context.async_getValues(unit, fc, address, count)
        return values

    async def set(self, unit: int, fc: int, address: int, values: list[Any]) -> None:
        assert self._server is not None
        await self._server.context.async_setValues(unit, fc, address, values)

    # -- hooks -----------------------------------------------------------------------------------
    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            count = int(getattr(pdu, "count", 0) or 0)
            self.counts[(pdu.dev_id, pdu.function_code, pdu.address, count)] += 1
            self.log.append((time.monotonic(), pdu.dev_id, pdu.function_code, pdu.address, count))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.frames.append(bytes(data))
            return data
        if not data:
            return data
        unit = data[0] if self.rtu else data[6]
        if unit in self.silent:
            return b""
        if unit in self.garbage:
            return GARBAGE
        return data

    def _action(self, unit: int) -> Callable[..., Awaitable[ExcCodes | None]]:
        async def action(fc: int, _start: int, address: int, count: int, _regs: list[int],
                         values: list[int] | list[bool] | None) -> ExcCodes | None:
            if delay := self.slow.get((unit, address), self.delay_s.get(unit)):
                await asyncio.sleep(delay)
            for r_fc, start, end in self.refuse.get(unit, ()):
                if fc == r_fc and address < end and start < address + count:
                    return ExcCodes.ILLEGAL_ADDRESS
            if values is not None and unit in self.on_write:
                return await self.on_write[unit](self, fc, address, count, values)
            return None

        return action

    def _trace_connect(self, connected: bool) -> None:
        self.connects += connected

    # -- lifecycle -------------------------------------------------------------------------------
    def _devices(self) -> list[SimDevice]:
        return [u.device(self._action(u.id)) for u in self.units]

    @contextlib.asynccontextmanager
    async def tcp(self, framer: FramerType = FramerType.SOCKET) -> AsyncIterator[Server]:
        self.rtu = framer == FramerType.RTU
        server = ModbusTcpServer(self._devices(), framer=framer, address=(LOOPBACK, self.port),
                                 trace_pdu=self._trace_pdu, trace_packet=self._trace_packet,
                                 trace_connect=self._trace_connect, custom_pdu=[WaveshareCoilRequest])
        await server.serve_forever(background=True)
        self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        try:
            yield self
        finally:
            await self.stop()

    @contextlib.asynccontextmanager
    async def serial(self, port: str, baudrate: int = 9600) -> AsyncIterator[Server]:
        self.rtu = True
        server = ModbusSerialServer(self._devices(), framer=FramerType.RTU, port=port, baudrate=baudrate,
                                    trace_pdu=self._trace_pdu, trace_packet=self._trace_packet,
                                    custom_pdu=[WaveshareCoilRequest])
        await server.serve_forever(background=True)
        self._server = server
        try:
            yield self
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None
        await WaveshareCoilRequest.cancel_reverts()


def engine_tasks() -> list[asyncio.Task[Any]]:
    """Tasks an engine left behind (their names start with `modbus:`)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("modbus:") and not t.done()]


@dataclass
class Recorder:
    """A sink that keeps everything it is given."""

    readings: list[Any] = field(default_factory=list)
    health: list[Any] = field(default_factory=list)

    def on_reading(self, reading: Any) -> None:
        self.readings.append(reading)

    def on_health(self, health: Any) -> None:
        self.health.append(health)

    def count(self, device_id: str, since: float = 0.0) -> int:
        return sum(1 for r in self.readings if r.device_id == device_id and r.ts >= since)

    def state(self, device_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for r in self.readings:
            if r.device_id == device_id:
                out.update(r.values)
        return out

    def last_health(self, device_id: str) -> Any:
        found = [h for h in self.health if h.device_id == device_id]
        return found[-1] if found else None


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, step_s: float = 0.02) -> None:
    """Wait until `predicate()` holds; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)
