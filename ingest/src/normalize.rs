//! `normalize`: one raw CloudTrail record (JSON text) → one [`Activity`], or the reason it
//! cannot be one. Pure: no I/O, no clock.
//!
//! Accepts what real exports contain: RFC 3339 and `YYYY-MM-DD HH:MM:SS[.f]` times, Logstash's
//! `@timestamp` and Panther's `p_event_time` when `eventTime` is absent, leading-zero IPv4,
//! host names and `AWS Internal` as source, unknown fields anywhere, numbers where strings are
//! expected, and records wrapped in an EventBridge (`detail`) or export (`event`) envelope.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, NaiveDateTime, Utc};
use std::borrow::Cow;
use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;
use trailguard_common::contract::kinds;
use trailguard_common::contract::Actor;
use trailguard_common::contract::{
    stable_id, Activity, Outcome, OutcomeStatus, Principal, RawJson, Resource,
    ACTIVITY_SCHEMA_VERSION,
};

/// Why a record could not be normalized. Every variant is poison: retrying cannot help, so the
/// record goes to the dead-letter topic with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// The bytes are not JSON, or not the shape of a CloudTrail record.
    #[error("not a valid CloudTrail record: {0}")]
    Malformed(String),
    /// A field every CloudTrail record has is missing or empty.
    #[error("missing required field `{0}`")]
    Missing(&'static str),
    /// `eventTime` is present but is not a time.
    #[error("unparseable eventTime `{0}`")]
    BadTime(String),
    /// The record claims to come from Trailguard itself (an `eventSource` ending in
    /// `.trailguard`, or a `userIdentity.type` of `Trailguard`): only ingest's own inventory
    /// produces those, never CloudTrail. Detect trusts them (a bucket snapshot asks for
    /// `make_bucket_private`; Trailguard's own activity has no baseline), so from outside they
    /// are refused.
    #[error("reserved value: {0}")]
    Reserved(String),
}

impl NormalizeError {
    /// Closed-set kind, for metric labels and the DLQ `error_kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            NormalizeError::Malformed(_) => "malformed_record",
            NormalizeError::Missing(_) => "missing_field",
            NormalizeError::BadTime(_) => "bad_event_time",
            NormalizeError::Reserved(_) => "reserved_value",
        }
    }
}

impl From<NormalizeError> for trailguard_common::Poison {
    fn from(err: NormalizeError) -> Self {
        trailguard_common::Poison::new(err.kind(), err.to_string())
    }
}

/// Normalizes one CloudTrail record given as JSON text.
pub fn normalize(raw: &str) -> Result<Activity, NormalizeError> {
    normalize_at(raw, ("", 0))
}

/// Normalizes one record read at `arrival` (its input and its index there). A record
/// with neither `eventID` nor `requestID` (an export) has nothing that tells it from another
/// record with the same fields — two failed sign-ins by one user from one address in one second
/// — so its arrival goes into its id: both are kept, and reading the same input again still
/// gives the same ids.
pub fn normalize_at(raw: &str, arrival: (&str, usize)) -> Result<Activity, NormalizeError> {
    if !raw.trim_start().starts_with('{') {
        return Err(NormalizeError::Malformed(
            "a record must be a JSON object".into(),
        ));
    }
    normalize_text(raw, 0, arrival)
}

