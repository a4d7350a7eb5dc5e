//! The reservation operations (hold, release, confirm, reads) over the Redis and PostgreSQL
//! stores, independent of HTTP framing. Every failure comes back as a [`Problem`] naming it;
//! dependency failures become 503 with Retry-After and are counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use tiketi_shared::config::{EventConfig, ReservationSettings};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::problem::Problem;
use tiketi_shared::token::{AdmissionKeys, UserVerifier};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

use crate::db::{ClaimRefused, ConfirmOutcome, Db, DbError, SeatRow};
use crate::domain::{self, Counts, HoldOutcome, HoldRequestError, SeatStatus};
use crate::metrics::{
    ConflictLabels, DependencyLabels, EventLabels, Metrics, OutcomeLabels, PoolLabels, SeatLabels,
};
use crate::model::{Availability, Hold, Order, Seat, SeatMap};
use crate::redis_store::{HoldStore, RedisError};

/// One event's cached read (its seat map, its counts): the last value and when it was read, and
/// when a refresh last failed. One refresh at a time; callers that waited for a refresh that
/// failed answer 503 at once instead of each retrying the dependency in turn (in an outage, N
/// waiting requests would otherwise pay N times the dependency's bound).
struct Cached<T> {
    value: Option<(Instant, T)>,
    failed_at: Option<Instant>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Self {
            value: None,
            failed_at: None,
        }
    }
}

impl<T: Clone> Cached<T> {
    /// The value if younger than `max_age`, else `refresh`'s (run under the slot's lock).
    async fn get(
        slot: &Mutex<Self>,
        max_age: Duration,
        what: &str,
        refresh: impl std::future::Future<Output = Result<T, Problem>>,
    ) -> Result<T, Problem> {
        let asked = Instant::now();
        let mut slot = slot.lock().await;
        if let Some((at, v)) = slot.value.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(v.clone());
        }
        if slot.failed_at.is_some_and(|t| t >= asked) {
            return Err(Problem::unavailable(format!(
                "{what} could not be read just now; retry shortly"
            )));
        }
        match refresh.await {
            Ok(v) => {
                slot.failed_at = None;
                slot.value = Some((Instant::now(), v.clone()));
                Ok(v)
            }
            Err(p) => {
                slot.failed_at = Some(Instant::now());
                Err(p)
            }
        }
    }
}

/// One configured event: its keys, rules, inventory and seat-map cache.
pub struct EventState {
    pub id: String,
    pub keys: EventKeys,
    pub rules: ReservationSettings,
    /// Confirms are refused from this instant on (`saleEndsAt`).
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// How long an admission lasts (`queue.tokenTtlSeconds`): a lapsed hold is not taken back
    /// once the admission it was made under is over.
    pub admission_ttl_seconds: u64,
    pub seats: Vec<SeatRow>,
    pub seat_ids: Vec<String>,
    pub index: HashMap<String, usize>,
    /// The seats this replica knows are sold, one bit per seat of `seat_ids`: a hold naming one
    /// is refused here, without asking Redis — in a rush most hold requests name seats sold a
    /// moment ago, and all of an event's keys live on one Redis shard. Sold is final (no order is
    /// ever cancelled and a sold seat cannot leave the inventory), so the set only grows. It
    /// learns from this replica's confirms, from PostgreSQL refusing a hold over a sold seat and
    /// from every seat-map read; what it does not know yet, Redis and PostgreSQL refuse as before.
    sold: Vec<AtomicU64>,
    /// The seat map, already serialised: a request for the (unauthenticated) seat map copies
    /// bytes, it never rebuilds every seat.
    seat_map: Mutex<Cached<axum::body::Bytes>>,
    counts: Mutex<Cached<(DateTime<Utc>, Counts)>>,
}

