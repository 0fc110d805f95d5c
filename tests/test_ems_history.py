"""The room history: append and read back, retention and size cap, and storage faults that never raise."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import fill_filesystem

from edge.core.sqlite import check
from ems import history as history_mod
from ems.history import RoomHistory, Sample

DAY = 86400.0
T0 = 1_781_000_000.0


def sample(ts: float, room: str = "101", temp_c: float = 27.5, **kw: object) -> Sample:
    fields: dict[str, object] = {"setpoint_c": 26.0, "units_on": 1, "ac_kw": 1.2, "occupied": True,
                                 "outdoor_c": None, **kw}
    return Sample(ts, room, temp_c, **fields)  # type: ignore[arg-type]


def minutes(n: int, rooms: tuple[str, ...] = ("101", "102"), start: float = T0) -> list[Sample]:
    return [sample(start + 60 * i, room, 26.0 + i / 100) for i in range(n) for room in rooms]


def test_samples_come_back_in_time_order_with_their_fields(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db")
    assert h.add([sample(T0 + 60, "102", 28.25, units_on=0, ac_kw=0.0, occupied=None, outdoor_c=31.57),
                  sample(T0, "101", 27.13, setpoint_c=27.5, units_on=2, ac_kw=3.412, occupied=False)])
    assert h.add([sample(T0 + 60, "101", 27.0)])
    got = list(h.read())
    assert [(s.ts, s.room) for s in got] == [(T0, "101"), (T0 + 60, "102"), (T0 + 60, "101")]  # "102" came first
    assert got[0] == Sample(T0, "101", 27.13, 27.5, 2, 3.412, False, None)
    assert got[1] == Sample(T0 + 60, "102", 28.25, 26.0, 0, 0.0, None, 31.57)
    assert h.span() == (T0, T0 + 60)
    h.close()


def test_rooms_keep_their_names_across_a_reopen(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db")
    assert h.add([sample(T0, "三年二班")])
    h.close()
    h = RoomHistory(tmp_path / "history.db")
    assert h.add([sample(T0 + 60, "101"), sample(T0 + 60, "三年二班")])
    assert [(s.ts, s.room) for s in h.read()] == [(T0, "三年二班"), (T0 + 60, "三年二班"), (T0 + 60, "101")]
    h.close()


def test_read_filters_by_time_and_room(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db")
    assert h.add(minutes(10, ("101", "102", "103")))
    assert [s.ts for s in h.read(since=T0 + 120, until=T0 + 300, rooms=["102"])] == [T0 + 120, T0 + 180, T0 + 240]
    assert len(list(h.read(since=T0 + 120))) == 8 * 3            # since is inclusive
    assert len(list(h.read(until=T0 + 120))) == 2 * 3            # until is exclusive
    assert {s.room for s in h.read(rooms=["101", "103"])} == {"101", "103"}
    assert list(h.read(rooms=["nowhere"])) == []
    h.close()


def test_a_long_read_comes_in_chunks_without_losing_or_repeating_a_row(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history_mod, "READ_CHUNK", 7)   # chunk edges fall between rooms of the same minute
    h = RoomHistory(tmp_path / "history.db")
    batch = minutes(20, ("101", "102", "103"))
    assert h.add(batch)
    got = [(s.ts, s.room) for s in h.read()]
    assert got == sorted((s.ts, s.room) for s in batch)   # rooms were first recorded in name order here
    tail = [(s.ts, s.room) for s in h.read(since=T0 + 300, rooms=["103"])]
    assert tail == [(T0 + 60 * i, "103") for i in range(5, 20)]
    h.close()


def test_retention_drops_samples_older_than_the_limit(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db", retention_days=60)
    assert h.add([sample(T0 + d * DAY) for d in range(70)])     # the add prunes by the newest sample
    days = [round((s.ts - T0) / DAY) for s in h.read()]
    assert days == list(range(9, 70))
    assert h.prune(T0 + 75 * DAY) == 6
    assert min(s.ts for s in h.read()) == T0 + 15 * DAY
    h.close()


def test_pruning_runs_hourly_by_the_samples_clock(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db", retention_days=1 / 48)   # half an hour
    assert h.add([sample(T0)])                                    # pruned at T0
    assert h.add([sample(T0 + 3000)])                             # T0 is too old, but the hour is not up
    assert len(list(h.read())) == 2
    assert h.add([sample(T0 + 3600)])                             # an hour on: pruned
    assert [s.ts for s in h.read()] == [T0 + 3000, T0 + 3600]
    h.close()


def test_the_size_cap_drops_the_oldest_first(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db")
    rooms = tuple(f"r{i}" for i in range(20))
    for hour in range(24):
        assert h.add(minutes(60, rooms, start=T0 + hour * 3600))
    h.max_bytes = 0.1 * 1024 * 1024
    full = h.span()
    assert full == (T0, T0 + 24 * 3600 - 60)
    h.prune(T0 + DAY)
    db = sqlite3.connect(tmp_path / "history.db")
    page, pages, free = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count", "freelist_count"))
    db.close()
    assert (pages - free) * page <= 0.1 * 1024 * 1024
    span = h.span()
    assert span is not None
    assert span[1] == full[1]                  # the newest are kept
    assert span[0] > T0 + 12 * 3600            # most of the day went
    h.close()


def test_a_damaged_file_is_set_aside_and_a_fresh_one_used(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(os.urandom(16384))
    assert check(path) is not None
    h = RoomHistory(path)
    assert h.set_aside is not None
    assert h.set_aside.moved_to.exists()
    assert h.available
    assert h.add([sample(T0)])
    assert [s.ts for s in h.read()] == [T0]
    h.close()
    assert check(path) is None


class Broken:
    """A connection whose file turned out damaged while the daemon ran."""

    in_transaction = False

    def execute(self, *_: object) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def executemany(self, *_: object) -> object:
        raise sqlite3.DatabaseError("database disk image is malformed")

    def close(self) -> None:
        pass


def test_a_file_damaged_while_running_is_reopened_not_raised(tmp_path: Path) -> None:
    errors: list[str] = []
    h = RoomHistory(tmp_path / "history.db", on_error=errors.append)
    assert h.add([sample(T0)])
    real = h._db
    h._db = Broken()  # type: ignore[assignment]
    assert not h.add([sample(T0 + 60)])
    assert not h.available                     # dropped: the next add reopens through prepare()
    assert real is not None
    real.close()
    assert h.add([sample(T0 + 120)])
    assert [s.ts for s in h.read()] == [T0, T0 + 120]
    assert len(errors) == 1
    assert h.dropped == 1
    h.close()


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write to (a read-only mount when running as root)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a read-only filesystem here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_read_only_folder_never_raises(readonly_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[str] = []
    with caplog.at_level(logging.ERROR, logger="ems.history"):
        h = RoomHistory(readonly_dir / "history.db", on_error=errors.append)
        assert not h.available
        assert not h.add([sample(T0)])
        assert not h.add([sample(T0 + 60)])                  # retried only after RETRY_OPEN_S
        assert not h.add([sample(T0 + history_mod.RETRY_OPEN_S + 60)])   # retried, fails again quietly
    assert list(h.read()) == []
    assert h.span() is None
    assert len(errors) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert h.dropped == 3
    h.close()


def test_an_open_is_retried_after_a_while_and_then_works(tmp_path: Path) -> None:
    blocker = tmp_path / "storage"
    blocker.write_text("a file where the storage folder should be")
    errors: list[str] = []
    h = RoomHistory(blocker / "history.db", on_error=errors.append)
    assert not h.available
    assert not h.add([sample(T0)])                                  # the first add retries the open...
    blocker.unlink()
    assert not h.add([sample(T0 + history_mod.RETRY_OPEN_S - 60)])  # ...and the next not before RETRY_OPEN_S
    assert not h.available
    assert h.add([sample(T0 + history_mod.RETRY_OPEN_S)])
    assert [s.ts for s in h.read()] == [T0 + history_mod.RETRY_OPEN_S]
    assert len(errors) == 1
    h.close()


def test_a_full_disk_drops_batches_and_recovers(small_fs: Path | None, caplog: pytest.LogCaptureFixture) -> None:
    if small_fs is None:
        pytest.skip("cannot mount a small filesystem here")
    errors: list[str] = []
    h = RoomHistory(small_fs / "history.db", on_error=errors.append)
    assert h.add(minutes(5))
    filler = fill_filesystem(small_fs)
    with caplog.at_level(logging.ERROR, logger="ems.history"):
        results = [h.add(minutes(200, start=T0 + 3600 * (i + 1))) for i in range(5)]
    assert not all(results)
    assert len(errors) == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    filler.unlink()
    assert h.add([sample(T0 + DAY)])
    assert max(s.ts for s in h.read()) == T0 + DAY
    h.close()


def test_bad_samples_are_refused_with_where() -> None:
    with pytest.raises(ValueError, match=r"room '101'.*temp_c is nan"):
        sample(T0, "101", float("nan"))
    with pytest.raises(ValueError, match="units_on"):
        sample(T0, units_on=-1)
    with pytest.raises(ValueError, match="outdoor_c"):
        sample(T0, outdoor_c=float("inf"))
    with pytest.raises(ValueError, match="room is empty"):
        sample(T0, "")


def test_a_read_only_history_is_for_reading(tmp_path: Path) -> None:
    h = RoomHistory(tmp_path / "history.db")
    assert h.add(minutes(3))
    reader = RoomHistory(tmp_path / "history.db", readonly=True)
    assert len(list(reader.read())) == 6
    assert h.add([sample(T0 + 600)])                       # the daemon writes on while the trainer reads
    assert len(list(reader.read())) == 7
    with pytest.raises(ValueError, match="read-only"):
        reader.add([sample(T0 + 660)])
    reader.close()
    h.close()
    missing = RoomHistory(tmp_path / "nothing.db", readonly=True)
    assert not missing.available
    assert not (tmp_path / "nothing.db").exists()
