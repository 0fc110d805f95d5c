"""Shared helpers of the gateway benchmarks: machine info, the result document, ports, /proc sampling."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.demo import Child
from simulator.local import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' site builders and broker
from helpers.sites import ac_fleet, meter, rtu_bus, site, tcp_bus

__all__ = ["ac_fleet", "free_port", "meter", "rtu_bus", "site", "start_simulator", "tcp_bus"]


def start_simulator(cfg_path: Path, log_path: Path, *extra: str) -> Child:
    """`campus-edge simulate` in its own session, once it printed READY; end it with `.stop()`."""
    sim = Child("simulator", [sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "simulate", "--config",
                              str(cfg_path), *extra], dict(os.environ), log_path)
    try:
        sim.wait_ready()
    except RuntimeError:
        sim.stop()
        raise
    return sim

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

LOAD_AT_START = [round(x, 2) for x in os.getloadavg()]  # the 1/5/15-min load when the benchmark began

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, Python and the repository's commit."""
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_mib = int(fh.readline().split()[1]) // 1024
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu_model": model, "cores": os.cpu_count(), "mem_total_mib": mem_mib, "kernel": platform.release(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "git_commit": commit}


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])


def document(name: str, started: float, **body: Any) -> dict[str, Any]:
    """The common head of every benchmark's JSON document."""
    return {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "duration_s": round(time.time() - started, 1), "command": command_line(),
            "machine": {**machine_info(), "load_avg_at_start": LOAD_AT_START,
                        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}, **body}


def emit(name: str, doc: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Print the document and write it to bench/results/NAME-<stamp>.json (returns the path)."""
    out = out_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path.write_text(text + "\n")
    print(text)
    print(f"written {path}", file=sys.stderr)
    return path


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max, mean of durations given in seconds, in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [1000 * s for s in seconds]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 2)

    return {"n": len(ms), "p50_ms": r(percentile(ms, 50)), "p90_ms": r(percentile(ms, 90)),
            "p99_ms": r(percentile(ms, 99)), "max_ms": r(max(ms)), "mean_ms": r(sum(ms) / len(ms))}


def self_cpu_s() -> float:
    """CPU seconds (user + system) of this process so far."""
    t = os.times()
    return t.user + t.system


def self_peak_rss_mib() -> float:
    """Peak RSS (VmHWM) of this process."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def runnable_example(tmp: Path, source: Path | None = None) -> Path:
    """A copy of config/example-school.yaml that runs beside anything else: free TCP ports, and the
    RTU ptys and the state directory under `tmp` (via CAMPUS_EDGE_RUN_DIR / CAMPUS_EDGE_STATE_DIR)."""
    import re

    text = (source or ROOT / "config" / "example-school.yaml").read_text()
    text = re.sub(r"(type: tcp, host: 127\.0\.0\.1, port: )\d+", lambda m: f"{m.group(1)}{free_port()}", text)
    os.environ["CAMPUS_EDGE_RUN_DIR"] = str(tmp / "run")
    os.environ["CAMPUS_EDGE_STATE_DIR"] = str(tmp / "state")
    out = tmp / "example-school.yaml"
    out.write_text(text)
    return out


async def _watchdog(limit_s: float, main: Any) -> None:
    import asyncio

    await asyncio.sleep(limit_s)
    print(f"benchmark still running after {limit_s:.0f} s; task stacks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            print(f"-- {task.get_name()}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
    main.cancel()


def run_guarded(coro: Any, limit_s: float) -> Any:
    """asyncio.run(coro), but a benchmark never hangs: after `limit_s` every task's stack is printed
    and the run is cancelled (CancelledError)."""
    import asyncio

    async def guarded() -> Any:
        dog = asyncio.get_running_loop().create_task(_watchdog(limit_s, asyncio.current_task()), name="watchdog")
        try:
            return await coro
        finally:
            dog.cancel()

    return asyncio.run(guarded())
