//! The anomaly detections end to end, through ingest and detect with a configuration file:
//! a deactivated access key used later by its owner (learned on the administrator's partition,
//! raised on the owner's), impossible travel with the DB-IP database, a Tor exit and a
//! known-malicious address from intelligence lists; every alert also as an OCSF Detection
//! Finding. And the people behind role sessions: a returning Identity Center user, a new
//! identity's burst, sign-ins from a Tor exit and from a hosting network, beside ordinary
//! workload and daily traffic that stays quiet. The three burst detections after a week of
//! ordinary work, beside a colleague who stays quiet; failed sign-ins against the actor's own
//! rate; a bucket shared with another account; and a country rare for the organization.

use std::io::Write;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use trailguard_common::contract::AlertKind;
use trailguard_common::Alert;
use trailguard_tests::{read_topic, Run};

fn record(minutes: i64, name: &str, source: &str, user: &str, ip: &str, params: Value) -> Value {
    trailguard_tests::api_call(minutes, name, source, user, ip, params, 100_000)
}

/// Reads the alerts topic until every policy in `want` has alerted (or the wait ends), stops
/// `detect`, and returns the alerts; the error carries detect's log.
fn alerts_until(
    run: &Run,
    mut detect: trailguard_tests::Service,
    want: &[&str],
    settle: Duration,
) -> Result<Vec<Alert>> {
    let alerts = read_topic(&run.topic("alerts"), Duration::from_secs(90), settle, |r| {
        let got: Vec<String> = r
            .iter()
            .filter_map(|r| serde_json::from_slice::<Alert>(&r.value).ok())
            .map(|a| a.policy_id)
            .collect();
        want.iter().all(|w| got.iter().any(|g| g == w))
    });
    let log = detect.log();
    detect.stop("-TERM")?;
    let alerts = alerts.with_context(|| format!("detect log: {log}"))?;
    Ok(alerts
        .iter()
        .filter_map(|r| serde_json::from_slice(&r.value).ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_key_travel_and_tor() -> Result<()> {
    let mut run = Run::new("detections")?;
    let ocsf_topic = format!("{}.ocsf", run.id);
    run.env.push((
        "TRAILGUARD_KAFKA__TOPICS__ALERTS_OCSF".into(),
        ocsf_topic.clone(),
    ));
    let geo = trailguard_tests::geo_databases();
    let config = run.detect_config(&format!(
        "[geo]\ndatabases = {geo:?}\n\n[policies.anomaly]\nlearning_period = \"1d\"\n"
    ))?;

    let none = json!({});
    let mut records = vec![
        // Two days of bob, alice and carol from home (New York area).
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "bob",
            "71.253.251.71",
            none.clone(),
        ),
        record(
            -2 * 1440,
            "ListBuckets",
            "s3.amazonaws.com",
            "carol",
            "71.253.251.72",
            none.clone(),
        ),
        record(
            -2 * 1440,
            "ListUsers",
            "iam.amazonaws.com",
            "alice",
            "71.253.251.73",
            none.clone(),
        ),
        record(
            -5,
            "ListBuckets",
            "s3.amazonaws.com",
            "bob",
            "71.253.251.71",
            none.clone(),
        ),
        // alice deactivates bob's key...
        record(
            0,
            "UpdateAccessKey",
            "iam.amazonaws.com",
            "alice",
            "71.253.251.73",
            json!({"userName": "bob", "accessKeyId": "AKIABOB", "status": "Inactive"}),
        ),
    ];
    // ...and ten minutes later bob's key is used from Europe.
    records.push(record(
        10,
        "ListBuckets",
        "s3.amazonaws.com",
        "bob",
        "92.55.146.245",
        none.clone(),
    ));
    // carol through a Tor exit.
    records.push(record(
        20,
        "DescribeInstances",
        "ec2.amazonaws.com",
        "carol",
        "185.220.101.7",
        none.clone(),
    ));
    // dave from an address on a threat-intelligence list.
    records.push(record(
        25,
        "GetCallerIdentity",
        "sts.amazonaws.com",
        "dave",
        "45.155.205.233",
        none,
    ));
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let want: Vec<&str> = if geo.is_empty() {
        vec!["terminated-user", "anonymous-ip", "suspicious-ip"]
    } else {
        vec![
            "terminated-user",
            "anonymous-ip",
            "suspicious-ip",
            "impossible-travel",
        ]
    };
    let alerts = alerts_until(&run, detect, &want, Duration::from_secs(3))?;
    let find = |policy: &str| alerts.iter().find(|a| a.policy_id == policy);
    let terminated = find("terminated-user").context("terminated-user")?;
    assert_eq!(terminated.entity.id, "arn:aws:iam::123456789012:user/bob");
    assert!(
        terminated.evidence.summary.contains("AKIABOB"),
        "{}",
        terminated.evidence.summary
    );
    let tor = find("anonymous-ip").context("anonymous-ip")?;
    assert_eq!(tor.entity.id, "arn:aws:iam::123456789012:user/carol");
    let listed = find("suspicious-ip").context("suspicious-ip")?;
    assert_eq!(listed.entity.id, "arn:aws:iam::123456789012:user/dave");
    assert_eq!(listed.severity, trailguard_common::contract::Severity::High);
    if !geo.is_empty() {
        let travel = find("impossible-travel").context("impossible-travel")?;
        assert_eq!(travel.entity.id, "arn:aws:iam::123456789012:user/bob");
        assert_eq!(travel.evidence.activity_ids.len(), 2);
    }
    // Every alert again as an OCSF Detection Finding.
    let findings = read_topic(
        &ocsf_topic,
        Duration::from_secs(30),
        Duration::from_secs(1),
        |r| r.len() >= alerts.len(),
    )?;
    for f in &findings {
        let f: Value = serde_json::from_slice(&f.value)?;
        assert_eq!(f["class_uid"], 2004, "{f}");
        assert!(
            alerts
                .iter()
                .any(|a| f["finding_info"]["uid"] == a.id.as_str()),
            "{f}"
        );
    }
    // Nobody else is anomalous.
    assert!(
        alerts.iter().all(|a| a.entity.id.ends_with("/bob")
            || a.entity.id.ends_with("/carol")
            || a.entity.id.ends_with("/dave")
            || a.policy_id == "iam-policy-changes"),
        "{alerts:#?}"
    );
    Ok(())
}

/// A password spray: one address, one failed console sign-in (the sample's real record,
/// re-addressed and re-timed) for each of 24 users within eight minutes. The activities topic
/// is keyed by actor, so its three partitions each see only some of the failures; detect
/// counts them together on the sign-in failures topic, keyed by address: one high alert for
/// the address, however many partitions the users fell on, and none per user.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_spray_across_partitions_is_one_alert() -> Result<()> {
    const USERS: usize = 24;
    const SPRAYER: &str = "203.0.113.77";
    let run = Run::new("spray")?;
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(
        trailguard_tests::repo().join("deploy/demo/sample/02-signin-failures.json"),
    )?)?;
    let template = sample["Records"][0].clone();
    let start = chrono::DateTime::parse_from_rfc3339("2024-06-01T03:00:00Z")?;
    let input = std::env::temp_dir().join(format!("{}.jsonl", run.id));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for i in 0..USERS {
        let mut r = template.clone();
        r["userIdentity"]["arn"] = Value::from(format!("arn:aws:iam::123456789012:user/staff{i}"));
        r["userIdentity"]["userName"] = Value::from(format!("staff{i}"));
        r["sourceIPAddress"] = Value::from(SPRAYER);
        r["eventID"] = Value::from(format!("00000000-0000-4000-9000-{i:012}"));
        let time = start + chrono::Duration::seconds(20 * i as i64);
        r["eventTime"] = Value::from(time.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        writeln!(file, "{r}")?;
    }
    file.flush()?;
    drop(file);
    run.ingest_files(&input)?;
    let activities = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::ZERO,
        |r| r.len() >= USERS,
    )?;
    let partitions: std::collections::BTreeSet<i32> =
        activities.iter().map(|r| r.partition).collect();
    ensure!(
        partitions.len() > 1,
        "every user fell on one partition; the test would not show counting across them"
    );

    let detect = run.spawn("detect", &[])?;
    let records = read_topic(
        &run.topic("alerts"),
        Duration::from_secs(120),
        Duration::from_secs(5),
        |r| !r.is_empty(),
    )?;
    let alerts: Vec<Alert> = records
        .iter()
        .map(|r| serde_json::from_slice(&r.value))
        .collect::<Result<_, _>>()?;
    let ids: std::collections::BTreeSet<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{alerts:#?}\n{}", detect.log());
    let alert = &alerts[0];
    assert_eq!(alert.policy_id, "console-signin-failures");
    assert_eq!(
        (alert.entity.kind.as_str(), alert.entity.id.as_str()),
        ("source-ip", SPRAYER)
    );
    assert_eq!(alert.severity, trailguard_common::contract::Severity::High);
    assert!(
        alert.evidence.summary.starts_with(&format!(
            "password spray: 5 failed console sign-ins from {SPRAYER} against 5 principals"
        )),
        "{}",
        alert.evidence.summary
    );
    Ok(())
}

/// A CloudTrail record of `identity` at `minutes` from 2024-05-10 12:00 UTC.
fn by(minutes: i64, name: &str, source: &str, identity: Value, ip: &str, params: Value) -> Value {
    let mut r = trailguard_tests::api_call(minutes, name, source, "x", ip, params, 200_000);
    r["userIdentity"] = identity;
    r
}

/// An Identity Center session of `user` through permission set `set` in `account`.
fn sso(account: &str, set: &str, user: &str) -> Value {
    let role = format!("AWSReservedSSO_{set}_635426549a280cc6");
    json!({
        "type": "AssumedRole", "principalId": format!("AROAEXAMPLE{set}:{user}"), "accountId": account,
        "arn": format!("arn:aws:sts::{account}:assumed-role/{role}/{user}"),
        "accessKeyId": "ASIAEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "principalId": format!("AROAEXAMPLE{set}"), "accountId": account,
                "arn": format!("arn:aws:iam::{account}:role/aws-reserved/sso.amazonaws.com/us-east-1/{role}"),
                "userName": role},
            "webIdFederationData": {},
            "attributes": {"creationDate": "2024-05-10T08:00:00Z", "mfaAuthenticated": "false"}
        }
    })
}

