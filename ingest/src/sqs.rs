//! The `sqs` source, the scalable mode: an SQS queue fed by S3 event notifications and/or
//! CloudTrail's SNS notifications. Many ingest instances share one queue; a message is deleted
//! only after every record of every file it names is durable; its visibility is extended while
//! large files are processed; a message that names no file is dead-lettered with its reason and
//! deleted.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Summary;
use crate::publish::{DeadLetter, Publisher};
use crate::s3::{classify, KeyKind};
use crate::Error;
use trailguard_common::aws::CallError;

/// Settings of the `sqs` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSourceConfig {
    /// The queue's URL (flag `--queue-url`).
    pub queue_url: String,
    /// How long a received message stays invisible to other instances; extended while its
    /// files are still being read.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Duration,
    /// Long-poll wait per receive (at most 20 s).
    #[serde(with = "humantime_serde")]
    pub wait_time: Duration,
    /// Objects larger than this (as stored) are streamed record by record.
    pub stream_above_bytes: u64,
    /// How long an object S3 refuses for want of permission is tried again (its message left
    /// on the queue), counted from the message's first receipt, before it is dead-lettered.
    #[serde(with = "humantime_serde")]
    pub retry_denied_for: Duration,
    /// How many files are read from S3 ahead of the one being published (each whole, up to
    /// `stream_above_bytes`; larger ones are streamed at their turn).
    pub fetch_ahead: usize,
}

impl Default for SqsSourceConfig {
    fn default() -> Self {
        SqsSourceConfig {
            queue_url: String::new(),
            visibility_timeout: Duration::from_secs(300),
            wait_time: Duration::from_secs(20),
            stream_above_bytes: crate::s3::STREAM_ABOVE_BYTES,
            retry_denied_for: crate::s3::DENIED_RETRY_FOR,
            fetch_ahead: 4,
        }
    }
}

impl SqsSourceConfig {
    /// Checks values serde cannot; errors name the key.
    pub fn validate(&self) -> Result<(), trailguard_common::Error> {
        if self.queue_url.trim().is_empty() {
            return Err(trailguard_common::Error::config(
                "sqs.queue_url",
                "must name the queue (or pass --queue-url)",
            ));
        }
        if self.stream_above_bytes > crate::s3::MAX_READ_WHOLE {
            return Err(trailguard_common::Error::config(
                "sqs.stream_above_bytes",
                "must be at most 1 GiB (objects up to it are read whole, into memory, up to fetch_ahead + 1 at once)",
            ));
        }
        if self.wait_time > Duration::from_secs(20) {
            return Err(trailguard_common::Error::config(
                "sqs.wait_time",
                "must be at most 20s",
            ));
        }
        if self.visibility_timeout < Duration::from_secs(30)
            || self.visibility_timeout > Duration::from_secs(12 * 3600)
        {
            return Err(trailguard_common::Error::config(
                "sqs.visibility_timeout",
                "must be between 30s and 12h",
            ));
        }
        if !(1..=64).contains(&self.fetch_ahead) {
            return Err(trailguard_common::Error::config(
                "sqs.fetch_ahead",
                "must be between 1 and 64",
            ));
        }
        Ok(())
    }
}

/// An object a notification names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Bucket.
    pub bucket: String,
    /// Key, decoded.
    pub key: String,
}

/// What a notification asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Read these objects.
    Objects(Vec<ObjectRef>),
    /// A test or other event that names no object (e.g. `s3:TestEvent`): nothing to do.
    Nothing,
}

/// Decodes an S3 event-notification key: URL-encoded, with `+` for a space.
pub fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses a message body: an S3 event notification, CloudTrail's notification
/// (`s3Bucket` + `s3ObjectKey` list), an EventBridge "Object Created" event, or any of these
/// wrapped in an SNS envelope. Pure.
pub fn parse(body: &str) -> Result<Notification, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    parse_value(&value, 0)
}

