//! Taking back shares against the AWS-API server: an EBS snapshot made public and shared with
//! an outside account, an AMI shared with an account, an RDS snapshot shared with an account —
//! each in dry-run (nothing changes), applied (only the grantee named goes), applied again
//! (already compliant) and undone (the share is back). Then the service: a genuine alert of
//! `resource-shared-out` unshares, a protected image and a target whose ARN names another
//! account are refused, and `remediate undo` puts the share back.

use std::time::Duration;

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{PermissionGroup, SnapshotAttributeName};
use trailguard_common::contract::{ActionKind, ActionOutcome, RequestedAction, Target};
use trailguard_common::Alert;
use trailguard_remediate::intent::Unrecorded;
use trailguard_remediate::share::{self, Api, Grantee, Shared};
use trailguard_tests::{aws_endpoint, aws_shared, produce, signed, unique, wait_for_topic, Run};

const ACCOUNT: &str = "123456789012";
const OUTSIDE: &str = "999988887777";
const REGION: &str = "us-east-1";
const TIMEOUT: Duration = Duration::from_secs(60);

async fn ec2() -> Result<aws_sdk_ec2::Client> {
    Ok(aws_sdk_ec2::Client::new(&aws_shared().await?))
}

async fn rds() -> Result<aws_sdk_rds::Client> {
    Ok(aws_sdk_rds::Client::new(&aws_shared().await?))
}

/// A new snapshot shared with everyone and with `OUTSIDE`.
async fn public_snapshot(ec2: &aws_sdk_ec2::Client) -> Result<String> {
    let volume = ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(8)
        .send()
        .await?;
    let snapshot = ec2
        .create_snapshot()
        .volume_id(volume.volume_id().context("volume id")?)
        .send()
        .await?;
    let id = snapshot.snapshot_id().context("snapshot id")?.to_string();
    ec2.modify_snapshot_attribute()
        .snapshot_id(&id)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .operation_type(aws_sdk_ec2::types::OperationType::Add)
        .group_names("all")
        .user_ids(OUTSIDE)
        .send()
        .await?;
    Ok(id)
}

