//! The broker goes down in the middle of `ingest files` and comes back: ingest waits, retries,
//! and exits 0 with every record published — none lost. Uses a broker of its own (of the kind
//! the suite runs on, on free ports, started and killed by the test), so the shared one is not
//! disturbed.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_tests::{read_topic_at, PrivateBroker, Run};

#[test]
fn broker_down_mid_run_loses_nothing() -> Result<()> {
    const RECORDS: usize = 60_000;
    let mut run = Run::new("broker-down")?;
    let dir = std::env::temp_dir().join(&run.id);
    std::fs::create_dir_all(&dir)?;
    let mut broker = PrivateBroker::start(&dir.join("broker"))?;
    let brokers = broker.address();
    for (key, value) in run.env.iter_mut() {
        if key == "TRAILGUARD_BROKERS" {
            *value = brokers.clone();
        }
    }
    let input = dir.join("records.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for i in 0..RECORDS {
        let record = json!({
            "eventVersion": "1.08", "eventTime": "2024-05-01T00:00:00Z", "eventSource": "s3.amazonaws.com",
            "eventName": "ListBuckets", "awsRegion": "us-east-1", "sourceIPAddress": "1.2.3.4",
            "eventID": format!("00000000-0000-4000-8000-{i:012}"),
            "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::111111111111:user/u{}", i % 500)},
        });
        writeln!(file, "{record}")?;
    }
    file.flush()?;
    drop(file);

    let mut ingest = run
        .command(
            "ingest",
            &[
                "files",
                "--summary",
                "json",
                input.to_str().context("path")?,
            ],
        )?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Let it publish a while, then take the broker away for a few seconds.
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        ingest.try_wait()?.is_none(),
        "ingest finished before the broker went down; make the input longer"
    );
    broker.kill()?;
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        ingest.try_wait()?.is_none(),
        "ingest gave up while the broker was down"
    );
    broker.restart()?;

    let out = ingest.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "ingest failed: {stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["published"], RECORDS as u64, "{summary}");

    let records = read_topic_at(
        &brokers,
        &run.topic("activities"),
        Duration::from_secs(120),
        Duration::from_secs(2),
        |r| r.len() >= RECORDS,
    )?;
    let ids: std::collections::BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.json().ok())
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    broker.kill()?;
    assert_eq!(ids.len(), RECORDS, "every record, none lost");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
