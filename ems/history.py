"""Each room's history, one sample a minute, kept on the gateway for learning the room (ems.train).

The daemon appends a batch of samples (one per room) every minute; the trainer reads them back in a
separate process. History is for learning, never for control, so a storage fault costs a gap in it
and nothing else: a damaged file is set aside at open (as edge.core.sqlite does for every
database) and a write that fails (a full disk, a read-only card, a file damaged while running)
drops that batch, is logged and reported through `on_error` once per outage, and `add` answers
False. Nothing here raises into the daemon's control loop.

Rows are small because a Pi writes them to an SD card for months (40 rooms x 1440 a day): time in
whole seconds, temperatures in hundredths of a degree, power in watts, and rooms by a number.
Retention keeps `retention_days` (60 by default) and at most `max_mb` of live data, whichever is
less; pages freed by the oldest rows are reused, so the file stops growing.

Switch-on events are not stored: the trainer derives them from `units_on` going from 0 to more
(see ems.train), which needs no wiring from the control sources.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.core.sqlite import SetAside, prepare

log = logging.getLogger(__name__)

RETENTION_DAYS = 60
MAX_MB = 128.0
PRUNE_EVERY_S = 3600.0     # retention runs at most hourly, by the samples' own clock
RETRY_OPEN_S = 600.0       # after a failed open, try again this much later (sample time)
READ_CHUNK = 5000          # rows per locked read: the daemon's writes interleave with a long read

SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS samples (
    ts         INTEGER NOT NULL,  -- unix s
    room       INTEGER NOT NULL,  -- rooms.id
    temp_cc    INTEGER NOT NULL,  -- room temperature, 0.01 degC
    setpoint_cc INTEGER NOT NULL, -- 0.01 degC
    units_on   INTEGER NOT NULL,
    ac_w       INTEGER NOT NULL,  -- the room's AC electrical power (reported or estimated)
    occupied   INTEGER,           -- 1/0, NULL = unknown
    outdoor_cc INTEGER,           -- 0.01 degC, NULL = no outdoor sensor
    PRIMARY KEY (ts, room)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """One room at one moment."""

    ts: float
    room: str
    temp_c: float
    setpoint_c: float
    units_on: int
    ac_kw: float                      # reported by the units, or run state x rated power
    occupied: bool | None = None
    outdoor_c: float | None = None

    def __post_init__(self) -> None:
        where = f"history sample of room {self.room!r} at {self.ts}"
        if not self.room:
            raise ValueError(f"{where}: room is empty")
        for name in ("ts", "temp_c", "setpoint_c", "ac_kw"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{where}: {name} is {getattr(self, name)}, not a finite number")
        if self.outdoor_c is not None and not math.isfinite(self.outdoor_c):
            raise ValueError(f"{where}: outdoor_c is {self.outdoor_c}, not a finite number")
        if self.units_on < 0 or self.ac_kw < 0:
            raise ValueError(f"{where}: units_on ({self.units_on}) and ac_kw ({self.ac_kw}) must be >= 0")


def _cc(value: float) -> int:
    return round(value * 100)


def _opt_cc(value: float | None) -> int | None:
    return None if value is None else _cc(value)


class RoomHistory:
    """Per-room samples in SQLite (WAL): `add` from the daemon, `read` from the trainer."""

    def __init__(self, path: Path | str, *, retention_days: float = RETENTION_DAYS, max_mb: float = MAX_MB,
                 on_error: Callable[[str], None] | None = None, readonly: bool = False) -> None:
        if retention_days <= 0 or max_mb <= 0:
            raise ValueError(f"history {path}: retention_days ({retention_days}) and max_mb ({max_mb}) must be > 0")
        self.path = Path(path)
        self.retention_s = retention_days * 86400.0
        self.max_bytes = max_mb * 1024 * 1024
        self.on_error = on_error
        self.readonly = readonly
        self.set_aside: SetAside | None = None
        self.errors = 0                # failed opens, writes and reads
        self.dropped = 0               # samples lost to failed writes
        self._failing = False
        self._retry_at = -math.inf
        self._pruned_at = -math.inf
        self._room_ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._open()

    @property
    def available(self) -> bool:
        """Is the file open (a failed open is retried by the next `add`)?"""
        return self._db is not None

    # -- opening and failing ---------------------------------------------------------------------
    def _open(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            if self.readonly:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
                db.execute("SELECT 1 FROM samples LIMIT 1").fetchone()
            else:
                found = prepare(self.path)
                self.set_aside = found or self.set_aside
                db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # a power cut may lose the last batch: it is only history
                db.executescript(SCHEMA)
            self._room_ids = {str(name): int(i) for i, name in db.execute("SELECT id, name FROM rooms")}
        except (OSError, sqlite3.Error) as exc:
            if db is not None:
                db.close()
            self._failed("opening", exc)
            return
        self._db = db

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        if self._failing:
            log.debug("room history %s: %s failed again: %s", self.path, what, exc)
            return
        self._failing = True
        log.error("room history %s: %s failed: %s (history is not kept until it works again)", self.path, what, exc)
        if self.on_error is not None:
            self.on_error(f"room history {what}: {exc}")

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("room history %s: writing again (%d samples were dropped)", self.path, self.dropped)

    def _drop_connection(self, now: float) -> None:
        """A damaged file: reopen through `prepare`, which sets it aside, at the next add."""
        if self._db is not None:
            try:
                with self._lock:
                    self._db.close()
            except sqlite3.Error:
                log.debug("room history %s: closing a damaged file failed", self.path)
        self._db = None
        self._retry_at = now

    # -- writing ---------------------------------------------------------------------------------
    def _room_id(self, db: sqlite3.Connection, room: str) -> int:
        rid = self._room_ids.get(room)
        if rid is None:
            db.execute("INSERT OR IGNORE INTO rooms (name) VALUES (?)", (room,))
            rid = int(db.execute("SELECT id FROM rooms WHERE name = ?", (room,)).fetchone()[0])
        return rid

    def add(self, samples: Iterable[Sample]) -> bool:
        """Append a batch; False (logged once per outage, never raised) when it could not be written."""
        batch = list(samples)
        if not batch:
            return True
        now = max(s.ts for s in batch)
        if self.readonly:
            raise ValueError(f"room history {self.path} was opened read-only: add() is for the daemon")
        if self._db is None:
            if now < self._retry_at:
                self.dropped += len(batch)
                return False
            self._retry_at = now + RETRY_OPEN_S
            self._open()
            if self._db is None:
                self.dropped += len(batch)
                return False
        db = self._db
        new_ids: dict[str, int] = {}
        try:
            with self._lock:
                db.execute("BEGIN")
                try:
                    rows = []
                    for s in batch:
                        rid = self._room_ids.get(s.room, new_ids.get(s.room))
                        if rid is None:
                            rid = new_ids[s.room] = self._room_id(db, s.room)
                        rows.append((round(s.ts), rid, _cc(s.temp_c), _cc(s.setpoint_c), s.units_on,
                                     round(s.ac_kw * 1000), None if s.occupied is None else int(s.occupied),
                                     _opt_cc(s.outdoor_c)))
                    db.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:  # a failed COMMIT (SQLITE_FULL) has rolled back already
                        db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self.dropped += len(batch)
            self._failed("writing", exc)
            if not isinstance(exc, sqlite3.OperationalError):  # malformed / not a database: set it aside
                self._drop_connection(now)
            return False
        self._room_ids.update(new_ids)
        self._recovered()
        if now >= self._pruned_at + PRUNE_EVERY_S:
            self.prune(now)
        return True

    def prune(self, now: float) -> int:
        """Delete samples older than the retention, then the oldest until the live data fits max_mb."""
        db = self._db
        if db is None or self.readonly:
            return 0
        self._pruned_at = now
        deleted = 0
        try:
            with self._lock:
                deleted += db.execute("DELETE FROM samples WHERE ts < ?", (round(now - self.retention_s),)).rowcount
                for _ in range(5):  # each pass aims at 90 % of the cap (rows are alike): one pass mostly
                    page, pages, free = (int(db.execute(f"PRAGMA {p}").fetchone()[0])
                                         for p in ("page_size", "page_count", "freelist_count"))
                    used = (pages - free) * page
                    if used <= self.max_bytes:
                        break
                    lo, hi = db.execute("SELECT min(ts), max(ts) FROM samples").fetchone()
                    if lo is None or lo >= hi:
                        break
                    share = min(0.9, max(0.02, 1 - 0.9 * self.max_bytes / used))
                    cut = lo + max(1, math.ceil((hi - lo) * share))
                    deleted += db.execute("DELETE FROM samples WHERE ts < ?", (cut,)).rowcount
        except sqlite3.Error as exc:
            self._failed("pruning", exc)
            if not isinstance(exc, sqlite3.OperationalError):
                self._drop_connection(now)
        return deleted

    # -- reading ---------------------------------------------------------------------------------
    def read(self, since: float | None = None, until: float | None = None,
             rooms: Iterable[str] | None = None) -> Iterator[Sample]:
        """Samples with since <= ts < until by time (rooms in the order first recorded); a read error ends it."""
        db = self._db
        if db is None:
            return
        try:
            yield from self._read(db, since, until, rooms)
        except sqlite3.Error as exc:
            self._failed("reading", exc)

    def _read(self, db: sqlite3.Connection, since: float | None, until: float | None,
              rooms: Iterable[str] | None) -> Iterator[Sample]:
        with self._lock:
            names = {int(i): str(n) for i, n in db.execute("SELECT id, name FROM rooms")}
        where = ["(ts > ? OR (ts = ? AND room > ?))"]
        args: list[object] = []
        if until is not None:
            where.append("ts < ?")
            args.append(math.ceil(until))
        if rooms is not None:
            wanted = [i for i, n in names.items() if n in set(rooms)]
            if not wanted:
                return
            where.append(f"room IN ({','.join('?' * len(wanted))})")
            args += wanted
        sql = f"SELECT * FROM samples WHERE {' AND '.join(where)} ORDER BY ts, room LIMIT {READ_CHUNK}"
        last_ts, last_room = (math.ceil(since) - 1 if since is not None else -(2**62)), 2**62
        while True:
            with self._lock:
                chunk = db.execute(sql, [last_ts, last_ts, last_room, *args]).fetchall()
            for ts, rid, temp, sp, on, ac_w, occ, out in chunk:
                yield Sample(float(ts), names.get(rid, f"#{rid}"), temp / 100, sp / 100, on, ac_w / 1000,
                             None if occ is None else bool(occ), None if out is None else out / 100)
            if len(chunk) < READ_CHUNK:
                return
            last_ts, last_room = chunk[-1][0], chunk[-1][1]

    def span(self) -> tuple[float, float] | None:
        """(oldest, newest) sample time, or None when there is none (or the file is unavailable)."""
        if self._db is None:
            return None
        try:
            with self._lock:
                lo, hi = self._db.execute("SELECT min(ts), max(ts) FROM samples").fetchone()
        except sqlite3.Error as exc:
            self._failed("reading", exc)
            return None
        return None if lo is None else (float(lo), float(hi))

    def close(self) -> None:
        if self._db is not None:
            with self._lock:
                self._db.close()
            self._db = None
