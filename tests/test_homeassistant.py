"""Home Assistant over MQTT discovery, against a real private mosquitto and the virtual school: the
discovery documents, state topics, commands through the one way in (and the arbiter), availability."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import free_port, until
from helpers.sites import two_bus_school
from mqtt_broker import Broker

from edge.core.arbiter import Source
from edge.core.config import Config, ControlConfig, HomeAssistantConfig
from edge.core.control import Ask, Result
from edge.core.events import EventBus
from edge.core.model import Kind
from edge.daemon import Daemon
from edge.homeassistant import (
    BadCommand,
    Command,
    Entity,
    HomeAssistantService,
    Topics,
    discovery,
    entities,
    ha_state,
    parse_command,
)
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)
BASE = "campus-edge/gw-test"
CLIMATE = Entity("ac-1", "climate", Kind.AC, "AC 1")
SWITCH = Entity("light-1", "switch", Kind.LIGHT, "Light 1")
LOCK = Entity("door-1", "lock", Kind.DOOR, "Door 1")


# -- the pure parts ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("entity", "field", "payload", "want"), [
    (CLIMATE, "mode", b"off", Command("set", {"power_on": False})),
    (CLIMATE, "mode", b"cool", Command("set", {"power_on": True, "mode": "cool"})),
    (CLIMATE, "mode", b"fan_only", Command("set", {"power_on": True, "mode": "fan"})),
    (CLIMATE, "mode", b"auto", Command("set", {"power_on": True, "mode": "auto"})),
    (CLIMATE, "temperature", b"26.5", Command("set", {"setpoint_c": 26.5})),
    (CLIMATE, "temperature", b" 27 ", Command("set", {"setpoint_c": 27.0})),
    (CLIMATE, "fan_mode", b"high", Command("set", {"fan": "high"})),
    (CLIMATE, "power", b"ON", Command("set", {"power_on": True})),
    (CLIMATE, "power", b"OFF", Command("set", {"power_on": False})),
    (SWITCH, "on", b"ON", Command("set", {"on": True})),
    (SWITCH, "on", b"OFF", Command("set", {"on": False})),
    (LOCK, "lock", b"UNLOCK", Command("unlock", {})),
    (LOCK, "lock", b"LOCK", Command("lock", {})),
])
def test_home_assistant_words_become_our_requests(entity: Entity, field: str, payload: bytes, want: Command) -> None:
    assert parse_command(entity, field, payload) == want


@pytest.mark.parametrize(("entity", "field", "payload"), [
    (CLIMATE, "mode", b"fan"),               # our word, not Home Assistant's
    (CLIMATE, "mode", b"COOL"),
    (CLIMATE, "temperature", b"warm"),
    (CLIMATE, "temperature", b"nan"),
    (CLIMATE, "temperature", b"inf"),
    (CLIMATE, "fan_mode", b"turbo"),
    (CLIMATE, "power", b"on"),
    (CLIMATE, "on", b"ON"),                  # a switch's field on a climate
    (SWITCH, "on", b"true"),
    (SWITCH, "mode", b"cool"),
    (LOCK, "lock", b"OPEN"),
    (LOCK, "on", b"ON"),                     # a door is never latched on
    (CLIMATE, "mode", b"\xff\xfe"),
    (CLIMATE, "temperature", b"2" * 65),
])
def test_anything_else_is_a_bad_command(entity: Entity, field: str, payload: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_command(entity, field, payload)


def test_states_carry_home_assistant_words() -> None:
    ac = {"online": True, "power_on": True, "mode": "fan", "setpoint_c": 27}
    assert ha_state(Kind.AC, ac)["hvac_mode"] == "fan_only"
    assert ha_state(Kind.AC, {**ac, "mode": "cool"})["hvac_mode"] == "cool"
    assert ha_state(Kind.AC, {**ac, "power_on": False})["hvac_mode"] == "off"
    assert ha_state(Kind.AC, {**ac, "power_on": None})["hvac_mode"] is None
    assert ha_state(Kind.AC, ac)["setpoint_c"] == 27      # the STATE itself is kept
    meter = ha_state(Kind.METER, {"voltage_v": [230.1, 229.5, 231.0], "current_a": [1.0, 2.0, 3.0]})
    assert (meter["voltage_l1_v"], meter["voltage_l3_v"], meter["current_l2_a"]) == (230.1, 231.0, 2.0)
    assert ha_state(Kind.METER, {"voltage_v": None})["voltage_l2_v"] is None
    assert ha_state(Kind.LIGHT, {"on": True})["switch"] == "ON"
    assert ha_state(Kind.FAN, {"on": False})["switch"] == "OFF"
    assert ha_state(Kind.DOOR, {"on": True})["lock"] == "UNLOCKED"
    assert ha_state(Kind.DOOR, {"on": False})["lock"] == "LOCKED"


def test_topics_are_read_back_exactly() -> None:
    t = Topics("homeassistant", BASE, "gw-test")
    assert t.parse_command(f"{BASE}/ac-1/set/mode") == ("ac-1", "mode")
    for wrong in (f"{BASE}/ac-1/mode", f"{BASE}/ac-1/set/mode/x", f"{BASE}//set/mode", f"{BASE}/ac-1/get/mode",
                  "campus-edge/gw-other/ac-1/set/mode", f"{BASE}x/ac-1/set/mode"):
        assert t.parse_command(wrong) is None, wrong
    assert t.config("climate", "ac-1") == "homeassistant/climate/gw-test/ac-1/config"


def test_a_teacher_sees_the_devices_of_their_rooms_and_the_meter(tmp_path: Path) -> None:
    cfg = Config.model_validate(two_bus_school(tmp_path, 502))
    known = dict.fromkeys((d.id for d in cfg.devices), Kind.AC)
    teacher = {e.device_id: e.component for e in entities(cfg, known, frozenset({"401"}))}
    assert teacher == {"ac-401a": "climate", "meter-main": "sensor", "door-401": "lock", "light-401": "switch"}
    everyone = {e.device_id for e in entities(cfg, known, None)}
    assert everyone == {"ac-101a", "ac-101b", "ac-401a", "meter-main", "door-401", "light-401"}  # not the board
    assert {e.device_id for e in entities(cfg, {"ac-101a": Kind.AC}, None)} == {"ac-101a"}      # driven only


def test_the_config_asks_a_teacher_for_rooms() -> None:
    HomeAssistantConfig.model_validate({"mqtt": {"url": "mqtt://ha.local"}, "role": "teacher", "rooms": ["101"]})
    with pytest.raises(ValueError, match="rooms"):
        HomeAssistantConfig.model_validate({"mqtt": {"url": "mqtt://ha.local"}, "role": "teacher"})
    with pytest.raises(ValueError, match="rooms"):
        HomeAssistantConfig.model_validate({"mqtt": {"url": "mqtt://ha.local"}, "rooms": ["101"]})
    with pytest.raises(ValueError, match="node_id"):
        HomeAssistantConfig.model_validate({"mqtt": {"url": "mqtt://ha.local"}, "node_id": "gw.a"})


def test_a_climate_document_follows_the_policy_and_points_at_our_topics() -> None:
    t = Topics("homeassistant", BASE, "gw-test")
    [(topic, doc)] = discovery(CLIMATE, t, ControlConfig(setpoint_min_c=25, setpoint_max_c=27))
    assert topic == "homeassistant/climate/gw-test/ac-1/config"
    assert (doc["min_temp"], doc["max_temp"]) == (25, 27)
    assert doc["modes"] == ["off", "cool", "heat", "dry", "fan_only", "auto"]
    assert doc["mode_command_topic"] == f"{BASE}/ac-1/set/mode"
    assert doc["mode_state_topic"] == doc["temperature_state_topic"] == f"{BASE}/ac-1/state"
    assert [a["topic"] for a in doc["availability"]] == [f"{BASE}/availability", f"{BASE}/ac-1/state"]
    assert doc["availability_mode"] == "all"
    assert doc["unique_id"] == "gw-test_ac-1"


# -- against a broker and the virtual school ---------------------------------------------------------
class Seen:
    """A Home Assistant stand-in: keeps the latest message of every topic it is subscribed to."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.latest: dict[str, bytes] = {}
        self._new = asyncio.Event()

    async def run(self) -> None:
        async for m in self.client.messages:
            self.latest[str(m.topic)] = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self._new.set()

    async def wait(self, pred: Callable[[dict[str, bytes]], object], within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s):
            while not pred(self.latest):
                self._new.clear()
                await self._new.wait()

    def json(self, topic: str) -> Any:
        return json.loads(self.latest[topic])

    async def send(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)


