"""A development and test backend of the beacon scanner: advertisements arrive as datagrams, not over the air.

For the demo's virtual school, tests and benchmarks on machines without Bluetooth; not for a
school (anything that can write to the socket can make a beacon "arrive"). A scanner uses it when
its `adapter` is

- `udp://127.0.0.1:PORT` (loopback only: the daemon refuses any other address), or
- `unixgram://PATH`: a Unix datagram socket the daemon creates (mode 0660; a stale one of a
  crashed run is replaced, one another process still listens on is not).

Each datagram holds one or more lines `ADDRESS RSSI HEX`: the advertiser's address
(`AA:BB:CC:DD:EE:FF`), the RSSI in dBm (an integer), and the raw advertising data (AD structures)
in hex, e.g. `5A:1D:0C:3E:7B:44 -61 0201061aff4c000215...`. Every line goes to the scanner as one
advertisement (`Detections.raw`), exactly as a backend that sees the air would hand it over; a line
that is not of this form is dropped and counted. Any other `adapter` (None included) is a radio:
`BleakBackend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import socket
import stat
from collections import Counter
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from drivers.beacon.driver import Detections

log = logging.getLogger("campus_edge.beacon")

UDP: Final = "udp://"
UNIXGRAM: Final = "unixgram://"
SOCKET_MODE: Final = 0o660
MAX_LINE: Final = 200          # address, RSSI and 31 bytes of AD in hex fit in 120
_LINE = re.compile(rb"([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}) (-?\d{1,4}) ((?:[0-9A-Fa-f]{2}){1,62})")


class DatagramAdapterError(ValueError):
    """The adapter names a datagram endpoint this backend will not open (the message says why)."""


def is_datagram(adapter: str | None) -> bool:
    """Whether `adapter` selects this backend (`udp://...` or `unixgram://...`)."""
    return adapter is not None and adapter.startswith((UDP, UNIXGRAM))


def endpoint(adapter: str) -> tuple[str, int] | str:
    """(host, port) of a `udp://` adapter on loopback, or the path of a `unixgram://` one."""
    if adapter.startswith(UNIXGRAM):
        path = adapter[len(UNIXGRAM):]
        if not path:
            raise DatagramAdapterError(f"adapter {adapter!r}: expected unixgram://PATH")
        return path
    host, _, port = adapter[len(UDP):].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DatagramAdapterError(f"adapter {adapter!r}: expected udp://127.0.0.1:PORT")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise DatagramAdapterError(f"adapter {adapter!r}: the development backend listens on loopback only")
    return host, int(port)


def parse_line(raw: bytes) -> tuple[str, int, bytes] | None:
    """(address, RSSI, advertising data) of one line, or None when it is not `ADDRESS RSSI HEX`."""
    if len(raw) > MAX_LINE:
        return None
    m = _LINE.fullmatch(raw.strip())
    if m is None:
        return None
    return m[1].decode("ascii").upper(), int(m[2]), bytes.fromhex(m[3].decode("ascii"))


def encode_line(address: str, rssi: int, data: bytes) -> bytes:
    """One advertisement as a line of a datagram."""
    return f"{address} {rssi} {data.hex()}\n".encode("ascii")


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, to: Detections, counts: Counter[str]) -> None:
        self.to = to
        self.counts = counts

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.counts["datagrams"] += 1
        for raw in data.splitlines():
            if not raw.strip():
                continue
            parsed = parse_line(raw)
            if parsed is None:
                if not self.counts["bad_lines"]:
                    log.warning("beacon dev backend: a line that is not ADDRESS RSSI HEX dropped: %r", raw[:80])
                self.counts["bad_lines"] += 1
                continue
            self.counts["lines"] += 1
            address, rssi, ad = parsed
            self.to.raw(address, ad, rssi)

    def error_received(self, exc: Exception) -> None:   # an ICMP error of a UDP peer: nothing to do
        self.counts["errors"] += 1


def _bind_unix(path: str) -> socket.socket:
    """A bound Unix datagram socket at `path`, replacing a stale socket file but never a live one or a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            probe.connect(path)
        except OSError:            # nobody bound to it: left by a crashed run
            os.unlink(path)
        else:
            raise OSError(f"{path}: another process listens on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o117)          # never world-writable, not even for the instant before chmod
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, SOCKET_MODE)
    sock.setblocking(False)
    return sock


class DatagramBackend:
    """`ScannerBackend` over a loopback UDP port or a Unix datagram socket (development and tests)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def scan(self, adapter: str | None, to: Detections) -> None:
        from drivers.beacon.driver import ScannerUnavailable  # lazy: the driver imports this module

        if adapter is None or not is_datagram(adapter):
            raise ScannerUnavailable(f"adapter {adapter!r} is not a udp:// or unixgram:// endpoint")
        loop = asyncio.get_running_loop()
        path: str | None = None
        try:
            where = endpoint(adapter)
            if isinstance(where, str):
                sock = _bind_unix(where)
                path = where
                try:
                    transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(to, self.counts),
                                                                       sock=sock)
                except BaseException:   # the bound socket and its path must not outlive the failure
                    sock.close()
                    with contextlib.suppress(OSError):
                        os.unlink(where)
                    raise
            else:
                transport, _ = await loop.create_datagram_endpoint(lambda: _Receiver(to, self.counts),
                                                                   local_addr=where)
        except (OSError, DatagramAdapterError) as exc:
            raise ScannerUnavailable(f"development backend {adapter}: {exc}") from exc
        inode = os.stat(path).st_ino if path is not None else None
        log.info("beacon scanner: development backend listening on %s (no radio)", adapter)
        try:
            to.started()
            await asyncio.Event().wait()
        finally:
            transport.close()
            if path is not None:
                with contextlib.suppress(OSError):
                    if os.stat(path).st_ino == inode:   # still ours, not a successor's
                        os.unlink(path)
