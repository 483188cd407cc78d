//! The identity actions: "require the user to sign in again" and "suspend the user", with their
//! undo. The pure half (which principal, which policy documents) is unit-tested; the IAM half
//! is tested against moto.
//!
//! - **require_sign_in** puts an inline deny-all policy conditioned on `aws:TokenIssueTime`
//!   being older than now — on the user, or on the role of an assumed-role session (the pattern
//!   of IAM's "revoke active sessions") — and, for a user with a console password, sets
//!   password-reset-required. Sessions and console sign-ins from before the action stop
//!   working; new ones work. Long-term access keys carry no token issue time and are not
//!   affected: suspend the user for that.
//! - **suspend_user** puts an inline deny-all policy and deactivates every active access key:
//!   both undone exactly. The console password is kept by default — the deny-all policy stops
//!   every console action — because deleting it cannot be undone (IAM never reveals
//!   passwords); `remediate.suspend_deletes_console_password = true` deletes it too, and the
//!   record says the step is irreversible. Roles are not suspended (that would stop every user
//!   of the role): a role session gets `require_sign_in` instead.
//!
//! Every change is idempotent (inline policies are put by fixed name; deactivating an inactive
//! key or deleting a missing login profile is a no-op), so a retried action does no harm. The
//! prior state is recorded as undo data: inline policies that existed under our names, the keys
//! that were active, and whether a password reset was already required. A deleted console
//! password cannot be restored (IAM never reveals passwords): undo says so, and an
//! administrator sets a new one.

use crate::intent::{Intent, Unrecorded};
use crate::ActionError;
use aws_sdk_iam::error::ProvideErrorMetadata;
use aws_sdk_iam::operation::RequestId;
use aws_sdk_iam::types::StatusType;
use aws_sdk_iam::Client;
use serde_json::{json, Value};
use trailguard_common::aws::CallError;
use trailguard_common::contract::{ActionOutcome, ActionStep};

/// Name of the inline policy that revokes older sessions.
pub const REVOKE_POLICY: &str = "TrailguardRevokeOlderSessions";
/// Name of the inline deny-all policy of a suspended user.
pub const SUSPEND_POLICY: &str = "TrailguardSuspended";

pub use crate::identity::Identity;

/// The revoke-older-sessions policy document: deny everything to credentials issued before
/// `now` (RFC 3339).
pub fn revoke_document(now: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "TrailguardRevokeOlderSessions",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": now}}
        }]
    })
}

/// The deny-all policy document of a suspended user.
pub fn suspend_document() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{"Sid": "TrailguardSuspended", "Effect": "Deny", "Action": "*", "Resource": "*"}]
    })
}

/// What an identity action did.
pub type IamResult = crate::ActionResult;

fn failed(why: impl Into<ActionError>, steps: Vec<ActionStep>, undo: Option<Value>) -> IamResult {
    IamResult::failed(why.into(), steps, undo)
}

/// URL-decodes a policy document as IAM returns it.
fn decode_document(text: &str) -> Value {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or(Value::String(decoded.into_owned()))
}

/// The inline policy `name` of `who`, if it exists.
async fn get_inline(
    client: &Client,
    who: &Identity,
    name: &str,
) -> Result<Option<Value>, ActionError> {
    match who {
        Identity::User { name: user, .. } => {
            match client
                .get_user_policy()
                .user_name(user)
                .policy_name(name)
                .send()
                .await
            {
                Ok(out) => Ok(Some(decode_document(out.policy_document()))),
                Err(e) if e.code() == Some("NoSuchEntity") => Ok(None),
                Err(e) => Err(CallError::of("iam:GetUserPolicy", &e).into()),
            }
        }
        Identity::Role { name: role, .. } => {
            match client
                .get_role_policy()
                .role_name(role)
                .policy_name(name)
                .send()
                .await
            {
                Ok(out) => Ok(Some(decode_document(out.policy_document()))),
                Err(e) if e.code() == Some("NoSuchEntity") => Ok(None),
                Err(e) => Err(CallError::of("iam:GetRolePolicy", &e).into()),
            }
        }
        Identity::Root { .. } => Ok(None),
    }
}

