//! Sigma correlation rules (Sigma v2: `event_count`, `value_count`, `temporal`,
//! `temporal_ordered`, with `group-by`, `timespan` and `aliases`) on event time.
//!
//! A correlation runs in two steps, so that a group counts every activity in it whatever
//! partition of the activities topic the activity was on (they are keyed by actor; a group by
//! source address, account or bucket spans actors):
//!
//! 1. Where an activity is evaluated ([`crate::detector::Detector`]), each correlation that
//!    refers to a rule the activity matched yields a [`Hit`]: the correlation, the group (its
//!    `group-by` values under CloudTrail's names, aliases resolved for the rule that matched),
//!    the referred rules it matched, the value counted (`value_count`) and the activity. The
//!    service forwards it, sealed, to `kafka.topics.detect_correlations`, keyed by correlation
//!    and group ([`Hit::key`]) — the pattern of the per-address sign-in failure count.
//! 2. A [`Correlator`] per partition of that topic keeps each group's matches in a sliding
//!    window on event time and raises the correlation's alert when the condition holds: one
//!    alert per set of matches (matches that made an alert do not count toward another).
//!
//! State survives a restart like the custom policies' windows: a correlator keeps no
//! changelog, and its committed offset never passes the first match it still holds — nor, for
//! a match already counted toward an alert, the first match of that alert — so a replay
//! rebuilds the same windows, with the same matches already counted, and raises the same
//! alerts with the same ids (made from the activity ids, which consumers de-duplicate). A
//! match forwarded twice (a replay of the activities topic) is counted once. Windows expire at
//! absolute offsets (every 64th), so a replay expires at the same points; a match older than
//! the watermark less the allowed lateness and the timespan (it could only join matches
//! already expired) is not counted (`reason="late"`).
//!
//! Memory is bounded: a group holds at most [`MAX_GROUP_MATCHES`] matches and a correlator
//! (one partition of the correlations topic) [`MAX_MATCHES`]; a match beyond either is not
//! counted and is counted in `trailguard_detect_sigma_correlation_dropped_total`.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use trailguard_common::contract::{
    kinds, stable_id, ActionKind, Alert, AlertKind, Entity, RequestedAction, Severity,
};
use trailguard_common::Activity;

use crate::policy::{advances_watermark, requested, AlertBuilder, Offset, PolicyMeta};

use super::SigmaRules;

/// Most matches one group holds in its window.
pub const MAX_GROUP_MATCHES: usize = 10_000;
/// Most matches one correlator holds.
pub const MAX_MATCHES: usize = 1_000_000;
/// Most referred rules (a bit each in a match).
pub const MAX_RULES: usize = 64;
/// Longest timespan: a day. The correlations topic keeps 7 days, and a window's matches
/// (with the allowed lateness) must still be on it when a restart replays them.
pub const MAX_SPAN_SECS: u64 = 86_400;
/// Longest group or counted value kept as it is; a longer one is kept as its digest (two
/// different values never share a group).
const MAX_VALUE_BYTES: usize = 256;
/// Most activity ids listed as an alert's evidence (its id is made from all of them).
const MAX_EVIDENCE: usize = 100;

/// What a correlation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Matches of the referred rules.
    EventCount,
    /// Distinct values of a field among the matches.
    ValueCount,
    /// Distinct referred rules matched, in any order.
    Temporal,
    /// Every referred rule matched, in the order given.
    TemporalOrdered,
}

impl Kind {
    /// Sigma's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::EventCount => "event_count",
            Kind::ValueCount => "value_count",
            Kind::Temporal => "temporal",
            Kind::TemporalOrdered => "temporal_ordered",
        }
    }
}

/// A field a correlation reads: its name as written (an alias, or a CloudTrail field) and,
/// for each referred rule in order, the CloudTrail field to read when that rule matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// As written in the correlation.
    pub name: String,
    /// Per referred rule.
    pub by_rule: Vec<String>,
}

