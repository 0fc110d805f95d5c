"""The state store: the latest STATE of every device in memory, persisted to SQLite.

Readings change many times a second at a big school, and a Pi runs from an SD card, so states
are written in batches (only the rows that changed since the last flush) rather than per
reading. Arbiter requests are few and matter across restarts: they are written at once.

Storage faults never stop the school's control. A damaged database is set aside at start and a
fresh one created (`set_aside` says what); a row that does not parse is skipped and counted. A
write that fails (a full disk) keeps the state and the requests in memory, retries them at the
next flush and reports through `on_error`; only `set` (a document that must be durable before it
is answered `ok`) raises `StorageError` to its caller.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edge.core.sqlite import SetAside, prepare

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    device_id TEXT PRIMARY KEY,
    state     TEXT NOT NULL,
    ts        REAL NOT NULL  -- when the row was written (unix s)
);
CREATE TABLE IF NOT EXISTS requests (
    actuator  TEXT NOT NULL,
    source    TEXT NOT NULL,
    fields    TEXT NOT NULL,
    expires   REAL,
    requester TEXT,
    ts        REAL NOT NULL,
    PRIMARY KEY (actuator, source)
);
CREATE TABLE IF NOT EXISTS kv (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class StorageError(OSError):
    """A write that must be durable before it is answered failed (the disk is full or failing)."""


def _obj(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class Store:
    """SQLite (WAL) behind a lock: callers are the event loop and, rarely, worker threads."""

    def __init__(self, path: Path | str, on_error: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.set_aside: SetAside | None = None
        self.bad_rows = 0
        self.write_errors = 0
        self.on_error = on_error
        if str(path) == ":memory:":
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self.set_aside = prepare(self.path)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        self.states: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        self._unsaved: dict[tuple[str, str], tuple[Any, ...] | None] = {}   # request rows a failed write left
        for dev, state in self._db.execute("SELECT device_id, state FROM device_state"):
            try:
                self.states[dev] = _obj(state)
            except ValueError:
                self._bad_row("device_state", dev)

    def _bad_row(self, table: str, key: str) -> None:
        self.bad_rows += 1
        log.warning("state store: skipping an unreadable %s row (%s)", table, key)

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        log.error("state store: %s failed: %s (kept in memory, retried at the next flush)", what, exc)
        if self.on_error is not None:
            self.on_error(f"{what}: {exc}")

    # -- device states ---------------------------------------------------------------------------
    def put_state(self, device_id: str, state: Mapping[str, Any]) -> None:
        self.states[device_id] = dict(state)
        self._dirty.add(device_id)

    def flush(self) -> int:
        """Write the states changed since the last flush; return how many rows were written."""
        dirty, self._dirty = self._dirty, set()  # swap first: the loop may mark more while we write
        if not dirty:
            return 0
        rows = [(d, json.dumps(self.states[d], separators=(",", ":")), time.time()) for d in sorted(dirty)]
        unsaved, self._unsaved = self._unsaved, {}
        try:
            with self._lock:
                self._db.execute("BEGIN")
                try:
                    for (actuator, source), row in unsaved.items():
                        if row is None:
                            self._db.execute("DELETE FROM requests WHERE actuator = ? AND source = ?",
                                             (actuator, source))
                        else:
                            self._db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)", row)
                    self._db.executemany("INSERT OR REPLACE INTO device_state VALUES (?, ?, ?)", rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # a failed COMMIT (SQLITE_FULL) has rolled back already
                        self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            self._dirty |= dirty
            self._unsaved = {**unsaved, **self._unsaved}
            self._failed("flush", exc)
            return 0
        return len(rows)

    def pending(self) -> bool:
        """Anything not yet on disk (changed states, requests a failed write left)?"""
        return bool(self._dirty or self._unsaved)

    # -- arbiter requests ------------------------------------------------------------------------
    def save_request(self, actuator: str, source: str, fields: Mapping[str, Any], expires: float | None,
                     requester: str | None, ts: float) -> None:
        row = (actuator, source, json.dumps(dict(fields)), expires, requester, ts)
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)", row)
        except sqlite3.Error as exc:
            self._unsaved[(actuator, source)] = row
            self._failed(f"saving the request of {source} on {actuator}", exc)
        else:
            self._unsaved.pop((actuator, source), None)

    def delete_request(self, actuator: str, source: str) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM requests WHERE actuator = ? AND source = ?", (actuator, source))
        except sqlite3.Error as exc:
            self._unsaved[(actuator, source)] = None
            self._failed(f"deleting the request of {source} on {actuator}", exc)
        else:
            self._unsaved.pop((actuator, source), None)

    def load_requests(self) -> Iterable[tuple[str, str, dict[str, Any], float | None, str | None, float]]:
        with self._lock:
            rows = self._db.execute("SELECT actuator, source, fields, expires, requester, ts FROM requests").fetchall()
        out = []
        for a, s, f, e, r, t in rows:
            try:
                out.append((a, s, _obj(f), e, r, t))
            except ValueError:
                self._bad_row("requests", f"{a}/{s}")
        return out

    # -- small values ----------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        """Store a document durably (fsynced); raise StorageError when it could not be (never answer ok then)."""
        try:
            with self._lock:
                # FULL for this commit: the document is on the card before its command is marked applied
                # (the command journal commits with FULL too), so a power cut never loses an answered one
                self._db.execute("PRAGMA synchronous=FULL")
                try:
                    self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))
                finally:
                    self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            self._failed(f"storing {key}", exc)
            raise StorageError(f"{key} could not be stored: {exc}") from exc

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
