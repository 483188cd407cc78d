//! One cancellation token per process, cancelled by SIGINT or SIGTERM.

use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM. A second signal exits at
/// once (for a stuck drain).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining");
        trigger.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A service's background tasks (the admin endpoint, followers of other topics, refreshers),
/// supervised: one that fails cancels the service's shutdown token, so the service stops
/// instead of running on without it, and its error is what the service then reports
/// ([`Tasks::failure`]).
#[derive(Clone)]
pub struct Tasks {
    shutdown: CancellationToken,
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Tasks {
    /// Tasks that stop the service through `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks {
            shutdown,
            failure: Default::default(),
        }
    }

    /// The service's shutdown token.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs `task` in the background. If it fails or panics, the failure is logged and kept
    /// (the first one), and the service is stopped.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        use futures::FutureExt as _;
        let tasks = self.clone();
        tokio::spawn(async move {
            // The task's state is dropped with it: nothing observes it half-updated.
            let result = match std::panic::AssertUnwindSafe(task).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(format!("panicked: {what}"))
                }
            };
            if let Err(error) = result {
                tracing::error!(task = name, %error, "a background task failed: stopping");
                crate::sync::lock(&tasks.failure).get_or_insert(format!("{name}: {error}"));
                tasks.shutdown.cancel();
            }
        })
    }

    /// The first background task that failed, and why.
    pub fn failure(&self) -> Option<String> {
        crate::sync::lock(&self.failure).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_task_stops_the_service_with_its_error() {
        let tasks = Tasks::new(CancellationToken::new());
        let fine = tasks.spawn("fine", async { Ok(()) });
        let _ = fine.await;
        assert!(!tasks.shutdown().is_cancelled());
        assert_eq!(tasks.failure(), None);
        let failed = tasks.spawn("follower", async { Err("lost the topic".to_string()) });
        let _ = failed.await;
        assert!(tasks.shutdown().is_cancelled());
        assert_eq!(tasks.failure().as_deref(), Some("follower: lost the topic"));
    }
    /// A task that panics has failed too: it must not vanish while the service runs on
    /// without it.
    #[tokio::test]
    async fn a_panicking_task_stops_the_service() {
        let tasks = Tasks::new(CancellationToken::new());
        let panicked = tasks.spawn("refresher", async {
            let lists: Vec<u8> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            let _ = lists[1];
            Ok(())
        });
        let _ = panicked.await;
        assert!(tasks.shutdown().is_cancelled());
        let failure = tasks.failure().unwrap_or_default();
        assert!(failure.starts_with("refresher: panicked"), "{failure}");
    }
}