async fn put_inline(
    client: &Client,
    who: &Identity,
    name: &str,
    document: &Value,
) -> Result<ActionStep, ActionError> {
    let (call, request_id) = match who {
        Identity::User { name: user, .. } => (
            "iam:PutUserPolicy",
            client
                .put_user_policy()
                .user_name(user)
                .policy_name(name)
                .policy_document(document.to_string())
                .send()
                .await
                .map_err(|e| CallError::of("iam:PutUserPolicy", &e))?
                .request_id()
                .map(str::to_string),
        ),
        Identity::Role { name: role, .. } => (
            "iam:PutRolePolicy",
            client
                .put_role_policy()
                .role_name(role)
                .policy_name(name)
                .policy_document(document.to_string())
                .send()
                .await
                .map_err(|e| CallError::of("iam:PutRolePolicy", &e))?
                .request_id()
                .map(str::to_string),
        ),
        Identity::Root { .. } => return Err("the root user is never changed".into()),
    };
    Ok(ActionStep {
        call: call.into(),
        description: format!("put inline policy {name}"),
        request_id,
    })
}

async fn delete_inline(
    client: &Client,
    who: &Identity,
    name: &str,
) -> Result<ActionStep, ActionError> {
    let (call, result) = match who {
        Identity::User { name: user, .. } => (
            "iam:DeleteUserPolicy",
            client
                .delete_user_policy()
                .user_name(user)
                .policy_name(name)
                .send()
                .await
                .map(|o| o.request_id().map(str::to_string))
                .map_err(|e| CallError::of("iam:DeleteUserPolicy", &e)),
        ),
        Identity::Role { name: role, .. } => (
            "iam:DeleteRolePolicy",
            client
                .delete_role_policy()
                .role_name(role)
                .policy_name(name)
                .send()
                .await
                .map(|o| o.request_id().map(str::to_string))
                .map_err(|e| CallError::of("iam:DeleteRolePolicy", &e)),
        ),
        Identity::Root { .. } => return Err("the root user is never changed".into()),
    };
    let request_id = match result {
        Ok(id) => id,
        Err(e) if e.is("NoSuchEntity") => None,
        Err(e) => return Err(e.into()),
    };
    Ok(ActionStep {
        call: call.into(),
        description: format!("delete inline policy {name}"),
        request_id,
    })
}

/// `Some(password_reset_required)` when the user has a console password.
async fn login_profile(client: &Client, user: &str) -> Result<Option<bool>, ActionError> {
    match client.get_login_profile().user_name(user).send().await {
        Ok(out) => Ok(Some(
            out.login_profile()
                .map(|p| p.password_reset_required())
                .unwrap_or(false),
        )),
        Err(e) if e.code() == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(CallError::of("iam:GetLoginProfile", &e).into()),
    }
}

async fn set_password_reset(
    client: &Client,
    user: &str,
    required: bool,
) -> Result<ActionStep, ActionError> {
    let out = client
        .update_login_profile()
        .user_name(user)
        .password_reset_required(required)
        .send()
        .await
        .map_err(|e| CallError::of("iam:UpdateLoginProfile", &e))?;
    Ok(ActionStep {
        call: "iam:UpdateLoginProfile".into(),
        description: format!("set password-reset-required to {required}"),
        request_id: out.request_id().map(str::to_string),
    })
}

async fn set_key_status(
    client: &Client,
    user: &str,
    key: &str,
    status: StatusType,
) -> Result<ActionStep, ActionError> {
    let verb = if status == StatusType::Active {
        "reactivate"
    } else {
        "deactivate"
    };
    let out = client
        .update_access_key()
        .user_name(user)
        .access_key_id(key)
        .status(status)
        .send()
        .await
        .map_err(|e| CallError::of("iam:UpdateAccessKey", &e))?;
    Ok(ActionStep {
        call: "iam:UpdateAccessKey".into(),
        description: format!("{verb} access key {key}"),
        request_id: out.request_id().map(str::to_string),
    })
}

