#!/usr/bin/env bash
# make test: starts the broker + moto (installing them on first use), builds the binaries, runs
# every test (unit, integration, end-to-end), and stops the servers it started.
#
#   TRAILGUARD_TEST_BROKER=all    (default; what CI runs) every test on Apache Kafka, then the
#                                 pipeline and restart tests again on tansu
#   TRAILGUARD_TEST_BROKER=kafka  every test on Apache Kafka only
#   TRAILGUARD_TEST_BROKER=tansu  every test on tansu only
# Arguments are test-name filters (`deploy/test.sh spray pair_`): only tests whose names
# contain one of them run (the IAM check then covers only the calls they made).
set -euo pipefail
filters=("$@")
test_broker="${TRAILGUARD_TEST_BROKER:-all}"
case $test_broker in
all | kafka) export TRAILGUARD_BROKER=kafka ;;
tansu) export TRAILGUARD_BROKER=tansu ;;
*) echo "TRAILGUARD_TEST_BROKER must be all, kafka or tansu, not '$test_broker'" >&2; exit 2 ;;
esac
# shellcheck source=local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/common.sh"

started_env=0
if ! port_open "$TG_HOST" "$TG_KAFKA_PORT" || ! port_open "$TG_HOST" "$TG_MOTO_PORT"; then
    started_env=1
fi
tansu_install_pid=
started_tansu=0
cleanup() {
    if [[ -n $tansu_install_pid ]]; then kill -- "-$tansu_install_pid" 2>/dev/null || true; fi
    if [[ $started_env == 1 ]]; then
        "$TG_LOCAL_DIR/down.sh" >/dev/null 2>&1 || true
    elif [[ $started_tansu == 1 ]]; then
        stop_service tansu "$TANSU_BIN" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
# A broker the tests start is started empty: every test makes topics of its own, and kept
# across runs they pile up (some 20,000 partition directories after a few dozen runs) until
# the broker runs out of file descriptors mid-run.
# Only a broker that is not running yet: one a developer started stays as it is.
fresh_broker=0
if ! port_open "$TG_HOST" "$TG_KAFKA_PORT"; then fresh_broker=1; fi
TRAILGUARD_FRESH=$fresh_broker "$TG_LOCAL_DIR/up.sh"
if [[ $test_broker == all ]]; then
    # tansu is needed only for the last part: on a fresh machine its ~25-minute build runs at
    # the lowest priority while the workspace builds and the Apache Kafka suite runs. Started
    # after up.sh (which installs the system packages), in a process group of its own so an
    # early exit stops the whole build.
    mkdir -p "$TG_CACHE"
    setsid nice -n 19 "$TG_LOCAL_DIR/install.sh" tansu >"$TG_CACHE/tansu-background.log" 2>&1 &
    tansu_install_pid=$!
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_CACHE/target}"
# No incremental artifacts in test builds: they only grow the cache.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export TRAILGUARD_TEST_BROKERS="$TG_HOST:$TG_KAFKA_PORT"
export TRAILGUARD_TEST_AWS_ENDPOINT="http://$TG_HOST:$TG_MOTO_PORT"
export TRAILGUARD_TEST_SHARED_DATA="${TRAILGUARD_TEST_SHARED_DATA:-$REPO/../shared/data/cloudtrail}"
# The binaries under test; another build's to run today's tests against it (e.g. the commit
# before a fix, to see its test fail): TRAILGUARD_TEST_BIN_DIR=/other/target/debug.
export TRAILGUARD_TEST_BIN_DIR="${TRAILGUARD_TEST_BIN_DIR:-$CARGO_TARGET_DIR/debug}"
export TRAILGUARD_TEST_GEO_V4="$GEO_V4" TRAILGUARD_TEST_GEO_V6="$GEO_V6"
export TRAILGUARD_TEST_ASN_V4="$ASN_V4" TRAILGUARD_TEST_ASN_V6="$ASN_V6"
export TRAILGUARD_TEST_BROKER="$TG_BROKER"
# `cargo test --all-targets` runs the benches once too, unoptimized: small, as a smoke test
# (`make bench` runs them in full).
export TRAILGUARD_BENCH_RECORDS="${TRAILGUARD_BENCH_RECORDS:-5000}"
export TRAILGUARD_BENCH_ACTIVITIES="${TRAILGUARD_BENCH_ACTIVITIES:-20000}"
export TRAILGUARD_BENCH_PRINCIPALS="${TRAILGUARD_BENCH_PRINCIPALS:-2000}"
# The benches' smoke run counts no instructions (a rerun under valgrind).
export TRAILGUARD_BENCH_CALLGRIND=0
export TRAILGUARD_TEST_TANSU_BIN="$TANSU_BIN"
export TRAILGUARD_TEST_KAFKA_SCRIPT="$TG_LOCAL_DIR/kafka.sh"
export TRAILGUARD_TEST_KAFKA_SASL_BROKERS="$TG_HOST:$TG_AK_SASL_PORT"
export TRAILGUARD_TEST_KAFKA_ADMIN_PASSWORD="$TG_KAFKA_ADMIN_PASSWORD"
export TRAILGUARD_TEST_PROMTOOL="$PROMTOOL_BIN"

