//! `make bench` part: how long detect takes to resume after a crash. A backlog of failed
//! sign-ins and VM deletions (the restart tests' bursts) is replayed by detect; a quarter of the
//! way in, detect is killed with SIGKILL and started again at once. Printed: the time from the
//! restart to the first new alert, with librdkafka's default session timeout (45 s: the dead
//! member holds its partitions until it expires) and with `session.timeout.ms = 6000`.
//!
//! Env: `TRAILGUARD_BENCH_BROKERS`, `TRAILGUARD_TEST_BIN_DIR` (the release binaries),
//! `TRAILGUARD_BENCH_USERS` (default 600).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use trailguard_tests::{burst_file, read_topic_at, topic_end, Run};

fn main() -> Result<()> {
    let Ok(brokers) = std::env::var("TRAILGUARD_BENCH_BROKERS") else {
        println!("detect recovery: skipped (run `make bench`)");
        return Ok(());
    };
    let users: usize = std::env::var("TRAILGUARD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let input = burst_file(users)?;
    for session in [None, Some("6000")] {
        let mut run = Run::new("bench-recovery")?;
        for (key, value) in run.env.iter_mut() {
            if key == "TRAILGUARD_BROKERS" {
                *value = brokers.clone();
            }
        }
        if let Some(ms) = session {
            run.env.push((
                "TRAILGUARD_KAFKA__CLIENT__SESSION_TIMEOUT_MS".into(),
                ms.into(),
            ));
        }
        run.ingest_files(&input)?;
        let alerts = run.topic("alerts");
        let expected = users * 3;
        let mut detect = run.spawn("detect", &[])?;
        let long = Duration::from_secs(600);
        read_topic_at(&brokers, &alerts, long, Duration::ZERO, |r| {
            r.len() >= expected / 4
        })?;
        detect.stop("-KILL")?;
        // Everything the killed instance wrote; resuming is a record past it.
        let before = topic_end(&alerts)? as usize;
        let restarted = Instant::now();
        let _detect = run.spawn("detect", &[])?;
        read_topic_at(&brokers, &alerts, long, Duration::ZERO, |r| {
            r.len() > before
        })?;
        let resumed = restarted.elapsed();
        // Every distinct alert (a replay repeats some, with their ids).
        let mut ids = std::collections::BTreeSet::new();
        read_topic_at(&brokers, &alerts, long, Duration::ZERO, |r| {
            if let Some(v) = r.last().and_then(|r| r.json().ok()) {
                ids.insert(v["id"].as_str().unwrap_or_default().to_string());
            }
            ids.len() >= expected
        })?;
        ensure!(ids.len() >= expected, "not every alert was raised");
        let all = restarted.elapsed();
        println!(
            "detect recovery after SIGKILL and an immediate restart (session.timeout.ms {}): \
             first new alert after {:.1} s, the whole backlog ({expected} alerts) after {:.1} s",
            session.unwrap_or("45000, the default"),
            resumed.as_secs_f64(),
            all.as_secs_f64()
        );
    }
    Ok(())
}
