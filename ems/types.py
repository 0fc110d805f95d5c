"""The energy manager's vocabulary, shared by the controller, the bench and the daemon.

Pure data: no clock, no I/O. Times are unix seconds; powers are kW; temperatures °C.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

BLOCK_S = 900.0  # Taipower demand: the average power over a clock-aligned 15-minute block


@dataclass(frozen=True, slots=True)
class BlockStatus:
    """Where the present 15-minute block stands (DOMAIN.md section 2)."""

    start: float               # unix time the block began (a multiple of BLOCK_S)
    elapsed_s: float           # tau: seconds of the block behind us
    energy_kwh: float          # E_tau: energy drawn in the block so far
    avg_kw: float              # block average so far (E_tau / tau)
    projected_kw: float        # the block's average if the present power holds to its end
    allow_kw: float            # P_allow = (C*T - E_tau) / (T - tau): power allowed for the rest of the block
    power_kw: float | None     # latest site power; None when the meter has not been read
    contract_kw: float         # C
    stale: bool                # meter data too old or missing: no headroom for new starts

    @property
    def headroom_kw(self) -> float:
        """kW that may still be added now without the block going over; 0 when the data is stale."""
        if self.stale or self.power_kw is None:
            return 0.0
        return max(0.0, self.allow_kw - self.power_kw)


@dataclass(frozen=True, slots=True)
class UnitView:
    """One AC unit as a controller sees it."""

    id: str
    room: str
    floor: int
    rated_kw: float                 # electrical input at full output (config per unit)
    power_kw: float | None          # measured, where the unit reports it
    on: bool                        # what the unit does now (read back)
    setpoint_c: float
    room_temp_c: float | None
    wanted_on: bool                 # what it would do without the energy manager (teacher, schedule, ...)
    wanted_setpoint_c: float
    off_since: float | None         # when it last stopped (the compressor's minimum off time)
    occupied: bool | None = None    # timetable or presence says the class is in; None = unknown
    priority: int = 0               # higher: shed later (a health centre, a room with a sick child)
    shed: bool = False              # the energy manager holds it now
    back_at: float | None = None    # an empty room: when its class is due back today (None: not today / unknown)


class ActionKind(StrEnum):
    SHED_SETPOINT = "shed_setpoint"   # setpoint raised within policy
    SHED_OFF = "shed_off"             # switched off for demand
    RESTORE = "restore"               # the energy manager lets go: the lower holder's wish returns
    SWITCH_OFF = "switch_off"         # on in an empty room past the grace time (energy, not demand): once, not held
    PRECOOL = "precool"               # switched on before the room's usual start, where the block has room: once
    HOLD = "hold"                     # these fields held at the EMS priority (the bench's oracle replays its plan)


@dataclass(frozen=True, slots=True)
class Action:
    """What a controller wants done to one unit, at the energy manager's priority."""

    unit: str
    kind: ActionKind
    fields: Mapping[str, object]      # {} for RESTORE (the hold is released)
    reason: str                       # plain words, for the `ems` event and the log


class Controller(Protocol):
    """A demand controller: the daemon and the bench run the same object with a clock of their own."""

    name: str

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        """Called every control period (10 s by default)."""
        ...

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        """A lower source asks to start or change `unit`: None to grant, else the reason (denied_by_ems)."""
        ...
