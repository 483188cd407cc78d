//! Trailguard ingest: reads CloudTrail, normalizes each record into an
//! [`Activity`](trailguard_common::Activity) and publishes it to the activities topic, keyed by
//! principal. Whatever cannot be normalized goes to the dead-letter topic with its reason.
//!
//! - [`limits`] (pure): what reading an input may cost, and how it fails.
//! - [`split`] (pure): input bytes → raw records (log files, arrays, NDJSON, gzip).
//! - [`stream`] (pure but for the reader): a large log file, record by record.
//! - [`normalize`] (pure): raw record → `Activity`.
//! - `handover`: records split, normalized and serialized on a reading thread, handed to the
//!   publishing task in bounded batches.
//! - [`pipeline`]: what every source does with an input — split, normalize, publish or
//!   dead-letter each record, count it all in a [`pipeline::Summary`].
//! - [`files`]: the `files` source — paths, directory trees, stdin.
//! - [`s3`]: the `s3` source — trail log files in a bucket, account and organization layouts.
//! - [`sqs`]: the `sqs` source — S3/SNS/CloudTrail notifications on a shared queue.
//! - [`inventory`]: the posture inventory — every bucket's exposure settings, now.
//! - [`lookup`]: the `lookup` source — CloudTrail's LookupEvents API, paced and checkpointed.
//! - [`checkpoint`]: where each source left off, in a compacted topic.
//! - [`dedup`] (pure): drops repeats of an activity id within a horizon.
//! - [`publish`]: the Kafka side — durable sends of activities and dead letters.
//! - [`cli`]: the command line — each source's flags, as a configuration overlay.
//! - [`service`]: start-up, the polling loop, the periodic inventory, summaries and exit codes.
//!
//! Every source's entry point is `run`: [`files::run`], [`s3::run`] and [`lookup::run`] (one
//! pass each; [`service::Poller`] repeats them), [`sqs::run`], [`inventory::run`].

pub mod checkpoint;
pub mod cli;
pub mod dedup;
pub mod files;
mod handover;
pub mod inventory;
pub mod limits;
pub mod lines;
pub mod lookup;
pub mod normalize;
pub mod pipeline;
pub mod publish;
pub mod s3;
pub mod service;
pub mod split;
pub mod sqs;
mod stdin;
pub mod stream;
pub mod trail_inventory;
pub mod trim;

use serde::{Deserialize, Serialize};
use trailguard_common::config::{AdminConfig, KafkaConfig, LogConfig};

/// Everything ingest can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Admin endpoint. One-shot commands (`files`) serve it only with `--admin-listen`.
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Publishing.
    pub publish: PublishConfig,
    /// The `files` source.
    pub files: files::FilesConfig,
    /// AWS access (the `s3` source).
    pub aws: trailguard_common::aws::AwsConfig,
    /// The `s3` source.
    pub s3: s3::S3SourceConfig,
    /// The `sqs` source.
    pub sqs: sqs::SqsSourceConfig,
    /// The `lookup` source.
    pub lookup: lookup::LookupSourceConfig,
    /// The posture inventory (`ingest inventory`, or on an interval in the long-running
    /// sources).
    pub inventory: inventory::InventoryConfig,
}

impl IngestConfig {
    /// Checks cross-field rules; errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        self.kafka.validate()?;
        self.inventory.validate()?;
        self.publish.validate()
    }
}

