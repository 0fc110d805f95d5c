"""Installer tools behind `campus-edge modbus scan|read`: find unit ids, read raw registers."""

from __future__ import annotations

from collections.abc import Iterable

from drivers.modbus import transport
from drivers.modbus.profile import BIT_TABLES, WORDS, DataType, Point, Table, WordOrder, raw_from_words
from drivers.modbus.transport import GATEWAY_EXCEPTIONS, DeviceException, Disconnected, Garbage, Timeout
from edge.core.config import RtuBus, TcpBus

SCAN_TIMEOUT_S = 0.2  # a present device answers a one-register read well within this on 9600 baud
DEFAULT_PROBE: tuple[Table, int] = ("holding", 0)
ALL_UNITS = range(1, 248)


async def _connected(bus: TcpBus | RtuBus) -> transport.Client:
    client = transport.make_client(bus)
    if not await transport.connect(client):
        client.close()
        where = f"{bus.host}:{bus.port}" if isinstance(bus, TcpBus) else bus.device
        raise Disconnected(f"cannot open bus {bus.id} ({where})")
    return client


async def scan(bus: TcpBus | RtuBus, units: Iterable[int] = ALL_UNITS, probe: tuple[Table, int] = DEFAULT_PROBE,
               timeout_s: float = SCAN_TIMEOUT_S) -> list[int]:
    """Unit ids that answer a one-register read of `probe` (table, address), in order.

    A Modbus exception counts as an answer (the device is there, it just lacks that register), except
    the gateway exceptions 0x0A/0x0B, with which a TCP gateway says that no device has that id.
    """
    table, address = probe
    client = await _connected(bus)
    found = []
    try:
        for unit in units:
            try:
                await transport.read(client, unit, table, address, 1, timeout_s)
            except DeviceException as exc:
                if exc.code not in GATEWAY_EXCEPTIONS:  # 0x0A/0x0B: a TCP gateway saying nobody is there
                    found.append(unit)
            except (Timeout, Garbage):
                continue
            else:
                found.append(unit)
    finally:
        client.close()
    return found


async def read(bus: TcpBus | RtuBus, unit: int, table: Table, address: int, count: int = 1,
               datatype: DataType = "uint16", word_order: WordOrder = "big",
               timeout_s: float | None = None) -> list[int | float | bool]:
    """`count` values of `datatype` from `address` on, decoded (bit tables give booleans).

    Raises the transport's errors: Disconnected, Timeout, Garbage or DeviceException (with `.code`).
    """
    if table in BIT_TABLES:
        datatype = "bool"
    elif datatype == "bool":
        raise ValueError("datatype bool goes with coil/discrete tables only")
    words_per = WORDS[datatype]
    point = Point(field="value", block="cli", datatype=datatype, word_order=word_order, source="modbus read")
    client = await _connected(bus)
    try:
        words = await transport.read(client, unit, table, address, count * words_per, timeout_s or bus.timeout_s)
    finally:
        client.close()
    if datatype == "bool":
        return [bool(w) for w in words]
    return [raw_from_words(point, words[i * words_per:(i + 1) * words_per]) for i in range(count)]
