"""RFID reader framings: pure, incremental decoders from a byte stream to card ids (DOMAIN.md section 8).

Each decoder takes bytes as they arrive (`feed`) and returns the card ids of the frames completed
by them, as decimal strings (CONTRACT.md: RDM6300's four ID bytes as a big-endian integer,
Wiegand's data bits without parity). Nothing a reader sends makes a decoder raise: noise, frames
with a bad checksum or parity and frames cut short are dropped and counted in `drops`, and the
decoder resynchronises on the next frame.

- `rdm6300`: `0x02`, 10 ASCII-hex (version byte, 4 ID bytes), 2 ASCII-hex XOR checksum of those 5
  bytes, `0x03`. A frame may begin anywhere, even inside a rejected one.
- `wiegand26` / `wiegand34`: what a Wiegand-to-UART bridge that passes the raw bits sends: one line
  of exactly 26 (34) ASCII `0`/`1` characters, first bit on the wire first, ended by CR, LF or CR LF
  (spaces or tabs around it are ignored). Both parities are checked: bit 1 even over the first half,
  the last bit odd over the second half. Bridges that decode the number themselves and print it in
  decimal are the `line` framing; they check (or drop) the parity themselves.
- `line`: a card number in decimal digits (1 to 20), ended by CR, LF or CR LF; leading zeros are
  dropped so that "0013961168" and "13961168" are the same card.

A line framing resynchronises at the next line end: bytes glued to the front of a frame without
a line end between them spoil that line.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal, Protocol

Framing = Literal["rdm6300", "wiegand26", "wiegand34", "line"]
FRAMINGS: Final[tuple[Framing, ...]] = ("rdm6300", "wiegand26", "wiegand34", "line")

# Why a frame was dropped (the keys of `drops`). NOISE counts bytes; the others count frames.
NOISE: Final = "noise_bytes"        # bytes that belong to no frame at all
HALF_FRAME: Final = "half_frame"    # a frame cut short (a new one began, the port closed, a short line)
FRAMING: Final = "framing"          # a frame with the wrong delimiters or too long
CHECKSUM: Final = "checksum"        # RDM6300: the XOR of the data bytes does not match
PARITY: Final = "parity"            # Wiegand: a parity bit does not match
REASONS: Final = (NOISE, HALF_FRAME, FRAMING, CHECKSUM, PARITY)

STX: Final = 0x02
ETX: Final = 0x03
RDM6300_LEN: Final = 14             # STX + 10 hex data + 2 hex checksum + ETX
_HEX: Final = b"0123456789ABCDEFabcdef"
_HEX_SET: Final = frozenset(_HEX)
_EOL: Final = b"\r\n"
LINE_MAX_DIGITS: Final = 20         # a 64-bit card number has 20 decimal digits
_LINE_SLACK: Final = 8              # spaces a bridge may put around a line


class Decoder(Protocol):
    framing: Framing
    frames: int                     # well-formed frames decoded
    drops: Counter[str]             # what was dropped, by reason

    def feed(self, data: bytes) -> list[str]:
        """The card ids of the frames that `data` completes (in order); never raises."""

    def flush(self) -> None:
        """Drop a frame left half-received (the port closed): the next `feed` starts afresh."""


class Rdm6300Decoder:
    """`0x02` + 10 hex + 2 hex XOR + `0x03`; hunts for `0x02` and checks every byte as it comes."""

    framing: Framing = "rdm6300"

    def __init__(self) -> None:
        self.frames = 0
        self.drops: Counter[str] = Counter()
        self._buf = bytearray()
        self._offset = 0         # stream position of _buf[0]
        self._quiet_to = 0       # stream position up to which skipped bytes belong to a rejected frame

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf
        buf += data
        out: list[str] = []
        i, n = 0, len(buf)
        while i < n:
            start = buf.find(STX, i)
            if start < 0:
                self._skip(i, n)
                i = n
                break
            self._skip(i, start)
            i = start
            body_end = min(n, i + RDM6300_LEN - 1)
            body = bytes(buf[i + 1:body_end])
            bad = body.translate(None, _HEX)
            if bad:                                   # a byte that can't be in a frame, before its end
                self._reject(i, HALF_FRAME if bad[0] == STX else FRAMING)
                i += 1
                continue
            if n < i + RDM6300_LEN:                   # well-formed so far: wait for the rest
                break
            if buf[i + RDM6300_LEN - 1] != ETX:
                self._reject(i, HALF_FRAME if buf[i + RDM6300_LEN - 1] == STX else FRAMING)
                i += 1
                continue
            raw = bytes.fromhex(body.decode("ascii"))
            if raw[0] ^ raw[1] ^ raw[2] ^ raw[3] ^ raw[4] != raw[5]:
                self._reject(i, CHECKSUM)
                i += 1
                continue
            self.frames += 1
            out.append(str(int.from_bytes(raw[1:5], "big")))
            i += RDM6300_LEN
        del buf[:i]
        self._offset += i
        return out

    def _skip(self, i: int, j: int) -> None:
        """Bytes i..j of the buffer are passed over while hunting for STX."""
        skipped = self._offset + j - max(self._offset + i, self._quiet_to)
        if skipped > 0:
            self.drops[NOISE] += skipped

    def _reject(self, i: int, reason: str) -> None:
        # the rest of the rejected frame is not counted as noise as well; a frame may start inside it
        self.drops[reason] += 1
        self._quiet_to = max(self._quiet_to, self._offset + i + RDM6300_LEN)

    def flush(self) -> None:
        if self._buf:                                 # only a started frame is ever kept
            self.drops[HALF_FRAME] += 1
        self._offset += len(self._buf)
        self._quiet_to = self._offset
        self._buf.clear()


class _LineDecoder:
    """Frames that are lines: split at CR/LF; a line too long to be a frame is dropped as it grows."""

    framing: Framing
    max_len: int

    def __init__(self) -> None:
        self.frames = 0
        self.drops: Counter[str] = Counter()
        self._buf = bytearray()
        self._discarding = False      # inside a line already dropped as too long: skip to its end

    def feed(self, data: bytes) -> list[str]:
        buf = self._buf
        buf += data
        out: list[str] = []
        start = 0
        n = len(buf)
        while start < n:
            end = _find_eol(buf, start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif end > start:
                card = self._line(bytes(buf[start:end]))
                if card is not None:
                    self.frames += 1
                    out.append(card)
            start = end + 1
        del buf[:start]
        if len(buf) > self.max_len:                   # no line end in sight: not a frame, resync at the next
            if not self._discarding:
                self.drops[FRAMING] += 1
                self._discarding = True
            buf.clear()
        return out

    def _line(self, line: bytes) -> str | None:
        """The card of one complete line, or None (counted in `drops`)."""
        if len(line) > self.max_len:                  # checked first: the same count however bytes arrive
            self.drops[FRAMING] += 1
            return None
        text = line.strip(b" \t")
        return self.parse(text) if text else None

    def parse(self, text: bytes) -> str | None:
        raise NotImplementedError

    def flush(self) -> None:
        if self._buf.strip(b" \t") and not self._discarding:
            self.drops[HALF_FRAME] += 1
        self._buf.clear()
        self._discarding = False


def _find_eol(buf: bytearray, start: int) -> int:
    cr = buf.find(b"\r", start)
    lf = buf.find(b"\n", start)
    if cr < 0:
        return lf
    return cr if lf < 0 else min(cr, lf)


class WiegandDecoder(_LineDecoder):
    """A line of 26 or 34 `0`/`1` characters; both parities checked; the card is the data bits."""

    def __init__(self, bits: Literal[26, 34]) -> None:
        super().__init__()
        self.bits = bits
        self.framing = "wiegand26" if bits == 26 else "wiegand34"
        self.max_len = bits + _LINE_SLACK
        self._half = bits // 2

    def parse(self, text: bytes) -> str | None:
        if text.translate(None, b"01"):
            self.drops[NOISE] += len(text)
            return None
        if len(text) != self.bits:
            self.drops[HALF_FRAME if len(text) < self.bits else FRAMING] += 1
            return None
        value = int(text, 2)
        first, second = value >> self._half, value & ((1 << self._half) - 1)
        if first.bit_count() % 2 != 0 or second.bit_count() % 2 != 1:
            self.drops[PARITY] += 1
            return None
        return str((value >> 1) & ((1 << (self.bits - 2)) - 1))


class LineDecoder(_LineDecoder):
    """A decimal card number per line."""

    framing: Framing = "line"
    max_len = LINE_MAX_DIGITS + _LINE_SLACK

    def parse(self, text: bytes) -> str | None:
        if not text.isdigit():                       # bytes.isdigit: ASCII 0-9 only
            self.drops[NOISE] += len(text)
            return None
        if len(text) > LINE_MAX_DIGITS:
            self.drops[FRAMING] += 1
            return None
        return str(int(text))


def decoder(framing: Framing) -> Decoder:
    """A fresh decoder for `framing`."""
    if framing == "rdm6300":
        return Rdm6300Decoder()
    if framing == "wiegand26":
        return WiegandDecoder(26)
    if framing == "wiegand34":
        return WiegandDecoder(34)
    if framing == "line":
        return LineDecoder()
    raise ValueError(f"unknown framing {framing!r} (known: {', '.join(FRAMINGS)})")


# -- encoders: what a reader sends for a card (the bench, the tests and a simulated reader use them) ---
def rdm6300_frame(card: int, version: int = 0x1A) -> bytes:
    """The 14 bytes an RDM6300 sends for the 32-bit tag id `card` (version byte `version`)."""
    data = bytes([version]) + card.to_bytes(4, "big")
    check = data[0] ^ data[1] ^ data[2] ^ data[3] ^ data[4]
    return bytes([STX]) + (data.hex() + f"{check:02x}").upper().encode("ascii") + bytes([ETX])


def wiegand_bits(data: int, bits: Literal[26, 34]) -> str:
    """The `bits`-bit Wiegand frame (with both parities) of the data value `data`, as 0/1 characters."""
    width = bits - 2
    if not 0 <= data < 1 << width:
        raise ValueError(f"{data} does not fit in {width} data bits")
    body = format(data, f"0{width}b")
    half = width // 2
    even = body[:half].count("1") % 2              # makes the first half's count of ones even
    odd = 1 - body[half:].count("1") % 2           # makes the second half's count odd
    return f"{even}{body}{odd}"


def wiegand_frame(data: int, bits: Literal[26, 34], eol: bytes = _EOL) -> bytes:
    """One line as a Wiegand-to-UART bridge sends it."""
    return wiegand_bits(data, bits).encode("ascii") + eol


def line_frame(card: int, eol: bytes = _EOL) -> bytes:
    """One line as a reader of the `line` framing sends it (10 digits, zero-padded, like most do)."""
    return f"{card:010d}".encode("ascii") + eol


def frame(framing: Framing, card: int) -> bytes:
    """The bytes a reader of `framing` sends for `card`."""
    if framing == "rdm6300":
        return rdm6300_frame(card)
    if framing in ("wiegand26", "wiegand34"):
        return wiegand_frame(card, 26 if framing == "wiegand26" else 34)
    return line_frame(card)
