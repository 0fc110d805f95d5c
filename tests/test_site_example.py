"""config/site.example.yaml: what systemd/install.sh seeds into /etc/campus-edge, a valid production config."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from edge.config import config_warnings, load_config
from edge.core import loader as core_loader
from edge.core.config import Config, RtuBus

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "config" / "site.example.yaml"
INSTALL = ROOT / "systemd" / "install.sh"


def _paths(value: Any) -> list[str]:
    """Every string in a dumped config that looks like an absolute path (dumped with exclude_unset: the
    file's own, not defaults that depend on where the test runs, such as $RUNTIME_DIRECTORY)."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths(v)]
    if isinstance(value, str | os.PathLike) and str(value).startswith("/"):
        return [str(value)]
    return []


def _under_tmp(path: str) -> bool:
    return PurePosixPath(os.path.normpath(path)).is_relative_to("/tmp") or path.startswith("/var/tmp")


def test_it_loads_with_the_profile_checks_and_no_warnings() -> None:
    cfg = load_config(SITE)
    assert config_warnings(cfg) == []
    assert cfg.storage.path == Path("/var/lib/campus-edge")
    assert cfg.cloud is None  # runs fully local until the contractor fills in the cloud block
    assert cfg.ems is not None
    assert cfg.ems.meter == "meter-main"
    assert 3 <= len(cfg.rooms) <= 8  # a few rooms, not the demo's 40 classes
    assert {d.kind for d in cfg.devices} >= {"ac", "meter", "relay", "light", "door"}
    assert all(b.device.startswith("/dev/") for b in cfg.buses if isinstance(b, RtuBus))


def test_no_path_is_under_tmp() -> None:
    text = SITE.read_text(encoding="utf-8")
    assert "/tmp" not in text
    assert "${" not in text  # no environment defaults (the demo config falls back to /tmp that way)
    paths = _paths(load_config(SITE).model_dump(mode="json", exclude_unset=True))
    assert "/var/lib/campus-edge" in paths
    assert [p for p in paths if _under_tmp(p)] == []


def _uncomment_cloud(text: str) -> str:
    """The file with its commented-out `cloud:` block switched on."""
    block = re.search(r"^# cloud:\n(?:#  .*\n|#\n)*", text, re.MULTILINE)
    assert block is not None, "the commented cloud block is gone"
    live = "".join(line[2:] + "\n" for line in block.group(0).splitlines())
    return text.replace(block.group(0), live)


def test_the_commented_cloud_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    site = tmp_path / "config.yaml"
    site.write_text(_uncomment_cloud(SITE.read_text(encoding="utf-8")), encoding="utf-8")
    cfg = core_loader.load_config(site)  # the models only: its key files exist at a school, not here
    assert cfg.cloud is not None
    assert cfg.cloud.mqtt.url.startswith("mqtts://")
    assert cfg.cloud.influx is not None
    assert [p for p in _paths(cfg.model_dump(mode="json", exclude_unset=True)) if _under_tmp(p)] == []
    with pytest.raises(core_loader.ConfigError) as err:
        load_config(site)  # the roof's checks name each missing file, with its line
    assert {p.path for p in err.value.problems} == {"cloud.mqtt.password_file", "cloud.mqtt.ca_file",
                                                    "cloud.command_keys[0]", "cloud.influx.token_file"}
    assert all(p.line for p in err.value.problems)


def test_install_seeds_it_into_etc(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "campus-edge").exists():
        pytest.skip("install.sh needs the checkout's .venv")
    env = {**os.environ, "DESTDIR": str(tmp_path)}
    out = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    seeded = tmp_path / "etc" / "campus-edge" / "config.yaml"
    assert seeded.read_bytes() == SITE.read_bytes()
    assert stat.S_IMODE(seeded.stat().st_mode) == 0o640
    assert isinstance(load_config(seeded), Config)
    seeded.write_text(SITE.read_text(encoding="utf-8").replace("gw-a", "gw-b"), encoding="utf-8")
    again = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 0, again.stderr
    assert "gw-b" in seeded.read_text(encoding="utf-8")  # a site's own config is never overwritten
