//! `ingest`: reads CloudTrail and publishes normalized activities. See `ingest --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use trailguard_common::{config, kafka, shutdown, telemetry};
use trailguard_ingest::files::{self, Input};
use trailguard_ingest::publish::{Metrics, Publisher};
use trailguard_ingest::IngestConfig;

/// Trailguard ingest: reads CloudTrail records, normalizes each into an Activity and publishes
/// it to Kafka (keyed by principal); what cannot be normalized goes to the dead-letter topic
/// with its reason.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Kafka bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "TRAILGUARD_BROKERS", global = true)]
    brokers: Option<String>,
    /// TOML configuration file (see README "Configuration").
    #[arg(long, env = "TRAILGUARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format: auto (pretty on a terminal, JSON otherwise), pretty or json.
    #[arg(long, global = true)]
    log_format: Option<String>,
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
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SummaryFormat {
    Text,
    Json,
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
    if let Command::Files {
        admin_listen: Some(addr),
        ..
    } = &cli.command
    {
        flags["admin"] = json!({ "listen": addr.to_string() });
    }
    let cfg: IngestConfig = config::load(&IngestConfig::default(), cli.config.as_deref(), &flags)?;
    cfg.validate()?;
    telemetry::init_logging(&cfg.log);
    let shutdown = shutdown::on_signals();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;

    match cli.command {
        Command::Files {
            paths,
            summary,
            admin_listen,
        } => {
            if admin_listen.is_some() {
                telemetry::serve_admin(
                    cfg.admin.listen,
                    registry,
                    telemetry::Health::default(),
                    shutdown.clone(),
                )
                .await?;
            }
            kafka::ensure_topics(
                &cfg.kafka,
                &[&cfg.kafka.topics.activities, &cfg.kafka.topics.dlq],
                &[],
            )
            .await
            .context("creating topics")?;
            let producer = kafka::producer(&cfg.kafka, "trailguard-ingest", 5)?;
            let mut publisher = Publisher::new(producer, &cfg, "files", metrics);
            let inputs: Vec<Input> = paths.iter().map(|p| Input::parse(p)).collect();
            let result = files::run(&inputs, &mut publisher, &shutdown).await?;
            match summary {
                SummaryFormat::Text => println!("{result}"),
                SummaryFormat::Json => println!("{}", serde_json::to_string(&result)?),
            }
            shutdown.cancel();
            Ok(if result.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
