//! The autoscaler loop: the I/O around the pure policy. Each tick it takes every TicketingEvent
//! from the controller's cache, reads the signals of the events that are due in one pipelined
//! Redis round trip per Redis endpoint ([`SignalReader`]) plus their Prometheus queries, decides
//! each component with [`plan_component`] under the scaler's book lock, applies changes through
//! the [`crate::scaler::Scaler`] (Event, recentDecisions, log line, metric), and writes its own
//! status fields (signals, `SignalsHealthy`, `belowSince`, `soldOutAt`) with its own field manager.
//!
//! Only the leader ticks; a follower forgets everything it knew, so a new leader starts from
//! status (where the cooldowns and the stabilization evidence live).
//!
//! Events are due on a grid of their poll interval, so every event with the same interval is read
//! in the same tick, in the same pipeline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::autoscaler::plan::{self, Known, plan_component};
use crate::autoscaler::{Memory, Reason, Samples, SignalHealth};
use crate::crd::{Component, Phase, TicketingEvent};
use crate::events::EventType;
use crate::metrics::{EventSeries, SignalErrorLabels};
use crate::reconciler::Context;
use crate::scaler::{ScaleReason, kinds};
use crate::schedule;
use crate::signals::{EventSignals, PrometheusSignals, SignalError, SignalReader};
use crate::status::{apply_status, condition, reasons, types};

mod report;
use report::ComponentOutcome;
pub use report::HealthGate;
use tiketi_shared::redis::RedisArgs;

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct AutoscalerOptions {
    /// Bound of one Redis pipeline or Prometheus query.
    pub signal_timeout: Duration,
    /// Least time between two status writes that only carry new signal values (queueDepth,
    /// activeUsers). Health flips, `belowSince` and `soldOutAt` are written at once. A status
    /// with nothing new is not written at all (no liveness heartbeat: the loop's liveness is
    /// `tiketi_operator_autoscaler_tick_duration_seconds` and the leader Lease).
    pub status_interval: Duration,
    /// Events decided at once (bounds the API writes in flight).
    pub concurrency: usize,
    /// Bound of deciding and applying one event (its API calls): a hung call holds that event
    /// for at most this long, never the tick of every other event.
    pub event_timeout: Duration,
    /// CA bundle that verifies TLS Redis servers (`spec.redis.tls`); None: the built-in web roots.
    pub redis_ca_file: Option<std::path::PathBuf>,
}

impl Default for AutoscalerOptions {
    fn default() -> Self {
        Self {
            signal_timeout: Duration::from_secs(1),
            status_interval: Duration::from_secs(5),
            concurrency: 16,
            event_timeout: Duration::from_secs(5),
            redis_ca_file: None,
        }
    }
}

/// Longest sleep between ticks (new events are picked up at least this often).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A reader not used for this long is dropped (its event went away or changed its URL).
const READER_IDLE: Duration = Duration::from_secs(300);

/// What an event's Redis endpoint is made of: its namespace, the URL Secret key, the CA Secret
/// key, cluster mode and TLS. Events with equal references have equal endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RedisRef<'a> {
    namespace: &'a str,
    url: (&'a str, &'a str),
    ca: Option<(&'a str, &'a str)>,
    cluster: bool,
    tls: bool,
}

impl<'a> RedisRef<'a> {
    fn of(tev: &'a TicketingEvent) -> Self {
        let r = &tev.spec.redis;
        Self {
            namespace: tev.metadata.namespace.as_deref().unwrap_or_default(),
            url: (&r.url_secret_ref.name, &r.url_secret_ref.key),
            ca: r
                .ca_secret_ref
                .as_ref()
                .map(|c| (c.name.as_str(), c.key.as_str())),
            cluster: r.cluster_mode,
            tls: r.tls,
        }
    }
}

/// One Redis endpoint; events sharing it share one pipeline per tick.
/// One Redis the loop reads from (URL from the event's Secret, mode from its spec).
type Endpoint = RedisArgs;

/// What the loop remembers of one event between ticks (besides the scaler's book).
#[derive(Debug, Clone)]
struct EventState {
    next_due: Instant,
    /// The last good reading.
    last_ok: Option<EventSignals>,
    /// soldOutAt once this loop set it (the cache may not show it yet).
    sold_out_at: Option<DateTime<Utc>>,
    /// Reported health (condition, metric and Events follow it; see [`HealthGate`]).
    health_gate: HealthGate,
    written: Option<Written>,
    /// The policies of the spec in force, parsed once per spec (not every tick).
    prepared: Option<Arc<Prepared>>,
    /// Its metric series, found once (see [`series_of`]).
    series: Option<EventSeries>,
    /// Its entries in the scaler's book, found once (see [`crate::scaler::Book::try_lock_both`]).
    book: Option<crate::scaler::BookHandle>,
    /// Its schedule, until the next boundary (see [`in_schedule`]).
    schedule: Option<KeptSchedule>,
}

/// What the loop derives from an event's spec, once per spec in force: the policy of each
/// component, the poll interval and the Prometheus queries.
#[derive(Debug)]
struct Prepared {
    /// The spec it was parsed from: the generation in force, and whether that is the last good
    /// spec (an invalid edit keeps it).
    source: (Option<i64>, bool),
    poll: Duration,
    policies: [Result<crate::autoscaler::Policy, String>; 2],
    queries: Vec<String>,
}

impl Prepared {
    /// `tev` as in force; `last_good` when that is `status.lastGoodSpec`.
    fn source(tev: &TicketingEvent, last_good: bool) -> (Option<i64>, bool) {
        let generation = if last_good {
            tev.status.as_ref().and_then(|s| s.last_good_generation)
        } else {
            tev.metadata.generation
        };
        (generation, last_good)
    }

    fn parse(tev: &TicketingEvent, last_good: bool) -> Result<Self, crate::autoscaler::PolicyError> {
        let policy = |c: Component| {
            crate::autoscaler::Policy::try_from(tev.spec.scaling(c)).map_err(|e| e.to_string())
        };
        Ok(Self {
            source: Self::source(tev, last_good),
            poll: plan::poll_interval(tev)?,
            policies: Component::ALL.map(policy),
            queries: plan::prometheus_queries(tev),
        })
    }

    fn policy(&self, c: Component) -> Result<&crate::autoscaler::Policy, &str> {
        let i = Component::ALL.iter().position(|&k| k == c).unwrap_or(0);
        self.policies[i].as_ref().map_err(String::as_str)
    }
}

/// The last status write (what the throttle compares against).
#[derive(Debug, Clone)]
struct Written {
    at: Instant,
    /// Fingerprints of what was written (two hashes per event instead of copies: the loop keeps
    /// one per event, thousands of them).
    shapes: report::Shapes,
}

