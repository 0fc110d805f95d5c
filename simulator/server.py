"""Modbus servers for the virtual school: one pymodbus server per bus, several unit ids per bus.

pymodbus' own request handling cannot do three things the school needs, so each connection gets
a thin handler (a subclass of its `ServerRequestHandler`) that keeps pymodbus' transports and
framers but dispatches requests itself:

- the Waveshare flash command is an FC05 whose value field is a duration, which pymodbus'
  `WriteSingleCoilRequest` folds to a bool: the server registers its own FC05 PDU (`custom_pdu`);
- per-device fault injection (no answer, an exception, a malformed frame);
- wire-time emulation on RTU lines: one transaction at a time, each answered only after the time
  its request and response frames would occupy the line at the bus's baud rate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.exceptions import ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse, WriteMultipleCoilsResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from edge.core.config import RtuBus, TcpBus
from simulator.registers import DEVICE_FAILURE, ILLEGAL_FUNCTION, ModbusError, UnitMemory

FaultMode = Literal["silent", "exception", "garbage"]
FAULT_MODES: tuple[FaultMode, ...] = ("silent", "exception", "garbage")
GATEWAY_NO_RESPONSE = 0x0B
MODBUS_CHAR_BITS_EXTRA = 3  # start bit + parity (or a second stop bit) + stop bit, as the RTU spec counts
INTER_FRAME_CHARS = 3.5
SERIAL_REOPEN_S = 0.5


class ServerConfigError(ValueError):
    """The config asks for something the simulator will not serve (e.g. a non-loopback host)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """An injected fault of one device."""

    mode: FaultMode
    exception_code: int = DEVICE_FAILURE


@dataclass(frozen=True, slots=True)
class WireTiming:
    """How long frames occupy an RS-485 line."""

    baudrate: int
    bits_per_char: int = 11

    def char_s(self) -> float:
        return self.bits_per_char / self.baudrate

    def transaction_s(self, request_bytes: int, response_bytes: int) -> float:
        """Request + silence + response + silence, in seconds."""
        return (request_bytes + response_bytes + 2 * INTER_FRAME_CHARS) * self.char_s()

    def max_rate(self, request_bytes: int, response_bytes: int) -> float:
        """Transactions per second the line can carry at best."""
        return 1.0 / self.transaction_s(request_bytes, response_bytes)


def wire_timing(bus: RtuBus) -> WireTiming:
    return WireTiming(bus.baudrate, 1 + bus.bytesize + 2)


