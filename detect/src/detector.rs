//! `Detector`: the per-partition state machine. Pure: activities and their offsets in, alerts and
//! the offset that is safe to commit out. Time is event time only.
//!
//! ## How state survives a restart
//! Baselines are saved to a changelog (see [`crate::state`]). Sign-in failures and custom
//! windows keep *bursts*: per key (principal here; source IP in a [`SourceIpFailures`] over the
//! sign-in failures topic), the failures that followed each other within the window. A burst's decisions
//! depend only on its own activities, so replaying the partition from the first offset of every
//! burst that is still open rebuilds exactly the same bursts and raises the same alerts with the
//! same ids (which consumers de-duplicate). [`Detector::safe_offset`] therefore never lets the
//! committed offset pass the start of an open burst — nor fall inside a closed one, whose tail
//! alone would otherwise be replayed as a shorter, different burst.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use trailguard_common::contract::{Alert, Entity, Evidence, Mitre, Severity};
use trailguard_common::Activity;

use crate::policies::{
    alert_for, BucketPublic, CloudTrailChanges, PoliciesConfig, SigninFailuresConfig,
    SIGNIN_FAILURES,
};

/// Kafka offset within one partition.
pub type Offset = i64;

/// How many offsets a burst outlives its last activity, whatever the watermark says.
pub const RETAIN_OFFSETS: Offset = 10_000;

/// As [`RETAIN_OFFSETS`], on the sign-in failures topic. As large: that topic interleaves
/// the activities partitions as their instances forward them, and while they catch up (a
/// backfill, a rebalance) one may run hours of event time ahead of another. A smaller count
/// closed an address's burst before its lagging failures arrived, which then opened a second
/// burst with another id (the two-instance test caught it at 16).
pub const COUNTER_RETAIN_OFFSETS: Offset = RETAIN_OFFSETS;

/// Windows are expired at offsets that are multiples of this.
pub const EXPIRE_EVERY: Offset = 64;

/// Evaluates every policy over one partition's activities.
pub struct Detector {
    cloudtrail: CloudTrailChanges,
    bucket_public: BucketPublic,
    templates: crate::templates::Templates,
    signin: SigninFailures,
    /// Out-of-order tolerance: state is kept this long past the end of its window.
    lateness: Duration,
    /// Highest event time seen on this partition.
    max_event_time: Option<DateTime<Utc>>,
    /// Offset spans of closed bursts that the committed offset may not yet pass.
    closed: Vec<(Offset, Offset)>,
    /// Last offset returned by `safe_offset`, so it never moves back.
    committed: Offset,
    /// The anomaly detections.
    anomalies: crate::anomaly::Anomalies,
    /// Baselines by principal key (foldhash: randomly seeded, and several times faster than
    /// SipHash on ARN-length keys; this map is looked up for every activity).
    principals: HashMap<String, crate::anomaly::PrincipalState, foldhash::fast::RandomState>,
    /// Organization-wide counts derived from the baselines.
    org: crate::anomaly::Org,
    /// Principals whose baseline changed (or was forgotten) since the last `take_changes`.
    dirty: std::collections::HashSet<String, foldhash::fast::RandomState>,
    /// Forget principals not seen for this long.
    state_ttl: Duration,
    /// Activities observed, for periodic pruning.
    observed: u64,
    /// Custom policies and their windows.
    custom: crate::custom::Custom,
    /// Organization-wide facts (shared by the partitions of this instance).
    facts: crate::facts::SharedFacts,
    /// Facts learned here, for the facts topic.
    outbox: Vec<(String, crate::facts::Fact)>,
    /// Terminations already checked against this partition's principals.
    terminations_seen: usize,
    /// Fold period in seconds (zero: off).
    fold_period: i64,
    /// Open folds by end of period: (until, principal key). Entries may be stale.
    fold_index: std::collections::BTreeSet<(i64, String)>,
    /// Policies that may ask for destructive actions on failed activity.
    act_on_failed: std::collections::HashSet<String>,
}

/// Takes every action but `notify` off the alerts a failed activity raised, unless their
/// policy opts in: a failed call proves nothing about its caller's rights, and some (a failed
/// console sign-in, an `AccessDenied` on another's bucket) can be caused by anyone.
fn disarm_if_failed(
    alerts: &mut [Alert],
    activity: &Activity,
    act_on_failed: &std::collections::HashSet<String>,
) {
    if activity.outcome.is_success() {
        return;
    }
    for alert in alerts {
        if !act_on_failed.contains(&alert.policy_id) {
            alert
                .actions
                .retain(|a| a.kind == trailguard_common::contract::ActionKind::Notify);
        }
    }
}

/// How far ahead of this clock an event time may move the watermark. Ingest dead-letters
/// records further in the future (`publish.max_clock_skew`); activities reaching detect by
/// another way must not either: one record dated 2199 would otherwise expire every baseline.
const WATERMARK_SKEW: chrono::Duration = chrono::Duration::days(1);