fn step(call: &str, description: String) -> ActionStep {
    ActionStep {
        call: call.into(),
        description,
        request_id: None,
    }
}

/// Revokes `who`'s sessions issued before `now`, and for a user with a console password,
/// requires a new password. With `dry_run`, reads and describes but changes nothing.
pub async fn require_sign_in(
    client: &Client,
    who: &Identity,
    now: &str,
    dry_run: bool,
) -> IamResult {
    require_sign_in_recorded(client, who, now, dry_run, &Unrecorded).await
}

/// [`require_sign_in`], handing the prior state to `intent` before the first change.
pub async fn require_sign_in_recorded(
    client: &Client,
    who: &Identity,
    now: &str,
    dry_run: bool,
    intent: &dyn Intent,
) -> IamResult {
    if let Identity::Root { .. } = who {
        return failed("the root user is never changed", Vec::new(), None);
    }
    let prior_policy = match get_inline(client, who, REVOKE_POLICY).await {
        Ok(p) => p,
        Err(e) => return failed(e, Vec::new(), None),
    };
    let prior_reset = match who {
        Identity::User { name, .. } => match login_profile(client, name).await {
            Ok(p) => p,
            Err(e) => return failed(e, Vec::new(), None),
        },
        _ => None,
    };
    let undo = json!({
        "identity": identity_json(who),
        "policy_name": REVOKE_POLICY,
        "prior_policy": prior_policy,
        "prior_password_reset_required": prior_reset,
    });
    let what = describe(who);
    let put_call = if matches!(who, Identity::User { .. }) {
        "iam:PutUserPolicy"
    } else {
        "iam:PutRolePolicy"
    };
    let mut planned = vec![step(
        put_call,
        format!("put inline policy {REVOKE_POLICY}: deny all to credentials issued before {now}"),
    )];
    let needs_reset = prior_reset == Some(false);
    if needs_reset {
        planned.push(step(
            "iam:UpdateLoginProfile",
            "set password-reset-required to true".into(),
        ));
    }
    if dry_run {
        return IamResult {
            outcome: ActionOutcome::DryRun,
            detail: format!("would revoke the sessions of {what} issued before {now}"),
            steps: planned,
            undo: Some(undo),
            retryable: false,
        };
    }
    if !intent.record(&undo, &planned).await {
        return failed(ActionError::NotRecorded, Vec::new(), None);
    }
    let mut steps = Vec::new();
    match put_inline(client, who, REVOKE_POLICY, &revoke_document(now)).await {
        Ok(s) => steps.push(s),
        Err(e) => return failed(e, steps, Some(undo)),
    }
    if needs_reset {
        if let Identity::User { name, .. } = who {
            match set_password_reset(client, name, true).await {
                Ok(s) => steps.push(s),
                Err(e) => return failed(e.noting(" (after revoking sessions)"), steps, Some(undo)),
            }
        }
    }
    IamResult {
        outcome: ActionOutcome::Applied,
        detail: format!(
            "revoked the sessions of {what} issued before {now}{}",
            if needs_reset {
                "; a new console password is required"
            } else {
                ""
            }
        ),
        steps,
        undo: Some(undo),
        retryable: false,
    }
}

/// Suspends an IAM user: a deny-all inline policy and every active key deactivated; with
/// `delete_console_password`, the console password deleted too (irreversible). With
/// `dry_run`, reads and describes but changes nothing.
pub async fn suspend_user(
    client: &Client,
    who: &Identity,
    dry_run: bool,
    delete_console_password: bool,
) -> IamResult {
    suspend_user_recorded(client, who, dry_run, delete_console_password, &Unrecorded).await
}

