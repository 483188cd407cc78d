//! Taking back a share: an EBS snapshot, an RDS DB or cluster snapshot, or an AMI that was made
//! public or shared with an account (an AMI also with an organization or organizational unit)
//! outside. The action removes the grantees its alert names (one action per share), in the
//! resource's own account and region, after recording every permission the resource had; undo
//! adds them back.
//!
//! The target is the resource's ARN (its region and account are part of it), with the kind
//! detect gave it, and the grantees, comma-separated: `all` (public), account ids, or
//! organization or OU ARNs. [`Shared::parse`] and [`Grantee::parse`] refuse anything else before any call.

use aws_sdk_ec2::operation::RequestId as _;
use aws_sdk_ec2::types::{
    ImageAttributeName, LaunchPermission, LaunchPermissionModifications, OperationType,
    PermissionGroup, SnapshotAttributeName,
};
use serde_json::{json, Value};
use trailguard_common::aws::CallError;
use trailguard_common::contract::{ActionKind, ActionOutcome, ActionStep, Target};
use trailguard_common::s3::items;

use crate::intent::Intent;
use crate::{ActionError, ActionResult};

/// The kinds of shared resource, as in the target's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// `ebs-snapshot`: `arn:aws:ec2:REGION:ACCOUNT:snapshot/snap-…`.
    EbsSnapshot,
    /// `ami`: `arn:aws:ec2:REGION:ACCOUNT:image/ami-…`.
    Image,
    /// `rds-snapshot`: `arn:aws:rds:REGION:ACCOUNT:snapshot:NAME`.
    DbSnapshot,
    /// `rds-cluster-snapshot`: `arn:aws:rds:REGION:ACCOUNT:cluster-snapshot:NAME`.
    DbClusterSnapshot,
}

impl Store {
    /// The target kind naming it.
    pub fn kind(self) -> &'static str {
        match self {
            Store::EbsSnapshot => "ebs-snapshot",
            Store::Image => "ami",
            Store::DbSnapshot => "rds-snapshot",
            Store::DbClusterSnapshot => "rds-cluster-snapshot",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Store::EbsSnapshot => "EBS snapshot",
            Store::Image => "AMI",
            Store::DbSnapshot => "RDS snapshot",
            Store::DbClusterSnapshot => "RDS cluster snapshot",
        }
    }

    /// The mutating call, for steps and errors.
    fn call(self) -> &'static str {
        match self {
            Store::EbsSnapshot => "ec2:ModifySnapshotAttribute",
            Store::Image => "ec2:ModifyImageAttribute",
            Store::DbSnapshot => "rds:ModifyDBSnapshotAttribute",
            Store::DbClusterSnapshot => "rds:ModifyDBClusterSnapshotAttribute",
        }
    }

    /// Whether it is EC2's (else RDS's).
    pub fn is_ec2(self) -> bool {
        matches!(self, Store::EbsSnapshot | Store::Image)
    }
}

/// A shared resource named by an action's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// What it is.
    pub store: Store,
    /// The region it lives in.
    pub region: String,
    /// The account owning it.
    pub account: String,
    /// Its id (`snap-…`, `ami-…`) or RDS identifier.
    pub id: String,
    /// Its ARN, as the target gave it.
    pub arn: String,
}

fn is_account(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())
}

