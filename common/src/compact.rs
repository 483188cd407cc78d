//! The compact encoding of an [`Activity`]: the same activity as its JSON, in a binary layout
//! detect reads at a fraction of JSON's cost.
//!
//! Decoding an activity's JSON was twice what evaluating it cost in detect (≈ 21,700
//! instructions an activity against ≈ 11,300): serde_json finds the end of every key and
//! string, matches every key to a field, and walks every optional field through `Option`'s
//! visitor. Here the fields come in a fixed order, every string is its length and its bytes
//! (checked as UTF-8), and nothing is named. The three CloudTrail documents
//! (`requestParameters`, `responseElements`, `additionalEventData`) stay JSON text, checked as
//! [`RawJson`] checks them wherever it is read.
//!
//! Written by hand rather than with a serde binary format (postcard, bincode): those need every
//! field present in every message, so [`Activity`]'s serde attributes (fields left out when
//! empty, the raw documents read through serde_json's raw values) could not be used, and a
//! mirror of every type would be as long as this file. Here every field of every type is
//! destructured or built by name, so a field added to the contract does not compile until it
//! is encoded here too.
//!
//! The layout (`docs/wire.md` describes it for other readers): the four bytes `FF 54 47 41`
//! (`0xFF` cannot begin JSON, or appear in UTF-8 at all), a format byte ([`FORMAT`]), then the
//! fields in [`encode`]'s order. Lengths and counts are LEB128 varints; an optional string is
//! its length plus one, 0 when absent; an optional flag is 0 absent, 1 false, 2 true. Every
//! length and count is checked against what is left before anything is allocated, so a
//! hostile message decodes to at most about ten times its size (see [`LEAST_ITEM`]).

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::actor::{Actor, ActorKind};
use crate::contract::{Activity, Enrichment, Outcome, OutcomeStatus, Principal, Resource};
use crate::RawJson;

/// The first bytes of every compact activity.
pub const MAGIC: [u8; 4] = [0xFF, b'T', b'G', b'A'];

/// The layout's version, after [`MAGIC`]: a reader refuses a newer one.
pub const FORMAT: u8 = 1;

/// How ingest writes activities to the topic (`publish.activity_encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityEncoding {
    /// The activity's JSON, as `schemas/activity.schema.json` describes it (the default:
    /// anyone may read the topic).
    #[default]
    Json,
    /// This module's layout: detect decodes it at a fraction of JSON's cost.
    Compact,
}

impl ActivityEncoding {
    /// Appends `activity` in this encoding to `out`.
    pub fn write(self, activity: &Activity, out: &mut Vec<u8>) -> Result<(), WriteError> {
        match self {
            ActivityEncoding::Json => Ok(serde_json::to_writer(out, activity)?),
            ActivityEncoding::Compact => Ok(encode(activity, out)?),
        }
    }

    /// `activity` in this encoding.
    pub fn to_vec(self, activity: &Activity) -> Result<Vec<u8>, WriteError> {
        let mut out = Vec::new();
        self.write(activity, &mut out)?;
        Ok(out)
    }
}

/// True when `payload` is (or claims to be) a compact activity rather than JSON.
pub fn is_compact(payload: &[u8]) -> bool {
    payload.starts_with(&MAGIC)
}

/// Why an activity could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// As JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// In the compact encoding.
    #[error(transparent)]
    Compact(#[from] CompactError),
}

/// Why a compact activity could not be read (or written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// Not [`MAGIC`].
    #[error("not a compact activity (no magic)")]
    NotCompact,
    /// A layout newer than this reader's [`FORMAT`].
    #[error("compact format {0} is newer than this reader's ({FORMAT})")]
    NewerFormat(u8),
    /// The message ends inside a field.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// Bytes left after the last field.
    #[error("{0} bytes after the activity")]
    Trailing(usize),
    /// More text than the layout's four bytes of length can say.
    #[error("{0} bytes of text are more than 4 GiB")]
    TooLarge(usize),
    /// A field that does not hold what its place says.
    #[error("{field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl std::fmt::Display) -> CompactError {
    CompactError::Invalid {
        field,
        why: why.to_string(),
    }
}

