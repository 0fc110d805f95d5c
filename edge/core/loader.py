"""Loading a site configuration: YAML with line numbers, validated into the models of `edge.core.config`.

Every problem is reported with the file, the line and the field path, and all problems are
reported at once, so an installer fixes a config in one pass. Checks that need a driver's or the
cloud link's knowledge (device profiles, key files) are passed in by the caller (`checks`): the
core knows no driver.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edge.core.config import Config, ModbusDevice, RelayChannel, RfidReader, RtuBus
from edge.core.control import Refused, validate_fields
from edge.core.model import Kind, writable
from edge.core.schedule import fields_for


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top)'}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


Loc = tuple[str | int, ...]
_ENUM_REPR = re.compile(r"<\w+\.\w+: '([^']*)'>")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _expand_env(text: str, missing: list[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:
            return m.group(2)
        missing.append(name)
        return m.group(0)

    return _ENV.sub(sub, text)


MAX_DEPTH = 64  # nesting levels, aliases included; a site config needs about five
MAX_ALIAS_NODES = 100_000  # nodes that aliases expand to; a "billion laughs" file expands to 10**9
_PLAIN_COLLECTIONS = {yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG}


class _Unreadable(Exception):
    """A YAML structure refused before it runs away, or a value no safe constructor reads."""

    def __init__(self, line: int | None, loc: Loc, message: str) -> None:
        self.line = line
        self.loc = loc
        self.message = message


def _position(parent: yaml.Node, index: object) -> tuple[int, int]:
    """A child's place in its collection: its index in a sequence, its key node in a mapping."""
    return id(parent), index if isinstance(index, int) else id(index)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader's composer refusing recursive aliases and deep nesting, and noting where each alias is."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.path: list[str | int] = []
        self.open_anchors: list[str] = []
        self.alias_lines: dict[tuple[int, int], int] = {}  # _position of an alias -> its line

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        line = event.start_mark.line + 1
        step: list[str | int] = []
        if parent is not None:
            step = [index if isinstance(index, int) else index.value if isinstance(index, yaml.ScalarNode) else "?"]
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.open_anchors:
                raise _Unreadable(line, (*self.path, *step),
                                  f"recursive alias *{event.anchor}: it is inside the node it refers to")
            if parent is not None and index is not None:
                self.alias_lines[_position(parent, index)] = line
            return super().compose_node(parent, index)
        if len(self.path) >= MAX_DEPTH:
            raise _Unreadable(line, (*self.path, *step)[:8], f"nesting deeper than {MAX_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        self.path += step
        if anchor is not None:
            self.open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            del self.path[len(self.path) - len(step):]
            if anchor is not None:
                self.open_anchors.pop()


class _Walker:
    """Python data from a composed YAML node, recording each path's line (1-based).

    An alias expands its anchor's node again: the nodes so expanded are counted and the nesting
    they add is bounded, so a file of a few lines cannot make the loader run for ever.
    """

    def __init__(self, alias_lines: Mapping[tuple[int, int], int]) -> None:
        self.lines: dict[Loc, int] = {}
        self.missing_env: list[tuple[Loc, str]] = []
        self._alias_lines = alias_lines
        self._scalars = yaml.SafeLoader("")  # its constructor turns a scalar node into a value
        self._expanded = 0
        self._alias_line: int | None = None  # the outermost alias being expanded, if any

    def walk(self, node: yaml.Node, loc: Loc) -> Any:
        line = node.start_mark.line + 1
        self.lines[loc] = line
        if len(loc) > MAX_DEPTH:
            raise _Unreadable(self._alias_line or line, loc[:8], f"nesting deeper than {MAX_DEPTH} levels")
        if self._alias_line is not None:
            self._expanded += 1
            if self._expanded > MAX_ALIAS_NODES:
                raise _Unreadable(self._alias_line, loc, f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes")
        if isinstance(node, yaml.CollectionNode) and node.tag not in _PLAIN_COLLECTIONS:
            raise _Unreadable(line, loc, f"cannot read this value: the tag {node.tag!r} is not supported here")
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, val_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Unreadable(key_node.start_mark.line + 1, loc,
                                      "a key must be plain text or a number, not a list or a mapping")
                key = key_node.value
                if key in out:
                    self.lines[(*loc, key)] = key_node.start_mark.line + 1
                    raise _DuplicateKey((*loc, key))
                out[key] = self._child(node, key_node, val_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._child(node, i, v, (*loc, i)) for i, v in enumerate(node.value)]
        try:
            value = self._scalars.construct_object(node)  # by the tag the composer resolved
        except yaml.YAMLError as exc:
            raise _Unreadable(line, loc, f"cannot read this value: {getattr(exc, 'problem', None) or exc}") from None
        if isinstance(value, str) and "$" in value:
            missing: list[str] = []
            value = _expand_env(value, missing)
            self.missing_env.extend((loc, name) for name in missing)
            if isinstance(node, yaml.ScalarNode) and node.style is None:
                value = _env_scalar(value)
        return value

    def _child(self, parent: yaml.Node, index: object, node: yaml.Node, loc: Loc) -> Any:
        alias_line = self._alias_lines.get(_position(parent, index))
        if alias_line is None:
            return self.walk(node, loc)
        outer = self._alias_line
        self._alias_line = outer or alias_line
        try:
            value = self.walk(node, loc)
        finally:
            self._alias_line = outer
        self.lines[loc] = alias_line  # where it is used, not where its anchor is
        return value


def _env_scalar(text: str) -> Any:
    """`port: ${PORT}` is a number; any other expanded text (`{`, `a: b`, a date) stays text."""
    try:
        parsed = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text
    return parsed if isinstance(parsed, int | float) else text


class _DuplicateKey(Exception):
    def __init__(self, loc: Loc) -> None:
        self.loc = loc


def _line_for(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _fmt_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Loc, int], list[ConfigProblem]]:
    """Parse `path`; return (data, line map, problems). Syntax errors and runaway structures become problems."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return None, {}, [ConfigProblem(name, None, "", f"cannot read: {exc.strerror or exc}")]
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
    except _Unreadable as exc:
        return None, {}, [ConfigProblem(name, exc.line, _fmt_loc(exc.loc), exc.message)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        msg = str(getattr(exc, "problem", None) or exc)
        return None, {}, [ConfigProblem(name, line, "", f"YAML syntax error: {msg}")]
    finally:
        loader.dispose()
    if node is None:
        return None, {}, [ConfigProblem(name, None, "", "the file is empty")]
    walker = _Walker(loader.alias_lines)
    try:
        data = walker.walk(node, ())
    except _DuplicateKey as dup:
        return None, walker.lines, [ConfigProblem(name, walker.lines.get(dup.loc), _fmt_loc(dup.loc), "duplicate key")]
    except _Unreadable as exc:
        return None, walker.lines, [ConfigProblem(name, exc.line, _fmt_loc(exc.loc), exc.message)]
    problems = [ConfigProblem(name, walker.lines.get(loc), _fmt_loc(loc), f"environment variable {var} is not set")
                for loc, var in walker.missing_env]
    return data, walker.lines, problems


def problem_at(file: str, loc: Loc, lines: Mapping[Loc, int], message: str) -> ConfigProblem:
    """A problem at field path `loc`, with the line it was found on."""
    return ConfigProblem(file, _line_for(loc, lines), _fmt_loc(loc), message)


def _without_union_tags(loc: Loc) -> Loc:
    # discriminated unions add the tag ('ac', 'tcp') to the path: drop it for a readable path
    return tuple(p for p in loc if not (isinstance(p, str) and p in _UNION_TAGS))


def pydantic_problems(file: str, exc: ValidationError, lines: Mapping[Loc, int],
                      readable: Callable[[Loc], Loc] = _without_union_tags) -> list[ConfigProblem]:
    """Every validation error as a problem with its line; `readable` turns pydantic's path into the
    file's (by default: the site config's union tags, 'ac', 'tcp', ..., left out)."""
    out = []
    for err in exc.errors():
        clean = readable(tuple(err["loc"]))
        msg = _ENUM_REPR.sub(r"'\1'", err["msg"])  # <Kind.AC: 'ac'> -> 'ac': what the file says
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(problem_at(file, clean, lines, msg))
    return out


def read_mapping(path: Path) -> tuple[dict[str, Any], dict[Loc, int], list[ConfigProblem]]:
    """A YAML file whose top level is a mapping, with the line of every field; ConfigError otherwise."""
    data, lines, problems = load_yaml_with_lines(path)
    if data is None:
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(str(path), 1, "", "the top level must be a mapping")])
    return data, lines, problems


_UNION_TAGS = {"tcp", "rtu", "ac", "meter", "relay", "light", "fan", "door", "rfid", "beacon_scanner",
               "ModbusDevice", "RelayChannel", "RfidReader", "BeaconScanner"}


Check = Callable[[Config], Iterable[tuple[Loc, str]]]
"""A cross-check supplied by the caller: (field path, message) for each problem it finds."""


def _cross_checks(cfg: Config) -> Iterator[tuple[Loc, str]]:
    """Problems no single field shows: duplicate ids, dangling references."""
    for section, items in (("buses", cfg.buses), ("rooms", cfg.rooms), ("devices", cfg.devices)):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in seen:
                yield (section, i, "id"), f"duplicate id {item.id!r} (first at {section}[{seen[item.id]}])"
            else:
                seen[item.id] = i
    bus_ids = {b.id for b in cfg.buses}
    room_ids = {r.id for r in cfg.rooms}
    by_id = {d.id: d for d in cfg.devices}
    units_seen: dict[tuple[str, int, int | None], int] = {}
    for i, dev in enumerate(cfg.devices):
        room = getattr(dev, "room", None)
        if room is not None and room not in room_ids:
            yield ("devices", i, "room"), f"unknown room {room!r}"
        if isinstance(dev, ModbusDevice):
            if dev.bus not in bus_ids:
                yield ("devices", i, "bus"), f"unknown bus {dev.bus!r} (buses: {', '.join(sorted(bus_ids)) or 'none'})"
            key = (dev.bus, dev.unit, dev.index)
            if key in units_seen:
                first = units_seen[key]
                yield ("devices", i, "unit"), f"same bus, unit and index as devices[{first}] ({cfg.devices[first].id})"
            else:
                units_seen[key] = i
        elif isinstance(dev, RelayChannel):
            board = by_id.get(dev.relay)
            if not isinstance(board, ModbusDevice) or board.kind != Kind.RELAY:
                yield ("devices", i, "relay"), f"{dev.relay!r} is not a relay board device"
        elif isinstance(dev, RfidReader) and dev.purpose == "door":
            door = by_id.get(dev.door) if dev.door else None
            if not isinstance(door, RelayChannel) or door.kind != Kind.DOOR:
                yield ("devices", i, "door"), f"a door reader needs `door:` naming a door device ({dev.door!r} is not)"
    relay_chan: dict[tuple[str, int], str] = {}
    for i, dev in enumerate(cfg.devices):
        if isinstance(dev, RelayChannel):
            k = (dev.relay, dev.channel)
            if k in relay_chan:
                yield ("devices", i, "channel"), f"channel {dev.channel} of {dev.relay} already used by {relay_chan[k]}"
            relay_chan[k] = dev.id
    kinds = {d.id: Kind(d.kind) for d in cfg.devices}
    room_ids = {r.id for r in cfg.rooms}
    floors = {r.floor for r in cfg.rooms}
    seen_groups: set[str] = set()
    for i, group in enumerate(cfg.room_groups):
        if group.id in seen_groups:
            yield ("room_groups", i, "id"), f"duplicate room group id {group.id!r}"
        seen_groups.add(group.id)
        for j, room in enumerate(group.rooms):
            if room not in room_ids:
                yield ("room_groups", i, "rooms", j), f"unknown room {room!r}"
        for j, floor in enumerate(group.floors):
            if floor not in floors:
                yield ("room_groups", i, "floors", j), f"no room is on floor {floor}"
        if group.off_after and not cfg.actuators_for(f"group:{group.id}", group.kinds):
            yield ("room_groups", i, "off_after"), (
                f"the group's rooms have no {'/'.join(group.kinds)} to switch off")
    entry_ids = {e.id for e in cfg.schedules}
    for i, group in enumerate(cfg.room_groups):
        for n in range(1, len(group.off_after) + 1):
            if f"{group.id}-off-{n}" in entry_ids:
                yield ("room_groups", i, "off_after"), f"schedule id {group.id}-off-{n} is taken by a schedule"
    for i, entry in enumerate(cfg.schedules):
        named: set[Kind] = set()
        for j, target in enumerate(entry.targets):
            if target.startswith("group:") and target[6:] not in seen_groups:
                yield ("schedules", i, "targets", j), f"unknown room group {target[6:]!r} (see room_groups)"
                continue
            found = cfg.actuators_for(target, entry.kinds)
            if not found:
                yield ("schedules", i, "targets", j), (
                    f"{target!r} names no AC, light or fan (device, room, group:ID, floor:N or kind:KIND)"
                    + (f" of kind {'/'.join(entry.kinds)}" if entry.kinds else ""))
            named |= {kinds[a] for a in found}
        unused = set(entry.set) - {k for kind in named for k in writable(kind)} - {"power_on"}
        if named and unused:
            yield ("schedules", i, "set"), f"{', '.join(sorted(unused))}: no target of this entry has it"
        for kind in sorted(named):
            # the same models and policies the schedule will meet when it fires (edge.core.control)
            fields = fields_for(kind, dict(entry.set))
            if not fields:
                continue
            try:
                validate_fields(kind, fields, cfg.control)
            except Refused as exc:
                yield ("schedules", i, "set"), f"for the {kind} targets: {exc.message}"
    rtu_buses = {b.id for b in cfg.buses if isinstance(b, RtuBus)}
    for i, dev in enumerate(cfg.devices):
        if isinstance(dev, ModbusDevice) and dev.bus in rtu_buses and dev.unit == 0:
            yield ("devices", i, "unit"), "unit 0 is the RS-485 broadcast address: use 1..247"
    if cfg.homeassistant is not None:
        for j, room in enumerate(cfg.homeassistant.rooms or []):
            if room not in room_ids:
                yield ("homeassistant", "rooms", j), f"unknown room {room!r}"
    if cfg.ems is not None:
        meter = by_id.get(cfg.ems.meter)
        if not isinstance(meter, ModbusDevice) or meter.kind != Kind.METER:
            yield ("ems", "meter"), f"{cfg.ems.meter!r} is not a meter device"
        for unit in cfg.ems.unit_rated_kw:
            ac = by_id.get(unit)
            if not isinstance(ac, ModbusDevice) or ac.kind != Kind.AC:
                yield ("ems", "unit_rated_kw", unit), f"{unit!r} is not an AC device"
        for room in cfg.ems.room_priority:
            if room not in room_ids:
                yield ("ems", "room_priority", room), f"unknown room {room!r}"
        if not cfg.control.setpoint_min_c <= cfg.ems.precool_setpoint_c <= cfg.control.setpoint_max_c:
            yield ("ems", "precool_setpoint_c"), (
                f"{cfg.ems.precool_setpoint_c:g} °C is outside the setpoint policy"
                f" {cfg.control.setpoint_min_c:g}-{cfg.control.setpoint_max_c:g} °C (control): every pre-cool would"
                " be refused")


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths are relative to the config file (CONTRACT.md section 2)."""

    def fix(v: Any) -> Any:
        return v if not isinstance(v, str) or os.path.isabs(v) else str(base / v)

    if isinstance(data.get("profile_dirs"), list):
        data["profile_dirs"] = [fix(v) for v in data["profile_dirs"]]
    storage = data.get("storage")
    if isinstance(storage, dict) and "path" in storage:
        storage["path"] = fix(storage["path"])
    control = data.get("control")
    if isinstance(control, dict) and "socket" in control:
        control["socket"] = fix(control["socket"])
    ha = data.get("homeassistant")
    if isinstance(ha, dict) and isinstance(ha.get("mqtt"), dict):
        for k in ("password_file", "ca_file", "cert_file", "key_file"):
            if k in ha["mqtt"]:
                ha["mqtt"][k] = fix(ha["mqtt"][k])
    cloud = data.get("cloud")
    if isinstance(cloud, dict):
        if isinstance(cloud.get("command_keys"), list):
            cloud["command_keys"] = [fix(v) for v in cloud["command_keys"]]
        for sub, keys in (("mqtt", ("password_file", "ca_file", "cert_file", "key_file")), ("influx", ("token_file",))):
            sect = cloud.get(sub)
            if isinstance(sect, dict):
                for k in keys:
                    if k in sect:
                        sect[k] = fix(sect[k])


