"""Alarms: the alarm.set / alarm.ack models (edge.core.alarms) and the engine (ems.alarms) over replayed traces."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from cloud_sync.params import PARAMS
from edge.core.alarms import DOCUMENT, AlarmAck, AlarmDocumentError, AlarmSet, parse_document
from ems.alarms import AlarmEngine, AlarmEvent, AlarmNotRaised, quality_values
from ems.blocks import DemandMeter
from ems.types import BlockStatus

T0 = 1_750_000_500.0 - (1_750_000_500.0 % 900)


def settings(*levels: dict[str, Any]) -> AlarmSet:
    return AlarmSet.model_validate({"levels": list(levels)})


WARN_160 = settings({"level": "warning", "demand_kw": 160})


def block(projected: float, *, avg: float | None = None, stale: bool = False) -> BlockStatus:
    return BlockStatus(start=T0, elapsed_s=300.0, energy_kwh=0.0, avg_kw=projected if avg is None else avg,
                       projected_kw=projected, allow_kw=0.0, power_kw=projected, contract_kw=180.0, stale=stale)


class Replay:
    """Feeds (duration_s, projected_kw) segments to an engine every step_s, carrying the time on."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self, engine: AlarmEngine, trace: Sequence[tuple[float, float]], *, step_s: float = 10.0,
                 stale: bool = False) -> list[tuple[float, AlarmEvent]]:
        """The events with their times relative to T0."""
        out = []
        for duration, kw in trace:
            end = self.t + duration
            while self.t < end - 1e-9:
                out += [(self.t, e) for e in engine.update(T0 + self.t, block(kw, stale=stale))]
                self.t += step_s
        return out


@pytest.fixture
def replay() -> Replay:
    return Replay()


def states(events: list[tuple[float, AlarmEvent]]) -> list[tuple[float, str, str]]:
    return [(t, e.level, e.state) for t, e in events]


# -- the models -----------------------------------------------------------------------------------
def test_the_present_contract_still_validates_and_dumps_unchanged() -> None:
    params = {"levels": [{"level": "warning", "demand_kw": 160}, {"level": "critical", "demand_kw": 175.5}]}
    model = PARAMS["alarm.set"].model_validate(params)
    assert isinstance(model, AlarmSet)
    assert model.model_dump(exclude_unset=True) == params   # what the verifier stores is what was sent
    assert model.levels[0].on == "projected"
    assert model.levels[0].quality is None


def test_the_extension_validates() -> None:
    s = settings({"level": "notice", "demand_kw": 150, "on": "actual",
                  "quality": {"pf_below": 0.9, "voltage_low_v": 200, "voltage_high_v": 240.0, "freq_low_hz": 59.5}})
    q = s.levels[0].quality
    assert q is not None
    assert q.limits() == {"pf_below": 0.9, "voltage_low_v": 200, "voltage_high_v": 240.0, "freq_low_hz": 59.5}


