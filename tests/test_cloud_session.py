"""Persistent MQTT session: commands the cloud sends while the gateway is away are not lost.

The broker keeps running; only the gateway goes: its TCP path is cut (a proxy between the daemon and
the broker drops every connection and refuses new ones for a while), or the daemon restarts. The
broker queues the QoS 1 commands of the gateway's session meanwhile; on return each is answered once,
one that expired in the queue `expired` (and not applied), the cloud's re-send of a command `replayed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, until
from helpers.app import Watcher, claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker

from cloud_sync.journal import SKEW_S
from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.core.config import Config
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)


class Proxy:
    """A TCP relay on its own loopback port: `cut()` drops every connection and refuses new ones until `resume()`."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def resume(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()   # a reset, no goodbye: as a pulled cable looks once the peer notices
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    async def _handle(self, r_client: asyncio.StreamReader, w_client: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(w_client)
        try:
            r_broker, w_broker = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            w_client.transport.abort()
            self._writers.discard(w_client)
            self._handlers.discard(task)
            return
        self._writers.add(w_broker)
        self.connections += 1

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            for x in (w_client, w_broker):   # either side gone: the whole path is
                x.transport.abort()

        try:
            await asyncio.gather(pump(r_client, w_broker), pump(r_broker, w_client))
        finally:
            self._writers.difference_update((w_client, w_broker))
            self._handlers.discard(task)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker.start(tmp_path / "mosquitto") as b:
        yield b


@pytest.fixture
async def proxy(broker: Broker) -> AsyncIterator[Proxy]:
    p = Proxy(broker.port)
    await p.resume()
    try:
        yield p
    finally:
        await p.cut()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "cloud.pem", d / "cloud.pub")
    return d / "cloud.pem", d / "cloud.pub"


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.link

    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MIN_S", 0.1)
    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MAX_S", 0.3)


def site_config(tmp_path: Path, port: int, pub_key: Path, **mqtt: Any) -> Config:
    raw = small_school(tmp_path, modbus_port=free_port(), broker_port=port, pub_key=pub_key)
    cloud: dict[str, Any] = raw["cloud"]  # type: ignore[assignment]
    cloud["mqtt"] = {**cloud["mqtt"], **mqtt}
    return Config.model_validate(raw)


def results(w: Watcher) -> list[dict[str, Any]]:
    return [b for t, b, _r in w.messages if t == w.topics.cmd_result]


def statuses(w: Watcher) -> list[bool]:
    return [bool(b.get("online")) for t, b, _r in w.messages if t == w.topics.status]


async def settled(daemon: Daemon) -> None:
    """Every result acknowledged by the broker and every command answered in the journal."""
    cloud = daemon.cloud
    assert cloud is not None
    await until(lambda: not any(cloud.outbox.stats().pending.values()) and not cloud._commands
                and not cloud.journal.pending(), 10)


async def link_noticed(daemon: Daemon, within_s: float = 12.0) -> None:
    """The link sees the cut (a reset from the proxy); if it does not, say where the cloud's tasks are."""
    cloud = daemon.cloud
    assert cloud is not None
    try:
        await until(lambda: not cloud.link.connected.is_set(), within_s)
    except TimeoutError:
        stacks = {t.get_name(): [f"{f.f_code.co_filename}:{f.f_lineno}" for f in t.get_stack()]
                  for t in asyncio.all_tasks() if t.get_name().startswith("cloud")}
        raise AssertionError(f"link still up: {cloud.link.counters.as_dict()} {stacks}") from None


def expiring_soon() -> dict[str, Any]:
    """Claims valid now that expire (beyond the allowed clock skew) within about 2 s."""
    now = int(time.time())
    return claims(target="ac-302a", params={"power_on": True}, iat=now - 60, exp=now - int(SKEW_S) + 1)


