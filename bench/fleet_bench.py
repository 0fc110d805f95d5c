"""Fleet benchmark: N virtual gateways, each the daemon's real cloud side replaying the example school, on one broker.

Two phases, one run:

1. Record (real): the example school (config/example-school.yaml: 85 ACs on three buses, the meter,
   two relay boards, three card readers and a beacon scanner) served by the virtual school and read by
   the real daemon, in-process, from a simulated 07:30 at `--speed` (1: real time), while teachers
   switch their rooms' ACs on through the control entry (`--rush-per-min` rooms a minute, the demo's
   morning rush) and pupils tap in at the gate. Every message the daemon puts on its bus for the
   cloud ("state" and "event") is recorded with its time, after a warm-up in which every device came
   online.
2. Replay (real from the bus on): each virtual gateway is a real `CloudService` (the MQTT link with
   its persistent session and manual acks, the SQLite outbox and command journal, the state gate's
   deadbands, per-device rate limit and refresh) and a real `TelemetryWriter` (sampled InfluxDB line
   protocol to one VictoriaMetrics, `--no-tsdb` to leave it out) over a bus fed by the recording, with
   its own school id and a random phase into the recording so the gateways do not publish in lockstep.
   Not real: each gateway's Modbus polling (the recording stands in for it) and commands (none are sent;
   bench/command_rtt.py measures them). All gateways share this one Python process.

One private mosquitto; a consumer subscribed to `campus/v1/#` (the cloud's side) counts every message
and payload byte per gateway and kind over the window after the warm-up, and `$SYS/broker/#`. The
broker's CPU is read from /proc (utime + stime of its process), as is VictoriaMetrics' and ours (the
load generator: if it nears a full core the rates are its limit, not the broker's).

    .venv/bin/python bench/fleet_bench.py [--gateways 10,25,50] [--window 60] [--warmup 15] [--record 120]
        [--speed 1] [--rush-per-min 2] [--no-tsdb] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from _common import CLK_TCK, PAGE, document, emit, free_port, percentile, runnable_example, self_cpu_s
from victoria import Victoria, binary  # tests/victoria.py: _common put tests/ on the path

from cloud_sync.keys import generate_keypair
from cloud_sync.service import REFRESH_S, CloudService
from cloud_sync.telemetry import TelemetryWriter
from edge.config import load_config
from edge.core.arbiter import Source
from edge.core.clock import Clock, SystemClock, iso
from edge.core.config import Config
from edge.core.control import Ask
from edge.core.events import EventBus, Message
from edge.core.model import Kind
from edge.daemon import Daemon
from edge.demo import school_morning
from simulator.app import VirtualSchool
from simulator.local import Broker

PREFIX = "campus/v1"
SYS_INTERVAL_S = 5
START_AFTER_MORNING = timedelta(minutes=12)   # 07:30: the demo's morning is 07:18, the rush from 07:33


# -- /proc ----------------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return round(pages * PAGE / 2**20, 1)


# -- phase 1: the recording -------------------------------------------------------------------------
@dataclass
class Recording:
    """What the example school's daemon put on its bus for the cloud, with times from the recording's start."""

    duration_s: float
    initial: dict[str, dict[str, Any]]                    # every device's STATE when recording began
    items: list[tuple[float, str, str, dict[str, Any]]]   # (t, "state" | "event", device or event kind, payload)
    rush: list[dict[str, Any]] = field(default_factory=list)

    def rates(self) -> dict[str, Any]:
        kinds = Counter(topic for _, topic, _, _ in self.items)
        events = Counter(key for _, topic, key, _ in self.items if topic == "event")
        return {"devices": len(self.initial), "seconds": self.duration_s,
                "bus_msg_per_s": {k: round(v / self.duration_s, 3) for k, v in sorted(kinds.items())},
                "events_by_kind": dict(sorted(events.items()))}


async def record(work: Path, seconds: float, speed: float, rush_per_min: float, warmup_limit_s: float) -> Recording:
    """Run the example school and its daemon in-process and record the daemon's bus."""
    cfg = load_config(runnable_example(work))
    tz = ZoneInfo(cfg.site.timezone)
    start = school_morning(tz, time.time()) + START_AFTER_MORNING
    cfg = cfg.model_copy(update={"simulation": cfg.simulation.model_copy(update={"start": start.isoformat()})})
    rooms = sorted({d.room for d in cfg.modbus_devices() if d.kind == Kind.AC and d.room})
    acs = {r: [d.id for d in cfg.modbus_devices() if d.kind == Kind.AC and d.room == r] for r in rooms}
    rush_log: list[dict[str, Any]] = []
    async with VirtualSchool(cfg, speed=speed, readers=True), Daemon(cfg, status_port=0) as d:
        modbus = [m.id for m in cfg.modbus_devices()]
        for _ in range(round(warmup_limit_s / 0.2)):   # every device online, or as many as came
            if all(d.states.get(m, {}).get("online") for m in modbus):
                break
            await asyncio.sleep(0.2)
        sub = d.bus.subscribe("state", "event", maxsize=1_000_000, name="fleet-recorder")
        initial = copy.deepcopy(d.states)
        items: list[tuple[float, str, str, dict[str, Any]]] = []
        t0 = time.monotonic()

        async def rush() -> None:
            for i, room in enumerate(random.Random(7).sample(rooms, len(rooms))):
                await asyncio.sleep(max(0.0, t0 + i * 60.0 / rush_per_min - time.monotonic()))
                for ac in acs[room]:
                    res = await d.control.ask(Ask(ac, {"power_on": True, "mode": "cool", "setpoint_c": 26},
                                                  Source.TEACHER, f"teacher:bench-{room}"))
                    rush_log.append({"t": round(time.monotonic() - t0, 1), "ac": ac, "code": res.code})

        rusher = asyncio.create_task(rush(), name="fleet-rush") if rush_per_min > 0 else None
        try:
            while (left := t0 + seconds - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        m = await sub.queue.get()
                        items.append((time.monotonic() - t0, m.topic, m.key, dict(m.payload)))
        finally:
            if rusher is not None:
                rusher.cancel()
                await asyncio.gather(rusher, return_exceptions=True)
            d.bus.unsubscribe(sub)
    return Recording(seconds, initial, items, rush_log)


# -- phase 2: the virtual gateways -----------------------------------------------------------------
class FleetGateway:
    """What CloudService and TelemetryWriter see of a daemon (config, clock, bus, states), fed by a recording."""

    def __init__(self, cfg: Config, rec: Recording) -> None:
        self.cfg = cfg
        self.clock: Clock = SystemClock()
        self.bus = EventBus()
        self.store: Any = None       # documents and commands are not exercised here
        self.control: Any = None
        self.kinds = {d.id: Kind(d.kind) for d in cfg.devices}
        self.states: dict[str, dict[str, Any]] = copy.deepcopy(rec.initial)
        self.tz = ZoneInfo(cfg.site.timezone)

    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        now = self.clock.time()
        self.bus.publish(Message("event", kind, {"id": uuid.uuid4().hex[:16], "ts": iso(now, self.tz), "kind": kind,
                                                 **body}, now))

    def emit(self, topic: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One recorded bus message, now: a state replaces the device's STATE, an event gets a fresh id."""
        now = self.clock.time()
        body = {**payload, "ts": iso(now, self.tz)}
        if topic == "event":
            body["id"] = uuid.uuid4().hex[:16]
        else:
            self.states[key] = body
        self.bus.publish(Message(topic, key, body, now))
        return body

    async def replay(self, rec: Recording, phase_s: float) -> None:
        """The recording in a loop, starting `phase_s` into it."""
        loop = asyncio.get_running_loop()
        start = loop.time() - phase_s
        k = 0
        while True:
            for t, topic, key, payload in rec.items:
                due = start + k * rec.duration_s + t
                if k == 0 and t < phase_s:
                    continue
                await asyncio.sleep(max(0.0, due - loop.time()))
                self.emit(topic, key, payload)
            k += 1


def gateway_config(base: Config, i: int, work: Path, broker_port: int, vm_url: str | None, pub: Path) -> Config:
    """The example school as school F{i:05d}: its own storage, a cloud link to the bench broker (and the TSDB)."""
    cloud: dict[str, Any] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"}, "command_keys": [str(pub)],
                             "topic_prefix": PREFIX}
    if vm_url is not None:
        cloud["influx"] = {"url": vm_url, "org": "ntpc", "bucket": "campus"}
    data = base.model_dump(mode="json", exclude_none=True)
    data["site"]["school_id"] = f"F{i:05d}"
    (work / f"gw-{i:05d}").mkdir(parents=True, exist_ok=True)
    data["storage"] = {"path": str(work / f"gw-{i:05d}")}
    data["cloud"] = cloud
    return Config.model_validate(data)


@dataclass
class Consumer:
    """The cloud's side: counts messages and payload bytes per gateway and kind, keeps the broker's $SYS figures."""

    port: int
    counting: bool = False
    msgs: Counter[tuple[str, str]] = field(default_factory=Counter)
    size: Counter[tuple[str, str]] = field(default_factory=Counter)
    sys: dict[str, str] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", self.port, identifier="fleet-consumer",
                                  clean_session=True) as c:
            await c.subscribe(f"{PREFIX}/#", qos=1)
            await c.subscribe("$SYS/broker/#", qos=0)
            self.ready.set()
            async for m in c.messages:
                topic = str(m.topic)
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                if topic.startswith("$SYS/"):
                    self.sys[topic[len("$SYS/broker/"):]] = payload.decode(errors="replace")
                    continue
                if not self.counting:
                    continue
                parts = topic.split("/")
                gw = "/".join(parts[2:4])
                kind = parts[4] if len(parts) > 4 else "other"
                kind = "result" if kind == "cmd" and parts[-1] == "result" else kind
                self.msgs[(gw, kind)] += 1
                self.size[(gw, kind)] += len(payload)