impl EventState {
    pub fn new(cfg: &EventConfig, seats: Vec<SeatRow>) -> Self {
        let seat_ids: Vec<String> = seats.iter().map(|s| s.id.clone()).collect();
        let index = seat_ids.iter().enumerate().map(|(i, s)| (s.clone(), i)).collect();
        Self {
            id: cfg.event_id.clone(),
            keys: EventKeys::new(&cfg.event_id),
            rules: cfg.reservation.clone(),
            sale_ends_at: cfg.sale_ends_at,
            admission_ttl_seconds: cfg.queue.token_ttl_seconds,
            sold: (0..seat_ids.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            seats,
            seat_ids,
            index,
            seat_map: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    /// The word of `sold` holding `seat`'s bit, and the bit (None for a seat this event lacks).
    fn sold_bit(&self, seat: &str) -> Option<(&AtomicU64, u64)> {
        let i = *self.index.get(seat)?;
        Some((self.sold.get(i / 64)?, 1 << (i % 64)))
    }

    /// Remembers `seats` as sold (names this event does not have are ignored).
    pub fn mark_sold<'a>(&self, seats: impl IntoIterator<Item = &'a str>) {
        for (word, bit) in seats.into_iter().filter_map(|s| self.sold_bit(s)) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// The seats of `seats` this replica knows are sold, in the order asked.
    pub fn known_sold(&self, seats: &[String]) -> Vec<String> {
        seats
            .iter()
            .filter(|seat| {
                self.sold_bit(seat)
                    .is_some_and(|(word, bit)| word.load(Ordering::Relaxed) & bit != 0)
            })
            .cloned()
            .collect()
    }
}

/// Who asks for a hold: the `Authorization` header as sent, or the user its bearer token was
/// already verified to name (the handler checks it before the body; once is enough).
#[derive(Debug, Clone)]
pub enum Caller<'a> {
    Bearer(Option<&'a str>),
    Verified(String),
}

/// A stored or fresh answer to a confirm: status plus JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub replayed: bool,
}

pub struct AppState {
    pub db: Db,
    pub redis: HoldStore,
    pub users: UserVerifier,
    pub admission: AdmissionKeys,
    pub metrics: Metrics,
    pub registry: Registry,
    pub configs: BTreeMap<String, EventConfig>,
    pub events: RwLock<HashMap<String, Arc<EventState>>>,
    /// Migrations applied and inventory loaded.
    pub initialized: AtomicBool,
    /// Redis answered a readiness ping at least once since start.
    pub redis_answered: AtomicBool,
    pub draining: AtomicBool,
    pub cache_ttl: Duration,
    /// Admission to the API routes (see `TIKETI_MAX_INFLIGHT`).
    pub inflight: Arc<tokio::sync::Semaphore>,
    pub inflight_wait: Duration,
}

/// What `/readyz` answers: `ready` false is 503 (out of the Service); `problems` says why, or
/// which store a ready replica cannot reach at the moment.
#[derive(Debug)]
pub struct Readiness {
    pub ready: bool,
    pub problems: Vec<String>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn seats_taken(seats: Vec<String>, detail: &str) -> Problem {
    Problem::new(StatusCode::CONFLICT, "seats-taken", detail).with("seats", seats)
}

/// A confirm refused because another live hold claimed a seat, whose read of those claims a
/// moment later found none (that hold was released in between): not a final answer — nothing is
/// stored under the Idempotency-Key (a stored 409 naming no seat would replay for ever while the
/// seats were free) and the confirm is tried once more; 503 + Retry-After if it moves again.
const SEATS_MOVED: &str = "seats-moved";

/// The sale ended at `ends` (the event's `saleEndsAt`): nothing can be held or confirmed.
fn sale_ended(ends: Option<DateTime<Utc>>, what: &str) -> Problem {
    let ended = ends.map(|t| t.to_rfc3339()).unwrap_or_default();
    Problem::new(
        StatusCode::CONFLICT,
        "sale-ended",
        format!("the sale of this event ended at {ended}; nothing can be {what}"),
    )
    .with("saleEndsAt", ended)
}

/// The per-user limit: `current` seats held or bought already, at most `max` per event.
fn over_limit(current: u64, max: u32) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "seat-limit-reached",
        format!("you already hold or bought {current} seat(s) of this event; at most {max} per buyer"),
    )
    .with("held", current)
    .with("max", max)
}

fn problem_json(p: &Problem) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
}

impl AppState {
    // === dependencies ===

    fn redis_down(&self, e: RedisError) -> Problem {
        tracing::warn!(error = %e, "redis call failed");
        self.metrics
            .dependency_errors
            .get_or_create(&DependencyLabels { dependency: "redis" })
            .inc();
        Problem::unavailable("the seat lock store (Redis) is unavailable; retry shortly")
    }

    fn db_down(&self, e: DbError) -> Problem {
        tracing::warn!(error = %e, reason = e.reason(), "postgres call failed");
        self.metrics
            .dependency_errors
            .get_or_create(&DependencyLabels {
                dependency: "postgres",
            })
            .inc();
        Problem::unavailable("the order database (PostgreSQL) is unavailable; retry shortly")
    }

