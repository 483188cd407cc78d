//! The `s3` source: trail log files in a bucket, in the account layout
//! (`AWSLogs/ACCOUNT/CloudTrail/REGION/YYYY/MM/DD/*.json.gz`) and the organization layout
//! (`AWSLogs/o-ORGID/ACCOUNT/CloudTrail/...`), under an optional prefix.
//!
//! Each (account, region) is a *stream*: its keys sort by day and then by the time in the file
//! name, so "where we left off" is one key per stream, kept in the checkpoints topic and used as
//! `StartAfter` of the next listing. Digest and Insights folders are never listed (counted as
//! skipped); anything in a stream that is not named like a trail log file is counted and skipped.

use aws_sdk_s3::error::ProvideErrorMetadata;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::files::{self, Summary};
use crate::publish::Publisher;
use crate::Error;

/// Settings of the `s3` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3SourceConfig {
    /// Bucket the trail writes to (flag `--bucket`).
    pub bucket: String,
    /// Key prefix the trail was configured with, without `AWSLogs/` (e.g. `org-trail/`).
    pub prefix: String,
    /// Only these accounts (all when empty).
    pub accounts: Vec<String>,
    /// Only these regions (all when empty).
    pub regions: Vec<String>,
    /// Skip days before this one (`YYYY-MM-DD`) on a stream's first listing.
    pub start_date: Option<NaiveDate>,
    /// Time between listings in the long-running mode.
    #[serde(with = "humantime_serde")]
    pub poll_interval: std::time::Duration,
    /// Objects larger than this (as stored) are streamed record by record instead of read
    /// whole.
    pub stream_above_bytes: u64,
}

/// Default of `stream_above_bytes`: 32 MiB.
pub const STREAM_ABOVE_BYTES: u64 = 32 << 20;

impl Default for S3SourceConfig {
    fn default() -> Self {
        S3SourceConfig {
            bucket: String::new(),
            prefix: String::new(),
            accounts: Vec::new(),
            regions: Vec::new(),
            start_date: None,
            poll_interval: std::time::Duration::from_secs(60),
            stream_above_bytes: STREAM_ABOVE_BYTES,
        }
    }
}

impl S3SourceConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        if self.bucket.trim().is_empty() {
            return Err(trailguard_common::Error::config(
                "s3.bucket",
                "must name the trail's bucket (or pass --bucket)",
            ));
        }
        if !self.prefix.is_empty() && !self.prefix.ends_with('/') {
            return Err(trailguard_common::Error::config(
                "s3.prefix",
                "must end with `/`",
            ));
        }
        Ok(())
    }
}

/// What a key inside a region's folder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A trail log file.
    Log,
    /// Anything else (counted, skipped).
    Other,
}

/// Classifies the file name of a key in `.../CloudTrail/REGION/YYYY/MM/DD/`:
/// `ACCOUNT_CloudTrail_REGION_YYYYMMDDTHHMMZ_UNIQUE.json[.gz]`.
pub fn classify(key: &str) -> KeyKind {
    let name = key.rsplit('/').next().unwrap_or(key);
    let is_log =
        name.contains("_CloudTrail_") && (name.ends_with(".json.gz") || name.ends_with(".json"));
    if is_log {
        KeyKind::Log
    } else {
        KeyKind::Other
    }
}

/// One (account, region) of a trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// The account.
    pub account: String,
    /// The region.
    pub region: String,
    /// `[prefix]AWSLogs/[o-ORG/]ACCOUNT/CloudTrail/REGION/`.
    pub list_prefix: String,
}

impl Stream {
    /// The checkpoint key of this stream.
    pub fn checkpoint_key(&self, bucket: &str) -> String {
        format!("s3://{bucket}/{}", self.list_prefix)
    }
}

async fn list_folders(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, Error> {
    let mut folders = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .delimiter("/")
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("s3:ListObjectsV2", prefix, &e))?;
        for p in page.common_prefixes() {
            if let Some(folder) = p.prefix() {
                folders.push(folder.to_string());
            }
        }
    }
    Ok(folders)
}

