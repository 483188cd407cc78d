//! `make bench` part: what a user sees — the time from a CloudTrail record to its alert, and from
//! the alert to the action record, through the real services (`ingest sqs`, `detect`,
//! `remediate`, release builds) and the local broker, at a sustained rate.
//!
//! A rate-controlled producer writes a CloudTrail log file to a bucket on the AWS-API server
//! every 100 ms (`rate / 10` records each, the time in each record is now) and announces it on
//! an SQS queue with an S3 event notification, as a trail does. Most records are ordinary reads
//! by 2,000 users and role sessions; five per file are a `StopLogging` by a user of their own
//! (`cloudtrail-changes`: an alert asking `notify`, sent to a webhook this bench serves) and two
//! per second a `PutBucketAcl … public-read` on a public bucket of their own (`s3-bucket-public`:
//! `make_bucket_private` in `auto` mode, against the AWS-API server).
//!
//! Measured, as Kafka timestamps (CreateTime, set by the service that wrote the record) minus
//! the time the file was stored and announced: record → activity (ingest), record → alert
//! (ingest and detect), and alert → action record (remediate), as p50/p99/max.
//!
//! Env: `TRAILGUARD_BENCH_BROKERS`, `TRAILGUARD_BENCH_AWS_ENDPOINT`, `TRAILGUARD_TEST_BIN_DIR`
//! (the release binaries); `TRAILGUARD_BENCH_LATENCY_RATE` (records/s, default 10000) and
//! `TRAILGUARD_BENCH_LATENCY_SECS` (default 60).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use trailguard_tests::synthetic::{self, ACCOUNT};
use trailguard_tests::Run;

/// Files per second the producer writes.
const FILES_PER_SECOND: u64 = 10;
/// `StopLogging` records per file.
const STOPS_PER_FILE: usize = 5;
/// A public-bucket record every this many files.
const PUBLIC_EVERY: u64 = 5;
/// Actors of the ordinary traffic.
const ACTORS: usize = 2000;
/// Names of the users whose records the bench follows: `tglat-SEQ`.
const MARK: &str = "tglat-";

fn main() -> Result<()> {
    let (Ok(brokers), Ok(endpoint), Ok(_)) = (
        std::env::var("TRAILGUARD_BENCH_BROKERS"),
        std::env::var("TRAILGUARD_BENCH_AWS_ENDPOINT"),
        std::env::var("TRAILGUARD_TEST_BIN_DIR"),
    ) else {
        println!("record → alert latency: skipped (run `make bench`)");
        return Ok(());
    };
    let number = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rate = number("TRAILGUARD_BENCH_LATENCY_RATE", 10_000).max(FILES_PER_SECOND);
    let secs = number("TRAILGUARD_BENCH_LATENCY_SECS", 60).max(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(&brokers, &endpoint, rate, secs))
}

/// When each followed record's file was announced, and when each stage wrote its record.
#[derive(Default)]
struct Times {
    published: HashMap<u64, i64>,
    activity: HashMap<u64, i64>,
    /// (alert id) → (seq, policy, time).
    alerts: HashMap<String, (u64, String, i64)>,
    /// (alert id, kind) → (outcome, time).
    actions: HashMap<(String, String), (String, i64)>,
}

