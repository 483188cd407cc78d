//! What an API call means in an attack: the classification table behind
//! `unusual-api-behaviour` and `discovery-burst`.
//!
//! Each row is an event source, an event name and what the call does for an attacker — its
//! tactic (MITRE ATT&CK for cloud) and a weight from 1 (ordinary, telling only in numbers) to
//! 5 (rarely anything but an attack or an incident). The rows are the calls that attacks with
//! stolen AWS credentials use, by service: credential access (secrets, parameters, instance
//! passwords), persistence (keys, passwords and trust for other identities, federation, Roles
//! Anywhere, Lambda code and layers), privilege escalation (policies attached or written,
//! boundaries removed), lateral movement (SSM, EC2 Instance Connect, serial console),
//! exfiltration (snapshots, images and exports shared or copied out), defense evasion
//! (logging and detection switched off) and impact (deletion, encryption keys, backups, model
//! abuse, compute for mining: [`ACCELERATED`]). Reads that enumerate (`List*`, `Describe*`,
//! `Get*` without a row of their own) are discovery, weight 1. Some calls are read for what
//! their parameters make them, each such form a row of its own ([`DERIVED`]).
//!
//! The table is documented in docs/policies.md; a row added here is a line there.

use std::collections::HashMap;
use std::sync::LazyLock;

use trailguard_common::Activity;

/// A tactic, as MITRE ATT&CK names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tactic {
    /// Reading secrets and credentials.
    CredentialAccess = 0,
    /// Keeping access: new credentials, trust, code that runs later.
    Persistence = 1,
    /// Taking more rights.
    PrivilegeEscalation = 2,
    /// Finding out what there is.
    Discovery = 3,
    /// Reaching into instances and other accounts.
    LateralMovement = 4,
    /// Moving data out.
    Exfiltration = 5,
    /// Blinding the defenders.
    DefenseEvasion = 6,
    /// Destroying, encrypting, or running up the bill.
    Impact = 7,
}

impl Tactic {
    /// Its name in alerts.
    pub fn name(self) -> &'static str {
        match self {
            Tactic::CredentialAccess => "credential access",
            Tactic::Persistence => "persistence",
            Tactic::PrivilegeEscalation => "privilege escalation",
            Tactic::Discovery => "discovery",
            Tactic::LateralMovement => "lateral movement",
            Tactic::Exfiltration => "exfiltration",
            Tactic::DefenseEvasion => "defense evasion",
            Tactic::Impact => "impact",
        }
    }

    /// MITRE ATT&CK's name for it (an alert's `mitre.tactic`).
    pub fn mitre(self) -> &'static str {
        match self {
            Tactic::CredentialAccess => "Credential Access",
            Tactic::Persistence => "Persistence",
            Tactic::PrivilegeEscalation => "Privilege Escalation",
            Tactic::Discovery => "Discovery",
            Tactic::LateralMovement => "Lateral Movement",
            Tactic::Exfiltration => "Exfiltration",
            Tactic::DefenseEvasion => "Defense Evasion",
            Tactic::Impact => "Impact",
        }
    }

    /// A representative ATT&CK technique: (id, name).
    pub fn technique(self) -> (&'static str, &'static str) {
        match self {
            Tactic::CredentialAccess => ("T1552", "Unsecured Credentials"),
            Tactic::Persistence => ("T1098", "Account Manipulation"),
            Tactic::PrivilegeEscalation => ("T1098.003", "Additional Cloud Roles"),
            Tactic::Discovery => ("T1526", "Cloud Service Discovery"),
            Tactic::LateralMovement => ("T1021.007", "Remote Services: Cloud Services"),
            Tactic::Exfiltration => ("T1537", "Transfer Data to Cloud Account"),
            Tactic::DefenseEvasion => ("T1562", "Impair Defenses"),
            Tactic::Impact => ("T1485", "Data Destruction"),
        }
    }
}

/// One row: a call and what it means.
#[derive(Debug)]
pub struct Row {
    /// `eventSource`.
    pub source: &'static str,
    /// `eventName`.
    pub name: &'static str,
    /// What it does for an attacker.
    pub tactic: Tactic,
    /// 1 (ordinary) to 5 (rarely anything but an attack).
    pub weight: u8,
}

const fn row(source: &'static str, name: &'static str, tactic: Tactic, weight: u8) -> Row {
    Row {
        source,
        name,
        tactic,
        weight,
    }
}

use Tactic::*;

const IAM: &str = "iam.amazonaws.com";
const STS: &str = "sts.amazonaws.com";
const EC2: &str = "ec2.amazonaws.com";
const SSM: &str = "ssm.amazonaws.com";
const S3: &str = "s3.amazonaws.com";
const LAMBDA: &str = "lambda.amazonaws.com";
const KMS: &str = "kms.amazonaws.com";
const RDS: &str = "rds.amazonaws.com";
const BEDROCK: &str = "bedrock.amazonaws.com";
const SAGEMAKER: &str = "sagemaker.amazonaws.com";

