"""Fault injection with real processes: broker killed during activity, daemon SIGKILLed during the outage.

`campus-edge simulate` and `campus-edge run` are subprocesses; the app side is in this process.
Afterwards every event the daemon logged is delivered (de-duplicated by id) in order, and the command
sent before the outage was carried out once and is refused as a replay after the restart.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from conftest import free_port
from helpers.app import Watcher, watching
from helpers.sites import small_school
from mqtt_broker import Broker

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.config import load_config

pytestmark = pytest.mark.timeout(60)
CLI = [sys.executable, "-m", "edge.cli"]
WAIT_S = 15.0  # the app waits this long for a message (the children start slowly)
EVENT_LINE = re.compile(r"daemon: event (\w+) (\{.*\})$")


@asynccontextmanager
async def process(args: list[str], log: Path, ready: str = "READY") -> AsyncIterator[asyncio.subprocess.Process]:
    """A child in its own session; yields once it printed `ready`; killed (SIGKILL) and reaped at the end."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=err,
                                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{args} exited; see {log}")
                if line.startswith(ready.encode()):
                    break
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its whole session: the simulator's socat too
        await proc.wait()


def logged_events(log: Path) -> list[tuple[str, str, str]]:
    out = []
    for line in log.read_text().splitlines():
        m = EVENT_LINE.search(line)
        if m:
            body = ast.literal_eval(m.group(2))
            out.append((m.group(1), str(body.get("device")), str(body.get("code"))))
    return out


async def ctl(*args: str) -> tuple[int, dict[str, Any] | None]:
    proc = await asyncio.create_subprocess_exec(*CLI, "ctl", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, _err = await proc.communicate()
    assert proc.returncode is not None
    text = out.decode().strip()
    return proc.returncode, json.loads(text) if text else None


async def test_broker_killed_and_daemon_sigkilled_during_outage(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "cloud.pem", tmp_path / "cloud.pub")
    broker = Broker(tmp_path / "mosquitto")
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(yaml.safe_dump(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                                    pub_key=tmp_path / "cloud.pub")))
    topics = Topics.for_config(load_config(cfg_path))
    app = Watcher(None, topics)  # one record of what the app saw, across both sessions
    sim_log, gw_log = tmp_path / "simulate.log", tmp_path / "daemon.log"
    simulate = [*CLI, "simulate", "--config", str(cfg_path)]
    run = [*CLI, "run", "--config", str(cfg_path), "--status-port", "0"]
    key_args = ["--key", str(tmp_path / "cloud.pem"), "--config", str(cfg_path), "--wait", "10"]
    try:
        broker.restart()
        async with watching(broker.port, topics, watcher=app), process(simulate, sim_log) as sim, process(run, gw_log):
            await app.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True, WAIT_S)
            await app.wait_for(lambda t, b, _r: t == topics.state("relay-1") and b.get("online") is True, WAIT_S)
            rc, res = await ctl("ac", "ac-301a", "--on", "--setpoint", "26", *key_args)
            assert rc == 0, res
            assert res is not None
            jti = res["id"]
            rc, bad = await ctl("ac", "ac-302a", "--setpoint", "18", *key_args)
            assert rc == 1
            assert bad is not None
            assert bad["code"] == "out_of_range"
            # the outage: broker gone, then the devices (events pile up in the outbox), then the daemon
            broker.stop()
            sim.send_signal(signal.SIGTERM)
            await sim.wait()
            deadline = time.monotonic() + 15
            while not {"ac-301a", "meter-main", "relay-1"} <= {d for _k, d, c in logged_events(gw_log)
                                                                if c == "offline"}:
                assert time.monotonic() < deadline, logged_events(gw_log)
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the outage goes on a little; the pump stores what the bus holds
        before = logged_events(gw_log)
        broker.restart()
        mark = len(app.messages)
        async with watching(broker.port, topics, watcher=app), process(simulate, sim_log), process(run, gw_log):
            await app.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True, WAIT_S, mark)
            await app.wait_for(lambda t, b, _r: t == topics.state("relay-1") and b.get("online") is True, WAIT_S,
                               mark)
            expected = logged_events(gw_log)
            assert len(expected) > len(before)
            # the outage's offline events and the restart's online events all arrive
            await app.wait_for(lambda t, b, _r: sum(1 for _ in unique_events(app)) >= len(logged_events(gw_log)), 20)
            # the command before the crash was applied once; its token is now a replay
            token = sign_command(load_private_key(tmp_path / "cloud.pem"), {
                "jti": jti, "iat": int(time.time()), "exp": int(time.time()) + 60, "aud": "014601/gw-t",
                "sub": "ctl", "role": "facility", "action": "ac.set", "target": "ac-301a",
                "params": {"power_on": True}})
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="replayer") as c:
                await c.publish(topics.cmd, token, qos=1)
            _, replay, _ = await app.wait_for(lambda t, b, _r: t == topics.cmd_result and b.get("code") == "replayed",
                                              WAIT_S)
            assert (replay["id"], replay["replay_of"]) == (None, jti)  # the jti's own result stays the answer
        expected = logged_events(gw_log)
        got = [(b["kind"], str(b.get("device")), str(b.get("code"))) for b in unique_events(app)]
        assert got == expected
        executed = [ln for ln in gw_log.read_text().splitlines() if f"command {jti}:" in ln]
        assert len(executed) == 1, executed
        results = {b["id"] for t, b, _r in app.messages if t == topics.cmd_result and b.get("code") == "ok"}
        assert jti in results
    finally:
        broker.stop()


def unique_events(app: Watcher) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for t, b, _r in app.messages:
        if app.topics.kind_of(t) == "event" and isinstance(b, dict) and b["id"] not in seen:
            seen.add(b["id"])
            out.append(b)
    return out
