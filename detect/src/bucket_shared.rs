//! S3 bucket shared with an external account: a bucket policy that allows a principal of
//! another AWS account, or an ACL grant to another account's canonical user or e-mail address.
//! Public access (anyone) is [`crate::bucket_public`]'s; this is the quieter exfiltration path —
//! a bucket opened to one attacker-owned account (MITRE T1537).
//!
//! The grantees it finds are also what `remove_collaborator` removes, whatever policy asks
//! for it on such a call ([`crate::policy::requested`]): the collaborator the change added, not
//! the caller who made it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::s3::{items, parse_policy};
use trailguard_common::Activity;

use crate::policy::{allowed, requested_excluding, who, AlertBuilder, EventPolicy, PolicyMeta};
use trailguard_common::contract::kinds;

/// S3 bucket shared with an external account.
pub const S3_BUCKET_SHARED: PolicyMeta<'static> = PolicyMeta {
    id: "s3-external-grantee",
    name: "S3 bucket shared with an external account",
    kind: AlertKind::FilePolicy,
};

/// Settings of `s3-external-grantee`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BucketSharedConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Accounts that are not external: the organization's other accounts, partners the
    /// organization shares with on purpose. (The bucket's own account never is.)
    pub trusted_accounts: Vec<String>,
    /// Buckets meant to be shared (a partner exchange bucket); never alerted on.
    pub allow_buckets: Vec<String>,
    /// Principal ARNs, names, session roles or actor ids whose changes it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request: `notify` (the default) and `remove_collaborator` (one
    /// request per external grantee the change added).
    pub actions: Vec<ActionKind>,
}

impl Default for BucketSharedConfig {
    fn default() -> Self {
        BucketSharedConfig {
            enabled: true,
            severity: Severity::Medium,
            trusted_accounts: Vec::new(),
            allow_buckets: Vec::new(),
            allow_principals: Vec::new(),
            actions: vec![ActionKind::Notify],
        }
    }
}

/// One grantee a bucket change gave access to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    /// As remediate's `remove_collaborator` names it: a principal ARN, an account id, a
    /// canonical user id or an e-mail address.
    pub id: String,
    /// The account, when the grantee names one.
    pub account: Option<String>,
    /// What it was given, for the summary (`s3:GetObject`, `READ` ...).
    pub access: String,
}

/// The grantees outside the bucket's own account (and `trusted` accounts) that `a` — a
/// successful `PutBucketPolicy`, `PutBucketAcl` or `CreateBucket` — gave access to.
pub fn external_grantees(a: &Activity, trusted: &[String]) -> Vec<Grantee> {
    if a.event_source != "s3.amazonaws.com" || !a.outcome.is_success() {
        return Vec::new();
    }
    let Some(params) = a.request_parameters.as_ref() else {
        return Vec::new();
    };
    // Whose bucket: without an account to compare with, nothing can be called external.
    let Some(own) = a
        .account_id
        .as_deref()
        .or(a.principal.account_id.as_deref())
    else {
        return Vec::new();
    };
    let external = |account: &str| account != own && !trusted.iter().any(|t| t == account);
    let mut out: Vec<Grantee> = match a.event_name.as_str() {
        "PutBucketPolicy" => policy_grantees(params),
        "PutBucketAcl" | "CreateBucket" => acl_grantees(params),
        _ => Vec::new(),
    };
    out.retain(|g| g.account.as_deref().is_none_or(external));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// The 12-digit account of an AWS principal: a bare id, or the account field of an ARN.
fn account_of(principal: &str) -> Option<String> {
    let account = if principal.starts_with("arn:") {
        principal.split(':').nth(4)?
    } else {
        principal
    };
    (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())).then(|| account.into())
}

/// The principals of other accounts the `Allow` statements of the policy name.
fn policy_grantees(params: &Value) -> Vec<Grantee> {
    let Some(policy) = params.get("bucketPolicy").and_then(parse_policy) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for statement in items(policy.get("Statement")) {
        if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        let access: Vec<&str> = items(statement.get("Action"))
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        let access = if access.is_empty() {
            "access".to_string()
        } else {
            access.join(", ")
        };
        let principals = statement.get("Principal").and_then(|p| p.get("AWS"));
        for principal in items(principals).into_iter().filter_map(Value::as_str) {
            // `*` is public: the public-bucket policy's.
            if let Some(account) = account_of(principal) {
                out.push(Grantee {
                    id: principal.to_string(),
                    account: Some(account),
                    access: access.clone(),
                });
            }
        }
    }
    out
}

