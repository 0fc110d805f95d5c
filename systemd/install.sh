#!/usr/bin/env bash
# Install, upgrade, roll back or remove campus-edge on Raspberry Pi OS (64-bit) or Debian 12.
#
#   sudo systemd/install.sh                        install, or check and repair an installation (idempotent)
#   sudo systemd/install.sh --upgrade              build the new release beside the running one, switch to it,
#                                                  and switch back if it does not pass its health check
#   sudo systemd/install.sh --rollback             go back to the previous release
#   sudo systemd/install.sh --uninstall [--purge]  remove the program; --purge also the config and the state
#
# Options:
#   --from DIR|WHEEL    what to install: a source checkout (default: the one holding this script), a built
#                       wheel (campus_edge-*.whl), or a prepared release (a folder with RELEASE and bin/campus-edge)
#   --root DIR          act on the system image under DIR instead of / (tests); there a system command
#                       (systemctl, useradd, udevadm, ...) runs only where its variable below names one
#   --keep N            releases kept after an upgrade: the current one and N-1 to roll back to (default 3)
#   --no-ems            without the energy manager's training libraries (~350 MB) and its nightly timer
#   --health-timeout S  how long a (re)started daemon has to answer `campus-edge status` (default 90)
#
# Layout: /opt/campus-edge/releases/VERSION (one venv each), /opt/campus-edge/current -> the running one,
# /etc/campus-edge/config.yaml (seeded once from config/site.example.yaml, never overwritten),
# /var/lib/campus-edge (state), udev names under /dev/campus-edge/. docs/install.md tells the whole story.
# Environment: SYSTEMCTL UDEVADM USERADD USERDEL GROUPADD GROUPDEL USERMOD GETENT RUNUSER CHOWN replace
# those commands (tests use shims that record calls); PYTHON the interpreter of new releases (python3);
# PIP_* configure pip as usual (PIP_INDEX_URL for a local mirror). DESTDIR=DIR only stages the files under
# DIR (config, units, udev rules) for packaging: no release, no users, no systemd.
# Exit codes: 0 done; 2 bad usage, or a configuration the (new) release refuses (nothing switched);
# 1 a failure (an upgrade that failed its health check has been rolled back when this exits 1).
set -euo pipefail
umask 022

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECKOUT="$(dirname "$SCRIPT_DIR")"
SERVICE=campus-edge.service
TRAIN_SERVICE=campus-edge-train.service
TRAIN_TIMER=campus-edge-train.timer
SVC_USER=campus-edge
LOCAL_RULES=71-campus-edge-local.rules   # this school's device names: seeded once, never overwritten
SHIPPED_RULES=70-campus-edge.rules       # replaced by every release

ACTION=install
PURGE=no
ROOT=""
FROM=""
KEEP=3
EMS=yes
HEALTH_TIMEOUT=90
HEALTH_INTERVAL="${CAMPUS_EDGE_HEALTH_INTERVAL:-1}"
HEALTH_SETTLE="${CAMPUS_EDGE_HEALTH_SETTLE:-10}"   # a daemon must still be up, not restarted, this long after
STAGE_ONLY=no

say() { echo "campus-edge install: $*"; }
warn() { echo "campus-edge install: warning: $*" >&2; }
die() { echo "campus-edge install: error: $*" >&2; exit "${2:-1}"; }
usage() { echo "campus-edge install: $*; try --help" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --upgrade) ACTION=upgrade ;;
    --rollback) ACTION=rollback ;;
    --uninstall) ACTION=uninstall ;;
    --purge) PURGE=yes ;;
    --no-ems) EMS=no ;;
    --now) ;;   # the old script's flag: installing always starts the service now
    --root|--from|--keep|--health-timeout)
      [ $# -ge 2 ] && [ -n "$2" ] || usage "$1 needs a value"
      case "$1" in
        --root) ROOT="$2" ;; --from) FROM="$2" ;; --keep) KEEP="$2" ;; --health-timeout) HEALTH_TIMEOUT="$2" ;;
      esac
      shift ;;
    --root=*|--from=*|--keep=*|--health-timeout=*)
      value="${1#*=}"
      [ -n "$value" ] || usage "${1%%=*} needs a value"
      case "$1" in
        --root=*) ROOT="$value" ;; --from=*) FROM="$value" ;; --keep=*) KEEP="$value" ;;
        --health-timeout=*) HEALTH_TIMEOUT="$value" ;;
      esac ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument: $1" ;;
  esac
  shift
