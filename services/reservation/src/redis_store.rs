//! Seat locks and hold records in Redis. A hold is one Lua script over every requested seat key, so
//! it takes all seats or none; locks carry the hold TTL (`PX`). Every call is bounded by a timeout:
//! a slow or absent Redis becomes an error the handler turns into 503, never a hang.

use std::time::Duration;

use redis::{AsyncCommands, Script};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::{RedisArgs, RedisConn};

use crate::domain::{HoldOutcome, SOLD_MARKER};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected reply from the hold script")]
    BadReply,
    #[error(transparent)]
    Config(#[from] tiketi_shared::redis::ConfigError),
}

/// Reply codes of [`HOLD_SCRIPT`].
const HOLD_OK: i64 = 1;
const HOLD_TAKEN: i64 = 0;
const HOLD_OVER_CAP: i64 = 2;
const HOLD_NOT_ADMITTED: i64 = 3;

/// KEYS: hold record, user's held-seat set, the event's held-seat index, the event's active set,
/// its admitted-total counter, then one lock key per seat. ARGV: hold id, ttl ms, now ms,
/// per-user cap, hold record JSON, user, then the seat ids (same order). Both seat sets are
/// sorted sets scored by expiry, so lapsed holds drop out by themselves.
///
/// Admission: once the queue has admitted anyone for the event (admitted-total exists), the user
/// must still be in the active set with an unexpired score — leaving the line (`DELETE …/me`) or
/// an expired admission ends the right to hold even though the token is still signed. If Redis
/// lost the queue's records (no counter), the signed, time-bound token alone decides.
///
/// The script may run twice for one hold: the cluster client resends a command whose connection
/// broke before the reply came back, though Redis may already have run it. A lock that already
/// holds this hold's id is this hold's own, not a taken seat: if every lock is, the first run took
/// them all and the answer is the same `Held`; if some lapsed meanwhile, it takes them again and
/// the seats already in the user's set count once towards the cap.
pub const HOLD_SCRIPT: &str = r#"
local n = #KEYS - 5
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[5]) == 1 then
  local until_ms = redis.call('ZSCORE', KEYS[4], ARGV[6])
  if not until_ms or tonumber(until_ms) < now then
    return {3, {}}
  end
end
local taken = {}
local mine = 0
for i = 1, n do
  local v = redis.call('GET', KEYS[i + 5])
  if v == ARGV[1] then
    mine = mine + 1
  elseif v then
    taken[#taken + 1] = ARGV[6 + i]
  end
end
if #taken > 0 then
  return {0, taken}
end
if mine == n then
  return {1, {}}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local current = redis.call('ZCARD', KEYS[2])
if mine > 0 then
  for i = 1, n do
    if redis.call('ZSCORE', KEYS[2], ARGV[6 + i]) then
      current = current - 1
    end
  end
end
if current + n > cap then
  return {2, {tostring(current)}}
end
for i = 1, n do
  redis.call('SET', KEYS[i + 5], ARGV[1], 'PX', ttl)
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[6 + i])
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[6 + i])
end
redis.call('SET', KEYS[1], ARGV[5], 'PX', ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, {}}
"#;

/// KEYS: hold record, user's held-seat set, held-seat index, then the seat lock keys. ARGV: hold
/// id, then seat ids. Deletes only locks still owned by this hold (a lapsed lock may already be
/// someone else's).
const RELEASE_SCRIPT: &str = r#"
local n = #KEYS - 3
local freed = 0
for i = 1, n do
  if redis.call('GET', KEYS[i + 3]) == ARGV[1] then
    redis.call('DEL', KEYS[i + 3])
    redis.call('ZREM', KEYS[3], ARGV[1 + i])
    freed = freed + 1
  end
  redis.call('ZREM', KEYS[2], ARGV[1 + i])
end
redis.call('DEL', KEYS[1])
return freed
"#;

/// KEYS: hold record, user's held-seat set, held-seat index, then the seat lock keys. ARGV: hold
/// id, then seat ids. After a confirmed order: seats become sold markers without TTL, the hold is
/// gone. A lock another hold owns is left alone (PostgreSQL has the seat claimed for this order,
/// so that hold is being undone and its lock lapses with its TTL): a sold marker never
/// overwrites another hold's lock.
const SOLD_SCRIPT: &str = r#"
local n = #KEYS - 3
local marked = 0
for i = 1, n do
  local v = redis.call('GET', KEYS[i + 3])
  if (not v) or v == ARGV[1] or v == 'sold' then
    redis.call('SET', KEYS[i + 3], 'sold')
    redis.call('ZREM', KEYS[3], ARGV[i + 1])
    marked = marked + 1
  end
  redis.call('ZREM', KEYS[2], ARGV[i + 1])
end
redis.call('DEL', KEYS[1])
return marked
"#;

#[derive(Clone)]
pub struct HoldStore {
    conn: RedisConn,
    timeout: Duration,
    hold: Script,
    release: Script,
    sold: Script,
}

