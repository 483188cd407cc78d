//! Fuzz target: arbitrary bytes through ingest's pure path — `decompress` → `split` →
//! `normalize` for every record, exactly as `ingest files` does — and `normalize` directly on
//! the input as text. Errors are fine (they become dead letters); a panic is a bug.
//!
//! Run with `make fuzz` (deploy/fuzz.sh), which seeds the corpus from the shared records.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trailguard_ingest::normalize::normalize;
use trailguard_ingest::split::{decompress, split, Limits};

fuzz_target!(|data: &[u8]| {
    // The pipeline: undo gzip (when the magic bytes are there), split, normalize each record.
    let plain = decompress(data, LIMITS);
    if let Some(e) = &plain.broke {
        touch_split_error(e);
    }
    split_and_normalize(&plain.bytes);
    // Gzip-looking input also goes through split as it is (split must cope with any bytes).
    if data.starts_with(&[0x1f, 0x8b]) {
        split_and_normalize(data);
    }
    // One record given directly as text.
    if let Ok(text) = std::str::from_utf8(data) {
        check_normalize(text);
    }
});

/// Small limits, so the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_decompressed: 1 << 20,
    max_record: 64 << 10,
};

fn split_and_normalize(bytes: &[u8]) {
    for item in split(bytes, LIMITS) {
        assert!(item.index > 0, "split numbers items from 1");
        match &item.text {
            Ok(text) => check_normalize(text),
            Err(e) => touch_split_error(e),
        }
    }
}

fn check_normalize(text: &str) {
    match normalize(text) {
        Ok(activity) => {
            // What the publisher and the dead-letter path read off the results.
            let _ = activity.principal.key();
            let _ = format!("{activity:?}");
        }
        Err(e) => {
            let _ = (e.kind(), e.to_string());
        }
    }
}

fn touch_split_error(e: &trailguard_ingest::split::SplitError) {
    let _ = (e.kind(), e.to_string());
}
