#!/usr/bin/env bash
# make bench: builds in release, starts the local broker, and prints throughput numbers.
set -euo pipefail
# shellcheck source=local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/local/common.sh"
started_env=0
if ! port_open "$TG_HOST" "$TG_KAFKA_PORT"; then started_env=1; fi
cleanup() { if [[ $started_env == 1 ]]; then "$TG_LOCAL_DIR/down.sh" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
"$TG_LOCAL_DIR/up.sh" >/dev/null
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_CACHE/target}"
cd "$REPO"
cargo build --release --bins --quiet
export TRAILGUARD_TEST_SHARED_DATA="${TRAILGUARD_TEST_SHARED_DATA:-$REPO/../shared/data/cloudtrail}"
export TRAILGUARD_BENCH_BROKERS="$TG_HOST:$TG_KAFKA_PORT"
export TRAILGUARD_BENCH_INGEST="$CARGO_TARGET_DIR/release/ingest"
export TRAILGUARD_TEST_GEO_V4="$GEO_V4" TRAILGUARD_TEST_ASN_V4="$ASN_V4"
export TRAILGUARD_BENCH_AWS_ENDPOINT="http://$TG_HOST:$TG_MOTO_PORT"
export TRAILGUARD_BENCH_REMEDIATE="$CARGO_TARGET_DIR/release/remediate"
# The recovery bench runs the release binaries through the tests' helpers.
export TRAILGUARD_TEST_BIN_DIR="$CARGO_TARGET_DIR/release"
export TRAILGUARD_TEST_BROKERS="$TRAILGUARD_BENCH_BROKERS"
cargo bench --workspace --quiet --bench throughput --bench detect --bench remediate --bench recovery --bench state --bench services --bench latency
