"""The RFID driver's door hook (`on_door_tap`), which the access service sets: one `card` event per tap."""

from __future__ import annotations

from conftest import until
from test_rfid_driver import CARD, Sink, peer, reader

from drivers.rfid.driver import RfidDriver
from drivers.rfid.framing import rdm6300_frame
from drivers.rfid.taps import Tap


async def test_door_taps_go_to_the_door_hook_instead_of_a_null_event() -> None:
    sink = Sink()
    door_taps: list[Tap] = []
    all_taps: list[Tap] = []

    async def decide(tap: Tap) -> None:
        door_taps.append(tap)
        if tap.card == "7":
            raise RuntimeError("a bug in the decider")      # the tap is still reported, without a decision
        sink.on_event("card", {"reader": tap.reader, "card": tap.card, "decision": "granted"})

    async def every(tap: Tap) -> None:
        all_taps.append(tap)

    async with peer() as door, peer() as gate, RfidDriver(
            [reader("door-r", door.url, purpose="door", door="door-101"), reader("gate-1", gate.url)], sink) as drv:
        drv.on_door_tap = decide
        drv.on_tap = every
        await until(lambda: len(door.writers) == 1 and len(gate.writers) == 1, what="both connections")
        door.send(rdm6300_frame(CARD))
        await until(lambda: len(sink.cards("door-r")) == 1, what="the door tap's event")
        gate.send(rdm6300_frame(CARD))
        await until(lambda: len(sink.cards("gate-1")) == 1, what="the gate tap's event")
        door.send(rdm6300_frame(7))
        await until(lambda: len(sink.cards("door-r")) == 2, what="the failed decision's event")
        drv.on_door_tap = None                                 # nobody decides: the driver reports door taps
        door.send(rdm6300_frame(8))
        await until(lambda: len(sink.cards("door-r")) == 3, what="the undecided tap's event")
        await until(lambda: len(all_taps) == 4, what="on_tap for every tap")
    cards = [(b["reader"], b["card"], b["decision"]) for k, b in sink.events if k == "card"]
    assert cards == [("door-r", str(CARD), "granted"), ("gate-1", str(CARD), None), ("door-r", "7", None),
                     ("door-r", "8", None)]
    assert [t.card for t in door_taps] == [str(CARD), "7"]
    assert sorted(t.card for t in all_taps) == sorted([str(CARD), str(CARD), "7", "8"])
