//! The Kafka loop: consume an alert, decide, act, publish the action record, and only then
//! store the offset. Alerts already answered (by this or an earlier instance, as the actions
//! topic shows) are skipped, so no alert is acted on twice.

use std::collections::HashSet;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use trailguard_common::contract::{
    stable_id, ActionKind, ActionOutcome, ActionRecord, Mode, ACTION_SCHEMA_VERSION,
    ALERT_SCHEMA_VERSION,
};
use trailguard_common::{kafka, Alert};

use crate::plan::{plan, Decision};
use crate::{bucket, Error, RemediateConfig};

/// Remediate's metrics. Labels come from closed sets only.
#[derive(Clone)]
pub struct Metrics {
    alerts: IntCounterVec,
    actions: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let alerts = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_alerts_total",
                "Alerts consumed, by result (handled, duplicate, undecodable).",
            ),
            &["result"],
        )?;
        let actions = IntCounterVec::new(
            Opts::new(
                "trailguard_remediate_actions_total",
                "Action records published, by action kind and outcome.",
            ),
            &["kind", "outcome"],
        )?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        Ok(Metrics { alerts, actions })
    }
}

/// Carries out one decision and describes it as an action record.
async fn execute(s3: &aws_sdk_s3::Client, alert: &Alert, decision: &Decision) -> ActionRecord {
    let target = &decision.action.target;
    let mut record = ActionRecord {
        schema_version: ACTION_SCHEMA_VERSION,
        id: stable_id([
            alert.id.as_str(),
            decision.action.kind.as_str(),
            target.id.as_str(),
        ]),
        alert_id: alert.id.clone(),
        policy_id: alert.policy_id.clone(),
        kind: decision.action.kind,
        target: target.clone(),
        mode: decision.mode,
        outcome: ActionOutcome::Skipped,
        detail: String::new(),
        steps: Vec::new(),
        aws_request_ids: Vec::new(),
        time: chrono::Utc::now(),
        undo: None,
    };
    if let Some(refusal) = &decision.refusal {
        record.outcome = ActionOutcome::Refused;
        record.detail = format!("refused: {refusal}");
        return record;
    }
    if decision.mode == Mode::Off {
        record.detail = format!(
            "mode is off for {} on policy {}",
            decision.action.kind.as_str(),
            alert.policy_id
        );
        return record;
    }
    match decision.action.kind {
        ActionKind::MakeBucketPrivate => {
            let result = bucket::make_private(s3, &target.id, decision.mode == Mode::DryRun).await;
            record.outcome = result.outcome;
            record.detail = result.detail;
            record.aws_request_ids = result
                .steps
                .iter()
                .filter_map(|s| s.request_id.clone())
                .collect();
            record.steps = result.steps;
            record.undo = result.undo;
        }
        other => {
            record.detail = format!(
                "{} is not available in this version; nothing done",
                other.as_str()
            );
        }
    }
    record
}

/// Notes that partitions were assigned: what other instances answered on them must be read
/// back before acting on their alerts.
#[derive(Clone, Default)]
struct AssignmentContext {
    assigned: Arc<AtomicBool>,
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.assigned.store(true, Ordering::SeqCst);
        }
    }
}

/// Reads the actions topic back: the ids of alerts already answered.
fn answered_alerts(cfg: &RemediateConfig) -> Result<HashSet<String>, Error> {
    let mut done = HashSet::new();
    let read = kafka::read_all(
        &cfg.kafka,
        &cfg.kafka.topics.actions,
        "trailguard-remediate",
        |payload| {
            if let Ok(record) = serde_json::from_slice::<ActionRecord>(payload) {
                done.insert(record.alert_id);
            }
        },
    )?;
    tracing::info!(
        records = read,
        alerts = done.len(),
        "loaded answered alerts from the actions topic"
    );
    Ok(done)
}

async fn publish(
    producer: &FutureProducer,
    cfg: &RemediateConfig,
    record: &ActionRecord,
    shutdown: &CancellationToken,
) -> bool {
    let Ok(payload) = serde_json::to_vec(record) else {
        return false;
    };
    let topic = &cfg.kafka.topics.actions;
    kafka::send_until_durable(
        producer,
        topic,
        record.alert_id.as_bytes(),
        &payload,
        None,
        shutdown,
    )
    .await
}

/// Runs remediate until `shutdown`.
pub async fn run(
    cfg: RemediateConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let topics = &cfg.kafka.topics;
    kafka::ensure_topics(&cfg.kafka, &[&topics.alerts, &topics.actions], &[]).await?;
    let mut answered = HashSet::new();
    let s3 = trailguard_common::aws::s3_client(&cfg.aws).await;
    let producer = kafka::producer(&cfg.kafka, "trailguard-remediate", 0)?;
    let context = AssignmentContext::default();
    let consumer = kafka::consumer(
        &cfg.kafka,
        &cfg.remediate.group_id,
        "trailguard-remediate",
        context.clone(),
    )?;
    consumer.subscribe(&[&topics.alerts])?;
    tracing::info!(topic = %topics.alerts, default_mode = cfg.remediate.default_mode.as_str(), "remediate running");

    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(m) => m,
            Err(err) => {
                tracing::warn!(error = %err, "consume failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        let alert = message.payload().map(serde_json::from_slice::<Alert>);
        drop(message);
        if context.assigned.swap(false, Ordering::SeqCst) {
            // New partitions (at start or after a rebalance): another instance may have answered
            // some of their uncommitted alerts. Read the actions topic back first.
            answered.extend(tokio::task::block_in_place(|| answered_alerts(&cfg))?);
        }
        let mut acted = false;
        match alert {
            Some(Ok(alert)) if alert.schema_version <= ALERT_SCHEMA_VERSION => {
                if answered.contains(&alert.id) {
                    metrics.alerts.with_label_values(&["duplicate"]).inc();
                    tracing::info!(alert_id = %alert.id, "alert already answered; skipped");
                } else {
                    for decision in plan(&alert, &cfg.remediate) {
                        let record = execute(&s3, &alert, &decision).await;
                        if !publish(&producer, &cfg, &record, &shutdown).await {
                            return Err(Error::Stopped(format!(
                                "action record for alert {} not published",
                                alert.id
                            )));
                        }
                        tracing::info!(action_id = %record.id, alert_id = %alert.id, kind = record.kind.as_str(), outcome = record.outcome.as_str(), detail = %record.detail, "action");
                        metrics
                            .actions
                            .with_label_values(&[record.kind.as_str(), record.outcome.as_str()])
                            .inc();
                    }
                    answered.insert(alert.id);
                    acted = true;
                    metrics.alerts.with_label_values(&["handled"]).inc();
                }
            }
            other => {
                // Not an alert this version can read: never act on it; count and log it.
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    Some(Ok(a)) => format!("unsupported schema_version {}", a.schema_version),
                    None => "empty message".into(),
                };
                metrics.alerts.with_label_values(&["undecodable"]).inc();
                tracing::warn!(partition, offset, %why, "ignored a record on the alerts topic that is not a readable alert");
            }
        }
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topics.alerts, partition, Offset::Offset(offset + 1))?;
        if let Err(err) = consumer.store_offsets(&list) {
            tracing::debug!(error = %err, partition, "offset not stored");
        }
        if acted {
            // Commit at once after acting, so no other instance replays this alert.
            if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::warn!(error = %err, "commit after acting failed; the next commit retries");
            }
        }
    }
    if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %err, "nothing committed");
    }
    kafka::flush(&producer, cfg.remediate.drain_timeout)?;
    tracing::info!("remediate stopped");
    Ok(())
}
