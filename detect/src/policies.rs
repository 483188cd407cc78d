//! The policies: configuration, and the pure evaluation of one activity.
//!
//! Stateless policies ([`CloudTrailChanges`], [`BucketPublic`]) look at one activity at a time.
//! [`SigninFailures`] keeps per-key bursts; see [`crate::detector`] for how its state relates
//! to Kafka offsets.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{
    stable_id, ActionKind, Alert, AlertKind, Entity, Evidence, Mitre, RequestedAction, Severity,
    Target, ALERT_SCHEMA_VERSION, BUCKET_SNAPSHOT, INVENTORY_SOURCE,
};
use trailguard_common::s3::{
    is_public_statement, items, parse_policy, PUBLIC_CANNED_ACLS, PUBLIC_GRANTEE_URIS,
};
use trailguard_common::Activity;

/// Every policy's settings. Each table is optional in the file; omitted keys keep defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Admin console sign-in failures.
    pub console_signin_failures: SigninFailuresConfig,
    /// CloudTrail configuration changes (stopping or deleting a trail is always `high`).
    pub cloudtrail_changes: SimplePolicyConfig,
    /// S3 bucket is publicly accessible.
    pub s3_bucket_public: BucketPublicConfig,
    /// The activity policy templates, by id (see [`crate::templates`]).
    pub templates: crate::templates::TemplatesConfig,
    /// The anomaly detections (see [`crate::anomaly`]).
    pub anomaly: crate::anomaly::AnomalyConfig,
    /// Custom policies (see [`crate::custom`]).
    pub custom: Vec<crate::custom::CustomPolicyConfig>,
    /// Folding of repeated event-driven alerts (see [`crate::fold`]).
    pub fold: FoldConfig,
    /// Policy ids that may request destructive actions (every action but `notify`) from a
    /// failed call. By default a failed call only notifies: anyone can cause an
    /// `AccessDenied` on someone else's bucket, or a failed console sign-in for a known user
    /// name, and neither must make remediate act.
    pub act_on_failed_activity: Vec<String>,
}

/// How repeats of an event-driven policy fold into one alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FoldConfig {
    /// Repeats of the same policy, entity and severity within this much event time of the
    /// first alert fold into it; zero publishes every match.
    #[serde(with = "humantime_serde")]
    pub period: std::time::Duration,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            period: std::time::Duration::from_secs(3600),
        }
    }
}

impl PoliciesConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        crate::templates::validate(&self.templates)?;
        self.anomaly.validate()?;
        crate::custom::validate(&self.custom)?;
        if self.fold.period > std::time::Duration::from_secs(30 * 86_400) {
            return Err(trailguard_common::Error::config(
                "policies.fold.period",
                "must be at most 30 days",
            ));
        }
        let s = &self.console_signin_failures;
        if s.threshold < 2 {
            return Err(trailguard_common::Error::config(
                "policies.console_signin_failures.threshold",
                "must be at least 2",
            ));
        }
        if s.window.is_zero() || s.window > std::time::Duration::from_secs(30 * 86_400) {
            return Err(trailguard_common::Error::config(
                "policies.console_signin_failures.window",
                "must be longer than zero and at most 30 days",
            ));
        }
        Ok(())
    }
}

/// Settings of a policy that only needs switching on and rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimplePolicyConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Principal ARNs (or names) whose activity this policy ignores, e.g. automation roles.
    pub allow_principals: Vec<String>,
}

impl Default for SimplePolicyConfig {
    fn default() -> Self {
        SimplePolicyConfig {
            enabled: true,
            severity: Severity::Medium,
            allow_principals: Vec::new(),
        }
    }
}

/// Settings of the sign-in failures policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigninFailuresConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Failed sign-ins within `window` that raise an alert.
    pub threshold: usize,
    /// Sliding window, on event time (e.g. `15m`).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Count per principal.
    pub per_principal: bool,
    /// Count per source IP (catches one IP trying many users: password spraying).
    pub per_source_ip: bool,
}

impl Default for SigninFailuresConfig {
    fn default() -> Self {
        SigninFailuresConfig {
            enabled: true,
            severity: Severity::Medium,
            threshold: 5,
            window: Duration::from_secs(15 * 60),
            per_principal: true,
            per_source_ip: true,
        }
    }
}

/// Settings of the public-bucket policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketPublicConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Ask remediate to make the bucket private.
    pub make_private: bool,
    /// Buckets that are meant to be public (static websites); never alerted on.
    pub allow_buckets: Vec<String>,
}

