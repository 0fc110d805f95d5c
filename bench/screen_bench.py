"""The energy screen's cost to the daemon: its CPU with no viewer and with 10 live pages (budget: 2 % of one core).

    .venv/bin/python bench/screen_bench.py [--window 60] [--warmup 10] [--rounds 2] [--viewers 10] [--speed 10]

The example school (config/example-school.yaml: 85 ACs, the meter, relay boards, the energy manager),
without its card readers and beacon scanner (their taps would only add noise to the difference), is
served by `campus-edge simulate` (`--speed` times real time, so the figures move); `campus-edge run`
runs it with `screen: {listen: 127.0.0.1:PORT}` (the default `interval_s`, one snapshot a second).
Windows alternate, `--rounds` times: no viewer, then `--viewers` clients holding `/api/stream` open and
reading every frame (as browsers do; they run in this process and are not counted). Per window the
daemon's utime + stime from /proc/PID/stat over the wall time gives its CPU in % of one core. The
viewers' cost is the mean with viewers minus the mean without, in the same run; the frames and bytes
each viewer received show the stream ran. `snapshot_build` times one tick's work (the snapshot built
and encoded once for everyone) in this process, on the states the daemon served at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CLK_TCK, ROOT, document, emit, free_port, run_guarded, start_simulator

from edge.config import load_config
from edge.demo import Child
from edge.http import get_json
from edge.screen import Layout, snapshot

BUDGET_PCT = 2.0


def site_config(tmp: Path, screen_port: int, speed: float) -> Path:
    """The example school on free TCP ports with its ptys and state under `tmp`, readers removed, a screen."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example-school.yaml").read_text(encoding="utf-8"))
    for bus in data["buses"]:
        if bus["type"] == "tcp":
            bus["port"] = free_port()
    data["devices"] = [d for d in data["devices"] if d["kind"] not in ("rfid", "beacon_scanner")]
    data["screen"] = {"listen": f"127.0.0.1:{screen_port}"}
    data.setdefault("simulation", {})["speed"] = speed
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def cpu_s(pid: int) -> float:
    """utime + stime of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Viewer:
    """A page's stream: reads every frame until stopped."""

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.status = 0

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /api/stream HTTP/1.1\r\nHost: screen\r\nAccept: text/event-stream\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            self.status = int(head.split()[1])
            while True:
                chunk = await reader.readuntil(b"\n\n")
                self.bytes += len(chunk)
                if chunk.startswith(b"event: snapshot"):
                    self.frames += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def window(pid: int, seconds: float) -> dict[str, float]:
    wall0, cpu0 = time.monotonic(), cpu_s(pid)
    await asyncio.sleep(seconds)
    wall, cpu = time.monotonic() - wall0, cpu_s(pid) - cpu0
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 3)}


async def measure(pid: int, screen_port: int, args: argparse.Namespace) -> dict[str, Any]:
    idle: list[dict[str, float]] = []
    watched: list[dict[str, Any]] = []
    for r in range(args.rounds):
        print(f"   round {r + 1}: no viewer", file=sys.stderr, flush=True)
        idle.append(await window(pid, args.window))
        print(f"   round {r + 1}: {args.viewers} viewers", file=sys.stderr, flush=True)
        viewers = [Viewer() for _ in range(args.viewers)]
        tasks = [asyncio.create_task(v.run(screen_port), name=f"viewer-{i}") for i, v in enumerate(viewers)]
        await asyncio.sleep(3.0)   # connected, first frames in
        frames0, bytes0 = [v.frames for v in viewers], [v.bytes for v in viewers]
        w: dict[str, Any] = dict(await window(pid, args.window))
        frames = [v.frames - f for v, f in zip(viewers, frames0, strict=True)]
        got = [v.bytes - b for v, b in zip(viewers, bytes0, strict=True)]
        w.update(statuses=sorted({v.status for v in viewers}),
                 frames_per_viewer={"min": min(frames), "max": max(frames)},
                 frames_per_s=round(statistics.mean(frames) / w["wall_s"], 2),
                 bytes_per_viewer_per_s=round(statistics.mean(got) / w["wall_s"]),
                 frame_bytes_mean=round(sum(got) / max(1, sum(frames))))
        watched.append(w)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(2.0)   # the daemon notices they left
    base = statistics.mean(x["cpu_pct"] for x in idle)
    loaded = statistics.mean(x["cpu_pct"] for x in watched)
    return {"no_viewer": idle, "with_viewers": watched, "cpu_pct_no_viewer_mean": round(base, 3),
            "cpu_pct_with_viewers_mean": round(loaded, 3), "viewers_cost_pct_of_core": round(loaded - base, 3),
            "within_budget": loaded - base < BUDGET_PCT}


def build_cost(cfg_path: Path, status: dict[str, Any], n: int = 500) -> dict[str, Any]:
    """One tick's work in this process, on the states and `ems` status the daemon served at the end: the
    snapshot built and encoded once (what every viewer then gets as the same bytes)."""
    cfg = load_config(cfg_path)
    tz = ZoneInfo(cfg.site.timezone)
    layout = Layout.of(cfg)
    t0 = time.perf_counter()
    for _ in range(n):
        body = json.dumps(snapshot(layout, status["devices"], status.get("ems"), time.time(), tz),
                          ensure_ascii=False, separators=(",", ":"))
    per_tick = (time.perf_counter() - t0) / n
    return {"builds": n, "ms_per_tick": round(1000 * per_tick, 3), "bytes": len(body.encode()),
            "pct_of_core_at_1_hz": round(100 * per_tick, 3), "rooms": len(layout.rooms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=60.0, help="seconds per measuring window")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after READY before the first window")
    ap.add_argument("--rounds", type=int, default=2, help="no-viewer / viewers window pairs")
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--speed", type=float, default=10.0, help="the virtual school's simulated seconds per second")
    args = ap.parse_args()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ce-screen-"))
    (tmp / "run").mkdir()
    os.environ["CAMPUS_EDGE_RUN_DIR"] = str(tmp / "run")
    os.environ["CAMPUS_EDGE_STATE_DIR"] = str(tmp / "state")
    screen_port = free_port()
    try:
        cfg = site_config(tmp, screen_port, args.speed)
        sim = start_simulator(cfg, tmp / "simulator.log")
        daemon: Child | None = None
        try:
            daemon = Child("daemon", [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--config",
                                      str(cfg), "--status-port", "0"],
                           {**os.environ, "RUNTIME_DIRECTORY": str(tmp / "run")}, tmp / "daemon.log")
            status_port = int(daemon.wait_ready().rsplit(":", 1)[1])
            time.sleep(args.warmup)
            result = run_guarded(measure(daemon.proc.pid, screen_port, args),
                                 limit_s=args.rounds * (2 * args.window + 10) + 60)
            _code, status = asyncio.run(get_json("127.0.0.1", status_port, "/status"))
        finally:
            if daemon is not None:
                daemon.stop()
            sim.stop()
        cost = build_cost(cfg, status)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    online = sum(1 for s in status["devices"].values() if s.get("online"))
    doc = document("screen_bench", started, budget_pct_of_core=BUDGET_PCT, viewers=args.viewers,
                   window_s=args.window, warmup_s=args.warmup, rounds=args.rounds, simulator_speed=args.speed,
                   devices=len(status["devices"]), devices_online=online, snapshot_build=cost, **result)
    emit("screen_bench", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
