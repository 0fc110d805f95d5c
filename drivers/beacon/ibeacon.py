"""iBeacon advertisements (DOMAIN.md section 8), from bleak's manufacturer data or from raw AD bytes.

Apple's manufacturer data (company 0x004C) for an iBeacon is `02 15`, then the proximity UUID (16
bytes), major (2, big-endian), minor (2, big-endian) and the measured power (int8: the RSSI at 1 m).
bleak hands it over with the company id stripped; in raw advertising data it sits inside an AD
structure (length, type 0xFF, company id little-endian, data). Pure functions: anything that is not
a well-formed iBeacon is None, never an exception (a radio hears everything nearby).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

APPLE_COMPANY_ID = 0x004C
IBEACON_TYPE = 0x02
IBEACON_LENGTH = 0x15                  # 21 bytes follow the type and length: UUID, major, minor, power
IBEACON_BYTES = 2 + IBEACON_LENGTH     # 23: the manufacturer data from `02 15` on
AD_MANUFACTURER_SPECIFIC = 0xFF
_PREFIX = bytes((IBEACON_TYPE, IBEACON_LENGTH))
_BODY = struct.Struct(">16sHHb")
_IDENTITY = re.compile(r"([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?"
                       r"([0-9a-fA-F]{12}):([0-9]{1,5}):([0-9]{1,5})")


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: str          # canonical: lower case, hyphenated
    major: int
    minor: int
    power_dbm: int     # measured power: the RSSI a receiver should see at 1 m

    @property
    def identity(self) -> str:
        """How a beacon is named in config and events: "UUID:major:minor"."""
        return f"{self.uuid}:{self.major}:{self.minor}"


def _uuid(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def from_manufacturer_data(company_id: int, data: bytes) -> IBeacon | None:
    """The iBeacon in one manufacturer-data entry (company id already split off), or None.

    Bytes after the 23 are ignored: Apple's manufacturer data is a sequence of type-length
    records, and the iBeacon record's own length (0x15) says where it ends.
    """
    if company_id != APPLE_COMPANY_ID or len(data) < IBEACON_BYTES or data[:2] != _PREFIX:
        return None
    uuid, major, minor, power = _BODY.unpack_from(data, 2)
    return IBeacon(_uuid(uuid), major, minor, power)


def from_manufacturer_map(manufacturer_data: Mapping[int, bytes]) -> IBeacon | None:
    """The iBeacon in bleak's `AdvertisementData.manufacturer_data`, or None."""
    data = manufacturer_data.get(APPLE_COMPANY_ID)
    return None if data is None else from_manufacturer_data(APPLE_COMPANY_ID, data)


def from_advertising_data(raw: bytes) -> IBeacon | None:
    """The iBeacon in raw advertising (or scan response) data: a run of AD structures, or None.

    A zero length ends the significant part (the rest is padding); a structure that runs past the
    end makes the whole payload malformed.
    """
    i, n = 0, len(raw)
    while i < n:
        length = raw[i]
        if length == 0:
            return None
        end = i + 1 + length
        if end > n:
            return None
        if raw[i + 1] == AD_MANUFACTURER_SPECIFIC and length >= 3:
            found = from_manufacturer_data(raw[i + 2] | raw[i + 3] << 8, raw[i + 4:end])
            if found is not None:
                return found
        i = end
    return None


def parse_identity(text: str) -> str | None:
    """A beacon identity in canonical form ("UUID:major:minor", UUID lower case and hyphenated), or None."""
    m = _IDENTITY.fullmatch(text.strip())
    if m is None:
        return None
    major, minor = int(m[6]), int(m[7])
    if major > 0xFFFF or minor > 0xFFFF:
        return None
    return f"{m[1]}-{m[2]}-{m[3]}-{m[4]}-{m[5]}".lower() + f":{major}:{minor}"
