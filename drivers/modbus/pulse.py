"""Timed pulse, the capability a relay profile declares with `pulse:`.

One write switches a channel for a time and the board switches it back by itself, so a door
strike re-locks even if the gateway dies.  The write is FC05 whose address word is the profile's
on (or off) address plus the channel and whose value word is the time in the profile's steps.
pymodbus' write_coil only sends 0xFF00/0x0000, hence `CoilWord`: FC05 with free address and value
words, as request and as response.  Registered on a client (`client.register`) it also decodes
plain FC05 echoes, so ordinary coil writes keep working.
"""

from __future__ import annotations

import struct

from pymodbus.pdu.bit_message import WriteSingleCoilResponse

from drivers.modbus.profile import Pulse

# FC05 words of relay boards, as the simulator serves them (the engine takes its pulse from the profile).
COIL_ON = 0xFF00  # Modbus FC05 value words
COIL_OFF = 0x0000
COIL_FLIP = 0x5500  # Waveshare extension: toggle the relay
ALL_RELAYS_ADDRESS = 0x00FF  # Waveshare extension: COIL_ON / COIL_OFF / COIL_FLIP every relay at once
FLASH_ON = 0x02  # Waveshare timed flash: high byte of the address word (the low byte is the relay index)...
FLASH_OFF = 0x04
FLASH_STEP_S = 0.1  # ...and the value word counts the flash time in 100 ms units


class CoilWord(WriteSingleCoilResponse):
    """FC05 with raw address and value words; the device echoes the request."""

    def __init__(self, address: int = 0, value: int = 0, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(address=address, bits=[bool(value)], dev_id=dev_id, transaction_id=transaction_id)
        self.value = value

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.value)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])
        self.bits = [bool(self.value)]


def pulse_steps(pulse: Pulse, seconds: float) -> int:
    """The time in the device's steps; ValueError outside what its value word holds."""
    steps = round(seconds / pulse.step_s)
    if not 1 <= steps <= pulse.max_steps:
        raise ValueError(f"pulse time {seconds} s outside {pulse.step_s:g}..{pulse.max_steps * pulse.step_s:g} s")
    return steps


def pulse_words(pulse: Pulse, channel: int, seconds: float, *, on: bool = True) -> tuple[int, int]:
    """(address word, value word) that switch `channel` on (or off) for `seconds`; ValueError if impossible."""
    base = pulse.on_address if on else pulse.off_address
    if base is None:
        raise ValueError("the device cannot pulse a channel off")
    return base + channel, pulse_steps(pulse, seconds)
