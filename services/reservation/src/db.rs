//! PostgreSQL: migrations, inventory, hold mirror, orders and idempotency records. PostgreSQL is
//! the truth: the partial unique index on live (event, seat) bookings decides every race. Every
//! call is bounded by a timeout; connections that meet a read-only server (an Aurora failover
//! demoted our writer) or a broken socket are closed instead of returned to the pool, so the pool
//! reconnects to the new writer by itself.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};
use tiketi_shared::config::{EventConfig, SeatSpec};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::domain;
use crate::model::{Hold, Order};

mod group;
mod hot;
pub use group::BatchStats;
use hot::{Hot, HotSet};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

const READ_ONLY_TRANSACTION: &str = "25006";
/// The statement timeout ended a statement.
const QUERY_CANCELED: &str = "57014";

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
/// A failed confirm batch whose members are decided again one by one: what [`decided_alone`]
/// covers, and a statement its bound ended (on either side).
fn retry_alone(e: &DbError) -> bool {
    match e {
        DbError::Timeout(_) => true,
        DbError::Sqlx(sqlx::Error::Database(e)) => {
            let code = e.code();
            decided_alone(code.as_deref()) || code.as_deref() == Some(QUERY_CANCELED)
        }
        _ => false,
    }
}

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

/// What a confirm reads first.
pub struct ConfirmContext {
    /// The idempotency record of (user, key), if any.
    pub stored: Option<StoredResponse>,
    /// The hold, if it exists.
    pub hold: Option<HoldRow>,
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
    claims: Arc<group::Group<PendingClaim>>,
    contexts: Arc<group::Group<PendingContext>>,
    confirms: Arc<group::Group<PendingConfirm>>,
    /// Confirms' and claim batches' connections (see [`hot`]).
    hot: Arc<HotSet>,
}

/// A hold's claim waiting in the claims' queue ([`group`]): batches of claims are decided by
/// `tiketi_claim_holds` (up to `TIKETI_CLAIM_BATCH`, no two sharing a user or a seat of an
/// event), a batch of one by `tiketi_claim_hold` (cheaper alone). A second claim statement in
/// flight made batches half as big and cost PostgreSQL more CPU per hold than it saved (measured
/// with e2e/bench/reservation.sh), so one runs at a time unless it stalls (see [`group::STALL`]).
struct PendingClaim {
    hold: Hold,
    cap: u32,
    reply: oneshot::Sender<ClaimResult>,
}

impl group::Member for PendingClaim {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn keys(&self, hasher: &RandomState) -> Vec<u64> {
        let h = &self.hold;
        buyer_and_seats(hasher, &h.event_id, &h.user_id, &h.seats)
    }
}

/// A confirm's first read waiting in the contexts' queue: a batch is read by
/// `tiketi_confirm_contexts`, a batch of one by [`CONTEXT_SQL`].
struct PendingContext {
    user: String,
    key: String,
    hold: Uuid,
    reply: oneshot::Sender<Result<ConfirmContext, DbError>>,
}

impl group::Member for PendingContext {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn keys(&self, _: &RandomState) -> Vec<u64> {
        Vec::new()
    }
}

/// Most confirms one statement decides: each confirm is a subtransaction, and a transaction with
/// more than 64 of them overflows PostgreSQL's per-backend cache of them (every other backend's
/// snapshot then looks them up in `pg_subtrans`).
const CONFIRM_BATCH: usize = 32;

/// A confirm waiting in the confirms' queue: a batch is decided by `tiketi_confirm_many`, a batch
/// of one by `tiketi_confirm` ([`CONFIRM_SQL`]), no two in a batch sharing a buyer or a seat.
struct PendingConfirm {
    hold: Uuid,
    event: String,
    seats: Vec<String>,
    user: String,
    key: String,
    fingerprint: String,
    body: serde_json::Value,
    order: Uuid,
    created: DateTime<Utc>,
    cap: i32,
    sale_ends: Option<DateTime<Utc>>,
    admission_ttl: Option<i32>,
    reply: oneshot::Sender<Result<ConfirmRow, DbError>>,
}

impl group::Member for PendingConfirm {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
    fn keys(&self, hasher: &RandomState) -> Vec<u64> {
        buyer_and_seats(hasher, &self.event, &self.user, &self.seats)
    }
}

/// The batch keys of a request over `seats` of `event` for `user`: no two requests of one buyer,
/// or over one seat, of an event share a batch.
fn buyer_and_seats(hasher: &RandomState, event: &str, user: &str, seats: &[String]) -> Vec<u64> {
    std::iter::once(hasher.hash_one(("u", event, user)))
        .chain(seats.iter().map(|s| hasher.hash_one(("s", event, s.as_str()))))
        .collect()
}

