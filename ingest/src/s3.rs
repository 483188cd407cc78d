//! The `s3` source: trail log files in a bucket, in the account layout
//! (`AWSLogs/ACCOUNT/CloudTrail/REGION/YYYY/MM/DD/*.json.gz`) and the organization layout
//! (`AWSLogs/o-ORGID/ACCOUNT/CloudTrail/...`), under an optional prefix.
//!
//! Each (account, region) is a *stream*: its keys sort by day and then by the time in the file
//! name, so "where we left off" is one key per stream, kept in the checkpoints topic and used as
//! `StartAfter` of the next listing. Digest and Insights folders are never listed (counted as
//! skipped); anything in a stream that is not named like a trail log file is counted and skipped.

use aws_sdk_s3::error::ProvideErrorMetadata;
use std::collections::BTreeSet;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::pipeline::{self, Summary};
use crate::publish::Publisher;
use crate::Error;
use trailguard_common::aws::CallError;
use trailguard_common::{Failure, Poison};

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
    /// How far before the newest file read each listing starts again, for files CloudTrail
    /// delivers out of order (see [`RELIST_WINDOW`]).
    #[serde(with = "humantime_serde")]
    pub relist_window: std::time::Duration,
    /// How long an object S3 refuses for want of permission (AccessDenied, a KMS error, expired
    /// credentials) is tried again before it is dead-lettered; the stream waits on it meanwhile.
    #[serde(with = "humantime_serde")]
    pub retry_denied_for: std::time::Duration,
}

