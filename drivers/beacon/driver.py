"""The beacon driver: every `kind: beacon_scanner` device behind the core's `Driver` seam.

Each scanner runs one loop: open the radio through a `ScannerBackend` (bleak in the daemon; datagrams
from the virtual school for a `udp://` or `unixgram://` adapter, see `datagram`; a fake in tests),
hand every advertisement to the iBeacon parser and the scanner's `PresenceTracker`, and turn
arrivals and departures into `presence` events. A radio that cannot be opened (no adapter, no
BlueZ, no D-Bus) is said once (a log line and `on_health(scanner, False, reason)`), the daemon runs
on, and the radio is tried again rarely (`Backoff`). A radio that hears nothing at all for
`silence_s` is restarted quietly: a restarted bluetoothd leaves a started scan deaf without an error.
While a radio is down nobody departs; when it is back, away time counts from then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from drivers.beacon import ibeacon
from drivers.beacon.datagram import DatagramBackend, is_datagram
from drivers.beacon.presence import Change, PresenceRules, PresenceTracker
from edge.core.backoff import Backoff
from edge.core.clock import Clock
from edge.core.config import BeaconScanner, Config
from edge.core.driver import ApplyError, DriverSink
from edge.core.model import Kind, ReaderState

if TYPE_CHECKING:
    from bleak.args.bluez import BlueZScannerArgs

log = logging.getLogger("campus_edge.beacon")

TICK_S = 1.0              # departures are evaluated this often
RETRY_BASE_S = 30.0       # a radio that could not be opened is tried again after this, doubling...
RETRY_MAX_S = 900.0       # ...up to this: a gateway without Bluetooth is told once, not every second
RETRY_JITTER = 0.2
STABLE_S = 60.0           # a scan that lasted this long resets the backoff (a flapping radio does not)
SILENCE_S = 120.0         # no advertisement at all for this long: restart the scan (below the 180 s away time)
START_TIMEOUT_S = 10.0    # opening the radio (D-Bus, BlueZ) that takes longer has failed
STOP_TIMEOUT_S = 5.0


class ScannerUnavailable(Exception):
    """The radio cannot be used; the message says why in plain words."""


class DeviceLike(Protocol):
    @property
    def address(self) -> str: ...


class AdvertLike(Protocol):
    """What a scanner reports of one advertisement (bleak's `AdvertisementData` is one)."""

    @property
    def manufacturer_data(self) -> Mapping[int, bytes]: ...

    @property
    def rssi(self) -> int: ...


class Detections(Protocol):
    """Where a backend delivers what its radio hears."""

    def started(self) -> None:
        """The radio listens."""

    def detected(self, device: DeviceLike, adv: AdvertLike) -> None:
        """One advertisement, as bleak's detection callback receives it."""

    def raw(self, address: str, data: bytes, rssi: int) -> None:
        """One advertisement as raw AD bytes (backends that see the air, not BlueZ's parse)."""


class ScannerBackend(Protocol):
    async def scan(self, adapter: str | None, to: Detections) -> None:
        """Scan on `adapter` (None: the default) until cancelled, calling `to.started()` once listening.

        Raises ScannerUnavailable when the radio cannot be opened or fails.
        """


@dataclass(frozen=True, slots=True)
class ScannerSettings:
    """One scanner's settings: the config's fields, with defaults for those it does not carry yet."""

    id: str
    adapter: str | None
    rules: PresenceRules
    people: Mapping[str, str]
    report_unknown: bool
    away_s: Mapping[str, float]


def _identities(raw: Mapping[str, Any], what: str, scanner: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        ident = ibeacon.parse_identity(str(key))
        if ident is None:
            log.warning("beacon scanner %s: %s %r is not UUID:major:minor; ignored", scanner, what, key)
            continue
        out[ident] = value
    return out


def settings_of(dev: BeaconScanner, people: Mapping[str, str] | None = None) -> ScannerSettings:
    """`dev`'s settings; `people` (beacon -> person) is merged under the config's own `beacons` map."""
    d = PresenceRules()

    def opt(name: str, default: Any) -> Any:
        return getattr(dev, name, default)   # fields the config model may not have yet

    rules = PresenceRules(enter_dbm=float(opt("enter_dbm", d.enter_dbm)), stay_dbm=float(opt("stay_dbm", d.stay_dbm)),
                          sightings=int(opt("sightings", d.sightings)), window_s=float(opt("window_s", d.window_s)),
                          away_s=float(dev.away_s))
    who = _identities({**(people or {}), **dict(opt("beacons", {}))}, "beacon", dev.id)
    away = _identities(dict(opt("beacon_away_s", {})), "beacon_away_s key", dev.id)
    return ScannerSettings(dev.id, dev.adapter, rules, {k: str(v) for k, v in who.items()},
                           bool(opt("report_unknown", False)), {k: float(v) for k, v in away.items()})


class _Scanner:
    """One scanner device: its tracker, its radio's state, its counters. The backend's `Detections`."""

    def __init__(self, settings: ScannerSettings, driver: BeaconDriver) -> None:
        self.settings = settings
        self.id = settings.id
        self.driver = driver
        self.tracker = PresenceTracker(driver.clock, settings.rules, people=settings.people,
                                       report_unknown=settings.report_unknown, away_s=settings.away_s)
        self.open = False
        self.reported_down = False
        self.last_heard = driver.clock.monotonic()
        self.starting_since: float | None = None    # real monotonic time an open attempt began
        self.last_error: str | None = None
        self.counts: Counter[str] = Counter()

    # -- Detections ------------------------------------------------------------------------------
    def started(self) -> None:
        self.starting_since = None
        self.last_heard = self.driver.clock.monotonic()
        self.open = True
        self.counts["opened"] += 1
        self.driver.sink.on_state(self.id, ReaderState(port_open=True), True, self.driver.clock.time())
        if self.reported_down:
            self.reported_down = False
            self.tracker.grace()
            log.info("beacon scanner %s: scanning again", self.id)
            self.driver.sink.on_health(self.id, True, None)

    def detected(self, device: DeviceLike, adv: AdvertLike) -> None:
        self.last_heard = self.driver.clock.monotonic()
        self.counts["advertisements"] += 1
        beacon = ibeacon.from_manufacturer_map(adv.manufacturer_data)
        if beacon is not None:
            self._sighting(beacon, adv.rssi)

    def raw(self, address: str, data: bytes, rssi: int) -> None:
        self.last_heard = self.driver.clock.monotonic()
        self.counts["advertisements"] += 1
        beacon = ibeacon.from_advertising_data(data)
        if beacon is not None:
            self._sighting(beacon, rssi)

    def _sighting(self, beacon: ibeacon.IBeacon, rssi: int) -> None:
        self.counts["ibeacons"] += 1
        change = self.tracker.sight(beacon.identity, rssi)
        if change is not None:
            self.driver.emit(self.id, change)

    # -- the radio going down --------------------------------------------------------------------
    def down(self, reason: str, unexpected: BaseException | None = None) -> None:
        """The radio could not be opened or failed: said once per outage."""
        self.open = False
        self.starting_since = None
        self.last_error = reason
        self.counts["failures"] += 1
        if self.reported_down:
            log.debug("beacon scanner %s: still no radio: %s", self.id, reason)
            return
        self.reported_down = True
        log.warning("beacon scanner %s: %s; presence check-in is off, the gateway runs on and tries again"
                    " every few minutes", self.id, reason, exc_info=unexpected)
        self.driver.sink.on_state(self.id, ReaderState(port_open=False), False, self.driver.clock.time())
        self.driver.sink.on_health(self.id, False, reason)

    def stats(self) -> dict[str, Any]:
        t = self.tracker
        return {"open": self.open, "last_error": self.last_error, **self.counts, "present": len(t.present()),
                "tracked": t.tracked(), "arrivals": t.arrivals, "departures": t.departures,
                "ignored": t.ignored, "invalid_rssi": t.invalid, "dropped": t.dropped}


class _Silent(Exception):
    pass


class BeaconDriver:
    """`edge.core.driver.Driver` for Bluetooth scanners reporting iBeacon presence."""

    name = "beacon"

    def __init__(self, scanners: list[ScannerSettings], sink: DriverSink, clock: Clock,
                 backend: ScannerBackend | None = None, *, tick_s: float = TICK_S, retry_base_s: float = RETRY_BASE_S,
                 retry_max_s: float = RETRY_MAX_S, silence_s: float = SILENCE_S) -> None:
        self.sink = sink
        self.clock = clock
        self.backend: ScannerBackend = backend or AutoBackend()
        self.tick_s = tick_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.silence_s = silence_s
        self.scanners = {s.id: _Scanner(s, self) for s in scanners}
        self._kinds = dict.fromkeys(self.scanners, Kind.BEACON_SCANNER)
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tick_turn = time.monotonic()
        for sc in self.scanners.values():
            if not sc.settings.people and not sc.settings.report_unknown:
                log.warning("beacon scanner %s: no beacon is mapped to a person and unknown beacons are ignored:"
                            " it will report nothing", sc.id)

    @classmethod
    def from_config(cls, cfg: Config, sink: DriverSink, clock: Clock, *, backend: ScannerBackend | None = None,
                    people: Mapping[str, str] | None = None, tick_s: float = TICK_S,
                    retry_base_s: float = RETRY_BASE_S, retry_max_s: float = RETRY_MAX_S,
                    silence_s: float = SILENCE_S) -> BeaconDriver | None:
        """The driver of `cfg`'s beacon scanners (None without any); `people` maps beacon -> person."""
        devs = [d for d in cfg.devices if isinstance(d, BeaconScanner)]
        if not devs:
            return None
        return cls([settings_of(d, people) for d in devs], sink, clock, backend, tick_s=tick_s,
                   retry_base_s=retry_base_s, retry_max_s=retry_max_s, silence_s=silence_s)

    # -- the seam ---------------------------------------------------------------------------------
    def devices(self) -> Mapping[str, Kind]:
        return self._kinds

    def capabilities(self, device_id: str) -> frozenset[str]:
        return frozenset()

    async def __aenter__(self) -> Self:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tick_turn = time.monotonic()
        self._tasks = [self._tg.create_task(self._tick_loop(), name="beacon:tick")]
        self._tasks += [self._tg.create_task(self._scan_loop(sc), name=f"beacon:{sc.id}:scan")
                        for sc in self.scanners.values()]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tg is not None:
            await self._tg.__aexit__(None, None, None)
            self._tg = None

    async def apply(self, device_id: str, desired: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ApplyError("bad_request", f"{device_id} is a beacon scanner: it takes no settings")

    async def pulse(self, device_id: str, seconds: float) -> None:
        raise ApplyError("bad_request", f"{device_id} is a beacon scanner: it cannot pulse")

    def stats(self) -> Mapping[str, Any]:
        return {"scanners": {sid: sc.stats() for sid, sc in self.scanners.items()}}

    def stuck(self, limit_s: float) -> list[str]:
        now = time.monotonic()
        out = []
        if now - self._tick_turn > limit_s + self.tick_s:
            out.append(f"beacon: presence tick silent for {now - self._tick_turn:.0f} s")
        for sc in self.scanners.values():
            if sc.starting_since is not None and now - sc.starting_since > limit_s:
                out.append(f"beacon scanner {sc.id}: opening the radio for {now - sc.starting_since:.0f} s")
        return out

    # -- presence ---------------------------------------------------------------------------------
    def emit(self, scanner: str, change: Change) -> None:
        self.sink.on_event("presence", {"scanner": scanner, "beacon": change.beacon, "person": change.person,
                                        "change": change.change, "rssi": change.rssi})

    def tick(self) -> None:
        """Departures due now, on every scanner whose radio listens (a deaf one says nothing of who left)."""
        for sc in self.scanners.values():
            if sc.open:
                for change in sc.tracker.tick():
                    self.emit(sc.id, change)

    async def _tick_loop(self) -> None:
        while True:
            self._tick_turn = time.monotonic()
            try:
                self.tick()
            except Exception:  # one bad turn must not end presence for the day
                log.exception("beacon: presence tick failed")
            await self.clock.sleep(self.tick_s)

    # -- the radio --------------------------------------------------------------------------------
    async def _scan_loop(self, sc: _Scanner) -> None:
        retry = Backoff(base_s=self.retry_base_s, max_s=self.retry_max_s, jitter=RETRY_JITTER)
        while True:
            began = self.clock.monotonic()
            sc.starting_since = time.monotonic()
            sc.counts["attempts"] += 1
            try:
                await self._scan_once(sc)
            except _Silent:
                sc.counts["silence_restarts"] += 1
                log.info("beacon scanner %s: nothing heard for %.0f s; restarting the scan", sc.id, self.silence_s)
                sc.open = False
                continue
            except ScannerUnavailable as exc:
                sc.down(str(exc))
            except Exception as exc:  # a backend's surprise must not take the daemon down
                sc.down(f"{type(exc).__name__}: {exc}", unexpected=exc)
            if self.clock.monotonic() - began >= STABLE_S:
                retry.reset()
            await self.clock.sleep(retry.fail(self.clock.monotonic()))

    async def _scan_once(self, sc: _Scanner) -> None:
        """One scan session: returns never; raises when the backend fails or the radio falls silent."""
        scan = asyncio.create_task(self.backend.scan(sc.settings.adapter, sc), name=f"beacon:{sc.id}:backend")
        try:
            while True:
                nap = asyncio.create_task(self.clock.sleep(min(self.silence_s / 4, 30.0)), name=f"beacon:{sc.id}:nap")
                try:
                    await asyncio.wait({scan, nap}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    nap.cancel()
                if scan.done():
                    if not scan.cancelled():
                        scan.result()
                    raise ScannerUnavailable("the scanner stopped by itself")
                if sc.open and self.clock.monotonic() - sc.last_heard > self.silence_s:
                    raise _Silent
        finally:
            scan.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({scan})


class AutoBackend:
    """The radio through bleak; a `udp://` or `unixgram://` adapter is the development backend instead
    (drivers/beacon/datagram.py: the demo's virtual school, tests, benchmarks)."""

    def __init__(self) -> None:
        self.bleak = BleakBackend()
        self.datagram = DatagramBackend()

    async def scan(self, adapter: str | None, to: Detections) -> None:
        backend: ScannerBackend = self.datagram if is_datagram(adapter) else self.bleak
        await backend.scan(adapter, to)


class BleakBackend:
    """The radio through bleak (BlueZ over D-Bus on Linux), active scanning."""

    def __init__(self, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.start_timeout_s = start_timeout_s

    async def scan(self, adapter: str | None, to: Detections) -> None:
        from bleak import BleakScanner  # lazy: bleak and dbus-fast load only where a beacon scanner is configured

        # BlueZ's own default, which bleak turns off: report every advertisement, not only changed ones,
        # so a beacon lying still keeps being sighted and does not "depart"
        bluez: BlueZScannerArgs = {"filters": {"DuplicateData": True}}
        if adapter:
            bluez["adapter"] = adapter
        scanner = BleakScanner(to.detected, bluez=bluez)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await scanner.start()
        except Exception as exc:
            raise ScannerUnavailable(unavailable_reason(exc, adapter)) from exc
        try:
            to.started()
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await scanner.stop()


def unavailable_reason(exc: BaseException, adapter: str | None) -> str:
    """Why the radio could not be opened, in words for whoever reads the log (bleak not imported here)."""
    text = str(exc) or type(exc).__name__
    radio = f"adapter {adapter}" if adapter else "the default adapter"
    if isinstance(exc, TimeoutError):
        return f"no Bluetooth: the Bluetooth service did not answer within the start timeout ({radio})"
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return f"no Bluetooth: no D-Bus system bus to reach BlueZ ({text})"
    if "ServiceUnknown" in text or "NameHasNoOwner" in text:   # D-Bus has no one answering to org.bluez
        return f"no Bluetooth: BlueZ (bluetoothd) is not running ({text})"
    return f"no Bluetooth on {radio}: {type(exc).__name__}: {text}"
