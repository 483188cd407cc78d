//! Organization-wide facts that one partition learns and every partition needs: which users
//! and access keys were terminated, and which regions the organization uses.
//!
//! Activities are partitioned by principal, but the administrator who deletes a user, and the
//! user who later tries the deleted credentials, are different principals on different
//! partitions. So the instance that sees a termination (or a region's first use) publishes it as
//! a fact on a compacted topic that every detect instance reads whole (a global table), and
//! applies it locally at once. A fact learned on one partition is seen by the others as soon
//! as the topic delivers it — in practice well before the deleted credentials are tried.
//!
//! A decision that a fact arriving later could reverse waits until the facts are complete
//! through the activity's event time. Every instance publishes, for each activities partition
//! it owns, a [`Mark`] on every facts partition after the facts of what it has evaluated are
//! durable: "every fact from partition P up to event time T is on this facts partition before
//! me". The facts are complete through the least of those (see [`Facts::complete_through`]),
//! so the same activities give the same decisions whatever order partitions and instances run
//! in.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{AlertKind, Severity};
use trailguard_common::Activity;

use crate::policy::PolicyMeta;

/// Activity performed by a terminated user.
pub const TERMINATED_USER: PolicyMeta<'static> = PolicyMeta {
    id: "terminated-user",
    name: "Activity performed by terminated user",
    kind: AlertKind::Anomaly,
};
/// Unusual region for a cloud resource.
pub const UNUSUAL_REGION: PolicyMeta<'static> = PolicyMeta {
    id: "unusual-region",
    name: "Unusual region for cloud resource",
    kind: AlertKind::Anomaly,
};

/// One fact: when, and how it was learned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// Event time, unix seconds.
    pub time: i64,
    /// What established it (`DeleteUser by arn:...`).
    pub how: String,
    /// The IAM user it concerns, `ACCOUNT/NAME`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The termination was undone at `time` (user re-created, key re-activated, console
    /// access given back): forget it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleared: bool,
}

/// Most facts about users and keys kept; past it the earliest learned are forgotten (each is
/// ≈ 200 bytes: a key toggled off and on for ever, or made-up keys, cannot grow detect).
pub const MAX_FACTS: usize = 200_000;
/// Most terminations kept for partitions to look back over; a partition further behind than
/// that skips the oldest.
pub const MAX_TERMINATIONS: usize = 100_000;
/// Most regions learned: AWS has a few dozen; past it (only made-up regions get there) a new
/// region is not learned.
pub const MAX_REGIONS: usize = 512;

/// The facts known to this instance.
#[derive(Debug, Default)]
pub struct Facts {
    /// `user:ACCOUNT/NAME` / `key:ACCESSKEYID` / `region:REGION` → fact (the earliest).
    map: HashMap<String, Fact>,
    /// The keys of `map` other than regions, in the order first learned: the first to go.
    learned: VecDeque<String>,
    /// How many region facts `map` holds.
    regions: usize,
    /// Earliest region fact: when the organization's history starts.
    first_use: Option<i64>,
    /// Terminations in the order learned, so every partition can look back at activity it
    /// saw before the fact reached it: the latest [`MAX_TERMINATIONS`].
    terminations: VecDeque<(String, Fact)>,
    /// Terminations learned before those kept.
    terminations_dropped: usize,
    /// (activities partition, facts partition) → the latest mark read for them.
    marks: HashMap<(i32, i32), Mark>,
    /// How many activities and facts partitions there are; `None` when every fact is learned
    /// in this process (a test, a backtest): then the facts are always complete.
    shape: Option<(i32, i32)>,
    /// [`Self::complete_through`] as the marks last left it (`None`: facts not shared) —
    /// read for every activity, and over every partition pair it cost a map lookup each.
    complete: Option<i64>,
    /// The organization's actors by country and day, from every partition.
    pub census: crate::census::Census,
}

/// What one activities partition vouches for on one facts partition: every fact learned from
/// its activities with event time up to `through` was published there before this mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Event time (unix seconds) through which the partition's facts are published.
    pub through: i64,
    /// Latest event time the partition has evaluated (`i64::MIN`: none).
    pub max: i64,
    /// The partition was caught up (nothing unread) when the mark was made (for operators
    /// reading the topic; `through` already says what that vouches for).
    pub idle: bool,
}