/// A workload's session of `role` (an instance profile: the session is the instance id).
fn workload(role: &str, session: &str) -> Value {
    json!({
        "type": "AssumedRole", "accountId": "123456789012", "principalId": format!("AROAWORKLOAD:{session}"),
        "arn": format!("arn:aws:sts::123456789012:assumed-role/{role}/{session}"),
        "sessionContext": {"sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::123456789012:role/{role}"), "userName": role},
            "attributes": {"creationDate": "2024-05-10T08:00:00Z", "mfaAuthenticated": "false"}}
    })
}

/// The people behind role sessions, end to end through ingest and detect: an Identity Center
/// user back after six weeks through another permission set and account is one person returning
/// (`dormant-principal`); an IAM user created minutes before terminating 24 instances is judged
/// while it learns (`vm-deletion`); a console sign-in through a Tor exit, and one from a
/// hosting provider's network, are `risky-ip-signin`; a user who always signed in with MFA
/// signing in without it is `console-signin-without-mfa`.
/// Ordinary traffic beside them — workload roles with a new session every day, a person's daily
/// work — raises nothing.
#[tokio::test(flavor = "multi_thread")]
async fn people_behind_role_sessions() -> Result<()> {
    let run = Run::new("actors")?;
    let asn = trailguard_tests::asn_databases();
    ensure!(
        !asn.is_empty(),
        "no AS database: run through deploy/test.sh"
    );
    let config = run.detect_config(&format!("[geo]\nasn_databases = {asn:?}\n"))?;
    let none = json!({});
    const DAY: i64 = 1440;
    let mut records = Vec::new();
    for day in 0..10 {
        let t = -60 * DAY + day * DAY;
        // Dana works through DevAdmin in the production account for ten days...
        records.push(by(
            t,
            "ListBuckets",
            "s3.amazonaws.com",
            sso("123456789012", "DevAdmin", "dana"),
            "71.253.251.80",
            none.clone(),
        ));
        records.push(by(
            t + 5,
            "DescribeInstances",
            "ec2.amazonaws.com",
            sso("123456789012", "DevAdmin", "dana"),
            "71.253.251.80",
            none.clone(),
        ));
    }
    // Frank works every day, all along.
    for day in 0..60 {
        let t = -60 * DAY + day * DAY + 30;
        records.push(by(
            t,
            "ListBuckets",
            "s3.amazonaws.com",
            sso("123456789012", "ReadOnly", "frank"),
            "71.253.251.81",
            none.clone(),
        ));
    }
    // The backup job: a fresh instance session every day, every day writing.
    for day in 0..62 {
        let t = -61 * DAY + day * DAY;
        let session = format!("i-0{day:016x}");
        records.push(by(
            t + 90,
            "PutObject",
            "s3.amazonaws.com",
            workload("backup-job", &session),
            "10.0.0.5",
            json!({"bucketName": "backups", "key": format!("d{day}")}),
        ));
    }
    // Dana, 41 days after her last activity, through another permission set and account.
    records.push(by(
        0,
        "GetCallerIdentity",
        "sts.amazonaws.com",
        sso("210987654321", "ReadOnly", "Dana"),
        "71.253.251.80",
        none.clone(),
    ));
    // An administrator creates tmp-admin, which terminates 24 instances within 12 minutes.
    records.push(trailguard_tests::api_call(
        10,
        "CreateUser",
        "iam.amazonaws.com",
        "alice",
        "71.253.251.73",
        json!({"userName": "tmp-admin"}),
        300_000,
    ));
    for i in 0..12 {
        let ids: Vec<Value> = (0..2)
            .map(|k| json!({"instanceId": format!("i-{i:02}{k}")}))
            .collect();
        records.push(trailguard_tests::api_call(
            15 + i,
            "TerminateInstances",
            "ec2.amazonaws.com",
            "tmp-admin",
            "203.0.113.50",
            json!({"instancesSet": {"items": ids}}),
            300_000,
        ));
    }
    // Erin signs in to the console through a Tor exit.
    let mut signin = trailguard_tests::api_call(
        40,
        "ConsoleLogin",
        "signin.amazonaws.com",
        "erin",
        "185.220.101.7",
        Value::Null,
        300_000,
    );
    signin["eventType"] = "AwsConsoleSignIn".into();
    signin["responseElements"] = json!({"ConsoleLogin": "Success"});
    signin["additionalEventData"] =
        json!({"MFAUsed": "No", "LoginTo": "https://console.aws.amazon.com/"});
    records.push(signin.clone());
    // Gus signs in from a rented server: an address of DigitalOcean's network (hosting, by
    // its AS number in the AS database the setup fetched).
    let mut from_droplet = signin;
    from_droplet["eventTime"] = "2024-05-10T12:45:00Z".into();
    from_droplet["eventID"] = "00000000-0000-4000-8000-000000300045".into();
    from_droplet["sourceIPAddress"] = "159.203.10.20".into();
    from_droplet["userIdentity"]["userName"] = "gus".into();
    from_droplet["userIdentity"]["arn"] = "arn:aws:iam::123456789012:user/gus".into();
    records.push(from_droplet);
    // Pat always signs in with MFA; today, with the password alone.
    for (day, mfa) in [(-3, "Yes"), (-2, "Yes"), (-1, "Yes"), (0, "No")] {
        let mut r = trailguard_tests::api_call(
            day * DAY + 50,
            "ConsoleLogin",
            "signin.amazonaws.com",
            "pat",
            "71.253.251.82",
            Value::Null,
            400_000,
        );
        r["eventType"] = "AwsConsoleSignIn".into();
        r["responseElements"] = json!({"ConsoleLogin": "Success"});
        r["additionalEventData"] =
            json!({"MFAUsed": mfa, "LoginTo": "https://console.aws.amazon.com/"});
        records.push(r);
    }
    records.sort_by_key(|r| r["eventTime"].as_str().unwrap_or_default().to_string());
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let want = [
        "dormant-principal",
        "vm-deletion",
        "risky-ip-signin",
        "console-signin-without-mfa",
    ];
    let alerts = alerts_until(&run, detect, &want, Duration::from_secs(5))?;
    let actor = |a: &Alert| a.actor.as_ref().map(|x| x.id.clone()).unwrap_or_default();
    let find = |policy: &str| alerts.iter().find(|a| a.policy_id == policy);
    let dormant = find("dormant-principal").context("dormant-principal")?;
    assert_eq!(actor(dormant), "person:dana");
    assert!(
        dormant.evidence.summary.contains("50 days"),
        "{}",
        dormant.evidence.summary
    );
    let burst = find("vm-deletion").context("vm-deletion")?;
    assert_eq!(actor(burst), "arn:aws:iam::123456789012:user/tmp-admin");
    assert!(
        burst.evidence.summary.contains("still new"),
        "{}",
        burst.evidence.summary
    );
    let risky: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.policy_id == "risky-ip-signin")
        .collect();
    let risky_about = |who: &str| risky.iter().find(|a| actor(a).ends_with(who)).copied();
    ensure!(risky_about("/erin").is_some(), "{risky:#?}");
    let gus = risky_about("/gus").context("gus, from a hosting network")?;
    assert!(
        gus.evidence.summary.contains("hosting") && gus.evidence.summary.contains("AS14061"),
        "{}",
        gus.evidence.summary
    );
    // No anomaly about the workload or about frank, and nothing else about anyone (the
    // administrator's CreateUser may match an activity template; that is not an anomaly).
    let expected = [
        ("dormant-principal", "person:dana"),
        ("vm-deletion", "arn:aws:iam::123456789012:user/tmp-admin"),
        ("risky-ip-signin", "arn:aws:iam::123456789012:user/erin"),
        ("risky-ip-signin", "arn:aws:iam::123456789012:user/gus"),
        (
            "console-signin-without-mfa",
            "arn:aws:iam::123456789012:user/pat",
        ),
        ("anonymous-ip", "arn:aws:iam::123456789012:user/erin"),
    ];
    for a in alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Anomaly || a.policy_id == "risky-ip-signin")
    {
        assert!(
            expected.contains(&(a.policy_id.as_str(), actor(a).as_str())),
            "unexpected alert {} about {}: {}",
            a.policy_id,
            actor(a),
            a.evidence.summary
        );
    }
    Ok(())
}

