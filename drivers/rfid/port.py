"""The transport of a reader: a serial device (9600 8N1 by default) or `socket://host:port`, as asyncio.

pyserial-asyncio-fast opens both: a device path through pyserial (termios raw mode, the configured
baud rate, read by the event loop's own reader callback on the file descriptor, no thread per
port), and `socket://` through the loop's TCP connection. Bytes are handed over with the
`time.monotonic()` of their arrival, so a tap's latency can be measured from the frame's last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable

import serial_asyncio_fast

OPEN_TIMEOUT_S = 5.0    # a socket:// peer that does not accept in this time counts as a failed open
CLOSE_TIMEOUT_S = 2.0   # the port's close (done in a worker thread) is not waited for longer


class Link(asyncio.Protocol):
    """One open port: feeds `on_data(bytes, arrival)`; `lost` completes when the port closes or fails."""

    def __init__(self, on_data: Callable[[bytes, float], None], loop: asyncio.AbstractEventLoop) -> None:
        self._on_data = on_data
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.rdev: int | None = None        # the device number behind a path, to notice it replaced

    def data_received(self, data: bytes) -> None:
        self._on_data(data, time.monotonic())

    def eof_received(self) -> bool:
        return False                         # the peer of a socket:// reader went away: close

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def close(self) -> None:
        """Close the port without flushing (we never write) and wait, boundedly, until it is closed."""
        if self.transport is not None and not self.transport.is_closing():
            # abort, not close: close() would tcdrain() the line in a thread, which a dead adapter can block
            self.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(self.lost)


def is_path(port: str) -> bool:
    """A device path (checked for replacement while open), not a URL such as socket://."""
    return "://" not in port


async def open_port(port: str, baudrate: int, on_data: Callable[[bytes, float], None]) -> Link:
    """Open `port` (a device path or a pyserial URL such as socket://host:port); raises OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    link = Link(on_data, loop)
    async with asyncio.timeout(OPEN_TIMEOUT_S):
        transport, _ = await serial_asyncio_fast.create_serial_connection(
            loop, lambda: link, port, baudrate=baudrate, bytesize=8, parity="N", stopbits=1)
    link.transport = transport
    if is_path(port):
        ser = getattr(transport, "serial", None)
        if ser is not None:
            link.rdev = os.fstat(ser.fileno()).st_rdev
    return link


def replaced(port: str, link: Link) -> str | None:
    """Why the device behind an open path is no longer the one opened (gone, or another device), or None."""
    if link.rdev is None:
        return None
    try:
        now = os.stat(port).st_rdev
    except OSError:
        return "device path gone"
    return None if now == link.rdev else "device path now names another device"