/// Facts shared by the partitions of one instance and the follower of the facts topic.
pub type SharedFacts = Arc<RwLock<Facts>>;

/// `shared`, locked for writing (for one activity's evaluation, or one fact read back).
pub fn lock(shared: &SharedFacts) -> std::sync::RwLockWriteGuard<'_, Facts> {
    trailguard_common::sync::write(shared)
}

impl Facts {
    /// Records `fact` under `key` unless an earlier one is known; true when it is new.
    pub fn learn(&mut self, key: &str, fact: Fact) -> bool {
        if let Some(region) = key.strip_prefix("region:") {
            if !self.map.contains_key(key)
                && (!looks_like_region(region) || self.regions >= MAX_REGIONS)
            {
                return false;
            }
            self.first_use = Some(self.first_use.map_or(fact.time, |t| t.min(fact.time)));
        }
        if fact.cleared {
            // Forget a termination the undo comes after.
            return match self.map.get(key) {
                Some(known) if known.time <= fact.time && !known.cleared => {
                    self.map.insert(key.to_string(), fact);
                    true
                }
                _ => false,
            };
        }
        match self.map.get(key) {
            Some(known) if known.cleared && known.time >= fact.time => false,
            Some(known) if !known.cleared && known.time <= fact.time => false,
            _ => {
                if !key.starts_with("region:") {
                    if self.terminations.len() >= MAX_TERMINATIONS {
                        self.terminations.pop_front();
                        self.terminations_dropped += 1;
                    }
                    self.terminations.push_back((key.to_string(), fact.clone()));
                }
                if self.map.insert(key.to_string(), fact).is_none() {
                    if key.starts_with("region:") {
                        self.regions += 1;
                    } else {
                        self.learned.push_back(key.to_string());
                        while self.learned.len() > MAX_FACTS {
                            if let Some(oldest) = self.learned.pop_front() {
                                self.map.remove(&oldest);
                            }
                        }
                    }
                }
                true
            }
        }
    }

    /// Whether [`Self::learn`] would change nothing for a fact under `key` of `time`,
    /// `cleared` or not: an earlier (or equal) one is known and not undone. Asked before the
    /// fact is built (see [`facts_of_where`]).
    pub fn knows(&self, key: &str, time: i64, cleared: bool) -> bool {
        !cleared
            && self
                .map
                .get(key)
                .is_some_and(|known| !known.cleared && known.time <= time)
    }

    /// The fact under `key`, unless it was undone.
    pub fn get(&self, key: &str) -> Option<&Fact> {
        self.map.get(key).filter(|f| !f.cleared)
    }

    /// Terminations learned after the first `seen` (of those still kept).
    pub fn terminations_since(&self, seen: usize) -> Vec<(String, Fact)> {
        let from = seen.saturating_sub(self.terminations_dropped);
        self.terminations
            .range(from.min(self.terminations.len())..)
            .cloned()
            .collect()
    }

    /// How many terminations were learned (kept or not).
    pub fn terminations(&self) -> usize {
        self.terminations_dropped + self.terminations.len()
    }

    /// Facts are shared between processes: `activities` partitions publish marks on each of
    /// `facts` partitions, and decisions wait for them.
    pub fn set_shape(&mut self, activities: i32, facts: i32) {
        self.shape = Some((activities.max(1), facts.max(1)));
        self.complete = Some(self.least_mark());
    }

    /// The activities topic's partitions, once known.
    pub fn activities_partitions(&self) -> Option<i32> {
        self.shape.map(|(activities, _)| activities)
    }

    /// Whether activities partition `partition` is one of this deployment's (any, while the
    /// shape is unknown): a record naming another is not ours, and is not kept.
    pub fn knows_partition(&self, partition: i32) -> bool {
        self.shape
            .is_none_or(|(activities, _)| (0..activities).contains(&partition))
    }