@pytest.mark.parametrize("level", [
    {"level": "warning", "demand_kw": "160"},                                   # strict: no coercion
    {"level": "warning", "demand_kw": 0},
    {"level": "warning", "demand_kw": 160, "on": "peak"},
    {"level": "warning", "demand_kw": 160, "colour": "red"},                    # extra forbidden
    {"level": "warning", "demand_kw": 160, "quality": {"pf_below": 1.2}},
    {"level": "warning", "demand_kw": 160, "quality": {"pf_above": 0.9}},
    {"level": "warning", "demand_kw": 160, "quality": {"voltage_low_v": 240, "voltage_high_v": 240}},
    {"level": "warning", "demand_kw": 160, "quality": {"freq_low_hz": 61, "freq_high_hz": 60}},
    {"level": "alarm", "demand_kw": 160},
])
def test_bad_levels_are_refused(level: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        settings(level)


def test_levels_unique() -> None:
    with pytest.raises(ValidationError, match="each level at most once"):
        settings({"level": "warning", "demand_kw": 160}, {"level": "warning", "demand_kw": 170})


def test_ack_model() -> None:
    assert AlarmAck.model_validate({"level": "warning"}).target == "warning"
    assert AlarmAck.model_validate({"alarm": "warning-demand-1"}).target == "warning-demand-1"
    for bad in ({}, {"level": "warning", "alarm": "x"}, {"level": "loud"}, {"alarm": ""}, {"alarm": 5}):
        with pytest.raises(ValidationError):
            AlarmAck.model_validate(bad)


def test_parse_document() -> None:
    assert DOCUMENT == "cloud/alarm"
    assert parse_document(None) is None
    doc = {"levels": [{"level": "warning", "demand_kw": 160}], "by": "u1", "role": "admin", "command": "j1",
           "stored_at": "2026-06-16T08:00:00+08:00"}
    parsed = parse_document(json.loads(json.dumps(doc)))
    assert parsed is not None
    assert parsed.levels[0].demand_kw == 160
    with pytest.raises(AlarmDocumentError, match=r"levels\.0\.demand_kw"):
        parse_document({"levels": [{"level": "warning", "demand_kw": -1}]})
    with pytest.raises(AlarmDocumentError, match="object"):
        parse_document([1])


# -- raise: threshold and minimum duration ---------------------------------------------------------
def test_raises_after_the_minimum_duration_exactly(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0)
    ev = replay(eng, [(120, 170.0)])
    assert states(ev) == [(60.0, "warning", "raised")]   # above from 0; 60 s later, not at 50 or 70
    (_, e), = ev
    assert (e.metric, e.value, e.threshold, e.rule) == ("projected_kw", 170.0, 160.0, "demand")


def test_interruption_restarts_the_raise_wait(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0)
    ev = replay(eng, [(50, 170.0), (10, 150.0), (200, 170.0)])
    assert states(ev) == [(120.0, "warning", "raised")]   # above again from 60: 60 + 60


def test_at_the_threshold_is_not_above(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=0.0)
    assert replay(eng, [(600, 160.0)]) == []
    assert states(replay(eng, [(10, 160.01)])) == [(600.0, "warning", "raised")]


def test_wobbling_around_the_threshold_never_raises(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0)
    assert replay(eng, [(30, 165.0), (10, 159.0)] * 90) == []   # an hour of 30 s above, 10 s below


# -- clear: hysteresis and minimum duration --------------------------------------------------------
def test_hysteresis_and_clear_duration(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, hysteresis_pct=3.0, raise_after_s=60.0, clear_after_s=300.0)
    assert states(replay(eng, [(60, 170.0)])) == []
    assert states(replay(eng, [(10, 170.0)])) == [(60.0, "warning", "raised")]
    # below the threshold but inside the band (160 * 0.97 = 155.2): stays raised for half an hour
    assert replay(eng, [(1800, 157.0), (600, 155.2)]) == []
    # 155.1 is below the band: cleared 300 s after it started (at 70 + 2400 = 2470)
    assert states(replay(eng, [(400, 155.1)])) == [(2770.0, "warning", "cleared")]


def test_clear_wait_restarts_inside_the_band(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=0.0, clear_after_s=300.0)
    assert states(replay(eng, [(10, 170.0)])) == [(0.0, "warning", "raised")]
    # 290 s below the band, 10 s back in it, then below again: clears 300 s after the second start
    ev = replay(eng, [(290, 150.0), (10, 158.0), (400, 150.0)])
    assert states(ev) == [(610.0, "warning", "cleared")]


def test_wobble_after_raising_gives_no_chatter(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0, clear_after_s=300.0)
    ev = replay(eng, [(120, 170.0)] + [(20, 156.0), (20, 163.0)] * 90)
    assert states(ev) == [(60.0, "warning", "raised")]
    assert [a.state for a in eng.active()] == ["raised"]


def test_levels_are_independent(replay: Replay) -> None:
    s = settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 180})
    eng = AlarmEngine(s, raise_after_s=60.0, clear_after_s=300.0)
    ev = replay(eng, [(100, 190.0), (400, 165.0)])
    # both raised at 60; at 165 the critical (clears below 174.6) clears 300 s after 100; the warning stays
    assert states(ev) == [(60.0, "warning", "raised"), (60.0, "critical", "raised"), (400.0, "critical", "cleared")]
    assert [(a.level, a.state) for a in eng.active()] == [("warning", "raised")]