async def wait_expired(c: dict[str, Any]) -> None:
    await asyncio.sleep(max(0.0, c["exp"] + SKEW_S + 0.5 - time.time()))


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_commands_sent_during_a_network_cut_are_answered_once_on_return(
        tmp_path: Path, broker: Broker, proxy: Proxy, keys: tuple[Path, Path], protocol: str) -> None:
    cfg = site_config(tmp_path, proxy.port, keys[1], protocol=protocol)
    assert cfg.cloud is not None
    assert cfg.cloud.mqtt.persistent_session
    topics = Topics.for_config(cfg)
    key = load_private_key(keys[0])
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics) as w, \
            Daemon(cfg, status_port=0) as daemon:
        assert daemon.cloud is not None
        link = daemon.cloud.link
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
        assert link.settings.client_id == "campus-edge-014601-gw-t"   # stable: the session is found again

        await proxy.cut()
        await link_noticed(daemon)
        # the broker has noticed (the will): what comes now is queued for the session, not sent to a dead socket
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is False)

        good = claims(target="ac-301a", params={"power_on": True, "setpoint_c": 27})
        late = expiring_soon()
        token = sign_command(key, good)
        for t in (token, sign_command(key, late), token):   # the cloud re-sends `good` with the same token
            await w.send(t)
        await wait_expired(late)
        assert results(w) == []
        attempts = link.counters.attempts
        await until(lambda: link.counters.attempts > attempts, 5)   # retrying meanwhile, refused by the cut

        await proxy.resume()
        ok = await w.result(good["jti"])
        assert (ok["status"], ok["code"]) == ("ok", "ok"), ok
        expired = await w.result(late["jti"])
        assert (expired["status"], expired["code"]) == ("rejected", "expired"), expired
        _, replay, _ = await w.wait_for(lambda t, b, _r: t == topics.cmd_result and b.get("replay_of") == good["jti"])
        assert (replay["id"], replay["code"]) == (None, "replayed")
        await settled(daemon)
        await asyncio.sleep(0.3)   # nothing more comes
        assert len(results(w)) == 3
        assert [r["id"] for r in results(w)].count(good["jti"]) == 1
        assert school.ac("ac-301a").power_on is True
        assert school.ac("ac-301a").setpoint_c == 27
        assert school.ac("ac-302a").power_on is False          # the expired command changed nothing
        assert daemon.cloud.commands_in == 3
        assert link.counters.connects == 2
        assert statuses(w)[-1] is True


async def test_without_a_persistent_session_a_command_sent_while_away_is_lost(
        tmp_path: Path, broker: Broker, proxy: Proxy, keys: tuple[Path, Path]) -> None:
    """The control: what `persistent_session: false` (the old clean session) does in the same situation."""
    cfg = site_config(tmp_path, proxy.port, keys[1], persistent_session=False)
    topics = Topics.for_config(cfg)
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics) as w, \
            Daemon(cfg, status_port=0) as daemon:
        assert daemon.cloud is not None
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
        await proxy.cut()
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is False)
        c = claims(target="ac-301a", params={"power_on": True})
        await w.send(sign_command(load_private_key(keys[0]), c))
        await proxy.resume()
        await until(lambda: statuses(w)[-1] is True, 20)   # the reconnect backoff may have grown during the cut
        await asyncio.sleep(1.0)
        assert results(w) == []
        assert daemon.cloud.commands_in == 0
        assert school.ac("ac-301a").power_on is False


async def test_commands_sent_while_the_daemon_restarts_are_answered_by_the_new_one(
        tmp_path: Path, broker: Broker, keys: tuple[Path, Path]) -> None:
    cfg = site_config(tmp_path, broker.port, keys[1])
    topics = Topics.for_config(cfg)
    key = load_private_key(keys[0])
    async with VirtualSchool(cfg, speed=1) as school, watching(broker.port, topics) as w:
        async with Daemon(cfg, status_port=0) as daemon:
            await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
            first = claims(action="relay.set", target="light-301", params={"on": True})
            await w.send(sign_command(key, first))
            assert (await w.result(first["jti"]))["status"] == "ok"
            await settled(daemon)
        assert statuses(w)[-1] is False   # a clean stop says so; the broker keeps the session
        away = claims(target="ac-301a", params={"power_on": True, "setpoint_c": 26})
        late = expiring_soon()
        await w.send(sign_command(key, away))
        await w.send(sign_command(key, late))
        await w.send(sign_command(key, first))   # a replay of a command the old process carried out
        await wait_expired(late)
        async with Daemon(cfg, status_port=0) as daemon:
            ok = await w.result(away["jti"])
            assert (ok["status"], ok["code"]) == ("ok", "ok"), ok
            expired = await w.result(late["jti"])
            assert expired["code"] == "expired"
            _, replay, _ = await w.wait_for(lambda t, b, _r: t == topics.cmd_result
                                            and b.get("replay_of") == first["jti"])
            assert replay["code"] == "replayed"
            await settled(daemon)
            await asyncio.sleep(0.3)
            assert daemon.cloud is not None
            assert daemon.cloud.commands_in == 3
        assert [r["id"] for r in results(w)].count(away["jti"]) == 1
        assert len(results(w)) == 4
        assert school.ac("ac-301a").power_on is True
        assert school.ac("ac-301a").setpoint_c == 26
        assert school.ac("ac-302a").power_on is False
        assert school.relay("relay-1")[0] is True