def series_count(vm: Victoria, n: int) -> int:
    """Series in the TSDB from schools F00000 .. F{n-1} (every run writes to the same VictoriaMetrics)."""
    vm.force_flush()
    schools = "|".join(f"F{i:05d}" for i in range(n))
    q = urllib.parse.urlencode({"match[]": f'{{school=~"{schools}"}}', "start": "-1h"})
    with urllib.request.urlopen(f"{vm.url}/api/v1/series?{q}", timeout=30) as r:
        return len(json.loads(r.read())["data"])


def spread(values: list[float]) -> dict[str, float | None]:
    return {"median": round(statistics.median(values), 3) if values else None,
            "p10": round(percentile(values, 10) or 0, 3), "p90": round(percentile(values, 90) or 0, 3),
            "min": round(min(values), 3) if values else None, "max": round(max(values), 3) if values else None}


@contextlib.asynccontextmanager
async def fleet(n: int, base: Config, rec: Recording, work: Path, broker: Broker, vm: Victoria | None,
                pub: Path, seed: int) -> AsyncIterator[tuple[list[FleetGateway], list[CloudService],
                                                             list[TelemetryWriter]]]:
    """`n` gateways connected and replaying; stopped on the way out."""
    rng = random.Random(seed)
    gws = [FleetGateway(gateway_config(base, i, work, broker.port, vm.url if vm else None, pub), rec)
           for i in range(n)]
    async with contextlib.AsyncExitStack() as stack:
        services: list[CloudService] = []
        writers: list[TelemetryWriter] = []
        for gw in gws:
            services.append(await stack.enter_async_context(CloudService(gw)))
            if vm is not None:
                # sample_s: the sampler has no window for the "ems" device that devices_of() adds where a site
                # has `ems` (KeyError 'ems' otherwise); its points come from write_ems, not sampled states
                writers.append(await stack.enter_async_context(
                    TelemetryWriter(gw.cfg, gw.bus, storage_dir=gw.cfg.storage.path, clock=gw.clock,
                                    sample_s={"ems": 60.0})))
        replays = [asyncio.create_task(gw.replay(rec, rng.uniform(0, rec.duration_s)), name=f"replay-{i}")
                   for i, gw in enumerate(gws)]
        try:
            deadline = time.monotonic() + 30 + n
            while not all(s.connected for s in services):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{sum(not s.connected for s in services)} of {n} gateways never connected")
                await asyncio.sleep(0.1)
            yield gws, services, writers
        finally:
            for t in replays:
                t.cancel()
            await asyncio.gather(*replays, return_exceptions=True)


