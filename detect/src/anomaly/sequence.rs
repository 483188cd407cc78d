//! `attack-sequence`: several different detections about one actor within an hour.
//!
//! An intrusion is rarely one alert. Stolen keys used from an anonymising network, a sweep
//! of every secret, then instances by the dozen: each step alone is `medium` (a privacy
//! tool, a migration, a scale-out), together they are the attack. This detection keeps,
//! with the actor's baseline (so a restart keeps it), the detections of the last hour that
//! were at least `medium`, and raises `high` once they come from enough different policies:
//! three at `medium` sensitivity, four at `low`, two at `high`. The same policy again does not
//! add to the count (a burst that fires twice is one piece of evidence); the alert lists every
//! detection with its activity as evidence.
//!
//! Only alerts about the activity being applied count — an alert decided later about another
//! activity is not the actor of the activity that released it. `unusual-region` and
//! `infrequent-country` never count: each waits, or not, for the organization's counts from
//! other partitions, so whether one would join a sequence (and which activities it names)
//! would depend on how soon those arrived, and a replay could raise a sequence the first run
//! did not. The newest detection of each policy is kept.

use serde::{Deserialize, Serialize};
use trailguard_common::contract::{Alert, Severity};
use trailguard_common::Activity;

use super::{ActivityId, Anomalies, PrincipalState, Sensitivity, Who, ATTACK_SEQUENCE};

/// The span one sequence's detections must fall in (event time, seconds).
pub const WINDOW: i64 = 3_600;

/// The detections decided by the organization's counts, now or when they arrive (see the
/// module docs): never counted.
const WAITS_FOR_FACTS: [&str; 2] = ["unusual-region", "infrequent-country"];

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
    /// Its activity's principal (its key): one actor may act as several.
    #[serde(rename = "w", default)]
    principal: Box<str>,
}

