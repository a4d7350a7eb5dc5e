//! PostgreSQL: migrations, inventory, hold mirror, orders and idempotency records. PostgreSQL is
//! the truth: the partial unique index on live (event, seat) bookings decides every race. Every
//! call is bounded by a timeout; connections that meet a read-only server (an Aurora failover
//! demoted our writer) or a broken socket are closed instead of returned to the pool, so the pool
//! reconnects to the new writer by itself.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tiketi_shared::config::{EventConfig, SeatSpec};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain;
use crate::model::{Hold, Order};

mod hot;
use hot::{Hot, HotSet};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const UNIQUE_VIOLATION: &str = "23505";
const FOREIGN_KEY_VIOLATION: &str = "23503";
const READ_ONLY_TRANSACTION: &str = "25006";
const ONE_BOOKING_PER_SEAT: &str = "order_lines_one_live_booking_per_seat";
const ONE_ORDER_PER_HOLD: &str = "orders_hold_id_key";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("postgres did not answer within {0:?}")]
    Timeout(Duration),
    #[error("postgres error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A batched statement failed for every request in it.
    #[error("postgres error: {0}")]
    Batch(Arc<sqlx::Error>),
    /// The claim batcher dropped the request (its task ended unexpectedly).
    #[error("the claim was not decided")]
    Dropped,
}

/// Whether a claim batch that failed with this SQLSTATE is worth deciding hold by hold: a
/// deadlock or serialization failure (class 40), a constraint or data error (23, 22), or our own
/// refusal of a malformed batch (TK). Not a cancelled statement, a read-only server or a
/// shutdown: those fail every hold alike.
fn decided_alone(code: Option<&str>) -> bool {
    code.is_some_and(|c| ["40", "23", "22", "TK"].iter().any(|class| c.starts_with(class)))
}

impl DbError {
    /// The same error for another request of a failed batch.
    fn duplicate(&self) -> Self {
        match self {
            Self::Timeout(d) => Self::Timeout(*d),
            Self::Batch(e) => Self::Batch(e.clone()),
            Self::Dropped => Self::Dropped,
            other => Self::Batch(Arc::new(sqlx::Error::Protocol(other.to_string()))),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Sqlx(_) | Self::Batch(_) => "sqlx",
            Self::Migrate(_) => "migrate",
            Self::Dropped => "dropped",
        }
    }
}

/// Whether the connection that produced this error should be thrown away.
fn poisons_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref() == Some(READ_ONLY_TRANSACTION),
        _ => false,
    }
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(FOREIGN_KEY_VIOLATION))
}

fn constraint_violated(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            Some(db.constraint().unwrap_or_default().to_owned())
        }
        _ => None,
    }
}

/// One seat row loaded from the `seats` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatRow {
    pub id: String,
    pub section: String,
    pub row: Option<u32>,
    pub number: u32,
    pub price_tier: Option<String>,
}

/// Result of loading an event's inventory.
#[derive(Debug, Clone)]
pub struct InventoryLoad {
    /// The inventory now stored, in seat-map order.
    pub seats: Vec<SeatRow>,
    /// Non-empty when the configured inventory was refused: the sold seats it would remove.
    pub refused: Vec<String>,
}

/// A hold as PostgreSQL mirrors it.
#[derive(Debug, Clone)]
pub struct HoldRow {
    pub hold: Hold,
    pub status: String,
}

/// A stored idempotent answer.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    pub fingerprint: String,
    pub status: Option<u16>,
    pub body: Option<serde_json::Value>,
}

/// Why PostgreSQL refused a hold's claim (see `tiketi_claim_hold` in the migrations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRefused {
    /// These seats have a live order line.
    Sold(Vec<String>),
    /// These seats are claimed by other live holds: (seat, owner hold, owner expiry when known).
    Held(Vec<(String, Option<Uuid>, Option<DateTime<Utc>>)>),
    /// The user's held and bought seats would exceed the limit; `current` is their count now.
    OverLimit { current: u32 },
}

/// What a confirm reads first, and the connection its decision then runs on.
pub struct ConfirmContext {
    /// The idempotency record of (user, key), if any.
    pub stored: Option<StoredResponse>,
    /// The hold, if it exists.
    pub hold: Option<HoldRow>,
    conn: Hot,
}

/// The event's rules a confirm applies in PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct ConfirmRules {
    /// `maxSeatsPerUser`: held + bought seats per buyer.
    pub cap: u32,
    /// `saleEndsAt`: no confirm from then on.
    pub sale_ends: Option<DateTime<Utc>>,
    /// `queue.tokenTtlSeconds`: a lapsed hold is not taken back after its admission ended.
    pub admission_ttl_seconds: Option<u64>,
}

/// What a confirm decided.
#[derive(Debug)]
pub enum ConfirmOutcome {
    Created(Order),
    /// These seats are already booked by a live order, or claimed by another live hold.
    SeatsTaken(Vec<String>),
    /// The event's sale ended (`saleEndsAt`) before this confirm.
    SaleEnded,
    /// The hold lapsed and so did the admission it was made under.
    AdmissionEnded,
    /// These seats of the hold are no longer in the inventory.
    SeatsRemoved(Vec<String>),
    /// A lapsed hold taken back would put the user past the limit; `current` is their count.
    OverLimit {
        current: u32,
    },
    /// The hold already became this order (under another Idempotency-Key).
    AlreadyConfirmed(Option<Uuid>),
    /// The hold was released before it could be confirmed.
    NotHeld(String),
    /// Another request with the same key committed first: replay its record.
    KeyInUse,
}

/// How a hold's claim ended: decided (claimed, or refused and why), or PostgreSQL failed.
pub type ClaimResult = Result<Result<(), ClaimRefused>, DbError>;

