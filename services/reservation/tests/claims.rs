//! PostgreSQL arbitrates holds (issue: "a live hold can be sold to someone whose hold lapsed"):
//! the stolen-hold sequence with the lock deleted, with FLUSHALL and with Redis frozen; two
//! confirms of one hold under different keys; the purchase limit over holds and orders; the end
//! of admission at reservation; confirms after `saleEndsAt`. Real PostgreSQL, a private Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tiketi_shared::keys::EventKeys;

struct Env {
    event: String,
    db: TestDb,
    redis: PrivateRedis,
    server: InProcess,
    http: reqwest::Client,
}

impl Env {
    /// One section of `seats` seats, holds of `ttl` seconds, at most `cap` seats per buyer.
    async fn start(prefix: &str, seats: u32, ttl: u64, cap: u32, sale_ends_in: Option<Duration>) -> Self {
        let event = unique(prefix);
        let db = TestDb::create("resv_claims").await;
        let redis = PrivateRedis::start().await;
        let mut cfg = json!({
            "eventId": event,
            "onSaleAt": "2026-01-01T00:00:00Z",
            "reservation": {"holdTtlSeconds": ttl, "maxSeatsPerUser": cap},
            "inventory": {"sections": [{"name": "A", "rows": 1, "seatsPerRow": seats, "priceTier": "std"}]}
        });
        if let Some(d) = sale_ends_in {
            let end = chrono::Utc::now() + chrono::Duration::from_std(d).unwrap();
            cfg["saleEndsAt"] = json!(end.to_rfc3339());
        }
        let path = write_config_value(&cfg);
        let mut s = settings(&db.url, &redis.url, &path);
        // A frozen Redis must cost a request well under a second, not the default 2 s.
        s.redis_timeout = Duration::from_millis(300);
        let server = InProcess::start(s).await;
        Self {
            event,
            db,
            redis,
            server,
            http: client(),
        }
    }

    fn base(&self) -> &str {
        &self.server.base
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn hold(&self, u: &User, seats: &[&str]) -> (StatusCode, Value) {
        let seats: Vec<String> = seats.iter().map(|s| s.to_string()).collect();
        u.hold(&self.http, self.base(), &self.event, &seats)
            .await
            .unwrap()
    }

    async fn confirm(&self, u: &User, hold: &str, key: &str) -> (StatusCode, Value) {
        u.confirm(&self.http, self.base(), hold, key).await.unwrap()
    }

    async fn finish(self) {
        self.server.stop().await;
        self.redis.stop().await;
        self.db.drop_db().await;
    }
}

fn id(v: &Value) -> String {
    v["holdId"].as_str().expect("a hold id").to_owned()
}

/// What Redis loses between B's hold and the two confirms.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// The seat's lock key is deleted (an eviction).
    DeleteLock,
    /// Everything is gone (a flush, a failover to an empty replica).
    FlushAll,
    /// Redis stops answering while the confirms run (PostgreSQL decides alone).
    Frozen,
}

async fn stolen_hold(loss: Loss) {
    // Holds of 3 s: A's lapses soon, B's outlives the two confirms.
    let env = Env::start("stolen", 4, 3, 4, None).await;
    let a = User::new(&env.event, "a");
    let b = User::new(&env.event, "b");
    let (s, held) = env.hold(&a, &["A-1-1"]).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    let a_hold = id(&held);
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    // A lapsed; B holds the seat with a future expiry.
    let (s, held) = env.hold(&b, &["A-1-1"]).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "A's hold lapsed, so B may hold the seat: {held}"
    );
    let b_hold = id(&held);
    let b_expires = chrono::DateTime::parse_from_rfc3339(held["expiresAt"].as_str().unwrap()).unwrap();
    let mut c = env.redis().await;
    match loss {
        Loss::DeleteLock => {
            let _: u64 = redis::cmd("DEL")
                .arg(EventKeys::new(&env.event).seat_hold("A-1-1"))
                .query_async(&mut c)
                .await
                .unwrap();
        }
        Loss::FlushAll => env.redis.flushall().await,
        Loss::Frozen => env.redis.signal("-STOP"),
    }
    // A confirms the lapsed hold first: refused, naming the seat (B's claim is live).
    let (s, refused) = env.confirm(&a, &a_hold, "a-key").await;
    assert!(
        chrono::Utc::now() < b_expires,
        "B's hold lapsed before A's confirm was answered; the machine is too slow for a 3 s hold"
    );
    let (s_b, order) = env.confirm(&b, &b_hold, "b-key").await;
    if matches!(loss, Loss::Frozen) {
        env.redis.signal("-CONT");
    }
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "{loss:?}: A's lapsed hold must be refused: {refused}"
    );
    assert_eq!(
        refused["type"], "https://tiketi.gg/problems/seats-taken",
        "{refused}"
    );
    assert_eq!(refused["seats"], json!(["A-1-1"]), "{refused}");
    assert_eq!(
        s_b,
        StatusCode::CREATED,
        "{loss:?}: B's live hold confirms: {order}"
    );
    assert_eq!(order["seats"], json!(["A-1-1"]));
    let pool = env.db.pool().await;
    assert!(double_bookings(&pool, &env.event).await.is_empty());
    env.finish().await;
}

