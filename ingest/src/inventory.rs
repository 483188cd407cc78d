//! Posture inventory: every bucket of every account, as it is now, published as one
//! `BucketSnapshot` activity per bucket so detect's public-bucket policy also catches buckets
//! that were public before Trailguard started watching the trail; and each account's trails,
//! as one `TrailSnapshot` (see [`crate::trail_inventory`]).
//!
//! A snapshot carries what decides exposure, in the shapes CloudTrail uses for the same
//! settings: the ACL (`AccessControlPolicy`), the bucket policy (`bucketPolicy`), S3's own
//! verdict (`policyStatus`), the bucket's and the account's public-access blocks. A setting that
//! could not be read is named under `errors` (and counted) instead of failing the run.
//!
//! Snapshot ids change when the bucket's state does, and otherwise once a day: an unchanged
//! public bucket is reported daily (detect folds repeats), a changed one at once.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use trailguard_common::aws::{s3_client_for, Account, AwsConfig, CallError};
use trailguard_common::contract::{
    stable_id, Activity, Outcome, OutcomeStatus, Principal, Resource, ACTIVITY_SCHEMA_VERSION,
};

use crate::pipeline::Summary;
use crate::publish::Publisher;
use crate::Error;
use trailguard_common::contract::kinds;

pub use trailguard_common::contract::{BUCKET_SNAPSHOT, INVENTORY_SOURCE};

/// Settings of the posture inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Also take the inventory inside the long-running sources (`s3`, `sqs`, `lookup`), every
    /// `interval`. `ingest inventory` runs it regardless.
    pub enabled: bool,
    /// Time between inventories in the long-running sources.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig {
            enabled: false,
            interval: Duration::from_secs(6 * 3600),
        }
    }
}

impl InventoryConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        if self.interval < Duration::from_secs(60) {
            return Err(trailguard_common::Error::config(
                "inventory.interval",
                "must be at least 1m",
            ));
        }
        Ok(())
    }
}

/// What was read about one bucket.
#[derive(Debug, Default, Clone)]
pub struct BucketState {
    /// Bucket name.
    pub name: String,
    /// Region it lives in.
    pub region: String,
    /// The ACL as CloudTrail writes `AccessControlPolicy`.
    pub acl: Option<Value>,
    /// The bucket policy document.
    pub policy: Option<Value>,
    /// S3's `PolicyStatus.IsPublic`.
    pub policy_is_public: Option<bool>,
    /// The bucket's public-access block (the four flags), when set.
    pub public_access_block: Option<Value>,
    /// Settings that could not be read: name → error.
    pub errors: Map<String, Value>,
}

/// The activity describing `bucket` in `account`, seen at `now` (pure).
pub fn snapshot_activity(
    account: &str,
    partition: &str,
    account_block: Option<&Value>,
    bucket: &BucketState,
    now: DateTime<Utc>,
) -> Activity {
    let mut params = Map::new();
    params.insert("bucketName".into(), json!(bucket.name));
    let optional = [
        ("AccessControlPolicy", bucket.acl.clone()),
        ("bucketPolicy", bucket.policy.clone()),
        (
            "policyStatus",
            bucket.policy_is_public.map(|p| json!({ "IsPublic": p })),
        ),
        (
            "PublicAccessBlockConfiguration",
            bucket.public_access_block.clone(),
        ),
        ("accountPublicAccessBlock", account_block.cloned()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            params.insert(key.into(), value);
        }
    }
    if !bucket.errors.is_empty() {
        params.insert("errors".into(), Value::Object(bucket.errors.clone()));
    }
    let params = Value::Object(params);
    let digest = hex::encode(Sha256::digest(params.to_string().as_bytes()));
    let day = now.format("%Y-%m-%d").to_string();
    let id = stable_id([INVENTORY_SOURCE, account, &bucket.name, &digest, &day]);
    let resources = vec![Resource {
        kind: kinds::S3_BUCKET.into(),
        id: bucket.name.clone(),
    }];
    inventory_activity(
        InventoryRecord {
            account,
            partition,
            region: &bucket.region,
            event_name: BUCKET_SNAPSHOT,
        },
        id,
        params,
        resources,
        now,
    )
}

/// Where and what an inventory activity is.
pub(crate) struct InventoryRecord<'a> {
    pub account: &'a str,
    pub partition: &'a str,
    pub region: &'a str,
    pub event_name: &'a str,
}