fn last_segment(folder: &str) -> &str {
    folder
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

fn aws_error<E: ProvideErrorMetadata + std::fmt::Debug>(call: &str, what: &str, err: &E) -> Error {
    Error::Source(format!(
        "{call} {what}: {}",
        trailguard_common::aws::error_text(err)
    ))
}

/// Finds the trail's (account, region) streams that pass the filters; counts the Digest and
/// Insights folders it leaves alone.
pub async fn discover(
    client: &aws_sdk_s3::Client,
    cfg: &S3SourceConfig,
    skipped_folders: &mut u64,
) -> Result<Vec<Stream>, Error> {
    let root = format!("{}AWSLogs/", cfg.prefix);
    let mut account_folders = Vec::new();
    for folder in list_folders(client, &cfg.bucket, &root).await? {
        if last_segment(&folder).starts_with("o-") {
            account_folders.extend(list_folders(client, &cfg.bucket, &folder).await?);
        } else {
            account_folders.push(folder);
        }
    }
    let mut streams = Vec::new();
    for account_folder in account_folders {
        let account = last_segment(&account_folder).to_string();
        if !cfg.accounts.is_empty() && !cfg.accounts.contains(&account) {
            continue;
        }
        for kind in list_folders(client, &cfg.bucket, &account_folder).await? {
            if last_segment(&kind) != "CloudTrail" {
                *skipped_folders += 1; // CloudTrail-Digest, CloudTrail-Insight, ...
                continue;
            }
            for region_folder in list_folders(client, &cfg.bucket, &kind).await? {
                let region = last_segment(&region_folder).to_string();
                if cfg.regions.is_empty() || cfg.regions.contains(&region) {
                    streams.push(Stream {
                        account: account.clone(),
                        region,
                        list_prefix: region_folder,
                    });
                }
            }
        }
    }
    streams.sort_by(|a, b| a.list_prefix.cmp(&b.list_prefix));
    Ok(streams)
}

/// Where a stream left off: its last key, and every key read of that key's delivery minute.
///
/// Log file names carry their delivery minute and then a random suffix
/// (`…_20240101T0000Z_Ab3x.json.gz`), so a file delivered later in the same minute can sort
/// *before* the last key read. Each listing therefore starts at the last key's minute and skips
/// the keys of that minute already read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The greatest key read.
    pub last: Option<String>,
    /// The keys read that share `last`'s delivery minute.
    pub minute: Vec<String>,
}

/// A key without its random suffix: everything up to the delivery minute.
fn minute_prefix(key: &str) -> &str {
    key.rsplit_once('_').map_or(key, |(prefix, _)| prefix)
}

impl Position {
    /// Reads a stored position (a bare key, as older checkpoints were, is accepted).
    pub fn parse(stored: Option<&str>) -> Position {
        match stored {
            None => Position::default(),
            Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Position {
                last: Some(text.to_string()),
                minute: vec![text.to_string()],
            }),
        }
    }

    /// `StartAfter` for the next listing: just before the last key's minute.
    pub fn resume_after(&self) -> Option<&str> {
        self.last.as_deref().map(minute_prefix)
    }

    /// True for a key of the current minute already read.
    pub fn done(&self, key: &str) -> bool {
        self.minute.iter().any(|k| k == key)
    }

    /// Records that `key` has been read.
    pub fn advance(&mut self, key: &str) {
        let same_minute = self
            .last
            .as_deref()
            .is_some_and(|l| minute_prefix(l) == minute_prefix(key));
        if !same_minute && self.last.as_deref().is_none_or(|l| key > l) {
            self.minute.clear();
        }
        self.minute.push(key.to_string());
        if self.last.as_deref().is_none_or(|l| key > l) {
            self.last = Some(key.to_string());
        }
    }

    /// The stored form.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a stream's listing starts: after its checkpoint, or at the start date.
pub fn start_after(
    stream: &Stream,
    checkpoint: Option<&str>,
    start_date: Option<NaiveDate>,
) -> Option<String> {
    let from_date = start_date.map(|d| format!("{}{}", stream.list_prefix, d.format("%Y/%m/%d/")));
    match (checkpoint, from_date) {
        (Some(c), Some(d)) => Some(if c > d.as_str() { c.to_string() } else { d }),
        (Some(c), None) => Some(c.to_string()),
        (None, d) => d,
    }
}

