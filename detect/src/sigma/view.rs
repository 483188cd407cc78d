//! An activity under CloudTrail's own field names, for Sigma rules written against CloudTrail
//! records (`eventName`, `userIdentity.sessionContext.sessionIssuer.type`,
//! `requestParameters.…`).
//!
//! The activity keeps the record's request, response and additional data whole, and its
//! identity in parts ([`trailguard_common::contract::Principal`]); the identity is put back
//! together under CloudTrail's names when a rule asks for it. A CloudTrail field the activity
//! does not keep ([`NOT_KEPT`]) would make a rule silently miss, so such a rule is refused at
//! start-up ([`check_field`]); a name that is not CloudTrail's at all is absent, as it is in
//! CloudTrail.
//!
//! A field holding an object (`requestParameters|contains: …`) is searched through: it stands
//! for every value inside it, and a string inside it that holds a JSON document (a bucket or
//! role policy) stands for that document's values too.

use std::borrow::Cow;
use std::cell::OnceCell;

use rsigma_eval::event::{Event, EventValue};
use serde_json::{json, Map, Value};
use trailguard_common::Activity;

/// CloudTrail's top-level fields the activity does not keep.
const NOT_KEPT: &[&str] = &[
    "eventVersion",
    "eventCategory",
    "managementEvent",
    "sharedEventID",
    "vpcEndpointId",
    "vpcEndpointAccountId",
    "tlsDetails",
    "serviceEventDetails",
    "sessionCredentialFromConsole",
    "apiVersion",
    "insightDetails",
    "edgeDeviceDetails",
    "addendum",
    "resources",
];

/// Top-level fields the activity keeps, as single values.
const SCALARS: &[&str] = &[
    "eventName",
    "eventSource",
    "eventType",
    "eventTime",
    "eventID",
    "requestID",
    "awsRegion",
    "recipientAccountId",
    "sourceIPAddress",
    "userAgent",
    "readOnly",
    "errorCode",
    "errorMessage",
];

/// Documents the activity keeps whole.
const DOCUMENTS: &[&str] = &[
    "requestParameters",
    "responseElements",
    "additionalEventData",
];

/// The parts of `userIdentity` put back together (and the objects on their way).
const IDENTITY: &[&str] = &[
    "type",
    "arn",
    "accountId",
    "principalId",
    "accessKeyId",
    "userName",
    "invokedBy",
    "sessionContext",
    "sessionContext.sessionIssuer",
    "sessionContext.sessionIssuer.type",
    "sessionContext.sessionIssuer.arn",
    "sessionContext.sessionIssuer.userName",
    "sessionContext.sessionIssuer.accountId",
    "sessionContext.attributes",
    "sessionContext.attributes.mfaAuthenticated",
    "sessionContext.sourceIdentity",
];

/// Whether a rule may read `field`: `Err` names a CloudTrail field the activity does not keep.
pub fn check_field(field: &str) -> Result<(), String> {
    let (head, rest) = split(field);
    if NOT_KEPT.contains(&head) {
        return Err(format!(
            "field {field}: CloudTrail's, but not kept in Trailguard's activities"
        ));
    }
    if field.contains('[') {
        return Err(format!(
            "field {field}: array indexes in field names are not supported"
        ));
    }
    if head == "userIdentity" {
        // The identity is put back together in part: as a whole object it would miss what
        // was not kept.
        if let Some(whole) = [
            None,
            Some("sessionContext"),
            Some("sessionContext.sessionIssuer"),
            Some("sessionContext.attributes"),
        ]
        .iter()
        .find(|w| **w == rest)
        {
            return Err(format!(
                "field {field}: the whole {} object — Trailguard keeps only some of its fields (name them: userIdentity.{})",
                whole.map_or("userIdentity".to_string(), |w| format!("userIdentity.{w}")),
                IDENTITY.iter().filter(|f| !f.ends_with("sessionContext") && !f.ends_with("sessionIssuer") && !f.ends_with("attributes")).copied().collect::<Vec<_>>().join(", userIdentity.")
            ));
        }
        if let Some(rest) = rest {
            if !IDENTITY.contains(&rest) {
                return Err(format!(
                    "field {field}: CloudTrail's, but not kept in Trailguard's activities (kept: userIdentity.{})",
                    IDENTITY.join(", userIdentity.")
                ));
            }
        }
    }
    Ok(())
}

