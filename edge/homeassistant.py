"""Home Assistant over MQTT discovery (optional: the `homeassistant` section of the config).

A school that runs Home Assistant sees its ACs as `climate` entities, the meter as `sensor`s (power,
energy, voltage and current per phase, power factor, frequency), doors as `lock`s and lights and fans
as `switch`es. The service keeps its own connection to the school's broker (usually Home Assistant's,
on the LAN; never the city's cloud) and publishes, all retained:

* `{discovery_prefix}/{component}/{node_id}/{object_id}/config`: one discovery document per entity;
* `{topic_prefix}/{node_id}/{device}/state`: the device's STATE (CONTRACT.md section 3) plus the
  words Home Assistant reads (`hvac_mode`, `switch`, `lock`, the meter's phases one by one), on
  every change (latest wins, at most one a device per STATE_MIN_INTERVAL_S);
* `{topic_prefix}/{node_id}/availability`: `online`, and `offline` on stop or, as the will, when the
  gateway vanishes. An entity is available while the gateway is and its device answers.

Home Assistant commands arrive on `{topic_prefix}/{node_id}/{device}/set/{field}` and go only
through the one way in (`Control.ask`, `Control.pulse`, `Control.lock`) as the configured role:
validation, policies, the EMS's admission and the arbiter's priorities hold as for anyone. Home
Assistant has no result channel: a refused or invalid command is logged and counted (`results`, in
/metrics), and the state topic keeps showing the truth. Commands are carried out one at a time, in
the order they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edge.core.arbiter import Source
from edge.core.config import Config, ControlConfig, HomeAssistantConfig, ModbusDevice, RelayChannel
from edge.core.control import Ask, Control, Result
from edge.core.events import EventBus, Subscription
from edge.core.model import Kind

if TYPE_CHECKING:
    import aiomqtt

    from cloud_sync.link import LinkSettings, MqttLink

log = logging.getLogger(__name__)

STATE_MIN_INTERVAL_S = 0.5     # a device's state goes out at most this often (the meter changes every read)
COMMAND_QUEUE = 100            # commands waiting to be carried out; more are dropped (and logged)
MAX_PAYLOAD_BYTES = 64         # every command of ours is a word or a number
STOP_PUBLISH_S = 2.0           # the last `offline` is given this long before the connection closes
RESTART_AFTER_S = 5.0          # a failed loop (a bug) is started again after this, the daemon goes on

Component = Literal["climate", "sensor", "switch", "lock"]
HA_MODES = ("off", "cool", "heat", "dry", "fan_only", "auto")     # Home Assistant's words for our AC modes
FAN_MODES = ("auto", "low", "medium", "high")
_TO_HA_MODE = {"cool": "cool", "heat": "heat", "dry": "dry", "fan": "fan_only", "auto": "auto"}
_FROM_HA_MODE = {v: k for k, v in _TO_HA_MODE.items()}
ON_OFF = {"ON": True, "OFF": False}

# (state key, name, device_class, unit, state_class) of each meter sensor
METER_SENSORS: tuple[tuple[str, str, str, str | None, str], ...] = (
    ("power_w", "Power", "power", "W", "measurement"),
    ("energy_kwh", "Energy", "energy", "kWh", "total_increasing"),
    *((f"voltage_l{n}_v", f"Voltage L{n}", "voltage", "V", "measurement") for n in (1, 2, 3)),
    *((f"current_l{n}_a", f"Current L{n}", "current", "A", "measurement") for n in (1, 2, 3)),
    ("pf", "Power factor", "power_factor", None, "measurement"),
    ("freq_hz", "Frequency", "frequency", "Hz", "measurement"),
)


class BadCommand(ValueError):
    """A payload Home Assistant sent that names nothing we can do."""


@dataclass(frozen=True, slots=True)
class Entity:
    """One device as Home Assistant sees it."""

    device_id: str
    component: Component
    kind: Kind
    name: str
    room: str | None = None       # the room's display name (Home Assistant's suggested area)
    model: str = ""
    unlock_s: float = 5.0         # a door: how long UNLOCK opens it


@dataclass(frozen=True, slots=True)
class Topics:
    discovery_prefix: str
    base: str          # {topic_prefix}/{node_id}
    node_id: str

    @classmethod
    def for_config(cls, ha: HomeAssistantConfig, gateway_id: str) -> Topics:
        node = node_id(ha, gateway_id)
        return cls(ha.discovery_prefix, f"{ha.topic_prefix}/{node}", node)

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def commands(self) -> str:
        """The subscription that takes every command."""
        return f"{self.base}/+/set/+"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and will messages (`online` when it starts)."""
        return f"{self.discovery_prefix}/status"

    def state(self, device_id: str) -> str:
        return f"{self.base}/{device_id}/state"

    def command(self, device_id: str, field: str) -> str:
        return f"{self.base}/{device_id}/set/{field}"

    def config(self, component: Component, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """(device, field) of a command topic, or None."""
        head = self.base + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head):].split("/")
        if len(parts) != 3 or parts[1] != "set" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]


