//! The `files` source: CloudTrail log files, `.json.gz`, NDJSON, whole directory trees and stdin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::normalize::normalize_at;
use crate::publish::{Counts, DeadLetter, Origin, Publisher};
use crate::split::{decompress, split};
use crate::Error;

/// The name stdin goes by in dead letters and summaries.
pub const STDIN: &str = "stdin";

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

/// What a `files` run did; printed at the end.
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
        let (name, bytes) = match read(input).await {
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
        summary.inputs_read += 1;
        summary.bytes += bytes.len() as u64;
        publisher
            .metrics()
            .bytes_read
            .with_label_values(&[publisher.source_kind()])
            .inc_by(bytes.len() as u64);
        let unparsed = summary.unparsed;
        process(&name, &bytes, publisher, &mut summary).await;
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
        return Err(Error::Source(format!(
            "{stdin_unparsed} part(s) of stdin could not be read as CloudTrail JSON; they are on the dead-letter topic (source `stdin`)"
        )));
    }
    Ok(summary)
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

async fn read(input: &Input) -> Result<(String, Vec<u8>), (String, std::io::Error)> {
    match input {
        Input::Stdin => {
            let mut bytes = Vec::new();
            tokio::io::stdin()
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| (STDIN.to_string(), e))?;
            Ok((STDIN.into(), bytes))
        }
        Input::Path(path) => {
            let name = path.display().to_string();
            match tokio::fs::read(path).await {
                Ok(bytes) => Ok((name, bytes)),
                Err(e) => Err((name, e)),
            }
        }
    }
}

/// Splits and normalizes one input's bytes, publishing each record or its dead letter. Nothing
/// fails whole: a bad line or record is dead-lettered alone, and an input that breaks off (a
/// truncated gzip, a decompression bomb cut at the limits) gives the records before the break
/// and one dead letter of the input, saying where it broke.
pub async fn process(name: &str, bytes: &[u8], publisher: &mut Publisher, summary: &mut Summary) {
    let limits = publisher.limits();
    let plain = decompress(bytes, limits);
    let mut items = split(&plain.bytes, limits);
    if plain.broke.is_some() && items.last().is_some_and(|i| i.text.is_err()) {
        // The document's own error is the cut: one dead letter, of the input, says it.
        items.pop();
    }
    let result = if plain.broke.is_some() {
        "dead_lettered"
    } else {
        "ok"
    };
    publisher
        .metrics()
        .inputs
        .with_label_values(&[publisher.source_kind(), result])
        .inc();
    let records = items.iter().filter(|i| i.text.is_ok()).count();
    for (ordinal, item) in items.iter().enumerate() {
        if item.text.is_err() {
            summary.unparsed += 1;
        }
        let text = item.text.as_deref().map_err(|e| (e.kind(), e.to_string()));
        let at = (item.index, ordinal + 1);
        process_record(name, at, text, &item.bytes, publisher, summary).await;
    }
    if let Some(err) = plain.broke {
        summary.unparsed += 1;
        let reason = format!("{err} ({records} records before it were read)");
        dead_letter_input(publisher, summary, name, bytes, err.kind(), reason).await;
    }
}

/// Normalizes and publishes one record (`text`, or why it has none), dead-lettering it with
/// its original `bytes` when it cannot be normalized. `index` is where it was (record number or
/// line, for people); `ordinal` its place among the input's records (unique, for its id).
pub async fn process_record(
    name: &str,
    (index, ordinal): (usize, usize),
    text: Result<&str, (&'static str, String)>,
    bytes: &[u8],
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    summary.records += 1;
    publisher
        .metrics()
        .records_read
        .with_label_values(&[publisher.source_kind()])
        .inc();
    // The ordinal, not the index: records of one NDJSON line share its line number.
    let result =
        text.and_then(|t| normalize_at(t, (name, ordinal)).map_err(|e| (e.kind(), e.to_string())));
    match result {
        Ok(activity) => {
            let origin = Origin {
                source: name,
                index,
            };
            publisher.activity(activity, origin, bytes).await
        }
        Err((kind, reason)) => {
            *summary
                .dead_letter_kinds
                .entry(kind.to_string())
                .or_default() += 1;
            let letter = DeadLetter {
                source: name,
                index,
                kind,
                reason,
            };
            publisher.dead_letter(bytes, letter).await;
        }
    }
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
