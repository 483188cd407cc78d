//! Streaming a large CloudTrail log file: `{"Records": [...]}` (gzip or plain) read from any
//! `Read`, one record at a time, so memory stays flat whatever the file's size. Pure apart
//! from the reader.

use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::limits::{Limits, SplitError};

/// Hands each record of the log file in `reader` to `each` as JSON text, in order — or, for a
/// record holding bytes that are not UTF-8, the error and its repaired text; `each` returns
/// false to stop early. Returns how many records were handed over. A file that breaks
/// off (truncated gzip, invalid JSON) is an error after the records before the break were
/// handed over; the error says how many. Memory is bounded by `limits`: a record larger than
/// `max_record`, or a file decompressing past `max_decompressed`, stops there as `TooLarge`.
pub fn stream_log_file<R: Read>(
    reader: R,
    limits: Limits,
    mut each: impl FnMut(Result<String, (SplitError, String)>) -> bool,
) -> Result<u64, SplitError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let gzip = crate::limits::is_gzip(
        buffered
            .fill_buf()
            .map_err(|e| SplitError::Json(format!("reading: {e}")))?,
    );
    let mut count = 0u64;
    let since_record = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let repaired = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let (seen, any_repaired) = (since_record.clone(), repaired.clone());
    let mut index = 0u64;
    let mut each = |record: String| {
        seen.set(0);
        index += 1;
        if any_repaired.get() > 0 && record.as_bytes().contains(&REPAIRED) {
            let why = SplitError::Utf8(format!(
                "record {index} holds bytes that are not UTF-8 (each shown as DEL in this dead letter)"
            ));
            return each(Err((why, record)));
        }
        each(Ok(record))
    };
    let result = if gzip {
        let decoder = Bounded::new(
            flate2::bufread::MultiGzDecoder::new(buffered),
            limits,
            since_record,
            repaired,
        );
        run(
            BufReader::with_capacity(256 * 1024, decoder),
            &mut each,
            &mut count,
        )
    } else {
        run(
            Bounded::new(buffered, limits, since_record, repaired),
            &mut each,
            &mut count,
        )
    };
    match result {
        Ok(()) => Ok(count),
        Err(e) if e.is_io() && e.to_string().contains(TOO_LARGE) => {
            Err(SplitError::TooLarge(format!("after {count} records: {e}")))
        }
        Err(e) if e.is_io() && gzip => Err(SplitError::Gzip(format!("after {count} records: {e}"))),
        Err(e) if e.to_string().starts_with(STOPPED) => Ok(count),
        Err(e) => Err(SplitError::Json(format!("after {count} records: {e}"))),
    }
}

const STOPPED: &str = "stopped by the consumer";
const TOO_LARGE: &str = "beyond the limit";

/// A reader that fails once more than `max_decompressed` bytes came through in all, or more
/// than `max_record` since the last record was handed over (reset by the caller).
///
/// It also repairs bytes that are not UTF-8, in place, as [`REPAIRED`] (counted in `repaired`),
/// so one bad byte does not stop the parse: the record holding it is handed over as an error.
struct Bounded<R> {
    inner: R,
    limits: Limits,
    total: u64,
    since_record: std::rc::Rc<std::cell::Cell<u64>>,
    repaired: std::rc::Rc<std::cell::Cell<u64>>,
    /// Checked bytes not yet handed out, from `pos`.
    pending: Vec<u8>,
    pos: usize,
    /// An incomplete UTF-8 sequence at the end of the last chunk, checked with the next.
    carry: Vec<u8>,
}

/// What a byte that is not UTF-8 becomes in a streamed file: DEL, valid inside a JSON string
/// and absent from CloudTrail's text.
const REPAIRED: u8 = 0x7F;

/// How much is read from the inner reader at a time.
const CHUNK: usize = 64 * 1024;

impl<R> Bounded<R> {
    fn new(
        inner: R,
        limits: Limits,
        since_record: std::rc::Rc<std::cell::Cell<u64>>,
        repaired: std::rc::Rc<std::cell::Cell<u64>>,
    ) -> Self {
        Bounded {
            inner,
            limits,
            total: 0,
            since_record,
            repaired,
            pending: Vec::with_capacity(CHUNK + 4),
            pos: 0,
            carry: Vec::new(),
        }
    }
}