/// True when `time` moves the watermark on from `max`: later, and not beyond the clock plus
/// [`WATERMARK_SKEW`].
fn advances_watermark(max: Option<DateTime<Utc>>, time: DateTime<Utc>) -> bool {
    max.is_none_or(|t| time > t) && time <= Utc::now() + WATERMARK_SKEW
}

impl Detector {
    /// A detector with the given policy settings.
    pub fn new(cfg: &PoliciesConfig, lateness: std::time::Duration) -> Self {
        Self::with_retention(cfg, lateness, RETAIN_OFFSETS)
    }

    /// A detector whose closed-in-event-time state outlives its last activity by
    /// `retain_offsets` offsets (see [`RETAIN_OFFSETS`]).
    pub fn with_retention(
        cfg: &PoliciesConfig,
        lateness: std::time::Duration,
        retain_offsets: Offset,
    ) -> Self {
        Detector {
            cloudtrail: CloudTrailChanges::new(cfg.cloudtrail_changes.clone()),
            bucket_public: BucketPublic::new(cfg.s3_bucket_public.clone()),
            templates: crate::templates::Templates::new(&cfg.templates),
            signin: SigninFailures::new(
                cfg.console_signin_failures.clone(),
                Duration::from_std(lateness).unwrap_or(Duration::MAX),
                retain_offsets,
            ),
            lateness: Duration::from_std(lateness).unwrap_or(Duration::MAX),
            max_event_time: None,
            closed: Vec::new(),
            committed: 0,
            anomalies: crate::anomaly::Anomalies::new(cfg.anomaly.clone(), false),
            principals: HashMap::default(),
            org: crate::anomaly::Org::default(),
            dirty: std::collections::HashSet::default(),
            state_ttl: Duration::from_std(cfg.anomaly.state_ttl).unwrap_or(Duration::days(35)),
            observed: 0,
            custom: crate::custom::Custom::new(&cfg.custom),
            facts: crate::facts::SharedFacts::default(),
            outbox: Vec::new(),
            terminations_seen: 0,
            fold_period: cfg.fold.period.as_secs() as i64,
            fold_index: std::collections::BTreeSet::new(),
            act_on_failed: cfg.act_on_failed_activity.iter().cloned().collect(),
        }
    }

    /// Leaves counting failed sign-ins per source IP to a [`SourceIpFailures`] fed by the
    /// sign-in failures topic (see [`counts_per_source_ip`]): this partition sees only the
    /// failures of its own principals, a spray's targets are spread over every partition.
    pub fn counting_source_ips_elsewhere(mut self) -> Self {
        self.signin.cfg.per_source_ip = false;
        self
    }

    /// Whether the restored baseline of `activity`'s principal already covers `offset`: the
    /// activity was evaluated (and what it produced published) before the last checkpoint.
    pub fn already_applied(&self, activity: &Activity, offset: Offset) -> bool {
        self.principals
            .get(&activity.principal.key())
            .is_some_and(|state| offset < state.offset)
    }

    /// Shares `facts` with the other partitions of this instance.
    pub fn with_facts(mut self, facts: crate::facts::SharedFacts) -> Self {
        self.facts = facts;
        self
    }

    /// Facts learned since the last call, to publish on the facts topic.
    pub fn take_facts(&mut self) -> Vec<(String, crate::facts::Fact)> {
        std::mem::take(&mut self.outbox)
    }

    /// Turns the geo-based anomaly detections on (a geolocation database is loaded).
    pub fn with_geo(mut self, cfg: &PoliciesConfig, geo: bool) -> Self {
        self.anomalies = crate::anomaly::Anomalies::new(cfg.anomaly.clone(), geo);
        self
    }

    /// Installs baselines restored from the changelog (before the first `observe`).
    pub fn restore(&mut self, states: HashMap<String, crate::anomaly::PrincipalState>) {
        self.org = crate::anomaly::Org::rebuild(states.values());
        self.fold_index = states
            .iter()
            .flat_map(|(key, st)| st.folds.iter().map(move |f| (f.until, key.clone())))
            .collect();
        self.principals = states.into_iter().collect();
        self.dirty.clear();
    }

    /// The baselines changed since the last call: (principal key, state), `None` for a
    /// forgotten principal (a tombstone).
    pub fn take_changes(&mut self) -> Vec<(String, Option<&crate::anomaly::PrincipalState>)> {
        let keys: Vec<String> = self.dirty.drain().collect();
        keys.into_iter()
            .map(|k| {
                let state = self.principals.get(&k);
                (k, state)
            })
            .collect()
    }

