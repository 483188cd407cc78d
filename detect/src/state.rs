//! Durable baselines: a compacted changelog topic, partitioned like the activities topic.
//!
//! Partition N of the changelog holds the baselines of the principals whose activities are on
//! partition N, keyed by principal. Before a detector takes a partition it reads that
//! partition of the changelog back ([`restore`]); while it runs, the baselines that changed are
//! written ([`save`]) *before* the activities that changed them are committed. Each baseline
//! carries the offset after the last activity applied to it, so when a restart replays
//! activities the saved baseline already contains, they are not applied twice — and their
//! alerts were published before the baseline was saved. A restarted or rebalanced detector
//! therefore continues with exactly the baselines an uninterrupted one would have. A save
//! that delivers every baseline also writes the partition's applied-through mark
//! ([`APPLIED_KEY`]): an activity before it whose actor has no baseline was applied, its
//! baseline forgotten since (evicted for room, or past `state_ttl`), and is not applied again.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use trailguard_common::config::KafkaConfig;

use crate::anomaly::PrincipalState;
use crate::detector::Detector;
use crate::Error;

/// Reads partition `partition` of the changelog back (blocking). Records (tombstones
/// included) that `verifier` cannot authenticate are ignored: a forged baseline could switch a
/// principal's anomaly detections off (an offset far ahead marks everything as applied). Also
/// returns how many were ignored.
pub fn restore(
    cfg: &KafkaConfig,
    partition: i32,
    verifier: &trailguard_common::sign::Verifier,
) -> Result<Restored, Error> {
    // Two stages, so a restore uses two cores: this thread reads records off the broker and
    // hands them on in batches; a second verifies each seal and decodes it, in the same order
    // (a later record of a key replaces an earlier one). The channel holds a few batches: the
    // records in memory at once stay bounded whatever the partition's size.
    let (batches, incoming) = std::sync::mpsc::sync_channel::<Vec<Raw>>(4);
    let decoder = {
        let verifier = verifier.clone();
        std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                let mut decoded = Decoded::default();
                for batch in incoming {
                    for raw in batch {
                        decoded.apply(&verifier, raw);
                    }
                }
                decoded
            })
            .map_err(|e| Error::Stopped(format!("starting the restore's decoder: {e}")))?
    };
    // A large partition takes a while: say how far it is (there is no deadline: a restore
    // that keeps reading is never cut off; one that stops getting records is).
    let began = std::time::Instant::now();
    let mut last_said = began;
    let mut read_so_far = 0u64;
    let mut batch = Vec::with_capacity(RESTORE_BATCH);
    let mut batch_bytes = 0usize;
    let read = kafka_read(cfg, partition, |read| {
        read_so_far += 1;
        if read_so_far.is_multiple_of(10_000) && last_said.elapsed() >= Duration::from_secs(5) {
            last_said = std::time::Instant::now();
            tracing::info!(
                partition,
                records = read_so_far,
                per_second = (read_so_far as f64 / began.elapsed().as_secs_f64()) as u64,
                "restoring baselines"
            );
        }
        batch_bytes += read.key.len() + read.payload.map_or(0, <[u8]>::len);
        batch.push(Raw {
            key: read.key.to_vec(),
            payload: read.payload.map(<[u8]>::to_vec),
        });
        // Handed on by count or by size (records may be large, and are copied before their
        // seal is checked): a few batches in flight at most.
        if batch.len() >= RESTORE_BATCH || batch_bytes >= RESTORE_BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(RESTORE_BATCH));
            batch_bytes = 0;
            // Fails only when the decoder has panicked, which joining it reports below.
            let _ = batches.send(full);
        }
    });
    if !batch.is_empty() {
        let _ = batches.send(batch);
    }
    drop(batches);
    let decoded = decoder
        .join()
        .map_err(|_| Error::Stopped("the restore's decoder failed".into()))?;
    read?;
    let Decoded {
        states,
        census,
        applied_through,
        undecodable,
        unverified,
    } = decoded;
    if undecodable > 0 {
        tracing::warn!(
            partition,
            undecodable,
            "changelog records not understood; those principals start afresh"
        );
    }
    if unverified > 0 {
        tracing::warn!(
            partition,
            unverified,
            "changelog records without a valid signature ignored"
        );
    }
    tracing::info!(
        partition,
        principals = states.len(),
        records = read_so_far,
        seconds = began.elapsed().as_secs_f64(),
        "baselines restored"
    );
    Ok(Restored {
        states,
        census: census.into_iter().collect(),
        applied_through,
        unverified,
    })
}

/// Records handed from the reader to the decoder at a time (at most).
const RESTORE_BATCH: usize = 512;
/// Bytes handed from the reader to the decoder at a time (at most, give or take a record).
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// One changelog record as read.
struct Raw {
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
}

/// What the decoder has made of the records so far.
#[derive(Default)]
struct Decoded {
    states: crate::detector::Baselines,
    census: HashMap<i64, crate::census::CensusDay>,
    applied_through: i64,
    undecodable: u64,
    unverified: u64,
}