    /// Takes `mark` for activities partition `partition` on facts partition `facts_partition`.
    /// What a mark vouches for stays true (the facts are durable), so `through` and `max`
    /// never move back; `idle` is the latest word. A mark for a partition pair outside the
    /// shape is ignored (it could only be forged, or from a deployment with more partitions).
    pub fn mark(&mut self, partition: i32, facts_partition: i32, mark: Mark) {
        if let Some((activities, facts)) = self.shape {
            if !(0..activities).contains(&partition) || !(0..facts).contains(&facts_partition) {
                return;
            }
        }
        let entry = self
            .marks
            .entry((partition, facts_partition))
            .or_insert(mark);
        entry.through = entry.through.max(mark.through);
        entry.max = entry.max.max(mark.max);
        entry.idle = mark.idle;
        if self.shape.is_some() {
            self.complete = Some(self.least_mark());
        }
    }

    /// The latest event time any partition has evaluated, as the marks say.
    pub fn org_max(&self) -> Option<i64> {
        self.marks
            .values()
            .map(|m| m.max)
            .filter(|&m| m > i64::MIN)
            .max()
    }

    /// The event time through which every fact is known here: the least mark of every
    /// (activities, facts) partition pair. `i64::MIN` while a pair has no mark yet; `i64::MAX`
    /// when facts are not shared between processes. (A partition read to its end says so in
    /// its own mark; a mark is never reinterpreted here, so one that stops coming — an
    /// instance gone — holds decisions back instead of letting them through.)
    pub fn complete_through(&self) -> i64 {
        self.complete.unwrap_or(i64::MAX)
    }

    /// The least `through` over the shape's partition pairs (see [`Self::complete_through`]).
    fn least_mark(&self) -> i64 {
        let Some((activities, facts)) = self.shape else {
            return i64::MAX;
        };
        let mut least = i64::MAX;
        for p in 0..activities {
            for k in 0..facts {
                let Some(mark) = self.marks.get(&(p, k)) else {
                    return i64::MIN;
                };
                least = least.min(mark.through);
            }
        }
        least
    }

    /// Drops the organization's counts no judgement still to come reads (see
    /// [`crate::census::Census::prune`]): those before the window of the day the facts are
    /// complete through.
    pub fn prune_census(&mut self) {
        let complete = self.complete_through();
        if complete == i64::MIN {
            return;
        }
        let judged_from = if complete == i64::MAX {
            i64::MAX
        } else {
            crate::census::day_of(complete)
        };
        self.census.prune(judged_from);
    }

