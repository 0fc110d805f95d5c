"""What a site config asks of the Modbus profiles: checked by `check-config` and warned at start.

The core's config loader knows no driver; the roof passes `profile_checks` in (`checks=`).
"""

from __future__ import annotations

from collections.abc import Iterator

from drivers.modbus.profile import ProfileError, load_profile
from edge.core.config import Config, ModbusDevice, RelayChannel, RtuBus
from edge.core.loader import Loc
from edge.core.model import Kind


def profile_checks(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """Each Modbus device names a profile of its kind, an index the profile has, a channel its board has."""
    by_id = {d.id: d for d in cfg.devices}
    for i, dev in enumerate(cfg.devices):
        if isinstance(dev, ModbusDevice):
            try:
                prof = load_profile(dev.profile, cfg.profile_dirs)
            except ProfileError as exc:
                yield ("devices", i, "profile"), str(exc)
                continue
            if Kind(prof.kind) != dev.kind:
                yield ("devices", i, "kind"), f"profile {dev.profile} is for kind '{prof.kind}', not '{dev.kind}'"
            why = prof.check_index(dev.index)
            if why:
                yield ("devices", i, "index"), why
        elif isinstance(dev, RelayChannel):
            board = by_id.get(dev.relay)
            if not isinstance(board, ModbusDevice) or board.kind != Kind.RELAY:
                continue  # reported by the core's own checks
            try:
                prof = load_profile(board.profile, cfg.profile_dirs)
            except ProfileError:
                continue  # reported on the board itself
            channels = prof.channels or 0
            if dev.channel >= channels:
                yield ("devices", i, "channel"), f"channel {dev.channel} out of range 0..{channels - 1} of {dev.relay}"
            no_off_pulse = prof.pulse is not None and prof.pulse.off_address is None
            if dev.kind == Kind.DOOR and (prof.pulse is None or (dev.lock == "fail_safe" and no_off_pulse)):
                what = "a timed off-pulse (a fail-safe door)" if prof.pulse is not None else "a timed pulse"
                yield ("devices", i, "relay"), (f"{board.profile} on {dev.relay} has no {what}: a door must re-lock"
                                                " in hardware if the gateway dies")


def framing_warnings(cfg: Config) -> list[str]:
    """Allowed but probably wrong: a line's framing that differs from its devices' factory default."""
    mismatched: dict[tuple[str, str], list[str]] = {}
    for dev in cfg.modbus_devices():
        try:
            bus, prof = cfg.bus(dev.bus), load_profile(dev.profile, cfg.profile_dirs)
        except (KeyError, ProfileError):
            continue
        if isinstance(bus, RtuBus) and (bus.parity, bus.stopbits, bus.baudrate) != (
                prof.serial.parity, prof.serial.stopbits, prof.serial.baudrate):
            mismatched.setdefault((bus.id, prof.name), []).append(dev.id)
    out = []
    for (bus_id, name), devs in mismatched.items():
        bus, prof = cfg.bus(bus_id), load_profile(name, cfg.profile_dirs)
        assert isinstance(bus, RtuBus)
        out.append(f"buses.{bus_id}: runs {bus.baudrate} 8{bus.parity}{bus.stopbits} but {len(devs)} "
                   f"{prof.vendor} {prof.model} device(s) ({devs[0]}...) default to {prof.serial.baudrate} "
                   f"8{prof.serial.parity}{prof.serial.stopbits}: check the devices' settings")
    return out
