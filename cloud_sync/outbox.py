"""The durable outbox: events, command results and telemetry wait here (SQLite, WAL) until PUBACK.

Guarantees: at-least-once delivery, every message carries its caller's unique `msg_id` (the cloud
de-duplicates by it), messages of one topic are served in the order they were put, and a message
is deleted only by `ack` (after PUBACK). Events and results are never dropped; telemetry is
thinned and then dropped, oldest first, when the outbox grows past its share of `max_bytes`.

Each class has its own table (a rowid table, no secondary index: one leaf page touched per
insert, which keeps bytes written per message small on an SD card). `seq` is one counter across
the tables; a topic belongs to one class, so per-class seq order is per-topic order.

How the MQTT link uses it (the interleaving contract):

* `next_batch(limit)` hands out messages not yet handed out: results first, then events and
  telemetry, each in seq order; telemetry is guaranteed a quarter of a batch so a long event
  backlog does not starve it (and vice versa). The link publishes a batch (QoS 1, a bounded
  in-flight window, e.g. 100), calls `ack` with the seqs whose PUBACK arrived, and takes the next
  batch. Between batches it publishes its own live traffic (retained `state/...`, `status`), so a
  backlog of 100,000 costs live state messages at most one batch of latency. New events are
  appended while a backlog drains; a result put now is served in the very next batch.
* On every (re)connect the link calls `rewind()`: whatever was handed out but not acknowledged is
  served again from the oldest (at-least-once; the cloud drops duplicates by `id`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, get_args

from edge.core.clock import Clock, SystemClock
from edge.core.sqlite import SetAside, prepare

log = logging.getLogger(__name__)
_A = TypeVar("_A")
_R = TypeVar("_R")

Cls = Literal["result", "event", "telemetry"]
CLASSES: tuple[Cls, ...] = get_args(Cls)  # also the serving priority: results first

# Accounting: the bytes a row costs beyond its topic, id and payload (rowid, record header, ts,
# cell pointer). An estimate: `max_bytes` bounds the content, not the file to the byte.
ROW_OVERHEAD_BYTES = 32
TELEMETRY_THIN_AT = 0.5        # above this share of max_bytes, keep only every Nth telemetry per topic
TELEMETRY_KEEP_EVERY = 4
TELEMETRY_SERVE_SHARE = 4      # telemetry gets at least 1/4 of a batch when it has messages waiting
ALARM_AT = 0.9                 # event/result space alarm raised at this share of max_bytes ...
ALARM_CLEAR_AT = 0.8           # ... and cleared below this one (hysteresis)
DISK_CHECK_S = 5.0             # how often free disk space is looked at (statvfs)
DROP_LOG_EVERY = 1000          # a warning per this many dropped telemetry messages
DROP_CHUNK = 64                # oldest telemetry rows dropped per step when over the limit
# 1 KiB pages: a WAL commit writes whole pages, so a small page is what makes one message cost ~1 KiB
# rather than 4 KiB of flash (bench/outbox_bench.py measures both).
DEFAULT_PAGE_SIZE = 1024
WAL_LIMIT_BYTES = 4 * 1024 * 1024  # the WAL is truncated back to this after a checkpoint
# Checkpoints. A checkpoint copies the WAL into the database and fsyncs it (in any synchronous mode):
# on an SD card that is milliseconds to seconds. SQLite's automatic one runs inside whichever commit
# crosses `wal_autocheckpoint` pages, which may be a commit made on the event loop. So the worker
# threads (`aput_many`, `aack`, `next_batch`) checkpoint explicitly (and truncate the WAL) once it has
# grown past CHECKPOINT_AT_BYTES, and the automatic one is kept only as a bound (the WAL cannot grow without
# limit if nothing calls the threaded methods), set high enough that it normally never fires.
CHECKPOINT_AT_BYTES = 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = 8192    # x the page size (1 KiB by default): 8 MiB


class OutboxFullError(OSError):
    """The disk itself is full: even an event cannot be stored."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    cls: Cls
    msg_id: str
    ts: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: dict[str, int]          # per class, stored and not yet acknowledged
    inflight: int                    # handed out by next_batch, not yet acknowledged
    bytes_used: int
    max_bytes: int
    put: dict[str, int]              # per class, accepted since open
    acked: int
    telemetry_thinned: int           # telemetry refused at put time (downsampling)
    telemetry_dropped: int           # telemetry deleted (oldest first) or refused to make room
    alarm: bool
    disk_free_bytes: int | None