@asynccontextmanager
async def home_assistant(port: int, *topics: str) -> AsyncIterator[Seen]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"ha-{free_port()}") as client:
        for t in topics:
            await client.subscribe(t, qos=1)
        seen = Seen(client)
        task = asyncio.create_task(seen.run(), name="ha-stand-in")
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.start(tmp_path / "mosquitto") as b:
        yield b


def ha_config(tmp_path: Path, broker: Broker) -> Config:
    cfg = two_bus_school(tmp_path, free_port())
    cfg["homeassistant"] = {"mqtt": {"url": broker.url, "keepalive_s": 5}, "role": "teacher", "rooms": ["401"]}
    cfg["control"] = {"min_off_s": 0}   # a restart is not deferred: what keeps an AC off here is a hold
    return Config.model_validate(cfg)


@pytest.fixture
async def site(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[VirtualSchool, Daemon, Seen]]:
    cfg = ha_config(tmp_path, broker)
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon, \
            home_assistant(broker.port, "homeassistant/#", f"{BASE}/#") as seen:
        await seen.wait(lambda got: got.get(f"{BASE}/availability") == b"online")
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        yield school, daemon, seen


def service(daemon: Daemon) -> HomeAssistantService:
    return next(s for s in daemon.services if isinstance(s, HomeAssistantService))


