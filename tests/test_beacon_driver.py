"""The beacon driver: a fake radio feeding bleak's own objects and the fixture bytes, inside the real daemon;
and the real bleak backend on this machine, which has no Bluetooth: said once, and the daemon runs on."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from conftest import until

from drivers.beacon.driver import BeaconDriver, Detections, ScannerUnavailable, settings_of, unavailable_reason
from edge.core.arbiter import Source
from edge.core.clock import Clock, ScaledClock, SystemClock
from edge.core.config import BeaconScanner, Config
from edge.core.control import Ask
from edge.core.driver import ApplyError
from edge.core.events import Message
from edge.core.model import Kind, ReaderState
from edge.daemon import DEFAULT_DRIVERS, Daemon, beacon_driver

OTHERS = tuple(f for f in DEFAULT_DRIVERS if f is not beacon_driver)  # the real drivers but ours

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "beacon"
CASES = {c["name"]: c for c in json.loads((FIXTURES / "advertisements.json").read_text())}
SCHOOL_UUID = "5a1d0c3e-7b44-4c1f-9a63-014601000000"
ALICE = f"{SCHOOL_UUID}:14601:1001"           # the beacon of `school_phone_with_name_first`
BOB = f"{SCHOOL_UUID}:7:8"                     # the beacon of `padded_to_31_bytes`
PEOPLE = {ALICE: "S1001", BOB.upper(): "S1002"}


def ibeacon_adv(minor: int, rssi: int) -> AdvertisementData:
    data = bytes.fromhex("0215" + SCHOOL_UUID.replace("-", "")) + (14601).to_bytes(2, "big") \
        + minor.to_bytes(2, "big") + b"\xc5"
    return AdvertisementData(local_name=None, manufacturer_data={0x004C: data}, service_data={}, service_uuids=[],
                             tx_power=None, rssi=rssi, platform_data=())


PHONE = BLEDevice("5A:1D:0C:3E:7B:44", None, None)


class FakeRadio:
    """A ScannerBackend: each scan attempt takes the next scripted failure, else listens until cancelled."""

    def __init__(self, failures: list[str | Exception] | None = None) -> None:
        self.failures = list(failures or [])
        self.listeners: dict[str | None, Detections] = {}
        self.scans = 0
        self._running: dict[str | None, asyncio.Future[None]] = {}

    async def scan(self, adapter: str | None, to: Detections) -> None:
        self.scans += 1
        if self.failures:
            failure = self.failures.pop(0)
            raise ScannerUnavailable(failure) if isinstance(failure, str) else failure
        self.listeners[adapter] = to
        self._running[adapter] = asyncio.get_running_loop().create_future()
        to.started()
        try:
            await self._running[adapter]
        finally:
            del self.listeners[adapter], self._running[adapter]

    def fail_now(self, reason: str, adapter: str | None = None) -> None:
        """The radio dies under a running scan (a dongle pulled out)."""
        self._running[adapter].set_exception(ScannerUnavailable(reason))

    def hear(self, adv: AdvertisementData, adapter: str | None = None) -> None:
        self.listeners[adapter].detected(PHONE, adv)

    def hear_raw(self, case: str, adapter: str | None = None) -> None:
        c = CASES[case]
        self.listeners[adapter].raw(PHONE.address, bytes.fromhex(c["hex"]), c["rssi"])


class Sink:
    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.states: list[tuple[str, ReaderState, bool]] = []
        self.state_ts: list[float] = []
        self.health: list[tuple[str, bool, str | None]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.event_ts: list[float] = []

    def on_state(self, device_id: str, state: Any, online: bool, ts: float) -> None:
        self.states.append((device_id, state, online))
        self.state_ts.append(ts)

    def on_health(self, device_id: str, online: bool, reason: str | None) -> None:
        self.health.append((device_id, online, reason))

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        self.events.append((kind, dict(body)))
        self.event_ts.append(self.clock.time())

    def presence(self) -> list[tuple[str | None, str]]:
        return [(b["person"], b["change"]) for k, b in self.events if k == "presence"]


def site(tmp: Path, **scanner: Any) -> Config:
    return Config.model_validate({
        "site": {"school_id": "014601", "gateway_id": "gw-ble"},
        "storage": {"path": str(tmp / "state")},
        "devices": [{"id": "gate-ble", "kind": "beacon_scanner", **scanner}],
    })


def driver(tmp: Path, sink: Sink, radio: FakeRadio, clock: Clock | None = None, **kw: Any) -> BeaconDriver:
    drv = BeaconDriver.from_config(site(tmp, **kw.pop("scanner", {})), sink, clock or SystemClock(),
                                   backend=radio, people=PEOPLE, **kw)
    assert drv is not None
    return drv


async def test_arrive_from_bleak_objects_and_from_raw_bytes(tmp_path: Path) -> None:
    sink, radio = Sink(), FakeRadio()
    async with driver(tmp_path, sink, radio) as drv:
        await until(lambda: None in radio.listeners, what="the scan")
        assert sink.states == [("gate-ble", ReaderState(port_open=True), True)]
        for _ in range(3):
            radio.hear(ibeacon_adv(1001, -61))
        for _ in range(3):
            radio.hear_raw("padded_to_31_bytes")
        for name in ("altbeacon_not_ibeacon", "eddystone_uid_not_ibeacon", "tag_aprbrother_default"):
            radio.hear_raw(name)
        assert [b for k, b in sink.events if k == "presence"] == [
            {"scanner": "gate-ble", "beacon": ALICE, "person": "S1001", "change": "arrive", "rssi": -61.0},
            {"scanner": "gate-ble", "beacon": BOB, "person": "S1002", "change": "arrive", "rssi": -60.0}]
        stats = drv.stats()["scanners"]["gate-ble"]
        assert (stats["advertisements"], stats["ibeacons"], stats["ignored"], stats["present"]) == (9, 7, 1, 2)
        assert drv.stuck(5.0) == []
    assert radio.listeners == {}
    assert sink.health == []


async def test_departure_after_the_away_time(tmp_path: Path) -> None:
    sink, radio = Sink(), FakeRadio()
    clock = ScaledClock(speed=200)               # the configured 180 s pass in 0.9 s
    async with driver(tmp_path, sink, radio, clock, scanner={"away_s": 180}):
        await until(lambda: None in radio.listeners, what="the scan")
        for _ in range(3):
            radio.hear(ibeacon_adv(1001, -60))
        t0 = clock.monotonic()
        await until(lambda: len(sink.presence()) == 2, what="the departure")
        assert clock.monotonic() - t0 >= 180
        assert sink.presence() == [("S1001", "arrive"), ("S1001", "depart")]


async def test_no_radio_is_said_once_retried_rarely_and_recovered(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    radio = FakeRadio(["no Bluetooth: No Bluetooth adapters found."] * 4)
    clock = ScaledClock(speed=1000)
    t0 = clock.monotonic()
    with caplog.at_level(logging.DEBUG, logger="campus_edge.beacon"):
        async with driver(tmp_path, sink, radio, clock):
            await until(lambda: None in radio.listeners, what="the radio after four failures")
            # rarely: the backoff doubles from 30 s, 30 + 60 + 120 + 240 simulated seconds (± 20 % jitter)
            assert clock.monotonic() - t0 >= 0.8 * 450
            warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert [r.getMessage().split(";")[0] for r in warnings] == [
                "beacon scanner gate-ble: no Bluetooth: No Bluetooth adapters found."]
            assert sink.health == [("gate-ble", False, "no Bluetooth: No Bluetooth adapters found."),
                                   ("gate-ble", True, None)]
            assert [(s.port_open, online) for _, s, online in sink.states] == [(False, False), (True, True)]
            assert radio.scans == 5
    assert any("scanning again" in r.getMessage() for r in caplog.records)


async def test_nobody_departs_while_the_radio_is_down(tmp_path: Path) -> None:
    radio, clock = FakeRadio(), ScaledClock(speed=1000)
    sink = Sink(clock)
    async with driver(tmp_path, sink, radio, clock, scanner={"away_s": 180}, retry_base_s=400, retry_max_s=400):
        await until(lambda: None in radio.listeners, what="the scan")
        for _ in range(3):
            radio.hear(ibeacon_adv(1001, -60))
        radio.failures = ["still no dongle"]
        radio.fail_now("the dongle was pulled out")
        await until(lambda: sink.health[-1:] == [("gate-ble", False, "the dongle was pulled out")],
                    what="the radio reported down")
        t_down = clock.monotonic()
        # two tries 400 s (± 20 %) apart, the first fails: down for at least 640 s
        await until(lambda: clock.monotonic() - t_down > 500, what="well past the away time")
        assert None not in radio.listeners
        assert sink.presence() == [("S1001", "arrive")]
        await until(lambda: None in radio.listeners, within=15, what="the radio back")
        await until(lambda: len(sink.presence()) == 2, what="the departure")
        assert [s.port_open for _, s, _ in sink.states][:3] == [True, False, True]   # then quiet restarts
        assert sink.event_ts[-1] - sink.state_ts[2] >= 180     # away time counted from the radio's return


async def test_a_silent_radio_is_restarted_quietly(tmp_path: Path) -> None:
    sink, radio = Sink(), FakeRadio()
    clock = ScaledClock(speed=1000)
    async with driver(tmp_path, sink, radio, clock, silence_s=120) as drv:
        await until(lambda: drv.stats()["scanners"]["gate-ble"].get("silence_restarts", 0) >= 2,
                    what="two restarts of a deaf scan")
        assert sink.health == []
        assert radio.scans >= 3


async def test_a_surprise_from_the_backend_does_not_end_the_driver(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    sink, radio = Sink(), FakeRadio([RuntimeError("driver bug")])
    async with driver(tmp_path, sink, radio, ScaledClock(speed=1000)):
        await until(lambda: None in radio.listeners, what="the scan after the surprise")
    assert sink.health[0] == ("gate-ble", False, "RuntimeError: driver bug")
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.WARNING)


async def test_a_scanner_takes_no_commands(tmp_path: Path) -> None:
    drv = driver(tmp_path, Sink(), FakeRadio())
    assert drv.devices() == {"gate-ble": Kind.BEACON_SCANNER}
    assert drv.capabilities("gate-ble") == frozenset()
    with pytest.raises(ApplyError) as err:
        await drv.apply("gate-ble", {"on": True})
    assert err.value.code == "bad_request"
    with pytest.raises(ApplyError) as err:
        await drv.pulse("gate-ble", 3)
    assert err.value.code == "bad_request"


def test_settings_from_config_with_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = site(tmp_path, adapter="hci1", away_s=240)
    dev = cfg.devices[0]
    assert isinstance(dev, BeaconScanner)
    s = settings_of(dev, {BOB.upper(): "S1002", "not a beacon": "S9"})
    assert (s.id, s.adapter, s.rules.away_s, s.rules.enter_dbm) == ("gate-ble", "hci1", 240, -80)
    assert s.report_unknown is False
    assert s.people == {BOB: "S1002"}
    assert "'not a beacon' is not UUID:major:minor" in caplog.text
    assert BeaconDriver.from_config(Config.model_validate({"site": {"school_id": "1", "gateway_id": "g"}}),
                                    Sink(), SystemClock()) is None


def test_reasons_say_what_is_missing() -> None:
    assert "no D-Bus system bus" in unavailable_reason(FileNotFoundError(2, "No such file or directory"), None)
    assert "did not answer" in unavailable_reason(TimeoutError(), "hci0")
    assert "BlueZ (bluetoothd) is not running" in unavailable_reason(
        Exception("[org.freedesktop.DBus.Error.ServiceUnknown] The name org.bluez was not provided"), None)
    assert unavailable_reason(ValueError("x"), "hci1") == "no Bluetooth on adapter hci1: ValueError: x"


# -- inside the real daemon ----------------------------------------------------------------------------

def presence_events(daemon: Daemon) -> Any:
    return daemon.bus.subscribe("event", name="test")


async def next_presence(queue: asyncio.Queue[Message]) -> dict[str, Any]:
    while True:
        msg = await asyncio.wait_for(queue.get(), 5)
        if msg.payload["kind"] == "presence":
            return dict(msg.payload)


async def test_presence_reaches_the_daemons_bus(tmp_path: Path) -> None:
    radio = FakeRadio()
    factory = functools.partial(BeaconDriver.from_config, backend=radio, people=PEOPLE, tick_s=0.05)
    daemon = Daemon(site(tmp_path, away_s=0.5), status_port=0, drivers=(*OTHERS, factory))
    assert daemon.kinds == {"gate-ble": Kind.BEACON_SCANNER}
    assert daemon.unowned == []
    events = presence_events(daemon)
    async with daemon:
        await until(lambda: daemon.states["gate-ble"].get("online") is True, what="the scanner's state")
        assert daemon.states["gate-ble"]["port_open"] is True
        for _ in range(3):
            radio.hear(ibeacon_adv(1001, -58))
        arrive = await next_presence(events.queue)
        assert {k: arrive[k] for k in ("kind", "scanner", "beacon", "person", "change", "rssi")} == {
            "kind": "presence", "scanner": "gate-ble", "beacon": ALICE, "person": "S1001", "change": "arrive",
            "rssi": -58.0}
        assert arrive["id"]
        assert arrive["ts"]
        depart = await next_presence(events.queue)
        assert (depart["person"], depart["change"]) == ("S1001", "depart")
        from test_cloud_e2e import asyncapi_validator  # the published contract (docs/asyncapi.yaml)

        for event in (arrive, depart):
            assert [e.message for e in asyncapi_validator("PresenceEvent").iter_errors(event)] == []
        assert daemon.gateway_info()["drivers"]["beacon"]["scanners"]["gate-ble"]["arrivals"] == 1
        out = await daemon.control.ask(Ask("gate-ble", {"on": True}, Source.LOCAL, "local:test"))
        assert (out.status, out.code) == ("rejected", "bad_request")
        assert daemon.liveness(5.0) == []
    daemon.bus.unsubscribe(events)


HAS_ADAPTER = Path("/sys/class/bluetooth").is_dir() and any(Path("/sys/class/bluetooth").iterdir())


@pytest.mark.skipif(HAS_ADAPTER, reason="this machine has a Bluetooth adapter: the no-radio path cannot be shown here")
async def test_the_real_bleak_backend_without_bluetooth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """This machine has no adapter (and no system D-Bus): said once, retried, and the daemon runs on."""
    factory = functools.partial(BeaconDriver.from_config, people=PEOPLE, retry_base_s=0.05, retry_max_s=0.2)
    daemon = Daemon(site(tmp_path, adapter="hci0"), status_port=0, drivers=(*OTHERS, factory))
    events = presence_events(daemon)
    drv = next(d for d in daemon.drivers if isinstance(d, BeaconDriver))
    async with asyncio.timeout(30):               # bounded even if a D-Bus here would not answer
        async with daemon:
            await until(lambda: drv.stats()["scanners"]["gate-ble"].get("failures", 0) >= 3, within=20,
                        what="three tries of the radio")
            assert daemon.states["gate-ble"]["online"] is False
            assert daemon.states["gate-ble"]["port_open"] is False
            faults = []
            while not events.queue.empty():
                p = events.queue.get_nowait().payload
                if p["kind"] == "fault" and p["device"] == "gate-ble":
                    faults.append(p)
            assert len(faults) == 1
            assert faults[0]["code"] == "offline"
            assert faults[0]["message"].startswith("no Bluetooth")
            from test_cloud_e2e import asyncapi_validator  # the published contract (docs/asyncapi.yaml)

            assert [e.message for e in asyncapi_validator("FaultEvent").iter_errors(faults[0])] == []
            said = [r for r in caplog.records if r.name == "campus_edge.beacon" and r.levelno >= logging.WARNING]
            assert len(said) == 1, [r.getMessage() for r in said]
            # the daemon runs on: its loops turn and it answers
            assert daemon.liveness(5.0) == []
            out = await daemon.control.ask(Ask("gate-ble", {"on": True}, Source.LOCAL, "local:test"))
            assert out.code == "bad_request"
    daemon.bus.unsubscribe(events)
