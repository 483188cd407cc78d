//! Streaming a large CloudTrail log file: `{"Records": [...]}` (gzip or plain) read from any
//! `Read`, one record at a time, so memory stays flat whatever the file's size. Pure apart
//! from the reader.

use std::io::{BufRead, BufReader, Read};

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::split::{Limits, SplitError};

/// Hands each record of the log file in `reader` to `each` as JSON text, in order; `each`
/// returns false to stop early. Returns how many records were handed over. A file that breaks
/// off (truncated gzip, invalid JSON) is an error after the records before the break were
/// handed over; the error says how many. Memory is bounded by `limits`: a record larger than
/// `max_record`, or a file decompressing past `max_decompressed`, stops there as `TooLarge`.
pub fn stream_log_file<R: Read>(
    reader: R,
    limits: Limits,
    mut each: impl FnMut(String) -> bool,
) -> Result<u64, SplitError> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let gzip = buffered
        .fill_buf()
        .map_err(|e| SplitError::Json(format!("reading: {e}")))?
        .starts_with(&[0x1f, 0x8b]);
    let mut count = 0u64;
    let since_record = std::rc::Rc::new(std::cell::Cell::new(0u64));
    let seen = since_record.clone();
    let mut each = |record: String| {
        seen.set(0);
        each(record)
    };
    let result = if gzip {
        let decoder = Bounded::new(
            flate2::bufread::MultiGzDecoder::new(buffered),
            limits,
            since_record,
        );
        run(
            BufReader::with_capacity(256 * 1024, decoder),
            &mut each,
            &mut count,
        )
    } else {
        run(
            Bounded::new(buffered, limits, since_record),
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
struct Bounded<R> {
    inner: R,
    limits: Limits,
    total: u64,
    since_record: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R> Bounded<R> {
    fn new(inner: R, limits: Limits, since_record: std::rc::Rc<std::cell::Cell<u64>>) -> Self {
        Bounded {
            inner,
            limits,
            total: 0,
            since_record,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
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
            if key == "Records" && !seen {
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
                got.push(r);
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
