//! S3 bucket is publicly accessible: an ACL granting everyone, a policy with a public principal,
//! or the public-access block removed or weakened — by a call, or found by ingest's inventory.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{
    ActionKind, Alert, AlertKind, Entity, RequestedAction, Severity, Target, BUCKET_SNAPSHOT,
    INVENTORY_SOURCE,
};
use trailguard_common::s3::{
    is_public_statement, items, parse_policy, PUBLIC_CANNED_ACLS, PUBLIC_GRANTEE_URIS,
};
use trailguard_common::Activity;

use crate::policy::{action_target, who, AlertBuilder, PolicyMeta};
use trailguard_common::contract::kinds;

/// S3 bucket is publicly accessible.
pub const S3_BUCKET_PUBLIC: PolicyMeta<'static> = PolicyMeta {
    id: "s3-bucket-public",
    name: "S3 bucket is publicly accessible",
    kind: AlertKind::FilePolicy,
};

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
    /// Ask remediate to notify the security team too.
    pub notify: bool,
    /// Buckets that are meant to be public (static websites); never alerted on.
    pub allow_buckets: Vec<String>,
}

impl Default for BucketPublicConfig {
    fn default() -> Self {
        BucketPublicConfig {
            enabled: true,
            severity: Severity::High,
            make_private: true,
            notify: true,
            allow_buckets: Vec::new(),
        }
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
    pub fn judge(&self, activity: &Activity) -> Option<Alert> {
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
        // What a call asked is parsed only for the calls that can expose a bucket.
        let exposing = snapshot
            || matches!(
                activity.event_name.as_str(),
                "PutBucketAcl"
                    | "CreateBucket"
                    | "PutBucketPolicy"
                    | "DeleteBucketPublicAccessBlock"
                    | "DeletePublicAccessBlock"
                    | "PutBucketPublicAccessBlock"
                    | "PutPublicAccessBlock"
                    | "DeleteAccountPublicAccessBlock"
                    | "PutAccountPublicAccessBlock"
            );
        if !exposing {
            return None;
        }
        let params = activity.request_parameters.as_deref();
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
        let alert = AlertBuilder::about(&S3_BUCKET_PUBLIC, activity, self.cfg.severity)
            .entity(Entity {
                kind: kinds::S3_BUCKET.into(),
                id: bucket.into(),
            })
            .evidence(vec![activity.id.clone()], summary)
            .mitre(("Exfiltration", "T1537", "Transfer Data to Cloud Account"));
        let mut actions = Vec::new();
        if self.cfg.notify {
            actions.push(RequestedAction {
                kind: ActionKind::Notify,
                target: action_target(ActionKind::Notify, activity),
            });
        }
        if self.cfg.make_private {
            actions.push(RequestedAction {
                kind: ActionKind::MakeBucketPrivate,
                target: Target {
                    kind: kinds::S3_BUCKET.into(),
                    id: bucket.into(),
                    account_id: activity.account_id.clone(),
                    grantee: None,
                },
            });
        }
        let alert = alert.actions(actions);
        let alert = alert.id_from(&[bucket, activity.id.as_str()]);
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
        let alert = AlertBuilder::about(&S3_BUCKET_PUBLIC, activity, self.cfg.severity)
            .entity(Entity {
                kind: kinds::AWS_ACCOUNT.into(),
                id: account.clone(),
            })
            .evidence(
                vec![activity.id.clone()],
                format!("{} {why} of account {account}", who(activity)),
            )
            .mitre(("Defense Evasion", "T1562", "Impair Defenses"))
            .actions(vec![RequestedAction {
                kind: ActionKind::Notify,
                target: action_target(ActionKind::Notify, activity),
            }])
            .id_from(&[account.as_str(), activity.id.as_str()]);
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

impl crate::policy::EventPolicy for BucketPublic {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&S3_BUCKET_PUBLIC]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
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
