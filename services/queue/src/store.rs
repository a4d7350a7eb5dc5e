//! Everything the queue does in Redis, as atomic Lua scripts and pipelines. Every call has a hard
//! timeout, so an unreachable or paused Redis turns into an error the HTTP layer maps to 503 with
//! Retry-After instead of a hanging request. Scripts read the clock with Redis `TIME`, so replicas
//! with skewed clocks still agree on "before or after on-sale" and on admission expiry.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{AsyncCommands, Script};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::{RedisArgs, RedisConn};

/// Scores of users who joined after the on-sale instant start here; the shuffled pre-queue takes
/// scores 1..=P below it, so it always stands in front of later joiners whatever the timing.
pub const POST_SALE_SCORE_BASE: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
    #[error("too many requests are waiting for redis")]
    Overloaded,
    #[error(transparent)]
    Config(#[from] tiketi_shared::redis::ConfigError),
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Redis(_) => "redis",
            Self::Reply(_) => "reply",
            Self::Overloaded => "overloaded",
            Self::Config(_) => "config",
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Where a user stands, as read atomically by the join/status script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// In the FIFO queue; `rank` is 0-based.
    Waiting {
        rank: u64,
        score: u64,
    },
    /// Joined before on-sale; the order is drawn at the on-sale instant.
    PreQueue {
        size: u64,
    },
    /// Admitted until `expires_ms`.
    Admitted {
        expires_ms: i64,
    },
    /// Not in line (never joined, left, or dropped for missing heartbeats).
    Absent,
    /// Sold out; `in_line` when the user is waiting (their place is kept for seats that come
    /// back), not when they would be joining now.
    SoldOut {
        in_line: bool,
    },
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub standing: Standing,
    /// True when this call added the user (a join that was not a repeat).
    pub created: bool,
    /// Redis clock at the time of the read, unix ms.
    pub now_ms: i64,
    /// The event's admitted-so-far counter, read in the same atomic step as `rank`.
    pub admitted_total: u64,
}

/// Outcome of one admission step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitOutcome {
    /// This replica no longer holds the lease (or its fence is stale): it must stop admitting.
    NotLeader,
    /// The on-sale shuffle has not happened yet; nothing may be admitted before it.
    NotShuffled,
    Admitted {
        admitted: u64,
        active: u64,
        depth: u64,
    },
}

/// Counters an SSE tick reads per event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventCounters {
    pub admitted_total: u64,
    pub depth: u64,
    pub prequeue: u64,
    pub active: u64,
    pub sold_out: bool,
    pub now_ms: i64,
}

/// One stream's exact state read in a refresh batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFix {
    Waiting { rank: u64 },
    PreQueue,
    Admitted { expires_ms: i64 },
    Absent,
}

// === scripts ===

const NOW: &str =
    "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Join or poll for a batch of users of one event, with heartbeat refresh. Batching lets many
