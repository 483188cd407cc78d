//! Who acted, as a person or a workload, not as a credential: the [`Actor`] of an activity.
//!
//! Most activity in a real organization is not IAM users but role sessions — Identity Center
//! (SSO) permission sets, SAML and web-identity federation, CI roles, instance and Lambda roles.
//! Every session has its own ARN (`assumed-role/ROLE/SESSION`), so keying baselines by the ARN
//! makes each new session a stranger. The actor is what a baseline should follow:
//!
//! | CloudTrail says | actor | key |
//! |---|---|---|
//! | `IAMUser` | the user | the user ARN without its path; without an ARN (a failed console sign-in), the same, built from the account and user name |
//! | `Root` | the account's root | `arn:…:iam::ACCOUNT:root` |
//! | `AssumedRole` with `onBehalfOf.userId` (trusted identity propagation: an application acting for an Identity Center user) | the Identity Center user | `identity-center:USER-ID` |
//! | `AssumedRole` with `sessionContext.sourceIdentity` | the person it names (set by the IdP or the first caller, kept through role chaining) | `person:NAME` |
//! | `AssumedRole` of an `AWSReservedSSO_*` role issued under `/aws-reserved/sso.amazonaws.com/` | the Identity Center user: the session name is the user name | `person:NAME` |
//! | `AssumedRole` whose session name is an e-mail address | the person (SAML IdPs set `RoleSessionName` to the user's e-mail or UPN) | `person:NAME` |
//! | any other `AssumedRole` | the role: instance (`i-…`), Lambda, ECS, CI and service sessions are one workload | the role ARN, `arn:…:iam::ACCOUNT:role/NAME` |
//! | `IdentityCenterUser` | the Identity Center user (`userName`, else `onBehalfOf.userId`) | `person:NAME` or `identity-center:USER-ID` |
//! | `Unknown` with a `userName` and no ARN (Identity Center's older records of its sign-ins, portal and tokens) | the Identity Center user | `person:NAME` |
//! | `SAMLUser` (the `AssumeRoleWithSAML` call itself) | the SAML subject | `person:NAME` |
//! | `WebIdentityUser` (the `AssumeRoleWithWebIdentity` call itself) | the identity provider's subject | `web-identity:PROVIDER-SUBJECT` |
//! | `FederatedUser` (`GetFederationToken`) | the federated user | its ARN |
//! | `AWSService` | the service (`invokedBy`) | `service:NAME` |
//! | `AWSAccount` | the other account | `account:ACCOUNT` |
//! | `AWSAccount` of `ANONYMOUS_PRINCIPAL` (an unauthenticated request) | nobody in particular | `anonymous` |
//! | anything else | the principal | [`Principal::key`] |
//!
//! Person names are compared without case (`Alice@Example.com` and `alice@example.com` are one
//! person), so a person's Monday console session and Tuesday CLI session share one baseline,
//! across accounts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::Principal;

/// What kind of actor acted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// An IAM user.
    User,
    /// A person behind role sessions or federation (SSO, SAML, source identity).
    Person,
    /// A role acting as a workload: its sessions are not told apart.
    Role,
    /// An account's root user.
    Root,
    /// A federated user (`GetFederationToken`) or a web-identity subject.
    Federated,
    /// An AWS service acting on its own.
    Service,
    /// A principal of another account (`AWSAccount`).
    Account,
    /// Nothing better is known: the principal itself.
    #[default]
    Unknown,
}

impl ActorKind {
    /// The label form (`user`, `person`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Person => "person",
            ActorKind::Role => "role",
            ActorKind::Root => "root",
            ActorKind::Federated => "federated",
            ActorKind::Service => "service",
            ActorKind::Account => "account",
            ActorKind::Unknown => "unknown",
        }
    }
}

/// Who acted: the key baselines, learning, suppression and partitioning follow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Actor {
    /// What kind of actor.
    pub kind: ActorKind,
    /// Stable key (see the module's table); empty only in activities written before actors
    /// existed (schema version 1), which readers resolve with [`Actor::of`].
    pub id: String,
    /// A human form: the person's or user's name, the role's name, the service.
    pub name: String,
    /// Which rule found it: `iam-user`, `root`, `on-behalf-of`, `source-identity`, `sso-session`,
    /// `session-email`, `role`, `identity-center`, `saml`, `web-identity`, `federated-user`,
    /// `service`, `account`, `anonymous`, `principal`.
    pub basis: String,
}

