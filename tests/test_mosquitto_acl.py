"""The city broker's ACL (config/mosquitto/campus-edge.acl) on a real mosquitto with password auth.

Gateways log in as "{school_id}/{gateway_id}": each may write only its own P/status, P/state/#,
P/event/# and P/cmd/result and receive only its own P/cmd; the `cloud` account reads everything and
writes only commands. A refused publish must never reach a subscriber: each case publishes the
refused messages first and then allowed ones on the same connection, and the subscriber's view is
checked once the allowed ones arrived (mosquitto delivers one connection's messages in order).
The sample config/mosquitto/mosquitto.conf is run too (TLS, persistence), paths pointed at a temp dir.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from conftest import free_port, until
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from helpers.app import claims, watching
from helpers.sites import small_school
from mqtt_broker import Broker

from cloud_sync.keys import generate_keypair, load_private_key, sign_command
from cloud_sync.topics import Topics
from edge.core.config import Config
from edge.daemon import Daemon
from simulator.app import VirtualSchool

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "config" / "mosquitto" / "campus-edge.acl"
SAMPLE_CONF = ROOT / "config" / "mosquitto" / "mosquitto.conf"
PASSWD = "mosquitto_passwd"
GW_A, GW_B, GW_T = "014601/gw-a", "014601/gw-b", "014601/gw-t"   # gw-t: helpers.sites.small_school's gateway
ACCOUNTS = {GW_A: "pass-a", GW_B: "pass-b", GW_T: "pass-t", "cloud": "pass-cloud"}
ALL = "campus/v1/#"


def root(user: str) -> str:
    return f"campus/v1/{user}"


def own_topics(user: str) -> list[str]:
    """What a gateway publishes in its life: status, a state, an event, a result."""
    p = root(user)
    return [f"{p}/status", f"{p}/state/ac-301a", f"{p}/event/door", f"{p}/cmd/result"]


def password_file(d: Path) -> Path:
    path = d / "campus-edge.passwd"
    for i, (user, pw) in enumerate(ACCOUNTS.items()):
        subprocess.run([PASSWD, *(["-c"] if i == 0 else []), "-b", str(path), user, pw], check=True,
                       capture_output=True)
    return path


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    d = tmp_path_factory.mktemp("mosquitto-acl")
    conf = f"allow_anonymous false\npassword_file {password_file(d)}\nacl_file {ACL}\n"
    with Broker.start(d / "broker", extra_conf=conf) as b:
        yield b


@dataclass
class Client:
    """An authenticated client: what it received, and its publishes' PUBACK reason codes ("ok" or the failure)."""

    mqtt: aiomqtt.Client
    got: list[tuple[str, bytes, bool]]
    pubacks: list[str]

    async def publish_each(self, topics: list[str], payload: bytes = b"{}", *, retain: bool = False) -> list[str]:
        """Publish to each topic in turn (QoS 1, each PUBACK awaited); their PUBACK reason codes."""
        first = len(self.pubacks)
        for t in topics:
            await self.mqtt.publish(t, payload, qos=1, retain=retain)
        return self.pubacks[first:]

    def topics(self, *, live: bool = False) -> list[str]:
        """Every topic received in order (`live`: without the retained copies earlier tests left)."""
        return [t for t, _, retained in self.got if not (live and retained)]