/// One correlation rule loaded as a policy.
#[derive(Debug, Clone)]
pub struct Correlation {
    /// Policy id: `sigma-<rule id or file stem>`.
    pub policy_id: String,
    /// The key of its settings: its id, or its file stem.
    pub key: String,
    /// Its title.
    pub title: String,
    /// Where it was read.
    pub file: PathBuf,
    /// What it counts.
    pub kind: Kind,
    /// The rules it refers to (indices in [`SigmaRules::rules`]), in its order.
    pub rules: Vec<usize>,
    /// `group-by`.
    pub group_by: Vec<Field>,
    /// `value_count`'s field.
    pub value_field: Option<Field>,
    /// Matches, distinct values or distinct rules needed.
    pub at_least: u64,
    /// `timespan`.
    pub span: Duration,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Actions its alerts request (only `notify` when its matches are of several principals).
    pub actions: Vec<ActionKind>,
    /// Principals whose activity it ignores.
    pub allow_principals: Vec<String>,
    /// ATT&CK tactic and technique from its tags.
    pub mitre: (String, String, String),
    /// A digest of what it counts (kind, rules, fields, count, timespan): a match forwarded
    /// under another definition of it is not counted.
    pub definition: String,
}

impl Correlation {
    /// The digest of the definition: `kind`, the referred rules' keys, the fields, the count
    /// and the timespan.
    pub fn digest(
        kind: Kind,
        rule_keys: &[&str],
        group_by: &[Field],
        value_field: Option<&Field>,
        at_least: u64,
        span: Duration,
    ) -> String {
        let mut parts: Vec<String> = vec![kind.as_str().to_string()];
        parts.extend(rule_keys.iter().map(|k| format!("rule={k}")));
        for f in group_by.iter().chain(value_field) {
            parts.push(format!("field={}", f.name));
            parts.extend(f.by_rule.iter().map(|p| format!("path={p}")));
        }
        parts.push(format!("at_least={at_least}"));
        parts.push(format!("span={}", span.num_seconds()));
        stable_id(parts.iter().map(String::as_str))
    }
}

/// A correlation's share of one activity, forwarded to the correlations topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hit {
    /// The correlation's policy id.
    pub correlation: String,
    /// Its definition's digest ([`Correlation::definition`]).
    pub definition: String,
    /// Its `group-by` values, in order, each [`bounded`] (`None`: absent or null).
    pub group: Vec<Option<String>>,
    /// Positions (in the correlation's `rules`) of the referred rules the activity matched.
    pub rules: Vec<u8>,
    /// The value `value_count` counts, [`bounded`] (`None`: absent or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The activity, without its request, response and additional data (the alert needs
    /// none of them; a record near the broker's size limit must still be forwarded).
    pub activity: Activity,
}

impl Hit {
    /// Its key on the correlations topic: one group's hits go to one partition.
    pub fn key(&self) -> String {
        let mut key = self.correlation.clone();
        for value in &self.group {
            key.push('\u{1f}');
            match value {
                Some(v) => key.push_str(v),
                None => key.push('\u{0}'),
            }
        }
        key
    }
}

/// A value as a group or counted value: `=VALUE`, or `#DIGEST` when longer than 256 bytes (the
/// marks keep a value that looks like a digest apart from a digest).
pub fn bounded(value: String) -> String {
    if value.len() <= MAX_VALUE_BYTES {
        format!("={value}")
    } else {
        format!("#sha256:{}", stable_id([value.as_str()]))
    }
}

/// A [`bounded`] value as people read it.
fn shown(value: &str) -> &str {
    value
        .strip_prefix('=')
        .or_else(|| value.strip_prefix('#'))
        .unwrap_or(value)
}

/// One match in a group's window.
#[derive(Debug)]
struct Match {
    time: DateTime<Utc>,
    offset: Offset,
    id: String,
    /// Bit `i`: the correlation's rule `i` matched.
    rules: u64,
    value: Option<String>,
    principal: String,
    /// Counted toward an alert already: the first offset of that alert's matches (a replay
    /// must start there to count them together again).
    used: Option<Offset>,
}

/// Correlations over one partition of the correlations topic.
pub struct Correlator {
    rules: Arc<SigmaRules>,
    /// (correlation index, group) → matches, by event time.
    windows: HashMap<(usize, Vec<Option<String>>), VecDeque<Match>>,
    held: usize,
    lateness: Duration,
    max_event_time: Option<DateTime<Utc>>,
    committed: Offset,
    dropped: u64,
    late: u64,
    unknown: u64,
}