impl EventState {
    fn new(now: Instant) -> Self {
        Self {
            next_due: now,
            last_ok: None,
            sold_out_at: None,
            health_gate: HealthGate::default(),
            written: None,
            prepared: None,
            series: None,
            book: None,
            schedule: None,
        }
    }
}

/// The event's metric series: found on first use, and again after a step-down dropped them.
fn series_of<'a>(
    slot: &'a mut Option<EventSeries>,
    ctx: &Context,
    tev: &TicketingEvent,
) -> &'a mut EventSeries {
    let series = slot.get_or_insert_with(|| {
        ctx.metrics
            .event_series(tev.namespace().unwrap_or_default(), tev.name_any())
    });
    series.refresh(&ctx.metrics);
    series
}

/// How long a tick waits for the events it started before it returns; the ones still deciding
/// (an API call hanging) go on in their own tasks, and later ticks skip them until they finish.
const TICK_WAIT: Duration = Duration::from_secs(1);

/// An event decided in its own task: its uid, its state back, and the tick that started it.
struct Done {
    tick: u64,
    uid: String,
    st: Box<EventState>,
}

/// The loop; [`Autoscaler::run`] drives it.
pub struct Autoscaler {
    ctx: Arc<Context>,
    store: Store<TicketingEvent>,
    /// Shared with the events' tasks (not copied per tick).
    opts: Arc<AutoscalerOptions>,
    epoch: Instant,
    /// By uid (foldhash: probed once per event per tick).
    /// Boxed: a due event's state moves out of the map and back every poll.
    events: foldhash::HashMap<String, Box<EventState>>,
    readers: HashMap<Endpoint, (SignalReader, Instant)>,
    prometheus: HashMap<String, PrometheusSignals>,
    /// Events being decided, each in its own task (one hung event never holds the others).
    inflight: tokio::task::JoinSet<Done>,
    /// Their uids: not due again until they are back.
    inflight_uids: foldhash::HashSet<String>,
    /// Bounds the events deciding at once (the API writes in flight).
    permits: Arc<tokio::sync::Semaphore>,
    ticks: u64,
    /// When the state of deleted events was last forgotten.
    swept: Instant,
    /// The store's change count, and the event list copied out of the store at that count.
    changes: StoreChanges,
    listed: Option<(u64, Arc<Vec<Arc<TicketingEvent>>>)>,
    /// After a scan of every event: the store's change count it saw and the earliest instant an
    /// event falls due (None: none will). Until one of them moves, a tick has nothing to do.
    scanned: Option<(u64, Option<Instant>)>,
}

/// How often the state of deleted events is forgotten (and the event list read again even if
/// no change was counted).
const SWEEP: Duration = Duration::from_secs(5);

/// Counts the changes the TicketingEvent watch applied to the store (bumped by the watch stream
/// after the store applied each event), so the loop copies the event list out of the store only
/// when it changed: at 10,000 events that copy (an `Arc` per event, taken and released under the
/// store's lock) cost as much as deciding every settled event.
#[derive(Clone, Debug, Default)]
pub struct StoreChanges(Arc<std::sync::atomic::AtomicU64>);

