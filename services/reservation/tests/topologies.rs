//! The reservation service on the stack's other Redis topologies: a three-primary Redis Cluster
//! (REDIS_CLUSTER_URL) and a TLS Redis with an AUTH token and an ACL user (REDIS_TLS_URL,
//! REDIS_TLS_ACL_URL, verified with REDIS_TLS_CA). Hold, confirm, release and the counts it
//! publishes run the same scripts as on a single node; a wrong CA is refused quickly with 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use reqwest::StatusCode;
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::{RedisArgs, RedisConn};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (eval \"$(e2e/stack env)\")"))
}

fn cluster() -> RedisArgs {
    RedisArgs {
        cluster: true,
        ..RedisArgs::new(env("REDIS_CLUSTER_URL"))
    }
}

fn tls(url_var: &str, ca_var: &str) -> RedisArgs {
    RedisArgs {
        ca_file: Some(env(ca_var).into()),
        ..RedisArgs::new(env(url_var))
    }
}

fn events(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| unique(&format!("topo-{prefix}{i}"))).collect()
}

/// Holds, confirms and releases in `events` events over `redis`, and checks the published counts.
async fn sell_over(redis: RedisArgs, ids: &[String]) {
    let db = TestDb::create("resv_topo").await;
    let cfgs: Vec<serde_json::Value> = ids
        .iter()
        .map(|e| {
            let path = write_config(e, 1, 4, 300, 4);
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        })
        .collect();
    let cfg = write_config_value(&serde_json::Value::Array(cfgs));
    let mut s = settings(&db.url, "redis://unused", &cfg);
    s.redis = redis.clone();
    let server = InProcess::start(s).await;
    let http = client();
    let base = server.base.clone();
    for event in ids {
        let alice = User::new(event, "alice");
        let bob = User::new(event, "bob");
        let (st, hold) = alice
            .hold(&http, &base, event, &["A-1-1".into(), "A-1-2".into()])
            .await
            .unwrap();
        assert_eq!(st, StatusCode::CREATED, "{event}: {hold}");
        let id = hold["holdId"].as_str().unwrap().to_owned();
        let (st, order) = alice
            .confirm(&http, &base, &id, &format!("k-{event}"))
            .await
            .unwrap();
        assert_eq!(st, StatusCode::CREATED, "{event}: {order}");
        let (st, _) = bob.hold(&http, &base, event, &["A-1-1".into()]).await.unwrap();
        assert_eq!(st, StatusCode::CONFLICT, "{event}: a sold seat is not held again");
        let (st, h2) = bob.hold(&http, &base, event, &["A-1-3".into()]).await.unwrap();
        assert_eq!(st, StatusCode::CREATED, "{event}: {h2}");
        let st = bob
            .release(&http, &base, h2["holdId"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(st, StatusCode::NO_CONTENT, "{event}");
    }
    // Every event's counts are published into its own slot.
    let mut conn = RedisConn::connect_lazy(&redis, Duration::from_secs(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    for event in ids {
        loop {
            let sold: Option<u64> = conn.hget(EventKeys::new(event).counts(), "sold").await.unwrap();
            if sold == Some(2) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{event}: counts not published (sold {sold:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    server.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn sells_over_a_redis_cluster() {
    let ids = events("cl", 12);
    // redis-cli --cluster create splits the 16,384 slots in three equal ranges, one per primary.
    let shards: std::collections::BTreeSet<u16> = ids
        .iter()
        .map(|e| tiketi_shared::redis::slot_of(e) / 5462)
        .collect();
    assert!(shards.len() >= 2, "the events span shards: {shards:?}");
    sell_over(cluster(), &ids).await;
}

/// A Redis Cluster that speaks TLS only (ElastiCache cluster mode with in-transit encryption),
/// verified with the stack's CA.
#[tokio::test]
async fn sells_over_a_tls_cluster() {
    let (cluster, ca) = tiketi_e2e::PrivateCluster::spawn_tls().await.unwrap();
    let ids = events("tlscl", 8);
    sell_over(cluster.redis_args(Some(ca)), &ids).await;
}

#[tokio::test]
async fn sells_over_tls_with_an_auth_token_and_with_an_acl_user() {
    sell_over(tls("REDIS_TLS_URL", "REDIS_TLS_CA"), &events("tok", 2)).await;
    sell_over(tls("REDIS_TLS_ACL_URL", "REDIS_TLS_CA"), &events("acl", 2)).await;
}

#[tokio::test]
async fn a_wrong_ca_is_refused_quickly_with_503() {
    let db = TestDb::create("resv_wrongca").await;
    let event = unique("wrongca");
    let cfg = write_config(&event, 1, 4, 300, 4);
    let mut s = settings(&db.url, "redis://unused", &cfg);
    s.redis = tls("REDIS_TLS_URL", "REDIS_WRONG_CA");
    let server = InProcess::spawn(s).await;
    let probe = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(10), "the listener", || async {
        probe
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .ok()
            .map(|r| r.status())
    })
    .await;
    assert_eq!(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready with a Redis it cannot verify"
    );
    let http = client();
    let alice = User::new(&event, "alice");
    let t0 = Instant::now();
    let r = http
        .post(format!("{}/v1/events/{event}/holds", server.base))
        .header("authorization", &alice.bearer)
        .header("x-admission-token", &alice.admission)
        .json(&serde_json::json!({"seats": ["A-1-1"]}))
        .send()
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        took < Duration::from_secs(5),
        "refused after {took:?}, not at once"
    );
    // The same wrong CA through the shared connection names the certificate problem.
    let mut conn =
        RedisConn::connect_lazy(&tls("REDIS_TLS_URL", "REDIS_WRONG_CA"), Duration::from_secs(2)).unwrap();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_err();
    let msg = err.to_string().to_lowercase();
    assert!(msg.contains("certificate") || msg.contains("issuer"), "{msg}");
    server.stop().await;
    db.drop_db().await;
}

/// Failover while selling: in a private cluster (three primaries, one replica each) the primary
/// of an event's slot is SIGKILLed during a run of holds. Every hold answers 201 or 503 within
/// the Redis timeout (none hangs, nothing else is answered), and
/// the service recovers by itself once the replica is promoted: holds, a confirm and the counts
/// published into the event's slot work again; no order confirmed before the kill is lost and no
/// seat is sold twice.
#[tokio::test]
async fn holds_recover_when_a_primary_is_killed() {
    let mut cluster = tiketi_e2e::PrivateCluster::spawn().await.unwrap();
    let ids = events("fo", 8);
    let owner = |e: &String| cluster.primary_of(tiketi_shared::redis::slot_of(e));
    let (event, primary) = ids
        .iter()
        .find_map(|e| owner(e).filter(|&p| p != 0).map(|p| (e.clone(), p)))
        .expect("an event on a primary other than the seed");
    let db = TestDb::create("resv_failover").await;
    let cfg = write_config(&event, 10, 40, 300, 4);
    let redis = RedisArgs {
        cluster: true,
        ..RedisArgs::new(cluster.url())
    };
    let mut s = settings(&db.url, "redis://unused", &cfg);
    s.redis = redis.clone();
    let server = InProcess::start(s).await;
    let http = client();
    let base = server.base.clone();
    let seat = |n: usize| format!("A-{}-{}", n / 40 + 1, n % 40 + 1);
    // Orders confirmed before the kill (the seats 0..5), one hold left open on seat 5.
    let mut orders = Vec::new();
    for n in 0..5 {
        let u = User::new(&event, &format!("early{n}"));
        let (st, hold) = u.hold(&http, &base, &event, &[seat(n)]).await.unwrap();
        assert_eq!(st, StatusCode::CREATED, "{hold}");
        let (st, order) = u
            .confirm(
                &http,
                &base,
                hold["holdId"].as_str().unwrap(),
                &format!("early-{n}"),
            )
            .await
            .unwrap();
        assert_eq!(st, StatusCode::CREATED, "{order}");
        orders.push(order["orderId"].as_str().unwrap().to_owned());
    }
    let (st, _) = User::new(&event, "u0")
        .hold(&http, &base, &event, &[seat(5)])
        .await
        .unwrap();
    assert_eq!(st, StatusCode::CREATED);

    cluster.kill(primary).unwrap();
    let killed = Instant::now();
    let (mut refused, mut n) = (0, 5);
    let mut last_hold = None;
    let mut ok_streak = 0;
    while ok_streak < 3 {
        n += 1;
        assert!(n < 390, "out of seats before the service recovered");
        let user = User::new(&event, &format!("u{n}"));
        let t = Instant::now();
        let (st, hold) = user.hold(&http, &base, &event, &[seat(n)]).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a hold took {:?}",
            t.elapsed()
        );
        match st {
            StatusCode::CREATED => {
                // Counted as recovered only once the shard answers again (the cluster may have
                // failed over already, or PostgreSQL decided alone).
                if killed.elapsed() > Duration::from_secs(2) {
                    ok_streak += 1;
                }
                last_hold = Some((user, hold["holdId"].as_str().unwrap().to_owned()));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                ok_streak = 0;
            }
            other => panic!("a hold during the failover answered {other}: {hold}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no recovery 30 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "failover: {n} holds, {refused} refused (503), recovered {:?} after SIGKILL",
        killed.elapsed()
    );
    let (user, id) = last_hold.unwrap();
    let (st, order) = user.confirm(&http, &base, &id, "k-failover").await.unwrap();
    assert_eq!(st, StatusCode::CREATED, "{order}");
    // The counts land in the event's slot on its new primary.
    let mut conn = RedisConn::connect_lazy(&redis, Duration::from_secs(2)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sold: Option<u64> = conn
            .hget(EventKeys::new(&event).counts(), "sold")
            .await
            .unwrap_or(None);
        if sold.is_some_and(|s| s >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counts not published after the failover ({sold:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing sold before the kill was lost, and no seat was sold twice, while Redis failed over.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    assert_eq!(
        double_bookings(&pool, &event).await,
        vec![],
        "double booking across the failover"
    );
    let ids: Vec<uuid::Uuid> = orders.iter().map(|o| o.parse().unwrap()).collect();
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_lines WHERE event_id = $1 AND live AND order_id = ANY($2)",
    )
    .bind(&event)
    .bind(&ids)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(live, 5, "orders confirmed before the kill: {orders:?}");
    pool.close().await;
    server.stop().await;
    db.drop_db().await;
}
