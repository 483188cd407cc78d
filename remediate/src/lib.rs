//! Trailguard remediate: consumes alerts, verifies their signatures, decides each requested
//! governance action ([`plan`]), applies it in its mode, and records every decision on the
//! actions topic.
//!
//! - [`identity`] (pure): who an action is about, parsed from an ARN.
//! - [`plan`] (pure): modes, protections, rate limits, and the changes the bucket actions need;
//!   it reaches no AWS client.
//! - [`bucket`]: make a bucket private, remove a collaborator, and their undo (S3).
//! - [`iam`]: require sign-in again, suspend a user, and their undo (IAM).
//! - [`share`]: take back a share of a snapshot or an AMI, and its undo (EC2, RDS).
//! - [`notify`]: webhooks, Slack, SNS.
//! - [`intent`]: the write-ahead of an action's prior state, before its first change.
//! - [`run`]: the Kafka loop — never acts twice on one alert, across restarts and instances
//!   (it reads back the actions topic on every assignment); [`undo`] reverses one action.

pub mod bucket;
pub mod iam;
pub mod identity;
pub mod intent;
pub mod notify;
pub mod plan;
mod runner;
pub mod share;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trailguard_common::aws::AwsConfig;
use trailguard_common::config::{AdminConfig, KafkaConfig, LogConfig};
use trailguard_common::contract::{ActionKind, Mode};

pub use runner::{run, undo, Metrics};

/// What a bucket or identity action did (or, in dry-run, would do).
#[derive(Debug, Clone, PartialEq)]
pub struct ActionResult {
    /// Applied, already compliant, dry-run, refused or failed.
    pub outcome: trailguard_common::contract::ActionOutcome,
    /// A sentence for the action record.
    pub detail: String,
    /// Each change made (or that would be made).
    pub steps: Vec<trailguard_common::contract::ActionStep>,
    /// Prior state of what was changed.
    pub undo: Option<serde_json::Value>,
    /// A failure that trying again later may mend (throttling, 5xx, a timeout).
    pub retryable: bool,
}

impl ActionResult {
    /// A failed action: what went wrong, the changes made before it, the prior state if read.
    pub fn failed(
        why: ActionError,
        steps: Vec<trailguard_common::contract::ActionStep>,
        undo: Option<serde_json::Value>,
    ) -> ActionResult {
        ActionResult {
            outcome: trailguard_common::contract::ActionOutcome::Failed,
            retryable: why.retryable(),
            detail: why.to_string(),
            steps,
            undo,
        }
    }
}

/// Why a bucket or identity action failed: an AWS call, or a refusal before any call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// An AWS call failed; retryable as the call's error says.
    #[error(transparent)]
    Call(#[from] trailguard_common::aws::CallError),
    /// The prior state could not be recorded before the first change, so nothing was changed;
    /// retryable (the broker may be back by then).
    #[error("{}", crate::intent::NOT_RECORDED)]
    NotRecorded,
    /// The action does not apply to what it was given (the root user, a role where a user is
    /// needed, undo data that names something else): trying again cannot mend it.
    #[error("{0}")]
    Refused(String),
}

impl ActionError {
    /// Whether trying again later may mend it.
    pub fn retryable(&self) -> bool {
        match self {
            ActionError::Call(err) => err.retryable,
            ActionError::NotRecorded => true,
            ActionError::Refused(_) => false,
        }
    }

    /// Whether an AWS call failed with the service's `code`.
    pub fn is(&self, code: &str) -> bool {
        matches!(self, ActionError::Call(err) if err.is(code))
    }

    /// The same failure, with `note` added to what it says.
    pub fn noting(self, note: &str) -> ActionError {
        match self {
            ActionError::Call(err) => ActionError::Call(err.noting(note)),
            ActionError::Refused(why) => ActionError::Refused(why + note),
            ActionError::NotRecorded => ActionError::NotRecorded,
        }
    }
}

impl From<&str> for ActionError {
    fn from(why: &str) -> Self {
        ActionError::Refused(why.to_string())
    }
}

impl From<String> for ActionError {
    fn from(why: String) -> Self {
        ActionError::Refused(why)
    }
}

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
    /// Keys alerts must be signed with.
    pub signing: trailguard_common::sign::SigningConfig,
    /// Notification channels.
    pub notify: notify::NotifyConfig,
}

