"""Waveshare timed flash (its profile's `pulse`): exact RTU bytes, and a real board over a pty that turns back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from modbus_server import Recorder, Server, Unit, wait_for
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.modbus import transport
from drivers.modbus.engine import ModbusBus, WriteError
from drivers.modbus.planner import DeviceSpec
from drivers.modbus.profile import Pulse, load_profile
from drivers.modbus.pulse import CoilWord, pulse_steps, pulse_words
from drivers.modbus.waveshare import (
    ALL_RELAYS_ADDRESS,
    COIL_FLIP,
    COIL_OFF,
    COIL_ON,
    RELAY_CHANNELS,
    FlashRequest,
    FlashResponse,
    WaveshareCoilRequest,
)
from edge.core.config import RtuBus
from simulator.ptys import PtyPair

RELAY = load_profile("waveshare-relay-8ch")
assert RELAY.pulse is not None
PULSE: Pulse = RELAY.pulse
DOC_FRAME = bytes.fromhex("01 05 02 00 00 07 8D B0")  # Waveshare wiki / DOMAIN.md: relay 0 on for 700 ms
ALL_ON_FRAME = bytes.fromhex("01 05 00 FF FF 00 BC 0A")  # Waveshare wiki: every relay on


def test_flash_request_is_the_documented_frame() -> None:
    frame = FramerRTU(DecodePDU(False)).buildFrame(FlashRequest(relay=0, on=True, steps=7, dev_id=1))
    assert frame == DOC_FRAME


def test_the_profiles_pulse_declaration_builds_the_documented_frame() -> None:
    address, value = pulse_words(PULSE, 0, 0.7)
    frame = FramerRTU(DecodePDU(False)).buildFrame(CoilWord(address, value, dev_id=1))
    assert frame == DOC_FRAME
    assert pulse_words(PULSE, 5, 5.0, on=False) == (0x0405, 50)  # flash off: 04, relay 5, 50 x 100 ms
    assert pulse_words(PULSE, 7, 0.3) == (0x0207, 3)


def test_flash_off_frame_decodes_back_on_the_server_side() -> None:
    frame = FramerRTU(DecodePDU(False)).buildFrame(FlashRequest(relay=5, on=False, steps=50, dev_id=3))
    assert frame[:6] == bytes.fromhex("03 05 04 05 00 32")
    decoder = DecodePDU(True)
    decoder.register(WaveshareCoilRequest)
    _used, pdu = FramerRTU(decoder).handleFrame(frame, 0, 0)
    assert isinstance(pdu, WaveshareCoilRequest)
    assert (pdu.dev_id, pdu.address, pdu.value) == (3, 0x0405, 50)


def test_flash_echo_is_checked() -> None:
    request = FlashRequest(relay=2, on=True, steps=30)
    assert FlashResponse(0x0202, 30).echoes(request)
    assert not FlashResponse(0x0202, 31).echoes(request)
    assert not FlashResponse(0x0002, 0xFF00).echoes(request)


@pytest.mark.parametrize(("seconds", "steps"), [(0.1, 1), (0.7, 7), (5.0, 50), (6553.5, 65535)])
def test_pulse_steps(seconds: float, steps: int) -> None:
    assert pulse_steps(PULSE, seconds) == steps


@pytest.mark.parametrize("seconds", [0.0, 0.04, 6553.6, -1.0])
def test_pulse_steps_out_of_range(seconds: float) -> None:
    with pytest.raises(ValueError, match="pulse time"):
        pulse_steps(PULSE, seconds)


async def test_pulse_over_rtu_sends_the_frame_and_the_board_turns_back(tmp_path: Path) -> None:
    spec = DeviceSpec("door-relay", RELAY, 1, poll_s=0.1)
    server = Server([Unit(1).fill(spec, {"ch3": True})])
    async with PtyPair(str(tmp_path / "tty")) as pty, server.serial(pty.sim_device):
        rec = Recorder()
        bus = RtuBus(id="rs485-1", type="rtu", device=pty.device, timeout_s=0.5)
        async with ModbusBus(bus, [spec], rec) as engine:
            await wait_for(lambda: engine.online("door-relay"))
            server.reset()
            started = time.monotonic()
            await engine.pulse("door-relay", 0, 0.7, on=True)
            assert DOC_FRAME in server.frames  # the exact bytes went down the line
            assert await server.get(1, 1, 0, 1) == [True]
            await wait_for(lambda: rec.state("door-relay")["ch0"] is False and time.monotonic() - started > 0.5,
                           timeout_s=3.0)
            assert time.monotonic() - started >= 0.6  # not before its time

            await engine.pulse("door-relay", 3, 0.3, on=False)  # pulse a closed relay open
            assert await server.get(1, 1, 3, 1) == [False]
            await asyncio.sleep(0.6)
            assert await server.get(1, 1, 3, 1) == [True]

            with pytest.raises(WriteError) as err:
                await engine.pulse("door-relay", 0, 0.0)
            assert err.value.code == "out_of_range"
            assert engine.stats()["pulses"] == 2


async def test_all_relays_address_switches_every_channel_like_the_board(tmp_path: Path) -> None:
    spec = DeviceSpec("relays", RELAY, 1)
    server = Server([Unit(1).fill(spec, {"ch2": True})])
    async with PtyPair(str(tmp_path / "tty")) as pty, server.serial(pty.sim_device):
        client = transport.make_client(RtuBus(id="rs485-1", type="rtu", device=pty.device))
        assert await transport.connect(client)
        try:
            await transport.write(client, 1, "coil", ALL_RELAYS_ADDRESS, [COIL_ON], 1.0)
            assert ALL_ON_FRAME in server.frames
            assert await server.get(1, 1, 0, RELAY_CHANNELS) == [True] * RELAY_CHANNELS
            await transport.write(client, 1, "coil", 3, [COIL_OFF], 1.0)
            # no pymodbus request sends COIL_FLIP; FlashResponse is a raw FC05 (address, value) PDU
            await transport.execute(client, FlashResponse(ALL_RELAYS_ADDRESS, COIL_FLIP, dev_id=1), 1.0)
            assert await server.get(1, 1, 0, RELAY_CHANNELS) == [i == 3 for i in range(RELAY_CHANNELS)]
            await transport.write(client, 1, "coil", ALL_RELAYS_ADDRESS, [COIL_OFF], 1.0)
            assert await server.get(1, 1, 0, RELAY_CHANNELS) == [False] * RELAY_CHANNELS
        finally:
            client.close()
