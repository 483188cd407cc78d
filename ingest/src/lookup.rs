//! The `lookup` source: CloudTrail's LookupEvents API, as Defender for Cloud Apps uses it.
//!
//! Per account × region (a [`Stream`]): on first start a backfill (default 7 days), then a poll every interval from the
//! checkpoint minus an overlap window, so events CloudTrail delivers late are not missed; the
//! overlap's repeats are dropped by the publisher's de-duplication (same ids). Requests never
//! exceed the API's limit of 2 per second per account and region (a token bucket per region);
//! throttling is retried with exponential backoff and jitter, counted. A region's checkpoint
//! (the end of its last complete window) moves only after every record of the window is durable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::Checkpoints;
use crate::normalize::normalize;
use crate::pipeline::Summary;
use crate::publish::{DeadLetter, Publisher};
use crate::Error;
use trailguard_common::aws::CallError;

/// Settings of the `lookup` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookupSourceConfig {
    /// Regions to read (flag `--region`); required. `all` reads every region enabled in each
    /// account (account:ListRegions).
    pub regions: Vec<String>,
    /// How far back the first run reads.
    #[serde(with = "humantime_serde")]
    pub backfill: Duration,
    /// Time between polls in the long-running mode.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How far before the checkpoint each poll starts again, for events that become visible
    /// late (see [`OVERLAP`]); at least [`MIN_OVERLAP`].
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    /// Requests per second per region (CloudTrail allows 2).
    pub requests_per_second: f64,
}

/// The delay after which an event is taken to be visible in LookupEvents: CloudTrail documents
/// an average of about 5 minutes and guarantees nothing; 15 minutes is the bound it is usually
/// held to. An overlap shorter than this loses events, so the configuration refuses it.
pub const MIN_OVERLAP: Duration = Duration::from_secs(15 * 60);

/// Default of `overlap`: twice [`MIN_OVERLAP`]. An event is read if it becomes visible within
/// the overlap of its time; the price is re-reading the overlap each poll (six times the events
/// at the default 5-minute interval), and de-duplication drops the repeats.
pub const OVERLAP: Duration = Duration::from_secs(30 * 60);

impl Default for LookupSourceConfig {
    fn default() -> Self {
        LookupSourceConfig {
            regions: Vec::new(),
            backfill: Duration::from_secs(7 * 86_400),
            poll_interval: Duration::from_secs(300),
            overlap: OVERLAP,
            requests_per_second: 2.0,
        }
    }
}

impl LookupSourceConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        if self.regions.is_empty() {
            return Err(trailguard_common::Error::config(
                "lookup.regions",
                "name at least one region (or pass --region)",
            ));
        }
        if !(self.requests_per_second > 0.0 && self.requests_per_second <= 2.0) {
            return Err(trailguard_common::Error::config(
                "lookup.requests_per_second",
                "must be above 0 and at most 2 (CloudTrail's limit)",
            ));
        }
        if self.overlap < MIN_OVERLAP {
            return Err(trailguard_common::Error::config(
                "lookup.overlap",
                "must be at least 15m: events can become visible to LookupEvents that late, and a shorter overlap never reads them",
            ));
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err(trailguard_common::Error::config(
                "lookup.poll_interval",
                "must be at least 1s",
            ));
        }
        if self.backfill > Duration::from_secs(90 * 86_400) {
            return Err(trailguard_common::Error::config(
                "lookup.backfill",
                "LookupEvents keeps 90 days at most",
            ));
        }
        Ok(())
    }
}

/// A token bucket: at most `rate` requests per second, bursts of one.
pub struct TokenBucket {
    interval: Duration,
    next: Instant,
}

impl TokenBucket {
    /// A bucket allowing `rate` requests per second.
    pub fn new(rate: f64) -> Self {
        TokenBucket {
            interval: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            next: Instant::now(),
        }
    }

    /// Waits for the next token.
    pub async fn take(&mut self) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + self.interval;
    }
}

