"""systemd/install.sh in a throwaway root: layout, seeding, upgrade with rollback, uninstall, udev and timer units.

Every system command (systemctl, useradd, udevadm, ...) is a shim that records its calls and keeps a fake
passwd/group; releases are prepared folders whose `campus-edge` is a small script, or builds by a fake
python whose venv and pip only lay files. Nothing here changes the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
SITE = REPO / "config" / "site.example.yaml"
SYSTEM_COMMANDS = ("systemctl", "udevadm", "useradd", "userdel", "groupadd", "groupdel", "usermod", "getent",
                   "runuser", "chown")

SHIM = r"""#!/bin/bash
# records the call; keeps a fake passwd/group; systemctl answers from the current release's fake-* files
name="$(basename "$0")"
echo "$name $*" >>"$SHIM_DIR/calls"
current="$SHIM_ROOT/opt/campus-edge/current"
case "$name" in
  systemctl)
    case "$1" in
      is-active) st="$(cat "$current/fake-state" 2>/dev/null || echo active)"; echo "$st"; [ "$st" = active ]; exit ;;
      show) n="$(cat "$SHIM_DIR/nrestarts" 2>/dev/null || echo 0)"
            if [ -e "$current/fake-restarting" ]; then n=$((n + 1)); echo "$n" >"$SHIM_DIR/nrestarts"; fi
            echo "$n" ;;
      restart) [ ! -e "$current/fake-restart-fails" ] || exit 1 ;;
    esac ;;
  getent) grep -m1 "^$2:" "$SHIM_DIR/$1"; exit ;;
  groupadd) echo "${*: -1}:x:990:" >>"$SHIM_DIR/group" ;;
  useradd) echo "${*: -1}:x:990:990::/var/lib/campus-edge:/usr/sbin/nologin" >>"$SHIM_DIR/passwd" ;;
  usermod) sed -i -e "s/^$3:\([^:]*\):\([^:]*\):$/$3:\1:\2:$4/" -e "t" -e "s/^$3:.*/&,$4/" "$SHIM_DIR/group" ;;
  userdel) sed -i "/^$1:/d" "$SHIM_DIR/passwd" ;;
  groupdel) sed -i "/^$1:/d" "$SHIM_DIR/group" ;;
  runuser) shift 3; exec "$@" ;;
esac
exit 0
"""

FAKE_PYTHON = r"""#!/bin/bash
# python3 as install.sh uses it: the version probes, `-m venv DIR` and `-m pip install ...`, laying files only
log="$SHIM_DIR/python.log"
if [ "$1" = -c ]; then
  case "$2" in *"version_info <"*) exit 0 ;; *print*) echo "python 3.11"; exit 0 ;; esac
  exit 1
