//! `plan`: which actions an alert gets, in which mode, and which are refused. Pure.
//! Also the pure half of "make bucket private": the changes a bucket's current state needs.

use serde_json::Value;
use trailguard_common::contract::{ActionKind, Mode, RequestedAction};
use trailguard_common::s3::{is_public_statement, items, PUBLIC_GRANTEE_URIS};
use trailguard_common::Alert;

use crate::RemediateSettings;

/// What remediate decided for one requested action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The action and its target.
    pub action: RequestedAction,
    /// The mode it runs in.
    pub mode: Mode,
    /// Why it must not run at all (protected target), if so.
    pub refusal: Option<String>,
}

/// Decides every action an alert asks for.
pub fn plan(alert: &Alert, settings: &RemediateSettings) -> Vec<Decision> {
    alert
        .actions
        .iter()
        .map(|action| {
            let mode = settings.mode_for(&alert.policy_id, action.kind);
            let refusal = match action.kind {
                ActionKind::MakeBucketPrivate | ActionKind::RemoveCollaborator => settings
                    .protected_buckets
                    .iter()
                    .find(|pattern| wildcard_match(pattern, &action.target.id))
                    .map(|pattern| {
                        format!(
                            "bucket {} is protected (matches `{pattern}`)",
                            action.target.id
                        )
                    }),
                _ => None,
            };
            Decision {
                action: action.clone(),
                mode,
                refusal,
            }
        })
        .collect()
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A bucket's public-exposure state, as read from S3.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketState {
    /// The four public-access-block flags, `None` when no block is configured.
    pub public_access_block: Option<[bool; 4]>,
    /// Grantee URIs of the ACL's group grants.
    pub acl_group_uris: Vec<String>,
    /// The bucket policy, when there is one.
    pub policy: Option<Value>,
}

/// One change "make bucket private" makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Turn on all four public-access-block flags.
    BlockPublicAccess,
    /// Reset the ACL to the canned `private` ACL (the owner keeps full control).
    ResetAcl,
    /// Replace the policy with this one (the public statements removed).
    PutPolicy(Value),
    /// Delete the policy: every statement was public.
    DeletePolicy,
}

impl Change {
    /// The API call and a description, for the action record.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Change::BlockPublicAccess => (
                "s3:PutPublicAccessBlock",
                "turn on BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets".into(),
            ),
            Change::ResetAcl => ("s3:PutBucketAcl", "reset the ACL to private (owner full control only)".into()),
            Change::PutPolicy(p) => (
                "s3:PutBucketPolicy",
                format!("remove public statements, keep {} other statement(s)", items(p.get("Statement")).len()),
            ),
            Change::DeletePolicy => ("s3:DeleteBucketPolicy", "delete the policy: all its statements were public".into()),
        }
    }
}

/// The changes that make a bucket in `state` private. Empty when it already is.
pub fn make_private_changes(state: &BucketState) -> Vec<Change> {
    let mut changes = Vec::new();
    if state.public_access_block != Some([true; 4]) {
        changes.push(Change::BlockPublicAccess);
    }
    if state
        .acl_group_uris
        .iter()
        .any(|uri| PUBLIC_GRANTEE_URIS.contains(&uri.as_str()))
    {
        changes.push(Change::ResetAcl);
    }
    if let Some(policy) = &state.policy {
        let statements = items(policy.get("Statement"));
        let kept: Vec<Value> = statements
            .iter()
            .filter(|s| !is_public_statement(s))
            .map(|s| (*s).clone())
            .collect();
        if kept.len() < statements.len() {
            if kept.is_empty() {
                changes.push(Change::DeletePolicy);
            } else {
                let mut policy = policy.clone();
                policy["Statement"] = Value::Array(kept);
                changes.push(Change::PutPolicy(policy));
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("trailguard-*", "trailguard-logs"));
        assert!(wildcard_match("*-logs", "audit-logs"));
        assert!(wildcard_match("a*b*c", "a-x-b-y-c"));
        assert!(!wildcard_match("a*b*c", "a-x-c"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exact2"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }

    #[test]
    fn private_bucket_needs_nothing() {
        let state = BucketState {
            public_access_block: Some([true; 4]),
            ..BucketState::default()
        };
        assert!(make_private_changes(&state).is_empty());
    }

    #[test]
    fn public_bucket_gets_every_change_and_keeps_other_statements() {
        let keep = json!({"Sid": "Logs", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject"});
        let state = BucketState {
            public_access_block: Some([false, true, true, true]),
            acl_group_uris: vec!["http://acs.amazonaws.com/groups/global/AllUsers".into()],
            policy: Some(
                json!({"Version": "2012-10-17", "Statement": [keep.clone(), {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}),
            ),
        };
        let changes = make_private_changes(&state);
        assert_eq!(changes[0], Change::BlockPublicAccess);
        assert_eq!(changes[1], Change::ResetAcl);
        assert_eq!(
            changes[2],
            Change::PutPolicy(json!({"Version": "2012-10-17", "Statement": [keep]}))
        );
    }

    #[test]
    fn all_public_policy_is_deleted() {
        let state = BucketState {
            public_access_block: Some([true; 4]),
            acl_group_uris: vec![],
            policy: Some(
                json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}}),
            ),
        };
        assert_eq!(make_private_changes(&state), vec![Change::DeletePolicy]);
    }
}
