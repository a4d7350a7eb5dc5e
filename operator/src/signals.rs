//! Reads every event's scaling signals from Redis in one pipelined round trip per tick.
//!
//! The pipeline holds one `EVALSHA` of [`SIGNALS_LUA`] per [`EVENTS_PER_COMMAND`] events (of
//! one hash slot), which runs, per event, `ZCARD queue`, `ZCARD prequeue`,
//! `ZCOUNT active <now-ms> +inf`, `EXISTS sold-out` and `HMGET counts sold held available total`
//! on keys from [`tiketi_shared::keys::EventKeys`] only, and answers with one line per event in
//! one string. Five commands and nine replies per event cost the client more than everything
//! else in the operator's tick at 10,000 events (perf: ≈ 21 % parsing the replies, ≈ 15 %
//! building the commands); Redis runs the same five reads either way, and batching keeps the
//! script's own overhead per call, not per event. A broken key fails only its event's line. A
//! Redis that does not know the script (a restart, a failover, a new cluster node) answers
//! NOSCRIPT; the reader loads it and sends the pipeline again within the same timeout.
//!
//! On a single Redis (or a replication group behind one endpoint) that is one pipeline for all
//! events; in cluster mode a pipeline may only touch one hash slot, so commands are grouped per
//! slot (every key of an event shares its hash tag, hence its slot) and the groups are sent
//! concurrently. Each tick is bounded by a timeout; a failure is reported per event, never as a
//! silent zero.
//!
//! Prometheus instant queries are a separate, optional signal ([`PrometheusSignals`]).
//!
//! One [`SignalReader`] serves one Redis endpoint; events that point at different Redis
//! instances (spec.redis) need one reader each.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use redis::{Pipeline, Value};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::{RedisArgs, RedisConn};

use crate::autoscaler::{Samples, Signal, SignalFailure};

/// Events read by one script call: 320 keys, about 0.3 ms of Redis time per call (short enough
/// not to hold up other clients), and about 160 calls for 10,000 events.
pub const EVENTS_PER_COMMAND: usize = 64;

/// The signals of up to [`EVENTS_PER_COMMAND`] events in one reply. KEYS: per event, in order,
/// its queue, prequeue, active, sold-out and counts keys; ARGV[1]: now in unix ms. Answers one
/// line per event, `queue,prequeue,active,soldOut,sold,held,available,total` (a missing counts
/// field is empty), or `!` and the first failing read's error with the command and key appended
/// (e.g. `!WRONGTYPE … (ZCARD tiketi:{e}:queue)`): a broken key fails only its own event.
pub const SIGNALS_LUA: &str = r"
local lines = {}
local function read(at, command, key, ...)
  local r = redis.pcall(command, key, ...)
  if type(r) == 'table' and r.err then
    lines[at] = '!' .. r.err .. ' (' .. command .. ' ' .. key .. ')'
    return nil
  end
  return r
end
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  local at = i + 1
  local q = read(at, 'ZCARD', KEYS[k + 1])
  local p = q and read(at, 'ZCARD', KEYS[k + 2])
  local a = p and read(at, 'ZCOUNT', KEYS[k + 3], ARGV[1], '+inf')
  local s = a and read(at, 'EXISTS', KEYS[k + 4])
  local c = s and read(at, 'HMGET', KEYS[k + 5], 'sold', 'held', 'available', 'total')
  if c then
    lines[at] = q .. ',' .. p .. ',' .. a .. ',' .. s .. ',' .. (c[1] or '') .. ',' .. (c[2] or '')
      .. ',' .. (c[3] or '') .. ',' .. (c[4] or '')
  end
end
return table.concat(lines, '\n')
";

static SIGNALS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SIGNALS_LUA));

/// Cluster slot groups sent at once.
const CLUSTER_CONCURRENCY: usize = 64;

