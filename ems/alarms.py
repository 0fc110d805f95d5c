"""Overrun and power-quality alarms from the `alarm.set` settings (issue 9 item 2): pure, clock-free.

Every level of the settings gives rules: its demand rule (the block's projected average, or with
`"on": "actual"` the block average so far, above `demand_kw`) and one rule per power-quality limit it
sets. Each rule is one alarm, independent of the others (a critical and a warning may both be raised).

A rule raises when its value has been beyond the threshold for `raise_after_s` continuously, and
clears when it has been back by more than the hysteresis for `clear_after_s` continuously; a value
between the threshold and the hysteresis band keeps a raised alarm raised and restarts the clear wait,
so a value wobbling around the threshold neither chatters nor clears. The hysteresis of a demand rule
is `hysteresis_pct` of its threshold; a power-quality rule's is absolute, in its metric's unit
(`QUALITY_HYSTERESIS`: a percentage of 60 Hz would be far too wide). No value (stale block data, a
field the meter does not report) holds a rule: nothing raises or clears, and the waits start again
once values return (the condition must be seen continuously).

An alarm's id is deterministic (level, rule and the raise time in ms); its events carry the id plus
the state as their event id, so an event re-sent after a restart is de-duplicated by the cloud.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from edge.core.alarms import LEVELS, AlarmSet
from edge.core.model import voltage_imbalance_pct
from ems.types import BlockStatus

State = Literal["raised", "cleared", "acknowledged"]

# quality limit -> (metric it watches, True when the alarm is for values above the limit)
QUALITY_RULES: Final[Mapping[str, tuple[str, bool]]] = {
    "pf_below": ("pf", False),
    "voltage_low_v": ("voltage_v", False),
    "voltage_high_v": ("voltage_v", True),
    "imbalance_pct_above": ("imbalance_pct", True),
    "freq_low_hz": ("freq_hz", False),
    "freq_high_hz": ("freq_hz", True),
    "thd_pct_above": ("thd_pct", True),
}
QUALITY_HYSTERESIS: Final[Mapping[str, float]] = {   # absolute, per metric
    "pf": 0.02, "voltage_v": 2.0, "imbalance_pct": 0.5, "freq_hz": 0.1, "thd_pct": 0.5,
}
DEMAND: Final = "demand"
SNAPSHOT_VERSION: Final = 1


class AlarmNotRaised(ValueError):
    """An acknowledgement names no raised alarm (unknown, or already cleared)."""


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One alarm's state change; `id` names the alarm (the same for its raise, acknowledgement and clear)."""

    id: str
    level: str
    state: State
    rule: str              # "demand" or a quality limit ("pf_below", ...)
    metric: str            # "projected_kw", "avg_kw", "pf", "voltage_v", "imbalance_pct", "freq_hz", "thd_pct"
    value: float | None    # the latest value seen (None: none since a restart)
    threshold: float | None   # None only for an alarm cleared because its rule is gone after a restart
    ts: float
    by: str | None = None  # who acknowledged

    def as_event(self) -> dict[str, Any]:
        """The body of the `alarm` event (CONTRACT.md section 3); the daemon adds `ts` and `kind`."""
        out: dict[str, Any] = {"id": f"{self.id}/{self.state}", "alarm": self.id, "level": self.level,
                               "state": self.state, "rule": self.rule, "metric": self.metric,
                               "value": self.value, "threshold": self.threshold}
        if self.by is not None:
            out["by"] = self.by
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    level: str
    name: str
    metric: str
    above: bool
    threshold: float
    hysteresis: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.level, self.name)

    def beyond(self, v: float) -> bool:
        return v > self.threshold if self.above else v < self.threshold

    def back(self, v: float) -> bool:
        """Far enough back inside the limit to count towards clearing."""
        return v < self.threshold - self.hysteresis if self.above else v > self.threshold + self.hysteresis


def _numbers(v: object) -> list[float]:
    items = v if isinstance(v, list | tuple) else [v]
    out = []
    for x in items:
        if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
            out.append(float(x))
    return out


def quality_values(fields: Mapping[str, object]) -> dict[str, float]:
    """Each quality limit's value from a meter's fields (`pf`, `voltage_v` per phase, `freq_hz`, `thd_pct`)."""
    out: dict[str, float] = {}
    if pf := _numbers(fields.get("pf")):
        out["pf_below"] = min(abs(x) for x in pf)     # the sign only says capacitive or inductive
    if volts := _numbers(fields.get("voltage_v")):
        out["voltage_low_v"], out["voltage_high_v"] = min(volts), max(volts)
        if (imbalance := voltage_imbalance_pct(volts)) is not None:
            out["imbalance_pct_above"] = imbalance
    if freq := _numbers(fields.get("freq_hz")):
        out["freq_low_hz"] = out["freq_high_hz"] = freq[0]
    if thd := _numbers(fields.get("thd_pct")):
        out["thd_pct_above"] = max(thd)
    return out


