//! Activity from a country the principal has not used before (and, unless sensitivity is high,
//! rare for the organization), after the principal's learning period.

use trailguard_common::contract::{Alert, Geo, Severity};

use super::{Anomalies, Org, PrincipalState, Seen, Sensitivity, Who, INFREQUENT_COUNTRY};

/// Actors the organization must have (on this partition) before "no one acts from there"
/// judges a new actor's country.
const ORG_KNOWN: u32 = 20;

impl Anomalies {
    /// Infrequent country; learns the countries the principal acts from (at most 8, least
    /// recently seen evicted).
    pub(super) fn country(
        &self,
        st: &mut PrincipalState,
        org: &mut Org,
        seen: &Seen<'_>,
        geo: Option<&Geo>,
        out: &mut Vec<Alert>,
    ) {
        let Seen {
            a,
            t,
            learned,
            corporate,
            ..
        } = *seen;
        let who = Who(a);
        if let Some(country) = geo.and_then(|g| g.country.clone()).filter(|_| !corporate) {
            let known = st.countries.iter().any(|(c, _)| *c == country);
            let d = &self.cfg.infrequent_country;
            let org_count = org.countries.get(&country).copied().unwrap_or(0);
            // While it learns, an actor is judged by the organization alone: a country no one
            // here acts from, once enough actors are known to say so.
            let unseen_by_org = !learned && org_count == 0 && org.principals >= ORG_KNOWN;
            if !known && (unseen_by_org || (learned && !st.countries.is_empty())) && self.on(d, a) {
                let org_rare = org_count < 2.max(org.principals / 100);
                let fire = match self.sens(d) {
                    Sensitivity::High => true,
                    Sensitivity::Medium => org_rare,
                    Sensitivity::Low => org_count == 0,
                };
                if fire && self.may_fire(st, format!("country|{country}"), t) {
                    let usual: Vec<&str> = st.countries.iter().map(|(c, _)| c.as_str()).collect();
                    let summary = if learned {
                        format!(
                            "{who} acted from {country}, a country it has not used before (usually {}){}: {}",
                            usual.join(", "),
                            if org_rare { "; rare for the organization too" } else { "" },
                            a.event_name
                        )
                    } else {
                        format!(
                            "{who}, still new, acted from {country}, where no one in the organization acts: {}",
                            a.event_name
                        )
                    };
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
                    while st.countries.len() >= self.cfg.tuning.countries_remembered.max(1) {
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
    }
}
