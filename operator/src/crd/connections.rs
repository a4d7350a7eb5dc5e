//! References to the Secrets and endpoints the services use (Redis, PostgreSQL, auth, Prometheus).

#[allow(unused_imports)]
use super::*;

// === connections ===

/// A key in a Secret in the event's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret (same namespace as the TicketingEvent).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Redis both services use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.caSecretRef) || self.tls")
    .message("caSecretRef is a CA for TLS: set tls: true with it"))]
pub struct RedisSpec {
    /// Secret key holding the Redis URL (redis:// or rediss:// with credentials), e.g.
    /// {name: tiketi-redis, key: url}. Passed to the pods as TIKETI_REDIS_URL.
    pub url_secret_ref: SecretKeySelector,
    /// Connect with TLS and verify the server's certificate (a redis:// URL is upgraded to
    /// rediss://). ElastiCache with in-transit encryption: true.
    #[serde(default)]
    pub tls: bool,
    /// Redis Cluster mode: the URL is any node (ElastiCache: the configuration endpoint) and the
    /// services and the operator use a cluster client (all keys of an event share one hash tag,
    /// so every script and pipeline stays on one slot).
    #[serde(default)]
    pub cluster_mode: bool,
    /// Secret key holding the PEM bundle of the CAs that sign the Redis server's certificate,
    /// for a self-managed Redis with a private CA (ElastiCache needs none: Amazon's roots are
    /// built in). Mounted into the pods (TIKETI_REDIS_CA_FILE) and used by the operator's own
    /// signal reader. Only with `tls: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeySelector>,
}

/// The reservation database.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// The Secret with the PostgreSQL URLs (user and password inside them): key `url` (writer
    /// endpoint, required) and key `readUrl` (reader endpoint, optional; the reservation service
    /// uses it for lag-tolerant reads).
    pub secret_ref: SecretRef,
}

/// A Secret in the event's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Signing and verifying keys.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret with key `jwtSecret` (HS256 key verifying users' bearer JWTs) and key
    /// `admissionSecret` (HS256 key signing admission tokens, shared by queue and reservation).
    pub secret_ref: SecretRef,
}

/// Prometheus for signals of kind prometheus.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.
    #[schemars(regex(pattern = r"^https?://"), length(max = 2048))]
    pub url: String,
}

/// Secret key names the operator reads (documented in the README).
pub mod secret_keys {
    pub const DATABASE_URL: &str = "url";
    pub const DATABASE_READ_URL: &str = "readUrl";
    pub const JWT_SECRET: &str = "jwtSecret";
    pub const ADMISSION_SECRET: &str = "admissionSecret";
}
