"""Venue bookings, the pure planner (edge.core.bookings) on an injected clock: lead, end, overlaps, deletes,
clock jumps."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from edge.core.bookings import STEP_GRACE_S, Booking, Planner, Window, from_document, merge, parse_time
from edge.core.clock import ManualClock

TZ = ZoneInfo("Asia/Taipei")
LEAD = 1800.0


def at(hhmm: str) -> float:
    """Unix time of HH:MM on a school day (2026-06-16, Asia/Taipei)."""
    h, m = (int(x) for x in hhmm.split(":"))
    return datetime(2026, 6, 16, h, m, tzinfo=TZ).timestamp()


def booking(bid: str, start: str, end: str, room: str = "401") -> Booking:
    return Booking(room, bid, at(start), at(end))


class NtpClock(ManualClock):
    """A ManualClock whose wall time can also step by itself (an NTP correction); monotonic time does not."""

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def step(self, seconds: float) -> None:
        self.offset += seconds


def planner(start: str) -> tuple[NtpClock, Planner]:
    clock = NtpClock(at(start))
    return clock, Planner(LEAD, clock)


def test_a_room_opens_lead_before_the_start_and_closes_at_the_end() -> None:
    clock, p = planner("08:00")
    books = [booking("b1", "09:00", "10:00")]
    plan = p.plan(books)
    assert plan.open == {}
    assert plan.next_s == pytest.approx(1800)              # look again at 08:30, not before
    clock.advance(1799.9)
    assert p.plan(books).open == {}
    clock.advance(0.1)
    plan = p.plan(books)
    assert set(plan.open) == {"401"}
    assert plan.open["401"].left_s == pytest.approx(5400)  # open until 10:00
    assert plan.open["401"].bookings == ("b1",)
    assert plan.next_s == pytest.approx(5400)
    clock.advance(5399.9)
    assert "401" in p.plan(books).open
    clock.advance(0.1)
    plan = p.plan(books)
    assert plan.open == {}                                 # at the end, at once
    assert plan.next_s == math.inf
    assert plan.windows == {}


def test_a_booking_in_progress_opens_at_once() -> None:
    _clock, p = planner("09:20")
    plan = p.plan([booking("b1", "09:00", "10:00")])
    assert plan.open["401"].left_s == pytest.approx(2400)


def test_lead_zero_opens_at_the_start() -> None:
    clock = ManualClock(at("08:59"))
    p = Planner(0.0, clock)
    books = [booking("b1", "09:00", "10:00")]
    assert p.plan(books).open == {}
    clock.advance(60)
    assert "401" in p.plan(books).open


def test_overlapping_and_touching_bookings_merge_into_one_window() -> None:
    books = [booking("b1", "09:00", "10:00"), booking("b2", "09:30", "11:00"),   # overlap
             booking("b3", "11:30", "12:00"),                                    # its lead touches b2's end
             booking("b4", "14:00", "15:00"), booking("x1", "09:00", "10:00", room="101")]
    windows = merge(books, LEAD)
    assert windows["401"] == [Window("401", at("08:30"), at("12:00"), ("b1", "b2", "b3")),
                              Window("401", at("13:30"), at("15:00"), ("b4",))]
    assert windows["101"] == [Window("101", at("08:30"), at("10:00"), ("x1",))]
    # the door stays open from 08:30 to 12:00 without a relock in between, then opens again at 13:30
    clock, p = planner("08:30")
    for t in ("09:00", "10:00", "10:59", "11:00", "11:30", "11:59"):
        clock.advance(at(t) - clock.time())
        plan = p.plan(books)
        assert "401" in plan.open, t
    assert p.plan(books).open["401"].bookings == ("b3",)
    clock.advance(at("12:00") - clock.time())
    plan = p.plan(books)
    assert "401" not in plan.open
    assert plan.next_s == pytest.approx(at("13:30") - at("12:00"))
    clock.advance(plan.next_s)
    assert p.plan(books).open["401"].bookings == ("b4",)


def test_the_longest_booking_says_how_long_the_room_stays_open() -> None:
    _clock, p = planner("09:10")
    plan = p.plan([booking("long", "09:00", "11:00"), booking("short", "09:05", "09:45")])
    assert plan.open["401"].left_s == pytest.approx(at("11:00") - at("09:10"))
    assert plan.open["401"].bookings == ("long", "short")
    assert plan.next_s == pytest.approx(at("09:45") - at("09:10"))   # a change is looked at, not acted on


def test_a_deleted_booking_closes_the_room_at_once() -> None:
    _clock, p = planner("09:10")
    books = [booking("b1", "09:00", "10:00"), booking("b2", "09:00", "09:30", room="101")]
    assert set(p.plan(books).open) == {"401", "101"}
    plan = p.plan(books[1:])
    assert set(plan.open) == {"101"}
    assert not p.opened & {books[0].key}   # forgotten


def test_an_edited_end_is_followed() -> None:
    _clock, p = planner("09:10")
    assert p.plan([booking("b1", "09:00", "10:00")]).open["401"].left_s == pytest.approx(3000)
    assert p.plan([booking("b1", "09:00", "09:20")]).open["401"].left_s == pytest.approx(600)
    assert p.plan([booking("b1", "09:00", "09:05")]).open == {}


# -- clock jumps ---------------------------------------------------------------------------------------
def test_a_jump_forward_into_a_booking_opens_it() -> None:
    clock, p = planner("08:00")
    books = [booking("b1", "09:00", "10:00")]
    assert p.plan(books).open == {}
    clock.step(at("09:15") - at("08:00"))          # NTP: it was 09:15 all along
    assert p.plan(books).open["401"].left_s == pytest.approx(2700)


def test_a_jump_forward_past_the_end_closes_and_over_a_whole_booking_never_opens() -> None:
    clock, p = planner("09:00")
    books = [booking("b1", "09:00", "10:00"), booking("b2", "11:00", "12:00")]
    assert p.plan(books).open["401"].bookings == ("b1",)
    clock.step(at("13:00") - at("09:00"))
    plan = p.plan(books)
    assert plan.open == {}
    assert p.over == {books[0].key, books[1].key}  # both history: b2 was jumped over, it does not open late
    assert plan.next_s == math.inf


def test_a_small_step_back_after_the_end_does_not_reopen() -> None:
    clock, p = planner("09:59")
    books = [booking("b1", "09:00", "10:00")]
    assert "401" in p.plan(books).open
    clock.advance(60)
    assert p.plan(books).open == {}
    clock.step(-120)                               # 09:59 again, by a step of two minutes
    plan = p.plan(books)
    assert plan.open == {}                         # no reopen-and-relock
    assert plan.next_s == math.inf
    clock.advance(600)
    assert p.plan(books).open == {}


def test_a_small_step_back_after_the_opening_does_not_relock() -> None:
    clock, p = planner("08:30")
    books = [booking("b1", "09:00", "10:00")]
    assert "401" in p.plan(books).open
    clock.step(-(STEP_GRACE_S - 1))                # 08:25: before the opening, within the grace
    plan = p.plan(books)
    assert plan.open["401"].left_s == pytest.approx(at("10:00") - clock.time())
    clock.advance(at("10:00") - clock.time())
    assert p.plan(books).open == {}                # and it still closes at its end


def test_a_big_step_back_follows_the_corrected_clock() -> None:
    clock, p = planner("09:30")                    # a clock 2 h fast opened the room 2 h early
    books = [booking("b1", "09:00", "10:00")]
    assert "401" in p.plan(books).open
    clock.step(-7200)                              # 07:30 really
    plan = p.plan(books)
    assert plan.open == {}
    assert plan.next_s == pytest.approx(3600)      # opens at 08:30, when the booking's time really comes
    clock.advance(3600)
    assert "401" in p.plan(books).open


def test_a_big_step_back_after_the_end_reopens_a_booking_that_is_really_on() -> None:
    clock, p = planner("10:30")                    # a clock fast by an hour ended b1 at 09:30 really
    books = [booking("b1", "09:00", "10:00")]
    assert p.plan(books).open == {}
    clock.step(-3600)
    assert p.plan(books).open["401"].left_s == pytest.approx(1800)


def test_a_new_planner_reopens_a_booking_in_progress() -> None:
    """A restart in the middle of a booking: nothing is remembered, the wall clock alone opens the room."""
    clock, p = planner("09:30")
    books = [booking("b1", "09:00", "10:00")]
    assert "401" in p.plan(books).open
    again = Planner(LEAD, clock)
    assert again.plan(books).open["401"].left_s == pytest.approx(1800)


# -- the stored document ------------------------------------------------------------------------------
def test_stored_documents_parse_and_bad_entries_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    doc = {"b1": {"id": "b1", "start": "2026-06-16T09:00:00+08:00", "end": "2026-06-16T10:00:00+08:00",
                  "title": "PTA", "by": "T042"},
           "b2": {"start": "2026-06-16T09:00:00", "end": "2026-06-16T10:00:00+08:00"},       # no offset
           "b3": {"start": "2026-06-16T10:00:00+08:00", "end": "2026-06-16T09:00:00+08:00"},  # backwards
           "b4": {"start": "soon"}, "b5": "junk"}
    assert from_document("401", doc) == [Booking("401", "b1", at("09:00"), at("10:00"), "PTA", "T042")]
    assert sum("skipped" in r.message for r in caplog.records) == 4
    assert from_document("401", None) == []
    assert from_document("401", ["not", "a", "map"]) == []
    assert parse_time("2026-06-16T09:00:00+08:00") == at("09:00")
    with pytest.raises(ValueError, match="no offset"):
        parse_time("2026-06-16T09:00:00")
