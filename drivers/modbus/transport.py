"""Transport seam: one pymodbus client per bus, and single transactions with typed failures.

pymodbus' own retries and reconnects are switched off and its response timeout is set well past
every device's, so only our `asyncio.timeout` ever decides that a device did not answer: the
library then never counts a no-response, and never drops a TCP connection shared with healthy
devices because one of them is slow or dead.  RTU has no transaction id, so after a timeout on a
serial line the line is kept quiet for a guard interval and whatever arrives is dropped; a late
frame can then never be taken for the answer to the next request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadDiscreteInputsRequest, WriteSingleCoilRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from drivers.modbus.profile import BIT_TABLES, Table
from edge.core.config import RtuBus, TcpBus

Client = AsyncModbusTcpClient | AsyncModbusSerialClient
LIBRARY_TIMEOUT_S = 60.0  # pymodbus' own response timeout: past every device's (config caps them at 30 s)
CONNECT_TIMEOUT_S = 3.0  # ours: pymodbus would use its (long) response timeout to open a connection too
LATE_REPLY_GUARD = 0.5  # after a serial timeout, wait this fraction of the timeout for a late frame...
FRAME_GAP_CHARS = 3.5  # ...plus the RTU inter-frame silence, so the frame has surely ended

log = logging.getLogger(__name__)


GATEWAY_EXCEPTIONS = (0x0A, 0x0B)  # gateway path unavailable / target failed to respond: the unit is gone

class TransportError(Exception):
    """A transaction failed; `kind` says how (the engine's health reasons use it)."""

    kind = "error"


class Timeout(TransportError):
    kind = "timeout"


class Garbage(TransportError):
    """The answer did not match the request (wrong function, count or transaction)."""

    kind = "garbage"


class Disconnected(TransportError):
    kind = "connection"


class DeviceException(TransportError):
    """The device answered with a Modbus exception response."""

    kind = "exception"

    def __init__(self, code: int, function_code: int) -> None:
        self.code = code
        self.function_code = function_code
        super().__init__(f"exception code {code} to function {function_code}")


def make_client(bus: TcpBus | RtuBus, longest_timeout_s: float = 0.0) -> Client:
    """A disconnected client for `bus` whose devices wait at most `longest_timeout_s`; call inside the loop."""
    library_timeout = max(LIBRARY_TIMEOUT_S, 2 * longest_timeout_s, 2 * bus.timeout_s)
    if isinstance(bus, TcpBus):
        return AsyncModbusTcpClient(bus.host, port=bus.port, name=bus.id, reconnect_delay=0,
                                    timeout=library_timeout, retries=0)
    return AsyncModbusSerialClient(bus.device, name=bus.id, baudrate=bus.baudrate, parity=_line_parity(bus),
                                   stopbits=bus.stopbits, bytesize=bus.bytesize, reconnect_delay=0,
                                   timeout=library_timeout, retries=0)


def _line_parity(bus: RtuBus) -> str:
    """The bus's parity, except on a pseudo-terminal (the virtual school), which has no wire to frame.

    Linux 6.x refuses even or odd parity on a pty outright; a real RS-485 adapter keeps its setting.
    """
    if bus.parity != "N" and os.path.realpath(bus.device).startswith("/dev/pts/"):
        log.info("bus %s: %s is a pseudo-terminal; parity %s not applied", bus.id, bus.device, bus.parity)
        return "N"
    return bus.parity


async def connect(client: Client) -> bool:
    """Open the transport within CONNECT_TIMEOUT_S; False when it cannot be opened now."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            opened = bool(await client.connect())
    except (OSError, ModbusException, TimeoutError):
        opened = False
    if not opened:
        client.close()  # a connect cut short may have left a half-open transport behind
    return opened


def guard_s(client: AsyncModbusSerialClient, timeout_s: float) -> float:
    """How long a serial line stays quiet after a timeout of `timeout_s`."""
    params = client.comm_params
    char_bits = 1 + (params.bytesize or 8) + (params.parity not in (None, "N")) + (params.stopbits or 1)
    return LATE_REPLY_GUARD * timeout_s + FRAME_GAP_CHARS * char_bits / max(1, params.baudrate or 9600)


async def _drop_late_reply(client: AsyncModbusSerialClient, timeout_s: float) -> None:
    # pymodbus ignores a whole frame that arrives while no request waits (its future was cancelled);
    # what is left of one cut in half is discarded here, and the next request starts on a quiet line.
    await asyncio.sleep(guard_s(client, timeout_s))
    client.ctx.recv_buffer = b""


async def execute(client: Client, request: ModbusPDU, timeout_s: float) -> ModbusPDU:
    """Send one request and return its (non-exception) response, or raise a TransportError."""
    if not client.connected:
        raise Disconnected("not connected")
    try:
        async with asyncio.timeout(timeout_s):
            response: ModbusPDU = await client.execute(False, request)
    except TimeoutError as exc:
        if isinstance(client, AsyncModbusSerialClient):
            await _drop_late_reply(client, timeout_s)
        raise Timeout(f"no answer within {timeout_s:g} s") from exc
    except ConnectionException as exc:
        raise Disconnected(str(exc)) from exc
    except ModbusException as exc:  # ModbusIOException: answer from another transaction or unit
        if not client.connected:
            raise Disconnected(str(exc)) from exc
        raise Garbage(str(exc)) from exc
    if response is None:
        raise Garbage("no response object")
    if response.isError():
        raise DeviceException(getattr(response, "exception_code", 0), request.function_code)
    if response.function_code != request.function_code:
        raise Garbage(f"function {response.function_code} answers {request.function_code}")
    return response


_READS: dict[str, type[ModbusPDU]] = {
    "coil": ReadCoilsRequest, "discrete": ReadDiscreteInputsRequest,
    "holding": ReadHoldingRegistersRequest, "input": ReadInputRegistersRequest,
}


def read_pdu(unit: int, table: Table, address: int, count: int) -> ModbusPDU:
    cls: type[ModbusPDU] = _READS[table]
    return cls(address=address, count=count, dev_id=unit)


async def read(client: Client, unit: int, table: Table, address: int, count: int,
               timeout_s: float) -> list[int]:
    """Words (or 0/1 bits) of one read; a short or malformed answer raises Garbage."""
    response = await execute(client, read_pdu(unit, table, address, count), timeout_s)
    if table in BIT_TABLES:
        bits = list(response.bits)
        if len(bits) < count:
            raise Garbage(f"{len(bits)} bits for {count} requested")
        return [int(b) for b in bits[:count]]
    regs = list(response.registers)
    if len(regs) != count:
        raise Garbage(f"{len(regs)} registers for {count} requested")
    return regs


async def write(client: Client, unit: int, table: Table, address: int, words: Sequence[int],
                timeout_s: float, *, multiple: bool = False) -> None:
    """Write coils (FC05 per coil), one register (FC06) or several registers (FC16)."""
    if table == "coil":
        for i, word in enumerate(words):
            await execute(client, WriteSingleCoilRequest(address=address + i, bits=[bool(word)], dev_id=unit),
                          timeout_s)
    elif table != "holding":
        raise ValueError(f"table {table} is read-only")
    elif len(words) == 1 and not multiple:
        await execute(client, WriteSingleRegisterRequest(address=address, registers=list(words), dev_id=unit),
                      timeout_s)
    else:
        await execute(client, WriteMultipleRegistersRequest(address=address, registers=list(words),
                                                            dev_id=unit), timeout_s)
