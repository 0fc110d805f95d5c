"""The command journal: replay memory and crash recovery for signed commands (CONTRACT.md section 3).

The journal protocol ("a restart between receipt and result neither loses the result nor applies
the command twice"), for the daemon:

    cmd = verifier.verify(payload)              # commit 1: jti journalled 'received'
    outcome = await daemon.command(...)         # the device is written
    journal.applied(cmd.id, result)             # commit 2: the result is durable in the journal
    outbox.put(P/cmd/result, result, "result", msg_id=cmd.id)   # commit 3 (synchronous=NORMAL)
    ... PUBACK of that result ...
    journal.delivered(cmd.id)                   # commit 4: 'answered'; pruned once the token has expired

The journal (synchronous=FULL) says `answered` only after the broker acknowledged the result: the
outbox commits with synchronous=NORMAL, so a power cut can lose its row, and the journal must not
claim an answer the outbox no longer holds.

At start-up, `journal.pending()` lists what a crash interrupted; `recovery_step` says what to do:
* `applied` (crash after commit 2): put the stored result in the outbox again (unless the outbox
  still holds it). Until its PUBACK it stays `applied`, so every restart offers it again; the
  result may go out twice with the same id and the cloud de-duplicates (at-least-once, as for
  events). No result is lost.
* `received` (crash between commits 1 and 2): the device may or may not have been written. The
  window that remains is here. Actions that set an absolute desired state (`ac.set`, `relay.set`,
  documents with versions) are re-applied if the token is still valid: the second application
  has the effect of the first. A door unlock is a pulse, not a state: it is answered `failed`
  (`write_failed`, "interrupted by a restart") and never repeated, as is anything expired.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge.core.clock import Clock, SystemClock
from edge.core.sqlite import SetAside, prepare

SKEW_S = 30.0               # clocks of the cloud and of a gateway (NTP, or a Pi without RTC) disagree this much
PRUNE_EVERY_S = 60.0        # how often answered, expired jtis are forgotten

# Re-applying one of these after a crash has the effect of applying it once (see the module docstring).
IDEMPOTENT_ACTIONS = frozenset({"ac.set", "relay.set", "alarm.set", "alarm.ack", "booking.put", "booking.delete",
                                "access.put", "usage.report"})   # never quota.topup: credit added twice

JournalState = Literal["received", "applied", "answered"]


@dataclass(frozen=True, slots=True)
class JournalEntry:
    jti: str
    state: JournalState
    exp: float
    command: Mapping[str, Any]           # the verified claims
    result: Mapping[str, Any] | None


class CommandJournal:
    """SQLite table of command ids with their state; also the replay memory (jti until expiry)."""

    def __init__(self, path: str | os.PathLike[str], clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        # a damaged journal is set aside (kept for diagnosis); see `iat_floor` for what that costs
        self.set_aside: SetAside | None = prepare(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: commands are few, and a replay window after a power cut is what this table prevents.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript("""
            CREATE TABLE IF NOT EXISTS command_journal (
                jti     TEXT PRIMARY KEY,
                exp     REAL NOT NULL,
                state   TEXT NOT NULL CHECK (state IN ('received', 'applied', 'answered')),
                command TEXT NOT NULL,
                result  TEXT,
                updated REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS journal_meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
        """)
        row = self._db.execute("SELECT value FROM journal_meta WHERE key = 'horizon'").fetchone()
        self._horizon = float(row[0]) if row else float("-inf")
        if self.set_aside is not None:
            # the replay memory is gone: every token issued before now may have been applied already
            self._db.execute("INSERT OR REPLACE INTO journal_meta VALUES ('iat_floor', ?)", (self.clock.time(),))
        row = self._db.execute("SELECT value FROM journal_meta WHERE key = 'iat_floor'").fetchone()
        self.iat_floor = float(row[0]) if row else float("-inf")
        self._pruned_at = float("-inf")

    @property
    def horizon(self) -> float:
        """The latest `exp` of a forgotten jti: tokens expiring at or before it are refused."""
        return self._horizon

    def begin(self, jti: str, exp: float, command: Mapping[str, Any]) -> bool:
        """Journal a command as received; False when the jti is already known (a replay)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO command_journal VALUES (?, ?, 'received', ?, NULL, ?)",
                                   (jti, exp, json.dumps(dict(command), separators=(",", ":")), self.clock.time()))
            return cur.rowcount == 1

    def seen(self, jti: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM command_journal WHERE jti = ?", (jti,)).fetchone() is not None

    def applied(self, jti: str, result: Mapping[str, Any]) -> None:
        """The command was carried out (or failed): its result is now durable."""
        self._move(jti, "applied", ("received",), json.dumps(dict(result), separators=(",", ":")))

    def answered(self, jti: str) -> None:
        """The result is known to have reached the broker (or the command needs no answer any more)."""
        self._move(jti, "answered", ("received", "applied"), None)

    def delivered(self, jti: str) -> bool:
        """The broker acknowledged a result published under `jti`: an `applied` command becomes answered.

        Anything else (an unknown id, a rejection's, a command already answered) is left alone: False.
        """
        with self._lock:
            cur = self._db.execute("UPDATE command_journal SET state = 'answered', updated = ?"
                                   " WHERE jti = ? AND state = 'applied'", (self.clock.time(), jti))
            return cur.rowcount == 1

    def _move(self, jti: str, state: JournalState, from_states: Sequence[str], result: str | None) -> None:
        marks = ",".join("?" * len(from_states))
        with self._lock:
            cur = self._db.execute(
                f"UPDATE command_journal SET state = ?, result = coalesce(?, result), updated = ?"
                f" WHERE jti = ? AND state IN ({marks})", (state, result, self.clock.time(), jti, *from_states))
            if cur.rowcount != 1:
                row = self._db.execute("SELECT state FROM command_journal WHERE jti = ?", (jti,)).fetchone()
                raise ValueError(f"command {jti!r} cannot become {state!r}: it is {row[0] if row else 'unknown'}")

    def pending(self) -> list[JournalEntry]:
        """Commands a crash left unanswered, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT jti, state, exp, command, result FROM command_journal"
                                    " WHERE state != 'answered' ORDER BY updated, rowid").fetchall()
        return [JournalEntry(j, s, e, json.loads(c), json.loads(r) if r else None) for j, s, e, c, r in rows]

    def prune(self, now: float, skew_s: float = SKEW_S) -> int:
        """Forget answered jtis whose token can no longer be valid; remember the horizon instead."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT max(exp), count(*) FROM command_journal"
                                       " WHERE state = 'answered' AND exp + ? < ?", (skew_s, now)).fetchone()
                if row[1]:
                    self._horizon = max(self._horizon, float(row[0]))
                    self._db.execute("INSERT OR REPLACE INTO journal_meta VALUES ('horizon', ?)", (self._horizon,))
                    self._db.execute("DELETE FROM command_journal WHERE state = 'answered' AND exp <= ?",
                                     (self._horizon,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (SQLITE_FULL) has rolled back already
                    self._db.execute("ROLLBACK")
                raise
            self._pruned_at = now
            return int(row[1])

    def maybe_prune(self, now: float, skew_s: float) -> None:
        if now - self._pruned_at >= PRUNE_EVERY_S or now < self._pruned_at:
            self.prune(now, skew_s)

    def close(self) -> None:
        with self._lock:
            self._db.close()


RecoveryStep = Literal["republish", "reapply", "fail"]


def recovery_step(entry: JournalEntry, now: float, skew_s: float = SKEW_S) -> RecoveryStep:
    """What to do at start-up with a command a crash left unanswered (see the module docstring)."""
    if entry.state == "applied":
        return "republish"
    if entry.command.get("action") in IDEMPOTENT_ACTIONS and now <= entry.exp + skew_s:
        return "reapply"
    return "fail"
