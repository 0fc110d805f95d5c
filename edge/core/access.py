"""Offline access control, the pure part: the allow-list a door reader decides from, and the decision.

The cloud sends the whole list (`access.put`, CONTRACT.md section 3) and the gateway stores it as the
document `cloud/access`; `parse_access` turns that document into an immutable `AllowList` (card ->
its grants), and `decide` answers one tap at one door with nothing but the list, the time and the
site's time zone, so a door opens with the cloud and the network gone.

Rules (each denial says why in `Decision.reason`):
- no list at all: every card is denied (`no_access_list`); an unknown card is denied (`unknown_card`);
- a card's grant names its doors (`not_for_this_door`), the last day it is valid, inclusive, in the
  site's zone (`expired` from the next local midnight), and weekly windows `{days, from, to}` in
  local time, `from` included and `to` excluded (`outside_window`); no windows (absent, null or an
  empty list) means any time;
- a card listed more than once has several grants: it is let in when any of them lets it in (a
  pupil's classroom on school days and the gym on Saturdays), and a denial gives the reason of the
  grant that came closest (its door, then its dates, then its hours).

Card numbers are compared as numbers written in decimal (CONTRACT.md): "0013961168" in a list is the
card a reader reports as "13961168". A document that does not validate is rejected whole
(`AccessListError`): the caller keeps the list it had.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from types import MappingProxyType
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.core.schedule import parse_days, parse_hhmm

DOCUMENT: Final = "cloud/access"   # the store key dispatch keeps the list under (cloud_sync.dispatch.DOC_ACCESS)

# Decision reasons (the `reason` of a card event).
GRANTED: Final = "granted"
NO_LIST: Final = "no_access_list"
UNKNOWN_CARD: Final = "unknown_card"
WRONG_DOOR: Final = "not_for_this_door"
EXPIRED: Final = "expired"
OUTSIDE_WINDOW: Final = "outside_window"
_CLOSENESS: Final = {WRONG_DOOR: 0, EXPIRED: 1, OUTSIDE_WINDOW: 2}   # how far a grant got before it failed

MAX_CARD_DIGITS: Final = 20   # a 64-bit card number
MAX_ID_LEN: Final = 128


class AccessListError(ValueError):
    """The stored document is not a valid access list (the message says where)."""


# -- the immutable list ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    """Weekdays (Monday = 0) and a local time of day, `start_s` included, `end_s` excluded."""

    days: frozenset[int]
    start_s: int
    end_s: int

    def contains(self, local: datetime) -> bool:
        t = local.hour * 3600 + local.minute * 60 + local.second
        return local.weekday() in self.days and self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class Grant:
    """One entry of the list: whose card it is, which doors, when, until which day."""

    person: str | None
    doors: frozenset[str]
    windows: tuple[Window, ...]      # () = any time
    valid_until: date | None         # the last local day the card opens anything; None = no end


@dataclass(frozen=True, slots=True)
class AllowList:
    version: int
    cards: Mapping[str, tuple[Grant, ...]]   # normalised card number -> its grants (read-only)

    def __len__(self) -> int:
        return len(self.cards)


@dataclass(frozen=True, slots=True)
class Decision:
    granted: bool
    person: str | None
    reason: str                      # GRANTED or why not


def card_key(card: str) -> str:
    """The card number as readers report it: decimal digits without leading zeros ("0" for zero)."""
    return card.lstrip("0") or "0"


# -- the document's shape (what dispatch stored: the access.put params plus who sent them) ------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class AccessWindow(_Strict):
    days: str
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
        parse_hhmm(v)   # ValueError for 25:00
        return v

    @model_validator(mode="after")
    def _order(self) -> AccessWindow:
        if parse_hhmm(self.to) <= parse_hhmm(self.from_):
            raise ValueError("'to' must be after 'from'")
        return self


class AccessCard(_Strict):
    card: str = Field(pattern=rf"^[0-9]{{1,{MAX_CARD_DIGITS}}}$")
    person: str | None = Field(None, min_length=1, max_length=MAX_ID_LEN)
    doors: list[str] = Field(max_length=256)
    windows: list[AccessWindow] | None = None
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


class AccessPut(_Strict):
    """The `access.put` params (CONTRACT.md section 3): the verifier checks commands with this model and
    the door service parses the stored document with it (one shape, written once)."""

    version: int = Field(ge=0)
    cards: list[AccessCard]


class _Document(AccessPut):
    # the stored document also carries who sent it and when (by, role, command, stored_at): ignored here
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


def _problems(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _seconds(hhmm: str) -> int:
    h, m = parse_hhmm(hhmm)
    return h * 3600 + m * 60


def parse_access(doc: Any) -> AllowList:
    """The allow-list of a stored `cloud/access` document (a JSON object); raise AccessListError."""
    try:
        parsed = _Document.model_validate(doc)
    except ValidationError as exc:
        raise AccessListError(_problems(exc)) from None
    cards: dict[str, list[Grant]] = {}
    for c in parsed.cards:
        windows = tuple(Window(parse_days(w.days), _seconds(w.from_), _seconds(w.to)) for w in c.windows or ())
        until = None if c.valid_until is None else date.fromisoformat(c.valid_until)
        cards.setdefault(card_key(c.card), []).append(Grant(c.person, frozenset(c.doors), windows, until))
    return AllowList(parsed.version, MappingProxyType({k: tuple(v) for k, v in cards.items()}))


def load_access(text: str) -> AllowList:
    """`parse_access` of the document's stored JSON text."""
    try:
        doc = json.loads(text)
    except ValueError as exc:   # json.JSONDecodeError and UnicodeDecodeError
        raise AccessListError(f"not JSON: {exc}") from None
    return parse_access(doc)


# -- the decision --------------------------------------------------------------------------------------
def _check(grant: Grant, door: str, local: datetime) -> str:
    if door not in grant.doors:
        return WRONG_DOOR
    if grant.valid_until is not None and local.date() > grant.valid_until:
        return EXPIRED
    if grant.windows and not any(w.contains(local) for w in grant.windows):
        return OUTSIDE_WINDOW
    return GRANTED


def decide(allow: AllowList | None, card: str, door: str, now: float, tz: tzinfo) -> Decision:
    """May `card` open `door` at unix time `now` (windows and dates in the site's zone `tz`)?"""
    if allow is None:
        return Decision(False, None, NO_LIST)
    grants = allow.cards.get(card_key(card))
    if not grants:
        return Decision(False, None, UNKNOWN_CARD)
    local = datetime.fromtimestamp(now, tz)
    failed: list[tuple[int, str, str | None]] = []
    for grant in grants:
        why = _check(grant, door, local)
        if why == GRANTED:
            return Decision(True, grant.person, GRANTED)
        failed.append((_CLOSENESS[why], why, grant.person))
    _closeness, why, person = max(failed, key=lambda f: f[0])   # the first of the closest
    return Decision(False, person, why)
