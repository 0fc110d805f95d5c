"""`campus-edge`: the command line (CONTRACT.md section 1). Exit 0 ok, 1 runtime failure, 2 bad usage/config."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from edge.config import load_config
from edge.core.config import Config
from edge.core.loader import ConfigError
from edge.logs import setup_logging

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
log = logging.getLogger("campus_edge")


class UsageError(Exception):
    """Bad arguments: exit 2 with the message."""


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{path}: invalid configuration ({n} problem{'s' if n != 1 else ''}):", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


# -- subcommands ---------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from edge.config import config_warnings

    for warning in config_warnings(cfg):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    n_modbus = len(cfg.modbus_devices())
    print(f"{args.config}: OK ({len(cfg.devices)} devices, {n_modbus} on Modbus, {len(cfg.buses)} buses, "
          f"{len(cfg.rooms)} rooms)")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from edge.daemon import Daemon

    async def main() -> None:
        async with Daemon(cfg, status_port=args.status_port) as d:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, d.stop)
            print(f"READY status=127.0.0.1:{d.http.port}", flush=True)
            await d.wait()
            log.info("stopping on signal")

    try:
        asyncio.run(main())
    except OSError as exc:
        log.error("daemon failed: %s", exc)
        return EXIT_RUNTIME
    return EXIT_OK


def _status_port(args: argparse.Namespace) -> int:
    if args.port:
        return int(args.port)
    return _load(args.config).status_port


def cmd_status(args: argparse.Namespace) -> int:
    from edge.http import get_json

    port = _status_port(args)
    try:
        code, body = asyncio.run(get_json("127.0.0.1", port, "/status"))
    except OSError as exc:
        print(f"campus-edge status: no daemon answering on 127.0.0.1:{port} ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_RUNTIME
    if code != 200:
        print(f"campus-edge status: daemon answered HTTP {code}", file=sys.stderr)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps({"devices": body["devices"]}, ensure_ascii=False))
    else:
        from edge.view import render_status

        print(render_status(body, _load(args.config) if args.config else None))
    return EXIT_OK


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_set(args: argparse.Namespace) -> int:
    from edge.http import get_json

    fields: dict[str, Any] = {}
    for item in args.fields:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"expected FIELD=VALUE, got {item!r}")
        fields[name] = _parse_value(value)
    port = _status_port(args)
    try:
        code, body = asyncio.run(get_json("127.0.0.1", port, f"/devices/{args.device}", body=fields, wait_s=15))
    except OSError as exc:
        print(f"campus-edge set: no daemon on 127.0.0.1:{port} ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(body, ensure_ascii=False))
    return EXIT_OK if code == 200 else EXIT_RUNTIME


def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from simulator.app import main as sim_main

    return sim_main(cfg, speed=args.speed, wire_emulation=args.wire_emulation or None)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return run_demo(args.config, speed=args.speed, duration_s=args.duration)


def cmd_modbus(args: argparse.Namespace) -> int:
    from edge.modbus_cli import run_modbus_cli

    return run_modbus_cli(args)


def cmd_ctl(args: argparse.Namespace) -> int:
    from cloud_sync.ctl import run_ctl

    return run_ctl(args)


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="campus-edge",
                                 description="Edge gateway and energy-management daemon for schools.")
    ap.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    ap.add_argument("--log-format", default="text", choices=["text", "json"], help="structured log lines")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the daemon in the foreground")
    p.add_argument("--config", required=True, help="site configuration (YAML)")
    p.add_argument("--status-port", type=int, default=None, help="override the loopback status API port (0 = free)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a configuration; report every problem with file:line")
    p.add_argument("config", nargs="?", help="configuration file")
    p.add_argument("--config", dest="config_opt", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("simulate", help="serve the virtual school described by a config")
    p.add_argument("--config", required=True)
    p.add_argument("--speed", type=float, default=None, help="simulated seconds per real second")
    p.add_argument("--wire-emulation", action="store_true", help="pace RTU answers at the bus baud rate")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("demo", help="virtual school + daemon with a live status view (Ctrl-C stops)")
    p.add_argument("--config", default=None, help="defaults to the example school")
    p.add_argument("--speed", type=float, default=None)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("status", help="device states from the running daemon")
    p.add_argument("--config", default=None)
    p.add_argument("--port", type=int, default=None, help="status API port (instead of --config)")
    p.add_argument("--json", action="store_true", help='one JSON object: {"devices": {ID: STATE}}')
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("set", help="local command through the arbiter, e.g. set ac-301a power_on=true setpoint_c=26")
    p.add_argument("device")
    p.add_argument("fields", nargs="+", metavar="FIELD=VALUE")
    p.add_argument("--config", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("modbus", help="commissioning tools: scan a bus, read registers")
    from edge.modbus_cli import add_modbus_arguments

    add_modbus_arguments(p)
    p.set_defaults(func=cmd_modbus)

    p = sub.add_parser("ctl", help="app-side reference client: sign and send commands, watch results and events")
    from cloud_sync.ctl import add_ctl_arguments

    add_ctl_arguments(p)
    p.set_defaults(func=cmd_ctl)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.command == "check-config":
        args.config = args.config or args.config_opt
        if not args.config:
            ap.error("check-config needs a configuration file")
    if args.command in ("status", "set") and not (args.config or args.port):
        ap.error(f"{args.command} needs --config or --port")
    try:
        rc: int = args.func(args)
    except UsageError as exc:
        print(f"campus-edge: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    return rc


if __name__ == "__main__":
    sys.exit(main())

