//! Admin console sign-in failures: bursts of failed `ConsoleLogin`s per principal and per
//! source IP (password spraying), on event time. A burst's decisions depend only on its own
//! activities, so replaying from the first offset of every open burst rebuilds the same bursts
//! and the same alert ids; [`settle`] keeps the committed offset out of closed bursts (see
//! the detector module). Per source IP, the count runs over the sign-in failures topic, keyed
//! by address ([`SourceIpFailures`]), so a spray across principals on every partition is
//! counted once.

use std::collections::{HashMap, VecDeque};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use trailguard_common::contract::{ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::Activity;

use crate::policy::{
    advances_watermark, requested, AlertBuilder, Offset, PolicyMeta, RETAIN_OFFSETS,
};
use trailguard_common::contract::kinds;

/// As [`RETAIN_OFFSETS`], on the sign-in failures topic. As large: that topic interleaves
/// the activities partitions as their instances forward them, and while they catch up (a
/// backfill, a rebalance) one may run hours of event time ahead of another. A smaller count
/// closed an address's burst before its lagging failures arrived, which then opened a second
/// burst with another id (the two-instance test caught it at 16).
pub const COUNTER_RETAIN_OFFSETS: Offset = RETAIN_OFFSETS;

/// Settings of the sign-in failures policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigninFailuresConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Failed sign-ins within `window` that raise an alert.
    pub threshold: usize,
    /// Sliding window, on event time (e.g. `15m`).
    #[serde(with = "humantime_serde")]
    pub window: StdDuration,
    /// Count per principal.
    pub per_principal: bool,
    /// Count per source IP (catches one IP trying many users: password spraying).
    pub per_source_ip: bool,
    /// Governance actions to request for a principal's burst (default: notify the security
    /// team). A failed sign-in is anyone's to cause, so only `notify` is requested unless the
    /// policy is listed in `act_on_failed_activity`; a source address's burst only notifies.
    pub actions: Vec<ActionKind>,
}

impl Default for SigninFailuresConfig {
    fn default() -> Self {
        SigninFailuresConfig {
            enabled: true,
            severity: Severity::Medium,
            threshold: 5,
            window: StdDuration::from_secs(15 * 60),
            per_principal: true,
            per_source_ip: true,
            actions: vec![ActionKind::Notify],
        }
    }
}

/// Admin console sign-in failures.
pub const SIGNIN_FAILURES: PolicyMeta<'static> = PolicyMeta {
    id: "console-signin-failures",
    name: "Admin console sign-in failures",
    kind: AlertKind::ActivityPolicy,
};

/// The offset that may be committed given the first offset an open window needs: never inside
/// a closed burst (whose tail alone would replay as a shorter, different burst), never back.
pub(crate) fn settle(
    first_open: Offset,
    closed: &mut Vec<(Offset, Offset)>,
    committed: &mut Offset,
) -> Offset {
    let mut safe = first_open;
    // Move to the start of a closed burst it falls in (repeat: spans may chain).
    loop {
        let inside = closed
            .iter()
            .filter(|(first, last)| *first < safe && safe <= *last)
            .map(|(first, _)| *first)
            .min();
        match inside {
            Some(first) => safe = first,
            None => break,
        }
    }
    closed.retain(|(_, last)| *last >= safe);
    *committed = (*committed).max(safe);
    *committed
}

/// Whether `activity` goes to the per-source-IP count: a failed console sign-in from a known
/// address, with that count on.
pub fn counts_per_source_ip(cfg: &SigninFailuresConfig, activity: &Activity) -> bool {
    cfg.enabled && cfg.per_source_ip && failed_signin(activity) && activity.source_ip.is_some()
}

