//! Durable baselines: a compacted changelog topic, partitioned like the activities topic.
//!
//! Partition N of the changelog holds the baselines of the principals whose activities are on
//! partition N, keyed by principal. Before a detector takes a partition it reads that
//! partition of the changelog back ([`restore`]); while it runs, the baselines that changed are
//! written ([`save`]) *before* the activities that changed them are committed. Each baseline
//! carries the offset after the last activity applied to it, so when a restart replays
//! activities the saved baseline already contains, they are not applied twice — and their
//! alerts were published before the baseline was saved. A restarted or rebalanced detector
//! therefore continues with exactly the baselines an uninterrupted one would have.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use trailguard_common::config::KafkaConfig;

use crate::anomaly::PrincipalState;
use crate::detector::Detector;
use crate::Error;

/// Reads partition `partition` of the changelog back (blocking).
pub fn restore(
    cfg: &KafkaConfig,
    partition: i32,
) -> Result<HashMap<String, PrincipalState>, Error> {
    let mut states = HashMap::new();
    let mut undecodable = 0u64;
    kafka_read(cfg, partition, |key, payload| {
        let key = String::from_utf8_lossy(key).into_owned();
        match payload.map(serde_json::from_slice::<PrincipalState>) {
            None => {
                states.remove(&key);
            }
            Some(Ok(state)) => {
                states.insert(key, state);
            }
            Some(Err(_)) => undecodable += 1,
        }
    })?;
    if undecodable > 0 {
        tracing::warn!(
            partition,
            undecodable,
            "changelog records not understood; those principals start afresh"
        );
    }
    tracing::info!(partition, principals = states.len(), "baselines restored");
    Ok(states)
}

fn kafka_read(
    cfg: &KafkaConfig,
    partition: i32,
    visit: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<u64, Error> {
    Ok(trailguard_common::kafka::read_partition(
        cfg,
        &cfg.topics.detect_state,
        partition,
        "trailguard-detect-restore",
        visit,
    )?)
}

/// Writes the baselines `detector` changed to partition `partition` of the changelog and
/// waits until the broker has them all. Returns false if that failed (nothing may be
/// committed then).
pub async fn save(
    producer: &trailguard_common::kafka::Producer,
    topic: &str,
    partition: i32,
    detector: &mut Detector,
) -> bool {
    let changes: Vec<(String, Option<Vec<u8>>)> = detector
        .take_changes()
        .into_iter()
        .map(|(key, state)| {
            let bytes = state.and_then(|s| serde_json::to_vec(s).ok());
            (key, bytes)
        })
        .collect();
    if changes.is_empty() {
        return true;
    }
    let mut pending = Vec::with_capacity(changes.len());
    for (key, payload) in &changes {
        let mut record: FutureRecord<'_, String, Vec<u8>> =
            FutureRecord::to(topic).key(key).partition(partition);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        pending.push(producer.send(record, Duration::from_secs(30)));
    }
    let mut ok = true;
    for delivery in futures::future::join_all(pending).await {
        if let Err((err, _)) = delivery {
            tracing::warn!(error = %err, partition, "baseline not saved; retrying at the next checkpoint");
            ok = false;
        }
    }
    if !ok {
        // Saved again next time (a newer write of the same key is harmless).
        detector.mark_dirty(changes.into_iter().map(|(k, _)| k));
    }
    ok
}
