"""`campus-edge demo`: the virtual school, the daemon and a live status view; Ctrl-C stops it all.

Each part is its own process (as in production), started in its own session and stopped by its
handle, so nothing outlives the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from edge.config import load_config
from edge.core.config import Config
from edge.http import get_json
from edge.view import render_status
from simulator.local import Broker

READY_TIMEOUT_S = 30.0
TEACHER = ("T123", "101", "ac-101a")  # the teacher, her classroom and its AC in the example school


def example_config() -> Path:
    """The example school shipped with the package (source tree or installed data files)."""
    for cand in (Path(__file__).resolve().parents[1] / "config" / "example-school.yaml",
                 Path(sys.prefix) / "share" / "campus-edge" / "example-school.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("example-school.yaml not found")


class Child:
    """A child process in its own session; stopped by handle (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("w", encoding="utf-8")
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self._fh, text=True,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY"):
                return line.strip()
        raise RuntimeError(f"{self.name} did not start; see {self.log}:\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._fh.close()


def _site_with_cloud(cfg_path: Path, workdir: Path, broker_port: int) -> tuple[Path, Path]:
    """The demo config: the example school plus a cloud link to the private broker and a fresh key."""
    from cloud_sync.keys import generate_keypair

    priv, pub = workdir / "keys" / "cloud-ed25519.pem", workdir / "keys" / "cloud-ed25519.pub"
    pub.parent.mkdir()
    generate_keypair(priv, pub)
    data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    data["cloud"] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}"}, "command_keys": [str(pub)]}
    data["profile_dirs"] = [str((cfg_path.parent / p).resolve()) for p in data.get("profile_dirs", [])]
    site = workdir / "site.yaml"
    site.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return site, priv


def _teacher_switches_ac_on(site: Path, key: Path, env: dict[str, str]) -> str:
    """What the app does when a teacher taps "AC on": a signed command through the broker."""
    teacher, room, ac = TEACHER
    argv = [sys.executable, "-m", "edge.cli", "ctl", "ac", ac, "--on", "--setpoint", "26", "--as",
            f"teacher:{teacher}", "--rooms", room, "--key", str(key), "--config", str(site)]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
        return (f"app: teacher {teacher} switched {ac} (room {room}) on at 26 °C -> "
                f"{result.get('status')} {result.get('code')}")
    except (ValueError, IndexError):
        return f"app: teacher command failed: {out.stderr.strip()[-200:]}"


def run_demo(config: str | None, speed: float | None = None, duration_s: float | None = None) -> int:
    cfg_path = Path(config) if config else example_config()
    workdir = Path(tempfile.mkdtemp(prefix="campus-edge-demo-"))
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(workdir / "run"), "CAMPUS_EDGE_STATE_DIR": str(workdir / "state")}
    (workdir / "run").mkdir()
    os.environ.update({k: env[k] for k in ("CAMPUS_EDGE_RUN_DIR", "CAMPUS_EDGE_STATE_DIR")})
    exe = [sys.executable, "-m", "edge.cli"]
    children: list[Child] = []
    broker: Broker | None = None
    try:
        broker = Broker.start(workdir / "broker")
        broker_port = broker.port
        site, key = _site_with_cloud(cfg_path, workdir, broker_port)
        cfg = load_config(site)
        sim_args = ["simulate", "--config", str(site)] + (["--speed", str(speed)] if speed else [])
        sim = Child("simulator", [*exe, *sim_args], env, workdir / "simulator.log")
        children.append(sim)
        sim.wait_ready()
        daemon = Child("daemon", [*exe, "run", "--config", str(site), "--status-port", "0"], env,
                       workdir / "daemon.log")
        children.append(daemon)
        port = int(daemon.wait_ready().rsplit(":", 1)[1])
        print(f"demo running: logs in {workdir}; broker 127.0.0.1:{broker_port}; status API 127.0.0.1:{port}",
              flush=True)
        _view(cfg, port, duration_s, lambda: _teacher_switches_ac_on(site, key, env))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for c in reversed(children):
            c.stop()
        if broker is not None:
            broker.stop(signal.SIGTERM)
        print("\ndemo stopped", flush=True)
        if not os.environ.get("CAMPUS_EDGE_KEEP_DEMO"):
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _view(cfg: Config, port: int, duration_s: float | None, app_action: Callable[[], str]) -> None:
    start = time.monotonic()
    clear = sys.stdout.isatty()
    note = "app: waiting for the devices to come online..."
    acted = False
    while duration_s is None or time.monotonic() - start < duration_s:
        try:
            _code, body = asyncio.run(get_json("127.0.0.1", port, "/status"))
            page = render_status(body, cfg)
            online = sum(1 for st in body["devices"].values() if st.get("online"))
            if not acted and online >= len(body["devices"]) * 0.9:
                acted = True
                note = app_action()
        except OSError as exc:
            page = f"daemon not answering: {exc}"
        if clear:
            sys.stdout.write("\x1b[H\x1b[2J")
        print(page + "\n" + note + "\nCtrl-C stops the demo", flush=True)
        time.sleep(2.0)