done

[ "$PURGE" = no ] || [ "$ACTION" = uninstall ] || usage "--purge goes with --uninstall"
[[ "$KEEP" =~ ^[0-9]+$ ]] && [ "$KEEP" -ge 2 ] || usage "--keep must be a whole number >= 2 (the current release and one to roll back to), got '$KEEP'"
[[ "$HEALTH_TIMEOUT" =~ ^[0-9]+$ ]] || usage "--health-timeout must be whole seconds, got '$HEALTH_TIMEOUT'"
if [ -n "${DESTDIR:-}" ]; then
  [ -z "$ROOT" ] || usage "DESTDIR and --root are two ways of saying the same: give one"
  [ "$ACTION" = install ] || usage "DESTDIR stages an installation's files; it has no $ACTION"
  ROOT="$DESTDIR"
  STAGE_ONLY=yes
fi
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT" || die "cannot create --root $ROOT"
  ROOT="$(cd "$ROOT" && pwd)"
  [ "$ROOT" != / ] || ROOT=""
fi

# paths as the running system sees them, and where this script writes them
SYS_OPT=/opt/campus-edge
SYS_ETC=/etc/campus-edge
SYS_STATE=/var/lib/campus-edge
OPT="$ROOT$SYS_OPT"
RELEASES="$OPT/releases"
CURRENT="$OPT/current"
ETC="$ROOT$SYS_ETC"
CONF="$ETC/config.yaml"
STATE="$ROOT$SYS_STATE"
UNIT_DIR="$ROOT/etc/systemd/system"
DROPIN_DIR="$UNIT_DIR/$SERVICE.d"
UDEV_DIR="$ROOT/etc/udev/rules.d"
BIN_LINK="$ROOT/usr/local/bin/campus-edge"   # `campus-edge ...` on the PATH: the current release's

# -- the system commands: replaceable, and under --root never the real ones unless named ------------------
sys() {  # sys NAME ARGS...: the system command NAME, or the command its upper-case variable names
  local name="$1" var="${1^^}" value
  shift
  value="${!var:-}"
  if [ -n "$value" ]; then
    local -a cmd
    read -r -a cmd <<<"$value"
    "${cmd[@]}" "$@"
  elif [ -n "$ROOT" ]; then
    case "$name" in
      getent) return 2 ;;   # "not found": then the matching useradd/usermod is skipped below too
      runuser) shift 3; "$@" ;;   # runuser -u USER -- CMD...: as this user instead (reads files only)
      *) say "skipped under --root: $name $*" ;;
    esac
  else
    "$name" "$@"
  fi
}

replaced() { local var="${1^^}"; [ -z "$ROOT" ] || [ -n "${!var:-}" ]; }

# -- small helpers ----------------------------------------------------------------------------------------
now_ms() { local us="${EPOCHREALTIME/[.,]/}"; echo $((us / 1000)); }

install_file() {  # install_file MODE SRC DEST: copy if different; returns 0 when it changed something
  local mode="$1" src="$2" dest="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    return 1
  fi
  install -d -m 0755 "$(dirname "$dest")"
  install -m "$mode" "$src" "$dest.new"
  mv -f "$dest.new" "$dest"
  return 0
}

release_version() { sed -n 's/^version=//p' "$1/RELEASE" 2>/dev/null | head -n 1; }
current_release() { [ -L "$CURRENT" ] && basename "$(readlink "$CURRENT")" || true; }
complete() { [ -f "$RELEASES/$1/RELEASE" ] && [ -x "$RELEASES/$1/bin/campus-edge" ]; }

has_beacon_scanner() {  # a `kind: beacon_scanner` device in the config (block or flow style, not commented out)
  [ -f "$CONF" ] && grep -Eq '^[^#]*kind:[[:space:]]*["'\'']?beacon_scanner\b' "$CONF"
}

