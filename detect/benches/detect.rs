//! `make bench` for detect: activities per second through every default policy (templates,
//! the public-bucket and CloudTrail policies, sign-in bursts, the anomaly baselines, geo and IP
//! intelligence enrichment) on one core, with 100,000 distinct principals and traffic built from
//! the shared records; and the memory each principal's baseline takes; the same with SigmaHQ's
//! CloudTrail rules on (and which rules alert most); and `detect backtest` over a trail file
//! built from the shared records (reading, normalizing, de-duplicating, evaluating). Prints
//! numbers; asserts nothing.
//!
//! Env: `TRAILGUARD_TEST_SHARED_DATA`, `TRAILGUARD_TEST_GEO_V4` (the DB-IP database, when the
//! setup fetched it), `TRAILGUARD_BENCH_ACTIVITIES` (default 1,000,000),
//! `TRAILGUARD_BENCH_PRINCIPALS` (default 100,000), `TRAILGUARD_BENCH_BACKTEST_RECORDS` (default
//! 200,000), `TRAILGUARD_BENCH_CALLGRIND=0` (no instruction count: it reruns the bench under
//! valgrind on 20,000 activities).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use trailguard_common::compact::ActivityEncoding;
use trailguard_common::Activity;
use trailguard_detect::config::PoliciesConfig;
use trailguard_detect::detector::Detector;
use trailguard_detect::enrich::{Enricher, GeoConfig, GeoDb, Intel};
use trailguard_ingest::files::{expand, Input};
use trailguard_ingest::normalize::normalize;
use trailguard_ingest::split::{decompress, split, Limits};

#[path = "../../tests/benches/support/callgrind.rs"]
mod callgrind;

// As in the detect binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every shared record that normalizes, normalized.
fn shared() -> Vec<Activity> {
    shared_texts()
        .iter()
        .filter_map(|text| normalize(text).ok())
        .collect()
}

/// The text of every shared record that normalizes.
fn shared_texts() -> Vec<String> {
    let root = shared_root();
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
            if let Ok(text) = item.text {
                if normalize(&text).is_ok() {
                    out.push(text.into_owned());
                }
            }
        }
    }
    out
}