impl Correlator {
    /// A correlator for `rules`' correlations, keeping matches `lateness` past their window.
    pub fn new(rules: Arc<SigmaRules>, lateness: std::time::Duration) -> Self {
        Correlator {
            rules,
            windows: HashMap::new(),
            held: 0,
            lateness: Duration::from_std(lateness).unwrap_or(Duration::MAX),
            max_event_time: None,
            committed: 0,
            dropped: 0,
            late: 0,
            unknown: 0,
        }
    }

    /// Counts `hit`, read at `offset`; returns the alert it completes, if any.
    pub fn observe(&mut self, hit: &Hit, offset: Offset) -> Vec<Alert> {
        let rules = self.rules.clone();
        let Some((ci, corr)) = rules.correlation(&hit.correlation) else {
            // A correlation no longer configured (or a record of another configuration).
            self.unknown += 1;
            return Vec::new();
        };
        let mut mask = 0u64;
        for &position in &hit.rules {
            if usize::from(position) >= corr.rules.len() {
                self.unknown += 1;
                return Vec::new();
            }
            mask |= 1 << position;
        }
        if mask == 0 || hit.group.len() != corr.group_by.len() || hit.definition != corr.definition
        {
            self.unknown += 1;
            return Vec::new();
        }
        let a = &hit.activity;
        let mut out = Vec::new();
        // Too late to join anything still held (see the module notes).
        let horizon = self
            .max_event_time
            .and_then(|max| max.checked_sub_signed(self.lateness))
            .and_then(|w| w.checked_sub_signed(corr.span));
        if horizon.is_some_and(|h| a.event_time < h) {
            self.late += 1;
        } else if corr.kind != Kind::ValueCount || hit.value.is_some() {
            // (Nothing to count for value_count without the value.)
            out.extend(self.count(ci, corr, hit, mask, offset));
        }
        if advances_watermark(self.max_event_time, a.event_time) {
            self.max_event_time = Some(a.event_time);
        }
        // At absolute offsets, so a replay from any offset expires at the same points.
        if offset % crate::policy::EXPIRE_EVERY == 0 {
            if let Some(watermark) = self
                .max_event_time
                .and_then(|max| max.checked_sub_signed(self.lateness))
            {
                self.expire(watermark);
            }
        }
        out
    }

    fn count(
        &mut self,
        ci: usize,
        corr: &Correlation,
        hit: &Hit,
        mask: u64,
        offset: Offset,
    ) -> Option<Alert> {
        let a = &hit.activity;
        let held = self.held;
        let window = self.windows.entry((ci, hit.group.clone())).or_default();
        if window.iter().any(|m| m.id == a.id) {
            // Forwarded again (a replay): counted once.
            return None;
        }
        if window.len() >= MAX_GROUP_MATCHES || held >= MAX_MATCHES {
            self.dropped += 1;
            if window.is_empty() {
                self.windows.remove(&(ci, hit.group.clone()));
            }
            return None;
        }
        let at = window.partition_point(|m| m.time <= a.event_time);
        window.insert(
            at,
            Match {
                time: a.event_time,
                offset,
                id: a.id.clone(),
                rules: mask,
                value: hit.value.clone(),
                principal: a.principal.key(),
                used: None,
            },
        );
        self.held += 1;
        let chosen = find(corr, window, a.event_time)?;
        let first = chosen
            .iter()
            .map(|&i| window[i].offset)
            .min()
            .unwrap_or(offset);
        for &i in &chosen {
            window[i].used = Some(first);
        }
        let matches: Vec<&Match> = chosen.iter().map(|&i| &window[i]).collect();
        Some(alert(corr, hit, &matches))
    }

    /// Drops matches older than `watermark` less their correlation's timespan.
    pub fn expire(&mut self, watermark: DateTime<Utc>) {
        let rules = &self.rules;
        let mut held = 0;
        self.windows.retain(|(ci, _), window| {
            let span = rules
                .correlation_at(*ci)
                .map_or(Duration::zero(), |c| c.span);
            let horizon = watermark.checked_sub_signed(span).unwrap_or(watermark);
            while window.front().is_some_and(|m| m.time < horizon) {
                window.pop_front();
            }
            held += window.len();
            !window.is_empty()
        });
        self.held = held;
    }

