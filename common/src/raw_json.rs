//! [`RawJson`]: a JSON value carried as its text and parsed only when read.
//!
//! An activity's `requestParameters`, `responseElements` and `additionalEventData` are most of a
//! CloudTrail record and are read by few policies. Building a `Value` tree for each (a map node
//! and a string for every key) was about half of what normalizing a record cost, and detect did
//! it again for every activity it decoded. A [`RawJson`] keeps the exact text (ingest publishes
//! it as read) and parses it on first access, once, behind [`Deref`] to [`Value`], so code that
//! reads it is written as for a `Value`.
//!
//! The invariant the type keeps: its text is JSON that parses into a [`Value`]. serde_json
//! validates the syntax of a raw value while skipping it, but not three things a `Value`
//! refuses: a number out of `f64`'s range (`1e999`), a lone UTF-16 surrogate escape
//! (`"\ud800"`) and nesting past its recursion limit (128). Every constructor therefore scans
//! the text for any of them (a cheap pass, far cheaper than a parse) and, when it finds one,
//! parses the value fully there and then, refusing it if that fails — so a value that cannot
//! be read is refused where it enters (ingest's input, detect's topic), exactly as when these
//! fields were parsed eagerly, and never fails later (where a policy would see nothing).
//!
//! The same pass finds white space between tokens (a pretty-printed export): such text is
//! kept compact, as a re-serialized `Value` was, so an indented input does not make activities
//! larger (and trimmed sooner). Key order and the text of every value are kept.

use std::fmt;
use std::ops::Deref;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A JSON value kept as its text; parsed on first read (see the module docs).
///
/// 32 bytes, as a `Value` is: the parsed value is boxed, so an activity holding three of these
/// (and state holding activities as evidence) is no larger than with `Value`s.
pub struct RawJson {
    text: Box<RawValue>,
    parsed: OnceLock<Box<Value>>,
}

impl RawJson {
    /// Admits raw JSON text: refused when it is not JSON or does not parse into a [`Value`].
    pub fn from_raw(text: Box<RawValue>) -> Result<Self, serde_json::Error> {
        let parsed = OnceLock::new();
        let found = scan(text.get());
        let text = if found.spaced {
            RawValue::from_string(compact(text.get()))?
        } else {
            text
        };
        if found.risky {
            let value: Value = serde_json::from_str(text.get())?;
            let _ = parsed.set(Box::new(value));
        }
        Ok(RawJson { text, parsed })
    }

    /// Admits JSON text (see [`RawJson::from_raw`]).
    pub fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        RawJson::from_raw(RawValue::from_string(text.to_owned())?)
    }

    /// The text as it was read, white space between tokens dropped (or as a [`Value`] given to
    /// [`From`] serialized).
    pub fn text(&self) -> &str {
        self.text.get()
    }

    /// The parsed value (the same as dereferencing).
    pub fn value(&self) -> &Value {
        self.parsed.get_or_init(|| {
            // The invariant (see the module docs) makes this parse succeed; were it ever to
            // fail, an absent value is the answer that cannot act on anything.
            Box::new(serde_json::from_str(self.text.get()).unwrap_or(Value::Null))
        })
    }

    /// The value, owned.
    pub fn into_value(self) -> Value {
        match self.parsed.into_inner() {
            Some(value) => *value,
            None => serde_json::from_str(self.text.get()).unwrap_or(Value::Null),
        }
    }

    /// The value serialized with its object keys sorted and no white space: the same text for
    /// the same value whatever the key order or spacing it was read with.
    pub fn canonical(&self) -> String {
        self.value().to_string()
    }
}

/// Nesting past which the text is parsed on entry (a `Value` refuses 128 levels).
const DEEP: usize = 100;

/// What [`scan`] found.
#[derive(Debug, Default, PartialEq)]
struct Found {
    /// What a [`Value`] may refuse: a number with an exponent or of more than 20 characters
    /// (possibly out of `f64`'s range), a `\u` escape of a UTF-16 surrogate (possibly
    /// unpaired), nesting deeper than [`DEEP`]. Errs towards yes: a yes costs a parse.
    risky: bool,
    /// White space between tokens.
    spaced: bool,
}

