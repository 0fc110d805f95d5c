"""The human status view (`campus-edge status`, `make demo`): rooms, ACs, temperatures, site power."""

from __future__ import annotations

from typing import Any

from edge.core.config import Config, ModbusDevice, RelayChannel
from edge.core.model import Kind


def _ac_cell(st: dict[str, Any] | None) -> str:
    if not st or not st.get("online"):
        return "offline      "
    temp = st.get("room_temp_c")
    t = f"{temp:4.1f}°C" if isinstance(temp, (int, float)) else "  ?  "
    if not st.get("power_on"):
        return f"off    {t}"
    sp = st.get("setpoint_c")
    fault = " FAULT " + str(st["fault"]) if st.get("fault") else ""
    return f"{(st.get('mode') or '?')[:4]:4} {sp if sp is not None else '?':>4} {t}{fault}"


def render_status(body: dict[str, Any], cfg: Config | None) -> str:
    """A plain-text page: one line per room, then the site meter."""
    devices: dict[str, dict[str, Any]] = body.get("devices", {})
    gw = body.get("gateway", {})
    lines = [f"campus-edge {gw.get('gateway_id', '')}  school {gw.get('school_id', '')}  "
             f"started {gw.get('started_at', '')}"]
    if cfg is None:
        for dev_id, st in sorted(devices.items()):
            lines.append(f"  {dev_id:16} {'online ' if st.get('online') else 'OFFLINE'} "
                         + " ".join(f"{k}={v}" for k, v in st.items() if k not in ("online", "ts")))
        return "\n".join(lines)
    acs: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    for d in cfg.devices:
        room = getattr(d, "room", None)
        if room is None:
            continue
        if isinstance(d, ModbusDevice) and d.kind == Kind.AC:
            acs.setdefault(room, []).append(d.id)
        elif isinstance(d, RelayChannel):
            on = devices.get(d.id, {}).get("on")
            others.setdefault(room, []).append(f"{d.kind}:{'on' if on else 'off' if on is False else '?'}")
    on_count = sum(1 for ids in acs.values() for i in ids if devices.get(i, {}).get("power_on"))
    total = sum(len(v) for v in acs.values())
    lines.append(f"ACs on: {on_count}/{total}")
    lines.append(f"{'room':6} {'name':8} {'AC 1':22} {'AC 2':22} relays")
    for room in cfg.rooms:
        ids = acs.get(room.id, [])
        cells = [_ac_cell(devices.get(i)) for i in ids[:2]] + [""] * (2 - min(2, len(ids)))
        lines.append(f"{room.id:6} {room.name[:8]:8} {cells[0]:22} {cells[1]:22} {' '.join(others.get(room.id, []))}")
    for d in cfg.modbus_devices():
        if d.kind == Kind.METER:
            st = devices.get(d.id, {})
            if st.get("online"):
                kw = (st.get("power_w") or 0) / 1000
                lines.append(f"site power ({d.id}): {kw:7.1f} kW   energy {st.get('energy_kwh') or 0:,.1f} kWh   "
                             f"{st.get('freq_hz') or 0:.2f} Hz"
                             + (f"   contract {cfg.ems.contract_kw:.0f} kW" if cfg.ems else ""))
            else:
                lines.append(f"site power ({d.id}): meter offline")
    return "\n".join(lines)