class RequestCounters:
    """Requests seen per (bus, unit, function code), and how they were answered."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int, int]] = Counter()
        self.exceptions: Counter[tuple[str, int, int]] = Counter()
        self.unanswered: Counter[tuple[str, int, int]] = Counter()
        self.registers: Counter[tuple[str, int, int]] = Counter()

    def total(self, bus: str | None = None, unit: int | None = None, fc: int | None = None) -> int:
        return sum(n for (b, u, f), n in self.requests.items()
                   if (bus is None or b == bus) and (unit is None or u == unit) and (fc is None or f == fc))

    def snapshot(self) -> dict[str, list[list[Any]]]:
        def rows(c: Counter[tuple[str, int, int]]) -> list[list[Any]]:
            return [[b, u, f, n] for (b, u, f), n in sorted(c.items())]

        return {"requests": rows(self.requests), "registers": rows(self.registers),
                "exceptions": rows(self.exceptions), "unanswered": rows(self.unanswered)}


class CoilWrite(ModbusPDU):
    """FC05 keeping the raw 16-bit value (pymodbus folds it to a bool; the flash command needs it)."""

    function_code = 5
    rtu_frame_size = 8

    def __init__(self, address: int = 0, value: int = 0, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id, address=address)
        self.value = value

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.value)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])


@dataclass(frozen=True, slots=True)
class _Undecodable:
    dev_id: int
    transaction_id: int
    function_code: int


Request = ModbusPDU | _Undecodable


class Line:
    """One bus: its units' registers, faults, counters, and (RTU) the one-at-a-time line."""

    def __init__(self, bus: TcpBus | RtuBus, units: Mapping[int, UnitMemory], *, counters: RequestCounters,
                 faults: Mapping[str, Fault], now: Callable[[], float], wire_emulation: bool) -> None:
        self.bus = bus
        self.units = units
        self.counters = counters
        self.faults = faults
        self.now = now
        self.serial = isinstance(bus, RtuBus)
        self.wire = wire_timing(bus) if isinstance(bus, RtuBus) and wire_emulation else None
        self.lock = asyncio.Lock()
        self.free_at = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def _fault(self, mem: UnitMemory, req: Request) -> Fault | None:
        address = int(getattr(req, "address", 0) or 0)
        count = int(getattr(req, "count", 0) or 0) or 1
        found = [self.faults[d.device.id] for d in mem.touched(req.function_code, address, count)
                 if d.device.id in self.faults]
        for mode in FAULT_MODES:  # silent beats exception beats garbage
            for f in found:
                if f.mode == mode:
                    return f
        return None

    def _execute(self, mem: UnitMemory, req: ModbusPDU) -> ModbusPDU:
        fc = req.function_code
        if fc in (1, 2):
            bits = [bool(b) for b in mem.read(fc, req.address, req.count)]
            return (ReadCoilsResponse if fc == 1 else ReadDiscreteInputsResponse)(bits=bits)
        if fc in (3, 4):
            regs = mem.read(fc, req.address, req.count)
            return (ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse)(registers=regs)
        if isinstance(req, CoilWrite):
            mem.coil_write(req.address, req.value, self.now())
            return CoilWrite(req.address, req.value)
        if fc == 6:
            mem.write(6, req.address, [req.registers[0]])
            return WriteSingleRegisterResponse(address=req.address, registers=[req.registers[0]])
        if fc == 15:
            mem.write(15, req.address, [int(b) for b in req.bits])
            return WriteMultipleCoilsResponse(address=req.address, count=len(req.bits))
        if fc == 16:
            if getattr(req, "byte_count", None) != 2 * req.count or len(req.registers) != req.count:
                raise ModbusError(0x03, "FC16 byte count does not match the register count")
            mem.write(16, req.address, list(req.registers))
            return WriteMultipleRegistersResponse(address=req.address, count=req.count)
        raise ModbusError(ILLEGAL_FUNCTION, f"function code {fc} not supported")

    def _respond(self, req: Request) -> tuple[ModbusPDU | None, bool]:
        """The response to send (None: stay silent) and whether to mangle it."""
        key = (self.bus.id, req.dev_id, req.function_code)
        self.counters.requests[key] += 1
        self.counters.registers[key] += int(getattr(req, "count", 0) or 0)
        mem = self.units.get(req.dev_id)
        if mem is None:
            # nobody on an RS-485 line answers for an absent id; a TCP gateway says so
            return (None, False) if self.serial else (ExceptionResponse(req.function_code, GATEWAY_NO_RESPONSE), False)
        if isinstance(req, _Undecodable):
            return ExceptionResponse(req.function_code, ILLEGAL_FUNCTION), False
        fault = self._fault(mem, req)
        if fault is not None and fault.mode == "silent":
            return None, False
        if fault is not None and fault.mode == "exception":
            return ExceptionResponse(req.function_code, fault.exception_code), False
        try:
            response = self._execute(mem, req)
        except ModbusError as exc:
            response = ExceptionResponse(req.function_code, exc.code)
        return response, fault is not None and fault.mode == "garbage"

    async def transact(self, conn: _Connection, req: Request, addr: tuple[Any, ...] | None, arrived: float) -> None:
        response, garbage = self._respond(req)
        key = (self.bus.id, req.dev_id, req.function_code)
        if response is None:
            self.counters.unanswered[key] += 1
            return
        if isinstance(response, ExceptionResponse):
            self.counters.exceptions[key] += 1
        response.dev_id = req.dev_id
        response.transaction_id = req.transaction_id
        frame = conn.framer.buildFrame(response)
        if garbage:
            frame = self._mangle(conn, frame, response)
        if self.wire is None:
            conn.send(frame, addr=addr)
            return
        request_len = len(conn.framer.buildFrame(req)) if isinstance(req, ModbusPDU) else 8
        loop = asyncio.get_running_loop()
        async with self.lock:
            start = max(arrived, self.free_at)
            due = start + self.wire.transaction_s(request_len, len(frame))
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.free_at = loop.time()
            conn.send(frame, addr=addr)

    def _mangle(self, conn: _Connection, frame: bytes, response: ModbusPDU) -> bytes:
        """A malformed answer: on RTU a frame with a bad CRC, on TCP a PDU whose byte count lies."""
        if self.serial:
            return frame[:-2] + bytes([frame[-2] ^ 0x5A, frame[-1] ^ 0xA5])
        payload = bytes([response.function_code, 0xFF, 0xDE, 0xAD])
        return bytes(conn.framer.encode(payload, response.dev_id, response.transaction_id))


