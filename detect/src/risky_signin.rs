//! Logon from a risky IP address: a successful sign-in — to the console, to the Identity Center
//! portal or its command-line tokens, or a federation into a role (SAML, web identity) — from an address the intelligence
//! feeds put in a risk category (Tor, VPN, proxy, hosting, malicious), or whose network is a
//! hosting provider's or one configured as risky (see [`crate::network`]). No baseline: the first
//! sign-in of a brand-new identity counts. Tuned apart from the anomaly detections, which judge
//! any activity from anonymous or malicious addresses.

use serde::{Deserialize, Serialize};
use trailguard_common::contract::{ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::Activity;

use crate::policy::{allowed, requested, who, AlertBuilder, EventPolicy, PolicyMeta};
use trailguard_common::contract::kinds;

/// Logon from a risky IP address.
pub const RISKY_SIGNIN: PolicyMeta<'static> = PolicyMeta {
    id: "risky-ip-signin",
    name: "Logon from a risky IP address",
    kind: AlertKind::ActivityPolicy,
};

/// The calls that are a sign-in or a federation into AWS, by event source.
const SIGNINS: &[(&str, &str)] = &[
    ("signin.amazonaws.com", "ConsoleLogin"),
    // Identity Center's sign-in: the user authenticated to the portal.
    ("signin.amazonaws.com", "UserAuthentication"),
    // Identity Center: the portal user opened an account's role.
    ("sso.amazonaws.com", "Federate"),
    ("sts.amazonaws.com", "AssumeRoleWithSAML"),
    ("sts.amazonaws.com", "AssumeRoleWithWebIdentity"),
    ("sts.amazonaws.com", "GetFederationToken"),
    // Identity Center's command-line door: a role's credentials fetched with the portal
    // token, and the token itself issued (a device sign-in completed, a cached token
    // refreshed). A token stolen from a laptop's cache, or a device code phished, is used so.
    ("sso.amazonaws.com", "GetRoleCredentials"),
    ("sso-oauth.amazonaws.com", "CreateToken"),
];

/// Settings of `risky-ip-signin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskySigninConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// The intelligence categories that make an address risky (`intel.lists[].category`).
    pub categories: Vec<String>,
    /// Severity of its alerts; `malicious` is always high.
    pub severity: Severity,
    /// Principal ARNs, names, session roles or actor ids it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request (default: notify the security team).
    pub actions: Vec<ActionKind>,
}

impl Default for RiskySigninConfig {
    fn default() -> Self {
        RiskySigninConfig {
            enabled: true,
            // Every risk an address can carry: all the categories but the organization's own.
            categories: crate::enrich::CATEGORIES
                .iter()
                .filter(|c| **c != "corporate")
                .map(|c| c.to_string())
                .collect(),
            severity: Severity::Medium,
            allow_principals: Vec::new(),
            actions: vec![ActionKind::Notify],
        }
    }
}

/// The policy with its settings.
pub struct RiskySignin {
    cfg: RiskySigninConfig,
}

impl RiskySignin {
    /// The policy with its settings.
    pub fn new(cfg: RiskySigninConfig) -> Self {
        RiskySignin { cfg }
    }