/// Reads every new log file of every stream once, publishing its records; a stream's checkpoint
/// moves past a file only once all of the file's records are durable.
pub async fn run_once(
    client: &aws_sdk_s3::Client,
    cfg: &S3SourceConfig,
    checkpoints: &mut Checkpoints,
    publisher: &mut Publisher,
    shutdown: &CancellationToken,
) -> Result<Summary, Error> {
    let (started, before) = (std::time::Instant::now(), publisher.counts());
    let mut summary = Summary::default();
    let mut skipped_folders = 0;
    let streams = discover(client, cfg, &mut skipped_folders).await?;
    summary.inputs_skipped += skipped_folders;
    'streams: for stream in &streams {
        let key = stream.checkpoint_key(&cfg.bucket);
        let mut position = Position::parse(checkpoints.get(&key));
        let mut request = client
            .list_objects_v2()
            .bucket(&cfg.bucket)
            .prefix(&stream.list_prefix);
        if let Some(after) = start_after(stream, position.resume_after(), cfg.start_date) {
            request = request.start_after(after);
        }
        let mut pages = request.into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("s3:ListObjectsV2", &stream.list_prefix, &e))?;
            for object in page.contents() {
                if shutdown.is_cancelled() {
                    summary.interrupted = true;
                    break 'streams;
                }
                let Some(object_key) = object.key() else {
                    continue;
                };
                if position.done(object_key) {
                    continue;
                }
                if classify(object_key) != KeyKind::Log {
                    summary.inputs_skipped += 1;
                    continue;
                }
                read_object(
                    client,
                    &cfg.bucket,
                    object_key,
                    cfg.stream_above_bytes,
                    publisher,
                    &mut summary,
                )
                .await?;
                publisher.finish().await?;
                position.advance(object_key);
                checkpoints.save(&key, &position.to_text()).await?;
                publisher
                    .metrics()
                    .checkpoint_time
                    .with_label_values(&["s3"])
                    .set(chrono::Utc::now().timestamp());
            }
        }
    }
    summary.finish(publisher, before, started);
    tracing::info!(
        streams = streams.len(),
        files = summary.inputs_read,
        "s3 listing done"
    );
    Ok(summary)
}

/// Reads one object and publishes its records; objects larger than `stream_above` bytes are
/// streamed record by record. An object that cannot be read (deleted, no permission on it) is
/// dead-lettered as a pointer; other failures (the network, throttling) are returned, so the
/// caller retries instead of moving on.
pub async fn read_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    stream_above: u64,
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> Result<(), Error> {
    let name = format!("s3://{bucket}/{key}");
    let object = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(e) => {
            return match aws_error("s3:GetObject", key, &e) {
                Error::Source(text)
                    if text.contains("NoSuchKey") || text.contains("AccessDenied") =>
                {
                    files::dead_letter_input(publisher, summary, &name, b"", "unreadable", text)
                        .await;
                    Ok(())
                }
                err => Err(err),
            }
        }
    };
    let size = object.content_length().unwrap_or(0).max(0) as u64;
    if size > stream_above {
        return stream_object(object, &name, size, publisher, summary).await;
    }
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| Error::Source(format!("s3:GetObject {key}: reading the body: {e}")))?
        .into_bytes();
    summary.inputs_read += 1;
    summary.bytes += bytes.len() as u64;
    files::process(&name, &bytes, publisher, summary).await;
    Ok(())
}

