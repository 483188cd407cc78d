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
    /// The organization-wide detections (terminated user, unusual region) against `facts`,
    /// for `a`'s principal.
    pub fn observe_facts(
        &self,
        st: &mut PrincipalState,
        facts: &crate::facts::Facts,
        a: &Activity,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let t = a.event_time.timestamp();
        let d = &self.cfg.terminated_user;
        if acts_itself(a) && self.on(d, a) {
            if let Some((summary, severity)) =
                crate::facts::terminated(facts, &self.cfg.terminated_users, a)
            {
                if self.may_fire(st, "terminated".into(), t) {
                    out.push(self.alert(
                        a,
                        &crate::facts::TERMINATED_USER,
                        d,
                        severity,
                        summary,
                        vec![a.id.clone()],
                        ("Persistence", "T1078.004", "Valid Accounts: Cloud Accounts"),
                    ));
                }
            }
        }
        let d = &self.cfg.unusual_region;
        if acts_itself(a) && self.on(d, a) {
            let learning = self.cfg.learning_period.as_secs() as i64;
            if let Some(summary) = crate::facts::unusual_region(facts, learning, a) {
                let region = a.region.clone().unwrap_or_default();
                if self.may_fire(st, format!("region|{region}"), t) {
                    out.push(self.alert(
                        a,
                        &crate::facts::UNUSUAL_REGION,
                        d,
                        Severity::Medium,
                        summary,
                        vec![a.id.clone()],
                        (
                            "Defense Evasion",
                            "T1535",
                            "Unused/Unsupported Cloud Regions",
                        ),
                    ));
                }
            }
        }
        out
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
            if st.last_key != key {
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
        .evidence(vec![st.last_id.clone()], summary)
        .mitre(("Persistence", "T1078.004", "Valid Accounts: Cloud Accounts"))
        .actions(actions)
        .id_from(&[st.last_id.as_str()]);
        Some(alert)
    }
}