/// [`suspend_user`], handing the prior state to `intent` before the first change.
pub async fn suspend_user_recorded(
    client: &Client,
    who: &Identity,
    dry_run: bool,
    delete_console_password: bool,
    intent: &dyn Intent,
) -> IamResult {
    let Identity::User { name, .. } = who else {
        return failed(
            format!(
                "{} is not an IAM user; suspending a role would stop every user of it — use require_sign_in",
                describe(who)
            ),
            Vec::new(),
            None,
        );
    };
    let keys = match client.list_access_keys().user_name(name).send().await {
        Ok(out) => out
            .access_key_metadata()
            .iter()
            .filter(|k| k.status() == Some(&StatusType::Active))
            .filter_map(|k| k.access_key_id().map(str::to_string))
            .collect::<Vec<_>>(),
        Err(e) => return failed(CallError::of("iam:ListAccessKeys", &e), Vec::new(), None),
    };
    let has_console = match login_profile(client, name).await {
        Ok(p) => p.is_some(),
        Err(e) => return failed(e, Vec::new(), None),
    };
    let delete_console = has_console && delete_console_password;
    let prior_policy = match get_inline(client, who, SUSPEND_POLICY).await {
        Ok(p) => p,
        Err(e) => return failed(e, Vec::new(), None),
    };
    let undo = json!({
        "identity": identity_json(who),
        "policy_name": SUSPEND_POLICY,
        "prior_policy": prior_policy,
        "active_keys": keys,
        "had_console_password": delete_console,
    });
    let mut planned: Vec<ActionStep> = keys
        .iter()
        .map(|k| step("iam:UpdateAccessKey", format!("deactivate access key {k}")))
        .collect();
    if delete_console {
        planned.push(step(
            "iam:DeleteLoginProfile",
            "delete the console password (irreversible)".into(),
        ));
    }
    planned.push(step(
        "iam:PutUserPolicy",
        format!("put inline deny-all policy {SUSPEND_POLICY}"),
    ));
    if dry_run {
        return IamResult {
            outcome: ActionOutcome::DryRun,
            detail: format!("would suspend user {name} ({} changes)", planned.len()),
            steps: planned,
            undo: Some(undo),
            retryable: false,
        };
    }
    if !intent.record(&undo, &planned).await {
        return failed(ActionError::NotRecorded, Vec::new(), None);
    }
    let mut steps = Vec::new();
    // Deny first: it takes effect for keys and sessions alike while the rest proceeds. If it
    // cannot be put, the keys and the password are still taken away, and the result says so.
    let mut deny_error = None;
    match put_inline(client, who, SUSPEND_POLICY, &suspend_document()).await {
        Ok(s) => steps.push(s),
        Err(e) => deny_error = Some(e),
    }
    for key in &keys {
        match set_key_status(client, name, key, StatusType::Inactive).await {
            Ok(step) => steps.push(step),
            Err(e) => return failed(e, steps, Some(undo)),
        }
    }
    if delete_console {
        match client.delete_login_profile().user_name(name).send().await {
            Ok(out) => steps.push(ActionStep {
                call: "iam:DeleteLoginProfile".into(),
                description: "delete the console password (irreversible)".into(),
                request_id: out.request_id().map(str::to_string),
            }),
            Err(e) if e.code() == Some("NoSuchEntity") => {}
            Err(e) => {
                return failed(
                    CallError::of("iam:DeleteLoginProfile", &e),
                    steps,
                    Some(undo),
                )
            }
        }
    }
    if let Some(e) = deny_error {
        let note = if delete_console {
            " (the keys were deactivated and the password deleted all the same)"
        } else {
            " (the keys were deactivated all the same)"
        };
        return failed(e.noting(note), steps, Some(undo));
    }
    IamResult {
        outcome: ActionOutcome::Applied,
        detail: format!(
            "suspended user {name}: {} access key(s) deactivated, deny-all policy attached{}",
            keys.len(),
            match (has_console, delete_console) {
                (_, true) => "; console password deleted (irreversible: undo cannot restore it)",
                (true, false) =>
                    "; console password kept (the deny-all policy stops every console action)",
                (false, false) => "",
            }
        ),
        steps,
        undo: Some(undo),
        retryable: false,
    }
}