/// An activity of the inventory (its principal Trailguard's own, so nothing learns from it),
/// taken at `now`, with its id, settings and resources (pure).
pub(crate) fn inventory_activity(
    record: InventoryRecord<'_>,
    id: String,
    params: Value,
    resources: Vec<Resource>,
    now: DateTime<Utc>,
) -> Activity {
    let principal = Principal {
        kind: kinds::TRAILGUARD.into(),
        arn: None,
        name: Some("inventory".into()),
        account_id: Some(record.account.into()),
        ..Principal::default()
    };
    Activity {
        schema_version: ACTIVITY_SCHEMA_VERSION,
        id,
        event_id: None,
        event_time: now,
        event_source: INVENTORY_SOURCE.into(),
        event_name: record.event_name.into(),
        event_type: Some("TrailguardInventory".into()),
        account_id: Some(record.account.into()),
        region: Some(record.region.into()),
        partition: Some(record.partition.into()),
        actor: trailguard_common::contract::Actor::of(&principal),
        principal,
        source_ip: None,
        source_host: Some("trailguard".into()),
        user_agent: None,
        read_only: Some(true),
        data_event: false,
        outcome: Outcome {
            status: OutcomeStatus::Success,
            error_code: None,
            error_message: None,
        },
        resources,
        request_id: None,
        request_parameters: Some(params.into()),
        response_elements: None,
        additional_event_data: None,
        enrichment: Default::default(),
        trimmed: Vec::new(),
    }
}

/// A `GetBucketLocation` constraint as a region name (empty is us-east-1, `EU` eu-west-1).
pub fn location_region(constraint: Option<&str>) -> String {
    match constraint {
        None | Some("") => "us-east-1".into(),
        Some("EU") => "eu-west-1".into(),
        Some(other) => other.into(),
    }
}

fn acl_value(acl: &aws_sdk_s3::operation::get_bucket_acl::GetBucketAclOutput) -> Value {
    let grants: Vec<Value> = acl
        .grants()
        .iter()
        .map(|g| {
            let mut grantee = Map::new();
            if let Some(e) = g.grantee() {
                grantee.insert("xsi:type".into(), json!(e.r#type().as_str()));
                for (key, value) in [
                    ("URI", e.uri()),
                    ("ID", e.id()),
                    ("DisplayName", e.display_name()),
                    ("EmailAddress", e.email_address()),
                ] {
                    if let Some(v) = value {
                        grantee.insert(key.into(), json!(v));
                    }
                }
            }
            json!({
                "Grantee": grantee,
                "Permission": g.permission().map(|p| p.as_str()),
            })
        })
        .collect();
    let owner = acl
        .owner()
        .map(|o| json!({ "ID": o.id(), "DisplayName": o.display_name() }));
    json!({ "Owner": owner, "AccessControlList": { "Grant": grants } })
}

fn block_value(c: Option<&aws_sdk_s3::types::PublicAccessBlockConfiguration>) -> Option<Value> {
    c.map(|c| {
        json!({
            "BlockPublicAcls": c.block_public_acls().unwrap_or(false),
            "IgnorePublicAcls": c.ignore_public_acls().unwrap_or(false),
            "BlockPublicPolicy": c.block_public_policy().unwrap_or(false),
            "RestrictPublicBuckets": c.restrict_public_buckets().unwrap_or(false),
        })
    })
}

/// True when the error means "this setting is not set" rather than "could not read it".
fn not_set(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "NoSuchBucketPolicy"
                | "NoSuchPublicAccessBlockConfiguration"
                | "NoSuchPublicAccessBlock"
        )
    )
}

/// Reads one bucket's settings; failures land in `errors`.
async fn read_bucket(client: &aws_sdk_s3::Client, state: &mut BucketState, calls: &mut u64) {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let name = state.name.clone();
    *calls += 4;
    match client.get_bucket_acl().bucket(&name).send().await {
        Ok(acl) => state.acl = Some(acl_value(&acl)),
        Err(e) => {
            state.errors.insert(
                "acl".into(),
                json!(CallError::of("s3:GetBucketAcl", &e).message),
            );
        }
    }
    match client.get_bucket_policy().bucket(&name).send().await {
        Ok(out) => {
            state.policy = out
                .policy()
                .map(|p| serde_json::from_str(p).unwrap_or_else(|_| json!(p)));
        }
        Err(e) if not_set(e.code()) => {}
        Err(e) => {
            state.errors.insert(
                "policy".into(),
                json!(CallError::of("s3:GetBucketPolicy", &e).message),
            );
        }
    }
    match client.get_bucket_policy_status().bucket(&name).send().await {
        Ok(out) => state.policy_is_public = out.policy_status().and_then(|s| s.is_public()),
        Err(e) if not_set(e.code()) => {}
        Err(e) => {
            state.errors.insert(
                "policyStatus".into(),
                json!(CallError::of("s3:GetBucketPolicyStatus", &e).message),
            );
        }
    }
    match client.get_public_access_block().bucket(&name).send().await {
        Ok(out) => state.public_access_block = block_value(out.public_access_block_configuration()),
        Err(e) if not_set(e.code()) => {}
        Err(e) => {
            state.errors.insert(
                "publicAccessBlock".into(),
                json!(CallError::of("s3:GetPublicAccessBlock", &e).message),
            );
        }
    }
}

