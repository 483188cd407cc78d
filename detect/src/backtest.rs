//! `detect backtest`: the configured policies — built-in, custom and Sigma — over CloudTrail
//! log files or a range of the activities topic, offline: nothing is published, no group
//! offsets move. From files, the records go the way
//! `ingest files` sends them (the same normalization, ids and 24-hour de-duplication, each
//! activity to the partition the producer's partitioner gives its actor, `kafka.partitions` of
//! them) and through the same [`Detector`] the service runs, one per partition in offset order,
//! so a backtest and a live run over the same files on a fresh topic give the same alert ids.
//!
//! `unusual-region` waits, in the service, for every partition to pass an activity's time;
//! here every region in use is read first, which is what the service knows then.
//! `infrequent-country` is judged on the organization's counts read so far, where the service
//! waits for every partition's: on records whose times interleave across partitions it may
//! differ (docs/policies.md lists what else does).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use trailguard_common::{Activity, Alert};

use crate::detector::Detector;
use crate::DetectConfig;

/// What one policy raised in a backtest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyHits {
    /// Policy id.
    pub policy: String,
    /// Alerts raised (folded repeats are not alerts).
    pub alerts: usize,
    /// Distinct entities (principals, buckets, resources) alerted about.
    pub entities: usize,
    /// Event time of the first and of the last alert.
    pub first: DateTime<Utc>,
    /// See `first`.
    pub last: DateTime<Utc>,
    /// The first alert's summary.
    pub sample: String,
}

/// What a backtest read and raised.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Activities evaluated.
    pub activities: u64,
    /// Records dropped as repeats within the de-duplication horizon (as ingest does).
    pub duplicates: u64,
    /// Records that cannot be normalized (ingest dead-letters them) or are dated beyond the
    /// clock's skew.
    pub rejected: u64,
    /// Every alert, in the order raised.
    #[serde(skip)]
    pub alerts: Vec<Alert>,
}

impl Report {
    /// Each alert once: a fold closing publishes its alert again with the same id and the
    /// repeats counted in; the copy with the most occurrences is the alert (as a consumer of
    /// the alerts topic reads it).
    pub fn dedupe(&mut self) {
        let mut best: HashMap<String, usize> = HashMap::new();
        for (i, a) in self.alerts.iter().enumerate() {
            let keep = best
                .get(&a.id)
                .is_none_or(|&j| self.alerts[j].occurrences < a.occurrences);
            if keep {
                best.insert(a.id.clone(), i);
            }
        }
        let mut keep: Vec<usize> = best.into_values().collect();
        keep.sort_unstable();
        let mut i = 0;
        self.alerts.retain(|_| {
            let kept = keep.binary_search(&i).is_ok();
            i += 1;
            kept
        });
    }

    /// Alerts per policy (only `only`, when given), by policy id.
    pub fn by_policy(&self, only: Option<&str>) -> Vec<PolicyHits> {
        summarize(
            self.alerts
                .iter()
                .filter(|a| only.is_none_or(|p| a.policy_id == p)),
        )
    }
}

fn summarize<'a>(alerts: impl Iterator<Item = &'a Alert>) -> Vec<PolicyHits> {
    let mut by: BTreeMap<String, (PolicyHits, BTreeSet<String>)> = BTreeMap::new();
    for a in alerts {
        let entry = by.entry(a.policy_id.clone()).or_insert_with(|| {
            (
                PolicyHits {
                    policy: a.policy_id.clone(),
                    alerts: 0,
                    entities: 0,
                    first: a.time,
                    last: a.time,
                    sample: a.evidence.summary.clone(),
                },
                BTreeSet::new(),
            )
        });
        entry.0.alerts += 1;
        entry.0.first = entry.0.first.min(a.time);
        entry.0.last = entry.0.last.max(a.time);
        entry.1.insert(format!("{}:{}", a.entity.kind, a.entity.id));
    }
    by.into_values()
        .map(|(mut hits, entities)| {
            hits.entities = entities.len();
            hits
        })
        .collect()
}

/// What changed from `old` to `new`: alerts (by id) only `new` raises, and only `old`.
pub fn diff(new: &Report, old: &Report, only: Option<&str>) -> (Vec<PolicyHits>, Vec<PolicyHits>) {
    let ids = |r: &Report| -> BTreeSet<String> { r.alerts.iter().map(|a| a.id.clone()).collect() };
    let (new_ids, old_ids) = (ids(new), ids(old));
    let keep = |a: &&Alert| only.is_none_or(|p| a.policy_id == p);
    let added = summarize(
        new.alerts
            .iter()
            .filter(|a| !old_ids.contains(&a.id))
            .filter(keep),
    );
    let removed = summarize(
        old.alerts
            .iter()
            .filter(|a| !new_ids.contains(&a.id))
            .filter(keep),
    );
    (added, removed)
}