/// Default of `relist_window`: one hour. A file's name carries the minute its delivery began;
/// it becomes listable when the upload completes, and CloudTrail retries failed uploads, so a
/// file can appear minutes after later ones. An hour covers that many times over, and costs one
/// listing page per stream per poll (a stream delivers a file every few minutes). Files later
/// than the window are not listed again; SQS notifications have no such limit.
pub const RELIST_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// The most `stream_above_bytes` may be: objects up to it are read whole, several at once.
pub const MAX_READ_WHOLE: u64 = 1 << 30;

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
            relist_window: RELIST_WINDOW,
            retry_denied_for: DENIED_RETRY_FOR,
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
        // Zero listed the bucket back to back, without a pause.
        if self.poll_interval < std::time::Duration::from_secs(1) {
            return Err(trailguard_common::Error::config(
                "s3.poll_interval",
                "must be at least 1s",
            ));
        }
        if self.stream_above_bytes > MAX_READ_WHOLE {
            return Err(trailguard_common::Error::config(
                "s3.stream_above_bytes",
                "must be at most 1 GiB (objects up to it are read whole, into memory)",
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

/// The failed call `call` about `what` (a prefix, a key).
fn aws_error<E>(
    call: &str,
    what: &str,
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    Error::Aws(CallError::of(call, err).noting(&format!(" ({what})")))
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

/// Where a stream left off: its greatest key, and every key read in the re-list window before
/// it.
///
/// CloudTrail does not deliver files in key order: a file named for an earlier minute (or for
/// yesterday's folder) can become visible after later ones were read — an upload that was
/// retried, a large file, one of several writers. Each listing therefore starts `relist_window`
/// before the greatest key's delivery minute and skips the keys already read, which this
/// position remembers (bounded by [`MAX_READ_KEYS`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The greatest key read.
    pub last: Option<String>,
    /// Keys read at or after `from` (older checkpoints named this `minute`).
    #[serde(default, alias = "minute")]
    pub read: BTreeSet<String>,
    /// The listing never starts before this key: `read` is complete only after it. Set for
    /// checkpoints written before the re-list window existed, and when `read` overflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The file the stream waits on because S3 refuses it, and since when: the retry period
    /// counts from the first refusal, not from when the file was written (a backfill reads
    /// files written long ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<(String, chrono::DateTime<chrono::Utc>)>,
}

/// At most this many keys are remembered per stream (100–350 bytes each with the prefix, so a
/// checkpoint stays under the broker's 1 MB message limit): a stream would have to deliver a
/// file every two seconds for a whole default window to reach it.
pub const MAX_READ_KEYS: usize = 2_000;

/// A key without its random suffix: everything up to the delivery minute.
fn minute_prefix(key: &str) -> &str {
    key.rsplit_once('_').map_or(key, |(prefix, _)| prefix)
}

/// The delivery minute in a log file's name (`…_20240101T0005Z_UNIQUE.json.gz`).
fn delivery_minute(key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let stamp = minute_prefix(key).rsplit('_').next()?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%MZ")
        .ok()
        .map(|t| t.and_utc())
}

impl Position {
    /// Reads a stored position. A bare key (the oldest form) or a position without `from` (the
    /// form before the re-list window) resumes where it was, without re-listing what it never
    /// remembered.
    pub fn parse(stored: Option<&str>) -> Position {
        match stored {
            None => Position::default(),
            Some(text) => {
                let legacy = !text.contains("\"read\"");
                let mut position =
                    serde_json::from_str::<Position>(text).unwrap_or_else(|_| Position {
                        last: Some(text.to_string()),
                        read: BTreeSet::from([text.to_string()]),
                        ..Position::default()
                    });
                if legacy {
                    position.from = position
                        .last
                        .as_deref()
                        .map(|l| minute_prefix(l).to_string());
                }
                position
            }
        }
    }

    /// `StartAfter` for the next listing of `stream`: `window` before the greatest key's
    /// delivery minute (never before `from`).
    pub fn resume_after(&self, stream: &Stream, window: std::time::Duration) -> Option<String> {
        let last = self.last.as_deref()?;
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::zero());
        let start = match delivery_minute(last).and_then(|t| t.checked_sub_signed(window)) {
            Some(t) => format!(
                "{}{}{}_CloudTrail_{}_{}",
                stream.list_prefix,
                t.format("%Y/%m/%d/"),
                stream.account,
                stream.region,
                t.format("%Y%m%dT%H%MZ")
            ),
            // Not named like a log file: the old rule, its own minute.
            None => minute_prefix(last).to_string(),
        };
        Some(match &self.from {
            Some(from) if from.as_str() > start.as_str() => from.clone(),
            _ => start,
        })
    }

    /// When S3 first refused `key`, if it is the file the stream waits on.
    pub fn denied_since(&self, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.denied
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
    }

    /// True for a key already read.
    pub fn done(&self, key: &str) -> bool {
        self.read.contains(key)
    }

    /// True for a key that sorts before one already read: a late delivery.
    pub fn is_late(&self, key: &str) -> bool {
        self.last.as_deref().is_some_and(|l| key < l)
    }

    /// Records that `key` of `stream` has been read, forgetting keys the next listing no longer
    /// reaches.
    pub fn advance(&mut self, key: &str, stream: &Stream, window: std::time::Duration) {
        // Only a key named for a plausible delivery minute moves the listing on: one dated
        // 2999 (or not dated at all) would otherwise put every later listing past the real
        // files. Such a key is still read, once.
        let plausible = delivery_minute(key)
            .is_some_and(|t| t <= chrono::Utc::now() + chrono::Duration::days(1));
        if plausible && self.last.as_deref().is_none_or(|l| key > l) {
            self.last = Some(key.to_string());
        }
        self.remember(key, stream, window);
    }

    /// Records that `key`, which is not a log file, was seen, so the next listings skip it
    /// without counting it again.
    pub fn remember(&mut self, key: &str, stream: &Stream, window: std::time::Duration) {
        if self.denied.as_ref().is_some_and(|(k, _)| k == key) {
            self.denied = None;
        }
        self.read.insert(key.to_string());
        if let Some(after) = self.resume_after(stream, window) {
            self.read = self.read.split_off(after.as_str());
        }
        while self.read.len() > MAX_READ_KEYS {
            // Forgetting a key could read it twice; never listing before it keeps it once.
            if let Some(oldest) = self.read.pop_first() {
                self.from = Some(oldest);
            }
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
/// moves past a file only once all of the file's records are durable. A stream that fails
/// (a listing refused, an object to be tried again) stops at that file; the others are still
/// read, and the error names every failed stream.
pub async fn run(
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
    let mut failed = Vec::new();
    for stream in &streams {
        let read = read_stream(
            client,
            cfg,
            stream,
            checkpoints,
            publisher,
            &mut summary,
            shutdown,
        );
        match read.await {
            Ok(()) => {}
            Err(err @ (Error::Source(_) | Error::Aws(_))) => {
                tracing::warn!(stream = %stream.list_prefix, error = %err, "s3 stream stopped; tried again at the next poll");
                summary.errors += 1;
                failed.push(err.to_string());
            }
            // The broker or the checkpoints failed: no stream can go on.
            Err(err) => return Err(err),
        }
        if summary.interrupted {
            break;
        }
    }
    summary.finish(publisher, before, started);
    tracing::info!(
        streams = streams.len(),
        files = summary.inputs_read,
        "s3 listing done"
    );
    summary.or_failures(failed, "s3 listing")
}

/// Reads a stream's new files in key order, from its checkpoint.
async fn read_stream(
    client: &aws_sdk_s3::Client,
    cfg: &S3SourceConfig,
    stream: &Stream,
    checkpoints: &mut Checkpoints,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let key = stream.checkpoint_key(&cfg.bucket);
    let mut position = Position::parse(checkpoints.get(&key));
    let mut request = client
        .list_objects_v2()
        .bucket(&cfg.bucket)
        .prefix(&stream.list_prefix);
    let resume = position.resume_after(stream, cfg.relist_window);
    if let Some(after) = start_after(stream, resume.as_deref(), cfg.start_date) {
        request = request.start_after(after);
    }
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("s3:ListObjectsV2", &stream.list_prefix, &e))?;
        for object in page.contents() {
            if shutdown.is_cancelled() {
                summary.interrupted = true;
                return Ok(());
            }
            let Some(object_key) = object.key() else {
                continue;
            };
            if position.done(object_key) {
                continue;
            }
            if classify(object_key) != KeyKind::Log {
                summary.inputs_skipped += 1;
                position.remember(object_key, stream, cfg.relist_window);
                continue;
            }
            if position.is_late(object_key) {
                summary.late_inputs += 1;
                publisher
                    .metrics()
                    .late_inputs
                    .with_label_values(&[publisher.source_kind()])
                    .inc();
                tracing::info!(object = object_key, "a file delivered after later ones");
            }
            let options = ReadOptions {
                stream_above: cfg.stream_above_bytes,
                since: position.denied_since(object_key),
                retry_denied_for: cfg.retry_denied_for,
            };
            let read = read_object(client, &cfg.bucket, object_key, options, publisher, summary);
            match read.await {
                Ok(()) => {}
                Err(Error::Denied(text)) => {
                    if position.denied_since(object_key).is_none() {
                        // The first refusal: the retry period starts now, across restarts.
                        position.denied = Some((object_key.to_string(), chrono::Utc::now()));
                        checkpoints.save(&key, &position.to_text()).await?;
                    }
                    return Err(Error::Source(text));
                }
                Err(err) => return Err(err),
            }
            publisher.finish().await?;
            position.advance(object_key, stream, cfg.relist_window);
            checkpoints.save(&key, &position.to_text()).await?;
            publisher
                .metrics()
                .checkpoint_time
                .with_label_values(&["s3"])
                .set(chrono::Utc::now().timestamp());
        }
    }
    Ok(())
}

/// Default of `retry_denied_for`: an hour, long enough for a policy change or a credential
/// rotation to settle, short enough that a file refused for good does not hold its stream up
/// for long.
pub const DENIED_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Error codes S3 answers with when the caller may not read an object *now*: a denied request
/// (a bucket or KMS key policy being changed, a role being rotated), credentials that expired.
/// They often mend within minutes, so the object is tried again for a while.
fn denied(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled"
    ) || code.starts_with("KMS.")
}

/// What to do about an object that could not be read, by the error's code — never its text,
/// which names the key: try again later (throttling, a 5xx, a connection failure; a refusal not
/// yet older than the retry period), or dead-letter the object as a pointer and move on (it is
/// gone, or refused for longer than the retry period, or refused for good). `since` is when
/// reading it was first refused (kept in the stream's checkpoint, or the message's first
/// receipt); `now` the clock.
pub fn unreadable(
    err: CallError,
    since: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    retry_denied_for: std::time::Duration,
) -> Failure<CallError> {
    let poison = |err: CallError| Failure::Poison(Poison::new("unreadable", err.to_string()));
    if err.is("NoSuchKey") {
        return poison(err);
    }
    if err.retryable {
        return Failure::Retryable(err);
    }
    if err.code.as_deref().is_some_and(denied) {
        let period = chrono::Duration::from_std(retry_denied_for).unwrap_or(chrono::Duration::MAX);
        let young = since.is_none_or(|t| now.signed_duration_since(t) < period);
        return if young {
            Failure::Retryable(err)
        } else {
            poison(err)
        };
    }
    poison(err)
}

/// Where an object came from and how to read it.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    /// Objects larger than this (as stored) are streamed record by record.
    pub stream_above: u64,
    /// When reading the object was first refused, if it was.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// How long a refused object is tried again before it is dead-lettered.
    pub retry_denied_for: std::time::Duration,
}

/// Reads one object and publishes its records; objects larger than `stream_above` bytes are
/// streamed record by record. An object that cannot be read is tried again or dead-lettered by
/// [`unreadable`]; trying again returns the error, so the caller leaves its checkpoint (or
/// message) where it is.
pub async fn read_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    options: ReadOptions,
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> Result<(), Error> {
    let name = format!("s3://{bucket}/{key}");
    match get_object(client, bucket, key, options.stream_above).await {
        Got::Large(object, size) => stream_object(*object, &name, size, publisher, summary).await,
        Got::Whole(bytes) => {
            publish_whole(&name, bytes, publisher, summary).await;
            Ok(())
        }
        Got::Failed(err) => refused(&name, err, options, publisher, summary).await,
        Got::BodyBroke(reason) => Err(Error::Source(reason)),
    }
}

/// An object read ahead of its turn by [`fetch_object`], to be published by [`read_fetched`].
#[derive(Debug)]
pub enum Fetched {
    /// The whole object, as stored.
    Whole(bytes::Bytes),
    /// Read at its turn: larger than `stream_above` or of no stated size, to be streamed (an
    /// unread response held until then could be closed under it); or refused, or broken off,
    /// when read ahead — which may be over by its turn, and a refusal's retry period is judged
    /// by the clock of its turn.
    Later,
}

/// Reads `key` whole (the first step of [`read_object`]) so that it can run ahead, in a task of
/// its own, while earlier objects are published.
pub async fn fetch_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    stream_above: u64,
) -> Fetched {
    match get_object(client, bucket, key, stream_above).await {
        Got::Whole(bytes) => Fetched::Whole(bytes),
        Got::Large(..) | Got::Failed(_) | Got::BodyBroke(_) => Fetched::Later,
    }
}