/// The account's own id (STS GetCallerIdentity) when the account was not named.
async fn account_id(aws: &AwsConfig, account: &Account) -> Result<String, Error> {
    if let Some(id) = &account.id {
        return Ok(id.clone());
    }
    let sts = aws_sdk_sts::Client::from_conf(
        trailguard_common::sdk_config!(aws_sdk_sts, aws, &account.sdk, "sts").build(),
    );
    let me = sts
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| CallError::of("sts:GetCallerIdentity", &e))?;
    me.account()
        .map(str::to_string)
        .ok_or_else(|| Error::Source("sts:GetCallerIdentity returned no account".into()))
}

/// The account-level public-access block (S3 Control), when set.
async fn account_block(
    aws: &AwsConfig,
    account: &Account,
    id: &str,
    calls: &mut u64,
) -> Result<Option<Value>, String> {
    use aws_sdk_s3control::error::ProvideErrorMetadata;
    *calls += 1;
    let client = aws_sdk_s3control::Client::from_conf(
        trailguard_common::sdk_config!(aws_sdk_s3control, aws, &account.sdk, "s3control").build(),
    );
    match client.get_public_access_block().account_id(id).send().await {
        Ok(out) => Ok(out.public_access_block_configuration().map(|c| {
            json!({
                "BlockPublicAcls": c.block_public_acls().unwrap_or(false),
                "IgnorePublicAcls": c.ignore_public_acls().unwrap_or(false),
                "BlockPublicPolicy": c.block_public_policy().unwrap_or(false),
                "RestrictPublicBuckets": c.restrict_public_buckets().unwrap_or(false),
            })
        })),
        Err(e) if not_set(e.code()) => Ok(None),
        Err(e) => Err(CallError::of("s3:GetPublicAccessBlock", &e).message),
    }
}

/// One account's inventory: publishes a snapshot per bucket; returns how many.
async fn account_inventory(
    aws: &AwsConfig,
    account: &Account,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let id = account_id(aws, account).await?;
    let region = account
        .sdk
        .region()
        .map(|r| r.as_ref().to_string())
        .unwrap_or_default();
    let partition = if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    };
    let mut block_error = None;
    let account_block = match account_block(aws, account, &id, &mut summary.api_calls).await {
        Ok(block) => block,
        Err(err) => {
            tracing::warn!(account = %id, error = %err, "cannot read the account's public-access block");
            summary.errors += 1;
            block_error = Some(err);
            None
        }
    };
    // The account's trails first: a snapshot saying the account is not recorded matters more
    // than any one bucket.
    let trails =
        crate::trail_inventory::read_trails(aws, account, &region, &mut summary.api_calls).await;
    let unread = trails.as_ref().map_or(0, |trails| {
        trails.iter().filter(|t| !t.errors.is_empty()).count()
    });
    match &trails {
        Err(err) => {
            tracing::warn!(account = %id, error = %err, "cannot list the account's trails");
            summary.errors += 1;
        }
        Ok(_) if unread > 0 => {
            tracing::warn!(account = %id, trails = unread, "some trail settings could not be read");
            summary.errors += 1;
        }
        Ok(_) => {}
    }
    let snapshot = crate::trail_inventory::snapshot_activity(
        &id,
        partition,
        &region,
        trails.as_deref().map_err(String::as_str),
        Utc::now(),
    );
    summary.records += 1;
    let source = format!("inventory://{id}/cloudtrail");
    let origin = crate::publish::Origin {
        source: &source,
        index: 0,
    };
    publisher.activity(snapshot, origin, b"").await;
    let home = s3_client_for(aws, &account.sdk, None);
    let mut clients: HashMap<String, aws_sdk_s3::Client> = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        summary.api_calls += 1;
        let page = home
            .list_buckets()
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| CallError::of("s3:ListBuckets", &e).noting(&format!(" (account {id})")))?;
        for bucket in page.buckets() {
            if shutdown.is_cancelled() {
                summary.interrupted = true;
                return Ok(());
            }
            let Some(name) = bucket.name() else { continue };
            summary.records += 1;
            let mut state = BucketState {
                name: name.to_string(),
                ..BucketState::default()
            };
            state.region = match bucket.bucket_region() {
                Some(region) => region.to_string(),
                None => {
                    summary.api_calls += 1;
                    match home.get_bucket_location().bucket(name).send().await {
                        Ok(out) => location_region(out.location_constraint().map(|c| c.as_str())),
                        Err(e) => {
                            state.errors.insert(
                                "location".into(),
                                json!(CallError::of("s3:GetBucketLocation", &e).message),
                            );
                            location_region(None)
                        }
                    }
                }
            };
            let client = clients
                .entry(state.region.clone())
                .or_insert_with(|| s3_client_for(aws, &account.sdk, Some(&state.region)));
            read_bucket(client, &mut state, &mut summary.api_calls).await;
            if let Some(err) = &block_error {
                state
                    .errors
                    .insert("accountPublicAccessBlock".into(), json!(err));
            }
            if !state.errors.is_empty() {
                summary.errors += 1;
                let errors = serde_json::to_string(&state.errors).unwrap_or_default();
                tracing::warn!(account = %id, bucket = name, %errors, "some bucket settings could not be read");
            }
            let activity =
                snapshot_activity(&id, partition, account_block.as_ref(), &state, Utc::now());
            let source = format!("inventory://{id}/{name}");
            let origin = crate::publish::Origin {
                source: &source,
                index: 0,
            };
            publisher.activity(activity, origin, b"").await;
        }
        token = page.continuation_token().map(str::to_string);
        if token.is_none() {
            return Ok(());
        }
    }
}

