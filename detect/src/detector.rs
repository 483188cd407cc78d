//! `Detector`: the per-partition state machine. Pure: activities and their offsets in, alerts and
//! the offset that is safe to commit out. Time is event time only.
//!
//! ## How state survives a restart
//! Baselines are saved to a changelog (see [`crate::state`]). Sign-in failures and custom
//! windows keep *bursts*: per key (principal here; source IP in a [`crate::signin::SourceIpFailures`] over the
//! sign-in failures topic), the failures that followed each other within the window. A burst's decisions
//! depend only on its own activities, so replaying the partition from the first offset of every
//! burst that is still open rebuilds exactly the same bursts and raises the same alerts with the
//! same ids (which consumers de-duplicate). [`Detector::safe_offset`] therefore never lets the
//! committed offset pass the start of an open burst — nor fall inside a closed one, whose tail
//! alone would otherwise be replayed as a shorter, different burst.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use trailguard_common::contract::{Alert, Severity};
use trailguard_common::Activity;

use crate::config::PoliciesConfig;
use crate::facts::Facts;
use crate::policy::{moves_watermark, Offset, EXPIRE_EVERY, RETAIN_OFFSETS};
use crate::signin::{settle, SigninFailures};
use trailguard_common::contract::kinds;

/// Namespaces of detect's own records on the changelog, beside actors' baselines: the peer
/// groups' baselines, the organization's counts by day, the applied-through mark.
const RESERVED: [&str; 3] = [
    crate::anomaly::PEER_PREFIX,
    crate::state::CENSUS_PREFIX,
    "applied:",
];
/// What moves an actor named in one of them out of the way.
const ESCAPE: &str = "actor:";

/// AWS's partitions, where a user a fact names by account and name may be.
const PARTITIONS: [&str; 8] = [
    "aws",
    "aws-us-gov",
    "aws-cn",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "aws-eusc",
];

/// The key of the baseline of `activity`'s actor: its actor key — unless that falls in one of
/// detect's own namespaces, which no AWS principal does but a forged record's ARN can: then it
/// is escaped, so the actor has a baseline of its own and cannot write into a peer group's,
/// the organization's counts or the applied-through mark. Keys starting with the escape are
/// escaped too, so no two actors share a key.
pub fn baseline_key(activity: &Activity) -> Cow<'_, str> {
    let key = activity.actor_key();
    if RESERVED.iter().chain([&ESCAPE]).any(|p| key.starts_with(p)) {
        Cow::Owned(format!("{ESCAPE}{key}"))
    } else {
        key
    }
}

/// Baselines by actor key, boxed (see [`Detector`]'s map).
pub type Baselines =
    HashMap<String, Box<crate::anomaly::PrincipalState>, foldhash::fast::RandomState>;

/// Evaluates every policy over one partition's activities.
pub struct Detector {
    /// The policies that judge each activity on its own (see [`PoliciesConfig::event_policies`]).
    event_policies: Vec<Box<dyn crate::policy::EventPolicy>>,
    /// Whether the activity being observed was applied to its actor's baseline (not a
    /// replay of one a restored baseline holds): only then is it added to the actor's
    /// sequence of detections.
    applied_now: bool,
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
    /// SipHash on ARN-length keys; this map is looked up for every activity). Boxed: the
    /// table keeps spare slots (up to half of them empty after it grows), and a spare slot
    /// then costs a pointer rather than a whole baseline.
    principals: Baselines,
    /// The activities partition this detector evaluates (its counts in the census).
    partition: i32,
    /// Days whose counts of this partition changed since the last `take_census`.
    census_days: std::collections::BTreeSet<i64>,
    /// Days whose counts changed since the last `take_census_to_save` (saved with the
    /// baselines).
    census_to_save: std::collections::BTreeSet<i64>,
    /// Countries held in baselines for the organization's counts, by the start of their day
    /// (the event time the facts must be complete through), then offset: (day start, offset,
    /// principal key). Entries may be stale (a baseline forgotten).
    held_countries: std::collections::BTreeSet<(i64, Offset, String)>,
    /// Principals whose baseline changed (or was forgotten) since the last `take_changes`.
    dirty: std::collections::HashSet<String, foldhash::fast::RandomState>,
    /// Forget principals not seen for this long.
    state_ttl: Duration,
    /// Most baselines this partition keeps ([`Detector::for_partitions`]).
    max_baselines: usize,
    /// Baselines forgotten for room since the last `take_evicted`.
    evicted: u64,
    /// The offset after the last activity observed: every baseline change before it is in
    /// the next save, which records it as the partition's applied-through mark.
    next_offset: Offset,
    /// The mark restored from the changelog: an activity before it whose actor has no
    /// baseline was applied, and its baseline forgotten since (evicted, or past `state_ttl`).
    applied_through: Offset,
    /// Custom policies and their windows.
    custom: crate::custom::Custom,
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
    /// Resources created that the unusual-region detection waits to judge until the facts are
    /// complete through their time, in offset order (at most [`HELD_LIMIT`]).
    held: std::collections::VecDeque<(Offset, Activity)>,
    /// Held activities judged before their facts were complete, because the hold was full.
    decided_early: u64,
    /// The Sigma rules (shared by every partition's detector).
    sigma: std::sync::Arc<crate::sigma::SigmaRules>,
    /// Sigma correlations' shares of the activities evaluated since the last
    /// `take_correlation_hits`, to forward to the correlations topic.
    correlation_hits: Vec<crate::sigma::correlation::Hit>,
    /// The current activity's peer-group names (reused: see [`crate::anomaly::PeerGroups`]).
    peer_groups: crate::anomaly::PeerGroups,
}

/// The start (unix seconds) of the UTC day of unix time `t`.
fn day_start(t: i64) -> i64 {
    crate::census::day_of(t) * crate::census::DAY
}

/// Whether `activity` is dated beyond the clock (plus skew): no mark will ever reach it.
fn far_future(activity: &Activity) -> bool {
    crate::policy::beyond_clock(activity.event_time)
}

/// How complete the facts count as for `activity`: `complete` — except for one dated beyond
/// the clock (plus skew), which no mark will ever reach: judged on the facts known rather than
/// holding every later decision of its partition back.
fn complete_for(activity: &Activity, complete: i64) -> i64 {
    complete_unless_far(far_future(activity), complete)
}

/// [`complete_for`] when whether the activity is dated beyond the clock is known already.
fn complete_unless_far(far: bool, complete: i64) -> i64 {
    if far {
        i64::MAX
    } else {
        complete
    }
}

/// Most activities one partition holds for facts to complete. Past it the oldest is judged
/// on the facts known (counted: [`Detector::take_decided_early`]), so a partition whose
/// marks stop (an instance gone, a partition added) cannot grow detect without bound.
pub const HELD_LIMIT: usize = 10_000;

