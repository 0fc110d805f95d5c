"""The virtual school: physics, one Modbus server per bus of a config, its card readers and its beacons
(`campus-edge simulate`).

`campus-edge simulate` also serves the config's card readers and beacon scanners (`readers=True`;
in-process tests that drive readers themselves leave it off): every `kind: rfid` reader whose
`port` is a path gets a socat pty pair like an RTU bus (the daemon opens `port`, the school writes
the reader's frames to `port.sim`) and taps the day's cards of `simulator.cards`; every `kind:
beacon_scanner` whose `adapter` is `udp://...` or `unixgram://...` (the daemon's development
backend) hears the advertisements of `simulator.beacons`. Devices that time things for the
gateway, a relay board's pulse and a beacon tag's advertising interval, keep the gateway's real
seconds at any `speed`.

In a test::

    async with VirtualSchool(cfg, speed=60, readers=True) as school:
        school.set_fault("ac-301a", "silent")
        school.ac("ac-301a").power_on, school.counters.total(bus="ac-bus")

From the CLI: `main(cfg, speed, wire_emulation)` prints READY once every server listens and runs
until SIGINT, SIGTERM or SIGHUP, then stops its servers and socat ptys (each step bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from types import TracebackType
from zoneinfo import ZoneInfo

from drivers.modbus.profile import ProfileError, load_profile
from edge.core.clock import Clock, ScaledClock
from edge.core.config import BeaconScanner, Config, ModbusDevice, RfidReader, RtuBus, TcpBus
from edge.core.model import Kind
from simulator.beacons import BeaconSender, BeaconStream, target
from simulator.cards import Days, Tap, TapPlayer, frame, roster
from simulator.physics import (
    AcSnapshot,
    ChannelSpec,
    MeterSnapshot,
    RoomParams,
    SchoolPhysics,
    SiteSpec,
    Weather,
)
from simulator.ptys import PtyError, PtyPair, sim_end
from simulator.registers import DEVICE_FAILURE, AcModel, DeviceModel, MeterModel, RelayModel, UnitMemory
from simulator.server import (
    Fault,
    FaultMode,
    Line,
    LineServer,
    RequestCounters,
    ServerConfigError,
    WireTiming,
    check_loopback,
)

TICK_S = 0.1  # real seconds between physics updates; also the resolution of flash timers
SERVER_STOP_S = 3.0  # one Modbus server closing its connections
STOP_TIMEOUT_S = 10.0  # the whole stop: every server and pty pair (each pair bounded by ptys.STOP_TIMEOUT_S)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PLAYED_KEPT = 10_000  # taps remembered for tests and the log


def site_spec(cfg: Config) -> SiteSpec:
    """The physics' view of a config: rooms, AC placement, relay boards and their loads."""
    top = max((r.floor for r in cfg.rooms), default=1)
    rooms = {r.id: RoomParams(area_m2=r.area_m2, west_facing=r.west_facing, top_floor=r.floor == top,
                              pupils=r.pupils) for r in cfg.rooms}
    acs = {d.id: d.room for d in cfg.modbus_devices() if d.kind == Kind.AC}
    relays = {}
    for d in cfg.modbus_devices():
        if d.kind == Kind.RELAY:
            relays[d.id] = load_profile(d.profile, cfg.profile_dirs).channels or 8
    channels = tuple(ChannelSpec(c.relay, c.channel, c.kind, c.room) for c in cfg.relay_channels())
    sim = cfg.simulation
    return SiteSpec(rooms=rooms, acs=acs, relays=relays, channels=channels,
                    weather=Weather(min_c=sim.outdoor_min_c, max_c=sim.outdoor_max_c),
                    base_load_kw=sim.base_load_kw, seed=sim.seed, initial_room_c=sim.initial_room_c)


def start_time(cfg: Config) -> float | None:
    """SimulationConfig.start as unix seconds (a time without offset is the site's local time)."""
    if cfg.simulation.start is None:
        return None
    when = datetime.fromisoformat(cfg.simulation.start)
    if when.tzinfo is None:
        when = when.replace(tzinfo=ZoneInfo(cfg.site.timezone))
    return when.timestamp()


def _dev_scanner(scanner: BeaconScanner) -> bool:
    """A scanner on the daemon's development backend (the school sends it advertisements)."""
    try:
        return target(scanner.adapter) is not None
    except ValueError as exc:
        raise ServerConfigError(f"device {scanner.id}: {exc}") from exc


