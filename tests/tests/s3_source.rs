//! `ingest s3` against moto: account and organization layouts, several accounts, regions and
//! days, digests, Insights and stray files mixed in, filters, and resuming from checkpoints.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use trailguard_tests::{read_topic, s3, Run};

fn log_file(account: &str, region: &str, records: usize, tag: &str) -> Result<Vec<u8>> {
    let records: Vec<Value> = (0..records)
        .map(|i| {
            json!({
                "eventVersion": "1.08", "eventTime": "2024-01-01T00:00:00Z", "eventSource": "s3.amazonaws.com",
                "eventName": "ListBuckets", "awsRegion": region, "sourceIPAddress": "1.2.3.4",
                "eventID": format!("{tag}-{i}"), "recipientAccountId": account,
                "userIdentity": {"type": "IAMUser", "arn": format!("arn:aws:iam::{account}:user/u{i}"), "accountId": account}
            })
        })
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json!({ "Records": records }).to_string().as_bytes())?;
    Ok(gz.finish()?)
}

fn key(root: &str, account: &str, region: &str, day: &str, time: &str) -> String {
    format!(
        "{root}{account}/CloudTrail/{region}/{day}/{account}_CloudTrail_{region}_{time}_x.json.gz"
    )
}

async fn put(client: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await?;
    Ok(())
}

