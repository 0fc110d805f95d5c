"""The site config as the roof loads it: the core's loader with the drivers' and the cloud's checks.

`load_config` is what `check-config`, `run`, the demo and the tools call; the models live in
`edge.core.config` and the YAML loader in `edge.core.loader`.
"""

from __future__ import annotations

import os

from cloud_sync.checks import cloud_file_checks
from drivers.modbus.checks import framing_warnings, profile_checks
from edge.core.config import BeaconScanner, Config, RfidReader
from edge.core.loader import load_config as _load
from edge.core.model import Kind

CHECKS = (profile_checks, cloud_file_checks)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load, validate and cross-check a site config; raise ConfigError listing every problem."""
    return _load(path, CHECKS)


def config_warnings(cfg: Config) -> list[str]:
    """Allowed but probably wrong, or configured but not acted on: each a line for the log and check-config."""
    out = framing_warnings(cfg)
    for dev in cfg.devices:
        if isinstance(dev, RfidReader | BeaconScanner):
            out.append(f"devices.{dev.id}: kind {dev.kind} is accepted but not implemented yet:"
                       f" nothing reads this {'reader' if dev.kind == Kind.RFID else 'scanner'}")
    return out
