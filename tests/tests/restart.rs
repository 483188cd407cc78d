//! Restarts mid-stream lose nothing and repeat nothing: detect stopped with SIGTERM and killed
//! with SIGKILL raises the same alerts as an uninterrupted run; remediate restarted never acts
//! twice on one alert.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;
use trailguard_common::{ActionRecord, Alert};
use trailguard_tests::{produce, read_topic, repo, wait_for_topic, Run};

const TIMEOUT: Duration = Duration::from_secs(180);

/// NDJSON of `users` × 7 failed console sign-ins a minute apart (enough for one burst each, on
/// both the principal and the source IP), built from the real failure record in the demo sample;
/// and per user a baseline of one TerminateInstances call a day for the 8 days before, then a
/// burst of 6 calls (12 instances) among the sign-ins — a "multiple delete VM activities" alert
/// that only a detector which kept the user's week-old baseline can raise.
/// User `u` starts at minute 3u, and records are in time order, so windows keep closing and the
/// committed offsets keep moving while the stream is consumed.
fn burst_file(users: usize) -> Result<PathBuf> {
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(
        repo().join("deploy/demo/sample/02-signin-failures.json"),
    )?)?;
    let template = sample["Records"][0].clone();
    let path = std::env::temp_dir().join(format!("bursts-{}-{users}.jsonl", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")?;
    let events: Vec<(i64, usize)> = (0..users)
        .flat_map(|user| (0..7).map(move |m| (user as i64 * 3 + m, user)))
        .collect();
    // Terminations: (minute, user, -1 for the baseline days / burst index).
    let mut terminations: Vec<(i64, usize)> = (0..users)
        .flat_map(|user| {
            let history = (1..=8).map(move |day| (-day * 1440 + user as i64, user));
            let burst = (0..6).map(move |i| (user as i64 * 3 + 1 + i, user));
            history.chain(burst)
        })
        .collect();
    terminations.sort();
    let mut merged: Vec<(i64, usize, bool)> = events
        .into_iter()
        .map(|(m, u)| (m, u, false))
        .chain(terminations.into_iter().map(|(m, u)| (m, u, true)))
        .collect();
    merged.sort();
    for (minute, user, terminate) in merged {
        if terminate {
            let time = start + chrono::Duration::minutes(minute);
            let record = serde_json::json!({
                "eventVersion": "1.09", "eventTime": time.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "eventSource": "ec2.amazonaws.com", "eventName": "TerminateInstances",
                "awsRegion": "us-east-1", "recipientAccountId": "123456789012",
                "sourceIPAddress": format!("10.{}.{}.1", user / 250, user % 250),
                "userAgent": "aws-cli/2.15.0", "eventType": "AwsApiCall", "readOnly": false,
                "eventID": format!("t-{user}-{minute}"),
                "userIdentity": {"type": "IAMUser", "userName": format!("u{user}"),
                    "arn": format!("arn:aws:iam::123456789012:user/u{user}"), "accountId": "123456789012"},
                "requestParameters": {"instancesSet": {"items": [
                    {"instanceId": format!("i-{user}-{minute}-a")}, {"instanceId": format!("i-{user}-{minute}-b")}]}},
            });
            writeln!(file, "{record}")?;
            continue;
        }
        {
            let mut record = template.clone();
            record["userIdentity"]["arn"] =
                Value::from(format!("arn:aws:iam::123456789012:user/u{user}"));
            record["userIdentity"]["userName"] = Value::from(format!("u{user}"));
            record["sourceIPAddress"] = Value::from(format!("10.{}.{}.1", user / 250, user % 250));
            record["eventID"] = Value::from(format!("e-{user}-{minute}"));
            let time = start + chrono::Duration::minutes(minute);
            record["eventTime"] = Value::from(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
            writeln!(file, "{record}")?;
        }
    }
    file.flush()?;
    Ok(path)
}

fn alert_ids(topic: &str, distinct: usize) -> Result<(BTreeSet<String>, usize)> {
    let records = read_topic(topic, TIMEOUT, Duration::from_secs(3), |r| {
        r.iter()
            .filter_map(|r| serde_json::from_slice::<Alert>(&r.value).ok())
            .map(|a| a.id)
            .collect::<BTreeSet<_>>()
            .len()
            >= distinct
    })?;
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| serde_json::from_slice::<Alert>(&r.value).map(|a| a.id))
        .collect::<Result<_, _>>()?;
    Ok((ids, records.len()))
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_restarted_mid_stream_raises_the_same_alerts() -> Result<()> {
    const USERS: usize = 600;
    let run = Run::new("detect-restart")?;
    let input = burst_file(USERS)?;
    run.ingest_files(&input)?;
    // One burst per principal and one per source IP, one VM-deletion burst per principal.
    let expected = USERS * 3;

    // Uninterrupted reference run.
    let mut reference = run.spawn("detect", &[])?;
    let (reference_ids, _) = alert_ids(&run.topic("alerts"), expected)?;
    reference.stop("-TERM")?;
    assert_eq!(reference_ids.len(), expected);

    // Same activities, a new group and alerts topic; stopped with SIGTERM, then killed with
    // SIGKILL, mid-stream.
    let mut again = Run::new("detect-restart-b")?;
    // A killed member leaves the group only when its session times out: keep that short.
    again.env.push((
        "TRAILGUARD_KAFKA__CLIENT__SESSION_TIMEOUT_MS".into(),
        "6000".into(),
    ));
    for (key, value) in again.env.iter_mut() {
        if key == "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES" {
            *value = run.topic("activities");
        }
    }
    let alerts = again.topic("alerts");
    for signal in ["-TERM", "-KILL"] {
        let mut detect = again.spawn("detect", &[])?;
        let seen = read_topic(&alerts, TIMEOUT, Duration::ZERO, |r| {
            r.len() >= expected / 4
        })?
        .len();
        let status = detect.stop(signal)?;
        if signal == "-TERM" {
            ensure!(
                status.success(),
                "detect exited {status} on SIGTERM: {}",
                detect.log()
            );
        }
        ensure!(
            seen < expected * 2,
            "the stream finished before the {signal}; make it longer"
        );
    }
    let _detect = again.spawn("detect", &[])?;
    let (ids, messages) = alert_ids(&alerts, expected)?;
    // None lost, none new; a replay may repeat an alert, always with the same id.
    assert_eq!(ids, reference_ids);
    assert!(messages >= expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remediate_restarted_never_acts_twice() -> Result<()> {
    let run = Run::new("remediate-restart")?;
    let alerts = run.topic("alerts");
    let actions = run.topic("actions");
    let alert = |id: &str| -> Result<Vec<u8>> {
        let mut alert: trailguard_common::Alert = serde_json::from_str(include_str!("alert.json"))?;
        alert.id = id.into();
        trailguard_tests::signed(alert)
    };

    let mut remediate = run.spawn("remediate", &[])?;
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, "e", &alert("alert-1")?).await?;
    read_topic(&actions, TIMEOUT, Duration::ZERO, |r| !r.is_empty())?;
    let status = remediate.stop("-TERM")?;
    ensure!(
        status.success(),
        "remediate exited {status}: {}",
        remediate.log()
    );

    // The same alert again (a replayed detect), and a new one, while remediate is down.
    produce(&alerts, "e", &alert("alert-1")?).await?;
    produce(&alerts, "e", &alert("alert-2")?).await?;
    let _remediate = run.spawn("remediate", &[])?;
    let records = read_topic(&actions, TIMEOUT, Duration::from_secs(3), |r| r.len() >= 2)?;
    let mut answered: Vec<String> = records
        .iter()
        .map(|r| serde_json::from_slice::<ActionRecord>(&r.value).map(|a| a.alert_id))
        .collect::<Result<_, _>>()?;
    // Keyed by alert id, so the two may sit on different partitions: compare as a set.
    answered.sort();
    assert_eq!(
        answered,
        ["alert-1", "alert-2"],
        "one action record per alert, never two"
    );
    Ok(())
}

/// Something on the activities topic that is not an activity goes to the dead-letter topic with
/// its reason; detect neither panics nor stalls on it.
#[tokio::test(flavor = "multi_thread")]
async fn detect_dead_letters_what_it_cannot_read() -> Result<()> {
    let run = Run::new("detect-poison")?;
    let _detect = run.spawn("detect", &[])?;
    let activities = run.topic("activities");
    wait_for_topic(&activities, TIMEOUT)?;
    produce(&activities, "k", b"not json at all").await?;
    produce(&activities, "k", br#"{"schema_version": 99}"#).await?;
    let dlq = read_topic(&run.topic("dlq"), TIMEOUT, Duration::from_secs(2), |r| {
        r.len() >= 2
    })?;
    // Dead letters are keyed by where they came from, so they may sit on different partitions.
    let mut letters: Vec<(&str, &[u8])> = dlq
        .iter()
        .filter_map(|r| {
            r.headers
                .get("trailguard.error_kind")
                .map(|k| (k.as_str(), r.value.as_slice()))
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        [
            ("undecodable_activity", b"not json at all".as_slice()),
            (
                "unsupported_schema_version",
                br#"{"schema_version": 99}"#.as_slice()
            )
        ]
    );
    assert!(dlq
        .iter()
        .all(|r| r.headers.get("trailguard.stage").map(String::as_str) == Some("detect")));
    Ok(())
}

/// Two detect instances in one consumer group split the partitions and together raise exactly
/// the alerts one instance raises: bursts, and the baselines each restores for its partitions.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_raise_what_one_does() -> Result<()> {
    const USERS: usize = 150;
    let run = Run::new("detect-pair")?;
    let input = burst_file(USERS)?;
    run.ingest_files(&input)?;
    let expected = USERS * 3;
    let mut one = run.spawn("detect", &[])?;
    let (reference, _) = alert_ids(&run.topic("alerts"), expected)?;
    one.stop("-TERM")?;
    assert_eq!(reference.len(), expected);

    // The pair joins its group first, then the same records arrive (same ids, so the same
    // alert ids), so both have partitions when the work starts.
    let pair = Run::new("detect-pair-b")?;
    let mut a = pair.spawn("detect", &[])?;
    let mut b = pair.spawn("detect", &[])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(a.log().contains("detect running") && b.log().contains("detect running")) {
        ensure!(
            std::time::Instant::now() < deadline,
            "detect did not start: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the group settle on both members.
    std::thread::sleep(Duration::from_secs(8));
    pair.ingest_files(&input)?;
    let (ids, _) = alert_ids(&pair.topic("alerts"), expected)?;
    a.stop("-TERM")?;
    b.stop("-TERM")?;
    assert_eq!(ids, reference);
    // Both took part.
    let worked = |log: String| log.contains("baselines restored");
    assert!(
        worked(a.log()) && worked(b.log()),
        "one instance did all the work"
    );
    Ok(())
}
