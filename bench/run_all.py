"""Run every gateway benchmark one after another (`make bench`); each writes its JSON under bench/results/.

One at a time on purpose: on a 2-core machine two benchmarks at once skew each other's CPU figures.

    .venv/bin/python bench/run_all.py            # full: the peer comparison alone takes ~6 min
    .venv/bin/python bench/run_all.py --quick    # shorter windows (figures noisier)
    .venv/bin/python bench/run_all.py --only requests_per_cycle,wire_rate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES: dict[str, tuple[list[str], list[str]]] = {  # name: (full args, --quick args)
    "requests_per_cycle": ([], ["--window", "6"]),
    "wire_rate": ([], ["--window", "8"]),
    "write_latency": ([], ["--writes", "60"]),
    "peer_compare": ([], ["--window", "20", "--warmup", "10"]),
    "outbox_bench": ([], ["--quick"]),
    "command_rtt": ([], ["--commands", "60"]),
    "mqtt_traffic": ([], ["--window", "20", "--warmup", "8"]),
    "recovery": ([], ["--rounds", "2"]),
    "outbox_cap": ([], ["--events", "20000"]),
    "rfid_bench": ([], ["--taps", "60"]),
    "beacon_bench": ([], ["--seconds", "10", "--burst", "50000"]),
    "rss_readers": ([], ["--window", "10", "--warmup", "5"]),
    "ems_bench": ([], ["--scenarios", "hot-day-20,hard-40"]),
    "screen_bench": ([], ["--window", "15", "--rounds", "1"]),
}  # telemetry_bench needs a python with influxdb-client (--influx-python): run it by hand


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma list of " + ", ".join(BENCHES))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)}")
    summary = {}
    for name in names:
        full, quick = BENCHES[name]
        argv = [sys.executable, str(HERE / f"{name}.py"), *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        rc = subprocess.run(argv, stdout=subprocess.DEVNULL if name != "outbox_bench" else subprocess.PIPE,
                            check=False, text=True)
        summary[name] = {"rc": rc.returncode, "seconds": round(time.monotonic() - t0, 1)}
        if name == "outbox_bench" and rc.stdout:  # it prints but does not write a file
            out = HERE / "results" / f"outbox_bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(rc.stdout)
            summary[name]["written"] = str(out)
    print(json.dumps(summary, indent=2))
    return 0 if all(v["rc"] == 0 for v in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
