//! What reading one input may cost ([`Limits`]) and how reading it fails ([`SplitError`]):
//! shared by [`crate::split`] (an input in memory) and [`crate::stream`] (a large object read
//! record by record), which sit side by side on top of it.

/// Why an input, or a part of it, could not be read as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// gzip data that cannot be decompressed (truncated, corrupt).
    #[error("gzip: {0}")]
    Gzip(String),
    /// Not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Bytes that are not UTF-8 inside a record or line.
    #[error("invalid UTF-8: {0}")]
    Utf8(String),
    /// Larger than the limits allow: a record, or an input's decompressed size.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The input itself could not be read (a file that failed or went away while streamed).
    #[error("cannot read: {0}")]
    Read(String),
}

impl SplitError {
    /// What was wrong, without the kind.
    pub fn reason(&self) -> &str {
        match self {
            SplitError::Gzip(why)
            | SplitError::Json(why)
            | SplitError::Utf8(why)
            | SplitError::TooLarge(why)
            | SplitError::Read(why) => why,
        }
    }

    /// Closed-set kind, for metric labels and the DLQ `error_kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            SplitError::Gzip(_) => "bad_gzip",
            SplitError::Json(_) => "invalid_json",
            SplitError::Utf8(_) => "invalid_utf8",
            SplitError::TooLarge(_) => "too_large",
            SplitError::Read(_) => "unreadable",
        }
    }
}

impl From<&SplitError> for trailguard_common::Poison {
    fn from(err: &SplitError) -> Self {
        trailguard_common::Poison::new(err.kind(), err.to_string())
    }
}

/// Whether `bytes` start as gzip does (its two magic bytes).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Bounds on what one input may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// An input decompresses to at most this many bytes; the rest is cut off and dead-lettered.
    pub max_decompressed: u64,
    /// A record (or NDJSON line) larger than this is dead-lettered without being parsed.
    pub max_record: usize,
}

/// An input that decompresses past this size *and* past [`MAX_RATIO`] times its compressed
/// size is a decompression bomb: it is cut off there.
pub const BOMB_FLOOR: u64 = 64 << 20;

/// CloudTrail's JSON compresses 10–30×; deflate cannot exceed ≈ 1,032×.
pub const MAX_RATIO: u64 = 100;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decompressed: 1 << 30,
            max_record: 16 << 20,
        }
    }
}
