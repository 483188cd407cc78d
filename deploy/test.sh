#!/usr/bin/env bash
# make test: starts tansu + moto (installing them on first use), builds the binaries, runs every
# test (unit, integration, end-to-end), and stops the servers it started.
set -euo pipefail
# shellcheck source=local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/common.sh"

started_env=0
if ! port_open "$TG_HOST" "$TG_KAFKA_PORT" || ! port_open "$TG_HOST" "$TG_MOTO_PORT"; then
    started_env=1
fi
cleanup() {
    if [[ $started_env == 1 ]]; then "$TG_LOCAL_DIR/down.sh" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
"$TG_LOCAL_DIR/up.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_CACHE/target}"
# No incremental artifacts in test builds: they only grow the cache.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export TRAILGUARD_TEST_BROKERS="$TG_HOST:$TG_KAFKA_PORT"
export TRAILGUARD_TEST_AWS_ENDPOINT="http://$TG_HOST:$TG_MOTO_PORT"
export TRAILGUARD_TEST_SHARED_DATA="${TRAILGUARD_TEST_SHARED_DATA:-$REPO/../shared/data/cloudtrail}"
export TRAILGUARD_TEST_BIN_DIR="$CARGO_TARGET_DIR/debug"
export TRAILGUARD_TEST_GEO_V4="$GEO_V4" TRAILGUARD_TEST_GEO_V6="$GEO_V6"
export TRAILGUARD_TEST_TANSU_BIN="$TANSU_BIN"
export TRAILGUARD_TEST_PROMTOOL="$PROMTOOL_BIN"

cd "$REPO"
# Test executables carry full debug info (~1 GB each) and every feature combination keeps its
# own: when the disk runs low, drop the old ones (they are relinked on demand).
free_kb=$(df -Pk "$CARGO_TARGET_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [[ -n ${free_kb:-} && $free_kb -lt 20000000 && -d $CARGO_TARGET_DIR/debug/deps ]]; then
    log "less than 20 GB free: removing test executables older than an hour from $CARGO_TARGET_DIR"
    # Executables only (no extension): proc-macro libraries (`lib*.so`) are executable too.
    find "$CARGO_TARGET_DIR/debug/deps" -maxdepth 1 -type f -executable ! -name '*.*' -mmin +60 -delete
    rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi
cargo build --workspace --bins
log="$TG_DATA/logs/test-$(date +%Y%m%d%H%M%S).log"
mkdir -p "$(dirname "$log")"
rc=0
# Every AWS call the services make in the tests is logged, then checked against deploy/iam/.
export TRAILGUARD_AWS_CALL_LOG="$TG_DATA/logs/aws-calls-$(date +%Y%m%d%H%M%S).log"
: >"$TRAILGUARD_AWS_CALL_LOG"
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee "$log" || rc=$?
if ! cargo run -q -p trailguard-tests --bin check-iam-policies -- "$TRAILGUARD_AWS_CALL_LOG" 2>&1 | tee -a "$log"; then
    rc=1
    echo "test result: FAILED. 0 passed; 1 failed (IAM policies do not allow every call made)" | tee -a "$log"
else
    echo "test result: ok. 1 passed; 0 failed (IAM policies allow every call made)" | tee -a "$log"
fi
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$rc"