#[derive(Clone)]
pub struct Db {
    writer: PgPool,
    reader: PgPool,
    has_reader: bool,
    timeout: Duration,
    claims: Arc<ClaimQueue>,
    /// Confirms' and claim batches' connections (see [`hot`]).
    hot: Arc<HotSet>,
}

/// Group commit of hold claims. A hold's claim is queued; a drainer task takes the queued
/// claims — up to `max_batch` (`TIKETI_CLAIM_BATCH`), no two sharing a user or a seat of an
/// event — and decides them in one statement and one transaction (`tiketi_claim_holds`), again
/// until the queue is empty. One statement runs at a time: the claims that arrive meanwhile share
/// the next one, so PostgreSQL pays one round trip, one plan execution and one commit for many
/// (a second statement in flight made batches half as big and cost PostgreSQL more CPU per hold
/// than it saved, measured with e2e/bench/reservation.sh). Only while the running statement has
/// taken longer than [`CLAIM_STALL`] (waiting on a lock, say) may more start, up to
/// `max_running` (an eighth of the pool). At low load a batch is one hold (decided by
/// `tiketi_claim_hold`, cheaper alone) and nothing waits.
struct ClaimQueue {
    state: Mutex<ClaimQueueState>,
    max_running: usize,
    max_batch: usize,
    hasher: RandomState,
    stats: Mutex<ClaimStats>,
}

/// How claims were batched so far (claim statements that returned: `tiketi_claim_holds`, or
/// `tiketi_claim_hold` for a batch of one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimStats {
    /// Claim statements run.
    pub statements: u64,
    /// Holds those statements decided.
    pub holds: u64,
    /// The most holds one statement decided.
    pub largest: u64,
}

/// How long a claim statement runs before the queue may start another beside it.
const CLAIM_STALL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct ClaimQueueState {
    pending: VecDeque<PendingClaim>,
    running: usize,
    /// When the latest claim statement started.
    last_start: Option<std::time::Instant>,
}

struct PendingClaim {
    hold: Hold,
    cap: u32,
    reply: oneshot::Sender<ClaimResult>,
}

impl ClaimQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimQueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the next batch off the queue, oldest first; a claim sharing a user or a seat of an
    /// event with one already taken waits, in order, for a later batch. Empty only when no claim
    /// whose request still waits is queued (the drainer then ends): claims whose requests gave up
    /// are dropped on the way and do not count towards the scan bound, so after an outage a
    /// queue front of abandoned claims cannot end the drainer with live claims behind it.
    fn next_batch(&self, q: &mut ClaimQueueState) -> Vec<PendingClaim> {
        let mut batch = Vec::new();
        let mut keys: HashSet<u64> = HashSet::new();
        let mut deferred = Vec::new();
        let mut scanned = 0;
        while batch.len() < self.max_batch && scanned < 4 * self.max_batch {
            let Some(p) = q.pending.pop_front() else { break };
            if p.reply.is_closed() {
                // Its request gave up (timed out) already: claim nothing for it.
                continue;
            }
            scanned += 1;
            let h = &p.hold;
            let mine: Vec<u64> = std::iter::once(self.hasher.hash_one(("u", &h.event_id, &h.user_id)))
                .chain(
                    h.seats
                        .iter()
                        .map(|s| self.hasher.hash_one(("s", &h.event_id, s))),
                )
                .collect();
            if mine.iter().any(|k| keys.contains(k)) {
                deferred.push(p);
            } else {
                keys.extend(mine);
                batch.push(p);
            }
        }
        for p in deferred.into_iter().rev() {
            q.pending.push_front(p);
        }
        batch
    }
}

/// Gives the drainer's slot back if its task ends without doing so (a panic).
struct DrainerSlot(Option<Arc<ClaimQueue>>);

impl Drop for DrainerSlot {
    fn drop(&mut self) {
        if let Some(queue) = self.0.take() {
            queue.lock().running -= 1;
        }
    }
}

/// One result row of `tiketi_claim_hold` / `tiketi_claim_holds` (without the index).
type ClaimRow = (
    String,
    Option<String>,
    Option<Uuid>,
    Option<DateTime<Utc>>,
    Option<i32>,
);

/// A hold's answer from its result rows: none = claimed.
fn claim_outcome(rows: Vec<ClaimRow>) -> Result<(), ClaimRefused> {
    let Some((kind, ..)) = rows.first() else {
        return Ok(());
    };
    // A short hold's seats can be sold and held at once (see `claim_rows!`): sold is final, so
    // it is what the buyer and the replica's known-sold set learn.
    if rows.iter().any(|r| r.0 == "sold") {
        return Err(ClaimRefused::Sold(
            rows.into_iter()
                .filter(|r| r.0 == "sold")
                .filter_map(|r| r.1)
                .collect(),
        ));
    }
    Err(match kind.as_str() {
        "limit" => ClaimRefused::OverLimit {
            current: rows[0].4.unwrap_or(0).max(0) as u32,
        },
        _ => ClaimRefused::Held(
            rows.into_iter()
                .filter_map(|(_, seat, owner, expires, _)| seat.map(|s| (s, owner, expires)))
                .collect(),
        ),
    })
}

/// The hot statements (run on [`hot`] connections; [`warm`] runs each once on a new one).
const CONTEXT_SQL: &str = "SELECT i.fingerprint, i.status_code, i.response, \
        h.hold_id, h.event_id, h.user_id, h.seat_ids, h.expires_at, h.status \
    FROM (SELECT 1) AS one \
    LEFT JOIN idempotency_keys i ON i.user_id = $1 AND i.idempotency_key = $2 \
    LEFT JOIN holds h ON h.hold_id = $3";
