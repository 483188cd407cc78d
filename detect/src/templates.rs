//! Activity policy templates: event-driven policies over one activity each, one table row per
//! template (the calls it watches, what the alert is about, how bad it is, its MITRE ATT&CK
//! technique), with a per-template judgement that raises the severity of the dangerous variants
//! (an administrator policy attached, a security group opened to the internet, flow logs
//! deleted) and lowers it for failed attempts.
//!
//! Every template is on by default and tunable under `[policies.templates.ID]`: `enabled`,
//! `severity` (the base; refinements move from it), `allow_principals`, `accounts`, `regions`,
//! `include_failures`, `actions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailguard_common::contract::{ActionKind, Alert, AlertKind, Entity, Severity};
use trailguard_common::s3::{items, parse_policy};
use trailguard_common::Activity;

use crate::policy::{allowed, requested, who, AlertBuilder, PolicyMeta};
use trailguard_common::contract::kinds;

/// One template: the table row.
pub struct Template {
    /// Id and name (in alerts, config and metric labels).
    pub meta: PolicyMeta<'static>,
    /// `eventSource` values it watches.
    pub sources: &'static [&'static str],
    /// `eventName` values it watches.
    pub events: &'static [&'static str],
    /// Base severity.
    pub severity: Severity,
    /// Tactic, technique id, technique.
    pub mitre: (&'static str, &'static str, &'static str),
    /// Judges one matching activity: `None` skips it, otherwise a severity change (in steps
    /// from the base, +1 more dangerous) and a short note for the summary.
    pub judge: fn(&Activity) -> Option<(i8, String)>,
}

/// Settings of one template; every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Evaluate this template (default true).
    pub enabled: Option<bool>,
    /// Base severity (default: the template's).
    pub severity: Option<Severity>,
    /// Principal ARNs, names or role ARNs whose activity this template ignores.
    pub allow_principals: Vec<String>,
    /// Only these accounts (all when empty).
    pub accounts: Vec<String>,
    /// Only these regions (all when empty).
    pub regions: Vec<String>,
    /// Alert on failed attempts too, one severity step lower (default true).
    pub include_failures: Option<bool>,
    /// Governance actions to request (default: notify the security team).
    pub actions: Option<Vec<ActionKind>>,
}

/// The templates' settings by id.
pub type TemplatesConfig = BTreeMap<String, TemplateConfig>;

/// Checks that every configured id names a template; errors name the key.
pub fn validate(cfg: &TemplatesConfig) -> Result<(), trailguard_common::Error> {
    for id in cfg.keys() {
        if !TEMPLATES.iter().any(|t| t.meta.id == id) {
            let known: Vec<&str> = TEMPLATES.iter().map(|t| t.meta.id).collect();
            return Err(trailguard_common::Error::config(
                &format!("policies.templates.{id}"),
                format!("no such template; known: {}", known.join(", ")),
            ));
        }
    }
    Ok(())
}

fn step(severity: Severity, by: i8) -> Severity {
    let level = match severity {
        Severity::Low => 0i8,
        Severity::Medium => 1,
        Severity::High => 2,
    };
    match (level + by).clamp(0, 2) {
        0 => Severity::Low,
        1 => Severity::Medium,
        _ => Severity::High,
    }
}