/// The table, by service. Kept sorted by (source, name) for lookup (a test checks).
pub const TABLE: &[Row] = &[
    row(
        "access-analyzer.amazonaws.com",
        "DeleteAnalyzer",
        DefenseEvasion,
        4,
    ),
    row("backup.amazonaws.com", "DeleteBackupPlan", Impact, 3),
    row("backup.amazonaws.com", "DeleteBackupVault", Impact, 4),
    row("backup.amazonaws.com", "DeleteRecoveryPoint", Impact, 4),
    row(
        "backup.amazonaws.com",
        "PutBackupVaultLockConfiguration",
        Impact,
        3,
    ),
    row("batch.amazonaws.com", "CreateComputeEnvironment", Impact, 2),
    row(BEDROCK, "Converse", Impact, 2),
    row(BEDROCK, "ConverseStream", Impact, 2),
    row(BEDROCK, "CreateFoundationModelAgreement", Impact, 3),
    row(
        BEDROCK,
        "DeleteModelInvocationLoggingConfiguration",
        DefenseEvasion,
        5,
    ),
    row(BEDROCK, "GetFoundationModelAvailability", Discovery, 2),
    row(BEDROCK, "InvokeModel", Impact, 2),
    row(BEDROCK, "InvokeModelWithResponseStream", Impact, 2),
    row(BEDROCK, "ListFoundationModels", Discovery, 2),
    row(BEDROCK, "PutFoundationModelEntitlement", Impact, 3),
    row(
        BEDROCK,
        "PutModelInvocationLoggingConfiguration",
        DefenseEvasion,
        3,
    ),
    row(BEDROCK, "PutUseCaseForModelAccess", Impact, 3),
    // A file taken out of a CloudShell environment's home directory (what was gathered there
    // with the console session's rights).
    row(
        "cloudshell.amazonaws.com",
        "GetFileDownloadUrls",
        Exfiltration,
        3,
    ),
    row("cloudtrail.amazonaws.com", "DeleteTrail", DefenseEvasion, 5),
    row(
        "cloudtrail.amazonaws.com",
        "PutEventSelectors",
        DefenseEvasion,
        3,
    ),
    row("cloudtrail.amazonaws.com", "StopLogging", DefenseEvasion, 5),
    row("cloudtrail.amazonaws.com", "UpdateTrail", DefenseEvasion, 3),
    row(
        "codebuild.amazonaws.com",
        "CreateProject",
        PrivilegeEscalation,
        2,
    ),
    row("codebuild.amazonaws.com", "UpdateProject", Persistence, 2),
    row(
        "codepipeline.amazonaws.com",
        "UpdatePipeline",
        Persistence,
        2,
    ),
    row(
        "cognito-identity.amazonaws.com",
        "CreateIdentityPool",
        Persistence,
        2,
    ),
    row(
        "cognito-identity.amazonaws.com",
        "SetIdentityPoolRoles",
        PrivilegeEscalation,
        3,
    ),
    row(
        "cognito-identity.amazonaws.com",
        "UpdateIdentityPool",
        Persistence,
        2,
    ),
    row(
        "cognito-idp.amazonaws.com",
        "AdminCreateUser",
        Persistence,
        2,
    ),
    row(
        "cognito-idp.amazonaws.com",
        "AdminSetUserPassword",
        Persistence,
        3,
    ),
    row(
        "config.amazonaws.com",
        "DeleteConfigurationRecorder",
        DefenseEvasion,
        5,
    ),
    row(
        "config.amazonaws.com",
        "DeleteDeliveryChannel",
        DefenseEvasion,
        5,
    ),
    row(
        "config.amazonaws.com",
        "StopConfigurationRecorder",
        DefenseEvasion,
        5,
    ),
    row("datasync.amazonaws.com", "CreateTask", Exfiltration, 3),
    row("dynamodb.amazonaws.com", "DeleteBackup", Impact, 3),
    row("dynamodb.amazonaws.com", "DeleteTable", Impact, 2),
    row(
        "dynamodb.amazonaws.com",
        "ExportTableToPointInTime",
        Exfiltration,
        3,
    ),
    row("ebs.amazonaws.com", "GetSnapshotBlock", Exfiltration, 3),
    row("ebs.amazonaws.com", "ListSnapshotBlocks", Exfiltration, 3),
    row(
        "ec2-instance-connect.amazonaws.com",
        "OpenTunnel",
        LateralMovement,
        3,
    ),
    row(
        "ec2-instance-connect.amazonaws.com",
        "SendSSHPublicKey",
        LateralMovement,
        3,
    ),
    row(
        "ec2-instance-connect.amazonaws.com",
        "SendSerialConsoleSSHPublicKey",
        LateralMovement,
        4,
    ),
    row(EC2, "CreateFleet", Impact, 2),
    row(EC2, "CreateInstanceExportTask", Exfiltration, 4),
    row(EC2, "CreateKeyPair", Persistence, 2),
    row(EC2, "CreateLaunchTemplateVersion", Persistence, 2),
    row(EC2, "CreateTrafficMirrorSession", Exfiltration, 3),
    row(EC2, "CreateTrafficMirrorTarget", Exfiltration, 3),
    row(EC2, "DeleteFlowLogs", DefenseEvasion, 4),
    row(EC2, "DeleteSnapshot", Impact, 2),
    row(EC2, "DisableEbsEncryptionByDefault", DefenseEvasion, 4),
    row(EC2, "DisableSerialConsoleAccess", DefenseEvasion, 2),
    row(EC2, "EnableSerialConsoleAccess", LateralMovement, 4),
    row(EC2, "GetPasswordData", CredentialAccess, 4),
    row(EC2, "ImportKeyPair", Persistence, 3),
    row(EC2, "ModifyImageAttribute", Exfiltration, 4),
    row(EC2, "ModifyInstanceAttribute", Persistence, 2),
    row(EC2, "ModifyLaunchTemplate", Persistence, 2),
    row(EC2, "ModifySnapshotAttribute", Exfiltration, 4),
    row(EC2, "RequestSpotFleet", Impact, 2),
    row(EC2, "SharedSnapshotCopyInitiated", Exfiltration, 4),
    row(EC2, "TerminateInstances", Impact, 2),
    row("ecs.amazonaws.com", "ExecuteCommand", LateralMovement, 3),
    row(
        "eks.amazonaws.com",
        "AssociateAccessPolicy",
        PrivilegeEscalation,
        2,
    ),
    row("eks.amazonaws.com", "CreateAccessEntry", Persistence, 2),
    row("eks.amazonaws.com", "UpdateClusterConfig", Persistence, 2),
    row(
        "elasticfilesystem.amazonaws.com",
        "DeleteFileSystem",
        Impact,
        3,
    ),
    row("events.amazonaws.com", "DeleteRule", DefenseEvasion, 2),
    row("events.amazonaws.com", "DisableRule", DefenseEvasion, 3),
    row(
        "glue.amazonaws.com",
        "CreateDevEndpoint",
        PrivilegeEscalation,
        3,
    ),
    row(
        "glue.amazonaws.com",
        "UpdateDevEndpoint",
        PrivilegeEscalation,
        4,
    ),
    row("guardduty.amazonaws.com", "CreateFilter", DefenseEvasion, 3),
    row("guardduty.amazonaws.com", "CreateIPSet", DefenseEvasion, 4),
    row(
        "guardduty.amazonaws.com",
        "DeleteDetector",
        DefenseEvasion,
        5,
    ),
    row(
        "guardduty.amazonaws.com",
        "DisassociateFromAdministratorAccount",
        DefenseEvasion,
        5,
    ),
    row(
        "guardduty.amazonaws.com",
        "DisassociateFromMasterAccount",
        DefenseEvasion,
        5,
    ),
    row(
        "guardduty.amazonaws.com",
        "UpdateDetector",
        DefenseEvasion,
        3,
    ),
    row("guardduty.amazonaws.com", "UpdateFilter", DefenseEvasion, 3),
    row(
        "guardduty.amazonaws.com",
        "UpdateMalwareScanSettings",
        DefenseEvasion,
        3,
    ),
    row(IAM, "AddUserToGroup", PrivilegeEscalation, 3),
    row(IAM, "AttachGroupPolicy", PrivilegeEscalation, 3),
    row(IAM, "AttachRolePolicy", PrivilegeEscalation, 3),
    row(IAM, "AttachUserPolicy", PrivilegeEscalation, 3),
    row(IAM, "CreateAccessKey", Persistence, 3),
    row(IAM, "CreateLoginProfile", Persistence, 4),
    row(IAM, "CreateOpenIDConnectProvider", Persistence, 4),
    row(IAM, "CreatePolicyVersion", PrivilegeEscalation, 3),
    row(IAM, "CreateRole", Persistence, 2),
    row(IAM, "CreateSAMLProvider", Persistence, 4),
    row(IAM, "CreateUser", Persistence, 3),
    row(IAM, "CreateVirtualMFADevice", Persistence, 2),
    row(IAM, "DeactivateMFADevice", DefenseEvasion, 4),
    row(IAM, "DeleteRolePermissionsBoundary", PrivilegeEscalation, 4),
    row(IAM, "DeleteUserPermissionsBoundary", PrivilegeEscalation, 4),
    row(IAM, "GetAccountAuthorizationDetails", Discovery, 3),
    row(IAM, "GetCredentialReport", Discovery, 3),
    row(IAM, "PutGroupPolicy", PrivilegeEscalation, 3),
    row(IAM, "PutRolePolicy", PrivilegeEscalation, 3),
    row(IAM, "PutUserPolicy", PrivilegeEscalation, 3),
    row(IAM, "SetDefaultPolicyVersion", PrivilegeEscalation, 3),
    row(IAM, "UpdateAccessKey", Persistence, 2),
    row(IAM, "UpdateAssumeRolePolicy", Persistence, 4),
    row(IAM, "UpdateLoginProfile", Persistence, 4),
    row(IAM, "UpdateSAMLProvider", Persistence, 4),
    row(IAM, "UploadSSHPublicKey", Persistence, 3),
    row(
        "identitystore.amazonaws.com",
        "CreateGroupMembership",
        PrivilegeEscalation,
        2,
    ),
    row("identitystore.amazonaws.com", "CreateUser", Persistence, 2),
    row("inspector2.amazonaws.com", "Disable", DefenseEvasion, 4),
    row(KMS, "CreateGrant", Persistence, 2),
    row(KMS, "DisableKey", Impact, 3),
    row(KMS, "PutKeyPolicy", Persistence, 3),
    row(KMS, "ScheduleKeyDeletion", Impact, 4),
    row(LAMBDA, "AddLayerVersionPermission", Persistence, 3),
    row(LAMBDA, "AddPermission", Persistence, 3),
    row(LAMBDA, "CreateEventSourceMapping", Persistence, 2),
    row(LAMBDA, "CreateFunction", Persistence, 2),
    row(LAMBDA, "CreateFunctionUrlConfig", Persistence, 3),
    row(LAMBDA, "PublishLayerVersion", Persistence, 3),
    row(LAMBDA, "UpdateFunctionCode", Persistence, 3),
    row(LAMBDA, "UpdateFunctionConfiguration", Persistence, 2),
    row("logs.amazonaws.com", "DeleteLogGroup", DefenseEvasion, 3),
    row("logs.amazonaws.com", "DeleteLogStream", DefenseEvasion, 2),
    row(
        "logs.amazonaws.com",
        "DeleteMetricFilter",
        DefenseEvasion,
        3,
    ),
    row(
        "logs.amazonaws.com",
        "DeleteSubscriptionFilter",
        DefenseEvasion,
        3,
    ),
    row("macie2.amazonaws.com", "DisableMacie", DefenseEvasion, 4),
    row(
        "monitoring.amazonaws.com",
        "DeleteAlarms",
        DefenseEvasion,
        3,
    ),
    row(
        "monitoring.amazonaws.com",
        "DisableAlarmActions",
        DefenseEvasion,
        3,
    ),
    row(
        "organizations.amazonaws.com",
        "AcceptHandshake",
        DefenseEvasion,
        3,
    ),
    row(
        "organizations.amazonaws.com",
        "DeletePolicy",
        DefenseEvasion,
        2,
    ),
    row(
        "organizations.amazonaws.com",
        "DetachPolicy",
        DefenseEvasion,
        3,
    ),
    row(
        "organizations.amazonaws.com",
        "DisablePolicyType",
        DefenseEvasion,
        4,
    ),
    row(
        "organizations.amazonaws.com",
        "InviteAccountToOrganization",
        Persistence,
        3,
    ),
    row(
        "organizations.amazonaws.com",
        "LeaveOrganization",
        DefenseEvasion,
        5,
    ),
    row(
        "organizations.amazonaws.com",
        "RegisterDelegatedAdministrator",
        Persistence,
        3,
    ),
    row(
        "organizations.amazonaws.com",
        "UpdatePolicy",
        DefenseEvasion,
        2,
    ),
    row(RDS, "DeleteDBCluster", Impact, 2),
    row(RDS, "DeleteDBClusterSnapshot", Impact, 2),
    row(RDS, "DeleteDBInstance", Impact, 2),
    row(RDS, "DeleteDBInstanceAutomatedBackup", Impact, 3),
    row(RDS, "DeleteDBSnapshot", Impact, 2),
    row(RDS, "ModifyDBCluster", Persistence, 2),
    row(RDS, "ModifyDBClusterSnapshotAttribute", Exfiltration, 4),
    row(RDS, "ModifyDBInstance", Persistence, 2),
    row(RDS, "ModifyDBSnapshotAttribute", Exfiltration, 4),
    row(RDS, "StartExportTask", Exfiltration, 3),
    row(
        "redshift.amazonaws.com",
        "AuthorizeDataShare",
        Exfiltration,
        3,
    ),
    row(
        "redshift.amazonaws.com",
        "AuthorizeSnapshotAccess",
        Exfiltration,
        4,
    ),
    row(
        "rolesanywhere.amazonaws.com",
        "CreateProfile",
        Persistence,
        3,
    ),
    row(
        "rolesanywhere.amazonaws.com",
        "CreateTrustAnchor",
        Persistence,
        4,
    ),
    row(
        "route53domains.amazonaws.com",
        "DisableDomainTransferLock",
        Impact,
        4,
    ),
    row(
        "route53domains.amazonaws.com",
        "RetrieveDomainAuthCode",
        Impact,
        4,
    ),
    row(
        "route53domains.amazonaws.com",
        "TransferDomainToAnotherAwsAccount",
        Impact,
        5,
    ),
    row(
        "route53domains.amazonaws.com",
        "UpdateDomainContact",
        Impact,
        2,
    ),
    row(
        "route53domains.amazonaws.com",
        "UpdateDomainNameservers",
        Impact,
        3,
    ),
    row(
        "route53resolver.amazonaws.com",
        "DeleteResolverQueryLogConfig",
        DefenseEvasion,
        5,
    ),
    row(
        "route53resolver.amazonaws.com",
        "DisassociateResolverQueryLogConfig",
        DefenseEvasion,
        5,
    ),
    row(S3, "DeleteBucket", Impact, 2),
    row(S3, "DeleteBucketPolicy", DefenseEvasion, 2),
    row(S3, "PutBucketAcl", Exfiltration, 2),
    row(S3, "PutBucketLifecycle", DefenseEvasion, 2),
    row(S3, "PutBucketLogging", DefenseEvasion, 2),
    row(S3, "PutBucketPolicy", Exfiltration, 2),
    row(S3, "PutBucketReplication", Exfiltration, 3),
    row(S3, "PutBucketVersioning", Impact, 2),
    row(SAGEMAKER, "CreateNotebookInstance", PrivilegeEscalation, 2),
    row(
        SAGEMAKER,
        "CreateNotebookInstanceLifecycleConfig",
        Persistence,
        3,
    ),
    row(
        SAGEMAKER,
        "CreatePresignedNotebookInstanceUrl",
        LateralMovement,
        3,
    ),
    row(
        SAGEMAKER,
        "UpdateNotebookInstanceLifecycleConfig",
        Persistence,
        4,
    ),
    row("scheduler.amazonaws.com", "CreateSchedule", Persistence, 2),
    row(
        "secretsmanager.amazonaws.com",
        "BatchGetSecretValue",
        CredentialAccess,
        4,
    ),
    row("secretsmanager.amazonaws.com", "DeleteSecret", Impact, 2),
    row(
        "secretsmanager.amazonaws.com",
        "GetSecretValue",
        CredentialAccess,
        3,
    ),
    row("secretsmanager.amazonaws.com", "ListSecrets", Discovery, 2),
    row(
        "securityhub.amazonaws.com",
        "BatchDisableStandards",
        DefenseEvasion,
        4,
    ),
    row(
        "securityhub.amazonaws.com",
        "DisableSecurityHub",
        DefenseEvasion,
        5,
    ),
    row(
        "servicequotas.amazonaws.com",
        "RequestServiceQuotaIncrease",
        Impact,
        2,
    ),
    row("ses.amazonaws.com", "CreateEmailIdentity", Impact, 2),
    row("ses.amazonaws.com", "GetSendQuota", Discovery, 2),
    row("ses.amazonaws.com", "PutAccountDetails", Impact, 3),
    row(
        "ses.amazonaws.com",
        "UpdateAccountSendingEnabled",
        Impact,
        3,
    ),
    row("ses.amazonaws.com", "VerifyEmailIdentity", Impact, 2),
    row("sns.amazonaws.com", "DeleteTopic", DefenseEvasion, 2),
    row("sns.amazonaws.com", "SetSMSAttributes", Impact, 3),
    row("sns.amazonaws.com", "Unsubscribe", DefenseEvasion, 2),
    row(SSM, "CreateAssociation", LateralMovement, 3),
    row(SSM, "DescribeParameters", Discovery, 2),
    row(SSM, "GetParameter", CredentialAccess, 2),
    row(SSM, "GetParameters", CredentialAccess, 2),
    row(SSM, "GetParametersByPath", CredentialAccess, 3),
    row(SSM, "ResumeSession", LateralMovement, 3),
    row(SSM, "SendCommand", LateralMovement, 3),
    row(SSM, "StartSession", LateralMovement, 3),
    row(
        "sso.amazonaws.com",
        "CreateAccountAssignment",
        Persistence,
        3,
    ),
    row("sso.amazonaws.com", "CreatePermissionSet", Persistence, 2),
    row(
        "sso.amazonaws.com",
        "PutInlinePolicyToPermissionSet",
        PrivilegeEscalation,
        3,
    ),
    row(STS, "GetFederationToken", Persistence, 3),
    row(STS, "GetSessionToken", Persistence, 2),
];

