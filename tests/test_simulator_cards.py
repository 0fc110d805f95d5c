"""The virtual school's cards and beacons: frames the real decoders read, a seeded school day, readers on real
ptys, and beacon advertisements through the daemon's development backend (real sockets) to a presence arrival."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.sites import channel, relay, site, tcp_bus
from hypothesis import given
from hypothesis import strategies as st

from drivers.beacon.datagram import DatagramBackend, encode_line, endpoint, parse_line
from drivers.beacon.driver import AutoBackend, BeaconDriver, ScannerUnavailable
from drivers.beacon.ibeacon import from_advertising_data
from drivers.modbus.profile import load_profile
from drivers.rfid import framing as real
from drivers.rfid.framing import FRAMINGS, decoder
from edge.core.access import GRANTED, UNKNOWN_CARD, WRONG_DOOR, decide, load_access
from edge.core.clock import ManualClock, ScaledClock, SystemClock
from edge.core.config import BeaconScanner, Config
from edge.core.model import DeviceState
from simulator import beacons, cards
from simulator.app import VirtualSchool
from simulator.registers import RelayModel

TZ = ZoneInfo("Asia/Taipei")
TUESDAY = date(2026, 6, 16)
SCHOOL_UUID = "5a1d0c3e-7b44-4c1f-9a63-014601000000"
TAG_1, TAG_STAFF = f"{SCHOOL_UUID}:201:1", f"{SCHOOL_UUID}:201:9"


def at(day: date, hh: int, mm: int, ss: int = 0) -> float:
    return datetime.combine(day, time(hh, mm, ss), tzinfo=TZ).timestamp()


def school_config(tmp: Path, *, seed: int = 7, adapter: str | None = None) -> Config:
    """Rooms 101 (4 pupils) and 102 (3) with doors, an office with a door and nobody; a gate, a door and a
    health reader on ptys; a beacon scanner on `adapter` knowing a pupil's tag and a teacher's."""
    devices = [relay("bus", 1), channel("door-101", "door", 0, room="101"), channel("door-102", "door", 1, room="102"),
               channel("door-office", "door", 2, room="office"), channel("light-101", "light", 3, room="101"),
               {"id": "gate", "kind": "rfid", "port": str(tmp / "rfid-gate"), "framing": "rdm6300", "purpose": "gate"},
               {"id": "door", "kind": "rfid", "port": str(tmp / "rfid-door"), "framing": "wiegand26",
                "purpose": "door", "door": "door-101"},
               {"id": "nurse", "kind": "rfid", "port": str(tmp / "rfid-nurse"), "framing": "line", "purpose": "health"},
               {"id": "net", "kind": "rfid", "port": "socket://127.0.0.1:9", "framing": "line", "purpose": "gate"}]
    if adapter is not None:
        devices.append({"id": "ble", "kind": "beacon_scanner", "adapter": adapter,
                        "beacons": {TAG_1: "S10101", TAG_STAFF: "T900"}})
    raw = site(tmp, timezone="Asia/Taipei", buses=[tcp_bus("bus", free_port())],
               rooms=[{"id": "101", "pupils": 4}, {"id": "102", "pupils": 3}, {"id": "office", "pupils": 0},
                      {"id": "103", "pupils": 20}],
               devices=devices, simulation={"seed": seed})
    return Config.model_validate(raw)


# -- the bytes ------------------------------------------------------------------------------------------
def test_the_contract_example_card() -> None:
    # DOMAIN.md section 8: data 1A 00 D5 07 D0, checksum 0x18; FC 213 card 2000 is 13961168 in Wiegand 26
    assert real.rdm6300_frame(13961168) == b"\x021A00D507D018\x03"
    assert real.wiegand_frame(13961168, 26)[:-2].decode() == real.wiegand_bits(213 << 16 | 2000, 26)
    assert real.line_frame(13961168) == b"0013961168\r\n"


@given(st.integers(0, (1 << 24) - 1), st.sampled_from(FRAMINGS))
def test_every_framing_decodes_to_the_card_with_the_drivers_decoder(card: int, framing: real.Framing) -> None:
    dec = decoder(framing)
    held = cards.RDM6300_HELD if framing == "rdm6300" else 1
    assert dec.feed(cards.frame(framing, card)) == [str(card)] * held
    assert not dec.drops
    assert cards.frame(framing, card) == real.frame(framing, card) * held   # the drivers' own encoder, byte for byte


@given(st.integers(0, (1 << 24) - 1), st.sampled_from([26, 34]), st.data())
def test_a_wiegand_frame_with_one_bit_flipped_is_refused(card: int, bits: Literal[26, 34], data: st.DataObject) -> None:
    line = bytearray(real.wiegand_frame(card, bits))
    i = data.draw(st.integers(0, bits - 1))
    line[i] = ord("1") if line[i] == ord("0") else ord("0")
    dec = decoder("wiegand26" if bits == 26 else "wiegand34")
    assert dec.feed(bytes(line)) == []
    assert dec.drops["parity"] == 1


def test_a_card_too_wide_for_wiegand26_is_refused() -> None:
    real.wiegand_frame((1 << 24) - 1, 26)
    with pytest.raises(ValueError, match="24 data bits"):
        real.wiegand_frame(1 << 24, 26)


# -- who and when ---------------------------------------------------------------------------------------
def test_the_roster_is_the_pupils_of_the_rooms_with_doors(tmp_path: Path) -> None:
    r = cards.roster(school_config(tmp_path))
    assert [p.person for p in r.pupils] == ["S10101", "S10102", "S10103", "S10104", "S10201", "S10202", "S10203"]
    assert {p.room: p.doors for p in r.pupils} == {"101": ("door-101",), "102": ("door-102",)}
    assert len({p.card for p in r.pupils}) == len(r.pupils)
    assert all(p.card >> 16 == cards.FACILITY and p.card < 1 << 24 for p in r.pupils)
    assert cards.UNKNOWN_CARD not in {p.card for p in r.pupils}
    assert (r.gates, dict(r.doors), r.health) == (("gate", "net"), {"door": "door-101"}, ("nurse",))
    assert cards.roster(school_config(tmp_path)) == r                      # seeded: the same school every run
    assert cards.roster(school_config(tmp_path, seed=8)).pupils != r.pupils


def test_a_school_day(tmp_path: Path) -> None:
    r = cards.roster(school_config(tmp_path))
    plan = cards.day_plan(r, TUESDAY)
    assert plan == cards.day_plan(r, TUESDAY)
    assert [t.ts for t in plan.taps] == sorted(t.ts for t in plan.taps)
    arrivals = [t for t in plan.taps if t.what == "arrival"]
    departures = [t for t in plan.taps if t.what == "departure"]
    assert sorted(str(t.person) for t in arrivals) == sorted(plan.on_site) == sorted(str(t.person) for t in departures)
    assert len(plan.on_site) >= len(r.pupils) - 2
    for t in arrivals:
        assert at(TUESDAY, 7, 20) <= t.ts <= at(TUESDAY, 7, 50)
        assert plan.on_site[str(t.person)][0] == t.ts
    for t in departures:
        assert at(TUESDAY, 16, 0) <= t.ts <= at(TUESDAY, 16, 30)
    assert {t.reader for t in arrivals} == {"gate", "net"}                # pupils spread over the gate readers
    by_card = {p.card: p for p in r.pupils}
    door = [t for t in plan.taps if t.what == "door"]
    assert door[0].ts == at(TUESDAY, 7, 52)
    assert len(door) == 3 * 49                                          # 07:52, 08:02 ... 15:52
    for i in range(0, len(door), 3):
        mine, unknown, other = door[i:i + 3]
        assert mine.ts + 60 == unknown.ts
        assert unknown.ts + 60 == other.ts
        assert mine.ts == at(TUESDAY, 7, 52) + 600 * (i // 3)
        assert "door-101" in by_card[mine.card].doors
        assert mine.person in plan.on_site
        assert unknown.card == cards.UNKNOWN_CARD
        assert unknown.person is None
        assert "door-101" not in by_card[other.card].doors
        assert other.person in plan.on_site
    health = [t for t in plan.taps if t.what == "health"]
    assert [t.ts for t in health] == [at(TUESDAY, 8, 5) + 3000 * k for k in range(9)]
    assert {t.reader for t in health} == {"nurse"}
    assert cards.day_plan(r, TUESDAY + timedelta(days=1)).taps != plan.taps
    assert cards.day_plan(r, date(2026, 6, 20)) == cards.DayPlan(date(2026, 6, 20), (), {})   # a Saturday


def test_taps_are_played_once_in_order_from_the_start_across_days(tmp_path: Path) -> None:
    days = cards.Days(cards.roster(school_config(tmp_path)))
    friday = date(2026, 6, 19)
    player = cards.TapPlayer(days, at(friday, 7, 40))
    first = player.due(at(friday, 7, 45))
    assert first
    assert all(at(friday, 7, 40) < t.ts <= at(friday, 7, 45) for t in first)
    assert first == [t for t in days.plan(friday).taps if at(friday, 7, 40) < t.ts <= at(friday, 7, 45)]
    assert player.due(at(friday, 7, 45)) == []
    rest = player.due(at(friday + timedelta(days=3), 7, 30))                # Friday's rest, the weekend, Monday
    assert rest[0].ts > first[-1].ts
    assert [t for t in rest if t.ts < at(friday + timedelta(days=1), 0, 0)] == \
        [t for t in days.plan(friday).taps if t.ts > at(friday, 7, 45)]
    monday = [t for t in rest if t.ts >= at(friday + timedelta(days=3), 0, 0)]
    assert monday
    assert all(t.what == "arrival" and t.ts <= at(friday + timedelta(days=3), 7, 30) for t in monday)


def test_the_access_list_the_app_sends_lets_each_pupil_through_their_own_door(tmp_path: Path) -> None:
    r = cards.roster(school_config(tmp_path))
    allow = load_access(json.dumps(cards.access_list(r.pupils, 3)))
    now = at(TUESDAY, 7, 52)
    assert allow.version == 3
    assert len(allow) == len(r.pupils)
    first, other = r.pupils[0], r.pupils[-1]
    assert decide(allow, str(first.card), "door-101", now, TZ).reason == GRANTED
    assert decide(allow, str(first.card), "door-101", now, TZ).person == first.person
    assert decide(allow, str(other.card), "door-101", now, TZ).reason == WRONG_DOOR
    assert decide(allow, str(cards.UNKNOWN_CARD), "door-101", now, TZ).reason == UNKNOWN_CARD
    dated = load_access(json.dumps(cards.access_list(r.pupils, 4, valid_until=TUESDAY)))
    assert decide(dated, str(first.card), "door-101", at(TUESDAY, 23, 0), TZ).granted
    assert not decide(dated, str(first.card), "door-101", at(TUESDAY, 23, 0) + 3600, TZ).granted


# -- readers on ptys --------------------------------------------------------------------------------------
def _links(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if p.is_symlink()]


def _read_all(fd: int) -> bytes:
    out = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 4096):
            out += chunk
    return out


async def test_readers_tap_the_days_cards_on_their_ptys(tmp_path: Path) -> None:
    cfg = school_config(tmp_path)
    clock = ManualClock(start=at(TUESDAY, 7, 19))
    async with VirtualSchool(cfg, clock=clock, readers=True) as school:
        assert set(school.readers) == {"gate", "door", "nurse"}             # socket:// readers are not served
        fds = {rid: os.open(r.port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK) for rid, r in school.readers.items()}
        try:
            clock.advance(at(TUESDAY, 8, 6) - clock.time())
            school.sync()
            await asyncio.sleep(0.2)   # socat carries the bytes across
            got = {rid: decoder(school.readers[rid].framing).feed(_read_all(fd)) for rid, fd in fds.items()}
        finally:
            for fd in fds.values():
                os.close(fd)
        played = list(school.played)
        assert {t.what for t in played} == {"arrival", "door", "health"}
        for rid in fds:
            held = cards.RDM6300_HELD if school.readers[rid].framing == "rdm6300" else 1
            assert got[rid] == [str(t.card) for t in played if t.reader == rid for _ in range(held)], rid
        assert [t.card for t in played if t.reader == "door"][:3] == [t.card for t in cards.day_plan(
            school.days.roster, TUESDAY).taps if t.reader == "door"][:3]
        assert school.reader_counts["dropped"] == 0
    assert not _links(tmp_path), "pty links left behind"


async def test_without_readers_the_school_leaves_readers_and_scanners_to_others(tmp_path: Path) -> None:
    cfg = school_config(tmp_path, adapter=f"unixgram://{tmp_path}/ble.sock")
    clock = ManualClock(start=at(TUESDAY, 7, 19))
    async with VirtualSchool(cfg, clock=clock) as school:   # as the in-process tests that run their own ptys
        assert (school.readers, school.scanners) == ({}, {})
        clock.advance(3600)
        school.sync()
        assert not _links(tmp_path)
        assert not school.played


# -- beacons ----------------------------------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self.health: list[tuple[str, bool, str | None]] = []
        self.states: list[tuple[str, DeviceState]] = []

    def on_state(self, device_id: str, state: DeviceState, online: bool, ts: float) -> None:
        self.states.append((device_id, state))

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        self.health.append((device_id, online, reason))

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        self.events.append((kind, body))

    def arrivals(self) -> list[str | None]:
        return [b["person"] for k, b in self.events if k == "presence" and b["change"] == "arrive"]


@contextlib.asynccontextmanager
async def scanning(cfg: Config, sink: Sink) -> AsyncIterator[BeaconDriver]:
    drv = BeaconDriver.from_config(cfg, sink, SystemClock())   # the default backend, as in the daemon
    assert drv is not None
    async with drv:
        await until(lambda: bool(sink.states), within=5, what="the dev backend to listen")
        yield drv


@pytest.mark.parametrize("kind", ["unixgram", "udp"])
async def test_the_schools_beacons_make_presence_arrive_through_the_dev_backend(tmp_path: Path, kind: str) -> None:
    adapter = f"unixgram://{tmp_path}/ble.sock" if kind == "unixgram" else f"udp://127.0.0.1:{free_udp_port()}"
    cfg = school_config(tmp_path, adapter=adapter)
    clock = ManualClock(start=at(TUESDAY, 7, 19))
    sink = Sink()
    async with scanning(cfg, sink) as drv, VirtualSchool(cfg, clock=clock, readers=True) as school:
        pupil_in = school.days.plan(TUESDAY).on_site["S10101"][0]
        while "S10101" not in sink.arrivals() or "T900" not in sink.arrivals():
            assert clock.time() < at(TUESDAY, 8, 0), sink.events
            clock.advance(30)
            school.sync()
            await asyncio.sleep(0.03)
        assert sink.arrivals().count("S10101") == 1
        assert clock.time() >= pupil_in                                   # not before the pupil came through the gate
        assert clock.time() >= at(TUESDAY, 7, 30)                          # the teacher is on site from 07:30
        assert None not in sink.arrivals()                                 # the stranger's beacon is nobody's
        stats = drv.stats()["scanners"]["ble"]
        assert stats["advertisements"] > stats["ibeacons"] > 0              # other devices' adverts are heard, too
        assert school.senders["ble"].counts["sent"] > 0
    if kind == "unixgram":
        assert not (tmp_path / "ble.sock").exists()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_advertisements_are_ibeacons_the_parser_reads() -> None:
    ad = beacons.ibeacon_ad(TAG_1, power=-59)
    found = from_advertising_data(ad)
    assert found is not None
    assert (found.identity, found.power_dbm) == (TAG_1, -59)
    assert len(ad) <= 31                                                # fits a legacy advertisement
    assert from_advertising_data(beacons.other_ad(random.Random(1))) is None
    assert parse_line(beacons.line("AA:BB:CC:DD:EE:FF", -61, ad)) == ("AA:BB:CC:DD:EE:FF", -61, ad)


def _heard(datagrams: list[bytes]) -> list[str | None]:
    """The iBeacon identities (None for anything else) in a stream's datagrams."""
    out: list[str | None] = []
    for d in datagrams:
        for raw in d.splitlines():
            parsed = parse_line(raw)
            assert parsed is not None
            found = from_advertising_data(parsed[2])
            out.append(None if found is None else found.identity)
    return out


