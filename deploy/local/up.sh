#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Start the local test environment: the broker (Apache Kafka, or tansu with
# TRAILGUARD_BROKER=tansu) + moto (AWS APIs).
# Safe to re-run: services that are already up are left alone.
#   TRAILGUARD_FRESH=1  wipe the broker's state ($TG_DATA/kafka or $TG_DATA/tansu) before starting
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

START_TIMEOUT=90

"$TG_LOCAL_DIR/install.sh" "$TG_BROKER"

if [[ $TG_BROKER == kafka ]]; then
    broker_exe=$TG_AK_DATA broker_data=$TG_AK_DATA
else
    broker_exe=$TANSU_BIN broker_data=$TG_TANSU_DATA
fi
mkdir -p "$TG_LOG_DIR" "$TG_RUN_DIR" "$broker_data"

if [[ ${TRAILGUARD_FRESH:-0} == 1 ]]; then
    stop_service "$TG_BROKER" "$broker_exe"
    log "TRAILGUARD_FRESH=1: wiping $broker_data"
    rm -rf "$broker_data"
    mkdir -p "$broker_data"
fi

# fail_start NAME: print the log tail and abort.
fail_start() {
    log "$1 failed to start; last lines of $TG_LOG_DIR/$1.log:"
    tail -n 40 "$TG_LOG_DIR/$1.log" >&2 || true
    exit 1
}

# launch NAME WORKDIR CMD...: start CMD detached (own session, no stdin),
# appending to logs/NAME.log and recording its pid in run/NAME.pid.
launch() {
    local name=$1 dir=$2
    shift 2
    local logf="$TG_LOG_DIR/$name.log"
    printf '=== %s starting: %s\n' "$(date -Is)" "$*" >>"$logf"
    (cd "$dir" && exec setsid nohup "$@" </dev/null >>"$logf" 2>&1) &
    echo $! >"$(pid_file "$name")"
    log "started $name (pid $!), log: $logf"
}

# ensure NAME EXE PORT PROBE WORKDIR CMD...: start unless our process already answers.
ensure() {
    local name=$1 exe=$2 port=$3 probe=$4 dir=$5
    shift 5
    local pid
    if pid=$(service_pid "$name" "$exe"); then
        if wait_for_port "$TG_HOST" "$port" "$START_TIMEOUT" "$pid" && "$probe" "$TG_HOST" "$port"; then
            log "$name already running (pid $pid)"
            return 0
        fi
        fail_start "$name"
    fi
    rm -f "$(pid_file "$name")"
    if port_open "$TG_HOST" "$port"; then
        die "$TG_HOST:$port is in use by a process not started by up.sh; stop it or set the port env var"
    fi
    launch "$name" "$dir" "$@"
}

if [[ $TG_BROKER == kafka ]]; then
    # Apache Kafka in KRaft mode; its own log is $TG_AK_DATA/server.log.
    ensure kafka "$TG_AK_DATA" "$TG_AK_PORT" kafka_ping "$TG_AK_DATA" \
        "$TG_LOCAL_DIR/kafka.sh" run "$TG_AK_DATA" "$TG_AK_PORT" "$TG_AK_SASL_PORT" "$TG_AK_CONTROLLER_PORT"
else
    # tansu's sqlite:// URL is resolved relative to its working directory
    # (host + path are appended to cwd), so run it inside $TG_TANSU_DATA.
    ensure tansu "$TANSU_BIN" "$TG_TANSU_PORT" kafka_ping "$TG_TANSU_DATA" \
        "$TANSU_BIN" broker \
        --cluster-id "$TG_CLUSTER_ID" \
        --listener-url "tcp://$TG_HOST:$TG_TANSU_PORT" \
        --advertised-listener-url "tcp://$TG_HOST:$TG_TANSU_PORT" \
        --storage-engine "sqlite://tansu.db"
fi

ensure moto "$MOTO_BIN" "$TG_MOTO_PORT" http_ping "$TG_DATA" \
    "$MOTO_BIN" --host "$TG_HOST" --port "$TG_MOTO_PORT"

# await_service NAME EXE PORT PROBE: wait until the service accepts connections and
# answers its protocol probe (shared START_TIMEOUT budget per service).
await_service() {
    local name=$1 exe=$2 port=$3 probe=$4 pid deadline
    pid=$(service_pid "$name" "$exe") || fail_start "$name"
    deadline=$((SECONDS + START_TIMEOUT))
    wait_for_port "$TG_HOST" "$port" "$START_TIMEOUT" "$pid" || fail_start "$name"
    until "$probe" "$TG_HOST" "$port"; do
        if ((SECONDS >= deadline)) || ! kill -0 "$pid" 2>/dev/null; then
            fail_start "$name"
        fi
        sleep 0.5
    done
}
await_service "$TG_BROKER" "$broker_exe" "$TG_KAFKA_PORT" kafka_ping
await_service moto "$MOTO_BIN" "$TG_MOTO_PORT" http_ping

echo "broker=$TG_HOST:$TG_KAFKA_PORT ($TG_BROKER) moto=http://$TG_HOST:$TG_MOTO_PORT"
