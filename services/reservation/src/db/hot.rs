//! Connections of the hot paths — confirms and hold claims — kept out of sqlx's pool.
//!
//! sqlx 0.8 tests every connection given back to its pool with a ping (a Sync message and a wait
//! for ReadyForQuery) and has no option to skip it: one more round trip, and one more wake-up of
//! a PostgreSQL backend, per checkout. Each batch of confirms' reads, of confirms and of claims
//! checks a connection out once, so those take theirs from this set, which keeps a connection
//! that answered as it is.
//!
//! Every connection of the set comes from the writer pool (so it passed the pool's writer check
//! and carries its options) and is then detached from it. One whose statement timed out or broke
//! the connection is closed instead of kept; one idle for a while is pinged before use, as the
//! pool does; one older than the pool's lifetime is closed (Aurora moves its endpoints' DNS on
//! failover). At most `size` exist at once.
//!
//! A keeper ([`HotSet::tend`], run before the replica reports ready and then every quarter of the
//! ping period) keeps the set full and warm while it is quiet, so the first buyers of a rush —
//! on replicas the operator pre-scaled minutes before — pay neither a connection's start-up
//! (authentication, a new backend) nor a backend's first run of each hot statement (parsing,
//! planning, compiling the PL/pgSQL functions) nor a ping: it opens and warms connections until
//! `size` exist, pings those idle for half the ping period (a dead one is dropped and replaced),
//! and replaces those near the end of their lifetime. It takes a permit only when one is free (a
//! busy set needs none of this) and holds it for one ping or one new connection at a time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::DbError;

/// Runs each hot statement once on a connection new to the set, doing nothing (see [`HotSet::tend`]).
pub(super) type Warm =
    for<'c> fn(&'c mut PgConnection) -> Pin<Box<dyn Future<Output = Result<(), sqlx::Error>> + Send + 'c>>;

/// The keeper replaces an idle connection this long before its lifetime ends.
const RENEW_BEFORE_END: Duration = Duration::from_secs(30);

pub(super) struct HotSet {
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    size: u32,
    /// Connections of the set that exist: idle or checked out.
    open: AtomicU32,
    max_lifetime: Duration,
    ping_after: Duration,
}

struct Idle {
    conn: PgConnection,
    born: Instant,
    used: Instant,
}

/// A connection checked out of the set. Dropped between statements (its last one answered, see
/// [`Hot::answered`]), it goes back to the set as it is; dropped in the middle of one (a timeout,
/// a cancelled request, a broken connection), it is closed, since its socket may still carry an
/// answer nobody reads.
pub(super) struct Hot {
    conn: Option<PgConnection>,
    born: Instant,
    set: Arc<HotSet>,
    /// Between statements: no statement was started since the last one answered.
    between: bool,
    _permit: OwnedSemaphorePermit,
}

impl HotSet {
    pub(super) fn new(size: u32, max_lifetime: Duration, ping_after: Duration) -> Arc<Self> {
        let size = size.max(1);
        Arc::new(Self {
            idle: Mutex::new(Vec::with_capacity(size as usize)),
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
            open: AtomicU32::new(0),
            max_lifetime,
            ping_after,
        })
    }

    /// (size, open, idle), for the pool gauges.
    pub(super) fn usage(&self) -> (u32, u32, u32) {
        let idle = self.lock().len() as u32;
        (self.size, self.open.load(Ordering::Relaxed), idle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection within `timeout`: the most recently used idle one of the set, else a new one
    /// from `pool`.
    pub(super) async fn checkout(self: &Arc<Self>, pool: &PgPool, timeout: Duration) -> Result<Hot, DbError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(DbError::Dropped),
            Err(_) => return Err(DbError::Timeout(timeout)),
        };
        loop {
            let idle = self.lock().pop();
            let Some(mut idle) = idle else { break };
            if idle.born.elapsed() >= self.max_lifetime {
                self.close(idle.conn);
                continue;
            }
            if idle.used.elapsed() >= self.ping_after {
                match tokio::time::timeout_at(deadline, idle.conn.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => {
                        // Dead (a restart or failover while the set was quiet): try the next.
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(_) => {
                        self.open.fetch_sub(1, Ordering::Relaxed);
                        return Err(DbError::Timeout(timeout));
                    }
                }
            }
            return Ok(Hot {
                conn: Some(idle.conn),
                born: idle.born,
                set: self.clone(),
                between: true,
                _permit: permit,
            });
        }
        let pooled = match tokio::time::timeout_at(deadline, pool.acquire()).await {
            Ok(r) => r?,
            Err(_) => return Err(DbError::Timeout(timeout)),
        };
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Hot {
            conn: Some(pooled.detach()),
            born: Instant::now(),
            set: self.clone(),
            between: true,
            _permit: permit,
        })
    }

