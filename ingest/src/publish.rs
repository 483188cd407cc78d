//! The Kafka side of ingest: activities and dead letters, sent with an idempotent producer and
//! counted only once the broker has them.

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use trailguard_common::contract::dlq_headers as h;
use trailguard_common::kafka;
use trailguard_common::Activity;

use crate::dedup::Dedup;
use crate::{Error, IngestConfig};

/// The name stdin goes by in dead letters and summaries.
pub const STDIN: &str = "stdin";

/// Ingest's metrics. Labels come from closed sets only.
#[derive(Clone)]
pub struct Metrics {
    /// Records read from a source, before normalization.
    pub records_read: IntCounterVec,
    /// Activities the broker acknowledged.
    pub records_published: IntCounterVec,
    /// Dead letters the broker acknowledged, by error kind.
    pub dead_lettered: IntCounterVec,
    /// Inputs (files, objects) processed, by result (`ok`, `dead_lettered`, `skipped`).
    pub inputs: IntCounterVec,
    /// Bytes read from sources (as stored, before decompression).
    pub bytes_read: IntCounterVec,
    /// Activities dropped as repeats of one already published.
    pub duplicates: IntCounterVec,
    /// Source API calls (LookupEvents pages), and those throttled.
    pub api_calls: IntCounterVec,
    /// Source API calls that were throttled and retried.
    pub throttles: IntCounterVec,
    /// Failures of a long-running source waited out and tried again.
    pub source_errors: IntCounterVec,
    /// Wall clock minus event time of each published activity.
    pub event_lag: HistogramVec,
    /// Unix time of each source kind's last checkpoint (age = now − this).
    pub checkpoint_time: IntGaugeVec,
    /// Activities too large for the broker, published with their bulky fields trimmed.
    pub trimmed: IntCounterVec,
    /// Inputs found after later ones of their stream had been read (CloudTrail delivered them
    /// out of order); each is read once.
    pub late_inputs: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<_, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Metrics {
            records_read: counter(
                "trailguard_ingest_records_read_total",
                "Records read from a source, before normalization.",
                &["source"],
            )?,
            records_published: counter(
                "trailguard_ingest_records_published_total",
                "Activities durably published to the activities topic.",
                &["source"],
            )?,
            dead_lettered: counter(
                "trailguard_ingest_dead_letters_total",
                "Records or inputs durably published to the dead-letter topic, by error kind.",
                &["source", "error_kind"],
            )?,
            inputs: counter(
                "trailguard_ingest_inputs_total",
                "Inputs (files, objects, stdin) processed, by result.",
                &["source", "result"],
            )?,
            bytes_read: counter(
                "trailguard_ingest_read_bytes_total",
                "Bytes read from sources, as stored (before decompression).",
                &["source"],
            )?,
            api_calls: counter(
                "trailguard_ingest_api_calls_total",
                "Source API calls made (LookupEvents pages).",
                &["source"],
            )?,
            throttles: counter(
                "trailguard_ingest_api_throttles_total",
                "Source API calls throttled (and retried with backoff).",
                &["source"],
            )?,
            source_errors: counter(
                "trailguard_ingest_source_errors_total",
                "Failures of a long-running source (a call still failing after the SDK's retries, records not made durable) waited out and tried again.",
                &["source"],
            )?,
            event_lag: {
                let h = HistogramVec::new(
                    HistogramOpts::new(
                        "trailguard_ingest_event_lag_seconds",
                        "Wall-clock time minus event time when an activity is published.",
                    )
                    .buckets(vec![1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0, 604800.0]),
                    &["source"],
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            checkpoint_time: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "trailguard_ingest_checkpoint_timestamp_seconds",
                        "Unix time of the last checkpoint written, by source kind (age = time() - this).",
                    ),
                    &["source"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            trimmed: counter(
                "trailguard_ingest_trimmed_total",
                "Activities too large to publish whole, published with their bulky fields trimmed (named in the activity's `trimmed`).",
                &["source"],
            )?,
            late_inputs: counter(
                "trailguard_ingest_late_inputs_total",
                "Log files found after later files of their stream were read (delivered out of order), each read once.",
                &["source"],
            )?,
            duplicates: counter(
                "trailguard_ingest_duplicates_total",
                "Activities dropped as repeats of an id published within the de-duplication horizon.",
                &["source"],
            )?,
        })
    }
}

