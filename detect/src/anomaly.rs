//! Anomaly detections over per-principal baselines. Pure: a principal's state and one
//! activity in, alerts out; the state is small, serializable, and carries the offset of the
//! last activity applied to it so a restored state is never applied twice (see
//! [`crate::state`]).
//!
//! What is learned per principal (event time only):
//! - when it was first seen: no baseline detection fires before `learning_period` (7 days);
//! - the countries it acts from (at most 8, least recently seen evicted);
//! - the places of its recent successful interactive activities (at most 4, within 24 h);
//! - four hourly rates — write/admin calls, S3 deletions, instances terminated, instances
//!   launched — as an exponentially weighted mean and variance over about a week of hours,
//!   compared with a sliding one-hour count.
//!
//! Detections that need no baseline — an anonymous or a known-malicious source address — fire
//! from the first activity. Each detection is suppressed per principal (and address or
//! country) for `suppression` after it fires, so one incident is one alert; a rate detection
//! stays quiet for the hour after it fires (its sliding window).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{
    ActionKind, Alert, AlertKind, Entity, Evidence, Mitre, RequestedAction, Severity,
};
use trailguard_common::Activity;

use crate::policies::{alert_for, PolicyMeta};

/// How readily the baseline detections fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Fewer, surer alerts.
    Low,
    /// The default.
    #[default]
    Medium,
    /// More alerts, earlier.
    High,
}

/// Settings of one detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// Evaluate it.
    pub enabled: bool,
    /// Severity of its alerts (default: the detection's).
    pub severity: Option<Severity>,
    /// Sensitivity (default: `anomaly.sensitivity`).
    pub sensitivity: Option<Sensitivity>,
    /// Principal ARNs, names or role ARNs it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request (default: notify the security team).
    pub actions: Option<Vec<ActionKind>>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            severity: None,
            sensitivity: None,
            allow_principals: Vec::new(),
            actions: None,
        }
    }
}

/// The `[policies.anomaly]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    /// Event time a principal must have been seen for before its baseline detections fire.
    #[serde(with = "humantime_serde")]
    pub learning_period: Duration,
    /// Default sensitivity of every detection.
    pub sensitivity: Sensitivity,
    /// How long a detection stays quiet for the same principal (and address or country)
    /// after it fired.
    #[serde(with = "humantime_serde")]
    pub suppression: Duration,
    /// A principal not seen for this long (event time) is forgotten.
    #[serde(with = "humantime_serde")]
    pub state_ttl: Duration,
    /// Activity from anonymous IP addresses (intel categories `tor`, `vpn`, `proxy`).
    pub anonymous_ip: DetectionConfig,
    /// Activity from suspicious IP addresses (intel category `malicious`).
    pub suspicious_ip: DetectionConfig,
    /// Activity from a country infrequent for the principal (and, unless sensitivity is high,
    /// for the organization).
    pub infrequent_country: DetectionConfig,
    /// Impossible travel between two successful interactive activities.
    pub impossible_travel: DetectionConfig,
    /// Unusual administrative activity.
    pub unusual_admin_activity: DetectionConfig,
    /// Unusual multiple storage deletion activities.
    pub storage_deletion: DetectionConfig,
    /// Multiple delete VM activities.
    pub vm_deletion: DetectionConfig,
    /// Unusual multiple VM creation activities.
    pub vm_creation: DetectionConfig,
    /// Activity performed by a terminated user (deleted user, removed console access,
    /// deactivated or deleted access key — learned from the trail — or listed below).
    pub terminated_user: DetectionConfig,
    /// Users terminated elsewhere (an identity provider's leavers): names or ARNs.
    pub terminated_users: Vec<String>,
    /// Unusual region for a cloud resource: something created in a region the organization
    /// has not changed anything in (after `learning_period` of organization history).
    pub unusual_region: DetectionConfig,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            learning_period: Duration::from_secs(7 * 86_400),
            sensitivity: Sensitivity::Medium,
            suppression: Duration::from_secs(24 * 3600),
            state_ttl: Duration::from_secs(35 * 86_400),
            anonymous_ip: DetectionConfig::default(),
            suspicious_ip: DetectionConfig::default(),
            infrequent_country: DetectionConfig::default(),
            impossible_travel: DetectionConfig::default(),
            unusual_admin_activity: DetectionConfig::default(),
            storage_deletion: DetectionConfig::default(),
            vm_deletion: DetectionConfig::default(),
            vm_creation: DetectionConfig::default(),
            terminated_user: DetectionConfig::default(),
            terminated_users: Vec::new(),
            unusual_region: DetectionConfig::default(),
        }
    }
}

impl AnomalyConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        if self.learning_period > Duration::from_secs(90 * 86_400) {
            return Err(trailguard_common::Error::config(
                "policies.anomaly.learning_period",
                "must be at most 90 days",
            ));
        }
        if self.state_ttl < Duration::from_secs(86_400) {
            return Err(trailguard_common::Error::config(
                "policies.anomaly.state_ttl",
                "must be at least 1 day",
            ));
        }
        Ok(())
    }
}