def test_the_beacon_stream_follows_the_school_day_at_the_gateways_pace(tmp_path: Path) -> None:
    cfg = school_config(tmp_path, adapter="udp://127.0.0.1:9")
    days = cards.Days(cards.roster(cfg))
    scanner = next(d for d in cfg.devices if d.id == "ble")
    assert isinstance(scanner, BeaconScanner)
    arrives, leaves = days.plan(TUESDAY).on_site["S10101"]
    stream = beacons.BeaconStream(scanner, days, at(TUESDAY, 6, 0), scale=20.0)
    assert stream.period_s == 20.0                                      # one advert a second of gateway time
    assert _heard(stream.due(at(TUESDAY, 7, 0))) == [None]               # before school: only other devices
    assert stream.due(at(TUESDAY, 7, 0) + 15) == []                     # not again within the period
    assert _heard(stream.due(at(TUESDAY, 7, 0) + 25)) == [None]
    t = at(TUESDAY, 7, 30, 30)                                          # the teacher and the stranger are in
    assert set(_heard(stream.due(t))) == {None, TAG_STAFF, beacons.STRANGER} | ({TAG_1} if arrives <= t else set())
    assert TAG_1 in _heard(stream.due(arrives + 1))                     # the pupil, once through the gate
    assert TAG_1 not in _heard(stream.due(leaves + 1))                  # and no more once gone
    assert _heard(stream.due(at(date(2026, 6, 20), 10, 0))) == [None]    # a Saturday


