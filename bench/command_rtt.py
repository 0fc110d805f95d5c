"""Command round trip on loopback: publish a signed ac.set -> verified Modbus write -> result received.

A private mosquitto, the virtual school and the daemon (subprocesses) with 150 CoolMasterNet units
polled every 2 s over Modbus TCP (loopback: no wire time). One command at a time, each changing a
unit's setpoint (so every command really writes and reads back); the clock runs from just before
the publish to the arrival of the result with the command's id. Signing is the cloud's cost and
is done before the clock starts.

    .venv/bin/python bench/command_rtt.py [--units 150] [--commands 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import document, emit, free_port, percentile
from mqtt_traffic import Broker, school_150, stack

from cloud_sync.keys import load_private_key, sign_command
from cloud_sync.topics import Topics


async def measure(port: int, topics: Topics, key_path: Path, units: int, n: int, aud: str) -> dict[str, Any]:
    import aiomqtt

    key = load_private_key(key_path)
    rtts: list[float] = []
    codes: dict[str, int] = {}
    from cloud_sync.link import SOCKET_OPTIONS

    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-app", socket_options=SOCKET_OPTIONS) as c:
        await c.subscribe(topics.cmd_result, qos=1)
        # wait until the units are online (a command to an offline unit is answered at once)
        await asyncio.sleep(3.0)
        for i in range(n):
            unit = i % units + 1
            now = int(time.time())
            claims = {"jti": uuid.uuid4().hex, "iat": now, "exp": now + 60, "aud": aud, "sub": "bench",
                      "role": "facility", "action": "ac.set", "target": f"ac-{unit:03d}",
                      "params": {"setpoint_c": 26 + (i // units) % 3}}
            token = sign_command(key, claims)
            t0 = time.perf_counter()
            await c.publish(topics.cmd, token, qos=1)
            async with asyncio.timeout(10):
                async for m in c.messages:
                    body = json.loads(m.payload if isinstance(m.payload, bytes) else str(m.payload))
                    if body.get("id") == claims["jti"]:
                        break
            rtts.append((time.perf_counter() - t0) * 1000)
            key_ = f"{body['status']}/{body['message'].split(';')[0]}"
            codes[key_] = codes.get(key_, 0) + 1
    return {"commands": n, "outcomes": codes,
            "rtt_ms": {"p50": round(statistics.median(rtts), 2), "p90": round(percentile(rtts, 90) or 0, 2),
                       "p99": round(percentile(rtts, 99) or 0, 2), "max": round(max(rtts), 2),
                       "mean": round(statistics.fmean(rtts), 2)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--units", type=int, default=150)
    ap.add_argument("--commands", type=int, default=300)
    args = ap.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="command-rtt-") as tmp:
        work = Path(tmp)
        with Broker.start(work / "mosquitto") as broker, \
                stack(school_150(args.units, free_port()), work, broker) as (_cfg, topics):
            res = asyncio.run(measure(broker.port, topics, work / "cloud.pem", args.units, args.commands,
                                      "014601/gw-bench"))
    body = {"units": args.units, "poll_s": 2.0, "transport": "Modbus TCP on loopback (no wire time)", **res,
            "target_p99_ms": 50}
    emit("command_rtt", document("command_rtt", started, **body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
