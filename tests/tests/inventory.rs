//! `ingest inventory` against moto, across two accounts through assumed roles: every bucket's
//! exposure settings become a `BucketSnapshot` activity of the right account, and detect alerts
//! on the public ones (a public ACL in one account, a public policy in the other), not on the
//! private one. Each account's trails become a `TrailSnapshot`: the account whose only trails
//! are stopped is alerted on (`trail-coverage`), the one with a logging multi-region trail is
//! not.

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use trailguard_tests::{read_topic, s3, s3_in_account, Run};

const OWN: &str = "123456789012";
const OTHER: &str = "210987654321";

#[tokio::test(flavor = "multi_thread")]
async fn two_accounts_through_assumed_roles() -> Result<()> {
    let run = Run::new("inventory")?;
    let tag = &run.id[run.id.len() - 12..];
    let (private, acl_public, policy_public) = (
        format!("inv-private-{tag}"),
        format!("inv-acl-{tag}"),
        format!("inv-policy-{tag}"),
    );
    let own = s3().await?;
    own.create_bucket().bucket(&private).send().await?;
    own.create_bucket().bucket(&acl_public).send().await?;
    own.put_bucket_acl()
        .bucket(&acl_public)
        .acl(aws_sdk_s3::types::BucketCannedAcl::PublicRead)
        .send()
        .await?;
    let other = s3_in_account(OTHER).await?;
    other.create_bucket().bucket(&policy_public).send().await?;
    let policy = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*",
        "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{policy_public}/*")}]});
    other
        .put_bucket_policy()
        .bucket(&policy_public)
        .policy(policy.to_string())
        .send()
        .await?;

    // Trails: a logging multi-region trail in one account, a stopped one in the other.
    let (logging, stopped) = (format!("inv-trail-{tag}"), format!("inv-stopped-{tag}"));
    own.create_bucket().bucket(&logging).send().await?;
    other.create_bucket().bucket(&stopped).send().await?;
    let own_trails = aws_sdk_cloudtrail::Client::new(&trailguard_tests::aws_shared().await?);
    own_trails
        .create_trail()
        .name(&logging)
        .s3_bucket_name(&logging)
        .is_multi_region_trail(true)
        .include_global_service_events(true)
        .send()
        .await?;
    own_trails.start_logging().name(&logging).send().await?;
    let other_trails =
        aws_sdk_cloudtrail::Client::new(&trailguard_tests::aws_in_account(OTHER).await?);
    other_trails
        .create_trail()
        .name(&stopped)
        .s3_bucket_name(&stopped)
        .is_multi_region_trail(true)
        .send()
        .await?;

    let endpoint = trailguard_tests::aws_endpoint()?;
    let out = run
        .command(
            "ingest",
            &[
                "inventory",
                "--account",
                OWN,
                "--account",
                OTHER,
                "--role-arn-template",
                "arn:aws:iam::{account}:role/trailguard-reader",
                "--aws-endpoint",
                &endpoint,
                "--summary",
                "json",
            ],
        )?
        .output()?;
    ensure!(
        out.status.success(),
        "ingest inventory failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert!(summary["records"].as_u64() >= Some(3), "{summary}");

    let mine = [&private, &acl_public, &policy_public];
    let bucket_of = |record: &trailguard_tests::Record| -> String {
        record
            .json()
            .ok()
            .and_then(|a| {
                a["request_parameters"]["bucketName"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let snapshots = read_topic(
        &run.topic("activities"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |records| {
            let seen: Vec<String> = records.iter().map(bucket_of).collect();
            mine.iter().all(|m| seen.contains(m))
        },
    )?;
    // One trail snapshot per account, naming this run's trail with what was read of it.
    let trail_named = |record: &trailguard_tests::Record, name: &str| -> Option<Value> {
        let activity = record.json().ok()?;
        let trails = activity["request_parameters"]["trails"].as_array()?.clone();
        let trail = trails.into_iter().find(|t| t["name"] == name)?;
        (activity["event_name"] == "TrailSnapshot").then_some(json!({
            "account": activity["account_id"], "trail": trail}))
    };
    let own_trail = snapshots.iter().find_map(|r| trail_named(r, &logging));
    let other_trail = snapshots.iter().find_map(|r| trail_named(r, &stopped));
    assert_eq!(
        own_trail.as_ref().map(|t| (
            &t["account"],
            &t["trail"]["isLogging"],
            &t["trail"]["isMultiRegionTrail"]
        )),
        Some((&json!(OWN), &json!(true), &json!(true))),
        "{own_trail:?}"
    );
    assert_eq!(
        other_trail
            .as_ref()
            .map(|t| (&t["account"], &t["trail"]["isLogging"])),
        Some((&json!(OTHER), &json!(false))),
        "{other_trail:?}"
    );
    assert!(
        own_trail.is_some_and(|t| t["trail"]["eventSelectors"].is_array()),
        "event selectors read"
    );

    let mut accounts = std::collections::BTreeMap::new();
    for record in &snapshots {
        let activity = record.json()?;
        let bucket = activity["request_parameters"]["bucketName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if mine.contains(&&bucket) {
            assert_eq!(activity["event_name"], "BucketSnapshot");
            accounts.insert(bucket, activity["account_id"].as_str().map(str::to_string));
        }
    }
    assert_eq!(accounts.get(&private), Some(&Some(OWN.to_string())));
    assert_eq!(accounts.get(&acl_public), Some(&Some(OWN.to_string())));
    assert_eq!(accounts.get(&policy_public), Some(&Some(OTHER.to_string())));

    // detect turns the public ones into alerts.
    let mut detect = run.spawn("detect", &[])?;
    let alerts = read_topic(
        &run.topic("alerts"),
        Duration::from_secs(90),
        Duration::from_secs(3),
        |records| {
            let buckets: Vec<String> = records
                .iter()
                .filter_map(|r| r.json().ok())
                .filter_map(|a| a["entity"]["id"].as_str().map(str::to_string))
                .collect();
            buckets.contains(&acl_public)
                && buckets.contains(&policy_public)
                && buckets.iter().any(|b| b == OTHER)
        },
    )?;
    // The account whose trails are all stopped, not the recorded one. Each account's
    // snapshots share a key, so the recorded account's trail snapshot was judged before its
    // buckets were.
    let coverage: Vec<Value> = alerts
        .iter()
        .filter_map(|r| r.json().ok())
        .filter(|a| a["policy_id"] == "trail-coverage")
        .collect();
    let about_other = coverage.iter().find(|a| a["entity"]["id"] == OTHER);
    assert!(
        about_other.is_some_and(|a| a["severity"] == "high"
            && a["evidence"]["summary"]
                .as_str()
                .is_some_and(|s| s.contains(&format!("{stopped} (stopped)")))),
        "{coverage:?}"
    );
    assert!(
        !coverage.iter().any(|a| a["entity"]["id"] == OWN),
        "{coverage:?}"
    );
    detect.stop("-TERM")?;
    let flagged: Vec<Value> = alerts
        .iter()
        .filter_map(|r| r.json().ok())
        .filter(|a| {
            a["entity"]["id"]
                .as_str()
                .is_some_and(|b| mine.iter().any(|m| m.as_str() == b))
        })
        .collect();
    let names: Vec<&str> = flagged
        .iter()
        .filter_map(|a| a["entity"]["id"].as_str())
        .collect();
    assert!(!names.contains(&private.as_str()), "{flagged:?}");
    assert!(names.contains(&acl_public.as_str()), "{flagged:?}");
    let other_alert = flagged
        .iter()
        .find(|a| a["entity"]["id"] == policy_public.as_str());
    assert!(
        other_alert.is_some_and(|a| a["evidence"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("policy"))),
        "{flagged:?}"
    );
    Ok(())
}
