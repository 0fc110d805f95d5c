"""The cloud service: the daemon's side of the MQTT contract (CONTRACT.md section 3).

`CloudService(daemon)` is an async context manager the daemon enters when `cloud` is configured.
Inside one TaskGroup it runs:

* the link (`MqttLink.run`), whose every connection runs `_session`: subscribe `P/cmd`, publish the
  retained `P/status`, rewind the outbox, republish every device's retained STATE, then read
  commands, drain the outbox and publish live state until the connection dies;
* the event pump: the daemon's "event" messages go into the durable outbox (`P/event/{kind}`);
* the state watcher: "state" messages pass per-field deadbands, are coalesced per device (latest
  wins, at most one publish per device per `STATE_MIN_INTERVAL_S`) and refreshed every `REFRESH_S`;
* command execution: verify (CommandVerifier) -> journal -> dispatch -> journal -> outbox result;
  the PUBACK of a command's result marks it answered in the journal (`CommandJournal.delivered`).

Every message on `P/cmd` gets exactly one result in the outbox. At start, commands a crash left
unanswered are recovered (`recovery_step`), re-applied ones carried out to the end, before the
first new command is read: a newer command of the same user is never overridden by an older one.

Nothing on the event loop commits to SQLite: the outbox and the journal are written in worker
threads (`aput_many`, `aack`, `asyncio.to_thread`), so an fsync on the SD card (a FULL commit, a
WAL checkpoint) stalls a thread, never the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiomqtt

from cloud_sync.commands import (
    CommandPolicy,
    CommandVerifier,
    Rejection,
    VerifiedCommand,
    resolver_from_config,
    result_payload,
)
from cloud_sync.dispatch import Dispatcher, Gateway
from cloud_sync.journal import CommandJournal, JournalEntry, recovery_step
from cloud_sync.keys import load_public_keys
from cloud_sync.link import Category, LinkSettings, MqttLink, dumps
from cloud_sync.outbox import Cls, Outbox, OutboxFullError, OutboxMessage
from cloud_sync.topics import Topics, audience
from edge.core.backoff import Backoff
from edge.core.events import Message

log = logging.getLogger(__name__)

OUTBOX_MAX_BYTES = 64 * 1024 * 1024   # a week of events at a busy school fits many times over
OUTBOX_WINDOW = 100                   # QoS 1 messages of one batch in flight at once
EVENT_PUT_BATCH = 500                 # bus events stored per outbox transaction at most
STATE_MIN_INTERVAL_S = 1.0            # a device's state is published at most this often
REFRESH_S = 300.0                     # every state is republished at least this often (fresh ts)
RECOVERY_WAIT_S = 20.0                # after a restart, how long a re-applied command waits for its device
MAX_CONCURRENT_COMMANDS = 32
SHUTDOWN_COMMANDS_S = 5.0             # on stop, commands being carried out get this long to finish
SHUTDOWN_STATUS_S = 2.0
RESTART_BASE_S = 1.0                  # a failed cloud loop restarts after this, doubling ...
RESTART_MAX_S = 60.0                  # ... up to this
RESYNC_CHECK_S = 5.0                  # how often a session with unacknowledged commands looks for room again
STORAGE_ROOM_BYTES = 64 * 1024        # free space that counts as "room again" (or half the reserve, if more)


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups: what a log line should name."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _storage_full(exc: BaseException) -> bool:
    return isinstance(exc, OutboxFullError) or "full" in str(exc).lower()

# Per-field deadbands: (absolute, relative to the last published value); the larger applies.
# A change smaller than the band is not worth a message; the periodic refresh carries it anyway.
DEADBANDS: dict[str, tuple[float, float]] = {
    "room_temp_c": (0.2, 0.0),
    "power_w": (50.0, 0.01),
    "power_phase_w": (50.0, 0.01),
    "demand_w": (50.0, 0.01),
    "energy_kwh": (0.1, 0.0),
    "voltage_v": (1.0, 0.0),
    "current_a": (0.2, 0.02),
    "pf": (0.01, 0.0),
    "freq_hz": (0.05, 0.0),
}


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _moved(key: str, old: Any, new: Any) -> bool:
    if old == new:
        return False
    band = DEADBANDS.get(key)
    if band is None:
        return True  # settings, booleans, enums, faults: every change counts
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return any(_moved(key, o, n) for o, n in zip(old, new, strict=True))
    if _num(old) and _num(new):
        return bool(abs(new - old) >= max(band[0], band[1] * abs(old)) - 1e-9)  # 28.2 - 28.0 < 0.2 in floats
    return True


def significant(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether `new` differs from the last published `old` by more than the deadbands (ts aside)."""
    if old is None:
        return True
    return any(_moved(k, old.get(k), new.get(k)) for k in set(old) | set(new) if k != "ts")


