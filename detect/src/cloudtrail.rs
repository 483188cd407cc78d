//! CloudTrail configuration changes: anything that stops, deletes or narrows what is logged.

use trailguard_common::contract::{
    ActionKind, Alert, AlertKind, Entity, RequestedAction, Severity,
};
use trailguard_common::Activity;

use crate::policy::{
    allowed, security_team, who, AlertBuilder, EventPolicy, PolicyMeta, SimplePolicyConfig,
};
use trailguard_common::contract::kinds;

/// CloudTrail configuration changes.
pub const CLOUDTRAIL_CHANGES: PolicyMeta<'static> = PolicyMeta {
    id: "cloudtrail-changes",
    name: "CloudTrail configuration change",
    kind: AlertKind::ActivityPolicy,
};

/// CloudTrail configuration changes: anything that stops, deletes or narrows what is logged.
pub struct CloudTrailChanges {
    cfg: SimplePolicyConfig,
}

/// CloudTrail API calls that change what is logged, and where.
pub const CLOUDTRAIL_CHANGE_EVENTS: &[&str] = &[
    "StopLogging",
    "DeleteTrail",
    "UpdateTrail",
    "PutEventSelectors",
    "PutInsightSelectors",
    "DeleteEventDataStore",
    "UpdateEventDataStore",
    "StopEventDataStoreIngestion",
    "DeleteChannel",
    "UpdateChannel",
    "DeleteResourcePolicy",
    "PutResourcePolicy",
    "RemoveTags",
    "DeregisterOrganizationDelegatedAdmin",
];

impl CloudTrailChanges {
    /// The policy with its settings.
    pub fn new(cfg: SimplePolicyConfig) -> Self {
        CloudTrailChanges { cfg }
    }

    /// An alert when `activity` changes CloudTrail's configuration.
    pub fn judge(&self, activity: &Activity) -> Option<Alert> {
        if !self.cfg.enabled
            || activity.event_source != "cloudtrail.amazonaws.com"
            || !CLOUDTRAIL_CHANGE_EVENTS.contains(&activity.event_name.as_str())
            || allowed(&self.cfg.allow_principals, activity)
        {
            return None;
        }
        let trail = activity
            .resources
            .iter()
            .find(|r| r.kind == kinds::CLOUDTRAIL_TRAIL)
            .map(|r| r.id.clone())
            .unwrap_or_else(|| "(unnamed)".into());
        let attempt = match (&activity.outcome.error_code, activity.outcome.is_success()) {
            (_, true) => String::new(),
            (Some(code), false) => format!(" (attempt failed: {code})"),
            (None, false) => " (attempt failed)".into(),
        };
        let summary = format!(
            "{} called {} on trail {trail}{attempt}",
            who(activity),
            activity.event_name
        );
        // A stopped or deleted trail blinds the organization; narrowing selectors less so.
        let severity = match activity.event_name.as_str() {
            "StopLogging"
            | "DeleteTrail"
            | "DeleteEventDataStore"
            | "StopEventDataStoreIngestion"
                if activity.outcome.is_success() =>
            {
                self.cfg.severity.max(Severity::High)
            }
            // Selectors that log no management writes stop the trail where it matters: what
            // is changed next is not recorded.
            "PutEventSelectors"
                if activity.outcome.is_success() && stops_management_writes(activity) =>
            {
                self.cfg.severity.max(Severity::High)
            }
            _ => self.cfg.severity,
        };
        let alert = AlertBuilder::about(&CLOUDTRAIL_CHANGES, activity, severity)
            .entity(Entity {
                kind: kinds::CLOUDTRAIL_TRAIL.into(),
                id: trail,
            })
            .evidence(vec![activity.id.clone()], summary)
            .mitre((
                "Defense Evasion",
                "T1562.008",
                "Impair Defenses: Disable or Modify Cloud Logs",
            ))
            .actions(vec![RequestedAction {
                kind: ActionKind::Notify,
                target: security_team(),
            }])
            .id_from(&[activity.id.as_str()]);
        Some(alert)
    }
}

/// Whether a `PutEventSelectors` leaves its trail logging no management write: every basic
/// selector excludes management events or logs only reads, or no advanced selector selects
/// the `Management` category without confining it to reads. (An empty list is not judged.)
fn stops_management_writes(activity: &Activity) -> bool {
    activity
        .request_parameters
        .as_deref()
        .is_some_and(trailguard_common::trail::logs_no_management_writes)
}

impl EventPolicy for CloudTrailChanges {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&CLOUDTRAIL_CHANGES]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(params: serde_json::Value, failed: bool) -> Option<Severity> {
        let mut record = serde_json::json!({
            "eventVersion": "1.09", "eventTime": "2024-06-02T19:41:40Z",
            "eventSource": "cloudtrail.amazonaws.com", "eventName": "PutEventSelectors",
            "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
            "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
            "userIdentity": {"type": "IAMUser", "userName": "mallory", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/mallory"},
            "requestParameters": params,
        });
        if failed {
            record["errorCode"] = "AccessDenied".into();
        }
        let activity = match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        CloudTrailChanges::new(SimplePolicyConfig::default())
            .judge(&activity)
            .map(|a| a.severity)
    }

    /// Selectors that stop logging management writes are as good as stopping the trail.
    #[test]
    fn selectors_that_stop_management_writes_are_high() {
        let basic = |include: bool, rw: &str| {
            serde_json::json!({"trailName": "t", "eventSelectors": [
                {"includeManagementEvents": include, "readWriteType": rw, "dataResources": []}]})
        };
        assert_eq!(selectors(basic(false, "All"), false), Some(Severity::High));
        assert_eq!(
            selectors(basic(true, "ReadOnly"), false),
            Some(Severity::High)
        );
        assert_eq!(selectors(basic(true, "All"), false), Some(Severity::Medium));
        assert_eq!(
            selectors(basic(true, "WriteOnly"), false),
            Some(Severity::Medium)
        );
        assert_eq!(
            selectors(basic(false, "All"), true),
            Some(Severity::Medium),
            "an attempt"
        );
        let mut two = basic(false, "All");
        if let Some(list) = two["eventSelectors"].as_array_mut() {
            list.push(serde_json::json!({"readWriteType": "WriteOnly"}));
        }
        assert_eq!(
            selectors(two, false),
            Some(Severity::Medium),
            "one logs writes"
        );
        let advanced = |fields: serde_json::Value| serde_json::json!({"trailName": "t", "advancedEventSelectors": [{"fieldSelectors": fields}]});
        let data_only = advanced(serde_json::json!([
            {"field": "eventCategory", "equals": ["Data"]},
            {"field": "resources.type", "equals": ["AWS::S3::Object"]}]));
        assert_eq!(selectors(data_only, false), Some(Severity::High));
        let reads = advanced(serde_json::json!([
            {"field": "eventCategory", "equals": ["Management"]},
            {"field": "readOnly", "equals": ["true"]}]));
        assert_eq!(selectors(reads, false), Some(Severity::High));
        let management = advanced(serde_json::json!([
            {"field": "eventCategory", "equals": ["Management"]}]));
        assert_eq!(selectors(management, false), Some(Severity::Medium));
    }
}
