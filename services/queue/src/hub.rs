//! Live updates without a Redis query per stream per tick. One ticker per process reads a few
//! counters per event (one MULTI/EXEC round trip) and publishes them on a `watch` channel; each
//! open stream computes its own position from them.
//!
//! How a stream's position stays exact: a stream holds a *fix* — its 0-based rank and the
//! event's `admitted_total` read in the same atomic step. Admission only ever pops the head, so
//! every admission since the fix moved the stream up by exactly one:
//! `position = rank + 1 − (admitted_total_now − admitted_total_at_fix)`. Users ahead who leave or
//! are dropped are the one thing the counters cannot show, so the estimate is an upper bound
//! (never shows a better place than the truth) and fixes are refreshed on a bounded schedule:
//! each tick re-reads at most `refresh_budget` streams (ZRANK in the same atomic batch), oldest
//! fixes and streams at the head first. Redis work per tick is therefore at most
//! `5 + 3 × refresh_budget` commands per event, whatever the number of streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tiketi_shared::keys::EventKeys;
use tokio::sync::watch;

use crate::eta::RateEstimator;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::store::{EventCounters, Store, StreamFix};

/// What the ticker publishes per event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub counters: EventCounters,
    /// Measured admissions per second, once there is enough history.
    pub rate: Option<f64>,
    /// Increments every tick, so streams wake up even if nothing else changed.
    pub tick: u64,
}

/// A stream's last exact reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    pub standing: StreamFix,
    pub admitted_total_at: u64,
    pub at_ms: i64,
}

impl Fix {
    /// The 1-based position implied by this fix and the current counter; `None` when not waiting.
    /// Never below 1 while the user is believed waiting: reaching the head is confirmed by the
    /// next refresh, which a fix at the head gets with priority.
    pub fn position(&self, admitted_total_now: u64) -> Option<u64> {
        match self.standing {
            StreamFix::Waiting { rank } => {
                let moved = admitted_total_now.saturating_sub(self.admitted_total_at);
                Some((rank + 1).saturating_sub(moved).max(1))
            }
            _ => None,
        }
    }
}

pub struct StreamSlot {
    pub user: String,
    fix: Mutex<Fix>,
    /// Wakes the stream when its fix changes (a refresh result).
    changed: watch::Sender<u64>,
}