def test_actual_uses_the_block_average() -> None:
    s = settings({"level": "warning", "demand_kw": 150, "on": "actual"},
                 {"level": "critical", "demand_kw": 150})
    eng = AlarmEngine(s, raise_after_s=0.0)
    ev = eng.update(T0, block(200.0, avg=100.0))
    assert [(e.level, e.metric) for e in ev] == [("critical", "projected_kw")]
    ev = eng.update(T0 + 10, block(100.0, avg=151.0))
    assert [(e.level, e.metric, e.value) for e in ev] == [("warning", "avg_kw", 151.0)]


# -- stale data holds --------------------------------------------------------------------------------
def test_stale_neither_raises_nor_clears(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0, clear_after_s=300.0)
    assert replay(eng, [(600, 200.0)], stale=True) == []
    assert states(replay(eng, [(70, 200.0)])) == [(660.0, "warning", "raised")]
    assert replay(eng, [(3600, 100.0)], stale=True) == []
    assert [a.state for a in eng.active()] == ["raised"]
    assert eng.update(T0 + 10_000, None) == []
    # fresh data again from 670 + 3600 = 4270: cleared 300 s later
    assert states(replay(eng, [(310, 100.0)])) == [(4570.0, "warning", "cleared")]


def test_stale_breaks_the_continuous_wait(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0)
    replay(eng, [(50, 200.0)])
    replay(eng, [(10, 200.0)], stale=True)
    assert states(replay(eng, [(100, 200.0)])) == [(120.0, "warning", "raised")]


# -- acknowledge ---------------------------------------------------------------------------------------
def test_acknowledge() -> None:
    s = settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 180})
    eng = AlarmEngine(s, raise_after_s=0.0, clear_after_s=300.0)
    raised = eng.update(T0, block(190.0))
    crit = next(e for e in raised if e.level == "critical")
    with pytest.raises(AlarmNotRaised, match="notice"):
        eng.acknowledge("notice", "u1", T0 + 5)
    acks = eng.acknowledge("warning", "u1", T0 + 5)
    assert [(e.level, e.state, e.by, e.ts) for e in acks] == [("warning", "acknowledged", "u1", T0 + 5)]
    assert eng.acknowledge("warning", "u2", T0 + 6) == []          # already acknowledged: nothing new
    acks = eng.acknowledge(crit.id, "u2", T0 + 7)
    assert [(e.id, e.state, e.by) for e in acks] == [(crit.id, "acknowledged", "u2")]
    assert [a.state for a in eng.active()] == ["acknowledged", "acknowledged"]
    # acknowledged stays raised until it clears, and its clear is still reported
    assert eng.update(T0 + 10, block(190.0)) == []
    ev = replay_at(eng, 20, 400, 100.0)
    assert sorted((e.level, e.state) for e in ev) == [("critical", "cleared"), ("warning", "cleared")]
    with pytest.raises(AlarmNotRaised, match="already cleared"):
        eng.acknowledge(crit.id, "u1", T0 + 1000)
    with pytest.raises(AlarmNotRaised):
        eng.acknowledge("no-such-alarm", "u1", T0 + 1000)


def replay_at(eng: AlarmEngine, t_from: float, duration: float, kw: float) -> list[AlarmEvent]:
    out: list[AlarmEvent] = []
    t = t_from
    while t < t_from + duration:
        out += eng.update(T0 + t, block(kw))
        t += 10.0
    return out