class _Connection(ServerRequestHandler):
    """One client connection (or the one serial port): queue requests, answer them in order."""

    def __init__(self, owner: _TcpServer | _SerialServer) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]
        self.line: Line = owner.line
        self.queue: asyncio.Queue[tuple[Request, tuple[Any, ...] | None, float]] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def callback_connected(self) -> None:
        super().callback_connected()
        self.worker = self.line.spawn(self._work(), f"modbus {self.line.bus.id} connection")

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        if self.worker is not None:
            self.worker.cancel()

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        now = asyncio.get_running_loop().time()
        used = 0
        while used < len(data):
            try:
                n, pdu = self.framer.handleFrame(data[used:], 0, 0)
            except ModbusIOException as exc:
                fc = exc.fcode if exc.fcode is not None else (data[used + 7] if len(data) > used + 7 else 0)
                self.queue.put_nowait((_Undecodable(exc.dev_id, exc.transaction_id, fc), addr, now))
                return len(data)
            if pdu is None or n == 0:
                return used + n
            used += n
            self.queue.put_nowait((pdu, addr, now))
        return used

    async def _work(self) -> None:
        while True:
            req, addr, arrived = await self.queue.get()
            await self.line.transact(self, req, addr, arrived)


def _placeholder_device() -> SimDevice:
    """pymodbus wants a datastore at construction; requests never reach it (the handler answers)."""
    return SimDevice(id=0, simdata=[SimData(0, values=[0], datatype=DataType.REGISTERS)])


class _TcpServer(ModbusTcpServer):
    def __init__(self, line: Line, host: str, port: int) -> None:
        self.line = line
        super().__init__(_placeholder_device(), address=(host, port), custom_pdu=[CoilWrite])

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)


class _SerialServer(ModbusSerialServer):
    def __init__(self, line: Line, port: str, bus: RtuBus) -> None:
        self.line = line
        # A pty carries bytes, not bits: line settings mean nothing on it, and recent Linux kernels
        # refuse PARENB on a pty outright, so the simulator's end always opens 8N1.
        super().__init__(_placeholder_device(), framer=FramerType.RTU, port=port, baudrate=bus.baudrate,
                         parity="N", stopbits=1, bytesize=8,
                         reconnect_delay=SERIAL_REOPEN_S, custom_pdu=[CoilWrite])

    def callback_new_connection(self) -> _Connection:
        return _Connection(self)


def check_loopback(host: str) -> None:
    """Refuse to serve simulated devices anywhere but on this machine."""
    if host == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ServerConfigError(f"bus host {host!r} is not a loopback address: the simulator serves 127.0.0.1 only")


class LineServer:
    """Starts and stops the pymodbus server of one line."""

    def __init__(self, line: Line, serial_port: str | None = None) -> None:
        self.line = line
        self.serial_port = serial_port
        self.server: _TcpServer | _SerialServer | None = None

    async def start(self) -> None:
        bus = self.line.bus
        if isinstance(bus, TcpBus):
            check_loopback(bus.host)
            self.server = _TcpServer(self.line, bus.host, bus.port)
        else:
            if self.serial_port is None:
                raise ServerConfigError(f"bus {bus.id}: no serial port to serve on")
            self.server = _SerialServer(self.line, self.serial_port, bus)
        if not await self.server.listen():
            self.server = None
            where = f"{bus.host}:{bus.port}" if isinstance(bus, TcpBus) else self.serial_port
            raise OSError(f"bus {bus.id}: cannot listen on {where}")

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # closes every connection, which stops its worker
        await self.line.close()