impl Default for BucketPublicConfig {
    fn default() -> Self {
        BucketPublicConfig {
            enabled: true,
            severity: Severity::High,
            make_private: true,
            allow_buckets: Vec::new(),
        }
    }
}

fn mitre(tactic: &str, technique_id: &str, technique: &str) -> Mitre {
    Mitre {
        tactic: tactic.into(),
        technique_id: technique_id.into(),
        technique: technique.into(),
    }
}

pub(crate) fn allowed(list: &[String], activity: &Activity) -> bool {
    let p = &activity.principal;
    list.iter().any(|entry| {
        p.arn.as_deref() == Some(entry.as_str())
            || p.name.as_deref() == Some(entry.as_str())
            || p.session_issuer_arn.as_deref() == Some(entry.as_str())
    })
}

/// What every alert of a policy says about the policy.
pub struct PolicyMeta {
    /// Stable id, in alerts, config and metric labels.
    pub id: &'static str,
    /// Human name.
    pub name: &'static str,
    /// Kind of policy.
    pub kind: AlertKind,
}

/// Admin console sign-in failures.
pub const SIGNIN_FAILURES: PolicyMeta = PolicyMeta {
    id: "console-signin-failures",
    name: "Admin console sign-in failures",
    kind: AlertKind::ActivityPolicy,
};
/// CloudTrail configuration changes.
pub const CLOUDTRAIL_CHANGES: PolicyMeta = PolicyMeta {
    id: "cloudtrail-changes",
    name: "CloudTrail configuration change",
    kind: AlertKind::ActivityPolicy,
};
/// S3 bucket is publicly accessible.
pub const S3_BUCKET_PUBLIC: PolicyMeta = PolicyMeta {
    id: "s3-bucket-public",
    name: "S3 bucket is publicly accessible",
    kind: AlertKind::FilePolicy,
};

/// Builds an alert about one activity; `id_parts` (after the policy id) make its stable id.
pub fn alert_for(
    activity: &Activity,
    policy: &PolicyMeta,
    severity: Severity,
    entity: Entity,
    evidence: Evidence,
    id_parts: &[&str],
) -> Alert {
    Alert {
        schema_version: ALERT_SCHEMA_VERSION,
        id: stable_id(std::iter::once(policy.id).chain(id_parts.iter().copied())),
        policy_id: policy.id.into(),
        policy_name: policy.name.into(),
        kind: policy.kind,
        severity,
        time: activity.event_time,
        entity,
        principal: Some(activity.principal.clone()),
        account_id: activity.account_id.clone(),
        region: activity.region.clone(),
        evidence,
        mitre: Vec::new(),
        actions: Vec::new(),
        occurrences: 1,
        last_time: None,
        signature: None,
    }
}

pub(crate) fn who(activity: &Activity) -> String {
    let mut text = activity.principal.display();
    if let Some(ip) = activity.source_ip {
        text.push_str(&format!(" from {ip}"));
    } else if let Some(host) = &activity.source_host {
        text.push_str(&format!(" via {host}"));
    }
    text
}

/// CloudTrail configuration changes: anything that stops, deletes or narrows what is logged.
pub struct CloudTrailChanges {
    cfg: SimplePolicyConfig,
}

/// CloudTrail API calls that change what is logged, and where.
pub const CLOUDTRAIL_CHANGE_EVENTS: &[&str] = &[
    "StopLogging",
    "DeleteTrail",
    "UpdateTrail",
    "PutEventSelectors",
    "PutInsightSelectors",
    "DeleteEventDataStore",
    "UpdateEventDataStore",
    "StopEventDataStoreIngestion",
    "DeleteChannel",
    "UpdateChannel",
    "DeleteResourcePolicy",
    "PutResourcePolicy",
    "RemoveTags",
    "DeregisterOrganizationDelegatedAdmin",
];

impl CloudTrailChanges {
    /// The policy with its settings.
    pub fn new(cfg: SimplePolicyConfig) -> Self {
        CloudTrailChanges { cfg }
    }

