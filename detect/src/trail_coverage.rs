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
use trailguard_common::trail::{logs_no_management_writes, DELIVERY_STALE_SECS};
use trailguard_common::Activity;

use crate::policy::{security_team, AlertBuilder, EventPolicy, PolicyMeta};

/// An account CloudTrail does not record, or records only in part.
pub const TRAIL_COVERAGE: PolicyMeta<'static> = PolicyMeta {
    id: "trail-coverage",
    name: "CloudTrail does not record an account",
    kind: AlertKind::ActivityPolicy,
};

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
struct Trail {
    name: String,
    home_region: String,
    /// Owned by another account: the organization's trail, seen from a member.
    elsewhere: bool,
    /// `None`: GetTrail could not be read.
    multi_region: Option<bool>,
    global_events: Option<bool>,
    /// `None`: could not be read.
    logging: Option<bool>,
    /// Whether it logs management writes; `None`: its selectors could not be read.
    writes: Option<bool>,
    /// The delivery error, when nothing was delivered for [`DELIVERY_STALE_SECS`] since.
    undelivered: Option<String>,
    /// What could not be read, for the summary.
    unread: Option<String>,
}

/// Text from a snapshot as a summary shows it: control characters dropped, at most 128
/// characters (a forged snapshot's names are anyone's).
fn clip(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(128).collect();
    if text.chars().filter(|c| !c.is_control()).nth(128).is_some() {
        out.push('…');
    }
    out
}

impl Trail {
    fn of(trail: &Value, account: &str, now: DateTime<Utc>) -> Self {
        let text = |key: &str| trail.get(key).and_then(Value::as_str);
        let flag = |key: &str| trail.get(key).and_then(Value::as_bool);
        let errors = trail.get("errors").and_then(Value::as_object);
        let read = |key: &str| errors.is_none_or(|e| !e.contains_key(key));
        let writes = (read("eventSelectors")
            && (trail.get("eventSelectors").is_some()
                || trail.get("advancedEventSelectors").is_some()))
        .then(|| !logs_no_management_writes(trail));
        let delivered = text("latestDeliveryTime")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let undelivered = text("latestDeliveryError")
            .filter(|e| !e.is_empty())
            .filter(|_| delivered.is_none_or(|t| (now - t).num_seconds() > DELIVERY_STALE_SECS))
            .map(clip);
        let arn = text("trailARN").unwrap_or_default();
        let owner = arn.split(':').nth(4).filter(|a| !a.is_empty());
        let (multi_region, global_events) = if read("trail") {
            (
                flag("isMultiRegionTrail"),
                flag("includeGlobalServiceEvents"),
            )
        } else {
            (None, None)
        };
        let logging = if read("status") {
            flag("isLogging")
        } else {
            None
        };
        let unread = errors.filter(|e| !e.is_empty()).map(|e| {
            let mut what: Vec<&str> = e.keys().map(String::as_str).collect();
            what.truncate(4);
            what.join(", ")
        });
        // Not an object, or nothing read: unreadable.
        let unread = unread.or_else(|| {
            (logging.is_none() || writes.is_none()).then(|| "status, eventSelectors".to_string())
        });
        Trail {
            name: clip(text("name").unwrap_or(if arn.is_empty() { "(unnamed)" } else { arn })),
            home_region: clip(text("homeRegion").unwrap_or("?")),
            elsewhere: owner.is_some_and(|o| o != account),
            multi_region,
            global_events,
            logging,
            writes,
            undelivered,
            unread,
        }
    }

    /// Logging and keeping management writes, as far as could be read.
    fn records(&self) -> Option<bool> {
        match (self.logging, self.writes) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }

    /// Recording and delivering what it records.
    fn delivers(&self) -> bool {
        self.records() == Some(true) && self.undelivered.is_none()
    }

