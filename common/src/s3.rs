//! What makes an S3 bucket public — shared by detect (to alert) and remediate (to undo it).

use serde_json::Value;

/// ACL grantee groups that mean "everyone" (`AuthenticatedUsers` is any AWS account).
pub const PUBLIC_GRANTEE_URIS: &[&str] = &[
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
];

/// Canned ACLs that make a bucket public.
pub const PUBLIC_CANNED_ACLS: &[&str] = &["public-read", "public-read-write", "authenticated-read"];

/// Condition keys that confine a `"Principal": "*"` statement to known callers
/// (compared lower-case).
const RESTRICTING_CONDITION_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceorgid",
    "aws:sourceorgpaths",
    "aws:principalorgid",
    "aws:principalorgpaths",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:principalservicename",
    "aws:userid",
    "aws:username",
    "s3:dataaccesspointaccount",
    "s3:dataaccesspointarn",
];

/// A value that may be one item or a list (policies and CloudTrail write both).
pub fn items(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    }
}

/// `"*"`, `{"AWS": "*"}` or `{"AWS": ["*", ...]}`.
pub fn principal_is_public(principal: Option<&Value>) -> bool {
    match principal {
        Some(Value::String(s)) => s == "*",
        Some(Value::Object(map)) => map
            .get("AWS")
            .is_some_and(|aws| items(Some(aws)).iter().any(|v| v.as_str() == Some("*"))),
        _ => false,
    }
}

/// True when a condition confines the statement to known callers.
pub fn condition_restricts(condition: Option<&Value>) -> bool {
    let Some(Value::Object(operators)) = condition else {
        return false;
    };
    operators.values().filter_map(Value::as_object).any(|keys| {
        keys.keys()
            .any(|k| RESTRICTING_CONDITION_KEYS.contains(&k.to_ascii_lowercase().as_str()))
    })
}

/// True for an `Allow` statement that anyone may use.
pub fn is_public_statement(statement: &Value) -> bool {
    statement.get("Effect").and_then(Value::as_str) == Some("Allow")
        && principal_is_public(statement.get("Principal"))
        && !condition_restricts(statement.get("Condition"))
}

/// A bucket policy as JSON, whether given as an object or as its text.
pub fn parse_policy(policy: &Value) -> Option<Value> {
    match policy {
        Value::String(text) => serde_json::from_str(text).ok(),
        Value::Object(_) => Some(policy.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn public_statements() {
        assert!(is_public_statement(
            &json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"})
        ));
        assert!(is_public_statement(
            &json!({"Effect": "Allow", "Principal": {"AWS": ["*"]}})
        ));
        assert!(!is_public_statement(
            &json!({"Effect": "Deny", "Principal": "*"})
        ));
        assert!(!is_public_statement(
            &json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::1:root"}})
        ));
        assert!(!is_public_statement(
            &json!({"Effect": "Allow", "Principal": "*", "Condition": {"StringEquals": {"aws:SourceVpce": "vpce-1"}}})
        ));
        assert!(is_public_statement(
            &json!({"Effect": "Allow", "Principal": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}})
        ));
    }
}
