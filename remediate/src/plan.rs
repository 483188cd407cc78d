//! `plan`: which actions an alert gets, in which mode, and which are refused. Pure.
//! Also the pure half of "make bucket private": the changes a bucket's current state needs.

use serde_json::Value;
use trailguard_common::contract::{ActionKind, Mode, RequestedAction};
use trailguard_common::s3::{is_public_statement, items, PUBLIC_GRANTEE_URIS};
use trailguard_common::Alert;

use crate::RemediateSettings;

/// What remediate decided for one requested action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The action and its target.
    pub action: RequestedAction,
    /// The mode it runs in.
    pub mode: Mode,
    /// Why it must not run at all (protected target), if so.
    pub refusal: Option<String>,
}

/// Role names protected in remediate's home accounts (its own and `aws.accounts`): Trailguard's
/// own roles. Only there: anyone who can create a role in another account of an organization
/// could otherwise name it `trailguard-x` and be immune.
pub const BUILTIN_PROTECTED_ROLE_NAMES: &[&str] = &["trailguard-*"];

/// Who remediate must never touch, besides `remediate.protected_principals`: every account's
/// root user (by parse, not pattern), its own identity, the role it assumes in other accounts,
/// and [`BUILTIN_PROTECTED_ROLE_NAMES`] in its home accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protection {
    /// ARN patterns (`*` wildcards) of remediate's own identities: its credentials' ARN (a
    /// session as its role) and the role from `aws.role_arn_template` (`{account}` as `*`).
    pub own: Vec<String>,
    /// Accounts where a protection written as a name (not an ARN) applies: the credentials'
    /// own account and `aws.accounts`.
    pub home_accounts: Vec<String>,
}

impl Protection {
    /// The protection of remediate acting as `caller_arn` in `caller_account`, which also
    /// assumes `roles` (the pattern of `aws.role_arn_template`) into `accounts`.
    pub fn new(
        caller_account: &str,
        caller_arn: &str,
        roles: Option<String>,
        accounts: &[String],
    ) -> Self {
        let mut own = vec![caller_arn.to_string()];
        if let Ok(crate::identity::Identity::Role { account, name }) =
            crate::identity::Identity::parse(caller_arn)
        {
            let partition = crate::identity::Identity::partition_of(caller_arn).unwrap_or("aws");
            own.push(format!("arn:{partition}:iam::{account}:role/{name}"));
        }
        own.extend(roles);
        let mut home_accounts = vec![caller_account.to_string()];
        home_accounts.extend(accounts.iter().cloned());
        Protection { own, home_accounts }
    }
}

/// The account and name of an IAM principal ARN, lower-cased, for name patterns: `user/NAME`,
/// `role/NAME` (a role session as its role; paths dropped).
fn account_and_name(arn: &str) -> Option<(String, String)> {
    match crate::identity::Identity::parse(arn).ok()? {
        crate::identity::Identity::User { account, name } => {
            Some((account, format!("user/{name}").to_ascii_lowercase()))
        }
        crate::identity::Identity::Role { account, name } => {
            Some((account, format!("role/{name}").to_ascii_lowercase()))
        }
        crate::identity::Identity::Root { .. } => None,
    }
}

/// Why a principal must not be touched, if so. Patterns starting with `arn:` match the ARN
/// (account included; a role session also as its role, a path also without it); any other
/// pattern is a name (`break-glass`, `role/ops-*`, `user/ci`) and matches only principals of
/// the home accounts. Case-insensitive, as IAM names are.
pub fn principal_refusal(
    arn: &str,
    settings: &RemediateSettings,
    protection: &Protection,
) -> Option<String> {
    match crate::identity::Identity::parse(arn) {
        Ok(crate::identity::Identity::Root { account }) => {
            Some(format!("the root user of {account} is never touched"))
        }
        // Not a principal remediate can tell the protections of (no account, no partition):
        // nothing is done to it.
        Err(why) => Some(format!("not a principal remediate acts on: {why}")),
        Ok(_) => pattern_refusal(arn, settings, protection),
    }
}

/// The forms of an IAM principal ARN pattern to compare: the pattern, and for a user or role
/// pattern with a path and a whole name, the same without the path (IAM names are unique in an
/// account whatever their path, and a role session's ARN never carries its role's path). A
/// pattern choosing by path (`role/ops/*`) has no such form: its name part would choose every
/// role — a target whose path is unknown is judged when the action runs, with its ARN as IAM
/// has it.
fn pattern_forms(pattern: &str) -> (String, Option<String>) {
    let lower = pattern.to_ascii_lowercase();
    let parts: Vec<&str> = lower.splitn(6, ':').collect();
    let pathless = match parts[..] {
        ["arn", partition, "iam", "", account, resource] => resource
            .split_once('/')
            .filter(|(kind, path)| matches!(*kind, "user" | "role") && path.contains('/'))
            .map(|(kind, path)| {
                let name = path.rsplit('/').next().unwrap_or_default();
                (
                    format!("arn:{partition}:iam::{account}:{kind}/{name}"),
                    name.contains('*'),
                )
            }),
        _ => None,
    };
    match pathless {
        Some((form, false)) => (lower, Some(form)),
        _ => (lower, None),
    }
}

