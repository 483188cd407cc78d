//! Every failure is one of two kinds, and the kind decides what happens to the input at hand:
//!
//! - **retryable**: trying again later may succeed (a broker or service that is down, throttled
//!   or slow, credentials being rotated). Back off; do not advance past the input.
//! - **poison**: trying again cannot succeed (the input is malformed, gone, or refused for good).
//!   Count it, dead-letter it with its kind and reason and enough to recover it, and advance.
//!
//! The sources of ingest, detect's consumer loop and remediate's actions all decide with this
//! type, so no call site encodes the choice in a `bool` or in matching on error text.

/// Why an input cannot be used, ever: what goes on its dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// A closed-set name for metric labels and the dead letter's `error_kind`
    /// (`undecodable_activity`, `unreadable`, `invalid_json` ...).
    pub kind: &'static str,
    /// What a person reads: what was wrong with it.
    pub reason: String,
}

impl Poison {
    /// A poison input of `kind`, for `reason`.
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Poison {
        Poison {
            kind,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

/// What to do about a failure: try again, or dead-letter and move on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<E> {
    /// Trying again later may succeed: back off, do not advance.
    Retryable(E),
    /// Trying again cannot succeed: dead-letter, count, advance.
    Poison(Poison),
}

impl<E> Failure<E> {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Retryable(_))
    }
}