    /// Marks baselines to be saved again (their last save failed).
    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = String>) {
        self.dirty.extend(keys);
    }

    /// Number of principals with a baseline.
    pub fn principals(&self) -> usize {
        self.principals.len()
    }

    /// Approximate bytes held by the baselines.
    pub fn baseline_bytes(&self) -> usize {
        self.principals
            .iter()
            .map(|(k, s)| k.capacity() + s.heap_size())
            .sum()
    }

    /// Terminations that reached this partition after it saw the terminated user act (also
    /// called between activities, so a quiet partition still raises them).
    pub fn look_back(&mut self) -> Vec<Alert> {
        let new: Vec<(String, crate::facts::Fact)> = {
            let facts = match self.facts.read() {
                Ok(f) => f,
                Err(poisoned) => poisoned.into_inner(),
            };
            if facts.terminations() <= self.terminations_seen {
                return Vec::new();
            }
            let new = facts.terminations_since(self.terminations_seen).to_vec();
            self.terminations_seen = facts.terminations();
            new
        };
        let mut alerts = Vec::new();
        for (key, fact) in new {
            let subject = match key.split_once(':') {
                Some(("user", s)) => Some(s.to_string()),
                Some(("key", _)) => fact.subject.clone(),
                _ => None,
            };
            let Some(subject) = subject else { continue };
            let Some((account, name)) = subject.split_once('/') else {
                continue;
            };
            let principal = format!("arn:aws:iam::{account}:user/{name}");
            if let Some(state) = self.principals.get_mut(&principal) {
                if let Some(alert) = self
                    .anomalies
                    .retro_terminated(state, &principal, &subject, &key, &fact)
                {
                    self.dirty.insert(principal);
                    alerts.push(alert);
                }
            }
        }
        alerts
    }

    /// Applies `activity` to its principal's baseline; folds `matched` (the event-driven
    /// policies' alerts) into the principal's open folds.
    fn observe_baseline(
        &mut self,
        activity: &Activity,
        offset: Offset,
        matched: Vec<Alert>,
    ) -> Vec<Alert> {
        if activity.principal.kind == "Trailguard" {
            return matched;
        }
        let mut looked_back = self.look_back();
        let key = activity.principal.key();
        if !self.principals.contains_key(&key) {
            self.principals.insert(key.clone(), Default::default());
        }
        let Some(state) = self.principals.get_mut(&key) else {
            return looked_back;
        };
        // Already in a restored baseline: its alerts were published before it was saved.
        if offset < state.offset {
            return looked_back;
        }
        let t = activity.event_time.timestamp();
        let mut alerts = Vec::new();
        if !matched.is_empty() || !state.folds.is_empty() {
            let mut opened = Vec::new();
            alerts = crate::fold::fold_noting(
                &mut state.folds,
                matched,
                t,
                self.fold_period,
                &mut opened,
            );
            for until in opened {
                self.fold_index.insert((until, key.clone()));
            }
        }
        let mut raised = self.anomalies.observe(state, &mut self.org, activity);
        disarm_if_failed(&mut raised, activity, &self.act_on_failed);
        alerts.extend(raised);
        let mut learned = crate::facts::facts_of(activity);
        {
            let facts = match self.facts.read() {
                Ok(f) => f,
                Err(poisoned) => poisoned.into_inner(),
            };
            let mut raised = self.anomalies.observe_facts(state, &facts, activity);
            disarm_if_failed(&mut raised, activity, &self.act_on_failed);
            alerts.extend(raised);
            // Most are known already (a region in use): no write lock for those.
            learned.retain(|(key, fact)| !facts.already_knows(key, fact));
        }
        if !learned.is_empty() {
            let mut facts = match self.facts.write() {
                Ok(f) => f,
                Err(poisoned) => poisoned.into_inner(),
            };
            for (key, fact) in learned {
                if facts.learn(&key, fact.clone()) {
                    self.outbox.push((key, fact));
                }
            }
        }
        state.offset = offset + 1;
        alerts.append(&mut looked_back);
        if !self.dirty.contains(&key) {
            self.dirty.insert(key);
        }
        self.observed += 1;
        if self.observed % 10_000 == 0 {
            if let Some(max) = self.max_event_time {
                let horizon = (max - self.state_ttl).timestamp();
                let old: Vec<String> = self
                    .principals
                    .iter()
                    .filter(|(_, s)| s.last_seen < horizon)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in old {
                    self.principals.remove(&k);
                    self.dirty.insert(k);
                }
            }
        }
        alerts
    }

    /// Evaluates one activity read at `offset`. Returns the alerts it raises.
    pub fn observe(&mut self, activity: &Activity, offset: Offset) -> Vec<Alert> {
        let mut matched = Vec::new();
        matched.extend(self.cloudtrail.evaluate(activity));
        matched.extend(self.bucket_public.evaluate(activity));
        matched.extend(self.templates.evaluate(activity));
        // Before folding: a fold keeps the actions of the alert that opened it.
        disarm_if_failed(&mut matched, activity, &self.act_on_failed);
        let mut alerts = self.observe_baseline(activity, offset, matched);
        let mut raised = self.custom.observe(activity, offset);
        raised.extend(self.signin.observe(activity, offset, &mut self.closed));
        disarm_if_failed(&mut raised, activity, &self.act_on_failed);
        alerts.extend(raised);
        // Inventory snapshots carry the time they were taken, not trail time: they must not
        // move the watermark of a backfill.
        if activity.principal.kind != "Trailguard"
            && advances_watermark(self.max_event_time, activity.event_time)
        {
            self.max_event_time = Some(activity.event_time);
        }
        // Expiry scans every open window: run it on a schedule of absolute offsets, so a replay
        // from any offset expires at the same points as the first run did.
        if offset % EXPIRE_EVERY == 0 {
            if let Some(max) = self.max_event_time {
                let watermark = max - self.lateness;
                self.signin.expire(watermark, offset, &mut self.closed);
                self.custom.expire(watermark);
                alerts.extend(self.close_folds(watermark.timestamp()));
            }
        }
        alerts
    }

    /// Closes the folds whose period ended at or before `watermark` (principals that have not
    /// acted again since); returns their closing alerts.
    fn close_folds(&mut self, watermark: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        while let Some(first) = self.fold_index.first() {
            if first.0 > watermark {
                break;
            }
            let Some((_, key)) = self.fold_index.pop_first() else {
                break;
            };
            if let Some(state) = self.principals.get_mut(&key) {
                let closing = crate::fold::close_before(&mut state.folds, watermark);
                if !closing.is_empty() {
                    out.extend(closing);
                    self.dirty.insert(key);
                }
            }
        }
        out
    }

    /// The offset from which a replay would rebuild this detector's state exactly: everything
    /// before it may be committed. `next` is the offset after the last one observed.
    pub fn safe_offset(&mut self, next: Offset) -> Offset {
        let first_open = self
            .signin
            .first_open_offset()
            .unwrap_or(next)
            .min(self.custom.first_open_offset().unwrap_or(next))
            .min(next);
        settle(first_open, &mut self.closed, &mut self.committed)
    }

    /// Number of open bursts (for the state-size gauge).
    pub fn state_size(&self) -> usize {
        self.signin.bursts.len() + self.principals.len()
    }
}