fi
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && echo "venv $3" >>"$log"; exit
fi
if [ "$1 $2" = "-m pip" ]; then
  shift 2
  echo "pip $*" >>"$log"
  venv="$(dirname "$(dirname "$0")")"
  target="" last=""
  while [ $# -gt 0 ]; do case "$1" in --target) target="$2"; shift ;; *) last="$1" ;; esac; shift; done
  if [ -n "$target" ]; then
    mkdir -p "$target/numpy" && echo "fake" >"$target/numpy/__init__.py"
  elif [ -d "$last" ] || [[ "$last" == *.whl ]]; then
    printf '#!/bin/sh\necho "built $*" >>"$SHIM_DIR/campus-edge.log"\n[ "$1" != pythonpath ] || echo "$PYTHONPATH"\n' \
      >"$venv/bin/campus-edge"
    chmod +x "$venv/bin/campus-edge"
  fi
  exit 0
fi
exit 1
"""


@dataclass
class Box:
    """A throwaway root with shims; run() calls install.sh in it."""

    tmp: Path
    root: Path
    shims: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in {c.upper() for c in SYSTEM_COMMANDS} | {"DESTDIR"}}
        env.update({c.upper(): str(self.shims / c) for c in SYSTEM_COMMANDS})
        env.update(SHIM_DIR=str(self.shims), SHIM_ROOT=str(self.root), CAMPUS_EDGE_HEALTH_INTERVAL="0.05",
                   CAMPUS_EDGE_HEALTH_SETTLE="0", PYTHON=str(self.shims / "python3"))
        env.update(extra)
        return env

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(INSTALL), "--root", str(self.root), "--health-timeout", "1", *args],
                              env=env or self.env(), capture_output=True, text=True, timeout=60, check=False)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        out = self.run(*args)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    def calls(self) -> list[str]:
        path = self.shims / "calls"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def forget_calls(self) -> None:
        (self.shims / "calls").unlink(missing_ok=True)

    def group(self, name: str) -> list[str]:
        for line in (self.shims / "group").read_text(encoding="utf-8").splitlines():
            if line.startswith(name + ":"):
                members = line.rsplit(":", 1)[1]
                return members.split(",") if members else []
        raise AssertionError(f"no group {name}")

    def release(self, version: str, *, check_rc: int = 0, answers: bool = True, answers_from: int = 1,
                state: str = "active", restarting: bool = False, runs: bool = True, ems: bool = True) -> Path:
        """A prepared release: RELEASE and a bin/campus-edge that answers as told (status from its Nth call)."""
        rel = self.tmp / "builds" / version
        (rel / "bin").mkdir(parents=True)
        (rel / "RELEASE").write_text(f"version={version}\n", encoding="utf-8")
        no = 'echo "no daemon answering on 127.0.0.1:8765" >&2; exit 1'
        asked = f'"$SHIM_DIR/{version}.asked"'
        count = f"n=$(($(cat {asked} 2>/dev/null || echo 0) + 1)); echo $n >{asked}; "
        status = f"{count}[ $n -ge {answers_from} ] || {{ {no}; }}; exit 0" if answers else no
        refuse = f'echo "config.yaml:14: site.gateway_id: refused by {version}" >&2; ' if check_rc else ""
        (rel / "bin" / "campus-edge").write_text(
            "#!/bin/sh\n"
            f'echo "{version} $*" >>"$SHIM_DIR/campus-edge.log"\n'
            'case "$1" in\n'
            f"  --help) exit {0 if runs else 1} ;;\n"
            f"  check-config) {refuse}exit {check_rc} ;;\n"
            f"  status) {status} ;;\n"
            "esac\n", encoding="utf-8")
        (rel / "bin" / "campus-edge").chmod(0o755)
        if ems:
            (rel / "bin" / "campus-edge-ems").write_text('#!/bin/sh\nexec "$(dirname "$0")/campus-edge" "$@"\n',
                                                          encoding="utf-8")
            (rel / "bin" / "campus-edge-ems").chmod(0o755)
        if state != "active":
            (rel / "fake-state").write_text(state + "\n", encoding="utf-8")
        if restarting:
            (rel / "fake-restarting").touch()
        return rel

    def current(self) -> str:
        link = self.root / "opt/campus-edge/current"
        target = os.readlink(link)
        assert not target.startswith("/"), "current must be relative: the same link works inside the root"
        return Path(target).name

    def releases(self) -> set[str]:
        return {p.name for p in (self.root / "opt/campus-edge/releases").iterdir()}

    def versions_called(self, sub: str) -> list[str]:
        """Which release's campus-edge ran `sub` (check-config, status), in order."""
        log = self.shims / "campus-edge.log"
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return [ln.split()[0] for ln in lines if ln.split()[1:2] == [sub]]


@pytest.fixture
def box(tmp_path: Path) -> Box:
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in SYSTEM_COMMANDS:
        (shims / name).write_text(SHIM, encoding="utf-8")
        (shims / name).chmod(0o755)
    (shims / "python3").write_text(FAKE_PYTHON, encoding="utf-8")
    (shims / "python3").chmod(0o755)
    (shims / "passwd").write_text("root:x:0:0::/root:/bin/bash\n", encoding="utf-8")
    (shims / "group").write_text("root:x:0:\ndialout:x:20:\nbluetooth:x:112:\n", encoding="utf-8")
    return Box(tmp=tmp_path, root=tmp_path / "root", shims=shims)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the script itself -----------------------------------------------------------------------------------------
def test_the_script_parses() -> None:
    out = subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=10, check=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("args", [["--bogus"], ["--purge"], ["--keep", "1"], ["--keep", "x"], ["--from"],
                                  ["--health-timeout", "soon"], ["--from", "/nonexistent/campus-edge"]])
def test_bad_usage_exits_2_saying_what(box: Box, args: list[str]) -> None:
    out = box.run(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "campus-edge install:" in out.stderr
    assert not (box.root / "etc/campus-edge").exists()


def test_help_names_every_action() -> None:
    out = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=10, check=False)
    assert out.returncode == 0
    for word in ("--upgrade", "--rollback", "--uninstall", "--purge", "--root", "--from", "--keep", "--no-ems"):
        assert word in out.stdout


def test_the_guides_use_only_options_the_script_has() -> None:
    helptext = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=10,
                              check=True).stdout
    for doc in (REPO / "docs/install.md", REPO / "README.md"):
        lines = [ln for ln in doc.read_text(encoding="utf-8").splitlines() if "install.sh --" in ln]
        options = {o for ln in lines for o in re.findall(r"install\.sh((?: \[?--[a-z-]+\]?)+)", ln)}
        options = {o for group in options for o in re.findall(r"--[a-z-]+", group)}
        assert {"--upgrade", "--uninstall", "--purge"} <= options, doc
        assert options <= set(re.findall(r"--[a-z-]+", helptext)), (doc, options)