/// Publishes an object [`fetch_object`] read ahead, exactly as [`read_object`] would have.
pub async fn read_fetched(
    fetched: Fetched,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    options: ReadOptions,
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> Result<(), Error> {
    let name = format!("s3://{bucket}/{key}");
    match fetched {
        Fetched::Whole(bytes) => {
            publish_whole(&name, bytes, publisher, summary).await;
            Ok(())
        }
        Fetched::Later => read_object(client, bucket, key, options, publisher, summary).await,
    }
}

/// What one GetObject gave.
enum Got {
    Whole(bytes::Bytes),
    Large(Box<aws_sdk_s3::operation::get_object::GetObjectOutput>, u64),
    Failed(CallError),
    BodyBroke(String),
}

async fn get_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    stream_above: u64,
) -> Got {
    let object = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(e) => return Got::Failed(CallError::of("s3:GetObject", &e)),
    };
    // An object of no stated size is streamed: it may be of any size.
    let size = object.content_length().map(|n| n.max(0) as u64);
    if size.is_none_or(|size| size > stream_above) {
        return Got::Large(Box::new(object), size.unwrap_or(0));
    }
    match object.body.collect().await {
        Ok(body) => Got::Whole(body.into_bytes()),
        Err(e) => Got::BodyBroke(format!("s3:GetObject {key}: reading the body: {e}")),
    }
}

