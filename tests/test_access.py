"""The allow-list and the door decision (edge.core.access), pure: a ManualClock gives the time, zones are explicit."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_sync.dispatch import DOC_ACCESS
from cloud_sync.params import AccessPut
from edge.core import access
from edge.core.access import AccessListError, AllowList, decide, load_access, parse_access
from edge.core.clock import ManualClock

TAIPEI = ZoneInfo("Asia/Taipei")
WED_0659 = datetime(2026, 6, 17, 6, 59, tzinfo=TAIPEI).timestamp()   # a Wednesday, Taipei time


def doc(*cards: dict[str, Any], version: int = 3, **meta: Any) -> dict[str, Any]:
    return {"version": version, "cards": list(cards), **meta}


def card(number: str = "13961168", person: str | None = "S1001", doors: tuple[str, ...] = ("door-101",),
         **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"card": number, "doors": list(doors), **extra}
    if person is not None:
        out["person"] = person
    return out


SCHOOL_HOURS = [{"days": "mon-fri", "from": "07:00", "to": "18:00"}]


def test_the_document_key_is_the_one_dispatch_stores() -> None:
    assert access.DOCUMENT == DOC_ACCESS


def test_the_contract_example_parses_as_stored_by_dispatch() -> None:
    params = {"version": 7, "cards": [{"card": "13961168", "person": "S1001", "doors": ["door-101"],
                                       "windows": SCHOOL_HOURS, "valid_until": "2027-07-31"}]}
    AccessPut.model_validate(params)   # what the verifier accepts ...
    stored = {**params, "by": "A001", "role": "admin", "command": "j-1", "stored_at": "2026-06-17T06:00:00+08:00"}
    allow = load_access(json.dumps(stored))   # ... the service reads back, with dispatch's own fields beside it
    assert allow.version == 7
    assert len(allow) == 1
    (grant,) = allow.cards["13961168"]
    assert grant.person == "S1001"
    assert grant.doors == frozenset({"door-101"})
    assert grant.windows == (access.Window(frozenset(range(5)), 7 * 3600, 18 * 3600),)
    assert str(grant.valid_until) == "2027-07-31"


def test_the_list_is_immutable() -> None:
    allow = parse_access(doc(card()))
    with pytest.raises(TypeError):
        allow.cards["1"] = ()  # type: ignore[index]
    with pytest.raises(AttributeError):
        allow.version = 9  # type: ignore[misc]


def test_a_card_opens_its_doors_inside_its_windows_only() -> None:
    clock = ManualClock(WED_0659)
    allow = parse_access(doc(card(windows=SCHOOL_HOURS)))
    steps = [(0, "outside_window"), (60, "granted"), (11 * 3600 - 1, "granted"), (1, "outside_window"),
             (3 * 86400 - 11 * 3600, "outside_window")]   # 06:59, 07:00, 17:59:59, 18:00, Saturday 07:00
    for advance, expected in steps:
        clock.advance(advance)
        got = decide(allow, "13961168", "door-101", clock.time(), TAIPEI)
        assert (got.reason, got.granted, got.person) == (expected, expected == "granted", "S1001"), expected
    assert decide(allow, "13961168", "door-102", WED_0659 + 3600, TAIPEI).reason == "not_for_this_door"


def test_windows_are_in_the_site_time_zone() -> None:
    allow = parse_access(doc(card(windows=SCHOOL_HOURS)))
    ten_in_taipei = WED_0659 + 3 * 3600 + 60          # 02:00 UTC: 10:00 in Taipei, 04:00 in Paris
    assert decide(allow, "13961168", "door-101", ten_in_taipei, TAIPEI).granted
    assert decide(allow, "13961168", "door-101", ten_in_taipei, ZoneInfo("Europe/Paris")).reason == "outside_window"
    # a day that has 23 hours: 07:30 local the morning after the spring change still opens
    paris = ZoneInfo("Europe/Paris")
    after_dst = datetime(2026, 3, 30, 7, 30, tzinfo=paris).timestamp()   # Monday after the last Sunday of March
    assert decide(allow, "13961168", "door-101", after_dst, paris).granted


def test_no_windows_means_any_time_and_the_last_valid_day_counts_to_local_midnight() -> None:
    allow = parse_access(doc(card(valid_until="2026-06-17"), card("42", person=None, windows=[])))
    late = datetime(2026, 6, 17, 23, 59, 59, tzinfo=TAIPEI).timestamp()
    assert decide(allow, "13961168", "door-101", late, TAIPEI).granted
    got = decide(allow, "13961168", "door-101", late + 1, TAIPEI)
    assert (got.granted, got.reason, got.person) == (False, "expired", "S1001")
    sunday_night = datetime(2026, 6, 21, 3, 0, tzinfo=TAIPEI).timestamp()
    assert decide(allow, "42", "door-101", sunday_night, TAIPEI) == access.Decision(True, None, "granted")


def test_unknown_cards_and_no_list_are_denied() -> None:
    allow = parse_access(doc(card()))
    assert decide(allow, "7", "door-101", WED_0659, TAIPEI) == access.Decision(False, None, "unknown_card")
    assert decide(None, "13961168", "door-101", WED_0659, TAIPEI) == access.Decision(False, None, "no_access_list")
    assert decide(parse_access(doc()), "13961168", "door-101", WED_0659, TAIPEI).reason == "unknown_card"


def test_card_numbers_compare_as_numbers() -> None:
    allow = parse_access(doc(card("0013961168"), card("0", person="S0")))
    assert decide(allow, "13961168", "door-101", WED_0659, TAIPEI).granted
    assert decide(allow, "0013961168", "door-101", WED_0659, TAIPEI).granted
    assert decide(allow, "0", "door-101", WED_0659, TAIPEI).person == "S0"


def test_a_card_listed_twice_is_let_in_by_either_entry_and_denied_with_the_closest_reason() -> None:
    gym = card(doors=("gym",), windows=[{"days": "sat", "from": "09:00", "to": "12:00"}])
    room = card(doors=("door-101",), windows=SCHOOL_HOURS, valid_until="2026-07-31")
    allow = parse_access(doc(room, gym))
    sat_10 = datetime(2026, 6, 20, 10, 0, tzinfo=TAIPEI).timestamp()
    wed_10 = WED_0659 + 3 * 3600 + 60
    assert decide(allow, "13961168", "gym", sat_10, TAIPEI).granted
    assert decide(allow, "13961168", "door-101", wed_10, TAIPEI).granted
    assert decide(allow, "13961168", "gym", wed_10, TAIPEI).reason == "outside_window"   # not "not_for_this_door"
    assert decide(allow, "13961168", "door-101", sat_10, TAIPEI).reason == "outside_window"
    august = datetime(2026, 8, 3, 10, 0, tzinfo=TAIPEI).timestamp()
    assert decide(allow, "13961168", "door-101", august, TAIPEI).reason == "expired"
    assert decide(allow, "13961168", "door-999", august, TAIPEI).reason == "not_for_this_door"


@pytest.mark.parametrize(("bad", "where"), [
    ([], "a valid dictionary"),
    ({"cards": []}, "version"),
    ({"version": "3", "cards": []}, "version"),
    ({"version": -1, "cards": []}, "version"),
    ({"version": True, "cards": []}, "version"),
    (doc(card("0x1f")), "cards.0.card"),
    (doc(card(12345)), "cards.0.card"),
    (doc({"card": "1", "doors": "door-101"}), "cards.0.doors"),
    (doc(card(windows=[{"days": "weekdays", "from": "07:00", "to": "18:00"}])), "cards.0.windows.0.days"),
    (doc(card(windows=[{"days": "mon", "from": "7am", "to": "18:00"}])), "cards.0.windows.0.from"),
    (doc(card(windows=[{"days": "mon", "from": "18:00", "to": "07:00"}])), "'to' must be after 'from'"),
    (doc(card(windows=[{"days": "mon", "from": "07:00", "to": "07:00"}])), "'to' must be after 'from'"),
    (doc(card(windows=[{"days": "mon", "from": "07:00"}])), "cards.0.windows.0.to"),
    (doc(card(valid_until="31/07/2027")), "cards.0.valid_until"),
    (doc(card(), card(pin="1234")), "cards.1.pin"),
    (doc(card(person="")), "cards.0.person"),
])
def test_a_list_that_does_not_validate_is_rejected_whole(bad: Any, where: str) -> None:
    with pytest.raises(AccessListError) as err:
        parse_access(bad)
    assert where in str(err.value)


def test_stored_text_that_is_not_json_is_rejected() -> None:
    for text in ("", "{not json", "\udcff", "null", "[1]"):
        with pytest.raises(AccessListError):
            load_access(text)


@given(st.text(max_size=30), st.text(max_size=12), st.floats(min_value=0, max_value=4e9))
def test_decide_answers_any_card_at_any_door_at_any_time(number: str, door: str, now: float) -> None:
    allow: AllowList = parse_access(doc(card(windows=SCHOOL_HOURS, valid_until="2027-07-31"), card("42")))
    got = decide(allow, number, door, now, TAIPEI)
    assert got.granted == (got.reason == "granted")
    assert got.reason in {"granted", "unknown_card", "not_for_this_door", "outside_window", "expired"}
