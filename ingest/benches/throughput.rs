//! `make bench` for ingest: normalize throughput on one core over a corpus built from the
//! shared CloudTrail records, and — with a broker — `ingest files` next to a raw publish of the
//! very same bytes, in turns, compared by their medians. Prints numbers; asserts nothing.
//!
//! Env: `TRAILGUARD_TEST_SHARED_DATA` (the shared records), `TRAILGUARD_BENCH_BROKERS` and
//! `TRAILGUARD_BENCH_INGEST` (the release `ingest` binary) for the end-to-end part,
//! `TRAILGUARD_BENCH_RECORDS` (corpus size, default 200000), `TRAILGUARD_BENCH_ROUNDS` (turns
//! of ingest and raw publish, default 3), `TRAILGUARD_BENCH_CALLGRIND=0` (no
//! instruction count: it reruns the bench under valgrind on 20,000 records).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureRecord, Producer};
use serde_json::Value;
use trailguard_ingest::files::{expand, Input};

#[path = "../../tests/benches/support/callgrind.rs"]
mod callgrind;
#[path = "../../tests/benches/support/cpu.rs"]
mod cpu;
use cpu::{cpu_seconds, Whose};

// As in the ingest binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use trailguard_ingest::normalize::normalize;
use trailguard_ingest::split::{decompress, split, Limits};

/// Every normalizable shared record, as JSON text.
fn shared_records() -> Vec<String> {
    let root = std::env::var("TRAILGUARD_TEST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(
                    || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
                    std::path::PathBuf::from,
                )
                .join("../../shared/data/cloudtrail")
        });
    let (inputs, _, _) = expand(&[Input::Path(root)]);
    let mut out = Vec::new();
    for input in inputs {
        let Input::Path(path) = input else { continue };
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let limits = Limits::default();
        let plain = decompress(&bytes, limits);
        for item in split(&plain.bytes, limits) {
            if let Ok(text) = item.text.as_deref() {
                if let Ok(activity) = normalize(text) {
                    // Unwrap envelopes so the corpus is plain CloudTrail records.
                    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                    let record = value
                        .get("event")
                        .filter(|_| activity.event_name != value["eventName"])
                        .cloned()
                        .unwrap_or(value);
                    out.push(record.to_string());
                }
            }
        }
    }
    out
}