/// concurrent requests share one round trip and one script call under load.
/// KEYS: queue prequeue active seq heartbeats shuffle sold_out admitted_total
/// ARGV: on_sale_ms sale_ends_ms(0 = none) post_sale_base, then (user, "join"|"poll") pairs.
/// Returns 6 values per user: {state, a, b, created, now, admitted_total}.
static STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local total = tonumber(redis.call('GET', KEYS[8]) or '0')
local sold_out = redis.call('EXISTS', KEYS[7]) == 1
-- A pre-queue not yet shuffled in (the moment after the on-sale) goes in front of everyone in
-- the queue: ranks count it, so nobody is told a better place than they have.
local ahead = redis.call('ZCARD', KEYS[2])
local ends = tonumber(ARGV[2])
local closed = ends > 0 and now >= ends
local function one(user, mode)
  local a = redis.call('ZSCORE', KEYS[3], user)
  if a and tonumber(a) >= now then return {'admitted', a, 0, 0} end
  if sold_out then
    -- Sold out keeps the line: a waiting user's heartbeat still counts, so when seats come back
    -- (holds lapse, releases) admission resumes in the original order.
    if redis.call('ZSCORE', KEYS[1], user) or redis.call('ZSCORE', KEYS[2], user) then
      redis.call('ZADD', KEYS[5], now, user)
      return {'soldOut', '0', 1, 0}
    end
    return {'soldOut', '0', 0, 0}
  end
  if closed then return {'closed', '0', 0, 0} end
  local s = redis.call('ZSCORE', KEYS[1], user)
  if s then
    redis.call('ZADD', KEYS[5], now, user)
    return {'waiting', s, redis.call('ZRANK', KEYS[1], user) + ahead, 0}
  end
  if redis.call('ZSCORE', KEYS[2], user) then
    redis.call('ZADD', KEYS[5], now, user)
    return {'prequeue', '0', redis.call('ZCARD', KEYS[2]), 0}
  end
  if mode ~= 'join' then return {'absent', '0', 0, 0} end
  if a then redis.call('ZREM', KEYS[3], user) end
  local seq = redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[5], now, user)
  if now < tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[6]) == 0 then
    redis.call('ZADD', KEYS[2], seq, user)
    return {'prequeue', '0', redis.call('ZCARD', KEYS[2]), 1}
  end
  -- Never below the last in line: a lost sequence counter (deleted, evicted, a failover that
  -- kept the queue but not it) starts again at 1 and would put new joiners ahead of everyone.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] and seq <= tonumber(last[2]) - tonumber(ARGV[3]) then
    seq = tonumber(last[2]) - tonumber(ARGV[3]) + 1
    redis.call('SET', KEYS[4], string.format('%d', seq))
  end
  local score = tonumber(ARGV[3]) + seq
  redis.call('ZADD', KEYS[1], score, user)
  -- The newest sequence number is the highest score: the new member is last (O(1), no ZRANK).
  return {'waiting', tostring(score), redis.call('ZCARD', KEYS[1]) - 1 + ahead, 1}
end
local out = {}
for i = 4, #ARGV, 2 do
  local r = one(ARGV[i], ARGV[i + 1])
  out[#out + 1] = r[1]
  out[#out + 1] = r[2]
  out[#out + 1] = r[3]
  out[#out + 1] = r[4]
  out[#out + 1] = now
  out[#out + 1] = total
end
return out
"#
    ))
});

/// KEYS: queue prequeue heartbeats active. ARGV: user. Returns removed count.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('ZREM', KEYS[1], ARGV[1]) + redis.call('ZREM', KEYS[2], ARGV[1])
  + redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return n
"#,
    )
});

/// Acquire or renew the admission lease. KEYS: lease fence. ARGV: holder ttl_ms.
/// Returns the fence of the current term if `holder` holds the lease, else 0.
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  local fence = redis.call('GET', KEYS[2])
  -- The fence was lost (evicted, deleted): this holder starts a new term instead of renewing a
  -- lease nobody may admit under, which would stall admission for good.
  if not fence then return redis.call('INCR', KEYS[2]) end
  return tonumber(fence)
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return redis.call('INCR', KEYS[2])
end
return 0
"#,
    )
});

/// Heartbeats of existing members at Redis's time. KEYS: heartbeats. ARGV: users.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
local n = 0
for i = 1, #ARGV do
  n = n + redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[i])
end
return n
"#
    ))
});

/// KEYS: lease. ARGV: holder.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// One admission step. KEYS: lease fence queue active admitted_total heartbeats rate shuffle sold_out
/// ARGV: holder fence ratePerSecond maxActive ttl_ms burst_ms. The credit is the rate times the
/// time since the last step; unspent credit is kept up to `burst_ms` of the rate, or up to the
/// time since the last step when that is longer (at most 1 s): a step that comes late (a slow
/// pass over many events, a Redis call that waited) admits for the whole time that passed instead
/// of 200 ms of it, and a step after a long pause still admits at most one second's worth.
/// Returns {admitted, active, depth} or {-1} (not leader) or {-2} (not shuffled).
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then return {-1} end
if redis.call('EXISTS', KEYS[8]) == 0 then return {-2} end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
local rate = tonumber(ARGV[3])
local last = tonumber(redis.call('HGET', KEYS[7], 'last') or '0')
local credit = tonumber(redis.call('HGET', KEYS[7], 'credit') or '0')
if last > 0 and now > last then credit = credit + rate * (now - last) / 1000 end
local cap = math.max(1, rate * tonumber(ARGV[6]) / 1000)
if last > 0 and now > last then cap = math.max(cap, rate * math.min(now - last, 1000) / 1000) end
if credit > cap then credit = cap end
local active = redis.call('ZCARD', KEYS[4])
local n = math.min(math.floor(credit), tonumber(ARGV[4]) - active)
if redis.call('EXISTS', KEYS[9]) == 1 then n = 0 end
local admitted = 0
if n > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[3], n)
  local exp = now + tonumber(ARGV[5])
  for i = 1, #popped, 2 do
    redis.call('ZADD', KEYS[4], exp, popped[i])
    redis.call('ZREM', KEYS[6], popped[i])
    admitted = admitted + 1
  end
  if admitted > 0 then redis.call('INCRBY', KEYS[5], admitted) end
