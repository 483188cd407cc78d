//! The record pipeline every source runs its inputs through: split an input into records,
//! normalize each, publish it or dead-letter it with its reason, and count what happened in a
//! [`Summary`]. A source reads (files, S3 objects, SQS-named objects, LookupEvents pages); this
//! module does the rest, the same for all, and the [`Publisher`] labels what it counts with the
//! source's name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::handover::{publish_parts, spare_lists, Batch, HandBack, Lists, Part};
use crate::normalize::normalize_at;
use crate::publish::{Counts, DeadLetter, Origin, Publisher, Serialized};
use crate::split::{decompress, is_gzip, split_each, Limits, RawItem, SplitError};
use crate::Error;
use trailguard_common::Activity;
use trailguard_common::Poison;

/// What a source's run did; logged, and printed at the end of a `files` run.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// Inputs read (files and stdin).
    pub inputs_read: u64,
    /// Files found in directory walks that are not named like log files, left alone.
    pub inputs_skipped: u64,
    /// Inputs dead-lettered whole (unreadable, bad gzip, invalid JSON document).
    pub inputs_dead_lettered: u64,
    /// Records found in the inputs.
    pub records: u64,
    /// Activities durably published.
    pub published: u64,
    /// Dead letters durably published (records and whole inputs).
    pub dead_lettered: u64,
    /// Activities dropped as repeats of one already published.
    pub duplicates: u64,
    /// API calls made (LookupEvents pages).
    pub api_calls: u64,
    /// API calls throttled and retried.
    pub throttles: u64,
    /// Failures that skipped part of a source (an account or a setting that could not be
    /// read); logged with their cause.
    pub errors: u64,
    /// Dead letters by error kind.
    pub dead_letter_kinds: BTreeMap<String, u64>,
    /// Bytes read, as stored.
    pub bytes: u64,
    /// Log files found after later files of their stream were read (each read once).
    pub late_inputs: u64,
    /// Parts of inputs that could not be split into records (bad lines, records that are not
    /// UTF-8 or too large, inputs that broke off); each was dead-lettered.
    pub unparsed: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// True when a shutdown signal stopped the run before every input was read.
    pub interrupted: bool,
}

impl Summary {
    /// Records what the publisher did since `before`, and the wall time since `started`.
    pub fn finish(&mut self, publisher: &Publisher, before: Counts, started: Instant) {
        let now = publisher.counts();
        self.published = now.published - before.published;
        self.dead_lettered = now.dead_lettered - before.dead_lettered;
        self.duplicates = now.duplicates - before.duplicates;
        self.seconds = started.elapsed().as_secs_f64();
    }

    /// The run's result: this summary, or — when parts of the source failed (`failed` names
    /// them) — an error naming them all, after logging what the rest did.
    pub fn or_failures(self, failed: Vec<String>, what: &str) -> Result<Summary, Error> {
        if failed.is_empty() {
            return Ok(self);
        }
        tracing::info!(summary = %self, "{what} finished with errors");
        Err(Error::Source(failed.join("; ")))
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ingest files: {} inputs read ({} skipped, {} dead-lettered whole), {} records, {:.1} MB in {:.2}s",
            self.inputs_read,
            self.inputs_skipped,
            self.inputs_dead_lettered,
            self.records,
            self.bytes as f64 / 1e6,
            self.seconds
        )?;
        write!(
            f,
            "  published {} activities, dead-lettered {}, dropped {} repeats",
            self.published, self.dead_lettered, self.duplicates
        )?;
        for (kind, n) in &self.dead_letter_kinds {
            write!(f, "\n    {kind}: {n}")?;
        }
        if self.late_inputs > 0 {
            write!(
                f,
                "\n  {} files delivered out of order, read",
                self.late_inputs
            )?;
        }
        if self.errors > 0 {
            write!(f, "\n  {} errors (see the log)", self.errors)?;
        }
        if self.interrupted {
            write!(f, "\n  INTERRUPTED: not every input was read")?;
        }
        Ok(())
    }
}