    /// One pass of the keeper (see the module's documentation): renews and pings idle
    /// connections, then opens and warms connections with `warm` until `size` exist. Returns how
    /// many it opened; an error is the first connection it could not open or warm (the next pass
    /// tries again).
    pub(super) async fn tend(
        self: &Arc<Self>,
        pool: &PgPool,
        timeout: Duration,
        warm: Warm,
    ) -> Result<u32, DbError> {
        let ping_every = self.ping_after / 2;
        let renew_at = self.max_lifetime.saturating_sub(RENEW_BEFORE_END);
        // Each idle connection at most once per pass.
        for _ in 0..self.size {
            let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
                return Ok(0);
            };
            let due = {
                let mut idle = self.lock();
                let due = idle
                    .iter()
                    .position(|c| c.born.elapsed() >= renew_at || c.used.elapsed() >= ping_every);
                due.map(|i| idle.remove(i))
            };
            let Some(mut c) = due else { break };
            if c.born.elapsed() >= renew_at {
                self.close(c.conn);
                continue;
            }
            match tokio::time::timeout(timeout, c.conn.ping()).await {
                Ok(Ok(())) => {
                    // Back at the bottom of the stack: checkouts take the most recently used.
                    c.used = Instant::now();
                    self.lock().insert(0, c);
                }
                // Dead (a restart or failover while the set was quiet) or not answering: dropped,
                // and replaced below.
                _ => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        let mut opened = 0;
        loop {
            let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let size = self.size;
            if self
                .open
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                    (o < size).then_some(o + 1)
                })
                .is_err()
            {
                break;
            }
            let fresh = async {
                let mut conn = pool.acquire().await?.detach();
                warm(&mut conn).await?;
                Ok::<_, sqlx::Error>(conn)
            };
            match tokio::time::timeout(timeout, fresh).await {
                Ok(Ok(conn)) => {
                    let now = Instant::now();
                    self.lock().insert(
                        0,
                        Idle {
                            conn,
                            born: now,
                            used: now,
                        },
                    );
                    opened += 1;
                }
                Ok(Err(e)) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return Err(e.into());
                }
                Err(_) => {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                    return Err(DbError::Timeout(timeout));
                }
            }
        }
        Ok(opened)
    }

    /// Closes `conn` politely in the background (Terminate, then the socket); outside a runtime
    /// (one shutting down) the socket just closes.
    fn close(&self, conn: PgConnection) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            });
        }
    }
}

impl Hot {
    /// The connection, to run one statement on; call [`Hot::answered`] once it answered.
    pub(super) fn conn(&mut self) -> Result<&mut PgConnection, DbError> {
        self.between = false;
        self.conn.as_mut().ok_or(DbError::Dropped)
    }

    /// The statement run on [`Hot::conn`] answered (an error PostgreSQL reported leaves the
    /// connection usable too): the connection is between statements again.
    pub(super) fn answered(&mut self) {
        self.between = true;
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.between {
            // Dropped, the socket closes at once.
            drop(conn);
            self.set.open.fetch_sub(1, Ordering::Relaxed);
        } else if self.born.elapsed() >= self.set.max_lifetime {
            self.set.close(conn);
        } else {
            self.set.lock().push(Idle {
                conn,
                born: self.born,
                used: Instant::now(),
            });
        }
        // The permit goes back after this, once the connection is idle again.
    }
}