in_group() {  # in_group GROUP: the service user is listed in it
  local line
  line="$(sys getent group "$1")" || return 1
  [[ ",${line##*:}," == *",$SVC_USER,"* ]]
}

# -- where the new release comes from -----------------------------------------------------------------------
SRC_KIND=""
SRC_VERSION=""
resolve_source() {
  local from="${FROM:-$CHECKOUT}"
  [ -e "$from" ] || usage "--from $from does not exist"
  if [ -d "$from" ]; then from="$(cd "$from" && pwd)"; else from="$(cd "$(dirname "$from")" && pwd)/$(basename "$from")"; fi
  FROM="$from"
  if [ -f "$from" ] && [[ "$from" == *.whl ]]; then
    SRC_KIND=wheel
    SRC_VERSION="$(basename "$from" | cut -d- -f2)"
  elif [ -f "$from/RELEASE" ] && [ -x "$from/bin/campus-edge" ]; then
    SRC_KIND=prepared
    SRC_VERSION="$(release_version "$from")"
  elif [ -f "$from/setup.py" ] && [ -f "$from/requirements.txt" ]; then
    SRC_KIND=source
    SRC_VERSION="$(sed -n 's/^[[:space:]]*version="\([^"]*\)".*/\1/p' "$from/setup.py" | head -n 1)"
    local sha
    if sha="$(git -c safe.directory="$from" -C "$from" rev-parse --short=8 HEAD 2>/dev/null)"; then
      SRC_VERSION="$SRC_VERSION-g$sha"
      # uncommitted changes make a build of their own, never mistaken for the commit's
      if [ -n "$(git -c safe.directory="$from" -C "$from" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        SRC_VERSION="$SRC_VERSION-dirty.$(date +%Y%m%d%H%M%S)"
      fi
    fi
  else
    usage "--from $from is neither a source checkout (setup.py), a wheel (.whl) nor a prepared release (RELEASE, bin/campus-edge)"
  fi
  [[ "$SRC_VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "cannot tell the version of $from (got '$SRC_VERSION')"
}

copy_tree() {  # copy_tree SRC DEST: a checkout's tracked and new files (no .venv, .git or build output)
  local src="$1" dest="$2"
  mkdir -p "$dest"
  if git -c safe.directory="$src" -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$src" && git -c safe.directory="$src" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -xf - -C "$dest"
  else
    tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
      --exclude=__pycache__ -cf - . | tar -xf - -C "$dest"
  fi
}

stage_units() {  # stage_units SYSTEMD_DIR REL: the units as they point into /opt/campus-edge/current
  local from="$1" rel="$2" unit
  mkdir -p "$rel/share/campus-edge/systemd" "$rel/share/campus-edge/udev" || return 1
  sed -e "s|$SYS_OPT/\\.venv/|$SYS_OPT/current/|g" -e "s|file:$SYS_OPT/README.md|file:$SYS_OPT/current/README.md|g" \
    "$from/$SERVICE" >"$rel/share/campus-edge/systemd/$SERVICE" || return 1
  grep -q "^ExecStart=$SYS_OPT/current/bin/campus-edge run " "$rel/share/campus-edge/systemd/$SERVICE" ||
    { warn "$from/$SERVICE: its ExecStart does not run $SYS_OPT/.venv/bin/campus-edge run"; return 1; }
  for unit in "$TRAIN_SERVICE" "$TRAIN_TIMER"; do
    cp "$from/$unit" "$rel/share/campus-edge/systemd/$unit" || return 1
  done
  cp "$from/udev/$SHIPPED_RULES" "$from/udev/$LOCAL_RULES" "$rel/share/campus-edge/udev/" || return 1
}

EMS_LIB_NOTE=""
build_ems_lib() {  # build_ems_lib REQUIREMENTS REL: the training libraries in REL/ems, shared with the current release where the pins are the same
  local req="$1" rel="$2" stamp prev
  stamp="$("$rel/bin/python" -c 'import sys; print("python %d.%d" % sys.version_info[:2])')" || return 1
  stamp="$stamp"$'\n'"$(grep -v '^[[:space:]]*#' "$req" | sed 's/[[:space:]]*#.*//' | sed '/^[[:space:]]*$/d')"
  prev="$(current_release)"
  if [ -n "$prev" ] && [ -f "$RELEASES/$prev/ems/.built-for" ] && [ "$(cat "$RELEASES/$prev/ems/.built-for")" = "$stamp" ]; then
    cp -al "$RELEASES/$prev/ems" "$rel/ems" || return 1   # hard links: no second copy on the SD card, no download
    EMS_LIB_NOTE="shared with $prev"
  else
    say "installing the energy manager's training libraries (numpy, scipy, scikit-learn: a few minutes on a Pi)"
    # wheels only: compiling scipy on a Pi would take hours; a missing wheel should fail now, loudly
    "$rel/bin/python" -m pip install --disable-pip-version-check --no-input -q --only-binary=:all: \
      --target "$rel/ems" -r "$req" || return 1
    printf '%s\n' "$stamp" >"$rel/ems/.built-for"
  fi
  cat >"$rel/bin/campus-edge-ems" <<'EOF'
#!/bin/sh
# campus-edge with the energy manager's offline libraries on its path (`campus-edge-ems ems train ...`):
# they live in this release's ems/ folder, outside the daemon's environment, so the daemon cannot load them
here="$(dirname "$(readlink -f "$0")")"
PYTHONPATH="$(dirname "$here")/ems${PYTHONPATH:+:$PYTHONPATH}" exec "$here/campus-edge" "$@"
EOF
  chmod 0755 "$rel/bin/campus-edge-ems"
}

build_release() {  # build_release REL: the release from $FROM; returns non-zero (saying why) on any failure
  local rel="$1" tmp="" units_from="$SCRIPT_DIR" req_ems="$CHECKOUT/requirements-ems.txt" readme="$CHECKOUT/README.md"
  mkdir -p "$rel" || return 1
  case "$SRC_KIND" in
    prepared)
      cp -a "$FROM/." "$rel/" || return 1
      rm -f "$rel/RELEASE"   # written again below, last, as the mark of a finished release
      ;;
    source|wheel)
      local python="${PYTHON:-python3}"
      "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        { warn "$python is missing or older than 3.11 (Raspberry Pi OS 12 has 3.11)"; return 1; }
      "$python" -m venv "$rel" ||
        { warn "cannot create a venv with $python: apt-get install python3-venv"; return 1; }
      local -a pip=("$rel/bin/python" -m pip --disable-pip-version-check --no-input -q)
      say "installing campus-edge $SRC_VERSION and its pinned requirements into $SYS_OPT/releases/$SRC_VERSION"
      if [ "$SRC_KIND" = source ]; then
        # build from a copy: the checkout stays untouched (no build/ or egg-info owned by root in it)
        tmp="$(mktemp -d)"
        copy_tree "$FROM" "$tmp/src" || { rm -rf "$tmp"; return 1; }
        "${pip[@]}" install --prefer-binary -r "$tmp/src/requirements.txt" &&
          "${pip[@]}" install --no-deps "$tmp/src" || { rm -rf "$tmp"; return 1; }
        units_from="$tmp/src/systemd"
        req_ems="$tmp/src/requirements-ems.txt"
        readme="$tmp/src/README.md"
      else
        # the wheel's own requirements are requirements.txt's pins (setup.py reads them)
        "${pip[@]}" install --prefer-binary "$FROM" || return 1
      fi
      cp "$readme" "$rel/README.md" 2>/dev/null || true   # the unit's Documentation=
      if [ "$EMS" = yes ]; then
        build_ems_lib "$req_ems" "$rel" || { rm -rf "$tmp"; return 1; }
      fi
      ;;
  esac
  if [ ! -f "$rel/share/campus-edge/systemd/$SERVICE" ]; then
    stage_units "$units_from" "$rel" || { [ -z "$tmp" ] || rm -rf "$tmp"; return 1; }
  fi
  [ -z "$tmp" ] || rm -rf "$tmp"
  "$rel/bin/campus-edge" --help >/dev/null 2>&1 || { warn "the new release's campus-edge does not run"; return 1; }
  { echo "version=$SRC_VERSION"
    echo "source=$SRC_KIND $FROM"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "ems=$([ -x "$rel/bin/campus-edge-ems" ] && echo "yes${EMS_LIB_NOTE:+ ($EMS_LIB_NOTE)}" || echo no)"
  } >"$rel/RELEASE.new" && mv "$rel/RELEASE.new" "$rel/RELEASE"
}

new_release() {  # new_release: build $SRC_VERSION into releases/ (replacing an unfinished or earlier build of it)
  local rel="$RELEASES/$SRC_VERSION"
  install -d -m 0755 "$RELEASES"
  rm -rf "$rel"
  say "building release $SRC_VERSION from $FROM ($SRC_KIND)"
  if ! build_release "$rel"; then
    rm -rf "$rel"
    die "building release $SRC_VERSION failed (see above); nothing was switched"
  fi
}

switch_to() {  # switch_to VERSION: point current at it, atomically; it becomes the most recently used release
  ln -sfn "releases/$1" "$OPT/current.new"
  mv -Tf "$OPT/current.new" "$CURRENT"
  touch "$RELEASES/$1"
}

prune() {  # keep the current release and the KEEP-1 most recently used others; drop unfinished builds
  local cur kept=1 v
  cur="$(current_release)"
  for dir in $(ls -1dt "$RELEASES"/*/ 2>/dev/null); do
    v="$(basename "$dir")"
    [ "$v" != "$cur" ] || continue
    if complete "$v" && [ "$kept" -lt "$KEEP" ]; then
      kept=$((kept + 1))
    else
      rm -rf "${RELEASES:?}/$v"
      say "removed release $v"
    fi
  done
}

previous_release() {  # the most recently used finished release other than the current one
  local cur v
  cur="$(current_release)"
  for dir in $(ls -1dt "$RELEASES"/*/ 2>/dev/null); do
    v="$(basename "$dir")"
    if [ "$v" != "$cur" ] && complete "$v"; then echo "$v"; return 0; fi
  done
  return 1
}

# -- the system around the release ----------------------------------------------------------------------------
ensure_user() {
  if ! replaced useradd; then
    say "skipped under --root: the system user $SVC_USER and its groups"
    return 0
  fi
  if ! sys getent group "$SVC_USER" >/dev/null; then
    sys groupadd --system "$SVC_USER"
  fi
  if ! sys getent passwd "$SVC_USER" >/dev/null; then
    sys useradd --system --gid "$SVC_USER" --home-dir "$SYS_STATE" --no-create-home \
      --shell /usr/sbin/nologin --comment "campus-edge gateway" "$SVC_USER"
    say "created the system user $SVC_USER"
  fi
  local groups=(dialout)   # serial ports: RS-485 adapters and RFID readers
  has_beacon_scanner && groups+=(bluetooth)   # BlueZ's D-Bus policy on Raspberry Pi OS admits this group
  for g in "${groups[@]}"; do
    if ! sys getent group "$g" >/dev/null; then
      warn "there is no group $g on this system: $SVC_USER is not added to it"
    elif ! in_group "$g"; then
      sys usermod -a -G "$g" "$SVC_USER"
      say "added $SVC_USER to $g"
    fi
  done
}

ensure_dirs() {
  # /etc/campus-edge holds secrets (MQTT password, keys): root-owned, readable by the service group only
  install -d -m 0750 "$ETC" "$ETC/profiles"
  sys chown "root:$SVC_USER" "$ETC" "$ETC/profiles"
  if [ -e "$CONF" ]; then
    say "keeping the existing $SYS_ETC/config.yaml"
  else
    [ -s "$CHECKOUT/config/site.example.yaml" ] || die "$CHECKOUT/config/site.example.yaml is missing or empty"
    install -m 0640 "$CHECKOUT/config/site.example.yaml" "$CONF"
    sys chown "root:$SVC_USER" "$CONF"
    say "created $SYS_ETC/config.yaml from config/site.example.yaml: edit it for this school"
  fi
  install -d -m 0750 "$STATE"
  sys chown "$SVC_USER:$SVC_USER" "$STATE"
}

UNITS_CHANGED=no
install_units() {  # install_units REL [TRAIN]: the release's units and udev rules, the bluetooth drop-in
  local from="$1/share/campus-edge/systemd" udev="$1/share/campus-edge/udev" unit train="${2:-no}"
  [ -f "$from/$SERVICE" ] || die "$from/$SERVICE is missing: the release is incomplete"
  # the nightly training only where the release has its libraries (not one built with --no-ems)
  [ -x "$1/bin/campus-edge-ems" ] && [ -f "$from/$TRAIN_TIMER" ] && train=yes
  install_file 0644 "$from/$SERVICE" "$UNIT_DIR/$SERVICE" && UNITS_CHANGED=yes
  for unit in "$TRAIN_SERVICE" "$TRAIN_TIMER"; do
    if [ "$train" = yes ]; then
      install_file 0644 "$from/$unit" "$UNIT_DIR/$unit" && UNITS_CHANGED=yes
    elif [ -e "$UNIT_DIR/$unit" ]; then
      [ "$unit" != "$TRAIN_TIMER" ] || sys systemctl disable --now "$TRAIN_TIMER" || true
      rm -f "$UNIT_DIR/$unit"
      UNITS_CHANGED=yes
      say "removed $unit (this release has no training libraries)"
    fi
  done
  local dropin="$DROPIN_DIR/50-bluetooth.conf"
  if has_beacon_scanner; then
    local tmp
    tmp="$(mktemp)"
    printf '%s\n' "# written by install.sh: $SYS_ETC/config.yaml has a beacon_scanner (BlueZ over D-Bus)" \
      "[Service]" "SupplementaryGroups=bluetooth" >"$tmp"
    install_file 0644 "$tmp" "$dropin" && { UNITS_CHANGED=yes; say "the service joins group bluetooth (a beacon scanner is configured)"; }
    rm -f "$tmp"
  elif [ -e "$dropin" ]; then
    rm -f "$dropin"
    rmdir "$DROPIN_DIR" 2>/dev/null || true
    UNITS_CHANGED=yes
  fi
  local rules_changed=no
  install_file 0644 "$udev/$SHIPPED_RULES" "$UDEV_DIR/$SHIPPED_RULES" && rules_changed=yes
  if [ ! -e "$UDEV_DIR/$LOCAL_RULES" ]; then
    install_file 0644 "$udev/$LOCAL_RULES" "$UDEV_DIR/$LOCAL_RULES" || true
    rules_changed=yes
    say "created /etc/udev/rules.d/$LOCAL_RULES: name this school's adapters and readers there"
  fi
  if [ "$rules_changed" = yes ] && [ "$STAGE_ONLY" = no ]; then
    sys udevadm control --reload-rules
    sys udevadm trigger --subsystem-match=tty --action=add
  fi
  if [ "$UNITS_CHANGED" = yes ] && [ "$STAGE_ONLY" = no ]; then
    sys systemctl daemon-reload
  fi
}

check_config() {  # check_config REL: the release's check-config on the site config, as the service user
  sys runuser -u "$SVC_USER" -- "$1/bin/campus-edge" check-config "$CONF"
}

HEALTH_WHY=""
healthy() {  # healthy: the service is active and `campus-edge status` answers, and still does after the settle time
  HEALTH_WHY=""
  if ! replaced systemctl; then
    say "not checking the daemon under --root without SYSTEMCTL"
    return 0
  fi
  local deadline state out restarts
  deadline=$(( $(now_ms) + HEALTH_TIMEOUT * 1000 ))
  while :; do
    state="$(sys systemctl is-active "$SERVICE" 2>/dev/null)" || true
    if [ "$state" = failed ]; then
      HEALTH_WHY="$SERVICE failed (journalctl -u campus-edge -n 50 shows why)"
      return 1
    fi
    if [ "$state" != active ]; then
      HEALTH_WHY="$SERVICE is ${state:-not running}"
    elif out="$("$CURRENT/bin/campus-edge" status --config "$CONF" --json 2>&1 >/dev/null)"; then
      break
    else
      HEALTH_WHY="${out:-campus-edge status failed}"
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      HEALTH_WHY="no answer within ${HEALTH_TIMEOUT} s: $HEALTH_WHY"
      return 1
    fi
    sleep "$HEALTH_INTERVAL"
  done
  restarts="$(sys systemctl show -p NRestarts --value "$SERVICE" 2>/dev/null)" || restarts=""
  sleep "$HEALTH_SETTLE"
  state="$(sys systemctl is-active "$SERVICE" 2>/dev/null)" || true
  if [ "$state" != active ]; then
    HEALTH_WHY="$SERVICE answered, then stopped within ${HEALTH_SETTLE} s (it is $state)"
    return 1
  fi
  if [ "$(sys systemctl show -p NRestarts --value "$SERVICE" 2>/dev/null)" != "$restarts" ]; then
    HEALTH_WHY="$SERVICE answered, then restarted within ${HEALTH_SETTLE} s"
    return 1
  fi
  if ! out="$("$CURRENT/bin/campus-edge" status --config "$CONF" --json 2>&1 >/dev/null)"; then
    HEALTH_WHY="$SERVICE answered, then stopped answering: $out"
    return 1
  fi
}

enable_units() {
  sys systemctl enable --quiet "$SERVICE"
  if [ -f "$UNIT_DIR/$TRAIN_TIMER" ]; then
    sys systemctl enable --quiet --now "$TRAIN_TIMER"
  fi
}

# -- the actions --------------------------------------------------------------------------------------------
do_stage() {
  ensure_dirs
  local tmp
  tmp="$(mktemp -d)"
  stage_units "$SCRIPT_DIR" "$tmp" || { rm -rf "$tmp"; die "cannot stage the units"; }
  install_units "$tmp" yes
  rm -rf "$tmp"
  say "staged under $ROOT (no release, users, ownership or systemd)"
}

do_install() {
  resolve_source
  ensure_user
  ensure_dirs
  local cur
  cur="$(current_release)"
  if [ -n "$cur" ] && complete "$cur"; then
    say "keeping the installed release $cur"
    [ "$SRC_VERSION" = "$cur" ] || say "$FROM has $SRC_VERSION: move to it with --upgrade"
  else
    new_release
    switch_to "$SRC_VERSION"
    cur="$SRC_VERSION"
    UNITS_CHANGED=yes   # new code: a running daemon restarts into it
    say "installed release $cur"
  fi
  install_units "$RELEASES/$cur"
  if [ ! -e "$BIN_LINK" ] || [ -L "$BIN_LINK" ]; then
    install -d -m 0755 "$(dirname "$BIN_LINK")"
    ln -sfn "$SYS_OPT/current/bin/campus-edge" "$BIN_LINK"
  fi
  enable_units
  if ! check_config "$RELEASES/$cur"; then
    say "fix $SYS_ETC/config.yaml, then: sudo systemctl restart campus-edge"
    exit 2
  fi
  local state
  state="$(sys systemctl is-active "$SERVICE" 2>/dev/null)" || true
  if [ "$state" = active ] && [ "$UNITS_CHANGED" = no ]; then
    say "$SERVICE is running"
  else
    sys systemctl restart "$SERVICE"
  fi
  healthy || die "$SERVICE does not answer: $HEALTH_WHY"
  say "done: release $cur runs; the config is $SYS_ETC/config.yaml; follow the log with journalctl -u campus-edge -f"
}

activate() {  # activate VERSION: switch, the units, restart, and the health check (HEALTH_WHY when it fails)
  switch_to "$1"
  install_units "$RELEASES/$1"
  enable_units
  sys systemctl restart "$SERVICE" || { HEALTH_WHY="systemctl restart $SERVICE failed"; return 1; }
  healthy
}

do_upgrade() {
  local old
  old="$(current_release)"
  [ -n "$old" ] && complete "$old" || die "campus-edge is not installed under $SYS_OPT: run install.sh without --upgrade" 2
  resolve_source
  ensure_user
  ensure_dirs
  if [ "$SRC_VERSION" = "$old" ]; then
    say "release $old is already the current one: nothing to upgrade"
    return 0
  fi
  new_release
  local new="$SRC_VERSION"
  if ! check_config "$RELEASES/$new"; then
    rm -rf "${RELEASES:?}/$new"
    die "release $new refuses $SYS_ETC/config.yaml (above); still running $old, nothing switched" 2
  fi
  if activate "$new"; then
    prune
    say "upgraded $old -> $new; roll back with: sudo $0 --rollback"
    return 0
  fi
  local why="$HEALTH_WHY"
  warn "release $new failed its health check: $why; rolling back to $old"
  if activate "$old"; then
    say "rolled back: release $old runs again"
  else
    warn "release $old does not answer either: $HEALTH_WHY"
  fi
  rm -rf "${RELEASES:?}/$new"
  die "upgrade to $new failed ($why); rolled back to $old"
}

do_rollback() {
  local cur prev
  cur="$(current_release)"
  [ -n "$cur" ] || die "campus-edge is not installed under $SYS_OPT" 2
  prev="$(previous_release)" || die "no earlier release to roll back to under $SYS_OPT/releases" 2
  check_config "$RELEASES/$prev" || die "release $prev refuses $SYS_ETC/config.yaml (above); still running $cur" 2
  if activate "$prev"; then
    say "rolled back $cur -> $prev"
  else
    die "rolled back $cur -> $prev, but it does not answer: $HEALTH_WHY (go forward again with --rollback)"
  fi
}

do_uninstall() {
  local unit
  sys systemctl disable --now "$TRAIN_TIMER" "$SERVICE" 2>/dev/null || true
  for unit in "$SERVICE" "$TRAIN_SERVICE" "$TRAIN_TIMER"; do
    rm -f "$UNIT_DIR/$unit"
  done
  rm -rf "$DROPIN_DIR"
  sys systemctl daemon-reload
  rm -f "$UDEV_DIR/$SHIPPED_RULES"
  [ "$PURGE" = no ] || rm -f "$UDEV_DIR/$LOCAL_RULES"
  sys udevadm control --reload-rules
  rm -rf "$OPT"
  [ "$(readlink "$BIN_LINK" 2>/dev/null)" != "$SYS_OPT/current/bin/campus-edge" ] || rm -f "$BIN_LINK"
  say "removed $SYS_OPT and the units"
  if [ "$PURGE" = yes ]; then
    rm -rf "$ETC" "$STATE"
    if sys getent passwd "$SVC_USER" >/dev/null; then sys userdel "$SVC_USER"; fi
    if sys getent group "$SVC_USER" >/dev/null; then sys groupdel "$SVC_USER"; fi
    say "purged $SYS_ETC, $SYS_STATE, /etc/udev/rules.d/$LOCAL_RULES and the user $SVC_USER"
  else
    say "kept $SYS_ETC (config), $SYS_STATE (state) and /etc/udev/rules.d/$LOCAL_RULES; --purge removes them"
  fi
}

if [ -z "$ROOT" ]; then
  [ "$(id -u)" = 0 ] || die "run as root (sudo $0)"
  command -v systemctl >/dev/null || die "systemd is required"
fi

if [ "$STAGE_ONLY" = yes ]; then
  do_stage
  exit 0
fi

# the old layout: a checkout with its .venv at /opt/campus-edge, where releases go now (and which
# --uninstall removes): it has to move first
if [ -e "$OPT/setup.py" ] || [ -e "$OPT/.git" ]; then
  die "$SYS_OPT holds a source checkout (the old layout); move it out first, then run its install.sh:
  sudo systemctl stop campus-edge; sudo mv $SYS_OPT /usr/local/src/campus-edge
  cd /usr/local/src/campus-edge && sudo systemd/install.sh" 2
fi
install -d -m 0755 "$OPT"
exec 9>"$OPT/.lock"
flock -n 9 || die "another install.sh is running"
case "$ACTION" in
  install) do_install ;;
  upgrade) do_upgrade ;;
  rollback) do_rollback ;;
  uninstall) do_uninstall ;;
esac