# -- the development backend --------------------------------------------------------------------------------
class Heard:
    def __init__(self) -> None:
        self.started_n = 0
        self.raw_seen: list[tuple[str, bytes, int]] = []

    def started(self) -> None:
        self.started_n += 1

    def detected(self, device: Any, adv: Any) -> None:
        raise AssertionError("the dev backend hands over raw bytes")

    def raw(self, address: str, data: bytes, rssi: int) -> None:
        self.raw_seen.append((address, data, rssi))


@contextlib.asynccontextmanager
async def backend_on(adapter: str) -> AsyncIterator[tuple[DatagramBackend, Heard]]:
    backend, heard = DatagramBackend(), Heard()
    task = asyncio.create_task(backend.scan(adapter, heard))
    try:
        await until(lambda: heard.started_n == 1 or task.done(), within=5, what="the backend to listen")
        if task.done():
            task.result()
        yield backend, heard
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_udp_lines_reach_the_scanner_and_bad_ones_are_counted() -> None:
    port = free_udp_port()
    ad = beacons.ibeacon_ad(TAG_1)
    async with backend_on(f"udp://127.0.0.1:{port}") as (backend, heard):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.sendto(encode_line("aa:bb:cc:dd:ee:ff", -61, ad) + b"not a line\n" + encode_line("11:22:33:44:55:66",
                                                                                                 -80, b"\x02\x01\x06"),
                      ("127.0.0.1", port))
            tx.sendto(b"AA:BB:CC:DD:EE:FF -61 0201\r\n\r\n", ("127.0.0.1", port))
            await until(lambda: len(heard.raw_seen) == 3, within=5, what="three advertisements")
    assert heard.raw_seen == [("AA:BB:CC:DD:EE:FF", ad, -61), ("11:22:33:44:55:66", b"\x02\x01\x06", -80),
                              ("AA:BB:CC:DD:EE:FF", b"\x02\x01", -61)]
    assert (backend.counts["datagrams"], backend.counts["lines"], backend.counts["bad_lines"]) == (2, 3, 1)


