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
    // Three stages: this thread reads records off the broker and hands them on in batches,
    // round robin, to a few decoders that verify each seal and decode it; one collector takes
    // their results back in the order the batches were read (a later record of a key replaces
    // an earlier one) and builds the table. Every channel holds two batches: the records in
    // memory at once stay bounded whatever the partition's size.
    let workers = decoders();
    // A large partition takes a while: say how far it is (there is no deadline: a restore
    // that keeps reading is never cut off; one that stops getting records is).
    let began = std::time::Instant::now();
    let mut last_said = began;
    let mut read_so_far = 0u64;
    let (read, decoded) = in_order(
        workers,
        &format!("restore-{partition}"),
        |raw| Item::of(verifier, raw),
        Decoded::default(),
        Decoded::apply,
        |hand_on| {
            // The batches in flight grow with the decoders; their bytes are shared out.
            let max_bytes = RESTORE_BATCH_BYTES / workers;
            let mut batch = Vec::with_capacity(RESTORE_BATCH);
            let mut batch_bytes = 0usize;
            let read = kafka_read(cfg, partition, |read| {
                read_so_far += 1;
                if read_so_far.is_multiple_of(10_000)
                    && last_said.elapsed() >= Duration::from_secs(5)
                {
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
                // Handed on by count or by size (records may be large, and are copied before
                // their seal is checked).
                if batch.len() >= RESTORE_BATCH || batch_bytes >= max_bytes {
                    batch_bytes = 0;
                    // False once a decoder has failed: reading on would only delay the error.
                    return hand_on(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(RESTORE_BATCH),
                    ));
                }
                true
            });
            if !batch.is_empty() {
                hand_on(batch);
            }
            read
        },
    )?;
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

/// Records handed from the reader to a decoder at a time (at most).
const RESTORE_BATCH: usize = 512;
/// Bytes handed from the reader to the decoders at a time, shared out among them (at most,
/// give or take a record).
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

/// One changelog record, verified and decoded (by a decoder, off the collecting thread).
enum Item {
    /// Its seal did not verify: ignored.
    Unverified,
    /// Not understood: ignored, its principal starts afresh.
    Undecodable,
    /// The applied-through mark (0: deleted).
    Applied(i64),
    /// A day's organization counts, or (`None`) their deletion.
    Census(i64, Option<crate::census::CensusDay>),
    /// A principal's baseline, or (`None`) its deletion.
    State(String, Option<Box<PrincipalState>>),
}

