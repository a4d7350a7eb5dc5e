//! Load driver for `e2e/bench/reservation.sh`, against a running service, for `seconds` or until
//! the seats run out; prints one JSON line with requests/s and p50/p99 latencies. Two modes:
//!
//! - the mix (default): `clients` concurrent buyers loop hold (random 1–4 seats) → confirm, so
//!   holds/s is bounded by confirms/s (PostgreSQL) and by seats colliding;
//! - `--holds-only`: `clients` concurrent buyers only hold, one seat per hold (like the EVALSHA
//!   baseline), each client walking its own seats (client i takes seats i, i + clients, …), so no
//!   two holds ever ask for one seat and every hold is a full Redis hold plus a PostgreSQL claim;
//!   a buyer makes `maxSeatsPerUser` (4) holds, then the next buyer takes over.
//!
//! Usage: `bench [--holds-only] <base-url> <event> <rows> <seats-per-row> <clients> <seconds>`
//! (or `bench --hold-script`: print the hold script for the EVALSHA baseline); reads
//! TIKETI_JWT_SECRET and TIKETI_ADMISSION_SECRET to play the platform and the queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tiketi_shared::token::{AdmissionKeys, sign_user_token};
use tokio::sync::Mutex;

#[derive(Default)]
struct Samples {
    hold_ok: Vec<f64>,
    hold_conflict: Vec<f64>,
    confirm_ok: Vec<f64>,
    confirm_conflict: usize,
    unavailable: usize,
    other: usize,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] * 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The hold script itself, for the redis-benchmark EVALSHA baseline.
    if args.first().map(String::as_str) == Some("--hold-script") {
        print!("{}", tiketi_reservation::redis_store::HOLD_SCRIPT);
        return;
    }
    let holds_only = args.first().map(String::as_str) == Some("--holds-only");
    let args = if holds_only { &args[1..] } else { &args[..] };
    let [base, event, rows, per_row, clients, seconds] = args else {
        panic!("usage: bench [--holds-only] <base-url> <event> <rows> <seats-per-row> <clients> <seconds>");
    };
    let (rows, per_row): (u32, u32) = (rows.parse().unwrap(), per_row.parse().unwrap());
    let (clients, seconds): (usize, u64) = (clients.parse().unwrap(), seconds.parse().unwrap());
    let jwt = std::env::var("TIKETI_JWT_SECRET").expect("TIKETI_JWT_SECRET");
    let adm = AdmissionKeys::new(
        std::env::var("TIKETI_ADMISSION_SECRET")
            .expect("TIKETI_ADMISSION_SECRET")
            .as_bytes(),
    );
    let seats: Arc<Vec<String>> = Arc::new(
        (1..=rows)
            .flat_map(|r| (1..=per_row).map(move |s| format!("A-{r}-{s}")))
            .collect(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let samples = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (http, base, event, seats, samples) = (
                http.clone(),
                base.clone(),
                event.clone(),
                seats.clone(),
                samples.clone(),
            );
            let (jwt, adm, ev) = (jwt.clone(), adm.clone(), event.clone());
            // Each purchase is a new buyer (the purchase limit counts held and bought seats per
            // buyer, so one buyer looping would stop at maxSeatsPerUser).
            let buyer = move |n: u64| {
                let now = chrono::Utc::now().timestamp_millis();
                let user = format!("bench-{i}-{n}");
                let bearer = format!(
                    "Bearer {}",
                    sign_user_token(jwt.as_bytes(), &user, now / 1000 + 3600).unwrap()
                );
                (bearer, adm.issue(&ev, &user, now, now + 3_600_000).unwrap())
            };
            tokio::spawn(async move {
                if holds_only {
                    let local = hold_only(
                        &http,
                        &format!("{base}/v1/events/{event}/holds"),
                        &seats,
                        i,
                        clients,
                        end,
                        buyer,
                    )
                    .await;
                    let mut s = samples.lock().await;
                    s.hold_ok.extend(local.hold_ok);
                    s.hold_conflict.extend(local.hold_conflict);
                    s.unavailable += local.unavailable;
                    s.other += local.other;
                    return;
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let mut local = Samples::default();
                let mut n = 0u64;
                let mut conflicts_in_a_row = 0;
                let (mut bearer, mut admission) = buyer(0);
                while Instant::now() < end && conflicts_in_a_row < 50 {
                    let k = rng.random_range(1..=4usize);
                    let pick: Vec<&String> = seats.choose_multiple(&mut rng, k).collect();
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/events/{event}/holds"))
                        .header("authorization", &bearer)
                        .header("x-admission-token", &admission)
                        .json(&serde_json::json!({ "seats": pick }))
                        .send()
                        .await;
                    let Ok(r) = r else {
                        local.other += 1;
                        continue;
                    };
                    let status = r.status().as_u16();
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    let dt = t.elapsed().as_secs_f64();
                    match status {
                        201 => local.hold_ok.push(dt),
                        409 => {
                            local.hold_conflict.push(dt);
                            conflicts_in_a_row += 1;
                            continue;
                        }
                        503 => {
                            local.unavailable += 1;
                            continue;
                        }
                        _ => {
                            local.other += 1;
                            continue;
                        }
                    }
                    conflicts_in_a_row = 0;
                    let hold = body["holdId"].as_str().unwrap_or_default().to_owned();
                    n += 1;
                    let t = Instant::now();
                    let r = http
                        .post(format!("{base}/v1/holds/{hold}/confirm"))
                        .header("authorization", &bearer)
                        .header("idempotency-key", format!("{i}-{n}"))
                        .send()
                        .await;
                    let dt = t.elapsed().as_secs_f64();
                    match r.map(|r| r.status().as_u16()) {
                        Ok(201) => {
                            local.confirm_ok.push(dt);
                            (bearer, admission) = buyer(n);
                        }
                        Ok(409) => local.confirm_conflict += 1,
                        Ok(503) => local.unavailable += 1,
                        _ => local.other += 1,
                    }
                }
                let mut s = samples.lock().await;
                s.hold_ok.extend(local.hold_ok);
                s.hold_conflict.extend(local.hold_conflict);
                s.confirm_ok.extend(local.confirm_ok);
                s.confirm_conflict += local.confirm_conflict;
                s.unavailable += local.unavailable;
                s.other += local.other;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut s = Arc::try_unwrap(samples).ok().unwrap().into_inner();
    let mut all_holds: Vec<f64> = s.hold_ok.iter().chain(s.hold_conflict.iter()).copied().collect();
    let out = serde_json::json!({
        "mode": if holds_only { "holds-only" } else { "hold-confirm" },
        "seconds": elapsed,
        "clients": clients,
        "seats": seats.len(),
        "holdRequestsPerSec": all_holds.len() as f64 / elapsed,
        "holdsPerSec": s.hold_ok.len() as f64 / elapsed,
        "holdConflicts": s.hold_conflict.len(),
        "holdP50Ms": pct(&mut all_holds, 0.50),
        "holdP99Ms": pct(&mut all_holds, 0.99),
        "confirmsPerSec": s.confirm_ok.len() as f64 / elapsed,
        "confirms": s.confirm_ok.len(),
        "confirmConflicts": s.confirm_conflict,
        "confirmP50Ms": pct(&mut s.confirm_ok, 0.50),
        "confirmP99Ms": pct(&mut s.confirm_ok, 0.99),
        "unavailable": s.unavailable,
        "otherErrors": s.other,
    });
    println!("{out}");
}

/// One client of the holds-only mode: single-seat holds over its own seats (i, i + clients, …),
/// four per buyer (the purchase limit), until the time or its seats run out.
async fn hold_only(
    http: &reqwest::Client,
    url: &str,
    seats: &[String],
    i: usize,
    clients: usize,
    end: Instant,
    buyer: impl Fn(u64) -> (String, String),
) -> Samples {
    let mut local = Samples::default();
    let mut n = 0u64;
    let (mut bearer, mut admission) = buyer(0);
    let mut mine = seats.iter().skip(i).step_by(clients);
    let mut held_by_buyer = 0;
    while Instant::now() < end {
        let Some(seat) = mine.next() else { break };
        let t = Instant::now();
        let r = http
            .post(url)
            .header("authorization", &bearer)
            .header("x-admission-token", &admission)
            .json(&serde_json::json!({ "seats": [seat] }))
            .send()
            .await;
        let status = match r {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                status
            }
            Err(_) => 0,
        };
        let dt = t.elapsed().as_secs_f64();
        match status {
            201 => {
                local.hold_ok.push(dt);
                held_by_buyer += 1;
                if held_by_buyer == 4 {
                    n += 1;
                    held_by_buyer = 0;
                    (bearer, admission) = buyer(n);
                }
            }
            409 => local.hold_conflict.push(dt),
            503 => local.unavailable += 1,
            _ => local.other += 1,
        }
    }
    local
}
