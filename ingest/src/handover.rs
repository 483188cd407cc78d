//! Records handed over from the thread that reads them to the task that publishes them.
//!
//! A reading thread splits an input — a chunk of a streamed file's lines ([`crate::files`]), or
//! an input read whole ([`crate::pipeline::process`]) — into records, normalizes and
//! serializes each where it is read, and hands them over in batches of bounded size
//! ([`Batch`]); the publishing task publishes each record or dead-letters it
//! ([`publish_parts`]) and hands the batch's lists back to be filled again. What crosses is
//! bytes, not activities: freeing an activity's many allocations on another thread than the
//! one that made them cost more than it saved (docs/performance.md). However many records an
//! input holds (a log file of millions of `1`s), what waits between the two is bounded: at
//! most [`MOST_RECORDS`] records and about [`MOST_HELD`] bytes of activities a batch, and a
//! few batches ahead.

use std::ops::Range;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::normalize::normalize_at;
use crate::pipeline::{publish_record, Outcome, Summary};
use crate::publish::{Publisher, Serialized};
use crate::split::SplitError;
use trailguard_common::{Activity, Poison};

/// What a reading thread hands over.
pub(crate) enum Part {
    /// Records (all those of a chunk, or a batch of them, the chunk shared by its batches),
    /// each normalized and serialized into `out`.
    Read {
        chunk: Arc<Vec<u8>>,
        out: Vec<u8>,
        items: Vec<Item>,
    },
    /// Line `line`, of `size` bytes, too large to parse, with what of it was `kept`: all of
    /// it, or nothing.
    Long {
        line: usize,
        size: u64,
        kept: Vec<u8>,
    },
}

/// One record of a batch (or a part of the input that could not be read as one).
#[derive(Debug)]
pub(crate) struct Item {
    /// Where it was: its line, or its place among the input's records.
    pub index: usize,
    /// What became of it, or why it could not be read.
    pub text: Result<Ready, SplitError>,
    /// Where its bytes as read are.
    pub bytes: Span,
}

/// Where a record's bytes as read are: in the chunk it was read from, or — when they are not
/// in it (a record repaired or read again, as a broken document's are) — copied into its
/// batch's `out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Span {
    Chunk(Range<usize>),
    Out(Range<usize>),
}

/// A record as the reading thread hands it over.
#[derive(Debug)]
pub(crate) enum Ready {
    /// Normalized and serialized: where its id, key and bytes (JSON or compact, as
    /// [`Fit::encoding`] says) are in its batch's `out`.
    Serialized {
        id: Range<usize>,
        key: Range<usize>,
        json: Range<usize>,
        event_time: chrono::DateTime<chrono::Utc>,
    },
    /// Normalized, and too large to publish as it is: to be trimmed.
    Activity(Box<Activity>),
    /// Not normalizable, and why.
    Failed(Poison),
}

/// Most records handed over at once: a line may hold a log file or an array of millions (a
/// 16 MiB line of `[1,1,…]` holds eight million), and what each costs while it waits to be
/// published is bounded by handing them over in batches.
pub(crate) const MOST_RECORDS: usize = 16 * 1024;

/// About the most bytes of activities (serialized, or too large and waiting to be trimmed), of
/// copied records and of the reasons records failed one batch holds.
pub(crate) const MOST_HELD: usize = 4 << 20;

/// A batch's lists, emptied by the publishing task and handed back to be filled again.
pub(crate) type Lists = (Vec<Item>, Vec<u8>);

/// How the reading thread serializes activities: in `encoding`
/// (`publish.activity_encoding`), when they take at most `most` bytes (larger ones are the
/// publisher's to trim).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fit {
    pub most: usize,
    pub encoding: trailguard_common::compact::ActivityEncoding,
}

#[cfg(test)]
impl Fit {
    /// JSON, at most `most` bytes.
    pub fn json(most: usize) -> Fit {
        Fit {
            most,
            encoding: Default::default(),
        }
    }
}