async def handled(daemon: Daemon, n: int) -> None:
    """Wait until the service has dealt with `n` commands in all (whatever their outcome)."""
    svc = service(daemon)
    await until(lambda: sum(svc.results.values()) >= n, what=f"{n} commands handled")


async def test_discovery_documents_and_states_appear(site: tuple[VirtualSchool, Daemon, Seen]) -> None:
    _school, daemon, seen = site
    want = {"homeassistant/climate/gw-test/ac-401a/config", "homeassistant/switch/gw-test/light-401/config",
            "homeassistant/lock/gw-test/door-401/config"}
    want |= {f"homeassistant/sensor/gw-test/meter-main_{k}/config" for k in (
        "power_w", "energy_kwh", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v", "current_l1_a", "current_l2_a",
        "current_l3_a", "pf", "freq_hz")}
    await seen.wait(lambda got: want <= set(got))
    configs = {t for t in seen.latest if t.startswith("homeassistant/") and t.endswith("/config")}
    assert configs == want            # a teacher of room 401: not the ACs of room 101
    for topic in configs:
        doc = seen.json(topic)
        assert doc["availability"][0]["topic"] == f"{BASE}/availability"
        state_topic = doc.get("state_topic") or doc["mode_state_topic"]
        await seen.wait(lambda got, st=state_topic: st in got)
        assert seen.json(state_topic)["online"] is True
    power = seen.json("homeassistant/sensor/gw-test/meter-main_power_w/config")
    assert (power["device_class"], power["unit_of_measurement"], power["value_template"]) == (
        "power", "W", "{{ value_json.power_w }}")
    energy = seen.json("homeassistant/sensor/gw-test/meter-main_energy_kwh/config")
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    meter = seen.json(f"{BASE}/meter-main/state")
    assert meter["voltage_l1_v"] == pytest.approx(daemon.states["meter-main"]["voltage_v"][0], abs=5)
    assert seen.json(f"{BASE}/ac-401a/state")["hvac_mode"] == "off"
    assert seen.json(f"{BASE}/door-401/state")["lock"] == "LOCKED"
    assert seen.json(f"{BASE}/light-401/state")["switch"] == "OFF"


