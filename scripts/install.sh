#!/usr/bin/env bash
# Installs Switchboard on this host: the binary, the systemd units, the sysctl settings, the
# dashboard and docs, a config file (only if there is none) and its keys directory, and the
# `switchboard` system user. Idempotent: a second run changes nothing and says so.
#
#   scripts/install.sh [--dry-run] [--bin PATH]      (make install runs it after a release build)
#
#   --dry-run   print what would be done, do nothing
#   --bin PATH  the binary to install (default target/release/switchboard)
#   DESTDIR=dir stage everything under dir (packaging, tests): no user, no systemctl, no sysctl
#
# After installing: put public keys in /etc/switchboard/keys (switchboard keygen), edit
# /etc/switchboard/switchboard.toml, then `systemctl enable --now switchboard-router`.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
BIN=target/release/switchboard
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --bin) BIN=${2:?--bin needs a path}; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done
D=${DESTDIR:-}
USER_NAME=switchboard

say() { if [ $DRY = 1 ]; then echo "would: $*"; else echo "install: $*"; fi; }
run() { [ $DRY = 1 ] || "$@"; }
die() { echo "install: FAILED: $*" >&2; exit 1; }

[ -x "$BIN" ] || die "no binary at $BIN (run: make release, or pass --bin)"
if [ -z "$D" ] && [ $DRY = 0 ] && [ "$(id -u)" != 0 ]; then die "run as root (or with DESTDIR=... to stage)"; fi

# install_file SRC DEST MODE: copy when missing or different.
install_file() {
  local src=$1 dest=$D$2 mode=$3
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    echo "unchanged: $2"
    return
  fi
  say "$src -> $2 (mode $mode)"
  run install -D -m "$mode" "$src" "$dest"
}

# install_dir DIR MODE
install_dir() {
  if [ -d "$D$1" ]; then echo "unchanged: $1/"; return; fi
  say "create directory $1 (mode $2)"
  run install -d -m "$2" "$D$1"
}

# The system user first, so files can be given its group.
if [ -z "$D" ]; then
  if getent passwd "$USER_NAME" >/dev/null; then
    echo "unchanged: user $USER_NAME"
  else
    say "create system user $USER_NAME"
    run useradd --system --user-group --no-create-home --home-dir /var/lib/switchboard \
      --shell /usr/sbin/nologin --comment "Switchboard router" "$USER_NAME"
  fi
fi

install_file "$BIN" /usr/local/bin/switchboard 0755
for unit in systemd/switchboard-router.service systemd/switchboard-journal.service; do
  install_file "$unit" "/etc/systemd/system/$(basename "$unit")" 0644
done
install_file systemd/60-switchboard.conf /etc/sysctl.d/60-switchboard.conf 0644
install_file docs/metrics.md /usr/local/share/doc/switchboard/metrics.md 0644
install_file grafana/switchboard.json /usr/local/share/switchboard/grafana/switchboard.json 0644

install_dir /etc/switchboard 0755
install_dir /etc/switchboard/keys 0750
# The config is the operator's: installed once, never overwritten.
if [ -e "$D/etc/switchboard/switchboard.toml" ]; then
  echo "unchanged: /etc/switchboard/switchboard.toml (kept as it is)"
else
  say "config/switchboard.example.toml -> /etc/switchboard/switchboard.toml (mode 0640)"
  run install -m 0640 config/switchboard.example.toml "$D/etc/switchboard/switchboard.toml"
fi

if [ -z "$D" ]; then
  # The service reads the config and keys as its group.
  for p in /etc/switchboard/keys /etc/switchboard/switchboard.toml; do
    if [ $DRY = 1 ] || [ "$(stat -c %G "$p")" != "$USER_NAME" ]; then
      say "chgrp $USER_NAME $p"
      run chgrp "$USER_NAME" "$p"
    fi
  done
  say "apply /etc/sysctl.d/60-switchboard.conf"
  if [ $DRY = 0 ] && ! sysctl -q -p /etc/sysctl.d/60-switchboard.conf; then
    echo "install: warning: sysctl could not apply every setting (a container?); they apply at boot" >&2
  fi
  if [ -d /run/systemd/system ]; then
    say "systemctl daemon-reload"
    run systemctl daemon-reload
  else
    echo "install: systemd is not running here; skipped daemon-reload"
  fi
fi
[ $DRY = 1 ] && echo "dry run: nothing was changed" || echo "install: done"