def rules_of(settings: AlarmSet | None, hysteresis_pct: float,
             quality_hysteresis: Mapping[str, float]) -> dict[tuple[str, str], Rule]:
    """The rules the settings give, in a fixed order (level, then demand before quality)."""
    rules: dict[tuple[str, str], Rule] = {}
    if settings is None:
        return rules
    for lv in sorted(settings.levels, key=lambda lv: LEVELS.index(lv.level)):
        metric = "projected_kw" if lv.on == "projected" else "avg_kw"
        r = Rule(lv.level, DEMAND, metric, True, lv.demand_kw, lv.demand_kw * hysteresis_pct / 100.0)
        rules[r.key] = r
        for name, limit in (lv.quality.limits() if lv.quality is not None else {}).items():
            q_metric, above = QUALITY_RULES[name]
            r = Rule(lv.level, name, q_metric, above, limit, quality_hysteresis[q_metric])
            rules[r.key] = r
    return rules


@dataclass(frozen=True, slots=True)
class _Active:
    id: str
    raised_ts: float
    value: float | None
    acked_by: str | None = None


class AlarmEngine:
    """The alarms of one site: fed block statuses and meter fields, answers state changes as events.

    `hysteresis_pct`: a demand alarm clears below demand_kw * (1 - hysteresis_pct/100);
    `raise_after_s` / `clear_after_s`: how long a condition must hold before raising / clearing;
    `quality_hysteresis`: the absolute band per quality metric (defaults `QUALITY_HYSTERESIS`).
    """

    def __init__(self, settings: AlarmSet | None, *, hysteresis_pct: float = 3.0, raise_after_s: float = 60.0,
                 clear_after_s: float = 300.0, quality_hysteresis: Mapping[str, float] | None = None) -> None:
        for name, v in (("hysteresis_pct", hysteresis_pct), ("raise_after_s", raise_after_s),
                        ("clear_after_s", clear_after_s)):
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"AlarmEngine: {name} must be a non-negative number, got {v!r}")
        if hysteresis_pct >= 100:
            raise ValueError(f"AlarmEngine: hysteresis_pct must be below 100, got {hysteresis_pct!r}")
        qh = {**QUALITY_HYSTERESIS, **(quality_hysteresis or {})}
        if unknown := set(qh) - set(QUALITY_HYSTERESIS):
            raise ValueError(f"AlarmEngine: quality_hysteresis has unknown metrics {sorted(unknown)}")
        self.hysteresis_pct = hysteresis_pct
        self.raise_after_s = raise_after_s
        self.clear_after_s = clear_after_s
        self.quality_hysteresis: Mapping[str, float] = qh
        self.settings = settings
        self.rules = rules_of(settings, hysteresis_pct, qh)
        self._active: dict[tuple[str, str], _Active] = {}
        self._pending: dict[tuple[str, str], float] = {}   # since when the pending raise/clear condition holds

    # -- settings ----------------------------------------------------------------------------------
    def set_settings(self, settings: AlarmSet | None, now: float) -> list[AlarmEvent]:
        """Replace the settings at once; a raised alarm whose rule is gone is cleared (the events say so)."""
        rules = rules_of(settings, self.hysteresis_pct, self.quality_hysteresis)
        self._pending = {k: t for k, t in self._pending.items() if rules.get(k) == self.rules.get(k)}
        old = self.rules
        self.settings, self.rules = settings, rules
        return self._drop_orphans(now, old)

    def _drop_orphans(self, now: float, old: Mapping[tuple[str, str], Rule]) -> list[AlarmEvent]:
        out = []
        for key in [k for k in self._active if k not in self.rules]:
            a = self._active.pop(key)
            rule = old.get(key)
            metric = rule.metric if rule is not None else (
                "projected_kw" if key[1] == DEMAND else QUALITY_RULES.get(key[1], (key[1], True))[0])
            threshold = rule.threshold if rule is not None else None
            out.append(AlarmEvent(a.id, key[0], "cleared", key[1], metric, a.value, threshold, now))
        return out

    # -- the loop ----------------------------------------------------------------------------------
    def update(self, now: float, block: BlockStatus | None,
               quality: Mapping[str, object] | None = None) -> list[AlarmEvent]:
        """Feed the present block and the meter's quality fields; the alarms raised or cleared now."""
        out = self._drop_orphans(now, {})
        qv = quality_values(quality) if quality is not None else {}
        for key, rule in self.rules.items():
            if rule.name == DEMAND:
                fresh = block is not None and not block.stale
                v = None if block is None or not fresh else (
                    block.projected_kw if rule.metric == "projected_kw" else block.avg_kw)
            else:
                v = qv.get(rule.name)
            if v is None or not math.isfinite(v):
                self._pending.pop(key, None)   # hold: no raise, no clear, the waits start again
                continue
            out += self._step(now, rule, v)
        return out

    def _step(self, now: float, rule: Rule, v: float) -> list[AlarmEvent]:
        key = rule.key
        act = self._active.get(key)
        if act is None:
            if not rule.beyond(v):
                self._pending.pop(key, None)
                return []
            if now - self._pending.setdefault(key, now) < self.raise_after_s:
                return []
            self._pending.pop(key)
            act = _Active(f"{rule.level}-{rule.name}-{round(now * 1000)}", now, v)
            self._active[key] = act
            return [self._event(rule, act, "raised", now)]
        self._active[key] = act = replace(act, value=v)
        if not rule.back(v):
            self._pending.pop(key, None)
            return []
        if now - self._pending.setdefault(key, now) < self.clear_after_s:
            return []
        self._pending.pop(key)
        del self._active[key]
        return [self._event(rule, act, "cleared", now)]

    @staticmethod
    def _event(rule: Rule, act: _Active, state: State, ts: float, by: str | None = None) -> AlarmEvent:
        return AlarmEvent(act.id, rule.level, state, rule.name, rule.metric, act.value, rule.threshold, ts, by)

    # -- acknowledgement -----------------------------------------------------------------------------
    def acknowledge(self, alarm_id_or_level: str, by: str, now: float) -> list[AlarmEvent]:
        """Acknowledge one raised alarm by id, or every raised alarm of a level; [] when all were already.

        An acknowledged alarm stays raised until it clears. Raises `AlarmNotRaised` when nothing raised
        matches (an unknown id, an alarm that has cleared, a level with nothing raised).
        """
        keys = [k for k, a in self._active.items() if a.id == alarm_id_or_level or k[0] == alarm_id_or_level]
        if not keys:
            raise AlarmNotRaised(f"no raised alarm {alarm_id_or_level!r} (unknown or already cleared)")
        out = []
        for key in keys:
            act = self._active[key]
            if act.acked_by is not None:
                continue
            self._active[key] = act = replace(act, acked_by=by)
            out.append(self._event(self.rules[key], act, "acknowledged", now, by))
        return out

    def active(self) -> list[AlarmEvent]:
        """Each raised alarm as its latest state ("raised" or "acknowledged"), in rule order."""
        return [self._event(self.rules[k], a, "raised" if a.acked_by is None else "acknowledged",
                            a.raised_ts, a.acked_by)
                for k, a in sorted(self._active.items(), key=lambda kv: self._order(kv[0]))
                if k in self.rules]

    def _order(self, key: tuple[str, str]) -> int:
        keys = list(self.rules)
        return keys.index(key) if key in self.rules else len(keys)

    # -- persistence -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The raised alarms as JSON-able data (pending waits are not kept: they start again)."""
        return {"version": SNAPSHOT_VERSION,
                "active": [{"level": k[0], "rule": k[1], "id": a.id, "raised_ts": a.raised_ts, "value": a.value,
                            "acked_by": a.acked_by} for k, a in self._active.items()]}

    def restore(self, data: Mapping[str, Any]) -> None:
        """Take the raised alarms back: none is forgotten and none raised again; one whose rule is gone
        is cleared by the next `update` or `set_settings`."""
        try:
            if data["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"version {data['version']!r} is not {SNAPSHOT_VERSION}")
            active = {}
            for a in _items(data["active"]):
                value = None if a["value"] is None else float(a["value"])
                by = None if a["acked_by"] is None else str(a["acked_by"])
                active[(str(a["level"]), str(a["rule"]))] = _Active(str(a["id"]), float(a["raised_ts"]), value, by)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"AlarmEngine.restore: a damaged snapshot ({type(exc).__name__}: {exc})") from None
        self._active = active
        self._pending = {}


def _items(v: Any) -> Iterable[Mapping[str, Any]]:
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise TypeError("'active' must be a list of objects")
    return v
