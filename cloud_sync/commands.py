"""Signed cloud commands (CONTRACT.md section 3): verify, authorise, validate.

`CommandVerifier.verify(payload)` turns the bytes of one `P/cmd` message into a `VerifiedCommand`
or a `Rejection` carrying the contract's result code. The checks run cheapest-and-least-trusting
first, and nothing an attacker sends without a valid signature touches the replay memory:

1. size (> 16 KiB), UTF-8, compact JWS shape, header and claims JSON   -> bad_request, id null
2. header `alg` is exactly EdDSA (no `none`, no HS256 over the public key), no `crit`,
   Ed25519 signature by a trusted key (`kid` picks one when it names one)  -> bad_signature, id null
3. claim types (all required; `rooms` for teachers; `aud` one string), known action -> bad_request
4. `aud` is exactly `{school_id}/{gateway_id}`                          -> wrong_audience
5. time: not expired, not issued in the future, lifetime bounded       -> expired / bad_request
6. target known and of a kind the action applies to                   -> unknown_target / bad_request
7. role and rooms                                                       -> forbidden
8. params per action (types, then policy ranges)                        -> bad_request / out_of_range
9. replay: the jti is journalled `received` in one SQLite commit; if it already was -> replayed

Ids: a jti is trusted only once the signature verifies. Up to and including step 2 the result's
`id` is null: anyone who can publish on `P/cmd` can copy a real command's jti into a forged token,
and a result under that id would tell the cloud its command was refused. From step 3 on the
Rejection carries the token's jti. A `replayed` result (step 9) does not either: the jti belongs
to the first delivery, whose result the cloud may not have yet (it de-duplicates results by `id`,
so a `rejected` under that id would hide the real one). It answers `id` null and names the
original in `replay_of`; the cloud logs it and otherwise ignores it (the original's own result,
with the original's id, is the answer to that command). Only an authentic, current, authorised
and valid command burns its jti (step 9), so a rejected command can be corrected and re-signed.

`relay.set` applies to lights and fans only. A door lock is a relay channel too, but a door is
opened only by `door.unlock`: a pulse the relay board ends by itself (flash), capped at
`control.max_unlock_s` and logged as a `door` event. `relay.set` on a door is `bad_request` (the action
does not apply to that kind of target, for any role), not `forbidden` (which is about who asks).

The params models are in `cloud_sync.params`, the journal (replay memory, crash recovery) in
`cloud_sync.journal`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cloud_sync.journal import SKEW_S, CommandJournal
from cloud_sync.keys import PublicKey, RawPublicKey
from cloud_sync.params import MAX_ID_LEN, PARAMS, AccessPut, AcSet, DoorUnlock, IdStr
from edge.core.clock import Clock, SystemClock, iso
from edge.core.config import Config, ControlConfig

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_LIFETIME_S = 900.0      # exp - iat: a command is for now, not for a queue that delivers it tomorrow

Role = Literal["teacher", "facility", "admin"]
Action = Literal["ac.set", "relay.set", "door.unlock", "alarm.set", "alarm.ack", "booking.put", "booking.delete",
                 "access.put", "quota.topup", "usage.report"]
Code = Literal["ok", "bad_request", "bad_signature", "expired", "replayed", "wrong_audience", "forbidden",
               "out_of_range", "unknown_target", "device_offline", "denied_by_ems", "denied_by_quota", "write_failed",
               "storage_full"]
Status = Literal["ok", "rejected", "failed"]

# What each action may target: device kinds, "room" (a room id) or "site".
TARGET_KINDS: dict[str, frozenset[str]] = {
    "ac.set": frozenset({"ac", "room"}),
    "relay.set": frozenset({"light", "fan"}),    # never "door": see the module docstring
    "door.unlock": frozenset({"door"}),
    "alarm.set": frozenset({"site"}),
    "alarm.ack": frozenset({"site"}),
    "quota.topup": frozenset({"room"}),           # a class's prepaid AC quota (the old class cards)
    "usage.report": frozenset({"room", "site"}),
    "booking.put": frozenset({"room"}),
    "booking.delete": frozenset({"room"}),
    "access.put": frozenset({"site"}),
}
TEACHER_ACTIONS = frozenset({"ac.set", "relay.set", "door.unlock", "booking.put", "booking.delete", "usage.report"})


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Rejection:
    id: str | None
    code: Code
    message: str
    replay_of: str | None = None   # a `replayed` command's jti (its `id` is null: see the module docstring)

    @property
    def status(self) -> Status:
        """`failed` for a sound command the gateway could not take (storage_full), else `rejected`."""
        return "failed" if self.code == "storage_full" else "rejected"

    def result(self, ts: float, tz: tzinfo) -> dict[str, Any]:
        out = result_payload(self.id, self.status, self.code, self.message, ts, tz)
        if self.replay_of is not None:
            out["replay_of"] = self.replay_of
        return out


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    id: str                      # the jti
    action: str
    target: str
    params: Mapping[str, Any]    # validated and normalised (unset fields left out)
    sub: str
    role: Role
    rooms: tuple[str, ...] | None
    iat: float
    exp: float
    kid: str                     # the trusted key that verified the signature


def result_payload(id: str | None, status: Status, code: str, message: str, ts: float, tz: tzinfo,
                   state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `P/cmd/result` payload; `ts` in unix seconds, rendered ISO 8601 in the site's zone `tz`."""
    out: dict[str, Any] = {"id": id, "status": status, "code": code, "message": message, "ts": iso(ts, tz)}
    if state is not None:
        out["state"] = dict(state)
    return out


