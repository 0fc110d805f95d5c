"""Several broker URLs (`cloud.mqtt.urls`): the link's round robin, and a gateway outliving its broker node.

* the config: `urls` after `url`, one scheme, no URL twice; every existing config stays valid;
* the link (`MqttLink.run`) on private mosquittos: a refused attempt moves to the next URL and wraps
  around; a lost connection tries the same broker first;
* the real daemon with the virtual school on two independent mosquittos: the first is killed, the
  gateway goes to the second and carries on (status, states, commands, events);
* the real daemon on a RabbitMQ cluster with its MQTT plugin and quorum queues, commands sent and
  events read by a cloud-side client on node B while the gateway is on node A; node A is killed
  (SIGKILL, its whole process group): the gateway reconnects to B, no event is lost and every
  command is applied once and answered once.

The cluster has three nodes, not two: RabbitMQ 3.10's MQTT plugin tracks client ids in a Raft
cluster and a quorum queue keeps a session; both need a majority of the nodes, so a two-node
cluster that loses one node accepts no MQTT connection at all (bench/ha_failover.py --nodes 2 shows
it; docs/scale.md). Each node is our own: its own node name, ports, directories, an epmd of its own
on a free port and a shared cookie under the test's temp dir; it is stopped by handle (rabbitmqctl
stop, then its process group), and a census of /proc finds nothing of it afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import free_port, until
from helpers.app import claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker
from pydantic import ValidationError

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.link import LinkSettings, MqttLink
from cloud_sync.topics import Topics
from edge.core.config import Config, MqttConfig
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)

# The Debian package's scripts (the ones in /usr/sbin switch to the `rabbitmq` user and lose our environment).
RABBIT_BIN = Path(os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))
EPMD = shutil.which("epmd")
NODE_START_TIMEOUT_S = 90.0   # three nodes booting at once on two shared cores


# -- the configuration --------------------------------------------------------------------------------
def test_a_single_url_config_is_unchanged() -> None:
    m = MqttConfig.model_validate({"url": "mqtts://broker.example:8883"})
    assert m.urls == []
    assert m.broker_urls() == ["mqtts://broker.example:8883"]
    s = LinkSettings.from_config(m, "cid")
    assert s.brokers == (("broker.example", 8883),)


def test_urls_follow_url_in_order() -> None:
    m = MqttConfig.model_validate({"url": "mqtt://a.example", "urls": ["mqtt://b.example:1884", "mqtt://c.example/"]})
    assert m.broker_urls() == ["mqtt://a.example", "mqtt://b.example:1884", "mqtt://c.example/"]
    s = LinkSettings.from_config(m, "cid")
    assert s.brokers == (("a.example", 1883), ("b.example", 1884), ("c.example", 1883))
    assert (s.host, s.port) == ("a.example", 1883)


@pytest.mark.parametrize(("urls", "needle"), [
    (["mqtts://b.example"], "urls[0] 'mqtts://b.example': every broker URL must use mqtt://"),
    (["mqtt://b.example", "mqtts://c.example"], "urls[1]"),
    (["mqtt://a.example:1883/"], "listed twice"),      # the default port and a slash do not make it another
    (["mqtt://b.example", "mqtt://b.example"], "urls[1] 'mqtt://b.example': listed twice"),
    (["http://b.example"], "String should match pattern"),
    ([f"mqtt://n{i}.example" for i in range(16)], "at most 15 items"),
])
def test_bad_broker_lists_are_refused_saying_which(urls: list[str], needle: str) -> None:
    url = "mqtt://a.example:1883" if needle == "listed twice" else "mqtt://a.example"
    with pytest.raises(ValidationError) as err:
        MqttConfig.model_validate({"url": url, "urls": urls})
    assert needle in str(err.value)


def test_fifteen_more_brokers_are_accepted() -> None:
    m = MqttConfig.model_validate({"url": "mqtt://a.example", "urls": [f"mqtt://n{i}.example" for i in range(15)]})
    assert len(m.broker_urls()) == 16


# -- the link's round robin -----------------------------------------------------------------------
def fast_settings(ports: list[int]) -> LinkSettings:
    return LinkSettings(host="127.0.0.1", port=ports[0], client_id=f"rr-{uuid.uuid4().hex[:6]}",
                        more_brokers=tuple(("127.0.0.1", p) for p in ports[1:]), backoff_min_s=0.05,
                        backoff_max_s=0.1)


@contextlib.asynccontextmanager
async def running(link: MqttLink, session: Any) -> AsyncIterator[asyncio.Task[None]]:
    """`link.run(session)` in a task, stopped the way CloudService stops it."""
    task = asyncio.create_task(link.run(session), name="test-link")
    try:
        yield task
    finally:
        link.stopping = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def tried(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The brokers of the link's failed attempts, in order (one warning per attempt when they alternate)."""
    return [str(r.args[0]) for r in caplog.records
            if r.name == "cloud_sync.link" and r.msg == "MQTT %s: %s" and isinstance(r.args, tuple)]


