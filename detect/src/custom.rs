//! Custom policies from configuration: filters over activity fields, optionally a threshold
//! over a sliding event-time window per group.
//!
//! ```toml
//! [[policies.custom]]
//! id = "root-console-sign-in"
//! name = "Root console sign-in"
//! severity = "high"
//! actions = ["notify"]
//! filters = [
//!   { field = "event_name", op = "equals", value = "ConsoleLogin" },
//!   { field = "principal.type", op = "equals", value = "Root" },
//!   { field = "source_ip", op = "cidr", values = ["10.0.0.0/8"], negate = true },
//! ]
//! # optional: at least 3 matches within 10 minutes per source address
//! # threshold = 3
//! # window = "10m"
//! # group_by = "source_ip"
//! ```
//!
//! Fields are the activity's JSON fields as published (`event_name`, `event_source`,
//! `account_id`, `region`, `source_ip`, `user_agent`, `principal.arn`, `principal.type`,
//! `outcome.status`, `outcome.error_code`, `enrichment.geo.country`, `enrichment.ip_categories`,
//! `resources.id`, `request_parameters.bucketName`, …); lists match when any item does. A
//! threshold's windows are kept per partition, so `group_by` a principal field is exact and
//! other groups count what one partition sees.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{stable_id, ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::Activity;

use crate::policy::{requested, who, AlertBuilder, Offset, PolicyMeta};

/// One custom policy as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPolicyConfig {
    /// Stable id (alerts, metrics): lower-case letters, digits and `-`.
    pub id: String,
    /// Human name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// Evaluate it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Severity of its alerts.
    #[serde(default = "medium")]
    pub severity: Severity,
    /// Every filter must match.
    pub filters: Vec<FilterConfig>,
    /// Matches needed within `window` (per `group_by` value) to alert; 1 alerts on each match.
    #[serde(default = "one")]
    pub threshold: usize,
    /// Sliding window on event time, for a threshold above 1.
    #[serde(default, with = "humantime_serde")]
    pub window: Option<Duration>,
    /// Field whose value groups the counts (default: the principal).
    #[serde(default)]
    pub group_by: Option<String>,
    /// Governance actions to request (default: notify).
    #[serde(default)]
    pub actions: Option<Vec<ActionKind>>,
}

fn yes() -> bool {
    true
}
fn medium() -> Severity {
    Severity::Medium
}
fn one() -> usize {
    1
}

/// One filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The field (dotted path).
    pub field: String,
    /// `equals`, `in`, `prefix`, `cidr`, `regex` or `exists`.
    pub op: String,
    /// The operand of `equals`, `prefix`, `cidr`, `regex`; `true`/`false` for `exists`.
    #[serde(default)]
    pub value: Option<Value>,
    /// The operands of `in` (and `cidr`, `prefix`: any of them).
    #[serde(default)]
    pub values: Vec<String>,
    /// Invert the filter.
    #[serde(default)]
    pub negate: bool,
}

/// A compiled filter.
#[derive(Debug, Clone)]
enum Test {
    Equals(Vec<String>),
    Prefix(Vec<String>),
    Cidr(Vec<ipnet::IpNet>),
    Regex(Regex),
    Exists(bool),
}

#[derive(Debug, Clone)]
struct Filter {
    path: Vec<String>,
    test: Test,
    negate: bool,
}

/// Roots a field may start with.
const ROOTS: &[&str] = &[
    "id",
    "event_id",
    "event_time",
    "event_source",
    "event_name",
    "event_type",
    "account_id",
    "region",
    "partition",
    "principal",
    "source_ip",
    "source_host",
    "user_agent",
    "read_only",
    "outcome",
    "resources",
    "request_id",
    "request_parameters",
    "response_elements",
    "additional_event_data",
    "enrichment",
];