def test_event_ids_and_body() -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=0.0, clear_after_s=0.0)
    (r,) = eng.update(T0, block(170.0))
    (a,) = eng.acknowledge("warning", "teacher-7", T0 + 1)
    (c,) = eng.update(T0 + 2, block(100.0))
    assert r.id == a.id == c.id == f"warning-demand-{round(T0 * 1000)}"
    bodies = [e.as_event() for e in (r, a, c)]
    assert len({b["id"] for b in bodies}) == 3
    assert bodies[0] == {"id": f"{r.id}/raised", "alarm": r.id, "level": "warning", "state": "raised",
                         "rule": "demand", "metric": "projected_kw", "value": 170.0, "threshold": 160.0}
    assert bodies[1]["by"] == "teacher-7"
    assert "by" not in bodies[2]
    assert bodies[2]["value"] == 100.0
    json.dumps(bodies)
    (r2,) = eng.update(T0 + 3, block(170.0))
    assert r2.id != r.id


# -- settings change ---------------------------------------------------------------------------------
def test_new_settings_replace_old_and_clear_what_is_gone() -> None:
    s = settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 180})
    eng = AlarmEngine(s, raise_after_s=0.0, clear_after_s=0.0)
    eng.update(T0, block(190.0))
    ev = eng.set_settings(settings({"level": "warning", "demand_kw": 195}), T0 + 10)
    assert [(e.level, e.state, e.threshold) for e in ev] == [("critical", "cleared", 180.0)]
    # the warning stays raised (same id) and now clears against 195 * 0.97 = 189.15
    assert [a.level for a in eng.active()] == ["warning"]
    assert eng.update(T0 + 20, block(190.0)) == []
    assert [(e.level, e.state) for e in eng.update(T0 + 30, block(189.0))] == [("warning", "cleared")]
    assert eng.set_settings(None, T0 + 40) == []
    assert eng.update(T0 + 50, block(500.0)) == []


def test_settings_change_restarts_a_pending_wait_of_a_changed_rule() -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0)
    assert eng.update(T0, block(200.0)) == []
    eng.set_settings(settings({"level": "warning", "demand_kw": 170}), T0 + 30)
    assert eng.update(T0 + 60, block(200.0)) == []          # the new rule has waited 0 s, not 60
    assert [e.state for e in eng.update(T0 + 120, block(200.0))] == ["raised"]


# -- restore -----------------------------------------------------------------------------------------
def test_restore_neither_forgets_nor_reraises(replay: Replay) -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=60.0, clear_after_s=300.0)
    raised = [e for _, e in replay(eng, [(100, 170.0)])]
    eng.acknowledge("warning", "u1", T0 + 100)
    snap = json.loads(json.dumps(eng.snapshot()))
    eng2 = AlarmEngine(WARN_160, raise_after_s=60.0, clear_after_s=300.0)
    eng2.restore(snap)
    assert [(a.id, a.state, a.by) for a in eng2.active()] == [(raised[0].id, "acknowledged", "u1")]
    assert replay_at(eng2, 200, 600, 170.0) == []
    cleared = replay_at(eng2, 800, 400, 100.0)
    assert [(e.id, e.state) for e in cleared] == [(raised[0].id, "cleared")]


def test_restore_with_a_level_gone_clears_it() -> None:
    s = settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 180})
    eng = AlarmEngine(s, raise_after_s=0.0)
    eng.update(T0, block(190.0))
    eng2 = AlarmEngine(WARN_160, raise_after_s=0.0)
    eng2.restore(json.loads(json.dumps(eng.snapshot())))
    ev = eng2.update(T0 + 10, block(190.0))
    # the critical rule is gone: cleared; the warning (now at 160) is still raised: not raised again
    assert [(e.level, e.state) for e in ev] == [("critical", "cleared")]
    assert [(e.level, e.threshold) for e in eng2.active()] == [("warning", 160.0)]


