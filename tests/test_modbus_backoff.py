"""Backoff of a dead device or unit, through the bus's own scheduling code on a manual clock.

The poll loop is played by hand: ask the `Poller` what is due, run it (the read always fails),
move the clock to the next time it names.  A dead device must be probed after 1, 2, 4 ... s and
then every 300 s +-20 %, never later, whichever way it fails.
"""

from __future__ import annotations

import itertools
import random

import pytest
from modbus_server import Recorder

from drivers.modbus.health import BACKOFF_MAX_S, Health
from drivers.modbus.model import GuardedSink
from drivers.modbus.planner import DeviceSpec, ReadRequest
from drivers.modbus.polling import Poller
from drivers.modbus.profile import load_profile
from drivers.modbus.state import BusContext, DeviceState
from drivers.modbus.transport import DeviceException, Timeout, TransportError

INTESIS = load_profile("intesis-inmbsdai")
PROBES = 24  # enough to reach the cap (after ~9) and stay there


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def failure(fault: str) -> TransportError:
    return DeviceException(2, 3) if fault == "exception" else Timeout("no answer")


@pytest.mark.parametrize("fault", ["exception", "timeout"])  # the device backs off alone / its unit does
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_dead_device_is_probed_with_doubling_delays_capped_at_five_minutes(fault: str, seed: int) -> None:
    clock = ManualClock()
    spec = DeviceSpec("in3", INTESIS, 3, poll_s=0.5)
    rec = Recorder()
    ctx = BusContext("bus", {"in3": DeviceState(spec)}, GuardedSink(rec, "bus"), clock, clock.time)
    health = Health(ctx, random.Random(seed))
    reads: list[tuple[float, int]] = []

    async def dead(request: ReadRequest, attempts: int) -> list[int]:
        reads.append((clock.now, attempts))
        raise failure(fault)

    poller = Poller(ctx, health, dead, retries=1, lost=pytest.fail, wake=lambda: None)
    poller.replan()
    while len(reads) < PROBES:
        ready, next_at = poller.due(clock.now)
        for poll in ready:
            await poller.run(poll)
        assert next_at > clock.now
        clock.now = next_at

    times = [t for t, _attempts in reads]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for n, gap in enumerate(gaps):
        nominal = min(BACKOFF_MAX_S, 2.0**n)
        assert 0.8 * nominal <= gap <= 1.2 * nominal, (n, gaps)
    assert max(gaps) <= 360.0
    at_cap = gaps[10:]
    assert all(240.0 <= g <= 360.0 for g in at_cap), at_cap
    assert len(set(at_cap)) > 1  # jittered, so devices that died together do not retry together
    assert [a for _t, a in reads] == [2] + [1] * (PROBES - 1)  # the first read is retried, probes are not
    assert rec.last_health("in3").online is False
    assert rec.last_health("in3").reason == ("exception code 2" if fault == "exception" else "timeout")
