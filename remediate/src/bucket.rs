//! The bucket actions against S3. "Make bucket private": read the bucket's state, plan the
//! changes ([`make_private_changes`]), apply them (or, in dry-run, only describe them), and
//! keep the prior state as undo data. "Remove a collaborator": drop a grantee's ACL grants and
//! its principal from the bucket policy. Both undo from the recorded prior state.

use crate::ActionError;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::types::{
    AccessControlPolicy, BucketCannedAcl, Grant, Grantee, Owner, Permission,
    PublicAccessBlockConfiguration, Type,
};
use aws_sdk_s3::Client;
use serde_json::{json, Value};
use trailguard_common::aws::CallError;
use trailguard_common::contract::{ActionOutcome, ActionStep};

use crate::intent::{Intent, Unrecorded};
use crate::plan::{make_private_changes, BucketState, Change};
use trailguard_common::s3::items;

/// What happened to the bucket.
pub type BucketResult = crate::ActionResult;

fn failure(
    why: impl Into<ActionError>,
    steps: Vec<ActionStep>,
    undo: Option<Value>,
) -> BucketResult {
    BucketResult::failed(why.into(), steps, undo)
}

/// Reads what makes a bucket public, plus the undo data (the prior ACL and policy).
async fn read_state(client: &Client, bucket: &str) -> Result<(BucketState, Value), ActionError> {
    let block = match client.get_public_access_block().bucket(bucket).send().await {
        Ok(out) => out.public_access_block_configuration().map(|c| {
            [
                c.block_public_acls().unwrap_or(false),
                c.ignore_public_acls().unwrap_or(false),
                c.block_public_policy().unwrap_or(false),
                c.restrict_public_buckets().unwrap_or(false),
            ]
        }),
        Err(err) if err.code() == Some("NoSuchPublicAccessBlockConfiguration") => None,
        Err(err) => return Err(CallError::of("s3:GetPublicAccessBlock", &err).into()),
    };
    let acl = client
        .get_bucket_acl()
        .bucket(bucket)
        .send()
        .await
        .map_err(|err| CallError::of("s3:GetBucketAcl", &err))?;
    let grants: Vec<Value> = acl
        .grants()
        .iter()
        .map(|g| {
            let grantee = g.grantee();
            json!({
                "type": grantee.map(|g| g.r#type().as_str().to_string()),
                "id": grantee.and_then(|g| g.id()),
                "uri": grantee.and_then(|g| g.uri()),
                "email": grantee.and_then(|g| g.email_address()),
                "permission": g.permission().map(|p| p.as_str().to_string()),
            })
        })
        .collect();
    let acl_group_uris = acl
        .grants()
        .iter()
        .filter_map(|g| g.grantee().and_then(|g| g.uri()).map(str::to_string))
        .collect();
    let policy_text = match client.get_bucket_policy().bucket(bucket).send().await {
        Ok(out) => out.policy().map(str::to_string),
        Err(err) if err.code() == Some("NoSuchBucketPolicy") => None,
        Err(err) => return Err(CallError::of("s3:GetBucketPolicy", &err).into()),
    };
    let policy = policy_text
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok());
    let undo = json!({
        "bucket": bucket,
        "public_access_block": block.map(|[a, b, c, d]| json!({
            "BlockPublicAcls": a, "IgnorePublicAcls": b, "BlockPublicPolicy": c, "RestrictPublicBuckets": d,
        })),
        "acl": {"owner_id": acl.owner().and_then(|o| o.id()), "grants": grants},
        "policy": policy_text,
    });
    Ok((
        BucketState {
            public_access_block: block,
            acl_group_uris,
            policy,
        },
        undo,
    ))
}