/// The canonical users (other than the bucket owner) and e-mail addresses an ACL grants to.
/// A grant header names a canonical id without saying who owns the bucket, so only its
/// e-mail grantees are judged.
fn acl_grantees(params: &Value) -> Vec<Grantee> {
    let mut out = Vec::new();
    for header in [
        "x-amz-grant-read",
        "x-amz-grant-write",
        "x-amz-grant-read-acp",
        "x-amz-grant-write-acp",
        "x-amz-grant-full-control",
    ] {
        for grant in items(params.get(header))
            .into_iter()
            .filter_map(Value::as_str)
        {
            for part in grant.split(',') {
                if let Some(email) = part.trim().strip_prefix("emailAddress=") {
                    out.push(Grantee {
                        id: email.trim_matches('"').to_string(),
                        account: None,
                        access: header.trim_start_matches("x-amz-grant-").to_uppercase(),
                    });
                }
            }
        }
    }
    let Some(acp) = params.get("AccessControlPolicy") else {
        return out;
    };
    let owner = acp
        .get("Owner")
        .and_then(|o| o.get("ID"))
        .and_then(Value::as_str);
    let list = acp.get("AccessControlList");
    for grant in items(list.and_then(|l| l.get("Grant"))) {
        let grantee = grant.get("Grantee");
        let text = |k: &str| grantee.and_then(|g| g.get(k)).and_then(Value::as_str);
        let id = text("ID")
            .filter(|id| Some(*id) != owner)
            .or(text("EmailAddress"));
        if let Some(id) = id {
            out.push(Grantee {
                id: id.to_string(),
                account: None,
                access: grant
                    .get("Permission")
                    .and_then(Value::as_str)
                    .unwrap_or("access")
                    .to_string(),
            });
        }
    }
    out
}

/// The policy with its settings.
pub struct BucketShared {
    cfg: BucketSharedConfig,
}

impl BucketShared {
    /// The policy with its settings.
    pub fn new(cfg: BucketSharedConfig) -> Self {
        BucketShared { cfg }
    }

    /// An alert when `a` shared a bucket with an external account.
    pub fn judge(&self, a: &Activity) -> Option<Alert> {
        if !self.cfg.enabled || allowed(&self.cfg.allow_principals, a) {
            return None;
        }
        // Only these calls grant access (what a call asked is parsed only for them).
        if !matches!(
            a.event_name.as_str(),
            "PutBucketPolicy" | "PutBucketAcl" | "CreateBucket"
        ) {
            return None;
        }
        let bucket = a
            .request_parameters
            .as_ref()?
            .get("bucketName")
            .and_then(Value::as_str)?;
        if self.cfg.allow_buckets.iter().any(|b| b == bucket) {
            return None;
        }
        let grantees = external_grantees(a, &self.cfg.trusted_accounts);
        if grantees.is_empty() {
            return None;
        }
        let through = if a.event_name == "PutBucketPolicy" {
            "its bucket policy"
        } else {
            "its ACL"
        };
        let whom: Vec<String> = grantees
            .iter()
            .map(|g| format!("{} ({})", g.id, g.access))
            .collect();
        let summary = format!(
            "{} shared bucket {bucket} with {} through {through}",
            who(a),
            whom.join("; ")
        );
        let alert = AlertBuilder::about(&S3_BUCKET_SHARED, a, self.cfg.severity)
            .entity(Entity {
                kind: kinds::S3_BUCKET.into(),
                id: bucket.into(),
            })
            .evidence(vec![a.id.clone()], summary)
            .mitre(("Exfiltration", "T1537", "Transfer Data to Cloud Account"))
            .actions(requested_excluding(
                &self.cfg.actions,
                a,
                &self.cfg.trusted_accounts,
            ))
            .id_from(&[bucket, a.id.as_str()]);
        Some(alert)
    }
}

