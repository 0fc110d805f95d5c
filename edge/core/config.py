"""Site configuration (CONTRACT.md section 2): typed, frozen models (loading: `edge.core.loader`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.core.model import Kind
from edge.core.schedule import parse_days

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
DEFAULT_POLL_S = {"ac": 2.0, "meter": 1.0, "relay": 1.0}


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(_M):
    school_id: str = Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9]+$")
    gateway_id: Id
    timezone: str = "Asia/Taipei"


MQTT_URL = r"^mqtts?://[^/:]+(:\d+)?/?$"
MAX_BROKER_URLS = 16


class MqttConfig(_M):
    url: str = Field(pattern=MQTT_URL)
    urls: list[Annotated[str, Field(pattern=MQTT_URL)]] = Field(
        default_factory=list, max_length=MAX_BROKER_URLS - 1,
        description="further nodes of the same broker cluster, tried in turn after `url` when a connection fails"
                    " or is lost (round robin); the same scheme as `url`")
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_id: str | None = None          # default campus-edge-{school_id}-{gateway_id}: stable, for the session
    keepalive_s: int = Field(30, ge=5, le=3600)
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    persistent_session: bool = True       # the broker queues commands sent while the gateway is away

    @model_validator(mode="after")
    def _one_cluster(self) -> MqttConfig:
        scheme = self.url.split("://", 1)[0]
        seen = {self.url.rstrip("/")}
        for i, u in enumerate(self.urls):
            if u.split("://", 1)[0] != scheme:
                # one TLS context serves every attempt: a cluster's nodes are all mqtts or all mqtt
                raise ValueError(f"urls[{i}] {u!r}: every broker URL must use {scheme}:// like `url`")
            if u.rstrip("/") in seen:
                raise ValueError(f"urls[{i}] {u!r}: listed twice (with `url` or in `urls`)")
            seen.add(u.rstrip("/"))
        return self

    def broker_urls(self) -> list[str]:
        """`url`, then `urls`: the order the link tries them in."""
        return [self.url, *self.urls]


class InfluxConfig(_M):
    url: str = Field(pattern=r"^https?://")
    org: str
    bucket: str
    token_file: Path | None = None
    flush_s: float = Field(10.0, gt=0, le=3600)   # how often what is due is POSTed (latency vs requests)


class CloudConfig(_M):
    mqtt: MqttConfig
    topic_prefix: str = "campus/v1"
    command_keys: list[Path] = Field(default_factory=list)
    influx: InfluxConfig | None = None


class HomeAssistantConfig(_M):
    """Home Assistant over MQTT discovery (`edge.homeassistant`): the school's own broker, not the city's cloud.

    ACs appear as `climate`, the meter as `sensor`s, doors as `lock`, lights and fans as `switch`; what
    Home Assistant asks goes through the one way in as `role` (a teacher: only the devices of `rooms`).
    """

    mqtt: MqttConfig = Field(description="the broker Home Assistant uses (its own connection; client id default"
                                         " campus-edge-ha-{node_id}; always a clean session: a command sent while"
                                         " the gateway was away is not carried out later)")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    node_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                                description="names this gateway in Home Assistant's topics (default: the gateway id)")
    topic_prefix: str = Field("campus-edge", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
                              description="state and command topics: {topic_prefix}/{node_id}/...")
    role: Literal["facility", "teacher"] = Field("facility", description="whose priority Home Assistant's"
                                                                         " commands have (the arbiter's tiers)")
    rooms: list[Id] = Field(default_factory=list, description="a teacher's rooms: only their devices are shown"
                                                               " and controlled (the meter is shown to everyone)")

    @model_validator(mode="after")
    def _rooms_for_teachers(self) -> HomeAssistantConfig:
        if self.role == "teacher" and not self.rooms:
            raise ValueError("role teacher needs `rooms` (the rooms the teacher may act on)")
        if self.role == "facility" and self.rooms:
            raise ValueError("`rooms` is for role teacher (facility staff act on the whole school)")
        return self


class Storage(_M):
    path: Path = Path("/var/lib/campus-edge")
    reserve_mb: float = Field(64.0, ge=0, le=100_000,
                              description="free disk kept for the command journal and the state: the outbox"
                                          " alarms below it, and below half of it new commands are refused")


class TcpBus(_M):
    id: Id
    type: Literal["tcp"]
    host: str
    port: int = Field(502, ge=1, le=65535)
    timeout_s: float = Field(1.0, gt=0, le=30)
    retries: int = Field(1, ge=0, le=5)


class RtuBus(_M):
    id: Id
    type: Literal["rtu"]
    device: str = Field(min_length=1)
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: float = Field(1.0, gt=0, le=30)
    retries: int = Field(1, ge=0, le=5)


Bus = Annotated[TcpBus | RtuBus, Field(discriminator="type")]


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Room(_M):
    id: Id
    name: str = ""
    floor: int = Field(1, ge=-5, le=200)
    area_m2: float = Field(70.0, gt=0, le=2000)
    west_facing: bool = False
    pupils: int = Field(28, ge=0, le=200)
    away: dict[Weekday, list[Annotated[int, Field(ge=1, le=7)]]] = Field(
        default_factory=dict, description="lessons the class spends elsewhere (PE, music), by weekday: {mon: [3]}")


class TimetableConfig(_M):
    """The school day the energy manager reads occupancy from (an AC on in an empty room is switched off)."""

    kind: Literal["elementary"] = Field("elementary", description="40-minute periods, breaks, lunch and nap"
                                                                  " in the classroom (New Taipei elementary)")
    lunch_in_room: bool = True


class ModbusDevice(_M):
    id: Id
    kind: Literal[Kind.AC, Kind.METER, Kind.RELAY]
    profile: str
    bus: Id
    unit: int = Field(ge=0, le=247)
    index: int | None = Field(None, ge=0, le=65535)
    offset: int = Field(0, ge=-16, le=16, description="per-device address shift (firmware quirks)")
    room: Id | None = None
    name: str = ""
    poll_s: float | None = Field(None, ge=0.1, le=3600)
    timeout_s: float | None = Field(None, gt=0, le=30)

    @property
    def poll_period_s(self) -> float:
        return self.poll_s if self.poll_s is not None else DEFAULT_POLL_S[self.kind]


class RelayChannel(_M):
    id: Id
    kind: Literal[Kind.LIGHT, Kind.FAN, Kind.DOOR]
    relay: Id
    channel: int = Field(ge=0, le=63)
    room: Id | None = None
    name: str = ""
    unlock_s: float = Field(5.0, ge=1, le=3600, description="a door: how long a card let in by the access list"
                                                             " unlocks it (at most control.max_unlock_s)")
    lock: Literal["fail_secure", "fail_safe"] = Field(
        "fail_secure", description="a door: fail_secure (a strike, locked without power: the relay's timed 'on'"
                                   " pulse unlocks) or fail_safe (a magnetic lock, open without power: the gateway"
                                   " keeps the relay on and a timed 'off' pulse unlocks; the board reverts by itself)")

    @model_validator(mode="after")
    def _lock_is_for_doors(self) -> RelayChannel:
        if self.lock == "fail_safe" and self.kind != Kind.DOOR:
            raise ValueError("`lock` is a door's setting")
        return self


class RfidReader(_M):
    id: Id
    kind: Literal[Kind.RFID]
    port: str
    framing: Literal["rdm6300", "wiegand26", "wiegand34", "line"]
    purpose: Literal["gate", "door", "health"]
    door: Id | None = None
    baudrate: int = 9600
    name: str = ""


BeaconId = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
                                         r"[0-9A-Fa-f]{12}:[0-9]{1,5}:[0-9]{1,5}$")]


class BeaconScanner(_M):
    id: Id
    kind: Literal[Kind.BEACON_SCANNER]
    adapter: str | None = None
    away_s: float = Field(180.0, gt=0)
    name: str = ""
    beacons: dict[BeaconId, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=dict, description="iBeacon UUID:major:minor -> the person (student id) it belongs to")
    report_unknown: bool = False                      # beacons not in `beacons`: ignored, or reported with person null
    enter_dbm: float = Field(-80.0, ge=-126, le=20)   # smoothed RSSI that counts towards an arrival
    stay_dbm: float = Field(-90.0, ge=-126, le=20)    # smoothed RSSI that keeps a present beacon present
    sightings: int = Field(3, ge=1, le=100)           # within window_s, before "arrive"
    window_s: float = Field(10.0, gt=0, le=600)
    beacon_away_s: dict[BeaconId, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _hysteresis(self) -> BeaconScanner:
        if self.stay_dbm > self.enter_dbm:
            raise ValueError("stay_dbm must not be above enter_dbm (the gap is what keeps presence from flapping)")
        return self


Device = Annotated[ModbusDevice | RelayChannel | RfidReader | BeaconScanner, Field(discriminator="kind")]


class EmsConfig(_M):
    """The energy manager (`edge.energy`, `ems.controller`): demand control under the contract."""

    meter: Id
    contract_kw: float = Field(gt=0, le=100000)
    target_share: float = Field(0.97, ge=0.5, le=1.0, description="aim this share of the contract (margin for lag)")
    period_s: float = Field(10.0, ge=1, le=120, description="the control loop's period")
    max_off_min_per_h: float = Field(15.0, ge=0, le=60, description="no room held off longer within an hour")
    min_on_s: float = Field(300.0, ge=0, le=3600, description="a unit given back runs this long before a new shed")
    restore_gap_s: float = Field(30.0, ge=0, le=600, description="restores are staggered this far apart")
    empty_grace_min: float = Field(10.0, ge=0, le=240, description="an AC on in an empty room is switched off after"
                                                                   " this (0: never)")
    rated_kw: float = Field(1.7, gt=0, le=50, description="an AC unit's electrical input at full output (DOMAIN §3)")
    unit_rated_kw: dict[Id, Annotated[float, Field(gt=0, le=50)]] = Field(
        default_factory=dict, description="per unit, where it differs from rated_kw")
    room_priority: dict[Id, int] = Field(default_factory=dict, description="higher: shed later (a health centre)")
    comfort_upper_c: float = Field(28.0, ge=20, le=35)
    precool_lead_min: float = Field(15.0, ge=0, le=120, description="switch a room's ACs on this long before its"
                                                                    " teachers usually do, where the block has room"
                                                                    " (learned habits; 0: never)")
    precool_setpoint_c: float = Field(27.0, ge=10, le=35)
    queue_starts: bool = Field(True, description="a start that does not fit waits its turn and starts by itself"
                                                 " (answered ok, held by the EMS); false: denied_by_ems, ask again")
    stale_after_s: float = Field(15.0, ge=2, le=600, description="meter data older than this: no new starts")
    alarm_raise_s: float = Field(60.0, ge=0, le=3600, description="an alarm's condition holds this long to raise it")
    alarm_clear_s: float = Field(300.0, ge=0, le=3600, description="and is gone this long to clear it")
    alarm_hysteresis_pct: float = Field(3.0, ge=0, le=50, description="a demand alarm clears this far below its level")


def _valid_days(v: str) -> str:
    parse_days(v)
    return v


SwitchedKind = Literal[Kind.AC, Kind.LIGHT, Kind.FAN]
HHMM = r"^([01]?\d|2[0-3]):[0-5]\d$"


class ScheduleEntry(_M):
    """At `at` on `days`, set `set` on `targets` (device ids, room ids, `group:ID`, `floor:N`, `kind:KIND`)."""

    id: Id
    at: str = Field(pattern=HHMM)
    days: str = "mon-fri"
    targets: list[str] = Field(min_length=1)
    kinds: list[SwitchedKind] | None = Field(None, description="only these kinds among the targets (default: all)")
    set: dict[str, bool | float | str] = Field(min_length=1)
    hold_min: float = Field(0, ge=0, le=24 * 60, description="0 = switch once; >0 = hold at schedule priority")

    _days = field_validator("days")(_valid_days)


def _all_switched() -> list[SwitchedKind]:
    return [Kind.AC, Kind.LIGHT, Kind.FAN]


class OffAfter(_M):
    """The group's last period ends at `at` on `days` (Wednesday afternoons are free in elementary schools)."""

    days: str = "mon-fri"
    at: str = Field(pattern=HHMM)

    _days = field_validator("days")(_valid_days)