fn parse_value(value: &Value, depth: u8) -> Result<Notification, String> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    // SNS envelope: the notification is the string `Message`.
    if value.get("Type").and_then(Value::as_str) == Some("Notification") && depth == 0 {
        let message = text(value, "Message").ok_or("SNS notification without a `Message`")?;
        let inner: Value = serde_json::from_str(&message)
            .map_err(|e| format!("SNS `Message` is not JSON: {e}"))?;
        return parse_value(&inner, depth + 1);
    }
    // CloudTrail's own notification.
    if let Some(bucket) = text(value, "s3Bucket") {
        let keys = value
            .get("s3ObjectKey")
            .and_then(Value::as_array)
            .ok_or("`s3ObjectKey` is not a list")?;
        let objects = keys
            .iter()
            .map(|key| {
                let key = key
                    .as_str()
                    .ok_or("an `s3ObjectKey` item is not a string")?;
                Ok(ObjectRef {
                    bucket: bucket.clone(),
                    key: key.to_string(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if objects.is_empty() {
            return Err("`s3ObjectKey` names no file".into());
        }
        return Ok(Notification::Objects(objects));
    }
    // S3 event notification.
    if let Some(records) = value.get("Records").and_then(Value::as_array) {
        let mut objects = Vec::new();
        for record in records {
            let s3 = record.get("s3").ok_or("S3 event record without `s3`")?;
            let bucket = s3
                .get("bucket")
                .and_then(|b| text(b, "name"))
                .ok_or("S3 event without a bucket name")?;
            let key = s3
                .get("object")
                .and_then(|o| text(o, "key"))
                .ok_or("S3 event without an object key")?;
            objects.push(ObjectRef {
                bucket,
                key: decode_key(&key),
            });
        }
        if objects.is_empty() {
            return Err("S3 event notification with no records".into());
        }
        return Ok(Notification::Objects(objects));
    }
    if value.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Notification::Nothing);
    }
    // EventBridge "Object Created".
    if let Some(detail) = value.get("detail") {
        let bucket = detail.get("bucket").and_then(|b| text(b, "name"));
        let key = detail.get("object").and_then(|o| text(o, "key"));
        if let (Some(bucket), Some(key)) = (bucket, key) {
            return Ok(Notification::Objects(vec![ObjectRef { bucket, key }]));
        }
    }
    Err("not an S3, SNS, CloudTrail or EventBridge notification".into())
}

/// Batches whose messages may be being deleted at once.
const MAX_DELETIONS_IN_FLIGHT: usize = 8;

/// Receives and handles messages until `shutdown` (or, with `once`, until the queue is empty).
///
/// Once a receive has succeeded, a failure that is not one message's fault — SQS or S3 still
/// failing after the SDK's own retries, records not made durable — is waited out: logged,
/// counted in `trailguard_ingest_source_errors_total` and tried again after a backoff (1 s
/// doubling to [`MAX_BACKOFF`]). `/healthz` is not touched: restarting the process cannot
/// end an outage elsewhere, and a liveness probe would turn the wait back into a crash loop.
/// The messages a failure left are not deleted and come back after their visibility timeout,
/// so nothing is lost. A failure before any receive succeeded (a wrong queue URL, no
/// permission), any failure with `once`, and a producer that can no longer publish at all (a
/// fatal error: only a new process has a new one) stop the run with the error, as does
/// `shutdown`.
///
/// A received batch is worked through in order while up to `fetch_ahead` of the files it names
/// are read from S3 ahead, each in a task of its own; the batch's records are waited on as one
/// (a message is deleted only once everything its files hold is durable), and its messages are
/// deleted in one call, in the background, while the next batch is received.
pub async fn run(
    sqs: &aws_sdk_sqs::Client,
    s3: &aws_sdk_s3::Client,
    cfg: &SqsSourceConfig,
    publisher: &mut Publisher,
    once: bool,
    shutdown: &CancellationToken,
) -> Result<Summary, Error> {
    let (started, before) = (Instant::now(), publisher.counts());
    let mut retry = Retry {
        once,
        received: false,
        backoff: MIN_BACKOFF,
        errors: publisher
            .metrics()
            .source_errors
            .with_label_values(&[publisher.source_kind()]),
    };
    let mut summary = Summary::default();
    let visibility = i32::try_from(cfg.visibility_timeout.as_secs()).unwrap_or(i32::MAX);
    let wait = if once {
        1
    } else {
        i32::try_from(cfg.wait_time.as_secs()).unwrap_or(20)
    };
    let mut deletions = tokio::task::JoinSet::new();
    let result = loop {
        while deletions.try_join_next().is_some() {}
        // Deletes slower than receives (the queue's API struggling) hold the next receive back
        // rather than pile up.
        while deletions.len() >= MAX_DELETIONS_IN_FLIGHT {
            deletions.join_next().await;
        }
        let receive = sqs
            .receive_message()
            .queue_url(&cfg.queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(visibility)
            .wait_time_seconds(wait)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            )
            .send();
        let received = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = receive => match r {
                Ok(received) => received,
                Err(e) => match retry.wait_out(CallError::of("sqs:ReceiveMessage", &e).into(), shutdown).await {
                    Some(err) => break Err(err),
                    None => continue,
                },
            },
        };
        retry.received = true;
        let messages = received.messages();
        if messages.is_empty() {
            if once {
                break Ok(());
            }
            retry.succeeded();
            continue;
        }
        // While this batch is worked through, keep every message of it invisible to other
        // instances.
        let pending: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
            messages
                .iter()
                .filter_map(|m| m.receipt_handle().map(str::to_string))
                .collect(),
        ));
        let heartbeat = CancellationToken::new();
        tokio::spawn(extend_visibility(
            sqs.clone(),
            cfg.queue_url.clone(),
            cfg.visibility_timeout,
            pending,
            heartbeat.clone(),
        ));
        // Until the batch's messages are deleted, or it stops.
        let stop_heartbeat = heartbeat.drop_guard();
        let (handled, failed) = handle_batch(s3, cfg, messages, publisher, &mut summary).await;
        // Everything the handled messages named is durable (or dead-lettered): only now may
        // they be deleted. Not durable: none is deleted, and every one comes back.
        if let Err(err) = publisher.finish().await {
            if let Some(stopped) = failed {
                tracing::error!(error = %stopped, "reading a message's files failed");
            }
            // None of the batch is deleted: every message comes back.
            drop(stop_heartbeat);
            if let Some(fatal) = publisher.fatal() {
                tracing::error!(error = %fatal, "the producer cannot publish any more");
                break Err(err);
            }
            match retry.wait_out(err, shutdown).await {
                Some(err) => break Err(err),
                None => continue,
            }
        }
        if handled.is_empty() {
            drop(stop_heartbeat);
        } else {
            let (sqs, queue_url) = (sqs.clone(), cfg.queue_url.clone());
            deletions.spawn(async move {
                delete(sqs, queue_url, handled).await;
                drop(stop_heartbeat);
            });
        }
        if let Some(err) = failed {
            match retry.wait_out(err, shutdown).await {
                Some(err) => break Err(err),
                None => continue,
            }
        }
        retry.succeeded();
    };
    while deletions.join_next().await.is_some() {}
    result?;
    summary.finish(publisher, before, started);
    Ok(summary)
}