def node_id(ha: HomeAssistantConfig, gateway_id: str) -> str:
    """The configured node id, or the gateway id in Home Assistant's alphabet (no dots)."""
    return ha.node_id or gateway_id.replace(".", "_")


def entities(cfg: Config, known: Mapping[str, Kind], rooms: frozenset[str] | None) -> list[Entity]:
    """What Home Assistant is shown: every device the daemon drives, or (a teacher) those of `rooms`, and the meter."""
    names = {r.id: r.name or r.id for r in cfg.rooms}
    out: list[Entity] = []
    for d in cfg.devices:
        if d.id not in known:
            continue
        room = getattr(d, "room", None)
        if rooms is not None and d.kind != Kind.METER and room not in rooms:
            continue
        area = names.get(room) if room is not None else None
        label = d.name or d.id
        if isinstance(d, ModbusDevice) and d.kind == Kind.AC:
            out.append(Entity(d.id, "climate", Kind.AC, label, area, d.profile))
        elif isinstance(d, ModbusDevice) and d.kind == Kind.METER:
            out.append(Entity(d.id, "sensor", Kind.METER, label, area, d.profile))
        elif isinstance(d, RelayChannel) and d.kind in (Kind.LIGHT, Kind.FAN):
            out.append(Entity(d.id, "switch", Kind(d.kind), label, area, f"relay {d.relay} channel {d.channel}"))
        elif isinstance(d, RelayChannel) and d.kind == Kind.DOOR:
            out.append(Entity(d.id, "lock", Kind.DOOR, label, area, f"relay {d.relay} channel {d.channel}",
                              d.unlock_s))
    return out


# -- what goes out --------------------------------------------------------------------------------------
def _device_block(e: Entity, t: Topics) -> dict[str, Any]:
    block: dict[str, Any] = {"identifiers": [f"campus-edge_{t.node_id}_{e.device_id}"], "name": e.name,
                             "manufacturer": "campus-edge", "model": e.model or str(e.kind)}
    if e.room is not None:
        block["suggested_area"] = e.room
    return block


def _common(e: Entity, t: Topics, object_id: str) -> dict[str, Any]:
    return {
        "unique_id": f"{t.node_id}_{object_id}",
        "device": _device_block(e, t),
        "origin": {"name": "campus-edge"},
        "availability": [{"topic": t.availability},
                         {"topic": t.state(e.device_id),
                          "value_template": "{{ 'online' if value_json.online else 'offline' }}"}],
        "availability_mode": "all",
        "qos": 1,
    }