/// A failed sign-in: to the console (`ConsoleLogin`), or to Identity Center's portal, where a
/// wrong password or MFA code is a failed `CredentialVerification` (the portal writes no
/// `UserAuthentication` unless every factor passed).
fn failed_signin(activity: &Activity) -> bool {
    let signin = match activity.event_name.as_str() {
        "ConsoleLogin" => true,
        "CredentialVerification" => activity.event_source == "signin.amazonaws.com",
        _ => false,
    };
    signin && !activity.outcome.is_success()
}

/// Whom a failed sign-in tried, and how to name it: the principal's ARN when the record has
/// one, else its actor — an IAM user's failures are written without an ARN, Identity
/// Center's name the user by id or user name only — so a burst's entity is the id its
/// baselines and other alerts use (`arn:…:user/NAME`, `identity-center:ID`, `person:NAME`).
fn tried(activity: &Activity) -> (String, String) {
    let p = &activity.principal;
    if p.arn.is_some() {
        return (p.key(), p.display());
    }
    let key = activity.actor_key().into_owned();
    let name = p.name.clone().unwrap_or_else(|| key.clone());
    (key, name)
}

/// Failed console sign-ins counted per source IP over one partition of the sign-in failures
/// topic, which is keyed by address: every failure from one address reaches the same counter,
/// however the activities topic spreads the principals it tried. Its state is rebuilt by
/// replay like a [`crate::detector::Detector`]'s bursts (see the module notes), with offsets of its own.
///
/// Closed bursts are expired at every record (the topic is quiet) once the watermark has
/// passed them and [`COUNTER_RETAIN_OFFSETS`] records have followed their last. On a quiet
/// topic the committed offset can therefore wait at an old burst for a long time: a restart
/// then replays from there and publishes that burst's alert again, with the same id.
pub struct SourceIpFailures {
    signin: SigninFailures,
    lateness: Duration,
    max_event_time: Option<DateTime<Utc>>,
    closed: Vec<(Offset, Offset)>,
    committed: Offset,
}

impl SourceIpFailures {
    /// A counter with the sign-in failures policy's settings (per source IP only).
    pub fn new(cfg: &SigninFailuresConfig, lateness: std::time::Duration) -> Self {
        Self::with_retention(cfg, lateness, COUNTER_RETAIN_OFFSETS)
    }

    /// As [`Self::new`], keeping closed-in-event-time bursts for `retain_offsets` offsets.
    pub fn with_retention(
        cfg: &SigninFailuresConfig,
        lateness: std::time::Duration,
        retain_offsets: Offset,
    ) -> Self {
        let mut cfg = cfg.clone();
        cfg.per_principal = false;
        let lateness = Duration::from_std(lateness).unwrap_or(Duration::MAX);
        SourceIpFailures {
            signin: SigninFailures::new(cfg, lateness, retain_offsets),
            lateness,
            max_event_time: None,
            closed: Vec::new(),
            committed: 0,
        }
    }

    /// Counts one failure read at `offset`; returns the alert it raises, if any.
    pub fn observe(&mut self, activity: &Activity, offset: Offset) -> Vec<Alert> {
        let alerts = self.signin.observe(activity, offset, &mut self.closed);
        if advances_watermark(self.max_event_time, activity.event_time) {
            self.max_event_time = Some(activity.event_time);
        }
        if let Some(max) = self.max_event_time {
            self.signin
                .expire(max - self.lateness, offset, &mut self.closed);
        }
        alerts
    }

    /// As [`crate::detector::Detector::safe_offset`].
    pub fn safe_offset(&mut self, next: Offset) -> Offset {
        let first_open = self.signin.first_open_offset().unwrap_or(next).min(next);
        settle(first_open, &mut self.closed, &mut self.committed)
    }

    /// Open bursts.
    pub fn state_size(&self) -> usize {
        self.signin.bursts.len()
    }
}

/// Which count a burst belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum BurstKey {
    Principal(String),
    SourceIp(String),
}