/// The window a poll reads: from the checkpoint minus the overlap (or the backfill on a first
/// run) up to `now`. Pure.
pub fn window(
    checkpoint: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    backfill: Duration,
    overlap: Duration,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let backfill = chrono::Duration::from_std(backfill).unwrap_or(chrono::Duration::days(7));
    let overlap = chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::zero());
    let start = match checkpoint {
        // After downtime, catch up from the checkpoint as far as the API keeps events.
        Some(c) => (c - overlap).max(now - chrono::Duration::days(90)),
        None => now - backfill,
    };
    (start.min(now), now)
}

/// Exponential backoff with full jitter: a random wait up to `base * 2^attempt`, at most 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_millis(250)
        .saturating_mul(1 << attempt.min(7))
        .min(Duration::from_secs(30));
    cap.mul_f64(rand::random::<f64>())
}

/// Reads one window of one region, publishing every event; returns the events read.
async fn read_window(
    client: &aws_sdk_cloudtrail::Client,
    stream: &str,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    bucket: &mut TokenBucket,
    publisher: &mut Publisher,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut next_token: Option<String> = None;
    let mut attempt = 0;
    loop {
        if shutdown.is_cancelled() {
            summary.interrupted = true;
            return Ok(());
        }
        bucket.take().await;
        let response = client
            .lookup_events()
            .start_time(aws_sdk_cloudtrail::primitives::DateTime::from_secs(
                start.timestamp(),
            ))
            .end_time(aws_sdk_cloudtrail::primitives::DateTime::from_secs(
                end.timestamp(),
            ))
            .max_results(50)
            .set_next_token(next_token.clone())
            .send()
            .await;
        let page = match response.map_err(|e| CallError::of("cloudtrail:LookupEvents", &e)) {
            Ok(page) => page,
            Err(err) if err.retryable && attempt < 8 => {
                if err.is("ThrottlingException") {
                    summary.throttles += 1;
                    publisher
                        .metrics()
                        .throttles
                        .with_label_values(&["lookup"])
                        .inc();
                }
                let wait = backoff(attempt);
                tracing::warn!(
                    stream,
                    ?wait,
                    code = err.code.as_deref().unwrap_or("transient"),
                    "LookupEvents failed; backing off"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
                continue;
            }
            Err(err) => return Err(err.noting(&format!(" (stream {stream})")).into()),
        };
        attempt = 0;
        summary.api_calls += 1;
        publisher
            .metrics()
            .api_calls
            .with_label_values(&["lookup"])
            .inc();
        for event in page.events() {
            summary.records += 1;
            let Some(raw) = event.cloud_trail_event() else {
                let source = format!("{stream}/{}", event.event_id().unwrap_or("?"));
                *summary
                    .dead_letter_kinds
                    .entry("missing_field".into())
                    .or_default() += 1;
                let reason = "LookupEvents returned an event without CloudTrailEvent".to_string();
                let letter = DeadLetter {
                    source: &source,
                    index: 0,
                    kind: "missing_field",
                    reason,
                };
                publisher.dead_letter(b"", letter).await;
                continue;
            };
            match normalize(raw) {
                Ok(activity) => {
                    let source = format!("{stream}/{}", event.event_id().unwrap_or("?"));
                    let origin = crate::publish::Origin {
                        source: &source,
                        index: 0,
                    };
                    publisher.activity(activity, origin, raw.as_bytes()).await
                }
                Err(err) => {
                    let source = format!("{stream}/{}", event.event_id().unwrap_or("?"));
                    *summary
                        .dead_letter_kinds
                        .entry(err.kind().to_string())
                        .or_default() += 1;
                    let letter = DeadLetter {
                        source: &source,
                        index: 0,
                        kind: err.kind(),
                        reason: err.to_string(),
                    };
                    publisher.dead_letter(raw.as_bytes(), letter).await;
                }
            }
        }
        next_token = page.next_token().map(str::to_string);
        if next_token.is_none() {
            return Ok(());
        }
    }
}

/// One account × region read by the source: its client, its own request pace, and the key of
/// its checkpoint.
pub struct Stream {
    /// The account (`None`: the credentials' own).
    pub account: Option<String>,
    /// The region.
    pub region: String,
    /// A client acting in that account and region, without SDK retries (the source retries,
    /// paced and counted).
    pub client: aws_sdk_cloudtrail::Client,
    /// The account × region's share of CloudTrail's request limit.
    pub bucket: TokenBucket,
}

impl Stream {
    /// The checkpoint key: `lookup://REGION` for the own account, else
    /// `lookup://ACCOUNT/REGION`.
    pub fn key(&self) -> String {
        match &self.account {
            Some(account) => format!("lookup://{account}/{}", self.region),
            None => format!("lookup://{}", self.region),
        }
    }
}

/// The streams to read: every account (see [`AwsConfig::accounts`]) × every configured region,
/// or each account's enabled regions when the regions are `all`.
///
/// [`AwsConfig::accounts`]: trailguard_common::aws::AwsConfig::accounts
pub async fn streams(
    aws: &trailguard_common::aws::AwsConfig,
    cfg: &LookupSourceConfig,
) -> Result<Vec<Stream>, Error> {
    // Said once, at start: what this source cannot deliver, and which detections miss it.
    tracing::warn!(
        "LookupEvents returns management events only, never data events: object deletions \
         (storage-deletion), object reads and Lambda invocations need trail files with data \
         events (ingest s3 or ingest sqs)"
    );
    let mut out = Vec::new();
    for account in aws.accounts().await? {
        let regions = if cfg.regions.iter().any(|r| r == "all") {
            enabled_regions(aws, &account.sdk).await?
        } else {
            cfg.regions.clone()
        };
        for region in regions {
            let config =
                trailguard_common::sdk_config!(aws_sdk_cloudtrail, aws, &account.sdk, "cloudtrail")
                    .region(aws_sdk_cloudtrail::config::Region::new(region.clone()))
                    .retry_config(aws_sdk_cloudtrail::config::retry::RetryConfig::disabled())
                    .build();
            out.push(Stream {
                account: account.id.clone(),
                region,
                client: aws_sdk_cloudtrail::Client::from_conf(config),
                bucket: TokenBucket::new(cfg.requests_per_second),
            });
        }
    }
    Ok(out)
}

/// The regions enabled in the account of `sdk` (account:ListRegions).
async fn enabled_regions(
    aws: &trailguard_common::aws::AwsConfig,
    sdk: &aws_config::SdkConfig,
) -> Result<Vec<String>, Error> {
    use aws_sdk_account::types::RegionOptStatus;
    let client = aws_sdk_account::Client::from_conf(
        trailguard_common::sdk_config!(aws_sdk_account, aws, sdk, "account").build(),
    );
    let mut regions = Vec::new();
    let mut pages = client
        .list_regions()
        .region_opt_status_contains(RegionOptStatus::Enabled)
        .region_opt_status_contains(RegionOptStatus::EnabledByDefault)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| CallError::of("account:ListRegions", &e))?;
        regions.extend(
            page.regions()
                .iter()
                .filter_map(|r| r.region_name().map(str::to_string)),
        );
    }
    if regions.is_empty() {
        return Err(Error::Source(
            "account:ListRegions returned no enabled region".into(),
        ));
    }
    Ok(regions)
}

