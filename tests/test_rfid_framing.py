"""RFID framings (DOMAIN.md section 8): pure decoders on bytes, the constructed streams, and properties."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.rfid.framing import (
    CHECKSUM,
    FRAMING,
    FRAMINGS,
    HALF_FRAME,
    NOISE,
    PARITY,
    REASONS,
    Framing,
    decoder,
    frame,
    line_frame,
    rdm6300_frame,
    wiegand_bits,
    wiegand_frame,
)
from drivers.rfid.taps import RepeatFilter

FIXTURES = Path(__file__).parent / "fixtures" / "rfid"
EXPECTED: dict[str, dict[str, Any]] = json.loads((FIXTURES / "expected.json").read_text())
DOMAIN_FRAME = b"\x021A00D507D018\x03"
W26_DOMAIN = b"11101010100000111110100001"   # even P, FC 213 (11010101), card 2000, odd P; worked by hand


def feed_all(framing: Framing, data: bytes, chunks: list[int] | None = None) -> tuple[list[str], Counter[str]]:
    """Cards and drops of `data` fed whole, or cut at the sizes in `chunks` (cycled)."""
    dec = decoder(framing)
    out: list[str] = []
    if chunks is None:
        out = dec.feed(data)
    else:
        i = k = 0
        while i < len(data):
            n = max(1, chunks[k % len(chunks)])
            out += dec.feed(data[i:i + n])
            i, k = i + n, k + 1
    return out, +dec.drops


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(x == y for y in it) for x in needle)


# -- RDM6300 ------------------------------------------------------------------------------------------
def test_rdm6300_domain_example() -> None:
    dec = decoder("rdm6300")
    assert dec.feed(DOMAIN_FRAME) == ["13961168"]
    assert dec.frames == 1
    assert +dec.drops == Counter()
    assert rdm6300_frame(13961168) == DOMAIN_FRAME


def test_rdm6300_byte_by_byte_and_lower_case() -> None:
    dec = decoder("rdm6300")
    got = [card for b in DOMAIN_FRAME.lower() for card in dec.feed(bytes([b]))]
    assert got == ["13961168"]


def test_rdm6300_bad_checksum_then_good_frame() -> None:
    bad = DOMAIN_FRAME[:11] + b"19" + DOMAIN_FRAME[13:]
    cards, drops = feed_all("rdm6300", bad + DOMAIN_FRAME)
    assert cards == ["13961168"]
    assert drops == Counter({CHECKSUM: 1})    # the rest of the bad frame is not counted again as noise


def test_rdm6300_half_frame_then_frame_resynchronises() -> None:
    cards, drops = feed_all("rdm6300", b"\x021A00D5" + DOMAIN_FRAME)
    assert cards == ["13961168"]
    assert drops == Counter({HALF_FRAME: 1})


def test_rdm6300_missing_end_and_non_hex_are_framing_errors() -> None:
    cards, drops = feed_all("rdm6300", DOMAIN_FRAME[:13] + b"\x04" + b"\x021A00ZZ07D018\x03" + DOMAIN_FRAME)
    assert cards == ["13961168"]
    assert drops[FRAMING] == 2
    assert drops[NOISE] == 0


def test_rdm6300_a_frame_may_start_inside_a_rejected_one() -> None:
    # STX + 12 hex whose 14th byte is the next frame's STX: the first is cut short, the second read
    cards, drops = feed_all("rdm6300", b"\x02" + b"0" * 12 + DOMAIN_FRAME)
    assert cards == ["13961168"]
    assert drops == Counter({HALF_FRAME: 1})


def test_rdm6300_noise_is_counted_in_bytes() -> None:
    cards, drops = feed_all("rdm6300", b"junk" + DOMAIN_FRAME + b"\x03\x03")
    assert cards == ["13961168"]
    assert drops == Counter({NOISE: 6})


def test_flush_drops_a_started_frame() -> None:
    dec = decoder("rdm6300")
    assert dec.feed(DOMAIN_FRAME[:6]) == []
    dec.flush()
    assert dec.drops[HALF_FRAME] == 1
    assert dec.feed(DOMAIN_FRAME[6:]) == []        # the rest of it is not glued to the old start
    assert dec.feed(DOMAIN_FRAME) == ["13961168"]


# -- Wiegand ------------------------------------------------------------------------------------------
def test_wiegand26_domain_example() -> None:
    assert wiegand_bits(13961168, 26).encode() == W26_DOMAIN
    assert (213 << 16) | 2000 == 13961168
    cards, drops = feed_all("wiegand26", W26_DOMAIN + b"\r\n")
    assert cards == ["13961168"]
    assert drops == Counter()


@pytest.mark.parametrize("bit", [0, 1, 12, 13, 24, 25])
def test_wiegand26_any_single_bit_flip_breaks_a_parity(bit: int) -> None:
    flipped = W26_DOMAIN[:bit] + (b"1" if W26_DOMAIN[bit:bit + 1] == b"0" else b"0") + W26_DOMAIN[bit + 1:]
    cards, drops = feed_all("wiegand26", flipped + b"\n")
    assert cards == []
    assert drops == Counter({PARITY: 1})


def test_wiegand34_parities_cover_the_halves() -> None:
    bits = wiegand_bits(0xDEADBEEF, 34)
    assert bits[:17].count("1") % 2 == 0          # bit 1 even over 1-17
    assert bits[17:].count("1") % 2 == 1          # bit 34 odd over 18-34
    assert int(bits[1:33], 2) == 0xDEADBEEF
    cards, _ = feed_all("wiegand34", bits.encode() + b"\r")
    assert cards == [str(0xDEADBEEF)]


def test_wiegand_line_ends_spaces_and_wrong_lengths() -> None:
    line = wiegand_bits(42, 26).encode()
    cards, drops = feed_all("wiegand26", b" " + line + b"\t\r\n" + line[:10] + b"\n" + line + b"1\n" + line + b"\r")
    assert cards == ["42", "42"]
    assert drops == Counter({HALF_FRAME: 1, FRAMING: 1})


def test_overlong_garbage_without_line_end_resynchronises_at_the_next_one() -> None:
    dec = decoder("wiegand26")
    assert dec.feed(b"1" * 500) == []
    assert dec.feed(b"0" * 500) == []
    assert dec.feed(b"\n" + wiegand_frame(7, 26)) == ["7"]
    assert +dec.drops == Counter({FRAMING: 1})


def test_encoders_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="data bits"):
        wiegand_bits(1 << 24, 26)
    with pytest.raises(ValueError, match="unknown framing"):
        decoder("em4100")  # type: ignore[arg-type]


# -- line -----------------------------------------------------------------------------------------------
def test_line_framing_normalises_leading_zeros() -> None:
    cards, drops = feed_all("line", b"0013961168\r\n13961168\n0\n" + b"9" * 21 + b"\nA1\r\n")
    assert cards == ["13961168", "13961168", "0"]
    assert drops == Counter({FRAMING: 1, NOISE: 2})
    assert line_frame(13961168) == b"0013961168\r\n"


# -- the constructed streams ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_constructed_streams_decode_to_what_the_formats_say(name: str) -> None:
    exp = EXPECTED[name]
    data = (FIXTURES / name).read_bytes()
    for chunks in (None, [1], [3, 7, 2]):
        cards, drops = feed_all(exp["framing"], data, chunks)
        assert cards == exp["cards"], chunks
        assert drops == Counter(exp["drops"]), chunks


def test_the_repeat_window_folds_the_held_tag_of_the_stream() -> None:
    exp = EXPECTED["rdm6300-held.bin"]
    held = RepeatFilter(2.0)
    taps = [c for i, c in enumerate(exp["cards"]) if held.is_new(c, i * 0.065)]
    assert taps == exp["taps_when_sent_at_once"]


# -- the repeat window --------------------------------------------------------------------------------
def test_a_held_card_is_one_tap_however_long() -> None:
    f = RepeatFilter(2.0)
    reads = [f.is_new("1", t * 0.065) for t in range(200)]          # 13 s at the reader
    assert reads.count(True) == 1
    assert f.is_new("1", 199 * 0.065 + 2.5) is True                  # taken away, shown again


def test_two_cards_in_turn_are_tracked_apart() -> None:
    f = RepeatFilter(2.0)
    assert [f.is_new(c, t) for c, t in [("a", 0.0), ("b", 0.1), ("a", 0.2), ("b", 0.3), ("a", 2.3)]] == \
        [True, True, False, False, True]
    with pytest.raises(ValueError, match="window_s"):
        RepeatFilter(-1)


# -- properties ---------------------------------------------------------------------------------------------
chunk_sizes = st.lists(st.integers(1, 40), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(framing=st.sampled_from(FRAMINGS), data=st.binary(max_size=600), chunks=chunk_sizes)
def test_random_bytes_never_raise_and_chunking_changes_nothing(framing: Framing, data: bytes,
                                                               chunks: list[int]) -> None:
    whole, whole_drops = feed_all(framing, data)
    cut, cut_drops = feed_all(framing, data, chunks)
    assert whole == cut
    assert whole_drops == cut_drops
    assert set(whole_drops) <= set(REASONS)
    assert all(c.isdigit() and (c == "0" or not c.startswith("0")) for c in whole)


alphabet = st.sampled_from(b"\x02\x03\r\n01AF9 \x00\xff")  # bytes that look like parts of frames


@st.composite
def noisy_stream(draw: st.DrawFn, framing: Framing) -> tuple[bytes, list[str]]:
    width = {"rdm6300": 32, "wiegand26": 24, "wiegand34": 32, "line": 40}[framing]
    cards = draw(st.lists(st.integers(0, (1 << width) - 1 if framing != "line" else 10**18), min_size=1,
                          max_size=6))
    noise = st.one_of(st.binary(max_size=30), st.lists(alphabet, max_size=30).map(bytes))
    out = b""
    for card in cards:
        junk = draw(noise)
        # a line framing resynchronises at a line end, so noise before a line frame ends with one
        out += junk + (b"\n" if framing != "rdm6300" else b"") + frame(framing, card)
    out += draw(noise)
    return out, [str(c) for c in cards]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
@pytest.mark.parametrize("framing", FRAMINGS)
def test_frames_embedded_in_noise_are_found(framing: Framing, data: st.DataObject) -> None:
    stream, cards = data.draw(noisy_stream(framing))
    chunks = data.draw(chunk_sizes)
    got, _ = feed_all(framing, stream, chunks)
    assert is_subsequence(cards, got), (cards, got)