fn normalize_record<I: IdentityField>(
    record: RawRecord<I>,
    depth: u8,
    arrival: (&str, usize),
) -> Result<Activity, NormalizeError> {
    if record.event_name.is_none() && depth == 0 {
        // An envelope: EventBridge puts the record under `detail`, exports under `event`.
        if let Some(inner) = record
            .detail
            .or(record.event)
            .filter(|r| is_object(r.get()))
        {
            return normalize_text(inner.get(), depth + 1, arrival);
        }
    }
    let event_name = non_empty(record.event_name).ok_or(NormalizeError::Missing("eventName"))?;
    let event_source =
        non_empty(record.event_source).ok_or(NormalizeError::Missing("eventSource"))?;
    let time_text = non_empty(record.event_time)
        .or_else(|| non_empty(record.at_timestamp))
        .or_else(|| non_empty(record.p_event_time))
        .ok_or(NormalizeError::Missing("eventTime"))?;
    let event_time = parse_time(&time_text)
        .filter(|t| (EARLIEST..=LATEST).contains(&t.timestamp()))
        .ok_or_else(|| NormalizeError::BadTime(truncate(&time_text)))?;

    if event_source
        .to_ascii_lowercase()
        .trim_end()
        .ends_with(".trailguard")
    {
        return Err(NormalizeError::Reserved(format!(
            "eventSource `{}` is Trailguard's own",
            truncate(&event_source)
        )));
    }
    let region = non_empty(record.aws_region);
    let identity = match record.user_identity {
        Some(field) => field.identity()?,
        None => None,
    };
    let mut principal = principal(identity);
    if principal.kind.trim().eq_ignore_ascii_case("trailguard") {
        return Err(NormalizeError::Reserved(
            "userIdentity.type `Trailguard` is Trailguard's own".into(),
        ));
    }
    if principal.mfa_authenticated.is_none() && event_name == "ConsoleLogin" {
        principal.mfa_authenticated = record
            .additional_event_data
            .as_ref()
            .and_then(|d| d.get("MFAUsed"))
            .and_then(Value::as_str)
            .map(|v| v.eq_ignore_ascii_case("yes"));
    }
    let account_id =
        non_empty(record.recipient_account_id).or_else(|| principal.account_id.clone());
    let partition = principal
        .arn
        .as_deref()
        .and_then(arn_partition)
        .map(str::to_string)
        .or_else(|| region.as_deref().map(region_partition).map(str::to_string));
    // The address's text as it is hashed into the id: the parsed address as it prints, or
    // the host name as read.
    let (source_ip, source_host, source_text) = match non_empty(record.source_ip_address) {
        Some(text) => match parse_ip(&text) {
            Some(ip) => {
                let printed = ip_text(ip, text);
                (Some(ip), None, Some(printed))
            }
            None => (None, Some(text.clone()), Some(text)),
        },
        None => (None, None, None),
    };
    let outcome = outcome(
        &event_source,
        non_empty(record.error_code),
        non_empty(record.error_message),
        record.response_elements.as_ref(),
        record.service_event_details.as_deref(),
    );
    let resources = resources(
        &event_source,
        record.resources.as_ref(),
        record.request_parameters.as_ref(),
    );
    let event_id = non_empty(record.event_id);
    let request_id = non_empty(record.request_id);
    let time_key = event_time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let principal_key = principal.key();
    // A real CloudTrail eventID is a UUID, unique per event: with the fields below it names the
    // record. Without one (exports, test fixtures, a reused id like "1"), the parameters tell
    // apart records whose other fields coincide; serde_json's maps are sorted, so this text is
    // canonical whatever the key order of the source.
    let params_text = if event_id.as_deref().is_some_and(is_uuid) {
        String::new()
    } else {
        record
            .request_parameters
            .as_ref()
            .map(RawJson::canonical)
            .unwrap_or_default()
    };
    let parts = [
        event_id.as_deref().unwrap_or(""),
        time_key.as_str(),
        event_source.as_str(),
        event_name.as_str(),
        account_id.as_deref().unwrap_or(""),
        region.as_deref().unwrap_or(""),
        request_id.as_deref().unwrap_or(""),
        principal_key.as_str(),
        source_text.as_deref().unwrap_or(""),
        outcome.error_code.as_deref().unwrap_or(""),
        params_text.as_str(),
    ];
    // Only for a record with nothing of its own to tell it apart; no allocation otherwise (the
    // hot path).
    let arrival_text = (event_id.is_none() && request_id.is_none() && !arrival.0.is_empty())
        .then(|| format!("{}#{}", arrival.0, arrival.1));
    let id = stable_id(parts.into_iter().chain(arrival_text.as_deref()));

    let actor = Actor::of_event(&principal, partition.as_deref(), &event_source);
    Ok(Activity {
        schema_version: ACTIVITY_SCHEMA_VERSION,
        id,
        event_id,
        event_time,
        event_source,
        event_name,
        event_type: non_empty(record.event_type),
        account_id,
        region,
        partition,
        actor,
        principal,
        source_ip,
        source_host,
        user_agent: non_empty(record.user_agent),
        read_only: record.read_only.as_ref().and_then(as_bool),
        data_event: record.event_category.as_deref().is_some_and(|c| {
            c.eq_ignore_ascii_case("Data") || c.eq_ignore_ascii_case("NetworkActivity")
        }) || record.management_event.as_ref().and_then(as_bool) == Some(false),
        outcome,
        resources,
        request_id,
        request_parameters: record.request_parameters,
        response_elements: record.response_elements,
        additional_event_data: record.additional_event_data,
        enrichment: Default::default(),
        trimmed: Vec::new(),
    })
}

/// `8-4-4-4-12` hex digits.
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Event times outside 1970–2200 are rejected: no CloudTrail record has one, and time
/// arithmetic downstream (windows, horizons) must never reach the limits of the calendar.
const EARLIEST: i64 = 0;
const LATEST: i64 = 7_258_118_400;

/// Parses CloudTrail time stamps: RFC 3339, or `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z]` in UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let bare = text.strip_suffix('Z').unwrap_or(text);
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(bare, format).ok())
        .map(|t| t.and_utc())
}

/// Parses an IP address, accepting IPv4 written with leading zeros (`035.249.253.232`) as the
/// decimal address it means.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// `ip` as it prints (`to_string`), given `text`, which [`parse_ip`] read it from: an IPv4
/// address read strictly prints as it was written (std's parser takes no leading zeros, signs
/// or spaces), so its text is taken as it is — printing one was ≈ 3 % of normalizing a record.
fn ip_text(ip: IpAddr, text: String) -> String {
    match ip {
        IpAddr::V4(v4) if text.parse::<Ipv4Addr>() == Ok(v4) => text,
        _ => ip.to_string(),
    }
}

fn principal(identity: Option<RawIdentity>) -> Principal {
    let Some(id) = identity else {
        return Principal {
            kind: "Unknown".into(),
            ..Principal::default()
        };
    };
    let kind = non_empty(id.kind).unwrap_or_else(|| "Unknown".into());
    let arn = non_empty(id.arn);
    let session = id.session_context.and_then(|s| s.0).unwrap_or_default();
    let name = non_empty(id.user_name)
        .or_else(|| arn.as_deref().and_then(arn_name))
        .or_else(|| {
            id.on_behalf_of
                .as_ref()
                .and_then(|o| o.get("userId"))
                .and_then(Value::as_str)
                .map(str::to_string)
        });
    let is_root = kind == "Root" || arn.as_deref().is_some_and(|a| a.ends_with(":root"));
    Principal {
        is_root,
        name,
        account_id: non_empty(id.account_id),
        principal_id: non_empty(id.principal_id),
        access_key_id: non_empty(id.access_key_id),
        session_issuer_arn: session.session_issuer.and_then(|s| non_empty(s.arn)),
        mfa_authenticated: session
            .attributes
            .and_then(|a| a.mfa_authenticated)
            .and_then(|v| as_bool(&v)),
        invoked_by: non_empty(id.invoked_by),
        source_identity: non_empty(session.source_identity),
        on_behalf_of: id
            .on_behalf_of
            .as_ref()
            .and_then(|o| o.get("userId"))
            .and_then(Value::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_string),
        arn,
        kind,
    }
}

