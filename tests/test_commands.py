"""Signed cloud commands: signature, audience, time, replay, roles, params, journal, keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_sync.commands import (
    MAX_PAYLOAD_BYTES,
    CommandPolicy,
    CommandVerifier,
    Rejection,
    Target,
    VerifiedCommand,
    resolver_from_config,
    result_payload,
)
from cloud_sync.journal import SKEW_S, CommandJournal, JournalEntry, recovery_step
from cloud_sync.keys import (
    KeyFileError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign_command,
)
from edge.config import load_config
from edge.core.clock import ManualClock

NOW = 1_780_000_000.0
TZ = ZoneInfo("Asia/Taipei")
AUD = "014601/gw-a"
TARGETS = {
    "301": Target("room", "301"), "302": Target("room", "302"), "101": Target("room", "101"),
    "ac-301a": Target("ac", "301"), "ac-302a": Target("ac", "302"), "light-301": Target("light", "301"),
    "door-101": Target("door", "101"), "meter-main": Target("meter", None), "site": Target("site", None),
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"jti": "c-1", "iat": NOW, "exp": NOW + 60, "aud": AUD, "sub": "T042", "role": "teacher",
                         "rooms": ["301"], "action": "ac.set", "target": "ac-301a",
                         "params": {"power_on": True, "setpoint_c": 27}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not ...}


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        self.clock = ManualClock(NOW)
        self.db = root / "commands.db"
        self.verifier = self.make()

    def make(self, **kw: Any) -> CommandVerifier:
        args: dict[str, Any] = {"keys": [self.key.public_key()], "audience": AUD, "resolver": TARGETS.get,
                                "replay_db": self.db, "clock": self.clock, **kw}
        return CommandVerifier(**args)

    def sign(self, **over: Any) -> bytes:
        return sign_command(self.key, claims(**over)).encode()

    def verify(self, payload: bytes, v: CommandVerifier | None = None) -> VerifiedCommand | Rejection:
        return (v or self.verifier).verify(payload)

    def code(self, payload: bytes) -> str:
        out = self.verify(payload)
        return "ok" if isinstance(out, VerifiedCommand) else out.code


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.verifier.journal.close()


def test_valid_command(env: Env) -> None:
    out = env.verify(env.sign())
    assert isinstance(out, VerifiedCommand)
    assert (out.id, out.action, out.target, out.role, out.sub) == ("c-1", "ac.set", "ac-301a", "teacher", "T042")
    assert out.params == {"power_on": True, "setpoint_c": 27}
    assert out.rooms == ("301",)
    assert out.kid == key_id(env.key.public_key())
    [entry] = env.verifier.journal.pending()
    assert (entry.jti, entry.state, entry.command["action"]) == ("c-1", "received", "ac.set")


def test_facility_and_admin_act_school_wide(env: Env) -> None:
    assert env.code(env.sign(jti="f1", role="facility", rooms=..., target="ac-302a")) == "ok"
    assert env.code(env.sign(jti="f2", role="facility", rooms=..., action="relay.set", target="light-301",
                             params={"on": False})) == "ok"
    assert env.code(env.sign(jti="a1", role="admin", rooms=..., action="door.unlock", target="door-101",
                             params={"seconds": 5})) == "ok"
    assert env.code(env.sign(jti="a2", role="admin", rooms=..., action="alarm.set", target="site",
                             params={"levels": [{"level": "warning", "demand_kw": 160}]})) == "ok"


def test_forged_signature_does_not_burn_the_jti(env: Env) -> None:
    good = env.sign()
    head, body, sig = good.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(sig + b"=="))
    raw[5] ^= 0x01
    forged = head + b"." + body + b"." + b64(bytes(raw)).encode()
    out = env.verify(forged)
    assert isinstance(out, Rejection)
    # id null: the jti of a token whose signature fails is nobody's (a result under a real command's
    # id would tell the cloud that command was refused)
    assert (out.id, out.code) == (None, "bad_signature")
    assert out.result(NOW, TZ)["id"] is None
    # claims changed after signing (a teacher's token re-aimed at another room)
    other = b64(json.dumps(claims(target="ac-302a", rooms=["301", "302"])).encode()).encode()
    assert env.code(head + b"." + other + b"." + sig) == "bad_signature"
    assert env.code(good) == "ok"  # the genuine command still goes through: the forgeries burnt nothing


def test_unknown_key(env: Env) -> None:
    stranger = Ed25519PrivateKey.generate()
    assert env.code(sign_command(stranger, claims()).encode()) == "bad_signature"
    assert env.code(sign_command(stranger, claims(), kid=key_id(env.key.public_key())).encode()) == "bad_signature"
    none = env.make(keys=[])
    out = env.verify(env.sign(jti="x"), none)
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == (None, "bad_signature")
    assert "no command keys" in out.message


def _token(header: dict[str, Any], body: dict[str, Any], sign: Any) -> bytes:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}".encode()


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "", None, "HS256", "ES256", "RS256", "Ed25519", "EDDSA"])
def test_other_algs_refused(env: Env, alg: Any) -> None:
    pem = env.key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"} if alg is not None else {"typ": "JWT"}
    # alg confusion: an HMAC keyed with the public key's PEM, the classic attack on sloppy verifiers
    tok = _token(header, claims(), lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    out = env.verify(tok)
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == (None, "bad_signature")
    unsigned = tok.rsplit(b".", 1)[0] + b"."
    assert env.code(unsigned) == "bad_signature"


def test_ecdsa_signature_refused(env: Env) -> None:
    ek = ec.generate_private_key(ec.SECP256R1())
    tok = _token({"alg": "ES256"}, claims(), lambda m: ek.sign(m, ec.ECDSA(hashes.SHA256())))
    assert env.code(tok) == "bad_signature"


def test_crit_header_refused(env: Env) -> None:
    tok = _token({"alg": "EdDSA", "crit": ["exp"], "exp": 1}, claims(), env.key.sign)
    assert env.code(tok) == "bad_signature"
    assert env.code(_token({"alg": "EdDSA"}, claims(), env.key.sign)) == "ok"  # the same, properly formed


def test_wrong_audience(env: Env) -> None:
    assert env.code(env.sign(aud="014601/gw-b")) == "wrong_audience"
    assert env.code(env.sign(aud="999999/gw-a")) == "wrong_audience"


@pytest.mark.parametrize("aud", [[AUD], ["014601/gw-b", AUD], [AUD, AUD], []])
def test_aud_is_one_string_not_a_list(env: Env, aud: list[str]) -> None:
    # CONTRACT.md section 3: a list would make one token valid at every gateway it names
    out = env.verify(env.sign(aud=aud))
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == ("c-1", "bad_request")
    assert "aud" in out.message
    assert not env.verifier.journal.seen("c-1")


def test_expired_and_skew(env: Env) -> None:
    assert env.code(env.sign(jti="e1", iat=NOW - 120, exp=NOW - SKEW_S - 1)) == "expired"
    assert env.code(env.sign(jti="e2", iat=NOW - 120, exp=NOW - SKEW_S + 5)) == "ok"  # within the skew


def test_not_yet_valid(env: Env) -> None:
    assert env.code(env.sign(jti="f1", iat=NOW + SKEW_S + 10, exp=NOW + 300)) == "expired"
    assert env.code(env.sign(jti="f2", nbf=NOW + 200, exp=NOW + 300)) == "expired"
    assert env.code(env.sign(jti="f3", iat=NOW + 10, exp=NOW + 300)) == "ok"  # within the skew


def test_lifetime_bounded(env: Env) -> None:
    assert env.code(env.sign(jti="l1", exp=NOW + 86400)) == "bad_request"
    assert env.code(env.sign(jti="l2", exp=NOW - 1, iat=NOW)) == "bad_request"


def test_replayed_also_after_restart(env: Env) -> None:
    tok = env.sign()
    assert env.code(tok) == "ok"
    out = env.verify(tok)
    assert isinstance(out, Rejection)
    # id null, the original named apart: the cloud de-duplicates results by id, and the first
    # delivery's own result (maybe not even sent yet) is the one that answers "c-1"
    assert (out.id, out.code, out.replay_of) == (None, "replayed", "c-1")
    res = out.result(NOW, TZ)
    assert (res["id"], res["status"], res["code"], res["replay_of"]) == (None, "rejected", "replayed", "c-1")
    env.verifier.journal.close()
    env.verifier = env.make()  # a restart: a new process opens the same database
    assert env.code(tok) == "replayed"
    env.clock.advance(30)
    assert env.code(tok) == "replayed"


def test_forgotten_jtis_stay_refused_when_the_clock_goes_back(env: Env) -> None:
    j = env.verifier.journal
    tok = env.sign(jti="old")
    assert env.code(tok) == "ok"
    j.answered("old")
    env.clock.advance(3600)
    assert j.prune(env.clock.time()) == 1
    assert not j.seen("old")
    env.clock.advance(-3600)  # a Pi without RTC boots with a stale clock
    assert env.code(tok) == "expired"
    env.verifier.journal.close()
    env.verifier = env.make()
    assert env.code(tok) == "expired"  # the horizon is persisted too


def test_teacher_rooms(env: Env) -> None:
    assert env.code(env.sign(jti="t1", target="ac-302a")) == "forbidden"
    assert env.code(env.sign(jti="t2", target="302", rooms=["301"])) == "forbidden"
    assert env.code(env.sign(jti="t3", target="301")) == "ok"  # the whole room
    assert env.code(env.sign(jti="t4", rooms=[])) == "forbidden"
    assert env.code(env.sign(jti="t5", action="alarm.set", target="site",
                             params={"levels": [{"level": "warning", "demand_kw": 160}]})) == "forbidden"
    assert env.code(env.sign(jti="t6", action="door.unlock", target="door-101", params={"seconds": 5})) == "forbidden"
    assert env.code(env.sign(jti="t7", action="door.unlock", target="door-101", params={"seconds": 5},
                             rooms=["101"])) == "ok"


def test_teacher_without_rooms(env: Env) -> None:
    out = env.verify(env.sign(rooms=...))
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == ("c-1", "bad_request")
    assert "rooms" in out.message
    assert env.code(env.sign(jti="r2", rooms="301")) == "bad_request"


def test_setpoint_policy(env: Env) -> None:
    out = env.verify(env.sign(jti="s1", params={"setpoint_c": 18}))
    assert isinstance(out, Rejection)
    assert out.code == "out_of_range"
    assert "26" in out.message
    assert env.code(env.sign(jti="s2", params={"setpoint_c": 28.5})) == "out_of_range"
    assert env.code(env.sign(jti="s3", params={"setpoint_c": 26})) == "ok"
    assert env.code(env.sign(jti="s4", params={"setpoint_c": 28.0})) == "ok"
    wide = env.make(policy=CommandPolicy(setpoint_min_c=24, setpoint_max_c=28))
    assert env.verify(env.sign(jti="s5", params={"setpoint_c": 25}), wide).__class__ is VerifiedCommand
    assert env.code(env.sign(jti="d1", role="admin", action="door.unlock", target="door-101",
                             params={"seconds": 601})) == "out_of_range"
    assert env.code(env.sign(jti="d2", role="admin", action="door.unlock", target="door-101",
                             params={"seconds": 0})) == "out_of_range"


def test_unknown_target_and_wrong_kind(env: Env) -> None:
    assert env.code(env.sign(jti="u1", target="ac-999")) == "unknown_target"
    assert env.code(env.sign(jti="u2", role="admin", action="relay.set", target="ac-301a",
                             params={"on": True})) == "bad_request"


@pytest.mark.parametrize("role", ["teacher", "facility", "admin"])
def test_relay_set_never_drives_a_door(env: Env, role: str) -> None:
    # a latched relay would hold the door open with no re-lock, no 600 s cap and no door event
    out = env.verify(env.sign(jti=f"rd-{role}", role=role, rooms=["101"], action="relay.set", target="door-101",
                              params={"on": True}))
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == (f"rd-{role}", "bad_request")
    assert "door" in out.message
    assert not env.verifier.journal.seen(f"rd-{role}")  # refused before the journal: nothing to carry out
    assert env.code(env.sign(jti=f"du-{role}", role=role, rooms=["101"], action="door.unlock", target="door-101",
                             params={"seconds": 5})) == "ok"
    assert env.code(env.sign(jti=f"rl-{role}", role=role, rooms=["301"], action="relay.set", target="light-301",
                             params={"on": True})) == "ok"
    assert env.code(env.sign(jti="u3", role="admin", action="access.put", target="site",
                             params={"version": 3, "cards": [{"card": "13961168", "doors": ["door-999"]}]})) \
        == "unknown_target"


@pytest.mark.parametrize("payload", [
    b"", b"hello", b"{\"jti\": \"x\"}", b"a.b", b"a.b.c.d", b"\xff\xfe.\x00.x", b"e30.W10.e30", b"!!.??.##",
    b"x" * (MAX_PAYLOAD_BYTES + 1), b"a" * (1024 * 1024),
])
def test_garbage_is_bad_request_with_id_null(env: Env, payload: bytes) -> None:
    out = env.verify(payload)
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == (None, "bad_request")


def test_oversized_but_signed_is_bad_request_with_id_null(env: Env) -> None:
    big = env.sign(jti="big", role="admin", action="access.put", target="site",
                   params={"version": 1, "cards": [{"card": str(i), "doors": ["door-101"]} for i in range(600)]})
    assert len(big) > MAX_PAYLOAD_BYTES
    out = env.verify(big)
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == (None, "bad_request")


def test_payload_not_json_inside_a_jws(env: Env) -> None:
    head = b64(json.dumps({"alg": "EdDSA"}).encode())
    for body in (b"not json", b"[1, 2]", b'{"exp": NaN}', b'{"exp": 1e999}'):
        signing_input = f"{head}.{b64(body)}"
        tok = f"{signing_input}.{b64(env.key.sign(signing_input.encode()))}".encode()
        out = env.verify(tok)
        assert isinstance(out, Rejection)
        assert (out.id, out.code) == (None, "bad_request")


@pytest.mark.parametrize(("action", "target", "params"), [
    ("ac.set", "ac-301a", {"setpoint_c": "26"}),
    ("ac.set", "ac-301a", {"power_on": 1}),
    ("ac.set", "ac-301a", {"setpoint_c": True}),
    ("ac.set", "ac-301a", {"mode": "turbo"}),
    ("ac.set", "ac-301a", {"fan": "max"}),
    ("ac.set", "ac-301a", {"swing": True}),
    ("ac.set", "ac-301a", {}),
    ("relay.set", "light-301", {"on": "yes"}),
    ("relay.set", "light-301", {}),
    ("door.unlock", "door-101", {"seconds": True}),
    ("door.unlock", "door-101", {"seconds": "5"}),
    ("alarm.set", "site", {"levels": []}),
    ("alarm.set", "site", {"levels": [{"level": "warning", "demand_kw": -1}]}),
    ("alarm.ack", "site", {}),
    ("alarm.ack", "site", {"level": "warning", "alarm": "a1"}),
    ("alarm.ack", "site", {"level": "severe"}),
    ("booking.put", "301", {"id": "b1", "start": "2026-06-16T08:00:00", "end": "2026-06-16T09:00:00+08:00"}),
    ("booking.put", "301", {"id": "b1", "start": "2026-06-16T10:00:00+08:00", "end": "2026-06-16T09:00:00+08:00"}),
    ("booking.delete", "301", {}),
    ("access.put", "site", {"version": "3", "cards": []}),
    ("access.put", "site", {"version": 3, "cards": [{"card": "0x1f", "doors": []}]}),
    ("access.put", "site", {"version": 3, "cards": [{"card": "1", "doors": [], "windows": [
        {"days": "mon-fri", "from": "18:00", "to": "07:00"}]}]}),
    ("access.put", "site", {"version": 3, "cards": [{"card": "1", "doors": [], "valid_until": "31/07/2027"}]}),
    ("reboot", "site", {}),
])
def test_wrong_params_are_bad_request(env: Env, action: str, target: str, params: dict[str, Any]) -> None:
    out = env.verify(env.sign(role="admin", rooms=..., action=action, target=target, params=params))
    assert isinstance(out, Rejection)
    assert (out.id, out.code) == ("c-1", "bad_request"), out.message


@pytest.mark.parametrize("claim", ["jti", "iat", "exp", "aud", "sub", "role", "action", "target", "params"])
def test_every_claim_is_required(env: Env, claim: str) -> None:
    assert env.code(env.sign(**{claim: ...})) == "bad_request"


def test_documents(env: Env) -> None:
    access = {"version": 7, "cards": [{"card": "13961168", "person": "S1001", "doors": ["door-101"],
                                       "windows": [{"days": "mon-fri", "from": "07:00", "to": "18:00"}],
                                       "valid_until": "2027-07-31"}, {"card": "42", "doors": []}]}
    out = env.verify(env.sign(jti="acc", role="admin", rooms=..., action="access.put", target="site", params=access))
    assert isinstance(out, VerifiedCommand)
    assert out.params == access  # normalised form keeps "from" as the contract spells it
    booking = {"id": "b1", "start": "2026-06-16T08:00:00+08:00", "end": "2026-06-16T09:00:00+08:00", "title": "PTA"}
    assert env.code(env.sign(jti="bk1", action="booking.put", target="301", params=booking)) == "ok"
    assert env.code(env.sign(jti="bk2", action="booking.delete", target="301", params={"id": "b1"})) == "ok"


def test_key_rotation(env: Env, tmp_path: Path) -> None:
    old, new = Ed25519PrivateKey.generate(), env.key
    v = env.make(keys=[old.public_key(), new.public_key()])
    assert env.code(sign_command(old, claims(jti="k1")).encode()) == "bad_signature"  # old key not trusted by env
    for jti, key, kid in [("k2", old, None), ("k3", new, None), ("k4", old, "unrelated-name")]:
        tok = sign_command(key, claims(jti=jti), kid=kid) if kid else sign_command(key, claims(jti=jti))
        out = env.verify(tok.encode(), v)
        assert isinstance(out, VerifiedCommand), jti
        assert out.kid == key_id(key.public_key())
    # a kid naming one trusted key is held to that key
    held = sign_command(old, claims(jti="k5"), kid=key_id(new.public_key())).encode()
    assert env.verify(held, v).__class__ is Rejection
    v.journal.close()


def test_journal_protocol(tmp_path: Path) -> None:
    clock = ManualClock(NOW)
    j = CommandJournal(tmp_path / "j.db", clock)
    assert j.begin("a", NOW + 60, {"action": "ac.set"})
    assert not j.begin("a", NOW + 60, {"action": "ac.set"})
    assert j.begin("b", NOW + 60, {"action": "door.unlock"})
    assert j.begin("c", NOW + 60, {"action": "relay.set"})
    result = result_payload("a", "ok", "ok", "applied", NOW, TZ, state={"power_on": True})
    j.applied("a", result)
    j.applied("c", result_payload("c", "ok", "ok", "applied", NOW, TZ))
    j.answered("c")
    with pytest.raises(ValueError, match="answered"):
        j.applied("c", {})
    with pytest.raises(ValueError, match="unknown"):
        j.answered("zzz")
    j.close()
    j = CommandJournal(tmp_path / "j.db", clock)  # restart
    pending = {e.jti: e for e in j.pending()}
    assert set(pending) == {"a", "b"}
    assert pending["a"].state == "applied"
    assert pending["a"].result == result
    assert recovery_step(pending["a"], NOW) == "republish"
    assert recovery_step(pending["b"], NOW) == "fail"  # a door pulse is never repeated
    reapply = JournalEntry("x", "received", NOW + 60, {"action": "ac.set"}, None)
    assert recovery_step(reapply, NOW) == "reapply"
    assert recovery_step(reapply, NOW + 600) == "fail"  # expired meanwhile
    assert j.prune(NOW + 3600) == 1  # only the answered one is forgotten
    assert {e.jti for e in j.pending()} == {"a", "b"}
    j.close()


def test_result_payload() -> None:
    r = result_payload(None, "rejected", "bad_request", "not a signed command", 1_780_000_000.0, TZ)
    assert set(r) == {"id", "status", "code", "message", "ts"}
    assert r["id"] is None
    assert r["ts"] == "2026-05-29T04:26:40.000+08:00"


@pytest.mark.parametrize("system_tz", ["UTC", "America/New_York"])
def test_result_ts_carries_the_site_zone_not_the_systems(system_tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", system_tz)
    time.tzset()
    try:
        assert result_payload("a", "ok", "ok", "m", NOW, TZ)["ts"].endswith("+08:00")
        assert Rejection("x", "expired", "m").result(NOW, TZ)["ts"] == "2026-05-29T04:26:40.000+08:00"
        assert Rejection(None, "replayed", "m", "x").result(NOW, ZoneInfo("Europe/Berlin"))["ts"].endswith("+02:00")
    finally:
        monkeypatch.undo()
        time.tzset()


def test_keys_files(tmp_path: Path) -> None:
    pub = generate_keypair(tmp_path / "k" / "cloud.key", tmp_path / "k" / "cloud.pub")
    assert stat.S_IMODE((tmp_path / "k" / "cloud.key").stat().st_mode) == 0o600
    assert load_public_key(tmp_path / "k" / "cloud.pub").kid == pub.kid
    priv = load_private_key(tmp_path / "k" / "cloud.key")
    assert key_id(priv.public_key()) == pub.kid
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k" / "cloud.key", tmp_path / "k" / "cloud2.pub")
    (tmp_path / "junk.pub").write_text("hello")
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    (tmp_path / "ec.pub").write_bytes(ec_pub.public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyFileError, match=r"missing\.pub: cannot read"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(KeyFileError, match=r"junk\.pub: not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")
    with pytest.raises(KeyFileError, match=r"ec\.pub: .*Ed25519"):
        load_public_key(tmp_path / "ec.pub")
    good = (tmp_path / "k" / "cloud.pub").read_text()
    (tmp_path / "cut.pub").write_text(good.replace(good.splitlines()[1], good.splitlines()[1][:-6] + "!!!!=="))
    with pytest.raises(KeyFileError, match=r"cut\.pub: not a PEM public key \(its base64 is damaged\)"):
        load_public_key(tmp_path / "cut.pub")
    (tmp_path / "two.pub").write_text(good + good)
    with pytest.raises(KeyFileError, match=r"two\.pub: holds 2 PEM blocks; put one public key per file"):
        load_public_key(tmp_path / "two.pub")
    with pytest.raises(KeyFileError, match=r"cloud\.key: is a private key"):
        load_public_key(tmp_path / "k" / "cloud.key")
    with pytest.raises(ValueError, match=r"(?s)junk\.pub.*ec\.pub"):
        load_public_keys([tmp_path / "junk.pub", tmp_path / "k" / "cloud.pub", tmp_path / "ec.pub"])


# -- property: nothing random verifies, and verify never raises -------------------------------------
@pytest.fixture(scope="module")
def prop() -> Iterator[Env]:
    with tempfile.TemporaryDirectory() as d:
        e = Env(Path(d))
        yield e
        e.verifier.journal.close()


_STRANGER = Ed25519PrivateKey.generate()
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)
claim_dicts = st.dictionaries(
    st.sampled_from(["jti", "iat", "exp", "aud", "sub", "role", "action", "target", "params", "rooms", "nbf"])
    | st.text(max_size=8), json_values, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_verify(prop: Env, data: bytes) -> None:
    out = prop.verifier.verify(data)
    assert isinstance(out, Rejection)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(claim_dicts, st.dictionaries(st.text(max_size=5), json_values, max_size=3), st.booleans())
def test_random_claims_never_raise(prop: Env, body: dict[str, Any], extra_header: dict[str, Any],
                                   trusted: bool) -> None:
    header = {**extra_header, "alg": "EdDSA"}
    key = prop.key if trusted else _STRANGER
    out = prop.verifier.verify(_token(header, body, key.sign))
    assert isinstance(out, VerifiedCommand | Rejection)
    if not trusted:
        assert isinstance(out, Rejection)
        assert out.code in {"bad_signature", "bad_request"}
    # random well-typed-looking claims signed by the trusted key: whatever verifies really is valid
    if isinstance(out, VerifiedCommand):
        assert body.get("aud") == AUD


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_random_text_never_verifies(prop: Env, text: str) -> None:
    assert isinstance(prop.verifier.verify(text.encode("utf-8", "surrogatepass")), Rejection)


def test_resolver_from_the_example_config(tmp_path: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "example-school.yaml")
    resolve = resolver_from_config(cfg)
    ac = next(d for d in cfg.modbus_devices() if d.kind == "ac")
    door = next(d for d in cfg.relay_channels() if d.kind == "door")
    assert resolve(ac.id) == Target("ac", ac.room)
    assert resolve(door.id) == Target("door", door.room)
    assert resolve(cfg.rooms[0].id) == Target("room", cfg.rooms[0].id)
    assert resolve("site") == Target("site", None)
    assert resolve("nothing-here") is None
    key = Ed25519PrivateKey.generate()
    v = CommandVerifier([key.public_key()], f"{cfg.site.school_id}/{cfg.site.gateway_id}", resolve,
                        replay_db=tmp_path / "c.db", clock=ManualClock(NOW))
    tok = sign_command(key, claims(aud=v.audience, target=ac.id, rooms=[ac.room]))
    assert isinstance(v.verify(tok.encode()), VerifiedCommand)
    v.journal.close()


class _Gateway:
    """What the dispatcher sees of the daemon: the real control entry and arbiter over a recording actuator."""

    def __init__(self, root: Path, error: Exception | None = None) -> None:
        from helpers.sites import small_school

        from edge.core.arbiter import Arbiter
        from edge.core.config import Config
        from edge.core.control import Control
        from edge.core.events import EventBus
        from edge.core.model import Kind

        self.cfg = Config.model_validate(small_school(root, modbus_port=1, broker_port=None, pub_key=None))
        self.clock = ManualClock(NOW)
        self.bus = EventBus()
        self.store = None
        self.kinds = {d.id: Kind(d.kind) for d in self.cfg.devices}
        self.states: dict[str, dict[str, Any]] = {d: {"online": True} for d in self.kinds}
        self.tz = TZ
        self.error = error
        self.commanded: list[str] = []
        self.unlocked: list[str] = []
        self.arbiter = Arbiter(self, clock=self.clock)
        self.control = Control(self.arbiter, self.kinds, lambda d: True, self.actual, lambda d: True,
                               self.cfg.control, self.clock, TZ)

    async def apply(self, target: str, fields: Any) -> Any:
        self.commanded.append(target)
        raise AssertionError(f"{target} must not be commanded")

    async def pulse(self, door_id: str, seconds: float) -> None:
        self.unlocked.append(door_id)
        if self.error is not None:
            raise self.error

    def actual(self, device: str) -> Any:
        return self.states.get(device, {})


def _cmd(action: str, target: str, params: dict[str, Any]) -> VerifiedCommand:
    return VerifiedCommand("j-1", action, target, params, "T042", "teacher", ("101",), NOW, NOW + 60, "k")


async def test_dispatcher_never_drives_a_door_with_relay_set(tmp_path: Path) -> None:
    # also a command journalled before the verifier refused it, re-applied after a restart
    from cloud_sync.dispatch import Dispatcher

    gw = _Gateway(tmp_path)
    res = await Dispatcher(gw).execute(_cmd("relay.set", "door-101", {"on": True}))  # type: ignore[arg-type]
    assert (res["id"], res["status"], res["code"]) == ("j-1", "rejected", "bad_request")
    assert "door.unlock" in res["message"]
    assert res["ts"].endswith("+08:00")
    assert gw.commanded == []
    assert gw.unlocked == []


@pytest.mark.parametrize(("error", "status"), [
    ("apply:device_offline", "failed"), ("apply:write_failed", "failed"), ("apply:unknown_target", "rejected"),
])
async def test_dispatcher_answers_unlock_errors_of_the_daemon(tmp_path: Path, error: str, status: str) -> None:
    from cloud_sync.dispatch import Dispatcher
    from edge.core.driver import ApplyError

    _kind, code = error.split(":")
    exc = ApplyError(code, "no answer")
    gw = _Gateway(tmp_path, exc)
    res = await Dispatcher(gw).execute(_cmd("door.unlock", "door-101", {"seconds": 5}))  # type: ignore[arg-type]
    assert (res["status"], res["code"]) == (status, code)
    assert gw.unlocked == ["door-101"]
