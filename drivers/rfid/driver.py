"""The RFID driver: every `kind: rfid` reader of a site behind the core's `Driver` seam.

Each reader has one loop (all in one TaskGroup) that opens its port, feeds what arrives to the
reader's framing decoder and turns frames into taps; when the port fails (a USB adapter unplugged,
the device path gone or replaced, a `socket://` peer that closed) the reader goes offline and its
port is reopened with jittered exponential backoff. A card held at a reader is one tap
(`taps.RepeatFilter`). Every tap is published as a `card` event with `person` and `decision`
null, and handed to `on_tap` when set. A tap on a door reader goes instead to `on_door_tap` when
the access-control part has set it: that hook decides, opens the door and publishes the tap's one
`card` event with its decision (a hook that cannot run, or raises, leaves the null event here).
Readers are inputs only: `apply` and `pulse` refuse.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from drivers.rfid.framing import Decoder, decoder
from drivers.rfid.port import Link, open_port, replaced
from drivers.rfid.taps import REPEAT_WINDOW_S, RepeatFilter, Tap
from edge.core.backoff import Backoff
from edge.core.clock import Clock, SystemClock
from edge.core.config import Config, RfidReader
from edge.core.driver import ApplyError, DriverSink
from edge.core.model import Kind, ReaderState

log = logging.getLogger(__name__)

REOPEN_BASE_S = 0.5      # first reopen of a failed port
REOPEN_MAX_S = 30.0      # a reader left unplugged is still tried every ~30 s
REOPEN_JITTER = 0.2      # +-20 %, so readers that failed together do not retry together
STABLE_S = 10.0          # a port that stayed open this long starts its next backoff afresh
TURN_S = 1.0             # a reader's loop turns at least this often (the watchdog; the path check)
STOP_TIMEOUT_S = 5.0     # __aexit__ gives the loops this long to end after being cancelled
STOP_RECANCEL_S = 0.5    # ...cancelling again whatever still runs at this pace

TapHook = Callable[[Tap], Awaitable[None]]


@dataclass(eq=False)
class _Reader:
    cfg: RfidReader
    decoder: Decoder
    repeats: RepeatFilter
    turn: float = field(default_factory=time.monotonic)
    port_open: bool | None = None
    online: bool | None = None
    reason: str | None = None
    last_frame: float | None = None            # time.monotonic() of the last good frame
    counts: Counter[str] = field(default_factory=Counter)


class RfidDriver:
    """`edge.core.driver.Driver` for serial and socket:// RFID readers."""

    name = "rfid"

    def __init__(self, readers: Iterable[RfidReader], sink: DriverSink, clock: Clock | None = None, *,
                 repeat_window_s: float = REPEAT_WINDOW_S, rng: random.Random | None = None) -> None:
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self.on_tap: TapHook | None = None
        """Called with every tap, in its own task."""
        self.on_door_tap: TapHook | None = None
        """Door readers' taps, in their own task: the hook publishes the `card` event (with the decision)."""
        self._rng = rng or random.Random()
        self._readers = {r.id: _Reader(r, decoder(r.framing), RepeatFilter(repeat_window_s)) for r in readers}
        self._kinds = dict.fromkeys(self._readers, Kind.RFID)
        self._tg: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._hooks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @classmethod
    def from_config(cls, cfg: Config, sink: DriverSink, clock: Clock) -> RfidDriver | None:
        readers = [d for d in cfg.devices if isinstance(d, RfidReader)]
        return cls(readers, sink, clock) if readers else None

    # -- the seam ---------------------------------------------------------------------------------
    def devices(self) -> Mapping[str, Kind]:
        return self._kinds

    def capabilities(self, device_id: str) -> frozenset[str]:
        return frozenset()

    async def __aenter__(self) -> Self:
        self._stopping = False
        for r in self._readers.values():
            r.turn = time.monotonic()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._loops = [self._tg.create_task(self._run(r), name=f"rfid:{r.cfg.id}") for r in self._readers.values()]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping = True
        tasks = [*self._loops, *self._hooks]
        for task in tasks:
            task.cancel()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while tasks and time.monotonic() < deadline:   # a hook that swallows one cancel gets another
            _done, running = await asyncio.wait(tasks, timeout=STOP_RECANCEL_S)
            tasks = list(running)
            for task in tasks:
                task.cancel()
        tg, self._tg, self._loops = self._tg, None, []
        if tasks:
            # a bounded stop: what ignores every cancel is left behind (logged), not waited for
            log.error("rfid: %s still running %.0f s after stop; left behind",
                      sorted(t.get_name() for t in tasks), STOP_TIMEOUT_S)
        elif tg is not None:
            await tg.__aexit__(None, None, None)

    async def apply(self, device_id: str, desired: Mapping[str, Any]) -> Mapping[str, Any]:
        raise ApplyError("bad_request", f"{device_id} is an RFID reader: it takes no writes")

    async def pulse(self, device_id: str, seconds: float) -> None:
        raise ApplyError("bad_request", f"{device_id} is an RFID reader: it cannot pulse")

    def stats(self) -> Mapping[str, Any]:
        now = time.monotonic()
        readers = {}
        drops: Counter[str] = Counter()
        for rid, r in self._readers.items():
            drops.update(r.decoder.drops)
            readers[rid] = {
                "port": r.cfg.port, "framing": r.cfg.framing, "purpose": r.cfg.purpose,
                "port_open": r.port_open, "reason": r.reason,
                "frames": r.decoder.frames, "taps": r.counts["taps"], "repeats": r.counts["repeats"],
                "drops": {k: v for k, v in r.decoder.drops.items() if v},
                "opens": r.counts["opens"], "reopens": max(0, r.counts["opens"] - 1),
                "open_failures": r.counts["open_failures"],
                "last_frame_age_s": None if r.last_frame is None else round(now - r.last_frame, 3),
            }
        return {
            "frames": sum(r["frames"] for r in readers.values()),
            "taps": sum(r["taps"] for r in readers.values()),
            "drops": {k: v for k, v in drops.items() if v},
            "reopens": sum(r["reopens"] for r in readers.values()),
            "readers": readers,
        }

    def stuck(self, limit_s: float) -> list[str]:
        if self._tg is None:
            return []
        now = time.monotonic()
        return [f"rfid reader {rid}: loop silent for {now - r.turn:.0f} s"
                for rid, r in self._readers.items() if now - r.turn > limit_s]

    # -- one reader --------------------------------------------------------------------------------
    async def _run(self, r: _Reader) -> None:
        retry = Backoff(base_s=REOPEN_BASE_S, max_s=REOPEN_MAX_S, jitter=REOPEN_JITTER, rng=self._rng)
        port = r.cfg.port
        while True:
            r.turn = time.monotonic()
            try:
                link = await open_port(port, r.cfg.baudrate, functools.partial(self._received, r))
            except (OSError, TimeoutError, ValueError) as exc:  # pyserial's SerialException is an OSError
                r.counts["open_failures"] += 1
                if retry.failures == 0:
                    log.warning("rfid reader %s: cannot open %s (%s); retrying with backoff", r.cfg.id, port, exc)
                self._port(r, False, f"cannot open {port}: {exc or type(exc).__name__}")
                await self._pause(r, retry.fail(time.monotonic()))
                continue
            opened = time.monotonic()
            r.counts["opens"] += 1
            log.info("rfid reader %s: %s open (%s)", r.cfg.id, port, r.cfg.framing)
            self._port(r, True, None)
            try:
                why = await self._watch(r, link)
            finally:
                await link.close()
                r.decoder.flush()
            log.warning("rfid reader %s: %s; reopening with backoff", r.cfg.id, why)
            self._port(r, False, why)
            if time.monotonic() - opened >= STABLE_S:
                retry.reset()
            await self._pause(r, retry.fail(time.monotonic()))

    async def _watch(self, r: _Reader, link: Link) -> str:
        """Wait until the port fails or its device path no longer names the device opened; says why."""
        while True:
            r.turn = time.monotonic()
            done, _ = await asyncio.wait({link.lost}, timeout=TURN_S)
            if done:
                exc = link.lost.result()
                return f"port lost: {exc}" if exc is not None else "port closed by the other end"
            why = replaced(r.cfg.port, link)
            if why is not None:
                return why

    async def _pause(self, r: _Reader, delay: float) -> None:
        """Sleep `delay` seconds, turning every TURN_S so the watchdog sees a live loop."""
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0:
            r.turn = time.monotonic()
            await asyncio.sleep(min(TURN_S, left))

    def _port(self, r: _Reader, is_open: bool, reason: str | None) -> None:
        r.reason = reason
        if r.port_open != is_open:
            r.port_open = is_open
            self._deliver(self.sink.on_state, r.cfg.id, ReaderState(port_open=is_open), is_open, self.clock.time())
        if r.online != is_open:
            r.online = is_open
            self._deliver(self.sink.on_health, r.cfg.id, is_open, reason)

    # -- frames to taps (called by the event loop as bytes arrive) ---------------------------------
    def _received(self, r: _Reader, data: bytes, at: float) -> None:
        for card in r.decoder.feed(data):
            r.last_frame = at
            if not r.repeats.is_new(card, at):
                r.counts["repeats"] += 1
                continue
            r.counts["taps"] += 1
            tap = Tap(r.cfg.id, card, r.cfg.purpose, r.cfg.door, at, self.clock.time())
            door_hook = self.on_door_tap if tap.purpose == "door" else None
            if door_hook is None or not self._spawn(door_hook, tap, publishes=True):
                self._publish(tap)
            if self.on_tap is not None:
                self._spawn(self.on_tap, tap)

    def _publish(self, tap: Tap) -> None:
        """The tap's `card` event without a decision (gate and health readers; doors nobody decides on)."""
        self._deliver(self.sink.on_event, "card", {"reader": tap.reader, "card": tap.card,
                                                   "purpose": tap.purpose, "person": None, "decision": None})

    def _spawn(self, hook: TapHook, tap: Tap, *, publishes: bool = False) -> bool:
        if self._tg is None or self._stopping:
            return False
        task = self._tg.create_task(self._call(hook, tap, publishes), name=f"rfid:{tap.reader}:tap")
        self._hooks.add(task)
        task.add_done_callback(self._hooks.discard)
        return True

    async def _call(self, hook: TapHook, tap: Tap, publishes: bool) -> None:
        try:
            await hook(tap)
        except Exception:  # a failing hook must not stop the readers (the TaskGroup would)
            log.exception("rfid reader %s: tap hook failed for card %s", tap.reader, tap.card)
            if publishes:   # the tap is still reported (no event is ever dropped), without a decision
                self._publish(tap)

    def _deliver(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a faulty sink must not stop the reader
            log.exception("rfid: sink %s failed", getattr(fn, "__name__", fn))
