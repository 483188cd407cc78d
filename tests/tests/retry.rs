//! Failed is not final (R4): a failure that may mend (a 5xx, throttling) is tried again and
//! recorded as such; a permanent one (AccessDenied) is final at once. A rate-limited action
//! waits or is escalated, per configuration, and the budgets are counted from the action
//! records, so they survive a restart. IAM is moto behind a proxy that injects the failures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use trailguard_common::contract::{ActionOutcome, ActionRecord};
use trailguard_tests::{
    active_keys, aws_endpoint, faulty_aws, iam as iam_client, produce, read_topic, signed,
    suspend_alert, unique, user_with_active_key, wait_for_topic, Run,
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn remediate_config(run: &Run, endpoint: &str, extra: &str) -> Result<String> {
    let path = std::env::temp_dir().join(format!("{}-remediate.toml", run.id));
    std::fs::write(
        &path,
        format!(
            "[aws]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n\n\
             [remediate]\ndefault_mode = \"auto\"\n{extra}\n"
        ),
    )?;
    Ok(path.to_str().context("path")?.to_string())
}

/// The records of each of `alert_ids`, once `done` holds for every one of them.
fn records_of(
    run: &Run,
    alert_ids: &[&str],
    done: impl Fn(&[ActionRecord]) -> bool,
) -> Result<Vec<Vec<ActionRecord>>> {
    let parse =
        |r: &trailguard_tests::Record| serde_json::from_slice::<ActionRecord>(&r.value).ok();
    let split = |records: &[trailguard_tests::Record]| -> Vec<Vec<ActionRecord>> {
        let all: Vec<ActionRecord> = records.iter().filter_map(parse).collect();
        alert_ids
            .iter()
            .map(|id| all.iter().filter(|a| a.alert_id == *id).cloned().collect())
            .collect()
    };
    let records = read_topic(
        &run.topic("actions"),
        TIMEOUT,
        Duration::from_secs(1),
        |r| split(r).iter().all(|mine| done(mine)),
    )?;
    Ok(split(&records))
}

fn ended(records: &[ActionRecord]) -> bool {
    records.iter().any(|r| {
        !r.retryable && !matches!(r.outcome, ActionOutcome::Started | ActionOutcome::Rejected)
    })
}

fn last(records: &[ActionRecord]) -> Result<&ActionRecord> {
    records.last().context("no record")
}

/// A 503 on erin's first reads outlasts the SDK's own retries and the tries in a row: the
/// action is recorded `failed` with `retryable`, tried again later, and applied. An
/// AccessDenied on dave is final at once, tried once.
#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_are_tried_again_and_permanent_ones_are_final() -> Result<()> {
    let run = Run::new("retry-faults")?;
    let iam = iam_client().await?;
    let (dave, erin) = (unique("dave"), unique("erin"));
    user_with_active_key(&iam, &dave).await?;
    user_with_active_key(&iam, &erin).await?;
    let erin_faults = Arc::new(AtomicUsize::new(0));
    let counted = erin_faults.clone();
    let (dave_name, erin_name) = (dave.clone(), erin.clone());
    let endpoint = faulty_aws(Box::new(move |body: &str| {
        if !body.contains("Action=ListAccessKeys") {
            return None;
        }
        if body.contains(&format!("UserName={dave_name}")) {
            return Some((403, "AccessDenied"));
        }
        // More than the SDK's three attempts times the two tries in a row.
        if body.contains(&format!("UserName={erin_name}"))
            && counted.fetch_add(1, Ordering::SeqCst) < 8
        {
            return Some((503, "ServiceUnavailable"));
        }
        None
    }))
    .await?;
    let config = remediate_config(
        &run,
        &endpoint,
        "[remediate.retry]\nattempts = 2\nbackoff = \"200ms\"\nmax_backoff = \"200ms\"\nlater = \"2s\"\n",
    )?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, "dave", &signed(suspend_alert("dave", &dave)?)?).await?;
    produce(&alerts, "erin", &signed(suspend_alert("erin", &erin)?)?).await?;
    let records = records_of(&run, &["dave", "erin"], ended)?;

    let dave_records = &records[0];
    assert_eq!(dave_records.len(), 1, "{dave_records:#?}");
    let denied = last(dave_records)?;
    assert_eq!(denied.outcome, ActionOutcome::Failed, "{}", denied.detail);
    assert!(
        !denied.retryable && denied.attempts.is_none() && denied.detail.contains("AccessDenied"),
        "a permanent failure is final at the first try: {denied:#?}"
    );
    assert_eq!(active_keys(&iam, &dave).await?, 1);

    let erin_records = &records[1];
    let retried = erin_records
        .iter()
        .find(|r| r.outcome == ActionOutcome::Failed)
        .with_context(|| format!("{erin_records:#?}"))?;
    assert!(
        retried.retryable
            && retried.attempts == Some(2)
            && retried.detail.contains("ServiceUnavailable")
            && retried.detail.contains("will try again"),
        "{retried:#?}"
    );
    let applied = last(erin_records)?;
    assert_eq!(applied.outcome, ActionOutcome::Applied, "{erin_records:#?}");
    assert_eq!(
        active_keys(&iam, &erin).await?,
        0,
        "erin suspended in the end"
    );
    Ok(())
}

