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
//! Each client is one HTTP/1.1 keep-alive connection, as a browser or app would hold, with a
//! minimal client of its own ([`Http1`]): the driver shares the machine's cores with the service,
//! Redis and PostgreSQL, and a general-purpose client (connection pool, header maps, JSON values)
//! spent about twice the CPU per request. The requests are the same full HTTP requests.
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// One HTTP/1.1 keep-alive connection: writes a request, reads one response (status line,
/// headers, a `content-length` body). Reconnects after an error or a `connection: close`.
struct Http1 {
    addr: String,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl Http1 {
    fn new(base: &str) -> Self {
        let addr = base
            .strip_prefix("http://")
            .expect("an http:// base URL")
            .trim_end_matches('/')
            .to_owned();
        Self {
            addr,
            stream: None,
            out: Vec::with_capacity(1024),
            buf: Vec::with_capacity(4096),
        }
    }

    /// POSTs `body` (JSON, may be empty) to `path` with `headers`; the status and the body.
    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let r = self.exchange(path, headers, body).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn exchange(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        use std::io::Write as _;
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        let Self {
            addr,
            stream,
            out,
            buf,
        } = self;
        let stream = stream.as_mut().ok_or_else(|| bad("not connected"))?;
        out.clear();
        write!(out, "POST {path} HTTP/1.1\r\nhost: {addr}\r\n")?;
        for (name, value) in headers {
            write!(out, "{name}: {value}\r\n")?;
        }
        if !body.is_empty() {
            out.extend_from_slice(b"content-type: application/json\r\n");
        }
        write!(out, "content-length: {}\r\n\r\n", body.len())?;
        out.extend_from_slice(body);
        stream.write_all(out).await?;
        buf.clear();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stream.read_buf(buf).await? == 0 {
                return Err(bad("connection closed before the response"));
            }
        };
        let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("response head is not UTF-8"))?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("no status"))?;
        let (mut length, mut close) = (None, false);
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                close = true;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked responses are not read by this driver"));
            }
        }
        let length = length.ok_or_else(|| bad("no content-length"))?;
        while buf.len() < head_end + length {
            if stream.read_buf(buf).await? == 0 {
                return Err(bad("connection closed inside the body"));
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        if close || buf.len() > head_end + length {
            // Closed by the server, or bytes nobody asked for: start afresh.
            self.stream = None;
        }
        Ok((status, body))
    }
}

#[derive(Default)]
struct Samples {
    hold_ok: Vec<f64>,
    hold_conflict: Vec<f64>,
    confirm_ok: Vec<f64>,
    /// When each confirm's 201 arrived, in seconds since the run started.
    confirmed_at: Vec<f64>,
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
    let samples = Arc::new(Mutex::new(Samples::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut http = Http1::new(base);
            let (event, seats, samples) = (event.clone(), seats.clone(), samples.clone());
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
                        &mut http,
                        &format!("/v1/events/{event}/holds"),
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
                let hold_path = format!("/v1/events/{event}/holds");
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
                        .post(
                            &hold_path,
                            &[("authorization", &bearer), ("x-admission-token", &admission)],
                            &serde_json::to_vec(&serde_json::json!({ "seats": pick })).unwrap(),
                        )
                        .await;
                    let Ok((status, body)) = r else {
                        local.other += 1;
                        continue;
                    };
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
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let hold = body["holdId"].as_str().unwrap_or_default().to_owned();
                    n += 1;
                    let t = Instant::now();
                    let key = format!("{i}-{n}");
                    let r = http
                        .post(
                            &format!("/v1/holds/{hold}/confirm"),
                            &[("authorization", &bearer), ("idempotency-key", &key)],
                            b"",
                        )
                        .await;
                    let dt = t.elapsed().as_secs_f64();
                    match r.map(|(status, _)| status) {
                        Ok(201) => {
                            local.confirm_ok.push(dt);
                            local.confirmed_at.push(start.elapsed().as_secs_f64());
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
                s.confirmed_at.extend(local.confirmed_at);
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
    // A sellout ends in a tail where buyers picking random seats rarely find a free one: the
    // rate until 90 % of the orders were made says what the service sustained while seats were
    // still to be found.
    s.confirmed_at.sort_by(f64::total_cmp);
    let n90 = s.confirmed_at.len() * 9 / 10;
    let t90 = if n90 > 0 { s.confirmed_at[n90 - 1] } else { 0.0 };
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
        "confirmsTo90PctSeconds": t90,
        "confirmsPerSecTo90Pct": if t90 > 0.0 { n90 as f64 / t90 } else { 0.0 },
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
    http: &mut Http1,
    path: &str,
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
        let body = format!(r#"{{"seats":["{seat}"]}}"#);
        let t = Instant::now();
        let r = http
            .post(
                path,
                &[("authorization", &bearer), ("x-admission-token", &admission)],
                body.as_bytes(),
            )
            .await;
        let status = r.map_or(0, |(status, _)| status);
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
