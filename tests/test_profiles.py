"""Device profiles: schema, shipped files, addresses against DOMAIN.md section 7, codec, error messages."""

from __future__ import annotations

import json
import math
import struct
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus import docs, schema
from drivers.modbus.profile import (
    PROFILE_DIR,
    Point,
    Profile,
    ProfileError,
    Rejected,
    available_profiles,
    decode,
    encode,
    load_profile,
    load_profile_file,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
REQUIRED = {"coolmasternet", "intesis-inmbsdai", "daikin-dta116a51", "eastron-sdm630", "waveshare-relay-8ch"}
FAST = settings(max_examples=60, deadline=None, database=None)


def _json_like(data: Any) -> Any:
    """What an editor's YAML language server hands the schema: mapping keys are strings."""
    return json.loads(json.dumps(data))


def write_address(profile: Profile, point: Point, index: int = 0, device_offset: int = 0) -> int:
    block = point.write_block or point.block
    offset = point.write_offset if point.write_offset is not None else point.offset
    return profile.address(block, offset, index, device_offset)


# --- schema and docs are generated, and committed copies must be current -------------------------


def test_committed_schema_is_current() -> None:
    committed = schema.SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == schema.render(), (
        "config/profiles/profile.schema.json is stale: run `python -m drivers.modbus.schema > "
        "config/profiles/profile.schema.json`"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    doc = json.loads(schema.SCHEMA_PATH.read_text(encoding="utf-8"))
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)


def test_committed_device_docs_are_current() -> None:
    committed = (REPO / "docs" / "devices.md").read_text(encoding="utf-8")
    assert committed == docs.render(), "docs/devices.md is stale: run `make docs`"


def test_device_docs_show_formulas_and_every_point() -> None:
    text = docs.render()
    for name in SHIPPED:
        prof = load_profile(name)
        assert f"`{name}`" in text
        for p in prof.points:
            assert f"`{p.field}`" in text
    assert "`16·VA + 2`" in text  # CoolMasterNet setpoint
    assert "`2000 + 6·n + 2`" in text  # Daikin status word 2
    assert "holding 2000 + 3·n + 1" in text  # Daikin mode is written to the control block
    assert "`52 (0x34)`" in text  # SDM630 total power


# --- shipped profiles ------------------------------------------------------------------------------


def test_required_profiles_ship() -> None:
    assert set(SHIPPED) >= REQUIRED
    assert set(SHIPPED) <= set(available_profiles())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(schema.SCHEMA_PATH.read_text(encoding="utf-8")))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_matches_schema(name: str, validator: jsonschema.Draft202012Validator) -> None:
    data = yaml.safe_load((PROFILE_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(_json_like(data))]
    assert errors == []


def test_schema_rejects_what_yaml_would_misread(validator: jsonschema.Draft202012Validator) -> None:
    # PyYAML reads `1.0e9` (no exponent sign) as a string; pydantic would quietly coerce it
    data = yaml.safe_load((PROFILE_DIR / "eastron-sdm630.yaml").read_text(encoding="utf-8"))
    data["points"][0]["range"] = [0, yaml.safe_load("1.0e9")]
    data["points"][1]["colour"] = "red"
    data["blocks"]["ir"]["table"] = "holdings"
    paths = {"/".join(map(str, e.absolute_path)) for e in validator.iter_errors(_json_like(data))}
    assert {"points/0/range", "points/1", "blocks/ir/table"} <= paths


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads(name: str) -> None:
    prof = load_profile(name)
    assert prof.name == name
    assert all(len(p.source) >= 3 for p in prof.points)
    if prof.sub_units is not None:
        assert prof.check_index(prof.sub_units.min) is None
        assert prof.check_index(prof.sub_units.max) is None
        assert prof.check_index(prof.sub_units.max + 1) is not None
        assert prof.check_index(None) is not None


# --- addresses against DOMAIN.md section 7 ----------------------------------------------------------


def test_coolmasternet_addresses() -> None:
    prof = load_profile("coolmasternet")
    sp = prof.point("setpoint_c")
    assert prof.blocks[sp.block].table == "holding"
    assert prof.address(sp.block, sp.offset, index=3) == 50  # 16*3 + 2
    assert write_address(prof, sp, index=3) == 50
    assert prof.address(sp.block, sp.offset, index=3, device_offset=1) == 51  # firmware at 16*VA+1
    room = prof.point("room_temp_c")
    assert prof.address(room.block, room.offset, index=1) == 22
    assert not room.writable
    assert prof.address("unit", prof.point("power_on").offset, index=7) == 115


def test_daikin_addresses() -> None:
    prof = load_profile("daikin-dta116a51")
    power = prof.point("power_on")
    assert prof.blocks[power.block].table == "input"
    assert prof.address(power.block, power.offset, index=5) == 2030
    assert prof.blocks[power.write_block or ""].table == "holding"
    assert write_address(prof, power, index=5) == 2015
    assert write_address(prof, prof.point("mode"), index=5) == 2016
    assert write_address(prof, prof.point("setpoint_c"), index=5) == 2017
    room = prof.point("room_temp_c")
    assert prof.address(room.block, room.offset, index=5) == 2034
    assert room.datatype == "int16"
    err = prof.point("fault_code")
    assert prof.address(err.block, err.offset, index=5) == 3610
    assert prof.blocks["control"].write_whole
    assert prof.address("control", 0, index=63) == 2189


def test_sdm630_addresses() -> None:
    prof = load_profile("eastron-sdm630")
    expected = {"voltage_l1_v": 0x00, "current_l3_a": 0x0A, "power_w": 0x34, "pf": 0x3E, "freq_hz": 0x46,
                "import_energy_kwh": 0x48, "demand_w": 0x54, "energy_kwh": 0x156}
    for field, addr in expected.items():
        p = prof.point(field)
        assert prof.address(p.block, p.offset) == addr, field
        assert p.datatype == "float32"
        assert p.word_order == "big"
        assert prof.blocks[p.block].table == "input"
    assert prof.limits.max_read_registers == 80
    assert prof.limits.even_count


def test_intesis_addresses() -> None:
    prof = load_profile("intesis-inmbsdai")
    expected = {"power_on": 0, "mode": 1, "fan": 2, "setpoint_c": 4, "room_temp_c": 5, "fault_code": 11}
    for field, addr in expected.items():
        p = prof.point(field)
        assert prof.address(p.block, p.offset) == addr, field
    assert prof.serial.stopbits == 2


def test_waveshare_coils() -> None:
    prof = load_profile("waveshare-relay-8ch")
    assert prof.channels == 8
    for ch in range(8):
        p = prof.point(f"ch{ch}")
        assert prof.blocks[p.block].table == "coil"
        assert prof.address(p.block, p.offset) == ch


# --- capabilities: the timed pulse -------------------------------------------------------------------


def pulse_board(**pulse: Any) -> dict[str, Any]:
    """The Waveshare profile as another vendor's four-channel board, with some pulse fields changed."""
    data: dict[str, Any] = yaml.safe_load((PROFILE_DIR / "waveshare-relay-8ch.yaml").read_text(encoding="utf-8"))
    data.update(name="acme-relay-4ch", vendor="Acme", model="R4", channels=4)
    data["blocks"]["coils"]["size"] = 4
    data["points"] = data["points"][:4]
    data["pulse"].update(pulse)
    return data


def test_the_relay_board_declares_its_pulse_and_the_others_do_not() -> None:
    relay = load_profile("waveshare-relay-8ch")
    assert relay.pulse is not None
    assert (relay.pulse.function, relay.pulse.on_address, relay.pulse.off_address) == (5, 0x0200, 0x0400)
    assert (relay.pulse.step_s, relay.pulse.max_steps) == (0.1, 0xFFFF)
    for name in ("coolmasternet", "eastron-sdm630"):
        assert load_profile(name).pulse is None


@pytest.mark.parametrize("pulse", [
    {"off_address": None},  # a board that can only pulse on
    {"on_address": 0x0200, "off_address": 0x0204},  # four channels each, side by side
    {"on_address": 0x0204, "off_address": 0x0200},
    {"on_address": 0xFFFC, "off_address": 0},  # channel 3 at the last address
])
def test_a_pulse_declaration_at_the_edges_is_accepted(pulse: dict[str, Any]) -> None:
    data = pulse_board(**pulse)
    data["pulse"] = {k: v for k, v in data["pulse"].items() if v is not None}
    declared = Profile.model_validate(data).pulse
    assert declared is not None
    assert (declared.on_address, declared.off_address) == (data["pulse"]["on_address"], pulse.get("off_address", 0x400))


@pytest.mark.parametrize(("change", "message"), [
    ({"channels": None}, "needs `channels`"),
    ({"pulse": {"on_address": 0x0200, "off_address": 0x0203}}, "ranges overlap"),
    ({"pulse": {"on_address": 0x0203, "off_address": 0x0200}}, "ranges overlap"),
    ({"pulse": {"on_address": 0xFFFD}}, "on_address: 4 channels from it run past 0xFFFF"),
    ({"pulse": {"off_address": 0xFFFD}}, "off_address: 4 channels from it run past 0xFFFF"),
    ({"pulse": {"function": 6}}, "pulse.function"),
    ({"pulse": {"step_s": 0}}, "pulse.step_s"),
    ({"pulse": {"max_steps": 0x10000}}, "pulse.max_steps"),
    ({"pulse": {"source": ""}}, "pulse.source"),
    ({"pulse": {"colour": "red"}}, "pulse.colour"),
    ({"flash": True}, "flash"),  # the key pulse replaced
])
def test_a_bad_pulse_declaration_is_refused(change: dict[str, Any], message: str) -> None:
    data = pulse_board()
    for key, value in change.items():
        if key == "pulse":
            data["pulse"].update(value)
        elif value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ValueError, match=message):
        Profile.model_validate(data)