impl Metrics {
    /// Creates the series of `source` at zero, so rates and alert rules see zeros, not absent
    /// series. (Not the checkpoint time: zero would read as a checkpoint 56 years old.)
    pub fn start(&self, source: &str) {
        for counter in [
            &self.records_read,
            &self.records_published,
            &self.bytes_read,
            &self.duplicates,
            &self.api_calls,
            &self.throttles,
            &self.source_errors,
            &self.late_inputs,
            &self.trimmed,
        ] {
            counter.with_label_values(&[source]);
        }
        self.inputs.with_label_values(&[source, "ok"]);
        self.event_lag.with_label_values(&[source]);
    }
}

/// What a publisher has had acknowledged so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Activities.
    pub published: u64,
    /// Dead letters.
    pub dead_lettered: u64,
    /// Activities dropped as repeats.
    pub duplicates: u64,
}

/// What a dead letter says about itself.
pub struct DeadLetter<'a> {
    /// Where it came from (path, `stdin`).
    pub source: &'a str,
    /// Record index or line, 0 for a whole input.
    pub index: usize,
    /// Closed-set error kind.
    pub kind: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// Where a record came from: its input (a path, `stdin`, `s3://bucket/key`, a LookupEvents
/// stream) and its index there, so a dead letter names what to read again.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The input.
    pub source: &'a str,
    /// The record's index in it (1-based; 0 for the input as a whole).
    pub index: usize,
}

/// An activity serialized where it was normalized (a reading thread), ready to be queued: its
/// id, time and key, and its bytes (in `publish.activity_encoding`), within the size a message
/// may be.
#[derive(Debug, Clone, Copy)]
pub struct Serialized<'a> {
    /// The activity's id.
    pub id: &'a str,
    /// When it happened.
    pub event_time: chrono::DateTime<chrono::Utc>,
    /// Its key on the topic: the actor's id.
    pub key: &'a str,
    /// Its bytes: JSON or compact (`publish.activity_encoding`).
    pub json: &'a [u8],
}

/// Sends activities and dead letters, keeping at most `max_in_flight` unacknowledged.
pub struct Publisher {
    producer: trailguard_common::kafka::Producer,
    activities_topic: std::sync::Arc<str>,
    dlq_topic: String,
    max_in_flight: usize,
    max_dead_letter_bytes: usize,
    max_clock_skew: chrono::Duration,
    limits: crate::split::Limits,
    source_kind: &'static str,
    /// Deliveries not yet acknowledged; each resolves to the dead-letter kind, or `None` for an
    /// activity.
    in_flight: FuturesUnordered<BoxFuture<'static, Result<Option<&'static str>, KafkaError>>>,
    metrics: Metrics,
    /// Acknowledged activities.
    published: u64,
    /// Acknowledged dead letters.
    dead_lettered: u64,
    /// Activities dropped as repeats.
    duplicates: u64,
    dedup: Dedup,
    failed: u64,
    first_error: Option<String>,
    buffer: Vec<u8>,
    /// How activities are written (`publish.activity_encoding`).
    encoding: trailguard_common::compact::ActivityEncoding,
}

