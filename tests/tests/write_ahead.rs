//! Exactly-once effect and exact undo (R3): remediate records an action's prior state before
//! its first change. The tests stop remediate the way a crash would — the process exits right
//! after its first successful mutating AWS call (`TRAILGUARD_FAULT_EXIT_AFTER`) — and then undo
//! from the command line, with and without a restart in between. moto stands in for IAM.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aws_sdk_iam::types::StatusType;
use trailguard_common::contract::{ActionOutcome, ActionRecord};
use trailguard_tests::{
    aws_endpoint, iam as iam_client, produce, read_topic, signed, suspend_alert, unique,
    user_with_active_key, wait_for_topic, Run, Service,
};

const TIMEOUT: Duration = Duration::from_secs(90);
const SUSPEND_POLICY: &str = "TrailguardSuspended";

fn config(run: &Run) -> Result<String> {
    let path = std::env::temp_dir().join(format!("{}-remediate.toml", run.id));
    std::fs::write(
        &path,
        format!(
            "[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n\n\
             [remediate]\ndefault_mode = \"auto\"\n",
            aws_endpoint()?
        ),
    )?;
    Ok(path.to_str().context("path")?.to_string())
}

/// Every record of `alert_id` on the actions topic, once `done` holds for them.
fn records_of(
    run: &Run,
    alert_id: &str,
    done: impl Fn(&[ActionRecord]) -> bool,
) -> Result<Vec<ActionRecord>> {
    let parse =
        |r: &trailguard_tests::Record| serde_json::from_slice::<ActionRecord>(&r.value).ok();
    let records = read_topic(
        &run.topic("actions"),
        TIMEOUT,
        Duration::from_secs(1),
        |r| {
            let mine: Vec<ActionRecord> = r
                .iter()
                .filter_map(parse)
                .filter(|a| a.alert_id == alert_id)
                .collect();
            done(&mine)
        },
    )?;
    Ok(records
        .iter()
        .filter_map(parse)
        .filter(|a| a.alert_id == alert_id)
        .collect())
}

/// (active keys, has the suspend policy)
async fn state(client: &aws_sdk_iam::Client, name: &str) -> Result<(usize, bool)> {
    let keys = client.list_access_keys().user_name(name).send().await?;
    let active = keys
        .access_key_metadata()
        .iter()
        .filter(|k| k.status() == Some(&StatusType::Active))
        .count();
    let policies = client.list_user_policies().user_name(name).send().await?;
    let suspended = policies.policy_names().iter().any(|p| p == SUSPEND_POLICY);
    Ok((active, suspended))
}

/// Waits for `service` to exit on its own; its exit status code.
async fn exit_code(service: &mut Service) -> Result<Option<i32>> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = service.child.try_wait()? {
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            bail!("remediate did not exit; log:\n{}", service.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts remediate so that it exits right after its first successful `iam:PutUserPolicy`
/// (the deny-all policy, the first change of `suspend_user`), sends it an alert to suspend
/// `name`, and waits for the crash; the run's topics then hold whatever it recorded.
async fn crash_mid_suspend(run: &Run, config: &str, alert_id: &str, name: &str) -> Result<()> {
    let mut crashing = Run {
        id: run.id.clone(),
        env: run.env.clone(),
    };
    crashing.env.push((
        "TRAILGUARD_FAULT_EXIT_AFTER".into(),
        "iam:PutUserPolicy".into(),
    ));
    let mut remediate = crashing.spawn("remediate", &["--config", config])?;
    let alerts = run.topic("alerts");
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, alert_id, &signed(suspend_alert(alert_id, name)?)?).await?;
    let code = exit_code(&mut remediate).await?;
    ensure!(
        code == Some(86),
        "remediate should have stopped after the first change, exit {code:?}; log:\n{}",
        remediate.log()
    );
    Ok(())
}

/// A crash right after the first change: the prior state is on record already (`started`), so
/// undo restores the user exactly; and a remediate started afterwards does not take the
/// undone alert up again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_the_first_change_can_be_undone() -> Result<()> {
    let run = Run::new("write-ahead-crash")?;
    let config = config(&run)?;
    let iam = iam_client().await?;
    let alice = unique("alice");
    user_with_active_key(&iam, &alice).await?;

    crash_mid_suspend(&run, &config, "crash-alice", &alice).await?;
    assert_eq!(
        state(&iam, &alice).await?,
        (1, true),
        "the crash came after the deny-all policy, before the key"
    );
    let records = records_of(&run, "crash-alice", |r| !r.is_empty())?;
    let started = records
        .iter()
        .find(|r| r.outcome == ActionOutcome::Started)
        .with_context(|| format!("no started record: {records:#?}"))?;
    assert!(
        started
            .undo
            .as_ref()
            .is_some_and(|u| u["prior_policy"].is_null()
                && u["active_keys"].as_array().is_some_and(|k| k.len() == 1)),
        "the prior state, read before any change: {:?}",
        started.undo
    );

    trailguard_tests::remediate_undo(&run, &config, &started.id)?;
    assert_eq!(state(&iam, &alice).await?, (1, false), "alice as she was");

    // The alert was never committed; a new remediate reads it again and leaves it: undone.
    let remediate = run.spawn("remediate", &["--config", &config])?;
    let deadline = Instant::now() + TIMEOUT;
    while !remediate
        .log()
        .lines()
        .any(|l| l.contains("crash-alice") && l.contains("already answered"))
    {
        ensure!(
            Instant::now() < deadline,
            "the undone alert was not skipped; log:\n{}",
            remediate.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = records_of(&run, "crash-alice", |_| true)?;
    assert_eq!(
        after.iter().filter(|r| r.undo_of.is_none()).count(),
        records.len(),
        "nothing more done for the undone alert than its start: {after:#?}"
    );
    assert_eq!(state(&iam, &alice).await?, (1, false));
    Ok(())
}

/// A crash right after the first change, then a restart: the replay finds the deny policy
/// already there (its own), finishes the action, and records it as applied with the state from
/// before the first attempt — so undo takes the policy away instead of putting it back.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_a_crash_keeps_the_original_prior_state() -> Result<()> {
    let run = Run::new("write-ahead-replay")?;
    let config = config(&run)?;
    let iam = iam_client().await?;
    let carol = unique("carol");
    user_with_active_key(&iam, &carol).await?;

    crash_mid_suspend(&run, &config, "replay-carol", &carol).await?;
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let records = records_of(&run, "replay-carol", |r| {
        r.iter().any(|a| a.outcome == ActionOutcome::Applied)
    })?;
    assert_eq!(
        state(&iam, &carol).await?,
        (0, true),
        "suspended in the end"
    );
    let applied = records
        .iter()
        .find(|r| r.outcome == ActionOutcome::Applied)
        .context("applied")?;
    let undo_data = applied.undo.as_ref().context("undo data")?;
    assert!(
        undo_data["prior_policy"].is_null(),
        "the state before the first attempt, not the one it left: {undo_data}"
    );

    trailguard_tests::remediate_undo(&run, &config, &applied.id)?;
    assert_eq!(state(&iam, &carol).await?, (1, false), "carol as she was");
    Ok(())
}
