"""End to end on a real broker: the virtual school and the daemon in-process, commands signed like the app."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import free_port, until
from helpers.app import Watcher, claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker

from cloud_sync.keys import generate_keypair, key_id, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.core.clock import iso
from edge.core.config import Config
from edge.core.control import admit_all
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)
TZ = ZoneInfo("Asia/Taipei")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with Broker.start(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "cloud.pem", d / "cloud.pub")
    return d / "cloud.pem", d / "cloud.pub"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, for tests that kill and restart it."""
    with Broker.start(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def site(request: pytest.FixtureRequest, tmp_path: Path, keys: tuple[Path, Path],
               broker: Broker) -> AsyncIterator[tuple[VirtualSchool, Daemon, Watcher]]:
    if getattr(request, "param", None) == "own_broker":
        broker = request.getfixturevalue("own_broker")
    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                             pub_key=keys[1]))
    topics = Topics.for_config(cfg)
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics) as watcher, \
            Daemon(cfg, status_port=0) as daemon:
        await watcher.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
        await watcher.wait_for(lambda t, b, _r: t == topics.state("ac-301a") and b.get("online") is True)
        await watcher.wait_for(lambda t, b, _r: t == topics.state("relay-1") and b.get("online") is True)
        yield school, daemon, watcher


async def test_signed_command_switches_the_ac_on(site: tuple[VirtualSchool, Daemon, Watcher],
                                                 keys: tuple[Path, Path]) -> None:
    school, daemon, w = site
    assert school.ac("ac-301a").power_on is False
    key = load_private_key(keys[0])
    c = claims(params={"power_on": True, "setpoint_c": 27, "mode": "cool"})
    await w.send(sign_command(key, c))
    res = await w.result(c["jti"])
    assert res["status"] == "ok", res
    assert res["code"] == "ok"
    assert res["ts"].endswith("+08:00")  # the site's zone (Asia/Taipei), whatever the system's is
    assert res["state"]["power_on"] is True
    assert res["state"]["setpoint_c"] == 27
    assert school.ac("ac-301a").power_on is True
    assert school.ac("ac-301a").setpoint_c == 27
    _, st, _ = await w.wait_for(lambda t, b, _r: t == w.topics.state("ac-301a") and b.get("power_on") is True)
    assert st["setpoint_c"] == 27
    assert daemon.cloud.stats()["commands"] == 1


def snapshot(school: VirtualSchool) -> dict[str, Any]:
    acs = {a: (s.power_on, s.mode, s.setpoint_c, s.fan) for a in ("ac-301a", "ac-301b", "ac-302a")
           for s in [school.ac(a)]}
    return {"acs": acs, "relay": school.relay("relay-1")}


