"""Typed devices: profile fields in, the STATE objects of CONTRACT.md section 3 out.

A profile names its fields after capabilities (`power_on`, `setpoint_c`, `voltage_l1_v` ...).
These functions turn one device's decoded fields into the contract's shape, so the rest of the
system never sees a vendor's register layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

AC_FIELDS = ("power_on", "mode", "setpoint_c", "fan", "room_temp_c")
AC_WRITABLE = {"power_on", "mode", "setpoint_c", "fan"}
NO_COMMUNICATION = 65535  # Intesis: the interface has lost its indoor unit
NO_COMMUNICATION_FAULT = "no_communication"


def ac_state(values: Mapping[str, Any]) -> dict[str, Any]:
    """STATE of an AC: power, mode, setpoint, fan, room temperature, fault (string or null)."""
    state: dict[str, Any] = {k: values.get(k) for k in AC_FIELDS}
    code = values.get("fault_code")
    state["fault"] = None if code in (None, 0) else (NO_COMMUNICATION_FAULT if code == NO_COMMUNICATION else str(code))
    state["power_w"] = values.get("power_w")
    return state


def _phases(values: Mapping[str, Any], prefix: str, unit: str) -> list[float | None] | None:
    got = [values.get(f"{prefix}_l{n}_{unit}" if unit else f"{prefix}_l{n}") for n in (1, 2, 3)]
    return None if all(v is None for v in got) else got


def meter_state(values: Mapping[str, Any]) -> dict[str, Any]:
    """STATE of a meter: totals plus per-phase lists."""
    return {
        "power_w": values.get("power_w"),
        "energy_kwh": values.get("energy_kwh", values.get("import_energy_kwh")),
        "voltage_v": _phases(values, "voltage", "v"),
        "current_a": _phases(values, "current", "a"),
        "power_phase_w": _phases(values, "power", "w"),
        "pf": values.get("pf"),
        "freq_hz": values.get("freq_hz"),
        "demand_w": values.get("demand_w"),
    }


def relay_board_state(values: Mapping[str, Any], channels: int) -> dict[str, Any]:
    """STATE of a relay board: one bool (or None when unknown) per channel."""
    return {"channels": [values.get(f"ch{n}") for n in range(channels)]}


def channel_field(channel: int) -> str:
    """The profile field of relay channel `channel`."""
    return f"ch{channel}"


def state_for(kind: str, values: Mapping[str, Any], channels: int = 0) -> dict[str, Any]:
    if kind == "ac":
        return ac_state(values)
    if kind == "meter":
        return meter_state(values)
    if kind == "relay":
        return relay_board_state(values, channels)
    raise ValueError(f"no typed state for kind {kind!r}")