@asynccontextmanager
async def client(port: int, user: str, *, v5: bool = True, subscribe: tuple[str, ...] = (),
                 **extra: Any) -> AsyncIterator[Client]:
    async with aiomqtt.Client("127.0.0.1", port, username=user, password=ACCOUNTS.get(user, "wrong"),
                              identifier=f"{user.replace('/', '-')}-{uuid.uuid4().hex[:6]}",
                              protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
                              **extra) as mqtt:
        c = Client(mqtt, [], [])
        paho = mqtt._client
        on_publish: Any = paho.on_publish

        def spy(cl: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
            # in the order of the PUBACKs; aiomqtt drops the code. 0x10 "No matching subscribers" is a success too
            c.pubacks.append(str(rc) if rc.is_failure else "ok")
            on_publish(cl, userdata, mid, rc, props)

        paho.on_publish = spy
        for t in subscribe:
            await mqtt.subscribe(t, qos=1)

        async def read() -> None:
            async for m in mqtt.messages:
                raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                c.got.append((str(m.topic), raw, m.retain))

        reader = asyncio.create_task(read(), name=f"acl-reader-{user}")
        try:
            yield c
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_anonymous_and_wrong_passwords_are_refused(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttCodeError, match="Not authorized"):
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="anon"):
            pass
    with pytest.raises(aiomqtt.MqttCodeError, match=r"Not authorized|Bad user name or password"):
        async with aiomqtt.Client("127.0.0.1", broker.port, username=GW_A, password="pass-b", identifier="gw-a-bad"):
            pass
    async with client(broker.port, GW_A):
        pass  # the right password gets in


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_a_gateway_cannot_publish_on_another_gateways_topics_nor_issue_commands(broker: Broker,
                                                                                      v5: bool) -> None:
    a_root, b_root = root(GW_A), root(GW_B)
    refused = [*own_topics(GW_B), f"{b_root}/cmd",           # speaking for gw-b
               f"{a_root}/cmd",                              # a command to itself: only the cloud sends those
               f"{a_root}/status/extra", f"{a_root}/statusx", f"{a_root}/other", a_root,   # no pattern allows these
               "campus/v1/014601/gw-ab/status", "campus/v1/014601/status"]   # neighbours of its own prefix
    allowed = own_topics(GW_A)
    async with client(broker.port, "cloud", subscribe=(ALL,)) as cloud, \
            client(broker.port, GW_A, v5=v5) as gw:
        codes = await gw.publish_each(refused)
        codes += await gw.publish_each(allowed)
        await until(lambda: len(cloud.topics(live=True)) >= len(allowed), 5, "the allowed messages")
        assert cloud.topics(live=True) == allowed
        if v5:   # mosquitto answers a refused MQTT 5 publish with reason code 0x87
            assert codes == ["Not authorized"] * len(refused) + ["ok"] * len(allowed)
        else:    # MQTT 3.1.1 has no reason codes: the PUBACK comes, the message is dropped all the same
            assert codes == ["ok"] * (len(refused) + len(allowed))


async def test_a_gateway_receives_only_its_own_commands_and_nothing_of_the_others(broker: Broker) -> None:
    a_root, b_root = root(GW_A), root(GW_B)
    async with client(broker.port, GW_B) as gw_b:    # gw-b's retained status is on the broker before gw-a looks
        assert await gw_b.publish_each([f"{b_root}/status"], b'{"online":true}', retain=True) == ["ok"]
    async with client(broker.port, GW_A, subscribe=(f"{b_root}/cmd", f"{b_root}/state/#", f"{a_root}/cmd")) as gw_a, \
            client(broker.port, GW_B, subscribe=(f"{b_root}/cmd",)) as gw_b, \
            client(broker.port, GW_A, subscribe=("#",)) as gw_a_all, \
            client(broker.port, "cloud") as cloud:
        await gw_b.publish_each(own_topics(GW_B))                        # gw-b's own traffic
        assert await cloud.publish_each([f"{b_root}/cmd", f"{a_root}/cmd"], b"token") == ["ok", "ok"]
        await until(lambda: gw_a.got and gw_a_all.got and gw_b.got, 5, "the commands")
        assert gw_a.topics() == [f"{a_root}/cmd"]          # gw-b's command, states and status never reach gw-a
        assert gw_a_all.topics() == [f"{a_root}/cmd"]      # not through '#' either (nor gw-b's retained status)
        assert gw_b.topics() == [f"{b_root}/cmd"]
        assert gw_a.got[0][1] == b"token"


async def test_the_cloud_reads_everything_but_cannot_speak_for_a_gateway(broker: Broker) -> None:
    a_root = root(GW_A)
    async with client(broker.port, "cloud", subscribe=(ALL,)) as reader, \
            client(broker.port, "cloud") as cloud, client(broker.port, GW_A) as gw:
        refused = await cloud.publish_each(own_topics(GW_A))        # a forged state, event, result, status
        assert refused == ["Not authorized"] * 4
        assert await cloud.publish_each([f"{a_root}/cmd"]) == ["ok"]
        assert await gw.publish_each([f"{a_root}/event/door"]) == ["ok"]
        await until(lambda: len(reader.topics(live=True)) >= 2, 5, "the command and the event")
        assert reader.topics(live=True) == [f"{a_root}/cmd", f"{a_root}/event/door"]