fn describe(who: &Identity) -> String {
    match who {
        Identity::User { account, name } => format!("user {name} in {account}"),
        Identity::Role { account, name } => format!("role {name} in {account}"),
        Identity::Root { account } => format!("the root user of {account}"),
    }
}

fn identity_json(who: &Identity) -> Value {
    match who {
        Identity::User { account, name } => {
            json!({"kind": "user", "account": account, "name": name})
        }
        Identity::Role { account, name } => {
            json!({"kind": "role", "account": account, "name": name})
        }
        Identity::Root { account } => json!({"kind": "root", "account": account}),
    }
}

fn identity_from_undo(undo: &Value) -> Result<Identity, ActionError> {
    let id = &undo["identity"];
    let account = id["account"].as_str().unwrap_or_default().to_string();
    let name = id["name"].as_str().unwrap_or_default().to_string();
    match id["kind"].as_str() {
        Some("user") if !name.is_empty() => Ok(Identity::User { account, name }),
        Some("role") if !name.is_empty() => Ok(Identity::Role { account, name }),
        _ => Err("the undo data names no user or role".into()),
    }
}

/// The value of the tag `key` on the IAM user `who` (iam:ListUserTags), if it has one.
pub async fn user_tag(
    client: &Client,
    who: &Identity,
    key: &str,
) -> Result<Option<String>, trailguard_common::aws::CallError> {
    let Identity::User { name, .. } = who else {
        return Ok(None);
    };
    let out = client
        .list_user_tags()
        .user_name(name)
        .send()
        .await
        .map_err(|e| trailguard_common::aws::CallError::of("iam:ListUserTags", &e))?;
    Ok(out
        .tags()
        .iter()
        .find(|t| t.key() == key)
        .map(|t| t.value().to_string()))
}

/// The ARN of the user or role `who` as IAM has it, path included (iam:GetUser, iam:GetRole):
/// what a role session's ARN, or a user named without its path, does not say. `None` for the
/// root user.
pub async fn principal_arn(
    client: &Client,
    who: &Identity,
) -> Result<Option<String>, trailguard_common::aws::CallError> {
    match who {
        Identity::User { name, .. } => {
            let out = client
                .get_user()
                .user_name(name)
                .send()
                .await
                .map_err(|e| trailguard_common::aws::CallError::of("iam:GetUser", &e))?;
            Ok(out.user().map(|u| u.arn().to_string()))
        }
        Identity::Role { name, .. } => {
            let out = client
                .get_role()
                .role_name(name)
                .send()
                .await
                .map_err(|e| trailguard_common::aws::CallError::of("iam:GetRole", &e))?;
            Ok(out.role().map(|r| r.arn().to_string()))
        }
        Identity::Root { .. } => Ok(None),
    }
}