class VirtualSchool:
    """Simulated devices of a config served over Modbus TCP and RTU ptys (with `readers`: card readers on
    ptys, beacons to dev scanners); an async context manager."""

    def __init__(self, cfg: Config, *, speed: float | None = None, wire_emulation: bool | None = None,
                 clock: Clock | None = None, tick_s: float = TICK_S, readers: bool = False) -> None:
        self.cfg = cfg
        sim = cfg.simulation
        self.clock: Clock = clock or ScaledClock(speed if speed is not None else sim.speed, start_time(cfg))
        self.wire_emulation = sim.wire_emulation if wire_emulation is None else wire_emulation
        self.tick_s = tick_s
        self.tz = ZoneInfo(cfg.site.timezone)
        # seconds of simulated time per second of the gateway's (real) time
        self.scale = self.clock.speed if isinstance(self.clock, ScaledClock) else 1.0
        self.physics = SchoolPhysics(site_spec(cfg), self.clock.time(), self.tz)
        self.counters = RequestCounters()
        self.faults: dict[str, Fault] = {}
        self.devices: dict[str, DeviceModel] = {}
        self.units: dict[str, dict[int, UnitMemory]] = {}
        self.lines: dict[str, Line] = {}
        self._servers: list[LineServer] = []
        self.readers = {d.id: d for d in cfg.devices
                        if readers and isinstance(d, RfidReader) and "://" not in d.port}
        self.days = Days(roster(cfg, list(self.readers.values())))
        self.taps = TapPlayer(self.days, self.clock.time())
        self.played: deque[Tap] = deque(maxlen=PLAYED_KEPT)
        self.reader_counts: Counter[str] = Counter()
        self.scanners = {d.id: d for d in cfg.devices if readers and isinstance(d, BeaconScanner) and _dev_scanner(d)}
        self.streams = {sid: BeaconStream(d, self.days, self.clock.time(), scale=self.scale)
                        for sid, d in self.scanners.items()}
        self.senders: dict[str, BeaconSender] = {}
        self._reader_fds: dict[str, int] = {}
        self._stack: AsyncExitStack | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._build()

    def _model(self, dev: ModbusDevice) -> DeviceModel:
        try:
            profile = load_profile(dev.profile, self.cfg.profile_dirs)
        except ProfileError as exc:
            raise ServerConfigError(f"device {dev.id}: {exc}") from exc
        if dev.kind == Kind.AC:
            return AcModel(dev, profile, self.physics.acs[dev.id])
        if dev.kind == Kind.METER:
            return MeterModel(dev, profile, self.physics)
        return RelayModel(dev, profile, self.physics.relays[dev.id], pulse_scale=self.scale)

    def _build(self) -> None:
        by_unit: dict[str, dict[int, list[DeviceModel]]] = defaultdict(lambda: defaultdict(list))
        for dev in self.cfg.modbus_devices():
            model = self._model(dev)
            self.devices[dev.id] = model
            by_unit[dev.bus][dev.unit].append(model)
        for bus in self.cfg.buses:
            if isinstance(bus, TcpBus):
                check_loopback(bus.host)
            units = {u: UnitMemory(u, models) for u, models in by_unit.get(bus.id, {}).items()}
            for mem in units.values():
                mem.refresh()
            self.units[bus.id] = units
            self.lines[bus.id] = Line(bus, units, counters=self.counters, faults=self.faults,
                                      now=self.clock.time, wire_emulation=self.wire_emulation)

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> VirtualSchool:
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            for bus in self.cfg.buses:
                port: str | None = None
                if isinstance(bus, RtuBus):
                    await stack.enter_async_context(PtyPair(bus.device))
                    port = sim_end(bus.device)
                server = LineServer(self.lines[bus.id], port)
                await server.start()
                stack.push_async_callback(_stop_server, server, bus.id)
                self._servers.append(server)
            for reader in self.readers.values():
                await stack.enter_async_context(PtyPair(reader.port))
                fd = os.open(sim_end(reader.port), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                stack.callback(os.close, fd)
                self._reader_fds[reader.id] = fd
            for sid, scanner in self.scanners.items():
                where = target(scanner.adapter)
                assert where is not None  # only such scanners are kept
                sender = self.senders[sid] = BeaconSender(*where)
                stack.callback(sender.close)
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="virtual school physics")
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._servers.clear()
        self._reader_fds.clear()
        self.senders.clear()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.sync()

    def sync(self) -> None:
        """Bring the physics up to the clock's time and the registers up to the physics."""
        now = self.clock.time()
        self.physics.step_to(now)
        for units in self.units.values():
            for mem in units.values():
                mem.refresh()
        self._play(now)

    def _play(self, now: float) -> None:
        """Write the card taps due by `now` to their readers' ptys; send the advertisements due."""
        for tap in self.taps.due(now):
            fd = self._reader_fds.get(tap.reader)
            if fd is None:   # not serving (before __aenter__, after __aexit__): the tap is missed
                continue
            data = frame(self.readers[tap.reader].framing, tap.card)
            try:
                written = os.write(fd, data)
            except OSError:   # nobody reads the reader's end and its buffer is full (EAGAIN)
                written = 0
            if written == len(data):
                self.reader_counts[tap.reader] += 1
                self.played.append(tap)
            else:
                self.reader_counts["dropped"] += 1
        for sid, stream in self.streams.items():
            sender = self.senders.get(sid)
            for datagram in stream.due(now):
                if sender is not None:
                    sender.send(datagram)

    # -- fault injection ------------------------------------------------------------------------
    def set_fault(self, device_id: str, mode: FaultMode | None, *, exception_code: int = DEVICE_FAILURE) -> None:
        """Make a device go silent, answer with a Modbus exception, or send malformed frames; None heals it."""
        if device_id not in self.devices:
            raise KeyError(device_id)
        if mode is None:
            self.faults.pop(device_id, None)
        elif mode in ("silent", "exception", "garbage"):
            self.faults[device_id] = Fault(mode, exception_code)
        else:
            raise ValueError(f"unknown fault mode {mode!r}")

    def set_fault_code(self, device_id: str, code: int) -> None:
        """Give an AC unit a malfunction code (0 clears it); a faulted unit stops cooling."""
        self.physics.acs[device_id].fault_code = code
        self.sync()

    # -- state ----------------------------------------------------------------------------------
    def ac(self, device_id: str) -> AcSnapshot:
        return self.physics.acs[device_id].snapshot()

    def room_temp_c(self, room_id: str) -> float:
        return self.physics.room_temp_c(room_id)

    def meter(self) -> MeterSnapshot:
        return self.physics.meter.snapshot()

    @property
    def site_power_w(self) -> float:
        return self.physics.site_power_w

    def relay(self, device_id: str) -> tuple[bool, ...]:
        return tuple(self.physics.relays[device_id].coils)

    def endpoint(self, bus_id: str) -> str:
        """Where a master reaches a bus: `host:port`, or the pty path the daemon opens."""
        bus = self.cfg.bus(bus_id)
        return f"{bus.host}:{bus.port}" if isinstance(bus, TcpBus) else bus.device

    def wire_timing(self, bus_id: str) -> WireTiming | None:
        return self.lines[bus_id].wire