/// The offset that may be committed given the first offset an open window needs: never inside
/// a closed burst (whose tail alone would replay as a shorter, different burst), never back.
fn settle(
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
    cfg.enabled
        && cfg.per_source_ip
        && activity.event_name == "ConsoleLogin"
        && !activity.outcome.is_success()
        && activity.source_ip.is_some()
}

/// Failed console sign-ins counted per source IP over one partition of the sign-in failures
/// topic, which is keyed by address: every failure from one address reaches the same counter,
/// however the activities topic spreads the principals it tried. Its state is rebuilt by
/// replay like a [`Detector`]'s bursts (see the module notes), with offsets of its own.
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

    /// As [`Detector::safe_offset`].
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
enum BurstKey {
    Principal(String),
    SourceIp(String),
}

/// Failures of one key that followed each other within the window.
#[derive(Debug)]
struct Burst {
    /// Sorted by time; older than the window (plus lateness) pruned.
    failures: VecDeque<Failure>,
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
struct SigninFailures {
    cfg: SigninFailuresConfig,
    window: Duration,
    lateness: Duration,
    retain_offsets: Offset,
    bursts: HashMap<BurstKey, Burst>,
}

impl SigninFailures {
    fn new(cfg: SigninFailuresConfig, lateness: Duration, retain_offsets: Offset) -> Self {
        let window = Duration::from_std(cfg.window).unwrap_or(Duration::MAX);
        SigninFailures {
            cfg,
            window,
            lateness,
            retain_offsets,
            bursts: HashMap::new(),
        }
    }