async def test_hostile_commands_are_answered_and_change_nothing(site: tuple[VirtualSchool, Daemon, Watcher],
                                                                keys: tuple[Path, Path], tmp_path: Path) -> None:
    school, daemon, w = site
    key = load_private_key(keys[0])
    other = generate_keypair(tmp_path / "o.pem", tmp_path / "o.pub")
    okey = load_private_key(tmp_path / "o.pem")
    before = snapshot(school)
    now = int(time.time())
    cases: list[tuple[str, str, str]] = []   # (jti, token, expected code)

    def case(code: str, token_key: Any = key, kid: str | None = None, **over: Any) -> None:
        c = claims(**over)
        cases.append((c["jti"], sign_command(token_key, c, kid=kid), code))

    forged = claims()                                                      # a real command's jti ...
    forged_jti = forged["jti"]
    await w.send(sign_command(okey, forged, kid=key_id(key.public_key())))  # ... in a forged token, our kid
    await w.send(sign_command(okey, claims(), kid=other.kid))              # unknown key
    case("wrong_audience", aud="014601/gw-other")
    case("expired", iat=now - 200, exp=now - 100)
    case("forbidden", role="teacher", sub="T123", rooms=["302"], target="ac-301a")
    case("out_of_range", params={"setpoint_c": 18})
    case("unknown_target", target="ac-999")
    case("bad_request", params={"power_on": "yes"})                        # wrong type
    case("bad_request", params={"power_on": True, "colour": "blue"})      # unknown field
    case("forbidden", role="teacher", sub="T123", rooms=["301"], action="access.put", target="site",
         params={"version": 1, "cards": []})
    # a door only opens by door.unlock (a self-ending pulse), never latched by relay.set, even in the teacher's room
    case("bad_request", role="teacher", sub="T123", rooms=["101"], action="relay.set", target="door-101",
         params={"on": True})
    for _jti, token, _code in cases:
        await w.send(token)
    await w.send(b"{not a token")
    await w.send(b"x" * (1024 * 1024))
    await w.send(b"\xff\xfe\x00garbage")
    for jti, _token, code in cases:
        res = await w.result(jti)
        assert (res["status"], res["code"]) == ("rejected", code), (code, res)
    await w.wait_for(lambda t, b, _r: t == w.topics.cmd_result and sum(
        1 for tt, bb, _ in w.messages if tt == w.topics.cmd_result and bb["id"] is None) >= 5)
    null_results = [b for t, b, _ in w.messages if t == w.topics.cmd_result and b["id"] is None]
    assert len(null_results) == 5
    assert sorted(b["code"] for b in null_results) == ["bad_request"] * 3 + ["bad_signature"] * 2
    assert any("bytes" in b["message"] for b in null_results)
    # the forged token's jti was never echoed: the cloud sees no result under that id
    assert not any(b.get("id") == forged_jti for t, b, _ in w.messages if t == w.topics.cmd_result)

    # a replay of a command that was carried out is refused, and the first one was applied once
    good = claims(target="ac-302a", params={"setpoint_c": 27})
    token = sign_command(key, good)
    await w.send(token)
    assert (await w.result(good["jti"]))["status"] == "ok"
    after_good = snapshot(school)
    await w.send(token)
    _, replay, _ = await w.wait_for(lambda t, b, _r: t == w.topics.cmd_result and b.get("replay_of") == good["jti"])
    assert (replay["id"], replay["status"], replay["code"]) == (None, "rejected", "replayed")
    assert [b["status"] for t, b, _ in w.messages if t == w.topics.cmd_result and b["id"] == good["jti"]] == ["ok"]
    assert snapshot(school) == after_good
    assert {k: v for k, v in after_good["acs"].items() if k != "ac-302a"} == \
        {k: v for k, v in before["acs"].items() if k != "ac-302a"}
    assert after_good["relay"] == before["relay"]
    # exactly one result per message: the signed cases + 2 forged + 3 unsigned + the good one + its replay
    results = [b for t, b, _ in w.messages if t == w.topics.cmd_result]
    assert len(results) == len(cases) + 2 + 3 + 2
    assert daemon.cloud.stats()["connected"]
    # the metrics' command results by code count every answer once
    by_code = daemon.cloud.stats()["results_by_code"]
    assert sum(by_code.values()) == len(results)
    assert by_code == {c: sum(1 for r in results if r["code"] == c) for c in by_code}