/// Splits and normalizes one input's bytes, publishing each record or its dead letter. Nothing
/// fails whole: a bad line or record is dead-lettered alone, and an input that breaks off (a
/// truncated gzip, a decompression bomb cut at the limits) gives the records before the break
/// and one dead letter of the input, saying where it broke. `cut` says why the input was cut
/// short where it was read, if it was (larger than the limit): it is then an input that broke
/// off, dead-lettered as a pointer naming it.
///
/// The input is decompressed, split, normalized and serialized on a blocking thread that
/// hands its records over in bounded batches ([`crate::handover`]) while this task publishes
/// them: what an input costs beyond its bytes does not grow with how many records it holds.
pub async fn process(
    name: &str,
    bytes: bytes::Bytes,
    cut: Option<SplitError>,
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    let (limits, fit) = (publisher.limits(), publisher.fit());
    // A gzip input that breaks off is dead-lettered as it was stored (unless it was cut short
    // when read: then it names itself); any other is read in place.
    let stored = (is_gzip(&bytes) && cut.is_none()).then(|| bytes.clone());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Part>(PARTS_AHEAD);
    let (lists_tx, lists_rx) = std::sync::mpsc::channel::<Lists>();
    let source = name.to_string();
    let reading = tokio::task::spawn_blocking(move || {
        read_whole(
            (bytes, cut),
            (&source, limits, fit),
            &mut || spare_lists(&lists_rx),
            &mut |part| tx.blocking_send(part).is_ok(),
        )
    });
    let back = HandBack {
        lists: &lists_tx,
        chunks: None,
    };
    let records = publish_parts(name, &mut rx, back, publisher, summary, None).await;
    drop(rx);
    let broke = match reading.await {
        Ok(broke) => broke,
        // A defect of ours, as visible as it was when the input was read on this task.
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Some(SplitError::Read(format!("reading stopped: {join}"))),
    };
    match broke {
        None => publisher
            .metrics()
            .inputs
            .with_label_values(&[publisher.source_kind(), "ok"])
            .inc(),
        Some(err) => {
            summary.unparsed += 1;
            let reason = format!("{err} ({records} records before it were read)");
            let stored = stored.as_deref().unwrap_or_default();
            dead_letter_input(publisher, summary, name, stored, err.kind(), reason).await;
        }
    }
}

/// How many batches of an input read whole wait to be published at most.
const PARTS_AHEAD: usize = 4;

/// Reads input `bytes` whole, for [`process`]: gzip undone, split into records, each
/// normalized as a record of input `source` and handed to `send` in batches, lists taken from
/// `spare`. Returns why the input broke off, if it did — `cut` short when read, or
/// decompressing stopped early: the part of the document cut there, which would only repeat
/// it, is then not handed over.
fn read_whole(
    (bytes, cut): (bytes::Bytes, Option<SplitError>),
    (source, limits, fit): (&str, Limits, crate::handover::Fit),
    spare: &mut impl FnMut() -> Lists,
    send: &mut impl FnMut(Part) -> bool,
) -> Option<SplitError> {
    let (plain, broke) = if is_gzip(&bytes) {
        let plain = decompress(&bytes, limits);
        (plain.bytes.into_owned(), cut.or(plain.broke))
    } else {
        (Vec::from(bytes), cut)
    };
    let chunk = Arc::new(plain);
    let mut batch = Batch::new(Arc::clone(&chunk), fit, spare, send);
    let mut ordinal = 0;
    let mut hand_over = |item: RawItem<'_>, batch: &mut Batch<'_, _, _>| {
        ordinal += 1;
        if batch.taken() {
            let span = batch.place(&item.bytes);
            let text = item.text.as_deref().map_err(Clone::clone);
            batch.push(item.index, text, span, (source, ordinal));
        }
    };
    // One record is held back: when the input broke off, the document's own error is the
    // cut, which the input's dead letter says.
    let mut last = None;
    split_each(&chunk, limits, &mut |item| {
        if let Some(before) = last.replace(item) {
            hand_over(before, &mut batch);
        }
    });
    if let Some(last) = last {
        if broke.is_none() || last.text.is_ok() {
            hand_over(last, &mut batch);
        }
    }
    batch.finish();
    broke
}

/// Normalizes and publishes one record (`text`, or why it has none), dead-lettering it with
/// its original `bytes` when it cannot be normalized. `index` is where it was (record number or
/// line, for people); `ordinal` its place among the input's records (unique, for its id).
pub async fn process_record(
    name: &str,
    (index, ordinal): (usize, usize),
    text: Result<&str, Poison>,
    bytes: &[u8],
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    // The ordinal, not the index: records of one NDJSON line share its line number.
    let outcome = match text.and_then(|t| normalize_at(t, (name, ordinal)).map_err(Poison::from)) {
        Ok(activity) => Outcome::Activity(activity),
        Err(poison) => Outcome::Failed(poison),
    };
    publish_record((name, index), outcome, bytes, publisher, summary).await;
}

