//! The inventory's view of CloudTrail: one `TrailSnapshot` activity per account, naming every
//! trail that records the account, whether it is logging, what its event selectors keep and
//! whether its logs are being delivered — so detect can say when an account is not recorded at
//! all, which no event in the trail can ever show (a trail that was never created, or was
//! stopped before Trailguard started watching).
//!
//! ListTrails names every trail of the account in every region (and the organization's trail),
//! with its home region; each is then read in its home region by its ARN (GetTrail,
//! GetTrailStatus, GetEventSelectors). A call that fails is named under the trail's `errors`
//! (or the snapshot's, for ListTrails) instead of failing the inventory: detect does not judge
//! what could not be read.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use trailguard_common::aws::{Account, AwsConfig, CallError};
use trailguard_common::contract::{
    kinds, stable_id, Activity, Resource, INVENTORY_SOURCE, TRAIL_SNAPSHOT,
};
use trailguard_common::trail::DELIVERY_STALE_SECS;

/// What was read about one trail.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrailState {
    /// The trail's name.
    pub name: String,
    /// Its ARN (the account in it owns the trail: an organization trail's is the management
    /// account's).
    pub arn: String,
    /// The region it was created in.
    pub home_region: String,
    /// GetTrail: records every region.
    pub multi_region: Option<bool>,
    /// GetTrail: the organization's trail.
    pub organization: Option<bool>,
    /// GetTrail: records global services' events (IAM, STS, CloudFront).
    pub global_events: Option<bool>,
    /// GetTrail: the bucket its log files go to.
    pub bucket: Option<String>,
    /// GetTrailStatus: logging now.
    pub logging: Option<bool>,
    /// GetTrailStatus: the last error delivering log files to the bucket, if any.
    pub delivery_error: Option<String>,
    /// GetTrailStatus: when log files were last delivered.
    pub delivered: Option<DateTime<Utc>>,
    /// GetEventSelectors, in PutEventSelectors' request shapes: `eventSelectors` and
    /// `advancedEventSelectors`.
    pub selectors: Option<Map<String, Value>>,
    /// Calls that failed: what they would have read → the error.
    pub errors: Map<String, Value>,
}

/// The JSON describing one trail in a snapshot (pure).
fn trail_value(trail: &TrailState) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(trail.name));
    out.insert("trailARN".into(), json!(trail.arn));
    out.insert("homeRegion".into(), json!(trail.home_region));
    let optional = [
        ("isMultiRegionTrail", trail.multi_region.map(Value::Bool)),
        ("isOrganizationTrail", trail.organization.map(Value::Bool)),
        (
            "includeGlobalServiceEvents",
            trail.global_events.map(Value::Bool),
        ),
        ("s3BucketName", trail.bucket.clone().map(Value::String)),
        ("isLogging", trail.logging.map(Value::Bool)),
        (
            "latestDeliveryError",
            trail.delivery_error.clone().map(Value::String),
        ),
        (
            "latestDeliveryTime",
            trail.delivered.map(|t| json!(t.to_rfc3339())),
        ),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            out.insert(key.into(), value);
        }
    }
    if let Some(selectors) = &trail.selectors {
        out.extend(selectors.clone());
    }
    if !trail.errors.is_empty() {
        out.insert("errors".into(), Value::Object(trail.errors.clone()));
    }
    Value::Object(out)
}

