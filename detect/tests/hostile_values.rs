//! Hostile values through every policy: the shared CloudTrail records (`../shared/data/cloudtrail`,
//! see its README), each field of each record replaced in turn by a value of another type or
//! shape (null, numbers at the ends of their ranges, empty and 5,000-character strings, lists
//! where objects were, wildcards, stray separators), and each record's parameters and response
//! put under other records' event names — a policy written for one call's shape reads another's
//! there. Anyone who may write to a trail's bucket, or to the activities topic, chooses both.
//! Every record goes through what `ingest` does and then every policy (built-in, anomaly and
//! SigmaHQ's rules), in a backtest: nothing may panic, and every record is either read or
//! rejected.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde_json::{json, Value};
use trailguard_detect::enrich::{Enricher, Intel};
use trailguard_detect::sigma::{SigmaConfig, SigmaRules};
use trailguard_detect::DetectConfig;

fn shared_cloudtrail() -> PathBuf {
    std::env::var("TRAILGUARD_TEST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/cloudtrail")
        })
}

/// The shared records, as CloudTrail wrote them (one object per record).
fn records() -> Vec<Value> {
    let (files, _) = trailguard_detect::backtest::expand(&[shared_cloudtrail()]);
    assert!(files.len() >= 13, "shared data not found");
    let limits = trailguard_ingest::split::Limits::default();
    let mut out = Vec::new();
    for path in files {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let plain = trailguard_ingest::split::decompress(&bytes, limits);
        trailguard_ingest::split::split_each(&plain.bytes, limits, &mut |item| {
            if let Some(record) = item
                .text
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .filter(Value::is_object)
            {
                out.push(record);
            }
        });
    }
    out
}

/// Calls whose parameters the policies read in depth and the shared records lack, in the
/// shapes CloudTrail writes them: they are mutated like the shared records.
fn deep_calls() -> Vec<Value> {
    let call = |source: &str, name: &str, params: Value, response: Value| {
        json!({"eventVersion": "1.09", "eventTime": "2026-10-20T10:00:00Z",
            "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
            "sourceIPAddress": "203.0.113.9", "userAgent": "aws-cli/2.15.0",
            "recipientAccountId": "111122223333", "eventID": "x",
            "userIdentity": {"type": "IAMUser", "accountId": "111122223333",
                "arn": "arn:aws:iam::111122223333:user/alice", "userName": "alice",
                "accessKeyId": "AKIAEXAMPLE"},
            "requestParameters": params, "responseElements": response})
    };
    let ec2 = "ec2.amazonaws.com";
    vec![
        call(
            ec2,
            "CreateFleet",
            json!({"CreateFleetRequest": {"Type": "instant",
            "TargetCapacitySpecification": {"TotalTargetCapacity": 40, "TargetCapacityUnitType": "units"},
            "LaunchTemplateConfigs": {"Overrides": {"InstanceType": "p4d.24xlarge", "WeightedCapacity": 2,
                "InstanceRequirements": {"AcceleratorCount": {"Min": 1}, "AcceleratorTypes": {"item": "gpu"},
                    "ExcludedInstanceTypes": {"item": "g4dn.*"}}}}}}),
            json!({"CreateFleetResponse": {"fleetInstanceSet": {"item": [{"instanceIds": {"item": ["i-1", "i-2"]}}]}}}),
        ),
        call(
            ec2,
            "RequestSpotFleet",
            json!({"spotFleetRequestConfig": {"targetCapacity": 60,
            "launchSpecifications": {"items": [{"instanceType": "g5.48xlarge", "weightedCapacity": 4}]}}}),
            json!(null),
        ),
        call(
            ec2,
            "RunInstances",
            json!({"instanceType": "p5.48xlarge",
            "instancesSet": {"items": [{"imageId": "ami-1", "minCount": 8, "maxCount": 8}]}}),
            json!({"instancesSet": {"items": [{"instanceId": "i-1", "instanceType": "p5.48xlarge"}]}}),
        ),
        call(
            ec2,
            "ModifySecurityGroupRules",
            json!({"ModifySecurityGroupRulesRequest": {"GroupId": "sg-1",
            "SecurityGroupRule": {"SecurityGroupRuleId": "sgr-1", "SecurityGroupRule": {"IpProtocol": "tcp",
                "FromPort": 22, "ToPort": 22, "CidrIpv4": "0.0.0.0/0"}}}}),
            json!(null),
        ),
        call(
            ec2,
            "ModifyInstanceMetadataOptions",
            json!({"ModifyInstanceMetadataOptionsRequest": {
            "InstanceId": "i-1", "HttpTokens": "optional"}}),
            json!(null),
        ),
        call(
            "autoscaling.amazonaws.com",
            "CreateAutoScalingGroup",
            json!({"autoScalingGroupName": "g",
            "desiredCapacity": 30, "desiredCapacityType": "units",
            "mixedInstancesPolicy": {"launchTemplate": {"overrides": [{"instanceType": "g6.xlarge"}]}}}),
            json!(null),
        ),
        call(
            "dynamodb.amazonaws.com",
            "UpdateContinuousBackups",
            json!({"tableName": "t",
            "pointInTimeRecoverySpecification": {"pointInTimeRecoveryEnabled": false}}),
            json!(null),
        ),
        call(
            "ssm.amazonaws.com",
            "SendCommand",
            json!({"documentName": "AWS-RunShellScript",
            "targets": [{"key": "InstanceIds", "values": ["*"]}]}),
            json!(null),
        ),
        call(
            "events.amazonaws.com",
            "PutRule",
            json!({"name": "r", "state": "DISABLED"}),
            json!(null),
        ),
    ]
}

