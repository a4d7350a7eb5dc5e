//! Tests against the real `tiketi-reservation` binary: SIGKILL in the middle of confirms with
//! clients retrying their Idempotency-Keys (no lost, no duplicated order), three replicas
//! starting at once (migrations applied exactly once), and a start with unreachable dependencies
//! (probes and OpenAPI answer, business calls fail fast with 503 + Retry-After).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use tokio::process::{Child, Command};

fn spawn_binary(port: u16, db_url: &str, redis: &str, config: &std::path::Path, log: &str) -> Child {
    let log = std::fs::File::create(std::env::temp_dir().join(format!("{log}.log"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tiketi-reservation"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TIKETI_LISTEN", format!("127.0.0.1:{port}"))
        .env("TIKETI_REDIS_URL", redis)
        .env("TIKETI_JWT_SECRET", JWT_SECRET)
        .env("TIKETI_ADMISSION_SECRET", ADMISSION_SECRET)
        .env("TIKETI_EVENT_CONFIG", config)
        .env("TIKETI_DATABASE_URL", db_url)
        .env("TIKETI_DATABASE_MAX_CONNECTIONS", "8")
        .env("TIKETI_LOG_FORMAT", "json")
        .env("RUST_LOG", "info,tower_http=off")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tiketi-reservation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_confirms_loses_and_duplicates_no_order() {
    const USERS: usize = 600;
    let event = unique("crash");
    let db = TestDb::create("resv_crash").await;
    let redis = redis_url();
    let cfg = write_config(&event, USERS as u32 / 10, 20, 300, 4);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(port, &db.url, &redis, &cfg, &format!("tiketi-{event}-1"));
    wait_ready(&base, Duration::from_secs(30)).await;

    // Each user holds two seats of their own, so every confirm should end in exactly one order.
    let http = client();
    let mut holds = Vec::new();
    for i in 0..USERS {
        let user = User::new(&event, &format!("buyer-{i}"));
        let row = i / 10 + 1;
        let seats = vec![
            format!("A-{row}-{}", (i % 10) * 2 + 1),
            format!("A-{row}-{}", (i % 10) * 2 + 2),
        ];
        let (s, b) = user.hold(&http, &base, &event, &seats).await.unwrap();
        assert_eq!(s, StatusCode::CREATED, "{b}");
        holds.push((user, b["holdId"].as_str().unwrap().to_owned()));
    }

    let confirmed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(45);
    let tasks: Vec<_> = holds
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (user, hold))| {
            let (http, base, confirmed) = (http.clone(), base.clone(), confirmed.clone());
            tokio::spawn(async move {
                let key = format!("buyer-{i}-attempt");
                let mut transport_errors = 0usize;
                loop {
                    assert!(Instant::now() < deadline, "buyer {i} never got an answer");
                    match user.confirm(&http, &base, &hold, &key).await {
                        Ok((StatusCode::CREATED, b)) => {
                            confirmed.fetch_add(1, Ordering::Relaxed);
                            return (hold, b["orderId"].as_str().unwrap().to_owned(), transport_errors);
                        }
                        Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) => {
                            transport_errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok((s, b)) => panic!("buyer {i}: unexpected {s} {b}"),
                    }
                }
            })
        })
        .collect();

    // Kill the service as soon as the first confirms have landed, while the others are in flight
    // (confirms are group-committed, up to 32 per statement: a 100 ms poll saw all of them done).
    let waiting = Instant::now() + Duration::from_secs(30);
    while confirmed.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < waiting,
            "timed out waiting for the first confirms"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.start_kill().unwrap(); // SIGKILL
    let status = child.wait().await.unwrap();
    let at_kill = confirmed.load(Ordering::Relaxed);
    assert!(!status.success(), "the process was killed");
    let mut restarted = spawn_binary(port, &db.url, &redis, &cfg, &format!("tiketi-{event}-2"));

    let mut answers = BTreeMap::new();
    let mut retried = 0;
    for t in tasks {
        let (hold, order, errors) = t.await.unwrap();
        retried += usize::from(errors > 0);
        answers.insert(hold, order);
    }
    eprintln!("killed after {at_kill} of {USERS} confirms; {retried} buyers retried across the crash");
    assert!(
        at_kill < USERS,
        "the kill must land before every confirm answered"
    );
    assert!(retried > 0, "some buyers must have retried across the crash");
    assert_eq!(answers.len(), USERS);

    // PostgreSQL has exactly one order per hold, and it is the one each buyer was told about.
    let pool = db.pool().await;
    let rows: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("SELECT hold_id, order_id FROM orders WHERE event_id = $1")
            .bind(&event)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), USERS, "no lost and no duplicated orders");
    let db_orders: BTreeMap<String, String> = rows
        .into_iter()
        .map(|(h, o)| (h.to_string(), o.to_string()))
        .collect();
    assert_eq!(db_orders, answers);
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM order_lines WHERE event_id = $1")
        .bind(&event)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lines, 2 * USERS as i64);
    assert!(double_bookings(&pool, &event).await.is_empty());

    // A retry after the fact replays the same answer.
    let (user, hold) = &holds[0];
    let (s, b) = user.confirm(&http, &base, hold, "buyer-0-attempt").await.unwrap();
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(b["orderId"].as_str().unwrap(), answers[hold]);

    restarted.start_kill().unwrap();
    let _ = restarted.wait().await;
    pool.close().await;
    cleanup_redis(&redis, &event).await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_together_migrate_exactly_once() {
    let event = unique("migrate");
    let db = TestDb::create("resv_migrate").await;
    let redis = redis_url();
    let cfg = write_config(&event, 10, 10, 300, 4);
    let ports = [free_port(), free_port(), free_port()];
    let mut children: Vec<Child> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| spawn_binary(*p, &db.url, &redis, &cfg, &format!("tiketi-{event}-r{i}")))
        .collect();
    for p in ports {
        wait_ready(&format!("http://127.0.0.1:{p}"), Duration::from_secs(45)).await;
    }
    for c in children.iter_mut() {
        assert!(c.try_wait().unwrap().is_none(), "every replica is still running");
    }
    let pool = db.pool().await;
    // One row per embedded migration, each applied once and successfully. The migration uses
    // plain CREATE TABLE, so a second application would have failed and crashed a replica.
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let embedded: Vec<i64> = tiketi_reservation::db::MIGRATOR
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(), embedded);
    assert!(applied.iter().all(|(_, ok)| *ok));
    // The inventory was loaded once too.
    let seats: i64 = sqlx::query_scalar("SELECT count(*) FROM seats WHERE event_id = $1")
        .bind(&event)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(seats, 100);
    // The migrator's advisory lock is released again (no session still holds it).
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(locks, 0);
    // No replica hit an error while initialising (a concurrent second application of the
    // migration would have failed on "relation already exists" and logged a retry).
    for i in 0..3 {
        let log =
            std::fs::read_to_string(std::env::temp_dir().join(format!("tiketi-{event}-r{i}.log"))).unwrap();
        assert!(
            !log.contains("initialisation failed"),
            "replica {i} failed to initialise once:\n{log}"
        );
        assert!(
            log.contains("migrations applied and inventory loaded"),
            "replica {i}:\n{log}"
        );
    }
    for mut c in children {
        c.start_kill().unwrap();
        let _ = c.wait().await;
    }
    pool.close().await;
    cleanup_redis(&redis, &event).await;
    db.drop_db().await;
}