impl StoreChanges {
    /// One more change applied to the store.
    pub fn bump(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Autoscaler {
    /// `changes` must be bumped after every change the store applies (see [`StoreChanges`]).
    pub fn new(
        ctx: Arc<Context>,
        store: Store<TicketingEvent>,
        changes: StoreChanges,
        opts: AutoscalerOptions,
    ) -> Self {
        let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
        Self {
            ctx,
            store,
            opts: Arc::new(opts),
            epoch: Instant::now(),
            events: Default::default(),
            readers: HashMap::new(),
            prometheus: HashMap::new(),
            inflight: tokio::task::JoinSet::new(),
            inflight_uids: Default::default(),
            permits,
            ticks: 0,
            swept: Instant::now(),
            changes,
            listed: None,
            scanned: None,
        }
    }

    /// The events in the store: copied out again only when the store changed since the last
    /// copy, or at `sweep` (a safety net: a change the counter missed is seen within SWEEP).
    /// Returns the change count the list is at.
    fn events_listed(&mut self, sweep: bool) -> (u64, Arc<Vec<Arc<TicketingEvent>>>) {
        let count = self.changes.count();
        match &self.listed {
            Some((at, all)) if *at == count && !sweep => (count, all.clone()),
            _ => {
                let all = Arc::new(self.store.state());
                self.listed = Some((count, all.clone()));
                (count, all)
            }
        }
    }

    /// Takes back a finished event; returns the tick that started it. A panic in an event's task
    /// is the loop's panic (the supervisor counts it and fails the probes).
    fn take(&mut self, res: Result<Done, tokio::task::JoinError>) -> Option<u64> {
        match res {
            Ok(Done { tick, uid, st }) => {
                self.inflight_uids.remove(&uid);
                // Skipped by the scans while it was away: it counts for the next wake-up again.
                if let Some((_, earliest)) = &mut self.scanned {
                    *earliest = Some(earliest.map_or(st.next_due, |e| e.min(st.next_due)));
                }
                self.events.insert(uid, st);
                Some(tick)
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// Stops every event in flight and forgets them (leadership lost: their writes would be
    /// refused anyway; the book is cleared).
    async fn abandon_inflight(&mut self) {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        self.inflight_uids.clear();
    }

    /// Ticks while this replica leads, until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut leader = self.ctx.leader.subscribe();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wake = if self.ctx.leader.is_leader() {
                let started = Instant::now();
                let wake = self.tick().await;
                self.ctx
                    .metrics
                    .autoscaler_tick_duration
                    .observe(started.elapsed().as_secs_f64());
                wake
            } else {
                if !self.events.is_empty() || !self.ctx.scaler.book().is_empty() {
                    tracing::info!("not the leader: the autoscaler forgets its state");
                }
                self.abandon_inflight().await;
                self.events.clear();
                self.scanned = None;
                self.ctx.scaler.book().clear();
                Instant::now() + MAX_SLEEP
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                _ = shutdown.changed() => {}
                // A closed channel (leader election disabled) never wakes this branch.
                Ok(()) = leader.changed() => {}
            }
        }
        // Stop work before the Lease is released: the events still deciding finish (each is
        // bounded by event_timeout), so no write of this replica follows the release.
        if !self.inflight.is_empty() {
            tracing::info!(
                events = self.inflight.len(),
                "waiting for the events still deciding"
            );
        }
        while let Some(res) = self.inflight.join_next().await {
            self.take(res);
        }
        tracing::info!("autoscaler stopped");
    }

    /// The next instant at or after `now` on the grid of `period` (from the loop's start), so
    /// events with equal poll intervals fall due together.
    fn align(&self, now: Instant, period: Duration) -> Instant {
        let period = period.max(Duration::from_millis(100));
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let p = period.as_nanos();
        let steps = since.div_ceil(p).max(1);
        let offset = u64::try_from(steps.saturating_mul(p)).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(offset)
    }

    /// One tick; returns when the next one is due.
    pub async fn tick(&mut self) -> Instant {
        while let Some(res) = self.inflight.try_join_next() {
            self.take(res);
        }
        self.ticks += 1;
        let now_i = Instant::now();
        let now = Utc::now();
        // What deleted events leave behind is forgotten every SWEEP (not every tick: with
        // thousands of events the sweep costs as much as deciding them).
        let sweep = self.swept.elapsed() >= SWEEP;
        let (count, all) = self.events_listed(sweep);
        // Nothing changed in the store since the last scan and nothing is due yet (every other
        // tick at a 2 s poll): no event needs looking at.
        if !sweep
            && let Some((seen, earliest)) = self.scanned
            && seen == count
            && earliest.is_none_or(|e| now_i < e)
        {
            return earliest.map_or(now_i + MAX_SLEEP, |e| e.min(now_i + MAX_SLEEP));
        }
        if sweep {
            self.swept = now_i;
            let uids: foldhash::HashSet<&str> =
                all.iter().filter_map(|t| t.metadata.uid.as_deref()).collect();
            self.events.retain(|uid, _| uids.contains(uid.as_str()));
            self.ctx.scaler.book().retain(&uids);
        }
        self.readers.retain(|_, (_, used)| used.elapsed() < READER_IDLE);
        self.ctx
            .metrics
            .autoscaler_events
            .set(i64::try_from(all.len()).unwrap_or(i64::MAX));

        // The earliest next_due of the events scanned.
        let mut earliest: Option<Instant> = None;
        let mut sooner = |t: Instant| earliest = Some(earliest.map_or(t, |e| e.min(t)));
        let mut due: Vec<(Arc<TicketingEvent>, Box<EventState>)> = Vec::new();
        // Their uids (the map's keys, moved out with the state and back in after).
        let mut due_uids: Vec<String> = Vec::new();
        for tev in all.iter() {
            let Some(uid) = tev.metadata.uid.as_deref() else {
                continue;
            };
            if self.inflight_uids.contains(uid) {
                continue; // still deciding since an earlier tick
            }
            let phase = tev.status.as_ref().and_then(|s| s.phase);
            // Not yet deployed by the reconciler, invalid, or being deleted: nothing to scale.
            if tev.metadata.deletion_timestamp.is_some() || matches!(phase, None | Some(Phase::Failed)) {
                continue;
            }
            // Not due (every other tick at a 2 s poll): one lookup, nothing moved.
            if let Some(st) = self.events.get(uid)
                && st.next_due > now_i
                && st.prepared.is_some()
            {
                sooner(st.next_due);
                continue;
            }
            let (uid, mut st) = match self.events.remove_entry(uid) {
                Some(kept) => kept,
                None => (uid.to_owned(), Box::new(EventState::new(now_i))),
            };
            // While an edit is invalid the last good spec stays in force (scaling included).
            let tev = match tev.in_force() {
                std::borrow::Cow::Borrowed(_) => tev.clone(),
                std::borrow::Cow::Owned(good) => Arc::new(good),
            };
            let last_good = tev.keeps_last_good_spec();
            let source = Prepared::source(&tev, last_good);
            if st.prepared.as_ref().is_none_or(|p| p.source != source) {
                match Prepared::parse(&tev, last_good) {
                    Ok(p) => st.prepared = Some(Arc::new(p)),
                    Err(e) => {
                        tracing::debug!(event = %tev.name_any(), error = %e, "scaling policy unusable");
                        st.prepared = None;
                        self.events.insert(uid, st);
                        continue;
                    }
                }
            }
            let poll = st.prepared.as_ref().map_or(MAX_SLEEP, |p| p.poll);
            if st.next_due <= now_i {
                st.next_due = self.align(now_i + poll / 2, poll).max(now_i + poll / 2);
                sooner(st.next_due);
                due.push((tev, st));
                due_uids.push(uid);
            } else {
                sooner(st.next_due);
                self.events.insert(uid, st);
            }
        }
        self.scanned = Some((count, earliest));
        let wake = earliest.map_or(now_i + MAX_SLEEP, |e| e.min(now_i + MAX_SLEEP));
        if due.is_empty() {
            return wake;
        }

        let readings = self.read_redis(&due).await;
        let prom = self.read_prometheus(&due).await;
        // A settled event is decided in place; one that needs the API goes to its own task: a
        // hung API call holds that event (up to event_timeout), never the others, whose next
        // ticks come on time.
        let tick = self.ticks;
        let mut started = 0;
        let opts = self.opts.clone();
        for ((((tev, mut st), uid), reading), prom) in due.into_iter().zip(due_uids).zip(readings).zip(prom) {
            if settle_in_place(&self.ctx, &opts, &tev, &reading, &prom, &mut st, now) {
                self.events.insert(uid, st);
                continue;
            }
            let ctx = self.ctx.clone();
            let opts = opts.clone();
            let permits = self.permits.clone();
            self.inflight_uids.insert(uid.clone());
            started += 1;
            self.inflight.spawn(async move {
                let mut st = st;
                // Closed only if the loop is dropped; then nothing is decided.
                if let Ok(_permit) = permits.acquire_owned().await {
                    let bound = opts.event_timeout;
                    let handled = handle(&ctx, &opts, &tev, reading, prom, &mut st, now);
                    if tokio::time::timeout(bound, handled).await.is_err() {
                        // What was applied is in the scaler's book; the next tick decides again.
                        tracing::warn!(event = %tev.name_any(), ?bound, "deciding the event took too long (API calls hanging): cut short");
                    }
                }
                Done { tick, uid, st }
            });
        }
        // Wait a moment for this tick's events (the usual case: all of them, in milliseconds).
        let deadline = tokio::time::Instant::now() + TICK_WAIT;
        let mut left = started;
        while left > 0 {
            match tokio::time::timeout_at(deadline, self.inflight.join_next()).await {
                Ok(Some(res)) => {
                    if self.take(res) == Some(tick) {
                        left -= 1;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::debug!(
                        events = left,
                        "events still deciding; later ticks skip them until they finish"
                    );
                    break;
                }
            }
        }
        wake
    }

    /// Reads the Redis signals of `due`, one pipeline per endpoint, the endpoints concurrently.
    async fn read_redis(
        &mut self,
        due: &[(Arc<TicketingEvent>, Box<EventState>)],
    ) -> Vec<Result<EventSignals, SignalError>> {
        let mut out: Vec<Option<Result<EventSignals, SignalError>>> = vec![None; due.len()];
        // One group (one pipeline) per endpoint, found by `group`.
        let mut groups: Vec<(Endpoint, Vec<usize>)> = Vec::new();
        let mut group: HashMap<Endpoint, usize> = HashMap::new();
        let mut group_of = |ep: Endpoint, groups: &mut Vec<(Endpoint, Vec<usize>)>| {
            *group.entry(ep).or_insert_with_key(|ep| {
                groups.push((ep.clone(), Vec::new()));
                groups.len() - 1
            })
        };
        // From the Secret cache where it answers (every steady tick), once per Redis reference
        // (events naming the same Secret keys share the answer: at thousands of events the
        // endpoint is otherwise worked out, copied and hashed once per event); the rest
        // concurrently and bounded: a Secret read that hangs (a new resourceVersion to fetch)
        // fails that event's reading, not the tick.
        let bound = self.opts.event_timeout;
        let this = &*self;
        let mut memo: foldhash::HashMap<RedisRef<'_>, Option<Result<usize, SignalError>>> =
            Default::default();
        let mut missing: Vec<usize> = Vec::new();
        for (i, (tev, _)) in due.iter().enumerate() {
            let known = memo.entry(RedisRef::of(tev)).or_insert_with(|| {
                this.endpoint_known(tev)
                    .map(|ep| ep.map(|ep| group_of(ep, &mut groups)))
            });
            match known {
                Some(Ok(g)) => groups[*g].1.push(i),
                Some(Err(e)) => out[i] = Some(Err(e.clone())),
                None => missing.push(i),
            }
        }
        let fetched = futures::future::join_all(missing.iter().map(|&i| async move {
            tokio::time::timeout(bound, Box::pin(this.endpoint(&due[i].0)))
                .await
                .unwrap_or_else(|_| {
                    Err(SignalError::Config(format!(
                        "reading the Redis Secrets took longer than {bound:?}"
                    )))
                })
        }))
        .await;
        for (i, ep) in missing.into_iter().zip(fetched) {
            match ep {
                Ok(ep) => {
                    let g = group_of(ep, &mut groups);
                    groups[g].1.push(i);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let timeout = self.opts.signal_timeout;
        let mut jobs = Vec::new();
        for (ep, idx) in groups {
            let reader = self.readers.remove(&ep).map(|(r, _)| r);
            // Borrowed: `spec.eventId`, else the name (as `event_id_or(name_any())`).
            let ids: Vec<&str> = idx
                .iter()
                .map(|&i| {
                    let tev = &due[i].0;
                    let m = &tev.metadata;
                    tev.spec
                        .event_id
                        .as_deref()
                        .or(m.name.as_deref())
                        .or(m.generate_name.as_deref())
                        .unwrap_or_default()
                })
                .collect();
            jobs.push(async move {
                let reader = match reader {
                    Some(r) => Ok(r),
                    None => SignalReader::connect(&ep, timeout),
                };
                match reader {
                    Ok(mut r) => {
                        let readings = r.read_in_order(&ids).await;
                        (ep, Some(r), idx, readings)
                    }
                    Err(e) => {
                        let n = idx.len();
                        (ep, None, idx, vec![Err(e); n])
                    }
                }
            });
        }
        for (ep, reader, idx, results) in futures::future::join_all(jobs).await {
            if let Some(r) = reader {
                self.readers.insert(ep, (r, Instant::now()));
            }
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(SignalError::Decode {
                        command: "pipeline",
                        reply: "no reading".into(),
                    })
                })
            })
            .collect()
    }

    /// The Redis endpoint of an event, from its Secrets (the URL and, with
    /// `spec.redis.caSecretRef`, the CA bundle), read through the operator's one Secret cache.
    async fn endpoint(&self, tev: &TicketingEvent) -> Result<Endpoint, SignalError> {
        let ns = tev.namespace().unwrap_or_default();
        let r = &tev.spec.redis.url_secret_ref;
        let url = self.secret_value(&ns, &r.name, &r.key).await?;
        let ca_pem = match &tev.spec.redis.ca_secret_ref {
            Some(ca) => Some(self.secret_value(&ns, &ca.name, &ca.key).await?.into_bytes()),
            None => None,
        };
        Ok(Endpoint {
            url,
            cluster: tev.spec.redis.cluster_mode,
            tls: tev.spec.redis.tls,
            ca_file: self.opts.redis_ca_file.clone(),
            ca_pem,
        })
    }

    /// [`Self::endpoint`] when the Secret cache answers without the API; None: a read is needed.
    fn endpoint_known(&self, tev: &TicketingEvent) -> Option<Result<Endpoint, SignalError>> {
        let ns = tev.metadata.namespace.as_deref().unwrap_or_default();
        let secrets = &self.ctx.secrets;
        let r = &tev.spec.redis.url_secret_ref;
        let url = match secrets.value_known(ns, &r.name, &r.key)? {
            Ok(url) => url,
            Err(e) => return Some(Err(SignalError::Config(e))),
        };
        let ca_pem = match &tev.spec.redis.ca_secret_ref {
            Some(ca) => match secrets.value_known(ns, &ca.name, &ca.key)? {
                Ok(pem) => Some(pem.into_bytes()),
                Err(e) => return Some(Err(SignalError::Config(e))),
            },
            None => None,
        };
        Some(Ok(Endpoint {
            url,
            cluster: tev.spec.redis.cluster_mode,
            tls: tev.spec.redis.tls,
            ca_file: self.opts.redis_ca_file.clone(),
            ca_pem,
        }))
    }

    /// One Secret key, through the operator's Secret cache (see [`crate::secrets`]).
    async fn secret_value(&self, ns: &str, name: &str, key: &str) -> Result<String, SignalError> {
        self.ctx
            .secrets
            .value(ns, name, key)
            .await
            .map_err(SignalError::Config)
    }

    /// Runs every due event's Prometheus queries (concurrently); empty samples for the others.
    async fn read_prometheus(&mut self, due: &[(Arc<TicketingEvent>, Box<EventState>)]) -> Vec<Samples> {
        let mut out: Vec<Samples> = due.iter().map(|_| Samples::new()).collect();
        let mut jobs = Vec::new();
        for (i, (tev, st)) in due.iter().enumerate() {
            let (Some(prepared), Some(p)) = (&st.prepared, &tev.spec.prometheus) else {
                continue;
            };
            if prepared.queries.is_empty() {
                continue;
            }
            if !self.prometheus.contains_key(&p.url) {
                match PrometheusSignals::new(&p.url, self.opts.signal_timeout) {
                    Ok(c) => {
                        self.prometheus.insert(p.url.clone(), c);
                    }
                    Err(e) => {
                        tracing::warn!(event = %tev.name_any(), error = %e, "prometheus client");
                    }
                }
            }
            let Some(client) = self.prometheus.get(&p.url).cloned() else {
                continue;
            };
            let prepared = prepared.clone();
            jobs.push(async move {
                let mut samples = Samples::new();
                client.read_into(&prepared.queries, &mut samples).await;
                (i, samples)
            });
        }
        for (i, samples) in futures::future::join_all(jobs).await {
            out[i] = samples;
        }
        out
    }
}

/// The scaler kind (bounded metric label, and whether a cooldown starts) of a decision reason.
pub fn kind_of(reason: Reason) -> &'static str {
    match reason {
        Reason::StepAbove | Reason::CapacityNeed => kinds::SCALE_OUT,
        Reason::BelowThreshold | Reason::NeedFell => kinds::SCALE_IN,
        Reason::StaleFallback => kinds::FALLBACK,
        Reason::MaxLowered => kinds::MAX_LOWERED,
        _ => kinds::SCHEDULE,
    }
}

/// The sizing fields of a component's status this loop owns: `need`, `prewarmReplicas` and the
/// `needHistory` that carries the stabilization window across restarts (null: removed).
fn component_sizing(planned: &crate::autoscaler::plan::Planned) -> crate::status::AutoscalerComponentStatus {
    let d = &planned.decision;
    let history: Vec<crate::crd::NeedMark> = d.memory.need_marks.iter().map(|m| m.to_status()).collect();
    crate::status::AutoscalerComponentStatus {
        below_since: None,
        need: d.need,
        prewarm_replicas: planned.prewarm,
        need_history: (!history.is_empty()).then_some(history),
    }
}

/// Decides and applies one event, updating its state (a timeout may cut it short: every field
/// stays consistent on its own). Everything it logs carries the event's span.
async fn handle(
    ctx: &Context,
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    reading: Result<EventSignals, SignalError>,
    prom: Samples,
    st: &mut EventState,
    now: DateTime<Utc>,
) {
    use tracing::Instrument as _;
    let span = tracing::info_span!("autoscale", namespace = %tev.namespace().unwrap_or_default(), event = %tev.name_any());
    handle_event(ctx, opts, tev, reading, prom, st, now)
        .instrument(span)
        .await;
}

/// read → decide → apply → record, for one event.
async fn handle_event(
    ctx: &Context,
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    reading: Result<EventSignals, SignalError>,
    prom: Samples,
    st: &mut EventState,
    now: DateTime<Utc>,
) {
    let Some((status, sold_out_at, sched)) = in_schedule(tev, st, now) else {
        return; // the reconciler reports the invalid spec
    };
    let status = &*status;
    let series = series_of(&mut st.series, ctx, tev);

    // read
    let samples = record_signals(ctx, series, &reading, &prom, &mut st.last_ok);
    if let Some(note) = report::sale_ends_now(sold_out_at, sched.phase, &reading) {
        // Sold out with nobody waiting: end the sale early so capacity is released.
        st.sold_out_at = Some(now);
        tracing::info!("{note}");
        Box::pin(
            ctx.events
                .publish(tev, EventType::Normal, reasons::SOLD_OUT, "Autoscale", note),
        )
        .await;
    }

    // decide and apply
    let prepared = st.prepared.clone();
    let mut outcomes: BTreeMap<Component, ComponentOutcome> = BTreeMap::new();
    let mut health: Vec<(Component, SignalHealth)> = Vec::new();
    for c in Component::ALL {
        let policy = prepared.as_deref().and_then(|p| p.policy(c).ok());
        if let Some((outcome, h)) = decide_and_apply(ctx, tev, &sched, c, policy, &samples, series, now).await
        {
            outcomes.insert(c, outcome);
            health.push((c, h));
        }
    }
    if health.is_empty() {
        return; // Closed: the schedule pins replicas; nothing of ours to report
    }

    // record
    let report = report::health_report(&health, &mut st.health_gate);
    series.signals_healthy().set(i64::from(report.healthy));
    if report.flipped {
        let (type_, ev_reason) = if report.healthy {
            tracing::info!("signals recovered");
            (EventType::Normal, reasons::SIGNALS_RECOVERED)
        } else {
            tracing::warn!(message = %report.message, "signals unhealthy");
            (EventType::Warning, reasons::SIGNALS_UNHEALTHY)
        };
        Box::pin(
            ctx.events
                .publish(tev, type_, ev_reason, "Autoscale", report.message.to_string()),
        )
        .await;
    }
    write_status(ctx, opts, tev, st, status, &report, &outcomes, now).await;
}

/// The event's status (empty before its first write), when its sale ends early (this loop's
/// `soldOutAt`, else the status'), and its schedule now; None for a schedule that cannot be
/// evaluated (the reconciler reports the invalid spec).
fn in_schedule<'a>(
    tev: &'a TicketingEvent,
    st: &mut EventState,
    now: DateTime<Utc>,
) -> Option<InSchedule<'a>> {
    let status = tev.status.as_ref().map_or_else(
        || std::borrow::Cow::Owned(Default::default()),
        std::borrow::Cow::Borrowed,
    );
    let sold_out_at = st.sold_out_at.or(status.sold_out_at);
    // The schedule only changes at its boundaries (or with the spec or soldOutAt): evaluated
    // again when one of them passed, not on every tick.
    let key = (st.prepared.as_ref().map(|p| p.source), sold_out_at);
    if let Some(kept) = &st.schedule
        && kept.key == key
        && kept.at <= now
        && kept.schedule.next_boundary.is_none_or(|b| now < b)
    {
        return Some((status, sold_out_at, kept.schedule.clone()));
    }
    let sched = Arc::new(schedule::evaluate(&tev.spec, sold_out_at, now).ok()?);
    st.schedule = Some(KeptSchedule {
        key,
        at: now,
        schedule: sched.clone(),
    });
    Some((status, sold_out_at, sched))
}

