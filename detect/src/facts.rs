//! Organization-wide facts that one partition learns and every partition needs: which users
//! and access keys were terminated, and which regions the organization uses.
//!
//! Activities are partitioned by principal, but the administrator who deletes a user, and the
//! user who later tries the deleted credentials, are different principals on different
//! partitions. So the instance that sees a termination (or a region's first use) publishes it as
//! a fact on a compacted topic that every detect instance reads whole (a global table), and
//! applies it locally at once. A fact learned on one partition is seen by the others as soon
//! as the topic delivers it — in practice well before the deleted credentials are tried.

use std::collections::HashMap;
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

/// The facts known to this instance.
#[derive(Debug, Default)]
pub struct Facts {
    /// `user:ACCOUNT/NAME` / `key:ACCESSKEYID` / `region:REGION` → fact (the earliest).
    map: HashMap<String, Fact>,
    /// Earliest region fact: when the organization's history starts.
    first_use: Option<i64>,
    /// Terminations in the order learned, so every partition can look back at activity it
    /// saw before the fact reached it.
    terminations: Vec<(String, Fact)>,
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
        if key.starts_with("region:") {
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
                    self.terminations.push((key.to_string(), fact.clone()));
                }
                self.map.insert(key.to_string(), fact);
                true
            }
        }
    }

    /// Whether [`Self::learn`] would change nothing for `fact`: an earlier (or equal) one is
    /// known and not undone. Lets a caller holding only a read lock skip the write lock.
    pub fn already_knows(&self, key: &str, fact: &Fact) -> bool {
        !fact.cleared
            && self
                .map
                .get(key)
                .is_some_and(|known| !known.cleared && known.time <= fact.time)
    }

    /// The fact under `key`, unless it was undone.
    pub fn get(&self, key: &str) -> Option<&Fact> {
        self.map.get(key).filter(|f| !f.cleared)
    }

    /// Terminations learned after the first `seen`.
    pub fn terminations_since(&self, seen: usize) -> &[(String, Fact)] {
        self.terminations.get(seen..).unwrap_or_default()
    }

    /// How many terminations are known.
    pub fn terminations(&self) -> usize {
        self.terminations.len()
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
    let mut out = Vec::new();
    let t = a.event_time.timestamp();
    let how = || format!("{} by {}", a.event_name, a.principal.display());
    if !a.outcome.is_success() {
        return out;
    }
    let params = a.request_parameters.as_ref();
    let text = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
    if a.event_source == "iam.amazonaws.com" {
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
        if let Some((k, cleared)) = fact {
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
        if crate::classify::is_write(a) && !GLOBAL_SERVICES.contains(&a.event_source.as_str()) {
            out.push((
                format!("region:{region}"),
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

/// Calls that create a resource (not data written into one).
fn creates(a: &Activity) -> bool {
    ["Create", "Run", "Import", "Allocate", "Register", "Launch"]
        .iter()
        .any(|p| a.event_name.starts_with(p))
        && a.outcome.is_success()
        && !GLOBAL_SERVICES.contains(&a.event_source.as_str())
        && !crate::classify::is_data_event(a)
        && a.event_source != "logs.amazonaws.com"
}

/// Why `a` is activity by a terminated user, if it is: (summary, severity).
pub fn terminated(facts: &Facts, listed: &[String], a: &Activity) -> Option<(String, Severity)> {
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
        if let Some(f) = facts.get(&format!("key:{key}")).filter(|f| f.time < t) {
            return Some((
                format!(
                    "{} used access key {key} after {} ({})",
                    p.display(),
                    f.how,
                    fmt_time(f.time)
                ),
                Severity::High,
            ));
        }
    }
    if p.kind == "IAMUser" && facts.terminations() > 0 {
        if let (Some(account), Some(name)) = (&p.account_id, &p.name) {
            if let Some(f) = facts
                .get(&format!("user:{account}/{name}"))
                .filter(|f| f.time < t)
            {
                return Some((
                    format!(
                        "{name} acted after the user was deleted ({}, {})",
                        f.how,
                        fmt_time(f.time)
                    ),
                    Severity::High,
                ));
            }
            let console = a.event_type.as_deref() == Some("AwsConsoleSignIn");
            if let Some(f) = facts
                .get(&format!("console:{account}/{name}"))
                .filter(|f| console && f.time < t)
            {
                return Some((format!("{name} signed in to the console after its console access was removed ({}, {})", f.how, fmt_time(f.time)), Severity::High));
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
        ));
    }
    None
}

/// Why `a` creates a resource in a region the organization does not use, if it does.
pub fn unusual_region(facts: &Facts, learning_secs: i64, a: &Activity) -> Option<String> {
    let region = a.region.as_deref()?;
    if !creates(a) {
        return None;
    }
    let t = a.event_time.timestamp();
    let history_from = facts.first_use?;
    if t - history_from < learning_secs {
        return None;
    }
    let in_use = facts
        .get(&format!("region:{region}"))
        .is_some_and(|f| f.time < t);
    (!in_use).then(|| {
        format!(
            "{} {} in {region}, a region the organization has not used",
            a.principal.display(),
            a.event_name
        )
    })
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

    #[test]
    fn a_new_region_after_the_learning_period() {
        let mut facts = Facts::default();
        let week = 7 * 86_400;
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
        let early = act(
            86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        assert!(
            unusual_region(&facts, week, &early).is_none(),
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
        assert!(unusual_region(&facts, week, &late).is_some());
        let usual = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "RunInstances",
            json!({}),
            admin(),
            "us-east-1",
        );
        assert!(unusual_region(&facts, week, &usual).is_none());
        let read = act(
            8 * 86_400,
            "ec2.amazonaws.com",
            "DescribeInstances",
            json!({}),
            admin(),
            "ap-east-1",
        );
        assert!(unusual_region(&facts, week, &read).is_none());
    }
}
