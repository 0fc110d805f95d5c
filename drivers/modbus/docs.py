"""Supported-device documentation generated from the shipped profiles (`docs/devices.md`).

`python -m drivers.modbus.docs` prints it; `make docs` writes it. The register tables come from the
same data the driver and the simulator use, so the docs cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.modbus.profile import Point, Profile, available_profiles, load_profile

TABLE_SHORT = {"coil": "coil", "discrete": "discrete", "holding": "holding", "input": "input"}
ACCESS = {"r": "read", "rw": "read/write", "w": "write"}


def index_symbol(profile: Profile) -> str:
    """Short name of the sub-unit index for formulas: `VA` from "virtual address (VA)", `n` from "unit n"."""
    if profile.sub_units is None:
        return ""
    label = profile.sub_units.label
    m = re.search(r"\(([A-Za-z][A-Za-z0-9]*)\)", label) or re.search(r"\b([a-z])\b", label)
    return m.group(1) if m else "index"


def address_formula(profile: Profile, block: str, offset: int) -> str:
    """Address of a register as a formula of the sub-unit index, e.g. `16·VA + 2` or `2000 + 6·n + 2`."""
    blk = profile.blocks[block]
    sym = index_symbol(profile)
    if not sym or blk.stride == 0:
        addr = blk.base + offset
        return f"{addr} (0x{addr:X})" if addr >= 10 else str(addr)
    terms = [str(blk.base)] if blk.base else []
    terms.append(f"{blk.stride}·{sym}" if blk.stride != 1 else sym)
    if offset:
        terms.append(str(offset))
    return " + ".join(terms)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fmt_num(x: float) -> str:
    return f"{x:g}"


def _datatype(p: Point) -> str:
    text: str = p.datatype
    if p.bits is not None:
        lo, hi = p.bits
        text += f" bit {lo}" if lo == hi else f" bits {lo}–{hi}"
    if p.words == 2:
        text += " (high word first)" if p.word_order == "big" else " (low word first)"
    return text


def _scale_unit(p: Point) -> str:
    parts = []
    if p.scale != 1.0:
        parts.append(f"×{_fmt_num(p.scale)}")
    if p.unit:
        parts.append(p.unit)
    return " ".join(parts)


def _values(p: Point) -> str:
    if p.enum is not None:
        return ", ".join(f"{code} {name}" for code, name in sorted(p.enum.items()))
    if p.boolean or p.datatype == "bool":
        return "0 off, other on" if p.datatype != "bool" else "off / on"
    if p.range is not None:
        return f"{_fmt_num(p.range[0])} … {_fmt_num(p.range[1])}"
    return ""


def _access(profile: Profile, p: Point) -> str:
    text = ACCESS[p.access]
    if p.writable and p.write_block is not None:
        offset = p.write_offset if p.write_offset is not None else p.offset
        table = TABLE_SHORT[profile.blocks[p.write_block].table]
        text += f"; written to {table} {address_formula(profile, p.write_block, offset)}"
    if not p.poll:
        text += "; not polled"
    return text


def _serial(profile: Profile) -> str:
    s = profile.serial
    return f"{s.baudrate} baud, 8{s.parity}{s.stopbits}"


def _limits(profile: Profile) -> str:
    lim = profile.limits
    has_bits = any(b.table in ("coil", "discrete") for b in profile.blocks.values())
    has_regs = any(b.table in ("holding", "input") for b in profile.blocks.values())
    parts = []
    if has_regs:
        parts.append(f"at most {lim.max_read_registers} registers per read")
    if has_bits:
        parts.append(f"at most {lim.max_read_bits} bits per read")
    if lim.even_count:
        parts.append("even register counts only")
    if lim.even_address:
        parts.append("reads start at even addresses")
    if has_regs:
        parts.append(f"ranges merged across gaps of up to {lim.max_gap} registers"
                     if lim.gap_fill else "undefined registers are never read")
    return "; ".join(parts)


def _sub_units(profile: Profile) -> str:
    su = profile.sub_units
    if su is None:
        return "none (one device per Modbus unit id; no `index` in the config)"
    sym = index_symbol(profile)
    blocks = "; ".join(
        f"`{name}` ({TABLE_SHORT[b.table]}) at `{address_formula(profile, name, 0)}`"
        for name, b in profile.blocks.items()
    )
    return (f"`index` = {su.label}, {su.min}..{su.max}; each block starts at base + stride·{sym} "
            f"(plus the device's `offset`, default 0): {blocks}")


def _pulse(profile: Profile) -> str:
    pulse = profile.pulse
    assert pulse is not None
    words = f"FC{pulse.function:02d} to `0x{pulse.on_address:04X}` + channel (on)"
    if pulse.off_address is not None:
        words += f" or `0x{pulse.off_address:04X}` + channel (off)"
    return (f"{words}, value = time in {pulse.step_s:g} s steps, up to {pulse.max_steps * pulse.step_s:g} s; "
            f"the relay turns back in hardware after the time, even if the gateway dies ({_cell(pulse.source)})")


def profile_section(profile: Profile) -> list[str]:
    """Markdown for one profile."""
    out = [f"## {profile.vendor} {profile.model}", ""]
    if profile.description:
        out += [profile.description, ""]
    out += [
        f"- Profile: `{profile.name}` (kind `{profile.kind}`)",
        f"- Serial defaults: {_serial(profile)}",
        f"- Request limits: {_limits(profile)}",
        f"- Sub-units: {_sub_units(profile)}",
    ]
    if profile.channels is not None:
        out.append(f"- Relay channels: {profile.channels} (`channel: 0..{profile.channels - 1}`)")
    if profile.pulse is not None:
        out.append(f"- Timed pulse: {_pulse(profile)}")
    out.append("- Sources: " + "; ".join(_cell(s) for s in profile.sources))
    out += ["", "| field | table | address | datatype | scale / unit | values | access | source |",
            "|---|---|---|---|---|---|---|---|"]
    for p in profile.points:
        table = TABLE_SHORT[profile.blocks[p.block].table]
        cells = [f"`{p.field}`", table, f"`{address_formula(profile, p.block, p.offset)}`", _datatype(p),
                 _scale_unit(p), _values(p), _access(profile, p), p.source]
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out.append("")
    return out


def render(names: Sequence[str] | None = None) -> str:
    """The whole `docs/devices.md` for the shipped profiles (or for `names`)."""
    profiles = [load_profile(n) for n in (available_profiles() if names is None else names)]
    out = [
        "# Supported devices",
        "",
        "<!-- generated by `make docs` (python -m drivers.modbus.docs) from config/profiles/*.yaml; do not edit -->",
        "",
        "Addresses are 0-based Modbus PDU addresses (what goes on the wire), not the 1-based "
        "\"register numbers\" (40001, 30001 …) of some datasheets. In formulas the sub-unit index "
        "is the device's `index` in the site config. To add a model, see "
        "[adding-a-device.md](adding-a-device.md).",
        "",
        "| profile | kind | vendor | model | sub-units |",
        "|---|---|---|---|---|",
    ]
    for prof in profiles:
        su = prof.sub_units
        sub = f"{su.label}: {su.min}..{su.max}" if su is not None else "none"
        out.append(f"| `{prof.name}` | {prof.kind} | {_cell(prof.vendor)} | {_cell(prof.model)} | {_cell(sub)} |")
    out.append("")
    for prof in profiles:
        out += profile_section(prof)
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
