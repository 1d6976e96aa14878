#!/usr/bin/env bash
# Makes sure the services the tests need are running on this machine, installing them from
# Debian's packages when they are missing. Fails loudly (exit 1) when it cannot.
#
#   scripts/services.sh rabbitmq postgres      # start (and install) what is named
#
# Services listen on their standard loopback ports: RabbitMQ 5672 (guest/guest), PostgreSQL
# 5432 (trust for local connections, database `switchboard`).
set -euo pipefail

log() { echo "services: $*" >&2; }
die() { echo "services: FAILED: $*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds name
  for _ in $(seq 1 $(( $2 * 10 ))); do port_open "$1" && return 0; sleep 0.1; done
  die "$3 did not open port $1 within $2 s"
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get missing: install $* by hand"
  [ "$(id -u)" = 0 ] || die "need root to install $* (run: sudo apt-get install $*)"
  if [ $apt_updated = 0 ]; then apt-get update -qq >/dev/null || die "apt-get update failed"; apt_updated=1; fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

ensure_rabbitmq() {
  port_open 5672 && return 0
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  log "starting RabbitMQ"
  (rabbitmq-server -detached >/dev/null 2>&1) || true
  wait_port 5672 90 RabbitMQ
  # The port opens before the app is fully up; wait until it answers.
  for _ in $(seq 1 60); do rabbitmqctl -q status >/dev/null 2>&1 && return 0; sleep 1; done
  die "RabbitMQ is listening but rabbitmqctl status fails"
}

ensure_postgres() {
  if ! port_open 5432; then
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local v; v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
    [ -n "$v" ] || die "no PostgreSQL cluster under /etc/postgresql"
    log "starting PostgreSQL $v"
    pg_ctlcluster --skip-systemctl-redirect "$v" main start || die "pg_ctlcluster start failed"
    wait_port 5432 30 PostgreSQL
  fi
  local psql=(psql -h 127.0.0.1 -U postgres -d postgres -tAq)
  "${psql[@]}" -c 'select 1' >/dev/null 2>&1 || psql=(su postgres -c "psql -tAq -d postgres")
  if ! "${psql[@]}" -c "select 1 from pg_database where datname='switchboard'" 2>/dev/null | grep -q 1; then
    "${psql[@]}" -c "create database switchboard" >/dev/null || die "cannot create database switchboard"
  fi
}

ensure_php() {
  command -v php >/dev/null || apt_install php-cli php-curl
  php -r 'exit(function_exists("sodium_crypto_sign_detached") ? 0 : 1);' || die "php has no sodium"
}

ensure_chromium() {
  command -v chromium >/dev/null || apt_install chromium
}

ensure_prometheus() {
  command -v prometheus >/dev/null || apt_install prometheus
}

ensure_systemd-analyze() {
  command -v systemd-analyze >/dev/null || apt_install systemd
}

[ $# -gt 0 ] || { sed -n '2,8p' "$0"; exit 2; }
for s in "$@"; do
  case $s in
    rabbitmq|postgres|php|chromium|prometheus|systemd-analyze) "ensure_$s" ;;
    *) die "unknown service $s" ;;
  esac
done
