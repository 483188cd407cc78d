//! Synthetic CloudTrail traffic for the benches that run the services: ordinary reads by a
//! population of users and role sessions, and records by users of the bench's own choosing.

use serde_json::{json, Value};

/// The account every record is in (the AWS-API server's).
pub const ACCOUNT: &str = "123456789012";

/// A call by the IAM user `user` in [`ACCOUNT`], with request parameters `params`.
pub fn by_user(user: &str, id: &str, time: &str, source: &str, name: &str, params: Value) -> Value {
    json!({
        "eventVersion": "1.09",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLEBENCH",
            "arn": format!("arn:aws:iam::{ACCOUNT}:user/{user}"), "accountId": ACCOUNT,
            "accessKeyId": "AKIAEXAMPLEBENCH", "userName": user},
        "eventTime": time, "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.30 Python/3.11.8 Linux/6.5",
        "requestParameters": params, "responseElements": null,
        "requestID": id, "eventID": id, "readOnly": false, "eventType": "AwsApiCall",
        "managementEvent": true, "recipientAccountId": ACCOUNT, "eventCategory": "Management"
    })
}

/// The `i`-th ordinary read among `actors` actors: half IAM users, half sessions of 40 roles,
/// each making one of six calls (S3 object and bucket reads, EC2 describe, STS, DynamoDB, KMS)
/// from an address of its own.
pub fn ordinary(i: usize, actors: usize, id: &str, time: &str) -> Value {
    let who = i.wrapping_mul(7919) % actors.max(1);
    let role = (who / 2) % 40;
    let identity = if who.is_multiple_of(2) {
        json!({"type": "IAMUser", "principalId": format!("AIDA{who:016}"),
            "arn": format!("arn:aws:iam::{ACCOUNT}:user/user-{who}"), "accountId": ACCOUNT,
            "accessKeyId": format!("AKIA{who:016}"), "userName": format!("user-{who}")})
    } else {
        json!({"type": "AssumedRole", "principalId": format!("AROA{role:016}:session-{who}"),
            "arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/app-{role}/session-{who}"),
            "accountId": ACCOUNT, "accessKeyId": format!("ASIA{who:016}"),
            "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": format!("AROA{role:016}"),
                "arn": format!("arn:aws:iam::{ACCOUNT}:role/app-{role}"), "accountId": ACCOUNT,
                "userName": format!("app-{role}")},
                "attributes": {"creationDate": time, "mfaAuthenticated": "false"}}})
    };
    let (source, name, params) = match i % 6 {
        0 => (
            "s3.amazonaws.com",
            "GetObject",
            json!({"bucketName": format!("data-{}", who % 50), "key": format!("reports/{i}.csv"), "Host": "s3.amazonaws.com"}),
        ),
        1 => (
            "s3.amazonaws.com",
            "ListBuckets",
            json!({"Host": "s3.amazonaws.com"}),
        ),
        2 => (
            "ec2.amazonaws.com",
            "DescribeInstances",
            json!({"instancesSet": {}, "filterSet": {"items": [{"name": "tag:team", "valueSet": {"items": [{"value": "data"}]}}]}}),
        ),
        3 => ("sts.amazonaws.com", "GetCallerIdentity", Value::Null),
        4 => (
            "dynamodb.amazonaws.com",
            "GetItem",
            json!({"tableName": format!("orders-{}", who % 10), "key": {"id": {"S": format!("{i}")}}}),
        ),
        _ => (
            "kms.amazonaws.com",
            "Decrypt",
            json!({"encryptionAlgorithm": "SYMMETRIC_DEFAULT", "keyId": format!("arn:aws:kms:us-east-1:{ACCOUNT}:key/{who:08}")}),
        ),
    };
    let data = name == "GetObject";
    json!({
        "eventVersion": "1.09", "userIdentity": identity,
        "eventTime": time, "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
        "sourceIPAddress": format!("203.0.113.{}", who % 200),
        "userAgent": "aws-sdk-java/2.25.6 Linux/5.10 OpenJDK_64-Bit_Server_VM/17",
        "requestParameters": params, "responseElements": null,
        "requestID": id, "eventID": id, "readOnly": true, "eventType": "AwsApiCall",
        "managementEvent": !data, "recipientAccountId": ACCOUNT,
        "eventCategory": if data { "Data" } else { "Management" }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_records_spread_over_the_actors_and_calls() {
        let records: Vec<Value> = (0..600)
            .map(|i| ordinary(i, 100, &format!("e{i}"), "2026-12-03T00:00:00Z"))
            .collect();
        let actors: std::collections::BTreeSet<&str> = records
            .iter()
            .filter_map(|r| r["userIdentity"]["arn"].as_str())
            .collect();
        assert_eq!(actors.len(), 100);
        let calls: std::collections::BTreeSet<&str> = records
            .iter()
            .filter_map(|r| r["eventName"].as_str())
            .collect();
        assert_eq!(calls.len(), 6);
        assert!(records.iter().all(|r| r["recipientAccountId"] == ACCOUNT));
    }
}