/// [`principal_refusal`] without the root rule (a bucket grant to an account's root stands for
/// the account, not for the root user).
fn pattern_refusal(
    arn: &str,
    settings: &RemediateSettings,
    protection: &Protection,
) -> Option<String> {
    let mut arns = vec![arn.to_ascii_lowercase()];
    let partition = crate::identity::Identity::partition_of(arn).unwrap_or("aws");
    // The ARN as `aws` too: a pattern copied from the documentation's `arn:aws:` examples
    // protects in GovCloud and China as well, path and all.
    if partition != "aws" {
        if let Some((_, rest)) = arn.split_once(':').and_then(|(_, r)| r.split_once(':')) {
            arns.push(format!("arn:aws:{rest}").to_ascii_lowercase());
        }
    }
    // The target without its path, in its own partition and as `aws` (a pattern copied from
    // the documentation's `arn:aws:` examples still protects in GovCloud and China).
    let kind_and_name = match crate::identity::Identity::parse(arn) {
        Ok(crate::identity::Identity::Role { account, name }) => Some((account, "role", name)),
        Ok(crate::identity::Identity::User { account, name }) => Some((account, "user", name)),
        _ => None,
    };
    if let Some((account, kind, name)) = kind_and_name {
        for p in [partition, "aws"] {
            arns.push(format!("arn:{p}:iam::{account}:{kind}/{name}").to_ascii_lowercase());
        }
    }
    let home =
        account_and_name(arn).filter(|(account, _)| protection.home_accounts.contains(account));
    let builtin_names = BUILTIN_PROTECTED_ROLE_NAMES
        .iter()
        .map(|n| format!("role/{n}"));
    let patterns = protection
        .own
        .iter()
        .cloned()
        .chain(builtin_names)
        .chain(settings.protected_principals.iter().cloned());
    for pattern in patterns {
        let (lower, pathless) = pattern_forms(&pattern);
        let hit = if lower.starts_with("arn:") {
            arns.iter().any(|n| {
                wildcard_match(&lower, n) || pathless.as_ref().is_some_and(|p| wildcard_match(p, n))
            })
        } else if let Some((_, name)) = &home {
            // `NAME` alone matches a user or role of that name; `user/…`, `role/…` one kind.
            wildcard_match(&lower, name)
                || (!lower.contains('/')
                    && name
                        .split_once('/')
                        .is_some_and(|(_, n)| wildcard_match(&lower, n)))
        } else {
            false
        };
        if hit {
            return Some(format!(
                "principal {arn} is protected (matches `{pattern}`)"
            ));
        }
    }
    None
}

/// Whether a protection may choose users or roles by their path: an IAM ARN pattern with a
/// wildcard in its resource (`…:role/breakglass/*`, `…:role/breakglass*`, `…:*/ops/*` — a
/// wildcard matches `/` too). Then a principal action is judged again, when it runs, with the
/// principal's ARN as IAM has it: a session's ARN never says its role's path, and a user's or
/// role's may be out of date (moved since, or re-created).
pub fn path_decides(settings: &RemediateSettings, protection: &Protection) -> bool {
    protection
        .own
        .iter()
        .chain(&settings.protected_principals)
        .any(|pattern| {
            let lower = pattern.to_ascii_lowercase();
            let parts: Vec<&str> = lower.splitn(6, ':').collect();
            matches!(parts[..], ["arn", _, "iam" | "*", _, _, resource] if resource.contains('*'))
        })
}

/// Why a bucket must not be touched, if so: `protected_buckets` compare case-insensitively.
pub fn bucket_refusal(bucket: &str, settings: &RemediateSettings) -> Option<String> {
    let lower = bucket.to_ascii_lowercase();
    settings
        .protected_buckets
        .iter()
        .find(|pattern| wildcard_match(&pattern.to_ascii_lowercase(), &lower))
        .map(|pattern| format!("bucket {bucket} is protected (matches `{pattern}`)"))
}

/// Why a snapshot or image must not be unshared, if so: `protected_resources` match its id
/// (the part after the ARN's resource type) or its whole ARN, case-insensitively.
pub fn resource_refusal(arn: &str, settings: &RemediateSettings) -> Option<String> {
    let lower = arn.to_ascii_lowercase();
    // EC2 writes snapshot and image ARNs without the account (`arn:aws:ec2:R::image/ami-…`):
    // a pattern copied from AWS must match too.
    let parts: Vec<&str> = lower.splitn(6, ':').collect();
    let without_account = match parts[..] {
        [arn, partition, service, region, _, resource] => {
            format!("{arn}:{partition}:{service}:{region}::{resource}")
        }
        _ => lower.clone(),
    };
    let id = lower
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(lower.as_str())
        .to_string();
    settings
        .protected_resources
        .iter()
        .find(|pattern| {
            let p = pattern.to_ascii_lowercase();
            wildcard_match(&p, &lower)
                || wildcard_match(&p, &without_account)
                || wildcard_match(&p, &id)
        })
        .map(|pattern| format!("resource {arn} is protected (matches `{pattern}`)"))
}