/// The event's status (empty before its first write), when its sale ends early, its schedule now.
type InSchedule<'a> = (
    std::borrow::Cow<'a, crate::crd::TicketingEventStatus>,
    Option<DateTime<Utc>>,
    Arc<schedule::Schedule>,
);

/// What a kept schedule was evaluated for: the spec in force ([`Prepared::source`]) and soldOutAt.
type ScheduleKey = (Option<(Option<i64>, bool)>, Option<DateTime<Utc>>);

/// A schedule evaluated at `at`: the same for every instant before its next boundary, for the
/// same spec in force and soldOutAt (`key`).
#[derive(Debug, Clone)]
struct KeptSchedule {
    key: ScheduleKey,
    at: DateTime<Utc>,
    schedule: Arc<schedule::Schedule>,
}

/// Signal metrics and the samples the decisions read (Redis reading plus Prometheus queries).
fn record_signals(
    ctx: &Context,
    series: &EventSeries,
    reading: &Result<EventSignals, SignalError>,
    prom: &Samples,
    last_ok: &mut Option<EventSignals>,
) -> Samples {
    match reading {
        Ok(s) => {
            series
                .queue_depth()
                .set(i64::try_from(s.queue_depth).unwrap_or(i64::MAX));
            series
                .active_users()
                .set(i64::try_from(s.active_users).unwrap_or(i64::MAX));
            *last_ok = Some(s.clone());
        }
        Err(e) => {
            ctx.metrics
                .signal_errors
                .get_or_create(&SignalErrorLabels {
                    signal: "redis",
                    reason: e.reason(),
                })
                .inc();
        }
    }
    for (_, r) in prom.iter() {
        if let Err(f) = r {
            ctx.metrics
                .signal_errors
                .get_or_create(&SignalErrorLabels {
                    signal: "prometheus",
                    reason: f.reason,
                })
                .inc();
        }
    }
    samples_of(reading, prom)
}

