"""State publishing policy: deadbands per field, latest wins per device, at most one publish per interval."""

from __future__ import annotations

from cloud_sync.link import Backoff
from cloud_sync.service import StateGate, significant
from cloud_sync.topics import Topics

AC = {"online": True, "ts": "t0", "power_on": True, "mode": "cool", "setpoint_c": 26.0, "fan": "auto",
      "room_temp_c": 28.0, "fault": None, "power_w": 1200.0}


def test_deadbands_per_field() -> None:
    assert not significant(AC, {**AC, "ts": "t1"})
    assert not significant(AC, {**AC, "room_temp_c": 28.1})
    assert significant(AC, {**AC, "room_temp_c": 28.2})
    assert not significant(AC, {**AC, "power_w": 1240.0})              # < 50 W
    assert significant(AC, {**AC, "power_w": 1250.0})
    assert significant(AC, {**AC, "setpoint_c": 26.5})                 # settings: every change
    assert significant(AC, {**AC, "fault": "E3"})
    assert significant(AC, {**AC, "online": False})
    meter = {"power_w": 100_000.0, "voltage_v": [230.0, 231.0, 229.0], "energy_kwh": 10.0}
    assert not significant(meter, {**meter, "power_w": 100_900.0})      # 1 % of 100 kW is 1 kW
    assert significant(meter, {**meter, "power_w": 101_000.0})
    assert not significant(meter, {**meter, "voltage_v": [230.5, 231.0, 229.0]})
    assert significant(meter, {**meter, "voltage_v": [230.0, 232.0, 229.0]})
    assert significant(meter, {**meter, "voltage_v": None})
    assert not significant(meter, {**meter, "energy_kwh": 10.05})


def test_drift_is_measured_from_the_last_published_value() -> None:
    g = StateGate(min_interval_s=1.0, refresh_s=300.0)
    assert g.offer("ac", AC)
    (dev, st), = g.due(0.0, {})
    g.sent(dev, st, 0.0)
    temps = [28.1, 28.15, 28.19, 28.21]
    offered = [g.offer("ac", {**AC, "room_temp_c": t}) for t in temps]
    assert offered == [False, False, False, True]


def test_bursts_coalesce_latest_wins_and_refresh() -> None:
    g = StateGate(min_interval_s=1.0, refresh_s=300.0)
    g.offer("ac", AC)
    g.sent("ac", AC, 10.0)
    for sp in (26.5, 27.0, 27.5):
        g.offer("ac", {**AC, "setpoint_c": sp})
    assert g.due(10.5, {"ac": AC}) == []                        # within the interval: wait
    assert 0.4 < g.next_due(10.5) <= 0.5
    (dev, st), = g.due(11.0, {"ac": AC})
    assert st["setpoint_c"] == 27.5                             # one message, the latest
    g.sent(dev, st, 11.0)
    assert g.due(200.0, {"ac": st}) == []
    assert g.due(311.0, {"ac": st}) == [("ac", st)]             # refreshed after 5 minutes
    g.republish_all({"ac": st, "meter": {"online": True}})
    assert {d for d, _ in g.due(311.5, {"ac": st, "meter": {"online": True}})} == {"ac", "meter"}


def test_backoff_doubles_jitters_and_caps() -> None:
    b = Backoff(0.5, 4.0)
    waits = [b.next() for _ in range(6)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert all(s / 2 <= w <= s for w, s in zip(waits, steps, strict=True))
    b.reset()
    assert b.next() <= 0.5


def test_topics() -> None:
    t = Topics.of("campus/v1/", "014601", "gw-a")
    assert t.state("ac-1") == "campus/v1/014601/gw-a/state/ac-1"
    assert t.kind_of("campus/v1/014601/gw-a/cmd/result") == "result"
    assert t.kind_of("campus/v1/014601/gw-a/event/fault") == "event"
    assert t.kind_of("campus/v1/014601/gw-b/status") is None
