//! The one way tiketi's parts connect to Redis: a single node (ElastiCache with cluster mode
//! disabled, the primary endpoint) or a Redis Cluster (cluster mode enabled, the configuration
//! endpoint), in plain text or TLS, with the AUTH token or an ACL user in the URL.
//!
//! Both kinds connect lazily and reconnect by themselves: creating a [`RedisConn`] never waits for
//! Redis, so a service starts (and answers its health probe) while Redis is still down, and every
//! call made while it is down fails within the caller's own timeout. On a cluster, MOVED and ASK
//! replies and the promotion of a replica are followed by the client (it refreshes the slot map),
//! so a shard failover costs the calls made during it, not a restart.
//!
//! Every key tiketi writes carries the event's hash tag (`tiketi:{<event>}:…`, see
//! `docs/contracts.md`), so each script and pipeline touches one slot and runs unchanged on a
//! cluster. Several events in one pipeline are only safe on a single node: a caller that batches
//! across events groups them by [`slot_of`] when [`RedisConn::is_cluster`] says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClientBuilder, ClusterConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::keys::EventKeys;

/// Where Redis is and how to reach it; the same flags and variables in every service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, clap::Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://[user:password@]host:port` or `rediss://…` for TLS. With cluster mode,
    /// any node (ElastiCache: the configuration endpoint); the topology is discovered.
    #[arg(long = "redis-url", env = "TIKETI_REDIS_URL")]
    pub url: String,
    /// The URL names a Redis Cluster (ElastiCache cluster mode enabled).
    #[arg(long = "redis-cluster", env = "TIKETI_REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub cluster: bool,
    /// Connect with TLS and verify the server, even if the URL says `redis://`.
    #[arg(long = "redis-tls", env = "TIKETI_REDIS_TLS", default_value_t = false, action = clap::ArgAction::Set)]
    pub tls: bool,
    /// PEM bundle of the certificate authorities that may sign the server's certificate. Without
    /// it the public web roots built into the binary are used (they include Amazon's, which sign
    /// ElastiCache's certificates).
    #[arg(long = "redis-ca-file", env = "TIKETI_REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// The same bundle held in memory (the operator reads it from an event's Secret); it takes
    /// precedence over `ca_file`. Not a flag.
    #[arg(skip)]
    pub ca_pem: Option<Vec<u8>>,
}

impl RedisArgs {
    /// A single-node, plain-text target (tests and tools).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            tls: false,
            ca_file: None,
            ca_pem: None,
        }
    }

    /// The target as one line for logs: scheme, host and port, never the password.
    pub fn describe(&self) -> String {
        let url = effective_url(&self.url, self.tls);
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url.as_str()));
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split(['/', '?', '#']).next().unwrap_or(host);
        let kind = if self.cluster { "cluster" } else { "single node" };
        format!("{scheme}://{host} ({kind})")
    }
}

/// Why a Redis target cannot be used at all (a configuration error, reported at start-up).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("TIKETI_REDIS_URL is not a Redis URL ({0}); expected redis://host:port or rediss://host:port")]
    Url(String),
    #[error(
        "TIKETI_REDIS_URL asks not to verify the server's certificate (#insecure); tiketi always verifies it (give the CA with TIKETI_REDIS_CA_FILE)"
    )]
    Insecure,
    #[error("TIKETI_REDIS_CA_FILE {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// A connection to a single node or a cluster. Cheap to clone (both multiplex one connection
/// per node); implements [`ConnectionLike`], so commands, scripts and pipelines run on it as on
/// any redis-rs connection.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_cluster() {
            "RedisConn::Cluster"
        } else {
            "RedisConn::Single"
        })
    }
}