/// What replaces a field: every JSON type, the ends of numbers' ranges, strings policies split
/// or match on.
fn hostile() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(""),
        json!("*"),
        json!("a".repeat(5000)),
        json!("arn:aws:iam::*:role/*"),
        json!(":::::::"),
        json!("arn:"),
        json!("/"),
        json!("0.0.0.0/0"),
        json!("::"),
        json!("💥 ünïcödé \u{0} \\ \" '"),
        json!([]),
        json!({}),
        json!([null, 1, "x", {"a": []}]),
        json!({"a": {"b": [1, "x", {}]}, "Statement": "*", "items": {"item": "x"}}),
    ]
}

/// Every path to a value under `value` (object keys and array indexes), the value's own first.
fn paths(value: &Value, at: &mut Vec<PathPart>, out: &mut Vec<Vec<PathPart>>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                at.push(PathPart::Key(k.clone()));
                paths(v, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(PathPart::Index(i));
                paths(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathPart {
    Key(String),
    Index(usize),
}

fn at_mut<'v>(value: &'v mut Value, path: &[PathPart]) -> Option<&'v mut Value> {
    let mut cur = value;
    for part in path {
        cur = match part {
            PathPart::Key(k) => cur.get_mut(k.as_str())?,
            PathPart::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// The records hostile values make of `records`: each field replaced (the fields of
/// `userIdentity`, the parameters, response and additional data, and the record's own), and
/// each record's parts under other records' calls. Each with an event id of its own, so none
/// is a repeat of another.
fn variants(records: &[Value]) -> Vec<Value> {
    let values = hostile();
    let mut out = Vec::new();
    let mut n = 0usize;
    // The record's own, or the one it wraps (Panther's rule tests: `event`; EventBridge:
    // `detail`).
    let mut id = |mut record: Value| {
        n += 1;
        let id = json!(format!("00000000-0000-4000-8000-{n:012}"));
        for wrapped in ["event", "detail"] {
            if let Some(inner) = record.get_mut(wrapped).and_then(Value::as_object_mut) {
                inner.insert("eventID".into(), id.clone());
            }
        }
        if let Some(r) = record.as_object_mut() {
            r.insert("eventID".into(), id);
        }
        record
    };
    for (i, record) in records.iter().enumerate() {
        let mut all = Vec::new();
        paths(record, &mut Vec::new(), &mut all);
        for (j, path) in all.iter().enumerate() {
            // The root, and the event's time and id (without which the record is refused
            // before any policy reads it), aside.
            let first = match path.first() {
                Some(PathPart::Key(k)) => k.as_str(),
                _ => continue,
            };
            let last = match path.last() {
                Some(PathPart::Key(k)) => k.as_str(),
                _ => "",
            };
            if matches!(last, "eventTime" | "eventID")
                && (path.len() == 1 || matches!(first, "event" | "detail") && path.len() == 2)
            {
                continue;
            }
            // A value a field, different from field to field and record to record.
            {
                let value = &values[(i * 7 + j * 3) % values.len()];
                let mut changed = record.clone();
                if let Some(slot) = at_mut(&mut changed, path) {
                    *slot = value.clone();
                    out.push(id(changed));
                }
            }
        }
        // This record's parameters and response under other records' calls.
        for k in 1..=10 {
            let other = &records[(i * 31 + k * 17) % records.len()];
            let mut changed = record.clone();
            for field in ["eventSource", "eventName"] {
                if let (Some(r), Some(v)) = (changed.as_object_mut(), other.get(field)) {
                    r.insert(field.into(), v.clone());
                }
            }
            out.push(id(changed));
        }
    }
    out
}

#[test]
fn hostile_values_panic_no_policy() {
    let mut records = records();
    assert!(records.len() >= 500, "{} shared records", records.len());
    records.extend(deep_calls());
    let variants = variants(&records);
    assert!(variants.len() > 15 * records.len(), "{}", variants.len());
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("hostile.json");
    {
        let mut file = std::fs::File::create(&path).expect("file");
        for record in &variants {
            writeln!(file, "{record}").expect("write");
        }
    }
    // Every policy on, SigmaHQ's rules among them; geolocation and AS data when the set-up
    // fetched them (`make test` does), so the policies that need them run too.
    let mut cfg = DetectConfig::default();
    cfg.policies.sigma = SigmaConfig {
        paths: vec![shared_cloudtrail().join("../sigma/rules/cloud/aws/cloudtrail")],
        skip_unsupported: true,
        ..SigmaConfig::default()
    };
    let sigma = Arc::new(SigmaRules::load(&cfg.policies.sigma).expect("Sigma rules"));
    let geo = std::env::var("TRAILGUARD_TEST_GEO_V4").ok().and_then(|p| {
        trailguard_detect::enrich::GeoDb::open(&trailguard_detect::enrich::GeoConfig {
            databases: vec![p.into()],
            ..Default::default()
        })
        .ok()
        .flatten()
    });
    let asn = std::env::var("TRAILGUARD_TEST_ASN_V4").ok().and_then(|p| {
        trailguard_detect::network::AsnDb::open(&[p.into()])
            .ok()
            .flatten()
    });
    let mut intel = Intel::default();
    intel.add("tor", "198.51.100.0/24\n");
    let mut enricher = Enricher::new(geo, Arc::new(RwLock::new(Arc::new(intel)))).with_networks(
        asn,
        trailguard_detect::enrich::IntelConfig::default().network_risk(),
    );
    let report =
        trailguard_detect::backtest::run_files(&cfg, sigma, &mut enricher, &[path], |_| {})
            .expect("backtest");
    // Each record read: an activity, a repeat or a rejection — none lost to a panic.
    assert_eq!(report.records, variants.len() as u64);
    assert_eq!(
        report.activities + report.duplicates + report.rejected,
        report.records,
        "{report:?}"
    );
    assert!(report.activities > report.records / 2, "{report:?}");
}
