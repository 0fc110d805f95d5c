"""Storage faults never stop the school's control: a damaged database, a bad row, a full disk."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import pytest
from conftest import fill_filesystem, free_port, until
from test_daemon import school_config

from edge.core.arbiter import Source
from edge.core.config import Config
from edge.core.control import Ask
from edge.core.sqlite import check
from edge.core.store import StorageError, Store
from edge.daemon import Daemon
from simulator.app import VirtualSchool


def _events(daemon: Daemon, kind: str) -> list[dict[str, object]]:
    return [m for m in daemon.test_events if m["kind"] == kind]  # type: ignore[attr-defined]


def _record_events(daemon: Daemon) -> None:
    seen: list[dict[str, object]] = []
    daemon.test_events = seen  # type: ignore[attr-defined]
    publish = daemon.on_event

    def spy(kind: str, body: object) -> None:
        seen.append({"kind": kind, **body})  # type: ignore[dict-item]
        publish(kind, body)  # type: ignore[arg-type]

    daemon.on_event = spy  # type: ignore[method-assign]
    daemon.control.events = spy  # type: ignore[assignment]


def test_a_garbage_database_is_set_aside_and_a_fresh_one_used(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    db.write_bytes(os.urandom(8192))
    assert check(db) is not None
    store = Store(db)
    assert store.set_aside is not None
    assert store.set_aside.moved_to.exists()
    assert store.set_aside.moved_to.read_bytes()[:10] != b"SQLite for"
    store.put_state("ac-1", {"online": True})
    store.close()
    assert check(db) is None
    assert Store(db).states == {"ac-1": {"online": True}}


def test_bad_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.put_state("ac-1", {"online": True})
    store.save_request("ac-1", "TEACHER", {"power_on": True}, None, "T1", 0.0)
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("INSERT INTO device_state VALUES ('ac-2', '{not json', 0)")
    db.execute("INSERT INTO device_state VALUES ('ac-3', '[1, 2]', 0)")
    db.execute("INSERT INTO requests VALUES ('ac-1', 'FACILITY', 'nope', NULL, 'F', 0)")
    db.commit()
    db.close()
    store = Store(tmp_path / "state.db")
    assert store.states == {"ac-1": {"online": True}}
    assert [r[1] for r in store.load_requests()] == ["TEACHER"]
    assert store.bad_rows == 3
    store.close()


async def test_the_daemon_starts_on_garbage_databases(tmp_path: Path) -> None:
    cfg = school_config(tmp_path, free_port())
    os.makedirs(cfg.storage.path)
    with open(os.path.join(cfg.storage.path, "state.db"), "wb") as f:  # noqa: ASYNC230 - test set-up
        f.write(b"this is not a database" * 100)
    daemon = Daemon(cfg, status_port=0)
    _record_events(daemon)
    async with VirtualSchool(cfg) as school, daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        got = _events(daemon, "storage")
        assert got[0]["action"] == "set_aside"
        assert await asyncio.to_thread(os.path.exists, str(got[0]["moved_to"]))
        out = await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.LOCAL, "local:test"))
        assert out.ok
        assert school.ac("ac-101a").power_on is True


async def test_a_full_disk_is_an_alarm_not_an_exit(tmp_path: Path, small_fs: Path | None) -> None:
    base = school_config(tmp_path, free_port())
    storage = small_fs if small_fs is not None else tmp_path / "state"
    cfg = Config.model_validate({**base.model_dump(mode="json", exclude_none=True), "storage": {"path": str(storage)}})
    daemon = Daemon(cfg, status_port=0)
    _record_events(daemon)
    async with VirtualSchool(cfg) as school, daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        daemon.store.flush()
        if small_fs is not None:
            filler = fill_filesystem(small_fs)
        else:  # SQLite's own limit stands in for the filesystem
            pages = daemon.store._db.execute("PRAGMA page_count").fetchone()[0]
            daemon.store._db.execute(f"PRAGMA max_page_count = {pages}")
        # control goes on: a local command is applied and verified; persisting it failed and is reported
        big = {f"x{i}": "y" * 200 for i in range(50)}
        for i in range(20):
            daemon.store.put_state(f"filler-{i}", big)
        assert daemon.store.flush() == 0
        out = await daemon.control.ask(Ask("ac-101a", {"power_on": True, "setpoint_c": 27}, Source.LOCAL, "local:t"))
        assert out.ok, out
        assert school.ac("ac-101a").power_on is True
        assert daemon.store.pending()
        assert any(e["action"] == "write_failed" for e in _events(daemon, "storage"))
        # a document must be durable before it is answered: it raises rather than pretending
        with pytest.raises(StorageError):
            daemon.store.set("cloud/alarm", json.dumps({"levels": []}))
        # the loops are all alive
        await asyncio.sleep(0.5)
        running = {t.get_name() for t in daemon._bg if not t.done()}
        assert {"arbiter", "store-flush"} <= running
        # room again: what was kept in memory reaches the disk
        if small_fs is not None:
            filler.unlink()
        else:
            daemon.store._db.execute("PRAGMA max_page_count = 1073741823")
        for i in range(20):
            daemon.store.states.pop(f"filler-{i}", None)
            daemon.store._dirty.discard(f"filler-{i}")
        assert daemon.store.flush() > 0
        assert not daemon.store.pending()
    store = Store(storage / "state.db")
    assert any(r[0] == "ac-101a" and r[1] == "FACILITY" for r in store.load_requests())
    store.close()


def test_a_fresh_journal_after_damage_refuses_older_tokens(tmp_path: Path) -> None:
    from cloud_sync.journal import CommandJournal
    from edge.core.clock import ManualClock

    clock = ManualClock(1_000_000.0)
    db = tmp_path / "commands.db"
    db.write_bytes(os.urandom(4096))
    journal = CommandJournal(db, clock)
    assert journal.set_aside is not None
    assert journal.iat_floor == 1_000_000.0
    journal.close()
    clock.advance(10)
    again = CommandJournal(db, clock)   # the floor is remembered across restarts
    assert again.set_aside is None
    assert again.iat_floor == 1_000_000.0
    again.close()
    fresh = CommandJournal(tmp_path / "new.db", clock)   # a new install has no floor
    assert fresh.iat_floor == float("-inf")
    fresh.close()


async def test_the_daemon_starts_with_garbage_cloud_databases(tmp_path: Path) -> None:
    import time as _time

    from mqtt_broker import Broker, small_school
    from test_cloud_e2e import asyncapi_validator

    from cloud_sync.keys import generate_keypair

    broker = Broker.start(tmp_path / "broker")
    try:
        generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
        data = small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port, pub_key=tmp_path / "k.pub")
        cfg = Config.model_validate(data)
        os.makedirs(cfg.storage.path)
        for name in ("state.db", "outbox.db", "commands.db"):
            with open(os.path.join(cfg.storage.path, name), "wb") as f:  # noqa: ASYNC230 - test set-up
                f.write(b"\x00garbage" * 512)
        daemon = Daemon(cfg, status_port=0)
        _record_events(daemon)
        t0 = _time.time()
        async with VirtualSchool(cfg), daemon:
            await until(lambda: daemon.cloud.connected, what="the cloud link")
            aside = {e["database"] for e in _events(daemon, "storage") if e["action"] == "set_aside"}
            assert aside == {"state.db", "outbox.db", "commands.db"}
            validator = asyncapi_validator("StorageEvent")
            for e in _events(daemon, "storage"):
                body = {"id": "x", "ts": "2026-06-16T10:00:00.000+08:00", **e}
                assert not [err.message for err in validator.iter_errors(body)], body
            assert daemon.cloud.journal.iat_floor >= t0
    finally:
        broker.stop()
