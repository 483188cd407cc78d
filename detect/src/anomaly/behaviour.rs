//! Unusual API behaviour: a sensitive call (see [`crate::tactics`]) an actor has never made,
//! weighed by what it means and by what surrounds it, and discovery bursts — the way stolen
//! credentials look from the inside, whoever they belong to.
//!
//! An actor learns the classified calls it makes (their rows, a few bytes) and the tactics
//! they belong to, with the networks (AS numbers, else /16 or /48 prefixes) and user-agent
//! families it works from. After learning, a classified call it has never made scores its
//! weight, plus one for a tactic it never used, one for a new network, one for a new user
//! agent, one for a failure, and two when it comes within an hour of another unusual call of
//! a different tactic (one for a learned actor working from its usual network with its usual
//! agent, and then never enough for high),
//! one when half or more of its sensitive calls this hour were refused
//! (five at least), and one when another policy alerted about it in the last six hours. While
//! it learns, its peers' calls (the role its sessions come from, its account's people or
//! users; a call counts as theirs once two members have made it) stand in for its own, so an
//! identity an attacker just made is judged from its first call; without peers, only the heaviest calls (weight 4 and up)
//! count as unusual. The score fires at 5 (`medium`; `low` 6, `high` 4), high from 7 — or 6 for
//! a call fewer than two of the organization's established actors make.

use trailguard_common::contract::{Alert, Severity};

use super::{
    Anomalies, PrincipalState, Seen, Sensitivity, Who, CREDENTIAL_BURST, DISCOVERY_BURST,
    UNUSUAL_API,
};
use crate::tactics::{accelerated_types, call_key, Tactic, ACCELERATED};

/// Most networks and user-agent families remembered per actor.
const REMEMBERED: usize = 8;
/// Most enumeration calls kept in the sliding window.
const WINDOW_CALLS: usize = 128;
// The widest window an actor went is kept in 8 bits.
const _: () = assert!(WINDOW_CALLS <= u8::MAX as usize);
/// The discovery window.
const WINDOW_SECS: i64 = 600;
/// How long an unusual call makes the next one of another tactic weigh more.
pub(super) const CHAIN_SECS: i64 = 3600;
/// How long another alert about the actor makes an unusual call weigh more.
const OTHER_ALERT_SECS: i64 = 6 * 3600;
/// Refused calls in an hour from which a refusal ratio of one half counts as probing.
const PROBING_REFUSALS: u16 = 5;
/// Calls weakening defences that the actor never made, within [`CHAIN_SECS`], that are a
/// spree: the alerting pipeline taken apart (rules, alarms, subscriptions, topics, filters)
/// piece by piece, each piece too common alone to be high.
const DEFENCE_SPREE: usize = 3;
/// Set on the tactic of a failed call in the actor's recent unusual calls (tactics are
/// below 8).
const REFUSED_MARK: u8 = 0x80;

/// One step of a ten-minute window of distinct things (`(key, last time, refused)`, at most
/// `cap`, oldest dropped first): the window ends at the newest time seen, so a record arriving
/// late (another region's file) neither empties it nor moves it back; a window moving on
/// teaches `widest` how wide the actor goes (the one still growing would teach it the burst
/// being judged). `keys` are added at `t`; `None` when `t` is too late for the window, else
/// (distinct, refused) now in it.
fn slide(
    window: &mut thin_vec::ThinVec<(u32, i64, bool)>,
    widest: &mut u8,
    cap: usize,
    t: i64,
    keys: &[u32],
    failed: bool,
) -> Option<(u32, u32)> {
    let now = window
        .iter()
        .map(|(_, at, _)| *at)
        .max()
        .unwrap_or(t)
        .max(t);
    let before = window.len();
    window.retain(|(_, at, _)| now - *at < WINDOW_SECS);
    super::release_if_empty(window);
    if window.len() < before {
        *widest = (*widest).max(u8::try_from(before).unwrap_or(u8::MAX));
    }
    if now - t >= WINDOW_SECS {
        return None;
    }
    for &key in keys {
        match window.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => {
                entry.1 = entry.1.max(t);
                entry.2 |= failed;
            }
            None => {
                if window.len() >= cap {
                    window.remove(0);
                }
                super::room_for_one(window);
                window.push((key, t, failed));
            }
        }
    }
    let refused = window.iter().filter(|(_, _, f)| *f).count() as u32;
    Some((window.len() as u32, refused))
}

/// `DescribeInstanceAttribute` for an instance's user data (where secrets are often left).
fn reads_user_data(a: &trailguard_common::Activity) -> bool {
    a.event_source == "ec2.amazonaws.com"
        && a.event_name == "DescribeInstanceAttribute"
        && a.request_parameters
            .as_ref()
            .and_then(|p| p.get("attribute"))
            .and_then(serde_json::Value::as_str)
            == Some("userData")
}

/// What a credential read reads: the secrets, parameters or instances it names (a bulk read
/// by filter counts as ten); at most 32 per call.
fn read_targets(a: &trailguard_common::Activity) -> Vec<String> {
    use serde_json::Value;
    let Some(p) = a.request_parameters.as_ref().filter(|p| !p.is_null()) else {
        return vec![a.event_name.clone()];
    };
    let mut out: Vec<String> = Vec::new();
    for key in ["secretId", "name", "instanceId", "secretIdList", "names"] {
        for v in trailguard_common::s3::items(p.get(key)) {
            if let Some(s) = v.as_str() {
                out.push(s.to_string());
            }
        }
    }
    // BatchGetSecretValue by filter: every secret it matches, as ten; a parameter path, as
    // three (an application reads its own subtree at start-up).
    if let Some(path) = p.get("path").and_then(Value::as_str) {
        out.extend((0..3).map(|i| format!("{path}#{i}")));
    } else if out.is_empty() || p.get("filters").is_some_and(|f| !f.is_null()) {
        out.extend((0..10).map(|i| format!("{}#{i}", a.event_name)));
    }
    out.truncate(32);
    out
}