# -- install ------------------------------------------------------------------------------------------------------
def test_install_lays_out_releases_config_state_units_and_udev(box: Box) -> None:
    out = box.ok("--from", str(box.release("1.0")))
    r = box.root
    assert box.current() == "1.0"
    assert (r / "opt/campus-edge/current/bin/campus-edge").exists()
    assert os.readlink(r / "usr/local/bin/campus-edge") == "/opt/campus-edge/current/bin/campus-edge"
    assert "version=1.0" in (r / "opt/campus-edge/releases/1.0/RELEASE").read_text(encoding="utf-8")
    conf = r / "etc/campus-edge/config.yaml"
    assert conf.read_bytes() == SITE.read_bytes()
    assert _mode(conf) == 0o640
    assert _mode(r / "etc/campus-edge") == 0o750
    assert (r / "etc/campus-edge/profiles").is_dir()
    assert _mode(r / "var/lib/campus-edge") == 0o750
    unit = (r / "etc/systemd/system/campus-edge.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/campus-edge/current/bin/campus-edge run --config /etc/campus-edge/config.yaml" in unit
    assert ".venv" not in unit
    assert (r / "etc/systemd/system/campus-edge-train.timer").exists()
    assert (r / "etc/systemd/system/campus-edge-train.service").exists()
    assert (r / "etc/udev/rules.d/70-campus-edge.rules").read_bytes() == \
        (REPO / "systemd/udev/70-campus-edge.rules").read_bytes()
    assert (r / "etc/udev/rules.d/71-campus-edge-local.rules").exists()
    assert not (r / "etc/systemd/system/campus-edge.service.d").exists()  # no beacon scanner in the example
    calls = box.calls()
    assert any(c.startswith("useradd --system --gid campus-edge") and c.endswith(" campus-edge") for c in calls)
    assert "usermod -a -G dialout campus-edge" in calls
    assert not any("bluetooth" in c for c in calls)
    assert box.group("dialout") == ["campus-edge"]
    assert "chown root:campus-edge " + str(conf) in calls
    assert "chown campus-edge:campus-edge " + str(r / "var/lib/campus-edge") in calls
    assert "systemctl daemon-reload" in calls
    assert "systemctl enable --quiet campus-edge.service" in calls
    assert "systemctl enable --quiet --now campus-edge-train.timer" in calls
    assert "udevadm control --reload-rules" in calls
    assert "udevadm trigger --subsystem-match=tty --action=add" in calls
    assert any(c.startswith("runuser -u campus-edge -- ") and c.endswith("check-config " + str(conf)) for c in calls)
    # the daemon is started after its config was checked, then asked whether it answers
    assert calls.index("systemctl restart campus-edge.service") > next(
        i for i, c in enumerate(calls) if "check-config" in c)
    assert set(box.versions_called("status")) == {"1.0"}
    assert "created /etc/campus-edge/config.yaml" in out.stdout


def test_a_rerun_keeps_an_edited_config_and_changes_nothing(box: Box) -> None:
    box.ok("--from", str(box.release("1.0")))
    conf = box.root / "etc/campus-edge/config.yaml"
    conf.write_text(SITE.read_text(encoding="utf-8").replace("gw-a", "gw-b"), encoding="utf-8")
    local = box.root / "etc/udev/rules.d/71-campus-edge-local.rules"
    local.write_text('SUBSYSTEM=="tty", ENV{ID_SERIAL_SHORT}=="X1", SYMLINK+="campus-edge/rs485-1"\n', encoding="utf-8")
    box.forget_calls()
    out = box.ok("--from", str(box.release("2.0")))
    assert "gw-b" in conf.read_text(encoding="utf-8")
    assert "X1" in local.read_text(encoding="utf-8")
    assert box.current() == "1.0"   # a plain install never moves the running code
    assert box.releases() == {"1.0"}
    assert "--upgrade" in out.stdout
    calls = box.calls()
    assert not any(c.startswith(("useradd", "groupadd", "usermod")) for c in calls)
    assert "systemctl daemon-reload" not in calls
    assert "systemctl restart campus-edge.service" not in calls   # running, and nothing changed
    assert not any(c.startswith("udevadm") for c in calls)
    assert box.group("dialout") == ["campus-edge"]


def test_a_rerun_after_a_unit_change_restarts(box: Box) -> None:
    box.ok("--from", str(box.release("1.0")))
    unit = box.root / "etc/systemd/system/campus-edge.service"
    unit.write_text(unit.read_text(encoding="utf-8") + "# edited by hand\n", encoding="utf-8")
    box.forget_calls()
    box.ok()
    assert "# edited by hand" not in unit.read_text(encoding="utf-8")
    assert {"systemctl daemon-reload", "systemctl restart campus-edge.service"} <= set(box.calls())


def test_install_with_a_refused_config_exits_2_without_starting(box: Box) -> None:
    out = box.run("--from", str(box.release("1.0", check_rc=2)))
    assert out.returncode == 2
    assert "refused by 1.0" in out.stderr
    assert "fix /etc/campus-edge/config.yaml" in out.stdout
    assert "systemctl restart campus-edge.service" not in box.calls()


def test_install_whose_daemon_does_not_answer_exits_1(box: Box) -> None:
    out = box.run("--from", str(box.release("1.0", answers=False)))
    assert out.returncode == 1
    assert "does not answer" in out.stderr
    assert "no daemon answering" in out.stderr


def test_a_beacon_scanner_brings_the_bluetooth_group_and_its_removal_takes_it_away(box: Box) -> None:
    box.ok("--from", str(box.release("1.0")))
    conf = box.root / "etc/campus-edge/config.yaml"
    plain = conf.read_text(encoding="utf-8")
    dropin = box.root / "etc/systemd/system/campus-edge.service.d/50-bluetooth.conf"
    conf.write_text(plain + "#  - {id: ble-gate, kind: beacon_scanner}\n", encoding="utf-8")   # commented out
    box.ok()
    assert not dropin.exists()
    assert box.group("bluetooth") == []
    conf.write_text(plain.replace("devices:\n", "devices:\n  - id: ble-gate\n    kind: beacon_scanner\n", 1),
                    encoding="utf-8")
    box.forget_calls()
    box.ok()
    assert "SupplementaryGroups=bluetooth" in dropin.read_text(encoding="utf-8")
    assert box.group("bluetooth") == ["campus-edge"]
    assert {"systemctl daemon-reload", "systemctl restart campus-edge.service"} <= set(box.calls())
    conf.write_text(plain, encoding="utf-8")
    box.ok()
    assert not dropin.exists()


def test_a_release_without_training_libraries_gets_no_timer(box: Box) -> None:
    box.ok("--from", str(box.release("1.0", ems=False)))
    assert not (box.root / "etc/systemd/system/campus-edge-train.timer").exists()
    assert not any("campus-edge-train" in c for c in box.calls())


def test_a_build_that_does_not_run_is_not_installed(box: Box) -> None:
    out = box.run("--from", str(box.release("1.0", runs=False)))
    assert out.returncode == 1
    assert "building release 1.0 failed" in out.stderr
    assert not (box.root / "opt/campus-edge/current").exists()
    assert box.releases() == set()


# -- upgrade ------------------------------------------------------------------------------------------------------
def _installed(box: Box) -> Path:
    box.ok("--from", str(box.release("1.0")))
    state = box.root / "var/lib/campus-edge/state.db"
    state.write_bytes(b"the school's state")
    box.forget_calls()
    return state


def test_upgrade_to_a_good_build_switches_and_keeps_config_and_state(box: Box) -> None:
    state = _installed(box)
    conf = box.root / "etc/campus-edge/config.yaml"
    conf.write_text(conf.read_text(encoding="utf-8").replace("gw-a", "gw-b"), encoding="utf-8")
    out = box.ok("--upgrade", "--from", str(box.release("2.0")))
    assert box.current() == "2.0"
    assert box.releases() == {"1.0", "2.0"}
    assert state.read_bytes() == b"the school's state"
    assert "gw-b" in conf.read_text(encoding="utf-8")
    assert box.versions_called("check-config")[-1] == "2.0"   # the new code judged the existing config
    assert box.versions_called("status")[-1] == "2.0"
    calls = box.calls()
    assert calls.count("systemctl restart campus-edge.service") == 1
    assert "upgraded 1.0 -> 2.0" in out.stdout


def test_upgrade_waits_for_a_daemon_that_answers_after_a_while(box: Box) -> None:
    _installed(box)
    box.ok("--upgrade", "--from", str(box.release("2.0", answers_from=4)))
    assert box.current() == "2.0"
    assert box.versions_called("status").count("2.0") >= 4


def test_upgrade_whose_daemon_does_not_answer_rolls_back(box: Box) -> None:
    state = _installed(box)
    out = box.run("--upgrade", "--from", str(box.release("2.0", answers=False)))
    assert out.returncode == 1
    assert "upgrade to 2.0 failed" in out.stderr
    assert "rolled back to 1.0" in out.stderr
    assert "no daemon answering" in out.stderr   # the reason, as the new release's status said it
    assert box.current() == "1.0"
    assert box.releases() == {"1.0"}
    assert state.read_bytes() == b"the school's state"
    assert box.calls().count("systemctl restart campus-edge.service") == 2   # the new one, then the old one again
    assert box.versions_called("status")[-1] == "1.0"   # the old release was seen answering again


@pytest.mark.parametrize(("kind", "why"), [({"state": "failed"}, "campus-edge.service failed"),
                                           ({"restarting": True}, "then restarted")])
def test_upgrade_whose_service_fails_or_restarts_rolls_back(box: Box, kind: dict[str, object], why: str) -> None:
    _installed(box)
    out = box.run("--upgrade", "--from", str(box.release("2.0", **kind)))  # type: ignore[arg-type]
    assert out.returncode == 1
    assert why in out.stderr
    assert box.current() == "1.0"


def test_upgrade_whose_restart_fails_rolls_back(box: Box) -> None:
    _installed(box)
    bad = box.release("2.0")
    (bad / "fake-restart-fails").touch()
    out = box.run("--upgrade", "--from", str(bad))
    assert out.returncode == 1
    assert "systemctl restart campus-edge.service failed" in out.stderr
    assert box.current() == "1.0"


def test_upgrade_to_a_build_that_refuses_the_config_switches_nothing(box: Box) -> None:
    _installed(box)
    out = box.run("--upgrade", "--from", str(box.release("2.0", check_rc=2)))
    assert out.returncode == 2
    assert "refused by 2.0" in out.stderr
    assert "release 2.0 refuses /etc/campus-edge/config.yaml" in out.stderr
    assert box.current() == "1.0"
    assert box.releases() == {"1.0"}
    assert "systemctl restart campus-edge.service" not in box.calls()


def test_upgrade_keeps_the_last_n_releases(box: Box) -> None:
    _installed(box)
    for v in ("2.0", "3.0", "4.0"):
        box.ok("--upgrade", "--from", str(box.release(v)))
    assert box.releases() == {"2.0", "3.0", "4.0"}   # --keep 3 by default
    box.ok("--upgrade", "--keep", "2", "--from", str(box.release("5.0")))
    assert box.releases() == {"4.0", "5.0"}
    assert box.current() == "5.0"


def test_upgrade_to_the_current_release_does_nothing(box: Box) -> None:
    _installed(box)
    out = box.ok("--upgrade", "--from", str(box.tmp / "builds" / "1.0"))
    assert "nothing to upgrade" in out.stdout
    assert "systemctl restart campus-edge.service" not in box.calls()


def test_upgrade_before_install_exits_2(box: Box) -> None:
    out = box.run("--upgrade", "--from", str(box.release("2.0")))
    assert out.returncode == 2
    assert "not installed" in out.stderr


def test_rollback_goes_to_the_previous_release_and_back(box: Box) -> None:
    _installed(box)
    out = box.run("--rollback")
    assert out.returncode == 2
    assert "no earlier release" in out.stderr
    box.ok("--upgrade", "--from", str(box.release("2.0")))
    box.ok("--upgrade", "--from", str(box.release("3.0")))
    box.ok("--rollback")
    assert box.current() == "2.0"
    assert box.versions_called("status")[-1] == "2.0"
    box.ok("--rollback")
    assert box.current() == "3.0"   # the most recently used other release


# -- builds from a source checkout (a fake python: venv and pip lay files only) ----------------------------------
def _source(box: Box, version: str, ems_pins: str = "numpy==2.4.6\n") -> Path:
    src = box.tmp / "src" / version
    (src / "config").mkdir(parents=True)
    (src / "setup.py").write_text(f'setup(\n    name="campus-edge",\n    version="{version}",\n)\n', encoding="utf-8")
    (src / "requirements.txt").write_text("PyYAML==6.0.3\n", encoding="utf-8")
    (src / "requirements-ems.txt").write_text("# the offline tools\n" + ems_pins, encoding="utf-8")
    (src / "README.md").write_text(f"campus-edge {version}\n", encoding="utf-8")
    shutil.copytree(REPO / "systemd", src / "systemd")
    return src


def test_a_source_build_installs_the_pins_the_project_and_separate_training_libraries(box: Box) -> None:
    box.ok("--from", str(_source(box, "0.1.0")))
    rel = box.root / "opt/campus-edge/releases/0.1.0"
    assert box.current() == "0.1.0"
    pip = [ln for ln in (box.shims / "python.log").read_text(encoding="utf-8").splitlines() if ln.startswith("pip")]
    assert re.search(r"install --prefer-binary -r \S+/requirements\.txt$", pip[0])
    assert re.search(r"install --no-deps \S+/src$", pip[1])   # the project from a copy, not the checkout
    assert f"--only-binary=:all: --target {rel}/ems -r " in pip[2]
    assert "ems=yes" in (rel / "RELEASE").read_text(encoding="utf-8")
    assert (rel / "README.md").read_text(encoding="utf-8") == "campus-edge 0.1.0\n"
    assert not (box.tmp / "src/0.1.0/build").exists()
    # the training libraries are on the path of campus-edge-ems only
    wrapper = subprocess.run([str(box.root / "opt/campus-edge/current/bin/campus-edge-ems"), "pythonpath"],
                             env=box.env(PYTHONPATH=""), capture_output=True, text=True, timeout=10, check=True)
    assert wrapper.stdout.strip() == str(rel / "ems")
    assert not (rel / "lib").exists() or not list((rel / "lib").rglob("numpy"))


def test_an_upgrade_with_the_same_training_pins_shares_them_and_new_pins_install_anew(box: Box) -> None:
    box.ok("--from", str(_source(box, "0.1.0")))
    box.ok("--upgrade", "--from", str(_source(box, "0.2.0")))
    releases = box.root / "opt/campus-edge/releases"
    a, b = releases / "0.1.0/ems/numpy/__init__.py", releases / "0.2.0/ems/numpy/__init__.py"
    assert a.stat().st_ino == b.stat().st_ino   # hard links: one copy on the SD card
    assert "ems=yes (shared with 0.1.0)" in (releases / "0.2.0/RELEASE").read_text(encoding="utf-8")
    targets = [ln for ln in (box.shims / "python.log").read_text(encoding="utf-8").splitlines() if "--target" in ln]
    assert len(targets) == 1
    box.ok("--upgrade", "--from", str(_source(box, "0.3.0", ems_pins="numpy==2.5.0\n")))
    targets = [ln for ln in (box.shims / "python.log").read_text(encoding="utf-8").splitlines() if "--target" in ln]
    assert len(targets) == 2
    assert (releases / "0.3.0/ems/numpy/__init__.py").stat().st_ino != a.stat().st_ino


def test_an_upgrade_to_a_build_without_training_libraries_removes_the_timer(box: Box) -> None:
    box.ok("--from", str(_source(box, "0.1.0")))
    timer = box.root / "etc/systemd/system/campus-edge-train.timer"
    assert timer.exists()
    box.forget_calls()
    box.ok("--upgrade", "--no-ems", "--from", str(_source(box, "0.2.0")))
    rel = box.root / "opt/campus-edge/releases/0.2.0"
    assert not (rel / "ems").exists()
    assert not (rel / "bin/campus-edge-ems").exists()
    assert not timer.exists()
    assert "systemctl disable --now campus-edge-train.timer" in box.calls()


def test_a_wheel_installs_with_its_pins_and_the_units_and_training_pins_of_this_checkout(box: Box) -> None:
    wheel = box.tmp / "dist" / "campus_edge-0.3.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"PK")
    box.ok("--from", str(wheel))
    assert box.current() == "0.3.0"
    pip = [ln for ln in (box.shims / "python.log").read_text(encoding="utf-8").splitlines() if ln.startswith("pip")]
    assert pip[0].endswith(f"install --prefer-binary {wheel}")   # the wheel requires requirements.txt's pins
    assert pip[1].endswith(f"-r {REPO}/requirements-ems.txt")
    installed = box.root / "etc/systemd/system/campus-edge-train.timer"
    assert installed.read_bytes() == (REPO / "systemd/campus-edge-train.timer").read_bytes()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo), *args],
                          capture_output=True, text=True, timeout=20, check=True).stdout.strip()