/// The partition librdkafka's default partitioner (`consistent_random`) gives a non-empty
/// `key` among `partitions`: CRC-32 of the key, modulo the count.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let partitions = partitions.max(1) as u32;
    (crc32fast::hash(key.as_bytes()) % partitions) as i32
}

/// Runs the policies of `cfg` over the CloudTrail files under `paths` (files or
/// directories), offline. `enricher` adds geolocation and intelligence as the service does;
/// `progress` is told each record read.
pub fn run_files(
    cfg: &DetectConfig,
    sigma: std::sync::Arc<crate::sigma::SigmaRules>,
    enricher: &mut crate::enrich::Enricher,
    paths: &[PathBuf],
    mut progress: impl FnMut(u64),
) -> Result<Report, String> {
    for path in paths {
        if !path.exists() {
            return Err(format!("{}: no such file or directory", path.display()));
        }
    }
    let (files, unreadable) = expand(paths);
    let mut report = Report::default();
    let mut run = Run::new(cfg, sigma, enricher.has_geo());
    // First the regions in use, from every record ([`learn_regions`]); this pass's
    // de-duplication is dropped before the evaluating pass fills its own.
    {
        let mut dedup = new_dedup();
        read_records(&files, |record| {
            if let Ok(activity) = record {
                if activity.event_time <= Utc::now() + run.skew
                    && dedup.first_time(&activity.id, activity.event_time)
                {
                    learn_regions(&mut run.facts, &activity);
                }
            }
        });
    }
    report.rejected += unreadable as u64;
    read_records(&files, |record| {
        report.records += 1;
        progress(report.records);
        match record {
            Ok(mut activity) => {
                enricher.enrich(&mut activity);
                run.observe(activity, &mut report);
            }
            Err(()) => report.rejected += 1,
        }
    });
    run.finish(&mut report);
    report.dedupe();
    Ok(report)
}

/// Learns the regions `activity` shows in use, ahead of evaluation: the service judges an
/// unusual region once every partition has passed its time, so knowing every use is what it
/// knows then. (Terminations are learned as evaluation reaches them, as in the service: one
/// learned ahead could be undone by a later re-creation before the use it should catch.)
fn learn_regions(facts: &mut crate::facts::Facts, activity: &Activity) {
    for (key, fact) in crate::facts::facts_of(activity) {
        if key.starts_with("region:") {
            facts.learn(&key, fact);
        }
    }
}

/// Every record of `files` (files, not directories: see [`expand`]), in order, normalized as
/// `ingest files` does (`Err`: it cannot be read or normalized; ingest dead-letters it).
pub fn read_records(files: &[PathBuf], mut each: impl FnMut(Result<Activity, ()>)) {
    let limits = trailguard_ingest::split::Limits::default();
    for path in files {
        let name = path.display().to_string();
        let Ok(bytes) = std::fs::read(path) else {
            each(Err(()));
            continue;
        };
        let plain = trailguard_ingest::split::decompress(&bytes, limits);
        let mut ordinal = 0;
        // Record by record: a file of millions of tiny records costs no list of them.
        trailguard_ingest::split::split_each(&plain.bytes, limits, &mut |item| {
            ordinal += 1;
            let activity = item.text.map_err(|_| ()).and_then(|text| {
                trailguard_ingest::normalize::normalize_at(&text, (&name, ordinal)).map_err(|_| ())
            });
            each(activity);
        });
    }
}

/// The log files under `paths` (files or directories), in the order `ingest files` reads
/// them, and how many could not be listed.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, usize) {
    use trailguard_ingest::files::Input;
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::Path).collect();
    let (inputs, _, unreadable) = trailguard_ingest::files::expand(&inputs);
    let files = inputs
        .into_iter()
        .filter_map(|i| match i {
            Input::Path(p) => Some(p),
            Input::Stdin => None,
        })
        .collect();
    (files, unreadable.len())
}

/// The detectors of one backtest, one per partition.
struct Run<'c> {
    cfg: &'c DetectConfig,
    sigma: std::sync::Arc<crate::sigma::SigmaRules>,
    has_geo: bool,
    detectors: HashMap<i32, Detector>,
    offsets: HashMap<i32, i64>,
    /// Console sign-in failures counted by source address, one counter per partition of the
    /// sign-in failures topic (as the service forwards them), with their offsets.
    counters: HashMap<i32, (crate::signin::SourceIpFailures, i64)>,
    /// Sigma correlations, one correlator per partition of the correlations topic (as the
    /// service forwards matches), with their offsets.
    correlators: HashMap<i32, (crate::sigma::correlation::Correlator, i64)>,
    facts: crate::facts::Facts,
    dedup: trailguard_ingest::dedup::Dedup,
    skew: chrono::Duration,
}

