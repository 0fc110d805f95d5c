"""Hostile YAML in a site config: each runaway structure is a problem with file:line, never a hang or a traceback."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.core.loader import MAX_ALIAS_NODES, MAX_DEPTH, ConfigError, load_config, load_yaml_with_lines

EXE = [sys.executable, "-m", "edge.cli"]
SITE = 'site: {school_id: "014601", gateway_id: gw-a}\n'


def _laughs(levels: int) -> str:
    """The "billion laughs": each level a list of nine aliases of the one before (9**levels strings)."""
    names = "abcdefghijklmnop"
    out = SITE + f'{names[0]}: &{names[0]} [{", ".join(["lol"] * 9)}]\n'
    for prev, name in itertools.pairwise(names[:levels]):
        out += f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]\n"
    return out


HOSTILE = {
    # name: (file text, line of the problem, words of the message)
    "billion-laughs": (_laughs(9) + "rooms: *i\n", 7, f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes"),
    "recursive-alias-in-a-list": (SITE + "rooms: &r [*r]\n", 2, "recursive alias *r"),
    "recursive-alias-in-a-mapping": (SITE + "storage: &s\n  path: /var/lib/x\n  again: *s\n", 4, "recursive alias *s"),
    "deep-nesting": (SITE + "rooms: " + "[" * 5000 + "]" * 5000 + "\n", 2, f"nesting deeper than {MAX_DEPTH} levels"),
    "deep-through-aliases": (SITE + "".join(f"l{i}: &l{i} [[[[[[[[[[{f'*l{i - 1}' if i else 'x'}]]]]]]]]]]\n"
                                            for i in range(8)), 8, f"nesting deeper than {MAX_DEPTH} levels"),
    "list-as-key": (SITE + "? [a, b]\n: 1\n", 2, "a key must be plain text or a number"),
    "python-tag": (SITE + 'storage: {path: !!python/name:os.system ""}\n', 2, "cannot read this value"),
    "python-tag-on-a-list": (SITE + "rooms: !!python/object/apply:os.system [echo hi]\n", 2,
                             "cannot read this value"),
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", HOSTILE)
def test_check_config_refuses_with_file_and_line(name: str, tmp_path: Path) -> None:
    text, line, words = HOSTILE[name]
    path = _write(tmp_path, name, text)
    try:
        out = subprocess.run([*EXE, "check-config", str(path)], capture_output=True, text=True, timeout=20,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"check-config still running after 20 s on {name}")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{path}:{line}: " in out.stderr, out.stderr
    assert words in out.stderr, out.stderr


@pytest.mark.parametrize("name", HOSTILE)
def test_load_config_raises_one_problem(name: str, tmp_path: Path) -> None:
    text, line, words = HOSTILE[name]
    path = _write(tmp_path, name, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = err.value.problems
    assert (problem.file, problem.line) == (str(path), line)
    assert words in problem.message


def test_anchors_and_aliases_used_a_few_times_still_work(tmp_path: Path) -> None:
    path = _write(tmp_path, "site", SITE + textwrap.dedent("""\
        buses:
          - {id: ac-bus, type: tcp, host: 10.1.2.3, port: 502}
        rooms:
          - {id: "301", floor: 3}
          - {id: "302", floor: 3}
        devices:
          - &ac {id: ac-301a, kind: ac, profile: coolmasternet, bus: ac-bus, unit: 1, index: 1, room: "301"}
          - {id: ac-302a, kind: ac, profile: coolmasternet, bus: ac-bus, unit: 1, index: 2, room: "302"}
        schedules:
          - {id: morning, at: "07:30", targets: &classrooms ["301", "302"],
             set: &cool {power_on: true, mode: cool, setpoint_c: 27}}
          - {id: after-lunch, at: "13:10", targets: *classrooms, set: *cool}
          - {id: evening, at: "17:00", targets: *classrooms, set: {power_on: false}}
        """))
    cfg = load_config(path)
    assert [s.targets for s in cfg.schedules] == [["301", "302"]] * 3
    assert cfg.schedules[1].set == cfg.schedules[0].set == {"power_on": True, "mode": "cool", "setpoint_c": 27}
    assert cfg.devices[0].id == "ac-301a"
    _data, lines, problems = load_yaml_with_lines(path)
    assert not problems
    assert lines[("schedules", 1, "set")] == 13  # where the alias is used, not where its anchor is
    assert lines[("schedules", 0, "set")] == 12


def test_an_alias_used_twice_reports_a_problem_at_each_use(tmp_path: Path) -> None:
    path = _write(tmp_path, "site", SITE + textwrap.dedent("""\
        rooms:
          - &room {id: "301", floor: high}
          - *room
        """))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    floors = [(p.path, p.line) for p in err.value.problems if p.path.endswith("floor")]
    assert ("rooms[0].floor", 3) in floors
    assert any(p.path.startswith("rooms[1]") for p in err.value.problems)


def test_aliases_below_the_limit_are_counted_not_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "laughs", _laughs(5))  # 9**5 = 59,049 strings: under the limit
    data, _lines, problems = load_yaml_with_lines(path)
    assert not problems
    assert len(data["e"]) == 9
    assert data["e"][8][8][8][8] == ["lol"] * 9
