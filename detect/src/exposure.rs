//! What an attacker does with stolen credentials that needs no baseline to recognize: sharing
//! data out of the organization, blinding the defenders, acting as root, and planting
//! credentials for another user. Each is rare in ordinary work and decisive in an incident, so
//! one record is enough.
//!
//! - `resource-shared-out`: an EBS snapshot, an AMI or an RDS (cluster) snapshot made public
//!   or shared with an account that is neither the resource's own nor trusted (MITRE T1537);
//!   so too a Redshift snapshot or datashare, a DynamoDB export to another account's bucket, a
//!   backup copied (or a plan copying backups) to another account's vault, a RAM resource
//!   share and a Lake Formation grant.
//! - `defense-evasion`: GuardDuty, AWS Config, Security Hub, Route 53 Resolver query logging,
//!   Detective, Access Analyzer, Macie or Inspector switched off or muted, a KMS key scheduled
//!   for deletion, the account leaving its organization (T1562). CloudTrail itself is
//!   `cloudtrail-changes`'s, VPC flow logs `vpn-vpc-changes`'.
//! - `root-activity`: the root user's credentials used for anything but signing in (T1078.004).
//! - `credentials-for-another-user`: an access key or console password created or changed for
//!   a user other than the caller (T1098.001).
//!
//! - `access-granted-outside`: an EKS cluster's access entry, a role's trust policy, a Lambda function's or layer's
//!   permission, or the resource policy of a secret, KMS key, ECR repository, SQS queue, SNS
//!   topic or EventBridge bus opened to everyone or to an account outside (T1098, T1546); a
//!   Lambda function URL without authentication.
//! - `instance-credentials-outside-aws`: an EC2 instance's or ECS task's role credentials (a
//!   session named after the instance or task) used from a network that is not AWS's: taken
//!   off the instance or out of the task (T1552.005). Needs AS data (`geo.asn_databases`).
//! - `outside-key-encryption`: the account's snapshots, volumes, images, buckets or objects
//!   put under a KMS key of another account (T1486): ransom by key.
//!
//! Failed attempts raise them too, one severity lower (a probe for what stolen credentials
//! may do), and request nothing but notifications.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{
    ActionKind, Alert, AlertKind, Entity, RequestedAction, Severity, Target,
};
use trailguard_common::s3::items;
use trailguard_common::Activity;

use crate::classify::{acts_itself, requested_change};
use crate::policy::who as who_acted;
use crate::policy::{allowed, requested, who, AlertBuilder, EventPolicy, PolicyMeta};
use trailguard_common::contract::kinds;

/// A snapshot, image, export or share that hands data to another account.
pub const RESOURCE_SHARED_OUT: PolicyMeta<'static> = PolicyMeta {
    id: "resource-shared-out",
    name: "Data or resource shared outside the organization",
    kind: AlertKind::ActivityPolicy,
};
/// Security monitoring switched off or muted.
pub const DEFENSE_EVASION: PolicyMeta<'static> = PolicyMeta {
    id: "defense-evasion",
    name: "Security monitoring disabled",
    kind: AlertKind::ActivityPolicy,
};
/// The root user's credentials used.
pub const ROOT_ACTIVITY: PolicyMeta<'static> = PolicyMeta {
    id: "root-activity",
    name: "Root credentials used",
    kind: AlertKind::ActivityPolicy,
};
/// Access to a role or resource granted to everyone or to another account.
pub const ACCESS_GRANTED_OUTSIDE: PolicyMeta<'static> = PolicyMeta {
    id: "access-granted-outside",
    name: "Access granted outside the organization",
    kind: AlertKind::ActivityPolicy,
};
/// An instance's credentials used outside AWS.
pub const INSTANCE_CREDENTIALS_OUTSIDE: PolicyMeta<'static> = PolicyMeta {
    id: "instance-credentials-outside-aws",
    name: "Instance credentials used outside AWS",
    kind: AlertKind::ActivityPolicy,
};
/// The account's data encrypted with a key another account holds.
pub const OUTSIDE_KEY_ENCRYPTION: PolicyMeta<'static> = PolicyMeta {
    id: "outside-key-encryption",
    name: "Data encrypted with another account's key",
    kind: AlertKind::ActivityPolicy,
};
/// Credentials created for another user.
pub const CREDENTIALS_FOR_ANOTHER: PolicyMeta<'static> = PolicyMeta {
    id: "credentials-for-another-user",
    name: "Credentials created for another user",
    kind: AlertKind::ActivityPolicy,
};

/// Settings of one of these policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExposureConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts (`defense-evasion`: each call's own when unset).
    pub severity: Option<Severity>,
    /// Principal ARNs, names, session roles or actor ids it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request.
    pub actions: Vec<ActionKind>,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        ExposureConfig {
            enabled: true,
            severity: None,
            allow_principals: Vec::new(),
            actions: vec![ActionKind::Notify],
        }
    }
}

/// Settings of `access-granted-outside`, and of `outside-key-encryption` (whose default
/// severity is high).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrantedOutsideConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts (default: high when public, medium for another account).
    pub severity: Option<Severity>,
    /// Principal ARNs, names, session roles or actor ids it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request.
    pub actions: Vec<ActionKind>,
    /// Accounts that are not outside: the organization's other accounts, vendors trusted on
    /// purpose. The resource's own account never is.
    pub trusted_accounts: Vec<String>,
}

impl Default for GrantedOutsideConfig {
    fn default() -> Self {
        GrantedOutsideConfig {
            enabled: true,
            severity: None,
            allow_principals: Vec::new(),
            actions: vec![ActionKind::Notify],
            trusted_accounts: Vec::new(),
        }
    }
}

/// Settings of `instance-credentials-outside-aws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceCredentialsConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts (default high).
    pub severity: Option<Severity>,
    /// Principal ARNs, names, session roles or actor ids it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request (`require_sign_in` revokes the role's older sessions:
    /// the thief's copy stops working, the instances fetch new credentials within the hour).
    pub actions: Vec<ActionKind>,
    /// AS numbers instance credentials may be used from besides AWS's own ([`AWS_ASNS`]): a
    /// proxy or on-premises egress instances route through.
    pub trusted_asns: Vec<u32>,
}

impl Default for InstanceCredentialsConfig {
    fn default() -> Self {
        InstanceCredentialsConfig {
            enabled: true,
            severity: None,
            allow_principals: Vec::new(),
            actions: vec![ActionKind::Notify],
            trusted_asns: Vec::new(),
        }
    }
}

/// Amazon's AS numbers: an instance's calls come from one of them (its public address), or
/// from a private address through a VPC endpoint (no AS at all).
pub const AWS_ASNS: &[u32] = &[
    16509, 14618, 8987, 7224, 9059, 10124, 17493, 38895, 39111, 58588, 62785, 135630,
];

/// Whether `a` came from one of Amazon's networks ([`AWS_ASNS`]), as the AS database says.
pub fn on_aws_network(a: &Activity) -> bool {
    a.enrichment
        .network
        .as_ref()
        .is_some_and(|n| AWS_ASNS.contains(&n.asn))
}

/// Whether `session` is what EC2 names an instance profile's session: the instance id.
fn is_instance_id(session: &str) -> bool {
    session.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The service account (`NAMESPACE:NAME`) whose projected token `a` exchanges for a role's
/// credentials: an `AssumeRoleWithWebIdentity` whose identity provider is an EKS cluster's
/// issuer (`oidc.eks.REGION.amazonaws.com/id/…`). Such a token is mounted into one pod; the
/// pod calls from its node (AWS) or through an endpoint.
fn eks_service_account(a: &Activity) -> Option<&str> {
    if a.principal.kind != "WebIdentityUser"
        || a.event_name != "AssumeRoleWithWebIdentity"
        || a.event_source != "sts.amazonaws.com"
    {
        return None;
    }
    let provider = a.principal.principal_id.as_deref()?;
    let host = provider
        .split_once(":oidc-provider/")?
        .1
        .split('/')
        .next()?;
    let eks = host.starts_with("oidc.eks.")
        && (host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn"));
    if !eks {
        return None;
    }
    let name = a.principal.name.as_deref().unwrap_or("?");
    let name = name.strip_prefix("system:serviceaccount:").unwrap_or(name);
    // Named in the summary: the token's subject is the cluster's to write, a forged one need
    // not be short.
    Some(match name.char_indices().nth(128) {
        Some((at, _)) => &name[..at],
        None => name,
    })
}

/// `a`'s address and its network as summaries name them (`AS14061 DigitalOcean`).
fn caller_network(
    a: &Activity,
    network: &trailguard_common::contract::Network,
) -> (String, String) {
    let ip = a.source_ip.map(|ip| ip.to_string()).unwrap_or_default();
    let from = match &network.organization {
        Some(org) => format!("AS{} {org}", network.asn),
        None => format!("AS{}", network.asn),
    };
    (ip, from)
}

/// What an ECS task's role session is named: the task's id, 32 lower-case hex digits (a UUID
/// for tasks of the older ARN format).
fn is_task_id(session: &str) -> bool {
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match session.len() {
        32 => hex(session),
        36 => {
            let parts: Vec<&str> = session.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

/// The calls that choose the KMS key the account's own data is encrypted with: source, name,
/// what is encrypted (`{}` the bucket, when the call names one), and whether it is an object
/// write (many; parsed only when its text names a key ARN).
const ENCRYPTING: &[(&str, &str, &str, bool)] = &[
    (
        "ec2.amazonaws.com",
        "CopySnapshot",
        "a copy of an EBS snapshot",
        false,
    ),
    ("ec2.amazonaws.com", "CopyImage", "a copy of an AMI", false),
    // Only the destination key is read (a partner's ciphertext brought under the account's
    // own key is the account's).
    (
        "kms.amazonaws.com",
        "ReEncrypt",
        "ciphertext of the account's keys again (ReEncrypt)",
        false,
    ),
    (
        "ec2.amazonaws.com",
        "CreateVolume",
        "a new EBS volume",
        false,
    ),
    (
        "ec2.amazonaws.com",
        "ModifyEbsDefaultKmsKeyId",
        "every new EBS volume of the account (its default key)",
        false,
    ),
    (
        "rds.amazonaws.com",
        "CopyDBSnapshot",
        "a copy of an RDS snapshot",
        false,
    ),
    (
        "rds.amazonaws.com",
        "CopyDBClusterSnapshot",
        "a copy of an RDS cluster snapshot",
        false,
    ),
    (
        "s3.amazonaws.com",
        "PutBucketEncryption",
        "every new object of bucket {} (its default encryption)",
        false,
    ),
    // An object copied onto itself: re-encrypted in place. New objects written into another
    // account's bucket under that account's required key are the owner's business.
    (
        "s3.amazonaws.com",
        "CopyObject",
        "an object of bucket {}, in place,",
        true,
    ),
];

/// A `CopyObject` whose source is the object it writes (`x-amz-copy-source`, URL-encoded,
/// `BUCKET/KEY` with an optional leading `/` and `?versionId=`).
fn copied_in_place(params: &Value) -> bool {
    let text = |k: &str| params.get(k).and_then(Value::as_str);
    let (Some(bucket), Some(key), Some(source)) =
        (text("bucketName"), text("key"), text("x-amz-copy-source"))
    else {
        return false;
    };
    let source = percent_decode(source.split('?').next().unwrap_or_default());
    source.trim_start_matches('/') == format!("{bucket}/{key}")
}

/// The KMS key ARNs a request names (`kmsKeyId`, S3's `KMSMasterKeyID` and
/// `x-amz-server-side-encryption-aws-kms-key-id`, in any case, at any depth up to 8).
fn kms_key_arns<'a>(v: &'a Value, depth: usize, out: &mut Vec<&'a str>) {
    if depth > 8 {
        return;
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let named = [
                    "kmskeyid",
                    "kmsmasterkeyid",
                    "x-amz-server-side-encryption-aws-kms-key-id",
                ]
                .iter()
                .any(|n| k.eq_ignore_ascii_case(n));
                match v {
                    Value::String(key)
                        if named && key.starts_with("arn:") && key.contains(":kms:") =>
                    {
                        out.push(key)
                    }
                    _ => kms_key_arns(v, depth + 1, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| kms_key_arns(v, depth + 1, out)),
        _ => {}
    }
}

/// Settings of `resource-shared-out`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedOutConfig {
    /// Evaluate this policy.
    pub enabled: bool,
    /// Severity of its alerts (default high).
    pub severity: Option<Severity>,
    /// Principal ARNs, names, session roles or actor ids it ignores.
    pub allow_principals: Vec<String>,
    /// Governance actions to request.
    pub actions: Vec<ActionKind>,
    /// Accounts that are not outside (the organization's other accounts, partners shared
    /// with on purpose). The resource's own account never is.
    pub trusted_accounts: Vec<String>,
    /// Organizations and organizational units (ARNs) an AMI may be shared with: the
    /// organization's own. Any other is outside.
    pub trusted_organizations: Vec<String>,
}

impl Default for SharedOutConfig {
    fn default() -> Self {
        SharedOutConfig {
            enabled: true,
            severity: None,
            allow_principals: Vec::new(),
            actions: vec![
                ActionKind::Notify,
                ActionKind::UnshareSnapshot,
                ActionKind::UnshareImage,
            ],
            trusted_accounts: Vec::new(),
            trusted_organizations: Vec::new(),
        }
    }
}

/// The `[policies.exposure]` table: one section per policy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExposurePolicies {
    /// `resource-shared-out`.
    pub resource_shared_out: SharedOutConfig,
    /// `defense-evasion`.
    pub defense_evasion: ExposureConfig,
    /// `root-activity`.
    pub root_activity: ExposureConfig,
    /// `credentials-for-another-user`.
    pub credentials_for_another_user: ExposureConfig,
    /// `instance-credentials-outside-aws`.
    pub instance_credentials_outside_aws: InstanceCredentialsConfig,
    /// `access-granted-outside`.
    pub access_granted_outside: GrantedOutsideConfig,
    /// `outside-key-encryption`.
    pub outside_key_encryption: GrantedOutsideConfig,
}

/// What switching a defence off looks like: event source, event name, what it does, its
/// severity, and a condition on the request when the name alone is not enough.
struct Blinding {
    source: &'static str,
    name: &'static str,
    what: &'static str,
    severity: Severity,
    when: fn(&Value) -> bool,
}

fn always(_: &Value) -> bool {
    true
}

/// `enable: false` (GuardDuty's `UpdateDetector`).
fn disables(params: &Value) -> bool {
    params.get("enable").and_then(Value::as_bool) == Some(false)
}

/// Whether any `status` in `v` (an object, or lists of them, at any depth) is `DISABLED`, or
/// any `enable`/`enabled`/`autoEnable` is `false`: the shapes GuardDuty uses for its features
/// and data sources.
fn turns_off(v: &Value) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, v)| match (k.as_str(), v) {
            ("status", Value::String(s)) => s.eq_ignore_ascii_case("DISABLED"),
            ("enable" | "enabled" | "autoEnable", Value::Bool(b)) => !b,
            ("autoEnable" | "autoEnableOrganizationMembers", Value::String(s)) => {
                s.eq_ignore_ascii_case("NONE")
            }
            // How a protection's agent is managed (EKS add-on, ECS Fargate, EC2 agent
            // management off: the team installs it) is not the protection itself.
            ("additionalConfiguration", _) => false,
            _ => turns_off(v),
        }),
        Value::Array(items) => items.iter().any(turns_off),
        _ => false,
    }
}

/// GuardDuty's detector kept but some of what it watches turned off (S3, EKS, runtime,
/// malware protection, RDS or Lambda protection).
fn narrows_guardduty(params: &Value) -> bool {
    ["features", "dataSources"]
        .iter()
        .any(|k| params.get(k).is_some_and(turns_off))
}

/// New accounts of the organization no longer get GuardDuty (or some of it) by default.
fn stops_auto_enable(params: &Value) -> bool {
    turns_off(params)
}

/// Bedrock's invocation logging set to record no prompt text (`textDataDeliveryEnabled`
/// false), or to deliver nowhere (neither S3 nor CloudWatch Logs).
fn strips_invocation_logging(params: &Value) -> bool {
    let Some(config) = params.get("loggingConfig") else {
        return false;
    };
    let text_off = config
        .get("textDataDeliveryEnabled")
        .and_then(Value::as_bool)
        == Some(false);
    let nowhere = ["s3Config", "cloudWatchConfig"]
        .iter()
        .all(|k| config.get(k).is_none_or(Value::is_null));
    text_off || nowhere
}

/// Security Hub told to stop checking a control.
fn disables_control(params: &Value) -> bool {
    let off = |v: &Value| {
        v.get("controlStatus")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("DISABLED"))
    };
    off(params)
        || params
            .get("standardsControlAssociationUpdates")
            .and_then(Value::as_array)
            .is_some_and(|u| {
                u.iter().any(|x| {
                    x.get("updatedStatus")
                        .and_then(Value::as_str)
                        .is_some_and(|s| s.eq_ignore_ascii_case("DISABLED"))
                })
            })
}

/// Security Hub findings marked suppressed (hidden from the team's views).
fn suppresses(params: &Value) -> bool {
    // The actions sit at the top (`CreateAutomationRule`) or under each update item
    // (`BatchUpdateAutomationRules`); only what they set counts, not what a rule matches.
    let sets_suppressed = |holder: &Value| {
        items(holder.get("actions")).into_iter().any(|action| {
            action
                .get("findingFieldsUpdate")
                .and_then(|u| u.get("workflow"))
                .and_then(|w| w.get("status"))
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("SUPPRESSED"))
        })
    };
    sets_suppressed(params)
        || items(params.get("updateAutomationRulesRequestItems"))
            .into_iter()
            .any(sets_suppressed)
}

/// An AWS Config recorder that records only some resource types (or excludes some): what it
/// leaves out goes unrecorded.
fn narrows_recorder(params: &Value) -> bool {
    let group = params
        .get("configurationRecorder")
        .and_then(|r| r.get("recordingGroup"));
    let Some(group) = group else {
        return false;
    };
    let all = group.get("allSupported").and_then(Value::as_bool);
    let strategy = group
        .get("recordingStrategy")
        .and_then(|s| s.get("useOnly"))
        .and_then(Value::as_str);
    all == Some(false)
        || strategy.is_some_and(|s| s.eq_ignore_ascii_case("EXCLUSION_BY_RESOURCE_TYPES"))
}

