//! Activity from anonymous (Tor, VPN, proxy) or known-malicious addresses: listed by the
//! intelligence feeds, so no baseline is needed and these fire from the first activity.

use trailguard_common::contract::{Alert, Severity};

use super::{Anomalies, PrincipalState, Seen, Who, ANONYMOUS_IP, SUSPICIOUS_IP};
use crate::classify::acts_itself;

impl Anomalies {
    /// Anonymous and suspicious addresses.
    pub(super) fn addresses(&self, st: &mut PrincipalState, seen: &Seen<'_>, out: &mut Vec<Alert>) {
        let Seen {
            a, t, corporate, ..
        } = *seen;
        let who = Who(a);
        let categories = &a.enrichment.ip_categories;
        if let Some(addr) = a
            .source_ip
            // A prompt says nothing of its own (the verdict that follows is judged).
            .filter(|_| {
                acts_itself(a)
                    && !corporate
                    && !categories.is_empty()
                    && !crate::classify::is_prompt(a)
            })
        {
            let ip = addr.to_string();
            // A failed sign-in or a password prompt is someone using the actor's name, not
            // the actor: said so (the alert stays, to tell whose password is being tried).
            let acted = if crate::classify::names_only(a) {
                "was the name of a sign-in attempt"
            } else {
                "acted"
            };
            let anon: Vec<&str> = categories
                .iter()
                .map(String::as_str)
                .filter(|c| crate::enrich::ANONYMISING.contains(c))
                .collect();
            let d = &self.cfg.anonymous_ip;
            if !anon.is_empty() && self.on(d, a) && self.may_fire(st, format!("anon|{ip}"), t) {
                let summary = format!(
                    "{who} {acted} through an anonymizing service ({}): {}",
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
                    "{who} {acted} from an address on a threat-intelligence list: {}",
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
    }
}
