"""Opening a SQLite database that may have been damaged (an SD card after a power cut).

`prepare` runs `PRAGMA quick_check` on an existing file. A database that fails it (or is not
a database at all) is moved aside with a timestamp, kept for diagnosis, and a fresh one is
created: the gateway keeps controlling the school rather than exiting until someone logs in.
What was set aside is returned so that the caller can raise a `storage` event.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class SetAside:
    """A damaged database moved out of the way."""

    path: Path          # where it was
    moved_to: Path      # where it is now
    reason: str


def check(path: Path) -> str | None:
    """None when `path` is a sound SQLite database (or does not exist), else what is wrong."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return str(exc)
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    finally:
        db.close()
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    return "; ".join(problems[:3]) if problems else None


def set_aside(path: Path, reason: str, now: float | None = None) -> SetAside:
    """Move `path` (and its WAL and shared-memory files) to `path.damaged-YYYYmmddTHHMMSS`."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    path.rename(target)
    for suffix in SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    log.error("%s is damaged (%s): moved to %s, starting with an empty one", path, reason, target)
    return SetAside(path, target, reason)


def prepare(path: Path) -> SetAside | None:
    """Make `path` safe to open: its folder exists, and a damaged file is set aside (see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    why = check(path)
    return None if why is None else set_aside(path, why)