    /// How many facts are known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The facts `a` establishes: (key, fact).
pub fn facts_of(a: &Activity) -> Vec<(String, Fact)> {
    facts_of_where(a, |_, _, _| true)
}

/// [`facts_of`], keeping those `keep` accepts — (key, time, cleared) — and building only
/// those: most writes establish a region already known, and building its fact for every one
/// was ≈ 1 % of detect's instructions.
pub fn facts_of_where(a: &Activity, keep: impl Fn(&str, i64, bool) -> bool) -> Vec<(String, Fact)> {
    let mut out = Vec::new();
    let t = a.event_time.timestamp();
    let how = || format!("{} by {}", a.event_name, a.principal.display());
    if !a.outcome.is_success() {
        return out;
    }
    let params = a.request_parameters.as_ref();
    let text = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
    // Only these calls establish facts (what a call asked is parsed only for them).
    let establishes = matches!(
        a.event_name.as_str(),
        "DeleteUser"
            | "DeleteLoginProfile"
            | "CreateUser"
            | "CreateLoginProfile"
            | "UpdateAccessKey"
            | "DeleteAccessKey"
    );
    if a.event_source == "iam.amazonaws.com" && establishes {
        let account = a.account_id.clone().unwrap_or_default();
        // Whose credentials: the named user, else the caller (a user managing its own keys).
        let subject = text("userName")
            .map(str::to_string)
            .or_else(|| {
                a.principal
                    .name
                    .clone()
                    .filter(|_| a.principal.kind == "IAMUser")
            })
            .map(|name| format!("{account}/{name}"));
        // (fact key, whether the call undoes a termination)
        let user = |kind: &str| text("userName").map(|u| format!("{kind}:{account}/{u}"));
        let key = || text("accessKeyId").map(|k| format!("key:{k}"));
        let status = text("status");
        let fact = match a.event_name.as_str() {
            "DeleteUser" => user("user").map(|k| (k, false)),
            "DeleteLoginProfile" => user("console").map(|k| (k, false)),
            "CreateUser" => user("user").map(|k| (k, true)),
            "CreateLoginProfile" => user("console").map(|k| (k, true)),
            "UpdateAccessKey" if status == Some("Inactive") => key().map(|k| (k, false)),
            "UpdateAccessKey" if status == Some("Active") => key().map(|k| (k, true)),
            "DeleteAccessKey" => key().map(|k| (k, false)),
            _ => None,
        };
        if let Some((k, cleared)) = fact.filter(|(k, cleared)| keep(k, t, *cleared)) {
            out.push((
                k,
                Fact {
                    time: t,
                    how: how(),
                    subject: subject.clone(),
                    cleared,
                },
            ));
        }
    }
    // A region is in use once something changes there (reads sweep every region).
    if let Some(region) = &a.region {
        let key = || ["region:", region.as_str()].concat();
        let key = (crate::classify::is_write(a)
            && !GLOBAL_SERVICES.contains(&a.event_source.as_str()))
        .then(key)
        .filter(|k| keep(k, t, false));
        if let Some(key) = key {
            out.push((
                key,
                Fact {
                    time: t,
                    how: how(),
                    subject: None,
                    cleared: false,
                },
            ));
        }
    }
    out
}

/// Services whose calls are recorded in one region whatever region they concern.
const GLOBAL_SERVICES: &[&str] = &[
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    "organizations.amazonaws.com",
    "cloudfront.amazonaws.com",
    "route53.amazonaws.com",
    "signin.amazonaws.com",
    "support.amazonaws.com",
    "health.amazonaws.com",
    "sso.amazonaws.com",
    "account.amazonaws.com",
];

/// Calls that create a resource (not data written into one), or ask for room to create
/// them (a service quota increase: the first step of mining in a region).
fn creates(a: &Activity) -> bool {
    (["Create", "Run", "Import", "Allocate", "Register", "Launch"]
        .iter()
        .any(|p| a.event_name.starts_with(p))
        || (a.event_source == "servicequotas.amazonaws.com"
            && a.event_name == "RequestServiceQuotaIncrease"))
        && a.outcome.is_success()
        && !GLOBAL_SERVICES.contains(&a.event_source.as_str())
        && !crate::classify::is_data_event(a)
        && a.event_source != "logs.amazonaws.com"
}

/// Why `a` is activity by a terminated user, if it is: (summary, severity, and the
/// termination's `key@time` when a fact established it). The alert is about the termination,
/// so its id comes from that, whichever activity — or [`crate::detector::Detector::look_back`]
/// — finds it first.
pub fn terminated(
    facts: &Facts,
    listed: &[String],
    a: &Activity,
) -> Option<(String, Severity, Option<String>)> {
    let t = a.event_time.timestamp();
    let p = &a.principal;
    // Nothing terminated and nobody listed: the usual case, decided without building keys.
    if facts.terminations() == 0 && listed.is_empty() {
        return None;
    }
    if let Some(key) = p
        .access_key_id
        .as_ref()
        .filter(|_| facts.terminations() > 0)
    {
        let fact_key = format!("key:{key}");
        if let Some(f) = facts.get(&fact_key).filter(|f| f.time < t) {
            return Some((
                format!(
                    "{} used access key {key} after {} ({})",
                    p.display(),
                    f.how,
                    fmt_time(f.time)
                ),
                Severity::High,
                Some(format!("{fact_key}@{}", f.time)),
            ));
        }
    }
    if p.kind == "IAMUser" && facts.terminations() > 0 {
        if let (Some(account), Some(name)) = (&p.account_id, &p.name) {
            let user_key = format!("user:{account}/{name}");
            if let Some(f) = facts.get(&user_key).filter(|f| f.time < t) {
                return Some((
                    format!(
                        "{name} acted after the user was deleted ({}, {})",
                        f.how,
                        fmt_time(f.time)
                    ),
                    Severity::High,
                    Some(format!("{user_key}@{}", f.time)),
                ));
            }
            let console = a.event_type.as_deref() == Some("AwsConsoleSignIn");
            let console_key = format!("console:{account}/{name}");
            if let Some(f) = facts.get(&console_key).filter(|f| console && f.time < t) {
                return Some((
                    format!(
                        "{name} signed in to the console after its console access was removed ({}, {})",
                        f.how,
                        fmt_time(f.time)
                    ),
                    Severity::High,
                    Some(format!("{console_key}@{}", f.time)),
                ));
            }
        }
    }
    let names = [
        p.arn.as_deref(),
        p.name.as_deref(),
        p.name.as_deref().and_then(|n| n.rsplit('/').next()),
    ];
    if let Some(hit) = names
        .into_iter()
        .flatten()
        .find(|n| listed.iter().any(|l| l.eq_ignore_ascii_case(n)))
    {
        return Some((
            format!("{hit} is listed as terminated and acted: {}", a.event_name),
            Severity::High,
            None,
        ));
    }
    None
}

/// Whether `a` creates a resource in a region the organization does not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionVerdict {
    /// It does not, and no fact still to come can change that.
    Usual,
    /// It does, on facts complete through its event time: why.
    Unusual(String),
    /// It might: facts not yet complete through its event time could still show the region
    /// (or an earlier start of the organization's history).
    Wait,
}