async def test_a_refused_attempt_moves_to_the_next_broker_and_wraps_around(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = Broker(tmp_path / "first")      # not started yet: its port refuses
    second = free_port()                    # nothing ever listens there
    a, b = f"127.0.0.1:{first.port}", f"127.0.0.1:{second}"
    link = MqttLink(fast_settings([first.port, second]))
    sessions: list[str] = []

    async def session(_client: aiomqtt.Client) -> None:
        sessions.append(link.broker)
        await asyncio.Event().wait()

    caplog.set_level(logging.WARNING, logger="cloud_sync.link")
    try:
        async with running(link, session):
            await until(lambda: link.counters.attempts >= 4, 10, "four refused attempts")
            first.restart()
            await until(link.connected.is_set, 10, "a connection")
            assert sessions == [a]
            assert tried(caplog)[:4] == [a, b, a, b]
            assert link.counters.connects == 1
    finally:
        first.stop()


async def test_a_lost_connection_tries_the_same_broker_first_and_a_dead_one_is_left(tmp_path: Path) -> None:
    with Broker.start(tmp_path / "first") as first, Broker.start(tmp_path / "second") as second:
        a, b = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"
        link = MqttLink(fast_settings([first.port, second.port]))
        sessions: list[str] = []

        async def session(client: aiomqtt.Client) -> None:
            sessions.append(link.broker)
            if len(sessions) == 1:
                raise aiomqtt.MqttError("lost")   # a dropped connection surfaces like this in the session
            await client.subscribe("probe", qos=1)
            async for _ in client.messages:
                pass

        async with running(link, session):
            await until(lambda: len(sessions) == 2, 10, "a second session")
            assert sessions == [a, a]           # a lost connection: the same broker again
            first.stop()                        # now it dies: refused, so the next one
            await until(lambda: len(sessions) == 3, 10, "a session on the second broker")
            assert sessions == [a, a, b]
            assert link.broker == b


# -- the daemon on two independent mosquittos -----------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "cloud.pem", d / "cloud.pub")
    return d / "cloud.pem", d / "cloud.pub"


def site_on(tmp_path: Path, pub_key: Path, urls: list[str]) -> Config:
    raw = small_school(tmp_path, modbus_port=free_port(), broker_port=1, pub_key=pub_key)
    raw["cloud"]["mqtt"].update(url=urls[0], urls=urls[1:])
    return Config.model_validate(raw)


async def test_the_gateway_moves_to_the_second_mosquitto_when_the_first_dies(
        tmp_path: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.link

    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MAX_S", 0.5)
    key = load_private_key(keys[0])
    with Broker.start(tmp_path / "m1") as m1, Broker.start(tmp_path / "m2") as m2:
        cfg = site_on(tmp_path, keys[1], [m1.url, m2.url])
        t = Topics.for_config(cfg)
        async with VirtualSchool(cfg, speed=1), watching(m1.port, t) as w1, watching(m2.port, t) as w2, \
                Daemon(cfg, status_port=0) as daemon:
            assert daemon.cloud is not None
            await w1.wait_for(lambda tt, b, _r: tt == t.status and b.get("online") is True)
            c = claims(action="relay.set", target="light-301", params={"on": True})
            await w1.send(sign_command(key, c))
            assert (await w1.result(c["jti"]))["status"] == "ok"
            assert not w2.messages                      # nothing went to the second broker so far
            m1.stop()
            await w2.wait_for(lambda tt, b, _r: tt == t.status and b.get("online") is True, 10)
            assert daemon.cloud.link.broker == f"127.0.0.1:{m2.port}"
            # retained state again on the new broker, commands and events through it
            await w2.wait_for(lambda tt, b, _r: tt == t.state("light-301") and b.get("on") is True)
            c = claims(action="relay.set", target="light-301", params={"on": False})
            await w2.send(sign_command(key, c))
            assert (await w2.result(c["jti"]))["status"] == "ok"
            daemon.on_event("probe", {"n": 1})
            _, ev, _ = await w2.wait_for(lambda tt, b, _r: tt == t.event("probe"))
            assert ev["n"] == 1
            assert daemon.cloud.link.counters.connects == 2


# -- a RabbitMQ cluster -----------------------------------------------------------------------------
@dataclass
class RabbitNode:
    """One node of the cluster: its name, ports and directory, and its process once started."""

    name: str
    base: Path
    amqp_port: int
    dist_port: int
    mqtt_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RabbitCluster:
    """`size` RabbitMQ nodes of our own joined into one cluster, the MQTT plugin on, sessions on quorum queues."""

    workdir: Path
    size: int = 3
    conf: str = "mqtt.durable_queue_type = quorum\n"
    epmd_port: int = field(default_factory=free_port)
    nodes: list[RabbitNode] = field(default_factory=list)
    epmd: subprocess.Popen[bytes] | None = None

    @staticmethod
    def missing() -> str | None:
        """Why no cluster can be started here (None: it can)."""
        for exe in (RABBIT_BIN / "rabbitmq-server", RABBIT_BIN / "rabbitmqctl"):
            if not os.access(exe, os.X_OK):
                return f"RabbitMQ is not installed ({exe} missing; set RABBITMQ_BIN_DIR)"
        return None if EPMD else "epmd (Erlang) is not installed"

    def __post_init__(self) -> None:
        self.home = self.workdir / "home"      # HOME of every node and of rabbitmqctl: the shared cookie
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o600)
        (self.workdir / "rabbitmq-env.conf").write_text("")   # not the system's /etc/rabbitmq/rabbitmq-env.conf
        for i in range(self.size):
            name = f"ce-{chr(ord('a') + i)}"
            self.nodes.append(RabbitNode(name, self.workdir / name, free_port(), free_port(), free_port()))

    def env(self, node: RabbitNode | None = None) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home), "LANG": "C.UTF-8",
               "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
               "RABBITMQ_CONF_ENV_FILE": str(self.workdir / "rabbitmq-env.conf")}
        if node is not None:
            b = node.base
            env |= {"RABBITMQ_NODENAME": node.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_NODE_PORT": str(node.amqp_port), "RABBITMQ_DIST_PORT": str(node.dist_port),
                    "RABBITMQ_MNESIA_BASE": str(b / "mnesia"), "RABBITMQ_LOG_BASE": str(b / "log"),
                    "RABBITMQ_PLUGINS_EXPAND_DIR": str(b / "plugins"), "RABBITMQ_PID_FILE": str(b / "pid"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config")}
        return env

    def ctl(self, node: RabbitNode, *args: str, timeout_s: float = 60.0) -> str:
        """`rabbitmqctl -n NODE ARGS`; its output, or RuntimeError with what it said."""
        done = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", node.node, *args], env=self.env(),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.node} {' '.join(args)}: exit {done.returncode}: "
                               f"{(done.stderr or done.stdout)[-1500:]}")
        return done.stdout

    def start(self) -> None:
        """Our epmd, every node at once, then each node after the first joins the first."""
        with (self.workdir / "epmd.log").open("ab") as out:
            self.epmd = subprocess.Popen([str(EPMD), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         stdout=out, stderr=out, start_new_session=True)
        try:
            for n in self.nodes:
                self._spawn(n)
            with concurrent.futures.ThreadPoolExecutor(len(self.nodes), thread_name_prefix="asyncio_rabbit") as ex:
                list(ex.map(self._await, self.nodes))
            for n in self.nodes[1:]:
                self.ctl(n, "stop_app")
                self.ctl(n, "join_cluster", self.nodes[0].node)
                self.ctl(n, "start_app")
                self._await(n)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, node: RabbitNode) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        (node.base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (node.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}\n"
            "mqtt.allow_anonymous = true\nlog.console = false\n" + self.conf)
        with (node.base / "stdout.log").open("ab") as out:
            node.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(node), stdout=out,
                                         stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

    def _await(self, node: RabbitNode) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not node.running:
                log = node.base / "stdout.log"
                raise RuntimeError(f"{node.node} exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", node.mqtt_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{node.node}: no MQTT listener on {node.mqtt_port} after {NODE_START_TIMEOUT_S} s")

    def kill(self, node: RabbitNode) -> None:
        """SIGKILL the node's whole process group (shell, VM, helpers): a machine gone without a goodbye."""
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(10)
        node.proc = None

    def stop(self) -> None:
        """Each node by rabbitmqctl stop, then its process group; then our epmd."""
        for n in self.nodes:
            if n.running:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    self.ctl(n, "stop", timeout_s=30)
            self.kill(n)
        if self.epmd is not None:
            self.epmd.kill()
            self.epmd.wait(10)
            self.epmd = None

    def census(self) -> list[str]:
        """Processes still alive that are this cluster's (its directory or its epmd port on their command line)."""
        marks = (str(self.workdir), f"-port {self.epmd_port} ")
        left = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in marks):
                left.append(f"{d.name}: {cmd[:160]}")
        return left


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    why = RabbitCluster.missing()
    if why:
        pytest.skip(why)
    c = RabbitCluster(tmp_path_factory.mktemp("rabbit"))
    c.start()
    try:
        yield c
    finally:
        c.stop()
        assert c.census() == [], "RabbitMQ processes left behind"


class CloudApp:
    """The cloud's side, on one node: a persistent session reading the gateway's topics, and a command sender.

    It reconnects and sends again whatever was not acknowledged: RabbitMQ 3.10 closes an MQTT connection
    whose publish a queue refused (basic.nack) while that queue's leader was moving to another node.
    """

    def __init__(self, port: int, topics: Topics) -> None:
        self.port, self.topics = port, topics
        self.ident = f"cloud-app-{uuid.uuid4().hex[:8]}"
        self.messages: list[tuple[str, Any]] = []
        self.client: aiomqtt.Client | None = None
        self.up = asyncio.Event()
        self.resent: set[str] = set()
        self.connects = 0
        self.errors: list[str] = []

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier=self.ident, clean_session=False,
                                          timeout=5) as c:
                    await c.subscribe(self.topics.all, qos=1)
                    self.client = c
                    self.connects += 1
                    self.up.set()
                    async for m in c.messages:
                        if m.topic.matches(self.topics.cmd):
                            continue   # the commands themselves (tokens, not JSON): ours
                        raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        self.messages.append((str(m.topic), json.loads(raw)))
            except aiomqtt.MqttError as exc:
                self.up.clear()
                self.client = None
                self.errors.append(repr(exc))
                await asyncio.sleep(0.2)

    async def send(self, jti: str, token: str) -> None:
        """Publish until the broker acknowledges it (the same token again after a failure)."""
        for _ in range(100):
            async with asyncio.timeout(15):
                await self.up.wait()
            assert self.client is not None
            try:
                await self.client.publish(self.topics.cmd, token, qos=1, timeout=5)
                return
            except aiomqtt.MqttError:
                self.resent.add(jti)
                await asyncio.sleep(0.2)
        raise AssertionError(f"command {jti} never acknowledged by the broker; {self.errors}")

    def results(self, jti: str) -> list[dict[str, Any]]:
        return [b for t, b in self.messages if t == self.topics.cmd_result and b.get("id") == jti]

    def probes(self) -> list[int]:
        return [int(b["n"]) for t, b in self.messages if t == self.topics.event("probe")]


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_the_gateway_outlives_its_rabbitmq_node_without_losing_an_event_or_a_command(
        tmp_path: Path, cluster: RabbitCluster, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import cloud_sync.link

    monkeypatch.setattr(cloud_sync.link, "BACKOFF_MAX_S", 0.5)
    a, b, c = cluster.nodes
    key = load_private_key(keys[0])
    cfg = site_on(tmp_path, keys[1], [a.url, b.url, c.url])   # RabbitMQ 3.10 speaks MQTT 3.1.1 only
    t = Topics.for_config(cfg)
    app = CloudApp(b.mqtt_port, t)
    reader = asyncio.create_task(app.run(), name="test-cloud-app")
    sent: list[str] = []
    n_commands, n_events = 30, 60
    try:
        async with asyncio.timeout(10):
            await app.up.wait()
        async with VirtualSchool(cfg, speed=1), Daemon(cfg, status_port=0) as daemon:
            assert daemon.cloud is not None
            link = daemon.cloud.link
            await until(lambda: any(tt == t.status and bb.get("online") for tt, bb in app.messages), 20,
                        "the gateway's status through the cluster")
            assert link.broker == a.address
            applied: Counter[str] = Counter()
            execute = daemon.cloud.dispatcher.execute

            async def counting(cmd: Any, **kw: Any) -> Any:
                applied[cmd.id] += 1
                return await execute(cmd, **kw)

            monkeypatch.setattr(daemon.cloud.dispatcher, "execute", counting)

            async def commands() -> None:
                acs = ("ac-301a", "ac-301b", "ac-302a")
                for i in range(n_commands):
                    cl = claims(target=acs[i % 3], params={"power_on": True, "setpoint_c": 26 + i % 3})
                    sent.append(cl["jti"])
                    await app.send(cl["jti"], sign_command(key, cl))
                    await asyncio.sleep(0.1)

            async def events() -> None:
                for n in range(n_events):
                    daemon.on_event("probe", {"n": n})
                    await asyncio.sleep(0.05)

            flows = [asyncio.create_task(commands(), name="test-commands"),
                     asyncio.create_task(events(), name="test-events")]
            await asyncio.sleep(1.0)                         # both flowing through node A
            assert link.connected.is_set()
            assert link.broker == a.address
            await asyncio.to_thread(cluster.kill, a)
            try:
                async with asyncio.timeout(40):
                    await asyncio.gather(*flows)
            except TimeoutError:
                crashed = reader.exception() if reader.done() else None
                raise AssertionError(f"the flows stalled: {len(sent)} commands sent, cloud app errors {app.errors}"
                                     f" {crashed!r}, link on {link.broker} {link.counters.as_dict()}") from None
            await until(lambda: link.connected.is_set() and link.broker != a.address, 20, "the link on another node")
            await until(lambda: all(app.results(j) for j in sent), 30, "every command's result")
            await until(lambda: set(app.probes()) == set(range(n_events)), 30, "every event")
            assert link.broker == b.address                  # the next URL after the dead one
            assert link.counters.connects >= 2
            # every command applied once and answered once (a redelivered copy of that one result aside)
            assert {j: applied[j] for j in sent} == dict.fromkeys(sent, 1)
            for j in sent:
                distinct = {json.dumps(r, sort_keys=True) for r in app.results(j)}
                assert len(distinct) == 1, (j, distinct)
                (res,) = [json.loads(d) for d in distinct]
                assert (res["status"], res["code"]) == ("ok", "ok"), res
            # a token sent again (its first publish failed at the broker) is refused as a replay if it got through
            replays = [bb.get("replay_of") for tt, bb in app.messages if tt == t.cmd_result and bb.get("id") is None]
            assert set(replays) <= app.resent
            # no event lost; the first deliveries in order (at least once: a copy may come again)
            firsts = list(dict.fromkeys(app.probes()))
            assert firsts == list(range(n_events))
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