impl Publisher {
    /// A publisher for one source kind (`files`, `s3`, ...), used as the metric label.
    pub fn new(
        producer: trailguard_common::kafka::Producer,
        cfg: &IngestConfig,
        source_kind: &'static str,
        metrics: Metrics,
    ) -> Self {
        metrics.start(source_kind);
        Publisher {
            producer,
            activities_topic: cfg.kafka.topics.activities.as_str().into(),
            dlq_topic: cfg.kafka.topics.dlq.clone(),
            max_in_flight: cfg.publish.max_in_flight,
            max_dead_letter_bytes: cfg.publish.max_dead_letter_bytes,
            max_clock_skew: chrono::Duration::from_std(cfg.publish.max_clock_skew)
                .unwrap_or(chrono::Duration::days(365)),
            limits: crate::split::Limits {
                max_decompressed: cfg.publish.max_decompressed_bytes,
                max_record: cfg.publish.max_record_bytes,
            },
            source_kind,
            in_flight: FuturesUnordered::new(),
            metrics,
            published: 0,
            dead_lettered: 0,
            duplicates: 0,
            dedup: Dedup::new(cfg.publish.dedup_horizon, cfg.publish.dedup_max_entries),
            failed: 0,
            first_error: None,
            buffer: Vec::with_capacity(4096),
            encoding: cfg.publish.activity_encoding,
        }
    }

    /// What has been acknowledged (or dropped as a repeat) so far.
    pub fn counts(&self) -> Counts {
        Counts {
            published: self.published,
            dead_lettered: self.dead_lettered,
            duplicates: self.duplicates,
        }
    }

    /// The metrics this publisher counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What one input may cost (`publish.max_decompressed_bytes`, `publish.max_record_bytes`).
    pub fn limits(&self) -> crate::split::Limits {
        self.limits
    }