class RoomGroup(_M):
    """Rooms switched together: "the lower grades", "the second floor". Schedules name it `group:ID`;
    `off_after` switches its ACs, lights and fans off when its last period is over (once: a teacher who
    stays may switch them on again)."""

    id: Id
    rooms: list[Id] = Field(default_factory=list)
    floors: list[int] = Field(default_factory=list)
    off_after: list[OffAfter] = Field(default_factory=list)
    kinds: list[SwitchedKind] = Field(default_factory=_all_switched,
                                      min_length=1, description="what `off_after` switches off")

    @model_validator(mode="after")
    def _some_rooms(self) -> RoomGroup:
        if not self.rooms and not self.floors:
            raise ValueError("a room group names `rooms`, `floors` or both")
        return self


def runtime_dir() -> Path:
    """systemd's RuntimeDirectory= (exported as $RUNTIME_DIRECTORY), else /run/campus-edge."""
    return Path(os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or "/run/campus-edge")


class ControlConfig(_M):
    """The one way in (`edge.core.control`): policies every source obeys, and the local operator's socket."""

    setpoint_min_c: float = Field(26.0, ge=10, le=35, description="Ministry of Education classroom policy: 26-28 °C")
    setpoint_max_c: float = Field(28.0, ge=10, le=35)
    min_off_s: float = Field(180.0, ge=0, le=1800, description="compressor minimum off time before a restart")
    max_unlock_s: float = Field(600.0, gt=0, le=3600, description="the longest one request may hold a door open")
    teacher_max_unlock_s: float = Field(
        10.0, gt=0, le=3600, description="a teacher's door.unlock lets people through, no more (a room opened"
                                         " for longer is a booking: owned, shown, relocked at its end)")
    day_end: str = Field("18:00", pattern=r"^([01]?\d|2[0-3]):[0-5]\d$",
                         description="requests of teachers, staff, the local operator and bookings hold until then")
    socket: Path = Field(default_factory=lambda: runtime_dir() / "control.sock",
                         description="local control (campus-edge set): a Unix socket, mode 0660;"
                                     " default $RUNTIME_DIRECTORY/control.sock (systemd), else /run/campus-edge")
    socket_group: str | None = Field(None, description="group that may use local control (default: the daemon's)")
    max_connections: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _range(self) -> ControlConfig:
        if self.setpoint_min_c > self.setpoint_max_c:
            raise ValueError("setpoint_min_c is above setpoint_max_c")
        if self.teacher_max_unlock_s > self.max_unlock_s:
            raise ValueError("teacher_max_unlock_s is above max_unlock_s")
        return self