const CONFIRM_SQL: &str = "SELECT * FROM tiketi_confirm($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
/// How the service reads the claim functions' rows. A seat whose claim never lapses
/// (`expires_at = 'infinity'`) was sold by a confirm that committed while the claim ran (after
/// its sold check read `order_lines`): the function reports it `held` by that hold with an
/// infinite expiry; the service reads it as sold, with no owner or expiry. An infinite
/// timestamp is never decoded (sqlx's chrono decoding panics on it).
macro_rules! claim_rows {
    ($index:literal, $call:literal) => {
        concat!(
            "SELECT ",
            $index,
            "CASE WHEN r_owner_expires = 'infinity' THEN 'sold' ELSE r_kind END, r_seat, \
             CASE WHEN r_owner_expires = 'infinity' THEN NULL ELSE r_owner END, \
             CASE WHEN isfinite(r_owner_expires) THEN r_owner_expires END, r_count FROM ",
            $call
        )
    };
}
const CLAIMS_SQL: &str = claim_rows!("r_index, ", "tiketi_claim_holds($1, $2, $3, $4, $5, $6, $7)");
const CLAIM_SQL: &str = claim_rows!("", "tiketi_claim_hold($1, $2, $3, $4, $5, $6)");
type ConfirmRow = (String, Option<Vec<String>>, Option<Uuid>, Option<i32>);

/// Runs each hot statement once, with the argument types of the real calls, on arguments that
/// change nothing: the context of a hold that does not exist, the confirm of it (`missing`), a
/// claim batch of no holds. The connection then has the statements prepared, and its backend
/// has compiled the functions and loaded the tables' catalog entries.
fn warm(conn: &mut PgConnection) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        let nothing = Uuid::nil();
        sqlx::query(CONTEXT_SQL)
            .bind("")
            .bind("")
            .bind(nothing)
            .fetch_one(&mut *conn)
            .await?;
        let none: Option<i32> = None;
        sqlx::query_as::<_, ConfirmRow>(CONFIRM_SQL)
            .bind(nothing)
            .bind("")
            .bind("")
            .bind("")
            .bind(serde_json::Value::Null)
            .bind(nothing)
            .bind(Utc::now())
            .bind(0i32)
            .bind(None::<DateTime<Utc>>)
            .bind(none)
            .fetch_all(&mut *conn)
            .await?;
        let (ids, texts, ints) = (Vec::<Uuid>::new(), Vec::<&str>::new(), Vec::<i32>::new());
        sqlx::query(CLAIMS_SQL)
            .bind(&ids)
            .bind(&texts)
            .bind(&texts)
            .bind(Vec::<DateTime<Utc>>::new())
            .bind(&ints)
            .bind(&ints)
            .bind(&texts)
            .fetch_all(&mut *conn)
            .await?;
        Ok(())
    })
}

/// A pooled connection idle this long is pinged before it is handed out.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);
/// Aurora moves its endpoints' DNS on failover; recycling connections follows it.
const MAX_LIFETIME: Duration = Duration::from_secs(300);

fn pool(url: &str, max: u32, timeout: Duration, writer: bool) -> Result<PgPool, DbError> {
    let opts = PgConnectOptions::from_str(url)?
        .application_name("tiketi-reservation")
        .options([("statement_timeout", format!("{}", timeout.as_millis().max(1)))]);
    let options = PgPoolOptions::new()
        .max_connections(max.max(1))
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(Duration::from_secs(60))
        .max_lifetime(MAX_LIFETIME)
        // No ping per checkout (a round trip on every call): only a connection idle for a while
        // is pinged before use, which weeds out connections a failover or restart killed while
        // the pool was quiet. One that dies under load fails its call (a 503 to retry) and is
        // closed when sqlx tests it on release.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        });
    let options = if writer {
        options.after_connect(|conn, _meta| {
            Box::pin(async move {
                let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                    .fetch_one(conn)
                    .await?;
                if in_recovery {
                    return Err(sqlx::Error::Protocol(
                        "writer URL points at a read-only server (failover in progress?)".into(),
                    ));
                }
                Ok(())
            })
        })
    } else {
        options
    };
    Ok(options.connect_lazy_with(opts))
}

impl Db {
    /// Builds lazily connecting pools: nothing blocks on PostgreSQL here.
    pub fn new(
        writer_url: &str,
        reader_url: Option<&str>,
        max_connections: u32,
        timeout: Duration,
        claim_batch: usize,
    ) -> Result<Self, DbError> {
        // Three quarters of the writer's connections serve confirms and claim batches, kept out
        // of the pool (see [`hot`]); the pool keeps the rest for everything else, and opens the
        // set's connections (each leaves the pool's count once the set takes it).
        let max_connections = max_connections.max(2);
        let hot_size = (max_connections * 3 / 4).max(1);
        let writer = pool(writer_url, max_connections - hot_size, timeout, true)?;
        let (reader, has_reader) = match reader_url {
            Some(url) => (pool(url, max_connections, timeout, false)?, true),
            None => (writer.clone(), false),
        };
        Ok(Self {
            writer,
            reader,
            has_reader,
            timeout,
            claims: Arc::new(ClaimQueue {
                state: Mutex::new(ClaimQueueState::default()),
                // Beside a stalled one (see `CLAIM_STALL`): two for the default 16 connections;
                // the rest of the pool stays for confirms and reads.
                max_running: (max_connections.max(1) as usize).div_ceil(8),
                max_batch: claim_batch.max(1),
                hasher: RandomState::new(),
                stats: Mutex::new(ClaimStats::default()),
            }),
            hot: HotSet::new(hot_size, MAX_LIFETIME, IDLE_BEFORE_PING),
        })
    }

    pub fn writer(&self) -> &PgPool {
        &self.writer
    }

    /// (pool name, open, idle, max) for the pool-usage gauges: `writer`, `hot` (confirms' and
    /// claim batches' connections) and `reader` when configured.
    pub fn pool_usage(&self) -> Vec<(&'static str, u32, u32, u32)> {
        let (hot_max, hot_open, hot_idle) = self.hot.usage();
        let pool = |p: &PgPool| (p.size(), p.num_idle() as u32, p.options().get_max_connections());
        let (open, idle, max) = pool(&self.writer);
        let mut v = vec![("writer", open, idle, max), ("hot", hot_open, hot_idle, hot_max)];
        if self.has_reader {
            let (open, idle, max) = pool(&self.reader);
            v.push(("reader", open, idle, max));
        }
        v
    }

