"""The EMS bench (CONTRACT.md section 5): scenarios run under a controller against the simulator's physics.

Offline only: the daemon never imports this package (it may use numpy, matplotlib and tqdm, lazily).
"""

from __future__ import annotations

from ems.bench.registry import CONTROLLERS, ControllerUnavailable, Factory, make_controller
from ems.bench.runner import BenchError, BenchRun, compute_kpis, main, run_bench, simulate

__all__ = ["CONTROLLERS", "BenchError", "BenchRun", "ControllerUnavailable", "Factory", "compute_kpis", "main",
           "make_controller", "run_bench", "simulate"]
