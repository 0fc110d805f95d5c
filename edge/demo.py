"""`campus-edge demo`: the virtual school, the daemon and a live status view; Ctrl-C stops it all.

Each part is its own process (as in production), started in its own session and stopped by its
handle, so nothing outlives the demo. SIGTERM and SIGHUP (a closed terminal, `kill`) stop it the
way Ctrl-C does.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType

import yaml

from cloud_sync.keys import generate_keypair
from edge.config import load_config
from edge.core.config import Config
from edge.http import get_json
from edge.view import render_status
from simulator.local import Broker

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # a child's orderly stop after SIGTERM (the daemon drains and flushes)
KILL_TIMEOUT_S = 5.0  # reaping after SIGKILL; only a process stuck in the kernel takes longer
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TEACHER = ("T123", "101", "ac-101a")  # the teacher, her classroom and its AC in the example school

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None  # what signal.getsignal returns


def example_config() -> Path:
    """The example school shipped with the package (source tree or installed data files)."""
    for cand in (Path(__file__).resolve().parents[1] / "config" / "example-school.yaml",
                 Path(sys.prefix) / "share" / "campus-edge" / "example-school.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("example-school.yaml not found")


class Child:
    """A child process in its own session; stopped by handle (SIGTERM, then SIGKILL to its session)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("w", encoding="utf-8")
        try:
            self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=self._fh, text=True,
                                         start_new_session=True)
        except BaseException:
            self._fh.close()
            raise

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

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM the child, which stops what it started (the simulator its socat ptys); past `timeout`
        SIGKILL its whole session. True if it stopped in time on its own."""
        clean = True
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    clean = False
                    with contextlib.suppress(ProcessLookupError):  # unreaped: its group id is still ours
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _say(f"demo: {self.name} (pid {self.proc.pid}) survived SIGKILL", err=True)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._fh.close()
        return clean


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP all stop the demo as Ctrl-C does: KeyboardInterrupt, once.

    Inside `hold()` (a child being started and put on the list) the interrupt waits for the end of
    the block, so no child escapes the stop path; once stopping, further signals are ignored so the
    stop path runs to its end. SIGINT and SIGHUP stay ignored where the caller ignores them (a
    shell's background job, nohup).
    """

    def __init__(self) -> None:
        self.stopping = False
        self._held = 0
        self._pending = False
        self._saved: dict[signal.Signals, _Handler] = {}

    def __enter__(self) -> _StopSignals:
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if previous is signal.SIG_IGN and sig != signal.SIGTERM:
                continue
            self._saved[sig] = previous
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, previous in self._saved.items():
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        if self._held:
            self._pending = True
            return
        self.stopping = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._pending and not self._held and not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt


def _say(text: str, *, err: bool = False) -> None:
    """Print, even to a terminal that has hung up (SIGHUP): the stop path must not fail on it."""
    try:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:  # from now on to /dev/null, or the interpreter's last flush fails too (exit 120)
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, (sys.stderr if err else sys.stdout).fileno())
            os.close(null)


def _site_with_cloud(cfg_path: Path, workdir: Path, broker_port: int) -> tuple[Path, Path]:
    """The demo config: the example school plus a cloud link to the private broker and a fresh key."""
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
    with _StopSignals() as signals:
        return _run(signals, config, speed, duration_s)


def _run(signals: _StopSignals, config: str | None, speed: float | None, duration_s: float | None) -> int:
    cfg_path = Path(config) if config else example_config()
    workdir = Path(tempfile.mkdtemp(prefix="campus-edge-demo-"))
    env = {**os.environ, "CAMPUS_EDGE_RUN_DIR": str(workdir / "run"), "CAMPUS_EDGE_STATE_DIR": str(workdir / "state"),
           "RUNTIME_DIRECTORY": str(workdir / "run")}   # the daemon's control socket lives there
    (workdir / "run").mkdir()
    os.environ.update({k: env[k] for k in ("CAMPUS_EDGE_RUN_DIR", "CAMPUS_EDGE_STATE_DIR")})
    exe = [sys.executable, "-m", "edge.cli"]
    children: list[Child] = []
    broker: Broker | None = None
    code = 0
    try:
        with signals.hold():
            broker = Broker.start(workdir / "broker")
        broker_port = broker.port
        site, key = _site_with_cloud(cfg_path, workdir, broker_port)
        cfg = load_config(site)
        sim_args = ["simulate", "--config", str(site)] + (["--speed", str(speed)] if speed else [])
        with signals.hold():
            sim = Child("simulator", [*exe, *sim_args], env, workdir / "simulator.log")
            children.append(sim)
        sim.wait_ready()
        with signals.hold():
            daemon = Child("daemon", [*exe, "run", "--config", str(site), "--status-port", "0"], env,
                           workdir / "daemon.log")
            children.append(daemon)
        port = int(daemon.wait_ready().rsplit(":", 1)[1])
        _say(f"demo running: logs in {workdir}; broker 127.0.0.1:{broker_port}; status API 127.0.0.1:{port}")
        sock = workdir / "run" / "control.sock"
        _say(f"local control: campus-edge set ac-102a power_on=on setpoint_c=26 --socket {sock}")
        _view(cfg, port, duration_s, lambda: _teacher_switches_ac_on(site, key, env))
    except KeyboardInterrupt:
        pass
    except (RuntimeError, OSError) as exc:
        _say(f"demo failed: {exc}", err=True)
        code = 1
    finally:
        signals.stopping = True
        _say("\nstopping the demo...")
        for c in reversed(children):  # the daemon first, while the broker still takes its goodbye
            if not c.stop():
                _say(f"demo: {c.name} did not stop within {STOP_TIMEOUT_S:g} s and was killed; see {c.log}",
                     err=True)
                code = 1
        if broker is not None:
            try:
                broker.stop(signal.SIGTERM)
            except subprocess.TimeoutExpired:
                _say("demo: mosquitto survived SIGKILL", err=True)
                code = 1
        _say("demo stopped")
        if not os.environ.get("CAMPUS_EDGE_KEEP_DEMO"):
            shutil.rmtree(workdir, ignore_errors=True)
    return code


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
