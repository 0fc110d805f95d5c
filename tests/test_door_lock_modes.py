"""Fail-secure and fail-safe doors (issue 8, item 3): `on` means unlocked for both, on the real relay
board of the virtual school over an RTU pty; the difference is in which way the relay's hardware-timed
pulse goes and what the board does without the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, until
from helpers.sites import two_bus_school

from edge.config import load_config
from edge.core.arbiter import Source
from edge.core.config import Config
from edge.core.loader import ConfigError
from edge.daemon import Daemon
from simulator.app import VirtualSchool

DOOR_CHANNEL = 0   # door-401 on relay-1 (helpers.sites.two_bus_school)


def site(tmp: Path, lock: str) -> Config:
    base = two_bus_school(tmp, free_port())
    for dev in base["devices"]:
        if dev["id"] == "door-401":
            dev["lock"] = lock
    return Config.model_validate(base)


def coil(school: VirtualSchool) -> bool:
    return bool(school.physics.relays["relay-1"].coils[DOOR_CHANNEL])


async def test_a_fail_safe_door_is_powered_at_start_and_unlocks_with_an_off_pulse(tmp_path: Path) -> None:
    cfg = site(tmp_path, "fail_safe")
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        # the board boots with every relay off: a magnetic lock without power is open; the gateway locks it
        await until(lambda: coil(school), what="the fail-safe door's relay switched on (locked)")
        await until(lambda: daemon.states["door-401"].get("on") is False, what="door-401 reported locked")
        out = await daemon.control.pulse("door-401", 2.0, Source.FACILITY, "facility:F1")
        assert out.ok, out.message
        assert coil(school) is False                     # an off pulse: the lock lets go
        await until(lambda: daemon.states["door-401"].get("on") is True, what="door-401 reported open")
        # the board itself puts the power back when the pulse ends
        await until(lambda: coil(school), within=10, what="the board re-powered the lock")
        await until(lambda: daemon.states["door-401"].get("on") is False, what="door-401 reported locked again")


async def test_a_fail_safe_door_found_unpowered_is_locked_again(tmp_path: Path) -> None:
    cfg = site(tmp_path, "fail_safe")
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0):
        await until(lambda: coil(school), what="locked at start")
        school.physics.relays["relay-1"].set(DOOR_CHANNEL, False)    # the board lost power and came back
        await until(lambda: coil(school), within=20, what="the gateway locked it again")


async def test_a_fail_secure_door_unlocks_with_an_on_pulse_and_rests_unpowered(tmp_path: Path) -> None:
    cfg = site(tmp_path, "fail_secure")
    async with VirtualSchool(cfg) as school, Daemon(cfg, status_port=0) as daemon:
        await until(lambda: daemon.states["door-401"].get("on") is False, what="door-401 read")
        assert coil(school) is False
        out = await daemon.control.pulse("door-401", 2.0, Source.FACILITY, "facility:F1")
        assert out.ok, out.message
        assert coil(school) is True
        await until(lambda: not coil(school), within=10, what="the strike re-locked by the board")


def test_only_a_door_has_a_lock_mode(tmp_path: Path) -> None:
    base: dict[str, Any] = two_bus_school(tmp_path, 1)
    for dev in base["devices"]:
        if dev["id"] == "light-401":
            dev["lock"] = "fail_safe"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError, match="`lock` is a door's setting"):
        load_config(path)
