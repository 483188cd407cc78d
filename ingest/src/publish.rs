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
    /// Wall clock minus event time of each published activity.
    pub event_lag: HistogramVec,
    /// Unix time of each source kind's last checkpoint (age = now − this).
    pub checkpoint_time: IntGaugeVec,
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

/// Sends activities and dead letters, keeping at most `max_in_flight` unacknowledged.
pub struct Publisher {
    producer: trailguard_common::kafka::Producer,
    activities_topic: String,
    dlq_topic: String,
    max_in_flight: usize,
    max_dead_letter_bytes: usize,
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
            activities_topic: cfg.kafka.topics.activities.clone(),
            dlq_topic: cfg.kafka.topics.dlq.clone(),
            max_in_flight: cfg.publish.max_in_flight,
            max_dead_letter_bytes: cfg.publish.max_dead_letter_bytes,
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

    /// Queues one activity, keyed by its principal, unless it repeats one already queued.
    pub async fn activity(&mut self, activity: &Activity) {
        if !self.dedup.first_time(&activity.id, activity.event_time) {
            self.duplicates += 1;
            self.metrics
                .duplicates
                .with_label_values(&[self.source_kind])
                .inc();
            return;
        }
        self.buffer.clear();
        if let Err(err) = serde_json::to_writer(&mut self.buffer, activity) {
            // Serializing plain data to memory cannot fail; count it if it ever does.
            self.record_failure(err.to_string());
            return;
        }
        let lag = (chrono::Utc::now() - activity.event_time).num_milliseconds() as f64 / 1000.0;
        self.metrics
            .event_lag
            .with_label_values(&[self.source_kind])
            .observe(lag.max(0.0));
        if self.buffer.len() > self.max_dead_letter_bytes {
            // Larger than a Kafka message may be: dead-letter a pointer instead of failing the
            // delivery (and every retry of it).
            let reason = format!(
                "activity of {} bytes is too large to publish",
                self.buffer.len()
            );
            let source = format!("activity/{}", activity.id);
            let original = std::mem::take(&mut self.buffer);
            let letter = DeadLetter {
                source: &source,
                index: 0,
                kind: "too_large",
                reason,
            };
            self.dead_letter(&original, letter).await;
            self.buffer = original;
            return;
        }
        let key = activity.principal.key();
        let payload = std::mem::take(&mut self.buffer);
        let topic = self.activities_topic.clone();
        self.enqueue(&topic, key.as_bytes(), &payload, None, None)
            .await;
        self.buffer = payload;
    }

    /// Queues one dead letter: the original bytes (or a pointer, when too large) with the
    /// reason in headers.
    pub async fn dead_letter(&mut self, original: &[u8], letter: DeadLetter<'_>) {
        let index = letter.index.to_string();
        let pointer;
        let (payload, is_pointer) = if original.len() > self.max_dead_letter_bytes {
            pointer = serde_json::json!({
                "pointer": letter.source,
                "index": letter.index,
                "size_bytes": original.len(),
            })
            .to_string();
            (pointer.as_bytes(), "true")
        } else {
            (original, "false")
        };
        let headers = kafka::headers([
            (h::REASON, letter.reason.as_str()),
            (h::ERROR_KIND, letter.kind),
            (h::SOURCE, letter.source),
            (h::INDEX, index.as_str()),
            (h::STAGE, "ingest"),
            (h::POINTER, is_pointer),
        ]);
        tracing::warn!(source = letter.source, index = letter.index, kind = letter.kind, reason = %letter.reason, "dead-lettered");
        let topic = self.dlq_topic.clone();
        self.enqueue(
            &topic,
            letter.source.as_bytes(),
            payload,
            Some(headers),
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

    fn record_failure(&mut self, error: String) {
        tracing::error!(%error, "publish failed after the producer's retries");
        self.failed += 1;
        self.first_error.get_or_insert(error);
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