/// The three burst detections end to end after a week of ordinary work, each firing for one
/// user and quiet for a colleague who keeps working as usual: `unusual-admin-activity` (80
/// administrative calls within an hour from someone who makes two an hour),
/// `storage-deletion` (six buckets deleted in minutes by someone who deletes an object a day)
/// and `vm-creation` (one `RunInstances` of 15 instances from someone who launches one a day)
/// — and, being several detections about one actor within the hour, `attack-sequence`.
#[tokio::test(flavor = "multi_thread")]
async fn bursts_after_a_week_of_ordinary_work() -> Result<()> {
    let run = Run::new("bursts")?;
    const HOUR: i64 = 60;
    let none = json!({});
    let mut records = Vec::new();
    // A distinct eventID per record: api_call makes it from minutes + base.
    let mut id = 10_000;
    let mut call = |minutes: i64, name: &str, source: &str, user: &str, params: Value| {
        id += 1;
        trailguard_tests::api_call(
            minutes,
            name,
            source,
            user,
            "71.253.251.90",
            params,
            id * 100_000,
        )
    };
    // Eight days of ordinary work for both: two administrative calls an hour in working hours,
    // an object deleted and an instance launched a day.
    for user in ["grace", "heidi"] {
        for day in 0..8 {
            let start = (day - 8) * 24 * HOUR;
            for hour in 8..18 {
                let t = start + hour * HOUR;
                records.push(call(
                    t + 5,
                    "CreateTags",
                    "ec2.amazonaws.com",
                    user,
                    json!({"resourcesSet": {"items": [{"resourceId": "i-1"}]}}),
                ));
                records.push(call(
                    t + 35,
                    "PutBucketTagging",
                    "s3.amazonaws.com",
                    user,
                    json!({"bucketName": "work"}),
                ));
            }
            records.push(call(
                start + 12 * HOUR,
                "DeleteObject",
                "s3.amazonaws.com",
                user,
                json!({"bucketName": "work", "key": format!("tmp/{day}")}),
            ));
            records.push(call(start + 13 * HOUR, "RunInstances", "ec2.amazonaws.com", user,
                json!({"instancesSet": {"items": [{"imageId": "ami-1", "minCount": 1, "maxCount": 1}]}})));
            records.push(call(
                start + 14 * HOUR,
                "ListBuckets",
                "s3.amazonaws.com",
                user,
                none.clone(),
            ));
        }
    }
    // Today heidi works as usual; grace goes wild between 10:00 and 11:00.
    for hour in 8..18 {
        records.push(call(
            hour * HOUR + 5,
            "CreateTags",
            "ec2.amazonaws.com",
            "heidi",
            json!({"resourcesSet": {"items": [{"resourceId": "i-1"}]}}),
        ));
    }
    for i in 0..80 {
        records.push(call(10 * HOUR + i / 2, "AttachUserPolicy", "iam.amazonaws.com", "grace",
            json!({"userName": format!("svc-{i}"), "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"})));
    }
    for b in 0..6 {
        records.push(call(
            10 * HOUR + 45 + b,
            "DeleteBucket",
            "s3.amazonaws.com",
            "grace",
            json!({"bucketName": format!("archive-{b}")}),
        ));
    }
    let items: Vec<Value> = (0..15)
        .map(|i| json!({"instanceId": format!("i-0new{i:02}")}))
        .collect();
    let mut launch = call(
        10 * HOUR + 55,
        "RunInstances",
        "ec2.amazonaws.com",
        "grace",
        json!({"instancesSet": {"items": [{"imageId": "ami-1", "minCount": 15, "maxCount": 15}]}}),
    );
    launch["responseElements"] = json!({"instancesSet": {"items": items}});
    records.push(launch);
    records.sort_by_key(|r| r["eventTime"].as_str().unwrap_or_default().to_string());
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &[])?;
    // Together they are one actor's attack within the hour, too.
    let want = [
        "unusual-admin-activity",
        "storage-deletion",
        "vm-creation",
        "attack-sequence",
    ];
    let alerts = alerts_until(&run, detect, &want, Duration::from_secs(5))?;
    let grace = "arn:aws:iam::123456789012:user/grace";
    for policy in want {
        let alert = alerts
            .iter()
            .find(|a| a.policy_id == policy)
            .with_context(|| policy.to_string())?;
        assert_eq!(
            alert.entity.id, grace,
            "{policy}: {}",
            alert.evidence.summary
        );
    }
    // Heidi's ordinary week and day raise no anomaly, and grace's ordinary week none either.
    for a in alerts.iter().filter(|a| a.kind == AlertKind::Anomaly) {
        // Grace's wild hour is also calls she never made (unusual API behaviour).
        let hers = want.contains(&a.policy_id.as_str()) || a.policy_id == "unusual-api-behaviour";
        assert!(
            hers && a.entity.id == grace,
            "unexpected anomaly {}: {}",
            a.policy_id,
            a.evidence.summary
        );
    }
    Ok(())
}