/// Ingest's de-duplication, with its default horizon.
fn new_dedup() -> trailguard_ingest::dedup::Dedup {
    let ingest = trailguard_ingest::PublishConfig::default();
    trailguard_ingest::dedup::Dedup::new(ingest.dedup_horizon, ingest.dedup_max_entries)
}

impl<'c> Run<'c> {
    fn new(
        cfg: &'c DetectConfig,
        sigma: std::sync::Arc<crate::sigma::SigmaRules>,
        has_geo: bool,
    ) -> Self {
        let ingest = trailguard_ingest::PublishConfig::default();
        Run {
            cfg,
            sigma,
            has_geo,
            detectors: HashMap::new(),
            offsets: HashMap::new(),
            counters: HashMap::new(),
            correlators: HashMap::new(),
            facts: crate::facts::Facts::default(),
            dedup: new_dedup(),
            skew: chrono::Duration::from_std(ingest.max_clock_skew)
                .unwrap_or(chrono::Duration::MAX),
        }
    }

    fn observe(&mut self, activity: Activity, report: &mut Report) {
        // As ingest: beyond the clock's skew is rejected, a repeat within the horizon dropped.
        if activity.event_time > Utc::now() + self.skew {
            report.rejected += 1;
            return;
        }
        if !self.dedup.first_time(&activity.id, activity.event_time) {
            report.duplicates += 1;
            return;
        }
        let partition = partition_of(&activity.actor_key(), self.cfg.kafka.partitions);
        let offset = *self.offsets.entry(partition).or_insert(0);
        self.offsets.insert(partition, offset + 1);
        self.observe_at(activity, partition, offset, report);
    }

    /// Evaluates `activity`, read at `offset` of activities partition `partition`.
    fn observe_at(&mut self, activity: Activity, partition: i32, offset: i64, report: &mut Report) {
        report.activities += 1;
        let (cfg, has_geo) = (self.cfg, self.has_geo);
        let sigma = &self.sigma;
        let detector = self.detectors.entry(partition).or_insert_with(|| {
            Detector::new(&cfg.policies, cfg.detect.allowed_lateness)
                .with_geo(&cfg.policies, has_geo)
                .counting_source_ips_elsewhere()
                .with_sigma(sigma.clone())
                .on_partition(partition)
                .for_partitions(&cfg.policies, cfg.kafka.partitions)
        });
        report
            .alerts
            .extend(detector.observe(&activity, offset, &mut self.facts));
        for hit in detector.take_correlation_hits() {
            let partition = partition_of(&hit.key(), cfg.kafka.partitions);
            let (correlator, offset) = self.correlators.entry(partition).or_insert_with(|| {
                (
                    crate::sigma::correlation::Correlator::new(
                        sigma.clone(),
                        cfg.detect.allowed_lateness,
                    ),
                    0,
                )
            });
            report.alerts.extend(correlator.observe(&hit, *offset));
            *offset += 1;
        }
        let signin = &cfg.policies.console_signin_failures;
        if let Some(ip) = activity
            .source_ip
            .filter(|_| crate::signin::counts_per_source_ip(signin, &activity))
        {
            let partition = partition_of(&ip.to_string(), cfg.kafka.partitions);
            let (counter, offset) = self.counters.entry(partition).or_insert_with(|| {
                (
                    crate::signin::SourceIpFailures::new(signin, cfg.detect.allowed_lateness),
                    0,
                )
            });
            report.alerts.extend(counter.observe(&activity, *offset));
            *offset += 1;
        }
    }

    /// What is still held is decided on what is known.
    fn finish(&mut self, report: &mut Report) {
        let mut partitions: Vec<i32> = self.detectors.keys().copied().collect();
        partitions.sort_unstable();
        for p in partitions {
            if let Some(detector) = self.detectors.get_mut(&p) {
                report.alerts.extend(detector.look_back(&self.facts));
                report.alerts.extend(detector.decide_held(&self.facts));
            }
        }
    }
}