    /// An alert when `activity` changes CloudTrail's configuration.
    pub fn evaluate(&self, activity: &Activity) -> Option<Alert> {
        if !self.cfg.enabled
            || activity.event_source != "cloudtrail.amazonaws.com"
            || !CLOUDTRAIL_CHANGE_EVENTS.contains(&activity.event_name.as_str())
            || allowed(&self.cfg.allow_principals, activity)
        {
            return None;
        }
        let trail = activity
            .resources
            .iter()
            .find(|r| r.kind == "cloudtrail-trail")
            .map(|r| r.id.clone())
            .unwrap_or_else(|| "(unnamed)".into());
        let attempt = match (&activity.outcome.error_code, activity.outcome.is_success()) {
            (_, true) => String::new(),
            (Some(code), false) => format!(" (attempt failed: {code})"),
            (None, false) => " (attempt failed)".into(),
        };
        let summary = format!(
            "{} called {} on trail {trail}{attempt}",
            who(activity),
            activity.event_name
        );
        // A stopped or deleted trail blinds the organization; narrowing selectors less so.
        let severity = match activity.event_name.as_str() {
            "StopLogging"
            | "DeleteTrail"
            | "DeleteEventDataStore"
            | "StopEventDataStoreIngestion"
                if activity.outcome.is_success() =>
            {
                self.cfg.severity.max(Severity::High)
            }
            _ => self.cfg.severity,
        };
        let mut alert = alert_for(
            activity,
            &CLOUDTRAIL_CHANGES,
            severity,
            Entity {
                kind: "cloudtrail-trail".into(),
                id: trail,
            },
            Evidence {
                activity_ids: vec![activity.id.clone()],
                summary,
            },
            &[activity.id.as_str()],
        );
        alert.mitre = vec![mitre(
            "Defense Evasion",
            "T1562.008",
            "Impair Defenses: Disable or Modify Cloud Logs",
        )];
        alert.actions = vec![RequestedAction {
            kind: ActionKind::Notify,
            target: Target {
                kind: "security-team".into(),
                id: "default".into(),
                account_id: None,
                grantee: None,
            },
        }];
        Some(alert)
    }
}

/// S3 bucket is publicly accessible: an ACL granting everyone, a policy with a public
/// principal, or the public-access block removed or weakened.
pub struct BucketPublic {
    cfg: BucketPublicConfig,
}

impl BucketPublic {
    /// The policy with its settings.
    pub fn new(cfg: BucketPublicConfig) -> Self {
        BucketPublic { cfg }
    }

    /// An alert when `activity` made a bucket publicly accessible.
    pub fn evaluate(&self, activity: &Activity) -> Option<Alert> {
        let snapshot =
            activity.event_source == INVENTORY_SOURCE && activity.event_name == BUCKET_SNAPSHOT;
        if !self.cfg.enabled
            || !(snapshot
                || activity.event_source == "s3.amazonaws.com"
                || activity.event_source == "s3-control.amazonaws.com")
            || !activity.outcome.is_success()
        {
            return None;
        }
        let params = activity.request_parameters.as_ref();
        if !snapshot {
            if let Some(alert) = self.account_block(activity, params) {
                return Some(alert);
            }
        }
        let params = params?;
        let bucket = params.get("bucketName").and_then(Value::as_str)?;
        if self.cfg.allow_buckets.iter().any(|b| b == bucket) {
            return None;
        }
        let why = match activity.event_name.as_str() {
            _ if snapshot => snapshot_exposure(params),
            "PutBucketAcl" | "CreateBucket" => acl_public(params),
            "PutBucketPolicy" => policy_public(params),
            "DeleteBucketPublicAccessBlock" | "DeletePublicAccessBlock" => {
                Some("removed the bucket's public-access block".to_string())
            }
            "PutBucketPublicAccessBlock" | "PutPublicAccessBlock" => access_block_weakened(params),
            _ => None,
        }?;
        let summary = if snapshot {
            format!("bucket {bucket} is publicly accessible (inventory): {why}")
        } else {
            format!("{} {why} on bucket {bucket}", who(activity))
        };
        let mut alert = alert_for(
            activity,
            &S3_BUCKET_PUBLIC,
            self.cfg.severity,
            Entity {
                kind: "s3-bucket".into(),
                id: bucket.into(),
            },
            Evidence {
                activity_ids: vec![activity.id.clone()],
                summary,
            },
            &[bucket, activity.id.as_str()],
        );
        alert.mitre = vec![mitre(
            "Exfiltration",
            "T1537",
            "Transfer Data to Cloud Account",
        )];
        if self.cfg.make_private {
            alert.actions = vec![RequestedAction {
                kind: ActionKind::MakeBucketPrivate,
                target: Target {
                    kind: "s3-bucket".into(),
                    id: bucket.into(),
                    account_id: activity.account_id.clone(),
                    grantee: None,
                },
            }];
        }
        Some(alert)
    }
}

