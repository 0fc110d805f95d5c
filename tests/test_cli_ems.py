"""`campus-edge ems bench|train`: the roof hands each to its tool with the site's paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.sites import two_bus_school

from edge.cli import main as cli_main


def test_ems_train_reads_the_sites_history_and_says_when_there_is_not_enough(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(two_bus_school(tmp_path, 1)), encoding="utf-8")
    assert cli_main(["ems", "train", "--config", str(site), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "history.db" in err or "not enough" in err.lower()


def test_ems_train_without_a_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["ems", "train"])
    assert exc.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_ems_bench_refuses_an_unknown_scenario_key_with_its_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration_h: 1\ncontract_kw: 50\nrooms: {count: 2}\nwhether: {kind: diurnal}\n",
                   encoding="utf-8")
    assert cli_main(["ems", "bench", str(bad), "--controller", "none"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5" in err
    assert "whether" in err


def test_ems_bench_runs_a_scenario_and_writes_its_kpis(tmp_path: Path) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text("name: tiny\nstart: '2026-06-16T08:00:00+08:00'\nduration_h: 0.5\ncontract_kw: 40\n"
                        "rooms: {count: 4, floors: 2}\n", encoding="utf-8")
    out = tmp_path / "kpis.json"
    assert cli_main(["ems", "bench", str(scenario), "--controller", "ems", "--json", str(out)]) == 0
    kpis = json.loads(out.read_text(encoding="utf-8"))
    assert kpis["scenario"] == "tiny"
    assert kpis["controller"] == "ems"
    assert kpis["min_off_violations"] == 0
