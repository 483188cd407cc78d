//! [`ThinStr`]: a short string kept in one pointer's room.
//!
//! A baseline's size decides its allocator size class (see `layout_tests`), and its access
//! key took a `Box<str>`'s two words when one is enough: the length lives with the bytes.
//! On the changelog it is the same string as before.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thin_vec::ThinVec;

/// A string whose length is kept with its bytes: one word inline, nothing allocated when
/// empty. Its bytes are always UTF-8 (made only from `&str`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ThinStr(ThinVec<u8>);

impl ThinStr {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Made only from `&str` (below), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bytes: comparing them needs no UTF-8 check.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// No text.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes allocated for it (its header and bytes; none when empty).
    pub fn heap_size(&self) -> usize {
        if self.0.capacity() == 0 {
            0
        } else {
            16 + self.0.capacity()
        }
    }
}

impl From<&str> for ThinStr {
    fn from(text: &str) -> Self {
        let mut bytes = ThinVec::with_capacity(text.len());
        bytes.extend_from_slice(text.as_bytes());
        ThinStr(bytes)
    }
}

impl fmt::Debug for ThinStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for ThinStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ThinStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(ThinStr::from(text.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_word_the_same_text_and_the_same_json() {
        assert_eq!(std::mem::size_of::<ThinStr>(), 8);
        let key = ThinStr::from("AKIAIOSFODNN7EXAMPLE");
        assert_eq!(key.as_str(), "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(key.as_bytes(), b"AKIAIOSFODNN7EXAMPLE");
        let json = serde_json::to_string(&key).unwrap_or_default();
        assert_eq!(json, "\"AKIAIOSFODNN7EXAMPLE\"");
        let back: ThinStr = serde_json::from_str(&json).unwrap_or_default();
        assert_eq!(back, key);
        // Escaped text (not borrowable) reads back too.
        let escaped: ThinStr = serde_json::from_str("\"a\\u00e9\"").unwrap_or_default();
        assert_eq!(escaped.as_str(), "aé");
        assert!(ThinStr::default().is_empty());
        assert_eq!(ThinStr::default().heap_size(), 0);
    }
}
