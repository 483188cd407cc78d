#!/usr/bin/env bash
# Creates every topic Trailguard uses, once, before the services start (the broker never
# auto-creates topics). Compacted topics keep the latest record per key: ingest checkpoints,
# detect's baselines and organization facts. Names are the defaults of `kafka.topics`.
set -euo pipefail
bootstrap=${BOOTSTRAP:-kafka:9092}
partitions=${PARTITIONS:-3}
replication=${REPLICATION:-1}
topics=/opt/kafka/bin/kafka-topics.sh

create() { # name cleanup-policy
  "$topics" --bootstrap-server "$bootstrap" --create --if-not-exists --topic "$1" \
    --partitions "$partitions" --replication-factor "$replication" \
    --config "cleanup.policy=$2"
}

create trailguard.activities delete
create trailguard.activities.dlq delete
create trailguard.alerts delete
create trailguard.actions delete
create trailguard.detect.signin-failures delete
create trailguard.ingest.checkpoints compact
create trailguard.detect.state compact
create trailguard.detect.facts compact
"$topics" --bootstrap-server "$bootstrap" --list
