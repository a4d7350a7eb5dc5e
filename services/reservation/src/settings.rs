//! Command-line flags, each also read from its `TIKETI_*` environment variable (the operator sets
//! the variables). Only the contract variables are required; the rest are tuning knobs with
//! defaults a platform engineer rarely needs to touch. Durations are written with a unit (`250ms`,
//! `2s`, `1m`; `tiketi_shared::config::parse_duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tiketi_shared::config::parse_duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "tiketi-reservation",
    version,
    about = "tiketi's reservation service: seat holds and orders"
)]
pub struct Settings {
    /// Address the HTTP server listens on.
    #[arg(long, env = "TIKETI_LISTEN", default_value = "[::]:8080")]
    pub listen: SocketAddr,

    /// Redis holding seat locks and hold records: URL, cluster mode, TLS and its CA (the same
    /// flags in every tiketi part).
    #[command(flatten)]
    pub redis: tiketi_shared::redis::RedisArgs,

    /// HS256 secret verifying the platform's user tokens (bearer JWT, `sub` = user id).
    #[arg(long, env = "TIKETI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// HS256 secret verifying admission tokens issued by the queue.
    #[arg(long, env = "TIKETI_ADMISSION_SECRET", hide_env_values = true)]
    pub admission_secret: String,

    /// Event configuration: a JSON file (one object or an array) or a directory of `*.json` files.
    #[arg(long, env = "TIKETI_EVENT_CONFIG")]
    pub event_config: PathBuf,

    /// PostgreSQL writer URL (Aurora cluster endpoint); `sslmode=require` or `verify-full` for TLS.
    #[arg(long, env = "TIKETI_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Optional PostgreSQL reader URL (Aurora reader endpoint) for reads that tolerate lag.
    #[arg(long, env = "TIKETI_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// Most connections each database pool opens.
    #[arg(long, env = "TIKETI_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Most holds one PostgreSQL claim statement decides (group commit: the claims of concurrent
    /// holds share a statement and a commit, each hold still answered on its own); 1 decides
    /// every hold alone. It bounds the confirms' batches too (their reads, and their decisions
    /// at most 32).
    #[arg(long, env = "TIKETI_CLAIM_BATCH", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub claim_batch: u16,

    /// Most API requests worked on at once; more wait up to the Redis timeout, then get 503 with
    /// Retry-After. Keeps a burst from piling thousands of calls onto Redis and the pool.
    #[arg(long, env = "TIKETI_MAX_INFLIGHT", default_value_t = 256)]
    pub max_inflight: usize,

    /// Bound on each Redis command; past it the request fails fast with 503.
    #[arg(long, env = "TIKETI_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,

    /// Bound on each PostgreSQL call (including waiting for a pooled connection).
    #[arg(long, env = "TIKETI_DATABASE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_timeout: Duration,

    /// How long seat maps and availability counts are cached.
    #[arg(long, env = "TIKETI_READ_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
    pub read_cache_ttl: Duration,

    /// After SIGTERM, how long `/readyz` reports not-ready before the listener closes, so load
    /// balancers stop sending new requests first.
    #[arg(long, env = "TIKETI_DRAIN_DELAY", default_value = "2s", value_parser = parse_duration)]
    pub drain_delay: Duration,

    /// Upper bound on draining in-flight requests after the listener closes.
    #[arg(long, env = "TIKETI_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Settings::command().debug_assert();
    }

    #[test]
    fn defaults_and_durations() {
        let s = Settings::try_parse_from([
            "tiketi-reservation",
            "--redis-url=redis://x",
            "--jwt-secret=a",
            "--admission-secret=b",
            "--event-config=/tmp/e.json",
            "--database-url=postgres://x",
        ])
        .unwrap();
        assert_eq!(s.listen.to_string(), "[::]:8080");
        assert_eq!(s.redis_timeout, Duration::from_secs(1));
        assert_eq!(s.database_timeout, Duration::from_secs(3));
        assert_eq!(s.read_cache_ttl, Duration::from_secs(1));
        assert_eq!(s.drain_delay, Duration::from_secs(2));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
        assert!(s.database_read_url.is_none());
        assert_eq!(s.claim_batch, 64);
        let with = |flag: &str| {
            Settings::try_parse_from([
                "tiketi-reservation",
                "--redis-url=redis://x",
                "--jwt-secret=a",
                "--admission-secret=b",
                "--event-config=/tmp/e.json",
                "--database-url=postgres://x",
                flag,
            ])
        };
        assert_eq!(
            with("--redis-timeout=250ms").unwrap().redis_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(
            with("--database-timeout=1m").unwrap().database_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(with("--drain-delay=0").unwrap().drain_delay, Duration::ZERO);
        // A bare number is refused (it was seconds here and milliseconds in the queue before).
        let err = with("--shutdown-timeout=20").unwrap_err().to_string();
        assert!(err.contains("\"2s\""), "{err}");
        assert!(with("--read-cache-ttl=soon").is_err());
        assert_eq!(with("--claim-batch=1").unwrap().claim_batch, 1);
        assert!(with("--claim-batch=0").is_err());
    }
}
