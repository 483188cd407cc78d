//! Remediate's actions against moto, asserting the resulting AWS state: require sign-in again,
//! suspend a user, remove a collaborator, make a bucket private — each in dry-run (nothing
//! changes), applied, and undone. Then the service end to end: forged and unsigned alerts are
//! rejected and recorded, protected principals refused, a genuine alert applied, and
//! `remediate undo` restores the user. Webhook notifications go to a local HTTP server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use aws_sdk_iam::types::StatusType;
use serde_json::{json, Value};
use trailguard_common::contract::{
    ActionKind, ActionOutcome, ActionRecord, RequestedAction, Target,
};
use trailguard_common::Alert;
use trailguard_remediate::bucket;
use trailguard_remediate::iam::{self, Identity, REVOKE_POLICY, SUSPEND_POLICY};
use trailguard_remediate::notify::{ChannelConfig, ChannelKind, Notifier, NotifyConfig};
use trailguard_tests::{
    aws_endpoint, iam as iam_client, produce, s3, signed, unique, wait_for_topic, Run,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const ACCOUNT: &str = "123456789012";

/// A user with two access keys (the second already inactive) and a console password.
async fn user_with_keys(client: &aws_sdk_iam::Client, name: &str) -> Result<Vec<String>> {
    client.create_user().user_name(name).send().await?;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let key = client.create_access_key().user_name(name).send().await?;
        keys.push(key.access_key().context("key")?.access_key_id().to_string());
    }
    client
        .update_access_key()
        .user_name(name)
        .access_key_id(&keys[1])
        .status(StatusType::Inactive)
        .send()
        .await?;
    client
        .create_login_profile()
        .user_name(name)
        .password("Correct-Horse-Battery-9")
        .password_reset_required(false)
        .send()
        .await?;
    Ok(keys)
}