/// Serializes a normalized record into `out` when it fits (see [`Fit`]): done on the
/// reading thread, which also drops the activity, so that what crosses to the publishing
/// thread is bytes, not an activity's many allocations. With it, the size of an activity
/// held whole (too large, to be trimmed), 0 for the rest.
fn prepare(
    normalized: Result<Activity, crate::normalize::NormalizeError>,
    out: &mut Vec<u8>,
    fit: Fit,
) -> (Ready, usize) {
    let activity = match normalized {
        Ok(activity) => activity,
        Err(e) => return (Ready::Failed(Poison::from(e)), 0),
    };
    let start = out.len();
    if fit.encoding.write(&activity, out).is_err() || out.len() - start > fit.most {
        let whole = out.len() - start;
        out.truncate(start);
        return (Ready::Activity(Box::new(activity)), whole);
    }
    let json = start..out.len();
    let mut put = |text: &str| {
        let at = out.len();
        out.extend_from_slice(text.as_bytes());
        at..out.len()
    };
    let id = put(&activity.id);
    let key = put(&activity.actor.id);
    let ready = Ready::Serialized {
        id,
        key,
        json,
        event_time: activity.event_time,
    };
    (ready, 0)
}

/// The records of one chunk, gathered on the reading thread and handed over in batches.
pub(crate) struct Batch<'f, S, T> {
    chunk: Arc<Vec<u8>>,
    items: Vec<Item>,
    out: Vec<u8>,
    /// Bytes of activities too large to serialize here, held whole, and of reasons.
    held: usize,
    /// How activities are serialized here (larger ones are trimmed by the publisher).
    fit: Fit,
    spare: &'f mut S,
    send: &'f mut T,
    /// False once `send` was refused: nothing takes the records any more.
    taken: bool,
}

impl<'f, S, T> Batch<'f, S, T>
where
    S: FnMut() -> Lists,
    T: FnMut(Part) -> bool,
{
    /// A batch of records read from `chunk`, its lists taken from `spare`, handed to `send`;
    /// activities that do not [`Fit`] are not serialized here.
    pub fn new(chunk: Arc<Vec<u8>>, fit: Fit, spare: &'f mut S, send: &'f mut T) -> Self {
        let (items, out) = spare();
        Batch {
            chunk,
            items,
            out,
            held: 0,
            fit,
            spare,
            send,
            taken: true,
        }
    }

    /// Whether what is handed over is still taken.
    pub fn taken(&self) -> bool {
        self.taken
    }

    /// Where `bytes` are: in the chunk, or copied into the batch's `out`.
    pub fn place(&mut self, bytes: &[u8]) -> Span {
        let (base, at) = (self.chunk.as_ptr() as usize, bytes.as_ptr() as usize);
        if at >= base && at - base + bytes.len() <= self.chunk.len() {
            return Span::Chunk(at - base..at - base + bytes.len());
        }
        let start = self.out.len();
        self.out.extend_from_slice(bytes);
        Span::Out(start..self.out.len())
    }

    /// Adds the record read at `index` — its text, or why it has none — normalized as the
    /// `ordinal`th record of input `source`, its bytes at `span`; hands the batch over once it
    /// is full. False once nothing takes the records.
    pub fn push(
        &mut self,
        index: usize,
        text: Result<&str, SplitError>,
        span: Span,
        (source, ordinal): (&str, usize),
    ) -> bool {
        if !self.taken {
            return false;
        }
        let text = text.map(|text| {
            let (ready, whole) = prepare(
                normalize_at(text, (source, ordinal)),
                &mut self.out,
                self.fit,
            );
            self.held += whole;
            ready
        });
        // Why a record failed is held too, as long as the record (a reason may quote it).
        self.held += match &text {
            Ok(Ready::Failed(poison)) => poison.reason.len(),
            Err(why) => why.reason().len(),
            Ok(_) => 0,
        };
        self.items.push(Item {
            index,
            text,
            bytes: span,
        });
        if self.items.len() >= MOST_RECORDS || self.out.len() + self.held >= MOST_HELD {
            let (items, out) = (self.spare)();
            let part = Part::Read {
                chunk: Arc::clone(&self.chunk),
                out: std::mem::replace(&mut self.out, out),
                items: std::mem::replace(&mut self.items, items),
            };
            self.held = 0;
            self.taken = (self.send)(part);
        }
        self.taken
    }

    /// Hands over what is left. False when nothing takes the records.
    pub fn finish(self) -> bool {
        let Batch {
            chunk,
            items,
            out,
            send,
            taken,
            ..
        } = self;
        taken && (items.is_empty() || send(Part::Read { chunk, out, items }))
    }
}