/// The first wait after a failure; it doubles with each failure in a row.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How [`run`] meets a failure that is not one message's fault.
struct Retry {
    once: bool,
    /// A receive has succeeded: the queue and its permissions are right.
    received: bool,
    /// The next wait.
    backoff: Duration,
    errors: prometheus::IntCounter,
}

impl Retry {
    /// `Some(err)`: stop with it. `None`: it was logged, counted and waited out (or the wait
    /// was cut short by `shutdown`, which the loop sees next); try again.
    async fn wait_out(&mut self, err: Error, shutdown: &CancellationToken) -> Option<Error> {
        if self.once || !self.received || shutdown.is_cancelled() {
            return Some(err);
        }
        self.errors.inc();
        tracing::error!(error = %err, retry_in = ?self.backoff, "ingest sqs failed; its messages come back after their visibility timeout");
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.backoff) => {}
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        None
    }

    /// A batch went through, or the queue was idle: the next failure waits the least again.
    fn succeeded(&mut self) {
        self.backoff = MIN_BACKOFF;
    }
}

/// Works through one received batch in order, reading up to `fetch_ahead` of its files ahead.
/// Returns the receipts of the messages handled, and the error that stopped it, if one did (the
/// message it stopped at, and those after, are left on the queue).
async fn handle_batch(
    s3: &aws_sdk_s3::Client,
    cfg: &SqsSourceConfig,
    messages: &[aws_sdk_sqs::types::Message],
    publisher: &mut Publisher,
    summary: &mut Summary,
) -> (Vec<(String, String)>, Option<Error>) {
    // Only a message with a body and a receipt is handled (SQS gives both).
    let parsed: Vec<_> = messages
        .iter()
        .map(|m| m.receipt_handle().and(m.body()).map(parse))
        .collect();
    // The log files of the whole batch, in the order they are published.
    let mut files = parsed
        .iter()
        .flatten()
        .filter_map(|n| match n {
            Ok(Notification::Objects(objects)) => Some(objects),
            _ => None,
        })
        .flatten()
        .filter(|o| classify(&o.key) == KeyKind::Log)
        .cloned()
        .collect::<std::collections::VecDeque<_>>();
    type Ahead =
        std::collections::VecDeque<(ObjectRef, tokio::task::JoinHandle<crate::s3::Fetched>)>;
    // What was read ahead for nothing, when the batch stops early, is abandoned.
    struct AbortOnDrop(Ahead);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.iter().for_each(|(_, task)| task.abort());
        }
    }
    let mut ahead = AbortOnDrop(Ahead::new());
    let mut fetch_ahead = |ahead: &mut Ahead| {
        while ahead.len() < cfg.fetch_ahead {
            let Some(object) = files.pop_front() else {
                break;
            };
            let (s3, stream_above, at) = (s3.clone(), cfg.stream_above_bytes, object.clone());
            ahead.push_back((
                object,
                tokio::spawn(async move {
                    crate::s3::fetch_object(&s3, &at.bucket, &at.key, stream_above).await
                }),
            ));
        }
    };
    let mut handled = Vec::new();
    for (message, notification) in messages.iter().zip(parsed) {
        let (Some(body), Some(receipt), Some(notification)) =
            (message.body(), message.receipt_handle(), notification)
        else {
            continue;
        };
        let id = message.message_id().unwrap_or("?");
        // First received: when reading its files was first tried (and, if refused, refused).
        let first_tried = message
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateFirstReceiveTimestamp)
            })
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis);
        match notification {
            Ok(Notification::Objects(objects)) => {
                for object in objects {
                    if classify(&object.key) != KeyKind::Log {
                        summary.inputs_skipped += 1;
                        continue;
                    }
                    fetch_ahead(&mut ahead.0);
                    let fetched = match ahead.0.pop_front() {
                        Some((fetching, task)) if fetching == object => {
                            task.await.unwrap_or(crate::s3::Fetched::Later)
                        }
                        // Not the file read ahead for this turn (cannot happen: they are
                        // queued in this order): read now what this message names.
                        other => {
                            if let Some((_, task)) = other {
                                task.abort();
                            }
                            crate::s3::Fetched::Later
                        }
                    };
                    fetch_ahead(&mut ahead.0);
                    let options = crate::s3::ReadOptions {
                        stream_above: cfg.stream_above_bytes,
                        since: first_tried,
                        retry_denied_for: cfg.retry_denied_for,
                    };
                    let read = crate::s3::read_fetched(
                        fetched,
                        s3,
                        &object.bucket,
                        &object.key,
                        options,
                        publisher,
                        summary,
                    );
                    if let Err(err) = read.await {
                        return (handled, Some(err));
                    }
                }
            }
            Ok(Notification::Nothing) => {}
            Err(reason) => {
                let source = format!("{}#{id}", cfg.queue_url);
                *summary
                    .dead_letter_kinds
                    .entry("bad_notification".into())
                    .or_default() += 1;
                let letter = DeadLetter {
                    source: &source,
                    index: 0,
                    kind: "bad_notification",
                    reason,
                };
                publisher.dead_letter(body.as_bytes(), letter).await;
            }
        }
        handled.push((id.to_string(), receipt.to_string()));
    }
    (handled, None)
}