/// The activity describing the trails of `account` (`Err`: they could not be listed), seen
/// at `now` (pure). Its id changes when what the trails record does — a trail's deliveries
/// becoming older than [`DELIVERY_STALE_SECS`] included — and otherwise once a day, not with
/// every delivery of log files.
pub fn snapshot_activity(
    account: &str,
    partition: &str,
    region: &str,
    trails: Result<&[TrailState], &str>,
    now: DateTime<Utc>,
) -> Activity {
    let mut params = Map::new();
    params.insert("accountId".into(), json!(account));
    let mut resources = Vec::new();
    match trails {
        Ok(trails) => {
            params.insert(
                "trails".into(),
                Value::Array(trails.iter().map(trail_value).collect()),
            );
            resources.extend(trails.iter().map(|t| Resource {
                kind: kinds::CLOUDTRAIL_TRAIL.into(),
                id: t.arn.clone(),
            }));
        }
        Err(error) => {
            params.insert("errors".into(), json!({ "trails": error }));
        }
    }
    let mut stable = params.clone();
    if let Some(Value::Array(trails)) = stable.get_mut("trails") {
        for trail in trails.iter_mut().filter_map(Value::as_object_mut) {
            let delivered = trail.remove("latestDeliveryTime").and_then(|t| {
                t.as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            });
            let recent =
                delivered.is_some_and(|t| (now - t.to_utc()).num_seconds() <= DELIVERY_STALE_SECS);
            trail.insert("deliveredRecently".into(), Value::Bool(recent));
        }
    }
    let digest = hex::encode(Sha256::digest(Value::Object(stable).to_string().as_bytes()));
    let day = now.format("%Y-%m-%d").to_string();
    let id = stable_id([INVENTORY_SOURCE, account, TRAIL_SNAPSHOT, &digest, &day]);
    crate::inventory::inventory_activity(
        crate::inventory::InventoryRecord {
            account,
            partition,
            region,
            event_name: TRAIL_SNAPSHOT,
        },
        id,
        Value::Object(params),
        resources,
        now,
    )
}

/// Data resources' values kept in a snapshot, at most (up to 250 each, and none decides
/// whether management writes are recorded): a snapshot stays far below the size at which
/// ingest would trim it.
const MAX_VALUES: usize = 16;

/// Event selectors in PutEventSelectors' request shapes (what CloudTrail logs, and what
/// detect's `cloudtrail-changes` reads).
fn selectors_value(
    out: &aws_sdk_cloudtrail::operation::get_event_selectors::GetEventSelectorsOutput,
) -> Map<String, Value> {
    let basic: Vec<Value> = out
        .event_selectors()
        .iter()
        .map(|s| {
            json!({
                "readWriteType": s.read_write_type().map(|t| t.as_str()),
                "includeManagementEvents": s.include_management_events(),
                "dataResources": s.data_resources().iter()
                    .map(|d| json!({"type": d.r#type(),
                        "values": &d.values()[..d.values().len().min(MAX_VALUES)],
                        "valuesCount": d.values().len()}))
                    .collect::<Vec<_>>(),
                "excludeManagementEventSources": s.exclude_management_event_sources(),
            })
        })
        .collect();
    let advanced: Vec<Value> = out
        .advanced_event_selectors()
        .iter()
        .map(|s| {
            let fields: Vec<Value> = s
                .field_selectors()
                .iter()
                .map(|f| {
                    let mut field = Map::new();
                    field.insert("field".into(), json!(f.field()));
                    // The values decide whether management writes are logged: kept whole
                    // (CloudTrail allows a few hundred in all).
                    for (key, values) in [
                        ("equals", f.equals()),
                        ("startsWith", f.starts_with()),
                        ("endsWith", f.ends_with()),
                        ("notEquals", f.not_equals()),
                        ("notStartsWith", f.not_starts_with()),
                        ("notEndsWith", f.not_ends_with()),
                    ] {
                        if !values.is_empty() {
                            field.insert(key.into(), json!(values));
                        }
                    }
                    Value::Object(field)
                })
                .collect();
            json!({ "name": s.name(), "fieldSelectors": fields })
        })
        .collect();
    let mut map = Map::new();
    map.insert("eventSelectors".into(), Value::Array(basic));
    map.insert("advancedEventSelectors".into(), Value::Array(advanced));
    map
}

/// A CloudTrail client of `account` in `region` (empty: the account's configured region).
fn client_in(aws: &AwsConfig, account: &Account, region: &str) -> aws_sdk_cloudtrail::Client {
    let config =
        trailguard_common::sdk_config!(aws_sdk_cloudtrail, aws, &account.sdk, "cloudtrail");
    let config = if region.is_empty() {
        config
    } else {
        config.region(aws_sdk_cloudtrail::config::Region::new(region.to_string()))
    };
    aws_sdk_cloudtrail::Client::from_conf(config.build())
}