/// Hands every member of a failed batch the statement's error (a batch of one gets it as it is).
fn fail_all<T>(replies: Vec<oneshot::Sender<Result<T, DbError>>>, e: DbError) {
    if replies.len() == 1 {
        if let Some(reply) = replies.into_iter().next() {
            let _ = reply.send(Err(e));
        }
        return;
    }
    let e = match e {
        DbError::Sqlx(e) => DbError::Batch(Arc::new(e)),
        other => other,
    };
    for reply in replies {
        let _ = reply.send(Err(e.duplicate()));
    }
}

/// A confirm's context from a row of [`CONTEXT_SQL`] or `tiketi_confirm_contexts`.
fn context_of(r: &sqlx::postgres::PgRow) -> Result<ConfirmContext, sqlx::Error> {
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
    Ok(ConfirmContext { stored, hold })
}

/// Hands each member of a batch its answer from the statement's rows, by the index the rows
/// carry (1-based); a member the rows do not answer gets an error.
fn answer_by_index<T>(replies: Vec<oneshot::Sender<Result<T, DbError>>>, rows: Vec<(i32, T)>, what: &str) {
    let mut answers: Vec<Option<T>> = replies.iter().map(|_| None).collect();
    for (i, v) in rows {
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| answers.get_mut(i)) {
            *slot = Some(v);
        }
    }
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer.ok_or_else(|| {
            DbError::Sqlx(sqlx::Error::Protocol(format!(
                "the batch statement did not answer a {what}"
            )))
        }));
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
const CONTEXTS_SQL: &str = "SELECT * FROM tiketi_confirm_contexts($1, $2, $3)";
const CONFIRM_MANY_SQL: &str = "SELECT * FROM tiketi_confirm_many($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
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
        sqlx::query(CONTEXTS_SQL)
            .bind(&texts)
            .bind(&texts)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?;
        sqlx::query(CONFIRM_MANY_SQL)
            .bind(&ids)
            .bind(&texts)
            .bind(&texts)
            .bind(&texts)
            .bind(Vec::<serde_json::Value>::new())
            .bind(&ids)
            .bind(Vec::<DateTime<Utc>>::new())
            .bind(&ints)
            .bind(Vec::<Option<DateTime<Utc>>>::new())
            .bind(Vec::<Option<i32>>::new())
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
        let beside = (max_connections as usize).div_ceil(8);
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
            // Beside a stalled statement (see `group::STALL`) more may start: two of a kind for
            // the default 16 connections; the rest of the pool stays for everything else.
            claims: Arc::new(group::Group::new(beside, claim_batch)),
            contexts: Arc::new(group::Group::new(beside, claim_batch)),
            confirms: Arc::new(group::Group::new(beside, claim_batch.min(CONFIRM_BATCH))),
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
    /// concurrent holds share one statement and one commit (the claims' queue: see [`group`]);
    /// each still gets its own answer.
    pub async fn claim_hold(&self, hold: &Hold, cap: u32) -> ClaimResult {
        self.ask(
            &self.claims,
            |reply| PendingClaim {
                hold: hold.clone(),
                cap,
                reply,
            },
            |db, batch| async move { db.claim_batch(batch).await },
        )
        .await?
    }

    /// Queues the request `make` builds around its reply channel in `group` (a drainer runs
    /// `decide` over its batches) and waits for the answer. Waiting in the queue counts too: past
    /// twice the call bound the request gives up, and one not yet taken off the queue is then
    /// dropped undecided.
    async fn ask<P, T, F, Fut>(
        &self,
        group: &Arc<group::Group<P>>,
        make: impl FnOnce(oneshot::Sender<T>) -> P,
        decide: F,
    ) -> Result<T, DbError>
    where
        P: group::Member,
        F: Fn(Db, Vec<P>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let db = self.clone();
        group.submit(make(reply), move |batch| decide(db.clone(), batch));
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(_)) => Err(DbError::Dropped),
            Err(_) => Err(DbError::Timeout(self.timeout * 2)),
        }
    }

    /// How claims were batched so far (`tiketi_claim_holds`, or `tiketi_claim_hold` for one).
    pub fn claim_stats(&self) -> BatchStats {
        self.claims.stats()
    }

    /// How confirms were batched so far (`tiketi_confirm_many`, or `tiketi_confirm` for one).
    pub fn confirm_stats(&self) -> BatchStats {
        self.confirms.stats()
    }

    async fn claim_batch(&self, batch: Vec<PendingClaim>) {
        if batch.len() == 1 {
            // Alone, the one-hold statement costs PostgreSQL less than a batch of one.
            if let Some(p) = batch.into_iter().next() {
                let result = self.claim_one(&p.hold, p.cap).await;
                if result.is_ok() {
                    self.claims.count(1);
                }
                self.answer(p, result);
            }
            return;
        }
        match self.claim_many(&batch).await {
            Ok(mut outcomes) => {
                self.claims.count(batch.len() as u64);
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
                // Each answered as soon as it is decided (see `confirm_batch`).
                let singles = batch.into_iter().map(|p| async move {
                    if p.reply.is_closed() {
                        return;
                    }
                    let r = self.claim_one(&p.hold, p.cap).await;
                    self.answer(p, r);
                });
                futures::future::join_all(singles).await;
            }
            Err(e) => fail_all(batch.into_iter().map(|p| p.reply).collect(), e),
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

    /// The idempotency record for (user, key) and the hold, in one round trip shared with the
    /// confirms reading theirs at the same moment (the contexts' queue, see [`group`]).
    pub async fn confirm_context(
        &self,
        user: &str,
        key: &str,
        hold: Uuid,
    ) -> Result<ConfirmContext, DbError> {
        self.ask(
            &self.contexts,
            |reply| PendingContext {
                user: user.to_owned(),
                key: key.to_owned(),
                hold,
                reply,
            },
            |db, batch| async move { db.context_batch(batch).await },
        )
        .await?
    }

    async fn context_batch(&self, batch: Vec<PendingContext>) {
        let n = batch.len() as u64;
        let result = self.read_contexts(&batch).await;
        let replies: Vec<_> = batch.into_iter().map(|p| p.reply).collect();
        match result {
            Ok(rows) => {
                self.contexts.count(n);
                answer_by_index(replies, rows, "confirm's read");
            }
            Err(e) => fail_all(replies, e),
        }
    }

    /// One statement reading the batch's contexts: [`CONTEXT_SQL`] for one, else
    /// `tiketi_confirm_contexts`.
    async fn read_contexts(&self, batch: &[PendingContext]) -> Result<Vec<(i32, ConfirmContext)>, DbError> {
        let mut conn = self.hot.checkout(&self.writer, self.timeout).await?;
        if let [p] = batch {
            let query = sqlx::query(CONTEXT_SQL).bind(&p.user).bind(&p.key).bind(p.hold);
            let result = tokio::time::timeout(self.timeout, query.fetch_one(conn.conn()?)).await;
            let r = self.settle(&mut conn, result)?;
            return Ok(vec![(1, context_of(&r)?)]);
        }
        let users: Vec<&str> = batch.iter().map(|p| p.user.as_str()).collect();
        let keys: Vec<&str> = batch.iter().map(|p| p.key.as_str()).collect();
        let holds: Vec<Uuid> = batch.iter().map(|p| p.hold).collect();
        let query = sqlx::query(CONTEXTS_SQL).bind(&users).bind(&keys).bind(&holds);
        let result = tokio::time::timeout(self.timeout, query.fetch_all(conn.conn()?)).await;
        let rows = self.settle(&mut conn, result)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i32, _>("r_i")?, context_of(r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(DbError::from)
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

    /// The confirm (`tiketi_confirm`): lock the hold, check the sale end and the user's limit,
    /// claim its seats for good unless another live hold has them, claim the idempotency key with
    /// its answer, write the order and its lines — all or nothing. The partial unique index on
    /// live order lines stays the last word on a seat. Confirms of concurrent requests share one
    /// statement and one commit (`tiketi_confirm_many`, the confirms' queue: see [`group`]); each
    /// gets its own answer, and its order exists once the answer is `Created`.
    pub async fn confirm(
        &self,
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
        let order = new_order(hold, user);
        let (outcome, seats, order_id, count) = self
            .ask(
                &self.confirms,
                |reply| PendingConfirm {
                    hold: hold.hold_id,
                    event: hold.event_id.clone(),
                    seats: hold.seats.clone(),
                    user: user.to_owned(),
                    key: key.to_owned(),
                    fingerprint: fingerprint.to_owned(),
                    body: serde_json::to_value(&order).unwrap_or(serde_json::Value::Null),
                    order: order.order_id,
                    created: order.created_at,
                    cap: i32::try_from(cap).unwrap_or(i32::MAX),
                    sale_ends,
                    admission_ttl: admission_ttl_seconds.map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
                    reply,
                },
                |db, batch| async move { db.confirm_batch(batch).await },
            )
            .await??;
        Ok(match outcome.as_str() {
            "created" => ConfirmOutcome::Created(order),
            "confirmed" => ConfirmOutcome::AlreadyConfirmed(order_id),
            "sale-ended" => ConfirmOutcome::SaleEnded,
            "admission-ended" => ConfirmOutcome::AdmissionEnded,
            "limit" => ConfirmOutcome::OverLimit {
                current: count.unwrap_or(0).max(0) as u32,
            },
            // Claimed by another live hold, or sold by a confirm that committed meanwhile.
            "held" | "sold" => ConfirmOutcome::SeatsTaken(seats.unwrap_or_default()),
            "seats-removed" => ConfirmOutcome::SeatsRemoved(seats.unwrap_or_default()),
            "key-in-use" => ConfirmOutcome::KeyInUse,
            other => ConfirmOutcome::NotHeld(other.to_owned()),
        })
    }

    async fn confirm_batch(&self, batch: Vec<PendingConfirm>) {
        let n = batch.len() as u64;
        let result = self.run_confirms(&batch).await;
        match result {
            Ok(rows) => {
                self.confirms.count(n);
                answer_by_index(batch.into_iter().map(|p| p.reply).collect(), rows, "confirm");
            }
            // The statement itself failed (a deadlock PostgreSQL broke, or its bound ended it
            // because one confirm waited on a row lock): each confirm is decided again on its
            // own, so one confirm's failure is not its neighbours'. Nothing of it was committed —
            // or, if the bound ended only the wait for its answer, all of it was: a confirm decided
            // again then finds its hold confirmed, and the answer stored under its key is replayed.
            Err(e) if n > 1 && retry_alone(&e) => {
                tracing::warn!(error = %e, confirms = n, "confirm batch failed; confirming one by one");
                // Each answered as soon as it is decided: one still waiting on its lock does not
                // hold back the others' answers.
                let singles = batch.into_iter().map(|p| async move {
                    if p.reply.is_closed() {
                        // Its request gave up meanwhile: nothing is decided for it (its retry,
                        // under the same key, decides).
                        return;
                    }
                    let r = self.run_confirms(std::slice::from_ref(&p)).await;
                    let _ = p.reply.send(r.and_then(|rows| {
                        rows.into_iter()
                            .next()
                            .map(|(_, row)| row)
                            .ok_or(DbError::Dropped)
                    }));
                });
                futures::future::join_all(singles).await;
            }
            Err(e) => fail_all(batch.into_iter().map(|p| p.reply).collect(), e),
        }
    }

    /// One statement deciding the batch's confirms: `tiketi_confirm` for one, else
    /// `tiketi_confirm_many`.
    async fn run_confirms(&self, batch: &[PendingConfirm]) -> Result<Vec<(i32, ConfirmRow)>, DbError> {
        let mut conn = self.hot.checkout(&self.writer, self.timeout).await?;
        if let [p] = batch {
            let statement = sqlx::query_as::<_, ConfirmRow>(CONFIRM_SQL)
                .bind(p.hold)
                .bind(&p.user)
                .bind(&p.key)
                .bind(&p.fingerprint)
                .bind(&p.body)
                .bind(p.order)
                .bind(p.created)
                .bind(p.cap)
                .bind(p.sale_ends)
                .bind(p.admission_ttl);
            let result = tokio::time::timeout(self.timeout, statement.fetch_one(conn.conn()?)).await;
            return Ok(vec![(1, self.settle(&mut conn, result)?)]);
        }
        let column = |f: fn(&PendingConfirm) -> &str| batch.iter().map(f).collect::<Vec<_>>();
        let statement = sqlx::query_as::<_, (i32, String, Option<Vec<String>>, Option<Uuid>, Option<i32>)>(
            CONFIRM_MANY_SQL,
        )
        .bind(batch.iter().map(|p| p.hold).collect::<Vec<_>>())
        .bind(column(|p| &p.user))
        .bind(column(|p| &p.key))
        .bind(column(|p| &p.fingerprint))
        .bind(batch.iter().map(|p| p.body.clone()).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.order).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.created).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.cap).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.sale_ends).collect::<Vec<_>>())
        .bind(batch.iter().map(|p| p.admission_ttl).collect::<Vec<_>>());
        let result = tokio::time::timeout(self.timeout, statement.fetch_all(conn.conn()?)).await;
        let rows = self.settle(&mut conn, result)?;
        Ok(rows
            .into_iter()
            .map(|(i, outcome, seats, order, count)| (i, (outcome, seats, order, count)))
            .collect())
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