def test_restore_rejects_a_damaged_snapshot() -> None:
    with pytest.raises(ValueError, match="damaged snapshot"):
        AlarmEngine(WARN_160).restore({"version": 1, "active": [{"level": "warning"}]})
    with pytest.raises(ValueError, match="damaged snapshot"):
        AlarmEngine(WARN_160).restore({"version": 2, "active": []})


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="raise_after_s"):
        AlarmEngine(WARN_160, raise_after_s=-1.0)
    with pytest.raises(ValueError, match="hysteresis_pct"):
        AlarmEngine(WARN_160, hysteresis_pct=100.0)
    with pytest.raises(ValueError, match="unknown metrics"):
        AlarmEngine(WARN_160, quality_hysteresis={"volts": 1.0})


# -- power quality -------------------------------------------------------------------------------------
def test_quality_values_by_hand() -> None:
    v = quality_values({"pf": -0.85, "voltage_v": [220.0, 230.0, 240.0], "freq_hz": 59.9, "thd_pct": [3.0, 5.5, 4.0]})
    # mean 230; max deviation 10 -> 10 / 230 * 100 = 4.3478 %
    assert v == pytest.approx({"pf_below": 0.85, "voltage_low_v": 220.0, "voltage_high_v": 240.0,
                               "imbalance_pct_above": 1000 / 230, "freq_low_hz": 59.9, "freq_high_hz": 59.9,
                               "thd_pct_above": 5.5})
    assert quality_values({"pf": None, "voltage_v": [230.0], "freq_hz": float("nan"), "thd_pct": True}) == {
        "voltage_low_v": 230.0, "voltage_high_v": 230.0}


Q = settings({"level": "warning", "demand_kw": 500,
              "quality": {"pf_below": 0.9, "voltage_low_v": 200, "voltage_high_v": 240, "imbalance_pct_above": 3,
                          "freq_low_hz": 59.5, "freq_high_hz": 60.5, "thd_pct_above": 8}})
GOOD = {"pf": 0.97, "voltage_v": [229.0, 230.0, 231.0], "freq_hz": 60.0, "thd_pct": 3.0}


def feed_quality(eng: AlarmEngine, t_from: float, duration: float, fields: dict[str, Any]) -> list[AlarmEvent]:
    out: list[AlarmEvent] = []
    t = t_from
    while t < t_from + duration:
        out += eng.update(T0 + t, block(100.0), fields)
        t += 10.0
    return out


@pytest.mark.parametrize(("rule", "bad", "band", "back"), [
    # limit 0.9, band 0.02: 0.91 is inside the band, 0.93 back out (inductive PF has a negative sign)
    ("pf_below", {"pf": -0.85}, {"pf": 0.91}, {"pf": 0.93}),
    # balanced phases, so that only the voltage rule is concerned (band 2 V)
    ("voltage_low_v", {"voltage_v": [195.0] * 3}, {"voltage_v": [201.5] * 3}, {"voltage_v": [202.5] * 3}),
    ("voltage_high_v", {"voltage_v": [241.0] * 3}, {"voltage_v": [238.5] * 3}, {"voltage_v": [237.5] * 3}),
    # mean 230: [220, 235, 235] deviates 10 -> 4.35 %; [224, 233, 233] 6 -> 2.61 % (band 2.5..3); [226, 232, 232] 1.74 %
    ("imbalance_pct_above", {"voltage_v": [220.0, 235.0, 235.0]}, {"voltage_v": [224.0, 233.0, 233.0]},
     {"voltage_v": [226.0, 232.0, 232.0]}),
    ("freq_low_hz", {"freq_hz": 59.4}, {"freq_hz": 59.55}, {"freq_hz": 59.7}),
    ("freq_high_hz", {"freq_hz": 60.6}, {"freq_hz": 60.45}, {"freq_hz": 60.3}),
    ("thd_pct_above", {"thd_pct": 9.0}, {"thd_pct": 7.6}, {"thd_pct": 7.4}),
])
def test_quality_rule(rule: str, bad: dict[str, Any], band: dict[str, Any], back: dict[str, Any]) -> None:
    eng = AlarmEngine(Q, raise_after_s=60.0, clear_after_s=300.0)
    assert feed_quality(eng, 0, 300, GOOD) == []
    ev = feed_quality(eng, 300, 100, {**GOOD, **bad})
    assert [(e.rule, e.state, e.ts - T0) for e in ev] == [(rule, "raised", 360.0)]
    assert feed_quality(eng, 400, 1200, {**GOOD, **band}) == []     # inside the band: no clear
    assert feed_quality(eng, 1600, 1200, {}) == []                    # the meter stops reporting: hold
    assert [r.rule for r in eng.active()] == [rule]
    ev = feed_quality(eng, 2800, 400, {**GOOD, **back})
    assert [(e.rule, e.state, e.ts - T0) for e in ev] == [(rule, "cleared", 3100.0)]


