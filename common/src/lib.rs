//! What Trailguard's three services share, and nothing else.
//!
//! - [`contract`]: the wire contract — [`Activity`], [`Alert`], [`ActionRecord`] — with schema
//!   versions and generated JSON Schemas. This is what users consuming the topics rely on.
//! - [`actor`]: who acted, as a person or workload (the key of baselines).
//! - [`aws`]: AWS settings and client construction (endpoint override for local servers),
//!   typed call errors.
//! - [`aws_calls`]: every AWS call counted, timed and (in tests) logged.
//! - [`cli`]: the flags every binary takes, as a configuration overlay.
//! - [`config`]: the configuration every service has (Kafka, admin endpoint, logs) and the
//!   layered loader (defaults → file → env → flags).
//! - [`failure`]: every failure is retryable or poison, as a type.
//! - [`kafka`]: producer/consumer construction with librdkafka pass-through, topic creation,
//!   durable sends.
//! - [`raw_json`]: [`raw_json::RawJson`], a JSON value carried as its text and parsed only when
//!   read (the bulky fields of an activity).
//! - [`telemetry`]: logs, the Prometheus registry endpoint and `/healthz`.
//! - [`shutdown`]: the process-wide cancellation token.
//! - [`s3`]: what makes a bucket public (detect alerts on it, remediate undoes it).
//! - [`sign`]: HMAC signatures on alerts (detect signs, remediate verifies).
//! - [`sync`]: locks taken whether or not a panic poisoned them.
//! - [`trail`]: what a CloudTrail trail's settings record (detect judges them).

pub mod actor;
pub mod aws;
pub mod aws_calls;
pub mod cli;
pub mod compact;
pub mod config;
pub mod contract;
mod error;
pub mod failure;
pub mod kafka;
pub mod raw_json;
pub mod s3;
pub mod shutdown;
pub mod sign;
pub mod sync;
pub mod telemetry;
pub mod trail;

pub use contract::{ActionRecord, Activity, Alert};
pub use error::Error;
pub use failure::{Failure, Poison};
pub use raw_json::RawJson;
