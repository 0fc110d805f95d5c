"""The cloud tests' private broker (it lives in simulator.local) and small school (in helpers.sites)."""

from __future__ import annotations

from helpers.sites import small_school

from simulator.local import Broker, free_port

__all__ = ["Broker", "free_port", "small_school"]