fn is_region(region: &str) -> bool {
    (4..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `prefix` followed by lower-case hex digits (`snap-0abc…`, `ami-0abc…`).
fn is_ec2_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|hex| {
        (8..=32).contains(&hex.len())
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// An RDS identifier: a letter, then letters, digits and single hyphens, at most 255.
fn is_rds_id(id: &str) -> bool {
    id.len() <= 255
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.ends_with('-')
        && !id.contains("--")
}

impl Shared {
    /// The resource `target` names for an action of `kind`: its kind must be one `kind` acts
    /// on, its id an ARN of that kind whose account is the target's account.
    pub fn parse(kind: ActionKind, target: &Target) -> Result<Shared, String> {
        let store = match (kind, target.kind.as_str()) {
            (ActionKind::UnshareSnapshot, "ebs-snapshot") => Store::EbsSnapshot,
            (ActionKind::UnshareSnapshot, "rds-snapshot") => Store::DbSnapshot,
            (ActionKind::UnshareSnapshot, "rds-cluster-snapshot") => Store::DbClusterSnapshot,
            (ActionKind::UnshareImage, "ami") => Store::Image,
            (kind, other) => {
                return Err(format!(
                    "{} does not act on a target of kind `{other}`",
                    kind.as_str()
                ))
            }
        };
        let bad = || format!("`{}` is not the ARN of an {}", target.id, store.what());
        let parts: Vec<&str> = target.id.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        let partition_ok = matches!(partition, "aws" | "aws-cn" | "aws-us-gov");
        if arn != "arn" || !partition_ok || !is_region(region) || !is_account(account) {
            return Err(bad());
        }
        let id = match store {
            Store::EbsSnapshot => resource
                .strip_prefix("snapshot/")
                .filter(|id| service == "ec2" && is_ec2_id(id, "snap-")),
            Store::Image => resource
                .strip_prefix("image/")
                .filter(|id| service == "ec2" && is_ec2_id(id, "ami-")),
            Store::DbSnapshot => resource
                .strip_prefix("snapshot:")
                .filter(|id| service == "rds" && is_rds_id(id)),
            Store::DbClusterSnapshot => resource
                .strip_prefix("cluster-snapshot:")
                .filter(|id| service == "rds" && is_rds_id(id)),
        }
        .ok_or_else(bad)?;
        // The account the action acts in is the target's; the ARN must agree, so that an
        // alert can never point the credentials of one account at another's resource.
        match target.account_id.as_deref() {
            Some(a) if a == account => {}
            Some(a) => {
                return Err(format!(
                    "the target's account {a} is not the account in its ARN ({account})"
                ))
            }
            None => return Err("the target names no account".into()),
        }
        Ok(Shared {
            store,
            region: region.to_string(),
            account: account.to_string(),
            id: id.to_string(),
            arn: target.id.clone(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {} in {} ({})",
            self.store.what(),
            self.id,
            self.account,
            self.region
        )
    }
}

/// Whom a share is with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grantee {
    /// Everyone: the resource is public (`all`).
    Everyone,
    /// An AWS account.
    Account(String),
    /// An organization, by ARN (AMIs only).
    Organization(String),
    /// An organizational unit, by ARN (AMIs only).
    OrganizationalUnit(String),
}

impl Grantee {
    /// The grantee a target names, for a resource of `store`.
    pub fn parse(grantee: &str, store: Store) -> Result<Grantee, String> {
        if grantee.eq_ignore_ascii_case("all") {
            return Ok(Grantee::Everyone);
        }
        if is_account(grantee) {
            return Ok(Grantee::Account(grantee.to_string()));
        }
        if store == Store::Image {
            let org = ["arn:aws:", "arn:aws-cn:", "arn:aws-us-gov:"]
                .iter()
                .find_map(|p| grantee.strip_prefix(p))
                .and_then(|rest| rest.strip_prefix("organizations::"))
                .and_then(|rest| {
                    let (account, path) = rest.split_once(':')?;
                    is_account(account).then_some(path)
                });
            let clean = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if let Some(path) = org {
                let parts: Vec<&str> = path.split('/').collect();
                match parts[..] {
                    ["organization", o] if o.starts_with("o-") && clean(o) => {
                        return Ok(Grantee::Organization(grantee.to_string()))
                    }
                    ["ou", o, ou]
                        if o.starts_with("o-")
                            && ou.starts_with("ou-")
                            && clean(o)
                            && clean(ou) =>
                    {
                        return Ok(Grantee::OrganizationalUnit(grantee.to_string()))
                    }
                    _ => {}
                }
            }
        }
        Err(format!(
            "`{grantee}` is not a grantee of an {} (all, an account id{})",
            store.what(),
            if store == Store::Image {
                ", an organization or OU ARN"
            } else {
                ""
            }
        ))
    }

    /// As on the wire and in undo data.
    pub fn as_str(&self) -> &str {
        match self {
            Grantee::Everyone => "all",
            Grantee::Account(id) => id,
            Grantee::Organization(arn) | Grantee::OrganizationalUnit(arn) => arn,
        }
    }

    fn describe(&self) -> String {
        match self {
            Grantee::Everyone => "everyone (public)".into(),
            Grantee::Account(id) => format!("account {id}"),
            Grantee::Organization(arn) => format!("organization {arn}"),
            Grantee::OrganizationalUnit(arn) => format!("organizational unit {arn}"),
        }
    }
}

/// The client a resource's calls go to, in its region and account.
#[derive(Debug, Clone)]
pub enum Api {
    /// EBS snapshots and AMIs.
    Ec2(aws_sdk_ec2::Client),
    /// RDS DB and cluster snapshots.
    Rds(aws_sdk_rds::Client),
}

/// Every grantee the resource is shared with now.
async fn read(api: &Api, shared: &Shared) -> Result<Vec<Grantee>, ActionError> {
    let mut out = Vec::new();
    match (api, shared.store) {
        (Api::Ec2(ec2), Store::EbsSnapshot) => {
            let call = "ec2:DescribeSnapshotAttribute";
            let got = ec2
                .describe_snapshot_attribute()
                .snapshot_id(&shared.id)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?;
            for p in got.create_volume_permissions() {
                if p.group() == Some(&PermissionGroup::All) {
                    out.push(Grantee::Everyone);
                }
                if let Some(id) = p.user_id() {
                    out.push(Grantee::Account(id.to_string()));
                }
            }
        }
        (Api::Ec2(ec2), Store::Image) => {
            let call = "ec2:DescribeImageAttribute";
            let got = ec2
                .describe_image_attribute()
                .image_id(&shared.id)
                .attribute(ImageAttributeName::LaunchPermission)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?;
            for p in got.launch_permissions() {
                if p.group() == Some(&PermissionGroup::All) {
                    out.push(Grantee::Everyone);
                }
                if let Some(id) = p.user_id() {
                    out.push(Grantee::Account(id.to_string()));
                }
                if let Some(arn) = p.organization_arn() {
                    out.push(Grantee::Organization(arn.to_string()));
                }
                if let Some(arn) = p.organizational_unit_arn() {
                    out.push(Grantee::OrganizationalUnit(arn.to_string()));
                }
            }
        }
        (Api::Rds(rds), Store::DbSnapshot) => {
            let call = "rds:DescribeDBSnapshotAttributes";
            let got = rds
                .describe_db_snapshot_attributes()
                .db_snapshot_identifier(&shared.id)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?;
            let attributes = got
                .db_snapshot_attributes_result()
                .map(|r| r.db_snapshot_attributes())
                .unwrap_or_default();
            for a in attributes
                .iter()
                .filter(|a| a.attribute_name() == Some("restore"))
            {
                out.extend(a.attribute_values().iter().map(|v| rds_grantee(v)));
            }
        }
        (Api::Rds(rds), Store::DbClusterSnapshot) => {
            let call = "rds:DescribeDBClusterSnapshotAttributes";
            let got = rds
                .describe_db_cluster_snapshot_attributes()
                .db_cluster_snapshot_identifier(&shared.id)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?;
            let attributes = got
                .db_cluster_snapshot_attributes_result()
                .map(|r| r.db_cluster_snapshot_attributes())
                .unwrap_or_default();
            for a in attributes
                .iter()
                .filter(|a| a.attribute_name() == Some("restore"))
            {
                out.extend(a.attribute_values().iter().map(|v| rds_grantee(v)));
            }
        }
        _ => return Err("the client does not serve this kind of resource".into()),
    }
    Ok(out)
}

fn rds_grantee(value: &str) -> Grantee {
    if value.eq_ignore_ascii_case("all") {
        Grantee::Everyone
    } else {
        Grantee::Account(value.to_string())
    }
}

/// Adds (`add`) or removes one grantee; the request id.
async fn change(
    api: &Api,
    shared: &Shared,
    grantee: &Grantee,
    add: bool,
) -> Result<Option<String>, ActionError> {
    let call = shared.store.call();
    let op = if add {
        OperationType::Add
    } else {
        OperationType::Remove
    };
    let request_id = match (api, shared.store) {
        (Api::Ec2(ec2), Store::EbsSnapshot) => {
            let req = ec2
                .modify_snapshot_attribute()
                .snapshot_id(&shared.id)
                .attribute(SnapshotAttributeName::CreateVolumePermission)
                .operation_type(op);
            let req = match grantee {
                Grantee::Everyone => req.group_names("all"),
                Grantee::Account(id) => req.user_ids(id),
                _ => return Err("an EBS snapshot is shared with accounts only".into()),
            };
            req.send()
                .await
                .map_err(|e| CallError::of(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        (Api::Ec2(ec2), Store::Image) => {
            let permission = match grantee {
                Grantee::Everyone => LaunchPermission::builder().group(PermissionGroup::All),
                Grantee::Account(id) => LaunchPermission::builder().user_id(id),
                Grantee::Organization(arn) => LaunchPermission::builder().organization_arn(arn),
                Grantee::OrganizationalUnit(arn) => {
                    LaunchPermission::builder().organizational_unit_arn(arn)
                }
            }
            .build();
            let modification = if add {
                LaunchPermissionModifications::builder().add(permission)
            } else {
                LaunchPermissionModifications::builder().remove(permission)
            }
            .build();
            ec2.modify_image_attribute()
                .image_id(&shared.id)
                .launch_permission(modification)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        (Api::Rds(rds), Store::DbSnapshot) => {
            let req = rds
                .modify_db_snapshot_attribute()
                .db_snapshot_identifier(&shared.id)
                .attribute_name("restore");
            let req = if add {
                req.values_to_add(grantee.as_str())
            } else {
                req.values_to_remove(grantee.as_str())
            };
            req.send()
                .await
                .map_err(|e| CallError::of(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        (Api::Rds(rds), Store::DbClusterSnapshot) => {
            let req = rds
                .modify_db_cluster_snapshot_attribute()
                .db_cluster_snapshot_identifier(&shared.id)
                .attribute_name("restore");
            let req = if add {
                req.values_to_add(grantee.as_str())
            } else {
                req.values_to_remove(grantee.as_str())
            };
            req.send()
                .await
                .map_err(|e| CallError::of(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        _ => return Err("the client does not serve this kind of resource".into()),
    };
    Ok(request_id)
}

/// Most grantees one action takes back.
pub const MAX_GRANTEES: usize = 100;

/// The grantees a target names, comma-separated (`all,999988887777`), for a resource of
/// `store`: at least one, at most [`MAX_GRANTEES`], each valid.
pub fn parse_grantees(list: &str, store: Store) -> Result<Vec<Grantee>, String> {
    let mut out: Vec<Grantee> = Vec::new();
    for item in list.split(',') {
        let grantee = Grantee::parse(item.trim(), store)?;
        if !out.contains(&grantee) {
            out.push(grantee);
        }
    }
    if out.len() > MAX_GRANTEES {
        return Err(format!(
            "{} grantees named; one action takes back at most {MAX_GRANTEES}",
            out.len()
        ));
    }
    Ok(out)
}

fn describe_all(grantees: &[Grantee]) -> String {
    grantees
        .iter()
        .map(Grantee::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

fn undo_data(shared: &Shared, removing: &[Grantee], prior: &[Grantee]) -> Value {
    json!({
        "resource": shared.arn,
        "kind": shared.store.kind(),
        "grantees": removing.iter().map(Grantee::as_str).collect::<Vec<_>>(),
        "shared_with": prior.iter().map(Grantee::as_str).collect::<Vec<_>>(),
    })
}

fn step(shared: &Shared, grantee: &Grantee, add: bool) -> ActionStep {
    ActionStep {
        call: shared.store.call().into(),
        description: if add {
            format!("add {} back to the permissions", grantee.describe())
        } else {
            format!(
                "remove {} from the {} permissions",
                grantee.describe(),
                shared.store.what()
            )
        },
        request_id: None,
    }
}

/// Removes `grantees` (those it is still shared with) from `shared`'s permissions, handing
/// every permission it had to `intent` first. With `dry_run`, reads and describes but changes
/// nothing. One action for the whole share: a share naming many accounts costs one of the
/// action's budget, not one per account.
pub async fn unshare_recorded(
    api: &Api,
    shared: &Shared,
    grantees: &[Grantee],
    dry_run: bool,
    intent: &dyn Intent,
) -> ActionResult {
    let prior = match read(api, shared).await {
        Ok(prior) => prior,
        Err(why) => return ActionResult::failed(why, Vec::new(), None),
    };
    let what = shared.describe();
    // Everyone first: the widest share goes first.
    let mut removing: Vec<Grantee> = grantees
        .iter()
        .filter(|g| prior.contains(g))
        .cloned()
        .collect();
    removing.sort_by_key(|g| *g != Grantee::Everyone);
    if removing.is_empty() {
        return ActionResult {
            outcome: ActionOutcome::AlreadyCompliant,
            detail: format!("{what} is not shared with {}", describe_all(grantees)),
            steps: Vec::new(),
            undo: None,
            retryable: false,
        };
    }
    let undo = undo_data(shared, &removing, &prior);
    let planned: Vec<ActionStep> = removing.iter().map(|g| step(shared, g, false)).collect();
    if dry_run {
        return ActionResult {
            outcome: ActionOutcome::DryRun,
            detail: format!("would stop sharing {what} with {}", describe_all(&removing)),
            steps: planned,
            undo: Some(undo),
            retryable: false,
        };
    }
    if !intent.record(&undo, &planned).await {
        return ActionResult::failed(ActionError::NotRecorded, Vec::new(), None);
    }
    let mut steps = Vec::new();
    for (grantee, mut step) in removing.iter().zip(planned) {
        match change(api, shared, grantee, false).await {
            Ok(request_id) => step.request_id = request_id,
            Err(why) => {
                let note = format!(" (after {} of {} changes)", steps.len(), removing.len());
                return ActionResult::failed(why.noting(&note), steps, Some(undo));
            }
        }
        steps.push(step);
    }
    ActionResult {
        outcome: ActionOutcome::Applied,
        detail: format!("stopped sharing {what} with {}", describe_all(&removing)),
        steps,
        undo: Some(undo),
        retryable: false,
    }
}

/// Puts back the shares an unshare removed, from its undo data: only on the resource the data
/// names, and only grantees it was shared with before.
pub async fn undo(api: &Api, shared: &Shared, data: &Value) -> ActionResult {
    let refuse = |why: String| ActionResult::failed(ActionError::Refused(why), Vec::new(), None);
    if data.get("resource").and_then(Value::as_str) != Some(shared.arn.as_str()) {
        return refuse(format!("the undo data does not name {}", shared.arn));
    }
    // Records from before one action took back a whole share name one `grantee`.
    let listed: Vec<&str> = items(data.get("grantees").or_else(|| data.get("grantee")))
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    if listed.is_empty() || listed.len() > MAX_GRANTEES {
        return refuse("the undo data names no grantee to share with again".into());
    }
    let mut grantees = Vec::new();
    for g in listed {
        match Grantee::parse(g, shared.store) {
            Ok(g) => grantees.push(g),
            Err(why) => return refuse(why),
        }
    }
    let was_shared = |g: &Grantee| {
        data.get("shared_with")
            .and_then(Value::as_array)
            .is_some_and(|with| with.iter().any(|w| w.as_str() == Some(g.as_str())))
    };
    if let Some(g) = grantees.iter().find(|g| !was_shared(g)) {
        return refuse(format!(
            "the undo data does not show {} shared with {}",
            shared.arn,
            g.describe()
        ));
    }
    let what = shared.describe();
    let now = match read(api, shared).await {
        Ok(now) => now,
        Err(why) => return ActionResult::failed(why, Vec::new(), None),
    };
    let missing: Vec<Grantee> = grantees.into_iter().filter(|g| !now.contains(g)).collect();
    if missing.is_empty() {
        return ActionResult {
            outcome: ActionOutcome::AlreadyCompliant,
            detail: format!("{what} is shared as it was already"),
            steps: Vec::new(),
            undo: None,
            retryable: false,
        };
    }
    let mut steps = Vec::new();
    for grantee in &missing {
        let mut s = step(shared, grantee, true);
        match change(api, shared, grantee, true).await {
            Ok(request_id) => s.request_id = request_id,
            Err(why) => {
                let note = format!(" (after {} of {} changes)", steps.len(), missing.len());
                return ActionResult::failed(why.noting(&note), steps, None);
            }
        }
        steps.push(s);
    }
    ActionResult {
        outcome: ActionOutcome::Applied,
        detail: format!("shared {what} with {} again", describe_all(&missing)),
        steps,
        undo: None,
        retryable: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, id: &str, account: Option<&str>) -> Target {
        Target {
            kind: kind.into(),
            id: id.into(),
            account_id: account.map(str::to_string),
            grantee: None,
        }
    }

    #[test]
    fn targets_parse_from_their_arns() {
        let t = target(
            "ebs-snapshot",
            "arn:aws:ec2:eu-west-1:111122223333:snapshot/snap-0123456789abcdef0",
            Some("111122223333"),
        );
        let s = Shared::parse(ActionKind::UnshareSnapshot, &t).expect("EBS snapshot");
        assert_eq!(
            (
                s.store,
                s.region.as_str(),
                s.account.as_str(),
                s.id.as_str()
            ),
            (
                Store::EbsSnapshot,
                "eu-west-1",
                "111122223333",
                "snap-0123456789abcdef0"
            )
        );
        let t = target(
            "rds-cluster-snapshot",
            "arn:aws:rds:us-east-1:111122223333:cluster-snapshot:nightly-2026-12-01",
            Some("111122223333"),
        );
        let s = Shared::parse(ActionKind::UnshareSnapshot, &t).expect("cluster snapshot");
        assert_eq!(
            (s.store, s.id.as_str()),
            (Store::DbClusterSnapshot, "nightly-2026-12-01")
        );
        let t = target(
            "ami",
            "arn:aws:ec2:us-east-1:111122223333:image/ami-0abcdef1234567890",
            Some("111122223333"),
        );
        assert_eq!(
            Shared::parse(ActionKind::UnshareImage, &t).map(|s| s.store),
            Ok(Store::Image)
        );
    }

    #[test]
    fn targets_that_do_not_agree_are_refused() {
        let arn = "arn:aws:ec2:eu-west-1:111122223333:snapshot/snap-0123456789abcdef0";
        // Another account than the ARN's, or none: the credentials of one account are never
        // pointed at a resource the alert places in another.
        for account in [Some("999988887777"), None] {
            let t = target("ebs-snapshot", arn, account);
            assert!(
                Shared::parse(ActionKind::UnshareSnapshot, &t).is_err(),
                "{account:?}"
            );
        }
        // The action must fit the kind, the kind the ARN.
        let t = target("ebs-snapshot", arn, Some("111122223333"));
        assert!(Shared::parse(ActionKind::UnshareImage, &t).is_err());
        let t = target("ami", arn, Some("111122223333"));
        assert!(Shared::parse(ActionKind::UnshareImage, &t).is_err());
        for bad in [
            "snap-0123456789abcdef0",
            "arn:aws:ec2:eu-west-1:111122223333:snapshot/snap-../../x",
            "arn:aws:ec2:EU-WEST-1:111122223333:snapshot/snap-0123456789abcdef0",
            "arn:aws:ec2:eu-west-1:11112222333:snapshot/snap-0123456789abcdef0",
            "arn:aws:s3:eu-west-1:111122223333:snapshot/snap-0123456789abcdef0",
            "arn:evil:ec2:eu-west-1:111122223333:snapshot/snap-0123456789abcdef0",
        ] {
            let t = target("ebs-snapshot", bad, Some("111122223333"));
            assert!(
                Shared::parse(ActionKind::UnshareSnapshot, &t).is_err(),
                "{bad}"
            );
        }
        for bad in ["", "-x", "a--b", "a b", "x-"] {
            let arn = format!("arn:aws:rds:us-east-1:111122223333:snapshot:{bad}");
            let t = target("rds-snapshot", &arn, Some("111122223333"));
            assert!(
                Shared::parse(ActionKind::UnshareSnapshot, &t).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn grantees_parse_per_kind() {
        assert_eq!(
            Grantee::parse("all", Store::DbSnapshot),
            Ok(Grantee::Everyone)
        );
        assert_eq!(
            Grantee::parse("999988887777", Store::EbsSnapshot),
            Ok(Grantee::Account("999988887777".into()))
        );
        let org = "arn:aws:organizations::999988887777:organization/o-abc123def4";
        let ou = "arn:aws:organizations::999988887777:ou/o-abc123def4/ou-ab12-cd34ef56";
        assert_eq!(
            Grantee::parse(org, Store::Image),
            Ok(Grantee::Organization(org.into()))
        );
        assert_eq!(
            Grantee::parse(ou, Store::Image),
            Ok(Grantee::OrganizationalUnit(ou.into()))
        );
        let cn = "arn:aws-cn:organizations::999988887777:organization/o-abc123def4";
        assert_eq!(
            Grantee::parse(cn, Store::Image),
            Ok(Grantee::Organization(cn.into()))
        );
        assert_eq!(
            parse_grantees("999988887777, all,999988887777", Store::EbsSnapshot),
            Ok(vec![
                Grantee::Account("999988887777".into()),
                Grantee::Everyone
            ])
        );
        assert!(parse_grantees("all,bob", Store::EbsSnapshot).is_err());
        assert!(parse_grantees("", Store::EbsSnapshot).is_err());
        let many: Vec<String> = (0..=MAX_GRANTEES)
            .map(|i| format!("{:012}", 100_000_000_000 + i))
            .collect();
        assert!(parse_grantees(&many.join(","), Store::EbsSnapshot).is_err());
        // Snapshots are never shared with an organization; nothing else is a grantee.
        assert!(Grantee::parse(org, Store::EbsSnapshot).is_err());
        for bad in [
            "",
            "9999",
            "everyone",
            "arn:aws:organizations::999988887777:account/o-x/1",
        ] {
            assert!(Grantee::parse(bad, Store::Image).is_err(), "{bad}");
        }
    }
}
