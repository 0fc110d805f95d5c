"""Local write latency over Modbus TCP, write -> verified read-back, while 150 ACs are polled every 2 s.

The virtual school (`campus-edge simulate`, its own process) serves 150 CoolMasterNet units on one
unit id over TCP on 127.0.0.1; the daemon (`edge.daemon.Daemon`) runs in this process and polls
them. Then, one write at a time to a random unit, a setpoint change (26 <-> 27 °C, so every write
really changes something) is timed through three paths:

- `engine`:  ModbusEngine.write (FC06 + read-back until verified), no arbiter;
- `arbiter`: Daemon.control.ask(... Source.LOCAL): the control entry -> arbiter (persisted) -> engine -> verified;
- `http`:    POST /devices/ID {"set": {"setpoint_c": ...}} on the local control socket (client in the same loop).

Each path returns only after the value was read back from the device. A random pause of 0-50 ms
between writes spreads them over the poll cycle.

    .venv/bin/python bench/write_latency.py [--writes 200] [--paths engine,arbiter,http]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from _common import (
    ac_fleet,
    document,
    emit,
    free_port,
    run_guarded,
    self_cpu_s,
    self_peak_rss_mib,
    site,
    start_simulator,
    summary_ms,
    tcp_bus,
)

from drivers.modbus.driver import ModbusDriver
from edge.config import load_config
from edge.core.arbiter import Source
from edge.core.control import Ask
from edge.daemon import Daemon
from edge.http import get_json

UNITS = 150
AC_POLL_S = 2.0


def write_config(path: Path, port: int) -> None:
    rooms, acs = ac_fleet(UNITS, "ac-bus", poll_s=AC_POLL_S)
    path.write_text(yaml.safe_dump(site(
        path.parent, gateway="gw-bench", school="000000", timezone="Asia/Taipei",
        control={"socket": str(path.parent / "control.sock")},
        buses=[tcp_bus("ac-bus", port, timeout_s=1.0)], rooms=rooms, devices=acs)))


def poll_p99(d: Daemon) -> dict[str, Any]:
    stats = d.gateway_info()["buses"]["ac-bus"]["devices"].values()
    p = [s["poll_period_s"] for s in stats if s["poll_period_s"].get("n")]
    return {"p50_s_median": sorted(x["p50"] for x in p)[len(p) // 2], "p99_s_max": max(x["p99"] for x in p),
            "max_s": max(x["max"] for x in p)} if p else {}


async def run(cfg_path: Path, writes: int, paths: list[str], seed: int) -> dict[str, Any]:
    cfg = load_config(cfg_path)
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    async with Daemon(cfg, status_port=0) as d:
        ids = [f"ac-{va:03d}" for va in range(1, UNITS + 1)]
        t_start = time.monotonic()
        while not all(d.states.get(i, {}).get("online") for i in ids):
            if time.monotonic() - t_start > 30:
                raise RuntimeError("the simulated units did not all come online within 30 s")
            await asyncio.sleep(0.1)
        out["all_online_after_s"] = round(time.monotonic() - t_start, 2)
        await asyncio.sleep(AC_POLL_S)  # one more full cycle before timing
        driver = d.drivers[0]
        assert isinstance(driver, ModbusDriver)
        engine = driver.engine
        bus = engine.buses[0]

        async def one(path: str, dev: str, value: float) -> tuple[bool, str]:
            if path == "engine":
                got = await engine.write(dev, {"setpoint_c": value})
                return abs(got["setpoint_c"] - value) < 0.05, "ok"
            if path == "arbiter":
                res = await d.control.ask(Ask(dev, {"setpoint_c": value}, Source.LOCAL, "local:bench"))
                return res.ok and res.overridden_by is None, res.code
            code, body = await get_json("localhost", 0, f"/devices/{dev}", body={"set": {"setpoint_c": value}},
                                        wait_s=15, unix=d.cfg.control.socket)
            return code == 200 and body.get("status") == "ok", str(body.get("code"))

        for path in paths:
            lat: list[float] = []
            failures: dict[str, int] = {}
            w0, c0, t0 = bus.stats()["writes"], self_cpu_s(), time.monotonic()
            for _ in range(writes):
                dev = rng.choice(ids)
                current = d.states[dev].get("setpoint_c")
                value = 27.0 if current == 26.0 else 26.0
                s = time.perf_counter()
                ok, code = await one(path, dev, value)
                lat.append(time.perf_counter() - s)
                if not ok:
                    failures[code] = failures.get(code, 0) + 1
                await asyncio.sleep(rng.uniform(0, 0.05))
            elapsed = time.monotonic() - t0
            stats = bus.stats()
            out[path] = {**summary_ms(lat), "failures": failures, "engine_writes": stats["writes"] - w0,
                         "verify_failures_total": stats["verify_failures"], "seconds": round(elapsed, 2),
                         "process_cpu_pct_one_core": round(100 * (self_cpu_s() - c0) / elapsed, 1)}
        out["poll_period_during_run"] = poll_p99(d)
        out["bus_errors"] = bus.stats()["errors"]
    out["process_peak_rss_mib"] = self_peak_rss_mib()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=200, help="writes per path")
    ap.add_argument("--paths", default="engine,arbiter,http")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    started = time.time()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-write-") as tmp:
        cfg_path = Path(tmp) / "write.yaml"
        write_config(cfg_path, free_port())
        sim = start_simulator(cfg_path, Path(tmp) / "simulator.log")
        try:
            result = run_guarded(run(cfg_path, args.writes, paths, args.seed), 120 + 3 * args.writes)
        finally:
            sim.stop()
    doc = document("write_latency", started, setup={
        "units": UNITS, "profile": "coolmasternet", "ac_poll_s": AC_POLL_S, "transport": "Modbus TCP, 127.0.0.1",
        "simulator": "campus-edge simulate (separate process)", "daemon": "in-process", "writes_per_path": args.writes,
        "pause_between_writes_s": [0, 0.05]}, results=result,
        notes=["latency = from the call until the value was read back from the device (the engine's verify)",
               "the http client shares the daemon's event loop and process; its figure includes the request's "
               "own parsing on both sides"])
    emit("write_latency", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