def test_a_git_checkout_names_its_release_by_commit_and_uncommitted_changes(box: Box) -> None:
    src = _source(box, "0.1.0")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-q", "-m", "x")
    sha = _git(src, "rev-parse", "--short=8", "HEAD")
    box.ok("--from", str(src))
    assert box.current() == f"0.1.0-g{sha}"
    (src / "README.md").write_text("changed\n", encoding="utf-8")
    box.ok("--upgrade", "--from", str(src))
    assert re.fullmatch(rf"0\.1\.0-g{sha}-dirty\.\d{{14}}", box.current())


def test_a_failed_source_build_leaves_nothing_behind(box: Box) -> None:
    _installed(box)
    out = box.run("--upgrade", "--from", str(_source(box, "0.2.0")), env=box.env(PYTHON="/bin/false"))
    assert out.returncode == 1
    assert "older than 3.11" in out.stderr
    assert "building release 0.2.0 failed" in out.stderr
    assert box.current() == "1.0"
    assert box.releases() == {"1.0"}


# -- uninstall ----------------------------------------------------------------------------------------------------
def test_uninstall_removes_the_program_and_keeps_config_and_state(box: Box) -> None:
    state = _installed(box)
    box.ok("--uninstall")
    r = box.root
    assert not (r / "opt/campus-edge").exists()
    for unit in ("campus-edge.service", "campus-edge-train.service", "campus-edge-train.timer"):
        assert not (r / "etc/systemd/system" / unit).exists()
    assert not (r / "etc/udev/rules.d/70-campus-edge.rules").exists()
    assert not (r / "usr/local/bin/campus-edge").is_symlink()
    assert (r / "etc/udev/rules.d/71-campus-edge-local.rules").exists()
    assert (r / "etc/campus-edge/config.yaml").exists()
    assert state.read_bytes() == b"the school's state"
    calls = box.calls()
    assert "systemctl disable --now campus-edge-train.timer campus-edge.service" in calls
    assert "systemctl daemon-reload" in calls
    assert not any(c.startswith(("userdel", "groupdel")) for c in calls)
    box.ok("--uninstall")   # again: nothing left to remove, still fine
    box.ok("--from", str(box.tmp / "builds" / "1.0"))   # and back: the kept config is used, not re-seeded
    assert state.exists()


