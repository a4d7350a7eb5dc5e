//! Admission: the rate over 10 s, the maxActive bound, and exactly one admitting replica among
//! three processes with hand-over when the leader is killed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use redis::AsyncCommands;
use tiketi_queue::store::Store;

/// Puts `n` users straight into the queue (after on-sale, so FIFO) through the store.
async fn fill(url: &str, event: &str, n: usize) {
    let store = Store::new(&tiketi_shared::redis::RedisArgs::new(url), Duration::from_secs(2)).unwrap();
    let past = chrono::Utc::now().timestamp_millis() - 3_600_000;
    for i in 0..n {
        store
            .status(&keys(event), &format!("user-{i:05}"), past, None, true)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn admits_rate_times_ten_in_ten_seconds() {
    let url = redis_url();
    let event = unique_event("rate");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 20;
    spec.token_ttl_seconds = 600;
    fill(&url, &event, 400).await;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let mut c = redis(&url).await;
    let k = keys(&event);
    wait_for("first admission", Duration::from_secs(10), || {
        let mut c = c.clone();
        let k = k.clone();
        async move { c.zcard::<_, u64>(k.active()).await.unwrap() > 0 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10_600)).await;
    // Each admission's instant is its expiry minus the token TTL (both from Redis TIME).
    let scores: Vec<(String, f64)> = c.zrange_withscores(k.active(), 0, -1).await.unwrap();
    let ttl_ms = 600_000.0;
    let instants: Vec<f64> = scores.iter().map(|(_, s)| s - ttl_ms).collect();
    let first = instants.iter().copied().fold(f64::INFINITY, f64::min);
    // The first step admits for the time since the limiter's last step (up to 1 s when that
    // step came late, e.g. on a busy machine); the rate is measured after it: the admissions in
    // the 10 s after the first, against the time from the first to the last of them.
    let at_first = instants.iter().filter(|t| **t == first).count();
    assert!(
        at_first <= 20,
        "the first step admitted {at_first}, more than a second's worth"
    );
    let after: Vec<f64> = instants
        .iter()
        .copied()
        .filter(|t| *t > first && *t <= first + 10_000.0)
        .collect();
    let last = after.iter().copied().fold(first, f64::max);
    let expected = 20.0 * (last - first) / 1000.0;
    assert!(
        last - first >= 9_000.0 && (after.len() as f64 - expected).abs() <= 1.0,
        "admitted {} in the {:.0} ms after the first admission at 20/s (expected {expected:.1})",
        after.len(),
        last - first
    );
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn a_late_admission_step_admits_for_the_time_that_passed_up_to_a_second() {
    // One replica admits for every event in one loop: a pass over many events (or a Redis call
    // that waited) makes a step come late. It must admit for the time that passed, not for 200 ms
    // of it (the burst), so the configured rate holds; after a long pause, one second at most.
    let url = redis_url();
    let event = unique_event("late-step");
    fill(&url, &event, 400).await;
    let store = Store::new(
        &tiketi_shared::redis::RedisArgs::new(&url),
        Duration::from_secs(2),
    )
    .unwrap();
    let k = keys(&event);
    let fence = store
        .lease(&k, "me", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let mut c = redis(&url).await;
    // As if the pre-queue was shuffled (nobody was in it).
    let _: () = c.set(k.shuffle(), "{}").await.unwrap();
    let step = || async {
        match store
            .admit(
                &k,
                "me",
                fence,
                100,
                10_000,
                Duration::from_secs(600),
                Duration::from_millis(200),
            )
            .await
            .unwrap()
        {
            tiketi_queue::store::AdmitOutcome::Admitted { admitted, .. } => admitted,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(step().await, 0, "the first step only starts the clock");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let late = step().await;
    assert!((55..=80).contains(&late), "600 ms at 100/s admitted {late}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let paused = step().await;
    assert!(
        (90..=101).contains(&paused),
        "after 2.5 s at 100/s admitted {paused}"
    );
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn a_lost_fence_starts_a_new_term_instead_of_stalling_admission() {
    let url = redis_url();
    let event = unique_event("fence");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 20;
    fill(&url, &event, 300).await;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let mut c = redis(&url).await;
    let k = keys(&event);
    let admitted = |c: redis::aio::MultiplexedConnection| {
        let k = k.clone();
        async move {
            let mut c = c;
            c.get::<_, Option<u64>>(k.admitted_total())
                .await
                .unwrap()
                .unwrap_or(0)
        }
    };
    wait_for("first admissions", Duration::from_secs(10), || {
        let c = c.clone();
        async move { admitted(c).await > 0 }
    })
    .await;
    // An eviction (or a person) removes the fence while the lease is held.
    let _: () = c.del(k.admission_fence()).await.unwrap();
    let before = admitted(c.clone()).await;
    wait_for(
        "admission to go on after the fence was lost",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move { admitted(c).await >= before + 20 }
        },
    )
    .await;
    let fence: Option<u64> = c.get(k.admission_fence()).await.unwrap();
    assert!(fence.is_some_and(|f| f >= 1), "a new term has a fence again");
    server.stop().await;
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn never_more_than_max_active_and_expiry_frees_slots() {
    let url = redis_url();
    let event = unique_event("maxact");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 100;
    spec.max_active = 7;
    spec.token_ttl_seconds = 1;
    fill(&url, &event, 60).await;
    let server = Server::start(args(&url, Some(spec.write()))).await;
    let mut c = redis(&url).await;
    let k = keys(&event);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut peak = 0;
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let (card, live, total): (u64, u64, Option<u64>) = redis::pipe()
            .atomic()
            .zcard(k.active())
            .zcount(k.active(), now, "+inf")
            .get(k.admitted_total())
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(live <= 7, "{live} active users with maxActive 7");
        assert!(card <= 7 + 7, "expired members are cleaned up ({card})");
        peak = peak.max(live);
        if total.unwrap_or(0) >= 21 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired admissions did not free slots"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peak, 7, "the active set fills up to maxActive");
    server.stop().await;
    cleanup(&url, &event).await;
}

struct Proc {
    child: Child,
    base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(url: &str, config: &std::path::Path, id: &str) -> Proc {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_tiketi-queue"))
        .env("TIKETI_LISTEN", format!("127.0.0.1:{port}"))
        .env("TIKETI_REDIS_URL", url)
        .env("TIKETI_JWT_SECRET", JWT_SECRET)
        .env("TIKETI_ADMISSION_SECRET", ADMISSION_SECRET)
        .env("TIKETI_EVENT_CONFIG", config)
        .env("TIKETI_LEASE_TTL", "2s")
        .env("TIKETI_REPLICA_ID", id)
        .env("TIKETI_DRAIN_DELAY", "300ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn is_leader(client: &reqwest::Client, base: &str, event: &str) -> bool {
    let needle = format!("tiketi_queue_admission_leader{{event=\"{event}\"}} 1");
    match client.get(format!("{base}/metrics")).send().await {
        Ok(r) => r.text().await.map(|t| t.contains(&needle)).unwrap_or(false),
        Err(_) => false,
    }
}

#[tokio::test]
async fn exactly_one_of_three_processes_admits_and_a_kill_hands_over() {
    let url = redis_url();
    let event = unique_event("lease");
    let mut spec = EventSpec::new(&event);
    spec.rate_per_second = 10;
    fill(&url, &event, 300).await;
    let config = spec.write();
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| spawn(&url, &config, &format!("replica-{i}")))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut c = redis(&url).await;
    let k = keys(&event);

    let leader_of = |procs: &Vec<Proc>| {
        let client = client.clone();
        let bases: Vec<String> = procs.iter().map(|p| p.base.clone()).collect();
        let event = event.clone();
        async move {
            let mut leaders = Vec::new();
            for (i, b) in bases.iter().enumerate() {
                if is_leader(&client, b, &event).await {
                    leaders.push(i);
                }
            }
            leaders
        }
    };
    wait_for("one leader", Duration::from_secs(15), || {
        let f = leader_of(&procs);
        async move { f.await.len() == 1 }
    })
    .await;
    // Stable for a while: never two, admissions progressing.
    let before: u64 = c
        .get::<_, Option<u64>>(k.admitted_total())
        .await
        .unwrap()
        .unwrap_or(0);
    for _ in 0..10 {
        assert_eq!(leader_of(&procs).await.len(), 1, "exactly one replica admits");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let holder: String = c.get(k.admission_lease()).await.unwrap();
    let leader = leader_of(&procs).await[0];
    assert_eq!(holder, format!("replica-{leader}"));
    let after: u64 = c
        .get::<_, Option<u64>>(k.admitted_total())
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(after > before, "the leader admits");
    let fence_before: u64 = c.get(k.admission_fence()).await.unwrap();

    // SIGKILL the leader: no release, the lease must expire and another replica take over.
    let mut dead = procs.remove(leader);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let killed_at = std::time::Instant::now();
    wait_for("another replica takes the lease", Duration::from_secs(10), || {
        let f = leader_of(&procs);
        async move { f.await.len() == 1 }
    })
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(5), "hand-over took {took:?}");
    let fence_after: u64 = c.get(k.admission_fence()).await.unwrap();
    assert!(fence_after > fence_before, "a new term has a new fence");
    let total_then: u64 = c
        .get::<_, Option<u64>>(k.admitted_total())
        .await
        .unwrap()
        .unwrap_or(0);
    wait_for("admissions continue", Duration::from_secs(5), || {
        let mut c = c.clone();
        let k = k.clone();
        async move {
            c.get::<_, Option<u64>>(k.admitted_total())
                .await
                .unwrap()
                .unwrap_or(0)
                > total_then
        }
    })
    .await;
    drop(procs);
    cleanup(&url, &event).await;
}

#[tokio::test]
async fn sigterm_drains_and_releases_the_lease() {
    let url = redis_url();
    let event = unique_event("drain");
    let config = EventSpec::new(&event).write();
    let mut p = spawn(&url, &config, "drainer");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    wait_for("leader", Duration::from_secs(10), || {
        is_leader(&client, &p.base, &event)
    })
    .await;
    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // During the drain delay the process still answers, but not ready (the signal reaches its
    // handler a moment after `kill` returns: polled, not read once).
    wait_for("/readyz 503 during the drain", Duration::from_secs(2), || async {
        let r = client.get(format!("{}/readyz", p.base)).send().await.unwrap();
        r.status() == 503
    })
    .await;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let mut c = redis(&url).await;
    let holder: Option<String> = c.get(keys(&event).admission_lease()).await.unwrap();
    assert_eq!(
        holder, None,
        "the lease is released on shutdown, not left to expire"
    );
    cleanup(&url, &event).await;
}

/// The heartbeat timeout shortened mid-sale (6 s → 1 s, a configuration change): someone who
/// polled at the pace they were told under the old one is not swept by the new one until the
/// old timeout has passed since the change; then the new one applies. Before, they were dropped
/// about a second after the change.
#[tokio::test]
async fn a_shorter_heartbeat_timeout_does_not_sweep_who_polled_under_the_old_one() {
    let url = redis_url();
    let event = unique_event("hb-shrink");
    let mut spec = EventSpec::new(&event);
    spec.on_sale_at = chrono::Utc::now() + chrono::Duration::hours(1);
    spec.heartbeat_timeout_seconds = 6;
    let path = spec.write();
    let server = Server::start(args(&url, Some(path))).await;
    let api = Api::new(&server.base, &event);
    assert_eq!(api.join("early").await.status(), 201);
    // Past the new term's own grace (one timeout after the lease was taken), polling as told.
    for _ in 0..7 {
        let told = api.me_json("early").await;
        assert_eq!(told["pollAfterSeconds"], 2, "{told}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(api.me("early").await.status(), 200);
    spec.heartbeat_timeout_seconds = 1;
    spec.write();
    // The file is re-read every 2 s; 4 s of silence is within the old timeout, past the new one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut c = redis(&url).await;
    let pre: Option<f64> = c.zscore(keys(&event).prequeue(), "early").await.unwrap();
    assert!(pre.is_some(), "swept by a timeout they were never told about");
    let now = api.me_json("early").await;
    assert_eq!(now["pollAfterSeconds"], 1, "told the new pace: {now}");
    // Once the old timeout has passed since the change, the new one applies.
    wait_for(
        "the silent user swept under the new timeout",
        Duration::from_secs(12),
        || {
            let mut c = c.clone();
            let k = keys(&event);
            async move {
                let pre: Option<f64> = c.zscore(k.prequeue(), "early").await.unwrap();
                pre.is_none()
            }
        },
    )
    .await;
    server.stop().await;
    cleanup(&url, &event).await;
}
