//! The rate detections — unusual administrative activity, storage deletions, instances
//! terminated, instances launched, failed sign-ins — against the actor's hourly baselines.

use trailguard_common::contract::{Alert, Severity};

use super::{
    Anomalies, PrincipalState, Seen, Sensitivity, Who, FAILED_LOGINS, STORAGE_DELETION,
    UNUSUAL_ADMIN, UNUSUAL_DOWNLOAD, VM_CREATION, VM_DELETION,
};
use crate::classify::{downloaded_object, rate_units, RateKind};
use trailguard_common::contract::ActorKind;

impl Anomalies {
    /// The rates: count this activity's units, alert when a sliding hour passes the
    /// learned threshold.
    pub(super) fn rates(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        closed: &mut Vec<(usize, u32)>,
        out: &mut Vec<Alert>,
    ) {
        let a = seen.a;
        let units = rate_units(a, self.cfg.bucket_deletion_weight);
        let detections = [
            (
                RateKind::Admin,
                &self.cfg.unusual_admin_activity,
                &UNUSUAL_ADMIN,
                "administrative calls",
                ("Persistence", "T1098", "Account Manipulation"),
            ),
            (
                RateKind::Deletion,
                &self.cfg.storage_deletion,
                &STORAGE_DELETION,
                "S3 deletions",
                ("Impact", "T1485", "Data Destruction"),
            ),
            (
                RateKind::VmDeletion,
                &self.cfg.vm_deletion,
                &VM_DELETION,
                "instances terminated",
                ("Impact", "T1485", "Data Destruction"),
            ),
            (
                RateKind::VmCreation,
                &self.cfg.vm_creation,
                &VM_CREATION,
                "instances launched",
                ("Impact", "T1496", "Resource Hijacking"),
            ),
        ];
        for (kind, d, meta, what, mitre) in detections {
            let floor = rate_floor(kind, &self.cfg.tuning);
            let rate = &mut st.rates[kind as usize];
            let n = units[kind as usize];
            // A learned actor's closed hour teaches its peer groups.
            if n > 0 && seen.learned && rate.hour != 0 && super::unix_hour(seen.t) > rate.hour {
                closed.push((kind as usize, rate.hour_count));
            }
            let peers = seen
                .peers
                .map(|(p, group)| (&p[kind as usize], group))
                .filter(|(p, _)| p.hour_count >= super::PEER_HOURS);
            self.judge_rate(rate, n, floor, peers, d, meta, what, mitre, seen, out);
        }
        // Failed sign-ins: kept only for the actors that ever failed one.
        let failed = failed_signin(a);
        if failed || st.signin_failures.is_some() {
            let floor = (self.cfg.tuning.failed_login_floor, 2.0, 0.5);
            let rate = st.signin_failures.get_or_insert_with(Default::default);
            self.judge_rate(
                rate,
                u32::from(failed),
                floor,
                None,
                &self.cfg.failed_logins,
                &FAILED_LOGINS,
                "failed sign-ins",
                ("Credential Access", "T1110", "Brute Force"),
                seen,
                out,
            );
        }
        // Objects read: kept only for the actors that read any (no peers: the volume a job
        // reads is its own).
        let t = seen.t;
        if st.reads_since == 0 {
            st.reads_since = super::unix_hour(t).max(1);
        }
        let object = downloaded_object(a);
        if object.is_some() || st.downloads.is_some() {
            let d = st.downloads.get_or_insert_with(Default::default);
            let read = object.map_or(0, |o| d.count(o));
            // An actor known before its reads were counted (a baseline of a version without
            // this detection) learns them for a learning period first: a job's nightly
            // thousands are not a burst. People are judged at once; every other actor as
            // any rate is — while it is new, against the floor times `learning_factor`, four
            // times more for a role (a new job's first night).
            let counted_for = (i64::from(super::unix_hour(t)) - i64::from(st.reads_since)) * 3600;
            let known_before = seen.learned
                && counted_for < self.cfg.learning_period.as_secs() as i64
                && !matches!(a.actor.kind, ActorKind::Person | ActorKind::Root);
            if known_before {
                if read > 0 {
                    d.rate.add(t, read, &a.id);
                } else {
                    d.rate.settle(t);
                }
            } else {
                let tuning = &self.cfg.tuning;
                let new_role = !seen.learned && a.actor.kind == ActorKind::Role;
                let floor = tuning
                    .download_floor
                    .saturating_mul(if new_role { 4 } else { 1 });
                let before = out.len();
                self.judge_rate(
                    &mut d.rate,
                    read,
                    (floor, 4.0, 0.4),
                    None,
                    &self.cfg.unusual_download,
                    &UNUSUAL_DOWNLOAD,
                    "S3 objects read",
                    ("Exfiltration", "T1530", "Data from Cloud Storage"),
                    seen,
                    out,
                );
                if out.len() > before {
                    if let (Some(alert), Some(why)) =
                        (out.last_mut(), download_escalation(st, seen))
                    {
                        alert.severity = Severity::High;
                        alert.evidence.summary.push_str(&format!(", {why}"));
                    }
                }
            }
        }
    }