/// One pass over `text` (valid JSON syntax), outside strings but for their escapes.
/// Scans to the end (both flags are wanted), unless the text is not JSON at all.
fn scan(text: &str) -> Found {
    let mut found = Found::default();
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                found.risky |= depth > DEEP;
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                found.spaced = true;
                i += 1;
            }
            b'"' => {
                // Inside a string: only its escapes matter.
                i += 1;
                loop {
                    let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                        // Unterminated: not valid JSON, let the parse say so.
                        found.risky = true;
                        return found;
                    };
                    i += at;
                    if bytes[i] == b'"' {
                        i += 1;
                        break;
                    }
                    // A backslash: `\uD8..`–`\uDF..` is a surrogate.
                    if bytes.get(i + 1) == Some(&b'u')
                        && matches!(bytes.get(i + 2), Some(b'd' | b'D'))
                        && matches!(
                            bytes.get(i + 3),
                            Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
                        )
                    {
                        found.risky = true;
                    }
                    i += 2;
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    found.risky |= matches!(bytes[i], b'e' | b'E');
                    i += 1;
                }
                found.risky |= i - start > 20;
            }
            _ => i += 1,
        }
    }
    found
}

/// `text` (valid JSON syntax) without the white space between its tokens.
fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

impl Deref for RawJson {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        // A `Value` always serializes to JSON that parses back into itself.
        let text = serde_json::value::to_raw_value(&value).unwrap_or_default();
        let parsed = OnceLock::new();
        let _ = parsed.set(Box::new(value));
        RawJson { text, parsed }
    }
}

impl Clone for RawJson {
    fn clone(&self) -> Self {
        RawJson {
            text: self.text.clone(),
            parsed: self.parsed.clone(),
        }
    }
}

/// Equal when the values are: key order and spacing do not count.
impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.text.get() == other.text.get() || self.value() == other.value()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.get())
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.get())
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Box::<RawValue>::deserialize(deserializer)?;
        RawJson::from_raw(text).map_err(serde::de::Error::custom)
    }
}

/// Any JSON value, as the `Value` it stands for.
impl JsonSchema for RawJson {
    fn schema_name() -> String {
        Value::schema_name()
    }

    fn is_referenceable() -> bool {
        Value::is_referenceable()
    }

    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        Value::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn is_no_larger_than_a_value() {
        assert_eq!(std::mem::size_of::<RawJson>(), std::mem::size_of::<Value>());
        assert_eq!(
            std::mem::size_of::<Option<RawJson>>(),
            std::mem::size_of::<Option<Value>>()
        );
    }

