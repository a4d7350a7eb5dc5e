//! Tick cost of the signal reader: one pipelined round trip for 1, 100, 1,000 and 10,000 events,
//! against a single PING round trip measured in the same run on the same connection.
//!
//! `REDIS_URL=… cargo bench -p tiketi-operator --bench autoscaler_tick` (or e2e/bench/autoscaler.sh).
//! Prints figures and ratios; asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tiketi_operator::signals::{EVENTS_PER_COMMAND, SignalReader};
use tiketi_shared::keys::EventKeys;
use tiketi_shared::redis::RedisConn;

const SIZES: [usize; 4] = [1, 100, 1_000, 10_000];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Events per write pipeline: many on a single node; one on a cluster (a pipeline stays on one
/// slot, and every key of an event shares its hash tag).
fn per_pipeline(conn: &RedisConn, single: usize) -> usize {
    if conn.is_cluster() { 1 } else { single }
}

async fn populate(conn: &mut RedisConn, events: &[String]) {
    let now_ms = chrono::Utc::now().timestamp_millis();
    for chunk in events.chunks(per_pipeline(conn, 500)) {
        let mut pipe = redis::pipe();
        for e in chunk {
            let k = EventKeys::new(e);
            for m in 0..10 {
                pipe.zadd(k.queue(), format!("u{m}"), m).ignore();
            }
            pipe.zadd(k.active(), "a1", now_ms + 600_000).ignore();
            pipe.zadd(k.active(), "a0", now_ms - 1_000).ignore();
            pipe.hset_multiple(
                k.counts(),
                &[("sold", "1"), ("held", "0"), ("available", "9"), ("total", "10")],
            )
            .ignore();
        }
        let _: () = pipe.query_async(conn).await.unwrap();
    }
}

async fn cleanup(conn: &mut RedisConn, events: &[String]) {
    for chunk in events.chunks(per_pipeline(conn, 1_000)) {
        let mut pipe = redis::pipe();
        for e in chunk {
            let k = EventKeys::new(e);
            pipe.unlink(&[k.queue(), k.active(), k.counts(), k.sold_out()])
                .ignore();
        }
        let _: () = pipe.query_async(conn).await.unwrap();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("REDIS_URL")
        .expect("REDIS_URL must point at a Redis (eval \"$(e2e/stack env)\"); the benchmark writes bench-* keys and removes them");
    let cluster = std::env::var("TIKETI_BENCH_CLUSTER").is_ok_and(|v| v == "1" || v == "true");
    let target = tiketi_shared::redis::RedisArgs {
        cluster,
        ..tiketi_shared::redis::RedisArgs::new(url.as_str())
    };
    let mut reader = SignalReader::connect(&target, Duration::from_secs(10)).unwrap();
    let mut writer = RedisConn::connect_lazy(&target, Duration::from_secs(10)).unwrap();
    let run = format!("bench-{}", std::process::id());
    let all: Vec<String> = (0..*SIZES.last().unwrap())
        .map(|i| format!("{run}-{i}"))
        .collect();
    populate(&mut writer, &all).await;
    let _: () = writer.set(format!("{{{run}}}-warm"), 1).await.unwrap();

    // Baseline: one PING round trip on the reader's own connection.
    for _ in 0..50 {
        reader.ping().await.unwrap();
    }
    let mut pings: Vec<Duration> = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        reader.ping().await.unwrap();
        pings.push(t.elapsed());
    }
    pings.sort();
    let ping_p50 = percentile(&pings, 0.5);
    println!(
        "baseline: PING round trip p50 {:.0} µs, p99 {:.0} µs ({} samples, {})",
        us(ping_p50),
        us(percentile(&pings, 0.99)),
        pings.len(),
        if cluster {
            "cluster: one node"
        } else {
            "single node"
        },
    );
    println!();
    println!(
        "{:>7}  {:>9}  {:>12}  {:>12}  {:>13}  {:>14}",
        "events", "commands", "tick p50 µs", "tick p99 µs", "p50 / PING", "µs per event"
    );
    for &n in &SIZES {
        let events = &all[..n];
        let rounds = if n >= 10_000 { 30 } else { 200 };
        for _ in 0..3 {
            let tick = reader.read(events).await;
            assert!(tick.iter().all(|(_, r)| {
                r.as_ref()
                    .is_ok_and(|s| s.queue_depth == 10 && s.active_users == 1)
            }));
        }
        let mut ticks = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let tick = reader.read(events).await;
            ticks.push(t.elapsed());
            assert_eq!(tick.len(), n);
        }
        ticks.sort();
        let p50 = percentile(&ticks, 0.5);
        println!(
            "{:>7}  {:>9}  {:>12.0}  {:>12.0}  {:>12.1}×  {:>14.2}",
            n,
            n.div_ceil(EVENTS_PER_COMMAND),
            us(p50),
            us(percentile(&ticks, 0.99)),
            p50.as_secs_f64() / ping_p50.as_secs_f64(),
            us(p50) / n as f64,
        );
    }

    // For contrast: the same reads without pipelining (one round trip per command), as a naive
    // per-event poller would do. Only up to 1,000 events: it grows linearly with round trips.
    println!();
    println!(
        "{:>7}  {:>16}  {:>22}",
        "events", "unpipelined µs", "unpipelined / pipeline"
    );
    for &n in &SIZES[..3] {
        let events = &all[..n];
        let rounds = if n >= 1_000 { 3 } else { 20 };
        let mut naive = Vec::new();
        let mut piped = Vec::new();
        for _ in 0..rounds {
            let t = Instant::now();
            let now_ms = chrono::Utc::now().timestamp_millis();
            for e in events {
                let k = EventKeys::new(e);
                let _: u64 = writer.zcard(k.queue()).await.unwrap();
                let _: u64 = writer.zcount(k.active(), now_ms, "+inf").await.unwrap();
                let _: bool = writer.exists(k.sold_out()).await.unwrap();
                let _: Vec<Option<u64>> = writer
                    .hmget(k.counts(), &["sold", "held", "available", "total"])
                    .await
                    .unwrap();
            }
            naive.push(t.elapsed());
            let t = Instant::now();
            let _ = reader.read(events).await;
            piped.push(t.elapsed());
        }
        naive.sort();
        piped.sort();
        let (a, b) = (percentile(&naive, 0.5), percentile(&piped, 0.5));
        println!(
            "{:>7}  {:>16.0}  {:>21.1}×",
            n,
            us(a),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    cleanup(&mut writer, &all).await;
    let _: () = writer.del(format!("{{{run}}}-warm")).await.unwrap();
}
