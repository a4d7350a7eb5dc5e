//! Redis paused mid-run (a private redis-server, SIGSTOP then SIGCONT): requests get 503 with
//! Retry-After quickly instead of hanging, and afterwards every waiting user is still in place —
//! including across the heartbeat timeout, which the outage would otherwise have broken.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Waits until the replica says ready (its private Redis is up).
async fn wait_ready(api: &Api) {
    wait_for("redis up", Duration::from_secs(10), || async move {
        api.client
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
}

#[tokio::test]
async fn paused_redis_gives_503_then_recovers_with_everyone_in_place() {
    let redis_srv = tiketi_e2e::PrivateRedis::start(&[]).unwrap();
    let event = unique_event("outage");
    let mut spec = EventSpec::new(&event);
    // Waiting in the pre-queue: admission does not move anyone, only the heartbeat sweep could.
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::hours(1);
    spec.heartbeat_timeout_seconds = 3;
    let mut a = args(&redis_srv.url(), Some(spec.write()));
    a.redis_timeout = Duration::from_millis(500);
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    wait_ready(&api).await;
    let users: Vec<String> = (0..20).map(|i| format!("w{i}")).collect();
    for u in &users {
        assert_eq!(api.join(u).await.status(), 201);
    }
    // Everybody keeps polling, as browsers would, throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let api = Api::new(&server.base, &event);
        let users = users.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for u in &users {
                    let _ = api.me(u).await;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    redis_srv.signal("-STOP").unwrap();
    let started = Instant::now();
    let r = api.join("during-outage").await;
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(took < Duration::from_secs(2), "the 503 took {took:?}");
    let r = api.me("w0").await;
    assert_eq!(r.status(), 503);
    let ready = api
        .client
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while Redis is away");
    // Longer than the heartbeat timeout: nobody could heartbeat meanwhile.
    tokio::time::sleep(Duration::from_secs(4)).await;
    redis_srv.signal("-CONT").unwrap();

    wait_for("recovery", Duration::from_secs(10), || {
        let api = &api;
        async move { api.me("w0").await.status() == 200 }
    })
    .await;
    // Give the sweep time to run several times after recovery.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.await.unwrap();
    let stats = api.stats().await;
    assert_eq!(stats["preQueueDepth"], 20, "{stats}");
    for u in &users {
        let me = api.me_json(u).await;
        assert_eq!(me["state"], "waiting", "{u}: {me}");
        assert_eq!(me["preQueue"], true);
    }
    assert_eq!(api.join("after-outage").await.status(), 201);
    server.stop().await;
}

#[tokio::test]
async fn streams_of_a_replica_that_cannot_reach_redis_end_so_they_reconnect_elsewhere() {
    // This replica loses Redis (frozen here; a partition or a stale cluster map in production)
    // while the others keep it: its open streams would stay up on keep-alives while their users'
    // heartbeats stop, and the admitting replica would drop them. They end instead (past a third
    // of the heartbeat timeout), so the browsers reconnect to a replica that keeps their place.
    use futures::StreamExt;
    let redis_srv = tiketi_e2e::PrivateRedis::start(&[]).unwrap();
    let event = unique_event("stream-cut");
    let mut spec = EventSpec::new(&event);
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::hours(1);
    spec.heartbeat_timeout_seconds = 6;
    let mut a = args(&redis_srv.url(), Some(spec.write()));
    a.admission = false;
    a.redis_timeout = Duration::from_millis(500);
    let server = Server::start(a).await;
    let api = Api::new(&server.base, &event);
    wait_ready(&api).await;
    assert_eq!(api.join("w1").await.status(), 201);
    let resp = api.stream("w1").await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // The first event arrives; then Redis stops answering.
    assert!(body.next().await.unwrap().is_ok());
    redis_srv.signal("-STOP").unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    let took = started.elapsed();
    redis_srv.signal("-CONT").unwrap();
    assert!(
        ended.is_ok(),
        "the stream stayed open {took:?} with Redis unreachable"
    );
    // A third of the 6 s timeout after the first failure, well before the sweep's 6 s.
    assert!(took < Duration::from_secs(6), "ended after {took:?}");
    server.stop().await;
}
