#!/usr/bin/env bash
# make demo: the whole pipeline on this machine. Starts the local broker (Apache Kafka, or tansu
# with TRAILGUARD_BROKER=tansu) + moto (installing them on first
# use), builds the binaries, creates a public bucket on moto, runs detect and remediate, replays
# the bundled sample of real CloudTrail records, prints alerts and action records as they arrive,
# checks the bucket is private afterwards, and stops everything it started.
set -euo pipefail
# shellcheck source=../local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../local/common.sh"

started_env=0
if ! port_open "$TG_HOST" "$TG_KAFKA_PORT" || ! port_open "$TG_HOST" "$TG_MOTO_PORT"; then
    started_env=1
fi
"$TG_LOCAL_DIR/up.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TG_CACHE/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The debug build `make test` makes, in its feature set (bins and tests together): the first
# alert comes sooner on a new machine than after a release build, the demo's few hundred
# records need no optimizer, and after either command the other starts at once.
log "building (debug, shared with make test)"
cargo build --workspace --bins --tests --quiet --manifest-path "$REPO/Cargo.toml"
BIN="$CARGO_TARGET_DIR/debug"

run="demo-$(date +%Y%m%d%H%M%S)-$$"
demo_dir="$TG_DATA/$run"
mkdir -p "$demo_dir"
bucket=trailguard-demo-public
endpoint="http://$TG_HOST:$TG_MOTO_PORT"

# Fresh topics and groups per run, so a second run starts clean on the same broker.
export TRAILGUARD_BROKERS="$TG_HOST:$TG_KAFKA_PORT"
export TRAILGUARD_KAFKA__TOPICS__ACTIVITIES="$run.activities"
export TRAILGUARD_KAFKA__TOPICS__DLQ="$run.activities.dlq"
export TRAILGUARD_KAFKA__TOPICS__ALERTS="$run.alerts"
export TRAILGUARD_KAFKA__TOPICS__ACTIONS="$run.actions"
export TRAILGUARD_KAFKA__TOPICS__DETECT_STATE="$run.detect.state"
export TRAILGUARD_KAFKA__TOPICS__DETECT_FACTS="$run.detect.facts"
export TRAILGUARD_KAFKA__TOPICS__DETECT_SIGNIN_FAILURES="$run.detect.signin-failures"
export TRAILGUARD_KAFKA__TOPICS__DETECT_CORRELATIONS="$run.detect.correlations"
export TRAILGUARD_KAFKA__PARTITIONS=3
export TRAILGUARD_DETECT__GROUP_ID="$run-detect"
export TRAILGUARD_REMEDIATE__GROUP_ID="$run-remediate"
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
# A fresh alert-signing key per run: detect signs with it, remediate verifies with it.
export TRAILGUARD_SIGNING__KEY_ID="$run"
TRAILGUARD_SIGNING__KEY="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
export TRAILGUARD_SIGNING__KEY

# A local webhook receiver stands in for the security team's channel.
"$MOTO_VENV/bin/python" "$REPO/deploy/demo/webhook.py" "$demo_dir/webhook.port" "$demo_dir/notifications.jsonl" &
webhook_pid=$!
for _ in $(seq 50); do [[ -s $demo_dir/webhook.port ]] && break; sleep 0.1; done
webhook_port="$(cat "$demo_dir/webhook.port")"

cat >"$demo_dir/remediate.toml" <<TOML
[aws]
endpoint_url = "$endpoint"
force_path_style = true
region = "us-east-1"

[remediate]
default_mode = "dry-run"
protected_buckets = ["corporate-*"]
# The sample's records are from 2020: no maximum alert age (the default is 24 h).
max_alert_age = "0s"

[remediate.policies.s3-bucket-public]
mode = "auto"

[[notify.channels]]
name = "security-team"
kind = "webhook"
url = "http://127.0.0.1:$webhook_port/trailguard"
TOML

# Geolocation from DB-IP City Lite and networks from ip-location-db's AS data (both fetched by
# the setup; CC BY 4.0: https://db-ip.com, RouteViews, NRO) and a
# sample Tor list; a one-day learning period so the sample's baselines count.
cat >"$demo_dir/detect.toml" <<TOML
[geo]
databases = ["$GEO_V4", "$GEO_V6"]
asn_databases = ["$ASN_V4", "$ASN_V6"]

[intel]
lists = [{ category = "tor", path = "$REPO/deploy/demo/intel/tor-exits-sample.txt" }]

[policies.anomaly]
learning_period = "1d"
TOML

"$MOTO_VENV/bin/python" "$REPO/deploy/demo/bucket.py" create "$endpoint" "$bucket"

pids=("$webhook_pid")
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ $started_env == 1 ]]; then "$TG_LOCAL_DIR/down.sh" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

"$BIN/detect" --config "$demo_dir/detect.toml" --admin-listen 127.0.0.1:0 --log-format json \
    >"$demo_dir/detect.log" 2>&1 &
pids+=($!)
"$BIN/remediate" --config "$demo_dir/remediate.toml" --admin-listen 127.0.0.1:0 --log-format json \
    >"$demo_dir/remediate.log" 2>&1 &
pids+=($!)
"$BIN/detect" tail alerts --from-beginning 2>>"$demo_dir/tail.log" &
pids+=($!)

log "replaying deploy/demo/sample (real CloudTrail records; see its DATA-README.md)"
"$BIN/ingest" files "$REPO/deploy/demo/sample" 2>"$demo_dir/ingest.log"

# The sample asks for: make the demo bucket private (auto), make a protected bucket private
# (refused), and notifications about CloudTrail, IAM and bucket changes (to the local webhook).
"$BIN/detect" tail actions --from-beginning --idle-seconds 20 2>>"$demo_dir/tail.log"

if [[ -s $demo_dir/notifications.jsonl ]]; then
    log "the security team's webhook received $(wc -l <"$demo_dir/notifications.jsonl") notifications, e.g.:"
    head -n 1 "$demo_dir/notifications.jsonl"
fi

"$MOTO_VENV/bin/python" "$REPO/deploy/demo/bucket.py" check "$endpoint" "$bucket"
log "logs of this run: $demo_dir"
