//! `make bench` part: `detect` as a service (release build) next to a raw consume of the same
//! activities on the same broker. `ingest files` publishes synthetic reads by 10,000 IAM users
//! and 10,000 sessions of 40 roles (detect's actor for a session is its role) over the last hour; a plain consumer reads the topic
//! through; then detect, with its default policies, reads it from the start while the bench
//! scrapes its `trailguard_detect_activities_total` every 100 ms. Each rate runs from the first
//! record to the last (joining the group and start-up aside). All of it twice: with the
//! activities as JSON (ingest's default) and in the compact encoding
//! (`publish.activity_encoding = "compact"`), each on a topic of its own. Beside each rate,
//! the CPU each side spent a message (all its threads, from `/proc`). `ingest files` next
//! to a raw publish of the same bytes is the ingest bench's.
//!
//! Env: `TRAILGUARD_BENCH_BROKERS`, `TRAILGUARD_TEST_BIN_DIR` (the release binaries),
//! `TRAILGUARD_BENCH_SERVICE_RECORDS` (default 300000).

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use trailguard_tests::{admin_addr, http_get, sample_value, synthetic, Run};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{cpu_seconds, Whose};

const ACTORS: usize = 20_000;

fn main() -> Result<()> {
    let (Ok(brokers), Ok(_)) = (
        std::env::var("TRAILGUARD_BENCH_BROKERS"),
        std::env::var("TRAILGUARD_TEST_BIN_DIR"),
    ) else {
        println!("detect service vs raw consume: skipped (run `make bench`)");
        return Ok(());
    };
    let n: usize = std::env::var("TRAILGUARD_BENCH_SERVICE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("records.jsonl");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let end = chrono::Utc::now();
        for i in 0..n {
            let at = end - chrono::Duration::milliseconds(((n - i) as i64) * 3_600_000 / n as i64);
            let time = at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            let id = format!("{:08x}-0000-4000-8000-{i:012x}", i / 7);
            writeln!(file, "{}", synthetic::ordinary(i, ACTORS, &id, &time))?;
        }
    }
    println!(
        "detect service vs raw consume: {n} records by {} IAM users and sessions of 40 roles",
        ACTORS / 2
    );
    for encoding in ["json", "compact"] {
        measure(encoding, &path, n, &brokers)?;
    }
    Ok(())
}

/// The records at `path` published by `ingest files` with the activities in `encoding`, read
/// by a raw consumer and by detect.
fn measure(encoding: &str, path: &std::path::Path, n: usize, brokers: &str) -> Result<()> {
    let mut run = Run::new("bench-services")?;
    for (key, value) in run.env.iter_mut() {
        if key == "TRAILGUARD_BROKERS" {
            *value = brokers.to_string();
        }
    }
    run.env.push((
        "TRAILGUARD_PUBLISH__ACTIVITY_ENCODING".into(),
        encoding.into(),
    ));
    let started = Instant::now();
    run.ingest_files(path)?;
    let ingest = started.elapsed();
    println!(
        "  activities as {encoding}: published by `ingest files` in {:.1} s ({:.0} records/s, start-up included)",
        ingest.as_secs_f64(),
        n as f64 / ingest.as_secs_f64()
    );

    // A raw consume of the topic: librdkafka's defaults, every payload touched.
    let topic = run.topic("activities");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{}-raw", run.id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // As detect's consumer fetches: without it, librdkafka pauses fetching for a second
        // whenever 100,000 records wait, and the raw figure would measure that pause.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let (mut read, mut bytes, mut first) = (0usize, 0usize, None);
    let mut raw_cpu_from = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while read < n && Instant::now() < deadline {
        use rdkafka::Message as _;
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        if first.is_none() {
            first = Some(Instant::now());
            raw_cpu_from = cpu_seconds(Whose::Own);
        }
        read += 1;
        bytes += msg.payload().map_or(0, <[u8]>::len);
    }
    ensure!(read == n, "the raw consumer read {read} of {n}");
    let raw = first.map(|f| f.elapsed()).unwrap_or_default();
    let raw_cpu = cpu_seconds(Whose::Own) - raw_cpu_from;
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!(
        "    raw consume: {raw_rate:.0} activities/s ({:.0} MB/s, {:.0} bytes each; {:.2} µs of CPU a message)",
        bytes as f64 / 1e6 / raw.as_secs_f64(),
        bytes as f64 / n as f64,
        raw_cpu * 1e6 / n as f64
    );
    drop(consumer);

    let detect = run.spawn("detect", &[])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = loop {
        if let Some(addr) = admin_addr(&detect.log()) {
            break addr;
        }
        ensure!(
            Instant::now() < deadline,
            "detect did not start: {}",
            detect.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let series = "trailguard_detect_activities_total{result=\"evaluated\"}";
    let evaluated = || {
        http_get(&admin, "/metrics")
            .ok()
            .and_then(|s| sample_value(&s, series))
            .unwrap_or(0.0) as usize
    };
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut first: Option<(Instant, usize, f64)> = None;
    let mut last = 0;
    let pid = detect.child.id().to_string();
    while Instant::now() < deadline {
        let now = evaluated();
        if now > 0 && first.is_none() {
            first = Some((Instant::now(), now, cpu_seconds(Whose::Process(&pid))));
        }
        last = now;
        if now >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu = cpu_seconds(Whose::Process(&pid));
    let (since, at_first, cpu_from) = first.context("detect evaluated nothing")?;
    ensure!(last >= n, "detect evaluated {last} of {n}");
    let counted = (last - at_first) as f64;
    let rate = counted / since.elapsed().as_secs_f64();
    let detect_cpu = (cpu - cpu_from) * 1e6 / counted;
    println!(
        "    detect service: {rate:.0} activities/s ({:.0} % of the raw consume), default policies; {detect_cpu:.2} µs of CPU an activity, all its threads ({:.1}× the raw consume's)",
        100.0 * rate / raw_rate,
        detect_cpu / (raw_cpu * 1e6 / n as f64)
    );
    Ok(())
}