    /// Waits briefly for an in-flight slot; past the bound the request is shed with 503.
    pub async fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        match tokio::time::timeout(self.inflight_wait, self.inflight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.metrics
                    .dependency_errors
                    .get_or_create(&DependencyLabels {
                        dependency: "overload",
                    })
                    .inc();
                Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight; retry shortly",
                )
                .retry_after(1))
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.initialized.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Readiness: initialised (migrations applied and inventory loaded, so PostgreSQL answered),
    /// Redis answered at least once since start, not draining. A store that stops answering
    /// later is listed in `problems` but does not take the replica out of the Service: the
    /// stores are shared by every replica, so it would take them all out — and a Redis outage
    /// would then stop the confirms, which need only PostgreSQL — while the replica answers what
    /// it cannot do with 503 and Retry-After itself. A replica that never reached Redis (a wrong
    /// URL, password or CA) stays out, so a bad rollout halts instead of replacing good pods.
    pub async fn readiness(&self) -> Readiness {
        let mut problems = Vec::new();
        let mut ready = true;
        if !self.initialized.load(Ordering::Acquire) {
            problems.push("migrations or inventory not loaded yet".to_owned());
            ready = false;
        }
        if self.draining.load(Ordering::Acquire) {
            problems.push("draining".to_owned());
            ready = false;
        }
        let (r, d) = tokio::join!(self.redis.ping(), self.db.ping());
        match r {
            Ok(()) => self.redis_answered.store(true, Ordering::Release),
            Err(e) if self.redis_answered.load(Ordering::Acquire) => {
                problems.push(format!("redis: {e} (holds answer 503; confirms go on)"));
            }
            Err(e) => {
                problems.push(format!("redis: {e} (never reached since start)"));
                ready = false;
            }
        }
        if let Err(e) = d {
            problems.push(format!("postgres: {e}"));
        }
        Readiness { ready, problems }
    }

    async fn event(&self, event: &str) -> Result<Arc<EventState>, Problem> {
        if !self.initialized.load(Ordering::Acquire) {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the service is still starting",
            )
            .retry_after(1));
        }
        self.events.read().await.get(event).cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-event",
                format!("no event {event:?} here"),
            )
        })
    }

    fn user(&self, authorization: Option<&str>) -> Result<String, Problem> {
        self.users.verify_bearer(authorization).map_err(|e| {
            Problem::unauthorized(format!("a valid bearer user token is required: {e}"))
                .with("reason", e.reason())
        })
    }

    pub fn refresh_pool_gauges(&self) {
        for (pool, open, idle, max) in self.db.pool_usage() {
            let g = &self.metrics.pool_connections;
            g.get_or_create(&PoolLabels { pool, state: "open" })
                .set(i64::from(open));
            g.get_or_create(&PoolLabels { pool, state: "idle" })
                .set(i64::from(idle));
            g.get_or_create(&PoolLabels { pool, state: "max" })
                .set(i64::from(max));
        }
    }

    // === hold ===

    pub async fn hold(
        &self,
        event: &str,
        caller: Caller<'_>,
        admission: Option<&str>,
        seats: &[String],
    ) -> Result<Hold, Problem> {
        let result = self.hold_inner(event, caller, admission, seats).await;
        let outcome = match &result {
            Ok(_) => "held",
            Err(p) => match p.status {
                401 => "unauthenticated",
                403 => "not_admitted",
                409 => "conflict",
                503 => "unavailable",
                _ => "invalid",
            },
        };
        self.metrics.holds.get_or_create(&OutcomeLabels { outcome }).inc();
        result
    }

    async fn hold_inner(
        &self,
        event: &str,
        caller: Caller<'_>,
        admission: Option<&str>,
        seats: &[String],
    ) -> Result<Hold, Problem> {
        let ev = self.event(event).await?;
        let user = match caller {
            Caller::Verified(user) => user,
            Caller::Bearer(authorization) => self.user(authorization)?,
        };
        let now = now_ms();
        self.admission.verify(admission, event, &user, now).map_err(|e| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "admission-required",
                format!("a valid X-Admission-Token for this event and user is required: {e}"),
            )
            .with("reason", e.reason())
        })?;
        let seats =
            domain::validate_hold_request(seats, &ev.index, ev.rules.max_seats_per_user).map_err(|e| {
                let status = match e {
                    HoldRequestError::Empty | HoldRequestError::Duplicate(_) => StatusCode::BAD_REQUEST,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                let p = Problem::new(status, e.slug(), e.to_string());
                match e {
                    HoldRequestError::UnknownSeats(s) => p.with("seats", s),
                    _ => p,
                }
            })?;
        if ev.sale_ends_at.is_some_and(|end| end.timestamp_millis() <= now) {
            return Err(sale_ended(ev.sale_ends_at, "held"));
        }
        let sold = ev.known_sold(&seats);
        if !sold.is_empty() {
            self.count_conflict("hold");
            return Err(seats_taken(sold, "some of the requested seats are sold"));
        }
        let ttl = Duration::from_secs(ev.rules.hold_ttl_seconds);
        let hold = Hold {
            hold_id: Uuid::new_v4(),
            event_id: ev.id.clone(),
            user_id: user.clone(),
            seats: seats.clone(),
            expires_at: DateTime::<Utc>::from_timestamp_millis(now + ttl.as_millis() as i64)
                .unwrap_or_else(Utc::now),
        };
        let hold_id = hold.hold_id.to_string();
        let record = serde_json::to_string(&hold).unwrap_or_default();
        let outcome = match self
            .redis
            .hold(
                &ev.keys,
                &hold_id,
                &user,
                &seats,
                ttl,
                now,
                ev.rules.max_seats_per_user,
                &record,
            )
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                self.release_after(&ev, &hold_id, &user, &seats);
                return Err(self.redis_down(e));
            }
        };
        match outcome {
            HoldOutcome::Held => {}
            HoldOutcome::Taken(taken) => {
                self.count_conflict("hold");
                return Err(seats_taken(taken, "some of the requested seats are held or sold"));
            }
            HoldOutcome::OverCap { current } => {
                return Err(over_limit(current, ev.rules.max_seats_per_user));
            }
            HoldOutcome::NotAdmitted => {
                return Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "admission-ended",
                    "your admission for this event has ended (you left the line or it expired); \
                     join the queue again",
                )
                .with("reason", "not_active"));
            }
        }
        // Redis said yes; PostgreSQL decides: it claims the seats unless one is sold or claimed
        // by another live hold (Redis may have lost locks or sold markers), enforces the limit
        // over held and bought seats, and keeps the hold so it survives a Redis flush.
        match self.db.claim_hold(&hold, ev.rules.max_seats_per_user).await {
            Ok(Ok(())) => Ok(hold),
            Ok(Err(refused)) => {
                self.undo_hold(&ev, &hold).await;
                Err(self.claim_refused(&ev, refused).await)
            }
            Err(e) => {
                self.undo_hold(&ev, &hold).await;
                Err(self.db_down(e))
            }
        }
    }

    /// The answer to a hold PostgreSQL refused; Redis learns what it forgot (sold markers, the
    /// locks of live holds) so it refuses those seats early again.
    async fn claim_refused(&self, ev: &EventState, refused: ClaimRefused) -> Problem {
        match refused {
            ClaimRefused::OverLimit { current } => {
                over_limit(u64::from(current), ev.rules.max_seats_per_user)
            }
            ClaimRefused::Sold(sold) => {
                ev.mark_sold(sold.iter().map(String::as_str));
                if let Err(e) = self.redis.restore_sold_markers(&ev.keys, &sold).await {
                    tracing::warn!(error = %e, "could not restore sold markers");
                }
                self.count_conflict("hold");
                seats_taken(sold, "some of the requested seats are sold")
            }
            ClaimRefused::Held(held) => {
                let locks: Vec<(String, String, i64)> = held
                    .iter()
                    .filter_map(|(seat, owner, until)| {
                        Some((seat.clone(), (*owner)?.to_string(), (*until)?.timestamp_millis()))
                    })
                    .collect();
                if let Err(e) = self.redis.restore_locks(&ev.keys, &locks, now_ms()).await {
                    tracing::warn!(error = %e, "could not restore seat locks");
                }
                self.count_conflict("hold");
                let seats = held.into_iter().map(|(seat, ..)| seat).collect();
                seats_taken(seats, "some of the requested seats are held by someone else")
            }
        }
    }

    fn count_conflict(&self, stage: &'static str) {
        self.metrics
            .conflicts
            .get_or_create(&ConflictLabels { stage })
            .inc();
    }

    /// Releases, in the background, a hold's Redis locks: after a hold script this replica
    /// stopped waiting for (a timeout, a dropped connection) — the script was sent, and a Redis
    /// that was frozen or slow runs it when it comes back; its locks would then refuse those
    /// seats (and count against the buyer's limit) for a whole hold TTL, with no claim in
    /// PostgreSQL behind them and nobody to confirm them. The release goes out on the same
    /// connection after the script, so Redis runs it after the script; it frees only what this
    /// hold id owns. Retried a few times (1, 2, 4, 8 s apart) while Redis does not answer.
    fn release_after(&self, ev: &EventState, hold_id: &str, user: &str, seats: &[String]) {
        let (redis, keys) = (self.redis.clone(), ev.keys.clone());
        let (hold_id, user, seats) = (hold_id.to_owned(), user.to_owned(), seats.to_vec());
        tokio::spawn(async move {
            for attempt in 0..5u32 {
                match redis.release(&keys, &hold_id, &user, &seats).await {
                    Ok(_) => return,
                    Err(e) if attempt == 4 => {
                        tracing::warn!(error = %e, hold = %hold_id, "could not free a hold's Redis locks; they expire with the TTL");
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1 << attempt)).await,
                }
            }
        });
    }

    /// Frees the Redis locks of a hold that PostgreSQL refused, could not claim, or released.
    /// If Redis does not answer, the release goes on in the background
    /// ([`Self::release_after`]): the locks would otherwise refuse those seats to everyone, and
    /// count against the buyer's limit, for a whole hold TTL with nothing in PostgreSQL behind
    /// them.
    async fn free_locks(&self, ev: &EventState, hold_id: &str, user: &str, seats: &[String]) {
        if let Err(e) = self.redis.release(&ev.keys, hold_id, user, seats).await {
            tracing::warn!(error = %e, hold = %hold_id, "could not free a hold's Redis locks; retrying in the background");
            self.release_after(ev, hold_id, user, seats);
        }
    }

    async fn undo_hold(&self, ev: &EventState, hold: &Hold) {
        self.free_locks(ev, &hold.hold_id.to_string(), &hold.user_id, &hold.seats)
            .await;
    }

    // === release ===

    pub async fn release(&self, hold_id: &str, authorization: Option<&str>) -> Result<(), Problem> {
        let result = self.release_inner(hold_id, authorization).await;
        let outcome = match &result {
            Ok(()) => "released",
            Err(p) if p.status == 503 => "unavailable",
            Err(_) => "refused",
        };
        self.metrics
            .releases
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        result
    }

    async fn release_inner(&self, hold_id: &str, authorization: Option<&str>) -> Result<(), Problem> {
        let user = self.user(authorization)?;
        let id = parse_id(hold_id, "hold")?;
        let row = self
            .db
            .get_hold(id)
            .await
            .map_err(|e| self.db_down(e))?
            .ok_or_else(|| no_such("hold", hold_id))?;
        if row.hold.user_id != user {
            return Err(not_yours("hold"));
        }
        let ev = self.event(&row.hold.event_id).await?;
        match row.status.as_str() {
            "confirmed" => {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "hold-confirmed",
                    "this hold is already an order",
                ));
            }
            "held" if !self.db.release_hold(id).await.map_err(|e| self.db_down(e))? => {
                // Raced with a confirm or another release; look again.
                let again = self.db.get_hold(id).await.map_err(|e| self.db_down(e))?;
                if again.is_some_and(|r| r.status == "confirmed") {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "hold-confirmed",
                        "this hold is already an order",
                    ));
                }
            }
            _ => {}
        }
        // Released in PostgreSQL, which decides: the release is done (the buyer is not asked to
        // retry what already happened). Free the Redis locks this hold still owns.
        self.free_locks(&ev, hold_id, &row.hold.user_id, &row.hold.seats)
            .await;
        Ok(())
    }

    // === confirm ===

    pub async fn confirm(
        &self,
        hold_id: &str,
        authorization: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, Problem> {
        let mut result = self.confirm_inner(hold_id, authorization, idempotency_key).await;
        if matches!(&result, Err(p) if p.kind.ends_with(SEATS_MOVED)) {
            // The seats' claims changed between the confirm's attempt and its read (see
            // SEATS_MOVED): nothing was stored; a second attempt decides.
            result = self.confirm_inner(hold_id, authorization, idempotency_key).await;
        }
        let outcome = match &result {
            Ok(a) if a.replayed => "replayed",
            Ok(a) if a.status.is_success() => "confirmed",
            Ok(_) => "conflict",
            Err(p) => match p.status {
                401 | 403 => "refused",
                409 => "conflict",
                503 => "unavailable",
                _ => "invalid",
            },
        };
        self.metrics
            .confirms
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if outcome == "replayed" {
            self.metrics.idempotent_replays.inc();
        }
        result
    }

    async fn confirm_inner(
        &self,
        hold_id: &str,
        authorization: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<Answer, Problem> {
        let user = self.user(authorization)?;
        let key = idempotency_key.ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency-key-required",
                "the Idempotency-Key header is required",
            )
        })?;
        if !domain::valid_idempotency_key(key) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "idempotency-key-invalid",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            ));
        }
        let id = parse_id(hold_id, "hold")?;
        let fingerprint = domain::confirm_fingerprint(&id);
        let mut ctx = self
            .db
            .confirm_context(&user, key, id)
            .await
            .map_err(|e| self.db_down(e))?;
        if let Some(answer) = self.stored_answer(ctx.stored.take(), &fingerprint)? {
            return Ok(answer);
        }
        let row = ctx.hold.take().ok_or_else(|| no_such("hold", hold_id))?;
        if row.hold.user_id != user {
            return Err(not_yours("hold"));
        }
        let ev = self.event(&row.hold.event_id).await?;
        let hold = row.hold;

        // No Redis pre-check: a lock or sold marker there says nothing PostgreSQL does not know
        // better (a live hold of ours may show another's lock while that one is being undone),
        // and a second confirm of a committed hold must learn its order id, not "seats taken".
        match self
            .db
            .confirm(
                &hold,
                &user,
                key,
                &fingerprint,
                crate::db::ConfirmRules {
                    cap: ev.rules.max_seats_per_user,
                    sale_ends: ev.sale_ends_at,
                    admission_ttl_seconds: Some(ev.admission_ttl_seconds),
                },
            )
            .await
            .map_err(|e| self.db_down(e))?
        {
            ConfirmOutcome::Created(order) => {
                ev.mark_sold(hold.seats.iter().map(String::as_str));
                if let Err(e) = self
                    .redis
                    .mark_sold(&ev.keys, &hold.hold_id.to_string(), &user, &hold.seats)
                    .await
                {
                    tracing::warn!(error = %e, "order committed but sold markers not written; PostgreSQL still guards");
                }
                Ok(Answer {
                    status: StatusCode::CREATED,
                    body: serde_json::to_value(&order).unwrap_or(serde_json::Value::Null),
                    replayed: false,
                })
            }
            ConfirmOutcome::SeatsTaken(taken) if taken.is_empty() => Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                SEATS_MOVED,
                "the seats of this hold changed hands while it was confirmed; retry",
            )
            .retry_after(1)),
            ConfirmOutcome::SeatsTaken(taken) => {
                self.count_conflict("confirm");
                let p = seats_taken(
                    taken,
                    "some seats of this hold are now someone else's (the hold had lapsed)",
                );
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::SaleEnded => {
                let p = sale_ended(ev.sale_ends_at, "confirmed");
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::OverLimit { current } => {
                let p = over_limit(u64::from(current), ev.rules.max_seats_per_user);
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::AdmissionEnded => {
                let p = Problem::new(
                    StatusCode::CONFLICT,
                    "hold-expired",
                    "this hold lapsed and the admission it was made under has ended; join the queue again",
                );
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::SeatsRemoved(gone) => {
                let p = Problem::new(
                    StatusCode::CONFLICT,
                    "seats-removed",
                    "some seats of this hold were removed from the event's inventory since",
                )
                .with("seats", gone);
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::AlreadyConfirmed(order) => {
                let mut p = Problem::new(
                    StatusCode::CONFLICT,
                    "hold-already-confirmed",
                    "this hold is already an order",
                );
                if let Some(o) = order {
                    p = p.with("orderId", o);
                }
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::NotHeld(status) => {
                let p = Problem::new(
                    StatusCode::CONFLICT,
                    "hold-released",
                    format!("this hold can no longer be confirmed (it is {status})"),
                );
                self.final_answer(&user, key, &fingerprint, p).await
            }
            ConfirmOutcome::KeyInUse => match self.replay(&user, key, &fingerprint).await? {
                Some(a) => Ok(a),
                None => Err(Problem::new(
                    StatusCode::CONFLICT,
                    "request-in-progress",
                    "a request with this Idempotency-Key is still in progress",
                )
                .retry_after(1)),
            },
        }
    }

    /// Replays a stored answer for (user, key), or refuses a different request under that key.
    async fn replay(&self, user: &str, key: &str, fingerprint: &str) -> Result<Option<Answer>, Problem> {
        let stored = self
            .db
            .idempotency_record(user, key)
            .await
            .map_err(|e| self.db_down(e))?;
        self.stored_answer(stored, fingerprint)
    }

    fn stored_answer(
        &self,
        stored: Option<crate::db::StoredResponse>,
        fingerprint: &str,
    ) -> Result<Option<Answer>, Problem> {
        let Some(rec) = stored else {
            return Ok(None);
        };
        if rec.fingerprint != fingerprint {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was already used for a different request",
            ));
        }
        match (rec.status, rec.body) {
            (Some(status), Some(body)) => Ok(Some(Answer {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
                replayed: true,
            })),
            _ => Ok(None),
        }
    }

    /// Stores a final refusal under the key so a retry gets the same answer.
    async fn final_answer(
        &self,
        user: &str,
        key: &str,
        fingerprint: &str,
        p: Problem,
    ) -> Result<Answer, Problem> {
        let body = problem_json(&p);
        self.db
            .store_response(user, key, fingerprint, p.status, &body)
            .await
            .map_err(|e| self.db_down(e))?;
        match self.replay(user, key, fingerprint).await? {
            Some(a) => Ok(Answer { replayed: false, ..a }),
            None => Err(p),
        }
    }

    // === reads ===

    pub async fn my_holds(&self, event: &str, authorization: Option<&str>) -> Result<Vec<Hold>, Problem> {
        let user = self.user(authorization)?;
        let ev = self.event(event).await?;
        self.db
            .live_holds(&ev.id, &user)
            .await
            .map_err(|e| self.db_down(e))
    }

    pub async fn order(&self, order_id: &str, authorization: Option<&str>) -> Result<Order, Problem> {
        let user = self.user(authorization)?;
        let id = parse_id(order_id, "order")?;
        match self.db.get_order(id).await.map_err(|e| self.db_down(e))? {
            Some(o) if o.user_id == user => Ok(o),
            // Someone else's order is as invisible as a missing one.
            _ => Err(no_such("order", order_id)),
        }
    }

    /// The event's seat map as JSON, at most `cache_ttl` old. One refresh at a time per event;
    /// callers arriving meanwhile wait for it and share the result (or its failure).
    pub async fn seat_map_json(&self, event: &str) -> Result<axum::body::Bytes, Problem> {
        let ev = self.event(event).await?;
        Cached::get(
            &ev.seat_map,
            self.cache_ttl,
            "the seat map",
            self.read_seat_map(&ev),
        )
        .await
    }

    async fn read_seat_map(&self, ev: &EventState) -> Result<axum::body::Bytes, Problem> {
        let (sold, values) = tokio::join!(
            self.db.sold_seats(&ev.id),
            self.redis.seat_values(&ev.keys, &ev.seat_ids)
        );
        let sold: HashSet<String> = sold.map_err(|e| self.db_down(e))?.into_iter().collect();
        ev.mark_sold(sold.iter().map(String::as_str));
        let values = values.map_err(|e| self.redis_down(e))?;
        let statuses: Vec<SeatStatus> = ev
            .seat_ids
            .iter()
            .zip(values.iter())
            .map(|(id, v)| domain::seat_status(sold.contains(id), v.as_deref()))
            .collect();
        let counts = Counts::from_statuses(&statuses);
        let as_of = Utc::now();
        let seats = ev
            .seats
            .iter()
            .zip(statuses.iter())
            .map(|(s, st)| Seat {
                id: s.id.clone(),
                section: s.section.clone(),
                row: s.row,
                number: s.number,
                price_tier: s.price_tier.clone(),
                status: *st,
            })
            .collect();
        let map = SeatMap {
            event_id: ev.id.clone(),
            counts,
            sold_out: counts.sold_out(),
            as_of,
            seats,
        };
        let body = serde_json::to_vec(&map).map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("could not encode the seat map: {e}"),
            )
        })?;
        Ok(body.into())
    }

    pub async fn availability(&self, event: &str) -> Result<Availability, Problem> {
        let ev = self.event(event).await?;
        let (as_of, counts) = self.counts_of(&ev, self.cache_ttl).await?;
        let Counts {
            total,
            sold,
            held,
            available,
        } = counts;
        Ok(Availability {
            event_id: ev.id.clone(),
            total,
            sold,
            held,
            available,
            sold_out: counts.sold_out(),
            as_of,
        })
    }

    /// Sold / held / available without reading every seat: a count on the partial unique index
    /// and a ZCOUNT on the held-seat index. Cached like the seat map, single-flight per event;
    /// every refresh is published to Redis for the operator and the queue.
    async fn counts_of(
        &self,
        ev: &EventState,
        max_age: Duration,
    ) -> Result<(DateTime<Utc>, Counts), Problem> {
        Cached::get(
            &ev.counts,
            max_age,
            "the availability counts",
            self.read_counts(ev),
        )
        .await
    }

    async fn read_counts(&self, ev: &EventState) -> Result<(DateTime<Utc>, Counts), Problem> {
        let now = now_ms();
        let (sold, held) = tokio::join!(self.db.sold_count(&ev.id), self.redis.held_count(&ev.keys, now));
        let sold = sold.map_err(|e| self.db_down(e))?;
        let held = held.map_err(|e| self.redis_down(e))?;
        let total = ev.seats.len() as u64;
        let sold = sold.min(total);
        let held = held.min(total - sold);
        let counts = Counts {
            total,
            sold,
            held,
            available: total - sold - held,
        };
        for (status, n) in [
            ("sold", counts.sold),
            ("held", counts.held),
            ("available", counts.available),
        ] {
            self.metrics
                .seats
                .get_or_create(&SeatLabels {
                    event: ev.id.clone(),
                    status,
                })
                .set(n as i64);
        }
        if let Err(e) = self.redis.publish_counts(&ev.keys, &counts, now).await {
            tracing::warn!(error = %e, event = %ev.id, "could not publish availability counts");
        }
        Ok((Utc::now(), counts))
    }

    /// Keeps every event's counts fresh in Redis for the operator and the queue.
    pub async fn publish_all_counts(&self) {
        let events: Vec<Arc<EventState>> = self.events.read().await.values().cloned().collect();
        for ev in events {
            if let Err(p) = self.counts_of(&ev, self.cache_ttl).await {
                tracing::debug!(event = %ev.id, detail = %p.detail, "counts not refreshed");
            }
        }
    }

    // === start-up ===

    /// Applies migrations and loads every configured inventory. Idempotent; safe to retry.
    pub async fn initialize(&self) -> Result<(), DbError> {
        self.db.migrate().await?;
        let mut loaded = HashMap::new();
        for cfg in self.configs.values() {
            let load = self.db.load_inventory(cfg).await?;
            if !load.refused.is_empty() {
                tracing::error!(
                    event = %cfg.event_id,
                    sold_seats_removed = ?load.refused,
                    "inventory change refused: it would remove sold seats; keeping the stored inventory"
                );
                self.metrics
                    .inventory_refused
                    .get_or_create(&EventLabels {
                        event: cfg.event_id.clone(),
                    })
                    .inc();
            }
            tracing::info!(event = %cfg.event_id, seats = load.seats.len(), "inventory loaded");
            loaded.insert(cfg.event_id.clone(), Arc::new(EventState::new(cfg, load.seats)));
        }
        *self.events.write().await = loaded;
        // Ready with the hot connections open and warm (see `db::hot`): the first buyers do not
        // pay for them. What cannot be opened now is left to the keeper, not a reason to wait.
        match self.db.tend_hot().await {
            Ok(n) => tracing::info!(opened = n, "hot database connections open and warm"),
            Err(e) => {
                tracing::warn!(error = %e, "could not open every hot database connection; the keeper retries")
            }
        }
        self.initialized.store(true, Ordering::Release);
        Ok(())
    }
}

fn parse_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| no_such(what, raw))
}

fn no_such(what: &str, raw: &str) -> Problem {
    let shown: String = raw.chars().take(64).collect();
    Problem::new(
        StatusCode::NOT_FOUND,
        &format!("{what}-not-found"),
        format!("no {what} {shown:?}"),
    )
}

fn not_yours(what: &str) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        &format!("not-your-{what}"),
        format!("this {what} belongs to another user"),
    )
}