macro_rules! meta {
    ($name:ident, $id:literal, $title:literal) => {
        /// Policy metadata.
        pub const $name: PolicyMeta = PolicyMeta {
            id: $id,
            name: $title,
            kind: AlertKind::Anomaly,
        };
    };
}
meta!(
    ANONYMOUS_IP,
    "anonymous-ip",
    "Activity from anonymous IP addresses"
);
meta!(
    SUSPICIOUS_IP,
    "suspicious-ip",
    "Activity from suspicious IP addresses"
);
meta!(
    INFREQUENT_COUNTRY,
    "infrequent-country",
    "Activity from infrequent country"
);
meta!(IMPOSSIBLE_TRAVEL, "impossible-travel", "Impossible travel");
meta!(
    UNUSUAL_ADMIN,
    "unusual-admin-activity",
    "Unusual administrative activity"
);
meta!(
    STORAGE_DELETION,
    "storage-deletion",
    "Unusual multiple storage deletion activities"
);
meta!(VM_DELETION, "vm-deletion", "Multiple delete VM activities");
meta!(
    VM_CREATION,
    "vm-creation",
    "Unusual multiple VM creation activities"
);

/// One of the four rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RateKind {
    Admin = 0,
    Deletion = 1,
    VmDeletion = 2,
    VmCreation = 3,
}

/// An hourly rate: EWMA of completed hours, and the sliding hour's per-minute counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Hour (unix hours) being counted for the baseline.
    #[serde(rename = "h")]
    hour: i64,
    /// Count in that hour.
    #[serde(rename = "n")]
    hour_count: u32,
    /// Mean per hour.
    #[serde(rename = "m")]
    mean: f32,
    /// Variance per hour.
    #[serde(rename = "v")]
    var: f32,
    /// Per-minute counts of the last hour: (unix minute, count).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<(i64, u32)>,
    /// Ids of the last few activities counted (evidence), while a burst may be building.
    #[serde(rename = "e", default, skip_serializing_if = "Vec::is_empty")]
    evidence: Vec<String>,
    /// Quiet until this unix second after firing.
    #[serde(rename = "q", default)]
    quiet_until: i64,
}

/// EWMA weight of one completed hour: about a week of hours.
const ALPHA: f32 = 1.0 / 168.0;

impl Rate {
    /// Adds `n` at unix second `t`; returns the sliding hour's count.
    fn add(&mut self, t: i64, n: u32, id: &str) -> u32 {
        let hour = t.div_euclid(3600);
        if self.hour == 0 {
            self.hour = hour;
        }
        if hour > self.hour {
            // Close the counted hour, then the silent hours in between.
            let c = self.hour_count as f32;
            let d = c - self.mean;
            self.mean += ALPHA * d;
            self.var = (1.0 - ALPHA) * (self.var + ALPHA * d * d);
            let gap = (hour - self.hour - 1).min(10_000) as i32;
            if gap > 0 {
                let keep = (1.0 - ALPHA).powi(gap);
                // Zero hours pull the mean down and spread the variance.
                let m = self.mean;
                self.mean *= keep;
                self.var = keep * self.var + keep * (1.0 - keep) * m * m;
            }
            self.hour = hour;
            self.hour_count = 0;
        }
        if hour == self.hour {
            self.hour_count = self.hour_count.saturating_add(n);
        }
        let minute = t.div_euclid(60);
        match self.recent.iter_mut().find(|(m, _)| *m == minute) {
            Some((_, c)) => *c = c.saturating_add(n),
            None => self.recent.push((minute, n)),
        }
        let newest = self.recent.iter().map(|(m, _)| *m).max().unwrap_or(minute);
        self.recent.retain(|(m, _)| *m > newest - 60);
        self.evidence.push(id.to_string());
        if self.evidence.len() > 5 {
            self.evidence.remove(0);
        }
        self.recent
            .iter()
            .filter(|(m, _)| *m > minute - 60 && *m <= minute)
            .map(|(_, c)| *c)
            .sum()
    }

    /// The count a sliding hour must reach: far above this principal's usual hours, and at
    /// least the sensitivity's floor.
    fn threshold(&self, floor: u32, sigmas: f32, factor: f32) -> u32 {
        let spread = self.mean + sigmas * self.var.max(0.0).sqrt();
        let scaled = factor * self.mean.max(1.0);
        (spread.max(scaled).ceil() as u32).max(floor)
    }

    /// Drops what only a building burst needs, once it is an hour old.
    fn settle(&mut self, now: i64) {
        let minute = now.div_euclid(60);
        self.recent.retain(|(m, _)| *m > minute - 60);
        if self.recent.is_empty() {
            self.evidence.clear();
        }
    }
}

/// Where a principal recently acted from, interactively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Place {
    /// Unix second.
    t: i64,
    lat: f32,
    lon: f32,
    /// Accuracy radius, km.
    acc: u16,
    /// The address (persisted as text, as it always was).
    ip: std::net::IpAddr,
    /// "City, CC" or "CC".
    label: String,
    /// The activity.
    id: String,
}

