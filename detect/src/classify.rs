//! What a call is, by its CloudTrail record: a write, a data event, interactive, acting itself
//! (not a service on its behalf), and the units each of the four anomaly rates counts. Used by
//! the anomaly detections and by the organization facts.

use crate::policy::field_ci as field;
use serde_json::Value;
use trailguard_common::{Activity, RawJson};

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

/// Data-plane calls that are not administration even when they write: what CloudTrail marks a
/// data event, and these calls (for records and exports that do not say).
pub(crate) fn is_data_event(a: &Activity) -> bool {
    a.data_event
        || matches!(
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

/// A change someone asked for: their own call, or CloudFormation's on their behalf (a stack's
/// resources are made with the caller's credentials or the stack's role, the record naming
/// CloudFormation in `invokedBy`). What such a change exposes is judged whichever made it:
/// a template is as good a way to open a role to another account as a call. Other services
/// acting for the account (AWS Backup, Image Builder) are not; and what a stack deletes is
/// not a defence switched off (`defense-evasion` keeps to [`acts_itself`]).
pub(crate) fn requested_change(a: &Activity) -> bool {
    matches!(
        a.principal.invoked_by.as_deref(),
        None | Some("cloudformation.amazonaws.com")
    ) && !matches!(a.principal.kind.as_str(), "AWSService" | "Trailguard")
}

/// A human at a keyboard: a console sign-in, the console, or a command line with an address.
pub(crate) fn is_interactive(a: &Activity) -> bool {
    if !acts_itself(a) || a.source_ip.is_none() || !a.outcome.is_success() || names_only(a) {
        return false;
    }
    if a.event_type.as_deref() == Some("AwsConsoleSignIn") {
        return true;
    }
    let agents = INTERACTIVE_AGENTS.as_ref();
    a.user_agent
        .as_deref()
        .zip(agents)
        .is_some_and(|(agent, agents)| agents.is_match(agent) && !in_aws_runtime(a, agent))
}

/// A command line or SDK running inside AWS — CloudShell, a Lambda function, a container, a
/// build — says so in its agent (`exec-env/`, from `AWS_EXECUTION_ENV`): the address is the
/// runtime's, not where the person at the keyboard is. The agent is the caller's to write, so
/// the address's network must be known to be Amazon's too (else anyone could opt out of
/// impossible travel by naming an execution environment); without AS data, nothing is.
fn in_aws_runtime(a: &Activity, agent: &str) -> bool {
    /// Amazon's AS numbers (EC2 and its other networks).
    const AMAZON: [u32; 4] = [16509, 14618, 8987, 7224];
    let amazon = a
        .enrichment
        .network
        .as_ref()
        .is_some_and(|n| AMAZON.contains(&n.asn));
    amazon
        && EXEC_ENV
            .as_ref()
            .is_some_and(|finder| finder.is_match(agent))
}

/// `exec-env/`, in any ASCII case, found in one fast pass (it runs for every interactive
/// activity). A pattern this short always builds; were that ever to fail, nothing counts as
/// running inside AWS.
static EXEC_ENV: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(["exec-env/"])
            .ok()
    });

/// What the user agents of the console and the command line hold (ASCII case aside), found
/// in one pass without a lower-cased copy (the check runs for most activities). Five short
/// fixed patterns always build; were that ever to fail, nothing would count as interactive
/// (impossible travel stays quiet) rather than a panic.
static INTERACTIVE_AGENTS: std::sync::LazyLock<Option<aho_corasick::AhoCorasick>> =
    std::sync::LazyLock::new(|| {
        aho_corasick::AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "mozilla",
                "console.amazonaws.com",
                "signin.amazonaws.com",
                "aws-cli/",
                "aws-internal/3",
            ])
            .ok()
    });

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

