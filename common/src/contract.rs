//! The wire contract: what flows on Trailguard's topics.
//!
//! Every message is JSON — but for activities when ingest writes them in the compact encoding
//! ([`crate::compact`], docs/wire.md). Each type carries a `schema_version`; consumers accept
//! every version up to the one they were built with. Changes that only add optional fields keep
//! the version; any other change bumps it. Any field added to `Activity` (optional or not) also
//! changes the compact layout: its `FORMAT` goes up, and detect is upgraded before ingest. The JSON Schemas in `schemas/` are generated from these types
//! (`cargo run -p trailguard-common --bin gen-schemas`) and a test fails when they drift.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::actor::{Actor, ActorKind};
pub use crate::raw_json::RawJson;

/// Version of [`Activity`] this build writes.
pub const ACTIVITY_SCHEMA_VERSION: u32 = 2;
/// Version of [`Alert`] this build writes.
pub const ALERT_SCHEMA_VERSION: u32 = 1;
/// Version of [`ActionRecord`] this build writes.
pub const ACTION_SCHEMA_VERSION: u32 = 2;

/// The `kind` of entities, action targets and resources Trailguard names, and the principal
/// kind of its own activities: one spelling for every crate.
pub mod kinds {
    /// An IAM principal (entity, target).
    pub const PRINCIPAL: &str = "principal";
    /// An S3 bucket (entity, target, resource).
    pub const S3_BUCKET: &str = "s3-bucket";
    /// The security team `notify` reaches (target).
    pub const SECURITY_TEAM: &str = "security-team";
    /// A source address (entity).
    pub const SOURCE_IP: &str = "source-ip";
    /// An AWS account (entity).
    pub const AWS_ACCOUNT: &str = "aws-account";
    /// A CloudTrail trail (entity, resource).
    pub const CLOUDTRAIL_TRAIL: &str = "cloudtrail-trail";
    /// An EBS snapshot (entity).
    pub const EBS_SNAPSHOT: &str = "ebs-snapshot";
    /// An Amazon Machine Image (entity).
    pub const AMI: &str = "ami";
    /// An RDS DB or cluster snapshot (entity).
    pub const RDS_SNAPSHOT: &str = "rds-snapshot";
    /// An AWS service in an account and region, `SERVICE in ACCOUNT/REGION` (entity): a
    /// defence switched off when CloudTrail names no resource of it.
    pub const AWS_SERVICE: &str = "aws-service";
    /// `Principal.kind` of the activities Trailguard itself publishes (inventory snapshots):
    /// no baseline, watermark or fact is learned from them.
    pub const TRAILGUARD: &str = "Trailguard";
}

/// `eventSource` of the activities ingest's posture inventory publishes.
pub const INVENTORY_SOURCE: &str = "inventory.trailguard";
/// `eventName` of an inventory snapshot of one S3 bucket.
pub const BUCKET_SNAPSHOT: &str = "BucketSnapshot";
/// `eventName` of an inventory snapshot of one account's CloudTrail trails.
pub const TRAIL_SNAPSHOT: &str = "TrailSnapshot";

