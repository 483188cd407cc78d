//! What makes an S3 bucket public — shared by detect (to alert) and remediate (to undo it).

use serde_json::Value;

/// ACL grantee groups that mean "everyone" (`AuthenticatedUsers` is any AWS account).
pub const PUBLIC_GRANTEE_URIS: &[&str] = &[
    "http://acs.amazonaws.com/groups/global/AllUsers",
    "http://acs.amazonaws.com/groups/global/AuthenticatedUsers",
];

/// Canned ACLs that make a bucket public.
pub const PUBLIC_CANNED_ACLS: &[&str] = &["public-read", "public-read-write", "authenticated-read"];

/// Condition keys that confine a wildcard-principal statement to known callers when compared
/// with fixed values (compared lower-case). Modelled on what S3 itself counts as non-public:
/// a fixed source ARN, VPC, VPC endpoint, owner or account, organization, principal ARN or
/// account, user id, access point, KMS key; and a set of addresses for `aws:SourceIp`.
const RESTRICTING_CONDITION_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourceaccount",
    "aws:sourcearn",
    "aws:sourceowner",
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
    "s3:x-amz-server-side-encryption-aws-kms-key-id",
];

/// Condition operators that confine a key to the values listed (lower-case, after an optional
/// `ForAnyValue:` prefix). Negated operators (`StringNotEquals`, `NotIpAddress`…) allow every
/// other value; `…IfExists` passes when the key is absent; `Null` tests presence only;
/// `ForAllValues:` passes vacuously on an absent key. None of those confines anything.
const CONFINING_OPERATORS: &[&str] = &[
    "stringequals",
    "stringequalsignorecase",
    "stringlike",
    "arnequals",
    "arnlike",
    "ipaddress",
];

/// A value that may be one item or a list (policies and CloudTrail write both).
pub fn items(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    }
}

/// A principal value that stands for anyone: `*`, or a pattern with a wildcard in it
/// (`arn:aws:iam::*:root` is every account).
fn wildcard_principal(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.contains('*'))
}

/// `"*"`, or a principal map any of whose values (`AWS`, `CanonicalUser`, `Federated`,
/// `Service`) is or contains a wildcard.
pub fn principal_is_public(principal: Option<&Value>) -> bool {
    match principal {
        Some(v @ Value::String(_)) => wildcard_principal(v),
        Some(Value::Object(map)) => map
            .values()
            .any(|v| items(Some(v)).into_iter().any(wildcard_principal)),
        _ => false,
    }
}

/// True for a CIDR (or address) no wider than an IPv4 /8 or an IPv6 /32: wider ranges
/// (`0.0.0.0/0`, `::/0`, `0.0.0.0/1`) reach most of the internet and confine nothing.
fn narrow_cidr(text: &str) -> bool {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, l.parse::<u8>().ok()),
        None => (text, None),
    };
    match addr.trim().parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len.unwrap_or(32) >= 8 && len.unwrap_or(32) <= 32,
        Ok(std::net::IpAddr::V6(_)) => len.unwrap_or(128) >= 32 && len.unwrap_or(128) <= 128,
        Err(_) => false,
    }
}

/// True for an ARN pattern that stays inside one account: no wildcard at all, or wildcards
/// only after a fixed 12-digit account (`arn:aws:iam::111122223333:role/deploy-*`).
fn arn_confined(arn: &str) -> bool {
    let wild = |t: &str| t.contains('*') || t.contains('?') || t.contains("${");
    if !wild(arn) {
        return !arn.is_empty();
    }
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    parts.len() == 6
        && parts[..5].iter().all(|p| !wild(p))
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
}

/// True when every value is fixed: a string without wildcards (`*`, `?`, a policy variable
/// `${…}`), an `aws:userid` not of the form `ROLEID:*`, or for `aws:SourceIp` a narrow CIDR.
fn fixed_values(key: &str, values: &Value) -> bool {
    let list = items(Some(values));
    !list.is_empty()
        && list.iter().all(|v| match v.as_str() {
            Some(s) if key == "aws:sourceip" => narrow_cidr(s),
            Some(s) if key == "aws:principalarn" || key == "aws:sourcearn" => arn_confined(s),
            Some(s) => !s.is_empty() && !s.contains('*') && !s.contains('?') && !s.contains("${"),
            // Numbers and booleans are fixed (an account id written as a number).
            None => v.is_number() || v.is_boolean(),
        })
}

