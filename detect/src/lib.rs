//! Trailguard detect: consumes activities, evaluates the policies, publishes alerts.
//!
//! The modules, bottom up (each uses only those above it in this list):
//! - [`policy`] — the kernel every policy shares: [`policy::PolicyMeta`], the one alert builder,
//!   who acted, allow-lists, MITRE references, action targets, offsets and the watermark rule;
//! - [`classify`] — what a call is: a write, a data event, interactive, acting itself, and the
//!   units each rate counts;
//! - [`fold`] — folding repeats of an event-driven alert into one;
//! - the policies, one module each, pure: [`cloudtrail`], [`bucket_public`], [`bucket_shared`], [`templates`],
//!   [`risky_signin`], [`signin`], [`custom`], [`facts`] (organization-wide facts: terminated
//!   users, regions in use) and [`anomaly`] (per-actor baselines, one file per detection
//!   family);
//! - [`config`] — every policy's settings gathered into `[policies]`;
//! - [`detector`] (pure) — the per-partition state machine that runs them all: windows on
//!   event time, baselines, and the offset that is safe to commit;
//! - [`state`] — baselines to and from the changelog; [`enrich`] — geolocation and IP
//!   intelligence; [`ocsf`] — alerts as OCSF Detection Findings;
//! - [`run`] — the Kafka loop: consume, evaluate, publish alerts, and only then store offsets.
//!
//! A new policy that judges each activity alone is one new module beside the others (an
//! [`policy::EventPolicy`]) with its settings a field of [`config::PoliciesConfig`] and one line
//! in [`config::PoliciesConfig::event_policies`]; a new anomaly detection is one file in
//! `anomaly/` and one line in `Anomalies::observe`.

pub mod anomaly;
pub mod backtest;
pub mod bucket_public;
pub mod bucket_shared;
pub mod census;
pub mod classify;
pub mod cloudtrail;
pub mod config;
pub mod custom;
pub mod detector;
pub mod enrich;
pub mod exposure;
pub mod facts;
pub mod fold;
pub mod network;
pub mod ocsf;
pub mod policy;
pub mod risky_signin;
mod runner;
pub mod sigma;
pub mod signin;
pub mod state;
pub mod tactics;
pub mod templates;
pub mod trail_coverage;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use trailguard_common::config::{AdminConfig, KafkaConfig, LogConfig};

pub use runner::{decode, offline_enricher, run, Metrics};

/// Everything detect can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Admin endpoint (`/metrics`, `/healthz`).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// Consumer group and time handling.
    pub detect: DetectSettings,
    /// Policy settings.
    pub policies: config::PoliciesConfig,
    /// Geolocation databases.
    pub geo: enrich::GeoConfig,
    /// IP intelligence lists.
    pub intel: enrich::IntelConfig,
    /// The key alerts are signed with (remediate acts only on signed alerts).
    pub signing: trailguard_common::sign::SigningConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            kafka: KafkaConfig::default(),
            admin: AdminConfig::on_port(9102),
            log: LogConfig::default(),
            detect: DetectSettings::default(),
            policies: config::PoliciesConfig::default(),
            geo: enrich::GeoConfig::default(),
            intel: enrich::IntelConfig::default(),
            signing: trailguard_common::sign::SigningConfig::default(),
        }
    }
}

impl DetectConfig {
    /// Checks cross-field rules; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        self.kafka.validate()?;
        if self.detect.group_id.trim().is_empty() {
            return Err(trailguard_common::Error::config(
                "detect.group_id",
                "must not be empty",
            ));
        }
        if self.detect.allowed_lateness > Duration::from_secs(7 * 86_400) {
            return Err(trailguard_common::Error::config(
                "detect.allowed_lateness",
                "must be at most 7 days",
            ));
        }
        self.intel.validate()?;
        self.signing.validate()?;
        self.policies.validate()
    }
}

/// Consumer group and time handling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSettings {
    /// Consumer group; instances in one group split the activities partitions.
    pub group_id: String,
    /// How late (in event time) an activity may arrive and still count in its window.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How long shutdown may take to finish in-flight work.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            group_id: "trailguard-detect".into(),
            allowed_lateness: Duration::from_secs(5 * 60),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Errors that stop detect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or Kafka plumbing.
    #[error(transparent)]
    Common(#[from] trailguard_common::Error),
    /// A Kafka error in the processing loop.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Processing stopped without advancing past an input it could not make durable.
    #[error("stopped: {0}")]
    Stopped(String),
    /// Metrics registration.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[cfg(test)]
mod config_sections {
    #[test]
    fn sections_are_known() {
        let unknown = trailguard_common::config::unknown_sections(&super::DetectConfig::default());
        assert!(unknown.is_empty(), "add {unknown:?} to ALL_SECTIONS");
    }
}