/// The samples the decisions read: the Redis reading plus the Prometheus queries.
fn samples_of(reading: &Result<EventSignals, SignalError>, prom: &Samples) -> Samples {
    let mut samples = crate::signals::samples(reading);
    for (signal, r) in prom.iter() {
        samples.insert(signal.clone(), r.clone());
    }
    samples
}

/// Plans one component from its book entry (held locked by the caller); None while the schedule
/// owns replicas (Closed) or the policy cannot be used.
#[allow(clippy::too_many_arguments)]
fn plan_locked(
    tev: &TicketingEvent,
    sched: &schedule::Schedule,
    c: Component,
    policy: Option<&crate::autoscaler::Policy>,
    samples: &Samples,
    entry: &crate::scaler::BookEntry,
    now: DateTime<Utc>,
    quiet: bool,
) -> Option<plan::Planned> {
    let adopted: Option<Memory>;
    let memory = match &entry.memory {
        Some(m) => Some(m),
        None => {
            adopted = entry.memory_or_adopted(tev, c, now);
            adopted.as_ref()
        }
    };
    let known = Known {
        current: entry.desired,
        memory,
        policy,
        quiet,
    };
    match plan_component(tev, sched, c, samples, known, now) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(component = %c, error = %e, "scaling policy unusable");
            None
        }
    }
}

