//! Every policy's settings, aggregated: the `[policies]` table. Each policy's own settings type
//! lives beside the policy; this module only gathers them and checks them together.

use serde::{Deserialize, Serialize};

use crate::bucket_public::{BucketPublic, BucketPublicConfig};
use crate::cloudtrail::CloudTrailChanges;
use crate::fold::FoldConfig;
use crate::policy::{EventPolicy, SimplePolicyConfig};
use crate::signin::SigninFailuresConfig;
use crate::templates::Templates;

/// Every policy's settings. Each table is optional in the file; omitted keys keep defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    /// Admin console sign-in failures.
    pub console_signin_failures: SigninFailuresConfig,
    /// CloudTrail configuration changes (stopping or deleting a trail is always `high`).
    pub cloudtrail_changes: SimplePolicyConfig,
    /// An account CloudTrail does not record (see [`crate::trail_coverage`]).
    pub trail_coverage: crate::trail_coverage::TrailCoverageConfig,
    /// S3 bucket is publicly accessible.
    pub s3_bucket_public: BucketPublicConfig,
    /// S3 bucket shared with an external account (see [`crate::bucket_shared`]).
    pub s3_external_grantee: crate::bucket_shared::BucketSharedConfig,
    /// Logon from a risky IP address (see [`crate::risky_signin`]).
    pub risky_ip_signin: crate::risky_signin::RiskySigninConfig,
    /// Sharing out, defence blinding, root use, credentials for another user (see
    /// [`crate::exposure`]).
    pub exposure: crate::exposure::ExposurePolicies,
    /// The activity policy templates, by id (see [`crate::templates`]).
    pub templates: crate::templates::TemplatesConfig,
    /// The anomaly detections (see [`crate::anomaly`]).
    pub anomaly: crate::anomaly::AnomalyConfig,
    /// Custom policies (see [`crate::custom`]).
    pub custom: Vec<crate::custom::CustomPolicyConfig>,
    /// Sigma rules (see [`crate::sigma`]): loaded from their files at start-up.
    pub sigma: crate::sigma::SigmaConfig,
    /// Folding of repeated event-driven alerts (see [`crate::fold`]).
    pub fold: FoldConfig,
    /// Policy ids that may request destructive actions (every action but `notify`) from a
    /// failed call. By default a failed call only notifies: anyone can cause an
    /// `AccessDenied` on someone else's bucket, or a failed console sign-in for a known user
    /// name, and neither must make remediate act.
    pub act_on_failed_activity: Vec<String>,
}

impl PoliciesConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        crate::templates::validate(&self.templates)?;
        self.anomaly.validate()?;
        crate::custom::validate(&self.custom)?;
        if self.fold.period > std::time::Duration::from_secs(30 * 86_400) {
            return Err(trailguard_common::Error::config(
                "policies.fold.period",
                "must be at most 30 days",
            ));
        }
        let s = &self.console_signin_failures;
        if s.threshold < 2 {
            return Err(trailguard_common::Error::config(
                "policies.console_signin_failures.threshold",
                "must be at least 2",
            ));
        }
        if s.window.is_zero() || s.window > std::time::Duration::from_secs(30 * 86_400) {
            return Err(trailguard_common::Error::config(
                "policies.console_signin_failures.window",
                "must be longer than zero and at most 30 days",
            ));
        }
        Ok(())
    }
}

impl PoliciesConfig {
    /// The policies that judge each activity on its own, with their settings, in the order the
    /// detector evaluates them — the one list of them. A new event policy is its own module
    /// (the policy, its `PolicyMeta` and its settings type, a field above) and one line here.
    pub fn event_policies(&self) -> Vec<Box<dyn EventPolicy>> {
        vec![
            Box::new(CloudTrailChanges::new(self.cloudtrail_changes.clone())),
            Box::new(crate::trail_coverage::TrailCoverage::new(
                self.trail_coverage.clone(),
            )),
            Box::new(BucketPublic::new(self.s3_bucket_public.clone())),
            Box::new(crate::bucket_shared::BucketShared::new(
                self.s3_external_grantee.clone(),
            )),
            Box::new(Templates::new(&self.templates)),
            Box::new(crate::risky_signin::RiskySignin::new(
                self.risky_ip_signin.clone(),
            )),
            Box::new(crate::exposure::Exposure::new(self.exposure.clone())),
        ]
    }
}

/// Every built-in policy, by what its alerts say about it (the documentation's policy tables
/// are checked against this list): the event policies, then the windowed and baseline ones,
/// which a new detection of that kind adds here. Custom policies are the user's and not listed.
pub fn builtin_policies() -> Vec<&'static crate::policy::PolicyMeta<'static>> {
    let mut all = vec![&crate::signin::SIGNIN_FAILURES];
    let every = PoliciesConfig::default().event_policies();
    all.extend(every.iter().flat_map(|p| p.policies()));
    all.extend([
        &crate::anomaly::ANONYMOUS_IP,
        &crate::anomaly::SUSPICIOUS_IP,
        &crate::anomaly::INFREQUENT_COUNTRY,
        &crate::anomaly::IMPOSSIBLE_TRAVEL,
        &crate::anomaly::UNUSUAL_ADMIN,
        &crate::anomaly::STORAGE_DELETION,
        &crate::anomaly::UNUSUAL_DOWNLOAD,
        &crate::anomaly::VM_DELETION,
        &crate::anomaly::VM_CREATION,
        &crate::anomaly::FAILED_LOGINS,
        &crate::anomaly::DORMANT_PRINCIPAL,
        &crate::anomaly::UNUSUAL_API,
        &crate::anomaly::DISCOVERY_BURST,
        &crate::anomaly::CREDENTIAL_BURST,
        &crate::anomaly::MFA_SKIPPED,
        &crate::anomaly::ATTACK_SEQUENCE,
        &crate::facts::TERMINATED_USER,
        &crate::facts::UNUSUAL_REGION,
    ]);
    all
}

#[cfg(test)]
mod tests {
    #[test]
    fn policy_ids_are_unique() {
        let mut ids: Vec<&str> = super::builtin_policies().iter().map(|p| p.id).collect();
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
        assert_eq!(
            count, 39,
            "6 built-in, 7 exposure, 8 templates, 18 anomaly detections"
        );
    }
}