end
redis.call('HSET', KEYS[7], 'last', now, 'credit', tostring(credit - admitted))
return {admitted, active + admitted, redis.call('ZCARD', KEYS[3])}
"#
    ))
});

/// Drop waiting users whose last heartbeat is older than the timeout — only by the lease holder
/// of the current term (fenced like admission), and not while a replica shed heartbeats within
/// the last timeout. While the event is sold out the sweep goes on: polls still refresh
/// heartbeats (STATUS), so whoever keeps waiting for returned seats keeps their place and whoever
/// left does not hold the line up. KEYS: heartbeats queue prequeue heartbeats_shed lease fence.
/// ARGV: timeout_ms limit holder fence. Returns the number dropped, -1 when the sweep is paused,
/// -2 when the caller does not hold the lease under that fence.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
if redis.call('GET', KEYS[5]) ~= ARGV[3] or redis.call('GET', KEYS[6]) ~= ARGV[4] then return -2 end
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'LIMIT', 0, tonumber(ARGV[2]))
for _, u in ipairs(stale) do
  redis.call('ZREM', KEYS[2], u)
  redis.call('ZREM', KEYS[3], u)
  redis.call('ZREM', KEYS[1], u)
end
return #stale
"#
    ))
});

/// Move the pre-queue into the queue in the given order, once.
/// KEYS: lease fence prequeue queue shuffle. ARGV: holder fence seed on_sale_ms members...
/// Returns {moved} or {-1} not leader, {-2} too early, {-3} pre-queue has members the list lacks
/// (re-read), {-4} done. Listed members no longer in the pre-queue (they left, or were swept,
/// between the read and this script) are skipped and the rest keep their order: the list of a
/// large pre-queue takes a while to read and send, and people leave all the time, so requiring
/// the exact list stalled the shuffle — and with it all admission — for as long as anyone left.
/// The record keeps both counts (`listed`, `count`), so the order is re-derived from the seed and
/// the listed members, then filtered to the ones moved.
static SHUFFLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{}",
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then return {-1} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {-4} end
if now < tonumber(ARGV[4]) then return {-2} end
local present = {}
local n = 0
for i = 5, #ARGV do
  if redis.call('ZSCORE', KEYS[3], ARGV[i]) then
    n = n + 1
    present[n] = ARGV[i]
  end
end
if redis.call('ZCARD', KEYS[3]) ~= n then return {-3} end
for i = 1, n do
  redis.call('ZADD', KEYS[4], i, present[i])
end
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[5], 'seed', ARGV[3], 'at', now, 'count', n, 'listed', #ARGV - 4, 'fence', ARGV[2])
return {n}
"#
    ))
});

// === impl Store ===

/// Cheap to clone: the connection manager multiplexes one connection.
#[derive(Clone)]
pub struct Store {
    conn: RedisConn,
    timeout: Duration,
    batch: tokio::sync::mpsc::Sender<StatusJob>,
    /// When this replica last recorded shed heartbeats, per event.
    shed_notes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<EventKeys, std::time::Instant>>>,
}

/// One heartbeats-shed write per event per replica at most this often.
const SHED_NOTE_EVERY: Duration = Duration::from_millis(500);

