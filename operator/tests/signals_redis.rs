//! The signal reader against real Redis: the shared one from the local stack (REDIS_URL) with
//! unique event ids, private redis-server processes for fault injection and cluster mode, and the
//! stack's Prometheus (PROMETHEUS_URL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tiketi_e2e::{PrivateRedis, free_port};
use tiketi_operator::autoscaler::Signal;
use tiketi_operator::signals::{self, PrometheusSignals, SignalError, SignalReader};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::RedisArgs;

fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .expect("REDIS_URL must point at the local stack's Redis (eval \"$(e2e/stack env)\")")
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xff_ffff_ffff)
}

async fn plain(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn cleanup(conn: &mut redis::aio::MultiplexedConnection, events: &[String]) {
    for e in events {
        let k = EventKeys::new(e);
        let _: () = conn
            .del(&[k.queue(), k.active(), k.sold_out(), k.counts()])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn one_tick_reads_every_events_signals() {
    let url = redis_url();
    let mut conn = plain(&url).await;
    let events: Vec<String> = (0..3).map(|i| unique(&format!("sig{i}"))).collect();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (a, b) = (EventKeys::new(&events[0]), EventKeys::new(&events[1]));
    let members: Vec<(i64, String)> = (0..8_000).map(|i| (i, format!("u{i}"))).collect();
    for chunk in members.chunks(1_000) {
        let _: () = conn.zadd_multiple(a.queue(), chunk).await.unwrap();
    }
    // Active: 3 live admissions, 2 expired ones that must not count.
    let active = [
        (now_ms + 60_000, "x1"),
        (now_ms + 60_000, "x2"),
        (now_ms + 600_000, "x3"),
        (now_ms - 1_000, "old1"),
        (now_ms - 60_000, "old2"),
    ];
    let _: () = conn.zadd_multiple(a.active(), &active).await.unwrap();
    let _: () = conn.set(b.sold_out(), "1").await.unwrap();
    let _: () = conn
        .hset_multiple(
            b.counts(),
            &[
                ("sold", "600"),
                ("held", "0"),
                ("available", "0"),
                ("total", "600"),
            ],
        )
        .await
        .unwrap();

    let mut reader = SignalReader::connect(&RedisArgs::new(url), Duration::from_secs(2)).unwrap();
    let before = chrono::Utc::now();
    let tick = reader.read(&events).await;
    assert_eq!(
        tick.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
        events,
        "one entry per event, in order"
    );
    let s0 = tick[0].1.as_ref().unwrap();
    assert_eq!((s0.queue_depth, s0.active_users, s0.sold_out), (8_000, 3, false));
    assert!(s0.observed_at >= before && s0.observed_at <= chrono::Utc::now());
    let s1 = tick[1].1.as_ref().unwrap();
    assert_eq!((s1.queue_depth, s1.sold_out), (0, true));
    assert_eq!(
        (s1.counts.sold, s1.counts.available, s1.counts.total),
        (Some(600), Some(0), Some(600))
    );
    assert!(s1.sold_out_and_drained());
    let s2 = tick[2].1.as_ref().unwrap();
    assert_eq!(
        (s2.queue_depth, s2.active_users, s2.sold_out, s2.counts),
        (0, 0, false, Default::default())
    );

    // The samples the autoscaler gets.
    let samples = signals::samples(&tick[0].1);
    assert!(matches!(samples.get(&Signal::QueueDepth), Some(Ok(s)) if s.value == 8_000.0));
    assert!(matches!(samples.get(&Signal::ActiveUsers), Some(Ok(s)) if s.value == 3.0));
    cleanup(&mut conn, &events).await;
}

#[tokio::test]
async fn a_broken_key_fails_only_its_event() {
    let url = redis_url();
    let mut conn = plain(&url).await;
    let events = vec![unique("ok"), unique("broken")];
    let _: () = conn
        .zadd(EventKeys::new(&events[0]).queue(), "u", 1)
        .await
        .unwrap();
    let _: () = conn
        .set(EventKeys::new(&events[1]).queue(), "not a sorted set")
        .await
        .unwrap();
    let mut reader = SignalReader::connect(&RedisArgs::new(url), Duration::from_secs(2)).unwrap();
    let tick = reader.read(&events).await;
    assert_eq!(tick[0].1.as_ref().unwrap().queue_depth, 1);
    let err = tick[1].1.clone().unwrap_err();
    assert_eq!(err.reason(), "RedisError");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    cleanup(&mut conn, &events).await;
}

/// The reader sends EVALSHA of its script: a Redis that forgot it (SCRIPT FLUSH here; a
/// restart or a failover in production) answers NOSCRIPT, and the same tick loads the script
/// and reads every event anyway.
#[tokio::test]
async fn a_redis_that_forgot_the_script_is_read_in_the_same_tick() {
    let redis = PrivateRedis::start(&[]).unwrap();
    let mut conn = plain(&redis.url()).await;
    let events: Vec<String> = (0..150).map(|i| unique(&format!("flush{i}"))).collect();
    for (i, e) in events.iter().enumerate() {
        let k = EventKeys::new(e);
        let _: () = conn.zadd(k.queue(), "u", 1).await.unwrap();
        let _: () = conn.hset(k.counts(), "available", i).await.unwrap();
    }
    let mut reader =
        SignalReader::connect(&RedisArgs::new(redis.url().as_str()), Duration::from_secs(2)).unwrap();
    for round in 0..3 {
        // Round 0: never loaded; rounds 1 and 2: flushed after a good read.
        if round > 0 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let tick = reader.read(&events).await;
        for (i, (e, r)) in tick.iter().enumerate() {
            let s = r
                .as_ref()
                .unwrap_or_else(|err| panic!("round {round}, {e}: {err}"));
            assert_eq!((s.queue_depth, s.counts.available), (1, Some(i as u64)), "{e}");
        }
    }
    let known: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(redis::Script::new(signals::SIGNALS_LUA).get_hash())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(known, vec![true]);
}

#[tokio::test]
async fn a_paused_redis_times_out_per_tick_and_recovers() {
    let redis = PrivateRedis::start(&[]).unwrap();
    let event = unique("pause");
    let mut conn = plain(&redis.url()).await;
    let _: () = conn.zadd(EventKeys::new(&event).queue(), "u", 1).await.unwrap();
    let timeout = Duration::from_millis(300);
    let mut reader = SignalReader::connect(&RedisArgs::new(redis.url().as_str()), timeout).unwrap();
    let events = vec![event.clone()];
    assert_eq!(reader.read(&events).await[0].1.as_ref().unwrap().queue_depth, 1);

    redis.signal("-STOP").unwrap();
    let started = Instant::now();
    let tick = reader.read(&events).await;
    let took = started.elapsed();
    let err = tick[0].1.clone().unwrap_err();
    assert!(
        matches!(err, SignalError::Timeout(_) | SignalError::Redis(_)),
        "{err:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "a tick must be bounded by the timeout, took {took:?}"
    );

    redis.signal("-CONT").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = &reader.read(&events).await[0].1 {
            assert_eq!(s.queue_depth, 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reader did not recover after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_is_reported_per_tick_not_at_connect() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let mut reader = SignalReader::connect(&RedisArgs::new(url), Duration::from_millis(300)).unwrap();
    let tick = reader.read(&["e".to_owned()]).await;
    assert!(tick[0].1.is_err());
    assert!(reader.ping().await.is_err());
}

#[tokio::test]
async fn cluster_mode_groups_per_slot_and_reads_every_event() {
    // Its own cluster (explicit bus ports: port + 10,000 may be taken on a busy machine).
    let cluster = tiketi_e2e::PrivateCluster::spawn().await.unwrap();
    let urls = cluster.urls();

    // 1,000 events, as an operator with many sales reads them: every one in the same tick.
    let events: Vec<String> = (0..1_000).map(|i| unique(&format!("cl{i}"))).collect();
    let client = redis::cluster::ClusterClient::new(vec![urls[0].clone()]).unwrap();
    let mut writer = client.get_async_connection().await.unwrap();
    for (i, e) in events.iter().enumerate() {
        let members: Vec<(i64, String)> = (0..=(i % 40) as i64).map(|m| (m, format!("u{m}"))).collect();
        let _: () = writer
            .zadd_multiple(EventKeys::new(e).queue(), &members)
            .await
            .unwrap();
    }
    let slots: std::collections::BTreeSet<u16> = events.iter().map(|e| signals::slot_of(e)).collect();
    assert!(
        slots.len() > 3,
        "events should spread over slots on several nodes"
    );

    let mut reader = SignalReader::connect(
        &RedisArgs {
            cluster: true,
            ..RedisArgs::new(urls[1].clone())
        },
        Duration::from_secs(2),
    )
    .unwrap();
    let tick = reader.read(&events).await;
    for (i, (e, r)) in tick.iter().enumerate() {
        assert_eq!(e, &events[i]);
        assert_eq!(r.as_ref().unwrap().queue_depth, (i % 40) as u64 + 1, "{e}");
    }
    reader.ping().await.unwrap();
}

fn prometheus_url() -> String {
    std::env::var("PROMETHEUS_URL")
        .expect("PROMETHEUS_URL must point at the local stack's Prometheus (eval \"$(e2e/stack env)\")")
}

#[tokio::test]
async fn prometheus_instant_queries() {
    let prom = PrometheusSignals::new(&prometheus_url(), Duration::from_secs(3)).unwrap();
    let (v, _) = prom.query("vector(0.25)").await.unwrap();
    assert_eq!(v, 0.25);
    let (v, _) = prom.query("scalar(vector(7))").await.unwrap();
    assert_eq!(v, 7.0);
    // The largest value of a vector result.
    let (v, _) = prom
        .query("vector(1) or label_replace(vector(3), \"x\", \"y\", \"\", \"\")")
        .await
        .unwrap();
    assert_eq!(v, 3.0);
    // No series: no data (NaN), not an error.
    let (v, _) = prom.query("tiketi_metric_that_does_not_exist_xyz").await.unwrap();
    assert!(v.is_nan());
    let err = prom.query("sum(").await.unwrap_err();
    assert_eq!(err.reason(), "PrometheusError");

    let mut samples = tiketi_operator::autoscaler::Samples::new();
    prom.read_into(&["vector(2)".to_owned()], &mut samples).await;
    assert!(matches!(samples.get(&Signal::Prometheus("vector(2)".into())), Some(Ok(s)) if s.value == 2.0));

    let down = PrometheusSignals::new(
        &format!("http://127.0.0.1:{}", free_port().unwrap()),
        Duration::from_millis(500),
    )
    .unwrap();
    let started = Instant::now();
    assert!(down.query("vector(1)").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// The stack's TLS Redis (AUTH token in the URL, verified with the stack's CA) serves signals; a
/// wrong CA is a per-tick error naming the certificate, within the timeout, not a hang.
#[tokio::test]
async fn tls_signals_are_read_and_a_wrong_ca_is_refused() {
    let (Ok(url), Ok(ca), Ok(wrong)) = (
        std::env::var("REDIS_TLS_URL"),
        std::env::var("REDIS_TLS_CA"),
        std::env::var("REDIS_WRONG_CA"),
    ) else {
        panic!("REDIS_TLS_URL, REDIS_TLS_CA and REDIS_WRONG_CA are needed (eval \"$(e2e/stack env)\")");
    };
    let event = unique("tls");
    let args = |ca: &str| RedisArgs {
        ca_file: Some(ca.into()),
        ..RedisArgs::new(url.as_str())
    };
    let mut writer =
        tiketi_shared::redis::RedisConn::connect_lazy(&args(&ca), Duration::from_secs(2)).unwrap();
    let _: () = writer
        .zadd_multiple(EventKeys::new(&event).queue(), &[(1, "a"), (2, "b"), (3, "c")])
        .await
        .unwrap();
    let mut reader = SignalReader::connect(&args(&ca), Duration::from_secs(2)).unwrap();
    let tick = reader.read(std::slice::from_ref(&event)).await;
    assert_eq!(tick[0].1.as_ref().unwrap().queue_depth, 3);

    // The same CA held in memory (how the operator passes an event's spec.redis.caSecretRef).
    let in_memory = RedisArgs {
        ca_pem: Some(std::fs::read(&ca).unwrap()),
        ..RedisArgs::new(url.as_str())
    };
    let mut reader = SignalReader::connect(&in_memory, Duration::from_secs(2)).unwrap();
    let tick = reader.read(std::slice::from_ref(&event)).await;
    assert_eq!(tick[0].1.as_ref().unwrap().queue_depth, 3);
    let _: () = writer.del(EventKeys::new(&event).queue()).await.unwrap();

    let mut refused = SignalReader::connect(&args(&wrong), Duration::from_secs(1)).unwrap();
    let t0 = Instant::now();
    let tick = refused.read(std::slice::from_ref(&event)).await;
    let err = tick[0].1.as_ref().unwrap_err().to_string().to_lowercase();
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "refused after {:?}",
        t0.elapsed()
    );
    assert!(err.contains("certificate") || err.contains("issuer"), "{err}");
}