/// One normalized CloudTrail record.
///
/// Published on the activities topic, keyed by the [`Actor`]'s id, so every activity of one
/// actor lands on one partition and meets the detector state kept for that actor.
///
/// Version 2 added `actor`; readers resolve it for version 1 with [`Actor::of`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Activity {
    /// Version of this structure; see [`ACTIVITY_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Stable identifier derived from several fields of the record (CloudTrail's `eventID` alone
    /// is not unique in real data). The same record always yields the same id.
    pub id: String,
    /// CloudTrail's own `eventID`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// When the event happened (CloudTrail `eventTime`), UTC.
    #[serde(deserialize_with = "event_time::deserialize")]
    pub event_time: DateTime<Utc>,
    /// AWS service that recorded the event, e.g. `s3.amazonaws.com`.
    pub event_source: String,
    /// API or console action, e.g. `PutBucketAcl`, `ConsoleLogin`.
    pub event_name: String,
    /// CloudTrail `eventType` (`AwsApiCall`, `AwsConsoleSignIn`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Account that received the event (`recipientAccountId`, else the principal's account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// AWS region (`awsRegion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// AWS partition (`aws`, `aws-cn`, `aws-us-gov`), from the principal ARN or the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// Who acted.
    pub principal: Principal,
    /// Who acted, as a person or workload rather than a credential (see [`crate::actor`]): the
    /// key of baselines and of the activities topic. Empty in schema version 1.
    #[serde(default, skip_serializing_if = "Actor::is_empty")]
    pub actor: Actor,
    /// `sourceIPAddress` when it is an IP address (leading-zero IPv4 accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub source_ip: Option<IpAddr>,
    /// `sourceIPAddress` when it is not an IP: a service host name or `AWS Internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_host: Option<String>,
    /// `userAgent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `readOnly`, when CloudTrail says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// A data or network-activity event, as CloudTrail says (`eventCategory` `Data` or
    /// `NetworkActivity`, or `managementEvent: false`): an object read or written, a message
    /// published, not a change to the account. False (and absent) for management events and
    /// for records that do not say.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_event: bool,
    /// Whether the action succeeded.
    pub outcome: Outcome,
    /// Resources the event touched (bucket names, instance ids, ARNs, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Resource>,
    /// `requestID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// `requestParameters`, as CloudTrail wrote it: the JSON text is published exactly as read
    /// (key order and spacing kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_parameters: Option<RawJson>,
    /// `responseElements`, as CloudTrail wrote it: the JSON text is published exactly as read
    /// (key order and spacing kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_elements: Option<RawJson>,
    /// `additionalEventData`, as CloudTrail wrote it: the JSON text is published exactly as read
    /// (key order and spacing kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<RawJson>,
    /// Filled by detect: geo location and IP reputation of `source_ip`.
    // Shared: detect hands every activity from one address the same one (cloning it was
    // ≈ 3 % of detect's instructions); changed with `Activity::enrichment_mut`. Read and
    // written as the enrichment itself (serde's `rc` feature would rebuild every crate that
    // uses serde for this one field).
    #[serde(
        default,
        skip_serializing_if = "Enrichment::is_empty",
        serialize_with = "shared::serialize",
        deserialize_with = "shared::deserialize"
    )]
    #[schemars(with = "Enrichment")]
    pub enrichment: std::sync::Arc<Enrichment>,
    /// What ingest shortened because the activity was too large to publish whole, e.g.
    /// `responseElements: scalars only` or `responseElements: removed`; empty when whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trimmed: Vec<String>,
}

/// An activity's time, read for every activity detect decodes: chrono's RFC 3339 parser
/// first (what Trailguard writes), else what chrono's own reading accepts — the same values
/// and errors, without its general format parser for the usual case (that parser was ≈ 2 %
/// of the detect service's thread under `perf`).
mod event_time {
    use chrono::{DateTime, Utc};
    use serde::de::{Deserializer, Error, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        struct Time;
        impl Visitor<'_> for Time {
            type Value = DateTime<Utc>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an RFC 3339 date and time")
            }

            fn visit_str<E: Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
                match DateTime::parse_from_rfc3339(text) {
                    Ok(t) => Ok(t.to_utc()),
                    Err(_) => text.parse::<DateTime<Utc>>().map_err(E::custom),
                }
            }
        }
        d.deserialize_str(Time)
    }
}

/// An `Arc`'d value read and written as the value.
mod shared {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    pub fn serialize<T: Serialize, S: Serializer>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
        T::serialize(v, s)
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<T>, D::Error> {
        T::deserialize(d).map(Arc::new)
    }
}

impl Activity {
    /// The enrichment, to change: this activity's own copy of it.
    pub fn enrichment_mut(&mut self) -> &mut Enrichment {
        std::sync::Arc::make_mut(&mut self.enrichment)
    }

    /// The key of the actor's state and of the activities topic: the actor's id, or for an
    /// activity of schema version 1 (no actor) the one [`Actor::of`] its principal gives.
    pub fn actor_key(&self) -> std::borrow::Cow<'_, str> {
        if self.actor.is_empty() {
            std::borrow::Cow::Owned(Actor::of_in(&self.principal, self.partition.as_deref()).id)
        } else {
            std::borrow::Cow::Borrowed(&self.actor.id)
        }
    }
}

