//! Hold / release / confirm rules against real PostgreSQL and Redis, with the service in-process:
//! admission tokens, the per-user cap, expiry, release, idempotency, inventory changes, sold-out
//! publication and a Redis outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::token::AdmissionKeys;

struct Env {
    event: String,
    db: TestDb,
    server: InProcess,
    http: reqwest::Client,
    redis: String,
}

impl Env {
    async fn start(prefix: &str, rows: u32, per_row: u32, ttl: u64, cap: u32) -> Self {
        let event = unique(prefix);
        let db = TestDb::create("resv_life").await;
        let cfg = write_config(&event, rows, per_row, ttl, cap);
        let redis = redis_url();
        let server = InProcess::start(settings(&db.url, &redis, &cfg)).await;
        Self {
            event,
            db,
            server,
            http: client(),
            redis,
        }
    }

    fn base(&self) -> &str {
        &self.server.base
    }

    async fn finish(self) {
        self.server.stop().await;
        cleanup_redis(&self.redis, &self.event).await;
        self.db.drop_db().await;
    }
}

fn seats(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn holds_need_the_users_own_admission_token_for_this_event() {
    let env = Env::start("tokens", 2, 5, 300, 4).await;
    let (http, base, event) = (&env.http, env.base(), env.event.as_str());
    let alice = User::new(event, "alice");
    let bob = User::new(event, "bob");
    let now = chrono::Utc::now().timestamp_millis();
    let forged = AdmissionKeys::new(b"not-the-secret")
        .issue(event, "alice", now, now + 60_000)
        .unwrap();
    let expired = AdmissionKeys::new(ADMISSION_SECRET.as_bytes())
        .issue(event, "alice", now - 120_000, now - 1)
        .unwrap();
    let other_event = admission_token("some-other-event", "alice");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("none", None, "missing"),
        ("forged", Some(forged), "invalid"),
        ("another user's", Some(bob.admission.clone()), "wrong_user"),
        ("another event's", Some(other_event), "wrong_event"),
        ("expired", Some(expired), "expired"),
        ("garbage", Some("not.a.jwt".into()), "invalid"),
    ];
    for (name, token, reason) in cases {
        let mut req = http
            .post(format!("{base}/v1/events/{event}/holds"))
            .header("authorization", &alice.bearer)
            .json(&json!({"seats": ["A-1-1"]}));
        if let Some(t) = token {
            req = req.header("x-admission-token", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name} admission token");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["type"], "https://tiketi.gg/problems/admission-required",
            "{name}: {body}"
        );
        assert_eq!(body["reason"], reason, "{name}: {body}");
    }
    // No user token at all, or an admission token passed off as identity: 401.
    for bearer in [None, Some(format!("Bearer {}", alice.admission))] {
        let mut req = http
            .post(format!("{base}/v1/events/{event}/holds"))
            .header("x-admission-token", &alice.admission)
            .json(&json!({"seats": ["A-1-1"]}));
        if let Some(b) = bearer {
            req = req.header("authorization", b);
        }
        assert_eq!(req.send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    // Nothing was held by the refused attempts; with her own token Alice gets the seat.
    let (s, b) = alice.hold(http, base, event, &seats(&["A-1-1"])).await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["userId"], "alice");
    env.finish().await;
}

#[tokio::test]
async fn bad_hold_requests_name_their_problem_and_the_cap_holds() {
    let env = Env::start("rules", 2, 5, 300, 3).await;
    let (http, base, event) = (&env.http, env.base(), env.event.as_str());
    let u = User::new(event, "carol");
    let table: Vec<(Vec<String>, StatusCode, &str)> = vec![
        (seats(&[]), StatusCode::BAD_REQUEST, "no-seats"),
        (
            seats(&["A-1-1", "A-1-1"]),
            StatusCode::BAD_REQUEST,
            "duplicate-seats",
        ),
        (
            seats(&["A-1-1", "Z-1-1"]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-seats",
        ),
        (
            seats(&["A-1-1", "A-1-2", "A-1-3", "A-1-4"]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too-many-seats",
        ),
    ];
    for (req, status, slug) in table {
        let (s, b) = u.hold(http, base, event, &req).await.unwrap();
        assert_eq!(s, status, "{req:?}: {b}");
        assert_eq!(b["type"], format!("https://tiketi.gg/problems/{slug}"), "{b}");
    }
    let r = http
        .post(format!("{base}/v1/events/{event}/holds"))
        .header("authorization", &u.bearer)
        .header("x-admission-token", &u.admission)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (s, b) = u
        .hold(http, base, "no-such-event", &seats(&["A-1-1"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["type"], "https://tiketi.gg/problems/unknown-event", "{b}");

    // Per-user cap (3): two seats, then two more is one too many, then one more fits.
    let (s, _) = u
        .hold(http, base, event, &seats(&["A-1-1", "A-1-2"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = u
        .hold(http, base, event, &seats(&["A-2-1", "A-2-2"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["type"], "https://tiketi.gg/problems/seat-limit-reached", "{b}");
    assert_eq!(b["held"], 2);
    let (s, _) = u.hold(http, base, event, &seats(&["A-2-1"])).await.unwrap();
    assert_eq!(s, StatusCode::CREATED);
    // All-or-nothing: a request overlapping a held seat takes none of its free seats.
    let dave = User::new(event, "dave");
    let (s, b) = dave
        .hold(http, base, event, &seats(&["A-2-3", "A-1-2", "A-2-4"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        b["seats"],
        json!(["A-1-2"]),
        "the 409 lists exactly the taken seats: {b}"
    );
    assert_eq!(seat_status(http, base, event, "A-2-3").await, "available");
    let (s, _) = dave
        .hold(http, base, event, &seats(&["A-2-3", "A-2-4"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    env.finish().await;
}

#[tokio::test]
async fn expired_holds_free_their_seats_and_postgres_decides_late_confirms() {
    let env = Env::start("expiry", 1, 5, 1, 4).await;
    let (http, base, event) = (&env.http, env.base(), env.event.as_str());
    let erin = User::new(event, "erin");
    let frank = User::new(event, "frank");
    let (s, b) = erin
        .hold(http, base, event, &seats(&["A-1-1", "A-1-2"]))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    let taken_back = b["holdId"].as_str().unwrap().to_owned();
    let (s, b) = erin.hold(http, base, event, &seats(&["A-1-3"])).await.unwrap();
    assert_eq!(s, StatusCode::CREATED);
    let untouched = b["holdId"].as_str().unwrap().to_owned();
    assert_eq!(seat_status(http, base, event, "A-1-1").await, "held");

    // The TTL (1 s) lapses: the seats show as available again and someone else can hold them.
    eventually(
        Duration::from_secs(10),
        "expired seats to be available",
        || async {
            let a = availability(http, base, event).await;
            (a["held"] == 0 && a["available"] == 5).then_some(())
        },
    )
    .await;
    let (s, b) = frank.hold(http, base, event, &seats(&["A-1-1"])).await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // Erin's lapsed hold whose seat went to Frank is refused, naming the seat...
    let (s, b) = erin.confirm(http, base, &taken_back, "erin-1").await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["seats"], json!(["A-1-1"]));
    // ...while her lapsed hold on a seat nobody took is still confirmed: PostgreSQL is the truth.
    let (s, b) = erin.confirm(http, base, &untouched, "erin-2").await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["seats"], json!(["A-1-3"]));
    env.finish().await;
}

#[tokio::test]
async fn release_frees_seats_and_confirm_is_idempotent() {
    let env = Env::start("idem", 1, 6, 300, 4).await;
    let (http, base, event) = (&env.http, env.base(), env.event.as_str());
    let gina = User::new(event, "gina");
    let hank = User::new(event, "hank");
    let (_, b) = gina
        .hold(http, base, event, &seats(&["A-1-1", "A-1-2"]))
        .await
        .unwrap();
    let h1 = b["holdId"].as_str().unwrap().to_owned();
    let (_, b) = gina.hold(http, base, event, &seats(&["A-1-3"])).await.unwrap();
    let h2 = b["holdId"].as_str().unwrap().to_owned();

    // Only the owner may release or confirm; release is immediate and repeatable.
    assert_eq!(
        hank.release(http, base, &h1).await.unwrap(),
        StatusCode::FORBIDDEN
    );
    let (s, _) = hank.confirm(http, base, &h1, "hank-1").await.unwrap();
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        gina.release(http, base, &h2).await.unwrap(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        gina.release(http, base, &h2).await.unwrap(),
        StatusCode::NO_CONTENT
    );
    let (s, _) = hank.hold(http, base, event, &seats(&["A-1-3"])).await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "a released seat is free at once");
    let (s, b) = gina.confirm(http, base, &h2, "gina-released").await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["type"], "https://tiketi.gg/problems/hold-released", "{b}");

    // Confirm: missing key 400; same key replays the same order; same key elsewhere 422.
    let r = http
        .post(format!("{base}/v1/holds/{h1}/confirm"))
        .header("authorization", &gina.bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let (s, first) = gina.confirm(http, base, &h1, "gina-key").await.unwrap();
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let r = http
        .post(format!("{base}/v1/holds/{h1}/confirm"))
        .header("authorization", &gina.bearer)
        .header("idempotency-key", "gina-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let replay: Value = r.json().await.unwrap();
    assert_eq!(replay, first);
    let (s, b) = gina.confirm(http, base, &h2, "gina-key").await.unwrap();
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(b["type"], "https://tiketi.gg/problems/idempotency-key-reused");
    let (s, b) = gina.confirm(http, base, &h1, "gina-other-key").await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        b["orderId"], first["orderId"],
        "a second key for the same hold points at the order"
    );
    assert_eq!(
        gina.release(http, base, &h1).await.unwrap(),
        StatusCode::CONFLICT,
        "an order is not a hold"
    );

    // The order is readable by its owner only.
    let order_id = first["orderId"].as_str().unwrap();
    let r = http
        .get(format!("{base}/v1/orders/{order_id}"))
        .header("authorization", &gina.bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let order: Value = r.json().await.unwrap();
    assert_eq!(order, first);
    let r = http
        .get(format!("{base}/v1/orders/{order_id}"))
        .header("authorization", &hank.bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(seat_status(http, base, event, "A-1-1").await, "sold");
    env.finish().await;
}

#[tokio::test]
async fn sold_out_is_published_to_redis_for_the_operator_and_the_queue() {
    let env = Env::start("soldout", 1, 3, 300, 4).await;
    let (http, base, event) = (&env.http, env.base(), env.event.as_str());
    let keys = EventKeys::new(event);
    let rc = redis::Client::open(env.redis.as_str()).unwrap();
    let mut conn = rc.get_multiplexed_async_connection().await.unwrap();
    let u = User::new(event, "ivy");
    let (_, b) = u
        .hold(http, base, event, &seats(&["A-1-1", "A-1-2"]))
        .await
        .unwrap();
    let (s, _) = u
        .confirm(http, base, b["holdId"].as_str().unwrap(), "ivy-1")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    let sold_out: Option<String> = redis::AsyncCommands::get(&mut conn, keys.sold_out())
        .await
        .unwrap();
    assert_eq!(sold_out, None);
    let (_, b) = u.hold(http, base, event, &seats(&["A-1-3"])).await.unwrap();
    let (s, _) = u
        .confirm(http, base, b["holdId"].as_str().unwrap(), "ivy-2")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    let flag = eventually(Duration::from_secs(10), "the sold-out flag", || {
        let (mut conn, key) = (conn.clone(), keys.sold_out());
        async move {
            redis::AsyncCommands::get::<_, Option<String>>(&mut conn, key)
                .await
                .ok()
                .flatten()
        }
    })
    .await;
    assert_eq!(flag, "1");
    let counts: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut conn, keys.counts())
            .await
            .unwrap();
    assert_eq!(
        (
            counts["sold"].as_str(),
            counts["available"].as_str(),
            counts["total"].as_str()
        ),
        ("3", "0", "3")
    );
    let a = availability(http, base, event).await;
    assert_eq!(a["soldOut"], true);
    env.finish().await;
}

#[tokio::test]
async fn an_inventory_change_that_would_remove_a_sold_seat_is_refused() {
    let event = unique("inventory");
    let db = TestDb::create("resv_inv").await;
    let redis = redis_url();
    let cfg = write_config(&event, 2, 3, 300, 4); // A-1-1..A-2-3
    let server = InProcess::start(settings(&db.url, &redis, &cfg)).await;
    let http = client();
    let u = User::new(&event, "jack");
    let (_, b) = u
        .hold(&http, &server.base, &event, &seats(&["A-2-3"]))
        .await
        .unwrap();
    let (s, _) = u
        .confirm(&http, &server.base, b["holdId"].as_str().unwrap(), "jack-1")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED);
    server.stop().await;

    // Shrinking to one row would drop sold seat A-2-3: refused, stored inventory kept, counted.
    write_config_at(&cfg, &event, 1, 3, 300, 4);
    let server = InProcess::start(settings(&db.url, &redis, &cfg)).await;
    let a = availability(&http, &server.base, &event).await;
    assert_eq!(
        (a["total"].as_u64(), a["sold"].as_u64()),
        (Some(6), Some(1)),
        "{a}"
    );
    let metrics = metrics_text(&http, &server.base).await;
    let line = format!("tiketi_reservation_inventory_refused_total{{event=\"{event}\"}} 1");
    assert!(metrics.contains(&line), "metric {line} missing:\n{metrics}");
    server.stop().await;

    // Growing, or removing only unsold seats, is applied.
    write_config_at(&cfg, &event, 2, 4, 300, 4);
    let server = InProcess::start(settings(&db.url, &redis, &cfg)).await;
    let a = availability(&http, &server.base, &event).await;
    assert_eq!(
        (a["total"].as_u64(), a["sold"].as_u64()),
        (Some(8), Some(1)),
        "{a}"
    );
    server.stop().await;
    cleanup_redis(&redis, &event).await;
    db.drop_db().await;
}

/// A service of one event (one row of 4 seats) on a Redis of its own (to stop or freeze), with
/// its own database; `tune` adjusts the settings.
async fn on_private_redis(
    prefix: &str,
    tune: impl FnOnce(&mut tiketi_reservation::settings::Settings),
) -> (PrivateRedis, String, TestDb, InProcess) {
    let redis = PrivateRedis::start().await;
    let event = unique(prefix);
    let db = TestDb::create(&format!("resv_{}", prefix.replace('-', "_"))).await;
    let cfg = write_config(&event, 1, 4, 300, 4);
    let mut s = settings(&db.url, &redis.url, &cfg);
    tune(&mut s);
    let server = InProcess::start(s).await;
    (redis, event, db, server)
}

#[tokio::test]
async fn a_redis_outage_answers_503_fast_and_confirms_still_reach_postgres() {
    let (redis, event, db, server) = on_private_redis("outage", |s| {
        s.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let http = client();
    let base = server.base.as_str();
    let u = User::new(&event, "kim");
    let (st, b) = u.hold(&http, base, &event, &seats(&["A-1-1"])).await.unwrap();
    assert_eq!(st, StatusCode::CREATED);
    let hold = b["holdId"].as_str().unwrap().to_owned();
    let readyz = || async {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    let (st, b) = readyz().await;
    assert_eq!((st, b["status"].as_str()), (StatusCode::OK, Some("ready")), "{b}");
    redis.stop().await;

    let started = Instant::now();
    let r = http
        .post(format!("{base}/v1/events/{event}/holds"))
        .header("authorization", &u.bearer)
        .header("x-admission-token", &u.admission)
        .json(&json!({"seats": ["A-1-2"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Still in the Service (Redis is shared: every replica would leave it, and the confirm
    // below could not reach any), saying which store it cannot reach.
    let (st, b) = readyz().await;
    assert_eq!(
        (st, b["status"].as_str()),
        (StatusCode::OK, Some("degraded")),
        "{b}"
    );
    assert!(b["problems"].to_string().contains("redis"), "{b}");
    // PostgreSQL alone can still confirm the existing hold.
    let (st, b) = u.confirm(&http, base, &hold, "kim-1").await.unwrap();
    assert_eq!(st, StatusCode::CREATED, "{b}");
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_frozen_redis_costs_waiting_readers_one_bound_not_one_each() {
    // Availability and the seat map are read once per event at a time; the requests arriving
    // meanwhile wait for that read. When it fails (Redis frozen: connected, answering nothing),
    // they answer 503 at once rather than each trying Redis again in turn.
    let (redis, event, db, server) = on_private_redis("frozen-reads", |s| {
        s.redis_timeout = Duration::from_millis(500);
    })
    .await;
    let http = client();
    let base = server.base.as_str();
    let _ = availability(&http, base, &event).await;
    redis.signal("-STOP");
    // Past the read cache (200 ms here): every request needs a fresh read.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let started = Instant::now();
    let asks = (0..24).map(|k| {
        let what = if k % 2 == 0 { "availability" } else { "seats" };
        let url = format!("{base}/v1/events/{event}/{what}");
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status(), r.headers().get("retry-after").cloned())
        }
    });
    let answers = futures::future::join_all(asks).await;
    let took = started.elapsed();
    redis.signal("-CONT");
    for (status, retry) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
    }
    // One failed read of each (0.5 s) and the rest at once; one read each in turn would take
    // 12 x 0.5 s.
    assert!(took < Duration::from_millis(2500), "24 requests took {took:?}");
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_hold_whose_client_left_keeps_its_in_flight_slot_until_it_ends() {
    // A hold runs to its end when its client goes away (so it never strands locks); its slot of
    // TIKETI_MAX_INFLIGHT must go with it, or clients that time out and retry pile up detached
    // holds past the bound. One slot; a hold waiting on a frozen Redis (2 s bound); its client
    // leaves after 200 ms; the next request waits for the slot until the hold ended.
    let (redis, event, db, server) = on_private_redis("slot", |s| s.max_inflight = 1).await;
    let http = client();
    let base = server.base.clone();
    let _ = availability(&http, &base, &event).await;
    let u = User::new(&event, "kim");
    redis.signal("-STOP");
    let started = Instant::now();
    let left = tokio::time::timeout(
        Duration::from_millis(200),
        u.hold(&http, &base, &event, &seats(&["A-1-1"])),
    )
    .await;
    assert!(left.is_err(), "the hold answered before its client left");
    let r = http
        .get(format!("{base}/v1/orders/{}", uuid::Uuid::new_v4()))
        .header("authorization", &u.bearer)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    redis.signal("-CONT");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        waited >= Duration::from_millis(1500),
        "the slot was free after {waited:?}"
    );
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_pool_recovers_when_postgres_drops_every_connection() {
    // A failover (or a restart of PostgreSQL) kills every server connection; the pool must find
    // fresh ones by itself, with no restart of the service.
    let event = unique("failover");
    let db = TestDb::create("resv_failover").await;
    let redis = redis_url();
    let cfg = write_config(&event, 1, 6, 300, 4);
    let mut s = settings(&db.url, &redis, &cfg);
    // A "reader" on the same server exercises the reader pool wiring too.
    s.database_read_url = Some(db.url.clone());
    let server = InProcess::start(s).await;
    let (http, base) = (client(), server.base.clone());
    let u = User::new(&event, "lee");
    let (st, _) = u.hold(&http, &base, &event, &seats(&["A-1-1"])).await.unwrap();
    assert_eq!(st, StatusCode::CREATED);
    let _ = availability(&http, &base, &event).await;

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url())
        .await
        .unwrap();
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&db.name)
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert!(!killed.is_empty(), "the service had connections to kill");

    // Every later request succeeds (a ping before use weeds out the dead connections).
    let second = seats(&["A-1-2"]);
    let (st, b) = until_answered("hold after the connections died", || {
        u.hold(&http, &base, &event, &second)
    })
    .await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let (st, b) = u
        .confirm(&http, &base, b["holdId"].as_str().unwrap(), "lee-1")
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED, "{b}");
    wait_ready(&base, Duration::from_secs(10)).await;
    let metrics = metrics_text(&http, &base).await;
    assert!(
        metrics.contains("pool=\"reader\""),
        "reader pool gauges present:\n{metrics}"
    );
    server.stop().await;
    cleanup_redis(&redis, &event).await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_ready_replica_has_its_hot_connections_open() {
    // Ready means the first buyers find the hot connections open and warm (`db::hot`).
    let env = Env::start("warm", 1, 2, 60, 2).await;
    let metrics = metrics_text(&env.http, env.base()).await;
    let gauge = |state: &str| -> Option<u64> {
        let name = format!("tiketi_reservation_db_pool_connections{{pool=\"hot\",state=\"{state}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
    };
    let (open, max) = (gauge("open"), gauge("max"));
    assert!(max.is_some_and(|m| m > 0), "{metrics}");
    assert_eq!(open, max, "{metrics}");
    env.finish().await;
}

#[tokio::test]
async fn made_up_methods_get_problems_and_leave_metrics_bounded() {
    let env = Env::start("methods", 1, 2, 60, 2).await;
    let (http, base) = (&env.http, env.base());
    let route = format!("{base}/v1/events/{}/holds", env.event);
    for i in 0..1_000 {
        let method = reqwest::Method::from_bytes(format!("FROB{i}").as_bytes()).unwrap();
        let r = http.request(method, &route).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = http.get(format!("{base}/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let metrics = metrics_text(http, base).await;
    assert!(!metrics.contains("FROB"), "a made-up method became a label value");
    let series = metrics.lines().filter(|l| l.contains("method=\"other\"")).count();
    assert!(series > 0 && series < 50, "{series} series for made-up methods");
    env.finish().await;
}

/// The cluster client resends a command whose connection broke before its reply, so Redis can
/// run one hold's script twice. The second run must answer as the first did (before, it found the
/// hold's own locks, answered "taken": the buyer got 409 and the seats stayed locked, with no
/// claim in PostgreSQL, for a whole hold TTL); another hold on those seats is still refused.
#[tokio::test]
async fn a_hold_script_run_twice_for_one_hold_holds_and_counts_its_seats_once() {
    use tiketi_reservation::domain::HoldOutcome;
    use tiketi_reservation::redis_store::HoldStore;
    use tiketi_shared::redis::RedisArgs;

    let event = unique("twice");
    let keys = EventKeys::new(&event);
    let store = HoldStore::new(&RedisArgs::new(redis_url()), Duration::from_secs(2)).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let ttl = Duration::from_secs(60);
    let four = seats(&["A-1-1", "A-1-2", "A-1-3", "A-1-4"]);
    let hold = |id: &'static str, user: &'static str, seats: Vec<String>, cap: u32| {
        let (store, keys) = (store.clone(), keys.clone());
        async move {
            store
                .hold(&keys, id, user, &seats, ttl, now, cap, "{}")
                .await
                .unwrap()
        }
    };

    // At a cap of 4, a 4-seat hold run twice: held both times (the second run was "taken").
    assert!(matches!(
        hold("h1", "kim", four.clone(), 4).await,
        HoldOutcome::Held
    ));
    assert!(matches!(
        hold("h1", "kim", four.clone(), 4).await,
        HoldOutcome::Held
    ));
    // Another hold on one of its seats is refused naming it; the same user's next seat is over
    // the cap (the rerun did not free or double anything).
    match hold("h2", "lee", seats(&["A-1-3"]), 4).await {
        HoldOutcome::Taken(t) => assert_eq!(t, vec!["A-1-3".to_string()]),
        other => panic!("a seat of a live hold was not refused: {other:?}"),
    }
    match hold("h3", "kim", seats(&["A-1-5"]), 4).await {
        HoldOutcome::OverCap { current } => assert_eq!(current, 4),
        other => panic!("the cap did not count the hold's 4 seats: {other:?}"),
    }

    // One of its locks gone between the runs (lapsed or evicted): the rerun takes it back and
    // counts the three it still owns once, so a 4-seat hold at a cap of 4 still fits.
    let mut c = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys.seat_hold("A-1-2"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(matches!(
        hold("h1", "kim", four.clone(), 4).await,
        HoldOutcome::Held
    ));
    let owner: Option<String> = redis::cmd("GET")
        .arg(keys.seat_hold("A-1-2"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner.as_deref(), Some("h1"));
    cleanup_redis(&redis_url(), &event).await;
}

/// A release PostgreSQL made is done, whatever Redis does: the buyer gets 204 (503 before, asking
/// to retry what had happened) and the hold's Redis locks are freed in the background once Redis
/// answers again, so the seat does not stay refused for the rest of the hold's TTL.
#[tokio::test]
async fn a_release_is_done_when_postgres_made_it_and_its_locks_follow_when_redis_returns() {
    let (redis, event, db, server) = on_private_redis("release-frozen", |s| {
        s.redis_timeout = Duration::from_millis(300);
    })
    .await;
    let http = client();
    let base = server.base.clone();
    let (kim, lee) = (User::new(&event, "kim"), User::new(&event, "lee"));
    let (st, b) = kim.hold(&http, &base, &event, &seats(&["A-1-1"])).await.unwrap();
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let hold = b["holdId"].as_str().unwrap().to_owned();
    redis.signal("-STOP");
    let st = kim.release(&http, &base, &hold).await.unwrap();
    assert_eq!(st, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.signal("-CONT");
    // The lock goes within the background retries (1 s, 2 s apart); lee's hold then passes
    // Redis (it would be 409 from the lock for 300 s otherwise).
    let started = Instant::now();
    loop {
        let (st, b) = lee.hold(&http, &base, &event, &seats(&["A-1-1"])).await.unwrap();
        if st == StatusCode::CREATED {
            break;
        }
        assert_eq!(st, StatusCode::CONFLICT, "{b}");
        assert!(started.elapsed() < Duration::from_secs(6), "the lock stayed: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
    redis.stop().await;
    db.drop_db().await;
}
