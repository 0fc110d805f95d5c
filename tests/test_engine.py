"""Bus engine against real pymodbus servers: polling, writes, faults, reconnects, RTU over a pty."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.sites import ac, relay, site, tcp_bus
from modbus_server import LOOPBACK, Recorder, Server, Unit, engine_tasks, wait_for

from drivers.modbus import tools, transport
from drivers.modbus.engine import ModbusBus, ModbusEngine, WriteError
from drivers.modbus.planner import DeviceSpec, plan
from drivers.modbus.profile import load_profile
from drivers.modbus.transport import DeviceException, Disconnected, Timeout
from edge.core.config import Config, RtuBus, TcpBus
from simulator.ptys import PtyPair

COOLMASTER = load_profile("coolmasternet")
DAIKIN = load_profile("daikin-dta116a51")
INTESIS = load_profile("intesis-inmbsdai")
SDM630 = load_profile("eastron-sdm630")
RELAY = load_profile("waveshare-relay-8ch")
MODES = ["cool", "heat", "auto", "dry", "fan"]
FANS = ["low", "medium", "high", "auto"]


@pytest.fixture(autouse=True)
async def no_engine_tasks() -> AsyncIterator[None]:
    yield
    assert engine_tasks() == []


def ac_values(va: int) -> dict[str, Any]:
    return {"mode": MODES[va % 5], "fan": FANS[va % 4], "setpoint_c": 20.0 + (va % 10) / 2,
            "power_on": va % 2 == 1, "filter_sign": False, "room_temp_c": 25.0 + (va % 7) / 10,
            "fault_code": va if va % 10 == 0 else 0}


def acs(n: int, unit: int = 1, poll_s: float = 0.2, first: int = 1) -> list[DeviceSpec]:
    return [DeviceSpec(f"ac{va}", COOLMASTER, unit, va, poll_s=poll_s) for va in range(first, first + n)]


def ac_unit(specs: list[DeviceSpec], unit: int = 1) -> Unit:
    image = Unit(unit, holding=[0] * (16 * (max(s.index or 0 for s in specs) + 1) + 16))
    for spec in specs:
        image.fill(spec, ac_values(spec.index or 0))
    return image


def intesis(unit: int, poll_s: float = 0.2) -> tuple[DeviceSpec, Unit]:
    spec = DeviceSpec(f"in{unit}", INTESIS, unit, poll_s=poll_s)
    image = Unit(unit, holding=[0] * 32).fill(spec, {"power_on": True, "mode": "cool", "fan": "low", "setpoint_c": 26.0,
                                                     "room_temp_c": 28.0, "alarm": False, "fault_code": 0})
    return spec, image


def tcp(server: Server, timeout_s: float = 0.3, retries: int = 1, bus_id: str = "ac-bus") -> TcpBus:
    return TcpBus(id=bus_id, type="tcp", host=LOOPBACK, port=server.port, timeout_s=timeout_s, retries=retries)


async def online(bus: ModbusBus, ids: list[str], timeout_s: float = 5.0) -> None:
    await wait_for(lambda: all(bus.online(d) for d in ids), timeout_s)


# -- polling ----------------------------------------------------------------------------------------


async def test_150_units_are_read_with_exactly_the_planned_requests() -> None:
    specs = acs(150, poll_s=0.5)
    server = Server([ac_unit(specs)])
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), specs, rec) as bus:
            await online(bus, [s.device_id for s in specs])
            planned = {(r.address, r.count) for r in plan(specs)}
            assert len(planned) == 19
            assert bus.stats()["requests_per_cycle"] == 19
            server.reset()
            await asyncio.sleep(1.6)  # about three cycles
            counts = [n for (u, fc, a, c), n in server.counts.items() if (u, fc) == (1, 3)]
            assert server.keys(1, 3) == planned  # the server saw the planned reads and nothing else
            assert max(counts) - min(counts) <= 1  # every read once per cycle
            assert 3 <= min(counts) <= 5
            for va in (1, 8, 9, 77, 150):
                assert rec.state(f"ac{va}") == ac_values(va)


async def test_sdm630_reads_respect_even_and_80_register_rules_on_the_wire() -> None:
    spec = DeviceSpec("meter", SDM630, 1, poll_s=0.2)
    values = {"voltage_l1_v": 230.1, "current_l2_a": 18.25, "power_w": 12345.0, "pf": -0.95, "freq_hz": 60.0,
              "import_energy_kwh": 1234.5, "max_demand_w": 15000.0, "energy_kwh": 98765.5}
    server = Server([Unit(1, input=[0] * 400).fill(spec, values)])
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), [spec], rec) as bus:
            await online(bus, ["meter"])
            await wait_for(lambda: values.keys() <= rec.state("meter").keys())
            got = rec.state("meter")
            assert {k: got[k] for k in values} == pytest.approx(values, rel=1e-6)  # float32 precision
        for address, count in server.keys(1, 4):
            assert address % 2 == 0
            assert count % 2 == 0
            assert count <= 80


async def test_out_of_range_and_unknown_codes_are_rejected_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    (spec,) = acs(1)
    image = ac_unit([spec])
    image.holding[16 + 6] = 900  # room temperature 90.0 degC: outside -10..60
    image.holding[16 + 0] = 9  # mode code 9: not in the map
    server = Server([image])
    caplog.set_level(logging.WARNING, logger="drivers.modbus.polling")
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), [spec], rec) as bus:
            await wait_for(lambda: rec.count("ac1") >= 4)
            stats = bus.stats()["devices"]["ac1"]
    assert rec.readings[0].rejected == {"room_temp_c": "out_of_range", "mode": "unknown_enum"}
    assert all("room_temp_c" not in r.values and "mode" not in r.values for r in rec.readings)
    assert rec.state("ac1")["setpoint_c"] == ac_values(1)["setpoint_c"]
    assert stats["rejected"]["room_temp_c"] >= 4
    warned = [r for r in caplog.records if "room_temp_c rejected" in r.getMessage()]
    assert len(warned) == 1


# -- writes -----------------------------------------------------------------------------------------


async def test_write_encodes_sends_and_verifies() -> None:
    specs = acs(3)
    server = Server([ac_unit(specs)])
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), specs, rec) as bus:
            await online(bus, ["ac2"])
            server.reset()
            got = await bus.write("ac2", {"setpoint_c": 27.5, "mode": "dry", "power_on": True})
            assert got == {"setpoint_c": 27.5, "mode": "dry", "power_on": True}
            assert await server.get(1, 3, 32, 4) == [3, 2, 275, 1]  # dry, fan untouched (high), 27.5, on
            assert {(fc, a) for (_u, fc, a, _c) in server.counts if fc == 6} == {(6, 32), (6, 34), (6, 35)}
            assert bus.latest("ac2")["setpoint_c"] == 27.5

            with pytest.raises(WriteError) as err:
                await bus.write("ac2", {"setpoint_c": 50})
            assert err.value.code == "out_of_range"
            with pytest.raises(WriteError) as err:
                await bus.write("ac2", {"mode": "turbo"})
            assert err.value.code == "out_of_range"
            with pytest.raises(WriteError) as err:
                await bus.write("ac2", {"room_temp_c": 20})
            assert err.value.code == "bad_request"
            with pytest.raises(WriteError) as err:
                await bus.write("ac2", {"colour": "red"})
            assert err.value.code == "bad_request"

            server.refuse[1] = [(6, 48, 64)]  # VA3 refuses writes
            with pytest.raises(WriteError) as err:
                await bus.write("ac3", {"setpoint_c": 24.0})
            assert err.value.code == "write_failed"
            server.refuse.clear()

            async def clamp(srv: Server, fc: int, address: int, count: int, values: list[Any]) -> None:
                values[:] = [min(v, 260) for v in values]  # a unit that quietly limits its setpoint

            server.on_write[1] = clamp
            with pytest.raises(WriteError) as err:
                await bus.write("ac1", {"setpoint_c": 28.0})
            assert err.value.code == "write_failed"
            assert bus.stats()["verify_failures"] == 1


async def test_daikin_writes_the_whole_control_block_with_fc16() -> None:
    spec = DeviceSpec("d5", DAIKIN, 1, 5, poll_s=0.2)
    image = Unit(1, input=[0] * 3800, holding=[0] * 2300)
    image.fill(spec, {"power_on": False, "fan": "high", "mode": "cool", "setpoint_c": 26.0, "room_temp_c": 29.0,
                      "fault_code": 0})

    async def mirror(srv: Server, fc: int, address: int, count: int, values: list[Any]) -> None:
        """The interface applies control words (HR 2000+3n) to the unit status (IR 2000+6n)."""
        if fc != 16:  # our own status update below comes through here too
            return
        n = (address - 2000) // 3
        w0, w1 = await srv.get(1, 4, 2000 + 6 * n, 2)
        status = [(w0 & ~1) | (values[0] & 1), (w1 & ~0xF) | (values[1] & 0xF), values[2]]
        await srv.set(1, 4, 2000 + 6 * n, status)

    server = Server([image], on_write={1: mirror})
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), [spec], rec) as bus:
            await online(bus, ["d5"])
            server.reset()
            assert await bus.write("d5", {"setpoint_c": 27.0}) == {"setpoint_c": 27.0}
            assert server.keys(1, 16) == {(2015, 3)}
            assert await server.get(1, 3, 2015, 3) == [0, 2, 270]  # off and cool kept, setpoint changed
            assert await bus.write("d5", {"power_on": True, "mode": "heat"}) == {"power_on": True, "mode": "heat"}
            assert await server.get(1, 3, 2015, 3) == [1, 1, 270]
            status = await server.get(1, 4, 2030, 3)
            assert (status[0] >> 12) & 7 == 2  # the fan bits of the status word survived
            assert bus.latest("d5")["fan"] == "high"


async def test_writes_preempt_polls_and_polls_never_pile_up() -> None:
    pairs = [intesis(u, poll_s=0.05) for u in range(1, 11)]
    server = Server([img for _s, img in pairs], delay_s=dict.fromkeys(range(1, 11), 0.02))
    specs = [s for s, _img in pairs]
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server, timeout_s=1.0), specs, rec) as bus:
            await online(bus, [s.device_id for s in specs])
            await asyncio.sleep(0.5)  # the bus is saturated: 10 reads of 20 ms each, wanted every 50 ms
            t0 = time.monotonic()
            assert await bus.write("in10", {"setpoint_c": 27.0}) == {"setpoint_c": 27.0}
            after = [(fc, unit) for (t, unit, fc, _a, _c) in server.log if t >= t0]
            assert after.index((6, 10)) <= 1  # at most the read already in flight went first
            assert bus.stats()["max_queue"] <= len(specs)  # one queued read per planned request, never more


# -- faults -----------------------------------------------------------------------------------------


async def test_a_sub_unit_answering_exceptions_is_split_out_and_its_neighbours_stay_merged() -> None:
    specs = acs(8)
    server = Server([ac_unit(specs)], refuse={1: [(3, 80, 96)]})  # VA5's registers
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server), specs, rec, rng=None) as bus:
            healthy = [s.device_id for s in specs if s.device_id != "ac5"]
            await online(bus, healthy)
            await wait_for(lambda: rec.last_health("ac5") is not None)
            assert rec.last_health("ac5").online is False
            assert rec.last_health("ac5").reason == "exception code 2"
            assert {(r.address, r.count) for r in bus.plan} == {(16, 56), (96, 40)}
            server.refuse.clear()  # repaired: the next probe brings it back and the reads merge again
            await wait_for(lambda: bus.online("ac5"), timeout_s=6.0)
            assert {(r.address, r.count) for r in bus.plan} == {(16, 120)}
            assert [h.online for h in rec.health if h.device_id == "ac5"] == [False, True]


async def measure(specs: list[DeviceSpec], server: Server, watch: list[str], window_s: float,
                  wait_offline: list[str]) -> tuple[dict[str, int], ModbusBus]:
    rec = Recorder()
    async with ModbusBus(tcp(server, timeout_s=0.25), specs, rec) as bus:
        await online(bus, watch)
        await wait_for(lambda: all(rec.last_health(d) is not None for d in wait_offline), timeout_s=5.0)
        server.reset()
        start = rec.readings[-1].ts
        await asyncio.sleep(window_s)
        counts = {d: rec.count(d, since=start) for d in watch}
    return counts, bus


@pytest.mark.parametrize("fault", ["silent", "garbage"])
async def test_a_dead_or_babbling_unit_backs_off_and_does_not_slow_the_others(fault: str) -> None:
    ac_specs = acs(8, poll_s=0.2)
    good, good_img = intesis(2, poll_s=0.2)
    bad, bad_img = intesis(3, poll_s=0.2)
    watch = ["ac1", "ac8", "in2"]
    server = Server([ac_unit(ac_specs), good_img, bad_img])
    async with server.tcp():
        baseline, _ = await measure([*ac_specs, good], server, watch, 3.0, [])
        getattr(server, fault).add(3)
        faulty, bus = await measure([*ac_specs, good, bad], server, watch, 3.0, ["in3"])
        probes = server.requests(unit=3)
    assert bus.stats()["devices"]["in3"]["online"] is False
    assert bus.stats()["devices"]["in3"]["reason"] in ("timeout", "garbage")
    for dev in watch:
        assert faulty[dev] >= 0.9 * baseline[dev], (dev, faulty, baseline)
    assert probes <= 3  # backoff 1 s, 2 s, 4 s (+-20 %): a 3 s window holds at most two or three probes


async def test_reconnects_after_the_server_comes_back() -> None:
    specs = acs(2)
    server = Server([ac_unit(specs)])
    rec = Recorder()
    async with server.tcp():
        bus_cfg = tcp(server)
        bus = ModbusBus(bus_cfg, specs, rec)
        await bus.__aenter__()
        await online(bus, ["ac1", "ac2"])
    try:
        await wait_for(lambda: rec.last_health("ac1") is not None and not rec.last_health("ac1").online)
        assert rec.last_health("ac1").reason == "connection"
        with pytest.raises(WriteError) as err:
            await bus.write("ac1", {"setpoint_c": 25.0})
        assert err.value.code == "device_offline"
        async with server.tcp():
            await wait_for(lambda: bus.online("ac1") and bus.online("ac2"), timeout_s=8.0)
            assert await bus.write("ac1", {"setpoint_c": 25.0}) == {"setpoint_c": 25.0}
    finally:
        await bus.__aexit__(None, None, None)
    assert bus.stats()["connects"] >= 2


async def test_slow_and_dead_units_with_long_timeouts_never_drop_the_shared_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A device's timeout_s may exceed the bus' (and the connect timeout); only our own timeout may
    # decide that a device did not answer, or pymodbus calls the slow answer garbage and, after a
    # few in a row, closes the TCP connection that every device on the gateway shares.
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT_S", 0.2)
    healthy = [intesis(u, poll_s=0.2) for u in (1, 2)]
    slow = DeviceSpec("in3", INTESIS, 3, poll_s=1.0, timeout_s=0.8)  # answers in 0.3 s: in time for it
    dead = [DeviceSpec(f"in{u}", INTESIS, u, poll_s=0.2, timeout_s=0.5) for u in (4, 5, 6)]
    server = Server([img for _s, img in healthy] + [intesis(u)[1] for u in range(3, 7)],
                    delay_s={3: 0.3}, silent={4, 5, 6})
    async with server.tcp():
        rec = Recorder()
        async with ModbusBus(tcp(server, timeout_s=0.2), [s for s, _i in healthy] + [slow, *dead], rec) as bus:
            await online(bus, ["in1", "in2", "in3"], timeout_s=8.0)  # after 3 x 2 attempts of 0.5 s
            await wait_for(lambda: all(rec.last_health(s.device_id) is not None for s in dead))
            server.reset()
            since, start = rec.readings[-1].ts, time.monotonic()
            await asyncio.sleep(3.0)
            window = time.monotonic() - start
            got = {d: rec.count(d, since=since) for d in ("in1", "in2")}
            assert all(bus.online(d) for d in ("in1", "in2", "in3"))
            stats = bus.stats()
    assert server.connects == 1
    assert stats["connects"] == 1
    assert "garbage" not in stats["errors"]
    for dev_id in ("in1", "in2", "in3"):
        assert [h.online for h in rec.health if h.device_id == dev_id] == [True]
    # One transaction at a time: a dead unit's probe holds the line for its 0.5 s and in3 for 0.3 s;
    # the rest of the window the healthy units keep their 0.2 s period.
    busy = 0.5 * sum(server.requests(unit=u) for u in (4, 5, 6)) + 0.3 * server.requests(unit=3)
    for dev_id, n in got.items():
        assert n >= 0.7 * (window - busy) / 0.2, (dev_id, n, window, busy)


# -- RTU over a pty and the multi-bus engine -----------------------------------------------------


async def test_rtu_over_a_pty_polls_writes_and_pulses(tmp_path: Path) -> None:
    specs = acs(4, poll_s=0.3)
    relay = DeviceSpec("relay", RELAY, 2, poll_s=0.3)
    server = Server([ac_unit(specs), Unit(2).fill(relay, {"ch1": True})])
    async with PtyPair(str(tmp_path / "tty")) as pty, server.serial(pty.sim_device):
        rec = Recorder()
        bus = RtuBus(id="rs485-1", type="rtu", device=pty.device, timeout_s=0.5)
        async with ModbusBus(bus, [*specs, relay], rec) as engine:
            await online(engine, ["ac1", "ac4", "relay"])
            assert rec.state("ac3") == ac_values(3)
            assert rec.state("relay")["ch1"] is True
            server.reset()
            await asyncio.sleep(1.0)
            assert server.keys(1, 3) == {(r.address, r.count) for r in plan(specs)}
            assert server.keys(2, 1) == {(0, 8)}
            assert await engine.write("ac4", {"fan": "high"}) == {"fan": "high"}
            assert await engine.write("relay", {"ch5": True}) == {"ch5": True}
            assert (await server.get(2, 1, 0, 8))[5] is True
            await engine.pulse("relay", 2, 0.3)
            assert (await server.get(2, 1, 2, 1)) == [True]
            await wait_for(lambda: rec.state("relay")["ch2"] is True, timeout_s=2.0)
            await wait_for(lambda: rec.state("relay")["ch2"] is False, timeout_s=3.0)


async def test_rtu_late_reply_is_never_taken_for_the_next_answer(tmp_path: Path) -> None:
    # CoolMasterNet: every indoor unit shares unit 1, and VA 1-7 and VA 8-14 are reads of equal size.
    # RTU has no transaction id, so a late frame that lands after the next request went out would
    # be accepted as its answer. The line must stay quiet long enough to drop it.
    timeout_s = 0.8
    first, second = acs(7), acs(7, first=8)
    server = Server([ac_unit([*first, *second])], delay_s={1: 0.4},  # a slow line: every answer takes 0.4 s
                    slow={(1, 16): 1.0})  # and this read is answered after the timeout
    a, b = plan(first), plan(second)
    assert len(a) == len(b) == 1
    assert a[0].count == b[0].count
    async with PtyPair(str(tmp_path / "tty")) as pty, server.serial(pty.sim_device):
        client = transport.make_client(RtuBus(id="rs485-1", type="rtu", device=pty.device))
        assert await transport.connect(client)
        try:
            with pytest.raises(Timeout):
                await transport.read(client, 1, "holding", a[0].address, a[0].count, timeout_s)
            data = await transport.read(client, 1, "holding", b[0].address, b[0].count, timeout_s)
            stale = await server.get(1, 3, a[0].address, a[0].count)
            assert data != stale
            assert data == await server.get(1, 3, b[0].address, b[0].count)
        finally:
            client.close()


async def test_engine_from_config_routes_devices_to_their_buses() -> None:
    specs = acs(2)
    ac_server = Server([ac_unit(specs)])
    relay_server = Server([Unit(1)])
    async with ac_server.tcp(), relay_server.tcp():
        config = Config.model_validate(site(
            gateway="gw-a",
            buses=[tcp_bus("ac-bus", ac_server.port, timeout_s=0.5), tcp_bus("relays", relay_server.port),
                   tcp_bus("unused", 1)],
            devices=[ac("ac1", "ac-bus", 1, index=1, poll_s=0.2),
                     ac("ac2", "ac-bus", 1, index=2, poll_s=0.2, timeout_s=0.4),
                     relay("relays", 1, poll_s=0.2)]))
        rec = Recorder()
        async with ModbusEngine.from_config(config, rec) as engine:
            assert [b.bus.id for b in engine.buses] == ["ac-bus", "relays"]
            await wait_for(lambda: all(engine.online(d) for d in ("ac1", "ac2", "relay-1")))
            assert await engine.write("relay-1", {"ch0": True}) == {"ch0": True}
            await engine.pulse("relay-1", 7, 0.5, on=True)
            await engine.flash("relay-1", 6, seconds=0.5)  # the older name still pulses
            assert await engine.write("ac2", {"power_on": False}) == {"power_on": False}
            with pytest.raises(WriteError) as err:
                await engine.pulse("ac1", 0, 5.0)
            assert err.value.code == "bad_request"
            with pytest.raises(WriteError) as err:
                await engine.pulse("relay-1", 8, 5.0)
            assert err.value.code == "out_of_range"
            with pytest.raises(WriteError) as err:
                await engine.write("nope", {"on": True})
            assert err.value.code == "bad_request"
            await asyncio.sleep(0.5)
            stats = engine.stats()
            assert set(stats) == {"ac-bus", "relays"}
            assert stats["relays"]["pulses"] == 2
            assert stats["ac-bus"]["devices"]["ac1"]["poll_period_s"]["n"] >= 1
        # plain FC05 to coil 0, pulses of relays 7 and 6
        assert relay_server.keys(1, 5) >= {(0, 0), (0x0207, 0), (0x0206, 0)}


# -- installer tools --------------------------------------------------------------------------------


async def test_scan_finds_the_units_that_answer() -> None:
    units = [Unit(1), Unit(3), Unit(7)]
    # the pymodbus server answers unknown ids with an exception; a real line stays silent
    server = Server(units, silent=set(range(1, 248)) - {1, 3, 7}, refuse={7: [(3, 0, 1)]})
    async with server.tcp():
        found = await tools.scan(tcp(server), units=range(1, 10), timeout_s=0.05)
    assert found == [1, 3, 7]  # unit 7 refuses the probe register, which still proves it is there


async def test_read_decodes_raw_registers() -> None:
    meter = DeviceSpec("meter", SDM630, 1)
    ac = DeviceSpec("ac1", COOLMASTER, 2, 1)
    relay = DeviceSpec("relay", RELAY, 3)
    server = Server([Unit(1, input=[0] * 400).fill(meter, {"power_w": 12345.0, "freq_hz": 59.5}),
                     Unit(2, holding=[0] * 40).fill(ac, {"room_temp_c": -3.5}),
                     Unit(3).fill(relay, {"ch2": True})])
    async with server.tcp():
        bus = tcp(server)
        assert await tools.read(bus, 1, "input", 0x34, datatype="float32") == [12345.0]
        assert await tools.read(bus, 1, "input", 0x46, 1, "float32") == [59.5]
        assert await tools.read(bus, 2, "holding", 22, 1, "int16") == [-35]
        assert await tools.read(bus, 2, "holding", 22, 1) == [65501]
        assert await tools.read(bus, 3, "coil", 0, 4) == [False, False, True, False]
        with pytest.raises(DeviceException) as err:
            await tools.read(bus, 2, "holding", 1000, 2)
        assert err.value.code == 2
    with pytest.raises(Disconnected):
        await tools.read(bus, 1, "input", 0, 2)