# -- targets -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    kind: str            # a device kind ("ac", "light", "door", ...), "room" or "site"
    room: str | None     # the room a device stands in; a room's own id; None for site-wide things


Resolver = Callable[[str], Target | None]


def resolver_from_config(cfg: Config) -> Resolver:
    """Device ids -> (kind, room); room ids -> ("room", id); "site" -> ("site", None)."""
    table: dict[str, Target] = {r.id: Target("room", r.id) for r in cfg.rooms}
    for d in cfg.devices:
        table[d.id] = Target(d.kind, getattr(d, "room", None))
    table["site"] = Target("site", None)
    return table.get


_CONTROL = ControlConfig()   # the policies' defaults are the control entry's (edge.core.control), written once


@dataclass(frozen=True, slots=True)
class CommandPolicy:
    setpoint_min_c: float = _CONTROL.setpoint_min_c     # Ministry of Education classroom policy (DOMAIN.md §3)
    setpoint_max_c: float = _CONTROL.setpoint_max_c
    skew_s: float = SKEW_S
    max_lifetime_s: float = MAX_LIFETIME_S
    max_unlock_s: float = _CONTROL.max_unlock_s
    teacher_max_unlock_s: float = _CONTROL.teacher_max_unlock_s


# -- claims ------------------------------------------------------------------------------------------
class Claims(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)  # iss, nbf, ... may come along

    jti: str = IdStr
    iat: float
    exp: float
    aud: str                # one gateway: a list would make one token valid at every gateway it names
    sub: str = IdStr
    role: Role
    action: Action
    target: str = IdStr
    params: dict[str, Any]
    rooms: list[str] | None = None
    nbf: float | None = None


# -- the verifier ------------------------------------------------------------------------------------
class _Reject(Exception):
    def __init__(self, id: str | None, code: Code, message: str, replay_of: str | None = None) -> None:
        super().__init__(message)
        self.rejection = Rejection(id, code, message, replay_of)


_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(seg: str) -> bytes:
    if not _SEGMENT.fullmatch(seg) or len(seg) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def _bad_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError("number out of range")
    return v