async fn run(brokers: &str, endpoint: &str, rate: u64, secs: u64) -> Result<()> {
    let mut run = Run::new("bench-latency")?;
    for (key, value) in run.env.iter_mut() {
        if key == "TRAILGUARD_BROKERS" {
            *value = brokers.to_string();
        }
    }
    run.env
        .push(("TRAILGUARD_LOG__LEVEL".into(), "warn".into()));
    let tag = run.id[run.id.len() - 10..].to_string();
    let shared = trailguard_tests::aws_at(endpoint).await;
    let s3 = trailguard_tests::s3_with(&shared);
    let sqs = aws_sdk_sqs::Client::new(&shared);
    let trail = format!("tglat-trail-{tag}");
    s3.create_bucket().bucket(&trail).send().await?;
    let queue = sqs
        .create_queue()
        .queue_name(format!("tglat-{tag}"))
        .send()
        .await?
        .queue_url()
        .context("queue url")?
        .to_string();
    let public: Vec<String> = (0..secs * FILES_PER_SECOND / PUBLIC_EVERY)
        .map(|i| format!("tglat-{tag}-pub-{i}"))
        .collect();
    for bucket in &public {
        trailguard_tests::make_public_bucket(&s3, bucket).await?;
    }
    let (hook, notified) = webhook().await?;

    let dir = std::env::temp_dir().join(&run.id);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("remediate.toml");
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = \"{endpoint}\"\nforce_path_style = true\nregion = \"us-east-1\"\n\n\
             [remediate.policies.s3-bucket-public]\nmode = \"auto\"\n\n\
             [remediate.rate_limits.make_bucket_private]\nmax = 0\nper = \"1h\"\n\n\
             [[notify.channels]]\nname = \"bench\"\nkind = \"webhook\"\nurl = \"{hook}/hook\"\n"
        ),
    )?;
    let ingest = run.spawn_ingest(&["sqs", "--queue-url", &queue, "--aws-endpoint", endpoint])?;
    let detect = run.spawn("detect", &[])?;
    let remediate = run.spawn("remediate", &["--config", config.to_str().context("path")?])?;
    // Every service up: its topics exist and it has joined.
    for topic in ["activities", "alerts", "actions"] {
        trailguard_tests::wait_for_topic(&run.topic(topic), Duration::from_secs(60))?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let times = Arc::new(Mutex::new(Times::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = ["activities", "alerts", "actions"]
        .into_iter()
        .map(|which| {
            let (brokers, topic, group) = (
                brokers.to_string(),
                run.topic(which),
                format!("{}-bench-{which}", run.id),
            );
            let (times, stop) = (times.clone(), stop.clone());
            std::thread::spawn(move || read(&brokers, &topic, &group, which, &times, &stop))
        })
        .collect();

    // The producer: a file every 100 ms, stored and announced on a task of its own so a slow
    // call does not hold back the next file.
    let per_file = (rate / FILES_PER_SECOND) as usize;
    let started = Instant::now();
    let started_ms = now_ms();
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / FILES_PER_SECOND));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    let mut seq = 0u64;
    let (mut sent_records, mut behind) = (0usize, Duration::ZERO);
    for file in 0..secs * FILES_PER_SECOND {
        let due = ticks.tick().await;
        behind = behind.max(due.elapsed());
        let public_bucket = (file % PUBLIC_EVERY == 0)
            .then(|| public.get((file / PUBLIC_EVERY) as usize))
            .flatten();
        let (body, followed) = log_file(file, per_file, &mut seq, public_bucket, &tag)?;
        sent_records += per_file;
        let key = format!(
            "AWSLogs/{ACCOUNT}/CloudTrail/us-east-1/2026/12/03/{ACCOUNT}_CloudTrail_us-east-1_20261203T0000Z_{tag}{file:06}.json.gz"
        );
        let (s3, sqs, trail, queue, times) = (
            s3.clone(),
            sqs.clone(),
            trail.clone(),
            queue.clone(),
            times.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // The clock starts once the file is stored, as a trail's file is before it is
            // announced; how long after its due time that was is reported.
            s3.put_object()
                .bucket(&trail)
                .key(&key)
                .body(body.into())
                .send()
                .await?;
            let notification = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": trail}, "object": {"key": key}}}]});
            let at = now_ms();
            let late = due.elapsed();
            sqs.send_message()
                .queue_url(&queue)
                .message_body(notification.to_string())
                .send()
                .await?;
            if let Ok(mut t) = times.lock() {
                for s in followed {
                    t.published.insert(s, at);
                }
            }
            anyhow::Ok(late)
        }));
    }
    let mut stored_late = Duration::ZERO;
    for task in tasks {
        stored_late = stored_late.max(task.await??);
    }
    let produced = started.elapsed();
    // Let the last records through, then stop reading.
    let expected_alerts = seq as usize;
    // A notify for every alert, and a make-private for every public bucket.
    let expected_actions = expected_alerts + public.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (alerts, actions, activities) = times
            .lock()
            .map(|t| {
                let followed = |p: &String| p == "cloudtrail-changes" || p == "s3-bucket-public";
                let alerts = t.alerts.values().filter(|(_, p, _)| followed(p)).count();
                let done = t
                    .actions
                    .iter()
                    .filter(|((alert, _), (outcome, _))| {
                        outcome != "started"
                            && t.alerts.get(alert).is_some_and(|(_, p, _)| followed(p))
                    })
                    .count();
                (alerts, done, t.activity.len())
            })
            .unwrap_or_default();
        let all = alerts >= expected_alerts
            && actions >= expected_actions
            && activities >= expected_alerts;
        if all || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    for bucket in &public {
        let _ = s3.delete_bucket_policy().bucket(bucket).send().await;
        let _ = s3.delete_bucket().bucket(bucket).send().await;
    }

    let t = times.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    anyhow::ensure!(
        !t.alerts.is_empty(),
        "no alert arrived; the services' logs: {}, {}, {}",
        ingest.log.display(),
        detect.log.display(),
        remediate.log.display()
    );
    println!(
        "record → alert latency: {sent_records} records in {:.1} s ({:.0} records/s offered, \
         {FILES_PER_SECOND} files/s through S3 and SQS; the producer's ticks fell at most {} ms \
         behind, a file was stored at most {} ms after it was due)",
        produced.as_secs_f64(),
        sent_records as f64 / produced.as_secs_f64(),
        behind.as_millis(),
        stored_late.as_millis()
    );
    let mut missing = Vec::new();
    let mut stage = |name: &str, mut v: Vec<i64>, of: usize| {
        v.sort_unstable();
        if v.len() < of {
            missing.push(format!("{name}: {} of {of}", v.len()));
        }
        if v.is_empty() {
            println!("  {name}: none of {of} arrived");
            return;
        }
        let pct = |p: f64| {
            v[((v.len() as f64 * p).ceil() as usize)
                .saturating_sub(1)
                .min(v.len() - 1)]
        };
        println!(
            "  {name}: p50 {} ms, p99 {} ms, max {} ms ({} of {of})",
            pct(0.5),
            pct(0.99),
            v[v.len() - 1],
            v.len()
        );
    };
    let from_record = |at: &HashMap<u64, i64>| -> Vec<i64> {
        at.iter()
            .filter_map(|(s, ts)| t.published.get(s).map(|p| ts - p))
            .collect()
    };
    stage(
        "record → activity (ingest)",
        from_record(&t.activity),
        expected_alerts,
    );
    // When the slowest hundredth of the records were published: at start-up, or throughout.
    let mut slow: Vec<(i64, i64)> = t
        .activity
        .iter()
        .filter_map(|(s, ts)| t.published.get(s).map(|p| (ts - p, p - started_ms)))
        .collect();
    slow.sort_unstable();
    let slowest = &slow[slow.len() - slow.len().div_ceil(100).min(slow.len())..];
    if let (Some(first), Some(last)) = (
        slowest.iter().map(|(_, at)| at).min(),
        slowest.iter().map(|(_, at)| at).max(),
    ) {
        println!(
            "    the slowest 1 % through ingest were published {:.1}–{:.1} s into the run",
            *first as f64 / 1000.0,
            *last as f64 / 1000.0
        );
    }
    for policy in ["cloudtrail-changes", "s3-bucket-public"] {
        let v: Vec<i64> = t
            .alerts
            .values()
            .filter(|(_, p, _)| p == policy)
            .filter_map(|(s, _, ts)| t.published.get(s).map(|p| ts - p))
            .collect();
        let of = if policy == "s3-bucket-public" {
            public.len()
        } else {
            expected_alerts - public.len()
        };
        stage(&format!("record → alert ({policy})"), v, of);
    }
    for (kind, policy) in [
        ("notify", "cloudtrail-changes"),
        ("make_bucket_private", "s3-bucket-public"),
    ] {
        let mut outcomes: HashMap<&str, usize> = HashMap::new();
        let v: Vec<i64> = t
            .actions
            .iter()
            .filter(|((_, k), _)| k == kind)
            .filter_map(|((alert, _), (outcome, ts))| {
                let (_, _, at) = t.alerts.get(alert).filter(|(_, p, _)| p == policy)?;
                *outcomes.entry(outcome.as_str()).or_default() += 1;
                // Only what was done: a refusal or a failure is no latency of an action.
                (outcome == "applied").then_some(ts - at)
            })
            .collect();
        let of = t.alerts.values().filter(|(_, p, _)| p == policy).count();
        stage(&format!("alert → action record ({kind})"), v, of);
        println!("    outcomes: {outcomes:?}");
    }
    println!(
        "  webhook received {} notifications",
        notified.lock().map(|n| *n).unwrap_or_default()
    );
    // Figures over what arrived would hide the slowest: a shortfall fails the bench.
    anyhow::ensure!(
        missing.is_empty(),
        "not everything arrived within two minutes of the last file ({}); the services' logs: {}, {}, {}",
        missing.join("; "),
        ingest.log.display(),
        detect.log.display(),
        remediate.log.display()
    );
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// One gzipped log file of `n` records; returns it and the sequence numbers of the records the
/// bench follows.
fn log_file(
    file: u64,
    n: usize,
    seq: &mut u64,
    public_bucket: Option<&String>,
    tag: &str,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut followed = Vec::new();
    let mut records = Vec::with_capacity(n);
    let stride = (n / (STOPS_PER_FILE + 1)).max(1);
    let mut stops = 0;
    for i in 0..n {
        let id = format!("{:08x}-{tag}-4000-8000-{:012x}", file, i);
        // A record of a followed user of its own.
        let mut follow = || {
            followed.push(*seq);
            *seq += 1;
            format!("{MARK}{}", *seq - 1)
        };
        let record = if let Some(bucket) = public_bucket.filter(|_| i == n / 2) {
            let user = follow();
            synthetic::by_user(
                &user,
                &id,
                &time,
                "s3.amazonaws.com",
                "PutBucketAcl",
                json!({"bucketName": bucket, "x-amz-acl": ["public-read"], "host": [format!("{bucket}.s3.amazonaws.com")], "acl": [""]}),
            )
        } else if i % stride == stride - 1 && stops < STOPS_PER_FILE {
            stops += 1;
            let user = follow();
            synthetic::by_user(
                &user,
                &id,
                &time,
                "cloudtrail.amazonaws.com",
                "StopLogging",
                json!({"name": format!("arn:aws:cloudtrail:us-east-1:{ACCOUNT}:trail/{user}")}),
            )
        } else {
            synthetic::ordinary(i + file as usize * n, ACTORS, &id, &time)
        };
        records.push(record);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json!({ "Records": records }).to_string().as_bytes())?;
    Ok((gz.finish()?, followed))
}