fn split(path: &str) -> (&str, Option<&str>) {
    match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    }
}

/// The value of the CloudTrail field `path` as text (a list or object as its JSON), for a
/// correlation's group or counted value; `None` when absent or null.
pub fn text_of(view: &CloudTrailView<'_>, path: &str) -> Option<String> {
    match view.get_field(path)? {
        EventValue::Null => None,
        value => match value.as_str() {
            Some(text) => Some(text.into_owned()),
            None => Some(value.to_json().to_string()),
        },
    }
}

/// An activity as a Sigma event with CloudTrail's field names.
pub struct CloudTrailView<'a> {
    a: &'a Activity,
    identity: OnceCell<Value>,
}

impl<'a> CloudTrailView<'a> {
    /// `a` under CloudTrail's names.
    pub fn new(a: &'a Activity) -> Self {
        CloudTrailView {
            a,
            identity: OnceCell::new(),
        }
    }

    /// `userIdentity` put back together from the activity's principal.
    fn identity(&self) -> &Value {
        self.identity.get_or_init(|| identity_of(self.a))
    }

    /// `userIdentity.<rest>` for the top-level fields read straight from the principal
    /// (rules ask for them most; building the whole identity for each activity was a fifth of
    /// Sigma's cost). The same as [`identity_of`] gives; `None`: not one of them.
    fn identity_field(&self, rest: &str) -> Option<Option<EventValue<'_>>> {
        let p = &self.a.principal;
        let text = |s: Option<&'a str>| s.map(|s| EventValue::Str(Cow::Borrowed(s)));
        Some(match rest {
            "type" => text(Some(p.kind.as_str()).filter(|k| !k.is_empty() && *k != "Unknown")),
            "arn" => text(p.arn.as_deref()),
            "accountId" => text(p.account_id.as_deref()),
            "principalId" => text(p.principal_id.as_deref()),
            "accessKeyId" => text(p.access_key_id.as_deref()),
            "invokedBy" => text(p.invoked_by.as_deref()),
            "userName" if matches!(p.kind.as_str(), "IAMUser" | "Root") => text(p.name.as_deref()),
            "userName" => None,
            _ => return None,
        })
    }

    fn scalar(&self, name: &str) -> Option<EventValue<'_>> {
        let a = self.a;
        let text = |s: Option<&'a str>| s.map(|s| EventValue::Str(Cow::Borrowed(s)));
        match name {
            // Always this one string: rules are routed by it (`route.rs` relies on that).
            "eventName" => text(Some(&a.event_name)),
            "eventSource" => text(Some(&a.event_source)),
            "eventType" => text(a.event_type.as_deref()),
            "eventTime" => Some(EventValue::Str(Cow::Owned(
                a.event_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ))),
            "eventID" => text(a.event_id.as_deref()),
            "requestID" => text(a.request_id.as_deref()),
            "awsRegion" => text(a.region.as_deref()),
            "recipientAccountId" => text(a.account_id.as_deref()),
            "sourceIPAddress" => match (&a.source_ip, &a.source_host) {
                (Some(ip), _) => Some(EventValue::Str(Cow::Owned(ip.to_string()))),
                (None, host) => text(host.as_deref()),
            },
            "userAgent" => text(a.user_agent.as_deref()),
            "readOnly" => a.read_only.map(EventValue::Bool),
            "errorCode" => text(a.outcome.error_code.as_deref()),
            "errorMessage" => text(a.outcome.error_message.as_deref()),
            _ => None,
        }
    }

    fn document(&self, name: &str) -> Option<&'a Value> {
        let a = self.a;
        match name {
            "requestParameters" => a.request_parameters.as_deref(),
            "responseElements" => a.response_elements.as_deref(),
            "additionalEventData" => a.additional_event_data.as_deref(),
            _ => None,
        }
    }

    /// The whole record as CloudTrail would write it (what the view keeps of it).
    fn record(&self) -> Value {
        let mut map = Map::new();
        for name in SCALARS {
            if let Some(v) = self.scalar(name) {
                map.insert((*name).to_string(), to_json(&v));
            }
        }
        for name in DOCUMENTS {
            if let Some(v) = self.document(name) {
                map.insert((*name).to_string(), v.clone());
            }
        }
        map.insert("userIdentity".into(), self.identity().clone());
        Value::Object(map)
    }
}