/// S3 objects a `DeleteObjects` record names in its `resources` (CloudTrail lists each deleted
/// object there, `arn:aws:s3:::BUCKET/KEY`; the bucket itself has no `/`).
fn deleted_objects(a: &Activity) -> Option<u32> {
    let n = a
        .resources
        .iter()
        .filter(|r| {
            r.kind == "arn"
                && r.id.split(':').nth(2) == Some("s3")
                && r.id
                    .rsplit(':')
                    .next()
                    .is_some_and(|path| path.contains('/'))
        })
        .count();
    (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

/// How many objects a `DeleteObjects` request named, from the size of its request or answer
/// (the larger), when the record lists them under an `ARNPrefix` rather than one by one (as
/// trails usually write it): each key's XML is about 100 bytes with a typical key, and one
/// request names at most 1,000. An estimate — a whole bucket emptied a thousand at a time still counts in
/// thousands, not one a call.
fn objects_named_by_size(a: &Activity) -> Option<u32> {
    let data = a.additional_event_data.as_ref()?;
    let bytes = |key: &str| data.get(key).and_then(Value::as_u64);
    // The request names every key; the answer too (`<Deleted><Key>…`) unless asked to be
    // quiet: whichever is larger.
    let bytes = bytes("bytesTransferredIn").max(bytes("bytesTransferredOut"))?;
    Some((bytes / 100).clamp(1, 1_000) as u32)
}

/// A sign-in record that names an actor without proving any credential of it — anyone can
/// type a user name: a failed sign-in (to the console or Identity Center's portal, whose wrong
/// passwords are failed `CredentialVerification`s), or a [`is_prompt`]. Counted as that
/// actor's failure where it failed, but never the actor acting: no return from a silence, no
/// place it was, and an alert about it only notifies.
pub(crate) fn names_only(a: &Activity) -> bool {
    is_signin(a) && (!a.outcome.is_success() || is_prompt(a))
}

/// A sign-in service's record that someone was asked for, or asked for, a credential — logged
/// as a success, yet anyone who types a user name causes it: Identity Center's
/// `CredentialChallenge` (a password or MFA code asked for; the verdict follows as
/// `CredentialVerification`), root's `PasswordRecoveryRequested` (a reset e-mail asked for).
pub(crate) fn is_prompt(a: &Activity) -> bool {
    is_signin(a)
        && matches!(
            a.event_name.as_str(),
            "CredentialChallenge" | "PasswordRecoveryRequested"
        )
}

fn is_signin(a: &Activity) -> bool {
    a.event_source == "signin.amazonaws.com" || a.event_type.as_deref() == Some("AwsConsoleSignIn")
}

/// The S3 object `a` read for its actor, as a hash of its ARN (from the record's resources;
/// 0 when it names none): a successful `GetObject` the actor made itself. What a service
/// read on its behalf is the service's, and unauthenticated reads of a public bucket are
/// nobody's.
pub(crate) fn downloaded_object(a: &Activity) -> Option<u32> {
    let read = a.event_name == "GetObject"
        && a.event_source == "s3.amazonaws.com"
        && a.outcome.is_success()
        && acts_itself(a)
        && a.principal.account_id.as_deref() != Some("ANONYMOUS_PRINCIPAL");
    if !read {
        return None;
    }
    // `arn:aws:s3:::BUCKET/KEY`: the object (the bucket's ARN has no `/`).
    let object = a
        .resources
        .iter()
        .find(|r| r.id.starts_with("arn:") && r.id.contains(":::") && r.id.contains('/'))
        .map_or(0, |r| crate::tactics::fnv1a(r.id.bytes()).max(1));
    Some(object)
}

/// Units an activity adds to each rate. A deleted bucket is a whole data store, not one
/// object: it counts `bucket_weight` deletions.
pub(crate) fn rate_units(a: &Activity, bucket_weight: u32) -> [u32; 4] {
    let mut units = [0u32; 4];
    if !acts_itself(a) {
        return units;
    }
    if is_write(a) && !is_data_event(a) && a.event_type.as_deref() != Some("AwsConsoleSignIn") {
        units[RateKind::Admin as usize] = 1;
    }
    let ok = a.outcome.is_success();
    // Parsed only by the arms that read it.
    let params = a.request_parameters.as_ref();
    match (a.event_source.as_str(), a.event_name.as_str()) {
        ("s3.amazonaws.com", "DeleteBucket") if ok => {
            units[RateKind::Deletion as usize] = bucket_weight.max(1);
        }
        ("s3.amazonaws.com", "DeleteObject") if ok => {
            units[RateKind::Deletion as usize] = 1;
        }
        ("s3.amazonaws.com", "DeleteObjects") if ok => {
            units[RateKind::Deletion as usize] = deleted_objects(a)
                .or_else(|| count_items(params.map(RawJson::value), &["Delete", "Object"]))
                .or_else(|| count_items(params.map(RawJson::value), &["delete", "Object"]))
                .or_else(|| objects_named_by_size(a))
                .unwrap_or(1)
                .max(1);
        }
        ("ec2.amazonaws.com", "TerminateInstances") if ok => {
            units[RateKind::VmDeletion as usize] =
                count_items(params.map(RawJson::value), &["instancesSet", "items"])
                    .unwrap_or(1)
                    .max(1);
        }
        ("ec2.amazonaws.com", "RunInstances") if ok => {
            units[RateKind::VmCreation as usize] =
                count_items(a.response_elements.as_deref(), &["instancesSet", "items"])
                    .or_else(|| {
                        params
                            .and_then(|p| p.get("instancesSet"))
                            .and_then(|s| s.get("items"))
                            .and_then(|i| i.get(0))
                            .and_then(|i| i.get("minCount"))
                            .and_then(number)
                    })
                    .unwrap_or(1)
                    .max(1);
        }
        // Instances asked for in numbers without a `RunInstances` of the caller's own: the
        // fleet's and Auto Scaling's launches are their service roles' calls.
        ("ec2.amazonaws.com", "CreateFleet") if ok => {
            units[RateKind::VmCreation as usize] = fleet_instances(a).unwrap_or(1);
        }
        ("ec2.amazonaws.com", "RequestSpotFleet") if ok => {
            let config = params.map(RawJson::value).and_then(|p| {
                field(p, "SpotFleetRequestConfig").or_else(|| {
                    field(
                        field(p, "RequestSpotFleetRequest")?,
                        "SpotFleetRequestConfig",
                    )
                })
            });
            units[RateKind::VmCreation as usize] =
                config.and_then(capacity_in_instances).unwrap_or(1).max(1);
        }
        ("ec2.amazonaws.com", "RequestSpotInstances") if ok => {
            units[RateKind::VmCreation as usize] = params
                .and_then(|p| field(p, "instanceCount"))
                .and_then(number)
                .unwrap_or(1)
                .max(1);
        }
        ("autoscaling.amazonaws.com", "CreateAutoScalingGroup") if ok => {
            // A capacity in vCPUs or memory (`desiredCapacityType`) is at least one instance.
            let in_units = params
                .and_then(|p| field(p, "desiredCapacityType"))
                .and_then(Value::as_str)
                .is_none_or(|t| t.eq_ignore_ascii_case("units"));
            let asked = params
                .and_then(|p| field(p, "desiredCapacity").or_else(|| field(p, "minSize")))
                .and_then(number)
                .unwrap_or(0);
            units[RateKind::VmCreation as usize] = if in_units { asked } else { asked.min(1) };
        }
        _ => {}
    }
    units
}

/// Most instances one request counts for: a request names its numbers, and a forged one could
/// name billions.
const MOST_INSTANCES: u64 = 10_000;

/// A count, written as a number or as its digits, at most [`MOST_INSTANCES`].
fn number(value: &Value) -> Option<u32> {
    let n = value
        .as_u64()
        .or_else(|| value.as_str()?.trim().parse().ok())?;
    Some(n.min(MOST_INSTANCES) as u32)
}

/// EC2's lists are `{"item": [...]}` (or `items`), or `{"item": {...}}` for one: how many.
fn listed(value: &Value) -> u32 {
    let list = field(value, "item").or_else(|| field(value, "items"));
    match list.unwrap_or(value) {
        Value::Array(items) => items.len() as u32,
        Value::Null => 0,
        _ => 1,
    }
}

/// A fleet's target capacity (`TotalTargetCapacity`, `TargetCapacity`) when it counts
/// instances: capacity in vCPUs or memory (`TargetCapacityUnitType`) says nothing of them.
fn capacity_in_instances(config: &Value) -> Option<u32> {
    let unit = field(config, "TargetCapacityUnitType").and_then(Value::as_str);
    if unit.is_some_and(|u| !u.eq_ignore_ascii_case("units")) {
        return None;
    }
    let spec = field(config, "TargetCapacitySpecification").unwrap_or(config);
    let unit = field(spec, "TargetCapacityUnitType").and_then(Value::as_str);
    if unit.is_some_and(|u| !u.eq_ignore_ascii_case("units")) {
        return None;
    }
    let target = field(spec, "TotalTargetCapacity")
        .or_else(|| field(spec, "TargetCapacity"))
        .and_then(number)?;
    // Each instance type may weigh more than one unit (`WeightedCapacity`): at least
    // the target over the heaviest weight.
    let heaviest = most_weight(config, 0).max(1);
    Some(target.div_ceil(heaviest))
}

/// The largest `WeightedCapacity` under `value` (a whole number, at least 1; at most 16
/// levels down).
fn most_weight(value: &Value, depth: u8) -> u32 {
    if depth > 16 {
        return 1;
    }
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("WeightedCapacity") {
                    v.as_f64()
                        .or_else(|| v.as_str()?.trim().parse().ok())
                        .filter(|w| w.is_finite() && *w >= 1.0)
                        .map_or(1, |w| w.min(f64::from(u32::MAX)).ceil() as u32)
                } else {
                    most_weight(v, depth + 1)
                }
            })
            .max()
            .unwrap_or(1),
        Value::Array(items) => items
            .iter()
            .map(|v| most_weight(v, depth + 1))
            .max()
            .unwrap_or(1),
        _ => 1,
    }
}