/// Why a signal could not be read. Cloneable: one tick-level failure is reported for every event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(String),
    #[error("unexpected reply to {command}: {reply}")]
    Decode { command: &'static str, reply: String },
    #[error("prometheus: {0}")]
    Prometheus(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl SignalError {
    /// Bounded label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "Timeout",
            Self::Redis(_) => "RedisError",
            Self::Decode { .. } => "DecodeError",
            Self::Prometheus(_) => "PrometheusError",
            Self::Config(_) => "ConfigError",
        }
    }

    /// A redis-rs error; its own response timeout counts as a [`SignalError::Timeout`].
    pub fn from_redis(e: &redis::RedisError, timeout: Duration) -> Self {
        if e.is_timeout() {
            Self::Timeout(timeout)
        } else {
            Self::Redis(e.to_string())
        }
    }

    /// The autoscaler's view of the failure.
    pub fn failure(&self) -> SignalFailure {
        SignalFailure {
            reason: self.reason(),
            message: self.to_string(),
        }
    }
}

/// The reservation service's availability counts (`tiketi:{e}:counts`); None where a field is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sold: Option<u64>,
    pub held: Option<u64>,
    pub available: Option<u64>,
    pub total: Option<u64>,
}

/// One event's signals from one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSignals {
    /// ZCARD of the waiting queue.
    pub queue_depth: u64,
    /// ZCARD of the pre-queue (users who joined before the on-sale).
    pub pre_queue_depth: u64,
    /// Admitted users whose admission expires at or after `observed_at`.
    pub active_users: u64,
    /// The sold-out flag is set.
    pub sold_out: bool,
    pub counts: Counts,
    /// When the pipeline was sent (the instant `active_users` is counted against).
    pub observed_at: DateTime<Utc>,
}

impl EventSignals {
    /// Sold out and nobody waiting: the phase may move on before saleEndsAt.
    pub fn sold_out_and_drained(&self) -> bool {
        let counted_out = self.counts.available == Some(0) && self.counts.held == Some(0);
        (self.sold_out || counted_out) && self.queue_depth == 0
    }
}

/// The queueDepth and activeUsers samples of one event's reading (failures for both on error).
pub fn samples(reading: &Result<EventSignals, SignalError>) -> Samples {
    match reading {
        Ok(s) => Samples::new()
            .ok(Signal::QueueDepth, s.queue_depth as f64, s.observed_at)
            .ok(Signal::PreQueueDepth, s.pre_queue_depth as f64, s.observed_at)
            .ok(Signal::ActiveUsers, s.active_users as f64, s.observed_at),
        Err(e) => Samples::new()
            .failed(Signal::QueueDepth, e.failure())
            .failed(Signal::PreQueueDepth, e.failure())
            .failed(Signal::ActiveUsers, e.failure()),
    }
}

/// One tick's result: a reading or an error for every event asked about, in the order asked.
pub type Tick = Vec<(String, Result<EventSignals, SignalError>)>;

/// Reads signals from one Redis endpoint.
pub struct SignalReader {
    conn: RedisConn,
    timeout: Duration,
}

impl SignalReader {
    /// A reader for `redis` (single node or cluster, TLS or not; see [`tiketi_shared::redis`]).
    /// Nothing is contacted yet: a Redis that is down, or refuses the TLS handshake, is reported
    /// per tick instead of failing the operator.
    pub fn connect(redis: &RedisArgs, timeout: Duration) -> Result<Self, SignalError> {
        let conn = RedisConn::connect_lazy(redis, timeout).map_err(|e| SignalError::Config(e.to_string()))?;
        Ok(Self { conn, timeout })
    }

    /// Reads every event's signals: one pipeline (per hash slot in cluster mode), bounded by the
    /// timeout.
    pub async fn read<S: AsRef<str>>(&mut self, event_ids: &[S]) -> Tick {
        let readings = self.read_in_order(event_ids).await;
        event_ids
            .iter()
            .map(|e| e.as_ref().to_owned())
            .zip(readings)
            .collect()
    }

