//! Shared helpers for the queue's integration tests: real Redis from REDIS_URL, an in-process
//! server (or the built binary), unique event ids, tokens, and condition waits.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tiketi_queue::cli::ServeArgs;
use tiketi_shared::keys::EventKeys;

pub const JWT_SECRET: &str = "test-user-secret-of-at-least-32-bytes";
pub const ADMISSION_SECRET: &str = "test-admission-secret-of-32-bytes-or-more";

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect(
        "REDIS_URL is not set: the queue's integration tests need a real Redis (eval \"$(e2e/stack env)\")",
    )
}

pub fn unique_event(prefix: &str) -> String {
    format!("t-{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn user_token(user: &str) -> String {
    tiketi_shared::token::sign_user_token(JWT_SECRET.as_bytes(), user, Utc::now().timestamp() + 3600).unwrap()
}

pub async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes every key of the event (its keys share the hash tag, so a SCAN on the prefix finds them).
pub async fn cleanup(url: &str, event: &str) {
    let mut c = redis(url).await;
    let pattern = format!("tiketi:{{{event}}}:*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut c).await.unwrap();
    }
}

pub struct EventSpec {
    pub event: String,
    pub on_sale_at: DateTime<Utc>,
    pub rate_per_second: u32,
    pub max_active: u32,
    pub token_ttl_seconds: u64,
    pub heartbeat_timeout_seconds: u64,
}

impl EventSpec {
    pub fn new(event: &str) -> Self {
        Self {
            event: event.to_owned(),
            on_sale_at: Utc::now() - chrono::Duration::hours(1),
            rate_per_second: 50,
            max_active: 1000,
            token_ttl_seconds: 600,
            heartbeat_timeout_seconds: 120,
        }
    }

    pub fn json(&self) -> String {
        serde_json::json!({
            "eventId": self.event,
            "onSaleAt": self.on_sale_at.to_rfc3339(),
            "queue": {
                "ratePerSecond": self.rate_per_second,
                "maxActive": self.max_active,
                "tokenTtlSeconds": self.token_ttl_seconds,
                "heartbeatTimeoutSeconds": self.heartbeat_timeout_seconds,
            }
        })
        .to_string()
    }

    /// Writes the config into a fresh temp directory and returns the file path.
    pub fn write(&self) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tiketi-queue-test-{}", self.event));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("event.json");
        std::fs::write(&path, self.json()).unwrap();
        path
    }
}

pub fn args(redis_url: &str, config: Option<PathBuf>) -> ServeArgs {
    ServeArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        redis: tiketi_shared::redis::RedisArgs::new(redis_url),
        jwt_secret: Some(JWT_SECRET.to_owned()),
        admission_secret: Some(ADMISSION_SECRET.to_owned()),
        event_config: config,
        redis_timeout: Duration::from_secs(1),
        admission: true,
        admission_tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(2),
        rate_limit_user: 10_000,
        rate_limit_ip: 100_000,
        trusted_proxy_hops: 0,
        stream_tick: Duration::from_millis(200),
        stream_refresh_budget: 1000,
        max_streams: 10_000,
        drain_delay: Duration::ZERO,
        shutdown_timeout: Duration::from_secs(5),
        replica_id: None,
    }
}

/// An in-process server on a free port; stops when dropped (or via `stop`).
pub struct Server {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(args: ServeArgs) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(tiketi_queue::server::serve(args, listener, async move {
            let _ = rx.await;
        }));
        let s = Self {
            base,
            stop: Some(tx),
            handle: Some(handle),
        };
        let client = reqwest::Client::new();
        wait_for("server health", Duration::from_secs(10), || {
            let c = client.clone();
            let url = format!("{}/healthz", s.base);
            async move {
                c.get(url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .await;
        s
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub event: String,
}

impl Api {
    pub fn new(base: &str, event: &str) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Self {
            client,
            base: base.to_owned(),
            event: event.to_owned(),
        }
    }

    fn queue(&self, suffix: &str) -> String {
        format!("{}/v1/events/{}/queue{}", self.base, self.event, suffix)
    }

    pub async fn join(&self, user: &str) -> reqwest::Response {
        self.client
            .post(self.queue(""))
            .bearer_auth(user_token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn me(&self, user: &str) -> reqwest::Response {
        self.client
            .get(self.queue("/me"))
            .bearer_auth(user_token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn me_json(&self, user: &str) -> serde_json::Value {
        let r = self.me(user).await;
        assert_eq!(r.status(), 200, "GET /me for {user}");
        r.json().await.unwrap()
    }

    pub async fn leave(&self, user: &str) -> reqwest::Response {
        self.client
            .delete(self.queue("/me"))
            .bearer_auth(user_token(user))
            .send()
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.client
            .get(self.queue("/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn stream_url(&self) -> String {
        self.queue("/me/stream")
    }

    /// Opens `user`'s event stream (the response; its body is the stream).
    pub async fn stream(&self, user: &str) -> reqwest::Response {
        self.client
            .get(self.stream_url())
            .bearer_auth(user_token(user))
            .send()
            .await
            .unwrap()
    }
}

pub fn keys(event: &str) -> EventKeys {
    EventKeys::new(event)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
