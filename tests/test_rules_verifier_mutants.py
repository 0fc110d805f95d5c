"""The verifier's rules that mutation testing found unpinned (docs/mutation-results.md).

The audience and the teachers' rooms were pinned by their result codes but not by what the rejection
says (the message is what an operator reads in the cloud's log); the token's time limits were pinned
except at `exp == iat` and in their messages, and the iat floor of a journal that was set aside after
damage (every token issued before the fresh journal is refused) had no test in the verifier's suite.
Keys, tokens and targets come from test_commands, the assertions from test_verifier_rules.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_verifier_rules
from test_commands import AUD, NOW, Env
from test_verifier_rules import NO_ROOM, accepted, refused

from cloud_sync.commands import MAX_PAYLOAD_BYTES, Rejection, VerifiedCommand
from cloud_sync.journal import PRUNE_EVERY_S, SKEW_S, CommandJournal
from cloud_sync.params import MAX_ID_LEN

env = test_verifier_rules.env   # the same verifier over NO_ROOM: one fixture, not a copy


# -- wrong_audience ------------------------------------------------------------------------------------
def test_wrong_audience_names_both_audiences(env: Env) -> None:
    out = refused(env.verifier, env.sign(aud="014601/gw-b"), "wrong_audience")
    assert out.message == f"for '014601/gw-b', this gateway is {AUD!r}"


# -- teachers and their rooms ----------------------------------------------------------------------------
def test_a_teacher_without_rooms_is_told_so(env: Env) -> None:
    out = refused(env.verifier, env.sign(rooms=...), "bad_request")
    assert out.message == "rooms: required for teachers"


@pytest.mark.parametrize(("target", "rooms"), [("ac-302a", ["301"]), ("ac-hall", ["301"]), ("302", ["301"])])
def test_a_teacher_outside_her_rooms_is_told_which_target(env: Env, target: str, rooms: list[str]) -> None:
    out = refused(env.verifier, env.sign(target=target, rooms=rooms), "forbidden")
    assert out.message == f"{target!r} is not in the teacher's rooms"


def test_a_teacher_is_told_which_action_she_may_not_take(env: Env) -> None:
    out = refused(env.verifier, env.sign(action="alarm.set", target="site",
                                         params={"levels": [{"level": "warning", "demand_kw": 160}]}), "forbidden")
    assert out.message == "teachers may not alarm.set"


def test_an_unknown_target_is_named(env: Env) -> None:
    out = refused(env.verifier, env.sign(target="ac-999"), "unknown_target")
    assert out.message == "no device or room 'ac-999'"


# -- the token's time ----------------------------------------------------------------------------------
def test_a_token_whose_exp_equals_its_iat_is_valid(env: Env) -> None:
    accepted(env.verifier, env.sign(iat=NOW, exp=NOW))


@pytest.mark.parametrize(("times", "code", "message"), [
    ({"exp": NOW - 1}, "bad_request", "exp is before iat"),
    ({"exp": NOW + 901}, "bad_request", "lifetime 901 s; at most 900 s"),
    ({"iat": NOW - 120, "exp": NOW - SKEW_S - 1}, "expired", f"expired {SKEW_S + 1:.0f} s ago"),
    ({"iat": NOW + SKEW_S + 1, "exp": NOW + SKEW_S + 60}, "expired",
     f"not valid yet (issued {SKEW_S + 1:.0f} s in the future: clock skew?)"),
])
def test_time_rejections_say_by_how_much(env: Env, times: dict[str, float], code: str, message: str) -> None:
    out = refused(env.verifier, env.sign(**times), code)
    assert out.message == message


def test_a_journal_set_aside_after_damage_refuses_every_token_issued_before_it(env: Env, tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    db.write_bytes(os.urandom(4096))
    journal = CommandJournal(db, env.clock)   # set aside and started afresh at NOW: the iat floor
    assert journal.iat_floor == NOW
    v = env.make(replay_db=journal, resolver=NO_ROOM.get)
    try:
        out = refused(v, env.sign(iat=NOW - 0.5, exp=NOW + 60), "expired")
        assert out.message == ("issued before the command journal was reset (a damaged one was set aside):"
                               " it may have been applied already; send a new one")
        accepted(v, env.sign(iat=NOW, exp=NOW + 60))   # issued at the floor: after the reset
    finally:
        journal.close()


# -- the rest of the verifier's path -------------------------------------------------------------------
def test_a_text_payload_is_verified_like_its_bytes(env: Env) -> None:
    out = env.verifier.verify(env.sign().decode())
    assert isinstance(out, VerifiedCommand), out
    assert (out.id, out.iat, out.exp) == ("c-1", NOW, NOW + 60)


def test_a_lone_surrogate_in_a_text_payload_is_bad_request(env: Env) -> None:
    refused(env.verifier, env.sign().decode() + "\udc80", "bad_request", id_null=True)   # type: ignore[arg-type]


def test_size_and_shape_rejections_say_why(env: Env) -> None:
    tok = env.sign()
    out = refused(env.verifier, tok + b" " * (MAX_PAYLOAD_BYTES + 1 - len(tok)), "bad_request", id_null=True)
    assert out.message == f"command of {MAX_PAYLOAD_BYTES + 1} bytes; at most {MAX_PAYLOAD_BYTES}"
    out = refused(env.verifier, b"a.b", "bad_request", id_null=True)
    assert out.message == "not a signed command (compact JWS): a compact JWS has three dot-separated parts"


@pytest.mark.parametrize(("jti", "id_null"), [("", True), ("j", False), ("j" * MAX_ID_LEN, False)])
def test_a_rejection_after_the_signature_carries_any_usable_jti(env: Env, jti: str, id_null: bool) -> None:
    refused(env.verifier, env.sign(jti=jti, role="student"), "bad_request", jti, id_null=id_null)


def test_the_journal_keeps_the_verified_command(env: Env) -> None:
    out = accepted(env.verifier, env.sign(role="facility", rooms=..., params={"mode": "cool"}))
    [entry] = env.verifier.journal.pending()
    assert entry.command == {"jti": "c-1", "iat": NOW, "exp": NOW + 60, "aud": AUD, "sub": "T042", "role": "facility",
                             "action": "ac.set", "target": "ac-301a", "params": {"mode": "cool"}, "kid": out.kid}


def test_answered_commands_are_forgotten_once_they_can_no_longer_be_valid(env: Env) -> None:
    accepted(env.verifier, env.sign(jti="old"))
    env.verifier.journal.answered("old")
    env.clock.advance(60 + SKEW_S + PRUNE_EVERY_S + 1)
    accepted(env.verifier, env.sign(jti="new", iat=env.clock.time(), exp=env.clock.time() + 60))
    assert not env.verifier.journal.seen("old")


def test_storage_full_refuses_new_commands_but_still_names_replays(env: Env) -> None:
    accepted(env.verifier, env.sign(jti="known"))
    out = env.verifier.verify(env.sign(jti="fresh"), refuse_new=True)
    assert isinstance(out, Rejection)
    assert (out.id, out.code, out.status) == ("fresh", "storage_full", "failed")
    assert out.message == "the gateway's storage is full: not carried out; send it again later"
    assert not env.verifier.journal.seen("fresh")
    out = env.verifier.verify(env.sign(jti="known"), refuse_new=True)
    assert isinstance(out, Rejection)
    assert (out.id, out.code, out.replay_of, out.message) == (None, "replayed", "known",
                                                              "command 'known' was already received")
