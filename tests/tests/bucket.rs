//! "Make bucket private" against moto: dry-run changes nothing, auto makes the bucket private
//! and keeps the non-public policy statement, a second run finds it already compliant.

use anyhow::{Context, Result};
use serde_json::Value;
use trailguard_common::contract::ActionOutcome;
use trailguard_remediate::bucket::make_private;
use trailguard_tests::{make_public_bucket, s3, Run};

const PUBLIC: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

async fn acl_is_public(client: &aws_sdk_s3::Client, bucket: &str) -> Result<bool> {
    let acl = client.get_bucket_acl().bucket(bucket).send().await?;
    Ok(acl
        .grants()
        .iter()
        .any(|g| g.grantee().and_then(|g| g.uri()) == Some(PUBLIC)))
}

async fn policy_sids(client: &aws_sdk_s3::Client, bucket: &str) -> Result<Vec<String>> {
    let text = client
        .get_bucket_policy()
        .bucket(bucket)
        .send()
        .await?
        .policy()
        .context("policy")?
        .to_string();
    let policy: Value = serde_json::from_str(&text)?;
    Ok(policy["Statement"]
        .as_array()
        .context("statements")?
        .iter()
        .filter_map(|s| s["Sid"].as_str().map(str::to_string))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_then_auto_then_already_compliant() -> Result<()> {
    let run = Run::new("bucket")?;
    let bucket = format!("bucket-{}", &run.id[run.id.len() - 12..]);
    let client = s3().await?;
    make_public_bucket(&client, &bucket).await?;

    let dry = make_private(&client, &bucket, true).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    let calls: Vec<&str> = dry.steps.iter().map(|s| s.call.as_str()).collect();
    assert_eq!(
        calls,
        [
            "s3:PutPublicAccessBlock",
            "s3:PutBucketAcl",
            "s3:PutBucketPolicy"
        ]
    );
    assert!(
        acl_is_public(&client, &bucket).await?,
        "dry-run changed the ACL"
    );
    assert_eq!(policy_sids(&client, &bucket).await?, ["Public", "Admin"]);

    let applied = make_private(&client, &bucket, false).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert!(!acl_is_public(&client, &bucket).await?);
    assert_eq!(policy_sids(&client, &bucket).await?, ["Admin"]);
    let block = client
        .get_public_access_block()
        .bucket(&bucket)
        .send()
        .await?;
    let block = block.public_access_block_configuration().context("block")?;
    assert_eq!(
        [
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ],
        [Some(true); 4]
    );
    // The prior state is kept for undo.
    let undo = applied.undo.context("undo")?;
    assert!(undo["policy"]
        .as_str()
        .context("prior policy")?
        .contains("Public"));
    assert!(undo["acl"]["grants"].to_string().contains(PUBLIC));

    let again = make_private(&client, &bucket, false).await;
    assert_eq!(again.outcome, ActionOutcome::AlreadyCompliant);

    let missing = make_private(&client, "no-such-bucket-trailguard", false).await;
    assert_eq!(missing.outcome, ActionOutcome::Failed);
    assert!(
        missing.detail.contains("NoSuchBucket"),
        "{}",
        missing.detail
    );
    Ok(())
}
