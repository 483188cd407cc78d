//! Logs, metrics and the admin endpoint (`/metrics`, `/healthz`).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::Error;

/// Installs the global `tracing` subscriber: JSON or pretty, filtered by `RUST_LOG` or
/// `log.level`. Logs go to stderr so stdout stays for the data a command prints.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Health served on `/healthz`: 200 `ok` while the service is up and no check reports a
/// problem; 503 with the problems otherwise.
#[derive(Clone, Debug)]
pub struct Health {
    up: Arc<AtomicBool>,
    /// Problems by the check that found them.
    problems: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: Arc::new(AtomicBool::new(true)),
            problems: Arc::default(),
        }
    }
}

impl Health {
    /// Marks the service as a whole up or not (not up: it is stopping or has failed).
    pub fn set(&self, healthy: bool) {
        self.up.store(healthy, Ordering::Relaxed);
    }

    /// Records what `check` found: a problem, or none (`None` clears an earlier one).
    pub fn report(&self, check: &'static str, problem: Option<String>) {
        let mut problems = crate::sync::lock(&self.problems);
        match problem {
            Some(problem) => problems.insert(check, problem),
            None => problems.remove(check),
        };
    }

    /// `None` when healthy, else why not.
    pub fn problems(&self) -> Option<String> {
        let problems = crate::sync::lock(&self.problems);
        let mut found: Vec<String> = problems.iter().map(|(c, p)| format!("{c}: {p}")).collect();
        if !self.up.load(Ordering::Relaxed) {
            found.insert(0, "the service is not running".into());
        }
        (!found.is_empty()).then(|| found.join("; "))
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    health: Health,
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buffer,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            err.to_string().into_bytes(),
        ),
    }
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.health.problems() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(problems) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {problems}\n"),
        ),
    }
}

/// Binds the admin endpoint and serves it until `shutdown`. Returns the bound address.
pub async fn serve_admin(
    listen: SocketAddr,
    registry: Registry,
    health: Health,
    tasks: &crate::shutdown::Tasks,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::config("admin.listen", format!("cannot bind {listen}: {e}")))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(AdminState { registry, health });
    let shutdown = tasks.shutdown().clone();
    tasks.spawn("admin endpoint", async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| e.to_string())
    });
    tracing::info!(%addr, "admin endpoint: /metrics and /healthz");
    Ok(addr)
}