/// Everything learned about one principal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrincipalState {
    /// Offset of the last activity applied (activities at or before it are not applied again).
    #[serde(rename = "o")]
    pub offset: i64,
    /// First and last event time seen (unix seconds).
    #[serde(rename = "f")]
    pub first_seen: i64,
    #[serde(rename = "l")]
    /// Last event time seen.
    pub last_seen: i64,
    /// Countries acted from: (ISO code, last seen).
    #[serde(rename = "c", default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<(String, i64)>,
    /// Recent interactive places.
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    places: Vec<Place>,
    /// The four rates.
    #[serde(rename = "r", default)]
    rates: [Rate; 4],
    /// Id of the latest activity (evidence for a termination learned after it).
    #[serde(rename = "i", default, skip_serializing_if = "String::is_empty")]
    pub last_id: String,
    /// Access key of the latest activity, when it had one.
    #[serde(rename = "k", default, skip_serializing_if = "String::is_empty")]
    pub last_key: String,
    /// Suppressions: (detection and key, quiet until).
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    quiet: Vec<(String, i64)>,
    /// Alerts of the event-driven policies whose repeats are being folded in.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub folds: Vec<crate::fold::Fold>,
}

impl PrincipalState {
    /// Approximate bytes held (for the memory benchmark and the state gauge).
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .countries
                .iter()
                .map(|(c, _)| 24 + 8 + c.capacity())
                .sum::<usize>()
            + self
                .places
                .iter()
                .map(|p| std::mem::size_of::<Place>() + p.label.capacity() + p.id.capacity())
                .sum::<usize>()
            + self
                .rates
                .iter()
                .map(|r| {
                    r.recent.capacity() * 16
                        + r.evidence.iter().map(|e| 24 + e.capacity()).sum::<usize>()
                })
                .sum::<usize>()
            + self
                .quiet
                .iter()
                .map(|(k, _)| 32 + k.capacity())
                .sum::<usize>()
            + self
                .folds
                .iter()
                .map(crate::fold::Fold::heap_size)
                .sum::<usize>()
    }
}

/// Organization-wide (per partition: principals are spread evenly over partitions) counts
/// of how many principals act from each country.
#[derive(Debug, Default, Clone)]
pub struct Org {
    countries: HashMap<String, u32>,
    principals: u32,
}

impl Org {
    /// Rebuilds the counts from restored principals.
    pub fn rebuild<'a>(states: impl Iterator<Item = &'a PrincipalState>) -> Org {
        let mut org = Org::default();
        for s in states {
            org.principals += 1;
            for (c, _) in &s.countries {
                *org.countries.entry(c.clone()).or_default() += 1;
            }
        }
        org
    }
}

/// Floors and spreads per sensitivity.
fn rate_params(kind: RateKind, s: Sensitivity) -> (u32, f32, f32) {
    let floor = match (kind, s) {
        (RateKind::Admin, Sensitivity::Low) => 100,
        (RateKind::Admin, Sensitivity::Medium) => 50,
        (RateKind::Admin, Sensitivity::High) => 25,
        (RateKind::Deletion, Sensitivity::Low) => 200,
        (RateKind::Deletion, Sensitivity::Medium) => 50,
        (RateKind::Deletion, Sensitivity::High) => 20,
        (RateKind::VmDeletion | RateKind::VmCreation, Sensitivity::Low) => 20,
        (RateKind::VmDeletion | RateKind::VmCreation, Sensitivity::Medium) => 10,
        (RateKind::VmDeletion | RateKind::VmCreation, Sensitivity::High) => 5,
    };
    let (sigmas, factor) = match s {
        Sensitivity::Low => (8.0, 5.0),
        Sensitivity::Medium => (5.0, 3.0),
        Sensitivity::High => (3.0, 2.0),
    };
    (floor, sigmas, factor)
}

/// Fastest plausible travel, km/h, and the least distance that counts, km.
fn travel_params(s: Sensitivity) -> (f64, f64) {
    match s {
        Sensitivity::Low => (1200.0, 800.0),
        Sensitivity::Medium => (1000.0, 500.0),
        Sensitivity::High => (800.0, 300.0),
    }
}

/// Calls that change something, by their name (CloudTrail's `readOnly` is missing in some
/// exports).
pub(crate) fn is_write(a: &Activity) -> bool {
    if let Some(ro) = a.read_only {
        return !ro;
    }
    const PREFIXES: &[&str] = &[
        "Create",
        "Delete",
        "Put",
        "Update",
        "Attach",
        "Detach",
        "Modify",
        "Authorize",
        "Revoke",
        "Set",
        "Add",
        "Remove",
        "Disable",
        "Enable",
        "Stop",
        "Terminate",
        "Run",
        "Reset",
        "Associate",
        "Disassociate",
        "Replace",
        "Tag",
        "Untag",
        "Deregister",
        "Register",
    ];
    PREFIXES.iter().any(|p| a.event_name.starts_with(p))
}

