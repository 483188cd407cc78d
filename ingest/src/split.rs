//! `split`: the bytes of one input (a file, an object, stdin) → the raw records in it. Pure.
//!
//! Understands CloudTrail log files (`{"Records": [...]}`), JSON arrays of records, single
//! records, and NDJSON (one record — or one log file — per line); gzip is undone first, within
//! bounds. Nothing fails whole: a line that is not JSON or not UTF-8 costs that line, a record
//! with an invalid UTF-8 byte costs that record, and a document that breaks off (a truncated
//! gzip, a cut file) gives the records before the break and one error saying where it broke.

use std::borrow::Cow;
use std::io::Read;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One record's text and where it was.
#[derive(Debug)]
pub struct RawItem<'a> {
    /// 1-based position: the line for NDJSON, the record number otherwise.
    pub index: usize,
    /// The record's JSON text, or the failure to read this part of the input.
    pub text: Result<Cow<'a, str>, SplitError>,
    /// The original bytes (a part that failed keeps its bytes here; empty for the rest of an
    /// input that broke off, which its source names).
    pub bytes: Cow<'a, [u8]>,
}

pub use crate::limits::{is_gzip, Limits, SplitError, BOMB_FLOOR, MAX_RATIO};

/// An input with gzip undone: the bytes, and why decompression stopped early, if it did (the
/// bytes are then what came before).
#[derive(Debug)]
pub struct Plain<'a> {
    /// The decompressed bytes (the input itself when it is not gzip).
    pub bytes: Cow<'a, [u8]>,
    /// Truncated or corrupt gzip, or the limits reached.
    pub broke: Option<SplitError>,
}

/// Undoes gzip when the input starts with the gzip magic bytes, keeping at most
/// `max_decompressed` bytes — fewer for a bomb (past [`BOMB_FLOOR`] and [`MAX_RATIO`] times
/// its size).
pub fn decompress(bytes: &[u8], limits: Limits) -> Plain<'_> {
    if !is_gzip(bytes) {
        return Plain {
            bytes: Cow::Borrowed(bytes),
            broke: None,
        };
    }
    let by_ratio = (bytes.len() as u64)
        .saturating_mul(MAX_RATIO)
        .max(BOMB_FLOOR);
    let cap = limits.max_decompressed.min(by_ratio);
    // Reserved at the cap, so growing never copies (pages are resident only once written).
    let mut out = Vec::with_capacity(usize::try_from(cap).unwrap_or(usize::MAX).saturating_add(1));
    let read = flate2::read::MultiGzDecoder::new(bytes)
        .take(cap.saturating_add(1))
        .read_to_end(&mut out);
    let broke = match read {
        Err(e) => Some(SplitError::Gzip(format!(
            "after {} decompressed bytes: {e}",
            out.len()
        ))),
        Ok(_) if out.len() as u64 > cap => {
            out.truncate(cap as usize);
            Some(SplitError::TooLarge(if cap < limits.max_decompressed {
                format!(
                    "decompresses to more than {cap} bytes, over {MAX_RATIO} times its {} (a decompression bomb)",
                    bytes.len()
                )
            } else {
                format!("decompresses to more than {cap} bytes (publish.max_decompressed_bytes)")
            }))
        }
        Ok(_) => None,
    };
    Plain {
        bytes: Cow::Owned(out),
        broke,
    }
}

/// An object read as a log file: its `Records`, as text. serde's derived reading, so that a
/// repeated `Records` key, or one that is not a list, makes the object one record.
#[derive(Deserialize)]
struct LogFile<'a> {
    #[serde(rename = "Records", borrow)]
    records: Option<&'a RawValue>,
}

/// Hands each element of the JSON array `array` (text already read as JSON) to `each`, as it
/// is read: a list of millions of records costs no list of them. False when it does not read
/// as an array, before any element is handed over (never so for a list that was read).
fn elements<'a>(array: &'a RawValue, each: &mut impl FnMut(&'a RawValue)) -> bool {
    struct Each<'f, F>(&'f mut F);
    impl<'de, F: FnMut(&'de RawValue)> serde::de::Visitor<'de> for Each<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(element) = seq.next_element::<&'de RawValue>()? {
                (self.0)(element);
            }
            Ok(())
        }
    }
    if !array.get().starts_with('[') {
        return false;
    }
    let mut reader = serde_json::Deserializer::from_str(array.get());
    // The text was read as JSON already, and the same reader reads its elements the same way:
    // this cannot fail part-way.
    serde::Deserializer::deserialize_seq(&mut reader, Each(each)).is_ok()
}

