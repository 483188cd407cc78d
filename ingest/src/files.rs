//! The `files` source: CloudTrail log files, `.json.gz`, NDJSON, whole directory trees and stdin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::handover::{publish_parts, spare_lists, Batch, HandBack, Lists, Part, Span};
use crate::lines::{Piece, Shape};
use crate::pipeline::{dead_letter_input, process, Summary};
use crate::publish::Publisher;
use crate::split::SplitError;
use crate::Error;

pub use crate::publish::STDIN;

/// The `files` source's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Files (and stdin) larger than this are read a chunk of lines at a time, in bounded
    /// memory, instead of whole, when they are NDJSON; other inputs are read whole.
    pub stream_above_bytes: u64,
}

/// Default of `stream_above_bytes`: 32 MiB, as for S3 objects.
pub const STREAM_ABOVE_BYTES: u64 = 32 << 20;

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            stream_above_bytes: STREAM_ABOVE_BYTES,
        }
    }
}

/// About how many bytes of whole lines a streamed NDJSON file hands over at a time.
const CHUNK_BYTES: usize = 4 << 20;

/// How many chunks wait between the reading thread and the publisher at most.
const CHUNKS_AHEAD: usize = 4;

/// One input named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Standard input (`-`, or no path at all).
    Stdin,
    /// A file, or a directory walked recursively.
    Path(PathBuf),
}

impl Input {
    /// `-` is stdin; anything else a path.
    pub fn parse(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(arg))
        }
    }
}