def discovery(e: Entity, t: Topics, policy: ControlConfig) -> list[tuple[str, dict[str, Any]]]:
    """The discovery documents (topic, payload) of one entity (Home Assistant's MQTT discovery schema)."""
    st = t.state(e.device_id)
    if e.component == "climate":
        return [(t.config("climate", e.device_id), {
            **_common(e, t, e.device_id), "name": None,
            "modes": list(HA_MODES),
            "mode_command_topic": t.command(e.device_id, "mode"),
            "mode_state_topic": st, "mode_state_template": "{{ value_json.hvac_mode }}",
            "temperature_command_topic": t.command(e.device_id, "temperature"),
            "temperature_state_topic": st, "temperature_state_template": "{{ value_json.setpoint_c }}",
            "current_temperature_topic": st, "current_temperature_template": "{{ value_json.room_temp_c }}",
            "fan_modes": list(FAN_MODES),
            "fan_mode_command_topic": t.command(e.device_id, "fan_mode"),
            "fan_mode_state_topic": st, "fan_mode_state_template": "{{ value_json.fan }}",
            "power_command_topic": t.command(e.device_id, "power"), "payload_on": "ON", "payload_off": "OFF",
            "min_temp": policy.setpoint_min_c, "max_temp": policy.setpoint_max_c, "temp_step": 0.5,
            "precision": 0.1, "temperature_unit": "C",
            "json_attributes_topic": st,
        })]
    if e.component == "sensor":
        out = []
        for key, name, device_class, unit, state_class in METER_SENSORS:
            doc: dict[str, Any] = {**_common(e, t, f"{e.device_id}_{key}"), "name": name, "state_topic": st,
                                   "value_template": f"{{{{ value_json.{key} }}}}", "device_class": device_class,
                                   "state_class": state_class}
            if unit is not None:
                doc["unit_of_measurement"] = unit
            out.append((t.config("sensor", f"{e.device_id}_{key}"), doc))
        return out
    if e.component == "switch":
        return [(t.config("switch", e.device_id), {
            **_common(e, t, e.device_id), "name": None,
            "command_topic": t.command(e.device_id, "on"), "payload_on": "ON", "payload_off": "OFF",
            "state_topic": st, "value_template": "{{ value_json.switch }}", "state_on": "ON", "state_off": "OFF",
        })]
    return [(t.config("lock", e.device_id), {
        **_common(e, t, e.device_id), "name": None,
        "command_topic": t.command(e.device_id, "lock"), "payload_lock": "LOCK", "payload_unlock": "UNLOCK",
        "state_topic": st, "value_template": "{{ value_json.lock }}", "state_locked": "LOCKED",
        "state_unlocked": "UNLOCKED",
    })]


def ha_state(kind: Kind, state: Mapping[str, Any]) -> dict[str, Any]:
    """The daemon's STATE of a device plus the words Home Assistant's templates read."""
    out = dict(state)
    if kind == Kind.AC:
        on = state.get("power_on")
        out["hvac_mode"] = None if on is None else _TO_HA_MODE.get(state.get("mode") or "") if on else "off"
    elif kind == Kind.METER:
        for name, unit in (("voltage", "v"), ("current", "a")):
            phases = state.get(f"{name}_{unit}") or ()
            for n in (1, 2, 3):
                out[f"{name}_l{n}_{unit}"] = phases[n - 1] if len(phases) >= n else None
    elif kind in (Kind.LIGHT, Kind.FAN):
        on = state.get("on")
        out["switch"] = None if on is None else "ON" if on else "OFF"
    elif kind == Kind.DOOR:
        on = state.get("on")
        out["lock"] = None if on is None else "UNLOCKED" if on else "LOCKED"
    return out


# -- what comes in --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Command:
    """What a Home Assistant message asks: `set` fields, or a door's `unlock` / `lock`."""

    action: Literal["set", "unlock", "lock"]
    fields: Mapping[str, Any]