@pytest.mark.parametrize("line", [b"AA:BB:CC:DD:EE -61 0201", b"AA:BB:CC:DD:EE:FF x 0201", b"AA:BB:CC:DD:EE:FF -61 021",
                                  b"AA:BB:CC:DD:EE:FF -61", b"AA:BB:CC:DD:EE:FF -61 zz01", b"-61 0201",
                                  b"AA:BB:CC:DD:EE:FF -61 " + b"00" * 63])
def test_lines_that_are_not_address_rssi_hex_are_refused(line: bytes) -> None:
    assert parse_line(line) is None


def test_only_loopback_and_well_formed_adapters_are_opened() -> None:
    assert endpoint("udp://127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert endpoint("udp://[::1]:4000") == ("::1", 4000)
    assert endpoint("unixgram:///run/x/ble.sock") == "/run/x/ble.sock"
    for bad, why in (("udp://192.168.1.5:4000", "loopback only"), ("udp://example.org:4000", "loopback only"),
                     ("udp://127.0.0.1", "expected"), ("udp://127.0.0.1:0", "expected"), ("unixgram://", "expected")):
        with pytest.raises(ValueError, match=why):
            endpoint(bad)


async def test_a_non_loopback_adapter_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ScannerUnavailable, match="loopback only"):
        await DatagramBackend().scan("udp://10.0.0.1:4000", Heard())