/// Undoes `require_sign_in` or `suspend_user` of `target` from its undo data; refuses undo
/// data that names another principal than the action's target.
pub async fn undo(client: &Client, target: &Identity, undo: &Value) -> IamResult {
    let who = match identity_from_undo(undo) {
        Ok(w) => w,
        Err(e) => return failed(e, Vec::new(), None),
    };
    if &who != target {
        return failed(
            format!(
                "the undo data names {}, not the action's target {}",
                describe(&who),
                describe(target)
            ),
            Vec::new(),
            None,
        );
    }
    let policy_name = undo["policy_name"].as_str().unwrap_or_default();
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    // The inline policy: put back what was there, or remove ours.
    let restored = match &undo["prior_policy"] {
        Value::Null => delete_inline(client, &who, policy_name).await,
        prior => put_inline(client, &who, policy_name, prior).await,
    };
    match restored {
        Ok(s) => steps.push(s),
        Err(e) => return failed(e, steps, None),
    }
    if let Identity::User { name, .. } = &who {
        for key in undo["active_keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            match set_key_status(client, name, key, StatusType::Active).await {
                Ok(step) => steps.push(step),
                // Deleted since: nothing to reactivate; the rest of the undo still applies.
                Err(e) if e.is("NoSuchEntity") => {
                    notes.push(format!("access key {key} no longer exists"))
                }
                Err(e) => return failed(e, steps, None),
            }
        }
        if undo["prior_password_reset_required"] == Value::Bool(false) {
            match set_password_reset(client, name, false).await {
                Ok(s) => steps.push(s),
                // The console password is gone since (deleted by someone): nothing to reset.
                Err(e) if e.is("NoSuchEntity") => {
                    notes.push(format!("{name} has no console password any more"))
                }
                Err(e) => return failed(e, steps, None),
            }
        }
        if undo["had_console_password"] == Value::Bool(true) {
            notes.push(format!(
                "the console password was deleted and cannot be restored: an administrator must set a new one for {name}"
            ));
        }
    }
    IamResult {
        outcome: ActionOutcome::Applied,
        detail: format!(
            "restored {} ({} change(s)){}",
            describe(&who),
            steps.len(),
            notes.iter().map(|n| format!("; {n}")).collect::<String>()
        ),
        steps,
        undo: None,
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse() {
        assert_eq!(
            Identity::parse("arn:aws:iam::111111111111:user/dev/alice"),
            Ok(Identity::User {
                account: "111111111111".into(),
                name: "alice".into()
            })
        );
        assert_eq!(
            Identity::parse("arn:aws:sts::111111111111:assumed-role/Admin/alice@example.com"),
            Ok(Identity::Role {
                account: "111111111111".into(),
                name: "Admin".into()
            })
        );
        assert_eq!(
            Identity::parse("arn:aws:iam::111111111111:role/service/ci"),
            Ok(Identity::Role {
                account: "111111111111".into(),
                name: "ci".into()
            })
        );
        assert_eq!(
            Identity::parse("arn:aws:iam::111111111111:root"),
            Ok(Identity::Root {
                account: "111111111111".into()
            })
        );
        for bad in [
            "alice",
            "arn:aws:iam::1:group/admins",
            "arn:aws:sts::1:federated-user/bob",
            "arn:aws:sts::1:assumed-role/",
            "arn:aws:iam::1:user/",
            // An account that is not one (a crafted record's ARN): read as empty, it would be
            // acted on in remediate's own account, where none of the name protections of
            // another account apply.
            "arn:aws:iam:::user/alice",
            "arn:aws:sts:::assumed-role/trailguard-remediate/x",
            "arn:aws:iam:::root",
            "arn:aws:iam::11111111111:user/alice",
            "arn:aws:iam::1111111111111:user/alice",
            "arn:aws:iam::11111111111a:user/alice",
            "arn::iam::111111111111:user/alice",
            "arn:gcp:iam::111111111111:user/alice",
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Identity::parse("arn:aws-us-gov:iam::111111111111:user/alice"),
            Ok(Identity::User {
                account: "111111111111".into(),
                name: "alice".into()
            })
        );
    }

    #[test]
    fn revoke_document_denies_older_tokens_only() {
        let doc = revoke_document("2026-11-30T05:00:00Z");
        let st = &doc["Statement"][0];
        assert_eq!(st["Effect"], "Deny");
        assert_eq!(st["Action"], "*");
        assert_eq!(
            st["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2026-11-30T05:00:00Z"
        );
    }

    #[test]
    fn policy_documents_decode_from_iam_url_encoding() {
        let text = "%7B%22Version%22%3A%222012-10-17%22%7D";
        assert_eq!(decode_document(text), json!({"Version": "2012-10-17"}));
        assert_eq!(decode_document("{\"a\":1}"), json!({"a": 1}));
    }
}
