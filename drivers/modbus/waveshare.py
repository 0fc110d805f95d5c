"""Waveshare Modbus RTU Relay, the board's side: its timed-flash frame, and a server PDU that behaves like it.

The engine does not use this module: it pulses any board whose profile declares `pulse:`
(drivers/modbus/pulse.py, which also holds the board's FC05 words, since the simulator may import
that module and not this one; they are re-exported here).  The timed flash is FC05 whose data is
[0x02 on | 0x04 off, relay, time in 100 ms]; ``FlashRequest`` builds it from those parts
(``flash_steps`` converts the time), ``FlashResponse`` is any FC05 echo that can check one, and
``WaveshareCoilRequest`` is the ``custom_pdu`` of a test server that behaves like the board.
"""

from __future__ import annotations

import asyncio
import struct

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU

from drivers.modbus.pulse import (
    ALL_RELAYS_ADDRESS,
    COIL_FLIP,
    COIL_OFF,
    COIL_ON,
    FLASH_OFF,
    FLASH_ON,
    FLASH_STEP_S,
    CoilWord,
)

__all__ = [
    "ALL_RELAYS_ADDRESS", "COIL_FLIP", "COIL_OFF", "COIL_ON", "FLASH_OFF", "FLASH_ON", "FLASH_STEP_S",
    "MAX_FLASH_STEPS", "RELAY_CHANNELS", "FlashRequest", "FlashResponse", "WaveshareCoilRequest", "flash_steps",
]

MAX_FLASH_STEPS = 0xFFFF
RELAY_CHANNELS = 8


def flash_steps(seconds: float) -> int:
    """Flash time in board units; ValueError outside what the two data bytes hold."""
    steps = round(seconds / FLASH_STEP_S)
    if not 1 <= steps <= MAX_FLASH_STEPS:
        raise ValueError(f"flash time {seconds} s outside {FLASH_STEP_S}..{MAX_FLASH_STEPS * FLASH_STEP_S:g} s")
    return steps


class FlashRequest(ModbusPDU):
    """Turn `relay` on (or off) for `steps` x 100 ms, after which the board reverts it."""

    function_code = 5
    rtu_frame_size = 8

    def __init__(self, relay: int = 0, on: bool = True, steps: int = 1, dev_id: int = 0,
                 transaction_id: int = 0) -> None:
        super().__init__(dev_id=dev_id, transaction_id=transaction_id)
        self.relay = relay
        self.on = on
        self.steps = steps

    @property
    def command(self) -> int:
        return FLASH_ON if self.on else FLASH_OFF

    def encode(self) -> bytes:
        if not 0 <= self.relay <= 0xFF or not 1 <= self.steps <= MAX_FLASH_STEPS:
            raise ValueError(f"flash relay {self.relay} / steps {self.steps} out of range")
        return struct.pack(">BBH", self.command, self.relay, self.steps)

    def decode(self, data: bytes) -> None:
        command, self.relay, self.steps = struct.unpack(">BBH", data[:4])
        self.on = command == FLASH_ON


class FlashResponse(CoilWord):
    """Any FC05 echo: keeps the raw address and value words, so a flash echo can be checked."""

    def echoes(self, request: FlashRequest) -> bool:
        return self.address == (request.command << 8 | request.relay) and self.value == request.steps


class WaveshareCoilRequest(FlashResponse):
    """Server side FC05 as the board does it: plain coil writes, flip, and timed flash."""

    _reverts: set[asyncio.Task[None]] = set()  # noqa: RUF012  (class-wide on purpose: cancel_reverts)

    async def datastore_update(self, context: object, device_id: int) -> ModbusPDU:
        command, relay = self.address >> 8, self.address & 0xFF
        if self.address == ALL_RELAYS_ADDRESS and self.value in (COIL_ON, COIL_OFF, COIL_FLIP):
            for coil in range(RELAY_CHANNELS):
                if rc := await self._switch(context, device_id, coil, self.value):
                    return ExceptionResponse(self.function_code, rc)
        elif command in (FLASH_ON, FLASH_OFF) and self.value >= 1:
            state = command == FLASH_ON
            if await self._set(context, device_id, relay, state):
                return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_ADDRESS)
            task = asyncio.create_task(self._revert(context, device_id, relay, not state, self.value * FLASH_STEP_S))
            self._reverts.add(task)
            task.add_done_callback(self._reverts.discard)
        elif self.value in (COIL_ON, COIL_OFF, COIL_FLIP):
            if rc := await self._switch(context, device_id, self.address, self.value):
                return ExceptionResponse(self.function_code, rc)
        else:
            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
        return FlashResponse(self.address, self.value, dev_id=self.dev_id, transaction_id=self.transaction_id)

    @classmethod
    async def _switch(cls, context: object, device_id: int, coil: int, value: int) -> ExcCodes | None:
        state = value == COIL_ON
        if value == COIL_FLIP:
            current = await context.async_getValues(device_id, 1, coil, 1)  # type: ignore[attr-defined]
            if isinstance(current, ExcCodes):
                return current
            state = not current[0]
        return ExcCodes.ILLEGAL_ADDRESS if await cls._set(context, device_id, coil, state) else None

    @staticmethod
    async def _set(context: object, device_id: int, coil: int, state: bool) -> ExcCodes | None:
        rc: ExcCodes | None = await context.async_setValues(device_id, 5, coil, [state])  # type: ignore[attr-defined]
        return rc

    @classmethod
    async def _revert(cls, context: object, device_id: int, coil: int, state: bool, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        await cls._set(context, device_id, coil, state)

    @classmethod
    async def cancel_reverts(cls) -> None:
        """Stop pending reverts (a server that shuts down)."""
        tasks = list(cls._reverts)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