async def test_the_unix_socket_replaces_a_stale_one_refuses_a_live_one_and_is_removed_after(tmp_path: Path) -> None:
    path = tmp_path / "ble.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(path))
    stale.close()                                                       # the file stays: a crashed run's
    async with backend_on(f"unixgram://{path}") as (_backend, heard):
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with pytest.raises(ScannerUnavailable, match="another process listens"):
            await DatagramBackend().scan(f"unixgram://{path}", Heard())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as tx:
            tx.sendto(encode_line("AA:BB:CC:DD:EE:FF", -50, b"\x02\x01\x06"), str(path))
        await until(lambda: len(heard.raw_seen) == 1, within=5, what="the advertisement")
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(ScannerUnavailable, match="not a socket"):
        await DatagramBackend().scan(f"unixgram://{path}", Heard())
    assert path.read_text() == "not a socket"


async def test_the_default_backend_picks_the_radio_or_the_datagrams_by_adapter(tmp_path: Path) -> None:
    calls: list[tuple[str, str | None]] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        async def scan(self, adapter: str | None, to: Any) -> None:
            calls.append((self.name, adapter))

    auto = AutoBackend()
    auto.bleak, auto.datagram = Fake("bleak"), Fake("datagram")  # type: ignore[assignment]
    for adapter in (None, "hci0", f"unixgram://{tmp_path}/s", "udp://127.0.0.1:5000"):
        await auto.scan(adapter, Heard())
    assert calls == [("bleak", None), ("bleak", "hci0"), ("datagram", f"unixgram://{tmp_path}/s"),
                     ("datagram", "udp://127.0.0.1:5000")]