    /// Counts `n` units of one rate; alerts when its sliding hour reaches the threshold: the
    /// learned one, or while the actor learns the floor (`floor`: at medium, and the low and
    /// high scales) times `learning_factor`.
    #[allow(clippy::too_many_arguments)]
    fn judge_rate(
        &self,
        rate: &mut super::Rate,
        n: u32,
        floor: (u32, f32, f32),
        peers: Option<(&super::Rate, &str)>,
        d: &super::DetectionConfig,
        meta: &crate::policy::PolicyMeta<'static>,
        what: &str,
        mitre: (&str, &str, &str),
        seen: &Seen<'_>,
        out: &mut Vec<Alert>,
    ) {
        let Seen { a, t, learned, .. } = *seen;
        if n == 0 {
            rate.settle(t);
            return;
        }
        let (floor, sigmas, factor) = rate_params(floor, self.sens(d));
        // While it learns, an actor has no usual hours of its own: it is judged against its
        // peers' hours (the role its sessions come from, else its account's people or users)
        // when they have enough, else against what no one in the organization should do in an
        // hour, the floor raised by `learning_factor` — either way a ten-minute-old
        // identity's destructive burst alerts.
        let threshold = match (learned, peers) {
            (true, _) => rate.threshold(floor, sigmas, factor),
            (false, Some((peers, _))) => peers.threshold(floor, sigmas, factor),
            (false, None) => floor.saturating_mul(self.cfg.learning_factor.max(1)),
        };
        let usual = rate.mean;
        let count = rate.add(t, n, &a.id);
        if count >= threshold && t >= i64::from(rate.quiet_until) && self.on(d, a) {
            rate.quiet_until = super::narrow_second(t + 3600);
            let who = Who(a);
            let evidence: Vec<String> = rate.evidence.iter().map(ToString::to_string).collect();
            let summary = if learned {
                format!(
                    "{who}: {count} {what} within an hour (usually {usual:.1} an hour; threshold {threshold})"
                )
            } else {
                match peers {
                    Some((peers, group)) => format!(
                        "{who}: {count} {what} within an hour, while still new (its peers in {} usually {:.1} an hour; threshold {threshold})",
                        group.trim_start_matches("peers:"),
                        peers.mean
                    ),
                    None => format!(
                        "{who}: {count} {what} within an hour, while still new (no baseline of its own yet; the organization's threshold {threshold})"
                    ),
                }
            };
            let hour = t.div_euclid(3600).to_string();
            let mut alert = self.alert(a, meta, d, Severity::Medium, summary, evidence, mitre);
            alert.id = trailguard_common::contract::stable_id([meta.id, &a.actor_key(), &hour]);
            out.push(alert);
        }
    }
}