/// One poll of every stream: reads each one's window and moves its checkpoint to the window's
/// end once everything is durable. A stream that fails (access denied, a role that cannot be
/// assumed, retries exhausted) is logged and counted, the others still run, and the error
/// names every failed stream; its checkpoint stays, so the next poll covers the gap.
pub async fn run(
    streams: &mut [Stream],
    cfg: &LookupSourceConfig,
    checkpoints: &mut Checkpoints,
    publisher: &mut Publisher,
    shutdown: &CancellationToken,
) -> Result<Summary, Error> {
    let (started, before) = (std::time::Instant::now(), publisher.counts());
    let mut summary = Summary::default();
    let mut failed = Vec::new();
    for stream in streams.iter_mut() {
        let key = stream.key();
        let checkpoint = checkpoints
            .get(&key)
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&Utc));
        let range = window(checkpoint, Utc::now(), cfg.backfill, cfg.overlap);
        let read = read_window(
            &stream.client,
            &key,
            range,
            &mut stream.bucket,
            publisher,
            &mut summary,
            shutdown,
        )
        .await;
        if let Err(err) = read {
            tracing::error!(stream = %key, error = %err, "LookupEvents stream failed");
            summary.errors += 1;
            failed.push(err.to_string());
            continue;
        }
        if summary.interrupted {
            break;
        }
        publisher.finish().await?;
        checkpoints.save(&key, &range.1.to_rfc3339()).await?;
        publisher
            .metrics()
            .checkpoint_time
            .with_label_values(&["lookup"])
            .set(Utc::now().timestamp());
    }
    publisher.finish().await?;
    summary.finish(publisher, before, started);
    summary.or_failures(failed, "poll")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(hours: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + hours * 3600, 0).unwrap_or_default()
    }

    #[test]
    fn first_window_is_the_backfill_then_checkpoint_minus_overlap() {
        let week = Duration::from_secs(7 * 86_400);
        let quarter = Duration::from_secs(900);
        assert_eq!(
            window(None, t(1000), week, quarter),
            (t(1000 - 168), t(1000))
        );
        let (start, end) = window(Some(t(999)), t(1000), week, quarter);
        assert_eq!(
            (start, end),
            (t(999) - chrono::Duration::minutes(15), t(1000))
        );
        // After downtime longer than the backfill, catch up from the checkpoint...
        assert_eq!(
            window(Some(t(900)), t(1000), week, quarter).0,
            t(900) - chrono::Duration::minutes(15)
        );
        // ...as far as LookupEvents keeps events (90 days).
        assert_eq!(
            window(Some(t(0)), t(5000), week, quarter).0,
            t(5000 - 90 * 24)
        );
    }

    /// Events become visible some minutes after their time; polls every `poll_interval` read
    /// the window from the last checkpoint minus the overlap. With the defaults, an event
    /// visible up to the overlap late is in a window read after it became visible.
    #[test]
    fn events_visible_late_are_still_read() {
        let cfg = LookupSourceConfig::default();
        let interval = chrono::Duration::from_std(cfg.poll_interval).unwrap_or_default();
        let start = t(0);
        for delay_minutes in [0, 5, 14, 15, 20, 29] {
            for offset_seconds in (0..600).step_by(37) {
                let event = start + chrono::Duration::seconds(3600 + offset_seconds);
                let visible = event + chrono::Duration::minutes(delay_minutes);
                let (mut checkpoint, mut now, mut read) = (Some(start), start, false);
                while now < visible + chrono::Duration::hours(2) {
                    now += interval;
                    let (from, to) = window(checkpoint, now, cfg.backfill, cfg.overlap);
                    read |= now >= visible && from <= event && event <= to;
                    checkpoint = Some(to);
                }
                assert!(
                    read,
                    "an event visible {delay_minutes} min late is never read"
                );
            }
        }
    }

    #[test]
    fn an_overlap_shorter_than_the_delay_is_refused() {
        let mut cfg = LookupSourceConfig {
            regions: vec!["us-east-1".into()],
            ..LookupSourceConfig::default()
        };
        assert!(cfg.validate().is_ok());
        cfg.overlap = Duration::from_secs(600);
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lookup.overlap"), "{err}");
        cfg.overlap = MIN_OVERLAP;
        cfg.poll_interval = Duration::ZERO;
        let err = cfg
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("lookup.poll_interval"), "{err}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            assert!(backoff(attempt) <= Duration::from_secs(30));
        }
        assert!(backoff(0) <= Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_paces_requests() {
        let mut bucket = TokenBucket::new(2.0);
        let started = Instant::now();
        for _ in 0..5 {
            bucket.take().await;
        }
        // The first is immediate, then one every half second.
        assert_eq!(started.elapsed(), Duration::from_millis(2000));
    }
}
