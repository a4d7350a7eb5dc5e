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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use tokio::sync::watch;

use crate::autoscaler::plan::{self, Known, plan_component};
use crate::autoscaler::{Memory, Reason, Samples, SignalHealth};
use crate::crd::{Component, Phase, TicketingEvent};
use crate::events::EventType;
use crate::metrics::{AutoscalerDecisionLabels, EventLabels, SignalErrorLabels};
use crate::reconciler::Context;
use crate::scaler::{ScaleReason, kinds};
use crate::schedule;
use crate::signals::{EventSignals, PrometheusSignals, SignalError, SignalReader};
use crate::status::{apply_status, condition, reasons, types};
use tiketi_shared::redis::RedisArgs;

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct AutoscalerOptions {
    /// Bound of one Redis pipeline or Prometheus query.
    pub signal_timeout: Duration,
    /// Least time between two status writes that only carry new signal values (queueDepth,
    /// activeUsers). Health flips, `belowSince` and `soldOutAt` are written at once.
    pub status_interval: Duration,
    /// Status is rewritten at least this often, so `signalsObservedAt` stays current.
    pub status_heartbeat: Duration,
    /// How long a Redis URL read from a Secret is reused before it is read again.
    pub secret_ttl: Duration,
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
            status_heartbeat: Duration::from_secs(60),
            secret_ttl: Duration::from_secs(30),
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
/// A Secret that could not be read is tried again after this long.
const SECRET_RETRY: Duration = Duration::from_secs(5);

/// One Redis endpoint; events sharing it share one pipeline per tick.
/// One Redis the loop reads from (URL from the event's Secret, mode from its spec).
type Endpoint = RedisArgs;

type SecretKey = (String, String, String);

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
}

/// Reported signal health with hysteresis: the first reading is reported at once, after that a
/// flip needs [`HealthGate::TICKS`] consecutive readings the other way, so a Redis that hovers
/// around the timeout does not flood Events and status writes. Decisions do not wait for it: a
/// tick with unhealthy signals never scales in, whatever is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthGate {
    reported: Option<bool>,
    /// Consecutive readings that disagree with `reported`.
    pub against: u32,
}

impl HealthGate {
    pub const TICKS: u32 = 3;