    /// [`SignalReader::read`] without the ids: a reading or an error for every event asked
    /// about, in the order asked (the autoscaler's tick, which knows its events).
    pub async fn read_in_order<S: AsRef<str>>(
        &mut self,
        event_ids: &[S],
    ) -> Vec<Result<EventSignals, SignalError>> {
        let now = Utc::now();
        if event_ids.is_empty() {
            return Vec::new();
        }
        let timeout = self.timeout;
        match &mut self.conn {
            conn @ RedisConn::Single(_) => {
                let pipe = pipeline(event_ids.iter().map(AsRef::as_ref), now);
                let reply = query(&pipe, conn, timeout).await;
                decode_all(event_ids.len(), reply, now)
            }
            conn @ RedisConn::Cluster(_) => {
                // Per slot: the events' ids and their places in the answer.
                let mut groups: BTreeMap<u16, (Vec<String>, Vec<usize>)> = BTreeMap::new();
                for (i, e) in event_ids.iter().map(AsRef::as_ref).enumerate() {
                    let (ids, at) = groups.entry(slot_of(e)).or_default();
                    ids.push(e.to_owned());
                    at.push(i);
                }
                // Futures built eagerly and owning their data: a lazy stream closure that borrows
                // would make the caller's future not Send.
                let jobs: Vec<_> = groups
                    .into_values()
                    .map(|(events, at)| {
                        let mut conn = conn.clone();
                        async move {
                            let pipe = pipeline(events.iter().map(String::as_str), now);
                            let reply = query(&pipe, &mut conn, timeout).await;
                            (at, decode_all(events.len(), reply, now))
                        }
                    })
                    .collect();
                let replies = futures::stream::iter(jobs)
                    .buffer_unordered(CLUSTER_CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await;
                let mut out: Vec<Option<Result<EventSignals, SignalError>>> = vec![None; event_ids.len()];
                for (at, readings) in replies {
                    for (i, r) in at.into_iter().zip(readings) {
                        out[i] = Some(r);
                    }
                }
                out.into_iter()
                    .map(|r| {
                        r.unwrap_or_else(|| {
                            Err(SignalError::Decode {
                                command: "pipeline",
                                reply: "no reply for event".into(),
                            })
                        })
                    })
                    .collect()
            }
        }
    }

    /// One `PING` round trip, the baseline the tick cost is compared with.
    pub async fn ping(&mut self) -> Result<(), SignalError> {
        let cmd = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, cmd.query_async::<String>(&mut self.conn)).await {
            Err(_) => Err(SignalError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(SignalError::from_redis(&e, self.timeout)),
            Ok(Ok(_)) => Ok(()),
        }
    }
}

pub use tiketi_shared::redis::slot_of;

/// Sends `pipe` and returns its replies, all within `timeout`. Replies that say NOSCRIPT (a
/// Redis that restarted, failed over or joined the cluster since the script was loaded) load
/// the script, on every node in cluster mode, and the pipeline is sent once more.
async fn query(pipe: &Pipeline, conn: &mut RedisConn, timeout: Duration) -> Result<Vec<Value>, SignalError> {
    let attempt = async {
        let values = pipe.query_async::<Vec<Value>>(conn).await?;
        let forgotten = values
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
        if !forgotten {
            return Ok(values);
        }
        tracing::info!("Redis does not know the signals script (restarted or failed over): loading it");
        SIGNALS_SCRIPT.prepare_invoke().load_async(conn).await?;
        pipe.query_async::<Vec<Value>>(conn).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(SignalError::Timeout(timeout)),
        Ok(Err(e)) => Err(SignalError::from_redis(&e, timeout)),
        Ok(Ok(values)) => Ok(values),
    }
}

/// Keys of one event in the script's KEYS.
const KEYS_PER_EVENT: usize = 5;

fn pipeline<'a>(events: impl ExactSizeIterator<Item = &'a str>, now: DateTime<Utc>) -> Pipeline {
    let now_ms = now.timestamp_millis().to_string();
    let hash = SIGNALS_SCRIPT.get_hash();
    let events: Vec<&str> = events.collect();
    let mut pipe = Pipeline::with_capacity(events.len().div_ceil(EVENTS_PER_COMMAND));
    pipe.ignore_errors();
    for chunk in events.chunks(EVENTS_PER_COMMAND) {
        // Buffers sized up front (`tiketi:{<e>}:` and the five suffixes per event).
        let bytes = hash.len()
            + 32
            + chunk
                .iter()
                .map(|e| KEYS_PER_EVENT * (e.len() + 10) + 33)
                .sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(4 + chunk.len() * KEYS_PER_EVENT, bytes);
        cmd.arg("EVALSHA").arg(hash).arg(chunk.len() * KEYS_PER_EVENT);
        for e in chunk {
            let k = EventKeys::new(e);
            for key in [k.queue(), k.prequeue(), k.active(), k.sold_out(), k.counts()] {
                cmd.arg(key.as_str());
            }
        }
        cmd.arg(now_ms.as_str());
        pipe.add_command(cmd);
    }
    pipe
}