/// Deletes handled messages, ten to a call. A message not deleted comes back after its
/// visibility timeout and its records are published again with the same ids: a repeat, never
/// a loss.
async fn delete(sqs: aws_sdk_sqs::Client, queue_url: String, handled: Vec<(String, String)>) {
    for chunk in handled.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, (_, receipt))| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let deleted = sqs
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match deleted {
            Ok(out) => {
                for failed in out.failed() {
                    let message = failed
                        .id()
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| chunk.get(i))
                        .map_or("?", |(id, _)| id.as_str());
                    tracing::warn!(
                        message,
                        code = failed.code(),
                        error = failed.message().unwrap_or_default(),
                        "deleting a message failed"
                    );
                }
            }
            Err(err) => {
                let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
                tracing::warn!(messages = ?ids, error = %CallError::of("sqs:DeleteMessageBatch", &err), "deleting messages failed");
            }
        }
    }
}

/// Every half visibility timeout, extends the visibility of the messages still `pending`.
async fn extend_visibility(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    timeout: Duration,
    pending: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let seconds = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(timeout / 2) => {}
        }
        let receipts = pending.lock().map(|p| p.clone()).unwrap_or_default();
        for receipt in receipts {
            let extended = sqs
                .change_message_visibility()
                .queue_url(&queue_url)
                .receipt_handle(&receipt)
                .visibility_timeout(seconds)
                .send()
                .await;
            if let Err(err) = extended {
                tracing::warn!(error = %CallError::of("sqs:ChangeMessageVisibility", &err), "extending a message's visibility failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> Option<String> {
        let path = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(
                || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
                std::path::PathBuf::from,
            )
            .join("../../shared/data/cloudtrail/aws-cloudtrail-processing-library")
            .join(name);
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn settings_out_of_range_are_refused_naming_the_key() {
        let valid = SqsSourceConfig {
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/trail".into(),
            ..SqsSourceConfig::default()
        };
        assert!(valid.validate().is_ok());
        for (broken, key) in [
            (
                SqsSourceConfig {
                    fetch_ahead: 0,
                    ..valid.clone()
                },
                "sqs.fetch_ahead",
            ),
            (
                SqsSourceConfig {
                    fetch_ahead: 65,
                    ..valid.clone()
                },
                "sqs.fetch_ahead",
            ),
            (
                SqsSourceConfig {
                    wait_time: Duration::from_secs(21),
                    ..valid.clone()
                },
                "sqs.wait_time",
            ),
            (
                SqsSourceConfig {
                    queue_url: " ".into(),
                    ..valid.clone()
                },
                "sqs.queue_url",
            ),
            (
                SqsSourceConfig {
                    stream_above_bytes: 2 << 30,
                    ..valid.clone()
                },
                "sqs.stream_above_bytes",
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
    fn sns_wrapped_cloudtrail_notification() {
        let Some(body) = shared("SQSMessageBody") else {
            return;
        };
        let Ok(Notification::Objects(objects)) = parse(&body) else {
            panic!("not parsed")
        };
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].bucket, "my-test-bucket");
        assert!(objects[0].key.ends_with("_996mpJdKNLd1Yvzl.json.gz"));
    }

    #[test]
    fn malformed_sns_is_rejected() {
        let Some(body) = shared("SQSMessageBodyWrongFormat") else {
            return;
        };
        assert!(parse(&body).is_err());
    }

    #[test]
    fn s3_event_keys_are_decoded() {
        let body = r#"{"Records":[{"eventSource":"aws:s3","s3":{"bucket":{"name":"b"},"object":{"key":"AWSLogs/1/CloudTrail/us-east-1/2024/01/01/a+b%3Dc.json.gz"}}}]}"#;
        let Ok(Notification::Objects(objects)) = parse(body) else {
            panic!("not parsed")
        };
        assert_eq!(
            objects[0].key,
            "AWSLogs/1/CloudTrail/us-east-1/2024/01/01/a b=c.json.gz"
        );
    }

    #[test]
    fn test_events_and_garbage() {
        assert_eq!(
            parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#),
            Ok(Notification::Nothing)
        );
        assert!(parse("nope").is_err());
        assert!(parse(r#"{"hello": 1}"#).is_err());
        assert!(parse(r#"{"Type":"Notification","Message":"{oops"}"#).is_err());
        // A notification that names no file, or names one with something that is not a key,
        // is dead-lettered, not deleted as handled.
        for body in [
            r#"{"s3Bucket":"b","s3ObjectKey":[{"k":1}]}"#,
            r#"{"s3Bucket":"b","s3ObjectKey":["AWSLogs/a.json.gz",7]}"#,
            r#"{"s3Bucket":"b","s3ObjectKey":[]}"#,
            r#"{"Records":[]}"#,
        ] {
            assert!(parse(body).is_err(), "{body}");
        }
    }
}