impl Store {
    /// Connects lazily: the service starts (and answers /healthz) while Redis is still down.
    pub fn new(redis: &RedisArgs, timeout: Duration) -> Result<Self> {
        let conn = RedisConn::connect_lazy(redis, timeout)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StoreError::Reply("Store::new needs a tokio runtime".into()))?;
        let (batch, rx) = tokio::sync::mpsc::channel(BATCH_QUEUE);
        runtime.spawn(
            Batcher {
                conn: conn.clone(),
                timeout,
            }
            .run(rx),
        );
        Ok(Self {
            conn,
            timeout,
            batch,
            shed_notes: Default::default(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn.clone();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut c)).await?;
        Ok(())
    }

    /// Joins (`join = true`) or polls; both refresh the heartbeat of a waiting user. Concurrent
    /// calls are batched into one script call per event (see [`Batcher`]).
    pub async fn status(
        &self,
        keys: &EventKeys,
        user: &str,
        on_sale_ms: i64,
        sale_ends_ms: Option<i64>,
        join: bool,
    ) -> Result<Observed> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = StatusJob {
            group: (keys.clone(), on_sale_ms, sale_ends_ms.unwrap_or(0)),
            user: user.to_owned(),
            join,
            reply,
        };
        self.batch.try_send(job).map_err(|_| StoreError::Overloaded)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(StoreError::Reply("status batch dropped".into())),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    pub async fn leave(&self, keys: &EventKeys, user: &str) -> Result<bool> {
        let mut c = self.conn.clone();
        let mut inv = LEAVE.prepare_invoke();
        inv.key(keys.queue())
            .key(keys.prequeue())
            .key(keys.heartbeats())
            .key(keys.active())
            .arg(user);
        let n: u64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(n > 0)
    }

    /// Returns the fence of this holder's term, or None when another replica holds the lease.
    pub async fn lease(&self, keys: &EventKeys, holder: &str, ttl: Duration) -> Result<Option<u64>> {
        let mut c = self.conn.clone();
        let mut inv = LEASE.prepare_invoke();
        inv.key(keys.admission_lease())
            .key(keys.admission_fence())
            .arg(holder)
            .arg(ttl.as_millis() as u64);
        let fence: u64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok((fence > 0).then_some(fence))
    }

    pub async fn release(&self, keys: &EventKeys, holder: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let mut inv = RELEASE.prepare_invoke();
        inv.key(keys.admission_lease()).arg(holder);
        let _: u64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &self,
        keys: &EventKeys,
        holder: &str,
        fence: u64,
        rate_per_second: u32,
        max_active: u32,
        ttl: Duration,
        burst: Duration,
    ) -> Result<AdmitOutcome> {
        let mut c = self.conn.clone();
        let mut inv = ADMIT.prepare_invoke();
        inv.key(keys.admission_lease())
            .key(keys.admission_fence())
            .key(keys.queue())
            .key(keys.active())
            .key(keys.admitted_total())
            .key(keys.heartbeats())
            .key(keys.admission_rate())
            .key(keys.shuffle())
            .key(keys.sold_out())
            .arg(holder)
            .arg(fence)
            .arg(rate_per_second)
            .arg(max_active)
            .arg(ttl.as_millis() as u64)
            .arg(burst.as_millis() as u64);
        let r: Vec<i64> = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(match r.as_slice() {
            [-1] => AdmitOutcome::NotLeader,
            [-2] => AdmitOutcome::NotShuffled,
            [admitted, active, depth] => AdmitOutcome::Admitted {
                admitted: *admitted as u64,
                active: *active as u64,
                depth: *depth as u64,
            },
            other => return Err(StoreError::Reply(format!("admit {other:?}"))),
        })
    }

    /// Drops waiting users without a heartbeat for `timeout`, as the lease holder `holder` of
    /// term `fence`.
    pub async fn sweep(
        &self,
        keys: &EventKeys,
        holder: &str,
        fence: u64,
        timeout: Duration,
        limit: u32,
    ) -> Result<SweepOutcome> {
        let mut c = self.conn.clone();
        let mut inv = SWEEP.prepare_invoke();
        inv.key(keys.heartbeats())
            .key(keys.queue())
            .key(keys.prequeue())
            .key(keys.heartbeats_shed())
            .key(keys.admission_lease())
            .key(keys.admission_fence())
            .arg(timeout.as_millis() as u64)
            .arg(limit)
            .arg(holder)
            .arg(fence);
        let n: i64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(match n {
            -1 => SweepOutcome::Paused,
            -2 => SweepOutcome::NotLeader,
            n => SweepOutcome::Dropped(u64::try_from(n).unwrap_or(0)),
        })
    }

