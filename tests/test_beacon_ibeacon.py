"""iBeacon parsing: the fixture payloads, bleak's own `AdvertisementData`, and random bytes (never an exception)."""

from __future__ import annotations

import importlib.util
import json
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.scanner import AdvertisementData
from hypothesis import given
from hypothesis import strategies as st

from drivers.beacon import ibeacon
from drivers.beacon.ibeacon import IBeacon

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "beacon"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "advertisements.json").read_text())


def manufacturer_map(raw: bytes) -> dict[int, bytes]:
    """What BlueZ/bleak make of a payload: manufacturer data by company id, the id stripped (test's own split)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(raw) and raw[i] and i + 1 + raw[i] <= len(raw):
        if raw[i + 1] == 0xFF and raw[i] >= 3:
            out[int.from_bytes(raw[i + 2:i + 4], "little")] = raw[i + 4:i + 1 + raw[i]]
        i += 1 + raw[i]
    return out


def advertisement(manufacturer_data: dict[int, bytes], rssi: int = -60) -> AdvertisementData:
    return AdvertisementData(local_name=None, manufacturer_data=manufacturer_data, service_data={},
                             service_uuids=[], tx_power=None, rssi=rssi, platform_data=())


def expected(case: dict[str, Any]) -> IBeacon | None:
    return None if case["ibeacon"] is None else IBeacon(**case["ibeacon"])


def test_the_fixture_file_is_what_its_script_writes() -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.cases() == CASES
    assert sum(c["ibeacon"] is not None for c in CASES) >= 5
    assert sum(c["ibeacon"] is None for c in CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_raw_advertising_data(case: dict[str, Any]) -> None:
    assert ibeacon.from_advertising_data(bytes.fromhex(case["hex"])) == expected(case)


@pytest.mark.parametrize("case", [c for c in CASES if c["ibeacon"] is not None or "company" in c["name"]
                                  or "not_ibeacon" in c["name"]], ids=lambda c: c["name"])
def test_bleak_advertisement_data(case: dict[str, Any]) -> None:
    adv = advertisement(manufacturer_map(bytes.fromhex(case["hex"])), rssi=case["rssi"])
    assert ibeacon.from_manufacturer_map(adv.manufacturer_data) == expected(case)


def test_the_quoted_example_reads_as_documented() -> None:
    """DOMAIN.md section 8: after `02 15`, UUID 16, major BE, minor BE, power int8 (0xC5 = -59)."""
    b = ibeacon.from_manufacturer_data(0x004C, bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e0" "0102" "0304" "c5"))
    assert b == IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 0x0102, 0x0304, -59)
    assert b.identity == "e2c56db5-dffb-48d2-b060-d0f5a71096e0:258:772"


def test_other_companies_and_short_data_are_not_ibeacons() -> None:
    data = bytes.fromhex("0215") + bytes(21)
    assert ibeacon.from_manufacturer_data(0x004C, data) is not None
    assert ibeacon.from_manufacturer_data(0x004D, data) is None
    assert ibeacon.from_manufacturer_data(0x004C, data[:-1]) is None
    assert ibeacon.from_manufacturer_map({0x0006: data}) is None
    assert ibeacon.from_manufacturer_map({}) is None


def test_identity_is_canonical() -> None:
    canonical = "e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2"
    assert ibeacon.parse_identity(canonical) == canonical
    assert ibeacon.parse_identity(" E2C56DB5-DFFB-48D2-B060-D0F5A71096E0:1:2 ") == canonical
    assert ibeacon.parse_identity("E2C56DB5DFFB48D2B060D0F5A71096E0:01:0002") == canonical
    for bad in ("e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:65536", "e2c56db5-dffb-48d2-b060-d0f5a71096e0:1",
                "not-a-beacon:1:2", "e2c56db5-dffb-48d2-b060-d0f5a71096e0:1:2\n3", "",
                "e2c56db5-dffb-48d2-b060-d0f5a71096e0:\u0661:2"):   # ARABIC-INDIC DIGIT ONE is a digit to \d
        assert ibeacon.parse_identity(bad) is None, bad


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(raw: bytes) -> None:
    found = ibeacon.from_advertising_data(raw)
    for company in (0x004C, int.from_bytes(raw[:2].ljust(2, b"\0"), "little")):
        also = ibeacon.from_manufacturer_data(company, raw)
        assert also is None or (company == 0x004C and raw[:2] == b"\x02\x15")
    if found is not None:
        assert 0 <= found.major <= 0xFFFF
        assert 0 <= found.minor <= 0xFFFF
        assert -128 <= found.power_dbm <= 127
        assert ibeacon.parse_identity(found.identity) == found.identity


ad_structure = st.builds(lambda t, p: bytes((len(p) + 1, t)) + p, st.integers(0, 0xFE), st.binary(max_size=26))


@given(st.uuids(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(-128, 127),
       st.lists(ad_structure, max_size=3), st.lists(ad_structure, max_size=3))
def test_a_beacon_among_other_structures_is_found(proximity: uuid.UUID, major: int, minor: int, power: int,
                                                  before: list[bytes], after: list[bytes]) -> None:
    record = b"\x02\x15" + proximity.bytes + struct.pack(">HHb", major, minor, power)
    structure = bytes((len(record) + 3, 0xFF, 0x4C, 0x00)) + record
    found = ibeacon.from_advertising_data(b"".join(before) + structure + b"".join(after))
    # a structure in front may itself be an iBeacon (type 0xFF with the right bytes): then that one is found
    if not any(ibeacon.from_advertising_data(s) for s in before):
        assert found == IBeacon(str(proximity), major, minor, power)
