//! Command line and environment. Every flag has a `TIKETI_*` variable; the operator sets those.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// `hold-seconds`, and prints how many opened.
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
        #[arg(long, default_value_t = 10)]
        hold_seconds: u64,
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
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: i64,
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
    #[arg(long, env = "TIKETI_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// Whether this replica competes for the admission lease.
    #[arg(long, env = "TIKETI_ADMISSION", default_value_t = true, action = clap::ArgAction::Set)]
    pub admission: bool,
    /// Admission loop period in milliseconds.
    #[arg(long, env = "TIKETI_ADMISSION_TICK_MS", default_value_t = 100)]
    pub admission_tick_ms: u64,
    /// Admission lease time-to-live; a dead leader is replaced within about this long.
    #[arg(long, env = "TIKETI_LEASE_TTL_MS", default_value_t = 3000)]
    pub lease_ttl_ms: u64,
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
    /// Stream ticker period in milliseconds (how often positions are pushed).
    #[arg(long, env = "TIKETI_STREAM_TICK_MS", default_value_t = 1000)]
    pub stream_tick_ms: u64,
    /// Streams whose exact rank is re-read per event per tick, at most.
    #[arg(long, env = "TIKETI_STREAM_REFRESH_BUDGET", default_value_t = 1000)]
    pub stream_refresh_budget: usize,
    /// Open streams per process, at most; beyond it new streams get 503 (clients fall back to polling).
    #[arg(long, env = "TIKETI_MAX_STREAMS", default_value_t = 50_000)]
    pub max_streams: usize,
    /// On SIGTERM, how long /readyz reports not-ready before the listener closes.
    #[arg(long, env = "TIKETI_DRAIN_DELAY_MS", default_value_t = 3000)]
    pub drain_delay_ms: u64,
    /// On SIGTERM, how long in-flight requests get to finish before the process exits anyway.
    #[arg(long, env = "TIKETI_SHUTDOWN_TIMEOUT_MS", default_value_t = 20_000)]
    pub shutdown_timeout_ms: u64,
    /// Identity of this replica in the admission lease (default: hostname, pid and a random suffix).
    #[arg(long, env = "TIKETI_REPLICA_ID")]
    pub replica_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
