#!/usr/bin/env bash
# Creates every topic Trailguard uses, once, before the services start (the broker never
# auto-creates topics), with the settings the services would give them (docs/kafka.md):
# compacted topics keep the latest record per key (ingest checkpoints, detect's baselines and
# organization facts); the others are kept as long as their role needs (milliseconds).
# Names are the defaults of `kafka.topics`.
set -euo pipefail
bootstrap=${BOOTSTRAP:-kafka:9092}
partitions=${PARTITIONS:-3}
replication=${REPLICATION:-1}
topics=/opt/kafka/bin/kafka-topics.sh

min_insync=1
if ((replication >= 3)); then min_insync=2; fi

create() { # name cleanup-policy [retention-ms]
  local configs=(--config "cleanup.policy=$2" --config "min.insync.replicas=$min_insync")
  if [[ -n ${3:-} ]]; then configs+=(--config "retention.ms=$3"); fi
  "$topics" --bootstrap-server "$bootstrap" --create --if-not-exists --topic "$1" \
    --partitions "$partitions" --replication-factor "$replication" "${configs[@]}"
}

create trailguard.activities delete 604800000
create trailguard.activities.dlq delete 2592000000
create trailguard.alerts delete 2592000000
create trailguard.actions delete 31536000000
create trailguard.detect.signin-failures delete 604800000
create trailguard.detect.correlations delete 604800000
create trailguard.ingest.checkpoints compact
create trailguard.detect.state compact
create trailguard.detect.facts compact
"$topics" --bootstrap-server "$bootstrap" --list

# With SCRAM_USERS (compose.aws.yaml): one SCRAM-SHA-512 user per service, its password from
# KAFKA_PASSWORD_<NAME>, and the per-service ACLs of deploy/kafka-acls.sh.
if [[ -n ${SCRAM_USERS:-} ]]; then
  for user in $SCRAM_USERS; do
    var=KAFKA_PASSWORD_${user^^}
    password=${!var:?set $var}
    /opt/kafka/bin/kafka-configs.sh --bootstrap-server "$bootstrap" --alter \
      --entity-type users --entity-name "$user" \
      --add-config "SCRAM-SHA-512=[password=$password]"
  done
  INGEST_USER=ingest DETECT_USER=detect REMEDIATE_USER=remediate \
    bash /kafka-acls.sh /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$bootstrap"
fi
