//! Folding repeats: the same policy matching the same entity with the same severity again
//! within `policies.fold.period` (event time) of its first alert raises no new alert — unless
//! the alert asks for a remediation beyond notifying, which is always raised. The
//! repeats are counted in the acting principal's state, which is persisted with its baseline,
//! so a restart neither loses the count nor raises a repeat as a new alert.
//!
//! The first match is published at once. When the period closes — the principal acts again
//! after it, or the partition's watermark passes it, or the principal's baseline is forgotten
//! under the memory bound — an alert with the *same id* is published
//! again carrying `occurrences`, `last_time` and the repeats' activity ids. Both records have
//! the same key (the entity), so they stay in order on one partition. A consumer keeps, per
//! alert id, the record with the most `occurrences` (an activity re-published long after its
//! fold closed raises its first record again); remediate acts on an id once.

use serde::{Deserialize, Serialize};
use trailguard_common::contract::{kinds, Alert};

/// How repeats of an event-driven policy fold into one alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FoldConfig {
    /// Repeats of the same policy, entity and severity within this much event time of the
    /// first alert fold into it; zero publishes every match.
    #[serde(with = "humantime_serde")]
    pub period: std::time::Duration,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            period: std::time::Duration::from_secs(3600),
        }
    }
}

/// Evidence ids kept per fold (the first alert's plus this many repeats).
const MAX_REPEAT_IDS: usize = 20;
/// Open folds kept per principal; the oldest is closed early beyond this.
const MAX_OPEN: usize = 16;

/// One open fold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fold {
    /// Policy, entity and severity.
    #[serde(rename = "k")]
    key: String,
    /// Repeats before this event time (unix seconds) fold in.
    #[serde(rename = "u")]
    pub until: i64,
    /// Matches so far, the first included.
    #[serde(rename = "n")]
    count: u64,
    /// Latest event time of a match.
    #[serde(rename = "l")]
    last: i64,
    /// Activity ids of the repeats (at most [`MAX_REPEAT_IDS`]).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    repeats: Vec<String>,
    /// The alert as first published.
    #[serde(rename = "a")]
    alert: Box<Alert>,
}

impl Fold {
    /// Approximate bytes held.
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.key.capacity()
            + self
                .repeats
                .iter()
                .map(|r| 24 + r.capacity())
                .sum::<usize>()
            + 512
    }

    /// The closing alert: the first one with the repeats counted in; `None` when nothing was
    /// folded into it.
    fn close(self) -> Option<Alert> {
        if self.count < 2 {
            return None;
        }
        let mut alert = *self.alert;
        alert.occurrences = self.count;
        alert.last_time = chrono::DateTime::from_timestamp(self.last, 0);
        alert.evidence.activity_ids.extend(self.repeats);
        alert.evidence.summary = format!(
            "{} (and {} more time{} until {})",
            alert.evidence.summary,
            self.count - 1,
            if self.count == 2 { "" } else { "s" },
            alert
                .last_time
                .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .unwrap_or_default()
        );
        Some(alert)
    }
}

/// What makes two alerts one incident: the policy, the entity, the severity — and the acting
/// principal. Folds live in the actor's state, but a session merely *named* like a person (or
/// a role's other sessions) must not disappear into another principal's fold as a repeat.
/// For a high alert the call too: another high call on the same thing is the next step, not a
/// repeat (a trail's `DeleteTrail` after its `StopLogging`), while the routine calls of a
/// change (a bucket's versioning, encryption, policy… made by one deployment) stay one alert.
/// An alert about the actor itself (the root user used) folds whatever the call: the
/// incident is the actor.
fn key_of(alert: &Alert, call: &str) -> String {
    let about_the_actor = alert
        .actor
        .as_ref()
        .is_some_and(|actor| alert.entity.kind == kinds::PRINCIPAL && alert.entity.id == actor.id);
    let by_call = alert.severity == trailguard_common::contract::Severity::High && !about_the_actor;
    let call = if by_call { call } else { "" };
    format!(
        "{}|{}|{}|{}|{}|{call}",
        alert.policy_id,
        alert.entity.kind,
        alert.entity.id,
        alert.severity.as_str(),
        alert
            .principal
            .as_ref()
            .map(|p| p.key())
            .unwrap_or_default()
    )
}

/// Folds `alerts`, raised by one activity at event time `t`, into `folds`. Returns the alerts
/// to publish: the first of each fold, and the closing alerts of folds this activity ended.
/// `period` zero turns folding off.
pub fn fold(
    folds: &mut thin_vec::ThinVec<Fold>,
    alerts: Vec<Alert>,
    t: i64,
    period: i64,
) -> Vec<Alert> {
    fold_noting(folds, alerts, t, period, "", &mut Vec::new())
}