/// The identity behind an activity (CloudTrail `userIdentity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    /// `userIdentity.type`: `Root`, `IAMUser`, `AssumedRole`, `FederatedUser`, `AWSService`,
    /// `AWSAccount`, `IdentityCenterUser`, ... or `Unknown` when the record has none.
    #[serde(rename = "type")]
    pub kind: String,
    /// `userIdentity.arn` (empty ARNs, as Identity Center writes them, become absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// User, role or session name: `userName`, else the last ARN segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `userIdentity.accountId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// `userIdentity.principalId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    /// `userIdentity.accessKeyId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// For role sessions: the ARN of the role that issued the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_issuer_arn: Option<String>,
    /// `sessionContext.attributes.mfaAuthenticated`, or `MFAUsed` of a console sign-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_authenticated: Option<bool>,
    /// `invokedBy`, when an AWS service acted on the principal's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// `sessionContext.sourceIdentity`: the person a role session was started for, as the
    /// identity provider or the first caller set it (kept through role chaining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    /// `onBehalfOf.userId`: the Identity Center user an `IdentityCenterUser` acted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// True for the account root user.
    pub is_root: bool,
}

impl Principal {
    /// The partition key of every activity and the key of per-principal state: the ARN when
    /// there is one, otherwise the best stable combination of account, type and name.
    pub fn key(&self) -> String {
        if let Some(arn) = &self.arn {
            return arn.clone();
        }
        let account = self.account_id.as_deref().unwrap_or("-");
        match (&self.name, &self.principal_id) {
            (Some(name), _) => format!("{account}/{}/{name}", self.kind),
            (None, Some(id)) => format!("{account}/{}/{id}", self.kind),
            (None, None) => format!("{account}/{}", self.kind),
        }
    }

    /// A short human form: the name, else the ARN, else the key.
    pub fn display(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.arn.clone())
            .unwrap_or_else(|| self.key())
    }
}

/// Whether the recorded action succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Outcome {
    /// `success` or `failure`.
    pub status: OutcomeStatus,
    /// `errorCode`, when the call failed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `errorMessage`, or `Failed authentication` for failed console sign-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
}

/// Success or failure of an activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The call (or sign-in) succeeded.
    Success,
    /// The call failed (an `errorCode`) or the console sign-in said `Failure`.
    Failure,
}

impl Outcome {
    /// True when the activity succeeded.
    pub fn is_success(&self) -> bool {
        self.status == OutcomeStatus::Success
    }
}

/// A resource an activity touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Resource {
    /// What it is: `s3-bucket`, `ec2-instance`, `cloudtrail-trail`, `iam-user`, `iam-role`,
    /// `iam-policy`, `security-group`, `arn`, ...
    pub kind: String,
    /// Its name, id or ARN.
    pub id: String,
}

/// Enrichment detect adds to an activity before policies see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Enrichment {
    /// Where `source_ip` is, from the configured MMDB database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<Geo>,
    /// Categories of IP-intelligence lists `source_ip` is on (`tor`, `vpn`, `malicious`, ...),
    /// and those its network puts it in (`hosting`, `risky-network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_categories: Vec<String>,
    /// The autonomous system `source_ip` belongs to, from the configured AS database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
}

impl Enrichment {
    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.geo.is_none() && self.ip_categories.is_empty() && self.network.is_none()
    }
}

/// An autonomous system: the network an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Network {
    /// Its AS number.
    pub asn: u32,
    /// The organization that runs it, when the database names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// A geo location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Geo {
    /// ISO 3166-1 alpha-2 country code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// City name, when the database has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// Latitude in degrees (absent in country-only databases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latitude: Option<f64>,
    /// Longitude in degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longitude: Option<f64>,
    /// How far off the location may be, in km, when the database says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_radius_km: Option<u32>,
}

/// A finding raised by detect, published on the alerts topic keyed by [`Alert::entity`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Alert {
    /// Version of this structure; see [`ALERT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Stable id derived from the policy and the evidence: a replay raises the same id, so
    /// consumers de-duplicate on it.
    pub id: String,
    /// Policy that raised it, e.g. `s3-bucket-public`.
    pub policy_id: String,
    /// Human name of the policy.
    pub policy_name: String,
    /// What kind of policy raised it.
    pub kind: AlertKind,
    /// How bad it is.
    pub severity: Severity,
    /// Event time of the activity that completed the evidence.
    pub time: DateTime<Utc>,
    /// What the alert is about (a bucket, a principal, a source IP).
    pub entity: Entity,
    /// The acting principal, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// The actor behind the principal (see [`crate::actor`]), when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
    /// Account the activity happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Region the activity happened in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Why: the activities and a one-line summary a person can read.
    pub evidence: Evidence,
    /// MITRE ATT&CK mapping, where one fits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mitre: Vec<Mitre>,
    /// Governance actions the policy asks remediate to take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<RequestedAction>,
    /// How many times the policy matched this entity within its fold period, the first
    /// included. An alert whose repeats were folded in is published again with the same id
    /// when the period closes; the later record supersedes the earlier.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub occurrences: u64,
    /// Event time of the last repeat folded into this alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<DateTime<Utc>>,
    /// HMAC-SHA256 over the canonical alert (see `trailguard_common::sign`); remediate acts
    /// only on alerts signed with a key it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<AlertSignature>,
}

