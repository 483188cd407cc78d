//! An account CloudTrail does not record: judged from ingest's inventory (`TrailSnapshot`), not
//! from any event — a trail that was never created, was stopped before Trailguard watched, logs
//! no management writes, or cannot deliver its logs leaves nothing in the trail to alert on.
//! Everything else Trailguard detects in such an account is silently missing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{
    kinds, ActionKind, Alert, AlertKind, Entity, RequestedAction, Severity, INVENTORY_SOURCE,
    TRAIL_SNAPSHOT,
};
use trailguard_common::Activity;

use crate::policy::{security_team, AlertBuilder, EventPolicy, PolicyMeta};

/// An account CloudTrail does not record, or records only in part.
pub const TRAIL_COVERAGE: PolicyMeta<'static> = PolicyMeta {
    id: "trail-coverage",
    name: "CloudTrail does not record an account",
    kind: AlertKind::ActivityPolicy,
};

/// A trail whose last delivery of log files failed and whose last success is older than this
/// is not delivering (CloudTrail delivers every few minutes while there is activity).
const DELIVERY_STALE_SECS: i64 = 3600;

/// Trails named in an alert's summary, at most.
const SHOWN: usize = 20;

/// Settings of the trail-coverage policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrailCoverageConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Recording some regions only (no multi-region trail) is `medium`: an intruder works in
    /// the regions no one watches.
    pub all_regions: bool,
    /// Accounts not judged (a sandbox recorded elsewhere, on purpose).
    pub allow_accounts: Vec<String>,
}

impl Default for TrailCoverageConfig {
    fn default() -> Self {
        TrailCoverageConfig {
            enabled: true,
            all_regions: true,
            allow_accounts: Vec::new(),
        }
    }
}

/// The policy.
pub struct TrailCoverage {
    cfg: TrailCoverageConfig,
}

/// One trail of a snapshot, as the judgement needs it.
struct Trail<'a> {
    name: &'a str,
    home_region: &'a str,
    multi_region: bool,
    global_events: bool,
    /// `None`: could not be read.
    logging: Option<bool>,
    /// Whether it logs management writes; `None`: its selectors could not be read.
    writes: Option<bool>,
    /// The delivery error, when the last success is older than the error can be.
    undelivered: Option<&'a str>,
}

impl<'a> Trail<'a> {
    fn of(trail: &'a Value, now: DateTime<Utc>) -> Option<Self> {
        let text = |key: &str| trail.get(key).and_then(Value::as_str);
        let flag = |key: &str| trail.get(key).and_then(Value::as_bool);
        let read = |key: &str| trail.get("errors").and_then(|e| e.get(key)).is_none();
        let writes = (read("eventSelectors")
            && (trail.get("eventSelectors").is_some()
                || trail.get("advancedEventSelectors").is_some()))
        .then(|| !crate::cloudtrail::logs_no_management_writes(trail));
        let delivered = text("latestDeliveryTime")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let undelivered = text("latestDeliveryError")
            .filter(|e| !e.is_empty())
            .filter(|_| delivered.is_none_or(|t| (now - t).num_seconds() > DELIVERY_STALE_SECS));
        Some(Trail {
            name: text("name").or_else(|| text("trailARN"))?,
            home_region: text("homeRegion").unwrap_or("?"),
            multi_region: flag("isMultiRegionTrail").unwrap_or(false),
            global_events: flag("includeGlobalServiceEvents").unwrap_or(false),
            logging: if read("status") {
                flag("isLogging")
            } else {
                None
            },
            writes,
            undelivered,
        })
    }

    /// Logging and keeping management writes, as far as could be read.
    fn records(&self) -> Option<bool> {
        match (self.logging, self.writes) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }

    /// Why it records nothing that matters (when [`Trail::records`] is `Some(false)` or it
    /// does not deliver).
    fn failing(&self) -> String {
        let why = if self.logging == Some(false) {
            "stopped".to_string()
        } else if self.writes == Some(false) {
            "logs no management writes".to_string()
        } else {
            format!(
                "cannot deliver its logs: {}",
                self.undelivered.unwrap_or("unknown error")
            )
        };
        format!("{} ({why})", self.name)
    }
}

