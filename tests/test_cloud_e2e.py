"""End to end on a real broker: the virtual school and the daemon in-process, commands signed like the app."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import free_port
from mqtt_broker import Broker, small_school

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.config import Config
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker.start(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "cloud.pem", d / "cloud.pub")
    return d / "cloud.pem", d / "cloud.pub"


class Watcher:
    """An app-side client: subscribed to P/#, keeps every message, waits for the ones a test expects."""

    def __init__(self, client: aiomqtt.Client, topics: Topics) -> None:
        self.client, self.topics = client, topics
        self.messages: list[tuple[str, Any, bool]] = []
        self._new = asyncio.Event()

    async def run(self) -> None:
        async for m in self.client.messages:
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            self.messages.append((str(m.topic), body, m.retain))
            self._new.set()

    async def wait_for(self, pred: Any, within_s: float = 10.0) -> tuple[str, Any, bool]:
        async with asyncio.timeout(within_s):
            while True:
                for msg in self.messages:
                    if pred(*msg):
                        return msg
                self._new.clear()
                await self._new.wait()

    async def result(self, jti: str | None, within_s: float = 10.0) -> dict[str, Any]:
        _, body, _ = await self.wait_for(lambda t, b, _r: t == self.topics.cmd_result and isinstance(b, dict)
                                         and b.get("id") == jti, within_s)
        return dict(body)

    async def send(self, payload: str | bytes) -> None:
        await self.client.publish(self.topics.cmd, payload, qos=1)


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"jti": uuid.uuid4().hex, "iat": now, "exp": now + 60, "aud": "014601/gw-t", "sub": "F001",
            "role": "facility", "action": "ac.set", "target": "ac-301a", "params": {"power_on": True}}
    base.update(over)
    return base


@pytest.fixture
async def site(tmp_path: Path, broker: Broker, keys: tuple[Path, Path]) -> AsyncIterator[
        tuple[VirtualSchool, Daemon, Watcher]]:
    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                             pub_key=keys[1]))
    topics = Topics.for_config(cfg)
    async with VirtualSchool(cfg, speed=1) as school, \
            aiomqtt.Client("127.0.0.1", broker.port, identifier=f"app-{uuid.uuid4().hex[:8]}") as app:
        await app.subscribe(topics.all, qos=1)
        watcher = Watcher(app, topics)
        reader = asyncio.create_task(watcher.run(), name="test-watcher")
        try:
            async with Daemon(cfg, status_port=0) as daemon:
                await watcher.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
                await watcher.wait_for(lambda t, b, _r: t == topics.state("ac-301a") and b.get("online") is True)
                await watcher.wait_for(lambda t, b, _r: t == topics.state("relay-1") and b.get("online") is True)
                yield school, daemon, watcher
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_signed_command_switches_the_ac_on(site: tuple[VirtualSchool, Daemon, Watcher],
                                                 keys: tuple[Path, Path]) -> None:
    school, daemon, w = site
    assert school.ac("ac-301a").power_on is False
    key = load_private_key(keys[0])
    c = claims(params={"power_on": True, "setpoint_c": 27, "mode": "cool"})
    await w.send(sign_command(key, c))
    res = await w.result(c["jti"])
    assert res["status"] == "ok", res
    assert res["code"] == "ok"
    assert res["state"]["power_on"] is True
    assert res["state"]["setpoint_c"] == 27
    assert school.ac("ac-301a").power_on is True
    assert school.ac("ac-301a").setpoint_c == 27
    _, st, retained = await w.wait_for(lambda t, b, _r: t == w.topics.state("ac-301a") and b.get("power_on") is True)
    assert st["setpoint_c"] == 27
    assert daemon.cloud.stats()["results"] >= 1
    del retained