/// Why removing `grantee` from a bucket policy is refused, if so: every principal it would
/// strip (an account id strips every principal of that account) is checked against the
/// protections; an account's root stands for the account there and is not itself protected.
pub fn strip_refusal(
    policy: &Value,
    grantee: &str,
    settings: &RemediateSettings,
    protection: &Protection,
) -> Option<String> {
    stripped_principals(policy, grantee)
        .iter()
        .find_map(|p| pattern_refusal(p, settings, protection))
        .map(|why| format!("removing {grantee} would also remove a protected principal: {why}"))
}

/// Decides every action an alert asks for.
pub fn plan(alert: &Alert, settings: &RemediateSettings, protection: &Protection) -> Vec<Decision> {
    alert
        .actions
        .iter()
        .map(|action| Decision {
            action: action.clone(),
            mode: settings.mode_for(&alert.policy_id, action.kind),
            refusal: refusal(action, settings, protection),
        })
        .collect()
}

/// Why `action` must not run at all (a protected target), if so. Judged when the alert is
/// planned and again when the action runs, with what remediate then knows of itself.
pub fn refusal(
    action: &RequestedAction,
    settings: &RemediateSettings,
    protection: &Protection,
) -> Option<String> {
    match action.kind {
        ActionKind::RequireSignIn | ActionKind::SuspendUser => {
            principal_refusal(&action.target.id, settings, protection)
        }
        ActionKind::MakeBucketPrivate | ActionKind::RemoveCollaborator => {
            bucket_refusal(&action.target.id, settings).or_else(|| {
                // Never cut a protected principal (Trailguard's own roles) out of a
                // bucket. An account-id grantee is checked against the policy when
                // the action runs (what it would strip is known only then).
                action
                    .target
                    .grantee
                    .as_deref()
                    .filter(|g| g.starts_with("arn:"))
                    // An account's root as a grantee stands for the account (what it
                    // would strip is judged when the action runs), not the root user.
                    .and_then(|g| pattern_refusal(g, settings, protection))
            })
        }
        ActionKind::UnshareSnapshot | ActionKind::UnshareImage => {
            resource_refusal(&action.target.id, settings)
        }
        _ => None,
    }
}

/// Action budgets per kind and target account (`remediate.rate_limits`), counted on wall-clock
/// time so that they can be rebuilt from the action records: every instance notes the records
/// it reads (its own at start-up, the others' as they are published), so the budget is shared by
/// all instances and survives restarts. An action counts once, by its record id, whether the
/// record is its `started` or its final one.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Per (kind, account): the latest uses (epoch ms, record id), oldest first; at most `max`.
    used:
        std::collections::HashMap<(ActionKind, String), std::collections::VecDeque<(i64, String)>>,
}

/// Distinct (kind, account) budgets kept at most; beyond, the oldest-used ones are forgotten
/// (accounts, not attacker-chosen values, name them: action targets come from signed alerts).
const MAX_BUDGETS: usize = 100_000;

impl RateLimiter {
    fn window(limit: Option<&crate::RateLimit>) -> Option<(usize, i64)> {
        let limit = limit.filter(|l| l.max > 0)?;
        Some((
            limit.max as usize,
            i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX),
        ))
    }

    fn uses(
        &mut self,
        kind: ActionKind,
        account: &str,
        per_ms: i64,
        now_ms: i64,
    ) -> &mut std::collections::VecDeque<(i64, String)> {
        if self.used.len() >= MAX_BUDGETS && !self.used.contains_key(&(kind, account.to_string())) {
            self.used
                .retain(|_, q| q.back().is_some_and(|(t, _)| now_ms - t < per_ms));
        }
        let used = self.used.entry((kind, account.to_string())).or_default();
        while used.front().is_some_and(|(t, _)| now_ms - t >= per_ms) {
            used.pop_front();
        }
        used
    }

    /// Notes an action of `kind` on `account` that a record shows was taken at `at_ms` (epoch
    /// ms). The same record id is counted once.
    pub fn note(
        &mut self,
        kind: ActionKind,
        account: &str,
        limit: Option<&crate::RateLimit>,
        id: &str,
        at_ms: i64,
        now_ms: i64,
    ) {
        let Some((max, per_ms)) = Self::window(limit) else {
            return;
        };
        if now_ms - at_ms >= per_ms {
            return;
        }
        let used = self.uses(kind, account, per_ms, now_ms);
        if used.iter().any(|(_, seen)| seen == id) {
            return;
        }
        let at = used.partition_point(|(t, _)| *t <= at_ms);
        used.insert(at, (at_ms, id.to_string()));
        while used.len() > max {
            used.pop_front();
        }
    }

    /// Takes one action of `kind` on `account` at `now_ms` for the record `id` if the budget
    /// allows; otherwise says why not, and when the budget frees up (epoch ms).
    pub fn take(
        &mut self,
        kind: ActionKind,
        account: &str,
        limit: Option<&crate::RateLimit>,
        id: &str,
        now_ms: i64,
    ) -> Result<(), (String, i64)> {
        let Some((max, per_ms)) = Self::window(limit) else {
            return Ok(());
        };
        let used = self.uses(kind, account, per_ms, now_ms);
        if used.iter().any(|(_, seen)| seen == id) {
            // Taken already (an earlier attempt of the same action).
            return Ok(());
        }
        if used.len() >= max {
            let frees_at = used.front().map_or(now_ms, |(t, _)| t + per_ms);
            return Err((
                format!(
                    "rate limit reached: at most {} {} per {} in account {account}",
                    max,
                    kind.as_str(),
                    humantime::format_duration(std::time::Duration::from_millis(per_ms as u64))
                ),
                frees_at,
            ));
        }
        used.push_back((now_ms, id.to_string()));
        Ok(())
    }
}