LIST_SECTIONS = ("buses", "rooms", "devices", "schedules", "room_groups")


def _prune(data: dict[str, Any], exc: ValidationError) -> tuple[dict[str, Any], dict[str, list[int]], set[str]]:
    """`data` without the list items and top-level keys that failed validation.

    Returns the pruned data, for each list section the original index of every kept item, and
    the ids of the removed items (so that cross-checks do not also call them "unknown").
    """
    bad_items: dict[str, set[int]] = {}
    bad_keys: set[str] = set()
    for err in exc.errors():
        loc = err["loc"]
        if len(loc) >= 2 and loc[0] in LIST_SECTIONS and isinstance(loc[1], int):
            bad_items.setdefault(str(loc[0]), set()).add(loc[1])
        elif loc:
            bad_keys.add(str(loc[0]))
    pruned = {k: v for k, v in data.items() if k not in bad_keys}
    kept: dict[str, list[int]] = {}
    removed_ids: set[str] = set()
    for section in LIST_SECTIONS:
        items = data.get(section)
        if not isinstance(items, list) or section in bad_keys:
            continue
        kept[section] = [i for i in range(len(items)) if i not in bad_items.get(section, set())]
        pruned[section] = [items[i] for i in kept[section]]
        removed_ids |= {str(items[i].get("id")) for i in bad_items.get(section, set()) if isinstance(items[i], dict)}
    return pruned, kept, removed_ids


