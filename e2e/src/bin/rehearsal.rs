//! The on-sale rehearsal's buyers and its dashboard. Plays the platform (signs user JWTs) and a
//! crowd of buyers against the real queue and reservation services: join before and after the
//! on-sale time, wait for admission, hold 1–4 seats with the admission token, confirm with an
//! Idempotency-Key, leave. Meanwhile it prints one line a second from the TicketingEvent's status
//! (phase, queue depth, pods) and the services' counters, and at the end checks PostgreSQL for
//! double bookings.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Buyers and a live view for the tiketi on-sale rehearsal")]
struct Args {
    #[arg(long)]
    queue_url: String,
    #[arg(long)]
    reservation_url: String,
    #[arg(long)]
    event: String,
    #[arg(long, default_value = "tiketi-demo")]
    namespace: String,
    #[arg(long, env = "TIKETI_JWT_SECRET")]
    jwt_secret: String,
    /// Path of the event configuration (to know the seat ids).
    #[arg(long)]
    event_config: std::path::PathBuf,
    /// Buyers who join before the on-sale time (the pre-queue).
    #[arg(long, default_value_t = 800)]
    early_buyers: u64,
    /// Buyers who join after the on-sale time, spread over `--surge-seconds`.
    #[arg(long, default_value_t = 2200)]
    surge_buyers: u64,
    #[arg(long, default_value_t = 10)]
    surge_seconds: u64,
    /// Give up after this many seconds in total.
    #[arg(long, default_value_t = 240)]
    deadline_seconds: u64,
    /// Stop watching once the phase reaches one of these (comma separated).
    #[arg(long, default_value = "Closed")]
    until_phase: String,
    /// Write the timeline here, one JSON object a line: a `sample` each second (phase, queue depth,
    /// pre-queue, active users, need/desired/ready per component, seats) and each `decision` the
    /// operator records (e2e/demo-timeline draws it).
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
    /// Redraw a panel with bars in place each second (default: when stdout is a terminal);
    /// otherwise one line a second.
    #[arg(long)]
    live: Option<bool>,
}

#[derive(Default)]
struct Tally {
    joined: AtomicU64,
    admitted: AtomicU64,
    held: AtomicU64,
    hold_conflicts: AtomicU64,
    confirmed: AtomicU64,
    seats_confirmed: AtomicU64,
    sold_out_seen: AtomicU64,
    errors: AtomicU64,
    unavailable: AtomicU64,
    /// Seconds into the rehearsal when the last buyer finished; 0 while some are still buying.
    done_after_s: AtomicU64,
}

struct Ctx {
    http: reqwest::Client,
    args: Args,
    seats: Vec<String>,
    tally: Tally,
}