/// Data-plane calls that are not administration even when they write.
pub(crate) fn is_data_event(a: &Activity) -> bool {
    matches!(
        (a.event_source.as_str(), a.event_name.as_str()),
        (
            "s3.amazonaws.com",
            "PutObject"
                | "DeleteObject"
                | "DeleteObjects"
                | "CopyObject"
                | "CreateMultipartUpload"
                | "UploadPart"
                | "CompleteMultipartUpload"
                | "AbortMultipartUpload"
                | "PutObjectAcl"
                | "PutObjectTagging"
                | "RestoreObject"
        ) | ("lambda.amazonaws.com", "Invoke")
            | ("kms.amazonaws.com", _)
            | ("sts.amazonaws.com", _)
            | ("signin.amazonaws.com", _)
            | (
                "dynamodb.amazonaws.com",
                "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem"
            )
            | (
                "sqs.amazonaws.com",
                "SendMessage" | "DeleteMessage" | "DeleteMessageBatch" | "SendMessageBatch"
            )
            | ("logs.amazonaws.com", "PutLogEvents" | "CreateLogStream")
    )
}

/// Human and machine identities that act on their own (not a service on someone's behalf).
fn acts_itself(a: &Activity) -> bool {
    a.principal.invoked_by.is_none()
        && !matches!(a.principal.kind.as_str(), "AWSService" | "Trailguard")
}

/// A human at a keyboard: a console sign-in, the console, or a command line with an address.
fn is_interactive(a: &Activity) -> bool {
    if !acts_itself(a) || a.source_ip.is_none() || !a.outcome.is_success() {
        return false;
    }
    if a.event_type.as_deref() == Some("AwsConsoleSignIn") {
        return true;
    }
    let agent = a.user_agent.as_deref().unwrap_or("").to_ascii_lowercase();
    [
        "mozilla",
        "console.amazonaws.com",
        "signin.amazonaws.com",
        "aws-cli/",
        "aws-internal/3",
    ]
    .iter()
    .any(|m| agent.contains(m))
}

fn count_items(v: Option<&Value>, path: &[&str]) -> Option<u32> {
    let mut cur = v?;
    for p in path {
        cur = cur.get(*p)?;
    }
    match cur {
        Value::Array(a) => Some(a.len() as u32),
        Value::Object(_) => Some(1),
        _ => None,
    }
}

/// Units an activity adds to each rate.
fn rate_units(a: &Activity) -> [u32; 4] {
    let mut units = [0u32; 4];
    if !acts_itself(a) {
        return units;
    }
    if is_write(a) && !is_data_event(a) && a.event_type.as_deref() != Some("AwsConsoleSignIn") {
        units[RateKind::Admin as usize] = 1;
    }
    let ok = a.outcome.is_success();
    let params = a.request_parameters.as_ref();
    match (a.event_source.as_str(), a.event_name.as_str()) {
        ("s3.amazonaws.com", "DeleteBucket" | "DeleteObject") if ok => {
            units[RateKind::Deletion as usize] = 1;
        }
        ("s3.amazonaws.com", "DeleteObjects") if ok => {
            units[RateKind::Deletion as usize] = count_items(params, &["Delete", "Object"])
                .or_else(|| count_items(params, &["delete", "Object"]))
                .unwrap_or(1)
                .max(1);
        }
        ("ec2.amazonaws.com", "TerminateInstances") if ok => {
            units[RateKind::VmDeletion as usize] = count_items(params, &["instancesSet", "items"])
                .unwrap_or(1)
                .max(1);
        }
        ("ec2.amazonaws.com", "RunInstances") if ok => {
            units[RateKind::VmCreation as usize] =
                count_items(a.response_elements.as_ref(), &["instancesSet", "items"])
                    .or_else(|| {
                        params
                            .and_then(|p| p.get("instancesSet"))
                            .and_then(|s| s.get("items"))
                            .and_then(|i| i.get(0))
                            .and_then(|i| i.get("minCount"))
                            .and_then(Value::as_u64)
                            .map(|n| n as u32)
                    })
                    .unwrap_or(1)
                    .max(1);
        }
        _ => {}
    }
    units
}

/// "principal from address", formatted only when an alert is written.
struct Who<'a>(&'a Activity);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::policies::who(self.0))
    }
}

/// Great-circle distance, km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

/// The anomaly detections with their settings.
pub struct Anomalies {
    cfg: AnomalyConfig,
    geo_enabled: bool,
}

impl Anomalies {
    /// The detections; without geolocation, the geo-based ones are off.
    pub fn new(cfg: AnomalyConfig, geo_enabled: bool) -> Self {
        Anomalies { cfg, geo_enabled }
    }

    fn sens(&self, d: &DetectionConfig) -> Sensitivity {
        d.sensitivity.unwrap_or(self.cfg.sensitivity)
    }

    fn on(&self, d: &DetectionConfig, a: &Activity) -> bool {
        d.enabled && !crate::policies::allowed(&d.allow_principals, a)
    }

    /// Quiet check-and-set: true when `key` may fire at `t`.
    pub(crate) fn may_fire(&self, st: &mut PrincipalState, key: String, t: i64) -> bool {
        st.quiet.retain(|(_, until)| *until > t);
        if st.quiet.iter().any(|(k, _)| *k == key) {
            return false;
        }
        if st.quiet.len() >= 16 {
            st.quiet.remove(0);
        }
        st.quiet
            .push((key, t + self.cfg.suppression.as_secs() as i64));
        true
    }

