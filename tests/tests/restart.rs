//! Restarts mid-stream lose nothing and repeat nothing: detect stopped with SIGTERM and killed
//! with SIGKILL raises the same alerts as an uninterrupted run; remediate restarted never acts
//! twice on one alert.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;
use trailguard_common::{ActionRecord, Alert};
use trailguard_tests::{burst_file, produce, read_topic, topic_end, wait_for_topic, Run};

const TIMEOUT: Duration = Duration::from_secs(180);

fn alert_ids(topic: &str, distinct: usize) -> Result<(BTreeSet<String>, usize)> {
    // Each record parsed once (the check runs after every record).
    let mut seen = BTreeSet::new();
    let records = read_topic(topic, TIMEOUT, Duration::from_secs(3), |r| {
        if let Some(id) = r
            .last()
            .and_then(|r| serde_json::from_slice::<Alert>(&r.value).ok())
        {
            seen.insert(id.id);
        }
        seen.len() >= distinct
    })?;
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| serde_json::from_slice::<Alert>(&r.value).map(|a| a.id))
        .collect::<Result<_, _>>()?;
    Ok((ids, records.len()))
}

/// The uninterrupted reference: `users`' bursts (see [`burst_file`]) ingested into `run`'s
/// activities topic and run through one detect to the end. Returns the input (for runs to
/// compare against) and the alert ids raised: one burst per principal and one per source IP,
/// one VM-deletion burst per principal, `users * 3` in all.
fn reference_run(run: &Run, users: usize) -> Result<(std::path::PathBuf, BTreeSet<String>)> {
    let input = burst_file(users)?;
    run.ingest_files(&input)?;
    let mut reference = run.spawn("detect", &[])?;
    let (ids, _) = alert_ids(&run.topic("alerts"), users * 3)?;
    reference.stop("-TERM")?;
    Ok((input, ids))
}