    /// One pass of the hot connections' keeper: opens and warms them until all exist, pings the
    /// quiet ones, renews the old ones (see [`hot`]). Run once before the replica reports ready,
    /// then every quarter of the ping period ([`Db::TEND_EVERY`]). Returns how many it opened.
    pub async fn tend_hot(&self) -> Result<u32, DbError> {
        self.hot.tend(&self.writer, self.timeout, warm).await
    }

    /// How often the hot connections' keeper runs: a quiet connection is pinged by it (at half
    /// the ping period) before a checkout would have to.
    pub const TEND_EVERY: Duration = Duration::from_millis(IDLE_BEFORE_PING.as_millis() as u64 / 4);

    /// Ends a statement's use of a hot connection: kept when PostgreSQL answered (an error it
    /// reports leaves the connection usable, unless it is one that condemns the connection),
    /// closed when the statement timed out or the connection broke.
    fn settle<T>(
        &self,
        conn: &mut Hot,
        result: Result<Result<T, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, DbError> {
        match result {
            Ok(Ok(v)) => {
                conn.answered();
                Ok(v)
            }
            Ok(Err(e)) => {
                if !poisons_connection(&e) {
                    conn.answered();
                }
                Err(DbError::Sqlx(e))
            }
            Err(_) => Err(DbError::Timeout(self.timeout)),
        }
    }

    async fn bounded<T>(&self, fut: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, DbError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(DbError::Timeout(self.timeout)),
        }
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.bounded(sqlx::query("SELECT 1").execute(&self.writer))
            .await?;
        if self.has_reader {
            self.bounded(sqlx::query("SELECT 1").execute(&self.reader))
                .await?;
        }
        Ok(())
    }