async fn apply_change(
    client: &Client,
    bucket: &str,
    change: &Change,
) -> Result<Option<String>, ActionError> {
    let (call, _) = change.describe();
    let request_id = match change {
        Change::BlockPublicAccess => {
            let config = PublicAccessBlockConfiguration::builder()
                .block_public_acls(true)
                .ignore_public_acls(true)
                .block_public_policy(true)
                .restrict_public_buckets(true)
                .build();
            client
                .put_public_access_block()
                .bucket(bucket)
                .public_access_block_configuration(config)
                .send()
                .await
                .map_err(|e| CallError::of(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        Change::ResetAcl => client
            .put_bucket_acl()
            .bucket(bucket)
            .acl(BucketCannedAcl::Private)
            .send()
            .await
            .map_err(|e| CallError::of(call, &e))?
            .request_id()
            .map(str::to_string),
        Change::PutPolicy(policy) => client
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| CallError::of(call, &e))?
            .request_id()
            .map(str::to_string),
        Change::DeletePolicy => client
            .delete_bucket_policy()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| CallError::of(call, &e))?
            .request_id()
            .map(str::to_string),
    };
    Ok(request_id)
}

/// Makes `bucket` private. With `dry_run`, reads and plans but changes nothing.
pub async fn make_private(client: &Client, bucket: &str, dry_run: bool) -> BucketResult {
    make_private_recorded(client, bucket, dry_run, &Unrecorded).await
}

/// [`make_private`], handing the prior state to `intent` before the first change.
pub async fn make_private_recorded(
    client: &Client,
    bucket: &str,
    dry_run: bool,
    intent: &dyn Intent,
) -> BucketResult {
    let (state, undo) = match read_state(client, bucket).await {
        Ok(read) => read,
        Err(why) => return failure(why, Vec::new(), None),
    };
    let changes = make_private_changes(&state);
    if changes.is_empty() {
        return BucketResult {
            outcome: ActionOutcome::AlreadyCompliant,
            detail: format!("bucket {bucket} is already private"),
            steps: Vec::new(),
            undo: None,
            retryable: false,
        };
    }
    if !dry_run {
        let planned: Vec<ActionStep> = changes
            .iter()
            .map(|c| {
                let (call, description) = c.describe();
                ActionStep {
                    call: call.into(),
                    description,
                    request_id: None,
                }
            })
            .collect();
        if !intent.record(&undo, &planned).await {
            return failure(ActionError::NotRecorded, Vec::new(), None);
        }
    }
    let mut steps = Vec::new();
    for change in &changes {
        let (call, description) = change.describe();
        let request_id = if dry_run {
            None
        } else {
            match apply_change(client, bucket, change).await {
                Ok(id) => id,
                Err(why) => {
                    let note = format!(" (after {} of {} changes)", steps.len(), changes.len());
                    return failure(why.noting(&note), steps, Some(undo));
                }
            }
        };
        steps.push(ActionStep {
            call: call.into(),
            description,
            request_id,
        });
    }
    let (outcome, detail) = if dry_run {
        (
            ActionOutcome::DryRun,
            format!(
                "would make bucket {bucket} private ({} changes)",
                steps.len()
            ),
        )
    } else {
        (
            ActionOutcome::Applied,
            format!("made bucket {bucket} private ({} changes)", steps.len()),
        )
    };
    BucketResult {
        outcome,
        detail,
        steps,
        undo: Some(undo),
        retryable: false,
    }
}

fn grant_from_json(g: &Value) -> Option<Grant> {
    let field = |k: &str| g.get(k).and_then(Value::as_str);
    let grantee = match field("type")? {
        "CanonicalUser" => Grantee::builder()
            .r#type(Type::CanonicalUser)
            .set_id(field("id").map(str::to_string))
            .build()
            .ok()?,
        "Group" => Grantee::builder()
            .r#type(Type::Group)
            .set_uri(field("uri").map(str::to_string))
            .build()
            .ok()?,
        "AmazonCustomerByEmail" => Grantee::builder()
            .r#type(Type::AmazonCustomerByEmail)
            .set_email_address(field("email").map(str::to_string))
            .build()
            .ok()?,
        _ => return None,
    };
    Some(
        Grant::builder()
            .grantee(grantee)
            .set_permission(field("permission").map(Permission::from))
            .build(),
    )
}

async fn put_acl(client: &Client, bucket: &str, acl: &Value) -> Result<ActionStep, ActionError> {
    let grants: Vec<Grant> = acl["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(grant_from_json)
        .collect();
    let owner = Owner::builder()
        .set_id(acl["owner_id"].as_str().map(str::to_string))
        .build();
    let policy = AccessControlPolicy::builder()
        .owner(owner)
        .set_grants(Some(grants.clone()))
        .build();
    let out = client
        .put_bucket_acl()
        .bucket(bucket)
        .access_control_policy(policy)
        .send()
        .await
        .map_err(|e| CallError::of("s3:PutBucketAcl", &e))?;
    Ok(ActionStep {
        call: "s3:PutBucketAcl".into(),
        description: format!("set the ACL to {} grant(s)", grants.len()),
        request_id: out.request_id().map(str::to_string),
    })
}

async fn put_or_delete_policy(
    client: &Client,
    bucket: &str,
    policy: Option<&str>,
) -> Result<ActionStep, ActionError> {
    match policy {
        Some(text) => {
            let out = client
                .put_bucket_policy()
                .bucket(bucket)
                .policy(text)
                .send()
                .await
                .map_err(|e| CallError::of("s3:PutBucketPolicy", &e))?;
            Ok(ActionStep {
                call: "s3:PutBucketPolicy".into(),
                description: "put the bucket policy".into(),
                request_id: out.request_id().map(str::to_string),
            })
        }
        None => {
            let out = client
                .delete_bucket_policy()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| CallError::of("s3:DeleteBucketPolicy", &e))?;
            Ok(ActionStep {
                call: "s3:DeleteBucketPolicy".into(),
                description: "delete the bucket policy".into(),
                request_id: out.request_id().map(str::to_string),
            })
        }
    }
}

/// Removes `grantee` from `bucket`: its ACL grants, and its principal from the bucket policy
/// (statements left without a principal are deleted). `refuse` judges the current policy first
/// (see [`crate::plan::strip_refusal`]). With `dry_run`, plans only.
pub async fn remove_collaborator(
    client: &Client,
    bucket: &str,
    grantee: &str,
    dry_run: bool,
    refuse: impl Fn(&Value) -> Option<String>,
) -> BucketResult {
    remove_collaborator_recorded(client, bucket, grantee, dry_run, refuse, &Unrecorded).await
}

/// [`remove_collaborator`], handing the prior state to `intent` before the first change.
pub async fn remove_collaborator_recorded(
    client: &Client,
    bucket: &str,
    grantee: &str,
    dry_run: bool,
    refuse: impl Fn(&Value) -> Option<String>,
    intent: &dyn Intent,
) -> BucketResult {
    let (_, undo) = match read_state(client, bucket).await {
        Ok(read) => read,
        Err(why) => return failure(why, Vec::new(), None),
    };
    let grants: Vec<Value> = undo["acl"]["grants"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let kept: Vec<Value> = grants
        .iter()
        .filter(|g| !crate::plan::grant_matches(g, grantee))
        .cloned()
        .collect();
    let policy: Option<Value> = undo["policy"]
        .as_str()
        .and_then(|t| serde_json::from_str(t).ok());
    // What the policy would lose is known only now: a protected principal in it stops the
    // whole action (an account-id grantee strips every principal of the account).
    if let Some(why) = policy.as_ref().and_then(&refuse) {
        return BucketResult {
            outcome: ActionOutcome::Refused,
            detail: format!("refused: {why}"),
            steps: Vec::new(),
            undo: None,
            retryable: false,
        };
    }
    let new_policy = policy
        .as_ref()
        .and_then(|p| crate::plan::policy_without(p, grantee));
    let mut planned = Vec::new();
    if kept.len() < grants.len() {
        planned.push(ActionStep {
            call: "s3:PutBucketAcl".into(),
            description: format!(
                "remove {} ACL grant(s) of {grantee}",
                grants.len() - kept.len()
            ),
            request_id: None,
        });
    }
    if let Some(change) = &new_policy {
        planned.push(ActionStep {
            call: if change.is_some() {
                "s3:PutBucketPolicy"
            } else {
                "s3:DeleteBucketPolicy"
            }
            .into(),
            description: match change {
                Some(p) => format!(
                    "remove {grantee} from the bucket policy, keep {} statement(s)",
                    items(p.get("Statement")).len()
                ),
                None => format!("delete the bucket policy: it only granted {grantee}"),
            },
            request_id: None,
        });
    }
    if planned.is_empty() {
        return BucketResult {
            outcome: ActionOutcome::AlreadyCompliant,
            detail: format!("{grantee} has no grant on bucket {bucket}"),
            steps: Vec::new(),
            undo: None,
            retryable: false,
        };
    }
    if dry_run {
        return BucketResult {
            outcome: ActionOutcome::DryRun,
            detail: format!(
                "would remove {grantee} from bucket {bucket} ({} changes)",
                planned.len()
            ),
            steps: planned,
            undo: Some(undo),
            retryable: false,
        };
    }
    if !intent.record(&undo, &planned).await {
        return failure(ActionError::NotRecorded, Vec::new(), None);
    }
    let mut steps = Vec::new();
    if kept.len() < grants.len() {
        let acl = json!({"owner_id": undo["acl"]["owner_id"], "grants": kept});
        match put_acl(client, bucket, &acl).await {
            Ok(step) => steps.push(step),
            Err(why) => return failure(why, steps, Some(undo)),
        }
    }
    if let Some(change) = &new_policy {
        let text = change.as_ref().map(Value::to_string);
        match put_or_delete_policy(client, bucket, text.as_deref()).await {
            Ok(step) => steps.push(step),
            Err(why) => return failure(why, steps, Some(undo)),
        }
    }
    BucketResult {
        outcome: ActionOutcome::Applied,
        detail: format!(
            "removed {grantee} from bucket {bucket} ({} changes)",
            steps.len()
        ),
        steps,
        undo: Some(undo),
        retryable: false,
    }
}

/// Restores a bucket from the undo data of `make_bucket_private` or `remove_collaborator`: its
/// public-access block (when recorded), ACL and policy as they were.
pub async fn undo(client: &Client, undo: &Value) -> BucketResult {
    let Some(bucket) = undo["bucket"].as_str() else {
        return failure("the undo data names no bucket", Vec::new(), None);
    };
    let mut steps = Vec::new();
    let fail = |why: ActionError, steps: Vec<ActionStep>| failure(why, steps, None);
    if let Some(block) = undo.get("public_access_block") {
        let result = match block {
            Value::Null => client
                .delete_public_access_block()
                .bucket(bucket)
                .send()
                .await
                .map(|o| {
                    (
                        "s3:DeletePublicAccessBlock",
                        "remove the public-access block".to_string(),
                        o.request_id().map(str::to_string),
                    )
                })
                .map_err(|e| CallError::of("s3:DeletePublicAccessBlock", &e)),
            flags => {
                let flag = |k: &str| flags[k].as_bool().unwrap_or(false);
                let config = PublicAccessBlockConfiguration::builder()
                    .block_public_acls(flag("BlockPublicAcls"))
                    .ignore_public_acls(flag("IgnorePublicAcls"))
                    .block_public_policy(flag("BlockPublicPolicy"))
                    .restrict_public_buckets(flag("RestrictPublicBuckets"))
                    .build();
                client
                    .put_public_access_block()
                    .bucket(bucket)
                    .public_access_block_configuration(config)
                    .send()
                    .await
                    .map(|o| {
                        (
                            "s3:PutPublicAccessBlock",
                            "restore the public-access block".to_string(),
                            o.request_id().map(str::to_string),
                        )
                    })
                    .map_err(|e| CallError::of("s3:PutPublicAccessBlock", &e))
            }
        };
        match result {
            Ok((call, description, request_id)) => steps.push(ActionStep {
                call: call.into(),
                description,
                request_id,
            }),
            Err(detail) => return fail(detail.into(), steps),
        }
    }
    // The policy before the ACL: with the block restored, a public policy is accepted again.
    match put_or_delete_policy(client, bucket, undo["policy"].as_str()).await {
        Ok(step) => steps.push(step),
        Err(why) if undo["policy"].is_null() && why.is("NoSuchBucketPolicy") => {}
        Err(detail) => return fail(detail, steps),
    }
    match put_acl(client, bucket, &undo["acl"]).await {
        Ok(step) => steps.push(step),
        Err(detail) => return fail(detail, steps),
    }
    BucketResult {
        outcome: ActionOutcome::Applied,
        detail: format!("restored bucket {bucket} ({} changes)", steps.len()),
        steps,
        undo: None,
        retryable: false,
    }
}
