"""Site configs as the YAML loader sees them (plain dicts): small builders, and the schools several tests share.

`Config.model_validate(...)` makes one a config; `yaml.safe_dump(...)` a file for `campus-edge`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
SCHOOL_ID = "014601"

Section = dict[str, Any]


def site(tmp: Path | None = None, *, gateway: str = "gw-test", school: str = SCHOOL_ID, timezone: str | None = None,
         buses: Iterable[Section] = (), rooms: Iterable[Section] = (), devices: Iterable[Section] = (),
         **extra: Any) -> Section:
    """A site: state under `tmp`/state if `tmp` is given; `extra` adds (or replaces) top-level sections."""
    ident: Section = {"school_id": school, "gateway_id": gateway}
    if timezone is not None:
        ident["timezone"] = timezone
    cfg: Section = {"site": ident}
    if tmp is not None:
        cfg["storage"] = {"path": str(tmp / "state")}
    for key, items in (("buses", buses), ("rooms", rooms), ("devices", devices)):
        if listed := list(items):
            cfg[key] = listed
    cfg.update(extra)
    return cfg


def tcp_bus(bus_id: str, port: int | None = None, *, host: str = LOOPBACK, **extra: Any) -> Section:
    """A Modbus TCP bus (the port left out: the config's default)."""
    bus: Section = {"id": bus_id, "type": "tcp", "host": host}
    if port is not None:
        bus["port"] = port
    return {**bus, **extra}


def rtu_bus(bus_id: str, device: Path | str, **extra: Any) -> Section:
    """An RS-485 line on `device` (a pty link the simulator creates, in tests)."""
    return {"id": bus_id, "type": "rtu", "device": str(device), **extra}


def ac(device_id: str, bus: str, unit: int, *, profile: str = "coolmasternet", **extra: Any) -> Section:
    """An AC (`index`, `room`, `poll_s` ... in `extra`)."""
    return {"id": device_id, "kind": "ac", "profile": profile, "bus": bus, "unit": unit, **extra}


def meter(bus: str, unit: int, *, device_id: str = "meter-main", profile: str = "eastron-sdm630",
          **extra: Any) -> Section:
    return {"id": device_id, "kind": "meter", "profile": profile, "bus": bus, "unit": unit, **extra}


def relay(bus: str, unit: int, *, device_id: str = "relay-1", profile: str = "waveshare-relay-8ch",
          **extra: Any) -> Section:
    return {"id": device_id, "kind": "relay", "profile": profile, "bus": bus, "unit": unit, **extra}


def channel(device_id: str, kind: str, channel: int, *, relay: str = "relay-1", **extra: Any) -> Section:
    """A light, fan or door on a relay board's channel."""
    return {"id": device_id, "kind": kind, "relay": relay, "channel": channel, **extra}


def ac_fleet(n: int, bus: str, *, profile: str = "coolmasternet", unit: int | None = 1, first_index: int = 1,
             **extra: Any) -> tuple[list[Section], list[Section]]:
    """(rooms, devices): `n` ACs ac-001 in room "001" and so on, behind one gateway `unit` (indices from
    `first_index`) or, with `unit=None`, one unit id each (1, 2, ...)."""
    rooms: list[Section] = []
    devices: list[Section] = []
    for i in range(n):
        name = f"{i + 1:03d}"
        where: Section = {"unit": i + 1} if unit is None else {"unit": unit, "index": first_index + i}
        rooms.append({"id": name})
        devices.append({"id": f"ac-{name}", "kind": "ac", "profile": profile, "bus": bus, **where, "room": name,
                        **extra})
    return rooms, devices


# -- the schools ------------------------------------------------------------------------------------
def small_school(run_dir: Path, *, modbus_port: int, broker_port: int | None, pub_key: Path | None,
                 storage: Path | None = None, status_port: int = 0) -> Section:
    """A few ACs on a TCP bus, a meter, a relay board on an RTU pty with a light and a door, three rooms;
    with `broker_port`, a cloud link to it (the gateway 014601/gw-t of helpers.app.claims)."""
    cfg = site(gateway="gw-t", timezone="Asia/Taipei",
               buses=[tcp_bus("ac-bus", modbus_port, timeout_s=0.5),
                      rtu_bus("rs485-1", run_dir / "rs485-1", baudrate=9600, timeout_s=0.5)],
               rooms=[{"id": "301", "floor": 3}, {"id": "302", "floor": 3}, {"id": "101", "floor": 1}],
               devices=[ac("ac-301a", "ac-bus", 1, index=1, room="301", poll_s=0.5),
                        ac("ac-301b", "ac-bus", 1, index=2, room="301", poll_s=0.5),
                        ac("ac-302a", "ac-bus", 1, index=3, room="302", poll_s=0.5),
                        meter("ac-bus", 2),
                        relay("rs485-1", 1, poll_s=0.5),
                        channel("light-301", "light", 0, room="301"),
                        channel("door-101", "door", 1, room="101")],
               storage={"path": str(storage or run_dir / "state")}, status_port=status_port)
    if broker_port is not None:
        cfg["cloud"] = {"mqtt": {"url": f"mqtt://{LOOPBACK}:{broker_port}", "keepalive_s": 5},
                        "command_keys": [str(pub_key)] if pub_key else []}
    return cfg


def two_bus_school(tmp: Path, port: int) -> Section:
    """Two buses like a real school: an AC gateway on TCP and an RS-485 line (socat pty) with a Daikin
    interface, the meter and a relay board with a door and a light; EMS on the meter."""
    return site(tmp,
                buses=[tcp_bus("ac-bus", port, timeout_s=0.5),
                       # 8E1 as the DTA116A51 ships; on the pty the parity is not applied (Linux 6.x refuses it there)
                       rtu_bus("rs485", tmp / "ttyRS485", baudrate=9600, parity="E", timeout_s=0.5)],
                rooms=[{"id": "101", "name": "1年1班", "floor": 1}, {"id": "401", "name": "4年1班", "floor": 4}],
                devices=[ac("ac-101a", "ac-bus", 1, index=1, room="101", poll_s=0.5),
                         ac("ac-101b", "ac-bus", 1, index=2, room="101", poll_s=0.5),
                         ac("ac-401a", "rs485", 3, profile="daikin-dta116a51", index=0, room="401", poll_s=0.5),
                         meter("rs485", 1, poll_s=0.5),
                         relay("rs485", 2, poll_s=0.5),
                         channel("door-401", "door", 0, room="401"),
                         channel("light-401", "light", 1, room="401")],
                ems={"meter": "meter-main", "contract_kw": 180},
                simulation={"seed": 5})