async def test_a_climate_command_switches_the_ac_through_the_arbiter(site: tuple[VirtualSchool, Daemon, Seen]) -> None:
    school, daemon, seen = site
    assert school.ac("ac-401a").power_on is False
    await seen.send(f"{BASE}/ac-401a/set/mode", b"cool")
    await until(lambda: school.ac("ac-401a").power_on, what="ac-401a on")
    assert school.ac("ac-401a").mode == "cool"
    await seen.wait(lambda got: b'"hvac_mode":"cool"' in got.get(f"{BASE}/ac-401a/state", b""))
    await seen.send(f"{BASE}/ac-401a/set/temperature", b"27")
    await until(lambda: school.ac("ac-401a").setpoint_c == 27, what="setpoint 27")
    # the request is the teacher's, by Home Assistant, as any other source's would be
    [mine] = [r for r in daemon.arbiter.requests("ac-401a") if r.requester == "homeassistant:gw-test"]
    assert mine.source == Source.TEACHER
    assert dict(mine.fields) == {"power_on": True, "mode": "cool", "setpoint_c": 27.0}

    # staff hold it off: the teacher's command is taken but the higher hold wins ...
    out = await daemon.control.ask(Ask("ac-401a", {"power_on": False}, Source.FACILITY, "staff:S1"))
    assert out.ok
    await until(lambda: not school.ac("ac-401a").power_on, what="ac-401a off")
    await seen.send(f"{BASE}/ac-401a/set/power", b"ON")
    await handled(daemon, 3)
    assert service(daemon).results["ok"] == 3
    assert school.ac("ac-401a").power_on is False
    await seen.wait(lambda got: b'"hvac_mode":"off"' in got.get(f"{BASE}/ac-401a/state", b""))
    # ... until staff let go: the teacher's wish comes back
    await daemon.control.release("ac-401a", Source.FACILITY, "staff:S1")
    await until(lambda: school.ac("ac-401a").power_on, what="ac-401a on again")


async def test_bad_payloads_and_foreign_devices_change_nothing(site: tuple[VirtualSchool, Daemon, Seen]) -> None:
    school, daemon, seen = site
    before = {a: school.ac(a) for a in ("ac-101a", "ac-401a")}
    for topic, payload in [(f"{BASE}/ac-401a/set/mode", b"freeze"),
                           (f"{BASE}/ac-401a/set/temperature", b"warm"),
                           (f"{BASE}/ac-401a/set/mode", b"\xff"),
                           (f"{BASE}/light-401/set/on", b"true"),
                           (f"{BASE}/door-401/set/on", b"ON"),
                           (f"{BASE}/ac-401a/set/temperature", b"31"),      # valid, outside the policy
                           (f"{BASE}/ac-101a/set/mode", b"cool"),           # not the teacher's room
                           (f"{BASE}/nothing/set/mode", b"cool")]:
        await seen.send(topic, payload)
    await handled(daemon, 8)
    assert dict(service(daemon).results) == {"bad_request": 5, "out_of_range": 1, "unknown_target": 2}
    assert {a: school.ac(a) for a in before} == before
    assert school.relay("relay-1")[:2] == (False, False)
    assert not any(r.requester == "homeassistant:gw-test" for a in daemon.kinds for r in daemon.arbiter.requests(a))


async def test_a_lock_unlocks_with_a_pulse_and_a_switch_switches(site: tuple[VirtualSchool, Daemon, Seen]) -> None:
    school, daemon, seen = site
    await seen.send(f"{BASE}/door-401/set/lock", b"UNLOCK")
    await until(lambda: school.relay("relay-1")[0], what="door-401 unlocked")
    await seen.wait(lambda got: b'"lock":"UNLOCKED"' in got.get(f"{BASE}/door-401/state", b""))
    await seen.send(f"{BASE}/door-401/set/lock", b"LOCK")
    await until(lambda: not school.relay("relay-1")[0], what="door-401 locked again")
    await seen.send(f"{BASE}/light-401/set/on", b"ON")
    await until(lambda: school.relay("relay-1")[1], what="light-401 on")
    await seen.wait(lambda got: b'"switch":"ON"' in got.get(f"{BASE}/light-401/state", b""))
    await handled(daemon, 3)
    assert dict(service(daemon).results) == {"ok": 3}
    text = await daemon.metrics_text()
    assert 'campus_edge_command_results_total{source="homeassistant",status="ok",code="ok"} 3\n' in text
    assert 'campus_edge_mqtt_connected{link="homeassistant"} 1\n' in text