def test_the_schema_knows_the_pulse() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(schema.SCHEMA_PATH.read_text(encoding="utf-8")))
    assert list(validator.iter_errors(json.loads(json.dumps(pulse_board())))) == []
    bad = pulse_board(function=6, step_s=-1)
    bad["pulse"].pop("source")
    errors = list(validator.iter_errors(json.loads(json.dumps(bad))))
    assert ["/".join(map(str, e.absolute_path)) for e in errors] == ["pulse"]  # neither a Pulse nor null...
    why = {("/".join(map(str, e.absolute_path)), e.validator) for e in errors[0].context or []}
    assert why >= {("pulse", "required"), ("pulse/function", "const"), ("pulse/step_s", "exclusiveMinimum")}


# --- codec ------------------------------------------------------------------------------------------


def _writable() -> list[tuple[str, str]]:
    return [(name, p.field) for name in SHIPPED for p in load_profile(name).points if p.writable]


def _sample_values(p: Point) -> list[Any]:
    if p.enum is not None:
        return sorted(set(p.enum.values()))
    if p.boolean or p.datatype == "bool":
        return [False, True]
    if p.range is not None:
        lo, hi = p.range
        return [lo, (lo + hi) / 2, hi]
    lo_raw, hi_raw = {"uint16": (0, 65535), "int16": (-32768, 32767)}.get(p.datatype, (0, 1000))
    return [lo_raw, 1, hi_raw]