cd "$REPO"
# Test executables carry full debug info (~1 GB each) and every feature combination keeps its
# own: when the disk runs low, drop the old ones (they are relinked on demand).
# (On a fresh machine the target dir does not exist yet: make it, or df fails and set -e stops.)
mkdir -p "$CARGO_TARGET_DIR"
free_kb=$(df -Pk "$CARGO_TARGET_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [[ -n ${free_kb:-} && $free_kb -lt 20000000 && -d $CARGO_TARGET_DIR/debug/deps ]]; then
    log "less than 20 GB free: removing test executables older than an hour from $CARGO_TARGET_DIR"
    # Executables only (no extension): proc-macro libraries (`lib*.so`) are executable too.
    find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable ! -name '*.*' -mmin +60 -delete
    rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi
# Bins and tests in one feature set (dev-dependencies included): `cargo build --bins` alone, or
# `cargo run -p`, would resolve other features and build the dependencies a second time.
cargo build --workspace --bins --tests
log="$TG_DATA/logs/test-$(date +%Y%m%d%H%M%S).log"
mkdir -p "$(dirname "$log")"
rc=0
# Every AWS call the services make in the tests is logged, then checked against deploy/iam/.
export TRAILGUARD_AWS_CALL_LOG="$TG_DATA/logs/aws-calls-$(date +%Y%m%d%H%M%S).log"
: >"$TRAILGUARD_AWS_CALL_LOG"
log "tests on $TG_BROKER ($TG_HOST:$TG_KAFKA_PORT)"
cargo test --workspace --all-targets --no-fail-fast -- "${filters[@]}" 2>&1 | tee "$log" || rc=$?
if [[ $test_broker == all ]]; then
    # The embedded default keeps working: the pipeline and restart tests again, on tansu.
    if [[ $started_env == 1 ]]; then stop_service kafka "$TG_AK_DATA" >/dev/null 2>&1 || true; fi
    log "waiting for the tansu install (log: $TG_CACHE/tansu-background.log)"
    if ! wait "$tansu_install_pid"; then
        tail -n 30 "$TG_CACHE/tansu-background.log" >&2
        echo "test result: FAILED. 0 passed; 1 failed (tansu could not be installed)" | tee -a "$log"
        rc=1
    fi
    tansu_install_pid=
    port_open "$TG_HOST" "$TG_TANSU_PORT" || started_tansu=1
    # A fresh tansu: its SQLite store, kept across runs, has been seen to fail on group state
    # it wrote itself (tansu 0.6), and every test uses topics of its own anyway.
    fresh=0
    if [[ $started_tansu == 1 ]]; then fresh=1; fi
    if TRAILGUARD_FRESH=$fresh TRAILGUARD_BROKER=tansu "$TG_LOCAL_DIR/up.sh"; then
        log "pipeline and restart tests on tansu ($TG_HOST:$TG_TANSU_PORT)"
        # The test executables already built (`-p`/`--test` would resolve other features).
        mapfile -t tansu_tests < <(cargo test --workspace --all-targets --no-run --message-format=json 2>/dev/null |
            python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("pipeline", "restart") and "test" in m["target"]["kind"]:
        print(m["executable"])')
        if ((${#tansu_tests[@]} != 2)); then
            echo "test result: FAILED. 0 passed; 1 failed (pipeline and restart test executables not found)" | tee -a "$log"
            rc=1
        fi
        for exe in "${tansu_tests[@]}"; do
            # Run directly, not by cargo: say which clone the tests read their files from (the
            # value compiled in names the clone that last built them, in a shared target dir
            # perhaps another, since deleted, clone).
            (cd "$REPO/tests" && CARGO_MANIFEST_DIR="$REPO/tests" TRAILGUARD_TEST_BROKER=tansu TRAILGUARD_TEST_BROKERS="$TG_HOST:$TG_TANSU_PORT" "$exe" "${filters[@]}") 2>&1 |
                sed -u 's/^test result:/test result (tansu):/; s/^\(test .*\) \.\.\. /\1 [tansu] ... /' |
                tee -a "$log" || rc=1
        done
    else
        echo "test result: FAILED. 0 passed; 1 failed (tansu did not start)" | tee -a "$log"
        rc=1
    fi
fi
if ((${#filters[@]})); then
    log "filtered run: the IAM check is skipped (it needs the calls of the whole suite)"
elif ! "$CARGO_TARGET_DIR/debug/check-iam-policies" "$TRAILGUARD_AWS_CALL_LOG" "$REPO" 2>&1 | tee -a "$log"; then
    rc=1
    echo "test result: FAILED. 0 passed; 1 failed (IAM policies do not allow every call made)" | tee -a "$log"
else
    echo "test result: ok. 1 passed; 0 failed (IAM policies allow every call made)" | tee -a "$log"
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result( \(tansu\))?:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