impl Detected {
    /// Bytes allocated for it beyond its slot.
    pub fn heap_size(&self) -> usize {
        self.policy.len() + self.principal.len() + self.activity.heap_size()
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
        // A refused call, or a record anyone can cause by typing a name (a failed or
        // prompted sign-in), is not the actor acting: counted, it would let anyone plant
        // detections on someone else's sequence.
        if !self.on(d, a) || !a.outcome.is_success() || crate::classify::names_only(a) {
            return None;
        }
        // Most activities that raise anything raise nothing this counts.
        if !raised.iter().any(|alert| about_this(alert, a)) {
            return None;
        }
        let t = a.event_time.timestamp();
        let principal: Box<str> = a.principal.key().into();
        // Kept while they may still share an hour with a later activity (read in order) or
        // with this one.
        st.sequence.retain(|x| x.time > t - 2 * WINDOW);
        let mut added = false;
        for alert in raised {
            if !about_this(alert, a) {
                continue;
            }
            added = true;
            match st
                .sequence
                .iter_mut()
                .find(|x| *x.policy == *alert.policy_id)
            {
                // The newest of a policy: what is nearest the activities that follow.
                Some(x) if t >= x.time => {
                    x.time = t;
                    x.activity = ActivityId::new(&a.id);
                    x.principal = principal.clone();
                    x.severity = alert.severity;
                }
                Some(_) => {}
                None => {
                    if st.sequence.len() >= KEPT {
                        if let Some(oldest) =
                            (0..st.sequence.len()).min_by_key(|&i| st.sequence[i].time)
                        {
                            st.sequence.remove(oldest);
                        }
                    }
                    super::room_for_one(&mut st.sequence);
                    st.sequence.push(Detected {
                        policy: alert.policy_id.as_str().into(),
                        severity: alert.severity,
                        time: t,
                        activity: ActivityId::new(&a.id),
                        principal: principal.clone(),
                    });
                }
            }
        }
        super::release_if_empty(&mut st.sequence);
        if !added {
            return None;
        }
        let needed = match self.sens(d) {
            Sensitivity::Low => 4,
            Sensitivity::Medium => 3,
            Sensitivity::High => 2,
        };
        // The most detections within one hour that this activity's falls in (whatever order
        // the records were read in, the same hour: its earliest and latest at most an hour
        // apart).
        let (best, start) = {
            let from = |s: i64| {
                st.sequence
                    .iter()
                    .filter(|x| (s..=s + WINDOW).contains(&x.time))
                    .count()
            };
            // The first start (in the order kept) of the fullest hour.
            let mut best = (0, t);
            for s in st.sequence.iter().map(|x| x.time) {
                let n = if (t - WINDOW..=t).contains(&s) {
                    from(s)
                } else {
                    0
                };
                if n > best.0 {
                    best = (n, s);
                }
            }
            best
        };
        if best < needed || !self.may_fire(st, "sequence".into(), t) {
            return None;
        }
        let mut within: Vec<&Detected> = st
            .sequence
            .iter()
            .filter(|x| (start..=start + WINDOW).contains(&x.time))
            .collect();
        within.sort_by(|x, y| x.time.cmp(&y.time).then_with(|| x.policy.cmp(&y.policy)));
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
        // One actor may be several principals (a person's sessions in several accounts): the
        // alert names this activity's, and asks for more than a notification only when every
        // detection was about that principal.
        let all_this = within.iter().all(|x| x.principal == principal);
        let summary = format!(
            "{} raised {} different detections within an hour: {}{}",
            Who(a),
            within.len(),
            listed.join(", "),
            if all_this {
                ""
            } else {
                " (some through other sessions or credentials of the same actor)"
            }
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
        if !all_this {
            alert
                .actions
                .retain(|r| r.kind == trailguard_common::contract::ActionKind::Notify);
        }
        Some(alert)
    }
}

/// Whether `alert` is a detection about `a`'s principal acting in `a`: at least `medium`,
/// with `a` in its evidence, naming `a`'s principal as the one who acted, and not about a
/// group (a custom threshold over several principals; a Sigma correlation names none).
fn about_this(alert: &Alert, a: &Activity) -> bool {
    alert.severity >= Severity::Medium
        && !WAITS_FOR_FACTS.contains(&alert.policy_id.as_str())
        && alert.policy_id != ATTACK_SEQUENCE.id
        && alert.entity.kind != "group"
        && alert.evidence.activity_ids.contains(&a.id)
        && alert.principal.as_ref() == Some(&a.principal)
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
    use trailguard_common::contract::{ActionKind, AlertKind};

    fn activity(t: i64, n: u32) -> Activity {
        activity_of("ci", t, n, false)
    }

    fn activity_of(user: &str, t: i64, n: u32, refused: bool) -> Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let record = serde_json::json!({
            "eventTime": time.to_rfc3339(), "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances", "eventType": "AwsApiCall", "awsRegion": "ap-south-1",
            "recipientAccountId": "111111111111", "sourceIPAddress": "89.46.223.10",
            "eventID": format!("00000000-0000-4000-8000-{n:012}"),
            "userIdentity": {"type": "IAMUser", "userName": user, "accountId": "111111111111",
                "arn": format!("arn:aws:iam::111111111111:user/{user}"), "principalId": "AIDACI",
                "accessKeyId": "AKIACI"},
        });
        let mut record = record;
        if refused {
            record["errorCode"] = "AccessDenied".into();
        }
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

    /// `policy`'s medium alert about `a`, added to `st`'s sequence.
    fn feed(an: &Anomalies, st: &mut PrincipalState, a: &Activity, policy: &str) -> Option<Alert> {
        an.sequence(st, a, &[raised(a, policy, Severity::Medium)])
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
            feed(&an, &mut st, &a1, "root-activity"),
            // The same policy again adds nothing; a low one does not count.
            an.sequence(
                &mut st,
                &a2,
                &[
                    raised(&a2, "root-activity", Severity::Medium),
                    raised(&a2, "security-group-changes", Severity::Low),
                ],
            ),
            feed(&an, &mut st, &a2, "credential-access-burst"),
        ];
        assert_eq!(sequences(&found), 0, "two policies are not a sequence");
        let third = feed(&an, &mut st, &a3, "vm-creation");
        let Some(alert) = third else {
            panic!("three different detections within an hour raise attack-sequence");
        };
        assert_eq!(alert.policy_id, "attack-sequence");
        assert_eq!(alert.severity, Severity::High);
        assert_eq!(alert.entity.id, a3.principal.key());
        for policy in ["root-activity", "credential-access-burst", "vm-creation"] {
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
        assert!(feed(&an, &mut st, &a4, "discovery-burst").is_none());
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
                &[raised(&a1, "root-activity", Severity::High)],
            ),
            feed(&an, &mut st, &a2, "credential-access-burst"),
            feed(&an, &mut st, &a3, "vm-creation"),
        ];
        assert_eq!(sequences(&found), 0, "each more than an hour from the last");
        // Two within the hour now (unusual-region at 4000 is too old; vm-creation at 8000 and
        // this one): a third that is not about this activity's principal acting does not
        // complete them.
        let a4 = activity(8_100, 4);
        assert!(feed(&an, &mut st, &a4, "discovery-burst").is_none());
        let a5 = activity(8_200, 5);
        // Decided now about another activity (held, released by this one).
        let other = activity(8_050, 99);
        let about_other = raised(&other, "dormant-principal", Severity::High);
        // About a group of principals (a custom threshold by source address).
        let mut group = raised(&a5, "many-users-one-ip", Severity::High);
        group.entity.kind = "group".into();
        // About another principal, with this activity in its evidence.
        let mut someone = raised(&a5, "credentials-for-another-user", Severity::High);
        someone.principal = activity_of("mallory", 8_200, 5, false).principal.into();
        let low = raised(&a5, "security-group-changes", Severity::Low);
        assert!(an
            .sequence(&mut st, &a5, &[about_other, group, someone, low])
            .is_none());
        // A refused call counts for nothing, though anyone may cause one in the actor's
        // name (a failed sign-in names whoever was typed).
        let refused = activity_of("ci", 8_300, 6, true);
        assert!(an
            .sequence(
                &mut st,
                &refused,
                &[raised(&refused, "root-activity", Severity::High)]
            )
            .is_none());
        // Replayed (the same activity and alert again): still two policies within the hour.
        assert!(feed(&an, &mut st, &a4, "discovery-burst").is_none());
        // The third about this principal does.
        let a7 = activity(8_400, 7);
        assert!(feed(&an, &mut st, &a7, "anonymous-ip").is_some());
    }

    #[test]
    fn verdicts_that_wait_for_the_organization_never_count() {
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let mut st = PrincipalState::default();
        let a: Vec<Activity> = (0..3).map(|i| activity(i * 60, i as u32)).collect();
        let found = [
            feed(&an, &mut st, &a[0], "infrequent-country"),
            feed(&an, &mut st, &a[1], "unusual-region"),
            feed(&an, &mut st, &a[2], "vm-creation"),
        ];
        assert_eq!(sequences(&found), 0);
    }

    #[test]
    fn within_an_hour_means_one_hour_whatever_the_order_read() {
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let mut st = PrincipalState::default();
        // 7,000 seconds apart, then a record read late between them: no hour holds all three.
        let (early, late, middle) = (activity(0, 1), activity(7_000, 2), activity(3_500, 3));
        let found = [
            feed(&an, &mut st, &early, "root-activity"),
            feed(&an, &mut st, &late, "vm-creation"),
            feed(&an, &mut st, &middle, "credential-access-burst"),
        ];
        assert_eq!(sequences(&found), 0);
        // Within one hour, read out of order: one.
        let mut st = PrincipalState::default();
        let (b1, b2, b3) = (activity(3_000, 1), activity(0, 2), activity(1_500, 3));
        let found = [
            feed(&an, &mut st, &b1, "root-activity"),
            feed(&an, &mut st, &b2, "vm-creation"),
            feed(&an, &mut st, &b3, "credential-access-burst"),
        ];
        assert_eq!(sequences(&found), 1);
    }

    #[test]
    fn actions_only_when_every_detection_is_the_named_principals() {
        let cfg = AnomalyConfig {
            attack_sequence: DetectionConfig {
                actions: Some(vec![ActionKind::Notify, ActionKind::RequireSignIn]),
                ..Default::default()
            },
            ..Default::default()
        };
        let an = Anomalies::new(cfg, true);
        let kinds = |alert: &Alert| alert.actions.iter().map(|r| r.kind).collect::<Vec<_>>();
        // All three the same principal's: the actions configured.
        let mut st = PrincipalState::default();
        let a: Vec<Activity> = (0..3).map(|i| activity(i * 60, i as u32)).collect();
        let mut last = None;
        for (a, p) in a
            .iter()
            .zip(["anonymous-ip", "discovery-burst", "vm-creation"])
        {
            last = feed(&an, &mut st, a, p);
        }
        let Some(alert) = last else {
            panic!("three detections raise attack-sequence");
        };
        assert!(
            kinds(&alert).contains(&ActionKind::RequireSignIn),
            "{:?}",
            kinds(&alert)
        );
        // One of them through another principal of the same actor (another session): the
        // alert names this principal, and only notifies.
        let mut st = PrincipalState::default();
        let other = activity_of("ci-other-session", 0, 10, false);
        feed(&an, &mut st, &other, "anonymous-ip");
        let mut last = None;
        for (i, p) in ["discovery-burst", "vm-creation"].into_iter().enumerate() {
            let a = activity(60 * (i as i64 + 1), 20 + i as u32);
            last = feed(&an, &mut st, &a, p);
        }
        let Some(alert) = last else {
            panic!("three detections of one actor raise attack-sequence");
        };
        assert_eq!(kinds(&alert), [ActionKind::Notify]);
        assert!(
            alert.evidence.summary.contains("other sessions"),
            "{}",
            alert.evidence.summary
        );
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
                .map(|(a, p)| feed(&an, &mut st, a, p))
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
