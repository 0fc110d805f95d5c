"""The MQTT link: one broker connection, kept up for ever, with counters.

aiomqtt's client is reusable but not reentrant: the link re-enters `async with client` in a loop,
and every (re)connection runs the caller's `session(client)` until the connection dies. The session
re-subscribes and republishes retained state itself (a clean session, or a broker restarted without
persistence, forgets subscriptions; what we published while away never reached it). Between attempts
the link waits a jittered exponential backoff, reset once a connection has stayed up a while.

Sessions: by default (`cloud.mqtt.persistent_session`) the link asks for a persistent session under a
stable client id (MQTT 3.1.1 clean_session=False; MQTT 5 clean_start=False and a session expiry of
SESSION_EXPIRY_S). The broker keeps the `P/cmd` subscription and queues the QoS 1 commands the cloud
sends while the gateway is away (a network cut, a daemon restart): they are delivered on reconnection
and answered then; one that expired meanwhile is answered `expired` and not applied, a redelivered
duplicate `replayed` (the journal). The session still re-subscribes and republishes retained state on
every connection: the broker may have restarted without persistence.

Several brokers (`cloud.mqtt.urls`, the nodes of one broker cluster): the link keeps to the broker it
has and moves to the next URL (round robin, the same backoff between attempts) only when an attempt
to connect fails, so a short network cut does not move a gateway off its broker. In a cluster the
persistent session lives in the cluster and follows the gateway; between independent brokers it
does not (commands queued at a dead broker stay there).

Commands and acknowledgement: paho sends the PUBACK of a QoS 1 `P/cmd` message as soon as it has
read it, before the service has verified and journalled it (`CommandJournal.begin`). A crash in
that window (milliseconds) loses the command: the broker considers it delivered, and the journal
never saw it. The cloud re-sends a command whose result does not arrive (with the same token while
it is valid: a replay, if it did arrive after all, is answered `replayed` without acting).
Manual acks would close the window (the persistent session redelivers an unacknowledged message),
but aiomqtt 2.5 does not expose paho's `manual_ack` (reaching into `client._client` would be needed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_sync.retry import downward_backoff
from edge.core.config import MqttConfig

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.5      # first retry after a lost connection
BACKOFF_MAX_S = 30.0     # cap: a broker down for an hour sees one attempt per ~30 s per gateway
BACKOFF_JITTER = 0.5     # each wait is drawn from [1 - JITTER, 1] x the step: 500 gateways don't stampede
STABLE_S = 10.0          # a connection that lived this long resets the backoff
CONNECT_TIMEOUT_S = 10.0
# MQTT 5 persistent sessions end this long after a disconnection (3.1.1 has no such field: the
# broker's own setting applies, mosquitto's `persistent_client_expiration`, never by default).
SESSION_EXPIRY_S = 24 * 3600
# QoS 1 publishes in flight at once (outbox window + live state). aiomqtt warns above its threshold
# (10 by default) on every publish; with a window of 100 that is our normal, not a problem.
MAX_INFLIGHT = 200
MAX_INBOUND_PACKET_BYTES = 256 * 1024   # MQTT 5: larger packets are not sent to us (commands are < 16 KiB)
RECEIVE_MAXIMUM = 20                    # MQTT 5: unacknowledged QoS 1 messages the broker may send at once
PENDING_CALLS_THRESHOLD = 1000

# paho leaves Nagle on: a small publish then waits for the peer's delayed ACK (~40 ms per hop on Linux).
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

Protocol = Literal["3.1.1", "5"]
Category = Literal["status", "state", "event", "result", "cmd", "other"]


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Where and how to connect (from `cloud.mqtt`)."""

    host: str
    port: int
    client_id: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    protocol: Protocol = "3.1.1"
    persistent_session: bool = False      # the daemon's link: `cloud.mqtt.persistent_session` (True by default)
    backoff_min_s: float | None = None   # None: the module's BACKOFF_MIN_S / BACKOFF_MAX_S at connect time
    backoff_max_s: float | None = None
    more_brokers: tuple[tuple[str, int], ...] = ()   # (host, port) after `host`:`port`, tried in turn

    @property
    def brokers(self) -> tuple[tuple[str, int], ...]:
        """Every broker, in the order they are tried."""
        return ((self.host, self.port), *self.more_brokers)

    @classmethod
    def from_config(cls, mqtt: MqttConfig, default_client_id: str, **overrides: Any) -> LinkSettings:
        tls, host, port = parse_url(mqtt.url)
        more = tuple(parse_url(u)[1:] for u in mqtt.urls)
        password = None
        if mqtt.password_file is not None:
            try:
                password = Path(mqtt.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cloud.mqtt.password_file: {mqtt.password_file}: {exc.strerror or exc}") from None
        base: dict[str, Any] = {
            "host": host, "port": port, "tls": tls, "client_id": mqtt.client_id or default_client_id,
            "username": mqtt.username, "password": password, "ca_file": mqtt.ca_file, "cert_file": mqtt.cert_file,
            "key_file": mqtt.key_file, "keepalive_s": mqtt.keepalive_s, "protocol": mqtt.protocol,
            "persistent_session": mqtt.persistent_session, "more_brokers": more,
        }
        base.update(overrides)
        return cls(**base)

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS with the site's CA (or the system's) and, when given, a client certificate."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx


def session_options(s: LinkSettings) -> dict[str, Any]:
    """aiomqtt.Client keywords for a clean or a persistent session, per protocol version."""
    if s.protocol == "5":
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho is untyped here
        # the broker sends nothing larger (a 100 MB publish on P/cmd never reaches the gateway's memory)
        # and at most RECEIVE_MAXIMUM unacknowledged commands at once: back-pressure with manual acks
        props.MaximumPacketSize = MAX_INBOUND_PACKET_BYTES
        props.ReceiveMaximum = RECEIVE_MAXIMUM
        if not s.persistent_session:
            return {"clean_start": True, "properties": props}
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        return {"clean_start": False, "properties": props}
    # MQTT 3.1.1 has no such limits on the client side: the broker's own max_packet_size and
    # max_inflight_messages (mosquitto: 20 by default) bound what it sends (see docs/operations)
    return {"clean_session": not s.persistent_session}


def parse_url(url: str) -> tuple[bool, str, int]:
    """`mqtt://host[:port]` or `mqtts://host[:port]` -> (tls, host, port); 1883 / 8883 by default."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    tls = parts.scheme == "mqtts"
    return tls, parts.hostname, parts.port or (8883 if tls else 1883)


@dataclass
class Counters:
    """Messages and payload bytes, per direction and category, since start."""

    sent: dict[str, int] = field(default_factory=dict)
    sent_bytes: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    received_bytes: dict[str, int] = field(default_factory=dict)
    attempts: int = 0        # connection attempts, successful or not
    connects: int = 0
    disconnects: int = 0

    def count_sent(self, category: str, size: int) -> None:
        self.sent[category] = self.sent.get(category, 0) + 1
        self.sent_bytes[category] = self.sent_bytes.get(category, 0) + size

    def count_received(self, category: str, size: int) -> None:
        self.received[category] = self.received.get(category, 0) + 1
        self.received_bytes[category] = self.received_bytes.get(category, 0) + size

    def as_dict(self) -> dict[str, Any]:
        return {"sent": dict(self.sent), "sent_bytes": dict(self.sent_bytes), "received": dict(self.received),
                "received_bytes": dict(self.received_bytes), "attempts": self.attempts, "connects": self.connects,
                "disconnects": self.disconnects}


class Backoff:
    """Reconnect waits of min, x2, x4 ... capped at max, each drawn from [1 - JITTER, 1] x the step."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._retry = downward_backoff(min_s, max_s, BACKOFF_JITTER, rng)

    def next(self) -> float:
        return self._retry.fail(time.monotonic())

    def reset(self) -> None:
        self._retry.reset()


Session = Callable[[aiomqtt.Client], Awaitable[None]]