/// The decision's metrics: the decisions counter (with its reason) and the need gauge.
fn count_decision(ctx: &Context, series: &mut EventSeries, c: Component, d: &crate::autoscaler::Decision) {
    series
        .decision(&ctx.metrics, c, d.direction.metric_label(), d.reason.label())
        .inc();
    series.set_need(&ctx.metrics, c, d.need);
}

/// Scale-in evidence is shown and carried across a leader change only where it can lead to a
/// scale-in: at the lowest replicas (a far-future event at its minimum) it stays in this
/// process's memory, so a settled event's status never changes for it (a new leader would
/// restart it anyway: nothing refreshes `signalsObservedAt` while nothing changes).
fn outcome_below_since(planned: &plan::Planned) -> Option<DateTime<Utc>> {
    let d = &planned.decision;
    d.memory.below_since.filter(|_| d.desired > planned.lowest)
}

/// What a component's decision leaves for the status (and its signal health).
fn outcome_of(planned: &plan::Planned, scaled: bool) -> (ComponentOutcome, SignalHealth) {
    let d = &planned.decision;
    let below_since = outcome_below_since(planned);
    let outcome = ComponentOutcome {
        sizing: component_sizing(planned),
        below_since,
        evidence_gap: below_since.map(|_| planned.evidence_gap),
        scaled,
    };
    (outcome, d.health.clone())
}

/// Decides one component under its book lock and applies a change; None while the schedule owns
/// replicas (Closed) or the policy cannot be used.
#[allow(clippy::too_many_arguments)]
async fn decide_and_apply(
    ctx: &Context,
    tev: &TicketingEvent,
    sched: &schedule::Schedule,
    c: Component,
    policy: Option<&crate::autoscaler::Policy>,
    samples: &Samples,
    series: &mut EventSeries,
    now: DateTime<Utc>,
) -> Option<(ComponentOutcome, SignalHealth)> {
    let mut entry = ctx.scaler.book().lock(tev, c).await;
    // The API calls are boxed: a settled event never makes them, and its task then stays small
    // instead of carrying the space of every request future.
    if entry.desired.is_none() {
        Box::pin(ctx.scaler.adopt(&mut entry, tev, c)).await;
    }
    if entry.unrecorded.is_some() {
        Box::pin(ctx.scaler.flush(&mut entry, tev, c)).await;
    }
    let planned = plan_locked(tev, sched, c, policy, samples, &entry, now, false)?;
    let d = &planned.decision;
    count_decision(ctx, series, c, d);
    let mut scaled = false;
    if planned.changes() {
        let desired = i32::try_from(d.desired).unwrap_or(i32::MAX);
        let reason = ScaleReason::new(kind_of(d.reason), d.message.clone());
        match Box::pin(ctx.scaler.apply_replicas(&mut entry, tev, c, desired, &reason)).await {
            Ok(_) => {
                entry.memory = Some(d.memory.clone());
                scaled = true;
            }
            Err(e) => {
                // The memory is not committed: the next tick decides again.
                tracing::warn!(component = %c, error = %e, "applying a scaling decision failed");
            }
        }
    } else {
        tracing::debug!(component = %c, replicas = d.desired, reason = %d.reason, message = %d.message, "hold");
        entry.memory = Some(d.memory.clone());
    }
    Some(outcome_of(&planned, scaled))
}

