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

impl EventPolicy for CloudTrailChanges {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&CLOUDTRAIL_CHANGES]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
}
