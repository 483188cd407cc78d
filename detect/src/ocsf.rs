//! Alerts in OCSF form: a Detection Finding (class 2004, OCSF 1.1), published beside our own
//! schema when `kafka.topics.alerts_ocsf` is set, for SIEMs and lakes that speak OCSF
//! (Security Lake, Splunk, Sentinel's ASIM converters). Pure.

use serde_json::{json, Value};
use trailguard_common::contract::{Alert, AlertKind, Severity};

/// OCSF version the findings declare.
pub const OCSF_VERSION: &str = "1.1.0";

/// The Detection Finding for `alert`.
pub fn detection_finding(alert: &Alert) -> Value {
    let severity_id = match alert.severity {
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
    };
    let analytic_type = match alert.kind {
        AlertKind::ActivityPolicy | AlertKind::FilePolicy | AlertKind::Custom => (1, "Rule"),
        AlertKind::Anomaly => (2, "Behavioral"),
    };
    let attacks: Vec<Value> = alert
        .mitre
        .iter()
        .map(|m| {
            json!({
                "tactic": { "name": m.tactic },
                "technique": { "uid": m.technique_id, "name": m.technique },
                "version": "14",
            })
        })
        .collect();
    let mut finding = json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": severity_id,
        "severity": alert.severity.as_str().to_ascii_uppercase()[..1].to_string() + &alert.severity.as_str()[1..],
        "status_id": 1,
        "status": "New",
        "time": alert.time.timestamp_millis(),
        "message": alert.evidence.summary,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": alert.id,
            "product": { "name": "Trailguard", "vendor_name": "Trailguard", "version": env!("CARGO_PKG_VERSION") },
        },
        "finding_info": {
            "uid": alert.id,
            "title": alert.policy_name,
            "desc": alert.evidence.summary,
            "types": [alert.policy_id],
            "analytic": { "uid": alert.policy_id, "name": alert.policy_name, "type_id": analytic_type.0, "type": analytic_type.1 },
            "attacks": attacks,
            "related_events": alert.evidence.activity_ids.iter().map(|id| json!({ "uid": id })).collect::<Vec<_>>(),
        },
        "resources": [{ "type": alert.entity.kind, "uid": alert.entity.id }],
        "cloud": {
            "provider": "AWS",
            "region": alert.region,
            "account": { "uid": alert.account_id, "type": "AWS Account", "type_id": 10 },
        },
    });
    if let Some(p) = &alert.principal {
        finding["actor"] = json!({
            "user": {
                "name": p.name,
                "uid": p.arn.clone().unwrap_or_else(|| p.key()),
                "type": p.kind,
                "account": { "uid": p.account_id, "type": "AWS Account", "type_id": 10 },
            }
        });
    }
    finding
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_carries_what_a_siem_keys_on() -> anyhow::Result<()> {
        let text = include_str!("../../tests/tests/alert.json");
        let alert: Alert = serde_json::from_str(text)?;
        let f = detection_finding(&alert);
        assert_eq!(f["class_uid"], 2004);
        assert_eq!(f["type_uid"], 200401);
        assert_eq!(f["finding_info"]["uid"], alert.id.as_str());
        assert_eq!(f["metadata"]["version"], OCSF_VERSION);
        assert!(f["time"].as_i64().is_some_and(|t| t > 0));
        assert!(matches!(f["severity_id"].as_i64(), Some(2..=4)));
        assert_eq!(f["resources"][0]["uid"], alert.entity.id.as_str());
        Ok(())
    }
}