/// Decides a due event in place, without a task, when nothing of it needs the API: both book
/// entries free and adopted, no change of replicas, no sale end, no health flip, no status
/// write due. Then it commits what the full path would (memory, health gate, metrics) and
/// returns true; otherwise it commits nothing and returns false (the event goes to its task,
/// which decides again with the I/O). With thousands of settled events this is every event
/// of every tick: no task, timer or future per event.
fn settle_in_place(
    ctx: &Context,
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    reading: &Result<EventSignals, SignalError>,
    prom: &Samples,
    st: &mut EventState,
    now: DateTime<Utc>,
) -> bool {
    let Some([queue, reservation]) = ctx.scaler.book().try_lock_both(tev, &mut st.book) else {
        return false;
    };
    let mut entries = [(Component::Queue, queue), (Component::Reservation, reservation)];
    if entries
        .iter()
        .any(|(_, e)| e.desired.is_none() || e.unrecorded.is_some())
    {
        return false;
    }
    let Some((status, sold_out_at, sched)) = in_schedule(tev, st, now) else {
        return false;
    };
    let status = &*status;
    if report::sale_ends_now(sold_out_at, sched.phase, reading).is_some() {
        return false;
    }
    let samples = samples_of(reading, prom);
    // A hold here shows no text (the message is only logged, at debug): deciding without it
    // is a fifth of the settled tick's cost. What changes replicas is decided again, with its
    // text, by the event's task.
    let quiet = !tracing::enabled!(tracing::Level::DEBUG);
    // Per entry its plan; a component without one (Closed) is left out.
    let mut planned: [Option<plan::Planned>; 2] = [None, None];
    for ((c, entry), slot) in entries.iter().zip(&mut planned) {
        let policy = st.prepared.as_deref().and_then(|p| p.policy(*c).ok());
        if let Some(p) = plan_locked(tev, &sched, *c, policy, &samples, entry, now, quiet) {
            if p.changes() {
                return false;
            }
            *slot = Some(p);
        }
    }
    let mut gate = st.health_gate;
    let mut check = None;
    let mut health = [
        (Component::Queue, SignalHealth::Healthy),
        (Component::Reservation, SignalHealth::Healthy),
    ];
    let mut reported = 0;
    for p in planned.iter_mut().flatten() {
        health[reported] = (
            p.component,
            std::mem::replace(&mut p.decision.health, SignalHealth::Healthy),
        );
        reported += 1;
    }
    if reported > 0 {
        let report = report::health_report(&health[..reported], &mut gate);
        if report.flipped {
            return false;
        }
        let last_ok = reading.as_ref().ok().or(st.last_ok.as_ref());
        let (due, from_cache) = settled_status_due(opts, st, last_ok, status, &report, &planned, now);
        if due {
            return false;
        }
        check = Some((report.healthy, from_cache));
    }

    // Nothing needs the API: commit as the full path would.
    let series = series_of(&mut st.series, ctx, tev);
    record_signals(ctx, series, reading, prom, &mut st.last_ok);
    for ((c, entry), p) in entries.iter_mut().zip(planned) {
        let Some(p) = p else { continue };
        count_decision(ctx, series, *c, &p.decision);
        tracing::debug!(component = %c, replicas = p.decision.desired, reason = %p.decision.reason, message = %p.decision.message, "hold");
        entry.memory = Some(p.decision.memory);
    }
    if let Some((healthy, from_cache)) = check {
        st.health_gate = gate;
        series.signals_healthy().set(i64::from(healthy));
        if let Some(w) = from_cache {
            st.written = Some(w);
        }
    }
    true
}

/// Whether the autoscaler's status is due, and what it would write.
struct StatusPlan {
    due: bool,
    cond: k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
    body: crate::status::AutoscalerStatus,
    shapes: report::Shapes,
    /// The status found in the cache, counted as written (the first tick of this leadership).
    from_cache: Option<Written>,
}

/// The throttle's verdict for this tick (see [`report::write_due`]), from the body built with
/// `last_ok` (the reading of this tick, else the last good one).
#[allow(clippy::too_many_arguments)]
fn status_plan(
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    st: &EventState,
    last_ok: Option<&EventSignals>,
    status: &crate::crd::TicketingEventStatus,
    report: &report::HealthReport,
    outcomes: &BTreeMap<Component, ComponentOutcome>,
    now: DateTime<Utc>,
) -> StatusPlan {
    let existing = status.conditions.as_deref().unwrap_or_default();
    let cond = condition(
        existing,
        types::SIGNALS_HEALTHY,
        report.healthy,
        report.reason,
        report.message.clone(),
        tev.metadata.generation,
        now,
    );
    let body = report::status_body(last_ok, status, st.sold_out_at, outcomes);
    let shapes = report::Shapes::of(report.healthy, report.reason, &cond.message, &body);
    let (last, from_cache) = last_write(st, status, outcomes.keys().copied(), now);
    // A change of replicas shows the readings that made it at once, whatever the throttle says.
    let scaled = outcomes.values().any(|o| o.scaled);
    let due = scaled
        || report::write_due(
            last,
            shapes,
            opts.status_interval,
            report::evidence_heartbeat(outcomes),
        );
    StatusPlan {
        due,
        cond,
        body,
        shapes,
        from_cache,
    }
}

/// The last status write the throttle compares with: this process's, else what status already
/// holds, counted as written (the first tick of this process or of this leadership: a new leader
/// does not rewrite every settled event); the second is then what to remember as written.
fn last_write(
    st: &EventState,
    status: &crate::crd::TicketingEventStatus,
    components: impl Iterator<Item = Component>,
    now: DateTime<Utc>,
) -> (Option<report::LastWrite>, Option<Written>) {
    match &st.written {
        Some(w) => (
            Some(report::LastWrite {
                elapsed: w.at.elapsed(),
                shapes: w.shapes,
            }),
            None,
        ),
        None => match report::Shapes::in_status(status, components, now) {
            None => (None, None),
            Some((held, age)) => {
                let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                (
                    Some(report::LastWrite {
                        elapsed: age,
                        shapes: held,
                    }),
                    Some(Written { at, shapes: held }),
                )
            }
        },
    }
}

/// [`status_plan`]'s verdict for a settled tick (nothing scaled), without building the body
/// and condition it would write. Returns (due, what to remember as written).
fn settled_status_due(
    opts: &AutoscalerOptions,
    st: &EventState,
    last_ok: Option<&EventSignals>,
    status: &crate::crd::TicketingEventStatus,
    report: &report::HealthReport,
    planned: &[Option<plan::Planned>; 2],
    now: DateTime<Utc>,
) -> (bool, Option<Written>) {
    let (shapes, heartbeat) = settled_shapes(st.sold_out_at, last_ok, status, report, planned);
    let (last, from_cache) = last_write(st, status, planned.iter().flatten().map(|p| p.component), now);
    let due = report::write_due(last, shapes, opts.status_interval, heartbeat);
    (due, from_cache)
}

