"""`--plot`: site demand against the contract with the block averages, and the rooms' temperatures."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ems.bench import kpis as K
from ems.bench.runner import BenchRun, median_and_worst


def plot_run(run: BenchRun, path: Path) -> None:
    """Write a two-panel PNG: demand (top) and room air temperatures (bottom)."""
    import matplotlib  # lazy: the bench draws only when asked, and the daemon never imports this module

    matplotlib.use("Agg")
    import matplotlib.dates as mdates  # lazy: see above
    import matplotlib.pyplot as plt  # lazy: see above

    sc = run.scenario
    tz = sc.start.tzinfo
    step = run.step_s
    edges = [datetime.fromtimestamp(run.t0 + i * step, tz) for i in range(run.steps + 1)]
    blocks = K.block_demands(run.t0, step, run.site_kw)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, height_ratios=(3, 2))
    top.plot(edges[:-1], list(run.site_kw), lw=0.6, color="0.55", label="site power")
    bx: list[datetime] = []
    by: list[float] = []
    for start, avg in blocks:
        bx += [datetime.fromtimestamp(max(start, run.t0), tz),
               datetime.fromtimestamp(min(start + 900.0, run.t0 + run.steps * step), tz)]
        by += [avg, avg]
    top.plot(bx, by, lw=2.0, color="tab:blue", label="15-min block average")
    top.axhline(sc.contract_kw, color="tab:red", ls="--", lw=1.2, label=f"contract {sc.contract_kw:g} kW")
    top.set_ylabel("kW")
    top.set_ylim(bottom=0)
    top.set_title(f"{sc.name}: {run.controller}")
    top.legend(loc="upper right", fontsize=8)
    top.grid(alpha=0.3)
    med, worst = median_and_worst(run)
    bottom.plot(edges, med, color="tab:green", label="median room")
    bottom.plot(edges, worst, color="tab:orange", label="hottest room")
    bottom.axhline(sc.comfort.upper_c, color="tab:red", ls="--", lw=1.2,
                   label=f"comfort limit {sc.comfort.upper_c:g} °C")
    bottom.set_ylabel("room air °C")
    bottom.legend(loc="upper right", fontsize=8)
    bottom.grid(alpha=0.3)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))  # type: ignore[no-untyped-call]
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