fn main() {
    let n = env_usize("TRAILGUARD_BENCH_ACTIVITIES", 1_000_000);
    let principals = env_usize("TRAILGUARD_BENCH_PRINCIPALS", 100_000);
    let all = shared();
    assert!(!all.is_empty(), "no shared records");
    // The shared records are security-rule test cases, mostly changes; real trails are mostly
    // reads. Nine in ten activities come from the reads among them.
    let is_read = |a: &Activity| {
        a.read_only == Some(true)
            || ["Get", "List", "Describe", "Head", "Lookup"]
                .iter()
                .any(|p| a.event_name.starts_with(p))
    };
    let reads: Vec<Activity> = all.iter().filter(|a| is_read(a)).cloned().collect();
    let writes: Vec<Activity> = all.iter().filter(|a| !is_read(a)).cloned().collect();
    // Realistic traffic: the shared records' mix of calls, each principal with a home address
    // (a few thousand networks), 2% of activity from elsewhere, time moving 10 ms a record
    // (about 8.6 million a day) — so windows open and close and baselines learn.
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let mut activities = Vec::with_capacity(n);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..n {
        let mut a = if i % 10 == 0 {
            writes[(i / 10) % writes.len()].clone()
        } else {
            reads[i % reads.len()].clone()
        };
        let p = (next() % principals as u64) as u32;
        a.id = format!("{i:032x}");
        a.event_time = start + chrono::Duration::milliseconds(i as i64 * 10);
        a.principal.arn = Some(format!("arn:aws:iam::123456789012:user/u{p}"));
        a.principal.name = Some(format!("u{p}"));
        a.principal.kind = "IAMUser".into();
        a.principal.invoked_by = None;
        // Its actor (the key of baselines) follows: otherwise every activity keeps the shared
        // record's actor, and the run tracks a hundred-odd actors instead of `principals`.
        a.actor = trailguard_common::contract::Actor::of(&a.principal);
        let home = Ipv4Addr::new(
            (20 + (p % 180)) as u8,
            ((p / 180) % 250) as u8,
            (p % 7) as u8,
            1,
        );
        let ip = if next() % 50 == 0 {
            Ipv4Addr::new(
                (next() % 200 + 11) as u8,
                (next() % 250) as u8,
                (next() % 250) as u8,
                9,
            )
        } else {
            home
        };
        a.source_ip = Some(IpAddr::V4(ip));
        activities.push(a);
    }

    let geo = std::env::var("TRAILGUARD_TEST_GEO_V4").ok().and_then(|p| {
        GeoDb::open(&GeoConfig {
            databases: vec![p.into()],
            ..GeoConfig::default()
        })
        .ok()
        .flatten()
    });
    let has_geo = geo.is_some();
    let mut intel = Intel::default();
    intel.add(
        "tor",
        &(0..2000)
            .map(|i| format!("185.220.{}.{}\n", i / 250, i % 250))
            .collect::<String>(),
    );
    intel.add("corporate", "10.0.0.0/8\n");
    // The AS data the setup fetches, when it is there (hosting by network).
    let asn = std::env::var("TRAILGUARD_TEST_ASN_V4").ok().and_then(|p| {
        trailguard_detect::network::AsnDb::open(&[p.into()])
            .ok()
            .flatten()
    });
    let mut enricher = Enricher::new(geo, Arc::new(RwLock::new(Arc::new(intel)))).with_networks(
        asn,
        trailguard_detect::enrich::IntelConfig::default().network_risk(),
    );
    let cfg = PoliciesConfig::default();
    let mut detector = Detector::new(&cfg, Duration::from_secs(300)).with_geo(&cfg, has_geo);
    if callgrind::is_rerun() {
        if let Ok(encoding) = std::env::var("TRAILGUARD_BENCH_DECODE") {
            let messages = messages_of(&activities, encoding_named(&encoding));
            bench_counted_decode(&messages);
            return;
        }
        if std::env::var_os("TRAILGUARD_BENCH_SIGMA").is_some() {
            detector = detector.with_sigma(sigma_rules());
        }
        bench_counted_detect(&mut detector, &mut enricher, &mut activities);
        return;
    }
    // Each pass starts from activities as decoded: their JSON fields not yet parsed.
    let mut unread = activities.clone();
    let (secs, alerts, _) = bench_counted_detect(&mut detector, &mut enricher, &mut activities);
    let tracked = detector.principals();
    let bytes = detector.baseline_bytes();
    println!(
        "detect: {n} activities (9 in 10 from the {} shared reads, 1 from the {} changes), {tracked} principals, all default policies, geo {}",
        reads.len(),
        writes.len(),
        if has_geo {
            "on (DB-IP City Lite)"
        } else {
            "off (no database)"
        }
    );
    println!(
        "  {:.0} activities/s on one core ({secs:.2}s), {alerts} alerts",
        n as f64 / secs
    );
    // The same work counted in instructions, on fewer activities and principals in the same
    // proportion (valgrind is slow).
    let counted = n.min(20_000);
    let counted_env = [
        ("TRAILGUARD_BENCH_ACTIVITIES", counted.to_string()),
        (
            "TRAILGUARD_BENCH_PRINCIPALS",
            (principals * counted / n).max(1).to_string(),
        ),
    ];
    let without = callgrind::instructions("bench_counted_detect", &counted_env);
    match &without {
        Ok(count) => println!(
            "  {:.0} instructions/activity (callgrind, {counted} activities; repeatable run to run)",
            *count as f64 / counted as f64
        ),
        Err(why) => println!("  instructions: skipped ({why})"),
    }
    println!(
        "  baseline memory: {:.0} bytes per principal ({:.1} MB for {tracked})",
        bytes as f64 / tracked.max(1) as f64,
        bytes as f64 / 1e6
    );
    // The same run with SigmaHQ's AWS CloudTrail rules on as well (the shared copy), right
    // after: compare the two figures of one run, not across runs.
    let sigma = sigma_rules();
    let count = sigma.rules().len();
    let mut detector = Detector::new(&cfg, Duration::from_secs(300))
        .with_geo(&cfg, has_geo)
        .with_sigma(sigma.clone());
    let (with_secs, with_alerts, by_policy) =
        bench_counted_detect(&mut detector, &mut enricher, &mut unread);
    drop(unread);
    println!(
        "  with the {count} SigmaHQ CloudTrail rules: {:.0} activities/s ({with_secs:.2}s; {:.0}% of the time without), {with_alerts} alerts",
        n as f64 / with_secs,
        100.0 * with_secs / secs
    );
    if let Ok(without) = without {
        let mut env = counted_env.to_vec();
        env.push(("TRAILGUARD_BENCH_SIGMA", "1".to_string()));
        match callgrind::instructions("bench_counted_detect", &env) {
            Ok(with) => println!(
                "  {:.0} instructions/activity with them (callgrind, {counted} activities; {:.0}% of the count without)",
                with as f64 / counted as f64,
                100.0 * with as f64 / without as f64
            ),
            Err(why) => println!("  instructions with them: skipped ({why})"),
        }
    }
    let mut rules: Vec<(usize, &str)> = by_policy
        .iter()
        .filter(|(p, _)| p.starts_with("sigma-"))
        .map(|(p, n)| (*n, p.as_str()))
        .collect();
    rules.sort_unstable_by(|a, b| b.cmp(a));
    let titles: std::collections::HashMap<&str, &str> = sigma
        .rules()
        .iter()
        .map(|r| (r.policy_id.as_str(), r.title.as_str()))
        .collect();
    println!(
        "  Sigma alerts by rule ({} of {count} rules fire; the five that fire most):",
        rules.len()
    );
    for (alerts, policy) in rules.iter().take(5) {
        println!(
            "    {alerts:>8}  {}",
            titles.get(policy).copied().unwrap_or(policy)
        );
    }
    // What the service does before all of that: each message from the activities topic
    // decoded (UTF-8, JSON, schema version, time range), in either encoding ingest writes.
    for name in ["json", "compact"] {
        let messages = messages_of(&activities, encoding_named(name));
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let began = Instant::now();
        let decoded = bench_counted_decode(&messages);
        let secs = began.elapsed().as_secs_f64();
        assert_eq!(decoded, n, "every activity decodes");
        println!(
            "  decode {name} (an activities-topic message to an Activity): {:.0} activities/s on one core ({:.0} MB/s, {:.0} bytes each)",
            n as f64 / secs,
            bytes as f64 / secs / 1e6,
            bytes as f64 / n as f64
        );
        let mut env = counted_env.to_vec();
        env.push(("TRAILGUARD_BENCH_DECODE", name.to_string()));
        match callgrind::instructions("bench_counted_decode", &env) {
            Ok(count) => println!(
                "  {:.0} instructions/activity to decode {name} (callgrind, {counted} activities)",
                count as f64 / counted as f64
            ),
            Err(why) => println!("  instructions to decode {name}: skipped ({why})"),
        }
    }
    drop(activities);
    backtest(&all_raw(), &cfg, sigma, &mut enricher);
}

