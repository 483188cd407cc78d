//! `remediate`: applies governance actions for alerts. See `remediate --help`.

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;
use trailguard_common::cli::{set, CommonFlags};
use trailguard_common::{config, shutdown, telemetry};
use trailguard_remediate::{Metrics, RemediateConfig};

/// Trailguard remediate: consumes alerts and applies the governance actions their policies ask
/// for — in `off`, `dry-run` (the default) or `auto` mode per policy and action — never touching
/// protected targets, never acting twice on one alert, and publishing an action record for every
/// decision. Runs until SIGINT/SIGTERM.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    /// Address of the admin endpoint (/metrics, /healthz); default 127.0.0.1:9103.
    #[arg(long)]
    admin_listen: Option<String>,
    /// AWS endpoint override (a local AWS-API server); implies path-style S3 addressing.
    #[arg(long, env = "TRAILGUARD_AWS_ENDPOINT")]
    aws_endpoint: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Undo one applied action from its recorded prior state, and record the undo on the
    /// actions topic. ACTION_ID is the `id` of its action record.
    Undo {
        /// Id of the action record to undo.
        action_id: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("remediate: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut flags = cli.common.overlay();
    if let Some(listen) = &cli.admin_listen {
        set(&mut flags, "admin", "listen", json!(listen));
    }
    if let Some(endpoint) = &cli.aws_endpoint {
        flags["aws"] = json!({ "endpoint_url": endpoint, "force_path_style": true });
    }
    let cfg: RemediateConfig = config::load(
        &RemediateConfig::default(),
        cli.common.config.as_deref(),
        &flags,
    )?;
    cfg.validate()?;
    if cli.common.check_config {
        config::print_redacted(&cfg)?;
        return Ok(());
    }
    telemetry::init_logging(&cfg.log);
    if let Some(Command::Undo { action_id }) = &cli.command {
        let record = trailguard_remediate::undo(cfg, action_id).await?;
        println!(
            "{} {}: {}",
            record.outcome.as_str(),
            record.id,
            record.detail
        );
        for step in &record.steps {
            println!(
                "  {} {}{}",
                step.call,
                step.description,
                step.request_id
                    .as_deref()
                    .map(|id| format!(" (request {id})"))
                    .unwrap_or_default()
            );
        }
        if record.outcome != trailguard_common::contract::ActionOutcome::Applied {
            anyhow::bail!("undo of {action_id} did not complete");
        }
        return Ok(());
    }
    let shutdown = shutdown::on_signals();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry)?;
    trailguard_common::aws_calls::register_metrics(&registry)?;
    let health = telemetry::Health::default();
    let tasks = shutdown::Tasks::new(shutdown.clone());
    telemetry::serve_admin(cfg.admin.listen, registry, health.clone(), &tasks).await?;
    let result = trailguard_remediate::run(cfg, metrics, health.clone(), &tasks).await;
    health.set(false);
    shutdown.cancel();
    result?;
    match tasks.failure() {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}