/// The shapes of the status [`status_plan`] would build from these plans (through
/// [`outcome_of`] and [`report::status_body`]) and its evidence heartbeat, read from the plans
/// themselves.
fn settled_shapes(
    sold_out_at: Option<DateTime<Utc>>,
    last_ok: Option<&EventSignals>,
    status: &crate::crd::TicketingEventStatus,
    report: &report::HealthReport,
    planned: &[Option<plan::Planned>; 2],
) -> (report::Shapes, Option<Duration>) {
    let mut shapes = report::ShapesOf::new(
        report.healthy,
        report.reason,
        &report.message,
        sold_out_at.or(status.sold_out_at),
        report::readings(last_ok, status),
    );
    let mut heartbeat: Option<Duration> = None;
    for c in Component::ALL {
        let p = planned.iter().flatten().find(|p| p.component == c);
        shapes.component(p.map(|p| {
            let d = &p.decision;
            let below_since = outcome_below_since(p);
            if below_since.is_some() {
                let beat = report::heartbeat_of(p.evidence_gap);
                heartbeat = Some(heartbeat.map_or(beat, |h| h.min(beat)));
            }
            report::ComponentShape {
                below_since,
                need: d.need,
                prewarm_replicas: p.prewarm,
                needs: (!d.memory.need_marks.is_empty())
                    .then(|| d.memory.need_marks.iter().map(|m| m.to_status().replicas)),
            }
        }));
    }
    (shapes.finish(), heartbeat)
}

/// The autoscaler's status fields with its own field manager, throttled by [`report::write_due`].
#[allow(clippy::too_many_arguments)]
async fn write_status(
    ctx: &Context,
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    st: &mut EventState,
    status: &crate::crd::TicketingEventStatus,
    report: &report::HealthReport,
    outcomes: &BTreeMap<Component, ComponentOutcome>,
    now: DateTime<Utc>,
) {
    let StatusPlan {
        due,
        cond,
        mut body,
        shapes,
        from_cache,
    } = status_plan(opts, tev, st, st.last_ok.as_ref(), status, report, outcomes, now);
    if let Some(w) = from_cache {
        st.written = Some(w);
    }
    if !due {
        return;
    }
    body.signals_observed_at = st
        .last_ok
        .as_ref()
        .map(|s| s.observed_at)
        .or(status.signals_observed_at);
    body.conditions = vec![cond];
    let api: Api<TicketingEvent> = Api::namespaced(ctx.client.clone(), &tev.namespace().unwrap_or_default());
    let value = serde_json::to_value(&body).unwrap_or_default();
    match Box::pin(apply_status(&api, tev, crate::field_managers::AUTOSCALER, value)).await {
        Ok(_) => {
            st.written = Some(Written {
                at: Instant::now(),
                shapes,
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, "writing the autoscaler's status failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod settled_tests {
    use super::*;
    use crate::autoscaler::{Decision, Direction, Reason};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn planned(
        component: Component,
        need: u32,
        marks: &[(i64, u32)],
        below: Option<i64>,
        lowest: u32,
    ) -> plan::Planned {
        let mut memory = Memory::default();
        for (at, n) in marks {
            memory
                .need_marks
                .push(crate::autoscaler::NeedMark { at: t(*at), need: *n });
        }
        memory.below_since = below.map(t);
        plan::Planned {
            component,
            current: 4,
            decision: Decision {
                desired: 4,
                direction: Direction::Hold,
                reason: Reason::WithinThresholds,
                message: String::new(),
                health: SignalHealth::Healthy,
                memory,
                need: Some(need),
            },
            prewarm: (need > 3).then_some(need - 1),
            evidence_gap: Duration::from_secs(40),
            lowest,
        }
    }

    /// The settled path judges the status by [`settled_shapes`]; a write is built by
    /// [`status_plan`] from [`outcome_of`] and [`report::status_body`]. Both must see the same
    /// shapes, or a settled tick would miss a change (or rewrite an unchanged status).
    #[test]
    fn the_settled_shapes_are_the_shapes_of_the_body_a_write_would_carry() {
        let status = crate::crd::TicketingEventStatus {
            queue_depth: Some(40),
            active_users: Some(7),
            sold_out_at: Some(t(5)),
            ..Default::default()
        };
        let reading = EventSignals {
            queue_depth: 900,
            pre_queue_depth: 30,
            active_users: 12,
            sold_out: false,
            counts: Default::default(),
            observed_at: t(9),
        };
        let long = "x".repeat(1500);
        let reports = [
            report::HealthReport {
                healthy: true,
                flipped: false,
                reason: "SignalsFresh",
                message: "every signal is fresh".into(),
            },
            report::HealthReport {
                healthy: false,
                flipped: false,
                reason: "Timeout",
                message: long.into(),
            },
        ];
        let cases: Vec<[Option<plan::Planned>; 2]> = vec![
            [None, None],
            [
                Some(planned(Component::Queue, 6, &[(1, 8), (3, 6)], Some(2), 2)),
                None,
            ],
            [
                Some(planned(Component::Queue, 6, &[], Some(2), 4)),
                Some(planned(Component::Reservation, 2, &[(4, 3)], None, 1)),
            ],
            [
                None,
                Some(planned(Component::Reservation, 9, &[(4, 9)], Some(1), 1)),
            ],
        ];
        let mut seen = std::collections::HashSet::new();
        for report in &reports {
            for last_ok in [None, Some(&reading)] {
                for sold_out_at in [None, Some(t(7))] {
                    for planned in &cases {
                        let (shapes, heartbeat) =
                            settled_shapes(sold_out_at, last_ok, &status, report, planned);
                        let outcomes: BTreeMap<Component, ComponentOutcome> = planned
                            .iter()
                            .flatten()
                            .map(|p| (p.component, outcome_of(p, false).0))
                            .collect();
                        let cond = condition(
                            &[],
                            types::SIGNALS_HEALTHY,
                            report.healthy,
                            report.reason,
                            report.message.clone(),
                            None,
                            t(10),
                        );
                        let body = report::status_body(last_ok, &status, sold_out_at, &outcomes);
                        assert_eq!(
                            shapes,
                            report::Shapes::of(report.healthy, report.reason, &cond.message, &body)
                        );
                        assert_eq!(heartbeat, report::evidence_heartbeat(&outcomes));
                        seen.insert(shapes);
                    }
                }
            }
        }
        // The cases differ, and so do their shapes: the comparison above is not between constants.
        assert!(seen.len() > 20, "only {} distinct shapes", seen.len());
    }
}