/// The shared CloudTrail records (`TRAILGUARD_TEST_SHARED_DATA`, or beside the repository).
fn shared_root() -> PathBuf {
    std::env::var("TRAILGUARD_TEST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(
                    || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
                    std::path::PathBuf::from,
                )
                .join("../../shared/data/cloudtrail")
        })
}

/// SigmaHQ's AWS CloudTrail rules (the shared copy), loaded.
fn sigma_rules() -> Arc<trailguard_detect::sigma::SigmaRules> {
    let rules = shared_root().join("../sigma/rules/cloud/aws/cloudtrail");
    let sigma =
        trailguard_detect::sigma::SigmaRules::load(&trailguard_detect::sigma::SigmaConfig {
            paths: vec![rules],
            ..Default::default()
        })
        .expect("the shared Sigma rules");
    Arc::new(sigma)
}

/// Every shared record that normalizes, as JSON.
fn all_raw() -> Vec<serde_json::Value> {
    shared_texts()
        .iter()
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect()
}

/// `detect backtest --files` over a trail file of `TRAILGUARD_BENCH_BACKTEST_RECORDS` records
/// made from the shared ones (each with its own event id, time, user and address), with the
/// Sigma rules on: records per second, end to end (read, split, normalize, de-duplicate,
/// enrich, evaluate).
fn backtest(
    raw: &[serde_json::Value],
    cfg: &PoliciesConfig,
    sigma: Arc<trailguard_detect::sigma::SigmaRules>,
    enricher: &mut Enricher,
) {
    let n = env_usize("TRAILGUARD_BENCH_BACKTEST_RECORDS", 200_000);
    let principals = env_usize("TRAILGUARD_BENCH_PRINCIPALS", 100_000).max(1);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("trail.json");
    let start = chrono::DateTime::parse_from_rfc3339("2024-05-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = raw[i % raw.len()].clone();
        let p = (i * 7919) % principals;
        let time = start + chrono::Duration::milliseconds(i as i64 * 10);
        r["eventID"] = serde_json::json!(format!("00000000-0000-4000-8000-{i:012}"));
        r["eventTime"] = serde_json::json!(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        r["sourceIPAddress"] =
            serde_json::json!(format!("{}.{}.{}.1", 20 + p % 180, (p / 180) % 250, p % 7));
        r["userIdentity"] = serde_json::json!({
            "type": "IAMUser", "userName": format!("u{p}"), "accountId": "123456789012",
            "arn": format!("arn:aws:iam::123456789012:user/u{p}"), "principalId": format!("AIDA{p}"),
        });
        records.push(r);
    }
    let text = serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap();
    drop(records);
    std::fs::write(&path, &text).unwrap();
    let config = trailguard_detect::DetectConfig {
        policies: cfg.clone(),
        ..Default::default()
    };
    let began = Instant::now();
    let report = trailguard_detect::backtest::run_files(&config, sigma, enricher, &[path], |_| {})
        .expect("backtest");
    let secs = began.elapsed().as_secs_f64();
    println!(
        "detect backtest --files: {} records ({:.0} MB, one file), Sigma rules on: {:.0} records/s ({secs:.2}s, every record read twice: regions first), {} alerts",
        report.records,
        text.len() as f64 / 1e6,
        report.records as f64 / secs,
        report.alerts.len()
    );
}

/// Each activity as the activities topic carries it.
fn messages_of(activities: &[Activity], encoding: ActivityEncoding) -> Vec<Vec<u8>> {
    activities
        .iter()
        .map(|a| encoding.to_vec(a).expect("an activity serializes"))
        .collect()
}

/// `publish.activity_encoding`'s value `name`.
fn encoding_named(name: &str) -> ActivityEncoding {
    match name {
        "compact" => ActivityEncoding::Compact,
        _ => ActivityEncoding::Json,
    }
}

/// Every message decoded as the service decodes it (and dropped); how many decoded.
/// Callgrind counts what runs inside it: the name must stay unique.
#[inline(never)]
fn bench_counted_decode(messages: &[Vec<u8>]) -> usize {
    messages
        .iter()
        .filter(|m| trailguard_detect::decode(Some(m)).is_ok())
        .count()
}

/// Every activity enriched and observed, as the service does; the run's seconds, alerts and
/// alerts by policy. Callgrind counts what runs inside it: the name must stay unique.
#[inline(never)]
fn bench_counted_detect(
    detector: &mut Detector,
    enricher: &mut Enricher,
    activities: &mut [Activity],
) -> (f64, usize, std::collections::HashMap<String, usize>) {
    // Shared and locked per activity, as the service does.
    let facts = trailguard_detect::facts::SharedFacts::default();
    // Decoding (and dropping) activities is the consumer's work, not the detector's: the loop
    // borrows them.
    let began = Instant::now();
    let mut alerts = 0usize;
    let mut by_policy: std::collections::HashMap<String, usize> = Default::default();
    for (offset, a) in activities.iter_mut().enumerate() {
        enricher.enrich(a);
        let raised = detector.observe(
            a,
            offset as i64,
            &mut trailguard_detect::facts::lock(&facts),
        );
        // Forwarded by the service; none here (SigmaHQ's rules hold no correlation).
        drop(detector.take_correlation_hits());
        alerts += raised.len();
        for alert in raised {
            *by_policy.entry(alert.policy_id).or_default() += 1;
        }
        if offset % 1000 == 999 {
            detector.safe_offset(offset as i64 + 1);
            // Baselines are handed to the changelog at every checkpoint: count that work.
            let _ = detector.take_changes().len();
        }
    }
    (began.elapsed().as_secs_f64(), alerts, by_policy)
}