impl<R: Read> Bounded<R> {
    /// Reads the next chunk into `pending`, replacing bytes that are not UTF-8 and holding
    /// back an incomplete sequence at its end for the next chunk. Leaves `pending` empty only
    /// at the end of the input. Its own buffer, so callers may read a byte at a time.
    fn refill(&mut self) -> std::io::Result<()> {
        self.pending.clear();
        self.pos = 0;
        self.pending.append(&mut self.carry);
        loop {
            let start = self.pending.len();
            self.pending.resize(start + CHUNK, 0);
            let read = self.inner.read(&mut self.pending[start..])?;
            self.pending.truncate(start + read);
            let at_eof = read == 0;
            let mut from = 0;
            while let Err(e) = std::str::from_utf8(&self.pending[from..]) {
                let bad = from + e.valid_up_to();
                match e.error_len() {
                    Some(len) => {
                        self.pending[bad..bad + len].fill(REPAIRED);
                        self.repaired.set(self.repaired.get() + 1);
                        from = bad + len;
                    }
                    None if at_eof => {
                        self.pending[bad..].fill(REPAIRED);
                        self.repaired.set(self.repaired.get() + 1);
                        break;
                    }
                    None => {
                        self.carry.extend_from_slice(&self.pending[bad..]);
                        self.pending.truncate(bad);
                        break;
                    }
                }
            }
            if !self.pending.is_empty() || at_eof {
                return Ok(());
            }
            // Only an incomplete sequence so far: read on.
            self.pending.append(&mut self.carry);
        }
    }

    fn read_repaired(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.pending.len() {
            self.refill()?;
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.read_repaired(buf)?;
        self.total += n as u64;
        self.since_record.set(self.since_record.get() + n as u64);
        // Read-ahead means a record is measured with up to one buffer of what follows it.
        let slack = 512 * 1024;
        if self.total > self.limits.max_decompressed {
            return Err(std::io::Error::other(format!(
                "{TOO_LARGE}: more than {} bytes decompressed (publish.max_decompressed_bytes)",
                self.limits.max_decompressed
            )));
        }
        if self.since_record.get() > self.limits.max_record as u64 + slack {
            return Err(std::io::Error::other(format!(
                "{TOO_LARGE}: a record of more than {} bytes (publish.max_record_bytes)",
                self.limits.max_record
            )));
        }
        Ok(n)
    }
}

fn run<R: Read, F: FnMut(String) -> bool>(
    reader: R,
    each: &mut F,
    count: &mut u64,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_reader(reader);
    File { each, count }.deserialize(&mut de)?;
    de.end()
}

struct File<'a, F> {
    each: &'a mut F,
    count: &'a mut u64,
}

impl<'de, F: FnMut(String) -> bool> DeserializeSeed<'de> for File<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F: FnMut(String) -> bool> Visitor<'de> for File<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(r#"a CloudTrail log file {"Records": [...]}"#)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "Records" {
                // A second list is not CloudTrail's: an error (the input is dead-lettered, what
                // came before published), never records skipped unseen.
                if seen {
                    return Err(serde::de::Error::custom(
                        "a second `Records` list: the file is not read past it",
                    ));
                }
                seen = true;
                map.next_value_seed(Records {
                    each: &mut *self.each,
                    count: &mut *self.count,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !seen {
            return Err(serde::de::Error::custom("no `Records` list"));
        }
        Ok(())
    }
}

struct Records<'a, F> {
    each: &'a mut F,
    count: &'a mut u64,
}