/// Lambda records its API version in event names (`UpdateFunctionCode20150331v2`,
/// `AddPermission20150331`): the name without it.
pub fn base_name<'a>(source: &str, name: &'a str) -> &'a str {
    if source != LAMBDA {
        return name;
    }
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let trimmed = trimmed.strip_suffix('v').unwrap_or(trimmed);
    let without = trimmed.trim_end_matches(|c: char| c.is_ascii_digit());
    // Only a date-like suffix (eight digits) is a version.
    if name.len() - without.len() >= 8 {
        without
    } else {
        name
    }
}

/// FNV-1a over `bytes`: small and stable across builds and versions (baselines keep it).
pub fn fnv1a(bytes: impl Iterator<Item = u8>) -> u32 {
    bytes.fold(0x811c_9dc5, |h: u32, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A stable key for a call (kept in baselines: a row added to the table moves no other).
pub fn call_key(source: &str, name: &str) -> u32 {
    fnv1a(source.bytes().chain(std::iter::once(0)).chain(name.bytes()))
}

/// What `a`'s call means: its row's stable key ([`call_key`]), tactic and weight, or for an
/// enumerating read, discovery of weight 1 (key `None`). A call that asks for accelerated
/// compute is [`ACCELERATED`]'s, whatever its own row; point-in-time recovery turned off is
/// [`RECOVERY_OFF`]'s.
pub fn classify(a: &Activity) -> Option<(Option<u32>, Tactic, u8)> {
    let name = base_name(&a.event_source, &a.event_name);
    // Shortened to the lookup's lifetime (a map is covariant in its keys).
    let index: &Index<'_> = &INDEX;
    if let Some(entry) = index.get(&(a.event_source.as_str(), name)) {
        if let Some(r) = entry.derive.and_then(|derive| derive(a)) {
            return Some((Some(call_key(r.source, r.name)), r.tactic, r.weight));
        }
        if let Some((key, r)) = entry.row {
            return Some((Some(key), r.tactic, weighed(r, a)));
        }
    }
    is_enumeration(a).then_some((None, Discovery, 1))
}

/// Accelerated compute — GPU, Trainium, Inferentia, FPGA or video-transcoding instances —
/// asked for by any call that names instance types: what cryptocurrency mining and stolen
/// model hosting run on, at tens of dollars an hour each. One row whatever the call (an
/// actor that runs GPU instances is known to, whether it asks for them by `RunInstances`, a
/// fleet, a Batch environment or SageMaker), never in [`TABLE`]: no event has its name.
pub const ACCELERATED: Row = row("trailguard", "accelerated compute", Impact, 4);

/// DynamoDB's point-in-time recovery turned off (`UpdateContinuousBackups`): the table's
/// history gone, the step before destroying or ransoming it. A row of its own, apart from the
/// call (turning recovery on, which infrastructure code does, would otherwise teach it).
pub const RECOVERY_OFF: Row = row(
    "dynamodb.amazonaws.com",
    "UpdateContinuousBackups (recovery off)",
    Impact,
    3,
);

/// What a call's parameters make it, each a row of its own apart from the call's (or
/// instead of it): an actor that makes the call the ordinary way is not thereby known to make
/// it this way, and a harmless form (tags made immutable, recovery turned on) teaches nothing.
pub const DERIVED: &[Row] = &[
    ACCELERATED,
    RECOVERY_OFF,
    EVERY_INSTANCE,
    NO_FINAL_SNAPSHOT,
    NO_RECOVERY_WINDOW,
    MASTER_PASSWORD_RESET,
    POOL_OPEN_TO_GUESTS,
    TAGS_MUTABLE,
    RULE_DISABLED,
    ALARM_ACTIONS_OFF,
    BUILD_OVERRIDDEN,
    FOREIGN_LAYER,
    ENDPOINT_TO_INTERNET,
];

/// An SSM command or association for every managed instance at once (`InstanceIds` `*`).
pub const EVERY_INSTANCE: Row = row(SSM, "command for every instance", LateralMovement, 4);
/// An RDS instance or cluster deleted without a final snapshot: gone for good.
pub const NO_FINAL_SNAPSHOT: Row = row(RDS, "deleted without a final snapshot", Impact, 3);
/// A secret deleted at once (`forceDeleteWithoutRecovery`): no recovery window.
pub const NO_RECOVERY_WINDOW: Row = row(
    "secretsmanager.amazonaws.com",
    "DeleteSecret (no recovery window)",
    Impact,
    4,
);
/// An RDS master password reset (`masterUserPassword`): whoever set it owns the database.
pub const MASTER_PASSWORD_RESET: Row = row(RDS, "master password reset", Persistence, 3);
/// A Cognito identity pool created or updated open to unauthenticated users: its guest role
/// is anyone's.
pub const POOL_OPEN_TO_GUESTS: Row = row(
    "cognito-identity.amazonaws.com",
    "identity pool open to guests",
    Persistence,
    4,
);
/// ECR tags made mutable: a released tag can then be overwritten (immutable is hardening,
/// not classified).
pub const TAGS_MUTABLE: Row = row("ecr.amazonaws.com", "tags made mutable", Persistence, 2);
/// An EventBridge rule put disabled (`PutRule` with `State` `DISABLED`): as `DisableRule`.
pub const RULE_DISABLED: Row = row(
    "events.amazonaws.com",
    "rule put disabled",
    DefenseEvasion,
    3,
);
/// A CloudWatch alarm put with its actions off (`PutMetricAlarm` `actionsEnabled` false): as
/// `DisableAlarmActions`.
pub const ALARM_ACTIONS_OFF: Row = row(
    "monitoring.amazonaws.com",
    "alarm put with actions off",
    DefenseEvasion,
    3,
);

/// A CodeBuild build told to run another buildspec, other code or another image than its
/// project's, or opened to an interactive session (`buildspecOverride`,
/// `sourceLocationOverride`, `secondarySourcesOverride`, `imageOverride`,
/// `debugSessionEnabled`): the project's role runs whatever the caller wrote — a pipeline
/// poisoned without changing the pipeline. (A branch carrying its own buildspec, named by
/// `sourceVersion`, is not told apart from an ordinary build.)
pub const BUILD_OVERRIDDEN: Row = row(
    "codebuild.amazonaws.com",
    "build with its buildspec or source overridden",
    PrivilegeEscalation,
    3,
);
/// A Lambda function given a layer of another account (`CreateFunction`,
/// `UpdateFunctionConfiguration`): that account's code runs in the function, with its role.
pub const FOREIGN_LAYER: Row = row(LAMBDA, "layer of another account", Persistence, 3);
/// An EKS cluster's API endpoint opened to every address (`UpdateClusterConfig` with
/// `publicAccessCidrs` naming `0.0.0.0/0`, `::/0` or another block as wide: [`wide_range`];
/// the endpoint not made private): whoever holds a
/// credential the cluster accepts reaches it from anywhere. (A cluster created public, as
/// EKS's default is, is the creation's row: most are.)
pub const ENDPOINT_TO_INTERNET: Row = row(
    "eks.amazonaws.com",
    "API endpoint opened to every address",
    Persistence,
    3,
);

fn accelerated(a: &Activity) -> Option<&'static Row> {
    // Capacity blocks are for accelerated instances only.
    if a.event_name == "PurchaseCapacityBlock" || !accelerated_types(a).is_empty() {
        Some(&ACCELERATED)
    } else {
        None
    }
}

/// `a`'s request parameter `name` (in any ASCII case).
fn param<'a>(a: &'a Activity, name: &str) -> Option<&'a serde_json::Value> {
    crate::policy::field_ci(a.request_parameters.as_deref()?, name)
}

