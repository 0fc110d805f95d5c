"""A full disk with the cloud link on: control goes on, no command is lost, everything resumes by itself.

The reported failure: with `storage.path` on a small filesystem filled up, one `ac.set` ended the
process with `sqlite3.OperationalError: database or disk is full`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest
from conftest import fill_filesystem, free_port, until
from helpers.app import claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker
from test_storage_faults import _events, _record_events

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.core.arbiter import Source
from edge.core.config import Config
from edge.core.control import Ask
from edge.daemon import Daemon
from simulator.app import VirtualSchool


async def test_a_full_disk_with_the_cloud_on(tmp_path: Path, small_fs: Path | None) -> None:
    if small_fs is None:
        pytest.skip("this test needs a small filesystem of its own (tmpfs mount)")
    broker = Broker.start(tmp_path / "broker")
    try:
        generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
        key = load_private_key(tmp_path / "k.pem")
        data = small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port, pub_key=tmp_path / "k.pub",
                            storage=small_fs)
        data["storage"] = {"path": str(small_fs), "reserve_mb": 0.05}
        cfg = Config.model_validate(data)
        daemon = Daemon(cfg, status_port=0)
        _record_events(daemon)
        topics = Topics.for_config(cfg)
        async with VirtualSchool(cfg) as school, daemon, watching(broker.port, topics) as app:
            await until(lambda: daemon.cloud.connected and all(
                s.get("online") for s in daemon.states.values()), 15, what="connected, devices online")
            c = claims(target="ac-301a", params={"power_on": True, "setpoint_c": 27})
            await app.send(sign_command(key, c))
            assert (await app.result(c["jti"]))["status"] == "ok"
            filler = await asyncio.to_thread(fill_filesystem, small_fs)
            # a command now: journalling it fails, it is left with the broker (or answered storage_full)
            c2 = claims(target="ac-302a", params={"power_on": True, "setpoint_c": 26})
            await app.send(sign_command(key, c2))
            with contextlib.suppress(TimeoutError):
                early = await app.result(c2["jti"], within_s=3)
                assert (early["status"], early["code"]) == ("failed", "storage_full"), early
            # the school's control goes on: a local request is applied and verified
            out = await daemon.control.ask(Ask("ac-301b", {"power_on": True}, Source.LOCAL, "local:test"))
            assert out.ok, out
            assert school.ac("ac-301b").power_on is True
            # events keep coming (kept in memory) and the failures are reported, not fatal
            school.set_fault("meter-main", "silent")
            await until(lambda: daemon.states["meter-main"]["online"] is False, 15, what="meter offline")
            await asyncio.sleep(1)
            assert any(e["kind"] in ("fault", "storage") and e.get("code", e.get("action")) in
                       ("storage_full", "write_failed", "service_restarted") for e in daemon.test_events), \
                daemon.test_events
            running = {t.get_name() for t in daemon.cloud._tasks if not t.done()}
            assert {"cloud-link", "cloud-events"} <= running
            school.set_fault("meter-main", None)
            # room again: the command comes back from the broker and is carried out; the events go out
            await asyncio.to_thread(os.unlink, filler)
            res = await app.result(c2["jti"], within_s=30)
            if res["code"] != "storage_full":
                assert res["status"] == "ok", res
                assert school.ac("ac-302a").power_on is True
            await app.wait_for(lambda t, b, _r: t == topics.event("fault") and b.get("device") == "meter-main"
                               and b.get("code") == "offline", within_s=30)
        assert not [e for e in _events(daemon, "storage") if e.get("action") == "set_aside"]
    finally:
        broker.stop()
