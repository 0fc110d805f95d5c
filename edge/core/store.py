"""The state store: the latest STATE of every device in memory, persisted to SQLite.

Readings change many times a second at a big school, and a Pi runs from an SD card, so states
are written in batches (only the rows that changed since the last flush) rather than per
reading. Arbiter requests are few and matter across restarts: they are written at once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

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


class Store:
    """SQLite (WAL) behind a lock: callers are the event loop and, rarely, worker threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
        self.states: dict[str, dict[str, Any]] = {}
        self._dirty: set[str] = set()
        for dev, state in self._db.execute("SELECT device_id, state FROM device_state"):
            self.states[dev] = json.loads(state)

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
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO device_state VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")
        return len(rows)

    # -- arbiter requests ------------------------------------------------------------------------
    def save_request(self, actuator: str, source: str, fields: Mapping[str, Any], expires: float | None,
                     requester: str | None, ts: float) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                             (actuator, source, json.dumps(dict(fields)), expires, requester, ts))

    def delete_request(self, actuator: str, source: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM requests WHERE actuator = ? AND source = ?", (actuator, source))

    def load_requests(self) -> Iterable[tuple[str, str, dict[str, Any], float | None, str | None, float]]:
        with self._lock:
            rows = self._db.execute("SELECT actuator, source, fields, expires, requester, ts FROM requests").fetchall()
        return [(a, s, json.loads(f), e, r, t) for a, s, f, e, r, t in rows]

    # -- small values ----------------------------------------------------------------------------
    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()