/// True for names a directory walk picks up: `.json`, `.json.gz`, `.jsonl`, `.ndjson`, `.gz`.
pub fn looks_like_log(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    [
        ".json",
        ".json.gz",
        ".jsonl",
        ".jsonl.gz",
        ".ndjson",
        ".ndjson.gz",
        ".gz",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
}

/// Expands inputs: directories into their log files (sorted, recursively), counting the rest
/// as skipped. Named files are always read, whatever their name.
pub fn expand(inputs: &[Input]) -> (Vec<Input>, u64, Vec<(PathBuf, String)>) {
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut unreadable = Vec::new();
    for input in inputs {
        match input {
            Input::Path(path) if path.is_dir() => {
                // Symbolic links are followed (log folders are often assembled from links);
                // a link that leads back up the tree is skipped, counted and logged.
                let walk = walkdir::WalkDir::new(path)
                    .follow_links(true)
                    .sort_by_file_name();
                for entry in walk {
                    match entry {
                        Ok(e) if e.file_type().is_file() => {
                            if looks_like_log(e.path()) {
                                out.push(Input::Path(e.into_path()));
                            } else {
                                skipped += 1;
                            }
                        }
                        Ok(e) if e.file_type().is_dir() => {}
                        Ok(e) => {
                            // A socket, a device, a FIFO: not a log file.
                            tracing::info!(path = %e.path().display(), "not a regular file; skipped");
                            skipped += 1;
                        }
                        Err(err) if err.loop_ancestor().is_some() => {
                            tracing::warn!(path = ?err.path(), "a symbolic link loops back up the tree; skipped");
                            skipped += 1;
                        }
                        Err(err) => {
                            let at = err
                                .path()
                                .map(Path::to_path_buf)
                                .unwrap_or_else(|| path.clone());
                            unreadable.push((at, err.to_string()));
                        }
                    }
                }
            }
            other => out.push(other.clone()),
        }
    }
    (out, skipped, unreadable)
}

/// Reads every input, publishes every record (or its dead letter), waits for every delivery.
pub async fn run(
    inputs: &[Input],
    cfg: &FilesConfig,
    publisher: &mut Publisher,
    progress: bool,
    shutdown: &CancellationToken,
) -> Result<Summary, Error> {
    let (started, before) = (Instant::now(), publisher.counts());
    let inputs = if inputs.is_empty() {
        vec![Input::Stdin]
    } else {
        inputs.to_vec()
    };
    // A path named on the command line that does not exist is the caller's mistake: fail
    // before publishing anything. (Files that cannot be read are dead-lettered.)
    for input in &inputs {
        if let Input::Path(path) = input {
            if !path.exists() {
                return Err(Error::Read {
                    source_name: path.display().to_string(),
                    error: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no such file or directory",
                    ),
                });
            }
        }
    }
    let (inputs, skipped, unreadable) = expand(&inputs);
    let mut summary = Summary {
        inputs_skipped: skipped,
        ..Summary::default()
    };
    for (path, error) in unreadable {
        let name = path.display().to_string();
        dead_letter_input(
            publisher,
            &mut summary,
            &name,
            b"",
            "unreadable",
            format!("cannot read: {error}"),
        )
        .await;
    }
    let bar = progress.then(|| progress_bar(inputs.len() as u64));
    let mut stdin_unparsed = 0;
    for input in &inputs {
        if shutdown.is_cancelled() {
            summary.interrupted = true;
            break;
        }
        if let Some(bar) = &bar {
            let secs = started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "{} records, {:.1} MB, {:.0} records/s",
                summary.records,
                summary.bytes as f64 / 1e6,
                summary.records as f64 / secs
            ));
            bar.set_position(summary.inputs_read + summary.inputs_dead_lettered);
        }
        if let Input::Path(path) = input {
            let size = tokio::fs::metadata(path)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if size > cfg.stream_above_bytes
                && stream_path(path, size, publisher, &mut summary, shutdown).await
                    == Streamed::Done
            {
                continue;
            }
        }
        let read = match input {
            Input::Stdin => {
                match stdin_head(cfg.stream_above_bytes, publisher, &mut summary, shutdown).await {
                    Ok(Head::Streamed(unparsed)) => {
                        stdin_unparsed = unparsed;
                        continue;
                    }
                    Ok(Head::Whole(bytes, cut)) => Ok((STDIN.to_string(), bytes, cut)),
                    Err(e) => Err((STDIN.to_string(), e)),
                }
            }
            Input::Path(path) => read(path, publisher.limits().max_decompressed).await,
        };
        let (name, bytes, cut) = match read {
            Ok(read) => read,
            Err((name, error)) if matches!(input, Input::Path(_)) => {
                dead_letter_input(
                    publisher,
                    &mut summary,
                    &name,
                    b"",
                    "unreadable",
                    format!("cannot read: {error}"),
                )
                .await;
                continue;
            }
            Err((name, error)) => {
                return Err(Error::Read {
                    source_name: name,
                    error,
                })
            }
        };
        crate::pipeline::count_input(publisher, &mut summary, bytes.len() as u64);
        let unparsed = summary.unparsed;
        process(&name, bytes.into(), cut, publisher, &mut summary).await;
        if name == STDIN && summary.unparsed > unparsed {
            stdin_unparsed = summary.unparsed - unparsed;
        }
    }
    if let Some(bar) = &bar {
        bar.set_message("waiting for the broker's acknowledgements");
    }
    let finished = publisher.finish().await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    summary.finish(publisher, before, started);
    finished?;
    if stdin_unparsed > 0 {
        // stdin cannot be read again: say so with a failing exit, after keeping it.
        tracing::info!(summary = %summary, "files finished");
        let cut = if summary.interrupted {
            " (a shutdown cut stdin short: its last line may be one of them)"
        } else {
            ""
        };
        return Err(Error::Source(format!(
            "{stdin_unparsed} part(s) of stdin could not be read as CloudTrail JSON{cut}; they are on the dead-letter topic (source `stdin`)"
        )));
    }
    Ok(summary)
}

/// Whether [`stream_path`] read a file, or left it to be read whole.
#[derive(Debug, PartialEq, Eq)]
enum Streamed {
    Done,
    ReadWhole,
}