/// Splits decompressed input into raw records and failed parts.
pub fn split(input: &[u8], limits: Limits) -> Vec<RawItem<'_>> {
    let mut items = Vec::new();
    split_each(input, limits, &mut |item| items.push(item));
    items
}

/// [`split`], handing each record (or failed part) to `each` as it is found rather than
/// gathering them: what an input costs beyond its bytes does not grow with how many records
/// it holds (a log file of a million tiny records, `[1,1,…]`, costs no list of them).
pub fn split_each<'a>(input: &'a [u8], limits: Limits, each: &mut impl FnMut(RawItem<'a>)) {
    let bytes = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut lines = bytes
        .split(|b| *b == b'\n')
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty());
    let Some(first_line) = lines.next() else {
        return;
    };
    let whole = bytes.trim_ascii();
    // NDJSON: several lines, and the first that is a JSON value on its own among the first
    // few (a bad first line costs that line, not the file) — unless the input is one document
    // spread over lines.
    let parses = |line: &[u8]| parses_alone(line, limits);
    let line_mode = first_line.len() < whole.len()
        && (parses(first_line)
            || (serde_json::from_slice::<&RawValue>(whole).is_err()
                && lines
                    .take(8)
                    .any(|l| parses(l) && matches!(l[0], b'{' | b'['))));
    if line_mode {
        for (number, line) in bytes.split(|b| *b == b'\n').enumerate() {
            self::line_each(number + 1, line.trim_ascii(), limits, each);
        }
    } else {
        document(whole, input, limits, each);
    }
}

/// Whether `line` (trimmed) is a JSON value on its own, within the record limit: the first
/// line of an input that does is read as NDJSON.
pub fn parses_alone(line: &[u8], limits: Limits) -> bool {
    line.len() <= limits.max_record && serde_json::from_slice::<&RawValue>(line).is_ok()
}

/// The records of one NDJSON line (`number`, 1-based; `line` trimmed, empty lines give none):
/// a record, or each record of a log file or array on the line, all numbered by the line — or
/// the line's one failure, carrying its bytes.
pub fn line<'a>(number: usize, line: &'a [u8], limits: Limits, items: &mut Vec<RawItem<'a>>) {
    line_each(number, line, limits, &mut |item| items.push(item));
}

/// [`line`], handing each record to `each` as it is found rather than gathering them: a line
/// holding a log file or an array of millions of records costs no list of them.
pub fn line_each<'a>(
    number: usize,
    line: &'a [u8],
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) {
    if line.is_empty() {
        return;
    }
    let failed = |error| RawItem {
        index: number,
        text: Err(error),
        bytes: Cow::Borrowed(line),
    };
    if line.len() > limits.max_record {
        each(failed(SplitError::TooLarge(format!(
            "line {number} of {} bytes (publish.max_record_bytes)",
            line.len()
        ))));
        return;
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(e) => {
            each(failed(SplitError::Utf8(format!("line {number}: {e}"))));
            return;
        }
    };
    if let Err(e) = value_each(text, number, limits, each) {
        each(failed(SplitError::Json(format!("line {number}: {e}"))));
    }
}

/// The records of `text` (trimmed), a JSON value: a log file's records, an array's elements,
/// or itself — each numbered `line` when it is on an NDJSON line, else by its place. The
/// error when `text` is not JSON, before anything was handed over.
fn value_each<'a>(
    text: &'a str,
    line: usize,
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) -> Result<(), serde_json::Error> {
    if text.starts_with('{') {
        // Most values are one record. Probing for a log file's `Records` checks the whole
        // value's syntax as a raw parse would, so a value the probe takes is parsed once, not
        // twice; one it refuses is parsed raw below, for its error or as one record.
        if let Ok(LogFile { records }) = serde_json::from_str::<LogFile<'a>>(text) {
            let mut index = 0;
            let mut push = |record: &'a str| {
                index += 1;
                let at = if line > 0 { line } else { index };
                each(record_item(at, Cow::Borrowed(record), limits));
            };
            if !records.is_some_and(|records| elements(records, &mut |r| push(r.get()))) {
                // The text is trimmed: it is the value's, as a raw parse would give.
                push(text);
            }
            return Ok(());
        }
    }
    let value = serde_json::from_str::<&RawValue>(text)?;
    expand(value, line, &mut 0, limits, each);
    Ok(())
}

