//! The HTTP surface: routes, handlers, identity, rate limits, request metrics and the OpenAPI
//! document generated from the handlers.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State as AxState};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::registry::Registry;
use tiketi_shared::config::EventConfig;
use tiketi_shared::http::{BearerAuth, metrics_response};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::problem::Problem;
use tiketi_shared::token::{AdmissionKeys, UserVerifier};
use tokio::sync::watch;
use utoipa::OpenApi;

use crate::api::{Admission, EtaRange, QueueStats, QueueStatus, State};
use crate::eta::eta;
use crate::events::Events;
use crate::hub::{Fix, Hub, Snapshot};
use crate::metrics::{Metrics, ReasonLabel};
use crate::store::{Observed, Standing, Store, StoreError, StreamFix};

/// Everything a handler needs; shared behind an `Arc`.
pub struct App {
    pub store: Store,
    pub events: Events,
    pub verifier: UserVerifier,
    pub admission_keys: AdmissionKeys,
    pub metrics: Metrics,
    pub registry: Registry,
    pub hub: Hub,
    pub draining: AtomicBool,
    /// Flips to true when the process stops: open streams end so the drain can finish.
    pub stop: watch::Receiver<bool>,
    pub per_user: DefaultKeyedRateLimiter<String>,
    pub per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// See `--trusted-proxy-hops`.
    pub trusted_proxy_hops: u32,
    pub max_streams: usize,
}

pub type Shared = Arc<App>;

pub fn limiter<K: std::hash::Hash + Eq + Clone>(per_second: u32) -> DefaultKeyedRateLimiter<K> {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(per_second.max(1).saturating_mul(2)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    metrics: &Metrics,
    scope: &'static str,
) -> Result<(), Problem> {
    limiter.check_key(key).map_err(|not_until| {
        metrics
            .rate_limited
            .get_or_create(&ReasonLabel { reason: scope })
            .inc();
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        Problem::rate_limited(wait.as_secs_f64().ceil().max(1.0) as u64).with("scope", scope)
    })
}

fn unavailable(app: &App, e: StoreError) -> Problem {
    app.metrics
        .redis_errors
        .get_or_create(&ReasonLabel { reason: e.reason() })
        .inc();
    tracing::warn!(error = %e, "redis call failed");
    Problem::unavailable(format!(
        "the waiting room's store is unavailable ({}); retry shortly",
        e.reason()
    ))
}

/// Joins or polls through the store's batcher. A call the store could not serve (shed under
/// overload, or Redis too slow) cost the user a heartbeat: the event's heartbeats-shed marker
/// tells the admitting replica not to sweep anyone for a full heartbeat timeout.
async fn observe(app: &App, cfg: &EventConfig, user: &str, join: bool) -> Result<Observed, Problem> {
    let keys = EventKeys::new(&cfg.event_id);
    match app
        .store
        .status(
            &keys,
            user,
            cfg.on_sale_at.timestamp_millis(),
            sale_ends_ms(cfg),
            join,
        )
        .await
    {
        Ok(obs) => Ok(obs),
        Err(e) => {
            app.store.note_shed(
                &keys,
                std::time::Duration::from_secs(cfg.queue.heartbeat_timeout_seconds),
            );
            Err(unavailable(app, e))
        }
    }
}

fn event_config(app: &App, event: &str) -> Result<Arc<EventConfig>, Problem> {
    app.events.get(event).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-event",
            format!("no event {event:?} is served here"),
        )
    })
}

fn not_in_queue(event: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-in-queue",
        format!(
            "you are not in the queue of {event:?}: never joined, left, or dropped after missing heartbeats; join again"
        ),
    )
}

/// The verified user id of the request (bearer JWT `sub`), after the per-user rate limit.
pub struct User(pub String);

impl FromRequestParts<Shared> for User {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &Shared) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let user = app.verifier.verify_bearer(header).map_err(|e| {
            Problem::unauthorized(format!("a valid bearer user token is required: {e}"))
                .with("reason", e.reason())
        })?;
        check(&app.per_user, &user, &app.metrics, "user")?;
        Ok(User(user))
    }
}

