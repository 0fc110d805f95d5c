"""The cloud tests' private broker and small school (the broker itself lives in simulator.local)."""

from __future__ import annotations

from pathlib import Path

from simulator.local import Broker, free_port

__all__ = ["Broker", "free_port", "small_school"]


# -- helpers shared by the cloud tests and benchmarks -------------------------------------------------
def small_school(run_dir: Path, *, modbus_port: int, broker_port: int | None, pub_key: Path | None,
                 storage: Path | None = None, status_port: int = 0) -> dict[str, object]:
    """A few ACs on a TCP bus, a meter, a relay board on an RTU pty with a light and a door, three rooms."""
    cfg: dict[str, object] = {
        "site": {"school_id": "014601", "gateway_id": "gw-t", "timezone": "Asia/Taipei"},
        "storage": {"path": str(storage or run_dir / "state")},
        "status_port": status_port,
        "buses": [{"id": "ac-bus", "type": "tcp", "host": "127.0.0.1", "port": modbus_port, "timeout_s": 0.5},
                  {"id": "rs485-1", "type": "rtu", "device": str(run_dir / "rs485-1"), "baudrate": 9600,
                   "timeout_s": 0.5}],
        "rooms": [{"id": "301", "floor": 3}, {"id": "302", "floor": 3}, {"id": "101", "floor": 1}],
        "devices": [
            {"id": "ac-301a", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 1,
             "room": "301", "poll_s": 0.5},
            {"id": "ac-301b", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 2,
             "room": "301", "poll_s": 0.5},
            {"id": "ac-302a", "kind": "ac", "profile": "coolmasternet", "bus": "ac-bus", "unit": 1, "index": 3,
             "room": "302", "poll_s": 0.5},
            {"id": "meter-main", "kind": "meter", "profile": "eastron-sdm630", "bus": "ac-bus", "unit": 2},
            {"id": "relay-1", "kind": "relay", "profile": "waveshare-relay-8ch", "bus": "rs485-1", "unit": 1,
             "poll_s": 0.5},
            {"id": "light-301", "kind": "light", "relay": "relay-1", "channel": 0, "room": "301"},
            {"id": "door-101", "kind": "door", "relay": "relay-1", "channel": 1, "room": "101"},
        ],
    }
    if broker_port is not None:
        cfg["cloud"] = {"mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "keepalive_s": 5},
                        "command_keys": [str(pub_key)] if pub_key else []}
    return cfg