/// Runs the policies of `cfg` over the activities topic's records published from `since` up to
/// `until` (or the end as it is when the backtest starts), offline: a reader without a group,
/// nothing committed, nothing published. Each partition is read in offset order, twice (the
/// regions in use first: [`learn_regions`]).
pub fn run_topic(
    cfg: &DetectConfig,
    sigma: std::sync::Arc<crate::sigma::SigmaRules>,
    enricher: &mut crate::enrich::Enricher,
    since: DateTime<Utc>,
    until: Option<DateTime<Utc>>,
    mut progress: impl FnMut(u64),
) -> Result<Report, String> {
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let topic = cfg.kafka.topics.activities.clone();
    let reader = trailguard_common::kafka::reader(&cfg.kafka, "trailguard-detect-backtest")
        .map_err(|e| e.to_string())?;
    let partitions =
        trailguard_common::kafka::partition_count(&cfg.kafka, &topic).map_err(|e| e.to_string())?;
    if partitions == 0 {
        return Err(format!("the activities topic `{topic}` does not exist"));
    }
    let timeout = std::time::Duration::from_secs(30);
    // Where each partition starts (the first record published at or after `since`) and ends.
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted
            .add_partition_offset(&topic, p, Offset::Offset(since.timestamp_millis()))
            .map_err(|e| e.to_string())?;
    }
    let starts = reader
        .offsets_for_times(wanted, timeout)
        .map_err(|e| format!("offsets for {since}: {e}"))?;
    let mut ranges = Vec::new();
    for p in 0..partitions {
        let (_, high) = reader
            .fetch_watermarks(&topic, p, timeout)
            .map_err(|e| e.to_string())?;
        let start = match starts.find_partition(&topic, p) {
            Some(e) if e.error().is_err() => {
                return Err(format!(
                    "offsets for {since} on partition {p}: {:?}",
                    e.error()
                ))
            }
            Some(e) => match e.offset() {
                Offset::Offset(o) => o,
                // Nothing published at or after `since`.
                Offset::End => high,
                other => return Err(format!("offsets for {since} on partition {p}: {other:?}")),
            },
            None => return Err(format!("offsets for {since}: partition {p} not answered")),
        };
        if start < high {
            ranges.push((p, start, high));
        }
    }
    let until_ms = until.map(|u| u.timestamp_millis());
    // Every activity of the ranges, partition by partition, in offset order.
    let read = |each: &mut dyn FnMut(i32, i64, Result<Activity, ()>)| -> Result<(), String> {
        for &(p, start, high) in &ranges {
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, p, Offset::Offset(start))
                .map_err(|e| e.to_string())?;
            reader.assign(&assignment).map_err(|e| e.to_string())?;
            let mut idle = std::time::Instant::now();
            loop {
                if idle.elapsed() > timeout {
                    return Err(format!(
                        "reading `{topic}` partition {p}: nothing arrived for 30 s"
                    ));
                }
                let Some(message) = reader.poll(std::time::Duration::from_millis(500)) else {
                    continue;
                };
                idle = std::time::Instant::now();
                match message {
                    Ok(m) if m.partition() != p => continue,
                    Ok(m) => {
                        if m.offset() >= high {
                            break;
                        }
                        let published = m.timestamp().to_millis();
                        if until_ms.is_some_and(|u| published.is_some_and(|t| t > u)) {
                            break;
                        }
                        each(
                            p,
                            m.offset(),
                            crate::runner::decode(m.payload()).map_err(|_| ()),
                        );
                        if m.offset() + 1 >= high {
                            break;
                        }
                    }
                    Err(rdkafka::error::KafkaError::PartitionEOF(q)) if q == p => break,
                    Err(rdkafka::error::KafkaError::PartitionEOF(_)) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    };
    let mut report = Report::default();
    let mut run = Run::new(cfg, sigma, enricher.has_geo());
    read(&mut |_, _, activity| {
        if let Ok(activity) = activity {
            learn_regions(&mut run.facts, &activity);
        }
    })?;
    read(&mut |p, offset, activity| {
        report.records += 1;
        progress(report.records);
        match activity {
            Ok(mut activity) => {
                enricher.enrich(&mut activity);
                run.observe_at(activity, p, offset, &mut report);
            }
            Err(()) => report.rejected += 1,
        }
    })?;
    run.finish(&mut report);
    report.dedupe();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_as_librdkafka_gives_them() {
        // librdkafka's consistent partitioner: CRC-32 (the check value of "123456789" is
        // 0xCBF43926) modulo the partition count.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
        assert_eq!(partition_of("123456789", 6), (0xCBF4_3926u32 % 6) as i32);
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn an_alert_published_again_counts_once() {
        let alert = |id: &str, occurrences: u64| {
            let policy = crate::policy::PolicyMeta {
                id: "p",
                name: "p",
                kind: trailguard_common::contract::AlertKind::Custom,
            };
            let mut a = crate::policy::AlertBuilder::at(
                &policy,
                DateTime::<Utc>::default(),
                trailguard_common::contract::Severity::Low,
            )
            .id(id.to_string());
            a.occurrences = occurrences;
            a
        };
        let mut report = Report {
            alerts: vec![alert("a", 1), alert("b", 1), alert("a", 3), alert("a", 2)],
            ..Report::default()
        };
        report.dedupe();
        let kept: Vec<(String, u64)> = report
            .alerts
            .iter()
            .map(|a| (a.id.clone(), a.occurrences))
            .collect();
        assert_eq!(kept, [("b".to_string(), 1), ("a".to_string(), 3)]);
        assert_eq!(report.by_policy(None)[0].alerts, 2);
    }
}