impl HoldStore {
    /// Builds a lazily connecting, self-reconnecting client: creating it never blocks on Redis.
    pub fn new(redis: &RedisArgs, timeout: Duration) -> Result<Self, RedisError> {
        let conn = RedisConn::connect_lazy(redis, timeout)?;
        Ok(Self {
            conn,
            timeout,
            hold: Script::new(HOLD_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            sold: Script::new(SOLD_SCRIPT),
        })
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut c = self.conn.clone();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut c)).await?;
        Ok(())
    }

    /// Runs the all-or-nothing hold script.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        &self,
        keys: &EventKeys,
        hold_id: &str,
        user: &str,
        seats: &[String],
        ttl: Duration,
        now_ms: i64,
        cap: u32,
        record_json: &str,
    ) -> Result<HoldOutcome, RedisError> {
        let mut inv = self.hold.prepare_invoke();
        inv.key(keys.hold(hold_id))
            .key(keys.user_holds(user))
            .key(keys.held_seats())
            .key(keys.active())
            .key(keys.admitted_total());
        for s in seats {
            inv.key(keys.seat_hold(s));
        }
        inv.arg(hold_id)
            .arg(ttl.as_millis() as u64)
            .arg(now_ms)
            .arg(cap)
            .arg(record_json)
            .arg(user);
        for s in seats {
            inv.arg(s.as_str());
        }
        let mut c = self.conn.clone();
        let (code, list): (i64, Vec<String>) = self.bounded(inv.invoke_async(&mut c)).await?;
        match code {
            HOLD_OK => Ok(HoldOutcome::Held),
            HOLD_NOT_ADMITTED => Ok(HoldOutcome::NotAdmitted),
            HOLD_TAKEN => Ok(HoldOutcome::Taken(list)),
            HOLD_OVER_CAP => {
                let current = list
                    .first()
                    .and_then(|s| s.parse().ok())
                    .ok_or(RedisError::BadReply)?;
                Ok(HoldOutcome::OverCap { current })
            }
            _ => Err(RedisError::BadReply),
        }
    }

    /// Frees the seats this hold still owns and drops its record. Returns how many locks it freed.
    pub async fn release(
        &self,
        keys: &EventKeys,
        hold_id: &str,
        user: &str,
        seats: &[String],
    ) -> Result<u64, RedisError> {
        let mut inv = self.release.prepare_invoke();
        inv.key(keys.hold(hold_id))
            .key(keys.user_holds(user))
            .key(keys.held_seats());
        for s in seats {
            inv.key(keys.seat_hold(s));
        }
        inv.arg(hold_id);
        for s in seats {
            inv.arg(s.as_str());
        }
        let mut c = self.conn.clone();
        self.bounded(inv.invoke_async(&mut c)).await
    }

    /// Marks seats sold (no TTL) and removes the hold after its order committed.
    pub async fn mark_sold(
        &self,
        keys: &EventKeys,
        hold_id: &str,
        user: &str,
        seats: &[String],
    ) -> Result<(), RedisError> {
        let mut inv = self.sold.prepare_invoke();
        inv.key(keys.hold(hold_id))
            .key(keys.user_holds(user))
            .key(keys.held_seats());
        for s in seats {
            inv.key(keys.seat_hold(s));
        }
        inv.arg(hold_id);
        for s in seats {
            inv.arg(s.as_str());
        }
        let mut c = self.conn.clone();
        let _: i64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(())
    }

    /// Puts back the locks of live holds PostgreSQL knows and Redis forgot (after an eviction or
    /// a flush), so Redis refuses their seats early again. `SET NX`: a lock present is kept.
    pub async fn restore_locks(
        &self,
        keys: &EventKeys,
        locks: &[(String, String, i64)],
        now_ms: i64,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for (seat, owner, until_ms) in locks {
            let ttl = until_ms - now_ms;
            if ttl > 0 {
                pipe.cmd("SET")
                    .arg(keys.seat_hold(seat))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
                pipe.zadd(keys.held_seats(), seat, until_ms).ignore();
            }
        }
        let mut c = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }

    /// Sold markers for seats PostgreSQL knows are sold but Redis forgot (after a flush).
    pub async fn restore_sold_markers(&self, keys: &EventKeys, seats: &[String]) -> Result<(), RedisError> {
        if seats.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for s in seats {
            pipe.set(keys.seat_hold(s), SOLD_MARKER).ignore();
        }
        pipe.zrem(keys.held_seats(), seats).ignore();
        let mut c = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }

    /// Lock values of the given seats (`None` = free), in order. Batched to bound reply sizes.
    pub async fn seat_values(
        &self,
        keys: &EventKeys,
        seats: &[String],
    ) -> Result<Vec<Option<String>>, RedisError> {
        let mut out = Vec::with_capacity(seats.len());
        for chunk in seats.chunks(2000) {
            let ks: Vec<String> = chunk.iter().map(|s| keys.seat_hold(s)).collect();
            let mut c = self.conn.clone();
            let vals: Vec<Option<String>> = self.bounded(c.mget(ks)).await?;
            out.extend(vals);
        }
        Ok(out)
    }

    /// Seats under a live hold, from the held-seat index (lapsed entries pruned first).
    pub async fn held_count(&self, keys: &EventKeys, now_ms: i64) -> Result<u64, RedisError> {
        let mut pipe = redis::pipe();
        pipe.zrembyscore(keys.held_seats(), "-inf", now_ms).ignore();
        pipe.zcount(keys.held_seats(), now_ms + 1, "+inf");
        let mut c = self.conn.clone();
        let (n,): (u64,) = self.bounded(pipe.query_async(&mut c)).await?;
        Ok(n)
    }

    /// Publishes availability counts where the operator and the queue read them, and sets or
    /// clears the sold-out flag.
    pub async fn publish_counts(
        &self,
        keys: &EventKeys,
        counts: &crate::domain::Counts,
        now_ms: i64,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.hset_multiple(
            keys.counts(),
            &[
                ("sold", counts.sold.to_string()),
                ("held", counts.held.to_string()),
                ("available", counts.available.to_string()),
                ("total", counts.total.to_string()),
                ("updatedAt", now_ms.to_string()),
            ],
        )
        .ignore();
        if counts.sold_out() {
            pipe.set(keys.sold_out(), "1").ignore();
        } else {
            pipe.del(keys.sold_out()).ignore();
        }
        let mut c = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut c)).await
    }
}
