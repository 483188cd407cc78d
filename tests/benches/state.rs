//! `make bench` part: detect's state at organization scale. Baselines of
//! `TRAILGUARD_BENCH_STATE_ACTORS` actors (default 300,000) are built by a detector from five
//! activities each (calls of several kinds over two days, from each actor's own address);
//! printed: memory per baseline, the changelog's bytes per baseline, the time to save them all
//! (a cold checkpoint), the time to restore a partition of them (actors/s) as a restarted
//! instance does, and the cost of the memory bound (evicting to make room).
//!
//! Env: `TRAILGUARD_BENCH_BROKERS`, `TRAILGUARD_BENCH_STATE_ACTORS`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use anyhow::Result;
use trailguard_common::config::{KafkaConfig, TopicRole};
use trailguard_detect::config::PoliciesConfig;
use trailguard_detect::detector::Detector;

// As in the detect binary: memory and restore figures are detect's own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let Ok(brokers) = std::env::var("TRAILGUARD_BENCH_BROKERS") else {
        println!("detect state: skipped (run `make bench`)");
        return Ok(());
    };
    let actors: usize = std::env::var("TRAILGUARD_BENCH_STATE_ACTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let runtime = tokio::runtime::Runtime::new()?;
    let cfg = PoliciesConfig::default();
    let rss_before = resident_bytes();
    let built = Instant::now();
    let mut detector = Detector::new(&cfg, std::time::Duration::from_secs(300));
    observe_all(&mut detector, actors, 0);
    let build_secs = built.elapsed().as_secs_f64();
    let rss = resident_bytes().saturating_sub(rss_before);
    let held = detector.principals();
    let bytes = detector.baseline_bytes();
    println!(
        "detect state: {held} baselines from {} activities of {actors} actors ({:.0} activities/s)",
        actors * 5,
        (actors * 5) as f64 / build_secs
    );
    println!(
        "  memory: {:.0} bytes per baseline counted ({:.1} MB); the process grew {:.0} bytes per baseline ({:.1} MB resident)",
        bytes as f64 / held.max(1) as f64,
        bytes as f64 / 1e6,
        rss as f64 / held.max(1) as f64,
        rss as f64 / 1e6
    );
    // The changelog's size: each baseline as saved (JSON, sealed).
    let signing = trailguard_common::sign::SigningConfig {
        key_id: Some("bench".into()),
        key: Some("0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    let signer = signing.signer();
    let changes = detector.take_changes();
    let keys: Vec<String> = changes.iter().map(|(k, _)| k.clone()).collect();
    let sealed: Vec<(&String, Vec<u8>)> = changes
        .iter()
        .map(|(k, s)| {
            let value = s
                .and_then(|s| serde_json::to_vec(s).ok())
                .unwrap_or_default();
            let sealed = trailguard_common::sign::seal(
                signer.as_ref(),
                trailguard_common::sign::purpose::STATE,
                k.as_bytes(),
                &value,
            );
            (k, sealed)
        })
        .collect();
    let record_bytes: usize = sealed.iter().map(|(k, s)| k.len() + s.len()).sum();
    // What a restore's decoders do per record, on one thread and without the broker.
    let verifier = signing.verifier();
    let decoding = Instant::now();
    for (k, s) in &sealed {
        let value = verifier
            .open(trailguard_common::sign::purpose::STATE, k.as_bytes(), s)
            .expect("sealed here");
        let state: trailguard_detect::anomaly::PrincipalState =
            serde_json::from_slice(value).expect("saved here");
        std::hint::black_box(Box::new(state));
    }
    let decode_secs = decoding.elapsed().as_secs_f64();
    drop(sealed);
    drop(changes);
    detector.mark_dirty(keys);
    println!(
        "  changelog: {:.0} bytes per baseline (key and sealed JSON value; {:.1} MB)",
        record_bytes as f64 / held.max(1) as f64,
        record_bytes as f64 / 1e6
    );
    // Saved (a checkpoint with every baseline changed), then restored as a new owner does.
    let run = format!(
        "t-bench-state-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let mut kafka = KafkaConfig {
        brokers,
        partitions: 1,
        ..KafkaConfig::default()
    };
    kafka.topics.detect_state = format!("{run}.state");
    runtime.block_on(trailguard_common::kafka::ensure_topics(
        &kafka,
        &[TopicRole::DetectState],
    ))?;
    let producer = trailguard_common::kafka::producer(&kafka, "bench-state", 5)?;
    let saved = Instant::now();
    let ok = runtime.block_on(trailguard_detect::state::save(
        &producer,
        &kafka.topics.detect_state,
        0,
        &mut detector,
        Vec::new(),
        signer.as_ref(),
    ));
    let save_secs = saved.elapsed().as_secs_f64();
    anyhow::ensure!(ok, "saving the baselines failed");
    println!(
        "  save: {held} baselines in {save_secs:.2}s ({:.0} baselines/s; a checkpoint saves only those changed since the last)",
        held as f64 / save_secs
    );
    let restored = Instant::now();
    let back = trailguard_detect::state::restore(&kafka, 0, &verifier)?;
    let restore_secs = restored.elapsed().as_secs_f64();
    let restored_bytes: usize = back
        .states
        .iter()
        .map(|(k, s)| k.capacity() + s.heap_size())
        .sum();
    anyhow::ensure!(
        back.states.len() == held,
        "restored {} of {held}",
        back.states.len()
    );
    println!(
        "  restore: {held} baselines in {restore_secs:.2}s ({:.0} actors/s: read, verified, decoded on {} threads); verifying and decoding alone, one thread: {:.0} actors/s",
        held as f64 / restore_secs,
        trailguard_detect::state::decoders(),
        held as f64 / decode_secs
    );
    println!(
        "  restored baselines: {:.0} bytes each counted (without the table's slots)",
        restored_bytes as f64 / held.max(1) as f64
    );
    // The memory bound: a partition bounded at half the actors, fed them all.
    let mut bounded_cfg = cfg.clone();
    bounded_cfg.anomaly.max_baselines = (actors / 2).max(10_000);
    let mut bounded = Detector::new(&bounded_cfg, std::time::Duration::from_secs(300));
    let began = Instant::now();
    observe_all(&mut bounded, actors, 0);
    let bounded_secs = began.elapsed().as_secs_f64();
    println!(
        "  bounded at {}: {} held, {} evicted; {:.0} activities/s ({:.0}% of the unbounded rate)",
        bounded_cfg.anomaly.max_baselines,
        bounded.principals(),
        bounded.take_evicted(),
        (actors * 5) as f64 / bounded_secs,
        100.0 * build_secs / bounded_secs
    );
    Ok(())
}

/// Five activities of each of `actors` actors, in time order: an ordinary API call, a read, a
/// console sign-in, a role assumption and a write, spread over two days.
fn observe_all(detector: &mut Detector, actors: usize, first_offset: i64) {
    let facts = trailguard_detect::facts::SharedFacts::default();
    let calls = [
        ("s3.amazonaws.com", "ListBuckets"),
        ("ec2.amazonaws.com", "DescribeInstances"),
        ("signin.amazonaws.com", "ConsoleLogin"),
        ("sts.amazonaws.com", "AssumeRole"),
        ("iam.amazonaws.com", "CreateAccessKey"),
    ];
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
        .unwrap()
        .timestamp();
    let mut offset = first_offset;
    for (round, (source, name)) in calls.iter().enumerate() {
        for i in 0..actors {
            let time = start + (round * 10 * 3600) as i64 + (i as i64 * 36_000 / actors as i64);
            let record = serde_json::json!({
                "eventVersion": "1.09",
                "eventTime": chrono::DateTime::from_timestamp(time, 0).unwrap().to_rfc3339(),
                "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
                "eventID": format!("00000000-0000-4000-8000-{:012}", offset),
                "sourceIPAddress": format!("{}.{}.{}.7", 20 + i % 180, (i / 180) % 250, i % 7),
                "userAgent": "aws-cli/2.15.0 Python/3.11",
                "recipientAccountId": "123456789012",
                "userIdentity": {"type": "IAMUser", "userName": format!("u{i}"),
                    "accountId": "123456789012", "principalId": format!("AIDA{i}"),
                    "arn": format!("arn:aws:iam::123456789012:user/u{i}")},
                "responseElements": if *name == "ConsoleLogin" { serde_json::json!({"ConsoleLogin": "Success"}) } else { serde_json::Value::Null },
            });
            let activity = trailguard_ingest::normalize::normalize(&record.to_string()).unwrap();
            detector.observe(
                &activity,
                offset,
                &mut trailguard_detect::facts::lock(&facts),
            );
            offset += 1;
        }
    }
}

/// The process's resident memory (Linux; 0 elsewhere).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<usize>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}
