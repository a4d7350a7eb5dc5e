//! Command line and environment. Every flag has a `TIKETI_*` variable; the operator sets those.
//! Durations are written with a unit (`250ms`, `2s`, `1m`; `tiketi_shared::config::parse_duration`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tiketi_shared::config::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "tiketi-queue",
    version,
    about = "tiketi's waiting room",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The tools alone (gen-tokens, bench-*), parsed before [`Cli`]: they need none of the serve
/// flags, so a missing `TIKETI_REDIS_URL` does not stop them.
#[derive(Debug, Parser)]
#[command(name = "tiketi-queue")]
pub struct Tools {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmark baseline: an axum server on the same runtime whose join route does nothing.
    #[command(hide = true)]
    BenchEmpty {
        #[arg(long, env = "TIKETI_LISTEN", default_value = "127.0.0.1:8089")]
        listen: SocketAddr,
    },
    /// Opens `count` SSE streams with the tokens in `tokens` (one a line), holds them for
    /// `hold`, and prints how many opened.
    #[command(hide = true)]
    BenchStreams {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        event: String,
        #[arg(long)]
        tokens: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Prints `count` user JWTs (one a line) for load generators; users are `<prefix><n>`.
    #[command(hide = true)]
    GenTokens {
        #[arg(long, env = "TIKETI_JWT_SECRET")]
        secret: String,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value = "bench-user-")]
        prefix: String,
        /// How long the tokens are valid.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = "TIKETI_LISTEN", default_value = "[::]:8080")]
    pub listen: SocketAddr,
    /// Redis: URL, cluster mode, TLS and its CA (the same flags in every tiketi part).
    #[command(flatten)]
    pub redis: tiketi_shared::redis::RedisArgs,
    /// HS256 key that verifies the platform's user tokens (`sub` = user id).
    /// Required to serve.
    #[arg(long, env = "TIKETI_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Key that signs admission tokens (the reservation service verifies them with the same key).
    /// Required to serve.
    #[arg(long, env = "TIKETI_ADMISSION_SECRET", hide_env_values = true)]
    pub admission_secret: Option<String>,
    /// Event configuration: a JSON file (one object or an array) or a directory of `*.json`.
    /// Reloaded when it changes. Without it the service runs with no events.
    #[arg(long, env = "TIKETI_EVENT_CONFIG")]
    pub event_config: Option<PathBuf>,
    /// Upper bound on every Redis call; beyond it the request gets 503 with Retry-After.
    #[arg(long, env = "TIKETI_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub redis_timeout: Duration,
    /// Whether this replica competes for the admission lease.
    #[arg(long, env = "TIKETI_ADMISSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub admission: bool,
    /// Admission loop period (at least 10ms).
    #[arg(long, env = "TIKETI_ADMISSION_TICK", default_value = "100ms", value_parser = parse_duration)]
    pub admission_tick: Duration,
    /// Admission lease time-to-live (at least 500ms); a dead leader is replaced within about this long.
    #[arg(long, env = "TIKETI_LEASE_TTL", default_value = "3s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Requests per second allowed per user (token bucket, burst twice this).
    #[arg(long, env = "TIKETI_RATE_LIMIT_USER", default_value_t = 10)]
    pub rate_limit_user: u32,
    /// Requests per second allowed per client address (burst twice this).
    #[arg(long, env = "TIKETI_RATE_LIMIT_IP", default_value_t = 200)]
    pub rate_limit_ip: u32,
    /// Proxies in front of the service that append to `X-Forwarded-For` (1 behind an ALB): the
    /// client address is the entry that many hops from the right; 0 ignores the header and uses
    /// the TCP peer. Entries left of it are written by the client and never trusted.
    #[arg(long, env = "TIKETI_TRUSTED_PROXY_HOPS", default_value_t = 0)]
    pub trusted_proxy_hops: u32,
    /// Stream ticker period (how often positions are pushed; at least 50ms).
    #[arg(long, env = "TIKETI_STREAM_TICK", default_value = "1s", value_parser = parse_duration)]
    pub stream_tick: Duration,
    /// Streams whose exact rank is re-read per event per tick, at most.
    #[arg(long, env = "TIKETI_STREAM_REFRESH_BUDGET", default_value_t = 1000)]
    pub stream_refresh_budget: usize,
    /// Open streams per process, at most; beyond it new streams get 503 (clients fall back to polling).
    #[arg(long, env = "TIKETI_MAX_STREAMS", default_value_t = 50_000)]
    pub max_streams: usize,
    /// On SIGTERM, how long /readyz reports not-ready before the listener closes.
    #[arg(long, env = "TIKETI_DRAIN_DELAY", default_value = "3s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// On SIGTERM, how long in-flight requests get to finish once the listener has closed, before
    /// the process exits anyway.
    #[arg(long, env = "TIKETI_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Identity of this replica in the admission lease (default: hostname, pid and a random suffix).
    #[arg(long, env = "TIKETI_REPLICA_ID")]
    pub replica_id: Option<String>,
}

