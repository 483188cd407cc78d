//! Same input, same alerts: one stream of activities replayed into fresh detects — one
//! instance and two, over three partitions and over six — raises the same alert ids every
//! time, including the decisions that depend on facts learned on other partitions (a region's
//! first use, a deactivated key, the organization's countries) — and whether ingest wrote the
//! activities as JSON or in the compact encoding (docs/wire.md).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_common::Alert;
use trailguard_tests::{read_topic, Run};

/// A CloudTrail record at `minutes` from 2024-05-10 12:00 UTC: `name` by `user` (an Identity
/// Center user, or the IAM user `iam:NAME`) in `region`.
fn call(minutes: i64, name: &str, source: &str, user: &str, region: &str, params: Value) -> Value {
    let id_base = 1_000_000 * (1 + user.bytes().map(i64::from).sum::<i64>() % 97);
    let iam = user.strip_prefix("iam:");
    let mut r = trailguard_tests::api_call(
        minutes,
        name,
        source,
        iam.unwrap_or(user),
        "71.253.251.80",
        params,
        id_base + name.len() as i64 * 10_000_000,
    );
    r["awsRegion"] = json!(region);
    if iam.is_none() {
        let role = "AWSReservedSSO_Admin_635426549a280cc6";
        r["userIdentity"] = json!({
            "type": "AssumedRole", "principalId": format!("AROAEXAMPLEADMIN:{user}"),
            "accountId": "123456789012", "accessKeyId": "ASIAEXAMPLE",
            "arn": format!("arn:aws:sts::123456789012:assumed-role/{role}/{user}"),
            "sessionContext": {"sessionIssuer": {"type": "Role", "accountId": "123456789012",
                "arn": format!("arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/us-east-1/{role}"),
                "userName": role}}
        });
    }
    r
}

/// An address in Europe (the people work from New York).
const EUROPE: &str = "92.55.146.245";