/// Matches `text` against a pattern where `*` stands for any run of characters.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A bucket's public-exposure state, as read from S3.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketState {
    /// The four public-access-block flags, `None` when no block is configured.
    pub public_access_block: Option<[bool; 4]>,
    /// Grantee URIs of the ACL's group grants.
    pub acl_group_uris: Vec<String>,
    /// The bucket policy, when there is one.
    pub policy: Option<Value>,
}

/// One change "make bucket private" makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Turn on all four public-access-block flags.
    BlockPublicAccess,
    /// Reset the ACL to the canned `private` ACL (the owner keeps full control).
    ResetAcl,
    /// Replace the policy with this one (the public statements removed).
    PutPolicy(Value),
    /// Delete the policy: every statement was public.
    DeletePolicy,
}

impl Change {
    /// The API call and a description, for the action record.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Change::BlockPublicAccess => (
                "s3:PutPublicAccessBlock",
                "turn on BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy, RestrictPublicBuckets".into(),
            ),
            Change::ResetAcl => ("s3:PutBucketAcl", "reset the ACL to private (owner full control only)".into()),
            Change::PutPolicy(p) => (
                "s3:PutBucketPolicy",
                format!("remove public statements, keep {} other statement(s)", items(p.get("Statement")).len()),
            ),
            Change::DeletePolicy => ("s3:DeleteBucketPolicy", "delete the policy: all its statements were public".into()),
        }
    }
}

