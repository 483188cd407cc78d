//! Authentic alerts: detect signs every alert with HMAC-SHA256 over its canonical form, naming
//! the key by id; remediate verifies before acting and refuses anything unsigned, signed with a
//! key it does not know, or altered after signing.
//!
//! The canonical form is the alert as JSON with the `signature` member removed, object keys
//! sorted at every level, no insignificant whitespace. Any change to any field — a target, a
//! requested action, a severity — changes it. Several keys may be configured for verification,
//! so keys rotate without downtime: add the new key to remediate, switch detect to it, then
//! remove the old one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::contract::{Alert, AlertSignature};
use crate::Error;

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Signing and verification keys. Key material usually comes from the environment
/// (`TRAILGUARD_SIGNING__KEY`, `TRAILGUARD_SIGNING__KEYS__<ID>`), never from a committed file.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Id of the key detect signs with.
    pub key_id: Option<String>,
    /// The key detect signs with (at least 32 bytes; e.g. 64 hex characters).
    pub key: Option<String>,
    /// Keys remediate accepts, by id (the signing key is accepted too).
    pub keys: BTreeMap<String, String>,
    /// Remediate refuses alerts that are not signed by a known key (default true).
    pub required: bool,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            key_id: None,
            key: None,
            keys: BTreeMap::new(),
            required: true,
        }
    }
}

impl std::fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningConfig")
            .field("key_id", &self.key_id)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("required", &self.required)
            .finish()
    }
}

impl SigningConfig {
    /// Checks the keys; errors name the key.
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.key_id, &self.key) {
            (Some(_), None) => {
                return Err(Error::config(
                    "signing.key",
                    "signing.key_id is set but the key is missing",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "signing.key_id",
                    "signing.key is set but has no key_id",
                ))
            }
            (Some(id), Some(key)) => {
                check_key("signing.key", key)?;
                if id.trim().is_empty() {
                    return Err(Error::config("signing.key_id", "must not be empty"));
                }
            }
            (None, None) => {}
        }
        for (id, key) in &self.keys {
            check_key(&format!("signing.keys.{id}"), key)?;
        }
        Ok(())
    }

    /// The signer, when a signing key is configured.
    pub fn signer(&self) -> Option<Signer> {
        Some(Signer::new(self.key_id.clone()?, self.key.clone()?))
    }

    /// The verifier: every configured key.
    pub fn verifier(&self) -> Verifier {
        // Key ids compare case-insensitively (ids from the environment arrive lower-cased).
        let mut keys: BTreeMap<String, Hmac<Sha256>> = self
            .keys
            .iter()
            .map(|(id, k)| (id.to_ascii_lowercase(), new_mac(k.as_bytes())))
            .collect();
        if let Some(signer) = self.signer() {
            keys.insert(signer.key_id.to_ascii_lowercase(), signer.mac);
        }
        Verifier {
            keys,
            required: self.required,
        }
    }
}

fn check_key(name: &str, key: &str) -> Result<(), Error> {
    if key.len() < MIN_KEY_BYTES {
        return Err(Error::config(
            name,
            format!(
                "must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), got {}",
                key.len()
            ),
        ));
    }
    if let Some(why) = placeholder(key) {
        return Err(Error::config(
            name,
            format!("looks like a placeholder, not a random key ({why}): generate one with `openssl rand -hex 32`"),
        ));
    }
    Ok(())
}

/// Why `key` looks like an example value copied from documentation rather than random bytes:
/// a placeholder word, a long run of one character, or too few distinct characters (64 hex
/// digits from `openssl rand -hex 32` practically always use 14 or more of the 16).
fn placeholder(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    if let Some(word) = [
        "replace",
        "changeme",
        "change-me",
        "change_me",
        "example",
        "placeholder",
        "your-",
        "your_",
        "insert",
    ]
    .iter()
    .find(|w| lower.contains(*w))
    {
        return Some(format!("it contains `{word}`"));
    }
    let bytes = key.as_bytes();
    if bytes.windows(8).any(|w| w.iter().all(|b| *b == w[0])) {
        return Some("a character repeats 8 times in a row".into());
    }
    let distinct = bytes
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < 10 {
        return Some(format!("only {distinct} distinct characters"));
    }
    None
}

