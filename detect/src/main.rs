//! `detect`: evaluates Trailguard's policies over the activities topic. See `detect --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rdkafka::message::{Headers, Message};
use serde_json::json;
use trailguard_common::cli::{set, CommonFlags};
use trailguard_common::contract::printable;
use trailguard_common::{config, kafka, shutdown, telemetry, ActionRecord, Alert};
use trailguard_detect::{DetectConfig, Metrics};

/// Per-principal state is many small allocations; mimalloc keeps them fast and compact.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Trailguard detect: consumes activities, evaluates the activity, file, anomaly, custom and Sigma
/// policies on event time, and publishes signed alerts. Runs until SIGINT/SIGTERM, then drains,
/// commits and exits.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    common: CommonFlags,
    /// Address of the admin endpoint (/metrics, /healthz); default 127.0.0.1:9102.
    #[arg(long)]
    admin_listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a Trailguard topic as a person reads it: alerts, actions, activities or dead
    /// letters, as they arrive.
    Tail {
        /// Which topic.
        #[arg(value_enum)]
        topic: TailTopic,
        /// Start from the beginning instead of from new records.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<usize>,
        /// Stop when nothing arrives for this many seconds.
        #[arg(long)]
        idle_seconds: Option<u64>,
        /// Print raw JSON instead of readable lines.
        #[arg(long)]
        json: bool,
    },
    /// Run the configured policies (built-in, custom, Sigma) over CloudTrail log files or the
    /// activities topic's retained range, offline — nothing is published, no group offsets
    /// move — and print what would have fired, per policy.
    #[command(group(clap::ArgGroup::new("input").required(true).args(["files", "since"])))]
    Backtest {
        /// CloudTrail log files or directories (as `ingest files` reads them).
        #[arg(long, num_args = 1..)]
        files: Vec<std::path::PathBuf>,
        /// Read the activities topic from records published this long ago (e.g. `24h`, `7d`).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// With `--since`: stop at records published after this time (RFC 3339); default: the
        /// end of the topic when the backtest starts.
        #[arg(long, requires = "since")]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// Only this policy's alerts.
        #[arg(long)]
        only: Option<String>,
        /// Also run this (older) configuration and print the alerts the current one adds and
        /// removes.
        #[arg(long, value_name = "OLD_CONFIG")]
        diff: Option<std::path::PathBuf>,
        /// Print JSON (one document) for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TailTopic {
    Alerts,
    Actions,
    Activities,
    Dlq,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("detect: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut flags = cli.common.overlay();
    if let Some(listen) = &cli.admin_listen {
        set(&mut flags, "admin", "listen", json!(listen));
    }
    let cfg: DetectConfig = config::load(
        &DetectConfig::default(),
        cli.common.config.as_deref(),
        &flags,
    )?;
    cfg.validate()?;
    if cli.common.check_config {
        config::print_redacted(&cfg)?;
        // The Sigma rules as detect would load them (an unsupported one fails here too).
        if !cfg.policies.sigma.paths.is_empty() {
            let sigma = trailguard_detect::sigma::SigmaRules::load(&cfg.policies.sigma)?;
            println!(
                "# Sigma: {} rules and {} correlations loaded, {} skipped, {} files for other log sources",
                sigma.rules().len(),
                sigma.correlations().len(),
                sigma.skipped().len(),
                sigma.other_sources()
            );
            let (names, open) = sigma.routing();
            println!(
                "# Sigma: routed by event name into {names} engines, {open} rules evaluated for every activity"
            );
            for rule in sigma.rules() {
                println!(
                    "# loaded  {}  {}  {}{}  ({})",
                    rule.policy_id,
                    rule.severity.as_str(),
                    printable(&rule.title),
                    if rule.generates {
                        ""
                    } else {
                        "  [alerts only through its correlations]"
                    },
                    rule.file.display()
                );
            }
            for corr in sigma.correlations() {
                println!(
                    "# loaded  {}  {}  {}  [{} over {} rules within {}s]  ({})",
                    corr.policy_id,
                    corr.severity.as_str(),
                    printable(&corr.title),
                    corr.kind.as_str(),
                    corr.rules.len(),
                    corr.span.num_seconds(),
                    corr.file.display()
                );
            }
            for skipped in sigma.skipped() {
                println!(
                    "# skipped {}  {}  ({})",
                    printable(&skipped.rule),
                    printable(&skipped.reason),
                    skipped.file.display()
                );
            }
        }
        return Ok(());
    }
    telemetry::init_logging(&cfg.log);
    let shutdown = shutdown::on_signals();
    match cli.command {
        None => {
            let registry = prometheus::Registry::new();
            let metrics = Metrics::new(&registry)?;
            let health = telemetry::Health::default();
            let tasks = shutdown::Tasks::new(shutdown.clone());
            telemetry::serve_admin(cfg.admin.listen, registry, health.clone(), &tasks).await?;
            let result =
                trailguard_detect::run(cfg, metrics, health.clone(), shutdown.clone()).await;
            health.set(false);
            shutdown.cancel();
            result?;
            match tasks.failure() {
                Some(failure) => Err(anyhow::anyhow!(failure)),
                None => Ok(()),
            }
        }
        Some(Command::Backtest {
            files,
            since,
            until,
            only,
            diff,
            json,
        }) => {
            // Nothing to drain or commit: the first Ctrl-C (or SIGTERM) ends a backtest
            // (the handler above would wait for a second, the work not being cancellable).
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    shutdown.cancelled().await;
                    eprintln!("backtest interrupted");
                    std::process::exit(130);
                }
            });
            let input = match since {
                Some(since) => Input::Topic {
                    since: chrono::Duration::from_std(since)
                        .ok()
                        .and_then(|d| chrono::Utc::now().checked_sub_signed(d))
                        .ok_or_else(|| anyhow::anyhow!("--since: too long ago"))?,
                    until,
                },
                None => Input::Files(files),
            };
            backtest(&cfg, &flags, &input, only.as_deref(), diff.as_deref(), json).await
        }
        Some(Command::Tail {
            topic,
            from_beginning,
            count,
            idle_seconds,
            json,
        }) => {
            let topics = &cfg.kafka.topics;
            let name = match topic {
                TailTopic::Alerts => &topics.alerts,
                TailTopic::Actions => &topics.actions,
                TailTopic::Activities => &topics.activities,
                TailTopic::Dlq => &topics.dlq,
            };
            let mut seen = 0usize;
            let idle = idle_seconds.map(Duration::from_secs);
            kafka::follow(
                &cfg.kafka,
                name,
                from_beginning,
                idle,
                &shutdown,
                |message| {
                    let payload = message.payload().unwrap_or_default();
                    let line = match topic {
                        // Raw text from a topic: escaped, so it cannot drive the terminal.
                        TailTopic::Activities if json => {
                            printable(&activity_text(payload)).into_owned()
                        }
                        _ if json => printable(&String::from_utf8_lossy(payload)).into_owned(),
                        TailTopic::Alerts => serde_json::from_slice::<Alert>(payload)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|e| format!("(not an alert: {e})")),
                        TailTopic::Actions => serde_json::from_slice::<ActionRecord>(payload)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|e| format!("(not an action record: {e})")),
                        TailTopic::Activities => printable(&activity_text(payload)).into_owned(),
                        TailTopic::Dlq => {
                            let mut text = String::from("DEAD LETTER");
                            if let Some(headers) = message.headers() {
                                for header in headers.iter() {
                                    let value = header
                                        .value
                                        .map(String::from_utf8_lossy)
                                        .unwrap_or_default();
                                    text.push_str(&format!(" {}={value:?}", printable(header.key)));
                                }
                            }
                            text.push_str(&format!(" ({} bytes)", payload.len()));
                            text
                        }
                    };
                    println!("{line}");
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                },
            )
            .await?;
            Ok(())
        }
    }
}