/// Whether `a` is a call that [`region_verdict`] judges (a resource created).
pub fn is_region_candidate(a: &Activity) -> bool {
    a.region.is_some() && creates(a)
}

/// Judges `a` against the regions in use before it. "Used before" can only become true as
/// facts arrive, and the history's start only earlier, so `Usual` from a known earlier use is
/// final at once; anything else waits until the facts are complete through `a`'s time
/// (`complete_through`: [`Facts::complete_through`], or `i64::MAX` to decide on what is known).
pub fn region_verdict(
    facts: &Facts,
    learning_secs: i64,
    a: &Activity,
    complete_through: i64,
) -> RegionVerdict {
    let Some(region) = a.region.as_deref().filter(|_| creates(a)) else {
        return RegionVerdict::Usual;
    };
    let t = a.event_time.timestamp();
    let in_use = facts
        .get(&format!("region:{region}"))
        .is_some_and(|f| f.time < t);
    if in_use {
        return RegionVerdict::Usual;
    }
    if complete_through < t {
        return RegionVerdict::Wait;
    }
    match facts.first_use {
        Some(history_from) if t - history_from >= learning_secs => RegionVerdict::Unusual(format!(
            "{} {} in {region}, a region the organization has not used",
            a.principal.display(),
            a.event_name
        )),
        _ => RegionVerdict::Usual,
    }
}

/// `eu-north-1`, `us-gov-west-1`, `eusc-de-east-1`: what an AWS region's name looks like
/// (lower-case words, then a number; at most 32 characters).
fn looks_like_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    region.len() <= 32
        && parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