/// A small, stable hash (FNV-1a) for remembering names compactly; collisions only make a
/// new name look known.
pub(crate) fn hash(parts: &[&str]) -> u32 {
    crate::tactics::fnv1a(
        parts
            .iter()
            .flat_map(|part| part.bytes().chain(std::iter::once(0))),
    )
}

/// The network an activity comes from: its AS number, else its /16 (IPv4) or /48 (IPv6).
pub(super) fn network(a: &trailguard_common::Activity) -> Option<u32> {
    if let Some(n) = &a.enrichment.network {
        return Some(n.asn | 0x8000_0000);
    }
    match a.source_ip? {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(u32::from(o[0]) << 8 | u32::from(o[1]))
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(hash(&[&format!("{:x}:{:x}:{:x}", s[0], s[1], s[2])]))
        }
    }
}

/// The user agent's family: its first token (`aws-cli`, `Boto3`, `aws-sdk-go`, a browser).
fn agent(a: &trailguard_common::Activity) -> Option<u32> {
    let ua = a.user_agent.as_deref()?;
    // Read for every activity: found over the bytes (the separators are ASCII) and hashed
    // as it is lower-cased, without a copy — the same value as `hash(&[family lower-cased])`.
    let separator = |b: &u8| matches!(b, b'/' | b' ' | b'[');
    let bytes = ua.as_bytes();
    let family = match bytes.iter().position(|b| !separator(b)) {
        Some(start) => {
            let rest = &bytes[start..];
            &rest[..rest.iter().position(separator).unwrap_or(rest.len())]
        }
        // Nothing but separators (or nothing): the agent as it is.
        None => bytes,
    };
    Some(crate::tactics::fnv1a(
        family
            .iter()
            .map(u8::to_ascii_lowercase)
            .chain(std::iter::once(0)),
    ))
}

/// Adds `value`, seen at `t`, to the most recently used `list` (at most [`REMEMBERED`]);
/// true when it was first seen within the last [`CHAIN_SECS`] — new for everything the actor
/// does from it in that hour, not only for its first call (an attacker's first call is
/// rarely the one that matters).
fn remember(list: &mut thin_vec::ThinVec<(u32, i64)>, value: u32, t: i64) -> bool {
    if let Some(i) = list.iter().position(|(v, _)| *v == value) {
        let entry = list.remove(i);
        list.push(entry);
        return (0..CHAIN_SECS).contains(&(t - entry.1));
    }
    if list.len() >= REMEMBERED {
        list.remove(0);
    }
    super::room_for_one(list);
    list.push((value, t));
    true
}

/// Whether `a` was refused for want of rights (not a missing configuration, a throttle or a
/// bad request: the S3 console and infrastructure tools read many things that do not exist).
fn refused(a: &trailguard_common::Activity) -> bool {
    !a.outcome.is_success()
        && a.outcome.error_code.as_deref().is_some_and(|c| {
            c.starts_with("AccessDenied")
                || c.ends_with("UnauthorizedOperation")
                || c == "AuthorizationError"
                || c == "UnauthorizedAccess"
                || c == "Forbidden"
        })
}