/// How records are published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Most records awaiting their delivery report at once (bounds memory).
    pub max_in_flight: usize,
    /// A dead letter larger than this carries a pointer to its source instead of its bytes.
    pub max_dead_letter_bytes: usize,
    /// Repeats of an activity id within this much event time of the newest activity are
    /// dropped (and counted).
    #[serde(with = "humantime_serde")]
    pub dedup_horizon: std::time::Duration,
    /// Most ids remembered for de-duplication (about 60 bytes each); 0 turns it off.
    pub dedup_max_entries: usize,
    /// Records whose event time is further than this ahead of ingest's clock are dead-lettered
    /// as `bad_event_time`: one such record would move detect's notion of "now" and expire
    /// every baseline.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: std::time::Duration,
    /// An input decompresses to at most this many bytes (fewer for a decompression bomb, see
    /// `split::MAX_RATIO`); what is past it is dead-lettered as `too_large`.
    pub max_decompressed_bytes: u64,
    /// A record or NDJSON line larger than this is dead-lettered as `too_large` unparsed.
    pub max_record_bytes: usize,
    /// How activities are written to the activities topic: `json` (the default, as
    /// `schemas/activity.schema.json` describes) or `compact` (a binary layout detect decodes
    /// in half JSON's instructions; see docs/wire.md). Detect reads both.
    pub activity_encoding: trailguard_common::compact::ActivityEncoding,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            max_in_flight: 20_000,
            max_dead_letter_bytes: 900_000,
            dedup_horizon: std::time::Duration::from_secs(24 * 3600),
            dedup_max_entries: 1_000_000,
            max_clock_skew: std::time::Duration::from_secs(24 * 3600),
            max_decompressed_bytes: crate::split::Limits::default().max_decompressed,
            max_record_bytes: crate::split::Limits::default().max_record,
            activity_encoding: Default::default(),
        }
    }
}

impl PublishConfig {
    fn validate(&self) -> Result<(), Error> {
        if self.max_in_flight == 0 {
            return Err(trailguard_common::Error::config(
                "publish.max_in_flight",
                "must be at least 1",
            )
            .into());
        }
        if self.max_clock_skew > std::time::Duration::from_secs(365 * 86_400) {
            return Err(trailguard_common::Error::config(
                "publish.max_clock_skew",
                "must be at most 365d",
            )
            .into());
        }
        if self.dedup_horizon > std::time::Duration::from_secs(365 * 86_400) {
            return Err(trailguard_common::Error::config(
                "publish.dedup_horizon",
                "must be at most 365d",
            )
            .into());
        }
        if self.max_record_bytes < 1024 {
            return Err(trailguard_common::Error::config(
                "publish.max_record_bytes",
                "must be at least 1024",
            )
            .into());
        }
        if self.max_decompressed_bytes < self.max_record_bytes as u64 {
            return Err(trailguard_common::Error::config(
                "publish.max_decompressed_bytes",
                "must be at least publish.max_record_bytes",
            )
            .into());
        }
        if self.max_dead_letter_bytes < 1024 {
            return Err(trailguard_common::Error::config(
                "publish.max_dead_letter_bytes",
                "must be at least 1024",
            )
            .into());
        }
        Ok(())
    }
}

/// Errors of ingest. Poison inputs are not errors: they are dead-lettered and counted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or Kafka plumbing.
    #[error(transparent)]
    Common(#[from] trailguard_common::Error),
    /// Reading an input failed in a way that is not the input's fault (e.g. stdin closed).
    #[error("reading {source_name}: {error}")]
    Read {
        /// The input.
        source_name: String,
        /// What happened.
        error: std::io::Error,
    },
    /// A source failed in a way that is not one input's fault.
    #[error("source: {0}")]
    Source(String),
    /// An AWS call of a source failed (listing a bucket, access, throttling after retries).
    #[error("source: {0}")]
    Aws(#[from] trailguard_common::aws::CallError),
    /// An object was refused for want of permission, not yet for long: tried again.
    #[error("source: {0}")]
    Denied(String),
    /// Records could not be published even after the producer's retries.
    #[error("{failed} records could not be published: {first}")]
    Publish {
        /// How many.
        failed: u64,
        /// The first error.
        first: String,
    },
}

#[cfg(test)]
mod config_sections {
    #[test]
    fn sections_are_known() {
        let unknown = trailguard_common::config::unknown_sections(&super::IngestConfig::default());
        assert!(unknown.is_empty(), "add {unknown:?} to ALL_SECTIONS");
    }
}
