//! `split`: the bytes of one input (a file, an object, stdin) → the raw records in it. Pure.
//!
//! Understands CloudTrail log files (`{"Records": [...]}`), JSON arrays of records, single
//! records, and NDJSON (one record — or one log file — per line); gzip is undone first. A line
//! that is not JSON is an error for that line only; a document that is not JSON fails whole.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One record's original text and where it was.
#[derive(Debug)]
pub struct RawItem<'a> {
    /// 1-based position: the line for NDJSON, the record number otherwise.
    pub index: usize,
    /// The record's JSON text, or the failure to read this part of the input.
    pub text: Result<&'a str, SplitError>,
    /// The original bytes (a line that failed to parse keeps its bytes here).
    pub bytes: &'a [u8],
}

/// Why an input, or a part of it, could not be read as JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// gzip data that cannot be decompressed (truncated, corrupt).
    #[error("gzip: {0}")]
    Gzip(String),
    /// Not UTF-8 / not JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
}

impl SplitError {
    /// Closed-set kind, for metric labels and the DLQ `error_kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            SplitError::Gzip(_) => "bad_gzip",
            SplitError::Json(_) => "invalid_json",
        }
    }
}

/// Undoes gzip when the input starts with the gzip magic bytes.
pub fn decompress(bytes: &[u8]) -> Result<Cow<'_, [u8]>, SplitError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(bytes.len() * 8);
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| SplitError::Gzip(e.to_string()))?;
        Ok(Cow::Owned(out))
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

#[derive(Deserialize)]
struct LogFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Option<Vec<&'a RawValue>>,
}

/// Splits decompressed input into raw records.
pub fn split(bytes: &[u8]) -> Result<Vec<RawItem<'_>>, SplitError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| SplitError::Json(e.to_string()))?;
    let first_line = text.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(first_line) = first_line else {
        return Ok(Vec::new());
    };
    let line_mode =
        serde_json::from_str::<&RawValue>(first_line).is_ok() && text.trim() != first_line;
    let mut items = Vec::new();
    if line_mode {
        let mut index = 0;
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            match serde_json::from_str::<&RawValue>(trimmed) {
                Ok(value) => expand(value, number + 1, &mut index, &mut items),
                Err(e) => items.push(RawItem {
                    index: number + 1,
                    text: Err(SplitError::Json(format!("line {}: {e}", number + 1))),
                    bytes: line.as_bytes(),
                }),
            }
        }
    } else {
        let value: &RawValue =
            serde_json::from_str(text).map_err(|e| SplitError::Json(e.to_string()))?;
        let mut index = 0;
        expand(value, 0, &mut index, &mut items);
    }
    Ok(items)
}

/// Expands one top-level JSON value: a log file's records, an array's elements, or itself.
/// `line` is the NDJSON line (0 in document mode): with it, items are numbered by line.
fn expand<'a>(value: &'a RawValue, line: usize, index: &mut usize, items: &mut Vec<RawItem<'a>>) {
    let text = value.get();
    let mut push = |record: &'a RawValue| {
        *index += 1;
        items.push(RawItem {
            index: if line > 0 { line } else { *index },
            text: Ok(record.get()),
            bytes: record.get().as_bytes(),
        });
    };
    if text.starts_with('{') {
        if let Ok(LogFile {
            records: Some(records),
        }) = serde_json::from_str::<LogFile<'a>>(text)
        {
            records.into_iter().for_each(&mut push);
            return;
        }
    } else if text.starts_with('[') {
        if let Ok(records) = serde_json::from_str::<Vec<&'a RawValue>>(text) {
            records.into_iter().for_each(&mut push);
            return;
        }
    }
    push(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(bytes: &[u8]) -> Vec<Result<String, SplitError>> {
        split(bytes)
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.text.map(str::to_string))
            .collect()
    }

    #[test]
    fn log_file_records() {
        let got = texts(br#"{"Records":[{"a":1},{"b":2}]}"#);
        assert_eq!(got, vec![Ok(r#"{"a":1}"#.into()), Ok(r#"{"b":2}"#.into())]);
    }

    #[test]
    fn pretty_log_file_is_one_document() {
        let got = texts(b"{\n \"Records\": [\n  {\"a\": 1}\n ]\n}\n");
        assert_eq!(got, vec![Ok(r#"{"a": 1}"#.into())]);
    }

    #[test]
    fn ndjson_with_a_bad_line() {
        let items = split(b"{\"a\":1}\n\nnot json\n{\"b\":2}\n").unwrap_or_default();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].index, 1);
        assert!(matches!(items[1].text, Err(SplitError::Json(_))));
        assert_eq!(items[1].bytes, b"not json");
        assert_eq!(items[1].index, 3);
        assert_eq!(items[2].index, 4);
    }

    #[test]
    fn broken_document_fails_whole() {
        assert!(matches!(
            split(b"{\n \"Records\": [ {a:1} ]\n}"),
            Err(SplitError::Json(_))
        ));
    }

    #[test]
    fn array_and_single() {
        assert_eq!(texts(br#"[{"a":1},{"b":2}]"#).len(), 2);
        assert_eq!(texts(br#"{"eventName":"x"}"#).len(), 1);
        assert!(texts(b"  \n ").is_empty());
    }

    #[test]
    fn gzip_roundtrip_and_truncation() -> std::io::Result<()> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(br#"{"Records":[{"a":1}]}"#)?;
        let gz = enc.finish()?;
        let plain = decompress(&gz).map_err(std::io::Error::other)?;
        assert_eq!(texts(&plain).len(), 1);
        assert!(matches!(
            decompress(&gz[..gz.len() / 2]),
            Err(SplitError::Gzip(_))
        ));
        Ok(())
    }
}