impl Actor {
    /// True when unset (an activity of schema version 1).
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    /// The actor behind `principal`.
    pub fn of(principal: &Principal) -> Actor {
        Actor::of_in(principal, None)
    }

    /// The actor of a record of `event_source` by `principal` (see [`Actor::of_in`]): also
    /// reads Identity Center's older records of its own sign-ins, portal calls and tokens
    /// (`signin.amazonaws.com`, `sso.amazonaws.com`, `sso-oauth.amazonaws.com`), which name the user as `type: Unknown`
    /// with a `userName` and no ARN — the same name as its permission-set sessions'. (Other
    /// services write `Unknown` too, and ingest writes it for a record with no type: only
    /// Identity Center's own records are read so.)
    pub fn of_event(principal: &Principal, partition: Option<&str>, event_source: &str) -> Actor {
        let name = principal.name.as_deref().unwrap_or_default();
        let legacy_identity_center = matches!(
            event_source,
            "signin.amazonaws.com" | "sso.amazonaws.com" | "sso-oauth.amazonaws.com"
        ) && principal.kind == "Unknown"
            && principal.arn.as_deref().unwrap_or_default().is_empty()
            && !name.trim().is_empty()
            && name != HIDDEN_USER_NAME
            && principal.on_behalf_of.as_deref() != Some(name);
        if legacy_identity_center {
            return Actor {
                kind: ActorKind::Person,
                id: format!("person:{}", name.trim().to_lowercase()),
                name: name.trim().to_string(),
                basis: "identity-center".into(),
            };
        }
        Actor::of_in(principal, partition)
    }

    /// The actor behind `principal`, in `partition` (the activity's: `aws` when not known) for
    /// the keys built without an ARN to go on.
    pub fn of_in(principal: &Principal, partition: Option<&str>) -> Actor {
        let make = |kind, id: String, name: &str, basis: &str| Actor {
            kind,
            id,
            name: name.to_string(),
            basis: basis.to_string(),
        };
        let person = |name: &str, basis: &str| {
            make(
                ActorKind::Person,
                format!("person:{}", name.trim().to_lowercase()),
                name.trim(),
                basis,
            )
        };
        let arn = principal.arn.as_deref().unwrap_or_default();
        let account = principal.account_id.as_deref().unwrap_or_default();
        let name = principal.name.as_deref().unwrap_or_default();
        if principal.is_root {
            let id = if arn.is_empty() {
                let partition = partition.filter(|p| !p.is_empty()).unwrap_or("aws");
                format!("arn:{partition}:iam::{account}:root")
            } else {
                arn.to_string()
            };
            return make(ActorKind::Root, id, "root", "root");
        }
        match principal.kind.as_str() {
            "IAMUser" if !arn.is_empty() => {
                let user = arn.rsplit('/').next().unwrap_or(name);
                // Without the path: IAM names are unique in an account whatever the path, and
                // a failed sign-in or a termination names the user without one.
                let parts: Vec<&str> = arn.splitn(6, ':').collect();
                let id = match parts[..] {
                    ["arn", partition, "iam", "", account, resource]
                        if resource.starts_with("user/") && !user.is_empty() =>
                    {
                        ["arn:", partition, ":iam::", account, ":user/", user].concat()
                    }
                    _ => arn.to_string(),
                };
                make(ActorKind::User, id, user, "iam-user")
            }
            // No ARN (a failed console sign-in, some exports): the user's ARN without a path
            // (IAM names are unique in an account, and the path is not written), so its failures
            // meet its successes; else the principal's own key, still a user.
            "IAMUser" => {
                let known = crate::contract::is_account_id(account)
                    && !name.trim().is_empty()
                    && name != HIDDEN_USER_NAME;
                let id = if known {
                    let partition = partition.filter(|p| !p.is_empty()).unwrap_or("aws");
                    ["arn:", partition, ":iam::", account, ":user/", name].concat()
                } else {
                    principal.key()
                };
                make(ActorKind::User, id, name, "iam-user")
            }
            "AssumedRole" => {
                // Trusted identity propagation: an application's role acting for an Identity
                // Center user (Athena, Redshift, Q, S3 Access Grants) is that user.
                if let Some(user_id) = principal
                    .on_behalf_of
                    .as_deref()
                    .filter(|u| !u.trim().is_empty())
                {
                    return make(
                        ActorKind::Person,
                        format!("identity-center:{user_id}"),
                        user_id,
                        "on-behalf-of",
                    );
                }
                if let Some(source) = principal
                    .source_identity
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                {
                    return person(source, "source-identity");
                }
                let Some((role, session)) = assumed_role(arn) else {
                    return fallback(principal);
                };
                // Identity Center's roles live under a path only it can use; a role merely
                // *named* `AWSReservedSSO_…` elsewhere is anyone's and proves nothing.
                let by_identity_center = principal
                    .session_issuer_arn
                    .as_deref()
                    .is_some_and(|issuer| issuer.contains(":role/aws-reserved/sso.amazonaws.com/"));
                if role.starts_with("AWSReservedSSO_") && by_identity_center && !session.is_empty()
                {
                    return person(session, "sso-session");
                }
                if looks_like_email(session) {
                    return person(session, "session-email");
                }
                let partition = arn.split(':').nth(1).unwrap_or("aws");
                let role_account = arn.split(':').nth(4).unwrap_or(account);
                // Joined, not `format!`ed: half of all activities are a role's (≈ 1 % of
                // normalizing a record).
                let id = ["arn:", partition, ":iam::", role_account, ":role/", role].concat();
                make(ActorKind::Role, id, role, "role")
            }
            "IdentityCenterUser" => {
                // `name` is `userName` when the record has one, else the `onBehalfOf` user id.
                let user_id = principal.on_behalf_of.as_deref();
                if !name.trim().is_empty() && Some(name) != user_id {
                    return person(name, "identity-center");
                }
                match user_id.filter(|u| !u.is_empty()) {
                    Some(user_id) => make(
                        ActorKind::Person,
                        format!("identity-center:{user_id}"),
                        user_id,
                        "identity-center",
                    ),
                    None => fallback(principal),
                }
            }
            "SAMLUser" if !name.trim().is_empty() => person(name, "saml"),
            "WebIdentityUser" => {
                let subject = principal
                    .principal_id
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or(name);
                if subject.is_empty() {
                    return fallback(principal);
                }
                make(
                    ActorKind::Federated,
                    format!("web-identity:{subject}"),
                    name,
                    "web-identity",
                )
            }
            "FederatedUser" if !arn.is_empty() => make(
                ActorKind::Federated,
                arn.to_string(),
                name,
                "federated-user",
            ),
            "AWSService" => {
                let service = principal
                    .invoked_by
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or(name);
                if service.is_empty() {
                    return fallback(principal);
                }
                make(
                    ActorKind::Service,
                    format!("service:{service}"),
                    service,
                    "service",
                )
            }
            // CloudTrail's name for an unauthenticated request (a public bucket read by anyone):
            // nobody in particular, not an account.
            "AWSAccount" if account == "ANONYMOUS_PRINCIPAL" => make(
                ActorKind::Unknown,
                "anonymous".into(),
                "anonymous",
                "anonymous",
            ),
            "AWSAccount" if !account.is_empty() => make(
                ActorKind::Account,
                format!("account:{account}"),
                account,
                "account",
            ),
            _ => fallback(principal),
        }
    }
}