#[tokio::test]
async fn a_lapsed_hold_never_beats_a_live_one_when_the_lock_is_deleted() {
    stolen_hold(Loss::DeleteLock).await;
}

#[tokio::test]
async fn a_lapsed_hold_never_beats_a_live_one_after_flushall() {
    stolen_hold(Loss::FlushAll).await;
}

#[tokio::test]
async fn a_lapsed_hold_never_beats_a_live_one_while_redis_is_frozen() {
    stolen_hold(Loss::Frozen).await;
}

#[tokio::test]
async fn two_confirms_of_one_hold_under_different_keys_point_at_one_order() {
    let env = Env::start("twokeys", 4, 300, 4, None).await;
    let u = User::new(&env.event, "twice");
    let (_, held) = env.hold(&u, &["A-1-1", "A-1-2"]).await;
    let hold = id(&held);
    let (first, second) = tokio::join!(
        env.confirm(&u, &hold, "key-one"),
        env.confirm(&u, &hold, "key-two")
    );
    let (created, other) = if first.0 == StatusCode::CREATED {
        (&first, &second)
    } else {
        (&second, &first)
    };
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    assert_eq!(other.0, StatusCode::CONFLICT, "{}", other.1);
    assert_eq!(
        other.1["type"], "https://tiketi.gg/problems/hold-already-confirmed",
        "{}",
        other.1
    );
    assert_eq!(other.1["orderId"], created.1["orderId"], "{}", other.1);
    // The answer stored under the other key says the same on a retry.
    let other_key = if first.0 == StatusCode::CREATED {
        "key-two"
    } else {
        "key-one"
    };
    let (s, replay) = env.confirm(&u, &hold, other_key).await;
    assert_eq!(s, StatusCode::CONFLICT, "{replay}");
    assert_eq!(replay["orderId"], created.1["orderId"], "{replay}");
    env.finish().await;
}

