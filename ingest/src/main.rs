//! `ingest`: reads CloudTrail and publishes normalized activities. See `ingest --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use trailguard_common::{config, shutdown, telemetry};
use trailguard_ingest::checkpoint::Checkpoints;
use trailguard_ingest::files::{self, Input};
use trailguard_ingest::publish::{Metrics, Publisher};
use trailguard_ingest::service::{exit_code, periodic_inventory, start, Poller, SummaryFormat};
use trailguard_ingest::IngestConfig;
use trailguard_ingest::{inventory, lookup, s3};

/// Normalizing builds and drops many small JSON trees; mimalloc makes that cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trailguard ingest: reads CloudTrail records, normalizes each into an Activity and publishes
/// it to Kafka (keyed by principal); what cannot be normalized goes to the dead-letter topic
/// with its reason.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "TRAILGUARD_BROKERS", global = true)]
    brokers: Option<String>,
    /// TOML configuration file (every key: docs/configuration.md).
    #[arg(long, env = "TRAILGUARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: auto (pretty on a terminal, JSON otherwise), pretty or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
    /// Load and validate the configuration (file, `TRAILGUARD_*` environment, flags), print it
    /// with secrets redacted, and exit without connecting to anything.
    #[arg(long, global = true)]
    check_config: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish CloudTrail log files ({"Records": [...]}), .json.gz, NDJSON, directory trees
    /// (files named *.json, *.json.gz, *.jsonl, *.ndjson, *.gz) or stdin (`-` or no path).
    /// Exits 0 once every record is durably published (or dead-lettered).
    Files {
        /// Files or directories; `-` or nothing reads stdin.
        paths: Vec<String>,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address while running.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
        /// No progress display (it shows only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,
    },
    /// Publish events from CloudTrail's LookupEvents API, per region: a backfill on the first
    /// run (`lookup.backfill`, 7 days), then polls from the checkpoint minus an overlap window,
    /// at most 2 requests per second per region.
    Lookup {
        #[command(flatten)]
        args: LookupArgs,
        /// Summary format printed on stdout after each poll.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Publish the trail log files named by notifications on an SQS queue (S3 event
    /// notifications, CloudTrail's SNS notifications, EventBridge), deleting each message only
    /// once all its records are durable. Many instances can share one queue.
    Sqs {
        #[command(flatten)]
        args: SqsArgs,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Take the posture inventory: every bucket of every account (ListBuckets, GetBucketAcl,
    /// GetBucketPolicy, GetBucketPolicyStatus, GetPublicAccessBlock, and the account's
    /// public-access block), one `BucketSnapshot` activity per bucket, so buckets that were
    /// public before Trailguard started are caught too. Accounts: `aws.accounts` /
    /// `aws.organization_accounts` with `aws.role_arn_template`, else the credentials' own.
    Inventory {
        /// Account to read through the assumed role (repeatable; adds to `aws.accounts`).
        #[arg(long = "account")]
        accounts: Vec<String>,
        /// Role to assume in each account, `{account}` standing for its id.
        #[arg(long)]
        role_arn_template: Option<String>,
        /// AWS endpoint override (a local AWS-API server); implies path-style addressing.
        #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
        aws_endpoint: Option<String>,
        /// Summary format printed on stdout at the end.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
    },
    /// Publish trail log files from an S3 bucket (account and organization layouts), resuming
    /// each (account, region) from its checkpoint. Polls every `s3.poll_interval` unless `--once`.
    S3 {
        #[command(flatten)]
        args: S3Args,
        /// Summary format printed on stdout after each listing.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Serve /metrics and /healthz on this address (default: `admin.listen`).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
}

#[derive(clap::Args, Debug)]
struct S3Args {
    /// Bucket the trail writes to.
    #[arg(long)]
    bucket: Option<String>,
    /// Key prefix the trail was configured with (before `AWSLogs/`), ending in `/`.
    #[arg(long)]
    prefix: Option<String>,
    /// Only this account (repeatable).
    #[arg(long = "account")]
    accounts: Vec<String>,
    /// Only this region (repeatable).
    #[arg(long = "region")]
    regions: Vec<String>,
    /// Skip days before this one (YYYY-MM-DD) on a stream's first listing.
    #[arg(long)]
    start_date: Option<String>,
    /// List once, publish what is new, and exit (for backfills and cron); otherwise poll.
    #[arg(long)]
    once: bool,
    /// AWS endpoint override (a local AWS-API server); implies path-style addressing.
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
}

#[derive(clap::Args, Debug)]
struct LookupArgs {
    /// Region to read (repeatable).
    #[arg(long = "region")]
    regions: Vec<String>,
    /// Poll once (the backfill on a first run) and exit; otherwise poll until stopped.
    #[arg(long)]
    once: bool,
    /// AWS endpoint override (a local server).
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
}

#[derive(clap::Args, Debug)]
struct SqsArgs {
    /// URL of the queue that receives the trail's S3 or SNS notifications.
    #[arg(long)]
    queue_url: Option<String>,
    /// Handle what is in the queue now and exit; otherwise run until stopped.
    #[arg(long)]
    once: bool,
    /// AWS endpoint override (a local AWS-API server); implies path-style S3 addressing.
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ingest: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut flags = json!({});
    if let Some(brokers) = &cli.brokers {
        flags["kafka"] = json!({ "brokers": brokers });
    }
    if let Some(format) = &cli.log_format {
        flags["log"] = json!({ "format": format });
    }
    match &cli.command {
        Command::Files {
            admin_listen: Some(addr),
            ..
        }
        | Command::S3 {
            admin_listen: Some(addr),
            ..
        }
        | Command::Sqs {
            admin_listen: Some(addr),
            ..
        }
        | Command::Lookup {
            admin_listen: Some(addr),
            ..
        } => {
            flags["admin"] = json!({ "listen": addr.to_string() });
        }
        _ => {}
    }
    if let Command::Inventory {
        accounts,
        role_arn_template,
        aws_endpoint,
        ..
    } = &cli.command
    {
        let mut aws = json!({});
        if !accounts.is_empty() {
            aws["accounts"] = json!(accounts);
        }
        if let Some(template) = role_arn_template {
            aws["role_arn_template"] = json!(template);
        }
        if let Some(endpoint) = aws_endpoint {
            aws["endpoint_url"] = json!(endpoint);
            aws["force_path_style"] = json!(true);
        }
        flags["aws"] = aws;
    }
    if let Command::Lookup { args, .. } = &cli.command {
        if !args.regions.is_empty() {
            flags["lookup"] = json!({ "regions": args.regions });
        }
        if let Some(endpoint) = &args.aws_endpoint {
            flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
        }
    }
    if let Command::Sqs { args, .. } = &cli.command {
        if let Some(url) = &args.queue_url {
            flags["sqs"] = json!({ "queue_url": url });
        }
        if let Some(endpoint) = &args.aws_endpoint {
            flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
        }
    }
    if let Command::S3 { args, .. } = &cli.command {
        let mut s3 = json!({});
        if let Some(bucket) = &args.bucket {
            s3["bucket"] = json!(bucket);
        }
        if let Some(prefix) = &args.prefix {
            s3["prefix"] = json!(prefix);
        }
        if !args.accounts.is_empty() {
            s3["accounts"] = json!(args.accounts);
        }
        if !args.regions.is_empty() {
            s3["regions"] = json!(args.regions);
        }
        if let Some(date) = &args.start_date {
            s3["start_date"] = json!(date);
        }
        flags["s3"] = s3;
        if let Some(endpoint) = &args.aws_endpoint {
            flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
        }
    }
    let cfg: IngestConfig = config::load(&IngestConfig::default(), cli.config.as_deref(), &flags)?;
    cfg.validate()?;
    if cli.check_config {
        config::print_redacted(&cfg)?;
        return Ok(ExitCode::SUCCESS);
    }
    telemetry::init_logging(&cfg.log);
    let shutdown = shutdown::on_signals();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    trailguard_common::aws_calls::register_metrics(&registry)?;

    let tasks = shutdown::Tasks::new(shutdown.clone());
    let outcome = serve(cli.command, cfg, registry, metrics, &tasks).await;
    if let Some(failure) = tasks.failure() {
        anyhow::bail!(failure);
    }
    outcome
}

/// Runs the source `command` names until it is done or stopped.
async fn serve(
    command: Command,
    mut cfg: IngestConfig,
    registry: prometheus::Registry,
    metrics: Metrics,
    tasks: &shutdown::Tasks,
) -> anyhow::Result<ExitCode> {
    let shutdown = tasks.shutdown().clone();
    match command {
        Command::Files {
            paths,
            summary,
            admin_listen,
            no_progress,
        } => {
            let (producer, _health) =
                start(&mut cfg, registry, admin_listen.is_some(), tasks).await?;
            let mut publisher = Publisher::new(producer, &cfg, "files", metrics);
            let inputs: Vec<Input> = paths.iter().map(|p| Input::parse(p)).collect();
            let progress = !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let result = files::run(&inputs, &mut publisher, progress, &shutdown).await?;
            summary.print(&result)?;
            shutdown.cancel();
            Ok(exit_code(&result))
        }
        Command::Inventory { summary, .. } => {
            cfg.aws.validate()?;
            let (producer, _health) = start(&mut cfg, registry, false, tasks).await?;
            let mut publisher = Publisher::new(producer, &cfg, "inventory", metrics);
            let accounts = cfg.aws.accounts().await?;
            let result = inventory::run(&cfg.aws, &accounts, &mut publisher, &shutdown).await?;
            summary.print(&result)?;
            shutdown.cancel();
            Ok(exit_code(&result))
        }
        Command::S3 { args, summary, .. } => {
            cfg.s3.validate()?;
            cfg.aws.validate()?;
            let (producer, health) = start(&mut cfg, registry, !args.once, tasks).await?;
            let mut checkpoints = Checkpoints::load(&cfg.kafka, producer.clone()).await?;
            periodic_inventory(&cfg, &producer, &metrics, args.once, &shutdown);
            let mut publisher = Publisher::new(producer, &cfg, "s3", metrics);
            let client = trailguard_common::aws::s3_client(&cfg.aws).await;
            let poller = Poller {
                once: args.once,
                interval: cfg.s3.poll_interval,
                format: summary,
                health: &health,
                shutdown: &shutdown,
            };
            loop {
                let polled = s3::run(
                    &client,
                    &cfg.s3,
                    &mut checkpoints,
                    &mut publisher,
                    &shutdown,
                )
                .await;
                if let Some(code) = poller.after(polled, "s3 listing").await? {
                    return Ok(code);
                }
            }
        }
        Command::Lookup { args, summary, .. } => {
            cfg.lookup.validate()?;
            cfg.aws.validate()?;
            let (producer, health) = start(&mut cfg, registry, !args.once, tasks).await?;
            let mut checkpoints = Checkpoints::load(&cfg.kafka, producer.clone()).await?;
            periodic_inventory(&cfg, &producer, &metrics, args.once, &shutdown);
            let mut publisher = Publisher::new(producer, &cfg, "lookup", metrics);
            let mut streams = lookup::streams(&cfg.aws, &cfg.lookup).await?;
            let poller = Poller {
                once: args.once,
                interval: cfg.lookup.poll_interval,
                format: summary,
                health: &health,
                shutdown: &shutdown,
            };
            loop {
                let polled = lookup::run(
                    &mut streams,
                    &cfg.lookup,
                    &mut checkpoints,
                    &mut publisher,
                    &shutdown,
                )
                .await;
                if let Some(code) = poller.after(polled, "LookupEvents poll").await? {
                    return Ok(code);
                }
            }
        }
        Command::Sqs { args, summary, .. } => {
            cfg.sqs.validate()?;
            cfg.aws.validate()?;
            let (producer, _health) = start(&mut cfg, registry, !args.once, tasks).await?;
            periodic_inventory(&cfg, &producer, &metrics, args.once, &shutdown);
            let mut publisher = Publisher::new(producer, &cfg, "sqs", metrics);
            let s3_client = trailguard_common::aws::s3_client(&cfg.aws).await;
            let sqs_client = trailguard_common::aws::sqs_client(&cfg.aws).await;
            let result = trailguard_ingest::sqs::run(
                &sqs_client,
                &s3_client,
                &cfg.sqs,
                &mut publisher,
                args.once,
                &shutdown,
            )
            .await?;
            summary.print(&result)?;
            shutdown.cancel();
            Ok(ExitCode::SUCCESS)
        }
    }
}