class BookingsConfig(_M):
    """Venue bookings (`edge.bookings`): a booked room's doors open `lead_s` before the start, relock at the end."""

    lead_s: float = Field(1800.0, ge=0, le=86400, description="how long before a booking's start its room's doors open")
    pulse_s: float = Field(60.0, ge=2, le=3600, description="each unlock is a hardware-timed pulse this long: a dead"
                                                            " gateway's door relocks within it")
    renew_s: float = Field(20.0, ge=1, le=3600, description="the pulse is renewed this often while the room is open")
    precool: bool = Field(False, description="also switch the room's ACs on (cool) for the booking, through the"
                                             " arbiter and the energy manager's admission")

    @model_validator(mode="after")
    def _renew_first(self) -> BookingsConfig:
        if self.renew_s >= self.pulse_s:
            raise ValueError("renew_s must be below pulse_s (the pulse is renewed before it ends)")
        return self


class SimulationConfig(_M):
    """Knobs of the virtual school (`campus-edge simulate`); ignored by the daemon."""

    speed: float = Field(1.0, gt=0, le=3600, description="simulated seconds per real second")
    start: str | None = Field(None, description="ISO 8601 start of simulated time (default: now)")
    outdoor_min_c: float = 27.0
    outdoor_max_c: float = 34.0
    base_load_kw: float = Field(25.0, ge=0)
    seed: int = 7
    initial_room_c: float | None = None
    wire_emulation: bool = Field(
        False, description="answer RTU requests after the time the frames take at the bus baud rate (ptys ignore baud)"
    )