/// Signs alerts with one key.
#[derive(Clone)]
pub struct Signer {
    key_id: String,
    /// HMAC keyed once (the key's two padded blocks hashed): each MAC starts from a copy.
    mac: Hmac<Sha256>,
}

impl Signer {
    /// A signer with `key` named `key_id`.
    pub fn new(key_id: impl Into<String>, key: impl AsRef<[u8]>) -> Self {
        Signer {
            key_id: key_id.into(),
            mac: new_mac(key.as_ref()),
        }
    }

    /// Sets `alert.signature` over the alert's canonical form.
    pub fn sign(&self, alert: &mut Alert) {
        alert.signature = None;
        let mac = mac_of(self.mac.clone(), alert);
        alert.signature = Some(AlertSignature {
            key_id: self.key_id.clone(),
            hmac_sha256: hex::encode(mac),
        });
    }
}

/// What each kind of internal record is signed for (part of its MAC: a record cannot be
/// replayed into another topic role).
pub mod purpose {
    /// `kafka.topics.detect_facts`.
    pub const FACTS: &str = "detect.facts";
    /// `kafka.topics.detect_state`.
    pub const STATE: &str = "detect.state";
    /// `kafka.topics.detect_signin_failures`.
    pub const SIGNIN_FAILURES: &str = "detect.signin-failures";
    /// `kafka.topics.detect_correlations`.
    pub const CORRELATIONS: &str = "detect.correlations";
    /// `kafka.topics.actions`.
    pub const ACTIONS: &str = "remediate.actions";
}

/// The Kafka header carrying the signature of an internal record (facts, detector state,
/// forwarded sign-in failures, action records): `KEY_ID:HEX`.
pub const RECORD_SIGNATURE_HEADER: &str = "trailguard.signature";

/// The MAC of an internal record: its purpose (which topic role it belongs to, so a record of
/// one topic cannot be replayed into another), its Kafka key and its payload (`None`: a
/// tombstone), each length-prefixed so no two different records share a MAC input.
fn record_mac(
    mut mac: Hmac<Sha256>,
    purpose: &str,
    record_key: &[u8],
    payload: Option<&[u8]>,
) -> Hmac<Sha256> {
    mac.update(b"trailguard-record-v1");
    for part in [Some(purpose.as_bytes()), Some(record_key), payload] {
        match part {
            Some(bytes) => {
                mac.update(&[1]);
                mac.update(&(bytes.len() as u64).to_be_bytes());
                mac.update(bytes);
            }
            None => mac.update(&[0]),
        }
    }
    mac
}

impl Signer {
    /// The [`RECORD_SIGNATURE_HEADER`] value of an internal record.
    pub fn sign_record(&self, purpose: &str, record_key: &[u8], payload: Option<&[u8]>) -> String {
        let mac = record_mac(self.mac.clone(), purpose, record_key, payload);
        format!(
            "{}:{}",
            self.key_id,
            hex::encode(mac.finalize().into_bytes())
        )
    }
}