    fn observe(
        &mut self,
        activity: &Activity,
        offset: Offset,
        closed: &mut Vec<(Offset, Offset)>,
    ) -> Vec<Alert> {
        if !self.cfg.enabled
            || activity.event_name != "ConsoleLogin"
            || activity.outcome.is_success()
        {
            return Vec::new();
        }
        let mut keys = Vec::with_capacity(2);
        if self.cfg.per_principal {
            keys.push(BurstKey::Principal(activity.principal.key()));
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
                BurstKey::SourceIp(_) => activity.principal.key(),
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
            BurstKey::Principal(_) => (
                format!(
                    "{} failed console sign-ins for {}",
                    window_ids.len(),
                    activity.principal.display()
                ),
                Entity {
                    kind: "principal".into(),
                    id: activity.principal.key(),
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
                    kind: "source-ip".into(),
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
        let mut alert = alert_for(
            activity,
            &SIGNIN_FAILURES,
            self.cfg.severity,
            entity,
            Evidence {
                activity_ids: window_ids,
                summary,
            },
            &[dimension, first.as_str()],
        );
        alert.mitre = vec![Mitre {
            tactic: "Credential Access".into(),
            technique_id: "T1110".into(),
            technique: "Brute Force".into(),
        }];
        if activity.principal.is_root || spray {
            alert.severity = alert.severity.max(Severity::High);
        }
        Some(alert)
    }

    /// Closes bursts whose window ended before the watermark and that no activity has touched
    /// for `retain_offsets` offsets. The second condition keeps keys whose activities arrive
    /// late as a whole (a backfill of one account while another streams live on the same
    /// partition) counting on their own event time instead of being dropped as too late.
    fn expire(
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

    fn first_open_offset(&self) -> Option<Offset> {
        self.bursts.values().map(|b| b.first_offset).min()
    }
}

/// One failed sign-in of a burst.
#[derive(Debug)]
struct Failure {
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

#[cfg(test)]
mod tests {
    use super::*;
    use trailguard_common::contract::{Outcome, OutcomeStatus, Principal, ACTIVITY_SCHEMA_VERSION};

    fn failure(user: &str, ip: &str, minute: i64) -> Activity {
        Activity {
            schema_version: ACTIVITY_SCHEMA_VERSION,
            id: format!("{user}-{ip}-{minute}"),
            event_id: None,
            event_time: DateTime::from_timestamp(1_700_000_000 + minute * 60, 0)
                .unwrap_or_default(),
            event_source: "signin.amazonaws.com".into(),
            event_name: "ConsoleLogin".into(),
            event_type: None,
            account_id: Some("1".into()),
            region: Some("us-east-1".into()),
            partition: Some("aws".into()),
            principal: Principal {
                kind: "IAMUser".into(),
                arn: Some(format!("arn:aws:iam::1:user/{user}")),
                name: Some(user.into()),
                ..Principal::default()
            },
            source_ip: ip.parse().ok(),
            source_host: None,
            user_agent: None,
            read_only: None,
            outcome: Outcome {
                status: OutcomeStatus::Failure,
                error_code: None,
                error_message: None,
            },
            resources: Vec::new(),
            request_id: None,
            request_parameters: None,
            response_elements: None,
            additional_event_data: None,
            enrichment: Default::default(),
            trimmed: Vec::new(),
        }
    }

    fn run(detector: &mut Detector, activities: &[Activity]) -> Vec<Alert> {
        activities
            .iter()
            .enumerate()
            .flat_map(|(offset, a)| detector.observe(a, offset as Offset))
            .collect()
    }

    fn detector() -> Detector {
        Detector::new(
            &PoliciesConfig::default(),
            std::time::Duration::from_secs(300),
        )
    }

    #[test]
    fn a_far_future_time_never_moves_the_watermark() {
        let now = Utc::now();
        assert!(advances_watermark(None, now));
        assert!(advances_watermark(Some(now), now + Duration::hours(2)));
        assert!(!advances_watermark(Some(now), now - Duration::hours(2)));
        assert!(!advances_watermark(Some(now), now + Duration::days(2)));
        let y2199 = DateTime::from_timestamp(7_200_000_000, 0).unwrap_or_default();
        assert!(!advances_watermark(None, y2199));
    }

    #[test]
    fn five_failures_in_window_alert_once_per_dimension() {
        let mut d = detector();
        let events: Vec<_> = (0..8).map(|m| failure("alice", "1.2.3.4", m)).collect();
        let alerts = run(&mut d, &events);
        let kinds: Vec<_> = alerts.iter().map(|a| a.entity.kind.as_str()).collect();
        assert_eq!(kinds, ["principal", "source-ip"]);
        assert_eq!(alerts[0].evidence.activity_ids.len(), 5);
    }

    #[test]
    fn spread_out_failures_do_not_alert() {
        let mut d = detector();
        let events: Vec<_> = (0..6)
            .map(|m| failure("alice", "1.2.3.4", m * 10))
            .collect();
        assert!(run(&mut d, &events).is_empty());
    }

    #[test]
    fn password_spray_from_one_ip() {
        let mut d = detector();
        let users = ["a", "b", "c", "d", "e"];
        let events: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, u)| failure(u, "9.9.9.9", i as i64))
            .collect();
        let alerts = run(&mut d, &events);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].entity.id, "9.9.9.9");
    }

    #[test]
    fn out_of_order_within_lateness_gives_the_same_alerts() {
        let ordered: Vec<_> = (0..5).map(|m| failure("alice", "1.2.3.4", m)).collect();
        let mut shuffled = ordered.clone();
        shuffled.swap(0, 3);
        shuffled.swap(1, 4);
        let a = run(&mut detector(), &ordered);
        let b = run(&mut detector(), &shuffled);
        let ids = |v: &[Alert]| {
            let mut ids: Vec<_> = v
                .iter()
                .map(|a| a.policy_id.clone() + &a.entity.id)
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids(&a), ids(&b));
        assert_eq!(a.len(), 2);
    }

    /// A principal whose activities all arrive far behind the partition's watermark (a backfill
    /// beside a live stream) is still counted on its own event time.
    #[test]
    fn a_late_key_still_counts() {
        let mut d = detector();
        let mut live = failure("live", "5.5.5.5", 100_000);
        live.outcome.status = OutcomeStatus::Success;
        let mut events = vec![live];
        events.extend((0..5).map(|m| failure("backfilled", "1.2.3.4", m)));
        assert_eq!(run(&mut d, &events).len(), 2);
    }

    /// An attack that never pauses alerts again once the window of its alert is over, and its
    /// state does not grow with it.
    #[test]
    fn an_endless_burst_rolls_over() {
        let mut d = detector();
        let events: Vec<_> = (0..60).map(|m| failure("alice", "1.2.3.4", m)).collect();
        let alerts = run(&mut d, &events);
        // Minutes 4, 24, 44: a new burst starts after the alert's 15-minute window (minutes
        // 20, 40) and alerts at its fifth failure.
        assert_eq!(
            alerts
                .iter()
                .filter(|a| a.entity.kind == "principal")
                .count(),
            3
        );
        assert_eq!(alerts.len(), 6);
        assert!(d.signin.bursts.values().all(|b| b.failures.len() <= 21));
    }

    #[test]
    fn duplicates_count_once() {
        let mut d = detector();
        let one = failure("alice", "1.2.3.4", 0);
        let events = vec![one.clone(), one.clone(), one.clone(), one.clone(), one];
        assert!(run(&mut d, &events).is_empty());
    }

    #[test]
    fn a_new_burst_alerts_again() {
        let mut d = detector();
        let mut events: Vec<_> = (0..5).map(|m| failure("alice", "1.2.3.4", m)).collect();
        events.extend((100..105).map(|m| failure("alice", "1.2.3.4", m)));
        assert_eq!(run(&mut d, &events).len(), 4);
    }

    /// Replaying from the safe offset with fresh state raises exactly the alerts the
    /// uninterrupted run raised after that offset, with the same ids.
    #[test]
    fn replay_from_safe_offset_reproduces_alerts() {
        // Blocks an hour apart; in each, two users fail 6 times each within 12 minutes from one
        // IP (slightly out of order), so bursts open, fire and close again and again.
        let mut events = Vec::new();
        for block in 0..6i64 {
            let users =
                [["alice", "bob"], ["bob", "carol"], ["carol", "alice"]][block as usize % 3];
            let ip = format!("1.2.3.{}", block % 2);
            let mut minutes: Vec<i64> = (0..12).collect();
            minutes.swap(2, 3);
            minutes.swap(7, 9);
            for m in minutes {
                events.push(failure(users[m as usize % 2], &ip, block * 60 + m));
            }
        }
        let detector = || {
            Detector::with_retention(
                &PoliciesConfig::default(),
                std::time::Duration::from_secs(300),
                4,
            )
        };
        // Per block: one alert per user and one for the IP.
        assert_eq!(run(&mut detector(), &events).len(), 18);
        for cut in 1..events.len() {
            let mut first = detector();
            let before: Vec<Alert> = events[..cut]
                .iter()
                .enumerate()
                .flat_map(|(o, a)| first.observe(a, o as Offset))
                .collect();
            let safe = first.safe_offset(cut as Offset) as usize;
            let after_uninterrupted: Vec<Alert> = events[cut..]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| first.observe(a, (cut + i) as Offset))
                .collect();
            let mut second = detector();
            let replayed: Vec<Alert> = events[safe..]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| second.observe(a, (safe + i) as Offset))
                .collect();
            let mut expected: Vec<_> = before
                .iter()
                .chain(&after_uninterrupted)
                .map(|a| a.id.clone())
                .collect();
            let mut got: Vec<_> = replayed.iter().map(|a| a.id.clone()).collect();
            // Everything replayed was raised by the uninterrupted run (same ids) ...
            for id in &got {
                assert!(
                    expected.contains(id),
                    "cut {cut}: replay raised a new alert {id}"
                );
            }
            // ... and nothing raised after the cut is missing.
            for a in &after_uninterrupted {
                assert!(got.contains(&a.id), "cut {cut}: replay lost alert {}", a.id);
            }
            expected.sort();
            got.sort();
            if cut == events.len() - 1 {
                assert!(
                    safe > 0,
                    "windows never closed: the test does not exercise replay"
                );
            }
        }
    }

