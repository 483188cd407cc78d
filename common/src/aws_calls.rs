//! Every AWS call the services make goes through [`CallRecorder`], an SDK interceptor that
//! counts it by service, operation and outcome (`ok`, `throttled`, `error`) and times it, for
//! the `trailguard_aws_*` metrics. With `TRAILGUARD_AWS_CALL_LOG` set it also appends
//! `binary<TAB>service<TAB>operation` to that file: the test suite checks every call made
//! against the service's IAM policy in `deploy/iam/`.

use std::io::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The environment variable naming the call log.
pub const CALL_LOG_ENV: &str = "TRAILGUARD_AWS_CALL_LOG";

/// Fault injection for the crash tests: with `TRAILGUARD_FAULT_EXIT_AFTER=iam:PutUserPolicy`
/// (service and operation, as in the call log) the process exits with status 86 right after
/// the first successful call of that operation, as a crash would stop it: nothing after the
/// call runs, no record is written, nothing is flushed. Never set it in production; the
/// services log a warning at start-up when it is set.
pub const FAULT_EXIT_AFTER_ENV: &str = "TRAILGUARD_FAULT_EXIT_AFTER";

/// The call the process exits after, when fault injection is on (see [`FAULT_EXIT_AFTER_ENV`]).
pub fn fault_exit_after() -> Option<&'static str> {
    static CALL: OnceLock<Option<String>> = OnceLock::new();
    CALL.get_or_init(|| {
        std::env::var(FAULT_EXIT_AFTER_ENV)
            .ok()
            .filter(|v| !v.is_empty())
    })
    .as_deref()
}

struct CallMetrics {
    calls: IntCounterVec,
    seconds: HistogramVec,
}

static METRICS: OnceLock<CallMetrics> = OnceLock::new();

/// Registers the AWS call metrics in `registry` (once per process; later calls are no-ops).
pub fn register_metrics(registry: &Registry) -> Result<(), prometheus::Error> {
    if METRICS.get().is_some() {
        return Ok(());
    }
    let calls = IntCounterVec::new(
        Opts::new(
            "trailguard_aws_calls_total",
            "AWS API calls, by service, operation and outcome (ok, throttled, error).",
        ),
        &["service", "operation", "outcome"],
    )?;
    let seconds = HistogramVec::new(
        HistogramOpts::new(
            "trailguard_aws_call_seconds",
            "Duration of AWS API calls including the SDK's retries, by service.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["service"],
    )?;
    registry.register(Box::new(calls.clone()))?;
    registry.register(Box::new(seconds.clone()))?;
    let _ = METRICS.set(CallMetrics { calls, seconds });
    Ok(())
}

/// The SDK interceptor; add it to every client's config.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallRecorder;

#[derive(Debug, Clone)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// Throttling as the services spell it, across protocols.
fn is_throttle(text: &str) -> bool {
    [
        "Throttl",
        "TooManyRequests",
        "RequestLimitExceeded",
        "SlowDown",
        "RequestThrottled",
        "ProvisionedThroughputExceeded",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

fn binary() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unknown".into())
    })
}

fn log_call(service: &str, operation: &str) {
    let Some(path) = std::env::var_os(CALL_LOG_ENV) else {
        return;
    };
    append_line(std::path::Path::new(&path), binary(), service, operation);
}

/// Appends `binary\tservice\toperation` to the log at `path` in one `write` (`writeln!` on a
/// file writes each piece separately, and other processes' appends land between them).
fn append_line(path: &std::path::Path, binary: &str, service: &str, operation: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let line = format!("{binary}\t{service}\t{operation}\n");
        let _ = file.write_all(line.as_bytes());
    }
}

impl Intercept for CallRecorder {
    fn name(&self) -> &'static str {
        "TrailguardCallRecorder"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = match cfg.load::<Metadata>() {
            Some(m) => (m.service().to_ascii_lowercase(), m.name().to_string()),
            None => ("unknown".to_string(), "unknown".to_string()),
        };
        log_call(&service, &operation);
        if let Some(call) = fault_exit_after() {
            if matches!(context.output_or_error(), Some(Ok(_)))
                && call.split_once(':') == Some((service.as_str(), operation.as_str()))
            {
                eprintln!("{FAULT_EXIT_AFTER_ENV}: exiting after {call}, as a crash would");
                std::process::exit(86);
            }
        }
        let Some(metrics) = METRICS.get() else {
            return Ok(());
        };
        let status = context.response().map(|r| r.status().as_u16());
        let outcome = match context.output_or_error() {
            Some(Ok(_)) => "ok",
            Some(Err(err)) if status == Some(429) || is_throttle(&format!("{err:?}")) => {
                "throttled"
            }
            Some(Err(_)) | None => "error",
        };
        metrics
            .calls
            .with_label_values(&[&service, &operation, outcome])
            .inc();
        if let Some(started) = cfg.load::<Started>() {
            metrics
                .seconds
                .with_label_values(&[&service])
                .observe(started.0.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every service of a test run appends to one log at once: each line must arrive whole
    /// (a line split across writes interleaved with another process's, `ingestingest`, failed
    /// the IAM check in CI).
    #[test]
    fn concurrent_appends_keep_lines_whole() {
        let path = std::env::temp_dir().join(format!("calls-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        append_line(&path, &format!("svc{w}"), "s3", "GetObject");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                let parts: Vec<&str> = l.split('\t').collect();
                parts.len() != 3 || !parts[0].starts_with("svc") || parts[0].len() != 4
            })
            .collect();
        assert_eq!(text.lines().count(), 16_000);
        assert!(
            bad.is_empty(),
            "{} torn lines, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        );
    }

    #[test]
    fn throttling_is_recognised_in_every_spelling() {
        assert!(is_throttle("code: Some(\"Throttling\")"));
        assert!(is_throttle("ThrottlingException"));
        assert!(is_throttle("SlowDown"));
        assert!(is_throttle("TooManyRequestsException"));
        assert!(!is_throttle("AccessDenied"));
    }
}