impl Item {
    /// Verifies and decodes one record as read.
    fn of(verifier: &trailguard_common::sign::Verifier, raw: Raw) -> Item {
        // A tombstone carries no signature (nothing to seal): it forgets a principal, which a
        // forged one can do anyway by getting the record compacted away.
        let value = match raw.payload.as_deref() {
            None => None,
            Some(sealed) => {
                match verifier.open(trailguard_common::sign::purpose::STATE, &raw.key, sealed) {
                    Ok(value) => Some(value),
                    Err(_) => return Item::Unverified,
                }
            }
        };
        let key = match String::from_utf8(raw.key) {
            Ok(key) => key,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        if key == APPLIED_KEY {
            return match value.map(serde_json::from_slice::<i64>) {
                Some(Ok(offset)) => Item::Applied(offset),
                None => Item::Applied(0),
                Some(Err(_)) => Item::Undecodable,
            };
        }
        if let Some(day) = key.strip_prefix(CENSUS_PREFIX) {
            let Ok(day) = day.parse::<i64>() else {
                return Item::Undecodable;
            };
            return match value.map(serde_json::from_slice::<crate::census::CensusDay>) {
                None => Item::Census(day, None),
                Some(Ok(counts)) => Item::Census(day, Some(counts)),
                Some(Err(_)) => Item::Undecodable,
            };
        }
        match value.map(serde_json::from_slice::<PrincipalState>) {
            None => Item::State(key, None),
            Some(Ok(mut state)) => {
                state.fit_lists();
                Item::State(key, Some(Box::new(state)))
            }
            Some(Err(_)) => Item::Undecodable,
        }
    }
}

impl Decoded {
    /// Applies one record: a baseline or a day's counts, or (a tombstone) their deletion.
    fn apply(&mut self, item: Item) {
        match item {
            Item::Unverified => self.unverified += 1,
            Item::Undecodable => self.undecodable += 1,
            Item::Applied(offset) => self.applied_through = offset,
            Item::Census(day, None) => {
                self.census.remove(&day);
            }
            Item::Census(day, Some(counts)) => {
                self.census.insert(day, counts);
            }
            Item::State(key, None) => {
                self.states.remove(&key);
            }
            Item::State(key, Some(state)) => {
                self.states.insert(key, state);
            }
        }
    }
}

/// Decoders a restore runs: the cores this process may use, at most four (past that the
/// reading and the collecting thread bound it).
pub fn decoders() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Maps `work` over the items `produce` hands on (in batches) on `workers` threads and folds
/// the results into `state` with `apply` on one more thread, in the order the batches were
/// handed on; `produce` runs on the calling thread. Returns what `produce` returned and the
/// state. Batch `n` goes to worker `n % workers` and the collector takes results from the
/// workers in the same rotation, so order is kept without sequence numbers; every channel
/// holds two batches, so memory stays bounded. `produce`'s hand-on returns false once a worker
/// is gone (it failed, or the collector did), so it can stop early. A worker or the collector
/// that panics is an error (the others finish: a closed channel stops them).
fn in_order<I, O, S, R>(
    workers: usize,
    name: &str,
    work: impl Fn(I) -> O + Sync,
    state: S,
    apply: impl Fn(&mut S, O) + Send,
    produce: impl FnOnce(&mut dyn FnMut(Vec<I>) -> bool) -> R,
) -> Result<(R, S), Error>
where
    I: Send,
    O: Send,
    S: Send,
{
    use std::sync::mpsc::sync_channel;
    let workers = workers.max(1);
    let failed =
        |what: &str, e: std::io::Error| Error::Stopped(format!("starting {name}'s {what}: {e}"));
    std::thread::scope(|scope| {
        let work = &work;
        let mut inputs = Vec::with_capacity(workers);
        let mut outputs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (to_worker, batches) = sync_channel::<Vec<I>>(2);
            let (done, from_worker) = sync_channel::<Vec<O>>(2);
            inputs.push(to_worker);
            outputs.push(from_worker);
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn_scoped(scope, move || {
                    for batch in batches {
                        let results: Vec<O> = batch.into_iter().map(work).collect();
                        if done.send(results).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| failed("decoder", e))?;
            handles.push(handle);
        }
        let collector = std::thread::Builder::new()
            .name(format!("{name}-collect"))
            .spawn_scoped(scope, move || {
                let mut state = state;
                // The batch after the last is the first a worker cannot give: its channel is
                // closed once it has handed on everything it was given.
                for from in outputs.iter().cycle() {
                    let Ok(results) = from.recv() else { break };
                    for result in results {
                        apply(&mut state, result);
                    }
                }
                state
            })
            .map_err(|e| failed("collector", e))?;
        let mut next = 0usize;
        let produced = produce(&mut |batch| {
            // Fails only when that worker has stopped (it or the collector panicked), which
            // joining them reports below.
            let sent = inputs[next % workers].send(batch).is_ok();
            next += 1;
            sent
        });
        drop(inputs);
        let mut panicked = false;
        for handle in handles {
            panicked |= handle.join().is_err();
        }
        let state = collector.join();
        match state {
            Ok(state) if !panicked => Ok((produced, state)),
            _ => Err(Error::Stopped(format!(
                "{name}: a decoder or the collector failed"
            ))),
        }
    })
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
    visit: impl FnMut(&trailguard_common::kafka::Read<'_>) -> bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of a few keys, each key written many times: the table must end with each key's
    /// last write, as reading them one by one gives, however the decoders interleave.
    #[test]
    fn decoders_apply_records_in_the_order_they_were_read() -> Result<(), Error> {
        let records: Vec<(u32, u32)> = (0..20_000u32).map(|i| (i % 97, i)).collect();
        let mut expected = HashMap::new();
        for &(key, seq) in &records {
            expected.insert(key, seq);
        }
        for workers in [1, 2, 3, 5] {
            for batch in [1, 7, 512] {
                let (count, last) = in_order(
                    workers,
                    "test",
                    // Uneven work, so the decoders finish out of turn.
                    |(key, seq): (u32, u32)| {
                        let spin = (seq.wrapping_mul(2_654_435_761) >> 24) as u64;
                        let mut x = 0u64;
                        for i in 0..spin {
                            x = x.wrapping_add(std::hint::black_box(i));
                        }
                        std::hint::black_box(x);
                        (key, seq)
                    },
                    HashMap::new(),
                    |last: &mut HashMap<u32, u32>, (key, seq)| {
                        last.insert(key, seq);
                    },
                    |hand_on| {
                        for chunk in records.chunks(batch) {
                            assert!(hand_on(chunk.to_vec()), "every decoder runs");
                        }
                        records.len()
                    },
                )?;
                assert_eq!(count, records.len());
                assert_eq!(last, expected, "{workers} decoders, batches of {batch}");
            }
        }
        Ok(())
    }

    #[test]
    fn a_decoder_that_fails_fails_the_restore_without_hanging() {
        let mut handed = 0;
        let result = in_order(
            2,
            "test",
            |n: u32| {
                assert!(n != 5_000, "a decoder fails");
                n
            },
            0u64,
            |sum: &mut u64, n| *sum += u64::from(n),
            |hand_on| {
                for start in (0..20_000u32).step_by(100) {
                    if !hand_on((start..start + 100).collect()) {
                        break;
                    }
                    handed += 1;
                }
            },
        );
        assert!(matches!(result, Err(Error::Stopped(_))), "{result:?}");
        // The reader stops soon after batch 50 fails, not at the end of the partition.
        assert!(handed < 100, "{handed} of 200 batches handed on");
    }
}