/// What became of a record read: an activity, one already serialized, or why it has none.
// Moved once, from where the record was read to where it is published: boxing the activity
// would cost an allocation a record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Normalized.
    Activity(Activity),
    /// Normalized and serialized where it was read.
    Serialized(Serialized<'a>),
    /// Not readable or not normalizable, and why.
    Failed(Poison),
    /// Lost to a defect of ours, named: the run fails with it, as when a publish fails.
    Broken(&'static str),
}

/// Publishes one record read at `index` in `name`: its activity, normalized from its
/// original `bytes` (the normalizing may be done elsewhere, as [`process_record`] does it) —
/// or, when it has none, its dead letter with its `bytes` and why.
pub async fn publish_record(
    (name, index): (&str, usize),
    outcome: Outcome<'_>,
    bytes: &[u8],
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    count_record(publisher, summary);
    let origin = Origin {
        source: name,
        index,
    };
    match outcome {
        Outcome::Activity(activity) => publisher.activity(activity, origin, bytes).await,
        Outcome::Serialized(activity) => publisher.serialized(activity, origin, bytes).await,
        Outcome::Broken(why) => publisher.fail(why.to_string()),
        Outcome::Failed(poison) => {
            let size = bytes.len() as u64;
            dead_letter_record((name, index), poison, (bytes, size), publisher, summary).await
        }
    }
}

/// Counts and dead-letters a record (an NDJSON line) of `size` bytes of which `kept` was
/// kept: all of it, or nothing — a line read through without being held, whose dead letter is
/// then a pointer naming `name` and `index`, with the size.
pub async fn dead_letter_line(
    at: (&str, usize),
    (kept, size): (&[u8], u64),
    poison: Poison,
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    count_record(publisher, summary);
    dead_letter_record(at, poison, (kept, size), publisher, summary).await;
}

/// Counts a record read.
fn count_record(publisher: &Publisher, summary: &mut Summary) {
    summary.records += 1;
    publisher
        .metrics()
        .records_read
        .with_label_values(&[publisher.source_kind()])
        .inc();
}

/// Counts and dead-letters one record of `size` bytes, of which `kept` is what was kept.
async fn dead_letter_record(
    (name, index): (&str, usize),
    poison: Poison,
    (kept, size): (&[u8], u64),
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    *summary
        .dead_letter_kinds
        .entry(poison.kind.to_string())
        .or_default() += 1;
    let letter = DeadLetter {
        source: name,
        index,
        kind: poison.kind,
        reason: poison.reason,
    };
    publisher.dead_letter_of(kept, size, letter).await;
}

/// Counts an input read, of `bytes` bytes as stored.
pub fn count_input(publisher: &Publisher, summary: &mut Summary, bytes: u64) {
    summary.inputs_read += 1;
    summary.bytes += bytes;
    publisher
        .metrics()
        .bytes_read
        .with_label_values(&[publisher.source_kind()])
        .inc_by(bytes);
}

/// Dead-letters a whole input (unreadable, bad gzip, not JSON), counting it in `summary`.
pub async fn dead_letter_input(
    publisher: &mut Publisher,
    summary: &mut Summary,
    name: &str,
    bytes: &[u8],
    kind: &'static str,
    reason: String,
) {
    summary.inputs_dead_lettered += 1;
    *summary
        .dead_letter_kinds
        .entry(kind.to_string())
        .or_default() += 1;
    publisher
        .metrics()
        .inputs
        .with_label_values(&[publisher.source_kind(), "dead_lettered"])
        .inc();
    let letter = DeadLetter {
        source: name,
        index: 0,
        kind,
        reason,
    };
    publisher.dead_letter(bytes, letter).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{Span, MOST_RECORDS};

    /// A publisher whose producer points at nothing: records wait in its queue, never sent,
    /// which is all `process` needs to count what it did.
    fn publisher() -> Publisher {
        let mut cfg = crate::IngestConfig::default();
        cfg.kafka.brokers = "127.0.0.1:9".into();
        let producer = trailguard_common::kafka::producer(&cfg.kafka, "test", 5)
            .expect("a producer needs no broker to be made");
        let metrics =
            crate::publish::Metrics::new(&prometheus::Registry::new()).expect("metrics register");
        Publisher::new(producer, &cfg, "files", metrics)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(bytes);
        enc.finish().unwrap_or_default()
    }

    /// Reads `input` whole as `process` does: the parts handed over, and why it broke off.
    fn parts_of(input: Vec<u8>) -> (Vec<Part>, Option<SplitError>) {
        let mut parts = Vec::new();
        let broke = read_whole(
            (input.into(), None),
            ("f", Limits::default(), crate::handover::Fit::json(900_000)),
            &mut Default::default,
            &mut |part| {
                parts.push(part);
                true
            },
        );
        (parts, broke)
    }

    /// The items of `parts`, with their batch's bytes: (index, read or not, bytes).
    fn items_of(parts: &[Part]) -> Vec<(usize, bool, Vec<u8>)> {
        let mut all = Vec::new();
        for part in parts {
            let Part::Read { chunk, out, items } = part else {
                continue;
            };
            for item in items {
                let bytes = match &item.bytes {
                    Span::Chunk(range) => &chunk[range.clone()],
                    Span::Out(range) => &out[range.clone()],
                };
                all.push((item.index, item.text.is_ok(), bytes.to_vec()));
            }
        }
        all
    }

    /// An input read whole holding many records is handed over in batches of a bounded size,
    /// plain or gzip, every record in order.
    #[test]
    fn an_input_of_many_records_is_handed_over_in_batches() {
        let doc = format!(r#"{{"Records":[{}1]}}"#, "1,".repeat(99_999));
        for input in [doc.clone().into_bytes(), gzip(doc.as_bytes())] {
            let (parts, broke) = parts_of(input);
            assert!(broke.is_none(), "{broke:?}");
            let sizes: Vec<usize> = parts
                .iter()
                .map(|part| match part {
                    Part::Read { items, .. } => items.len(),
                    Part::Long { .. } => 0,
                })
                .collect();
            assert!(sizes.len() >= 7, "{sizes:?}");
            assert!(sizes.iter().all(|n| *n <= MOST_RECORDS), "{sizes:?}");
            let items = items_of(&parts);
            assert_eq!(items.len(), 100_000);
            assert!(items
                .iter()
                .zip(1..)
                .all(|((index, read, bytes), i)| *index == i && *read && bytes == b"1"));
        }
    }

    /// An input cut short where it was read (larger than the limit) broke off there: the
    /// records before the cut are handed over, not the document's own error at it.
    #[test]
    fn an_input_cut_when_read_is_one_that_broke_off() {
        let doc = br#"{"Records":[{"eventName":"A"}, {"eventName":"B"}, {"ev"#;
        let mut parts = Vec::new();
        let cut = SplitError::TooLarge("more than 47 bytes".into());
        let broke = read_whole(
            (doc.to_vec().into(), Some(cut.clone())),
            ("f", Limits::default(), crate::handover::Fit::json(900_000)),
            &mut Default::default,
            &mut |part| {
                parts.push(part);
                true
            },
        );
        assert_eq!(broke, Some(cut));
        let items = items_of(&parts);
        let expected = vec![
            (1, true, br#"{"eventName":"A"}"#.to_vec()),
            (2, true, br#"{"eventName":"B"}"#.to_vec()),
        ];
        assert_eq!(items, expected);
    }

    /// A document cut half-way: its records before the break (read again, so their bytes are
    /// copied into their batch), then the break carrying the whole input — unless it is a
    /// gzip that broke off, whose dead letter of the input says it.
    #[test]
    fn a_broken_document_is_handed_over_with_its_bytes() {
        let doc = br#"{"Records":[{"eventName":"A"}, {"eventName":"B"}, {"ev"#;
        let (parts, broke) = parts_of(doc.to_vec());
        assert!(broke.is_none());
        let items = items_of(&parts);
        let expected = vec![
            (1, true, br#"{"eventName":"A"}"#.to_vec()),
            (2, true, br#"{"eventName":"B"}"#.to_vec()),
            (3, false, doc.to_vec()),
        ];
        assert_eq!(items, expected);

        let records: Vec<String> = (0..2_000)
            .map(|i| format!(r#"{{"eventName":"E{i}"}}"#))
            .collect();
        let packed = gzip(format!(r#"{{"Records":[{}]}}"#, records.join(",")).as_bytes());
        let (parts, broke) = parts_of(packed[..packed.len() / 2].to_vec());
        assert!(matches!(broke, Some(SplitError::Gzip(_))), "{broke:?}");
        let items = items_of(&parts);
        assert!(items.len() > 10 && items.len() < 2_000, "{}", items.len());
        assert!(items.iter().all(|(_, read, _)| *read));
    }

    #[tokio::test]
    async fn an_input_that_breaks_off_is_counted_once() {
        let mut publisher = publisher();
        let mut summary = Summary::default();
        let records = (0..200)
            .map(|i| format!(r#"{{"eventID":"{i}","eventName":"ListUsers"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let packed = gzip(format!(r#"{{"Records":[{records}]}}"#).as_bytes());
        let cut = &packed[..packed.len() / 2];
        let cut = bytes::Bytes::copy_from_slice(cut);
        process("cut.json.gz", cut, None, &mut publisher, &mut summary).await;
        let whole = bytes::Bytes::from(packed);
        process("whole.json.gz", whole, None, &mut publisher, &mut summary).await;
        let inputs = |result: &str| {
            publisher
                .metrics()
                .inputs
                .with_label_values(&["files", result])
                .get()
        };
        assert_eq!((inputs("dead_lettered"), inputs("ok")), (1, 1));
        assert_eq!(summary.inputs_dead_lettered, 1);
    }
}