/// Reads one trail in its home region; failures land in `errors`.
async fn read_trail(client: &aws_sdk_cloudtrail::Client, trail: &mut TrailState, calls: &mut u64) {
    let arn = trail.arn.clone();
    *calls += 3;
    match client.get_trail().name(&arn).send().await {
        Ok(out) => {
            if let Some(t) = out.trail() {
                trail.multi_region = t.is_multi_region_trail();
                trail.bucket = t.s3_bucket_name().map(str::to_string);
                trail.organization = t.is_organization_trail();
                trail.global_events = t.include_global_service_events();
            }
        }
        Err(e) => {
            trail.errors.insert(
                "trail".into(),
                json!(CallError::of("cloudtrail:GetTrail", &e).message),
            );
        }
    }
    match client.get_trail_status().name(&arn).send().await {
        Ok(out) => {
            trail.logging = out.is_logging();
            trail.delivery_error = out
                .latest_delivery_error()
                .filter(|e| !e.is_empty())
                .map(str::to_string);
            trail.delivered = out
                .latest_delivery_time()
                .and_then(|t| DateTime::from_timestamp(t.secs(), 0));
        }
        Err(e) => {
            trail.errors.insert(
                "status".into(),
                json!(CallError::of("cloudtrail:GetTrailStatus", &e).message),
            );
        }
    }
    match client.get_event_selectors().trail_name(&arn).send().await {
        Ok(out) => trail.selectors = Some(selectors_value(&out)),
        Err(e) => {
            trail.errors.insert(
                "eventSelectors".into(),
                json!(CallError::of("cloudtrail:GetEventSelectors", &e).message),
            );
        }
    }
}

