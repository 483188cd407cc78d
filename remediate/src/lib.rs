//! Trailguard remediate: consumes alerts, decides each requested governance action
//! ([`plan`]), applies it in its mode, and records every decision on the actions topic.
//!
//! - [`plan`] (pure): modes, protections, and the changes "make bucket private" needs.
//! - [`bucket`]: the S3 side of "make bucket private".
//! - [`run`]: the Kafka loop — never acts twice on one alert, across restarts (it reads back
//!   the actions topic at start).

pub mod bucket;
pub mod plan;
mod runner;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trailguard_common::aws::AwsConfig;
use trailguard_common::config::{AdminConfig, KafkaConfig, LogConfig};
use trailguard_common::contract::{ActionKind, Mode};

pub use runner::{run, Metrics};

/// Everything remediate can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediateConfig {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Admin endpoint (`/metrics`, `/healthz`).
    pub admin: AdminConfig,
    /// Logging.
    pub log: LogConfig,
    /// AWS access.
    pub aws: AwsConfig,
    /// Modes and protections.
    pub remediate: RemediateSettings,
}

impl Default for RemediateConfig {
    fn default() -> Self {
        RemediateConfig {
            kafka: KafkaConfig::default(),
            admin: AdminConfig::on_port(9103),
            log: LogConfig::default(),
            aws: AwsConfig::default(),
            remediate: RemediateSettings::default(),
        }
    }
}

impl RemediateConfig {
    /// Checks cross-field rules; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        self.kafka.validate()?;
        if self.remediate.group_id.trim().is_empty() {
            return Err(trailguard_common::Error::config(
                "remediate.group_id",
                "must not be empty",
            ));
        }
        self.aws.validate()
    }
}

/// Modes per policy and action, and what is never touched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemediateSettings {
    /// Consumer group; instances in one group split the alerts partitions.
    pub group_id: String,
    /// Mode of every action no policy entry names: `off`, `dry-run` or `auto`.
    pub default_mode: Mode,
    /// Per policy id: a mode for all its actions and/or per action kind.
    pub policies: BTreeMap<String, PolicyModes>,
    /// Buckets never touched, whatever an alert asks (`*` matches any run of characters).
    pub protected_buckets: Vec<String>,
    /// How long shutdown may take to finish in-flight work.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for RemediateSettings {
    fn default() -> Self {
        RemediateSettings {
            group_id: "trailguard-remediate".into(),
            default_mode: Mode::DryRun,
            policies: BTreeMap::new(),
            protected_buckets: Vec::new(),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

impl RemediateSettings {
    /// The mode of `kind` for alerts of `policy_id`: the action's own entry, else the policy's,
    /// else the default.
    pub fn mode_for(&self, policy_id: &str, kind: ActionKind) -> Mode {
        let policy = self.policies.get(policy_id);
        policy
            .and_then(|p| p.actions.get(&kind).copied())
            .or_else(|| policy.and_then(|p| p.mode))
            .unwrap_or(self.default_mode)
    }
}

/// Modes of one policy's actions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyModes {
    /// Mode of every action of this policy.
    pub mode: Option<Mode>,
    /// Mode per action kind (`make_bucket_private = "auto"`), over `mode`.
    pub actions: BTreeMap<ActionKind, Mode>,
}

/// Errors that stop remediate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or Kafka plumbing.
    #[error(transparent)]
    Common(#[from] trailguard_common::Error),
    /// A Kafka error in the processing loop.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Metrics registration.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Stopped before a decision could be recorded.
    #[error("stopped: {0}")]
    Stopped(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_resolution() {
        let mut s = RemediateSettings::default();
        assert_eq!(s.mode_for("p", ActionKind::MakeBucketPrivate), Mode::DryRun);
        s.policies.insert(
            "p".into(),
            PolicyModes {
                mode: Some(Mode::Auto),
                actions: BTreeMap::new(),
            },
        );
        assert_eq!(s.mode_for("p", ActionKind::MakeBucketPrivate), Mode::Auto);
        if let Some(p) = s.policies.get_mut("p") {
            p.actions.insert(ActionKind::MakeBucketPrivate, Mode::Off);
        }
        assert_eq!(s.mode_for("p", ActionKind::MakeBucketPrivate), Mode::Off);
        assert_eq!(s.mode_for("p", ActionKind::Notify), Mode::Auto);
    }
}

#[cfg(test)]
mod config_sections {
    #[test]
    fn sections_are_known() {
        let unknown =
            trailguard_common::config::unknown_sections(&super::RemediateConfig::default());
        assert!(unknown.is_empty(), "add {unknown:?} to ALL_SECTIONS");
    }
}