/// Takes the inventory of every account: one snapshot per bucket, durable when this returns.
/// An account that cannot be read (a role that cannot be assumed, access denied) is logged
/// and counted, and the others are still read; the error names every such account.
pub async fn run(
    aws: &AwsConfig,
    accounts: &[Account],
    publisher: &mut Publisher,
    shutdown: &CancellationToken,
) -> Result<Summary, Error> {
    let (started, before) = (std::time::Instant::now(), publisher.counts());
    let mut summary = Summary::default();
    let mut failed = Vec::new();
    for account in accounts {
        if let Err(err) = account_inventory(aws, account, publisher, &mut summary, shutdown).await {
            tracing::error!(account = account.label(), error = %err, "inventory of the account failed");
            summary.errors += 1;
            failed.push(err.to_string());
        }
        if summary.interrupted {
            break;
        }
    }
    publisher.finish().await?;
    publisher
        .metrics()
        .api_calls
        .with_label_values(&["inventory"])
        .inc_by(summary.api_calls);
    summary.finish(publisher, before, started);
    summary.or_failures(failed, "inventory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(policy: Option<Value>) -> BucketState {
        BucketState {
            name: "b1".into(),
            region: "eu-west-1".into(),
            policy,
            ..BucketState::default()
        }
    }

    #[test]
    fn snapshot_ids_follow_state_and_day() {
        let day1 = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let later = day1 + chrono::Duration::hours(1);
        let next_day = day1 + chrono::Duration::days(1);
        let a = snapshot_activity("111122223333", "aws", None, &bucket(None), day1);
        assert_eq!(a.event_source, INVENTORY_SOURCE);
        assert_eq!(a.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            a.request_parameters
                .as_ref()
                .and_then(|p| p.get("bucketName")),
            Some(&json!("b1"))
        );
        let same = snapshot_activity("111122223333", "aws", None, &bucket(None), later);
        assert_eq!(a.id, same.id, "unchanged within a day: same id");
        let changed = snapshot_activity(
            "111122223333",
            "aws",
            None,
            &bucket(Some(json!({"Statement": []}))),
            later,
        );
        assert_ne!(a.id, changed.id);
        let tomorrow = snapshot_activity("111122223333", "aws", None, &bucket(None), next_day);
        assert_ne!(a.id, tomorrow.id);
        let other_account = snapshot_activity("444455556666", "aws", None, &bucket(None), day1);
        assert_ne!(a.id, other_account.id);
    }

    #[test]
    fn location_constraints() {
        assert_eq!(location_region(None), "us-east-1");
        assert_eq!(location_region(Some("")), "us-east-1");
        assert_eq!(location_region(Some("EU")), "eu-west-1");
        assert_eq!(location_region(Some("ap-south-1")), "ap-south-1");
    }
}
