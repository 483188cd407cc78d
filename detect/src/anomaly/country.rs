//! Activity from a country the principal has not used before (and, unless sensitivity is high,
//! rare for the organization), after the principal's learning period.

use trailguard_common::contract::{Alert, Geo, Severity};

use super::{
    Anomalies, OrgView, PendingCountry, PrincipalState, Seen, Sensitivity, Who, INFREQUENT_COUNTRY,
};
use crate::census;

/// Actors the organization must have before "no one acts from there" judges a new actor's
/// country.
const ORG_KNOWN: u64 = 20;

impl Anomalies {
    /// Infrequent country; learns the countries the principal acts from (at most
    /// `countries_remembered`, least recently seen evicted). A country new to the actor is
    /// judged against the organization's counts of the days before (see [`crate::census`]):
    /// at once when they are complete, else held in `st.pending` for
    /// [`Anomalies::decide_country`]. Returns the country when the activity is the actor's
    /// first from it that day (for the organization's counts).
    pub(super) fn country(
        &self,
        st: &mut PrincipalState,
        org: &mut OrgView<'_>,
        seen: &Seen<'_>,
        geo: Option<&Geo>,
        out: &mut Vec<Alert>,
    ) -> Option<String> {
        let Seen {
            a,
            t,
            learned,
            corporate,
            ..
        } = *seen;
        let country = geo.and_then(|g| g.country.clone()).filter(|_| !corporate)?;
        let known = st.countries.iter().any(|(c, _)| *c == country);
        let d = &self.cfg.infrequent_country;
        // A learning actor is judged by the organization alone; a learned one against its
        // own countries too.
        if !known && (!learned || !st.countries.is_empty()) && self.on(d, a) {
            // The alert needs who, where and when; not the request or what it touched.
            let mut evidence = a.clone();
            evidence.request_parameters = None;
            evidence.response_elements = None;
            evidence.additional_event_data = None;
            evidence.resources = Vec::new();
            let pending = PendingCountry {
                offset: org.offset.unwrap_or(0),
                usual: st.countries.iter().map(|(c, _)| c.clone()).collect(),
                country: country.clone(),
                learned,
                activity: Box::new(evidence),
            };
            if learned && self.sens(d) == Sensitivity::High {
                out.extend(self.judge_country(st, pending, None));
            } else if org.complete_through >= census::day_of(t) * census::DAY {
                let counts = self.org_counts(org.census, &pending);
                out.extend(self.judge_country(st, pending, Some(counts)));
            } else if !st.quiet.iter().any(|(k, until)| {
                *until > t && k.strip_prefix("country|") == Some(country.as_str())
            }) {
                if st.pending.len() >= super::PENDING_MAX {
                    st.pending.remove(0);
                }
                super::room_for_one(&mut st.pending);
                st.pending.push(pending);
            }
        }
        let first_today = st
            .countries
            .iter()
            .find(|(c, _)| *c == country)
            .is_none_or(|(_, last)| census::day_of(*last) < census::day_of(t));
        let counted = first_today.then(|| country.clone());
        match st.countries.iter_mut().find(|(c, _)| *c == country) {
            Some(entry) => entry.1 = entry.1.max(t),
            None => {
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
                super::room_for_one(&mut st.countries);
                st.countries.push((country, t));
            }
        }
        counted
    }

    /// The organization's counts for `p`'s country over the days before its activity.
    fn org_counts(&self, census: &census::Census, p: &PendingCountry) -> census::OrgCounts {
        census.counts(
            &p.country,
            census::day_of(p.time()),
            i64::from(self.cfg.tuning.org_window_days),
        )
    }

    /// Judges a held country now that the organization's counts before it are complete.
    pub fn decide_country(
        &self,
        st: &mut PrincipalState,
        p: PendingCountry,
        census: &census::Census,
    ) -> Option<Alert> {
        let counts = self.org_counts(census, &p);
        self.judge_country(st, p, Some(counts))
    }

    /// The infrequent-country alert for `p`, if the organization's `counts` (`None`: not
    /// needed, at high sensitivity) and the suppression allow.
    fn judge_country(
        &self,
        st: &mut PrincipalState,
        p: PendingCountry,
        counts: Option<census::OrgCounts>,
    ) -> Option<Alert> {
        let d = &self.cfg.infrequent_country;
        let a = &*p.activity;
        let country = &p.country;
        let c = counts.unwrap_or_default();
        let org_rare = counts.is_some() && c.country < 2.max(c.all / 100);
        let fire = if !p.learned {
            counts.is_some() && c.country == 0 && c.actors >= ORG_KNOWN
        } else {
            match self.sens(d) {
                Sensitivity::High => true,
                Sensitivity::Medium => org_rare,
                Sensitivity::Low => counts.is_some() && c.country == 0,
            }
        };
        if !fire || !self.may_fire(st, format!("country|{country}"), p.time()) {
            return None;
        }
        let who = Who(a);
        let summary = if p.learned {
            format!(
                "{who} acted from {country}, a country it has not used before (usually {}){}: {}",
                p.usual.join(", "),
                if org_rare {
                    "; rare for the organization too"
                } else {
                    ""
                },
                a.event_name
            )
        } else {
            format!(
                "{who}, still new, acted from {country}, where no one in the organization acts: {}",
                a.event_name
            )
        };
        Some(self.alert(
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
        ))
    }
}