async def _stop_server(server: LineServer, bus_id: str) -> None:
    try:
        await asyncio.wait_for(server.stop(), SERVER_STOP_S)
    except TimeoutError:
        print(f"simulate: the server of bus {bus_id} did not close within {SERVER_STOP_S:g} s", file=sys.stderr)


async def serve(cfg: Config, *, speed: float | None = None, wire_emulation: bool | None = None,
                ready: Callable[[], None] | None = None) -> None:
    """Serve the virtual school until cancelled; `ready` is called once every server listens."""
    async with VirtualSchool(cfg, speed=speed, wire_emulation=wire_emulation, readers=True) as school:
        for bus in cfg.buses:
            kind = "tcp" if isinstance(bus, TcpBus) else "rtu"
            units = sorted(school.units[bus.id])
            print(f"simulate: bus {bus.id} ({kind}) at {school.endpoint(bus.id)}, units {units}", file=sys.stderr)
        for reader in school.readers.values():
            print(f"simulate: rfid reader {reader.id} ({reader.framing}, {reader.purpose}) at {reader.port}",
                  file=sys.stderr)
        for scanner in school.scanners.values():
            print(f"simulate: beacon scanner {scanner.id} hears the virtual school at {scanner.adapter}",
                  file=sys.stderr)
        pupils = school.days.roster.pupils
        if school.readers and pupils:
            print(f"simulate: {len(pupils)} pupils with cards; school days' taps from 07:20 local time",
                  file=sys.stderr)
        if ready is not None:
            ready()
        await asyncio.get_running_loop().create_future()


def _stop_signals() -> list[signal.Signals]:
    """SIGINT and SIGHUP stay ignored where the caller ignores them (a shell's background job, nohup)."""
    return [sig for sig in STOP_SIGNALS if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN]


def main(cfg: Config, speed: float | None, wire_emulation: bool | None) -> int:
    """Blocking entry point for `campus-edge simulate`: READY on stdout, clean stop on SIGINT/SIGTERM/SIGHUP."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        handled = _stop_signals()
        for sig in handled:
            loop.add_signal_handler(sig, stop.set)
        serving = asyncio.create_task(serve(cfg, speed=speed, wire_emulation=wire_emulation,
                                            ready=lambda: print("READY", flush=True)), name="simulate")
        stopping = asyncio.create_task(stop.wait(), name="simulate signals")
        try:
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, stopping):
                task.cancel()
            _done, pending = await asyncio.wait({serving, stopping}, timeout=STOP_TIMEOUT_S)
            for sig in handled:
                loop.remove_signal_handler(sig)
        if pending:
            # a task that ignores cancellation cannot be awaited: leave now (socat ends with us, pdeathsig)
            print(f"campus-edge simulate: did not stop within {STOP_TIMEOUT_S:g} s", file=sys.stderr, flush=True)
            os._exit(1)
        failure = None if serving.cancelled() else serving.exception()
        if failure is not None:
            raise failure
        return 0

    try:
        return asyncio.run(run())
    except ServerConfigError as exc:
        print(f"campus-edge simulate: {exc}", file=sys.stderr)
        return 2
    except (PtyError, OSError) as exc:
        print(f"campus-edge simulate: {exc}", file=sys.stderr)
        return 1