fn outcome(
    event_source: &str,
    error_code: Option<String>,
    error_message: Option<String>,
    response: Option<&RawJson>,
    service_details: Option<&RawValue>,
) -> Outcome {
    if error_code.is_some() {
        return Outcome {
            status: OutcomeStatus::Failure,
            error_code,
            error_message,
        };
    }
    // Sign-ins fail without an errorCode: the console's in `responseElements.ConsoleLogin =
    // "Failure"`, Identity Center's (a wrong password, a failed MFA code) in
    // `serviceEventDetails.CredentialVerification = "Failure"`. (Read only for sign-ins.)
    let says_failure =
        |m: &serde_json::Map<String, Value>| m.values().any(|v| v.as_str() == Some("Failure"));
    let signin_failed = event_source == "signin.amazonaws.com"
        && (response
            .and_then(|r| r.as_object())
            .is_some_and(says_failure)
            || service_details
                .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
                .as_ref()
                .and_then(Value::as_object)
                .is_some_and(says_failure));
    if signin_failed {
        return Outcome {
            status: OutcomeStatus::Failure,
            error_code: None,
            error_message: error_message.or_else(|| Some("Failed authentication".into())),
        };
    }
    Outcome {
        status: OutcomeStatus::Success,
        error_code: None,
        error_message,
    }
}

fn resources(
    event_source: &str,
    listed: Option<&Value>,
    request: Option<&RawJson>,
) -> Vec<Resource> {
    let mut out = Vec::new();
    let mut push = |kind: &str, id: &str| {
        if !id.is_empty() {
            out.push(Resource {
                kind: kind.to_string(),
                id: id.to_string(),
            });
        }
    };
    if let Some(items) = listed.and_then(Value::as_array) {
        for item in items {
            let arn = item
                .get("ARN")
                .or_else(|| item.get("arn"))
                .and_then(Value::as_str);
            if let Some(arn) = arn {
                push("arn", arn);
            }
        }
    }
    if let Some(params) = request.filter(|r| is_object(r.text())) {
        // The few members named below, read from the text without building the whole tree;
        // when that reading fails (a repeated key), from the parsed value, where the last of
        // repeated keys counts.
        let (view, set) = match serde_json::from_str::<ParamsView>(params.text()) {
            Ok(view) => {
                let set = view.instances_set.map(|raw| {
                    Cow::Owned(serde_json::from_str::<Value>(raw.get()).unwrap_or(Value::Null))
                });
                (view, set)
            }
            Err(_) => (
                ParamsView::of(params.as_object()),
                params.get("instancesSet").map(Cow::Borrowed),
            ),
        };
        fn text<'v>(field: &'v Option<Cow<'_, str>>) -> Option<&'v str> {
            field.as_deref()
        }
        if let Some(bucket) = text(&view.bucket_name) {
            push(kinds::S3_BUCKET, bucket);
        }
        if let Some(instance) = text(&view.instance_id) {
            push("ec2-instance", instance);
        }
        if let Some(set) = set {
            let items = set.get("items").and_then(Value::as_array);
            for item in items.into_iter().flatten() {
                if let Some(instance) = item.get("instanceId").and_then(Value::as_str) {
                    push("ec2-instance", instance);
                }
            }
        }
        if event_source == "cloudtrail.amazonaws.com" {
            if let Some(trail) = text(&view.name).or_else(|| text(&view.trail_name)) {
                push(kinds::CLOUDTRAIL_TRAIL, trail);
            }
        }
        if event_source == "iam.amazonaws.com" {
            if let Some(user) = text(&view.user_name) {
                push("iam-user", user);
            }
            if let Some(role) = text(&view.role_name) {
                push("iam-role", role);
            }
            if let Some(policy) = text(&view.policy_arn) {
                push("iam-policy", policy);
            }
        }
        if let Some(group) = text(&view.group_id) {
            push("security-group", group);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `arn:PARTITION:service:region:account:resource` → PARTITION.
fn arn_partition(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    (parts.next() == Some("arn"))
        .then(|| parts.next())
        .flatten()
        .filter(|p| !p.is_empty())
}

/// The name in an ARN's resource part: `user/path/alice` → `alice`,
/// `assumed-role/Role/session` → `Role/session`, `root` → `root`.
fn arn_name(arn: &str) -> Option<String> {
    let resource = arn.splitn(6, ':').nth(5)?;
    let name = match resource.split_once('/') {
        Some(("assumed-role" | "federated-user", rest)) => rest,
        Some((_, rest)) => rest.rsplit('/').next().unwrap_or(rest),
        None => resource,
    };
    (!name.is_empty()).then(|| name.to_string())
}

fn region_partition(region: &str) -> &'static str {
    const BY_PREFIX: [(&str, &str); 7] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-iso-", "aws-iso"),
        ("us-isob-", "aws-iso-b"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
        ("eusc-", "aws-eusc"),
    ];
    BY_PREFIX
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, partition)| partition)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

fn as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A string field that real data sometimes writes as a number or a boolean (written as a
/// `Value` writes them); null, an object or an array counts as absent.
fn lenient_string<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(de
        .deserialize_any(Text { scalars: true })?
        .map(Cow::into_owned))
}

/// A member of `requestParameters` read as a `Value`'s `as_str` reads it, borrowing the text
/// when it has no escapes; a number or a boolean is not a name and counts as absent.
fn param_text<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    de.deserialize_any(Text { scalars: false })
}

/// Reads a string (borrowed when it can be) and, with `scalars`, a number or a boolean as
/// text; anything else as absent, skipped without being built.
struct Text {
    scalars: bool,
}

