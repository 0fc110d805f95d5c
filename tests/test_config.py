"""load_config: a valid config loads; every problem is reported with file, line and field path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from helpers.sites import two_bus_school

from edge.config import load_config
from edge.core.config import Config, ModbusDevice, RtuBus, TcpBus
from edge.core.loader import ConfigError, ConfigProblem

MINIMAL = """\
site:
  school_id: "014601"
  gateway_id: gw-a
"""

# The CONTRACT.md section 2 example (cloud part left out: it needs key files), in block style so
# that each field has its own line.
SCHOOL = """\
site:
  school_id: "014601"
  gateway_id: gw-a
  timezone: Asia/Taipei
storage:
  path: /var/lib/campus-edge
buses:
  - {id: ac-bus, type: tcp, host: 10.1.2.3, port: 502, timeout_s: 1.0}
  - {id: rs485-1, type: rtu, device: /dev/ttyUSB0, baudrate: 9600, parity: N, stopbits: 1}
rooms:
  - {id: "301", name: "3年1班", floor: 3}
devices:
  - id: ac-301a
    kind: ac
    profile: coolmasternet
    bus: ac-bus
    unit: 1
    index: 1
    room: "301"
  - id: meter-main
    kind: meter
    profile: eastron-sdm630
    bus: rs485-1
    unit: 1
  - id: relay-1
    kind: relay
    profile: waveshare-relay-8ch
    bus: rs485-1
    unit: 2
  - id: door-101
    kind: door
    relay: relay-1
    channel: 0
  - id: reader-101
    kind: rfid
    port: /dev/ttyS0
    framing: rdm6300
    purpose: door
    door: door-101
