//! An actor acting again after a long silence: the dormant-credential case. A person who left,
//! an access key nobody rotated, a root user unused for months — stolen credentials are often
//! exactly these. Judged against the actor's baseline, which is kept (`state_ttl`) well past
//! `dormant_after`, so a returning actor is neither forgotten nor silently re-learned.

use trailguard_common::contract::{ActorKind, Alert, Severity};

use super::{Anomalies, PrincipalState, Seen, Who, DORMANT_PRINCIPAL};
use crate::classify::acts_itself;

/// Whether the actor keyed `key` is one `dormant-principal` judges — a user, person, root,
/// federated user or other account (not a web-identity subject, a role acting as a workload,
/// a service, `anonymous` or a peer group) — told by its key, as a pruned actor keeps no
/// activity to tell it by (the keys of [`trailguard_common::actor`]).
pub(crate) fn may_be_dormant(key: &str) -> bool {
    const PEOPLE: [&str; 3] = ["person:", "identity-center:", "account:"];
    if PEOPLE.iter().any(|p| key.starts_with(p)) {
        return true;
    }
    key.starts_with("arn:")
        && (key.contains(":user/") || key.ends_with(":root") || key.contains(":federated-user/"))
}

impl Anomalies {
    /// Raises `dormant-principal` when `seen` is the actor's first activity after
    /// `dormant_after` of silence; `previous` is when it last acted before (unix seconds; 0 for
    /// an actor never seen). Workloads (roles acting as such, AWS services) are not judged:
    /// a job that runs once a quarter is not a returning person.
    pub(super) fn dormant(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        previous: i64,
        out: &mut Vec<Alert>,
    ) {
        let Seen { a, t, .. } = *seen;
        let d = &self.cfg.dormant_principal;
        let silence = t - previous;
        let person_like = matches!(
            a.actor.kind,
            ActorKind::User
                | ActorKind::Person
                | ActorKind::Root
                | ActorKind::Federated
                | ActorKind::Account
        );
        // A web-identity subject is a workload's (CI, Kubernetes), however it is keyed.
        if previous == 0
            || silence < self.cfg.dormant_after.as_secs() as i64
            || !person_like
            || a.actor.basis == "web-identity"
            || !acts_itself(a)
            || !self.on(d, a)
            || !self.may_fire(st, "dormant".into(), t)
        {
            return;
        }
        let days = silence / 86_400;
        let severity = if a.actor.kind == ActorKind::Root {
            Severity::High
        } else {
            Severity::Medium
        };
        let summary = format!(
            "{} acted again after {days} days without any activity: {}",
            Who(a),
            a.event_name
        );
        out.push(self.alert(
            a,
            &DORMANT_PRINCIPAL,
            d,
            severity,
            summary,
            vec![a.id.clone()],
            (
                "Initial Access",
                "T1078.004",
                "Valid Accounts: Cloud Accounts",
            ),
        ));
    }
}

#[cfg(test)]
mod key_tests {
    use super::may_be_dormant;

    #[test]
    fn the_actors_that_may_be_dormant_by_their_keys() {
        for key in [
            "arn:aws:iam::111111111111:user/alice",
            "arn:aws-us-gov:iam::111111111111:root",
            "arn:aws:sts::111111111111:federated-user/bob",
            "person:alice@example.com",
            "identity-center:94482488-3041-7026-18f3-be45837cd0e4",
            "account:999999999999",
        ] {
            assert!(may_be_dormant(key), "{key}");
        }
        for key in [
            "arn:aws:iam::111111111111:role/deploy",
            "web-identity:repo:org/app:ref:refs/heads/main",
            "service:ec2.amazonaws.com",
            "anonymous",
            "peers:org",
            "111111111111/Unknown",
        ] {
            assert!(!may_be_dormant(key), "{key}");
        }
    }
}