/// A list and a buffer handed back by the publishing task, emptied, or new ones.
pub(crate) fn spare_lists(handed_back: &std::sync::mpsc::Receiver<Lists>) -> Lists {
    let (mut items, mut out) = handed_back.try_recv().unwrap_or_default();
    items.clear();
    out.clear();
    (items, out)
}

/// What becomes of record `ready`, given its batch's `out`.
fn outcome(ready: Ready, out: &[u8]) -> Outcome<'_> {
    let text = |range: Range<usize>| std::str::from_utf8(out.get(range)?).ok();
    match ready {
        Ready::Serialized {
            id,
            key,
            json,
            event_time,
        } => match (text(id), text(key), out.get(json)) {
            (Some(id), Some(key), Some(json)) => Outcome::Serialized(Serialized {
                id,
                key,
                json,
                event_time,
            }),
            // `prepare` put them there: never so, and were it, the run fails saying so (as
            // when serializing fails), rather than panicking.
            _ => Outcome::Broken("a serialized activity was not where it was put"),
        },
        Ready::Activity(activity) => Outcome::Activity(*activity),
        Ready::Failed(poison) => Outcome::Failed(poison),
    }
}

/// Where the publishing task hands back what it is done with: each batch's lists, and (for a
/// streamed file, whose chunks' buffers are filled again) each chunk's buffer once its last
/// batch is published.
pub(crate) struct HandBack<'a> {
    pub lists: &'a std::sync::mpsc::Sender<Lists>,
    pub chunks: Option<&'a std::sync::mpsc::Sender<Vec<u8>>>,
}

/// Publishes every record of input `name` handed over on `parts`, or its dead letter, in the
/// order read, handing lists and buffers back; stops early, marking `summary` interrupted,
/// once `shutdown` (when there is one) is cancelled. Returns how many records were read (a
/// part that could not be read as one is not counted; it is counted in `summary.unparsed`).
pub(crate) async fn publish_parts(
    name: &str,
    parts: &mut tokio::sync::mpsc::Receiver<Part>,
    back: HandBack<'_>,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: Option<&CancellationToken>,
) -> u64 {
    let mut records = 0u64;
    while let Some(part) = parts.recv().await {
        match part {
            Part::Read {
                chunk,
                out,
                mut items,
            } => {
                for item in items.drain(..) {
                    let bytes = match &item.bytes {
                        Span::Chunk(range) => chunk.get(range.clone()),
                        Span::Out(range) => out.get(range.clone()),
                    }
                    .unwrap_or_default();
                    let outcome = match item.text {
                        Ok(ready) => {
                            records += 1;
                            outcome(ready, &out)
                        }
                        Err(why) => {
                            summary.unparsed += 1;
                            Outcome::Failed(Poison::from(&why))
                        }
                    };
                    let at = (name, item.index);
                    publish_record(at, outcome, bytes, publisher, summary).await;
                }
                let _ = back.lists.send((items, out));
                // The chunk's last batch hands its buffer back.
                if let Some(chunks) = back.chunks {
                    if let Ok(chunk) = Arc::try_unwrap(chunk) {
                        let _ = chunks.send(chunk);
                    }
                }
            }
            Part::Long { line, size, kept } => {
                too_long(name, (line, size), &kept, publisher, summary).await;
            }
        }
        if shutdown.is_some_and(|s| s.is_cancelled()) {
            summary.interrupted = true;
            break;
        }
    }
    records
}

/// Dead-letters line `line` of `size` bytes, too large to parse, with what of it was `kept`
/// (all of it, or nothing: then its dead letter is a pointer with its size).
async fn too_long(
    name: &str,
    (line, size): (usize, u64),
    kept: &[u8],
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    summary.unparsed += 1;
    let why = SplitError::TooLarge(format!(
        "line {line} of {size} bytes (publish.max_record_bytes)"
    ));
    let poison = Poison::from(&why);
    crate::pipeline::dead_letter_line((name, line), (kept, size), poison, publisher, summary).await;
}