impl Verifier {
    /// True when internal records are authenticated: at least one key is configured. Without
    /// any, nothing can be verified and every record is taken as it is.
    pub fn authenticates_records(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Accepts an internal record whose [`RECORD_SIGNATURE_HEADER`] (`signature`) was made
    /// with a known key over this purpose, key and payload. With no key configured, every
    /// record is accepted.
    pub fn verify_record(
        &self,
        purpose: &str,
        record_key: &[u8],
        payload: Option<&[u8]>,
        signature: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(signature) = signature else {
            return Err(Rejection::Unsigned);
        };
        let text = String::from_utf8_lossy(signature);
        let Some((key_id, hex_mac)) = text.rsplit_once(':') else {
            return Err(Rejection::Mismatch(String::new()));
        };
        let Some(key) = self.key(key_id) else {
            return Err(Rejection::UnknownKey(key_id.to_string()));
        };
        // A SHA-256 MAC is 32 bytes: any other length (or not hex) cannot match.
        let mut expected = [0u8; 32];
        if hex::decode_to_slice(hex_mac, &mut expected).is_err() {
            return Err(Rejection::Mismatch(key_id.to_string()));
        }
        record_mac(key.clone(), purpose, record_key, payload)
            .verify_slice(&expected)
            .map_err(|_| Rejection::Mismatch(key_id.to_string()))
    }
}

/// An internal record's value with its signature inside: `{"sig":"KEY_ID:HEX","v":VALUE}`,
/// the MAC as for [`RECORD_SIGNATURE_HEADER`] over the value's exact bytes. Used on detect's
/// own topics (baselines, facts, forwarded failures), which nobody else reads: a signature in
/// the value costs the broker nothing, where a header per record slowed tansu, the embedded
/// broker, until its consumer groups stalled (measured: the restart tests failed with headers
/// and passed without). The actions topic, part of the wire contract, keeps its JSON and
/// carries the signature in the header. Without a signer the value is `{"v":VALUE}`.
///
/// `value` must be one compact JSON value (as `serde_json::to_vec` writes it): [`Verifier::open`]
/// reads a record in this exact form without a parser, and decides as the parser does only for
/// such values.
pub fn seal(signer: Option<&Signer>, purpose: &str, record_key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 100);
    match signer {
        Some(signer) => {
            out.extend_from_slice(b"{\"sig\":\"");
            out.extend_from_slice(
                signer
                    .sign_record(purpose, record_key, Some(value))
                    .as_bytes(),
            );
            out.extend_from_slice(b"\",\"v\":");
        }
        None => out.extend_from_slice(b"{\"v\":"),
    }
    out.extend_from_slice(value);
    out.push(b'}');
    out
}

#[derive(serde::Deserialize)]
struct Sealed<'a> {
    #[serde(default)]
    sig: Option<String>,
    #[serde(borrow)]
    v: &'a serde_json::value::RawValue,
}

impl Verifier {
    /// The value inside a [`seal`]ed record, when its signature is valid for this purpose and
    /// key. With no key configured, any sealed value (or a bare one) is taken as it is.
    pub fn open<'a>(
        &self,
        purpose: &str,
        record_key: &[u8],
        sealed: &'a [u8],
    ) -> Result<&'a [u8], Rejection> {
        // Most records are as `seal` wrote them: their two parts are found without a parser
        // (parsing the envelope cost as much as the MAC). Accepted only if the MAC verifies,
        // so the value is one signed for this purpose and key; anything else — a record not
        // in that form, or not verified that way — is read and judged as before.
        if !self.keys.is_empty() {
            if let Some((sig, value)) = sealed_parts(sealed) {
                if self
                    .verify_record(purpose, record_key, Some(value), Some(sig))
                    .is_ok()
                {
                    return Ok(value);
                }
            }
        }
        self.open_parsed(purpose, record_key, sealed)
    }

    /// [`Self::open`] with the envelope read by a JSON parser: what decides every record the
    /// quick reading does not accept.
    fn open_parsed<'a>(
        &self,
        purpose: &str,
        record_key: &[u8],
        sealed: &'a [u8],
    ) -> Result<&'a [u8], Rejection> {
        let parsed: Option<Sealed<'a>> = serde_json::from_slice(sealed).ok();
        if self.keys.is_empty() {
            return Ok(parsed.map(|s| s.v.get().as_bytes()).unwrap_or(sealed));
        }
        let Some(parsed) = parsed else {
            return Err(Rejection::Unsigned);
        };
        let value = parsed.v.get().as_bytes();
        self.verify_record(
            purpose,
            record_key,
            Some(value),
            parsed.sig.as_deref().map(str::as_bytes),
        )
        .map(|()| value)
    }
}

/// Why an alert was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// It carries no signature and signatures are required.
    #[error("unsigned")]
    Unsigned,
    /// Signed with a key id this instance does not have.
    #[error("signed with unknown key id `{0}`")]
    UnknownKey(String),
    /// The signature does not match: forged, or altered after signing.
    #[error("signature does not match (forged or altered) for key id `{0}`")]
    Mismatch(String),
}

impl Rejection {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::Mismatch(_) => "bad_signature",
        }
    }
}