/// A flag's value, written as a boolean or as its word (in any ASCII case).
fn flag(value: Option<&serde_json::Value>) -> Option<bool> {
    let v = value?;
    v.as_bool().or_else(|| match v.as_str()? {
        s if s.eq_ignore_ascii_case("true") => Some(true),
        s if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    })
}

fn is_true(value: Option<&serde_json::Value>) -> bool {
    flag(value) == Some(true)
}

fn is_false(value: Option<&serde_json::Value>) -> bool {
    flag(value) == Some(false)
}

fn every_instance(a: &Activity) -> Option<&'static Row> {
    targets_every_instance(a).then_some(&EVERY_INSTANCE)
}

fn no_final_snapshot(a: &Activity) -> Option<&'static Row> {
    is_true(param(a, "skipFinalSnapshot")).then_some(&NO_FINAL_SNAPSHOT)
}

fn no_recovery_window(a: &Activity) -> Option<&'static Row> {
    is_true(param(a, "forceDeleteWithoutRecovery")).then_some(&NO_RECOVERY_WINDOW)
}

fn master_password_reset(a: &Activity) -> Option<&'static Row> {
    param(a, "masterUserPassword")
        .is_some()
        .then_some(&MASTER_PASSWORD_RESET)
}

fn pool_open_to_guests(a: &Activity) -> Option<&'static Row> {
    is_true(param(a, "allowUnauthenticatedIdentities")).then_some(&POOL_OPEN_TO_GUESTS)
}

fn tags_mutable(a: &Activity) -> Option<&'static Row> {
    param(a, "imageTagMutability")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("MUTABLE"))
        .then_some(&TAGS_MUTABLE)
}

fn rule_disabled(a: &Activity) -> Option<&'static Row> {
    param(a, "state")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("DISABLED"))
        .then_some(&RULE_DISABLED)
}

fn alarm_actions_off(a: &Activity) -> Option<&'static Row> {
    is_false(param(a, "actionsEnabled")).then_some(&ALARM_ACTIONS_OFF)
}

fn build_overridden(a: &Activity) -> Option<&'static Row> {
    use serde_json::Value;
    let given = |k: &str| match param(a, k) {
        Some(Value::String(v)) => !v.trim().is_empty(),
        Some(Value::Array(v)) => !v.is_empty(),
        Some(Value::Object(v)) => !v.is_empty(),
        _ => false,
    };
    let overridden = [
        "buildspecOverride",
        "sourceLocationOverride",
        "secondarySourcesOverride",
        "imageOverride",
    ]
    .iter()
    .any(|k| given(k))
        || is_true(param(a, "debugSessionEnabled"));
    overridden.then_some(&BUILD_OVERRIDDEN)
}

/// Accounts AWS publishes its own Lambda layers from: Lambda Insights (most regions), the
/// Parameters and Secrets extension and the AppConfig extension (in `us-east-1`; other
/// regions have their own accounts), the AWS Distro for OpenTelemetry and Powertools for AWS
/// Lambda. A layer of one of them is AWS's code, not another account's. Layers AWS publishes
/// from other accounts count as foreign: once per actor, as any first use.
const AWS_LAYER_ACCOUNTS: &[&str] = &[
    "580247275435",
    "177933569100",
    "901920570463",
    "017000801446",
    "027255383542",
];