/// Splits the chunk of lines `chunk` (its first line `first`) into records and normalizes and
/// serializes each, on the reading thread, handing them to `send` in batches
/// ([`crate::handover::Batch`]), lists and buffers taken from `spare`. `ordinal` counts the
/// records of input `source` so far. Returns false once `send` does (nothing takes them any
/// more).
fn read_chunk(
    (first, chunk): (usize, Vec<u8>),
    (source, ordinal): (&str, &mut usize),
    (limits, fit): (crate::split::Limits, crate::handover::Fit),
    spare: &mut impl FnMut() -> Lists,
    send: &mut impl FnMut(Part) -> bool,
) -> bool {
    let chunk = Arc::new(chunk);
    let mut batch = Batch::new(Arc::clone(&chunk), fit, spare, send);
    let mut taken = true;
    crate::lines::locate(first, &chunk, limits, |record| {
        if taken {
            *ordinal += 1;
            let span = Span::Chunk(record.bytes);
            taken = batch.push(record.index, record.text, span, (source, *ordinal));
        }
    });
    // Only the batches hold the chunk now, so the last one published hands its buffer back.
    drop(chunk);
    taken && batch.finish()
}

/// Reads a large NDJSON file in chunks of lines, gzip undone on the way, on a blocking thread
/// that hands them over a bounded channel, so memory stays flat whatever the file's size. A
/// file of any other shape (a log file, an array over many lines, a first line that is not
/// JSON) is left to be read whole, within the limits. Records before a break (a cut or capped
/// gzip, a failed read) are published and the file is dead-lettered as a pointer saying where
/// it broke; a line too large is dead-lettered as a pointer naming its number and size.
async fn stream_path(
    path: &Path,
    size: u64,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> Streamed {
    let name = path.display().to_string();
    let limits = publisher.limits();
    let file = path.to_path_buf();
    let shape = tokio::task::spawn_blocking(move || {
        let reader = crate::lines::plain(std::fs::File::open(&file)?, limits)?;
        crate::lines::shape(reader, limits)
    })
    .await;
    let shape = match shape {
        Ok(Ok(Shape::Lines)) => Shape::Lines,
        // Anything but NDJSON whose first line reads alone is read whole, as before: a log
        // file (streaming one record at a time reads records near the limits and breaks
        // differently), a first line that is not JSON (whose cost is that line when read
        // whole), and an input that cannot be read (dead-lettered there with its cause).
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => return Streamed::ReadWhole,
    };
    tracing::info!(file = %name, size, ?shape, "streaming a large file");
    crate::pipeline::count_input(publisher, summary, size);
    let file = path.to_path_buf();
    let open: Opener = Box::new(move || {
        std::fs::File::open(&file)
            .map(|f| Box::new(f) as Box<dyn std::io::Read + Send>)
            .map_err(|e| SplitError::Read(format!("opening it again: {e}")))
    });
    stream_lines_of(&name, open, 0, publisher, summary, Some(shutdown)).await;
    Streamed::Done
}

/// Most of a line too large to parse that streamed stdin keeps for its dead letter (at most
/// `publish.max_decompressed_bytes`): beyond it the dead letter says the line's number and
/// size only. A few such lines may wait to be published at once, so this bounds memory.
const KEEP_LONG_ON_STDIN: u64 = 64 << 20;

/// What [`stdin_head`] did with stdin.
enum Head {
    /// Read it all (at most `publish.max_decompressed_bytes`, cut there and why): small enough,
    /// or not NDJSON.
    Whole(Vec<u8>, Option<SplitError>),
    /// Streamed it; how many parts could not be read as records.
    Streamed(u64),
}

/// Reads stdin whole when it is at most `stream_above` bytes, gzip, or not NDJSON; streams it
/// otherwise, as a large file is. Nothing can read stdin again, so a streamed line too large
/// to parse is kept, up to [`KEEP_LONG_ON_STDIN`], for its dead letter (in parts).
async fn stdin_head(
    stream_above: u64,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> std::io::Result<Head> {
    use std::io::Read;
    let limits = publisher.limits();
    // Read on a thread of its own, so that a shutdown ends a wait on a silent pipe.
    let stdin = crate::stdin::Stdin::open(shutdown.clone())?;
    tracing::info!("reading stdin");
    let ended = stdin.clone();
    let reading = stdin.clone();
    let (head, shape) = tokio::task::spawn_blocking(move || {
        let stdin = reading;
        // Sized at once (up to 256 MiB), so reading it never copies it to grow it.
        let wanted = stream_above.saturating_add(1).min(256 << 20);
        let mut head = Vec::with_capacity(usize::try_from(wanted).unwrap_or(256 << 20));
        // At least gzip's two magic bytes, to tell it.
        stdin
            .clone()
            .take(stream_above.saturating_add(1).max(2))
            .read_to_end(&mut head)?;
        if head.len() as u64 <= stream_above {
            return Ok((head, None));
        }
        // gzip on stdin is read whole: where it breaks off, the whole path keeps every byte
        // of it for its dead letter, which streaming could not.
        if crate::split::is_gzip(&head) {
            return Ok((head, Some(Shape::Other)));
        }
        // Judged on stdin as it comes; what is read to judge it is kept, to be read again.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recording = Recording {
            inner: stdin,
            seen: seen.clone(),
        };
        let judged = std::io::Read::chain(&head[..], recording);
        let shape = crate::lines::plain(judged, limits)
            .and_then(|reader| crate::lines::shape(reader, limits))
            .unwrap_or(Shape::Other);
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        head.reserve_exact(seen.len());
        head.extend_from_slice(&seen);
        Ok::<_, std::io::Error>((head, Some(shape)))
    })
    .await
    .map_err(std::io::Error::other)??;
    let interrupted = |summary: &mut Summary| {
        if ended.cut() {
            tracing::warn!("shutdown while stdin was open: what was read of it is published, the rest of the pipe is not read");
            summary.interrupted = true;
        }
    };
    match shape {
        None => {
            interrupted(summary);
            let (head, cut) = cut_at(head, limits.max_decompressed);
            return Ok(Head::Whole(head, cut));
        }
        Some(Shape::Lines) => {}
        Some(_) => {
            // Large, and not NDJSON: read whole, as before, within the limit.
            let most = limits.max_decompressed;
            let reading = stdin.clone();
            let whole = tokio::task::spawn_blocking(move || {
                let (all, cut) = read_at_most(reading, head, most)?;
                Ok(Head::Whole(all, cut))
            })
            .await
            .map_err(std::io::Error::other)?;
            interrupted(summary);
            return whole;
        }
    }
    tracing::info!(read_so_far = head.len(), "streaming stdin");
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = read.clone();
    let open: Opener = Box::new(move || {
        Ok(Box::new(Counted {
            inner: HeadFirst {
                head,
                at: 0,
                rest: stdin,
            },
            count: counted,
        }))
    });
    let keep_long = limits.max_decompressed.min(KEEP_LONG_ON_STDIN);
    // stdin cannot be read again: every part read from it is published, and its reading ends
    // at a shutdown by itself (crate::stdin).
    let unparsed = stream_lines_of(STDIN, open, keep_long, publisher, summary, None).await;
    interrupted(summary);
    let bytes = read.load(std::sync::atomic::Ordering::Relaxed);
    crate::pipeline::count_input(publisher, summary, bytes);
    Ok(Head::Streamed(unparsed))
}

/// `head`, then `rest`; the head's memory is given back once it is read.
struct HeadFirst<R> {
    head: Vec<u8>,
    at: usize,
    rest: R,
}

impl<R: std::io::Read> std::io::Read for HeadFirst<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.head.len() {
            let n = buf.len().min(self.head.len() - self.at);
            buf[..n].copy_from_slice(&self.head[self.at..self.at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Ok(n);
        }
        self.rest.read(buf)
    }
}

/// A reader that keeps a copy of what it hands out.
struct Recording<R> {
    inner: R,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<R: std::io::Read> std::io::Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// A reader that counts the bytes it hands out.
struct Counted<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens a streamed input, on the reading thread.
type Opener = Box<dyn FnOnce() -> Result<Box<dyn std::io::Read + Send>, SplitError> + Send>;

/// Publishes the NDJSON records of the input `open` gives, read, split, normalized and
/// serialized on a blocking thread and handed over a bounded channel, chunk by chunk, to be published here;
/// lines longer than `max_record` are kept up to `keep_long` bytes for their dead letters.
/// Records before a break are published and the input dead-lettered with where it broke.
/// Publishing stops at the part being published once `stop` (a file's shutdown) is
/// cancelled; without one (stdin, which ends at a shutdown by itself), every part read is
/// published. Returns how many parts of it could not be read as records.
async fn stream_lines_of(
    name: &str,
    open: Opener,
    keep_long: u64,
    publisher: &mut Publisher,
    summary: &mut Summary,
    stop: Option<&CancellationToken>,
) -> u64 {
    let limits = publisher.limits();
    let unparsed_before = summary.unparsed;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Part>(CHUNKS_AHEAD);
    // Chunks' buffers, and the lists of their records, go back to the reading thread once
    // published.
    let (spares_tx, spares_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let (lists_tx, lists_rx) = std::sync::mpsc::channel::<Lists>();
    let source = name.to_string();
    let fit = publisher.fit();
    let reading = tokio::task::spawn_blocking(move || -> Result<(), SplitError> {
        let opened = open()?;
        // Stops reading once nothing takes what it reads (a shutdown), even inside a line
        // too long to keep, which hands nothing over until it ends.
        let opened = Stoppable {
            inner: opened,
            taken_by: tx.clone(),
        };
        let reader =
            crate::lines::plain(opened, limits).map_err(|e| SplitError::Read(e.to_string()))?;
        // Each record's place among the input's records: it goes into the id of a record
        // that has no id of its own, as when the input is read whole.
        let mut ordinal = 0usize;
        crate::lines::stream_lines(
            reader,
            limits,
            CHUNK_BYTES,
            |piece| match piece {
                Piece::Lines { first, bytes } => read_chunk(
                    (first, bytes),
                    (&source, &mut ordinal),
                    (limits, fit),
                    &mut || spare_lists(&lists_rx),
                    &mut |part| tx.blocking_send(part).is_ok(),
                ),
                Piece::Long { line, bytes } => {
                    ordinal += 1;
                    let size = bytes.len() as u64;
                    let kept = bytes;
                    tx.blocking_send(Part::Long { line, size, kept }).is_ok()
                }
                Piece::TooLong { line, size } => {
                    ordinal += 1;
                    let kept = Vec::new();
                    tx.blocking_send(Part::Long { line, size, kept }).is_ok()
                }
            },
            || spares_rx.try_recv().ok(),
            keep_long,
        )
    });
    let back = HandBack {
        lists: &lists_tx,
        chunks: Some(&spares_tx),
    };
    let records = publish_parts(name, &mut rx, back, publisher, summary, stop).await;
    drop(rx);
    let broke = match reading.await {
        Ok(Ok(())) => None,
        Ok(Err(err)) => Some(err),
        Err(join) => Some(SplitError::Json(format!("reading failed: {join}"))),
    };
    match broke {
        _ if summary.interrupted => {}
        None => publisher
            .metrics()
            .inputs
            .with_label_values(&[publisher.source_kind(), "ok"])
            .inc(),
        Some(err) => {
            // A pointer: the file names itself, and what came before the break is published.
            summary.unparsed += 1;
            let reason = format!("{err} ({records} records before it were read)");
            dead_letter_input(publisher, summary, name, b"", err.kind(), reason).await;
        }
    }
    summary.unparsed - unparsed_before
}

/// A reader that fails once the channel it feeds has no receiver.
struct Stoppable<R> {
    inner: R,
    taken_by: tokio::sync::mpsc::Sender<Part>,
}

impl<R: std::io::Read> std::io::Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.taken_by.is_closed() {
            return Err(std::io::Error::other("stopped: nothing takes the records"));
        }
        self.inner.read(buf)
    }
}

/// The progress display on stderr: files done of the total, and a message with records, bytes
/// and the record rate.
fn progress_bar(files: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(files);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} files  {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Reads the file at `path` whole, at most `most` bytes of it (`publish.max_decompressed_bytes`:
/// no input is held larger): a larger file is cut there, and the error saying so comes with
/// what was read.
async fn read(
    path: &Path,
    most: u64,
) -> Result<(String, Vec<u8>, Option<SplitError>), (String, std::io::Error)> {
    let name = path.display().to_string();
    let file = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(file)?;
        // Sized at once, so reading never copies it to grow it.
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bytes = Vec::with_capacity(usize::try_from(size.min(most)).unwrap_or(0));
        read_at_most(file, bytes, most)
    })
    .await
    .map_err(std::io::Error::other);
    match read {
        Ok(Ok((bytes, cut))) => Ok((name, bytes, cut)),
        Ok(Err(e)) | Err(e) => Err((name, e)),
    }
}

/// Reads `reader` to its end after what `bytes` holds already, keeping at most `most` bytes in
/// all; when there was more, the error saying the input was cut there.
fn read_at_most(
    reader: impl std::io::Read,
    mut bytes: Vec<u8>,
    most: u64,
) -> std::io::Result<(Vec<u8>, Option<SplitError>)> {
    use std::io::Read;
    let room = most.saturating_sub(bytes.len() as u64);
    reader
        .take(room.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(cut_at(bytes, most))
}

/// `bytes`, cut at `most` when longer, with the error saying so.
fn cut_at(mut bytes: Vec<u8>, most: u64) -> (Vec<u8>, Option<SplitError>) {
    if bytes.len() as u64 <= most {
        return (bytes, None);
    }
    bytes.truncate(usize::try_from(most).unwrap_or(usize::MAX));
    let why = format!("more than {most} bytes (publish.max_decompressed_bytes): read up to there");
    (bytes, Some(SplitError::TooLarge(why)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{Ready, MOST_HELD, MOST_RECORDS};

    /// Reads `chunk` as the reading thread does: the parts it hands over, and the ordinal.
    fn parts_of(chunk: &[u8]) -> (Vec<Part>, usize) {
        let limits = crate::split::Limits {
            max_decompressed: 1 << 30,
            max_record: 1 << 20,
        };
        let (mut parts, mut ordinal) = (Vec::new(), 0);
        let taken = read_chunk(
            (1, chunk.to_vec()),
            ("f", &mut ordinal),
            (limits, crate::handover::Fit::json(900_000)),
            &mut Default::default,
            &mut |part| {
                parts.push(part);
                true
            },
        );
        assert!(taken);
        (parts, ordinal)
    }

    /// Records of one part: how many, and the bytes of activities it holds.
    fn sizes(part: &Part) -> (usize, usize) {
        match part {
            Part::Read { items, out, .. } => (items.len(), out.len()),
            Part::Long { .. } => (0, 0),
        }
    }

    /// An input read whole is read up to the limit and no further, what came before kept, and
    /// the cut said.
    #[test]
    fn an_input_is_read_up_to_the_limit() -> std::io::Result<()> {
        let ten = b"0123456789";
        let (bytes, cut) = read_at_most(&ten[..], Vec::new(), 10)?;
        assert_eq!((bytes.as_slice(), cut), (&ten[..], None));
        let (bytes, cut) = read_at_most(&ten[..], Vec::new(), 4)?;
        assert_eq!(bytes, b"0123");
        assert!(matches!(cut, Some(SplitError::TooLarge(_))), "{cut:?}");
        // After what was read already (stdin's head), counted in.
        let (bytes, cut) = read_at_most(&ten[..], b"ab".to_vec(), 5)?;
        assert_eq!(bytes, b"ab012");
        assert!(cut.is_some());
        let (bytes, cut) = cut_at(b"abcdef".to_vec(), 3);
        assert_eq!(bytes, b"abc");
        assert!(cut.is_some());
        Ok(())
    }

    /// Lines holding arrays of millions of records are handed over in batches of a bounded
    /// size, not as one list per chunk: what waits to be published stays bounded.
    #[test]
    fn a_chunk_of_many_records_is_handed_over_in_batches() {
        let line = format!("[{}1]", "1,".repeat(19_999));
        let chunk = format!("{line}\n{line}\n{line}\n");
        let (parts, ordinal) = parts_of(chunk.as_bytes());
        let counts: Vec<usize> = parts.iter().map(|p| sizes(p).0).collect();
        assert_eq!((ordinal, counts.iter().sum::<usize>()), (60_000, 60_000));
        assert!(counts.len() >= 4, "{counts:?}");
        assert!(counts.iter().all(|n| *n <= MOST_RECORDS), "{counts:?}");
        // Each record failed alone (an array's element is not a CloudTrail record), in order.
        let mut lines = Vec::new();
        for part in &parts {
            if let Part::Read { items, .. } = part {
                assert!(items.iter().all(|i| matches!(i.text, Ok(Ready::Failed(_)))));
                lines.extend(items.iter().map(|i| i.index));
            }
        }
        assert!(lines.windows(2).all(|w| w[0] <= w[1]) && lines.last() == Some(&3));
    }

    /// Activities serialized for a batch are bounded in bytes too, and every part shares the
    /// chunk its records' bytes are in.
    #[test]
    fn a_batch_holds_about_a_chunk_of_activities() {
        let record = |i: usize| {
            format!(
                r#"{{"eventVersion":"1.08","eventTime":"2024-01-01T00:00:00Z","eventSource":"iam.amazonaws.com","eventName":"ListUsers","eventID":"{i}","userIdentity":{{"type":"IAMUser","arn":"arn:aws:iam::111122223333:user/u"}},"requestParameters":{{"pad":"{}"}}}}"#,
                "x".repeat(2_000)
            )
        };
        let chunk: String = (0..5_000).map(|i| record(i) + "\n").collect();
        let (parts, ordinal) = parts_of(chunk.as_bytes());
        assert_eq!(ordinal, 5_000);
        let held: Vec<(usize, usize)> = parts.iter().map(sizes).collect();
        assert!(held.len() >= 2, "{held:?}");
        assert!(
            held.iter().all(|(_, out)| *out < MOST_HELD + 900_000),
            "{held:?}"
        );
        assert_eq!(held.iter().map(|(n, _)| n).sum::<usize>(), 5_000);
        for part in &parts {
            if let Part::Read {
                chunk: shared,
                items,
                out,
            } = part
            {
                assert_eq!(shared.len(), chunk.len());
                for item in items {
                    let Ok(Ready::Serialized { json, .. }) = &item.text else {
                        panic!("{:?}", item.text);
                    };
                    let activity: serde_json::Value =
                        serde_json::from_slice(&out[json.clone()]).expect("an activity's JSON");
                    let Span::Chunk(bytes) = &item.bytes else {
                        panic!("{:?}", item.bytes);
                    };
                    let original = &shared[bytes.clone()];
                    assert!(original.starts_with(b"{\"eventVersion\""));
                    assert_eq!(activity["event_name"], "ListUsers");
                }
            }
        }
    }

    #[test]
    fn log_names() {
        for name in ["a.json", "b.json.gz", "c.JSONL", "d.ndjson", "e.gz"] {
            assert!(looks_like_log(Path::new(name)), "{name}");
        }
        for name in ["SQSMessageBody", "x.yaml", "README.md"] {
            assert!(!looks_like_log(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn expand_walks_and_skips() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub/b.json"), "{}")?;
        std::fs::write(dir.path().join("a.json.gz"), "")?;
        std::fs::write(dir.path().join("notes.txt"), "")?;
        let (inputs, skipped, unreadable) = expand(&[Input::Path(dir.path().to_path_buf())]);
        assert_eq!(inputs.len(), 2);
        assert_eq!(skipped, 1);
        assert!(unreadable.is_empty());
        Ok(())
    }

    #[test]
    fn symbolic_links_are_followed_and_loops_counted() -> std::io::Result<()> {
        let logs = tempfile::tempdir()?;
        std::fs::write(logs.path().join("real.json"), "{}")?;
        let tree = tempfile::tempdir()?;
        std::fs::create_dir(tree.path().join("day"))?;
        std::os::unix::fs::symlink(
            logs.path().join("real.json"),
            tree.path().join("day/a.json"),
        )?;
        std::os::unix::fs::symlink(logs.path(), tree.path().join("linked"))?;
        // A loop, and a link to nothing.
        std::os::unix::fs::symlink(tree.path(), tree.path().join("day/up"))?;
        std::os::unix::fs::symlink(
            tree.path().join("gone.json"),
            tree.path().join("broken.json"),
        )?;
        let (inputs, skipped, unreadable) = expand(&[Input::Path(tree.path().to_path_buf())]);
        assert_eq!(
            inputs.len(),
            2,
            "the linked file and the file in the linked folder"
        );
        assert_eq!(skipped, 1, "the loop");
        assert_eq!(
            unreadable.len(),
            1,
            "the broken link is dead-lettered by name"
        );
        Ok(())
    }
}