impl Ctx {
    /// Whether the watcher redraws a panel in place (see `--live`).
    fn live(&self) -> bool {
        self.args.live.unwrap_or_else(|| std::io::stdout().is_terminal())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let config = tiketi_shared::config::load(&args.event_config)?
        .remove(&args.event)
        .with_context(|| format!("event {} is not in {}", args.event, args.event_config.display()))?;
    let seats: Vec<String> = config.inventory.seats().map(|s| s.id).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?;
    let ctx = Arc::new(Ctx {
        http,
        args,
        seats,
        tally: Tally::default(),
    });
    let started = Instant::now();

    let on_sale = config.on_sale_at;
    let wait = (on_sale - chrono::Utc::now()).to_std().unwrap_or_default();
    println!(
        "{} early buyers join the pre-queue; on-sale in {:.0}s",
        ctx.args.early_buyers,
        wait.as_secs_f64()
    );
    let watcher = tokio::spawn(watch(ctx.clone(), started));
    let mut buyers = Vec::new();
    for n in 0..ctx.args.early_buyers {
        buyers.push(tokio::spawn(buyer(ctx.clone(), format!("early-{n}"))));
    }
    tokio::time::sleep(wait).await;
    let per_ms = (ctx.args.surge_seconds * 1000).max(1) as f64 / ctx.args.surge_buyers.max(1) as f64;
    for n in 0..ctx.args.surge_buyers {
        buyers.push(tokio::spawn(buyer(ctx.clone(), format!("surge-{n}"))));
        if n % 50 == 49 {
            tokio::time::sleep(Duration::from_millis((per_ms * 50.0) as u64)).await;
        }
    }
    for b in buyers {
        let _ = b.await;
    }
    // The live panel shows this itself (a line printed under it would break its redraw).
    let done = started.elapsed();
    ctx.tally
        .done_after_s
        .store(done.as_secs().max(1), Ordering::Relaxed);
    if !ctx.live() {
        println!("all buyers done after {:.0}s", done.as_secs_f64());
    }
    let _ = watcher.await;
    summary(&ctx).await
}

fn user_token(ctx: &Ctx, user: &str) -> Result<String> {
    let exp = chrono::Utc::now().timestamp() + 3600;
    Ok(tiketi_shared::token::sign_user_token(
        ctx.args.jwt_secret.as_bytes(),
        user,
        exp,
    )?)
}

async fn buyer(ctx: Arc<Ctx>, user: String) {
    if let Err(e) = buy(&ctx, &user).await {
        ctx.tally.errors.fetch_add(1, Ordering::Relaxed);
        if ctx.tally.errors.load(Ordering::Relaxed) <= 5 {
            eprintln!("buyer {user}: {e:#}");
        }
    }
}

async fn buy(ctx: &Ctx, user: &str) -> Result<()> {
    let bearer = format!("Bearer {}", user_token(ctx, user)?);
    let queue = format!("{}/v1/events/{}/queue", ctx.args.queue_url, ctx.args.event);
    let deadline = Instant::now() + Duration::from_secs(ctx.args.deadline_seconds);
    // Join (retrying on 429/503 as a browser would).
    loop {
        let res = ctx
            .http
            .post(&queue)
            .header("authorization", &bearer)
            .send()
            .await?;
        match res.status().as_u16() {
            200 | 201 => break,
            409 => {
                ctx.tally.sold_out_seen.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            429 | 503 => backoff(ctx, &res).await,
            s => bail!("join: {s} {}", res.text().await.unwrap_or_default()),
        }
        if Instant::now() > deadline {
            bail!("join did not succeed before the deadline");
        }
    }
    ctx.tally.joined.fetch_add(1, Ordering::Relaxed);
    // Wait for admission, polling as the service suggests.
    let token = loop {
        if Instant::now() > deadline {
            bail!("not admitted before the deadline");
        }
        let res = ctx
            .http
            .get(format!("{queue}/me"))
            .header("authorization", &bearer)
            .send()
            .await?;
        if matches!(res.status().as_u16(), 429 | 503) {
            backoff(ctx, &res).await;
            continue;
        }
        let body: Value = res.json().await?;
        match body["state"].as_str() {
            Some("admitted") => break body["admission"]["token"].as_str().unwrap_or_default().to_owned(),
            Some("soldOut") | Some("closed") => {
                ctx.tally.sold_out_seen.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Some("waiting") => {
                let after = body["pollAfterSeconds"].as_u64().unwrap_or(2).clamp(1, 5);
                let jitter = rand::rng().random_range(0..1000);
                tokio::time::sleep(Duration::from_millis(after * 1000 + jitter)).await;
            }
            other => bail!("unexpected queue state {other:?}: {body}"),
        }
    };
    ctx.tally.admitted.fetch_add(1, Ordering::Relaxed);
    // Hold 1–4 random seats; on conflict try other seats a few times.
    let holds = format!("{}/v1/events/{}/holds", ctx.args.reservation_url, ctx.args.event);
    let mut hold_id = None;
    for attempt in 0..8 {
        // The first try picks blind (a buyer who knows where they want to sit); later tries pick
        // from the seat map's available seats, as a buyer looking at the map would.
        let pool: Vec<String> = if attempt == 0 {
            ctx.seats.clone()
        } else {
            available_seats(ctx).await.unwrap_or_else(|_| ctx.seats.clone())
        };
        if pool.is_empty() {
            ctx.tally.sold_out_seen.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let want: Vec<String> = {
            let mut rng = rand::rng();
            let n = rng.random_range(1..=4usize).min(pool.len());
            pool.choose_multiple(&mut rng, n).cloned().collect()
        };
        let res = ctx
            .http
            .post(&holds)
            .header("authorization", &bearer)
            .header("x-admission-token", &token)
            .json(&serde_json::json!({ "seats": want }))
            .send()
            .await?;
        match res.status().as_u16() {
            200 | 201 => {
                let body: Value = res.json().await?;
                hold_id = body["holdId"].as_str().map(str::to_owned);
                ctx.tally.held.fetch_add(1, Ordering::Relaxed);
                break;
            }
            409 => {
                ctx.tally.hold_conflicts.fetch_add(1, Ordering::Relaxed);
                let body: Value = res.json().await.unwrap_or_default();
                if body["type"].as_str().is_some_and(|t| t.ends_with("sold-out")) {
                    ctx.tally.sold_out_seen.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            429 | 503 => backoff(ctx, &res).await,
            s => bail!("hold: {s} {}", res.text().await.unwrap_or_default()),
        }
    }
    if let Some(hold_id) = hold_id {
        // "Payment", then confirm with an Idempotency-Key, retrying the same key on outages.
        let pause = rand::rng().random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let key = uuid::Uuid::new_v4().to_string();
        let url = format!("{}/v1/holds/{hold_id}/confirm", ctx.args.reservation_url);
        for _ in 0..5 {
            let res = ctx
                .http
                .post(&url)
                .header("authorization", &bearer)
                .header("idempotency-key", &key)
                .send()
                .await?;
            match res.status().as_u16() {
                200 | 201 => {
                    let body: Value = res.json().await?;
                    ctx.tally.confirmed.fetch_add(1, Ordering::Relaxed);
                    let n = body["seats"].as_array().map(|s| s.len() as u64).unwrap_or(0);
                    ctx.tally.seats_confirmed.fetch_add(n, Ordering::Relaxed);
                    break;
                }
                429 | 503 => backoff(ctx, &res).await,
                409 | 410 => break,
                s => bail!("confirm: {s} {}", res.text().await.unwrap_or_default()),
            }
        }
    }
    // Leave the active set so the next buyer is admitted sooner (retried like a page's unload
    // beacon would be: a slot left behind is only freed when the admission expires).
    for _ in 0..3 {
        let res = ctx
            .http
            .delete(format!("{queue}/me"))
            .header("authorization", &bearer)
            .send()
            .await?;
        if !matches!(res.status().as_u16(), 429 | 503) {
            break;
        }
        backoff(ctx, &res).await;
    }
    Ok(())
}

/// Seat ids the seat map shows as available (cached by the service for about a second).
async fn available_seats(ctx: &Ctx) -> Result<Vec<String>> {
    let url = format!("{}/v1/events/{}/seats", ctx.args.reservation_url, ctx.args.event);
    let map: Value = ctx.http.get(url).send().await?.error_for_status()?.json().await?;
    Ok(map["seats"]
        .as_array()
        .map(|seats| {
            seats
                .iter()
                .filter(|s| s["status"] == "available")
                .filter_map(|s| s["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

async fn backoff(ctx: &Ctx, res: &reqwest::Response) {
    ctx.tally.unavailable.fetch_add(1, Ordering::Relaxed);
    let secs = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1)
        .min(5);
    let jitter = rand::rng().random_range(0..500);
    tokio::time::sleep(Duration::from_millis(secs * 1000 + jitter)).await;
}

fn tev_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("tiketi.gg", "v1alpha1", "TicketingEvent");
    Api::namespaced_with(client, ns, &ApiResource::from_gvk(&gvk))
}

async fn watch(ctx: Arc<Ctx>, started: Instant) {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no Kubernetes client: {e}");
            return;
        }
    };
    let api = tev_api(client, &ctx.args.namespace);
    let until: Vec<&str> = ctx.args.until_phase.split(',').collect();
    let live = ctx.live();
    let mut timeline = match &ctx.args.timeline {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => {
                eprintln!("cannot write the timeline {}: {e}", path.display());
                None
            }
        },
        None => None,
    };
    let mut panel = Panel::default();
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    if !live {
        println!(
            "{:>5} {:<10} {:>6} {:>6} {:>9} {:>9} {:>6} {:>6} {:>6}",
            "t(s)", "phase", "queue", "active", "queuePods", "resvPods", "sold", "held", "avail"
        );
    }
    loop {
        let t = started.elapsed().as_secs_f64();
        let status = match api.get(&ctx.args.event).await {
            Ok(o) => o.data.get("status").cloned().unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let avail: Value = match ctx
            .http
            .get(format!(
                "{}/v1/events/{}/availability",
                ctx.args.reservation_url, ctx.args.event
            ))
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let sample = Sample::read(t, &status, &avail);
        // Newest first in status: the ones not seen yet, oldest first.
        let mut fresh: Vec<Decision> = status["recentDecisions"]
            .as_array()
            .map(|ds| ds.iter().rev().map(|d| Decision::read(d, started)).collect())
            .unwrap_or_default();
        fresh.retain(|d| seen.insert(d.key()));
        if let Some(w) = timeline.as_mut() {
            use std::io::Write;
            let mut lines = vec![sample.json()];
            lines.extend(fresh.iter().map(Decision::json));
            for line in lines {
                if writeln!(w, "{line}").and_then(|()| w.flush()).is_err() {
                    eprintln!("writing the timeline failed");
                }
            }
        }
        if live {
            panel.decisions.extend(fresh.iter().map(Decision::line));
            panel.draw(&sample, &ctx.tally);
        } else {
            println!("{}", sample.line());
            for d in &fresh {
                println!("{}", d.line());
            }
        }
        if until.contains(&sample.phase.as_str()) || t > (ctx.args.deadline_seconds + 120) as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

// === the live view and the timeline ===

/// One component's replicas as the TicketingEvent's status shows them.
#[derive(Default)]
struct Replicas {
    need: Option<i64>,
    desired: i64,
    ready: i64,
}

impl Replicas {
    fn read(status: &Value) -> Self {
        Self {
            need: status["need"].as_i64(),
            desired: status["desiredReplicas"].as_i64().unwrap_or(0),
            ready: status["readyReplicas"].as_i64().unwrap_or(0),
        }
    }

    fn json(&self) -> Value {
        let Self { need, desired, ready } = self;
        serde_json::json!({ "need": need, "desired": desired, "ready": ready })
    }
}

/// What the rehearsal sees once a second.
struct Sample {
    t: f64,
    phase: String,
    queue_depth: i64,
    pre_queue: i64,
    active: i64,
    queue: Replicas,
    reservation: Replicas,
    sold: u64,
    held: u64,
    available: u64,
}

impl Sample {
    fn read(t: f64, status: &Value, avail: &Value) -> Self {
        Self {
            t,
            phase: status["phase"].as_str().unwrap_or("-").to_owned(),
            queue_depth: status["queueDepth"].as_i64().unwrap_or(0),
            pre_queue: status["preQueueDepth"].as_i64().unwrap_or(0),
            active: status["activeUsers"].as_i64().unwrap_or(0),
            queue: Replicas::read(&status["queue"]),
            reservation: Replicas::read(&status["reservation"]),
            sold: avail["sold"].as_u64().unwrap_or(0),
            held: avail["held"].as_u64().unwrap_or(0),
            available: avail["available"].as_u64().unwrap_or(0),
        }
    }

    fn json(&self) -> Value {
        let Self {
            t,
            phase,
            queue_depth,
            pre_queue,
            active,
            queue,
            reservation,
            sold,
            held,
            available,
        } = self;
        serde_json::json!({
            "type": "sample", "t": (t * 10.0).round() / 10.0, "phase": phase, "queueDepth": queue_depth,
            "preQueueDepth": pre_queue, "activeUsers": active, "queue": queue.json(),
            "reservation": reservation.json(), "sold": sold, "held": held, "available": available,
        })
    }

    fn line(&self) -> String {
        let pods = |r: &Replicas| format!("{}/{}", r.ready, r.desired);
        format!(
            "{:>5.0} {:<10} {:>6} {:>6} {:>9} {:>9} {:>6} {:>6} {:>6}",
            self.t,
            self.phase,
            self.queue_depth,
            self.active,
            pods(&self.queue),
            pods(&self.reservation),
            self.sold,
            self.held,
            self.available
        )
    }
}

/// A scaling decision from `status.recentDecisions`, `t` seconds into the rehearsal.
struct Decision {
    t: f64,
    time: String,
    component: String,
    from: i64,
    to: i64,
    reason: String,
}

impl Decision {
    fn read(d: &Value, started: Instant) -> Self {
        let time = d["time"].as_str().unwrap_or_default().to_owned();
        let at = chrono::DateTime::parse_from_rfc3339(&time).map(|at| at.with_timezone(&chrono::Utc));
        let ago = at.map(|at| (chrono::Utc::now() - at).num_milliseconds() as f64 / 1000.0);
        Self {
            t: (started.elapsed().as_secs_f64() - ago.unwrap_or(0.0)).max(0.0),
            time,
            component: d["component"].as_str().unwrap_or("?").to_owned(),
            from: d["from"].as_i64().unwrap_or(0),
            to: d["to"].as_i64().unwrap_or(0),
            reason: d["reason"].as_str().unwrap_or_default().to_owned(),
        }
    }

    fn key(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.time, self.component, self.from, self.to, self.reason
        )
    }

    fn json(&self) -> Value {
        let Self {
            t,
            time,
            component,
            from,
            to,
            reason,
        } = self;
        serde_json::json!({
            "type": "decision", "t": (t * 10.0).round() / 10.0, "time": time, "component": component,
            "from": from, "to": to, "reason": reason,
        })
    }

    fn line(&self) -> String {
        format!(
            "      ↳ {:>4.0}s {} {}→{}: {}",
            self.t, self.component, self.from, self.to, self.reason
        )
    }
}

/// The panel redrawn in place each second on a terminal.
#[derive(Default)]
struct Panel {
    drawn: usize,
    peak_queue: i64,
    peak_replicas: i64,
    decisions: Vec<String>,
}

impl Panel {
    const WIDTH: usize = 40;
    const DECISIONS: usize = 6;

    fn bar(value: f64, max: f64) -> String {
        let filled = if max > 0.0 {
            ((value / max) * Self::WIDTH as f64)
                .round()
                .clamp(0.0, Self::WIDTH as f64) as usize
        } else {
            0
        };
        format!("{}{}", "█".repeat(filled), "·".repeat(Self::WIDTH - filled))
    }

    fn draw(&mut self, s: &Sample, tally: &Tally) {
        self.peak_queue = self.peak_queue.max(s.queue_depth + s.pre_queue).max(1);
        self.peak_replicas = self
            .peak_replicas
            .max(s.queue.desired.max(s.reservation.desired))
            .max(s.queue.need.unwrap_or(0).max(s.reservation.need.unwrap_or(0)))
            .max(1);
        let (q, r) = (self.peak_queue as f64, self.peak_replicas as f64);
        let seats = (s.sold + s.held + s.available).max(1) as f64;
        let need = |x: &Replicas| x.need.map_or("-".to_owned(), |n| n.to_string());
        let mut lines = vec![
            format!("\x1b[1m t {:>4.0}s  {:<10}\x1b[0m", s.t, s.phase),
            format!(
                " queue depth  {} {:>6}",
                Self::bar(s.queue_depth as f64, q),
                s.queue_depth
            ),
            format!(
                " pre-queue    {} {:>6}",
                Self::bar(s.pre_queue as f64, q),
                s.pre_queue
            ),
            format!(" active users {} {:>6}", Self::bar(s.active as f64, q), s.active),
        ];
        for (name, x) in [("queue", &s.queue), ("reservation", &s.reservation)] {
            lines.push(format!(
                " {name:<12} {} need {:>3} desired {:>3} ready {:>3}",
                Self::bar(x.ready as f64, r),
                need(x),
                x.desired,
                x.ready
            ));
        }
        lines.push(format!(
            " seats sold   {} {:>6} sold, {} held, {} available",
            Self::bar(s.sold as f64, seats),
            s.sold,
            s.held,
            s.available
        ));
        let done = match tally.done_after_s.load(Ordering::Relaxed) {
            0 => String::new(),
            s => format!(" (all done after {s}s)"),
        };
        lines.push(format!(
            " buyers       joined {}, admitted {}, confirmed {}, told sold out {}, errors {}{done}",
            tally.joined.load(Ordering::Relaxed),
            tally.admitted.load(Ordering::Relaxed),
            tally.confirmed.load(Ordering::Relaxed),
            tally.sold_out_seen.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed)
        ));
        lines.push(" scaling decisions (newest last):".to_owned());
        let skip = self.decisions.len().saturating_sub(Self::DECISIONS);
        lines.extend(self.decisions.iter().skip(skip).cloned());
        let mut out = String::new();
        if self.drawn > 0 {
            // Back to the panel's first line, and clear what was below it.
            out.push_str(&format!("\x1b[{}F\x1b[J", self.drawn));
        }
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.drawn = lines.len();
        print!("{out}");
    }
}

async fn summary(ctx: &Ctx) -> Result<()> {
    let t = &ctx.tally;
    println!("\n=== rehearsal summary ===");
    println!("buyers joined          {}", t.joined.load(Ordering::Relaxed));
    println!("admitted               {}", t.admitted.load(Ordering::Relaxed));
    println!(
        "holds / conflicts      {} / {}",
        t.held.load(Ordering::Relaxed),
        t.hold_conflicts.load(Ordering::Relaxed)
    );
    println!(
        "orders confirmed       {} ({} seats)",
        t.confirmed.load(Ordering::Relaxed),
        t.seats_confirmed.load(Ordering::Relaxed)
    );
    println!(
        "told sold out          {}",
        t.sold_out_seen.load(Ordering::Relaxed)
    );
    println!("429/503 backoffs       {}", t.unavailable.load(Ordering::Relaxed));
    println!("buyer errors           {}", t.errors.load(Ordering::Relaxed));
    if let Ok(url) = std::env::var("TIKETI_DEMO_DATABASE_URL") {
        let pool = sqlx::PgPool::connect(&url).await?;
        let doubles: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT seat_id FROM order_lines WHERE event_id = $1 AND live \
             GROUP BY seat_id HAVING count(*) > 1) d",
        )
        .bind(&ctx.args.event)
        .fetch_one(&pool)
        .await?;
        let sold: i64 = sqlx::query_scalar("SELECT count(*) FROM order_lines WHERE event_id = $1 AND live")
            .bind(&ctx.args.event)
            .fetch_one(&pool)
            .await?;
        println!("seats sold (PostgreSQL) {sold}; seats sold twice: {doubles}");
        if doubles != 0 {
            bail!("double booking detected");
        }
        if sold as u64 != t.seats_confirmed.load(Ordering::Relaxed) {
            bail!(
                "PostgreSQL holds {sold} sold seats but buyers were told {}",
                t.seats_confirmed.load(Ordering::Relaxed)
            );
        }
    }
    Ok(())
}