/// An AWS security service (GuardDuty, Security Hub, Config, CloudTrail, Access Analyzer,
/// Macie, Inspector, Detective) named as the service principal.
fn service_access_of_a_defence(params: &Value) -> bool {
    params
        .get("servicePrincipal")
        .and_then(Value::as_str)
        .is_some_and(|p| {
            [
                "guardduty",
                "securityhub",
                "config",
                "cloudtrail",
                "access-analyzer",
                "macie",
                "inspector2",
                "detective",
                "malware-protection",
            ]
            .iter()
            .any(|d| p.starts_with(d))
        })
}

/// An EventBridge rule switched off or deleted whose name says it carries findings or
/// alerts to the team.
fn findings_rule(params: &Value) -> bool {
    params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .is_some_and(|n| {
            [
                "guardduty",
                "securityhub",
                "security-hub",
                "finding",
                "trailguard",
                "cloudtrail",
                "macie",
                "inspector",
            ]
            .iter()
            .any(|k| n.contains(k))
        })
}

/// Macie's session paused.
fn pauses(params: &Value) -> bool {
    params
        .get("status")
        .and_then(Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("PAUSED"))
}

/// A GuardDuty filter that archives what it matches: findings hidden as they arrive.
fn archives(params: &Value) -> bool {
    params
        .get("action")
        .and_then(Value::as_str)
        .is_some_and(|a| a.eq_ignore_ascii_case("ARCHIVE"))
}

/// The calls that switch a defence off or mute it. Maintained by hand from each service's API
/// reference: a call missing here is caught only by the unusual-behaviour detections.
/// [`BLINDING`]'s rows by event name, in the table's order. Looked up for every activity: a
/// scan of the whole table was ≈ 3 % of detect's instructions.
static BLINDING_BY_NAME: std::sync::LazyLock<
    std::collections::HashMap<&'static str, Vec<&'static Blinding>, foldhash::fast::RandomState>,
> = std::sync::LazyLock::new(|| {
    let mut rows: std::collections::HashMap<_, Vec<_>, foldhash::fast::RandomState> =
        Default::default();
    for b in BLINDING {
        rows.entry(b.name).or_default().push(b);
    }
    rows
});

const BLINDING: &[Blinding] = &[
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DeleteDetector",
        what: "deleted a GuardDuty detector",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "UpdateDetector",
        what: "suspended a GuardDuty detector",
        severity: Severity::High,
        when: disables,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "UpdateDetector",
        what: "turned off part of GuardDuty (a protection or data source)",
        severity: Severity::Medium,
        when: narrows_guardduty,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "UpdateOrganizationConfiguration",
        what: "stopped GuardDuty (or part of it) being turned on for the organization's accounts",
        severity: Severity::Medium,
        when: stops_auto_enable,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DisassociateMembers",
        what: "took member accounts out of GuardDuty",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DisableOrganizationAdminAccount",
        what: "removed the organization's GuardDuty administrator",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DeleteThreatIntelSet",
        what: "deleted a GuardDuty threat list",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DisassociateFromMasterAccount",
        what: "took the account out of its GuardDuty administrator's view",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DisassociateFromAdministratorAccount",
        what: "took the account out of its GuardDuty administrator's view",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "StopMonitoringMembers",
        what: "stopped GuardDuty monitoring member accounts",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DeleteMembers",
        what: "removed member accounts from GuardDuty",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "CreateFilter",
        what: "made a GuardDuty filter that archives findings as they arrive",
        severity: Severity::Medium,
        when: archives,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "UpdateFilter",
        what: "made a GuardDuty filter archive findings as they arrive",
        severity: Severity::Medium,
        when: archives,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "CreateIPSet",
        what: "added a GuardDuty trusted IP list (no findings for its addresses)",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "UpdateIPSet",
        what: "changed a GuardDuty trusted IP list (no findings for its addresses)",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "guardduty.amazonaws.com",
        name: "DeletePublishingDestination",
        what: "stopped GuardDuty exporting findings",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "StopConfigurationRecorder",
        what: "stopped the AWS Config recorder",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "DeleteConfigurationRecorder",
        what: "deleted the AWS Config recorder",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "DeleteDeliveryChannel",
        what: "deleted the AWS Config delivery channel",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "PutConfigurationRecorder",
        what: "narrowed what the AWS Config recorder records",
        severity: Severity::Medium,
        when: narrows_recorder,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "DeleteConfigRule",
        what: "deleted an AWS Config rule",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "config.amazonaws.com",
        name: "DeleteConfigurationAggregator",
        what: "deleted an AWS Config aggregator",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "DisableSecurityHub",
        what: "disabled Security Hub",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "UpdateStandardsControl",
        what: "stopped Security Hub checking a control",
        severity: Severity::Medium,
        when: disables_control,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "BatchUpdateStandardsControlAssociations",
        what: "stopped Security Hub checking controls",
        severity: Severity::Medium,
        when: disables_control,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "CreateAutomationRule",
        what: "made a Security Hub automation rule that suppresses findings",
        severity: Severity::Medium,
        when: suppresses,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "BatchUpdateAutomationRules",
        what: "made Security Hub automation rules suppress findings",
        severity: Severity::Medium,
        when: suppresses,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "DisableOrganizationAdminAccount",
        what: "removed the organization's Security Hub administrator",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "BatchDisableStandards",
        what: "disabled Security Hub standards",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "DisableImportFindingsForProduct",
        what: "stopped Security Hub importing a product's findings",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "DisassociateFromAdministratorAccount",
        what: "took the account out of its Security Hub administrator's view",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "securityhub.amazonaws.com",
        name: "DisassociateFromMasterAccount",
        what: "took the account out of its Security Hub administrator's view",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "route53resolver.amazonaws.com",
        name: "DeleteResolverQueryLogConfig",
        what: "deleted Route 53 Resolver query logging",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "route53resolver.amazonaws.com",
        name: "DisassociateResolverQueryLogConfig",
        what: "stopped logging a VPC's DNS queries",
        severity: Severity::High,
        when: always,
    },
    // Bedrock's record of every prompt and answer: what an LLMjacker deletes first.
    Blinding {
        source: "bedrock.amazonaws.com",
        name: "DeleteModelInvocationLoggingConfiguration",
        what: "stopped logging Bedrock model invocations",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "bedrock.amazonaws.com",
        name: "PutModelInvocationLoggingConfiguration",
        what: "set Bedrock's invocation logging to keep no prompts, or to deliver nowhere",
        severity: Severity::Medium,
        when: strips_invocation_logging,
    },
    Blinding {
        source: "kms.amazonaws.com",
        name: "ScheduleKeyDeletion",
        what: "scheduled a KMS key for deletion (what it encrypts becomes unreadable)",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "kms.amazonaws.com",
        name: "DisableKey",
        what: "disabled a KMS key",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "organizations.amazonaws.com",
        name: "LeaveOrganization",
        what: "took the account out of its AWS Organization (and its guardrails)",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "detective.amazonaws.com",
        name: "DeleteGraph",
        what: "deleted the Detective behavior graph",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "access-analyzer.amazonaws.com",
        name: "CreateArchiveRule",
        what: "made an IAM Access Analyzer rule that archives findings as they arrive",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "access-analyzer.amazonaws.com",
        name: "UpdateArchiveRule",
        what: "changed an IAM Access Analyzer rule that archives findings as they arrive",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "organizations.amazonaws.com",
        name: "DisableAWSServiceAccess",
        what: "took a security service's access to the organization away",
        severity: Severity::High,
        when: service_access_of_a_defence,
    },
    Blinding {
        source: "organizations.amazonaws.com",
        name: "DeregisterDelegatedAdministrator",
        what: "removed a delegated administrator of a security service",
        severity: Severity::Medium,
        when: service_access_of_a_defence,
    },
    Blinding {
        source: "events.amazonaws.com",
        name: "DisableRule",
        what: "switched off an EventBridge rule that carries findings or alerts",
        severity: Severity::Medium,
        when: findings_rule,
    },
    Blinding {
        source: "events.amazonaws.com",
        name: "DeleteRule",
        what: "deleted an EventBridge rule that carries findings or alerts",
        severity: Severity::Medium,
        when: findings_rule,
    },
    Blinding {
        source: "ec2.amazonaws.com",
        name: "DisableSnapshotBlockPublicAccess",
        what: "turned off the account's block on public EBS snapshots",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "ec2.amazonaws.com",
        name: "DisableImageBlockPublicAccess",
        what: "turned off the account's block on public AMIs",
        severity: Severity::High,
        when: always,
    },
    Blinding {
        source: "macie2.amazonaws.com",
        name: "UpdateMacieSession",
        what: "paused Macie",
        severity: Severity::Medium,
        when: pauses,
    },
    Blinding {
        source: "access-analyzer.amazonaws.com",
        name: "DeleteAnalyzer",
        what: "deleted an IAM Access Analyzer",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "macie2.amazonaws.com",
        name: "DisableMacie",
        what: "disabled Macie",
        severity: Severity::Medium,
        when: always,
    },
    Blinding {
        source: "inspector2.amazonaws.com",
        name: "Disable",
        what: "disabled Inspector",
        severity: Severity::Medium,
        when: always,
    },
];

/// The four policies with their settings.
pub struct Exposure {
    cfg: ExposurePolicies,
}

/// One severity lower (a failed attempt).
fn lower(severity: Severity) -> Severity {
    match severity {
        Severity::High => Severity::Medium,
        _ => Severity::Low,
    }
}

/// `group: all` or a `userId` in a permission list (`{"items": [...]}`, a list, or one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Grantee {
    Everyone,
    Account(String),
    /// An organization or organizational unit, by ARN.
    Organization(String),
}

/// The organization id (`o-…`) of an organization or OU ARN.
fn org_id(arn: &str) -> Option<&str> {
    let path = arn.rsplit_once(':')?.1;
    let id = path.split('/').nth(1)?;
    let kind_ok = path.starts_with("organization/") || path.starts_with("ou/");
    (id.starts_with("o-") && kind_ok).then_some(id)
}

/// Whether `id` is an AWS account id (twelve digits): anything else in a permission names no
/// account (AWS refuses it).
fn is_account(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

/// The grantee a principal value names: an account id, an organization or OU ARN, or the
/// account of any other ARN (a role, a namespace, a vault). Keywords (`ADX`,
/// `amazon-redshift-support`, `IAM_ALLOWED_PRINCIPALS`) and service names name none.
fn grantee_of(value: &Value) -> Option<Grantee> {
    let text = value.as_str()?;
    if org_id(text).is_some() {
        return Some(Grantee::Organization(text.to_string()));
    }
    principal_account(text).map(|account| Grantee::Account(account.to_string()))
}

/// Every value under a key named `key` (any case) in `value`, to a depth of eight: the
/// copy actions of a backup plan's rules, wherever the plan puts them.
fn values_named<'a>(value: &'a Value, key: &str, depth: usize, out: &mut Vec<&'a Value>) {
    if depth > 8 || out.len() >= 100 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k.eq_ignore_ascii_case(key) {
                    out.push(v);
                } else {
                    values_named(v, key, depth + 1, out);
                }
            }
        }
        Value::Array(list) => list
            .iter()
            .for_each(|v| values_named(v, key, depth + 1, out)),
        _ => {}
    }
}