    /// Marks that this replica could not serve a heartbeat of the event (see
    /// [`EventKeys::heartbeats_shed`]). At most one write per event per `SHED_NOTE_EVERY` from a
    /// replica, sent in the background: it must not add load to the overload it reports.
    pub fn note_shed(&self, keys: &EventKeys, heartbeat_timeout: Duration) {
        {
            let mut last = self
                .shed_notes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = std::time::Instant::now();
            if last
                .get(keys)
                .is_some_and(|t| now.duration_since(*t) < SHED_NOTE_EVERY)
            {
                return;
            }
            last.insert(keys.clone(), now);
        }
        let (mut c, key, timeout) = (self.conn.clone(), keys.heartbeats_shed(), self.timeout);
        let ttl = heartbeat_timeout.max(SHED_NOTE_EVERY).as_millis() as u64;
        tokio::spawn(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key).arg("1").arg("PX").arg(ttl);
            let set = cmd.query_async::<()>(&mut c);
            if !matches!(tokio::time::timeout(timeout, set).await, Ok(Ok(()))) {
                tracing::warn!(key, "could not record shed heartbeats; the sweep may drop users");
            }
        });
    }

    pub async fn is_shuffled(&self, keys: &EventKeys) -> Result<bool> {
        let mut c = self.conn.clone();
        self.bounded(c.exists(keys.shuffle())).await
    }

    /// The whole pre-queue, for the shuffle: bounded like the shuffle script (10 × a plain call),
    /// since a large pre-queue takes a while to send.
    pub async fn prequeue_members(&self, keys: &EventKeys) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        match tokio::time::timeout(self.timeout * 10, c.zrange(keys.prequeue(), 0, -1)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout(self.timeout * 10)),
        }
    }

    /// Runs the on-sale shuffle script. Ok(Some(n)) when it moved `n` users (possibly 0); Ok(None)
    /// when it must be retried (pre-queue changed, or too early); Err on Redis failure.
    pub async fn apply_shuffle(
        &self,
        keys: &EventKeys,
        holder: &str,
        fence: u64,
        seed: u64,
        on_sale_ms: i64,
        ordered: &[String],
    ) -> Result<ShuffleOutcome> {
        let mut c = self.conn.clone();
        let mut inv = SHUFFLE.prepare_invoke();
        inv.key(keys.admission_lease())
            .key(keys.admission_fence())
            .key(keys.prequeue())
            .key(keys.queue())
            .key(keys.shuffle())
            .arg(holder)
            .arg(fence)
            .arg(seed.to_string())
            .arg(on_sale_ms);
        for m in ordered {
            inv.arg(m);
        }
        // A large pre-queue takes a while to move; give the script more room than a plain call.
        let r: Vec<i64> = match tokio::time::timeout(self.timeout * 10, inv.invoke_async(&mut c)).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(self.timeout * 10)),
        };
        Ok(match r.as_slice() {
            [-1] => ShuffleOutcome::NotLeader,
            [-2] => ShuffleOutcome::TooEarly,
            [-3] => ShuffleOutcome::Changed,
            [-4] => ShuffleOutcome::AlreadyDone,
            [n] if *n >= 0 => ShuffleOutcome::Moved(*n as u64),
            other => return Err(StoreError::Reply(format!("shuffle {other:?}"))),
        })
    }

    /// The shuffle record (seed, at, count, fence), if the shuffle happened.
    pub async fn shuffle_record(&self, keys: &EventKeys) -> Result<Option<ShuffleRecord>> {
        let mut c = self.conn.clone();
        let m: std::collections::HashMap<String, String> = self.bounded(c.hgetall(keys.shuffle())).await?;
        if m.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(ShuffleRecord {
            seed: get("seed").unwrap_or(0),
            at_ms: get("at").unwrap_or(0) as i64,
            count: get("count").unwrap_or(0),
            listed: get("listed").or_else(|| get("count")).unwrap_or(0),
            fence: get("fence").unwrap_or(0),
        }))
    }

    /// Refreshes the heartbeats of users holding a stream open (only those still present).
    /// Refreshes the heartbeats of users holding streams, scored by Redis's clock (the one every
    /// other heartbeat and the sweep use; replica clocks may disagree).
    pub async fn touch(&self, keys: &EventKeys, users: &[String]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut c = self.conn.clone();
        let mut inv = TOUCH.prepare_invoke();
        inv.key(keys.heartbeats());
        for u in users {
            inv.arg(u);
        }
        let _: u64 = self.bounded(inv.invoke_async(&mut c)).await?;
        Ok(())
    }

    /// One atomic round trip for an event: its counters plus the exact standing of `users`
    /// (the streams due for a refresh). MULTI/EXEC makes ranks and `admitted_total` consistent.
    pub async fn tick(
        &self,
        keys: &EventKeys,
        users: &[String],
        now_ms: i64,
    ) -> Result<(EventCounters, Vec<StreamFix>)> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.atomic()
            .get(keys.admitted_total())
            .zcard(keys.queue())
            .zcard(keys.prequeue())
            .zcount(keys.active(), now_ms, "+inf")
            .exists(keys.sold_out());
        for u in users {
            p.zrank(keys.queue(), u)
                .zscore(keys.active(), u)
                .zscore(keys.prequeue(), u);
        }
        let values: Vec<redis::Value> = self.bounded(p.query_async(&mut c)).await?;
        let mut it = values.into_iter();
        let mut next = || {
            it.next()
                .ok_or_else(|| StoreError::Reply("short tick reply".into()))
        };
        let int = |v: redis::Value| -> Result<Option<i64>> {
            redis::from_redis_value::<Option<i64>>(v).map_err(|e| StoreError::Reply(e.to_string()))
        };
        let float = |v: redis::Value| -> Result<Option<f64>> {
            redis::from_redis_value::<Option<f64>>(v).map_err(|e| StoreError::Reply(e.to_string()))
        };
        let counters = EventCounters {
            admitted_total: int(next()?)?.unwrap_or(0) as u64,
            depth: int(next()?)?.unwrap_or(0) as u64,
            prequeue: int(next()?)?.unwrap_or(0) as u64,
            active: int(next()?)?.unwrap_or(0) as u64,
            sold_out: int(next()?)?.unwrap_or(0) == 1,
            now_ms,
        };
        let mut fixes = Vec::with_capacity(users.len());
        for _ in users {
            let rank = int(next()?)?;
            let active = float(next()?)?;
            let pre = float(next()?)?;
            fixes.push(match (rank, active, pre) {
                // The pre-queue not yet shuffled in goes in front of everyone in the queue.
                (Some(r), _, _) => StreamFix::Waiting {
                    rank: r as u64 + counters.prequeue,
                },
                (None, Some(exp), _) if exp as i64 >= now_ms => StreamFix::Admitted {
                    expires_ms: exp as i64,
                },
                (None, _, Some(_)) => StreamFix::PreQueue,
                _ => StreamFix::Absent,
            });
        }
        Ok((counters, fixes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShuffleOutcome {
    Moved(u64),
    NotLeader,
    TooEarly,
    Changed,
    AlreadyDone,
}

/// What one heartbeat sweep did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    Dropped(u64),
    /// Heartbeats were shed somewhere: nobody is dropped now.
    Paused,
    /// The caller's term is over (another replica holds the lease, or the fence moved).
    NotLeader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShuffleRecord {
    /// The seed of the pre-queue shuffle; with the sorted member list it reproduces the order.
    pub seed: u64,
    pub at_ms: i64,
    /// Users moved into the queue.
    pub count: u64,
    /// Users the shuffled list held: more than `count` when some left before the move (they
    /// were skipped; the others kept their shuffled order).
    pub listed: u64,
    pub fence: u64,
}

// === impl Batcher ===

/// Status calls waiting for a batch, at most; beyond it callers get 503 at once (load shedding).
const BATCH_QUEUE: usize = 16_384;
/// Users per script call, at most.
const BATCH_MAX: usize = 256;
/// Script calls in flight, at most. While they are, new calls queue and form the next batch, so
/// batches grow exactly when Redis is the bottleneck and stay at one user when it is idle.
const BATCH_IN_FLIGHT: usize = 4;

type Group = (EventKeys, i64, i64);

pub struct StatusJob {
    group: Group,
    user: String,
    join: bool,
    reply: tokio::sync::oneshot::Sender<Result<Observed>>,
}

struct Batcher {
    conn: RedisConn,
    timeout: Duration,
}

impl Batcher {
    async fn run(self, mut rx: tokio::sync::mpsc::Receiver<StatusJob>) {
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCH_IN_FLIGHT));
        while let Some(first) = rx.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let mut jobs = vec![first];
            while jobs.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let mut groups: Vec<(Group, Vec<StatusJob>)> = Vec::new();
            // A caller that timed out (or went away) waiting in the queue is not served: its job
            // would cost Redis time that callers still waiting need.
            for job in jobs.into_iter().filter(|j| !j.reply.is_closed()) {
                match groups.iter_mut().find(|(g, _)| *g == job.group) {
                    Some((_, v)) => v.push(job),
                    None => groups.push((job.group.clone(), vec![job])),
                }
            }
            let conn = self.conn.clone();
            let timeout = self.timeout;
            tokio::spawn(async move {
                let calls = groups
                    .into_iter()
                    .map(|(group, jobs)| run_group(conn.clone(), timeout, group, jobs));
                futures::future::join_all(calls).await;
                drop(permit);
            });
        }
    }
}

