//! The service around the sources: start-up (admin endpoint, topics, a producer fitted to the
//! broker), the polling loop of the `s3` and `lookup` sources, the periodic inventory beside a
//! long-running source, and how a run's summary is printed and ends the process.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use trailguard_common::config::TopicRole;
use trailguard_common::shutdown::Tasks;
use trailguard_common::{kafka, telemetry};

use crate::inventory;
use crate::pipeline::Summary;
use crate::publish::{Metrics, Publisher};
use crate::{Error, IngestConfig};

/// How a run's summary is printed on stdout.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SummaryFormat {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

/// 130 (as after SIGINT) when a signal stopped the run before every input was read, else 0.
pub fn exit_code(summary: &Summary) -> ExitCode {
    if summary.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}

impl SummaryFormat {
    /// Prints a run's summary on stdout in this format.
    pub fn print(self, summary: &Summary) -> Result<(), Error> {
        match self {
            SummaryFormat::Text => println!("{summary}"),
            SummaryFormat::Json => match serde_json::to_string(summary) {
                Ok(json) => println!("{json}"),
                Err(err) => return Err(Error::Source(format!("printing the summary: {err}"))),
            },
        }
        Ok(())
    }
}

/// What the polling sources (`s3`, `lookup`) do between polls.
pub struct Poller<'a> {
    /// Stop after the first poll (`--once`).
    pub once: bool,
    /// Time between polls.
    pub interval: std::time::Duration,
    /// How each poll's summary is printed.
    pub format: SummaryFormat,
    /// Unhealthy while polls fail.
    pub health: &'a telemetry::Health,
    /// Stops the polling.
    pub shutdown: &'a CancellationToken,
}

impl Poller<'_> {
    /// Prints a poll's summary and waits for the next one. Returns the exit code when the
    /// process should stop. A failed poll is retried at the next interval (sources resume from
    /// their checkpoints, so nothing is lost), except with `--once`, where it is the result.
    pub async fn after(
        &self,
        polled: Result<Summary, Error>,
        what: &str,
    ) -> Result<Option<ExitCode>, Error> {
        match polled {
            Ok(result) => {
                self.health.set(true);
                self.format.print(&result)?;
                if self.once || self.shutdown.is_cancelled() {
                    self.shutdown.cancel();
                    return Ok(Some(exit_code(&result)));
                }
            }
            Err(err) if !self.once && !self.shutdown.is_cancelled() => {
                tracing::error!(error = %err, "{what} failed; retrying at the next interval");
                self.health.set(false);
            }
            Err(err) => return Err(err),
        }
        tokio::select! {
            _ = self.shutdown.cancelled() => Ok(Some(ExitCode::SUCCESS)),
            _ = tokio::time::sleep(self.interval) => Ok(None),
        }
    }
}

/// With `inventory.enabled`, takes the inventory every `inventory.interval` alongside a
/// long-running source, on its own publisher; failures are logged and retried next time.
pub fn periodic_inventory(
    cfg: &IngestConfig,
    producer: &kafka::Producer,
    metrics: &Metrics,
    once: bool,
    tasks: &Tasks,
) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.inventory.enabled || once {
        return None;
    }
    let mut publisher = Publisher::new(producer.clone(), cfg, "inventory", metrics.clone());
    let (aws, interval) = (cfg.aws.clone(), cfg.inventory.interval);
    let shutdown = tasks.shutdown().clone();
    Some(tasks.spawn("periodic inventory", async move {
        loop {
            match aws.accounts().await {
                Ok(accounts) => {
                    match inventory::run(&aws, &accounts, &mut publisher, &shutdown).await {
                        Ok(summary) => tracing::info!(buckets = summary.records, "inventory taken"),
                        Err(err) => {
                            tracing::error!(error = %err, "inventory failed; retrying at the next interval")
                        }
                    }
                }
                Err(err) => tracing::error!(error = %err, "inventory: cannot list the accounts"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }))
}

/// What every source starts with: the admin endpoint (when asked), its topics, a producer.
pub async fn start(
    cfg: &mut IngestConfig,
    registry: prometheus::Registry,
    serve_admin: bool,
    tasks: &Tasks,
) -> Result<(kafka::Producer, telemetry::Health), Error> {
    let health = telemetry::Health::default();
    if serve_admin {
        telemetry::serve_admin(cfg.admin.listen, registry, health.clone(), tasks).await?;
    }
    kafka::ensure_topics(&cfg.kafka, &[TopicRole::Activities, TopicRole::Dlq])
        .await
        .map_err(|e| Error::Source(format!("creating topics: {e}")))?;
    fit_to_broker(cfg).await;
    Ok((kafka::producer(&cfg.kafka, "trailguard-ingest", 5)?, health))
}

/// Fits what ingest publishes to the largest record its topics take (`max.message.bytes`, as
/// the broker says): activities are trimmed, and dead letters become pointers, below it, and
/// the producer's batches stay under it — so the broker never refuses a record for its size,
/// which would otherwise fail the run. Unchanged when the broker does not say.
async fn fit_to_broker(cfg: &mut IngestConfig) {
    let mut limit: Option<usize> = None;
    for topic in [&cfg.kafka.topics.activities, &cfg.kafka.topics.dlq] {
        let setting = kafka::topic_setting(&cfg.kafka, topic, "max.message.bytes").await;
        match setting.ok().flatten().and_then(|v| v.parse::<usize>().ok()) {
            Some(bytes) => limit = Some(limit.map_or(bytes, |l| l.min(bytes))),
            None => {
                tracing::debug!(%topic, "max.message.bytes not known; the configured limits stand")
            }
        }
    }
    let Some(limit) = limit else { return };
    // Room for the key, the headers and the batch's framing.
    let fits = limit.saturating_sub(16 * 1024).max(1024);
    if fits < cfg.publish.max_dead_letter_bytes {
        tracing::warn!(
            topic_limit = limit,
            was = cfg.publish.max_dead_letter_bytes,
            now = fits,
            "the topics take smaller records than publish.max_dead_letter_bytes: lowered to fit"
        );
        cfg.publish.max_dead_letter_bytes = fits;
    }
    let batch_set = cfg.kafka.client_settings().any(|(k, _)| k == "batch.size");
    if !batch_set && limit < 1_000_000 {
        cfg.kafka
            .client
            .insert("batch.size".into(), fits.to_string());
    }
}
