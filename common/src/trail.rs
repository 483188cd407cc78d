//! What a CloudTrail trail records, judged from its settings in the shapes CloudTrail logs
//! them: detect's `cloudtrail-changes` reads a `PutEventSelectors` request, `trail-coverage`
//! the inventory's trail snapshot (which ingest writes in the same shapes).

use serde_json::Value;

/// A trail whose last delivery of log files failed, and which has delivered nothing for this
/// long, is not delivering. CloudTrail delivers within minutes of any event, and in most
/// accounts AWS's own services act every day. Ingest's snapshot id changes when a trail
/// crosses it, so detect judges the change the day it happens.
pub const DELIVERY_STALE_SECS: i64 = 86_400;

/// Whether event selectors (`eventSelectors`, else `advancedEventSelectors`, in
/// PutEventSelectors' request shapes) log no management write; empty lists are not judged.
pub fn logs_no_management_writes(params: &Value) -> bool {
    let list = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_array)
            .filter(|l| !l.is_empty())
    };
    if let Some(selectors) = list("eventSelectors") {
        let logs_writes = |s: &Value| {
            s.get("includeManagementEvents").and_then(Value::as_bool) != Some(false)
                && !s
                    .get("readWriteType")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.eq_ignore_ascii_case("ReadOnly"))
        };
        return !selectors.iter().any(logs_writes);
    }
    if let Some(selectors) = list("advancedEventSelectors") {
        let logs_writes = |s: &Value| {
            let fields = s.get("fieldSelectors").and_then(Value::as_array);
            let equals = |field: &str, value: &str| {
                fields.is_some_and(|f| {
                    f.iter().any(|f| {
                        f.get("field").and_then(Value::as_str) == Some(field)
                            && f.get("equals").and_then(Value::as_array).is_some_and(|v| {
                                v.iter().any(|v| {
                                    v.as_str().is_some_and(|v| v.eq_ignore_ascii_case(value))
                                })
                            })
                    })
                })
            };
            equals("eventCategory", "Management") && !equals("readOnly", "true")
        };
        return !selectors.iter().any(logs_writes);
    }
    false
}