/// `{"sig":"SIG","v":VALUE}` exactly as [`seal`] writes it (a signature without quotes or
/// escapes, no white space): its signature and value, or `None`.
fn sealed_parts(sealed: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = sealed.strip_prefix(b"{\"sig\":\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    let (sig, rest) = rest.split_at(end);
    let value = rest.strip_prefix(b"\",\"v\":")?.strip_suffix(b"}")?;
    Some((sig, value))
}

/// Verifies alerts against the configured keys.
#[derive(Clone)]
pub struct Verifier {
    /// HMACs keyed once by key id (lower-cased).
    keys: BTreeMap<String, Hmac<Sha256>>,
    required: bool,
}

impl Verifier {
    /// The keyed MAC of `key_id` (ids compare case-insensitively).
    fn key(&self, key_id: &str) -> Option<&Hmac<Sha256>> {
        if key_id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.keys.get(&key_id.to_ascii_lowercase())
        } else {
            self.keys.get(key_id)
        }
    }

    /// Accepts `alert` when it is signed by a known key and unaltered (or, with signatures not
    /// required, when it is unsigned). Returns the key id it was signed with.
    pub fn verify(&self, alert: &Alert) -> Result<Option<String>, Rejection> {
        self.verify_json(&serde_json::to_value(alert).unwrap_or(Value::Null))
    }

    /// [`Self::verify`] over the alert as it arrived: members this version does not know (a
    /// newer detect) are part of what was signed, so they are verified too, not dropped.
    pub fn verify_json(&self, alert: &Value) -> Result<Option<String>, Rejection> {
        let signature = alert
            .get("signature")
            .filter(|s| !s.is_null())
            .map(|s| serde_json::from_value::<AlertSignature>(s.clone()));
        let signature = match signature {
            None => {
                return if self.required {
                    Err(Rejection::Unsigned)
                } else {
                    Ok(None)
                }
            }
            Some(Err(_)) => return Err(Rejection::Mismatch(String::new())),
            Some(Ok(s)) => s,
        };
        let Some(key) = self.key(&signature.key_id) else {
            return Err(Rejection::UnknownKey(signature.key_id));
        };
        let Ok(expected) = hex::decode(&signature.hmac_sha256) else {
            return Err(Rejection::Mismatch(signature.key_id));
        };
        let mut mac = key.clone();
        mac.update(canonical_value(alert).as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&expected)
            .map(|()| Some(signature.key_id.clone()))
            .map_err(|_| Rejection::Mismatch(signature.key_id))
    }

    /// True when no key is configured.
    pub fn has_no_keys(&self) -> bool {
        self.keys.is_empty()
    }
}

fn new_mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this never fails.
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_mac(),
    }
}

#[cold]
fn unreachable_mac() -> Hmac<Sha256> {
    // Hmac::new_from_slice only fails for fixed-size keys; SHA-256 HMAC accepts any length.
    #[allow(clippy::expect_used)]
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).expect("HMAC accepts any key length")
}