/// The variables that took milliseconds before the durations took units, and their new names.
const RENAMED: [(&str, &str); 6] = [
    ("TIKETI_REDIS_TIMEOUT_MS", "TIKETI_REDIS_TIMEOUT"),
    ("TIKETI_ADMISSION_TICK_MS", "TIKETI_ADMISSION_TICK"),
    ("TIKETI_LEASE_TTL_MS", "TIKETI_LEASE_TTL"),
    ("TIKETI_STREAM_TICK_MS", "TIKETI_STREAM_TICK"),
    ("TIKETI_DRAIN_DELAY_MS", "TIKETI_DRAIN_DELAY"),
    ("TIKETI_SHUTDOWN_TIMEOUT_MS", "TIKETI_SHUTDOWN_TIMEOUT"),
];

/// Refuses to start when a renamed `*_MS` variable is set: it would be ignored silently and its
/// default used instead.
pub fn refuse_renamed_variables(var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    let set: Vec<String> = RENAMED
        .iter()
        .filter_map(|(old, new)| {
            let ms = var(old)?;
            Some(format!("{old}={ms} is now {new}={ms}ms"))
        })
        .collect();
    if set.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "renamed variables (durations take a unit now, like \"250ms\" or \"2s\"): {}",
            set.join(", ")
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_a_unit_and_keep_their_defaults() {
        let cli = Cli::try_parse_from(["tiketi-queue", "--redis-url=redis://x"]).unwrap();
        let s = cli.serve;
        assert_eq!(s.listen.to_string(), "[::]:8080", "dual-stack by default");
        assert_eq!(s.redis_timeout, Duration::from_secs(1));
        assert_eq!(s.admission_tick, Duration::from_millis(100));
        assert_eq!(s.lease_ttl, Duration::from_secs(3));
        assert_eq!(s.stream_tick, Duration::from_secs(1));
        assert_eq!(s.drain_delay, Duration::from_secs(3));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(20));
        let cli = Cli::try_parse_from([
            "tiketi-queue",
            "--redis-url=redis://x",
            "--redis-timeout=250ms",
            "--drain-delay=0",
        ])
        .unwrap();
        assert_eq!(cli.serve.redis_timeout, Duration::from_millis(250));
        assert_eq!(cli.serve.drain_delay, Duration::ZERO);
        let err = Cli::try_parse_from(["tiketi-queue", "--redis-url=redis://x", "--redis-timeout=1000"])
            .unwrap_err();
        assert!(err.to_string().contains("\"250ms\""), "{err}");
    }

    #[test]
    fn the_old_millisecond_variables_are_refused_by_name() {
        assert!(refuse_renamed_variables(|_| None).is_ok());
        let err =
            refuse_renamed_variables(|v| (v == "TIKETI_DRAIN_DELAY_MS").then(|| "0".to_owned())).unwrap_err();
        assert!(
            err.contains("TIKETI_DRAIN_DELAY_MS=0 is now TIKETI_DRAIN_DELAY=0ms"),
            "{err}"
        );
    }
}