#[tokio::test]
async fn the_purchase_limit_counts_held_and_bought_seats() {
    let env = Env::start("limit", 10, 300, 4, None).await;
    let u = User::new(&env.event, "collector");
    let (_, held) = env.hold(&u, &["A-1-1", "A-1-2"]).await;
    let (s, _) = env.confirm(&u, &id(&held), "k1").await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, held) = env.hold(&u, &["A-1-3", "A-1-4"]).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "2 bought + 2 held = the limit of 4: {held}"
    );
    let (s, refused) = env.hold(&u, &["A-1-5"]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{refused}");
    assert_eq!(
        refused["type"], "https://tiketi.gg/problems/seat-limit-reached",
        "{refused}"
    );
    assert_eq!(refused["held"], 4, "{refused}");
    let (s, _) = env.confirm(&u, &id(&held), "k2").await;
    assert_eq!(s, StatusCode::CREATED);
    // Four bought: a fifth seat is refused although nothing is held any more (Redis's own
    // per-user set only counts holds).
    let (s, refused) = env.hold(&u, &["A-1-9"]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{refused}");
    assert_eq!(
        refused["type"], "https://tiketi.gg/problems/seat-limit-reached",
        "{refused}"
    );
    // The refused hold left nothing behind: the seat is available to someone else.
    let other = User::new(&env.event, "other");
    let (s, b) = env.hold(&other, &["A-1-9"]).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    env.finish().await;
}

#[tokio::test]
async fn leaving_the_line_ends_the_right_to_hold() {
    let env = Env::start("admission", 4, 300, 4, None).await;
    let keys = EventKeys::new(&env.event);
    let mut c = env.redis().await;
    let now = chrono::Utc::now().timestamp_millis();
    // The queue's records, as its admit script writes them: one admission so far, two users.
    let _: () = redis::pipe()
        .cmd("INCRBY")
        .arg(keys.admitted_total())
        .arg(2)
        .ignore()
        .cmd("ZADD")
        .arg(keys.active())
        .arg(now + 600_000)
        .arg("stays")
        .arg(now + 600_000)
        .arg("leaves")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    let stays = User::new(&env.event, "stays");
    let leaves = User::new(&env.event, "leaves");
    let stranger = User::new(&env.event, "never-admitted");
    let (s, b) = env.hold(&stays, &["A-1-1"]).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // `DELETE …/queue/me` removes the user from the active set (the queue's LEAVE script).
    let _: u64 = redis::cmd("ZREM")
        .arg(keys.active())
        .arg("leaves")
        .query_async(&mut c)
        .await
        .unwrap();
    for u in [&leaves, &stranger] {
        let (s, b) = env.hold(u, &["A-1-2"]).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{}: {b}", u.id);
        assert_eq!(b["type"], "https://tiketi.gg/problems/admission-ended", "{b}");
    }
    // An admission whose score lapsed is over too, though its token is still signed.
    let _: () = redis::cmd("ZADD")
        .arg(keys.active())
        .arg(now - 1)
        .arg("leaves")
        .query_async(&mut c)
        .await
        .unwrap();
    let (s, b) = env.hold(&leaves, &["A-1-2"]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    env.finish().await;
}

#[tokio::test]
async fn nothing_is_confirmed_after_the_sale_ends() {
    let env = Env::start("ended", 4, 300, 4, Some(Duration::from_secs(2))).await;
    let u = User::new(&env.event, "late");
    let (s, held) = env.hold(&u, &["A-1-1"]).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (s, b) = env.confirm(&u, &id(&held), "late-key").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["type"], "https://tiketi.gg/problems/sale-ended", "{b}");
    assert!(b["saleEndsAt"].is_string(), "{b}");
    let pool = env.db.pool().await;
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(orders, 0);
    env.finish().await;
}

#[tokio::test]
async fn the_service_refuses_to_start_with_a_weak_signing_key() {
    let db = TestDb::create("resv_keys").await;
    let cfg = write_config(&unique("keys"), 1, 1, 60, 1);
    for (jwt, admission, named) in [
        ("", ADMISSION_SECRET, "TIKETI_JWT_SECRET"),
        (JWT_SECRET, "too-short", "TIKETI_ADMISSION_SECRET"),
        (
            JWT_SECRET,
            "CHANGE_ME_ADMISSION_HS256_KEY_PLEASE_0001",
            "TIKETI_ADMISSION_SECRET",
        ),
    ] {
        let mut s = settings(&db.url, &redis_url(), &cfg);
        s.jwt_secret = jwt.into();
        s.admission_secret = admission.into();
        let err = tiketi_reservation::server::build_state(&s)
            .err()
            .expect("refused");
        assert!(err.to_string().contains(named), "{named}: {err:#}");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn a_buyer_whose_hold_request_timed_out_can_find_the_hold() {
    let env = Env::start("myholds", 4, 300, 4, None).await;
    let u = User::new(&env.event, "timed-out");
    let mine = |u: &User| {
        let (http, url, bearer) = (
            env.http.clone(),
            format!("{}/v1/events/{}/holds/me", env.base(), env.event),
            u.bearer.clone(),
        );
        async move {
            let r = http
                .get(url)
                .header("authorization", bearer)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            r.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(mine(&u).await, json!([]));
    let (_, held) = env.hold(&u, &["A-1-1", "A-1-2"]).await;
    let listed = mine(&u).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["holdId"], held["holdId"]);
    assert_eq!(listed[0]["seats"], json!(["A-1-1", "A-1-2"]));
    // Someone else sees only their own holds.
    assert_eq!(mine(&User::new(&env.event, "other")).await, json!([]));
    assert_eq!(
        u.release(&env.http, env.base(), &id(&held)).await.unwrap(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(mine(&u).await, json!([]), "a released hold is not live");
    env.finish().await;
}

#[tokio::test]
async fn a_held_seat_removed_from_the_inventory_is_a_final_409_not_an_outage() {
    let env = Env::start("removed", 4, 300, 4, None).await;
    let u = User::new(&env.event, "unlucky");
    let (_, held) = env.hold(&u, &["A-1-3", "A-1-4"]).await;
    // Another replica restarted with a smaller inventory: the loader deletes unsold seats that are
    // no longer configured (this one was only held).
    let pool = env.db.pool().await;
    sqlx::query("DELETE FROM seats WHERE event_id = $1 AND seat_id = 'A-1-4'")
        .bind(&env.event)
        .execute(&pool)
        .await
        .unwrap();
    let (s, b) = env.confirm(&u, &id(&held), "removed-key").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["type"], "https://tiketi.gg/problems/seats-removed", "{b}");
    assert_eq!(b["seats"], json!(["A-1-4"]), "{b}");
    // The answer is stored under the key: a retry gets it again, still no order.
    let (s, again) = env.confirm(&u, &id(&held), "removed-key").await;
    assert_eq!((s, &again["type"]), (StatusCode::CONFLICT, &b["type"]));
    env.finish().await;
}

#[tokio::test]
async fn an_inventory_reload_applies_section_and_price_changes() {
    let event = unique("reload");
    let db = TestDb::create("resv_reload").await;
    let redis = PrivateRedis::start().await;
    let cfg = |tier: &str| {
        write_config_value(&json!({
            "eventId": event,
            "onSaleAt": "2026-01-01T00:00:00Z",
            "reservation": {"holdTtlSeconds": 60, "maxSeatsPerUser": 4},
            "inventory": {"sections": [{"name": "A", "rows": 1, "seatsPerRow": 2, "priceTier": tier}]}
        }))
    };
    let http = client();
    for tier in ["std", "vip"] {
        let server = InProcess::start(settings(&db.url, &redis.url, &cfg(tier))).await;
        let map: Value = http
            .get(format!("{}/v1/events/{event}/seats", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(map["seats"][0]["priceTier"], tier, "{map}");
        server.stop().await;
    }
    redis.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_lapsed_hold_is_not_taken_back_once_its_admission_is_over() {
    let event = unique("admitted");
    let db = TestDb::create("resv_admitted").await;
    let redis = PrivateRedis::start().await;
    // Holds of 1 s, admissions of 3 s (lateness under load only moves the second confirm further
    // past the admission; the first has 1.8 s of margin).
    let cfg = write_config_value(&json!({
        "eventId": event,
        "onSaleAt": "2026-01-01T00:00:00Z",
        "queue": {"ratePerSecond": 50, "maxActive": 2000, "tokenTtlSeconds": 3, "heartbeatTimeoutSeconds": 120},
        "reservation": {"holdTtlSeconds": 1, "maxSeatsPerUser": 4},
        "inventory": {"sections": [{"name": "A", "rows": 1, "seatsPerRow": 4, "priceTier": "std"}]}
    }));
    let server = InProcess::start(settings(&db.url, &redis.url, &cfg)).await;
    let http = client();
    let u = User::new(&event, "slow-payer");
    let (_, early) = u
        .hold(&http, &server.base, &event, &["A-1-1".to_owned()])
        .await
        .unwrap();
    let (_, late) = u
        .hold(&http, &server.base, &event, &["A-1-2".to_owned()])
        .await
        .unwrap();
    // The first lapsed hold is taken back while its admission still runs...
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (s, b) = u
        .confirm(&http, &server.base, &id(&early), "early")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::CREATED, "lapsed hold within its admission: {b}");
    // ...the second, after the admission ended, is not: the buyer must queue again.
    tokio::time::sleep(Duration::from_millis(2_400)).await;
    let (s, b) = u.confirm(&http, &server.base, &id(&late), "late").await.unwrap();
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["type"], "https://tiketi.gg/problems/hold-expired", "{b}");
    server.stop().await;
    redis.stop().await;
    db.drop_db().await;
}