async def test_room_relay_door_documents_and_ems_gate(site: tuple[VirtualSchool, Daemon, Watcher],
                                                      keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    school, daemon, w = site
    key = load_private_key(keys[0])
    # every outbox commit (events from the pump, results) is made in a worker thread, never on the loop
    stored: list[tuple[str, bool]] = []
    real_put_many = daemon.cloud.outbox.put_many

    def spy(items: Any) -> list[int | None]:
        items = list(items)
        stored.extend((cls, threading.current_thread() is threading.main_thread()) for _, _, cls, _ in items)
        return real_put_many(items)

    monkeypatch.setattr(daemon.cloud.outbox, "put_many", spy)

    async def run(**over: Any) -> dict[str, Any]:
        c = claims(**over)
        await w.send(sign_command(key, c))
        return await w.result(c["jti"])

    res = await run(role="teacher", sub="T123", rooms=["301"], target="301", params={"power_on": True, "fan": "high"})
    assert res["status"] == "ok", res
    assert set(res["states"]) == {"ac-301a", "ac-301b"}
    assert school.ac("ac-301a").power_on
    assert school.ac("ac-301b").power_on
    assert not school.ac("ac-302a").power_on
    assert daemon.arbiter.requests("ac-301a")[0].requester == "teacher:T123"

    res = await run(action="relay.set", target="light-301", params={"on": True})
    assert res["status"] == "ok", res
    assert res["state"]["on"] is True
    assert school.relay("relay-1")[0] is True

    res = await run(action="door.unlock", target="door-101", params={"seconds": 2})
    assert res["status"] == "ok", res
    assert school.relay("relay-1")[1] is True
    _, ev, _ = await w.wait_for(lambda t, b, _r: t == w.topics.event("door"))
    assert ev["door"] == "door-101"

    res = await run(action="access.put", target="site", params={"version": 2, "cards": [
        {"card": "13961168", "person": "S1001", "doors": ["door-101"]}]})
    assert res["status"] == "ok", res
    res = await run(action="access.put", target="site", params={"version": 1, "cards": []})
    assert (res["status"], res["code"]) == ("rejected", "bad_request")   # not stored, and said so
    assert "older" in res["message"]
    from cloud_sync.dispatch import DOC_ACCESS, DOC_BOOKINGS, load_document

    assert load_document(daemon.store, DOC_ACCESS)["version"] == 2
    start = time.time() + 7200   # a room with a door (door-101), a booking still to come
    res = await run(action="booking.put", target="101", params={
        "id": "b1", "start": iso(start, TZ), "end": iso(start + 3600, TZ), "title": "PTA"})
    assert res["status"] == "ok", res
    assert load_document(daemon.store, DOC_BOOKINGS + "101")["b1"]["title"] == "PTA"

    daemon.control.admission = lambda target, kind, fields, source: "over the contract" if kind == "ac" else None
    res = await run(target="ac-302a", params={"power_on": True})
    assert (res["status"], res["code"]) == ("rejected", "denied_by_ems")
    assert not school.ac("ac-302a").power_on

    school.set_fault("ac-302a", "silent")
    daemon.control.admission = admit_all
    await w.wait_for(lambda t, b, _r: t == w.topics.state("ac-302a") and b.get("online") is False, 15)
    res = await run(target="ac-302a", params={"power_on": True})
    assert (res["status"], res["code"]) == ("failed", "device_offline"), res
    _, ev, retained = await w.wait_for(lambda t, b, _r: t == w.topics.event("fault") and b.get("device") == "ac-302a"
                                       and b.get("code") == "offline")
    assert ev["kind"] == "fault"
    assert not retained
    assert {cls for cls, _ in stored} == {"event", "result"}
    assert not [cls for cls, on_loop in stored if on_loop]


@pytest.mark.parametrize("site", ["own_broker"], indirect=True)
async def test_broker_outage_reconnects_republishes_and_delivers_events_in_order(
        site: tuple[VirtualSchool, Daemon, Watcher], own_broker: Broker, keys: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.link

    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MAX_S", 0.5)
    school, daemon, w = site
    t = w.topics
    key = load_private_key(keys[0])
    connects = daemon.cloud.link.counters.connects
    broker = own_broker
    broker.stop()
    # events while the broker is away: units go silent and come back
    for dev in ("ac-301b", "ac-302a"):
        school.set_fault(dev, "silent")
    await until(lambda: not any(daemon.states[d]["online"] for d in ("ac-301b", "ac-302a")), 15)
    stored = daemon.cloud.outbox.stats().pending["event"]
    assert stored >= 2
    broker.restart()
    async with watching(broker.port, t) as w2:
        await w2.wait_for(lambda tt, b, _r: tt == t.status and b.get("online") is True, 15)
        assert daemon.cloud.link.counters.connects == connects + 1
        # retained state is back on the (empty, restarted) broker
        await w2.wait_for(lambda tt, b, r: tt == t.state("ac-301b") and b["online"] is False)
        await w2.wait_for(lambda tt, b, r: tt == t.state("meter-main") and b["online"] is True)
        # the events of the outage arrive, in order
        await w2.wait_for(lambda tt, b, _r: tt == t.event("fault") and b["device"] == "ac-302a"
                          and b["code"] == "offline")
        # at-least-once: a message in flight when the broker died may come again; the cloud
        # de-duplicates by id (CONTRACT.md section 3), and first deliveries are in order
        firsts: dict[str, dict[str, object]] = {}
        for tt, b, _ in w2.messages:
            if tt == t.event("fault"):
                firsts.setdefault(str(b["id"]), b)
        stamps = [str(b["ts"]) for b in firsts.values()]
        assert stamps == sorted(stamps)
        # the command subscription was restored
        c = claims(action="relay.set", target="light-301", params={"on": True})
        await w2.send(sign_command(key, c))
        assert (await w2.result(c["jti"]))["status"] == "ok"
        # acks land just after the PUBACKs that the app's deliveries follow
        await until(lambda: not any(daemon.cloud.outbox.stats().pending.values()), 5)


STATE_SCHEMA = {"ac": "AcState", "meter": "MeterState", "relay": "RelayBoardState", "light": "ChannelState",
                "fan": "ChannelState", "door": "ChannelState"}


def asyncapi_validator(schema: str) -> Any:
    import jsonschema
    import yaml

    doc = yaml.safe_load((Path(__file__).parent.parent / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
    root = {"components": doc["components"], "$ref": f"#/components/schemas/{schema}"}
    return jsonschema.Draft202012Validator(root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


async def test_payloads_of_a_running_daemon_match_the_asyncapi_document(
        site: tuple[VirtualSchool, Daemon, Watcher], keys: tuple[Path, Path]) -> None:
    school, daemon, w = site
    t = w.topics
    key = load_private_key(keys[0])
    sent = [claims(target="ac-301a", params={"power_on": True, "mode": "cool", "setpoint_c": 26, "fan": "auto"}),
            claims(role="teacher", sub="T1", rooms=["301"], target="301", params={"setpoint_c": 27}),
            claims(action="relay.set", target="light-301", params={"on": True}),
            claims(action="door.unlock", target="door-101", params={"seconds": 1}),
            claims(action="alarm.set", target="site", params={"levels": [{"level": "warning", "demand_kw": 170}]}),
            claims(action="booking.put", target="101", params={"id": "b9", "start": iso(time.time() + 7200, TZ),
                                                               "end": iso(time.time() + 10800, TZ)}),
            claims(action="booking.delete", target="101", params={"id": "b9"}),
            claims(action="access.put", target="site", params={"version": 3, "cards": [
                {"card": "13961168", "person": "S1001", "doors": ["door-101"],
                 "windows": [{"days": "mon-fri", "from": "07:00", "to": "18:00"}], "valid_until": "2027-07-31"}]}),
            claims(params={"setpoint_c": 30})]
    for c in sent:
        assert not list(asyncapi_validator("CommandClaims").iter_errors(c)), c
        token = sign_command(key, c)
        assert asyncapi_validator("Jws").is_valid(token)
        await w.send(token)
    await w.send(b"garbage")
    for c in sent:
        await w.result(c["jti"])
    await w.send(sign_command(key, sent[0]))  # a replay: id null, replay_of the jti
    await w.wait_for(lambda tt, b, _r: tt == t.cmd_result and b.get("replay_of") == sent[0]["jti"])
    school.set_fault("relay-1", "silent")
    await w.wait_for(lambda tt, b, _r: tt == t.event("fault") and b["device"] == "relay-1" and b["code"] == "offline",
                     15)
    failed = claims(action="relay.set", target="light-301", params={"on": False})
    await w.send(sign_command(key, failed))
    assert (await w.result(failed["jti"]))["status"] == "failed"

    checked: dict[str, int] = {}
    for topic, body, _retained in w.messages:
        kind = t.kind_of(topic)
        if kind == "status":
            schema = "Status"
        elif kind == "state":
            schema = STATE_SCHEMA[daemon.kinds[topic.rsplit("/", 1)[1]]]
        elif kind == "event":
            schema = {"fault": "FaultEvent", "door": "DoorEvent"}[topic.rsplit("/", 1)[1]]
        elif kind == "result":
            schema = "Result"
        else:
            assert kind == "cmd"
            continue
        errors = [e.message for e in asyncapi_validator(schema).iter_errors(body)]
        assert not errors, (topic, body, errors)
        checked[schema] = checked.get(schema, 0) + 1
    assert set(checked) == {"Status", "AcState", "MeterState", "RelayBoardState", "ChannelState", "FaultEvent",
                            "DoorEvent", "Result"}, checked
    statuses = {b["status"] for tt, b, _ in w.messages if tt == t.cmd_result}
    assert statuses == {"ok", "rejected", "failed"}


async def test_restart_recovers_unanswered_commands_without_applying_twice(
        tmp_path: Path, broker: Broker, keys: tuple[Path, Path]) -> None:
    from cloud_sync.commands import result_payload
    from cloud_sync.journal import CommandJournal

    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                             pub_key=keys[1]))
    topics = Topics.for_config(cfg)
    journal = CommandJournal(Path(cfg.storage.path) / "commands.db")
    now = time.time()

    def cmd(jti: str, action: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"jti": jti, "iat": now, "exp": now + 60, "aud": "014601/gw-t", "sub": "F1", "role": "facility",
                "action": action, "target": target, "params": params, "kid": "k"}

    # a crash after receipt (idempotent: re-applied), after receipt of a pulse (not repeated), after the result
    journal.begin("r-ac", now + 60, cmd("r-ac", "ac.set", "ac-302a", {"power_on": True, "setpoint_c": 28}))
    journal.begin("r-door", now + 60, cmd("r-door", "door.unlock", "door-101", {"seconds": 5}))
    journal.begin("r-light", now + 60, cmd("r-light", "relay.set", "light-301", {"on": True}))
    journal.applied("r-light", result_payload("r-light", "ok", "ok", "applied before the crash", now,
                                                ZoneInfo(cfg.site.timezone)))
    journal.close()
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics, only=topics.cmd_result) as w, \
            Daemon(cfg, status_port=0) as daemon:
        door = await w.result("r-door")
        assert (door["status"], door["code"]) == ("failed", "write_failed")
        light = await w.result("r-light")
        assert light["message"] == "applied before the crash"
        ac = await w.result("r-ac", 25)
        assert ac["status"] == "ok", ac
        assert school.ac("ac-302a").power_on is True
        assert school.relay("relay-1") == (False,) * 8      # neither the door nor the light was driven
        await until(lambda: not daemon.cloud.journal.pending(), 5)
    assert sum(1 for t, b, _ in w.messages if t == topics.cmd_result) == 3


def _delete_outbox(store: Path) -> int:
    files = list(store.glob("outbox.db*"))
    for f in files:
        f.unlink()
    return len(files)


@pytest.mark.timeout(60)
async def test_a_result_lost_from_the_outbox_is_delivered_from_the_journal(
        tmp_path: Path, own_broker: Broker, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.link

    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MAX_S", 0.5)
    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=own_broker.port,
                                             pub_key=keys[1]))
    topics = Topics.for_config(cfg)
    c = claims(action="alarm.set", target="site", params={"levels": [{"level": "warning", "demand_kw": 170}]})
    own_broker.stop()
    async with VirtualSchool(cfg, speed=1) as school:
        async with Daemon(cfg, status_port=0) as daemon:
            await daemon.cloud.handle_command(sign_command(load_private_key(keys[0]), c).encode())
            await until(lambda: daemon.cloud.outbox.stats().pending["result"] == 1 and not daemon.cloud._commands, 5)
            # the broker never acknowledged it: the journal must not say "answered"
            assert [e.jti for e in daemon.cloud.journal.pending()] == [c["jti"]]
        # a power cut: the journal's commits (synchronous=FULL) survive, the outbox's last one (NORMAL) may not
        assert _delete_outbox(Path(cfg.storage.path)) >= 1
        own_broker.restart()
        async with watching(own_broker.port, topics, only=topics.cmd_result) as w, \
                Daemon(cfg, status_port=0) as daemon:
            res = await w.result(c["jti"], 15)
            assert (res["status"], res["code"]) == ("ok", "ok"), res
            await until(lambda: not daemon.cloud.journal.pending(), 5)  # answered once acknowledged
        del school
    assert sum(1 for t, b, _ in w.messages if t == topics.cmd_result and b["id"] == c["jti"]) == 1


@pytest.mark.timeout(60)
async def test_a_newer_command_is_not_overridden_by_an_older_one_recovered_at_start(
        tmp_path: Path, broker: Broker, keys: tuple[Path, Path]) -> None:
    from cloud_sync.journal import CommandJournal

    cfg = Config.model_validate(small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port,
                                             pub_key=keys[1]))
    topics = Topics.for_config(cfg)
    # a crash after receipt of an older command of F001: re-applied at start, once its unit answers
    old = claims(jti="old-302", iat=time.time() - 5, target="ac-302a", params={"power_on": True, "setpoint_c": 28})
    journal = CommandJournal(Path(cfg.storage.path) / "commands.db")
    journal.begin(old["jti"], old["exp"], {**old, "kid": "k"})
    journal.close()
    new = claims(target="ac-302a", params={"power_on": True, "setpoint_c": 26})  # the same user, later
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics) as w:
        school.set_fault("ac-302a", "silent")  # the recovered command waits for its unit ...
        async with Daemon(cfg, status_port=0):
            await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
            await w.send(sign_command(load_private_key(keys[0]), new))
            await asyncio.sleep(1.0)  # ... and a new command read meanwhile would run first
            school.set_fault("ac-302a", None)
            first = await w.result(old["jti"], 30)
            second = await w.result(new["jti"], 30)
            assert (first["status"], second["status"]) == ("ok", "ok"), (first, second)
            results = [b["id"] for t, b, _ in w.messages if t == topics.cmd_result]
            assert results.index(old["jti"]) < results.index(new["jti"])
            assert school.ac("ac-302a").setpoint_c == 26  # the newer one stands