/// `n` records cycling through the shared ones, each with its own eventID and time.
fn corpus(n: usize) -> Vec<String> {
    let base = shared_records();
    assert!(!base.is_empty(), "no shared records found");
    (0..n)
        .map(|i| {
            let mut record: Value =
                serde_json::from_str(&base[i % base.len()]).unwrap_or(Value::Null);
            record["eventID"] = Value::from(format!("{:08x}-0000-4000-8000-{i:012x}", i / 7));
            record["eventTime"] = Value::from(format!(
                "2024-06-{:02}T{:02}:{:02}:{:02}Z",
                1 + i / 86_400 % 28,
                i / 3600 % 24,
                i / 60 % 60,
                i % 60
            ));
            record.to_string()
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("TRAILGUARD_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let records = corpus(n);
    if callgrind::is_rerun() {
        bench_counted_normalize(&records);
        return;
    }
    let bytes: usize = records.iter().map(String::len).sum();
    println!(
        "corpus: {n} records built from the shared data, {:.1} MB, {:.0} bytes/record",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64
    );

    // Normalize on one core (this thread), best of three.
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(bench_counted_normalize(&records), n);
        best = best.min(started.elapsed());
    }
    println!(
        "normalize: {:.0} records/s on one core ({:.0} MB/s), best of 3",
        n as f64 / best.as_secs_f64(),
        bytes as f64 / 1e6 / best.as_secs_f64()
    );

    // The same work counted in instructions, on fewer records (valgrind is slow).
    let counted = n.min(20_000);
    match callgrind::instructions(
        "bench_counted_normalize",
        &[("TRAILGUARD_BENCH_RECORDS", counted.to_string())],
    ) {
        Ok(count) => println!(
            "normalize: {:.0} instructions/record (callgrind, {counted} records; repeatable run to run)",
            count as f64 / counted as f64
        ),
        Err(why) => println!("normalize instructions: skipped ({why})"),
    }

    let (Ok(brokers), Ok(ingest)) = (
        std::env::var("TRAILGUARD_BENCH_BROKERS"),
        std::env::var("TRAILGUARD_BENCH_INGEST"),
    ) else {
        println!("ingest files vs raw publish: skipped (set TRAILGUARD_BENCH_BROKERS and TRAILGUARD_BENCH_INGEST, or run `make bench`)");
        return;
    };
    let run = format!("bench-{}", std::process::id());
    let path = std::env::temp_dir().join(format!("{run}.jsonl"));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("corpus file"));
        for r in &records {
            writeln!(file, "{r}").expect("write corpus");
        }
    }
    // The two are timed in turns, ingest then raw, each round to topics of its own: the broker
    // shares this machine's cores, and one run of either varies more than the two differ, so
    // the medians are compared, and every round's ratio is printed.
    let rounds: usize = std::env::var("TRAILGUARD_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let (mut ingest_rates, mut raw_rates, mut ingest_cpus) = (Vec::new(), Vec::new(), Vec::new());
    let mut compact_rates = Vec::new();
    for round in 1..=rounds {
        let topics = format!("{run}-{round}");
        let children = cpu_seconds(Whose::Children);
        let (ingest_secs, with_start_up) =
            ingest_file(&ingest, &brokers, &path, &topics, n, "json");
        let ingest_cpu = cpu_seconds(Whose::Children) - children;
        // The same with the activities in the compact encoding (docs/wire.md).
        let children = cpu_seconds(Whose::Children);
        let (compact_secs, _) = ingest_file(
            &ingest,
            &brokers,
            &path,
            &format!("{topics}-compact"),
            n,
            "compact",
        );
        let compact_cpu = cpu_seconds(Whose::Children) - children;
        let compact_rate = n as f64 / compact_secs;
        compact_rates.push(compact_rate);
        let own = cpu_seconds(Whose::Own);
        let raw_secs = raw_publish(&brokers, &records, &topics);
        let raw_cpu = cpu_seconds(Whose::Own) - own;
        let (ingest_rate, raw_rate) = (n as f64 / ingest_secs, n as f64 / raw_secs);
        println!(
            "round {round}: ingest files → topic {ingest_rate:.0} records/s ({:.1} MB/s; {ingest_secs:.2} s, {with_start_up:.2} s with start-up and connecting; {:.1} µs of CPU a record); raw publish of the same bytes {raw_rate:.0} records/s ({:.1} MB/s; {:.1} µs of CPU a record); {:.0} %",
            bytes as f64 / 1e6 / ingest_secs,
            ingest_cpu * 1e6 / n as f64,
            bytes as f64 / 1e6 / raw_secs,
            raw_cpu * 1e6 / n as f64,
            100.0 * ingest_rate / raw_rate
        );
        println!(
            "round {round}: ingest files → topic, compact activities: {compact_rate:.0} records/s ({compact_secs:.2} s; {:.1} µs of CPU a record)",
            compact_cpu * 1e6 / n as f64
        );
        ingest_rates.push(ingest_rate);
        raw_rates.push(raw_rate);
        ingest_cpus.push(ingest_cpu * 1e6 / n as f64);
    }
    let (ingest_rate, raw_rate) = (median(&mut ingest_rates), median(&mut raw_rates));
    println!(
        "ingest files → topic: {ingest_rate:.0} records/s ({:.1} MB/s), median of {rounds}",
        bytes as f64 / 1e6 * ingest_rate / n as f64
    );
    println!(
        "raw publish of the same bytes: {raw_rate:.0} records/s ({:.1} MB/s), median of {rounds}",
        bytes as f64 / 1e6 * raw_rate / n as f64
    );
    println!(
        "ingest files / raw publish: {:.0} % (medians)",
        100.0 * ingest_rate / raw_rate
    );
    let compact_rate = median(&mut compact_rates);
    println!(
        "ingest files → topic, compact activities: {compact_rate:.0} records/s, median of {rounds} ({:.0} % of the raw publish)",
        100.0 * compact_rate / raw_rate
    );
    // Less bound to what else the machine runs than the rates: the CPU ingest used (all its
    // threads, start-up included), a record.
    println!(
        "ingest files CPU: {:.1} µs a record (user + system, start-up included), median of {rounds}",
        median(&mut ingest_cpus)
    );
    let _ = std::fs::remove_file(&path);
}

/// The middle value (the upper of the two middle ones for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `ingest files` on `path` (`n` records) into `{topics}.activities`, the activities in
/// `encoding` (`publish.activity_encoding`): its time by its own summary (from its first read,
/// its producer connected), and with start-up and connecting.
fn ingest_file(
    ingest: &str,
    brokers: &str,
    path: &Path,
    topics: &str,
    n: usize,
    encoding: &str,
) -> (f64, f64) {
    let started = Instant::now();
    let output = std::process::Command::new(ingest)
        .args([
            "--brokers",
            brokers,
            "files",
            "--summary",
            "json",
            path.to_str().unwrap_or_default(),
        ])
        .env(
            "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES",
            format!("{topics}.activities"),
        )
        .env("TRAILGUARD_KAFKA__TOPICS__DLQ", format!("{topics}.dlq"))
        .env("TRAILGUARD_PUBLISH__ACTIVITY_ENCODING", encoding)
        .env("TRAILGUARD_LOG__LEVEL", "warn")
        .stderr(std::process::Stdio::null())
        .output()
        .expect("run ingest");
    let with_start_up = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "ingest failed");
    let summary: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("ingest's JSON summary");
    assert_eq!(
        summary["published"].as_u64(),
        Some(n as u64),
        "ingest published {summary}"
    );
    let secs = summary["seconds"].as_f64().expect("seconds in the summary");
    (secs, with_start_up)
}

