//! [`ActivityId`]: an activity's id as a baseline keeps it.
//!
//! A baseline holds the ids of the activities that may become an alert's evidence (the last
//! few of each rate, the latest activity). Ingest's ids are 32 lowercase hex digits: as a
//! `String` each took 24 bytes inline and a 32-byte allocation, and with five per rate they
//! were the largest part of a baseline. Here such an id is its 16 bytes, inline; any other id
//! (another producer's) is kept as its text. On the changelog both are the same string as
//! before, so baselines saved by earlier versions read back unchanged.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An activity id: 16 bytes for ingest's 32-hex ids, the text otherwise (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub enum ActivityId {
    /// 32 lowercase hex digits, as bytes.
    Hex([u8; 16]),
    /// Any other id (empty: none).
    Text(Box<str>),
}

impl Default for ActivityId {
    fn default() -> Self {
        ActivityId::Text(Box::from(""))
    }
}

impl ActivityId {
    /// The id of `text`.
    pub fn new(text: &str) -> Self {
        match lower_hex(text) {
            Some(bytes) => ActivityId::Hex(bytes),
            None => ActivityId::Text(Box::from(text)),
        }
    }

    /// No id.
    pub fn is_empty(&self) -> bool {
        matches!(self, ActivityId::Text(t) if t.is_empty())
    }

    /// Bytes it holds outside itself.
    pub fn heap_size(&self) -> usize {
        match self {
            ActivityId::Hex(_) => 0,
            ActivityId::Text(t) => t.len(),
        }
    }
}

/// The 16 bytes of 32 lowercase hex digits, or `None` (any other text: uppercase digits too,
/// so the id reads back as the same string). One pass that checks and decodes (the hex crate's
/// decoder, after a check of its own, cost ≈ 850 instructions an id, read back by the
/// thousand in a restore).
fn lower_hex(text: &str) -> Option<[u8; 16]> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let text: &[u8; 32] = text.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

impl fmt::Display for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivityId::Hex(bytes) => {
                let mut text = [0u8; 32];
                match hex::encode_to_slice(bytes, &mut text) {
                    Ok(()) => f.write_str(&String::from_utf8_lossy(&text)),
                    Err(_) => Err(fmt::Error),
                }
            }
            ActivityId::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl Serialize for ActivityId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ActivityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ActivityId::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_ids_are_sixteen_bytes_and_others_their_text() {
        let hex = "0123456789abcdef0123456789abcdef";
        let ActivityId::Hex(bytes) = ActivityId::new(hex) else {
            panic!("{hex} is kept as text");
        };
        assert_eq!(bytes[..8], [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        for other in [
            "",
            "a1",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdeF",
            "0123456789abcdef0123456789abcdeg",
            "g123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdé",
            "évènement",
        ] {
            assert!(
                matches!(ActivityId::new(other), ActivityId::Text(_)),
                "{other}"
            );
        }
        assert_eq!(
            std::mem::size_of::<ActivityId>(),
            24,
            "no larger than a String"
        );
        assert!(ActivityId::default().is_empty());
        assert!(!ActivityId::new(hex).is_empty());
    }

    #[test]
    fn every_id_reads_back_as_the_same_string() -> Result<(), serde_json::Error> {
        for id in [
            "0123456789abcdef0123456789abcdef",
            "",
            "a1",
            "0123456789ABCDEF0123456789ABCDEF",
            "x\"y",
        ] {
            let kept = ActivityId::new(id);
            assert_eq!(kept.to_string(), id);
            let json = serde_json::to_string(&kept)?;
            assert_eq!(
                json,
                serde_json::to_string(id)?,
                "the changelog's form is unchanged"
            );
            assert_eq!(serde_json::from_str::<ActivityId>(&json)?, kept);
        }
        Ok(())
    }
}
