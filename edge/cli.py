"""`campus-edge`: the command line (CONTRACT.md section 1). Exit 0 ok, 1 runtime failure, 2 bad usage/config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.config import load_config
from edge.core.config import Config, runtime_dir
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
    from edge.config import config_warnings  # lazy: profiles only where a config is checked

    for warning in config_warnings(cfg):
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    n_modbus = len(cfg.modbus_devices())
    print(f"{args.config}: OK ({len(cfg.devices)} devices, {n_modbus} on Modbus, {len(cfg.buses)} buses, "
          f"{len(cfg.rooms)} rooms)")
    return EXIT_OK


def _dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack to the log (what is a stop or a loop waiting for?)."""
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=12, file=stack)
        log.warning("task %s:\n%s", task.get_name(), stack.getvalue().rstrip())


STOP_HARD_S = 9.5   # systemd and operators expect an exit within 10 s of SIGTERM


def _last_resort(loop: asyncio.AbstractEventLoop) -> threading.Timer:
    """A stop still running after STOP_HARD_S: log what it waits for, then exit 1 (never hang)."""
    def fire() -> None:
        log.error("stop did not finish within %.1f s; exiting 1", STOP_HARD_S)
        with contextlib.suppress(Exception):  # the loop may be too stuck to answer: exit regardless
            asyncio.run_coroutine_threadsafe(_log_tasks(), loop).result(timeout=0.3)
        logging.shutdown()
        os._exit(EXIT_RUNTIME)

    timer = threading.Timer(STOP_HARD_S, fire)
    timer.daemon = True
    timer.start()
    return timer


async def _log_tasks() -> None:
    _dump_tasks()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from edge.daemon import Daemon  # lazy: every driver only for `run`

    async def main() -> None:
        async with Daemon(cfg, status_port=args.status_port) as d:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.add_signal_handler(sig, d.stop)
            loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
            print(f"READY status=127.0.0.1:{d.http.port}", flush=True)
            await d.wait()
            log.info("stopping on signal")
            timers.append(_last_resort(loop))

    timers: list[threading.Timer] = []
    try:
        asyncio.run(main())
    except Exception as exc:
        log.error("daemon failed: %s: %s", type(exc).__name__, exc)
        log.debug("daemon failure", exc_info=True)
        return EXIT_RUNTIME
    finally:
        for t in timers:
            t.cancel()
    return EXIT_OK


def _status_port(args: argparse.Namespace) -> int:
    if args.port:
        return int(args.port)
    return _load(args.config).status_port


def cmd_status(args: argparse.Namespace) -> int:
    from edge.http import get_json  # lazy: the client only

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
        from edge.view import render_status  # lazy: the view only for a human

        print(render_status(body, _load(args.config) if args.config else None))
    return EXIT_OK


WORDS = {"true": True, "on": True, "yes": True, "false": False, "off": False, "no": False}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def parse_value(text: str) -> Any:
    """A FIELD=VALUE word, parsed once: true/false/on/off/yes/no are booleans, numbers are numbers."""
    low = text.strip().lower()
    if low in WORDS:
        return WORDS[low]
    try:
        num = float(low)
    except ValueError:
        return text
    if not math.isfinite(num):
        raise UsageError(f"{text!r} is not a usable number")
    return int(num) if num.is_integer() and "." not in low and "e" not in low else num


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `2h` -> seconds."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise UsageError(f"--hold {text!r}: use seconds or 30m / 2h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return _load(args.config).control.socket
    return runtime_dir() / "control.sock"


def cmd_set(args: argparse.Namespace) -> int:
    """A local operator's request through the daemon's control socket; the exit code says what happened."""
    from edge.http import get_json  # lazy: the client only

    fields: dict[str, Any] = {}
    for item in args.fields:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise UsageError(f"expected FIELD=VALUE, got {item!r}")
        fields[name] = parse_value(value)
    actions = sum(bool(x) for x in (fields, args.release, args.unlock is not None))
    if actions != 1:
        raise UsageError("give FIELD=VALUE pairs, or --release, or --unlock SECONDS (one of them)")
    path, method, body = f"/devices/{args.device}", "POST", None
    if args.release:
        method = "DELETE"
    elif args.unlock is not None:
        path, body = f"/devices/{args.device}/unlock", {"seconds": args.unlock}
    else:
        body = {"set": fields}
        if args.hold:
            body["hold_s"] = parse_duration(args.hold)
    sock = _socket(args)
    try:
        code, reply = asyncio.run(get_json("localhost", 0, path, body=body, wait_s=15, unix=sock, method=method))
    except PermissionError:
        print(f"campus-edge set: permission denied on {sock}: local control is for the admin group"
              " (run as root or a member of the socket's group)", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"campus-edge set: no daemon on {sock} ({exc.strerror or exc})", file=sys.stderr)
        return EXIT_RUNTIME
    print(json.dumps(reply, ensure_ascii=False))
    if code == 200:
        return EXIT_OK
    return EXIT_USAGE if isinstance(reply, dict) and reply.get("status") == "rejected" else EXIT_RUNTIME


def cmd_simulate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    from simulator.app import main as sim_main  # lazy: the simulator only for `simulate`

    return sim_main(cfg, speed=args.speed, wire_emulation=args.wire_emulation or None)


