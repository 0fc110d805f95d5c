"""Telemetry benchmark: encode rate, write rate to a real VictoriaMetrics, bytes per point, import RSS.

Prints one JSON object. Import RSS is VmRSS of a fresh interpreter after the import, minus that of
a bare one (same interpreter). influxdb-client is not a dependency of the project: install it in a
separate venv and pass its python, e.g.

    python -m venv /tmp/ic && /tmp/ic/bin/pip install influxdb-client
    .venv/bin/python bench/telemetry_bench.py --influx-python /tmp/ic/bin/python [--points 100000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.sites import ac, meter, site, tcp_bus
from victoria import Victoria

from cloud_sync.lineproto import encode_body, make_point
from cloud_sync.outbox import Outbox
from cloud_sync.telemetry import TelemetryWriter, post_write, write_url
from edge.core.clock import SystemClock, iso
from edge.core.config import Config
from edge.core.events import EventBus, Message
from simulator.local import free_port

ROOT = Path(__file__).resolve().parents[1]
RSS_PROBE = "import re,sys\n{imports}\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"


def rss_kib(python: str, imports: str, repeat: int = 3) -> int | str:
    """Median VmRSS (KiB) of a fresh `python` after running `imports`; the error text if it fails."""
    got = []
    for _ in range(repeat):
        r = subprocess.run([python, "-c", RSS_PROBE.format(imports=imports)], capture_output=True, text=True,
                           cwd=ROOT, check=False)
        if r.returncode:
            return r.stderr.strip().splitlines()[-1]
        got.append(int(r.stdout))
    return sorted(got)[len(got) // 2]


def rss_report(influx_python: str | None) -> dict[str, Any]:
    me = sys.executable
    daemon_base = "import edge.config, edge.core.events, edge.core.clock, cloud_sync.outbox"
    cases = {
        "bare": (me, ""),
        "daemon_base (config, events, outbox)": (me, daemon_base),
        "daemon_base + cloud_sync.telemetry": (me, daemon_base + "\nimport cloud_sync.telemetry"),
        "cloud_sync.telemetry alone": (me, "import cloud_sync.telemetry"),
        "http.client + gzip (the writer's own deps)": (me, "import http.client, gzip, email.utils"),
    }
    if influx_python:
        cases["influx_bare"] = (influx_python, "")
        cases["influxdb_client + write_api"] = (
            influx_python, "import influxdb_client\nfrom influxdb_client.client.write_api import WriteApi")
    raw = {name: rss_kib(py, imp) for name, (py, imp) in cases.items()}
    out: dict[str, Any] = {"vmrss_kib": raw}

    def delta(a: str, b: str) -> float | None:
        x, y = raw.get(a), raw.get(b)
        return round((x - y) / 1024, 1) if isinstance(x, int) and isinstance(y, int) else None

    out["added_mib"] = {
        "telemetry_over_daemon_base": delta("daemon_base + cloud_sync.telemetry",
                                            "daemon_base (config, events, outbox)"),
        "telemetry_alone_over_bare": delta("cloud_sync.telemetry alone", "bare"),
        "writer_stdlib_deps_over_bare": delta("http.client + gzip (the writer's own deps)", "bare"),
        "influxdb_client_over_bare": delta("influxdb_client + write_api", "influx_bare"),
    }
    if not influx_python:
        out["influxdb_client"] = "not measured: pass --influx-python (a venv with influxdb-client installed)"
    return out


def meter_fields(i: int) -> dict[str, Any]:
    return {"online": True, "power_w": 50_000.0 + i % 977, "energy_kwh": 123_456.25 + i / 3600, "pf": 0.97,
            "freq_hz": 60.01, "demand_kw": 120.5, "voltage_l1_v": 230.1, "voltage_l2_v": 229.8,
            "voltage_l3_v": 231.0, "current_l1_a": 70.2, "current_l2_a": 71.9, "current_l3_a": 69.5}


def ac_fields(i: int) -> dict[str, Any]:
    return {"online": True, "on": True, "power_w": 1500.0 + i % 101, "room_temp_c": 26.5 + (i % 7) / 2,
            "setpoint_c": 26.0, "fault": False}


def lines_for(n: int, t0_ms: int, devices: int) -> list[str]:
    out = []
    for i in range(n):
        d = i % devices
        if d == 0:
            p = make_point("meter", {"school": "014601", "gateway": "gw-bench", "device": "meter-main"},
                           meter_fields(i), t0_ms + i)
        else:
            p = make_point("ac", {"school": "014601", "gateway": "gw-bench", "device": f"ac-{d:03d}",
                                  "room": f"{d:03d}", "room_name": f"{d // 10}年{d % 10}班"}, ac_fields(i), t0_ms + i)
        assert p is not None
        out.append(p.line())
    return out


def encode_report(n: int, devices: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    lines = lines_for(n, int(time.time() * 1000) - 3_600_000, devices)
    t_lines = time.perf_counter() - t0
    t1 = time.perf_counter()
    bodies = [encode_body(lines[i:i + 5000]) for i in range(0, n, 5000)]
    t_gzip = time.perf_counter() - t1
    raw = sum(len(x) + 1 for x in lines)
    wire = sum(len(b) for b in bodies)
    return {"points": n, "mix": f"1 meter (12 fields) : {devices - 1} AC (6 fields)",
            "encode_points_per_s": round(n / t_lines), "gzip_points_per_s": round(n / t_gzip),
            "line_bytes_per_point": round(raw / n, 1), "gzip_bytes_per_point_batch_5000": round(wire / n, 1),
            "gzip_bytes_per_point_batch_20": round(sum(len(encode_body(lines[i:i + 20])) for i in range(0, 2000, 20))
                                                   / 2000, 1)}


def bench_cfg(url: str, devices: int) -> Config:
    return Config.model_validate(site(
        gateway="gw-pipe",
        cloud={"mqtt": {"url": "mqtt://127.0.0.1:1"}, "influx": {"url": url, "org": "o", "bucket": "b"}},
        buses=[tcp_bus("b")], rooms=[{"id": f"r{d}", "name": f"{d}年1班"} for d in range(devices)],
        devices=[meter("b", 1), *(ac(f"ac-{d}", "b", 2, index=d, room=f"r{d}") for d in range(1, devices))]))


async def pipeline(url: str, n: int, devices: int, tmp: Path) -> dict[str, Any]:
    """States through the event bus, the sampler (1 ms windows) and the sender, until VM acknowledged all."""
    bus = EventBus()
    t0 = time.time() - 3600
    async with TelemetryWriter(bench_cfg(url, devices), bus, storage_dir=tmp, clock=SystemClock(), flush_s=0.2,
                               sample_s={"meter": 0.001, "ac": 0.001}, heartbeat_s=86_400) as tw:
        start = time.perf_counter()
        for i in range(n):
            d = i % devices
            ts = t0 + i / 1000
            if d == 0:
                st = {"online": True, "ts": iso(ts), "power_w": 50_000.0 + i, "energy_kwh": 1.0, "pf": 0.97,
                      "freq_hz": 60.0, "demand_w": 120_000.0, "voltage_v": [230.0, 230.0, 230.0],
                      "current_a": [70.0, 70.0, 70.0]}
                bus.publish(Message("state", "meter-main", st, ts))
            else:
                st = {"online": True, "ts": iso(ts), "power_on": True, "setpoint_c": 26.0, "room_temp_c": 27.0 + i,
                      "power_w": 1500.0, "fault": None, "mode": "cool", "fan": "auto"}
                bus.publish(Message("state", f"ac-{d}", st, ts))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the ingest task keep up (the bus queue holds 10,000)
        deadline = time.monotonic() + 120
        while tw.stats().sent < n and time.monotonic() < deadline:  # noqa: ASYNC110 (polling a counter)
            await asyncio.sleep(0.01)
        dt = time.perf_counter() - start
        st = tw.stats()
    return {"states": n, "sent": st.sent, "seconds": round(dt, 3), "points_per_s": round(st.sent / dt),
            "requests": st.requests, "gzip_bytes_per_point": round(st.bytes_sent / max(1, st.sent), 1),
            "buffered": st.buffered}


def write_report(vm: Victoria, n: int, devices: int, tmp: Path) -> dict[str, Any]:
    lines = lines_for(n, int(time.time() * 1000) - 7_200_000, devices)
    cfg = bench_cfg(vm.url, 2)
    assert cfg.cloud is not None
    assert cfg.cloud.influx is not None
    url = write_url(cfg.cloud.influx)
    start = time.perf_counter()
    statuses = set()
    for i in range(0, n, 5000):
        statuses.add(post_write(url, encode_body(lines[i:i + 5000]), None).status)
    dt = time.perf_counter() - start
    return {"post_batches_of_5000": {"points": n, "seconds": round(dt, 3), "points_per_s": round(n / dt),
                                     "statuses": sorted(s or 0 for s in statuses)},
            "writer_pipeline": asyncio.run(pipeline(vm.url, n // 2, devices, tmp / "pipe"))}


def buffer_report(n: int, devices: int, tmp: Path, per_commit: int) -> dict[str, Any]:
    """What an outage costs on disk: the writer's persist path (one commit per flush of `per_commit` points)."""
    lines = lines_for(n, int(time.time() * 1000), devices)
    path = tmp / "buf" / "telemetry.db"
    io0 = _io()
    start = time.perf_counter()
    with Outbox(path, max_bytes=4 * 1024**3, min_free_bytes=0) as ob:
        for i in range(0, n, per_commit):
            ob.put_many((f"dev-{j % devices}", line.encode(), "telemetry", "")
                        for j, line in enumerate(lines[i:i + per_commit], start=i))
    dt = time.perf_counter() - start
    io1 = _io()
    size = sum(p.stat().st_size for p in path.parent.iterdir())
    return {"points": n, "points_per_commit": per_commit, "points_per_s": round(n / dt),
            "file_bytes_per_point": round(size / n, 1),
            "wchar_per_point": round((io1["wchar"] - io0["wchar"]) / n, 1)}


def _io() -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split(":") for ln in Path("/proc/self/io").read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=81, help="1 meter + N-1 ACs")
    ap.add_argument("--influx-python", default=None, help="a python that can import influxdb_client")
    ap.add_argument("--quick", action="store_true", help="10,000 points")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.points
    out: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "processor": platform.machine()},
        "import_rss": rss_report(args.influx_python),
        "encode": encode_report(n, args.devices),
    }
    with tempfile.TemporaryDirectory(prefix="telemetry-bench-") as d:
        tmp = Path(d)
        vm = Victoria(tmp / "vm", free_port()).start()
        try:
            out["write_to_victoriametrics"] = write_report(vm, n, args.devices, tmp)
        finally:
            vm.stop()
        out["buffer"] = {"flush_of_10s_at_a_site": buffer_report(n, args.devices, tmp / "a", 20),
                         "outage_backlog_batches_of_1000": buffer_report(n, args.devices, tmp / "b", 1000)}
    print(json.dumps(out, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