/// What a Lake Formation grant is on, as a person reads it: `table sales.orders`, `database
/// sales`, a data location's ARN; the first resource of a batch.
fn lake_formation_resource(params: &Value) -> String {
    let mut resources = Vec::new();
    values_named(params, "resource", 0, &mut resources);
    let field = |v: &Value, k: &str| {
        crate::policy::field_ci(v, k)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    for resource in resources {
        for (kind, names) in [
            ("table", ["databaseName", "name"]),
            ("tableWithColumns", ["databaseName", "name"]),
            ("database", ["name", ""]),
            ("dataLocation", ["resourceArn", ""]),
        ] {
            let Some(of) = crate::policy::field_ci(resource, kind) else {
                continue;
            };
            let parts: Vec<String> = names
                .iter()
                .filter(|n| !n.is_empty())
                .filter_map(|n| field(of, n))
                .collect();
            let what = if kind == "tableWithColumns" {
                "table"
            } else {
                kind
            };
            return match parts.is_empty() {
                true => what.to_string(),
                false => format!("{what} {}", parts.join(".")),
            };
        }
    }
    "a Data Catalog resource".to_string()
}

/// Most grantees read from a RAM share's list of principals (the caller's to make long).
const MOST_GRANTEES: usize = 1_000;

/// Most grantees named in a summary; the rest are counted.
const NAMED_GRANTEES: usize = 10;

/// What a call shares out, as [`Exposure::shared_out`] finds it.
struct Shared {
    /// The kind of resource, as a person reads it (`EBS snapshot`, `DynamoDB table`).
    kind: &'static str,
    /// The resource, as the call names it.
    id: String,
    /// How it goes out: the verb done, the verb tried and what comes before the grantees
    /// (`exported`, `tried to export`, `to a bucket of`).
    how: (&'static str, &'static str, &'static str),
    /// The grantees outside.
    outside: Vec<Grantee>,
}

/// Shared with someone: the words of the snapshots, images and shares.
const SHARED_WITH: (&str, &str, &str) = ("shared", "tried to share", "with");

/// The grantees an EC2 permission change adds: `{"add": {"items": [{"group": "all"},
/// {"userId": "…"}]}}`, or the flat form (`operationType: add`, `userIds`, `groupNames`).
fn ec2_added(params: &Value, permission: &str) -> Vec<Grantee> {
    let mut out = Vec::new();
    let add = params.get(permission).and_then(|p| p.get("add"));
    let listed = add.map(|a| a.get("items").or(Some(a))).unwrap_or(None);
    for item in items(listed) {
        if item.get("group").and_then(Value::as_str) == Some("all") {
            out.push(Grantee::Everyone);
        }
        if let Some(account) = item
            .get("userId")
            .and_then(Value::as_str)
            .filter(|a| is_account(a))
        {
            out.push(Grantee::Account(account.to_string()));
        }
        for key in ["organizationArn", "organizationalUnitArn"] {
            if let Some(arn) = item.get(key).and_then(Value::as_str) {
                out.push(Grantee::Organization(arn.to_string()));
            }
        }
    }
    let adding = params
        .get("operationType")
        .and_then(Value::as_str)
        .is_some_and(|o| o.eq_ignore_ascii_case("add"));
    if adding {
        for key in ["userIds", "userId", "UserId"] {
            for id in items(params.get(key)) {
                let id = id
                    .as_str()
                    .or_else(|| id.get("content").and_then(Value::as_str));
                if let Some(id) = id.filter(|a| is_account(a)) {
                    out.push(Grantee::Account(id.to_string()));
                }
            }
        }
        for key in ["groupNames", "groupName", "UserGroup"] {
            for group in items(params.get(key)) {
                let group = group
                    .as_str()
                    .or_else(|| group.get("content").and_then(Value::as_str));
                if group == Some("all") {
                    out.push(Grantee::Everyone);
                }
            }
        }
    }
    out
}

/// The `unshare_snapshot` / `unshare_image` actions for a share of `what` (`id`) by `a`: one
/// per grantee outside, each naming the resource by its ARN (its region and account) — none
/// when the activity does not say where the resource is.
fn unshare_actions(
    kinds: &[ActionKind],
    a: &Activity,
    what: &str,
    id: &str,
    outside: &[Grantee],
) -> Vec<RequestedAction> {
    let (kind, target_kind, resource) = match what {
        "EBS snapshot" => (
            ActionKind::UnshareSnapshot,
            "ebs-snapshot",
            format!("snapshot/{id}"),
        ),
        "AMI" => (ActionKind::UnshareImage, "ami", format!("image/{id}")),
        "RDS snapshot" => (
            ActionKind::UnshareSnapshot,
            "rds-snapshot",
            format!("snapshot:{id}"),
        ),
        "RDS cluster snapshot" => (
            ActionKind::UnshareSnapshot,
            "rds-cluster-snapshot",
            format!("cluster-snapshot:{id}"),
        ),
        // Nothing else is taken back: remediate unshares snapshots and images only.
        _ => return Vec::new(),
    };
    let (Some(account), Some(region)) = (a.account_id.as_deref(), a.region.as_deref()) else {
        return Vec::new();
    };
    if !kinds.contains(&kind) {
        return Vec::new();
    }
    let partition = a.partition.as_deref().unwrap_or("aws");
    let service = if kind == ActionKind::UnshareImage || what == "EBS snapshot" {
        "ec2"
    } else {
        "rds"
    };
    let arn = format!("arn:{partition}:{service}:{region}:{account}:{resource}");
    // One action for the whole share (everyone first): a share naming many accounts costs
    // remediate's budget one action, and the widest grant goes first.
    let mut grantees: Vec<String> = Vec::new();
    for g in outside {
        let g = match g {
            Grantee::Everyone => "all".to_string(),
            Grantee::Account(id) | Grantee::Organization(id) => id.clone(),
        };
        if !grantees.contains(&g) {
            grantees.push(g);
        }
    }
    grantees.sort_by_key(|g| g != "all");
    // Remediate takes back at most 100 per action: more go in further actions, so a share
    // naming hundreds of accounts cannot make the whole request refused.
    grantees
        .chunks(100)
        .map(|chunk| RequestedAction {
            kind,
            target: Target {
                kind: target_kind.into(),
                id: arn.clone(),
                account_id: Some(account.to_string()),
                grantee: Some(chunk.join(",")),
            },
        })
        .collect()
}

/// Who a permission naming accounts (a list or one) lets in: `Some(None)` for everyone (a
/// wildcard), else the accounts less `own` and `trusted`; `None` when none is left. Anything
/// else names no account (AWS refuses it).
fn accounts_outside(names: &Value, own: &str, trusted: &[String]) -> Option<Option<Vec<String>>> {
    let mut out: Vec<String> = Vec::new();
    for name in items(Some(names)) {
        if name.as_str().is_some_and(|n| n.contains('*')) {
            return Some(None);
        }
        let Some(account) = name.as_str().and_then(principal_account) else {
            continue;
        };
        if account != own
            && !trusted.iter().any(|t| t == account)
            && !out.iter().any(|o| o == account)
        {
            out.push(account.to_string());
        }
    }
    (!out.is_empty()).then_some(Some(out))
}

/// The account an IAM principal names: an account id, or the account of an ARN.
fn principal_account(principal: &str) -> Option<&str> {
    if is_account(principal) {
        return Some(principal);
    }
    let account = principal.strip_prefix("arn:")?.split(':').nth(3)?;
    is_account(account).then_some(account)
}

/// `%XX` escapes (and `+`) decoded; invalid escapes kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Public identity providers: anyone can get a token from them, so a role trusting one
/// without a condition on the token's subject trusts everyone.
const PUBLIC_OIDC: &[&str] = &[
    "token.actions.githubusercontent.com",
    "gitlab.com",
    "app.terraform.io",
    "accounts.google.com",
];

/// Cognito identity pools: any pool, in any account, gets tokens from this principal, so a
/// role trusting it without a condition on the token's audience (the pool) trusts everyone.
const COGNITO_IDENTITY: &str = "cognito-identity.amazonaws.com";

/// A trust statement for a public identity provider with no condition on the subject, or for
/// Cognito identity pools with none on the audience.
fn public_oidc_without_subject(statement: &Value) -> bool {
    let federated = match statement.get("Principal") {
        Some(Value::Object(map)) => items(map.get("Federated")),
        _ => return false,
    };
    let federated: Vec<&str> = federated.iter().filter_map(|f| f.as_str()).collect();
    if federated.contains(&COGNITO_IDENTITY) {
        // Bound: a string equality on the audience naming pools (`REGION:GUID`), no wildcard.
        let pool = |v: &Value| {
            v.as_str()
                .is_some_and(|s| s.contains(':') && !s.contains(['*', '?']) && !s.contains("${"))
        };
        if !condition_binds(statement, &["cognito-identity.amazonaws.com:aud"], pool) {
            return true;
        }
    }
    let Some(provider) = PUBLIC_OIDC.iter().find(|p| {
        federated
            .iter()
            .any(|f| f.ends_with(&format!("oidc-provider/{p}")) || f == *p)
    }) else {
        return false;
    };
    // Bound: a string equality on the subject whose every value names a fixed owner (GitHub's
    // `repo:OWNER/…`), not a wildcard.
    let fixed = |v: &Value| {
        v.as_str().is_some_and(|s| {
            let head = s.strip_prefix("repo:").unwrap_or(s);
            let owner = head.split(['/', ':']).next().unwrap_or("");
            !owner.is_empty() && !owner.contains(['*', '?']) && !owner.contains("${")
        })
    };
    // The provider's own key: another provider's (or an `…IfExists` on it) is absent from
    // this provider's tokens, so it binds nothing.
    !condition_binds(statement, &[&format!("{provider}:sub")], fixed)
}

/// Whether `statement` has a string-equality condition on one of `names` (lower case) whose
/// every value passes `fixed`.
fn condition_binds(statement: &Value, names: &[&str], fixed: impl Fn(&Value) -> bool) -> bool {
    match statement.get("Condition") {
        Some(Value::Object(operators)) => operators.iter().any(|(op, keys)| {
            let lower = op.to_ascii_lowercase();
            let base = lower.strip_suffix("ifexists").unwrap_or(&lower);
            equality_operator(base)
                && keys.as_object().is_some_and(|k| {
                    k.iter().any(|(key, values)| {
                        let key = key.to_ascii_lowercase();
                        let list = items(Some(values));
                        names.contains(&key.as_str())
                            && !list.is_empty()
                            && list.into_iter().all(&fixed)
                    })
                })
        }),
        _ => false,
    }
}

/// Condition keys that confine a statement to accounts (their values: account ids or ARNs).
const ACCOUNT_KEYS: &[&str] = &[
    "aws:principalaccount",
    "aws:sourceaccount",
    "aws:sourceowner",
    "aws:principalarn",
    "aws:sourcearn",
    "kms:calleraccount",
];

/// Operators that confine to the values they list (`ForAnyValue:` allowed): not negated, not
/// `…IfExists` (passes when the key is absent), not `ForAllValues:` (passes vacuously).
const EQUALITY_OPERATORS: &[&str] = &[
    "stringequals",
    "stringequalsignorecase",
    "stringlike",
    "arnequals",
    "arnlike",
];

fn equality_operator(operator: &str) -> bool {
    let op = operator.to_ascii_lowercase();
    let op = op.strip_prefix("foranyvalue:").unwrap_or(&op);
    EQUALITY_OPERATORS.contains(&op)
}

/// The accounts a statement's conditions confine it to: keys of [`ACCOUNT_KEYS`] under an
/// equality operator whose every value names one account (a value with a wildcard in its
/// account confines nothing, and the key is not counted).
fn condition_accounts(statement: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(Value::Object(operators)) = statement.get("Condition") else {
        return out;
    };
    for (operator, keys) in operators {
        if !equality_operator(operator) {
            continue;
        }
        let Value::Object(keys) = keys else { continue };
        for (key, values) in keys {
            if !ACCOUNT_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                continue;
            }
            let accounts: Option<Vec<&str>> = items(Some(values))
                .into_iter()
                .map(|v| v.as_str().and_then(principal_account))
                .collect();
            for account in accounts.unwrap_or_default() {
                if !out.iter().any(|a| a == account) {
                    out.push(account.to_string());
                }
            }
        }
    }
    out
}

/// Whether a statement's principal is everyone: a wildcard (`*`, `arn:aws:iam::*:root`) or
/// `NotPrincipal`.
fn anyone(statement: &Value) -> bool {
    trailguard_common::s3::principal_is_public(statement.get("Principal"))
        || statement.get("NotPrincipal").is_some()
}

/// Who a policy document lets in from outside `own` (and `trusted`): `None` when no one;
/// `Some(None)` for everyone; `Some(Some(accounts))` for other accounts.
fn policy_opened(document: &Value, own: &str, trusted: &[String]) -> Option<Option<Vec<String>>> {
    // Some records carry the document URL-encoded.
    let decoded = match document {
        Value::String(text) if text.trim_start().starts_with('%') => {
            Value::String(percent_decode(text))
        }
        _ => document.clone(),
    };
    let document = trailguard_common::s3::parse_policy(&decoded)?;
    let mut accounts: Vec<String> = Vec::new();
    let outside = |account: &str, accounts: &mut Vec<String>| {
        if account != own
            && !trusted.iter().any(|t| t == account)
            && !accounts.iter().any(|a| a == account)
        {
            accounts.push(account.to_string());
        }
    };
    for statement in items(document.get("Statement")) {
        if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        // `*` confined to accounts by a condition is open to those accounts: the attacker's
        // own, perhaps.
        let named = condition_accounts(statement);
        if !named.is_empty() && anyone(statement) {
            for account in &named {
                outside(account, &mut accounts);
            }
            continue;
        }
        if trailguard_common::s3::is_public_statement(statement)
            || public_oidc_without_subject(statement)
        {
            return Some(None);
        }
        let principal = statement.get("Principal");
        let aws = match principal {
            Some(Value::Object(map)) => map.get("AWS"),
            _ => None,
        };
        for p in items(aws) {
            let Some(p) = p.as_str() else { continue };
            if let Some(account) = principal_account(p) {
                outside(account, &mut accounts);
            }
        }
    }
    (!accounts.is_empty()).then_some(Some(accounts))
}

impl Exposure {
    /// The policies with their settings.
    pub fn new(cfg: ExposurePolicies) -> Self {
        Exposure { cfg }
    }

    /// What `a` shares out, when it does: the resource and the grantees outside.
    fn shared_out(&self, a: &Activity) -> Option<Shared> {
        let params = a.request_parameters.as_ref()?;
        let text = |k: &str| {
            crate::policy::field_ci(params, k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let grantee = |k: &str| crate::policy::field_ci(params, k).and_then(grantee_of);
        let mut how = SHARED_WITH;
        let (kind, id, grantees) = match (a.event_source.as_str(), a.event_name.as_str()) {
            ("ec2.amazonaws.com", "ModifySnapshotAttribute") => (
                "EBS snapshot",
                text("snapshotId")?,
                ec2_added(params, "createVolumePermission"),
            ),
            ("ec2.amazonaws.com", "ModifyImageAttribute") => (
                "AMI",
                text("imageId")?,
                ec2_added(params, "launchPermission"),
            ),
            (
                "rds.amazonaws.com",
                "ModifyDBSnapshotAttribute" | "ModifyDBClusterSnapshotAttribute",
            ) => {
                if !text("attributeName").is_some_and(|n| n.eq_ignore_ascii_case("restore")) {
                    return None;
                }
                let id =
                    text("dBSnapshotIdentifier").or_else(|| text("dBClusterSnapshotIdentifier"))?;
                let grantees = items(params.get("valuesToAdd"))
                    .into_iter()
                    .filter_map(Value::as_str)
                    .filter_map(|v| {
                        if v.eq_ignore_ascii_case("all") {
                            Some(Grantee::Everyone)
                        } else {
                            is_account(v).then(|| Grantee::Account(v.to_string()))
                        }
                    })
                    .collect();
                let kind = if a.event_name == "ModifyDBSnapshotAttribute" {
                    "RDS snapshot"
                } else {
                    "RDS cluster snapshot"
                };
                (kind, id, grantees)
            }
            ("redshift.amazonaws.com", "AuthorizeSnapshotAccess") => (
                "Redshift snapshot",
                text("snapshotIdentifier").or_else(|| text("snapshotArn"))?,
                grantee("accountWithRestoreAccess").into_iter().collect(),
            ),
            ("redshift.amazonaws.com", "AuthorizeDataShare") => (
                "Redshift datashare",
                text("dataShareArn")?,
                grantee("consumerIdentifier").into_iter().collect(),
            ),
            // To a bucket of another account (the API asks for its owner then).
            ("dynamodb.amazonaws.com", "ExportTableToPointInTime") => {
                how = ("exported", "tried to export", "to a bucket of");
                (
                    "DynamoDB table",
                    text("tableArn")?,
                    grantee("s3BucketOwner").into_iter().collect(),
                )
            }
            ("backup.amazonaws.com", "StartCopyJob") => {
                how = ("copied", "tried to copy", "to a backup vault of");
                (
                    "recovery point",
                    text("recoveryPointArn")?,
                    grantee("destinationBackupVaultArn").into_iter().collect(),
                )
            }
            // A plan whose rules copy every backup to a vault of another account.
            ("backup.amazonaws.com", "CreateBackupPlan" | "UpdateBackupPlan") => {
                how = ("set", "tried to set", "to copy backups to a vault of");
                let plan = crate::policy::field_ci(params, "backupPlan");
                let name = plan
                    .and_then(|p| crate::policy::field_ci(p, "backupPlanName"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| text("backupPlanId"))
                    .unwrap_or_else(|| "(unnamed)".to_string());
                let mut vaults = Vec::new();
                values_named(params, "destinationBackupVaultArn", 0, &mut vaults);
                (
                    "backup plan",
                    name,
                    vaults.into_iter().filter_map(grantee_of).collect(),
                )
            }
            // Resource Access Manager: subnets, transit gateways, databases, catalogs…
            // A share that allows no external principals reaches only the organization's own
            // accounts (RAM refuses the others).
            ("ram.amazonaws.com", "CreateResourceShare" | "AssociateResourceShare")
                if crate::policy::field_ci(params, "allowExternalPrincipals")
                    .is_none_or(|v| v.as_bool() != Some(false)) =>
            {
                (
                    "RAM resource share",
                    text("resourceShareArn").or_else(|| text("name"))?,
                    items(crate::policy::field_ci(params, "principals"))
                        .into_iter()
                        .take(MOST_GRANTEES)
                        .filter_map(grantee_of)
                        .collect(),
                )
            }
            ("lakeformation.amazonaws.com", "GrantPermissions" | "BatchGrantPermissions") => {
                how = ("made a", "tried to make a", "to");
                let mut principals = Vec::new();
                values_named(params, "dataLakePrincipalIdentifier", 0, &mut principals);
                (
                    "Lake Formation grant on",
                    lake_formation_resource(params),
                    principals.into_iter().filter_map(grantee_of).collect(),
                )
            }
            _ => return None,
        };
        let own = a.account_id.as_deref();
        let cfg = &self.cfg.resource_shared_out;
        let outside: Vec<Grantee> = grantees
            .into_iter()
            .filter(|g| match g {
                Grantee::Everyone => true,
                Grantee::Account(id) => {
                    Some(id.as_str()) != own && !cfg.trusted_accounts.contains(id)
                }
                // An OU of a trusted organization is inside it.
                Grantee::Organization(arn) => !cfg.trusted_organizations.iter().any(|t| {
                    t.eq_ignore_ascii_case(arn)
                        || org_id(t).is_some_and(|id| org_id(arn) == Some(id))
                }),
            })
            .collect();
        // Each grantee once, however often the call names it (the lists are cut to
        // `MOST_GRANTEES` where they are read).
        let mut outside = outside;
        let mut seen: std::collections::HashSet<Grantee> = std::collections::HashSet::new();
        outside.retain(|g| seen.insert(g.clone()));
        (!outside.is_empty()).then_some(Shared {
            kind,
            id,
            how,
            outside,
        })
    }

    /// An alert of `meta` about `a`'s principal (or `entity`).
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        meta: &'static PolicyMeta<'static>,
        (severity_set, actions): (Option<Severity>, &[ActionKind]),
        a: &Activity,
        entity: Option<Entity>,
        severity: Severity,
        summary: String,
        mitre: (&str, &str, &str),
    ) -> Alert {
        let severity = severity_set.unwrap_or(severity);
        let severity = if a.outcome.is_success() {
            severity
        } else {
            lower(severity)
        };
        AlertBuilder::about(meta, a, severity)
            .entity(entity.unwrap_or_else(|| Entity {
                kind: kinds::PRINCIPAL.into(),
                id: a.actor_key().into_owned(),
            }))
            .evidence(vec![a.id.clone()], summary)
            .mitre(mitre)
            .actions(requested(actions, a))
            .id_from(&[meta.id, a.id.as_str()])
    }

    fn judge_outside_key(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.outside_key_encryption;
        let Some(&(_, _, what, objects)) = ENCRYPTING
            .iter()
            .find(|(source, name, _, _)| *name == a.event_name && *source == a.event_source)
        else {
            return;
        };
        if !cfg.enabled || !requested_change(a) {
            return;
        }
        let Some(params) = a.request_parameters.as_ref() else {
            return;
        };
        // Object writes are many: parsed only when their text names a KMS key ARN.
        if objects && (!params.text().contains(":kms:") || !copied_in_place(params)) {
            return;
        }
        let own = a.account_id.as_deref().unwrap_or_default();
        let mut keys = Vec::new();
        if a.event_name == "ReEncrypt" {
            // Another account re-encrypting the account's ciphertext under its own key takes
            // it out (`access-granted-outside`); the stored data is unchanged. The account's
            // own people doing so put it under the other account's key.
            if a.principal.account_id.as_deref().is_some_and(|c| c != own) {
                return;
            }
            let destination =
                crate::policy::field_ci(params, "destinationKeyId").and_then(Value::as_str);
            keys.extend(destination.filter(|k| k.starts_with("arn:") && k.contains(":kms:")));
        } else {
            kms_key_arns(params, 0, &mut keys);
        }
        let Some((key, holder)) = keys.into_iter().find_map(|key| {
            let holder = key.split(':').nth(4).filter(|h| is_account(h))?;
            // Named in the summary and the entity: the caller wrote it.
            (holder != own && !cfg.trusted_accounts.iter().any(|t| t == holder)).then(|| {
                (
                    key.chars().take(256).collect::<String>(),
                    holder.to_string(),
                )
            })
        }) else {
            return;
        };
        if allowed(&cfg.allow_principals, a) {
            return;
        }
        let resource = crate::policy::action_target(ActionKind::MakeBucketPrivate, a).id;
        let what = if resource.is_empty() || !what.contains("{}") {
            what.replace(" {}", "")
        } else {
            what.replace("{}", &resource)
        };
        let verb = if a.outcome.is_success() {
            "encrypted"
        } else {
            "tried to encrypt"
        };
        let summary = format!(
            "{} {verb} {what} with KMS key {key} of account {holder}: whoever holds that key \
             decides whether the data can be read",
            who_acted(a)
        );
        // About the key: every copy made under it folds into one alert.
        let entity = Entity {
            kind: "resource".into(),
            id: format!("{own}/{key}"),
        };
        out.push(self.alert(
            &OUTSIDE_KEY_ENCRYPTION,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            Severity::High,
            summary,
            ("Impact", "T1486", "Data Encrypted for Impact"),
        ));
    }

    fn judge_shared_out(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.resource_shared_out;
        // What AWS Backup, Image Builder and the like do on the account's behalf is theirs.
        if !cfg.enabled || !requested_change(a) || allowed(&cfg.allow_principals, a) {
            return;
        }
        let Some(Shared {
            kind,
            id,
            how: (done, tried, to_whom),
            outside,
        }) = self.shared_out(a)
        else {
            return;
        };
        let mut to: Vec<String> = outside
            .iter()
            .take(NAMED_GRANTEES)
            .map(|g| match g {
                Grantee::Everyone => "everyone (public)".to_string(),
                Grantee::Account(id) => format!("account {id}"),
                Grantee::Organization(arn) => format!("organization {arn}"),
            })
            .collect();
        if outside.len() > NAMED_GRANTEES {
            // A list cut where it was read has more than it says.
            let at_least = if outside.len() >= MOST_GRANTEES {
                "at least "
            } else {
                ""
            };
            to.push(format!("{at_least}{} more", outside.len() - NAMED_GRANTEES));
        }
        let verb = if a.outcome.is_success() { done } else { tried };
        let summary = format!("{} {verb} {kind} {id} {to_whom} {}", who(a), to.join(", "));
        // About the resource: two snapshots shared are two alerts, not one folded.
        let entity_kind = match kind {
            "EBS snapshot" => kinds::EBS_SNAPSHOT,
            "AMI" => kinds::AMI,
            "RDS snapshot" | "RDS cluster snapshot" => kinds::RDS_SNAPSHOT,
            _ => "resource",
        };
        let entity = Entity {
            kind: entity_kind.into(),
            id: format!("{}/{id}", a.account_id.as_deref().unwrap_or("")),
        };
        let mut alert = self.alert(
            &RESOURCE_SHARED_OUT,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            Severity::High,
            summary,
            ("Exfiltration", "T1537", "Transfer Data to Cloud Account"),
        );
        alert
            .actions
            .extend(unshare_actions(&cfg.actions, a, kind, &id, &outside));
        out.push(alert);
    }

    fn judge_blinding(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.defense_evasion;
        // Not what CloudFormation does: deleting a stack deletes its keys, rules and
        // detectors (every `cdk destroy`, every ephemeral environment).
        if !cfg.enabled || !acts_itself(a) {
            return;
        }
        let null = Value::Null;
        // Parsed only for a call that is in the table.
        let params = || a.request_parameters.as_deref().unwrap_or(&null);
        // The first row whose condition holds: one call can mean more than one thing
        // (GuardDuty's UpdateDetector suspends the detector, or turns some of it off).
        let Some(b) = BLINDING_BY_NAME
            .get(a.event_name.as_str())
            .and_then(|rows| {
                rows.iter()
                    .find(|b| b.source == a.event_source && (b.when)(params()))
            })
        else {
            return;
        };
        if allowed(&cfg.allow_principals, a) {
            return;
        }
        let summary = if a.outcome.is_success() {
            format!("{} {}: {}", who(a), b.what, a.event_name)
        } else {
            format!(
                "{} tried and failed to do this — {}: {}",
                who(a),
                b.what,
                a.event_name
            )
        };
        out.push(self.alert(
            &DEFENSE_EVASION,
            (cfg.severity, &cfg.actions),
            a,
            // A refusal names whatever its caller typed: about the actor (see below).
            a.outcome.is_success().then(|| defence_of(a)),
            b.severity,
            summary,
            ("Defense Evasion", "T1562", "Impair Defenses"),
        ));
    }

    fn judge_root(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.root_activity;
        // Signing in is the one thing root is for; what an AWS service does as root on
        // the account's behalf is not the credentials being used.
        if !cfg.enabled
            || a.principal.kind != "Root"
            || a.event_source == "signin.amazonaws.com"
            || a.principal.invoked_by.is_some()
            || a.event_type.as_deref() == Some("AwsServiceEvent")
            // The console creates service-linked roles as a side effect of what root opens.
            || a.event_name == "CreateServiceLinkedRole"
            || allowed(&cfg.allow_principals, a)
        {
            return;
        }
        let summary = format!(
            "the root user of account {} was used: {} ({})",
            a.account_id.as_deref().unwrap_or("?"),
            a.event_name,
            who(a)
        );
        // Reading is less than changing, but root should do neither.
        let severity = if crate::classify::is_write(a) {
            Severity::High
        } else {
            Severity::Medium
        };
        out.push(self.alert(
            &ROOT_ACTIVITY,
            (cfg.severity, &cfg.actions),
            a,
            None,
            severity,
            summary,
            (
                "Privilege Escalation",
                "T1078.004",
                "Valid Accounts: Cloud Accounts",
            ),
        ));
    }

    /// What `a` opens to the outside, when it does: (what, the resource, who: `None` is
    /// everyone).
    fn opened(&self, a: &Activity) -> Option<(&'static str, String, Option<Vec<String>>)> {
        let params = a.request_parameters.as_ref()?;
        let own = a.account_id.as_deref()?;
        let trusted = &self.cfg.access_granted_outside.trusted_accounts;
        let text = |k: &str| params.get(k).and_then(Value::as_str).map(str::to_string);
        let name = crate::tactics::base_name(&a.event_source, &a.event_name);
        let document = |k: &str| params.get(k).and_then(|d| policy_opened(d, own, trusted));
        // SQS and SNS records spell parameters as the SDK that made the call did
        // (`queueUrl`, `QueueUrl`): their keys are read in any case. A missing name loses
        // the name, never the alert.
        let ci_text = |k: &str| {
            crate::policy::field_ci(params, k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_default()
        };
        let ci_policy = |k: &str| {
            crate::policy::field_ci(params, k)
                .and_then(|at| crate::policy::field_ci(at, "policy"))
                .and_then(|d| policy_opened(d, own, trusted))
        };
        match (a.event_source.as_str(), name) {
            // An EKS access entry (and the access policy, cluster-admin or another, given to
            // it) for a principal of another account: its Kubernetes API is theirs.
            ("eks.amazonaws.com", "CreateAccessEntry" | "AssociateAccessPolicy") => {
                let principal = ci_text("principalArn");
                let account = principal_account(&principal)?;
                if account == own || trusted.iter().any(|t| t == account) {
                    return None;
                }
                let cluster = text("name").unwrap_or_else(|| ci_text("clusterName"));
                Some((
                    "the Kubernetes API of EKS cluster",
                    cluster,
                    Some(vec![account.to_string()]),
                ))
            }
            ("iam.amazonaws.com", "CreateRole") => Some((
                "the trust policy of role",
                text("roleName")?,
                document("assumeRolePolicyDocument")?,
            )),
            ("iam.amazonaws.com", "UpdateAssumeRolePolicy") => Some((
                "the trust policy of role",
                text("roleName")?,
                document("policyDocument")?,
            )),
            ("lambda.amazonaws.com", "AddPermission" | "AddLayerVersionPermission") => {
                let principal = text("principal")?;
                // A service principal (s3.amazonaws.com) is AWS delivering events, confined
                // by the source it names.
                // Confined to a source: by its account, when it names one.
                let source = text("sourceAccount").or_else(|| {
                    text("sourceArn").and_then(|a| principal_account(&a).map(str::to_string))
                });
                let who = if let Some(account) = source.filter(|a| is_account(a)) {
                    if account == own || trusted.contains(&account) {
                        return None;
                    }
                    Some(vec![account])
                } else if principal == "*" {
                    let confined = ["sourceArn", "principalOrgID", "organizationId"]
                        .iter()
                        .any(|k| text(k).is_some_and(|v| !v.is_empty() && v != "*"));
                    if confined {
                        return None;
                    }
                    None
                } else {
                    let account = principal_account(&principal)?;
                    if account == own || trusted.iter().any(|t| t == account) {
                        return None;
                    }
                    Some(vec![account.to_string()])
                };
                let what = if name == "AddPermission" {
                    "Lambda function"
                } else {
                    "Lambda layer"
                };
                Some((
                    what,
                    text("functionName").or_else(|| text("layerName"))?,
                    who,
                ))
            }
            ("lambda.amazonaws.com", "CreateFunctionUrlConfig" | "UpdateFunctionUrlConfig") => {
                let open = text("authType").is_some_and(|t| t.eq_ignore_ascii_case("NONE"));
                open.then(|| {
                    (
                        "the URL of Lambda function",
                        text("functionName").unwrap_or_default(),
                        None,
                    )
                })
            }
            // IAM Roles Anywhere trusting a certificate authority that is not the account's
            // own Private CA: whoever holds a certificate from it may take the roles.
            ("rolesanywhere.amazonaws.com", "CreateTrustAnchor" | "UpdateTrustAnchor") => {
                let source = params.get("source")?;
                let kind = source.get("sourceType").and_then(Value::as_str)?;
                (kind == "CERTIFICATE_BUNDLE").then(|| {
                    (
                        "IAM Roles Anywhere trust anchor",
                        text("name")
                            .or_else(|| text("trustAnchorId"))
                            .unwrap_or_default(),
                        Some(vec![
                            "whoever holds a certificate of its outside CA bundle".to_string()
                        ]),
                    )
                })
            }
            ("secretsmanager.amazonaws.com", "PutResourcePolicy") => Some((
                "the resource policy of secret",
                text("secretId")?,
                document("resourcePolicy")?,
            )),
            // A grant lets its grantee use the key without a word in the key policy: to an
            // outside account, what it encrypts (snapshots re-encrypted for ransom, data
            // copied out) is theirs to read. AWS services' own grants (EBS, RDS) name the
            // account's roles or are made by the service.
            ("kms.amazonaws.com", "CreateGrant") => {
                let key = text("keyId")?;
                let owner = principal_account(&key).unwrap_or(own);
                let grantee = text("granteePrincipal")?;
                let account = principal_account(&grantee)?;
                // A member account granting its own roles (or its service-linked roles) a
                // central key is how AWS documents using another account's key: the grantee
                // is the caller's account, or the account the record is for.
                let caller = a.principal.account_id.as_deref();
                if account == owner
                    || account == own
                    || Some(account) == caller
                    || trusted.iter().any(|t| t == account)
                {
                    return None;
                }
                Some(("a grant on KMS key", key, Some(vec![account.to_string()])))
            }
            ("kms.amazonaws.com", "PutKeyPolicy") => Some((
                "the key policy of KMS key",
                text("keyId")?,
                document("policy")?,
            )),
            ("ecr.amazonaws.com", "SetRepositoryPolicy") => Some((
                "the policy of ECR repository",
                text("repositoryName")?,
                document("policyText")?,
            )),
            ("sqs.amazonaws.com", "SetQueueAttributes") => Some((
                "the policy of SQS queue",
                ci_text("queueurl"),
                ci_policy("attributes")?,
            )),
            // The permission APIs of SQS and SNS name accounts directly (`AWSAccountIds`,
            // `AWSAccountId`; spelt variously in records).
            ("sqs.amazonaws.com", "AddPermission") => Some((
                "SQS queue",
                ci_text("queueurl"),
                accounts_outside(
                    crate::policy::field_ci(params, "awsaccountids")?,
                    own,
                    trusted,
                )?,
            )),
            ("sns.amazonaws.com", "AddPermission") => Some((
                "SNS topic",
                ci_text("topicarn"),
                accounts_outside(
                    crate::policy::field_ci(params, "awsaccountid")?,
                    own,
                    trusted,
                )?,
            )),
            // Created with a policy: the same as setting it.
            ("sqs.amazonaws.com", "CreateQueue") => Some((
                "the policy of SQS queue",
                ci_text("queuename"),
                ci_policy("attributes")?,
            )),
            ("sns.amazonaws.com", "CreateTopic") => Some((
                "the policy of SNS topic",
                ci_text("name"),
                ci_policy("attributes")?,
            )),
            ("kms.amazonaws.com", "CreateKey") => Some((
                "the key policy of KMS key",
                a.response_elements
                    .as_ref()
                    .and_then(|r| r.pointer("/keyMetadata/keyId"))
                    .and_then(Value::as_str)
                    .unwrap_or("(new)")
                    .to_string(),
                document("policy")?,
            )),
            ("sns.amazonaws.com", "SetTopicAttributes") => {
                if !ci_text("attributename").eq_ignore_ascii_case("Policy") {
                    return None;
                }
                Some((
                    "the policy of SNS topic",
                    ci_text("topicarn"),
                    crate::policy::field_ci(params, "attributevalue")
                        .and_then(|d| policy_opened(d, own, trusted))?,
                ))
            }
            ("events.amazonaws.com", "PutPermission") => {
                if let Some(policy) = params.get("policy") {
                    return Some((
                        "the policy of EventBridge bus",
                        text("eventBusName").unwrap_or_else(|| "default".into()),
                        policy_opened(policy, own, trusted)?,
                    ));
                }
                let principal = text("principal")?;
                let who = if principal == "*" {
                    if params.get("condition").is_some() {
                        return None;
                    }
                    None
                } else {
                    let account = principal_account(&principal)?;
                    if account == own || trusted.iter().any(|t| t == account) {
                        return None;
                    }
                    Some(vec![account.to_string()])
                };
                Some((
                    "EventBridge bus",
                    text("eventBusName").unwrap_or_else(|| "default".into()),
                    who,
                ))
            }
            _ => None,
        }
    }

    fn judge_granted_outside(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.access_granted_outside;
        if !cfg.enabled || !requested_change(a) {
            return;
        }
        let Some((what, resource, who)) = self.opened(a) else {
            return;
        };
        if allowed(&cfg.allow_principals, a) {
            return;
        }
        let (to, severity) = match &who {
            None => ("everyone".to_string(), Severity::High),
            Some(others) if !others.iter().all(|a| is_account(a)) => {
                (others.join(", "), Severity::Medium)
            }
            Some(accounts) => (
                format!(
                    "account{} {}",
                    if accounts.len() > 1 { "s" } else { "" },
                    accounts.join(", ")
                ),
                Severity::Medium,
            ),
        };
        let verb = if a.outcome.is_success() {
            "opened"
        } else {
            "tried to open"
        };
        let summary = format!("{} {verb} {what} {resource} to {to}", who_acted(a));
        let entity = Entity {
            kind: "resource".into(),
            id: format!("{}/{resource}", a.account_id.as_deref().unwrap_or("")),
        };
        let mitre = if what.starts_with("the trust policy") {
            (
                "Persistence",
                "T1098.003",
                "Account Manipulation: Additional Cloud Roles",
            )
        } else {
            ("Persistence", "T1098", "Account Manipulation")
        };
        out.push(self.alert(
            &ACCESS_GRANTED_OUTSIDE,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            severity,
            summary,
            mitre,
        ));
    }

    fn judge_instance_credentials(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.instance_credentials_outside_aws;
        // Only what the session did itself, from an address whose network is known.
        let Some(network) = a.enrichment.network.as_ref() else {
            return;
        };
        if !cfg.enabled || !acts_itself(a) {
            return;
        }
        if let Some(account) = eks_service_account(a) {
            if !AWS_ASNS.contains(&network.asn)
                && !cfg.trusted_asns.contains(&network.asn)
                && !allowed(&cfg.allow_principals, a)
            {
                out.push(self.token_outside_aws(a, account, network));
            }
            return;
        }
        if a.principal.kind != "AssumedRole" {
            return;
        }
        let Some(session) = a
            .principal
            .arn
            .as_deref()
            .and_then(|arn| arn.rsplit('/').next())
        else {
            return;
        };
        // A task's id is only what its session is named: random hex names are also chosen
        // by code that assumes roles, and Roles Anywhere (used off AWS by design) names
        // sessions after certificate serials, with a source identity. Medium, and not those.
        let (holder, severity) = if is_instance_id(session) {
            ("instance", Severity::High)
        } else if is_task_id(session) && a.principal.source_identity.is_none() {
            ("ECS task", Severity::Medium)
        } else {
            return;
        };
        if AWS_ASNS.contains(&network.asn)
            || cfg.trusted_asns.contains(&network.asn)
            || allowed(&cfg.allow_principals, a)
        {
            return;
        }
        let role = a
            .principal
            .session_issuer_arn
            .as_deref()
            .and_then(|arn| arn.rsplit('/').next())
            .unwrap_or("?");
        let (ip, from) = caller_network(a, network);
        let verb = if a.outcome.is_success() {
            "called"
        } else {
            "tried"
        };
        let summary = format!(
            "the credentials of {holder} {session} (role {role}) {verb} {} from {ip} ({from}), outside AWS",
            a.event_name
        );
        // About the instance's credentials: one alert per instance, its calls folded.
        let entity = Entity {
            kind: kinds::PRINCIPAL.into(),
            id: a.actor_key().into_owned(),
        };
        out.push(self.alert(
            &INSTANCE_CREDENTIALS_OUTSIDE,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            severity,
            summary,
            (
                "Credential Access",
                "T1552.005",
                "Unsecured Credentials: Cloud Instance Metadata API",
            ),
        ));
    }

    /// A grant to an account not in `trusted_accounts`, used: a secret of the account read by
    /// a principal of that account, or ciphertext of one of the account's KMS keys
    /// re-encrypted by it under a key of its own (which it can then open) — whether or not the
    /// grant was seen being made (a policy older than Trailguard, a trail that missed it). The
    /// record is the resource's account's copy of the call. Medium, as a grant to a named
    /// account is: an organization whose member accounts share secrets or keys lists them.
    fn judge_read_outside(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.access_granted_outside;
        // (`BatchGetSecretValue` is also logged as one `GetSecretValue` a secret.)
        let reads = matches!(
            (a.event_source.as_str(), a.event_name.as_str()),
            ("secretsmanager.amazonaws.com", "GetSecretValue") | ("kms.amazonaws.com", "ReEncrypt")
        );
        if !cfg.enabled || !reads || !a.outcome.is_success() || !acts_itself(a) {
            return;
        }
        let (Some(own), Some(reader)) =
            (a.account_id.as_deref(), a.principal.account_id.as_deref())
        else {
            return;
        };
        if reader == own
            || !is_account(reader)
            || cfg.trusted_accounts.iter().any(|t| t == reader)
            || allowed(&cfg.allow_principals, a)
        {
            return;
        }
        let param = |name: &str| {
            a.request_parameters
                .as_deref()
                .and_then(|p| crate::policy::field_ci(p, name))
                .and_then(Value::as_str)
        };
        // Named in the summary and the entity: the caller wrote them.
        let bounded = |text: &str| text.chars().take(256).collect::<String>();
        let (resource, what) = if a.event_source == "kms.amazonaws.com" {
            // A key id or alias without an ARN is the caller's own account's: only a
            // destination named as one of this account's keys stays inside.
            let destination = param("destinationKeyId").unwrap_or("?");
            if destination.split(':').nth(4) == Some(own) {
                return;
            }
            // The request names the source key only sometimes; the record's resources
            // name it (this account's key) and the destination.
            let listed = a
                .resources
                .iter()
                .map(|r| r.id.as_str())
                .find(|id| id.contains(":kms:") && id.split(':').nth(4) == Some(own));
            let source = bounded(param("sourceKeyId").or(listed).unwrap_or("?"));
            let what = format!(
                "re-encrypted ciphertext of this account's KMS key {source} under key {} (ReEncrypt): that account can now decrypt it",
                bounded(destination)
            );
            (source, what)
        } else {
            let secret = bounded(param("secretId").unwrap_or("?"));
            let what = format!("read secret {secret} of this account (GetSecretValue)");
            (secret, what)
        };
        let summary = format!(
            "{} of account {reader}, not a trusted account, {what}: access granted outside, used",
            who_acted(a)
        );
        // About the resource: every use of it folds into one alert.
        let entity = Entity {
            kind: "resource".into(),
            id: format!("{own}/{resource}"),
        };
        out.push(self.alert(
            &ACCESS_GRANTED_OUTSIDE,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            Severity::Medium,
            summary,
            if a.event_source == "kms.amazonaws.com" {
                ("Collection", "T1530", "Data from Cloud Storage")
            } else {
                (
                    "Credential Access",
                    "T1555.006",
                    "Credentials from Password Stores: Cloud Secrets Management Stores",
                )
            },
        ));
    }

    /// An EKS pod's service-account token exchanged for its role's credentials outside AWS.
    fn token_outside_aws(
        &self,
        a: &Activity,
        account: &str,
        network: &trailguard_common::contract::Network,
    ) -> Alert {
        let cfg = &self.cfg.instance_credentials_outside_aws;
        let role = a
            .request_parameters
            .as_ref()
            .and_then(|p| p.get("roleArn"))
            .and_then(serde_json::Value::as_str)
            .and_then(|arn| arn.rsplit('/').next())
            .unwrap_or("?");
        // The caller wrote it.
        let role: String = role.chars().take(128).collect();
        let (ip, from) = caller_network(a, network);
        let verb = if a.outcome.is_success() {
            "was exchanged for"
        } else {
            "was offered for"
        };
        let summary = format!(
            "the token of EKS service account {account} {verb} the credentials of role {role} from {ip} ({from}), outside AWS: taken from its pod"
        );
        let entity = Entity {
            kind: kinds::PRINCIPAL.into(),
            id: a.actor_key().into_owned(),
        };
        self.alert(
            &INSTANCE_CREDENTIALS_OUTSIDE,
            (cfg.severity, &cfg.actions),
            a,
            Some(entity),
            Severity::High,
            summary,
            (
                "Credential Access",
                "T1528",
                "Steal Application Access Token",
            ),
        )
    }

    fn judge_credentials(&self, a: &Activity, out: &mut Vec<Alert>) {
        let cfg = &self.cfg.credentials_for_another_user;
        if !cfg.enabled || a.event_source != "iam.amazonaws.com" {
            return;
        }
        let params = a.request_parameters.as_ref();
        let text = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
        let what = match a.event_name.as_str() {
            "CreateAccessKey" => "created an access key",
            "CreateLoginProfile" => "gave a console password",
            "UpdateLoginProfile" => "changed the console password",
            // Turning a key back on is as good as making one.
            "UpdateAccessKey"
                if text("status").is_some_and(|s| s.eq_ignore_ascii_case("Active")) =>
            {
                "turned an access key back on"
            }
            "CreateServiceSpecificCredential" => "created a service-specific credential",
            "UploadSigningCertificate" => "uploaded a signing certificate",
            "UploadSSHPublicKey" => "uploaded an SSH public key",
            // Someone else's MFA device on the user: whoever holds it signs in as the user.
            "EnableMFADevice" => "attached an MFA device",
            "DeactivateMFADevice" => "removed the MFA device",
            _ => return,
        };
        let Some(user) = text("userName") else {
            // No user named: the caller's own.
            return;
        };
        // The caller's own: an IAM user naming itself. A role session's name is its caller's
        // choice (a session named after the victim proves nothing), so a session is never
        // the user it names.
        let own = a.principal.kind == "IAMUser"
            && a.principal
                .name
                .as_deref()
                .and_then(|n| n.rsplit('/').next())
                .is_some_and(|n| n.eq_ignore_ascii_case(user));
        if own || allowed(&cfg.allow_principals, a) {
            return;
        }
        let summary = format!("{} {what} for the user {user}", who(a));
        // The user given credentials, keyed as its actor is (path-less ARN).
        let name = user.rsplit('/').next().unwrap_or(user);
        let victim = match a.account_id.as_deref() {
            Some(account) => format!(
                "arn:{}:iam::{account}:user/{name}",
                a.partition.as_deref().unwrap_or("aws")
            ),
            None => format!("user/{name}"),
        };
        out.push(self.alert(
            &CREDENTIALS_FOR_ANOTHER,
            (cfg.severity, &cfg.actions),
            a,
            // A refused call needs no right and names whatever its caller typed: refusals
            // are about the actor, so made-up names fold into one alert instead of one each.
            a.outcome.is_success().then(|| Entity {
                kind: kinds::PRINCIPAL.into(),
                id: victim,
            }),
            Severity::Medium,
            summary,
            (
                "Persistence",
                "T1098.001",
                "Account Manipulation: Additional Cloud Credentials",
            ),
        ));
    }
}

impl EventPolicy for Exposure {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        vec![
            &RESOURCE_SHARED_OUT,
            &DEFENSE_EVASION,
            &ROOT_ACTIVITY,
            &CREDENTIALS_FOR_ANOTHER,
            &INSTANCE_CREDENTIALS_OUTSIDE,
            &ACCESS_GRANTED_OUTSIDE,
            &OUTSIDE_KEY_ENCRYPTION,
        ]
    }

    fn evaluate(&self, a: &Activity, alerts: &mut Vec<Alert>) {
        self.judge_root(a, alerts);
        self.judge_instance_credentials(a, alerts);
        // Each of the others is a handful of event names.
        match a.event_source.as_str() {
            "ec2.amazonaws.com" | "rds.amazonaws.com" => {
                self.judge_shared_out(a, alerts);
                self.judge_blinding(a, alerts);
                self.judge_outside_key(a, alerts);
            }
            "s3.amazonaws.com" => self.judge_outside_key(a, alerts),
            "redshift.amazonaws.com"
            | "dynamodb.amazonaws.com"
            | "backup.amazonaws.com"
            | "ram.amazonaws.com"
            | "lakeformation.amazonaws.com" => {
                self.judge_shared_out(a, alerts);
                self.judge_blinding(a, alerts);
            }
            "iam.amazonaws.com" => {
                self.judge_credentials(a, alerts);
                self.judge_granted_outside(a, alerts);
            }
            "eks.amazonaws.com" => self.judge_granted_outside(a, alerts),
            "secretsmanager.amazonaws.com" => {
                self.judge_granted_outside(a, alerts);
                self.judge_read_outside(a, alerts);
            }
            "lambda.amazonaws.com"
            | "rolesanywhere.amazonaws.com"
            | "ecr.amazonaws.com"
            | "sqs.amazonaws.com"
            | "sns.amazonaws.com" => self.judge_granted_outside(a, alerts),
            "kms.amazonaws.com" => {
                self.judge_granted_outside(a, alerts);
                self.judge_blinding(a, alerts);
                self.judge_outside_key(a, alerts);
                self.judge_read_outside(a, alerts);
            }
            "events.amazonaws.com" => {
                self.judge_granted_outside(a, alerts);
                self.judge_blinding(a, alerts);
            }
            _ => self.judge_blinding(a, alerts),
        }
    }
}

/// The defence an activity switched off, as an alert's entity: the call and what it named (a
/// detector, rule, recorder, key, …; else the first resource CloudTrail lists) in the account
/// and region — so one actor blinding several defences within the hour raises an alert for
/// each, while the same call on the same thing again folds.
fn defence_of(a: &Activity) -> Entity {
    const NAMED_BY: &[&str] = &[
        "detectorId",
        "name",
        "Name",
        "ruleName",
        "keyId",
        "KeyId",
        "configurationRecorderName",
        "ConfigurationRecorderName",
        "deliveryChannelName",
        "DeliveryChannelName",
        "configRuleName",
        "ConfigRuleName",
        "resolverQueryLogConfigId",
        "ResolverQueryLogConfigId",
        "analyzerName",
        "graphArn",
    ];
    let params = a.request_parameters.as_ref();
    let named = NAMED_BY.iter().find_map(|key| {
        params
            .and_then(|p| p.get(*key))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let thing = named.or_else(|| a.resources.first().map(|r| r.id.clone()));
    let service = a.event_source.trim_end_matches(".amazonaws.com");
    let mut id = format!("{service} {}", a.event_name);
    if let Some(thing) = thing.filter(|t| !t.is_empty()) {
        id.push(' ');
        id.push_str(&thing);
    }
    id.push_str(" in ");
    id.push_str(a.account_id.as_deref().unwrap_or("-"));
    id.push('/');
    id.push_str(a.region.as_deref().unwrap_or("-"));
    Entity {
        kind: kinds::AWS_SERVICE.into(),
        id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A CloudTrail record of `name` on `source` by `identity`, normalized.
    fn record(source: &str, name: &str, identity: Value, params: Value, error: bool) -> Activity {
        let mut r = json!({
            "eventVersion": "1.09", "eventTime": "2024-06-02T19:41:40Z", "eventSource": source,
            "eventName": name, "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
            "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0",
            "eventID": format!("00000000-0000-4000-8000-{:012}", name.len()),
            "userIdentity": identity, "requestParameters": params, "eventType": "AwsApiCall",
        });
        if error {
            r["errorCode"] = "AccessDenied".into();
            r["errorMessage"] = "not authorized".into();
        }
        match trailguard_ingest::normalize::normalize(&r.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    fn user(name: &str) -> Value {
        json!({"type": "IAMUser", "userName": name, "accountId": "111111111111",
            "arn": format!("arn:aws:iam::111111111111:user/{name}"),
            "principalId": "AIDAEXAMPLE", "accessKeyId": "AKIAEXAMPLE"})
    }

    fn sso(name: &str) -> Value {
        let role = "AWSReservedSSO_Admin_0123456789abcdef";
        json!({"type": "AssumedRole", "principalId": format!("AROAEXAMPLE:{name}"),
            "arn": format!("arn:aws:sts::111111111111:assumed-role/{role}/{name}"),
            "accountId": "111111111111", "accessKeyId": "ASIAEXAMPLE",
            "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
                "arn": format!("arn:aws:iam::111111111111:role/aws-reserved/sso.amazonaws.com/{role}"),
                "accountId": "111111111111", "userName": role}}})
    }

    fn run(a: &Activity) -> Vec<Alert> {
        let mut out = Vec::new();
        Exposure::new(ExposurePolicies::default()).evaluate(a, &mut out);
        out
    }

    fn ids(alerts: &[Alert]) -> Vec<(&str, Severity)> {
        alerts
            .iter()
            .map(|a| (a.policy_id.as_str(), a.severity))
            .collect()
    }

    #[test]
    fn snapshots_and_images_shared_out() {
        let public_snapshot = record(
            "ec2.amazonaws.com",
            "ModifySnapshotAttribute",
            user("mallory"),
            json!({"snapshotId": "snap-0123", "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"group": "all"}]}}}),
            false,
        );
        let alerts = run(&public_snapshot);
        assert_eq!(ids(&alerts), [("resource-shared-out", Severity::High)]);
        assert!(
            alerts[0].evidence.summary.contains("everyone"),
            "{alerts:?}"
        );
        let to_account = record(
            "ec2.amazonaws.com",
            "ModifyImageAttribute",
            sso("dana@example.com"),
            json!({"imageId": "ami-0123", "attributeType": "launchPermission",
                "launchPermission": {"add": {"items": [{"userId": "999999999999"}]}}}),
            false,
        );
        assert_eq!(
            ids(&run(&to_account)),
            [("resource-shared-out", Severity::High)]
        );
        let rds = record(
            "rds.amazonaws.com",
            "ModifyDBClusterSnapshotAttribute",
            user("mallory"),
            json!({"dBClusterSnapshotIdentifier": "prod-2024", "attributeName": "restore",
                "valuesToAdd": ["999999999999"]}),
            false,
        );
        let rds_alerts = run(&rds);
        assert_eq!(ids(&rds_alerts), [("resource-shared-out", Severity::High)]);
        // Each share is taken back where it is: the resource's ARN (region, account) and the
        // grantee added, with the action that fits the resource.
        let unshare = |alerts: &[Alert]| -> Vec<(ActionKind, String, String, Option<String>)> {
            alerts[0]
                .actions
                .iter()
                .filter(|r| r.kind != ActionKind::Notify)
                .map(|r| {
                    (
                        r.kind,
                        r.target.kind.clone(),
                        r.target.id.clone(),
                        r.target.grantee.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(
            unshare(&alerts),
            [(
                ActionKind::UnshareSnapshot,
                "ebs-snapshot".into(),
                "arn:aws:ec2:us-east-1:111111111111:snapshot/snap-0123".into(),
                Some("all".into())
            )]
        );
        assert_eq!(
            unshare(&run(&to_account)),
            [(
                ActionKind::UnshareImage,
                "ami".into(),
                "arn:aws:ec2:us-east-1:111111111111:image/ami-0123".into(),
                Some("999999999999".into())
            )]
        );
        assert_eq!(
            unshare(&rds_alerts),
            [(
                ActionKind::UnshareSnapshot,
                "rds-cluster-snapshot".into(),
                "arn:aws:rds:us-east-1:111111111111:cluster-snapshot:prod-2024".into(),
                Some("999999999999".into())
            )]
        );
        assert!(rds_alerts[0]
            .actions
            .iter()
            .filter(|r| r.kind != ActionKind::Notify)
            .all(|r| r.target.account_id.as_deref() == Some("111111111111")));
        // Shared within the account, removed, another attribute, a trusted account: nothing.
        for params in [
            json!({"snapshotId": "snap-1", "createVolumePermission": {"add": {"items": [{"userId": "111111111111"}]}}}),
            json!({"snapshotId": "snap-1", "createVolumePermission": {"remove": {"items": [{"group": "all"}]}}}),
            json!({"snapshotId": "snap-1", "attributeType": "PRODUCT_CODES"}),
            json!({"snapshotId": "snap-1", "createVolumePermission": {"add": {"items": [{"userId": "bob"}]}}}),
        ] {
            let a = record(
                "ec2.amazonaws.com",
                "ModifySnapshotAttribute",
                user("ops"),
                params,
                false,
            );
            assert!(run(&a).is_empty(), "{a:?}");
        }
        let mut cfg = ExposurePolicies::default();
        cfg.resource_shared_out.trusted_accounts = vec!["999999999999".into()];
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(&rds, &mut out);
        assert!(out.is_empty());
        // Shared with an organization: outside unless it is the organization's own.
        let org = record(
            "ec2.amazonaws.com",
            "ModifyImageAttribute",
            user("mallory"),
            json!({"imageId": "ami-0org", "launchPermission": {"add": {"items": [
                {"organizationArn": "arn:aws:organizations::999999999999:organization/o-evil"}]}}}),
            false,
        );
        assert_eq!(ids(&run(&org)), [("resource-shared-out", Severity::High)]);
        let mut cfg = ExposurePolicies::default();
        cfg.resource_shared_out.trusted_organizations =
            vec!["arn:aws:organizations::999999999999:organization/o-evil".into()];
        let mut out = Vec::new();
        Exposure::new(cfg.clone()).evaluate(&org, &mut out);
        assert!(out.is_empty());
        // An OU of the trusted organization is inside it; one of another organization is not.
        for (ou, outside) in [
            (
                "arn:aws:organizations::999999999999:ou/o-evil/ou-ab12-cdef3456",
                false,
            ),
            (
                "arn:aws:organizations::888888888888:ou/o-other/ou-ab12-cdef3456",
                true,
            ),
        ] {
            let shared = record(
                "ec2.amazonaws.com",
                "ModifyImageAttribute",
                user("mallory"),
                json!({"imageId": "ami-0ou", "launchPermission": {"add": {"items": [
                    {"organizationalUnitArn": ou}]}}}),
                false,
            );
            let mut out = Vec::new();
            Exposure::new(cfg.clone()).evaluate(&shared, &mut out);
            assert_eq!(!out.is_empty(), outside, "{ou}");
        }
        // The flat form of the API.
        let flat = record(
            "ec2.amazonaws.com",
            "ModifySnapshotAttribute",
            user("mallory"),
            json!({"snapshotId": "snap-9", "attribute": "createVolumePermission",
                "operationType": "add", "userIds": ["999999999999"]}),
            false,
        );
        assert_eq!(ids(&run(&flat)), [("resource-shared-out", Severity::High)]);
        // A failed attempt: one lower, nothing but notify.
        let failed = record(
            "ec2.amazonaws.com",
            "ModifySnapshotAttribute",
            user("mallory"),
            json!({"snapshotId": "snap-0123", "createVolumePermission": {"add": {"items": [{"group": "all"}]}}}),
            true,
        );
        assert_eq!(
            ids(&run(&failed)),
            [("resource-shared-out", Severity::Medium)]
        );
    }

    #[test]
    fn data_copied_or_shared_with_another_account() {
        // Each call that hands data (or a way into the network) to another account, with
        // what it names: (source, name, parameters, what the summary must name).
        let outside = [
            (
                "redshift.amazonaws.com",
                "AuthorizeSnapshotAccess",
                json!({"snapshotIdentifier": "dw-2026-11", "accountWithRestoreAccess": "999999999999"}),
                "Redshift snapshot dw-2026-11",
            ),
            (
                "redshift.amazonaws.com",
                "AuthorizeDataShare",
                json!({"dataShareArn": "arn:aws:redshift:us-east-1:111111111111:datashare:ns-1/sales",
                    "consumerIdentifier": "999999999999"}),
                "Redshift datashare arn:aws:redshift:us-east-1:111111111111:datashare:ns-1/sales",
            ),
            (
                "dynamodb.amazonaws.com",
                "ExportTableToPointInTime",
                json!({"tableArn": "arn:aws:dynamodb:us-east-1:111111111111:table/orders",
                    "s3Bucket": "drop-zone", "s3BucketOwner": "999999999999",
                    "exportFormat": "DYNAMODB_JSON"}),
                "DynamoDB table arn:aws:dynamodb:us-east-1:111111111111:table/orders",
            ),
            (
                "backup.amazonaws.com",
                "StartCopyJob",
                json!({"recoveryPointArn": "arn:aws:rds:us-east-1:111111111111:snapshot:awsbackup:job-1",
                    "sourceBackupVaultName": "Default",
                    "destinationBackupVaultArn": "arn:aws:backup:us-east-1:999999999999:backup-vault:drop",
                    "iamRoleArn": "arn:aws:iam::111111111111:role/backup"}),
                "recovery point arn:aws:rds:us-east-1:111111111111:snapshot:awsbackup:job-1",
            ),
            (
                "backup.amazonaws.com",
                "CreateBackupPlan",
                json!({"backupPlan": {"backupPlanName": "nightly", "rules": [{"ruleName": "r",
                    "targetBackupVaultName": "Default",
                    "copyActions": [{"destinationBackupVaultArn":
                        "arn:aws:backup:eu-west-1:999999999999:backup-vault:drop"}]}]}}),
                "backup plan nightly",
            ),
            (
                "ram.amazonaws.com",
                "CreateResourceShare",
                json!({"name": "net", "allowExternalPrincipals": true,
                    "resourceArns": ["arn:aws:ec2:us-east-1:111111111111:subnet/subnet-1"],
                    "principals": ["999999999999"]}),
                "RAM resource share net",
            ),
            (
                "ram.amazonaws.com",
                "AssociateResourceShare",
                json!({"resourceShareArn": "arn:aws:ram:us-east-1:111111111111:resource-share/abc",
                    "principals": ["arn:aws:iam::999999999999:role/reader"]}),
                "RAM resource share arn:aws:ram:us-east-1:111111111111:resource-share/abc",
            ),
            (
                "lakeformation.amazonaws.com",
                "GrantPermissions",
                json!({"principal": {"dataLakePrincipalIdentifier": "999999999999"},
                    "resource": {"table": {"databaseName": "sales", "name": "orders"}},
                    "permissions": ["SELECT"], "permissionsWithGrantOption": ["SELECT"]}),
                "Lake Formation grant",
            ),
        ];
        let mut trusting = ExposurePolicies::default();
        trusting.resource_shared_out.trusted_accounts = vec!["999999999999".into()];
        for (source, name, params, names) in outside {
            let shared = record(source, name, user("mallory"), params.clone(), false);
            let alerts = run(&shared);
            assert_eq!(
                ids(&alerts),
                [("resource-shared-out", Severity::High)],
                "{name}"
            );
            let summary = &alerts[0].evidence.summary;
            assert!(summary.contains(names), "{name}: {summary}");
            assert!(
                summary.contains("account 999999999999"),
                "{name}: {summary}"
            );
            // About the resource, in the account it belongs to.
            assert_eq!(alerts[0].entity.kind, "resource", "{name}");
            assert!(alerts[0].entity.id.starts_with("111111111111/"), "{name}");
            // Remediate takes back snapshots and images only: nothing but a notification
            // is asked for here (never an unshare aimed at something else).
            assert!(
                alerts[0]
                    .actions
                    .iter()
                    .all(|r| r.kind == ActionKind::Notify),
                "{name}: {:?}",
                alerts[0].actions
            );
            // A trusted account is inside.
            let mut out = Vec::new();
            Exposure::new(trusting.clone()).evaluate(&shared, &mut out);
            assert!(out.is_empty(), "{name}: {out:?}");
            // A refused attempt: one lower.
            let refused = record(source, name, user("mallory"), params, true);
            assert_eq!(
                ids(&run(&refused)),
                [("resource-shared-out", Severity::Medium)],
                "{name}"
            );
        }
        // The same calls kept inside the account, or naming no account at all.
        let inside = [
            (
                "redshift.amazonaws.com",
                "AuthorizeSnapshotAccess",
                json!({"snapshotIdentifier": "dw", "accountWithRestoreAccess": "amazon-redshift-support"}),
            ),
            (
                "redshift.amazonaws.com",
                "AuthorizeDataShare",
                json!({"dataShareArn": "arn:aws:redshift:us-east-1:111111111111:datashare:ns-1/sales",
                    "consumerIdentifier": "ADX"}),
            ),
            (
                "dynamodb.amazonaws.com",
                "ExportTableToPointInTime",
                json!({"tableArn": "arn:aws:dynamodb:us-east-1:111111111111:table/orders",
                    "s3Bucket": "analytics"}),
            ),
            (
                "dynamodb.amazonaws.com",
                "ExportTableToPointInTime",
                json!({"tableArn": "arn:aws:dynamodb:us-east-1:111111111111:table/orders",
                    "s3Bucket": "analytics", "s3BucketOwner": "111111111111"}),
            ),
            (
                "backup.amazonaws.com",
                "StartCopyJob",
                json!({"recoveryPointArn": "arn:aws:ec2:us-east-1::snapshot/snap-1",
                    "destinationBackupVaultArn": "arn:aws:backup:eu-west-1:111111111111:backup-vault:dr"}),
            ),
            (
                "ram.amazonaws.com",
                "CreateResourceShare",
                json!({"name": "net", "allowExternalPrincipals": false,
                    "resourceArns": ["arn:aws:ec2:us-east-1:111111111111:subnet/subnet-1"]}),
            ),
            (
                "lakeformation.amazonaws.com",
                "GrantPermissions",
                json!({"principal": {"dataLakePrincipalIdentifier":
                        "arn:aws:iam::111111111111:role/analyst"},
                    "resource": {"database": {"name": "sales"}}, "permissions": ["DESCRIBE"]}),
            ),
        ];
        for (source, name, params) in inside {
            let kept = record(source, name, user("dana"), params, false);
            assert!(run(&kept).is_empty(), "{name}: {:?}", run(&kept));
        }
        // A share that allows no external principals names only the organization's accounts
        // (RAM refuses others), whatever it lists.
        let internal = record(
            "ram.amazonaws.com",
            "CreateResourceShare",
            user("dana"),
            json!({"name": "net", "allowExternalPrincipals": false,
                "resourceArns": ["arn:aws:ec2:us-east-1:111111111111:subnet/subnet-1"],
                "principals": ["222222222222", "333333333333"]}),
            false,
        );
        assert!(run(&internal).is_empty(), "{:?}", run(&internal));
        // A hostile list of principals: read up to a bound, the summary names ten.
        let many: Vec<String> = (0..5_000)
            .map(|i| format!("{:012}", 900_000_000_000u64 + i))
            .collect();
        let flood = record(
            "ram.amazonaws.com",
            "AssociateResourceShare",
            user("mallory"),
            json!({"resourceShareArn": "arn:aws:ram:us-east-1:111111111111:resource-share/x",
                "principals": many}),
            false,
        );
        let alerts = run(&flood);
        assert_eq!(ids(&alerts), [("resource-shared-out", Severity::High)]);
        let summary = &alerts[0].evidence.summary;
        assert!(summary.ends_with("at least 990 more"), "{summary}");
        assert!(summary.len() < 1_000, "{}", summary.len());
        // A share with the organization is inside it when the organization is trusted.
        let org = "arn:aws:organizations::111111111111:organization/o-abc123";
        let to_org = record(
            "ram.amazonaws.com",
            "CreateResourceShare",
            user("dana"),
            json!({"name": "tgw", "principals": [org],
                "resourceArns": ["arn:aws:ec2:us-east-1:111111111111:transit-gateway/tgw-1"]}),
            false,
        );
        assert_eq!(
            ids(&run(&to_org)),
            [("resource-shared-out", Severity::High)]
        );
        let mut own_org = ExposurePolicies::default();
        own_org.resource_shared_out.trusted_organizations = vec![org.into()];
        let mut out = Vec::new();
        Exposure::new(own_org).evaluate(&to_org, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_kubernetes_cluster_opened_to_another_account() {
        let eks = "eks.amazonaws.com";
        let outside_admin = record(
            eks,
            "AssociateAccessPolicy",
            sso("dana@example.com"),
            json!({"name": "prod", "principalArn": "arn:aws:iam::999988887777:role/ops",
                "policyArn": "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
                "accessScope": {"type": "cluster"}}),
            false,
        );
        let alerts = run(&outside_admin);
        assert_eq!(
            ids(&alerts),
            [("access-granted-outside", Severity::Medium)],
            "{alerts:?}"
        );
        let summary = &alerts[0].evidence.summary;
        assert!(summary.contains("EKS cluster prod"), "{summary}");
        assert!(summary.contains("999988887777"), "{summary}");
        let entry = record(
            eks,
            "CreateAccessEntry",
            user("mallory"),
            json!({"name": "prod", "principalArn": "arn:aws:iam::999988887777:role/ops",
                "type": "STANDARD"}),
            false,
        );
        assert_eq!(
            ids(&run(&entry)),
            [("access-granted-outside", Severity::Medium)]
        );
        // The account's own roles, and a trusted account's, are inside.
        let own = record(
            eks,
            "CreateAccessEntry",
            user("dana"),
            json!({"name": "prod", "principalArn": "arn:aws:iam::111111111111:role/nodes",
                "type": "EC2_LINUX"}),
            false,
        );
        assert!(run(&own).is_empty());
        let mut cfg = ExposurePolicies::default();
        cfg.access_granted_outside.trusted_accounts = vec!["999988887777".into()];
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(&entry, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn defenders_blinded() {
        let cases = [
            (
                "guardduty.amazonaws.com",
                "DeleteDetector",
                json!({"detectorId": "d1"}),
                Some(Severity::High),
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "enable": false}),
                Some(Severity::High),
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "enable": true}),
                None,
            ),
            (
                "guardduty.amazonaws.com",
                "CreateFilter",
                json!({"name": "x", "action": "ARCHIVE"}),
                Some(Severity::Medium),
            ),
            (
                "guardduty.amazonaws.com",
                "CreateFilter",
                json!({"name": "x", "action": "NOOP"}),
                None,
            ),
            (
                "config.amazonaws.com",
                "StopConfigurationRecorder",
                json!({"configurationRecorderName": "default"}),
                Some(Severity::High),
            ),
            (
                "securityhub.amazonaws.com",
                "DisableSecurityHub",
                json!({}),
                Some(Severity::High),
            ),
            (
                "route53resolver.amazonaws.com",
                "DisassociateResolverQueryLogConfig",
                json!({"resolverQueryLogConfigId": "q", "resourceId": "vpc-1"}),
                Some(Severity::High),
            ),
            (
                "kms.amazonaws.com",
                "ScheduleKeyDeletion",
                json!({"keyId": "k", "pendingWindowInDays": 7}),
                Some(Severity::High),
            ),
            (
                "organizations.amazonaws.com",
                "LeaveOrganization",
                json!(null),
                Some(Severity::High),
            ),
            // vpn-vpc-changes' (high), not twice.
            (
                "ec2.amazonaws.com",
                "DeleteFlowLogs",
                json!({"flowLogIds": ["fl-1"]}),
                None,
            ),
            ("guardduty.amazonaws.com", "ListDetectors", json!({}), None),
            // The detector kept, part of it off: the features list or the older data sources.
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "features": [
                    {"name": "S3_DATA_EVENTS", "status": "ENABLED"},
                    {"name": "EKS_RUNTIME_MONITORING", "status": "DISABLED"}]}),
                Some(Severity::Medium),
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "dataSources": {"s3Logs": {"enable": false}}}),
                Some(Severity::Medium),
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "features": [{"name": "S3_DATA_EVENTS", "status": "ENABLED"}]}),
                None,
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateOrganizationConfiguration",
                json!({"detectorId": "d1", "autoEnableOrganizationMembers": "NONE"}),
                Some(Severity::Medium),
            ),
            (
                "guardduty.amazonaws.com",
                "UpdateOrganizationConfiguration",
                json!({"detectorId": "d1", "autoEnableOrganizationMembers": "ALL"}),
                None,
            ),
            (
                "securityhub.amazonaws.com",
                "UpdateStandardsControl",
                json!({"standardsControlArn": "arn:x", "controlStatus": "DISABLED", "disabledReason": "noise"}),
                Some(Severity::Medium),
            ),
            (
                "securityhub.amazonaws.com",
                "BatchUpdateStandardsControlAssociations",
                json!({"standardsControlAssociationUpdates": [
                    {"securityControlId": "CloudTrail.1", "updatedStatus": "DISABLED"}]}),
                Some(Severity::Medium),
            ),
            (
                "securityhub.amazonaws.com",
                "CreateAutomationRule",
                json!({"ruleName": "quiet", "actions": [{"type": "FINDING_FIELDS_UPDATE",
                    "findingFieldsUpdate": {"workflow": {"status": "SUPPRESSED"}}}]}),
                Some(Severity::Medium),
            ),
            (
                "securityhub.amazonaws.com",
                "CreateAutomationRule",
                json!({"ruleName": "tag", "actions": [{"type": "FINDING_FIELDS_UPDATE",
                    "findingFieldsUpdate": {"note": {"text": "owner: web"}}}]}),
                None,
            ),
            (
                "securityhub.amazonaws.com",
                "BatchUpdateAutomationRules",
                json!({"updateAutomationRulesRequestItems": [{"ruleArn": "arn:x", "actions": [
                    {"type": "FINDING_FIELDS_UPDATE",
                     "findingFieldsUpdate": {"workflow": {"status": "SUPPRESSED"}}}]}]}),
                Some(Severity::Medium),
            ),
            // An agent managed by the team, not by GuardDuty: the protection stays on.
            (
                "guardduty.amazonaws.com",
                "UpdateDetector",
                json!({"detectorId": "d1", "features": [{"name": "RUNTIME_MONITORING",
                    "status": "ENABLED", "additionalConfiguration": [
                        {"name": "EKS_ADDON_MANAGEMENT", "status": "DISABLED"}]}]}),
                None,
            ),
            (
                "events.amazonaws.com",
                "DisableRule",
                json!({"name": "config-drift-alerts-staging"}),
                None,
            ),
            // A rule that acts on findings already suppressed does not suppress.
            (
                "securityhub.amazonaws.com",
                "CreateAutomationRule",
                json!({"ruleName": "renotify", "criteria": {"workflowStatus": [
                    {"value": "SUPPRESSED", "comparison": "EQUALS"}]},
                    "actions": [{"type": "FINDING_FIELDS_UPDATE",
                    "findingFieldsUpdate": {"workflow": {"status": "NOTIFIED"}}}]}),
                None,
            ),
            (
                "config.amazonaws.com",
                "PutConfigurationRecorder",
                json!({"configurationRecorder": {"name": "default", "recordingGroup": {
                    "allSupported": false, "resourceTypes": ["AWS::S3::Bucket"]}}}),
                Some(Severity::Medium),
            ),
            (
                "config.amazonaws.com",
                "PutConfigurationRecorder",
                json!({"configurationRecorder": {"name": "default", "recordingGroup": {
                    "allSupported": true, "includeGlobalResourceTypes": true}}}),
                None,
            ),
            (
                "access-analyzer.amazonaws.com",
                "CreateArchiveRule",
                json!({"analyzerName": "org", "ruleName": "all", "filter": {}}),
                Some(Severity::Medium),
            ),
            (
                "organizations.amazonaws.com",
                "DisableAWSServiceAccess",
                json!({"servicePrincipal": "guardduty.amazonaws.com"}),
                Some(Severity::High),
            ),
            (
                "organizations.amazonaws.com",
                "DisableAWSServiceAccess",
                json!({"servicePrincipal": "ram.amazonaws.com"}),
                None,
            ),
            (
                "events.amazonaws.com",
                "DisableRule",
                json!({"name": "GuardDutyFindingsToSlack"}),
                Some(Severity::Medium),
            ),
            (
                "events.amazonaws.com",
                "DisableRule",
                json!({"name": "nightly-build"}),
                None,
            ),
            (
                "ec2.amazonaws.com",
                "DisableSnapshotBlockPublicAccess",
                json!({}),
                Some(Severity::High),
            ),
            (
                "macie2.amazonaws.com",
                "UpdateMacieSession",
                json!({"status": "PAUSED"}),
                Some(Severity::Medium),
            ),
        ];
        for (source, name, params, want) in cases {
            let alerts = run(&record(source, name, user("mallory"), params, false));
            let got = alerts.first().map(|a| a.severity);
            assert_eq!(got, want, "{source} {name}");
            if want.is_some() {
                assert_eq!(alerts[0].policy_id, "defense-evasion");
            }
        }
    }

    #[test]
    fn root_used_for_anything_but_signing_in() {
        let root = json!({"type": "Root", "principalId": "111111111111",
            "arn": "arn:aws:iam::111111111111:root", "accountId": "111111111111"});
        let alerts = run(&record(
            "iam.amazonaws.com",
            "CreateAccessKey",
            root.clone(),
            json!({}),
            false,
        ));
        assert_eq!(ids(&alerts), [("root-activity", Severity::High)]);
        let read = run(&record(
            "iam.amazonaws.com",
            "ListAccessKeys",
            root.clone(),
            json!({}),
            false,
        ));
        assert_eq!(ids(&read), [("root-activity", Severity::Medium)]);
        let linked = record(
            "iam.amazonaws.com",
            "CreateServiceLinkedRole",
            root.clone(),
            json!({"aWSServiceName": "support.amazonaws.com"}),
            false,
        );
        assert!(run(&linked).is_empty());
        let signin = record(
            "signin.amazonaws.com",
            "ConsoleLogin",
            root.clone(),
            json!(null),
            false,
        );
        assert!(run(&signin).is_empty());
        let mut by_service = root;
        by_service["invokedBy"] = "support.amazonaws.com".into();
        assert!(run(&record(
            "s3.amazonaws.com",
            "ListBuckets",
            by_service,
            json!({}),
            false
        ))
        .is_empty());
    }

    /// Data re-encrypted under a key another account holds: ransom by key.
    #[test]
    fn data_encrypted_with_an_outside_key() {
        let foreign = "arn:aws:kms:us-east-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let own = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let call = |source: &str, name: &str, params: Value| {
            run(&record(source, name, user("mallory"), params, false))
        };
        let copy = |key: &str| {
            call(
                "ec2.amazonaws.com",
                "CopySnapshot",
                json!({"sourceRegion": "us-east-1", "sourceSnapshotId": "snap-0123",
                    "encrypted": true, "kmsKeyId": key}),
            )
        };
        let alerts = copy(foreign);
        assert_eq!(ids(&alerts), [("outside-key-encryption", Severity::High)]);
        assert!(
            alerts[0].evidence.summary.contains("999988887777"),
            "{}",
            alerts[0].evidence.summary
        );
        assert!(copy(own).is_empty());
        assert!(
            copy("1234abcd-12ab-34cd-56ef-1234567890ab").is_empty(),
            "a key id is the account's own"
        );
        assert_eq!(
            ids(&call(
                "ec2.amazonaws.com",
                "ModifyEbsDefaultKmsKeyId",
                json!({"ModifyEbsDefaultKmsKeyIdRequest": {"KmsKeyId": foreign}})
            )),
            [("outside-key-encryption", Severity::High)]
        );
        assert_eq!(
            ids(&call(
                "s3.amazonaws.com",
                "PutBucketEncryption",
                json!({"bucketName": "data", "ServerSideEncryptionConfiguration": {"Rule": {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                        "KMSMasterKeyID": foreign}}}})
            )),
            [("outside-key-encryption", Severity::High)]
        );
        assert_eq!(
            ids(&call(
                "s3.amazonaws.com",
                "CopyObject",
                json!({"bucketName": "data", "key": "a b.csv", "x-amz-copy-source": "/data/a%20b.csv",
                    "x-amz-server-side-encryption": "aws:kms",
                    "x-amz-server-side-encryption-aws-kms-key-id": foreign})
            )),
            [("outside-key-encryption", Severity::High)]
        );
        // The account's ciphertext decrypted and encrypted again under another account's key
        // (`ReEncrypt`: the plaintext never leaves KMS, the result is the other account's to
        // open). Only where it goes counts: data brought in from a partner's key is ours.
        let reencrypt = |source: &str, destination: &str| {
            call(
                "kms.amazonaws.com",
                "ReEncrypt",
                json!({"sourceKeyId": source, "destinationKeyId": destination,
                    "sourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    "destinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
            )
        };
        let alerts = reencrypt(own, foreign);
        assert_eq!(ids(&alerts), [("outside-key-encryption", Severity::High)]);
        assert!(
            alerts[0].evidence.summary.contains("ReEncrypt")
                && alerts[0].evidence.summary.contains("999988887777"),
            "{}",
            alerts[0].evidence.summary
        );
        assert!(reencrypt(foreign, own).is_empty());
        assert!(reencrypt(own, "alias/archive").is_empty());
        // Written into another account's bucket under its required key: the owner's business.
        for (name, params) in [
            (
                "PutObject",
                json!({"bucketName": "partner-drop", "key": "a.csv",
                "x-amz-server-side-encryption-aws-kms-key-id": foreign}),
            ),
            (
                "CopyObject",
                json!({"bucketName": "partner-drop", "key": "a.csv",
                "x-amz-copy-source": "data/a.csv",
                "x-amz-server-side-encryption-aws-kms-key-id": foreign}),
            ),
        ] {
            assert!(call("s3.amazonaws.com", name, params).is_empty(), "{name}");
        }
        // A key account of the organization's, trusted.
        let mut cfg = ExposurePolicies::default();
        cfg.outside_key_encryption.trusted_accounts = vec!["999988887777".into()];
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(
            &record(
                "ec2.amazonaws.com",
                "CopySnapshot",
                user("mallory"),
                json!({"sourceSnapshotId": "snap-0123", "kmsKeyId": foreign}),
                false,
            ),
            &mut out,
        );
        assert!(out.is_empty());
    }

    /// A KMS grant to another account opens the key as a key policy would.
    #[test]
    fn a_kms_grant_to_another_account() {
        let grant = |key: &str, grantee: &str| {
            run(&record(
                "kms.amazonaws.com",
                "CreateGrant",
                user("mallory"),
                json!({"keyId": key, "granteePrincipal": grantee,
                    "operations": ["Decrypt", "ReEncryptFrom", "CreateGrant"]}),
                false,
            ))
        };
        let key = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let alerts = grant(key, "arn:aws:iam::999988887777:root");
        assert_eq!(ids(&alerts), [("access-granted-outside", Severity::Medium)]);
        assert!(
            alerts[0].evidence.summary.contains("999988887777"),
            "{}",
            alerts[0].evidence.summary
        );
        assert!(grant(key, "arn:aws:iam::111111111111:role/app").is_empty());
        assert!(grant(key, "rds.eu-west-1.amazonaws.com").is_empty());
        // A member granting its own role a central key (both accounts log it).
        assert!(grant(
            "arn:aws:kms:us-east-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:iam::111111111111:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling"
        )
        .is_empty());
        // Another account's key granted back to that account.
        assert!(grant(
            "arn:aws:kms:us-east-1:999988887777:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws:iam::999988887777:root"
        )
        .is_empty());
    }

    /// LLMjackers keep Bedrock's invocation logging but stop it recording prompts.
    #[test]
    fn bedrock_invocation_logging_stripped() {
        let put = |config: Value| {
            run(&record(
                "bedrock.amazonaws.com",
                "PutModelInvocationLoggingConfiguration",
                user("mallory"),
                json!({"loggingConfig": config}),
                false,
            ))
        };
        let s3 = json!({"bucketName": "llm-logs", "keyPrefix": "bedrock/"});
        assert_eq!(
            ids(&put(
                json!({"s3Config": s3, "textDataDeliveryEnabled": false,
                "imageDataDeliveryEnabled": true, "embeddingDataDeliveryEnabled": true})
            )),
            [("defense-evasion", Severity::Medium)]
        );
        assert_eq!(
            ids(&put(json!({"textDataDeliveryEnabled": true}))),
            [("defense-evasion", Severity::Medium)],
            "logged nowhere"
        );
        assert!(put(json!({"s3Config": s3, "textDataDeliveryEnabled": true,
            "imageDataDeliveryEnabled": false}))
        .is_empty());
        assert!(put(json!({"cloudWatchConfig": {"logGroupName": "g",
            "roleArn": "arn:aws:iam::111111111111:role/r"}, "textDataDeliveryEnabled": true}))
        .is_empty());
    }

    /// What a CloudFormation stack creates is judged as what its caller does: the record is
    /// the caller's (or the stack role's) with `invokedBy` CloudFormation.
    #[test]
    fn what_a_stack_makes_is_judged() {
        let via_stack = |mut identity: Value, source: &str, name: &str, params: Value| {
            identity["invokedBy"] = json!("cloudformation.amazonaws.com");
            let mut a = record(source, name, identity, params, false);
            a.source_ip = None;
            a.source_host = Some("cloudformation.amazonaws.com".into());
            a
        };
        let trust = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::999988887777:root"}, "Action": "sts:AssumeRole"}]})
        .to_string();
        let role = via_stack(
            sso("dana@example.com"),
            "iam.amazonaws.com",
            "CreateRole",
            json!({"roleName": "ops", "assumeRolePolicyDocument": trust}),
        );
        assert_eq!(
            ids(&run(&role)),
            [("access-granted-outside", Severity::Medium)]
        );
        let snapshot = via_stack(
            user("mallory"),
            "ec2.amazonaws.com",
            "ModifySnapshotAttribute",
            json!({"snapshotId": "snap-0123", "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"group": "all"}]}}}),
        );
        assert_eq!(
            ids(&run(&snapshot)),
            [("resource-shared-out", Severity::High)]
        );
        // A stack's deletion deletes what it made: not a defence switched off.
        let teardown = via_stack(
            user("mallory"),
            "kms.amazonaws.com",
            "ScheduleKeyDeletion",
            json!({"keyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "pendingWindowInDays": 7}),
        );
        assert!(run(&teardown).is_empty());
        // Another service acting for the account (AWS Backup copying to its vault) is not.
        let mut backup = user("mallory");
        backup["invokedBy"] = json!("backup.amazonaws.com");
        let copy = record(
            "ec2.amazonaws.com",
            "ModifySnapshotAttribute",
            backup,
            json!({"snapshotId": "snap-0123", "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"userId": "999999999999"}]}}}),
            false,
        );
        assert!(run(&copy).is_empty());
    }

    #[test]
    fn access_granted_outside() {
        let trust = |principal: Value, condition: Option<Value>| {
            let mut statement = json!({"Effect": "Allow", "Principal": principal,
                "Action": "sts:AssumeRole"});
            if let Some(c) = condition {
                statement["Condition"] = c;
            }
            json!({"Version": "2012-10-17", "Statement": [statement]}).to_string()
        };
        let iam = |name: &str, params: Value| {
            run(&record(
                "iam.amazonaws.com",
                name,
                user("mallory"),
                params,
                false,
            ))
        };
        // A backdoor: an outside account may assume the role.
        let alerts = iam(
            "UpdateAssumeRolePolicy",
            json!({"roleName": "ops", "policyDocument":
                trust(json!({"AWS": "arn:aws:iam::999988887777:root"}), None)}),
        );
        assert_eq!(ids(&alerts), [("access-granted-outside", Severity::Medium)]);
        assert!(
            alerts[0].evidence.summary.contains("999988887777"),
            "{alerts:?}"
        );
        assert_eq!(
            alerts[0].mitre.first().map(|m| m.technique_id.as_str()),
            Some("T1098.003")
        );
        // Anyone: high.
        assert_eq!(
            ids(&iam(
                "CreateRole",
                json!({"roleName": "open", "assumeRolePolicyDocument": trust(json!({"AWS": "*"}), None)})
            )),
            [("access-granted-outside", Severity::High)]
        );
        // Its own account, a service, an identity provider, "*" confined to the organization,
        // a trusted account: nothing.
        for (principal, condition) in [
            (json!({"AWS": "arn:aws:iam::111111111111:role/ci"}), None),
            (json!({"AWS": "111111111111"}), None),
            (json!({"Service": "ec2.amazonaws.com"}), None),
            (
                json!({"Federated": "arn:aws:iam::111111111111:oidc-provider/token.actions.githubusercontent.com"}),
                Some(
                    json!({"StringLike": {"token.actions.githubusercontent.com:sub": "repo:example/app:*"}}),
                ),
            ),
            (
                json!({"AWS": "*"}),
                Some(json!({"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}})),
            ),
        ] {
            let alerts = iam(
                "CreateRole",
                json!({"roleName": "r", "assumeRolePolicyDocument": trust(principal.clone(), condition)}),
            );
            assert!(alerts.is_empty(), "{principal}: {alerts:?}");
        }
        let mut cfg = ExposurePolicies::default();
        cfg.access_granted_outside.trusted_accounts = vec!["999988887777".into()];
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(
            &record(
                "iam.amazonaws.com",
                "UpdateAssumeRolePolicy",
                user("mallory"),
                json!({"roleName": "ops", "policyDocument":
                    trust(json!({"AWS": ["arn:aws:iam::999988887777:root"]}), None)}),
                false,
            ),
            &mut out,
        );
        assert!(out.is_empty(), "a trusted vendor");
        // Lambda: a function anyone may invoke (versioned event name), one an outside account
        // may, a public function URL; an S3 bucket of the account delivering events is not.
        let lambda = |name: &str, params: Value| {
            run(&record(
                "lambda.amazonaws.com",
                name,
                user("mallory"),
                params,
                false,
            ))
        };
        assert_eq!(
            ids(&lambda(
                "AddPermission20150331v2",
                json!({"functionName": "billing", "statementId": "x", "action": "lambda:InvokeFunction", "principal": "*"})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert_eq!(
            ids(&lambda(
                "AddPermission20150331v2",
                json!({"functionName": "billing", "statementId": "x", "action": "lambda:InvokeFunction", "principal": "999988887777"})
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        assert!(lambda(
            "AddPermission20150331v2",
            json!({"functionName": "thumbs", "statementId": "s3", "action": "lambda:InvokeFunction",
                "principal": "s3.amazonaws.com", "sourceAccount": "111111111111"})
        )
        .is_empty());
        assert!(lambda(
            "AddPermission20150331v2",
            json!({"functionName": "thumbs", "statementId": "any", "action": "lambda:InvokeFunction",
                "principal": "*", "sourceArn": "arn:aws:s3:::uploads"})
        )
        .is_empty());
        assert_eq!(
            ids(&lambda(
                "CreateFunctionUrlConfig20211031",
                json!({"functionName": "billing", "authType": "NONE"})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert!(lambda(
            "CreateFunctionUrlConfig20211031",
            json!({"functionName": "billing", "authType": "AWS_IAM"})
        )
        .is_empty());
        // Resource policies: a secret shared with an outside account, a queue open to all.
        let secret = run(&record(
            "secretsmanager.amazonaws.com",
            "PutResourcePolicy",
            user("mallory"),
            json!({"secretId": "prod/db", "resourcePolicy": json!({"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999988887777:user/x"},
                "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}).to_string()}),
            false,
        ));
        assert_eq!(ids(&secret), [("access-granted-outside", Severity::Medium)]);
        let queue = run(&record(
            "sqs.amazonaws.com",
            "SetQueueAttributes",
            user("mallory"),
            json!({"queueUrl": "https://sqs.us-east-1.amazonaws.com/111111111111/jobs",
                "attributes": {"Policy": json!({"Statement": [{"Effect": "Allow", "Principal": "*",
                "Action": "sqs:SendMessage"}]}).to_string()}}),
            false,
        ));
        assert_eq!(ids(&queue), [("access-granted-outside", Severity::High)]);
        // Roles Anywhere trusting an outside CA bundle; its own Private CA is not outside.
        let anchor = |source_type: &str| {
            run(&record(
                "rolesanywhere.amazonaws.com",
                "CreateTrustAnchor",
                user("mallory"),
                json!({"name": "corp", "enabled": true, "source": {"sourceType": source_type,
                    "sourceData": {"x509CertificateData": "-----BEGIN CERTIFICATE-----"}}}),
                false,
            ))
        };
        let outside_ca = anchor("CERTIFICATE_BUNDLE");
        assert_eq!(
            ids(&outside_ca),
            [("access-granted-outside", Severity::Medium)]
        );
        assert!(
            outside_ca[0]
                .evidence
                .summary
                .contains("trust anchor corp to whoever holds"),
            "{}",
            outside_ca[0].evidence.summary
        );
        assert!(anchor("AWS_ACM_PCA").is_empty());
        // "*" confined to an account by a condition is open to that account; to its own, not;
        // KMS's usual "any caller of this account through a service" is not.
        let kms = |condition: Value| {
            run(&record(
                "kms.amazonaws.com",
                "PutKeyPolicy",
                user("mallory"),
                json!({"keyId": "k1", "policyName": "default", "policy": json!({"Statement": [
                    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:Decrypt",
                     "Resource": "*", "Condition": condition}]}).to_string()}),
                false,
            ))
        };
        assert_eq!(
            ids(&kms(
                json!({"StringEquals": {"aws:PrincipalAccount": "999988887777"}})
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        assert!(
            kms(json!({"StringEquals": {"kms:CallerAccount": "111111111111",
            "kms:ViaService": "ec2.us-east-1.amazonaws.com"}}))
            .is_empty()
        );
        // A Lambda permission for an outside account's bucket.
        assert_eq!(
            ids(&lambda(
                "AddPermission20150331v2",
                json!({"functionName": "thumbs", "statementId": "s3", "action": "lambda:InvokeFunction",
                    "principal": "s3.amazonaws.com", "sourceAccount": "999988887777"})
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        // GitHub's OIDC provider trusted for any repository (no `sub` condition): everyone.
        let github = "arn:aws:iam::111111111111:oidc-provider/token.actions.githubusercontent.com";
        let oidc = |condition: Value| {
            let statement = json!({"Effect": "Allow", "Principal": {"Federated": github},
                "Action": "sts:AssumeRoleWithWebIdentity", "Condition": condition});
            iam(
                "UpdateAssumeRolePolicy",
                json!({"roleName": "deploy", "policyDocument":
                    json!({"Version": "2012-10-17", "Statement": [statement]}).to_string()}),
            )
        };
        assert_eq!(
            ids(&oidc(
                json!({"StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"}})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert!(oidc(
            json!({"StringEquals": {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"},
            "StringLike": {"token.actions.githubusercontent.com:sub": "repo:example/app:*"}})
        )
        .is_empty());
        // A document URL-encoded.
        let encoded = "%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22AWS%22%3A%22arn%3Aaws%3Aiam%3A%3A999988887777%3Aroot%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D";
        assert_eq!(
            ids(&iam(
                "UpdateAssumeRolePolicy",
                json!({"roleName": "ops", "policyDocument": encoded})
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        // A subject bound to nothing: a wildcard owner, or only tested for presence.
        for condition in [
            json!({"StringLike": {"token.actions.githubusercontent.com:sub": "repo:*"}}),
            json!({"Null": {"token.actions.githubusercontent.com:sub": "false"}}),
            json!({"StringLike": {"token.actions.githubusercontent.com:sub": "*"}}),
            // Another provider's subject: absent from GitHub's tokens.
            json!({"StringEqualsIfExists": {"gitlab.com:sub": "project_path:example/app:ref_type:branch:ref:main"}}),
        ] {
            assert_eq!(
                ids(&oidc(condition.clone())),
                [("access-granted-outside", Severity::High)],
                "{condition}"
            );
        }
        // A wildcard account in a confining ARN, a wildcard principal ARN with the attacker's
        // account in a condition, a condition that passes when absent: open.
        assert_eq!(
            ids(&kms(json!({"ArnLike": {"aws:PrincipalArn": [
                "arn:aws:iam::111111111111:role/x", "arn:aws:iam::*:role/y"]}}))),
            [("access-granted-outside", Severity::High)]
        );
        let wildcard_root = run(&record(
            "iam.amazonaws.com",
            "UpdateAssumeRolePolicy",
            user("mallory"),
            json!({"roleName": "ops", "policyDocument": json!({"Statement": [{"Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::*:root"}, "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:PrincipalAccount": "999988887777"}}}]}).to_string()}),
            false,
        ));
        assert_eq!(
            ids(&wildcard_root),
            [("access-granted-outside", Severity::Medium)]
        );
        assert_eq!(
            ids(&kms(
                json!({"StringEqualsIfExists": {"aws:SourceAccount": "111111111111"}})
            )),
            [("access-granted-outside", Severity::High)]
        );
        // A failed attempt: one severity lower.
        let failed = run(&record(
            "iam.amazonaws.com",
            "UpdateAssumeRolePolicy",
            user("mallory"),
            json!({"roleName": "ops", "policyDocument":
                trust(json!({"AWS": "arn:aws:iam::999988887777:root"}), None)}),
            true,
        ));
        assert_eq!(ids(&failed), [("access-granted-outside", Severity::Low)]);
    }

    #[test]
    fn permissions_named_directly_and_policies_given_at_creation() {
        let run = |source: &str, name: &str, params: Value| {
            let exposure = Exposure::new(ExposurePolicies::default());
            let mut out = Vec::new();
            exposure.judge_granted_outside(
                &record(source, name, user("mallory"), params, false),
                &mut out,
            );
            out
        };
        let queue = "https://sqs.us-east-1.amazonaws.com/111111111111/jobs";
        // SQS and SNS permissions name accounts; records spell the key as the SDK did.
        let sqs = run(
            "sqs.amazonaws.com",
            "AddPermission",
            json!({"queueUrl": queue, "label": "x", "aWSAccountIds": ["999988887777", "111111111111"],
                "actions": ["ReceiveMessage"]}),
        );
        assert_eq!(ids(&sqs), [("access-granted-outside", Severity::Medium)]);
        assert!(
            sqs[0].evidence.summary.ends_with("SQS queue https://sqs.us-east-1.amazonaws.com/111111111111/jobs to account 999988887777"),
            "{}",
            sqs[0].evidence.summary
        );
        // The SDK's own spelling; its own account is not outside; a wildcard is everyone.
        let capitalised = |accounts: Value| {
            run(
                "sqs.amazonaws.com",
                "AddPermission",
                json!({"QueueUrl": queue, "Label": "x", "AWSAccountIds": accounts, "Actions": ["*"]}),
            )
        };
        assert_eq!(
            ids(&capitalised(json!(["999988887777"]))),
            [("access-granted-outside", Severity::Medium)]
        );
        assert!(
            capitalised(json!(["111111111111"])).is_empty(),
            "its own account"
        );
        assert_eq!(
            ids(&capitalised(json!("*"))),
            [("access-granted-outside", Severity::High)]
        );
        let topic = "arn:aws:sns:us-east-1:111111111111:alerts";
        assert_eq!(
            ids(&run(
                "sns.amazonaws.com",
                "AddPermission",
                json!({"topicArn": topic, "label": "x", "aWSAccountId": "999988887777",
                    "actionName": ["Subscribe"]}),
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        // A queue, a topic, a key created with a policy open to everyone.
        let open = json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*"}]})
            .to_string();
        assert_eq!(
            ids(&run(
                "sqs.amazonaws.com",
                "CreateQueue",
                json!({"queueName": "jobs", "attributes": {"Policy": open}}),
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert_eq!(
            ids(&run(
                "sns.amazonaws.com",
                "CreateTopic",
                json!({"name": "alerts", "attributes": {"Policy": open}}),
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert_eq!(
            ids(&run(
                "kms.amazonaws.com",
                "CreateKey",
                json!({"policy": open})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert!(run(
            "sqs.amazonaws.com",
            "CreateQueue",
            json!({"queueName": "jobs", "attributes": {"VisibilityTimeout": "30"}}),
        )
        .is_empty());
        // A role for Cognito identity pools: any pool, in any account, unless the audience
        // names the pool.
        let cognito = |condition: Value| {
            let statement = json!({"Effect": "Allow", "Principal": {"Federated": "cognito-identity.amazonaws.com"},
                "Action": "sts:AssumeRoleWithWebIdentity", "Condition": condition});
            run(
                "iam.amazonaws.com",
                "UpdateAssumeRolePolicy",
                json!({"roleName": "app", "policyDocument":
                    json!({"Statement": [statement]}).to_string()}),
            )
        };
        assert_eq!(
            ids(&cognito(
                json!({"ForAnyValue:StringLike": {"cognito-identity.amazonaws.com:amr": "authenticated"}})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert_eq!(
            ids(&cognito(
                json!({"StringLike": {"cognito-identity.amazonaws.com:aud": "us-east-1:*"}})
            )),
            [("access-granted-outside", Severity::High)]
        );
        // Another provider's audience (absent from Cognito's tokens) binds nothing.
        assert_eq!(
            ids(&cognito(
                json!({"StringEqualsIfExists": {"accounts.google.com:aud": "us-east-1:12345678-1234-1234-1234-123456789012"}})
            )),
            [("access-granted-outside", Severity::High)]
        );
        assert!(cognito(json!({
            "StringEquals": {"cognito-identity.amazonaws.com:aud": "us-east-1:12345678-1234-1234-1234-123456789012"},
            "ForAnyValue:StringLike": {"cognito-identity.amazonaws.com:amr": "authenticated"}}))
        .is_empty());
    }

    #[test]
    fn instance_credentials_used_outside_aws() {
        let instance = |session: &str| {
            json!({"type": "AssumedRole", "accountId": "111111111111",
                "principalId": format!("AROAWEB:{session}"),
                "arn": format!("arn:aws:sts::111111111111:assumed-role/web/{session}"),
                "sessionContext": {"sessionIssuer": {"type": "Role",
                    "arn": "arn:aws:iam::111111111111:role/web", "userName": "web"},
                    "ec2RoleDelivery": "2.0"}})
        };
        let from = |session: &str, asn: Option<u32>| {
            let mut a = record(
                "s3.amazonaws.com",
                "ListBuckets",
                instance(session),
                json!({}),
                false,
            );
            a.enrichment_mut().network = asn.map(|asn| trailguard_common::contract::Network {
                asn,
                organization: Some("Example Net".into()),
            });
            run(&a)
        };
        let alerts = from("i-0123456789abcdef0", Some(14061));
        assert_eq!(
            ids(&alerts),
            [("instance-credentials-outside-aws", Severity::High)]
        );
        assert!(
            alerts[0].evidence.summary.contains("i-0123456789abcdef0")
                && alerts[0].evidence.summary.contains("AS14061"),
            "{}",
            alerts[0].evidence.summary
        );
        // From the instance (AWS's network), through a VPC endpoint (no AS), a session that is
        // not an instance's: nothing.
        assert!(from("i-0123456789abcdef0", Some(16509)).is_empty());
        assert!(from("i-0123456789abcdef0", None).is_empty());
        assert!(from("i-01234567", Some(14618)).is_empty());
        assert!(from("deploy-1234", Some(14061)).is_empty());
        assert!(from("i-0123456789abcdefz", Some(14061)).is_empty());
        // An ECS task's role session is named after the task (32 hex digits, or a UUID for
        // tasks of the older ARN format).
        let task = from("0123456789abcdef0123456789abcdef", Some(14061));
        assert_eq!(
            ids(&task),
            [("instance-credentials-outside-aws", Severity::Medium)]
        );
        assert!(
            task[0].evidence.summary.contains("ECS task"),
            "{}",
            task[0].evidence.summary
        );
        assert_eq!(
            ids(&from("01234567-89ab-cdef-0123-456789abcdef", Some(14061))),
            [("instance-credentials-outside-aws", Severity::Medium)]
        );
        assert!(from("0123456789abcdef0123456789abcdef", Some(16509)).is_empty());
        assert!(from("0123456789abcdef0123456789abcde", Some(14061)).is_empty());
        assert!(from("0123456789ABCDEF0123456789ABCDEF", Some(14061)).is_empty());
        // A trusted egress.
        let mut cfg = ExposurePolicies::default();
        cfg.instance_credentials_outside_aws.trusted_asns = vec![14061];
        let mut a = record(
            "s3.amazonaws.com",
            "ListBuckets",
            instance("i-0123456789abcdef0"),
            json!({}),
            false,
        );
        a.enrichment_mut().network = Some(trailguard_common::contract::Network {
            asn: 14061,
            organization: None,
        });
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(&a, &mut out);
        assert!(out.is_empty());
    }

    /// A secret read, or a key's ciphertext re-encrypted, by an account not trusted: a grant
    /// to it, used — whether or not the grant was seen being made.
    #[test]
    fn secrets_and_keys_used_by_another_account() {
        let secret = "arn:aws:secretsmanager:us-east-1:111111111111:secret:prod/db/orders-fcAEab";
        let reader = |account: &str| {
            json!({"type": "AssumedRole", "accountId": account,
                "principalId": "AROAOPS:worker",
                "arn": format!("arn:aws:sts::{account}:assumed-role/ops/worker"),
                "sessionContext": {"sessionIssuer": {"type": "Role",
                    "arn": format!("arn:aws:iam::{account}:role/ops"), "userName": "ops"}}})
        };
        let read = |identity: Value, error: bool, cfg: ExposurePolicies| {
            let a = record(
                "secretsmanager.amazonaws.com",
                "GetSecretValue",
                identity,
                json!({"secretId": secret}),
                error,
            );
            let mut out = Vec::new();
            Exposure::new(cfg).evaluate(&a, &mut out);
            out
        };
        let outsider = read(reader("999988887777"), false, ExposurePolicies::default());
        assert_eq!(
            ids(&outsider),
            [("access-granted-outside", Severity::Medium)]
        );
        let summary = &outsider[0].evidence.summary;
        assert!(
            summary.contains("999988887777") && summary.contains("prod/db/orders"),
            "{summary}"
        );
        assert_eq!(
            outsider[0].entity.id,
            format!("111111111111/{secret}"),
            "one alert per secret"
        );
        // The account's own, a trusted account, a refused read: nothing.
        assert!(read(reader("111111111111"), false, ExposurePolicies::default()).is_empty());
        let mut trusting = ExposurePolicies::default();
        trusting.access_granted_outside.trusted_accounts = vec!["999988887777".into()];
        assert!(read(reader("999988887777"), false, trusting).is_empty());
        assert!(read(reader("999988887777"), true, ExposurePolicies::default()).is_empty());
        // Logged as the other account itself (no session details), still that account.
        assert_eq!(
            ids(&read(
                json!({"type": "AWSAccount", "accountId": "999988887777",
                    "principalId": "AROAOPS:worker"}),
                false,
                ExposurePolicies::default()
            )),
            [("access-granted-outside", Severity::Medium)]
        );
        // A service reading for the account (invokedBy) is the account's.
        let mut service = reader("999988887777");
        service["invokedBy"] = "cloudformation.amazonaws.com".into();
        assert!(read(service, false, ExposurePolicies::default()).is_empty());
        // The account's ciphertext re-encrypted by the other account under a key of its own
        // (named by ARN, or by id: a key id is the caller's own account's): it can open it.
        let ours = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let reencrypt = |identity: Value, destination: &str| {
            run(&record(
                "kms.amazonaws.com",
                "ReEncrypt",
                identity,
                json!({"sourceKeyId": ours, "destinationKeyId": destination}),
                false,
            ))
        };
        for theirs in [
            "arn:aws:kms:us-east-1:999988887777:key/0badc0de-0bad-c0de-0bad-c0de0badc0de",
            "0badc0de-0bad-c0de-0bad-c0de0badc0de",
        ] {
            let alerts = reencrypt(reader("999988887777"), theirs);
            // Taken out, not ransomed: the account's stored data is unchanged.
            assert_eq!(
                ids(&alerts),
                [("access-granted-outside", Severity::Medium)],
                "{theirs}"
            );
            assert!(
                alerts[0].evidence.summary.contains("ReEncrypt"),
                "{}",
                alerts[0].evidence.summary
            );
        }
        // Into one of this account's keys: inside.
        assert!(reencrypt(reader("999988887777"), ours).is_empty());
        // As AWS's sample record has it: the source key only among the resources.
        let mut listed = record(
            "kms.amazonaws.com",
            "ReEncrypt",
            reader("999988887777"),
            json!({"destinationKeyId": "0badc0de-0bad-c0de-0bad-c0de0badc0de"}),
            false,
        );
        listed.resources = vec![trailguard_common::contract::Resource {
            kind: "arn".into(),
            id: ours.into(),
        }];
        let alerts = run(&listed);
        assert_eq!(
            alerts
                .iter()
                .map(|a| a.entity.id.as_str())
                .collect::<Vec<_>>(),
            [format!("111111111111/{ours}").as_str()]
        );
    }

    /// A pod's projected service-account token is good only inside its cluster: exchanged for
    /// the role's credentials from a network outside AWS, it was taken from the pod.
    #[test]
    fn eks_service_account_tokens_used_outside_aws() {
        let issuer = "arn:aws:iam::111111111111:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/8F1A2B3C4D5E6F708192A3B4C5D6E7F8";
        let pod = |provider: &str, asn: Option<u32>, error: bool| {
            let mut a = record(
                "sts.amazonaws.com",
                "AssumeRoleWithWebIdentity",
                json!({"type": "WebIdentityUser",
                    "principalId": format!("{provider}:sts.amazonaws.com:system:serviceaccount:prod:orders-api"),
                    "userName": "system:serviceaccount:prod:orders-api",
                    "identityProvider": provider}),
                json!({"roleArn": "arn:aws:iam::111111111111:role/orders-api-irsa",
                    "roleSessionName": "botocore-session-1792455120"}),
                error,
            );
            a.enrichment_mut().network = asn.map(|asn| trailguard_common::contract::Network {
                asn,
                organization: Some("DigitalOcean".into()),
            });
            run(&a)
        };
        let alerts = pod(issuer, Some(14061), false);
        assert_eq!(
            ids(&alerts),
            [("instance-credentials-outside-aws", Severity::High)]
        );
        let summary = &alerts[0].evidence.summary;
        assert!(
            summary.contains("prod:orders-api")
                && summary.contains("orders-api-irsa")
                && summary.contains("AS14061"),
            "{summary}"
        );
        // Refused (an expired token), it was still taken from the pod: a level lower, as
        // every refused call here.
        assert_eq!(
            ids(&pod(issuer, Some(14061), true)),
            [("instance-credentials-outside-aws", Severity::Medium)]
        );
        // From the cluster's nodes (AWS), through an endpoint (no AS): nothing.
        assert!(pod(issuer, Some(16509), false).is_empty());
        assert!(pod(issuer, None, false).is_empty());
        // Other identity providers federate from anywhere (CI runners, other clouds).
        for other in [
            "arn:aws:iam::111111111111:oidc-provider/token.actions.githubusercontent.com",
            "arn:aws:iam::111111111111:oidc-provider/oidc.eks.example.com/id/ABC",
        ] {
            assert!(pod(other, Some(14061), false).is_empty(), "{other}");
        }
    }

    /// Each is about what it harms, not the actor: a defence switched off (its service, or the
    /// resource CloudTrail names, in the account and region), the user given credentials —
    /// so different defences or users an actor goes through within the hour are alerts of
    /// their own, not "(and N more times)" of the first (folds are by policy and entity).
    #[test]
    fn what_is_harmed_is_the_entity() {
        let entity = |source: &str, name: &str, params: Value| {
            run(&record(
                source,
                name,
                sso("dana@example.com"),
                params,
                false,
            ))
            .first()
            .map(|a| (a.entity.kind.clone(), a.entity.id.clone()))
        };
        let detector = |id: &str| {
            entity(
                "guardduty.amazonaws.com",
                "DeleteDetector",
                json!({ "detectorId": id }),
            )
        };
        let disabled = entity(
            "guardduty.amazonaws.com",
            "UpdateDetector",
            json!({"detectorId": "d1", "enable": false}),
        );
        let left = entity(
            "organizations.amazonaws.com",
            "LeaveOrganization",
            json!({}),
        );
        let hub = entity("securityhub.amazonaws.com", "DisableSecurityHub", json!({}));
        let rule = |name: &str| {
            entity(
                "events.amazonaws.com",
                "DeleteRule",
                json!({ "name": name }),
            )
        };
        let stopped = entity(
            "config.amazonaws.com",
            "StopConfigurationRecorder",
            json!({"configurationRecorderName": "default"}),
        );
        let channel = entity(
            "config.amazonaws.com",
            "DeleteDeliveryChannel",
            json!({"deliveryChannelName": "default"}),
        );
        assert!(detector("d1").is_some() && left.is_some() && hub.is_some());
        assert_eq!(detector("d1"), detector("d1"), "the same call again folds");
        assert_ne!(detector("d1"), detector("d2"));
        assert_ne!(detector("d1"), disabled, "another call on it");
        assert_ne!(detector("d1"), left);
        assert_ne!(detector("d1"), hub);
        assert!(stopped.is_some() && channel.is_some());
        assert_ne!(stopped, channel);
        let findings = rule("guardduty-findings-to-slack");
        assert_ne!(findings, rule("securityhub-findings-to-jira"));
        assert!(
            findings
                .as_ref()
                .is_some_and(|(_, id)| id.contains("guardduty-findings-to-slack")),
            "{findings:?}"
        );
        assert!(
            entity(
                "bedrock.amazonaws.com",
                "DeleteModelInvocationLoggingConfiguration",
                json!({})
            )
            .is_some(),
            "Bedrock's invocation log"
        );
        let detector = detector("d1");
        assert!(detector
            .iter()
            .chain(&left)
            .all(|(_, id)| !id.contains("dana")));
        let for_user =
            |user: &str, name: &str| entity("iam.amazonaws.com", name, json!({"userName": user}));
        assert_eq!(
            for_user("bob", "CreateAccessKey"),
            Some((
                kinds::PRINCIPAL.to_string(),
                "arn:aws:iam::111111111111:user/bob".to_string()
            ))
        );
        assert_eq!(
            for_user("carol", "CreateLoginProfile").map(|e| e.1),
            Some("arn:aws:iam::111111111111:user/carol".to_string())
        );
        // A refused call names whatever its caller typed (no right is needed to be refused):
        // refusals are about the actor, so made-up names fold into one alert, not one each.
        let refused = |source: &str, name: &str, params: Value| {
            run(&record(source, name, sso("dana@example.com"), params, true))
                .first()
                .map(|a| a.entity.id.clone())
        };
        let actor = Some("person:dana@example.com".to_string());
        assert_eq!(
            refused(
                "iam.amazonaws.com",
                "CreateAccessKey",
                json!({"userName": "u1"})
            ),
            actor
        );
        assert_eq!(
            refused(
                "kms.amazonaws.com",
                "ScheduleKeyDeletion",
                json!({"keyId": "made-up-1"})
            ),
            actor
        );
    }

    #[test]
    fn credentials_for_another_user() {
        let for_bob = |caller: Value, name: &str| {
            run(&record(
                "iam.amazonaws.com",
                name,
                caller,
                json!({"userName": "bob"}),
                false,
            ))
        };
        assert_eq!(
            ids(&for_bob(user("mallory"), "CreateAccessKey")),
            [("credentials-for-another-user", Severity::Medium)]
        );
        assert_eq!(
            ids(&for_bob(sso("dana@example.com"), "CreateLoginProfile")).len(),
            1
        );
        assert!(
            for_bob(user("bob"), "CreateAccessKey").is_empty(),
            "his own"
        );
        assert!(
            run(&record(
                "iam.amazonaws.com",
                "CreateAccessKey",
                user("bob"),
                json!({}),
                false
            ))
            .is_empty(),
            "no user named: the caller's own"
        );
        let mut cfg = ExposurePolicies::default();
        cfg.credentials_for_another_user.allow_principals = vec!["mallory".into()];
        let mut out = Vec::new();
        Exposure::new(cfg).evaluate(
            &record(
                "iam.amazonaws.com",
                "CreateAccessKey",
                user("mallory"),
                json!({"userName": "bob"}),
                false,
            ),
            &mut out,
        );
        assert!(out.is_empty(), "an allowed onboarding robot");
        // Other ways to hold a user's credentials: a key turned back on, service-specific
        // credentials, certificates and SSH keys, an MFA device of one's own on the user.
        for name in [
            "CreateServiceSpecificCredential",
            "UploadSigningCertificate",
            "UploadSSHPublicKey",
            "EnableMFADevice",
            "DeactivateMFADevice",
        ] {
            assert_eq!(ids(&for_bob(user("mallory"), name)).len(), 1, "{name}");
            assert!(for_bob(user("bob"), name).is_empty(), "{name}: his own");
        }
        let key = |status: &str| {
            run(&record(
                "iam.amazonaws.com",
                "UpdateAccessKey",
                user("mallory"),
                json!({"userName": "bob", "accessKeyId": "AKIAEXAMPLE", "status": status}),
                false,
            ))
        };
        assert_eq!(ids(&key("Active")).len(), 1);
        assert!(
            key("Inactive").is_empty(),
            "turning a key off takes nothing"
        );
    }
}