async def test_availability_goes_offline_on_stop(tmp_path: Path, broker: Broker) -> None:
    cfg = ha_config(tmp_path, broker)
    async with VirtualSchool(cfg), Daemon(cfg, status_port=0) as daemon:
        await until(lambda: service(daemon).connected, what="Home Assistant's link up")
    async with home_assistant(broker.port, f"{BASE}/availability") as seen:   # what a newcomer reads: retained
        await seen.wait(lambda got: f"{BASE}/availability" in got)
        assert seen.latest[f"{BASE}/availability"] == b"offline"


async def test_a_stop_without_goodbye_leaves_the_will(tmp_path: Path, broker: Broker) -> None:
    """The will (the broker's) says offline when the gateway vanishes without a word (power cut, crash)."""
    cfg = ha_config(tmp_path, broker)
    async with VirtualSchool(cfg), Daemon(cfg, status_port=0) as daemon, \
            home_assistant(broker.port, f"{BASE}/availability") as seen:
        svc = service(daemon)
        await seen.wait(lambda got: got.get(f"{BASE}/availability") == b"online")
        link = svc._link
        assert link is not None
        sock = link.client._client.socket()   # the connection dies under the gateway: no DISCONNECT sent
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)
        await seen.wait(lambda got: got.get(f"{BASE}/availability") == b"offline")
        await seen.wait(lambda got: got.get(f"{BASE}/availability") == b"online", within_s=15)   # and it comes back


class _Control:
    """Records what the service asks (the one way in's three doors)."""

    def __init__(self) -> None:
        self.policy = ControlConfig(max_unlock_s=600, teacher_max_unlock_s=10)
        self.calls: list[tuple[Any, ...]] = []

    async def ask(self, ask: Ask) -> Result:
        self.calls.append(("ask", ask.target, dict(ask.fields), ask.source, ask.requester))
        return Result("ok", "ok", "applied", ask.target)

    async def pulse(self, target: str, seconds: float, source: Source, requester: str) -> Result:
        self.calls.append(("pulse", target, seconds, source, requester))
        return Result("ok", "ok", "unlocked", target)

    async def lock(self, target: str, source: Source, requester: str) -> Result:
        self.calls.append(("lock", target, source, requester))
        return Result("ok", "ok", "locked", target)


@pytest.mark.parametrize(("role", "source", "unlock_s"), [("teacher", Source.TEACHER, 10.0),
                                                          ("facility", Source.FACILITY, 30.0)])
async def test_commands_go_through_the_control_entry_as_the_role(tmp_path: Path, role: str, source: Source,
                                                                 unlock_s: float) -> None:
    raw = two_bus_school(tmp_path, 502)
    for d in raw["devices"]:
        if d["id"] == "door-401":
            d["unlock_s"] = 30          # longer than a teacher may open a door: the teacher's cap applies
    raw["homeassistant"] = {"mqtt": {"url": "mqtt://127.0.0.1:1"}, "role": role,
                            **({"rooms": ["401"]} if role == "teacher" else {})}
    cfg = Config.model_validate(raw)
    control = _Control()

    class Host:
        def __init__(self) -> None:
            self.cfg = cfg
            self.bus = EventBus()
            self.states: dict[str, dict[str, Any]] = {}
            self.kinds = {d.id: Kind(d.kind) for d in cfg.devices}
            self.control = control

    svc = HomeAssistantService.from_daemon(Host())  # type: ignore[arg-type]  # a stand-in for the daemon
    assert svc is not None
    who = "homeassistant:gw-test"
    assert await svc.handle(f"{BASE}/door-401/set/lock", b"UNLOCK") is not None
    await svc.handle(f"{BASE}/door-401/set/lock", b"LOCK")
    await svc.handle(f"{BASE}/ac-401a/set/mode", b"dry")
    await svc.handle(f"{BASE}/ac-401a/set/mode", b"nonsense")
    assert control.calls == [("pulse", "door-401", unlock_s, source, who), ("lock", "door-401", source, who),
                             ("ask", "ac-401a", {"power_on": True, "mode": "dry"}, source, who)]
    assert dict(svc.results) == {"ok": 3, "bad_request": 1}