impl Event for CloudTrailView<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        let (head, rest) = split(path);
        if SCALARS.contains(&head) {
            return if rest.is_none() {
                self.scalar(head)
            } else {
                None
            };
        }
        if let (true, Some(rest)) = (head == "userIdentity", rest) {
            if let Some(found) = self.identity_field(rest) {
                return found;
            }
        }
        let root = match head {
            "userIdentity" => self.identity(),
            _ => self.document(head)?,
        };
        let found = match rest {
            None => EventValue::from(root),
            Some(rest) => {
                let mut found = Vec::new();
                descend(root, rest, &mut found);
                match found.len() {
                    0 => return None,
                    1 => EventValue::from(found[0]),
                    // Null wherever the path led: null, as one null is.
                    _ if found.iter().all(|v| v.is_null()) => EventValue::Null,
                    _ => EventValue::Array(found.into_iter().map(EventValue::from).collect()),
                }
            }
        };
        Some(searchable(found))
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        let mut found = false;
        self.visit_string_values(&mut |s| found = found || pred(s));
        found
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut out = Vec::new();
        self.visit_string_values(&mut |s| out.push(Cow::Owned(s.to_string())));
        out
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        for name in SCALARS {
            if let Some(EventValue::Str(s)) = self.scalar(name) {
                visit(&s);
            }
        }
        for name in DOCUMENTS {
            if let Some(document) = self.document(name) {
                strings(document, visit, 0);
            }
        }
        strings(self.identity(), visit, 0);
    }

    fn to_json(&self) -> Value {
        self.record()
    }
}