/// A bucket opened to another account (`s3-external-grantee`), end to end: the alert names the
/// account the policy added, and `remove_collaborator` is asked for that grantee — not for the
/// caller who made the change. The same change naming the bucket's own account, a trusted
/// account, or anyone (`*`, the public-bucket policy's) raises no `s3-external-grantee`.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_shared_with_another_account() -> Result<()> {
    let run = Run::new("shared")?;
    let config = run.detect_config(
        "[policies.s3_external_grantee]\ntrusted_accounts = [\"222233334444\"]\nactions = [\"notify\", \"remove_collaborator\"]\n",
    )?;
    let config = config.to_str().context("config path")?;
    let put = |minutes: i64, bucket: &str, principal: Value| {
        let document = json!({"Version": "2012-10-17", "Statement": [{"Sid": "share",
            "Effect": "Allow", "Principal": {"AWS": principal},
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")]}]});
        record(
            minutes,
            "PutBucketPolicy",
            "s3.amazonaws.com",
            "mallory",
            "203.0.113.9",
            json!({"bucketName": bucket, "bucketPolicy": document, "policy": [""], "Host": format!("{bucket}.s3.amazonaws.com")}),
        )
    };
    let records = [
        put(
            0,
            "customer-exports",
            json!("arn:aws:iam::999988887777:root"),
        ),
        put(
            1,
            "app-logs",
            json!("arn:aws:iam::123456789012:role/log-reader"),
        ),
        put(2, "partner-drop", json!("222233334444")),
        put(3, "open-site", json!("*")),
    ];
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config])?;
    let alerts = alerts_until(
        &run,
        detect,
        &["s3-external-grantee", "s3-bucket-public"],
        Duration::from_secs(5),
    )?;
    let shared: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.policy_id == "s3-external-grantee")
        .collect();
    ensure!(
        shared.len() == 1,
        "one shared bucket: {:#?}",
        shared
            .iter()
            .map(|a| &a.evidence.summary)
            .collect::<Vec<_>>()
    );
    let alert = shared[0];
    ensure!(alert.entity.id == "customer-exports", "{}", alert.entity.id);
    ensure!(
        alert.evidence.summary.contains("999988887777"),
        "{}",
        alert.evidence.summary
    );
    let removal = alert
        .actions
        .iter()
        .find(|r| r.kind == trailguard_common::contract::ActionKind::RemoveCollaborator)
        .context("remove_collaborator requested")?;
    ensure!(
        removal.target.grantee.as_deref() == Some("arn:aws:iam::999988887777:root")
            && removal.target.id == "customer-exports"
            && removal.target.account_id.as_deref() == Some("123456789012"),
        "{:?}",
        removal.target
    );
    Ok(())
}

