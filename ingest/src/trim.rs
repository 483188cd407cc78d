//! Shrinking an activity too large for the broker, so detection still sees it. Pure.
//!
//! CloudTrail records can exceed a Kafka message: a `RunInstances` of a few hundred instances
//! answers with a `responseElements` of megabytes. Dropping such a record would let an attacker
//! hide a launch by its size, so the bulky JSON fields are reduced step by step — first their
//! nested detail (arrays keep their length, so counts such as the instances launched survive),
//! then the field itself, field by field from the least telling — then the resource list —
//! until the activity fits. Each step is named in [`Activity::trimmed`].

use serde_json::Value;
use trailguard_common::{Activity, RawJson};

/// Objects this deep inside a field keep only their scalar members when trimmed: for
/// `responseElements.instancesSet.items[i]` that keeps each instance's id, type and state and
/// drops its network interfaces, block devices and tags.
const KEEP_DEPTH: usize = 3;

/// Strings in a trimmed field are cut to this many characters.
const MAX_STRING_CHARS: usize = 256;

/// Resources kept when the resource list itself must be shortened.
const MAX_RESOURCES: usize = 100;

/// The bulky fields, in the order they are given up: what the call answered matters least to
/// detection, what it was asked most.
const FIELDS: [&str; 3] = [
    "responseElements",
    "additionalEventData",
    "requestParameters",
];

fn field<'a>(activity: &'a mut Activity, name: &str) -> &'a mut Option<RawJson> {
    match name {
        "responseElements" => &mut activity.response_elements,
        "additionalEventData" => &mut activity.additional_event_data,
        _ => &mut activity.request_parameters,
    }
}

/// Reduces `value` in place: objects at `depth` ≥ [`KEEP_DEPTH`] keep their scalar members,
/// long strings are cut, arrays keep every item.
fn reduce(value: &mut Value, depth: usize) {
    match value {
        Value::String(text) => {
            if let Some((cut, _)) = text.char_indices().nth(MAX_STRING_CHARS) {
                text.truncate(cut);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| reduce(v, depth + 1)),
        Value::Object(members) => {
            if depth >= KEEP_DEPTH {
                members.retain(|_, v| !matches!(v, Value::Array(_) | Value::Object(_)));
            }
            members.values_mut().for_each(|v| reduce(v, depth + 1));
        }
        _ => {}
    }
}

/// Shrinks `activity` until it takes at most `limit` bytes in `encoding`, noting each step in
/// its `trimmed`; returns those bytes, or `None` when even the smallest form is too large (an
/// enormous event name or principal).
pub fn shrink(
    activity: &mut Activity,
    limit: usize,
    encoding: trailguard_common::compact::ActivityEncoding,
) -> Option<Vec<u8>> {
    let fits = |a: &Activity| encoding.to_vec(a).ok().filter(|json| json.len() <= limit);
    for name in FIELDS {
        if let Some(raw) = field(activity, name).take() {
            let mut value = raw.into_value();
            reduce(&mut value, 0);
            *field(activity, name) = Some(value.into());
            activity
                .trimmed
                .push(format!("{name}: nested detail removed"));
            if let Some(json) = fits(activity) {
                return Some(json);
            }
        }
        // The field goes whole before the next, more telling one is touched.
        if field(activity, name).take().is_some() {
            activity.trimmed.push(format!("{name}: removed"));
            if let Some(json) = fits(activity) {
                return Some(json);
            }
        }
    }
    let resources = activity.resources.len();
    if resources > MAX_RESOURCES {
        activity.resources.truncate(MAX_RESOURCES);
        activity
            .trimmed
            .push(format!("resources: first {MAX_RESOURCES} of {resources}"));
        if let Some(json) = fits(activity) {
            return Some(json);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run_instances(instances: usize) -> Activity {
        let raw = json!({
            "eventVersion": "1.08", "eventTime": "2024-01-01T00:00:00Z",
            "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances",
            "awsRegion": "us-east-1", "sourceIPAddress": "1.2.3.4", "eventID": "e-1",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::1:user/u", "accountId": "1"},
            "requestParameters": {"instancesSet": {"items": [{"imageId": "ami-1", "minCount": instances, "maxCount": instances}]}},
            "responseElements": {"instancesSet": {"items": (0..instances).map(|i| json!({
                "instanceId": format!("i-{i:017x}"), "instanceType": "m5.large",
                "networkInterfaceSet": {"items": [{"networkInterfaceId": "eni-1", "privateIpAddress": "10.0.0.1", "groupSet": {"items": [{"groupId": "sg-1", "groupName": "x".repeat(200)}]}}]},
                "blockDeviceMapping": {"items": [{"deviceName": "/dev/xvda", "ebs": {"volumeId": "vol-1"}}]},
                "tagSet": {"items": [{"key": "k", "value": "v".repeat(300)}]}
            })).collect::<Vec<_>>()}}
        });
        crate::normalize::normalize(&raw.to_string()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_large_launch_keeps_every_instance() {
        let mut activity = run_instances(1200);
        let whole = serde_json::to_vec(&activity).map(|j| j.len()).unwrap_or(0);
        assert!(whole > 900_000, "{whole}");
        let json = shrink(&mut activity, 900_000, Default::default()).unwrap_or_default();
        assert!(!json.is_empty() && json.len() <= 900_000);
        assert_eq!(
            activity.trimmed,
            vec!["responseElements: nested detail removed"]
        );
        let items = &activity
            .response_elements
            .as_deref()
            .unwrap_or(&Value::Null)["instancesSet"]["items"];
        assert_eq!(
            items.as_array().map(Vec::len),
            Some(1200),
            "the count survives"
        );
        assert_eq!(items[7]["instanceId"], "i-00000000000000007");
        assert!(items[7].get("networkInterfaceSet").is_none());
        // What was asked is whole.
        assert_eq!(
            activity
                .request_parameters
                .as_deref()
                .unwrap_or(&Value::Null)["instancesSet"]["items"][0]["minCount"],
            1200
        );
    }

    #[test]
    fn fields_are_given_up_in_order_and_hopeless_ones_say_so() {
        let mut activity = run_instances(50);
        let json = shrink(&mut activity, 1_500, Default::default()).unwrap_or_default();
        assert!(!json.is_empty());
        // What was answered goes whole before what was asked is touched.
        assert_eq!(
            activity.trimmed,
            [
                "responseElements: nested detail removed",
                "responseElements: removed"
            ]
        );
        assert!(activity.request_parameters.is_some());
        let mut activity = run_instances(1);
        activity.event_name = "x".repeat(5_000);
        assert!(shrink(&mut activity, 2_000, Default::default()).is_none());
    }

    #[test]
    fn compact_activities_are_trimmed_to_their_own_size() {
        use trailguard_common::compact::{self, ActivityEncoding};
        let mut activity = run_instances(1200);
        let whole = ActivityEncoding::Compact
            .to_vec(&activity)
            .map(|b| b.len())
            .unwrap_or(0);
        assert!(whole > 900_000, "{whole}");
        let bytes = shrink(&mut activity, 900_000, ActivityEncoding::Compact).unwrap_or_default();
        assert!(!bytes.is_empty() && bytes.len() <= 900_000);
        let back = compact::decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.trimmed, ["responseElements: nested detail removed"]);
        assert_eq!(back.id, activity.id);
    }

    #[test]
    fn strings_are_cut_on_character_boundaries() {
        let mut value = json!({"a": "é".repeat(1000)});
        reduce(&mut value, 0);
        assert_eq!(
            value["a"].as_str().map(|s| s.chars().count()),
            Some(MAX_STRING_CHARS)
        );
    }
}