def load_config(path: str | os.PathLike[str], checks: Iterable[Check] = ()) -> Config:
    """Load and validate a config file; raise ConfigError listing every problem found.

    Problems of form (a wrong type, an unknown key) and of meaning (an unknown bus, a duplicate
    id) are reported together: the items with form problems are set aside and the rest is checked.
    """
    p = Path(path)
    name = str(path)
    data, lines, problems = read_mapping(p)
    _resolve_paths(data, p.resolve().parent)
    kept: dict[str, list[int]] = {}
    removed: set[str] = set()
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems += pydantic_problems(name, exc, lines)
        pruned, kept, removed = _prune(data, exc)
        try:
            cfg = Config.model_validate(pruned)
        except ValidationError:
            raise ConfigError(problems) from None
    found = list(_cross_checks(cfg))
    for check in checks:
        found += check(cfg)
    for where, msg in found:
        if any(f"'{rid}'" in msg for rid in removed):
            continue  # a consequence of a problem already reported
        loc = where
        if len(where) > 1 and where[0] in kept and isinstance(where[1], int):
            loc = (where[0], kept[str(where[0])][where[1]], *where[2:])  # index in the file, not the pruned list
        problems.append(ConfigProblem(name, _line_for(loc, lines), _fmt_loc(loc), msg))
    if problems:
        raise ConfigError(problems)
    return cfg


