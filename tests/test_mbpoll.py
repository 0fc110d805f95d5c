"""A third-party master (mbpoll) reads and writes the virtual school over TCP and over the RTU pty."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import free_port
from helpers.sites import ac, meter, rtu_bus, site, tcp_bus

from drivers.modbus.profile import encode, load_profile
from edge.core.config import Config
from simulator.app import VirtualSchool

pytestmark = pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll (Debian package) not installed")

CMN = load_profile("coolmasternet")
DAIKIN = load_profile("daikin-dta116a51")
LINE = re.compile(r"^\[(\d+)\]:\s+(\S+)\s*$", re.MULTILINE)


def make_config(port: int, run_dir: Path) -> Config:
    return Config.model_validate(site(
        buses=[tcp_bus("tcp", port), rtu_bus("line", run_dir / "line", baudrate=9600)],
        rooms=[{"id": "101"}, {"id": "401", "floor": 4}],
        devices=[ac("ac-101a", "tcp", 1, index=3, room="101"),
                 meter("tcp", 3, device_id="meter"),
                 ac("ac-401a", "line", 2, profile="daikin-dta116a51", index=5, room="401")]))


@pytest.fixture
async def school(tmp_path: Path) -> AsyncIterator[tuple[VirtualSchool, int]]:
    port = free_port()
    async with VirtualSchool(make_config(port, tmp_path)) as vs:
        yield vs, port


async def mbpoll(*args: str) -> dict[int, str]:
    """Run mbpoll once; return {reference: printed value}."""
    done = await asyncio.to_thread(subprocess.run, ["mbpoll", "-1", "-o", "2", *args],
                                   capture_output=True, text=True, timeout=15, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return {int(ref): value for ref, value in LINE.findall(done.stdout)}


def tcp(port: int, unit: int) -> list[str]:
    return ["-m", "tcp", "-a", str(unit), "-p", str(port)]


def expected_cmn(school: VirtualSchool, device: str) -> list[int]:
    ac = school.ac(device)
    return [encode(CMN.point("mode"), ac.mode)[0], encode(CMN.point("fan"), ac.fan)[0],
            round(ac.setpoint_c * 10), int(ac.power_on), 0, 0, round(ac.room_temp_c * 10), ac.fault_code, 0]


async def test_coolmasternet_block_at_16_va(school: tuple[VirtualSchool, int]) -> None:
    vs, port = school
    base = 16 * 3
    got = await mbpoll(*tcp(port, 1), "-0", "-r", str(base), "-c", "9", "-t", "4", "127.0.0.1")
    assert sorted(got) == list(range(base, base + 9))
    values = [int(got[base + i]) for i in range(9)]
    expected = expected_cmn(vs, "ac-101a")
    assert values[:6] == expected[:6]
    assert abs(values[6] - expected[6]) <= 2  # room temperature moves between the read and now
    one_based = await mbpoll(*tcp(port, 1), "-r", str(base + 1 + 2), "-c", "1", "-t", "4", "127.0.0.1")
    assert one_based == {base + 3: str(values[2])}  # reference 51 (1-based) is PDU address 50: the setpoint


async def test_sdm630_floats_big_endian(school: tuple[VirtualSchool, int]) -> None:
    vs, port = school
    total = await mbpoll(*tcp(port, 3), "-r", str(0x34 + 1), "-c", "1", "-t", "3:float", "-B", "127.0.0.1")
    assert float(total[0x35]) == pytest.approx(vs.meter().power_w, rel=0.05)
    volts = await mbpoll(*tcp(port, 3), "-0", "-r", "0", "-c", "3", "-t", "3:float", "-B", "127.0.0.1")
    assert all(225.0 < float(v) < 235.0 for v in volts.values())
    assert float(volts[0]) == pytest.approx(vs.meter().voltage_v[0], abs=0.5)


async def test_mbpoll_write_switches_the_ac_on(school: tuple[VirtualSchool, int]) -> None:
    vs, port = school
    assert vs.ac("ac-101a").power_on is False
    await mbpoll(*tcp(port, 1), "-0", "-r", str(16 * 3 + 3), "-t", "4", "127.0.0.1", "1")
    assert vs.ac("ac-101a").power_on is True


async def test_daikin_over_the_rtu_pty(school: tuple[VirtualSchool, int]) -> None:
    vs, _ = school
    status = DAIKIN.address("status", 0, index=5)
    got = await mbpoll("-m", "rtu", "-b", "9600", "-P", "none", "-a", "2", "-0", "-r", str(status), "-c", "6",
                       "-t", "3", vs.endpoint("line"))
    ac = vs.ac("ac-401a")
    word0 = encode(DAIKIN.point("fan"), ac.fan, encode(DAIKIN.point("power_on"), ac.power_on)[0])[0]
    assert int(got[status]) == word0
    assert int(got[status + 1]) == encode(DAIKIN.point("mode"), ac.mode)[0]
    assert int(got[status + 2]) == round(ac.setpoint_c * 10)
    assert abs(int(got[status + 4]) - round(ac.room_temp_c * 10)) <= 2