fn foreign_layer(a: &Activity) -> Option<&'static Row> {
    let own = a.account_id.as_deref()?;
    // `arn:PARTITION:lambda:REGION:ACCOUNT:layer:NAME:VERSION`, as a list of strings (or of
    // objects naming it, as a response writes them).
    strings(param(a, "layers")?)
        .into_iter()
        .take(16)
        .filter_map(|arn| arn.split(':').nth(4))
        .any(|account| {
            account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && account != own
                && !AWS_LAYER_ACCOUNTS.contains(&account)
        })
        .then_some(&FOREIGN_LAYER)
}

fn endpoint_to_internet(a: &Activity) -> Option<&'static Row> {
    let vpc = param(a, "resourcesVpcConfig")?;
    let field = |k: &str| crate::policy::field_ci(vpc, k);
    let everyone = field("publicAccessCidrs")?
        .as_array()?
        .iter()
        .take(64)
        .filter_map(serde_json::Value::as_str)
        .any(wide_range);
    (everyone && !is_false(field("endpointPublicAccess"))).then_some(&ENDPOINT_TO_INTERNET)
}

/// A CIDR block of a large part of the internet: IPv4 `/8` or wider, IPv6 `/16` or wider
/// (`0.0.0.0/0` written as halves or quarters is as open).
fn wide_range(cidr: &str) -> bool {
    let Some((address, bits)) = cidr.trim().split_once('/') else {
        return false;
    };
    // Private and unique-local blocks are no part of the internet.
    match (address.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(v4)), Ok(bits)) => bits <= 8 && !v4.is_private(),
        (Ok(std::net::IpAddr::V6(v6)), Ok(bits)) => {
            bits <= 16 && (v6.segments()[0] & 0xfe00) != 0xfc00
        }
        _ => false,
    }
}

fn recovery_off(a: &Activity) -> Option<&'static Row> {
    let spec = param(a, "pointInTimeRecoverySpecification");
    is_false(spec.and_then(|s| crate::policy::field_ci(s, "pointInTimeRecoveryEnabled")))
        .then_some(&RECOVERY_OFF)
}

/// The calls that name instance types to run (source, name): [`ACCELERATED`] when one of
/// them is accelerated. Launches by AWS services (Auto Scaling, Batch, EKS) are the
/// services' own calls; these are the requests that set them going.
const COMPUTE: &[(&str, &str)] = &[
    ("autoscaling.amazonaws.com", "CreateAutoScalingGroup"),
    ("autoscaling.amazonaws.com", "CreateLaunchConfiguration"),
    ("autoscaling.amazonaws.com", "UpdateAutoScalingGroup"),
    ("batch.amazonaws.com", "CreateComputeEnvironment"),
    ("batch.amazonaws.com", "UpdateComputeEnvironment"),
    (EC2, "CreateCapacityReservation"),
    (EC2, "CreateFleet"),
    (EC2, "CreateLaunchTemplate"),
    (EC2, "CreateLaunchTemplateVersion"),
    (EC2, "ModifyInstanceAttribute"),
    (EC2, "PurchaseCapacityBlock"),
    (EC2, "RequestSpotFleet"),
    (EC2, "RequestSpotInstances"),
    (EC2, "RunInstances"),
    ("eks.amazonaws.com", "CreateNodegroup"),
    ("elasticmapreduce.amazonaws.com", "AddInstanceFleet"),
    ("elasticmapreduce.amazonaws.com", "AddInstanceGroups"),
    ("elasticmapreduce.amazonaws.com", "RunJobFlow"),
    ("gamelift.amazonaws.com", "CreateFleet"),
    (SAGEMAKER, "CreateApp"),
    (SAGEMAKER, "CreateCluster"),
    (SAGEMAKER, "CreateEndpointConfig"),
    (SAGEMAKER, "CreateHyperParameterTuningJob"),
    (SAGEMAKER, "CreateNotebookInstance"),
    (SAGEMAKER, "CreateProcessingJob"),
    (SAGEMAKER, "CreateTrainingJob"),
    (SAGEMAKER, "CreateTransformJob"),
    (SAGEMAKER, "UpdateCluster"),
    (SAGEMAKER, "UpdateNotebookInstance"),
];

/// The accelerated instance types `a` asks for (its request, and for a launch its response:
/// a launch template's type shows only there), at most eight, each once; or how it asks for
/// accelerators by attribute (`acceleratorTypes`, `acceleratorCount`) instead of by type.
pub fn accelerated_types(a: &Activity) -> Vec<String> {
    let mut out = Vec::new();
    // A bound on what one record can make this walk: generous for the largest fleets.
    let mut budget = 20_000u32;
    for part in [&a.request_parameters, &a.response_elements]
        .into_iter()
        .flatten()
    {
        collect_accelerated(part, false, &mut budget, &mut out);
    }
    out
}

/// Most accelerated types named in one alert.
const MOST_TYPES: usize = 8;

fn collect_accelerated(
    value: &serde_json::Value,
    under_type: bool,
    budget: &mut u32,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if *budget == 0 || out.len() >= MOST_TYPES {
        return;
    }
    *budget -= 1;
    let add = |out: &mut Vec<String>, what: String| {
        if !out.contains(&what) && out.len() < MOST_TYPES {
            out.push(what);
        }
    };
    match value {
        // Named in the summary: a type is a few characters, a forged one need not be.
        Value::String(s) if under_type && is_accelerated(s) => {
            add(out, s.chars().take(32).collect())
        }
        Value::Array(items) => {
            for item in items {
                collect_accelerated(item, under_type, budget, out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                // What is excluded (`ExcludedInstanceTypes`) is not asked for.
                if key.to_ascii_lowercase().contains("exclude") {
                    continue;
                }
                if ends_with_ignoring_case(key, "acceleratornames")
                    || ends_with_ignoring_case(key, "acceleratormanufacturers")
                {
                    if let Some(first) = strings(item).into_iter().find(|s| !s.is_empty()) {
                        let first: String = first.chars().take(32).collect();
                        add(out, format!("accelerator {}", first.to_ascii_lowercase()));
                    }
                } else if ends_with_ignoring_case(key, "acceleratortypes") {
                    for kind in strings(item) {
                        if ["gpu", "fpga", "inference"]
                            .iter()
                            .any(|k| kind.eq_ignore_ascii_case(k))
                        {
                            add(
                                out,
                                format!("accelerator type {}", kind.to_ascii_lowercase()),
                            );
                        }
                    }
                } else if ends_with_ignoring_case(key, "acceleratorcount")
                    || ends_with_ignoring_case(key, "acceleratortotalmemorymib")
                {
                    let least = item
                        .as_object()
                        .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("min")))
                        .and_then(|(_, v)| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                    if let Some(n @ 1..) = least {
                        let what = if ends_with_ignoring_case(key, "count") {
                            "accelerators"
                        } else {
                            "MiB of accelerator memory"
                        };
                        add(out, format!("at least {n} {what}"));
                    }
                } else {
                    let under = under_type
                        || ends_with_ignoring_case(key, "instancetype")
                        || ends_with_ignoring_case(key, "instancetypes");
                    collect_accelerated(item, under, budget, out);
                }
            }
        }
        _ => {}
    }
}

