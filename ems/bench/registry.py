"""The controllers the bench can run, by name: each a factory given the scenario and the school.

A factory gets the whole `Scenario` and the `BenchSchool` before the run starts, so a controller that
plans with perfect foresight (the oracle) can read the weather, the timetable and the rooms up front;
the others ignore both. The daemon's controller is imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from ems.bench.baselines import NoControl, Staggered, Threshold
from ems.bench.sim import BenchSchool
from ems.scenario import Scenario
from ems.types import Controller

Factory = Callable[[Scenario, BenchSchool], Controller]


class ControllerUnavailable(Exception):
    """A known controller whose code is not there (or failed to load)."""


def _ems(_sc: Scenario, _school: BenchSchool) -> Controller:
    """The energy manager the daemon runs (`ems.controller.EmsController`), with its defaults."""
    try:
        module = importlib.import_module("ems.controller")
        cls = module.EmsController
    except (ImportError, AttributeError) as exc:
        raise ControllerUnavailable(
            f"controller 'ems' needs ems/controller.py with class EmsController, which could not be loaded: {exc}"
        ) from exc
    return cast(Controller, cls())


def _oracle(sc: Scenario, school: BenchSchool) -> Controller:
    """The perfect-foresight optimum (ems.oracle, HiGHS): plans the whole day before the run starts."""
    try:
        from ems.bench.oracle_plan import OraclePlan  # lazy: scipy's HiGHS only when the oracle runs
    except ImportError as exc:
        raise ControllerUnavailable(f"controller 'oracle' needs scipy (requirements-ems.txt): {exc}") from exc
    return cast(Controller, OraclePlan(sc, school, time_limit_s=ORACLE_TIME_LIMIT_S))


ORACLE_TIME_LIMIT_S = 600.0   # the budget for a 100-classroom day here


CONTROLLERS: dict[str, Factory] = {
    "none": lambda _sc, _school: NoControl(),
    "staggered": lambda _sc, _school: Staggered(),
    "threshold": lambda _sc, _school: Threshold(),
    "ems": _ems,
    "oracle": _oracle,
}


def make_controller(name: str, sc: Scenario, school: BenchSchool) -> Controller:
    """The controller `name` for this scenario; KeyError for an unknown name, ControllerUnavailable if missing."""
    if name not in CONTROLLERS:
        raise KeyError(f"unknown controller {name!r}; known: {', '.join(CONTROLLERS)}")
    return CONTROLLERS[name](sc, school)