async def test_the_daemon_runs_unchanged_under_the_acl(broker: Broker, tmp_path: Path) -> None:
    """Its retained status and states, a signed command and its result, an event, and its will."""
    generate_keypair(tmp_path / "cloud.pem", tmp_path / "cloud.pub")
    (tmp_path / "mqtt.pass").write_text(ACCOUNTS[GW_T] + "\n")
    raw = small_school(tmp_path, modbus_port=free_port(), broker_port=broker.port, pub_key=tmp_path / "cloud.pub")
    raw["cloud"]["mqtt"].update(username=GW_T, password_file=str(tmp_path / "mqtt.pass"))
    cfg = Config.model_validate(raw)
    topics = Topics.for_config(cfg)
    async with VirtualSchool(cfg, speed=1), \
            watching(broker.port, topics, username="cloud", password=ACCOUNTS["cloud"]) as w, \
            Daemon(cfg, status_port=0) as daemon:
        assert daemon.cloud is not None
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True)
        await w.wait_for(lambda t, b, _r: t == topics.state("ac-301a") and b.get("online") is True)
        c = claims(action="door.unlock", target="door-101", params={"seconds": 1})
        await w.send(sign_command(load_private_key(tmp_path / "cloud.pem"), c))
        res = await w.result(c["jti"])
        assert (res["status"], res["code"]) == ("ok", "ok"), res
        _, ev, _ = await w.wait_for(lambda t, b, _r: t == topics.event("door") and b.get("door") == "door-101")
        assert ev["kind"] == "door"
        # a fresh subscriber finds the retained copies the gateway was allowed to leave
        async with client(broker.port, "cloud", subscribe=(topics.status, topics.state("meter-main"))) as late:
            await until(lambda: len(late.got) >= 2, 5, "the retained status and state")
            assert all(retained for _, _, retained in late.got)
            assert json.loads({t: b for t, b, _ in late.got}[topics.status])["online"] is True
        # the connection drops without a DISCONNECT: the broker publishes the will, then the link is back
        since = len(w.messages)
        sock = daemon.cloud.link.client._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)
        await w.wait_for(lambda t, b, _r: t == topics.status and b == {"online": False}, 10, since)
        await w.wait_for(lambda t, b, _r: t == topics.status and b.get("online") is True, 10, since)
        assert daemon.cloud.link.counters.connects == 2
        await until(lambda: not any(daemon.cloud.outbox.stats().pending.values()), 5, "an empty outbox")


# -- the sample mosquitto.conf ----------------------------------------------------------------------
def self_signed(d: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (the clients trust it directly)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = d / "broker.crt", d / "broker.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


def sample_conf(d: Path, port: int) -> str:
    """The sample, with its paths in `d` and its listener on a loopback port; every other line as shipped."""
    crt, key = self_signed(d)
    (d / "data").mkdir()
    swaps = {"listener 8883": f"listener {port} 127.0.0.1",
             "/etc/mosquitto/campus-edge.passwd": str(password_file(d)),
             "/etc/mosquitto/campus-edge.acl": str(ACL),
             "/etc/mosquitto/certs/broker.crt": str(crt), "/etc/mosquitto/certs/broker.key": str(key),
             "/etc/mosquitto/certs/ca.crt": str(crt), "/var/lib/mosquitto/": f"{d / 'data'}/",
             "log_dest syslog": "log_dest stderr"}
    text = SAMPLE_CONF.read_text(encoding="utf-8")
    for old, new in swaps.items():
        assert old in text, f"the sample no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text + ("user root\n" if os.geteuid() == 0 else "")


async def test_the_sample_mosquitto_conf_serves_gateways_over_tls(tmp_path: Path) -> None:
    port = free_port()
    b = Broker(tmp_path / "sample", port)
    b.conf.write_text(sample_conf(tmp_path, port))
    b.restart()
    try:
        tls = ssl.create_default_context(cafile=str(tmp_path / "broker.crt"))
        async with client(port, "cloud", subscribe=(ALL,), tls_context=tls) as cloud, \
                client(port, GW_A, tls_context=tls) as gw:
            codes = await gw.publish_each([f"{root(GW_B)}/status", f"{root(GW_A)}/status"])
            assert codes == ["Not authorized", "ok"]   # the ACL is in force
            await until(lambda: cloud.topics(live=True), 5, "gw-a's status")
            assert cloud.topics() == [f"{root(GW_A)}/status"]
        with pytest.raises(aiomqtt.MqttError):   # TLS only: the plain protocol gets nowhere on that port
            async with aiomqtt.Client("127.0.0.1", port, username=GW_A, password=ACCOUNTS[GW_A],
                                      identifier="plain", timeout=2):
                pass
    finally:
        b.stop()
