//! Wiring: build the state from [`Settings`], start serving at once (health before readiness),
//! initialise the database in the background with retries, keep counts published, and drain on
//! shutdown (`tiketi_shared::http::serve_draining`): readiness drops first, then the listener
//! closes, then in-flight requests finish.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tiketi_shared::http::{Drain, serve_draining};
use tiketi_shared::supervise::{Supervisor, shutdown_or_loop_ended};
use tiketi_shared::token::{AdmissionKeys, UserVerifier};
use tokio::net::TcpListener;
use tokio::sync::RwLock;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::redis_store::HoldStore;
use crate::service::AppState;
use crate::settings::Settings;

/// Builds the shared state. Reads and validates the event configuration (a broken file is a
/// start-up error, not a half-working service); opens no connection yet.
pub fn build_state(settings: &Settings) -> anyhow::Result<Arc<AppState>> {
    let Settings {
        listen: _,
        redis,
        jwt_secret,
        admission_secret,
        event_config,
        database_url,
        database_read_url,
        database_max_connections,
        claim_batch,
        redis_timeout,
        database_timeout,
        read_cache_ttl,
        max_inflight,
        drain_delay: _,
        shutdown_timeout: _,
    } = settings;
    tiketi_shared::token::check_signing_key("TIKETI_JWT_SECRET", jwt_secret.as_bytes())
        .map_err(anyhow::Error::msg)?;
    tiketi_shared::token::check_signing_key("TIKETI_ADMISSION_SECRET", admission_secret.as_bytes())
        .map_err(anyhow::Error::msg)?;
    let configs: BTreeMap<_, _> = tiketi_shared::config::load(event_config)
        .with_context(|| format!("loading TIKETI_EVENT_CONFIG {}", event_config.display()))?;
    if configs.is_empty() {
        tracing::warn!(path = %event_config.display(), "no event configured; only probes will answer usefully");
    }
    let db = Db::new(
        database_url,
        database_read_url.as_deref(),
        *database_max_connections,
        *database_timeout,
        usize::from(*claim_batch),
    )
    .context("TIKETI_DATABASE_URL / TIKETI_DATABASE_READ_URL")?;
    tracing::info!(redis = %redis.describe(), "redis");
    let redis = HoldStore::new(redis, *redis_timeout).context("TIKETI_REDIS_URL")?;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    Ok(Arc::new(AppState {
        db,
        redis,
        users: UserVerifier::new(jwt_secret.as_bytes()),
        admission: AdmissionKeys::new(admission_secret.as_bytes()),
        metrics,
        registry,
        configs,
        events: RwLock::new(HashMap::new()),
        initialized: AtomicBool::new(false),
        redis_answered: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        cache_ttl: *read_cache_ttl,
        inflight: Arc::new(tokio::sync::Semaphore::new((*max_inflight).max(1))),
        inflight_wait: *redis_timeout,
    }))
}

/// Retries initialisation until it succeeds (PostgreSQL may come up after us).
async fn initialize_until_done(state: Arc<AppState>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match state.initialize().await {
            Ok(()) => {
                tracing::info!("migrations applied and inventory loaded; ready");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "initialisation failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn publish_counts_forever(state: Arc<AppState>) {
    let period = state.cache_ttl.max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.initialized.load(Ordering::Acquire) {
            state.publish_all_counts().await;
        }
    }
}

/// Keeps the hot database connections open, warm and tested while the replica is quiet (see
/// `db::hot`). A failure (PostgreSQL unreachable) is retried on the next tick; requests report
/// the outage themselves.
async fn keep_hot_connections(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Db::TEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.initialized.load(Ordering::Acquire)
            && let Err(e) = state.db.tend_hot().await
        {
            tracing::debug!(error = %e, "keeping the hot database connections");
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(&settings)?;
    let init = tokio::spawn(initialize_until_done(state.clone()));
    // The publisher and the keeper run until shutdown; one that ends first shuts the replica
    // down (see `tiketi_shared::supervise`). They never see the stop: they are aborted.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let supervisor = Supervisor::new(stopping);
    let publisher = supervisor.spawn("count-publisher", publish_counts_forever(state.clone()));
    let keeper = supervisor.spawn("connection-keeper", keep_hot_connections(state.clone()));
    let request_timeout = (settings.database_timeout * 3).max(Duration::from_secs(5));
    let app = crate::api::router(state.clone(), request_timeout);
    let drain = Drain {
        delay: settings.drain_delay,
        timeout: settings.shutdown_timeout,
    };
    let result = serve_draining(
        listener,
        app,
        shutdown_or_loop_ended(shutdown, &supervisor),
        drain,
        move || state.draining.store(true, Ordering::Release),
        || {},
    )
    .await
    .context("http server");
    let ended = supervisor.ended();
    let _ = stopping_tx.send(true);
    init.abort();
    publisher.abort();
    keeper.abort();
    if let Some(name) = ended {
        anyhow::bail!("background loop {name:?} ended before shutdown");
    }
    result.map(drop)
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let listener = tiketi_shared::net::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    tracing::info!(listen = %settings.listen, "tiketi-reservation listening");
    serve(settings, listener, tiketi_shared::telemetry::shutdown_signal()).await
}