/// The templates, in evaluation order.
pub static TEMPLATES: &[Template] = &[
    Template {
        meta: PolicyMeta {
            id: "ec2-instance-changes",
            name: "EC2 instance configuration change",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["ec2.amazonaws.com"],
        events: &[
            "ModifyInstanceAttribute",
            "ResetInstanceAttribute",
            "ModifyInstanceMetadataOptions",
            "ModifyInstanceMetadataDefaults",
            "AssociateIamInstanceProfile",
            "ReplaceIamInstanceProfileAssociation",
            "DisassociateIamInstanceProfile",
            "ModifyInstancePlacement",
            "ModifyInstanceMaintenanceOptions",
        ],
        severity: Severity::Medium,
        mitre: (
            "Defense Evasion",
            "T1578",
            "Modify Cloud Compute Infrastructure",
        ),
        judge: judge_instance,
    },
    Template {
        meta: PolicyMeta {
            id: "iam-policy-changes",
            name: "IAM policy change",
            kind: AlertKind::ActivityPolicy,
        },
        // Identity Center's permission sets are IAM policies it provisions into accounts.
        sources: &["iam.amazonaws.com", "sso.amazonaws.com"],
        events: &[
            "AttachManagedPolicyToPermissionSet",
            "AttachCustomerManagedPolicyReferenceToPermissionSet",
            "PutInlinePolicyToPermissionSet",
            "PutPermissionsBoundaryToPermissionSet",
            "DetachManagedPolicyFromPermissionSet",
            "DeleteInlinePolicyFromPermissionSet",
            "DeletePermissionsBoundaryFromPermissionSet",
            "CreatePermissionSet",
            "UpdatePermissionSet",
            "CreateAccountAssignment",
            "AttachUserPolicy",
            "AttachRolePolicy",
            "AttachGroupPolicy",
            "DetachUserPolicy",
            "DetachRolePolicy",
            "DetachGroupPolicy",
            "PutUserPolicy",
            "PutRolePolicy",
            "PutGroupPolicy",
            "DeleteUserPolicy",
            "DeleteRolePolicy",
            "DeleteGroupPolicy",
            "CreatePolicy",
            "DeletePolicy",
            "CreatePolicyVersion",
            "DeletePolicyVersion",
            "SetDefaultPolicyVersion",
            "UpdateAssumeRolePolicy",
            "PutUserPermissionsBoundary",
            "PutRolePermissionsBoundary",
            "DeleteUserPermissionsBoundary",
            "DeleteRolePermissionsBoundary",
            // Group membership: a group's policies are its members'.
            "AddUserToGroup",
            // Identity providers: whoever holds a trusted provider's key signs in as anyone
            // it names.
            "CreateSAMLProvider",
            "UpdateSAMLProvider",
            "DeleteSAMLProvider",
            "CreateOpenIDConnectProvider",
            "UpdateOpenIDConnectProviderThumbprint",
            "AddClientIDToOpenIDConnectProvider",
            "DeleteOpenIDConnectProvider",
        ],
        severity: Severity::Medium,
        mitre: (
            "Privilege Escalation",
            "T1098.003",
            "Account Manipulation: Additional Cloud Roles",
        ),
        judge: judge_iam_policy,
    },
    Template {
        meta: PolicyMeta {
            id: "network-acl-changes",
            name: "Network ACL change",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["ec2.amazonaws.com"],
        events: &[
            "CreateNetworkAcl",
            "CreateNetworkAclEntry",
            "DeleteNetworkAcl",
            "DeleteNetworkAclEntry",
            "ReplaceNetworkAclEntry",
            "ReplaceNetworkAclAssociation",
        ],
        severity: Severity::Medium,
        mitre: (
            "Defense Evasion",
            "T1562.007",
            "Impair Defenses: Disable or Modify Cloud Firewall",
        ),
        judge: judge_network_acl,
    },
    Template {
        meta: PolicyMeta {
            id: "network-gateway-changes",
            name: "Network gateway change",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["ec2.amazonaws.com"],
        events: &[
            "CreateInternetGateway",
            "AttachInternetGateway",
            "DetachInternetGateway",
            "DeleteInternetGateway",
            "CreateEgressOnlyInternetGateway",
            "DeleteEgressOnlyInternetGateway",
            "CreateNatGateway",
            "DeleteNatGateway",
            "CreateTransitGateway",
            "DeleteTransitGateway",
            "ModifyTransitGateway",
            "CreateTransitGatewayVpcAttachment",
            "DeleteTransitGatewayVpcAttachment",
            "CreateTransitGatewayRoute",
            "DeleteTransitGatewayRoute",
            "CreateCustomerGateway",
            "DeleteCustomerGateway",
            "CreateVpnGateway",
            "AttachVpnGateway",
            "DetachVpnGateway",
            "DeleteVpnGateway",
            "CreateCarrierGateway",
            "DeleteCarrierGateway",
            "CreateRoute",
            "ReplaceRoute",
            "DeleteRoute",
        ],
        severity: Severity::Medium,
        mitre: (
            "Defense Evasion",
            "T1578",
            "Modify Cloud Compute Infrastructure",
        ),
        judge: judge_gateway,
    },
    Template {
        meta: PolicyMeta {
            id: "s3-bucket-activity",
            name: "S3 bucket activity",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["s3.amazonaws.com"],
        events: &[
            "CreateBucket",
            "DeleteBucket",
            "PutBucketAcl",
            "PutBucketPolicy",
            "DeleteBucketPolicy",
            "PutBucketPublicAccessBlock",
            "DeleteBucketPublicAccessBlock",
            "PutBucketEncryption",
            "DeleteBucketEncryption",
            "PutBucketLogging",
            "PutBucketReplication",
            "DeleteBucketReplication",
            "PutBucketVersioning",
            "PutBucketLifecycle",
            "PutBucketLifecycleConfiguration",
            "DeleteBucketLifecycle",
            "PutBucketOwnershipControls",
            "DeleteBucketOwnershipControls",
        ],
        severity: Severity::Low,
        mitre: ("Defense Evasion", "T1562", "Impair Defenses"),
        judge: judge_bucket,
    },
    Template {
        meta: PolicyMeta {
            id: "s3-object-customer-key",
            name: "S3 objects encrypted with a customer-provided key",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["s3.amazonaws.com"],
        events: &[
            "PutObject",
            "CopyObject",
            "CreateMultipartUpload",
            "UploadPartCopy",
        ],
        severity: Severity::Medium,
        mitre: ("Impact", "T1486", "Data Encrypted for Impact"),
        judge: judge_customer_key,
    },
    Template {
        meta: PolicyMeta {
            id: "security-group-changes",
            name: "Security group configuration change",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["ec2.amazonaws.com"],
        events: &[
            "AuthorizeSecurityGroupIngress",
            "AuthorizeSecurityGroupEgress",
            "RevokeSecurityGroupIngress",
            "RevokeSecurityGroupEgress",
            "CreateSecurityGroup",
            "DeleteSecurityGroup",
            "ModifySecurityGroupRules",
            "UpdateSecurityGroupRuleDescriptionsIngress",
            "UpdateSecurityGroupRuleDescriptionsEgress",
        ],
        severity: Severity::Low,
        mitre: (
            "Defense Evasion",
            "T1562.007",
            "Impair Defenses: Disable or Modify Cloud Firewall",
        ),
        judge: judge_security_group,
    },
    Template {
        meta: PolicyMeta {
            id: "vpn-vpc-changes",
            name: "Virtual private network change",
            kind: AlertKind::ActivityPolicy,
        },
        sources: &["ec2.amazonaws.com"],
        events: &[
            "CreateVpc",
            "DeleteVpc",
            "ModifyVpcAttribute",
            "AssociateVpcCidrBlock",
            "DisassociateVpcCidrBlock",
            "CreateVpnConnection",
            "DeleteVpnConnection",
            "ModifyVpnConnection",
            "CreateVpnConnectionRoute",
            "DeleteVpnConnectionRoute",
            "CreateVpcPeeringConnection",
            "AcceptVpcPeeringConnection",
            "DeleteVpcPeeringConnection",
            "RejectVpcPeeringConnection",
            "ModifyVpcPeeringConnectionOptions",
            "CreateVpcEndpoint",
            "ModifyVpcEndpoint",
            "DeleteVpcEndpoints",
            "CreateFlowLogs",
            "DeleteFlowLogs",
            "AttachClassicLinkVpc",
            "DetachClassicLinkVpc",
            "EnableVpcClassicLink",
            "DisableVpcClassicLink",
        ],
        severity: Severity::Low,
        mitre: (
            "Defense Evasion",
            "T1578",
            "Modify Cloud Compute Infrastructure",
        ),
        judge: judge_vpc,
    },
];

fn params(a: &Activity) -> Option<&Value> {
    a.request_parameters.as_deref()
}

fn text<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
    v.and_then(|v| v.get(key)).and_then(Value::as_str)
}

/// `v`'s field `key`, in any ASCII case ([`crate::policy::field_ci`]).
fn field<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    crate::policy::field_ci(v?, key)
}

fn judge_instance(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    let instance = text(p, "instanceId").unwrap_or("an instance");
    if a.event_name.contains("IamInstanceProfile") {
        return Some((0, format!("changed the IAM instance profile of {instance}")));
    }
    if let Some(attr) = text(p, "attribute") {
        let bump = i8::from(attr == "userData");
        return Some((bump, format!("changed `{attr}` of {instance}")));
    }
    let changed: Vec<&str> = p
        .and_then(Value::as_object)
        .map(|o| {
            o.keys()
                .filter(|k| *k != "instanceId")
                .map(String::as_str)
                .collect()
        })
        .unwrap_or_default();
    // Startup scripts run as root on every boot: persistence.
    let bump = i8::from(changed.contains(&"userData"));
    if matches!(
        a.event_name.as_str(),
        "ModifyInstanceMetadataOptions" | "ModifyInstanceMetadataDefaults"
    ) {
        // CloudTrail nests these requests under `<call>Request`, with EC2's capitalised
        // names; other exports write them flat.
        let request = field(p, &format!("{}Request", a.event_name)).or(p);
        let tokens = field(request, "HttpTokens").and_then(Value::as_str);
        // Allowing IMDSv1 again (tokens optional) reopens credential theft through SSRF.
        // For the account's default, no preference leaves new instances to their image and
        // launch settings: IMDSv1 wherever those allow it.
        let v1 = tokens.is_some_and(|t| {
            t.eq_ignore_ascii_case("optional")
                || (a.event_name == "ModifyInstanceMetadataDefaults"
                    && t.eq_ignore_ascii_case("no-preference"))
        });
        let what = if a.event_name == "ModifyInstanceMetadataDefaults" {
            "the account's default metadata options for new instances".to_string()
        } else {
            let instance = field(request, "InstanceId")
                .and_then(Value::as_str)
                .unwrap_or(instance);
            format!("the metadata options of {instance}")
        };
        return Some((
            i8::from(v1),
            format!(
                "changed {what}{}",
                if v1 { " (IMDSv1 allowed)" } else { "" }
            ),
        ));
    }
    Some((
        bump,
        format!("changed {} of {instance}", changed.join(", ")),
    ))
}

/// Managed policies that grant (nearly) everything.
const POWERFUL_POLICIES: &[&str] = &[
    "AdministratorAccess",
    "PowerUserAccess",
    "IAMFullAccess",
    "AWSOrganizationsFullAccess",
];

/// A policy document (object or JSON text) allowing every action, or `iam:*`, on everything.
fn document_is_admin(doc: Option<&Value>) -> bool {
    let Some(doc) = doc.and_then(parse_policy) else {
        return false;
    };
    items(doc.get("Statement")).iter().any(|s| {
        s.get("Effect").and_then(Value::as_str) == Some("Allow")
            && items(s.get("Action"))
                .iter()
                .any(|a| matches!(a.as_str(), Some("*" | "*:*" | "iam:*")))
            && items(s.get("Resource"))
                .iter()
                .any(|r| r.as_str() == Some("*"))
    })
}

/// A trust policy letting anyone, or any AWS account, assume the role.
fn trust_is_open(doc: Option<&Value>) -> bool {
    let Some(doc) = doc.and_then(parse_policy) else {
        return false;
    };
    items(doc.get("Statement")).iter().any(|s| {
        s.get("Effect").and_then(Value::as_str) == Some("Allow")
            && trailguard_common::s3::principal_is_public(s.get("Principal"))
            && s.get("Condition").is_none()
    })
}

fn judge_iam_policy(a: &Activity) -> Option<(i8, String)> {
    // Identity Center's calls on its own service, IAM's on IAM.
    let identity_center =
        a.event_name.contains("PermissionSet") || a.event_name.contains("AccountAssignment");
    if identity_center != (a.event_source == "sso.amazonaws.com") {
        return None;
    }
    if identity_center {
        return judge_permission_set(a);
    }
    let p = params(a);
    if a.event_name == "AddUserToGroup" {
        let group = text(p, "groupName").unwrap_or("a group");
        let user = text(p, "userName").unwrap_or("a user");
        // What the group may do is not in the record; its name is what there is to go on.
        let admins = group.to_ascii_lowercase().contains("admin");
        return Some((
            i8::from(admins),
            format!("added user {user} to group {group}"),
        ));
    }
    if is_identity_provider_call(&a.event_name) {
        // Identity Center making its own provider (`AWSSSO_…_DO_NOT_DELETE`) is not a change
        // anyone chose (a CloudFormation stack's, on its caller's behalf, is).
        if a.principal.invoked_by.as_deref() == Some("sso.amazonaws.com") {
            return None;
        }
        let provider = identity_provider(p)
            .map(|arn| arn.rsplit('/').next().unwrap_or(arn))
            .unwrap_or("an identity provider");
        // New metadata for a provider already trusted: the keys of the identity provider
        // every federated role believes are now whoever supplied it (a golden-SAML swap).
        // Unless the request shows it changed only the provider's own keys or encryption mode.
        let metadata = ["sAMLMetadataDocument", "SAMLMetadataDocument"]
            .iter()
            .any(|k| text(p, k).is_some());
        let keys_only = [
            "assertionEncryptionMode",
            "addPrivateKey",
            "removePrivateKey",
        ]
        .iter()
        .any(|k| p.and_then(|p| p.get(*k)).is_some());
        let swapped = a.event_name == "UpdateSAMLProvider" && (metadata || !keys_only);
        let what = match a.event_name.as_str() {
            "CreateSAMLProvider" | "CreateOpenIDConnectProvider" => "trusted a new",
            "UpdateSAMLProvider" => "replaced the keys (metadata) of the",
            "UpdateOpenIDConnectProviderThumbprint" => "changed the certificate thumbprint of the",
            "AddClientIDToOpenIDConnectProvider" => "added a client (audience) to the",
            _ => "removed the",
        };
        return Some((
            i8::from(swapped),
            format!("{what} identity provider {provider}"),
        ));
    }
    let target = text(p, "userName")
        .map(|u| format!("user {u}"))
        .or_else(|| text(p, "roleName").map(|r| format!("role {r}")))
        .or_else(|| text(p, "groupName").map(|g| format!("group {g}")))
        .or_else(|| text(p, "policyArn").map(|p| format!("policy {p}")))
        .or_else(|| text(p, "policyName").map(|p| format!("policy {p}")))
        .unwrap_or_else(|| "a policy".into());
    let arn = text(p, "policyArn").unwrap_or("");
    let managed = arn.rsplit('/').next().unwrap_or("");
    let attaching = a.event_name.starts_with("Attach");
    if attaching && arn.starts_with("arn:aws") && POWERFUL_POLICIES.contains(&managed) {
        return Some((1, format!("attached {managed} to {target}")));
    }
    let document = p.and_then(|p| p.get("policyDocument"));
    if matches!(
        a.event_name.as_str(),
        "PutUserPolicy"
            | "PutRolePolicy"
            | "PutGroupPolicy"
            | "CreatePolicy"
            | "CreatePolicyVersion"
    ) && document_is_admin(document)
    {
        return Some((
            1,
            format!("granted every action on every resource to {target}"),
        ));
    }
    if a.event_name == "UpdateAssumeRolePolicy" && trust_is_open(document) {
        return Some((1, format!("let anyone assume {target}")));
    }
    Some((0, format!("changed {target}")))
}

/// A SAML or OpenID Connect identity provider's call (`CreateSAMLProvider`,
/// `UpdateOpenIDConnectProviderThumbprint`, …).
fn is_identity_provider_call(name: &str) -> bool {
    name.contains("SAMLProvider") || name.contains("OpenIDConnectProvider")
}

/// The identity provider a request names: its ARN, or for a new one its name or URL.
fn identity_provider(p: Option<&Value>) -> Option<&str> {
    [
        "sAMLProviderArn",
        "SAMLProviderArn",
        "openIDConnectProviderArn",
        "OpenIDConnectProviderArn",
        "name",
        "url",
    ]
    .iter()
    .find_map(|k| text(p, k))
}

/// An Identity Center permission set changed, or given to a user or group in an account.
fn judge_permission_set(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    let set = text(p, "permissionSetArn")
        .map(|arn| arn.rsplit('/').next().unwrap_or(arn))
        .unwrap_or("a permission set");
    Some(match a.event_name.as_str() {
        "AttachManagedPolicyToPermissionSet" => {
            let arn = text(p, "managedPolicyArn").unwrap_or("a policy");
            let managed = arn.rsplit('/').next().unwrap_or("");
            let powerful = arn.starts_with("arn:aws") && POWERFUL_POLICIES.contains(&managed);
            let name = if powerful { managed } else { arn };
            (
                i8::from(powerful),
                format!("attached {name} to permission set {set}"),
            )
        }
        "PutInlinePolicyToPermissionSet"
            if document_is_admin(p.and_then(|p| p.get("inlinePolicy"))) =>
        {
            (
                1,
                format!("granted every action on every resource to permission set {set}"),
            )
        }
        "CreateAccountAssignment" => (
            0,
            format!(
                "gave {} {} permission set {set} in account {}",
                text(p, "principalType")
                    .unwrap_or("a principal")
                    .to_ascii_lowercase(),
                text(p, "principalId").unwrap_or("?"),
                text(p, "targetId").unwrap_or("?")
            ),
        ),
        name => (0, format!("changed permission set {set} ({name})")),
    })
}

fn judge_network_acl(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    let acl = text(p, "networkAclId").unwrap_or("a network ACL");
    let open = matches!(
        a.event_name.as_str(),
        "CreateNetworkAclEntry" | "ReplaceNetworkAclEntry"
    ) && text(p, "ruleAction") == Some("allow")
        && p.and_then(|p| p.get("egress")).and_then(Value::as_bool) == Some(false)
        && (text(p, "cidrBlock") == Some("0.0.0.0/0") || text(p, "ipv6CidrBlock") == Some("::/0"));
    if open {
        return Some((1, format!("allowed inbound traffic from anywhere in {acl}")));
    }
    Some((0, format!("changed {acl}")))
}

fn judge_gateway(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    const GATEWAY_KEYS: &[&str] = &[
        "internetGatewayId",
        "egressOnlyInternetGatewayId",
        "natGatewayId",
        "transitGatewayId",
        "vpnGatewayId",
        "customerGatewayId",
        "carrierGatewayId",
        "gatewayId",
        "transitGatewayAttachmentId",
    ];
    let gateway = GATEWAY_KEYS.iter().find_map(|k| text(p, k));
    if a.event_name.ends_with("Route") && !a.event_name.contains("TransitGateway") {
        // Routes count only when they lead to a gateway.
        let gateway = gateway?;
        let to = text(p, "destinationCidrBlock")
            .or_else(|| text(p, "destinationIpv6CidrBlock"))
            .unwrap_or("?");
        let table = text(p, "routeTableId").unwrap_or("a route table");
        return Some((0, format!("routed {to} in {table} to {gateway}")));
    }
    Some((0, format!("changed gateway {}", gateway.unwrap_or("(new)"))))
}

fn judge_bucket(a: &Activity) -> Option<(i8, String)> {
    let bucket = text(params(a), "bucketName").unwrap_or("a bucket");
    // Switching off protection is worse than configuring it.
    let weakening = matches!(
        a.event_name.as_str(),
        "DeleteBucketEncryption"
            | "DeleteBucketPublicAccessBlock"
            | "DeleteBucketReplication"
            | "DeleteBucketPolicy"
            | "DeleteBucket"
    ) || (a.event_name == "PutBucketLogging"
        && params(a)
            .and_then(|p| p.get("BucketLoggingStatus"))
            .is_some_and(|s| s.get("LoggingEnabled").is_none()))
        || (a.event_name == "PutBucketVersioning"
            && params(a)
                .and_then(|p| p.get("VersioningConfiguration"))
                .and_then(|v| v.get("Status"))
                .and_then(Value::as_str)
                .is_some_and(|s| s != "Enabled"))
        || (a.event_name.starts_with("PutBucketLifecycle") && expires_soon(params(a)));
    Some((i8::from(weakening), format!("{} on {bucket}", a.event_name)))
}

/// An object written with a key only the writer holds (SSE-C: S3 keeps no copy, so no one
/// else can read it back) — how ransomware with stolen keys holds a bucket's data (the
/// "Codefinger" campaign): worse when an object is copied onto itself, existing data
/// re-encrypted in place. Objects written otherwise are not judged.
fn judge_customer_key(a: &Activity) -> Option<(i8, String)> {
    // Every object write comes here (data events, the most numerous): their documents are
    // parsed only when their text names a customer key at all.
    let mentions = |doc: Option<&trailguard_common::RawJson>, what: &str| {
        doc.is_some_and(|d| d.text().contains(what))
    };
    if !mentions(a.request_parameters.as_ref(), "customer-algorithm")
        && !mentions(a.additional_event_data.as_ref(), "SSE_C")
    {
        return None;
    }
    let p = params(a);
    let customer_key = text(p, "x-amz-server-side-encryption-customer-algorithm").is_some()
        || a.additional_event_data
            .as_ref()
            .and_then(|d| d.get("SSEApplied"))
            .and_then(Value::as_str)
            == Some("SSE_C");
    if !customer_key {
        return None;
    }
    let bucket = text(p, "bucketName").unwrap_or("a bucket");
    let key = text(p, "key").unwrap_or("");
    let source = text(p, "x-amz-copy-source").map(|s| percent_decoded(s.trim_start_matches('/')));
    let object = format!("{bucket}/{key}");
    let in_place = source
        .as_deref()
        .and_then(|s| s.split('?').next())
        .is_some_and(|s| s == object || s.ends_with(&format!(":{object}")));
    Some(if in_place {
        (
            1,
            format!("re-encrypted {bucket}/{key} in place with a key only it holds (SSE-C)"),
        )
    } else {
        (
            0,
            format!("wrote {bucket}/{key} encrypted with a key only it holds (SSE-C)"),
        )
    })
}

/// `x-amz-copy-source` is URL-encoded (`q3%20report.xlsx`); the request's `key` is not.
fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether a lifecycle configuration expires a whole bucket's objects (current or previous
/// versions) within a week, or on a date: data deleted on a timer, the second half of
/// ransomware that encrypted it first. A rule confined to a prefix or tag (`tmp/`, query
/// results) is housekeeping.
fn expires_soon(p: Option<&Value>) -> bool {
    let Some(config) = p.and_then(|p| {
        p.get("LifecycleConfiguration")
            .or_else(|| p.get("lifecycleConfiguration"))
    }) else {
        return false;
    };
    let rules: Vec<&Value> = match config.get("Rule").or_else(|| config.get("Rules")) {
        Some(Value::Array(rules)) => rules.iter().collect(),
        Some(rule) => vec![rule],
        None => Vec::new(),
    };
    let days = |v: Option<&Value>| match v {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    };
    // No filter, or one that selects everything (an empty prefix, no tag, no size bound).
    let whole_bucket = |rule: &Value| {
        // (`*` selects only keys starting with one, but is what a wildcard is taken to be.)
        let empty = |v: Option<&Value>| {
            v.is_none_or(|v| v.as_str().is_some_and(|p| matches!(p, "" | "*" | "/")))
        };
        match rule.get("Filter") {
            None => empty(rule.get("Prefix")),
            Some(Value::Object(filter)) => {
                filter.iter().all(|(k, v)| k == "Prefix" && empty(Some(v)))
            }
            Some(other) => empty(Some(other)),
        }
    };
    rules.into_iter().any(|rule| {
        let enabled = rule
            .get("Status")
            .and_then(Value::as_str)
            .is_none_or(|s| s.eq_ignore_ascii_case("Enabled"));
        let expiration = rule.get("Expiration");
        let current = days(expiration.and_then(|e| e.get("Days")));
        let on_a_date = expiration.and_then(|e| e.get("Date")).is_some();
        let previous = days(
            rule.get("NoncurrentVersionExpiration")
                .and_then(|e| e.get("NoncurrentDays")),
        );
        enabled
            && whole_bucket(rule)
            && (on_a_date || current.into_iter().chain(previous).any(|d| d <= 7))
    })
}

/// Ports whose exposure to the internet is an incident in itself.
const SENSITIVE_PORTS: &[i64] = &[22, 3389, 3306, 5432, 1433, 6379, 9200, 27017, 2375, 445];

fn judge_security_group(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    // Newer calls nest their request under `<call>Request`, capitalised.
    let nested = field(p, &format!("{}Request", a.event_name));
    let group = text(p, "groupId")
        .or_else(|| text(p, "groupName"))
        .or_else(|| field(nested, "GroupId").and_then(Value::as_str))
        .unwrap_or("a security group");
    if a.event_name == "ModifySecurityGroupRules" {
        // Each rule edited in place: `SecurityGroupRule` {`SecurityGroupRuleId`,
        // `SecurityGroupRule`: the rule as it is now}, one or a list.
        let edits = field(nested, "SecurityGroupRule");
        let open = items(edits)
            .into_iter()
            .filter_map(|edit| field(Some(edit), "SecurityGroupRule"))
            .filter_map(edited_open_to_world)
            .reduce(|a, b| match (a, b) {
                (None, _) | (_, None) => None,
                // Every port beats a sensitive one, which beats any other.
                (Some(x), _) if SENSITIVE_PORTS.contains(&x) => Some(x),
                (_, y) => y,
            });
        if let Some(port) = open {
            // The request does not say whether the rule is ingress or egress: everything to
            // anywhere is every group's default egress rule, and web ports out are ordinary.
            // A sensitive port (SSH, RDP, databases) either way is worth a look: one step up.
            let sensitive = port.is_some_and(|p| SENSITIVE_PORTS.contains(&p));
            let ports = port.map_or("every port".to_string(), |p| format!("port {p}"));
            return Some((
                i8::from(sensitive),
                format!("edited a rule of {group} to allow {ports} to or from the internet"),
            ));
        }
    }
    if a.event_name == "AuthorizeSecurityGroupIngress" {
        if let Some(port) = open_to_world(p) {
            let bump = if port.is_none_or(|p| SENSITIVE_PORTS.contains(&p)) {
                2
            } else {
                1
            };
            let ports = port.map_or("every port".to_string(), |p| format!("port {p}"));
            return Some((bump, format!("opened {ports} of {group} to the internet")));
        }
    }
    Some((0, format!("{} on {group}", a.event_name)))
}

/// A rule as `ModifySecurityGroupRules` sets it, when it is to or from anywhere
/// (`CidrIpv4` 0.0.0.0/0, `CidrIpv6` ::/0): `Some(Some(port))` for a sensitive port in range
/// (or the from-port), `Some(None)` for every port.
fn edited_open_to_world(rule: &Value) -> Option<Option<i64>> {
    let cidr = |key| field(Some(rule), key).and_then(Value::as_str);
    if cidr("CidrIpv4") != Some("0.0.0.0/0") && cidr("CidrIpv6") != Some("::/0") {
        return None;
    }
    let number =
        |key| field(Some(rule), key).and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
    let protocol = field(Some(rule), "IpProtocol").and_then(|v| {
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_i64().map(|n| n.to_string()))
    });
    Some(
        match (protocol.as_deref(), number("FromPort"), number("ToPort")) {
            (Some("-1"), _, _) | (_, None, _) => None,
            (_, Some(f), Some(t)) if f <= 0 && t >= 65535 => None,
            (_, Some(f), to) => {
                let t = to.unwrap_or(f);
                Some(
                    SENSITIVE_PORTS
                        .iter()
                        .copied()
                        .find(|s| (f..=t).contains(s))
                        .unwrap_or(f),
                )
            }
        },
    )
}

/// When an ingress request opens something to 0.0.0.0/0 or ::/0: `Some(Some(port))` for a
/// sensitive port in range (or the from-port), `Some(None)` for every port.
fn open_to_world(p: Option<&Value>) -> Option<Option<i64>> {
    let p = p?;
    let perms = p.get("ipPermissions").and_then(|v| v.get("items"));
    let mut found = None;
    // The flat form (cidrIp + fromPort/toPort) and the list form.
    let flat_open = text(Some(p), "cidrIp") == Some("0.0.0.0/0");
    let mut check = |perm: &Value, open: bool| {
        if !open {
            return;
        }
        let proto = perm.get("ipProtocol").and_then(|v| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        });
        let from = perm.get("fromPort").and_then(Value::as_i64);
        let to = perm.get("toPort").and_then(Value::as_i64).or(from);
        let verdict = match (proto.as_deref(), from, to) {
            (Some("-1"), _, _) | (_, None, _) => None,
            (_, Some(f), Some(t)) if f <= 0 && t >= 65535 => None,
            (_, Some(f), Some(t)) => Some(
                SENSITIVE_PORTS
                    .iter()
                    .copied()
                    .find(|s| (f..=t).contains(s))
                    .unwrap_or(f),
            ),
            (_, Some(f), None) => Some(f),
        };
        // Every port beats a single one.
        found = match (found, verdict) {
            (Some(None), _) | (_, None) => Some(None),
            (Some(Some(old)), Some(new)) if SENSITIVE_PORTS.contains(&old) => {
                Some(Some(if SENSITIVE_PORTS.contains(&new) {
                    new
                } else {
                    old
                }))
            }
            (_, Some(new)) => Some(Some(new)),
        };
    };
    if flat_open {
        check(p, true);
    }
    for perm in items(perms) {
        let ranges = perm.get("ipRanges").and_then(|r| r.get("items"));
        let v6 = perm.get("ipv6Ranges").and_then(|r| r.get("items"));
        let open = items(ranges)
            .iter()
            .any(|r| r.get("cidrIp").and_then(Value::as_str) == Some("0.0.0.0/0"))
            || items(v6)
                .iter()
                .any(|r| r.get("cidrIpv6").and_then(Value::as_str) == Some("::/0"));
        check(perm, open);
    }
    found
}

fn judge_vpc(a: &Activity) -> Option<(i8, String)> {
    let p = params(a);
    let target = [
        "vpcId",
        "vpnConnectionId",
        "vpcPeeringConnectionId",
        "vpcEndpointId",
    ]
    .iter()
    .find_map(|k| text(p, k))
    .unwrap_or("");
    // Deleting flow logs blinds network forensics.
    let bump = i8::from(a.event_name == "DeleteFlowLogs");
    Some((
        bump,
        format!("{} {target}", a.event_name).trim_end().to_string(),
    ))
}

/// The entity an alert of a template is about: the first resource named by the request,
/// else the acting principal.
fn entity(a: &Activity) -> Entity {
    let p = params(a);
    // What some calls are about is not the first name their request holds: the group a user
    // joins, the identity provider changed, the permission set and whom an assignment gives
    // it to where.
    let special = match a.event_name.as_str() {
        "AddUserToGroup" => text(p, "groupName").map(|g| ("iam-group", g.to_string())),
        name if is_identity_provider_call(name) => {
            identity_provider(p).map(|id| ("identity-provider", id.to_string()))
        }
        "CreateAccountAssignment" => text(p, "permissionSetArn").map(|set| {
            let to = |k| text(p, k).unwrap_or("?");
            (
                "account-assignment",
                format!("{}/{}/{set}", to("targetId"), to("principalId")),
            )
        }),
        name if name.contains("PermissionSet") => {
            text(p, "permissionSetArn").map(|set| ("permission-set", set.to_string()))
        }
        _ => None,
    };
    if let Some((kind, id)) = special {
        return Entity {
            kind: kind.into(),
            id,
        };
    }
    const KEYS: &[(&str, &str)] = &[
        ("bucketName", kinds::S3_BUCKET),
        ("instanceId", "ec2-instance"),
        ("groupId", "security-group"),
        ("networkAclId", "network-acl"),
        ("internetGatewayId", "internet-gateway"),
        ("natGatewayId", "nat-gateway"),
        ("transitGatewayId", "transit-gateway"),
        ("vpnGatewayId", "vpn-gateway"),
        ("customerGatewayId", "customer-gateway"),
        ("routeTableId", "route-table"),
        ("vpnConnectionId", "vpn-connection"),
        ("vpcPeeringConnectionId", "vpc-peering"),
        ("vpcEndpointId", "vpc-endpoint"),
        ("vpcId", "vpc"),
        ("roleName", "iam-role"),
        ("userName", "iam-user"),
        ("policyArn", "iam-policy"),
        ("groupName", "iam-group"),
        ("policyName", "iam-policy"),
    ];
    for (key, kind) in KEYS {
        if let Some(id) = text(p, key) {
            return Entity {
                kind: (*kind).into(),
                id: id.into(),
            };
        }
    }
    if let Some(r) = a.resources.first() {
        return Entity {
            kind: r.kind.clone(),
            id: r.id.clone(),
        };
    }
    Entity {
        kind: kinds::PRINCIPAL.into(),
        id: a.principal.key(),
    }
}

/// The templates with their settings, ready to evaluate activities.
pub struct Templates {
    active: Vec<(&'static Template, TemplateConfig)>,
    /// eventName → indexes into `active` of the templates watching it.
    /// By event name (static keys, looked up for every activity: a fixed-seed foldhash).
    by_event: std::collections::HashMap<&'static str, Vec<usize>, foldhash::fast::FixedState>,
}

impl Templates {
    /// Every enabled template with its settings.
    pub fn new(cfg: &TemplatesConfig) -> Self {
        let active: Vec<(&'static Template, TemplateConfig)> = TEMPLATES
            .iter()
            .filter_map(|t| {
                let c = cfg.get(t.meta.id).cloned().unwrap_or_default();
                c.enabled.unwrap_or(true).then_some((t, c))
            })
            .collect();
        let mut by_event: std::collections::HashMap<
            &'static str,
            Vec<usize>,
            foldhash::fast::FixedState,
        > = std::collections::HashMap::default();
        for (i, (t, _)) in active.iter().enumerate() {
            for event in t.events {
                by_event.entry(*event).or_default().push(i);
            }
        }
        Templates { active, by_event }
    }

    /// The alerts `activity` raises.
    pub fn judge(&self, a: &Activity) -> Vec<Alert> {
        let mut out = Vec::new();
        crate::policy::EventPolicy::evaluate(self, a, &mut out);
        out
    }
}

impl crate::policy::EventPolicy for Templates {
    fn policies(&self) -> Vec<&'static PolicyMeta<'static>> {
        TEMPLATES.iter().map(|t| &t.meta).collect()
    }

    fn evaluate(&self, a: &Activity, out: &mut Vec<Alert>) {
        let Some(candidates) = self.by_event.get(a.event_name.as_str()) else {
            return;
        };
        for &i in candidates {
            let (t, c) = &self.active[i];
            if !t.sources.contains(&a.event_source.as_str()) {
                continue;
            }
            if (!c.accounts.is_empty()
                && !a
                    .account_id
                    .as_ref()
                    .is_some_and(|x| c.accounts.contains(x)))
                || (!c.regions.is_empty()
                    && !a.region.as_ref().is_some_and(|x| c.regions.contains(x)))
                || allowed(&c.allow_principals, a)
            {
                continue;
            }
            let failed = !a.outcome.is_success();
            if failed && !c.include_failures.unwrap_or(true) {
                continue;
            }
            let Some((by, what)) = (t.judge)(a) else {
                continue;
            };
            let base = c.severity.unwrap_or(t.severity);
            let severity = step(base, by - i8::from(failed));
            let attempt = match (&a.outcome.error_code, failed) {
                (_, false) => String::new(),
                (Some(code), true) => format!(" (attempt failed: {code})"),
                (None, true) => " (attempt failed)".into(),
            };
            let summary = format!("{} {what}{attempt}", who(a));
            let actions = c.actions.as_deref().unwrap_or(&[ActionKind::Notify]);
            let alert = AlertBuilder::about(&t.meta, a, severity)
                .entity(entity(a))
                .evidence(vec![a.id.clone()], summary)
                .mitre(t.mitre)
                .actions(requested(actions, a))
                .id_from(&[a.id.as_str()]);
            out.push(alert);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn activity(source: &str, name: &str, params: Value, error: Option<&str>) -> Activity {
        let mut record = json!({
            "eventTime": "2024-05-01T10:00:00Z", "eventSource": source, "eventName": name,
            "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
            "sourceIPAddress": "203.0.113.9",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111111111111:user/alice", "userName": "alice"},
            "requestParameters": params,
        });
        if let Some(code) = error {
            record["errorCode"] = json!(code);
        }
        let text = record.to_string();
        match trailguard_ingest::normalize::normalize(&text) {
            Ok(a) => a,
            Err(e) => panic!("test record does not normalize: {e}: {text}"),
        }
    }

    fn fire(a: &Activity) -> Vec<(String, Severity, String)> {
        Templates::new(&TemplatesConfig::new())
            .judge(a)
            .into_iter()
            .map(|al| (al.policy_id, al.severity, al.evidence.summary))
            .collect()
    }

    #[test]
    fn admin_policy_attached_is_high() {
        let a = activity(
            "iam.amazonaws.com",
            "AttachUserPolicy",
            json!({"userName": "bob", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
            None,
        );
        let got = fire(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, Severity::High);
        assert!(got[0].2.contains("AdministratorAccess"), "{got:?}");
        let read_only = activity(
            "iam.amazonaws.com",
            "AttachUserPolicy",
            json!({"userName": "bob", "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}),
            None,
        );
        assert_eq!(fire(&read_only)[0].1, Severity::Medium);
        let denied = activity(
            "iam.amazonaws.com",
            "AttachUserPolicy",
            json!({"userName": "bob", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
            Some("AccessDenied"),
        );
        let got = fire(&denied);
        assert_eq!(got[0].1, Severity::Medium);
        assert!(got[0].2.contains("attempt failed: AccessDenied"));
    }

    /// Identity Center's permission sets are IAM policies provisioned into accounts, and an
    /// account assignment gives a user or group one of them in an account: an administrator's
    /// set attached, an inline policy allowing everything, an assignment made — persistence
    /// and escalation through the organization's SSO, judged as the IAM calls are.
    #[test]
    fn identity_center_permission_sets_and_assignments() {
        let sso = |name: &str, params: Value| activity("sso.amazonaws.com", name, params, None);
        let set = "arn:aws:sso:::permissionSet/ssoins-7223a5b4f3c1d2e0/ps-0123456789abcdef";
        let got = fire(&sso(
            "AttachManagedPolicyToPermissionSet",
            json!({"instanceArn": "arn:aws:sso:::instance/ssoins-7223a5b4f3c1d2e0",
                "permissionSetArn": set,
                "managedPolicyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}),
        ));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].0.as_str(), got[0].1),
            ("iam-policy-changes", Severity::High)
        );
        assert!(got[0].2.contains("ps-0123456789abcdef"), "{got:?}");
        let inline = fire(&sso(
            "PutInlinePolicyToPermissionSet",
            json!({"permissionSetArn": set, "inlinePolicy":
                "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"*\",\"Resource\":\"*\"}]}"}),
        ));
        assert_eq!(
            inline.first().map(|g| g.1),
            Some(Severity::High),
            "{inline:?}"
        );
        let assigned = fire(&sso(
            "CreateAccountAssignment",
            json!({"instanceArn": "arn:aws:sso:::instance/ssoins-7223a5b4f3c1d2e0",
                "targetId": "222233334444", "targetType": "AWS_ACCOUNT", "permissionSetArn": set,
                "principalType": "USER", "principalId": "94482488-3041-7026-18f3-be45837cd0e4"}),
        ));
        assert_eq!(assigned.len(), 1, "{assigned:?}");
        assert_eq!(assigned[0].1, Severity::Medium);
        let entity = Templates::new(&TemplatesConfig::new())
            .judge(&sso(
                "CreateAccountAssignment",
                json!({"targetId": "222233334444", "principalId": "u-1", "permissionSetArn": set}),
            ))
            .first()
            .map(|a| a.entity.id.clone());
        assert_eq!(entity, Some(format!("222233334444/u-1/{set}")));
        assert!(
            assigned[0].2.contains("222233334444") && assigned[0].2.contains("94482488"),
            "{assigned:?}"
        );
        let read_only = fire(&sso(
            "AttachManagedPolicyToPermissionSet",
            json!({"permissionSetArn": set,
                "managedPolicyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"}),
        ));
        assert_eq!(read_only.first().map(|g| g.1), Some(Severity::Medium));
        // The same names on another service are not these.
        assert!(fire(&activity(
            "iam.amazonaws.com",
            "CreateAccountAssignment",
            json!({}),
            None
        ))
        .is_empty());
    }

    /// Joining an administrators' group, and trusting a new or changed identity provider (whose
    /// key then signs in as anyone it names), are IAM changes as a policy is.
    #[test]
    fn group_membership_and_identity_providers() {
        let iam =
            |name: &str, params: Value| fire(&activity("iam.amazonaws.com", name, params, None));
        let joined = iam(
            "AddUserToGroup",
            json!({"groupName": "Administrators", "userName": "mallory"}),
        );
        assert_eq!(joined.len(), 1, "{joined:?}");
        assert_eq!(
            (joined[0].0.as_str(), joined[0].1),
            ("iam-policy-changes", Severity::High)
        );
        assert!(
            joined[0].2.contains("mallory") && joined[0].2.contains("Administrators"),
            "{joined:?}"
        );
        let readers = iam(
            "AddUserToGroup",
            json!({"groupName": "readers", "userName": "bob"}),
        );
        assert_eq!(readers.first().map(|g| g.1), Some(Severity::Medium));
        let swapped = iam(
            "UpdateSAMLProvider",
            json!({"sAMLProviderArn": "arn:aws:iam::111111111111:saml-provider/Okta",
                "sAMLMetadataDocument": "<EntityDescriptor/>"}),
        );
        assert_eq!(
            swapped.first().map(|g| g.1),
            Some(Severity::High),
            "{swapped:?}"
        );
        assert!(swapped[0].2.contains("Okta"), "{swapped:?}");
        // Only its private keys or encryption mode changed, not whom it trusts: medium.
        let keys_only = iam(
            "UpdateSAMLProvider",
            json!({"sAMLProviderArn": "arn:aws:iam::111111111111:saml-provider/Okta",
                "assertionEncryptionMode": "Required"}),
        );
        assert_eq!(keys_only.first().map(|g| g.1), Some(Severity::Medium));
        // Each provider, each group, each assignment is its own entity.
        let of = |name: &str, params: Value| {
            Templates::new(&TemplatesConfig::new())
                .judge(&activity("iam.amazonaws.com", name, params, None))
                .first()
                .map(|a| (a.entity.kind.clone(), a.entity.id.clone()))
        };
        assert_eq!(
            of("CreateSAMLProvider", json!({"name": "Evil"})),
            Some(("identity-provider".to_string(), "Evil".to_string()))
        );
        assert_eq!(
            of(
                "AddUserToGroup",
                json!({"groupName": "PowerUsers", "userName": "bob"})
            ),
            Some(("iam-group".to_string(), "PowerUsers".to_string()))
        );
        let mut by_sso = activity(
            "iam.amazonaws.com",
            "CreateSAMLProvider",
            json!({"name": "AWSSSO_abdf34fd171b4a7e_DO_NOT_DELETE"}),
            None,
        );
        by_sso.principal.invoked_by = Some("sso.amazonaws.com".into());
        assert!(fire(&by_sso).is_empty(), "Identity Center's own");
        for (name, params) in [
            (
                "CreateSAMLProvider",
                json!({"name": "NewIdP", "sAMLMetadataDocument": "<x/>"}),
            ),
            (
                "CreateOpenIDConnectProvider",
                json!({"url": "https://token.example.com"}),
            ),
            (
                "UpdateOpenIDConnectProviderThumbprint",
                json!({"openIDConnectProviderArn": "arn:aws:iam::111111111111:oidc-provider/token.example.com"}),
            ),
        ] {
            let got = iam(name, params);
            assert_eq!(
                got.first().map(|g| g.1),
                Some(Severity::Medium),
                "{name}: {got:?}"
            );
        }
    }

    /// Objects written with a key only the writer holds (SSE-C): what S3 ransomware does to
    /// a bucket's objects with stolen keys (re-encrypting them in place, then expiring the
    /// originals). A lifecycle rule that expires objects within days is worse than one that
    /// tidies.
    #[test]
    fn customer_key_encryption_and_short_expiry() {
        let s3 =
            |name: &str, params: Value| fire(&activity("s3.amazonaws.com", name, params, None));
        let in_place = s3(
            "CopyObject",
            json!({"bucketName": "finance", "key": "q3.xlsx", "x-amz-copy-source": "finance/q3.xlsx",
                "x-amz-server-side-encryption-customer-algorithm": "AES256"}),
        );
        assert_eq!(in_place.len(), 1, "{in_place:?}");
        assert_eq!(
            (in_place[0].0.as_str(), in_place[0].1),
            ("s3-object-customer-key", Severity::High)
        );
        let put = s3(
            "PutObject",
            json!({"bucketName": "finance", "key": "new.xlsx",
                "x-amz-server-side-encryption-customer-algorithm": "AES256"}),
        );
        assert_eq!(put.first().map(|g| g.1), Some(Severity::Medium), "{put:?}");
        assert!(s3(
            "PutObject",
            json!({"bucketName": "finance", "key": "plain.txt"})
        )
        .is_empty());
        assert!(s3(
            "PutObject",
            json!({"bucketName": "finance", "key": "kms.txt", "x-amz-server-side-encryption": "aws:kms"})
        )
        .is_empty());
        let expiry = |days: Value| {
            s3(
                "PutBucketLifecycleConfiguration",
                json!({"bucketName": "finance", "LifecycleConfiguration": {"Rule": [
                    {"ID": "tidy", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
                        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
                    {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""},
                        "Expiration": {"Days": days}}]}}),
            )
            .first()
            .map(|g| g.1)
        };
        assert_eq!(expiry(json!(1)), Some(Severity::Medium));
        assert_eq!(expiry(json!("3")), Some(Severity::Medium));
        assert_eq!(expiry(json!(365)), Some(Severity::Low));
        let rule = |rule: Value| {
            s3(
                "PutBucketLifecycleConfiguration",
                json!({"bucketName": "finance", "LifecycleConfiguration": {"Rule": rule}}),
            )
            .first()
            .map(|g| g.1)
        };
        // On a date (past or near, every object goes at once), the whole bucket: worse.
        assert_eq!(
            rule(json!({"Status": "Enabled", "Expiration": {"Date": "2025-01-01T00:00:00Z"}})),
            Some(Severity::Medium)
        );
        // Housekeeping confined to a prefix or a tag is not.
        assert_eq!(
            rule(
                json!({"Status": "Enabled", "Filter": {"Prefix": "athena-results/"},
                "Expiration": {"Days": 1}})
            ),
            Some(Severity::Low)
        );
        assert_eq!(
            rule(
                json!({"Status": "Enabled", "Filter": {"Tag": {"Key": "tmp", "Value": "1"}},
                "Expiration": {"Days": 1}})
            ),
            Some(Severity::Low)
        );
        assert_eq!(
            rule(json!({"Status": "Disabled", "Expiration": {"Days": 1}})),
            Some(Severity::Low)
        );
        // A key with a space: the copy source is URL-encoded.
        let spaced = s3(
            "CopyObject",
            json!({"bucketName": "finance", "key": "q3 report.xlsx",
                "x-amz-copy-source": "finance/q3%20report.xlsx",
                "x-amz-server-side-encryption-customer-algorithm": "AES256"}),
        );
        assert_eq!(
            spaced.first().map(|g| g.1),
            Some(Severity::High),
            "{spaced:?}"
        );
    }

    #[test]
    fn security_group_open_to_the_world() {
        let ssh = json!({"groupId": "sg-1", "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
            "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}});
        let got = fire(&activity(
            "ec2.amazonaws.com",
            "AuthorizeSecurityGroupIngress",
            ssh,
            None,
        ));
        assert_eq!(got[0].1, Severity::High);
        assert!(got[0].2.contains("port 22"), "{got:?}");
        let internal = json!({"groupId": "sg-1", "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
            "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}]}}]}});
        let got = fire(&activity(
            "ec2.amazonaws.com",
            "AuthorizeSecurityGroupIngress",
            internal,
            None,
        ));
        assert_eq!(got[0].1, Severity::Low);
        let web = json!({"groupId": "sg-1", "ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 443, "toPort": 443,
            "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}});
        let got = fire(&activity(
            "ec2.amazonaws.com",
            "AuthorizeSecurityGroupIngress",
            web,
            None,
        ));
        assert_eq!(got[0].1, Severity::Medium);
    }

    #[test]
    fn routes_count_only_towards_gateways() {
        let local = json!({"routeTableId": "rtb-1", "destinationCidrBlock": "10.1.0.0/16", "networkInterfaceId": "eni-1"});
        assert!(fire(&activity("ec2.amazonaws.com", "CreateRoute", local, None)).is_empty());
        let igw = json!({"routeTableId": "rtb-1", "destinationCidrBlock": "0.0.0.0/0", "gatewayId": "igw-1"});
        let got = fire(&activity("ec2.amazonaws.com", "CreateRoute", igw, None));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "network-gateway-changes");
    }

    #[test]
    fn user_data_and_flow_logs_are_worse() {
        let ud = json!({"instanceId": "i-1", "userData": "<sensitiveDataRemoved>"});
        assert_eq!(
            fire(&activity(
                "ec2.amazonaws.com",
                "ModifyInstanceAttribute",
                ud,
                None
            ))[0]
                .1,
            Severity::High
        );
        let flow = json!({"DeleteFlowLogsRequest": {"FlowLogId": {"content": "fl-1"}}});
        assert_eq!(
            fire(&activity("ec2.amazonaws.com", "DeleteFlowLogs", flow, None))[0].1,
            Severity::Medium
        );
    }

    /// IMDSv1 allowed again, as CloudTrail records it: the request nested under
    /// `ModifyInstanceMetadataOptionsRequest` with EC2's capitalised names (and the flat
    /// shape of other exports); and for the account's default.
    #[test]
    fn imdsv1_allowed_again_is_high_in_every_shape() {
        let judged = |name: &str, params: Value| {
            fire(&activity("ec2.amazonaws.com", name, params, None))
                .into_iter()
                .map(|(_, severity, summary)| (severity, summary))
                .next()
                .unwrap_or((Severity::Low, "nothing".into()))
        };
        for (name, params) in [
            (
                "ModifyInstanceMetadataOptions",
                json!({"ModifyInstanceMetadataOptionsRequest": {
                    "InstanceId": "i-0abc", "HttpTokens": "optional", "HttpEndpoint": "enabled"}}),
            ),
            (
                "ModifyInstanceMetadataOptions",
                json!({"instanceId": "i-0abc", "httpTokens": "optional"}),
            ),
        ] {
            let (severity, summary) = judged(name, params);
            assert_eq!(severity, Severity::High, "{summary}");
            assert!(
                summary.contains("i-0abc") && summary.contains("IMDSv1"),
                "{summary}"
            );
        }
        let required = json!({"ModifyInstanceMetadataOptionsRequest": {
            "InstanceId": "i-0abc", "HttpTokens": "required"}});
        let (severity, summary) = judged("ModifyInstanceMetadataOptions", required);
        assert_eq!(severity, Severity::Medium, "{summary}");
        assert!(summary.contains("i-0abc"), "{summary}");
        // The account's default for new instances.
        let default = json!({"ModifyInstanceMetadataDefaultsRequest": {"HttpTokens": "optional"}});
        let (severity, summary) = judged("ModifyInstanceMetadataDefaults", default);
        assert_eq!(severity, Severity::High, "{summary}");
        assert!(summary.contains("IMDSv1"), "{summary}");
        let default =
            json!({"ModifyInstanceMetadataDefaultsRequest": {"HttpTokens": "no-preference"}});
        assert_eq!(
            judged("ModifyInstanceMetadataDefaults", default).0,
            Severity::High
        );
        let default = json!({"ModifyInstanceMetadataDefaultsRequest": {"HttpTokens": "required"}});
        assert_eq!(
            judged("ModifyInstanceMetadataDefaults", default).0,
            Severity::Medium
        );
    }

    /// A rule edited in place (`ModifySecurityGroupRules`, the console's way), as CloudTrail
    /// records it: nested under `ModifySecurityGroupRulesRequest`, capitalised.
    #[test]
    fn a_rule_edited_open_to_the_world_is_judged() {
        let edit = |cidr: (&str, &str), protocol: &str, from: i64, to: i64| {
            let rule = json!({"IpProtocol": protocol, "FromPort": from, "ToPort": to,
                cidr.0: cidr.1, "Description": ""});
            let params = json!({"ModifySecurityGroupRulesRequest": {"GroupId": "sg-0db",
                "SecurityGroupRule": {"SecurityGroupRuleId": "sgr-1", "SecurityGroupRule": rule}}});
            fire(&activity(
                "ec2.amazonaws.com",
                "ModifySecurityGroupRules",
                params,
                None,
            ))
            .into_iter()
            .next()
            .map(|(_, severity, summary)| (severity, summary))
            .unwrap_or((Severity::Low, "nothing".into()))
        };
        // The request does not say ingress or egress: a sensitive port is one step up, not
        // two; every port (the default egress rule) and web ports are said, not raised.
        let (severity, summary) = edit(("CidrIpv4", "0.0.0.0/0"), "tcp", 22, 22);
        assert_eq!(severity, Severity::Medium, "{summary}");
        assert!(
            summary.contains("sg-0db") && summary.contains("port 22"),
            "{summary}"
        );
        let (severity, summary) = edit(("CidrIpv4", "0.0.0.0/0"), "tcp", 443, 443);
        assert_eq!(severity, Severity::Low, "{summary}");
        let (severity, summary) = edit(("CidrIpv6", "::/0"), "-1", -1, -1);
        assert_eq!(severity, Severity::Low, "{summary}");
        assert!(summary.contains("every port"), "{summary}");
        let (severity, summary) = edit(("CidrIpv4", "10.0.0.0/8"), "tcp", 22, 22);
        assert_eq!(severity, Severity::Low, "{summary}");
        assert!(summary.contains("sg-0db"), "{summary}");
    }

    #[test]
    fn settings_scope_and_silence() {
        let a = activity(
            "ec2.amazonaws.com",
            "DeleteVpc",
            json!({"vpcId": "vpc-1"}),
            None,
        );
        let mut cfg = TemplatesConfig::new();
        cfg.insert(
            "vpn-vpc-changes".into(),
            TemplateConfig {
                regions: vec!["eu-west-1".into()],
                ..TemplateConfig::default()
            },
        );
        assert!(Templates::new(&cfg).judge(&a).is_empty());
        cfg.insert(
            "vpn-vpc-changes".into(),
            TemplateConfig {
                allow_principals: vec!["alice".into()],
                ..TemplateConfig::default()
            },
        );
        assert!(Templates::new(&cfg).judge(&a).is_empty());
        cfg.insert(
            "vpn-vpc-changes".into(),
            TemplateConfig {
                severity: Some(Severity::High),
                ..TemplateConfig::default()
            },
        );
        assert_eq!(Templates::new(&cfg).judge(&a)[0].severity, Severity::High);
        cfg.insert("no-such".into(), TemplateConfig::default());
        let err = validate(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("policies.templates.no-such"), "{err}");
    }
}