/// The signature of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AlertSignature {
    /// Which key signed it (keys rotate; the verifier holds several).
    pub key_id: String,
    /// Hex HMAC-SHA256 of the canonical alert without this member.
    pub hmac_sha256: String,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// The kinds of policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An activity policy (event-driven, optionally with a threshold over a window).
    ActivityPolicy,
    /// An anomaly against a learned baseline.
    Anomaly,
    /// A file (data) policy, e.g. a bucket is public.
    FilePolicy,
    /// A policy the user wrote in configuration.
    Custom,
}

/// Alert severity, ordered.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    Low,
    /// Worth a look.
    Medium,
    /// Act on it.
    High,
}

impl Severity {
    /// Lower-case name, for labels and display.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// The thing an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Entity {
    /// `s3-bucket`, `principal`, `source-ip`, `cloudtrail-trail`, ...
    pub kind: String,
    /// Its name or id.
    pub id: String,
}

/// The evidence of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Ids of the activities that make up the evidence, oldest first.
    pub activity_ids: Vec<String>,
    /// One line a person can read.
    pub summary: String,
}

/// A MITRE ATT&CK mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Mitre {
    /// Tactic name, e.g. `Defense Evasion`.
    pub tactic: String,
    /// Technique id, e.g. `T1562.008`.
    pub technique_id: String,
    /// Technique name.
    pub technique: String,
}

/// The governance actions remediate can take.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Block public access, reset the ACL to private, drop public bucket-policy statements.
    MakeBucketPrivate,
    /// Remove a grantee from a bucket's ACL and policy.
    RemoveCollaborator,
    /// Tell the security team or the user.
    Notify,
    /// Revoke active sessions.
    RequireSignIn,
    /// Deactivate keys, remove console access, deny all.
    SuspendUser,
    /// Tell the person the alert is about (their SNS topic, from a directory or a tag).
    NotifyUser,
    /// Take back a share of an EBS snapshot or an RDS (cluster) snapshot: remove the grantees
    /// (everyone, accounts) the alert names from its permissions.
    UnshareSnapshot,
    /// Take back a share of an AMI: remove the grantees (everyone, accounts, organizations or
    /// organizational units) the alert names from its launch permissions.
    UnshareImage,
}

impl ActionKind {
    /// Snake-case name, as on the wire; also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::MakeBucketPrivate => "make_bucket_private",
            ActionKind::RemoveCollaborator => "remove_collaborator",
            ActionKind::Notify => "notify",
            ActionKind::RequireSignIn => "require_sign_in",
            ActionKind::SuspendUser => "suspend_user",
            ActionKind::NotifyUser => "notify_user",
            ActionKind::UnshareSnapshot => "unshare_snapshot",
            ActionKind::UnshareImage => "unshare_image",
        }
    }
}

/// An action a policy asks for, with its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RequestedAction {
    /// What to do.
    pub kind: ActionKind,
    /// What to do it to.
    pub target: Target,
}

/// The target of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Target {
    /// `s3-bucket`, `iam-user`, `principal`, ...
    pub kind: String,
    /// Name, id or ARN.
    pub id: String,
    /// Account the target lives in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// For `remove_collaborator`: whom to remove — a principal ARN, an account id, a
    /// canonical user id or an e-mail grantee. For `unshare_snapshot` / `unshare_image`: the
    /// grantees to remove, comma-separated (`all`, account ids, organization or OU ARNs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee: Option<String>,
}