/// Every trail of `account` (ListTrails, from `region`), each read in its home region; `Err`
/// when they could not be listed.
pub async fn read_trails(
    aws: &AwsConfig,
    account: &Account,
    region: &str,
    calls: &mut u64,
) -> Result<Vec<TrailState>, String> {
    let home = client_in(aws, account, region);
    let mut clients = std::collections::HashMap::new();
    let mut trails = Vec::new();
    let mut token: Option<String> = None;
    loop {
        *calls += 1;
        let page = home
            .list_trails()
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| CallError::of("cloudtrail:ListTrails", &e).message)?;
        for info in page.trails() {
            let Some(arn) = info.trail_arn() else {
                continue;
            };
            let home_region = info.home_region().unwrap_or(region).to_string();
            let mut trail = TrailState {
                name: info.name().unwrap_or(arn).to_string(),
                arn: arn.to_string(),
                home_region: home_region.clone(),
                ..TrailState::default()
            };
            let client = clients
                .entry(home_region.clone())
                .or_insert_with(|| client_in(aws, account, &home_region));
            read_trail(client, &mut trail, calls).await;
            trails.push(trail);
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(trails);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail() -> TrailState {
        TrailState {
            name: "org".into(),
            arn: "arn:aws:cloudtrail:us-east-1:111122223333:trail/org".into(),
            home_region: "us-east-1".into(),
            multi_region: Some(true),
            organization: Some(true),
            global_events: Some(true),
            logging: Some(true),
            delivered: DateTime::from_timestamp(1_700_000_000, 0),
            ..TrailState::default()
        }
    }

    /// What ingest writes of a trail's selectors is what detect judges: read through the SDK's
    /// own types, as from AWS.
    #[test]
    fn selectors_are_written_as_the_judgement_reads_them() -> Result<(), Box<dyn std::error::Error>>
    {
        use aws_sdk_cloudtrail::operation::get_event_selectors::GetEventSelectorsOutput;
        use aws_sdk_cloudtrail::types::{
            AdvancedEventSelector, AdvancedFieldSelector, DataResource, EventSelector,
            ReadWriteType,
        };
        use trailguard_common::trail::logs_no_management_writes;
        let basic = |rw: ReadWriteType, management: bool| {
            GetEventSelectorsOutput::builder()
                .event_selectors(
                    EventSelector::builder()
                        .read_write_type(rw)
                        .include_management_events(management)
                        .data_resources(
                            DataResource::builder()
                                .r#type("AWS::S3::Object")
                                .set_values(Some(
                                    (0..100).map(|i| format!("arn:aws:s3:::b{i}/")).collect(),
                                ))
                                .build(),
                        )
                        .build(),
                )
                .build()
        };
        let judged = |out: &GetEventSelectorsOutput| {
            logs_no_management_writes(&Value::Object(selectors_value(out)))
        };
        assert!(!judged(&basic(ReadWriteType::All, true)));
        assert!(!judged(&basic(ReadWriteType::WriteOnly, true)));
        assert!(judged(&basic(ReadWriteType::ReadOnly, true)));
        assert!(judged(&basic(ReadWriteType::All, false)));
        let values = selectors_value(&basic(ReadWriteType::All, true));
        assert_eq!(
            values["eventSelectors"][0]["dataResources"][0]["values"]
                .as_array()
                .map(Vec::len),
            Some(MAX_VALUES)
        );
        assert_eq!(
            values["eventSelectors"][0]["dataResources"][0]["valuesCount"],
            json!(100)
        );
        let field = |name: &str, value: &str| {
            AdvancedFieldSelector::builder()
                .field(name)
                .equals(value)
                .build()
        };
        let advanced = |fields: Vec<AdvancedFieldSelector>| -> Result<GetEventSelectorsOutput, Box<dyn std::error::Error>> {
            let selector = AdvancedEventSelector::builder()
                .name("s")
                .set_field_selectors(Some(fields))
                .build()?;
            Ok(GetEventSelectorsOutput::builder()
                .advanced_event_selectors(selector)
                .build())
        };
        let management = field("eventCategory", "Management")?;
        assert!(!judged(&advanced(vec![management.clone()])?));
        assert!(!judged(&advanced(vec![
            management.clone(),
            field("readOnly", "false")?
        ])?));
        assert!(judged(&advanced(vec![
            management,
            field("readOnly", "true")?
        ])?));
        assert!(judged(&advanced(vec![field("eventCategory", "Data")?])?));
        Ok(())
    }

    #[test]
    fn a_delivery_going_stale_changes_the_id() {
        // Midnight UTC; the last delivery at noon the day before.
        let midnight = DateTime::from_timestamp(1_699_920_000, 0).unwrap_or_default();
        let mut failing = trail();
        failing.delivery_error = Some("AccessDenied".into());
        failing.delivered = Some(midnight - chrono::Duration::hours(12));
        let id = |hour| {
            let now = midnight + chrono::Duration::hours(hour);
            snapshot_activity(
                "111122223333",
                "aws",
                "us-east-1",
                Ok(&[failing.clone()]),
                now,
            )
            .id
        };
        assert_eq!(id(1), id(10), "delivered within a day: the same id all day");
        assert_ne!(
            id(10),
            id(13),
            "the same day, no longer delivered within a day"
        );
    }

    #[test]
    fn snapshot_ids_follow_what_is_recorded_not_deliveries() {
        let day1 = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let snapshot = |trails: &[TrailState], now| {
            snapshot_activity("111122223333", "aws", "us-east-1", Ok(trails), now)
        };
        let a = snapshot(&[trail()], day1);
        assert_eq!(a.event_name, TRAIL_SNAPSHOT);
        assert_eq!(a.event_source, INVENTORY_SOURCE);
        assert_eq!(a.principal.kind, kinds::TRAILGUARD);
        let params = a.request_parameters.as_deref().cloned().unwrap_or_default();
        assert_eq!(params["trails"][0]["isLogging"], json!(true));
        assert_eq!(params["trails"][0]["homeRegion"], json!("us-east-1"));
        assert_eq!(a.resources[0].kind, kinds::CLOUDTRAIL_TRAIL);

        let mut delivered_later = trail();
        delivered_later.delivered = DateTime::from_timestamp(1_700_000_300, 0);
        let later = day1 + chrono::Duration::hours(1);
        assert_eq!(a.id, snapshot(&[delivered_later], later).id);
        let mut stopped = trail();
        stopped.logging = Some(false);
        assert_ne!(a.id, snapshot(&[stopped], later).id);
        assert_ne!(a.id, snapshot(&[], later).id);
        assert_ne!(
            a.id,
            snapshot(&[trail()], day1 + chrono::Duration::days(1)).id
        );
        let unlisted = snapshot_activity("111122223333", "aws", "us-east-1", Err("denied"), day1);
        let params = unlisted
            .request_parameters
            .as_deref()
            .cloned()
            .unwrap_or_default();
        assert_eq!(params["errors"]["trails"], json!("denied"));
        assert!(params.get("trails").is_none());
    }
}
