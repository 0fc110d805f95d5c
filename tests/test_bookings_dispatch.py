"""Who may put and delete which booking, and what is refused, through the cloud dispatcher of the real daemon
(and the verifier where it is the one that refuses): edge.bookings' docstring decides, this checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_bookings_daemon import TZ, Site, closed_at, delete, door_open, opened_at, put, running

from cloud_sync.commands import CommandVerifier, Rejection, VerifiedCommand, resolver_from_config
from cloud_sync.dispatch import BOOKING_KEPT_S, DOC_BOOKINGS, load_document
from cloud_sync.keys import sign_command
from edge.core.clock import iso


def stored(s: Site, room: str = "401") -> dict[str, Any]:
    return load_document(s.daemon.store, DOC_BOOKINGS + room) or {}


def outcome(res: dict[str, Any]) -> tuple[str, str]:
    return res["status"], res["code"]


FORBIDDEN = ("rejected", "forbidden")
BAD = ("rejected", "bad_request")
OK = ("ok", "ok")


async def test_a_teacher_books_as_themself_and_deletes_only_their_own(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        now = s.clock.time()
        t1 = {"role": "teacher", "sub": "T1"}
        t2 = {"role": "teacher", "sub": "T2"}
        assert outcome(await s.run(put("b1", "401", now - 60, now + 3600, **t1))) == OK
        assert stored(s)["b1"]["by"] == "T1"                    # `by` left out: the token's sub, stored
        await opened_at(s, within=2)
        # a teacher books for nobody else ...
        res = await s.run(put("b2", "401", now, now + 600, by="T2", **t1), wakes=False)
        assert outcome(res) == FORBIDDEN, res
        assert "b2" not in stored(s)
        # ... and does not delete or replace a colleague's booking, even in their own room
        before = stored(s)
        assert outcome(await s.run(delete("b1", "401", **t2), wakes=False)) == FORBIDDEN
        assert outcome(await s.run(put("b1", "401", now, now + 60, **t2), wakes=False)) == FORBIDDEN
        assert stored(s) == before
        assert door_open(s.school)                              # still T1's booking
        assert outcome(await s.run(put("b1", "401", now - 60, now + 7200, **t1))) == OK   # their own: replaced
        assert stored(s)["b1"]["end"] == iso(now + 7200, TZ)
        assert outcome(await s.run(delete("b1", "401", **t1))) == OK
        await closed_at(s, within=2)
        # facility staff book on a teacher's behalf; that teacher owns the booking
        assert outcome(await s.run(put("b3", "401", now + 600, now + 1200, by="T2"))) == OK
        assert (stored(s)["b3"]["by"], stored(s)["b3"]["stored_by"]) == ("T2", "F001")
        assert outcome(await s.run(delete("b3", "401", **t1), wakes=False)) == FORBIDDEN
        assert outcome(await s.run(delete("b3", "401", **t2))) == OK
        # staff's own bookings: no teacher's to delete; an admin deletes any
        assert outcome(await s.run(put("b4", "401", now + 600, now + 1200))) == OK
        assert outcome(await s.run(delete("b4", "401", **t1), wakes=False)) == FORBIDDEN
        assert outcome(await s.run(delete("b4", "401", role="admin", sub="A1"))) == OK
        # deleting what is not stored changes nothing, for anyone
        res = await s.run(delete("b4", "401", **t1), wakes=False)
        assert outcome(res) == OK
        assert "nothing to delete" in res["message"]
        assert stored(s) == {}


async def test_a_put_in_another_room_moves_the_booking(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        now = s.clock.time()
        assert outcome(await s.run(put("b1", "401", now - 60, now + 3600, by="T1"))) == OK
        await opened_at(s, within=2)
        # a teacher of room 101 cannot take T1's booking away from 401
        res = await s.run(put("b1", "101", now - 60, now + 3600, role="teacher", sub="T9"), wakes=False)
        assert outcome(res) == FORBIDDEN
        assert "in room 401" in res["message"]
        # T1 (teaching in both rooms) moves it
        res = await s.run(put("b1", "101", now - 60, now + 3600, role="teacher", sub="T1", rooms=("401", "101")))
        assert outcome(res) == OK, res
        assert "moved from room 401" in res["message"]
        assert "b1" not in stored(s, "401")
        assert "b1" in stored(s, "101")
        await closed_at(s, within=2)                            # door-401 relocks ...
        await opened_at(s, within=2, channel_no=2)              # ... and door-101 opens


async def test_bad_bookings_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        now = s.clock.time()
        for cmd, why in [(put("b1", "401", now - 7200, now - 60), "ended"),         # in the past
                         (put("b1", "401", now - 7200, now), "ended"),              # ends now
                         (put("b1", "102", now + 60, now + 600), "no doors")]:      # a room without doors
            res = await s.run(cmd, wakes=False)
            assert outcome(res) == BAD, res
            assert why in res["message"]
        res = await s.run(put("b1", "102", now + 60, now + 600, role="teacher", sub="T1"), wakes=False)
        assert outcome(res) == BAD
        assert stored(s, "401") == {}
        assert stored(s, "102") == {}
        assert not door_open(s.school)

        # an end before the start, a time without offset, another room of a teacher: the verifier's refusals
        key = Ed25519PrivateKey.generate()
        verifier = CommandVerifier([key.public_key()], "014601/gw-test", resolver_from_config(s.daemon.cfg),
                                   replay_db=tmp_path / "commands.db", clock=s.clock)
        try:
            def verify(target: str, params: dict[str, Any], **over: Any) -> VerifiedCommand | Rejection:
                claims = {"jti": f"j-{len(params)}-{target}-{sorted(over.items())}", "iat": now, "exp": now + 60,
                          "aud": "014601/gw-test", "sub": "T1", "role": "teacher", "rooms": ["401"],
                          "action": "booking.put", "target": target, "params": params, **over}
                return verifier.verify(sign_command(key, claims))

            good = {"id": "b1", "start": iso(now + 600, TZ), "end": iso(now + 1200, TZ)}
            for target, params, code in [
                    ("401", {**good, "end": iso(now + 300, TZ)}, "bad_request"),            # end before start
                    ("401", {**good, "start": "2026-06-16T09:00:00"}, "bad_request"),       # no offset
                    ("101", good, "forbidden")]:                                             # not the teacher's room
                out = verify(target, params)
                assert isinstance(out, Rejection), (target, params)
                assert out.code == code, (target, params, out)
            out = verify("401", good)
            assert isinstance(out, VerifiedCommand)
            assert outcome(await s.dispatcher.execute(out)) == OK  # the same booking, verified and carried out
        finally:
            verifier.journal.close()


async def test_long_ended_bookings_are_dropped_when_the_room_is_written(tmp_path: Path) -> None:
    async with running(tmp_path) as s:
        now = s.clock.time()
        old = {"id": "old", "start": iso(now - BOOKING_KEPT_S - 7200, TZ), "end": iso(now - BOOKING_KEPT_S - 3600, TZ),
               "by": "T1"}
        recent = {"id": "recent", "start": iso(now - 7200, TZ), "end": iso(now - 3600, TZ), "by": "T1"}
        s.daemon.store.set(DOC_BOOKINGS + "401", json.dumps({"old": old, "recent": recent}))
        assert outcome(await s.run(put("b1", "401", now + 600, now + 1200))) == OK
        assert sorted(stored(s)) == ["b1", "recent"]
        status = s.service.status()["rooms"]["401"]
        assert [b["id"] for b in status["bookings"]] == ["recent", "b1"]
        assert [w["bookings"] for w in status["windows"]] == [["b1"]]   # an ended booking holds nothing open
