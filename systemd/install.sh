#!/usr/bin/env bash
# Install campus-edge as a system service. Idempotent: run it again after `git pull` or a change
# to the unit; it changes only what differs and never overwrites an existing site configuration.
#
#   sudo systemd/install.sh          install the unit, the user and /etc/campus-edge; enable the service
#   sudo systemd/install.sh --now    ... and (re)start it
#
# The checkout is expected at /opt/campus-edge with its venv built (`make venv`); a checkout elsewhere
# works too: the unit's paths are rewritten to it. DESTDIR=/some/root stages the files there
# without touching users, ownership or systemd (for packaging).
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_APP_DIR=/opt/campus-edge
SERVICE=campus-edge
SVC_USER=campus-edge
DESTDIR="${DESTDIR:-}"
ETC_DIR="$DESTDIR/etc/campus-edge"
UNIT_PATH="$DESTDIR/etc/systemd/system/$SERVICE.service"
EXAMPLE="$APP_DIR/config/site.example.yaml"  # a small school with production paths; not the demo's virtual one
START=no

for arg in "$@"; do
  case "$arg" in
    --now) START=yes ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

say() { echo "campus-edge install: $*"; }
die() { echo "campus-edge install: error: $*" >&2; exit 1; }

staging() { [ -n "$DESTDIR" ]; }

if ! staging; then
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
  command -v systemctl >/dev/null || die "systemd is required"
fi
[ -x "$APP_DIR/.venv/bin/campus-edge" ] || die "$APP_DIR/.venv/bin/campus-edge not found: run \`make venv\` in $APP_DIR first"

# 1. the service user: a system account without a login, in the serial-port group
if ! staging; then
  if ! getent group "$SVC_USER" >/dev/null; then
    groupadd --system "$SVC_USER"
    say "created group $SVC_USER"
  fi
  if ! id -u "$SVC_USER" >/dev/null 2>&1; then
    useradd --system --gid "$SVC_USER" --home-dir /var/lib/campus-edge --no-create-home \
      --shell /usr/sbin/nologin --comment "campus-edge gateway" "$SVC_USER"
    say "created user $SVC_USER"
  fi
  if getent group dialout >/dev/null && ! id -nG "$SVC_USER" | tr ' ' '\n' | grep -qx dialout; then
    usermod -a -G dialout "$SVC_USER"  # for `sudo -u campus-edge campus-edge modbus ...` by hand
    say "added $SVC_USER to dialout"
  fi
fi

# 2. /etc/campus-edge: root-owned, readable by the service group only (it holds secrets)
install -d -m 0750 "$ETC_DIR" "$ETC_DIR/profiles"
staging || chown root:"$SVC_USER" "$ETC_DIR" "$ETC_DIR/profiles"
if [ -e "$ETC_DIR/config.yaml" ]; then
  say "keeping the existing $ETC_DIR/config.yaml"
else
  [ -s "$EXAMPLE" ] || die "$EXAMPLE is missing or empty"
  install -m 0640 "$EXAMPLE" "$ETC_DIR/config.yaml"
  staging || chown root:"$SVC_USER" "$ETC_DIR/config.yaml"
  say "created $ETC_DIR/config.yaml from config/site.example.yaml: edit it for this school"
fi

# 3. the unit, pointed at this checkout
unit_text="$(sed "s|$DEFAULT_APP_DIR|$APP_DIR|g" "$APP_DIR/systemd/$SERVICE.service")"
install -d -m 0755 "$(dirname "$UNIT_PATH")"
if [ -f "$UNIT_PATH" ] && [ "$(cat "$UNIT_PATH")" = "$unit_text" ]; then
  say "$UNIT_PATH is up to date"
  unit_changed=no
else
  printf '%s\n' "$unit_text" > "$UNIT_PATH.tmp"
  chmod 0644 "$UNIT_PATH.tmp"
  mv -f "$UNIT_PATH.tmp" "$UNIT_PATH"
  say "installed $UNIT_PATH"
  unit_changed=yes
fi

if staging; then
  say "staged under $DESTDIR (users, ownership and systemd left alone)"
  exit 0
fi

[ "$unit_changed" = no ] || systemctl daemon-reload
systemctl enable --quiet "$SERVICE.service"
say "enabled $SERVICE.service"

# 4. check the configuration the service will load; start only a valid one
# as the service user, so unreadable files show up now rather than at start-up
if ! runuser -u "$SVC_USER" -- "$APP_DIR/.venv/bin/campus-edge" check-config "$ETC_DIR/config.yaml"; then
  say "fix $ETC_DIR/config.yaml, then: systemctl restart $SERVICE"
  exit 2
fi
if [ "$START" = yes ]; then
  systemctl restart "$SERVICE.service"
  say "started; follow it with: journalctl -u $SERVICE -f"
elif systemctl is-active --quiet "$SERVICE.service"; then
  [ "$unit_changed" = no ] || say "the unit changed: systemctl restart $SERVICE to apply it"
else
  say "start it with: systemctl start $SERVICE (or run this script with --now)"
fi