/// Ten days of ordinary work by eight people and an administrator, then first uses of new
/// regions (unusual) and second uses a minute later by others (not), and eve's access key,
/// deactivated by the administrator, is used (terminated user).
fn stream() -> Vec<Value> {
    const DAY: i64 = 1440;
    let none = json!({});
    let people = [
        "alice", "bob", "carol", "dave", "frank", "grace", "heidi", "ivan",
    ];
    let mut records = Vec::new();
    for day in -10..0 {
        for (i, person) in people.iter().enumerate() {
            let t = day * DAY + 60 + i as i64;
            let tags = json!({"resourcesSet": {"items": [{"resourceId": format!("i-{i}")}]}});
            records.push(call(
                t,
                "CreateTags",
                "ec2.amazonaws.com",
                person,
                "us-east-1",
                tags,
            ));
            records.push(call(
                t + 30,
                "DescribeInstances",
                "ec2.amazonaws.com",
                person,
                "us-east-1",
                none.clone(),
            ));
        }
        records.push(call(
            day * DAY + 120,
            "CreateSecurityGroup",
            "ec2.amazonaws.com",
            "iam:admin",
            "us-west-2",
            none.clone(),
        ));
        records.push(call(
            day * DAY + 130,
            "ListBuckets",
            "s3.amazonaws.com",
            "iam:eve",
            "us-east-1",
            none.clone(),
        ));
    }
    // Day 0: in three new regions a first user, then a second a minute later (usual: the
    // first used it, on whatever partition); two newcomers, never seen before, each in a region
    // of their own (unusual: the organization's history, on other partitions, is long enough).
    for (i, (first, second, region)) in [
        ("bob", "carol", "eu-west-3"),
        ("frank", "grace", "eu-north-1"),
        ("heidi", "ivan", "sa-east-1"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = i as i64 * 10;
        records.push(call(
            t,
            "CreateSecurityGroup",
            "ec2.amazonaws.com",
            first,
            region,
            none.clone(),
        ));
        records.push(call(
            t + 1,
            "RunInstances",
            "ec2.amazonaws.com",
            second,
            region,
            none.clone(),
        ));
    }
    for (i, (newcomer, region)) in [("yuri", "me-south-1"), ("zoe", "ca-central-1")]
        .into_iter()
        .enumerate()
    {
        records.push(call(
            40 + i as i64,
            "RunInstances",
            "ec2.amazonaws.com",
            newcomer,
            region,
            none.clone(),
        ));
    }
    records.push(call(
        30,
        "UpdateAccessKey",
        "iam.amazonaws.com",
        "iam:admin",
        "us-east-1",
        json!({"userName": "eve", "accessKeyId": "AKIAEVE", "status": "Inactive"}),
    ));
    records.push(call(
        40,
        "ListBuckets",
        "s3.amazonaws.com",
        "iam:eve",
        "us-east-1",
        none.clone(),
    ));
    // alice works from Europe on two days (a country new to her, and to the organization);
    // a day later bob does too: two actor-days there, on whatever partition, and it is no
    // longer rare for the organization.
    for (day, person) in [(-3, "alice"), (-2, "alice"), (-1, "bob")] {
        let mut r = call(
            day * DAY + DAY / 2,
            "DescribeInstances",
            "ec2.amazonaws.com",
            person,
            "us-east-1",
            none.clone(),
        );
        r["sourceIPAddress"] = json!(EUROPE);
        records.push(r);
    }
    // The stream goes on for everyone, so every partition moves past the decisions above.
    for (i, person) in people.iter().enumerate() {
        records.push(call(
            DAY / 2 + i as i64,
            "DescribeInstances",
            "ec2.amazonaws.com",
            person,
            "us-east-1",
            none.clone(),
        ));
    }
    records
}

/// The activities of `records`, ingested into a run with `partitions` activities partitions,
/// written in `encoding` (`publish.activity_encoding`).
fn ingested(records: &[Value], partitions: u32, encoding: &str) -> Result<Run> {
    let mut run = Run::new(&format!("same-input-{partitions}"))?;
    run.env.retain(|(k, _)| k != "TRAILGUARD_KAFKA__PARTITIONS");
    run.env.push((
        "TRAILGUARD_KAFKA__PARTITIONS".into(),
        partitions.to_string(),
    ));
    run.env.push((
        "TRAILGUARD_PUBLISH__ACTIVITY_ENCODING".into(),
        encoding.into(),
    ));
    run.ingest_records(records)?;
    Ok(run)
}

/// Replays `source`'s activities into `instances` fresh detects (their own group, state, facts
/// and alerts) until all `count` activities are evaluated and nothing is held; the alerts by id.
fn replay(source: &Run, instances: usize, count: usize) -> Result<BTreeMap<String, Alert>> {
    let mut run = Run::new("same-input-replay")?;
    // Its own topics, as many partitions as the activities topic it reads.
    for (k, v) in run.env.iter_mut() {
        if k == "TRAILGUARD_KAFKA__TOPICS__ACTIVITIES" {
            *v = source.topic("activities");
        }
        if k == "TRAILGUARD_KAFKA__PARTITIONS" {
            let partitions = source
                .env
                .iter()
                .find(|(k, _)| k == "TRAILGUARD_KAFKA__PARTITIONS");
            *v = partitions.map(|(_, v)| v.clone()).unwrap_or_default();
        }
    }
    let geo = trailguard_tests::geo_databases();
    ensure!(
        !geo.is_empty(),
        "no geolocation database: run through deploy/test.sh"
    );
    let config = run.detect_config(&format!("[geo]\ndatabases = {geo:?}\n"))?;
    let config = config.to_str().context("config path")?;
    let mut detects = (0..instances)
        .map(|_| run.spawn("detect", &["--config", config]))
        .collect::<Result<Vec<_>>>()?;
    let scrape = |detects: &[trailguard_tests::Service], series: &str| -> Option<f64> {
        detects
            .iter()
            .map(|d| {
                let addr = trailguard_tests::admin_addr(&d.log())?;
                let metrics = trailguard_tests::http_get(&addr, "/metrics").ok()?;
                trailguard_tests::sample_value(&metrics, series)
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let evaluated = "trailguard_detect_activities_total{result=\"evaluated\"}";
    let mut settled = 0;
    // Evaluated everything and nothing held, twice a checkpoint apart.
    while settled < 2 {
        ensure!(
            Instant::now() < deadline,
            "detect did not finish the replay; its log: {}",
            detects[0].log()
        );
        std::thread::sleep(Duration::from_millis(1500));
        let done = scrape(&detects, evaluated).is_some_and(|n| n >= count as f64)
            && scrape(&detects, "trailguard_detect_held_activities") == Some(0.0);
        settled = if done { settled + 1 } else { 0 };
    }
    // Every evaluated activity's lag is observed, against a clock read while detect ran (it
    // is read once a batch): the mean lag lies between the newest record's age and the
    // oldest's, as of this run.
    let (evaluated, lags, lag_sum) = (
        scrape(&detects, evaluated),
        scrape(&detects, "trailguard_detect_event_lag_seconds_count"),
        scrape(&detects, "trailguard_detect_event_lag_seconds_sum"),
    );
    ensure!(
        evaluated == lags,
        "{evaluated:?} evaluated, {lags:?} lags observed"
    );
    // The records replayed (the stream is the same every time).
    let times: Vec<chrono::DateTime<chrono::Utc>> = stream()
        .iter()
        .filter_map(|r| r["eventTime"].as_str()?.parse().ok())
        .collect();
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        anyhow::bail!("no event times in the stream");
    };
    let now = chrono::Utc::now();
    let age = |t: &chrono::DateTime<chrono::Utc>| (now - *t).num_seconds() as f64;
    let mean = lag_sum.unwrap_or(0.0) / lags.unwrap_or(1.0);
    // The run itself took at most its deadline: lags were measured up to that long ago.
    ensure!(
        (age(last) - 600.0..=age(first) + 60.0).contains(&mean),
        "mean lag {mean} s, records aged {} to {} s",
        age(last),
        age(first)
    );
    // The state gauge, set once a batch, is set after the last one too: detect, idle, holds
    // the baselines of the actors it evaluated.
    let entries = scrape(&detects, "trailguard_detect_state_entries");
    ensure!(entries > Some(0.0), "state entries {entries:?} when idle");
    let records = read_topic(
        &run.topic("alerts"),
        Duration::from_secs(30),
        Duration::from_secs(2),
        |_| true,
    )?;
    for detect in &mut detects {
        detect.stop("-TERM")?;
    }
    Ok(records
        .iter()
        .filter_map(|r| serde_json::from_slice::<Alert>(&r.value).ok())
        .map(|a| (a.id.clone(), a))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn same_input_same_alerts() -> Result<()> {
    let records = stream();
    let three = ingested(&records, 3, "json")?;
    let six = ingested(&records, 6, "json")?;
    let compact = ingested(&records, 3, "compact")?;
    // The compact topic holds the same activities, each under the same key: decoded as detect
    // decodes them, they are the JSON topic's.
    let activities = |run: &Run| -> Result<BTreeMap<String, (String, Value)>> {
        let topic = run.topic("activities");
        read_topic(
            &topic,
            Duration::from_secs(60),
            Duration::from_secs(1),
            |r| r.len() >= records.len(),
        )?
        .iter()
        .map(|r| {
            let activity = trailguard_detect::decode(Some(&r.value))
                .map_err(|p| anyhow::anyhow!("{topic}: {}: {}", p.kind, p.reason))?;
            Ok((
                activity.id.clone(),
                (r.key.clone(), serde_json::to_value(&activity)?),
            ))
        })
        .collect()
    };
    let (from_json, from_compact) = (activities(&three)?, activities(&compact)?);
    ensure!(
        from_json.len() == records.len(),
        "{} activities",
        from_json.len()
    );
    ensure!(
        from_compact == from_json,
        "the compact topic's activities differ from the JSON topic's"
    );
    let raw = read_topic(
        &compact.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |r| r.len() >= records.len(),
    )?;
    ensure!(
        raw.iter()
            .all(|r| trailguard_common::compact::is_compact(&r.value)),
        "ingest wrote the compact topic in another encoding"
    );
    let first = replay(&three, 1, records.len())?;
    let about = |policy: &str| -> Vec<String> {
        let mut who: Vec<String> = first
            .values()
            .filter(|a| a.policy_id == policy)
            .map(|a| {
                a.entity
                    .id
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        who.sort();
        who
    };
    ensure!(
        about("unusual-region") == ["bob", "frank", "heidi", "yuri", "zoe"],
        "unusual-region about {:?}; all: {:#?}",
        about("unusual-region"),
        first
            .values()
            .map(|a| &a.evidence.summary)
            .collect::<Vec<_>>()
    );
    ensure!(
        about("infrequent-country") == ["alice"],
        "infrequent-country about {:?}",
        about("infrequent-country")
    );
    ensure!(
        about("terminated-user") == ["eve"],
        "terminated-user about {:?}",
        about("terminated-user")
    );
    for (source, instances) in [(&three, 2), (&six, 1), (&six, 2), (&compact, 1)] {
        let again = replay(source, instances, records.len())?;
        let ids = |m: &BTreeMap<String, Alert>| -> Vec<String> {
            m.values()
                .map(|a| format!("{} {}", a.id, a.policy_id))
                .collect()
        };
        ensure!(
            ids(&again) == ids(&first),
            "{instances} detect(s) over {} gave other alerts:\nfirst: {:#?}\nthen: {:#?}",
            source.topic("activities"),
            ids(&first),
            ids(&again)
        );
    }
    Ok(())
}