fn fmt_time(t: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn act(
        t: i64,
        source: &str,
        name: &str,
        params: Value,
        identity: Value,
        region: &str,
    ) -> Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let record = json!({"eventTime": time.to_rfc3339(), "eventSource": source, "eventName": name,
            "awsRegion": region, "recipientAccountId": "111111111111", "requestParameters": params,
            "userIdentity": identity, "sourceIPAddress": "198.51.100.1"});
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn admin() -> Value {
        json!({"type": "IAMUser", "userName": "admin", "arn": "arn:aws:iam::111111111111:user/admin", "accountId": "111111111111"})
    }

    fn bob() -> Value {
        json!({"type": "IAMUser", "userName": "bob", "arn": "arn:aws:iam::111111111111:user/bob", "accountId": "111111111111", "accessKeyId": "AKIAEXAMPLEBOB"})
    }

    /// A key toggled off and on again for ever, or facts about keys, users and regions made
    /// up by the thousand, cost a bounded amount of memory: the oldest facts learned are
    /// forgotten first, and a region that cannot be one is not learned.
    #[test]
    fn facts_are_bounded_however_many_are_learned() {
        let fact = |time: i64, cleared: bool| Fact {
            time,
            how: "UpdateAccessKey by bob".into(),
            subject: Some("111111111111/bob".into()),
            cleared,
        };
        let mut facts = Facts::default();
        for i in 0..(4 * MAX_TERMINATIONS as i64) {
            facts.learn("key:AKIAEXAMPLE", fact(i, i % 2 == 1));
        }
        assert!(facts.terminations.len() <= MAX_TERMINATIONS);
        // Counted still, so a partition's place in the log stays meaningful.
        assert_eq!(facts.terminations(), 2 * MAX_TERMINATIONS);
        let seen = facts.terminations() - 3;
        assert_eq!(facts.terminations_since(seen).len(), 3);
        assert_eq!(facts.terminations_since(0).len(), facts.terminations.len());

        let mut facts = Facts::default();
        for i in 0..(MAX_FACTS as i64 + 1_000) {
            facts.learn(&format!("key:AKIA{i:016}"), fact(i, false));
        }
        assert!(facts.len() <= MAX_FACTS, "{}", facts.len());
        assert!(
            facts.get("key:AKIA0000000000000000").is_none(),
            "oldest first"
        );
        assert!(facts
            .get(&format!("key:AKIA{:016}", MAX_FACTS as i64 + 999))
            .is_some());

        let mut facts = Facts::default();
        facts.learn("region:eu-north-1", fact(0, false));
        for i in 0..(2 * MAX_REGIONS) {
            facts.learn(&format!("region:xx-made-up-{i}"), fact(1, false));
        }
        facts.learn("region:not a region", fact(2, false));
        assert!(facts.get("region:not a region").is_none());
        for real in [
            "us-gov-west-1",
            "eusc-de-east-1",
            "ap-southeast-5",
            "us-isob-east-1",
        ] {
            assert!(looks_like_region(real), "{real}");
        }
        for made_up in [
            "us-east",
            "US-EAST-1",
            "us-east-1a",
            "-east-1",
            "us--1",
            "x".repeat(40).as_str(),
        ] {
            assert!(!looks_like_region(made_up), "{made_up}");
        }
        assert!(facts.len() <= MAX_REGIONS);
        assert!(
            facts.get("region:eu-north-1").is_some(),
            "regions learned first stay"
        );
    }

    #[test]
    fn deleted_user_and_deactivated_key() {
        let mut facts = Facts::default();
        let before = act(
            0,
            "s3.amazonaws.com",
            "ListBuckets",
            json!({}),
            bob(),
            "us-east-1",
        );
        let deactivate = act(
            10,
            "iam.amazonaws.com",
            "UpdateAccessKey",
            json!({"userName": "bob", "accessKeyId": "AKIAEXAMPLEBOB", "status": "Inactive"}),
            admin(),
            "us-east-1",
        );
        for (k, f) in facts_of(&deactivate) {
            facts.learn(&k, f);
        }
        assert!(
            terminated(&facts, &[], &before).is_none(),
            "before the deactivation"
        );
        let after = act(
            20,
            "s3.amazonaws.com",
            "ListBuckets",
            json!({}),
            bob(),
            "us-east-1",
        );
        let why = terminated(&facts, &[], &after)
            .map(|w| w.0)
            .unwrap_or_default();
        assert!(
            why.contains("AKIAEXAMPLEBOB") && why.contains("UpdateAccessKey"),
            "{why}"
        );
        let delete = act(
            30,
            "iam.amazonaws.com",
            "DeleteUser",
            json!({"userName": "carol"}),
            admin(),
            "us-east-1",
        );
        for (k, f) in facts_of(&delete) {
            facts.learn(&k, f);
        }
        let carol = json!({"type": "IAMUser", "userName": "carol", "arn": "arn:aws:iam::111111111111:user/carol", "accountId": "111111111111"});
        assert!(terminated(
            &facts,
            &[],
            &act(
                40,
                "ec2.amazonaws.com",
                "DescribeInstances",
                json!({}),
                carol,
                "us-east-1"
            )
        )
        .is_some());
        // From a configured list (an IdP's leavers).
        let dave = json!({"type": "IAMUser", "userName": "dave", "arn": "arn:aws:iam::111111111111:user/dave", "accountId": "111111111111"});
        assert!(terminated(
            &facts,
            &["DAVE".into()],
            &act(
                50,
                "ec2.amazonaws.com",
                "DescribeInstances",
                json!({}),
                dave,
                "us-east-1"
            )
        )
        .is_some());
    }

    #[test]
    fn an_undone_termination_is_forgotten() {
        let mut facts = Facts::default();
        let steps = [
            act(
                10,
                "iam.amazonaws.com",
                "UpdateAccessKey",
                json!({"userName": "bob", "accessKeyId": "AKIAEXAMPLEBOB", "status": "Inactive"}),
                admin(),
                "us-east-1",
            ),
            act(
                20,
                "iam.amazonaws.com",
                "UpdateAccessKey",
                json!({"userName": "bob", "accessKeyId": "AKIAEXAMPLEBOB", "status": "Active"}),
                admin(),
                "us-east-1",
            ),
        ];
        for step in &steps {
            for (k, f) in facts_of(step) {
                facts.learn(&k, f);
            }
        }
        let after = act(
            30,
            "s3.amazonaws.com",
            "ListBuckets",
            json!({}),
            bob(),
            "us-east-1",
        );
        assert!(terminated(&facts, &[], &after).is_none());
    }

    /// The facts after one instance launched in us-east-1 at the start of the history.
    fn using_us_east_1() -> Facts {
        let mut facts = Facts::default();
        for (k, f) in facts_of(&act(
            0,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "us-east-1",
        )) {
            facts.learn(&k, f);
        }
        facts
    }

    #[test]
    fn a_new_region_after_the_learning_period() {
        let facts = using_us_east_1();
        let week = 7 * 86_400;
        let early = act(
            86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        assert!(
            region_verdict(&facts, week, &early, facts.complete_through()) == RegionVerdict::Usual,
            "still learning"
        );
        let late = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        assert!(matches!(
            region_verdict(&facts, week, &late, facts.complete_through()),
            RegionVerdict::Unusual(_)
        ));
        let usual = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "us-east-1",
        );
        assert_eq!(
            region_verdict(&facts, week, &usual, facts.complete_through()),
            RegionVerdict::Usual
        );
        let read = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "DescribeInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        assert_eq!(
            region_verdict(&facts, week, &read, facts.complete_through()),
            RegionVerdict::Usual
        );
    }

    /// A quota increase asked for in a region the organization has not used is the first
    /// step of mining there: judged as a creation (it establishes the region, as any write
    /// there does, so it must be judged itself).
    #[test]
    fn a_quota_request_in_a_new_region() {
        let facts = using_us_east_1();
        let week = 7 * 86_400;
        let quota = act(
            8 * 86_400,
            "servicequotas.amazonaws.com",
            "RequestServiceQuotaIncrease",
            json!({"serviceCode": "ec2", "quotaCode": "L-417A185B", "desiredValue": 512}),
            admin(),
            "ap-south-2",
        );
        assert!(matches!(
            region_verdict(&facts, week, &quota, facts.complete_through()),
            RegionVerdict::Unusual(_)
        ));
    }

    #[test]
    fn only_facts_not_known_yet_are_built() {
        let mut facts = Facts::default();
        let unknown = |facts: &Facts, a: &Activity| {
            facts_of_where(a, |k, t, cleared| !facts.knows(k, t, cleared))
                .into_iter()
                .map(|(k, f)| (k, f.time, f.cleared))
                .collect::<Vec<_>>()
        };
        let run = act(
            100,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "eu-north-1",
        );
        let created = act(
            100,
            "iam.amazonaws.com",
            "CreateUser",
            json!({"userName": "eve"}),
            admin(),
            "us-east-1",
        );
        let t = 1_700_000_100;
        assert_eq!(
            unknown(&facts, &run),
            [("region:eu-north-1".to_string(), t, false)]
        );
        // A creation is always built (it may undo a deletion); IAM, a global service,
        // establishes no region.
        assert_eq!(
            unknown(&facts, &created),
            [("user:111111111111/eve".to_string(), t, true)]
        );
        learn_all(&mut facts, &run);
        // Known from that time: not built again, unless earlier.
        assert!(unknown(&facts, &run).is_empty());
        let earlier = act(
            50,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "eu-north-1",
        );
        assert_eq!(
            unknown(&facts, &earlier),
            [("region:eu-north-1".to_string(), t - 50, false)]
        );
        // A re-creation undoes a deletion: built while the deletion is known.
        let deleted = act(
            200,
            "iam.amazonaws.com",
            "DeleteUser",
            json!({"userName": "eve"}),
            admin(),
            "us-east-1",
        );
        learn_all(&mut facts, &deleted);
        let again = act(
            300,
            "iam.amazonaws.com",
            "CreateUser",
            json!({"userName": "eve"}),
            admin(),
            "us-east-1",
        );
        assert_eq!(
            unknown(&facts, &again),
            [("user:111111111111/eve".to_string(), t + 200, true)]
        );
    }

    fn learn_all(facts: &mut Facts, a: &Activity) {
        for (k, f) in facts_of(a) {
            facts.learn(&k, f);
        }
    }

    /// What `act` adds to its times.
    const T0: i64 = 1_700_000_000;

    fn mark(through: i64, max: i64, idle: bool) -> Mark {
        Mark { through, max, idle }
    }

    #[test]
    fn shared_facts_are_complete_through_the_least_mark() {
        let mut facts = Facts::default();
        assert_eq!(
            facts.complete_through(),
            i64::MAX,
            "one process: always complete"
        );
        facts.set_shape(2, 2);
        assert_eq!(facts.complete_through(), i64::MIN, "no marks yet");
        facts.mark(0, 0, mark(100, 400, false));
        facts.mark(0, 1, mark(100, 400, false));
        facts.mark(1, 0, mark(50, 350, false));
        assert_eq!(
            facts.complete_through(),
            i64::MIN,
            "partition 1 has not marked facts partition 1"
        );
        facts.mark(1, 1, mark(70, 370, false));
        assert_eq!(facts.complete_through(), 50);
        // A mark never moves back (a restarted instance marks from where its replay starts).
        facts.mark(1, 0, mark(20, 300, false));
        assert_eq!(facts.complete_through(), 50);
        facts.mark(1, 0, mark(90, 390, false));
        assert_eq!(facts.complete_through(), 70);
        // Caught up or not, each mark says what it vouches for; an old idle word is not
        // taken to mean more.
        for (p, k) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            facts.mark(p, k, mark(0, 0, true));
        }
        assert_eq!(facts.complete_through(), 70);
        facts.mark(1, 1, mark(380, 380, true));
        assert_eq!(facts.complete_through(), 90);
        // Marks read before the shape is known count once it is (and only its pairs).
        let mut early = Facts::default();
        early.mark(0, 0, mark(30, 30, false));
        early.mark(5, 0, mark(10, 10, false));
        assert_eq!(early.complete_through(), i64::MAX);
        early.set_shape(1, 1);
        assert_eq!(early.complete_through(), 30);
        early.set_shape(2, 1);
        assert_eq!(early.complete_through(), i64::MIN);
    }

    #[test]
    fn a_region_decision_waits_for_the_facts_of_its_time() {
        let week = 7 * 86_400;
        let first = act(
            0,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "us-east-1",
        );
        let create = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        // The same region's first use, earlier in event time, on another partition.
        let earlier = act(
            8 * 86_400 - 60,
            "ec2.amazonaws.com",
            "CreateVpc",
            json!({}),
            admin(),
            "ap-east-1",
        );

        let mut facts = Facts::default();
        facts.set_shape(2, 1);
        learn_all(&mut facts, &first);
        facts.mark(
            0,
            0,
            mark(T0 + 8 * 86_400 + 600, T0 + 8 * 86_400 + 900, false),
        );
        assert_eq!(
            region_verdict(&facts, week, &create, facts.complete_through()),
            RegionVerdict::Wait,
            "partition 1 has not marked"
        );
        // Partition 1's fact arrives, then its mark: the region was in use after all.
        learn_all(&mut facts, &earlier);
        assert_eq!(
            region_verdict(&facts, week, &create, facts.complete_through()),
            RegionVerdict::Usual,
            "final once known"
        );

        // Without the earlier use, the decision is made once every partition has passed it.
        let mut facts = Facts::default();
        facts.set_shape(2, 1);
        learn_all(&mut facts, &first);
        facts.mark(
            0,
            0,
            mark(T0 + 8 * 86_400 + 600, T0 + 8 * 86_400 + 900, false),
        );
        facts.mark(
            1,
            0,
            mark(T0 + 8 * 86_400 - 1, T0 + 8 * 86_400 + 299, false),
        );
        assert_eq!(
            region_verdict(&facts, week, &create, facts.complete_through()),
            RegionVerdict::Wait
        );
        facts.mark(1, 0, mark(T0 + 8 * 86_400, T0 + 8 * 86_400 + 300, false));
        assert!(matches!(
            region_verdict(&facts, week, &create, facts.complete_through()),
            RegionVerdict::Unusual(_)
        ));
    }
}
