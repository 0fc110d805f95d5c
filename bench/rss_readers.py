"""The daemon's memory with the example school's RFID readers and beacon scanner at work, against the same daemon
without them, in one run (budget: 60 MB).

    .venv/bin/python bench/rss_readers.py [--window 30] [--warmup 10] [--speed 60] [--cloud]

Variants of config/example-school.yaml, run one after another, each against its own `campus-edge
simulate` (the simulated morning from 07:19 at `--speed` times real time, so pupils tap in at the
gate, the door reader is tapped every 10 simulated minutes from 07:52 and the pupils' beacon tags
advertise during the window):

- `none`: the readers and the scanner removed: no serial libraries, no beacon driver, no access
  service (the daemon imports them only where a site has readers or scanners);
- `readers+dev_scanner`: three readers on socat ptys, tapping, and the scanner on the development
  backend (`unixgram://`, fed by the simulator): bleak is never imported;
- `readers+adapter_null`: the same readers; the scanner with `adapter: null` loads bleak, which finds
  no Bluetooth on a machine without it and says so once (on a Pi with an adapter it would scan).

With `--cloud` each variant also has a cloud link to a private mosquitto (the events go through the
outbox and MQTT). Per variant: the daemon's VmRSS sampled every 0.25 s over the window after the
warm-up (median, max) and its VmHWM at the end, plus the daemon's own counters from GET /status
(RFID frames and taps, advertisements, presence arrivals) showing the readers were at work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, document, emit, free_port, start_simulator

from edge.demo import Child, school_morning
from edge.http import get_json
from simulator.local import Broker

BUDGET_MB = 60.0
SAMPLE_S = 0.25
VARIANTS = ("none", "readers+dev_scanner", "readers+adapter_null")


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example-school.yaml").read_text(encoding="utf-8"))
    return data


def site_config(variant: str, tmp: Path, start: str, broker_port: int | None) -> Path:
    """The example school for `variant`, on a free TCP port, its ptys and state under `tmp`."""
    data = example()
    for bus in data["buses"]:
        if bus["type"] == "tcp":
            bus["port"] = free_port()
    if variant == "none":
        data["devices"] = [d for d in data["devices"] if d["kind"] not in ("rfid", "beacon_scanner")]
    elif variant == "readers+adapter_null":
        for d in data["devices"]:
            if d["kind"] == "beacon_scanner":
                d["adapter"] = None
    data["simulation"]["start"] = start
    if broker_port is not None:
        data["cloud"] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"}}
    path = tmp / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def proc_kib(pid: int, *fields: str) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name = line.split(":", 1)[0]
            if name in fields:
                out[name] = int(line.split()[1])
    return out


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


def mb(kib: float) -> float:
    return round(kib * 1024 / 1e6, 1)


@contextlib.contextmanager
def children(*started: Child) -> Iterator[None]:
    try:
        yield
    finally:
        for c in reversed(started):
            c.stop()


def run_variant(variant: str, tmp: Path, start: str, args: argparse.Namespace) -> dict[str, Any]:
    work = tmp / variant.replace("+", "_")
    (work / "run").mkdir(parents=True)
    os.environ["CAMPUS_EDGE_RUN_DIR"] = str(work / "run")
    os.environ["CAMPUS_EDGE_STATE_DIR"] = str(work / "state")
    broker = Broker.start(work / "broker") if args.cloud else None
    try:
        cfg = site_config(variant, work, start, broker.port if broker else None)
        sim = start_simulator(cfg, work / "simulator.log", "--speed", str(args.speed))
        env = {**os.environ, "RUNTIME_DIRECTORY": str(work / "run")}
        daemon = Child("daemon", [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--config",
                                  str(cfg), "--status-port", "0"], env, work / "daemon.log")
        with children(sim, daemon):
            port = int(daemon.wait_ready().rsplit(":", 1)[1])
            pid = daemon.proc.pid
            time.sleep(args.warmup)
            samples: list[int] = []
            end = time.monotonic() + args.window
            while time.monotonic() < end:
                samples.append(proc_kib(pid, "VmRSS")["VmRSS"])
                time.sleep(SAMPLE_S)
            mem = proc_kib(pid, "VmRSS", "VmHWM")
            _code, status = asyncio.run(get_json("127.0.0.1", port, "/status"))
            imported = bleak_loaded(pid)
    finally:
        if broker is not None:
            broker.stop()
    drivers = status.get("gateway", {}).get("drivers", {})
    rfid = drivers.get("rfid", {})
    scanners = drivers.get("beacon", {}).get("scanners", {})
    online = sum(1 for s in status["devices"].values() if s.get("online"))
    return {
        "variant": variant, "devices": len(status["devices"]), "devices_online": online,
        "rss_mib": {"median": mib(statistics.median(samples)), "max": mib(max(samples)), "samples": len(samples)},
        "hwm_mib": mib(mem["VmHWM"]), "hwm_mb": mb(mem["VmHWM"]), "rss_end_mib": mib(mem["VmRSS"]),
        "within_budget": mb(mem["VmHWM"]) <= BUDGET_MB, "bleak_loaded": imported,
        "rfid": {"frames": rfid.get("frames"), "taps": rfid.get("taps"), "drops": rfid.get("drops")} if rfid else None,
        "beacon": {sid: {k: sc.get(k) for k in ("open", "last_error", "advertisements", "ibeacons", "arrivals")}
                   for sid, sc in scanners.items()} or None,
        "access": status.get("access"),
    }


def bleak_loaded(pid: int) -> bool:
    """Whether the daemon has mapped bleak's or dbus-fast's files (what adapter null costs)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "dbus_fast" in maps or "/bleak/" in maps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=30.0, help="seconds of RSS sampling per variant")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after READY before sampling")
    ap.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    ap.add_argument("--cloud", action="store_true", help="each daemon with a cloud link to a private mosquitto")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="ce-rss-"))
    start = school_morning(ZoneInfo(example()["site"]["timezone"]), time.time()).replace(minute=19).isoformat()
    rows = []
    try:
        for variant in args.variants.split(","):
            print(f"== {variant}", file=sys.stderr, flush=True)
            rows.append(run_variant(variant, tmp, start, args))
            print(f"   {rows[-1]['hwm_mib']} MiB peak, {rows[-1]['rss_mib']}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((r for r in rows if r["variant"] == "none"), None)
    extra = {r["variant"]: round(r["hwm_mib"] - base["hwm_mib"], 1) for r in rows if base and r is not base}
    doc = document("rss_readers", started, budget_mb=BUDGET_MB, cloud=args.cloud, speed=args.speed,
                   window_s=args.window, warmup_s=args.warmup, simulated_start=start,
                   variants=rows, hwm_over_none_mib=extra)
    emit("rss_readers" + ("-cloud" if args.cloud else ""), doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