/// Failures of one key that followed each other within the window.
#[derive(Debug)]
pub(crate) struct Burst {
    /// Sorted by time; older than the window (plus lateness) pruned.
    pub(crate) failures: VecDeque<Failure>,
    /// Id of the burst's first activity: names the alert, so a replay raises the same id.
    first_activity: String,
    first_offset: Offset,
    last_offset: Offset,
    max_time: DateTime<Utc>,
    /// Event time of the failure that raised this burst's alert.
    fired_at: Option<DateTime<Utc>>,
}

/// Admin console sign-in failures: `threshold` failed `ConsoleLogin`s for one principal, or
/// from one source IP, within `window`; one alert per burst. A burst that goes on past the
/// window of its alert rolls over into a new one (an attack that does not stop alerts again,
/// and its state and the commit offset do not stay pinned to its start).
pub(crate) struct SigninFailures {
    pub(crate) cfg: SigninFailuresConfig,
    window: Duration,
    lateness: Duration,
    retain_offsets: Offset,
    pub(crate) bursts: HashMap<BurstKey, Burst>,
}

impl SigninFailures {
    pub(crate) fn new(
        cfg: SigninFailuresConfig,
        lateness: Duration,
        retain_offsets: Offset,
    ) -> Self {
        let window = Duration::from_std(cfg.window).unwrap_or(Duration::MAX);
        SigninFailures {
            cfg,
            window,
            lateness,
            retain_offsets,
            bursts: HashMap::new(),
        }
    }

    pub(crate) fn observe(
        &mut self,
        activity: &Activity,
        offset: Offset,
        closed: &mut Vec<(Offset, Offset)>,
    ) -> Vec<Alert> {
        if !self.cfg.enabled || !failed_signin(activity) {
            return Vec::new();
        }
        let mut keys = Vec::with_capacity(2);
        if self.cfg.per_principal {
            keys.push(BurstKey::Principal(tried(activity).0));
        }
        if self.cfg.per_source_ip {
            if let Some(ip) = activity.source_ip {
                keys.push(BurstKey::SourceIp(ip.to_string()));
            }
        }
        keys.into_iter()
            .filter_map(|key| self.observe_key(key, activity, offset, closed))
            .collect()
    }

