//! The policy kernel: what every policy shares, and nothing else of this crate. A policy's
//! identity ([`PolicyMeta`]); the one way an [`Alert`] is built ([`AlertBuilder`], with
//! [`alert_for`] for the common case); who acted ([`who`]); allow-lists ([`allowed`]); MITRE
//! ATT&CK references ([`mitre`]); and the targets of the actions a policy asks for
//! ([`action_target`]). Every policy module sits above this one; this one imports none of them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::kinds;
use trailguard_common::contract::{
    stable_id, ActionKind, Alert, AlertKind, Entity, Evidence, Mitre, Principal, RequestedAction,
    Severity, Target, ALERT_SCHEMA_VERSION,
};
use trailguard_common::Activity;

/// Kafka offset within one partition.
pub type Offset = i64;

/// How many offsets a burst outlives its last activity, whatever the watermark says.
pub const RETAIN_OFFSETS: Offset = 10_000;

/// Windows are expired at offsets that are multiples of this.
pub const EXPIRE_EVERY: Offset = 64;

/// How far ahead of this clock an event time may move the watermark. Ingest dead-letters
/// records further in the future (`publish.max_clock_skew`); activities reaching detect by
/// another way must not either: one record dated 2199 would otherwise expire every baseline.
pub const WATERMARK_SKEW: chrono::Duration = chrono::Duration::days(1);

/// True when `time` moves the watermark on from `max`: later, and not beyond the clock plus
/// [`WATERMARK_SKEW`].
pub fn advances_watermark(max: Option<DateTime<Utc>>, time: DateTime<Utc>) -> bool {
    moves_watermark(max, time, beyond_clock(time))
}

/// [`advances_watermark`] with the clock already read: `beyond` is [`beyond_clock`]'s answer
/// for `time`.
pub fn moves_watermark(max: Option<DateTime<Utc>>, time: DateTime<Utc>, beyond: bool) -> bool {
    max.is_none_or(|t| time > t) && !beyond
}

/// Whether `time` is beyond this clock plus [`WATERMARK_SKEW`]: no watermark will reach it.
pub fn beyond_clock(time: DateTime<Utc>) -> bool {
    time > Utc::now() + WATERMARK_SKEW
}

/// A policy that judges each activity on its own — no window, no baseline — such as the
/// CloudTrail-change and public-bucket policies and the templates. The event policies are
/// listed once, in [`crate::config::PoliciesConfig::event_policies`]; the detector evaluates
/// each on every activity, in that order, before folding.
pub trait EventPolicy: Send {
    /// The policies whose alerts it raises (one, or a family such as the templates).
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>>;
    /// Adds the alerts `activity` raises to `alerts`.
    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>);
}

/// What every alert of a policy says about the policy. Built-in policies are constants; custom
/// policies borrow their configured id and name.
pub struct PolicyMeta<'a> {
    /// Stable id, in alerts, config and metric labels.
    pub id: &'a str,
    /// Human name.
    pub name: &'a str,
    /// Kind of policy.
    pub kind: AlertKind,
}

/// An alert being built: the one way a policy makes an [`Alert`]. Start from the activity it
/// is about ([`AlertBuilder::about`]) or, when no single activity is (a termination learned
/// after the fact), from a time ([`AlertBuilder::at`]); finish with [`AlertBuilder::id`] or
/// [`AlertBuilder::id_from`].
pub struct AlertBuilder {
    alert: Alert,
}

impl AlertBuilder {
    /// An alert of `policy` about `activity`: its time, principal, account and region.
    pub fn about(policy: &PolicyMeta<'_>, activity: &Activity, severity: Severity) -> Self {
        let mut builder = Self::at(policy, activity.event_time, severity);
        builder.alert.principal = Some(activity.principal.clone());
        builder.alert.actor = Some(activity.actor.clone()).filter(|a| !a.is_empty());
        builder.alert.account_id = activity.account_id.clone();
        builder.alert.region = activity.region.clone();
        builder
    }