/// Publishes `records` as they are to `{topics}.raw`, with ingest's producer settings and a
/// topic created as ingest creates its own; the seconds from the first send (the producer
/// made) to the last delivery.
fn raw_publish(brokers: &str, records: &[String], topics: &str) -> f64 {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let topic = format!("{topics}.raw");
        let cfg = trailguard_common::config::KafkaConfig {
            brokers: brokers.to_string(),
            topics: trailguard_common::config::Topics {
                activities: topic.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let activities = trailguard_common::config::TopicRole::Activities;
        trailguard_common::kafka::ensure_topics(&cfg, &[activities])
            .await
            .expect("create topic");
        let producer: trailguard_common::kafka::Producer =
            trailguard_common::kafka::producer(&cfg, "bench-raw", 5).expect("producer");
        let started = Instant::now();
        let mut pending = futures::stream::FuturesUnordered::new();
        for (i, r) in records.iter().enumerate() {
            loop {
                let key = (i % 1024).to_string();
                match producer.send_result(
                    FutureRecord::to(&topic)
                        .key(key.as_bytes())
                        .payload(r.as_bytes()),
                ) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err(_) => {
                        use futures::StreamExt;
                        let _ = pending.next().await;
                    }
                }
                if pending.len() >= 20_000 {
                    use futures::StreamExt;
                    let _ = pending.next().await;
                }
            }
        }
        use futures::StreamExt;
        while let Some(result) = pending.next().await {
            assert!(matches!(result, Ok(Ok(_))), "raw publish failed");
        }
        let _ = producer.flush(Duration::from_secs(30));
        started.elapsed().as_secs_f64()
    })
}

/// Normalizes every record; how many succeeded. What the figures measure (callgrind counts
/// what runs inside it: the name must stay unique).
#[inline(never)]
fn bench_counted_normalize(records: &[String]) -> usize {
    records.iter().filter(|r| normalize(r).is_ok()).count()
}