    fn observe_key(
        &mut self,
        key: BurstKey,
        activity: &Activity,
        offset: Offset,
        closed: &mut Vec<(Offset, Offset)>,
    ) -> Option<Alert> {
        let t = activity.event_time;
        let window = self.window;
        let starts_new = self
            .bursts
            .get(&key)
            .is_none_or(|b| t > b.max_time + window || b.fired_at.is_some_and(|f| t > f + window));
        if starts_new {
            if let Some(old) = self.bursts.remove(&key) {
                closed.push((old.first_offset, old.last_offset));
            }
            self.bursts.insert(
                key.clone(),
                Burst {
                    failures: VecDeque::new(),
                    first_activity: activity.id.clone(),
                    first_offset: offset,
                    last_offset: offset,
                    max_time: t,
                    fired_at: None,
                },
            );
        }
        let burst = self.bursts.get_mut(&key)?;
        // A replayed or duplicated activity counts once.
        if burst.failures.iter().any(|f| f.id == activity.id) {
            return None;
        }
        let at = burst.failures.partition_point(|f| f.time <= t);
        let failure = Failure {
            time: t,
            id: activity.id.clone(),
            principal: match &key {
                BurstKey::SourceIp(_) => tried(activity).0,
                BurstKey::Principal(_) => String::new(),
            },
        };
        burst.failures.insert(at, failure);
        burst.last_offset = burst.last_offset.max(offset);
        burst.max_time = burst.max_time.max(t);
        // Failures that can no longer share a window with a new one are forgotten.
        let horizon = burst.max_time - window - self.lateness;
        while burst.failures.front().is_some_and(|f| f.time < horizon) {
            burst.failures.pop_front();
        }
        if burst.fired_at.is_some() {
            return None;
        }
        let (start, end) = densest_window(&burst.failures, window, self.cfg.threshold)?;
        burst.fired_at = Some(t);
        let in_window = burst.failures.range(start..=end);
        let window_ids: Vec<String> = in_window.clone().map(|f| f.id.clone()).collect();
        let targets = in_window
            .map(|f| f.principal.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        // Few tries against each of many principals: the shape of a password spray (at least
        // three principals, and at least one for every two failures).
        let spray =
            matches!(key, BurstKey::SourceIp(_)) && targets >= 3 && targets * 2 >= window_ids.len();
        let (what, entity) = match &key {
            BurstKey::Principal(principal) => (
                format!(
                    "{} failed console sign-ins for {}",
                    window_ids.len(),
                    tried(activity).1
                ),
                Entity {
                    kind: kinds::PRINCIPAL.into(),
                    id: principal.clone(),
                },
            ),
            BurstKey::SourceIp(ip) => (
                format!(
                    "{}{} failed console sign-ins from {ip} against {targets} principal{}",
                    if spray { "password spray: " } else { "" },
                    window_ids.len(),
                    if targets == 1 { "" } else { "s" }
                ),
                Entity {
                    kind: kinds::SOURCE_IP.into(),
                    id: ip.clone(),
                },
            ),
        };
        let minutes = window.num_minutes();
        let summary = format!("{what} within {minutes} minutes");
        let dimension = match key {
            BurstKey::Principal(_) => "principal",
            BurstKey::SourceIp(_) => "source-ip",
        };
        let first = burst.first_activity.clone();
        let severity = if activity.principal.is_root || spray {
            self.cfg.severity.max(Severity::High)
        } else {
            self.cfg.severity
        };
        // A source address's burst is about the address: the principal of its last failure is
        // one of many it tried, never a target.
        let actions = match key {
            BurstKey::Principal(_) => requested(&self.cfg.actions, activity),
            BurstKey::SourceIp(_) => {
                let notify: Vec<ActionKind> = (self.cfg.actions.iter().copied())
                    .filter(|kind| *kind == ActionKind::Notify)
                    .collect();
                requested(&notify, activity)
            }
        };
        let alert = AlertBuilder::about(&SIGNIN_FAILURES, activity, severity)
            .entity(entity)
            .evidence(window_ids, summary)
            .mitre(("Credential Access", "T1110", "Brute Force"))
            .actions(actions)
            .id_from(&[dimension, first.as_str()]);
        Some(alert)
    }

    /// Closes bursts whose window ended before the watermark and that no activity has touched
    /// for `retain_offsets` offsets. The second condition keeps keys whose activities arrive
    /// late as a whole (a backfill of one account while another streams live on the same
    /// partition) counting on their own event time instead of being dropped as too late.
    pub(crate) fn expire(
        &mut self,
        watermark: DateTime<Utc>,
        now: Offset,
        closed: &mut Vec<(Offset, Offset)>,
    ) {
        let (window, retain) = (self.window, self.retain_offsets);
        self.bursts.retain(|_, b| {
            let open = b.max_time + window >= watermark || b.last_offset + retain > now;
            if !open {
                closed.push((b.first_offset, b.last_offset));
            }
            open
        });
    }

    pub(crate) fn first_open_offset(&self) -> Option<Offset> {
        self.bursts.values().map(|b| b.first_offset).min()
    }
}

/// One failed sign-in of a burst.
#[derive(Debug)]
pub(crate) struct Failure {
    time: DateTime<Utc>,
    /// Activity id.
    id: String,
    /// Who was tried (per-source-IP bursts only; empty otherwise).
    principal: String,
}

/// The index range of the first window of length `window` holding at least `threshold`
/// failures.
fn densest_window(
    failures: &VecDeque<Failure>,
    window: Duration,
    threshold: usize,
) -> Option<(usize, usize)> {
    let mut start = 0;
    for end in 0..failures.len() {
        while failures[end].time - failures[start].time > window {
            start += 1;
        }
        if end + 1 - start >= threshold {
            return Some((start, end));
        }
    }
    None
}
