"""The overrun and power-quality alarm settings (`alarm.set`) and acknowledgements (`alarm.ack`).

`alarm.set` params (CONTRACT.md section 3), extended additively:

    {"levels": [{"level": "warning", "demand_kw": 160,
                 "on": "projected",                       # optional: "projected" (default) or "actual"
                 "quality": {"pf_below": 0.9, "voltage_low_v": 200, "voltage_high_v": 240,
                             "imbalance_pct_above": 3, "freq_low_hz": 59.5, "freq_high_hz": 60.5,
                             "thd_pct_above": 8}},        # optional, each limit optional
                {"level": "critical", "demand_kw": 180}]}

A level raises on the block's projected average ("projected") or on the block average so far
("actual"); its `quality` limits are power-quality alarms of the same level. Levels are independent:
several may be raised at once. Each level appears at most once.

`alarm.ack` params: `{"level": "warning"}` acknowledges every raised alarm of that level,
`{"alarm": "<alarm id>"}` one alarm (the id its `alarm` event carried); exactly one of the two.

The cloud's dispatcher stores `alarm.set` params under `DOCUMENT` with its own bookkeeping fields
(`META_KEYS`); `parse_document` reads that stored document back.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DOCUMENT: Final = "cloud/alarm"    # the store key dispatch keeps the settings under (cloud_sync.dispatch.DOC_ALARM)
META_KEYS: Final = frozenset({"by", "role", "command", "stored_at"})   # what dispatch adds to the stored params
LEVELS: Final = ("notice", "warning", "critical")
MAX_ALARM_ID_LEN: Final = 128

Level = Literal["notice", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class QualityLimits(_Strict):
    """Power-quality limits of one level; an absent limit is not watched."""

    pf_below: float | None = Field(None, gt=0, le=1)                 # |power factor| below this
    voltage_low_v: float | None = Field(None, gt=0, le=1000)          # any phase's voltage below this
    voltage_high_v: float | None = Field(None, gt=0, le=1000)         # any phase's voltage above this
    imbalance_pct_above: float | None = Field(None, gt=0, le=100)     # max deviation from the phase mean, %
    freq_low_hz: float | None = Field(None, gt=0, le=100)
    freq_high_hz: float | None = Field(None, gt=0, le=100)
    thd_pct_above: float | None = Field(None, gt=0, le=100)           # total harmonic distortion, %

    @model_validator(mode="after")
    def _ordered(self) -> QualityLimits:
        for low, high in (("voltage_low_v", "voltage_high_v"), ("freq_low_hz", "freq_high_hz")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo >= hi:
                raise ValueError(f"{low} ({lo}) must be below {high} ({hi})")
        return self

    def limits(self) -> dict[str, float]:
        """The limits that are set, by name."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class AlarmLevel(_Strict):
    level: Level
    demand_kw: float = Field(gt=0, le=100_000)
    on: Literal["projected", "actual"] = "projected"
    quality: QualityLimits | None = None


class AlarmSet(_Strict):
    """Contract-capacity alarm thresholds (DOMAIN.md section 1: user-defined overrun alarms)."""

    levels: list[AlarmLevel] = Field(min_length=1, max_length=3)

    @field_validator("levels")
    @classmethod
    def _unique(cls, v: list[AlarmLevel]) -> list[AlarmLevel]:
        if len({lv.level for lv in v}) != len(v):
            raise ValueError("each level at most once")
        return v


class AlarmAck(_Strict):
    """Acknowledge the raised alarms of one level, or one alarm by its id."""

    level: Level | None = None
    alarm: str | None = Field(None, min_length=1, max_length=MAX_ALARM_ID_LEN)

    @model_validator(mode="after")
    def _one(self) -> AlarmAck:
        if (self.level is None) == (self.alarm is None):
            raise ValueError("give exactly one of 'level' and 'alarm'")
        return self

    @property
    def target(self) -> str:
        """The alarm id or the level to acknowledge."""
        return self.alarm if self.alarm is not None else str(self.level)


class AlarmDocumentError(ValueError):
    """The stored alarm document is not valid settings (the message says where)."""


def parse_document(doc: Any) -> AlarmSet | None:
    """The settings in a stored `alarm.set` document; None when there is none."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise AlarmDocumentError(f"{DOCUMENT}: an object is expected, got {type(doc).__name__}")
    try:
        return AlarmSet.model_validate({k: v for k, v in doc.items() if k not in META_KEYS})
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise AlarmDocumentError(f"{DOCUMENT}: {where}") from None