    /// The offset from which a replay rebuilds this correlator's windows: everything before
    /// it may be committed. `next` is the offset after the last one read. Never moves back.
    pub fn safe_offset(&mut self, next: Offset) -> Offset {
        let first_open = self
            .windows
            .values()
            .flat_map(|w| {
                w.iter()
                    .map(|m| m.used.map_or(m.offset, |o| o.min(m.offset)))
            })
            .min()
            .unwrap_or(next)
            .min(next);
        self.committed = self.committed.max(first_open);
        self.committed
    }

    /// Matches held.
    pub fn state_size(&self) -> usize {
        self.held
    }

    /// Matches not counted since the last call: a group or the correlator was full, the
    /// match was too late, the record names no configured correlation (or another definition
    /// of it).
    pub fn take_dropped(&mut self) -> Dropped {
        Dropped {
            full: std::mem::take(&mut self.dropped),
            late: std::mem::take(&mut self.late),
            unknown: std::mem::take(&mut self.unknown),
        }
    }
}

/// Matches not counted, by reason (see [`Correlator::take_dropped`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// A group or the correlator was full.
    pub full: u64,
    /// Older than the watermark less the lateness and the timespan.
    pub late: u64,
    /// Naming no configured correlation, or another definition of it.
    pub unknown: u64,
}

/// The matches (indices in `window`) that satisfy `corr` together with the one at `t`, if
/// any: the first such set in time among the matches not yet counted within the timespan.
fn find(corr: &Correlation, window: &VecDeque<Match>, t: DateTime<Utc>) -> Option<Vec<usize>> {
    let span = corr.span;
    let lo = t
        .checked_sub_signed(span)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let hi = t
        .checked_add_signed(span)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    let near: Vec<usize> = (0..window.len())
        .filter(|&i| {
            let m = &window[i];
            m.used.is_none() && m.time >= lo && m.time <= hi
        })
        .collect();
    let need = usize::try_from(corr.at_least).unwrap_or(usize::MAX).max(1);
    let time = |i: usize| window[near[i]].time;
    match corr.kind {
        Kind::EventCount => {
            if near.len() < need {
                return None;
            }
            (0..=near.len() - need)
                .find(|&s| time(s + need - 1) - time(s) <= span)
                .map(|s| near[s..s + need].to_vec())
        }
        Kind::ValueCount => {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            let mut start = 0;
            for end in 0..near.len() {
                if let Some(v) = window[near[end]].value.as_deref() {
                    *counts.entry(v).or_default() += 1;
                }
                while time(end) - time(start) > span {
                    if let Some(v) = window[near[start]].value.as_deref() {
                        if let Some(n) = counts.get_mut(v) {
                            *n -= 1;
                            if *n == 0 {
                                counts.remove(v);
                            }
                        }
                    }
                    start += 1;
                }
                if counts.len() >= need {
                    return Some(near[start..=end].to_vec());
                }
            }
            None
        }
        Kind::Temporal => {
            let mut counts = [0usize; MAX_RULES];
            let mut distinct = 0;
            let mut start = 0;
            let bits = |i: usize| window[near[i]].rules;
            for end in 0..near.len() {
                for (b, count) in counts.iter_mut().enumerate() {
                    if bits(end) & (1 << b) != 0 {
                        *count += 1;
                        if *count == 1 {
                            distinct += 1;
                        }
                    }
                }
                while time(end) - time(start) > span {
                    for (b, count) in counts.iter_mut().enumerate() {
                        if bits(start) & (1 << b) != 0 {
                            *count -= 1;
                            if *count == 0 {
                                distinct -= 1;
                            }
                        }
                    }
                    start += 1;
                }
                if distinct >= need {
                    return Some(near[start..=end].to_vec());
                }
            }
            None
        }
        Kind::TemporalOrdered => {
            let steps = corr.rules.len();
            let n = near.len();
            // next[k - 1][j]: the first of `near` at or after j that is step k's (n: none).
            // Each start then finds its chain in `steps` lookups: scanning forward from every
            // start cost the square of the group (a guesser's thousands of first steps that no
            // second step follows took hours per match).
            let mut next = vec![vec![n; n + 1]; steps.saturating_sub(1)];
            for (k, next) in next.iter_mut().enumerate() {
                for j in (0..n).rev() {
                    next[j] = if window[near[j]].rules & (1 << (k + 1)) != 0 {
                        j
                    } else {
                        next[j + 1]
                    };
                }
            }
            for s in 0..n {
                if window[near[s]].rules & 1 == 0 {
                    continue;
                }
                // Earliest next step after each: the earliest end for this start.
                let mut chosen = vec![near[s]];
                let mut at = s;
                for next in &next {
                    let j = next[at + 1];
                    if j == n || time(j) - time(s) > span {
                        break;
                    }
                    chosen.push(near[j]);
                    at = j;
                }
                if chosen.len() == steps {
                    return Some(chosen);
                }
            }
            None
        }
    }
}

