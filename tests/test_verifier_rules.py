"""The verifier's rules, each pinned by its exact result code and by the nearest case still accepted.

A rejection before the replay step journals nothing: the jti is not burnt, so a corrected command can
be signed again under it. Keys, tokens and targets come from test_commands.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_commands import AUD, NOW, TARGETS, TZ, Env, _token, b64, claims

from cloud_sync.commands import MAX_PAYLOAD_BYTES, CommandVerifier, Rejection, Target, VerifiedCommand
from cloud_sync.journal import SKEW_S
from cloud_sync.keys import key_id, sign_command

# the site's devices that stand in no room: a hall's AC, a corridor light
NO_ROOM = {**TARGETS, "ac-hall": Target("ac", None), "light-hall": Target("light", None)}
LEVELS = {"levels": [{"level": "warning", "demand_kw": 160}]}
ACCESS = {"version": 1, "cards": [{"card": "42", "doors": ["door-101"]}]}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    e.verifier.journal.close()
    e.verifier = e.make(resolver=NO_ROOM.get)
    yield e
    e.verifier.journal.close()


def refused(v: CommandVerifier, payload: bytes, code: str, jti: str = "c-1", *, id_null: bool = False) -> Rejection:
    """Rejected with `code`, under the jti (or id null), and nothing journalled."""
    out = v.verify(payload)
    assert isinstance(out, Rejection), f"accepted: {out}"
    assert (out.code, out.id) == (code, None if id_null else jti), out.message
    assert out.result(NOW, TZ)["status"] == "rejected"
    assert not v.journal.seen(jti)
    assert v.journal.pending() == []
    return out


def accepted(v: CommandVerifier, payload: bytes) -> VerifiedCommand:
    out = v.verify(payload)
    assert isinstance(out, VerifiedCommand), out
    return out


# -- wrong_audience: the whole string, nothing like it ------------------------------------------------
@pytest.mark.parametrize(("token_aud", "gateway"), [
    ("014601/gw-a2", "014601/gw-a"),     # this gateway's audience is a prefix of the token's
    ("014601/gw-a", "014601/gw-a2"),     # the token's audience is a prefix of this gateway's
    ("x014601/gw-a", "014601/gw-a"),     # ... a suffix
    ("014601/gw-a/", "014601/gw-a"),
    ("014601", "014601/gw-a"),           # the school alone
    ("014601/GW-A", "014601/gw-a"),      # no case folding
    (" 014601/gw-a", "014601/gw-a"),     # no trimming
    ("", "014601/gw-a"),
])
def test_audience_is_the_whole_gateway_id(env: Env, tmp_path: Path, token_aud: str, gateway: str) -> None:
    v = env.make(audience=gateway, replay_db=tmp_path / "gateway.db")
    try:
        refused(v, env.sign(aud=token_aud), "wrong_audience")
        accepted(v, env.sign(jti="own", aud=gateway))
    finally:
        v.journal.close()


@pytest.mark.parametrize("aud", [[AUD], ["014601/gw-b", AUD], []])
def test_audience_list_is_bad_request(env: Env, aud: list[str]) -> None:
    refused(env.verifier, env.sign(aud=aud), "bad_request")


# -- forbidden: teachers act in their rooms only ---------------------------------------------------
@pytest.mark.parametrize("rooms", [["301"], [], [""], ["301", "302", "101"]])
@pytest.mark.parametrize(("action", "target", "params"), [
    ("ac.set", "ac-hall", {"power_on": True}),
    ("relay.set", "light-hall", {"on": True}),
])
def test_teacher_is_forbidden_a_device_without_a_room(env: Env, rooms: list[str], action: str, target: str,
                                                        params: dict[str, Any]) -> None:
    refused(env.verifier, env.sign(rooms=rooms, action=action, target=target, params=params), "forbidden")
    accepted(env.verifier, env.sign(jti="fac", role="facility", rooms=..., action=action, target=target,
                                    params=params))


@pytest.mark.parametrize(("action", "target", "params", "rooms"), [
    ("ac.set", "ac-302a", {"power_on": True}, ["301"]),
    ("ac.set", "302", {"power_on": True}, ["301"]),             # a room target
    ("relay.set", "light-301", {"on": True}, ["302"]),
    ("door.unlock", "door-101", {"seconds": 5}, ["301"]),
    ("booking.put", "302", {"id": "b1", "start": "2026-06-16T08:00:00+08:00",
                            "end": "2026-06-16T09:00:00+08:00"}, ["301"]),
    ("ac.set", "ac-301a", {"power_on": True}, ["30"]),          # room ids are compared whole
    ("ac.set", "ac-301a", {"power_on": True}, ["3011"]),
    ("ac.set", "ac-301a", {"power_on": True}, ["301 "]),
])
def test_teacher_is_forbidden_another_room(env: Env, action: str, target: str, params: dict[str, Any],
                                           rooms: list[str]) -> None:
    refused(env.verifier, env.sign(rooms=rooms, action=action, target=target, params=params), "forbidden")
    room = NO_ROOM[target].room
    assert room is not None
    accepted(env.verifier, env.sign(jti="own", rooms=["999", room], action=action, target=target, params=params))


@pytest.mark.parametrize("rooms", [["301"], [], [""]])
@pytest.mark.parametrize(("action", "params"), [("alarm.set", LEVELS), ("access.put", ACCESS),
                                               ("alarm.ack", {"level": "warning"})])
def test_teacher_is_forbidden_facility_actions(env: Env, rooms: list[str], action: str,
                                               params: dict[str, Any]) -> None:
    out = refused(env.verifier, env.sign(rooms=rooms, action=action, target="site", params=params), "forbidden")
    assert action in out.message  # refused as an action teachers may not take, not (only) for its room
    accepted(env.verifier, env.sign(jti="adm", role="admin", rooms=..., action=action, target="site", params=params))


# -- out_of_range: policy ranges, both ends -------------------------------------------------------
@pytest.mark.parametrize(("setpoint", "ok"), [
    (25.9, False), (28.1, False), (-1e9, False), (1e9, False), (26, True), (26.0, True), (28.0, True), (27.5, True),
])
def test_setpoint_range(env: Env, setpoint: float, ok: bool) -> None:
    tok = env.sign(params={"setpoint_c": setpoint})
    if ok:
        accepted(env.verifier, tok)
    else:
        refused(env.verifier, tok, "out_of_range")
        accepted(env.verifier, env.sign(params={"setpoint_c": 27}))  # corrected, under the same jti


@pytest.mark.parametrize(("seconds", "ok"), [
    (0, False), (601, False), (0.5, False), (600.5, False), (-5, False), (1, True), (600, True), (1.5, True),
])
def test_door_unlock_range(env: Env, seconds: float, ok: bool) -> None:
    tok = env.sign(role="admin", rooms=..., action="door.unlock", target="door-101", params={"seconds": seconds})
    if ok:
        accepted(env.verifier, tok)
    else:
        refused(env.verifier, tok, "out_of_range")


# -- expired: exp and iat (and nbf) against the clock, with the skew ----------------------------------
@pytest.mark.parametrize(("times", "code"), [
    ({"iat": NOW - 120, "exp": NOW - SKEW_S - 1}, "expired"),          # past exp
    ({"iat": NOW - 120, "exp": NOW - SKEW_S}, "ok"),                    # ... still within the skew
    ({"iat": NOW + SKEW_S + 1, "exp": NOW + SKEW_S + 60}, "expired"),   # issued in the future beyond the skew
    ({"iat": NOW + SKEW_S, "exp": NOW + SKEW_S + 60}, "ok"),
    ({"nbf": NOW + SKEW_S + 1}, "expired"),                             # not valid yet
    ({"nbf": NOW + SKEW_S}, "ok"),
    ({"exp": NOW + 900}, "ok"),                                         # the longest lifetime
    ({"exp": NOW + 901}, "bad_request"),
    ({"exp": NOW - 1}, "bad_request"),                                  # exp before iat
])
def test_time_claims(env: Env, times: dict[str, float], code: str) -> None:
    tok = env.sign(**times)
    if code == "ok":
        accepted(env.verifier, tok)
    else:
        refused(env.verifier, tok, code)


# -- bad_signature: EdDSA by a trusted key, nothing else; id null -------------------------------------
def _pem(env: Env) -> bytes:
    return env.key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("case", ["none-unsigned", "none-with-ed25519", "hs256-over-the-pem", "hs256-with-ed25519",
                                  "unknown-key", "unknown-key-naming-a-trusted-kid", "crit", "body-changed"])
def test_bad_signature(env: Env, case: str) -> None:
    stranger = Ed25519PrivateKey.generate()
    tok = {
        "none-unsigned": lambda: _token({"alg": "none"}, claims(), lambda m: b""),
        "none-with-ed25519": lambda: _token({"alg": "none"}, claims(), env.key.sign),
        "hs256-over-the-pem": lambda: _token({"alg": "HS256"}, claims(),
                                             lambda m: hmac.new(_pem(env), m, hashlib.sha256).digest()),
        "hs256-with-ed25519": lambda: _token({"alg": "HS256"}, claims(), env.key.sign),
        "unknown-key": lambda: sign_command(stranger, claims()).encode(),
        "unknown-key-naming-a-trusted-kid": lambda: sign_command(
            stranger, claims(), kid=key_id(env.key.public_key())).encode(),
        "crit": lambda: _token({"alg": "EdDSA", "crit": ["exp"], "exp": 1}, claims(), env.key.sign),
        "body-changed": lambda: _changed_body(env),
    }[case]()
    out = refused(env.verifier, tok, "bad_signature", id_null=True)
    if case.startswith(("none", "hs256")):
        assert "alg" in out.message  # refused for its alg, whatever the signature bytes
    accepted(env.verifier, _token({"alg": "EdDSA"}, claims(), env.key.sign))  # the same claims, properly signed


def _changed_body(env: Env) -> bytes:
    head, _body, sig = env.sign().split(b".")
    other = b64(json.dumps(claims(target="ac-302a", rooms=["302"])).encode()).encode()
    return head + b"." + other + b"." + sig


# -- bad_request: size, shape, claims, params ----------------------------------------------------
def test_size_limit(env: Env) -> None:
    tok = env.sign()
    at_limit = tok + b" " * (MAX_PAYLOAD_BYTES - len(tok))   # surrounding white space is allowed, and counted
    refused(env.verifier, at_limit + b" ", "bad_request", id_null=True)
    assert len(at_limit) == MAX_PAYLOAD_BYTES
    accepted(env.verifier, at_limit)


@pytest.mark.parametrize("payload", [
    b"", b"a.b", b"a.b.c.d", b"\xff.\xfe.\xfd",
    f"{b64(b'not json')}.{b64(b'{}')}.{b64(bytes(64))}".encode(),
    f"{b64(b'{}')}.{b64(b'[1, 2]')}.{b64(bytes(64))}".encode(),
])
def test_shape_is_bad_request(env: Env, payload: bytes) -> None:
    refused(env.verifier, payload, "bad_request", id_null=True)


@pytest.mark.parametrize(("over", "id_null"), [
    ({"exp": ...}, False),
    ({"iat": "now"}, False),
    ({"role": "student"}, False),
    ({"action": "reboot"}, False),
    ({"rooms": ...}, False),                      # a teacher's rooms are required
    ({"rooms": "301"}, False),
    ({"params": []}, False),
    ({"aud": [AUD]}, False),
    ({"jti": "j" * 129}, True),                   # no usable jti: id null
])
def test_claims_are_bad_request(env: Env, over: dict[str, Any], id_null: bool) -> None:
    jti = over.get("jti", "c-1")
    refused(env.verifier, env.sign(**over), "bad_request", jti, id_null=id_null)


@pytest.mark.parametrize(("action", "target", "params"), [
    ("ac.set", "ac-301a", {}),
    ("ac.set", "ac-301a", {"setpoint_c": "26"}),
    ("ac.set", "ac-301a", {"swing": True}),
    ("door.unlock", "door-101", {"seconds": "5"}),
    ("relay.set", "door-101", {"on": True}),      # the action does not apply to a door: not about who asks
    ("relay.set", "ac-301a", {"on": True}),
])
def test_params_and_target_kind_are_bad_request(env: Env, action: str, target: str, params: dict[str, Any]) -> None:
    refused(env.verifier, env.sign(role="admin", rooms=..., action=action, target=target, params=params),
            "bad_request")


# -- unknown_target ---------------------------------------------------------------------------
@pytest.mark.parametrize("over", [
    {"target": "ac-999"},
    {"target": "ac-999", "role": "admin", "rooms": ...},
    {"role": "admin", "rooms": ..., "action": "access.put", "target": "site",
     "params": {"version": 1, "cards": [{"card": "42", "doors": ["door-999"]}]}},
    {"role": "admin", "rooms": ..., "action": "access.put", "target": "site",
     "params": {"version": 1, "cards": [{"card": "42", "doors": ["ac-301a"]}]}},   # not a door
])
def test_unknown_target(env: Env, over: dict[str, Any]) -> None:
    refused(env.verifier, env.sign(**over), "unknown_target")


# -- replayed: the one rejection after the journal -------------------------------------------------
def test_replayed(env: Env) -> None:
    tok = env.sign()
    accepted(env.verifier, tok)
    out = env.verify(tok)
    assert isinstance(out, Rejection)
    assert (out.code, out.id, out.replay_of) == ("replayed", None, "c-1")
    [entry] = env.verifier.journal.pending()
    assert (entry.jti, entry.state) == ("c-1", "received")   # the first delivery's entry, untouched
    out = env.verify(env.sign(params={"power_on": False}))    # another command under a used jti
    assert isinstance(out, Rejection)
    assert (out.code, out.id, out.replay_of) == ("replayed", None, "c-1")
    assert env.verifier.journal.pending()[0].command["params"] == {"power_on": True, "setpoint_c": 27}


@pytest.mark.parametrize(("role", "seconds", "ok"), [
    ("teacher", 10, True), ("teacher", 10.5, False), ("teacher", 600, False),
    ("facility", 10.5, True), ("facility", 600, True), ("admin", 11, True),
])
def test_a_teachers_unlock_lets_people_through_and_no_more(env: Env, role: str, seconds: float, ok: bool) -> None:
    rooms = ["101"] if role == "teacher" else ...
    tok = env.sign(role=role, rooms=rooms, action="door.unlock", target="door-101", params={"seconds": seconds})
    if ok:
        accepted(env.verifier, tok)
    else:
        refused(env.verifier, tok, "out_of_range")