/// Counts and publishes an object read whole.
async fn publish_whole(
    name: &str,
    bytes: bytes::Bytes,
    publisher: &mut Publisher,
    summary: &mut Summary,
) {
    pipeline::count_input(publisher, summary, bytes.len() as u64);
    pipeline::process(name, bytes, None, publisher, summary).await;
}

/// An object S3 did not give: dead-lettered, or the error to try again later.
async fn refused(
    name: &str,
    err: CallError,
    options: ReadOptions,
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> Result<(), Error> {
    let now = chrono::Utc::now();
    match unreadable(err, options.since, now, options.retry_denied_for) {
        Failure::Poison(Poison { kind, reason }) => {
            let reason = format!("{name}: {reason}");
            pipeline::dead_letter_input(publisher, summary, name, b"", kind, reason).await;
            Ok(())
        }
        Failure::Retryable(err) if err.code.as_deref().is_some_and(denied) => {
            Err(Error::Denied(format!("{name}: {err}")))
        }
        Failure::Retryable(err) => Err(Error::Source(format!("{name}: {err}"))),
    }
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
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<String, (crate::split::SplitError, String)>>(4096);
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let connection_broke = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = Counting {
        inner: tokio_util::io::SyncIoBridge::new(object.body.into_async_read()),
        count: received.clone(),
        broke: connection_broke.clone(),
    };
    let limits = publisher.limits();
    let splitter = tokio::task::spawn_blocking(move || {
        crate::stream::stream_log_file(reader, limits, |record| tx.blocking_send(record).is_ok())
    });
    pipeline::count_input(publisher, summary, size);
    let mut index = 0usize;
    while let Some(record) = rx.recv().await {
        index += 1;
        let (text, bytes) = match &record {
            Ok(text) => (Ok(text.as_str()), text.as_bytes()),
            Err((why, text)) => {
                summary.unparsed += 1;
                (Err(Poison::from(why)), text.as_bytes())
            }
        };
        pipeline::process_record(name, (index, index), text, bytes, publisher, summary).await;
    }
    match splitter.await {
        Ok(Ok(_)) => {
            publisher
                .metrics()
                .inputs
                .with_label_values(&[publisher.source_kind(), "ok"])
                .inc();
            Ok(())
        }
        Ok(Err(err)) => {
            let got = received.load(std::sync::atomic::Ordering::Relaxed);
            if connection_broke.load(std::sync::atomic::Ordering::Relaxed) {
                // The connection broke, not the file: retry it (what was published repeats
                // with the same ids).
                return Err(Error::Source(format!(
                    "s3:GetObject {name}: the body broke off after {got} of {size} bytes: {err}"
                )));
            }
            // The file's own fault (cut off, not JSON, past the limits): what came before is
            // published; the object is dead-lettered as a pointer saying where it broke.
            pipeline::dead_letter_input(publisher, summary, name, b"", err.kind(), err.to_string())
                .await;
            Ok(())
        }
        Err(join) => Err(Error::Source(format!("streaming {name}: {join}"))),
    }
}

/// A reader that counts the bytes it hands out, and notes when reading itself failed (the
/// connection, not the content).
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    broke: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<R: std::io::Read> std::io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| {
            self.broke.store(true, std::sync::atomic::Ordering::Relaxed);
        })?;
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
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_pause_of_nothing_and_objects_too_large_to_hold_are_refused() {
        let valid = S3SourceConfig {
            bucket: "trail".into(),
            ..S3SourceConfig::default()
        };
        assert!(valid.validate().is_ok());
        for (broken, key) in [
            (
                S3SourceConfig {
                    poll_interval: std::time::Duration::ZERO,
                    ..valid.clone()
                },
                "s3.poll_interval",
            ),
            (
                S3SourceConfig {
                    stream_above_bytes: MAX_READ_WHOLE + 1,
                    ..valid.clone()
                },
                "s3.stream_above_bytes",
            ),
        ] {
            let err = broken
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

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

    fn stream() -> Stream {
        Stream {
            account: "1".into(),
            region: "r".into(),
            list_prefix: "p/".into(),
        }
    }

    fn key(day: &str, stamp: &str, unique: &str) -> String {
        format!("p/{day}/1_CloudTrail_r_{stamp}_{unique}.json.gz")
    }

    /// A listing from `after`, skipping what `position` read: the keys a poll would read.
    fn poll(position: &mut Position, bucket: &[String], window: Duration) -> Vec<String> {
        let after = position.resume_after(&stream(), window);
        let mut listed: Vec<&String> = bucket
            .iter()
            .filter(|k| after.as_deref().is_none_or(|a| k.as_str() > a))
            .collect();
        listed.sort();
        let mut read = Vec::new();
        for key in listed {
            if !position.done(key) {
                read.push(key.clone());
                position.advance(key, &stream(), window);
                *position = Position::parse(Some(&position.to_text()));
            }
        }
        read
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn files_delivered_out_of_order_are_read_once() {
        let mut bucket = vec![key("2024/01/02", "20240102T0005Z", "b")];
        let mut position = Position::default();
        assert_eq!(poll(&mut position, &bucket, HOUR), bucket);
        // An earlier minute, the same minute with a smaller suffix, and yesterday's last file.
        let late = [
            key("2024/01/02", "20240102T0004Z", "z"),
            key("2024/01/02", "20240102T0005Z", "a"),
            key("2024/01/01", "20240101T2359Z", "q"),
        ];
        bucket.extend(late.iter().cloned());
        let mut read = poll(&mut position, &bucket, HOUR);
        read.sort();
        let mut expected = late.to_vec();
        expected.sort();
        assert_eq!(read, expected);
        assert!(poll(&mut position, &bucket, HOUR).is_empty(), "each once");
        // Later files move the window; what falls behind it is forgotten.
        bucket.push(key("2024/01/02", "20240102T0300Z", "c"));
        assert_eq!(poll(&mut position, &bucket, HOUR).len(), 1);
        assert_eq!(position.read.len(), 1, "{:?}", position.read);
        assert!(poll(&mut position, &bucket, HOUR).is_empty());
    }

    #[test]
    fn a_key_from_the_future_does_not_move_the_listing_past_real_files() {
        let mut position = Position::default();
        position.advance(&key("2024/01/02", "20240102T0005Z", "b"), &stream(), HOUR);
        for planted in [
            key("2999/01/01", "29990101T0000Z", "x"),
            "p/zz_CloudTrail_.json".to_string(),
        ] {
            position.advance(&planted, &stream(), HOUR);
            assert!(position.done(&planted), "read once");
        }
        assert_eq!(
            position.last,
            Some(key("2024/01/02", "20240102T0005Z", "b"))
        );
        let next = key("2024/01/02", "20240102T0010Z", "c");
        let after = position.resume_after(&stream(), HOUR).unwrap_or_default();
        assert!(after.as_str() < next.as_str(), "{after}");
    }

    #[test]
    fn late_is_relative_to_the_newest_key() {
        let mut position = Position::default();
        position.advance(&key("2024/01/02", "20240102T0005Z", "b"), &stream(), HOUR);
        assert!(position.is_late(&key("2024/01/02", "20240102T0004Z", "z")));
        assert!(!position.is_late(&key("2024/01/02", "20240102T0006Z", "a")));
    }

    #[test]
    fn older_checkpoints_resume_where_they_were() {
        let last = key("2024/01/02", "20240102T0005Z", "b");
        let old = serde_json::json!({"last": last, "minute": [last]}).to_string();
        let position = Position::parse(Some(&old));
        assert!(position.done(&last));
        let after = position.resume_after(&stream(), HOUR).unwrap_or_default();
        assert_eq!(after, "p/2024/01/02/1_CloudTrail_r_20240102T0005Z");
        let bare = Position::parse(Some(&last));
        assert_eq!(
            bare.resume_after(&stream(), HOUR).as_deref(),
            Some(after.as_str())
        );
    }

    #[test]
    fn the_remembered_keys_are_bounded() {
        let mut position = Position::default();
        // More files in one minute than the bound: the oldest are forgotten and never
        // listed again (read once, never twice).
        for i in 0..MAX_READ_KEYS + 10 {
            position.advance(
                &key("2024/01/02", "20240102T0005Z", &format!("{i:06}")),
                &stream(),
                HOUR,
            );
        }
        assert_eq!(position.read.len(), MAX_READ_KEYS);
        let after = position.resume_after(&stream(), HOUR).unwrap_or_default();
        assert_eq!(after, key("2024/01/02", "20240102T0005Z", "000009"));
        assert!(position.to_text().len() < 900_000);
    }

    fn failure(code: &str, retryable: bool) -> CallError {
        CallError {
            call: "s3:GetObject".into(),
            // The key names every code: the decision must not read the text.
            message: format!("{code}: s3://b/AccessDenied_NoSuchKey_SlowDown"),
            code: Some(code.into()),
            retryable,
        }
    }

    #[derive(Debug, PartialEq)]
    enum Unreadable {
        Retry,
        DeadLetter,
    }

    #[test]
    fn unreadable_objects_are_judged_by_code() {
        let now = chrono::Utc::now();
        let fresh = Some(now - chrono::Duration::minutes(5));
        let old = Some(now - chrono::Duration::hours(2));
        let judge =
            |code, retryable, since| match unreadable(failure(code, retryable), since, now, HOUR) {
                Failure::Retryable(_) => Unreadable::Retry,
                Failure::Poison(poison) => {
                    assert_eq!(poison.kind, "unreadable");
                    assert!(poison.reason.contains(code), "{poison}");
                    Unreadable::DeadLetter
                }
            };
        assert_eq!(judge("SlowDown", true, old), Unreadable::Retry);
        assert_eq!(judge("InternalError", true, old), Unreadable::Retry);
        assert_eq!(judge("NoSuchKey", false, fresh), Unreadable::DeadLetter);
        // A refusal may be a policy or key being changed: tried for an hour, then given up.
        assert_eq!(judge("AccessDenied", false, fresh), Unreadable::Retry);
        assert_eq!(
            judge("KMS.DisabledException", false, fresh),
            Unreadable::Retry
        );
        assert_eq!(judge("ExpiredToken", false, None), Unreadable::Retry);
        assert_eq!(judge("AccessDenied", false, old), Unreadable::DeadLetter);
        assert_eq!(
            judge("InvalidObjectState", false, fresh),
            Unreadable::DeadLetter
        );
        // No code at all (a connection failure) follows `retryable`.
        let mut broken = failure("x", true);
        broken.code = None;
        assert!(unreadable(broken, old, now, HOUR).is_retryable());
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