impl Decoded {
    /// Applies one record: a baseline or a day's counts, or (a tombstone) their deletion.
    fn apply(&mut self, verifier: &trailguard_common::sign::Verifier, raw: Raw) {
        // A tombstone carries no signature (nothing to seal): it forgets a principal, which a
        // forged one can do anyway by getting the record compacted away.
        let value = match raw.payload.as_deref() {
            None => None,
            Some(sealed) => {
                match verifier.open(trailguard_common::sign::purpose::STATE, &raw.key, sealed) {
                    Ok(value) => Some(value),
                    Err(_) => {
                        self.unverified += 1;
                        return;
                    }
                }
            }
        };
        let key = String::from_utf8_lossy(&raw.key).into_owned();
        if key == APPLIED_KEY {
            match value.map(serde_json::from_slice::<i64>) {
                Some(Ok(offset)) => self.applied_through = offset,
                None => self.applied_through = 0,
                Some(Err(_)) => self.undecodable += 1,
            }
            return;
        }
        if let Some(day) = key.strip_prefix(CENSUS_PREFIX) {
            let Ok(day) = day.parse::<i64>() else {
                self.undecodable += 1;
                return;
            };
            match value.map(serde_json::from_slice::<crate::census::CensusDay>) {
                None => {
                    self.census.remove(&day);
                }
                Some(Ok(counts)) => {
                    self.census.insert(day, counts);
                }
                Some(Err(_)) => self.undecodable += 1,
            }
            return;
        }
        match value.map(serde_json::from_slice::<PrincipalState>) {
            None => {
                self.states.remove(&key);
            }
            Some(Ok(state)) => {
                self.states.insert(key, Box::new(state));
            }
            Some(Err(_)) => self.undecodable += 1,
        }
    }
}

/// Keys of the changelog that hold the partition's organization counts of a day
/// (`census:DAY`), saved with its baselines: the partition's next owner replays from the
/// committed offset, so it needs the counts as of the same save (the facts topic may not
/// have reached it yet).
pub const CENSUS_PREFIX: &str = "census:";

/// The key of the partition's applied-through mark: the offset before which every activity
/// is in the saved baselines (or its actor's baseline was forgotten since — evicted or past
/// `state_ttl`). Written after a save in which every baseline was delivered, so a replay knows
/// an activity without a baseline below it was already applied.
pub const APPLIED_KEY: &str = "applied:through";

/// One partition's changelog, read back.
pub struct Restored {
    /// Baselines by actor key.
    pub states: crate::detector::Baselines,
    /// The applied-through mark (0: none saved).
    pub applied_through: i64,
    /// The partition's organization counts by day.
    pub census: Vec<(i64, crate::census::CensusDay)>,
    /// Records ignored for want of a valid signature.
    pub unverified: u64,
}

fn kafka_read(
    cfg: &KafkaConfig,
    partition: i32,
    visit: impl FnMut(&trailguard_common::kafka::Read<'_>),
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
    census: Vec<(i64, crate::census::CensusDay)>,
    signer: Option<&trailguard_common::sign::Signer>,
) -> bool {
    let seal = |key: &str, bytes: Vec<u8>| {
        trailguard_common::sign::seal(
            signer,
            trailguard_common::sign::purpose::STATE,
            key.as_bytes(),
            &bytes,
        )
    };
    let census_days: Vec<i64> = census.iter().map(|(day, _)| *day).collect();
    let mut changes: Vec<(String, Option<Vec<u8>>)> = detector
        .take_changes()
        .into_iter()
        .map(|(key, state)| {
            let bytes = state
                .and_then(|s| serde_json::to_vec(s).ok())
                .map(|b| seal(&key, b));
            (key, bytes)
        })
        .collect();
    for (day, counts) in census {
        let key = format!("{CENSUS_PREFIX}{day}");
        let bytes = serde_json::to_vec(&counts).ok().map(|b| seal(&key, b));
        changes.push((key, bytes));
    }
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
    let deliveries = futures::future::join_all(pending).await;
    let mut retry = Vec::new();
    for ((key, payload), delivery) in changes.iter().zip(deliveries) {
        let Err((err, _)) = delivery else {
            if payload.is_some() {
                detector.delivered(key);
            }
            continue;
        };
        if let Some(kind) = trailguard_common::kafka::refusal(&err) {
            // Refused for good (a baseline larger than the broker takes): kept in memory only,
            // so the partition's offsets still move; a restart re-learns it.
            tracing::error!(error = %err, partition, key = %key, kind, "baseline refused by the broker; not saved");
            continue;
        }
        tracing::warn!(error = %err, partition, "baseline not saved; retrying at the next checkpoint");
        retry.push(key.clone());
    }
    if retry.is_empty() {
        // Every baseline is in: the mark may move (never before them: a mark past a baseline
        // that was not delivered would skip its actor's activities on a replay).
        let mark = detector.applied_mark();
        let Ok(bytes) = serde_json::to_vec(&mark) else {
            return true;
        };
        let payload = seal(APPLIED_KEY, bytes);
        let record: FutureRecord<'_, str, Vec<u8>> = FutureRecord::to(topic)
            .key(APPLIED_KEY)
            .partition(partition)
            .payload(&payload);
        return match producer.send(record, Duration::from_secs(30)).await {
            Ok(_) => true,
            Err((err, _)) => {
                tracing::warn!(error = %err, partition, "applied mark not saved; retrying at the next checkpoint");
                false
            }
        };
    }
    // Saved again next time (a newer write of the same key is harmless).
    if retry.iter().any(|k| k.starts_with(CENSUS_PREFIX)) {
        detector.census_unsaved(census_days);
    }
    detector.mark_dirty(retry.into_iter().filter(|k| !k.starts_with(CENSUS_PREFIX)));
    false
}