    /// The source kind this publisher counts under (`files`, `s3`, `sqs`, `lookup`, ...).
    pub fn source_kind(&self) -> &'static str {
        self.source_kind
    }

    /// The largest activity, serialized, that is queued as it is: a larger one is trimmed
    /// first.
    pub fn max_activity_bytes(&self) -> usize {
        self.max_dead_letter_bytes
    }

    /// How activities are serialized for the topic, and the largest queued as it is.
    pub(crate) fn fit(&self) -> crate::handover::Fit {
        crate::handover::Fit {
            most: self.max_dead_letter_bytes,
            encoding: self.encoding,
        }
    }

    /// Queues one activity normalized from `original` (the record as read), keyed by its
    /// principal, unless it repeats one already queued. An activity from the future (beyond
    /// `publish.max_clock_skew`) is dead-lettered; one too large for the broker is trimmed
    /// ([`crate::trim`]), and dead-lettered, naming `origin`, only when even that fails.
    pub async fn activity(&mut self, mut activity: Activity, origin: Origin<'_>, original: &[u8]) {
        if !self
            .admit(&activity.id, activity.event_time, origin, original)
            .await
        {
            return;
        }
        self.buffer.clear();
        if let Err(err) = self.encoding.write(&activity, &mut self.buffer) {
            // Serializing plain data to memory cannot fail; count it if it ever does.
            self.record_failure(err.to_string());
            return;
        }
        self.observe_lag(activity.event_time);
        if self.buffer.len() > self.max_dead_letter_bytes {
            // Larger than a Kafka message may be: trim the bulky fields so detection still
            // sees the call.
            let size = self.buffer.len();
            match crate::trim::shrink(&mut activity, self.max_dead_letter_bytes, self.encoding) {
                Some(json) => {
                    tracing::info!(source = origin.source, index = origin.index, size, trimmed = ?activity.trimmed, "activity trimmed to fit");
                    self.metrics
                        .trimmed
                        .with_label_values(&[self.source_kind])
                        .inc();
                    self.buffer = json;
                }
                None => {
                    let reason =
                        format!("activity of {size} bytes is too large to publish, even trimmed");
                    self.reject(original, origin, "too_large", reason).await;
                    return;
                }
            }
        }
        let payload = std::mem::take(&mut self.buffer);
        let topic = self.activities_topic.clone();
        self.enqueue(&topic, activity.actor.id.as_bytes(), &payload, None, None)
            .await;
        self.buffer = payload;
    }

    /// Queues one activity serialized elsewhere, as [`Publisher::activity`] queues one it
    /// serializes. One larger than [`Publisher::max_activity_bytes`] is for
    /// [`Publisher::activity`] to trim: given here, it is dead-lettered as too large.
    pub async fn serialized(
        &mut self,
        activity: Serialized<'_>,
        origin: Origin<'_>,
        original: &[u8],
    ) {
        if !self
            .admit(activity.id, activity.event_time, origin, original)
            .await
        {
            return;
        }
        self.observe_lag(activity.event_time);
        if activity.json.len() > self.max_dead_letter_bytes {
            let size = activity.json.len();
            let reason = format!("activity of {size} bytes is too large to publish untrimmed");
            self.reject(original, origin, "too_large", reason).await;
            return;
        }
        let topic = self.activities_topic.clone();
        self.enqueue(&topic, activity.key.as_bytes(), activity.json, None, None)
            .await;
    }

    /// Whether an activity with `id`, of `event_time`, is to be queued: not from the future
    /// (dead-lettered, naming `origin`) and not a repeat (counted).
    async fn admit(
        &mut self,
        id: &str,
        event_time: chrono::DateTime<chrono::Utc>,
        origin: Origin<'_>,
        original: &[u8],
    ) -> bool {
        if event_time > chrono::Utc::now() + self.max_clock_skew {
            let reason = format!(
                "eventTime {} is more than {} h ahead of this clock",
                event_time.to_rfc3339(),
                self.max_clock_skew.num_hours()
            );
            self.reject(original, origin, "bad_event_time", reason)
                .await;
            return false;
        }
        if !self.dedup.first_time(id, event_time) {
            self.duplicates += 1;
            self.metrics
                .duplicates
                .with_label_values(&[self.source_kind])
                .inc();
            return false;
        }
        true
    }

    fn observe_lag(&self, event_time: chrono::DateTime<chrono::Utc>) {
        let lag = (chrono::Utc::now() - event_time).num_milliseconds() as f64 / 1000.0;
        self.metrics
            .event_lag
            .with_label_values(&[self.source_kind])
            .observe(lag.max(0.0));
    }

    async fn reject(
        &mut self,
        original: &[u8],
        origin: Origin<'_>,
        kind: &'static str,
        reason: String,
    ) {
        let letter = DeadLetter {
            source: origin.source,
            index: origin.index,
            kind,
            reason,
        };
        self.dead_letter(original, letter).await;
    }

    /// Queues one dead letter: the original bytes (or a pointer naming its source and index,
    /// when too large; stdin, which nothing names, in parts) with the reason in headers.
    pub async fn dead_letter(&mut self, original: &[u8], letter: DeadLetter<'_>) {
        self.dead_letter_of(original, original.len() as u64, letter)
            .await
    }

    /// [`Publisher::dead_letter`] of something `size` bytes long of which `original` is what
    /// was kept (nothing, for a line read through without being held: its pointer then says
    /// its size).
    pub async fn dead_letter_of(&mut self, original: &[u8], size: u64, letter: DeadLetter<'_>) {
        if original.len() > self.max_dead_letter_bytes && letter.source == STDIN {
            // Nothing names stdin to read it again: keep all of it, in parts.
            return self.dead_letter_in_parts(original, letter).await;
        }
        let pointer;
        // Too large for a message, or nothing to keep (an object that could not be read): a
        // pointer naming where it is.
        let (payload, is_pointer) =
            if original.len() > self.max_dead_letter_bytes || original.is_empty() {
                pointer = serde_json::json!({
                    "pointer": letter.source,
                    "index": letter.index,
                    "size_bytes": size,
                })
                .to_string();
                (pointer.as_bytes(), "true")
            } else {
                (original, "false")
            };
        tracing::warn!(source = letter.source, index = letter.index, kind = letter.kind, reason = %letter.reason, "dead-lettered");
        self.send_dead_letter(payload, &letter, is_pointer, None)
            .await;
    }

    /// Queues a dead letter of an input nothing can read again (stdin): its bytes in as many
    /// parts as the size limit needs, each with the headers `part` and `parts` (1-based), keyed
    /// alike so they stay in order on one partition. Concatenated, the parts are the input.
    async fn dead_letter_in_parts(&mut self, original: &[u8], letter: DeadLetter<'_>) {
        let parts = original.len().div_ceil(self.max_dead_letter_bytes);
        for (i, chunk) in original.chunks(self.max_dead_letter_bytes).enumerate() {
            self.send_dead_letter(chunk, &letter, "false", Some((i + 1, parts)))
                .await;
        }
        tracing::warn!(source = letter.source, parts, kind = letter.kind, reason = %letter.reason, "dead-lettered in parts");
    }

    /// Queues one dead-letter message with its headers.
    async fn send_dead_letter(
        &mut self,
        payload: &[u8],
        letter: &DeadLetter<'_>,
        is_pointer: &str,
        part: Option<(usize, usize)>,
    ) {
        let index = letter.index.to_string();
        let mut pairs = vec![
            (h::REASON, letter.reason.as_str()),
            (h::ERROR_KIND, letter.kind),
            (h::SOURCE, letter.source),
            (h::INDEX, index.as_str()),
            (h::STAGE, "ingest"),
            (h::POINTER, is_pointer),
        ];
        let numbers = part.map(|(n, of)| (n.to_string(), of.to_string()));
        if let Some((n, of)) = &numbers {
            pairs.push((h::PART, n.as_str()));
            pairs.push((h::PARTS, of.as_str()));
        }
        let topic = self.dlq_topic.clone();
        self.enqueue(
            &topic,
            letter.source.as_bytes(),
            payload,
            Some(kafka::headers(pairs)),
            Some(letter.kind),
        )
        .await;
    }

    async fn enqueue(
        &mut self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        dead_letter_kind: Option<&'static str>,
    ) {
        while self.in_flight.len() >= self.max_in_flight {
            self.settle_one().await;
        }
        loop {
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            if let Some(h) = headers.clone() {
                record = record.headers(h);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.in_flight.push(Box::pin(async move {
                        resolve(delivery).await.map(|()| dead_letter_kind)
                    }));
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue is full: wait for a delivery, never drop.
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    } else {
                        self.settle_one().await;
                    }
                }
                Err((err, _)) => {
                    self.record_failure(err.to_string());
                    return;
                }
            }
        }
    }

    async fn settle_one(&mut self) {
        match self.in_flight.next().await {
            Some(Ok(None)) => {
                self.published += 1;
                self.metrics
                    .records_published
                    .with_label_values(&[self.source_kind])
                    .inc();
            }
            Some(Ok(Some(kind))) => {
                self.dead_lettered += 1;
                self.metrics
                    .dead_lettered
                    .with_label_values(&[self.source_kind, kind])
                    .inc();
            }
            Some(Err(err)) => self.record_failure(err.to_string()),
            None => {}
        }
    }

    /// Counts a record lost to a defect: the run fails with `error`, as when a publish fails.
    pub fn fail(&mut self, error: String) {
        self.record_failure(error);
    }

    fn record_failure(&mut self, error: String) {
        tracing::error!(%error, "publish failed after the producer's retries");
        self.failed += 1;
        self.first_error.get_or_insert(error);
    }

    /// The producer's fatal error, when it has one: it can publish nothing more (an idempotent
    /// producer's sequence broken), and only a new process has a new producer.
    pub fn fatal(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Waits for every queued record's delivery report. Errors if any record was not published.
    pub async fn finish(&mut self) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
        if self.failed > 0 {
            let err = Error::Publish {
                failed: self.failed,
                first: self.first_error.take().unwrap_or_default(),
            };
            // The caller re-reads from its last checkpoint: start clean, and forget the ids of
            // this round, some of which never reached the broker.
            self.failed = 0;
            self.dedup.clear();
            return Err(err);
        }
        Ok(())
    }
}

async fn resolve(delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((err, _))) => Err(err),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}