/// The user name CloudTrail writes for a console sign-in to a user name that does not exist.
const HIDDEN_USER_NAME: &str = "HIDDEN_DUE_TO_SECURITY_REASONS";

/// The principal itself, when no rule applies.
fn fallback(principal: &Principal) -> Actor {
    Actor {
        kind: ActorKind::Unknown,
        id: principal.key(),
        name: principal.display(),
        basis: "principal".into(),
    }
}

/// `(ROLE, SESSION)` of `arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION`.
fn assumed_role(arn: &str) -> Option<(&str, &str)> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let rest = resource.strip_prefix("assumed-role/")?;
    let (role, session) = rest.split_once('/').unwrap_or((rest, ""));
    (!role.is_empty()).then_some((role, session))
}

/// `name@domain.tld`: how SAML identity providers name sessions after the person.
fn looks_like_email(session: &str) -> bool {
    match session.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assumed(arn: &str) -> Principal {
        let account = arn.split(':').nth(4).unwrap_or_default();
        let role = arn
            .split_once("assumed-role/")
            .and_then(|(_, r)| r.split('/').next())
            .unwrap_or_default();
        // As CloudTrail writes the issuer: Identity Center's roles under their reserved path.
        let issuer = if role.starts_with("AWSReservedSSO_") {
            format!("arn:aws:iam::{account}:role/aws-reserved/sso.amazonaws.com/us-west-2/{role}")
        } else {
            format!("arn:aws:iam::{account}:role/{role}")
        };
        Principal {
            kind: "AssumedRole".into(),
            arn: Some(arn.into()),
            name: arn.split_once("assumed-role/").map(|(_, r)| r.to_string()),
            account_id: Some(account.to_string()),
            session_issuer_arn: Some(issuer),
            ..Principal::default()
        }
    }

    /// One person's sessions on different days, through different permission sets and
    /// accounts, are one actor; a name's case does not matter.
    #[test]
    fn sso_sessions_are_the_person() {
        let monday = Actor::of(&assumed(
            "arn:aws:sts::187901811700:assumed-role/AWSReservedSSO_DevAdmin_635426549a280cc6/nicholas.hakmiller",
        ));
        let tuesday = Actor::of(&assumed(
            "arn:aws:sts::222222222222:assumed-role/AWSReservedSSO_ReadOnly_0123456789abcdef/Nicholas.Hakmiller",
        ));
        assert_eq!(monday.kind, ActorKind::Person);
        assert_eq!(monday.id, "person:nicholas.hakmiller");
        assert_eq!(monday.id, tuesday.id);
        assert_eq!(monday.basis, "sso-session");
        // A role someone *named* like Identity Center's, outside its reserved path, is a role.
        let mut fake = assumed(
            "arn:aws:sts::1:assumed-role/AWSReservedSSO_Admin_0123456789abcdef/nicholas.hakmiller",
        );
        fake.session_issuer_arn =
            Some("arn:aws:iam::1:role/AWSReservedSSO_Admin_0123456789abcdef".into());
        assert_eq!(Actor::of(&fake).kind, ActorKind::Role);
    }

    #[test]
    fn source_identity_names_the_person_through_chained_roles() {
        let mut chained =
            assumed("arn:aws:sts::1:assumed-role/DeployRole/botocore-session-1700000000");
        chained.source_identity = Some("Alice@Example.com".into());
        let actor = Actor::of(&chained);
        assert_eq!(
            (actor.kind, actor.id.as_str()),
            (ActorKind::Person, "person:alice@example.com")
        );
        assert_eq!(actor.basis, "source-identity");
        // The same person through SAML with her e-mail as the session name.
        let saml = Actor::of(&assumed(
            "arn:aws:sts::1:assumed-role/OktaAdmins/alice@example.com",
        ));
        assert_eq!(saml.id, actor.id);
        assert_eq!(saml.basis, "session-email");
    }

    /// Workload sessions — an instance profile, a Lambda function, CI, the SDK's default names —
    /// are the role, whatever the session is called.
    #[test]
    fn workload_sessions_are_the_role() {
        for session in [
            "i-0a1b2c3d4e5f67890",
            "my-function",
            "GitHubActions",
            "botocore-session-1712",
            "1712345678901234567",
        ] {
            let actor = Actor::of(&assumed(&format!(
                "arn:aws:sts::111111111111:assumed-role/app-role/{session}"
            )));
            assert_eq!(actor.kind, ActorKind::Role, "{session}");
            assert_eq!(actor.id, "arn:aws:iam::111111111111:role/app-role");
            assert_eq!(actor.name, "app-role");
        }
        let gov = Actor::of(&assumed("arn:aws-us-gov:sts::1:assumed-role/r/s"));
        assert_eq!(gov.id, "arn:aws-us-gov:iam::1:role/r");
        // An '@' is not enough: `name@host` without a domain is a workload's name.
        assert_eq!(
            Actor::of(&assumed("arn:aws:sts::1:assumed-role/r/job@runner")).kind,
            ActorKind::Role
        );
    }

    #[test]
    fn users_root_and_services() {
        let user = Actor::of(&Principal {
            kind: "IAMUser".into(),
            arn: Some("arn:aws:iam::1:user/ops/bob".into()),
            name: Some("bob".into()),
            ..Principal::default()
        });
        // Without its path: IAM names are unique in an account, and a failed sign-in (or a
        // termination's fact) names the user without one.
        assert_eq!(
            (user.kind, user.id.as_str(), user.name.as_str()),
            (ActorKind::User, "arn:aws:iam::1:user/bob", "bob")
        );
        let root = Actor::of(&Principal {
            kind: "Root".into(),
            account_id: Some("1".into()),
            is_root: true,
            ..Principal::default()
        });
        assert_eq!(
            (root.kind, root.id.as_str()),
            (ActorKind::Root, "arn:aws:iam::1:root")
        );
        let service = Actor::of(&Principal {
            kind: "AWSService".into(),
            invoked_by: Some("cloudtrail.amazonaws.com".into()),
            ..Principal::default()
        });
        assert_eq!(service.id, "service:cloudtrail.amazonaws.com");
        let other = Actor::of(&Principal {
            kind: "AWSAccount".into(),
            account_id: Some("999999999999".into()),
            principal_id: Some("AIDAEXAMPLE".into()),
            ..Principal::default()
        });
        assert_eq!(
            (other.kind, other.id.as_str()),
            (ActorKind::Account, "account:999999999999")
        );
    }

    /// Identity Center's older records of its own sign-ins and portal calls name the user as
    /// `type: Unknown` with a `userName` (no ARN): that user, joined with its permission-set
    /// sessions (whose session name is the same user name).
    #[test]
    fn identity_center_users_in_the_older_shape() {
        let principal = |name: Option<&str>| Principal {
            kind: "Unknown".into(),
            account_id: Some("123456789012".into()),
            principal_id: Some("123456789012".into()),
            name: name.map(str::to_string),
            ..Principal::default()
        };
        let legacy =
            |name: Option<&str>| Actor::of_event(&principal(name), None, "signin.amazonaws.com");
        // Another service's `Unknown` (WorkDocs, a record with no type) is not read so.
        let elsewhere = Actor::of_event(
            &principal(Some("alice@example.com")),
            None,
            "workdocs.amazonaws.com",
        );
        assert_eq!(elsewhere.basis, "principal");
        let portal = Actor::of_event(
            &principal(Some("alice@example.com")),
            None,
            "sso.amazonaws.com",
        );
        assert_eq!(portal.id, "person:alice@example.com");
        // The command line's token, issued or refreshed, is the same person's.
        let token = Actor::of_event(
            &principal(Some("alice@example.com")),
            None,
            "sso-oauth.amazonaws.com",
        );
        assert_eq!(token.id, "person:alice@example.com");
        let alice = legacy(Some("Alice@Example.com"));
        assert_eq!(
            (alice.kind, alice.id.as_str(), alice.basis.as_str()),
            (
                ActorKind::Person,
                "person:alice@example.com",
                "identity-center"
            )
        );
        assert_eq!(legacy(None).basis, "principal");
        assert_eq!(legacy(Some(" ")).basis, "principal");
        assert_eq!(legacy(Some(HIDDEN_USER_NAME)).basis, "principal");
        // With an ARN it is not Identity Center's shape.
        let with_arn = Actor::of_event(
            &Principal {
                kind: "Unknown".into(),
                arn: Some("arn:aws:iam::123456789012:user/x".into()),
                name: Some("alice".into()),
                ..Principal::default()
            },
            None,
            "signin.amazonaws.com",
        );
        assert_eq!(with_arn.basis, "principal");
    }

    #[test]
    fn federation_and_identity_center() {
        let idc = Actor::of(&Principal {
            kind: "IdentityCenterUser".into(),
            account_id: Some("1".into()),
            name: Some("94482488-3041-7026-18f3-be45837cd0e4".into()),
            on_behalf_of: Some("94482488-3041-7026-18f3-be45837cd0e4".into()),
            ..Principal::default()
        });
        assert_eq!(
            idc.id,
            "identity-center:94482488-3041-7026-18f3-be45837cd0e4"
        );
        let named = Actor::of(&Principal {
            kind: "IdentityCenterUser".into(),
            name: Some("Nicholas.Hakmiller".into()),
            on_behalf_of: Some("u-1".into()),
            ..Principal::default()
        });
        assert_eq!(named.id, "person:nicholas.hakmiller");
        let saml = Actor::of(&Principal {
            kind: "SAMLUser".into(),
            name: Some("alice@example.com".into()),
            principal_id: Some("SAMLProvider:alice@example.com".into()),
            ..Principal::default()
        });
        assert_eq!(saml.id, "person:alice@example.com");
        let web = Actor::of(&Principal {
            kind: "WebIdentityUser".into(),
            name: Some("repo:org/app:ref:refs/heads/main".into()),
            principal_id: Some("token.actions.githubusercontent.com:sts.amazonaws.com:repo:org/app:ref:refs/heads/main".into()),
            ..Principal::default()
        });
        assert_eq!(web.kind, ActorKind::Federated);
        assert!(web
            .id
            .starts_with("web-identity:token.actions.githubusercontent.com:"));
        let fed = Actor::of(&Principal {
            kind: "FederatedUser".into(),
            arn: Some("arn:aws:sts::1:federated-user/carol".into()),
            name: Some("carol".into()),
            ..Principal::default()
        });
        assert_eq!(
            (fed.kind, fed.id.as_str()),
            (ActorKind::Federated, "arn:aws:sts::1:federated-user/carol")
        );
    }

    /// An application's role acting for an Identity Center user (trusted identity propagation:
    /// Athena, Redshift, Q, S3 Access Grants) acts as that user, not as the application.
    #[test]
    fn a_session_on_behalf_of_an_identity_center_user_is_that_user() {
        let mut first = assumed("arn:aws:sts::111111111111:assumed-role/AthenaTipRole/s1");
        first.on_behalf_of = Some("u-1".into());
        let mut second = first.clone();
        second.on_behalf_of = Some("u-2".into());
        let (first, second) = (Actor::of(&first), Actor::of(&second));
        assert_ne!(first.id, second.id);
        let direct = Actor::of(&Principal {
            kind: "IdentityCenterUser".into(),
            account_id: Some("111111111111".into()),
            name: Some("u-1".into()),
            on_behalf_of: Some("u-1".into()),
            ..Principal::default()
        });
        assert_eq!(first.id, direct.id);
        assert_eq!(first.kind, ActorKind::Person);
        assert_eq!(first.basis, "on-behalf-of");
        // Without it, the application's sessions are its role.
        let plain = Actor::of(&assumed(
            "arn:aws:sts::111111111111:assumed-role/AthenaTipRole/s1",
        ));
        assert_eq!(plain.id, "arn:aws:iam::111111111111:role/AthenaTipRole");
    }

    /// A failed console sign-in names an IAM user without its ARN: it is the same user as
    /// the successful one, on the same baseline and partition.
    #[test]
    fn an_iam_user_without_an_arn_is_the_user_of_the_arn() {
        let failed = Principal {
            kind: "IAMUser".into(),
            account_id: Some("111111111111".into()),
            principal_id: Some("AIDAEXAMPLE".into()),
            name: Some("alice".into()),
            ..Principal::default()
        };
        let signed_in = Actor::of(&Principal {
            arn: Some("arn:aws:iam::111111111111:user/alice".into()),
            ..failed.clone()
        });
        assert_eq!(Actor::of(&failed).id, signed_in.id);
        assert_eq!(Actor::of(&failed).kind, ActorKind::User);
        assert_eq!(
            Actor::of_in(&failed, Some("aws-us-gov")).id,
            "arn:aws-us-gov:iam::111111111111:user/alice"
        );
        // A name CloudTrail hides (a sign-in for a user that does not exist) is nobody's.
        let hidden = Principal {
            name: Some("HIDDEN_DUE_TO_SECURITY_REASONS".into()),
            ..failed.clone()
        };
        assert_eq!(Actor::of(&hidden).id, hidden.key());
        let no_account = Principal {
            account_id: None,
            ..failed
        };
        assert_eq!(Actor::of(&no_account).id, no_account.key());
    }

    /// Anonymous requests (a public bucket read by anyone on the internet) are nobody in
    /// particular: not an account, and never a person returning from a silence.
    #[test]
    fn anonymous_requests_are_nobody_in_particular() {
        let anonymous = Actor::of(&Principal {
            kind: "AWSAccount".into(),
            account_id: Some("ANONYMOUS_PRINCIPAL".into()),
            principal_id: Some(String::new()),
            ..Principal::default()
        });
        assert_eq!(
            (
                anonymous.kind,
                anonymous.id.as_str(),
                anonymous.basis.as_str()
            ),
            (ActorKind::Unknown, "anonymous", "anonymous")
        );
    }

    /// Records without enough to go on fall back to the principal's own key, never to an
    /// empty or shared key.
    #[test]
    fn thin_records_fall_back_to_the_principal() {
        let bare = Principal {
            kind: "AssumedRole".into(),
            account_id: Some("1".into()),
            principal_id: Some("AROAEXAMPLE:session".into()),
            ..Principal::default()
        };
        let actor = Actor::of(&bare);
        assert_eq!(actor.kind, ActorKind::Unknown);
        assert_eq!(actor.id, bare.key());
        let unknown = Actor::of(&Principal {
            kind: "Unknown".into(),
            ..Principal::default()
        });
        assert!(!unknown.id.is_empty());
        // An empty source identity is no identity.
        let mut blank = assumed("arn:aws:sts::1:assumed-role/r/s");
        blank.source_identity = Some(" ".into());
        assert_eq!(Actor::of(&blank).kind, ActorKind::Role);
    }
}