def cmd_demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo  # lazy: the demo only for `demo`

    return run_demo(args.config, speed=args.speed, duration_s=args.duration)


def cmd_modbus(args: argparse.Namespace) -> int:
    from edge.modbus_cli import run_modbus_cli  # lazy: pymodbus only for `modbus`

    return run_modbus_cli(args)


def cmd_ctl(args: argparse.Namespace) -> int:
    from cloud_sync.ctl import run_ctl  # lazy: MQTT and PyJWT only for `ctl`

    return run_ctl(args)


def _option(rest: list[str], name: str) -> str | None:
    """Take `name VALUE` (or `name=VALUE`) out of `rest`; its value, None if absent."""
    for i, arg in enumerate(rest):
        if arg == name and i + 1 < len(rest):
            value = rest[i + 1]
            del rest[i:i + 2]
            return value
        if arg.startswith(name + "="):
            del rest[i]
            return arg.split("=", 1)[1]
    return None


def cmd_ems(args: argparse.Namespace) -> int:
    """`ems bench` runs a scenario (no site config); `ems train` learns the rooms of a site's history."""
    if args.ems_command == "bench":
        from ems.bench.runner import main as bench_main  # lazy: numpy, scipy and matplotlib only for the bench

        return bench_main(args.rest)
    cfg = _load(args.config)
    storage = Path(cfg.storage.path)
    from ems.train import main as train_main  # lazy: scikit-learn only for training, never in the daemon

    return train_main(["--history", str(storage / "history.db"), "--out", str(storage / "models" / "rooms.json"),
                       "--tz", cfg.site.timezone, *args.rest])


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

    p = sub.add_parser("set", help="local command through the arbiter, e.g. set ac-301a power_on=on setpoint_c=26",
                       description="A local operator's request (the facility tier), validated like every other"
                                   " source. Exit 0: the device holds the values (or the answer says who holds"
                                   " them, or when a start follows); 2: refused; 1: failed.")
    p.add_argument("device")
    p.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="true/false/on/off are booleans")
    p.add_argument("--hold", default=None, help="how long the request holds (90s, 30m, 2h; default: the end of"
                                                " the school day, control.day_end)")
    p.add_argument("--release", action="store_true", help="withdraw the local request on DEVICE")
    p.add_argument("--unlock", type=float, default=None, metavar="SECONDS", help="open a door for SECONDS")
    p.add_argument("--config", default=None, help="site configuration (to find the control socket)")
    p.add_argument("--socket", default=None, help="the control socket (instead of --config)")
    p.set_defaults(func=cmd_set)

    p = sub.add_parser("ems", help="the energy manager's offline tools: bench a controller, train the room models",
                       description="ems bench SCENARIO.yaml --controller none|staggered|threshold|ems|oracle"
                                   " [--json OUT] [--plot PNG]; ems train --config FILE [--days N] [--json]."
                                   " Each subcommand has its own --help.")
    ems_sub = p.add_subparsers(dest="ems_command", required=True, metavar="bench|train")
    ems_sub.add_parser("bench", help="run a scenario faster than real time (CONTRACT.md section 5)", add_help=False)
    q = ems_sub.add_parser("train", help="learn each room's temperature model from the daemon's history",
                           add_help=False)
    q.add_argument("--config", help="site configuration (its storage.path holds the history)")
    p.set_defaults(func=cmd_ems)

    p = sub.add_parser("modbus", help="commissioning tools: scan a bus, read registers")
    from edge.modbus_cli import add_modbus_arguments  # lazy: pymodbus only for `modbus`

    add_modbus_arguments(p)
    p.set_defaults(func=cmd_modbus)

    p = sub.add_parser("ctl", help="app-side reference client: sign and send commands, watch results and events")
    from cloud_sync.ctl import add_ctl_arguments  # lazy: MQTT and PyJWT only for `ctl`

    add_ctl_arguments(p)
    p.set_defaults(func=cmd_ctl)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(args_list) - 1):   # `ems bench` and `ems train` options belong to their own parsers
        if args_list[i] == "ems" and args_list[i + 1] in ("bench", "train"):
            known = ap.parse_args([*args_list[:i + 2], *(["--config", "-"] if args_list[i + 1] == "train" else [])])
            known.rest = args_list[i + 2:]
            if args_list[i + 1] == "train":
                known.config = _option(known.rest, "--config")
                if known.config is None:
                    if {"-h", "--help"} & set(known.rest):
                        print("usage: campus-edge ems train --config FILE [--days N] [--json] [--no-progress]")
                        return EXIT_OK
                    ap.error("ems train needs --config FILE")
            # a bench run is thousands of control decisions: their INFO lines only when asked for
            explicit = any(a.startswith("--log-level") for a in args_list[:i])
            setup_logging(known.log_level if explicit else "WARNING", known.log_format)
            return int(known.func(known))
    args = ap.parse_args(args_list)
    setup_logging(args.log_level, args.log_format)
    if args.command == "check-config":
        args.config = args.config or args.config_opt
        if not args.config:
            ap.error("check-config needs a configuration file")
    if args.command == "status" and not (args.config or args.port):
        ap.error("status needs --config or --port")
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

