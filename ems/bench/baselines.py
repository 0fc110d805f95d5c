"""The bench's baseline controllers (CONTRACT.md section 5), each a plain `ems.types.Controller`.

- `none`: grants everything, never acts: the school as it runs without an energy manager.
- `staggered`: the Ministry's start-up order (DOMAIN.md section 3): at the morning rush the floors
  may start one after another, `floor_delay_s` apart, the top floor first (it is the hottest, under
  the roof); a start asked before its floor's turn is refused with the time it may start. The rush
  begins with the day's first start; starts after the rush are granted at once. It never sheds.
- `threshold`: the naive demand limiter: when the site's power is above `shed_above` (95 %) of the
  contract, it switches off running units, the biggest consumers first, until their measured power
  covers the excess; when the power is below `restore_below` (85 %), it lets go of one unit per
  control period, the longest held first. It grants every request and knows nothing of block
  averages, rooms or comfort.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ems.types import Action, ActionKind, BlockStatus, UnitView

DAY_S = 86400.0


class NoControl:
    """Grants everything, never acts."""

    name = "none"

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        return []

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        return None


class Staggered:
    """Start-up order by floor at the morning rush (top floor first, `floor_delay_s` between floors)."""

    name = "staggered"

    def __init__(self, floor_delay_s: float = 300.0, rush_s: float = 2 * 3600.0) -> None:
        self.floor_delay_s = floor_delay_s
        self.rush_s = rush_s                    # the order applies this long after the day's first start
        self._top: int | None = None
        self._rush_start: float | None = None

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        if units:
            self._top = max(u.floor for u in units)
        return []

    def turn(self, floor: int) -> int:
        """0 for the top floor, 1 for the one below, ..."""
        return max(0, (self._top if self._top is not None else floor) - floor)

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        if fields.get("power_on") is not True or unit.on:
            return None
        if self._rush_start is None or now - self._rush_start >= DAY_S / 2:
            self._rush_start = now              # the first start of the day opens the rush
        if now - self._rush_start >= self.rush_s:
            return None
        at = self._rush_start + self.turn(unit.floor) * self.floor_delay_s
        if now >= at:
            return None
        return f"start-up order by floor: floor {unit.floor} may start in {at - now:.0f} s"


class Threshold:
    """Sheds above `shed_above` x contract, restores one unit per period below `restore_below` x contract."""

    name = "threshold"

    def __init__(self, shed_above: float = 0.95, restore_below: float = 0.85) -> None:
        if not 0 < restore_below < shed_above:
            raise ValueError(f"threshold: restore_below {restore_below} must be below shed_above {shed_above}")
        self.shed_above = shed_above
        self.restore_below = restore_below
        self._held: dict[str, float] = {}       # unit -> when it was shed (insertion order = oldest first)

    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        shed_now = {u.id for u in units if u.shed}
        self._held = {k: v for k, v in self._held.items() if k in shed_now}
        if block.stale or block.power_kw is None:
            return []
        p, c = block.power_kw, block.contract_kw
        if p > self.shed_above * c:
            excess = p - self.shed_above * c
            running = sorted((u for u in units if u.on and not u.shed),
                             key=lambda u: (-(u.power_kw if u.power_kw is not None else u.rated_kw), u.id))
            out = []
            for u in running:
                if excess <= 0:
                    break
                excess -= u.power_kw if u.power_kw is not None else u.rated_kw
                self._held[u.id] = now
                out.append(Action(u.id, ActionKind.SHED_OFF, {"power_on": False},
                                  f"site {p:.1f} kW above {self.shed_above:.0%} of the {c:g} kW contract"))
            return out
        if p < self.restore_below * c and self._held:
            unit = next(iter(self._held))
            del self._held[unit]
            return [Action(unit, ActionKind.RESTORE, {},
                           f"site {p:.1f} kW below {self.restore_below:.0%} of the {c:g} kW contract")]
        return []

    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        return None