impl RedisConn {
    /// Builds the connection without contacting Redis. `timeout` bounds each connection attempt
    /// and each reply (callers add their own overall bound).
    pub fn connect_lazy(args: &RedisArgs, timeout: Duration) -> Result<Self, ConfigError> {
        let url = effective_url(&args.url, args.tls);
        if url.contains("#insecure") {
            return Err(ConfigError::Insecure);
        }
        let certs = match &args.ca_pem {
            Some(pem) => Some(check_ca(pem, |reason| ConfigError::CaFile {
                path: PathBuf::from("(in memory)"),
                reason,
            })?),
            None => args.ca_file.as_deref().map(read_ca).transpose()?,
        };
        if args.cluster {
            let mut builder = ClusterClientBuilder::new(vec![url.as_str()])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .max_retry_wait(500);
            if let Some(root_cert) = certs {
                builder = builder.certs(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                });
            }
            let client = builder.build().map_err(|e| ConfigError::Url(e.to_string()))?;
            let config = ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            Ok(Self::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        } else {
            let client = match certs {
                Some(root_cert) => ::redis::Client::build_with_tls(
                    url.as_str(),
                    TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                ),
                None => ::redis::Client::open(url.as_str()),
            }
            .map_err(|e| ConfigError::Url(e.to_string()))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            ConnectionManager::new_lazy_with_config(client, config)
                .map(Self::Single)
                .map_err(|e| ConfigError::Url(e.to_string()))
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// `rediss://` when TLS is asked for by the flag; the URL's own `rediss://` always means TLS.
fn effective_url(url: &str, tls: bool) -> String {
    match url.strip_prefix("redis://") {
        Some(rest) if tls => format!("rediss://{rest}"),
        _ => url.to_owned(),
    }
}

fn read_ca(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let fail = |reason: String| ConfigError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    check_ca(&pem, fail)
}

/// True when `pem` holds at least one PEM certificate (what a CA bundle must).
pub fn holds_pem_certificate(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

/// `pem` when it holds at least one PEM certificate.
fn check_ca(pem: &[u8], fail: impl Fn(String) -> ConfigError) -> Result<Vec<u8>, ConfigError> {
    if !holds_pem_certificate(pem) {
        return Err(fail(
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(pem.to_vec())
}

/// The cluster hash slot of an event's keys (they all share its hash tag,
/// [`EventKeys::hash_tag`]): CRC16 (XMODEM) of what is inside the braces, modulo 16,384, as Redis
/// computes it.
pub fn slot_of(event_id: &str) -> u16 {
    let keys = EventKeys::new(event_id);
    let tag = keys.hash_tag().trim_start_matches('{').trim_end_matches('}');
    let mut crc: u16 = 0;
    for b in tag.as_bytes() {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_flag_upgrades_the_scheme_and_rediss_stays_tls() {
        assert_eq!(effective_url("redis://h:6379", true), "rediss://h:6379");
        assert_eq!(effective_url("redis://h:6379", false), "redis://h:6379");
        assert_eq!(effective_url("rediss://h:6379", false), "rediss://h:6379");
    }

    #[test]
    fn describe_never_shows_the_password() {
        let mut a = RedisArgs::new("redis://app:s3cret@cache.example:6379/0");
        a.tls = true;
        a.cluster = true;
        let d = a.describe();
        assert_eq!(d, "rediss://cache.example:6379 (cluster)");
        assert!(!d.contains("s3cret"));
    }

    #[test]
    fn bad_targets_are_named() {
        let t = Duration::from_secs(1);
        let err = RedisConn::connect_lazy(&RedisArgs::new("http://nope"), t).unwrap_err();
        assert!(matches!(err, ConfigError::Url(_)), "{err}");
        let err = RedisConn::connect_lazy(&RedisArgs::new("rediss://h:1/#insecure"), t).unwrap_err();
        assert!(matches!(err, ConfigError::Insecure), "{err}");
        let mut a = RedisArgs::new("rediss://h:1");
        a.ca_file = Some("/nonexistent/ca.pem".into());
        let err = RedisConn::connect_lazy(&a, t).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("tiketi-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        a.ca_file = Some(file);
        let err = RedisConn::connect_lazy(&a, t).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn slots_match_redis() {
        // CLUSTER KEYSLOT values from a real Redis (and the Redis Cluster specification's example).
        assert_eq!(slot_of("123456789"), 12_739);
        assert_eq!(slot_of("foo"), 12_182);
        assert_eq!(slot_of("bar"), 5_061);
    }
}
