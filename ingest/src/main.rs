//! `ingest`: reads CloudTrail and publishes normalized activities. See `ingest --help`.

use std::process::ExitCode;

use clap::Parser;
use trailguard_common::cli::CommonFlags;
use trailguard_common::{config, shutdown, telemetry};
use trailguard_ingest::checkpoint::Checkpoints;
use trailguard_ingest::cli::Command;
use trailguard_ingest::files::{self, Input};
use trailguard_ingest::publish::{Metrics, Publisher};
use trailguard_ingest::service::{exit_code, periodic_inventory, start, Poller};
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
    #[command(flatten)]
    common: CommonFlags,
    #[command(subcommand)]
    command: Command,
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
    let mut flags = cli.common.overlay();
    cli.command.overlay(&mut flags);
    let cfg: IngestConfig = config::load(
        &IngestConfig::default(),
        cli.common.config.as_deref(),
        &flags,
    )?;
    cfg.validate()?;
    if cli.common.check_config {
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
            let result =
                files::run(&inputs, &cfg.files, &mut publisher, progress, &shutdown).await?;
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
            periodic_inventory(&cfg, &producer, &metrics, args.once, tasks);
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
            periodic_inventory(&cfg, &producer, &metrics, args.once, tasks);
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
            // A long poll must end before the read timeout would cut it (with --once, polls
            // wait 1 s).
            let wait = if args.once {
                std::time::Duration::from_secs(1)
            } else {
                cfg.sqs.wait_time
            };
            if cfg.aws.read_timeout < wait + std::time::Duration::from_secs(5) {
                return Err(trailguard_common::Error::config(
                    "aws.read_timeout",
                    format!(
                        "must be at least the long poll ({wait:?}, sqs.wait_time) plus 5s: it would time out"
                    ),
                )
                .into());
            }
            let (producer, _health) = start(&mut cfg, registry, !args.once, tasks).await?;
            periodic_inventory(&cfg, &producer, &metrics, args.once, tasks);
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