async fn key_states(client: &aws_sdk_iam::Client, name: &str) -> Result<Vec<(String, String)>> {
    let out = client.list_access_keys().user_name(name).send().await?;
    let mut states: Vec<(String, String)> = out
        .access_key_metadata()
        .iter()
        .map(|k| {
            (
                k.access_key_id().unwrap_or_default().to_string(),
                k.status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    states.sort();
    Ok(states)
}

async fn inline_policy(
    client: &aws_sdk_iam::Client,
    user: &str,
    name: &str,
) -> Result<Option<Value>> {
    match client
        .get_user_policy()
        .user_name(user)
        .policy_name(name)
        .send()
        .await
    {
        Ok(out) => {
            let text = out.policy_document();
            let decoded = percent_decode(text);
            Ok(Some(serde_json::from_str(&decoded)?))
        }
        Err(e) if format!("{e:?}").contains("NoSuchEntity") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// `Some(password_reset_required)` when the user has a console password.
async fn console(client: &aws_sdk_iam::Client, user: &str) -> Result<Option<bool>> {
    match client.get_login_profile().user_name(user).send().await {
        Ok(out) => Ok(Some(
            out.login_profile()
                .map(|p| p.password_reset_required())
                .unwrap_or(false),
        )),
        Err(e) if format!("{e:?}").contains("NoSuchEntity") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn require_sign_in_revokes_sessions_and_undo_restores() -> Result<()> {
    let client = iam_client().await?;
    let name = unique("alice");
    user_with_keys(&client, &name).await?;
    let who = Identity::User {
        account: ACCOUNT.into(),
        name: name.clone(),
    };
    let now = "2026-11-30T05:00:00Z";

    let dry = iam::require_sign_in(&client, &who, now, true).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    assert_eq!(dry.steps.len(), 2, "policy and password reset planned");
    assert_eq!(
        inline_policy(&client, &name, REVOKE_POLICY).await?,
        None,
        "dry-run changed nothing"
    );
    assert_eq!(console(&client, &name).await?, Some(false));

    let applied = iam::require_sign_in(&client, &who, now, false).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    let policy = inline_policy(&client, &name, REVOKE_POLICY)
        .await?
        .context("revoke policy")?;
    assert_eq!(policy["Statement"][0]["Effect"], "Deny");
    assert_eq!(
        policy["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        now
    );
    // The password reset was requested. (moto's UpdateLoginProfile without a password clears
    // the password, unlike IAM, which keeps it; so the profile is not read back here.)
    let reset = applied
        .steps
        .iter()
        .find(|s| s.call == "iam:UpdateLoginProfile")
        .context("password reset step")?;
    assert!(reset.request_id.is_some(), "the call was made");
    assert_eq!(
        applied.undo.as_ref().context("undo")?["prior_password_reset_required"],
        false
    );

    let undone = iam::undo(&client, &who, applied.undo.as_ref().context("undo data")?).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(inline_policy(&client, &name, REVOKE_POLICY).await?, None);

    // A role session: the policy goes on the role.
    let role = unique("ops");
    client
        .create_role()
        .role_name(&role)
        .assume_role_policy_document(
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}, "Action": "sts:AssumeRole"}]}).to_string(),
        )
        .send()
        .await?;
    let session = Identity::parse(&format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/alice"))
        .map_err(anyhow::Error::msg)?;
    let on_role = iam::require_sign_in(&client, &session, now, false).await;
    assert_eq!(
        on_role.outcome,
        ActionOutcome::Applied,
        "{}",
        on_role.detail
    );
    let out = client
        .get_role_policy()
        .role_name(&role)
        .policy_name(REVOKE_POLICY)
        .send()
        .await?;
    assert!(percent_decode(out.policy_document()).contains("aws:TokenIssueTime"));
    // Suspending a role is refused: it would stop every user of it.
    let refused = iam::suspend_user(&client, &session, false, false).await;
    assert_eq!(refused.outcome, ActionOutcome::Failed);
    assert!(
        refused.detail.contains("require_sign_in"),
        "{}",
        refused.detail
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_user_disables_everything_and_undo_restores_keys() -> Result<()> {
    let client = iam_client().await?;
    let name = unique("bob");
    let keys = user_with_keys(&client, &name).await?;
    let who = Identity::User {
        account: ACCOUNT.into(),
        name: name.clone(),
    };
    let before = key_states(&client, &name).await?;

    let dry = iam::suspend_user(&client, &who, true, false).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    assert_eq!(
        key_states(&client, &name).await?,
        before,
        "dry-run changed nothing"
    );
    assert_eq!(console(&client, &name).await?, Some(false));

    let applied = iam::suspend_user(&client, &who, false, false).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert!(key_states(&client, &name)
        .await?
        .iter()
        .all(|(_, s)| s == "Inactive"));
    // The password is kept by default: deleting it could not be undone.
    assert_eq!(
        console(&client, &name).await?,
        Some(false),
        "console password kept"
    );
    assert!(
        applied.detail.contains("console password kept"),
        "{}",
        applied.detail
    );
    let deny = inline_policy(&client, &name, SUSPEND_POLICY)
        .await?
        .context("deny-all")?;
    assert_eq!(deny["Statement"][0]["Effect"], "Deny");
    assert_eq!(deny["Statement"][0]["Action"], "*");
    let undo_data = applied.undo.clone().context("undo data")?;
    assert_eq!(
        undo_data["active_keys"],
        json!([keys[0]]),
        "only the active key is recorded"
    );

    // Applying again is harmless (idempotent).
    let again = iam::suspend_user(&client, &who, false, false).await;
    assert_eq!(again.outcome, ActionOutcome::Applied, "{}", again.detail);

    // Undo restores exactly what was there.
    let undone = iam::undo(&client, &who, &undo_data).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(
        key_states(&client, &name).await?,
        before,
        "the active key is active again, the inactive one stays so"
    );
    assert_eq!(inline_policy(&client, &name, SUSPEND_POLICY).await?, None);
    assert_eq!(console(&client, &name).await?, Some(false));
    assert!(
        !undone.detail.contains("cannot be restored"),
        "{}",
        undone.detail
    );

    // Deleting the password is opt-in, and the record says it is irreversible.
    let carol = unique("carol");
    user_with_keys(&client, &carol).await?;
    let carol_who = Identity::User {
        account: ACCOUNT.into(),
        name: carol.clone(),
    };
    let hard = iam::suspend_user(&client, &carol_who, false, true).await;
    assert_eq!(hard.outcome, ActionOutcome::Applied, "{}", hard.detail);
    assert_eq!(
        console(&client, &carol).await?,
        None,
        "console password deleted"
    );
    assert!(hard.detail.contains("irreversible"), "{}", hard.detail);
    assert!(hard
        .steps
        .iter()
        .any(|s| s.call == "iam:DeleteLoginProfile" && s.description.contains("irreversible")));
    let hard_undo = hard.undo.clone().context("undo data")?;
    let undone = iam::undo(&client, &carol_who, &hard_undo).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert!(
        undone.detail.contains("cannot be restored"),
        "{}",
        undone.detail
    );
    Ok(())
}

const PARTNER_CANONICAL: &str = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be";

async fn shared_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Value> {
    client.create_bucket().bucket(bucket).send().await?;
    client
        .put_bucket_acl()
        .bucket(bucket)
        .grant_read(format!("id={PARTNER_CANONICAL}"))
        .grant_full_control(format!("id={}", owner_id(client, bucket).await?))
        .send()
        .await?;
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Partners", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::222222222222:root", "arn:aws:iam::444444444444:root"]}, "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
        {"Sid": "PartnerList", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")}
    ]});
    client
        .put_bucket_policy()
        .bucket(bucket)
        .policy(policy.to_string())
        .send()
        .await?;
    Ok(policy)
}

async fn owner_id(client: &aws_sdk_s3::Client, bucket: &str) -> Result<String> {
    let acl = client.get_bucket_acl().bucket(bucket).send().await?;
    Ok(acl
        .owner()
        .and_then(|o| o.id())
        .context("owner")?
        .to_string())
}

async fn grant_ids(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<String>> {
    let acl = client.get_bucket_acl().bucket(bucket).send().await?;
    let mut ids: Vec<String> = acl
        .grants()
        .iter()
        .filter_map(|g| g.grantee().and_then(|g| g.id()).map(str::to_string))
        .collect();
    ids.sort();
    Ok(ids)
}

async fn policy_of(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Option<Value>> {
    match client.get_bucket_policy().bucket(bucket).send().await {
        Ok(out) => Ok(Some(serde_json::from_str(out.policy().context("policy")?)?)),
        Err(e) if format!("{e:?}").contains("NoSuchBucketPolicy") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_collaborator_from_policy_and_acl_and_undo() -> Result<()> {
    let client = s3().await?;
    let bucket = unique("shared");
    let policy = shared_bucket(&client, &bucket).await?;
    let acl_before = grant_ids(&client, &bucket).await?;
    assert!(acl_before.contains(&PARTNER_CANONICAL.to_string()));

    let dry = bucket::remove_collaborator(&client, &bucket, "222222222222", true, |_| None).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    assert_eq!(
        policy_of(&client, &bucket).await?,
        Some(policy.clone()),
        "dry-run changed nothing"
    );

    // An account: out of both statements; the one it alone was in goes.
    let by_account =
        bucket::remove_collaborator(&client, &bucket, "222222222222", false, |_| None).await;
    assert_eq!(
        by_account.outcome,
        ActionOutcome::Applied,
        "{}",
        by_account.detail
    );
    let after = policy_of(&client, &bucket).await?.context("policy kept")?;
    let statements = after["Statement"].as_array().context("statements")?;
    assert_eq!(statements.len(), 1);
    assert_eq!(statements[0]["Sid"], "Partners");
    assert_eq!(
        statements[0]["Principal"]["AWS"],
        "arn:aws:iam::444444444444:root"
    );

    // A canonical user: out of the ACL, the owner's grant kept.
    let by_id =
        bucket::remove_collaborator(&client, &bucket, PARTNER_CANONICAL, false, |_| None).await;
    assert_eq!(by_id.outcome, ActionOutcome::Applied, "{}", by_id.detail);
    let acl_after = grant_ids(&client, &bucket).await?;
    assert!(!acl_after.contains(&PARTNER_CANONICAL.to_string()));
    assert!(acl_after.contains(&owner_id(&client, &bucket).await?));

    // Nothing left to remove.
    let none = bucket::remove_collaborator(&client, &bucket, "222222222222", false, |_| None).await;
    assert_eq!(
        none.outcome,
        ActionOutcome::AlreadyCompliant,
        "{}",
        none.detail
    );

    // Undo in reverse order restores both.
    let undo_acl = bucket::undo(&client, by_id.undo.as_ref().context("undo")?).await;
    assert_eq!(
        undo_acl.outcome,
        ActionOutcome::Applied,
        "{}",
        undo_acl.detail
    );
    assert_eq!(grant_ids(&client, &bucket).await?, acl_before);
    let undo_policy = bucket::undo(&client, by_account.undo.as_ref().context("undo")?).await;
    assert_eq!(
        undo_policy.outcome,
        ActionOutcome::Applied,
        "{}",
        undo_policy.detail
    );
    assert_eq!(policy_of(&client, &bucket).await?, Some(policy));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn make_private_undo_restores_the_public_bucket() -> Result<()> {
    let client = s3().await?;
    let bucket = unique("public");
    trailguard_tests::make_public_bucket(&client, &bucket).await?;
    let policy_before = policy_of(&client, &bucket).await?;
    let applied = bucket::make_private(&client, &bucket, false).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert_ne!(policy_of(&client, &bucket).await?, policy_before);
    let undone = bucket::undo(&client, applied.undo.as_ref().context("undo")?).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(policy_of(&client, &bucket).await?, policy_before);
    let acl = client.get_bucket_acl().bucket(&bucket).send().await?;
    assert!(acl
        .grants()
        .iter()
        .any(|g| g.grantee().and_then(|g| g.uri())
            == Some("http://acs.amazonaws.com/groups/global/AllUsers")));
    // No block was configured before: none after.
    assert!(client
        .get_public_access_block()
        .bucket(&bucket)
        .send()
        .await
        .is_err());
    Ok(())
}

fn suspend_alert(id: &str, user_arn: &str) -> Result<Alert> {
    let mut alert: Alert = serde_json::from_str(include_str!("alert.json"))?;
    alert.id = id.into();
    alert.policy_id = "terminated-user".into();
    alert.actions = vec![RequestedAction {
        kind: ActionKind::SuspendUser,
        target: Target {
            kind: "principal".into(),
            id: user_arn.into(),
            account_id: Some(ACCOUNT.into()),
            grantee: None,
        },
    }];
    Ok(alert)
}

fn records(topic: &str, at_least: usize) -> Result<Vec<ActionRecord>> {
    trailguard_tests::action_records(topic, at_least, TIMEOUT)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_authentic_alerts_are_acted_on_and_undo_restores() -> Result<()> {
    let run = Run::new("remediate-auth")?;
    let client = iam_client().await?;
    let mallory = unique("mallory");
    let keys = user_with_keys(&client, &mallory).await?;
    let guard = unique("break-glass");
    user_with_keys(&client, &guard).await?;
    let arn = |u: &str| format!("arn:aws:iam::{ACCOUNT}:user/{u}");
    let config = std::env::temp_dir().join(format!("{}.toml", run.id));
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n\
             [remediate]\ndefault_mode = \"auto\"\nprotected_principals = [\"arn:aws:iam::*:user/break-glass-*\"]\n",
            aws_endpoint()?
        ),
    )?;
    let config = config.to_str().context("path")?.to_string();
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    let actions = run.topic("actions");
    wait_for_topic(&alerts, TIMEOUT)?;

    // Forged (a guessed key), altered after signing, and unsigned: rejected, recorded, and
    // mallory keeps her keys.
    let mut forged = suspend_alert("alert-forged", &arn(&mallory))?;
    trailguard_common::sign::Signer::new(
        trailguard_tests::TEST_KEY_ID,
        "a guessed key, long enough to be accepted",
    )
    .sign(&mut forged);
    produce(&alerts, "k", &serde_json::to_vec(&forged)?).await?;
    let genuine_for_guard: Value =
        serde_json::from_slice(&signed(suspend_alert("alert-altered", &arn(&guard))?)?)?;
    let mut altered = genuine_for_guard.clone();
    altered["actions"][0]["target"]["id"] = Value::from(arn(&mallory));
    produce(&alerts, "k", &serde_json::to_vec(&altered)?).await?;
    produce(
        &alerts,
        "k",
        &serde_json::to_vec(&suspend_alert("alert-unsigned", &arn(&mallory))?)?,
    )
    .await?;
    let rejected = records(&actions, 3)?;
    assert_eq!(rejected.len(), 3);
    assert!(
        rejected
            .iter()
            .all(|r| r.outcome == ActionOutcome::Rejected),
        "{rejected:?}"
    );
    assert!(rejected.iter().any(|r| r.detail.contains("unsigned")));
    assert_eq!(
        rejected
            .iter()
            .filter(|r| r.detail.contains("does not match"))
            .count(),
        2
    );
    assert!(key_states(&client, &mallory)
        .await?
        .iter()
        .any(|(_, s)| s == "Active"));

    // A protected principal is refused; a genuine alert is applied.
    produce(
        &alerts,
        "k",
        &signed(suspend_alert("alert-guard", &arn(&guard))?)?,
    )
    .await?;
    produce(
        &alerts,
        "k",
        &signed(suspend_alert("alert-mallory", &arn(&mallory))?)?,
    )
    .await?;
    // 3 rejected, the guard refused, mallory started and applied.
    let all = records(&actions, 6)?;
    // The end of an action (after its `started` record, when it changed AWS).
    let of = |alert: &str| {
        all.iter()
            .rfind(|r| {
                r.alert_id == alert
                    && !matches!(r.outcome, ActionOutcome::Rejected | ActionOutcome::Started)
            })
            .cloned()
    };
    let guard_record = of("alert-guard").context("guard record")?;
    assert_eq!(guard_record.outcome, ActionOutcome::Refused);
    assert!(
        guard_record.detail.contains("protected"),
        "{}",
        guard_record.detail
    );
    assert!(key_states(&client, &guard)
        .await?
        .iter()
        .any(|(_, s)| s == "Active"));
    let applied = of("alert-mallory").context("mallory record")?;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert!(key_states(&client, &mallory)
        .await?
        .iter()
        .all(|(_, s)| s == "Inactive"));

    // Undo from the command line restores her key, records it, and will not run twice.
    let out = run
        .command("remediate", &["--config", &config, "undo", &applied.id])?
        .output()?;
    ensure!(
        out.status.success(),
        "undo: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let states = key_states(&client, &mallory).await?;
    assert!(
        states.contains(&(keys[0].clone(), "Active".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(keys[1].clone(), "Inactive".into())),
        "{states:?}"
    );
    let with_undo = records(&actions, 7)?;
    let undo_record = with_undo
        .iter()
        .find(|r| r.undo_of.as_deref() == Some(applied.id.as_str()))
        .context("undo record")?;
    assert_eq!(undo_record.outcome, ActionOutcome::Applied);
    let twice = run
        .command("remediate", &["--config", &config, "undo", &applied.id])?
        .output()?;
    assert!(!twice.status.success());
    assert!(String::from_utf8_lossy(&twice.stderr).contains("undone already"));
    Ok(())
}

/// Bodies a receiver got, with their paths.
type Bodies = Arc<Mutex<Vec<(String, Value)>>>;

/// A tiny webhook receiver: records every body; answers from a script of statuses (the last
/// one repeats).
async fn receiver(script: Vec<u16>) -> Result<(String, Bodies)> {
    use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
    type Shared = Arc<Mutex<(Vec<(String, Value)>, Vec<u16>)>>;
    let state: Shared = Arc::new(Mutex::new((Vec::new(), script)));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    async fn hook(
        State((state, seen)): State<(Shared, Bodies)>,
        uri: axum::http::Uri,
        Json(body): Json<Value>,
    ) -> StatusCode {
        let status = {
            let Ok(mut s) = state.lock() else {
                return StatusCode::INTERNAL_SERVER_ERROR;
            };
            let status = if s.1.len() > 1 {
                s.1.remove(0)
            } else {
                s.1.first().copied().unwrap_or(200)
            };
            s.0.push((uri.path().to_string(), body.clone()));
            status
        };
        if let Ok(mut v) = seen.lock() {
            v.push((uri.path().to_string(), body));
        }
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
    }
    let app = Router::new()
        .route("/{*path}", post(hook))
        .with_state((state, seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), bodies))
}

fn channel(name: &str, kind: ChannelKind, url: String) -> ChannelConfig {
    ChannelConfig {
        name: name.into(),
        kind,
        url: Some(url),
        url_env: None,
        topic_arn: None,
        default: true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_are_retried_and_failures_recorded() -> Result<()> {
    let alert: Alert = serde_json::from_str(include_str!("alert.json"))?;
    let target = alert.actions[0].target.clone();
    // The webhook fails once with 503, then takes it; Slack takes it at once.
    let (base, bodies) = receiver(vec![503, 200]).await?;
    let notifier = Notifier::new(
        NotifyConfig {
            channels: vec![
                channel("soc", ChannelKind::Webhook, format!("{base}/hook")),
                channel("slack", ChannelKind::Slack, format!("{base}/slack")),
            ],
            attempts: 3,
            backoff: Duration::from_millis(20),
            ..NotifyConfig::default()
        },
        None,
    );
    let dry = notifier.notify(&alert, &target, true).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun);
    assert!(
        bodies.lock().map(|b| b.is_empty()).unwrap_or(false),
        "dry-run sends nothing"
    );
    let result = notifier.notify(&alert, &target, false).await;
    assert_eq!(result.outcome, ActionOutcome::Applied, "{}", result.detail);
    assert!(
        result.steps[0].description.contains("attempt 2"),
        "{:?}",
        result.steps
    );
    let got = bodies.lock().map(|b| b.clone()).unwrap_or_default();
    let hooks: Vec<&Value> = got
        .iter()
        .filter(|(p, _)| p == "/hook")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(hooks.len(), 2, "one retry");
    assert_eq!(hooks[1]["alert_id"], alert.id);
    assert_eq!(hooks[1]["severity"], "high");
    assert_eq!(hooks[1]["policy_id"], "cloudtrail-changes");
    assert_eq!(hooks[1]["summary"], "root called StopLogging");
    assert_eq!(hooks[1]["recipient"]["id"], "default");
    let slack: Vec<&Value> = got
        .iter()
        .filter(|(p, _)| p == "/slack")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(slack.len(), 1);
    assert_eq!(
        slack[0]["text"],
        "[HIGH] CloudTrail configuration change: root called StopLogging"
    );
    assert!(slack[0]["blocks"].is_array());

    // Always failing, or nobody listening: failed after the attempts, with the reason.
    let (down, _) = receiver(vec![500]).await?;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let failing = Notifier::new(
        NotifyConfig {
            channels: vec![
                channel("broken", ChannelKind::Webhook, format!("{down}/x")),
                // A Slack-style URL is the credential: it must not reach the record or logs.
                channel(
                    "gone",
                    ChannelKind::Webhook,
                    format!("http://{closed}/services/T000/B000/s3cr3t-webhook-token"),
                ),
            ],
            attempts: 2,
            backoff: Duration::from_millis(10),
            ..NotifyConfig::default()
        },
        None,
    );
    let failed = failing.notify(&alert, &target, false).await;
    assert_eq!(failed.outcome, ActionOutcome::Failed);
    assert!(
        failed.detail.contains("broken: after 2 attempts: HTTP 500"),
        "{}",
        failed.detail
    );
    assert!(
        failed.detail.contains("gone: after 2 attempts"),
        "{}",
        failed.detail
    );
    let recorded = format!("{} {:?}", failed.detail, failed.steps);
    assert!(
        !recorded.contains("s3cr3t") && !recorded.contains(&closed.to_string()),
        "the webhook URL leaked into the record: {recorded}"
    );
    // A 4xx is not retried.
    let (rejecting, seen) = receiver(vec![400]).await?;
    let once = Notifier::new(
        NotifyConfig {
            channels: vec![channel(
                "bad",
                ChannelKind::Webhook,
                format!("{rejecting}/x"),
            )],
            attempts: 5,
            backoff: Duration::from_millis(10),
            ..NotifyConfig::default()
        },
        None,
    );
    assert_eq!(
        once.notify(&alert, &target, false).await.outcome,
        ActionOutcome::Failed
    );
    assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_notifications_reach_the_topic() -> Result<()> {
    let shared = trailguard_tests::aws_shared().await?;
    let sns = aws_sdk_sns::Client::new(&shared);
    let (topic, queue_url) =
        trailguard_tests::topic_with_queue("trailguard-alerts", "sns-sink").await?;
    let alert: Alert = serde_json::from_str(include_str!("alert.json"))?;
    let target = alert.actions[0].target.clone();
    let notifier = Notifier::new(
        NotifyConfig {
            channels: vec![ChannelConfig {
                name: "pager".into(),
                kind: ChannelKind::Sns,
                url: None,
                url_env: None,
                topic_arn: Some(topic),
                default: true,
            }],
            ..NotifyConfig::default()
        },
        Some(sns),
    );
    let result = notifier.notify(&alert, &target, false).await;
    assert_eq!(result.outcome, ActionOutcome::Applied, "{}", result.detail);
    assert_eq!(result.steps[0].call, "sns:Publish");
    assert!(
        result.steps[0].request_id.is_some(),
        "the message id is recorded"
    );
    let received = trailguard_tests::received(&queue_url).await?;
    let body = received
        .first()
        .context("no message reached the subscribed queue")?;
    let payload: Value = serde_json::from_str(body)?;
    assert_eq!(payload["alert_id"], alert.id);
    assert_eq!(payload["severity"], "high");
    assert_eq!(payload["summary"], "root called StopLogging");
    Ok(())
}