impl StreamSlot {
    pub fn fix(&self) -> Fix {
        lock(&self.fix).clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

struct EventHub {
    snapshot: watch::Sender<Snapshot>,
    streams: HashMap<u64, Arc<StreamSlot>>,
    /// Open streams per user (for the per-user cap).
    per_user: HashMap<String, usize>,
    rate: RateEstimator,
}

impl EventHub {
    fn new() -> Self {
        Self {
            snapshot: watch::Sender::new(Snapshot::default()),
            streams: HashMap::new(),
            per_user: HashMap::new(),
            rate: RateEstimator::new(30_000, 5_000),
        }
    }
}

/// Streams one user may hold open for one event on one replica (a few tabs or devices); beyond
/// it a new stream is refused, so one token cannot take the replica's stream budget.
pub const MAX_STREAMS_PER_USER: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct HubSettings {
    pub tick: Duration,
    pub refresh_budget: usize,
    pub refresh_after: Duration,
    pub touch_every: Duration,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<HashMap<String, EventHub>>>,
    next_id: Arc<AtomicU64>,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Unregisters a stream when its response body is dropped (client gone, or stream finished).
pub struct StreamGuard {
    hub: Hub,
    event: String,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut g = lock(&self.hub.inner);
        if let Some(h) = g.get_mut(&self.event)
            && let Some(slot) = h.streams.remove(&self.id)
        {
            if let Some(n) = h.per_user.get_mut(&slot.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    h.per_user.remove(&slot.user);
                }
            }
            self.hub.metrics.streams.dec();
        }
    }
}

impl Hub {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            inner: Arc::default(),
            next_id: Arc::default(),
            metrics,
        }
    }

    pub fn open_streams(&self) -> usize {
        lock(&self.inner).values().map(|h| h.streams.len()).sum()
    }

    pub fn subscribe(&self, event: &str) -> watch::Receiver<Snapshot> {
        lock(&self.inner)
            .entry(event.to_owned())
            .or_insert_with(EventHub::new)
            .snapshot
            .subscribe()
    }

    pub fn rate(&self, event: &str) -> Option<f64> {
        lock(&self.inner).get(event).and_then(|h| h.rate.rate())
    }

    /// Registers a stream with an initial fix taken by the caller (from the status script);
    /// None when the user already holds [`MAX_STREAMS_PER_USER`] streams of the event here.
    pub fn register(&self, event: &str, user: &str, fix: Fix) -> Option<(Arc<StreamSlot>, StreamGuard)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(StreamSlot {
            user: user.to_owned(),
            fix: Mutex::new(fix),
            changed: watch::Sender::new(0),
        });
        {
            let mut g = lock(&self.inner);
            let h = g.entry(event.to_owned()).or_insert_with(EventHub::new);
            let n = h.per_user.entry(user.to_owned()).or_default();
            if *n >= MAX_STREAMS_PER_USER {
                return None;
            }
            *n += 1;
            h.streams.insert(id, slot.clone());
        }
        self.metrics.streams.inc();
        Some((
            slot,
            StreamGuard {
                hub: self.clone(),
                event: event.to_owned(),
                id,
            },
        ))
    }

    /// Picks the streams of `event` whose fix should be re-read this tick.
    fn due(&self, event: &str, settings: &HubSettings, now_ms: i64) -> Vec<Arc<StreamSlot>> {
        let g = lock(&self.inner);
        let Some(h) = g.get(event) else { return Vec::new() };
        let admitted_now = h.snapshot.borrow().counters.admitted_total;
        let refresh_ms = settings.refresh_after.as_millis() as i64;
        let mut due: Vec<(u8, i64, Arc<StreamSlot>)> = h
            .streams
            .values()
            .filter_map(|s| {
                let fix = s.fix();
                let at_head = fix.position(admitted_now) == Some(1);
                let pre = fix.standing == StreamFix::PreQueue;
                let stale = now_ms - fix.at_ms >= refresh_ms;
                // Priority 0: possibly admitted now, or pre-queue (the shuffle may have happened).
                if at_head || (pre && stale) {
                    Some((0, fix.at_ms, s.clone()))
                } else if stale {
                    Some((1, fix.at_ms, s.clone()))
                } else {
                    None
                }
            })
            .collect();
        due.sort_by_key(|(prio, at, _)| (*prio, *at));
        due.truncate(settings.refresh_budget);
        due.into_iter().map(|(_, _, s)| s).collect()
    }

    fn publish(&self, event: &str, counters: EventCounters, fixes: Vec<(Arc<StreamSlot>, StreamFix)>) {
        let mut g = lock(&self.inner);
        let h = g.entry(event.to_owned()).or_insert_with(EventHub::new);
        h.rate
            .record(counters.now_ms, counters.admitted_total, counters.depth);
        for (slot, standing) in fixes {
            *lock(&slot.fix) = Fix {
                standing,
                admitted_total_at: counters.admitted_total,
                at_ms: counters.now_ms,
            };
            slot.changed.send_modify(|n| *n += 1);
        }
        let rate = h.rate.rate();
        h.snapshot.send_modify(|s| {
            s.tick += 1;
            s.counters = counters;
            s.rate = rate;
        });
    }

    /// Ends every open stream of `event` (their snapshot channel closes; streams opened later
    /// subscribe to a new one). Returns how many were open.
    fn end_streams(&self, event: &str) -> usize {
        let mut g = lock(&self.inner);
        let Some(h) = g.get_mut(event) else { return 0 };
        let last = h.snapshot.borrow().clone();
        drop(std::mem::replace(&mut h.snapshot, watch::Sender::new(last)));
        h.streams.len()
    }

    fn users(&self, event: &str) -> Vec<String> {
        lock(&self.inner)
            .get(event)
            .map(|h| h.streams.values().map(|s| s.user.clone()).collect())
            .unwrap_or_default()
    }

    /// The per-process ticker: one atomic batch per configured event per tick, plus a heartbeat
    /// refresh for users holding streams every `touch_every`.
    pub async fn run(
        self,
        store: Store,
        events: Events,
        settings: HubSettings,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut interval = tokio::time::interval(settings.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Per event: when its streams' heartbeats were last refreshed.
        let mut last_touch: HashMap<String, std::time::Instant> = HashMap::new();
        // Per event: since when this replica has failed to read or refresh its streams in Redis.
        let mut failing: HashMap<String, std::time::Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            let configs = events.snapshot();
            failing.retain(|e, _| configs.contains_key(e));
            last_touch.retain(|e, _| configs.contains_key(e));
            for (event, cfg) in configs.iter() {
                let keys = EventKeys::new(event);
                let heartbeat_timeout = Duration::from_secs(cfg.queue.heartbeat_timeout_seconds);
                // Every `touch_every`, or a third of the event's heartbeat timeout when that is
                // shorter: a stream refreshed every 5 s under a 3 s timeout lost its place.
                let every = touch_interval(settings.touch_every, heartbeat_timeout, settings.tick);
                let touch = last_touch.get(event).is_none_or(|at| at.elapsed() >= every);
                if touch {
                    last_touch.insert(event.clone(), std::time::Instant::now());
                }
                let mut failed = false;
                let due = self.due(event, &settings, now_ms);
                let users: Vec<String> = due.iter().map(|s| s.user.clone()).collect();
                match store.tick(&keys, &users, now_ms).await {
                    Ok((counters, fixes)) => {
                        let label = Metrics::event(event);
                        self.metrics
                            .depth
                            .get_or_create(&label)
                            .set(counters.depth as i64);
                        self.metrics
                            .prequeue_depth
                            .get_or_create(&label)
                            .set(counters.prequeue as i64);
                        self.metrics
                            .active_users
                            .get_or_create(&label)
                            .set(counters.active as i64);
                        self.publish(event, counters, due.into_iter().zip(fixes).collect());
                    }
                    Err(e) => {
                        self.metrics
                            .redis_errors
                            .get_or_create(&crate::metrics::ReasonLabel { reason: e.reason() })
                            .inc();
                        tracing::warn!(event, error = %e, "stream tick failed");
                        failed = true;
                    }
                }
                if touch {
                    let users = self.users(event);
                    for chunk in users.chunks(1000) {
                        if let Err(e) = store.touch(&keys, chunk).await {
                            tracing::warn!(event, error = %e, "heartbeat refresh for streams failed");
                            // Like a shed poll: the admitting replica must not sweep these users
                            // for it (when this write gets through, e.g. Redis only slow).
                            store.note_shed(&keys, heartbeat_timeout);
                            failed = true;
                            break;
                        }
                    }
                }
                if !failed {
                    failing.remove(event.as_str());
                    continue;
                }
                // A replica that cannot reach Redis (a partition, a stale cluster map) while the
                // others can is out of the Service (/readyz), but its open streams stay up and
                // their users' heartbeats stop: the admitting replica would drop them after
                // `heartbeatTimeout`. Past a third of it, end them so the browsers reconnect,
                // through the load balancer, to a replica that can keep their place.
                let since = *failing
                    .entry(event.clone())
                    .or_insert_with(std::time::Instant::now);
                if since.elapsed() >= (heartbeat_timeout / 3).max(settings.tick * 2) {
                    let ended = self.end_streams(event);
                    if ended > 0 {
                        tracing::warn!(
                            event,
                            ended,
                            "Redis unreachable from this replica: streams ended so they reconnect elsewhere"
                        );
                    }
                    failing.insert(event.clone(), std::time::Instant::now());
                }
            }
        }
    }
}