fn ingest_s3(run: &Run, bucket: &str, extra: &[&str]) -> Result<Value> {
    let out = ingest_s3_at(run, bucket, &trailguard_tests::aws_endpoint()?, extra)?;
    ensure!(
        out.status.success(),
        "ingest s3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `ingest s3 --once` against the AWS endpoint `endpoint`, whatever its outcome.
fn ingest_s3_at(
    run: &Run,
    bucket: &str,
    endpoint: &str,
    extra: &[&str],
) -> Result<std::process::Output> {
    let mut args = vec![
        "s3",
        "--once",
        "--summary",
        "json",
        "--bucket",
        bucket,
        "--prefix",
        "trail/",
        "--aws-endpoint",
        endpoint,
    ];
    args.extend_from_slice(extra);
    Ok(run.command("ingest", &args)?.output()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn layouts_filters_and_checkpoints() -> Result<()> {
    let run = Run::new("s3src")?;
    let bucket = format!("trail-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    client.create_bucket().bucket(&bucket).send().await?;
    let account_root = "trail/AWSLogs/";
    let org_root = "trail/AWSLogs/o-abc123/";
    // Account layout: two regions, two days; organization layout: another account.
    put(
        &client,
        &bucket,
        &key(
            account_root,
            "111111111111",
            "us-east-1",
            "2024/01/01",
            "20240101T0000Z",
        ),
        log_file("111111111111", "us-east-1", 3, "a")?,
    )
    .await?;
    put(
        &client,
        &bucket,
        &key(
            account_root,
            "111111111111",
            "us-east-1",
            "2024/01/02",
            "20240102T0000Z",
        ),
        log_file("111111111111", "us-east-1", 2, "b")?,
    )
    .await?;
    put(
        &client,
        &bucket,
        &key(
            account_root,
            "111111111111",
            "eu-west-1",
            "2024/01/01",
            "20240101T0100Z",
        ),
        log_file("111111111111", "eu-west-1", 4, "c")?,
    )
    .await?;
    put(
        &client,
        &bucket,
        &key(
            org_root,
            "222222222222",
            "us-east-1",
            "2024/01/01",
            "20240101T0200Z",
        ),
        log_file("222222222222", "us-east-1", 5, "d")?,
    )
    .await?;
    // Not trail log files: a digest, an Insights file, a stray file in a region folder.
    put(&client, &bucket, "trail/AWSLogs/111111111111/CloudTrail-Digest/us-east-1/2024/01/01/111111111111_CloudTrail-Digest_us-east-1_t_us-east-1_20240101T000000Z.json.gz", b"{}".to_vec()).await?;
    put(&client, &bucket, "trail/AWSLogs/111111111111/CloudTrail-Insight/us-east-1/2024/01/01/111111111111_CloudTrail-Insight_us-east-1_20240101T0000Z_x.json.gz", b"{}".to_vec()).await?;
    put(
        &client,
        &bucket,
        "trail/AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/README.txt",
        b"hi".to_vec(),
    )
    .await?;

    // Only the organization's account first (its own checkpoints topic).
    let mut filtered = Run::new("s3src-filtered")?;
    filtered
        .env
        .retain(|(k, _)| k != "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES");
    filtered.env.push((
        "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES".into(),
        run.topic("filtered"),
    ));
    let only_org = ingest_s3(&filtered, &bucket, &["--account", "222222222222"])?;
    assert_eq!(only_org["published"], 5, "{only_org}");

    let first = ingest_s3(&run, &bucket, &[])?;
    assert_eq!(first["published"], 14, "{first}");
    assert_eq!(first["inputs_read"], 4, "{first}");
    assert_eq!(
        first["inputs_skipped"], 3,
        "digest and Insights folders, the stray file: {first}"
    );

    // Nothing new: the checkpoints say where each stream left off.
    let second = ingest_s3(&run, &bucket, &[])?;
    assert_eq!(second["published"], 0, "{second}");
    assert_eq!(second["inputs_read"], 0, "{second}");

    // A new file in one stream: only it is read.
    put(
        &client,
        &bucket,
        &key(
            account_root,
            "111111111111",
            "us-east-1",
            "2024/01/02",
            "20240102T0500Z",
        ),
        log_file("111111111111", "us-east-1", 6, "e")?,
    )
    .await?;
    let third = ingest_s3(&run, &bucket, &[])?;
    assert_eq!(third["published"], 6, "{third}");

    // Delivered later in the same minute as the last file read, with a suffix that sorts
    // before it: still read, and only it.
    let late = key(
        account_root,
        "111111111111",
        "us-east-1",
        "2024/01/02",
        "20240102T0500Z",
    )
    .replace("_x.json.gz", "_a.json.gz");
    put(
        &client,
        &bucket,
        &late,
        log_file("111111111111", "us-east-1", 2, "f")?,
    )
    .await?;
    let fourth = ingest_s3(&run, &bucket, &[])?;
    assert_eq!(fourth["published"], 2, "{fourth}");
    assert_eq!(fourth["inputs_read"], 1, "{fourth}");

    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(2),
        |r| r.len() >= 22,
    )?;
    assert_eq!(activities.len(), 22);

    // A start date skips earlier days on a stream's first listing: only the three files of
    // January 2 (2 + 6 + 2 records).
    let dated = Run::new("s3src-dated")?;
    let from_jan_2 = ingest_s3(&dated, &bucket, &["--start-date", "2024-01-02"])?;
    assert_eq!(from_jan_2["published"], 10, "{from_jan_2}");
    Ok(())
}

/// Objects above `s3.stream_above_bytes` are streamed record by record: every record of a
/// large file arrives, and a file cut off half-way gives its first records and a dead letter
/// saying where it broke.
#[tokio::test(flavor = "multi_thread")]
async fn large_objects_are_streamed() -> Result<()> {
    let mut run = Run::new("s3-stream")?;
    run.env
        .push(("TRAILGUARD_S3__STREAM_ABOVE_BYTES".into(), "1000".into()));
    let bucket = format!("stream-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    client.create_bucket().bucket(&bucket).send().await?;
    let root = "trail/AWSLogs/";
    let whole = log_file("111111111111", "us-east-1", 3000, "big")?;
    put(
        &client,
        &bucket,
        &key(
            root,
            "111111111111",
            "us-east-1",
            "2024/01/01",
            "20240101T0000Z",
        ),
        whole,
    )
    .await?;
    let cut = log_file("111111111111", "us-east-1", 3000, "cut")?;
    let half = cut[..cut.len() / 2].to_vec();
    put(
        &client,
        &bucket,
        &key(
            root,
            "111111111111",
            "us-east-1",
            "2024/01/01",
            "20240101T0005Z",
        ),
        half,
    )
    .await?;

    let summary = tokio::task::block_in_place(|| ingest_s3(&run, &bucket, &[]))?;
    assert_eq!(summary["inputs_read"], 2, "{summary}");
    assert_eq!(summary["inputs_dead_lettered"], 1, "{summary}");
    let published = summary["published"].as_u64().unwrap_or_default();
    assert!(
        published > 3000 && published < 6000,
        "all of one file and part of the other: {summary}"
    );
    let dead = read_topic(
        &run.topic("dlq"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| !r.is_empty(),
    )?;
    let reason = dead[0]
        .headers
        .iter()
        .find(|(k, _)| *k == "trailguard.reason")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        reason.contains(&format!("after {} records", published - 3000)),
        "{reason}"
    );
    Ok(())
}

/// Killed (SIGKILL) in the middle of a listing, `ingest s3` resumes from its checkpoints: the
/// second run reads only what the first did not finish, and every record is on the topic.
#[tokio::test(flavor = "multi_thread")]
async fn resumes_after_a_kill() -> Result<()> {
    const FILES: usize = 30;
    const PER_FILE: usize = 2000;
    let run = Run::new("s3-kill")?;
    let bucket = format!("kill-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    client.create_bucket().bucket(&bucket).send().await?;
    for f in 0..FILES {
        let body = log_file("111111111111", "us-east-1", PER_FILE, &format!("k{f}"))?;
        let time = format!("20240101T{:02}{:02}Z", f / 60, f % 60);
        put(
            &client,
            &bucket,
            &key(
                "trail/AWSLogs/",
                "111111111111",
                "us-east-1",
                "2024/01/01",
                &time,
            ),
            body,
        )
        .await?;
    }
    let endpoint = trailguard_tests::aws_endpoint()?;
    let args = [
        "s3",
        "--once",
        "--summary",
        "json",
        "--bucket",
        &bucket,
        "--prefix",
        "trail/",
        "--aws-endpoint",
        &endpoint,
    ];
    let mut first = run
        .command("ingest", &args)?
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Kill it once some records are on the topic.
    tokio::task::block_in_place(|| {
        read_topic(
            &run.topic("activities"),
            Duration::from_secs(60),
            Duration::ZERO,
            |r| r.len() >= PER_FILE * 2,
        )
    })?;
    ensure!(
        first.try_wait()?.is_none(),
        "the first run finished before the kill; add files"
    );
    first.kill()?;
    first.wait()?;
    let second = tokio::task::block_in_place(|| ingest_s3(&run, &bucket, &[]))?;
    let read_again = second["inputs_read"].as_u64().unwrap_or_default();
    assert!(
        read_again < FILES as u64,
        "resumed, not started over: {second}"
    );
    let all = tokio::task::block_in_place(|| {
        read_topic(
            &run.topic("activities"),
            Duration::from_secs(120),
            Duration::from_secs(2),
            |r| r.len() >= FILES * PER_FILE,
        )
    })?;
    let ids: std::collections::BTreeSet<String> = all
        .iter()
        .filter_map(|r| r.json().ok())
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), FILES * PER_FILE, "every record of every file");
    Ok(())
}

/// CloudTrail does not deliver in key order: a file named for an earlier minute, or for the
/// day before, can appear after later files were read. Each is read, once, and counted late.
#[tokio::test(flavor = "multi_thread")]
async fn files_delivered_out_of_order_are_read_once() -> Result<()> {
    let run = Run::new("s3-late")?;
    let bucket = format!("late-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    client.create_bucket().bucket(&bucket).send().await?;
    let at = |day: &str, time: &str| key("trail/AWSLogs/", "111111111111", "us-east-1", day, time);
    put(
        &client,
        &bucket,
        &at("2024/01/02", "20240102T0005Z"),
        log_file("111111111111", "us-east-1", 3, "now")?,
    )
    .await?;
    let first = tokio::task::block_in_place(|| ingest_s3(&run, &bucket, &[]))?;
    assert_eq!(first["published"], 3, "{first}");

    // An earlier minute of the same day, and the previous day's last file.
    put(
        &client,
        &bucket,
        &at("2024/01/02", "20240102T0004Z"),
        log_file("111111111111", "us-east-1", 2, "minute")?,
    )
    .await?;
    put(
        &client,
        &bucket,
        &at("2024/01/01", "20240101T2359Z"),
        log_file("111111111111", "us-east-1", 4, "day")?,
    )
    .await?;
    let second = tokio::task::block_in_place(|| ingest_s3(&run, &bucket, &[]))?;
    assert_eq!(second["published"], 6, "{second}");
    assert_eq!(second["inputs_read"], 2, "{second}");
    assert_eq!(second["late_inputs"], 2, "{second}");

    let third = tokio::task::block_in_place(|| ingest_s3(&run, &bucket, &[]))?;
    assert_eq!(third["inputs_read"], 0, "each file once: {third}");
    let all = tokio::task::block_in_place(|| {
        read_topic(
            &run.topic("activities"),
            Duration::from_secs(60),
            Duration::from_secs(2),
            |r| r.len() >= 9,
        )
    })?;
    assert_eq!(all.len(), 9);
    Ok(())
}

/// Why an object could not be read is judged by the error's code, never by its text (which
/// names the key): a throttled object whose key contains `AccessDenied` is tried again, and so
/// is an object refused for want of permission — until it has been refused for longer than
/// `s3.retry_denied_for`, when it is dead-lettered and the stream moves on.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_objects_are_retried_by_code() -> Result<()> {
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;
    let run = Run::new("s3-unreadable")?;
    let bucket = format!("unread-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    client.create_bucket().bucket(&bucket).send().await?;
    let at = |time: &str, unique: &str| {
        key(
            "trail/AWSLogs/",
            "111111111111",
            "us-east-1",
            "2024/01/01",
            time,
        )
        .replace("_x.json.gz", &format!("_{unique}.json.gz"))
    };
    put(
        &client,
        &bucket,
        &at("20240101T0000Z", "AccessDenied"),
        log_file("111111111111", "us-east-1", 3, "named")?,
    )
    .await?;
    put(
        &client,
        &bucket,
        &at("20240101T0005Z", "b"),
        log_file("111111111111", "us-east-1", 2, "denied")?,
    )
    .await?;
    // 0: no faults; 1: both objects fail; 2: only the second.
    let faults = Arc::new(AtomicU8::new(1));
    let mode = faults.clone();
    let endpoint = trailguard_tests::faulty_aws(Box::new(move |request: &str| {
        let mode = mode.load(Ordering::SeqCst);
        if mode == 0 || !request.starts_with("GET ") || request.contains("list-type") {
            return None;
        }
        if mode == 1 && request.contains("_AccessDenied.json.gz") {
            return Some((503, "SlowDown"));
        }
        if request.contains("_b.json.gz") {
            return Some((403, "AccessDenied"));
        }
        None
    }))
    .await?;

    // Throttled, then refused: the run fails, nothing is skipped or dead-lettered.
    let first = tokio::task::block_in_place(|| ingest_s3_at(&run, &bucket, &endpoint, &[]))?;
    ensure!(
        !first.status.success(),
        "a throttled object must be tried again, not skipped"
    );
    let dlq = run.topic("dlq");
    assert_eq!(
        trailguard_tests::topic_end(&dlq)?,
        0,
        "nothing dead-lettered"
    );
    faults.store(0, Ordering::SeqCst);
    let second = tokio::task::block_in_place(|| ingest_s3_at(&run, &bucket, &endpoint, &[]))?;
    ensure!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let second: Value = serde_json::from_slice(&second.stdout)?;
    assert_eq!(
        second["published"], 5,
        "both files, once the faults cleared: {second}"
    );

    // Refused for longer than the retry period, counted from the first refusal (not from when
    // the file was written: a backfill reads old files): dead-lettered, naming the object.
    let mut patient = Run::new("s3-unreadable-old")?;
    patient
        .env
        .push(("TRAILGUARD_S3__RETRY_DENIED_FOR".into(), "2s".into()));
    faults.store(2, Ordering::SeqCst);
    let refused = tokio::task::block_in_place(|| ingest_s3_at(&patient, &bucket, &endpoint, &[]))?;
    ensure!(
        !refused.status.success(),
        "refused for the first time: tried again, not dead-lettered"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let third = tokio::task::block_in_place(|| ingest_s3_at(&patient, &bucket, &endpoint, &[]))?;
    ensure!(
        third.status.success(),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    let third: Value = serde_json::from_slice(&third.stdout)?;
    assert_eq!(
        third["published"], 0,
        "the first file was read by the first run: {third}"
    );
    let letters = tokio::task::block_in_place(|| {
        read_topic(
            &patient.topic("dlq"),
            Duration::from_secs(30),
            Duration::from_secs(1),
            |r| !r.is_empty(),
        )
    })?;
    let reason = letters[0]
        .headers
        .iter()
        .find(|(k, _)| *k == "trailguard.reason")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        reason.contains("_b.json.gz") && reason.contains("AccessDenied"),
        "{reason}"
    );
    assert_eq!(letters.len(), 1, "only the refused object");
    Ok(())
}