fn mac_of(mut mac: Hmac<Sha256>, alert: &Alert) -> Vec<u8> {
    mac.update(canonical(alert).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The canonical JSON text of `alert` without its signature: keys sorted at every level.
pub fn canonical(alert: &Alert) -> String {
    canonical_value(&serde_json::to_value(alert).unwrap_or(Value::Null))
}

/// The canonical text of an alert given as JSON, without its `signature` member.
pub fn canonical_value(alert: &Value) -> String {
    let mut out = String::with_capacity(1024);
    match alert {
        Value::Object(map) => {
            let mut unsigned = map.clone();
            unsigned.remove("signature");
            write_canonical(&Value::Object(unsigned), &mut out);
        }
        other => write_canonical(other, &mut out),
    }
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}", Value::String(k.clone()));
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_values_open_only_as_signed() {
        let signer = Signer::new("k1", KEY);
        let v = verifier(&[("k1", KEY)], true);
        let value = br#"{"o":1,"f":2,"l":3}"#;
        let sealed = seal(Some(&signer), purpose::STATE, b"p", value);
        assert_eq!(v.open(purpose::STATE, b"p", &sealed), Ok(&value[..]));
        assert!(v.open(purpose::FACTS, b"p", &sealed).is_err());
        assert!(v.open(purpose::STATE, b"q", &sealed).is_err());
        let text = String::from_utf8_lossy(&sealed).replace("\"o\":1", "\"o\":9");
        assert!(v.open(purpose::STATE, b"p", text.as_bytes()).is_err());
        assert_eq!(
            v.open(purpose::STATE, b"p", value),
            Err(Rejection::Unsigned)
        );
        let unsigned = seal(None, purpose::STATE, b"p", value);
        assert_eq!(
            v.open(purpose::STATE, b"p", &unsigned),
            Err(Rejection::Unsigned)
        );
        // Without keys: sealed or bare, the value as it is.
        let open = verifier(&[], false);
        assert_eq!(open.open(purpose::STATE, b"p", &unsigned), Ok(&value[..]));
        assert_eq!(open.open(purpose::STATE, b"p", value), Ok(&value[..]));
    }

    /// The quick reading of a sealed record decides exactly as the parser does: whatever the
    /// envelope's shape, `open` and `open_parsed` agree.
    #[test]
    fn sealed_records_open_the_same_read_quickly_or_parsed() {
        let signer = Signer::new("k1", KEY);
        let other = Signer::new("k2", "fedcba9876543210fedcba9876543210");
        let keyed = verifier(&[("k1", KEY)], true);
        let upper = verifier(&[("K1", KEY)], true);
        let open = verifier(&[], false);
        let value = r#"{"o":1,"f":2,"l":3,"s":[["a\"b",1]]}"#;
        let good = String::from_utf8(seal(Some(&signer), purpose::STATE, b"p", value.as_bytes()))
            .unwrap_or_default();
        let sig = good
            .strip_prefix(r#"{"sig":""#)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        let (id, mac) = sig.split_once(':').unwrap_or_default();
        let forged = seal(Some(&other), purpose::STATE, b"p", value.as_bytes());
        let mut variants: Vec<Vec<u8>> = vec![
            good.clone().into_bytes(),
            forged,
            seal(None, purpose::STATE, b"p", value.as_bytes()),
            value.as_bytes().to_vec(),
            Vec::new(),
            b"{}".to_vec(),
            b"null".to_vec(),
        ];
        for text in [
            // Escapes in the signature, white space, members in another order or repeated,
            // trailing text, a truncated or extended value, another key id's case, a value
            // that is not JSON, the MAC in upper case or cut short.
            good.replace(':', "\\u003a"),
            format!("{good} "),
            format!(" {good}"),
            good.replace(r#","v":"#, r#", "v": "#),
            format!(r#"{{"v":{value},"sig":"{sig}"}}"#),
            format!(r#"{{"sig":"{sig}","v":{value},"v":{value}}}"#),
            format!(r#"{{"sig":"{sig}","sig":"{sig}","v":{value}}}"#),
            format!("{good}}}"),
            format!("{good}x"),
            good.trim_end_matches('}').to_string(),
            good.replacen(value, &value[..value.len() - 1], 1),
            good.replacen(value, &format!("{value} "), 1),
            good.replacen(id, &id.to_ascii_uppercase(), 1),
            good.replacen(mac, &mac.to_ascii_uppercase(), 1),
            good.replacen(mac, &mac[..62], 1),
            good.replacen(mac, &format!("{mac}00"), 1),
            good.replacen(value, "{\"o\":1,", 1),
            format!(r#"{{"sig":null,"v":{value}}}"#),
            format!(r#"{{"sig":"{sig}"}}"#),
        ] {
            variants.push(text.into_bytes());
        }
        for v in [&keyed, &upper, &open] {
            for sealed in &variants {
                for (purpose, key) in [
                    (purpose::STATE, &b"p"[..]),
                    (purpose::FACTS, b"p"),
                    (purpose::STATE, b"q"),
                ] {
                    assert_eq!(
                        v.open(purpose, key, sealed),
                        v.open_parsed(purpose, key, sealed),
                        "{}",
                        String::from_utf8_lossy(sealed)
                    );
                }
            }
        }
        // And the quick reading is the one taken for a record as sealed.
        assert_eq!(
            sealed_parts(good.as_bytes()),
            Some((sig.as_bytes(), value.as_bytes()))
        );
        assert_eq!(
            keyed.open(purpose::STATE, b"p", good.as_bytes()),
            Ok(value.as_bytes())
        );
    }

    #[test]
    fn internal_records_verify_only_as_signed() {
        let signer = Signer::new("k1", KEY);
        let v = verifier(&[("k1", KEY)], true);
        let sig = signer.sign_record("detect.facts", b"user:1/admin", Some(b"{\"a\":1}"));
        let ok = |purpose: &str, key: &[u8], payload: Option<&[u8]>, sig: Option<&str>| {
            v.verify_record(purpose, key, payload, sig.map(str::as_bytes))
        };
        assert_eq!(
            ok(
                "detect.facts",
                b"user:1/admin",
                Some(b"{\"a\":1}"),
                Some(&sig)
            ),
            Ok(())
        );
        // Another topic, key or payload, a tombstone, no signature, an unknown key: refused.
        assert!(ok(
            "detect.state",
            b"user:1/admin",
            Some(b"{\"a\":1}"),
            Some(&sig)
        )
        .is_err());
        assert!(ok(
            "detect.facts",
            b"user:1/alice",
            Some(b"{\"a\":1}"),
            Some(&sig)
        )
        .is_err());
        assert!(ok(
            "detect.facts",
            b"user:1/admin",
            Some(b"{\"a\":2}"),
            Some(&sig)
        )
        .is_err());
        assert!(ok("detect.facts", b"user:1/admin", None, Some(&sig)).is_err());
        assert_eq!(
            ok("detect.facts", b"user:1/admin", Some(b"{}"), None),
            Err(Rejection::Unsigned)
        );
        let other = Signer::new("k2", "fedcba9876543210fedcba9876543210").sign_record(
            "detect.facts",
            b"x",
            None,
        );
        assert_eq!(
            ok("detect.facts", b"x", None, Some(&other)),
            Err(Rejection::UnknownKey("k2".into()))
        );
        // Tombstones are signed too.
        let gone = signer.sign_record("detect.state", b"p", None);
        assert_eq!(ok("detect.state", b"p", None, Some(&gone)), Ok(()));
        // Without keys nothing can be checked: everything passes.
        assert_eq!(
            verifier(&[], false).verify_record("x", b"k", None, None),
            Ok(())
        );
    }

    #[test]
    fn placeholder_keys_are_refused() {
        for (key, why) in [
            // The example Kubernetes Secret's value, applied verbatim.
            ("replace-with-32-or-more-random-bytes-0000000000", "replace"),
            ("changeme-changeme-changeme-changeme", "changeme"),
            ("00000000000000000000000000000000", "repeats"),
            ("abababababababababababababababab", "distinct"),
        ] {
            let cfg = SigningConfig {
                key_id: Some("k".into()),
                key: Some(key.into()),
                ..SigningConfig::default()
            };
            let err = cfg
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains("signing.key") && err.contains(why),
                "{key}: {err}"
            );
        }
        let random = SigningConfig {
            key_id: Some("k".into()),
            key: Some("3f9c1e0b7a5d42e8c6b1f0a9d8e7c6b53f9c1e0b7a5d42e8c6b1f0a9d8e7c6b5".into()),
            ..SigningConfig::default()
        };
        assert!(random.validate().is_ok());
    }

    fn alert() -> Alert {
        serde_json::from_str(include_str!("../../tests/tests/alert.json")).unwrap_or_else(|e| {
            panic!("tests/tests/alert.json: {e}");
        })
    }

    fn verifier(keys: &[(&str, &str)], required: bool) -> Verifier {
        SigningConfig {
            keys: keys
                .iter()
                .map(|(i, k)| (i.to_string(), k.to_string()))
                .collect(),
            required,
            ..SigningConfig::default()
        }
        .verifier()
    }

    #[test]
    fn a_signed_alert_verifies_and_survives_a_round_trip() {
        let mut a = alert();
        Signer::new("k1", KEY).sign(&mut a);
        let text = serde_json::to_string_pretty(&a).unwrap_or_default();
        let back: Alert = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            verifier(&[("k1", KEY)], true).verify(&back),
            Ok(Some("k1".into()))
        );
    }

    #[test]
    fn altered_forged_unknown_and_unsigned_alerts_are_refused() {
        let v = verifier(&[("k1", KEY)], true);
        let mut a = alert();
        Signer::new("k1", KEY).sign(&mut a);
        let mut altered = a.clone();
        altered.actions[0].target.id = "someone-else".into();
        assert_eq!(v.verify(&altered), Err(Rejection::Mismatch("k1".into())));
        let mut forged = alert();
        Signer::new("k1", "a guessed key that is long enough!!").sign(&mut forged);
        assert_eq!(v.verify(&forged), Err(Rejection::Mismatch("k1".into())));
        let mut unknown = alert();
        Signer::new("k9", KEY).sign(&mut unknown);
        assert_eq!(v.verify(&unknown), Err(Rejection::UnknownKey("k9".into())));
        assert_eq!(v.verify(&alert()), Err(Rejection::Unsigned));
        let mut garbage = a.clone();
        if let Some(s) = garbage.signature.as_mut() {
            s.hmac_sha256 = "not hex".into();
        }
        assert_eq!(v.verify(&garbage), Err(Rejection::Mismatch("k1".into())));
    }

    #[test]
    fn members_a_newer_detect_added_are_verified_not_dropped() {
        let mut a = alert();
        let v = verifier(&[("k1", KEY)], true);
        // A newer detect signs an alert with a member this version does not know.
        let mut newer = serde_json::to_value(&a).unwrap_or(Value::Null);
        newer["triage"] = serde_json::json!({"score": 7});
        let mut mac = new_mac(KEY.as_bytes());
        mac.update(canonical_value(&newer).as_bytes());
        newer["signature"] = serde_json::json!({"key_id": "k1", "hmac_sha256": hex::encode(mac.finalize().into_bytes())});
        assert_eq!(v.verify_json(&newer), Ok(Some("k1".into())));
        // Tampering with that member is caught too.
        newer["triage"]["score"] = serde_json::json!(0);
        assert!(v.verify_json(&newer).is_err());
        // And the typed path agrees with the raw one.
        Signer::new("k1", KEY).sign(&mut a);
        let raw = serde_json::to_value(&a).unwrap_or(Value::Null);
        assert_eq!(v.verify_json(&raw), v.verify(&a));
    }

    #[test]
    fn unsigned_alerts_pass_only_when_not_required() {
        assert_eq!(verifier(&[], false).verify(&alert()), Ok(None));
    }

    #[test]
    fn keys_rotate() {
        let old = "old-key-old-key-old-key-old-key-old-key";
        let new = "new-key-new-key-new-key-new-key-new-key";
        let v = verifier(&[("2026-10", old), ("2026-NOV", new)], true);
        let mut a = alert();
        Signer::new("2026-10", old).sign(&mut a);
        assert!(v.verify(&a).is_ok());
        Signer::new("2026-nov", new).sign(&mut a);
        assert!(v.verify(&a).is_ok());
    }

    #[test]
    fn canonical_form_sorts_keys_and_omits_the_signature() {
        let mut a = alert();
        let before = canonical(&a);
        Signer::new("k1", KEY).sign(&mut a);
        assert_eq!(canonical(&a), before);
        assert!(!before.contains("signature"));
        assert!(
            before.starts_with("{\"actions\":[{\"kind\":\"notify\""),
            "{before}"
        );
    }

    fn err_of(r: Result<(), Error>) -> String {
        match r {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn short_or_half_configured_keys_fail_naming_the_key() {
        let short = SigningConfig {
            key_id: Some("k".into()),
            key: Some("short".into()),
            ..SigningConfig::default()
        };
        assert!(err_of(short.validate()).contains("signing.key"));
        let no_id = SigningConfig {
            key: Some(KEY.into()),
            ..SigningConfig::default()
        };
        assert!(err_of(no_id.validate()).contains("signing.key_id"));
        let bad = SigningConfig {
            keys: [("old".to_string(), "x".to_string())].into(),
            ..SigningConfig::default()
        };
        assert!(err_of(bad.validate()).contains("signing.keys.old"));
        assert!(!format!(
            "{:?}",
            SigningConfig {
                key_id: Some("k".into()),
                key: Some(KEY.into()),
                ..SigningConfig::default()
            }
        )
        .contains(KEY));
    }
}