    /// Applies the embedded migrations. sqlx's migrator takes a session-level PostgreSQL advisory
    /// lock (keyed on the database name) around the whole run, so replicas starting together
    /// apply each migration exactly once; the others wait and then find nothing to do. Each
    /// statement is bounded by the server's statement_timeout; the whole run by 20 × the call
    /// bound on this side too, so a PostgreSQL that stopped answering (a stalled or black-holed
    /// writer) fails it and startup retries, instead of waiting for TCP to give up.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let bound = self.timeout * 20;
        match tokio::time::timeout(bound, MIGRATOR.run(&self.writer)).await {
            Ok(r) => r.map_err(DbError::from),
            Err(_) => Err(DbError::Timeout(bound)),
        }
    }

    /// Loads one event's inventory idempotently and returns the seats in their stable order.
    /// Runs under a per-event transaction-level advisory lock so replicas do not interleave. A
    /// configuration that would remove a sold seat is not applied: the stored inventory stays and
    /// [`InventoryLoad::refused`] names the sold seats the change would have removed.
    pub async fn load_inventory(&self, cfg: &EventConfig) -> Result<InventoryLoad, DbError> {
        let seats: Vec<SeatSpec> = cfg.inventory.seats().collect();
        let config_json = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
        let event = cfg.event_id.clone();
        // Loading a large inventory may take longer than one request's budget: the connection's
        // statement_timeout (the request bound) is raised to the load's bound for this
        // transaction only, or a 200,000-seat event on a busy server never finished loading.
        let load_bound = self.timeout * 10;
        let fut = async {
            let mut tx = self.writer.begin().await?;
            sqlx::query(&format!(
                "SET LOCAL statement_timeout = {}",
                load_bound.as_millis().max(1)
            ))
            .execute(&mut *tx)
            .await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tiketi-inventory:' || $1))")
                .bind(&event)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO events (event_id, config, total_seats) VALUES ($1, $2, $3) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&event)
            .bind(&config_json)
            .bind(seats.len() as i32)
            .execute(&mut *tx)
            .await?;
            let booked: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT seat_id FROM order_lines WHERE event_id = $1")
                    .bind(&event)
                    .fetch_all(&mut *tx)
                    .await?;
            let gone = domain::removed_sold_seats(&seats, &booked);
            if !gone.is_empty() {
                tx.rollback().await?;
                return Ok(Err(gone));
            }
            let ids: Vec<String> = seats.iter().map(|s| s.id.clone()).collect();
            let sections: Vec<String> = seats.iter().map(|s| s.section.clone()).collect();
            let rows: Vec<Option<i32>> = seats.iter().map(|s| s.row.map(|r| r as i32)).collect();
            let numbers: Vec<i32> = seats.iter().map(|s| s.number as i32).collect();
            let tiers: Vec<Option<String>> = seats.iter().map(|s| s.price_tier.clone()).collect();
            let positions: Vec<i32> = (0..seats.len() as i32).collect();
            sqlx::query(
                "INSERT INTO seats (event_id, seat_id, section, row_number, seat_number, price_tier, position) \
                 SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::int[], $5::int[], $6::text[], $7::int[]) \
                 ON CONFLICT (event_id, seat_id) DO UPDATE SET section = EXCLUDED.section, \
                   row_number = EXCLUDED.row_number, seat_number = EXCLUDED.seat_number, \
                   price_tier = EXCLUDED.price_tier, position = EXCLUDED.position \
                 WHERE (seats.section, seats.row_number, seats.seat_number, seats.price_tier, seats.position) \
                   IS DISTINCT FROM (EXCLUDED.section, EXCLUDED.row_number, EXCLUDED.seat_number, \
                                     EXCLUDED.price_tier, EXCLUDED.position)",
            )
            .bind(&event)
            .bind(&ids)
            .bind(&sections)
            .bind(&rows)
            .bind(&numbers)
            .bind(&tiers)
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM seats WHERE event_id = $1 AND NOT (seat_id = ANY($2))")
                .bind(&event)
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE events SET config = $2, total_seats = $3, updated_at = now() \
                 WHERE event_id = $1 AND (config IS DISTINCT FROM $2 OR total_seats <> $3)",
            )
            .bind(&event)
            .bind(&config_json)
            .bind(seats.len() as i32)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Ok(()))
        };
        let applied = match tokio::time::timeout(load_bound, fut).await {
            Ok(r) => r.map_err(DbError::Sqlx)?,
            Err(_) => return Err(DbError::Timeout(load_bound)),
        };
        let seats = self.stored_seats(&event).await?;
        Ok(InventoryLoad {
            seats,
            refused: applied.err().unwrap_or_default(),
        })
    }

    /// The inventory as stored (used when a new configuration was refused).
    pub async fn stored_seats(&self, event: &str) -> Result<Vec<SeatRow>, DbError> {
        let rows = self
            .bounded(
                sqlx::query(
                    "SELECT seat_id, section, row_number, seat_number, price_tier FROM seats \
                     WHERE event_id = $1 ORDER BY position, seat_id",
                )
                .bind(event)
                .fetch_all(&self.writer),
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok(SeatRow {
                    id: r.try_get("seat_id")?,
                    section: r.try_get("section")?,
                    row: r.try_get::<Option<i32>, _>("row_number")?.map(|v| v as u32),
                    number: r.try_get::<i32, _>("seat_number")? as u32,
                    price_tier: r.try_get("price_tier")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
    }

    /// Seats of the event with a live booking. Lag-tolerant: uses the reader when configured.
    pub async fn sold_seats(&self, event: &str) -> Result<Vec<String>, DbError> {
        self.bounded(
            sqlx::query_scalar("SELECT seat_id FROM order_lines WHERE event_id = $1 AND live")
                .bind(event)
                .fetch_all(&self.reader),
        )
        .await
    }

    /// Number of seats of the event with a live booking (lag-tolerant: reader when configured).
    pub async fn sold_count(&self, event: &str) -> Result<u64, DbError> {
        let n: i64 = self
            .bounded(
                sqlx::query_scalar("SELECT count(*) FROM order_lines WHERE event_id = $1 AND live")
                    .bind(event)
                    .fetch_one(&self.reader),
            )
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Claims the hold's seats in PostgreSQL and mirrors the hold: refused when a seat is sold,
    /// claimed by another live hold, or when the user's held and bought seats would exceed
    /// `cap`; nothing is claimed then. Ok(Ok(())) only once the claim is committed. Claims of
    /// concurrent holds share one statement and one commit (see [`ClaimQueue`]); each still gets
    /// its own answer.
    pub async fn claim_hold(&self, hold: &Hold, cap: u32) -> ClaimResult {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut q = self.claims.lock();
            q.pending.push_back(PendingClaim {
                hold: hold.clone(),
                cap,
                reply,
            });
            let stalled = q.last_start.is_some_and(|t| t.elapsed() >= CLAIM_STALL);
            let lead = q.running == 0 || (q.running < self.claims.max_running && stalled);
            if lead {
                q.running += 1;
            }
            lead
        };
        if lead {
            let db = self.clone();
            tokio::spawn(async move { db.drain_claims().await });
        }
        // Waiting in the queue counts too: past twice the call bound the request gives up, and
        // a claim not yet taken off the queue is then dropped unclaimed.
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DbError::Dropped),
            Err(_) => Err(DbError::Timeout(self.timeout * 2)),
        }
    }

    /// Decides queued claims batch after batch until the queue is empty.
    async fn drain_claims(self) {
        let mut slot = DrainerSlot(Some(self.claims.clone()));
        loop {
            let batch = {
                let mut q = self.claims.lock();
                let batch = self.claims.next_batch(&mut q);
                if batch.is_empty() {
                    // Under the lock: a claim queued from now on finds the slot free.
                    q.running -= 1;
                    slot.0 = None;
                    return;
                }
                q.last_start = Some(std::time::Instant::now());
                batch
            };
            self.claim_batch(batch).await;
        }
    }

    /// How claims were batched so far.
    pub fn claim_stats(&self) -> ClaimStats {
        *self.claims.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_claims(&self, holds: u64) {
        let mut st = self.claims.stats.lock().unwrap_or_else(PoisonError::into_inner);
        st.statements += 1;
        st.holds += holds;
        st.largest = st.largest.max(holds);
    }

    async fn claim_batch(&self, batch: Vec<PendingClaim>) {
        if batch.len() == 1 {
            // Alone, the one-hold statement costs PostgreSQL less than a batch of one.
            if let Some(p) = batch.into_iter().next() {
                let result = self.claim_one(&p.hold, p.cap).await;
                if result.is_ok() {
                    self.count_claims(1);
                }
                self.answer(p, result);
            }
            return;
        }
        match self.claim_many(&batch).await {
            Ok(mut outcomes) => {
                self.count_claims(batch.len() as u64);
                for p in batch.into_iter().rev() {
                    let rows = outcomes.pop().unwrap_or_default();
                    self.answer(p, Ok(claim_outcome(rows)));
                }
            }
            // The statement itself failed, not PostgreSQL (a deadlock it broke, a constraint):
            // nothing of it was committed. Each hold is decided again on its own, so one hold's
            // failure is not its neighbours'.
            Err(DbError::Sqlx(sqlx::Error::Database(e)))
                if batch.len() > 1 && decided_alone(e.code().as_deref()) =>
            {
                tracing::warn!(error = %e, holds = batch.len(), "claim batch failed; claiming one by one");
                let singles = batch.iter().map(|p| self.claim_one(&p.hold, p.cap));
                let results = futures::future::join_all(singles).await;
                for (p, r) in batch.into_iter().zip(results) {
                    self.answer(p, r);
                }
            }
            Err(e) => {
                let e = match e {
                    DbError::Sqlx(e) => DbError::Batch(Arc::new(e)),
                    other => other,
                };
                for p in batch {
                    let _ = p.reply.send(Err(e.duplicate()));
                }
            }
        }
    }

    /// Hands a claim's result to its request. A request that gave up meanwhile (past its bound:
    /// the buyer was answered 503 and the hold's Redis locks undone) cannot take a claim made
    /// for it: released here, in the background, or the seats would stay claimed — refused to
    /// everyone and counted against the buyer's limit — for a whole hold TTL with nobody to
    /// confirm them.
    fn answer(&self, p: PendingClaim, result: ClaimResult) {
        if let Err(Ok(Ok(()))) = p.reply.send(result) {
            let (db, id) = (self.clone(), p.hold.hold_id);
            tokio::spawn(async move {
                match db.release_hold(id).await {
                    Ok(_) => tracing::info!(hold = %id, "released a claim its request gave up on"),
                    Err(e) => {
                        tracing::warn!(hold = %id, error = %e, "could not release a claim its request gave up on; it lapses with the hold")
                    }
                }
            });
        }
    }

    /// One `tiketi_claim_holds` statement over the batch; the result rows of each hold, in
    /// batch order.
    async fn claim_many(&self, batch: &[PendingClaim]) -> Result<Vec<Vec<ClaimRow>>, DbError> {
        let n = batch.len();
        let seats: usize = batch.iter().map(|p| p.hold.seats.len()).sum();
        let (mut ids, mut events, mut users, mut expires, mut caps) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut seat_hold, mut seat_ids) = (Vec::with_capacity(seats), Vec::with_capacity(seats));
        for (i, p) in batch.iter().enumerate() {
            let h = &p.hold;
            ids.push(h.hold_id);
            events.push(h.event_id.as_str());
            users.push(h.user_id.as_str());
            expires.push(h.expires_at);
            caps.push(i32::try_from(p.cap).unwrap_or(i32::MAX));
            for s in &h.seats {
                seat_hold.push(i as i32 + 1);
                seat_ids.push(s.as_str());
            }
        }
        type Row = (
            i32,
            String,
            Option<String>,
            Option<Uuid>,
            Option<DateTime<Utc>>,
            Option<i32>,
        );
        let mut conn = self.hot.checkout(&self.writer, self.timeout).await?;
        let query = sqlx::query_as(CLAIMS_SQL)
            .bind(&ids)
            .bind(&events)
            .bind(&users)
            .bind(&expires)
            .bind(&caps)
            .bind(&seat_hold)
            .bind(&seat_ids);
        let result = tokio::time::timeout(self.timeout, query.fetch_all(conn.conn()?)).await;
        let rows: Vec<Row> = self.settle(&mut conn, result)?;
        let mut out: Vec<Vec<ClaimRow>> = vec![Vec::new(); n];
        for (i, kind, seat, owner, until, count) in rows {
            if let Some(hold) = usize::try_from(i - 1).ok().and_then(|i| out.get_mut(i)) {
                hold.push((kind, seat, owner, until, count));
            }
        }
        Ok(out)
    }

    /// One hold's claim on its own (`tiketi_claim_hold`).
    async fn claim_one(&self, hold: &Hold, cap: u32) -> ClaimResult {
        let mut conn = self.hot.checkout(&self.writer, self.timeout).await?;
        let query = sqlx::query_as(CLAIM_SQL)
            .bind(hold.hold_id)
            .bind(&hold.event_id)
            .bind(&hold.user_id)
            .bind(&hold.seats)
            .bind(hold.expires_at)
            .bind(i32::try_from(cap).unwrap_or(i32::MAX));
        let result = tokio::time::timeout(self.timeout, query.fetch_all(conn.conn()?)).await;
        let rows: Vec<ClaimRow> = self.settle(&mut conn, result)?;
        Ok(claim_outcome(rows))
    }

    /// The user's holds of the event that are still `held` and unexpired, newest first
    /// (`holds_event_user` index).
    pub async fn live_holds(&self, event: &str, user: &str) -> Result<Vec<Hold>, DbError> {
        type Row = (Uuid, String, String, Vec<String>, DateTime<Utc>);
        let rows: Vec<Row> = self
            .bounded(
                sqlx::query_as(
                    "SELECT hold_id, event_id, user_id, seat_ids, expires_at FROM holds \
                     WHERE event_id = $1 AND user_id = $2 AND status = 'held' AND expires_at > now() \
                     ORDER BY created_at DESC LIMIT 100",
                )
                .bind(event)
                .bind(user)
                .fetch_all(&self.writer),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(hold_id, event_id, user_id, seats, expires_at)| Hold {
                hold_id,
                event_id,
                user_id,
                seats,
                expires_at,
            })
            .collect())
    }

    pub async fn get_hold(&self, id: Uuid) -> Result<Option<HoldRow>, DbError> {
        let row = self
            .bounded(
                sqlx::query(
                    "SELECT hold_id, event_id, user_id, seat_ids, expires_at, status FROM holds \
                     WHERE hold_id = $1",
                )
                .bind(id)
                .fetch_optional(&self.writer),
            )
            .await?;
        row.map(|r| -> Result<HoldRow, sqlx::Error> {
            Ok(HoldRow {
                hold: Hold {
                    hold_id: r.try_get("hold_id")?,
                    event_id: r.try_get("event_id")?,
                    user_id: r.try_get("user_id")?,
                    seats: r.try_get("seat_ids")?,
                    expires_at: r.try_get("expires_at")?,
                },
                status: r.try_get("status")?,
            })
        })
        .transpose()
        .map_err(DbError::from)
    }

    /// Marks a held hold released and frees the claims it still owns, in one statement; returns
    /// false when it was not in state `held`.
    pub async fn release_hold(&self, id: Uuid) -> Result<bool, DbError> {
        let released: i64 = self
            .bounded(
                sqlx::query_scalar(
                    "WITH h AS (UPDATE holds SET status = 'released', released_at = now() \
                                WHERE hold_id = $1 AND status = 'held' RETURNING event_id, seat_ids), \
                          freed AS (DELETE FROM seat_claims c USING h \
                                    WHERE c.event_id = h.event_id AND c.seat_id = ANY (h.seat_ids) \
                                      AND c.hold_id = $1 RETURNING 1) \
                     SELECT count(*) FROM h",
                )
                .bind(id)
                .fetch_one(&self.writer),
            )
            .await?;
        Ok(released == 1)
    }

    /// The idempotency record for (user, key) and the hold, in one round trip, on the connection
    /// the confirm then uses ([`Db::confirm`]): one checkout per confirm.
    pub async fn confirm_context(
        &self,
        user: &str,
        key: &str,
        hold: Uuid,
    ) -> Result<ConfirmContext, DbError> {
        let mut conn = self.hot.checkout(&self.writer, self.timeout).await?;
        let query = sqlx::query(CONTEXT_SQL).bind(user).bind(key).bind(hold);
        let result = tokio::time::timeout(self.timeout, query.fetch_one(conn.conn()?)).await;
        let r = self.settle(&mut conn, result)?;
        let decode = || -> Result<(Option<StoredResponse>, Option<HoldRow>), sqlx::Error> {
            let stored = match r.try_get::<Option<String>, _>("fingerprint")? {
                Some(fingerprint) => Some(StoredResponse {
                    fingerprint,
                    status: r.try_get::<Option<i16>, _>("status_code")?.map(|s| s as u16),
                    body: r.try_get("response")?,
                }),
                None => None,
            };
            let hold = match r.try_get::<Option<Uuid>, _>("hold_id")? {
                Some(hold_id) => Some(HoldRow {
                    hold: Hold {
                        hold_id,
                        event_id: r.try_get("event_id")?,
                        user_id: r.try_get("user_id")?,
                        seats: r.try_get("seat_ids")?,
                        expires_at: r.try_get("expires_at")?,
                    },
                    status: r.try_get("status")?,
                }),
                None => None,
            };
            Ok((stored, hold))
        };
        let (stored, hold) = decode().map_err(DbError::from)?;
        Ok(ConfirmContext { stored, hold, conn })
    }

    pub async fn idempotency_record(&self, user: &str, key: &str) -> Result<Option<StoredResponse>, DbError> {
        let row = self
            .bounded(
                sqlx::query(
                    "SELECT fingerprint, status_code, response FROM idempotency_keys \
                     WHERE user_id = $1 AND idempotency_key = $2",
                )
                .bind(user)
                .bind(key)
                .fetch_optional(&self.writer),
            )
            .await?;
        row.map(|r| -> Result<StoredResponse, sqlx::Error> {
            Ok(StoredResponse {
                fingerprint: r.try_get("fingerprint")?,
                status: r.try_get::<Option<i16>, _>("status_code")?.map(|s| s as u16),
                body: r.try_get("response")?,
            })
        })
        .transpose()
        .map_err(DbError::from)
    }

    /// Stores a final non-2xx answer (e.g. 409) for a key, unless one is stored already.
    pub async fn store_response(
        &self,
        user: &str,
        key: &str,
        fingerprint: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), DbError> {
        self.bounded(
            sqlx::query(
                "INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint, status_code, response) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(status as i16)
            .bind(body)
            .execute(&self.writer),
        )
        .await?;
        Ok(())
    }

    /// The confirm, one statement (`tiketi_confirm`): lock the hold, check the sale end and (for
    /// a lapsed hold) the user's limit, claim its seats for good unless another live hold has
    /// them, claim the idempotency key with its answer, write the order and its lines — all or
    /// nothing. The partial unique index on live order lines stays the last word on a seat.
    pub async fn confirm(
        &self,
        ctx: ConfirmContext,
        hold: &Hold,
        user: &str,
        key: &str,
        fingerprint: &str,
        rules: ConfirmRules,
    ) -> Result<ConfirmOutcome, DbError> {
        let ConfirmRules {
            cap,
            sale_ends,
            admission_ttl_seconds,
        } = rules;
        let mut conn = ctx.conn;
        let order = new_order(hold, user);
        let body = serde_json::to_value(&order).unwrap_or(serde_json::Value::Null);
        let statement = sqlx::query_as::<_, ConfirmRow>(CONFIRM_SQL)
            .bind(hold.hold_id)
            .bind(user)
            .bind(key)
            .bind(fingerprint)
            .bind(&body)
            .bind(order.order_id)
            .bind(order.created_at)
            .bind(i32::try_from(cap).unwrap_or(i32::MAX))
            .bind(sale_ends)
            .bind(admission_ttl_seconds.map(|s| i32::try_from(s).unwrap_or(i32::MAX)));
        let result = tokio::time::timeout(self.timeout, statement.fetch_one(conn.conn()?)).await;
        let result = self.settle(&mut conn, result);
        // Given back (or closed) before the follow-up reads below take a pooled connection.
        drop(conn);
        match result {
            Err(DbError::Sqlx(e)) => {
                if is_foreign_key_violation(&e) {
                    // A seat of the hold left the inventory (a configuration change) after it was
                    // held: final, not an outage to retry.
                    let gone = self.missing_seats(&hold.event_id, &hold.seats).await?;
                    return Ok(ConfirmOutcome::SeatsRemoved(gone));
                }
                match constraint_violated(&e).as_deref() {
                    Some(ONE_BOOKING_PER_SEAT) => {
                        let sold = self.sold_among(&hold.event_id, &hold.seats).await?;
                        Ok(ConfirmOutcome::SeatsTaken(sold))
                    }
                    Some(ONE_ORDER_PER_HOLD) => Ok(ConfirmOutcome::AlreadyConfirmed(
                        self.order_of_hold(hold.hold_id).await?,
                    )),
                    _ => Err(DbError::Sqlx(e)),
                }
            }
            Err(e) => Err(e),
            Ok((outcome, seats, order_id, count)) => Ok(match outcome.as_str() {
                "created" => ConfirmOutcome::Created(order),
                "confirmed" => ConfirmOutcome::AlreadyConfirmed(order_id),
                "sale-ended" => ConfirmOutcome::SaleEnded,
                "admission-ended" => ConfirmOutcome::AdmissionEnded,
                "limit" => ConfirmOutcome::OverLimit {
                    current: count.unwrap_or(0).max(0) as u32,
                },
                "held" => ConfirmOutcome::SeatsTaken(seats.unwrap_or_default()),
                "key-in-use" => ConfirmOutcome::KeyInUse,
                other => ConfirmOutcome::NotHeld(other.to_owned()),
            }),
        }
    }

    /// The seats of `seats` the event's inventory no longer has.
    async fn missing_seats(&self, event: &str, seats: &[String]) -> Result<Vec<String>, DbError> {
        self.bounded(
            sqlx::query_scalar(
                "SELECT s FROM unnest($2::text[]) AS s \
                 WHERE NOT EXISTS (SELECT 1 FROM seats WHERE event_id = $1 AND seat_id = s) ORDER BY s",
            )
            .bind(event)
            .bind(seats)
            .fetch_all(&self.writer),
        )
        .await
    }

    async fn sold_among(&self, event: &str, seats: &[String]) -> Result<Vec<String>, DbError> {
        self.bounded(
            sqlx::query_scalar(
                "SELECT seat_id FROM order_lines WHERE event_id = $1 AND live AND seat_id = ANY($2) \
                 ORDER BY seat_id",
            )
            .bind(event)
            .bind(seats)
            .fetch_all(&self.writer),
        )
        .await
    }

    async fn order_of_hold(&self, hold: Uuid) -> Result<Option<Uuid>, DbError> {
        self.bounded(
            sqlx::query_scalar("SELECT order_id FROM orders WHERE hold_id = $1")
                .bind(hold)
                .fetch_optional(&self.writer),
        )
        .await
    }

    /// An order by id. Tries the reader first (lag-tolerant) and falls back to the writer so a
    /// just-confirmed order is always found.
    pub async fn get_order(&self, id: Uuid) -> Result<Option<Order>, DbError> {
        if self.has_reader
            && let Some(o) = self.get_order_from(&self.reader, id).await?
        {
            return Ok(Some(o));
        }
        self.get_order_from(&self.writer, id).await
    }

    async fn get_order_from(&self, pool: &PgPool, id: Uuid) -> Result<Option<Order>, DbError> {
        let row = self
            .bounded(
                sqlx::query(
                    "SELECT o.order_id, o.event_id, o.hold_id, o.user_id, o.status, o.created_at, \
                            array_agg(l.seat_id ORDER BY l.seat_id) AS seats \
                     FROM orders o JOIN order_lines l USING (order_id) WHERE o.order_id = $1 \
                     GROUP BY o.order_id",
                )
                .bind(id)
                .fetch_optional(pool),
            )
            .await?;
        row.map(|r| -> Result<Order, sqlx::Error> {
            Ok(Order {
                order_id: r.try_get("order_id")?,
                event_id: r.try_get("event_id")?,
                hold_id: r.try_get("hold_id")?,
                user_id: r.try_get("user_id")?,
                seats: r.try_get("seats")?,
                status: r.try_get("status")?,
                created_at: r.try_get::<DateTime<Utc>, _>("created_at")?,
            })
        })
        .transpose()
        .map_err(DbError::from)
    }
}

