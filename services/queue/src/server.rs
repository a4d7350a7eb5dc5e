//! Wiring: builds the app from the arguments, starts the background tasks (config reload, stream
//! ticker, admission loop, limiter cleanup) and serves until `shutdown` resolves, then drains
//! (`tiketi_shared::http::serve_draining`): /readyz turns 503, after the drain delay the listener
//! closes, streams end (clients reconnect elsewhere) and in-flight requests finish, the admission
//! lease is released.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tiketi_shared::http::{Drain, serve_draining};
use tiketi_shared::supervise::{Supervisor, shutdown_or_loop_ended};
use tiketi_shared::token::{AdmissionKeys, UserVerifier, check_signing_key};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{self, AdmissionSettings};
use crate::cli::ServeArgs;
use crate::events::Events;
use crate::http::{App, limiter, router};
use crate::hub::{Hub, HubSettings};
use crate::metrics::Metrics;
use crate::store::Store;

pub async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let ServeArgs {
        listen: _,
        redis,
        jwt_secret,
        admission_secret,
        event_config,
        redis_timeout,
        admission,
        admission_tick,
        lease_ttl,
        rate_limit_user,
        rate_limit_ip,
        trusted_proxy_hops,
        stream_tick,
        stream_refresh_budget,
        max_streams,
        drain_delay,
        shutdown_timeout,
        replica_id,
    } = args;
    let jwt_secret = jwt_secret.context("TIKETI_JWT_SECRET (--jwt-secret) is required")?;
    let admission_secret =
        admission_secret.context("TIKETI_ADMISSION_SECRET (--admission-secret) is required")?;
    check_signing_key("TIKETI_JWT_SECRET", jwt_secret.as_bytes()).map_err(anyhow::Error::msg)?;
    check_signing_key("TIKETI_ADMISSION_SECRET", admission_secret.as_bytes()).map_err(anyhow::Error::msg)?;
    let store = Store::new(&redis, redis_timeout).context("TIKETI_REDIS_URL")?;
    tracing::info!(redis = %redis.describe(), "redis");
    let events = Events::default();
    if let Some(path) = &event_config {
        events.reload(path);
    } else {
        tracing::warn!("TIKETI_EVENT_CONFIG is not set: no events are served");
    }
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let hub = Hub::new(metrics.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = Arc::new(App {
        store: store.clone(),
        events: events.clone(),
        verifier: UserVerifier::new(jwt_secret.as_bytes()),
        admission_keys: AdmissionKeys::new(admission_secret.as_bytes()),
        metrics: metrics.clone(),
        registry,
        hub: hub.clone(),
        draining: AtomicBool::new(false),
        stop: stop_rx.clone(),
        per_user: limiter(rate_limit_user),
        per_ip: limiter(rate_limit_ip),
        trusted_proxy_hops,
        max_streams,
    });

    // Every loop runs until shutdown; one that ends first shuts the replica down (see
    // `tiketi_shared::supervise`).
    let supervisor = Supervisor::new(stop_rx.clone());
    let mut tasks = Vec::new();
    if let Some(path) = event_config {
        let watcher = events.clone().watch(path, Duration::from_secs(2));
        let mut stop = stop_rx.clone();
        tasks.push(supervisor.spawn("config-reload", async move {
            tokio::select! { _ = watcher => {}, _ = stop.changed() => {} }
        }));
    }
    let hub_settings = HubSettings {
        tick: stream_tick.max(Duration::from_millis(50)),
        refresh_budget: stream_refresh_budget,
        refresh_after: Duration::from_secs(5),
        touch_every: Duration::from_secs(5),
    };
    tasks.push(supervisor.spawn(
        "stream-hub",
        hub.run(store.clone(), events.clone(), hub_settings, stop_rx.clone()),
    ));
    if admission {
        let holder = replica_id.unwrap_or_else(default_replica_id);
        tracing::info!(holder, "competing for admission leases");
        let settings = AdmissionSettings {
            holder,
            tick: admission_tick.max(Duration::from_millis(10)),
            lease_ttl: lease_ttl.max(Duration::from_millis(500)),
            sweep_every: Duration::from_secs(1),
        };
        tasks.push(supervisor.spawn(
            "admission",
            admission::run(
                store.clone(),
                events.clone(),
                metrics.clone(),
                settings,
                stop_rx.clone(),
            ),
        ));
    }
    {
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tasks.push(supervisor.spawn("limiter-cleanup", async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! { _ = every.tick() => {}, _ = stop.changed() => return }
                app.per_user.retain_recent();
                app.per_ip.retain_recent();
                app.per_user.shrink_to_fit();
                app.per_ip.shrink_to_fit();
            }
        }));
    }

    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "tiketi-queue listening");
    let draining = app.clone();
    serve_draining(
        listener,
        router(app),
        shutdown_or_loop_ended(shutdown, &supervisor),
        Drain {
            delay: drain_delay,
            timeout: shutdown_timeout,
        },
        move || draining.draining.store(true, Ordering::Relaxed),
        // Streams, the ticker and the admission loop stop with the listener.
        move || {
            let _ = stop_tx.send(true);
        },
    )
    .await
    .context("http server")?;
    // Let the admission loop release its leases so another replica takes over at once.
    let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(tasks)).await;
    if let Some(name) = supervisor.ended() {
        anyhow::bail!("background loop {name:?} ended before shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "queue".into());
    format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple())
}

/// Resolves on SIGTERM or Ctrl-C (`tiketi_shared::telemetry::shutdown_signal`).
pub async fn signal() {
    tiketi_shared::telemetry::shutdown_signal().await;
}
