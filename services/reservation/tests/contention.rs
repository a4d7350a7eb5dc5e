//! 2,000 concurrent clients race for 500 seats with random 1–4-seat holds, confirms and
//! releases, against real PostgreSQL and Redis; once on the shared Redis, once on a private
//! redis-server that is FLUSHALLed in the middle of the race. Afterwards every seat is sold at most
//! once, sold + available = inventory, and every 2xx confirm is in the database with its seats.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::Value;
use tiketi_shared::keys::EventKeys;
use tokio::sync::Barrier;

const CLIENTS: usize = 2000;
const ROWS: u32 = 20;
const PER_ROW: u32 = 25; // 500 seats
/// Seat kept out of the random race for the deterministic flush scenario.
const PAIR_SEAT: &str = "A-1-1";
/// Short enough that a hold stranded by an overloaded machine (its undo timed out) lapses while
/// the test waits for availability to settle.
const HOLD_TTL_SECS: u64 = 15;

#[derive(Default, Debug)]
struct Outcome {
    /// (order id, seats) of every 201 confirm.
    orders: Vec<(String, Vec<String>)>,
    hold_conflicts: usize,
    confirm_conflicts: usize,
    releases: usize,
    unavailable_retries: usize,
    unexpected: Vec<String>,
}

/// Sends with retries on 503 / transport errors, as a well-behaved client does.
async fn with_retries<F, Fut>(out: &mut Outcome, mut f: F) -> Option<(StatusCode, Value)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = reqwest::Result<(StatusCode, Value)>>,
{
    for _ in 0..50 {
        match f().await {
            Ok((StatusCode::SERVICE_UNAVAILABLE, _)) | Err(_) => {
                out.unavailable_retries += 1;
                let pause = rand::rng().random_range(100..400);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Ok(r) => return Some(r),
        }
    }
    out.unexpected.push("gave up after 50 retries".into());
    None
}

async fn client_run(
    i: usize,
    base: String,
    event: String,
    seats: Arc<Vec<String>>,
    held_ok: Arc<AtomicUsize>,
    barrier: Arc<Barrier>,
    http: reqwest::Client,
) -> Outcome {
    let mut out = Outcome::default();
    let user = User::new(&event, &format!("racer-{i}"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 * 7919 + 13);
    barrier.wait().await;
    for _attempt in 0..3 {
        let n = rng.random_range(1..=4usize);
        let pick: Vec<String> = seats.choose_multiple(&mut rng, n).cloned().collect();
        let Some((status, body)) = with_retries(&mut out, || user.hold(&http, &base, &event, &pick)).await
        else {
            return out;
        };
        match status {
            StatusCode::CREATED => {
                held_ok.fetch_add(1, Ordering::Relaxed);
                let hold = body["holdId"].as_str().unwrap().to_owned();
                // Think time, so holds are alive while other clients (and a FLUSHALL) act.
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..40))).await;
                if rng.random_bool(0.85) {
                    let key = format!("confirm-{i}-{hold}");
                    let Some((s, b)) =
                        with_retries(&mut out, || user.confirm(&http, &base, &hold, &key)).await
                    else {
                        return out;
                    };
                    match s {
                        StatusCode::CREATED => {
                            let got: Vec<String> = b["seats"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_str().unwrap().to_owned())
                                .collect();
                            let mut want = pick.clone();
                            want.sort();
                            if got != want {
                                out.unexpected
                                    .push(format!("order seats {got:?} != held {want:?}"));
                            }
                            out.orders.push((b["orderId"].as_str().unwrap().to_owned(), got));
                            return out;
                        }
                        StatusCode::CONFLICT => {
                            out.confirm_conflicts += 1;
                            // The answer came back before the hold's own expiry (same clock):
                            // a live hold was refused, whatever Redis lost meanwhile.
                            let expires = body["expiresAt"]
                                .as_str()
                                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                            if expires.is_some_and(|e| chrono::Utc::now() < e) {
                                out.unexpected.push(format!("live hold {hold} refused: {b}"));
                            }
                            let _ = with_retries(&mut out, || async {
                                user.release(&http, &base, &hold).await.map(|s| (s, Value::Null))
                            })
                            .await;
                        }
                        other => out.unexpected.push(format!("confirm: {other} {b}")),
                    }
                } else {
                    let released = with_retries(&mut out, || async {
                        user.release(&http, &base, &hold).await.map(|s| (s, Value::Null))
                    })
                    .await;
                    match released {
                        Some((StatusCode::NO_CONTENT, _)) => out.releases += 1,
                        other => out.unexpected.push(format!("release: {other:?}")),
                    }
                    return out;
                }
            }
            StatusCode::CONFLICT => {
                out.hold_conflicts += 1;
                if body["type"] != "https://tiketi.gg/problems/seats-taken"
                    || body["seats"].as_array().is_none_or(|s| s.is_empty())
                {
                    out.unexpected.push(format!("409 without taken seats: {body}"));
                }
            }
            other => out.unexpected.push(format!("hold: {other} {body}")),
        }
    }
    out
}

