"""Record real request/response frames for tests/fixtures/VENDOR-MODEL.json.

A pymodbus server (RTU framing, over loopback TCP so no serial port is needed) serves the registers
of devices holding the typed values below; a pymodbus client sends the planner's reads and the
raw bytes both ways are written down with the values they encode.  Run from the repository root:

    .venv/bin/python tests/record_frames.py        # rewrites tests/fixtures/*.json
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modbus_server import LOOPBACK, Server, Unit

from drivers.modbus import transport
from drivers.modbus.planner import DeviceSpec, plan
from drivers.modbus.profile import load_profile
from drivers.modbus.waveshare import FlashRequest, FlashResponse

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMEOUT_S = 2.0

# profile -> [(device_id, unit, index, values)]
DEVICES: dict[str, list[tuple[str, int, int | None, dict[str, Any]]]] = {
    "coolmasternet": [
        ("ac-va1", 1, 1, {"mode": "cool", "fan": "auto", "setpoint_c": 26.0, "power_on": True, "filter_sign": False,
                          "room_temp_c": 29.3, "fault_code": 0}),
        ("ac-va2", 1, 2, {"mode": "heat", "fan": "low", "setpoint_c": 22.5, "power_on": False, "filter_sign": True,
                          "room_temp_c": -2.5, "fault_code": 0}),
        ("ac-va3", 1, 3, {"mode": "dry", "fan": "high", "setpoint_c": 27.0, "power_on": True, "filter_sign": False,
                          "room_temp_c": 31.0, "fault_code": 1234}),
    ],
    "intesis-inmbsdai": [
        ("ac-301a", 5, None, {"power_on": True, "mode": "cool", "fan": "medium", "setpoint_c": 26.5,
                              "room_temp_c": 30.2, "alarm": False, "fault_code": 0}),
    ],
    "daikin-dta116a51": [
        ("ac-1-00", 1, 0, {"power_on": True, "fan": "high", "mode": "cool", "setpoint_c": 26.0, "room_temp_c": 28.7,
                           "fault_code": 0}),
        ("ac-1-01", 1, 1, {"power_on": False, "fan": "low", "mode": "dry", "setpoint_c": 27.5, "room_temp_c": -1.2,
                           "fault_code": 0x4A33}),
    ],
    "eastron-sdm630": [
        ("meter-main", 1, None, {
            "voltage_l1_v": 230.1, "voltage_l2_v": 229.8, "voltage_l3_v": 231.0, "current_l1_a": 18.9,
            "current_l2_a": 18.3, "current_l3_a": 18.6, "power_l1_w": 4110.0, "power_l2_w": 4035.0,
            "power_l3_w": 4200.0, "pf_l1": 0.95, "pf_l2": -0.94, "pf_l3": 0.96, "power_w": 12345.0, "pf": 0.95,
            "freq_hz": 60.0, "import_energy_kwh": 1234.5, "demand_w": 11800.0, "max_demand_w": 15000.0,
            "energy_kwh": 98765.5}),
    ],
    "waveshare-relay-8ch": [
        ("relay-1", 1, None, {"ch0": True, "ch1": False, "ch2": True, "ch3": True, "ch4": False, "ch5": False,
                              "ch6": False, "ch7": True}),
    ],
}


async def record(profile_name: str) -> dict[str, Any]:
    profile = load_profile(profile_name)
    specs = [DeviceSpec(dev_id, profile, unit, index) for dev_id, unit, index, _values in DEVICES[profile_name]]
    units: dict[int, Unit] = {}
    for spec, (_d, _u, _i, values) in zip(specs, DEVICES[profile_name], strict=True):
        image = units.setdefault(spec.unit, Unit(spec.unit, holding=[0] * 4000, input=[0] * 4000))
        image.fill(spec, values)
    exchanges: list[dict[str, str]] = []
    last: dict[str, bytes] = {}

    def trace(sending: bool, data: bytes) -> bytes:
        last["request" if sending else "response"] = bytes(data)
        return data

    async def exchange(note: str, pdu: Any) -> Any:
        last.clear()
        response = await transport.execute(client, pdu, TIMEOUT_S)
        exchanges.append({"note": note, "request": last["request"].hex(" "), "response": last["response"].hex(" ")})
        return response

    server = Server(list(units.values()))
    async with server.tcp(FramerType.RTU):
        client = AsyncModbusTcpClient(LOOPBACK, port=server.port, framer=FramerType.RTU, trace_packet=trace,
                                      retries=0, reconnect_delay=0)
        client.register(FlashResponse)
        await client.connect()
        try:
            for r in plan(specs):
                await exchange(f"read {r.table} {r.address}+{r.count}: {', '.join(map(repr, r.parts))}",
                               transport.read_pdu(r.unit, r.table, r.address, r.count))
            if profile.pulse is not None:
                await exchange("flash relay 0 on for 0.7 s", FlashRequest(relay=0, on=True, steps=7, dev_id=1))
        finally:
            client.close()
    return {
        "profile": profile_name,
        "recorded_with": "pymodbus 3.16.1 ModbusTcpServer(framer=RTU) and AsyncModbusTcpClient(framer=RTU), "
                         "tests/record_frames.py",
        "devices": [{"device_id": d, "unit": u, "index": i, "values": v} for d, u, i, v in DEVICES[profile_name]],
        "exchanges": exchanges,
    }


async def main() -> None:
    for name in DEVICES:
        data = await record(name)
        path = FIXTURES / f"{name}.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path}: {len(data['exchanges'])} exchanges")


if __name__ == "__main__":
    asyncio.run(main())