# -- the relay board's timer keeps the gateway's seconds ------------------------------------------------------
class SteeredClock(ScaledClock):
    """A ScaledClock (so the school knows its speed) whose time the test sets."""

    def __init__(self, speed: float, start: float) -> None:
        super().__init__(speed, start)
        self.now = start

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("speed", [1.0, 50.0])
async def test_a_door_pulse_lasts_its_seconds_of_gateway_time_at_any_speed(tmp_path: Path, speed: float) -> None:
    cfg = school_config(tmp_path)
    clock = SteeredClock(speed, at(TUESDAY, 10, 0))
    school = VirtualSchool(cfg, clock=clock)   # not entered: the registers only
    pulse = load_profile("waveshare-relay-8ch").pulse
    assert pulse is not None
    board = school.devices["relay-1"]
    assert isinstance(board, RelayModel)
    board.coil_write(pulse.on_address + 0, 7, clock.now)   # 7 x 100 ms: a 0.7 s unlock
    assert school.relay("relay-1")[0] is True
    clock.now += 0.65 * speed
    school.sync()
    assert school.relay("relay-1")[0] is True
    clock.now += 0.1 * speed
    school.sync()
    assert school.relay("relay-1")[0] is False


async def test_a_unix_socket_that_cannot_be_served_is_closed_and_removed(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ble.sock"
    loop = asyncio.get_running_loop()

    async def refuse(*_a: Any, **_kw: Any) -> Any:
        raise OSError("no more file descriptors")

    monkeypatch.setattr(loop, "create_datagram_endpoint", refuse)
    with pytest.raises(ScannerUnavailable, match="no more file descriptors"):
        await DatagramBackend().scan(f"unixgram://{path}", Heard())
    assert not path.exists()          # the next try binds afresh instead of "another process listens"
