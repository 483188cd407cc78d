//! The organization-wide detections against detect's facts: activity by a terminated user
//! (deleted, console access removed, key deactivated — learned from the trail — or listed),
//! including a termination learned only after the principal acted; and an unusual region.

use trailguard_common::contract::{
    ActionKind, Alert, Entity, Principal, RequestedAction, Severity,
};
use trailguard_common::Activity;

use super::{Anomalies, PrincipalState};
use crate::classify::acts_itself;
use crate::policy::{security_team, AlertBuilder};
use trailguard_common::contract::kinds;

impl Anomalies {
    /// Activity by a terminated user, against `facts`, for `a`'s principal. (The unusual
    /// region is judged by the detector, which may have to wait for facts: see
    /// [`Self::judges_region`].)
    pub fn observe_facts(
        &self,
        st: &mut PrincipalState,
        facts: &crate::facts::Facts,
        a: &Activity,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let t = a.event_time.timestamp();
        let d = &self.cfg.terminated_user;
        // A prompt (a password asked for) is anyone typing the name; a failed sign-in is
        // still told (someone tries a leaver's password), its actions disarmed.
        if acts_itself(a) && !crate::classify::is_prompt(a) && self.on(d, a) {
            if let Some((summary, severity, termination)) =
                crate::facts::terminated(facts, &self.cfg.terminated_users, a)
            {
                if self.may_fire(st, "terminated".into(), t) {
                    let mut alert = self.alert(
                        a,
                        &crate::facts::TERMINATED_USER,
                        d,
                        severity,
                        summary,
                        vec![a.id.clone()],
                        ("Persistence", "T1078.004", "Valid Accounts: Cloud Accounts"),
                    );
                    if let Some(termination) = termination {
                        alert.id = termination_alert_id(&termination);
                    }
                    out.push(alert);
                }
            }
        }
        out
    }

    /// Whether the unusual-region detection judges `a` (a resource created, by its caller,
    /// with the detection on for it).
    pub fn judges_region(&self, a: &Activity) -> bool {
        crate::facts::is_region_candidate(a)
            && acts_itself(a)
            && self.on(&self.cfg.unusual_region, a)
    }

    /// [`crate::facts::region_verdict`] with this detection's learning period.
    pub fn region_verdict(
        &self,
        facts: &crate::facts::Facts,
        a: &Activity,
        complete_through: i64,
    ) -> crate::facts::RegionVerdict {
        let learning = self.cfg.learning_period.as_secs() as i64;
        crate::facts::region_verdict(facts, learning, a, complete_through)
    }

    /// The unusual-region alert for `a` (found unusual, `why`), unless one for the same
    /// region was raised about the principal within the suppression period.
    pub fn unusual_region(
        &self,
        st: &mut PrincipalState,
        a: &Activity,
        why: String,
    ) -> Option<Alert> {
        let region = a.region.clone().unwrap_or_default();
        if !self.may_fire(st, format!("region|{region}"), a.event_time.timestamp()) {
            return None;
        }
        Some(self.alert(
            a,
            &crate::facts::UNUSUAL_REGION,
            &self.cfg.unusual_region,
            Severity::Medium,
            why,
            vec![a.id.clone()],
            (
                "Defense Evasion",
                "T1535",
                "Unused/Unsupported Cloud Regions",
            ),
        ))
    }

    /// A termination learned after this partition saw the principal act past it (the
    /// termination was on another partition, read later): the alert, on the latest activity.
    pub fn retro_terminated(
        &self,
        st: &mut PrincipalState,
        principal_key: &str,
        subject: &str,
        fact_key: &str,
        fact: &crate::facts::Fact,
    ) -> Option<Alert> {
        let d = &self.cfg.terminated_user;
        if !d.enabled || st.last_seen <= fact.time || st.last_id.is_empty() {
            return None;
        }
        // A deactivated key counts only if it is the key the principal last used.
        if let Some(key) = fact_key.strip_prefix("key:") {
            if st.last_key.as_bytes() != key.as_bytes() {
                return None;
            }
        }
        if !self.may_fire(st, "terminated".into(), st.last_seen) {
            return None;
        }
        let (account, name) = subject.split_once('/').unwrap_or(("", subject));
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(st.last_seen, 0)?;
        let summary = format!(
            "{name} acted after its credentials were terminated ({}: {}); seen last at {}",
            fact_key
                .replace("key:", "access key ")
                .replace("user:", "user "),
            fact.how,
            time.format("%Y-%m-%d %H:%M UTC")
        );
        let actions = d
            .actions
            .as_deref()
            .unwrap_or(&[ActionKind::Notify])
            .iter()
            .map(|&kind| RequestedAction {
                kind,
                target: match kind {
                    ActionKind::Notify => security_team(),
                    _ => trailguard_common::contract::Target {
                        kind: kinds::PRINCIPAL.into(),
                        id: principal_key.into(),
                        account_id: Some(account.into()),
                        grantee: None,
                    },
                },
            })
            .collect();
        let principal = Principal {
            kind: "IAMUser".into(),
            arn: Some(principal_key.into()),
            name: Some(name.into()),
            account_id: Some(account.into()),
            ..Principal::default()
        };
        let alert = AlertBuilder::at(
            &crate::facts::TERMINATED_USER,
            time,
            d.severity.unwrap_or(Severity::High),
        )
        .principal(principal, Some(account.into()))
        .entity(Entity {
            kind: kinds::PRINCIPAL.into(),
            id: principal_key.into(),
        })
        .evidence(vec![st.last_id.to_string()], summary)
        .mitre(("Persistence", "T1078.004", "Valid Accounts: Cloud Accounts"))
        .actions(actions)
        .id(termination_alert_id(&format!("{fact_key}@{}", fact.time)));
        Some(alert)
    }
}

/// The id of the terminated-user alert about one termination (`KEY@TIME` of its fact): the
/// same whether an activity after it or a look back found it.
fn termination_alert_id(termination: &str) -> String {
    trailguard_common::contract::stable_id([crate::facts::TERMINATED_USER.id, termination])
}
