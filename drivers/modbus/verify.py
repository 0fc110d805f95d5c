"""Write verification: a write is done when the fields read back hold the values written."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from drivers.modbus.model import WriteError
from drivers.modbus.planner import DeviceSpec, ReadRequest, plan
from drivers.modbus.profile import Point, decode
from drivers.modbus.transport import TransportError

VERIFY_ATTEMPTS = 3  # a device may apply a write a moment after acknowledging it
VERIFY_DELAY_S = 0.2


class NotHeld(WriteError):
    """The device acknowledged the write but reads back other values."""


def same(point: Point, got: Any, wanted: Any) -> bool:
    """`got` (read back) holds `wanted`, to the register's resolution."""
    if point.enum is not None or point.datatype == "bool" or point.boolean:
        return bool(got == wanted) if point.enum is not None else bool(got) == bool(wanted)
    if got is None:
        return False
    tolerance = abs(point.scale) / 2 if point.datatype != "float32" else abs(float(wanted)) * 1e-6
    return bool(abs(got - wanted) <= tolerance + 1e-9)


async def verify(spec: DeviceSpec, points: Sequence[Point], values: Mapping[str, Any],
                 read: Callable[[ReadRequest], Awaitable[list[int]]]) -> dict[str, Any]:
    """The written fields as read back with `read`; raises NotHeld (or WriteError when a read fails)."""
    fields = [p.field for p in points]
    got: dict[str, Any] = {}
    for attempt in range(VERIFY_ATTEMPTS):
        if attempt:
            await asyncio.sleep(VERIFY_DELAY_S)
        got = {}
        for request in plan([spec], fields=fields):
            try:
                data = await read(request)
            except TransportError as exc:
                raise WriteError("write_failed", f"{spec.device_id}: read-back failed ({exc})") from exc
            for part in request.parts:
                got[part.point.field] = decode(part.point, request.words(part, data)).value
        if all(same(p, got.get(p.field), values[p.field]) for p in points):
            return {f: got[f] for f in fields}
    wrong = {f: got.get(f) for f in fields if not same(spec.profile.point(f), got.get(f), values[f])}
    raise NotHeld("write_failed", f"{spec.device_id}: read back {wrong} after writing {dict(values)}")