def _row_size(topic: str, msg_id: str, payload: bytes) -> int:
    return len(topic.encode()) + len(msg_id.encode()) + len(payload) + ROW_OVERHEAD_BYTES


class Outbox:
    """SQLite-backed outbox; one connection behind a lock (the loop calls `put`, a thread drains).

    `put`/`put_many`/`ack`/`take` are synchronous and short (one transaction, no fsync with
    synchronous=NORMAL); the `a*` variants and `next_batch` run them in a worker thread and, there,
    checkpoint the WAL when it has grown (see CHECKPOINT_AT_BYTES). Code on an event loop uses those.
    """

    def __init__(self, path: str | Path, *, max_bytes: int, clock: Clock | None = None,
                 synchronous: Literal["NORMAL", "FULL"] = "NORMAL", page_size: int = DEFAULT_PAGE_SIZE,
                 min_free_bytes: int = 64 * 1024 * 1024,
                 on_alarm: Callable[[bool, OutboxStats], None] | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.path = Path(path)
        self.set_aside: SetAside | None = prepare(self.path)   # a damaged outbox is moved aside, not fatal
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.clock: Clock = clock or SystemClock()
        self.on_alarm = on_alarm
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        # page_size only takes effect on a new file (before WAL is switched on); harmless otherwise.
        self._db.execute(f"PRAGMA page_size={int(page_size)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        # Why NORMAL and not FULL: in WAL mode NORMAL never corrupts the database, and a commit is in
        # the kernel's page cache when it returns, so a crash of the process (SIGKILL, OOM kill,
        # systemd restart: the failures we see) loses nothing. A power cut can lose the commits of
        # the last few seconds (until the kernel wrote the WAL back or a checkpoint synced it). FULL
        # closes that at the price of an fsync per commit: milliseconds on an SD card, blocking the
        # writer, and the same flash page programmed again per message. A gateway that must survive
        # power cuts without loss passes synchronous="FULL" (and should batch its puts).
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._wal = Path(f"{self.path}-wal")
        self.checkpoints = 0
        for c in CLASSES:
            self._db.execute(f"CREATE TABLE IF NOT EXISTS q_{c} (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
                             " msg_id TEXT NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL)")
        self._pending: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._bytes_cls: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._bytes = 0
        top = 0
        for c in CLASSES:
            n, size, hi = self._db.execute(
                f"SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(CAST(msg_id AS BLOB))"
                f" + length(payload)), 0), coalesce(max(seq), 0) FROM q_{c}").fetchone()
            self._pending[c] = int(n)
            self._bytes_cls[c] = int(size) + int(n) * ROW_OVERHEAD_BYTES
            self._bytes += self._bytes_cls[c]
            top = max(top, int(hi))
        self._next_seq = top + 1
        self._cursor = dict.fromkeys(CLASSES, 0)       # highest seq handed out, per class
        self._inflight: dict[int, tuple[Cls, int]] = {}  # seq -> (class, row size)
        self._topic_cls: dict[str, Cls] = {}
        self._thin_count: dict[str, int] = {}
        self._put: dict[str, int] = dict.fromkeys(CLASSES, 0)
        self._acked = 0
        self._thinned = 0
        self._dropped = 0
        self._alarm = False
        self._disk_free: int | None = None
        self._disk_checked = float("-inf")
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._check_alarm()

    # -- writing ---------------------------------------------------------------------------------
    def put(self, topic: str, payload: bytes, cls: Cls, msg_id: str | None = None) -> int | None:
        """Store one message; return its seq, or None for telemetry that was thinned or dropped."""
        return self.put_many([(topic, payload, cls, msg_id)])[0]

    def put_many(self, items: Iterable[tuple[str, bytes, Cls, str | None]]) -> list[int | None]:
        """Store several messages in one transaction (one WAL commit: far fewer bytes per message)."""
        batch = list(items)
        for topic, payload, cls, _ in batch:
            if cls not in CLASSES:
                raise ValueError(f"unknown class {cls!r}; expected one of {CLASSES}")
            if not isinstance(payload, bytes | bytearray):
                raise TypeError("payload must be bytes")
            known = self._topic_cls.get(topic)
            if known is not None and known != cls:
                raise ValueError(f"topic {topic!r} is {known!r}, not {cls!r}: one topic, one class (ordering)")
        now = self.clock.time()
        seqs: list[int | None] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("outbox is closed")
            saved = (self._next_seq, self._bytes, dict(self._bytes_cls), dict(self._pending), dict(self._put),
                     self._thinned, self._dropped, dict(self._thin_count), dict(self._inflight))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for topic, payload, cls, msg_id in batch:
                    mid = msg_id if msg_id is not None else uuid.uuid4().hex
                    size = _row_size(topic, mid, bytes(payload))
                    if cls == "telemetry" and not self._admit_telemetry(topic, size):
                        seqs.append(None)
                        continue
                    if cls != "telemetry" and self._bytes + size > self.max_bytes:
                        self._drop_telemetry(self._bytes + size - self.max_bytes)
                    seq = self._next_seq
                    self._db.execute(f"INSERT INTO q_{cls} VALUES (?, ?, ?, ?, ?)",
                                     (seq, topic, mid, now, bytes(payload)))
                    self._next_seq += 1
                    self._bytes += size
                    self._bytes_cls[cls] += size
                    self._pending[cls] += 1
                    self._put[cls] += 1
                    seqs.append(seq)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                (self._next_seq, self._bytes, self._bytes_cls, self._pending, self._put, self._thinned, self._dropped,
                 self._thin_count, self._inflight) = saved
                if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                    raise OutboxFullError(f"{self.path}: disk full, message not stored") from exc
                raise
            for topic, _, cls, _ in batch:
                self._topic_cls.setdefault(topic, cls)
        self._check_alarm()
        self._notify()
        return seqs

    async def aput(self, topic: str, payload: bytes, cls: Cls, msg_id: str | None = None) -> int | None:
        """`put` in a worker thread (an fsync must not block the loop)."""
        return (await self.aput_many([(topic, payload, cls, msg_id)]))[0]

    async def aput_many(self, items: Iterable[tuple[str, bytes, Cls, str | None]]) -> list[int | None]:
        """`put_many` in a worker thread, then a checkpoint there if the WAL has grown."""
        batch = list(items)
        return await asyncio.to_thread(self._in_thread, self.put_many, batch)

    def _in_thread(self, fn: Callable[[_A], _R], arg: _A) -> _R:
        out = fn(arg)
        self.maybe_checkpoint()
        return out

    def maybe_checkpoint(self) -> bool:
        """Checkpoint (PASSIVE) when the WAL file is past CHECKPOINT_AT_BYTES; call it off the loop."""
        try:
            size = self._wal.stat().st_size
        except OSError:
            return False
        if size < CHECKPOINT_AT_BYTES:
            return False
        self.checkpoint()
        return True

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (its size then measures what came since)."""
        with self._lock:
            if self._closed:
                return
            # TRUNCATE waits for readers; this connection is the only one and holds the lock
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self.checkpoints += 1

    def _admit_telemetry(self, topic: str, size: int) -> bool:
        if self._bytes > TELEMETRY_THIN_AT * self.max_bytes:
            n = self._thin_count.get(topic, 0)
            self._thin_count[topic] = n + 1
            if n % TELEMETRY_KEEP_EVERY:
                self._thinned += 1
                return False
        over = self._bytes + size - self.max_bytes
        if over > 0 and self._drop_telemetry(over) < over:
            self._dropped += 1  # nothing older left to drop: this one goes
            return False
        return True

    def _drop_telemetry(self, need: int) -> int:
        """Delete the oldest telemetry until `need` bytes are freed or none is left; return bytes freed."""
        freed, before = 0, self._dropped
        while freed < need:
            rows = self._db.execute(
                "SELECT seq, length(CAST(topic AS BLOB)) + length(CAST(msg_id AS BLOB)) + length(payload)"
                " FROM q_telemetry ORDER BY seq LIMIT ?", (DROP_CHUNK,)).fetchall()
            if not rows:
                break
            taken: list[int] = []
            for seq, size in rows:
                taken.append(seq)
                freed += int(size) + ROW_OVERHEAD_BYTES
                if freed >= need:
                    break
            self._db.execute("DELETE FROM q_telemetry WHERE seq <= ?", (taken[-1],))
            for seq in taken:
                self._inflight.pop(seq, None)
            self._dropped += len(taken)
            self._pending["telemetry"] -= len(taken)
        self._bytes -= freed
        self._bytes_cls["telemetry"] -= freed
        if before == 0 < self._dropped or before // DROP_LOG_EVERY != self._dropped // DROP_LOG_EVERY:
            log.warning("outbox full (%d bytes): %d telemetry messages dropped so far", self.max_bytes, self._dropped)
        return freed

    # -- serving ---------------------------------------------------------------------------------
    def take(self, limit: int) -> list[OutboxMessage]:
        """The next messages not yet handed out (see the module docstring for the order)."""
        if limit <= 0:
            return []
        with self._lock:
            if self._closed:
                raise RuntimeError("outbox is closed")
            out = self._select("result", limit)
            room = limit - len(out)
            if room:
                events = self._select("event", room)
                tele = self._select("telemetry", room)
                n_tele = min(len(tele), max(room - len(events), room // TELEMETRY_SERVE_SHARE))
                out += events[:room - n_tele] + tele[:n_tele]
            for m in out:
                self._cursor[m.cls] = max(self._cursor[m.cls], m.seq)
                self._inflight[m.seq] = (m.cls, _row_size(m.topic, m.msg_id, m.payload))
        return out

    def _select(self, cls: Cls, limit: int) -> list[OutboxMessage]:
        rows = self._db.execute(f"SELECT seq, topic, payload, msg_id, ts FROM q_{cls} WHERE seq > ? ORDER BY seq"
                                " LIMIT ?", (self._cursor[cls], limit)).fetchall()
        return [OutboxMessage(seq, topic, bytes(payload), cls, msg_id, ts) for seq, topic, payload, msg_id, ts in rows]

    def msg_ids(self, cls: Cls) -> set[str]:
        """The msg_ids stored in one class (meant for results: a few; it reads the whole table)."""
        if cls not in CLASSES:
            raise ValueError(f"unknown class {cls!r}")
        with self._lock:
            if self._closed:
                raise RuntimeError("outbox is closed")
            return {mid for (mid,) in self._db.execute(f"SELECT msg_id FROM q_{cls}")}

    def peek(self, n: int) -> list[OutboxMessage]:
        """The oldest `n` stored messages of each class, in serving order, without handing them out."""
        with self._lock:
            saved = dict(self._cursor)
            try:
                self._cursor = dict.fromkeys(CLASSES, 0)
                out: list[OutboxMessage] = []
                for c in CLASSES:
                    out += self._select(c, n)
                return out[:n] if n >= 0 else out
            finally:
                self._cursor = saved

    async def next_batch(self, limit: int) -> list[OutboxMessage]:
        """`take` in a worker thread."""
        return await asyncio.to_thread(self._in_thread, self.take, limit)

    async def batches(self, limit: int = 100, idle_s: float = 1.0) -> AsyncIterator[list[OutboxMessage]]:
        """Batches forever; waits (woken by `put`, or every `idle_s` real seconds) when nothing is due."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            self._wake.clear()
            batch = await self.next_batch(limit)
            if batch:
                yield batch
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle_s)

    def _notify(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            loop.call_soon_threadsafe(wake.set)

    def rewind(self) -> None:
        """Serve everything unacknowledged again from the oldest (call on every reconnect)."""
        with self._lock:
            self._cursor = dict.fromkeys(CLASSES, 0)
            self._inflight.clear()

    # -- acknowledging ---------------------------------------------------------------------------
    def ack(self, seqs: Sequence[int]) -> int:
        """Delete delivered messages (PUBACK received); return how many were still stored."""
        if not seqs:
            return 0
        with self._lock:
            if self._closed:
                raise RuntimeError("outbox is closed")
            by_cls: dict[Cls, list[int]] = {c: [] for c in CLASSES}
            unknown: list[int] = []
            for s in seqs:
                hit = self._inflight.get(s)
                if hit is None:
                    unknown.append(s)
                else:
                    by_cls[hit[0]].append(s)
            deleted = 0
            saved = (self._bytes, dict(self._bytes_cls), dict(self._pending))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for c in CLASSES:
                    if unknown:  # not handed out by this process (after a rewind or a restart): find them
                        marks = ",".join("?" * len(unknown))
                        found = self._db.execute(f"SELECT seq FROM q_{c} WHERE seq IN ({marks})", unknown).fetchall()
                        by_cls[c] += [s for (s,) in found]
                    if not by_cls[c]:
                        continue
                    marks = ",".join("?" * len(by_cls[c]))
                    rows = self._db.execute(
                        f"DELETE FROM q_{c} WHERE seq IN ({marks}) RETURNING length(CAST(topic AS BLOB))"
                        " + length(CAST(msg_id AS BLOB)) + length(payload)", by_cls[c]).fetchall()
                    freed = sum(int(r[0]) + ROW_OVERHEAD_BYTES for r in rows)
                    self._bytes -= freed
                    self._bytes_cls[c] -= freed
                    self._pending[c] -= len(rows)
                    deleted += len(rows)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (SQLITE_FULL) has rolled back already
                    self._db.execute("ROLLBACK")
                self._bytes, self._bytes_cls, self._pending = saved   # nothing was deleted
                raise
            for s in seqs:
                self._inflight.pop(s, None)
            self._acked += deleted
        self._check_alarm()
        return deleted

    async def aack(self, seqs: Sequence[int]) -> int:
        return await asyncio.to_thread(self._in_thread, self.ack, seqs)

    # -- space -----------------------------------------------------------------------------------
    def _check_alarm(self) -> None:
        now = self.clock.monotonic()
        if now - self._disk_checked >= DISK_CHECK_S:
            self._disk_checked = now
            try:
                self._disk_free = shutil.disk_usage(self.path.parent).free
            except OSError:
                self._disk_free = None
        low_disk = self._disk_free is not None and self._disk_free < self.min_free_bytes
        # telemetry makes room by itself; the alarm is about what may never be dropped
        precious = self._precious_bytes()
        raise_it = low_disk or precious >= (ALARM_CLEAR_AT if self._alarm else ALARM_AT) * self.max_bytes
        if raise_it != self._alarm:
            self._alarm = raise_it
            st = self.stats()
            if raise_it:
                log.error("outbox space low: %d of %d bytes used, %s bytes free on disk", st.bytes_used,
                          st.max_bytes, st.disk_free_bytes)
            else:
                log.warning("outbox space alarm cleared: %d of %d bytes used", st.bytes_used, st.max_bytes)
            if self.on_alarm is not None:
                self.on_alarm(raise_it, st)

    @property
    def full(self) -> bool:
        """The hard cap: events and results fill `max_bytes`, or the disk is down to its reserve.

        New commands are refused then (their results would need room events cannot give up).
        """
        low_disk = self._disk_free is not None and self._disk_free < self.min_free_bytes // 2
        return self._precious_bytes() >= self.max_bytes or low_disk

    def _precious_bytes(self) -> int:
        """What may never be dropped: events and results."""
        return self._bytes_cls["event"] + self._bytes_cls["result"]

    @property
    def alarm(self) -> bool:
        return self._alarm

    def stats(self) -> OutboxStats:
        return OutboxStats(pending=dict(self._pending), inflight=len(self._inflight), bytes_used=self._bytes,
                           max_bytes=self.max_bytes, put=dict(self._put), acked=self._acked,
                           telemetry_thinned=self._thinned, telemetry_dropped=self._dropped, alarm=self._alarm,
                           disk_free_bytes=self._disk_free)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
