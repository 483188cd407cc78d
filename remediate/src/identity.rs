//! Who an action is about: an IAM user, a role (directly or through a session) or the root
//! user, parsed from an ARN. Pure, so the planner can reason about principals without reaching
//! the IAM client.

/// Who an action is about, parsed from its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An IAM user.
    User {
        /// Account id.
        account: String,
        /// User name (without path).
        name: String,
    },
    /// An IAM role, directly or through one of its sessions.
    Role {
        /// Account id.
        account: String,
        /// Role name (without path).
        name: String,
    },
    /// The account root user: never touched.
    Root {
        /// Account id.
        account: String,
    },
}

impl Identity {
    /// Parses a user, role, assumed-role or root ARN.
    pub fn parse(arn: &str) -> Result<Identity, String> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(format!("`{arn}` is not an IAM principal ARN"));
        }
        let (partition, service, account, resource) =
            (parts[1], parts[2], parts[4].to_string(), parts[5]);
        // A principal always names its partition and its twelve-digit account: an ARN that
        // does not (a crafted record's) would be read as remediate's own account, where the
        // protections written for the account it claims to be in do not apply.
        if !is_partition(partition) {
            return Err(format!("`{arn}` names no AWS partition"));
        }
        if !trailguard_common::contract::is_account_id(&account) {
            return Err(format!("`{arn}` names no account"));
        }
        let last = |path: &str| path.rsplit('/').next().unwrap_or_default().to_string();
        match (service, resource.split_once('/')) {
            ("iam", None) if resource == "root" => Ok(Identity::Root { account }),
            ("iam", Some(("user", path))) if !path.is_empty() => Ok(Identity::User {
                account,
                name: last(path),
            }),
            ("iam", Some(("role", path))) if !path.is_empty() => Ok(Identity::Role {
                account,
                name: last(path),
            }),
            ("sts", Some(("assumed-role", rest))) => match rest.split_once('/') {
                Some((role, _session)) if !role.is_empty() => Ok(Identity::Role {
                    account,
                    name: role.to_string(),
                }),
                _ => Err(format!("`{arn}` names no role")),
            },
            _ => Err(format!(
                "`{arn}` is not a user, role or role session this action can act on"
            )),
        }
    }

    /// The partition of a principal ARN (`aws`, `aws-us-gov`, ...), when it names one.
    pub fn partition_of(arn: &str) -> Option<&str> {
        arn.split(':').nth(1).filter(|p| is_partition(p))
    }

    /// Account id.
    pub fn account(&self) -> &str {
        match self {
            Identity::User { account, .. }
            | Identity::Role { account, .. }
            | Identity::Root { account } => account,
        }
    }
}

/// An AWS partition's name: `aws`, or `aws-` and lower-case letters, digits and hyphens
/// (`aws-cn`, `aws-us-gov`, `aws-iso-b`, ...).
fn is_partition(p: &str) -> bool {
    p == "aws"
        || p.strip_prefix("aws-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}