/// The readings of `events` events from one pipeline's replies (one per
/// [`EVENTS_PER_COMMAND`] events), in order.
fn decode_all(
    events: usize,
    reply: Result<Vec<Value>, SignalError>,
    now: DateTime<Utc>,
) -> Vec<Result<EventSignals, SignalError>> {
    match reply {
        Err(e) => vec![Err(e); events],
        Ok(values) => {
            let mut out = Vec::with_capacity(events);
            let mut values = values.iter();
            while out.len() < events {
                let n = (events - out.len()).min(EVENTS_PER_COMMAND);
                match values.next() {
                    Some(v) => decode_batch(v, n, now, &mut out),
                    None => out.extend(std::iter::repeat_n(
                        Err(SignalError::Decode {
                            command: "pipeline",
                            reply: "missing replies".into(),
                        }),
                        n,
                    )),
                }
            }
            out
        }
    }
}

const COMMAND: &str = "EVALSHA signals";

/// One script call's answer for `n` events, appended to `out`: a line per event, or one error
/// for all of them when the call itself failed.
fn decode_batch(
    reply: &Value,
    n: usize,
    now: DateTime<Utc>,
    out: &mut Vec<Result<EventSignals, SignalError>>,
) {
    let all = |out: &mut Vec<_>, e: SignalError| out.extend(std::iter::repeat_n(Err(e), n));
    let text = match reply {
        Value::BulkString(b) => b.as_slice(),
        Value::SimpleString(s) => s.as_bytes(),
        Value::ServerError(e) => return all(out, SignalError::Redis(e.to_string())),
        other => {
            return all(
                out,
                SignalError::Decode {
                    command: COMMAND,
                    reply: short(other),
                },
            );
        }
    };
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if lines.len() != n {
        return all(
            out,
            SignalError::Decode {
                command: COMMAND,
                reply: format!("{} lines for {n} events", lines.len()),
            },
        );
    }
    out.extend(lines.into_iter().map(|line| decode_line(line, now)));
}

/// One event's line of the script's answer.
fn decode_line(line: &[u8], now: DateTime<Utc>) -> Result<EventSignals, SignalError> {
    if let Some(error) = line.strip_prefix(b"!") {
        return Err(SignalError::Redis(String::from_utf8_lossy(error).into_owned()));
    }
    let bad = || SignalError::Decode {
        command: COMMAND,
        reply: crate::events::bounded(&String::from_utf8_lossy(line), 120),
    };
    let mut fields = line.split(|b| *b == b',').map(|f| {
        if f.is_empty() {
            return Ok(None);
        }
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(bad)
    });
    let mut next = || fields.next().ok_or_else(bad)?;
    let mut required = || next()?.ok_or_else(bad);
    let queue_depth = required()?;
    let pre_queue_depth = required()?;
    let active_users = required()?;
    let sold_out = required()? > 0;
    let counts = Counts {
        sold: next()?,
        held: next()?,
        available: next()?,
        total: next()?,
    };
    if fields.next().is_some() {
        return Err(bad());
    }
    Ok(EventSignals {
        queue_depth,
        pre_queue_depth,
        active_users,
        sold_out,
        counts,
        observed_at: now,
    })
}