// === status views ===

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Builds the wire status from a standing. None when the user is not in line.
fn view(
    app: &App,
    cfg: &EventConfig,
    user: &str,
    standing: &Standing,
    now_ms: i64,
    rate: Option<f64>,
) -> Result<Option<QueueStatus>, Problem> {
    let until = ((cfg.on_sale_at.timestamp_millis() - now_ms).max(0) as u64).div_ceil(1000);
    let configured = cfg.queue.rate_per_second;
    let mut s = QueueStatus {
        event_id: cfg.event_id.clone(),
        state: State::Waiting,
        position: None,
        pre_queue: false,
        pre_queue_size: None,
        eta_seconds: None,
        eta_range: None,
        on_sale_at: cfg.on_sale_at,
        admission: None,
        poll_after_seconds: 2,
    };
    match *standing {
        Standing::Waiting { rank, .. } => {
            let e = eta(rank + 1, rate, configured, until);
            s.position = Some(rank + 1);
            s.eta_seconds = Some(e.eta_seconds);
            s.eta_range = Some(EtaRange {
                min_seconds: e.eta_min_seconds,
                max_seconds: e.eta_max_seconds,
            });
        }
        Standing::PreQueue { size } => {
            // After the draw the place is uniform in 1..=size.
            let mid = eta(size.div_ceil(2).max(1), None, configured, until);
            let lo = eta(1, None, configured, until);
            let hi = eta(size.max(1), None, configured, until);
            s.pre_queue = true;
            s.pre_queue_size = Some(size);
            s.eta_seconds = Some(mid.eta_seconds);
            s.eta_range = Some(EtaRange {
                min_seconds: lo.eta_min_seconds,
                max_seconds: hi.eta_max_seconds,
            });
            s.poll_after_seconds = until.clamp(2, 30);
        }
        Standing::Admitted { expires_ms } => {
            let token = app
                .admission_keys
                .issue(&cfg.event_id, user, now_ms, expires_ms)
                .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "token", e.to_string()))?;
            s.state = State::Admitted;
            s.admission = Some(Admission {
                token,
                expires_at: millis_to_time(expires_ms),
                expires_at_ms: expires_ms,
            });
            s.poll_after_seconds = 30;
        }
        Standing::SoldOut { .. } => {
            // Keep polling to keep the place: seats may come back (holds lapse, releases).
            s.state = State::SoldOut;
            s.poll_after_seconds = 30;
        }
        Standing::Closed => s.state = State::Closed,
        Standing::Absent => return Ok(None),
    }
    // Polling is the heartbeat: never suggest waiting so long that the place is lost.
    s.poll_after_seconds = s
        .poll_after_seconds
        .min((cfg.queue.heartbeat_timeout_seconds / 3).max(1));
    Ok(Some(s))
}

fn sale_ends_ms(cfg: &EventConfig) -> Option<i64> {
    cfg.sale_ends_at.map(|t| t.timestamp_millis())
}

// === handlers ===

/// Join the event's waiting room. Idempotent: a repeat returns the same place (200).
#[utoipa::path(post, path = "/v1/events/{event}/queue", tag = "queue",
    params(("event" = String, Path, description = "event id")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "joined", body = QueueStatus),
        (status = 200, description = "already in line (or admitted): the same place; while sold out, `state` soldOut and the place is kept (keep polling)", body = QueueStatus),
        (status = 401, description = "no valid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "sold out for someone not in line (`type` …/sold-out) or sale closed (…/closed); `state` says which", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable; see Retry-After", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn join(
    AxState(app): AxState<Shared>,
    Path(event): Path<String>,
    User(user): User,
) -> Result<Response, Problem> {
    let cfg = event_config(&app, &event)?;
    let obs = observe(&app, &cfg, &user, true).await?;
    let result = match (&obs.standing, obs.created) {
        (Standing::Waiting { .. }, true) => "new",
        (Standing::PreQueue { .. }, true) => "prequeue",
        (Standing::Admitted { .. }, _) => "admitted",
        (Standing::SoldOut { .. }, _) => "sold_out",
        (Standing::Closed, _) => "closed",
        _ => "repeat",
    };
    app.metrics
        .joins
        .get_or_create(&crate::metrics::JoinLabels {
            event: event.clone(),
            result,
        })
        .inc();
    match obs.standing {
        // Someone already in line (a page reload re-joins) keeps their place: the answer is
        // their standing, as from `GET …/me`, telling them to keep polling.
        Standing::SoldOut { in_line: false } => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "sold-out",
                format!("{event} is sold out; the queue is closed"),
            )
            .with("state", State::SoldOut));
        }
        Standing::Closed => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "closed",
                format!("the sale of {event} has ended"),
            )
            .with("state", State::Closed));
        }
        _ => {}
    }
    let Observed {
        standing,
        created,
        now_ms,
        admitted_total: _,
    } = obs;
    let status = view(&app, &cfg, &user, &standing, now_ms, app.hub.rate(&event))?
        .ok_or_else(|| not_in_queue(&event))?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)).into_response())
}

