"""`campus-edge ctl`: the app-side reference client. Signs commands, sends them, prints the results.

    campus-edge ctl keygen --out DIR
    campus-edge ctl ac ac-301a --on --setpoint 26 --mode cool --as teacher:T123 --rooms 301 \\
        --key cloud.pem --config site.yaml
    campus-edge ctl relay light-301 --off ...;  ctl door door-101 --unlock 5 ...
    campus-edge ctl send --action booking.put --target 301 --params '{"id": "b1", ...}' ...
    campus-edge ctl watch --events --state --config site.yaml

Broker, topic prefix, school and gateway come from the site config (`--config`), or from
`--broker mqtt://host:port --school ID --gateway ID [--prefix campus/v1]`. Each command is a fresh
JWS (jti uuid4, iat now, exp now+60); ctl waits for the result with that id and exits 0 when its
status is ok, 1 otherwise (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_sync.topics import DEFAULT_PREFIX, Topics, audience

if TYPE_CHECKING:  # MQTT and crypto are imported when a subcommand runs, not when the CLI parses
    import aiomqtt

    from cloud_sync.link import LinkSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LIFETIME_S = 60
DEFAULT_WAIT_S = 20.0


class CtlUsageError(Exception):
    pass


def add_ctl_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ctl_command", required=True, metavar="ACTION")

    k = sub.add_parser("keygen", help="write a new Ed25519 key pair: cloud-ed25519.pem (private) and .pub")
    k.add_argument("--out", required=True, help="directory for the two files")
    k.add_argument("--name", default="cloud-ed25519", help="file name stem")

    def common(q: argparse.ArgumentParser, signing: bool) -> None:
        q.add_argument("--config", help="site configuration: broker, prefix, school and gateway")
        q.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (instead of --config)")
        q.add_argument("--school", help="school id (instead of --config)")
        q.add_argument("--gateway", help="gateway id (instead of --config)")
        q.add_argument("--prefix", default=None, help=f"topic prefix (default {DEFAULT_PREFIX})")
        q.add_argument("--username")
        q.add_argument("--password-file")
        q.add_argument("--ca-file")
        q.add_argument("--mqtt-version", choices=["3.1.1", "5"], default="3.1.1")
        if signing:
            q.add_argument("--key", required=True, help="Ed25519 private key (PEM) trusted by the gateway")
            q.add_argument("--as", dest="as_", default="facility:ctl", metavar="ROLE:USER",
                           help="role (teacher, facility, admin) and user id; default facility:ctl")
            q.add_argument("--rooms", action="append", default=None,
                           help="rooms the user may act on (teachers; repeat or comma-separate)")
            q.add_argument("--wait", type=float, default=DEFAULT_WAIT_S, help="seconds to wait for the result")

    a = sub.add_parser("ac", help="set an AC or every AC of a room")
    a.add_argument("target", metavar="DEVICE_OR_ROOM")
    onoff = a.add_mutually_exclusive_group()
    onoff.add_argument("--on", dest="power_on", action="store_const", const=True)
    onoff.add_argument("--off", dest="power_on", action="store_const", const=False)
    a.add_argument("--setpoint", type=float, help="°C")
    a.add_argument("--mode", choices=["cool", "heat", "dry", "fan", "auto"])
    a.add_argument("--fan", choices=["auto", "low", "medium", "high"])
    common(a, True)

    r = sub.add_parser("relay", help="switch a light or fan relay channel (doors: use door)")
    r.add_argument("target", metavar="DEVICE")
    onoff = r.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--on", dest="on", action="store_const", const=True)
    onoff.add_argument("--off", dest="on", action="store_const", const=False)
    common(r, True)

    d = sub.add_parser("door", help="unlock a door for some seconds")
    d.add_argument("target", metavar="DOOR")
    d.add_argument("--unlock", type=float, required=True, metavar="SECONDS")
    common(d, True)

    s = sub.add_parser("send", help="any action: --action X --target Y --params JSON")
    s.add_argument("--action", required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--params", default="{}", help="JSON object")
    common(s, True)

    w = sub.add_parser("watch", help="print status, state, events and results as they arrive")
    w.add_argument("--events", action="store_true")
    w.add_argument("--state", action="store_true")
    w.add_argument("--results", action="store_true")
    w.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    w.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
    common(w, False)


# -- connection ---------------------------------------------------------------------------------------
def _target(args: argparse.Namespace) -> tuple[LinkSettings, Topics, str]:
    """(link settings, topics, audience) from --config or from --broker/--school/--gateway."""
    from cloud_sync.link import LinkSettings, parse_url  # lazy: MQTT (aiomqtt, paho) only when a subcommand runs

    ident = f"campus-edge-ctl-{uuid.uuid4().hex[:8]}"
    if args.config:
        from edge.core.loader import ConfigError, load_config  # lazy: only with --config (ids, broker: no checks)

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CtlUsageError(f"{args.config}: invalid configuration:\n  " +
                                "\n  ".join(str(p) for p in exc.problems)) from None
        if cfg.cloud is None and not args.broker:
            raise CtlUsageError(f"{args.config}: no cloud section; pass --broker")
        school, gateway = args.school or cfg.site.school_id, args.gateway or cfg.site.gateway_id
        prefix = args.prefix or (cfg.cloud.topic_prefix if cfg.cloud else DEFAULT_PREFIX)
        if cfg.cloud is not None and not args.broker:
            mq = cfg.cloud.mqtt.model_copy(update={"client_id": ident})
            settings = LinkSettings.from_config(mq, ident, protocol=args.mqtt_version)
            return settings, Topics.of(prefix, school, gateway), audience(school, gateway)
    else:
        school, gateway, prefix = args.school, args.gateway, args.prefix or DEFAULT_PREFIX
    if not (args.broker and school and gateway):
        raise CtlUsageError("give --config SITE.yaml, or --broker mqtt://HOST:PORT --school ID --gateway ID")
    try:
        tls, host, port = parse_url(args.broker)
    except ValueError as exc:
        raise CtlUsageError(str(exc)) from None
    password = Path(args.password_file).read_text().strip() if args.password_file else None
    settings = LinkSettings(host=host, port=port, client_id=ident, tls=tls, username=args.username,
                            password=password, ca_file=Path(args.ca_file) if args.ca_file else None,
                            protocol=args.mqtt_version)
    return settings, Topics.of(prefix, school, gateway), audience(school, gateway)


def _client(s: LinkSettings) -> aiomqtt.Client:
    import aiomqtt  # lazy: MQTT only when a subcommand runs

    from cloud_sync.link import SOCKET_OPTIONS  # lazy: as aiomqtt

    return aiomqtt.Client(s.host, s.port, identifier=s.client_id, username=s.username, password=s.password,
                          tls_context=s.ssl_context(), timeout=10, socket_options=SOCKET_OPTIONS,
                          protocol=aiomqtt.ProtocolVersion.V5 if s.protocol == "5" else aiomqtt.ProtocolVersion.V311)


# -- commands -----------------------------------------------------------------------------------------
def build_claims(args: argparse.Namespace, aud: str, now: float | None = None) -> dict[str, Any]:
    """The claims of the command the arguments describe (fresh jti, iat now, exp now+60)."""
    role, _, sub = args.as_.partition(":")
    if role not in ("teacher", "facility", "admin") or not sub:
        raise CtlUsageError(f"--as {args.as_!r}: expected ROLE:USER with ROLE teacher, facility or admin")
    cmd = args.ctl_command
    if cmd == "ac":
        params = {k: v for k, v in (("power_on", args.power_on), ("setpoint_c", args.setpoint), ("mode", args.mode),
                                    ("fan", args.fan)) if v is not None}
        if not params:
            raise CtlUsageError("ac: give at least one of --on/--off, --setpoint, --mode, --fan")
        action = "ac.set"
    elif cmd == "relay":
        action, params = "relay.set", {"on": args.on}
    elif cmd == "door":
        action, params = "door.unlock", {"seconds": args.unlock}
    else:
        action = args.action
        try:
            params = json.loads(args.params)
        except ValueError as exc:
            raise CtlUsageError(f"--params: not JSON ({exc})") from None
        if not isinstance(params, dict):
            raise CtlUsageError("--params: a JSON object is expected")
    t = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"jti": str(uuid.uuid4()), "iat": t, "exp": t + LIFETIME_S, "aud": aud, "sub": sub,
                              "role": role, "action": action, "target": args.target, "params": params}
    if args.rooms:
        claims["rooms"] = [r for item in args.rooms for r in item.split(",") if r]
    elif role == "teacher":
        raise CtlUsageError("teachers need --rooms")
    return claims


async def send_command(settings: LinkSettings, topics: Topics, token: str, jti: str,
                       wait_s: float) -> dict[str, Any] | None:
    """Publish a signed command and return its result (None when none came within `wait_s`)."""
    async with _client(settings) as client:
        await client.subscribe(topics.cmd_result, qos=1)
        await client.publish(topics.cmd, token, qos=1)
        try:
            async with asyncio.timeout(wait_s):
                async for m in client.messages:
                    try:
                        body = json.loads(m.payload if isinstance(m.payload, bytes | str) else b"")
                    except ValueError:
                        continue
                    if isinstance(body, dict) and body.get("id") == jti:
                        return body
        except TimeoutError:
            return None
    return None


async def watch(settings: LinkSettings, topics: Topics, args: argparse.Namespace) -> int:
    kinds = {k for k, on in (("event", args.events), ("state", args.state), ("result", args.results)) if on}
    subs = ([topics.event("#")] if "event" in kinds else []) + ([topics.state("+")] if "state" in kinds else []) + \
        ([topics.cmd_result] if "result" in kinds else [])
    if not kinds:
        subs = [topics.all]
    seen = 0
    async with _client(settings) as client:
        for s in subs + ([topics.status] if kinds else []):
            await client.subscribe(s, qos=1)
        try:
            async with asyncio.timeout(args.duration or None):
                async for m in client.messages:
                    p = m.payload
                    text = p.decode("utf-8", "replace") if isinstance(p, bytes | bytearray) else str(p)
                    print(f"{m.topic} {text}", flush=True)
                    seen += 1
                    if args.count and seen >= args.count:
                        break
        except TimeoutError:
            pass
    return EXIT_OK


def run_ctl(args: argparse.Namespace) -> int:
    import aiomqtt  # lazy: MQTT only when a subcommand runs

    from cloud_sync.keys import KeyFileError, generate_keypair, load_private_key, sign_command  # lazy: crypto

    try:
        if args.ctl_command == "keygen":
            out = Path(args.out)
            pub = generate_keypair(out / f"{args.name}.pem", out / f"{args.name}.pub")
            print(json.dumps({"private": str(out / f"{args.name}.pem"), "public": pub.source, "kid": pub.kid}))
            return EXIT_OK
        settings, topics, aud = _target(args)
        if args.ctl_command == "watch":
            return asyncio.run(watch(settings, topics, args))
        key = load_private_key(args.key)
        claims = build_claims(args, aud)
        token = sign_command(key, claims)
        result = asyncio.run(send_command(settings, topics, token, claims["jti"], args.wait))
    except (CtlUsageError, KeyFileError) as exc:
        print(f"campus-edge ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except aiomqtt.MqttError as exc:
        print(f"campus-edge ctl: MQTT broker {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    if result is None:
        print(f"campus-edge ctl: no result for command {claims['jti']} within {args.wait:g} s "
              f"(is the gateway online? topic {topics.cmd})", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result.get("status") == "ok" else EXIT_FAILED
