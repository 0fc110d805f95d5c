"""The daemon against the virtual school: TCP and RTU (pty) buses, local commands, faults, status."""

from __future__ import annotations

import asyncio
import stat
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, until
from helpers.sites import two_bus_school

from edge.cli import main as cli_main
from edge.config import load_config
from edge.core.arbiter import Request, Source
from edge.core.config import Config
from edge.core.control import Ask
from edge.core.loader import ConfigError
from edge.daemon import Daemon
from edge.http import get_json
from simulator.app import VirtualSchool


def school_config(tmp: Path, port: int) -> Config:
    """helpers.sites.two_bus_school as a config (test_storage_faults and test_sdnotify import it from here)."""
    return Config.model_validate(two_bus_school(tmp, port))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[VirtualSchool, Daemon]]:
    cfg = school_config(tmp_path, free_port())
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        yield school, daemon


async def test_reads_every_device_over_tcp_and_rtu(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    for ac_id in ("ac-101a", "ac-101b", "ac-401a"):
        st, sim = daemon.states[ac_id], school.ac(ac_id)
        assert st["power_on"] == sim.power_on
        assert st["setpoint_c"] == pytest.approx(sim.setpoint_c, abs=0.05)
        assert st["room_temp_c"] == pytest.approx(sim.room_temp_c, abs=0.3)
        assert st["mode"] in ("cool", "heat", "dry", "fan", "auto")
        assert st["fault"] is None
    meter = daemon.states["meter-main"]
    assert meter["power_w"] == pytest.approx(school.site_power_w, rel=0.05)
    assert len(meter["voltage_v"]) == 3
    assert 59 < meter["freq_hz"] < 61
    assert daemon.states["light-401"]["on"] is False
    assert daemon.states["ac-101a"]["ts"].endswith("+08:00")  # the site's time zone


async def local(daemon: Daemon, path: str, body: Any = None, method: str | None = None) -> tuple[int, Any]:
    """The local operator's request over the daemon's control socket (what `campus-edge set` sends)."""
    return await get_json("localhost", 0, path, body=body, wait_s=10, unix=daemon.cfg.control.socket, method=method)


async def test_local_command_is_written_and_verified(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    code, body = await local(daemon, "/devices/ac-401a", {"set": {"power_on": True, "setpoint_c": 26, "mode": "cool"}})
    assert code == 200, body
    assert body["status"] == "ok"
    assert "deferred_until" not in body
    assert "overridden_by" not in body
    sim = school.ac("ac-401a")
    assert (sim.power_on, sim.setpoint_c, sim.mode) == (True, 26.0, "cool")
    assert body["state"]["power_on"] is True
    assert body["until"].endswith("+08:00")   # a local request holds until the end of the school day
    code, body = await local(daemon, "/devices/light-401", {"set": {"on": True}})
    assert code == 200, body
    assert school.relay("relay-1")[1] is True


async def test_bad_local_commands_change_nothing(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    before = school.ac("ac-101a")
    for path, fields, want in [("/devices/ac-101a", {"setpoint_c": 99}, "out_of_range"),
                               ("/devices/ac-101a", {"setpoint_c": 16}, "out_of_range"),
                               ("/devices/ac-101a", {"colour": "red"}, "bad_request"),
                               ("/devices/ac-101a", {"power_on": "off"}, "bad_request"),
                               ("/devices/ac-101a", {"power_on": 1}, "bad_request"),
                               ("/devices/ac-101a", {"mode": "freeze"}, "bad_request"),
                               ("/devices/light-401", {"on": "false"}, "bad_request"),
                               ("/devices/nope", {"on": True}, "unknown_target"),
                               ("/devices/door-401", {"on": True}, "bad_request")]:  # doors: timed unlock only
        code, body = await local(daemon, path, {"set": fields})
        assert code == 422, (fields, body)
        assert (body["status"], body["code"]) == ("rejected", want), fields
    assert school.relay("relay-1")[0] is False
    assert school.relay("relay-1")[1] is False
    after = school.ac("ac-101a")
    assert (after.power_on, after.setpoint_c, after.mode) == (before.power_on, before.setpoint_c, before.mode)


async def test_the_status_port_cannot_actuate(site: tuple[VirtualSchool, Daemon]) -> None:
    """Any process or web page can reach the loopback port: it reads, it never switches anything."""
    school, daemon = site
    port = daemon.http.port
    for ctype in ("application/json", "text/plain"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"set": {"on": true}}'
        writer.write(f"POST /devices/light-401 HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert raw.split()[1] in (b"404", b"405", b"415"), raw
    assert school.relay("relay-1")[1] is False
    code, _ = await get_json("127.0.0.1", port, "/status")
    assert code == 200


async def test_the_control_socket_takes_json_only_and_is_not_for_everyone(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    sock = daemon.cfg.control.socket
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    reader, writer = await asyncio.open_unix_connection(str(sock))
    body = b'{"set": {"on": true}}'
    writer.write(b"POST /devices/light-401 HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.split()[1] == b"415", raw
    assert school.relay("relay-1")[1] is False
    # a user outside the socket's group (nobody) cannot even connect
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)\nsys.exit(0)")
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe, str(sock))
    assert await asyncio.wait_for(proc.wait(), 10) == 13


async def test_cli_set_parses_words_once(site: tuple[VirtualSchool, Daemon]) -> None:
    """`power_on=off` on an AC that is off switched it on (bool("off") is True): never again."""
    school, daemon = site
    sock = str(daemon.cfg.control.socket)
    assert school.ac("ac-101b").power_on is False
    assert await asyncio.to_thread(cli_main, ["set", "ac-101b", "power_on=off", "--socket", sock]) == 0
    assert school.ac("ac-101b").power_on is False
    assert await asyncio.to_thread(cli_main, ["set", "light-401", "on=false", "--socket", sock]) == 0
    assert school.relay("relay-1")[1] is False
    assert await asyncio.to_thread(cli_main, ["set", "ac-101b", "setpoint_c=16", "--socket", sock]) == 2
    assert school.ac("ac-101b").setpoint_c != 16
    assert await asyncio.to_thread(cli_main, ["set", "ac-101b", "power_on=1", "--socket", sock]) == 2
    assert school.ac("ac-101b").power_on is False
    assert await asyncio.to_thread(cli_main, ["set", "light-401", "on=yes", "--socket", sock, "--hold", "5m"]) == 0
    assert school.relay("relay-1")[1] is True
    assert await asyncio.to_thread(cli_main, ["set", "light-401", "--release", "--socket", sock]) == 0


async def test_minimum_off_time_for_every_source_through_the_daemon(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    assert daemon.cfg.control.min_off_s == 180
    on = await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.TEACHER, "teacher:T1"))
    assert on.ok
    off = await daemon.control.ask(Ask("ac-101a", {"power_on": False}, Source.FACILITY, "facility:F1"))
    assert off.ok
    again = await daemon.control.ask(Ask("ac-101a", {"power_on": True}, Source.LOCAL, "local:root"))
    assert again.ok
    assert again.deferred_until is not None
    assert 170 < again.deferred_until - daemon.clock.time() <= 180
    assert school.ac("ac-101a").power_on is False   # the simulator's own lock-out is not what stops it
    cli = await asyncio.to_thread(cli_main, ["set", "ac-101a", "power_on=true", "--socket",
                                             str(daemon.cfg.control.socket)])
    assert cli == 0
    assert school.ac("ac-101a").power_on is False


async def test_truthful_answers_when_someone_else_holds_the_unit(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    # facility staff switch a unit on; the teacher's "off" is answered with who holds it, not a plain ok
    fac = await daemon.control.ask(Ask("ac-101a", {"power_on": True, "setpoint_c": 26}, Source.FACILITY, "facility:F1"))
    assert fac.ok
    assert fac.overridden_by is None
    teacher = await daemon.control.ask(Ask("ac-101a", {"power_on": False}, Source.TEACHER, "teacher:T1"))
    assert teacher.ok
    assert teacher.overridden_by is not None
    assert teacher.overridden_by.source == Source.FACILITY
    assert teacher.overridden_by.requester == "facility:F1"
    assert teacher.payload(daemon.tz)["overridden_by"]["until"] is not None
    assert school.ac("ac-101a").power_on is True
    # the local operator, then facility staff: one tier, the later wins, and the answer is true
    loc = await daemon.control.ask(Ask("ac-101b", {"setpoint_c": 26}, Source.LOCAL, "local:root"))
    assert loc.ok
    fac = await daemon.control.ask(Ask("ac-101b", {"setpoint_c": 28}, Source.FACILITY, "facility:F2"))
    assert fac.ok
    assert fac.overridden_by is None
    assert school.ac("ac-101b").setpoint_c == 28.0
    # release: the facility request goes, the teacher's wish (off) comes back
    rel = await daemon.control.release("ac-101a", Source.FACILITY, "facility:F1")
    assert rel.ok
    assert school.ac("ac-101a").power_on is False


async def test_door_unlock_relocks_in_hardware(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    code, body = await local(daemon, "/devices/door-401/unlock", {"seconds": 1})
    assert code == 200, body
    assert school.relay("relay-1")[0] is True
    await until(lambda: school.relay("relay-1")[0] is False, within=5, what="the board to re-lock by itself")
    for seconds in (0, 601, "5", True):
        code, body = await local(daemon, "/devices/door-401/unlock", {"seconds": seconds})
        assert body["code"] == "out_of_range", seconds
    # a safety hold keeps the door shut whoever asks
    await daemon.arbiter.submit(Request("door-401", Source.SAFETY, {"on": False}, daemon.clock.time() + 60, "test"))
    code, body = await local(daemon, "/devices/door-401/unlock", {"seconds": 5})
    assert (body["status"], body["code"]) == ("rejected", "forbidden")
    assert body["overridden_by"]["source"] == "safety"
    assert school.relay("relay-1")[0] is False


async def test_a_silent_device_goes_offline_then_comes_back(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    events = daemon.bus.subscribe("event", name="test")
    school.set_fault("ac-401a", "silent")
    await until(lambda: daemon.states["ac-401a"]["online"] is False, within=15, what="ac-401a offline")
    msg = await asyncio.wait_for(events.queue.get(), 5)
    assert msg.payload["kind"] == "fault"
    assert msg.payload["device"] == "ac-401a"
    assert msg.payload["code"] == "offline"
    # the others on the same line keep being read
    await until(lambda: daemon.states["meter-main"]["online"] is True, what="meter still online")
    out = await daemon.control.ask(Ask("ac-401a", {"power_on": True}, Source.LOCAL, "local:test"))
    assert (out.status, out.code) == ("failed", "device_offline")
    _code, body = await local(daemon, "/devices/ac-401a", {"set": {"power_on": True}})
    assert body["code"] == "device_offline"
    school.set_fault("ac-401a", None)
    await until(lambda: daemon.states["ac-401a"]["online"] is True, within=20, what="ac-401a back")
    daemon.bus.unsubscribe(events)


async def test_ac_fault_code_becomes_a_fault_event(site: tuple[VirtualSchool, Daemon]) -> None:
    school, daemon = site
    events = daemon.bus.subscribe("event", name="test")
    school.set_fault_code("ac-101b", 17)
    await until(lambda: daemon.states["ac-101b"]["fault"] == "17", what="fault code in state")
    got: list[dict[str, Any]] = []
    while not events.queue.empty():
        got.append(events.queue.get_nowait().payload)
    assert any(e["kind"] == "fault" and e["device"] == "ac-101b" and e["code"] == "17" for e in got)
    daemon.bus.unsubscribe(events)


async def test_the_first_published_state_is_complete(tmp_path: Path) -> None:
    cfg = school_config(tmp_path, free_port())
    daemon = Daemon(cfg, status_port=0)
    states = daemon.bus.subscribe("state", name="test")
    async with VirtualSchool(cfg), daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        first: dict[str, dict[str, Any]] = {}
        while not states.queue.empty():
            msg = states.queue.get_nowait()
            if msg.payload.get("online"):
                first.setdefault(msg.key, msg.payload)
    meter = first["meter-main"]  # the SDM630 takes three requests per cycle
    assert meter["power_w"] is not None
    assert meter["energy_kwh"] is not None
    assert None not in meter["voltage_v"]
    assert all(first[ac]["room_temp_c"] is not None and first[ac]["fault"] is None
               for ac in ("ac-101a", "ac-101b", "ac-401a"))


# -- schedules through the daemon -----------------------------------------------------------------------
def schedule_config(tmp: Path, port: int) -> Config:
    base = school_config(tmp, port).model_dump(mode="json", exclude_none=True)
    base["schedules"] = [
        {"id": "open-401", "at": "07:30", "days": "daily", "targets": ["401"], "set": {"power_on": True}},
        {"id": "cool-101", "at": "12:00", "days": "daily", "targets": ["ac-101a"],
         "set": {"power_on": True, "setpoint_c": 27}, "hold_min": 30},
    ]
    return Config.model_validate(base)


async def test_schedules_switch_once_or_hold_and_never_drive_a_door(tmp_path: Path) -> None:
    cfg = schedule_config(tmp_path, free_port())
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        entries = {e[0]: e for e in daemon.schedules.entries}
        assert sorted(entries["open-401"][3]) == ["ac-401a", "light-401"]   # the room's door is not a target
        await daemon.schedules._fire(list(entries).index("open-401"))
        assert school.ac("ac-401a").power_on is True
        assert school.relay("relay-1")[1] is True      # the light
        assert school.relay("relay-1")[0] is False     # the door stays locked
        # hold 0 switches once: a teacher may change it right after
        out = await daemon.control.ask(Ask("light-401", {"on": False}, Source.TEACHER, "teacher:T1"))
        assert out.ok
        assert out.overridden_by is None
        assert school.relay("relay-1")[1] is False
        # hold > 0 holds at schedule priority: the teacher is told who holds it and until when
        await daemon.schedules._fire(list(entries).index("cool-101"))
        assert (school.ac("ac-101a").power_on, school.ac("ac-101a").setpoint_c) == (True, 27.0)
        out = await daemon.control.ask(Ask("ac-101a", {"setpoint_c": 26}, Source.TEACHER, "teacher:T1"))
        assert out.ok
        assert out.overridden_by is not None
        assert out.overridden_by.source == Source.SCHEDULE
        assert out.overridden_by.until is not None
        assert 1790 < out.overridden_by.until - daemon.clock.time() <= 1800
        assert school.ac("ac-101a").setpoint_c == 27.0


def test_a_schedule_that_names_only_a_door_is_a_config_error(tmp_path: Path) -> None:
    base = school_config(tmp_path, 1).model_dump(mode="json", exclude_none=True)
    base["schedules"] = [{"id": "x", "at": "07:00", "targets": ["door-401"], "set": {"power_on": True}}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError, match="names no AC, light or fan"):
        load_config(path)


def test_a_schedule_with_a_bad_value_is_a_config_error(tmp_path: Path) -> None:
    base = school_config(tmp_path, 1).model_dump(mode="json", exclude_none=True)
    base["schedules"] = [{"id": "x", "at": "07:00", "targets": ["101"], "set": {"setpoint_c": 18}},
                         {"id": "y", "at": "07:00", "targets": ["light-401"], "set": {"power_on": "off"}}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "schedules[0].set" in text
    assert "outside the policy range" in text
    assert "schedules[1].set" in text


# -- room groups: everything off after the last period ------------------------------------------------
def group_config(tmp: Path, port: int, **group: Any) -> dict[str, Any]:
    base = school_config(tmp, port).model_dump(mode="json", exclude_none=True)
    base["room_groups"] = [{"id": "upper", "floors": [4],
                            "off_after": [{"days": "mon,tue,thu,fri", "at": "16:10"}, {"days": "wed", "at": "12:20"}],
                            **group}]
    return base


async def test_a_room_group_switches_its_acs_and_lights_off_after_the_last_period(tmp_path: Path) -> None:
    cfg = Config.model_validate(group_config(tmp_path, free_port()))
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: all(s.get("online") for s in daemon.states.values()), what="every device online")
        entries = {e[0]: e for e in daemon.schedules.entries}
        assert set(entries) == {"upper-off-1", "upper-off-2"}
        # Wednesday afternoons are free: the second entry keeps its own day and hour
        assert entries["upper-off-2"][1:3] == ((12, 20), frozenset({2}))
        assert entries["upper-off-1"][1:3] == ((16, 10), frozenset({0, 1, 3, 4}))
        # floor 4 is room 401: its AC and its light, never its door; floor 1's AC untouched
        assert sorted(entries["upper-off-1"][3]) == ["ac-401a", "light-401"]
        for dev, fields in (("ac-401a", {"power_on": True}), ("light-401", {"on": True}),
                            ("ac-101a", {"power_on": True})):
            assert (await daemon.control.ask(Ask(dev, fields, Source.TEACHER, "teacher:T1"))).ok
        await daemon.schedules._fire(list(entries).index("upper-off-1"))
        assert school.ac("ac-401a").power_on is False
        assert school.relay("relay-1")[1] is False      # the light
        assert school.ac("ac-101a").power_on is True    # another floor
        assert school.relay("relay-1")[0] is False      # the door was never driven
        # a switch, not a hold: the teacher who stays late may switch the light on again
        out = await daemon.control.ask(Ask("light-401", {"on": True}, Source.TEACHER, "teacher:T1"))
        assert out.ok
        assert out.overridden_by is None
        assert school.relay("relay-1")[1] is True


async def test_a_group_limited_to_lights_leaves_the_acs_on(tmp_path: Path) -> None:
    cfg = Config.model_validate(group_config(tmp_path, free_port(), kinds=["light"]))
    assert cfg.actuators_for("group:upper", ["light"]) == ["light-401"]
    assert [e.targets for e in cfg.all_schedules()] == [["group:upper"], ["group:upper"]]
    assert [e.kinds for e in cfg.all_schedules()] == [["light"], ["light"]]


def test_schedules_may_name_a_group_or_a_floor_with_kinds(tmp_path: Path) -> None:
    base = group_config(tmp_path, 1, off_after=[])
    base["schedules"] = [{"id": "fans", "at": "08:00", "targets": ["floor:4"], "kinds": ["light"],
                          "set": {"power_on": True}}]
    cfg = Config.model_validate(base)
    assert cfg.actuators_for("floor:4") == ["ac-401a", "light-401"]
    assert cfg.actuators_for("floor:4", ["light"]) == ["light-401"]
    assert cfg.actuators_for("group:upper") == ["ac-401a", "light-401"]
    assert cfg.actuators_for("group:nobody") == []
    assert cfg.actuators_for("floor:9") == []
    assert [e.id for e in cfg.all_schedules()] == ["fans"]


@pytest.mark.parametrize(("change", "where", "what"), [
    ({"rooms": ["999"]}, "room_groups[0].rooms[0]", "unknown room '999'"),
    ({"floors": [7]}, "room_groups[0].floors[0]", "no room is on floor 7"),
    ({"floors": [], "rooms": []}, "room_groups[0]", "names `rooms`, `floors` or both"),
    ({"kinds": ["fan"]}, "room_groups[0].off_after", "have no fan to switch off"),
    ({"off_after": [{"at": "25:00"}]}, "room_groups[0].off_after[0].at", "pattern"),
    ({"off_after": [{"at": "16:00", "days": "someday"}]}, "room_groups[0].off_after[0].days", "mon..sun"),
])
def test_a_bad_room_group_is_a_config_error_that_says_where(tmp_path: Path, change: dict[str, Any], where: str,
                                                           what: str) -> None:
    base = group_config(tmp_path, 1, **change)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert where in str(err.value)
    assert what in str(err.value)


def test_a_schedule_naming_an_unknown_group_is_a_config_error(tmp_path: Path) -> None:
    base = group_config(tmp_path, 1)
    base["schedules"] = [{"id": "x", "at": "07:00", "targets": ["group:lower"], "set": {"power_on": False}},
                         {"id": "upper-off-1", "at": "07:00", "targets": ["401"], "set": {"power_on": False}}]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "schedules[0].targets[0]: unknown room group 'lower'" in str(err.value)
    assert "room_groups[0].off_after: schedule id upper-off-1 is taken" in str(err.value)


async def test_status_says_who_holds_what_until_when(site: tuple[VirtualSchool, Daemon]) -> None:
    _school, daemon = site
    assert daemon.status()["holds"] == {}
    out = await daemon.control.ask(Ask("ac-101a", {"power_on": True, "setpoint_c": 27}, Source.FACILITY,
                                       "facility:F1", hold_s=1800))
    assert out.ok
    holds = daemon.status()["holds"]
    assert list(holds) == ["ac-101a"]
    (h,) = holds["ac-101a"]
    assert (h["source"], h["by"], h["fields"]) == ("facility", "facility:F1", {"power_on": True, "setpoint_c": 27})
    assert datetime.fromisoformat(h["until"]).timestamp() == pytest.approx(daemon.clock.time() + 1800, abs=5)
    code, body = await get_json("127.0.0.1", daemon.http.port, "/status")
    assert code == 200
    assert body["holds"]["ac-101a"][0]["source"] == "facility"