impl EventPolicy for BucketShared {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&S3_BUCKET_SHARED]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(name: &str, params: Value) -> Activity {
        let record = json!({
            "eventVersion": "1.09", "eventTime": "2024-05-10T12:00:00Z",
            "eventSource": "s3.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
            "recipientAccountId": "111111111111", "sourceIPAddress": "198.51.100.1",
            "eventID": "e1", "requestParameters": params,
            "userIdentity": {"type": "IAMUser", "userName": "mallory", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/mallory"},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn policy(principal: Value) -> Value {
        let document = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": principal},
             "Action": ["s3:GetObject", "s3:ListBucket"],
             "Resource": ["arn:aws:s3:::loot", "arn:aws:s3:::loot/*"]}]});
        json!({"bucketName": "loot", "bucketPolicy": document, "policy": [""]})
    }

    #[test]
    fn a_policy_allowing_another_account_is_external() {
        let shared = BucketShared::new(BucketSharedConfig {
            actions: vec![ActionKind::Notify, ActionKind::RemoveCollaborator],
            ..BucketSharedConfig::default()
        });
        let a = call(
            "PutBucketPolicy",
            policy(json!(["arn:aws:iam::999988887777:root", "111111111111"])),
        );
        let alert = shared.judge(&a).expect("shared with 999988887777");
        assert!(
            alert.evidence.summary.contains("999988887777"),
            "{}",
            alert.evidence.summary
        );
        assert!(!alert.evidence.summary.contains("111111111111 ("));
        let removal: Vec<_> = alert
            .actions
            .iter()
            .filter(|r| r.kind == ActionKind::RemoveCollaborator)
            .collect();
        assert_eq!(removal.len(), 1);
        assert_eq!(removal[0].target.id, "loot");
        assert_eq!(
            removal[0].target.account_id.as_deref(),
            Some("111111111111")
        );
        assert_eq!(
            removal[0].target.grantee.as_deref(),
            Some("arn:aws:iam::999988887777:root"),
            "the collaborator added, not the caller"
        );
    }

    #[test]
    fn own_trusted_and_public_principals_are_not_external() {
        let shared = BucketShared::new(BucketSharedConfig {
            trusted_accounts: vec!["222222222222".into()],
            ..BucketSharedConfig::default()
        });
        for principal in [
            json!("arn:aws:iam::111111111111:role/app"),
            json!("222222222222"),
            json!("*"),
        ] {
            assert!(
                shared
                    .judge(&call("PutBucketPolicy", policy(principal.clone())))
                    .is_none(),
                "{principal}"
            );
        }
        let deny = json!({"bucketName": "loot", "bucketPolicy": {"Statement": [
            {"Effect": "Deny", "Principal": {"AWS": "999988887777"}, "Action": "s3:*", "Resource": "*"}]}});
        assert!(shared.judge(&call("PutBucketPolicy", deny)).is_none());
    }

    #[test]
    fn acl_grants_to_another_canonical_user_or_address() {
        let shared = BucketShared::new(BucketSharedConfig::default());
        let acl = json!({"bucketName": "loot", "AccessControlPolicy": {
            "Owner": {"ID": "owner-canonical-id"},
            "AccessControlList": {"Grant": [
                {"Grantee": {"ID": "owner-canonical-id", "xsi:type": "CanonicalUser"}, "Permission": "FULL_CONTROL"},
                {"Grantee": {"ID": "stranger-canonical-id", "xsi:type": "CanonicalUser"}, "Permission": "READ"}]}}});
        let alert = shared.judge(&call("PutBucketAcl", acl)).expect("stranger");
        assert!(
            alert
                .evidence
                .summary
                .contains("stranger-canonical-id (READ)"),
            "{}",
            alert.evidence.summary
        );
        assert!(!alert.evidence.summary.contains("owner-canonical-id"));
        let header =
            json!({"bucketName": "loot", "x-amz-grant-read": "emailAddress=\"x@evil.example\""});
        let alert = shared
            .judge(&call("PutBucketAcl", header))
            .expect("e-mail grantee");
        assert!(alert.evidence.summary.contains("x@evil.example (READ)"));
    }
}
