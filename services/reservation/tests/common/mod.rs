//! Test harness: a fresh PostgreSQL database per test (created through DATABASE_URL, dropped at
//! the end), unique event ids on the shared Redis (REDIS_URL), the service in-process or as the
//! real binary, and token minting (the tests play the platform and the queue).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tiketi_reservation::Settings;
use tiketi_shared::token::{AdmissionKeys, sign_user_token};

pub const JWT_SECRET: &str = "test-user-secret-of-at-least-32-bytes";
pub const ADMISSION_SECRET: &str = "test-admission-secret-of-32-bytes-or-more";

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL superuser/CREATEDB URL (eval \"$(e2e/stack env)\")")
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL must point at a Redis server (eval \"$(e2e/stack env)\")")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// A database created for one test; call [`TestDb::drop_db`] at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin: String,
    dropped: bool,
}

impl TestDb {
    pub async fn create(prefix: &str) -> Self {
        let admin = database_url();
        let name = unique(prefix).replace('-', "_");
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        conn.close().await.ok();
        let mut url = Url::parse(&admin).expect("DATABASE_URL is a URL");
        url.set_path(&format!("/{name}"));
        Self {
            name,
            url: url.to_string(),
            admin,
            dropped: false,
        }
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect test db")
    }

    pub async fn drop_db(mut self) {
        drop_database(&self.admin, &self.name).await;
        self.dropped = true;
    }
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

/// A test that failed before `drop_db` still removes its database (on a thread of its own, since
/// this may run while a panic unwinds out of the test's runtime).
impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(drop_database(&admin, &name));
            }
        })
        .join();
    }
}

/// Writes an event configuration file (one section of `rows` × `per_row` seats).
pub fn write_config(event: &str, rows: u32, per_row: u32, hold_ttl: u64, max_per_user: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiketi-resv-{}", unique("cfg")));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("event.json");
    write_config_at(&path, event, rows, per_row, hold_ttl, max_per_user);
    path
}

pub fn write_config_at(
    path: &std::path::Path,
    event: &str,
    rows: u32,
    per_row: u32,
    hold_ttl: u64,
    max_per_user: u32,
) {
    let cfg = json!({
        "eventId": event,
        "onSaleAt": "2026-01-01T00:00:00Z",
        "reservation": {"holdTtlSeconds": hold_ttl, "maxSeatsPerUser": max_per_user},
        "inventory": {"sections": [{"name": "A", "rows": rows, "seatsPerRow": per_row, "priceTier": "std"}]}
    });
    std::fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
}