/// The values at dotted `path` under `value`: a key holding the whole path first (a field
/// named with a dot), else one segment at a time; an array on the way is fanned out over.
fn descend<'v>(value: &'v Value, path: &str, out: &mut Vec<&'v Value>) {
    match value {
        Value::Object(map) => {
            if let Some(found) = map.get(path) {
                out.push(found);
                return;
            }
            let (head, rest) = split(path);
            if let Some(next) = map.get(head) {
                match rest {
                    None => out.push(next),
                    Some(rest) => descend(next, rest, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                descend(item, path, out);
            }
        }
        _ => {}
    }
}

/// What `userIdentity` said, from the parts the activity keeps.
fn identity_of(a: &Activity) -> Value {
    let p = &a.principal;
    let mut identity = Map::new();
    let put = |map: &mut Map<String, Value>, k: &str, v: Option<&str>| {
        if let Some(v) = v {
            map.insert(k.to_string(), Value::String(v.to_string()));
        }
    };
    put(
        &mut identity,
        "type",
        // "Unknown" is ingest's word for a record without an identity.
        Some(p.kind.as_str()).filter(|k| !k.is_empty() && *k != "Unknown"),
    );
    put(&mut identity, "arn", p.arn.as_deref());
    put(&mut identity, "accountId", p.account_id.as_deref());
    put(&mut identity, "principalId", p.principal_id.as_deref());
    put(&mut identity, "accessKeyId", p.access_key_id.as_deref());
    put(&mut identity, "invokedBy", p.invoked_by.as_deref());
    // CloudTrail names IAM users (and, in some records, the root user); a session's name is
    // in its ARN, not here.
    if matches!(p.kind.as_str(), "IAMUser" | "Root") {
        put(&mut identity, "userName", p.name.as_deref());
    }
    let mut context = Map::new();
    if let Some(issuer) = p.session_issuer_arn.as_deref() {
        let resource = issuer.splitn(6, ':').nth(5).unwrap_or("");
        let kind = if resource.starts_with("role/") {
            "Role"
        } else if resource.starts_with("user/") {
            "IAMUser"
        } else if resource == "root" {
            "Root"
        } else {
            ""
        };
        let mut session_issuer = Map::new();
        put(
            &mut session_issuer,
            "type",
            Some(kind).filter(|k| !k.is_empty()),
        );
        put(&mut session_issuer, "arn", Some(issuer));
        put(
            &mut session_issuer,
            "userName",
            resource
                .rsplit('/')
                .next()
                .filter(|n| !n.is_empty() && *n != "root"),
        );
        put(
            &mut session_issuer,
            "accountId",
            issuer.split(':').nth(4).filter(|a| !a.is_empty()),
        );
        context.insert("sessionIssuer".into(), Value::Object(session_issuer));
    }
    // A console sign-in's MFA is its `additionalEventData.MFAUsed`, not a session attribute.
    if let Some(mfa) = p
        .mfa_authenticated
        .filter(|_| !(a.event_name == "ConsoleLogin" && p.session_issuer_arn.is_none()))
    {
        context.insert(
            "attributes".into(),
            json!({"mfaAuthenticated": if mfa { "true" } else { "false" }}),
        );
    }
    if let Some(source) = p.source_identity.as_deref() {
        context.insert("sourceIdentity".into(), Value::String(source.to_string()));
    }
    if !context.is_empty() {
        identity.insert("sessionContext".into(), Value::Object(context));
    }
    Value::Object(identity)
}

/// Deepest level searched inside a document (what rsigma itself walks to).
const MAX_DEPTH: usize = 64;
/// Longest string inside an object read as a JSON document of its own.
const MAX_NESTED_DOCUMENT: usize = 64 * 1024;

/// A value a rule compares against. An object stands for its JSON text and every value inside
/// it (so `contains` finds a key, a quoted pair, or a value), and a string inside an object
/// that holds a JSON document (a bucket or role policy), for that document's values too; a
/// path that fanned out over an array stands for the values it reached, each searched so.
fn searchable(value: EventValue<'_>) -> EventValue<'_> {
    match value {
        EventValue::Map(_) | EventValue::Array(_) => {
            let mut out = Vec::new();
            leaves(value, &mut out, false, 0);
            EventValue::Array(out)
        }
        other => other,
    }
}

/// The values inside `value`, in order (`inside`: `value` is within an object; `depth`: how
/// deep, bounded by [`MAX_DEPTH`]).
fn leaves<'v>(value: EventValue<'v>, out: &mut Vec<EventValue<'v>>, inside: bool, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        EventValue::Map(entries) => {
            out.push(EventValue::Str(Cow::Owned(
                to_json(&EventValue::Map(entries.clone())).to_string(),
            )));
            for (_, v) in entries {
                leaves(v, out, true, depth + 1);
            }
        }
        EventValue::Array(items) => {
            for v in items {
                leaves(v, out, inside, depth + 1);
            }
        }
        EventValue::Null => {}
        EventValue::Str(s) => {
            // One level of document in a string: a document in a document's string is
            // searched as text.
            let nested = (inside && depth < MAX_DEPTH && s.len() <= MAX_NESTED_DOCUMENT)
                .then(|| s.trim_start().chars().next())
                .flatten()
                .filter(|c| *c == '{' || *c == '[')
                .and_then(|_| serde_json::from_str::<Value>(&s).ok());
            out.push(EventValue::Str(s));
            if let Some(document) = nested {
                let mut inner = Vec::new();
                leaves(
                    EventValue::from(&document).into_owned_event(),
                    &mut inner,
                    false,
                    depth + 1,
                );
                out.extend(inner);
            }
        }
        other => out.push(other),
    }
}