/// One JSON document (a log file, an array, a record); `input` is all of it as read, kept
/// exactly in a dead letter of the whole.
fn document<'a>(
    bytes: &'a [u8],
    input: &'a [u8],
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            if value_each(text, 0, limits, each).is_err() {
                salvage(text.as_bytes(), input, limits, each);
            }
        }
        Err(_) => lossy_document(bytes, input, limits, each),
    }
}

/// A document that does not parse whole (cut off, or broken half-way): the records of its
/// `Records` list before the break, then one error for the rest, carrying the whole `input`.
fn salvage<'a>(
    bytes: &'a [u8],
    input: &'a [u8],
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) {
    let mut count = 0;
    let result = crate::stream::stream_log_file(bytes, limits, |record| {
        count += 1;
        each(match record {
            Ok(text) => record_item(count, Cow::Owned(text), limits),
            Err((why, text)) => RawItem {
                index: count,
                text: Err(why),
                bytes: Cow::Owned(text.into_bytes()),
            },
        });
        true
    });
    let error = match result {
        Ok(_) => return,
        Err(SplitError::Json(e) | SplitError::Gzip(e)) if count == 0 => SplitError::Json(
            e.strip_prefix("after 0 records: ")
                .unwrap_or(&e)
                .to_string(),
        ),
        Err(e) => e,
    };
    each(RawItem {
        index: count + 1,
        text: Err(error),
        // Nothing before the break is lost; the whole input is kept when it is small enough,
        // else its source names it.
        bytes: Cow::Borrowed(input),
    });
}

/// A document with bytes that are not UTF-8: read with each bad sequence replaced, so the
/// records around them are found; a record that held one is an error carrying its original
/// bytes, the others are published.
fn lossy_document<'a>(
    bytes: &'a [u8],
    input: &'a [u8],
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) {
    // Each bad sequence: where it starts in the original, its length there, and where its
    // replacement character (3 bytes) starts in the replaced text.
    let mut bad: Vec<(usize, usize, usize)> = Vec::new();
    let mut rest = bytes;
    let (mut offset, mut longer) = (0, 0isize);
    while let Err(e) = std::str::from_utf8(rest) {
        if bad.len() >= MOST_BAD_SEQUENCES {
            // Not text: what finding its records would cost grows with its bad bytes.
            each(RawItem {
                index: 1,
                text: Err(SplitError::Utf8(format!(
                    "more than {MOST_BAD_SEQUENCES} byte sequences that are not UTF-8; not read for records"
                ))),
                bytes: Cow::Borrowed(input),
            });
            return;
        }
        let at = offset + e.valid_up_to();
        let len = e.error_len().unwrap_or(rest.len() - e.valid_up_to());
        bad.push((at, len, at.saturating_add_signed(longer)));
        longer += 3 - len as isize;
        offset = at + len;
        rest = &bytes[offset..];
    }
    // The text with each bad sequence replaced, in one allocation of its size.
    let mut text = String::with_capacity(bytes.len().saturating_add_signed(longer));
    let mut from = 0;
    for (at, len, _) in &bad {
        text.push_str(std::str::from_utf8(&bytes[from..*at]).unwrap_or_default());
        text.push('\u{FFFD}');
        from = at + len;
    }
    text.push_str(std::str::from_utf8(&bytes[from..]).unwrap_or_default());
    // Maps an offset in `text` back to the original bytes.
    let original = |at: usize| -> usize {
        let before = bad.partition_point(|(_, _, t)| *t < at);
        match before.checked_sub(1).map(|i| bad[i]) {
            None => at,
            Some((o, len, t)) => o + len + (at - t).saturating_sub(3),
        }
    };
    // Whether a replacement character starts in `start..end` of `text` (`bad` is in order).
    let tainted = |start: usize, end: usize| -> bool {
        let first = bad.partition_point(|(_, _, t)| *t < start);
        bad.get(first).is_some_and(|(_, _, t)| *t < end)
    };
    let value = match serde_json::from_str::<&RawValue>(&text) {
        Ok(value) => value,
        Err(e) => {
            each(RawItem {
                index: 1,
                text: Err(SplitError::Utf8(format!("and not JSON: {e}"))),
                bytes: Cow::Borrowed(input),
            });
            return;
        }
    };
    let mut index = 0;
    expand(value, 0, &mut 0, limits, &mut |item| {
        index += 1;
        let record = match item.text {
            Ok(record) => record,
            Err(error) => {
                return each(RawItem {
                    index,
                    text: Err(error),
                    bytes: Cow::Borrowed(b""),
                })
            }
        };
        let start = record.as_ptr() as usize - text.as_ptr() as usize;
        let end = start + record.len();
        if tainted(start, end) {
            let (from, to) = (original(start), original(end).min(bytes.len()));
            each(RawItem {
                index,
                text: Err(SplitError::Utf8(format!(
                    "record {index} holds bytes that are not UTF-8 (input bytes {from}..{to})"
                ))),
                bytes: Cow::Borrowed(&bytes[from.min(to)..to]),
            });
        } else {
            each(record_item(index, Cow::Owned(record.into_owned()), limits));
        }
    });
}