/// Why a burst of objects read is high rather than medium: it comes from an address the
/// intelligence lists name (anonymising, malicious, a risky network), or from a hosting
/// network that is not AWS's and that the actor — one with a baseline — first used within the
/// hour: stolen credentials on a rented server. A person's new home or mobile network, or an
/// instance in AWS, leaves it medium.
fn download_escalation(st: &PrincipalState, seen: &Seen<'_>) -> Option<String> {
    let e = &seen.a.enrichment;
    let listed = e.ip_categories.iter().find(|c| {
        crate::enrich::ANONYMISING.contains(&c.as_str())
            || matches!(c.as_str(), "malicious" | "risky-network")
    });
    if let Some(listed) = listed {
        return Some(format!("from an address listed as {listed}"));
    }
    let network = e.network.as_ref()?;
    let hosting = e.ip_categories.iter().any(|c| c == "hosting");
    if !seen.learned || !hosting || crate::exposure::on_aws_network(seen.a) {
        return None;
    }
    let key = super::behaviour::network(seen.a)?;
    let fresh = st
        .networks
        .iter()
        .find(|(v, _)| *v == key)
        .is_none_or(|(_, first)| seen.t - first < super::behaviour::CHAIN_SECS);
    fresh.then(|| {
        // The organization's name is the AS database's (configuration, not the record's).
        let name = network
            .organization
            .as_deref()
            .map(|o| format!(" {o}"))
            .unwrap_or_default();
        format!(
            "from a hosting network it first used within the hour (AS{}{name})",
            network.asn
        )
    })
}

/// A failed sign-in to the console or to Identity Center's portal (a wrong password or MFA
/// code is a failed `CredentialVerification` there) by a named actor (a failed `ConsoleLogin`
/// for a user name that does not exist is logged with the name hidden: no one's own failure
/// rate).
fn failed_signin(a: &trailguard_common::Activity) -> bool {
    a.event_source == "signin.amazonaws.com"
        && matches!(
            a.event_name.as_str(),
            "ConsoleLogin" | "UserAuthentication" | "CredentialVerification"
        )
        && !a.outcome.is_success()
        && !a
            .principal
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("HIDDEN_DUE_TO_SECURITY_REASONS"))
}

/// The floor of `kind` at medium, and its scales at low and high (admin and VMs ×2 / ×0.5,
/// deletions ×4 / ×0.4).
fn rate_floor(kind: RateKind, t: &super::AnomalyTuning) -> (u32, f32, f32) {
    match kind {
        RateKind::Admin => (t.admin_floor, 2.0, 0.5),
        RateKind::Deletion => (t.deletion_floor, 4.0, 0.4),
        RateKind::VmDeletion | RateKind::VmCreation => (t.vm_floor, 2.0, 0.5),
    }
}

/// Floors and spreads per sensitivity: the tuned floor at `medium`, scaled for `low` and
/// `high` by `floor`'s scales.
fn rate_params(floor: (u32, f32, f32), s: Sensitivity) -> (u32, f32, f32) {
    let (medium, low, high) = floor;
    let scale = match s {
        Sensitivity::Low => low,
        Sensitivity::Medium => 1.0,
        Sensitivity::High => high,
    };
    let floor = ((medium as f32 * scale).round() as u32).max(1);
    let (sigmas, factor) = match s {
        Sensitivity::Low => (8.0, 5.0),
        Sensitivity::Medium => (5.0, 3.0),
        Sensitivity::High => (3.0, 2.0),
    };
    (floor, sigmas, factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default tuning gives the documented floors at every sensitivity, and a tuned floor
    /// moves them all.
    #[test]
    fn floors_follow_the_tuning() {
        let t = super::super::AnomalyTuning::default();
        let floors = |kind| {
            [Sensitivity::Low, Sensitivity::Medium, Sensitivity::High]
                .map(|s| rate_params(rate_floor(kind, &t), s).0)
        };
        assert_eq!(floors(RateKind::Admin), [100, 50, 25]);
        assert_eq!(floors(RateKind::Deletion), [200, 50, 20]);
        assert_eq!(floors(RateKind::VmDeletion), [20, 10, 5]);
        assert_eq!(floors(RateKind::VmCreation), [20, 10, 5]);
        let tuned = super::super::AnomalyTuning { vm_floor: 3, ..t };
        assert_eq!(
            rate_params(
                rate_floor(RateKind::VmDeletion, &tuned),
                Sensitivity::Medium
            )
            .0,
            3
        );
        assert_eq!(
            rate_params(rate_floor(RateKind::VmDeletion, &tuned), Sensitivity::High).0,
            2
        );
    }
}
