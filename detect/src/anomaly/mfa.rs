//! A console sign-in without MFA by an actor that has always signed in with it: the password
//! alone was enough, which is what a stolen password looks like (or MFA removed first).

use serde_json::Value;
use trailguard_common::contract::{Alert, Severity};

use super::{Anomalies, PrincipalState, Seen, Who, MFA_SKIPPED};

/// Sign-ins with MFA an actor must have made, and none without, before one without alerts.
const ALWAYS: u16 = 3;

impl Anomalies {
    /// Counts the actor's console sign-ins with and without MFA; alerts on the first without
    /// after at least [`ALWAYS`] with.
    pub(super) fn mfa(&self, st: &mut PrincipalState, seen: &Seen<'_>, out: &mut Vec<Alert>) {
        let a = seen.a;
        if a.event_source != "signin.amazonaws.com"
            || a.event_name != "ConsoleLogin"
            || !a.outcome.is_success()
        {
            return;
        }
        let used = a
            .additional_event_data
            .as_ref()
            .and_then(|d| d.get("MFAUsed"))
            .and_then(Value::as_str);
        match used {
            Some(u) if u.eq_ignore_ascii_case("yes") => {
                st.mfa_signins = st.mfa_signins.saturating_add(1);
            }
            Some(u) if u.eq_ignore_ascii_case("no") => {
                let always = st.mfa_signins >= ALWAYS && st.nomfa_signins == 0;
                st.nomfa_signins = st.nomfa_signins.saturating_add(1);
                let d = &self.cfg.mfa_skipped;
                if !always || !self.on(d, a) || !self.may_fire(st, "mfa".into(), seen.t) {
                    return;
                }
                let severity = if a.principal.kind == "Root" {
                    Severity::High
                } else {
                    Severity::Medium
                };
                let summary = format!(
                    "{} signed in to the console without MFA, after {} sign-ins that all used it",
                    Who(a),
                    st.mfa_signins
                );
                out.push(self.alert(
                    a,
                    &MFA_SKIPPED,
                    d,
                    severity,
                    summary,
                    vec![a.id.clone()],
                    (
                        "Defense Evasion",
                        "T1556.006",
                        "Modify Authentication Process: Multi-Factor Authentication",
                    ),
                ));
            }
            // Federated and Identity Center sign-ins say nothing of MFA here.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AnomalyConfig;
    use super::*;

    fn signin(t: i64, mfa: &str) -> trailguard_common::Activity {
        let time = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000 + t, 0)
            .unwrap_or_default();
        let record = serde_json::json!({
            "eventTime": time.to_rfc3339(), "eventSource": "signin.amazonaws.com",
            "eventName": "ConsoleLogin", "eventType": "AwsConsoleSignIn", "awsRegion": "us-east-1",
            "recipientAccountId": "111111111111", "sourceIPAddress": "71.253.10.20",
            "eventID": format!("00000000-0000-4000-8000-{:012}", t.unsigned_abs()),
            "userIdentity": {"type": "IAMUser", "userName": "pat", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/pat", "principalId": "AIDAPAT"},
            "responseElements": {"ConsoleLogin": "Success"},
            "additionalEventData": {"MFAUsed": mfa, "LoginTo": "https://console.aws.amazon.com/"},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_sign_in_without_mfa_after_always_with_it() {
        let an = Anomalies::new(AnomalyConfig::default(), false);
        let mut census = crate::census::Census::default();
        let ids = |alerts: Vec<Alert>| -> usize {
            alerts
                .iter()
                .filter(|a| a.policy_id == "console-signin-without-mfa")
                .count()
        };
        // Twice with MFA is not yet "always".
        let mut st = PrincipalState::default();
        for day in 0..2 {
            an.observe(&mut st, &mut census, &signin(day * 86_400, "Yes"));
        }
        assert_eq!(
            ids(an.observe(&mut st, &mut census, &signin(3 * 86_400, "No"))),
            0
        );
        // Three times with MFA, then without: once.
        let mut st = PrincipalState::default();
        for day in 0..3 {
            an.observe(&mut st, &mut census, &signin(day * 86_400, "Yes"));
        }
        assert_eq!(
            ids(an.observe(&mut st, &mut census, &signin(3 * 86_400, "No"))),
            1
        );
        assert_eq!(
            ids(an.observe(&mut st, &mut census, &signin(5 * 86_400, "No"))),
            0
        );
        // Someone who never uses MFA is not "always with it".
        let mut st = PrincipalState::default();
        for day in 0..5 {
            assert_eq!(
                ids(an.observe(&mut st, &mut census, &signin(day * 86_400, "No"))),
                0
            );
        }
    }
}
