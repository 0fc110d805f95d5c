"""The demand controller: keeps the 15-minute block under the contract while rooms stay comfortable.

Pure and clock-free (every call takes `now`): the daemon runs it every control period on the real
meter through the one way in (as the EMS source of the arbiter), the bench runs the same object
against the virtual school's physics with a simulated clock.

Each step, with C the contract, T the block, tau the time into it and E_tau its energy so far:

- **Need.** The power the rest of the block may draw is P_allow = (C'·T - E_tau)/(T - tau) for the
  target C' = `target_share`·C. The need is what must come off now: P_now - P_allow, less the
  effect of actions of the last `settle_s` that the meter does not show yet.
- **Shed** (need > 0), cheapest comfort first: raise setpoints to the policy's top (28 °C) — a unit
  that modulates down keeps the room within policy — then switch units off. Rooms are chosen by a
  score: empty rooms first, then the most temperature headroom (from the learned room model where
  there is one: minutes until the room reaches the comfort limit with the AC off), then the least
  time already shed in the last hour, then room priority. A unit is never switched off again inside
  `min_on_s` of being given back (compressor starts), nor restarted inside the compressor's minimum
  off time.
- **Rotate.** No room is held off for more than `max_off_s_per_h` within any hour: a unit that
  reaches it is given back, and if the need remains another room takes its turn.
- **Restore** (need < -`restore_margin_kw`): shed units come back one at a time, `restore_gap_s`
  apart (a synchronised rebound would make the next peak), longest-shed first, each only when the
  block has room for its power.
- **Admit.** A lower source's start is granted when its expected power fits the block's headroom
  after the shed rooms waiting to come back; otherwise it is denied with the reason and when to
  try again. Stale meter data grants no new starts (DOMAIN.md §4).
- **Empty rooms.** A unit left on in a room the timetable (or presence) says is empty is switched
  off after `empty_grace_s` — once, not held: a class that comes back may switch it on again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from edge.core.control import Denial, Queued
from ems.types import BLOCK_S, Action, ActionKind, BlockStatus, UnitView

MIN_OFF_MARGIN_S = 30.0   # a shed-off leaves at least the minimum off time plus this within the hourly budget

log = logging.getLogger(__name__)

RiseFn = Callable[[str, float], float | None]   # (room, now) -> °C per hour with the AC off, None if unknown


@dataclass(frozen=True, slots=True)
class EmsPolicy:
    """The controller's knobs (config `ems:`); defaults from DOMAIN.md §3-4."""

    target_share: float = 0.97           # aim this far under the contract: the meter and the units lag
    setpoint_max_c: float = 28.0         # the policy's top: a setpoint shed goes here, no further
    comfort_upper_c: float = 28.0        # a room above this is uncomfortable (DOMAIN.md §6)
    min_off_s: float = 180.0             # compressor minimum off time (the arbiter enforces it too)
    min_on_s: float = 300.0              # a unit given back runs at least this long before a new shed
    max_off_s_per_h: float = 900.0       # occupants notice more than 15 min off in an hour
    restore_gap_s: float = 30.0          # restores are staggered (the ~30 % rebound of duty cycling)
    restore_margin_kw: float = 2.0       # restore only when this far under the target
    settle_s: float = 60.0               # an action shows on the meter within this
    setpoint_shed_share: float = 0.35    # expected cut of a unit's power when its setpoint goes to the top
    empty_grace_s: float = 600.0         # an AC on in an empty room is switched off after this (0: never)
    min_empty_s: float = 1800.0          # ... unless its class is back sooner than this (a break, not a PE lesson)
    return_precool_s: float = 600.0      # ... and switched on again this long before the class is due back
    stale_retry_s: float = 60.0
    queue_starts: bool = True            # a start that does not fit waits its turn (else: denied, try again later)
    queue_hold_s: float = 3600.0         # a queued start's EMS hold expires by itself (the EMS renews by acting)
    min_shed_s: float = 0.0              # a shed is not given back for room within this (rotation may)
    rotate_early_s: float = 60.0         # give a room back this much before its cap (the control period's slack)