/// The correlation's alert for `matches`, completed by `hit`.
fn alert(corr: &Correlation, hit: &Hit, matches: &[&Match]) -> Alert {
    let a = &hit.activity;
    let ids: Vec<&str> = matches.iter().map(|m| m.id.as_str()).collect();
    let id = stable_id(
        ["sigma-correlation", corr.policy_id.as_str()]
            .into_iter()
            .chain(ids.iter().copied()),
    );
    let group = describe_group(corr, &hit.group);
    let span = humantime::format_duration(corr.span.to_std().unwrap_or_default());
    let detail = match corr.kind {
        Kind::EventCount => format!("{} matching activities", matches.len()),
        Kind::ValueCount => {
            let mut values: Vec<&str> = matches.iter().filter_map(|m| m.value.as_deref()).collect();
            values.sort_unstable();
            values.dedup();
            let field = corr.value_field.as_ref().map_or("", |f| f.name.as_str());
            format!("{} distinct {field}", values.len())
        }
        Kind::Temporal | Kind::TemporalOrdered => {
            format!("{} of its rules", corr.rules.len().min(matches.len()))
        }
    };
    let summary = format!("{}: {detail} within {span} ({group})", corr.title);
    let mut principals: Vec<&str> = matches.iter().map(|m| m.principal.as_str()).collect();
    principals.sort_unstable();
    principals.dedup();
    // About one principal only when every match was its: acting on the principal of the
    // activity that happened to complete a group of several is acting on one it does not name.
    let one = principals.len() == 1 && principals[0] == a.principal.key();
    let policy = PolicyMeta {
        id: &corr.policy_id,
        name: &corr.title,
        kind: AlertKind::Custom,
    };
    // A group's alert names no principal (nor the account and region of whichever activity
    // happened to complete it) and requests notify only.
    let (builder, entity, actions): (AlertBuilder, Entity, Vec<RequestedAction>) = if one {
        (
            AlertBuilder::about(&policy, a, corr.severity),
            Entity {
                kind: kinds::PRINCIPAL.into(),
                id: a.principal.key(),
            },
            requested(&corr.actions, a),
        )
    } else {
        (
            AlertBuilder::at(&policy, a.event_time, corr.severity),
            Entity {
                kind: "group".into(),
                id: group,
            },
            requested(&corr.actions, a)
                .into_iter()
                .filter(|r| r.kind == ActionKind::Notify)
                .collect(),
        )
    };
    let evidence: Vec<String> = ids
        .iter()
        .take(MAX_EVIDENCE)
        .map(|s| s.to_string())
        .collect();
    let mut builder = builder
        .entity(entity)
        .evidence(evidence, summary)
        .actions(actions);
    let (tactic, technique_id, technique) = &corr.mitre;
    if !tactic.is_empty() || !technique_id.is_empty() {
        builder = builder.mitre((tactic.as_str(), technique_id.as_str(), technique.as_str()));
    }
    builder.id(id)
}

/// `field=value, …` of a group (`all activity` without group-by).
fn describe_group(corr: &Correlation, group: &[Option<String>]) -> String {
    if corr.group_by.is_empty() {
        return "all activity".into();
    }
    corr.group_by
        .iter()
        .zip(group)
        .map(|(f, v)| format!("{}={}", f.name, v.as_deref().map_or("null", shown)))
        .collect::<Vec<_>>()
        .join(", ")
}