# -- a replayed meter trace through the demand meter ---------------------------------------------------
def test_morning_rush_through_the_meter() -> None:
    s = settings({"level": "warning", "demand_kw": 160}, {"level": "critical", "demand_kw": 180})
    meter = DemandMeter(150.0)
    eng = AlarmEngine(s, raise_after_s=60.0, clear_after_s=300.0)
    events: list[tuple[float, str, str]] = []
    for i in range(0, 3000, 10):
        t = T0 + i
        kw = 100.0 if i < 300 or i >= 1800 else 200.0
        meter.update(t, kw, None)
        events += [(float(i), e.level, e.state) for e in eng.update(t, meter.status(t))]
    # from 300 the projection is (100*290 + 150*10 + 200*600) / 900 = 167.2 kW > 160 (never 180);
    # in the next block 200 kW; from 1800 a new block at 100 kW < 155.2: cleared 300 s later
    assert events == [(360.0, "warning", "raised"), (900.0 + 60.0, "critical", "raised"),
                      (1800.0 + 300.0, "warning", "cleared"), (1800.0 + 300.0, "critical", "cleared")]


def test_below_rules_at_their_boundaries() -> None:
    eng = AlarmEngine(Q, raise_after_s=0.0, clear_after_s=0.0)
    at_limit = {**GOOD, "voltage_v": [200.0] * 3}           # exactly the limit is not below it
    assert feed_quality(eng, 0, 100, at_limit) == []
    ev = feed_quality(eng, 100, 10, {**GOOD, "voltage_v": [199.9] * 3})
    assert [(e.rule, e.state) for e in ev] == [("voltage_low_v", "raised")]
    # 200 + 2 V band = 202.0 exactly: not yet back; 202.1 is
    assert feed_quality(eng, 110, 600, {**GOOD, "voltage_v": [202.0] * 3}) == []
    ev = feed_quality(eng, 710, 10, {**GOOD, "voltage_v": [202.1] * 3})
    assert [(e.rule, e.state) for e in ev] == [("voltage_low_v", "cleared")]


def test_an_alarm_whose_rule_is_gone_after_a_restart_clears_with_its_metric_name() -> None:
    before = AlarmEngine(settings({"level": "warning", "demand_kw": 100, "quality": {"pf_below": 0.9}}),
                         raise_after_s=0)
    before.update(T0, block(120.0), {"pf": 0.8})
    saved = before.snapshot()
    after = AlarmEngine(settings({"level": "critical", "demand_kw": 200}))   # the warning level is gone
    after.restore(saved)
    cleared = {e.rule: e.metric for e in after.set_settings(after.settings, T0 + 60)}
    assert cleared == {"demand": "projected_kw", "pf_below": "pf"}