/// Failed sign-ins as an anomaly (`failed-logins`), end to end: after eight days in which
/// both sign in every morning and one mistypes her password every other day, twelve failures
/// in twenty minutes for ivan alert about ivan; judy's usual mistakes raise no anomaly.
#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_against_the_actors_own_rate() -> Result<()> {
    let run = Run::new("failed-logins")?;
    let mut n = 0;
    let mut signin = |minutes: i64, user: &str, failed: bool| {
        n += 1;
        let mut r = trailguard_tests::api_call(
            minutes,
            "ConsoleLogin",
            "signin.amazonaws.com",
            user,
            "71.253.251.70",
            Value::Null,
            n * 1_000_000,
        );
        r["eventType"] = json!("AwsConsoleSignIn");
        r["readOnly"] = json!(false);
        r["responseElements"] = json!({"ConsoleLogin": if failed { "Failure" } else { "Success" }});
        if failed {
            r["errorMessage"] = json!("Failed authentication");
        }
        r
    };
    const DAY: i64 = 1440;
    let mut records = Vec::new();
    for day in -8..0 {
        for (i, user) in ["ivan", "judy"].into_iter().enumerate() {
            let t = day * DAY + 8 * 60 + i as i64 * 7;
            if user == "judy" && day % 2 == 0 {
                records.push(signin(t - 1, user, true));
            }
            records.push(signin(t, user, false));
        }
    }
    for i in 0..12 {
        records.push(signin(9 * 60 + i * 2, "ivan", true));
    }
    records.push(signin(9 * 60 + 1, "judy", true));
    records.push(signin(9 * 60 + 2, "judy", false));
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &[])?;
    let alerts = alerts_until(&run, detect, &["failed-logins"], Duration::from_secs(5))?;
    let anomalies: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Anomaly)
        .collect();
    ensure!(
        anomalies.len() == 1
            && anomalies[0].policy_id == "failed-logins"
            && anomalies[0].entity.id == "arn:aws:iam::123456789012:user/ivan",
        "{:#?}",
        anomalies
            .iter()
            .map(|a| (&a.policy_id, &a.evidence.summary))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Peers while learning, end to end: twelve people who tag a few resources twice a day through
/// the `Ops` permission set for three weeks, then nina, new today through the same permission
/// set, tags sixty in half an hour (peer groups are kept per partition: a team this size has
/// members on every one). Below the organization's threshold for someone new (the
/// floor × 2), far above her team's hours: `unusual-admin-activity` about her, saying it
/// judged her against the role her sessions come from. Her colleagues raise no anomaly.
#[tokio::test(flavor = "multi_thread")]
async fn a_newcomer_is_judged_against_her_team() -> Result<()> {
    let run = Run::new("peers")?;
    const DAY: i64 = 1440;
    let mut records = Vec::new();
    let tags = |i: i64| json!({"resourcesSet": {"items": [{"resourceId": format!("i-{i}")}]}});
    for day in -21..0 {
        let team = [
            "omar", "pia", "quinn", "rosa", "sam", "tara", "uma", "vic", "wes", "xena", "yara",
            "zed",
        ];
        for (p, person) in team.into_iter().enumerate() {
            for hour in [9, 15] {
                for k in 0..2 {
                    let t = day * DAY + hour * 60 + p as i64 * 5 + k;
                    records.push(by(
                        t,
                        "CreateTags",
                        "ec2.amazonaws.com",
                        sso("123456789012", "Ops", person),
                        "71.253.251.80",
                        tags(k),
                    ));
                }
            }
        }
    }
    for i in 0..60 {
        records.push(by(
            10 * 60 + i / 2,
            "CreateTags",
            "ec2.amazonaws.com",
            sso("123456789012", "Ops", "nina"),
            "71.253.251.80",
            tags(i),
        ));
    }
    // Distinct event ids: `api_call` makes them from the minute and a base.
    for (i, r) in records.iter_mut().enumerate() {
        r["eventID"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
    }
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &[])?;
    let alerts = alerts_until(
        &run,
        detect,
        &["unusual-admin-activity"],
        Duration::from_secs(5),
    )?;
    let anomalies: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Anomaly)
        .collect();
    ensure!(
        anomalies.len() == 1
            && anomalies[0].policy_id == "unusual-admin-activity"
            && anomalies[0].entity.id.ends_with("/nina")
            && anomalies[0].evidence.summary.contains("its peers in role:"),
        "{:#?}",
        anomalies
            .iter()
            .map(|a| (&a.policy_id, &a.entity.id, &a.evidence.summary))
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Whether a country is rare is the organization's answer, not one partition's: 25 colleagues
/// act from New York (spread over the activities topic's partitions), and the next day two
/// newcomers start work. The one who then acts from Europe — where no one in the organization
/// acts — alerts; the one who stays in New York does not. Judged per partition, as before, the
/// newcomer's partition would know too few actors to call anything rare.
#[tokio::test(flavor = "multi_thread")]
async fn a_country_no_one_in_the_organization_acts_from() -> Result<()> {
    let run = Run::new("org-country")?;
    let geo = trailguard_tests::geo_databases();
    ensure!(
        !geo.is_empty(),
        "no geolocation database: run through deploy/test.sh"
    );
    let config = run.detect_config(&format!("[geo]\ndatabases = {geo:?}\n"))?;
    let none = json!({});
    let mut records: Vec<Value> = (0..25)
        .map(|n| {
            record(
                -2 * 1440 + n,
                "ListBuckets",
                "s3.amazonaws.com",
                &format!("colleague{n}"),
                &format!("71.253.251.{}", 10 + n),
                none.clone(),
            )
        })
        .collect();
    for (minute, user, ip) in [
        (-1440, "nadia", "71.253.251.200"),
        (-1435, "omar", "71.253.251.201"),
        (-1410, "nadia", "92.55.146.245"),
        (-1400, "omar", "71.253.251.201"),
        (0, "colleague0", "71.253.251.10"),
    ] {
        records.push(record(
            minute,
            "ListBuckets",
            "s3.amazonaws.com",
            user,
            ip,
            none.clone(),
        ));
    }
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let alerts = alerts_until(
        &run,
        detect,
        &["infrequent-country"],
        Duration::from_secs(5),
    )?;
    let countries: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.policy_id == "infrequent-country")
        .collect();
    assert_eq!(countries.len(), 1, "{alerts:#?}");
    assert_eq!(
        countries[0].entity.id,
        "arn:aws:iam::123456789012:user/nadia"
    );
    assert!(
        countries[0]
            .evidence
            .summary
            .contains("no one in the organization"),
        "{}",
        countries[0].evidence.summary
    );
    Ok(())
}

/// What needs no baseline, end to end: after a week of ordinary work by people and a CI role,
/// a stolen SSO session shares an EBS snapshot with an outside account, makes an AMI public,
/// suspends GuardDuty, stops the Config recorder, creates an access key for another user and
/// lets an outside account assume a role;
/// the root user lists the account's users; a web server's instance credentials are used from
/// a rented server. Each raises its policy, about the actor who acted; the week — the instance
/// calling from AWS's network and through a VPC endpoint included — raises none of them.
#[tokio::test(flavor = "multi_thread")]
async fn attacks_that_need_no_baseline() -> Result<()> {
    let run = Run::new("exposure")?;
    let asn = trailguard_tests::asn_databases();
    ensure!(
        !asn.is_empty(),
        "no AS database: run through deploy/test.sh"
    );
    // Every match published (no folding of one actor's repeats), to count them.
    let config = run.detect_config(&format!(
        "[policies.fold]\nperiod = \"0s\"\n[geo]\nasn_databases = {asn:?}\n"
    ))?;
    const DAY: i64 = 1440;
    let mut records = Vec::new();
    for day in -7..0 {
        for (i, person) in ["ana", "ben", "cho"].iter().enumerate() {
            let t = day * DAY + 60 + i as i64;
            records.push(by(
                t,
                "DescribeSnapshots",
                "ec2.amazonaws.com",
                sso("123456789012", "DevAdmin", person),
                "71.253.251.80",
                json!({"ownersSet": {"items": [{"owner": "self"}]}}),
            ));
            // Sharing within the organization's own account is ordinary.
            records.push(by(
                t + 5,
                "ModifySnapshotAttribute",
                "ec2.amazonaws.com",
                sso("123456789012", "DevAdmin", person),
                "71.253.251.80",
                json!({"snapshotId": format!("snap-{day}{i}"), "attributeType": "CREATE_VOLUME_PERMISSION",
                    "createVolumePermission": {"add": {"items": [{"userId": "123456789012"}]}}}),
            ));
        }
        // A web server's instance profile works all day: from the instance's public address
        // (AWS's network) and through a VPC endpoint (a private address).
        for (k, ip) in ["3.80.0.10", "10.0.12.7"].iter().enumerate() {
            records.push(by(
                day * DAY + 200 + k as i64,
                "GetObject",
                "s3.amazonaws.com",
                workload("web", "i-0a1b2c3d4e5f60718"),
                ip,
                json!({"bucketName": "assets", "key": "index.html"}),
            ));
        }
        // CI rotates its own key and updates its detector settings every day.
        records.push(by(
            day * DAY + 120,
            "UpdateDetector",
            "guardduty.amazonaws.com",
            workload("ci-deployer", "gha-run"),
            "10.0.0.9",
            json!({"detectorId": "d-1", "enable": true, "findingPublishingFrequency": "FIFTEEN_MINUTES"}),
        ));
    }
    let mallory = || sso("123456789012", "DevAdmin", "ana");
    let attack = [
        (
            "ModifySnapshotAttribute",
            "ec2.amazonaws.com",
            json!({"snapshotId": "snap-0prod", "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"userId": "999988887777"}]}}}),
        ),
        (
            "ModifyImageAttribute",
            "ec2.amazonaws.com",
            json!({"imageId": "ami-0prod", "attributeType": "launchPermission",
                "launchPermission": {"add": {"items": [{"group": "all"}]}}}),
        ),
        (
            "UpdateDetector",
            "guardduty.amazonaws.com",
            json!({"detectorId": "d-1", "enable": false}),
        ),
        (
            "StopConfigurationRecorder",
            "config.amazonaws.com",
            json!({"configurationRecorderName": "default"}),
        ),
        (
            "CreateAccessKey",
            "iam.amazonaws.com",
            json!({"userName": "backup-operator"}),
        ),
        (
            "UpdateAssumeRolePolicy",
            "iam.amazonaws.com",
            json!({"roleName": "backup-operator", "policyDocument": json!({"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"AWS": "arn:aws:iam::999988887777:root"}}]}).to_string()}),
        ),
    ];
    for (i, (name, source, params)) in attack.into_iter().enumerate() {
        records.push(by(
            10 + i as i64,
            name,
            source,
            mallory(),
            "203.0.113.66",
            params,
        ));
    }
    records.push(by(
        30,
        "ListUsers",
        "iam.amazonaws.com",
        json!({"type": "Root", "principalId": "123456789012", "accountId": "123456789012",
            "arn": "arn:aws:iam::123456789012:root", "accessKeyId": "ASIAROOTEXAMPLE"}),
        "203.0.113.67",
        json!({}),
    ));
    // The web server's credentials, taken through its metadata service, used from a rented
    // server (an address of DigitalOcean's network).
    records.push(by(
        40,
        "ListBuckets",
        "s3.amazonaws.com",
        workload("web", "i-0a1b2c3d4e5f60718"),
        "159.203.10.20",
        json!({}),
    ));
    records.sort_by_key(|r| r["eventTime"].as_str().unwrap_or_default().to_string());
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let want = [
        "resource-shared-out",
        "defense-evasion",
        "credentials-for-another-user",
        "root-activity",
        "instance-credentials-outside-aws",
        "access-granted-outside",
    ];
    let alerts = alerts_until(&run, detect, &want, Duration::from_secs(5))?;
    let of =
        |policy: &str| -> Vec<&Alert> { alerts.iter().filter(|a| a.policy_id == policy).collect() };
    let actor = |a: &Alert| a.actor.as_ref().map(|x| x.id.clone()).unwrap_or_default();
    ensure!(of("resource-shared-out").len() == 2, "{alerts:#?}");
    ensure!(of("defense-evasion").len() == 2, "{alerts:#?}");
    for a in of("resource-shared-out")
        .into_iter()
        .chain(of("defense-evasion"))
        .chain(of("credentials-for-another-user"))
    {
        ensure!(
            actor(a) == "person:ana",
            "{} about {}",
            a.policy_id,
            actor(a)
        );
    }
    ensure!(
        of("credentials-for-another-user")[0]
            .evidence
            .summary
            .contains("backup-operator"),
        "{:?}",
        of("credentials-for-another-user")
    );
    ensure!(of("root-activity").len() == 1, "{alerts:#?}");
    let backdoor = of("access-granted-outside");
    ensure!(backdoor.len() == 1, "{alerts:#?}");
    ensure!(actor(backdoor[0]) == "person:ana", "{:?}", backdoor[0]);
    ensure!(
        backdoor[0].evidence.summary.contains("999988887777"),
        "{}",
        backdoor[0].evidence.summary
    );
    let stolen = of("instance-credentials-outside-aws");
    ensure!(stolen.len() == 1, "{alerts:#?}");
    ensure!(
        stolen[0].evidence.summary.contains("i-0a1b2c3d4e5f60718")
            && stolen[0].evidence.summary.contains("AS14061"),
        "{}",
        stolen[0].evidence.summary
    );
    // The ordinary week raised none of them (every one above is from day 0).
    let day0 = chrono::DateTime::parse_from_rfc3339("2024-05-10T00:00:00Z")?;
    for a in alerts
        .iter()
        .filter(|a| want.contains(&a.policy_id.as_str()))
    {
        ensure!(a.time >= day0, "from the ordinary week: {a:#?}");
    }
    Ok(())
}

/// Unusual API behaviour end to end, and what a week of ordinary work raises: eighteen people
/// through Identity Center (developers at the console all day, administrators, auditors
/// sweeping wide every hour), a CI role deploying with a fresh session per run, AWS Config's
/// recorder and a backup job, for seven days: 10,290 records. Then a developer's
/// session is stolen: from a new network with another tool, the attacker lists and reads
/// secrets, makes an access key for another user, attaches a policy and sends a command to an
/// instance. Every tactic alerts about the developer; the ordinary week raises no alert at all.
#[tokio::test(flavor = "multi_thread")]
async fn unusual_api_behaviour_after_an_ordinary_week() -> Result<()> {
    let run = Run::new("behaviour")?;
    let config = run.detect_config("")?;
    const DAY: i64 = 1440;
    let mut records = Vec::new();
    let mut next_id = 0u64;
    let mut push = |minutes: i64,
                    name: &str,
                    source: &str,
                    identity: Value,
                    ip: &str,
                    ua: &str,
                    params: Value| {
        let mut r = by(minutes, name, source, identity, ip, params);
        next_id += 1;
        r["eventID"] = format!("00000000-0000-4000-a000-{next_id:012}").into();
        r["userAgent"] = ua.into();
        records.push(r);
    };
    const CONSOLE: &str = "AWS Internal";
    const CLI: &str = "aws-cli/2.15.0 Python/3.11.6 Linux/6.1";
    let devs = [
        "ana", "ben", "cho", "dev", "eli", "fay", "kim", "lou", "max", "ned", "oli", "pam",
        "quinn", "rae",
    ];
    let admins = ["gil", "hal"];
    let auditors = ["ida", "jon", "kai", "lee", "mia", "noa"];
    let none = json!({});
    for day in -7..0 {
        // 09:00 that day (minutes count from 12:00).
        let base = day * DAY - 3 * 60;
        for (i, person) in devs.iter().enumerate() {
            let who = || sso("123456789012", "Developer", person);
            let ip = format!("71.253.{}.{}", 10 + i, 20 + day.unsigned_abs());
            let t = base + i as i64 * 7;
            // The console, every hour of the working day.
            for hour in 1..10 {
                for (k, name) in [
                    "DescribeInstances",
                    "DescribeVolumes",
                    "DescribeSecurityGroups",
                ]
                .into_iter()
                .enumerate()
                {
                    push(
                        t + hour * 60 + k as i64,
                        name,
                        "ec2.amazonaws.com",
                        who(),
                        &ip,
                        CONSOLE,
                        none.clone(),
                    );
                }
                push(
                    t + hour * 60 + 3,
                    "GetMetricData",
                    "monitoring.amazonaws.com",
                    who(),
                    &ip,
                    CONSOLE,
                    none.clone(),
                );
                push(
                    t + hour * 60 + 4,
                    "FilterLogEvents",
                    "logs.amazonaws.com",
                    who(),
                    &ip,
                    CLI,
                    json!({"logGroupName": "/aws/lambda/api"}),
                );
            }
            for (k, (name, source)) in [
                ("DescribeInstances", "ec2.amazonaws.com"),
                ("DescribeSecurityGroups", "ec2.amazonaws.com"),
                ("ListBuckets", "s3.amazonaws.com"),
                ("ListFunctions20150331", "lambda.amazonaws.com"),
                ("DescribeLogGroups", "logs.amazonaws.com"),
            ]
            .into_iter()
            .enumerate()
            {
                push(
                    t + k as i64,
                    name,
                    source,
                    who(),
                    &ip,
                    CONSOLE,
                    none.clone(),
                );
            }
            push(
                t + 30,
                "CreateTags",
                "ec2.amazonaws.com",
                who(),
                &ip,
                CLI,
                json!({"resourcesSet": {"items": [{"resourceId": format!("i-0{i}")}]}}),
            );
            push(
                t + 31,
                "GetParameter",
                "ssm.amazonaws.com",
                who(),
                &ip,
                CLI,
                json!({"name": "/app/region"}),
            );
            // Half the developers read the app's secret every day.
            if i % 2 == 0 {
                push(
                    t + 32,
                    "GetSecretValue",
                    "secretsmanager.amazonaws.com",
                    who(),
                    &ip,
                    CLI,
                    json!({"secretId": "dev/app/db"}),
                );
            }
        }
        for (i, person) in admins.iter().enumerate() {
            let who = || sso("123456789012", "Admin", person);
            let ip = format!("71.253.30.{}", 40 + i);
            let t = base + 120 + i as i64 * 11;
            push(
                t,
                "ListRoles",
                "iam.amazonaws.com",
                who(),
                &ip,
                CONSOLE,
                none.clone(),
            );
            push(
                t + 1,
                "GetRole",
                "iam.amazonaws.com",
                who(),
                &ip,
                CONSOLE,
                json!({"roleName": "app"}),
            );
            push(
                t + 2,
                "CreateRole",
                "iam.amazonaws.com",
                who(),
                &ip,
                CLI,
                json!({"roleName": format!("svc-{day}-{i}")}),
            );
            push(
                t + 3,
                "AttachRolePolicy",
                "iam.amazonaws.com",
                who(),
                &ip,
                CLI,
                json!({"roleName": format!("svc-{day}-{i}"), "policyArn": "arn:aws:iam::123456789012:policy/app-read"}),
            );
        }
        for (i, person) in auditors.iter().enumerate() {
            let who = || sso("123456789012", "SecurityAudit", person);
            let ip = format!("71.253.40.{}", 50 + i);
            let t = base + 200 + i as i64 * 13;
            // A sweep every hour of the working day.
            for hour in 0..8 {
                for (k, name) in [
                    "DescribeInstances",
                    "DescribeVpcs",
                    "DescribeSubnets",
                    "DescribeSecurityGroups",
                    "DescribeVolumes",
                    "DescribeSnapshots",
                    "DescribeImages",
                    "DescribeNetworkAcls",
                    "DescribeRouteTables",
                    "DescribeFlowLogs",
                    "DescribeAddresses",
                    "DescribeKeyPairs",
                ]
                .into_iter()
                .enumerate()
                {
                    push(
                        t + hour * 60 + k as i64 / 4,
                        name,
                        "ec2.amazonaws.com",
                        who(),
                        &ip,
                        CONSOLE,
                        none.clone(),
                    );
                }
            }
        }
        // CI: three deployments a day, each a fresh web-identity session of the deploy role.
        for run_no in 0..3 {
            let session = format!("gha-{day}-{run_no}");
            let t = base + 300 + run_no * 90;
            push(
                t,
                "UpdateFunctionCode20150331v2",
                "lambda.amazonaws.com",
                workload("ci-deployer", &session),
                "20.42.0.10",
                "aws-sdk-js/3.500.0",
                json!({"functionName": "api"}),
            );
            push(
                t + 1,
                "DescribeStacks",
                "cloudformation.amazonaws.com",
                workload("ci-deployer", &session),
                "20.42.0.10",
                "aws-sdk-js/3.500.0",
                none.clone(),
            );
        }
        // AWS Config's recorder role describes resources around the clock.
        for hour in 0..24 {
            for (k, name) in [
                "DescribeInstances",
                "DescribeVolumes",
                "DescribeSecurityGroups",
                "DescribeVpcs",
                "DescribeSubnets",
                "DescribeNetworkInterfaces",
            ]
            .into_iter()
            .enumerate()
            {
                push(
                    day * DAY - 12 * 60 + hour * 60 + 30 + k as i64,
                    name,
                    "ec2.amazonaws.com",
                    workload("AWSServiceRoleForConfig", "AWSConfig-Describe"),
                    "10.0.0.2",
                    "config.amazonaws.com",
                    none.clone(),
                );
            }
        }
        // The backup job, every night.
        push(
            day * DAY + 120,
            "CreateSnapshot",
            "ec2.amazonaws.com",
            workload("backup-job", &format!("i-0{}", day.unsigned_abs())),
            "10.0.0.5",
            "aws-sdk-go/1.50.0",
            json!({"volumeId": "vol-1"}),
        );
    }
    // Day 0: ben's session, from a new network with another tool.
    let thief = || sso("123456789012", "Developer", "ben");
    let (ip, ua) = ("203.0.113.50", "Boto3/1.34.0 md/Botocore#1.34.0");
    let attack: [(&str, &str, Value); 6] = [
        ("ListSecrets", "secretsmanager.amazonaws.com", json!({})),
        (
            "GetSecretValue",
            "secretsmanager.amazonaws.com",
            json!({"secretId": "prod/payments/db"}),
        ),
        (
            "CreateAccessKey",
            "iam.amazonaws.com",
            json!({"userName": "deploy-bot"}),
        ),
        (
            "AttachUserPolicy",
            "iam.amazonaws.com",
            json!({"userName": "deploy-bot", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
        ),
        (
            "SendCommand",
            "ssm.amazonaws.com",
            json!({"documentName": "AWS-RunShellScript", "instanceIds": ["i-00"]}),
        ),
        (
            "GetPasswordData",
            "ec2.amazonaws.com",
            json!({"instanceId": "i-01"}),
        ),
    ];
    for (k, (name, source, params)) in attack.into_iter().enumerate() {
        push(600 + k as i64, name, source, thief(), ip, ua, params);
    }
    records.sort_by_key(|r| r["eventTime"].as_str().unwrap_or_default().to_string());
    let ordinary = records
        .iter()
        .filter(|r| r["eventTime"].as_str() < Some("2024-05-10"))
        .count();
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config.to_str().context("path")?])?;
    let alerts = alerts_until(
        &run,
        detect,
        &["unusual-api-behaviour"],
        Duration::from_secs(5),
    )?;
    let actor = |a: &Alert| a.actor.as_ref().map(|x| x.id.clone()).unwrap_or_default();
    let day0 = chrono::DateTime::parse_from_rfc3339("2024-05-10T00:00:00Z")?;
    // The activity templates report every IAM policy change by design (the administrators'
    // daily AttachRolePolicy); every other alert counts.
    let template_ids = [
        "ec2-instance-changes",
        "iam-policy-changes",
        "network-acl-changes",
        "network-gateway-changes",
        "s3-bucket-activity",
        "security-group-changes",
        "vpn-vpc-changes",
    ];
    let week: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.time < day0 && !template_ids.contains(&a.policy_id.as_str()))
        .collect();
    ensure!(
        week.is_empty(),
        "{} alerts on {ordinary} ordinary records: {:#?}",
        week.len(),
        week.iter()
            .map(|a| format!("{} {}: {}", a.policy_id, actor(a), a.evidence.summary))
            .collect::<Vec<_>>()
    );
    let unusual: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.policy_id == "unusual-api-behaviour")
        .collect();
    ensure!(
        unusual.iter().all(|a| actor(a) == "person:ben"),
        "{unusual:#?}"
    );
    let tactics: std::collections::BTreeSet<&str> = unusual
        .iter()
        .flat_map(|a| a.mitre.iter().map(|m| m.tactic.as_str()))
        .collect();
    for tactic in [
        "Credential Access",
        "Persistence",
        "Privilege Escalation",
        "Lateral Movement",
    ] {
        ensure!(tactics.contains(tactic), "{tactic} missing: {unusual:#?}");
    }
    let template_alerts = alerts
        .iter()
        .filter(|a| a.time < day0 && template_ids.contains(&a.policy_id.as_str()))
        .count();
    // The figure the docs and the note quote.
    ensure!(ordinary == 10_290, "{ordinary} ordinary records");
    eprintln!(
        "ordinary records: {ordinary}; alerts on them: {} (and {template_alerts} activity-template alerts)",
        week.len()
    );
    Ok(())
}

/// SigmaHQ's AWS CloudTrail rules (the shared copy, unmodified) on the live stream: detect
/// loads all 57 from their directory and raises, as policies like the others, a trail stopped,
/// bucket versioning suspended (found inside the request's parameters), and a session token
/// for an IAM user — with a per-rule setting raising one's severity and an allowed principal
/// silencing another; an ordinary call raises nothing. A rule detect cannot honour stops it at
/// start-up, naming the file.
#[tokio::test(flavor = "multi_thread")]
async fn sigma_rules_on_the_live_stream() -> Result<()> {
    let run = Run::new("sigma")?;
    let rules = trailguard_tests::shared_data()?.join("../sigma/rules/cloud/aws/cloudtrail");
    let config = run.detect_config(&format!(
        "[policies.sigma]\npaths = [{:?}]\n\n[policies.sigma.rules.\"a136ac98-b2bc-4189-a14d-f0d0388e57a7\"]\nseverity = \"high\"\n\n[policies.sigma.rules.\"b45ab1d2-712f-4f01-a751-df3826969807\"]\nallow_principals = [\"ci-bot\"]\n",
        rules.display().to_string()
    ))?;
    let config = config.to_str().context("config path")?;
    // The rules as detect would load them.
    let listing = run
        .command("detect", &["--config", config, "--check-config"])?
        .output()?;
    let text = String::from_utf8_lossy(&listing.stdout);
    ensure!(
        listing.status.success()
            && text.contains("# Sigma: 57 rules and 0 correlations loaded, 0 skipped")
            && text.contains("# Sigma: routed by event name into 87 engines, 5 rules evaluated for every activity"),
        "{text}\n{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let records = [
        record(
            0,
            "StopLogging",
            "cloudtrail.amazonaws.com",
            "mallory",
            "203.0.113.9",
            json!({"name": "arn:aws:cloudtrail:us-east-1:123456789012:trail/org"}),
        ),
        record(
            1,
            "PutBucketVersioning",
            "s3.amazonaws.com",
            "mallory",
            "203.0.113.9",
            json!({"bucketName": "backups", "VersioningConfiguration": {"Status": "Suspended"}, "Host": "backups.s3.amazonaws.com"}),
        ),
        record(
            2,
            "GetSessionToken",
            "sts.amazonaws.com",
            "mallory",
            "203.0.113.9",
            json!({}),
        ),
        record(
            3,
            "GetSessionToken",
            "sts.amazonaws.com",
            "ci-bot",
            "198.51.100.20",
            json!({}),
        ),
        record(
            4,
            "PutBucketVersioning",
            "s3.amazonaws.com",
            "alice",
            "198.51.100.21",
            json!({"bucketName": "site", "VersioningConfiguration": {"Status": "Enabled"}, "Host": "site.s3.amazonaws.com"}),
        ),
    ];
    run.ingest_records(&records)?;
    let detect = run.spawn("detect", &["--config", config])?;
    let trail = "sigma-4db60cc0-36fb-42b7-9b58-a5b53019fb74";
    let versioning = "sigma-a136ac98-b2bc-4189-a14d-f0d0388e57a7";
    let token = "sigma-b45ab1d2-712f-4f01-a751-df3826969807";
    let alerts = alerts_until(
        &run,
        detect,
        &[trail, versioning, token],
        Duration::from_secs(5),
    )?;
    let of = |id: &str| -> Vec<&Alert> { alerts.iter().filter(|a| a.policy_id == id).collect() };
    let summaries = || {
        alerts
            .iter()
            .map(|a| format!("{} {}", a.policy_id, a.evidence.summary))
            .collect::<Vec<_>>()
    };
    ensure!(
        of(trail).len() == 1 && of(versioning).len() == 1 && of(token).len() == 1,
        "{:#?}",
        summaries()
    );
    let stopped = of(trail)[0];
    ensure!(
        stopped.policy_name == "AWS CloudTrail Important Change"
            && stopped.kind == AlertKind::Custom
            && stopped.severity == trailguard_common::contract::Severity::Medium
            && stopped.evidence.summary.contains("mallory"),
        "{stopped:#?}"
    );
    ensure!(
        of(versioning)[0].severity == trailguard_common::contract::Severity::High,
        "the rule's setting: {:#?}",
        of(versioning)[0]
    );
    ensure!(
        of(token)[0].evidence.summary.contains("mallory"),
        "ci-bot is allowed: {:#?}",
        summaries()
    );
    ensure!(
        alerts
            .iter()
            .filter(|a| a.policy_id.starts_with("sigma-"))
            .count()
            == 3,
        "alice's ordinary call raises no Sigma alert: {:#?}",
        summaries()
    );
    // A rule detect cannot honour: start-up stops, naming the file and the construct.
    let unsupported = std::env::temp_dir().join(&run.id).join("unsupported");
    std::fs::create_dir_all(&unsupported)?;
    std::fs::write(
        unsupported.join("tls.yml"),
        "title: old TLS\nlogsource:\n  product: aws\n  service: cloudtrail\ndetection:\n  selection:\n    tlsDetails.tlsVersion: 'TLSv1'\n  condition: selection\n",
    )?;
    let bad = run.detect_config(&format!(
        "[policies.sigma]\npaths = [{:?}]\n",
        unsupported.display().to_string()
    ))?;
    let out = run
        .command("detect", &["--config", bad.to_str().context("path")?])?
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("tls.yml")
            && stderr.contains("tlsDetails.tlsVersion"),
        "{stderr}"
    );
    Ok(())
}

/// Sigma correlations on the live stream: a password-spray-like burst of session tokens from
/// one address by several users (whose activities are on different partitions) counted as one
/// group across a restart, and an ordered pair by one user; the rules they refer to stay
/// silent (no `generate`); a backtest of the same records raises the same correlation alerts.
#[tokio::test(flavor = "multi_thread")]
async fn sigma_correlations_count_across_partitions_and_a_restart() -> Result<()> {
    let run = Run::new("sigma-corr")?;
    let sigmahq = trailguard_tests::shared_data()?.join("../sigma/rules/cloud/aws/cloudtrail");
    let ours = std::env::temp_dir().join(&run.id).join("correlations");
    std::fs::create_dir_all(&ours)?;
    // SigmaHQ's "AWS STS GetSessionToken Misuse" and "AWS CloudTrail Important Change".
    let token_rule = "b45ab1d2-712f-4f01-a751-df3826969807";
    let trail_rule = "4db60cc0-36fb-42b7-9b58-a5b53019fb74";
    std::fs::write(
        ours.join("token-spray.yml"),
        format!("title: Session tokens for many users from one address\nid: token-spray\nlevel: high\ncorrelation:\n  type: event_count\n  rules:\n    - {token_rule}\n  group-by:\n    - sourceIPAddress\n  timespan: 15m\n  condition:\n    gte: 4\n"),
    )?;
    std::fs::write(
        ours.join("token-then-trail.yml"),
        format!("title: Session token then trail change\nid: token-then-trail\nlevel: critical\ncorrelation:\n  type: temporal_ordered\n  rules:\n    - {token_rule}\n    - {trail_rule}\n  group-by:\n    - userIdentity.arn\n  timespan: 10m\n"),
    )?;
    let config = run.detect_config(&format!(
        "[policies.sigma]\npaths = [{:?}, {:?}]\n",
        sigmahq.display().to_string(),
        ours.display().to_string()
    ))?;
    let config = config.to_str().context("config path")?;
    let listing = run
        .command("detect", &["--config", config, "--check-config"])?
        .output()?;
    let text = String::from_utf8_lossy(&listing.stdout);
    ensure!(
        listing.status.success()
            && text.contains("# Sigma: 57 rules and 2 correlations loaded, 0 skipped")
            && text.contains("sigma-token-spray  high"),
        "{text}\n{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let spray_ip = "203.0.113.50";
    let token = |minute: i64, user: &str, ip: &str| {
        record(
            minute,
            "GetSessionToken",
            "sts.amazonaws.com",
            user,
            ip,
            json!({}),
        )
    };
    let first = [
        token(0, "mallory", spray_ip),
        record(
            1,
            "StopLogging",
            "cloudtrail.amazonaws.com",
            "mallory",
            spray_ip,
            json!({"name": "arn:aws:cloudtrail:us-east-1:123456789012:trail/org"}),
        ),
        token(2, "bob", spray_ip),
    ];
    let second = [
        token(3, "carol", spray_ip),
        token(4, "dave", spray_ip),
        token(5, "erin", "198.51.100.99"),
    ];
    // The spray's users are on more than one partition of the activities topic.
    let partitions: std::collections::BTreeSet<i32> = first
        .iter()
        .chain(&second)
        .filter(|r| r["eventName"] == "GetSessionToken" && r["sourceIPAddress"] == spray_ip)
        .map(|r| {
            let a = trailguard_ingest::normalize::normalize(&r.to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(trailguard_detect::backtest::partition_of(&a.actor_key(), 3))
        })
        .collect::<Result<_>>()?;
    ensure!(partitions.len() > 1, "{partitions:?}");

    let spray = "sigma-token-spray";
    let ordered = "sigma-token-then-trail";
    let trail = format!("sigma-{trail_rule}");
    // Half the spray and the ordered pair; then detect stops (and commits what is safe).
    run.ingest_records(&first)?;
    let detect = run.spawn("detect", &["--config", config])?;
    let before = alerts_until(&run, detect, &[ordered], Duration::from_secs(5))?;
    ensure!(
        !before.iter().any(|a| a.policy_id == spray),
        "two of four: {before:#?}"
    );
    // The rest after a restart: the window is rebuilt by replay and completed.
    run.ingest_records(&second)?;
    let detect = run.spawn("detect", &["--config", config])?;
    let alerts = alerts_until(&run, detect, &[spray], Duration::from_secs(5))?;
    let distinct = |id: &str| -> Vec<&Alert> {
        let mut seen = std::collections::BTreeMap::new();
        for a in alerts.iter().filter(|a| a.policy_id == id) {
            seen.insert(a.id.clone(), a);
        }
        seen.into_values().collect()
    };
    let summaries = || {
        alerts
            .iter()
            .map(|a| format!("{} {} {}", a.policy_id, a.id, a.evidence.summary))
            .collect::<Vec<_>>()
    };
    let sprays = distinct(spray);
    ensure!(sprays.len() == 1, "{:#?}", summaries());
    let s = sprays[0];
    ensure!(
        s.entity.kind == "group"
            && s.entity.id == format!("sourceIPAddress={spray_ip}")
            && s.evidence.activity_ids.len() == 4
            && s.severity == trailguard_common::contract::Severity::High
            && s.actions
                .iter()
                .all(|a| a.kind == trailguard_common::contract::ActionKind::Notify),
        "{s:#?}"
    );
    let pairs = distinct(ordered);
    ensure!(
        pairs.len() == 1,
        "once, whatever was replayed: {:#?}",
        summaries()
    );
    ensure!(
        pairs[0].entity.id.contains("mallory") && pairs[0].evidence.activity_ids.len() == 2,
        "{:#?}",
        pairs[0]
    );
    // The rules the correlations refer to do not alert on their own (no `generate`).
    ensure!(
        distinct(&trail).is_empty() && distinct(&format!("sigma-{token_rule}")).is_empty(),
        "{:#?}",
        summaries()
    );

    // A backtest of the same records: the same correlation alerts.
    let dir = std::env::temp_dir().join(&run.id).join("backtest");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("records.jsonl");
    let lines: Vec<String> = first.iter().chain(&second).map(|r| r.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let backtest = run
        .command(
            "detect",
            &[
                "--config",
                config,
                "backtest",
                "--json",
                "--files",
                file.to_str().context("path")?,
            ],
        )?
        .output()?;
    ensure!(
        backtest.status.success(),
        "backtest: {}",
        String::from_utf8_lossy(&backtest.stderr)
    );
    let report: Value = serde_json::from_slice(&backtest.stdout)?;
    let offline: std::collections::BTreeSet<String> = report["alerts"]
        .as_array()
        .context("alerts")?
        .iter()
        .filter(|a| a["policy"] == spray || a["policy"] == ordered)
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    let live: std::collections::BTreeSet<String> =
        [s.id.clone(), pairs[0].id.clone()].into_iter().collect();
    ensure!(offline == live, "backtest {offline:?}, live {live:?}");
    Ok(())
}