async def measure(n: int, base: Config, rec: Recording, work: Path, broker: Broker, vm: Victoria | None, pub: Path,
                  warmup_s: float, window_s: float, seed: int) -> dict[str, Any]:
    consumer = Consumer(broker.port)
    reader = asyncio.create_task(consumer.run(), name="fleet-consumer")
    try:
        async with asyncio.timeout(10):
            await consumer.ready.wait()
        started = time.monotonic()
        async with fleet(n, base, rec, work / f"n{n}", broker, vm, pub, seed) as (_gws, services, writers):
            connect_s = time.monotonic() - started
            await asyncio.sleep(warmup_s)
            assert broker.proc is not None
            b0, me0, w0 = cpu_s(broker.proc.pid), self_cpu_s(), time.monotonic()
            vm0 = cpu_s(vm.proc.pid) if vm is not None and vm.proc is not None else 0.0
            links0 = [copy.deepcopy(s.link.counters.as_dict()) for s in services]
            tele0 = [(w.stats_.points, w.stats_.sent, w.stats_.bytes_sent, w.stats_.requests) for w in writers]
            consumer.counting = True
            await asyncio.sleep(window_s)
            consumer.counting = False
            elapsed = time.monotonic() - w0
            broker_cpu = cpu_s(broker.proc.pid) - b0
            me_cpu = self_cpu_s() - me0
            vm_cpu = (cpu_s(vm.proc.pid) - vm0) if vm is not None and vm.proc is not None else None
            links1 = [s.link.counters.as_dict() for s in services]
            tele1 = [(w.stats_.points, w.stats_.sent, w.stats_.bytes_sent, w.stats_.requests) for w in writers]
            pending = sum(sum(s.outbox.stats().pending.values()) for s in services)
            broker_rss = rss_mib(broker.proc.pid)
            vm_rss = rss_mib(vm.proc.pid) if vm is not None and vm.proc is not None else None
            series = await asyncio.to_thread(series_count, vm, n) if vm is not None else None
            sys_figures = dict(consumer.sys)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    per_gw_msgs: Counter[str] = Counter()
    per_gw_bytes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    by_kind_bytes: Counter[str] = Counter()
    for (gw, kind), v in consumer.msgs.items():
        per_gw_msgs[gw] += v
        by_kind[kind] += v
    for (gw, kind), v in consumer.size.items():
        per_gw_bytes[gw] += v
        by_kind_bytes[kind] += v
    msg_rates = [per_gw_msgs[g] / elapsed for g in per_gw_msgs] + [0.0] * (n - len(per_gw_msgs))
    byte_rates = [per_gw_bytes[g] / elapsed for g in per_gw_bytes] + [0.0] * (n - len(per_gw_bytes))
    total_msgs = sum(per_gw_msgs.values())
    sent = [sum(b["sent"].values()) - sum(a["sent"].values()) for a, b in zip(links0, links1, strict=True)]
    out: dict[str, Any] = {
        "gateways": n, "window_s": round(elapsed, 2), "warmup_s": warmup_s,
        "all_connected_after_s": round(connect_s, 2),
        "per_gateway": {"msg_per_s": spread(msg_rates), "payload_bytes_per_s": spread(byte_rates),
                        "sent_by_links_msg_per_s": spread([s / elapsed for s in sent])},
        "total": {"msg_per_s": round(total_msgs / elapsed, 2),
                  "payload_bytes_per_s": round(sum(per_gw_bytes.values()) / elapsed, 1),
                  "by_kind_msg_per_s": {k: round(v / elapsed, 3) for k, v in sorted(by_kind.items())},
                  "by_kind_bytes_per_s": {k: round(v / elapsed, 1) for k, v in sorted(by_kind_bytes.items())}},
        "state_refresh_upper_bound_msg_per_s_per_gateway": round(len(rec.initial) / REFRESH_S, 3),
        "broker": {"cpu_pct_of_one_core": round(100 * broker_cpu / elapsed, 2),
                   "cpu_ms_per_1000_msgs_in": round(1000 * broker_cpu / total_msgs * 1000, 2) if total_msgs else None,
                   "rss_mib": broker_rss,
                   "sys": {k: sys_figures.get(k) for k in ("clients/connected", "retained messages/count",
                                                            "subscriptions/count", "heap/current")}},
        "generator_cpu_pct_of_one_core": round(100 * me_cpu / elapsed, 1),
        "outbox_pending_at_end": pending,
    }
    if writers:
        d = [tuple(b - a for a, b in zip(x, y, strict=True)) for x, y in zip(tele0, tele1, strict=True)]
        out["tsdb"] = {
            "per_gateway": {"points_per_s": spread([p / elapsed for p, _, _, _ in d]),
                            "points_sent_per_s": spread([s / elapsed for _, s, _, _ in d]),
                            "gzip_bytes_per_s": spread([b / elapsed for _, _, b, _ in d]),
                            "requests_per_min": spread([60 * r / elapsed for _, _, _, r in d])},
            "victoria_metrics": {"cpu_pct_of_one_core": round(100 * (vm_cpu or 0) / elapsed, 2), "rss_mib": vm_rss,
                                 "series_of_these_schools": series}}
    return out


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    t = time.monotonic()
    rec = await record(work / "record", args.record, args.speed, args.rush_per_min, 60.0)
    record_s = time.monotonic() - t
    base = load_config(runnable_example(work / "base"))
    generate_keypair(work / "cloud.pem", work / "cloud.pub")
    results = []
    vm: Victoria | None = None
    if not args.no_tsdb:
        if binary() is None:
            raise SystemExit("victoria-metrics is not installed: use --no-tsdb")
        vm = Victoria(work / "vm", free_port()).start()
    try:
        with Broker.start(work / "mosquitto", extra_conf=f"sys_interval {SYS_INTERVAL_S}\n") as broker:
            for i, n in enumerate(args.gateways):
                results.append(await measure(n, base, rec, work, broker, vm, work / "cloud.pub", args.warmup,
                                             args.window, args.seed + i))
                print(json.dumps({"gateways": n, "per_gateway_msg_per_s": results[-1]["per_gateway"]["msg_per_s"],
                                  "broker_cpu_pct": results[-1]["broker"]["cpu_pct_of_one_core"]}), file=sys.stderr)
    finally:
        if vm is not None:
            vm.stop()
    return {"recording": {**rec.rates(), "record_wall_s": round(record_s, 1), "speed": args.speed,
                          "rush_per_min": args.rush_per_min, "rush_switch_ons": len(rec.rush),
                          "rush_codes": dict(Counter(r["code"] for r in rec.rush))},
            "runs": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--gateways", default="10,25,50", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--record", type=float, default=120.0, help="seconds of the example school recorded")
    ap.add_argument("--speed", type=float, default=1.0, help="the virtual school's simulated seconds per second")
    ap.add_argument("--rush-per-min", type=float, default=2.0, help="rooms switched on a minute")
    ap.add_argument("--no-tsdb", action="store_true", help="no TelemetryWriter and no VictoriaMetrics")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="record 40 s; 5 and 10 gateways; 10 s warm-up, 20 s window")
    args = ap.parse_args()
    if args.quick:
        args.record, args.gateways, args.warmup, args.window = 40.0, [5, 10], 10.0, 20.0
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        os.environ["RUNTIME_DIRECTORY"] = tmp   # the recording daemon's control socket, not the system's
        for d in ("record", "base"):
            (Path(tmp) / d).mkdir()
        body = asyncio.run(bench(args, Path(tmp)))
    emit("fleet_bench", document("fleet_bench", started, school="config/example-school.yaml",
                                 what_is_real=__doc__.split("\n\n")[1:3], **body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
