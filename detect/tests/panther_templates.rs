//! The activity policy templates against Panther's labelled CloudTrail rule tests (the shared
//! data): where a Panther rule watches what one of our templates watches, its positive cases
//! must raise our alert, and its negative cases must not — except failed attempts, which our
//! templates report on purpose (one severity step lower), and the differences listed below.

use std::collections::BTreeMap;

use serde_json::Value;
use trailguard_common::contract::Severity;
use trailguard_detect::templates::{Templates, TemplatesConfig, TEMPLATES};

/// Panther rule → our template, and whether the rule is about the dangerous variant (then its
/// positives must get our raised severity and its negatives must not), or about the activity
/// as a whole (then its successful negatives must not fire at all).
const OVERLAP: &[(&str, &str, bool)] = &[
    ("AWS.IAM.AttachAdminRolePolicy", "iam-policy-changes", true),
    ("AWS.IAM.AttachAdminUserPolicy", "iam-policy-changes", true),
    ("AWS.IAM.PolicyModified", "iam-policy-changes", false),
    ("AWS.EC2.NetworkACLModified", "network-acl-changes", false),
    (
        "AWS.CloudTrail.NetworkACLPermissiveEntry",
        "network-acl-changes",
        true,
    ),
    ("AWS.EC2.GatewayModified", "network-gateway-changes", false),
    (
        "AWS.EC2.SecurityGroupModified",
        "security-group-changes",
        false,
    ),
    ("AWS.EC2.VPCModified", "vpn-vpc-changes", false),
    ("AWS.VPCFlow.LogsDeleted", "vpn-vpc-changes", true),
    (
        "AWS.EC2.Startup.Script.Change",
        "ec2-instance-changes",
        true,
    ),
    ("AWS.S3.BucketDeleted", "s3-bucket-activity", true),
    ("AWS.S3.BucketPolicyModified", "s3-bucket-activity", false),
    ("AWS.S3.DeleteBucketEncryption", "s3-bucket-activity", true),
    ("AWS.S3.DeleteBucketReplication", "s3-bucket-activity", true),
    ("AWS.S3.DeletePublicAccessBlock", "s3-bucket-activity", true),
    ("AWS.S3.DisableBucketLogging", "s3-bucket-activity", true),
    ("AWS.S3.SuspendVersioning", "s3-bucket-activity", true),
    // Panther's negatives here are Terraform's changes; ours reports every manual or automated
    // change (allow-list automation with `allow_principals`), so only positives are compared.
    (
        "AWS.EC2.ManualSecurityGroupChange",
        "security-group-changes",
        false,
    ),
];

fn shared() -> std::path::PathBuf {
    std::env::var("TRAILGUARD_TEST_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var_os("CARGO_MANIFEST_DIR")
                .map_or_else(
                    || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
                    std::path::PathBuf::from,
                )
                .join("../../shared/data/cloudtrail")
        })
}

#[test]
fn panther_cases_where_the_rules_overlap() -> anyhow::Result<()> {
    let text = std::fs::read_to_string(
        shared().join("panther-analysis/panther_cloudtrail_rule_tests.jsonl"),
    )?;
    let templates = Templates::new(&TemplatesConfig::new());
    let overlap: BTreeMap<&str, (&str, bool)> =
        OVERLAP.iter().map(|(r, t, e)| (*r, (*t, *e))).collect();
    let base: BTreeMap<&str, Severity> =
        TEMPLATES.iter().map(|t| (t.meta.id, t.severity)).collect();
    // A negative of a rule about a dangerous variant compares only when it is the same call
    // as one of the rule's positives (others are simply another call of the template).
    let mut positive_calls = std::collections::BTreeSet::new();
    for line in text.lines() {
        let case: Value = serde_json::from_str(line)?;
        if case["expected_result"].as_bool() == Some(true) {
            positive_calls.insert((
                case["rule_id"].as_str().unwrap_or_default().to_string(),
                case["event"]["eventName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    let (mut positives, mut negatives) = (0, 0);
    let mut wrong = Vec::new();
    for line in text.lines() {
        let case: Value = serde_json::from_str(line)?;
        let rule = case["rule_id"].as_str().unwrap_or_default();
        let Some(&(template, elevated)) = overlap.get(rule) else {
            continue;
        };
        let name = case["test_name"].as_str().unwrap_or_default();
        let Ok(activity) = trailguard_ingest::normalize::normalize(&case["event"].to_string())
        else {
            continue; // Panther's abbreviated events (no time or source) are dead letters.
        };
        let severity = templates
            .judge(&activity)
            .iter()
            .find(|a| a.policy_id == template)
            .map(|a| a.severity);
        let raised = severity.is_some_and(|s| s > base[template]);
        let expected = case["expected_result"].as_bool().unwrap_or(false);
        let succeeded = activity.outcome.is_success();
        if expected {
            positives += 1;
            if severity.is_none() || (elevated && succeeded && !raised) {
                wrong.push(format!("MISSED {rule} / {name}: {severity:?}"));
            }
        } else if rule != "AWS.EC2.ManualSecurityGroupChange"
            && succeeded
            && (!elevated
                || positive_calls.contains(&(rule.to_string(), activity.event_name.clone())))
        {
            negatives += 1;
            if (elevated && raised) || (!elevated && severity.is_some()) {
                wrong.push(format!(
                    "FIRED {rule} / {name} ({}): {severity:?}",
                    activity.event_name
                ));
            }
        }
    }
    println!("{positives} positive and {negatives} negative Panther cases checked");
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(
        positives >= 20 && negatives >= 16,
        "only {positives} positive and {negatives} negative cases"
    );
    Ok(())
}