@dataclass
class StateGate:
    """Which device states to publish when: deadbands, per-device rate limit (latest wins), refresh."""

    min_interval_s: float = STATE_MIN_INTERVAL_S
    refresh_s: float = REFRESH_S
    published: dict[str, dict[str, Any]] = field(default_factory=dict)
    published_at: dict[str, float] = field(default_factory=dict)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    suppressed: int = 0

    def offer(self, device: str, state: Mapping[str, Any]) -> bool:
        """A new state; True when it is now waiting to be published."""
        if device in self.pending or significant(self.published.get(device), state):
            self.pending[device] = dict(state)
            return True
        self.suppressed += 1
        return False

    def due(self, now: float, current: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """States to publish now: pending ones past their device's interval, and stale ones (refresh)."""
        out = []
        for dev in list(self.pending):
            if now - self.published_at.get(dev, -math.inf) >= self.min_interval_s:
                out.append((dev, self.pending.pop(dev)))
        for dev, state in current.items():
            if dev not in self.pending and now - self.published_at.get(dev, -math.inf) >= self.refresh_s \
                    and all(d != dev for d, _ in out):
                out.append((dev, dict(state)))
        return out

    def next_due(self, now: float) -> float:
        """Seconds until something may be due (pending interval or the next refresh)."""
        times = [self.published_at.get(d, -math.inf) + self.min_interval_s for d in self.pending]
        times += [t + self.refresh_s for t in self.published_at.values()]
        return max(0.0, min(times, default=now + self.refresh_s) - now)

    def sent(self, device: str, state: Mapping[str, Any], now: float) -> None:
        self.published[device] = dict(state)
        self.published_at[device] = now

    def republish_all(self, current: Mapping[str, Mapping[str, Any]]) -> None:
        """After a reconnect: everything again, at once (the broker may have lost its retained copies)."""
        for dev, state in current.items():
            self.pending[dev] = dict(state)
            self.published_at.pop(dev, None)


def _category(m: OutboxMessage) -> Category:
    return "result" if m.cls == "result" else "event" if m.cls == "event" else "other"


class CloudService:
    """The MQTT side of the daemon (see the module docstring)."""

    def __init__(self, gw: Gateway, *, settings: LinkSettings | None = None,
                 outbox_max_bytes: int = OUTBOX_MAX_BYTES, window: int = OUTBOX_WINDOW) -> None:
        cfg = gw.cfg
        if cfg.cloud is None:
            raise ValueError("the configuration has no cloud section")
        self.gw = gw
        self.cloud = cfg.cloud
        self.topics = Topics.for_config(cfg)
        self.audience = audience(cfg.site.school_id, cfg.site.gateway_id)
        self.settings = settings or LinkSettings.from_config(
            cfg.cloud.mqtt, f"campus-edge-{cfg.site.school_id}-{cfg.site.gateway_id}")
        self.window = window
        self.outbox_max_bytes = outbox_max_bytes
        self.dispatcher = Dispatcher(gw)
        self.states = StateGate()
        self.commands_in = 0
        self.results_out = 0
        self.results_by_code: Counter[str] = Counter()   # the code of every result queued
        self._state_wake = asyncio.Event()
        self._cmd_slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        self._recovered = asyncio.Event()
        self._tg = asyncio.TaskGroup()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._commands: set[asyncio.Task[Any]] = set()
        self.restarts: dict[str, int] = {}
        self.turns: dict[str, float] = {}
        self._unstored: list[Message] = []
        self.accepting = True            # False once a stop began: new commands stay with the broker
        self.unacked = 0                 # commands left unacknowledged (not journalled: the broker keeps them)
        store = Path(cfg.storage.path)
        keys = load_public_keys(self.cloud.command_keys)  # ValueError naming each bad file
        if not keys:
            log.warning("cloud.command_keys is empty: every command will be answered bad_signature")
        self.link = MqttLink(self.settings, will_topic=self.topics.status)
        self.outbox = Outbox(store / "outbox.db", max_bytes=outbox_max_bytes, clock=gw.clock,
                             min_free_bytes=int(cfg.storage.reserve_mb * 1024 * 1024))
        try:
            self.journal = CommandJournal(store / "commands.db", gw.clock)
        except BaseException:
            self.outbox.close()
            raise
        self.verifier = CommandVerifier(keys, self.audience, resolver_from_config(cfg), replay_db=self.journal,
                                        clock=gw.clock, policy=CommandPolicy(
                                            setpoint_min_c=cfg.control.setpoint_min_c,
                                            setpoint_max_c=cfg.control.setpoint_max_c,
                                            max_unlock_s=cfg.control.max_unlock_s,
                                            teacher_max_unlock_s=cfg.control.teacher_max_unlock_s))
        # subscribed here, before the first await: no event may slip past between start-up and the pump
        self._events = gw.bus.subscribe("event", maxsize=100_000, name="cloud-events")
        self._state_sub = gw.bus.subscribe("state", maxsize=10_000, name="cloud-state")

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> CloudService:
        try:
            await self._tg.__aenter__()
        except BaseException:
            self._close()
            raise
        for db, lost in ((self.outbox.set_aside, "undelivered events and results"),
                         (self.journal.set_aside, "the command journal: commands issued before now are refused")):
            if db is not None:
                self.gw.on_event("storage", {"database": db.path.name, "action": "set_aside",
                                             "moved_to": str(db.moved_to), "reason": db.reason, "lost": lost})
        self._spawn(self._recover(), "cloud-recover")
        self._spawn(self._supervise("cloud-events", self._pump_events), "cloud-events")
        self._spawn(self._supervise("cloud-state-watch", self._watch_states), "cloud-state-watch")
        self._spawn(self._supervise("cloud-link", lambda: self.link.run(self._session)), "cloud-link")
        log.info("cloud link to %s:%d, topics %s/...", self.settings.host, self.settings.port, self.topics.base)
        return self

    async def _supervise(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `loop` for ever: an exception (a full disk, a damaged database, a bug) is a `fault` event
        and a restart after a growing delay, never the end of the cloud link, let alone of the daemon."""
        retry = Backoff(base_s=RESTART_BASE_S, max_s=RESTART_MAX_S, jitter=0.2)
        while True:
            started = time.monotonic()
            self.turns[name] = started
            try:
                await loop()
                return
            except Exception as group:  # contained: the school's control does not depend on it
                exc = _leaf(group)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                if time.monotonic() - started > RESTART_MAX_S:
                    retry.reset()
                delay = retry.fail(time.monotonic())
                log.error("cloud service %s failed (%s: %s); restarting in %.1f s", name, type(exc).__name__, exc,
                          delay, exc_info=log.isEnabledFor(logging.DEBUG))
                self._fault(name, exc)
                await asyncio.sleep(delay)

    def _fault(self, service: str, exc: BaseException) -> None:
        code = "storage_full" if _storage_full(exc) else "service_restarted"
        self.gw.on_event("fault", {"device": "cloud", "code": code, "service": service,
                                   "message": f"{type(exc).__name__}: {exc}"[:300]})

    def stuck(self, limit_s: float) -> list[str]:
        """The link's supervisor turns (connects, reconnects, or waits on a live session): never hangs a stop."""
        task = next((t for t in self._tasks if t.get_name() == "cloud-link"), None)
        if task is None or task.done():
            return ["cloud-link: not running"]
        return []

    @property
    def connected(self) -> bool:
        return self.link.connected.is_set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str, *, command: bool = False) -> asyncio.Task[None]:
        task = self._tg.create_task(coro, name=name)
        group = self._commands if command else self._tasks
        group.add(task)
        task.add_done_callback(group.discard)
        return task

    async def __aexit__(self, *exc: object) -> None:
        self.accepting = False   # first: no new command is taken; the broker keeps what was not acknowledged
        try:
            if self._commands:  # let commands being carried out finish (their results go to the outbox)
                await asyncio.wait(set(self._commands), timeout=SHUTDOWN_COMMANDS_S)
            if self.link.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_STATUS_S):
                        await self.link.publish(self.topics.status, dumps({"online": False}), "status",
                                                retain=True)
            self.link.stopping = True
            for t in self._tasks | self._commands:
                t.cancel()
            await self._tg.__aexit__(None, None, None)
        finally:
            self._store_queued_events()
            self._close()

    def _close(self) -> None:
        self.gw.bus.unsubscribe(self._events)
        self.gw.bus.unsubscribe(self._state_sub)
        self.outbox.close()
        self.journal.close()

    def stats(self) -> dict[str, Any]:
        ob = self.outbox.stats()
        return {
            "connected": self.link.connected.is_set(),
            "last_error": self.link.last_error,
            "mqtt": self.link.counters.as_dict(),
            "commands": self.commands_in, "results": self.results_out,
            "results_by_code": dict(sorted(self.results_by_code.items())),
            "states_suppressed": self.states.suppressed,
            "outbox": {"pending": ob.pending, "bytes_used": ob.bytes_used, "alarm": ob.alarm},
        }

    # -- one connection --------------------------------------------------------------------------
    async def _session(self, client: aiomqtt.Client) -> None:
        self.outbox.rewind()
        await client.subscribe(self.topics.cmd, qos=1)
        info = self.gw_info()
        await self.link.publish(self.topics.status, dumps({"online": True, **info}), "status", retain=True)
        self.states.republish_all(self.gw.states)
        self._state_wake.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read_commands(client), name="cloud-cmd-reader")
            tg.create_task(self._drain(), name="cloud-outbox-drain")
            tg.create_task(self._publish_states(), name="cloud-state-publish")
            tg.create_task(self._resync_when_storage_returns(), name="cloud-resync")

    async def _resync_when_storage_returns(self) -> None:
        """Commands left unacknowledged (the disk was full) come back from the broker on a new connection.

        The broker redelivers unacknowledged messages only when the client reconnects (and stops sending
        once its in-flight window is full), so once there is room again the session ends itself.
        """
        while True:
            await asyncio.sleep(RESYNC_CHECK_S)
            if self.unacked and await asyncio.to_thread(self._storage_has_room):
                log.warning("storage has room again: reconnecting so that the broker delivers the %d"
                            " unacknowledged commands", self.unacked)
                self.unacked = 0
                raise aiomqtt.MqttError("reconnecting to receive the commands left with the broker")

    def _storage_has_room(self) -> bool:
        try:
            room = max(STORAGE_ROOM_BYTES, self.outbox.min_free_bytes // 2)
            return shutil.disk_usage(self.journal.path.parent).free >= room
        except OSError:
            return False

    def gw_info(self) -> dict[str, Any]:
        info = getattr(self.gw, "gateway_info", None)
        got: dict[str, Any] = info() if callable(info) else {}
        return {"version": got.get("version", "unknown"), "started_at": got.get("started_at")}

    async def _drain(self) -> None:
        """Outbox -> broker in batches (a bounded window of QoS 1 publishes); ack after PUBACK."""
        link = self.link
        batches = cast("AsyncGenerator[list[OutboxMessage], None]", self.outbox.batches(self.window))
        async with contextlib.aclosing(batches):
            async for batch in batches:
                got = await asyncio.gather(*(link.publish(m.topic, m.payload, _category(m)) for m in batch),
                                           return_exceptions=True)
                done = [m for m, r in zip(batch, got, strict=True) if r is None]
                if done:
                    await self.outbox.aack([m.seq for m in done])
                    results = [m.msg_id for m in done if m.cls == "result"]
                    if results:
                        await asyncio.to_thread(self._delivered, results)
                    self.results_out += len(results)
                for r in got:
                    if isinstance(r, BaseException):
                        raise r

    def _delivered(self, msg_ids: Sequence[str]) -> None:
        """PUBACKs of results: their commands are answered now (a rejection's random id matches none)."""
        for mid in msg_ids:
            self.journal.delivered(mid)

    async def _publish_states(self) -> None:
        link, clock = self.link, self.gw.clock
        while True:
            now = clock.monotonic()
            due = self.states.due(now, self.gw.states)
            if due:
                got = await asyncio.gather(*(link.publish(self.topics.state(d), dumps(s), "state", retain=True)
                                             for d, s in due), return_exceptions=True)
                for (d, s), r in zip(due, got, strict=True):
                    if r is None:
                        self.states.sent(d, s, now)
                    elif d not in self.states.pending:
                        self.states.pending[d] = s  # not sent: try again on the next connection
                for r in got:
                    if isinstance(r, BaseException):
                        raise r
                continue
            self._state_wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.states.next_due(clock.monotonic())):
                    await self._state_wake.wait()

    async def _watch_states(self) -> None:
        async for msg in self._state_sub:
            if self.states.offer(msg.key, msg.payload):
                self._state_wake.set()

    # -- events ----------------------------------------------------------------------------------
    async def _pump_events(self) -> None:
        q = self._events.queue
        retry = Backoff(base_s=RESTART_BASE_S, max_s=RESTART_MAX_S, jitter=0.2)
        while True:
            batch = self._unstored or [await q.get()]
            self._unstored = []
            while not q.empty() and len(batch) < EVENT_PUT_BATCH:
                batch.append(q.get_nowait())
            try:
                await self.outbox.aput_many(self._event_rows(batch))
            except (OSError, sqlite3.Error) as exc:
                # kept in memory (and the bus keeps what arrives meanwhile) until the disk takes them
                self._unstored = batch
                if retry.failures == 0:
                    log.error("events not stored (%s); kept in memory, retrying", exc)
                    self._fault("cloud-events", exc)
                await asyncio.sleep(retry.fail(time.monotonic()))
                continue
            if retry.failures:
                log.warning("events stored again after %d failed attempts", retry.failures)
                retry.reset()

    def _event_rows(self, batch: list[Message]) -> list[tuple[str, bytes, Cls, str | None]]:
        return [(self.topics.event(m.key), dumps(m.payload), "event", str(m.payload.get("id") or uuid.uuid4().hex))
                for m in batch]

    def _store_events(self, batch: list[Message]) -> None:
        self.outbox.put_many(self._event_rows(batch))

    def _store_queued_events(self) -> None:
        """On the way out: whatever the bus still holds goes to disk (no event is ever dropped)."""
        q = self._events.queue
        batch, self._unstored = self._unstored, []
        while not q.empty():
            batch.append(q.get_nowait())
        if not batch:
            return
        try:
            self._store_events(batch)
        except (RuntimeError, OSError, sqlite3.Error) as exc:
            log.error("%d events could not be stored at the stop: %s", len(batch), exc)

    # -- commands --------------------------------------------------------------------------------
    async def _read_commands(self, client: aiomqtt.Client) -> None:
        """One message at a time, in the order received: PUBACK only once it is durable (journal or outbox).

        The link acknowledges manually (MqttLink): a command the gateway did not journal (a stop began,
        the disk is full) is left unacknowledged and the broker delivers it again (persistent session).
        """
        await self._recovered.wait()  # recovered results go first; no new command before them
        async for m in client.messages:
            if not m.topic.matches(self.topics.cmd):
                self.link.ack(m)
                continue
            if not self.accepting:
                return   # a stop began: this and the rest stay with the broker
            p = m.payload
            raw = bytes(p) if isinstance(p, bytes | bytearray) else b"" if p is None else str(p).encode()
            self.link.counters.count_received("cmd", len(raw))
            if await self.handle_command(raw):
                self.link.ack(m)
            else:
                self.unacked += 1

    async def handle_command(self, raw: bytes) -> bool:
        """Verify one `P/cmd` payload; a rejection is answered at once, a command runs in its own task.

        True once the command is durable (journalled, or its answer in the outbox): it may be acknowledged.
        """
        # nothing new before the commands a crash interrupted are settled: recovery reads the
        # journal's pending rows, and a command begun meanwhile would look interrupted and run twice
        await self._recovered.wait()
        self.commands_in += 1
        full = self.outbox.full
        try:
            verdict = await asyncio.to_thread(self.verifier.verify, raw, full)
        except (OSError, sqlite3.Error) as exc:   # the journal cannot take it: left for the broker
            log.error("command not journalled (%s); left with the broker", exc)
            self._fault("cloud-commands", exc)
            return False
        if isinstance(verdict, Rejection):
            log.info("command %s rejected: %s %s", verdict.id or verdict.replay_of, verdict.code, verdict.message)
            # not journalled: a random msg_id, so its PUBACK never marks a journalled command answered
            try:
                await self._answer(verdict.result(self.gw.clock.time(), self.gw.tz), None)
            except (OSError, sqlite3.Error) as exc:
                log.error("answer to a refused command not stored (%s); left with the broker", exc)
                return False
            return True
        await self._cmd_slots.acquire()
        self._spawn(self._run_command(verdict), f"cloud-cmd-{verdict.id[:16]}", command=True)
        return True

    async def _run_command(self, cmd: VerifiedCommand, wait_online_s: float = 0.0) -> None:
        try:
            log.info("command %s: %s %s %s by %s (%s)", cmd.id, cmd.action, cmd.target, dict(cmd.params), cmd.sub,
                     cmd.role)
            try:
                result = await self.dispatcher.execute(cmd, wait_online_s=wait_online_s)
            except Exception as exc:  # a bug must still produce a result, and not take the service down
                log.exception("command %s failed", cmd.id)
                result = result_payload(cmd.id, "failed", "write_failed", f"internal error: {exc}",
                                        self.gw.clock.time(), self.gw.tz)
            try:
                await asyncio.to_thread(self.journal.applied, cmd.id, result)
                await self._answer(result, cmd.id)  # answered in the journal on its PUBACK (_drain)
            except (OSError, sqlite3.Error) as exc:
                # still `received` (or `applied`) in the journal: the next start answers it (recovery)
                log.error("result of command %s not stored (%s); recovery answers it", cmd.id, exc)
                self._fault("cloud-commands", exc)
        finally:
            self._cmd_slots.release()

    async def _answer(self, result: Mapping[str, Any], msg_id: str | None) -> None:
        self.results_by_code[str(result.get("code"))] += 1
        await self.outbox.aput(self.topics.cmd_result, dumps(result), "result", msg_id=msg_id or uuid.uuid4().hex)

    async def _recover(self) -> None:
        """Commands a crash left between receipt and result (CommandJournal's protocol).

        New commands wait (`_recovered`) until every re-applied one has been carried out: each may
        wait up to RECOVERY_WAIT_S for its device, and a newer command of the same user read
        meanwhile would be applied first and then overridden by the older one.
        """
        reapplied: list[asyncio.Task[None]] = []
        try:
            pending = await asyncio.to_thread(self.journal.pending)
            if pending:
                in_outbox = await asyncio.to_thread(self.outbox.msg_ids, "result")
                for entry in pending:
                    task = await self._recover_one(entry, in_outbox)
                    if task is not None:
                        reapplied.append(task)
            if reapplied:
                await asyncio.wait(reapplied)
        finally:
            self._recovered.set()

    async def _recover_one(self, e: JournalEntry, in_outbox: set[str]) -> asyncio.Task[None] | None:
        step = recovery_step(e, self.gw.clock.time())
        log.warning("command %s (%s) interrupted by a restart in state %s: %s", e.jti, e.command.get("action"),
                    e.state, step)
        if step == "republish" and e.result is not None:
            if e.jti not in in_outbox:  # still stored: the drain sends it; once more would only be a duplicate
                await self._answer(e.result, e.jti)
        elif step == "reapply":
            c = e.command
            cmd = VerifiedCommand(e.jti, str(c["action"]), str(c["target"]), dict(c.get("params", {})),
                                  str(c["sub"]), c["role"], tuple(c["rooms"]) if c.get("rooms") is not None else None,
                                  float(c["iat"]), float(c["exp"]), str(c.get("kid", "")))
            await self._cmd_slots.acquire()
            return self._spawn(self._run_command(cmd, wait_online_s=RECOVERY_WAIT_S), f"cloud-recover-{e.jti[:16]}",
                               command=True)
        else:
            result = result_payload(e.jti, "failed", "write_failed", "interrupted by a restart; not repeated",
                                    self.gw.clock.time(), self.gw.tz)
            if e.state == "received":
                await asyncio.to_thread(self.journal.applied, e.jti, result)
            await self._answer(result, e.jti)
        return None