/// Writes an event configuration file as given (for fields `write_config` does not set).
pub fn write_config_value(cfg: &Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tiketi-resv-{}", unique("cfg")));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("event.json");
    std::fs::write(&path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
    path
}

pub fn settings(db_url: &str, redis: &str, config: &std::path::Path) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        redis: tiketi_shared::redis::RedisArgs::new(redis),
        jwt_secret: JWT_SECRET.into(),
        admission_secret: ADMISSION_SECRET.into(),
        event_config: config.to_path_buf(),
        database_url: db_url.to_owned(),
        database_read_url: None,
        database_max_connections: 8,
        claim_batch: 64,
        redis_timeout: Duration::from_secs(2),
        database_timeout: Duration::from_secs(5),
        read_cache_ttl: Duration::from_millis(200),
        max_inflight: 256,
        drain_delay: Duration::from_millis(0),
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// The service running inside the test process.
pub struct InProcess {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start(settings: Settings) -> Self {
        let s = Self::spawn(settings).await;
        wait_ready(&s.base, Duration::from_secs(30)).await;
        s
    }

    /// Starts the service without waiting for it to be ready (its dependencies may be broken).
    pub async fn spawn(settings: Settings) -> Self {
        tiketi_shared::telemetry::init("warn,tower_http=off");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tiketi_reservation::server::serve(
            settings,
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            base,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

pub async fn wait_ready(base: &str, within: Duration) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = client
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base} did not become ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` until it returns Some, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn user_token(user: &str) -> String {
    sign_user_token(JWT_SECRET.as_bytes(), user, chrono::Utc::now().timestamp() + 3600).unwrap()
}

pub fn admission_token(event: &str, user: &str) -> String {
    let now = chrono::Utc::now().timestamp_millis();
    AdmissionKeys::new(ADMISSION_SECRET.as_bytes())
        .issue(event, user, now, now + 600_000)
        .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A user of the API with their tokens.
#[derive(Clone)]
pub struct User {
    pub id: String,
    pub bearer: String,
    pub admission: String,
}

impl User {
    pub fn new(event: &str, id: &str) -> Self {
        Self {
            id: id.to_owned(),
            bearer: format!("Bearer {}", user_token(id)),
            admission: admission_token(event, id),
        }
    }

    pub async fn hold(
        &self,
        c: &reqwest::Client,
        base: &str,
        event: &str,
        seats: &[String],
    ) -> reqwest::Result<(StatusCode, Value)> {
        let r = c
            .post(format!("{base}/v1/events/{event}/holds"))
            .header("authorization", &self.bearer)
            .header("x-admission-token", &self.admission)
            .json(&json!({ "seats": seats }))
            .send()
            .await?;
        let s = r.status();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn confirm(
        &self,
        c: &reqwest::Client,
        base: &str,
        hold: &str,
        key: &str,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let r = c
            .post(format!("{base}/v1/holds/{hold}/confirm"))
            .header("authorization", &self.bearer)
            .header("idempotency-key", key)
            .send()
            .await?;
        let s = r.status();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn release(&self, c: &reqwest::Client, base: &str, hold: &str) -> reqwest::Result<StatusCode> {
        Ok(c.delete(format!("{base}/v1/holds/{hold}"))
            .header("authorization", &self.bearer)
            .send()
            .await?
            .status())
    }
}

/// The service's `/metrics` text.
pub async fn metrics_text(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub async fn availability(c: &reqwest::Client, base: &str, event: &str) -> Value {
    let url = format!("{base}/v1/events/{event}/availability");
    let (s, v) = until_answered("availability", || async {
        let r = c.get(&url).send().await?;
        let s = r.status();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    })
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

pub async fn seat_status(c: &reqwest::Client, base: &str, event: &str, seat: &str) -> String {
    let r = c
        .get(format!("{base}/v1/events/{event}/seats"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["seats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == seat)
        .unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A private redis-server child on a free port, for tests that flush or stop Redis (the
/// process itself is `tiketi_e2e::PrivateRedis`).
pub struct PrivateRedis {
    pub url: String,
    server: tiketi_e2e::PrivateRedis,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let server = tokio::task::spawn_blocking(|| tiketi_e2e::PrivateRedis::start(&[]))
            .await
            .unwrap()
            .expect("redis-server on PATH");
        Self {
            url: server.url(),
            server,
        }
    }

    pub async fn flushall(&self) {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open, nothing answers.
    pub fn signal(&self, sig: &str) {
        self.server.signal(sig).unwrap();
    }

    pub async fn stop(self) {
        drop(self.server);
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Rows of (seat, bookings) where a seat has more than one live booking: must always be empty.
pub async fn double_bookings(pool: &PgPool, event: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT seat_id, count(*) FROM order_lines WHERE event_id = $1 AND live GROUP BY seat_id HAVING count(*) > 1",
    )
    .bind(event)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Deletes every key of an event (tests share one Redis).
pub async fn cleanup_redis(url: &str, event: &str) {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let pattern = format!(
        "{}*",
        tiketi_shared::keys::EventKeys::new(event)
            .counts()
            .trim_end_matches("counts")
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    for chunk in keys.chunks(500) {
        let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
    }
}

/// Repeats a call while the service sheds load (503) or the connection fails, like a real client.
pub async fn until_answered<F, Fut>(what: &str, mut f: F) -> (StatusCode, Value)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Result<(StatusCode, Value)>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: no answer but 503 for 60 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(r) => return r,
        }
    }
}