@pytest.mark.parametrize(("name", "field"), _writable())
def test_every_writable_point_round_trips(name: str, field: str) -> None:
    p = load_profile(name).point(field)
    for value in _sample_values(p):
        words = encode(p, value)
        assert len(words) == p.words
        assert all(0 <= w <= 0xFFFF for w in words)
        got = decode(p, words)
        assert got.rejected is None, (value, words)
        if isinstance(value, float) and p.scale != 1.0:
            assert got.value == pytest.approx(value, abs=abs(p.scale) / 2)
        else:
            assert got.value == value


def _numeric_writable() -> list[tuple[str, str]]:
    out = []
    for name, field in _writable():
        p = load_profile(name).point(field)
        if p.enum is None and not p.boolean and p.datatype != "bool":
            out.append((name, field))
    return out


@pytest.mark.parametrize(("name", "field"), _numeric_writable())
@FAST
@given(fraction=st.floats(min_value=0.0, max_value=1.0))
def test_numbers_in_range_round_trip(name: str, field: str, fraction: float) -> None:
    p = load_profile(name).point(field)
    if p.range is not None:
        lo, hi = p.range
    else:
        lo, hi = {"uint16": (0, 65535), "int16": (-32768, 32767)}[p.datatype]
    value = lo + (hi - lo) * fraction
    if p.scale == 1.0 and p.datatype != "float32":
        value = round(value)
    got = decode(p, encode(p, value))
    assert got.rejected is None
    assert got.value == pytest.approx(value, abs=abs(p.scale) / 2 + 1e-9)


def test_scaled_values_on_the_grid_are_exact() -> None:
    p = load_profile("coolmasternet").point("setpoint_c")
    for tenths in range(100, 351):
        value = tenths / 10
        assert encode(p, value) == [tenths]
        assert decode(p, [tenths]).value == value