@dataclass(slots=True)
class _Unit:
    rated_kw: float = 0.0
    queued: bool = False             # held off since its start was asked for (not switched off by a shed)
    tentative: bool = False          # queued by the admission; confirmed at the next step if the entry took it
    shed: ActionKind | None = None
    shed_since: float = 0.0
    expected_cut_kw: float = 0.0
    off_log: list[tuple[float, float]] = field(default_factory=list)  # EMS-held-off intervals (start, end)
    given_back: float = -math.inf
    empty_since: float | None = None
    switched_off_empty: bool = False
    resume: dict[str, object] | None = None   # what an empty room's unit is switched on with before its class returns


class EmsController:
    """Our controller (`ems.types.Controller`)."""

    name = "ems"

    def __init__(self, policy: EmsPolicy | None = None, *, rise_c_per_h: RiseFn | None = None) -> None:
        self.policy = policy or EmsPolicy()
        self.rise_c_per_h = rise_c_per_h
        self._units: dict[str, _Unit] = {}
        # (ts, kW, unit): cuts (>0) and grants (<0) not yet on the meter
        self._pending: list[tuple[float, float, str]] = []
        self._last_restore = -math.inf
        self._flex: dict[str, float] = {}
        self._room_of: dict[str, str] = {}
        self.compute_s = 0.0

    # -- the numbers ------------------------------------------------------------------------------
    def target_kw(self, block: BlockStatus) -> float:
        return block.contract_kw * self.policy.target_share

    def allow_kw(self, block: BlockStatus) -> float:
        """P_allow for the target: the average power the rest of the block may draw."""
        left = max(BLOCK_S - block.elapsed_s, 1.0)
        return (self.target_kw(block) * BLOCK_S / 3600.0 - block.energy_kwh) * 3600.0 / left

    def _in_flight(self, now: float) -> float:
        """kW of recent cuts (+) and grants (-) the meter does not show yet."""
        self._pending = [p for p in self._pending if now - p[0] < self.policy.settle_s]
        return sum(kw for _t, kw, _u in self._pending)

    def need_kw(self, now: float, block: BlockStatus) -> float:
        """kW that must come off now for the block to end under the target (negative: room to give back)."""
        if block.power_kw is None:
            return 0.0
        return block.power_kw - self._in_flight(now) - self.allow_kw(block)

    def lasting_room_kw(self, now: float, block: BlockStatus) -> float:
        """kW that may be added now and keep running: within this block's allowance and the target itself.

        Load added late in a block that was under the target would fit that block but go on into the
        next, which starts from nothing: a start or a restore must fit both, or it is shed again at
        the turn of the block (a compressor cycle for nothing). Sheds look only at this block's need.
        """
        if block.power_kw is None:
            return 0.0
        return min(self.allow_kw(block), self.target_kw(block)) - (block.power_kw - self._in_flight(now))

    def contract_room_kw(self, now: float, block: BlockStatus) -> float:
        """Like `lasting_room_kw`, against the contract itself rather than the target (the turns' limit)."""
        if block.power_kw is None:
            return 0.0
        left = max(BLOCK_S - block.elapsed_s, 1.0)
        allow = (block.contract_kw * BLOCK_S / 3600.0 - block.energy_kwh) * 3600.0 / left
        return min(allow, block.contract_kw) - (block.power_kw - self._in_flight(now))

    def off_s_last_hour(self, room: str, now: float) -> float:
        """How long within the last hour any unit of `room` was held off by the EMS (shed or queued).

        A room is off for its class while any of its units is: the cap is the room's, not each unit's
        (two units shed one after the other are half an hour of a warm room, not two quarters).
        """
        start = now - 3600.0
        spans: list[tuple[float, float]] = []
        for uid, st in self._units.items():
            if self._room_of.get(uid) != room:
                continue
            st.off_log = [(a, b) for a, b in st.off_log if b > start]
            spans += [(max(a, start), b) for a, b in st.off_log]
            if st.shed == ActionKind.SHED_OFF:
                spans.append((max(st.shed_since, start), now))
        total, reach = 0.0, start
        for a, b in sorted(spans):
            if b > reach:
                total += b - max(a, reach)
                reach = b
        return total

    # -- the loop -----------------------------------------------------------------------------------
    def step(self, now: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        actions: list[Action] = []
        views = {u.id: u for u in units}   # a unit missing (offline for a turn) keeps its state: its hold stands
        self._flex = {u.id: self._unit_kw(u) * self.policy.setpoint_shed_share for u in units
                      if u.on and u.wanted_on and u.setpoint_c < self.policy.setpoint_max_c
                      and self._units.get(u.id, _Unit()).shed is None}
        gone = {u.id for u in units if not u.wanted_on and not u.on}
        self._pending = [p for p in self._pending if not (p[1] < 0 and p[2] in gone)]   # a grant taken back
        for u in units:
            st = self._units.setdefault(u.id, _Unit())
            st.rated_kw = u.rated_kw
            self._room_of[u.id] = u.room
            if st.tentative:   # a queue the entry did not take (a one-shot switch cannot queue) is let go
                st.tentative = False
                if u.on or not u.wanted_on:
                    actions.append(self._give_back(now, u, st, "nobody waits for it", cut_back=False))
                    continue
            if st.shed is not None and not u.wanted_on:
                actions.append(self._give_back(now, u, st, "nobody wants it on any more", cut_back=False))
        actions += self._rotate(now, block, units, views)
        if not block.stale and block.power_kw is not None:
            need = self.need_kw(now, block)
            room = self.lasting_room_kw(now, block)
            if need > 0:
                actions += self._shed(now, need, block, units)
            elif room > self.policy.restore_margin_kw:
                actions += self._restore(now, room, views)
        actions += self._empty_rooms(now, units)
        return actions

    def _rotate(self, now: float, block: BlockStatus, units: Sequence[UnitView],
                views: Mapping[str, UnitView]) -> list[Action]:
        """Give back the units of every room that reached its hourly off cap (those allowed to start), when
        the block can take them or other rooms can take their turn; otherwise the contract comes first and
        the room waits (said in the log)."""
        out: list[Action] = []
        cap = self.policy.max_off_s_per_h
        due: dict[str, list[tuple[UnitView, _Unit]]] = {}
        for uid, st in self._units.items():
            u = views.get(uid)
            if u is None or st.shed != ActionKind.SHED_OFF or now - st.shed_since < self.policy.min_off_s:
                continue
            if self.off_s_last_hour(u.room, now) >= cap - self.policy.rotate_early_s:
                due.setdefault(u.room, []).append((u, st))
        if not due:
            return out
        spare = self.contract_room_kw(now, block) + self._sheddable_kw(now, units, set(due)) \
            if not block.stale and block.power_kw is not None else math.inf
        for room, members in sorted(due.items()):
            back = sum(u.rated_kw for u, _st in members)
            if back > spare:
                log.info("ems: %s has been off its share of the hour, but no other room can take its turn now", room)
                continue
            spare -= back
            why = f"its {cap / 60:.0f} minutes off in the hour are used: its turn is over"
            out += [self._give_back(now, u, st, why) for u, st in members]
        return out

    def _sheddable_kw(self, now: float, units: Sequence[UnitView], rooms_out: set[str]) -> float:
        """kW that the next shed could still take off other rooms (units on, past min_on, budget left)."""
        p = self.policy
        total = 0.0
        for u in units:
            st = self._units.get(u.id)
            if st is None or u.room in rooms_out or not (u.on and u.wanted_on) or st.shed == ActionKind.SHED_OFF:
                continue
            if now - st.given_back < p.min_on_s or \
                    self.off_s_last_hour(u.room, now) > p.max_off_s_per_h - p.min_off_s - MIN_OFF_MARGIN_S:
                continue
            total += self._unit_kw(u) - (st.expected_cut_kw if st.shed == ActionKind.SHED_SETPOINT else 0.0)
        return total

    def _give_back(self, now: float, u: UnitView, st: _Unit, why: str, *, cut_back: bool = True) -> Action:
        if st.shed == ActionKind.SHED_OFF:
            st.off_log.append((st.shed_since, now))
        back = max(st.expected_cut_kw, st.rated_kw if st.queued else 0.0)
        if cut_back and back:
            self._pending.append((now, -back, u.id))
        queued, st.queued = st.queued, False
        st.shed, st.expected_cut_kw, st.given_back = None, 0.0, now
        self._last_restore = now
        return Action(u.id, ActionKind.RESTORE, {}, f"{u.room}: {'started' if queued else 'restored'} ({why})")

    def _headroom_min(self, now: float, u: UnitView) -> float:
        """Minutes until the room reaches the comfort limit with its AC off (bigger: shed it sooner)."""
        if u.room_temp_c is None:
            return 0.0
        margin = self.policy.comfort_upper_c - u.room_temp_c
        rise = self.rise_c_per_h(u.room, now) if self.rise_c_per_h is not None else None
        if rise is None or rise <= 0.05:
            rise = 1.5   # a classroom with its AC off warms about this fast on a hot afternoon (simulator)
        return max(-30.0, 60.0 * margin / rise)

    def _score(self, now: float, u: UnitView) -> tuple[int, int, int, float, str]:
        """Lower: shed first."""
        empty = 0 if u.occupied is False else 1
        return (u.priority, empty, round(self.off_s_last_hour(u.room, now) / 60.0),
                -self._headroom_min(now, u), u.id)

    def _unit_kw(self, u: UnitView) -> float:
        return u.power_kw if u.power_kw is not None else u.rated_kw * 0.8

    def _shed(self, now: float, need: float, block: BlockStatus, units: Sequence[UnitView]) -> list[Action]:
        out: list[Action] = []
        p = self.policy
        order = sorted((u for u in units if u.on and u.wanted_on), key=lambda u: self._score(now, u))
        why = (f"projected {block.projected_kw:.0f} kW for the block against {self.target_kw(block):.0f} kW"
               f" (contract {block.contract_kw:.0f} kW)")
        for u in order:     # first the setpoints: the room stays within policy
            if need <= 0:
                return out
            st = self._units[u.id]
            if st.shed is None and u.setpoint_c < p.setpoint_max_c and now - st.given_back >= p.min_on_s:
                cut = self._unit_kw(u) * p.setpoint_shed_share
                st.shed, st.shed_since, st.expected_cut_kw = ActionKind.SHED_SETPOINT, now, cut
                self._pending.append((now, cut, u.id))
                need -= cut
                out.append(Action(u.id, ActionKind.SHED_SETPOINT, {"setpoint_c": p.setpoint_max_c},
                                  f"{u.room}: setpoint raised to {p.setpoint_max_c:g} °C; {why}"))
        for u in order:     # then units off, within each room's hourly budget
            if need <= 0:
                return out
            st = self._units[u.id]
            if st.shed == ActionKind.SHED_OFF or now - st.given_back < p.min_on_s:
                continue
            if self.off_s_last_hour(u.room, now) > p.max_off_s_per_h - p.min_off_s - MIN_OFF_MARGIN_S:
                continue   # its hourly budget ends before the compressor may restart: the cap would break
            need -= self._switch_off(now, u, st)
            out.append(Action(u.id, ActionKind.SHED_OFF, {"power_on": False}, f"{u.room}: switched off; {why}"))
        if need > 0 and block.projected_kw > block.contract_kw:
            # the block would end over the contract itself: money first, the rooms' turns and min_on after
            for u in order:
                if need <= 0:
                    break
                st = self._units[u.id]
                if st.shed == ActionKind.SHED_OFF:
                    continue
                need -= self._switch_off(now, u, st)
                out.append(Action(u.id, ActionKind.SHED_OFF, {"power_on": False},
                                  f"{u.room}: switched off to keep the block under the contract; {why}"))
        return out

    def _switch_off(self, now: float, u: UnitView, st: _Unit) -> float:
        """Mark `u` held off; the kW it is expected to take off the meter."""
        cut = self._unit_kw(u) - (st.expected_cut_kw if st.shed == ActionKind.SHED_SETPOINT else 0.0)
        st.shed, st.shed_since, st.expected_cut_kw = ActionKind.SHED_OFF, now, self._unit_kw(u)
        self._pending.append((now, cut, u.id))
        return cut

    def _restore(self, now: float, room_kw: float, views: Mapping[str, UnitView]) -> list[Action]:
        if now - self._last_restore < self.policy.restore_gap_s:
            return []
        waiting = [(st.shed != ActionKind.SHED_OFF, st.shed_since, uid) for uid, st in self._units.items()
                   if st.shed is not None and uid in views]
        for _setpoint_only, _since, uid in sorted(waiting):
            st, u = self._units[uid], views[uid]
            if st.shed == ActionKind.SHED_OFF and now - st.shed_since < self.policy.min_off_s:
                continue
            if not st.queued and now - st.shed_since < self.policy.min_shed_s:
                continue   # a shed lasts a while: restoring at once would buy a compressor cycle for nothing
            back = u.rated_kw if st.shed == ActionKind.SHED_OFF else st.expected_cut_kw
            if back <= room_kw:
                return [self._give_back(now, u, st, "the block has room again")]
        return []

    def _empty_rooms(self, now: float, units: Sequence[UnitView]) -> list[Action]:
        """Energy, not demand: an AC on in an empty room is switched off after the grace, unless its class is
        back too soon for it to pay (`min_empty_s`); one switched off while its class is away (a PE lesson)
        is switched on again `return_precool_s` before the class is due back, as it was."""
        out = []
        p = self.policy
        for u in units:
            st = self._units[u.id]
            if u.occupied is not False:
                st.empty_since, st.switched_off_empty, st.resume = None, False, None
                continue
            if st.empty_since is None:
                st.empty_since = now
            soon = u.back_at is not None and u.back_at - now < p.min_empty_s
            if p.empty_grace_s > 0 and u.on and u.wanted_on and st.shed is None and not st.switched_off_empty \
                    and now - st.empty_since >= p.empty_grace_s and not soon:
                st.switched_off_empty = True
                st.resume = {"power_on": True, "setpoint_c": u.wanted_setpoint_c} if u.back_at is not None else None
                out.append(Action(u.id, ActionKind.SWITCH_OFF, {"power_on": False},
                                  f"{u.room}: on in an empty room for {p.empty_grace_s / 60:.0f} min: switched off"))
            elif st.resume is not None and u.back_at is not None and u.back_at - now <= p.return_precool_s \
                    and not u.on and not u.wanted_on:
                fields, st.resume = st.resume, None
                out.append(Action(u.id, ActionKind.PRECOOL, fields,
                                  f"{u.room}: switched on again before its class is back"))
        return out

    # -- admission ------------------------------------------------------------------------------------
    def admit(self, now: float, block: BlockStatus, unit: UnitView, fields: Mapping[str, object]) -> str | None:
        answer = self.admission(now, block, unit, fields)
        return None if answer is None else answer.message

    def flex_kw(self, now: float) -> float:
        """kW the running units would give by a setpoint shed that has not been made yet (the cheap reserve)."""
        return sum(self._flex.values())

    def admission(self, now: float, block: BlockStatus, unit: UnitView,
                  fields: Mapping[str, object]) -> Denial | Queued | None:
        """A lower source's request: None to grant; a start that does not fit is queued (its turn comes
        like a shed unit's) or, with `queue_starts` off, denied with when to try again."""
        starts = fields.get("power_on") is True and not unit.on
        if not starts or unit.shed:
            return None   # no new load (or the EMS holds the unit: the wish is stored and comes back later)
        if block.stale or block.power_kw is None:
            return Denial("denied_by_ems", "the site meter has not been read recently: no new starts until it is",
                          self.policy.stale_retry_s)
        waiting = sum(unit_kw for uid, unit_kw in self._waiting_kw().items() if uid != unit.id)
        room = self.lasting_room_kw(now, block) - waiting + self.flex_kw(now)
        if unit.rated_kw <= room:
            self._pending.append((now, -unit.rated_kw, unit.id))
            return None
        why = (f"starting {unit.id} ({unit.rated_kw:.1f} kW) now would take this 15-minute block over"
               f" {self.target_kw(block):.0f} kW (projected {block.projected_kw:.0f} kW,"
               f" contract {block.contract_kw:.0f} kW)")
        budget = self.policy.max_off_s_per_h - self.off_s_last_hour(unit.room, now)
        if budget < self.policy.min_off_s + MIN_OFF_MARGIN_S:
            self._pending.append((now, -unit.rated_kw, unit.id))
            return None   # the room has been held off its share of the hour: its turn, others are shed instead
        if self.policy.queue_starts:
            st = self._units.setdefault(unit.id, _Unit())
            st.rated_kw = unit.rated_kw
            self._room_of[unit.id] = unit.room
            st.shed, st.shed_since, st.expected_cut_kw = ActionKind.SHED_OFF, now, 0.0
            st.queued = st.tentative = True
            return Queued(f"{why}; it starts when the block has room, in turn", self.policy.queue_hold_s)
        retry = BLOCK_S - block.elapsed_s if block.elapsed_s > BLOCK_S / 2 else 120.0
        return Denial("denied_by_ems", why, retry)

    def _waiting_kw(self) -> dict[str, float]:
        """Units held off (shed or queued) that come back before any new start: their kW."""
        return {uid: st.rated_kw for uid, st in self._units.items() if st.shed == ActionKind.SHED_OFF}

    # -- what the daemon shows ----------------------------------------------------------------------
    def shed_units(self) -> dict[str, str]:
        return {uid: st.shed.value for uid, st in self._units.items() if st.shed is not None}
