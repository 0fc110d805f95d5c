"""`campus-edge modbus scan|read`: what an installer needs when commissioning a bus."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, cast, get_args

from drivers.modbus import tools
from drivers.modbus.profile import DataType, Table
from drivers.modbus.transport import DeviceException, TransportError
from edge.config import load_config
from edge.core.config import RtuBus, TcpBus
from edge.core.loader import ConfigError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _int(text: str) -> int:
    return int(text, 0)  # 0x34 and 52 both work, as in datasheets


def _units(text: str) -> range:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if not 0 <= a <= b <= 247:
        raise argparse.ArgumentTypeError("unit ids are 0..247, e.g. 1-32")
    return range(a, b + 1)


def _bus_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP endpoint")
    g.add_argument("--rtu", metavar="DEVICE", help="serial device, e.g. /dev/ttyUSB0")
    g.add_argument("--bus", metavar="ID", help="a bus of --config")
    p.add_argument("--config", help="site config (with --bus)")
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument("--timeout", type=float, default=1.0, help="seconds per request")


def add_modbus_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="modbus_command", required=True, metavar="scan|read")
    s = sub.add_parser("scan", help="list the unit ids that answer")
    _bus_args(s)
    s.add_argument("--units", type=_units, default=range(1, 248), help="range to try, e.g. 1-32 (default 1-247)")
    s.add_argument("--table", choices=list(get_args(Table)), default="holding", help="probe table")
    s.add_argument("--address", type=_int, default=0, help="probe address (0-based PDU)")
    r = sub.add_parser("read", help="read and decode registers")
    _bus_args(r)
    r.add_argument("--unit", type=int, required=True, help="Modbus unit id")
    r.add_argument("--table", choices=list(get_args(Table)), default="holding")
    r.add_argument("--address", type=_int, required=True, help="0-based PDU address (0x.. allowed)")
    r.add_argument("--count", type=int, default=1, help="number of values")
    r.add_argument("--datatype", choices=[d for d in get_args(DataType) if d != "bool"], default="uint16")
    r.add_argument("--word-order", choices=["big", "little"], default="big")
    r.add_argument("--json", action="store_true")


def _usage(message: str) -> SystemExit:
    print(f"campus-edge modbus: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def _bus(args: argparse.Namespace) -> TcpBus | RtuBus:
    if args.bus:
        if not args.config:
            raise _usage("--bus needs --config")
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
        try:
            return cfg.bus(args.bus)
        except KeyError:
            raise _usage(f"no bus {args.bus!r} in {args.config}") from None
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise _usage("--tcp wants HOST:PORT")
        return TcpBus(id="cli", type="tcp", host=host, port=int(port), timeout_s=args.timeout)
    return RtuBus(id="cli", type="rtu", device=args.rtu, baudrate=args.baudrate, parity=args.parity,
                  stopbits=args.stopbits, timeout_s=args.timeout)


def run_modbus_cli(args: argparse.Namespace) -> int:
    bus = _bus(args)
    try:
        if args.modbus_command == "scan":
            found = asyncio.run(tools.scan(bus, args.units, (args.table, args.address)))
            print(json.dumps({"bus": bus.id, "units": found}))
            return EXIT_OK if found else EXIT_RUNTIME
        values: list[Any] = asyncio.run(tools.read(bus, args.unit, cast(Table, args.table), args.address, args.count,
                                                   args.datatype, args.word_order))
    except DeviceException as exc:
        print(f"campus-edge modbus: unit answered with Modbus exception {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except (TransportError, OSError) as exc:
        print(f"campus-edge modbus: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps({"unit": args.unit, "table": args.table, "address": args.address, "values": values}))
    else:
        step = 1 if args.datatype in ("int16", "uint16") else 2
        for i, v in enumerate(values):
            print(f"{args.table}[{args.address + i * step}] = {v}")
    return EXIT_OK