/// [`fold`] of the alerts a call (`eventName`) raised, also noting the end of each fold it
/// opens in `opened`.
pub fn fold_noting(
    folds: &mut thin_vec::ThinVec<Fold>,
    alerts: Vec<Alert>,
    t: i64,
    period: i64,
    call: &str,
    opened: &mut Vec<i64>,
) -> Vec<Alert> {
    let mut out = close_before(folds, t);
    if period <= 0 {
        out.extend(alerts);
        return out;
    }
    for alert in alerts {
        // An alert that asks for more than a notification is never folded away: a bucket made
        // public again right after it was fixed must be fixed again.
        if alert
            .actions
            .iter()
            .any(|a| a.kind != trailguard_common::contract::ActionKind::Notify)
        {
            out.push(alert);
            continue;
        }
        let key = key_of(&alert, call);
        if let Some(open) = folds.iter_mut().find(|f| f.key == key) {
            // The same activity again (re-published past ingest's de-duplication) is no repeat.
            let id = alert.evidence.activity_ids.last();
            if id.is_some_and(|id| {
                open.alert.evidence.activity_ids.contains(id) || open.repeats.contains(id)
            }) {
                continue;
            }
            open.count += 1;
            open.last = open.last.max(t);
            if open.repeats.len() < MAX_REPEAT_IDS {
                open.repeats
                    .extend(alert.evidence.activity_ids.last().cloned());
            }
            continue;
        }
        if folds.len() >= MAX_OPEN {
            let oldest = folds
                .iter()
                .enumerate()
                .min_by_key(|(_, f)| f.until)
                .map(|(i, _)| i)
                .unwrap_or(0);
            out.extend(folds.remove(oldest).close());
        }
        opened.push(t.saturating_add(period));
        crate::anomaly::room_for_one(folds);
        folds.push(Fold {
            key,
            until: t.saturating_add(period),
            count: 1,
            last: t,
            repeats: Vec::new(),
            alert: Box::new(alert.clone()),
        });
        out.push(alert);
    }
    out
}

/// Closes the folds whose period ended at or before `t`; returns their closing alerts.
pub fn close_before(folds: &mut thin_vec::ThinVec<Fold>, t: i64) -> Vec<Alert> {
    if folds.iter().all(|f| f.until > t) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < folds.len() {
        if folds[i].until <= t {
            out.extend(folds.remove(i).close());
        } else {
            i += 1;
        }
    }
    crate::anomaly::release_if_empty(folds);
    out
}