/// Most byte sequences that are not UTF-8 a document read whole may hold and still be read for
/// its records (each is remembered, to find the records that hold one): past it, the document
/// is dead-lettered whole.
pub const MOST_BAD_SEQUENCES: usize = 1 << 16;

/// An item for one record's text, unless it is larger than the limit.
fn record_item(index: usize, text: Cow<'_, str>, limits: Limits) -> RawItem<'_> {
    let bytes = match &text {
        Cow::Borrowed(t) => Cow::Borrowed(t.as_bytes()),
        Cow::Owned(t) => Cow::Owned(t.as_bytes().to_vec()),
    };
    if text.len() > limits.max_record {
        // Kept whole in the dead letter (a pointer naming the input, or, for stdin, parts).
        return RawItem {
            index,
            text: Err(SplitError::TooLarge(format!(
                "record {index} of {} bytes (publish.max_record_bytes)",
                text.len()
            ))),
            bytes,
        };
    }
    RawItem {
        index,
        text: Ok(text),
        bytes,
    }
}

/// Expands one top-level JSON value: a log file's records, an array's elements, or itself.
/// `line` is the NDJSON line (0 in document mode): with it, items are numbered by line.
fn expand<'a>(
    value: &'a RawValue,
    line: usize,
    index: &mut usize,
    limits: Limits,
    each: &mut impl FnMut(RawItem<'a>),
) {
    let text = value.get();
    let mut push = |record: &'a RawValue| {
        *index += 1;
        let at = if line > 0 { line } else { *index };
        each(record_item(at, Cow::Borrowed(record.get()), limits));
    };
    let listed = if text.starts_with('{') {
        match serde_json::from_str::<LogFile<'a>>(text) {
            Ok(LogFile {
                records: Some(records),
            }) => elements(records, &mut push),
            _ => false,
        }
    } else {
        elements(value, &mut push)
    };
    if !listed {
        push(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(bytes: &[u8]) -> Vec<Result<String, SplitError>> {
        split(bytes, Limits::default())
            .into_iter()
            .map(|i| i.text.map(|t| t.into_owned()))
            .collect()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(bytes);
        enc.finish().unwrap_or_default()
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
        let items = split(b"{\"a\":1}\n\nnot json\n{\"b\":2}\n", Limits::default());
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].index, 1);
        assert!(matches!(items[1].text, Err(SplitError::Json(_))));
        assert_eq!(&*items[1].bytes, b"not json");
        assert_eq!(items[1].index, 3);
        assert_eq!(items[2].index, 4);
    }

    #[test]
    fn an_invalid_byte_costs_one_line_or_one_record() {
        let items = split(
            b"{\"a\":1}\n{\"b\":\"\xff\"}\n{\"c\":3}\n",
            Limits::default(),
        );
        assert_eq!(items.len(), 3);
        assert!(items[0].text.is_ok() && items[2].text.is_ok());
        assert!(matches!(items[1].text, Err(SplitError::Utf8(_))));
        assert_eq!(&*items[1].bytes, b"{\"b\":\"\xff\"}");

        let doc = b"{\"Records\":[{\"a\":\"\xc3\xa9\"},{\"b\":\"x\xff\xfey\"},{\"c\":\"\xe2\x82\"},{\"d\":4}]}";
        let items = split(doc, Limits::default());
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].text.as_deref().ok(), Some("{\"a\":\"é\"}"));
        assert!(matches!(items[1].text, Err(SplitError::Utf8(_))));
        assert_eq!(&*items[1].bytes, b"{\"b\":\"x\xff\xfey\"}");
        assert!(matches!(items[2].text, Err(SplitError::Utf8(_))));
        assert_eq!(&*items[2].bytes, b"{\"c\":\"\xe2\x82\"}");
        assert_eq!(items[3].text.as_deref().ok(), Some("{\"d\":4}"));
        assert_eq!(items[3].index, 4);
    }

    /// A line parsed once where it can be gives what parsing it raw, then probing it for a
    /// log file, gave: the same records, texts, bytes and errors.
    #[test]
    fn a_line_parsed_once_is_a_line_parsed_twice() {
        fn twice(number: usize, line: &[u8], limits: Limits) -> Vec<RawItem<'_>> {
            let mut items = Vec::new();
            if line.len() > limits.max_record {
                let why = format!(
                    "line {number} of {} bytes (publish.max_record_bytes)",
                    line.len()
                );
                items.push(RawItem {
                    index: number,
                    text: Err(SplitError::TooLarge(why)),
                    bytes: Cow::Borrowed(line),
                });
                return items;
            }
            let text = std::str::from_utf8(line).expect("the lines are UTF-8");
            match serde_json::from_str::<&RawValue>(text) {
                Ok(value) => expand(value, number, &mut 0, limits, &mut |i| items.push(i)),
                Err(e) => items.push(RawItem {
                    index: number,
                    text: Err(SplitError::Json(format!("line {number}: {e}"))),
                    bytes: Cow::Borrowed(line),
                }),
            }
            items
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        let nested = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        let big = format!(r#"{{"eventName":"{}"}}"#, "x".repeat(300));
        let lines: Vec<&[u8]> = vec![
            br#"{"eventID":"1","eventName":"ListUsers"}"#,
            br#"{"Records":[{"a":1},{"b":2}]}"#,
            br#"{"Records":[]}"#,
            br#"{"Records":null}"#,
            br#"{"Records":5}"#,
            br#"{"Records":{"a":1}}"#,
            br#"{"Records":[{"a":1}],"Records":[{"b":2}]}"#,
            br#"{"Records":[{"a":1},{"b":2}],"x":[1,2,{"y":"\u00e9\n"}]}"#,
            br#"{"Records":[{"a":1}, {"b":2} ]} trailing"#,
            br#"{"a":1}{"b":2}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\ud800"}"#,
            b"{\"a\":\"tab\there\"}",
            br#"{"a":01}"#,
            br#"{"a":1e}"#,
            br#"{"a":-}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"#,
            br#"{}"#,
            br#"{"Records":[{"a":1}"#,
            br#"[{"a":1},{"b":2}]"#,
            br#""just a string""#,
            "{\"Records\":[{\"a\":\"é\"}]}".as_bytes(),
            deep.as_bytes(),
            nested.as_bytes(),
            big.as_bytes(),
        ];
        for limits in [Limits::default(), limits_of(100)] {
            for line in &lines {
                let mut once = Vec::new();
                super::line(7, line, limits, &mut once);
                assert_eq!(
                    seen(once),
                    seen(twice(7, line, limits)),
                    "{}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }

    /// Records handed over one by one as they are read are those gathered into lists first
    /// (how a value was expanded before): the same texts, numbers and errors, over log files,
    /// arrays and single records, on lines and as documents, within the record limit or not.
    #[test]
    fn records_read_one_by_one_are_those_gathered_first() {
        #[derive(Deserialize)]
        struct Gathered<'a> {
            #[serde(rename = "Records", borrow)]
            records: Option<Vec<&'a RawValue>>,
        }
        fn gathered<'a>(value: &'a RawValue, line: usize, limits: Limits) -> Vec<RawItem<'a>> {
            let text = value.get();
            let records = if text.starts_with('{') {
                serde_json::from_str::<Gathered<'a>>(text)
                    .ok()
                    .and_then(|g| g.records)
            } else if text.starts_with('[') {
                serde_json::from_str::<Vec<&'a RawValue>>(text).ok()
            } else {
                None
            };
            let records = records.unwrap_or_else(|| vec![value]);
            (1..)
                .zip(records)
                .map(|(i, r)| {
                    let at = if line > 0 { line } else { i };
                    record_item(at, Cow::Borrowed(r.get()), limits)
                })
                .collect()
        }
        let ones = format!("[{}1]", "1,".repeat(5_000));
        let many = format!(r#"{{"x":0,"Records":{ones},"y":[{{"Records":[2]}}]}}"#);
        let values = [
            r#"{"Records":[{"a":1},{"b":2}]}"#,
            r#"{"Records":[ {"a":1} , [2,3] , "s" , null , 4.5e1 , true ]}"#,
            r#"{"Records" : [ ] }"#,
            r#"{"Records":null}"#,
            r#"{"Records":5}"#,
            r#"{"Records":"[1,2]"}"#,
            r#"{"Records":{"a":1}}"#,
            r#"{"Records":[{"a":1}],"Records":[{"b":2}]}"#,
            r#"{"records":[{"a":1}]}"#,
            r#"{"Records":[{"a":1},{"b":2}]}"#,
            r#"{"a":{"Records":[1,2]}}"#,
            r#"[{"a":1},{"b":2}]"#,
            r#"[ ]"#,
            r#"[[{"Records":[1]}],{"Records":[2]}]"#,
            r#"{"eventName":"ListUsers"}"#,
            r#""just a string""#,
            r#"42"#,
            &ones,
            &many,
        ];
        for limits in [Limits::default(), limits_of(12)] {
            for text in values {
                let value: &RawValue = serde_json::from_str(text).expect("valid JSON");
                for line in [0, 7] {
                    let mut one_by_one = Vec::new();
                    expand(value, line, &mut 0, limits, &mut |i| one_by_one.push(i));
                    assert_eq!(
                        seen(one_by_one),
                        seen(gathered(value, line, limits)),
                        "{text} on line {line}"
                    );
                }
                let mut as_document = Vec::new();
                split_each(text.as_bytes(), limits, &mut |i| as_document.push(i));
                assert_eq!(
                    seen(as_document),
                    seen(gathered(value, 0, limits)),
                    "{text}"
                );
            }
        }
    }

    /// A document with more byte sequences that are not UTF-8 than it may hold is one dead
    /// letter of the whole; one with fewer is read for its records.
    #[test]
    fn a_document_of_many_bad_bytes_is_not_read_for_records() {
        let document = |bad: usize| {
            let mut doc = b"{\"Records\":[{\"a\":1}".to_vec();
            for _ in 0..bad {
                doc.extend_from_slice(b",\"\xff\"");
            }
            doc.extend_from_slice(b"]}");
            doc
        };
        let few = document(3);
        let items = split(&few, Limits::default());
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].text.as_deref().ok(), Some("{\"a\":1}"));
        assert!(items[1..]
            .iter()
            .all(|i| matches!(i.text, Err(SplitError::Utf8(_)))));
        let many = document(MOST_BAD_SEQUENCES + 1);
        let items = split(&many, Limits::default());
        assert_eq!(items.len(), 1);
        let Err(SplitError::Utf8(why)) = &items[0].text else {
            panic!("{:?}", items[0].text);
        };
        assert!(why.starts_with("more than 65536 byte sequences"), "{why}");
        assert_eq!(&*items[0].bytes, &many[..]);
        // At the bound, still read.
        let most = document(MOST_BAD_SEQUENCES);
        assert_eq!(
            split(&most, Limits::default()).len(),
            MOST_BAD_SEQUENCES + 1
        );
    }

    /// What a list of items says, owned: each one's number, text or error, and bytes.
    fn seen(items: Vec<RawItem<'_>>) -> Vec<(usize, Result<String, String>, Vec<u8>)> {
        items
            .into_iter()
            .map(|i| {
                let text = i.text.map(|t| t.into_owned()).map_err(|e| e.to_string());
                (i.index, text, i.bytes.into_owned())
            })
            .collect()
    }

    fn limits_of(max_record: usize) -> Limits {
        Limits {
            max_record,
            ..Limits::default()
        }
    }

    #[test]
    fn a_broken_document_keeps_the_records_before_the_break() {
        let items = split(
            b"{\n \"Records\": [ {\"a\":1}, {a:1} ]\n}",
            Limits::default(),
        );
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].text.as_deref().ok(), Some("{\"a\":1}"));
        let Err(SplitError::Json(why)) = &items[1].text else {
            panic!("{:?}", items[1].text);
        };
        assert!(why.starts_with("after 1 records"), "{why}");
        let items = split(b"{ not json", Limits::default());
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0].text, Err(SplitError::Json(_))));
    }

    #[test]
    fn array_and_single() {
        assert_eq!(texts(br#"[{"a":1},{"b":2}]"#).len(), 2);
        assert_eq!(texts(br#"{"eventName":"x"}"#).len(), 1);
        assert!(texts(b"  \n ").is_empty());
    }

    #[test]
    fn a_bad_first_line_costs_that_line() {
        let items = split(b"garbage\n{\"a\":1}\n{\"b\":2}\n", Limits::default());
        assert_eq!(items.len(), 3);
        assert!(matches!(items[0].text, Err(SplitError::Json(_))));
        assert_eq!(items[1].text.as_deref().ok(), Some("{\"a\":1}"));
        assert_eq!(items[2].index, 3);
        // A document spread over lines is still one document.
        assert_eq!(texts(b"{\"Records\":\n[{\"a\":1},\n{\"b\":2}]}\n").len(), 2);
    }

    #[test]
    fn records_above_the_limit_are_refused_unparsed() {
        let limits = Limits {
            max_record: 20,
            ..Limits::default()
        };
        let items = split(
            br#"{"Records":[{"a":1},{"b":"0123456789012345678901234"}]}"#,
            limits,
        );
        assert!(items[0].text.is_ok());
        assert!(matches!(items[1].text, Err(SplitError::TooLarge(_))));
        let items = split(
            b"{\"a\":1}\n{\"b\":\"0123456789012345678901234\"}\n",
            limits,
        );
        assert!(matches!(items[1].text, Err(SplitError::TooLarge(_))));
    }

    #[test]
    fn a_truncated_gzip_gives_what_came_before() {
        let records: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"eventName":"E{i}"}}"#))
            .collect();
        let text = format!(r#"{{"Records":[{}]}}"#, records.join(","));
        let gz = gzip(text.as_bytes());
        let whole = decompress(&gz, Limits::default());
        assert!(whole.broke.is_none());
        assert_eq!(split(&whole.bytes, Limits::default()).len(), 2000);
        let cut = decompress(&gz[..gz.len() / 2], Limits::default());
        assert!(
            matches!(cut.broke, Some(SplitError::Gzip(_))),
            "{:?}",
            cut.broke
        );
        let items = split(&cut.bytes, Limits::default());
        let good = items.iter().filter(|i| i.text.is_ok()).count();
        assert!(good > 0 && good < 2000, "{good}");
        assert!(items.last().is_some_and(|i| i.text.is_err()));
    }

    #[test]
    fn a_decompression_bomb_is_cut_off() {
        let zeros = vec![0u8; 200 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let plain = decompress(&bomb, Limits::default());
        assert!(
            matches!(plain.broke, Some(SplitError::TooLarge(_))),
            "{:?}",
            plain.broke
        );
        assert_eq!(plain.bytes.len() as u64, bomb.len() as u64 * MAX_RATIO);
        let small = Limits {
            max_decompressed: 1000,
            ..Limits::default()
        };
        let spaces = gzip(&[b' '; 5000]);
        let plain = decompress(&spaces, small);
        assert_eq!(plain.bytes.len(), 1000);
        assert!(matches!(plain.broke, Some(SplitError::TooLarge(_))));
    }
}