/// How often the heartbeats of an event's streams are refreshed: `every`, or a third of the
/// event's heartbeat timeout when that is shorter (two refreshes can be missed before the sweep),
/// never more often than the hub ticks.
fn touch_interval(every: Duration, heartbeat_timeout: Duration, tick: Duration) -> Duration {
    every.min(heartbeat_timeout / 3).max(tick)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_refreshed_three_times_per_heartbeat_timeout_at_least() {
        let (every, tick) = (Duration::from_secs(5), Duration::from_millis(200));
        let at = |timeout_ms| touch_interval(every, Duration::from_millis(timeout_ms), tick);
        assert_eq!(at(120_000), every);
        assert_eq!(at(15_000), every);
        assert_eq!(at(6_000), Duration::from_secs(2));
        assert_eq!(at(1_000), Duration::from_nanos(333_333_333));
        assert_eq!(at(300), tick);
    }

    #[test]
    fn position_follows_admissions_and_never_passes_the_head() {
        let fix = Fix {
            standing: StreamFix::Waiting { rank: 9 },
            admitted_total_at: 100,
            at_ms: 0,
        };
        assert_eq!(fix.position(100), Some(10));
        assert_eq!(fix.position(104), Some(6));
        assert_eq!(fix.position(109), Some(1));
        assert_eq!(fix.position(150), Some(1));
        let pre = Fix {
            standing: StreamFix::PreQueue,
            admitted_total_at: 0,
            at_ms: 0,
        };
        assert_eq!(pre.position(5), None);
    }

    #[test]
    fn due_prefers_the_head_and_respects_the_budget() {
        let mut registry = prometheus_client::registry::Registry::default();
        let hub = Hub::new(Metrics::register(&mut registry));
        let settings = HubSettings {
            tick: Duration::from_secs(1),
            refresh_budget: 2,
            refresh_after: Duration::from_secs(5),
            touch_every: Duration::from_secs(5),
        };
        let fresh = |rank| Fix {
            standing: StreamFix::Waiting { rank },
            admitted_total_at: 0,
            at_ms: 10_000,
        };
        let old = |rank| Fix {
            standing: StreamFix::Waiting { rank },
            admitted_total_at: 0,
            at_ms: 1_000,
        };
        let (_a, _ga) = hub.register("e", "head", fresh(0)).unwrap();
        let (_b, _gb) = hub.register("e", "middle-fresh", fresh(50)).unwrap();
        let (_c, _gc) = hub.register("e", "old-1", old(70)).unwrap();
        let (_d, _gd) = hub
            .register(
                "e",
                "old-2",
                Fix {
                    at_ms: 500,
                    ..old(80)
                },
            )
            .unwrap();
        let due: Vec<_> = hub
            .due("e", &settings, 10_500)
            .iter()
            .map(|s| s.user.clone())
            .collect();
        assert_eq!(due, vec!["head", "old-2"]);
        assert_eq!(hub.open_streams(), 4);
        drop(_ga);
        assert_eq!(hub.open_streams(), 3);
        // One user: at most MAX_STREAMS_PER_USER at once; closing one makes room again.
        let mut held: Vec<_> = (0..MAX_STREAMS_PER_USER)
            .map(|_| hub.register("e", "tabs", fresh(1)).unwrap())
            .collect();
        assert!(hub.register("e", "tabs", fresh(1)).is_none());
        assert!(hub.register("other-event", "tabs", fresh(1)).is_some());
        held.pop();
        assert!(hub.register("e", "tabs", fresh(1)).is_some());
    }
}
