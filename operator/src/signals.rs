//! Reads every event's scaling signals from Redis in one pipelined round trip per tick.
//!
//! Per event the pipeline holds `ZCARD queue`, `ZCARD prequeue`, `ZCOUNT active <now-ms> +inf`, `EXISTS sold-out`
//! and `HMGET counts sold held available total` — keys from [`tiketi_shared::keys::EventKeys`]
//! only. On a single Redis (or a replication group behind one endpoint) that is one pipeline for
//! all events; in cluster mode a pipeline may only touch one hash slot, so commands are grouped per
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

/// Commands the pipeline sends per event.
pub const COMMANDS_PER_EVENT: usize = 5;

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
                let reply = match tokio::time::timeout(timeout, pipe.query_async::<Vec<Value>>(conn)).await {
                    Err(_) => Err(SignalError::Timeout(timeout)),
                    Ok(Err(e)) => Err(SignalError::from_redis(&e, timeout)),
                    Ok(Ok(values)) => Ok(values),
                };
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
                            let reply = match tokio::time::timeout(
                                timeout,
                                pipe.query_async::<Vec<Value>>(&mut conn),
                            )
                            .await
                            {
                                Err(_) => Err(SignalError::Timeout(timeout)),
                                Ok(Err(e)) => Err(SignalError::from_redis(&e, timeout)),
                                Ok(Ok(values)) => Ok(values),
                            };
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

fn pipeline<'a>(events: impl ExactSizeIterator<Item = &'a str>, now: DateTime<Utc>) -> Pipeline {
    let now_ms = now.timestamp_millis().to_string();
    let mut pipe = Pipeline::with_capacity(events.len() * COMMANDS_PER_EVENT);
    pipe.ignore_errors();
    for e in events {
        let k = EventKeys::new(e);
        pipe.add_command(command("ZCARD", &k.queue(), &[]))
            .add_command(command("ZCARD", &k.prequeue(), &[]))
            .add_command(command("ZCOUNT", &k.active(), &[&now_ms, "+inf"]))
            .add_command(command("EXISTS", &k.sold_out(), &[]))
            .add_command(command(
                "HMGET",
                &k.counts(),
                &["sold", "held", "available", "total"],
            ));
    }
    pipe
}

/// `name key rest…` with its buffers sized up front: at 10,000 events a tick's pipeline is
/// 50,000 commands, and growing each command's buffers arg by arg cost more than writing them.
fn command(name: &str, key: &str, rest: &[&str]) -> redis::Cmd {
    let bytes = name.len() + key.len() + rest.iter().map(|a| a.len()).sum::<usize>();
    let mut cmd = redis::Cmd::with_capacity(2 + rest.len(), bytes);
    cmd.arg(name).arg(key);
    for a in rest {
        cmd.arg(*a);
    }
    cmd
}

/// The readings of `events` events from one pipeline's replies, in order.
fn decode_all(
    events: usize,
    reply: Result<Vec<Value>, SignalError>,
    now: DateTime<Utc>,
) -> Vec<Result<EventSignals, SignalError>> {
    match reply {
        Err(e) => vec![Err(e); events],
        Ok(values) => {
            let mut chunks = values.chunks(COMMANDS_PER_EVENT);
            (0..events)
                .map(|_| match chunks.next() {
                    Some(chunk) => decode_event(chunk, now),
                    None => Err(SignalError::Decode {
                        command: "pipeline",
                        reply: "missing replies".into(),
                    }),
                })
                .collect()
        }
    }
}

fn decode_event(chunk: &[Value], now: DateTime<Utc>) -> Result<EventSignals, SignalError> {
    let [zcard, zcard_pre, zcount, exists, counts] = chunk else {
        return Err(SignalError::Decode {
            command: "pipeline",
            reply: format!("{} replies", chunk.len()),
        });
    };
    let int = |command: &'static str, v: &Value| -> Result<u64, SignalError> {
        match v {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            Value::ServerError(e) => Err(SignalError::Redis(format!("{command}: {e}"))),
            other => Err(SignalError::Decode {
                command,
                reply: short(other),
            }),
        }
    };
    let queue_depth = int("ZCARD", zcard)?;
    let pre_queue_depth = int("ZCARD prequeue", zcard_pre)?;
    let active_users = int("ZCOUNT", zcount)?;
    let sold_out = int("EXISTS", exists)? > 0;
    let counts = match counts {
        Value::Array(fields) if fields.len() == 4 => {
            let field = |v: &Value| -> Result<Option<u64>, SignalError> {
                match v {
                    Value::Nil => Ok(None),
                    Value::BulkString(b) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Some)
                        .ok_or_else(|| SignalError::Decode {
                            command: "HMGET counts",
                            reply: short(v),
                        }),
                    Value::Int(n) if *n >= 0 => Ok(Some(*n as u64)),
                    other => Err(SignalError::Decode {
                        command: "HMGET counts",
                        reply: short(other),
                    }),
                }
            };
            Counts {
                sold: field(&fields[0])?,
                held: field(&fields[1])?,
                available: field(&fields[2])?,
                total: field(&fields[3])?,
            }
        }
        Value::ServerError(e) => return Err(SignalError::Redis(format!("HMGET counts: {e}"))),
        other => {
            return Err(SignalError::Decode {
                command: "HMGET counts",
                reply: short(other),
            });
        }
    };
    Ok(EventSignals {
        queue_depth,
        pre_queue_depth,
        active_users,
        sold_out,
        counts,
        observed_at: now,
    })
}

fn short(v: &Value) -> String {
    let mut s = format!("{v:?}");
    s.truncate(120);
    s
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

    #[test]
    fn decodes_a_full_event_reply() {
        let now = Utc::now();
        let chunk = [
            Value::Int(8_000),
            Value::Int(300),
            Value::Int(1_500),
            Value::Int(1),
            Value::Array(vec![
                Value::BulkString(b"590".to_vec()),
                Value::BulkString(b"10".to_vec()),
                Value::BulkString(b"0".to_vec()),
                Value::Nil,
            ]),
        ];
        let s = decode_event(&chunk, now).unwrap();
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
    fn a_server_error_fails_only_that_event() {
        let now = Utc::now();
        let ok = [
            Value::Int(1),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            Value::Array(vec![Value::Nil; 4]),
        ];
        let bad = [
            redis::parse_redis_value(
                b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            )
            .unwrap(),
            Value::Int(0),
            Value::Int(0),
            Value::Int(0),
            Value::Array(vec![Value::Nil; 4]),
        ];
        let values: Vec<Value> = ok.iter().chain(bad.iter()).cloned().collect();
        let tick = decode_all(2, Ok(values), now);
        assert!(tick[0].is_ok());
        let err = tick[1].clone().unwrap_err();
        assert_eq!(err.reason(), "RedisError");
        assert!(err.to_string().contains("ZCARD"), "{err}");
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
