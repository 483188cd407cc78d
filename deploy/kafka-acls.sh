#!/usr/bin/env bash
# The Kafka ACLs of a locked-down Trailguard: each service authenticates as its own user and may
# write only the topics it owns — only ingest writes activities and checkpoints, only detect
# writes alerts and its state, facts and forwarded sign-in failures, only remediate writes
# actions — and read only what it consumes. Topics are created by an administrator beforehand
# (deploy/compose/kafka-init.sh) or by the service that owns them; nobody creates another's.
#
#   deploy/kafka-acls.sh ACL-COMMAND...
#
# ACL-COMMAND runs Kafka's AclCommand as a super user, e.g.
#   deploy/kafka-acls.sh /opt/kafka/bin/kafka-acls.sh --bootstrap-server b-1:9096 \
#       --command-config admin.properties                            # MSK (SASL/SCRAM), compose
#   deploy/kafka-acls.sh deploy/local/kafka.sh admin 19192 org.apache.kafka.tools.AclCommand
#
# Names, from the environment (defaults = the services' defaults, docs/kafka.md):
#   INGEST_USER DETECT_USER REMEDIATE_USER   principals (User:NAME); ingest, detect, remediate
#   TOPIC_ACTIVITIES TOPIC_DLQ TOPIC_ALERTS TOPIC_ALERTS_OCSF TOPIC_ACTIONS TOPIC_CHECKPOINTS
#   TOPIC_DETECT_STATE TOPIC_DETECT_FACTS TOPIC_DETECT_SIGNIN_FAILURES TOPIC_DETECT_CORRELATIONS
#   DETECT_GROUP REMEDIATE_GROUP             consumer groups (also every group they prefix:
#                                            read-back readers are `<group>-…-reader`)
# Start detect (or create the topics) before remediate: remediate may read alerts, not create
# them, and stops at start-up when the alerts topic is missing.
# Re-running adds nothing twice. docs/kafka.md lists the same table.
set -euo pipefail
(($# > 0)) || {
    sed -n '2,21p' "$0" >&2
    exit 2
}
acl=("$@")
ingest=User:${INGEST_USER:-ingest}
detect=User:${DETECT_USER:-detect}
remediate=User:${REMEDIATE_USER:-remediate}
activities=${TOPIC_ACTIVITIES:-trailguard.activities}
dlq=${TOPIC_DLQ:-trailguard.activities.dlq}
alerts=${TOPIC_ALERTS:-trailguard.alerts}
alerts_ocsf=${TOPIC_ALERTS_OCSF:-}
actions=${TOPIC_ACTIONS:-trailguard.actions}
checkpoints=${TOPIC_CHECKPOINTS:-trailguard.ingest.checkpoints}
state=${TOPIC_DETECT_STATE:-trailguard.detect.state}
facts=${TOPIC_DETECT_FACTS:-trailguard.detect.facts}
signin=${TOPIC_DETECT_SIGNIN_FAILURES:-trailguard.detect.signin-failures}
correlations=${TOPIC_DETECT_CORRELATIONS:-trailguard.detect.correlations}
detect_group=${DETECT_GROUP:-trailguard-detect}
remediate_group=${REMEDIATE_GROUP:-trailguard-remediate}

allow() { # principal operations... -- resource args...
    local who=$1 ops=() 
    shift
    while [[ $1 != -- ]]; do ops+=(--operation "$1"); shift; done
    shift
    "${acl[@]}" --add --allow-principal "$who" "${ops[@]}" "$@" >/dev/null
}
# A topic the principal owns: creates it if missing, writes it, and reads it back.
owns() { allow "$1" Create Write Read Describe DescribeConfigs -- --topic "$2"; }
# A topic the principal consumes or writes into without owning it.
reads() { allow "$1" Read Describe -- --topic "$2"; }
writes() { allow "$1" Write Describe -- --topic "$2"; }

# ingest: activities, the dead letters and its checkpoints.
owns "$ingest" "$activities"
owns "$ingest" "$dlq"
owns "$ingest" "$checkpoints"
allow "$ingest" Read -- --group "trailguard-ingest" --resource-pattern-type prefixed

# detect: consumes activities; owns alerts and its state; dead-letters what it cannot read.
reads "$detect" "$activities"
writes "$detect" "$dlq"
for topic in "$alerts" "$state" "$facts" "$signin" "$correlations" ${alerts_ocsf:+"$alerts_ocsf"}; do
    owns "$detect" "$topic"
done
allow "$detect" Read Describe -- --group "$detect_group" --resource-pattern-type prefixed
allow "$detect" Read -- --group "trailguard-detect" --resource-pattern-type prefixed
allow "$detect" Read -- --group "trailguard-follow"

# remediate: consumes alerts; owns the actions topic (its record, read back and followed).
reads "$remediate" "$alerts"
owns "$remediate" "$actions"
allow "$remediate" Read Describe -- --group "$remediate_group" --resource-pattern-type prefixed
allow "$remediate" Read -- --group "trailguard-remediate" --resource-pattern-type prefixed
allow "$remediate" Read -- --group "trailguard-follow"

# Idempotent producers (Kafka before 2.8 asks for it on the cluster; harmless after).
for who in "$ingest" "$detect" "$remediate"; do
    allow "$who" IdempotentWrite -- --cluster
done
echo "ACLs set for $ingest, $detect, $remediate" >&2