    /// An alert of `policy` at `time`, about no principal, account or region yet.
    pub fn at(policy: &PolicyMeta<'_>, time: DateTime<Utc>, severity: Severity) -> Self {
        AlertBuilder {
            alert: Alert {
                schema_version: ALERT_SCHEMA_VERSION,
                id: String::new(),
                policy_id: policy.id.into(),
                policy_name: policy.name.into(),
                kind: policy.kind,
                severity,
                time,
                entity: Entity {
                    kind: String::new(),
                    id: String::new(),
                },
                principal: None,
                actor: None,
                account_id: None,
                region: None,
                evidence: Evidence {
                    activity_ids: Vec::new(),
                    summary: String::new(),
                },
                mitre: Vec::new(),
                actions: Vec::new(),
                occurrences: 1,
                last_time: None,
                signature: None,
            },
        }
    }

    /// Who the alert is about, and the account it belongs to.
    pub fn principal(mut self, principal: Principal, account_id: Option<String>) -> Self {
        self.alert.actor = Some(trailguard_common::contract::Actor::of(&principal));
        self.alert.principal = Some(principal);
        self.alert.account_id = account_id;
        self
    }

    /// What the alert is about (a principal, a bucket, a trail…).
    pub fn entity(mut self, entity: Entity) -> Self {
        self.alert.entity = entity;
        self
    }

    /// The activities behind the alert and what they add up to.
    pub fn evidence(mut self, activity_ids: Vec<String>, summary: String) -> Self {
        self.alert.evidence = Evidence {
            activity_ids,
            summary,
        };
        self
    }

    /// The MITRE ATT&CK technique (tactic, technique id, technique).
    pub fn mitre(mut self, (tactic, technique_id, technique): (&str, &str, &str)) -> Self {
        self.alert.mitre = vec![mitre(tactic, technique_id, technique)];
        self
    }

    /// The actions the policy asks remediate for.
    pub fn actions(mut self, actions: Vec<RequestedAction>) -> Self {
        self.alert.actions = actions;
        self
    }

    /// The alert, with the stable id made of the policy id and `parts` (the usual id: the
    /// same activities give the same id, so consumers de-duplicate replays).
    pub fn id_from(self, parts: &[&str]) -> Alert {
        let id =
            stable_id(std::iter::once(self.alert.policy_id.as_str()).chain(parts.iter().copied()));
        self.id(id)
    }

    /// The alert, with `id` as made by the policy.
    pub fn id(mut self, id: String) -> Alert {
        self.alert.id = id;
        self.alert
    }
}

/// An alert of `policy` about one activity: `id_parts` (after the policy id) make its stable
/// id.
pub fn alert_for(
    activity: &Activity,
    policy: &PolicyMeta<'_>,
    severity: Severity,
    entity: Entity,
    evidence: Evidence,
    id_parts: &[&str],
) -> Alert {
    AlertBuilder::about(policy, activity, severity)
        .entity(entity)
        .evidence(evidence.activity_ids, evidence.summary)
        .id_from(id_parts)
}

/// A MITRE ATT&CK reference.
pub fn mitre(tactic: &str, technique_id: &str, technique: &str) -> Mitre {
    Mitre {
        tactic: tactic.into(),
        technique_id: technique_id.into(),
        technique: technique.into(),
    }
}

/// `value`'s field `key`, in any ASCII case: records spell the same parameter as the SDK or
/// API version that made the call did (`targetCapacity`, `TargetCapacity`), and EC2's newer
/// calls nest theirs capitalised under `<call>Request`.
pub fn field_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Whether `activity`'s principal is on `list` (by ARN, an IAM user's name, or the role a session was
/// issued by), or its actor (by id: `person:alice@example.com`, a role ARN) when AWS or the
/// identity provider vouches for who the actor is. A person inferred from an e-mail-like
/// session name or from a `sourceIdentity` is not matched by id: the caller of `AssumeRole`
/// chooses both (the latter with `sts:SetSourceIdentity`), so that would let anyone allowed to
/// assume the role borrow a listed person's pass.
pub fn allowed(list: &[String], activity: &Activity) -> bool {
    let p = &activity.principal;
    let actor = &activity.actor;
    // SAML subjects are any SAML provider's to assert, in any account: not vouched either.
    let vouched = !actor.is_empty()
        && !matches!(
            actor.basis.as_str(),
            "session-email" | "source-identity" | "saml"
        );
    // A name is vouched for only as an IAM user's: a federated user's (`GetFederationToken`)
    // and a session's are their caller's choice.
    let user_name = (p.kind == "IAMUser").then_some(p.name.as_deref()).flatten();
    list.iter().any(|entry| {
        p.arn.as_deref() == Some(entry.as_str())
            || user_name == Some(entry.as_str())
            || p.session_issuer_arn.as_deref() == Some(entry.as_str())
            // Person ids are lower-case; an entry written `person:Alice@Example.com` still means her.
            || (vouched && (actor.id == *entry
                || (entry.starts_with("person:") && actor.id.eq_ignore_ascii_case(entry))))
    })
}