/// Your standing: position and ETA while waiting, the admission token once admitted. Polling
/// this (or holding the stream open) is the heartbeat that keeps your place.
#[utoipa::path(get, path = "/v1/events/{event}/queue/me", tag = "queue",
    params(("event" = String, Path, description = "event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "your standing", body = QueueStatus),
        (status = 401, description = "no valid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown event, or not in line", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(
    AxState(app): AxState<Shared>,
    Path(event): Path<String>,
    User(user): User,
) -> Result<Json<QueueStatus>, Problem> {
    let cfg = event_config(&app, &event)?;
    let obs = observe(&app, &cfg, &user, false).await?;
    let status = view(&app, &cfg, &user, &obs.standing, obs.now_ms, app.hub.rate(&event))?;
    status.map(Json).ok_or_else(|| not_in_queue(&event))
}

/// Leave the line (or give back an admission). Idempotent.
#[utoipa::path(delete, path = "/v1/events/{event}/queue/me", tag = "queue",
    params(("event" = String, Path, description = "event id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "not in line any more"),
        (status = 401, description = "no valid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn leave(
    AxState(app): AxState<Shared>,
    Path(event): Path<String>,
    User(user): User,
) -> Result<StatusCode, Problem> {
    event_config(&app, &event)?;
    app.store
        .leave(&EventKeys::new(&event), &user)
        .await
        .map_err(|e| unavailable(&app, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Event counters: queue depth, active users, admissions, the pre-queue shuffle record.
#[utoipa::path(get, path = "/v1/events/{event}/queue/stats", tag = "queue",
    params(("event" = String, Path, description = "event id")),
    responses(
        (status = 200, description = "counters", body = QueueStats),
        (status = 404, description = "unknown event", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stats(
    AxState(app): AxState<Shared>,
    Path(event): Path<String>,
) -> Result<Json<QueueStats>, Problem> {
    let cfg = event_config(&app, &event)?;
    let keys = EventKeys::new(&event);
    let now_ms = Utc::now().timestamp_millis();
    let (c, _) = app
        .store
        .tick(&keys, &[], now_ms)
        .await
        .map_err(|e| unavailable(&app, e))?;
    let shuffle = app
        .store
        .shuffle_record(&keys)
        .await
        .map_err(|e| unavailable(&app, e))?;
    Ok(Json(QueueStats {
        event_id: event.clone(),
        on_sale_at: cfg.on_sale_at,
        sale_ends_at: cfg.sale_ends_at,
        queue_depth: c.depth,
        pre_queue_depth: c.prequeue,
        active_users: c.active,
        admitted_total: c.admitted_total,
        sold_out: c.sold_out,
        rate_per_second: cfg.queue.rate_per_second,
        max_active: cfg.queue.max_active,
        measured_rate_per_second: app.hub.rate(&event),
        shuffle,
    }))
}

/// Server-sent events with your standing: `position` events while waiting (pushed when it
/// changes), then one final `admitted` (with the token), `closed` or `gone` event. `soldOut` is
/// not final for someone in line: the stream stays open and keeps their place (seats come back
/// when holds lapse or are released), and goes on with `position` when the sale resumes; for
/// someone not in line it is the one event before the end. An open stream is a heartbeat. When
/// the server drains, the stream ends; reconnect.
#[utoipa::path(get, path = "/v1/events/{event}/queue/me/stream", tag = "queue",
    params(("event" = String, Path, description = "event id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "event stream; each `data` is a QueueStatus (or a Problem for `gone`)", content_type = "text/event-stream", body = String),
        (status = 401, description = "no valid user token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown event, or not in line", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate limited; see Retry-After", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "store unavailable or too many streams", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stream(
    AxState(app): AxState<Shared>,
    Path(event): Path<String>,
    User(user): User,
) -> Result<Response, Problem> {
    let cfg = event_config(&app, &event)?;
    if app.hub.open_streams() >= app.max_streams {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-streams",
            "this replica holds its maximum of streams; poll /queue/me instead",
        )
        .retry_after(5));
    }
    let obs = observe(&app, &cfg, &user, false).await?;
    let standing = match obs.standing {
        Standing::Waiting { rank, .. } => StreamFix::Waiting { rank },
        Standing::PreQueue { .. } => StreamFix::PreQueue,
        Standing::Admitted { expires_ms } => StreamFix::Admitted { expires_ms },
        Standing::Absent => return Err(not_in_queue(&event)),
        // In line while sold out: the stream keeps the place. Its rank is read by the hub's
        // first refresh (the fix is made stale below); until then it shows sold out.
        Standing::SoldOut { in_line: true } => StreamFix::Waiting { rank: 0 },
        // Closed, or sold out for someone not in line: one event and the end.
        Standing::SoldOut { in_line: false } | Standing::Closed => StreamFix::Absent,
    };
    let sold_out_at_open = obs.standing == (Standing::SoldOut { in_line: true });
    let terminal_now = matches!(
        obs.standing,
        Standing::SoldOut { in_line: false } | Standing::Closed
    )
    .then(|| obs.standing.clone());
    let snapshots = app.hub.subscribe(&event);
    let fix = Fix {
        standing,
        admitted_total_at: obs.admitted_total,
        at_ms: if sold_out_at_open { 0 } else { obs.now_ms },
    };
    let Some((slot, guard)) = app.hub.register(&event, &user, fix) else {
        return Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams-per-user",
            format!(
                "you hold {} streams of this event already; close one or poll /queue/me",
                crate::hub::MAX_STREAMS_PER_USER
            ),
        )
        .retry_after(5));
    };
    let fixes = slot.subscribe();
    let state = StreamState {
        app: app.clone(),
        event,
        user,
        slot,
        _guard: guard,
        snapshots,
        fixes,
        stop: app.stop.clone(),
        last: None,
        first: true,
        done: false,
        terminal_now,
        sold_out_at_open,
    };
    let body = futures::stream::unfold(state, next_event);
    Ok(Sse::new(body).keep_alive(KeepAlive::default()).into_response())
}

struct StreamState {
    app: Shared,
    event: String,
    user: String,
    slot: Arc<crate::hub::StreamSlot>,
    _guard: crate::hub::StreamGuard,
    snapshots: watch::Receiver<Snapshot>,
    fixes: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    last: Option<QueueStatus>,
    first: bool,
    done: bool,
    terminal_now: Option<Standing>,
    /// Opened by someone in line while sold out: shown sold out until the hub's first snapshot.
    sold_out_at_open: bool,
}

async fn next_event(
    mut st: StreamState,
) -> Option<(Result<SseEvent, std::convert::Infallible>, StreamState)> {
    loop {
        if st.done {
            return None;
        }
        if !st.first {
            tokio::select! {
                r = st.snapshots.changed() => if r.is_err() { return None },
                r = st.fixes.changed() => if r.is_err() { return None },
                _ = st.stop.changed() => return None,
            }
        }
        let first = std::mem::replace(&mut st.first, false);
        let cfg = st.app.events.get(&st.event)?;
        let snap = st.snapshots.borrow_and_update().clone();
        st.fixes.borrow_and_update();
        let now_ms = Utc::now().timestamp_millis();
        let fix = st.slot.fix();
        let ended = sale_ends_ms(&cfg).is_some_and(|end| now_ms >= end);
        let standing = match (&st.terminal_now, &fix.standing) {
            (Some(t), _) => t.clone(),
            (None, StreamFix::Admitted { expires_ms }) => Standing::Admitted {
                expires_ms: *expires_ms,
            },
            _ if snap.counters.sold_out && snap.tick > 0 => Standing::SoldOut { in_line: true },
            _ if st.sold_out_at_open && snap.tick == 0 => Standing::SoldOut { in_line: true },
            _ if ended => Standing::Closed,
            (None, StreamFix::Waiting { .. }) => {
                let position = fix.position(snap.counters.admitted_total).unwrap_or(1);
                Standing::Waiting {
                    rank: position - 1,
                    score: 0,
                }
            }
            (None, StreamFix::PreQueue) => Standing::PreQueue {
                size: snap.counters.prequeue,
            },
            (None, StreamFix::Absent) => Standing::Absent,
        };
        let mut event = match view(&st.app, &cfg, &st.user, &standing, now_ms, snap.rate) {
            Ok(Some(status)) => {
                if st.last.as_ref() == Some(&status) {
                    continue;
                }
                let name = match status.state {
                    State::Waiting => "position",
                    State::Admitted => "admitted",
                    State::SoldOut => "soldOut",
                    State::Closed => "closed",
                };
                // Sold out keeps an in-line stream open (its place and heartbeat); a stream
                // opened by someone not in line ended with its one event (terminal_now).
                st.done = match status.state {
                    State::Waiting => false,
                    State::SoldOut => st.terminal_now.is_some(),
                    State::Admitted | State::Closed => true,
                };
                let ev = SseEvent::default()
                    .event(name)
                    .json_data(&status)
                    .unwrap_or_default();
                st.last = Some(status);
                ev
            }
            Ok(None) => {
                st.done = true;
                SseEvent::default()
                    .event("gone")
                    .json_data(not_in_queue(&st.event))
                    .unwrap_or_default()
            }
            Err(problem) => {
                st.done = true;
                SseEvent::default()
                    .event("error")
                    .json_data(problem)
                    .unwrap_or_default()
            }
        };
        if first {
            event = event.retry(std::time::Duration::from_secs(2));
        }
        return Some((Ok(event), st));
    }
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "the process is up")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Redis reachable and not draining"),
    (status = 503, description = "draining or Redis unreachable", body = Problem, content_type = "application/problem+json"),
))]
pub async fn readyz(AxState(app): AxState<Shared>) -> Result<&'static str, Problem> {
    if app.draining.load(Ordering::Relaxed) {
        return Err(
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "draining", "shutting down").retry_after(1),
        );
    }
    app.store.ping().await.map_err(|e| unavailable(&app, e))?;
    Ok("ready")
}

async fn metrics(AxState(app): AxState<Shared>) -> Response {
    metrics_response(&app.registry)
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn fallback() -> Problem {
    Problem::not_found("no such route")
}

// === middleware ===

/// Client address: the TCP peer, or behind `trusted_proxy_hops` proxies the `X-Forwarded-For`
/// entry that many hops from the right (what the outermost trusted proxy saw). A client can put
/// anything left of it, so nothing there is read.
fn client_ip(app: &App, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
    forwarded_client(app.trusted_proxy_hops, headers).or(peer.map(|p| p.ip()))
}

fn forwarded_client(hops: u32, headers: &HeaderMap) -> Option<IpAddr> {
    let hops = usize::try_from(hops).ok().filter(|&h| h > 0)?;
    // Several X-Forwarded-For headers are one list, in order (RFC 9110 §5.3).
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    // Fewer entries than trusted hops: every entry was written by a trusted proxy; the left-most
    // is the closest to the client.
    let at = entries.len().saturating_sub(hops);
    entries.get(at)?.parse().ok()
}

async fn per_ip_limit(AxState(app): AxState<Shared>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    if let Some(ip) = client_ip(&app, req.headers(), peer)
        && let Err(p) = check(&app.per_ip, &ip, &app.metrics, "address")
    {
        return p.into_response();
    }
    next.run(req).await
}

pub fn router(app: Shared) -> Router {
    let api = Router::new()
        .route("/v1/events/{event}/queue", post(join))
        .route("/v1/events/{event}/queue/me", get(me).delete(leave))
        .route("/v1/events/{event}/queue/me/stream", get(stream))
        .route("/v1/events/{event}/queue/stats", get(stats))
        .route_layer(from_fn_with_state(app.clone(), per_ip_limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::limit::RequestBodyLimitLayer::new(16 * 1024))
        // Outermost on the API routes (the probes and /metrics are not recorded), so 413s and
        // 429s are measured too.
        .layer(from_fn_with_state(
            app.metrics.requests.clone(),
            tiketi_shared::http::track_requests,
        ));
    let ops = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi));
    api.merge(ops)
        .fallback(fallback)
        .layer(from_fn(tiketi_shared::problem::problem_errors))
        .with_state(app)
}

// === OpenAPI ===

#[derive(OpenApi)]
#[openapi(
    info(title = "tiketi-queue", description = "tiketi's waiting room: join, fair order, live position, admission tokens"),
    paths(join, me, leave, stream, stats, healthz, readyz),
    components(schemas(QueueStatus, QueueStats, State, EtaRange, Admission, Problem, crate::store::ShuffleRecord)),
    modifiers(&BearerAuth),
    tags((name = "queue", description = "the waiting room"), (name = "ops", description = "probes"))
)]
pub struct ApiDoc;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_address_is_the_right_most_untrusted_hop() {
        let forged = headers(&["6.6.6.6, 10.0.0.1", "203.0.113.7"]);
        // Behind one proxy (an ALB): the entry it appended, not what the client wrote.
        assert_eq!(forwarded_client(1, &forged), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(forwarded_client(2, &forged), Some("10.0.0.1".parse().unwrap()));
        // No trusted proxy: the header is not read at all.
        assert_eq!(forwarded_client(0, &forged), None);
        // Fewer entries than hops: the left-most, which a trusted proxy wrote.
        assert_eq!(
            forwarded_client(5, &headers(&["198.51.100.1"])),
            Some("198.51.100.1".parse().unwrap())
        );
        assert_eq!(forwarded_client(1, &headers(&["not-an-ip"])), None);
    }
}
