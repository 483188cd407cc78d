//! `ingest sqs` against moto: an S3 event notification (URL-encoded key), CloudTrail's
//! SNS-wrapped notification, a test event and a malformed message on one queue. Records are
//! published, the malformed message is dead-lettered with its reason, and every message is
//! deleted — only after its files' records are durable.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_tests::{read_topic, s3, Run};

fn log_file(records: usize, tag: &str) -> Result<Vec<u8>> {
    let records: Vec<Value> = (0..records)
        .map(|i| json!({
            "eventTime": "2024-01-01T00:00:00Z", "eventSource": "iam.amazonaws.com", "eventName": "ListUsers",
            "awsRegion": "us-east-1", "eventID": format!("{tag}-{i}"), "recipientAccountId": "111111111111",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/alice"}
        }))
        .collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json!({ "Records": records }).to_string().as_bytes())?;
    Ok(gz.finish()?)
}

/// Runs `ingest sqs --once` on `queue` to success; its output (the JSON summary on stdout).
fn ingest_once(run: &Run, queue: &str) -> Result<std::process::Output> {
    let endpoint = trailguard_tests::aws_endpoint()?;
    let args = ["sqs", "--once", "--summary", "json", "--queue-url", queue];
    let out = run
        .command(
            "ingest",
            &[&args[..], &["--aws-endpoint", &endpoint]].concat(),
        )?
        .output()?;
    ensure!(
        out.status.success(),
        "ingest sqs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Every message on `queue` was deleted: none waiting and none in flight (a message received
/// but not deleted is invisible for its visibility timeout, so receiving again cannot tell).
async fn drained(sqs: &aws_sdk_sqs::Client, queue: &str) -> Result<()> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let mut left = Vec::new();
    // The counts are approximate in SQS: a few seconds to settle.
    for _ in 0..10 {
        let attributes = sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await?;
        let count = |name: &A| {
            attributes
                .attributes()
                .and_then(|a| a.get(name))
                .and_then(|n| n.parse::<u64>().ok())
        };
        left = vec![
            count(&A::ApproximateNumberOfMessages),
            count(&A::ApproximateNumberOfMessagesNotVisible),
        ];
        if left == [Some(0), Some(0)] {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("messages left on the queue (waiting, in flight): {left:?}")
}

/// An SQS client for moto, and a new queue named `name`.
async fn queue(name: &str) -> Result<(aws_sdk_sqs::Client, String)> {
    let sqs = aws_sdk_sqs::Client::new(&trailguard_tests::aws_shared().await?);
    let queue = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await?
        .queue_url()
        .context("queue url")?
        .to_string();
    Ok((sqs, queue))
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_are_read_deleted_or_dead_lettered() -> Result<()> {
    let run = Run::new("sqssrc")?;
    let name = format!("trail-{}", &run.id[run.id.len() - 12..]);
    let s3 = s3().await?;
    s3.create_bucket().bucket(&name).send().await?;
    let prefix = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/";
    let key_a = format!("{prefix}111111111111_CloudTrail_us-east-1_20240101T0000Z_a=b.json.gz");
    let key_b = format!("{prefix}111111111111_CloudTrail_us-east-1_20240101T0005Z_c.json.gz");
    s3.put_object()
        .bucket(&name)
        .key(&key_a)
        .body(log_file(3, "a")?.into())
        .send()
        .await?;
    s3.put_object()
        .bucket(&name)
        .key(&key_b)
        .body(log_file(4, "b")?.into())
        .send()
        .await?;

    let (sqs, queue) = queue(&name).await?;
    let s3_event = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": name}, "object": {"key": key_a.replace('=', "%3D")}}}]});
    let cloudtrail = json!({"s3Bucket": name, "s3ObjectKey": [key_b]});
    let sns = json!({"Type": "Notification", "MessageId": "m", "Message": cloudtrail.to_string()});
    // A file deleted before it was read: dead-lettered as unreadable, the message deleted.
    let gone = format!("{prefix}111111111111_CloudTrail_us-east-1_20240101T0010Z_gone.json.gz");
    let missing = json!({"s3Bucket": name, "s3ObjectKey": [gone]});
    for body in [
        missing.to_string(),
        s3_event.to_string(),
        sns.to_string(),
        r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#.into(),
        "this is not a notification".into(),
    ] {
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await?;
    }

    let out = ingest_once(&run, &queue)?;
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["published"], 7, "{summary}");
    assert_eq!(summary["inputs_read"], 2, "{summary}");
    assert_eq!(summary["dead_lettered"], 2, "{summary}");

    let dlq = read_topic(
        &run.topic("dlq"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| r.len() >= 2,
    )?;
    assert_eq!(dlq.len(), 2);
    let kind = |i: usize| {
        dlq[i]
            .headers
            .get("trailguard.error_kind")
            .cloned()
            .unwrap_or_default()
    };
    let bad = (0..2)
        .find(|&i| kind(i) == "bad_notification")
        .context("bad_notification")?;
    assert_eq!(dlq[bad].value, b"this is not a notification");
    let unreadable = (0..2)
        .find(|&i| kind(i) == "unreadable")
        .context("unreadable")?;
    let reason = dlq[unreadable]
        .headers
        .get("trailguard.reason")
        .cloned()
        .unwrap_or_default();
    assert!(reason.contains("NoSuchKey"), "{reason}");

    // Every message was deleted.
    drained(&sqs, &queue).await?;
    Ok(())
}

/// Scrapes a running `ingest` until `series` reaches `at_least`; returns the scrape.
async fn scrape_until(
    service: &trailguard_tests::Service,
    series: &str,
    at_least: f64,
) -> Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let log = service.log();
        if let Some(scrape) = trailguard_tests::admin_addr(&log)
            .and_then(|addr| trailguard_tests::http_get(&addr, "/metrics").ok())
        {
            if trailguard_tests::sample_value(&scrape, series).is_some_and(|v| v >= at_least) {
                return Ok(scrape);
            }
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{series} never reached {at_least}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Records read from S3 and SQS are counted under their own source, with their bytes, not
/// under `files`.
#[tokio::test(flavor = "multi_thread")]
async fn records_are_counted_under_their_source() -> Result<()> {
    let run = Run::new("sqs-metrics")?;
    let name = format!("count-{}", &run.id[run.id.len() - 12..]);
    let s3 = s3().await?;
    s3.create_bucket().bucket(&name).send().await?;
    let key = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/111111111111_CloudTrail_us-east-1_20240101T0000Z_m.json.gz";
    s3.put_object()
        .bucket(&name)
        .key(key)
        .body(log_file(5, "m")?.into())
        .send()
        .await?;
    let (sqs, queue) = queue(&name).await?;
    let body = json!({"s3Bucket": name, "s3ObjectKey": [key]}).to_string();
    sqs.send_message()
        .queue_url(&queue)
        .message_body(body)
        .send()
        .await?;
    let endpoint = trailguard_tests::aws_endpoint()?;
    for (source, args) in [
        ("sqs", vec!["sqs", "--queue-url", queue.as_str()]),
        ("s3", vec!["s3", "--bucket", name.as_str()]),
    ] {
        let mut all = args.clone();
        all.extend_from_slice(&["--aws-endpoint", endpoint.as_str()]);
        let mut ingest = run.spawn_ingest(&all)?;
        let read = format!("trailguard_ingest_records_read_total{{source=\"{source}\"}}");
        let scrape = scrape_until(&ingest, &read, 5.0).await?;
        let bytes = format!("trailguard_ingest_read_bytes_total{{source=\"{source}\"}}");
        assert!(
            trailguard_tests::sample_value(&scrape, &bytes).is_some_and(|b| b > 0.0),
            "{bytes}: {scrape}"
        );
        let inputs = format!("trailguard_ingest_inputs_total{{result=\"ok\",source=\"{source}\"}}");
        assert_eq!(
            trailguard_tests::sample_value(&scrape, &inputs),
            Some(1.0),
            "{scrape}"
        );
        for files in [
            "trailguard_ingest_records_read_total{source=\"files\"}",
            "trailguard_ingest_read_bytes_total{source=\"files\"}",
        ] {
            assert!(
                trailguard_tests::sample_value(&scrape, files).unwrap_or(0.0) == 0.0,
                "{files} counted {source}'s records: {scrape}"
            );
        }
        ingest.stop("-TERM")?;
    }
    Ok(())
}

/// A backlog is worked through with files read ahead: more messages than one receive returns,
/// some naming several files (one of them not a trail file, one too large to read ahead), a
/// malformed one among them. Every record of every file is published exactly once, and every
/// message is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_read_ahead_publishes_every_file_once() -> Result<()> {
    let mut run = Run::new("sqs-ahead")?;
    // Two files read ahead at a time; files of 60 records are streamed at their turn instead.
    let (small, large) = (log_file(4, "f00")?.len(), log_file(60, "f00")?.len());
    ensure!(
        large > small + 200,
        "sizes {small} and {large} are too close"
    );
    run.env
        .push(("TRAILGUARD_SQS__FETCH_AHEAD".into(), "2".into()));
    run.env.push((
        "TRAILGUARD_SQS__STREAM_ABOVE_BYTES".into(),
        ((small + large) / 2).to_string(),
    ));
    let name = format!("ahead-{}", &run.id[run.id.len() - 12..]);
    let s3 = s3().await?;
    s3.create_bucket().bucket(&name).send().await?;
    let prefix = "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/";
    let (sqs, queue) = queue(&name).await?;
    let mut expected = std::collections::BTreeSet::new();
    let (mut file, mut streamed, mut files_read) = (0, 0, 0);
    for message in 0..24 {
        // Messages name one, two or three files; every seventh also a digest (not a trail file).
        let mut keys = Vec::new();
        for _ in 0..=(message % 3) {
            file += 1;
            let tag = format!("f{file}");
            // Every fifth file is large: streamed at its turn, not read ahead.
            let records = if file % 5 == 0 { 60 } else { 1 + file % 4 };
            if message != 11 {
                files_read += 1;
                if file % 5 == 0 {
                    streamed += 1;
                }
            }
            let key =
                format!("{prefix}111111111111_CloudTrail_us-east-1_20240101T0000Z_{tag}.json.gz");
            s3.put_object()
                .bucket(&name)
                .key(&key)
                .body(log_file(records, &tag)?.into())
                .send()
                .await?;
            expected.extend((0..records).map(|i| format!("{tag}-{i}")));
            keys.push(key);
        }
        if message % 7 == 0 {
            keys.insert(
                0,
                "AWSLogs/111111111111/CloudTrail-Digest/us-east-1/2024/01/01/111111111111_CloudTrail-Digest_us-east-1_x_us-east-1_20240101T000000Z.json.gz".to_string(),
            );
        }
        let body = if message == 11 {
            "not a notification".to_string()
        } else {
            json!({"s3Bucket": name, "s3ObjectKey": keys}).to_string()
        };
        if message == 11 {
            // The files it would have named are not read.
            for key in &keys {
                let tag = key
                    .rsplit('_')
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches(".json.gz");
                expected.retain(|id| !id.starts_with(&format!("{tag}-")));
            }
        }
        sqs.send_message()
            .queue_url(&queue)
            .message_body(body)
            .send()
            .await?;
    }

    let out = ingest_once(&run, &queue)?;
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        logs.matches("streaming a large object").count(),
        streamed,
        "{logs}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["published"], expected.len(), "{summary}");
    assert_eq!(summary["dead_lettered"], 1, "{summary}");
    // Each file read once (a file read twice would be dropped as repeats, unseen above).
    assert_eq!(summary["inputs_read"], files_read, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    assert_eq!(summary["inputs_skipped"], 4, "the digests: {summary}");

    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(2),
        |r| r.len() >= expected.len(),
    )?;
    let mut published: Vec<String> = activities
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter_map(|a| a["event_id"].as_str().map(str::to_string))
        .collect();
    published.sort();
    let wanted: Vec<String> = expected.into_iter().collect();
    assert_eq!(published, wanted, "each record of each file, once");

    drained(&sqs, &queue).await?;
    Ok(())
}

/// A TCP proxy in front of moto that can fail like a network partition that drops packets:
/// while down, the connections it carries are cut and new ones are accepted but never
/// answered (the hardest case: a client without a read timeout waits for ever).
struct Partition {
    addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    carried: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    silent: std::sync::Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Partition {
    async fn before(endpoint: &str) -> Result<Self> {
        let target = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let carried = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let silent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_up, carrying, holding) = (up.clone(), carried.clone(), silent.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Decided and registered under the lock `set_up` takes: a connection is either
                // cut by it or accepted after it.
                let Ok(mut carried) = carrying.lock() else {
                    break;
                };
                if !is_up.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(mut held) = holding.lock() {
                        held.push(inbound);
                    }
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                carried.push(task.abort_handle());
            }
        });
        Ok(Partition {
            addr,
            up,
            carried,
            silent,
            accepting,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set_up(&self, up: bool) {
        let Ok(mut carried) = self.carried.lock() else {
            return;
        };
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
        if up {
            if let Ok(mut held) = self.silent.lock() {
                held.clear();
            }
        } else {
            carried.drain(..).for_each(|task| task.abort());
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accepting.abort();
        self.set_up(false);
    }
}

/// A long-running `ingest sqs` rides out an outage of SQS and S3 after it started (a network
/// partition that drops packets: calls time out after `aws.read_timeout`): it keeps running,
/// counts each failure, reports it on `/healthz`, and once the partition heals publishes what
/// arrived meanwhile and deletes every message — nothing lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_after_start_is_waited_out_and_nothing_is_lost() -> Result<()> {
    outage("sqs-outage", Cut::Both).await
}

/// The same with only S3 partitioned: messages are received, their files cannot be read, the
/// batch stops there and nothing of it is deleted; after healing every record is published.
#[tokio::test(flavor = "multi_thread")]
async fn an_s3_outage_after_start_is_waited_out_and_nothing_is_lost() -> Result<()> {
    outage("sqs-s3-outage", Cut::S3).await
}

/// What the partition cuts ingest off from.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    Both,
    S3,
}

/// `GET /healthz` at `admin`: its status code.
fn health_status(admin: &str) -> Result<u16> {
    let response = trailguard_tests::http_get(admin, "/healthz")?;
    response
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line: {response}"))
}

/// A trail file of `records` records tagged `tag` in `bucket`, and its notification on `queue`.
async fn deliver(
    s3: &aws_sdk_s3::Client,
    sqs: &aws_sdk_sqs::Client,
    (bucket, queue): (&str, &str),
    tag: &str,
    records: usize,
) -> Result<()> {
    let key = format!(
        "AWSLogs/111111111111/CloudTrail/us-east-1/2024/01/01/111111111111_CloudTrail_us-east-1_20240101T0000Z_{tag}.json.gz"
    );
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .body(log_file(records, tag)?.into())
        .send()
        .await?;
    sqs.send_message()
        .queue_url(queue)
        .message_body(json!({"s3Bucket": bucket, "s3ObjectKey": [key]}).to_string())
        .send()
        .await?;
    Ok(())
}

async fn outage(name: &str, cut: Cut) -> Result<()> {
    let mut run = Run::new(name)?;
    run.env
        .push(("TRAILGUARD_SQS__WAIT_TIME".into(), "1s".into()));
    // Calls into the partition time out after 6 s (the least allowed with a 1 s long poll).
    run.env
        .push(("TRAILGUARD_AWS__READ_TIMEOUT".into(), "6s".into()));
    // A receive the partition cut may have taken a message at the queue's end: it comes back
    // after the visibility timeout (the least allowed, so the test waits 30 s at most).
    run.env
        .push(("TRAILGUARD_SQS__VISIBILITY_TIMEOUT".into(), "30s".into()));
    let name = format!("outage-{}", &run.id[run.id.len() - 12..]);
    let s3 = s3().await?;
    s3.create_bucket().bucket(&name).send().await?;
    let (sqs, queue) = queue(&name).await?;
    deliver(&s3, &sqs, (&name, &queue), "before", 5).await?;

    let moto = trailguard_tests::aws_endpoint()?;
    let partition = Partition::before(&moto).await?;
    let url = partition.url();
    let endpoint = match cut {
        Cut::Both => url.clone(),
        Cut::S3 => {
            run.env
                .push(("TRAILGUARD_AWS__ENDPOINTS__S3".into(), url.clone()));
            moto
        }
    };
    let mut ingest =
        run.spawn_ingest(&["sqs", "--queue-url", &queue, "--aws-endpoint", &endpoint])?;
    let read = "trailguard_ingest_records_read_total{source=\"sqs\"}";
    scrape_until(&ingest, read, 5.0).await?;
    // Its message deleted (a delete the partition cut would leave it to come back later).
    drained(&sqs, &queue).await?;

    // The partition: SQS and S3 unreachable. A file arrives meanwhile.
    partition.set_up(false);
    deliver(&s3, &sqs, (&name, &queue), "during", 4).await?;
    let errors = "trailguard_ingest_source_errors_total{source=\"sqs\"}";
    scrape_until(&ingest, errors, 1.0).await?;
    ensure!(
        ingest.child.try_wait()?.is_none(),
        "ingest sqs stopped on the outage:\n{}",
        ingest.log()
    );
    // Alive all the while: a restart cannot end an outage elsewhere (a liveness probe on
    // /healthz must not turn the wait into a crash loop).
    let admin = trailguard_tests::admin_addr(&ingest.log()).context("admin address")?;
    ensure!(
        health_status(&admin)? == 200,
        "/healthz not 200 during the outage"
    );

    // Healed: what arrived meanwhile is published, every message deleted, healthy again.
    partition.set_up(true);
    scrape_until(&ingest, read, 9.0).await?;
    let published = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| r.len() >= 9,
    )?;
    let ids: std::collections::BTreeSet<String> = published
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.value).ok())
        .filter_map(|a| a["event_id"].as_str().map(str::to_string))
        .collect();
    for expected in (0..5)
        .map(|i| format!("before-{i}"))
        .chain((0..4).map(|i| format!("during-{i}")))
    {
        ensure!(ids.contains(&expected), "{expected} not published: {ids:?}");
    }
    drained(&sqs, &queue).await?;
    ensure!(
        health_status(&admin)? == 200,
        "/healthz not 200 after the outage"
    );
    ensure!(ingest.stop("-TERM")?.success(), "{}", ingest.log());
    Ok(())
}

/// A failure before any receive succeeded is a wrong setting, not an outage: a long-running
/// `ingest sqs` on a queue that does not exist stops at once with the error, rather than
/// waiting it out for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_that_cannot_be_read_at_start_stops_the_service() -> Result<()> {
    let run = Run::new("sqs-missing")?;
    let endpoint = trailguard_tests::aws_endpoint()?;
    let missing = format!("{endpoint}/123456789012/no-such-queue-{}", run.id);
    let mut ingest =
        run.spawn_ingest(&["sqs", "--queue-url", &missing, "--aws-endpoint", &endpoint])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = ingest.child.try_wait()? {
            break status;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "ingest sqs kept running on a missing queue:\n{}",
            ingest.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = ingest.log();
    ensure!(!status.success(), "{log}");
    ensure!(log.contains("sqs:ReceiveMessage"), "{log}");
    ensure!(
        !log.contains("come back after their visibility timeout"),
        "{log}"
    );

    // A read timeout that would cut the long poll is refused at start-up, naming the key.
    let mut run = run;
    run.env
        .push(("TRAILGUARD_AWS__READ_TIMEOUT".into(), "10s".into()));
    let out = run
        .command(
            "ingest",
            &["sqs", "--queue-url", &missing, "--aws-endpoint", &endpoint],
        )?
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("aws.read_timeout"),
        "{stderr}"
    );
    Ok(())
}