/// True when a condition confines the statement to known callers: at least one confining
/// operator (see [`CONFINING_OPERATORS`]) compares a restricting key (see
/// [`RESTRICTING_CONDITION_KEYS`]) with fixed values only. Conditions are ANDed, so one such
/// comparison is enough; every other comparison can only narrow the statement further.
pub fn condition_restricts(condition: Option<&Value>) -> bool {
    let Some(Value::Object(operators)) = condition else {
        return false;
    };
    operators.iter().any(|(operator, keys)| {
        let op = operator.to_ascii_lowercase();
        let op = op.strip_prefix("foranyvalue:").unwrap_or(&op);
        if !CONFINING_OPERATORS.contains(&op) {
            return false;
        }
        keys.as_object().is_some_and(|keys| {
            keys.iter().any(|(k, values)| {
                let k = k.to_ascii_lowercase();
                RESTRICTING_CONDITION_KEYS.contains(&k.as_str()) && fixed_values(&k, values)
            })
        })
    })
}

/// True for an `Allow` statement that anyone may use: a wildcard principal, or `NotPrincipal`
/// (everyone but those named), without a condition that confines it.
pub fn is_public_statement(statement: &Value) -> bool {
    statement.get("Effect").and_then(Value::as_str) == Some("Allow")
        && (principal_is_public(statement.get("Principal"))
            || statement.get("NotPrincipal").is_some())
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

    fn with_condition(condition: Value) -> Value {
        json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*", "Condition": condition})
    }

    /// Conditions that name a restricting key but confine nothing: the statement stays public.
    #[test]
    fn no_op_conditions_do_not_make_a_statement_private() {
        for condition in [
            json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}),
            json!({"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "::/0"]}}),
            json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/1"}}),
            json!({"IpAddress": {"aws:SourceIp": "not-an-address"}}),
            json!({"NotIpAddress": {"aws:SourceIp": "192.0.2.0/24"}}),
            json!({"StringNotEquals": {"aws:SourceVpce": "vpce-1"}}),
            json!({"StringEqualsIfExists": {"aws:SourceVpce": "vpce-1"}}),
            json!({"StringLikeIfExists": {"aws:PrincipalOrgID": "o-abc"}}),
            json!({"ForAllValues:StringEquals": {"aws:PrincipalOrgPaths": "o-abc/r-1/"}}),
            json!({"Null": {"aws:SourceVpc": "false"}}),
            json!({"StringLike": {"aws:PrincipalArn": "*"}}),
            json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/admin"}}),
            json!({"StringLike": {"aws:SourceVpce": "vpce-*"}}),
            json!({"StringEquals": {"aws:SourceAccount": ""}}),
            json!({"StringEquals": {"aws:SourceAccount": []}}),
            json!({"StringEquals": {"aws:userid": "${aws:userid}"}}),
            json!({"StringEquals": {"s3:prefix": "home/"}}),
        ] {
            assert!(
                is_public_statement(&with_condition(condition.clone())),
                "{condition}"
            );
        }
    }

    #[test]
    fn confining_conditions_make_a_statement_private() {
        for condition in [
            json!({"IpAddress": {"aws:SourceIp": "192.0.2.0/24"}}),
            json!({"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "2001:db8::/32"]}}),
            json!({"StringEquals": {"aws:SourceVpce": "vpce-1"}}),
            json!({"ForAnyValue:StringEquals": {"aws:PrincipalOrgPaths": "o-abc/r-1/ou-2/"}}),
            json!({"StringEqualsIgnoreCase": {"AWS:PrincipalOrgID": "o-abc"}}),
            json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::111122223333:role/deploy-*"}}),
            json!({"ArnEquals": {"aws:SourceArn": "arn:aws:cloudfront::111122223333:distribution/E1"}}),
            json!({"StringEquals": {"aws:SourceAccount": 111122223333u64}}),
            // A no-op beside a confining comparison: conditions are ANDed.
            json!({"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}, "StringEquals": {"aws:SourceVpc": "vpc-1"}}),
        ] {
            assert!(
                !is_public_statement(&with_condition(condition.clone())),
                "{condition}"
            );
        }
    }

    #[test]
    fn wildcard_and_negated_principals_are_public() {
        for statement in [
            json!({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::*:root"}, "Action": "s3:GetObject"}),
            json!({"Effect": "Allow", "Principal": {"CanonicalUser": "*"}, "Action": "s3:GetObject"}),
            json!({"Effect": "Allow", "NotPrincipal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "s3:GetObject"}),
        ] {
            assert!(is_public_statement(&statement), "{statement}");
        }
        assert!(!is_public_statement(
            &json!({"Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject"})
        ));
    }
}