    /// Why it records nothing that matters (when it does not [`Trail::delivers`]).
    fn failing(&self) -> String {
        let why = if self.logging == Some(false) {
            "stopped".to_string()
        } else if self.writes == Some(false) {
            "logs no management writes".to_string()
        } else if let Some(error) = &self.undelivered {
            format!("cannot deliver its logs: {error}")
        } else {
            format!(
                "could not be read: {}",
                self.unread.as_deref().unwrap_or("?")
            )
        };
        format!("{} ({why})", self.name)
    }
}

/// The trails named in a summary: at most [`SHOWN`] (an account holds at most five a region;
/// a hostile snapshot is cut short).
fn listed<'a>(trails: impl ExactSizeIterator<Item = &'a Trail>) -> String {
    let count = trails.len();
    let mut named: Vec<String> = trails.take(SHOWN).map(Trail::failing).collect();
    if count > SHOWN {
        named.push(format!("and {} more", count - SHOWN));
    }
    named.join(", ")
}

/// What a trail snapshot of `account` says, as a severity and a sentence; `None` when the
/// account is recorded in full, or when what decides is judged elsewhere (pure).
pub fn judge_snapshot(
    account: &str,
    params: &Value,
    now: DateTime<Utc>,
    all_regions: bool,
) -> Option<(Severity, String)> {
    let trails = params.get("trails")?.as_array()?;
    let trails: Vec<Trail> = trails.iter().map(|t| Trail::of(t, account, now)).collect();
    let delivering: Vec<&Trail> = trails.iter().filter(|t| t.delivers()).collect();
    let unknown: Vec<&Trail> = trails.iter().filter(|t| t.records().is_none()).collect();
    if delivering.is_empty() {
        // The organization's trail, which a member account may not be allowed to read, is
        // judged in the snapshot of the account that owns it.
        if unknown.iter().any(|t| t.elsewhere) {
            return None;
        }
        if !unknown.is_empty() {
            return Some((
                Severity::Medium,
                format!(
                    "account {account}: cannot verify that CloudTrail records it — no trail \
                     read records its management writes: {} (the inventory's role needs \
                     cloudtrail:GetTrail, GetTrailStatus and GetEventSelectors)",
                    listed(trails.iter())
                ),
            ));
        }
        let why = if trails.is_empty() {
            "has no trail".to_string()
        } else {
            format!("has no trail recording it: {}", listed(trails.iter()))
        };
        return Some((
            Severity::High,
            format!(
                "account {account} {why} — no trail file of it reaches Trailguard's s3 or sqs \
                 sources, and what is done in it is kept only in CloudTrail's 90-day event \
                 history (management events), or a CloudTrail Lake event data store if one \
                 records it"
            ),
        ));
    }
    // A trail that could not be read may be the one that records every region.
    if trails
        .iter()
        .any(|t| t.records() != Some(false) && (t.records().is_none() || t.multi_region.is_none()))
    {
        return None;
    }
    let mut gaps = Vec::new();
    if all_regions && !delivering.iter().any(|t| t.multi_region == Some(true)) {
        let mut regions: Vec<&str> = delivering.iter().map(|t| t.home_region.as_str()).collect();
        regions.sort_unstable();
        regions.dedup();
        regions.truncate(SHOWN);
        gaps.push(format!(
            "only {} recorded (no multi-region trail): calls in other regions are not",
            regions.join(", ")
        ));
    }
    if !delivering
        .iter()
        .any(|t| t.multi_region == Some(true) || t.global_events == Some(true))
    {
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
        let (severity, summary) = if activity.trimmed.is_empty() {
            let params = activity.request_parameters.as_deref()?;
            judge_snapshot(account, params, activity.event_time, self.cfg.all_regions)?
        } else {
            // Too large to publish whole: what decides may be what was cut.
            (
                Severity::Medium,
                format!(
                    "account {account}: cannot verify that CloudTrail records it — its trail \
                     snapshot was too large and was trimmed"
                ),
            )
        };
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
                    json!("2026-12-03T09:00:00+00:00"),
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
            assert!(
                !summary.contains("  "),
                "one space between words: {summary}"
            );
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
        assert_eq!(
            judge(vec![recovered.clone()]),
            None,
            "delivered two minutes ago"
        );
        // A quiet day: the error stays, the last delivery is hours old.
        let quiet = with(
            recovered,
            "latestDeliveryTime",
            json!("2026-12-05T01:00:00+00:00"),
        );
        assert_eq!(judge(vec![quiet]), None);
    }

    fn unread(mut trail: Value, errors: Value, drop: &[&str]) -> Value {
        if let Some(t) = trail.as_object_mut() {
            for key in drop {
                t.remove(*key);
            }
            t.insert("errors".into(), errors);
        }
        trail
    }

    /// The organization's trail, seen from a member account.
    fn organization_trail() -> Value {
        with(
            good(),
            "trailARN",
            json!("arn:aws:cloudtrail:us-east-1:999988887777:trail/org"),
        )
    }

    #[test]
    fn what_could_not_be_read_is_not_taken_for_recording() -> Result<(), String> {
        // The account's own trail, unreadable: nothing read records it.
        let status = unread(good(), json!({"status": "AccessDenied"}), &["isLogging"]);
        let selectors = unread(
            good(),
            json!({"eventSelectors": "AccessDenied"}),
            &["eventSelectors", "advancedEventSelectors"],
        );
        for trails in [
            vec![status.clone()],
            vec![selectors],
            vec![status, with(good(), "isLogging", json!(false))],
            vec![json!("not a trail")],
        ] {
            let (severity, summary) = judge(trails.clone()).ok_or(format!("{trails:?}"))?;
            assert_eq!(severity, Severity::Medium, "{summary}");
            assert!(summary.contains("cannot verify"), "{summary}");
        }
        Ok(())
    }

    #[test]
    fn an_organization_trail_is_judged_in_its_own_account() {
        // A member account may not read the organization trail's status or settings.
        let member_view = unread(
            organization_trail(),
            json!({"trail": "TrailNotFound", "status": "CloudTrailARNInvalid",
                "eventSelectors": "CloudTrailARNInvalid"}),
            &[
                "isLogging",
                "eventSelectors",
                "advancedEventSelectors",
                "isMultiRegionTrail",
            ],
        );
        assert_eq!(judge(vec![member_view.clone()]), None);
        // Beside a local single-region trail: the unread one may record every region.
        let local = with(good(), "isMultiRegionTrail", json!(false));
        assert_eq!(judge(vec![member_view, local.clone()]), None);
        // Read, and stopped: judged here too.
        let stopped = with(organization_trail(), "isLogging", json!(false));
        assert_eq!(judge(vec![stopped]).map(|(s, _)| s), Some(Severity::High));
        // A failed GetTrail is not "single-region".
        let no_details = unread(
            good(),
            json!({"trail": "Throttling"}),
            &["isMultiRegionTrail", "includeGlobalServiceEvents"],
        );
        assert_eq!(judge(vec![no_details, local]), None);
    }

    #[test]
    fn unlisted_trails_are_not_judged() {
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
    fn a_trimmed_snapshot_cannot_be_verified() -> Result<(), String> {
        let mut activity = snapshot(json!({"trails": []}), kinds::TRAILGUARD);
        activity.trimmed = vec!["requestParameters: scalars only".into()];
        let alert = TrailCoverage::new(TrailCoverageConfig::default())
            .judge(&activity)
            .ok_or("no alert")?;
        assert_eq!(alert.severity, Severity::Medium);
        assert!(alert.evidence.summary.contains("trimmed"));
        Ok(())
    }

    #[test]
    fn forged_names_are_clipped() -> Result<(), String> {
        let long = format!("evil\n{}", "x".repeat(10_000));
        let trail = with(with(good(), "name", json!(long)), "isLogging", json!(false));
        let (_, summary) = judge(vec![trail]).ok_or("no alert")?;
        assert!(!summary.contains('\n'), "{summary}");
        assert!(summary.len() < 1000, "{} bytes", summary.len());
        Ok(())
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
