//! Trust: remediate acts only on the principal or bucket an authentic alert names, in the
//! account it belongs to, never on a protected target; detect asks for destructive actions only
//! on successful activity; public-policy conditions are judged by operator and value; nothing
//! printed to an operator's terminal can drive it. Every test runs the binaries against the
//! broker and moto (the AWS-API server's default account is 123456789012), from the outside.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_common::contract::{ActionKind, ActionOutcome, ActionRecord};
use trailguard_common::Alert;
use trailguard_tests::{
    active_keys, alert_asking, aws_endpoint, iam as iam_client, produce, read_topic, s3, signed,
    unique, user_with_active_key, wait_for_topic, Run,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const ACCOUNT: &str = "123456789012";
const FOREIGN: &str = "999999999999";

/// The action records of `alert_ids` that end an action, once each has one (an action that
/// changes AWS first writes a `started` record with its prior state).
fn records_for(topic: &str, alert_ids: &[&str]) -> Result<Vec<ActionRecord>> {
    let ends = |records: &[trailguard_tests::Record]| -> Vec<ActionRecord> {
        records
            .iter()
            .filter_map(|r| serde_json::from_slice::<ActionRecord>(&r.value).ok())
            .filter(|r| r.outcome != ActionOutcome::Started)
            .collect()
    };
    let records = read_topic(topic, TIMEOUT, Duration::from_secs(1), |r| {
        let seen = ends(r);
        alert_ids
            .iter()
            .all(|id| seen.iter().any(|s| s.alert_id == *id))
    })?;
    Ok(ends(&records))
}

fn record_of<'a>(records: &'a [ActionRecord], alert_id: &str) -> Result<&'a ActionRecord> {
    records
        .iter()
        .find(|r| r.alert_id == alert_id)
        .with_context(|| format!("no record for {alert_id}: {records:#?}"))
}

fn remediate_config(run: &Run, extra: &str) -> Result<String> {
    let path = std::env::temp_dir().join(format!("{}-remediate.toml", run.id));
    std::fs::write(
        &path,
        format!(
            "[aws]\nendpoint_url = \"{}\"\nforce_path_style = true\nregion = \"us-east-1\"\n{extra}\n\n\
             [remediate]\ndefault_mode = \"auto\"\nprotected_principals = [\"arn:aws:iam::*:role/BreakGlass\"]\n",
            aws_endpoint()?
        ),
    )?;
    Ok(path.to_str().context("path")?.to_string())
}