impl Anomalies {
    /// Unusual API behaviour and discovery bursts for `seen`'s activity. `peer_calls`: while
    /// the actor learns, the calls its peers make.
    pub(super) fn behaviour(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        peer_calls: Option<&[u32]>,
        org_rare: bool,
        call: Option<(Option<u32>, Tactic, u8)>,
        out: &mut Vec<Alert>,
    ) {
        let a = seen.a;
        // Context, from every activity: the networks and user agents the actor works from
        // (new ones count only once it has learned: everything is new before).
        let t = seen.t;
        let new_network = network(a).is_some_and(|n| remember(&mut st.networks, n, t));
        let new_agent = agent(a).is_some_and(|u| remember(&mut st.agents, u, t));
        // What an AWS service does on the actor's behalf is not the actor's choice of call
        // (`call` is `None` for it, as for a call that is not in the table).
        let Some((row, tactic, weight)) = call else {
            return;
        };
        let failed = refused(a);
        // How much of what it tried this hour was refused (an attacker probing the rights of
        // stolen credentials fails a lot; people and automation rarely do).
        let hour = super::unix_hour(t);
        if st.refusals.0 != hour {
            st.refusals = (hour, 0, 0);
        }
        st.refusals.1 = st.refusals.1.saturating_add(1);
        st.refusals.2 = st.refusals.2.saturating_add(u16::from(failed));
        if tactic == Tactic::Discovery {
            self.discovery(st, seen, failed, out);
        }
        // Plain (undecrypted) parameter reads weigh 1: configuration, not credentials.
        if (tactic == Tactic::CredentialAccess && weight >= 2) || reads_user_data(a) {
            self.secrets(st, seen, failed, out);
        }
        let Some(row) = row else {
            return;
        };
        let known = st.api_known.binary_search(&row).is_ok();
        let tactic_bit = 1u8 << (tactic as u8);
        let new_tactic = st.api_tactics & tactic_bit == 0;
        let unusual = !known
            && weight >= 2
            && if seen.learned {
                true
            } else {
                match peer_calls {
                    Some(peers) => peers.binary_search(&row).is_err(),
                    None => weight >= 4,
                }
            };
        // Only what succeeded is learned: a refused call taught as known would let the same
        // call, once the attacker has the rights, pass as usual.
        if a.outcome.is_success() {
            if let Err(i) = st.api_known.binary_search(&row) {
                super::room_for_one(&mut st.api_known);
                st.api_known.insert(i, row);
            }
            st.api_tactics |= tactic_bit;
        }
        if !unusual {
            return;
        }
        st.api_unusual.retain(|(_, at)| t - *at < CHAIN_SECS);
        super::release_if_empty(&mut st.api_unusual);
        let chained = st
            .api_unusual
            .iter()
            .any(|(other, _)| other & !REFUSED_MARK != tactic as u8);
        if st.api_unusual.len() >= 8 {
            st.api_unusual.remove(0);
        }
        super::room_for_one(&mut st.api_unusual);
        // A call that failed (refused, throttled, invalid) is marked: never learned, the same
        // one tried again would count again.
        let succeeded = a.outcome.is_success();
        st.api_unusual
            .push((tactic as u8 | if succeeded { 0 } else { REFUSED_MARK }, t));
        // Defences taken apart one after another from a network or with a tool the actor
        // never used: high, whatever each weighs alone. (From where it always works, the same
        // calls are what a Terraform run replacing rules and alarms makes.)
        let strange = seen.learned && (new_network || new_agent);
        // Only calls that succeeded (each learned once made, so each a different call).
        let spree = if tactic == Tactic::DefenseEvasion && strange && succeeded {
            st.api_unusual
                .iter()
                .filter(|(other, _)| *other == tactic as u8)
                .count()
        } else {
            0
        };
        let spree = (spree >= DEFENCE_SPREE).then_some(spree);
        let learned = seen.learned;
        let mut score = u32::from(weight);
        let mut why = Vec::new();
        if learned && new_tactic {
            score += 1;
            why.push(format!("the first {} call it has made", tactic.name()));
        }
        if learned && new_network {
            score += 1;
            why.push("from a network it has not used".to_string());
        }
        if learned && new_agent {
            score += 1;
            why.push("with a user agent it has not used".to_string());
        }
        if failed {
            score += 1;
            why.push(format!(
                "refused ({})",
                a.outcome.error_code.as_deref().unwrap_or("failed")
            ));
        }
        // A learned actor working where and with what it always does, trying new calls one
        // after another, is most often a new piece of work (an admin's first permission
        // sets): the chain weighs one, not two, and never makes the call high. (A session
        // stolen and used from the victim's own machine looks the same: medium, not silent.)
        let mut usual_chain = 0;
        if chained {
            if learned && !(new_network || new_agent || failed) {
                score += 1;
                usual_chain = 1;
                why.push(
                    "within an hour of other unusual calls of other tactics, from where it works"
                        .to_string(),
                );
            } else {
                score += 2;
                why.push("within an hour of other unusual calls of other tactics".to_string());
            }
        }
        let (_, calls, refusals) = st.refusals;
        if refusals >= PROBING_REFUSALS && u32::from(refusals) * 2 >= u32::from(calls) {
            score += 1;
            why.push(format!(
                "{refusals} of its {calls} sensitive calls this hour refused"
            ));
        }
        // Another policy's alert about the actor in the last hours (or just before, from a
        // record read out of order).
        let since = t - st.other_alert;
        if st.other_alert > 0 && (-CHAIN_SECS..=OTHER_ALERT_SECS).contains(&since) {
            score += 1;
            why.push("another alert about it in the last six hours".to_string());
        }
        // Rarity in the organization raises the severity, not whether it fires: what few
        // actors do is not suspect in itself, but an unusual call few make is worse.
        if org_rare {
            why.push("a call few in the organization make".to_string());
        }
        let d = &self.cfg.unusual_api_behaviour;
        let threshold = match self.sens(d) {
            Sensitivity::Low => 6,
            Sensitivity::Medium => 5,
            Sensitivity::High => 4,
        };
        if let Some(n) = spree {
            why.push(format!(
                "{n} calls weakening defences it never made within an hour"
            ));
        }
        if (score < threshold && spree.is_none()) || !self.on(d, a) {
            return;
        }
        // A spree fires once more (high) after the tactic's own alert of the day.
        let quiet = match spree {
            Some(_) => format!("api-spree|{}", tactic as u8),
            None => format!("api|{}", tactic as u8),
        };
        if !self.may_fire(st, quiet, t) {
            return;
        }
        // Accelerated compute is named with what was asked for, and is resource hijacking.
        let accelerated = row == call_key(ACCELERATED.source, ACCELERATED.name);
        let name = if accelerated {
            let types = accelerated_types(a);
            format!(
                "{} for accelerated compute ({})",
                a.event_name,
                if types.is_empty() {
                    "a capacity block".to_string()
                } else {
                    types.join(", ")
                }
            )
        } else {
            a.event_name.clone()
        };
        let never = if learned {
            "a call it has never made"
        } else if peer_calls.is_some() {
            "a call its peers never make"
        } else {
            "a call new identities rarely make"
        };
        let summary = format!(
            "{} {name} ({}, weight {weight}): {never}{}{}",
            Who(a),
            tactic.name(),
            if why.is_empty() { "" } else { "; " },
            why.join("; ")
        );
        let severity = if spree.is_some() || score - usual_chain + u32::from(org_rare) >= 7 {
            Severity::High
        } else {
            Severity::Medium
        };
        let (technique, technique_name) = if accelerated {
            ("T1496", "Resource Hijacking")
        } else {
            tactic.technique()
        };
        out.push(self.alert(
            a,
            &UNUSUAL_API,
            d,
            severity,
            summary,
            vec![a.id.clone()],
            (tactic.mitre(), technique, technique_name),
        ));
    }