ems:
  meter: meter-main
  contract_kw: 180
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str) -> list[ConfigProblem]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for p in info.value.problems:
        assert p.file == str(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return info.value.problems


def line_of(text: str, snippet: str, nth: int = 1) -> int:
    """1-based line of the `nth` line containing `snippet`."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if snippet in line]
    return hits[nth - 1]


def only(found: list[ConfigProblem]) -> ConfigProblem:
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def edit(old: str, new: str, base: str = SCHOOL) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


# --- valid configs -----------------------------------------------------------------------------------


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config)
    assert cfg.site.school_id == "014601"
    assert cfg.site.timezone == "Asia/Taipei"
    assert cfg.cloud is None
    assert cfg.ems is None
    assert cfg.devices == []
    assert cfg.storage.path == Path("/var/lib/campus-edge")


def test_contract_example_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SCHOOL))
    assert isinstance(cfg.bus("ac-bus"), TcpBus)
    rtu = cfg.bus("rs485-1")
    assert isinstance(rtu, RtuBus)
    assert rtu.device == "/dev/ttyUSB0"
    assert cfg.room("301").name == "3年1班"
    ac = cfg.device("ac-301a")
    assert isinstance(ac, ModbusDevice)
    assert ac.index == 1
    assert ac.poll_period_s == 2.0
    meter = cfg.device("meter-main")
    assert isinstance(meter, ModbusDevice)
    assert meter.poll_period_s == 1.0
    assert [d.id for d in cfg.relay_channels()] == ["door-101"]
    assert cfg.ems is not None
    assert cfg.ems.contract_kw == 180


def test_load_config_accepts_str_and_pathlike(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert load_config(str(path)) == load_config(path)


# --- one problem class at a time ------------------------------------------------------------------------


def test_unknown_key_top_level(tmp_path: Path) -> None:
    text = MINIMAL + "colour: red\n"
    p = only(problems(tmp_path, text))
    assert (p.line, p.path, p.message) == (line_of(text, "colour"), "colour", "unknown key")


def test_unknown_key_in_a_device(tmp_path: Path) -> None:
    text = edit("    index: 1\n", "    index: 1\n    colour: red\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path, p.message) == (line_of(text, "colour"), "devices[0].colour", "unknown key")
    assert str(p) == f"{tmp_path / 'site.yaml'}:{p.line}: devices[0].colour: unknown key"


def test_wrong_type(tmp_path: Path) -> None:
    text = edit("    unit: 2\n", "    unit: two\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "unit: two"), "devices[2].unit")
    assert "integer" in p.message


def test_wrong_type_in_a_flow_mapping_points_at_the_value(tmp_path: Path) -> None:
    text = edit("port: 502", "port: http")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "port: http"), "buses[0].port")


def test_value_out_of_bounds(tmp_path: Path) -> None:
    text = edit("contract_kw: 180", "contract_kw: -5")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "contract_kw"), "ems.contract_kw")
    assert "greater than 0" in p.message


def test_missing_required_field_points_at_its_parent(tmp_path: Path) -> None:
    text = edit('  gateway_id: gw-a\n', "")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "school_id"), "site.gateway_id")
    assert "required" in p.message.lower()


def test_unknown_device_kind(tmp_path: Path) -> None:
    text = edit("    kind: door\n", "    kind: heater\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "id: door-101"), "devices[3]")
    assert "heater" in p.message


def test_duplicate_id(tmp_path: Path) -> None:
    text = edit("  - id: door-101\n", "  - id: relay-1\n").replace("door: door-101", "door: relay-1")
    found = problems(tmp_path, text)
    dup = next(p for p in found if p.path == "devices[3].id")
    assert dup.line == line_of(text, "- id: relay-1", nth=2)
    assert "duplicate id 'relay-1' (first at devices[2])" in dup.message


def test_duplicate_bus_id(tmp_path: Path) -> None:
    text = edit("{id: rs485-1, type: rtu", "{id: ac-bus, type: rtu").replace("bus: rs485-1", "bus: ac-bus")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "type: rtu"), "buses[1].id")
    assert "duplicate id 'ac-bus'" in p.message


def test_unknown_profile(tmp_path: Path) -> None:
    text = edit("profile: coolmasternet", "profile: coolmaster")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "profile: coolmaster"), "devices[0].profile")
    assert "unknown profile 'coolmaster'" in p.message


def test_profile_of_another_kind(tmp_path: Path) -> None:
    text = edit("profile: eastron-sdm630", "profile: intesis-inmbsdai").replace(
        "ems:\n  meter: meter-main\n  contract_kw: 180\n", "")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "kind: meter"), "devices[1].kind")
    assert "for kind 'ac'" in p.message


def test_unknown_bus(tmp_path: Path) -> None:
    text = edit("    bus: ac-bus\n", "    bus: ac-bus-2\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "bus: ac-bus-2"), "devices[0].bus")
    assert "unknown bus 'ac-bus-2' (buses: ac-bus, rs485-1)" in p.message


def test_unknown_room(tmp_path: Path) -> None:
    text = edit('    room: "301"\n', '    room: "302"\n')
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, 'room: "302"'), "devices[0].room")
    assert "unknown room '302'" in p.message


def test_index_out_of_the_profile_range(tmp_path: Path) -> None:
    text = edit("    index: 1\n", "    index: 256\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "index: 256"), "devices[0].index")
    assert "index 256 out of range 1..255 of profile coolmasternet" in p.message


def test_index_zero_is_not_a_coolmasternet_va(tmp_path: Path) -> None:
    text = edit("    index: 1\n", "    index: 0\n")
    assert only(problems(tmp_path, text)).path == "devices[0].index"


def test_missing_index_for_a_sub_unit_profile(tmp_path: Path) -> None:
    text = edit("    index: 1\n", "")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "id: ac-301a"), "devices[0].index")
    assert "needs" in p.message
    assert "1..255" in p.message


def test_index_on_a_profile_without_sub_units(tmp_path: Path) -> None:
    text = edit("    bus: rs485-1\n    unit: 1\n", "    bus: rs485-1\n    unit: 1\n    index: 3\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "index: 3"), "devices[1].index")
    assert "has no sub-units" in p.message


def test_two_devices_at_the_same_address(tmp_path: Path) -> None:
    text = edit("    unit: 2\n", "    unit: 1\n")
    p = only(problems(tmp_path, text))
    assert p.path == "devices[2].unit"
    assert "devices[1] (meter-main)" in p.message


def test_relay_channel_out_of_range(tmp_path: Path) -> None:
    text = edit("    channel: 0\n", "    channel: 8\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "channel: 8"), "devices[3].channel")
    assert "channel 8 out of range 0..7 of relay-1" in p.message


def test_relay_channel_on_something_that_is_not_a_relay_board(tmp_path: Path) -> None:
    text = edit("    relay: relay-1\n", "    relay: meter-main\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "relay: meter-main"), "devices[3].relay")


def test_relay_channel_used_twice(tmp_path: Path) -> None:
    text = SCHOOL.replace("ems:\n", "  - {id: light-1, kind: light, relay: relay-1, channel: 0}\nems:\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "id: light-1"), "devices[5].channel")
    assert "already used by door-101" in p.message


def test_door_reader_without_a_door(tmp_path: Path) -> None:
    text = edit("    door: door-101\n", "")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "id: reader-101"), "devices[4].door")
    assert "door reader needs `door:`" in p.message


def test_door_reader_naming_a_light(tmp_path: Path) -> None:
    text = edit("    kind: door\n", "    kind: light\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "door: door-101"), "devices[4].door")


def test_ems_meter_must_be_a_meter(tmp_path: Path) -> None:
    text = edit("  meter: meter-main", "  meter: relay-1")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "meter: relay-1"), "ems.meter")


# --- YAML level -----------------------------------------------------------------------------------------


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    text = edit("    framing: rdm6300\n", "    framing: [rdm6300\n")
    p = only(problems(tmp_path, text))
    assert p.line is not None
    assert line_of(text, "framing") <= p.line <= line_of(text, "framing") + 1
    assert p.message.startswith("YAML syntax error")


def test_tab_indentation_is_a_syntax_error_on_its_line(tmp_path: Path) -> None:
    text = 'site:\n\tschool_id: "1"\n'
    p = only(problems(tmp_path, text))
    assert p.line == 2
    assert "YAML syntax error" in p.message


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    text = MINIMAL + '  school_id: "014602"\n'
    p = only(problems(tmp_path, text))
    assert (p.line, p.path, p.message) == (4, "site.school_id", "duplicate key")


def test_duplicate_yaml_key_in_a_list_item(tmp_path: Path) -> None:
    text = edit("    unit: 2\n", "    unit: 2\n    unit: 3\n")
    p = only(problems(tmp_path, text))
    assert (p.line, p.path) == (line_of(text, "unit: 3"), "devices[2].unit")


def test_empty_file_and_non_mapping(tmp_path: Path) -> None:
    assert "empty" in only(problems(tmp_path, "")).message
    p = only(problems(tmp_path, "- a\n- b\n"))
    assert (p.line, p.message) == (1, "the top level must be a mapping")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    p = only(info.value.problems)
    assert p.file == str(tmp_path / "nope.yaml")
    assert "cannot read" in p.message


# --- environment variables --------------------------------------------------------------------------------

ENV = """\
site:
  school_id: "${CE_SCHOOL:-014601}"
  gateway_id: ${CE_GW:-gw-a}
buses:
  - id: ac-bus
    type: tcp
    host: ${CE_HOST}
    port: ${CE_PORT:-1502}
    timeout_s: $CE_TIMEOUT
"""


def test_env_vars_expand_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CE_SCHOOL", "CE_GW", "CE_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CE_HOST", "10.9.8.7")
    monkeypatch.setenv("CE_TIMEOUT", "2.5")
    cfg = load_config(write(tmp_path, ENV))
    assert cfg.site.school_id == "014601"  # quoted: stays text, leading zero kept
    assert cfg.site.gateway_id == "gw-a"
    bus = cfg.bus("ac-bus")
    assert isinstance(bus, TcpBus)
    assert (bus.host, bus.port, bus.timeout_s) == ("10.9.8.7", 1502, 2.5)


def test_env_vars_override_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_SCHOOL", "999999")
    monkeypatch.setenv("CE_GW", "gw-b")
    monkeypatch.setenv("CE_HOST", "ac.local")
    monkeypatch.setenv("CE_PORT", "5020")
    monkeypatch.setenv("CE_TIMEOUT", "3")
    cfg = load_config(write(tmp_path, ENV))
    bus = cfg.bus("ac-bus")
    assert isinstance(bus, TcpBus)
    assert (cfg.site.school_id, cfg.site.gateway_id, bus.host, bus.port, bus.timeout_s) == (
        "999999", "gw-b", "ac.local", 5020, 3.0)


def test_missing_env_vars_are_reported_where_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CE_HOST", raising=False)
    monkeypatch.delenv("CE_TIMEOUT", raising=False)
    found = problems(tmp_path, ENV)
    missing = {(p.line, p.path, p.message) for p in found if "environment variable" in p.message}
    assert missing == {
        (line_of(ENV, "host:"), "buses[0].host", "environment variable CE_HOST is not set"),
        (line_of(ENV, "timeout_s:"), "buses[0].timeout_s", "environment variable CE_TIMEOUT is not set"),
    }


def test_env_value_that_looks_like_yaml_stays_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CE_HOST", "{")
    monkeypatch.setenv("CE_TIMEOUT", "1")
    bus = load_config(write(tmp_path, ENV)).bus("ac-bus")
    assert isinstance(bus, TcpBus)
    assert bus.host == "{"
    monkeypatch.setenv("CE_HOST", "a: b")
    bus = load_config(write(tmp_path, ENV)).bus("ac-bus")
    assert isinstance(bus, TcpBus)
    assert bus.host == "a: b"


# --- paths ----------------------------------------------------------------------------------------------

PATHS = MINIMAL + """\
storage:
  path: state
profile_dirs: [profiles, /opt/site-profiles]
cloud:
  mqtt:
    url: mqtts://broker.example:8883
    ca_file: certs/ca.pem
    password_file: /etc/campus-edge/mqtt.pass
  command_keys: [keys/cloud-ed25519.pub]
  influx: {url: "http://127.0.0.1:8086", org: ntpc, bucket: campus, token_file: influx.token}
"""


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    secret = tmp_path / "mqtt.pass"  # an absolute path stays as written
    write(conf_dir, PATHS.replace("/etc/campus-edge/mqtt.pass", str(secret)), name="site.yaml")
    from cloud_sync.keys import generate_keypair

    generate_keypair(conf_dir / "keys" / "cloud-ed25519.pem", conf_dir / "keys" / "cloud-ed25519.pub")
    (conf_dir / "certs").mkdir()
    for f in (conf_dir / "certs" / "ca.pem", conf_dir / "influx.token", secret):
        f.write_text("x\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../etc/site.yaml")
    base = conf_dir.resolve()
    assert cfg.storage.path == base / "state"
    assert cfg.profile_dirs == [base / "profiles", Path("/opt/site-profiles")]
    assert cfg.cloud is not None
    assert cfg.cloud.mqtt.ca_file == base / "certs" / "ca.pem"
    assert cfg.cloud.mqtt.password_file == secret
    assert cfg.cloud.command_keys == [base / "keys" / "cloud-ed25519.pub"]
    assert cfg.cloud.influx is not None
    assert cfg.cloud.influx.token_file == base / "influx.token"


SITE_PROFILE = """\
name: acme-x1
kind: ac
vendor: Acme
model: X1
sources: ["Acme X1 manual"]
sub_units: {min: 0, max: 3}
blocks:
  unit: {table: holding, base: 100, stride: 8, size: 4}
points:
  - {field: power_on, block: unit, offset: 0, boolean: true, access: rw, source: "manual p.3"}
"""


def test_site_profile_dir_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    write(tmp_path / "profiles", SITE_PROFILE, name="acme-x1.yaml")
    text = MINIMAL + textwrap.dedent("""\
        profile_dirs: [profiles]
        buses: [{id: b, type: tcp, host: h}]
        devices:
          - {id: ac-1, kind: ac, profile: acme-x1, bus: b, unit: 1, index: 3}
        """)
    cfg = load_config(write(tmp_path, text))
    assert cfg.profile_dirs == [tmp_path.resolve() / "profiles"]
    bad = text.replace("index: 3", "index: 4")
    p = only(problems(tmp_path, bad))
    assert (p.path, p.line) == ("devices[0].index", line_of(bad, "index: 4"))
    assert "0..3 of profile acme-x1" in p.message


def test_broken_site_profile_is_reported_on_the_device(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    write(tmp_path / "profiles", SITE_PROFILE.replace("block: unit", "block: units"), name="acme-x1.yaml")
    text = MINIMAL + textwrap.dedent("""\
        profile_dirs: [profiles]
        buses: [{id: b, type: tcp, host: h}]
        devices:
          - {id: ac-1, kind: ac, profile: acme-x1, bus: b, unit: 1, index: 3}
        """)
    p = only(problems(tmp_path, text))
    assert p.path == "devices[0].profile"
    assert "acme-x1.yaml" in p.message
    assert "unknown block 'units'" in p.message


# --- all at once -------------------------------------------------------------------------------------------


def test_several_field_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit("  timezone: Asia/Taipei\n", "  timezone: Asia/Taipei\n  colour: red\n")
    text = edit("port: 502", "port: http", base=text)
    text = edit("    unit: 2\n", "    unit: -1\n", base=text)
    found = problems(tmp_path, text)
    assert {(p.path, p.line) for p in found} == {
        ("site.colour", line_of(text, "colour")),
        ("buses[0].port", line_of(text, "port: http")),
        ("devices[2].unit", line_of(text, "unit: -1")),
    }


def test_several_reference_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit("    bus: ac-bus\n", "    bus: nowhere\n")
    text = edit('    room: "301"\n', '    room: "999"\n', base=text)
    text = edit("    channel: 0\n", "    channel: 9\n", base=text)
    text = edit("profile: eastron-sdm630", "profile: sdm999", base=text)
    found = problems(tmp_path, text)
    assert {p.path for p in found} >= {"devices[0].bus", "devices[0].room", "devices[3].channel", "devices[1].profile"}
    for p in found:
        assert p.line is not None


def test_missing_env_var_is_reported_beside_other_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CE_NOPE", raising=False)
    text = edit("host: 10.1.2.3", "host: ${CE_NOPE}").replace("{id: ac-bus, type: tcp, host: ${CE_NOPE}",
                                                                 '{id: ac-bus, type: tcp, host: "${CE_NOPE}"')
    text = edit('    room: "301"\n', '    room: "999"\n', base=text)
    found = problems(tmp_path, text)
    assert {p.path for p in found} == {"buses[0].host", "devices[0].room"}


def test_cloud_files_must_exist_and_hold_a_key(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    write(conf_dir, PATHS, name="site.yaml")
    (conf_dir / "keys").mkdir()
    (conf_dir / "keys" / "cloud-ed25519.pub").write_text("not a key\n")
    with pytest.raises(ConfigError) as exc:
        load_config(conf_dir / "site.yaml")
    found = {p.path: p.message for p in exc.value.problems}
    assert "not a PEM public key" in found["cloud.command_keys[0]"]
    assert "cannot be read" in found["cloud.mqtt.password_file"]
    assert "cannot be read" in found["cloud.influx.token_file"]


def test_rtu_unit_zero_is_broadcast(tmp_path: Path) -> None:
    text = SCHOOL.replace("    bus: rs485-1\n    unit: 1", "    bus: rs485-1\n    unit: 0", 1)
    assert text != SCHOOL
    found = problems(tmp_path, text)
    assert any("broadcast" in p.message and p.path.endswith(".unit") for p in found), found


def test_home_assistant_rooms_must_exist_and_its_files_are_relative_to_the_config(tmp_path: Path) -> None:
    base = two_bus_school(tmp_path, 1)
    base["homeassistant"] = {"mqtt": {"url": "mqtt://127.0.0.1:1883", "password_file": "secrets/ha.pass"},
                             "role": "teacher", "rooms": ["401", "999"]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "homeassistant.rooms[1]: unknown room '999'" in str(err.value)
    base["homeassistant"]["rooms"] = ["401"]
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.homeassistant is not None
    assert cfg.homeassistant.mqtt.password_file == tmp_path / "secrets" / "ha.pass"