class ScreenConfig(_M):
    """The school's energy screen (`edge.screen`): a read-only web page on the LAN; nothing on it actuates."""

    listen: str | None = Field(None, description="host:port to serve it on (\"0.0.0.0:8080\": the whole LAN;"
                                                  " [::]:8080 for IPv6); none: no screen")
    lang: Literal["zh-TW", "en"] = Field("zh-TW", description="the page's language (a viewer may add ?lang=en)")
    title: str | None = Field(None, min_length=1, max_length=80, description="the heading (the school's name)")
    max_viewers: int = Field(50, ge=1, le=1000, description="live pages at once; one more is answered 503")
    interval_s: float = Field(1.0, ge=0.5, le=5.0, description="one snapshot this often for all viewers")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host.strip("[]") or any(c.isspace() for c in host) or not port.isdigit() \
                or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen {v!r}: expected host:port, e.g. 0.0.0.0:8080 ([::]:8080 for IPv6)")
        return v


class Config(_M):
    site: Site
    cloud: CloudConfig | None = None
    homeassistant: HomeAssistantConfig | None = None
    storage: Storage = Storage()
    profile_dirs: list[Path] = Field(default_factory=list)
    buses: list[Bus] = Field(default_factory=list)
    rooms: list[Room] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    ems: EmsConfig | None = None
    schedules: list[ScheduleEntry] = Field(default_factory=list)
    room_groups: list[RoomGroup] = Field(default_factory=list)
    timetable: TimetableConfig | None = Field(None, description="without it, occupancy is unknown: no AC is"
                                                                " switched off for an empty room")
    simulation: SimulationConfig = SimulationConfig()
    control: ControlConfig = Field(default_factory=ControlConfig)
    bookings: BookingsConfig = Field(default_factory=BookingsConfig)
    status_port: int = Field(8765, ge=0, le=65535, description="loopback HTTP status API (0 = any free port)")
    screen: ScreenConfig | None = None

    # -- look-ups used everywhere ---------------------------------------------------------------
    def modbus_devices(self) -> list[ModbusDevice]:
        return [d for d in self.devices if isinstance(d, ModbusDevice)]

    def relay_channels(self) -> list[RelayChannel]:
        return [d for d in self.devices if isinstance(d, RelayChannel)]

    def actuators_for(self, target: str, kinds: Iterable[str] | None = None) -> list[str]:
        """Actuator ids a schedule target names: a device id, a room id, `group:ID`, `floor:N` or
        `kind:KIND`; with `kinds`, only actuators of those kinds.

        Doors are never schedule targets: they open only by a timed unlock that re-locks in hardware.
        """
        wanted = None if kinds is None else set(kinds)
        writable = [d for d in self.devices
                    if ((isinstance(d, ModbusDevice) and d.kind == Kind.AC)
                        or (isinstance(d, RelayChannel) and d.kind != Kind.DOOR))
                    and (wanted is None or d.kind in wanted)]
        if target.startswith("kind:"):
            return [d.id for d in writable if d.kind == target[5:]]
        if target.startswith(("group:", "floor:")):
            rooms = self.rooms_of(target)
            return [d.id for d in writable if getattr(d, "room", None) in rooms]
        if any(d.id == target for d in writable):
            return [target]
        return [d.id for d in writable if getattr(d, "room", None) == target]

    def rooms_of(self, target: str) -> set[str]:
        """Room ids of `group:ID` (its rooms and the rooms on its floors) or `floor:N`; empty if unknown."""
        kind, _, name = target.partition(":")
        if kind == "floor":
            return {r.id for r in self.rooms if str(r.floor) == name}
        for g in self.room_groups:
            if g.id == name:
                return set(g.rooms) | {r.id for r in self.rooms if r.floor in g.floors}
        return set()

    def all_schedules(self) -> list[ScheduleEntry]:
        """The `schedules` and, for each room group's `off_after`, an entry `GROUP-off-N` switching it off."""
        out = list(self.schedules)
        for g in self.room_groups:
            out += [ScheduleEntry(id=f"{g.id}-off-{n}", at=o.at, days=o.days, targets=[f"group:{g.id}"],
                                  kinds=list(g.kinds), set={"power_on": False})
                    for n, o in enumerate(g.off_after, start=1)]
        return out

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def bus(self, bus_id: str) -> TcpBus | RtuBus:
        for b in self.buses:
            if b.id == bus_id:
                return b
        raise KeyError(bus_id)

    def room(self, room_id: str) -> Room:
        for r in self.rooms:
            if r.id == room_id:
                return r
        raise KeyError(room_id)