def test_negative_int16_round_trips() -> None:
    p = Point(field="t", block="b", datatype="int16", scale=0.1, access="rw", source="test")
    assert encode(p, -5.5) == [0x10000 - 55]
    assert decode(p, [0x10000 - 55]).value == -5.5


@FAST
@given(current=st.integers(0, 0xFFFF), data=st.data())
def test_bit_field_write_preserves_other_bits(current: int, data: st.DataObject) -> None:
    prof = load_profile("daikin-dta116a51")
    for field in ("mode", "power_on"):
        p = prof.point(field)
        assert p.bits is not None
        lo, hi = p.bits
        mask = ((1 << (hi - lo + 1)) - 1) << lo
        value = data.draw(st.sampled_from(sorted(set(p.enum.values())) if p.enum else [False, True]))
        (word,) = encode(p, value, current)
        assert word & ~mask & 0xFFFF == current & ~mask & 0xFFFF
        assert decode(p, [word]).value == value


def test_bit_field_examples() -> None:
    prof = load_profile("daikin-dta116a51")
    assert encode(prof.point("power_on"), True, 0xABCE) == [0xABCF]
    assert encode(prof.point("power_on"), False, 0xABCF) == [0xABCE]
    assert encode(prof.point("mode"), "dry", 0xFFF0) == [0xFFF7]
    assert encode(prof.point("mode"), "fan", 0x1237) == [0x1230]
    assert decode(prof.point("fan"), [0x2000 | 0x0FFF]).value == "high"  # bits 12-14 = 2


def test_bit_field_rejects_values_wider_than_the_field() -> None:
    p = Point(field="level", block="b", bits=(4, 6), access="rw", source="test")
    assert encode(p, 7, 0xFF0F) == [0xFF7F]
    with pytest.raises(ValueError, match="does not fit"):
        encode(p, 8, 0)


@pytest.mark.parametrize(("order", "expected"), [("big", [0x4366, 0x0000]), ("little", [0x0000, 0x4366])])
def test_float32_word_order(order: str, expected: list[int]) -> None:
    p = Point.model_validate({"field": "v", "block": "b", "datatype": "float32", "word_order": order,
                              "access": "rw", "source": "test"})
    assert encode(p, 230.0) == expected
    assert decode(p, expected).value == 230.0


@FAST
@given(value=st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e9, max_value=1e9),
       order=st.sampled_from(["big", "little"]))
def test_float32_round_trip(value: float, order: str) -> None:
    p = Point.model_validate({"field": "v", "block": "b", "datatype": "float32", "word_order": order,
                              "access": "rw", "source": "test"})
    words = encode(p, value)
    hi, lo = words if order == "big" else words[::-1]
    assert struct.unpack(">f", struct.pack(">HH", hi, lo))[0] == value
    assert decode(p, words).value == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("datatype", ["int32", "uint32"])
def test_32_bit_integers_round_trip(datatype: str) -> None:
    p = Point.model_validate({"field": "v", "block": "b", "datatype": datatype, "word_order": "little",
                              "access": "rw", "source": "test"})
    value = 70000
    assert encode(p, value) == [70000 & 0xFFFF, 70000 >> 16]
    assert decode(p, encode(p, value)).value == value
    if datatype == "int32":
        assert decode(p, encode(p, -70000)).value == -70000
    else:
        with pytest.raises(ValueError, match="does not fit"):
            encode(p, -1)


def test_float32_nan_is_rejected_on_read() -> None:
    p = load_profile("eastron-sdm630").point("power_w")
    assert decode(p, [0x7FC0, 0x0000]).rejected is Rejected.NOT_A_NUMBER


def test_enum_aliases_read_as_one_name_and_write_the_lowest_code() -> None:
    cool = load_profile("coolmasternet")
    mode, fan = cool.point("mode"), cool.point("fan")
    assert decode(mode, [1]).value == decode(mode, [4]).value == "heat"  # haux reads as heat
    assert encode(mode, "heat") == [1]
    assert decode(fan, [0]).value == decode(fan, [5]).value == "low"  # very low reads as low
    assert encode(fan, "low") == [0]
    assert encode(fan, "high") == [2]  # not 4 (top)
    intesis_fan = load_profile("intesis-inmbsdai").point("fan")
    assert {decode(intesis_fan, [c]).value for c in (2, 3, 4)} == {"medium"}
    assert encode(intesis_fan, "medium") == [2]


