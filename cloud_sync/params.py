"""The params of each command action (CONTRACT.md section 3): one strict pydantic model per action.

Strict: no coercion (`"26"` is not a setpoint, `1` is not `true`), no unknown fields. The models check
shape and types only; the policy ranges (setpoints, door pulse length) are the verifier's.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.core.control import AcFields, SwitchFields
from edge.core.schedule import parse_days

MAX_ID_LEN = 128


class Params(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


IdStr = Field(min_length=1, max_length=MAX_ID_LEN)


# ac.set and relay.set take exactly what every other control source gives the control entry
AcSet = AcFields
RelaySet = SwitchFields


class DoorUnlock(Params):
    seconds: float


class AlarmLevel(Params):
    level: Literal["notice", "warning", "critical"]
    demand_kw: float = Field(gt=0, le=100_000)


class AlarmSet(Params):
    """Contract-capacity alarm thresholds (DOMAIN.md section 1: user-defined overrun alarms)."""

    levels: list[AlarmLevel] = Field(min_length=1, max_length=3)

    @field_validator("levels")
    @classmethod
    def _unique(cls, v: list[AlarmLevel]) -> list[AlarmLevel]:
        if len({lv.level for lv in v}) != len(v):
            raise ValueError("each level at most once")
        return v


def _aware(v: str) -> str:
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError("an ISO 8601 date-time is expected") from None
    if dt.tzinfo is None:
        raise ValueError("the date-time needs an offset, e.g. +08:00")
    return v


class BookingPut(Params):
    id: str = IdStr
    start: str
    end: str
    title: str = Field("", max_length=200)
    by: str | None = Field(None, max_length=MAX_ID_LEN)

    _start = field_validator("start", "end")(_aware)

    @model_validator(mode="after")
    def _order(self) -> BookingPut:
        if datetime.fromisoformat(self.end) <= datetime.fromisoformat(self.start):
            raise ValueError("end must be after start")
        return self


class BookingDelete(Params):
    id: str = IdStr


class Window(Params):
    days: str   # the schedules' grammar (edge.core.schedule.parse_days): mon-fri, sat,sun, daily
    from_: str = Field(alias="from")
    to: str

    @field_validator("days")
    @classmethod
    def _days(cls, v: str) -> str:
        parse_days(v)
        return v

    @field_validator("from_", "to")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not re.fullmatch(r"\d\d:\d\d", v):
            raise ValueError("HH:MM is expected")
        time.fromisoformat(v)  # ValueError for 25:00
        return v

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.to <= self.from_:
            raise ValueError("'to' must be after 'from'")
        return self


class Card(Params):
    card: str = Field(pattern=r"^[0-9]{1,20}$")
    person: str | None = Field(None, min_length=1, max_length=MAX_ID_LEN)
    doors: list[str] = Field(max_length=256)
    windows: list[Window] | None = None
    valid_until: str | None = None

    @field_validator("valid_until")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                date.fromisoformat(v)
            except ValueError:
                raise ValueError("YYYY-MM-DD is expected") from None
        return v


class AccessPut(Params):
    version: int = Field(ge=0)
    cards: list[Card]


PARAMS: dict[str, type[BaseModel]] = {
    "ac.set": AcSet, "relay.set": RelaySet, "door.unlock": DoorUnlock, "alarm.set": AlarmSet,
    "booking.put": BookingPut, "booking.delete": BookingDelete, "access.put": AccessPut,
}