/// `value`'s strings: itself, or an array's (as `acceleratorTypes` is written: a list, or
/// EC2's `{"item": [...]}`).
fn strings(value: &serde_json::Value) -> Vec<&str> {
    match value {
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(map) => map.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

fn ends_with_ignoring_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len()
        && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// An accelerated instance type or family: `p4d.24xlarge`, `g5`, `ml.trn1.32xlarge`. The
/// family's letters say what it carries — `p`, `g`, `gr` (NVIDIA GPUs), `trn` (Trainium), `inf`
/// (Inferentia), `dl` (Gaudi), `f` (FPGA), `vt` (video transcoding) — followed by its
/// generation's digit; no other family starts so.
pub fn is_accelerated(instance_type: &str) -> bool {
    let text = instance_type.trim();
    let text = match text.get(..3) {
        Some(prefix) if prefix.eq_ignore_ascii_case("ml.") => &text[3..],
        _ => text,
    };
    let family = text.split('.').next().unwrap_or_default();
    let letters = family.bytes().take_while(u8::is_ascii_alphabetic).count();
    // The generation's digit, or a wildcard for every generation (`p*` in
    // `AllowedInstanceTypes`).
    let starts_generation = family
        .as_bytes()
        .get(letters)
        .is_some_and(|b| b.is_ascii_digit() || *b == b'*');
    starts_generation
        && ["p", "g", "gr", "trn", "inf", "dl", "f", "vt"]
            .iter()
            .any(|f| family[..letters].eq_ignore_ascii_case(f))
}

/// A call looked up: its row, and what it may be instead, read from its parameters
/// ([`ACCELERATED`] for the calls of [`COMPUTE`], [`RECOVERY_OFF`]).
#[derive(Clone, Copy)]
struct Entry {
    row: Option<(u32, &'static Row)>,
    derive: Option<fn(&Activity) -> Option<&'static Row>>,
}

/// Calls by (source, name): [`TABLE`]'s rows, each with its [`call_key`], and the calls of
/// [`COMPUTE`] and the other calls read for what they are.
type Index<'a> = HashMap<(&'a str, &'a str), Entry, foldhash::fast::FixedState>;

/// The table by (source, name), each row with its [`call_key`]: every activity is looked up
/// (twice: its actor's baseline and the organization's rarity), and a binary search over the
/// table's strings and the key's hash were ≈ 8 % of detect's instructions. Static keys: an
/// activity's name is looked up, never inserted, so a fixed seed is safe.
static INDEX: LazyLock<Index<'static>> = LazyLock::new(|| {
    let mut index: Index<'static> = TABLE
        .iter()
        .map(|r| {
            let entry = Entry {
                row: Some((call_key(r.source, r.name), r)),
                derive: None,
            };
            ((r.source, r.name), entry)
        })
        .collect();
    type Derive = fn(&Activity) -> Option<&'static Row>;
    let derived = COMPUTE
        .iter()
        .map(|&call| (call, accelerated as Derive))
        .chain([
            (
                ("dynamodb.amazonaws.com", "UpdateContinuousBackups"),
                recovery_off as Derive,
            ),
            ((SSM, "SendCommand"), every_instance),
            ((SSM, "CreateAssociation"), every_instance),
            ((RDS, "DeleteDBInstance"), no_final_snapshot),
            ((RDS, "DeleteDBCluster"), no_final_snapshot),
            (
                ("secretsmanager.amazonaws.com", "DeleteSecret"),
                no_recovery_window,
            ),
            ((RDS, "ModifyDBInstance"), master_password_reset),
            ((RDS, "ModifyDBCluster"), master_password_reset),
            (
                ("cognito-identity.amazonaws.com", "CreateIdentityPool"),
                pool_open_to_guests,
            ),
            (
                ("cognito-identity.amazonaws.com", "UpdateIdentityPool"),
                pool_open_to_guests,
            ),
            (("ecr.amazonaws.com", "PutImageTagMutability"), tags_mutable),
            (("events.amazonaws.com", "PutRule"), rule_disabled),
            (
                ("monitoring.amazonaws.com", "PutMetricAlarm"),
                alarm_actions_off,
            ),
            (("codebuild.amazonaws.com", "StartBuild"), build_overridden),
            (
                ("codebuild.amazonaws.com", "StartBuildBatch"),
                build_overridden,
            ),
            ((LAMBDA, "CreateFunction"), foreign_layer),
            ((LAMBDA, "UpdateFunctionConfiguration"), foreign_layer),
            (
                ("eks.amazonaws.com", "UpdateClusterConfig"),
                endpoint_to_internet,
            ),
        ]);
    for (call, derive) in derived {
        index
            .entry(call)
            .or_insert(Entry {
                row: None,
                derive: None,
            })
            .derive = Some(derive);
    }
    index
});

/// `a`'s weight: its row's, but an SSM parameter read without decryption weighs 1.
fn weighed(r: &Row, a: &Activity) -> u8 {
    // Parameters read without decryption are configuration, not secrets.
    if r.source == SSM && r.name.starts_with("GetParameter") && !decrypts(a) {
        1
    } else {
        r.weight
    }
}

/// An SSM command or association targeting every managed instance: the target
/// `InstanceIds` with the value `*`.
fn targets_every_instance(a: &Activity) -> bool {
    let Some(targets) = param(a, "targets").and_then(serde_json::Value::as_array) else {
        return false;
    };
    targets.iter().any(|t| {
        crate::policy::field_ci(t, "key")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|k| k.eq_ignore_ascii_case("InstanceIds"))
            && crate::policy::field_ci(t, "values")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|v| v.iter().any(|v| v.as_str() == Some("*")))
    })
}

/// `withDecryption: true` on an SSM parameter read.
fn decrypts(a: &Activity) -> bool {
    a.request_parameters
        .as_ref()
        .and_then(|p| p.get("withDecryption"))
        .and_then(serde_json::Value::as_bool)
        == Some(true)
}