impl<'de> Visitor<'de> for Text {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.scalars.then(|| Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.scalars.then(|| Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.scalars.then(|| Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        let text = serde_json::Number::from_f64(v).map(|n| Cow::Owned(n.to_string()));
        Ok(text.filter(|_| self.scalars))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

/// Whether raw JSON text is an object.
fn is_object(raw: &str) -> bool {
    raw.trim_start().starts_with('{')
}

/// Reads a record (a JSON object) and normalizes it. First in one pass over its text, building
/// only the fields it keeps, `userIdentity` included. When that fails, as records were read
/// before that pass existed: `userIdentity` through its parsed value, where a repeated key
/// reads as a `Value` reads it (the last one counts) and a `sessionContext` of an unexpected
/// shape counts as absent while the rest of the identity is still read; and an envelope's
/// record wholly so (it was read from the envelope's parsed value). A key repeated at a
/// record's top level makes it malformed, as it always did.
fn normalize_text(
    raw: &str,
    depth: u8,
    arrival: (&str, usize),
) -> Result<Activity, NormalizeError> {
    let first = match serde_json::from_str::<RawRecord>(raw) {
        Ok(record) => return normalize_record(record, depth, arrival),
        Err(e) => e,
    };
    let malformed = || NormalizeError::Malformed(first.to_string());
    match serde_json::from_str::<RawRecord<Box<RawValue>>>(raw) {
        Ok(record) => normalize_record(record, depth, arrival),
        Err(_) if depth > 0 => {
            let value: Value = serde_json::from_str(raw).map_err(|_| malformed())?;
            let record = RawRecord::<Box<RawValue>>::deserialize(value).map_err(|_| malformed())?;
            normalize_record(record, depth, arrival)
        }
        Err(_) => Err(malformed()),
    }
}

/// How a record's `userIdentity` was read: in the record's pass, or captured for a second
/// reading (see [`normalize_text`]).
trait IdentityField {
    fn identity(self) -> Result<Option<RawIdentity>, NormalizeError>;
}

impl IdentityField for MapOnly<RawIdentity> {
    fn identity(self) -> Result<Option<RawIdentity>, NormalizeError> {
        Ok(self.0)
    }
}

impl IdentityField for Box<RawValue> {
    fn identity(self) -> Result<Option<RawIdentity>, NormalizeError> {
        if !is_object(self.get()) {
            return Ok(None);
        }
        let malformed = |e: serde_json::Error| NormalizeError::Malformed(e.to_string());
        let mut value: Value = serde_json::from_str(self.get()).map_err(malformed)?;
        if let Some(session) = value.get_mut("sessionContext") {
            if session.is_object() && RawSessionContext::deserialize(&*session).is_err() {
                *session = Value::Null;
            }
        }
        RawIdentity::deserialize(value).map(Some).map_err(malformed)
    }
}

/// A member read only when it is an object (streamed into `T`); anything else counts as absent
/// and is skipped without being built.
struct MapOnly<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = MapOnly<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|t| MapOnly(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MapOnly(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(MapOnly(None))
            }
        }
        de.deserialize_any(Only(std::marker::PhantomData))
    }
}

/// The members of `requestParameters` that name resources.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ParamsView<'a> {
    #[serde(default, borrow, deserialize_with = "param_text")]
    bucket_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    instance_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    instances_set: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    trail_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    user_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    role_name: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    policy_arn: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "param_text")]
    group_id: Option<Cow<'a, str>>,
}

