//! One axum server for `/metrics` (Prometheus text), `/healthz` (the process is up) and `/readyz`
//! (initial watches synced and leader state known — kubert's notion of "initialized").

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::leader::LeaderState;

/// What `/readyz` (and, for dead tasks, `/healthz`) look at.
#[derive(Clone)]
pub struct Readiness {
    pub watches_synced: Arc<AtomicBool>,
    pub leader: LeaderState,
    /// Supervised tasks that died: the process can no longer do its job, so both probes fail and
    /// the kubelet restarts it (never a Ready, leading process with a dead autoscaler).
    pub failed: crate::supervise::Failures,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.watches_synced.load(Ordering::Acquire) && self.leader.known() && self.failed.is_empty()
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, readiness })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    tiketi_shared::http::metrics_response(&state.registry)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.readiness.failed.describe() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(dead) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {dead}")),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let r = &state.readiness;
    if r.is_ready() {
        (StatusCode::OK, "ready".to_string())
    } else {
        let why = format!(
            "not ready: watches synced={}, leader state known={}{}",
            r.watches_synced.load(Ordering::Acquire),
            r.leader.known(),
            r.failed.describe().map(|d| format!(", {d}")).unwrap_or_default()
        );
        (StatusCode::SERVICE_UNAVAILABLE, why)
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tiketi_shared::net::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_follow_watches_leader_state_and_dead_tasks() {
        let mut registry = Registry::default();
        let _m = crate::metrics::Metrics::register(&mut registry);
        let synced = Arc::new(AtomicBool::new(false));
        let failed = crate::supervise::Failures::default();
        let readiness = Readiness {
            watches_synced: synced.clone(),
            leader: LeaderState::always(),
            failed: failed.clone(),
        };
        let app = router(Arc::new(registry), readiness);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        synced.store(true, Ordering::Release);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        // A dead task fails both probes, naming it.
        failed.record("task autoscaler panicked: boom".into());
        let health = get("/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 503") && health.contains("task autoscaler panicked"),
            "{health}"
        );
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        let m = get("/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200") && m.contains("tiketi_operator_reconciliations_total"),
            "{m}"
        );
    }
}
