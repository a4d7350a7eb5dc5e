//! The admission loop. Every replica runs it; for each event exactly one replica at a time holds
//! the Redis lease (SET NX PX + a fencing counter INCR'd per term) and does the event's periodic
//! work: the pre-queue shuffle at the on-sale instant, admitting at most `ratePerSecond` users per
//! second while keeping at most `maxActive` admitted, expiring admissions, and dropping waiting
//! users whose heartbeat lapsed. Every write script re-checks the lease holder and fence inside
//! Redis, so a replica that lost its lease (paused, partitioned) cannot admit even one more user.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;
use tiketi_shared::config::EventConfig;
use tiketi_shared::keys::EventKeys;
use tokio::sync::watch;

use crate::events::Events;
use crate::metrics::{Metrics, ReasonLabel};
use crate::shuffle::shuffle;
use crate::store::{AdmitOutcome, ShuffleOutcome, Store, StoreError, SweepOutcome};

#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    pub holder: String,
    pub tick: Duration,
    pub lease_ttl: Duration,
    pub sweep_every: Duration,
}

#[derive(Debug, Default)]
struct Term {
    fence: Option<u64>,
    shuffled: bool,
    /// No heartbeat sweep before this instant: after taking over, or after a Redis outage during
    /// which nobody could heartbeat, every waiting user gets a full timeout to show up again.
    sweep_not_before: Option<Instant>,
    last_sweep: Option<Instant>,
    /// The heartbeat timeout of the last step (see [`grace_for_a_shorter_timeout`]).
    timeout: Option<Duration>,
}

/// A heartbeat timeout shortened mid-sale (a configuration change) must not sweep people who
/// polled as they were told under the old one (`pollAfterSeconds` is up to a third of it): no
/// sweep until the old timeout has passed since the change, by which time everyone still waiting
/// has polled under the new one.
fn grace_for_a_shorter_timeout(term: &mut Term, timeout: Duration, now: Instant) {
    if let Some(old) = term.timeout.filter(|old| timeout < *old) {
        let until = now + old;
        term.sweep_not_before = Some(term.sweep_not_before.map_or(until, |t| t.max(until)));
    }
    term.timeout = Some(timeout);
}

/// Runs each configured event's admission in a task of its own, each on its own tick: one event
/// whose Redis shard is failing over (every call waiting out its bound) must not slow the others'
/// admission or let their leases lapse. Returns on `stop` once every event's task has released
/// its lease; also returns, so the replica drains and restarts, if an event's task panicked.
pub async fn run(
    store: Store,
    events: Events,
    metrics: Metrics,
    settings: AdmissionSettings,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut interval = ticker(settings.tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        let configs = events.snapshot();
        for (event, task) in tasks.extract_if(|_, task| task.is_finished()) {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(event, "the admission of this event panicked");
                return;
            }
        }
        // A task ends by itself when its event leaves the configuration; one for each event.
        for event in configs.keys() {
            if !tasks.contains_key(event) {
                let task = admit_event(
                    store.clone(),
                    events.clone(),
                    metrics.clone(),
                    settings.clone(),
                    event.clone(),
                    stop.clone(),
                );
                tasks.insert(event.clone(), tokio::spawn(task));
            }
        }
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
}

/// One event's admission until `stop` or until the event leaves the configuration; then its
/// lease is given back.
async fn admit_event(
    store: Store,
    events: Events,
    metrics: Metrics,
    settings: AdmissionSettings,
    event: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut term = Term::default();
    let mut interval = ticker(settings.tick);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        let Some(cfg) = events.get(&event) else { break };
        if let Err(e) = step(&store, &metrics, &settings, &cfg, &mut term).await {
            metrics
                .redis_errors
                .get_or_create(&ReasonLabel { reason: e.reason() })
                .inc();
            tracing::warn!(event, error = %e, "admission step failed");
            term.sweep_not_before = Some(Instant::now() + heartbeat_timeout(&cfg));
        }
    }
    if term.fence.is_some() {
        match store.release(&EventKeys::new(&event), &settings.holder).await {
            Ok(()) => tracing::info!(event, "admission lease released"),
            Err(e) => {
                tracing::warn!(event, error = %e, "admission lease not released; it expires by itself")
            }
        }
        metrics.leader.get_or_create(&Metrics::event(&event)).set(0);
    }
}

/// A tick every `period` that waits rather than bursts after a slow step.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

fn heartbeat_timeout(cfg: &EventConfig) -> Duration {
    Duration::from_secs(cfg.queue.heartbeat_timeout_seconds)
}