/// Appends `activity`'s compact encoding to `out`; on an error, `out` may hold part of it.
pub fn encode(activity: &Activity, out: &mut Vec<u8>) -> Result<(), CompactError> {
    let Activity {
        schema_version,
        id,
        event_id,
        event_time,
        event_source,
        event_name,
        event_type,
        account_id,
        region,
        partition,
        principal,
        actor,
        source_ip,
        source_host,
        user_agent,
        read_only,
        data_event,
        outcome,
        resources,
        request_id,
        request_parameters,
        response_elements,
        additional_event_data,
        enrichment,
        trimmed,
    } = activity;
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT);
    // The text's length, filled in once it is written.
    let length_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let text_at = out.len();
    let mut w = Writer {
        text: out,
        shape: Vec::with_capacity(128),
    };
    let out = &mut w;
    out.varint(u64::from(*schema_version));
    out.str(id);
    out.opt(event_id.as_deref());
    out.varint(zigzag(event_time.timestamp()));
    out.varint(u64::from(event_time.timestamp_subsec_nanos()));
    out.str(event_source);
    out.str(event_name);
    out.opt(event_type.as_deref());
    out.opt(account_id.as_deref());
    out.opt(region.as_deref());
    out.opt(partition.as_deref());
    put_principal(out, principal);
    let Actor {
        kind,
        id,
        name,
        basis,
    } = actor;
    out.shape.push(actor_kind_byte(*kind));
    out.str(id);
    out.str(name);
    out.str(basis);
    match source_ip {
        None => out.shape.push(0),
        Some(IpAddr::V4(ip)) => {
            out.shape.push(4);
            out.shape.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V6(ip)) => {
            out.shape.push(6);
            out.shape.extend_from_slice(&ip.octets());
        }
    }
    out.opt(source_host.as_deref());
    out.opt(user_agent.as_deref());
    out.flag(*read_only);
    out.shape.push(u8::from(*data_event));
    let Outcome {
        status,
        error_code,
        error_message,
    } = outcome;
    out.shape.push(match status {
        OutcomeStatus::Success => 0,
        OutcomeStatus::Failure => 1,
    });
    out.opt(error_code.as_deref());
    out.opt(error_message.as_deref());
    out.varint(resources.len() as u64);
    for Resource { kind, id } in resources {
        out.str(kind);
        out.str(id);
    }
    out.opt(request_id.as_deref());
    for doc in [request_parameters, response_elements, additional_event_data] {
        // A null document is none, as its JSON (`null`) reads back.
        out.opt(
            doc.as_ref()
                .map(RawJson::text)
                .filter(|text| *text != "null"),
        );
    }
    // Detect fills the enrichment after it decodes: on the topic it is almost always empty,
    // and carried as its JSON when not.
    if enrichment.is_empty() {
        out.opt(None);
    } else {
        let json = serde_json::to_string(&**enrichment).map_err(|e| invalid("enrichment", e))?;
        out.opt(Some(&json));
    }
    out.varint(trimmed.len() as u64);
    for step in trimmed {
        out.str(step);
    }
    let Writer { text: out, shape } = w;
    let length = out.len() - text_at;
    let length = u32::try_from(length).map_err(|_| CompactError::TooLarge(length))?;
    out[length_at..text_at].copy_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&shape);
    Ok(())
}

fn put_principal(out: &mut Writer<'_>, principal: &Principal) {
    let Principal {
        kind,
        arn,
        name,
        account_id,
        principal_id,
        access_key_id,
        session_issuer_arn,
        mfa_authenticated,
        invoked_by,
        source_identity,
        on_behalf_of,
        is_root,
    } = principal;
    out.str(kind);
    for text in [
        arn,
        name,
        account_id,
        principal_id,
        access_key_id,
        session_issuer_arn,
    ] {
        out.opt(text.as_deref());
    }
    out.flag(*mfa_authenticated);
    for text in [invoked_by, source_identity, on_behalf_of] {
        out.opt(text.as_deref());
    }
    out.shape.push(u8::from(*is_root));
}

/// The kind a byte stands for ([`actor_kind_byte`]'s inverse).
fn actor_kind_of(byte: u8) -> Option<ActorKind> {
    Some(match byte {
        0 => ActorKind::User,
        1 => ActorKind::Person,
        2 => ActorKind::Role,
        3 => ActorKind::Root,
        4 => ActorKind::Federated,
        5 => ActorKind::Service,
        6 => ActorKind::Account,
        7 => ActorKind::Unknown,
        _ => return None,
    })
}

fn actor_kind_byte(kind: ActorKind) -> u8 {
    // Exhaustive: a new kind does not compile until it has a byte.
    match kind {
        ActorKind::User => 0,
        ActorKind::Person => 1,
        ActorKind::Role => 2,
        ActorKind::Root => 3,
        ActorKind::Federated => 4,
        ActorKind::Service => 5,
        ActorKind::Account => 6,
        ActorKind::Unknown => 7,
    }
}

/// Where [`encode`] writes: the strings into the message's text, everything else into its
/// shape (appended after the text).
struct Writer<'o> {
    text: &'o mut Vec<u8>,
    shape: Vec<u8>,
}