/// Every string in `value` (to [`MAX_DEPTH`] levels).
fn strings(value: &Value, visit: &mut dyn FnMut(&str), depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, visit, depth + 1)),
        Value::Object(map) => map.values().for_each(|v| strings(v, visit, depth + 1)),
        _ => {}
    }
}

fn to_json(value: &EventValue<'_>) -> Value {
    match value {
        EventValue::Str(s) => Value::String(s.to_string()),
        EventValue::Int(n) => json!(n),
        EventValue::Float(f) => json!(f),
        EventValue::Bool(b) => Value::Bool(*b),
        EventValue::Null => Value::Null,
        EventValue::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        EventValue::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// An owned copy of a borrowed value (for values whose source does not outlive the call).
trait IntoOwnedEvent {
    fn into_owned_event(self) -> EventValue<'static>;
}

impl IntoOwnedEvent for EventValue<'_> {
    fn into_owned_event(self) -> EventValue<'static> {
        match self {
            EventValue::Str(s) => EventValue::Str(Cow::Owned(s.into_owned())),
            EventValue::Int(n) => EventValue::Int(n),
            EventValue::Float(f) => EventValue::Float(f),
            EventValue::Bool(b) => EventValue::Bool(b),
            EventValue::Null => EventValue::Null,
            EventValue::Array(items) => {
                EventValue::Array(items.into_iter().map(|v| v.into_owned_event()).collect())
            }
            EventValue::Map(entries) => EventValue::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned_event()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields read straight from the principal are what the whole identity gives.
    #[test]
    fn identity_fields_read_directly_equal_the_rebuilt_identity() {
        let identities = [
            json!({"type": "IAMUser", "userName": "alice", "accountId": "111111111111",
                "arn": "arn:aws:iam::111111111111:user/alice", "principalId": "AIDAEXAMPLE",
                "accessKeyId": "AKIAEXAMPLE"}),
            json!({"type": "AssumedRole", "accountId": "111111111111",
                "principalId": "AROAEXAMPLE:alice@example.com", "accessKeyId": "ASIAEXAMPLE",
                "arn": "arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_Admin_0123/alice@example.com",
                "sessionContext": {"sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
                    "arn": "arn:aws:iam::111111111111:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_0123",
                    "accountId": "111111111111", "userName": "AWSReservedSSO_Admin_0123"}}}),
            json!({"type": "Root", "accountId": "111111111111", "arn": "arn:aws:iam::111111111111:root",
                "principalId": "111111111111"}),
            json!({"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}),
            json!({"type": "FederatedUser", "accountId": "111111111111", "principalId": "111111111111:bob",
                "arn": "arn:aws:sts::111111111111:federated-user/bob"}),
            json!(null),
        ];
        for identity in identities {
            let mut record = json!({
                "eventVersion": "1.09", "eventTime": "2024-06-02T19:41:40Z",
                "eventSource": "iam.amazonaws.com", "eventName": "CreateUser",
                "eventID": "00000000-0000-4000-8000-000000000001", "sourceIPAddress": "198.51.100.7",
            });
            if !identity.is_null() {
                record["userIdentity"] = identity.clone();
            }
            let Ok(a) = trailguard_ingest::normalize::normalize(&record.to_string()) else {
                continue;
            };
            let view = CloudTrailView::new(&a);
            let whole = identity_of(&a);
            for field in [
                "type",
                "arn",
                "accountId",
                "principalId",
                "accessKeyId",
                "invokedBy",
                "userName",
            ] {
                let direct = view.get_field(&format!("userIdentity.{field}"));
                let mut found = Vec::new();
                descend(&whole, field, &mut found);
                let rebuilt = found.first().map(|v| searchable(EventValue::from(*v)));
                assert_eq!(
                    direct.map(|v| to_json(&v)),
                    rebuilt.map(|v| to_json(&v)),
                    "{field} of {identity}"
                );
            }
        }
    }
}