def test_purge_removes_config_state_local_rules_and_the_user(box: Box) -> None:
    _installed(box)
    box.ok("--uninstall", "--purge")
    r = box.root
    assert not (r / "etc/campus-edge").exists()
    assert not (r / "var/lib/campus-edge").exists()
    assert not (r / "etc/udev/rules.d/71-campus-edge-local.rules").exists()
    assert "userdel campus-edge" in box.calls()
    assert "campus-edge:" not in (box.shims / "passwd").read_text(encoding="utf-8")


@pytest.mark.parametrize("action", [[], ["--upgrade"], ["--uninstall"]])
def test_an_old_checkout_at_opt_campus_edge_is_never_touched(box: Box, action: list[str]) -> None:
    old = box.root / "opt/campus-edge"
    (old / ".venv/bin").mkdir(parents=True)
    (old / "setup.py").write_text("setup()\n", encoding="utf-8")
    out = box.run(*action, "--from", str(box.release("1.0")))
    assert out.returncode == 2
    assert "move it out first" in out.stderr
    assert sorted(p.name for p in old.iterdir()) == [".venv", "setup.py"]
    assert box.calls() == []


# -- never the real system ----------------------------------------------------------------------------------------
def test_under_root_without_shims_no_system_command_runs(box: Box) -> None:
    spy = box.tmp / "spy"
    spy.mkdir()
    for name in SYSTEM_COMMANDS:
        (spy / name).write_text(f'#!/bin/sh\necho "{name} $*" >>"{spy}/ran"\n', encoding="utf-8")
        (spy / name).chmod(0o755)
    env = box.env(PATH=f"{spy}:{os.environ['PATH']}")
    for name in SYSTEM_COMMANDS:
        env.pop(name.upper())
    for args in (["--from", str(box.release("1.0"))], ["--upgrade", "--from", str(box.release("2.0"))],
                 ["--rollback"], ["--uninstall", "--purge"]):
        out = box.run(*args, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "skipped under --root" in out.stdout
    assert not (spy / "ran").exists()


def test_destdir_stages_the_files_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k.upper() not in {c.upper() for c in SYSTEM_COMMANDS}}
    env["DESTDIR"] = str(tmp_path)
    out = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "etc/campus-edge/config.yaml").read_bytes() == SITE.read_bytes()
    assert (tmp_path / "etc/systemd/system/campus-edge-train.timer").exists()
    assert (tmp_path / "etc/udev/rules.d/70-campus-edge.rules").exists()
    assert not (tmp_path / "opt/campus-edge").exists()