/// Whom the snapshot is shared with: `all` and account ids, sorted.
async fn snapshot_shares(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Vec<String>> {
    let got = ec2
        .describe_snapshot_attribute()
        .snapshot_id(id)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .send()
        .await?;
    let mut out: Vec<String> = got
        .create_volume_permissions()
        .iter()
        .filter_map(|p| {
            if p.group() == Some(&PermissionGroup::All) {
                Some("all".to_string())
            } else {
                p.user_id().map(str::to_string)
            }
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn image_shares(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Vec<String>> {
    let got = ec2
        .describe_image_attribute()
        .image_id(id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await?;
    let mut out: Vec<String> = got
        .launch_permissions()
        .iter()
        .filter_map(|p| {
            if p.group() == Some(&PermissionGroup::All) {
                Some("all".to_string())
            } else {
                p.user_id().map(str::to_string)
            }
        })
        .collect();
    out.sort();
    Ok(out)
}

async fn db_snapshot_shares(rds: &aws_sdk_rds::Client, id: &str) -> Result<Vec<String>> {
    let got = rds
        .describe_db_snapshot_attributes()
        .db_snapshot_identifier(id)
        .send()
        .await?;
    let mut out: Vec<String> = got
        .db_snapshot_attributes_result()
        .map(|r| r.db_snapshot_attributes())
        .unwrap_or_default()
        .iter()
        .filter(|a| a.attribute_name() == Some("restore"))
        .flat_map(|a| a.attribute_values().to_vec())
        .collect();
    out.sort();
    Ok(out)
}

fn target(kind: &str, arn: &str, account: &str, grantee: &str) -> Target {
    Target {
        kind: kind.into(),
        id: arn.into(),
        account_id: Some(account.into()),
        grantee: Some(grantee.into()),
    }
}

fn parsed(kind: ActionKind, target: &Target) -> Result<(Shared, Vec<Grantee>)> {
    let shared = Shared::parse(kind, target).map_err(anyhow::Error::msg)?;
    let grantees =
        share::parse_grantees(target.grantee.as_deref().unwrap_or_default(), shared.store)
            .map_err(anyhow::Error::msg)?;
    Ok((shared, grantees))
}

#[tokio::test(flavor = "multi_thread")]
async fn shares_are_taken_back_one_grantee_at_a_time_and_undone() -> Result<()> {
    let ec2 = ec2().await?;
    let api = Api::Ec2(ec2.clone());

    // An EBS snapshot, public and shared with an outside account.
    let snap = public_snapshot(&ec2).await?;
    let before = snapshot_shares(&ec2, &snap).await?;
    assert_eq!(before, [OUTSIDE, "all"]);
    let arn = format!("arn:aws:ec2:{REGION}:{ACCOUNT}:snapshot/{snap}");
    let (shared, everyone) = parsed(
        ActionKind::UnshareSnapshot,
        &target("ebs-snapshot", &arn, ACCOUNT, "all"),
    )?;
    let dry = share::unshare_recorded(&api, &shared, &everyone, true, &Unrecorded).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    assert_eq!(
        snapshot_shares(&ec2, &snap).await?,
        before,
        "dry-run changed nothing"
    );
    let applied = share::unshare_recorded(&api, &shared, &everyone, false, &Unrecorded).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert_eq!(applied.steps.len(), 1);
    // Only the grantee named goes: the account share is another alert's to take back.
    assert_eq!(snapshot_shares(&ec2, &snap).await?, [OUTSIDE]);
    let again = share::unshare_recorded(&api, &shared, &everyone, false, &Unrecorded).await;
    assert_eq!(
        again.outcome,
        ActionOutcome::AlreadyCompliant,
        "{}",
        again.detail
    );
    let undo = applied.undo.context("undo data")?;
    let mut with: Vec<&str> = undo["shared_with"]
        .as_array()
        .context("shared_with")?
        .iter()
        .filter_map(|g| g.as_str())
        .collect();
    with.sort();
    assert_eq!(with, [OUTSIDE, "all"], "every permission it had, recorded");
    let undone = share::undo(&api, &shared, &undo).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(snapshot_shares(&ec2, &snap).await?, before);
    // Undo data never reaches another resource than the one it names.
    let other = format!(
        "arn:aws:ec2:{REGION}:{ACCOUNT}:snapshot/{}",
        public_snapshot(&ec2).await?
    );
    let (other, _) = parsed(
        ActionKind::UnshareSnapshot,
        &target("ebs-snapshot", &other, ACCOUNT, "all"),
    )?;
    let misdirected = share::undo(&api, &other, &undo).await;
    assert_eq!(
        misdirected.outcome,
        ActionOutcome::Failed,
        "{}",
        misdirected.detail
    );

    // An AMI shared with an outside account.
    let image = ec2
        .register_image()
        .name(unique("golden"))
        .root_device_name("/dev/xvda")
        .send()
        .await?
        .image_id()
        .context("image id")?
        .to_string();
    ec2.modify_image_attribute()
        .image_id(&image)
        .launch_permission(
            aws_sdk_ec2::types::LaunchPermissionModifications::builder()
                .add(
                    aws_sdk_ec2::types::LaunchPermission::builder()
                        .user_id(OUTSIDE)
                        .build(),
                )
                .build(),
        )
        .send()
        .await?;
    assert_eq!(image_shares(&ec2, &image).await?, [OUTSIDE]);
    let arn = format!("arn:aws:ec2:{REGION}:{ACCOUNT}:image/{image}");
    let (shared, outside) = parsed(
        ActionKind::UnshareImage,
        &target("ami", &arn, ACCOUNT, OUTSIDE),
    )?;
    let applied = share::unshare_recorded(&api, &shared, &outside, false, &Unrecorded).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert!(image_shares(&ec2, &image).await?.is_empty());
    let undone = share::undo(&api, &shared, &applied.undo.context("undo")?).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(image_shares(&ec2, &image).await?, [OUTSIDE]);

    // An RDS snapshot shared with an outside account.
    let rds = rds().await?;
    let instance = unique("db").replace('_', "-");
    rds.create_db_instance()
        .db_instance_identifier(&instance)
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .master_username("admin1")
        .master_user_password("Correct-Horse-Battery-9")
        .allocated_storage(20)
        .send()
        .await?;
    let name = format!("{instance}-snap");
    rds.create_db_snapshot()
        .db_instance_identifier(&instance)
        .db_snapshot_identifier(&name)
        .send()
        .await?;
    rds.modify_db_snapshot_attribute()
        .db_snapshot_identifier(&name)
        .attribute_name("restore")
        .values_to_add(OUTSIDE)
        .send()
        .await?;
    assert_eq!(db_snapshot_shares(&rds, &name).await?, [OUTSIDE]);
    let arn = format!("arn:aws:rds:{REGION}:{ACCOUNT}:snapshot:{name}");
    let api = Api::Rds(rds.clone());
    let (shared, outside) = parsed(
        ActionKind::UnshareSnapshot,
        &target("rds-snapshot", &arn, ACCOUNT, OUTSIDE),
    )?;
    let dry = share::unshare_recorded(&api, &shared, &outside, true, &Unrecorded).await;
    assert_eq!(dry.outcome, ActionOutcome::DryRun, "{}", dry.detail);
    assert_eq!(db_snapshot_shares(&rds, &name).await?, [OUTSIDE]);
    let applied = share::unshare_recorded(&api, &shared, &outside, false, &Unrecorded).await;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert!(db_snapshot_shares(&rds, &name).await?.is_empty());
    let undone = share::undo(&api, &shared, &applied.undo.context("undo")?).await;
    assert_eq!(undone.outcome, ActionOutcome::Applied, "{}", undone.detail);
    assert_eq!(db_snapshot_shares(&rds, &name).await?, [OUTSIDE]);
    Ok(())
}

fn shared_out_alert(id: &str, actions: Vec<RequestedAction>) -> Result<Alert> {
    let mut alert: Alert = serde_json::from_str(include_str!("alert.json"))?;
    alert.id = id.into();
    alert.policy_id = "resource-shared-out".into();
    alert.actions = actions;
    Ok(alert)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_unshares_on_a_genuine_alert_and_undo_shares_again() -> Result<()> {
    let run = Run::new("unshare")?;
    let ec2 = ec2().await?;
    let snap = public_snapshot(&ec2).await?;
    let kept = public_snapshot(&ec2).await?;
    let config = std::env::temp_dir().join(format!("{}.toml", run.id));
    // Dry-run by default; this policy's unsharing switched on; `kept` protected by id.
    std::fs::write(
        &config,
        format!(
            "[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n\n\
             [remediate]\nprotected_resources = [\"{kept}\"]\n\n\
             [remediate.policies.resource-shared-out.actions]\nunshare_snapshot = \"auto\"\n",
            aws_endpoint()?
        ),
    )?;
    let config = config.to_str().context("path")?.to_string();
    let _remediate = run.spawn("remediate", &["--config", &config])?;
    let alerts = run.topic("alerts");
    let actions = run.topic("actions");
    wait_for_topic(&alerts, TIMEOUT)?;

    let unshare = |snapshot: &str, account: &str, grantee: &str| RequestedAction {
        kind: ActionKind::UnshareSnapshot,
        target: target(
            "ebs-snapshot",
            &format!("arn:aws:ec2:{REGION}:{ACCOUNT}:snapshot/{snapshot}"),
            account,
            grantee,
        ),
    };
    // One action for the whole share: public and an outside account.
    let both = format!("all,{OUTSIDE}");
    let alert = shared_out_alert("alert-public", vec![unshare(&snap, ACCOUNT, &both)])?;
    produce(&alerts, "k", &signed(alert)?).await?;
    // A protected snapshot, and a target whose account is not its ARN's: nothing done.
    let alert = shared_out_alert(
        "alert-kept",
        vec![
            unshare(&kept, ACCOUNT, "all"),
            unshare(&snap, OUTSIDE, OUTSIDE),
        ],
    )?;
    produce(&alerts, "k", &signed(alert)?).await?;
    // started + applied, refused, failed.
    let all = trailguard_tests::action_records(&actions, 4, TIMEOUT)?;
    let end = |alert: &str, account: &str| {
        all.iter()
            .rfind(|r| {
                r.alert_id == alert
                    && r.target.account_id.as_deref() == Some(account)
                    && r.outcome != ActionOutcome::Started
            })
            .cloned()
    };
    let applied = end("alert-public", ACCOUNT).context("applied record")?;
    assert_eq!(
        applied.outcome,
        ActionOutcome::Applied,
        "{}",
        applied.detail
    );
    assert_eq!(applied.steps.len(), 2, "{applied:?}");
    assert!(snapshot_shares(&ec2, &snap).await?.is_empty());
    let refused = end("alert-kept", ACCOUNT).context("refused record")?;
    assert_eq!(
        refused.outcome,
        ActionOutcome::Refused,
        "{}",
        refused.detail
    );
    assert!(refused.detail.contains("protected"), "{}", refused.detail);
    let misdirected = end("alert-kept", OUTSIDE).context("misdirected record")?;
    assert_eq!(
        misdirected.outcome,
        ActionOutcome::Failed,
        "{}",
        misdirected.detail
    );
    assert!(
        misdirected.detail.contains("not the account in its ARN"),
        "{}",
        misdirected.detail
    );
    assert_eq!(snapshot_shares(&ec2, &kept).await?, [OUTSIDE, "all"]);

    trailguard_tests::remediate_undo(&run, &config, &applied.id)?;
    assert_eq!(snapshot_shares(&ec2, &snap).await?, [OUTSIDE, "all"]);
    Ok(())
}
