//! The anomaly detections end to end, through ingest and detect with a configuration file:
//! a deactivated access key used later by its owner (learned on the administrator's partition,
//! raised on the owner's), impossible travel with the DB-IP database when the setup fetched it,
//! and a Tor exit from an intelligence list; every alert also as an OCSF Detection Finding.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_common::Alert;
use trailguard_tests::{read_topic, Run};

fn record(minutes: i64, name: &str, source: &str, user: &str, ip: &str, params: Value) -> Value {
    trailguard_tests::api_call(minutes, name, source, user, ip, params, 100_000)
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_key_travel_and_tor() -> Result<()> {
    let mut run = Run::new("detections")?;
    let ocsf_topic = format!("{}.ocsf", run.id);
    run.env.push((
        "TRAILGUARD_KAFKA__TOPICS__ALERTS_OCSF".into(),
        ocsf_topic.clone(),
    ));
    let dir = std::env::temp_dir().join(&run.id);
    std::fs::create_dir_all(&dir)?;
    let tor = dir.join("tor.txt");
    std::fs::write(&tor, "# sample exits\n185.220.101.0/24\n")?;
    let geo: Vec<String> = ["TRAILGUARD_TEST_GEO_V4", "TRAILGUARD_TEST_GEO_V6"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    let config = dir.join("detect.toml");
    std::fs::write(
        &config,
        format!(
            "[geo]\ndatabases = {geo:?}\n\n[intel]\nlists = [{{ category = \"tor\", path = {:?} }}]\n\n[policies.anomaly]\nlearning_period = \"1d\"\n",
            tor.display().to_string()
        ),
    )?;

    let none = json!({});
    let mut records = vec![
        // Two days of bob, alice and carol from home (New York area).
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "bob",
            "71.253.251.71",
            none.clone(),
        ),
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "carol",
            "71.253.251.72",
            none.clone(),
        ),
        record(
            -2 * 1440,
            "ListUsers",
            "iam.amazonaws.com",
            "alice",
            "71.253.251.73",
            none.clone(),
        ),
        record(
            -5,
            "ListBuckets",
            "s3.amazonaws.com",
            "bob",
            "71.253.251.71",
            none.clone(),
        ),
        // alice deactivates bob's key...
        record(
            0,
            "UpdateAccessKey",
            "iam.amazonaws.com",
            "alice",
            "71.253.251.73",
            json!({"userName": "bob", "accessKeyId": "AKIABOB", "status": "Inactive"}),
        ),
    ];
    // ...and ten minutes later bob's key is used from Europe.
    records.push(record(
        10,
        "ListBuckets",
        "s3.amazonaws.com",
        "bob",
        "92.55.146.245",
        none.clone(),
    ));
    // carol through a Tor exit.
    records.push(record(
        20,
        "DescribeInstances",
        "ec2.amazonaws.com",
        "carol",
        "185.220.101.7",
        none,
    ));
    let input = dir.join("records.jsonl");
    let mut file = std::fs::File::create(&input)?;
    for r in &records {
        writeln!(file, "{r}")?;
    }
    drop(file);

    run.ingest_files(&input)?;
    let mut detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let want: Vec<&str> = if geo.is_empty() {
        vec!["terminated-user", "anonymous-ip"]
    } else {
        vec!["terminated-user", "anonymous-ip", "impossible-travel"]
    };
    let alerts = read_topic(
        &run.topic("alerts"),
        Duration::from_secs(90),
        Duration::from_secs(3),
        |r| {
            let got: Vec<String> = r
                .iter()
                .filter_map(|r| serde_json::from_slice::<Alert>(&r.value).ok())
                .map(|a| a.policy_id)
                .collect();
            want.iter().all(|w| got.iter().any(|g| g == w))
        },
    );
    let log = detect.log();
    detect.stop("-TERM")?;
    let alerts = alerts.with_context(|| format!("detect log: {log}"))?;
    let alerts: Vec<Alert> = alerts
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect();
    let find = |policy: &str| alerts.iter().find(|a| a.policy_id == policy);
    let terminated = find("terminated-user").context("terminated-user")?;
    assert_eq!(terminated.entity.id, "arn:aws:iam::123456789012:user/bob");
    assert!(
        terminated.evidence.summary.contains("AKIABOB"),
        "{}",
        terminated.evidence.summary
    );
    let tor = find("anonymous-ip").context("anonymous-ip")?;
    assert_eq!(tor.entity.id, "arn:aws:iam::123456789012:user/carol");
    if !geo.is_empty() {
        let travel = find("impossible-travel").context("impossible-travel")?;
        assert_eq!(travel.entity.id, "arn:aws:iam::123456789012:user/bob");
        assert_eq!(travel.evidence.activity_ids.len(), 2);
    }
    // Every alert again as an OCSF Detection Finding.
    let findings = read_topic(
        &ocsf_topic,
        Duration::from_secs(30),
        Duration::from_secs(1),
        |r| r.len() >= alerts.len(),
    )?;
    for f in &findings {
        let f: Value = serde_json::from_slice(&f.value)?;
        assert_eq!(f["class_uid"], 2004, "{f}");
        assert!(
            alerts
                .iter()
                .any(|a| f["finding_info"]["uid"] == a.id.as_str()),
            "{f}"
        );
    }
    // Nobody else is anomalous.
    assert!(
        alerts.iter().all(|a| a.entity.id.ends_with("/bob")
            || a.entity.id.ends_with("/carol")
            || a.policy_id == "iam-policy-changes"),
        "{alerts:#?}"
    );
    Ok(())
}

