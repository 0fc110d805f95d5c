"""Telemetry end to end: the virtual school, the daemon in-process, a private broker and VictoriaMetrics.

What lands in VictoriaMetrics is compared with the simulator's physics: the AC's room temperature
with the room's air, the meter's power with the site's load, and an AC switched on by a signed
command appears as `ac_on` 0 then 1 at once (a flip is not held back by the 60 s AC sampling window).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, until
from helpers.app import claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker
from victoria import Victoria, binary

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.core.config import Config
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = [pytest.mark.timeout(30), pytest.mark.skipif(binary() is None, reason="victoria-metrics not installed")]

FLUSH_S = 0.5   # cloud.influx.flush_s: points are POSTed twice a second (10 s by default)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victoria]:
    v = Victoria(tmp_path_factory.mktemp("vm") / "data", free_port()).start()
    yield v
    v.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker.start(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


def site_config(tmp_path: Path, broker: Broker, vm: Victoria, pub_key: Path, gateway: str) -> Config:
    raw = small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port, pub_key=pub_key)
    raw["site"] = {"school_id": "014601", "gateway_id": gateway, "timezone": "Asia/Taipei"}
    cloud: dict[str, Any] = raw["cloud"]  # type: ignore[assignment]
    cloud["influx"] = {"url": vm.url, "org": "ntpc", "bucket": "campus", "flush_s": FLUSH_S}
    return Config.model_validate(raw)


def series(vm: Victoria, name: str, gateway: str, device: str) -> dict[str, Any] | None:
    got = vm.export(f'{name}{{gateway="{gateway}",device="{device}"}}')
    assert len(got) <= 1, got
    return got[0] if got else None


async def wait_series(vm: Victoria, name: str, gateway: str, device: str, last: float | None = None,
                      within_s: float = 10.0) -> dict[str, Any]:
    """The series once it exists (and its newest sample is `last`); queried off the loop: urllib blocks."""
    deadline = time.monotonic() + within_s
    while True:
        s = await asyncio.to_thread(series, vm, name, gateway, device)
        if s is not None and (last is None or s["values"][-1] == last):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} of {device}: {s}")
        await asyncio.sleep(0.2)


async def test_readings_reach_victoria_metrics_with_tags_and_the_simulators_values(
        tmp_path: Path, broker: Broker, vm: Victoria) -> None:
    generate_keypair(tmp_path / "cloud.pem", tmp_path / "cloud.pub")
    gateway = f"gw-{uuid.uuid4().hex[:6]}"   # series of other runs on this VictoriaMetrics stay apart
    cfg = site_config(tmp_path, broker, vm, tmp_path / "cloud.pub", gateway)
    topics = Topics.for_config(cfg)
    started = time.time()
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics, only=topics.cmd_result) as w, \
            Daemon(cfg, status_port=0) as daemon:
        assert daemon.telemetry is not None
        assert daemon.telemetry.flush_s == FLUSH_S
        temp = await wait_series(vm, "ac_room_temp_c", gateway, "ac-301a")
        # the meter's first STATE comes from its first register block, without power_w: its power
        # lands with the first 10 s sampling window that closes (the sampler's "first point now"
        # was spent on that partial one)
        power = await wait_series(vm, "meter_power_w", gateway, "meter-main", within_s=15)
        room_air_c, site_w = school.room_temp_c("301"), school.meter().power_w
        off = await wait_series(vm, "ac_on", gateway, "ac-301a")
        # 0 (and 0 again if a 60 s window closed meanwhile): the unit is off
        assert set(off["values"]) == {0}
        assert school.ac("ac-301a").setpoint_c != 27

        c = claims(aud=f"014601/{gateway}", params={"power_on": True, "setpoint_c": 27, "mode": "cool"})
        sent_at = time.time()
        await w.send(sign_command(load_private_key(tmp_path / "cloud.pem"), c))
        assert (await w.result(c["jti"]))["status"] == "ok"
        on = await wait_series(vm, "ac_on", gateway, "ac-301a", last=1)
        setpoint = await wait_series(vm, "ac_setpoint_c", gateway, "ac-301a", last=27)
        await until(lambda: not daemon.telemetry.stats().buffer["pending"], 5)
        stats = daemon.telemetry.stats()

    assert on["values"] == sorted(on["values"])   # off, then on: one flip
    flipped_at = on["timestamps"][on["values"].index(1)] / 1000
    assert sent_at - 1 <= flipped_at <= sent_at + 3   # the reading of the flip, written at once
    assert setpoint["values"][0] != 27
    assert on["timestamps"] == sorted(on["timestamps"])
    for s in (temp, power, on):
        for ts_ms in s["timestamps"]:
            assert started - 5 <= ts_ms / 1000 <= time.time() + 1, s
    assert temp["metric"] == {"__name__": "ac_room_temp_c", "school": "014601", "gateway": gateway,
                              "device": "ac-301a", "room": "301"}
    assert power["metric"] == {"__name__": "meter_power_w", "school": "014601", "gateway": gateway,
                               "device": "meter-main"}
    # the physics: the room's air as the unit's sensor reads it; the building's load as the meter sums it
    assert abs(temp["values"][0] - room_air_c) < 0.5, (temp["values"], room_air_c)
    assert 0 < power["values"][0] == pytest.approx(site_w, rel=0.1), (power["values"], site_w)
    assert stats.sent >= 4
    assert stats.rejected == 0
    assert stats.failures == 0