/// Streams a large object: a blocking task decompresses and splits it, handing records over a
/// bounded channel to be normalized and published here, so memory stays flat. If the object
/// breaks off, the records before the break are published and the object is dead-lettered
/// (as a pointer) with where and why.
async fn stream_object(
    object: aws_sdk_s3::operation::get_object::GetObjectOutput,
    name: &str,
    size: u64,
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> Result<(), Error> {
    tracing::info!(object = name, size, "streaming a large object");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4096);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = Counting {
        inner: tokio_util::io::SyncIoBridge::new(object.body.into_async_read()),
        count: received.clone(),
    };
    let splitter = tokio::task::spawn_blocking(move || {
        crate::stream::stream_log_file(reader, |record| tx.blocking_send(record).is_ok())
    });
    summary.inputs_read += 1;
    summary.bytes += size;
    let mut index = 0usize;
    while let Some(record) = rx.recv().await {
        index += 1;
        files::process_record(
            name,
            index,
            Ok(&record),
            record.as_bytes(),
            publisher,
            summary,
        )
        .await;
    }
    match splitter.await {
        Ok(Ok(_)) => {
            publisher
                .metrics()
                .inputs
                .with_label_values(&["s3", "ok"])
                .inc();
            Ok(())
        }
        Ok(Err(err)) => {
            let got = received.load(std::sync::atomic::Ordering::Relaxed);
            if got < size {
                // The connection broke, not the file: retry it (what was published repeats
                // with the same ids).
                return Err(Error::Source(format!(
                    "s3:GetObject {name}: the body broke off after {got} of {size} bytes: {err}"
                )));
            }
            files::dead_letter_input(publisher, summary, name, b"", err.kind(), err.to_string())
                .await;
            Ok(())
        }
        Err(join) => Err(Error::Source(format!("streaming {name}: {join}"))),
    }
}

/// A reader that counts the bytes it hands out.
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads a whole object.
pub async fn get(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Vec<u8>, Error> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| aws_error("s3:GetObject", key, &e))?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|e| Error::Source(format!("s3:GetObject {key}: reading the body: {e}")))?;
    Ok(body.into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_names() {
        assert_eq!(classify("AWSLogs/1/CloudTrail/us-east-1/2024/01/01/1_CloudTrail_us-east-1_20240101T0000Z_abc.json.gz"), KeyKind::Log);
        assert_eq!(
            classify("x/1_CloudTrail_us-east-1_20240101T0000Z_abc.json"),
            KeyKind::Log
        );
        assert_eq!(
            classify("x/1_CloudTrail-Digest_us-east-1_x_20240101T000000Z.json.gz"),
            KeyKind::Other
        );
        assert_eq!(classify("x/notes.txt"), KeyKind::Other);
    }

    #[test]
    fn a_late_file_of_the_same_minute_is_not_missed() {
        let a = "p/1_CloudTrail_r_20240101T0000Z_b.json.gz";
        let b = "p/1_CloudTrail_r_20240101T0000Z_a.json.gz";
        let next = "p/1_CloudTrail_r_20240101T0005Z_c.json.gz";
        let mut position = Position::default();
        position.advance(a);
        let position = Position::parse(Some(&position.to_text()));
        // The next listing starts before `b`, and skips `a`.
        assert!(position.resume_after().is_some_and(|after| after < b));
        assert!(position.done(a) && !position.done(b));
        let mut position = position;
        position.advance(b);
        assert_eq!(position.last.as_deref(), Some(a));
        position.advance(next);
        assert_eq!(position.minute, vec![next.to_string()]);
        assert_eq!(Position::parse(Some(a)).last.as_deref(), Some(a));
    }

    #[test]
    fn start_after_takes_the_later_of_checkpoint_and_date() {
        let stream = Stream {
            account: "1".into(),
            region: "r".into(),
            list_prefix: "AWSLogs/1/CloudTrail/r/".into(),
        };
        let date = NaiveDate::from_ymd_opt(2024, 2, 1);
        assert_eq!(
            start_after(&stream, None, date).as_deref(),
            Some("AWSLogs/1/CloudTrail/r/2024/02/01/")
        );
        assert_eq!(
            start_after(&stream, Some("AWSLogs/1/CloudTrail/r/2024/03/01/x"), date).as_deref(),
            Some("AWSLogs/1/CloudTrail/r/2024/03/01/x")
        );
        assert_eq!(
            start_after(&stream, Some("AWSLogs/1/CloudTrail/r/2024/01/01/x"), date).as_deref(),
            Some("AWSLogs/1/CloudTrail/r/2024/02/01/")
        );
        assert_eq!(start_after(&stream, None, None), None);
    }
}