async fn run_group(mut conn: RedisConn, timeout: Duration, group: Group, jobs: Vec<StatusJob>) {
    let (keys, on_sale_ms, sale_ends_ms) = group;
    let mut inv = STATUS.prepare_invoke();
    inv.key(keys.queue())
        .key(keys.prequeue())
        .key(keys.active())
        .key(keys.seq())
        .key(keys.heartbeats())
        .key(keys.shuffle())
        .key(keys.sold_out())
        .key(keys.admitted_total())
        .arg(on_sale_ms)
        .arg(sale_ends_ms)
        .arg(POST_SALE_SCORE_BASE);
    for j in &jobs {
        inv.arg(&j.user).arg(if j.join { "join" } else { "poll" });
    }
    let reply: Result<Vec<redis::Value>> =
        match tokio::time::timeout(timeout, inv.invoke_async(&mut conn)).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(timeout)),
        };
    match reply {
        Ok(values) if values.len() == jobs.len() * 6 => {
            let mut values = values.into_iter();
            for job in jobs {
                let row: Vec<redis::Value> = values.by_ref().take(6).collect();
                let _ = job.reply.send(parse_status(row));
            }
        }
        Ok(values) => {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::Reply(format!(
                    "status batch of {} values",
                    values.len()
                ))));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(match &e {
                    StoreError::Timeout(d) => StoreError::Timeout(*d),
                    StoreError::Overloaded => StoreError::Overloaded,
                    other => StoreError::Reply(other.to_string()),
                }));
            }
        }
    }
}

fn parse_status(row: Vec<redis::Value>) -> Result<Observed> {
    let (state, a, b, created, now_ms, admitted_total): (String, String, u64, u8, i64, u64) =
        redis::from_redis_value(redis::Value::Array(row)).map_err(|e| StoreError::Reply(e.to_string()))?;
    let num = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| StoreError::Reply(format!("score {s:?}")))
    };
    let standing = match state.as_str() {
        "waiting" => Standing::Waiting {
            rank: b,
            score: num(&a)? as u64,
        },
        "prequeue" => Standing::PreQueue { size: b },
        "admitted" => Standing::Admitted {
            expires_ms: num(&a)? as i64,
        },
        "absent" => Standing::Absent,
        "soldOut" => Standing::SoldOut { in_line: b == 1 },
        "closed" => Standing::Closed,
        other => return Err(StoreError::Reply(format!("state {other:?}"))),
    };
    Ok(Observed {
        standing,
        created: created == 1,
        now_ms,
        admitted_total,
    })
}
