"""HA failover: a RabbitMQ cluster node killed while gateways publish; seconds until every gateway publishes again.

A private RabbitMQ cluster (3.10, the MQTT plugin, sessions on quorum queues; the same `RabbitCluster`
as tests/test_broker_failover.py: own node names, ports, epmd and cookie under a temp dir, stopped by
handle, a census at the end). N virtual gateways, each the daemon's real `CloudService` (link with its
persistent session and round robin over `cloud.mqtt.urls`, outbox, state gate) with the example
school's devices, publishing a probe event every `--every` seconds through the outbox. The gateways'
URL lists are rotated so that a third of them start on each node (`--all-on-first`: all on node A).
A cloud consumer with a persistent session on node B receives everything. After `--before` seconds
node A's whole process group is killed (SIGKILL), and the bench measures, from the kill:

- per gateway that was on A: when its link was connected again (to which node), when its first publish
  after the kill was acknowledged by the broker, and when the consumer received its first event made
  after the kill (end to end);
- the same acknowledgement time for the gateways on the other nodes (they should not notice);
- at the end, every probe event made (before, during and after) against what the consumer received:
  events not received, those still in the gateways' outboxes (kept for later, not lost), lost ones
  (none expected: the outbox resends what was not acknowledged) and duplicates.

The link's real backoff applies (first retry after 0.25-0.5 s, then doubling): it is part of the
failover time. The probe interval bounds the resolution of the acknowledgement and end-to-end times.
`--nodes 2` shows why the cluster has three nodes: RabbitMQ 3.10's MQTT plugin needs a majority of the
nodes (client id tracking in Raft, quorum queues), so the surviving node of two accepts no MQTT
connection and no gateway comes back within `--limit`.

    .venv/bin/python bench/ha_failover.py [--gateways 30] [--nodes 3] [--before 5] [--limit 60] [--every 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _common import document, emit, percentile, runnable_example
from fleet_bench import FleetGateway, Recording
from test_broker_failover import RabbitCluster  # tests/: _common put it on the path

from cloud_sync.keys import generate_keypair
from cloud_sync.service import CloudService
from edge.config import load_config
from edge.core.config import Config

PREFIX = "campus/v1"


class ProbeGateway(FleetGateway):
    """A FleetGateway that remembers every event it made (id and monotonic time)."""

    def __init__(self, cfg: Config, rec: Recording) -> None:
        super().__init__(cfg, rec)
        self.made: list[tuple[str, float]] = []

    def emit(self, topic: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = super().emit(topic, key, payload)
        if topic == "event":
            self.made.append((str(body["id"]), time.monotonic()))
        return body


def probe_recording(cfg: Config, every_s: float) -> Recording:
    """One probe event every `every_s`; the school's devices as STATEs (republished on every connection)."""
    initial = {d.id: {"online": True, "ts": ""} for d in cfg.devices}
    return Recording(every_s, initial, [(0.0, "event", "probe", {"kind": "probe"})])


def gateway_config(base: Config, i: int, work: Path, urls: list[str], pub: Path) -> Config:
    data = base.model_dump(mode="json", exclude_none=True)
    data["site"]["school_id"] = f"H{i:05d}"
    (work / f"gw-{i:05d}").mkdir(parents=True, exist_ok=True)
    data["storage"] = {"path": str(work / f"gw-{i:05d}")}
    data["cloud"] = {"mqtt": {"url": urls[0], "urls": urls[1:], "keepalive_s": 10}, "command_keys": [str(pub)],
                     "topic_prefix": PREFIX}
    return Config.model_validate(data)