# -- the units and the rules themselves -------------------------------------------------------------------------
def _keys(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_the_training_job_runs_the_release_with_its_libraries_as_the_service_user() -> None:
    keys = _keys(REPO / "systemd/campus-edge-train.service")
    assert keys["Type"] == ["oneshot"]
    assert keys["User"] == ["campus-edge"]
    assert keys["ExecStart"] == ["/opt/campus-edge/current/bin/campus-edge-ems ems train "
                                 "--config /etc/campus-edge/config.yaml --no-progress"]
    assert keys["SuccessExitStatus"] == ["2"]   # "not enough history yet" in the first days
    assert keys["Nice"] == ["19"]
    assert keys["ConditionPathExists"] == ["/var/lib/campus-edge/history.db"]
    timer = _keys(REPO / "systemd/campus-edge-train.timer")
    assert timer["OnCalendar"] == ["*-*-* 02:30:00 Asia/Taipei"]
    assert timer["Persistent"] == ["true"]
    assert timer["WantedBy"] == ["timers.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_training_job_is_hardened_and_its_calendar_parses() -> None:
    unit = REPO / "systemd/campus-edge-train.service"
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert m is not None, out.stdout + out.stderr
    assert float(m.group(1)) <= 1.5
    cal = subprocess.run(["systemd-analyze", "calendar", "*-*-* 02:30:00 Asia/Taipei"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert cal.returncode == 0, cal.stderr


UDEV_KEY = re.compile(r'(?P<key>[A-Z_]+(?:\{[A-Za-z0-9_]+\})?)\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"')


def _udev_rules(text: str) -> list[list[tuple[str, str, str]]]:
    """Each rule line as (key, op, value) triples; fails on a line that is not all key-op-"value" pairs."""
    rules: list[list[tuple[str, str, str]]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        pairs = [(m["key"], m["op"], m["value"]) for m in UDEV_KEY.finditer(line)]
        rebuilt = ", ".join(f'{k}{op}"{v}"' for k, op, v in pairs)
        assert re.sub(r"\s*(==|!=|\+=|=)\s*", r"\1", line) == rebuilt, f"line {n}: {line}"
        rules.append(pairs)
    return rules


def test_the_shipped_rules_are_well_formed_and_ignore_modems_only_for_adapter_chips() -> None:
    text = (REPO / "systemd/udev/70-campus-edge.rules").read_text(encoding="utf-8")
    rules = _udev_rules(text)
    labels = {v for r in rules for k, _, v in r if k == "LABEL"}
    gotos = {v for r in rules for k, _, v in r if k == "GOTO"}
    assert gotos <= labels
    vendors = {v for r in rules for k, op, v in r if k == "ENV{ID_VENDOR_ID}" and op == "=="}
    assert vendors == {"0403", "1a86", "10c4", "067b"}   # FTDI, WCH, Silicon Labs, Prolific: never modems
    assert ("ENV{ID_MM_DEVICE_IGNORE}", "=", "1") in [p for r in rules for p in r]
    # only the adapters' block reaches the ModemManager line: everything else jumps to the end first
    mm_line = text.index("ID_MM_DEVICE_IGNORE")
    assert text.rindex('GOTO="campus_edge_end"', 0, mm_line) < text.index('LABEL="campus_edge_adapter"')


def test_the_local_rules_examples_are_valid_rules_naming_dev_campus_edge() -> None:
    text = (REPO / "systemd/udev/71-campus-edge-local.rules").read_text(encoding="utf-8")
    assert _udev_rules(text) == []   # shipped with every line commented out
    examples = [ln[1:] for ln in text.splitlines() if ln.startswith("#SUBSYSTEM")]
    assert len(examples) >= 4
    names = []
    for pairs in _udev_rules("\n".join(examples)):
        keys = {k: v for k, _, v in pairs}
        assert keys["SUBSYSTEM"] == "tty"
        assert "ENV{ID_VENDOR_ID}" in keys
        assert "ENV{ID_SERIAL_SHORT}" in keys or "ENV{ID_PATH}" in keys
        names.append(keys["SYMLINK"])
    assert all(re.fullmatch(r"campus-edge/(rs485-\d+|rfid-[a-z0-9-]+)", n) for n in names), names


# -- one real build, when asked ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CAMPUS_EDGE_REAL_BUILD") != "1",
                    reason="builds a real venv from PyPI (about a minute, needs the network; no wheel cache here): "
                           "set CAMPUS_EDGE_REAL_BUILD=1")
def test_a_real_build_runs_check_config_on_the_seeded_config(box: Box) -> None:
    env = box.env(PYTHON=shutil.which("python3") or "python3")
    env.pop("SYSTEMCTL")   # no daemon runs here to answer the health check: skipped under --root
    out = subprocess.run(["bash", str(INSTALL), "--root", str(box.root), "--no-ems", "--health-timeout", "1"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    rel = box.root / "opt/campus-edge/current"
    assert (rel / "share/campus-edge/profiles").is_dir()
    assert not list((rel / "lib").rglob("numpy"))
    conf = box.root / "etc/campus-edge/config.yaml"
    check = subprocess.run([str(rel / "bin/campus-edge"), "check-config", str(conf)], capture_output=True,
                           text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