/// What a trail snapshot of `account` says, as a severity and a sentence; `None` when the
/// account is recorded in full, or when what decides could not be read (pure).
pub fn judge_snapshot(
    account: &str,
    params: &Value,
    now: DateTime<Utc>,
    all_regions: bool,
) -> Option<(Severity, String)> {
    let trails = params.get("trails")?.as_array()?;
    let trails: Vec<Trail> = trails.iter().filter_map(|t| Trail::of(t, now)).collect();
    let delivering: Vec<&Trail> = trails
        .iter()
        .filter(|t| t.records() == Some(true) && t.undelivered.is_none())
        .collect();
    if delivering.is_empty() {
        // A trail that may be recording (its status or selectors unreadable) is not judged.
        if trails.iter().any(|t| t.records().is_none()) {
            return None;
        }
        let why = if trails.is_empty() {
            "has no trail".to_string()
        } else {
            // An account holds at most five trails a region; a hostile snapshot is cut short.
            let mut failing: Vec<String> = trails.iter().take(SHOWN).map(Trail::failing).collect();
            if trails.len() > SHOWN {
                failing.push(format!("and {} more", trails.len() - SHOWN));
            }
            format!("has no trail recording it: {}", failing.join(", "))
        };
        return Some((
            Severity::High,
            format!(
                "account {account} {why} — what is done in it is not recorded, and Trailguard \
                 sees none of it"
            ),
        ));
    }
    let mut gaps = Vec::new();
    if all_regions && !delivering.iter().any(|t| t.multi_region) {
        let mut regions: Vec<&str> = delivering.iter().map(|t| t.home_region).collect();
        regions.sort_unstable();
        regions.dedup();
        regions.truncate(SHOWN);
        gaps.push(format!(
            "only {} recorded (no multi-region trail): calls in other regions are not",
            regions.join(", ")
        ));
    }
    if !delivering.iter().any(|t| t.multi_region || t.global_events) {
        gaps.push(
            "no trail records global services' events (IAM, STS, CloudFront): identity changes \
             are not recorded"
                .to_string(),
        );
    }
    if gaps.is_empty() {
        return None;
    }
    Some((
        Severity::Medium,
        format!("account {account}: {}", gaps.join("; ")),
    ))
}

impl TrailCoverage {
    /// The policy with its settings.
    pub fn new(cfg: TrailCoverageConfig) -> Self {
        TrailCoverage { cfg }
    }