/// Closes every fold early (its principal's baseline is being forgotten); returns their
/// closing alerts.
pub fn close_all(folds: thin_vec::ThinVec<Fold>) -> Vec<Alert> {
    folds.into_iter().filter_map(Fold::close).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trailguard_common::contract::{
        AlertKind, Entity, Evidence, Severity, ALERT_SCHEMA_VERSION,
    };

    fn alert(id: &str, entity: &str, severity: Severity, t: i64) -> Alert {
        Alert {
            schema_version: ALERT_SCHEMA_VERSION,
            id: format!("id-{id}"),
            policy_id: "security-group-changes".into(),
            policy_name: "Security group configuration changes".into(),
            kind: AlertKind::ActivityPolicy,
            severity,
            time: chrono::DateTime::from_timestamp(t, 0).unwrap_or_default(),
            entity: Entity {
                kind: "principal".into(),
                id: entity.into(),
            },
            principal: None,
            actor: None,
            account_id: None,
            region: None,
            evidence: Evidence {
                activity_ids: vec![format!("act-{id}")],
                summary: "alice changed sg-1".into(),
            },
            mitre: Vec::new(),
            actions: Vec::new(),
            occurrences: 1,
            last_time: None,
            signature: None,
        }
    }

    /// Another high call on the same entity by the same actor within the hour is the next step
    /// of what it is doing, not a repeat: published, not folded. The same call again folds; so
    /// do a change's routine calls (medium and low) on one thing.
    #[test]
    fn another_call_on_the_same_entity_is_not_a_repeat() {
        let mut folds = thin_vec::ThinVec::new();
        let mut opened = Vec::new();
        let mut out = fold_noting(
            &mut folds,
            vec![alert("a", "trail", Severity::High, 0)],
            0,
            3600,
            "StopLogging",
            &mut opened,
        );
        out.extend(fold_noting(
            &mut folds,
            vec![alert("b", "trail", Severity::High, 60)],
            60,
            3600,
            "DeleteTrail",
            &mut opened,
        ));
        assert_eq!(out.len(), 2, "{out:#?}");
        let again = fold_noting(
            &mut folds,
            vec![alert("c", "trail", Severity::High, 120)],
            120,
            3600,
            "DeleteTrail",
            &mut opened,
        );
        assert!(again.is_empty(), "{again:#?}");
        let mut routine = fold_noting(
            &mut folds,
            vec![alert("d", "bucket", Severity::Low, 180)],
            180,
            3600,
            "PutBucketVersioning",
            &mut opened,
        );
        routine.extend(fold_noting(
            &mut folds,
            vec![alert("e", "bucket", Severity::Low, 200)],
            200,
            3600,
            "PutBucketEncryption",
            &mut opened,
        ));
        assert_eq!(routine.len(), 1, "{routine:#?}");
    }

    #[test]
    fn repeats_within_the_period_fold_into_one_alert_with_a_count() {
        let mut folds = thin_vec::ThinVec::new();
        let mut out = Vec::new();
        for i in 0..5 {
            let t = 1_000 + i * 60;
            out.extend(fold(
                &mut folds,
                vec![alert(&i.to_string(), "alice", Severity::Low, t)],
                t,
                3_600,
            ));
        }
        assert_eq!(out.len(), 1, "only the first is published at once");
        assert_eq!(out[0].id, "id-0");
        assert_eq!(out[0].occurrences, 1);
        // The principal acts again after the period: the fold closes with the count.
        let closing = fold(&mut folds, Vec::new(), 1_000 + 3_600, 3_600);
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0].id, "id-0", "same id: it supersedes the first");
        assert_eq!(closing[0].occurrences, 5);
        assert_eq!(
            closing[0].last_time,
            chrono::DateTime::from_timestamp(1_240, 0)
        );
        assert_eq!(
            closing[0].evidence.activity_ids,
            ["act-0", "act-1", "act-2", "act-3", "act-4"]
        );
        assert!(closing[0].evidence.summary.contains("4 more times"));
        assert!(folds.is_empty());
    }

    #[test]
    fn a_lone_alert_closes_silently() {
        let mut folds = thin_vec::ThinVec::new();
        let out = fold(
            &mut folds,
            vec![alert("a", "alice", Severity::Low, 0)],
            0,
            60,
        );
        assert_eq!(out.len(), 1);
        assert!(close_before(&mut folds, 60).is_empty());
        assert!(folds.is_empty());
    }

    #[test]
    fn another_entity_or_a_higher_severity_is_a_new_alert() {
        let mut folds = thin_vec::ThinVec::new();
        let out = fold(
            &mut folds,
            vec![
                alert("a", "alice", Severity::Low, 0),
                alert("b", "bob", Severity::Low, 0),
                alert("c", "alice", Severity::High, 0),
                alert("d", "alice", Severity::Low, 0),
            ],
            0,
            60,
        );
        let ids: Vec<&str> = out.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["id-a", "id-b", "id-c"]);
    }

    #[test]
    fn after_the_period_the_same_match_alerts_again() {
        let mut folds = thin_vec::ThinVec::new();
        let first = fold(
            &mut folds,
            vec![alert("a", "alice", Severity::Low, 0)],
            0,
            60,
        );
        let again = fold(
            &mut folds,
            vec![alert("b", "alice", Severity::Low, 61)],
            61,
            60,
        );
        assert_eq!(first[0].id, "id-a");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, "id-b");
    }

    #[test]
    fn the_same_activity_again_is_no_repeat() {
        let mut folds = thin_vec::ThinVec::new();
        let first = fold(
            &mut folds,
            vec![alert("a", "alice", Severity::Low, 0)],
            0,
            60,
        );
        let again = fold(
            &mut folds,
            vec![alert("a", "alice", Severity::Low, 0)],
            0,
            60,
        );
        assert_eq!(first.len(), 1);
        assert!(again.is_empty());
        assert!(
            close_before(&mut folds, 60).is_empty(),
            "nothing was folded in"
        );
    }

    #[test]
    fn alerts_asking_for_remediation_are_never_folded() {
        let mut folds = thin_vec::ThinVec::new();
        let fixable = |id: &str| {
            let mut a = alert(id, "bucket", Severity::High, 0);
            a.actions = vec![trailguard_common::contract::RequestedAction {
                kind: trailguard_common::contract::ActionKind::MakeBucketPrivate,
                target: trailguard_common::contract::Target {
                    kind: "s3-bucket".into(),
                    id: "bucket".into(),
                    account_id: None,
                    grantee: None,
                },
            }];
            a
        };
        let first = fold(&mut folds, vec![fixable("a")], 0, 3600);
        let again = fold(&mut folds, vec![fixable("b")], 60, 3600);
        assert_eq!((first.len(), again.len()), (1, 1));
        assert!(folds.is_empty());
    }

    #[test]
    fn a_zero_period_folds_nothing() {
        let mut folds = thin_vec::ThinVec::new();
        let out = fold(
            &mut folds,
            vec![
                alert("a", "alice", Severity::Low, 0),
                alert("b", "alice", Severity::Low, 0),
            ],
            0,
            0,
        );
        assert_eq!(out.len(), 2);
        assert!(folds.is_empty());
    }

    #[test]
    fn too_many_open_folds_close_the_oldest_first() {
        let mut folds = thin_vec::ThinVec::new();
        let mut out = Vec::new();
        for i in 0..=MAX_OPEN as i64 {
            let who = format!("p{i}");
            out.extend(fold(
                &mut folds,
                vec![alert(&who, &who, Severity::Low, i)],
                i,
                600,
            ));
            out.extend(fold(
                &mut folds,
                vec![alert(&format!("{who}x"), &who, Severity::Low, i)],
                i,
                600,
            ));
        }
        assert_eq!(folds.len(), MAX_OPEN);
        let closing: Vec<&Alert> = out.iter().filter(|a| a.occurrences == 2).collect();
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0].id, "id-p0");
    }
}
