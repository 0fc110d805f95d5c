"""Hostile input, the last few: a maximum inbound MQTT packet size (MQTT 5) and oversized commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import until
from helpers.app import claims, watching
from mqtt_broker import Broker
from test_cloud_session import site_config

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.link import MAX_INBOUND_PACKET_BYTES
from cloud_sync.topics import Topics
from edge.daemon import Daemon
from simulator.app import VirtualSchool


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    b = Broker.start(tmp_path / "broker")
    yield b  # type: ignore[misc]
    b.stop()


async def test_an_oversized_packet_never_reaches_the_gateway(tmp_path: Path, broker: Broker) -> None:
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    key = load_private_key(tmp_path / "k.pem")
    cfg = site_config(tmp_path, broker.port, tmp_path / "k.pub", protocol="5")
    topics = Topics.for_config(cfg)
    async with VirtualSchool(cfg), watching(broker.port, topics) as app, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: daemon.cloud.connected, what="the link")
        await app.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
        received = daemon.cloud.link.counters.as_dict()
        # 1 MiB: the broker does not send it to a client that asked for at most 256 KiB
        await app.send(b"x" * (1024 * 1024))
        # 20 KiB: delivered, and answered bad_request (commands are at most 16 KiB)
        await app.send(b"y" * (20 * 1024))
        bad = await app.wait_for(lambda t, b, _r: t == topics.cmd_result and isinstance(b, dict)
                                 and b.get("code") == "bad_request")
        assert bad.body["id"] is None
        assert "at most" in bad.body["message"]
        good = claims(target="ac-301a", params={"power_on": True})
        await app.send(sign_command(key, good))
        assert (await app.result(good["jti"]))["status"] == "ok"
        got = [b for t, b, _r in app.messages if t == topics.cmd_result]
        assert len(got) == 2   # the megabyte was never delivered: no answer, no memory spent on it
        assert daemon.cloud.link.counters.as_dict() != received
        assert MAX_INBOUND_PACKET_BYTES < 1024 * 1024
