"""The shipped example school: a valid config, and every device in it is served."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from helpers.sites import ac, meter, rtu_bus, site, tcp_bus
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from drivers.modbus.profile import decode, load_profile
from edge.config import load_config
from edge.core.config import Config, ModbusDevice, RtuBus, TcpBus
from simulator.app import VirtualSchool

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example-school.yaml"


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The example with its RTU ptys under tmp_path and its TCP bus on a free port."""
    monkeypatch.setenv("CAMPUS_EDGE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CAMPUS_EDGE_STATE_DIR", str(tmp_path / "state"))
    cfg = load_config(EXAMPLE)
    buses = [b.model_copy(update={"port": free_port()}) if isinstance(b, TcpBus) else b for b in cfg.buses]
    return cfg.model_copy(update={"buses": buses})


def test_example_is_a_40_class_school() -> None:
    cfg = load_config(EXAMPLE)
    assert (cfg.site.school_id, cfg.site.gateway_id, cfg.site.timezone) == ("014601", "gw-demo", "Asia/Taipei")
    classrooms = [r for r in cfg.rooms if re.fullmatch(r"[1-6]年\d+班", r.name)]
    assert len(classrooms) == 40
    assert {r.floor for r in classrooms} == {1, 2, 3, 4}
    assert any(r.west_facing for r in classrooms)
    acs = [d for d in cfg.modbus_devices() if d.kind == "ac"]
    for room in classrooms:
        assert sum(1 for d in acs if d.room == room.id) == 2, room.id
    assert {d.profile for d in acs} >= {"coolmasternet", "daikin-dta116a51", "intesis-inmbsdai"}
    meter = cfg.device("meter-main")
    assert isinstance(meter, ModbusDevice)
    assert meter.profile == "eastron-sdm630"
    assert isinstance(cfg.bus(meter.bus), RtuBus)
    assert len([d for d in cfg.modbus_devices() if d.kind == "relay"]) == 2
    assert {c.kind for c in cfg.relay_channels()} == {"light", "fan", "door"}
    assert cfg.ems is not None
    assert (cfg.ems.meter, cfg.ems.contract_kw) == ("meter-main", 180)
    for bus in cfg.buses:
        if isinstance(bus, TcpBus):
            assert bus.host == "127.0.0.1"
            assert bus.port > 1024


def test_example_paths_follow_the_environment(example: Config, tmp_path: Path) -> None:
    assert example.storage.path == tmp_path / "state"
    assert all(b.device.startswith(str(tmp_path / "run")) for b in example.buses if isinstance(b, RtuBus))


async def test_every_example_device_answers(example: Config) -> None:
    async with VirtualSchool(example, speed=60) as school:
        clients: dict[str, AsyncModbusTcpClient | AsyncModbusSerialClient] = {}
        for bus in example.buses:
            if isinstance(bus, TcpBus):
                clients[bus.id] = AsyncModbusTcpClient(bus.host, port=bus.port, timeout=1.0, retries=0)
            else:
                clients[bus.id] = AsyncModbusSerialClient(bus.device, baudrate=bus.baudrate, timeout=1.0, retries=0)
            assert await clients[bus.id].connect()
        try:
            for dev in example.modbus_devices():
                profile = load_profile(dev.profile)
                point = profile.points[0]
                table = profile.blocks[point.block].table
                address = profile.address(point.block, point.offset, dev.index or 0, dev.offset)
                client = clients[dev.bus]
                read = {"holding": client.read_holding_registers, "input": client.read_input_registers,
                        "coil": client.read_coils}[table]
                rr = await read(address, count=point.words, device_id=dev.unit)
                assert not rr.isError(), dev.id
                words = rr.bits[:1] if table == "coil" else rr.registers
                assert decode(point, words).rejected is None, dev.id
                if dev.kind == "ac":
                    assert decode(point, words).value == getattr(school.ac(dev.id), point.field), dev.id
        finally:
            for c in clients.values():
                c.close()
    assert school.counters.total() == len(example.modbus_devices())


async def test_main_prints_ready_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "school.yaml"
    conf.write_text(yaml.safe_dump(site(
        gateway="gw-t", buses=[tcp_bus("b1", port), rtu_bus("b2", tmp_path / "tty-a")], rooms=[{"id": "101"}],
        devices=[ac("ac-1", "b1", 1, profile="intesis-inmbsdai", room="101"), meter("b2", 1, device_id="m")])),
        encoding="utf-8")
    code = ("import sys; from edge.config import load_config; from simulator.app import main; "
            f"sys.exit(main(load_config({str(conf)!r}), 30.0, None))")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line == b"READY\n"
        assert (tmp_path / "tty-a").is_symlink()
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
        await client.connect()
        rr = await client.read_holding_registers(4, count=1, device_id=1)
        client.close()
        assert rr.registers == [260]  # the Intesis setpoint register: 26.0 degC x10
        os.killpg(proc.pid, signal.SIGTERM)  # as `make demo` stops it: socat gets the signal too
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()
    assert not (tmp_path / "tty-a").is_symlink()  # socat stopped and its links are gone


def test_main_refuses_a_remote_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.app import main

    cfg = Config.model_validate(site(buses=[tcp_bus("b", 1502, host="192.0.2.7")]))
    assert main(cfg, None, None) == 2
    assert "loopback" in capsys.readouterr().err