/// Audit record of one remediation decision, published on the actions topic. An action that
/// changes AWS has two records with one id: `started` (its prior state, written before the
/// first change) and then its end; keep the last. Version 2 added the `started` outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ActionRecord {
    /// Version of this structure; see [`ACTION_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Stable id: derived from the alert id, the action kind and the target.
    pub id: String,
    /// The alert this decision answers.
    pub alert_id: String,
    /// Policy that raised the alert.
    pub policy_id: String,
    /// Which action.
    pub kind: ActionKind,
    /// What it was applied to.
    pub target: Target,
    /// Mode the action ran in.
    pub mode: Mode,
    /// What happened.
    pub outcome: ActionOutcome,
    /// A sentence a person can read: what was (or would have been) done, or why not.
    pub detail: String,
    /// The changes, in order: each AWS call made (or, in dry-run, that would be made).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<ActionStep>,
    /// AWS request ids of the calls that changed something.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_request_ids: Vec<String>,
    /// When the decision was made (wall clock).
    pub time: DateTime<Utc>,
    /// What it takes to undo: the prior state of everything changed, as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Value>,
    /// Set on the record of an undo: the id of the action it undid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_of: Option<String>,
    /// On a `failed` record: the failure may mend (throttling, 5xx, a timeout), and the action
    /// will be tried again — the record is not final. Absent: final.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
    /// Tries so far, when more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// Mode of an action, per policy and action kind.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Do nothing (the decision is still recorded).
    Off,
    /// Record what would be done, change nothing.
    DryRun,
    /// Apply the action.
    Auto,
}

impl Mode {
    /// Kebab-case name, as on the wire and in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::DryRun => "dry-run",
            Mode::Auto => "auto",
        }
    }
}

/// What came of an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// Changes were made.
    Applied,
    /// The target already complied: nothing needed changing.
    AlreadyCompliant,
    /// Dry-run: `steps` lists what would have been done.
    DryRun,
    /// Mode `off` for this policy/action: nothing done.
    Skipped,
    /// The target is protected: refused.
    Refused,
    /// The action failed; `detail` says why.
    Failed,
    /// The alert was not authentic (unsigned, unknown key, forged or altered): never acted on.
    Rejected,
    /// Written ahead: the prior state (`undo`) and the planned `steps` are on record and the
    /// first change is about to be made. A later record with the same id says how the action
    /// ended; when none does, remediate stopped mid-action, and `remediate undo` restores the
    /// state from this record. Not an answer: the alert is taken up again.
    Started,
}

impl ActionOutcome {
    /// Snake-case name; also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Applied => "applied",
            ActionOutcome::AlreadyCompliant => "already_compliant",
            ActionOutcome::DryRun => "dry_run",
            ActionOutcome::Skipped => "skipped",
            ActionOutcome::Rejected => "rejected",
            ActionOutcome::Refused => "refused",
            ActionOutcome::Failed => "failed",
            ActionOutcome::Started => "started",
        }
    }
}

/// One AWS change of an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActionStep {
    /// The API call, e.g. `s3:PutPublicAccessBlock`.
    pub call: String,
    /// What it does, in words.
    pub description: String,
    /// AWS request id, when the call was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Kafka header names on dead-letter messages. The message value is the original bytes
/// (or, for an input too large for one message, a JSON pointer to it).
pub mod dlq_headers {
    /// Why the input was dead-lettered, in words.
    pub const REASON: &str = "trailguard.reason";
    /// Short, closed-set error kind (also a metric label).
    pub const ERROR_KIND: &str = "trailguard.error_kind";
    /// Where the input came from (file path, `stdin`, topic/partition/offset).
    pub const SOURCE: &str = "trailguard.source";
    /// Index of the record within its source (record number or line), when known.
    pub const INDEX: &str = "trailguard.index";
    /// Which service dead-lettered it.
    pub const STAGE: &str = "trailguard.stage";
    /// `true` when the value is a pointer rather than the original bytes.
    pub const POINTER: &str = "trailguard.pointer";
    /// For an input kept in parts (stdin larger than one message): this part's number, from 1.
    pub const PART: &str = "trailguard.part";
    /// For an input kept in parts: how many parts there are.
    pub const PARTS: &str = "trailguard.parts";
}

/// True for a 12-digit AWS account id.
pub fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// A stable, short id: the first 16 bytes of SHA-256 over the parts, hex-encoded. Parts are
/// separated so that `("ab", "c")` and `("a", "bc")` differ.
pub fn stable_id<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // Into a buffer: `hex::encode` builds the text a char at a time (a few percent of
    // normalizing a record).
    let mut text = [0u8; 32];
    match hex::encode_to_slice(&digest[..16], &mut text) {
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => hex::encode(&digest[..16]),
    }
}