fn operand_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Filter {
    fn compile(cfg: &FilterConfig, at: &str) -> Result<Filter, trailguard_common::Error> {
        let err =
            |key: &str, msg: String| trailguard_common::Error::config(&format!("{at}.{key}"), msg);
        let path: Vec<String> = cfg.field.split('.').map(str::to_string).collect();
        if !ROOTS.contains(&path[0].as_str()) {
            return Err(err(
                "field",
                format!(
                    "`{}` is not an activity field; fields start with one of {}",
                    cfg.field,
                    ROOTS.join(", ")
                ),
            ));
        }
        let mut operands: Vec<String> = cfg.values.clone();
        if let Some(v) = &cfg.value {
            operands.insert(0, operand_text(v));
        }
        let need = |ops: &Vec<String>| {
            if ops.is_empty() {
                Err(err(
                    "value",
                    format!("`{}` needs `value` or `values`", cfg.op),
                ))
            } else {
                Ok(())
            }
        };
        let test = match cfg.op.as_str() {
            "equals" | "in" => {
                need(&operands)?;
                Test::Equals(operands)
            }
            "prefix" => {
                need(&operands)?;
                Test::Prefix(operands)
            }
            "cidr" => {
                need(&operands)?;
                let nets = operands
                    .iter()
                    .map(|o| {
                        o.parse::<ipnet::IpNet>()
                            .or_else(|_| o.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                            .map_err(|_| err("value", format!("`{o}` is not a CIDR")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Test::Cidr(nets)
            }
            "regex" => {
                need(&operands)?;
                if operands.len() > 1 {
                    return Err(err(
                        "value",
                        "give one pattern (alternatives inside it, with `|`)".into(),
                    ));
                }
                let re = Regex::new(&operands[0])
                    .map_err(|e| err("value", format!("bad regex: {e}")))?;
                Test::Regex(re)
            }
            "exists" => Test::Exists(!matches!(cfg.value, Some(Value::Bool(false)))),
            other => {
                return Err(err(
                    "op",
                    format!("`{other}` is not one of equals, in, prefix, cidr, regex, exists"),
                ))
            }
        };
        Ok(Filter {
            path,
            test,
            negate: cfg.negate,
        })
    }

    fn matches(&self, doc: &Value) -> bool {
        let mut found = Vec::new();
        collect(doc, &self.path, &mut found);
        let hit = match &self.test {
            Test::Exists(want) => found.is_empty() != *want,
            Test::Equals(ops) => found
                .iter()
                .any(|v| ops.iter().any(|o| *o == operand_text(v))),
            Test::Prefix(ops) => found
                .iter()
                .any(|v| ops.iter().any(|o| operand_text(v).starts_with(o.as_str()))),
            Test::Cidr(nets) => found.iter().any(|v| {
                operand_text(v)
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| nets.iter().any(|n| n.contains(&ip)))
            }),
            Test::Regex(re) => found.iter().any(|v| re.is_match(&operand_text(v))),
        };
        hit != self.negate
    }
}

/// The values at `path` in `doc`, flattening lists on the way.
fn collect<'a>(doc: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match (doc, path.split_first()) {
        (Value::Array(items), _) => {
            for item in items {
                collect(item, path, out);
            }
        }
        (Value::Null, _) => {}
        (v, None) => out.push(v),
        (Value::Object(map), Some((first, rest))) => {
            if let Some(next) = map.get(first) {
                collect(next, rest, out);
            }
        }
        _ => {}
    }
}

/// A compiled policy.
struct Policy {
    id: String,
    name: String,
    severity: Severity,
    filters: Vec<Filter>,
    threshold: usize,
    window: chrono::Duration,
    group_by: Option<Vec<String>>,
    actions: Vec<ActionKind>,
}

/// The highest threshold a policy may count to (each group keeps up to twice as many matches).
const MAX_THRESHOLD: usize = 10_000;
/// Most groups a partition keeps windows for, over all policies: past it, those whose latest
/// match is oldest are forgotten (a tenth at a time).
pub const MAX_GROUPS: usize = 100_000;

/// Checks and compiles the configured policies; errors name the policy and field.
fn compile(cfgs: &[CustomPolicyConfig]) -> Result<Vec<Policy>, trailguard_common::Error> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, c) in cfgs.iter().enumerate() {
        let at = format!("policies.custom[{i}]");
        let valid_id = !c.id.is_empty()
            && c.id
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
        if !valid_id {
            return Err(trailguard_common::Error::config(
                &format!("{at}.id"),
                format!("`{}`: use lower-case letters, digits and -", c.id),
            ));
        }
        // A built-in policy's id, or a Sigma rule's, would take on its remediation mode and
        // its place in `act_on_failed_activity`.
        let builtin = crate::config::builtin_policies()
            .iter()
            .any(|meta| meta.id == c.id);
        if builtin || c.id.starts_with("sigma-") {
            return Err(trailguard_common::Error::config(
                &format!("{at}.id"),
                format!("`{}` is a built-in policy's or a Sigma rule's id", c.id),
            ));
        }
        if !seen.insert(c.id.clone()) {
            return Err(trailguard_common::Error::config(
                &format!("{at}.id"),
                format!("`{}` is used twice", c.id),
            ));
        }
        let at = format!("policies.custom[{i}] ({})", c.id);
        if c.filters.is_empty() {
            return Err(trailguard_common::Error::config(
                &format!("{at}.filters"),
                "give at least one filter",
            ));
        }
        let filters = c
            .filters
            .iter()
            .enumerate()
            .map(|(j, f)| Filter::compile(f, &format!("{at}.filters[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if c.threshold == 0 || c.threshold > MAX_THRESHOLD {
            return Err(trailguard_common::Error::config(
                &format!("{at}.threshold"),
                format!("must be between 1 and {MAX_THRESHOLD}"),
            ));
        }
        let window = match (c.threshold, c.window) {
            (1, w) => w.unwrap_or_default(),
            (_, Some(w)) if !w.is_zero() && w <= Duration::from_secs(30 * 86_400) => w,
            _ => {
                return Err(trailguard_common::Error::config(
                    &format!("{at}.window"),
                    "a threshold above 1 needs a window between 1s and 30d",
                ))
            }
        };
        let group_by = match &c.group_by {
            Some(g) => {
                let path: Vec<String> = g.split('.').map(str::to_string).collect();
                if !ROOTS.contains(&path[0].as_str()) {
                    return Err(trailguard_common::Error::config(
                        &format!("{at}.group_by"),
                        format!("`{g}` is not an activity field"),
                    ));
                }
                Some(path)
            }
            None => None,
        };
        if !c.enabled {
            continue;
        }
        out.push(Policy {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            severity: c.severity,
            filters,
            threshold: c.threshold,
            window: chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero()),
            group_by,
            actions: c
                .actions
                .clone()
                .unwrap_or_else(|| vec![ActionKind::Notify]),
        });
    }
    Ok(out)
}

/// Validates the configured policies (at start-up).
pub fn validate(cfgs: &[CustomPolicyConfig]) -> Result<(), trailguard_common::Error> {
    compile(cfgs).map(|_| ())
}

/// One match in a window: event time, offset, activity id.
type Match = (chrono::DateTime<chrono::Utc>, Offset, String);

/// The custom policies of one partition, with their windows.
pub struct Custom {
    policies: Vec<Policy>,
    /// (policy index, group) → matches in the window: (event time, offset, activity id).
    windows: HashMap<(usize, String), VecDeque<Match>>,
}

impl Custom {
    /// The enabled policies. Configuration is validated at start-up (detect does not start
    /// with an invalid policy), so compiling cannot fail here.
    pub fn new(cfgs: &[CustomPolicyConfig]) -> Self {
        Custom {
            policies: compile(cfgs).unwrap_or_default(),
            windows: HashMap::new(),
        }
    }

    /// Whether a policy reads the top-level field `name` (in a filter or its grouping).
    fn reads(&self, name: &str) -> bool {
        let first = |path: &[String]| path.first().is_some_and(|f| f == name);
        self.policies.iter().any(|p| {
            p.filters.iter().any(|f| first(&f.path)) || p.group_by.as_deref().is_some_and(first)
        })
    }

    /// The alerts `a` (read at `offset`) raises.
    pub fn observe(&mut self, a: &Activity, offset: Offset) -> Vec<Alert> {
        if self.policies.is_empty() {
            return Vec::new();
        }
        // The bulky fields only when a policy reads them, from their parsed values (parsed once
        // per activity; serializing them would parse them again).
        let light = Activity {
            request_parameters: None,
            response_elements: None,
            additional_event_data: None,
            ..a.clone()
        };
        let Ok(mut doc) = serde_json::to_value(&light) else {
            return Vec::new();
        };
        let bulky = [
            ("request_parameters", &a.request_parameters),
            ("response_elements", &a.response_elements),
            ("additional_event_data", &a.additional_event_data),
        ];
        for (name, field) in bulky {
            if let (Some(raw), Some(map)) = (field, doc.as_object_mut()) {
                if self.reads(name) {
                    map.insert(name.to_string(), raw.value().clone());
                }
            }
        }
        let mut out = Vec::new();
        for (i, p) in self.policies.iter().enumerate() {
            if !p.filters.iter().all(|f| f.matches(&doc)) {
                continue;
            }
            let group = match &p.group_by {
                Some(path) => {
                    let mut found = Vec::new();
                    collect(&doc, path, &mut found);
                    found
                        .first()
                        .map(|v| operand_text(v))
                        .unwrap_or_else(|| "-".into())
                }
                None => a.principal.key(),
            };
            let (ids, entity_kind) = if p.threshold <= 1 {
                (vec![a.id.clone()], "principal")
            } else {
                if self.windows.len() >= MAX_GROUPS
                    && !self.windows.contains_key(&(i, group.clone()))
                {
                    forget_oldest_groups(&mut self.windows);
                }
                let window = self.windows.entry((i, group.clone())).or_default();
                if window.iter().any(|(_, _, id)| *id == a.id) {
                    continue;
                }
                let at = window.partition_point(|(t, _, _)| *t <= a.event_time);
                window.insert(at, (a.event_time, offset, a.id.clone()));
                // Twice the threshold is more than any burst needs, out of order or not.
                while window.len() > 2 * p.threshold {
                    window.pop_front();
                }
                // Matches within `window` of this one, before and after (out-of-order safe).
                let lo = a.event_time - p.window;
                let hi = a.event_time + p.window;
                let near: Vec<&Match> = window
                    .iter()
                    .filter(|(t, _, _)| *t >= lo && *t <= hi)
                    .collect();
                let Some(run) = near
                    .windows(p.threshold)
                    .find(|w| w[w.len() - 1].0 - w[0].0 <= p.window)
                else {
                    continue;
                };
                let ids: Vec<String> = run.iter().map(|(_, _, id)| id.clone()).collect();
                // One alert per burst: forget what made it.
                let first = run[0].0;
                let last = run[run.len() - 1].0;
                window.retain(|(t, _, _)| *t < first || *t > last);
                (
                    ids,
                    if p.group_by.is_some() {
                        "group"
                    } else {
                        "principal"
                    },
                )
            };
            let parts: Vec<&str> = std::iter::once(p.id.as_str())
                .chain(ids.iter().map(String::as_str))
                .collect();
            let summary = if p.threshold <= 1 {
                format!("{} {} matched {}", who(a), a.event_name, p.name)
            } else {
                format!(
                    "{} activities of {group} matched {} within {}",
                    ids.len(),
                    p.name,
                    humantime::format_duration(p.window.to_std().unwrap_or_default())
                )
            };
            let policy = PolicyMeta {
                id: &p.id,
                name: &p.name,
                kind: AlertKind::Custom,
            };
            let entity = Entity {
                kind: entity_kind.into(),
                id: if entity_kind == "group" {
                    group.clone()
                } else {
                    a.principal.key()
                },
            };
            let id = stable_id(std::iter::once("custom").chain(parts));
            out.push(
                AlertBuilder::about(&policy, a, p.severity)
                    .entity(entity)
                    .evidence(ids, summary)
                    .actions(requested(&p.actions, a))
                    .id(id),
            );
        }
        out
    }

    /// Drops window entries older than `watermark` minus their policy's window.
    pub fn expire(&mut self, watermark: chrono::DateTime<chrono::Utc>) {
        let horizons: Vec<Option<chrono::DateTime<chrono::Utc>>> = self
            .policies
            .iter()
            .map(|p| watermark.checked_sub_signed(p.window))
            .collect();
        self.windows.retain(|(i, _), w| {
            if let Some(Some(horizon)) = horizons.get(*i) {
                w.retain(|(t, _, _)| t >= horizon);
            }
            !w.is_empty()
        });
    }

    /// The first offset a replay must start from to rebuild the open windows.
    pub fn first_open_offset(&self) -> Option<Offset> {
        self.windows
            .values()
            .flat_map(|w| w.iter().map(|(_, o, _)| *o))
            .min()
    }
}

/// Forgets the tenth of `windows` whose latest match is oldest (the event time breaks no
/// ties by itself: the key does, so the choice is the same on every run).
fn forget_oldest_groups(windows: &mut HashMap<(usize, String), VecDeque<Match>>) {
    let n = (windows.len() / 10).max(1);
    let mut by_age: Vec<(chrono::DateTime<chrono::Utc>, (usize, String))> = windows
        .iter()
        .map(|(k, w)| {
            (
                w.back().map_or(chrono::DateTime::UNIX_EPOCH, |m| m.0),
                k.clone(),
            )
        })
        .collect();
    let n = n.min(by_age.len());
    if n == 0 {
        return;
    }
    by_age.select_nth_unstable(n - 1);
    for (_, key) in by_age.into_iter().take(n) {
        windows.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn activity(t: i64, name: &str, ip: &str) -> Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let record = json!({
            "eventTime": time.to_rfc3339(), "eventSource": "signin.amazonaws.com", "eventName": name,
            "sourceIPAddress": ip, "eventID": format!("00000000-0000-4000-8000-{t:012}"),
            "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111111111111:root", "accountId": "111111111111"},
            "requestParameters": {"bucketName": "b", "tags": [{"k": "env"}, {"k": "prod"}]},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn policy(toml_text: &str) -> Vec<CustomPolicyConfig> {
        #[derive(Deserialize)]
        struct File {
            custom: Vec<CustomPolicyConfig>,
        }
        match toml::from_str::<File>(toml_text) {
            Ok(f) => f.custom,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn filters_of_every_kind() {
        let cfg = policy(
            r#"
            [[custom]]
            id = "root-outside"
            severity = "high"
            filters = [
              { field = "event_name", op = "in", values = ["ConsoleLogin", "GetSessionToken"] },
              { field = "principal.type", op = "equals", value = "Root" },
              { field = "source_ip", op = "cidr", values = ["10.0.0.0/8"], negate = true },
              { field = "principal.arn", op = "regex", value = ":root$" },
              { field = "request_parameters.tags.k", op = "equals", value = "prod" },
              { field = "request_parameters.bucketName", op = "prefix", value = "b" },
              { field = "principal.user_name_missing", op = "exists", value = false },
            ]
        "#,
        );
        assert!(validate(&cfg).is_ok());
        let mut custom = Custom::new(&cfg);
        let alerts = custom.observe(&activity(0, "ConsoleLogin", "203.0.113.5"), 0);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, Severity::High);
        assert!(custom
            .observe(&activity(1, "ConsoleLogin", "10.1.2.3"), 1)
            .is_empty());
        assert!(custom
            .observe(&activity(2, "ListBuckets", "203.0.113.5"), 2)
            .is_empty());
    }

    #[test]
    fn threshold_over_a_sliding_window_by_group() {
        let cfg = policy(
            r#"
            [[custom]]
            id = "many-logins"
            filters = [{ field = "event_name", op = "equals", value = "ConsoleLogin" }]
            threshold = 3
            window = "10m"
            group_by = "source_ip"
        "#,
        );
        let mut custom = Custom::new(&cfg);
        let ts = [0, 1000, 1100, 1200, 1300, 5000];
        let alerts: Vec<Alert> = ts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                custom.observe(&activity(*t, "ConsoleLogin", "203.0.113.5"), i as i64)
            })
            .collect();
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0].entity.id, "203.0.113.5");
        assert_eq!(alerts[0].evidence.activity_ids.len(), 3);
        // Reversed order: the same alert.
        let mut custom = Custom::new(&cfg);
        let reversed: Vec<Alert> = ts
            .iter()
            .enumerate()
            .rev()
            .flat_map(|(i, t)| {
                custom.observe(&activity(*t, "ConsoleLogin", "203.0.113.5"), i as i64)
            })
            .collect();
        assert_eq!(reversed.len(), 1);
    }

    /// One match per made-up value (an address, a user agent) makes a group each: the groups a
    /// partition keeps are bounded, and so is each group's window; each policy's window is
    /// kept for its own length, not the longest of all.
    #[test]
    fn windows_are_bounded_however_many_groups_matches_make() {
        let cfg = policy(
            r#"
            [[custom]]
            id = "by-agent"
            filters = [{ field = "event_name", op = "equals", value = "ConsoleLogin" }]
            threshold = 3
            window = "1h"
            group_by = "user_agent"
            [[custom]]
            id = "spread"
            filters = [{ field = "event_name", op = "equals", value = "ListBuckets" }]
            threshold = 3
            window = "1h"
            [[custom]]
            id = "month"
            filters = [{ field = "event_name", op = "equals", value = "GetCallerIdentity" }]
            threshold = 3
            window = "30d"
        "#,
        );
        let mut custom = Custom::new(&cfg);
        let mut offset = 0;
        for i in 0..(MAX_GROUPS as i64 + 5_000) {
            let mut a = activity(i, "ConsoleLogin", "203.0.113.5");
            a.user_agent = Some(format!("agent-{i}"));
            custom.observe(&a, offset);
            offset += 1;
        }
        assert!(
            custom.windows.len() <= MAX_GROUPS,
            "{}",
            custom.windows.len()
        );
        // Matches two hours apart never make a burst of an hour: at most twice the threshold
        // of them are kept.
        for i in 0..100 {
            custom.observe(&activity(i * 7_200, "ListBuckets", "203.0.113.5"), offset);
            offset += 1;
        }
        custom.observe(&activity(0, "GetCallerIdentity", "203.0.113.5"), offset);
        let spread = custom.windows.iter().find(|((p, _), _)| *p == 1);
        assert!(spread.is_some_and(|(_, w)| w.len() <= 6), "{spread:?}");
        // Two hours after the last, the hour-long policies' groups are gone; the month-long
        // one's stays.
        let watermark = chrono::DateTime::from_timestamp(1_700_000_000 + 99 * 7_200 + 7_200, 0);
        custom.expire(watermark.unwrap_or_default());
        let left: Vec<usize> = custom.windows.keys().map(|(p, _)| *p).collect();
        assert_eq!(left, [2]);
    }

    #[test]
    fn bad_policies_name_policy_and_field() {
        let cases = [
            (
                r#"[[custom]]
                id = "x"
                filters = [{ field = "evnt_name", op = "equals", value = "A" }]"#,
                "policies.custom[0] (x).filters[0].field",
            ),
            (
                r#"[[custom]]
                id = "x"
                filters = [{ field = "event_name", op = "like", value = "A" }]"#,
                "policies.custom[0] (x).filters[0].op",
            ),
            (
                r#"[[custom]]
                id = "x"
                filters = [{ field = "source_ip", op = "cidr", value = "10.0.0.0/33" }]"#,
                "policies.custom[0] (x).filters[0].value",
            ),
            (
                r#"[[custom]]
                id = "x"
                filters = [{ field = "user_agent", op = "regex", value = "(" }]"#,
                "policies.custom[0] (x).filters[0].value",
            ),
            (
                r#"[[custom]]
                id = "x"
                threshold = 5
                filters = [{ field = "event_name", op = "equals", value = "A" }]"#,
                "policies.custom[0] (x).window",
            ),
            (
                r#"[[custom]]
                id = "Bad Id"
                filters = [{ field = "event_name", op = "equals", value = "A" }]"#,
                "policies.custom[0].id",
            ),
            // Only the first of several patterns was ever compiled.
            (
                r#"[[custom]]
                id = "x"
                filters = [{ field = "user_agent", op = "regex", values = ["^curl", "^python"] }]"#,
                "policies.custom[0] (x).filters[0].value",
            ),
            // A built-in policy's id (or a Sigma rule's) would take on its remediation mode.
            (
                r#"[[custom]]
                id = "impossible-travel"
                filters = [{ field = "event_name", op = "equals", value = "A" }]"#,
                "policies.custom[0].id",
            ),
            (
                r#"[[custom]]
                id = "sigma-x"
                filters = [{ field = "event_name", op = "equals", value = "A" }]"#,
                "policies.custom[0].id",
            ),
            (
                r#"[[custom]]
                id = "x"
                threshold = 10001
                window = "1h"
                filters = [{ field = "event_name", op = "equals", value = "A" }]"#,
                "policies.custom[0] (x).threshold",
            ),
        ];
        for (text, key) in cases {
            let err = validate(&policy(text))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