#[tokio::test(flavor = "multi_thread")]
async fn detect_restarted_mid_stream_raises_the_same_alerts() -> Result<()> {
    const USERS: usize = 600;
    let run = Run::new("detect-restart")?;
    let expected = USERS * 3;
    let (_, reference_ids) = reference_run(&run, USERS)?;
    assert_eq!(reference_ids.len(), expected);

    // Same activities, a new group and alerts topic; stopped with SIGTERM, then killed with
    // SIGKILL, mid-stream.
    let mut again = Run::new("detect-restart-b")?;
    // A killed member leaves the group only when its session times out: keep that short.
    again.env.push((
        "TRAILGUARD_KAFKA__CLIENT__SESSION_TIMEOUT_MS".into(),
        "6000".into(),
    ));
    for (key, value) in again.env.iter_mut() {
        if key == "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES" {
            *value = run.topic("activities");
        }
    }
    let alerts = again.topic("alerts");
    for signal in ["-TERM", "-KILL"] {
        let mut detect = again.spawn("detect", &[])?;
        let seen = read_topic(&alerts, TIMEOUT, Duration::ZERO, |r| {
            r.len() >= expected / 4
        })?
        .len();
        let status = detect.stop(signal)?;
        if signal == "-TERM" {
            ensure!(
                status.success(),
                "detect exited {status} on SIGTERM: {}",
                detect.log()
            );
        }
        ensure!(
            seen < expected * 2,
            "the stream finished before the {signal}; make it longer"
        );
    }
    let _detect = again.spawn("detect", &[])?;
    let (ids, messages) = alert_ids(&alerts, expected)?;
    // None lost, none new; a replay may repeat an alert, always with the same id.
    assert_eq!(ids, reference_ids);
    assert!(messages >= expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn remediate_restarted_never_acts_twice() -> Result<()> {
    let run = Run::new("remediate-restart")?;
    let alerts = run.topic("alerts");
    let actions = run.topic("actions");
    let alert = |id: &str| -> Result<Vec<u8>> {
        let mut alert: trailguard_common::Alert = serde_json::from_str(include_str!("alert.json"))?;
        alert.id = id.into();
        trailguard_tests::signed(alert)
    };

    let mut remediate = run.spawn("remediate", &[])?;
    wait_for_topic(&alerts, TIMEOUT)?;
    produce(&alerts, "e", &alert("alert-1")?).await?;
    read_topic(&actions, TIMEOUT, Duration::ZERO, |r| !r.is_empty())?;
    let status = remediate.stop("-TERM")?;
    ensure!(
        status.success(),
        "remediate exited {status}: {}",
        remediate.log()
    );

    // The same alert again (a replayed detect), and a new one, while remediate is down.
    produce(&alerts, "e", &alert("alert-1")?).await?;
    produce(&alerts, "e", &alert("alert-2")?).await?;
    let _remediate = run.spawn("remediate", &[])?;
    let records = read_topic(&actions, TIMEOUT, Duration::from_secs(3), |r| r.len() >= 2)?;
    let mut answered: Vec<String> = records
        .iter()
        .map(|r| serde_json::from_slice::<ActionRecord>(&r.value).map(|a| a.alert_id))
        .collect::<Result<_, _>>()?;
    // Keyed by alert id, so the two may sit on different partitions: compare as a set.
    answered.sort();
    assert_eq!(
        answered,
        ["alert-1", "alert-2"],
        "one action record per alert, never two"
    );
    Ok(())
}

/// Something on the activities topic that is not an activity goes to the dead-letter topic with
/// its reason; detect neither panics nor stalls on it.
#[tokio::test(flavor = "multi_thread")]
async fn detect_dead_letters_what_it_cannot_read() -> Result<()> {
    let run = Run::new("detect-poison")?;
    let _detect = run.spawn("detect", &[])?;
    let activities = run.topic("activities");
    wait_for_topic(&activities, TIMEOUT)?;
    produce(&activities, "k", b"not json at all").await?;
    produce(&activities, "k", br#"{"schema_version": 99}"#).await?;
    let dlq = read_topic(&run.topic("dlq"), TIMEOUT, Duration::from_secs(2), |r| {
        r.len() >= 2
    })?;
    // Dead letters are keyed by where they came from, so they may sit on different partitions.
    let mut letters: Vec<(&str, &[u8])> = dlq
        .iter()
        .filter_map(|r| {
            r.headers
                .get("trailguard.error_kind")
                .map(|k| (k.as_str(), r.value.as_slice()))
        })
        .collect();
    letters.sort();
    assert_eq!(
        letters,
        [
            ("undecodable_activity", b"not json at all".as_slice()),
            (
                "unsupported_schema_version",
                br#"{"schema_version": 99}"#.as_slice()
            )
        ]
    );
    assert!(dlq
        .iter()
        .all(|r| r.headers.get("trailguard.stage").map(String::as_str) == Some("detect")));
    Ok(())
}

/// Two detect instances in one consumer group split the partitions and together raise exactly
/// the alerts one instance raises: bursts, and the baselines each restores for its partitions.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_raise_what_one_does() -> Result<()> {
    const USERS: usize = 150;
    let run = Run::new("detect-pair")?;
    let expected = USERS * 3;
    let (input, reference) = reference_run(&run, USERS)?;
    assert_eq!(reference.len(), expected);

    // The pair joins its group first, then the same records arrive (same ids, so the same
    // alert ids), so both have partitions when the work starts.
    let pair = Run::new("detect-pair-b")?;
    let mut a = pair.spawn("detect", &[])?;
    let mut b = pair.spawn("detect", &[])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(a.log().contains("detect running") && b.log().contains("detect running")) {
        ensure!(
            std::time::Instant::now() < deadline,
            "detect did not start: {}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the group settle on both members.
    std::thread::sleep(Duration::from_secs(8));
    pair.ingest_files(&input)?;
    let (ids, _) = alert_ids(&pair.topic("alerts"), expected)?;
    a.stop("-TERM")?;
    b.stop("-TERM")?;
    assert_eq!(ids, reference);
    // Both took part.
    let worked = |log: String| log.contains("baselines restored");
    assert!(
        worked(a.log()) && worked(b.log()),
        "one instance did all the work"
    );
    Ok(())
}

/// A killed member leaves its group only when its session times out: the tests keep it short.
fn short_sessions(run: &mut Run) {
    run.env.push((
        "TRAILGUARD_KAFKA__CLIENT__SESSION_TIMEOUT_MS".into(),
        "6000".into(),
    ));
}

fn six_partitions(run: &mut Run) {
    for (key, value) in run.env.iter_mut() {
        if key == "TRAILGUARD_KAFKA__PARTITIONS" {
            *value = "6".into();
        }
    }
}

/// Waits until each service's log says it runs, then a little for the group to settle.
fn wait_running(services: &[&trailguard_tests::Service], line: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !services.iter().all(|s| s.log().contains(line)) {
        ensure!(
            std::time::Instant::now() < deadline,
            "not running: {}",
            services
                .iter()
                .map(|s| s.log())
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(8));
    Ok(())
}

/// Two detect instances in one group, one killed with SIGKILL mid-stream: the survivor takes
/// its partitions over (restoring their baselines) and the group raises exactly the alerts of
/// one uninterrupted instance.
#[tokio::test(flavor = "multi_thread")]
async fn detect_pair_with_one_killed_raises_what_one_does() -> Result<()> {
    const USERS: usize = 300;
    let run = Run::new("detect-pair-kill")?;
    let expected = USERS * 3;
    let (input, reference) = reference_run(&run, USERS)?;
    assert_eq!(reference.len(), expected);

    let mut pair = Run::new("detect-pair-kill-b")?;
    short_sessions(&mut pair);
    let a = pair.spawn("detect", &[])?;
    let mut b = pair.spawn("detect", &[])?;
    wait_running(&[&a, &b], "detect running")?;
    pair.ingest_files(&input)?;
    let alerts = pair.topic("alerts");
    read_topic(&alerts, TIMEOUT, Duration::ZERO, |r| {
        r.len() >= expected / 4
    })?;
    b.stop("-KILL")?;
    // What is on the topic once `b` is dead: the survivor must raise the rest.
    ensure!(
        topic_end(&alerts)? < expected as i64,
        "the stream finished before the kill; make it longer"
    );
    let (ids, _) = alert_ids(&alerts, expected)?;
    assert_eq!(
        ids, reference,
        "the survivor raises exactly what one instance does"
    );
    Ok(())
}

/// A second instance joins while the first works through a backlog. The rebalance revokes
/// partitions the first holds records of — taken from the consumer, being decoded or waiting
/// to be evaluated — and it must drop them rather than evaluate them (their next owner reads
/// them from the last commit): the pair raises exactly what one instance does.
#[tokio::test(flavor = "multi_thread")]
async fn detect_joined_mid_stream_raises_what_one_does() -> Result<()> {
    const USERS: usize = 1500;
    let run = Run::new("detect-join")?;
    let expected = USERS * 3;
    let (input, reference) = reference_run(&run, USERS)?;
    assert_eq!(reference.len(), expected);

    let pair = Run::new("detect-join-b")?;
    pair.ingest_files(&input)?;
    let _first = pair.spawn("detect", &[])?;
    let alerts = pair.topic("alerts");
    read_topic(&alerts, TIMEOUT, Duration::ZERO, |r| {
        r.len() >= expected / 10
    })?;
    let second = pair.spawn("detect", &[])?;
    // Owning partitions (it restores each as it is given it) while alerts are still to come:
    // the rebalance came mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !second.log().contains("baselines restored") {
        ensure!(
            std::time::Instant::now() < deadline,
            "the second instance was given no partition: {}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let raised = topic_end(&alerts)?;
    ensure!(
        raised < expected as i64,
        "the stream finished before the second instance joined; make it longer"
    );
    let (ids, _) = alert_ids(&alerts, expected)?;
    assert_eq!(
        ids, reference,
        "the pair raises exactly what one instance does"
    );
    eprintln!("joined with {raised} of {expected} alerts raised");
    Ok(())
}

/// (alert id, action kind, mode, outcome) of every action record on `topic`, once `distinct`
/// alerts are answered.
fn answers(topic: &str, distinct: usize) -> Result<Vec<(String, String, String, String)>> {
    let mut seen = BTreeSet::new();
    let records = read_topic(topic, TIMEOUT, Duration::from_secs(3), |r| {
        if let Some(a) = r
            .last()
            .and_then(|r| serde_json::from_slice::<ActionRecord>(&r.value).ok())
        {
            seen.insert(a.alert_id);
        }
        seen.len() >= distinct
    })?;
    let mut found: Vec<(String, String, String, String)> = records
        .iter()
        .map(|r| {
            let a: Value = serde_json::from_slice(&r.value)?;
            let text = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            Ok((
                text("alert_id"),
                text("kind"),
                text("mode"),
                text("outcome"),
            ))
        })
        .collect::<Result<_>>()?;
    found.sort();
    Ok(found)
}

/// Two remediate instances in one group, one killed with SIGKILL mid-way: every alert is
/// answered exactly once, as one uninterrupted instance answers them.
#[tokio::test(flavor = "multi_thread")]
async fn remediate_pair_with_one_killed_answers_each_alert_once() -> Result<()> {
    const ALERTS: usize = 300;
    let alert = |i: usize| -> Result<(String, Vec<u8>)> {
        let mut alert: Alert = serde_json::from_str(include_str!("alert.json"))?;
        alert.id = format!("alert-{i}");
        alert.entity.id = format!("trail-{i}");
        Ok((alert.entity.id.clone(), trailguard_tests::signed(alert)?))
    };
    let alerts: Vec<(String, Vec<u8>)> = (0..ALERTS).map(alert).collect::<Result<_>>()?;

    let one = Run::new("remediate-one")?;
    let mut single = one.spawn("remediate", &[])?;
    wait_for_topic(&one.topic("alerts"), TIMEOUT)?;
    for (key, value) in &alerts {
        produce(&one.topic("alerts"), key, value).await?;
    }
    let reference = answers(&one.topic("actions"), ALERTS)?;
    single.stop("-TERM")?;
    assert_eq!(reference.len(), ALERTS, "one record per alert");

    let mut pair = Run::new("remediate-pair-kill")?;
    short_sessions(&mut pair);
    let a = pair.spawn("remediate", &[])?;
    let mut b = pair.spawn("remediate", &[])?;
    wait_running(&[&a, &b], "remediate running")?;
    let topic = pair.topic("alerts");
    for (i, (key, value)) in alerts.iter().enumerate() {
        produce(&topic, key, value).await?;
        if i == ALERTS / 3 {
            b.stop("-KILL")?;
        }
    }
    let answered = answers(&pair.topic("actions"), ALERTS)?;
    assert_eq!(
        answered, reference,
        "each alert answered once, as by one instance"
    );
    Ok(())
}

/// How long a restarted detect may take to make progress after a chain of crashes: the dead
/// members' sessions (6 s here) must expire before the group rebalances, then the partitions'
/// baselines are restored. Measured on Apache Kafka and tansu (see docs/kafka.md); the bound
/// leaves room for a loaded machine.
const RESUME_BOUND: Duration = Duration::from_secs(60);

/// detect killed with SIGKILL four times in a row at random moments (during start-up, restore,
/// rebalancing or processing), then started once more: it makes progress again within
/// [`RESUME_BOUND`] and raises exactly the alerts of an uninterrupted run.
#[tokio::test(flavor = "multi_thread")]
async fn detect_killed_repeatedly_resumes_within_a_bound() -> Result<()> {
    // Long enough that four short lives cannot finish it (900 did, once the test broker
    // stopped carrying every earlier run's topics and got faster).
    const USERS: usize = 1500;
    let mut run = Run::new("detect-kills")?;
    // Six partitions, as a default deployment has: more for a restarted instance to restore.
    six_partitions(&mut run);
    let expected = USERS * 3;
    let (_, reference_ids) = reference_run(&run, USERS)?;

    let mut again = Run::new("detect-kills-b")?;
    six_partitions(&mut again);
    short_sessions(&mut again);
    for (key, value) in again.env.iter_mut() {
        if key == "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES" {
            *value = run.topic("activities");
        }
    }
    let alerts = again.topic("alerts");
    // Random moments from the clock: each kill after 0.5 to 6 s.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos() as u64;
    for kill in 0..4 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(500 + (seed >> 33) % 5500);
        let mut detect = again.spawn("detect", &[])?;
        std::thread::sleep(after);
        detect.stop("-KILL")?;
        eprintln!("kill {kill} after {after:?}");
    }
    wait_for_topic(&alerts, TIMEOUT)?;
    // Everything the killed instances wrote; progress is a record past it.
    let before = topic_end(&alerts)? as usize;
    ensure!(
        before < expected,
        "the stream finished before the last kill; make it longer"
    );
    let started = std::time::Instant::now();
    let _detect = again.spawn("detect", &[])?;
    read_topic(&alerts, RESUME_BOUND, Duration::ZERO, |r| r.len() > before)
        .map_err(|e| anyhow::anyhow!("no progress within {RESUME_BOUND:?} of the restart: {e}"))?;
    eprintln!("resumed {:?} after the restart", started.elapsed());
    let (ids, _) = alert_ids(&alerts, expected)?;
    assert_eq!(ids, reference_ids);
    Ok(())
}

/// `GET /healthz` of the service whose log is `log`: (status code, body).
fn healthz(log: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    // The last start's endpoint (a run's instances share one log file).
    let addr = log
        .lines()
        .rfind(|l| l.contains("admin endpoint"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|v| v["addr"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow::anyhow!("no admin endpoint in the log yet"))?;
    let mut stream = std::net::TcpStream::connect(&addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /healthz HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

/// An instance that owns no partitions of a group with lag and no progress is unhealthy: here a
/// detect killed with a long session still holds every partition, so the instance that replaces
/// it waits for the rebalance. Once the dead member's session expires and the new instance owns
/// the partitions, it is healthy again.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_waiting_on_a_stalled_group_is_unhealthy() -> Result<()> {
    const USERS: usize = 600;
    let mut run = Run::new("detect-stalled")?;
    // The dead member holds its partitions for 90 s.
    run.env.push((
        "TRAILGUARD_KAFKA__CLIENT__SESSION_TIMEOUT_MS".into(),
        "90000".into(),
    ));
    run.ingest_files(&burst_file(USERS)?)?;
    let alerts = run.topic("alerts");
    let mut first = run.spawn("detect", &[])?;
    read_topic(&alerts, TIMEOUT, Duration::ZERO, |r| r.len() >= USERS / 2)?;
    first.stop("-KILL")?;
    let second = run.spawn("detect", &[])?;
    let started = std::time::Instant::now();
    let mut unhealthy = None;
    let mut healthy_after = false;
    while started.elapsed() < Duration::from_secs(240) {
        std::thread::sleep(Duration::from_secs(1));
        let Ok((status, body)) = healthz(&second.log()) else {
            continue;
        };
        match (status, &unhealthy) {
            (503, None) => unhealthy = Some((started.elapsed(), body)),
            (200, Some(_)) => {
                healthy_after = true;
                break;
            }
            _ => {}
        }
    }
    let (at, body) = unhealthy.ok_or_else(|| {
        anyhow::anyhow!("never unhealthy while the group stalled: {}", second.log())
    })?;
    eprintln!("unhealthy after {at:?}: {body}");
    ensure!(
        body.contains("owns no partitions") && body.contains("lag"),
        "the reason names the group and its lag: {body}"
    );
    ensure!(
        healthy_after,
        "healthy again once it owned the partitions: {}",
        second.log()
    );
    Ok(())
}