/// Who acted, and from where: the opening of most summaries.
pub fn who(activity: &Activity) -> String {
    let mut text = activity.principal.display();
    if let Some(ip) = activity.source_ip {
        text.push_str(&format!(" from {ip}"));
    } else if let Some(host) = &activity.source_host {
        text.push_str(&format!(" via {host}"));
    }
    text
}

/// The security team, whom `notify` reaches.
pub fn security_team() -> Target {
    Target {
        kind: kinds::SECURITY_TEAM.into(),
        id: "default".into(),
        account_id: None,
        grantee: None,
    }
}

/// The actions `kinds`, each aimed at what it acts on in `activity` ([`action_target`]). On a
/// bucket policy or ACL change that gave other accounts access, `remove_collaborator` is asked
/// once for each grantee the change added ([`crate::bucket_shared::external_grantees`]).
pub fn requested(kinds: &[ActionKind], activity: &Activity) -> Vec<RequestedAction> {
    requested_excluding(kinds, activity, &[])
}

/// [`requested`], leaving the grantees of `trusted` accounts alone.
pub fn requested_excluding(
    kinds: &[ActionKind],
    activity: &Activity,
    trusted: &[String],
) -> Vec<RequestedAction> {
    let mut out = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        // A share to take back is known only to the policy that saw it (resource-shared-out).
        if matches!(kind, ActionKind::UnshareSnapshot | ActionKind::UnshareImage) {
            continue;
        }
        let target = action_target(kind, activity);
        if kind == ActionKind::RemoveCollaborator {
            let added = crate::bucket_shared::external_grantees(activity, trusted);
            if !added.is_empty() {
                out.extend(added.into_iter().map(|g| RequestedAction {
                    kind,
                    target: Target {
                        grantee: Some(g.id),
                        ..target.clone()
                    },
                }));
                continue;
            }
        }
        out.push(RequestedAction { kind, target });
    }
    out
}

