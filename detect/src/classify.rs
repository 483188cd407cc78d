//! What a call is, by its CloudTrail record: a write, a data event, interactive, acting itself
//! (not a service on its behalf), and the units each of the four anomaly rates counts. Used by
//! the anomaly detections and by the organization facts.

use serde_json::Value;
use trailguard_common::Activity;

/// One of the four rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateKind {
    Admin = 0,
    Deletion = 1,
    VmDeletion = 2,
    VmCreation = 3,
}

/// Calls that change something, by their name (CloudTrail's `readOnly` is missing in some
/// exports).
pub(crate) fn is_write(a: &Activity) -> bool {
    if let Some(ro) = a.read_only {
        return !ro;
    }
    const PREFIXES: &[&str] = &[
        "Create",
        "Delete",
        "Put",
        "Update",
        "Attach",
        "Detach",
        "Modify",
        "Authorize",
        "Revoke",
        "Set",
        "Add",
        "Remove",
        "Disable",
        "Enable",
        "Stop",
        "Terminate",
        "Run",
        "Reset",
        "Associate",
        "Disassociate",
        "Replace",
        "Tag",
        "Untag",
        "Deregister",
        "Register",
    ];
    PREFIXES.iter().any(|p| a.event_name.starts_with(p))
}

/// Data-plane calls that are not administration even when they write.
pub(crate) fn is_data_event(a: &Activity) -> bool {
    matches!(
        (a.event_source.as_str(), a.event_name.as_str()),
        (
            "s3.amazonaws.com",
            "PutObject"
                | "DeleteObject"
                | "DeleteObjects"
                | "CopyObject"
                | "CreateMultipartUpload"
                | "UploadPart"
                | "CompleteMultipartUpload"
                | "AbortMultipartUpload"
                | "PutObjectAcl"
                | "PutObjectTagging"
                | "RestoreObject"
        ) | ("lambda.amazonaws.com", "Invoke")
            | ("kms.amazonaws.com", _)
            | ("sts.amazonaws.com", _)
            | ("signin.amazonaws.com", _)
            | (
                "dynamodb.amazonaws.com",
                "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem"
            )
            | (
                "sqs.amazonaws.com",
                "SendMessage" | "DeleteMessage" | "DeleteMessageBatch" | "SendMessageBatch"
            )
            | ("logs.amazonaws.com", "PutLogEvents" | "CreateLogStream")
    )
}

/// Human and machine identities that act on their own (not a service on someone's behalf).
pub(crate) fn acts_itself(a: &Activity) -> bool {
    a.principal.invoked_by.is_none()
        && !matches!(a.principal.kind.as_str(), "AWSService" | "Trailguard")
}

/// A human at a keyboard: a console sign-in, the console, or a command line with an address.
pub(crate) fn is_interactive(a: &Activity) -> bool {
    if !acts_itself(a) || a.source_ip.is_none() || !a.outcome.is_success() {
        return false;
    }
    if a.event_type.as_deref() == Some("AwsConsoleSignIn") {
        return true;
    }
    let agent = a.user_agent.as_deref().unwrap_or("").to_ascii_lowercase();
    [
        "mozilla",
        "console.amazonaws.com",
        "signin.amazonaws.com",
        "aws-cli/",
        "aws-internal/3",
    ]
    .iter()
    .any(|m| agent.contains(m))
}

pub(crate) fn count_items(v: Option<&Value>, path: &[&str]) -> Option<u32> {
    let mut cur = v?;
    for p in path {
        cur = cur.get(*p)?;
    }
    match cur {
        Value::Array(a) => Some(a.len() as u32),
        Value::Object(_) => Some(1),
        _ => None,
    }
}

/// Units an activity adds to each rate.
pub(crate) fn rate_units(a: &Activity) -> [u32; 4] {
    let mut units = [0u32; 4];
    if !acts_itself(a) {
        return units;
    }
    if is_write(a) && !is_data_event(a) && a.event_type.as_deref() != Some("AwsConsoleSignIn") {
        units[RateKind::Admin as usize] = 1;
    }
    let ok = a.outcome.is_success();
    let params = a.request_parameters.as_ref();
    match (a.event_source.as_str(), a.event_name.as_str()) {
        ("s3.amazonaws.com", "DeleteBucket" | "DeleteObject") if ok => {
            units[RateKind::Deletion as usize] = 1;
        }
        ("s3.amazonaws.com", "DeleteObjects") if ok => {
            units[RateKind::Deletion as usize] = count_items(params, &["Delete", "Object"])
                .or_else(|| count_items(params, &["delete", "Object"]))
                .unwrap_or(1)
                .max(1);
        }
        ("ec2.amazonaws.com", "TerminateInstances") if ok => {
            units[RateKind::VmDeletion as usize] = count_items(params, &["instancesSet", "items"])
                .unwrap_or(1)
                .max(1);
        }
        ("ec2.amazonaws.com", "RunInstances") if ok => {
            units[RateKind::VmCreation as usize] =
                count_items(a.response_elements.as_ref(), &["instancesSet", "items"])
                    .or_else(|| {
                        params
                            .and_then(|p| p.get("instancesSet"))
                            .and_then(|s| s.get("items"))
                            .and_then(|i| i.get(0))
                            .and_then(|i| i.get("minCount"))
                            .and_then(Value::as_u64)
                            .map(|n| n as u32)
                    })
                    .unwrap_or(1)
                    .max(1);
        }
        _ => {}
    }
    units
}
