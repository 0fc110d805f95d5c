"""The engine pulses any board whose profile declares `pulse:`, with that profile's words (loading: test_profiles)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from modbus_server import LOOPBACK, Recorder, Server, Unit, wait_for

from drivers.modbus.engine import ModbusBus, WriteError
from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import PROFILE_DIR, Profile
from edge.core.config import TcpBus

WAVESHARE: dict[str, Any] = yaml.safe_load((PROFILE_DIR / "waveshare-relay-8ch.yaml").read_text(encoding="utf-8"))


def board(**pulse: Any) -> dict[str, Any]:
    """Another vendor's four-channel board (not the Waveshare name) with the pulse fields changed."""
    data = copy.deepcopy(WAVESHARE)
    data.update(name="acme-relay-4ch", vendor="Acme", model="R4", channels=4)
    data["blocks"]["coils"]["size"] = 4
    data["points"] = data["points"][:4]
    data["pulse"].update(pulse)
    data["pulse"] = {k: v for k, v in data["pulse"].items() if v is not None}
    return data


async def test_any_board_that_declares_a_pulse_is_pulsed_with_its_own_words() -> None:
    same_words = DeviceSpec("door-a", Profile.model_validate(board()), 1, poll_s=0.2)
    other_words = DeviceSpec("door-b", Profile.model_validate(board(on_address=0x0300, off_address=None)), 2,
                             poll_s=0.2)
    server = Server([Unit(1), Unit(2)])  # both answer FC05 like a Waveshare board
    async with server.tcp():
        rec = Recorder()
        bus = TcpBus(id="doors", type="tcp", host=LOOPBACK, port=server.port, timeout_s=0.5)
        async with ModbusBus(bus, [same_words, other_words], rec) as engine:
            await wait_for(lambda: engine.online("door-a") and engine.online("door-b"))
            await engine.pulse("door-a", 3, 0.4)
            assert await server.get(1, 1, 3, 1) == [True]
            await wait_for(lambda: rec.state("door-a")["ch3"] is False, timeout_s=3.0)  # the board turned it back

            with pytest.raises(WriteError) as err:
                await engine.pulse("door-b", 1, 0.4, on=False)
            assert err.value.code == "bad_request"  # it declares no off address: nothing is sent
            assert server.keys(2, 5) == set()
            with pytest.raises(WriteError) as err:
                await engine.pulse("door-b", 4, 0.4)
            assert err.value.code == "out_of_range"  # four channels
            with pytest.raises(WriteError) as err:
                await engine.pulse("door-b", 1, 0.4)
            assert err.value.code == "write_failed"  # a Waveshare board refuses command 0x03...
            assert server.keys(2, 5) == {(0x0301, 0)}  # ...but the frame carried this profile's address
            assert engine.stats()["pulses"] == 1
