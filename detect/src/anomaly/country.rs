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
            let evidence = without_documents(a);
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

/// `a` without what it asked, answered or touched (its documents and resources): copied
/// field by field rather than cloned whole and emptied, since the documents may hold parsed
/// trees. Every field is named, so one added to the activity is decided on here.
fn without_documents(a: &trailguard_common::Activity) -> trailguard_common::Activity {
    let trailguard_common::Activity {
        schema_version,
        id,
        event_id,
        event_time,
        event_source,
        event_name,
        event_type,
        account_id,
        region,
        partition,
        principal,
        actor,
        source_ip,
        source_host,
        user_agent,
        read_only,
        data_event,
        outcome,
        resources: _,
        request_id,
        request_parameters: _,
        response_elements: _,
        additional_event_data: _,
        enrichment,
        trimmed,
    } = a;
    trailguard_common::Activity {
        schema_version: *schema_version,
        id: id.clone(),
        event_id: event_id.clone(),
        event_time: *event_time,
        event_source: event_source.clone(),
        event_name: event_name.clone(),
        event_type: event_type.clone(),
        account_id: account_id.clone(),
        region: region.clone(),
        partition: partition.clone(),
        principal: principal.clone(),
        actor: actor.clone(),
        source_ip: *source_ip,
        source_host: source_host.clone(),
        user_agent: user_agent.clone(),
        read_only: *read_only,
        data_event: *data_event,
        outcome: outcome.clone(),
        resources: Vec::new(),
        request_id: request_id.clone(),
        request_parameters: None,
        response_elements: None,
        additional_event_data: None,
        enrichment: enrichment.clone(),
        trimmed: trimmed.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_countrys_evidence_is_the_activity_without_its_documents() {
        let record = serde_json::json!({
            "eventTime": "2026-01-02T03:04:05Z", "eventSource": "s3.amazonaws.com",
            "eventName": "PutBucketPolicy", "awsRegion": "eu-west-1",
            "recipientAccountId": "111111111111", "sourceIPAddress": "198.51.100.7",
            "userAgent": "aws-cli/2.15.0", "eventID": "00000000-0000-4000-8000-000000000001",
            "requestID": "R1", "eventType": "AwsApiCall", "readOnly": false,
            "errorCode": "AccessDenied", "errorMessage": "no",
            "userIdentity": {"type": "AssumedRole", "arn": "arn:aws:sts::111111111111:assumed-role/Dev/alice",
                "accountId": "111111111111", "accessKeyId": "ASIAEXAMPLE",
                "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::111111111111:role/Dev"}}},
            "requestParameters": {"bucketName": "b", "policy": "{}"},
            "responseElements": {"x": 1},
            "additionalEventData": {"y": 2},
            "resources": [{"ARN": "arn:aws:s3:::b", "type": "AWS::S3::Bucket"}],
        });
        let mut a = match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        };
        a.enrichment_mut().ip_categories = vec!["vpn".into()];
        a.trimmed = vec!["requestParameters.policy".into()];
        // Parsed already, as a policy may have left it.
        assert!(a.request_parameters.as_deref().is_some());
        assert!(!a.resources.is_empty() && a.response_elements.is_some());
        let mut expected = a.clone();
        expected.request_parameters = None;
        expected.response_elements = None;
        expected.additional_event_data = None;
        expected.resources = Vec::new();
        assert_eq!(without_documents(&a), expected);
    }
}