/// What an action of `kind` asked for by a policy about `a` acts on: the security team for
/// `notify`; the bucket (and, for `remove_collaborator`, the foreign account or principal
/// granted access) for bucket actions; the acting principal otherwise.
pub fn action_target(kind: ActionKind, a: &Activity) -> Target {
    let account_id = a.account_id.clone().or(a.principal.account_id.clone());
    match kind {
        ActionKind::Notify => security_team(),
        ActionKind::MakeBucketPrivate | ActionKind::RemoveCollaborator => {
            let bucket = a
                .request_parameters
                .as_ref()
                .and_then(|p| p.get("bucketName"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| {
                    a.resources
                        .iter()
                        .find(|r| r.kind == kinds::S3_BUCKET)
                        .map(|r| r.id.trim_start_matches("arn:aws:s3:::").to_string())
                })
                .unwrap_or_default();
            let foreign = a
                .principal
                .account_id
                .as_ref()
                .filter(|acct| a.account_id.as_ref().is_some_and(|own| own != *acct));
            Target {
                kind: kinds::S3_BUCKET.into(),
                id: bucket,
                account_id: a.account_id.clone(),
                grantee: (kind == ActionKind::RemoveCollaborator).then(|| {
                    foreign
                        .cloned()
                        .or_else(|| a.principal.arn.clone())
                        .unwrap_or_else(|| a.principal.key())
                }),
            }
        }
        _ => Target {
            kind: kinds::PRINCIPAL.into(),
            id: a.principal.arn.clone().unwrap_or_else(|| a.principal.key()),
            account_id,
            grantee: None,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn acting(identity: serde_json::Value) -> Activity {
        let record = serde_json::json!({
            "eventTime": "2024-05-01T10:00:00Z", "eventSource": "s3.amazonaws.com",
            "eventName": "PutBucketAcl", "recipientAccountId": "1", "userIdentity": identity,
        });
        trailguard_ingest::normalize::normalize(&record.to_string()).unwrap()
    }

    /// An allow-list names an actor by id when AWS or the identity provider vouches for it; a
    /// session merely named like a listed person's e-mail is not that person.
    #[test]
    fn allow_lists_match_vouched_actors_only() {
        let sso = acting(serde_json::json!({
            "type": "AssumedRole", "accountId": "1",
            "arn": "arn:aws:sts::1:assumed-role/AWSReservedSSO_Admin_0123456789abcdef/Alice",
            "sessionContext": {"sessionIssuer": {"type": "Role",
                "arn": "arn:aws:iam::1:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123456789abcdef"}}
        }));
        assert!(allowed(&["person:alice".into()], &sso));
        assert!(allowed(&["person:Alice".into()], &sso));
        assert!(!allowed(&["person:bob".into()], &sso));
        let named = acting(serde_json::json!({
            "type": "AssumedRole", "accountId": "1",
            "arn": "arn:aws:sts::1:assumed-role/AnyRole/alice@example.com"
        }));
        assert_eq!(named.actor.id, "person:alice@example.com");
        assert!(!allowed(&["person:alice@example.com".into()], &named));
        let chosen = acting(serde_json::json!({
            "type": "AssumedRole", "accountId": "1",
            "arn": "arn:aws:sts::1:assumed-role/AnyRole/botocore-session-1",
            "sessionContext": {"sourceIdentity": "alice"}
        }));
        assert_eq!(chosen.actor.id, "person:alice");
        assert!(!allowed(&["person:alice".into()], &chosen));
        // Its own ARN, or its role, still match as before.
        assert!(allowed(
            &["arn:aws:sts::1:assumed-role/AnyRole/alice@example.com".into()],
            &named
        ));
        let role = acting(serde_json::json!({
            "type": "AssumedRole", "accountId": "1",
            "arn": "arn:aws:sts::1:assumed-role/ci-deploy/GitHubActions"
        }));
        assert!(allowed(&["arn:aws:iam::1:role/ci-deploy".into()], &role));
    }

    /// A bare name is an IAM user's: AWS vouches for a user's name, while a federated user's
    /// name (`GetFederationToken`) and a session's are whatever their caller chose.
    #[test]
    fn bare_names_match_iam_users_only() {
        let user = acting(serde_json::json!({
            "type": "IAMUser", "accountId": "1", "userName": "ci-deployer",
            "arn": "arn:aws:iam::1:user/ci-deployer"
        }));
        assert!(allowed(&["ci-deployer".into()], &user));
        let federated = acting(serde_json::json!({
            "type": "FederatedUser", "accountId": "1",
            "arn": "arn:aws:sts::1:federated-user/ci-deployer",
            "sessionContext": {"sessionIssuer": {"type": "IAMUser",
                "arn": "arn:aws:iam::1:user/mallory", "userName": "mallory"}}
        }));
        assert!(!allowed(&["ci-deployer".into()], &federated));
        let session = acting(serde_json::json!({
            "type": "AssumedRole", "accountId": "1",
            "arn": "arn:aws:sts::1:assumed-role/Dev/ci-deployer",
            "sessionContext": {"sessionIssuer": {"type": "Role",
                "arn": "arn:aws:iam::1:role/Dev", "userName": "Dev"}}
        }));
        assert!(!allowed(&["ci-deployer".into()], &session));
        assert!(!allowed(&["Dev/ci-deployer".into()], &session));
        // The session's full ARN and its role's still match.
        assert!(allowed(
            &["arn:aws:sts::1:assumed-role/Dev/ci-deployer".into()],
            &session
        ));
        assert!(allowed(&["arn:aws:iam::1:role/Dev".into()], &session));
    }
}