/// What a backtest reads.
enum Input {
    Files(Vec<std::path::PathBuf>),
    Topic {
        since: chrono::DateTime<chrono::Utc>,
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// An activities-topic message as text: its JSON as it is, a compact one decoded to its JSON
/// (docs/wire.md), or why it cannot be.
fn activity_text(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    if !trailguard_common::compact::is_compact(payload) {
        return String::from_utf8_lossy(payload);
    }
    match trailguard_common::compact::decode(payload) {
        Ok(activity) => serde_json::to_string(&activity)
            .unwrap_or_else(|e| format!("(not an activity: {e})"))
            .into(),
        Err(e) => format!("(not an activity: compact, {e})").into(),
    }
}

/// `detect backtest`: the policies of `cfg` (and of `diff`, an older configuration) over
/// `input`, offline.
async fn backtest(
    cfg: &DetectConfig,
    flags: &serde_json::Value,
    input: &Input,
    only: Option<&str>,
    diff: Option<&std::path::Path>,
    json_out: bool,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    use trailguard_detect::backtest;
    let mut enricher = trailguard_detect::offline_enricher(cfg).await?;
    let run = |cfg: &DetectConfig, enricher: &mut trailguard_detect::enrich::Enricher| {
        let sigma = std::sync::Arc::new(trailguard_detect::sigma::SigmaRules::load(
            &cfg.policies.sigma,
        )?);
        // Progress on a terminal: records read.
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} {pos} records evaluated ({per_sec}) {elapsed}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let progress = |n: u64| {
            if let Some(bar) = &bar {
                if n.is_multiple_of(1024) {
                    bar.set_position(n);
                }
            }
        };
        let report = match input {
            Input::Files(files) => backtest::run_files(cfg, sigma, enricher, files, progress),
            Input::Topic { since, until } => {
                backtest::run_topic(cfg, sigma, enricher, *since, *until, progress)
            }
        }
        .map_err(anyhow::Error::msg)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        anyhow::Ok(report)
    };
    let report = run(cfg, &mut enricher)?;
    let old = match diff {
        Some(path) => {
            let old: DetectConfig = config::load(&DetectConfig::default(), Some(path), flags)?;
            old.validate()?;
            Some(run(&old, &mut enricher)?)
        }
        None => None,
    };
    let counts = format!(
        "{} records, {} activities, {} repeats, {} rejected",
        report.records, report.activities, report.duplicates, report.rejected
    );
    match old {
        None => {
            let hits = report.by_policy(only);
            if json_out {
                let alerts: Vec<serde_json::Value> = report
                    .alerts
                    .iter()
                    .filter(|a| only.is_none_or(|p| a.policy_id == p))
                    .map(|a| {
                        json!({"id": a.id, "policy": a.policy_id, "severity": a.severity,
                        "time": a.time, "entity": a.entity, "occurrences": a.occurrences,
                        "summary": a.evidence.summary, "account_id": a.account_id,
                        "actor": a.actor.as_ref().map(|x| &x.id),
                        "principal": a.principal.as_ref().and_then(|p| p.arn.as_ref())})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"read": &report, "policies": hits, "alerts": alerts})
                );
            } else {
                println!(
                    "backtest: {counts}; {} alerts from {} policies",
                    hits.iter().map(|h| h.alerts).sum::<usize>(),
                    hits.len()
                );
                print_hits(&hits);
            }
        }
        Some(old) => {
            let (added, removed) = backtest::diff(&report, &old, only);
            if json_out {
                println!(
                    "{}",
                    json!({"read": &report, "added": added, "removed": removed})
                );
            } else {
                println!("backtest: {counts}");
                println!(
                    "added by this configuration: {} alerts",
                    added.iter().map(|h| h.alerts).sum::<usize>()
                );
                print_hits(&added);
                println!(
                    "removed (only with {}): {} alerts",
                    diff.map(|d| d.display().to_string()).unwrap_or_default(),
                    removed.iter().map(|h| h.alerts).sum::<usize>()
                );
                print_hits(&removed);
            }
        }
    }
    Ok(())
}

fn print_hits(hits: &[trailguard_detect::backtest::PolicyHits]) {
    for h in hits {
        println!(
            "  {:<44} {:>6} alerts {:>5} entities  {} .. {}",
            printable(&h.policy),
            h.alerts,
            h.entities,
            h.first.format("%Y-%m-%d %H:%M:%S"),
            h.last.format("%Y-%m-%d %H:%M:%S")
        );
        println!("      e.g. {}", printable(&h.sample));
    }
}