class Consumer:
    """The cloud's consumer on one node: every probe event's id and arrival time, per gateway; it reconnects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: dict[str, list[tuple[str, float, str]]] = {}   # school -> [(event id, arrival, event ts)]
        self.ready = asyncio.Event()
        self.errors: list[str] = []

    async def run(self) -> None:
        import aiomqtt

        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="ha-consumer", clean_session=False,
                                          timeout=5) as c:
                    await c.subscribe(f"{PREFIX}/+/+/event/#", qos=1)
                    self.ready.set()
                    async for m in c.messages:
                        raw = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                        body = json.loads(raw)
                        school = str(m.topic).split("/")[2]
                        self.got.setdefault(school, []).append((str(body["id"]), time.monotonic(), body["ts"]))
            except aiomqtt.MqttError as exc:
                self.errors.append(f"{time.monotonic():.1f} {exc}")
                await asyncio.sleep(0.5)


def stats_s(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 3),
            "p90": round(percentile(values, 90) or 0, 3), "max": round(max(values), 3)}


async def fresh_connect(port: int) -> str:
    """What a new MQTT client gets from a node now (the 2-node case: no CONNACK)."""
    import aiomqtt

    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="ha-probe-client", timeout=5):
            return "connected"
    except aiomqtt.MqttError as exc:
        return f"refused or no answer: {exc}"


async def run(args: argparse.Namespace, work: Path, cluster: RabbitCluster) -> dict[str, Any]:
    nodes = cluster.nodes
    a, b = nodes[0], nodes[1]
    base = load_config(runnable_example(work / "base"))
    generate_keypair(work / "cloud.pem", work / "cloud.pub")
    rec = probe_recording(base, args.every)
    gws: list[ProbeGateway] = []
    for i in range(args.gateways):
        first = 0 if args.all_on_first else i % len(nodes)
        order = [nodes[(first + k) % len(nodes)].url for k in range(len(nodes))]
        gws.append(ProbeGateway(gateway_config(base, i, work / "gw", order, work / "cloud.pub"), rec))
    consumer = Consumer(b.mqtt_port)
    reader = asyncio.create_task(consumer.run(), name="ha-consumer")
    acks: list[list[float]] = [[] for _ in gws]
    try:
        async with asyncio.timeout(15):
            await consumer.ready.wait()
        async with contextlib.AsyncExitStack() as stack:
            services: list[CloudService] = []
            for i, gw in enumerate(gws):
                svc = await stack.enter_async_context(CloudService(gw))
                services.append(svc)
                publish = svc.link.publish

                async def timed(topic: str, payload: bytes, category: Any, *, qos: int = 1, retain: bool = False,
                                _publish: Any = publish, _acks: list[float] = acks[i]) -> None:
                    await _publish(topic, payload, category, qos=qos, retain=retain)
                    _acks.append(time.monotonic())

                setattr(svc.link, "publish", timed)   # noqa: B010  # an instance's method, wrapped to time its PUBACKs
            replays = [asyncio.create_task(gw.replay(rec, 0.0), name=f"ha-replay-{i}") for i, gw in enumerate(gws)]
            try:
                for _ in range(600):   # every gateway connected, within a minute
                    if all(s.connected for s in services):
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"{sum(not s.connected for s in services)} gateways never connected")
                await asyncio.sleep(args.before)
                on_a = [i for i, s in enumerate(services) if s.link.broker == a.address]
                kill_mono = time.monotonic()
                await asyncio.to_thread(cluster.kill, a)
                killed_in_s = time.monotonic() - kill_mono
                back: dict[int, float] = {}
                deadline = kill_mono + args.limit
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    for i in on_a:
                        if i not in back and services[i].connected and services[i].link.broker != a.address:
                            back[i] = now - kill_mono
                    seen = all(any(ts > kill_mono for ts in acks[i]) for i in range(len(gws)))
                    e2e = all(any(t_arr > kill_mono and made > kill_mono
                                  for (eid, t_arr, _), made in _matched(consumer, gws[i]))
                              for i in range(len(gws)))
                    if len(back) == len(on_a) and seen and e2e:
                        break
                    await asyncio.sleep(0.02)
                after = time.monotonic() - kill_mono
                await asyncio.sleep(2.0)     # a little steady traffic on the surviving nodes
            finally:
                for t in replays:
                    t.cancel()
                await asyncio.gather(*replays, return_exceptions=True)
            # let the outboxes drain (what was not acknowledged is sent again) before counting
            for _ in range(200):
                if not any(sum(s.outbox.stats().pending.values()) for s in services):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            pending = sum(sum(s.outbox.stats().pending.values()) for s in services)
            brokers_after = Counter(s.link.broker for s in services)
            connects = [s.link.counters.connects for s in services]
        b_answers = await fresh_connect(b.mqtt_port)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    def first_after(values: list[float]) -> float | None:
        later = [v - kill_mono for v in values if v > kill_mono]
        return min(later) if later else None

    affected_ack = [first_after(acks[i]) for i in on_a]
    others_ack = [first_after(acks[i]) for i in range(len(gws)) if i not in on_a]
    e2e_first: list[float | None] = []
    for i in on_a:
        arrivals = [t_arr - kill_mono for (_eid, t_arr, _), made in _matched(consumer, gws[i]) if made > kill_mono]
        e2e_first.append(min(arrivals) if arrivals else None)
    made = sum(len(g.made) for g in gws)
    received = Counter(eid for g in gws for eid, _, _ in consumer.got.get(g.cfg.site.school_id, []))
    not_received = sum(1 for g in gws for eid, _ in g.made if eid not in received)
    recovered = [v for v in affected_ack if v is not None]
    return {
        "gateways": len(gws), "nodes": len(nodes), "on_killed_node": len(on_a), "probe_every_s": args.every,
        "kill_took_s": round(killed_in_s, 3), "watched_for_s": round(after, 2),
        "every_gateway_publishing_again_s": round(max(recovered), 3)
        if len(recovered) == len(on_a) and on_a else None,
        "killed_node_gateways": {
            "reconnected_s": stats_s(list(back.values())),
            "first_ack_after_kill_s": stats_s(recovered),
            "first_event_end_to_end_s": stats_s([v for v in e2e_first if v is not None]),
            "never_back_within_limit": sum(1 for v in affected_ack if v is None)},
        "other_gateways_first_ack_after_kill_s": stats_s([v for v in others_ack if v is not None]),
        "links_now_on": dict(sorted(brokers_after.items())),
        "connects_per_gateway": dict(Counter(connects)),
        # an event not received yet is lost only if it is no longer in its gateway's outbox either
        "events": {"made": made, "received_distinct": len(received), "not_received": not_received,
                   "still_in_outboxes": pending, "lost": max(0, not_received - pending),
                   "duplicates": sum(v - 1 for v in received.values())},
        "consumer_errors": consumer.errors[:5],
        "fresh_client_on_node_b_after": b_answers,
    }


def _matched(consumer: Consumer, gw: ProbeGateway) -> list[tuple[tuple[str, float, str], float]]:
    """The consumer's arrivals of `gw`'s events, each with the time the gateway made it."""
    made: Mapping[str, float] = dict(gw.made)
    return [(x, made[x[0]]) for x in consumer.got.get(gw.cfg.site.school_id, []) if x[0] in made]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--gateways", type=int, default=30)
    ap.add_argument("--nodes", type=int, default=3, choices=[2, 3, 5])
    ap.add_argument("--before", type=float, default=5.0, help="seconds of steady publishing before the kill")
    ap.add_argument("--limit", type=float, default=60.0, help="seconds to wait for every gateway after the kill")
    ap.add_argument("--every", type=float, default=0.2, help="seconds between a gateway's probe events")
    ap.add_argument("--all-on-first", action="store_true", help="every gateway starts on node A")
    args = ap.parse_args()
    why = RabbitCluster.missing()
    if why:
        raise SystemExit(why)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ha-failover-") as tmp:
        work = Path(tmp)
        (work / "base").mkdir()
        os.environ["RUNTIME_DIRECTORY"] = tmp
        cluster = RabbitCluster(work / "rabbit", size=args.nodes)
        t = time.monotonic()
        cluster.start()
        try:
            cluster_up_s = time.monotonic() - t
            body = asyncio.run(run(args, work, cluster))
        finally:
            cluster.stop()
        left = cluster.census()
    emit("ha_failover", document("ha_failover", started, rabbitmq="3.10 (Debian package), rabbitmq_mqtt, "
                                 "mqtt.durable_queue_type = quorum", cluster_up_s=round(cluster_up_s, 1),
                                 census_after_stop=left, **body))
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