    /// Many distinct credentials read within ten minutes: more than the actor ever read in one
    /// window (at least 10; while it learns, 20), or most of them refused — a dump of every
    /// secret, decrypted parameter, instance password or user data the credentials reach.
    fn secrets(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        failed: bool,
        out: &mut Vec<Alert>,
    ) {
        let (a, t) = (seen.a, seen.t);
        let keys: Vec<u32> = read_targets(a)
            .iter()
            .map(|target| hash(&[&a.event_source, target]))
            .collect();
        let Some((distinct, refused)) = slide(
            &mut st.secrets,
            &mut st.secrets_max,
            WINDOW_CALLS / 2,
            t,
            &keys,
            failed,
        ) else {
            return;
        };
        let d = &self.cfg.credential_access_burst;
        let least = match self.sens(d) {
            Sensitivity::Low => 20,
            Sensitivity::Medium => 10,
            Sensitivity::High => 6,
        };
        // Capped at half the window, so an actor that fills it every time never out-reads
        // itself (only probing alerts then).
        let usual = u32::from(st.secrets_max).min(WINDOW_CALLS as u32 / 4);
        let broad = if seen.learned {
            distinct >= least && distinct > 2 * usual
        } else {
            // Start-up reads of a new deployment: only an unusually wide one counts.
            distinct >= 2 * least
        };
        let probing = refused >= least / 2 && refused * 2 >= distinct;
        if !(broad || probing) || !self.on(d, a) || !self.may_fire(st, "secrets".into(), t) {
            return;
        }
        let summary = format!(
            "{} read {distinct} different secrets or credentials within ten minutes{}{}: {}",
            Who(a),
            if refused > 0 {
                format!(", {refused} of them refused")
            } else {
                String::new()
            },
            if seen.learned {
                format!(" (its most before: {usual})")
            } else {
                String::new()
            },
            a.event_name
        );
        out.push(self.alert(
            a,
            &CREDENTIAL_BURST,
            d,
            if probing || distinct >= 2 * least {
                Severity::High
            } else {
                Severity::Medium
            },
            summary,
            vec![a.id.clone()],
            (
                "Credential Access",
                "T1555.006",
                "Credentials from Password Stores: Cloud Secrets Management Stores",
            ),
        ));
    }