/// R1: without a role for the principal's account, an alert about a principal of another
/// account is refused, and the same-named user of remediate's own account is left alone; the
/// same alert about our own user is acted on. A bucket alert naming another account is
/// refused too, and the bucket (ours) stays as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_principal_never_acts_on_our_same_named_user() -> Result<()> {
    let run = Run::new("trust-foreign")?;
    let iam = iam_client().await?;
    let alice = unique("alice");
    user_with_active_key(&iam, &alice).await?;
    let bucket = unique("trust-foreign");
    let s3 = s3().await?;
    trailguard_tests::make_public_bucket(&s3, &bucket).await?;
    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;

    let foreign_arn = format!("arn:aws:iam::{FOREIGN}:user/{alice}");
    produce(
        &alerts,
        "a",
        &signed(alert_asking(
            "foreign-user",
            ActionKind::SuspendUser,
            &foreign_arn,
            FOREIGN,
            None,
        )?)?,
    )
    .await?;
    produce(
        &alerts,
        "b",
        &signed(alert_asking(
            "foreign-bucket",
            ActionKind::MakeBucketPrivate,
            &bucket,
            FOREIGN,
            None,
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["foreign-user", "foreign-bucket"])?;
    for id in ["foreign-user", "foreign-bucket"] {
        let r = record_of(&records, id)?;
        assert_eq!(r.outcome, ActionOutcome::Refused, "{id}: {}", r.detail);
        assert!(
            r.detail.contains(FOREIGN) && r.detail.contains("no role"),
            "{id}: {}",
            r.detail
        );
    }
    assert_eq!(
        active_keys(&iam, &alice).await?,
        1,
        "our alice keeps her key"
    );
    let policy = s3.get_bucket_policy().bucket(&bucket).send().await?;
    assert!(
        policy.policy().is_some_and(|p| p.contains('*')),
        "the bucket was left as it was"
    );

    // Our own alice, in our own account, is acted on.
    let own_arn = format!("arn:aws:iam::{ACCOUNT}:user/{alice}");
    produce(
        &alerts,
        "c",
        &signed(alert_asking(
            "own-user",
            ActionKind::SuspendUser,
            &own_arn,
            ACCOUNT,
            None,
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["own-user"])?;
    let r = record_of(&records, "own-user")?;
    assert_eq!(r.outcome, ActionOutcome::Applied, "{}", r.detail);
    assert_eq!(active_keys(&iam, &alice).await?, 0);
    Ok(())
}

/// R1 with a role for other accounts, and R6/R9: names protect only at home. A role named like
/// Trailguard's own (`trailguard-*`) in another account of the organization is not immune; the
/// action runs there through the configured role, on that account's role, not on ours.
#[tokio::test(flavor = "multi_thread")]
async fn a_lookalike_name_in_another_account_is_not_protected() -> Result<()> {
    let run = Run::new("trust-lookalike")?;
    let name = unique("trailguard-x");
    let foreign_iam = trailguard_tests::iam_in_account(FOREIGN).await?;
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
    foreign_iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await?;
    let home_iam = iam_client().await?;
    home_iam
        .create_role()
        .role_name(&name)
        .assume_role_policy_document(trust.to_string())
        .send()
        .await?;
    let config = remediate_config(
        &run,
        "role_arn_template = \"arn:aws:iam::{account}:role/test-admin\"",
    )?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    let session = |account: &str| format!("arn:aws:sts::{account}:assumed-role/{name}/intruder");
    produce(
        &alerts,
        "a",
        &signed(alert_asking(
            "lookalike",
            ActionKind::RequireSignIn,
            &session(FOREIGN),
            FOREIGN,
            None,
        )?)?,
    )
    .await?;
    produce(
        &alerts,
        "b",
        &signed(alert_asking(
            "home-role",
            ActionKind::RequireSignIn,
            &session(ACCOUNT),
            ACCOUNT,
            None,
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["lookalike", "home-role"])?;
    let lookalike = record_of(&records, "lookalike")?;
    assert_eq!(
        lookalike.outcome,
        ActionOutcome::Applied,
        "{}",
        lookalike.detail
    );
    let home = record_of(&records, "home-role")?;
    assert_eq!(home.outcome, ActionOutcome::Refused, "{}", home.detail);
    assert!(home.detail.contains("protected"), "{}", home.detail);
    // The revoke policy went on the other account's role, not on ours.
    let put = foreign_iam
        .get_role_policy()
        .role_name(&name)
        .policy_name("TrailguardRevokeOlderSessions")
        .send()
        .await;
    assert!(
        put.is_ok(),
        "no revoke policy on the other account's role: {put:?}"
    );
    let ours = home_iam
        .get_role_policy()
        .role_name(&name)
        .policy_name("TrailguardRevokeOlderSessions")
        .send()
        .await;
    assert!(ours.is_err(), "our own role was changed");
    Ok(())
}

/// A protection that chooses roles by path (`role/breakglass/*`) cannot be judged from a role
/// session's ARN, which never carries the path: remediate asks IAM for the role (iam:GetRole)
/// when the action runs. The session of a role under that path is refused; the session of a
/// role elsewhere is acted on (it was refused too, when every session was taken for one under
/// the path).
#[tokio::test(flavor = "multi_thread")]
async fn a_protection_by_path_is_judged_with_the_role_iam_has() -> Result<()> {
    let run = Run::new("trust-path")?;
    let iam = iam_client().await?;
    let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]});
    let (guarded, plain) = (unique("Guarded"), unique("Plain"));
    for (name, path) in [(&guarded, "/breakglass/"), (&plain, "/ops/")] {
        iam.create_role()
            .role_name(name)
            .path(path)
            .assume_role_policy_document(trust.to_string())
            .send()
            .await?;
    }
    let config = remediate_config(&run, "")?;
    let text = std::fs::read_to_string(&config)?.replace(
        "protected_principals = [",
        "protected_principals = [\"arn:aws:iam::*:role/breakglass/*\", ",
    );
    std::fs::write(&config, text)?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    for (id, role) in [("guarded", &guarded), ("plain", &plain)] {
        let session = format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/oncall");
        let alert = alert_asking(id, ActionKind::RequireSignIn, &session, ACCOUNT, None)?;
        produce(&alerts, id, &signed(alert)?).await?;
    }
    let records = records_for(&run.topic("actions"), &["guarded", "plain"])?;
    let refused = record_of(&records, "guarded")?;
    assert_eq!(
        refused.outcome,
        ActionOutcome::Refused,
        "{}",
        refused.detail
    );
    assert!(refused.detail.contains("breakglass"), "{}", refused.detail);
    let applied = record_of(&records, "plain")?;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    let policy = |role: String| {
        let iam = iam.clone();
        async move {
            iam.get_role_policy()
                .role_name(role)
                .policy_name("TrailguardRevokeOlderSessions")
                .send()
                .await
                .is_ok()
        }
    };
    assert!(!policy(guarded).await, "the protected role was changed");
    assert!(policy(plain).await);
    Ok(())
}

/// R6: removing an account-id grantee strips every principal of that account from the bucket
/// policy; when one of them is protected the action is refused and the policy left whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_account_grantee_never_strips_a_protected_role() -> Result<()> {
    let run = Run::new("trust-grantee")?;
    let s3 = s3().await?;
    let bucket = unique("trust-grantee");
    s3.create_bucket().bucket(&bucket).send().await?;
    let policy = json!({"Version": "2012-10-17", "Statement": [{
        "Sid": "Partner", "Effect": "Allow",
        "Principal": {"AWS": ["arn:aws:iam::222222222222:root", "arn:aws:iam::222222222222:role/BreakGlass"]},
        "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")}]});
    s3.put_bucket_policy()
        .bucket(&bucket)
        .policy(policy.to_string())
        .send()
        .await?;
    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(
        &alerts,
        "a",
        &signed(alert_asking(
            "strip",
            ActionKind::RemoveCollaborator,
            &bucket,
            ACCOUNT,
            Some("222222222222"),
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["strip"])?;
    let r = record_of(&records, "strip")?;
    assert_eq!(r.outcome, ActionOutcome::Refused, "{}", r.detail);
    assert!(r.detail.contains("BreakGlass"), "{}", r.detail);
    let after = s3.get_bucket_policy().bucket(&bucket).send().await?;
    let after: Value = serde_json::from_str(after.policy().unwrap_or_default())?;
    assert_eq!(
        after["Statement"][0]["Principal"],
        policy["Statement"][0]["Principal"]
    );
    Ok(())
}

/// R8, remediate's half: a `Principal: "*"` statement whose only condition is a no-op
/// (`aws:SourceIp 0.0.0.0/0`) is public, and make-private removes it; a statement confined to a
/// VPC endpoint stays.
#[tokio::test(flavor = "multi_thread")]
async fn make_private_removes_statements_with_no_op_conditions() -> Result<()> {
    let run = Run::new("trust-noop")?;
    let s3 = s3().await?;
    let bucket = unique("trust-noop");
    s3.create_bucket().bucket(&bucket).send().await?;
    let policy = json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Anyone", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": format!("arn:aws:s3:::{bucket}/*"),
         "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}},
        {"Sid": "Endpoint", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": format!("arn:aws:s3:::{bucket}/*"),
         "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-0123456789abcdef0"}}}]});
    s3.put_bucket_policy()
        .bucket(&bucket)
        .policy(policy.to_string())
        .send()
        .await?;
    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(
        &alerts,
        "a",
        &signed(alert_asking(
            "noop",
            ActionKind::MakeBucketPrivate,
            &bucket,
            ACCOUNT,
            None,
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["noop"])?;
    let r = record_of(&records, "noop")?;
    assert_eq!(r.outcome, ActionOutcome::Applied, "{}", r.detail);
    let after = s3.get_bucket_policy().bucket(&bucket).send().await?;
    let after: Value = serde_json::from_str(after.policy().unwrap_or_default())?;
    let sids: Vec<&str> = after["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["Sid"].as_str())
        .collect();
    assert_eq!(sids, ["Endpoint"], "{after}");
    Ok(())
}

fn record(minutes: i64, name: &str, source: &str, user: &str, ip: &str, params: Value) -> Value {
    trailguard_tests::api_call(minutes, name, source, user, ip, params, 200_000)
}

/// R6, R7 and R8, detect's half: a failed call asks for nothing destructive (an `AccessDenied`
/// public-ACL attempt on someone's bucket; a failed console sign-in from a Tor exit), while the
/// same successful call does; a public policy whose condition is a no-op is public; removing
/// the account-level public-access block raises the alert.
#[tokio::test(flavor = "multi_thread")]
async fn failed_calls_only_notify_and_no_op_conditions_are_public() -> Result<()> {
    let run = Run::new("trust-detect")?;
    let config = run.detect_config(
        "[policies.anomaly]\nlearning_period = \"1d\"\n\n\
         [policies.anomaly.anonymous_ip]\nactions = [\"notify\", \"suspend_user\"]\n\n\
         [policies.templates.s3-bucket-activity]\nactions = [\"notify\", \"make_bucket_private\"]\n",
    )?;
    let acl = json!({"bucketName": "www-site", "acl": [""], "x-amz-acl": ["public-read"]});
    let mut denied = record(
        0,
        "PutBucketAcl",
        "s3.amazonaws.com",
        "mallory",
        "198.51.100.7",
        acl.clone(),
    );
    denied["errorCode"] = json!("AccessDenied");
    denied["errorMessage"] = json!("Access Denied");
    let granted = record(
        1,
        "PutBucketAcl",
        "s3.amazonaws.com",
        "alice",
        "198.51.100.8",
        json!({"bucketName": "logs-site", "x-amz-acl": ["public-read"]}),
    );
    let noop_policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",
        "Action": "s3:GetObject", "Resource": "arn:aws:s3:::data-lake/*",
        "Condition": {"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}}]});
    let policy = record(
        2,
        "PutBucketPolicy",
        "s3.amazonaws.com",
        "alice",
        "198.51.100.8",
        json!({"bucketName": "data-lake", "bucketPolicy": noop_policy}),
    );
    let mut account_block = record(
        3,
        "DeleteAccountPublicAccessBlock",
        "s3.amazonaws.com",
        "alice",
        "198.51.100.8",
        json!({"x-amz-account-id": ACCOUNT}),
    );
    account_block["eventType"] = json!("AwsApiCall");
    // carol, known for two days, then a failed console sign-in from a Tor exit: anyone who
    // knows her user name can cause that record.
    let seen = record(
        -2 * 1440,
        "ListBuckets",
        "s3.amazonaws.com",
        "carol",
        "71.253.251.72",
        json!({}),
    );
    let mut login = record(
        4,
        "ConsoleLogin",
        "signin.amazonaws.com",
        "carol",
        "185.220.101.7",
        Value::Null,
    );
    login["eventType"] = json!("AwsConsoleSignIn");
    login["responseElements"] = json!({"ConsoleLogin": "Failure"});
    login["additionalEventData"] =
        json!({"MFAUsed": "No", "LoginTo": "https://console.aws.amazon.com/console/"});
    login["errorMessage"] = json!("Failed authentication");
    run.ingest_records([&seen, &denied, &granted, &policy, &account_block, &login])?;
    let mut detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let wanted = |alerts: &[Alert]| {
        let has = |policy: &str, entity: &str| {
            alerts
                .iter()
                .any(|a| a.policy_id == policy && a.entity.id.contains(entity))
        };
        has("s3-bucket-activity", "www-site")
            && has("s3-bucket-activity", "logs-site")
            && has("s3-bucket-public", "data-lake")
            && has("s3-bucket-public", ACCOUNT)
            && has("anonymous-ip", "carol")
    };
    let alerts: Vec<Alert> =
        read_topic(&run.topic("alerts"), TIMEOUT, Duration::from_secs(2), |r| {
            let parsed: Vec<Alert> = r
                .iter()
                .filter_map(|r| serde_json::from_slice(&r.value).ok())
                .collect();
            wanted(&parsed)
        })
        .with_context(|| detect.log())?
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect();
    detect.stop("-TERM")?;
    let kinds = |policy: &str, entity: &str| -> Vec<ActionKind> {
        alerts
            .iter()
            .filter(|a| a.policy_id == policy && a.entity.id.contains(entity))
            .flat_map(|a| a.actions.iter().map(|x| x.kind))
            .collect()
    };
    assert_eq!(
        kinds("s3-bucket-activity", "www-site"),
        [ActionKind::Notify],
        "{alerts:#?}"
    );
    assert_eq!(
        kinds("s3-bucket-activity", "logs-site"),
        [ActionKind::Notify, ActionKind::MakeBucketPrivate]
    );
    assert!(
        kinds("anonymous-ip", "carol")
            .iter()
            .all(|k| *k == ActionKind::Notify),
        "{alerts:#?}"
    );
    let account = alerts
        .iter()
        .find(|a| a.policy_id == "s3-bucket-public" && a.entity.kind == "aws-account")
        .context("account-level block alert")?;
    assert!(
        account
            .evidence
            .summary
            .contains("account-level public-access block"),
        "{}",
        account.evidence.summary
    );
    Ok(())
}

/// P1: `detect tail` prints any alert or action record a topic holds — an id cut inside a
/// multi-byte character, terminal escape sequences in the text — without panicking, and
/// escapes control characters.
#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_hostile_records_safely() -> Result<()> {
    let run = Run::new("trust-tail")?;
    let alerts = run.topic("alerts");
    let mut cfg = trailguard_common::config::KafkaConfig {
        brokers: trailguard_tests::brokers()?,
        partitions: 1,
        ..Default::default()
    };
    cfg.topics.alerts = alerts.clone();
    trailguard_common::kafka::ensure_topics(&cfg, &[trailguard_common::config::TopicRole::Alerts])
        .await?;
    let mut hostile = alert_asking(
        "aaaaaaaaaaa\u{e9}bbbb",
        ActionKind::Notify,
        "default",
        ACCOUNT,
        None,
    )?;
    hostile.evidence.summary = "x\u{1b}]0;owned\u{7}\u{1b}[2J".into();
    // Unsigned: anyone who can write the topic can put this there.
    produce(&alerts, "k", &serde_json::to_vec(&hostile)?).await?;
    let output = run
        .command(
            "detect",
            &[
                "tail",
                "alerts",
                "--from-beginning",
                "--count",
                "1",
                "--idle-seconds",
                "20",
            ],
        )?
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "tail failed: {}{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("aaaaaaaaaaa\u{e9}"), "{stdout}");
    assert!(
        !stdout.contains('\u{1b}') && !stdout.contains('\u{7}'),
        "{stdout:?}"
    );
    Ok(())
}

/// `detect tail activities` prints a compact activity (docs/wire.md) as its JSON, escaped, and
/// says why a compact message that does not decode is not one.
#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_compact_activities_as_json() -> Result<()> {
    use trailguard_common::compact::ActivityEncoding;
    let run = Run::new("trust-tail-compact")?;
    let activities = run.topic("activities");
    let mut cfg = trailguard_common::config::KafkaConfig {
        brokers: trailguard_tests::brokers()?,
        partitions: 1,
        ..Default::default()
    };
    cfg.topics.activities = activities.clone();
    trailguard_common::kafka::ensure_topics(
        &cfg,
        &[trailguard_common::config::TopicRole::Activities],
    )
    .await?;
    let mut record = trailguard_tests::api_call(
        0,
        "ListBuckets",
        "s3.amazonaws.com",
        "tail-user",
        "198.51.100.7",
        json!({}),
        7,
    );
    record["userAgent"] = json!("agent\u{1b}[2J");
    let activity = trailguard_ingest::normalize::normalize(&record.to_string())?;
    let bytes = ActivityEncoding::Compact.to_vec(&activity)?;
    produce(&activities, "k", &bytes).await?;
    produce(&activities, "k", &bytes[..bytes.len() - 3]).await?;
    let output = run
        .command(
            "detect",
            &[
                "tail",
                "activities",
                "--from-beginning",
                "--count",
                "2",
                "--idle-seconds",
                "20",
            ],
        )?
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "tail failed: {stdout}");
    ensure!(
        stdout.contains(&format!("\"id\":\"{}\"", activity.id)),
        "the activity as JSON: {stdout}"
    );
    ensure!(
        stdout.contains("(not an activity: compact, truncated"),
        "{stdout}"
    );
    ensure!(!stdout.contains('\u{1b}'), "{stdout:?}");
    Ok(())
}

/// Publishes `value` under `key` to every partition of `topic` (a forged record, unsigned).
async fn produce_everywhere(topic: &str, key: &str, value: &[u8], partitions: i32) -> Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", trailguard_tests::brokers()?)
        .create()?;
    for partition in 0..partitions {
        producer
            .send(
                FutureRecord::to(topic)
                    .key(key)
                    .payload(value)
                    .partition(partition),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    }
    Ok(())
}

/// The run's topics, created as the services create them.
async fn create_topics(run: &Run) -> Result<()> {
    use trailguard_common::config::TopicRole;
    let mut cfg = trailguard_common::config::KafkaConfig {
        brokers: trailguard_tests::brokers()?,
        partitions: 3,
        ..Default::default()
    };
    cfg.topics.activities = run.topic("activities");
    cfg.topics.alerts = run.topic("alerts");
    cfg.topics.actions = run.topic("actions");
    cfg.topics.detect_state = run.topic("state");
    cfg.topics.detect_facts = run.topic("facts");
    cfg.topics.detect_signin_failures = run.topic("signin-failures");
    cfg.topics.detect_correlations = run.topic("correlations");
    trailguard_common::kafka::ensure_topics(
        &cfg,
        &[
            TopicRole::Activities,
            TopicRole::Alerts,
            TopicRole::Actions,
            TopicRole::DetectState,
            TopicRole::DetectFacts,
            TopicRole::DetectSigninFailures,
            TopicRole::DetectCorrelations,
        ],
    )
    .await?;
    Ok(())
}

/// R2, detect's half: records on detect's own topics that detect did not sign are ignored. A
/// forged fact ("admin was deleted") raises no terminated-user alert about admin; a forged
/// baseline (an offset far ahead, which would mark all of carol's activity as applied) does
/// not switch carol's detections off; forged sign-in failures on the forwarding topic make no
/// password-spray alert; forged matches on the correlations topic complete no Sigma
/// correlation.
#[tokio::test(flavor = "multi_thread")]
async fn detect_ignores_what_it_did_not_sign_on_its_own_topics() -> Result<()> {
    let run = Run::new("trust-internal")?;
    create_topics(&run).await?;
    // A Sigma correlation: two failed console sign-ins from one address.
    let rules = std::env::temp_dir().join(&run.id).join("sigma");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(
        rules.join("fail.yml"),
        "title: failed sign-in\nid: failed-signin\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    eventName: ConsoleLogin\n    errorMessage: 'Failed authentication'\n  condition: selection\n",
    )?;
    std::fs::write(
        rules.join("spray.yml"),
        "title: two failures\nid: two-failures\nlevel: high\ncorrelation:\n  type: event_count\n  rules:\n    - failed-signin\n  group-by:\n    - sourceIPAddress\n  timespan: 1h\n  condition:\n    gte: 2\n",
    )?;
    let config = run.detect_config(&format!(
        "[policies.anomaly]\nlearning_period = \"1d\"\n\n[policies.sigma]\npaths = [{:?}]\n",
        rules.display().to_string()
    ))?;
    let admin = format!("user:{ACCOUNT}/admin");
    let fact = json!({"key": admin, "fact": {"time": 0, "how": "DeleteUser by arn:aws:iam::123456789012:user/mallory", "subject": format!("{ACCOUNT}/admin")}});
    produce(&run.topic("facts"), &admin, fact.to_string().as_bytes()).await?;
    let carol_arn = format!("arn:aws:iam::{ACCOUNT}:user/carol");
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-08T12:00:00Z")?.timestamp();
    let baseline = json!({"o": i64::MAX, "f": start, "l": start});
    produce_everywhere(
        &run.topic("state"),
        &carol_arn,
        baseline.to_string().as_bytes(),
        3,
    )
    .await?;
    // Eight forged failed sign-ins of eight users from one address, on the forwarding topic.
    for i in 0..8 {
        use trailguard_common::contract::{
            Outcome, OutcomeStatus, Principal, ACTIVITY_SCHEMA_VERSION,
        };
        let activity = trailguard_common::Activity {
            schema_version: ACTIVITY_SCHEMA_VERSION,
            id: format!("forged-{i}"),
            event_id: None,
            event_time: chrono::DateTime::parse_from_rfc3339(&format!("2024-05-10T12:0{i}:00Z"))?
                .with_timezone(&chrono::Utc),
            event_source: "signin.amazonaws.com".into(),
            event_name: "ConsoleLogin".into(),
            event_type: Some("AwsConsoleSignIn".into()),
            account_id: Some(ACCOUNT.into()),
            region: Some("us-east-1".into()),
            partition: Some("aws".into()),
            actor: Default::default(),
            principal: Principal {
                kind: "IAMUser".into(),
                arn: Some(format!("arn:aws:iam::{ACCOUNT}:user/staff{i}")),
                name: Some(format!("staff{i}")),
                ..Principal::default()
            },
            source_ip: "203.0.113.99".parse().ok(),
            source_host: None,
            user_agent: None,
            read_only: None,
            data_event: false,
            outcome: Outcome {
                status: OutcomeStatus::Failure,
                error_code: None,
                error_message: None,
            },
            resources: Vec::new(),
            request_id: None,
            request_parameters: None,
            response_elements: None,
            additional_event_data: None,
            enrichment: Default::default(),
            trimmed: Vec::new(),
        };
        produce(
            &run.topic("signin-failures"),
            "203.0.113.99",
            &serde_json::to_vec(&activity)?,
        )
        .await?;
        // The same, as matches of the correlation (as detect would forward them, unsigned).
        let hit = json!({"correlation": "sigma-two-failures", "group": ["203.0.113.99"],
                         "rules": [0], "activity": activity});
        produce(
            &run.topic("correlations"),
            "sigma-two-failures\u{1f}203.0.113.99",
            hit.to_string().as_bytes(),
        )
        .await?;
    }
    let mut records = vec![
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "admin",
            "71.253.251.70",
            json!({}),
        ),
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "carol",
            "71.253.251.72",
            json!({}),
        ),
        record(
            0,
            "ListBuckets",
            "s3.amazonaws.com",
            "admin",
            "71.253.251.70",
            json!({}),
        ),
        record(
            1,
            "DescribeInstances",
            "ec2.amazonaws.com",
            "carol",
            "185.220.101.7",
            json!({}),
        ),
    ];
    // Two real failed sign-ins from one address: the correlation works (and is evaluated).
    for (minute, user) in [(4, "dan"), (5, "erin")] {
        let mut failed = record(
            minute,
            "ConsoleLogin",
            "signin.amazonaws.com",
            user,
            "198.51.100.77",
            json!(null),
        );
        failed["eventType"] = json!("AwsConsoleSignIn");
        failed["responseElements"] = json!({"ConsoleLogin": "Failure"});
        failed["errorMessage"] = json!("Failed authentication");
        records.push(failed);
    }
    // Then each makes a change that alerts, so the test knows both were evaluated.
    for (minute, user) in [(2, "admin"), (3, "carol")] {
        records.push(record(
            minute,
            "StopLogging",
            "cloudtrail.amazonaws.com",
            user,
            "71.253.251.70",
            json!({"name": format!("arn:aws:cloudtrail:us-east-1:{ACCOUNT}:trail/main")}),
        ));
    }
    run.ingest_records(&records)?;
    let mut detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let alerts: Vec<Alert> =
        read_topic(&run.topic("alerts"), TIMEOUT, Duration::from_secs(5), |r| {
            r.iter()
                .filter_map(|r| serde_json::from_slice::<Alert>(&r.value).ok())
                .filter(|a| {
                    a.policy_id == "cloudtrail-changes" || a.policy_id == "sigma-two-failures"
                })
                .count()
                >= 3
        })
        .with_context(|| detect.log())?
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect();
    detect.stop("-TERM")?;
    let about = |policy: &str, who: &str| {
        alerts
            .iter()
            .any(|a| a.policy_id == policy && a.entity.id.contains(who))
    };
    assert!(
        !about("terminated-user", "admin"),
        "a forged fact raised an alert: {alerts:#?}"
    );
    assert!(
        about("anonymous-ip", "carol"),
        "a forged baseline silenced carol: {alerts:#?}"
    );
    assert!(
        !alerts.iter().any(|a| a.entity.id == "203.0.113.99"),
        "forged sign-in failures raised an alert: {alerts:#?}"
    );
    let correlated: Vec<&str> = alerts
        .iter()
        .filter(|a| a.policy_id == "sigma-two-failures")
        .map(|a| a.entity.id.as_str())
        .collect();
    assert!(
        correlated == ["sourceIPAddress=198.51.100.77"],
        "only the real failures complete the correlation, not forged matches: {alerts:#?}"
    );
    Ok(())
}

/// R2, remediate's half: action records remediate did not sign are ignored. A forged record
/// answering a pending alert does not stop its action; a forged "applied" record with undo data
/// of the forger's choosing cannot be undone (which would put that policy on the user).
#[tokio::test(flavor = "multi_thread")]
async fn remediate_ignores_action_records_it_did_not_sign() -> Result<()> {
    let run = Run::new("trust-ledger")?;
    create_topics(&run).await?;
    let iam = iam_client().await?;
    let dave = unique("dave");
    user_with_active_key(&iam, &dave).await?;
    let dave_arn = format!("arn:aws:iam::{ACCOUNT}:user/{dave}");
    let genuine = alert_asking(
        "ledger-genuine",
        ActionKind::SuspendUser,
        &dave_arn,
        ACCOUNT,
        None,
    )?;
    let action = &genuine.actions[0];
    let answered_id = trailguard_common::contract::stable_id([
        genuine.id.as_str(),
        action.kind.as_str(),
        action.target.id.as_str(),
        "",
    ]);
    let mut forged: Value = json!({
        "schema_version": 1, "id": answered_id, "alert_id": genuine.id, "policy_id": "trust-test",
        "kind": "suspend_user", "target": action.target, "mode": "auto", "outcome": "applied",
        "detail": "forged", "steps": [], "aws_request_ids": [], "time": chrono::Utc::now(),
    });
    let actions = run.topic("actions");
    produce(&actions, &genuine.id, forged.to_string().as_bytes()).await?;
    forged["id"] = json!("forged-undo");
    forged["alert_id"] = json!("forged-undo-alert");
    forged["undo"] = json!({
        "identity": {"kind": "user", "account": ACCOUNT, "name": dave},
        "policy_name": "Backdoor",
        "prior_policy": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
    });
    produce(&actions, "forged-undo-alert", forged.to_string().as_bytes()).await?;

    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    produce(&run.topic("alerts"), "a", &signed(genuine.clone())?).await?;
    let ends = |r: &ActionRecord| {
        r.alert_id == genuine.id && r.detail != "forged" && r.outcome != ActionOutcome::Started
    };
    let records = read_topic(&actions, TIMEOUT, Duration::from_secs(1), |r| {
        r.iter()
            .filter_map(|r| serde_json::from_slice::<ActionRecord>(&r.value).ok())
            .any(|r| ends(&r))
    })?;
    let done: Vec<ActionRecord> = records
        .iter()
        .filter_map(|r| serde_json::from_slice::<ActionRecord>(&r.value).ok())
        .filter(|r| ends(r))
        .collect();
    assert_eq!(done.len(), 1, "{done:#?}");
    assert_eq!(
        done[0].outcome,
        ActionOutcome::Applied,
        "{}",
        done[0].detail
    );
    assert_eq!(active_keys(&iam, &dave).await?, 0, "dave was suspended");

    let out = run
        .command("remediate", &["--config", &config, "undo", "forged-undo"])?
        .output()?;
    assert!(
        !out.status.success(),
        "a forged record was undone: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let backdoor = iam
        .get_user_policy()
        .user_name(&dave)
        .policy_name("Backdoor")
        .send()
        .await;
    assert!(backdoor.is_err(), "the forged undo put a policy on dave");
    Ok(())
}

/// R5: an authentic alert older than `remediate.max_alert_age` (default 24 h) is refused with a
/// record and not acted on; a fresh one is. A flood of forged alerts writes at most
/// `max_rejection_records_per_minute` rejection records (every one is still counted).
#[tokio::test(flavor = "multi_thread")]
async fn stale_alerts_are_refused_and_forgery_floods_are_bounded() -> Result<()> {
    let mut run = Run::new("trust-stale")?;
    // The default limit, not the test runs' "no limit".
    run.env
        .retain(|(k, _)| k != "TRAILGUARD_REMEDIATE__MAX_ALERT_AGE");
    run.env.push((
        "TRAILGUARD_REMEDIATE__MAX_REJECTION_RECORDS_PER_MINUTE".into(),
        "5".into(),
    ));
    let iam = iam_client().await?;
    let erin = unique("erin");
    user_with_active_key(&iam, &erin).await?;
    let arn = format!("arn:aws:iam::{ACCOUNT}:user/{erin}");
    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    let mut old = alert_asking("stale", ActionKind::SuspendUser, &arn, ACCOUNT, None)?;
    old.time = chrono::Utc::now() - chrono::Duration::days(3);
    produce(&alerts, "a", &signed(old)?).await?;
    for i in 0..40 {
        let forged = alert_asking(
            &format!("flood-{i}"),
            ActionKind::SuspendUser,
            &arn,
            ACCOUNT,
            None,
        )?;
        produce(&alerts, "f", &serde_json::to_vec(&forged)?).await?;
    }
    produce(
        &alerts,
        "b",
        &signed(alert_asking(
            "fresh",
            ActionKind::Notify,
            "default",
            ACCOUNT,
            None,
        )?)?,
    )
    .await?;
    let records = records_for(&run.topic("actions"), &["stale", "fresh"])?;
    let stale = record_of(&records, "stale")?;
    assert_eq!(stale.outcome, ActionOutcome::Refused, "{}", stale.detail);
    assert!(stale.detail.contains("max_alert_age"), "{}", stale.detail);
    assert_eq!(
        active_keys(&iam, &erin).await?,
        1,
        "a stale alert changed nothing"
    );
    let rejected = records
        .iter()
        .filter(|r| r.outcome == ActionOutcome::Rejected)
        .count();
    // Five a minute; the flood may straddle a minute boundary.
    assert!(
        (1..=10).contains(&rejected),
        "{rejected} rejection records for 40 forgeries"
    );
    Ok(())
}

/// A forged alert's own text is not written back whole: an alert whose id is 600,000
/// characters (within the topic's 1 MB, but twice that as a rejection record's key and value)
/// is rejected with a record that names it in short, and remediate goes on to the genuine
/// alert behind it. It stopped instead — and again at every restart, on the same alert — when
/// the rejection record was too large to publish.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_alert_too_large_to_echo_does_not_stop_remediate() -> Result<()> {
    let run = Run::new("trust-echo")?;
    let iam = iam_client().await?;
    let erin = unique("erin");
    user_with_active_key(&iam, &erin).await?;
    let arn = format!("arn:aws:iam::{ACCOUNT}:user/{erin}");
    let config = remediate_config(&run, "")?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    let long_id = "x".repeat(600_000);
    let mut forged = alert_asking(&long_id, ActionKind::SuspendUser, &arn, ACCOUNT, None)?;
    forged.policy_id = "p".repeat(100_000);
    produce(&alerts, "k", &serde_json::to_vec(&forged)?).await?;
    let genuine = alert_asking("genuine", ActionKind::SuspendUser, &arn, ACCOUNT, None)?;
    produce(&alerts, "k", &signed(genuine)?).await?;
    let records = records_for(&run.topic("actions"), &["genuine"])?;
    let applied = record_of(&records, "genuine")?;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert_eq!(active_keys(&iam, &erin).await?, 0);
    let rejected = records
        .iter()
        .find(|r| r.outcome == ActionOutcome::Rejected)
        .context("a rejection record for the forgery")?;
    assert!(
        rejected.alert_id.starts_with("xxxx")
            && rejected.alert_id.contains("600000 bytes")
            && serde_json::to_vec(rejected)?.len() < 4_096,
        "{} bytes: {}",
        serde_json::to_vec(rejected)?.len(),
        &rejected.alert_id
    );
    Ok(())
}

/// `notify_user` tells the person an alert is about, on their own SNS topic or by e-mail
/// (SES): an IAM user through the topic or address in its `trailguard-notify-topic` tag, a
/// person behind SSO sessions through the directory (by actor id). A user with neither is
/// skipped, saying so; a tag naming something that is not an SNS topic, or an address outside
/// the allowed domains, fails, and nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn the_person_an_alert_is_about_is_told() -> Result<()> {
    let run = Run::new("notify-user")?;
    let iam = iam_client().await?;
    // People's own topics (`trailguard-user-*`, as the IAM policy and the tag rule allow).
    let (bob_topic, bob_inbox) =
        trailguard_tests::topic_with_queue("trailguard-user-bob", "bob").await?;
    let (dana_topic, dana_inbox) =
        trailguard_tests::topic_with_queue("trailguard-user-dana", "dana").await?;
    let bob = unique("bob");
    iam.create_user().user_name(&bob).send().await?;
    iam.tag_user()
        .user_name(&bob)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("trailguard-notify-topic")
                .value(&bob_topic)
                .build()?,
        )
        .send()
        .await?;
    let carol = unique("carol");
    iam.create_user().user_name(&carol).send().await?;
    let mallory = unique("mallory");
    iam.create_user().user_name(&mallory).send().await?;
    iam.tag_user()
        .user_name(&mallory)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key("trailguard-notify-topic")
                .value("https://evil.example/hook")
                .build()?,
        )
        .send()
        .await?;
    // E-mail: frank's address in his tag (an allowed domain), oscar's outside it, erin's in
    // the directory.
    let tag = |value: &str| {
        aws_sdk_iam::types::Tag::builder()
            .key("trailguard-notify-topic")
            .value(value)
            .build()
    };
    let frank = unique("frank");
    iam.create_user().user_name(&frank).send().await?;
    iam.tag_user()
        .user_name(&frank)
        .tags(tag("frank@example.com")?)
        .send()
        .await?;
    let oscar = unique("oscar");
    iam.create_user().user_name(&oscar).send().await?;
    iam.tag_user()
        .user_name(&oscar)
        .tags(tag("oscar@evil.example")?)
        .send()
        .await?;
    let ses = aws_sdk_ses::Client::new(&trailguard_tests::aws_shared().await?);
    ses.verify_email_identity()
        .email_address("trailguard@example.com")
        .send()
        .await?;
    let sent =
        || async { Ok::<f64, anyhow::Error>(ses.get_send_quota().send().await?.sent_last24_hours) };
    let sent_before = sent().await?;
    let config = remediate_config(
        &run,
        &format!(
            "\n[notify.users]\nemail_from = \"trailguard@example.com\"\nemail_domains = [\"example.com\"]\n\
             \n[notify.users.directory]\n\"person:dana@example.com\" = \"{dana_topic}\"\n\
             \"person:erin@example.com\" = \"erin@example.com\"\n"
        ),
    )?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    let user = |name: &str| format!("arn:aws:iam::{ACCOUNT}:user/{name}");
    let mut for_dana = alert_asking(
        "tell-dana",
        ActionKind::NotifyUser,
        &format!("arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_Admin_0123/dana@example.com"),
        ACCOUNT,
        None,
    )?;
    for_dana.actor = Some(trailguard_common::contract::Actor {
        kind: trailguard_common::contract::ActorKind::Person,
        id: "person:dana@example.com".into(),
        name: "dana@example.com".into(),
        basis: "sso-session".into(),
    });
    let mut for_erin = alert_asking(
        "tell-erin",
        ActionKind::NotifyUser,
        &format!("arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_Admin_0123/erin@example.com"),
        ACCOUNT,
        None,
    )?;
    for_erin.actor = Some(trailguard_common::contract::Actor {
        kind: trailguard_common::contract::ActorKind::Person,
        id: "person:erin@example.com".into(),
        name: "erin@example.com".into(),
        basis: "sso-session".into(),
    });
    let asks = [
        alert_asking(
            "tell-bob",
            ActionKind::NotifyUser,
            &user(&bob),
            ACCOUNT,
            None,
        )?,
        for_dana,
        alert_asking(
            "tell-carol",
            ActionKind::NotifyUser,
            &user(&carol),
            ACCOUNT,
            None,
        )?,
        alert_asking(
            "tell-mallory",
            ActionKind::NotifyUser,
            &user(&mallory),
            ACCOUNT,
            None,
        )?,
        for_erin,
        alert_asking(
            "tell-frank",
            ActionKind::NotifyUser,
            &user(&frank),
            ACCOUNT,
            None,
        )?,
        alert_asking(
            "tell-oscar",
            ActionKind::NotifyUser,
            &user(&oscar),
            ACCOUNT,
            None,
        )?,
    ];
    for alert in &asks {
        produce(&alerts, &alert.id, &signed(alert.clone())?).await?;
    }
    let ids = [
        "tell-bob",
        "tell-dana",
        "tell-carol",
        "tell-mallory",
        "tell-erin",
        "tell-frank",
        "tell-oscar",
    ];
    let records = records_for(&run.topic("actions"), &ids)?;
    for (id, outcome) in [
        ("tell-bob", ActionOutcome::Applied),
        ("tell-dana", ActionOutcome::Applied),
        ("tell-carol", ActionOutcome::Skipped),
        ("tell-mallory", ActionOutcome::Failed),
        ("tell-erin", ActionOutcome::Applied),
        ("tell-frank", ActionOutcome::Applied),
        ("tell-oscar", ActionOutcome::Failed),
    ] {
        let r = record_of(&records, id)?;
        ensure!(r.outcome == outcome, "{id}: {:?} {}", r.outcome, r.detail);
    }
    let frank_record = record_of(&records, "tell-frank")?;
    ensure!(
        frank_record.detail.contains("frank@example.com")
            && frank_record.steps.iter().any(|s| s.call == "ses:SendEmail"),
        "{frank_record:?}"
    );
    // SES counts what it sent: erin's and frank's, not oscar's.
    let sent_now = sent().await?;
    ensure!(
        sent_now - sent_before == 2.0,
        "SES sent {} e-mails",
        sent_now - sent_before
    );
    let summary = &asks[0].evidence.summary;
    for (who, queue) in [("bob", &bob_inbox), ("dana", &dana_inbox)] {
        let messages = trailguard_tests::received(queue).await?;
        ensure!(
            messages.len() == 1 && messages[0].contains(summary.as_str()),
            "{who}: {messages:?}"
        );
    }
    Ok(())
}
