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

use std::collections::{HashMap, HashSet};

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tiketi_reservation::domain::SeatStatus;
use tiketi_reservation::model::SeatMap;
use tiketi_shared::token::{AdmissionKeys, sign_user_token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

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
        self.request("POST", path, headers, body).await
    }

    /// GETs `path`; the status and the body.
    async fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.request("GET", path, &[], b"").await
    }

    /// One exchange; after an error the connection is dropped (the next request reconnects).
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let r = self.exchange(method, path, headers, body).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn exchange(
        &mut self,
        method: &str,
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
        write!(out, "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n")?;
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

/// What the buyers see of the seat map (`--seat-map`): the seats it showed available when it was
/// last read, as indices into the event's seats.
#[derive(Default)]
struct SeatView {
    free: Vec<u32>,
    /// The map showed no seat available: nothing is left to pick.
    over: bool,
}

/// Reads the service's seat map (`GET /v1/events/{event}/seats`, which the service caches for
/// about a second) once a second and shows it to every buyer, as every buyer's browser would,
/// until the map shows no seat available, the run's time is up or no buyer is left.
async fn watch_seat_map(
    mut http: Http1,
    path: String,
    index: Arc<HashMap<String, u32>>,
    tx: watch::Sender<Arc<SeatView>>,
    end: Instant,
) {
    while Instant::now() < end && !tx.is_closed() {
        if let Ok((200, body)) = http.get(&path).await
            && let Ok(map) = serde_json::from_slice::<SeatMap>(&body)
        {
            let free = map
                .seats
                .iter()
                .filter(|s| s.status == SeatStatus::Available)
                .filter_map(|s| index.get(&s.id).copied())
                .collect();
            let over = map.counts.available == 0;
            tx.send_replace(Arc::new(SeatView { free, over }));
            if over {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Up to `k` distinct seats among those the map shows available, none of them `learned` (seats a
/// 409 of this buyer named since the map was read).
fn pick_from_map(view: &SeatView, learned: &HashSet<u32>, k: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut pick = Vec::with_capacity(k);
    for _ in 0..8 * k {
        if pick.len() == k {
            break;
        }
        let Some(&s) = view.free.choose(rng) else { break };
        if !learned.contains(&s) && !pick.contains(&s) {
            pick.push(s);
        }
    }
    pick
}

fn orders_per_tenth(at: &[f64]) -> Vec<usize> {
    let mut out = Vec::new();
    for t in at {
        let b = (t * 10.0) as usize;
        if out.len() <= b {
            out.resize(b + 1, 0);
        }
        out[b] += 1;
    }
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] * 1000.0
}

// One thread, like redis-benchmark (the EVALSHA baseline's client): the driver shares the two
// cores with the service, Redis and PostgreSQL, and one thread spends less on waking the other
// (holds-only runs alternating it with a two-thread driver: +3 % on the mean, 5 of 8 won).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The hold script itself, for the redis-benchmark EVALSHA baseline.
    if args.first().map(String::as_str) == Some("--hold-script") {
        print!("{}", tiketi_reservation::redis_store::HOLD_SCRIPT);
        return;
    }
    let holds_only = args.first().map(String::as_str) == Some("--holds-only");
    let follow_map = args.first().map(String::as_str) == Some("--seat-map");
    let args = if holds_only || follow_map {
        &args[1..]
    } else {
        &args[..]
    };
    let [base, event, rows, per_row, clients, seconds] = args else {
        panic!(
            "usage: bench [--holds-only|--seat-map] <base-url> <event> <rows> <seats-per-row> <clients> <seconds>"
        );
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
    let (map_tx, map_rx) = watch::channel(Arc::new(SeatView {
        free: (0..seats.len() as u32).collect(),
        over: false,
    }));
    let index: Arc<HashMap<String, u32>> = Arc::new(if follow_map {
        seats
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect()
    } else {
        HashMap::new()
    });
    let watcher = follow_map.then(|| {
        tokio::spawn(watch_seat_map(
            Http1::new(base),
            format!("/v1/events/{event}/seats"),
            index.clone(),
            map_tx,
            end,
        ))
    });
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let mut http = Http1::new(base);
            let (event, seats, samples) = (event.clone(), seats.clone(), samples.clone());
            let (jwt, adm, ev) = (jwt.clone(), adm.clone(), event.clone());
            let mut map = follow_map.then(|| map_rx.clone());
            let index = index.clone();
            // Each purchase is a new buyer (the purchase limit counts held and bought seats per
            // buyer, so one buyer looping would stop at maxSeatsPerUser).
            // Buyers of different events are different people (a warm-up event's buyers would
            // otherwise replay their Idempotency-Keys, which belong to the user, in the next).
            let buyer = move |n: u64| {
                let now = chrono::Utc::now().timestamp_millis();
                let user = format!("{ev}-{i}-{n}");
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
                // Seats this buyer's 409s named since the map was last read.
                let mut learned: HashSet<u32> = HashSet::new();
                // Blind buyers give up after 50 conflicts in a row; buyers following the map stop
                // when it shows nothing available.
                while Instant::now() < end && (map.is_some() || conflicts_in_a_row < 50) {
                    let k = rng.random_range(1..=4usize);
                    let pick: Vec<&String> = match map.as_mut() {
                        None => seats.choose_multiple(&mut rng, k).collect(),
                        Some(rx) => {
                            if rx.has_changed().unwrap_or(false) {
                                learned.clear();
                            }
                            let view = rx.borrow_and_update().clone();
                            if view.over {
                                break;
                            }
                            let pick = pick_from_map(&view, &learned, k, &mut rng);
                            if pick.is_empty() {
                                // Everything the map shows was taken meanwhile: wait for the next.
                                let _ = tokio::time::timeout_at(end.into(), rx.changed()).await;
                                learned.clear();
                                continue;
                            }
                            pick.into_iter().map(|s| &seats[s as usize]).collect()
                        }
                    };
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
                            if map.is_some() {
                                // The answer names the seats someone else has; a browser greys
                                // them out.
                                let body: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let named = body["seats"].as_array().into_iter().flatten();
                                learned.extend(named.filter_map(|s| index.get(s.as_str()?).copied()));
                            }
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
    if let Some(w) = watcher {
        w.abort();
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
    let sale = s.confirmed_at.last().copied().unwrap_or(0.0);
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
        // Over the sale: from the start to the last order (buyers notice a sellout only on
        // their next answer or map, which is the driver's time, not the service's).
        "confirmsPerSec": if sale > 0.0 { s.confirm_ok.len() as f64 / sale } else { 0.0 },
        "saleSeconds": sale,
        "confirms": s.confirm_ok.len(),
        "confirmsTo90PctSeconds": t90,
        "confirmsPerSecTo90Pct": if t90 > 0.0 { n90 as f64 / t90 } else { 0.0 },
        "confirmConflicts": s.confirm_conflict,
        // Orders per tenth of a second since the start: where a sale spends its time.
        "ordersPerTenth": orders_per_tenth(&s.confirmed_at),
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