/// A reply for an error message: at most 120 bytes, cut on a character boundary (a reply from
/// a Redis the event's owner chose can hold any text).
fn short(v: &Value) -> String {
    crate::events::bounded(&format!("{v:?}"), 120)
}

// === Prometheus ===

/// Instant queries against one Prometheus, each bounded by a timeout.
#[derive(Clone)]
pub struct PrometheusSignals {
    client: prometheus_http_query::Client,
    timeout: Duration,
}

impl PrometheusSignals {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SignalError> {
        let client = url
            .parse::<prometheus_http_query::Client>()
            .map_err(|e| SignalError::Config(format!("prometheus url {url:?}: {e}")))?;
        Ok(Self { client, timeout })
    }

    /// Runs `query` at the current instant. A vector result yields its largest value (the
    /// conservative choice for scale-out thresholds); an empty result yields NaN ("no data"),
    /// which matches no threshold but is not a failure.
    pub async fn query(&self, query: &str) -> Result<(f64, DateTime<Utc>), SignalError> {
        let now = Utc::now();
        let millis = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let request = self.client.query(query).timeout(millis).get();
        let result = tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| SignalError::Timeout(self.timeout))?
            .map_err(|e| SignalError::Prometheus(e.to_string()))?;
        let value = match result.data() {
            prometheus_http_query::response::Data::Scalar(s) => s.value(),
            prometheus_http_query::response::Data::Vector(v) => v
                .iter()
                .map(|iv| iv.sample().value())
                .filter(|x| !x.is_nan())
                .fold(f64::NAN, f64::max),
            prometheus_http_query::response::Data::Matrix(_) => {
                return Err(SignalError::Prometheus(
                    "a range vector is not an instant value".into(),
                ));
            }
        };
        Ok((value, now))
    }

    /// Runs every query concurrently and adds the results to `samples` as `prometheus` signals.
    pub async fn read_into(&self, queries: &[String], samples: &mut Samples) {
        let results = futures::future::join_all(queries.iter().map(|q| self.query(q))).await;
        for (q, r) in queries.iter().zip(results) {
            let signal = Signal::Prometheus(q.clone());
            match r {
                Ok((value, at)) => samples.insert(
                    signal,
                    Ok(crate::autoscaler::Sample {
                        value,
                        observed_at: at,
                    }),
                ),
                Err(e) => samples.insert(signal, Err(e.failure())),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn batch(lines: &[&str]) -> Value {
        Value::BulkString(lines.join("\n").into_bytes())
    }

    #[test]
    fn decodes_a_full_event_reply() {
        let now = Utc::now();
        let tick = decode_all(1, Ok(vec![batch(&["8000,300,1500,1,590,10,0,"])]), now);
        let s = tick[0].clone().unwrap();
        assert_eq!(
            (s.queue_depth, s.pre_queue_depth, s.active_users, s.sold_out),
            (8_000, 300, 1_500, true)
        );
        assert_eq!(
            s.counts,
            Counts {
                sold: Some(590),
                held: Some(10),
                available: Some(0),
                total: None
            }
        );
        assert!(!s.sold_out_and_drained());
    }

    #[test]
    fn a_malformed_line_is_a_decode_error_never_a_zero() {
        for bad in [
            "8000,300,1500,1,590,10,0",    // a field short
            "8000,300,1500,1,590,10,0,,9", // one too many
            ",300,1500,1,,,,",             // a required signal missing
            "8000,300,-1,0,,,,",           // negative
            "8000,300,15x,0,,,,",          // not a number
            "8000,300,1500,0,lots,,,",     // a count that is not a number
        ] {
            let err = decode_line(bad.as_bytes(), Utc::now()).unwrap_err();
            assert_eq!(err.reason(), "DecodeError", "{bad}");
        }
        // Any text from a Redis the event's owner chose: the error quotes it cut on a character
        // boundary, wherever the 120th byte falls.
        for pad in 0..4 {
            let line = format!("0,0,0,0,x{}{}", "y".repeat(pad), "é".repeat(80));
            let err = decode_line(line.as_bytes(), Utc::now()).unwrap_err();
            assert_eq!(err.reason(), "DecodeError");
            assert!(err.to_string().contains("0,0,0,0,x"), "{err}");
            let bulk = format!("{}{}", "y".repeat(pad), "é".repeat(90));
            let text = Value::Array(vec![Value::BulkString(bulk.into_bytes()); 2]);
            assert!(short(&text).len() <= 120);
        }
    }

    #[test]
    fn replies_map_to_events_in_order_across_script_calls() {
        let now = Utc::now();
        let n = EVENTS_PER_COMMAND + 3;
        let first: Vec<String> = (0..EVENTS_PER_COMMAND)
            .map(|i| format!("{i},0,0,0,,,,"))
            .collect();
        let first: Vec<&str> = first.iter().map(String::as_str).collect();
        let tick = decode_all(
            n,
            Ok(vec![
                batch(&first),
                batch(&["100,0,0,0,,,,", "!WRONGTYPE x (ZCARD k)", "102,0,0,0,,,,"]),
            ]),
            now,
        );
        assert_eq!(tick.len(), n);
        for (i, r) in tick.iter().enumerate().take(EVENTS_PER_COMMAND) {
            assert_eq!(r.as_ref().unwrap().queue_depth, i as u64);
        }
        assert_eq!(tick[EVENTS_PER_COMMAND].as_ref().unwrap().queue_depth, 100);
        let err = tick[EVENTS_PER_COMMAND + 1].clone().unwrap_err();
        assert_eq!(err.reason(), "RedisError");
        assert!(
            err.to_string().contains("WRONGTYPE") && err.to_string().contains("ZCARD"),
            "{err}"
        );
        assert_eq!(tick[EVENTS_PER_COMMAND + 2].as_ref().unwrap().queue_depth, 102);

        // A call that failed as a whole fails its events only; a missing reply or a wrong line
        // count fails the events it should have carried.
        let failed = redis::parse_redis_value(b"-BUSY Redis is busy running a script\r\n").unwrap();
        let tick = decode_all(n, Ok(vec![failed]), now);
        assert!(
            tick[..EVENTS_PER_COMMAND]
                .iter()
                .all(|r| matches!(r, Err(SignalError::Redis(_))))
        );
        assert!(
            tick[EVENTS_PER_COMMAND..]
                .iter()
                .all(|r| matches!(r, Err(SignalError::Decode { .. })))
        );
        let tick = decode_all(2, Ok(vec![batch(&["1,0,0,0,,,,"])]), now);
        assert!(tick.iter().all(|r| matches!(r, Err(SignalError::Decode { .. }))));
    }

    #[test]
    fn a_tick_failure_is_reported_for_every_event() {
        let tick = decode_all(2, Err(SignalError::Timeout(Duration::from_secs(1))), Utc::now());
        assert_eq!(tick.len(), 2);
        assert!(
            tick.iter()
                .all(|r| r == &Err(SignalError::Timeout(Duration::from_secs(1))))
        );
        let s = samples(&tick[0]);
        assert!(matches!(s.get(&Signal::QueueDepth), Some(Err(f)) if f.reason == "Timeout"));
    }
}