#[tokio::test]
async fn without_reachable_dependencies_probes_answer_and_calls_fail_fast() {
    let event = unique("nodeps");
    let cfg = write_config(&event, 2, 2, 300, 4);
    let port = free_port();
    let dead = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(
        port,
        &format!("postgres://nobody:nothing@127.0.0.1:{dead}/none"),
        &format!("redis://127.0.0.1:{dead}"),
        &cfg,
        &format!("tiketi-{event}"),
    );
    let http = client();
    let health = eventually(Duration::from_secs(20), "/healthz", || {
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}/healthz")).send().await.ok() }
    })
    .await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why: serde_json::Value = ready.json().await.unwrap();
    let problems = why["problems"].to_string();
    assert!(
        problems.contains("redis") && problems.contains("postgres"),
        "{why}"
    );
    let doc: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/holds/{hold}/confirm"]["post"].is_object());
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);

    let user = User::new(&event, "impatient");
    let started = Instant::now();
    let (s, b) = user
        .hold(&http, &base, &event, &["A-1-1".to_owned()])
        .await
        .unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 must be fast, took {:?}",
        started.elapsed()
    );
    let r = http
        .get(format!("{base}/v1/events/{event}/availability"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    child.start_kill().unwrap();
    let _ = child.wait().await;
}

#[tokio::test]
async fn sigterm_drains_and_exits() {
    let event = unique("drain");
    let db = TestDb::create("resv_drain").await;
    let redis = redis_url();
    let cfg = write_config(&event, 2, 2, 300, 4);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn_binary(port, &db.url, &redis, &cfg, &format!("tiketi-{event}"));
    wait_ready(&base, Duration::from_secs(30)).await;
    let pid = child.id().unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    // Not ready any more while draining (the default drain delay is 2 s), then a clean exit.
    let http = client();
    eventually(Duration::from_secs(2), "/readyz to report draining", || {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}/readyz")).send().await.ok()?;
            (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(())
        }
    })
    .await;
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after draining")
        .unwrap();
    assert!(exit.success(), "clean exit after SIGTERM: {exit}");
    cleanup_redis(&redis, &event).await;
    db.drop_db().await;
}
