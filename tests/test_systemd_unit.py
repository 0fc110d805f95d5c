"""The service unit: notify + watchdog, never a permanent give-up, and hardening that stays <= 2.5."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "campus-edge.service"


def _keys() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_the_unit_supervises_with_notify_and_a_watchdog() -> None:
    keys = _keys()
    assert keys["Type"] == ["notify"]
    assert keys["NotifyAccess"] == ["main"]
    assert keys["WatchdogSec"] == ["30s"]
    assert keys["StartLimitIntervalSec"] == ["0"]   # never give up
    assert keys["Restart"] == ["on-failure"]
    assert keys["RuntimeDirectory"] == ["campus-edge"]   # the control socket's home ($RUNTIME_DIRECTORY)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_exposure_stays_at_most_2_5() -> None:
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True,
                         text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert m is not None, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.5