    /// An alert when a trail snapshot shows its account unrecorded, or recorded in part.
    pub fn judge(&self, activity: &Activity) -> Option<Alert> {
        if !self.cfg.enabled
            || activity.event_source != INVENTORY_SOURCE
            || activity.event_name != TRAIL_SNAPSHOT
            || activity.principal.kind != kinds::TRAILGUARD
        {
            return None;
        }
        let account = activity.account_id.as_deref()?;
        if self.cfg.allow_accounts.iter().any(|a| a == account) {
            return None;
        }
        let params = activity.request_parameters.as_deref()?;
        let (severity, summary) =
            judge_snapshot(account, params, activity.event_time, self.cfg.all_regions)?;
        let alert = AlertBuilder::about(&TRAIL_COVERAGE, activity, severity)
            .entity(Entity {
                kind: kinds::AWS_ACCOUNT.into(),
                id: account.into(),
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
            .id_from(&[account, activity.id.as_str()]);
        Some(alert)
    }
}

impl EventPolicy for TrailCoverage {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&TRAIL_COVERAGE]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-05T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    /// A multi-region trail, logging everything, delivering.
    fn good() -> Value {
        json!({"name": "org", "trailARN": "arn:aws:cloudtrail:us-east-1:111122223333:trail/org",
            "homeRegion": "us-east-1", "isMultiRegionTrail": true, "isOrganizationTrail": true,
            "includeGlobalServiceEvents": true, "isLogging": true,
            "latestDeliveryTime": "2026-12-05T11:58:00+00:00",
            "eventSelectors": [{"readWriteType": "All", "includeManagementEvents": true,
                "dataResources": [], "excludeManagementEventSources": []}],
            "advancedEventSelectors": []})
    }

    fn judge(trails: Vec<Value>) -> Option<(Severity, String)> {
        judge_snapshot("111122223333", &json!({"trails": trails}), now(), true)
    }

    fn with(mut trail: Value, key: &str, value: Value) -> Value {
        trail[key] = value;
        trail
    }

    #[test]
    fn a_recorded_account_is_not_judged() {
        assert_eq!(judge(vec![good()]), None);
        // Moto and old trails answer no selectors: the default, everything, is logged.
        let mut bare = good();
        if let Some(t) = bare.as_object_mut() {
            t.insert("eventSelectors".into(), json!([]));
        }
        assert_eq!(judge(vec![bare]), None);
        // A stopped trail beside a recording one.
        let stopped = with(good(), "isLogging", json!(false));
        assert_eq!(judge(vec![stopped, good()]), None);
    }

    #[test]
    fn an_unrecorded_account_is_high() -> Result<(), String> {
        let cases = [
            (vec![], "has no trail"),
            (
                vec![with(good(), "isLogging", json!(false))],
                "org (stopped)",
            ),
            (
                vec![with(
                    good(),
                    "eventSelectors",
                    json!([{"readWriteType": "ReadOnly", "includeManagementEvents": true}]),
                )],
                "org (logs no management writes)",
            ),
            (
                vec![with(
                    with(good(), "eventSelectors", json!([])),
                    "advancedEventSelectors",
                    json!([{"fieldSelectors": [{"field": "eventCategory", "equals": ["Data"]}]}]),
                )],
                "org (logs no management writes)",
            ),
            (
                vec![with(
                    with(good(), "latestDeliveryError", json!("AccessDenied")),
                    "latestDeliveryTime",
                    json!("2026-12-04T09:00:00+00:00"),
                )],
                "org (cannot deliver its logs: AccessDenied)",
            ),
        ];
        for (trails, why) in cases {
            let Some((severity, summary)) = judge(trails.clone()) else {
                return Err(format!("no alert for {trails:?}"));
            };
            assert_eq!(severity, Severity::High, "{summary}");
            assert!(summary.contains(why), "{summary} lacks {why}");
            assert!(summary.contains("111122223333"), "{summary}");
        }
        Ok(())
    }

    #[test]
    fn a_summary_names_a_bounded_number_of_trails() -> Result<(), String> {
        let many = vec![with(good(), "isLogging", json!(false)); 5000];
        let (_, summary) = judge(many).ok_or("no alert")?;
        assert!(summary.contains("and 4980 more"), "{summary}");
        assert!(summary.len() < 2000, "{} bytes", summary.len());
        Ok(())
    }

    #[test]
    fn a_delivery_error_followed_by_deliveries_is_not_judged() {
        let recovered = with(good(), "latestDeliveryError", json!("AccessDenied"));
        assert_eq!(judge(vec![recovered]), None, "delivered two minutes ago");
    }

    #[test]
    fn what_could_not_be_read_is_not_judged() {
        // A member account may not read the organization trail's status; it is judged in the
        // management account's snapshot.
        let mut unread = good();
        if let Some(t) = unread.as_object_mut() {
            t.remove("isLogging");
            t.insert("errors".into(), json!({"status": "AccessDenied"}));
        }
        assert_eq!(judge(vec![unread.clone()]), None);
        assert_eq!(
            judge(vec![unread, with(good(), "isLogging", json!(false))]),
            None
        );
        let mut no_selectors = good();
        if let Some(t) = no_selectors.as_object_mut() {
            t.remove("eventSelectors");
            t.remove("advancedEventSelectors");
            t.insert("errors".into(), json!({"eventSelectors": "AccessDenied"}));
        }
        assert_eq!(judge(vec![no_selectors]), None);
        // Trails that could not be listed.
        assert_eq!(
            judge_snapshot(
                "111122223333",
                &json!({"errors": {"trails": "AccessDenied"}}),
                now(),
                true
            ),
            None
        );
    }

    #[test]
    fn a_partly_recorded_account_is_medium() -> Result<(), String> {
        let regional = with(good(), "isMultiRegionTrail", json!(false));
        let Some((severity, summary)) = judge(vec![regional.clone()]) else {
            return Err("no alert for a single-region trail".into());
        };
        assert_eq!(severity, Severity::Medium);
        assert!(summary.contains("only us-east-1 recorded"), "{summary}");
        assert_eq!(
            judge_snapshot("1", &json!({"trails": [regional.clone()]}), now(), false),
            None,
            "all_regions off"
        );
        let no_global = with(regional, "includeGlobalServiceEvents", json!(false));
        let Some((_, summary)) = judge(vec![no_global]) else {
            return Err("no alert without global events".into());
        };
        assert!(summary.contains("global services"), "{summary}");
        Ok(())
    }

    fn snapshot(params: Value, kind: &str) -> Activity {
        let record = json!({"eventTime": "2026-12-05T12:00:00Z", "eventSource": "s3.amazonaws.com",
            "eventName": "ListBuckets", "awsRegion": "us-east-1",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/a"}});
        let mut activity = match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        activity.event_source = INVENTORY_SOURCE.into();
        activity.event_name = TRAIL_SNAPSHOT.into();
        activity.account_id = Some("111122223333".into());
        activity.principal.kind = kind.into();
        activity.request_parameters = Some(params.into());
        activity
    }

    #[test]
    fn only_trailguard_snapshots_are_judged() {
        let policy = TrailCoverage::new(TrailCoverageConfig::default());
        let alert = policy.judge(&snapshot(json!({"trails": []}), kinds::TRAILGUARD));
        assert_eq!(alert.as_ref().map(|a| a.severity), Some(Severity::High));
        assert_eq!(alert.map(|a| a.entity.id), Some("111122223333".to_string()));
        assert!(policy
            .judge(&snapshot(json!({"trails": []}), "IAMUser"))
            .is_none());
        let allowed = TrailCoverage::new(TrailCoverageConfig {
            allow_accounts: vec!["111122223333".into()],
            ..TrailCoverageConfig::default()
        });
        assert!(allowed
            .judge(&snapshot(json!({"trails": []}), kinds::TRAILGUARD))
            .is_none());
    }
}