/// A password spray: one address, one failed console sign-in (the sample's real record,
/// re-addressed and re-timed) for each of 24 users within eight minutes. The activities topic
/// is keyed by actor, so its three partitions each see only some of the failures; detect
/// counts them together on the sign-in failures topic, keyed by address: one high alert for
/// the address, however many partitions the users fell on, and none per user.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_spray_across_partitions_is_one_alert() -> Result<()> {
    const USERS: usize = 24;
    const SPRAYER: &str = "203.0.113.77";
    let run = Run::new("spray")?;
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(
        trailguard_tests::repo().join("deploy/demo/sample/02-signin-failures.json"),
    )?)?;
    let template = sample["Records"][0].clone();
    let start = chrono::DateTime::parse_from_rfc3339("2024-06-01T03:00:00Z")?;
    let input = std::env::temp_dir().join(format!("{}.jsonl", run.id));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for i in 0..USERS {
        let mut r = template.clone();
        r["userIdentity"]["arn"] = Value::from(format!("arn:aws:iam::123456789012:user/staff{i}"));
        r["userIdentity"]["userName"] = Value::from(format!("staff{i}"));
        r["sourceIPAddress"] = Value::from(SPRAYER);
        r["eventID"] = Value::from(format!("00000000-0000-4000-9000-{i:012}"));
        let time = start + chrono::Duration::seconds(20 * i as i64);
        r["eventTime"] = Value::from(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        writeln!(file, "{r}")?;
    }
    file.flush()?;
    drop(file);
    run.ingest_files(&input)?;
    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::ZERO,
        |r| r.len() >= USERS,
    )?;
    let partitions: std::collections::BTreeSet<i32> =
        activities.iter().map(|r| r.partition).collect();
    ensure!(
        partitions.len() > 1,
        "every user fell on one partition; the test would not show counting across them"
    );

    let detect = run.spawn("detect", &[])?;
    let records = read_topic(
        &run.topic("alerts"),
        Duration::from_secs(120),
        Duration::from_secs(5),
        |r| !r.is_empty(),
    )?;
    let alerts: Vec<Alert> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.value))
        .collect::<Result<_, _>>()?;
    let ids: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{alerts:#?}\n{}", detect.log());
    let alert = &alerts[0];
    assert_eq!(alert.policy_id, "console-signin-failures");
    assert_eq!(
        (alert.entity.kind.as_str(), alert.entity.id.as_str()),
        ("source-ip", SPRAYER)
    );
    assert_eq!(alert.severity, trailguard_common::contract::Severity::High);
    assert!(
        alert.evidence.summary.starts_with(&format!(
            "password spray: 5 failed console sign-ins from {SPRAYER} against 5 principals"
        )),
        "{}",
        alert.evidence.summary
    );
    Ok(())
}
