//! Supervised tasks: a panic in a spawned task is logged, counted
//! (`tiketi_operator_panics_total{task}`) and recorded, and a recorded failure makes `/healthz`
//! and `/readyz` fail, so the kubelet restarts the process instead of leaving a Ready leader
//! whose autoscaler loop is gone.

use std::any::Any;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::FutureExt as _;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, TaskLabels};

/// The tasks that died, with why. Cheap to clone; shared with the probe server.
#[derive(Clone, Default, Debug)]
pub struct Failures(Arc<Mutex<Vec<String>>>);

impl Failures {
    pub fn record(&self, what: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(what);
    }

    pub fn is_empty(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// `task autoscaler panicked: …`, None while every task runs.
    pub fn describe(&self) -> Option<String> {
        let dead = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (!dead.is_empty()).then(|| dead.join("; "))
    }
}

/// The text of a panic payload (`&str` or `String`, else a placeholder).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Spawns `fut` as task `name`; a panic is caught, logged, counted and recorded in `failed`.
pub fn spawn<F>(name: &'static str, fut: F, failed: &Failures, metrics: &Metrics) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let failed = failed.clone();
    let panics = metrics.panics.get_or_create(&TaskLabels { task: name }).clone();
    tokio::spawn(async move {
        if let Err(payload) = std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            let message = panic_message(payload.as_ref());
            panics.inc();
            tracing::error!(task = name, panic = %message, "task panicked; /healthz and /readyz now fail");
            failed.record(format!("task {name} panicked: {message}"));
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_recorded() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let failed = Failures::default();
        spawn("ok", async {}, &failed, &metrics).await.unwrap();
        assert!(failed.is_empty());
        let overflow = std::hint::black_box(u64::MAX);
        spawn(
            "autoscaler",
            async move {
                let d = std::time::Duration::from_secs(overflow);
                let _ = d * 2;
            },
            &failed,
            &metrics,
        )
        .await
        .unwrap();
        let text = failed.describe().unwrap();
        assert!(text.starts_with("task autoscaler panicked: "), "{text}");
        assert!(text.contains("overflow"), "{text}");
        assert_eq!(
            metrics
                .panics
                .get_or_create(&TaskLabels { task: "autoscaler" })
                .get(),
            1
        );
    }
}