    #[test]
    fn keeps_the_text_and_parses_it_once_when_read() -> Result<(), serde_json::Error> {
        let raw = RawJson::from_text(r#"{"b":1,"a":[true,null,"x"]}"#)?;
        assert_eq!(
            raw.text(),
            r#"{"b":1,"a":[true,null,"x"]}"#,
            "as read: key order kept"
        );
        assert!(raw.parsed.get().is_none(), "nothing parsed before a read");
        assert_eq!(raw.get("b"), Some(&json!(1)));
        assert!(raw.parsed.get().is_some());
        assert_eq!(raw.canonical(), r#"{"a":[true,null,"x"],"b":1}"#);
        assert_eq!(serde_json::to_string(&raw)?, raw.text());
        Ok(())
    }

    #[test]
    fn equal_values_are_equal_whatever_their_spelling() -> Result<(), serde_json::Error> {
        let a = RawJson::from_text(r#"{"a":1,"b":2}"#)?;
        let b = RawJson::from_text(r#"{ "b" : 2 , "a" : 1 }"#)?;
        assert_eq!(a, b);
        assert_ne!(a, RawJson::from_text(r#"{"a":1,"b":3}"#)?);
        assert_eq!(a, RawJson::from(json!({"b": 2, "a": 1})));
        Ok(())
    }

    #[test]
    fn what_a_value_refuses_is_refused_on_entry() {
        // serde_json skips both as raw values; a `Value` refuses them.
        for bad in [
            r#"{"n":1e999}"#,
            r#"[-1E400]"#,
            r#"{"s":"\ud800"}"#,
            &format!("[{}]", "9".repeat(400)),
        ] {
            assert!(RawJson::from_text(bad).is_err(), "{bad}");
            let wrapped = format!(r#"{{"field":{bad}}}"#);
            let parsed: Result<Field, _> = serde_json::from_str(&wrapped);
            assert!(parsed.is_err(), "{wrapped}");
        }
        // Their harmless relatives are admitted, and read as a `Value` reads them.
        for good in [
            r#"{"n":1e10}"#,
            r#"{"s":"\ud83d\ude00"}"#,
            r#"{"t":"1e999 \\ud800"}"#,
            "[12345678901234567890123]",
        ] {
            let raw = RawJson::from_text(good);
            assert!(raw.is_ok(), "{good}");
            let value: Value = serde_json::from_str(good).unwrap_or(Value::Null);
            assert_eq!(raw.map(RawJson::into_value).ok(), Some(value), "{good}");
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Field {
        field: RawJson,
    }

    fn needs_full_parse(text: &str) -> bool {
        scan(text).risky
    }

    #[test]
    fn the_scan_flags_every_risky_token_and_no_plain_one() {
        assert!(needs_full_parse("1e5"));
        assert!(needs_full_parse(r#"{"a":[0.5E-3]}"#));
        assert!(needs_full_parse(r#""\uDBFF""#));
        assert!(needs_full_parse(&"1".repeat(21)));
        assert!(needs_full_parse(&format!(
            "{}{}",
            "[".repeat(DEEP + 1),
            "]".repeat(DEEP + 1)
        )));
        assert!(!needs_full_parse(
            r#"{"e":"E","true":true,"n":-12.5,"u":"\u00e9\\uD800"}"#
        ));
        assert!(!needs_full_parse(&"1".repeat(20)));
        assert!(!needs_full_parse(&format!(
            "{}{}",
            "[".repeat(DEEP),
            "]".repeat(DEEP)
        )));
        // Brackets inside strings are not nesting.
        assert!(!needs_full_parse(&format!(r#"["{}"]"#, "[".repeat(500))));
    }

    #[test]
    fn nesting_a_value_refuses_is_refused_on_entry() {
        // serde_json skips any depth as a raw value; a `Value` stops at 128 levels.
        let deep = |n: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        assert!(RawJson::from_text(&deep(200)).is_err());
        let wrapped = format!(r#"{{"field":{}}}"#, deep(200));
        assert!(serde_json::from_str::<Field>(&wrapped).is_err());
        let fine = RawJson::from_text(&deep(110));
        assert_eq!(
            fine.as_ref().map(|r| r.is_null()).ok(),
            Some(false),
            "parsed, not null"
        );
    }

    #[test]
    fn white_space_goes_also_from_text_that_is_parsed_on_entry() -> Result<(), serde_json::Error> {
        let raw = RawJson::from_text("{\"n\":1e5, \"a\": [1,\n 2]}")?;
        assert_eq!(raw.text(), r#"{"n":1e5,"a":[1,2]}"#);
        Ok(())
    }

    #[test]
    fn white_space_between_tokens_is_dropped_and_nothing_else() -> Result<(), serde_json::Error> {
        let pretty = "{\n  \"b\" : [ 1, \"a  b\\\" [ ]\" ],\n\t\"a\": {}\r\n}";
        let raw = RawJson::from_text(pretty)?;
        assert_eq!(raw.text(), r#"{"b":[1,"a  b\" [ ]"],"a":{}}"#);
        assert_eq!(raw.value(), &serde_json::from_str::<Value>(pretty)?);
        Ok(())
    }
}
