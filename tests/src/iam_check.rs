//! Checks AWS calls against IAM policy documents: every call a service made in the test run
//! (logged by its SDK interceptor, see `trailguard_common::aws_calls`) must be allowed by an
//! `Allow` statement of `deploy/iam/<service>.json`. Actions only; resources are left to the
//! documents' reviewers (they carry placeholders such as `TRAIL_BUCKET`).

use serde_json::Value;

/// The IAM action an SDK operation needs. `service` is the SDK's service name, lower-cased.
pub fn iam_action(service: &str, operation: &str) -> String {
    let prefix = match service {
        "s3 control" | "s3control" => "s3",
        other => other,
    };
    let action = match (prefix, service, operation) {
        (_, "s3 control" | "s3control", "GetPublicAccessBlock") => "GetAccountPublicAccessBlock",
        ("s3", _, "GetPublicAccessBlock") => "GetBucketPublicAccessBlock",
        ("s3", _, "PutPublicAccessBlock" | "DeletePublicAccessBlock") => {
            "PutBucketPublicAccessBlock"
        }
        ("s3", _, "ListObjectsV2" | "ListObjects") => "ListBucket",
        ("s3", _, "ListBuckets") => "ListAllMyBuckets",
        ("s3", _, "HeadObject") => "GetObject",
        ("s3", _, "HeadBucket") => "ListBucket",
        // Allowed by the single-message action (AWS: "You cannot set permissions explicitly
        // for SendMessageBatch, DeleteMessageBatch, or ChangeMessageVisibilityBatch").
        (
            "sqs",
            _,
            op @ ("SendMessageBatch" | "DeleteMessageBatch" | "ChangeMessageVisibilityBatch"),
        ) => op.trim_end_matches("Batch"),
        (_, _, op) => op,
    };
    format!("{prefix}:{action}")
}

fn matches(pattern: &str, action: &str) -> bool {
    let (p, a) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    match p.split_once('*') {
        None => p == a,
        Some((head, tail)) => {
            a.starts_with(head) && a.len() >= head.len() + tail.len() && a.ends_with(tail)
        }
    }
}

fn actions_of(statement: &Value) -> Vec<&str> {
    match &statement["Action"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// True when an `Allow` statement of `policy` names `action`.
pub fn allows(policy: &Value, action: &str) -> bool {
    let statements = match &policy["Statement"] {
        Value::Array(items) => items.iter().collect::<Vec<_>>(),
        other => vec![other],
    };
    statements
        .iter()
        .any(|s| s["Effect"] == "Allow" && actions_of(s).iter().any(|p| matches(p, action)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_map_to_their_iam_actions() {
        assert_eq!(iam_action("s3", "ListObjectsV2"), "s3:ListBucket");
        assert_eq!(
            iam_action("s3", "GetPublicAccessBlock"),
            "s3:GetBucketPublicAccessBlock"
        );
        assert_eq!(
            iam_action("s3", "DeletePublicAccessBlock"),
            "s3:PutBucketPublicAccessBlock"
        );
        assert_eq!(
            iam_action("s3control", "GetPublicAccessBlock"),
            "s3:GetAccountPublicAccessBlock"
        );
        assert_eq!(iam_action("iam", "PutUserPolicy"), "iam:PutUserPolicy");
        assert_eq!(iam_action("sqs", "ReceiveMessage"), "sqs:ReceiveMessage");
        // SQS's batch calls are allowed by their single-message actions (there is no
        // `sqs:DeleteMessageBatch` permission).
        assert_eq!(iam_action("sqs", "DeleteMessageBatch"), "sqs:DeleteMessage");
        assert_eq!(
            iam_action("sqs", "ChangeMessageVisibilityBatch"),
            "sqs:ChangeMessageVisibility"
        );
        assert_eq!(iam_action("sqs", "SendMessageBatch"), "sqs:SendMessage");
    }

    #[test]
    fn only_allow_statements_grant() {
        let p = json!({"Statement": [
            {"Effect": "Allow", "Action": ["s3:GetObject", "iam:Get*"], "Resource": "*"},
            {"Effect": "Deny", "Action": "sqs:*", "Resource": "*"}
        ]});
        assert!(allows(&p, "s3:GetObject"));
        assert!(allows(&p, "iam:GetUserPolicy"));
        assert!(!allows(&p, "iam:PutUserPolicy"));
        assert!(!allows(&p, "sqs:ReceiveMessage"));
        assert!(!allows(
            &json!({"Statement": {"Effect": "Deny", "Action": "*"}}),
            "s3:GetObject"
        ));
    }
}