/// The JSON Schemas of the wire contract, by file name, as committed under `schemas/`.
pub fn schemas() -> BTreeMap<&'static str, String> {
    fn render<T: JsonSchema>() -> String {
        let schema = schemars::schema_for!(T);
        // Serializing a schema (plain maps and strings) cannot fail.
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
    BTreeMap::from([
        ("activity.schema.json", render::<Activity>()),
        ("alert.schema.json", render::<Alert>()),
        ("action-record.schema.json", render::<ActionRecord>()),
    ])
}

/// `text` safe to print on a terminal: control characters (escape sequences, carriage returns,
/// line breaks) and invisible bidirectional or zero-width characters are escaped (`\u{1b}`),
/// so text taken from CloudTrail or a topic cannot rewrite what an operator sees.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    fn hidden(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    }
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The first 12 characters of an id (ids come from topics: never sliced by bytes).
fn short(id: &str) -> String {
    printable(&id.chars().take(12).collect::<String>()).into_owned()
}

impl std::fmt::Display for Alert {
    /// One line a person can read: severity, policy, entity and summary. Every text that came
    /// from a record is made [`printable`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ALERT  [{}] {} — {} {} — {} (at {}, id {})",
            self.severity.as_str().to_uppercase(),
            printable(&self.policy_name),
            printable(&self.entity.kind),
            printable(&self.entity.id),
            printable(&self.evidence.summary),
            self.time.format("%Y-%m-%d %H:%M:%SZ"),
            short(&self.id)
        )?;
        for action in &self.actions {
            write!(
                f,
                "\n       asks for: {} on {} {}",
                action.kind.as_str(),
                printable(&action.target.kind),
                printable(&action.target.id)
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ActionRecord {
    /// One line a person can read: outcome, action, target and detail. Every text that came
    /// from a record is made [`printable`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ACTION [{}] {} on {} {} (mode {}, alert {}) — {}",
            self.outcome.as_str().to_uppercase(),
            self.kind.as_str(),
            printable(&self.target.kind),
            printable(&self.target.id),
            self.mode.as_str(),
            short(&self.alert_id),
            printable(&self.detail)
        )?;
        for step in &self.steps {
            match &step.request_id {
                Some(id) => write!(
                    f,
                    "\n       {} — {} (request {})",
                    printable(&step.call),
                    printable(&step.description),
                    printable(id)
                )?,
                None => write!(
                    f,
                    "\n       {} — {}",
                    printable(&step.call),
                    printable(&step.description)
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activitys_time_reads_as_chrono_reads_it() {
        // What Trailguard writes, and what else chrono's own reading takes or refuses.
        for text in [
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.123456789Z",
            "2026-01-02T03:04:05+02:00",
            "2026-01-02t03:04:05z",
            "2026-01-02 03:04:05Z",
            "2026-01-02T03:04:05 +0200",
            "2026-12-31T23:59:60Z",
            "2026-01-02T03:04:05.1234567891234Z",
            "+262000-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-01-02T03:04:05",
            "2026-01-02",
            "",
            "yesterday",
        ] {
            let json = serde_json::json!(text).to_string();
            let chrono = serde_json::from_str::<DateTime<Utc>>(&json).map_err(|e| e.to_string());
            let ours = serde_json::from_str::<TimeOnly>(&format!("{{\"event_time\":{json}}}"))
                .map(|t| t.event_time)
                .map_err(|e| e.to_string());
            assert_eq!(
                ours.is_ok(),
                chrono.is_ok(),
                "{text}: {ours:?} / {chrono:?}"
            );
            if let (Ok(ours), Ok(chrono)) = (ours, chrono) {
                assert_eq!(ours, chrono, "{text}");
            }
        }
        // Not a string.
        assert!(serde_json::from_str::<TimeOnly>(r#"{"event_time":1700000000}"#).is_err());
    }

    /// The activity's time field alone.
    #[derive(Deserialize)]
    struct TimeOnly {
        #[serde(deserialize_with = "event_time::deserialize")]
        event_time: DateTime<Utc>,
    }

    #[test]
    fn an_activitys_shared_enrichment_is_read_and_written_as_itself(
    ) -> Result<(), serde_json::Error> {
        let text = r#"{"schema_version":2,"id":"a1","event_time":"2026-01-02T03:04:05Z",
            "event_source":"s3.amazonaws.com","event_name":"ListBuckets",
            "principal":{"type":"IAMUser","is_root":false},"outcome":{"status":"success"},
            "enrichment":{"geo":{"country":"DE","city":"Berlin","latitude":52.5,"longitude":13.4},
                "ip_categories":["vpn"],"network":{"asn":3320,"organization":"DTAG"}}}"#;
        let a: Activity = serde_json::from_str(text)?;
        assert_eq!(a.enrichment.ip_categories, ["vpn"]);
        assert_eq!(a.enrichment.network.as_ref().map(|n| n.asn), Some(3320));
        let written = serde_json::to_value(&a)?;
        let read: serde_json::Value = serde_json::from_str(text)?;
        assert_eq!(written["enrichment"], read["enrichment"]);
        assert_eq!(serde_json::from_value::<Activity>(written)?, a);
        // Empty: left out, and read back empty.
        let mut bare = a.clone();
        *bare.enrichment_mut() = Enrichment::default();
        let written = serde_json::to_value(&bare)?;
        assert!(written.get("enrichment").is_none());
        assert!(serde_json::from_value::<Activity>(written)?
            .enrichment
            .is_empty());
        // The copy changed, not the activity it was cloned from.
        assert!(!a.enrichment.is_empty());
        Ok(())
    }

    #[test]
    fn display_never_panics_and_escapes_terminal_control() -> Result<(), serde_json::Error> {
        let mut alert: Alert = serde_json::from_str(include_str!("../../tests/tests/alert.json"))?;
        // A multi-byte character across byte 12 of the id; an OSC title sequence and a fake
        // second line in the summary.
        alert.id = "aaaaaaaaaaa\u{e9}bbbb".into();
        alert.evidence.summary = "x\u{1b}]0;owned\u{7}\nALERT  [LOW] all clear\u{202e}".into();
        let text = alert.to_string();
        assert!(text.contains("id aaaaaaaaaaa\u{e9}"), "{text}");
        assert!(
            !text
                .chars()
                .any(|c| c == '\u{1b}' || c == '\u{7}' || c == '\u{202e}'),
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ALERT")).count(),
            1,
            "{text}"
        );
        let record = ActionRecord {
            schema_version: ACTION_SCHEMA_VERSION,
            id: "r".into(),
            alert_id: alert.id.clone(),
            policy_id: "p".into(),
            kind: ActionKind::Notify,
            target: alert.actions[0].target.clone(),
            mode: Mode::Auto,
            outcome: ActionOutcome::Rejected,
            detail: "\u{1b}[2J".into(),
            steps: Vec::new(),
            aws_request_ids: Vec::new(),
            time: alert.time,
            undo: None,
            undo_of: None,
            retryable: false,
            attempts: None,
        };
        let text = record.to_string();
        assert!(
            text.contains("alert aaaaaaaaaaa\u{e9}") && !text.contains('\u{1b}'),
            "{text}"
        );
        Ok(())
    }

    #[test]
    fn stable_id_separates_parts() {
        assert_ne!(stable_id(["ab", "c"]), stable_id(["a", "bc"]));
        assert_eq!(stable_id(["x", "y"]), stable_id(["x", "y"]));
        assert_eq!(stable_id(["x"]).len(), 32);
    }

    #[test]
    fn principal_key_prefers_arn() {
        let mut p = Principal {
            kind: "IAMUser".into(),
            arn: Some("arn:aws:iam::1:user/a".into()),
            name: Some("a".into()),
            account_id: Some("1".into()),
            ..Principal::default()
        };
        assert_eq!(p.key(), "arn:aws:iam::1:user/a");
        p.arn = None;
        assert_eq!(p.key(), "1/IAMUser/a");
    }

    /// The committed schemas must match the types; regenerate with
    /// `cargo run -p trailguard-common --bin gen-schemas`.
    #[test]
    fn committed_schemas_match_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        for (name, generated) in schemas() {
            let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            assert!(
                committed == generated,
                "schemas/{name} is out of date with the types: run `cargo run -p trailguard-common --bin gen-schemas`"
            );
        }
    }
}
