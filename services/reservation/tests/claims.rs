//! PostgreSQL arbitrates holds (issue: "a live hold can be sold to someone whose hold lapsed"):
//! the stolen-hold sequence with the lock deleted, with FLUSHALL and with Redis frozen; two
//! confirms of one hold under different keys; the purchase limit over holds and orders; the end
//! of admission at reservation; confirms after `saleEndsAt`; seats known sold refused without
//! Redis. Real PostgreSQL, a private Redis.
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
    /// What the server was started with (another replica starts with the same).
    settings: tiketi_reservation::settings::Settings,
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
        let server = InProcess::start(s.clone()).await;
        Self {
            event,
            db,
            redis,
            server,
            http: client(),
            settings: s,
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
async fn a_hold_that_redis_runs_after_the_request_gave_up_leaves_no_lock_behind() {
    // Redis freezes with a hold script on its way: the request answers 503 (nothing claimed in
    // PostgreSQL); Redis thaws and runs the script. Its locks must not keep the seat from the
    // next buyer for a whole hold TTL.
    let env = Env::start("late", 10, 300, 4, None).await;
    let (kim, lee) = (User::new(&env.event, "kim"), User::new(&env.event, "lee"));
    // Redis knows the hold script (the late one runs as EVALSHA, not refused as unknown).
    let (st, b) = env.hold(&lee, &["A-1-9"]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    env.redis.signal("-STOP");
    let (st, b) = env.hold(&kim, &["A-1-5"]).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    env.redis.signal("-CONT");
    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..50 {
        last = env.hold(&lee, &["A-1-5"]).await;
        if last.0 != StatusCode::CONFLICT && last.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, StatusCode::CREATED, "{}", last.1);
    // And the first buyer's count holds nothing of that hold: 4 other seats are still theirs to hold.
    let (st, b) = env.hold(&kim, &["A-1-1", "A-1-2", "A-1-3", "A-1-4"]).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    env.db.drop_db().await;
}

/// In a rush most hold requests name seats sold a moment ago. A replica refuses a hold naming a
/// seat it knows is sold without asking Redis (all of an event's keys are on one shard): such a
/// 409 costs Redis nothing and comes even while Redis is frozen, when a hold of a free seat waits
/// for Redis and gets its 503. The replica that sold the seat knows it from the confirm; another
/// knows it once it has read the seat map.
#[tokio::test]
async fn a_seat_known_sold_is_refused_without_asking_redis() {
    let env = Env::start("known-sold", 4, 60, 4, None).await;
    let other = InProcess::start(env.settings.clone()).await;
    let a = User::new(&env.event, "a");
    let b = User::new(&env.event, "b");
    let (s, held) = env.hold(&a, &["A-1-1"]).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    let (s, order) = env.confirm(&a, &id(&held), "a-key").await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    // The other replica has not read the map yet: it does not know the seat is sold.
    let seats = vec!["A-1-1".to_owned(), "A-1-2".to_owned()];
    env.redis.signal("-STOP");
    let (s_other, unknown) = b.hold(&env.http, &other.base, &env.event, &seats).await.unwrap();
    let (s, refused) = env.hold(&b, &["A-1-1", "A-1-2"]).await;
    let (s_free, waited) = env.hold(&b, &["A-1-3"]).await;
    env.redis.signal("-CONT");
    assert_eq!(
        s_other,
        StatusCode::SERVICE_UNAVAILABLE,
        "a replica that does not know the seat is sold asks Redis: {unknown}"
    );
    assert_eq!(s, StatusCode::CONFLICT, "refused without Redis: {refused}");
    assert_eq!(
        refused["type"], "https://tiketi.gg/problems/seats-taken",
        "{refused}"
    );
    assert_eq!(
        refused["seats"],
        json!(["A-1-1"]),
        "only the sold seat is named: {refused}"
    );
    assert_eq!(
        s_free,
        StatusCode::SERVICE_UNAVAILABLE,
        "a free seat needs Redis, which was frozen: {waited}"
    );
    // The other replica learns it from the seat map (PostgreSQL's sold seats).
    assert_eq!(
        seat_status(&env.http, &other.base, &env.event, "A-1-1").await,
        "sold"
    );
    env.redis.signal("-STOP");
    let (s_other, refused) = b.hold(&env.http, &other.base, &env.event, &seats).await.unwrap();
    env.redis.signal("-CONT");
    assert_eq!(
        s_other,
        StatusCode::CONFLICT,
        "the other replica read the map: {refused}"
    );
    assert_eq!(refused["seats"], json!(["A-1-1"]), "{refused}");
    // With Redis back, free seats are held as usual (not A-1-3: the frozen Redis ran that timed
    // out hold's script once it was thawed, so its lock stands until the hold's TTL).
    let (s, held) = env.hold(&b, &["A-1-2", "A-1-4"]).await;
    assert_eq!(s, StatusCode::CREATED, "{held}");
    other.stop().await;
    env.finish().await;
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
    // Nor held: a hold after the end could never be confirmed (it was 201 before).
    let (s, b) = env.hold(&User::new(&env.event, "later"), &["A-1-2"]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["type"], "https://tiketi.gg/problems/sale-ended", "{b}");
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

/// Seat ids of a one-section test event: A-1-1, A-1-2, …
fn a(seats: &[&str]) -> Vec<String> {
    seats.iter().map(|s| format!("A-1-{s}")).collect()
}

/// The live claims PostgreSQL holds for these holds: (seat, hold), sorted.
async fn live_claims(pool: &sqlx::PgPool, holds: &[uuid::Uuid]) -> Vec<(String, uuid::Uuid)> {
    sqlx::query_as(
        "SELECT seat_id, hold_id FROM seat_claims WHERE hold_id = ANY($1) AND expires_at > now() \
         ORDER BY seat_id",
    )
    .bind(holds)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A new hold of `user` over `seats` that lapses in five minutes.
fn live_hold(event: &str, user: &str, seats: Vec<String>) -> tiketi_reservation::model::Hold {
    tiketi_reservation::model::Hold {
        hold_id: uuid::Uuid::new_v4(),
        event_id: event.to_owned(),
        user_id: user.to_owned(),
        seats,
        expires_at: chrono::Utc::now() + chrono::Duration::minutes(5),
    }
}

/// A database with the service's schema and one event of one row of `per_row` seats (hold TTL
/// 300 s, 4 seats per user), reached through the service's own `Db` (claim batches up to 64).
/// The hot connections of `store`: [open, idle, max].
fn hot_usage(store: &tiketi_reservation::db::Db) -> [u32; 3] {
    let usage = store.pool_usage();
    let (_, open, idle, max) = usage.iter().find(|u| u.0 == "hot").copied().unwrap();
    [open, idle, max]
}

async fn migrated_store(
    prefix: &str,
    db_name: &str,
    per_row: u32,
) -> (String, TestDb, tiketi_reservation::db::Db) {
    migrated_store_bounded(prefix, db_name, per_row, Duration::from_secs(10)).await
}

/// [`migrated_store`] whose calls are bounded by `timeout`.
async fn migrated_store_bounded(
    prefix: &str,
    db_name: &str,
    per_row: u32,
    timeout: Duration,
) -> (String, TestDb, tiketi_reservation::db::Db) {
    let event = unique(prefix);
    let db = TestDb::create(db_name).await;
    let path = write_config(&event, 1, per_row, 300, 4);
    let cfg = tiketi_shared::config::load(&path)
        .unwrap()
        .remove(&event)
        .unwrap();
    let store = tiketi_reservation::db::Db::new(&db.url, None, 16, timeout, 64).unwrap();
    store.migrate().await.unwrap();
    store.load_inventory(&cfg).await.unwrap();
    (event, db, store)
}

#[tokio::test]
async fn claims_decided_together_refuse_only_the_conflicting_holds() {
    use tiketi_reservation::db::ClaimRefused;

    let (event, db, store) = migrated_store("batch", "resv_batch", 100).await;
    let pool = db.pool().await;

    // What PostgreSQL knows and Redis may have lost: A-1-1 claimed by another live hold, A-1-2
    // sold, and user "full" holding 3 seats already.
    let other = uuid::Uuid::new_v4();
    let sold_hold = uuid::Uuid::new_v4();
    let full_hold = uuid::Uuid::new_v4();
    let late_hold = uuid::Uuid::new_v4();
    for stmt in [
        format!(
            "INSERT INTO seat_claims VALUES ('{event}', 'A-1-1', '{other}', 'other', now() + interval '1 hour')"
        ),
        format!(
            "INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at, status) \
             VALUES ('{sold_hold}', '{event}', 'buyer', ARRAY['A-1-2'], now(), 'confirmed')"
        ),
        format!(
            "INSERT INTO orders (order_id, event_id, user_id, hold_id) \
             VALUES ('{sold_hold}', '{event}', 'buyer', '{sold_hold}')"
        ),
        format!("INSERT INTO order_lines VALUES ('{sold_hold}', '{event}', 'A-1-2')"),
        format!("INSERT INTO seat_claims VALUES ('{event}', 'A-1-2', '{sold_hold}', 'buyer', 'infinity')"),
        format!(
            "INSERT INTO seat_claims SELECT '{event}', s, '{full_hold}', 'full', now() + interval '1 hour' \
             FROM unnest(ARRAY['A-1-12', 'A-1-13', 'A-1-14']) s"
        ),
        // A-1-15 as a claim sees it when a confirm committed after the claim's sold check read
        // `order_lines`: claimed for ever, no order line visible. A-1-18 claimed by a live hold.
        format!("INSERT INTO seat_claims VALUES ('{event}', 'A-1-15', '{late_hold}', 'late', 'infinity')"),
        format!(
            "INSERT INTO seat_claims VALUES ('{event}', 'A-1-18', '{other}', 'other', now() + interval '1 hour')"
        ),
    ] {
        sqlx::query(&stmt).execute(&pool).await.unwrap();
    }

    let hold = |user: &str, seats: Vec<String>| live_hold(&event, user, seats);
    let mut holds = vec![
        // 0: one seat claimed by a live hold: refused, and its free seat A-1-3 not taken.
        hold("u-held", a(&["3", "1"])),
        // 1: a sold seat.
        hold("u-sold", a(&["2"])),
        // 2: 3 + 2 seats > 4.
        hold("full", a(&["4", "5"])),
        // 3, 4: one seat, two buyers: exactly one gets it.
        hold("u-twin-a", a(&["6"])),
        hold("u-twin-b", a(&["6"])),
        // 5, 6: one buyer, 3 + 2 seats > 4: exactly one is held.
        hold("u-twice", a(&["7", "8", "9"])),
        hold("u-twice", a(&["10", "11"])),
        // 7: a seat sold just now, one held and one free: refused as sold, nothing taken.
        hold("u-late", a(&["18", "15", "16"])),
    ];
    // 8..: forty buyers of one or two free seats each.
    for k in 0..40 {
        let first = 20 + 2 * k;
        let seats = if k % 2 == 0 {
            a(&[&first.to_string(), &(first + 1).to_string()])
        } else {
            a(&[&first.to_string()])
        };
        holds.push(hold(&format!("u-{k}"), seats));
    }

    // All asked at once: the claims queue up and are decided in shared statements.
    let results = futures::future::join_all(holds.iter().map(|h| store.claim_hold(h, 4))).await;
    let results: Vec<Result<(), ClaimRefused>> = results.into_iter().map(|r| r.unwrap()).collect();
    let stats = store.claim_stats();
    assert!(
        stats.largest > 1 && stats.statements < holds.len() as u64,
        "claims were batched: {stats:?}"
    );

    match &results[0] {
        Err(ClaimRefused::Held(h)) => {
            assert_eq!(h.len(), 1, "{h:?}");
            assert_eq!(h[0].0, "A-1-1");
            assert_eq!(h[0].1, Some(other));
        }
        r => panic!("hold 0: {r:?}"),
    }
    assert_eq!(results[1], Err(ClaimRefused::Sold(a(&["2"]))));
    assert_eq!(results[2], Err(ClaimRefused::OverLimit { current: 3 }));
    let twins = [&results[3], &results[4]];
    assert_eq!(twins.iter().filter(|r| r.is_ok()).count(), 1, "{twins:?}");
    assert!(
        twins
            .iter()
            .any(|r| matches!(r, Err(ClaimRefused::Held(h)) if h.len() == 1 && h[0].0 == "A-1-6")),
        "{twins:?}"
    );
    let twice = [&results[5], &results[6]];
    assert_eq!(twice.iter().filter(|r| r.is_ok()).count(), 1, "{twice:?}");
    assert!(
        twice
            .iter()
            .any(|r| matches!(r, Err(ClaimRefused::OverLimit { current: 2 | 3 }))),
        "{twice:?}"
    );
    assert_eq!(results[7], Err(ClaimRefused::Sold(a(&["15"]))));
    for (k, r) in results.iter().enumerate().skip(8) {
        assert_eq!(r, &Ok(()), "hold {k}");
    }
    // Alone (a batch of one, `tiketi_claim_hold`): the same answer.
    let alone = hold("u-alone", a(&["15"]));
    assert_eq!(
        store.claim_hold(&alone, 4).await.unwrap(),
        Err(ClaimRefused::Sold(a(&["15"])))
    );

    // PostgreSQL holds exactly the claims and holds of the accepted requests.
    let ids: Vec<uuid::Uuid> = holds.iter().map(|h| h.hold_id).collect();
    let mut expected: Vec<(String, uuid::Uuid)> = holds
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .flat_map(|(h, _)| h.seats.iter().map(|s| (s.clone(), h.hold_id)))
        .collect();
    expected.sort();
    assert_eq!(live_claims(&pool, &ids).await, expected);
    let mut mirrored: Vec<(uuid::Uuid, Vec<String>)> =
        sqlx::query_as("SELECT hold_id, seat_ids FROM holds WHERE hold_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&pool)
            .await
            .unwrap();
    mirrored.sort();
    let mut accepted: Vec<(uuid::Uuid, Vec<String>)> = holds
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(h, _)| (h.hold_id, h.seats.clone()))
        .collect();
    accepted.sort();
    assert_eq!(
        mirrored, accepted,
        "the accepted holds are mirrored, seats in the order asked"
    );
    // The refused holds left their free seats (A-1-3, A-1-16) unclaimed.
    let free: i64 =
        sqlx::query_scalar("SELECT count(*) FROM seat_claims WHERE seat_id IN ('A-1-3', 'A-1-16')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(free, 0);

    pool.close().await;
    db.drop_db().await;
}

/// Rows read by sequential scans of the claim tables in this connection's open transaction.
async fn seq_rows_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT sum(pg_stat_get_xact_tuples_returned(c.oid))::bigint FROM pg_class c \
         WHERE c.relname IN ('order_lines', 'seat_claims', 'holds', 'orders', 'seats', 'idempotency_keys') \
           AND c.relkind = 'r'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// `tiketi_claim_holds` over (hold, user, seat) triples of `event`, one seat each: its rows
/// (index, kind, seat).
async fn claim_batch(
    conn: &mut sqlx::PgConnection,
    event: &str,
    holds: &[(uuid::Uuid, &str, &str)],
) -> Vec<(i32, String, Option<String>)> {
    let n = holds.len();
    let expires = vec![chrono::Utc::now() + chrono::Duration::minutes(5); n];
    sqlx::query_as(
        "SELECT r_index, r_kind, r_seat FROM tiketi_claim_holds($1, $2, $3, $4, $5, $6, $7) \
         ORDER BY r_index, r_seat",
    )
    .bind(holds.iter().map(|h| h.0).collect::<Vec<_>>())
    .bind(vec![event.to_owned(); n])
    .bind(holds.iter().map(|h| h.1.to_owned()).collect::<Vec<_>>())
    .bind(expires)
    .bind(vec![4i32; n])
    .bind((1..=n as i32).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.2.to_owned()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await
    .unwrap()
}

/// `tiketi_claim_hold` of one seat: the kinds of its rows (none: claimed).
async fn claim_one(
    conn: &mut sqlx::PgConnection,
    event: &str,
    hold: uuid::Uuid,
    user: &str,
    seat: &str,
) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT r_kind FROM tiketi_claim_hold($1, $2, $3, ARRAY[$4], now() + interval '5 minutes', 4)",
    )
    .bind(hold)
    .bind(event)
    .bind(user)
    .bind(seat)
    .fetch_all(conn)
    .await
    .unwrap()
}

async fn confirm_sql(conn: &mut sqlx::PgConnection, hold: uuid::Uuid, user: &str) -> String {
    sqlx::query_scalar(
        "SELECT r_outcome FROM tiketi_confirm($1, $2, $3, 'fp', '{}'::jsonb, $4, now(), 4, NULL, 600)",
    )
    .bind(hold)
    .bind(user)
    .bind(format!("key-{hold}"))
    .bind(uuid::Uuid::new_v4())
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn claims_and_confirms_probe_indexes_whatever_the_tables_held_when_planned() {
    // A connection plans the claim and confirm statements while the tables are nearly empty (a
    // new database, the first minutes of a first on-sale), then the tables grow: its cached
    // plans must still read rows by key. Before, the batch claim's sold check kept a hash join
    // over a sequential scan of every order line of every event, in every batch.
    use sqlx::Connection;

    let (event, db, _store) = migrated_store("probe", "resv_probe", 100).await;
    let pool = db.pool().await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();

    // Planned on small tables: six single claims confirmed (plpgsql keeps a generic plan after
    // five runs) and a batch holding A-1-30 for a live hold of "keeper".
    for r in 0..6 {
        let (hold, user) = (uuid::Uuid::new_v4(), format!("early-{r}"));
        assert_eq!(
            claim_one(&mut conn, &event, hold, &user, &format!("A-1-{}", 10 + r)).await,
            Vec::<String>::new()
        );
        assert_eq!(confirm_sql(&mut conn, hold, &user).await, "created");
    }
    let keeper = uuid::Uuid::new_v4();
    assert!(
        claim_batch(
            &mut conn,
            &event,
            &[
                (keeper, "keeper", "A-1-30"),
                (uuid::Uuid::new_v4(), "early-b", "A-1-31")
            ]
        )
        .await
        .is_empty()
    );

    // Another event sells 30,000 seats meanwhile (through other connections).
    for stmt in [
        "INSERT INTO events (event_id, config, total_seats) VALUES ('big', '{}', 30000)",
        "INSERT INTO seats SELECT 'big', 's' || g, 'A', 1, g, NULL, g FROM generate_series(1, 30000) g",
        "INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at, status) \
         SELECT lpad(to_hex(g), 32, '0')::uuid, 'big', 'u' || g, ARRAY['s' || g], now(), 'confirmed' \
         FROM generate_series(1, 30000) g",
        "INSERT INTO orders (order_id, event_id, user_id, hold_id) \
         SELECT hold_id, event_id, user_id, hold_id FROM holds WHERE event_id = 'big'",
        "INSERT INTO order_lines (order_id, event_id, seat_id) \
         SELECT hold_id, event_id, seat_ids[1] FROM holds WHERE event_id = 'big'",
        "INSERT INTO seat_claims SELECT event_id, seat_ids[1], hold_id, user_id, 'infinity' \
         FROM holds WHERE event_id = 'big'",
    ] {
        sqlx::query(stmt).execute(&pool).await.unwrap();
    }

    // The same connection, one transaction: a batch with a sold seat, a seat another live hold
    // claims (the short-hold path) and a free one; a single claim of a sold seat and of a free
    // one; a confirm. The answers are right and no table was scanned.
    let mut tx = conn.begin().await.unwrap();
    let before = seq_rows_read(&mut tx).await;
    let free = uuid::Uuid::new_v4();
    let rows = claim_batch(
        &mut tx,
        &event,
        &[
            (uuid::Uuid::new_v4(), "late-a", "A-1-10"),
            (uuid::Uuid::new_v4(), "late-b", "A-1-30"),
            (free, "late-c", "A-1-40"),
        ],
    )
    .await;
    assert_eq!(
        rows,
        vec![
            (1, "sold".to_owned(), Some("A-1-10".to_owned())),
            (2, "held".to_owned(), Some("A-1-30".to_owned()))
        ]
    );
    assert_eq!(
        claim_one(&mut tx, &event, uuid::Uuid::new_v4(), "late-d", "A-1-11").await,
        vec!["sold"]
    );
    assert_eq!(
        claim_one(&mut tx, &event, uuid::Uuid::new_v4(), "late-e", "A-1-41").await,
        Vec::<String>::new()
    );
    assert_eq!(confirm_sql(&mut tx, free, "late-c").await, "created");
    let read = seq_rows_read(&mut tx).await - before;
    tx.commit().await.unwrap();
    assert_eq!(read, 0, "rows read by sequential scans of the claim tables");

    conn.close().await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_confirm_at_the_instant_its_hold_lapses_cannot_double_the_purchase_limit() {
    // A buyer (cap 4) holds 4 seats; the confirm of that hold begins just before the hold lapses
    // (its transaction's clock says live), a new hold of 4 other seats by the same buyer is
    // claimed just after (its clock says the first hold lapsed), then the confirm goes on. The
    // buyer must not end up with 8 seats.
    use sqlx::Connection;

    let (event, db, store) = migrated_store("lapse", "resv_lapse", 100).await;
    let first = tiketi_reservation::model::Hold {
        expires_at: chrono::Utc::now() + chrono::Duration::milliseconds(1500),
        ..live_hold(&event, "scalper", a(&["1", "2", "3", "4"]))
    };
    store.claim_hold(&first, 4).await.unwrap().unwrap();

    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    // The confirm's transaction begins while the hold is live (now() is fixed from here).
    let live: bool = sqlx::query_scalar("SELECT now() < $1")
        .bind(first.expires_at)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(live);
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_millis(1700)).await;
    let second = live_hold(&event, "scalper", a(&["5", "6", "7", "8"]));
    store.claim_hold(&second, 4).await.unwrap().unwrap();
    let outcome: String = sqlx::query_scalar(
        "SELECT r_outcome FROM tiketi_confirm($1, 'scalper', 'k-1', 'fp', '{}'::jsonb, $2, now(), 4, NULL, 600)",
    )
    .bind(first.hold_id)
    .bind(uuid::Uuid::new_v4())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(outcome, "limit");

    let pool = db.pool().await;
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM seat_claims WHERE event_id = $1 AND user_id = 'scalper' AND expires_at > now()",
    )
    .bind(&event)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(owned, 4, "held and bought seats of a buyer with a cap of 4");
    conn.close().await.unwrap();
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_http_holds_one_of_them_over_a_seat_only_postgres_knows_is_held() {
    // Redis lost the lock of a live hold on A-1-1 (PostgreSQL still has its claim). Thirty
    // buyers hold at once; one asks A-1-1 with a free seat: only that request is refused (409
    // naming A-1-1), every other gets 201, and PostgreSQL has exactly the claims of the 201s.
    let env = Env::start("batchhttp", 40, 300, 4, None).await;
    let pool = env.db.pool().await;
    let other = uuid::Uuid::new_v4();
    sqlx::query(&format!(
        "INSERT INTO seat_claims VALUES ('{}', 'A-1-1', '{other}', 'other', now() + interval '1 hour')",
        env.event
    ))
    .execute(&pool)
    .await
    .unwrap();
    let users: Vec<User> = (0..30)
        .map(|k| User::new(&env.event, &format!("b-{k}")))
        .collect();
    let asks: Vec<Vec<&str>> = (0..30)
        .map(|k| match k {
            0 => vec!["A-1-1", "A-1-2"],
            k => vec![
                [
                    "A-1-3", "A-1-4", "A-1-5", "A-1-6", "A-1-7", "A-1-8", "A-1-9", "A-1-10", "A-1-11",
                    "A-1-12", "A-1-13", "A-1-14", "A-1-15", "A-1-16", "A-1-17", "A-1-18", "A-1-19", "A-1-20",
                    "A-1-21", "A-1-22", "A-1-23", "A-1-24", "A-1-25", "A-1-26", "A-1-27", "A-1-28", "A-1-29",
                    "A-1-30", "A-1-31",
                ][k - 1],
            ],
        })
        .collect();
    let answers = futures::future::join_all(users.iter().zip(&asks).map(|(u, s)| env.hold(u, s))).await;
    let (st, body) = &answers[0];
    assert_eq!(*st, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["seats"], json!(["A-1-1"]), "{body}");
    let mut expected = Vec::new();
    for (k, (st, body)) in answers.iter().enumerate().skip(1) {
        assert_eq!(*st, StatusCode::CREATED, "buyer {k}: {body}");
        expected.push((asks[k][0].to_owned(), id(body).parse::<uuid::Uuid>().unwrap()));
    }
    expected.sort();
    let claims: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "SELECT seat_id, hold_id FROM seat_claims WHERE hold_id <> $1 AND expires_at > now() ORDER BY seat_id",
    )
    .bind(other)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(claims, expected);
    // The refused request's free seat was given back in Redis too: another buyer holds it.
    let (st, body) = env.hold(&User::new(&env.event, "late"), &["A-1-2"]).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    pool.close().await;
    env.finish().await;
}

#[tokio::test]
async fn a_claim_stuck_on_a_lock_does_not_hold_up_the_next_ones() {
    // One claim statement runs at a time, but one stuck on a lock for over 10 ms lets another
    // start beside it: the claims queued behind it are decided meanwhile.
    use tiketi_reservation::model::Hold;

    let (event, db, store) = migrated_store("stall", "resv_stall", 10).await;
    let pool = db.pool().await;
    // A lapsed claim on A-1-1, its row locked by an open transaction.
    sqlx::query(&format!(
        "INSERT INTO seat_claims VALUES ('{event}', 'A-1-1', '{}', 'gone', now() - interval '1 hour')",
        uuid::Uuid::new_v4()
    ))
    .execute(&pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM seat_claims WHERE seat_id = 'A-1-1' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let hold = |user: &str, seat: &str| live_hold(&event, user, vec![seat.to_owned()]);
    let stuck = {
        let (store, h) = (store.clone(), hold("first", "A-1-1"));
        tokio::spawn(async move { store.claim_hold(&h, 4).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next: Vec<Hold> = (2..=5)
        .map(|k| hold(&format!("next-{k}"), &format!("A-1-{k}")))
        .collect();
    let decided = tokio::time::timeout(
        Duration::from_secs(3),
        futures::future::join_all(next.iter().map(|h| store.claim_hold(h, 4))),
    )
    .await
    .expect("the claims behind a stuck one are decided while it waits");
    for r in decided {
        assert_eq!(r.unwrap(), Ok(()));
    }
    assert!(!stuck.is_finished(), "the first claim still waits on the lock");
    tx.rollback().await.unwrap();
    assert_eq!(
        stuck.await.unwrap().unwrap(),
        Ok(()),
        "then takes the lapsed claim"
    );

    pool.close().await;
    db.drop_db().await;
}

/// Confirms and claim batches run on connections kept out of sqlx's pool, which would ping each
/// one given back (a round trip per checkout). One that answered is used again as it is; one
/// left in the middle of a statement (here a confirm whose backend stopped answering, past the
/// store's bound) is closed — handed to the next caller, that caller would wait behind the abandoned
/// statement — and the next statements get their own answers on a new connection.
#[tokio::test]
async fn a_connection_left_mid_statement_is_never_used_again() {
    use tiketi_reservation::db::{ConfirmRules, DbError};

    let (event, db, store) = migrated_store_bounded("hot", "resv_hot", 10, Duration::from_millis(800)).await;
    let hold = |user: &str, seat: &str| live_hold(&event, user, vec![seat.to_owned()]);
    let (a, b) = (hold("a", "A-1-1"), hold("b", "A-1-2"));
    for h in [&a, &b] {
        assert_eq!(store.claim_hold(h, 4).await.unwrap(), Ok(()));
    }
    // Sequential use keeps one connection, given back as it is.
    for _ in 0..3 {
        let ctx = store.confirm_context("b", "k-b", b.hold_id).await.unwrap();
        assert_eq!(ctx.hold.as_ref().map(|h| h.hold.hold_id), Some(b.hold_id));
    }
    assert_eq!(hot_usage(&store)[..2], [1, 1], "one connection, used again");

    // A's confirm waits on A's hold row, which another transaction holds, and its backend stops
    // answering (SIGSTOP) meanwhile: the request's bound ends the statement on the service's
    // side, and the connection left in the middle of it is closed.
    let pool = db.pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM holds WHERE hold_id = $1 FOR UPDATE")
        .bind(a.hold_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let rules = ConfirmRules {
        cap: 4,
        sale_ends: None,
        admission_ttl_seconds: None,
    };
    let waiting = {
        let (store, a) = (store.clone(), a.clone());
        tokio::spawn(async move { store.confirm(&a, "a", "k-a", "fp-a", rules).await })
    };
    let backend: i32 = loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'tiketi-reservation' AND wait_event_type = 'Lock'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    /// Sends SIGCONT to the stopped backend when dropped, also if an assertion fails first.
    struct Thaw(i32);
    impl Drop for Thaw {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .status();
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-STOP", &backend.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -STOP {backend}");
    let thaw = Thaw(backend);
    let abandoned = waiting.await.unwrap();
    drop(thaw);
    assert!(
        matches!(abandoned, Err(DbError::Timeout(_))),
        "the service's bound ends the wait: {abandoned:?}"
    );
    assert_eq!(
        hot_usage(&store)[..2],
        [0, 0],
        "the connection left mid-statement is closed"
    );
    tx.rollback().await.unwrap();

    // The next statements get their own answers, on a new connection.
    let ctx = store.confirm_context("b", "k-b", b.hold_id).await.unwrap();
    assert_eq!(ctx.hold.as_ref().map(|h| h.hold.hold_id), Some(b.hold_id));
    let order = store.confirm(&b, "b", "k-b", "fp-b", rules).await.unwrap();
    assert!(
        matches!(order, tiketi_reservation::db::ConfirmOutcome::Created(ref o) if o.hold_id == b.hold_id),
        "{order:?}"
    );
    assert_eq!(hot_usage(&store)[..2], [1, 1]);

    pool.close().await;
    db.drop_db().await;
}

/// Concurrent confirms share statements (`tiketi_confirm_many`), and each gets the answer it
/// would get alone: a hold whose seat another live hold claimed, one whose seat was sold, one
/// already an order, one whose Idempotency-Key another request took, one past the limit, one of
/// a seat gone from the inventory — refused, each with its own reason — while the forty beside
/// them become orders, in the same statements.
#[tokio::test]
async fn confirms_decided_together_refuse_only_the_conflicting_ones() {
    use tiketi_reservation::db::{ConfirmOutcome, ConfirmRules};

    let (event, db, store) = migrated_store("cbatch", "resv_cbatch", 100).await;
    let pool = db.pool().await;
    let rules = ConfirmRules {
        cap: 4,
        sale_ends: None,
        admission_ttl_seconds: None,
    };
    let hold = |user: &str, seats: Vec<String>| live_hold(&event, user, seats);
    let held = hold("u-held", a(&["1"]));
    let sold = hold("u-sold", a(&["2"]));
    let ordered = hold("u-ordered", a(&["3"]));
    let keyed = hold("u-keyed", a(&["4"]));
    let over = hold("u-over", a(&["5", "6"]));
    let removed = hold("u-removed", a(&["7"]));
    let mut fine = Vec::new();
    for k in 0..40 {
        fine.push(hold(&format!("u-{k}"), a(&[&(20 + k).to_string()])));
    }
    for h in [&held, &sold, &ordered, &keyed, &over, &removed]
        .into_iter()
        .chain(fine.iter())
    {
        assert_eq!(store.claim_hold(h, 4).await.unwrap(), Ok(()), "{h:?}");
    }
    // Behind Redis's back: A-1-1's claim lapsed and another live hold took it; A-1-2 sold to
    // another order (its claim gone); the hold of A-1-3 already an order; u-keyed's key used;
    // u-over holding 3 more seats of another hold; A-1-7 gone from the inventory.
    let (other, sold_to, extra) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let prior = store
        .confirm(&ordered, "u-ordered", "k-first", "fp", rules)
        .await
        .unwrap();
    let ConfirmOutcome::Created(prior) = prior else {
        panic!("{prior:?}")
    };
    for stmt in [
        format!(
            "UPDATE seat_claims SET hold_id = '{other}', user_id = 'other', expires_at = now() + interval '1 hour' \
             WHERE event_id = '{event}' AND seat_id = 'A-1-1'"
        ),
        format!("DELETE FROM seat_claims WHERE event_id = '{event}' AND seat_id = 'A-1-2'"),
        format!(
            "INSERT INTO holds (hold_id, event_id, user_id, seat_ids, expires_at, status) \
             VALUES ('{sold_to}', '{event}', 'buyer', ARRAY['A-1-2'], now(), 'confirmed')"
        ),
        format!(
            "INSERT INTO orders (order_id, event_id, user_id, hold_id) VALUES ('{sold_to}', '{event}', 'buyer', '{sold_to}')"
        ),
        format!("INSERT INTO order_lines VALUES ('{sold_to}', '{event}', 'A-1-2')"),
        "INSERT INTO idempotency_keys (user_id, idempotency_key, fingerprint) VALUES ('u-keyed', 'k', 'fp')"
            .to_owned(),
        format!(
            "INSERT INTO seat_claims SELECT '{event}', s, '{extra}', 'u-over', now() + interval '1 hour' \
             FROM unnest(ARRAY['A-1-10', 'A-1-11', 'A-1-12']) s"
        ),
        format!("DELETE FROM seat_claims WHERE event_id = '{event}' AND seat_id = 'A-1-7'"),
        format!("DELETE FROM seats WHERE event_id = '{event}' AND seat_id = 'A-1-7'"),
    ] {
        sqlx::query(&stmt).execute(&pool).await.unwrap();
    }

    let all: Vec<&tiketi_reservation::model::Hold> = [&held, &sold, &ordered, &keyed, &over, &removed]
        .into_iter()
        .chain(fine.iter())
        .collect();
    let answers =
        futures::future::join_all(all.iter().map(|h| store.confirm(h, &h.user_id, "k", "fp", rules))).await;
    let answers: Vec<ConfirmOutcome> = answers.into_iter().map(|r| r.unwrap()).collect();
    // All 46 were queued before the drainer ran: a full batch of 32 (the conflicting six among
    // them) and one of 14, both answered by their statement (a batch that failed and was
    // decided one by one is not counted), after the one confirm before.
    let stats = store.confirm_stats();
    assert_eq!(
        (stats.statements, stats.largest),
        (3, 32),
        "confirms were batched: {stats:?}"
    );
    assert!(
        matches!(&answers[0], ConfirmOutcome::SeatsTaken(s) if s == &a(&["1"])),
        "{:?}",
        answers[0]
    );
    assert!(
        matches!(&answers[1], ConfirmOutcome::SeatsTaken(s) if s == &a(&["2"])),
        "{:?}",
        answers[1]
    );
    assert!(
        matches!(&answers[2], ConfirmOutcome::AlreadyConfirmed(Some(o)) if *o == prior.order_id),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[3], ConfirmOutcome::KeyInUse),
        "{:?}",
        answers[3]
    );
    assert!(
        matches!(&answers[4], ConfirmOutcome::OverLimit { current: 3 }),
        "{:?}",
        answers[4]
    );
    assert!(
        matches!(&answers[5], ConfirmOutcome::SeatsRemoved(s) if s == &a(&["7"])),
        "{:?}",
        answers[5]
    );
    for (h, answer) in fine.iter().zip(&answers[6..]) {
        assert!(
            matches!(answer, ConfirmOutcome::Created(o) if o.hold_id == h.hold_id),
            "{answer:?}"
        );
    }
    // What PostgreSQL holds: the forty orders and the one before, no line of a refused hold.
    let orders: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE event_id = $1 AND order_id <> $2")
            .bind(&event)
            .bind(sold_to)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(orders, 41);
    let lines: Vec<String> = sqlx::query_scalar(
        "SELECT seat_id FROM order_lines WHERE event_id = $1 AND seat_id IN ('A-1-1', 'A-1-4', 'A-1-5', 'A-1-6')",
    )
    .bind(&event)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(lines.is_empty(), "{lines:?}");

    pool.close().await;
    db.drop_db().await;
}

/// One confirm of a batch waiting on a row lock until the bound ends the batch's statement: its
/// neighbours are decided again alone and become orders; only it fails.
#[tokio::test]
async fn a_confirm_stuck_on_a_lock_does_not_fail_the_confirms_batched_with_it() {
    use tiketi_reservation::db::{ConfirmOutcome, ConfirmRules};

    let (event, db, store) =
        migrated_store_bounded("cstuck", "resv_cstuck", 20, Duration::from_millis(1500)).await;
    let holds: Vec<_> = (1..=10)
        .map(|k| live_hold(&event, &format!("u-{k}"), a(&[&k.to_string()])))
        .collect();
    for h in &holds {
        assert_eq!(store.claim_hold(h, 4).await.unwrap(), Ok(()));
    }
    // The set's connections open and warm, as the keeper keeps them on a running replica.
    store.tend_hot().await.unwrap();
    let pool = db.pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM holds WHERE hold_id = $1 FOR UPDATE")
        .bind(holds[0].hold_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let rules = ConfirmRules {
        cap: 4,
        sale_ends: None,
        admission_ttl_seconds: None,
    };
    let answers = futures::future::join_all(
        holds
            .iter()
            .map(|h| store.confirm(h, &h.user_id, "k", "fp", rules)),
    )
    .await;
    tx.rollback().await.unwrap();
    assert!(answers[0].is_err(), "the stuck confirm fails: {:?}", answers[0]);
    for (h, answer) in holds.iter().zip(&answers).skip(1) {
        assert!(
            matches!(answer, Ok(ConfirmOutcome::Created(o)) if o.hold_id == h.hold_id),
            "{answer:?}"
        );
    }
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn the_keeper_keeps_the_hot_connections_open_and_replaces_dead_ones() {
    // 16 connections: 12 hot ones.
    let (event, db, store) = migrated_store("keeper", "resv_keeper", 10).await;
    let pool = db.pool().await;
    let backends = || async {
        let mut pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'tiketi-reservation'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pids.sort_unstable();
        pids
    };
    assert_eq!(
        hot_usage(&store),
        [0, 0, 12],
        "nothing open before the first pass"
    );

    // The first pass opens (and warms: each hot statement once) every hot connection.
    assert_eq!(store.tend_hot().await.unwrap(), 12);
    assert_eq!(hot_usage(&store), [12, 12, 12]);
    // (The pool's own connections, used for the migrations, carry the same name.)
    let before = backends().await;
    assert!(before.len() >= 12, "{before:?}");
    assert_eq!(store.tend_hot().await.unwrap(), 0, "a full set opens nothing");

    // PostgreSQL ends them while the set is quiet (a restart, a failover): the next pass after
    // half the ping period finds them dead and opens new ones.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'tiketi-reservation'",
    )
    .execute(&pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(store.tend_hot().await.unwrap(), 12);
    assert_eq!(hot_usage(&store), [12, 12, 12]);
    let after = backends().await;
    assert_eq!(after.len(), 12, "{after:?}");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );

    // The statements run on them at once.
    let h = live_hold(&event, "k", vec!["A-1-1".to_owned()]);
    assert_eq!(store.claim_hold(&h, 4).await.unwrap(), Ok(()));
    let ctx = store.confirm_context("k", "k-1", h.hold_id).await.unwrap();
    assert_eq!(ctx.hold.as_ref().map(|r| r.hold.hold_id), Some(h.hold_id));

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn an_inventory_load_may_run_past_the_request_bound() {
    // The load waits on the per-event inventory lock another loader holds for twice the request
    // bound (300 ms): the connection's statement_timeout is that bound, so the wait would be
    // cancelled if the load's own, ten times longer bound did not apply to its statements.
    let (event, db, _) = migrated_store("bigload", "resv_bigload", 10).await;
    let path = write_config(&event, 2, 10, 300, 4);
    let cfg = tiketi_shared::config::load(&path)
        .unwrap()
        .remove(&event)
        .unwrap();
    let bound = Duration::from_millis(300);
    let store = tiketi_reservation::db::Db::new(&db.url, None, 4, bound, 64).unwrap();
    let pool = db.pool().await;
    let mut other = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tiketi-inventory:' || $1))")
        .bind(&event)
        .execute(&mut *other)
        .await
        .unwrap();
    let release = async {
        tokio::time::sleep(bound * 2).await;
        other.commit().await.unwrap();
    };
    let started = std::time::Instant::now();
    let (loaded, ()) = tokio::join!(store.load_inventory(&cfg), release);
    let loaded = loaded.expect("the load outlasts the request bound");
    assert!(started.elapsed() >= bound * 2, "the load waited for the lock");
    assert!(loaded.refused.is_empty());
    assert_eq!(
        loaded.seats.len(),
        20,
        "the new inventory (2 rows of 10) is stored"
    );
    pool.close().await;
    db.drop_db().await;
}
