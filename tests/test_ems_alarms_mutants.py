"""ems.alarms: the rules that survived mutation testing (docs/mutation-results.md), each pinned by behaviour.

Quality alarms carry their level and metric, a pending wait survives a settings change that keeps its
rule, an alarm cleared because its rule is gone says everything about it, no value for one rule does not
hold the others, acknowledging a level skips the alarms already acknowledged, raised alarms list in rule
order with their raise time, a restored alarm keeps its value and its acknowledgement (or none), and the
error messages name what is wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from edge.core.alarms import AlarmSet
from ems.alarms import AlarmEngine, AlarmEvent
from ems.types import BlockStatus

T0 = 1_750_000_500.0 - (1_750_000_500.0 % 900)


def settings(*levels: dict[str, Any]) -> AlarmSet:
    return AlarmSet.model_validate({"levels": list(levels)})


def block(projected_kw: float) -> BlockStatus:
    return BlockStatus(start=T0, elapsed_s=300.0, energy_kwh=0.0, avg_kw=projected_kw, projected_kw=projected_kw,
                       allow_kw=0.0, power_kw=projected_kw, contract_kw=180.0, stale=False)


WARN_160 = settings({"level": "warning", "demand_kw": 160})
TWO = settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 180})
GOOD = {"pf": 0.97, "voltage_v": [229.0, 230.0, 231.0], "freq_hz": 60.0, "thd_pct": 3.0}
PF_AND_FREQ = settings({"level": "warning", "demand_kw": 150,
                        "quality": {"pf_below": 0.9, "freq_high_hz": 60.5}})


# -- quality alarms: their level and metric --------------------------------------------------------------
def test_a_quality_alarm_names_its_level_metric_limit_and_value() -> None:
    eng = AlarmEngine(PF_AND_FREQ, raise_after_s=0.0)
    (ev,) = eng.update(T0, block(100.0), {**GOOD, "pf": -0.85})
    assert (ev.level, ev.state, ev.rule, ev.metric, ev.value, ev.threshold, ev.ts) == \
        ("warning", "raised", "pf_below", "pf", 0.85, 0.9, T0)
    assert ev.id == f"warning-pf_below-{round(T0 * 1000)}"


def test_quality_rules_given_by_new_settings_watch_with_their_band() -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=0.0, clear_after_s=0.0)
    assert eng.set_settings(PF_AND_FREQ, T0) == []
    assert [(e.rule, e.state) for e in eng.update(T0 + 10, block(100.0), {**GOOD, "pf": 0.85})] == \
        [("pf_below", "raised")]
    # the PF band is 0.02: 0.92 is not yet back, 0.921 is
    assert eng.update(T0 + 20, block(100.0), {**GOOD, "pf": 0.92}) == []
    assert [(e.rule, e.state) for e in eng.update(T0 + 30, block(100.0), {**GOOD, "pf": 0.921})] == \
        [("pf_below", "cleared")]


# -- one rule without a value does not hold the others --------------------------------------------------------
def test_no_demand_value_still_lets_the_quality_rules_after_it_raise() -> None:
    eng = AlarmEngine(PF_AND_FREQ, raise_after_s=0.0)
    ev = eng.update(T0, None, {**GOOD, "freq_hz": 60.7})      # no block: the demand rule holds
    assert [(e.rule, e.state) for e in ev] == [("freq_high_hz", "raised")]


# -- settings changes -------------------------------------------------------------------------------------
def test_a_pending_raise_of_a_rule_the_new_settings_keep_goes_on_waiting() -> None:
    eng = AlarmEngine(TWO, raise_after_s=60.0)
    assert eng.update(T0, block(170.0)) == []                  # the warning (150) waits from T0
    # the critical level changes; the warning's rule is the same: its wait is not restarted
    eng.set_settings(settings({"level": "warning", "demand_kw": 150}, {"level": "critical", "demand_kw": 190}), T0 + 30)
    assert [(e.level, e.state, e.ts) for e in eng.update(T0 + 60, block(170.0))] == [("warning", "raised", T0 + 60)]


def test_an_alarm_whose_level_is_removed_is_cleared_with_everything_it_was() -> None:
    eng = AlarmEngine(TWO, raise_after_s=0.0)
    raised = {e.level: e for e in eng.update(T0, block(190.0))}
    ev = eng.set_settings(settings({"level": "warning", "demand_kw": 150}), T0 + 10)
    assert ev == [AlarmEvent(raised["critical"].id, "critical", "cleared", "demand", "projected_kw", 190.0, 180.0,
                             T0 + 10)]


def test_an_alarm_whose_level_is_gone_after_a_restart_is_cleared_at_the_next_update() -> None:
    eng = AlarmEngine(TWO, raise_after_s=0.0)
    crit = next(e for e in eng.update(T0, block(190.0)) if e.level == "critical")
    eng2 = AlarmEngine(WARN_160, raise_after_s=0.0)
    eng2.restore(json.loads(json.dumps(eng.snapshot())))
    # before the next update it is not listed (its rule is gone) and listing does not fail
    assert [(a.level, a.rule) for a in eng2.active()] == [("warning", "demand")]
    (ev,) = eng2.update(T0 + 10, block(190.0))
    assert (ev.id, ev.level, ev.state, ev.rule, ev.value, ev.threshold, ev.ts) == \
        (crit.id, "critical", "cleared", "demand", 190.0, None, T0 + 10)


# -- acknowledgement ------------------------------------------------------------------------------------------
def test_acknowledging_a_level_skips_its_alarms_already_acknowledged() -> None:
    eng = AlarmEngine(PF_AND_FREQ, raise_after_s=0.0)
    raised = eng.update(T0, block(170.0), {**GOOD, "pf": 0.8})
    assert [e.rule for e in raised] == ["demand", "pf_below"]
    eng.acknowledge(raised[0].id, "u1", T0 + 1)                # the demand alarm, by its id
    acks = eng.acknowledge("warning", "u2", T0 + 2)            # the level: only the PF alarm is new
    assert [(e.id, e.rule, e.state, e.by, e.ts) for e in acks] == \
        [(raised[1].id, "pf_below", "acknowledged", "u2", T0 + 2)]


# -- the raised alarms ---------------------------------------------------------------------------------------
def test_raised_alarms_list_in_rule_order_with_their_raise_time() -> None:
    eng = AlarmEngine(PF_AND_FREQ, raise_after_s=0.0)
    eng.update(T0, block(100.0), {**GOOD, "freq_hz": 60.8})               # the frequency first
    eng.update(T0 + 10, block(100.0), {**GOOD, "freq_hz": 60.8, "pf": 0.8})   # then the PF
    eng.update(T0 + 20, block(170.0), {**GOOD, "freq_hz": 60.8, "pf": 0.8})   # then the demand
    # rule order: the level's demand rule, then its quality limits in their order (pf before frequency)
    assert [(a.rule, a.state, a.ts) for a in eng.active()] == \
        [("demand", "raised", T0 + 20), ("pf_below", "raised", T0 + 10), ("freq_high_hz", "raised", T0)]


# -- restore ---------------------------------------------------------------------------------------------------
def test_a_restored_alarm_keeps_its_value_raise_time_and_no_acknowledgement() -> None:
    eng = AlarmEngine(WARN_160, raise_after_s=0.0)
    (r,) = eng.update(T0, block(170.0))
    eng2 = AlarmEngine(WARN_160, raise_after_s=0.0)
    eng2.restore(json.loads(json.dumps(eng.snapshot())))
    assert eng2.active() == [AlarmEvent(r.id, "warning", "raised", "demand", "projected_kw", 170.0, 160.0, T0)]


def test_a_restored_alarm_without_a_value_stays_raised_without_one() -> None:
    eng = AlarmEngine(WARN_160)
    eng.restore({"version": 1, "active": [{"level": "warning", "rule": "demand", "id": "warning-demand-1",
                                           "raised_ts": T0, "value": None, "acked_by": "u1"}]})
    assert [(a.id, a.state, a.value, a.by) for a in eng.active()] == [("warning-demand-1", "acknowledged", None, "u1")]


@pytest.mark.parametrize(("snapshot", "message"), [
    ({"version": 2, "active": []}, "AlarmEngine.restore: a damaged snapshot (ValueError: version 2 is not 1)"),
    ({"version": 1, "active": ["x"]}, "(TypeError: 'active' must be a list of objects)"),
    ({"version": 1, "active": [{"level": "warning"}]}, "(KeyError: "),
])
def test_a_damaged_snapshot_says_what_is_wrong(snapshot: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AlarmEngine(WARN_160).restore(snapshot)


# -- the constructor's messages ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hysteresis_pct": -1.0}, "AlarmEngine: hysteresis_pct must be a non-negative number, got -1.0"),
    ({"raise_after_s": -1.0}, "AlarmEngine: raise_after_s must be a non-negative number, got -1.0"),
    ({"clear_after_s": float("nan")}, "AlarmEngine: clear_after_s must be a non-negative number, got nan"),
])
def test_the_constructor_names_the_bad_setting(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        AlarmEngine(WARN_160, **kwargs)