    /// A spray of one address over 30 users whose activities land on three partitions: no
    /// partition alone sees enough to alert, the failures topic's counter sees it whole.
    #[test]
    fn a_spray_across_partitions_is_counted_per_source_ip() {
        let cfg = PoliciesConfig::default();
        let lateness = std::time::Duration::from_secs(300);
        let mut partitions: Vec<Detector> = (0..3)
            .map(|_| Detector::new(&cfg, lateness).counting_source_ips_elsewhere())
            .collect();
        let mut counter = SourceIpFailures::new(&cfg.console_signin_failures, lateness);
        // One try per user, one a minute: each partition sees 5, the threshold, and would
        // alert on its own share if it still counted per address.
        let users: Vec<String> = (0..15).map(|i| format!("user{i}")).collect();
        let (mut partition_alerts, mut forwarded) = (Vec::new(), Vec::new());
        for (i, user) in users.iter().enumerate() {
            let a = failure(user, "203.0.113.9", i as i64);
            let p = i % 3;
            partition_alerts.extend(partitions[p].observe(&a, (i / 3) as Offset));
            if counts_per_source_ip(&cfg.console_signin_failures, &a) {
                forwarded.push(a);
            }
        }
        assert!(partition_alerts.is_empty(), "{partition_alerts:?}");
        assert_eq!(forwarded.len(), 15);
        let alerts: Vec<Alert> = forwarded
            .iter()
            .enumerate()
            .flat_map(|(o, a)| counter.observe(a, o as Offset))
            .collect();
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.entity.kind, "source-ip");
        assert_eq!(alert.entity.id, "203.0.113.9");
        assert_eq!(alert.severity, Severity::High, "a spray is high");
        assert!(
            alert.evidence.summary.starts_with(
                "password spray: 5 failed console sign-ins from 203.0.113.9 against 5 principals"
            ),
            "{}",
            alert.evidence.summary
        );
        // Its offset stays at the open burst until the burst closes.
        assert_eq!(counter.safe_offset(15), 0);
        // Each user tried twice: still a spray (3 principals in the 5 failures).
        let mut twice = SourceIpFailures::new(&cfg.console_signin_failures, lateness);
        let alerts: Vec<Alert> = (0..6)
            .flat_map(|m| {
                let a = failure(&format!("v{}", m / 2), "198.51.100.7", m);
                twice.observe(&a, m as Offset)
            })
            .collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::High);
        assert!(alerts[0].evidence.summary.contains("against 3 principals"));
        // One user failing from one address is brute force, not a spray: medium.
        let mut single = SourceIpFailures::new(&cfg.console_signin_failures, lateness);
        let alerts: Vec<Alert> = (0..5)
            .flat_map(|m| single.observe(&failure("alice", "198.51.100.1", m), m as Offset))
            .collect();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::Medium);
        assert!(alerts[0]
            .evidence
            .summary
            .contains("against 1 principal within"));
        // Successes and failures without an address are not forwarded.
        let mut ok = failure("alice", "198.51.100.1", 0);
        ok.outcome.status = OutcomeStatus::Success;
        assert!(!counts_per_source_ip(&cfg.console_signin_failures, &ok));
        let mut nowhere = failure("alice", "198.51.100.1", 0);
        nowhere.source_ip = None;
        assert!(!counts_per_source_ip(
            &cfg.console_signin_failures,
            &nowhere
        ));
    }

    /// The failures topic's counter, restarted from its safe offset with nothing but a
    /// replay, raises exactly the alerts of an uninterrupted run.
    #[test]
    fn the_source_ip_counter_replays_from_its_safe_offset() {
        let cfg = PoliciesConfig::default().console_signin_failures;
        let lateness = std::time::Duration::from_secs(300);
        let mut events = Vec::new();
        for block in 0..6i64 {
            let ip = format!("192.0.2.{}", block % 2);
            for m in 0..10 {
                events.push(failure(&format!("u{m}"), &ip, block * 60 + m));
            }
        }
        let counter = || SourceIpFailures::with_retention(&cfg, lateness, 4);
        let all: Vec<String> = {
            let mut c = counter();
            events
                .iter()
                .enumerate()
                .flat_map(|(o, a)| c.observe(a, o as Offset))
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(all.len(), 6);
        let mut exercised = false;
        for cut in 1..events.len() {
            let mut first = counter();
            let before: Vec<String> = events[..cut]
                .iter()
                .enumerate()
                .flat_map(|(o, a)| first.observe(a, o as Offset))
                .map(|a| a.id)
                .collect();
            let safe = first.safe_offset(cut as Offset) as usize;
            exercised |= safe > 0;
            let mut second = counter();
            let replayed: Vec<String> = events[safe..]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| second.observe(a, (safe + i) as Offset))
                .map(|a| a.id)
                .collect();
            let mut union: Vec<String> = before.iter().chain(&replayed).cloned().collect();
            union.sort();
            union.dedup();
            let mut expected = all.clone();
            expected.sort();
            assert_eq!(union, expected, "cut {cut}");
        }
        assert!(
            exercised,
            "bursts never closed: the test does not exercise replay"
        );
    }

    fn sg_change(user: &str, minute: i64) -> Activity {
        let mut a = failure(user, "1.2.3.4", minute);
        a.id = format!("sg-{user}-{minute}");
        a.event_source = "ec2.amazonaws.com".into();
        a.event_name = "AuthorizeSecurityGroupIngress".into();
        a.outcome.status = OutcomeStatus::Success;
        a.request_parameters = Some(serde_json::json!({"groupId": "sg-1"}));
        a
    }

    /// (id, occurrences) of the alerts, in order.
    fn counted(alerts: &[Alert]) -> Vec<(String, u64)> {
        alerts
            .iter()
            .map(|a| (a.id.clone(), a.occurrences))
            .collect()
    }

    #[test]
    fn repeated_changes_fold_into_one_alert_closed_with_a_count() {
        // alice changes the group 10 times in 30 minutes, bob once; an hour later alice acts
        // again (closing her fold), and bob's fold closes on the watermark.
        let mut events: Vec<Activity> = (0..10).map(|i| sg_change("alice", i * 3)).collect();
        events.push(sg_change("bob", 5));
        events.push(sg_change("alice", 120));
        for m in 121..260 {
            let mut quiet = failure("carol", "1.2.3.9", m);
            quiet.outcome.status = OutcomeStatus::Success;
            quiet.event_name = "DescribeInstances".into();
            quiet.event_source = "ec2.amazonaws.com".into();
            events.push(quiet);
        }
        let alerts = run(&mut detector(), &events);
        let sg: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.policy_id == "security-group-changes")
            .collect();
        let first_alice = sg[0].id.clone();
        let counts: Vec<(String, u64)> = sg.iter().map(|a| (a.id.clone(), a.occurrences)).collect();
        // alice's first, bob's, alice's closing (same id, 10), alice's new one at minute 120.
        assert_eq!(counts.len(), 4, "{counts:?}");
        assert_eq!(counts[0], (first_alice.clone(), 1));
        assert_eq!(counts[2], (first_alice, 10));
        assert_eq!(sg[2].evidence.activity_ids.len(), 10);
        assert_ne!(counts[3].0, counts[0].0);
    }

    /// Folds live in the persisted baselines: a restart from a saved state at any point gives
    /// the alerts (and counts) of the uninterrupted run, with no repeat raised as a new alert.
    #[test]
    fn folds_survive_a_restart_at_any_point() {
        let mut events: Vec<Activity> = (0..12).map(|i| sg_change("alice", i * 4)).collect();
        events.push(sg_change("alice", 200));
        let reference = counted(&run(&mut detector(), &events));
        for cut in 1..events.len() {
            let mut first = detector();
            let mut got: Vec<Alert> = events[..cut]
                .iter()
                .enumerate()
                .flat_map(|(o, a)| first.observe(a, o as Offset))
                .collect();
            let saved: HashMap<String, crate::anomaly::PrincipalState> = first
                .take_changes()
                .into_iter()
                .filter_map(|(k, st)| Some((k, serde_json::to_string(st?).ok()?)))
                .filter_map(|(k, json)| Some((k, serde_json::from_str(&json).ok()?)))
                .collect();
            let mut second = detector();
            second.restore(saved);
            // Replay from the start: what the saved state covers is skipped.
            got.extend(
                events
                    .iter()
                    .enumerate()
                    .flat_map(|(o, a)| second.observe(a, o as Offset)),
            );
            assert_eq!(counted(&got), reference, "cut {cut}");
        }
    }

    /// A failed call asks for no destructive action unless its policy opts in: an
    /// `AccessDenied` on someone else's bucket must not get that bucket changed, a failed
    /// console sign-in from a Tor exit must not suspend the user it names.
    #[test]
    fn failed_activity_only_notifies_unless_the_policy_opts_in() {
        use trailguard_common::contract::ActionKind;
        let mut cfg = PoliciesConfig::default();
        cfg.templates.insert(
            "s3-bucket-activity".into(),
            crate::templates::TemplateConfig {
                actions: Some(vec![ActionKind::Notify, ActionKind::MakeBucketPrivate]),
                ..Default::default()
            },
        );
        let acl = |outcome: OutcomeStatus, user: &str| {
            let mut a = failure(user, "1.2.3.4", 0);
            a.id = format!("acl-{user}");
            a.event_source = "s3.amazonaws.com".into();
            a.event_name = "PutBucketAcl".into();
            a.outcome.status = outcome;
            a.outcome.error_code =
                (outcome == OutcomeStatus::Failure).then(|| "AccessDenied".into());
            a.request_parameters =
                Some(serde_json::json!({"bucketName": "www-site", "x-amz-acl": ["public-read"]}));
            a
        };
        let kinds = |alerts: &[Alert]| -> Vec<Vec<ActionKind>> {
            alerts
                .iter()
                .filter(|a| a.policy_id == "s3-bucket-activity")
                .map(|a| a.actions.iter().map(|x| x.kind).collect())
                .collect()
        };
        let mut d = Detector::new(&cfg, std::time::Duration::from_secs(300));
        let denied = d.observe(&acl(OutcomeStatus::Failure, "mallory"), 0);
        assert_eq!(kinds(&denied), [vec![ActionKind::Notify]]);
        let done = d.observe(&acl(OutcomeStatus::Success, "alice"), 1);
        assert_eq!(
            kinds(&done),
            [vec![ActionKind::Notify, ActionKind::MakeBucketPrivate]]
        );
        cfg.act_on_failed_activity = vec!["s3-bucket-activity".into()];
        let mut opted = Detector::new(&cfg, std::time::Duration::from_secs(300));
        let denied = opted.observe(&acl(OutcomeStatus::Failure, "mallory"), 0);
        assert_eq!(
            kinds(&denied),
            [vec![ActionKind::Notify, ActionKind::MakeBucketPrivate]]
        );
    }
}