/// With `escalate` (the default) an action beyond its budget is refused and the alert goes to
/// the notification channels; the budget is counted from the action records, so a restarted
/// remediate still refuses. With `wait` the action is taken once the budget frees up.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_actions_escalate_or_wait_and_budgets_survive_restarts() -> Result<()> {
    let iam = iam_client().await?;
    let users: Vec<String> = (0..5).map(|i| unique(&format!("limited{i}"))).collect();
    for u in &users {
        user_with_active_key(&iam, u).await?;
    }

    // Escalate, across a restart.
    let run = Run::new("retry-escalate")?;
    let config = remediate_config(
        &run,
        &aws_endpoint()?,
        "[remediate.rate_limits.suspend_user]\nmax = 1\nper = \"1h\"\n",
    )?;
    let mut first = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    // One key: one partition, in order.
    produce(&alerts, "k", &signed(suspend_alert("l0", &users[0])?)?).await?;
    produce(&alerts, "k", &signed(suspend_alert("l1", &users[1])?)?).await?;
    let records = records_of(&run, &["l0", "l1"], ended)?;
    assert_eq!(last(&records[0])?.outcome, ActionOutcome::Applied);
    let refused = last(&records[1])?;
    assert_eq!(
        refused.outcome,
        ActionOutcome::Refused,
        "{}",
        refused.detail
    );
    assert!(
        refused.detail.contains("rate limit") && refused.detail.contains("escalated"),
        "{}",
        refused.detail
    );
    first.stop("-TERM")?;
    let _second = run.spawn("remediate", &["--config", &config])?;
    produce(&alerts, "k", &signed(suspend_alert("l2", &users[2])?)?).await?;
    let records = records_of(&run, &["l2"], ended)?;
    let after_restart = last(&records[0])?;
    assert_eq!(
        after_restart.outcome,
        ActionOutcome::Refused,
        "the budget outlives the process: {}",
        after_restart.detail
    );
    assert_eq!(active_keys(&iam, &users[2]).await?, 1);

    // Wait: the second action runs once the first has left the window.
    let run = Run::new("retry-wait")?;
    let config = remediate_config(
        &run,
        &aws_endpoint()?,
        "when_rate_limited = \"wait\"\n[remediate.rate_limits.suspend_user]\nmax = 1\nper = \"4s\"\n",
    )?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, "k", &signed(suspend_alert("w3", &users[3])?)?).await?;
    produce(&alerts, "k", &signed(suspend_alert("w4", &users[4])?)?).await?;
    let records = records_of(&run, &["w3", "w4"], ended)?;
    let (a, b) = (last(&records[0])?, last(&records[1])?);
    assert_eq!(a.outcome, ActionOutcome::Applied, "{}", a.detail);
    assert_eq!(b.outcome, ActionOutcome::Applied, "{}", b.detail);
    assert!(
        b.time - a.time >= chrono::Duration::milliseconds(3500),
        "the second waited for the budget: {} then {}",
        a.time,
        b.time
    );
    assert_eq!(active_keys(&iam, &users[4]).await?, 0);
    Ok(())
}

/// An action planned while remediate could not tell who it is (STS failing) was planned
/// without the protections that need its identity — its home accounts, so every protection
/// written as a name. When it is tried again, it is judged again: a protected user is never
/// suspended because STS failed once when the alert arrived.
#[tokio::test(flavor = "multi_thread")]
async fn an_action_planned_before_remediate_knows_itself_is_judged_again() -> Result<()> {
    use std::sync::atomic::AtomicBool;
    let run = Run::new("retry-protection")?;
    let iam = iam_client().await?;
    let (guarded, other) = (unique("break-glass"), unique("plain"));
    user_with_active_key(&iam, &guarded).await?;
    user_with_active_key(&iam, &other).await?;
    let sts_up = Arc::new(AtomicBool::new(false));
    let up = sts_up.clone();
    let endpoint = faulty_aws(Box::new(move |body: &str| {
        (body.contains("Action=GetCallerIdentity") && !up.load(Ordering::SeqCst))
            .then_some((503, "ServiceUnavailable"))
    }))
    .await?;
    let config = remediate_config(
        &run,
        &endpoint,
        "protected_principals = [\"break-glass-*\"]\n\
         [remediate.retry]\nattempts = 1\nbackoff = \"100ms\"\nmax_backoff = \"100ms\"\nlater = \"2s\"\n",
    )?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, "g", &signed(suspend_alert("guarded", &guarded)?)?).await?;
    let first = records_of(&run, &["guarded"], |r| !r.is_empty())?;
    let failed = last(&first[0])?;
    assert!(
        failed.outcome == ActionOutcome::Failed && failed.retryable,
        "nothing is done while remediate cannot tell who it is: {failed:#?}"
    );
    sts_up.store(true, Ordering::SeqCst);
    // Another alert: remediate now learns who it is while planning it.
    produce(&alerts, "o", &signed(suspend_alert("other", &other)?)?).await?;
    let records = records_of(&run, &["guarded", "other"], ended)?;
    let judged = last(&records[0])?;
    assert_eq!(judged.outcome, ActionOutcome::Refused, "{:#?}", records[0]);
    assert!(judged.detail.contains("protected"), "{}", judged.detail);
    assert_eq!(active_keys(&iam, &guarded).await?, 1, "never suspended");
    assert_eq!(last(&records[1])?.outcome, ActionOutcome::Applied);
    assert_eq!(active_keys(&iam, &other).await?, 0);
    Ok(())
}
