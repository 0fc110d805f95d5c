"""The command line as users run it: separate processes for the virtual school and the daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from helpers.sites import ac, meter, rtu_bus, site, tcp_bus

EXE = [sys.executable, "-m", "edge.cli"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EXE, *args], capture_output=True, text=True, timeout=timeout, check=False)


def write_config(tmp: Path, modbus_port: int, status_port: int) -> Path:
    cfg = site(gateway="gw-cli", storage={"path": "state"}, status_port=status_port,  # state beside the config
               buses=[tcp_bus("ac-bus", modbus_port, timeout_s=0.5),
                      rtu_bus("rs485", tmp / "tty-rs485", timeout_s=0.5)],
               rooms=[{"id": "301", "name": "3年1班", "floor": 3}],
               devices=[ac("ac-301a", "ac-bus", 1, index=1, room="301"),
                        ac("ac-301b", "rs485", 5, profile="intesis-inmbsdai", room="301"),
                        meter("rs485", 1)])
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


class Proc:
    def __init__(self, *args: str, log: Path) -> None:
        self.log = log.open("w")
        self.p = subprocess.Popen([*EXE, *args], stdout=subprocess.PIPE, stderr=self.log, text=True,
                                  start_new_session=True)

    def ready(self, timeout: float = 20) -> str:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if line.startswith("READY"):
                return line
            if not line and self.p.poll() is not None:
                break
        raise AssertionError(f"no READY from {self.p.args}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
            raise
        finally:
            if self.p.stdout:
                self.p.stdout.close()
            self.log.close()
        return rc


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, int, int, Proc]]:
    mb, st = free_port(), free_port()
    cfg = write_config(tmp_path, mb, st)
    sim = Proc("simulate", "--config", str(cfg), log=tmp_path / "sim.log")
    daemon: Proc | None = None
    try:
        sim.ready()
        daemon = Proc("run", "--config", str(cfg), log=tmp_path / "daemon.log")
        daemon.ready()
        yield cfg, mb, st, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        sim.stop()


def _status(cfg: Path) -> dict[str, dict[str, object]]:
    out = run_cli("status", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert set(body) == {"devices"}
    return body["devices"]  # type: ignore[no-any-return]


def test_status_json_set_and_graceful_stop(running: tuple[Path, int, int, Proc], tmp_path: Path) -> None:
    cfg, _mb, _st, daemon = running
    deadline = time.monotonic() + 15
    while True:
        devices = _status(cfg)
        if all(d.get("online") for d in devices.values()):
            break
        assert time.monotonic() < deadline, devices
        time.sleep(0.3)
    assert set(devices) == {"ac-301a", "ac-301b", "meter-main"}
    for state in devices.values():
        assert isinstance(state["ts"], str)
    assert {"power_on", "mode", "setpoint_c", "fan", "room_temp_c", "fault"} <= set(devices["ac-301b"])
    out = run_cli("set", "ac-301b", "power_on=true", "setpoint_c=27", "--config", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["state"]["setpoint_c"] == 27
    assert daemon.stop() == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "daemon stopped" in log
    assert (tmp_path / "state" / "state.db").is_file()


def test_modbus_scan_and_read(running: tuple[Path, int, int, Proc]) -> None:
    _cfg, mb, _st, _daemon = running
    out = run_cli("modbus", "scan", "--tcp", f"127.0.0.1:{mb}", "--units", "1-3")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["units"] == [1]
    out = run_cli("modbus", "read", "--tcp", f"127.0.0.1:{mb}", "--unit", "1", "--address", "16", "--count", "8",
                  "--json")
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)["values"]
    assert len(values) == 8
    assert 100 <= values[2] <= 350  # setpoint x10 of VA 1 at 16*1+2


def test_check_config_reports_file_line_and_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, 1502, 8765)
    assert run_cli("check-config", str(cfg)).returncode == 0
    text = cfg.read_text().replace("index: 1", "index: 999").replace("unit: 5", "unit: 5\n  colour: red")
    cfg.write_text(text)
    out = run_cli("check-config", str(cfg))
    assert out.returncode == 2
    assert "index 999 out of range" in out.stderr  # a problem of meaning and
    assert "colour: unknown key" in out.stderr  # a problem of form, reported together
    assert f"{cfg}:" in out.stderr
    # nothing starts on an invalid config
    out = run_cli("run", "--config", str(cfg))
    assert out.returncode == 2
    missing = run_cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "nope.yaml" in missing.stderr