async fn step(
    store: &Store,
    metrics: &Metrics,
    settings: &AdmissionSettings,
    cfg: &EventConfig,
    term: &mut Term,
) -> Result<(), StoreError> {
    let event = cfg.event_id.as_str();
    let keys = EventKeys::new(event);
    let label = Metrics::event(event);
    let fence = store.lease(&keys, &settings.holder, settings.lease_ttl).await?;
    if fence != term.fence {
        match fence {
            Some(f) => {
                tracing::info!(event, fence = f, holder = %settings.holder, "admission lease acquired");
                term.sweep_not_before = Some(Instant::now() + heartbeat_timeout(cfg));
                term.shuffled = false;
            }
            None => tracing::info!(event, holder = %settings.holder, "admission lease lost"),
        }
        term.fence = fence;
        metrics
            .leader
            .get_or_create(&label)
            .set(i64::from(fence.is_some()));
    }
    let Some(fence) = fence else { return Ok(()) };

    let now = chrono::Utc::now();
    let on_sale_ms = cfg.on_sale_at.timestamp_millis();
    if now >= cfg.on_sale_at && !term.shuffled {
        term.shuffled = shuffle_prequeue(store, &keys, &settings.holder, fence, on_sale_ms, event).await?;
    }
    let closed = cfg.sale_ends_at.is_some_and(|end| now >= end);
    if term.shuffled && !closed {
        let q = &cfg.queue;
        let outcome = store
            .admit(
                &keys,
                &settings.holder,
                fence,
                q.rate_per_second,
                q.max_active,
                Duration::from_secs(q.token_ttl_seconds),
                settings.tick * 2,
            )
            .await?;
        match outcome {
            AdmitOutcome::Admitted {
                admitted,
                active,
                depth,
            } => {
                if admitted > 0 {
                    metrics.admissions.get_or_create(&label).inc_by(admitted);
                    tracing::debug!(event, admitted, active, depth, "admitted");
                }
            }
            AdmitOutcome::NotShuffled => term.shuffled = false,
            AdmitOutcome::NotLeader => {
                term.fence = None;
                metrics.leader.get_or_create(&label).set(0);
            }
        }
    }
    grace_for_a_shorter_timeout(term, heartbeat_timeout(cfg), Instant::now());
    let sweep_due = term
        .last_sweep
        .is_none_or(|t| t.elapsed() >= settings.sweep_every);
    let in_grace = term.sweep_not_before.is_some_and(|t| Instant::now() < t);
    if term.fence.is_some() && sweep_due && !in_grace {
        term.last_sweep = Some(Instant::now());
        match store
            .sweep(&keys, &settings.holder, fence, heartbeat_timeout(cfg), 10_000)
            .await?
        {
            SweepOutcome::Dropped(0) => {}
            SweepOutcome::Dropped(dropped) => {
                metrics.dropped.get_or_create(&label).inc_by(dropped);
                tracing::info!(event, dropped, "dropped waiting users without heartbeat");
            }
            // Paused (heartbeats shed somewhere): once it resumes, every waiting user gets a
            // full timeout to heartbeat again before anyone is dropped.
            SweepOutcome::Paused => term.sweep_not_before = Some(Instant::now() + heartbeat_timeout(cfg)),
            SweepOutcome::NotLeader => {
                term.fence = None;
                metrics.leader.get_or_create(&label).set(0);
            }
        }
    }
    Ok(())
}

/// Returns whether the shuffle is done (now or before).
async fn shuffle_prequeue(
    store: &Store,
    keys: &EventKeys,
    holder: &str,
    fence: u64,
    on_sale_ms: i64,
    event: &str,
) -> Result<bool, StoreError> {
    if store.is_shuffled(keys).await? {
        return Ok(true);
    }
    // The pre-queue cannot grow once Redis time passes on-sale, so one retry is normally enough.
    for _ in 0..3 {
        let members = store.prequeue_members(keys).await?;
        let seed: u64 = rand::rng().random();
        let ordered = shuffle(&members, seed);
        match store
            .apply_shuffle(keys, holder, fence, seed, on_sale_ms, &ordered)
            .await?
        {
            ShuffleOutcome::Moved(n) => {
                tracing::info!(event, seed, users = n, fence, "pre-queue shuffled into the queue");
                return Ok(true);
            }
            ShuffleOutcome::AlreadyDone => return Ok(true),
            ShuffleOutcome::Changed => continue,
            ShuffleOutcome::TooEarly | ShuffleOutcome::NotLeader => return Ok(false),
        }
    }
    Ok(false)
}
