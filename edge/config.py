"""The site config as the roof loads it: the core's loader with the drivers' and the cloud's checks.

`load_config` is what `check-config`, `run`, the demo and the tools call; the models live in
`edge.core.config` and the YAML loader in `edge.core.loader`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cloud_sync.checks import cloud_file_checks
from drivers.modbus.checks import framing_warnings, profile_checks
from edge.core.config import BeaconScanner, Config
from edge.core.loader import load_config as _load

CHECKS = (profile_checks, cloud_file_checks)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load, validate and cross-check a site config; raise ConfigError listing every problem."""
    return _load(path, CHECKS)


VOLATILE_DIRS = (Path("/tmp"), Path("/var/tmp"))  # the unit makes both private (PrivateTmp=yes), discarded at each stop
VOLATILE_FS = {"tmpfs", "ramfs"}


def _fs_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The file system type of the mount that holds `path` (the last, longest mount point above it)."""
    try:
        lines = mounts.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    depth, fstype = -1, None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if path.is_relative_to(point) and len(point.parts) >= depth:
            depth, fstype = len(point.parts), fields[2]
    return fstype


def storage_warnings(cfg: Config) -> list[str]:
    """Storage that does not survive a reboot: under /tmp (and kin) or on a memory file system."""
    path = Path(os.path.abspath(cfg.storage.path))
    real = path.resolve()  # a symlink into /tmp counts as /tmp
    for where in (path, real):
        for d in VOLATILE_DIRS:
            if where.is_relative_to(d):
                return [f"storage.path: {path} is under {d}: the systemd unit (PrivateTmp=yes) discards it at every"
                        f" stop and a reboot may empty it, and the outbox of undelivered events and the state go"
                        f" with it; use /var/lib/campus-edge"]
    fstype = _fs_type(real)
    if fstype in VOLATILE_FS:
        return [f"storage.path: {path} is on a {fstype} (memory): the outbox of undelivered events and the"
                f" state are lost at every power cut; use a directory on the SD card or disk, such as"
                f" /var/lib/campus-edge"]
    return []


def config_warnings(cfg: Config) -> list[str]:
    """Allowed but probably wrong, or configured but not acted on: each a line for the log and check-config."""
    out = framing_warnings(cfg) + storage_warnings(cfg)
    for dev in cfg.devices:
        if isinstance(dev, BeaconScanner) and not dev.beacons and not dev.report_unknown:
            out.append(f"devices.{dev.id}: no beacon is mapped to a person and report_unknown is off:"
                       f" it reports nothing")
    return out
