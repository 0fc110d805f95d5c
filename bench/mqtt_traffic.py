"""Steady-state MQTT traffic of the gateway, and the delay from a reading to the broker.

Starts a private mosquitto, the virtual school (`campus-edge simulate`) and the daemon
(`campus-edge run`) as subprocesses, subscribes a counter to '#' and, after a warm-up, counts
messages and payload bytes per topic kind over a window; the delay is arrival time minus the
STATE's `ts` (the reading's time) for every state message in the window.

    .venv/bin/python bench/mqtt_traffic.py [--school example|150] [--window 60] [--warmup 15]

`example` is config/example-school.yaml (40 classes, 4 buses); `150` is 150 CoolMasterNet units on
one Modbus TCP gateway plus an SDM630 (the ThingsBoard-gateway peer's layout, ../shared/peers/tbgw).
Peer figures (TB gateway 3.8.5, 150 ACs, same kind of machine): about 75 msg/s, 9-10.7 kB/s payload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, ac_fleet, document, emit, free_port, meter, percentile, site, tcp_bus
from mqtt_broker import Broker  # tests/mqtt_broker.py: _common put tests/ on the path

from cloud_sync.keys import generate_keypair
from cloud_sync.topics import Topics
from edge.config import load_config

CLI = [sys.executable, "-m", "edge.cli"]
TB_GW_150 = {"msg_per_s": 75.0, "payload_bytes_per_s": 10_000.0, "median_delay_ms": [30, 60]}


def school_150(units: int, modbus_port: int) -> dict[str, Any]:
    rooms, acs = ac_fleet(units, "school-bus")
    return site(gateway="gw-bench", timezone="Asia/Taipei", buses=[tcp_bus("school-bus", modbus_port, timeout_s=1.0)],
                rooms=rooms, devices=[*acs, meter("school-bus", 2)])


def example_school(modbus_port: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example-school.yaml").read_text(encoding="utf-8"))
    for b in data["buses"]:
        if b["type"] == "tcp":
            b["port"] = modbus_port
    return data


@contextmanager
def stack(site: dict[str, Any], work: Path, broker: Broker, speed: float = 1.0) -> Iterator[tuple[Path, Topics]]:
    """Simulator and daemon subprocesses for `site`, with a cloud section pointing at `broker`."""
    generate_keypair(work / "cloud.pem", work / "cloud.pub", overwrite=True)
    site = {**site, "storage": {"path": str(work / "state")}, "status_port": 0,
            "cloud": {"mqtt": {"url": broker.url}, "command_keys": [str(work / "cloud.pub")]}}
    cfg_path = work / "site.yaml"
    cfg_path.write_text(yaml.safe_dump(site, allow_unicode=True))
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(work / "run"), "CAMPUS_EDGE_STATE_DIR": str(work / "state"),
           "PYTHONUNBUFFERED": "1"}
    (work / "run").mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args, log in (([*CLI, "simulate", "--config", str(cfg_path), "--speed", str(speed)], "simulate.log"),
                          ([*CLI, "--log-level", "WARNING", "run", "--config", str(cfg_path)], "daemon.log")):
            with (work / log).open("ab") as err:
                p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True)
            procs.append(p)
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith(b"READY"):
                raise RuntimeError(f"{args[3]} did not start: see {work / log}")
        yield cfg_path, Topics.for_config(load_config(cfg_path))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


async def count(port: int, topics: Topics, warmup_s: float, window_s: float) -> dict[str, Any]:
    import aiomqtt

    msgs: Counter[str] = Counter()
    size: Counter[str] = Counter()
    delays: list[float] = []
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-counter") as c:
        await c.subscribe("#", qos=1)
        start = time.time()
        t0 = start + warmup_s
        t1 = t0 + window_s
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):  # a quiet school: the window may end without a message
            async with asyncio.timeout_at(loop.time() + (t1 - time.time())):
                async for m in c.messages:
                    now = time.time()
                    if now >= t1:
                        break
                    if now < t0 or m.retain:  # retained copies are the broker's, not traffic
                        continue
                    kind = topics.kind_of(str(m.topic)) or "other"
                    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                    msgs[kind] += 1
                    size[kind] += len(payload)
                    if kind == "state":
                        ts = json.loads(payload).get("ts")
                        if ts:
                            delays.append((now - datetime.fromisoformat(ts).timestamp()) * 1000)
    total_msgs, total_bytes = sum(msgs.values()), sum(size.values())
    return {
        "window_s": window_s, "warmup_s": warmup_s,
        "msg_per_s": round(total_msgs / window_s, 3), "payload_bytes_per_s": round(total_bytes / window_s, 1),
        "by_kind": {k: {"msgs": msgs[k], "bytes": size[k]} for k in sorted(msgs)},
        "state_delay_ms": {"n": len(delays), "median": round(statistics.median(delays), 2) if delays else None,
                           "p90": round(percentile(delays, 90) or 0, 2) if delays else None,
                           "max": round(max(delays), 2) if delays else None},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--school", choices=["example", "150"], default="150")
    ap.add_argument("--units", type=int, default=150)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--speed", type=float, default=1.0,
                    help="simulated seconds per real second of the school's physics (60: an hour a minute, busy)")
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mqtt-traffic-") as tmp:
        work = Path(tmp)
        site = example_school(free_port()) if args.school == "example" else school_150(args.units, free_port())
        with Broker.start(work / "mosquitto") as broker, stack(site, work, broker, args.speed) as (_cfg, topics):
            res = asyncio.run(count(broker.port, topics, args.warmup, args.window))
    body: dict[str, Any] = {"school": args.school if args.school == "example" else f"{args.units} CoolMasterNet ACs",
                            "physics_speed": args.speed, "ours": res}
    if args.school == "150" and args.units == 150:
        body["tb_gateway_reference"] = TB_GW_150
        body["ratio_bytes_ours_to_tbgw"] = round(res["payload_bytes_per_s"] / TB_GW_150["payload_bytes_per_s"], 4)
        body["ratio_msgs_ours_to_tbgw"] = round(res["msg_per_s"] / TB_GW_150["msg_per_s"], 4)
    emit("mqtt_traffic", document("mqtt_traffic", started, **body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
