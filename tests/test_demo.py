"""`campus-edge demo`: the view of relay channels, bookings, cards and check-in, the demo's simulated morning, and a
short run of the whole demo (virtual school, daemon, broker, app) that shows a door letting a pupil in and refusing an
unknown card, arrivals, check-in and a booked room opening and relocking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import free_port

from edge.config import load_config
from edge.core.config import Config
from edge.demo import (
    BOOKING_LEAD_SIM_S,
    MORNING,
    _demo_site,
    booked_room,
    school_morning,
)
from edge.view import (
    Activity,
    Person,
    render_access,
    render_activity,
    render_bookings,
    render_channels,
    render_ems,
    render_status,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "example-school.yaml"
TZ = ZoneInfo("Asia/Taipei")


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("CAMPUS_EDGE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CAMPUS_EDGE_STATE_DIR", str(tmp_path / "state"))
    return load_config(EXAMPLE)


# -- the view -------------------------------------------------------------------------------------------
def test_relay_channels_show_doors_open_or_locked_and_lights_on_or_off(example: Config) -> None:
    devices: dict[str, dict[str, Any]] = {
        "door-101": {"online": True, "on": True}, "door-102": {"online": True, "on": False},
        "light-101": {"online": True, "on": True}, "fan-101": {"online": True, "on": False},
        "door-office": {"online": False, "on": True}, "light-102": {"online": True}}
    text = "\n".join(render_channels(devices, example))
    for cell in ("door-101 OPEN", "door-102 locked", "light-101 on", "fan-101 off", "door-office ?", "light-102 ?",
                 "door-201 ?"):
        assert cell in text
    assert len(text.splitlines()) == 3                      # 14 channels, five to a line
    page = render_status({"devices": devices, "gateway": {}}, example)
    row_101 = next(line for line in page.splitlines() if line.startswith("101 "))
    assert row_101.endswith("light:on fan:off door:OPEN")


def test_bookings_and_the_access_list_from_the_status() -> None:
    st = {"lead_s": 60, "rooms": {
        "library": {"open": True, "until": "2026-06-16T09:40:00.000+08:00", "doors": {"door-library": "open"},
                    "bookings": [{"id": "b1", "title": "家長座談會", "by": "F001", "start": "2026-06-16T09:20:00+08:00",
                                  "end": "2026-06-16T09:40:00+08:00"}]},
        "101": {"open": False, "until": None, "doors": {"door-101": None}, "bookings": []},
        "office": {"open": False, "until": None, "doors": {"door-office": "locked"},
                   "bookings": [{"id": "b2", "title": None, "by": "T1", "start": "2026-06-16T13:00:00+08:00",
                                 "end": "2026-06-16T14:00:00+08:00"}]}}}
    lines = render_bookings(st)
    assert len(lines) == 2                                   # room 101 has nothing booked: not shown
    assert lines[0].startswith("booking library  OPEN until 09:40:00")
    assert "door-library:open" in lines[0]
    assert "b1 家長座談會 09:20:00-09:40:00 by F001" in lines[0]
    assert lines[1].startswith("booking office   locked")
    assert render_bookings(None) == []
    assert render_access({"list_version": None, "cards": 0, "counts": {}}) == [
        "doors: no access list (every card is denied); decisions: none yet"]
    counts = {"loaded": 1, "granted": 2, "unknown_card": 1}
    assert render_access({"list_version": 7, "cards": 78, "counts": counts}) == [
        "doors: access list v7 (78 cards); decisions: granted 2, unknown_card 1"]


def _card(reader: str, card: str, purpose: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "card", "ts": "2026-06-16T07:31:02.000+08:00", "reader": reader, "card": card, "purpose": purpose,
            "person": None, "decision": None, **kw}


def test_the_app_tells_arrivals_from_departures_and_names_the_pupils() -> None:
    a = Activity({"14022766": Person("S10101", "1年1班")})
    a.note(_card("rfid-gate", "14022766", "gate"))
    a.note(_card("rfid-gate", "555", "gate"))
    a.note(_card("rfid-gate", "14022766", "gate"))
    a.note(_card("rfid-101", "6492306", "door", decision="denied", reason="unknown_card", door="door-101"))
    a.note(_card("rfid-101", "14022766", "door", decision="granted", reason="granted", door="door-101",
                 person="S10101"))
    a.note({"kind": "presence", "ts": "2026-06-16T07:31:05+08:00", "scanner": "ble-gate", "person": "S20101",
            "beacon": "x:1:1", "change": "arrive", "rssi": -61.5})
    a.note({"kind": "presence", "scanner": "ble-gate", "person": "S20102", "beacon": "x:1:2", "change": "arrive"})
    a.note({"kind": "presence", "scanner": "ble-gate", "person": "S20102", "beacon": "x:1:2", "change": "depart"})
    a.note({"kind": "door", "ts": "2026-06-16T07:31:09+08:00", "door": "door-101", "action": "unlock", "seconds": 5,
            "by": "card:14022766"})
    a.note({"kind": "fault", "device": "x"})                                # other kinds: ignored
    assert [c.get("what") for c in a.cards if c["purpose"] == "gate"] == ["departure", "arrival", "arrival"]
    assert (a.counts["arrival"], a.counts["departure"]) == (2, 1)
    assert a.present == {"S20101"}
    lines = render_activity(a)
    assert lines[0].startswith("gate: 1 pupils in (2 arrivals, 1 departures); beacons in range: 1 (S20101)")
    text = "\n".join(lines)
    assert "S10101 (1年1班)" in text
    assert "door-101 granted\n" in text + "\n"
    assert "unknown                door-101 denied (unknown_card)" in text
    assert "07:31:05  ble-gate  S20101 arrive (-61.5 dBm)" in text
    assert "07:31:09  door door-101 unlock 5 s by card:14022766" in text


# -- the demo's morning -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("now", "day"), [("2026-06-16T15:00", "2026-06-16"),    # a Tuesday: that day
                                          ("2026-06-20T09:00", "2026-06-19"),    # Saturday: the Friday before
                                          ("2026-06-21T23:59", "2026-06-19"),    # Sunday
                                          ("2026-06-22T00:01", "2026-06-22")])   # Monday
def test_the_simulated_day_is_the_latest_school_day_from_0718(now: str, day: str) -> None:
    got = school_morning(TZ, datetime.fromisoformat(now).replace(tzinfo=TZ).timestamp())
    assert got == datetime.fromisoformat(f"{day}T07:18").replace(tzinfo=TZ)
    assert got.time() == MORNING


def test_the_demo_site_gets_the_broker_the_morning_and_a_booking_lead_in_simulated_minutes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAMPUS_EDGE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("CAMPUS_EDGE_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "a").mkdir()
    site, key = _demo_site(EXAMPLE, tmp_path / "a", 1883, 20.0)
    cfg = load_config(site)
    assert key.is_file()
    assert cfg.cloud is not None
    assert cfg.cloud.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.bookings.lead_s == BOOKING_LEAD_SIM_S / 20.0
    assert cfg.simulation.start is not None
    start = datetime.fromisoformat(cfg.simulation.start)
    assert (start.time(), start.weekday() < 5) == (MORNING, True)
    given = tmp_path / "given.yaml"
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["simulation"]["start"] = "2026-06-16T10:00:00+08:00"
    given.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (tmp_path / "b").mkdir()
    site, _ = _demo_site(given, tmp_path / "b", 1883, 20.0)
    assert load_config(site).simulation.start == "2026-06-16T10:00:00+08:00"   # a config's own start is kept


def test_the_app_books_the_library(example: Config) -> None:
    assert booked_room(example) == "library"
    no_library = example.model_copy(update={"devices": [d for d in example.devices if d.id != "door-library"]})
    assert booked_room(no_library) == "201"


# -- the whole demo ---------------------------------------------------------------------------------------
def _strays(marker: str) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and any(w in cmd for w in ("socat", "mosquitto", "edge.cli")):
                out.append(f"{d.name} {cmd}")
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_short_demo_shows_doors_cards_check_in_and_a_booking(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for bus in data["buses"]:
        if bus["type"] == "tcp":
            bus["port"] = free_port()
    morning = school_morning(TZ, time.time())
    data["simulation"]["start"] = morning.replace(hour=7, minute=28).isoformat()   # arrivals at once, doors at 07:52
    conf = tmp_path / "school.yaml"
    conf.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    out = tmp_path / "stdout.txt"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    with out.open("wb") as fh:
        proc = subprocess.Popen(["env", "--default-signal=HUP,INT,TERM", sys.executable, "-m", "edge.cli", "demo",
                                 "--config", str(conf), "--speed", "180", "--duration", "100"],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    wanted = {"a pupil let in": "door-101 granted", "an unknown card refused": "door-101 denied (unknown_card)",
              "an arrival at the gate": " arrival\n", "a beacon checking in": " arrive (",
              "the door open on the relay board": "door-101 OPEN",
              "the access list stored": "pupils' cards) -> ok ok",
              "the booking stored": "(doors open 3.3 s before) -> ok ok",
              "the library open": "booking library  OPEN until", "its door open": "door-library OPEN",
              "the library relocked": "door door-library lock by booking:library"}
    try:
        deadline = time.monotonic() + 90
        while True:
            text = out.read_text(encoding="utf-8", errors="replace")
            missing = [what for what, s in wanted.items() if s not in text]
            if not missing:
                break
            assert proc.poll() is None, f"the demo ended; not shown: {missing}\n{text[-4000:]}"
            assert time.monotonic() < deadline, f"not shown: {missing}\n{text[-4000:]}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out.read_text(encoding="utf-8", errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = out.read_text(encoding="utf-8", errors="replace")
    assert text.rstrip().endswith("demo stopped")
    assert "simulated school day:" in text
    assert not _strays(str(tmp_path)), "left running"
    assert not list(tmp_path.glob("campus-edge-demo-*")), "the demo's work directory is left behind"


def test_the_energy_manager_shows_the_block_the_rooms_it_holds_and_raised_alarms() -> None:
    st = {"block_avg_kw": 84.2, "projected_kw": 93.5, "allow_kw": 80.0, "contract_kw": 90.0, "stale": False,
          "block_start": "2026-06-16T08:00:00+08:00", "peak_kw": 88.1,
          "shed": {"ac-201a": "shed_off", "ac-102b": "shed_setpoint", "ac-301a": "shed_off"},
          "alarms": [{"level": "warning", "metric": "projected_kw", "value": 93.5, "threshold": 85.5,
                      "by": "facility:F001"}]}
    holds = {"ac-201a": [{"source": "ems", "by": "ems:queue"}], "ac-301a": [{"source": "ems", "by": "ems"}]}
    lines = render_ems(st, holds)
    assert lines[0].startswith("demand: block 08:00:00 average   84.2 kW, projected   93.5 kW OVER contract 90 kW")
    assert "highest block 88.1 kW" in lines[0]
    assert lines[1] == "  energy manager: ac-102b setpoint raised, ac-201a queued, ac-301a held off"
    assert lines[2] == "  ALARM warning: projected_kw 93.5 (limit 85.5), acknowledged by facility:F001"
    assert render_ems({**st, "stale": True}, {})[0].startswith("demand: the meter has not been read recently")
    assert render_ems(None, {}) == []