    /// An alert when `a` is a successful sign-in from a risky address.
    pub fn judge(&self, a: &Activity) -> Option<Alert> {
        if !self.cfg.enabled
            || !a.outcome.is_success()
            || !SIGNINS.contains(&(a.event_source.as_str(), a.event_name.as_str()))
        {
            return None;
        }
        let ip = a.source_ip?;
        let categories = &a.enrichment.ip_categories;
        // The organization's own egress (a corporate VPN) is not a risk.
        if categories.iter().any(|c| c == "corporate") {
            return None;
        }
        // Workloads federate from cloud hosts (CI runners, Kubernetes pods): for web identity
        // and federation tokens a hosting address is no risk.
        let workload = matches!(
            a.event_name.as_str(),
            "AssumeRoleWithWebIdentity" | "GetFederationToken"
        );
        // People run the command line on AWS too (CloudShell, WorkSpaces, development
        // instances): for its token calls AWS's own networks are no risk; rented servers are.
        let on_aws = matches!(a.event_name.as_str(), "GetRoleCredentials" | "CreateToken")
            && crate::exposure::on_aws_network(a);
        let risky: Vec<&str> = categories
            .iter()
            .map(String::as_str)
            .filter(|c| self.cfg.categories.iter().any(|x| x == c))
            .filter(|c| !((workload || on_aws) && *c == "hosting"))
            .collect();
        if risky.is_empty() || allowed(&self.cfg.allow_principals, a) {
            return None;
        }
        let severity = if risky.contains(&"malicious") {
            Severity::High
        } else {
            self.cfg.severity
        };
        let how = match a.event_name.as_str() {
            "ConsoleLogin" => "signed in to the console",
            "UserAuthentication" => "signed in to the Identity Center portal",
            "Federate" => "opened an account through Identity Center",
            "GetFederationToken" => "took federation credentials",
            "GetRoleCredentials" => "took a role's credentials through Identity Center",
            "CreateToken" => "was issued an Identity Center token (command line or device sign-in)",
            _ => "federated into a role",
        };
        let network = match &a.enrichment.network {
            Some(n) => format!(
                " (AS{}{})",
                n.asn,
                n.organization
                    .as_deref()
                    .map(|o| format!(" {o}"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let summary = format!(
            "{} {how} from a {} address{network}",
            who(a),
            risky.join(", ")
        );
        let alert = AlertBuilder::about(&RISKY_SIGNIN, a, severity)
            .entity(Entity {
                kind: kinds::PRINCIPAL.into(),
                id: a.actor_key().into_owned(),
            })
            .evidence(vec![a.id.clone()], summary)
            .mitre((
                "Initial Access",
                "T1078.004",
                "Valid Accounts: Cloud Accounts",
            ))
            .actions(requested(&self.cfg.actions, a))
            .id_from(&[RISKY_SIGNIN.id, a.id.as_str(), &ip.to_string()]);
        Some(alert)
    }
}

impl EventPolicy for RiskySignin {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![&RISKY_SIGNIN]
    }

    fn evaluate(&self, activity: &Activity, alerts: &mut Vec<Alert>) {
        alerts.extend(self.judge(activity));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signin(name: &str, source: &str, categories: &[&str], failed: bool) -> Activity {
        let mut record = serde_json::json!({
            "eventTime": "2024-06-02T19:41:40Z", "eventSource": source, "eventName": name,
            "eventType": "AwsConsoleSignIn", "awsRegion": "us-east-1",
            "recipientAccountId": "187901811700", "sourceIPAddress": "185.220.101.4",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::187901811700:user/alice",
                "userName": "alice", "accountId": "187901811700"},
            "responseElements": {"ConsoleLogin": if failed { "Failure" } else { "Success" }},
        });
        if failed {
            record["errorMessage"] = "Failed authentication".into();
        }
        let mut a = trailguard_ingest::normalize::normalize(&record.to_string()).unwrap();
        a.enrichment_mut().ip_categories = categories.iter().map(|c| c.to_string()).collect();
        a
    }

    #[test]
    fn a_sign_in_from_tor_or_a_malicious_address_alerts() {
        let policy = RiskySignin::new(RiskySigninConfig::default());
        let tor = policy.judge(&signin(
            "ConsoleLogin",
            "signin.amazonaws.com",
            &["tor"],
            false,
        ));
        let tor = tor.expect("a console sign-in over Tor");
        assert_eq!(tor.severity, Severity::Medium);
        assert!(
            tor.evidence.summary.contains("tor address"),
            "{}",
            tor.evidence.summary
        );
        let bad = policy.judge(&signin(
            "ConsoleLogin",
            "signin.amazonaws.com",
            &["hosting", "malicious"],
            false,
        ));
        assert_eq!(bad.map(|a| a.severity), Some(Severity::High));
        let saml = signin("AssumeRoleWithSAML", "sts.amazonaws.com", &["vpn"], false);
        assert!(policy.judge(&saml).is_some());
        // A CI runner federating from a cloud host is no risk; from Tor it is.
        let ci = signin(
            "AssumeRoleWithWebIdentity",
            "sts.amazonaws.com",
            &["hosting"],
            false,
        );
        assert!(policy.judge(&ci).is_none());
        let ci = signin(
            "AssumeRoleWithWebIdentity",
            "sts.amazonaws.com",
            &["hosting", "tor"],
            false,
        );
        assert!(policy.judge(&ci).is_some());
    }

    #[test]
    fn identity_center_tokens_taken_from_a_rented_server_alert() {
        // The command line's door to Identity Center: a cached token refreshed, a device
        // sign-in completed, a role's credentials fetched — from a VPS, as a stolen token is.
        let policy = RiskySignin::new(RiskySigninConfig::default());
        let vps = |name: &str, source: &str, asn: u32| {
            let mut a = signin(name, source, &["hosting"], false);
            a.enrichment_mut().network = Some(trailguard_common::contract::Network {
                asn,
                organization: Some("hosting".into()),
            });
            a
        };
        for (name, source) in [
            ("GetRoleCredentials", "sso.amazonaws.com"),
            ("CreateToken", "sso-oauth.amazonaws.com"),
        ] {
            let alert = policy.judge(&vps(name, source, 14061));
            let alert = alert.unwrap_or_else(|| panic!("{name} from DigitalOcean"));
            assert!(
                alert.evidence.summary.contains("Identity Center"),
                "{}",
                alert.evidence.summary
            );
            // From AWS's own networks (CloudShell, WorkSpaces, a development instance) it
            // is where people work.
            assert!(policy.judge(&vps(name, source, 16509)).is_none(), "{name}");
            // Refused (a device code not yet approved, an expired token): nothing taken.
            let mut refused = vps(name, source, 14061);
            refused.outcome.status = trailguard_common::contract::OutcomeStatus::Failure;
            assert!(policy.judge(&refused).is_none(), "{name}");
        }
        // The portal's other reads are not a door.
        assert!(policy
            .judge(&vps("ListAccounts", "sso.amazonaws.com", 14061))
            .is_none());
    }

    #[test]
    fn failures_clean_addresses_corporate_egress_and_other_calls_do_not() {
        let policy = RiskySignin::new(RiskySigninConfig::default());
        assert!(policy
            .judge(&signin(
                "ConsoleLogin",
                "signin.amazonaws.com",
                &["tor"],
                true
            ))
            .is_none());
        assert!(policy
            .judge(&signin("ConsoleLogin", "signin.amazonaws.com", &[], false))
            .is_none());
        assert!(policy
            .judge(&signin(
                "ConsoleLogin",
                "signin.amazonaws.com",
                &["vpn", "corporate"],
                false
            ))
            .is_none());
        assert!(policy
            .judge(&signin("ListBuckets", "s3.amazonaws.com", &["tor"], false))
            .is_none());
        let narrow = RiskySignin::new(RiskySigninConfig {
            categories: vec!["tor".into()],
            ..RiskySigninConfig::default()
        });
        assert!(narrow
            .judge(&signin(
                "ConsoleLogin",
                "signin.amazonaws.com",
                &["vpn"],
                false
            ))
            .is_none());
    }
}