/// The changes that make a bucket in `state` private. Empty when it already is.
pub fn make_private_changes(state: &BucketState) -> Vec<Change> {
    let mut changes = Vec::new();
    if state.public_access_block != Some([true; 4]) {
        changes.push(Change::BlockPublicAccess);
    }
    if state
        .acl_group_uris
        .iter()
        .any(|uri| PUBLIC_GRANTEE_URIS.contains(&uri.as_str()))
    {
        changes.push(Change::ResetAcl);
    }
    if let Some(policy) = &state.policy {
        let statements = items(policy.get("Statement"));
        let kept: Vec<Value> = statements
            .iter()
            .filter(|s| !is_public_statement(s))
            .map(|s| (*s).clone())
            .collect();
        if kept.len() < statements.len() {
            if kept.is_empty() {
                changes.push(Change::DeletePolicy);
            } else {
                let mut policy = policy.clone();
                policy["Statement"] = Value::Array(kept);
                changes.push(Change::PutPolicy(policy));
            }
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> RemediateSettings {
        RemediateSettings {
            protected_principals: vec!["arn:aws:iam::*:user/break-glass".into()],
            ..RemediateSettings::default()
        }
    }

    fn protection() -> Protection {
        Protection {
            own: vec!["arn:aws:iam::*:role/OrgAdmin".into()],
            home_accounts: vec!["111111111111".into()],
        }
    }

    #[test]
    fn protected_principals_are_refused() {
        let mut s = settings();
        s.protected_principals.push("ci-deployer".into());
        s.protected_principals.push("role/ops-*".into());
        let p = protection();
        for arn in [
            "arn:aws:iam::111111111111:root",
            "arn:aws:iam::999999999999:root",
            "arn:aws:iam::111111111111:user/break-glass",
            "arn:aws:iam::999999999999:user/break-glass",
            "arn:aws:iam::111111111111:role/trailguard-remediate",
            "arn:aws:sts::111111111111:assumed-role/trailguard-remediate/session",
            "arn:aws:sts::111111111111:assumed-role/OrgAdmin/alice",
            "arn:aws:sts::999999999999:assumed-role/OrgAdmin/alice",
            "arn:aws:iam::111111111111:user/ops/Break-Glass",
            "arn:aws:iam::111111111111:role/team/trailguard-reader",
            "arn:aws:iam::111111111111:user/CI-Deployer",
            "arn:aws:iam::111111111111:role/ci-deployer",
            "arn:aws:sts::111111111111:assumed-role/ops-admin/bob",
        ] {
            assert!(principal_refusal(arn, &s, &p).is_some(), "{arn}");
        }
        // Names protect only in the home accounts: a look-alike elsewhere in the organization
        // is not immune. An explicit ARN pattern says which accounts it means.
        for arn in [
            "arn:aws:iam::111111111111:user/alice",
            "arn:aws:iam::999999999999:role/trailguard-remediate",
            "arn:aws:sts::999999999999:assumed-role/trailguard-x/s",
            "arn:aws:iam::999999999999:user/ci-deployer",
            "arn:aws:iam::999999999999:role/ops-admin",
            "arn:aws:iam::111111111111:user/ops-admin",
        ] {
            assert_eq!(principal_refusal(arn, &s, &p), None, "{arn}");
        }
    }

    #[test]
    fn a_protection_with_a_path_or_in_another_partition_covers_the_role_s_sessions() {
        // What an operator copies from the IAM console carries the role's path; a session's
        // ARN never does. IAM names are unique in an account, whatever the path.
        let s = RemediateSettings {
            protected_principals: vec![
                "arn:aws:iam::*:role/breakglass/BreakGlassAdmin".into(),
                "arn:aws-us-gov:iam::*:role/GovAdmin".into(),
                "arn:aws:iam::444444444444:role/ops/*".into(),
            ],
            ..RemediateSettings::default()
        };
        let p = protection();
        for arn in [
            "arn:aws:sts::111111111111:assumed-role/BreakGlassAdmin/oncall",
            "arn:aws:iam::111111111111:role/BreakGlassAdmin",
            "arn:aws:iam::111111111111:role/breakglass/BreakGlassAdmin",
            "arn:aws-us-gov:sts::222222222222:assumed-role/GovAdmin/alice",
            "arn:aws-us-gov:iam::222222222222:role/GovAdmin",
            // A pattern written for `aws` (as the documentation's examples are) protects the
            // same name in the other partitions too.
            "arn:aws-us-gov:sts::222222222222:assumed-role/BreakGlassAdmin/x",
            "arn:aws-cn:iam::222222222222:role/BreakGlassAdmin",
            "arn:aws:iam::444444444444:role/ops/AnyRole",
        ] {
            assert!(principal_refusal(arn, &s, &p).is_some(), "{arn}");
        }
        for arn in [
            "arn:aws:sts::111111111111:assumed-role/BreakGlassAdminX/oncall",
            "arn:aws:sts::222222222222:assumed-role/GovAdmin/alice",
            "arn:aws:iam::444444444444:role/dev/AnyRole",
            "arn:aws:sts::555555555555:assumed-role/AnyRole/s",
            // A session does not say its role's path: a pattern choosing roles by path is
            // judged when the action runs, with the role IAM has (`path_decides`).
            "arn:aws:sts::444444444444:assumed-role/AnyRole/s",
        ] {
            assert_eq!(principal_refusal(arn, &s, &p), None, "{arn}");
        }
        assert!(path_decides(&s, &p));
        let by_name = RemediateSettings {
            protected_principals: vec![
                "arn:aws:iam::*:role/breakglass/BreakGlassAdmin".into(),
                "role/ops-*".into(),
            ],
            ..RemediateSettings::default()
        };
        assert!(
            !path_decides(&by_name, &p),
            "no IAM call when no path decides"
        );
        for pattern in [
            "arn:aws:iam::*:role/breakglass*",
            "arn:aws:iam::*:role/*breakglass*",
            "arn:aws:iam::*:*/breakglass/*",
            "arn:aws:iam::111111111111:*",
        ] {
            let s = RemediateSettings {
                protected_principals: vec![pattern.into()],
                ..RemediateSettings::default()
            };
            assert!(path_decides(&s, &p), "{pattern}");
        }
        // In GovCloud, as IAM gives a role under a path, against an `arn:aws:` pattern.
        let ops = RemediateSettings {
            protected_principals: vec!["arn:aws:iam::*:role/ops/*".into()],
            ..RemediateSettings::default()
        };
        let gov = "arn:aws-us-gov:iam::222222222222:role/ops/AnyRole";
        assert!(principal_refusal(gov, &ops, &p).is_some());
        // Remediate's own role, in GovCloud and with a path, through its sessions.
        let p = Protection::new(
            "111111111111",
            "arn:aws-us-gov:sts::111111111111:assumed-role/Runner/i-0abc",
            Some("arn:aws-us-gov:iam::*:role/security/TrailguardRemediator".into()),
            &[],
        );
        let s = RemediateSettings::default();
        for arn in [
            "arn:aws-us-gov:iam::111111111111:role/Runner",
            "arn:aws-us-gov:sts::222222222222:assumed-role/TrailguardRemediator/s",
        ] {
            assert!(principal_refusal(arn, &s, &p).is_some(), "{arn}");
        }
    }

    #[test]
    fn a_principal_that_names_no_account_is_refused() {
        // A crafted ARN without an account must not be read as remediate's own account, where
        // its own identity would not match it.
        let p = Protection::new(
            "111111111111",
            "arn:aws:iam::111111111111:user/bot",
            None,
            &[],
        );
        let s = settings();
        for arn in [
            "arn:aws:iam:::user/bot",
            "arn:aws:iam:::user/break-glass",
            "arn:aws:iam:::role/trailguard-x",
            "arn:aws:sts:::assumed-role/trailguard-x/s",
            "arn:aws:iam::11111111111:user/bot",
        ] {
            assert!(principal_refusal(arn, &s, &p).is_some(), "{arn}");
        }
    }

    #[test]
    fn own_identity_and_home_come_from_the_caller() {
        let p = Protection::new(
            "111111111111",
            "arn:aws:sts::111111111111:assumed-role/SecOpsRunner/i-0abc",
            Some("arn:aws:iam::*:role/Remediator".into()),
            &["222222222222".into()],
        );
        let s = RemediateSettings::default();
        for arn in [
            "arn:aws:iam::111111111111:role/SecOpsRunner",
            "arn:aws:sts::111111111111:assumed-role/SecOpsRunner/other",
            "arn:aws:iam::333333333333:role/Remediator",
            "arn:aws:iam::222222222222:role/trailguard-ingest",
        ] {
            assert!(principal_refusal(arn, &s, &p).is_some(), "{arn}");
        }
        assert_eq!(
            principal_refusal("arn:aws:iam::333333333333:role/trailguard-ingest", &s, &p),
            None
        );
    }

    #[test]
    fn an_account_root_grantee_is_removable() {
        let mut alert: Alert = serde_json::from_str(include_str!("../../tests/tests/alert.json"))
            .unwrap_or_else(|e| panic!("{e}"));
        alert.actions = vec![trailguard_common::contract::RequestedAction {
            kind: ActionKind::RemoveCollaborator,
            target: trailguard_common::contract::Target {
                kind: "s3-bucket".into(),
                id: "customer-exports".into(),
                account_id: Some("111111111111".into()),
                grantee: Some("arn:aws:iam::999988887777:root".into()),
            },
        }];
        let decisions = plan(&alert, &settings(), &protection());
        assert_eq!(decisions[0].refusal, None);
    }

    #[test]
    fn buckets_are_protected_case_insensitively() {
        let s = RemediateSettings {
            protected_buckets: vec!["Corporate-*".into()],
            ..RemediateSettings::default()
        };
        assert!(bucket_refusal("corporate-docs", &s).is_some());
        assert!(bucket_refusal("CORPORATE-docs", &s).is_some());
        assert_eq!(bucket_refusal("public-site", &s), None);
    }

    #[test]
    fn an_account_grantee_never_strips_a_protected_principal() {
        let policy = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::222222222222:root", "arn:aws:iam::222222222222:role/BreakGlass"]}, "Action": "s3:GetObject"},
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:role/replication"}, "Action": "s3:ReplicateObject"}
        ]});
        let mut s = RemediateSettings {
            protected_principals: vec!["arn:aws:iam::*:role/BreakGlass".into()],
            ..RemediateSettings::default()
        };
        let why = strip_refusal(&policy, "222222222222", &s, &protection()).unwrap_or_default();
        assert!(why.contains("BreakGlass"), "{why}");
        // Removing the one role alone is fine; so is the whole account when nothing in it is
        // protected (its root stands for the account).
        assert_eq!(
            strip_refusal(
                &policy,
                "arn:aws:iam::222222222222:role/replication",
                &s,
                &protection()
            ),
            None
        );
        s.protected_principals.clear();
        assert_eq!(
            strip_refusal(&policy, "222222222222", &s, &protection()),
            None
        );
        assert_eq!(stripped_principals(&policy, "222222222222").len(), 3);
    }

    #[test]
    fn rate_limit_slides_per_account_and_counts_each_action_once() {
        let mut r = RateLimiter::default();
        let limit = crate::RateLimit {
            max: 2,
            per: std::time::Duration::from_secs(60),
        };
        let kind = ActionKind::SuspendUser;
        let t0 = 1_000_000;
        assert!(r.take(kind, "1", Some(&limit), "a", t0).is_ok());
        // The same action again (a retry) does not take a second slot.
        assert!(r.take(kind, "1", Some(&limit), "a", t0 + 1).is_ok());
        assert!(r.take(kind, "1", Some(&limit), "b", t0 + 2).is_ok());
        let Err((why, frees_at)) = r.take(kind, "1", Some(&limit), "c", t0 + 3) else {
            panic!("the third action is refused");
        };
        assert!(
            why.contains("at most 2 suspend_user per 1m in account 1"),
            "{why}"
        );
        assert_eq!(frees_at, t0 + 60_000);
        // Another account, another kind: their own budgets; unlimited kinds always pass.
        assert!(r.take(kind, "2", Some(&limit), "c", t0 + 3).is_ok());
        assert!(r
            .take(ActionKind::RequireSignIn, "1", Some(&limit), "c", t0)
            .is_ok());
        assert!(r.take(ActionKind::Notify, "1", None, "c", t0).is_ok());
        // A minute later the first slot is free again.
        assert!(r.take(kind, "1", Some(&limit), "c", t0 + 60_000).is_ok());
    }

    #[test]
    fn budgets_rebuild_from_records() {
        let mut r = RateLimiter::default();
        let limit = crate::RateLimit {
            max: 2,
            per: std::time::Duration::from_secs(60),
        };
        let kind = ActionKind::MakeBucketPrivate;
        let now = 10_000_000;
        // Two actions another instance took (started and applied records of one action count
        // once), one too old to count.
        r.note(kind, "1", Some(&limit), "x", now - 5_000, now);
        r.note(kind, "1", Some(&limit), "x", now - 4_000, now);
        r.note(kind, "1", Some(&limit), "old", now - 61_000, now);
        assert!(r.take(kind, "1", Some(&limit), "y", now).is_ok());
        assert!(r.take(kind, "1", Some(&limit), "z", now).is_err());
        // Noting what this instance took itself changes nothing.
        r.note(kind, "1", Some(&limit), "y", now, now);
        assert_eq!(r.used[&(kind, "1".to_string())].len(), 2);
    }

    #[test]
    fn protected_resources_match_by_id_or_arn() {
        let mut s = settings();
        s.protected_resources = vec![
            "ami-0PUBLISHED*".into(),
            "arn:aws:rds:*:*:snapshot:golden-*".into(),
        ];
        let ami = "arn:aws:ec2:us-east-1:111122223333:image/ami-0published12345678";
        assert!(resource_refusal(ami, &s).is_some());
        let golden = "arn:aws:rds:eu-west-1:111122223333:snapshot:golden-2026";
        assert!(resource_refusal(golden, &s).is_some());
        // The pattern for a DB snapshot's ARN does not reach a cluster snapshot of that name.
        let cluster = "arn:aws:rds:eu-west-1:111122223333:cluster-snapshot:golden-2026";
        assert!(resource_refusal(cluster, &s).is_none());
        let other = "arn:aws:ec2:us-east-1:111122223333:snapshot/snap-0123456789abcdef0";
        assert!(resource_refusal(other, &s).is_none());
        // An ARN as EC2 writes it (no account) protects the image detect names with one.
        s.protected_resources = vec!["arn:aws:ec2:us-east-1::image/ami-0published12345678".into()];
        assert!(resource_refusal(ami, &s).is_some());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("trailguard-*", "trailguard-logs"));
        assert!(wildcard_match("*-logs", "audit-logs"));
        assert!(wildcard_match("a*b*c", "a-x-b-y-c"));
        assert!(!wildcard_match("a*b*c", "a-x-c"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exact2"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }

    #[test]
    fn private_bucket_needs_nothing() {
        let state = BucketState {
            public_access_block: Some([true; 4]),
            ..BucketState::default()
        };
        assert!(make_private_changes(&state).is_empty());
    }

    #[test]
    fn public_bucket_gets_every_change_and_keeps_other_statements() {
        let keep = json!({"Sid": "Logs", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject"});
        let state = BucketState {
            public_access_block: Some([false, true, true, true]),
            acl_group_uris: vec!["http://acs.amazonaws.com/groups/global/AllUsers".into()],
            policy: Some(
                json!({"Version": "2012-10-17", "Statement": [keep.clone(), {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}),
            ),
        };
        let changes = make_private_changes(&state);
        assert_eq!(changes[0], Change::BlockPublicAccess);
        assert_eq!(changes[1], Change::ResetAcl);
        assert_eq!(
            changes[2],
            Change::PutPolicy(json!({"Version": "2012-10-17", "Statement": [keep]}))
        );
    }

    #[test]
    fn all_public_policy_is_deleted() {
        let state = BucketState {
            public_access_block: Some([true; 4]),
            acl_group_uris: vec![],
            policy: Some(
                json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}}),
            ),
        };
        assert_eq!(make_private_changes(&state), vec![Change::DeletePolicy]);
    }
}

/// True when the policy principal value `p` names `grantee` (a principal ARN, an account id or
/// a canonical user id). An account id matches the account's root and every principal in it;
/// an assumed-role session matches its role.
pub fn principal_matches(p: &str, grantee: &str) -> bool {
    if p == grantee {
        return true;
    }
    if trailguard_common::contract::is_account_id(grantee) {
        return p == format!("arn:aws:iam::{grantee}:root") || p.split(':').nth(4) == Some(grantee);
    }
    // arn:aws:sts::A:assumed-role/R/S → arn:aws:iam::A:role/[path/]R
    if let Some((prefix, rest)) = grantee.split_once(":assumed-role/") {
        let account = prefix.rsplit(':').next().unwrap_or_default();
        let role = rest.split('/').next().unwrap_or_default();
        return p.starts_with(&format!("arn:aws:iam::{account}:role/"))
            && p.rsplit('/').next() == Some(role);
    }
    false
}

/// The principal values of `Allow` statements that removing `grantee` would strip.
pub fn stripped_principals(policy: &Value, grantee: &str) -> Vec<String> {
    let mut out = Vec::new();
    for st in items(policy.get("Statement")) {
        if st.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        let Some(Value::Object(principal)) = st.get("Principal") else {
            continue;
        };
        for key in ["AWS", "CanonicalUser"] {
            for v in items(principal.get(key)) {
                if let Some(p) = v.as_str().filter(|p| principal_matches(p, grantee)) {
                    if !out.iter().any(|o| o == p) {
                        out.push(p.to_string());
                    }
                }
            }
        }
    }
    out
}

/// The bucket policy without `grantee`: it is removed from every statement's `AWS` and
/// `CanonicalUser` principals; a statement left with no principal is dropped. `None` when
/// nothing names the grantee; `Some(None)` when no statement is left (delete the policy).
pub fn policy_without(policy: &Value, grantee: &str) -> Option<Option<Value>> {
    let statements = items(policy.get("Statement"));
    let mut changed = false;
    let mut kept = Vec::new();
    for st in statements {
        let mut st = st.clone();
        // Only grants are edited: taking the grantee out of a Deny would widen its access.
        if st.get("Effect").and_then(Value::as_str) != Some("Allow") {
            kept.push(st);
            continue;
        }
        let Some(Value::Object(principal)) = st.get_mut("Principal") else {
            kept.push(st);
            continue;
        };
        for key in ["AWS", "CanonicalUser"] {
            let Some(value) = principal.get(key).cloned() else {
                continue;
            };
            let values: Vec<Value> = match value {
                Value::Array(a) => a,
                other => vec![other],
            };
            let left: Vec<Value> = values
                .iter()
                .filter(|v| !v.as_str().is_some_and(|p| principal_matches(p, grantee)))
                .cloned()
                .collect();
            if left.len() != values.len() {
                changed = true;
                match left.len() {
                    0 => {
                        principal.remove(key);
                    }
                    1 => {
                        principal.insert(key.into(), left[0].clone());
                    }
                    _ => {
                        principal.insert(key.into(), Value::Array(left));
                    }
                }
            }
        }
        if principal.is_empty() {
            continue;
        }
        kept.push(st);
    }
    if !changed {
        return None;
    }
    if kept.is_empty() {
        return Some(None);
    }
    let mut policy = policy.clone();
    policy["Statement"] = Value::Array(kept);
    Some(Some(policy))
}

/// True when the ACL grant (as recorded: `type`, `id`, `email`, `uri`) is `grantee`'s.
pub fn grant_matches(grant: &Value, grantee: &str) -> bool {
    let field = |k: &str| grant.get(k).and_then(Value::as_str);
    field("id") == Some(grantee) || field("email").is_some_and(|e| e.eq_ignore_ascii_case(grantee))
}

#[cfg(test)]
mod collaborator_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn principals_match_by_arn_account_and_role() {
        assert!(principal_matches(
            "arn:aws:iam::222222222222:root",
            "222222222222"
        ));
        assert!(principal_matches(
            "arn:aws:iam::222222222222:user/bob",
            "222222222222"
        ));
        assert!(principal_matches("222222222222", "222222222222"));
        assert!(!principal_matches(
            "arn:aws:iam::333333333333:root",
            "222222222222"
        ));
        assert!(principal_matches(
            "arn:aws:iam::222222222222:role/ops/Reader",
            "arn:aws:sts::222222222222:assumed-role/Reader/bob"
        ));
        assert!(!principal_matches(
            "arn:aws:iam::222222222222:role/Writer",
            "arn:aws:sts::222222222222:assumed-role/Reader/bob"
        ));
        assert!(principal_matches(
            "arn:aws:iam::2:user/bob",
            "arn:aws:iam::2:user/bob"
        ));
    }

    #[test]
    fn the_grantee_leaves_the_policy_and_empty_statements_go() {
        let policy = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Both", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam::222222222222:root", "arn:aws:iam::444444444444:root"]}, "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"},
            {"Sid": "Only", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::222222222222:root"}, "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b"},
            {"Sid": "Service", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"}, "Action": "s3:PutObject", "Resource": "arn:aws:s3:::b/*"}
        ]});
        let Some(Some(out)) = policy_without(&policy, "222222222222") else {
            panic!("expected a changed policy");
        };
        let sts = out["Statement"].as_array().cloned().unwrap_or_default();
        assert_eq!(sts.len(), 2);
        assert_eq!(sts[0]["Principal"]["AWS"], "arn:aws:iam::444444444444:root");
        assert_eq!(sts[1]["Sid"], "Service");
        // A Deny naming the grantee stays as it is.
        let deny = json!({"Statement": [{"Effect": "Deny", "Principal": {"AWS": "222222222222"}, "Action": "s3:*"}]});
        assert_eq!(policy_without(&deny, "222222222222"), None);
        assert_eq!(policy_without(&policy, "555555555555"), None);
        let only = json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "222222222222"}, "Action": "s3:*"}]});
        assert_eq!(policy_without(&only, "222222222222"), Some(None));
    }

    #[test]
    fn grants_match_by_canonical_id_or_email() {
        let g = json!({"type": "CanonicalUser", "id": "abc123", "permission": "READ"});
        assert!(grant_matches(&g, "abc123"));
        assert!(!grant_matches(&g, "abc"));
        let e = json!({"type": "AmazonCustomerByEmail", "email": "Bob@Example.com"});
        assert!(grant_matches(&e, "bob@example.com"));
    }
}