/// Instances a `CreateFleet` launched (an `instant` fleet lists them in its response: what
/// it could not launch is not counted), else the capacity it asks for.
fn fleet_instances(a: &Activity) -> Option<u32> {
    let request = a.request_parameters.as_deref();
    let request = request.map(|r| field(r, "CreateFleetRequest").unwrap_or(r));
    let instant = request
        .and_then(|r| field(r, "Type"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("instant"));
    let launched = a
        .response_elements
        .as_deref()
        .and_then(|r| field(r, "CreateFleetResponse").or(Some(r)))
        .and_then(|r| field(r, "fleetInstanceSet"))
        .map(|set| {
            let sets = field(set, "item").unwrap_or(set);
            let each = |s: &Value| field(s, "instanceIds").map_or(0, listed);
            match sets {
                Value::Array(items) => items.iter().map(each).sum::<u32>(),
                one => each(one),
            }
        })
        .filter(|n| *n > 0 || instant);
    match launched {
        Some(n) => Some(n.min(MOST_INSTANCES as u32)),
        None if instant => Some(0),
        None => request.and_then(capacity_in_instances),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name` on `source` by the IAM user alice, the record's fields `extra` added.
    fn by_alice(source: &str, name: &str, extra: serde_json::Value) -> Activity {
        let mut record = serde_json::json!({
            "eventTime": "2024-05-01T10:00:00Z", "eventSource": source, "eventName": name,
            "recipientAccountId": "1", "sourceIPAddress": "198.51.100.1",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/alice", "userName": "alice"},
        });
        if let (Some(r), Some(e)) = (record.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
        trailguard_ingest::normalize::normalize(&record.to_string()).unwrap()
    }

    /// An S3 data event by alice.
    fn s3(name: &str, extra: serde_json::Value) -> Activity {
        let mut extra = extra;
        if let Some(e) = extra.as_object_mut() {
            e.entry("eventCategory").or_insert("Data".into());
        }
        by_alice("s3.amazonaws.com", name, extra)
    }

    /// The console's and the command line's agents, in any ASCII case, are a person at a
    /// keyboard; an SDK's, none, or a failed or service-made call are not.
    #[test]
    fn interactive_agents_are_found_in_any_case() {
        let with = |agent: Option<&str>, extra: serde_json::Value| {
            let mut fields = serde_json::json!({});
            if let Some(agent) = agent {
                fields["userAgent"] = agent.into();
            }
            if let (Some(f), Some(e)) = (fields.as_object_mut(), extra.as_object()) {
                f.extend(e.clone());
            }
            is_interactive(&s3("ListBuckets", fields))
        };
        for agent in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
            "MOZILLA/5.0",
            "AWS-CLI/2.15.0 Python/3.11",
            "[S3Console/0.4, aws-internal/3 aws-sdk-java/1.12]",
            "console.amazonaws.com",
            "Signin.Amazonaws.com",
        ] {
            assert!(with(Some(agent), serde_json::json!({})), "{agent}");
        }
        for agent in [
            "Boto3/1.34.0 Python/3.11",
            "aws-sdk-go/1.44",
            "aws-cli",
            "aws-internal/2",
            "",
            // A command line running inside AWS (CloudShell, a Lambda function, a build):
            // its address is the runtime's, not where the person sits.
        ] {
            assert!(!with(Some(agent), serde_json::json!({})), "{agent}");
        }
        assert!(!with(None, serde_json::json!({})));
        // An agent naming an execution environment from a network that is not Amazon's is
        // someone writing it (it would opt out of impossible travel): still a keyboard.
        let cloudshell = "aws-cli/2.18.5 lang/python#3.12.6 exec-env/CloudShell";
        let on = |asn: u32| {
            let mut a = s3("ListBuckets", serde_json::json!({"userAgent": cloudshell}));
            a.enrichment_mut().network = Some(trailguard_common::contract::Network {
                asn,
                organization: None,
            });
            is_interactive(&a)
        };
        assert!(!on(16509), "CloudShell from EC2's network");
        assert!(!on(14618), "CloudShell from EC2's network");
        assert!(on(14061), "claimed from a hosting provider's network");
        // Without AS data nothing tells the runtime's network: still a keyboard.
        assert!(with(Some(cloudshell), serde_json::json!({})));
        let failed = serde_json::json!({"errorCode": "AccessDenied"});
        assert!(!with(Some("aws-cli/2.15.0"), failed));
    }

    /// A deleted bucket weighs `bucket_weight` deletions; `DeleteObjects` counts the objects
    /// CloudTrail lists in `resources` (the bucket listed beside them is not one).
    #[test]
    fn deletions_are_weighed_by_what_they_destroy() {
        let bucket = s3(
            "DeleteBucket",
            serde_json::json!({"requestParameters": {"bucketName": "b"}}),
        );
        assert_eq!(rate_units(&bucket, 10)[RateKind::Deletion as usize], 10);
        let objects = s3(
            "DeleteObjects",
            serde_json::json!({
                "requestParameters": {"bucketName": "b", "delete": ""},
                "resources": [
                    {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::b/logs/1.gz"},
                    {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::b/logs/2.gz"},
                    {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::b/logs/3.gz"},
                    {"accountId": "1", "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::b"}
                ]
            }),
        );
        assert_eq!(rate_units(&objects, 10)[RateKind::Deletion as usize], 3);
        // As a trail usually writes it: the objects under an `ARNPrefix`, not one by one, so
        // the request body's size tells how many were named (about 100 bytes each, at most the
        // 1,000 one request may delete).
        let prefixed = |bytes: u64| {
            s3(
                "DeleteObjects",
                serde_json::json!({
                    "requestParameters": {"bucketName": "b", "delete": ""},
                    "additionalEventData": {"bytesTransferredIn": bytes, "bytesTransferredOut": bytes / 2},
                    "resources": [
                        {"type": "AWS::S3::Object", "ARNPrefix": "arn:aws:s3:::b/"},
                        {"accountId": "1", "type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::b"}
                    ]
                }),
            )
        };
        let deleted = |bytes| rate_units(&prefixed(bytes), 10)[RateKind::Deletion as usize];
        assert_eq!(deleted(84_000), 840);
        assert_eq!(deleted(5_000_000), 1_000);
        assert_eq!(deleted(40), 1);
        // Sizes as some records have them: the answer's only.
        let mut answer = prefixed(0);
        answer.additional_event_data = Some(
            serde_json::json!({"bytesTransferredIn": 0, "bytesTransferredOut": 404_840}).into(),
        );
        assert_eq!(rate_units(&answer, 10)[RateKind::Deletion as usize], 1_000);
        let one = s3(
            "DeleteObject",
            serde_json::json!({"requestParameters": {"bucketName": "b", "key": "k"}}),
        );
        assert_eq!(rate_units(&one, 10)[RateKind::Deletion as usize], 1);
    }

    /// Fleets, spot requests and Auto Scaling groups count the instances they ask for: their
    /// launches are the services' own calls, so the request is the caller's only record.
    #[test]
    fn fleets_and_groups_count_the_instances_they_ask_for() {
        let call = |source: &str, name: &str, extra: serde_json::Value| {
            rate_units(&by_alice(source, name, extra), 10)[RateKind::VmCreation as usize]
        };
        let ec2 = "ec2.amazonaws.com";
        // An instant fleet lists what it launched; another asks for its capacity.
        let instant = serde_json::json!({
            "requestParameters": {"CreateFleetRequest": {"Type": "instant",
                "TargetCapacitySpecification": {"TotalTargetCapacity": 40}}},
            "responseElements": {"CreateFleetResponse": {"fleetInstanceSet": {"item": [
                {"instanceIds": {"item": ["i-1", "i-2", "i-3"]}},
                {"instanceIds": {"item": "i-4"}}]}}},
        });
        assert_eq!(call(ec2, "CreateFleet", instant), 4);
        let maintained = serde_json::json!({"requestParameters": {"CreateFleetRequest": {
            "Type": "maintain", "TargetCapacitySpecification": {"TotalTargetCapacity": "40"}}}});
        assert_eq!(call(ec2, "CreateFleet", maintained), 40);
        // Capacity in vCPUs says nothing of instances.
        let vcpus = serde_json::json!({"requestParameters": {"CreateFleetRequest": {
            "TargetCapacitySpecification": {"TotalTargetCapacity": 768,
                "TargetCapacityUnitType": "vcpu"}}}});
        assert_eq!(call(ec2, "CreateFleet", vcpus), 1);
        for config in [
            serde_json::json!({"RequestSpotFleetRequest": {"SpotFleetRequestConfig": {
                "TargetCapacity": 60, "Type": "maintain"}}}),
            serde_json::json!({"spotFleetRequestConfig": {"targetCapacity": 60}}),
        ] {
            let spot = serde_json::json!({"requestParameters": config});
            assert_eq!(call(ec2, "RequestSpotFleet", spot), 60);
        }
        // Weighted capacity: 512 units of instances weighing 16 are 32 instances.
        let weighted = serde_json::json!({"requestParameters": {"spotFleetRequestConfig": {
            "targetCapacity": 512, "launchSpecifications": {"items": [
                {"instanceType": "c5.24xlarge", "weightedCapacity": 16},
                {"instanceType": "c5.12xlarge", "weightedCapacity": 8}]}}}});
        assert_eq!(call(ec2, "RequestSpotFleet", weighted), 32);
        // An instant fleet that launched nothing launched nothing.
        let failed = serde_json::json!({
            "requestParameters": {"CreateFleetRequest": {"Type": "instant",
                "TargetCapacitySpecification": {"TotalTargetCapacity": 100}}},
            "responseElements": {"CreateFleetResponse": {"fleetInstanceSet": "",
                "errorSet": {"item": {"errorCode": "InsufficientInstanceCapacity"}}}},
        });
        assert_eq!(call(ec2, "CreateFleet", failed), 0);
        let spot = serde_json::json!({"requestParameters": {"instanceCount": 5}});
        assert_eq!(call(ec2, "RequestSpotInstances", spot), 5);
        let group = serde_json::json!({"requestParameters": {"autoScalingGroupName": "miners",
            "minSize": 0, "maxSize": 100, "desiredCapacity": 100}});
        assert_eq!(
            call("autoscaling.amazonaws.com", "CreateAutoScalingGroup", group),
            100
        );
        let vcpus = serde_json::json!({"requestParameters": {"desiredCapacity": 768,
            "desiredCapacityType": "vcpu"}});
        assert_eq!(
            call("autoscaling.amazonaws.com", "CreateAutoScalingGroup", vcpus),
            1
        );
        let launch = serde_json::json!({"requestParameters": {"instancesSet": {"items": [
            {"imageId": "ami-1", "minCount": 4_000_000_000_u64, "maxCount": 4_000_000_000_u64}]}}});
        assert_eq!(call(ec2, "RunInstances", launch), 10_000);
        let empty = serde_json::json!({"requestParameters": {"minSize": 0, "maxSize": 10}});
        assert_eq!(
            call("autoscaling.amazonaws.com", "CreateAutoScalingGroup", empty),
            0
        );
        // A forged count is bounded; a refused request launched nothing.
        let forged = serde_json::json!({"requestParameters": {"spotFleetRequestConfig": {
            "targetCapacity": 4_000_000_000_u64}}});
        assert_eq!(call(ec2, "RequestSpotFleet", forged), 10_000);
        let refused = serde_json::json!({"errorCode": "UnauthorizedOperation",
            "requestParameters": {"instanceCount": 5}});
        assert_eq!(call(ec2, "RequestSpotInstances", refused), 0);
    }

    /// What CloudTrail marks a data event is not administration, whatever the call: an
    /// object's retention or legal hold set, an item written. A management write still is.
    #[test]
    fn data_events_are_told_by_their_category() {
        let admin = |extra: serde_json::Value, source: &str, name: &str| {
            rate_units(&by_alice(source, name, extra), 10)[RateKind::Admin as usize]
        };
        let s3 = "s3.amazonaws.com";
        let data = serde_json::json!({"eventCategory": "Data", "managementEvent": false});
        assert_eq!(admin(data, s3, "PutObjectRetention"), 0);
        let unmanaged = serde_json::json!({"managementEvent": false});
        assert_eq!(admin(unmanaged, s3, "PutObjectLegalHold"), 0);
        let network = serde_json::json!({"eventCategory": "NetworkActivity"});
        assert_eq!(
            admin(network, "dynamodb.amazonaws.com", "UpdateTimeToLive"),
            0
        );
        let management =
            serde_json::json!({"eventCategory": "Management", "managementEvent": true});
        assert_eq!(admin(management.clone(), s3, "PutBucketPolicy"), 1);
        // A record that does not say is judged by its call.
        assert_eq!(admin(serde_json::json!({}), s3, "PutObjectRetention"), 1);
        assert_eq!(admin(management, s3, "PutObject"), 0);
    }
}