impl<'a> ParamsView<'a> {
    /// The same members, from a parsed object.
    fn of(params: Option<&'a serde_json::Map<String, Value>>) -> Self {
        let Some(params) = params else {
            return ParamsView::default();
        };
        let text = |key: &str| params.get(key).and_then(Value::as_str).map(Cow::Borrowed);
        ParamsView {
            bucket_name: text("bucketName"),
            instance_id: text("instanceId"),
            instances_set: None,
            name: text("name"),
            trail_name: text("trailName"),
            user_name: text("userName"),
            role_name: text("roleName"),
            policy_arn: text("policyArn"),
            group_id: text("groupId"),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound(deserialize = "I: Deserialize<'de>"))]
struct RawRecord<I = MapOnly<RawIdentity>> {
    #[serde(default, deserialize_with = "lenient_string")]
    event_time: Option<String>,
    #[serde(default, rename = "@timestamp", deserialize_with = "lenient_string")]
    at_timestamp: Option<String>,
    #[serde(default, rename = "p_event_time", deserialize_with = "lenient_string")]
    p_event_time: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    event_source: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    event_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    event_type: Option<String>,
    #[serde(default, rename = "eventID", deserialize_with = "lenient_string")]
    event_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    aws_region: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    recipient_account_id: Option<String>,
    #[serde(
        default,
        rename = "sourceIPAddress",
        deserialize_with = "lenient_string"
    )]
    source_ip_address: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    user_agent: Option<String>,
    #[serde(default)]
    read_only: Option<Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    event_category: Option<String>,
    #[serde(default)]
    management_event: Option<Value>,
    #[serde(default, deserialize_with = "lenient_string")]
    error_code: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    error_message: Option<String>,
    #[serde(default, rename = "requestID", deserialize_with = "lenient_string")]
    request_id: Option<String>,
    #[serde(default)]
    request_parameters: Option<RawJson>,
    #[serde(default)]
    response_elements: Option<RawJson>,
    #[serde(default)]
    additional_event_data: Option<RawJson>,
    /// Read only for sign-ins (Identity Center's verdicts); kept as text, not published.
    #[serde(default)]
    service_event_details: Option<Box<RawValue>>,
    /// One that is not an object (null, a string) counts as absent.
    #[serde(default)]
    user_identity: Option<I>,
    #[serde(default)]
    resources: Option<Value>,
    #[serde(default)]
    detail: Option<Box<RawValue>>,
    #[serde(default)]
    event: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIdentity {
    #[serde(default, rename = "type", deserialize_with = "lenient_string")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    principal_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    arn: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    account_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    access_key_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    user_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    invoked_by: Option<String>,
    #[serde(default)]
    on_behalf_of: Option<Value>,
    /// One that is not an object counts as absent; one of an unexpected shape too (see
    /// [`parse_record`]).
    #[serde(default)]
    session_context: Option<MapOnly<RawSessionContext>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSessionContext {
    #[serde(default)]
    attributes: Option<RawAttributes>,
    #[serde(default, deserialize_with = "lenient_string")]
    source_identity: Option<String>,
    #[serde(default)]
    session_issuer: Option<RawIssuer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAttributes {
    #[serde(default)]
    mfa_authenticated: Option<Value>,
}

#[derive(Deserialize)]
struct RawIssuer {
    #[serde(default, deserialize_with = "lenient_string")]
    arn: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_LOGIN_FAILURE: &str = r#"{"additionalEventData":{"LoginTo":"https://console.aws.amazon.com/console/","MFAUsed":"No","MobileVersion":"No"},"awsRegion":"us-east-1","eventID":"1","eventName":"ConsoleLogin","eventSource":"signin.amazonaws.com","eventTime":"2020-10-30T23:25:32Z","eventType":"AwsConsoleSignIn","eventVersion":"1.05","recipientAccountId":"493859302102","requestParameters":null,"responseElements":{"ConsoleLogin":"Failure"},"sourceIPAddress":"92.55.146.245","userAgent":"Mozilla","userIdentity":{"accountId":"493859302102","arn":"arn:aws:iam::493859302102:root","principalId":"493859302102","type":"Root","userName":"root"}}"#;

    #[test]
    fn records_without_ids_that_differ_only_by_arrival_are_kept_apart() -> Result<(), NormalizeError>
    {
        let no_id = ROOT_LOGIN_FAILURE.replace(r#""eventID":"1","#, "");
        let first = normalize_at(&no_id, ("export.json", 1))?;
        let second = normalize_at(&no_id, ("export.json", 2))?;
        assert_ne!(first.id, second.id, "two failed sign-ins in one second");
        assert_eq!(
            first.id,
            normalize_at(&no_id, ("export.json", 1))?.id,
            "a re-read repeats"
        );
        // With an id of its own, a record is the same wherever it was read.
        let a = normalize_at(ROOT_LOGIN_FAILURE, ("a.json", 1))?;
        assert_eq!(a.id, normalize_at(ROOT_LOGIN_FAILURE, ("b.json", 9))?.id);
        assert_eq!(a.id, normalize(ROOT_LOGIN_FAILURE)?.id);
        Ok(())
    }

    /// Identity Center's portal writes a sign-in as a challenge, then its verification, then
    /// (only when every factor passed) `UserAuthentication`; a wrong password is a
    /// `CredentialVerification` whose failure is in `serviceEventDetails`, with no errorCode.
    #[test]
    fn a_failed_identity_center_verification_is_a_failure() -> Result<(), NormalizeError> {
        let record = |name: &str, verdict: &str| {
            format!(
                r#"{{"eventVersion":"1.09","userIdentity":{{"type":"IdentityCenterUser","accountId":"123456789012","onBehalfOf":{{"userId":"94482488-3041-7026-18f3-be45837cd0e4","identityStoreArn":"arn:aws:identitystore::123456789012:identitystore/d-9067bc2b9c"}},"credentialId":"db5b5fab"}},"eventTime":"2026-10-20T14:50:00Z","eventSource":"signin.amazonaws.com","eventName":"{name}","awsRegion":"us-east-1","sourceIPAddress":"203.0.113.9","userAgent":"Mozilla/5.0","requestParameters":null,"responseElements":null,"additionalEventData":{{"AuthWorkflowID":"73ab4876","CredentialType":"PASSWORD"}},"serviceEventDetails":{{"{name}":"{verdict}"}},"requestID":"309d6b79","eventID":"79cb9e86-830c-71c2-cdcc-69292f45e678","readOnly":false,"eventType":"AwsServiceEvent","managementEvent":true,"recipientAccountId":"123456789012","eventCategory":"Management"}}"#
            )
        };
        let failed = normalize(&record("CredentialVerification", "Failure"))?;
        assert_eq!(failed.outcome.status, OutcomeStatus::Failure);
        assert_eq!(
            failed.outcome.error_message.as_deref(),
            Some("Failed authentication")
        );
        assert_eq!(
            failed.actor.id,
            "identity-center:94482488-3041-7026-18f3-be45837cd0e4"
        );
        let passed = normalize(&record("CredentialVerification", "Success"))?;
        assert_eq!(passed.outcome.status, OutcomeStatus::Success);
        // Elsewhere a "Failure" in serviceEventDetails is not a sign-in's.
        let other = record("CredentialVerification", "Failure")
            .replace("signin.amazonaws.com", "sso.amazonaws.com");
        assert_eq!(normalize(&other)?.outcome.status, OutcomeStatus::Success);
        Ok(())
    }

    #[test]
    fn failed_console_login_without_error_code_is_a_failure() -> Result<(), NormalizeError> {
        let a = normalize(ROOT_LOGIN_FAILURE)?;
        assert_eq!(a.outcome.status, OutcomeStatus::Failure);
        assert_eq!(
            a.outcome.error_message.as_deref(),
            Some("Failed authentication")
        );
        assert!(a.principal.is_root);
        assert_eq!(a.principal.mfa_authenticated, Some(false));
        assert_eq!(
            a.source_ip,
            Some(
                "92.55.146.245"
                    .parse()
                    .map_err(|_| NormalizeError::Missing("ip"))?
            )
        );
        assert_eq!(a.partition.as_deref(), Some("aws"));
        assert_eq!(a.account_id.as_deref(), Some("493859302102"));
        assert!(a.request_parameters.is_none());
        Ok(())
    }

    #[test]
    fn ids_differ_when_event_id_repeats() -> Result<(), NormalizeError> {
        let other = ROOT_LOGIN_FAILURE.replace("23:25:32", "23:25:33");
        assert_ne!(normalize(ROOT_LOGIN_FAILURE)?.id, normalize(&other)?.id);
        assert_eq!(
            normalize(ROOT_LOGIN_FAILURE)?.id,
            normalize(ROOT_LOGIN_FAILURE)?.id
        );
        Ok(())
    }

    #[test]
    fn time_formats() {
        for text in [
            "2020-10-30T23:25:32Z",
            "2020-10-30T23:25:32.000Z",
            "2020-10-30 23:25:32",
            "2020-10-30 23:25:32.000000000",
            "2020-10-30 23:25:32.000Z",
            "2020-10-30T23:25:32+00:00",
        ] {
            let t = parse_time(text).map(|t| t.timestamp());
            assert_eq!(t, Some(1_604_100_332), "{text}");
        }
        assert_eq!(parse_time("ThisIsAWrongEventTime"), None);
        assert_eq!(parse_time("redacted"), None);
        let far = r#"{"eventName":"X","eventSource":"s","eventTime":"+262000-01-01T00:00:00Z"}"#;
        assert!(matches!(normalize(far), Err(NormalizeError::BadTime(_))));
        let early = r#"{"eventName":"X","eventSource":"s","eventTime":"1969-12-31T23:59:59Z"}"#;
        assert!(matches!(normalize(early), Err(NormalizeError::BadTime(_))));
    }

    #[test]
    fn leading_zero_ipv4_and_hosts() {
        assert_eq!(parse_ip("035.249.253.232"), "35.249.253.232".parse().ok());
        assert_eq!(parse_ip("2001:db8::1"), "2001:db8::1".parse().ok());
        assert_eq!(parse_ip("AWS Internal"), None);
        assert_eq!(parse_ip("ec2.amazonaws.com"), None);
        assert_eq!(parse_ip("256.1.1.1"), None);
        assert_eq!(parse_ip("1.2.3"), None);
        assert_eq!(parse_ip("1.2.3.4.5"), None);
    }

    /// The id hashes the address as it prints; the text taken as it is must be exactly that.
    #[test]
    fn an_address_is_hashed_as_it_prints() {
        let mut texts: Vec<String> = [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            " 1.2.3.4",
            "1.2.3.4 ",
            "035.249.253.232",
            "1.02.3.4",
            "001.002.003.004",
            "2001:db8::1",
            "2001:DB8:0:0:0:0:0:1",
            "::ffff:1.2.3.4",
            "::1",
            "fe80::1",
        ]
        .iter()
        .map(|t| (*t).to_string())
        .collect();
        // Every octet value in every position, and a spread of whole addresses.
        for v in 0..=255u32 {
            texts.push(std::net::Ipv4Addr::from(v << 24 | v << 8 | 7).to_string());
            texts.push(std::net::Ipv4Addr::from(v.wrapping_mul(2_654_435_761)).to_string());
            texts.push(format!("{v}.{v:03}.{v}.{v}"));
        }
        for text in texts {
            let ip = parse_ip(&text).expect(&text);
            assert_eq!(ip_text(ip, text.clone()), ip.to_string(), "{text:?}");
        }
    }

    #[test]
    fn host_source_kept_as_host() -> Result<(), NormalizeError> {
        let raw = ROOT_LOGIN_FAILURE.replace("92.55.146.245", "AWS Internal");
        let a = normalize(&raw)?;
        assert_eq!(a.source_ip, None);
        assert_eq!(a.source_host.as_deref(), Some("AWS Internal"));
        Ok(())
    }

    /// Only ingest's own inventory produces Trailguard's event source and principal kind:
    /// from a file, S3 or SQS they would be trusted by detect, so they are refused.
    #[test]
    fn trailguard_reserved_values_are_refused() {
        let snapshot = ROOT_LOGIN_FAILURE.replace("signin.amazonaws.com", "inventory.trailguard");
        assert!(matches!(
            normalize(&snapshot),
            Err(NormalizeError::Reserved(_))
        ));
        let upper = ROOT_LOGIN_FAILURE.replace("signin.amazonaws.com", "Inventory.TRAILGUARD");
        assert!(matches!(
            normalize(&upper),
            Err(NormalizeError::Reserved(_))
        ));
        let own = ROOT_LOGIN_FAILURE.replace(r#""type":"Root""#, r#""type":"Trailguard""#);
        let err = normalize(&own).err();
        assert_eq!(
            err.as_ref().map(NormalizeError::kind),
            Some("reserved_value"),
            "{err:?}"
        );
        // Inside an EventBridge envelope too.
        let wrapped = format!(r#"{{"detail":{snapshot}}}"#);
        assert!(matches!(
            normalize(&wrapped),
            Err(NormalizeError::Reserved(_))
        ));
    }

    #[test]
    fn missing_fields_are_named() {
        let no_time = r#"{"eventName":"X","eventSource":"s3.amazonaws.com"}"#;
        assert_eq!(
            normalize(no_time),
            Err(NormalizeError::Missing("eventTime"))
        );
        let bad_time = r#"{"eventName":"X","eventSource":"s","eventTime":"soon"}"#;
        assert_eq!(
            normalize(bad_time),
            Err(NormalizeError::BadTime("soon".into()))
        );
        assert!(matches!(
            normalize("[1,2]"),
            Err(NormalizeError::Malformed(_))
        ));
        assert!(matches!(normalize("{"), Err(NormalizeError::Malformed(_))));
    }

    #[test]
    fn envelopes_are_unwrapped() -> Result<(), NormalizeError> {
        let wrapped = format!(r#"{{"rule_id":"x","event":{ROOT_LOGIN_FAILURE}}}"#);
        assert_eq!(normalize(&wrapped)?, normalize(ROOT_LOGIN_FAILURE)?);
        let bridge = format!(
            r#"{{"detail-type":"AWS Console Sign In via CloudTrail","detail":{ROOT_LOGIN_FAILURE}}}"#
        );
        assert_eq!(normalize(&bridge)?, normalize(ROOT_LOGIN_FAILURE)?);
        Ok(())
    }

    #[test]
    fn identity_center_and_partitions() -> Result<(), NormalizeError> {
        let raw = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"ListBuckets","eventSource":"s3.amazonaws.com","awsRegion":"us-gov-west-1","userIdentity":{"type":"IdentityCenterUser","arn":"","accountId":"1","onBehalfOf":{"userId":"u-123"}}}"#;
        let a = normalize(raw)?;
        assert_eq!(a.principal.arn, None);
        assert_eq!(a.principal.name.as_deref(), Some("u-123"));
        assert_eq!(a.partition.as_deref(), Some("aws-us-gov"));
        assert_eq!(a.principal.key(), "1/IdentityCenterUser/u-123");
        let cn = raw.replace(r#""arn":"""#, r#""arn":"arn:aws-cn:iam::1:user/bob""#);
        let a = normalize(&cn)?;
        assert_eq!(a.partition.as_deref(), Some("aws-cn"));
        assert_eq!(a.principal.name.as_deref(), Some("bob"));
        Ok(())
    }

    /// A failed sign-in names its IAM user without an ARN: the user's actor is built in the
    /// partition of the region, so it meets the user's own activity there.
    #[test]
    fn a_failed_sign_in_is_its_user_in_the_region_s_partition() -> Result<(), NormalizeError> {
        for (region, partition) in [
            ("us-east-1", "aws"),
            ("cn-north-1", "aws-cn"),
            ("us-gov-west-1", "aws-us-gov"),
            ("us-iso-east-1", "aws-iso"),
            ("us-isob-east-1", "aws-iso-b"),
            ("eu-isoe-west-1", "aws-iso-e"),
            ("us-isof-south-1", "aws-iso-f"),
            ("eusc-de-east-1", "aws-eusc"),
        ] {
            let raw = format!(
                r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"ConsoleLogin","eventSource":"signin.amazonaws.com","eventType":"AwsConsoleSignIn","awsRegion":"{region}","responseElements":{{"ConsoleLogin":"Failure"}},"errorMessage":"Failed authentication","userIdentity":{{"type":"IAMUser","principalId":"AIDAEXAMPLE","accountId":"111111111111","accessKeyId":"","userName":"alice"}}}}"#
            );
            let a = normalize(&raw)?;
            assert_eq!(a.partition.as_deref(), Some(partition), "{region}");
            assert_eq!(
                a.actor.id,
                format!("arn:{partition}:iam::111111111111:user/alice"),
                "{region}"
            );
            assert_eq!(a.actor_key(), a.actor.id, "{region}");
        }
        Ok(())
    }

    #[test]
    fn resources_from_parameters() -> Result<(), NormalizeError> {
        let raw = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"TerminateInstances","eventSource":"ec2.amazonaws.com","requestParameters":{"instancesSet":{"items":[{"instanceId":"i-1"},{"instanceId":"i-2"}]}},"userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/Admin/alice","sessionContext":{"attributes":{"mfaAuthenticated":"true"},"sessionIssuer":{"arn":"arn:aws:iam::1:role/Admin"}}}}"#;
        let a = normalize(raw)?;
        let ids: Vec<_> = a.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["i-1", "i-2"]);
        assert_eq!(a.principal.name.as_deref(), Some("Admin/alice"));
        assert_eq!(
            a.principal.session_issuer_arn.as_deref(),
            Some("arn:aws:iam::1:role/Admin")
        );
        assert_eq!(a.principal.mfa_authenticated, Some(true));
        Ok(())
    }

    /// A record with `userIdentity` members and `requestParameters` spliced in.
    fn with(identity: &str, params: &str) -> String {
        format!(
            r#"{{"eventTime":"2024-01-01T00:00:00Z","eventName":"PutBucketAcl","eventSource":"s3.amazonaws.com","eventID":"5b4bf2a7-53e4-4b5e-8d2f-3c4a7e8f9a01","userIdentity":{{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/Admin/alice"{identity}}},"requestParameters":{params}}}"#
        )
    }

    #[test]
    fn bulky_fields_are_carried_as_read_and_parsed_only_when_read() -> Result<(), NormalizeError> {
        let params = r#"{ "x-amz-acl": ["public-read"], "bucketName" : "b1", "AccessControlPolicy": {"Grant": [1, 2.5, null]} }"#;
        let a = normalize(&with("", params))?;
        let carried = a.request_parameters.as_ref().map(|p| p.text());
        let compact = r#"{"x-amz-acl":["public-read"],"bucketName":"b1","AccessControlPolicy":{"Grant":[1,2.5,null]}}"#;
        assert_eq!(
            carried,
            Some(compact),
            "the text as read: order kept, spacing dropped"
        );
        let json =
            serde_json::to_string(&a).map_err(|e| NormalizeError::Malformed(e.to_string()))?;
        assert!(json.contains(compact), "published as read: {json}");
        let value: Value = serde_json::from_str(params).unwrap_or_default();
        assert_eq!(a.request_parameters.as_deref(), Some(&value));
        assert_eq!(a.resources.len(), 1, "the bucket, read without the tree");
        Ok(())
    }

    #[test]
    fn what_a_value_refuses_in_a_bulky_field_is_malformed_as_before() {
        // serde_json skips these when it captures a field's text; a `Value` refuses them, so
        // the record is refused where it enters rather than failing a policy later.
        for bad in [r#"{"n":1e999}"#, r#"{"s":"\ud800"}"#] {
            let got = normalize(&with("", bad));
            assert!(
                matches!(got, Err(NormalizeError::Malformed(_))),
                "{bad}: {got:?}"
            );
        }
        // In a field Trailguard does not read, the same is skipped: the record is kept.
        let ignored = with(
            r#","webIdFederationData":{"n":1e999}"#,
            r#"{"bucketName":"b"}"#,
        );
        assert!(normalize(&ignored).is_ok());
    }

    #[test]
    fn repeated_keys_read_as_a_value_reads_them() -> Result<(), NormalizeError> {
        // The first reading refuses them; the tolerant one keeps the last of each.
        let a = normalize(&with(
            r#","arn":"arn:aws:sts::1:assumed-role/Other/bob""#,
            r#"{"bucketName":"first","bucketName":"last"}"#,
        ))?;
        assert_eq!(a.principal.name.as_deref(), Some("Other/bob"));
        let buckets: Vec<_> = a.resources.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(buckets, ["last"]);
        // At a record's top level a repeated key makes it malformed, as it always did.
        let top = with("", r#"{"bucketName":"b"}"#).replacen(
            r#""eventName":"PutBucketAcl""#,
            r#""eventName":"GetObject","eventName":"PutBucketAcl""#,
            1,
        );
        assert!(matches!(normalize(&top), Err(NormalizeError::Malformed(_))));
        // Inside an envelope the record was read from the envelope's value: the last counts.
        let wrapped = format!(r#"{{"detail":{top}}}"#);
        assert_eq!(normalize(&wrapped)?.event_name, "PutBucketAcl");
        Ok(())
    }

    #[test]
    fn a_second_reading_skips_what_the_first_skips() -> Result<(), NormalizeError> {
        // An odd sessionContext sends the record to the second reading; values a `Value`
        // refuses in fields Trailguard does not read are skipped there too, as they always were.
        for junk in ["1e999", r#""\ud800""#] {
            let raw = with(r#","sessionContext":{"attributes":"odd"}"#, "null").replacen(
                '{',
                &format!(r#"{{"eventVersion":{junk},"#),
                1,
            );
            let a = normalize(&raw)?;
            assert_eq!(
                a.principal.arn.as_deref(),
                Some("arn:aws:sts::1:assumed-role/Admin/alice")
            );
        }
        Ok(())
    }

    #[test]
    fn parameters_nested_past_what_a_value_reads_are_malformed() {
        let deep = format!(
            r#"{{"bucketName":"b","pad":{}{}}}"#,
            "[".repeat(130),
            "]".repeat(130)
        );
        assert!(matches!(
            normalize(&with("", &deep)),
            Err(NormalizeError::Malformed(_))
        ));
        let fine = format!(
            r#"{{"bucketName":"b","pad":{}{}}}"#,
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(normalize(&with("", &fine)).is_ok());
    }

    #[test]
    fn a_session_context_of_another_shape_leaves_the_rest_of_the_identity(
    ) -> Result<(), NormalizeError> {
        for session in [
            r#"[{"attributes":{"mfaAuthenticated":"true"}}]"#,
            r#""text""#,
            r#"{"attributes":"text","sessionIssuer":{"arn":"arn:aws:iam::1:role/Admin"}}"#,
        ] {
            let a = normalize(&with(
                &format!(r#","accountId":"1","sessionContext":{session}"#),
                "null",
            ))?;
            assert_eq!(a.principal.account_id.as_deref(), Some("1"), "{session}");
            assert_eq!(a.principal.mfa_authenticated, None, "{session}");
            assert_eq!(a.principal.session_issuer_arn, None, "{session}");
        }
        // An identity that is not an object is no identity.
        let a = normalize(&with("", "null").replacen(
            r#""userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::1:assumed-role/Admin/alice"}"#,
            r#""userIdentity":["IAMUser"]"#,
            1,
        ))?;
        assert_eq!(a.principal.kind, "Unknown");
        Ok(())
    }

    #[test]
    fn id_does_not_depend_on_key_order() -> Result<(), NormalizeError> {
        let a = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"X","eventSource":"s","requestParameters":{"a":1,"b":{"c":2,"d":3}}}"#;
        let b = r#"{"requestParameters":{"b":{"d":3,"c":2},"a":1},"eventSource":"s","eventName":"X","eventTime":"2024-01-01T00:00:00.000Z"}"#;
        assert_eq!(normalize(a)?.id, normalize(b)?.id);
        let c = a.replace(r#""a":1"#, r#""a":2"#);
        assert_ne!(normalize(a)?.id, normalize(&c)?.id);
        Ok(())
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("fd4f1042-c7f6-4107-a6ee-d841d92596e7"));
        assert!(!is_uuid("1"));
        assert!(!is_uuid("fd4f1042-c7f6-4107-a6ee-d841d92596eg"));
        assert!(!is_uuid("fd4f1042c-7f6-4107-a6ee-d841d92596e7"));
    }

    #[test]
    fn numbers_where_strings_expected() -> Result<(), NormalizeError> {
        let raw = r#"{"eventTime":"2024-01-01T00:00:00Z","eventName":"X","eventSource":"s","recipientAccountId":123456789012,"userIdentity":"weird"}"#;
        let a = normalize(raw)?;
        assert_eq!(a.account_id.as_deref(), Some("123456789012"));
        assert_eq!(a.principal.kind, "Unknown");
        Ok(())
    }
}
