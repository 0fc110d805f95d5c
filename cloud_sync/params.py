"""The params of each command action (CONTRACT.md section 3): one strict pydantic model per action.

Strict: no coercion (`"26"` is not a setpoint, `1` is not `true`), no unknown fields. The models check
shape and types only; the policy ranges (setpoints, door pulse length) are the verifier's.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.core.access import AccessPut
from edge.core.alarms import AlarmAck, AlarmSet
from edge.core.control import AcFields, SwitchFields

MAX_ID_LEN = 128


class Params(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


IdStr = Field(min_length=1, max_length=MAX_ID_LEN)


# ac.set and relay.set take exactly what every other control source gives the control entry
AcSet = AcFields
RelaySet = SwitchFields


class DoorUnlock(Params):
    seconds: float


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


class QuotaTopUp(Params):
    """Add prepaid AC energy to a class (the first top-up starts its quota)."""

    kwh: float = Field(gt=0, le=100_000)


class UsageReport(Params):
    """Send today's AC use so far as `usage` events (no params)."""


# AccessPut and AlarmSet: the core's models, re-exported
__all__ = ["PARAMS", "AcSet", "AccessPut", "AlarmAck", "AlarmSet", "DoorUnlock", "RelaySet"]

PARAMS: dict[str, type[BaseModel]] = {
    "ac.set": AcSet, "relay.set": RelaySet, "door.unlock": DoorUnlock, "alarm.set": AlarmSet, "alarm.ack": AlarmAck,
    "booking.put": BookingPut, "booking.delete": BookingDelete, "access.put": AccessPut,
    "quota.topup": QuotaTopUp, "usage.report": UsageReport,
}