impl Writer<'_> {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.shape.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.shape.push(value as u8);
    }

    fn str(&mut self, text: &str) {
        self.varint(text.len() as u64);
        self.text.extend_from_slice(text.as_bytes());
    }

    fn opt(&mut self, text: Option<&str>) {
        match text {
            None => self.shape.push(0),
            Some(text) => {
                self.varint(text.len() as u64 + 1);
                self.text.extend_from_slice(text.as_bytes());
            }
        }
    }

    fn flag(&mut self, flag: Option<bool>) {
        self.shape.push(match flag {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1) as i64 ^ -((value & 1) as i64)
}

/// Reads one compact activity: the whole of `payload`, or why not.
pub fn decode(payload: &[u8]) -> Result<Activity, CompactError> {
    let rest = payload
        .strip_prefix(&MAGIC)
        .ok_or(CompactError::NotCompact)?;
    let (&format, rest) = rest
        .split_first()
        .ok_or(CompactError::Truncated(MAGIC.len()))?;
    if format > FORMAT {
        return Err(CompactError::NewerFormat(format));
    }
    if format == 0 {
        return Err(invalid("format", "0 is not a format"));
    }
    let (length, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(CompactError::Truncated(MAGIC.len() + 1))?;
    let length = usize::try_from(u32::from_le_bytes(*length)).unwrap_or(usize::MAX);
    if length > rest.len() {
        return Err(invalid(
            "text",
            format!("{length} bytes are past the message's end"),
        ));
    }
    let (text, shape) = rest.split_at(length);
    // Every string of the activity checked as UTF-8 at once (checked one by one, short
    // strings made this a fifth of decoding).
    let text =
        std::str::from_utf8(text).map_err(|e| invalid("text", format!("not UTF-8 ({e})")))?;
    let mut r = Reader {
        bytes: shape,
        at: 0,
        base: MAGIC.len() + 5 + length,
        text,
        used: 0,
    };
    let schema_version =
        u32::try_from(r.varint()?).map_err(|_| invalid("schema_version", "larger than 32 bits"))?;
    let id = r.string("id")?;
    let event_id = r.opt("event_id")?;
    let seconds = unzigzag(r.varint()?);
    // chrono holds a leap second as nanoseconds past 10⁹; it refuses what it cannot hold.
    let nanos = r.varint()?;
    let event_time = u32::try_from(nanos)
        .ok()
        .and_then(|nanos| DateTime::<Utc>::from_timestamp(seconds, nanos))
        .ok_or_else(|| {
            invalid(
                "event_time",
                format!("{seconds} s {nanos} ns is out of range"),
            )
        })?;
    let event_source = r.string("event_source")?;
    let event_name = r.string("event_name")?;
    let event_type = r.opt("event_type")?;
    let account_id = r.opt("account_id")?;
    let region = r.opt("region")?;
    let partition = r.opt("partition")?;
    let principal = Principal {
        kind: r.string("principal.type")?,
        arn: r.opt("principal.arn")?,
        name: r.opt("principal.name")?,
        account_id: r.opt("principal.account_id")?,
        principal_id: r.opt("principal.principal_id")?,
        access_key_id: r.opt("principal.access_key_id")?,
        session_issuer_arn: r.opt("principal.session_issuer_arn")?,
        mfa_authenticated: r.flag("principal.mfa_authenticated")?,
        invoked_by: r.opt("principal.invoked_by")?,
        source_identity: r.opt("principal.source_identity")?,
        on_behalf_of: r.opt("principal.on_behalf_of")?,
        is_root: r.bool("principal.is_root")?,
    };
    let kind = r.byte()?;
    let actor = Actor {
        kind: actor_kind_of(kind)
            .ok_or_else(|| invalid("actor.kind", format!("unknown kind {kind}")))?,
        id: r.string("actor.id")?,
        name: r.string("actor.name")?,
        basis: r.string("actor.basis")?,
    };
    let source_ip = match r.byte()? {
        0 => None,
        4 => Some(IpAddr::from(
            <[u8; 4]>::try_from(r.take(4)?).unwrap_or_default(),
        )),
        6 => Some(IpAddr::from(
            <[u8; 16]>::try_from(r.take(16)?).unwrap_or_default(),
        )),
        other => return Err(invalid("source_ip", format!("unknown family {other}"))),
    };
    let source_host = r.opt("source_host")?;
    let user_agent = r.opt("user_agent")?;
    let read_only = r.flag("read_only")?;
    let data_event = r.bool("data_event")?;
    let status = match r.byte()? {
        0 => OutcomeStatus::Success,
        1 => OutcomeStatus::Failure,
        other => return Err(invalid("outcome.status", format!("unknown status {other}"))),
    };
    let outcome = Outcome {
        status,
        error_code: r.opt("outcome.error_code")?,
        error_message: r.opt("outcome.error_message")?,
    };
    let count = r.count("resources")?;
    let mut resources = Vec::with_capacity(count);
    for _ in 0..count {
        resources.push(Resource {
            kind: r.string("resources.kind")?,
            id: r.string("resources.id")?,
        });
    }
    let request_id = r.opt("request_id")?;
    let request_parameters = r.document("request_parameters")?;
    let response_elements = r.document("response_elements")?;
    let additional_event_data = r.document("additional_event_data")?;
    let enrichment = match r.opt_str("enrichment")? {
        None => Enrichment::default(),
        Some(json) => serde_json::from_str(json).map_err(|e| invalid("enrichment", e))?,
    };
    let count = r.count("trimmed")?;
    let mut trimmed = Vec::with_capacity(count);
    for _ in 0..count {
        trimmed.push(r.string("trimmed")?);
    }
    if r.at < r.bytes.len() {
        return Err(CompactError::Trailing(r.bytes.len() - r.at));
    }
    if r.used < r.text.len() {
        return Err(CompactError::Trailing(r.text.len() - r.used));
    }
    Ok(Activity {
        schema_version,
        id,
        event_id,
        event_time,
        event_source,
        event_name,
        event_type,
        account_id,
        region,
        partition,
        principal,
        actor,
        source_ip,
        source_host,
        user_agent,
        read_only,
        data_event,
        outcome,
        resources,
        request_id,
        request_parameters,
        response_elements,
        additional_event_data,
        enrichment: Arc::new(enrichment),
        trimmed,
    })
}

/// The fewest bytes of a message a list's item is allowed: the least resource ingest writes
/// (`arn`, a one-character id, two lengths) takes six, and a trimming step more. So a message
/// of empty items — two bytes each, 48 decoded — is refused, and a message decodes to at most
/// about ten times its size (its JSON, to about three).
const LEAST_ITEM: usize = 6;

/// A cursor over a compact activity's shape, taking its strings from its text in turn.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where `bytes` begins in the message, for positions in errors.
    base: usize,
    text: &'a str,
    /// How much of `text` the strings read so far took.
    used: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> CompactError {
        CompactError::Truncated(self.base + self.at)
    }

    fn byte(&mut self) -> Result<u8, CompactError> {
        let byte = *self.bytes.get(self.at).ok_or_else(|| self.truncated())?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CompactError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.truncated())?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, CompactError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7F);
            // The tenth byte holds the top bit only.
            if shift == 63 && bits > 1 {
                break;
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("varint", "longer than 64 bits"))
    }

    /// A list's count, refused unless what is left of the message holds that many items of
    /// [`LEAST_ITEM`] bytes: checked before anything is allocated for them.
    fn count(&mut self, field: &'static str) -> Result<usize, CompactError> {
        let value = self.varint()?;
        let left = (self.bytes.len() - self.at) + (self.text.len() - self.used);
        match usize::try_from(value) {
            Ok(n) if n <= left / LEAST_ITEM => Ok(n),
            _ => Err(invalid(
                field,
                format!("{value} items cannot fit in the {left} bytes left"),
            )),
        }
    }

    /// The next `length` bytes of the text: refused past its end or inside a character.
    fn str_of(&mut self, field: &'static str, length: u64) -> Result<&'a str, CompactError> {
        let text = usize::try_from(length)
            .ok()
            .and_then(|n| self.used.checked_add(n))
            .and_then(|end| Some((self.text.get(self.used..end)?, end)));
        match text {
            Some((text, end)) => {
                self.used = end;
                Ok(text)
            }
            None => Err(invalid(
                field,
                format!(
                    "{length} bytes from byte {} of the text are not whole characters in it",
                    self.used
                ),
            )),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, CompactError> {
        let length = self.varint()?;
        self.str_of(field, length).map(str::to_owned)
    }

    fn opt_str(&mut self, field: &'static str) -> Result<Option<&'a str>, CompactError> {
        match self.varint()? {
            0 => Ok(None),
            length => self.str_of(field, length - 1).map(Some),
        }
    }

    fn opt(&mut self, field: &'static str) -> Result<Option<String>, CompactError> {
        Ok(self.opt_str(field)?.map(str::to_owned))
    }

    /// A CloudTrail document: a `null` one is none, as its JSON reads.
    fn document(&mut self, field: &'static str) -> Result<Option<RawJson>, CompactError> {
        self.opt_str(field)?
            .map(|text| RawJson::from_text(text).map_err(|e| invalid(field, e)))
            .transpose()
            // Compacted: white space around it is gone.
            .map(|doc| doc.filter(|doc| doc.text() != "null"))
    }

    fn flag(&mut self, field: &'static str) -> Result<Option<bool>, CompactError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(false)),
            2 => Ok(Some(true)),
            other => Err(invalid(field, format!("{other} is not a flag"))),
        }
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, CompactError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(field, format!("{other} is not a boolean"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// An activity with every field of every type set.
    fn full() -> Activity {
        serde_json::from_value(json!({
            "schema_version": 3,
            "id": "a1b2",
            "event_id": "e-1",
            "event_time": "2026-03-01T12:34:56.789012345Z",
            "event_source": "s3.amazonaws.com",
            "event_name": "PutBucketPolicy",
            "event_type": "AwsApiCall",
            "account_id": "111122223333",
            "region": "eu-west-1",
            "partition": "aws",
            "principal": {
                "type": "AssumedRole",
                "arn": "arn:aws:sts::111122223333:assumed-role/Admin/ana@example.com",
                "name": "ana@example.com",
                "account_id": "111122223333",
                "principal_id": "AROAEXAMPLE:ana@example.com",
                "access_key_id": "ASIAEXAMPLE",
                "session_issuer_arn": "arn:aws:iam::111122223333:role/Admin",
                "mfa_authenticated": true,
                "invoked_by": "cloudformation.amazonaws.com",
                "source_identity": "ana",
                "on_behalf_of": "9067-user",
                "is_root": false
            },
            "actor": {"kind": "person", "id": "person:ana", "name": "ana", "basis": "source_identity"},
            "source_ip": "203.0.113.9",
            "source_host": "ignored.example",
            "user_agent": "aws-cli/2.15 \"quoted\" \\ back\u{1}slash é 漢",
            "read_only": false,
            "data_event": true,
            "outcome": {"status": "failure", "error_code": "AccessDenied", "error_message": "no"},
            "resources": [{"kind": "s3-bucket", "id": "b"}, {"kind": "arn", "id": "arn:aws:s3:::b/k"}],
            "request_id": "r-1",
            "request_parameters": {"bucketName": "b", "policy": {"Statement": [{"Effect": "Allow", "n": 1.5e3}]}},
            "response_elements": null,
            "additional_event_data": {"x": [1, "two", true, null]},
            "enrichment": {
                "geo": {"country": "NL", "city": "Amsterdam", "latitude": 52.37, "longitude": 4.89, "accuracy_radius_km": 20},
                "ip_categories": ["hosting"],
                "network": {"asn": 14061, "organization": "DigitalOcean"}
            },
            "trimmed": ["responseElements: scalars only"]
        }))
        .expect("the full activity reads")
    }

    const ACTOR_KINDS: [ActorKind; 8] = [
        ActorKind::User,
        ActorKind::Person,
        ActorKind::Role,
        ActorKind::Root,
        ActorKind::Federated,
        ActorKind::Service,
        ActorKind::Account,
        ActorKind::Unknown,
    ];

    /// An activity with only what is required.
    fn sparse() -> Activity {
        serde_json::from_value(json!({
            "schema_version": 2,
            "id": "",
            "event_time": "1969-12-31T23:59:59Z",
            "event_source": "",
            "event_name": "",
            "principal": {"type": "Unknown", "is_root": false},
            "outcome": {"status": "success"}
        }))
        .expect("the sparse activity reads")
    }

    fn json_of(activity: &Activity) -> Value {
        serde_json::to_value(activity).expect("an activity serializes")
    }

    /// `activity` written as JSON and read back as detect reads JSON.
    fn through_json(activity: &Activity) -> Activity {
        let json = serde_json::to_vec(activity).expect("serializes");
        serde_json::from_slice(&json).expect("its JSON reads back")
    }

    fn round_trip(activity: &Activity) -> Activity {
        let bytes = ActivityEncoding::Compact.to_vec(activity).expect("encodes");
        assert!(is_compact(&bytes));
        decode(&bytes).expect("decodes")
    }

    #[test]
    fn every_field_comes_back_as_it_went() {
        let mut v6 = full();
        v6.source_ip = Some("2001:db8::1".parse().expect("an address"));
        v6.read_only = None;
        v6.principal.mfa_authenticated = Some(false);
        v6.principal.is_root = true;
        v6.outcome.status = OutcomeStatus::Success;
        for activity in [full(), sparse(), v6] {
            assert_eq!(json_of(&round_trip(&activity)), json_of(&activity));
        }
        // The documents' text is kept byte for byte, not re-serialized.
        let back = round_trip(&full());
        assert_eq!(
            back.request_parameters.as_ref().map(RawJson::text),
            full().request_parameters.as_ref().map(RawJson::text)
        );
        assert_eq!(back.event_time, full().event_time);
    }

    #[test]
    fn every_actor_kind_comes_back() {
        for kind in ACTOR_KINDS {
            let mut activity = sparse();
            activity.actor.kind = kind;
            assert_eq!(round_trip(&activity).actor.kind, kind);
        }
    }

    #[test]
    fn a_leap_second_comes_back() {
        let mut activity = sparse();
        activity.event_time =
            DateTime::<Utc>::from_timestamp(1_483_228_799, 1_500_000_000).expect("a leap second");
        assert_eq!(round_trip(&activity).event_time, activity.event_time);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // docs/wire.md, byte for byte: an encoder and decoder changed together would pass
        // every round trip and still break messages already on the topic, and older detects.
        let mut activity = sparse();
        activity.id = "i".into();
        activity.event_time = DateTime::<Utc>::from_timestamp(1_700_000_000, 5).expect("a time");
        activity.event_source = "s".into();
        activity.event_name = "n".into();
        activity.region = Some("r".into());
        activity.principal.mfa_authenticated = Some(true);
        activity.actor = Actor {
            kind: ActorKind::Role,
            id: "a".into(),
            name: String::new(),
            basis: "b".into(),
        };
        activity.source_ip = Some("192.0.2.1".parse().expect("an address"));
        activity.read_only = Some(false);
        activity.data_event = true;
        activity.resources = vec![Resource {
            kind: "k".into(),
            id: "d".into(),
        }];
        activity.request_parameters = Some(RawJson::from_text("{}").expect("json"));
        activity.trimmed = vec!["trimmed".into()];
        let bytes = ActivityEncoding::Compact
            .to_vec(&activity)
            .expect("encodes");
        let text = "isnrUnknownabkd{}trimmed";
        let mut expected = vec![0xFF, b'T', b'G', b'A', 1, text.len() as u8, 0, 0, 0];
        expected.extend_from_slice(text.as_bytes());
        expected.extend_from_slice(&[
            2, // schema version
            1, 0, // id, event id (absent)
            0x80, 0xC4, 0x9F, 0xD5, 0x0C, 5, // 1,700,000,000 s zigzagged, 5 ns
            1, 1, 0, 0, 2, 0, // source, name, type, account, region "r", partition
            7, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, // principal: type .. is_root
            2, 1, 0, 1, // actor: role, id, name, basis
            4, 192, 0, 2, 1, // source_ip
            0, 0, 1, 1, // source_host, user_agent, read_only false, data_event
            0, 0, 0, // outcome
            1, 1, 1, // one resource
            0, 3, 0, 0, // request id, the documents
            0, 1, 7, // enrichment, one trimmed step
        ]);
        assert_eq!(bytes, expected);
        assert_eq!(
            json_of(&decode(&expected).expect("decodes")),
            json_of(&activity)
        );
    }

    #[test]
    fn actor_kind_bytes_go_both_ways() {
        let kinds: Vec<(u8, ActorKind)> = (0..=u8::MAX)
            .filter_map(|b| actor_kind_of(b).map(|k| (b, k)))
            .collect();
        // Eight kinds, 0-7: a kind added to `ActorKind` needs a byte in both functions.
        assert_eq!(kinds.len(), 8);
        for (byte, kind) in kinds {
            assert_eq!(actor_kind_byte(kind), byte);
        }
    }

    #[test]
    fn a_message_costs_a_bounded_multiple_of_its_size() {
        // Lists of empty items: each takes two bytes of the shape, and 48 bytes decoded.
        let mut activity = sparse();
        activity.resources = vec![
            Resource {
                kind: String::new(),
                id: String::new(),
            };
            1000
        ];
        let bytes = ActivityEncoding::Compact
            .to_vec(&activity)
            .expect("encodes");
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "resources",
                ..
            })
        ));
        let mut activity = sparse();
        activity.trimmed = vec![String::new(); 1000];
        let bytes = ActivityEncoding::Compact
            .to_vec(&activity)
            .expect("encodes");
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "trimmed",
                ..
            })
        ));
        // The least resource ingest writes (`arn` and a one-character id) reads back.
        let mut activity = sparse();
        activity.resources = vec![
            Resource {
                kind: "arn".into(),
                id: "x".into(),
            };
            1000
        ];
        assert_eq!(round_trip(&activity).resources.len(), 1000);
    }

    #[test]
    fn every_cut_is_refused() {
        let bytes = ActivityEncoding::Compact.to_vec(&full()).expect("encodes");
        for end in 0..bytes.len() {
            assert!(
                decode(&bytes[..end]).is_err(),
                "cut at {end} of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn bytes_after_the_activity_are_refused() {
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&sparse())
            .expect("encodes");
        bytes.push(0);
        assert_eq!(decode(&bytes).err(), Some(CompactError::Trailing(1)));
    }

    #[test]
    fn a_newer_format_is_named() {
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&sparse())
            .expect("encodes");
        bytes[MAGIC.len()] = FORMAT + 1;
        assert_eq!(
            decode(&bytes).err(),
            Some(CompactError::NewerFormat(FORMAT + 1))
        );
        bytes[MAGIC.len()] = 0;
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "format",
                ..
            })
        ));
    }

    /// Where two encodings first differ.
    fn first_difference(a: &Activity, b: &Activity) -> usize {
        let (a, b) = (
            ActivityEncoding::Compact.to_vec(a).expect("encodes"),
            ActivityEncoding::Compact.to_vec(b).expect("encodes"),
        );
        a.iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .expect("they differ")
    }

    #[test]
    fn a_count_past_the_end_is_refused_before_allocating() {
        let none = sparse();
        // Empty strings: the two messages' texts are the same, their shapes differ at the count.
        let mut one = sparse();
        one.resources.push(Resource {
            kind: String::new(),
            id: String::new(),
        });
        let at = first_difference(&none, &one);
        let mut bytes = ActivityEncoding::Compact.to_vec(&none).expect("encodes");
        // 2⁶³: were it trusted, the vector's capacity alone would abort the process.
        bytes.splice(
            at..=at,
            [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        );
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "resources",
                ..
            })
        ));
    }

    /// Where a message's shape begins: after the magic, the format, the text's length and
    /// the text.
    fn shape_at(bytes: &[u8]) -> usize {
        let length = u32::from_le_bytes(bytes[5..9].try_into().expect("four bytes"));
        9 + length as usize
    }

    #[test]
    fn a_length_past_the_end_is_refused() {
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&sparse())
            .expect("encodes");
        // The id's length: the shape's second byte, after the one-byte schema version.
        let at = shape_at(&bytes) + 1;
        assert_eq!(bytes[at], 0);
        bytes[at] = 100;
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid { field: "id", .. })
        ));
        // A varint of eleven bytes is no number.
        bytes.splice(at..=at, [0xFF; 11]);
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "varint",
                ..
            })
        ));
        // A text longer than the message.
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&sparse())
            .expect("encodes");
        bytes[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid { field: "text", .. })
        ));
    }

    #[test]
    fn text_that_is_not_utf8_is_refused() {
        let mut activity = sparse();
        activity.event_name = "X".into();
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&activity)
            .expect("encodes");
        let at = bytes.iter().position(|b| *b == b'X').expect("the name");
        bytes[at] = 0xC3;
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid { field: "text", .. })
        ));
    }

    #[test]
    fn a_string_that_ends_inside_a_character_is_refused() {
        let mut activity = sparse();
        activity.event_name = "é".into();
        let mut bytes = ActivityEncoding::Compact
            .to_vec(&activity)
            .expect("encodes");
        // The shape's lengths: schema version, id (0), event id (absent), time (two varints),
        // event source (0), then the event name's 2.
        let at = shape_at(&bytes);
        let name = at
            + bytes[at..]
                .iter()
                .skip(1)
                .position(|b| *b == 2)
                .expect("its length")
            + 1;
        bytes[name] = 1;
        assert!(matches!(
            decode(&bytes),
            Err(CompactError::Invalid {
                field: "event_name",
                ..
            })
        ));
    }

    #[test]
    fn documents_are_checked_as_where_json_is_read() {
        for (text, refused) in [
            ("{\"a\":1}", false),
            ("{\"a\":", true),
            ("[1e999]", true),
            ("\"\\ud800\"", true),
            ("{\"a\" : [ 1 ,2 ]}", false),
            // JSON reads a null document as none: so does this encoding.
            ("null", false),
        ] {
            // A valid document as long as `text`, then `text` written over it.
            let placeholder = format!("\"{}\"", "q".repeat(text.len() - 2));
            let mut activity = sparse();
            activity.request_parameters = Some(RawJson::from_text(&placeholder).expect("json"));
            let mut bytes = ActivityEncoding::Compact
                .to_vec(&activity)
                .expect("encodes");
            let at = bytes
                .windows(placeholder.len())
                .position(|w| w == placeholder.as_bytes())
                .expect("the placeholder");
            bytes[at..at + text.len()].copy_from_slice(text.as_bytes());
            match decode(&bytes) {
                Ok(back) if !refused => {
                    let value = serde_json::from_str::<Value>(text).expect("json");
                    assert_eq!(
                        back.request_parameters.as_ref().map(RawJson::value),
                        (!value.is_null()).then_some(&value)
                    );
                    assert_eq!(json_of(&back), json_of(&through_json(&back)));
                }
                Err(CompactError::Invalid {
                    field: "request_parameters",
                    ..
                }) if refused => {}
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn any_byte_changed_decodes_or_is_refused() {
        // Every position, several values each: no panic, and what decodes encodes again.
        let bytes = ActivityEncoding::Compact.to_vec(&full()).expect("encodes");
        for at in 0..bytes.len() {
            for value in [
                0x00,
                0x01,
                0x02,
                0x07,
                0x7F,
                0x80,
                0xFF,
                bytes[at].wrapping_add(1),
            ] {
                let mut changed = bytes.clone();
                changed[at] = value;
                if let Ok(activity) = decode(&changed) {
                    let again = ActivityEncoding::Compact
                        .to_vec(&activity)
                        .expect("encodes");
                    assert_eq!(
                        json_of(&decode(&again).expect("decodes")),
                        json_of(&activity)
                    );
                    // What this encoding accepts, JSON carries as the same activity.
                    assert_eq!(json_of(&through_json(&activity)), json_of(&activity));
                }
            }
        }
    }

    /// A seeded xorshift generator: the same numbers every run.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn text(&mut self) -> String {
            const PIECES: [&str; 10] = ["a", "Z", "0", " ", "\"", "\\", "\u{1}", "é", "漢", "😀"];
            (0..self.below(12))
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }

        fn opt(&mut self) -> Option<String> {
            (self.below(2) == 0).then(|| self.text())
        }

        fn flag(&mut self) -> Option<bool> {
            [None, Some(false), Some(true)][self.below(3) as usize]
        }
    }

    #[test]
    fn random_activities_come_back_as_they_went() {
        let mut r = Random(0x9E37_79B9_7F4A_7C15);
        let documents = [
            "{}",
            "[1,2.5,\"x\"]",
            "{\"a\":{\"b\":[null,true]}}",
            "\"text\"",
            "-0.0",
        ];
        for _ in 0..20_000 {
            let mut a = sparse();
            a.schema_version = r.below(3) as u32 + 1;
            a.id = r.text();
            a.event_id = r.opt();
            a.event_time = DateTime::<Utc>::from_timestamp(
                r.below(1 << 34) as i64 - (1 << 32),
                r.below(1_000_000_000) as u32,
            )
            .expect("a time");
            a.event_source = r.text();
            a.event_name = r.text();
            a.event_type = r.opt();
            a.account_id = r.opt();
            a.region = r.opt();
            a.partition = r.opt();
            a.principal = Principal {
                kind: r.text(),
                arn: r.opt(),
                name: r.opt(),
                account_id: r.opt(),
                principal_id: r.opt(),
                access_key_id: r.opt(),
                session_issuer_arn: r.opt(),
                mfa_authenticated: r.flag(),
                invoked_by: r.opt(),
                source_identity: r.opt(),
                on_behalf_of: r.opt(),
                is_root: r.below(2) == 0,
            };
            a.actor = Actor {
                kind: actor_kind_of(r.below(8) as u8).expect("a kind"),
                id: r.text(),
                name: r.text(),
                basis: r.text(),
            };
            a.source_ip = match r.below(3) {
                0 => None,
                1 => Some(IpAddr::from((r.next() as u32).to_be_bytes())),
                _ => Some(IpAddr::from(std::net::Ipv6Addr::from(
                    u128::from(r.next()) << 64 | u128::from(r.next()),
                ))),
            };
            a.source_host = r.opt();
            a.user_agent = r.opt();
            a.read_only = r.flag();
            a.data_event = r.below(2) == 0;
            a.outcome = Outcome {
                status: if r.below(2) == 0 {
                    OutcomeStatus::Success
                } else {
                    OutcomeStatus::Failure
                },
                error_code: r.opt(),
                error_message: r.opt(),
            };
            a.resources = (0..r.below(4))
                .map(|_| Resource {
                    kind: format!("k{}", r.text()),
                    id: format!("i{}", r.text()),
                })
                .collect();
            a.request_id = r.opt();
            let mut doc = || {
                (r.below(2) == 0)
                    .then(|| RawJson::from_text(documents[(r.below(5)) as usize]).expect("json"))
            };
            a.request_parameters = doc();
            a.response_elements = doc();
            a.additional_event_data = doc();
            if r.below(4) == 0 {
                let categories = vec![r.text()];
                a.enrichment_mut().ip_categories = categories;
            }
            a.trimmed = (0..r.below(3))
                .map(|_| format!("step {}", r.text()))
                .collect();
            let back = round_trip(&a);
            assert_eq!(json_of(&back), json_of(&a));
            assert_eq!(json_of(&through_json(&back)), json_of(&a));
        }
    }

    #[test]
    fn random_bytes_are_refused_without_a_panic() {
        // 200,000 messages of random bytes after the magic and the format, lengths biased
        // small so that many fields are reached. None decodes in practice — a message must
        // hold together to its last byte — the point is that no input panics or allocates
        // past the bounds, whatever it claims.
        let mut r = Random(0xD1B5_4A32_D192_ED03);
        for _ in 0..200_000 {
            let len = r.below(96) as usize;
            let mut bytes = MAGIC.to_vec();
            bytes.push(FORMAT);
            let text = r.below(24) as u32;
            bytes.extend_from_slice(&text.to_le_bytes());
            bytes.extend((0..len).map(|_| match r.below(4) {
                0 => 0,
                1 => 1,
                2 => r.below(8) as u8,
                _ => r.next() as u8,
            }));
            if let Ok(activity) = decode(&bytes) {
                assert_eq!(json_of(&through_json(&activity)), json_of(&activity));
            }
        }
    }

    #[test]
    fn smaller_than_json() {
        for activity in [full(), sparse()] {
            let json = ActivityEncoding::Json.to_vec(&activity).expect("encodes");
            let compact = ActivityEncoding::Compact
                .to_vec(&activity)
                .expect("encodes");
            assert!(
                compact.len() < json.len(),
                "{} ≥ {}",
                compact.len(),
                json.len()
            );
        }
    }
}
