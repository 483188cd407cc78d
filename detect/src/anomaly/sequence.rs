//! `attack-sequence`: several different detections about one actor within an hour.
//!
//! An intrusion is rarely one alert. Stolen keys used from a new country, then a region the
//! organization never works in, then instances by the dozen: each step alone is `medium` (a
//! traveller, a migration, a scale-out), together they are the attack. This detection keeps,
//! with the actor's baseline (so a restart keeps it), the detections of the last hour that
//! were at least `medium`, and raises `high` once they come from enough different policies:
//! three at `medium` sensitivity, four at `low`, two at `high`. The same policy again does not
//! add to the count (a burst that fires twice is one piece of evidence); the alert lists every
//! detection with its activity as evidence.
//!
//! Only alerts about the activity being applied count — an alert decided later about another
//! activity (an unusual region whose judgement waited for the organization's counts) is not
//! the actor of the activity that released it. Such held decisions do not count at all.

use serde::{Deserialize, Serialize};
use trailguard_common::contract::{Alert, Severity};
use trailguard_common::Activity;

use super::{ActivityId, Anomalies, PrincipalState, Sensitivity, Who, ATTACK_SEQUENCE};

/// The span one sequence's detections must fall in (event time, seconds).
pub const WINDOW: i64 = 3_600;

/// Most detections one actor's sequence keeps (the newest; more different policies than
/// this within an hour are past every threshold).
const KEPT: usize = 8;

/// One detection in an actor's sequence: the newest of its policy within the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detected {
    /// The policy that raised it.
    #[serde(rename = "p")]
    policy: Box<str>,
    /// Its severity.
    #[serde(rename = "s")]
    severity: Severity,
    /// Its activity's event time (unix seconds).
    #[serde(rename = "t")]
    time: i64,
    /// Its activity.
    #[serde(rename = "i")]
    activity: ActivityId,
}

impl Detected {
    /// Bytes allocated for it beyond its slot.
    pub fn heap_size(&self) -> usize {
        self.policy.len() + self.activity.heap_size()
    }
}

impl Anomalies {
    /// Adds the detections `raised` about `a` to its actor's sequence; an `attack-sequence`
    /// alert when they complete one (see the module docs).
    pub fn sequence(
        &self,
        st: &mut PrincipalState,
        a: &Activity,
        raised: &[Alert],
    ) -> Option<Alert> {
        let d = &self.cfg.attack_sequence;
        if !self.on(d, a) {
            return None;
        }
        let t = a.event_time.timestamp();
        st.sequence.retain(|x| x.time > t - WINDOW);
        for alert in raised {
            if alert.severity < Severity::Medium
                || alert.policy_id == ATTACK_SEQUENCE.id
                || !alert.evidence.activity_ids.contains(&a.id)
            {
                continue;
            }
            match st
                .sequence
                .iter_mut()
                .find(|x| *x.policy == *alert.policy_id)
            {
                Some(x) => {
                    if t >= x.time {
                        x.time = t;
                        x.activity = ActivityId::new(&a.id);
                    }
                    x.severity = x.severity.max(alert.severity);
                }
                None => {
                    if st.sequence.len() >= KEPT {
                        if let Some(oldest) =
                            (0..st.sequence.len()).min_by_key(|&i| st.sequence[i].time)
                        {
                            st.sequence.remove(oldest);
                        }
                    }
                    st.sequence.push(Detected {
                        policy: alert.policy_id.as_str().into(),
                        severity: alert.severity,
                        time: t,
                        activity: ActivityId::new(&a.id),
                    });
                }
            }
        }
        let needed = match self.sens(d) {
            Sensitivity::Low => 4,
            Sensitivity::Medium => 3,
            Sensitivity::High => 2,
        };
        // Within an hour of this activity (one read late may sit after it).
        let near = |x: &&Detected| x.time <= t + WINDOW;
        if st.sequence.iter().filter(near).count() < needed
            || !self.may_fire(st, "sequence".into(), t)
        {
            return None;
        }
        let mut within: Vec<&Detected> = st.sequence.iter().filter(near).collect();
        within.sort_by_key(|x| x.time);
        let listed: Vec<String> = within
            .iter()
            .map(|x| format!("{} ({})", x.policy, severity_word(x.severity)))
            .collect();
        let mut ids: Vec<String> = Vec::new();
        for x in &within {
            let id = x.activity.to_string();
            if !id.is_empty() && !ids.contains(&id) {
                ids.push(id);
            }
        }
        let summary = format!(
            "{} raised {} different detections within an hour: {}",
            Who(a),
            within.len(),
            listed.join(", ")
        );
        let mut alert = self.alert(
            a,
            &ATTACK_SEQUENCE,
            d,
            Severity::High,
            summary,
            ids,
            ("", "", ""),
        );
        // No one technique: the detections it gathers name theirs.
        alert.mitre.clear();
        Some(alert)
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AnomalyConfig, DetectionConfig};
    use super::*;
    use trailguard_common::contract::AlertKind;