impl BucketPublic {
    /// An alert when `activity` removed or weakened the account-level public-access block
    /// (S3 Control `DeletePublicAccessBlock`/`PutPublicAccessBlock`, logged as
    /// `DeleteAccountPublicAccessBlock`/`PutAccountPublicAccessBlock`): every bucket of the
    /// account loses that guard at once. Nothing to make private: the team is notified.
    fn account_block(&self, activity: &Activity, params: Option<&Value>) -> Option<Alert> {
        let why = match activity.event_name.as_str() {
            "DeleteAccountPublicAccessBlock" => {
                "removed the account-level public-access block".to_string()
            }
            "PutAccountPublicAccessBlock" => access_block_weakened(params?)?
                .replace("public-access block", "account-level public-access block"),
            _ => return None,
        };
        let account = activity
            .account_id
            .clone()
            .or_else(|| {
                params
                    .and_then(|p| p.get("x-amz-account-id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "(unknown account)".into());
        let mut alert = alert_for(
            activity,
            &S3_BUCKET_PUBLIC,
            self.cfg.severity,
            Entity {
                kind: "aws-account".into(),
                id: account.clone(),
            },
            Evidence {
                activity_ids: vec![activity.id.clone()],
                summary: format!("{} {why} of account {account}", who(activity)),
            },
            &[account.as_str(), activity.id.as_str()],
        );
        alert.mitre = vec![mitre("Defense Evasion", "T1562", "Impair Defenses")];
        alert.actions = vec![RequestedAction {
            kind: ActionKind::Notify,
            target: crate::templates::action_target(ActionKind::Notify, activity),
        }];
        Some(alert)
    }
}

fn acl_public(params: &Value) -> Option<String> {
    for canned in items(params.get("x-amz-acl")) {
        if let Some(acl) = canned.as_str().filter(|a| PUBLIC_CANNED_ACLS.contains(a)) {
            return Some(format!("set the canned ACL `{acl}`"));
        }
    }
    for header in [
        "x-amz-grant-read",
        "x-amz-grant-write",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "x-amz-grant-full-control",
    ] {
        for grant in items(params.get(header)) {
            if grant
                .as_str()
                .is_some_and(|g| PUBLIC_GRANTEE_URIS.iter().any(|p| g.contains(p)))
            {
                return Some(format!("granted everyone access through `{header}`"));
            }
        }
    }
    let list = params
        .get("AccessControlPolicy")
        .and_then(|p| p.get("AccessControlList"))?;
    for grant in items(list.get("Grant")) {
        let uri = grant
            .get("Grantee")
            .and_then(|g| g.get("URI"))
            .and_then(Value::as_str);
        if let Some(uri) = uri.filter(|u| PUBLIC_GRANTEE_URIS.contains(u)) {
            let permission = grant
                .get("Permission")
                .and_then(Value::as_str)
                .unwrap_or("access");
            let group = uri.rsplit('/').next().unwrap_or(uri);
            return Some(format!("granted {permission} to {group} in the bucket ACL"));
        }
    }
    None
}

/// Why an inventory snapshot's bucket is reachable by anyone, if it is: a public ACL not
/// neutralised by `IgnorePublicAcls`, or a public policy (by S3's own `PolicyStatus` or by our
/// reading) not neutralised by `RestrictPublicBuckets` — at the bucket or the account level.
fn snapshot_exposure(params: &Value) -> Option<String> {
    let flag = |name: &str| {
        ["PublicAccessBlockConfiguration", "accountPublicAccessBlock"]
            .iter()
            .any(|block| params.get(*block).and_then(|b| b.get(name)) == Some(&Value::Bool(true)))
    };
    let mut reasons = Vec::new();
    if !flag("IgnorePublicAcls") {
        if let Some(why) = acl_public(params) {
            reasons.push(
                why.replace("granted", "the ACL grants")
                    .replace(" in the bucket ACL", ""),
            );
        }
    }
    if !flag("RestrictPublicBuckets") {
        let status = params
            .get("policyStatus")
            .and_then(|s| s.get("IsPublic"))
            .and_then(Value::as_bool);
        match (status, policy_public(params)) {
            (_, Some(why)) => {
                reasons.push(why.replace("set a bucket policy", "the bucket policy is"))
            }
            (Some(true), None) => reasons.push("S3 reports the bucket policy as public".into()),
            _ => {}
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

fn policy_public(params: &Value) -> Option<String> {
    let policy = parse_policy(params.get("bucketPolicy")?)?;
    let statement = items(policy.get("Statement"))
        .into_iter()
        .find(|s| is_public_statement(s))?;
    let actions: Vec<&str> = items(statement.get("Action"))
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let actions = if actions.is_empty() {
        "access".to_string()
    } else {
        actions.join(", ")
    };
    Some(format!("set a bucket policy allowing anyone {actions}"))
}

fn access_block_weakened(params: &Value) -> Option<String> {
    let config = params.get("PublicAccessBlockConfiguration")?;
    let off: Vec<&str> = [
        "BlockPublicAcls",
        "IgnorePublicAcls",
        "BlockPublicPolicy",
        "RestrictPublicBuckets",
    ]
    .into_iter()
    .filter(|flag| {
        matches!(config.get(*flag), Some(Value::Bool(false)))
            || config.get(*flag).and_then(Value::as_str) == Some("false")
    })
    .collect();
    (!off.is_empty()).then(|| format!("turned off {} in the public-access block", off.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params_public(event: &str, params: Value) -> Option<String> {
        match event {
            "PutBucketAcl" => acl_public(&params),
            "PutBucketPolicy" => policy_public(&params),
            _ => access_block_weakened(&params),
        }
    }

    #[test]
    fn acl_grants() {
        let single = json!({"AccessControlPolicy": {"AccessControlList": {"Grant": {"Grantee": {"URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}}}});
        assert!(params_public("PutBucketAcl", single).is_some());
        let private = json!({"AccessControlPolicy": {"AccessControlList": {"Grant": [{"Grantee": {"ID": "abc"}, "Permission": "FULL_CONTROL"}]}}});
        assert!(params_public("PutBucketAcl", private).is_none());
        assert!(params_public("PutBucketAcl", json!({"x-amz-acl": ["public-read"]})).is_some());
        assert!(params_public("PutBucketAcl", json!({"x-amz-acl": "private"})).is_none());
    }

    #[test]
    fn policies() {
        let public = json!({"bucketPolicy": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}});
        assert!(params_public("PutBucketPolicy", public).is_some());
        let as_text = json!({"bucketPolicy": "{\"Statement\":{\"Effect\":\"Allow\",\"Principal\":{\"AWS\":[\"*\"]},\"Action\":\"s3:*\"}}"});
        assert!(params_public("PutBucketPolicy", as_text).is_some());
        let vpce = json!({"bucketPolicy": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}}}]}});
        assert!(params_public("PutBucketPolicy", vpce).is_none());
        let tls_only = json!({"bucketPolicy": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Condition": {"Bool": {"aws:SecureTransport": "true"}}}]}});
        assert!(params_public("PutBucketPolicy", tls_only).is_some());
        let deny = json!({"bucketPolicy": {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:*"}]}});
        assert!(params_public("PutBucketPolicy", deny).is_none());
    }

    #[test]
    fn access_block() {
        let weak = json!({"PublicAccessBlockConfiguration": {"BlockPublicAcls": false, "IgnorePublicAcls": true, "BlockPublicPolicy": true, "RestrictPublicBuckets": true}});
        assert!(params_public("PutPublicAccessBlock", weak).is_some());
        let strong = json!({"PublicAccessBlockConfiguration": {"BlockPublicAcls": true, "IgnorePublicAcls": true, "BlockPublicPolicy": true, "RestrictPublicBuckets": true}});
        assert!(params_public("PutPublicAccessBlock", strong).is_none());
    }

    #[test]
    fn inventory_snapshots() {
        let all_users = json!({"AccessControlList": {"Grant": [
            {"Grantee": {"ID": "owner"}, "Permission": "FULL_CONTROL"},
            {"Grantee": {"URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}]}});
        let acl = json!({"bucketName": "b", "AccessControlPolicy": all_users});
        let why = snapshot_exposure(&acl).unwrap_or_default();
        assert!(why.contains("READ") && why.contains("AllUsers"), "{why}");
        // The account's block neutralises the ACL.
        let mut blocked = acl.clone();
        blocked["accountPublicAccessBlock"] = json!({"IgnorePublicAcls": true});
        assert_eq!(snapshot_exposure(&blocked), None);
        // A public policy, and S3's own verdict.
        let policy = json!({"bucketName": "b", "bucketPolicy": {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}});
        assert!(snapshot_exposure(&policy).is_some());
        let status_only = json!({"bucketName": "b", "policyStatus": {"IsPublic": true}});
        assert!(snapshot_exposure(&status_only).is_some());
        let mut restricted = policy.clone();
        restricted["PublicAccessBlockConfiguration"] = json!({"RestrictPublicBuckets": true});
        assert_eq!(snapshot_exposure(&restricted), None);
        let private = json!({"bucketName": "b", "policyStatus": {"IsPublic": false},
            "AccessControlPolicy": {"AccessControlList": {"Grant": [{"Grantee": {"ID": "owner"}, "Permission": "FULL_CONTROL"}]}}});
        assert_eq!(snapshot_exposure(&private), None);
    }
}