impl Default for RemediateConfig {
    fn default() -> Self {
        RemediateConfig {
            kafka: KafkaConfig::default(),
            admin: AdminConfig::on_port(9103),
            log: LogConfig::default(),
            aws: AwsConfig::default(),
            remediate: RemediateSettings::default(),
            signing: trailguard_common::sign::SigningConfig::default(),
            notify: notify::NotifyConfig::default(),
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
        if self.remediate.max_alert_age > Duration::from_secs(10 * 365 * 86_400) {
            return Err(trailguard_common::Error::config(
                "remediate.max_alert_age",
                "must be at most 10 years (zero: no limit)",
            ));
        }
        let retry = &self.remediate.retry;
        if retry.attempts == 0 || retry.attempts > 20 {
            return Err(trailguard_common::Error::config(
                "remediate.retry.attempts",
                "must be between 1 and 20",
            ));
        }
        if retry.backoff.is_zero() || retry.max_backoff < retry.backoff {
            return Err(trailguard_common::Error::config(
                "remediate.retry.max_backoff",
                "must be at least remediate.retry.backoff, which must be longer than zero",
            ));
        }
        // Tries in a row hold the consumer: all of them must fit well inside librdkafka's
        // max.poll.interval.ms (5 minutes by default).
        if retry.max_backoff.saturating_mul(retry.attempts) > Duration::from_secs(180) {
            return Err(trailguard_common::Error::config(
                "remediate.retry.max_backoff",
                "times remediate.retry.attempts must be at most 3 minutes: longer waits go in remediate.retry.later",
            ));
        }
        if retry.later.is_zero() {
            return Err(trailguard_common::Error::config(
                "remediate.retry.later",
                "must be longer than zero",
            ));
        }
        for (kind, limit) in &self.remediate.rate_limits {
            if limit.per.is_zero() {
                return Err(trailguard_common::Error::config(
                    &format!("remediate.rate_limits.{}.per", kind.as_str()),
                    "must be longer than zero",
                ));
            }
        }
        self.signing.validate()?;
        if self.signing.required && self.signing.verifier().has_no_keys() {
            return Err(trailguard_common::Error::config(
                "signing.keys",
                "signed alerts are required but no key is configured: set signing.keys \
                 (TRAILGUARD_SIGNING__KEYS__<ID>) to detect's key, or signing.required = false",
            ));
        }
        if self.signing.verifier().authenticates_records() && self.signing.signer().is_none() {
            return Err(trailguard_common::Error::config(
                "signing.key",
                "remediate signs its action records (the record of what it did, read back to \
                 never act twice and to undo) with signing.key_id / signing.key \
                 (TRAILGUARD_SIGNING__KEY_ID, TRAILGUARD_SIGNING__KEY); it may be detect's key",
            ));
        }
        self.notify.validate()?;
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
    /// Mode of `notify` where no policy entry names it (not destructive: `auto`).
    pub notify_mode: Mode,
    /// Buckets never touched, whatever an alert asks (`*` matches any run of characters;
    /// case-insensitive).
    pub protected_buckets: Vec<String>,
    /// Principals never touched, besides the built-in ones (every account's root user,
    /// remediate's own identity, the role in `aws.role_arn_template` in every account, and roles
    /// named `trailguard-*` in the home accounts). An entry starting with `arn:` is an ARN
    /// pattern (`*` wildcards; the account is part of it: `arn:aws:iam::*:user/break-glass`
    /// means every account); any other entry is a name (`break-glass`, `role/ops-*`,
    /// `user/ci`) and protects only in the home accounts: the credentials' own account and
    /// `aws.accounts`. Case-insensitive, as IAM names are.
    pub protected_principals: Vec<String>,
    /// Snapshots and images never unshared, whatever an alert asks: patterns (`*` wildcards,
    /// case-insensitive) matched against the resource's id (`snap-…`, `ami-…`, an RDS
    /// snapshot's name) and its ARN, e.g. the AMIs a team publishes on purpose.
    pub protected_resources: Vec<String>,
    /// At most `max` actions of a kind per `per` in each target account (`max = 0`: no limit),
    /// counted from the action records, so shared by every instance and kept across restarts.
    /// Beyond it, see `when_rate_limited`.
    pub rate_limits: BTreeMap<ActionKind, RateLimit>,
    /// An action beyond its rate limit: `escalate` (default) refuses it with a record and sends
    /// the alert to the default notification channels saying so, so a person decides; `wait`
    /// keeps it pending until the budget frees up, then acts.
    pub when_rate_limited: WhenRateLimited,
    /// Trying again after failures that may mend (throttling, 5xx, timeouts, STS).
    pub retry: RetrySettings,
    /// How long shutdown may take to finish in-flight work.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `suspend_user` also deletes the console password (default false). Irreversible: IAM
    /// never reveals a password, so undo cannot put it back and an administrator sets a new
    /// one. Without it the deny-all policy already stops every console action.
    pub suspend_deletes_console_password: bool,
    /// Alerts older than this (by their event time, the latest repeat folded in) are refused
    /// with a record, never acted on: a captured alert replayed later does nothing. It must be
    /// shorter than the actions topic's retention (checked at start-up), which is how long the
    /// record of answered alerts lasts. Zero: no limit (replaying old trails, as the demo does).
    #[serde(with = "humantime_serde")]
    pub max_alert_age: Duration,
    /// At most this many `rejected` records per minute (forged or unsigned alerts); beyond,
    /// rejections are only counted and logged, so a flood of forgeries cannot grow the actions
    /// topic or delay genuine alerts behind its writes. Zero: no records at all.
    pub max_rejection_records_per_minute: u32,
}

impl Default for RemediateSettings {
    fn default() -> Self {
        RemediateSettings {
            group_id: "trailguard-remediate".into(),
            default_mode: Mode::DryRun,
            policies: BTreeMap::new(),
            notify_mode: Mode::Auto,
            protected_buckets: Vec::new(),
            protected_principals: Vec::new(),
            protected_resources: Vec::new(),
            rate_limits: [
                (ActionKind::SuspendUser, RateLimit::per_hour(5)),
                (ActionKind::RequireSignIn, RateLimit::per_hour(20)),
                (ActionKind::MakeBucketPrivate, RateLimit::per_hour(50)),
                (ActionKind::RemoveCollaborator, RateLimit::per_hour(50)),
                (ActionKind::UnshareSnapshot, RateLimit::per_hour(50)),
                (ActionKind::UnshareImage, RateLimit::per_hour(50)),
            ]
            .into(),
            when_rate_limited: WhenRateLimited::Escalate,
            retry: RetrySettings::default(),
            drain_timeout: Duration::from_secs(20),
            suspend_deletes_console_password: false,
            max_alert_age: Duration::from_secs(24 * 3600),
            max_rejection_records_per_minute: 60,
        }
    }
}

impl RemediateSettings {
    /// The mode of `kind` for alerts of `policy_id`: the action's own entry, else the policy's,
    /// else the default.
    pub fn mode_for(&self, policy_id: &str, kind: ActionKind) -> Mode {
        let policy = self.policies.get(policy_id);
        let fallback = if kind == ActionKind::Notify {
            self.notify_mode
        } else {
            self.default_mode
        };
        policy
            .and_then(|p| p.actions.get(&kind).copied())
            .or_else(|| policy.and_then(|p| p.mode))
            .unwrap_or(fallback)
    }
}

/// A rate limit of one action kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Actions allowed per window (0: unlimited).
    pub max: u32,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl RateLimit {
    /// `max` per hour.
    pub fn per_hour(max: u32) -> Self {
        RateLimit {
            max,
            per: Duration::from_secs(3600),
        }
    }
}

/// What happens to an action beyond its rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenRateLimited {
    /// Refuse it with a record, and send the alert to the default notification channels.
    Escalate,
    /// Keep it pending (its alert uncommitted) until the budget frees up, then act.
    Wait,
}

/// How actions that fail for a reason that may mend are tried again. A failure is retryable by
/// its AWS error code, HTTP status (5xx, 429) or kind (timeout, connection, credentials);
/// anything else is final at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Tries in a row, the first included, with `backoff` doubling up to `max_backoff` between.
    pub attempts: u32,
    /// Wait before the second try.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest wait between tries in a row.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// After the tries in a row fail, the action is recorded `failed` with `retryable: true`
    /// (not final), its alert stays uncommitted, and it is tried again this much later…
    #[serde(with = "humantime_serde")]
    pub later: Duration,
    /// …until this long after its first try; then the failure is final.
    #[serde(with = "humantime_serde")]
    pub give_up_after: Duration,
    /// Actions kept pending (retrying or waiting for a rate limit) at most; beyond, a failure is
    /// final at once and a rate-limited action is escalated.
    pub max_pending: usize,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            attempts: 4,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            later: Duration::from_secs(300),
            give_up_after: Duration::from_secs(3600),
            max_pending: 10_000,
        }
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
    /// An undo that cannot be done.
    #[error("undo: {0}")]
    Undo(String),
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
        assert_eq!(s.mode_for("other", ActionKind::Notify), Mode::Auto);
        assert_eq!(s.mode_for("other", ActionKind::SuspendUser), Mode::DryRun);
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
