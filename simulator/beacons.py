"""The virtual school's Bluetooth air: iBeacon advertisements of the pupils' beacon tags, for a dev scanner.

A `kind: beacon_scanner` whose `adapter` is `udp://127.0.0.1:PORT` or `unixgram://PATH` is the
daemon's development backend (drivers/beacon/datagram.py): it hears datagrams instead of a radio.
The virtual school sends it what a radio at the gate would hear: each beacon of the scanner's
`beacons` map advertises while its person is on site (a pupil of the roster from their gate
arrival to their departure, anyone else 07:30-17:00 on school days), a stranger's phone
advertises an iBeacon nobody mapped (07:30-17:00 too), and another device advertises something that
is no iBeacon at any hour.

Advertisements repeat every `ADVERT_S` of the daemon's time (real seconds: `scale` simulated
seconds each), as a radio hears a tag, whatever the simulation speed: presence is counted in the
gateway's time (sightings within a window, away after minutes unseen).

Each datagram holds one line per advertisement, `ADDRESS RSSI HEX` (HEX: the raw advertising data,
AD structures), the format drivers/beacon/datagram.py reads.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, time
from typing import Final

from edge.core.config import BeaconScanner
from simulator.cards import Days

ADVERT_S: Final = 1.0              # a beacon tag advertises about once a second
OTHERS_FROM, OTHERS_TO = time(7, 30), time(17, 0)   # on site: people not in the roster, the stranger
STRANGER: Final = "5a1d0c3e-7b44-4c1f-9a63-999999000000:1:1"
MAX_DATAGRAM: Final = 8192
FLAGS: Final = bytes.fromhex("020106")   # LE general discoverable, no BR/EDR
MEASURED_POWER: Final = -59
_IDENTITY = re.compile(r"([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?"
                       r"([0-9a-fA-F]{12}):([0-9]{1,5}):([0-9]{1,5})")


def ibeacon_ad(identity: str, power: int = MEASURED_POWER) -> bytes:
    """Raw advertising data of an iBeacon `UUID:major:minor`: flags, then Apple's manufacturer data."""
    m = _IDENTITY.fullmatch(identity)
    if m is None:
        raise ValueError(f"{identity!r} is not UUID:major:minor")
    body = bytes.fromhex("".join(m.groups()[:5])) + int(m[6]).to_bytes(2, "big") + int(m[7]).to_bytes(2, "big")
    mfr = b"\xff\x4c\x00\x02\x15" + body + power.to_bytes(1, "big", signed=True)
    return FLAGS + bytes([len(mfr)]) + mfr


def other_ad(rng: random.Random) -> bytes:
    """Something else on the air: a Windows PC's Microsoft CDP advertisement (no iBeacon)."""
    mfr = b"\xff\x06\x00" + bytes(rng.randrange(256) for _ in range(27))
    return FLAGS + bytes([len(mfr)]) + mfr


def line(address: str, rssi: int, data: bytes) -> bytes:
    return f"{address} {rssi} {data.hex()}\n".encode("ascii")


def target(adapter: str | None) -> tuple[socket.AddressFamily, str | tuple[str, int]] | None:
    """Where a dev scanner listens (`udp://HOST:PORT`, `unixgram://PATH`), or None for a real adapter."""
    if adapter is None:
        return None
    if adapter.startswith("unixgram://"):
        return socket.AF_UNIX, adapter[len("unixgram://"):]
    if adapter.startswith("udp://"):
        host, _, port = adapter[len("udp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"adapter {adapter!r}: expected udp://HOST:PORT")
        return socket.AF_INET, (host.strip("[]"), int(port))
    return None


@dataclass(slots=True)
class _Beacon:
    identity: str | None          # None: not an iBeacon (noise)
    person: str | None
    address: str
    rssi_dbm: int
    next_ts: float


class BeaconStream:
    """What one dev scanner hears as simulated time passes: `due(now)` gives the datagrams to send now."""

    def __init__(self, scanner: BeaconScanner, days: Days, start: float, *, scale: float = 1.0,
                 interval_s: float = ADVERT_S) -> None:
        self.scanner = scanner
        self.days = days
        self.period_s = interval_s * scale
        self.rng = random.Random(f"{days.roster.seed}:{scanner.id}:beacons")
        beacons: list[tuple[str | None, str | None]] = sorted(scanner.beacons.items())
        beacons += [(STRANGER, None), (None, None)]
        self.beacons = [_Beacon(ident, person, self._address(), self.rng.randint(-72, -58),
                                start + self.rng.uniform(0, self.period_s)) for ident, person in beacons]

    def _address(self) -> str:
        return ":".join(f"{self.rng.randrange(256):02X}" for _ in range(6))

    def _on_site(self, b: _Beacon, now: float) -> bool:
        if b.identity is None:   # the neighbourhood's other devices are on the air at any hour
            return True
        plan = self.days.plan(self.days.local_day(now))
        if plan.day.weekday() >= 5:
            return False
        window = plan.on_site.get(b.person) if b.person is not None else None
        if window is None:
            if b.person is not None and b.person in self.days.people:   # a pupil who stayed at home today
                return False
            tz = self.days.roster.tz
            window = (datetime.combine(plan.day, OTHERS_FROM, tz).timestamp(),
                      datetime.combine(plan.day, OTHERS_TO, tz).timestamp())
        return window[0] <= now < window[1]

    def due(self, now: float) -> list[bytes]:
        """The datagrams with every advertisement due by `now` (one per beacon at most: a late call skips)."""
        lines: list[bytes] = []
        for b in self.beacons:
            if now < b.next_ts:
                continue
            b.next_ts = now + self.period_s * self.rng.uniform(0.9, 1.1)
            if not self._on_site(b, now):
                continue
            rssi = max(-100, min(-30, b.rssi_dbm + round(self.rng.gauss(0, 2))))
            ad = other_ad(self.rng) if b.identity is None else ibeacon_ad(b.identity)
            lines.append(line(b.address, rssi, ad))
        out: list[bytes] = []
        chunk = b""
        for item in lines:
            if len(chunk) + len(item) > MAX_DATAGRAM:
                out.append(chunk)
                chunk = b""
            chunk += item
        if chunk:
            out.append(chunk)
        return out


class BeaconSender:
    """Sends a scanner's datagrams; nobody listening (the daemon not started yet) is no error: nothing is heard."""

    def __init__(self, family: socket.AddressFamily, address: str | tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.counts: Counter[str] = Counter()

    def send(self, datagram: bytes) -> None:
        try:
            self.sock.sendto(datagram, self.address)
            self.counts["sent"] += 1
        except OSError:   # no listener yet (ENOENT, ECONNREFUSED), a full buffer: the air is lossy
            self.counts["unheard"] += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
