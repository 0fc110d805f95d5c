"""campus-edge vs ThingsBoard IoT Gateway 3.8.5 on the same counting Modbus server, same machine, same run.

Runs the peer harness (`$PEER_DIR/run.sh`, default ../shared/peers/tbgw relative to the repository)
with its TB-gateway modes plus `external`, where the external command writes a campus-edge config
for the harness' server (150 CoolMasterNet units on one unit id + an SDM630) and execs
`campus-edge run`. The harness measures both the same way (server-side request counts, /proc CPU
and RSS of the process tree); a thread here polls our status API during the run and keeps the last
answer, for the daemon's own poll-period statistics (p50/p99 jitter).

    .venv/bin/python bench/peer_compare.py                    # 4 modes x (15 s warm-up + 60 s window)
    .venv/bin/python bench/peer_compare.py --window 20 --warmup 8 --modes per-key,external
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import yaml
from _common import RESULTS, ROOT, ac_fleet, document, emit, free_port, meter, site, tcp_bus

from drivers.modbus.planner import DeviceSpec, plan
from drivers.modbus.profile import load_profile

RSS_TARGET_MB = 60.0
CPU_TARGET_RATIO = 0.5
TB_MODES = ("per-key", "per-unit", "bulk")


# -- the external command's half: write a config from the harness' environment -------------------
def write_config(out: Path, status_port: int, cloud: bool = False) -> None:
    """CONTRACT.md section 2 config for the harness' server (env: MODBUS_PORT, UNITS, ...).

    With `cloud`, the daemon's MQTT link publishes to the harness' broker (MQTT_HOST, MQTT_PORT),
    so that its traffic is counted beside the TB gateway's.
    """
    env = os.environ
    units, ac_unit, meter_unit = int(env["UNITS"]), int(env["AC_UNIT_ID"]), int(env["METER_UNIT_ID"])
    rooms, acs = ac_fleet(units, "school-bus", unit=ac_unit, poll_s=2)
    cfg = site(gateway="gw-bench", school="000000", timezone="Asia/Taipei",
               storage={"path": str(Path(env["WORK_DIR"]) / "campus-edge-state")}, status_port=status_port,
               buses=[tcp_bus("school-bus", int(env["MODBUS_PORT"]), host=env.get("MODBUS_HOST", "127.0.0.1"),
                              timeout_s=1.0)],
               rooms=rooms, devices=[*acs, meter("school-bus", meter_unit, poll_s=1)])
    out.parent.mkdir(parents=True, exist_ok=True)
    if cloud:
        from cloud_sync.keys import generate_keypair

        priv, pub = out.parent / "bench-cloud.pem", out.parent / "bench-cloud.pub"
        if not pub.exists():
            generate_keypair(priv, pub)
        cfg["cloud"] = {"mqtt": {"url": f"mqtt://{env.get('MQTT_HOST', '127.0.0.1')}:{int(env['MQTT_PORT'])}"},
                        "command_keys": [str(pub)]}
    out.write_text(yaml.safe_dump(cfg))


# -- the outer half ---------------------------------------------------------------------------------
class StatusPoller(threading.Thread):
    """GETs /status every `every` s; keeps the last answer (the daemon only lives in `external`)."""

    def __init__(self, port: int, every: float) -> None:
        super().__init__(daemon=True, name="status-poller")
        self.url = f"http://127.0.0.1:{port}/status"
        self.every = every
        self.last: dict[str, Any] | None = None
        self.last_at: float | None = None
        self.first_at: float | None = None
        self.answers = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    body = json.loads(resp.read())
            except (OSError, ValueError):
                continue
            self.last, self.last_at, self.answers = body, time.time(), self.answers + 1
            self.first_at = self.first_at or self.last_at

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


def jitter_summary(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """Per-kind poll-period statistics from GET /status (the engine keeps the last 1024 intervals)."""
    if status is None:
        return None
    out: dict[str, Any] = {}
    for bus_id, bus in status["gateway"]["buses"].items():
        groups: dict[str, list[dict[str, Any]]] = {"ac": [], "meter": []}
        for dev_id, dev in bus["devices"].items():
            groups["meter" if dev_id.startswith("meter") else "ac"].append(dev["poll_period_s"])
        per = {}
        for kind, all_stats in groups.items():
            stats = [s for s in all_stats if s.get("n")]
            if not stats:
                continue
            per[kind] = {
                "devices": len(stats),
                "intervals_per_device_min": min(s["n"] for s in stats),
                "p50_s_median_over_devices": sorted(s["p50"] for s in stats)[len(stats) // 2],
                "p99_s_max_over_devices": max(s["p99"] for s in stats),
                "p99_s_median_over_devices": sorted(s["p99"] for s in stats)[len(stats) // 2],
                "max_s_over_devices": max(s["max"] for s in stats),
            }
        out[bus_id] = {"requests_per_cycle_planned": bus["requests_per_cycle"], "requests_total": bus["requests"],
                       "errors": bus["errors"], "max_queue": bus["max_queue"], "uptime_s": round(bus["uptime_s"], 1),
                       "poll_period": per,
                       "devices_online": sum(1 for d in bus["devices"].values() if d["online"]),
                       "devices": len(bus["devices"])}
    return out


def planned_minimum(units: int) -> dict[str, Any]:
    """Lower bound on AC requests per cycle with typed values (no unit's polled words split), from the
    profile alone, and what our planner produces for the same layout."""
    prof = load_profile("coolmasternet")
    polled = [p for p in prof.points if p.poll]
    block = prof.blocks[polled[0].block]
    first = min(p.offset for p in polled)
    span = max(p.offset + p.words for p in polled) - first
    cap = prof.limits.max_read_registers
    per_request = (cap - span) // block.stride + 1  # whole units' polled words that fit in one read
    specs = [DeviceSpec(f"ac-{va:03d}", prof, 1, va, 0, 2.0) for va in range(1, units + 1)]
    ours = plan(specs)
    return {"cap_registers": cap, "unit_stride": block.stride, "polled_span_per_unit": span,
            "units_per_request_max": per_request, "min_requests_per_cycle": math.ceil(units / per_request),
            "ours_planned": len(ours)}


def row(run: dict[str, Any]) -> dict[str, Any]:
    if "error" in run:
        return {"mode": run["mode"], "error": run["error"]}
    mb = run["modbus"]["by_unit_fc"]
    ac, meter = mb.get("unit1_fc3", {}), mb.get("unit2_fc4", {})
    gp = run["gateway_process"]
    return {
        "mode": run["mode"],
        "modbus_requests_per_s_total": run["modbus"]["total_requests_per_s"],
        "ac_requests_per_s": ac.get("requests_per_s"),
        "ac_requests_per_cycle": ac.get("requests_per_poll_cycle"),
        "ac_registers_per_request": ac.get("registers_per_request"),
        "ac_reads_per_shape_per_cycle_min_max": [ac.get("min_reads_per_shape_per_cycle"),
                                                 ac.get("max_reads_per_shape_per_cycle")],
        "meter_requests_per_s": meter.get("requests_per_s"),
        "meter_requests_per_cycle": meter.get("requests_per_poll_cycle"),
        "meter_registers_per_request": meter.get("registers_per_request"),
        "exceptions": sum(v.get("exceptions", 0) for v in mb.values()),
        "cpu_pct_one_core": gp["avg_cpu_pct_one_core"],
        "peak_rss_mib": gp["peak_rss_mib"],
        "median_rss_mib_window": gp["median_rss_mib_window"],
        "threads_max": gp["max_threads"],
        "mqtt_messages_per_s": run["mqtt"]["messages_per_s"],
        "mqtt_payload_bytes_per_s": run["mqtt"]["payload_bytes_per_s"],
        "server_cpu_pct_one_core": run["modbus"]["server_cpu_pct_one_core"],
        "alive_at_end": run["gateway_alive_at_end"],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def compare(rows: list[dict[str, Any]], minimum: dict[str, Any]) -> dict[str, Any]:
    tb = [r for r in rows if r["mode"] in TB_MODES and "error" not in r]
    ours = next((r for r in rows if r["mode"] == "external" and "error" not in r), None)
    if not tb or ours is None:
        return {"error": "need at least one TB-gateway mode and the external run"}
    out: dict[str, Any] = {}
    for key, typed_only in (("ac_requests_per_cycle", False), ("modbus_requests_per_s_total", False),
                            ("cpu_pct_one_core", False), ("peak_rss_mib", False)):
        best = min(tb, key=lambda r, k=key: r[k])  # type: ignore[misc]
        out[key] = {"ours": ours[key], "tb_best": best[key], "tb_best_mode": best["mode"],
                    "ratio_ours_over_tb_best": ratio(ours[key], best[key]), "typed_only": typed_only}
    typed = [r for r in tb if r["mode"] == "per-key"]
    if typed:
        out["ac_requests_per_cycle_vs_tb_typed_per_key"] = ratio(ours["ac_requests_per_cycle"],
                                                                 typed[0]["ac_requests_per_cycle"])
    cpu_best = out["cpu_pct_one_core"]["tb_best"]
    out["targets"] = {
        "ac_requests_per_cycle_at_minimum": {
            "ours": ours["ac_requests_per_cycle"], "minimum": minimum["min_requests_per_cycle"],
            # the harness counts whole requests over the window: +-1 read per shape at the edges
            "pass": abs(ours["ac_requests_per_cycle"] - minimum["min_requests_per_cycle"])
            <= 0.05 * minimum["min_requests_per_cycle"] + 0.5},
        "cpu_at_most_half_tb_best": {"ours": ours["cpu_pct_one_core"], "limit": round(CPU_TARGET_RATIO * cpu_best, 2),
                                     "pass": ours["cpu_pct_one_core"] <= CPU_TARGET_RATIO * cpu_best},
        "rss_at_most_60_mb": {"ours_mib": ours["peak_rss_mib"],
                              "ours_mb": round(ours["peak_rss_mib"] * 2**20 / 1e6, 1),
                              "limit_mb": RSS_TARGET_MB,
                              "pass": ours["peak_rss_mib"] * 2**20 / 1e6 <= RSS_TARGET_MB},
    }
    return out


def peer_dir() -> Path:
    return Path(os.environ.get("PEER_DIR", str(ROOT / ".." / "shared" / "peers" / "tbgw"))).resolve()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=150)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=15)
    ap.add_argument("--modes", default="per-key,per-unit,bulk,external")
    ap.add_argument("--poll-every", type=float, default=3.0, help="status API poll interval (s)")
    ap.add_argument("--keep", action="store_true", help="keep the harness' temp dirs (-k)")
    ap.add_argument("--log-level", default="INFO", help="campus-edge --log-level in the external run")
    ap.add_argument("--write-config", metavar="FILE", help=argparse.SUPPRESS)  # the external command's half
    ap.add_argument("--status-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cloud", action="store_true",
                    help="give campus-edge a cloud section on the harness' broker (its MQTT traffic is counted)")
    args = ap.parse_args()
    if args.write_config:
        write_config(Path(args.write_config), args.status_port, args.cloud)
        return 0

    started = time.time()
    peer = peer_dir()
    run_sh = peer / "run.sh"
    if not run_sh.exists():
        print(f"peer_compare: {run_sh} not found (set PEER_DIR)", file=sys.stderr)
        return 2
    port = free_port()
    exe = ROOT / ".venv" / "bin" / "campus-edge"
    py = Path(sys.executable)
    cfg = '"$WORK_DIR/campus-edge.yaml"'
    cloud_flag = " --cloud" if args.cloud else ""
    external = (f"{shlex.quote(str(py))} {shlex.quote(str(Path(__file__).resolve()))} --write-config {cfg} "
                f"--status-port {port}{cloud_flag} && exec {shlex.quote(str(exe))} --log-level {args.log_level} "
                f"run --config {cfg} --status-port {port}")
    peer_out = RESULTS / "peer"
    peer_out.mkdir(parents=True, exist_ok=True)
    argv = [str(run_sh), "-n", str(args.units), "-w", str(args.window), "-u", str(args.warmup), "-m", args.modes,
            *(["-k"] if args.keep else []), "--", "--external-cmd", external]
    poller = StatusPoller(port, args.poll_every)
    poller.start()
    print(f"peer_compare: {' '.join(shlex.quote(a) for a in argv)}", file=sys.stderr)
    proc = subprocess.run(argv, cwd=peer_out, env=dict(os.environ, RESULTS_DIR=str(peer_out)),
                          stdout=subprocess.PIPE, text=True, check=False)
    poller.stop()
    try:
        peer_doc = json.loads(proc.stdout)
    except ValueError:
        print(f"peer_compare: the harness printed no JSON (rc={proc.returncode})", file=sys.stderr)
        return 1
    rows = [row(r) for r in peer_doc["runs"]]
    minimum = planned_minimum(args.units)
    doc = document(
        "peer_compare", started,
        harness={"run_sh": str(run_sh), "argv": argv, "rc": proc.returncode, "versions": peer_doc.get("versions"),
                 "params": peer_doc.get("params"), "harness_machine": peer_doc.get("machine")},
        notes=[("external = campus-edge (this repository), run as `campus-edge run` with the config the external "
                "command writes; " + (
                    "with a cloud section on the harness' broker: it publishes retained STATE on change (deadbands) "
                    "and a refresh every 5 min, while the TB gateway publishes every poll; the harness' server "
                    "serves constant values, so after the first states campus-edge has almost nothing new to say"
                    if args.cloud else
                    "no cloud section, so campus-edge published nothing to MQTT in this mode while the TB gateway "
                    "published every poll (run with --cloud to count its MQTT link)")),
               "per-unit and bulk read raw registers (keys hr_<addr>, setpoint/room temperature not scaled); "
               "only per-key gives typed, scaled values like campus-edge",
               "CPU % is of one core over the window, of the whole process tree; 2 shared vCPUs: expect a few "
               "tenths of a percent of noise between runs",
               "campus-edge polls the SDM630 points its profile declares (more than the harness' 3 keys), "
               "merged into requests of at most 80 even-aligned registers"],
        cloud=args.cloud,
        ac_requests_per_cycle_minimum=minimum,
        table=rows,
        comparison=compare(rows, minimum),
        campus_edge_status={"answers": poller.answers, "last_answer_at": poller.last_at,
                            "first_answer_at": poller.first_at,
                            "buses": jitter_summary(poller.last)},
        raw_peer_results=peer_doc,
    )
    emit("peer_compare", doc)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