/// The deterministic part of the flush scenario: a hold made before FLUSHALL and one made after
/// on the same seat both try to confirm; PostgreSQL lets exactly one through.
struct Pair {
    a: User,
    a_hold: String,
}

/// The two races run one after the other: each is sized to load a 2-core machine by itself.
static ONE_RACE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn race(redis_url: &str, flush: Option<&PrivateRedis>) {
    let _serial = ONE_RACE_AT_A_TIME.lock().await;
    let event = unique(if flush.is_some() { "race-flush" } else { "race" });
    let db = TestDb::create("resv_race").await;
    let cfg = write_config(&event, ROWS, PER_ROW, HOLD_TTL_SECS, 4);
    let server = InProcess::start(settings(&db.url, redis_url, &cfg)).await;
    let base = server.base.clone();
    let http = client();
    let all: Vec<String> = (1..=ROWS)
        .flat_map(|r| (1..=PER_ROW).map(move |s| format!("A-{r}-{s}")))
        .collect();
    assert_eq!(all.len(), 500);
    let seats: Arc<Vec<String>> = Arc::new(all.iter().filter(|s| s.as_str() != PAIR_SEAT).cloned().collect());

    let pair_seat = vec![PAIR_SEAT.to_owned()];
    let pair = if flush.is_some() {
        let a = User::new(&event, "pair-a");
        let (s, b) = until_answered("pair-a hold", || a.hold(&http, &base, &event, &pair_seat)).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        Some(Pair {
            a,
            a_hold: b["holdId"].as_str().unwrap().to_owned(),
        })
    } else {
        None
    };

    let held_ok = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            tokio::spawn(client_run(
                i,
                base.clone(),
                event.clone(),
                seats.clone(),
                held_ok.clone(),
                barrier.clone(),
                http.clone(),
            ))
        })
        .collect();

    // On the private Redis, seat locks also vanish one by one throughout the race (what an
    // eviction does): PostgreSQL's claims must keep every live hold its seats.
    let stop_deleting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleter = flush.map(|redis| {
        let (url, keys, all, stop) = (
            redis.url.clone(),
            EventKeys::new(&event),
            seats.clone(),
            stop_deleting.clone(),
        );
        tokio::spawn(async move {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(42);
            let mut deleted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let seat = all.choose(&mut rng).unwrap();
                let n: u64 = redis::cmd("DEL")
                    .arg(keys.seat_hold(seat))
                    .query_async(&mut c)
                    .await
                    .unwrap_or(0);
                deleted += n;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            deleted
        })
    });

    let mut pair_results = None;
    if let (Some(redis), Some(pair)) = (flush, pair.as_ref()) {
        eventually(
            Duration::from_secs(60),
            "150 successful holds before the flush",
            || {
                let n = held_ok.load(Ordering::Relaxed);
                async move { (n >= 150).then_some(()) }
            },
        )
        .await;
        redis.flushall().await;
        // Redis forgot pair-a's live lock, but PostgreSQL's claim is pair-a's: pair-b is refused,
        // naming the seat, and Redis gets pair-a's lock back (it refuses early again).
        let b = User::new(&event, "pair-b");
        let rb = until_answered("pair-b hold", || b.hold(&http, &base, &event, &pair_seat)).await;
        let lock: Option<String> = {
            let client = redis::Client::open(redis.url.as_str()).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("GET")
                .arg(EventKeys::new(&event).seat_hold(PAIR_SEAT))
                .query_async(&mut c)
                .await
                .unwrap()
        };
        assert_eq!(
            lock.as_deref(),
            Some(pair.a_hold.as_str()),
            "pair-a's lock is restored"
        );
        // A second flush wipes that lock again: only PostgreSQL still knows pair-a's hold is live.
        redis.flushall().await;
        let ra = until_answered("pair-a confirm", || {
            pair.a.confirm(&http, &base, &pair.a_hold, "pair-a-key")
        })
        .await;
        pair_results = Some((ra, rb));
    }

    let mut total = Outcome::default();
    for t in tasks {
        let o = t.await.unwrap();
        total.orders.extend(o.orders);
        total.hold_conflicts += o.hold_conflicts;
        total.confirm_conflicts += o.confirm_conflicts;
        total.releases += o.releases;
        total.unavailable_retries += o.unavailable_retries;
        total.unexpected.extend(o.unexpected);
    }
    stop_deleting.store(true, Ordering::Relaxed);
    if let Some(d) = deleter {
        let deleted = d.await.unwrap();
        eprintln!("race {event}: {deleted} seat locks deleted during the race");
        assert!(deleted > 0, "the deleter must have removed live locks");
    }
    let mut client_orders: BTreeMap<String, Vec<String>> = total.orders.iter().cloned().collect();
    if let Some(((sa, ba), (sb, bb))) = &pair_results {
        assert_eq!(
            *sb,
            StatusCode::CONFLICT,
            "pair-a's hold is live, so pair-b may not hold its seat whatever Redis lost: {bb}"
        );
        assert_eq!(
            bb["seats"],
            serde_json::json!([PAIR_SEAT]),
            "the 409 names the seat: {bb}"
        );
        assert_eq!(
            *sa,
            StatusCode::CREATED,
            "pair-a's live hold confirms after two flushes: {ba}"
        );
        client_orders.insert(
            ba["orderId"].as_str().unwrap().to_owned(),
            vec![PAIR_SEAT.to_owned()],
        );
    }
    eprintln!(
        "race {event}: {} orders, {} hold conflicts, {} confirm conflicts, {} releases, {} 503 retries",
        client_orders.len(),
        total.hold_conflicts,
        total.confirm_conflicts,
        total.releases,
        total.unavailable_retries
    );
    assert!(
        total.unexpected.is_empty(),
        "unexpected answers: {:?}",
        &total.unexpected[..total.unexpected.len().min(10)]
    );
    assert!(
        total.hold_conflicts > 0,
        "2,000 clients on 500 seats must collide"
    );
    assert!(client_orders.len() > 50, "the race must sell seats");

    // Every seat is sold at most once, in the database and across 2xx answers.
    let pool = db.pool().await;
    assert!(double_bookings(&pool, &event).await.is_empty());
    let mut seen = BTreeSet::new();
    for seats in client_orders.values() {
        for s in seats {
            assert!(seen.insert(s.clone()), "seat {s} confirmed to two clients");
        }
    }
    // Every 2xx confirm is in the database with exactly its seats, and there is no other order.
    let rows: Vec<(uuid::Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT o.order_id, array_agg(l.seat_id ORDER BY l.seat_id) FROM orders o JOIN order_lines l USING (order_id) \
         WHERE o.event_id = $1 AND l.live GROUP BY o.order_id",
    )
    .bind(&event)
    .fetch_all(&pool)
    .await
    .unwrap();
    let db_orders: BTreeMap<String, Vec<String>> =
        rows.into_iter().map(|(id, s)| (id.to_string(), s)).collect();
    assert_eq!(
        db_orders, client_orders,
        "orders in PostgreSQL == 2xx confirms seen by clients"
    );
    let sold = seen.len() as u64;

    // Availability converges: nothing held, sold + available = inventory, and Redis has the counts.
    let avail = eventually(
        Duration::from_secs(HOLD_TTL_SECS + 30),
        "availability to settle",
        || {
            let (http, base, event) = (http.clone(), base.clone(), event.clone());
            async move {
                let a = availability(&http, &base, &event).await;
                (a["held"] == 0 && a["sold"] == sold).then_some(a)
            }
        },
    )
    .await;
    assert_eq!(avail["total"], 500);
    assert_eq!(
        avail["sold"].as_u64().unwrap() + avail["available"].as_u64().unwrap(),
        500,
        "{avail}"
    );
    let rc = redis::Client::open(redis_url).unwrap();
    let conn = rc.get_multiplexed_async_connection().await.unwrap();
    let keys = tiketi_shared::keys::EventKeys::new(&event);
    let counts: BTreeMap<String, String> =
        eventually(Duration::from_secs(10), "counts published to Redis", || {
            let (mut conn, key) = (conn.clone(), keys.counts());
            async move {
                let c: BTreeMap<String, String> = redis::AsyncCommands::hgetall(&mut conn, key).await.ok()?;
                (c.get("sold").map(String::as_str) == Some(&sold.to_string())
                    && c.get("held").map(String::as_str) == Some("0"))
                .then_some(c)
            }
        })
        .await;
    assert_eq!(counts["total"], "500");
    assert_eq!(counts["available"], (500 - sold).to_string());
    cleanup_redis(redis_url, &event).await;

    server.stop().await;
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_clients_race_for_five_hundred_seats() {
    race(&redis_url(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_in_the_middle_of_the_race_still_never_double_books() {
    let redis = PrivateRedis::start().await;
    race(&redis.url, Some(&redis)).await;
    redis.stop().await;
}