class MqttLink:
    """The connection loop: `await link.run(session)` until cancelled."""

    def __init__(self, settings: LinkSettings, will_topic: str | None = None,
                 will_payload: bytes = b'{"online":false}') -> None:
        self.settings = settings
        self.counters = Counters()
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.stopping = False   # set by the owner before it cancels `run`
        self.broker = f"{settings.host}:{settings.port}"   # the broker connected to, or tried next
        will = aiomqtt.Will(will_topic, will_payload, qos=1, retain=True) if will_topic else None
        self.client = aiomqtt.Client(
            settings.host, settings.port, username=settings.username, password=settings.password,
            identifier=settings.client_id, will=will, keepalive=settings.keepalive_s,
            protocol=aiomqtt.ProtocolVersion.V5 if settings.protocol == "5" else aiomqtt.ProtocolVersion.V311,
            tls_context=settings.ssl_context(), timeout=CONNECT_TIMEOUT_S, max_inflight_messages=MAX_INFLIGHT,
            logger=logging.getLogger("campus_edge.mqtt"), socket_options=SOCKET_OPTIONS,
            **session_options(settings))
        self.client.pending_calls_threshold = PENDING_CALLS_THRESHOLD
        # Manual acknowledgements: a P/cmd message is PUBACKed (`ack`) only once it is in the command
        # journal or its answer in the outbox, so a crash or a stop in between leaves it with the broker.
        # aiomqtt 2.5 has no option for it: this reaches its paho client (pinned versions; tested).
        self._paho = self.client._client
        self._paho.manual_ack_set(True)
        self.acks = 0

    async def run(self, session: Session) -> None:
        """Connect, run `session`, and on any connection loss wait (backoff) and do it again.

        A failed attempt moves on to the next broker (round robin); a lost connection retries the same one.
        """
        s = self.settings
        backoff = Backoff(BACKOFF_MIN_S if s.backoff_min_s is None else s.backoff_min_s,
                          BACKOFF_MAX_S if s.backoff_max_s is None else s.backoff_max_s)
        brokers = s.brokers
        turn = 0
        logged = ""   # the broker of the last warning: each broker's error is logged once, not each attempt
        while True:
            host, port = brokers[turn % len(brokers)]
            target = self.broker = f"{host}:{port}"
            # aiomqtt keeps one address per client; the link's client (and its paho session state) stays
            # the same object, so the address is set before each attempt (pinned aiomqtt; tested)
            self.client._hostname, self.client._port = host, port
            up_since: float | None = None
            self.counters.attempts += 1
            try:
                async with self.client:
                    up_since = time.monotonic()
                    self.counters.connects += 1
                    self.last_error = None
                    log.info("MQTT connected to %s as %s", target, self.settings.client_id)
                    self.connected.set()
                    try:
                        await session(self.client)
                    finally:
                        self.connected.clear()
            except* aiomqtt.MqttError as group:
                # the message only: the exception's chain holds paho's frames, and a failed TLS handshake
                # leaves its socket there unclosed (paho 2.2) until the frames are collected
                err = str(group.exceptions[0])
                if up_since is not None:
                    self.counters.disconnects += 1
                if self.last_error != err or self.broker != logged:
                    log.warning("MQTT %s: %s", target, err)
                self.last_error, logged = err, target
            if self.stopping:
                # a stop that landed while the broker went away: aiomqtt turned the cancellation into an
                # MqttError ("Disconnected during message iteration"); without this the loop would
                # reconnect for ever and the daemon never stop. (Not `Task.cancelling()`: on 3.11 a
                # TaskGroup whose child failed leaves its parent's cancel count raised.)
                raise asyncio.CancelledError
            if up_since is None:
                turn += 1   # this broker did not take us: the next one, after the same backoff
            if up_since is not None and time.monotonic() - up_since >= STABLE_S:
                backoff.reset()
            wait = backoff.next()
            log.debug("MQTT reconnect to %s:%d in %.1f s", *brokers[turn % len(brokers)], wait)
            await asyncio.sleep(wait)

    def ack(self, message: aiomqtt.Message) -> None:
        """PUBACK one received message (QoS 1), on the connection it came on; in the order received."""
        if message.qos > 0:
            self._paho.ack(message.mid, message.qos)
            self.acks += 1

    async def publish(self, topic: str, payload: bytes, category: Category, *, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the PUBACK; raises aiomqtt.MqttError when the link is down."""
        await self.client.publish(topic, payload, qos=qos, retain=retain)
        self.counters.count_sent(category, len(payload))


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every payload of the contract."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