/// The order a confirm of `hold` writes (PostgreSQL keeps microseconds; the time is truncated
/// first so the stored answer equals the live one).
fn new_order(hold: &Hold, user: &str) -> Order {
    let now = Utc::now();
    let created_at = DateTime::<Utc>::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let mut seats = hold.seats.clone();
    seats.sort();
    Order {
        order_id: Uuid::now_v7(),
        event_id: hold.event_id.clone(),
        hold_id: hold.hold_id,
        user_id: user.to_owned(),
        seats,
        status: "confirmed".into(),
        created_at,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn claim(user: &str, seat: &str) -> (PendingClaim, oneshot::Receiver<ClaimResult>) {
        let (reply, rx) = oneshot::channel();
        let hold = Hold {
            hold_id: Uuid::new_v4(),
            event_id: "e".into(),
            user_id: user.into(),
            seats: vec![seat.into()],
            expires_at: Utc::now(),
        };
        (PendingClaim { hold, cap: 4, reply }, rx)
    }

    #[test]
    fn abandoned_claims_at_the_front_do_not_hide_the_live_ones_behind_them() {
        let queue = ClaimQueue {
            state: Mutex::new(ClaimQueueState::default()),
            max_running: 1,
            max_batch: 4,
            hasher: RandomState::new(),
            stats: Mutex::new(ClaimStats::default()),
        };
        let mut q = queue.lock();
        // An outage's leftovers: 100 claims whose requests gave up (their receivers dropped),
        // more than the scan bound (4 x 4), then two live ones.
        for k in 0..100 {
            let (p, rx) = claim(&format!("gone-{k}"), &format!("s{k}"));
            drop(rx);
            q.pending.push_back(p);
        }
        let mut live = Vec::new();
        for k in 0..2 {
            let (p, rx) = claim(&format!("live-{k}"), &format!("t{k}"));
            live.push(rx);
            q.pending.push_back(p);
        }
        let batch = queue.next_batch(&mut q);
        let users: Vec<&str> = batch.iter().map(|p| p.hold.user_id.as_str()).collect();
        assert_eq!(users, ["live-0", "live-1"]);
        assert!(q.pending.is_empty());
        assert!(queue.next_batch(&mut q).is_empty());
    }
}