def test_unknown_enum_code_is_rejected_not_raised() -> None:
    mode = load_profile("coolmasternet").point("mode")
    got = decode(mode, [9])
    assert got.value is None
    assert got.rejected is Rejected.UNKNOWN_ENUM
    daikin_mode = load_profile("daikin-dta116a51").point("mode")
    assert decode(daikin_mode, [0xFF05]).rejected is Rejected.UNKNOWN_ENUM  # bits 0-3 = 5


def test_unknown_enum_name_is_refused_on_write() -> None:
    mode = load_profile("coolmasternet").point("mode")
    with pytest.raises(ValueError, match=r"mode: 'turbo' is not one of"):
        encode(mode, "turbo")


@pytest.mark.parametrize("value", [9.9, 35.1, -40.0, math.nan, math.inf, "26", True, None])
def test_out_of_range_or_non_numeric_setpoint_is_refused(value: Any) -> None:
    for name in ("coolmasternet", "daikin-dta116a51", "intesis-inmbsdai"):
        with pytest.raises(ValueError, match="setpoint_c"):
            encode(load_profile(name).point("setpoint_c"), value)


def test_out_of_range_reading_is_rejected() -> None:
    sp = load_profile("coolmasternet").point("setpoint_c")
    assert decode(sp, [351]).rejected is Rejected.OUT_OF_RANGE
    assert decode(sp, [0x10000 - 100]).rejected is Rejected.OUT_OF_RANGE  # -10.0 degC


@pytest.mark.parametrize("value", [-1, 65536, 1e6])
def test_values_that_do_not_fit_the_register_are_refused(value: float) -> None:
    swing = load_profile("coolmasternet").point("swing")  # uint16 without a physical range
    with pytest.raises(ValueError, match="does not fit"):
        encode(swing, value)


# --- broken profiles say what and where ---------------------------------------------------------------

GOOD = """\
name: {name}
kind: ac
vendor: Acme
model: X1
sources: ["Acme X1 manual"]
blocks:
  unit: {{table: holding, base: 0, stride: 8, size: 4}}
points:
  - {{field: power_on, block: unit, offset: 0, boolean: true, access: rw, source: "manual p.3"}}
  - {{field: setpoint_c, block: unit, offset: 1, datatype: int16, scale: 0.1, range: [16, 30], access: rw,
     source: "manual p.3"}}
"""


def _write(tmp_path: Path, text: str, name: str = "acme-x1", stem: str | None = None) -> Path:
    path = tmp_path / f"{stem or name}.yaml"
    path.write_text(textwrap.dedent(text).format(name=name), encoding="utf-8")
    return path


def test_a_site_profile_dir_is_searched_first(tmp_path: Path) -> None:
    _write(tmp_path, GOOD)
    prof = load_profile("acme-x1", [tmp_path])
    assert prof.vendor == "Acme"
    assert "acme-x1" in available_profiles([tmp_path])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("block: unit, offset: 1", "block: units, offset: 1"), r"point 'setpoint_c': unknown block 'units'"),
        (("boolean: true", "boolean: true, bits: [3, 16]"), r"points\.0: .*bits \(3, 16\) must be 0\.\.15"),
        (("offset: 1, datatype", "offset: 4, datatype"), r"point 'setpoint_c': offset 4 outside block size 4"),
        (("vendor: Acme", "vendor: Acme\ncolour: red"), r"colour: Extra inputs are not permitted"),
        (("access: rw, source", "acess: rw, source"), r"points\.0\.acess: Extra inputs are not permitted"),
        (("table: holding", "table: holdings"), r"blocks\.unit\.table: Input should be"),
        (("kind: ac", "kind: heater"), r"kind: Input should be"),
    ],
)
def test_broken_profile_says_what_and_where(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError, match=expected) as info:
        load_profile("acme-x1", [tmp_path])
    assert str(path) in str(info.value)


def test_profile_name_must_match_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD, name="acme-x2", stem="acme-x1")
    with pytest.raises(ProfileError, match=r"name 'acme-x2' must match the file name 'acme-x1'") as info:
        load_profile_file(path)
    assert str(path) in str(info.value)


def test_unknown_profile_lists_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'nope'") as info:
        load_profile("nope", [tmp_path])
    assert str(tmp_path) in str(info.value)
    assert str(PROFILE_DIR) in str(info.value)


def test_profile_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("blocks:", "blocks: [", 1))
    with pytest.raises(ProfileError, match="cannot read profile") as info:
        load_profile_file(path)
    assert str(path) in str(info.value)