/// A read that enumerates: `List*`, `Describe*`, `Get*`, `BatchGet*`, `BatchDescribe*`,
/// `Lookup*`, `Search*` (object and data reads aside).
pub fn is_enumeration(a: &Activity) -> bool {
    let name = a.event_name.as_str();
    [
        "List",
        "Describe",
        "Get",
        "BatchGet",
        "BatchDescribe",
        "Lookup",
        "Search",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        && !crate::classify::is_data_event(a)
        && !matches!(name, "GetObject" | "GetCallerIdentity" | "GetSessionToken")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        for pair in TABLE.windows(2) {
            assert!(
                (pair[0].source, pair[0].name) < (pair[1].source, pair[1].name),
                "{} {} before {} {}",
                pair[0].source,
                pair[0].name,
                pair[1].source,
                pair[1].name
            );
        }
        assert!(TABLE.iter().all(|r| (1..=5).contains(&r.weight)));
        let mut keys: Vec<u32> = TABLE.iter().map(|r| call_key(r.source, r.name)).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), TABLE.len(), "stable keys collide");
    }

    fn call(source: &str, name: &str, params: serde_json::Value) -> Activity {
        let record = serde_json::json!({
            "eventTime": "2024-06-02T19:41:40Z", "eventSource": source, "eventName": name,
            "awsRegion": "us-east-1", "recipientAccountId": "111111111111",
            "sourceIPAddress": "198.51.100.7", "requestParameters": params,
            "userIdentity": {"type": "IAMUser", "userName": "bob", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/bob"},
        });
        match trailguard_ingest::normalize::normalize(&record.to_string()) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// Every row is found under its own source and name with its stable key, and only there:
    /// not under another case, another source, or with something added.
    #[test]
    fn every_row_is_found_with_its_key_and_nothing_else_is() {
        for r in TABLE {
            let a = call(r.source, r.name, serde_json::json!({}));
            let (key, tactic, weight) = classify(&a).unwrap_or_else(|| panic!("{}", r.name));
            assert_eq!(key, Some(call_key(r.source, r.name)));
            assert_eq!(tactic, r.tactic);
            // SSM's parameter reads without decryption weigh 1.
            assert!(
                weight == r.weight || (r.source == SSM && weight == 1),
                "{}",
                r.name
            );
            for (source, name) in [
                (r.source, r.name.to_ascii_lowercase()),
                (r.source, format!("{}X", r.name)),
                ("example.amazonaws.com", r.name.to_string()),
            ] {
                let other = call(source, &name, serde_json::json!({}));
                assert!(
                    matches!(classify(&other), None | Some((None, Discovery, 1))),
                    "{source} {name}"
                );
            }
        }
    }

    #[test]
    fn calls_are_classified_by_what_they_do() {
        let secret = call(
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            serde_json::json!({"secretId": "prod/db"}),
        );
        assert!(matches!(
            classify(&secret),
            Some((Some(_), CredentialAccess, 3))
        ));
        let plain = call(
            "ssm.amazonaws.com",
            "GetParameter",
            serde_json::json!({"name": "/app/region"}),
        );
        let decrypted = call(
            "ssm.amazonaws.com",
            "GetParameter",
            serde_json::json!({"name": "/app/db-password", "withDecryption": true}),
        );
        assert_eq!(classify(&plain).map(|c| c.2), Some(1));
        assert_eq!(classify(&decrypted).map(|c| c.2), Some(2));
        let listing = call("ec2.amazonaws.com", "DescribeVpcs", serde_json::json!({}));
        assert_eq!(classify(&listing), Some((None, Discovery, 1)));
        let write = call("ec2.amazonaws.com", "CreateTags", serde_json::json!({}));
        assert_eq!(classify(&write), None);
        // Lambda's versioned names, old and new.
        for name in [
            "UpdateFunctionCode20150331v2",
            "UpdateFunctionCode20150331",
            "UpdateFunctionCode",
        ] {
            let code = call("lambda.amazonaws.com", name, serde_json::json!({}));
            assert_eq!(classify(&code).map(|c| c.1), Some(Persistence), "{name}");
        }
    }

    #[test]
    fn accelerated_families_are_told_by_their_letters() {
        for accelerated in [
            "p2.xlarge",
            "p4d.24xlarge",
            "p5e.48xlarge",
            "g4dn.xlarge",
            "G5.2XLARGE",
            "gr6.4xlarge",
            "trn1n.32xlarge",
            "inf2.xlarge",
            "dl1.24xlarge",
            "f1.2xlarge",
            "vt1.3xlarge",
            "ml.p4d.24xlarge",
            "ml.g5.xlarge",
            "p3",
            " g6 ",
        ] {
            assert!(is_accelerated(accelerated), "{accelerated}");
        }
        for ordinary in [
            "t3.micro",
            "m5.large",
            "c6gn.16xlarge",
            "x2gd.large",
            "i4g.large",
            "hpc7g.16xlarge",
            "mac2.metal",
            "u-6tb1.metal",
            "ml.m5.xlarge",
            "optimal",
            "g",
            "gp3",
            "p",
            "",
            "ml.",
            "é1.large",
        ] {
            assert!(!is_accelerated(ordinary), "{ordinary}");
        }
    }

    #[test]
    fn asking_for_accelerated_compute_is_one_row_whatever_the_call() {
        let accelerated = Some((
            Some(call_key(ACCELERATED.source, ACCELERATED.name)),
            Impact,
            4,
        ));
        let cases = [
            (
                EC2,
                "RunInstances",
                json!({"instanceType": "p4d.24xlarge", "minCount": 1}),
            ),
            (
                EC2,
                "RequestSpotInstances",
                json!({"launchSpecification": {"instanceType": "g5.12xlarge"}}),
            ),
            (
                EC2,
                "RequestSpotFleet",
                json!({"spotFleetRequestConfig": {"launchSpecifications": {"items": [
                    {"instanceType": "c5.large"}, {"instanceType": "p3.16xlarge"}]}}}),
            ),
            (
                EC2,
                "CreateFleet",
                json!({"CreateFleetRequest": {"LaunchTemplateConfigs": {"Overrides": {
                    "InstanceRequirements": {"AcceleratorTypes": {"item": "gpu"}}}}}}),
            ),
            (
                EC2,
                "CreateLaunchTemplate",
                json!({"CreateLaunchTemplateRequest": {"LaunchTemplateData": {
                    "InstanceRequirements": {"AcceleratorCount": {"Min": 1}}}}}),
            ),
            (
                EC2,
                "ModifyInstanceAttribute",
                json!({"instanceId": "i-0abc", "instanceType": {"value": "g4dn.xlarge"}}),
            ),
            (
                "batch.amazonaws.com",
                "CreateComputeEnvironment",
                json!({"computeResources": {"instanceTypes": ["optimal", "p3"]}}),
            ),
            (
                SAGEMAKER,
                "CreateTrainingJob",
                json!({"resourceConfig": {"instanceType": "ml.p4d.24xlarge"}}),
            ),
            (
                "elasticmapreduce.amazonaws.com",
                "RunJobFlow",
                json!({"instances": {"masterInstanceType": "m5.xlarge",
                    "slaveInstanceType": "g4dn.2xlarge"}}),
            ),
            (
                "eks.amazonaws.com",
                "CreateNodegroup",
                json!({"instanceTypes": ["inf2.xlarge"]}),
            ),
        ];
        for (source, name, params) in cases {
            let a = call(source, name, params);
            assert_eq!(classify(&a), accelerated, "{name}");
            assert!(!accelerated_types(&a).is_empty(), "{name}");
        }
        // Asked for by wildcard, by accelerator name or memory; a capacity block is one.
        for (name, params) in [
            (
                "CreateFleet",
                json!({"CreateFleetRequest": {"LaunchTemplateConfigs": {"Overrides": {
                    "InstanceRequirements": {"AllowedInstanceTypes": {"item": ["p*", "g5.*"]}}}}}}),
            ),
            (
                "CreateFleet",
                json!({"CreateFleetRequest": {"LaunchTemplateConfigs": {"Overrides": {
                    "InstanceRequirements": {"AcceleratorNames": {"item": "a100"}}}}}}),
            ),
            (
                "CreateLaunchTemplate",
                json!({"CreateLaunchTemplateRequest": {"LaunchTemplateData": {
                    "InstanceRequirements": {"AcceleratorTotalMemoryMiB": {"Min": 16384}}}}}),
            ),
            (
                "PurchaseCapacityBlock",
                json!({"CapacityBlockOfferingId": "cbr-0abc"}),
            ),
        ] {
            assert_eq!(classify(&call(EC2, name, params)), accelerated, "{name}");
        }
        // A type named at length is named short.
        let long = format!("p4d.{}", "x".repeat(5000));
        let forged = call(EC2, "RunInstances", json!({"instanceType": long}));
        assert_eq!(accelerated_types(&forged)[0].chars().count(), 32);
        // A launch from a template names its type only in the response.
        let mut templated = call(
            EC2,
            "RunInstances",
            json!({"launchTemplate": {"launchTemplateId": "lt-0abc"}}),
        );
        assert_eq!(classify(&templated), None);
        let response = json!({"instancesSet": {"items": [
            {"instanceId": "i-1", "instanceType": "p5.48xlarge"},
            {"instanceId": "i-2", "instanceType": "p5.48xlarge"}]}});
        templated.response_elements =
            trailguard_common::RawJson::from_text(&response.to_string()).ok();
        assert_eq!(classify(&templated), accelerated);
        assert_eq!(accelerated_types(&templated), ["p5.48xlarge"]);
        // Ordinary compute keeps its own row, or none; a type named anywhere else, or by a
        // call that runs nothing, is not asked for.
        let ordinary = [
            (
                EC2,
                "RunInstances",
                json!({"instanceType": "t3.micro"}),
                None,
            ),
            (
                EC2,
                "CreateFleet",
                json!({"CreateFleetRequest": {"LaunchTemplateConfigs": {"Overrides": {
                    "InstanceType": "m5.large",
                    "InstanceRequirements": {"AcceleratorCount": {"Max": 0},
                        "AcceleratorTypes": {"item": "none"}}}}}}),
                Some(Impact),
            ),
            (
                "batch.amazonaws.com",
                "CreateComputeEnvironment",
                json!({"computeResources": {"instanceTypes": ["optimal"]}}),
                Some(Impact),
            ),
            (
                EC2,
                "RunInstances",
                json!({"tagSpecificationSet": {"items": [
                {"tags": [{"key": "Name", "value": "p4d.24xlarge"}]}]}}),
                None,
            ),
            (
                EC2,
                "CreateTags",
                json!({"instanceType": "p4d.24xlarge"}),
                None,
            ),
            // Accelerators excluded are not asked for.
            (
                EC2,
                "CreateFleet",
                json!({"CreateFleetRequest": {"LaunchTemplateConfigs": {"Overrides": {
                    "InstanceRequirements": {"VCpuCount": {"Min": 2},
                        "ExcludedInstanceTypes": {"item": ["g4dn.*", "p3.*"]}}}}}}),
                Some(Impact),
            ),
        ];
        for (source, name, params, tactic) in ordinary {
            let a = call(source, name, params.clone());
            assert_eq!(classify(&a).map(|c| c.1), tactic, "{name} {params}");
            assert_ne!(classify(&a), accelerated, "{name} {params}");
        }
    }

    /// What the parameters say is a row of its own: everything at once, nothing kept, the
    /// database taken, guests let in, the alerting switched off in passing. The ordinary form
    /// keeps the call's row (or none), so it teaches nothing about the other.
    #[test]
    fn parameters_make_a_call_a_row_of_its_own() {
        let classified = |source: &str, name: &str, params: serde_json::Value| {
            classify(&call(source, name, params))
        };
        let derived = |r: &Row| Some((Some(call_key(r.source, r.name)), r.tactic, r.weight));
        let own = |source: &str, name: &str, tactic: Tactic, weight: u8| {
            Some((Some(call_key(source, name)), tactic, weight))
        };
        let everywhere = json!({"targets": [{"key": "InstanceIds", "values": ["*"]}],
            "documentName": "AWS-RunShellScript"});
        let tagged = json!({"Targets": [{"Key": "tag:Role", "Values": ["web"]}]});
        assert_eq!(
            classified(SSM, "SendCommand", everywhere.clone()),
            derived(&EVERY_INSTANCE)
        );
        assert_eq!(
            classified(SSM, "CreateAssociation", everywhere),
            derived(&EVERY_INSTANCE)
        );
        assert_eq!(
            classified(SSM, "SendCommand", tagged),
            own(SSM, "SendCommand", LateralMovement, 3)
        );
        let db = json!({"dBInstanceIdentifier": "orders"});
        let gone = json!({"dBInstanceIdentifier": "orders", "skipFinalSnapshot": true});
        assert_eq!(
            classified(RDS, "DeleteDBInstance", db.clone()),
            own(RDS, "DeleteDBInstance", Impact, 2)
        );
        assert_eq!(
            classified(RDS, "DeleteDBInstance", gone.clone()),
            derived(&NO_FINAL_SNAPSHOT)
        );
        assert_eq!(
            classified(RDS, "DeleteDBCluster", gone),
            derived(&NO_FINAL_SNAPSHOT)
        );
        let reset = json!({"dBInstanceIdentifier": "orders", "masterUserPassword": "****"});
        assert_eq!(
            classified(RDS, "ModifyDBInstance", db),
            own(RDS, "ModifyDBInstance", Persistence, 2)
        );
        assert_eq!(
            classified(RDS, "ModifyDBCluster", reset),
            derived(&MASTER_PASSWORD_RESET)
        );
        let secrets = "secretsmanager.amazonaws.com";
        let window = json!({"secretId": "prod/db", "recoveryWindowInDays": 7});
        let force = json!({"secretId": "prod/db", "forceDeleteWithoutRecovery": true});
        assert_eq!(
            classified(secrets, "DeleteSecret", window),
            own(secrets, "DeleteSecret", Impact, 2)
        );
        assert_eq!(
            classified(secrets, "DeleteSecret", force),
            derived(&NO_RECOVERY_WINDOW)
        );
        let pools = "cognito-identity.amazonaws.com";
        let guests = json!({"identityPoolName": "app", "allowUnauthenticatedIdentities": true});
        let members = json!({"identityPoolName": "app", "allowUnauthenticatedIdentities": false});
        assert_eq!(
            classified(pools, "UpdateIdentityPool", guests),
            derived(&POOL_OPEN_TO_GUESTS)
        );
        assert_eq!(
            classified(pools, "CreateIdentityPool", members),
            own(pools, "CreateIdentityPool", Persistence, 2)
        );
        let ecr = "ecr.amazonaws.com";
        let mutable = json!({"repositoryName": "app", "imageTagMutability": "MUTABLE"});
        let immutable = json!({"repositoryName": "app", "imageTagMutability": "IMMUTABLE"});
        assert_eq!(
            classified(ecr, "PutImageTagMutability", mutable),
            derived(&TAGS_MUTABLE)
        );
        assert_eq!(classified(ecr, "PutImageTagMutability", immutable), None);
        let events = "events.amazonaws.com";
        let off = json!({"name": "security-alerts", "state": "DISABLED"});
        let on = json!({"name": "security-alerts", "state": "ENABLED"});
        assert_eq!(classified(events, "PutRule", off), derived(&RULE_DISABLED));
        assert_eq!(classified(events, "PutRule", on), None);
        let alarms = "monitoring.amazonaws.com";
        let silent = json!({"alarmName": "root-login", "actionsEnabled": false});
        assert_eq!(
            classified(alarms, "PutMetricAlarm", silent),
            derived(&ALARM_ACTIONS_OFF)
        );
        assert_eq!(
            classified(alarms, "PutMetricAlarm", json!({"alarmName": "cpu"})),
            None
        );
        // Recovery turned off is a row of its own; turned on, nothing.
        let dynamodb = "dynamodb.amazonaws.com";
        let recovery = |on: bool| {
            json!({"tableName": "orders",
                "pointInTimeRecoverySpecification": {"pointInTimeRecoveryEnabled": on}})
        };
        assert_eq!(
            classified(dynamodb, "UpdateContinuousBackups", recovery(false)),
            derived(&RECOVERY_OFF)
        );
        assert_eq!(
            classified(dynamodb, "UpdateContinuousBackups", recovery(true)),
            None
        );
        assert_eq!(
            classified(dynamodb, "DeleteTable", json!({"tableName": "orders"})),
            own(dynamodb, "DeleteTable", Impact, 2)
        );
        // A build told to run other commands (or other code) than its project's: the
        // project's role runs whatever the caller wrote.
        let codebuild = "codebuild.amazonaws.com";
        let inline = json!({"projectName": "release",
            "buildspecOverride": "version: 0.2\nphases:\n  build:\n    commands:\n      - curl x|sh"});
        assert_eq!(
            classified(codebuild, "StartBuild", inline),
            derived(&BUILD_OVERRIDDEN)
        );
        let elsewhere = json!({"projectName": "release",
            "sourceLocationOverride": "https://github.com/someone/else"});
        assert_eq!(
            classified(codebuild, "StartBuildBatch", elsewhere),
            derived(&BUILD_OVERRIDDEN)
        );
        let plain = json!({"projectName": "release", "sourceVersion": "main"});
        assert_eq!(classified(codebuild, "StartBuild", plain), None);
        let empty = json!({"projectName": "release", "buildspecOverride": ""});
        assert_eq!(classified(codebuild, "StartBuild", empty), None);
        for other in [
            json!({"projectName": "release", "imageOverride": "attacker/image:latest"}),
            json!({"projectName": "release", "debugSessionEnabled": true}),
            json!({"projectName": "release", "secondarySourcesOverride": [{"type": "S3",
                "location": "bucket/x.zip", "sourceIdentifier": "s2"}]}),
        ] {
            assert_eq!(
                classified(codebuild, "StartBuild", other.clone()),
                derived(&BUILD_OVERRIDDEN),
                "{other}"
            );
        }
        // A Lambda layer of another account put under a function (its code runs in the
        // function, with its role); the account's own layers are the function's.
        let foreign = json!({"functionName": "billing",
            "layers": ["arn:aws:lambda:us-east-1:111111111111:layer:shared:3",
                "arn:aws:lambda:us-east-1:999988887777:layer:helper:1"]});
        assert_eq!(
            classified(
                LAMBDA,
                "UpdateFunctionConfiguration20150331v2",
                foreign.clone()
            ),
            derived(&FOREIGN_LAYER)
        );
        assert_eq!(
            classified(LAMBDA, "CreateFunction20150331", foreign),
            derived(&FOREIGN_LAYER)
        );
        // AWS's own layers (Lambda Insights here) are AWS's code, not another account's.
        let own_layer = json!({"functionName": "billing",
            "layers": ["arn:aws:lambda:us-east-1:111111111111:layer:shared:3",
                "arn:aws:lambda:us-east-1:580247275435:layer:LambdaInsightsExtension:53"]});
        assert_eq!(
            classified(LAMBDA, "UpdateFunctionConfiguration20150331v2", own_layer),
            own(LAMBDA, "UpdateFunctionConfiguration", Persistence, 2)
        );
        // An EKS cluster's API endpoint opened to every address: its own row. Other
        // configuration (logging, narrower ranges, a private endpoint) is the call's.
        let eks = "eks.amazonaws.com";
        let opened = json!({"name": "prod", "resourcesVpcConfig": {"endpointPublicAccess": true,
            "endpointPrivateAccess": true, "publicAccessCidrs": ["10.1.0.0/16", "0.0.0.0/0"]}});
        assert_eq!(
            classified(eks, "UpdateClusterConfig", opened),
            derived(&ENDPOINT_TO_INTERNET)
        );
        for open in [
            json!(["::/0"]),
            json!(["0.0.0.0/1", "128.0.0.0/1"]),
            json!([" 64.0.0.0/2"]),
        ] {
            let wide = json!({"name": "prod", "resourcesVpcConfig": {"publicAccessCidrs": open}});
            assert_eq!(
                classified(eks, "UpdateClusterConfig", wide.clone()),
                derived(&ENDPOINT_TO_INTERNET),
                "{wide}"
            );
        }
        for kept in [
            json!({"name": "prod", "resourcesVpcConfig": {"endpointPublicAccess": true,
                "publicAccessCidrs": ["203.0.113.0/24", "198.51.0.0/16", "0.0.0.0", "x/0",
                    "10.0.0.0/8", "fd00::/8"]}}),
            json!({"name": "prod", "resourcesVpcConfig": {"endpointPublicAccess": false,
                "endpointPrivateAccess": true, "publicAccessCidrs": ["0.0.0.0/0"]}}),
            json!({"name": "prod", "logging": {"clusterLogging": [{"types": ["audit"],
                "enabled": true}]}}),
        ] {
            assert_eq!(
                classified(eks, "UpdateClusterConfig", kept.clone()),
                own(eks, "UpdateClusterConfig", Persistence, 2),
                "{kept}"
            );
        }
        // A file taken out of CloudShell's home directory.
        let shell = "cloudshell.amazonaws.com";
        assert_eq!(
            classified(
                shell,
                "GetFileDownloadUrls",
                json!({"EnvironmentId": "e", "FileDownloadPath": "/home/cloudshell-user/x.tgz"})
            ),
            own(shell, "GetFileDownloadUrls", Exfiltration, 3)
        );
        // Every derived row's key is its own: no row of the table, no other derived row.
        let mut keys: Vec<u32> = TABLE
            .iter()
            .chain(DERIVED)
            .map(|r| call_key(r.source, r.name))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), TABLE.len() + DERIVED.len());
    }
}