def parse_command(e: Entity, field: str, payload: bytes) -> Command:
    """Home Assistant's payload on `.../{device}/set/{field}` as our request; raise BadCommand."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadCommand(f"{len(payload)} bytes (at most {MAX_PAYLOAD_BYTES})")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadCommand("not UTF-8 text") from None
    if e.component == "climate":
        if field == "mode":
            if text == "off":
                return Command("set", {"power_on": False})
            if text not in _FROM_HA_MODE:
                raise BadCommand(f"mode {text!r}: one of {', '.join(HA_MODES)}")
            return Command("set", {"power_on": True, "mode": _FROM_HA_MODE[text]})
        if field == "temperature":
            try:
                value = float(text)
            except ValueError:
                raise BadCommand(f"temperature {text!r}: a number of °C") from None
            if not math.isfinite(value):
                raise BadCommand(f"temperature {text!r}: a number of °C")
            return Command("set", {"setpoint_c": round(value, 1)})
        if field == "fan_mode":
            if text not in FAN_MODES:
                raise BadCommand(f"fan_mode {text!r}: one of {', '.join(FAN_MODES)}")
            return Command("set", {"fan": text})
        if field == "power":
            if text not in ON_OFF:
                raise BadCommand(f"power {text!r}: ON or OFF")
            return Command("set", {"power_on": ON_OFF[text]})
    elif e.component == "switch" and field == "on":
        if text not in ON_OFF:
            raise BadCommand(f"{text!r}: ON or OFF")
        return Command("set", {"on": ON_OFF[text]})
    elif e.component == "lock" and field == "lock":
        if text == "UNLOCK":
            return Command("unlock", {})
        if text == "LOCK":
            return Command("lock", {})
        raise BadCommand(f"{text!r}: LOCK or UNLOCK")
    raise BadCommand(f"a {e.component} takes no {field!r}")


# -- the service ----------------------------------------------------------------------------------------
class Host(Protocol):
    cfg: Config
    bus: EventBus
    states: dict[str, dict[str, Any]]
    kinds: dict[str, Kind]
    control: Control


def read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"homeassistant.mqtt.password_file: {path}: {exc.strerror or exc}") from None


class HomeAssistantService:
    """MQTT discovery, state and commands for Home Assistant; an async context manager (a daemon service)."""

    name = "homeassistant"

    def __init__(self, host: Host, ha: HomeAssistantConfig) -> None:
        self.host = host
        self.ha = ha
        cfg = host.cfg
        self.topics = Topics.for_config(ha, cfg.site.gateway_id)
        self.source = Source.TEACHER if ha.role == "teacher" else Source.FACILITY
        self.requester = f"homeassistant:{self.topics.node_id}"
        known_rooms = {r.id for r in cfg.rooms}
        for room in ha.rooms:
            if room not in known_rooms:
                log.warning("config: homeassistant.rooms: no room %r in this site", room)
        self.entities = {e.device_id: e for e in entities(cfg, host.kinds,
                                                          frozenset(ha.rooms) if ha.role == "teacher" else None)}
        self.results: Counter[str] = Counter()   # command outcomes by result code (bad_request: unparseable)
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._commands: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(COMMAND_QUEUE)
        self._link: MqttLink | None = None
        self._sub: Subscription | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_daemon(cls, host: Host) -> HomeAssistantService | None:
        ha = host.cfg.homeassistant
        return cls(host, ha) if ha is not None else None

    def settings(self) -> LinkSettings:
        from cloud_sync.link import LinkSettings, parse_url  # lazy: MQTT only where Home Assistant is configured

        m = self.ha.mqtt
        tls, host, port = parse_url(m.url)
        # a clean session: a command Home Assistant sent while we were away is not carried out hours later
        client_id = m.client_id or f"campus-edge-ha-{self.topics.node_id}"
        return LinkSettings(host=host, port=port, tls=tls, client_id=client_id,
                            username=m.username, password=read_password(m.password_file), ca_file=m.ca_file,
                            cert_file=m.cert_file, key_file=m.key_file, keepalive_s=m.keepalive_s,
                            protocol=m.protocol, persistent_session=False)

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected.is_set()

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "node_id": self.topics.node_id, "role": self.ha.role,
                "entities": len(self.entities), "results": dict(self.results)}

    # -- lifecycle --------------------------------------------------------------------------------------
    async def __aenter__(self) -> HomeAssistantService:
        from cloud_sync.link import MqttLink  # lazy: MQTT only where Home Assistant is configured

        self._link = MqttLink(self.settings(), will_topic=self.topics.availability, will_payload=b"offline")
        self._sub = self.host.bus.subscribe("state", maxsize=10_000, name="homeassistant")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        link = self._link
        self._tasks = [self._tg.create_task(self._supervise("ha-link", lambda: link.run(self._session)),
                                            name="ha-link"),
                       self._tg.create_task(self._supervise("ha-states", self._watch_states), name="ha-states"),
                       self._tg.create_task(self._supervise("ha-commands", self._run_commands), name="ha-commands")]
        log.info("Home Assistant: %d entities as %s on %s:%d (node %s)", len(self.entities), self.ha.role,
                 link.settings.host, link.settings.port, self.topics.node_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        link = self._link
        try:
            if link is not None and link.connected.is_set():
                with contextlib.suppress(Exception):   # a broker gone meanwhile: its will says offline for us
                    async with asyncio.timeout(STOP_PUBLISH_S):
                        await link.publish(self.topics.availability, b"offline", "status", retain=True)
            if link is not None:
                link.stopping = True
            for t in self._tasks:
                t.cancel()
            if self._tg is not None:
                await self._tg.__aexit__(None, None, None)
        finally:
            if self._sub is not None:
                self.host.bus.unsubscribe(self._sub)

    async def _supervise(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `loop`; a bug in it is logged and the loop started again: the daemon's control goes on."""
        while True:
            try:
                await loop()
                return
            except Exception:   # anything but a cancellation: log, wait, start again
                log.exception("Home Assistant: %s failed; starting it again in %.0f s", name, RESTART_AFTER_S)
                await asyncio.sleep(RESTART_AFTER_S)

    # -- one connection ---------------------------------------------------------------------------------
    async def _session(self, client: aiomqtt.Client) -> None:
        link = self._link
        assert link is not None
        await client.subscribe(self.topics.commands, qos=1)
        await client.subscribe(self.topics.ha_status, qos=1)
        await self._announce()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._read(client), name="ha-reader")
            tg.create_task(self._publish_states(), name="ha-state-publish")

    async def _announce(self) -> None:
        """Discovery documents, every state, then `online` (the order Home Assistant expects)."""
        link = self._link
        assert link is not None
        for e in self.entities.values():
            for topic, doc in discovery(e, self.topics, self.host.cfg.control):
                await link.publish(topic, _dumps(doc), "other", retain=True)
        for dev in self.entities:
            await self._publish_state(dev)
        await link.publish(self.topics.availability, b"online", "status", retain=True)

    async def _read(self, client: aiomqtt.Client) -> None:
        link = self._link
        assert link is not None
        async for m in client.messages:
            link.ack(m)   # nothing to keep: Home Assistant does not re-send, and a lost command is visible in its UI
            topic = str(m.topic)
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            if topic == self.topics.ha_status:
                if raw == b"online":   # Home Assistant (re)started: tell it everything again
                    log.info("Home Assistant came online: discovery and states published again")
                    await self._announce()
                continue
            try:
                self._commands.put_nowait((topic, raw))
            except asyncio.QueueFull:
                self.results["dropped"] += 1
                log.warning("Home Assistant: command on %s dropped (%d waiting)", topic, COMMAND_QUEUE)

    # -- states -----------------------------------------------------------------------------------------
    async def _watch_states(self) -> None:
        assert self._sub is not None
        async for msg in self._sub:
            if msg.key in self.entities:
                self._touch(msg.key)

    def _touch(self, device_id: str) -> None:
        self._dirty.add(device_id)
        self._wake.set()

    async def _publish_state(self, device_id: str) -> None:
        link = self._link
        assert link is not None
        state = self.host.states.get(device_id)
        if state is None:
            return
        payload = ha_state(self.entities[device_id].kind, state)
        await link.publish(self.topics.state(device_id), _dumps(payload), "state", retain=True)

    async def _publish_states(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            try:
                for dev in sorted(batch):
                    await self._publish_state(dev)
            except BaseException:
                self._dirty |= batch   # the connection broke: the next one publishes them (and all others)
                raise
            await asyncio.sleep(STATE_MIN_INTERVAL_S)

    # -- commands ---------------------------------------------------------------------------------------
    async def _run_commands(self) -> None:
        while True:
            topic, raw = await self._commands.get()
            await self.handle(topic, raw)

    async def handle(self, topic: str, payload: bytes) -> Result | None:
        """Carry out one command message through the one way in; None when it named nothing we can do."""
        parsed = self.topics.parse_command(topic)
        entity = self.entities.get(parsed[0]) if parsed is not None else None
        if parsed is None or entity is None:
            self.results["unknown_target"] += 1
            log.warning("Home Assistant: %s: no device of ours (role %s); ignored", topic, self.ha.role)
            return None
        try:
            cmd = parse_command(entity, parsed[1], payload)
        except BadCommand as exc:
            self.results["bad_request"] += 1
            log.warning("Home Assistant: %s %r ignored: %s", topic, payload[:MAX_PAYLOAD_BYTES], exc)
            self._touch(entity.device_id)
            return None
        control = self.host.control
        dev = entity.device_id
        if cmd.action == "unlock":
            cap = (control.policy.teacher_max_unlock_s if self.source == Source.TEACHER
                   else control.policy.max_unlock_s)
            out = await control.pulse(dev, min(entity.unlock_s, cap), self.source, self.requester)
        elif cmd.action == "lock":
            out = await control.lock(dev, self.source, self.requester)
        else:
            out = await control.ask(Ask(dev, dict(cmd.fields), self.source, self.requester))
        self.results[out.code] += 1
        if out.ok:
            held = f"; held by {out.overridden_by.source.name.lower()}" if out.overridden_by is not None else ""
            log.info("Home Assistant: %s %s: %s%s", dev, dict(cmd.fields) or cmd.action, out.message, held)
        else:
            log.warning("Home Assistant: %s %s refused: %s %s", dev, dict(cmd.fields) or cmd.action, out.code,
                        out.message)
        self._touch(dev)   # Home Assistant redraws from the truth, whatever became of the command
        return out


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