    /// Many distinct enumerating calls within ten minutes: more than the actor ever made in
    /// one window (or, while it learns, than anyone should), or most of them refused — an
    /// attacker mapping what stolen credentials can see.
    fn discovery(
        &self,
        st: &mut PrincipalState,
        seen: &Seen<'_>,
        failed: bool,
        out: &mut Vec<Alert>,
    ) {
        let (a, t) = (seen.a, seen.t);
        // A call swept across regions is as wide as that many calls: the region is part of it.
        let region = a.region.as_deref().unwrap_or_default();
        let name = hash(&[&a.event_source, &a.event_name, region]);
        let Some((distinct, refused)) = slide(
            &mut st.discovery,
            &mut st.discovery_max,
            WINDOW_CALLS,
            t,
            &[name],
            failed,
        ) else {
            return;
        };
        let d = &self.cfg.discovery_burst;
        let least = match self.sens(d) {
            Sensitivity::Low => 40,
            Sensitivity::Medium => 20,
            Sensitivity::High => 12,
        };
        // Capped below half the window, so a wide sweeper can still be out-swept.
        let usual = u32::from(st.discovery_max).min(WINDOW_CALLS as u32 / 2 - 1);
        let broad = if seen.learned {
            distinct >= least && distinct > 2 * usual
        } else {
            // Consoles list widely as pages load: only an unusually wide sweep counts.
            distinct >= 2 * least
        };
        let probing = refused >= least / 2 && refused * 2 >= distinct;
        if !(broad || probing) || !self.on(d, a) || !self.may_fire(st, "discovery".into(), t) {
            return;
        }
        let summary = format!(
            "{} made {distinct} different listing and describing calls within ten minutes{}{}: {}",
            Who(a),
            if refused > 0 {
                format!(", {refused} of them refused")
            } else {
                String::new()
            },
            if seen.learned {
                format!(" (its most before: {usual})")
            } else {
                String::new()
            },
            a.event_name
        );
        out.push(self.alert(
            a,
            &DISCOVERY_BURST,
            d,
            if probing {
                Severity::High
            } else {
                Severity::Medium
            },
            summary,
            vec![a.id.clone()],
            ("Discovery", "T1526", "Cloud Service Discovery"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AnomalyConfig, Peers};
    use super::*;
    use serde_json::json;
    use trailguard_common::Activity;

    const DAY: i64 = 86_400;

    /// `name` on `source` by alice at second `t`, from `ip` with user agent `ua`.
    fn call(t: i64, source: &str, name: &str, ip: &str, ua: &str, refused: bool) -> Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let mut record = json!({
            "eventTime": time.to_rfc3339(), "eventSource": source, "eventName": name,
            "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
            "sourceIPAddress": ip, "userAgent": ua,
            "eventID": format!("00000000-0000-4000-8000-{:012}", t.unsigned_abs()),
            "userIdentity": {"type": "IAMUser", "userName": "alice", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/alice"},
            "requestParameters": {},
        });
        if refused {
            record["errorCode"] = "AccessDenied".into();
        }
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    const HOME: &str = "71.253.10.20";
    const CLI: &str = "aws-cli/2.15.0 Python/3.11";

    #[test]
    fn an_agents_family_is_hashed_as_it_always_was() {
        // The families a baseline remembers are these hashes: a restored baseline must still
        // know its agents. As first written: the first non-empty token, lower-cased, hashed.
        fn before(ua: &str) -> u32 {
            let family = ua
                .split(['/', ' ', '['])
                .find(|t| !t.is_empty())
                .unwrap_or(ua);
            hash(&[&family.to_ascii_lowercase()])
        }
        for ua in [
            CLI,
            "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux",
            "[aws-sdk-go/1.44.0 (go1.20; linux; amd64)]",
            "  //[ Mozilla/5.0 (Windows NT 10.0)",
            "AWS Internal",
            "console.amazonaws.com",
            "",
            "/",
            " [/ ",
            "ÄWS-Çli/2 x",
            "Ärger",
            "\u{0}/x",
            "terraform/1.6.0",
        ] {
            let mut a = call(
                0,
                "ec2.amazonaws.com",
                "DescribeInstances",
                HOME,
                "x",
                false,
            );
            a.user_agent = Some(ua.to_string());
            assert_eq!(agent(&a), Some(before(ua)), "{ua:?}");
        }
    }

    /// Eight days of ordinary work: tags, instances, a bucket list.
    fn ordinary(an: &Anomalies, st: &mut PrincipalState, census: &mut crate::census::Census) {
        for day in 0..8 {
            for (i, (source, name)) in [
                ("ec2.amazonaws.com", "DescribeInstances"),
                ("ec2.amazonaws.com", "CreateTags"),
                ("s3.amazonaws.com", "ListBuckets"),
            ]
            .into_iter()
            .enumerate()
            {
                an.observe(
                    st,
                    census,
                    &call(day * DAY + i as i64 * 60, source, name, HOME, CLI, false),
                );
            }
        }
    }

    fn fired<'a>(alerts: &'a [Alert], policy: &str) -> Vec<&'a Alert> {
        alerts.iter().filter(|a| a.policy_id == policy).collect()
    }

    #[test]
    fn a_sensitive_call_never_made_weighs_with_what_surrounds_it() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        // From home, with the usual CLI: a first secret read is 3 + 1 (new tactic): quiet.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let usual = call(
            9 * DAY,
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            HOME,
            CLI,
            false,
        );
        assert!(fired(
            &an.observe(&mut st, &mut census, &usual),
            "unusual-api-behaviour"
        )
        .is_empty());
        // From another network with another tool: 3 + 1 + 1 + 1.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let stolen = call(
            9 * DAY,
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            "203.0.113.9",
            "Boto3/1.34.0",
            false,
        );
        let alerts = an.observe(&mut st, &mut census, &stolen);
        let unusual = fired(&alerts, "unusual-api-behaviour");
        assert_eq!(unusual.len(), 1, "{alerts:?}");
        assert!(
            unusual[0].evidence.summary.contains("credential access"),
            "{}",
            unusual[0].evidence.summary
        );
        // Once made, the same call is known.
        let again = call(
            9 * DAY + 60,
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            "203.0.113.9",
            "Boto3/1.34.0",
            false,
        );
        assert!(fired(
            &an.observe(&mut st, &mut census, &again),
            "unusual-api-behaviour"
        )
        .is_empty());
        // A chain of tactics: the first is quiet, the second of another tactic within the hour
        // weighs two more when something else about it is strange (here a network alice never
        // used); from home with her usual tool one more (new calls one after another are most
        // often a new piece of work), and never enough for high.
        let chain = |ip: &str, name: &str| {
            let mut st = PrincipalState::default();
            let mut census = crate::census::Census::default();
            ordinary(&an, &mut st, &mut census);
            let first = call(
                9 * DAY,
                "secretsmanager.amazonaws.com",
                "GetSecretValue",
                HOME,
                CLI,
                false,
            );
            assert!(fired(
                &an.observe(&mut st, &mut census, &first),
                "unusual-api-behaviour"
            )
            .is_empty());
            let next = call(9 * DAY + 300, "iam.amazonaws.com", name, ip, CLI, false);
            fired(
                &an.observe(&mut st, &mut census, &next),
                "unusual-api-behaviour",
            )
            .iter()
            .map(|a| a.severity)
            .collect::<Vec<_>>()
        };
        // Weight 2, its first persistence call: 3, or 4 from a new network; +2 makes it 6,
        // +1 from home 4.
        assert_eq!(chain("203.0.113.9", "CreateRole"), [Severity::Medium]);
        assert!(chain(HOME, "CreateRole").is_empty());
        // Weight 3, its first privilege escalation call: 4 alone, 5 with the chain from home
        // (medium); from a new network 7 (high).
        assert_eq!(chain(HOME, "AttachUserPolicy"), [Severity::Medium]);
        assert_eq!(chain("203.0.113.9", "AttachUserPolicy"), [Severity::High]);
        // The heaviest calls fire alone.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let blind = call(
            9 * DAY,
            "cloudtrail.amazonaws.com",
            "StopLogging",
            HOME,
            CLI,
            false,
        );
        assert_eq!(
            fired(
                &an.observe(&mut st, &mut census, &blind),
                "unusual-api-behaviour"
            )
            .len(),
            1
        );
    }

    #[test]
    fn defences_dismantled_in_a_spree_are_high() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        // From home with the usual CLI: each is a defence-evasion call alice never made.
        let spree = [
            ("events.amazonaws.com", "DisableRule"),
            ("monitoring.amazonaws.com", "DeleteAlarms"),
            ("logs.amazonaws.com", "DeleteSubscriptionFilter"),
            ("sns.amazonaws.com", "DeleteTopic"),
        ];
        let run = |ip: &str, ua: &str| {
            let mut st = PrincipalState::default();
            let mut census = crate::census::Census::default();
            ordinary(&an, &mut st, &mut census);
            let mut raised = Vec::new();
            for (i, (source, name)) in spree.into_iter().enumerate() {
                let a = call(9 * DAY + 60 * i as i64, source, name, ip, ua, false);
                raised.extend(
                    fired(
                        &an.observe(&mut st, &mut census, &a),
                        "unusual-api-behaviour",
                    )
                    .into_iter()
                    .map(|x| (x.severity, x.evidence.summary.clone())),
                );
            }
            raised
        };
        // From a network and tool it never used the first is medium already (one per tactic
        // a day); the third within the hour is high, once.
        let raised = run("203.0.113.9", "Boto3/1.34.0");
        let severities: Vec<Severity> = raised.iter().map(|(s, _)| *s).collect();
        assert_eq!(severities, [Severity::Medium, Severity::High], "{raised:?}");
        assert!(
            raised[1].1.contains("3 calls weakening defences"),
            "{}",
            raised[1].1
        );
        // A new network alone is enough.
        let raised = run("203.0.113.9", CLI);
        assert_eq!(
            raised.last().map(|r| r.0),
            Some(Severity::High),
            "{raised:?}"
        );
        // From where it always works, with its usual tool, the same calls are what a
        // Terraform run replacing rules and alarms makes: no spree.
        let raised = run(HOME, CLI);
        assert!(raised.iter().all(|r| r.0 != Severity::High), "{raised:?}");
        // The same call refused three times is one call tried, not a spree.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut refused = Vec::new();
        for i in 0..3 {
            let a = call(
                9 * DAY + 60 * i,
                "monitoring.amazonaws.com",
                "DeleteAlarms",
                "203.0.113.9",
                CLI,
                true,
            );
            refused.extend(
                fired(
                    &an.observe(&mut st, &mut census, &a),
                    "unusual-api-behaviour",
                )
                .into_iter()
                .map(|x| x.severity),
            );
        }
        assert!(!refused.contains(&Severity::High), "{refused:?}");
        // The same three a day apart each: no spree.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut apart = Vec::new();
        for (i, (source, name)) in spree.into_iter().take(3).enumerate() {
            let a = call(
                9 * DAY + 2 * DAY * i as i64,
                source,
                name,
                "203.0.113.9",
                "Boto3/1.34.0",
                false,
            );
            apart.extend(
                fired(
                    &an.observe(&mut st, &mut census, &a),
                    "unusual-api-behaviour",
                )
                .into_iter()
                .map(|x| x.severity),
            );
        }
        assert!(!apart.contains(&Severity::High), "{apart:?}");
        // Three calls of another tactic within the hour are not a spree of this kind.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut other = Vec::new();
        for (i, (source, name)) in [
            ("iam.amazonaws.com", "CreateUser"),
            ("iam.amazonaws.com", "CreateLoginProfile"),
            ("iam.amazonaws.com", "CreateAccessKey"),
        ]
        .into_iter()
        .enumerate()
        {
            let a = call(
                9 * DAY + 60 * i as i64,
                source,
                name,
                "203.0.113.9",
                "Boto3/1.34.0",
                false,
            );
            other.extend(
                fired(
                    &an.observe(&mut st, &mut census, &a),
                    "unusual-api-behaviour",
                )
                .into_iter()
                .map(|x| x.severity),
            );
        }
        assert!(!other.contains(&Severity::High), "{other:?}");
    }

    #[test]
    fn accelerated_compute_never_asked_for_is_resource_hijacking() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let launch = |t: i64, instance_type: &str| {
            let mut a = call(t, "ec2.amazonaws.com", "RunInstances", HOME, CLI, false);
            let params = json!({"instanceType": instance_type, "minCount": 4, "maxCount": 4});
            a.request_parameters = trailguard_common::RawJson::from_text(&params.to_string()).ok();
            a
        };
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        // Ordinary instances are not classified at all.
        let web = an.observe(&mut st, &mut census, &launch(9 * DAY, "m5.large"));
        assert!(fired(&web, "unusual-api-behaviour").is_empty(), "{web:?}");
        // GPUs, from home with the usual tool: 4 + 1 (its first impact call).
        let alerts = an.observe(&mut st, &mut census, &launch(9 * DAY + 60, "p4d.24xlarge"));
        let unusual = fired(&alerts, "unusual-api-behaviour");
        assert_eq!(unusual.len(), 1, "{alerts:?}");
        let summary = &unusual[0].evidence.summary;
        assert!(
            summary.contains("RunInstances for accelerated compute (p4d.24xlarge)"),
            "{summary}"
        );
        assert_eq!(unusual[0].mitre[0].technique_id, "T1496");
        // Once run, GPUs are the actor's own, whatever call asks for them next.
        let mut fleet = call(
            9 * DAY + 7200,
            "ec2.amazonaws.com",
            "RequestSpotFleet",
            "203.0.113.9",
            "Boto3/1.34.0",
            false,
        );
        let config = json!({"spotFleetRequestConfig": {"launchSpecifications": {"items": [
            {"instanceType": "g5.48xlarge"}]}}});
        fleet.request_parameters = trailguard_common::RawJson::from_text(&config.to_string()).ok();
        let later = an.observe(&mut st, &mut census, &fleet);
        assert!(
            fired(&later, "unusual-api-behaviour").is_empty(),
            "{later:?}"
        );
    }

    #[test]
    fn another_alert_and_refused_probing_weigh_on_an_unusual_call() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let secret = |t: i64| {
            call(
                t,
                "secretsmanager.amazonaws.com",
                "GetSecretValue",
                HOME,
                CLI,
                false,
            )
        };
        // Alone, from home with the usual CLI, a first secret read is 3 + 1: quiet.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let alone = an.observe(&mut st, &mut census, &secret(9 * DAY));
        assert!(
            fired(&alone, "unusual-api-behaviour").is_empty(),
            "{alone:?}"
        );
        // Another policy alerted about the actor an hour before: 5, it fires.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        st.other_alert = 1_700_000_000 + 9 * DAY - 3600;
        let after_alert = an.observe(&mut st, &mut census, &secret(9 * DAY));
        let got = fired(&after_alert, "unusual-api-behaviour");
        assert_eq!(got.len(), 1, "{after_alert:?}");
        assert!(
            got[0].evidence.summary.contains("another alert"),
            "{}",
            got[0].evidence.summary
        );
        // A day before is too long ago.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        st.other_alert = 1_700_000_000 + 8 * DAY;
        let stale = an.observe(&mut st, &mut census, &secret(9 * DAY));
        assert!(
            fired(&stale, "unusual-api-behaviour").is_empty(),
            "{stale:?}"
        );
        // Most of what it tried this hour was refused: probing its rights.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        for (i, name) in [
            "ListUsers",
            "ListRoles",
            "ListPolicies",
            "GetAccountAuthorizationDetails",
            "ListGroups",
        ]
        .into_iter()
        .enumerate()
        {
            an.observe(
                &mut st,
                &mut census,
                &call(
                    9 * DAY - 600 + i as i64,
                    "iam.amazonaws.com",
                    name,
                    HOME,
                    CLI,
                    true,
                ),
            );
        }
        let probed = an.observe(&mut st, &mut census, &secret(9 * DAY));
        let got = fired(&probed, "unusual-api-behaviour");
        assert_eq!(got.len(), 1, "{probed:?}");
        assert!(
            got[0]
                .evidence
                .summary
                .contains("5 of its 6 sensitive calls this hour refused"),
            "{}",
            got[0].evidence.summary
        );
    }

    #[test]
    fn an_attackers_first_calls_do_not_make_his_network_usual() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        // Who am I, what is there — then the secret, minutes later, from the same place.
        let (ip, ua) = ("203.0.113.9", "Boto3/1.34.0");
        an.observe(
            &mut st,
            &mut census,
            &call(
                9 * DAY,
                "sts.amazonaws.com",
                "GetCallerIdentity",
                ip,
                ua,
                false,
            ),
        );
        an.observe(
            &mut st,
            &mut census,
            &call(
                9 * DAY + 30,
                "ec2.amazonaws.com",
                "DescribeRegions",
                ip,
                ua,
                false,
            ),
        );
        let secret = call(
            9 * DAY + 300,
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            ip,
            ua,
            false,
        );
        let alerts = an.observe(&mut st, &mut census, &secret);
        assert_eq!(
            fired(&alerts, "unusual-api-behaviour").len(),
            1,
            "{alerts:?}"
        );
    }

    #[test]
    fn a_refused_call_is_not_learned() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let tried = call(
            9 * DAY,
            "iam.amazonaws.com",
            "CreateLoginProfile",
            HOME,
            CLI,
            true,
        );
        an.observe(&mut st, &mut census, &tried);
        // A day later (another suppression window) the rights are there: still never made.
        let done = call(
            11 * DAY,
            "iam.amazonaws.com",
            "CreateLoginProfile",
            HOME,
            CLI,
            false,
        );
        let alerts = an.observe(&mut st, &mut census, &done);
        assert_eq!(
            fired(&alerts, "unusual-api-behaviour").len(),
            1,
            "{alerts:?}"
        );
    }

    #[test]
    fn a_late_region_neither_empties_nor_teaches_the_window() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for i in 0..25i64 {
            // Every fifth call is a record of another region's file, read late.
            let t = if i % 5 == 4 {
                9 * DAY + i * 10 - 200
            } else {
                9 * DAY + i * 10
            };
            let name = format!("DescribeThing{i:02}");
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &call(t, "ec2.amazonaws.com", &name, HOME, CLI, false),
            ));
        }
        assert_eq!(fired(&alerts, "discovery-burst").len(), 1, "{alerts:?}");
    }

    #[test]
    fn a_call_few_in_the_organization_make_is_more_severe() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut org = crate::census::Census::default();
        let mut view = crate::anomaly::OrgView::local(&mut org);
        // A new identity's refused CreateLoginProfile (4 + 1) just after another alert (+1):
        // medium; the same call few in the organization make: high.
        let refused = call(
            0,
            "iam.amazonaws.com",
            "CreateLoginProfile",
            HOME,
            CLI,
            true,
        );
        let judged = |org_rare: bool, view: &mut crate::anomaly::OrgView<'_>| {
            let mut st = PrincipalState {
                other_alert: refused.event_time.timestamp() - 60,
                ..PrincipalState::default()
            };
            let peers = Peers {
                org_rare,
                ..Peers::default()
            };
            let alerts = an.observe_with_peers(&mut st, view, &refused, peers, &mut Vec::new());
            fired(&alerts, "unusual-api-behaviour")
                .iter()
                .map(|a| {
                    (
                        a.severity,
                        a.evidence.summary.contains("few in the organization"),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(judged(false, &mut view), [(Severity::Medium, false)]);
        assert_eq!(judged(true, &mut view), [(Severity::High, true)]);
    }

    #[test]
    fn a_new_identity_is_judged_against_its_peers_from_its_first_call() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut org = crate::census::Census::default();
        let mut view = crate::anomaly::OrgView::local(&mut org);
        let login = call(
            0,
            "iam.amazonaws.com",
            "CreateLoginProfile",
            HOME,
            CLI,
            false,
        );
        // No peers: only the heaviest calls are unusual, and CreateLoginProfile is one.
        let mut st = PrincipalState::default();
        let alerts = an.observe_with_peers(
            &mut st,
            &mut view,
            &login,
            Peers::default(),
            &mut Vec::new(),
        );
        assert!(
            fired(&alerts, "unusual-api-behaviour").is_empty(),
            "4 alone: {alerts:?}"
        );
        let mut st = PrincipalState::default();
        let refused = call(
            0,
            "iam.amazonaws.com",
            "CreateLoginProfile",
            HOME,
            CLI,
            true,
        );
        let alerts = an.observe_with_peers(
            &mut st,
            &mut view,
            &refused,
            Peers::default(),
            &mut Vec::new(),
        );
        assert_eq!(
            fired(&alerts, "unusual-api-behaviour").len(),
            1,
            "4 + refused: {alerts:?}"
        );
        // Peers that make the call: nothing unusual.
        let row = crate::tactics::classify(&login)
            .and_then(|c| c.0)
            .unwrap_or_default();
        let calls = [row];
        let peers = Peers {
            rates: None,
            calls: Some(&calls),
            org_rare: false,
            call: Default::default(),
        };
        let mut st = PrincipalState::default();
        let alerts = an.observe_with_peers(&mut st, &mut view, &refused, peers, &mut Vec::new());
        assert!(
            fired(&alerts, "unusual-api-behaviour").is_empty(),
            "{alerts:?}"
        );
    }

    #[test]
    fn credentials_dumped_in_minutes() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let read = |t: i64, id: &str, refused: bool| {
            let mut a = call(
                t,
                "secretsmanager.amazonaws.com",
                "GetSecretValue",
                HOME,
                CLI,
                refused,
            );
            a.request_parameters = Some(json!({"secretId": id}).into());
            a
        };
        // Twelve different secrets in two minutes, by an actor that reads a few a day.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        for day in 0..8 {
            for i in 0..3 {
                an.observe(
                    &mut st,
                    &mut census,
                    &read(day * DAY + 3600 + i, &format!("app/{i}"), false),
                );
            }
        }
        let mut alerts = Vec::new();
        for i in 0..12 {
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &read(9 * DAY + i * 10, &format!("prod/{i}"), false),
            ));
        }
        let got = fired(&alerts, "credential-access-burst");
        assert_eq!(got.len(), 1, "{alerts:?}");
        assert_eq!(got[0].severity, Severity::Medium);
        // The same secret again and again is one.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for i in 0..30 {
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &read(9 * DAY + i * 10, "app/db", false),
            ));
        }
        assert!(
            fired(&alerts, "credential-access-burst").is_empty(),
            "{alerts:?}"
        );
        // A bulk read by filter counts as ten; refused probing is high.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut bulk = call(
            9 * DAY,
            "secretsmanager.amazonaws.com",
            "BatchGetSecretValue",
            HOME,
            CLI,
            false,
        );
        bulk.request_parameters =
            Some(json!({"filters": [{"key": "name", "values": ["prod"]}]}).into());
        let alerts = an.observe(&mut st, &mut census, &bulk);
        assert_eq!(
            fired(&alerts, "credential-access-burst").len(),
            1,
            "{alerts:?}"
        );
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for i in 0..6 {
            let mut a = call(
                9 * DAY + i * 10,
                "ec2.amazonaws.com",
                "GetPasswordData",
                HOME,
                CLI,
                true,
            );
            a.request_parameters = Some(json!({"instanceId": format!("i-0{i}")}).into());
            alerts.extend(an.observe(&mut st, &mut census, &a));
        }
        let got = fired(&alerts, "credential-access-burst");
        assert_eq!(got.len(), 1, "{alerts:?}");
        assert_eq!(got[0].severity, Severity::High);
    }

    #[test]
    fn discovery_bursts_and_permission_probing() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let names: Vec<String> = (0..30).map(|i| format!("DescribeThing{i:02}")).collect();
        // A learned actor sweeping 25 different reads in five minutes.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for (i, name) in names.iter().take(25).enumerate() {
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &call(
                    9 * DAY + i as i64 * 10,
                    "ec2.amazonaws.com",
                    name,
                    HOME,
                    CLI,
                    false,
                ),
            ));
        }
        let bursts = fired(&alerts, "discovery-burst");
        assert_eq!(bursts.len(), 1, "{alerts:?}");
        assert_eq!(bursts[0].severity, Severity::Medium);
        // Twelve reads, ten of them refused: probing, high.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for (i, name) in names.iter().take(12).enumerate() {
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &call(
                    9 * DAY + i as i64 * 10,
                    "iam.amazonaws.com",
                    name,
                    HOME,
                    CLI,
                    i >= 2,
                ),
            ));
        }
        let bursts = fired(&alerts, "discovery-burst");
        assert_eq!(bursts.len(), 1, "{alerts:?}");
        assert_eq!(bursts[0].severity, Severity::High);
        // An actor that always sweeps wide does not alert for doing it again.
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for round in 0..2 {
            for (i, name) in names.iter().take(15).enumerate() {
                let t = 9 * DAY + round * DAY + i as i64 * 10;
                alerts.extend(an.observe(
                    &mut st,
                    &mut census,
                    &call(t, "ec2.amazonaws.com", name, HOME, CLI, false),
                ));
            }
        }
        for (i, name) in names.iter().take(25).enumerate() {
            let t = 12 * DAY + i as i64 * 10;
            alerts.extend(an.observe(
                &mut st,
                &mut census,
                &call(t, "ec2.amazonaws.com", name, HOME, CLI, false),
            ));
        }
        assert!(fired(&alerts, "discovery-burst").is_empty(), "{alerts:?}");
        // Three reads swept across every region are as wide as that many calls.
        let regions = [
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "eu-central-1",
            "eu-north-1",
            "ap-south-1",
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-southeast-1",
            "ap-southeast-2",
            "ca-central-1",
            "sa-east-1",
        ];
        let mut st = PrincipalState::default();
        ordinary(&an, &mut st, &mut census);
        let mut alerts = Vec::new();
        for (r, region) in regions.iter().enumerate() {
            for (i, name) in ["DescribeInstances", "DescribeVolumes"].iter().enumerate() {
                let mut a = call(
                    9 * DAY + r as i64 * 10 + i as i64,
                    "ec2.amazonaws.com",
                    name,
                    HOME,
                    CLI,
                    false,
                );
                a.region = Some((*region).to_string());
                alerts.extend(an.observe(&mut st, &mut census, &a));
            }
        }
        assert_eq!(fired(&alerts, "discovery-burst").len(), 1, "{alerts:?}");
    }
}