    /// Applies `a` to its principal's state and returns the alerts it raises.
    pub fn observe(&self, st: &mut PrincipalState, org: &mut Org, a: &Activity) -> Vec<Alert> {
        let t = a.event_time.timestamp();
        let mut out = Vec::new();
        let new_principal = st.first_seen == 0 && st.last_seen == 0;
        if new_principal {
            st.first_seen = t;
            org.principals += 1;
        }
        st.first_seen = st.first_seen.min(t);
        if t >= st.last_seen {
            st.last_id.clear();
            st.last_id.push_str(&a.id);
            st.last_key.clear();
            st.last_key
                .push_str(a.principal.access_key_id.as_deref().unwrap_or(""));
        }
        st.last_seen = st.last_seen.max(t);
        let learned = t - st.first_seen >= self.cfg.learning_period.as_secs() as i64;
        let who = Who(a);
        let categories = &a.enrichment.ip_categories;
        let corporate = categories.iter().any(|c| c == "corporate");
        // Anonymous and suspicious addresses (listed, so categorized): no baseline needed.
        if let Some(addr) = a
            .source_ip
            .filter(|_| acts_itself(a) && !corporate && !categories.is_empty())
        {
            let ip = addr.to_string();
            let anon: Vec<&str> = categories
                .iter()
                .map(String::as_str)
                .filter(|c| matches!(*c, "tor" | "vpn" | "proxy"))
                .collect();
            let d = &self.cfg.anonymous_ip;
            if !anon.is_empty() && self.on(d, a) && self.may_fire(st, format!("anon|{ip}"), t) {
                let summary = format!(
                    "{who} acted through an anonymizing service ({}): {}",
                    anon.join(", "),
                    a.event_name
                );
                out.push(self.alert(
                    a,
                    &ANONYMOUS_IP,
                    d,
                    Severity::Medium,
                    summary,
                    vec![a.id.clone()],
                    ("Defense Evasion", "T1090.003", "Proxy: Multi-hop Proxy"),
                ));
            }
            let d = &self.cfg.suspicious_ip;
            if categories.iter().any(|c| c == "malicious")
                && self.on(d, a)
                && self.may_fire(st, format!("bad|{ip}"), t)
            {
                let summary = format!(
                    "{who} acted from an address on a threat-intelligence list: {}",
                    a.event_name
                );
                out.push(self.alert(
                    a,
                    &SUSPICIOUS_IP,
                    d,
                    Severity::High,
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

        // Countries.
        let geo = a
            .enrichment
            .geo
            .as_ref()
            .filter(|_| self.geo_enabled && acts_itself(a));
        if let Some(country) = geo.and_then(|g| g.country.clone()).filter(|_| !corporate) {
            let known = st.countries.iter().any(|(c, _)| *c == country);
            let d = &self.cfg.infrequent_country;
            if !known && learned && !st.countries.is_empty() && self.on(d, a) {
                let org_count = org.countries.get(&country).copied().unwrap_or(0);
                let org_rare = org_count < 2.max(org.principals / 100);
                let fire = match self.sens(d) {
                    Sensitivity::High => true,
                    Sensitivity::Medium => org_rare,
                    Sensitivity::Low => org_count == 0,
                };
                if fire && self.may_fire(st, format!("country|{country}"), t) {
                    let usual: Vec<&str> = st.countries.iter().map(|(c, _)| c.as_str()).collect();
                    let summary = format!(
                        "{who} acted from {country}, a country it has not used before (usually {}){}: {}",
                        usual.join(", "),
                        if org_rare { "; rare for the organization too" } else { "" },
                        a.event_name
                    );
                    out.push(self.alert(
                        a,
                        &INFREQUENT_COUNTRY,
                        d,
                        Severity::Medium,
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
            match st.countries.iter_mut().find(|(c, _)| *c == country) {
                Some(entry) => entry.1 = entry.1.max(t),
                None => {
                    *org.countries.entry(country.clone()).or_default() += 1;
                    if st.countries.len() >= 8 {
                        if let Some(oldest) = st
                            .countries
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, seen))| *seen)
                            .map(|(i, _)| i)
                        {
                            st.countries.remove(oldest);
                        }
                    }
                    st.countries.push((country, t));
                }
            }
        }

        // Impossible travel.
        if let (Some((geo, (lat, lon))), Some(ip)) = (
            geo.filter(|_| is_interactive(a) && !corporate)
                .and_then(|g| g.latitude.zip(g.longitude).map(|p| (g, p))),
            a.source_ip,
        ) {
            let d = &self.cfg.impossible_travel;
            let (speed_max, min_km) = travel_params(self.sens(d));
            let acc = geo.accuracy_radius_km.unwrap_or(100).min(1000) as f64;
            // Text only when an alert or a new place needs it.
            let label = || match (&geo.city, &geo.country) {
                (Some(city), Some(cc)) => format!("{city}, {cc}"),
                (None, Some(cc)) => cc.clone(),
                _ => format!("{lat:.1},{lon:.1}"),
            };
            st.places.retain(|p| (p.t - t).abs() <= 86_400);
            if learned && self.on(d, a) {
                let worst = st
                    .places
                    .iter()
                    .filter(|p| p.ip != ip)
                    .filter_map(|p| {
                        let km = haversine_km(p.lat as f64, p.lon as f64, lat, lon);
                        let effective = km - acc - p.acc as f64;
                        let hours = ((p.t - t).abs() as f64 / 3600.0).max(1.0 / 60.0);
                        let speed = effective / hours;
                        (km >= min_km && speed > speed_max).then_some((speed, km, p))
                    })
                    .max_by(|x, y| x.0.total_cmp(&y.0));
                if let Some((speed, km, p)) = worst {
                    let (first, second) = if p.t <= t {
                        (
                            (p.label.clone(), p.ip.to_string(), p.id.clone()),
                            (label(), ip.to_string(), a.id.clone()),
                        )
                    } else {
                        (
                            (label(), ip.to_string(), a.id.clone()),
                            (p.label.clone(), p.ip.to_string(), p.id.clone()),
                        )
                    };
                    let minutes = (p.t - t).abs() / 60;
                    if self.may_fire(st, format!("travel|{}|{}", first.1, second.1), t) {
                        let summary = format!(
                            "{who}: successful activity from {} ({}) and {} min later from {} ({}): {:.0} km, {:.0} km/h",
                            first.0, first.1, minutes, second.0, second.1, km, speed
                        );
                        out.push(self.alert(
                            a,
                            &IMPOSSIBLE_TRAVEL,
                            d,
                            Severity::High,
                            summary,
                            vec![first.2, second.2],
                            (
                                "Initial Access",
                                "T1078.004",
                                "Valid Accounts: Cloud Accounts",
                            ),
                        ));
                    }
                }
            }
            if !st
                .places
                .iter()
                .any(|p| p.ip == ip && (p.t - t).abs() < 3600)
            {
                if st.places.len() >= 4 {
                    st.places.remove(0);
                }
                st.places.push(Place {
                    t,
                    lat: lat as f32,
                    lon: lon as f32,
                    acc: acc as u16,
                    ip,
                    label: label(),
                    id: a.id.clone(),
                });
                st.places.sort_by_key(|p| p.t);
            }
        }

        // The four rates.
        let units = rate_units(a);
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
            let n = units[kind as usize];
            let rate = &mut st.rates[kind as usize];
            if n == 0 {
                rate.settle(t);
                continue;
            }
            let (floor, sigmas, factor) = rate_params(kind, self.sens(d));
            let threshold = rate.threshold(floor, sigmas, factor);
            let usual = rate.mean;
            let count = rate.add(t, n, &a.id);
            if count >= threshold && learned && t >= rate.quiet_until && self.on(d, a) {
                rate.quiet_until = t + 3600;
                let evidence = rate.evidence.clone();
                let summary = format!(
                    "{who}: {count} {what} within an hour (usually {usual:.1} an hour; threshold {threshold})"
                );
                let hour = t.div_euclid(3600).to_string();
                let mut alert = self.alert(a, meta, d, Severity::Medium, summary, evidence, mitre);
                alert.id =
                    trailguard_common::contract::stable_id([meta.id, &a.principal.key(), &hour]);
                out.push(alert);
            }
        }
        out
    }

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
        Some(Alert {
            schema_version: trailguard_common::contract::ALERT_SCHEMA_VERSION,
            id: trailguard_common::contract::stable_id([
                crate::facts::TERMINATED_USER.id,
                st.last_id.as_str(),
            ]),
            policy_id: crate::facts::TERMINATED_USER.id.into(),
            policy_name: crate::facts::TERMINATED_USER.name.into(),
            kind: AlertKind::Anomaly,
            severity: d.severity.unwrap_or(Severity::High),
            time,
            entity: Entity {
                kind: "principal".into(),
                id: principal_key.into(),
            },
            principal: Some(trailguard_common::contract::Principal {
                kind: "IAMUser".into(),
                arn: Some(principal_key.into()),
                name: Some(name.into()),
                account_id: Some(account.into()),
                principal_id: None,
                access_key_id: None,
                session_issuer_arn: None,
                mfa_authenticated: None,
                invoked_by: None,
                is_root: false,
            }),
            account_id: Some(account.into()),
            region: None,
            evidence: Evidence {
                activity_ids: vec![st.last_id.clone()],
                summary,
            },
            mitre: vec![Mitre {
                tactic: "Persistence".into(),
                technique_id: "T1078.004".into(),
                technique: "Valid Accounts: Cloud Accounts".into(),
            }],
            actions: d
                .actions
                .clone()
                .unwrap_or_else(|| vec![ActionKind::Notify])
                .into_iter()
                .map(|kind| RequestedAction {
                    kind,
                    target: match kind {
                        ActionKind::Notify => trailguard_common::contract::Target {
                            kind: "security-team".into(),
                            id: "default".into(),
                            account_id: None,
                            grantee: None,
                        },
                        _ => trailguard_common::contract::Target {
                            kind: "principal".into(),
                            id: principal_key.into(),
                            account_id: Some(account.into()),
                            grantee: None,
                        },
                    },
                })
                .collect(),
            occurrences: 1,
            last_time: None,
            signature: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        a: &Activity,
        meta: &PolicyMeta,
        d: &DetectionConfig,
        severity: Severity,
        summary: String,
        ids: Vec<String>,
        mitre: (&str, &str, &str),
    ) -> Alert {
        let parts: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut alert = alert_for(
            a,
            meta,
            d.severity.unwrap_or(severity),
            Entity {
                kind: "principal".into(),
                id: a.principal.key(),
            },
            Evidence {
                activity_ids: ids.clone(),
                summary,
            },
            &parts,
        );
        alert.mitre = vec![Mitre {
            tactic: mitre.0.into(),
            technique_id: mitre.1.into(),
            technique: mitre.2.into(),
        }];
        alert.actions = d
            .actions
            .clone()
            .unwrap_or_else(|| vec![ActionKind::Notify])
            .into_iter()
            .map(|kind| RequestedAction {
                kind,
                target: crate::templates::action_target(kind, a),
            })
            .collect();
        alert
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use serde_json::json;
    use trailguard_common::contract::{Enrichment, Geo};

    const DAY: i64 = 86_400;

    fn activity(t: i64, name: &str, ip: &str) -> Activity {
        let time = DateTime::<Utc>::from_timestamp(1_700_000_000 + t, 0).unwrap_or_default();
        let record = json!({
            "eventTime": time.to_rfc3339(), "eventSource": "ec2.amazonaws.com", "eventName": name,
            "awsRegion": "us-east-1", "recipientAccountId": "111111111111", "sourceIPAddress": ip,
            "userAgent": "aws-cli/2.15.0", "eventID": format!("00000000-0000-4000-8000-{:012}", t.unsigned_abs()),
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/alice", "userName": "alice"},
            "requestParameters": {"instancesSet": {"items": [{"instanceId": "i-1"}, {"instanceId": "i-2"}]}},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn at(mut a: Activity, country: &str, lat: f64, lon: f64) -> Activity {
        a.enrichment = Enrichment {
            geo: Some(Geo {
                country: Some(country.into()),
                city: None,
                latitude: Some(lat),
                longitude: Some(lon),
                accuracy_radius_km: Some(20),
            }),
            ip_categories: Vec::new(),
        };
        a
    }

    fn run(acts: &[Activity]) -> Vec<Alert> {
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let (mut st, mut org) = (PrincipalState::default(), Org::default());
        acts.iter()
            .flat_map(|a| an.observe(&mut st, &mut org, a))
            .collect()
    }

    fn ids(alerts: &[Alert], policy: &str) -> Vec<String> {
        alerts
            .iter()
            .filter(|a| a.policy_id == policy)
            .map(|a| a.id.clone())
            .collect()
    }

    #[test]
    fn impossible_travel_after_learning_only() {
        // A week of New York, then Frankfurt 30 minutes after New York.
        let mut acts: Vec<Activity> = (0..9)
            .map(|d| {
                at(
                    activity(d * DAY, "DescribeInstances", "198.51.100.1"),
                    "US",
                    40.7,
                    -74.0,
                )
            })
            .collect();
        acts.push(at(
            activity(8 * DAY + 1800, "DescribeInstances", "203.0.113.7"),
            "DE",
            50.1,
            8.7,
        ));
        let alerts = run(&acts);
        assert_eq!(ids(&alerts, "impossible-travel").len(), 1, "{alerts:#?}");
        let travel = alerts.iter().find(|a| a.policy_id == "impossible-travel");
        assert_eq!(travel.map(|a| a.evidence.activity_ids.len()), Some(2));
        // The same jump on day 2: still learning.
        let early = [
            at(
                activity(0, "DescribeInstances", "198.51.100.1"),
                "US",
                40.7,
                -74.0,
            ),
            at(
                activity(DAY + 1800, "DescribeInstances", "203.0.113.7"),
                "DE",
                50.1,
                8.7,
            ),
        ];
        assert!(ids(&run(&early), "impossible-travel").is_empty());
        // Plausible: Frankfurt 12 hours later.
        let mut slow = acts.clone();
        slow.pop();
        slow.push(at(
            activity(8 * DAY + 12 * 3600, "DescribeInstances", "203.0.113.7"),
            "DE",
            50.1,
            8.7,
        ));
        assert!(ids(&run(&slow), "impossible-travel").is_empty());
    }

    #[test]
    fn impossible_travel_is_order_independent() {
        let mut acts: Vec<Activity> = (0..8)
            .map(|d| {
                at(
                    activity(d * DAY, "DescribeInstances", "198.51.100.1"),
                    "US",
                    40.7,
                    -74.0,
                )
            })
            .collect();
        acts.push(at(
            activity(8 * DAY + 1800, "DescribeInstances", "203.0.113.7"),
            "DE",
            50.1,
            8.7,
        ));
        acts.push(at(
            activity(8 * DAY + 600, "DescribeInstances", "198.51.100.1"),
            "US",
            40.7,
            -74.0,
        ));
        let ordered = {
            let mut s = acts.clone();
            s.sort_by_key(|a| a.event_time);
            ids(&run(&s), "impossible-travel")
        };
        assert_eq!(ids(&run(&acts), "impossible-travel"), ordered);
        assert_eq!(ordered.len(), 1);
    }

    #[test]
    fn failed_and_corporate_are_ignored() {
        let mut acts: Vec<Activity> = (0..8)
            .map(|d| {
                at(
                    activity(d * DAY, "DescribeInstances", "198.51.100.1"),
                    "US",
                    40.7,
                    -74.0,
                )
            })
            .collect();
        let mut vpn = at(
            activity(8 * DAY + 1800, "DescribeInstances", "203.0.113.7"),
            "DE",
            50.1,
            8.7,
        );
        vpn.enrichment.ip_categories = vec!["corporate".into()];
        acts.push(vpn);
        assert!(ids(&run(&acts), "impossible-travel").is_empty());
    }

    #[test]
    fn infrequent_country() {
        let mut acts: Vec<Activity> = (0..8)
            .map(|d| {
                at(
                    activity(d * DAY, "DescribeInstances", "198.51.100.1"),
                    "US",
                    40.7,
                    -74.0,
                )
            })
            .collect();
        acts.push(at(
            activity(9 * DAY, "DescribeInstances", "203.0.113.9"),
            "KP",
            39.0,
            125.7,
        ));
        acts.push(at(
            activity(9 * DAY + 60, "DescribeInstances", "203.0.113.9"),
            "KP",
            39.0,
            125.7,
        ));
        let alerts = run(&acts);
        assert_eq!(ids(&alerts, "infrequent-country").len(), 1, "{alerts:#?}");
    }

    #[test]
    fn anonymous_and_malicious_addresses_fire_at_once() {
        let mut a = activity(0, "DescribeInstances", "185.220.101.1");
        a.enrichment.ip_categories = vec!["tor".into()];
        let mut b = activity(60, "DescribeInstances", "185.220.101.1");
        b.enrichment.ip_categories = vec!["tor".into()];
        let alerts = run(&[a, b]);
        assert_eq!(
            ids(&alerts, "anonymous-ip").len(),
            1,
            "suppressed after the first"
        );
        let mut m = activity(0, "DescribeInstances", "203.0.113.66");
        m.enrichment.ip_categories = vec!["malicious".into()];
        assert_eq!(ids(&run(&[m]), "suspicious-ip").len(), 1);
    }

    #[test]
    fn vm_deletion_burst_counts_instances() {
        // Quiet week of occasional terminations, then 6 calls of 2 instances in 10 minutes.
        let mut acts: Vec<Activity> = (0..8)
            .map(|d| activity(d * DAY, "TerminateInstances", "198.51.100.1"))
            .collect();
        for i in 0..6 {
            acts.push(activity(
                8 * DAY + i * 100,
                "TerminateInstances",
                "198.51.100.1",
            ));
        }
        let alerts = run(&acts);
        assert_eq!(ids(&alerts, "vm-deletion").len(), 1, "{alerts:#?}");
        let alert = alerts.iter().find(|a| a.policy_id == "vm-deletion");
        assert!(
            alert.is_some_and(|a| a.evidence.summary.contains("10 instances terminated")),
            "{alert:?}"
        );
        // Five calls (10 instances) spread over a day: no alert.
        let mut spread: Vec<Activity> = (0..8)
            .map(|d| activity(d * DAY, "TerminateInstances", "198.51.100.1"))
            .collect();
        for i in 0..5 {
            spread.push(activity(
                8 * DAY + i * 7200,
                "TerminateInstances",
                "198.51.100.1",
            ));
        }
        assert!(ids(&run(&spread), "vm-deletion").is_empty());
    }

    #[test]
    fn rates_learn_the_usual() {
        let mut r = Rate::default();
        // 20 an hour for two weeks.
        for h in 0..336i64 {
            for i in 0..20 {
                r.add(h * 3600 + i * 60, 1, "x");
            }
        }
        assert!((r.mean - 20.0).abs() < 3.0, "mean {}", r.mean);
        let t = r.threshold(50, 5.0, 3.0);
        assert!(
            (50..=60).contains(&t),
            "three times the usual hour, above the floor: {t}"
        );
    }

    #[test]
    fn state_is_small_and_round_trips() -> anyhow::Result<()> {
        let mut acts: Vec<Activity> = (0..8)
            .map(|d| {
                at(
                    activity(d * DAY, "TerminateInstances", "198.51.100.1"),
                    "US",
                    40.7,
                    -74.0,
                )
            })
            .collect();
        acts.push(at(
            activity(8 * DAY, "RunInstances", "198.51.100.1"),
            "US",
            40.7,
            -74.0,
        ));
        let an = Anomalies::new(AnomalyConfig::default(), true);
        let (mut st, mut org) = (PrincipalState::default(), Org::default());
        for a in &acts {
            an.observe(&mut st, &mut org, a);
        }
        let text = serde_json::to_string(&st)?;
        let back: PrincipalState = serde_json::from_str(&text)?;
        assert_eq!(back, st);
        assert!(st.heap_size() < 2048, "{} bytes", st.heap_size());
        Ok(())
    }
}