    /// Feeds one reading; returns (reported health, whether it flipped now).
    pub fn observe(&mut self, healthy: bool) -> (bool, bool) {
        match self.reported {
            None => {
                self.reported = Some(healthy);
                (healthy, !healthy)
            }
            Some(r) if r == healthy => {
                self.against = 0;
                (r, false)
            }
            Some(r) => {
                self.against += 1;
                if self.against >= Self::TICKS {
                    self.reported = Some(healthy);
                    self.against = 0;
                    (healthy, true)
                } else {
                    (r, false)
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Written {
    at: Instant,
    urgent: serde_json::Value,
    snapshot: serde_json::Value,
}

impl EventState {
    fn new(now: Instant) -> Self {
        Self {
            next_due: now,
            last_ok: None,
            sold_out_at: None,
            health_gate: HealthGate::default(),
            written: None,
        }
    }
}

/// The loop; [`Autoscaler::run`] drives it.
pub struct Autoscaler {
    ctx: Arc<Context>,
    store: Store<TicketingEvent>,
    opts: AutoscalerOptions,
    epoch: Instant,
    events: HashMap<String, EventState>,
    readers: HashMap<Endpoint, (SignalReader, Instant)>,
    urls: HashMap<SecretKey, (Result<String, SignalError>, Instant)>,
    prometheus: HashMap<String, PrometheusSignals>,
}

impl Autoscaler {
    pub fn new(ctx: Arc<Context>, store: Store<TicketingEvent>, opts: AutoscalerOptions) -> Self {
        Self {
            ctx,
            store,
            opts,
            epoch: Instant::now(),
            events: HashMap::new(),
            readers: HashMap::new(),
            urls: HashMap::new(),
            prometheus: HashMap::new(),
        }
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
                self.events.clear();
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
        let now_i = Instant::now();
        let now = Utc::now();
        let all = self.store.state();
        let uids: HashSet<String> = all.iter().filter_map(|t| t.uid()).collect();
        self.events.retain(|uid, _| uids.contains(uid));
        self.ctx.scaler.book().retain(&uids);
        self.readers.retain(|_, (_, used)| used.elapsed() < READER_IDLE);
        self.ctx
            .metrics
            .autoscaler_events
            .set(i64::try_from(all.len()).unwrap_or(i64::MAX));

        let mut wake = now_i + MAX_SLEEP;
        let mut due: Vec<(Arc<TicketingEvent>, EventState)> = Vec::new();
        for tev in all {
            let Some(uid) = tev.uid() else { continue };
            // While an edit is invalid the last good spec stays in force (scaling included).
            let tev = match tev.in_force() {
                std::borrow::Cow::Borrowed(_) => tev,
                std::borrow::Cow::Owned(good) => Arc::new(good),
            };
            let phase = tev.status.as_ref().and_then(|s| s.phase);
            // Not yet deployed by the reconciler, invalid, or being deleted: nothing to scale.
            if tev.metadata.deletion_timestamp.is_some() || matches!(phase, None | Some(Phase::Failed)) {
                continue;
            }
            let poll = match plan::poll_interval(&tev) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(event = %tev.name_any(), error = %e, "scaling policy unusable");
                    continue;
                }
            };
            let mut st = self.events.remove(&uid).unwrap_or_else(|| EventState::new(now_i));
            if st.next_due <= now_i {
                st.next_due = self.align(now_i + poll / 2, poll).max(now_i + poll / 2);
                wake = wake.min(st.next_due);
                due.push((tev, st));
            } else {
                wake = wake.min(st.next_due);
                self.events.insert(uid, st);
            }
        }
        if due.is_empty() {
            return wake;
        }

        let readings = self.read_redis(&due).await;
        let prom = self.read_prometheus(&due).await;
        // Built eagerly so each future owns what it uses (a lazy stream closure that borrows would
        // make the whole loop future not Send).
        let jobs: Vec<_> = due
            .into_iter()
            .zip(readings)
            .zip(prom)
            .map(|(((tev, st), reading), prom)| {
                let ctx = self.ctx.clone();
                let opts = self.opts.clone();
                async move {
                    let uid = tev.uid().unwrap_or_default();
                    let mut st = st;
                    let bound = opts.event_timeout;
                    let handled = handle(&ctx, &opts, &tev, reading, prom, &mut st, now);
                    if tokio::time::timeout(bound, handled).await.is_err() {
                        // What was applied is in the scaler's book; the next tick decides again.
                        tracing::warn!(event = %tev.name_any(), ?bound, "deciding the event took too long (API calls hanging): skipped this tick");
                    }
                    (uid, st)
                }
            })
            .collect();
        let handled: Vec<(String, EventState)> = futures::stream::iter(jobs)
            .buffer_unordered(self.opts.concurrency.max(1))
            .collect()
            .await;
        self.events.extend(handled);
        wake
    }

    /// Reads the Redis signals of `due`, one pipeline per endpoint, the endpoints concurrently.
    async fn read_redis(
        &mut self,
        due: &[(Arc<TicketingEvent>, EventState)],
    ) -> Vec<Result<EventSignals, SignalError>> {
        let mut out: Vec<Option<Result<EventSignals, SignalError>>> = vec![None; due.len()];
        let mut groups: HashMap<Endpoint, Vec<usize>> = HashMap::new();
        for (i, (tev, _)) in due.iter().enumerate() {
            match self.endpoint(tev).await {
                Ok(ep) => groups.entry(ep).or_default().push(i),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let timeout = self.opts.signal_timeout;
        let mut jobs = Vec::new();
        for (ep, idx) in groups {
            let reader = self.readers.remove(&ep).map(|(r, _)| r);
            let ids: Vec<String> = idx
                .iter()
                .map(|&i| due[i].0.spec.event_id_or(&due[i].0.name_any()))
                .collect();
            jobs.push(async move {
                let reader = match reader {
                    Some(r) => Ok(r),
                    None => SignalReader::connect(&ep, timeout),
                };
                match reader {
                    Ok(mut r) => {
                        let tick = r.read(&ids).await;
                        (
                            ep,
                            Some(r),
                            idx,
                            tick.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
                        )
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

    /// The Redis endpoint of an event, from its Secret (cached for `secret_ttl`).
    async fn endpoint(&mut self, tev: &TicketingEvent) -> Result<Endpoint, SignalError> {
        let ns = tev.namespace().unwrap_or_default();
        let r = &tev.spec.redis.url_secret_ref;
        let key: SecretKey = (ns.clone(), r.name.clone(), r.key.clone());
        let fresh = |res: &Result<String, SignalError>, at: &Instant, ttl: Duration| {
            let ttl = if res.is_ok() { ttl } else { SECRET_RETRY };
            at.elapsed() < ttl
        };
        let cached = self
            .urls
            .get(&key)
            .filter(|(res, at)| fresh(res, at, self.opts.secret_ttl))
            .map(|(res, _)| res.clone());
        let url = match cached {
            Some(url) => url,
            None => {
                let res = read_secret_key(&self.ctx.client, &ns, &r.name, &r.key).await;
                self.urls.insert(key, (res.clone(), Instant::now()));
                res
            }
        }?;
        Ok(Endpoint {
            url,
            cluster: tev.spec.redis.cluster_mode,
            tls: tev.spec.redis.tls,
            ca_file: self.opts.redis_ca_file.clone(),
        })
    }

    /// Runs every due event's Prometheus queries (concurrently); empty samples for the others.
    async fn read_prometheus(&mut self, due: &[(Arc<TicketingEvent>, EventState)]) -> Vec<Samples> {
        let mut jobs = Vec::new();
        for (tev, _) in due {
            let queries = plan::prometheus_queries(tev);
            let client = match (&tev.spec.prometheus, queries.is_empty()) {
                (Some(p), false) => {
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
                    self.prometheus.get(&p.url).cloned()
                }
                _ => None,
            };
            jobs.push(async move {
                let mut samples = Samples::new();
                if let Some(c) = client {
                    c.read_into(&queries, &mut samples).await;
                }
                samples
            });
        }
        futures::future::join_all(jobs).await
    }
}

async fn read_secret_key(
    client: &kube::Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<String, SignalError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| SignalError::Config(format!("reading Secret {ns}/{name}: {e}")))?
        .ok_or_else(|| SignalError::Config(format!("Secret {ns}/{name} does not exist")))?;
    let bytes = secret
        .data
        .and_then(|d| d.get(key).map(|b| b.0.clone()))
        .or_else(|| {
            secret
                .string_data
                .and_then(|d| d.get(key).map(|s| s.clone().into_bytes()))
        })
        .ok_or_else(|| SignalError::Config(format!("Secret {ns}/{name} has no key {key:?}")))?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| SignalError::Config(format!("Secret {ns}/{name} key {key:?} is not UTF-8")))
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

/// Decides and applies one event, updating its state (a timeout may cut it short: every field stays consistent on its own).
async fn handle(
    ctx: &Context,
    opts: &AutoscalerOptions,
    tev: &TicketingEvent,
    reading: Result<EventSignals, SignalError>,
    prom: Samples,
    st: &mut EventState,
    now: DateTime<Utc>,
) {
    let ns = tev.namespace().unwrap_or_default();
    let name = tev.name_any();
    let labels = EventLabels {
        namespace: ns.clone(),
        event: name.clone(),
    };
    let status = tev.status.clone().unwrap_or_default();
    let sold_out_at = st.sold_out_at.or(status.sold_out_at);
    let sched = match schedule::evaluate(&tev.spec, sold_out_at, now) {
        Ok(s) => s,
        Err(_) => return, // the reconciler reports the invalid spec
    };

    match &reading {
        Ok(s) => {
            ctx.metrics
                .queue_depth
                .get_or_create(&labels)
                .set(i64::try_from(s.queue_depth).unwrap_or(i64::MAX));
            ctx.metrics
                .active_users
                .get_or_create(&labels)
                .set(i64::try_from(s.active_users).unwrap_or(i64::MAX));
            st.last_ok = Some(s.clone());
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
    let mut samples = crate::signals::samples(&reading);
    for (signal, r) in prom.iter() {
        if let Err(f) = r {
            ctx.metrics
                .signal_errors
                .get_or_create(&SignalErrorLabels {
                    signal: "prometheus",
                    reason: f.reason,
                })
                .inc();
        }
        samples.insert(signal.clone(), r.clone());
    }

    // Sold out with nobody waiting: end the sale early so capacity is released.
    if sold_out_at.is_none()
        && sched.phase == Phase::OnSale
        && reading.as_ref().is_ok_and(EventSignals::sold_out_and_drained)
    {
        st.sold_out_at = Some(now);
        let sold = reading.as_ref().ok().and_then(|s| s.counts.sold);
        let note = match sold {
            Some(n) => format!("sold out ({n} sold) and the queue is empty: the sale ends early"),
            None => "sold out and the queue is empty: the sale ends early".to_owned(),
        };
        tracing::info!(namespace = %ns, event = %name, "{note}");
        ctx.events
            .publish(tev, EventType::Normal, reasons::SOLD_OUT, "Autoscale", note)
            .await;
    }

    let mut health: Vec<(Component, SignalHealth)> = Vec::new();
    let mut below: BTreeMap<Component, Option<DateTime<Utc>>> = BTreeMap::new();
    // The shape of each need history (its needs, not the refreshed times): a change is written at
    // once, so a new leader inherits the window's highest need with the time it was last seen.
    let mut need_shapes: BTreeMap<Component, Vec<u32>> = BTreeMap::new();
    let mut sizing: BTreeMap<Component, crate::status::AutoscalerComponentStatus> = BTreeMap::new();
    for c in Component::ALL {
        let mut entry = ctx.scaler.book().lock(tev, c).await;
        let memory: Option<Memory> = entry.memory.clone();
        let known = Known {
            current: entry.desired,
            memory: memory.as_ref(),
        };
        let planned = match plan_component(tev, &sched, c, &samples, known, now) {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(namespace = %ns, event = %name, component = %c, error = %e, "scaling policy unusable");
                continue;
            }
        };
        let d = &planned.decision;
        ctx.metrics
            .autoscaler_decisions
            .get_or_create(&AutoscalerDecisionLabels {
                namespace: ns.clone(),
                event: name.clone(),
                component: c.as_str(),
                direction: d.direction.metric_label(),
                reason: d.reason.label(),
            })
            .inc();
        if planned.changes() {
            let desired = i32::try_from(d.desired).unwrap_or(i32::MAX);
            let reason = ScaleReason::new(kind_of(d.reason), d.message.clone());
            match ctx
                .scaler
                .apply_replicas(&mut entry, tev, c, desired, &reason)
                .await
            {
                Ok(_) => entry.memory = Some(d.memory.clone()),
                Err(e) => {
                    // The memory is not committed: the next tick decides again.
                    tracing::warn!(namespace = %ns, event = %name, component = %c, error = %e, "applying a scaling decision failed");
                }
            }
        } else {
            tracing::debug!(namespace = %ns, event = %name, component = %c, replicas = d.desired, reason = %d.reason, message = %d.message, "hold");
            entry.memory = Some(d.memory.clone());
        }
        below.insert(c, d.memory.below_since);
        need_shapes.insert(c, d.memory.need_marks.iter().map(|m| m.need).collect());
        ctx.metrics.set_need(&ns, &name, c, d.need);
        sizing.insert(c, component_sizing(&planned));
        health.push((c, d.health.clone()));
    }
    if health.is_empty() {
        return; // Closed: the schedule pins replicas; nothing of ours to report
    }

    // SignalsHealthy and the Events on its flips.
    // Both components usually read the same signal: name each problem once.
    let mut problems: Vec<(&'static str, DateTime<Utc>, String)> = Vec::new();
    for (_, h) in &health {
        if let SignalHealth::Unhealthy {
            since,
            reason,
            problems: texts,
        } = h
        {
            for text in texts {
                if !problems.iter().any(|p| &p.2 == text) {
                    problems.push((*reason, *since, text.clone()));
                }
            }
        }
    }
    let (healthy, flipped) = st.health_gate.observe(problems.is_empty());
    if healthy {
        // Reported healthy while a short spell of problems has not yet flipped it.
        problems.clear();
    }
    ctx.metrics
        .signals_healthy
        .get_or_create(&labels)
        .set(i64::from(healthy));
    let (reason, message) = match problems.first() {
        None if !healthy => (
            reasons::SIGNALS_UNHEALTHY,
            format!(
                "signals fresh again ({} of {} readings before reporting healthy)",
                st.health_gate.against,
                HealthGate::TICKS
            ),
        ),
        None => (
            reasons::SIGNALS_FRESH,
            "every signal the scaling policies use is fresh".to_owned(),
        ),
        Some((reason, since, _)) => (
            *reason,
            format!(
                "{}; since {}: holding replicas (no scale-in on stale data)",
                problems
                    .iter()
                    .map(|p| p.2.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        ),
    };
    if flipped {
        let (type_, ev_reason) = if healthy {
            (EventType::Normal, reasons::SIGNALS_RECOVERED)
        } else {
            (EventType::Warning, reasons::SIGNALS_UNHEALTHY)
        };
        if healthy {
            tracing::info!(namespace = %ns, event = %name, "signals recovered");
        } else {
            tracing::warn!(namespace = %ns, event = %name, %message, "signals unhealthy");
        }
        ctx.events
            .publish(tev, type_, ev_reason, "Autoscale", message.clone())
            .await;
    }

    // The autoscaler's status fields, throttled.
    let existing = status.conditions.clone().unwrap_or_default();
    let cond = condition(
        &existing,
        types::SIGNALS_HEALTHY,
        healthy,
        reason,
        message,
        tev.metadata.generation,
        now,
    );
    let last = st.last_ok.as_ref();
    let observed = last.map(|s| s.observed_at).or(status.signals_observed_at);
    let mut body = crate::status::AutoscalerStatus {
        queue_depth: last
            .map(|s| s.queue_depth)
            .or(status.queue_depth.and_then(|v| u64::try_from(v).ok())),
        active_users: last
            .map(|s| s.active_users)
            .or(status.active_users.and_then(|v| u64::try_from(v).ok())),
        pre_queue_depth: last.map(|s| s.pre_queue_depth),
        sold_out_at: st.sold_out_at.or(status.sold_out_at),
        ..Default::default()
    };
    for (c, b) in &below {
        let mut fields = sizing.get(c).cloned().unwrap_or_default();
        fields.below_since = *b;
        *body.component_mut(*c) = Some(fields);
    }
    let urgent = serde_json::json!({
        "healthy": healthy,
        "reason": reason,
        "soldOutAt": body.sold_out_at,
        "below": below.iter().map(|(c, b)| (c.as_str(), *b)).collect::<BTreeMap<_, _>>(),
        "needs": need_shapes.iter().map(|(c, n)| (c.as_str(), n.clone())).collect::<BTreeMap<_, _>>(),
    });
    let mut snapshot = serde_json::to_value(&body).unwrap_or_default();
    snapshot["message"] = cond.message.clone().into();
    let write = match &st.written {
        None => true,
        Some(w) => {
            w.urgent != urgent
                || (w.snapshot != snapshot && w.at.elapsed() >= opts.status_interval)
                || w.at.elapsed() >= opts.status_heartbeat
        }
    };
    if !write {
        return;
    }
    body.signals_observed_at = observed;
    body.conditions = vec![cond];
    let api: Api<TicketingEvent> = Api::namespaced(ctx.client.clone(), &ns);
    let value = serde_json::to_value(&body).unwrap_or_default();
    match apply_status(&api, tev, crate::field_managers::AUTOSCALER, value).await {
        Ok(_) => {
            st.written = Some(Written {
                at: Instant::now(),
                urgent,
                snapshot,
            })
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, event = %name, error = %e, "writing the autoscaler's status failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod health_gate_tests {
    use super::HealthGate;

    #[test]
    fn a_hovering_signal_does_not_flip_the_reported_health() {
        let mut g = HealthGate::default();
        assert_eq!(
            g.observe(true),
            (true, false),
            "first healthy reading: reported, no Event"
        );
        // Unhealthy every other tick: never three in a row, never reported.
        for i in 0..20 {
            assert_eq!(g.observe(i % 2 == 1), (true, false), "tick {i}");
        }
        // Three in a row flip it (one Event), and three healthy flip it back.
        assert_eq!(g.observe(false), (true, false));
        assert_eq!(g.observe(false), (true, false));
        assert_eq!(g.observe(false), (false, true));
        assert_eq!(g.observe(true), (false, false));
        assert_eq!(g.observe(true), (false, false));
        assert_eq!(g.observe(true), (true, true));
        // An operator that starts on a broken Redis reports it at once.
        assert_eq!(HealthGate::default().observe(false), (false, true));
    }
}
