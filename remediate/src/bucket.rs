//! "Make bucket private" against S3: read the bucket's state, plan the changes
//! ([`make_private_changes`]), apply them (or, in dry-run, only describe them), and keep the
//! prior state as undo data.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::RequestId;
use aws_sdk_s3::types::{BucketCannedAcl, PublicAccessBlockConfiguration};
use aws_sdk_s3::Client;
use serde_json::{json, Value};
use trailguard_common::contract::{ActionOutcome, ActionStep};

use crate::plan::{make_private_changes, BucketState, Change};

/// What happened to the bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketResult {
    /// Applied, already compliant, dry-run or failed.
    pub outcome: ActionOutcome,
    /// A sentence for the action record.
    pub detail: String,
    /// Each change made (or that would be made).
    pub steps: Vec<ActionStep>,
    /// Prior state of what was changed.
    pub undo: Option<Value>,
}

fn sdk_error<E: ProvideErrorMetadata + std::fmt::Debug>(call: &str, err: &E) -> String {
    format!("{call}: {}", trailguard_common::aws::error_text(err))
}

/// Reads what makes a bucket public, plus the undo data (the prior ACL and policy).
async fn read_state(client: &Client, bucket: &str) -> Result<(BucketState, Value), String> {
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
        Err(err) => return Err(sdk_error("s3:GetPublicAccessBlock", &err)),
    };
    let acl = client
        .get_bucket_acl()
        .bucket(bucket)
        .send()
        .await
        .map_err(|err| sdk_error("s3:GetBucketAcl", &err))?;
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
        Err(err) => return Err(sdk_error("s3:GetBucketPolicy", &err)),
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
) -> Result<Option<String>, String> {
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
                .map_err(|e| sdk_error(call, &e))?
                .request_id()
                .map(str::to_string)
        }
        Change::ResetAcl => client
            .put_bucket_acl()
            .bucket(bucket)
            .acl(BucketCannedAcl::Private)
            .send()
            .await
            .map_err(|e| sdk_error(call, &e))?
            .request_id()
            .map(str::to_string),
        Change::PutPolicy(policy) => client
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy.to_string())
            .send()
            .await
            .map_err(|e| sdk_error(call, &e))?
            .request_id()
            .map(str::to_string),
        Change::DeletePolicy => client
            .delete_bucket_policy()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| sdk_error(call, &e))?
            .request_id()
            .map(str::to_string),
    };
    Ok(request_id)
}

/// Makes `bucket` private. With `dry_run`, reads and plans but changes nothing.
pub async fn make_private(client: &Client, bucket: &str, dry_run: bool) -> BucketResult {
    let (state, undo) = match read_state(client, bucket).await {
        Ok(read) => read,
        Err(detail) => {
            return BucketResult {
                outcome: ActionOutcome::Failed,
                detail,
                steps: Vec::new(),
                undo: None,
            }
        }
    };
    let changes = make_private_changes(&state);
    if changes.is_empty() {
        return BucketResult {
            outcome: ActionOutcome::AlreadyCompliant,
            detail: format!("bucket {bucket} is already private"),
            steps: Vec::new(),
            undo: None,
        };
    }
    let mut steps = Vec::new();
    for change in &changes {
        let (call, description) = change.describe();
        let request_id = if dry_run {
            None
        } else {
            match apply_change(client, bucket, change).await {
                Ok(id) => id,
                Err(detail) => {
                    return BucketResult {
                        outcome: ActionOutcome::Failed,
                        detail: format!(
                            "{detail} (after {} of {} changes)",
                            steps.len(),
                            changes.len()
                        ),
                        steps,
                        undo: Some(undo),
                    }
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
    }
}