def _json_object(data: bytes) -> dict[str, Any]:
    obj = json.loads(data.decode("utf-8"), parse_constant=_bad_constant, parse_float=_finite)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _problems(exc: ValidationError, prefix: str = "") -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{prefix}{loc}: {e['msg']}" if loc else f"{prefix.rstrip('.')}: {e['msg']}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


@dataclass
class CommandVerifier:
    """Verifies `P/cmd` payloads for one gateway (`audience` = "{school_id}/{gateway_id}")."""

    keys: Sequence[PublicKey | bytes | RawPublicKey]    # raw bytes, or a key object that gives them
    audience: str
    resolver: Resolver
    policy: CommandPolicy = field(default_factory=CommandPolicy)
    replay_db: str | os.PathLike[str] | CommandJournal = "commands.db"
    clock: Clock = field(default_factory=SystemClock)
    journal: CommandJournal = field(init=False)
    _keys: list[PublicKey] = field(init=False)

    def __post_init__(self) -> None:
        self._keys = [k if isinstance(k, PublicKey) else PublicKey.of(k) for k in self.keys]
        if isinstance(self.replay_db, CommandJournal):
            self.journal = self.replay_db
        else:
            self.journal = CommandJournal(self.replay_db, self.clock)

    def verify(self, payload: bytes | str, refuse_new: bool = False) -> VerifiedCommand | Rejection:
        """Never raises for any input (only sqlite3.Error if the journal's disk fails).

        `refuse_new`: storage is at its hard cap; a sound command is answered `storage_full` (failed)
        instead of being journalled and carried out, so that events are never the ones dropped.
        """
        try:
            return self._verify(payload, refuse_new)
        except _Reject as r:
            return r.rejection

    def _verify(self, payload: bytes | str, refuse_new: bool = False) -> VerifiedCommand:
        raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
        if len(raw) > MAX_PAYLOAD_BYTES:
            raise _Reject(None, "bad_request", f"command of {len(raw)} bytes; at most {MAX_PAYLOAD_BYTES}")
        try:
            parts = raw.decode("utf-8").strip().split(".")
            if len(parts) != 3:
                raise ValueError("a compact JWS has three dot-separated parts")
            header = _json_object(_b64url(parts[0]))
            body = _json_object(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, binascii.Error, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError too
            raise _Reject(None, "bad_request", f"not a signed command (compact JWS): {exc}") from None
        # the claims are not trusted before the signature is: a forged token's jti is nobody's id
        kid = self._check_signature(header, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
        hint = body.get("jti")
        jti = hint if isinstance(hint, str) and 0 < len(hint) <= MAX_ID_LEN else None

        try:
            claims = Claims.model_validate(body)
        except ValidationError as exc:
            raise _Reject(jti, "bad_request", _problems(exc)) from None
        assert jti is not None  # Claims validated it
        if claims.role == "teacher" and claims.rooms is None:
            raise _Reject(jti, "bad_request", "rooms: required for teachers")

        if claims.aud != self.audience:
            raise _Reject(jti, "wrong_audience", f"for {claims.aud!r}, this gateway is {self.audience!r}")

        self._check_time(claims, jti)
        target = self.resolver(claims.target)
        if target is None:
            raise _Reject(jti, "unknown_target", f"no device or room {claims.target!r}")
        if target.kind not in TARGET_KINDS[claims.action]:
            raise _Reject(jti, "bad_request", f"{claims.action} applies to {sorted(TARGET_KINDS[claims.action])},"
                                              f" {claims.target!r} is a {target.kind}")
        if claims.role == "teacher":
            if claims.action not in TEACHER_ACTIONS:
                raise _Reject(jti, "forbidden", f"teachers may not {claims.action}")
            if target.room is None or target.room not in (claims.rooms or []):
                raise _Reject(jti, "forbidden", f"{claims.target!r} is not in the teacher's rooms")
        params = self._check_params(claims, jti)

        self.journal.maybe_prune(self.clock.time(), self.policy.skew_s)
        command = {**claims.model_dump(exclude_none=True), "params": params, "kid": kid}
        if refuse_new and not self.journal.seen(jti):
            raise _Reject(jti, "storage_full", "the gateway's storage is full: not carried out; send it again later")
        if not self.journal.begin(jti, claims.exp, command):
            raise _Reject(None, "replayed", f"command {jti!r} was already received", replay_of=jti)
        return VerifiedCommand(jti, claims.action, claims.target, params, claims.sub, claims.role,
                               tuple(claims.rooms) if claims.rooms is not None else None, claims.iat, claims.exp, kid)

    def _check_signature(self, header: Mapping[str, Any], signing_input: bytes, signature: bytes) -> str:
        alg = header.get("alg")
        if alg != "EdDSA":
            raise _Reject(None, "bad_signature", f"alg {alg!r} refused; commands are signed with EdDSA (Ed25519)")
        if "crit" in header:
            raise _Reject(None, "bad_signature", "critical header extensions are not supported")
        if len(signature) != 64:
            raise _Reject(None, "bad_signature", "an Ed25519 signature has 64 bytes")
        # Keys come from the configuration only: jwk/jku/x5c headers are ignored, never trusted.
        kid = header.get("kid")
        named = [k for k in self._keys if k.kid == kid]
        for key in named or self._keys:
            if key.verify(signature, signing_input):
                return key.kid
        if not self._keys:
            raise _Reject(None, "bad_signature", "no command keys are configured (cloud.command_keys)")
        raise _Reject(None, "bad_signature", "the signature does not verify with any trusted key")

    def _check_time(self, c: Claims, jti: str) -> None:
        now, skew = self.clock.time(), self.policy.skew_s
        if c.exp < c.iat:
            raise _Reject(jti, "bad_request", "exp is before iat")
        if c.exp - c.iat > self.policy.max_lifetime_s:
            raise _Reject(jti, "bad_request",
                          f"lifetime {c.exp - c.iat:.0f} s; at most {self.policy.max_lifetime_s:.0f} s")
        if c.iat < self.journal.iat_floor:
            raise _Reject(jti, "expired", "issued before the command journal was reset (a damaged one was set"
                                          " aside): it may have been applied already; send a new one")
        if now > c.exp + skew or c.exp <= self.journal.horizon:
            raise _Reject(jti, "expired", f"expired {now - c.exp:.0f} s ago")
        if c.iat > now + skew or (c.nbf is not None and c.nbf > now + skew):
            raise _Reject(jti, "expired", f"not valid yet (issued {c.iat - now:.0f} s in the future: clock skew?)")

    def _check_params(self, c: Claims, jti: str) -> dict[str, Any]:
        try:
            model = PARAMS[c.action].model_validate(c.params)
        except ValidationError as exc:
            raise _Reject(jti, "bad_request", _problems(exc, "params.")) from None
        pol = self.policy
        if isinstance(model, AcSet) and model.setpoint_c is not None \
                and not pol.setpoint_min_c <= model.setpoint_c <= pol.setpoint_max_c:
            raise _Reject(jti, "out_of_range", f"setpoint {model.setpoint_c:g} °C outside the policy range"
                                               f" {pol.setpoint_min_c:g}–{pol.setpoint_max_c:g} °C")
        if isinstance(model, DoorUnlock):
            cap = pol.teacher_max_unlock_s if c.role == "teacher" else pol.max_unlock_s
            if not 1 <= model.seconds <= cap:
                whose = " for a teacher (longer: book the room)" if c.role == "teacher" else ""
                raise _Reject(jti, "out_of_range", f"seconds {model.seconds:g}; 1–{cap:g}{whose}")
        if isinstance(model, AccessPut):
            for card in model.cards:
                for door in card.doors:
                    t = self.resolver(door)
                    if t is None or t.kind != "door":
                        raise _Reject(jti, "unknown_target", f"card {card.card}: no door {door!r}")
        return model.model_dump(exclude_unset=True, by_alias=True)