impl<'de, F: FnMut(String) -> bool> DeserializeSeed<'de> for Records<'_, F> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(String) -> bool> Visitor<'de> for Records<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of records")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            *self.count += 1;
            if !(self.each)(raw.get().to_string()) {
                return Err(serde::de::Error::custom(STOPPED));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(n: usize) -> String {
        let records: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"eventName":"E{i}","eventTime":"2024-01-01T00:00:00Z","nested":{{"a":[1,2,{{"b":"x"}}]}}}}"#))
            .collect();
        format!(
            r#"{{"Other": {{"x": [1]}}, "Records": [{}], "Trailing": true}}"#,
            records.join(",")
        )
    }

    fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(bytes);
        enc.finish().unwrap_or_default()
    }

    fn gzip(text: &str) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(text.as_bytes());
        enc.finish().unwrap_or_default()
    }

    #[test]
    fn plain_and_gzip_give_every_record_in_order() {
        let text = file(5000);
        for bytes in [text.clone().into_bytes(), gzip(&text)] {
            let mut got = Vec::new();
            let n = stream_log_file(bytes.as_slice(), Limits::default(), |r| {
                got.extend(r.ok());
                true
            });
            assert_eq!(n.ok(), Some(5000));
            assert!(got[4999].contains("\"E4999\""));
            let parsed: serde_json::Value = serde_json::from_str(&got[7]).unwrap_or_default();
            assert_eq!(parsed["nested"]["a"][2]["b"], "x");
        }
    }

    #[test]
    fn a_truncated_file_gives_what_came_before_and_says_so() {
        let text = file(1000);
        let gz = gzip(&text);
        let cut = &gz[..gz.len() / 2];
        let mut got = 0;
        let err = stream_log_file(cut, Limits::default(), |_| {
            got += 1;
            true
        });
        let Err(SplitError::Gzip(msg)) = err else {
            panic!("expected a gzip error, got {err:?}");
        };
        assert!(got > 0 && got < 1000, "{got}");
        assert!(msg.starts_with(&format!("after {got} records")), "{msg}");
        let bad = text.replace("\"E500\"", "\"E500\",,");
        let err = stream_log_file(bad.as_bytes(), Limits::default(), |_| true);
        assert!(
            matches!(err, Err(SplitError::Json(ref m)) if m.starts_with("after 500 records")),
            "{err:?}"
        );
        assert!(
            stream_log_file(&b"{\"NotRecords\": []}"[..], Limits::default(), |_| true).is_err()
        );
    }

    #[test]
    fn a_second_records_list_is_an_error_not_skipped() {
        // Read whole, such a document is one dead-lettered record; streamed, the second list
        // was skipped unseen and the input counted as read.
        let text = r#"{"Records":[{"eventName":"A"}],"Records":[{"eventName":"B"}]}"#;
        let mut got = 0;
        let result = stream_log_file(text.as_bytes(), Limits::default(), |_| {
            got += 1;
            true
        });
        assert!(
            matches!(&result, Err(SplitError::Json(m)) if m.contains("Records")),
            "{result:?}"
        );
        assert_eq!(got, 1, "what came before is handed over, as for a cut file");
    }

    #[test]
    fn memory_is_bounded_by_the_limits() {
        let limits = Limits {
            max_decompressed: 4 << 20,
            max_record: 1 << 20,
        };
        let huge = format!(
            r#"{{"Records":[{{"a":1}},{{"b":"{}"}}]}}"#,
            "x".repeat(8 << 20)
        );
        let mut got = 0;
        let err = stream_log_file(gzip(&huge).as_slice(), limits, |_| {
            got += 1;
            true
        });
        assert!(
            matches!(err, Err(SplitError::TooLarge(ref m)) if m.contains("record")),
            "{err:?}"
        );
        assert_eq!(got, 1);
        let many = file(100_000);
        assert!(many.len() > 4 << 20);
        let err = stream_log_file(gzip(&many).as_slice(), limits, |_| true);
        assert!(
            matches!(err, Err(SplitError::TooLarge(ref m)) if m.contains("decompressed")),
            "{err:?}"
        );
    }

    #[test]
    fn a_byte_that_is_not_utf8_costs_one_record() {
        let text = file(3000).replace("\"E1500\"", "\"E\u{e9}1500\"");
        let mut bytes = text.into_bytes();
        let at = bytes
            .windows(2)
            .position(|w| w == [0xc3, 0xa9])
            .unwrap_or(0);
        bytes[at] = 0xff; // é's first byte, broken
        for input in [bytes.clone(), gzip_bytes(&bytes)] {
            let (mut good, mut bad) = (0, Vec::new());
            let n = stream_log_file(input.as_slice(), Limits::default(), |r| {
                match r {
                    Ok(_) => good += 1,
                    Err((why, text)) => bad.push((why, text)),
                }
                true
            });
            assert_eq!(n.ok(), Some(3000));
            assert_eq!(good, 2999);
            assert_eq!(bad.len(), 1);
            assert!(matches!(bad[0].0, SplitError::Utf8(_)));
            assert!(bad[0].1.contains("E\u{7f}\u{7f}1500"), "{}", bad[0].1);
        }
    }

    #[test]
    fn valid_characters_read_a_byte_at_a_time_are_kept() {
        let text = file(50).replace("\"E7\"", "\"E\u{e9}\u{1F600}7\"");
        let mut records = Vec::new();
        // A plain (not gzip) file: serde_json reads it a byte at a time.
        let n = stream_log_file(text.as_bytes(), Limits::default(), |r| {
            records.push(r);
            true
        });
        assert_eq!(n.ok(), Some(50));
        assert!(records.iter().all(Result::is_ok));
        assert!(records[7]
            .as_ref()
            .is_ok_and(|r| r.contains("E\u{e9}\u{1F600}7")));
    }

    #[test]
    fn the_consumer_can_stop() {
        let text = file(100);
        let mut got = 0;
        let n = stream_log_file(text.as_bytes(), Limits::default(), |_| {
            got += 1;
            got < 10
        });
        assert_eq!(n.ok(), Some(10));
    }
}