/// The sequence number in a followed user's name within `text`.
fn marked_seq(text: &str) -> Option<u64> {
    let at = text.find(&format!("user/{MARK}"))? + 5 + MARK.len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads `topic` from the start until `stop`, noting the times of followed records.
fn read(
    brokers: &str,
    topic: &str,
    group: &str,
    which: &str,
    times: &Mutex<Times>,
    stop: &AtomicBool,
) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Some(ts) = msg.timestamp().to_millis() else {
            continue;
        };
        match which {
            "activities" => {
                let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
                if let Some(seq) = marked_seq(&key) {
                    if let Ok(mut t) = times.lock() {
                        t.activity.entry(seq).or_insert(ts);
                    }
                }
            }
            "alerts" => {
                let Some(alert) = msg
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                else {
                    continue;
                };
                let arn = alert["principal"]["arn"].as_str().unwrap_or_default();
                if let (Some(seq), Some(id), Some(policy)) = (
                    marked_seq(arn),
                    alert["id"].as_str(),
                    alert["policy_id"].as_str(),
                ) {
                    if let Ok(mut t) = times.lock() {
                        t.alerts
                            .entry(id.to_string())
                            .or_insert((seq, policy.to_string(), ts));
                    }
                }
            }
            _ => {
                let Some(record) = msg
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok())
                else {
                    continue;
                };
                if let (Some(alert), Some(kind), Some(outcome)) = (
                    record["alert_id"].as_str(),
                    record["kind"].as_str(),
                    record["outcome"].as_str(),
                ) {
                    // The outcome, not the write-ahead record before the change.
                    if let Ok(mut t) = times.lock() {
                        let entry = t
                            .actions
                            .entry((alert.to_string(), kind.to_string()))
                            .or_insert((outcome.to_string(), ts));
                        if entry.0 == "started" && outcome != "started" {
                            *entry = (outcome.to_string(), ts);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A webhook that takes every notification; counts them.
async fn webhook() -> Result<(String, Arc<Mutex<usize>>)> {
    use axum::{extract::State, http::StatusCode, routing::post, Router};
    let count = Arc::new(Mutex::new(0usize));
    async fn hook(State(count): State<Arc<Mutex<usize>>>, _body: axum::body::Bytes) -> StatusCode {
        if let Ok(mut c) = count.lock() {
            *c += 1;
        }
        StatusCode::OK
    }
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(count.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), count))
}