    fn activity(t: i64, n: u32) -> Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let record = serde_json::json!({
            "eventTime": time.to_rfc3339(), "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances", "eventType": "AwsApiCall", "awsRegion": "ap-south-1",
            "recipientAccountId": "111111111111", "sourceIPAddress": "89.46.223.10",
            "eventID": format!("00000000-0000-4000-8000-{n:012}"),
            "userIdentity": {"type": "IAMUser", "userName": "ci", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/ci", "principalId": "AIDACI",
                "accessKeyId": "AKIACI"},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// An alert of `policy` at `severity` whose evidence is `a`.
    fn raised(a: &Activity, policy: &str, severity: Severity) -> Alert {
        let meta = crate::policy::PolicyMeta {
            id: policy,
            name: policy,
            kind: AlertKind::Anomaly,
        };
        crate::policy::AlertBuilder::about(&meta, a, severity)
            .evidence(vec![a.id.clone()], String::new())
            .id(format!("{policy}-{}", a.id))
    }

    fn sequences(found: &[Option<Alert>]) -> usize {
        found.iter().flatten().count()
    }

    #[test]
    fn three_different_detections_within_an_hour_are_an_attack() {
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let mut st = PrincipalState::default();
        let (a1, a2, a3) = (activity(0, 1), activity(600, 2), activity(1_800, 3));
        let found = [
            an.sequence(
                &mut st,
                &a1,
                &[raised(&a1, "infrequent-country", Severity::Medium)],
            ),
            // The same policy again adds nothing; a low one does not count.
            an.sequence(
                &mut st,
                &a2,
                &[
                    raised(&a2, "infrequent-country", Severity::Medium),
                    raised(&a2, "security-group-changes", Severity::Low),
                ],
            ),
            an.sequence(
                &mut st,
                &a2,
                &[raised(&a2, "unusual-region", Severity::Medium)],
            ),
        ];
        assert_eq!(sequences(&found), 0, "two policies are not a sequence");
        let third = an.sequence(
            &mut st,
            &a3,
            &[raised(&a3, "vm-creation", Severity::Medium)],
        );
        let Some(alert) = third else {
            panic!("three different detections within an hour raise attack-sequence");
        };
        assert_eq!(alert.policy_id, "attack-sequence");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.entity.id, a3.principal.key());
        for policy in ["infrequent-country", "unusual-region", "vm-creation"] {
            assert!(
                alert.evidence.summary.contains(policy),
                "{}",
                alert.evidence.summary
            );
        }
        // Every activity that contributed is evidence, once.
        assert_eq!(alert.evidence.activity_ids, [a2.id.clone(), a3.id.clone()]);
        // Once: a fourth within the suppression period raises nothing more.
        let a4 = activity(2_000, 4);
        assert!(an
            .sequence(
                &mut st,
                &a4,
                &[raised(&a4, "discovery-burst", Severity::Medium)]
            )
            .is_none());
    }

    #[test]
    fn detections_hours_apart_or_about_others_are_no_sequence() {
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let mut st = PrincipalState::default();
        let (a1, a2, a3) = (activity(0, 1), activity(4_000, 2), activity(8_000, 3));
        let found = [
            an.sequence(
                &mut st,
                &a1,
                &[raised(&a1, "infrequent-country", Severity::High)],
            ),
            an.sequence(
                &mut st,
                &a2,
                &[raised(&a2, "unusual-region", Severity::Medium)],
            ),
            an.sequence(
                &mut st,
                &a3,
                &[raised(&a3, "vm-creation", Severity::Medium)],
            ),
        ];
        assert_eq!(sequences(&found), 0, "each more than an hour from the last");
        // An alert decided now about another activity (held, released by this one) is not
        // this actor's.
        let a4 = activity(8_100, 4);
        let other = activity(8_050, 99);
        let about_other = raised(&other, "dormant-principal", Severity::High);
        assert!(an.sequence(&mut st, &a4, &[about_other]).is_none());
        // Replayed (the same activity and alert again): still two policies within the hour.
        assert!(an
            .sequence(
                &mut st,
                &a3,
                &[raised(&a3, "vm-creation", Severity::Medium)]
            )
            .is_none());
    }

    #[test]
    fn sensitivity_sets_how_many_and_off_is_off() {
        let a = [activity(0, 1), activity(60, 2), activity(120, 3)];
        let policies = ["anonymous-ip", "discovery-burst", "credential-access-burst"];
        let run = |d: DetectionConfig| {
            let an = Anomalies::new(
                AnomalyConfig {
                    attack_sequence: d,
                    ..Default::default()
                },
                true,
            );
            let mut st = PrincipalState::default();
            let found: Vec<Option<Alert>> = a
                .iter()
                .zip(policies)
                .map(|(a, p)| an.sequence(&mut st, a, &[raised(a, p, Severity::Medium)]))
                .collect();
            found.iter().position(Option::is_some)
        };
        assert_eq!(run(DetectionConfig::default()), Some(2));
        let high = DetectionConfig {
            sensitivity: Some(Sensitivity::High),
            ..Default::default()
        };
        assert_eq!(run(high), Some(1));
        let low = DetectionConfig {
            sensitivity: Some(Sensitivity::Low),
            ..Default::default()
        };
        assert_eq!(run(low), None);
        let off = DetectionConfig {
            enabled: false,
            ..Default::default()
        };
        assert_eq!(run(off), None);
        let allowed = DetectionConfig {
            allow_principals: vec!["ci".into()],
            ..Default::default()
        };
        assert_eq!(run(allowed), None);
    }
}