/// Takes every action but the notifications (`notify`, `notify_user`) off the alerts a failed
/// activity raised, unless their policy opts in: a failed call proves nothing about its
/// caller's rights, and some (a failed console sign-in, an `AccessDenied` on another's bucket)
/// can be caused by anyone. Telling the person whose password is being guessed is the point.
fn disarm_if_failed(
    alerts: &mut [Alert],
    activity: &Activity,
    act_on_failed: &std::collections::HashSet<String>,
) {
    // A password prompt is a success anyone can cause: as a failure here.
    if activity.outcome.is_success() && !crate::classify::names_only(activity) {
        return;
    }
    for alert in alerts {
        if !act_on_failed.contains(&alert.policy_id) {
            use trailguard_common::contract::ActionKind;
            alert
                .actions
                .retain(|a| matches!(a.kind, ActionKind::Notify | ActionKind::NotifyUser));
        }
    }
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
            event_policies: cfg.event_policies(),
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
            partition: 0,
            census_days: std::collections::BTreeSet::new(),
            census_to_save: std::collections::BTreeSet::new(),
            held_countries: std::collections::BTreeSet::new(),
            applied_now: false,
            dirty: std::collections::HashSet::default(),
            state_ttl: Duration::from_std(cfg.anomaly.state_ttl).unwrap_or(Duration::days(180)),
            max_baselines: cfg.anomaly.max_baselines.max(1),
            evicted: 0,
            next_offset: 0,
            applied_through: 0,
            custom: crate::custom::Custom::new(&cfg.custom),
            outbox: Vec::new(),
            terminations_seen: 0,
            fold_period: cfg.fold.period.as_secs() as i64,
            fold_index: std::collections::BTreeSet::new(),
            act_on_failed: cfg.act_on_failed_activity.iter().cloned().collect(),
            held: std::collections::VecDeque::new(),
            decided_early: 0,
            sigma: std::sync::Arc::new(crate::sigma::SigmaRules::none()),
            correlation_hits: Vec::new(),
            peer_groups: Default::default(),
        }
    }

    /// Evaluates `rules` too (loaded once, at start-up: [`crate::sigma::SigmaRules::load`]).
    pub fn with_sigma(mut self, rules: std::sync::Arc<crate::sigma::SigmaRules>) -> Self {
        self.sigma = rules;
        self
    }

    /// Leaves counting failed sign-ins per source IP to a [`crate::signin::SourceIpFailures`] fed by the
    /// sign-in failures topic (see [`crate::signin::counts_per_source_ip`]): this partition sees only the
    /// failures of its own principals, a spray's targets are spread over every partition.
    pub fn counting_source_ips_elsewhere(mut self) -> Self {
        self.signin.cfg.per_source_ip = false;
        self
    }

    /// Whether the restored baseline of `activity`'s principal already covers `offset`: the
    /// activity was evaluated (and what it produced published) before the last checkpoint.
    pub fn already_applied(&self, activity: &Activity, offset: Offset) -> bool {
        match self.principals.get(baseline_key(activity).as_ref()) {
            Some(state) => offset < state.offset,
            None => offset < self.applied_through,
        }
    }

    /// The partition's applied-through mark to save with its baselines: every activity
    /// before it is in them (or its baseline was forgotten since).
    pub fn applied_mark(&self) -> Offset {
        self.next_offset.max(self.applied_through)
    }

    /// The detector of activities partition `partition` (whose counts it keeps in the census).
    pub fn on_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// One of `partitions` partitions: keeps at most `policies.anomaly.max_baselines /
    /// partitions` baselines (the same on every instance, so a replay evicts as the first run
    /// did, whoever owns the partition).
    pub fn for_partitions(mut self, cfg: &PoliciesConfig, partitions: i32) -> Self {
        let partitions = usize::try_from(partitions.max(1)).unwrap_or(1);
        self.max_baselines = cfg.anomaly.max_baselines.div_ceil(partitions).max(1);
        self
    }

    /// Baselines forgotten for room since the last call.
    pub fn take_evicted(&mut self) -> u64 {
        std::mem::take(&mut self.evicted)
    }

    /// Past the bound: forgets the least recently seen actors' baselines (event time; the key
    /// breaks ties, so the choice depends on the baselines alone and is the same on every run)
    /// down to nine tenths of it — one selection over the map for a tenth of the bound's new
    /// actors. Peer groups (`peers:…`, a handful per account) are kept before actors — they
    /// judge every newcomer — up to a tenth of the bound (the organization's always). A
    /// forgotten actor's decisions waiting for facts go with it. Forgotten baselines are
    /// deleted from the changelog.
    /// Forgets the least recently seen baselines past the bound; a forgotten actor's open
    /// folds are closed early, so their repeats are published, not lost. Returns those
    /// closing alerts.
    fn evict(&mut self) -> Vec<Alert> {
        let target = self.max_baselines - self.max_baselines / 10;
        let excess = self.principals.len().saturating_sub(target);
        // The `n` least recently seen of `candidates`.
        fn oldest(mut candidates: Vec<(i64, &String)>, n: usize) -> Vec<String> {
            let n = n.min(candidates.len());
            if n == 0 {
                return Vec::new();
            }
            candidates
                .select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            candidates[..n].iter().map(|(_, k)| (*k).clone()).collect()
        }
        let is_peer = |k: &str| k.starts_with(crate::anomaly::PEER_PREFIX);
        // Peer groups (a few per account) judge every newcomer and are kept before actors —
        // up to a tenth of the bound: past it (only made-up accounts get there) the least
        // recently seen go too, or they would crowd the actors out. The organization's stays.
        let peers: Vec<(i64, &String)> = self
            .principals
            .iter()
            .filter(|(k, _)| is_peer(k) && k.as_str() != crate::anomaly::ORG_GROUP)
            .map(|(k, s)| (s.last_seen, k))
            .collect();
        let peer_excess = peers.len().saturating_sub(self.max_baselines / 10);
        let mut victims = oldest(peers, peer_excess);
        let actors: Vec<(i64, &String)> = self
            .principals
            .iter()
            .filter(|(k, _)| !is_peer(k))
            .map(|(k, s)| (s.last_seen, k))
            .collect();
        victims.extend(oldest(actors, excess.saturating_sub(victims.len())));
        let n = victims.len();
        if n == 0 {
            return Vec::new();
        }
        let mut closing = Vec::new();
        for k in victims {
            if let Some(state) = self.principals.remove(&k) {
                self.forgotten(k, state.on_changelog);
                closing.extend(crate::fold::close_all(state.folds));
            }
        }
        self.evicted += n as u64;
        closing
    }

    /// This partition's counts of the days that changed since the last call, to publish on
    /// the facts topic before any mark that covers them.
    pub fn take_census(&mut self, facts: &Facts) -> Vec<(i64, crate::census::CensusDay)> {
        std::mem::take(&mut self.census_days)
            .into_iter()
            .filter_map(|day| Some((day, facts.census.get(day, self.partition)?.clone())))
            .collect()
    }

    /// Days whose counts must be published again (the last publication failed).
    pub fn census_unpublished(&mut self, days: impl IntoIterator<Item = i64>) {
        self.census_days.extend(days);
    }

    /// This partition's counts of the days that changed since the last call, to save with
    /// the baselines.
    pub fn take_census_to_save(&mut self, facts: &Facts) -> Vec<(i64, crate::census::CensusDay)> {
        std::mem::take(&mut self.census_to_save)
            .into_iter()
            .filter_map(|day| Some((day, facts.census.get(day, self.partition)?.clone())))
            .collect()
    }

    /// Days whose counts must be saved again (the last save failed).
    pub fn census_unsaved(&mut self, days: impl IntoIterator<Item = i64>) {
        self.census_to_save.extend(days);
    }

    /// The activities partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Facts this partition learned (new to the facts it was given) since the last call, to
    /// publish on the facts topic.
    pub fn take_facts(&mut self) -> Vec<(String, crate::facts::Fact)> {
        std::mem::take(&mut self.outbox)
    }

    /// Sigma correlations' shares of the activities evaluated since the last call, to count
    /// on the correlations topic ([`crate::sigma::correlation`]).
    pub fn take_correlation_hits(&mut self) -> Vec<crate::sigma::correlation::Hit> {
        std::mem::take(&mut self.correlation_hits)
    }

    /// Turns the geo-based anomaly detections on (a geolocation database is loaded).
    pub fn with_geo(mut self, cfg: &PoliciesConfig, geo: bool) -> Self {
        self.anomalies = crate::anomaly::Anomalies::new(cfg.anomaly.clone(), geo);
        self
    }

    /// Installs baselines restored from the changelog, and its applied-through mark (before
    /// the first `observe`).
    pub fn restore(&mut self, states: Baselines, applied_through: Offset) {
        self.applied_through = applied_through;
        self.held_countries = states
            .iter()
            .flat_map(|(key, st)| {
                st.pending
                    .iter()
                    .map(move |p| (day_start(p.time()), p.offset, key.clone()))
            })
            .collect();
        self.fold_index = states
            .iter()
            .flat_map(|(key, st)| st.folds.iter().map(move |f| (f.until, key.clone())))
            .collect();
        self.principals = states;
        for state in self.principals.values_mut() {
            state.on_changelog = crate::anomaly::OnChangelog(true);
        }
        self.dirty.clear();
    }

    /// A baseline just forgotten is deleted from the changelog at the next save if it was
    /// ever saved there; one never saved leaves nothing to save — so while saves keep failing,
    /// what waits to be saved stays within the bound.
    fn forgotten(&mut self, key: String, on_changelog: crate::anomaly::OnChangelog) {
        if on_changelog.0 {
            self.dirty.insert(key);
        } else {
            self.dirty.remove(&key);
        }
    }

    /// The baseline of `key`, as [`Detector::take_changes`] gave it, is on the changelog.
    pub fn delivered(&mut self, key: &str) {
        if let Some(state) = self.principals.get_mut(key) {
            state.on_changelog = crate::anomaly::OnChangelog(true);
        }
    }

    /// The baselines changed since the last call: (principal key, state), `None` for a
    /// forgotten principal (a tombstone).
    pub fn take_changes(&mut self) -> Vec<(String, Option<&crate::anomaly::PrincipalState>)> {
        let keys: Vec<String> = self.dirty.drain().collect();
        keys.into_iter()
            .map(|k| {
                let state = self.principals.get(&k).map(|s| &**s);
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
        // The table's slots (key and box inline, a control byte; empty ones too), then each
        // key's text and each baseline (boxed: an empty slot costs a pointer, not a baseline).
        let inline = std::mem::size_of::<String>() + std::mem::size_of::<Box<()>>();
        self.principals.capacity() * (inline + 1)
            + self
                .principals
                .iter()
                .map(|(k, s)| k.capacity() + s.heap_size())
                .sum::<usize>()
    }

    /// Terminations that reached this partition after it saw the terminated user act (also
    /// called between activities, so a quiet partition still raises them).
    pub fn look_back(&mut self, facts: &Facts) -> Vec<Alert> {
        let new: Vec<(String, crate::facts::Fact)> = {
            if facts.terminations() <= self.terminations_seen {
                return Vec::new();
            }
            let new = facts.terminations_since(self.terminations_seen);
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
            // A user's actor is its ARN without the path, in its own partition.
            let found = PARTITIONS.iter().find_map(|partition| {
                let principal = format!("arn:{partition}:iam::{account}:user/{name}");
                self.principals
                    .contains_key(&principal)
                    .then_some(principal)
            });
            let Some(principal) = found else {
                continue;
            };
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
        facts: &mut Facts,
        far: bool,
    ) -> Vec<Alert> {
        if activity.principal.kind == kinds::TRAILGUARD {
            return matched;
        }
        let mut looked_back = self.look_back(facts);
        let key = baseline_key(activity).into_owned();
        let t = activity.event_time.timestamp();
        let ttl = self.state_ttl.num_seconds();
        // Applied before the restored save, its baseline forgotten since: applied again, it
        // would start a new baseline (and count twice) where an uninterrupted run has none.
        if offset < self.applied_through && !self.principals.contains_key(&key) {
            return looked_back;
        }
        let first_seen = match self.principals.get(&key) {
            // Silent for longer than `state_ttl`: it learns again (reset below).
            Some(state)
                if state.last_seen > 0 && t - state.last_seen.max(state.first_seen) > ttl =>
            {
                0
            }
            Some(state) => state.first_seen,
            None => {
                self.principals.insert(key.clone(), Default::default());
                0
            }
        };
        // While it learns, its peers' baselines judge its rates (the first group that has
        // enough hours) and its calls (the first group taught any: a group of one member
        // vouches for no call, yet is a group — its newcomer is judged on every call).
        let learning = self.anomalies.learning(first_seen, t);
        // The actor's peer groups, built once (up to three uses below).
        let mut grouped = false;
        let (peers, peer_calls) = if learning {
            let groups = self.peer_groups.once(activity, &mut grouped);
            let rates = groups.iter().find_map(|group| {
                let peers = self.principals.get(group).filter(|p| p.peers_ready())?;
                Some((peers.peer_rates().clone(), group.clone()))
            });
            let calls = groups.iter().find_map(|group| {
                let peers = self.principals.get(group)?;
                peers.taught_calls().then(|| peers.api_known.clone())
            });
            (rates, calls)
        } else {
            (None, None)
        };
        // What the call is, when the actor made it itself (an AWS service acting on its
        // behalf did not choose it).
        let classified = crate::anomaly::Call::classify(activity);
        // Whether fewer than two of the organization's established actors make it (once the
        // organization's group has been taught for a learning period; before that, nothing
        // counts as rare).
        let org_rare = match classified {
            Some((Some(row), _, weight)) if weight >= 2 => self
                .principals
                .get(crate::anomaly::ORG_GROUP)
                .is_some_and(|org| {
                    org.first_seen > 0
                        && !self.anomalies.learning(org.first_seen, t)
                        && org.api_known.binary_search(&row).is_err()
                }),
            _ => false,
        };
        let Some(state) = self.principals.get_mut(&key) else {
            return looked_back;
        };
        // Already in a restored baseline: its alerts were published before it was saved.
        if offset < state.offset {
            return looked_back;
        }
        // Silent for longer than `state_ttl`: its baseline is forgotten, whether or not the
        // periodic pruning below has come round to it yet (so the outcome does not depend on
        // when it runs). When it was last seen is kept, so its return is still dormant.
        // (A baseline forgotten so keeps its `last_seen`, which a failed sign-in does not move:
        // its new `first_seen` says it is learning again, not to be forgotten at every one.)
        let latest = state.last_seen.max(state.first_seen);
        if state.last_seen > 0 && t - latest > self.state_ttl.num_seconds() {
            let (offset, last_seen) = (state.offset, state.last_seen);
            let last_id = std::mem::take(&mut state.last_id);
            let pending = std::mem::take(&mut state.pending);
            let folds = std::mem::take(&mut state.folds);
            **state = crate::anomaly::PrincipalState::default();
            state.offset = offset;
            // When it last acted, and that it did (a failed sign-in is not acting).
            state.last_seen = last_seen;
            state.last_id = last_id;
            // Countries still waiting are decisions owed, not memory; so are the closing
            // alerts of open folds (closed just below, their periods long over).
            state.pending = pending;
            state.folds = folds;
        }
        // What the event policies found about this actor weighs on its later unusual calls
        // (not on this activity's: one call is one piece of evidence).
        let event_alerted = !matched.is_empty();
        let mut alerts = Vec::new();
        if !matched.is_empty() || !state.folds.is_empty() {
            let mut opened = Vec::new();
            alerts = crate::fold::fold_noting(
                &mut state.folds,
                matched,
                t,
                self.fold_period,
                &activity.event_name,
                &mut opened,
            );
            for until in opened {
                self.fold_index.insert((until, key.clone()));
            }
        }
        let mut closed = Vec::new();
        let peers = crate::anomaly::Peers {
            rates: peers.as_ref().map(|(rates, group)| (rates, group.as_str())),
            calls: peer_calls.as_deref(),
            org_rare,
            call: crate::anomaly::Call::Read(classified),
        };
        let held_before = state.pending.last().map(|p| p.offset);
        let complete_through = complete_unless_far(far, facts.complete_through());
        let mut org = crate::anomaly::OrgView {
            census: &mut facts.census,
            partition: self.partition,
            offset: Some(offset),
            complete_through,
            countable: !far,
            counted: false,
        };
        let mut raised =
            self.anomalies
                .observe_with_peers(state, &mut org, activity, peers, &mut closed);
        if org.counted {
            self.census_days.insert(crate::census::day_of(t));
            self.census_to_save.insert(crate::census::day_of(t));
        }
        if state.pending.last().map(|p| p.offset) != held_before {
            self.held_countries
                .insert((day_start(t), offset, key.clone()));
        }
        disarm_if_failed(&mut raised, activity, &self.act_on_failed);
        if event_alerted
            || raised.iter().any(|a| {
                a.policy_id != crate::anomaly::UNUSUAL_API.id
                    && a.policy_id != crate::anomaly::DISCOVERY_BURST.id
            })
        {
            state.other_alert = state.other_alert.max(t);
        }
        alerts.extend(raised);
        let mut raised = self.anomalies.observe_facts(state, facts, activity);
        disarm_if_failed(&mut raised, activity, &self.act_on_failed);
        alerts.extend(raised);
        // Most are known already (a region in use): those are not built.
        let new = crate::facts::facts_of_where(activity, |key, time, cleared| {
            !facts.knows(key, time, cleared)
        });
        for (key, fact) in new {
            if facts.learn(&key, fact.clone()) {
                self.outbox.push((key, fact));
            }
        }
        state.offset = offset + 1;
        self.applied_now = true;
        // A learned actor's classified calls teach its peer groups, and the organization's,
        // what their members do — only its own successful ones, and not one just judged
        // unusual (a compromised member must not vouch for the calls of the identities its
        // attacker makes next); a call is a group's once two members have made it.
        let judged_unusual = alerts
            .iter()
            .any(|a| a.policy_id == crate::anomaly::UNUSUAL_API.id);
        if let Some((Some(row), _, _)) =
            classified.filter(|_| !learning && !judged_unusual && activity.outcome.is_success())
        {
            let member = crate::anomaly::behaviour::hash(&[&key]);
            let groups = self.peer_groups.once(activity, &mut grouped);
            for group in groups
                .iter()
                .map(String::as_str)
                .chain([crate::anomaly::ORG_GROUP])
            {
                // Looked up first: a group is there nearly always (no key copied).
                if !self.principals.contains_key(group) {
                    self.principals
                        .insert(group.to_string(), Default::default());
                }
                let Some(peers) = self.principals.get_mut(group) else {
                    continue;
                };
                // Seen, so pruning keeps it like the groups' rates (saved when it changes, or
                // a day on, so a group whose calls are all known is not forgotten).
                let changed =
                    peers.teach_call(row, member) || t - peers.last_seen >= crate::census::DAY;
                if peers.first_seen == 0 {
                    peers.first_seen = t;
                }
                peers.last_seen = peers.last_seen.max(t);
                if changed && !self.dirty.contains(group) {
                    self.dirty.insert(group.to_string());
                }
            }
        }
        // A learned actor's closed hours teach its peer groups.
        if !closed.is_empty() {
            let groups = self.peer_groups.once(activity, &mut grouped);
            for group in groups.iter() {
                self.principals
                    .entry(group.clone())
                    .or_default()
                    .teach_peers(&closed, t);
                self.dirty.insert(group.clone());
            }
        }
        alerts.append(&mut looked_back);
        if !self.dirty.contains(&key) {
            self.dirty.insert(key);
        }
        // At absolute offsets: a replay prunes where the first run did.
        if offset.rem_euclid(10_000) == 0 {
            if let Some(max) = self.max_event_time {
                let horizon = max
                    .checked_sub_signed(self.state_ttl)
                    .map_or(i64::MIN, |h| h.timestamp());
                // An actor that may be dormant (see `may_be_dormant`) and has acted keeps when
                // it last did (and nothing else) so its return is still judged dormant — old
                // credentials used again after a long silence are the return that matters
                // most; the bound on baselines evicts such least recently seen actors first.
                // Workloads, peer groups and actors known only by failed sign-ins are
                // forgotten. A pruned actor has no `first_seen`.
                let old: Vec<String> = self
                    .principals
                    .iter()
                    .filter(|(_, s)| {
                        s.last_seen.max(s.first_seen) < horizon
                            && s.pending.is_empty()
                            && (s.first_seen > 0 || s.last_id.is_empty())
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in old {
                    let keep = crate::anomaly::may_be_dormant(&k);
                    match self.principals.get_mut(&k) {
                        Some(state) if keep && !state.last_id.is_empty() => {
                            let folds = std::mem::take(&mut state.folds);
                            let last_id = std::mem::take(&mut state.last_id);
                            let (offset, last_seen) = (state.offset, state.last_seen);
                            let on_changelog = state.on_changelog;
                            **state = crate::anomaly::PrincipalState::default();
                            state.offset = offset;
                            state.last_seen = last_seen;
                            state.last_id = last_id;
                            state.on_changelog = on_changelog;
                            alerts.extend(crate::fold::close_all(folds));
                            self.dirty.insert(k);
                        }
                        _ => {
                            if let Some(state) = self.principals.remove(&k) {
                                self.forgotten(k, state.on_changelog);
                                alerts.extend(crate::fold::close_all(state.folds));
                            }
                        }
                    }
                }
            }
        }
        if self.principals.len() > self.max_baselines {
            alerts.extend(self.evict());
        }
        alerts
    }

    /// Evaluates one activity read at `offset` against the organization's `facts` (which it
    /// may add to: see [`Detector::take_facts`]). Returns the alerts it raises.
    pub fn observe(
        &mut self,
        activity: &Activity,
        offset: Offset,
        facts: &mut Facts,
    ) -> Vec<Alert> {
        self.next_offset = self.next_offset.max(offset.saturating_add(1));
        self.applied_now = false;
        let mut matched = Vec::new();
        for policy in &self.event_policies {
            policy.evaluate(activity, &mut matched);
        }
        self.sigma
            .evaluate(activity, &mut matched, &mut self.correlation_hits);
        // Before folding: a fold keeps the actions of the alert that opened it.
        disarm_if_failed(&mut matched, activity, &self.act_on_failed);
        // One clock read per activity, for the baselines and the watermark.
        let far = far_future(activity);
        let mut alerts = self.observe_baseline(activity, offset, matched, facts, far);
        alerts.extend(self.judge_region(activity, offset, facts));
        let mut raised = self.custom.observe(activity, offset);
        raised.extend(self.signin.observe(activity, offset, &mut self.closed));
        disarm_if_failed(&mut raised, activity, &self.act_on_failed);
        alerts.extend(raised);
        // Several detections about this actor within the hour: one more, about them all.
        if alerts.iter().any(|a| a.severity >= Severity::Medium) {
            let mut sequence: Vec<Alert> = self
                .judge_sequence(activity, offset, &alerts)
                .into_iter()
                .collect();
            disarm_if_failed(&mut sequence, activity, &self.act_on_failed);
            alerts.extend(sequence);
        }
        // Inventory snapshots carry the time they were taken, not trail time: they must not
        // move the watermark of a backfill.
        if activity.principal.kind != kinds::TRAILGUARD
            && moves_watermark(self.max_event_time, activity.event_time, far)
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

    /// Adds what was raised about `activity` to its actor's sequence of detections (see
    /// [`crate::anomaly::Anomalies::sequence`]): an `attack-sequence` alert when they complete
    /// one. Only when this call applied the activity to the baseline: a replay of what a
    /// restored baseline holds has its detections there already, and what they completed
    /// was published before the save.
    fn judge_sequence(
        &mut self,
        activity: &Activity,
        offset: Offset,
        alerts: &[Alert],
    ) -> Option<Alert> {
        if activity.principal.kind == kinds::TRAILGUARD {
            return None;
        }
        if !self.applied_now {
            return None;
        }
        let key = baseline_key(activity);
        let state = self.principals.get_mut(key.as_ref())?;
        // Forgotten and made again since (pruned, then a region judged): not this baseline.
        if state.offset != offset.saturating_add(1) {
            return None;
        }
        self.anomalies.sequence(state, activity, alerts)
    }

    /// Judges `activity` for an unusual region, now if the facts allow, else holds it (also
    /// on a replay of an activity already in the baselines: a decision held at the last
    /// checkpoint is made again; one already made is suppressed or raised with the same id).
    fn judge_region(&mut self, activity: &Activity, offset: Offset, facts: &Facts) -> Vec<Alert> {
        use crate::facts::RegionVerdict;
        if activity.principal.kind == kinds::TRAILGUARD || !self.anomalies.judges_region(activity) {
            return Vec::new();
        }
        let complete = complete_for(activity, facts.complete_through());
        match self.anomalies.region_verdict(facts, activity, complete) {
            // Final, and it changes nothing: decided out of turn.
            RegionVerdict::Usual => return Vec::new(),
            RegionVerdict::Unusual(why) if self.held.is_empty() => {
                return self.raise_region(activity, why).into_iter().collect()
            }
            _ => {}
        }
        // Judged in offset order, after the activities held before it.
        self.held.push_back((offset, activity.clone()));
        self.decide_held(facts)
    }

    /// Judges the held activities the facts are now complete for, in order; returns the
    /// unusual-region alerts. Called after each activity and on the checkpoint schedule.
    pub fn decide_held(&mut self, facts: &Facts) -> Vec<Alert> {
        use crate::facts::RegionVerdict;
        let complete = facts.complete_through();
        let mut out = Vec::new();
        while let Some((_, front)) = self.held.front() {
            let complete = complete_for(front, complete);
            let verdict = match self.anomalies.region_verdict(facts, front, complete) {
                RegionVerdict::Wait if self.held.len() > HELD_LIMIT => {
                    self.decided_early += 1;
                    self.anomalies.region_verdict(facts, front, i64::MAX)
                }
                RegionVerdict::Wait => break,
                verdict => verdict,
            };
            let Some((_, activity)) = self.held.pop_front() else {
                break;
            };
            if let RegionVerdict::Unusual(why) = verdict {
                out.extend(self.raise_region(&activity, why));
            }
        }
        out.extend(self.decide_countries(facts, complete));
        out
    }

    /// Judges the countries held in baselines whose day the organization's counts are now
    /// complete before, earliest day first (each decision is about one actor and country: none
    /// waits for another's).
    fn decide_countries(&mut self, facts: &Facts, complete: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        while let Some((start, offset, key)) = self.held_countries.first().cloned() {
            let pending = self
                .principals
                .get(&key)
                .and_then(|st| st.pending.iter().find(|p| p.offset == offset));
            let Some(pending) = pending else {
                // Stale: the baseline was forgotten, or the country dropped.
                self.held_countries.pop_first();
                continue;
            };
            if complete_for(pending.activity(), complete) < start {
                if self.held_countries.len() <= HELD_LIMIT {
                    break;
                }
                self.decided_early += 1;
            }
            self.held_countries.pop_first();
            let Some(state) = self.principals.get_mut(&key) else {
                continue;
            };
            let Some(i) = state.pending.iter().position(|p| p.offset == offset) else {
                continue;
            };
            let pending = state.pending.remove(i);
            crate::anomaly::release_if_empty(&mut state.pending);
            out.extend(self.anomalies.decide_country(state, pending, &facts.census));
            self.dirty.insert(key);
        }
        out
    }

    /// The unusual-region alert for `activity`, suppressed as the principal's state says.
    fn raise_region(&mut self, activity: &Activity, why: String) -> Option<Alert> {
        let key = baseline_key(activity).into_owned();
        let state = self.principals.entry(key.clone()).or_default();
        let alert = self.anomalies.unusual_region(state, activity, why)?;
        self.dirty.insert(key);
        Some(alert)
    }

    /// How many held activities were judged before their facts were complete since the last
    /// call (the hold was full).
    pub fn take_decided_early(&mut self) -> u64 {
        std::mem::take(&mut self.decided_early)
    }

    /// Activities held for facts.
    pub fn held(&self) -> usize {
        self.held.len() + self.held_countries.len()
    }

    /// Latest event time this partition has evaluated.
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_time.map(|t| t.timestamp())
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
            .min(self.held.front().map_or(next, |(offset, _)| *offset))
            .min(next);
        settle(first_open, &mut self.closed, &mut self.committed)
    }

    /// Number of open bursts (for the state-size gauge).
    pub fn state_size(&self) -> usize {
        self.signin.bursts.len() + self.principals.len() + self.held()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::advances_watermark;
    use crate::signin::{counts_per_source_ip, SourceIpFailures};
    use trailguard_common::contract::Severity;
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
            // Left to `actor_key`, as for an activity of schema version 1.
            actor: Default::default(),
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
            data_event: false,
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
        let mut facts = Facts::default();
        activities
            .iter()
            .enumerate()
            .flat_map(|(offset, a)| detector.observe(a, offset as Offset, &mut facts))
            .collect()
    }

    /// The baselines `detector` changed, saved as the changelog keeps them (JSON) and read
    /// back, as a restart restores them.
    fn saved_through_json(detector: &mut Detector) -> Baselines {
        detector
            .take_changes()
            .into_iter()
            .filter_map(|(key, st)| {
                let text = serde_json::to_string(st?).expect("a baseline serializes");
                let back = serde_json::from_str(&text).expect("a baseline reads back");
                Some((key, Box::new(back)))
            })
            .collect()
    }

    fn detector() -> Detector {
        Detector::new(
            &PoliciesConfig::default(),
            std::time::Duration::from_secs(300),
        )
    }

    #[test]
    fn a_replay_after_eviction_does_not_bring_forgotten_baselines_back() {
        let mut cfg = PoliciesConfig::default();
        cfg.anomaly.max_baselines = 40_000;
        let bounded =
            || Detector::new(&cfg, std::time::Duration::from_secs(300)).for_partitions(&cfg, 4);
        let activities: Vec<Activity> = (0..12_000)
            .map(|i| failure(&format!("u{i}"), "198.51.100.1", i))
            .collect();
        let mut first = bounded();
        run(&mut first, &activities);
        assert!(first.take_evicted() > 0);
        // Saved at the end (tombstones drop out), then restarted and replayed from an
        // earlier commit: activities of evicted actors are already applied.
        let saved: Baselines = first
            .take_changes()
            .into_iter()
            .filter_map(|(k, s)| Some((k, Box::new(s?.clone()))))
            .collect();
        let mut second = bounded();
        second.restore(saved, first.applied_mark());
        assert!(
            second.already_applied(&activities[1], 1),
            "u1 was evicted after it was applied"
        );
        let mut facts = Facts::default();
        for (offset, a) in activities.iter().enumerate() {
            second.observe(a, offset as Offset, &mut facts);
        }
        // Everything was applied: the replay changes no baseline and forgets none.
        assert_eq!(second.take_evicted(), 0);
        assert!(second.take_changes().is_empty());
        let keys = |d: &Detector| {
            let mut k: Vec<String> = d.principals.keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&second), keys(&first));
    }

    /// A termination that reaches a partition after it saw the user act is looked back for,
    /// whatever the user's path and partition.
    #[test]
    fn a_late_termination_finds_users_under_a_path_or_in_another_partition() {
        let mut d = detector();
        let mut facts = Facts::default();
        let users = [
            serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/ops/bob", "userName": "bob", "accountId": "187901811700"}),
            serde_json::json!({"type": "IAMUser", "arn": "arn:aws-us-gov:iam::187901811700:user/carol", "userName": "carol", "accountId": "187901811700"}),
        ];
        for (offset, user) in users.into_iter().enumerate() {
            let a = acting(user, "ListBuckets", 1, 0);
            d.observe(&a, offset as Offset, &mut facts);
        }
        for name in ["bob", "carol"] {
            facts.learn(
                &format!("user:187901811700/{name}"),
                crate::facts::Fact {
                    time: 1_700_000_000,
                    how: "DeleteUser by admin".into(),
                    subject: Some(format!("187901811700/{name}")),
                    cleared: false,
                },
            );
        }
        let alerts = d.look_back(&facts);
        assert_eq!(alerts.len(), 2, "{alerts:#?}");
    }

    /// Peer groups are named by account: records of made-up accounts make one group each.
    /// They are kept before actors, but not without end: past a tenth of the bound the least
    /// recently seen go too, and the bound holds.
    #[test]
    fn peer_groups_of_made_up_accounts_do_not_outgrow_the_bound() {
        let mut cfg = PoliciesConfig::default();
        cfg.anomaly.max_baselines = 40_000;
        let mut d =
            Detector::new(&cfg, std::time::Duration::from_secs(300)).for_partitions(&cfg, 4);
        let user = |i: usize| {
            serde_json::json!({"type": "IAMUser", "arn": format!("arn:aws:iam::{i:012}:user/u"),
                "userName": "u", "accountId": format!("{i:012}")})
        };
        // Three rounds of 5,000 accounts, each a week of learning and a call: every round's
        // learned actors make their accounts' groups.
        let call = |i: usize, day: i64| {
            let mut a = acting(user(i), "CreateKeyPair", day, 0);
            a.event_source = "ec2.amazonaws.com".into();
            a
        };
        let mut acts: Vec<Activity> = Vec::new();
        for round in 0..3 {
            let accounts = round * 5_000..(round + 1) * 5_000;
            let day = 16 * round as i64;
            acts.extend(accounts.clone().map(|i| call(i, day)));
            acts.extend(accounts.map(|i| call(i, day + 8)));
        }
        run(&mut d, &acts);
        let peers = d
            .principals
            .keys()
            .filter(|k| k.starts_with(crate::anomaly::PEER_PREFIX))
            .count();
        let actors = d.principals() - peers;
        assert!(d.evicted > 0, "past the bound");
        // Peer groups are cut to a tenth of the bound at each eviction, and at most another
        // tenth of new baselines comes before the next: the rest is the actors'.
        assert!(
            peers <= 2_001 && actors >= 7_000 && d.principals() <= 10_000,
            "{actors} actors and {peers} peer groups for a bound of 10,000"
        );
    }

    #[test]
    fn an_actor_named_like_detects_own_records_gets_a_baseline_of_its_own() {
        // A forged record's ARN may be anything: one naming the organization's peer group, a
        // day of the organization's counts or the applied-through mark must not be kept (and
        // saved to the changelog) under that key.
        let mut d = detector();
        let activities: Vec<Activity> = [
            crate::anomaly::ORG_GROUP,
            "peers:role:arn:aws:iam::1:role/admin",
            "census:19700",
            crate::state::APPLIED_KEY,
            "actor:census:19700",
        ]
        .iter()
        .enumerate()
        .map(|(i, arn)| {
            let mut a = failure("x", "198.51.100.1", i as i64);
            a.principal.arn = Some(arn.to_string());
            a
        })
        .collect();
        run(&mut d, &activities);
        let reserved = ["peers:", "census:", "applied:"];
        for key in d.principals.keys() {
            assert!(
                !reserved.iter().any(|r| key.starts_with(r)),
                "{key} was kept as an actor's baseline"
            );
        }
        assert_eq!(d.principals(), activities.len(), "one baseline each");
    }

    #[test]
    fn past_the_bound_the_least_recently_seen_baselines_are_forgotten() {
        let mut cfg = PoliciesConfig::default();
        cfg.anomaly.max_baselines = 40_000;
        // One of four partitions: 10,000 baselines.
        let mut d =
            Detector::new(&cfg, std::time::Duration::from_secs(300)).for_partitions(&cfg, 4);
        // 12,000 actors, one a minute; the first, active again near the end, is kept.
        let mut activities: Vec<Activity> = (0..12_000)
            .map(|i| failure(&format!("u{i}"), "198.51.100.1", i))
            .collect();
        activities.insert(11_500, failure("u0", "198.51.100.1", 11_499));
        // The first 9,000 baselines are saved before the bound is reached.
        let mut facts = Facts::default();
        for (offset, a) in activities[..9_000].iter().enumerate() {
            d.observe(a, offset as Offset, &mut facts);
        }
        let saved: Vec<String> = d.take_changes().into_iter().map(|(k, _)| k).collect();
        for key in &saved {
            d.delivered(key);
        }
        for (offset, a) in activities.iter().enumerate().skip(9_000) {
            d.observe(a, offset as Offset, &mut facts);
        }
        assert!(d.principals() <= 10_000, "{}", d.principals());
        let evicted = d.take_evicted();
        assert!(evicted >= 2_000, "{evicted}");
        assert!(
            d.principals
                .contains_key(&activities[11_500].actor_key().into_owned()),
            "u0 acted lately"
        );
        assert!(
            !d.principals
                .contains_key(&activities[1].actor_key().into_owned()),
            "u1 was the least recently seen"
        );
        assert!(d
            .principals
            .contains_key(&activities[11_999].actor_key().into_owned()));
        // Forgotten baselines that were saved are deleted from the changelog too (all but any
        // made again since, such as a peer group's); those never saved need no deleting.
        let tombstones: Vec<String> = d
            .take_changes()
            .into_iter()
            .filter(|(_, s)| s.is_none())
            .map(|(k, _)| k)
            .collect();
        assert!(
            tombstones.len() >= 2_000 && tombstones.len() as u64 <= evicted,
            "{}",
            tombstones.len()
        );
        assert!(tombstones.iter().all(|k| saved.contains(k)));
    }

    #[test]
    fn while_saves_fail_forgotten_baselines_never_saved_leave_nothing_to_delete() {
        // The changelog is out of reach: nothing is saved while 30,000 actors pass through a
        // partition bounded at 10,000. What waits to be saved stays within the bound.
        let mut cfg = PoliciesConfig::default();
        cfg.anomaly.max_baselines = 40_000;
        let mut d =
            Detector::new(&cfg, std::time::Duration::from_secs(300)).for_partitions(&cfg, 4);
        let activities: Vec<Activity> = (0..30_000)
            .map(|i| failure(&format!("u{i}"), "198.51.100.1", i))
            .collect();
        run(&mut d, &activities);
        assert!(d.take_evicted() >= 20_000);
        assert!(
            d.dirty.len() <= 10_000,
            "{} keys wait to be saved",
            d.dirty.len()
        );
        let changes = d.take_changes();
        assert!(
            changes.iter().all(|(_, s)| s.is_some()),
            "a tombstone for a baseline never saved"
        );
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
    fn only_activities_within_the_clocks_reach_move_the_detectors_watermark() {
        let mut d = detector();
        let mut facts = Facts::default();
        let first = failure("alice", "198.51.100.1", 0);
        d.observe(&first, 0, &mut facts);
        assert_eq!(d.max_event_time(), Some(first.event_time.timestamp()));
        // Dated 2199: never the watermark, nor a day past the clock.
        let mut far = failure("alice", "198.51.100.1", 1);
        far.event_time = DateTime::from_timestamp(7_200_000_000, 0).unwrap_or_default();
        d.observe(&far, 1, &mut facts);
        far.event_time = Utc::now() + Duration::days(2);
        d.observe(&far, 2, &mut facts);
        assert_eq!(d.max_event_time(), Some(first.event_time.timestamp()));
        // Earlier: not either; later, within a day of the clock: it moves.
        let mut earlier = failure("alice", "198.51.100.1", -5);
        d.observe(&earlier, 3, &mut facts);
        assert_eq!(d.max_event_time(), Some(first.event_time.timestamp()));
        earlier.event_time = Utc::now() + Duration::hours(2);
        d.observe(&earlier, 4, &mut facts);
        assert_eq!(d.max_event_time(), Some(earlier.event_time.timestamp()));
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

    /// Identity Center's portal: a wrong password is a failed `CredentialVerification` of a
    /// user known by its id alone (no ARN, no name). Guesses at one user are that user's burst;
    /// guesses at many users from one address are a spray — each user a principal of its
    /// own, not one for the whole account.
    #[test]
    fn identity_center_password_guesses_are_sign_in_failures() {
        let portal = |user: &str, ip: &str, minute: i64| {
            let mut a = failure(user, ip, minute);
            a.event_name = "CredentialVerification".into();
            a.event_type = Some("AwsServiceEvent".into());
            // As ingest reads it: the user id is the name too (no userName in the record).
            a.principal = Principal {
                kind: "IdentityCenterUser".into(),
                account_id: Some("1".into()),
                name: Some(format!("94482488-{user}")),
                on_behalf_of: Some(format!("94482488-{user}")),
                ..Principal::default()
            };
            a
        };
        let guesses: Vec<_> = (0..5).map(|m| portal("alice", "1.2.3.4", m)).collect();
        let alerts = run(&mut detector(), &guesses);
        let mut entities: Vec<&str> = alerts.iter().map(|a| a.entity.id.as_str()).collect();
        entities.sort_unstable();
        assert_eq!(entities, ["1.2.3.4", "identity-center:94482488-alice"]);
        let spray: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, u)| portal(u, "9.9.9.9", i as i64))
            .collect();
        let alerts = run(&mut detector(), &spray);
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].entity.id, "9.9.9.9");
        assert!(
            alerts[0].evidence.summary.contains("password spray"),
            "{alerts:#?}"
        );
    }

    /// A password prompt (Identity Center's `CredentialChallenge`, root's password recovery
    /// request) is logged as a success, yet anyone who types a user name causes it: an alert
    /// about one keeps only its notifications, as an alert about a failed sign-in does.
    #[test]
    fn alerts_about_a_password_prompt_only_notify() {
        use trailguard_common::contract::{ActionKind, RequestedAction};
        for name in ["CredentialChallenge", "PasswordRecoveryRequested"] {
            let mut prompt = failure("alice", "198.51.100.7", 0);
            prompt.event_name = name.into();
            prompt.outcome.status = OutcomeStatus::Success;
            let meta = crate::policy::PolicyMeta {
                id: "terminated-user",
                name: "t",
                kind: trailguard_common::contract::AlertKind::Anomaly,
            };
            let armed = |kind| RequestedAction {
                kind,
                target: crate::policy::action_target(kind, &prompt),
            };
            let mut alerts = vec![crate::policy::AlertBuilder::about(
                &meta,
                &prompt,
                trailguard_common::contract::Severity::High,
            )
            .actions(vec![
                armed(ActionKind::Notify),
                armed(ActionKind::SuspendUser),
            ])
            .id_from(&[name])];
            disarm_if_failed(&mut alerts, &prompt, &Default::default());
            let kinds: Vec<ActionKind> = alerts[0].actions.iter().map(|a| a.kind).collect();
            assert_eq!(kinds, [ActionKind::Notify], "{name}");
        }
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
                .filter(|a| a.entity.kind == "principal"
                    && a.policy_id == crate::signin::SIGNIN_FAILURES.id)
                .count(),
            3
        );
        // And three per address; and `failed-logins` once: sixty failures in an hour by a
        // new actor pass its floor.
        let signin = |a: &&Alert| a.policy_id == crate::signin::SIGNIN_FAILURES.id;
        assert_eq!(alerts.iter().filter(signin).count(), 6);
        let anomaly: Vec<&str> = alerts
            .iter()
            .filter(|a| !signin(a))
            .map(|a| a.policy_id.as_str())
            .collect();
        assert_eq!(anomaly, ["failed-logins"]);
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
        let mut facts = Facts::default();
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
                .flat_map(|(o, a)| first.observe(a, o as Offset, &mut facts))
                .collect();
            let safe = first.safe_offset(cut as Offset) as usize;
            let after_uninterrupted: Vec<Alert> = events[cut..]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| first.observe(a, (cut + i) as Offset, &mut facts))
                .collect();
            let mut second = detector();
            let replayed: Vec<Alert> = events[safe..]
                .iter()
                .enumerate()
                .flat_map(|(i, a)| second.observe(a, (safe + i) as Offset, &mut facts))
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
        let mut facts = Facts::default();
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
            partition_alerts.extend(partitions[p].observe(&a, (i / 3) as Offset, &mut facts));
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
        a.request_parameters = Some(serde_json::json!({"groupId": "sg-1"}).into());
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
    fn an_open_fold_survives_its_actors_baseline_being_forgotten_for_silence() {
        // alice changes the group three times, then is silent longer than state_ttl (180 days)
        // with nothing else on the partition to move its time; her return forgets what she
        // learned, not the repeats owed a closing alert.
        let mut events: Vec<Activity> = (0..3).map(|i| sg_change("alice", i)).collect();
        events.push(described("alice", 181 * 1440));
        let alerts = run(&mut detector(), &events);
        first_and_closing(&alerts, 3);
    }

    /// A quiet `DescribeInstances` by `user` at `minute`.
    fn described(user: &str, minute: i64) -> Activity {
        let mut quiet = failure(user, "1.2.3.9", minute);
        quiet.outcome.status = OutcomeStatus::Success;
        quiet.event_name = "DescribeInstances".into();
        quiet.event_source = "ec2.amazonaws.com".into();
        quiet
    }

    /// The security-group alerts are one first alert and its closing one, counting `n`.
    fn first_and_closing(alerts: &[Alert], n: u64) {
        let sg: Vec<(String, u64)> = alerts
            .iter()
            .filter(|a| a.policy_id == "security-group-changes")
            .map(|a| (a.id.clone(), a.occurrences))
            .collect();
        assert_eq!(sg.len(), 2, "the first alert and its closing one: {sg:?}");
        assert_eq!(sg[1], (sg[0].0.clone(), n));
    }

    #[test]
    fn an_evicted_actors_open_fold_is_closed_with_its_count() {
        // Ten baselines a partition: alice changes the group three times, then twenty others
        // act within the fold period and push her out; her repeats are not lost with her.
        let mut cfg = PoliciesConfig::default();
        cfg.anomaly.max_baselines = 40;
        let mut d =
            Detector::new(&cfg, std::time::Duration::from_secs(300)).for_partitions(&cfg, 4);
        let mut events: Vec<Activity> = (0..3).map(|i| sg_change("alice", i)).collect();
        events.extend((3..23).map(|m| described(&format!("u{m}"), m)));
        let alerts = run(&mut d, &events);
        assert!(d.take_evicted() > 0);
        assert!(!d.principals.keys().any(|k| k.contains("alice")));
        first_and_closing(&alerts, 3);
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
        let mut facts = Facts::default();
        let mut events: Vec<Activity> = (0..12).map(|i| sg_change("alice", i * 4)).collect();
        events.push(sg_change("alice", 200));
        let reference = counted(&run(&mut detector(), &events));
        for cut in 1..events.len() {
            let mut first = detector();
            let mut got: Vec<Alert> = events[..cut]
                .iter()
                .enumerate()
                .flat_map(|(o, a)| first.observe(a, o as Offset, &mut facts))
                .collect();
            let saved = saved_through_json(&mut first);
            let mut second = detector();
            second.restore(saved, first.applied_mark());
            // Replay from the start: what the saved state covers is skipped.
            got.extend(
                events
                    .iter()
                    .enumerate()
                    .flat_map(|(o, a)| second.observe(a, o as Offset, &mut facts)),
            );
            assert_eq!(counted(&got), reference, "cut {cut}");
        }
    }

    /// A failed call asks for no destructive action unless its policy opts in: an
    /// `AccessDenied` on someone else's bucket must not get that bucket changed, a failed
    /// console sign-in from a Tor exit must not suspend the user it names.
    #[test]
    fn failed_activity_only_notifies_unless_the_policy_opts_in() {
        let mut facts = Facts::default();
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
            a.request_parameters = Some(
                serde_json::json!({"bucketName": "www-site", "x-amz-acl": ["public-read"]}).into(),
            );
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
        let denied = d.observe(&acl(OutcomeStatus::Failure, "mallory"), 0, &mut facts);
        assert_eq!(kinds(&denied), [vec![ActionKind::Notify]]);
        let done = d.observe(&acl(OutcomeStatus::Success, "alice"), 1, &mut facts);
        assert_eq!(
            kinds(&done),
            [vec![ActionKind::Notify, ActionKind::MakeBucketPrivate]]
        );
        cfg.act_on_failed_activity = vec!["s3-bucket-activity".into()];
        let mut opted = Detector::new(&cfg, std::time::Duration::from_secs(300));
        let denied = opted.observe(&acl(OutcomeStatus::Failure, "mallory"), 0, &mut facts);
        assert_eq!(
            kinds(&denied),
            [vec![ActionKind::Notify, ActionKind::MakeBucketPrivate]]
        );
    }

    /// A CloudTrail record of `identity` calling `name` on `day` (plus `minute`), normalized
    /// as ingest does.
    fn acting(identity: serde_json::Value, name: &str, day: i64, minute: i64) -> Activity {
        let time = DateTime::from_timestamp(1_700_000_000 + day * 86_400 + minute * 60, 0)
            .unwrap_or_default();
        let record = serde_json::json!({
            "eventVersion": "1.09", "eventTime": time.to_rfc3339(),
            "eventSource": "s3.amazonaws.com", "eventName": name, "awsRegion": "eu-west-1",
            "recipientAccountId": "187901811700", "sourceIPAddress": "198.51.100.7",
            "userAgent": "aws-cli/2.15.0",
            "eventID": format!("00000000-0000-4000-8000-{:06}{:06}", day, minute),
            "userIdentity": identity,
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// An Identity Center session, as CloudTrail records it (permission set `set`).
    fn sso(set: &str, user: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "AssumedRole", "principalId": format!("AROAEXAMPLE:{user}"),
            "arn": format!("arn:aws:sts::187901811700:assumed-role/AWSReservedSSO_{set}_635426549a280cc6/{user}"),
            "accountId": "187901811700", "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE", "accountId": "187901811700",
                    "arn": format!("arn:aws:iam::187901811700:role/aws-reserved/sso.amazonaws.com/eu-west-1/AWSReservedSSO_{set}_635426549a280cc6"),
                    "userName": format!("AWSReservedSSO_{set}_635426549a280cc6")},
                "webIdFederationData": {},
                "attributes": {"creationDate": "2024-06-02T19:41:40Z", "mfaAuthenticated": "false"}
            }
        })
    }

    fn dormant(alerts: &[Alert]) -> Vec<&Alert> {
        alerts
            .iter()
            .filter(|a| a.policy_id == "dormant-principal")
            .collect()
    }

    /// A person who worked through one permission set for two weeks and comes back 40 days
    /// later through another is one actor returning from silence: `dormant-principal`, about
    /// the person. Keyed by the session's ARN, the second permission set was a stranger.
    #[test]
    fn a_person_returning_through_another_permission_set_is_dormant() {
        let mut d = detector();
        let mut stream: Vec<Activity> = (0..14)
            .map(|day| acting(sso("DevAdmin", "nicholas.hakmiller"), "ListBuckets", day, 0))
            .collect();
        stream.push(acting(
            sso("ReadOnly", "Nicholas.Hakmiller"),
            "GetObject",
            54,
            0,
        ));
        stream.push(acting(
            sso("ReadOnly", "Nicholas.Hakmiller"),
            "GetObject",
            54,
            5,
        ));
        let alerts = run(&mut d, &stream);
        let found = dormant(&alerts);
        assert_eq!(found.len(), 1, "{alerts:?}");
        let actor = found[0].actor.as_ref().map(|a| a.id.as_str());
        assert_eq!(actor, Some("person:nicholas.hakmiller"));
        assert!(
            found[0].evidence.summary.contains("41 days"),
            "{}",
            found[0].evidence.summary
        );
        assert_eq!(d.principals(), 1, "one baseline for the person's sessions");
    }

    /// Shorter silences, workloads and AWS services are not dormant.
    #[test]
    fn short_silences_and_workloads_are_not_dormant() {
        let user = serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/bob", "userName": "bob", "accountId": "187901811700"});
        let mut d = detector();
        let alerts = run(
            &mut d,
            &[
                acting(user.clone(), "ListBuckets", 0, 0),
                acting(user.clone(), "ListBuckets", 29, 0),
            ],
        );
        assert!(dormant(&alerts).is_empty(), "{alerts:?}");
        let nightly = serde_json::json!({
            "type": "AssumedRole", "arn": "arn:aws:sts::187901811700:assumed-role/backup-job/i-0a1b2c3d4e5f67890",
            "accountId": "187901811700",
            "sessionContext": {"sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::187901811700:role/backup-job"}}
        });
        let mut d = detector();
        let alerts = run(
            &mut d,
            &[
                acting(nightly.clone(), "PutObject", 0, 0),
                acting(nightly, "PutObject", 90, 0),
            ],
        );
        assert!(dormant(&alerts).is_empty(), "{alerts:?}");
        let mut d = detector();
        let alerts = run(
            &mut d,
            &[
                acting(user.clone(), "ListBuckets", 0, 0),
                acting(user.clone(), "ListBuckets", 31, 0),
            ],
        );
        assert_eq!(dormant(&alerts).len(), 1, "{alerts:?}");
        // Silent for longer than state_ttl (180 days): its baseline is forgotten (it learns
        // again), but its return is still dormant.
        let mut d = detector();
        let alerts = run(
            &mut d,
            &[
                acting(user.clone(), "ListBuckets", 0, 0),
                acting(user, "ListBuckets", 181, 0),
            ],
        );
        assert_eq!(dormant(&alerts).len(), 1, "{alerts:?}");
    }

    /// A user silent for longer than `state_ttl` whose baseline the periodic pruning has
    /// forgotten meanwhile (the partition read 10,000 other activities): its return — old
    /// credentials used again, the silence that matters most — is still dormant, and the
    /// pruned actor keeps no baseline, only when it last acted.
    #[test]
    fn a_return_after_pruning_is_still_dormant() {
        let user = serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/old-key", "userName": "old-key", "accountId": "187901811700"});
        let busy = serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/busy", "userName": "busy", "accountId": "187901811700"});
        let role = serde_json::json!({"type": "AssumedRole", "principalId": "AROAEXAMPLE:ci",
            "arn": "arn:aws:sts::187901811700:assumed-role/deploy/ci", "accountId": "187901811700"});
        let ci = serde_json::json!({"type": "WebIdentityUser",
            "principalId": "token.actions.githubusercontent.com:repo:org/app:ref:refs/heads/main",
            "userName": "repo:org/app:ref:refs/heads/main"});
        let mut d = detector();
        let mut facts = Facts::default();
        let mut alerts = d.observe(&acting(user.clone(), "ListBuckets", 0, 0), 0, &mut facts);
        let workloads = [
            acting(role, "ListBuckets", 0, 1),
            acting(ci, "ListBuckets", 0, 2),
        ];
        for (offset, a) in workloads.iter().enumerate() {
            alerts.extend(d.observe(a, offset as Offset + 1, &mut facts));
        }
        let keys: Vec<String> = workloads.iter().map(|a| a.actor.id.clone()).collect();
        assert!(
            keys.iter().all(|k| d.principals.contains_key(k)),
            "{keys:?}"
        );
        let other = acting(busy, "ListBuckets", 200, 0);
        for offset in 3..=10_000 {
            alerts.extend(d.observe(&other, offset, &mut facts));
        }
        let key = "arn:aws:iam::187901811700:user/old-key";
        let pruned = d
            .principals
            .get(key)
            .map(|s| (s.first_seen, s.api_known.len()));
        assert_eq!(pruned, Some((0, 0)), "pruned to when it last acted");
        // A workload is never dormant: pruned, it is forgotten (a role, a CI job's subject).
        for workload in &keys {
            assert!(!d.principals.contains_key(workload), "{workload}");
        }
        let back = acting(user, "ListBuckets", 200, 5);
        alerts.extend(d.observe(&back, 10_001, &mut facts));
        let found = dormant(&alerts);
        assert_eq!(found.len(), 1, "{alerts:#?}");
        assert_eq!(
            found[0].evidence.activity_ids,
            std::slice::from_ref(&back.id)
        );
    }

    /// A user silent for longer than `state_ttl` whose name is then sprayed: the failed
    /// sign-ins (written without an ARN, as CloudTrail does) are the user's, count toward its
    /// failure rate, and are no return from the silence — nor do they end it: the user's own
    /// activity the next day is the dormant return.
    #[test]
    fn a_spray_on_a_long_silent_user_counts_and_does_not_hide_its_return() {
        let bob = serde_json::json!({"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/bob", "userName": "bob", "accountId": "187901811700"});
        let named = serde_json::json!({"type": "IAMUser", "principalId": "AIDAEXAMPLE", "accountId": "187901811700", "userName": "bob"});
        let mut acts = vec![acting(bob.clone(), "ListBuckets", 0, 0)];
        for minute in 0..40 {
            let mut a = acting(named.clone(), "ConsoleLogin", 200, minute);
            a.event_source = "signin.amazonaws.com".into();
            a.event_type = Some("AwsConsoleSignIn".into());
            a.outcome.status = OutcomeStatus::Failure;
            acts.push(a);
        }
        acts.push(acting(bob, "ListBuckets", 201, 0));
        assert_eq!(acts[0].actor.id, acts[1].actor.id, "one actor");
        let mut d = detector();
        let alerts = run(&mut d, &acts);
        let found = dormant(&alerts);
        assert_eq!(found.len(), 1, "{alerts:#?}");
        assert_eq!(found[0].evidence.activity_ids, [acts[41].id.clone()]);
        assert!(
            alerts.iter().any(|a| a.policy_id == "failed-logins"),
            "{:?}",
            alerts.iter().map(|a| &a.policy_id).collect::<Vec<_>>()
        );
    }

    /// `name` by an administrator in `region`, `day` days after the history starts.
    fn created(name: &str, region: &str, day: i64, id: &str) -> Activity {
        let mut a = failure("admin", "198.51.100.7", day * 1440);
        a.id = id.into();
        a.event_source = "ec2.amazonaws.com".into();
        a.event_name = name.into();
        a.region = Some(region.into());
        a.outcome.status = OutcomeStatus::Success;
        a
    }

    fn mark(through: i64, idle: bool) -> crate::facts::Mark {
        crate::facts::Mark {
            through,
            max: through,
            idle,
        }
    }

    #[test]
    fn an_unusual_region_waits_for_every_partitions_facts() {
        let t = |day: i64| 1_700_000_000 + day * 86_400;
        let new_region = created("RunInstances", "ap-east-1", 8, "create");
        for earlier_elsewhere in [false, true] {
            let mut other = detector();
            let mut first = detector();
            let detector = &mut first;
            let mut facts = Facts::default();
            facts.set_shape(2, 1);
            // This partition (0) starts the history in us-east-1, then creates in ap-east-1.
            detector.observe(
                &created("CreateVpc", "us-east-1", 0, "first"),
                0,
                &mut facts,
            );
            let raised = detector.observe(&new_region, 1, &mut facts);
            assert!(raised.is_empty(), "partition 1 has vouched for nothing yet");
            assert_eq!(detector.held(), 2, "the history's first use waits too");
            assert_eq!(
                detector.safe_offset(2),
                0,
                "a held activity is replayed after a restart"
            );
            if earlier_elsewhere {
                // Partition 1 used ap-east-1 a minute earlier; its fact comes before its mark.
                let mut elsewhere = created("CreateVpc", "ap-east-1", 8, "elsewhere");
                elsewhere.event_time -= Duration::minutes(1);
                other.observe(&elsewhere, 0, &mut facts);
            }
            facts.mark(0, 0, mark(t(8), false));
            facts.mark(1, 0, mark(t(8) - 1, false));
            assert!(detector.decide_held(&facts).is_empty() || earlier_elsewhere);
            facts.mark(1, 0, mark(t(8), false));
            let raised = detector.decide_held(&facts);
            assert_eq!(detector.held(), 0);
            assert_eq!(detector.safe_offset(2), 2);
            let ids: Vec<&str> = raised.iter().map(|a| a.policy_id.as_str()).collect();
            if earlier_elsewhere {
                assert!(ids.is_empty(), "{ids:?}");
            } else {
                assert_eq!(ids, ["unusual-region"]);
            }
        }
    }

    #[test]
    fn a_full_hold_decides_its_oldest_on_what_is_known() {
        let mut detector = detector();
        let mut facts = Facts::default();
        facts.set_shape(1, 1);
        detector.observe(
            &created("CreateVpc", "us-east-1", 0, "first"),
            0,
            &mut facts,
        );
        for i in 0..=HELD_LIMIT as i64 {
            let region = format!("region-{i}");
            detector.observe(
                &created("RunInstances", &region, 8, &format!("c{i}")),
                i + 1,
                &mut facts,
            );
        }
        assert_eq!(detector.held(), HELD_LIMIT);
        // The history's first use and the first creation: judged on what is known.
        assert_eq!(detector.take_decided_early(), 2);
    }

    /// `user`'s `DescribeInstances` at second `t` from `country`.
    fn from(user: &str, t: i64, country: &str) -> Activity {
        let mut a = tagged(user, t, 0);
        a.event_name = "DescribeInstances".into();
        a.enrichment_mut().geo = Some(trailguard_common::contract::Geo {
            country: Some(country.into()),
            city: None,
            latitude: Some(40.7),
            longitude: Some(-74.0),
            accuracy_radius_km: Some(20),
        });
        a
    }

    /// A new actor's country is rare or not for the whole organization — its colleagues are
    /// on another partition — and the judgement waits for that partition's counts of the days
    /// before, in a baseline that survives a restart.
    #[test]
    fn a_country_is_rare_for_the_organization_not_for_a_partition() {
        const DAY: i64 = 86_400;
        let day_start = |t: i64| (1_700_000_000 + t).div_euclid(DAY) * DAY;
        let geo = |p: i32| {
            let cfg = PoliciesConfig::default();
            Detector::new(&cfg, std::time::Duration::from_secs(300))
                .with_geo(&cfg, true)
                .on_partition(p)
        };
        for colleagues_there in [false, true] {
            let mut facts = Facts::default();
            facts.set_shape(2, 1);
            let (mut colleagues, mut newcomer) = (geo(0), geo(1));
            // Twenty-five colleagues on partition 0, in the United States (in the second run,
            // some where the newcomer will be).
            for n in 0..25 {
                let there = if colleagues_there && n % 2 == 1 {
                    "KP"
                } else {
                    "US"
                };
                colleagues.observe(&from(&format!("colleague-{n}"), n, there), n, &mut facts);
            }
            let published = colleagues.take_census(&facts);
            assert_eq!(
                published.len(),
                1,
                "one day of partition 0's counts to publish"
            );
            let far = from("newcomer", DAY + 600, "KP");
            newcomer.observe(&from("newcomer", DAY, "US"), 0, &mut facts);
            let raised = newcomer.observe(&far, 1, &mut facts);
            assert!(raised.is_empty(), "partition 0 has vouched for nothing yet");
            assert_eq!(newcomer.held(), 2, "both of its countries are new to it");
            // A restart: the held country is in the saved baseline.
            let saved: Baselines = newcomer
                .take_changes()
                .into_iter()
                .filter_map(|(k, s)| Some((k, Box::new(s?.clone()))))
                .collect();
            let mut restarted = geo(1);
            restarted.restore(saved, newcomer.applied_mark());
            assert_eq!(restarted.held(), 2);
            for p in [0, 1] {
                facts.mark(p, 0, mark(day_start(DAY) - 1, false));
            }
            assert!(
                restarted.decide_held(&facts).is_empty(),
                "not through the day's start"
            );
            for p in [0, 1] {
                facts.mark(p, 0, mark(day_start(DAY), false));
            }
            let ids: Vec<String> = restarted
                .decide_held(&facts)
                .iter()
                .map(|a| a.policy_id.clone())
                .collect();
            assert_eq!(restarted.held(), 0);
            if colleagues_there {
                assert!(ids.is_empty(), "the organization acts from there: {ids:?}");
            } else {
                assert_eq!(ids, ["infrequent-country"]);
            }
        }
    }

    /// Held countries are decided by their day: one dated days ahead on a partition does not
    /// hold back another actor's whose day is complete; one dated beyond the clock is not
    /// counted for the organization at all.
    #[test]
    fn held_countries_wait_for_their_own_day_only() {
        const DAY: i64 = 86_400;
        let day_start = |t: i64| (1_700_000_000 + t).div_euclid(DAY) * DAY;
        let cfg = PoliciesConfig::default();
        let mut detector = Detector::new(&cfg, std::time::Duration::from_secs(300))
            .with_geo(&cfg, true)
            .on_partition(0);
        let mut facts = Facts::default();
        facts.set_shape(1, 1);
        detector.observe(&from("ahead", 5 * DAY, "FR"), 0, &mut facts);
        detector.observe(&from("today", 2 * DAY, "DE"), 1, &mut facts);
        assert_eq!(detector.held(), 2);
        facts.mark(0, 0, mark(day_start(2 * DAY), false));
        detector.decide_held(&facts);
        assert_eq!(detector.held(), 1, "day 2 decided, day 5 still held");
        let census_before = facts.census.len();
        let mut future = from("future", 0, "FR");
        future.event_time = Utc::now() + Duration::days(30);
        detector.observe(&future, 2, &mut facts);
        assert_eq!(facts.census.len(), census_before, "not counted");
    }

    #[test]
    fn one_colleague_alone_does_not_vouch_for_a_new_identitys_call() {
        const DAY: i64 = 86_400;
        let call = |source: &str, name: &str, user: &str, t: i64, refused: bool| {
            let mut a = tagged(user, t, 0);
            a.event_source = source.into();
            a.event_name = name.into();
            if refused {
                a.outcome.status = OutcomeStatus::Failure;
                a.outcome.error_code = Some("AccessDenied".into());
            }
            a
        };
        // Colleagues who make the call every day for three weeks; then a user made today
        // tries it, refused (`tries` times, a minute apart): unusual unless two colleagues
        // make the call.
        let unusual = |source: &str, name: &str, users: &[&str], tries: i64| {
            let mut all = Vec::new();
            for day in 0..21 {
                for user in users {
                    all.push(call(source, name, user, day * DAY + 9 * 3600, false));
                }
            }
            for i in 0..tries {
                all.push(call(
                    source,
                    name,
                    "newbie",
                    21 * DAY + 10 * 3600 + i * 60,
                    true,
                ));
            }
            run(&mut detector(), &all)
                .into_iter()
                .filter(|a| a.policy_id == "unusual-api-behaviour")
                .count()
        };
        // Weight 4, refused: 5.
        let iam = "iam.amazonaws.com";
        assert_eq!(
            unusual(iam, "CreateLoginProfile", &["ann"], 1),
            1,
            "one colleague vouches for nothing"
        );
        assert_eq!(
            unusual(iam, "CreateLoginProfile", &["ann", "ben"], 1),
            0,
            "two do"
        );
        // Weight 3, refused five times in the hour (probing): 5. A group of one is still a
        // group: without it only weight 4 and up would count for a newcomer.
        let lambda = "lambda.amazonaws.com";
        assert_eq!(
            unusual(lambda, "UpdateFunctionCode", &["ann"], 5),
            1,
            "a group of one"
        );
        assert_eq!(unusual(lambda, "UpdateFunctionCode", &["ann", "ben"], 5), 0);
        assert_eq!(
            unusual(lambda, "UpdateFunctionCode", &[], 5),
            0,
            "no group: weight 4 and up"
        );
    }

    /// `CreateTags` by the IAM user `user` at unix second `t` (from 2023-11-14).
    fn tagged(user: &str, t: i64, n: usize) -> Activity {
        let mut a = failure(user, "198.51.100.9", 0);
        a.id = format!("{user}-{t}-{n}");
        a.event_time = DateTime::from_timestamp(1_700_000_000 + t, 0).unwrap_or_default();
        a.event_source = "ec2.amazonaws.com".into();
        a.event_name = "CreateTags".into();
        a.outcome.status = OutcomeStatus::Success;
        a.principal.account_id = Some("1".into());
        a.actor = trailguard_common::contract::Actor::of(&a.principal);
        a
    }

    #[test]
    fn a_learning_actor_is_judged_against_its_peers() {
        const DAY: i64 = 86_400;
        // Three colleagues tag a few resources twice a day for three weeks: quiet peers.
        let mut history = Vec::new();
        for day in 0..21 {
            for user in ["ann", "ben", "cat"] {
                for hour in [9, 15] {
                    history.push(tagged(user, day * DAY + hour * 3600, 0));
                    history.push(tagged(user, day * DAY + hour * 3600 + 60, 1));
                }
            }
        }
        // A user made today tags 60 things in half an hour: below the organization's floor
        // for someone new (50 × 2), far above what its peers do.
        let burst: Vec<Activity> = (0..60)
            .map(|i| tagged("newbie", 21 * DAY + 10 * 3600 + i * 30, i as usize))
            .collect();
        let mut alone = detector();
        let mut with_peers = detector();
        let mut all = history.clone();
        all.extend(burst.iter().cloned());
        let alerts = run(&mut with_peers, &all);
        let admin: Vec<&Alert> = alerts
            .iter()
            .filter(|a| a.policy_id == "unusual-admin-activity")
            .collect();
        assert_eq!(admin.len(), 1, "{admin:#?}");
        assert!(
            admin[0].evidence.summary.contains("its peers in users:1"),
            "{}",
            admin[0].evidence.summary
        );
        // Without peers (the same burst alone), the organization's floor for the new: quiet.
        let alerts = run(&mut alone, &burst);
        assert!(alerts
            .iter()
            .all(|a| a.policy_id != "unusual-admin-activity"));
    }

    /// A restart between the detections of an attack sequence: the baselines saved at any
    /// point (through the changelog's JSON), restored, and the partition read again from its
    /// start (the consumer's last commit may be far behind them) raise no alert an
    /// uninterrupted run did not, lose none, and raise the sequence once.
    #[test]
    fn a_restart_mid_sequence_raises_it_once_with_the_same_id() {
        let mallory = serde_json::json!({"type": "IAMUser", "userName": "mallory",
            "arn": "arn:aws:iam::187901811700:user/mallory", "accountId": "187901811700",
            "principalId": "AIDAMALLORY", "accessKeyId": "AKIAMALLORY"});
        let call = |minute: i64, source: &str, name: &str, params: serde_json::Value| {
            let mut a = acting(mallory.clone(), name, 0, minute);
            a.event_source = source.into();
            a.request_parameters =
                Some(trailguard_common::raw_json::RawJson::from_text(&params.to_string()).unwrap());
            a.id = format!("{name}-{minute}");
            a
        };
        let events = [
            call(0, "iam.amazonaws.com", "ListUsers", serde_json::json!({})),
            call(
                1,
                "cloudtrail.amazonaws.com",
                "StopLogging",
                serde_json::json!({"name": "arn:aws:cloudtrail:eu-west-1:187901811700:trail/org"}),
            ),
            call(2, "iam.amazonaws.com", "ListRoles", serde_json::json!({})),
            call(
                3,
                "iam.amazonaws.com",
                "AttachUserPolicy",
                serde_json::json!({"userName": "bob",
                    "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
            ),
            call(
                4,
                "iam.amazonaws.com",
                "CreateAccessKey",
                serde_json::json!({"userName": "bob"}),
            ),
            call(5, "iam.amazonaws.com", "ListGroups", serde_json::json!({})),
        ];
        let detector = || {
            Detector::new(
                &PoliciesConfig::default(),
                std::time::Duration::from_secs(300),
            )
        };
        let sequences = |alerts: &[Alert]| {
            alerts
                .iter()
                .filter(|a| a.policy_id == "attack-sequence")
                .map(|a| a.id.clone())
                .collect::<Vec<_>>()
        };
        let whole = run(&mut detector(), &events);
        let sequence = sequences(&whole);
        assert_eq!(sequence.len(), 1, "{whole:#?}");
        let mut want: Vec<String> = whole.iter().map(|a| a.id.clone()).collect();
        want.sort();
        want.dedup();
        for cut in 1..events.len() {
            let mut facts = Facts::default();
            let mut first = detector();
            let before: Vec<Alert> = events[..cut]
                .iter()
                .enumerate()
                .flat_map(|(o, a)| first.observe(a, o as Offset, &mut facts))
                .collect();
            let saved = saved_through_json(&mut first);
            let mark = first.applied_mark();
            let mut second = detector();
            second.restore(saved, mark);
            let after: Vec<Alert> = events
                .iter()
                .enumerate()
                .flat_map(|(o, a)| second.observe(a, o as Offset, &mut facts))
                .collect();
            let both: Vec<Alert> = before.iter().chain(&after).cloned().collect();
            // Once: a replay of what the baselines hold does not raise it again.
            assert_eq!(sequences(&both), sequence, "cut {cut}");
            let mut got: Vec<String> = both.iter().map(|a| a.id.clone()).collect();
            got.sort();
            got.dedup();
            assert_eq!(got, want, "cut {cut}");
        }
    }
}
