"""Time from SIGKILL to control again, with the example school (88 Modbus devices on TCP and RTU
ptys, three card readers and a beacon scanner).

Each round: the daemon runs (systemd's notify protocol over a datagram socket of ours, as under
`Type=notify`), is SIGKILLed, and is started again at once (what `Restart=on-failure` does, minus
RestartSec). Measured from the kill: `READY=1` (drivers and arbiter up), the first verified write
(a local `campus-edge set` through the control socket answered ok, polled every 50 ms), and every
device online again. The state, outbox and journal survive the kill (SIGKILL-safe by design).

    .venv/bin/python bench/recovery.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import document, emit, run_guarded, runnable_example, start_simulator

from edge.config import load_config
from edge.http import get_json

AC = "ac-101a"


async def _notify_lines(sock: socket.socket, want: str, within: float) -> float:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        while True:
            data = await loop.sock_recv(sock, 4096)
            if want in data.decode().split("\n"):
                return time.monotonic()


async def _start(cfg: Path, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "--log-level", "WARNING", "run", "--config", str(cfg),
            "--status-port", "0", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=err)


async def _first_write(sock_path: Path, value: int, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            code, body = await get_json("localhost", 0, f"/devices/{AC}",
                                        body={"set": {"setpoint_c": value}, "hold_s": 60}, wait_s=5, unix=sock_path)
            if code == 200 and body.get("status") == "ok" and "deferred_until" not in body:
                return time.monotonic()
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError("no verified write")


async def run(rounds: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ce-rec-"))
    cfg_path = runnable_example(tmp)
    cfg = load_config(cfg_path)
    sock_path = tmp / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.setblocking(False)
    run_dir = tmp / "rt"
    run_dir.mkdir()
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "RUNTIME_DIRECTORY": str(run_dir)}
    control = run_dir / "control.sock"
    sim = start_simulator(cfg_path, tmp / "simulator.log")
    rows: list[dict[str, float]] = []
    try:
        proc = await _start(cfg_path, env, tmp / "daemon.log")
        await _notify_lines(notify, "READY=1", 60)
        await _first_write(control, 27, 60)
        for i in range(rounds):
            await asyncio.sleep(3.0)          # running, polling, state flushed or not: a kill at any moment
            t0 = time.monotonic()
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await _start(cfg_path, env, tmp / "daemon.log")
            ready = await _notify_lines(notify, "READY=1", 60)
            write = await _first_write(control, 26 + i % 3, 60)
            t_online = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = await get_json("localhost", 0, "/status", unix=control)
                devices = st[1]["devices"]
                if all(s.get("online") for s in devices.values()):
                    t_online = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            rows.append({"ready_s": round(ready - t0, 3), "first_verified_write_s": round(write - t0, 3),
                         "all_devices_online_s": None if t_online is None else round(t_online - t0, 3)})
            print(f"round {i + 1}: {rows[-1]}", file=sys.stderr)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
    finally:
        sim.stop()
        notify.close()

    def stat(key: str) -> dict[str, float | None]:
        vals = [r[key] for r in rows if r[key] is not None]
        return {"median": round(statistics.median(vals), 3) if vals else None,
                "max": round(max(vals), 3) if vals else None}

    return {"school": {"devices": len(cfg.devices), "buses": len(cfg.buses)}, "rounds": rows,
            "ready_s": stat("ready_s"), "first_verified_write_s": stat("first_verified_write_s"),
            "all_devices_online_s": stat("all_devices_online_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    started = time.time()
    body = run_guarded(run(args.rounds), 60 + 90 * args.rounds)
    emit("recovery", document("recovery", started, **body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
