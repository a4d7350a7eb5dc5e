//! The autoscaler loop end to end, against the local stack (KUBECONFIG, REDIS_URL):
//!
//! 1. reaction latency: from the ZADD that crosses a step to the Deployment's `spec.replicas`
//!    changing, over `TIKETI_BENCH_TRIALS` (default 25) trials at random phases of the 1 s poll
//!    grid, as p50/p99 and as a multiple of the poll interval; baseline in the same run: one
//!    `spec.replicas` write straight to the API server;
//! 2. operator resident memory with `TIKETI_BENCH_EVENTS` (default 1,000) TicketingEvents, against
//!    the same binary watching an empty namespace; plus the loop's tick time at that size;
//! 3. convergence: events created at once until all Ready, against the same number of bare
//!    Deployments created at once until all ready (`TIKETI_BENCH_ONLY=convergence`).
//!
//! Runs the release operator binary as a child process. Prints figures; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/reconciler_support/mod.rs"]
mod reconciler_support;

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use reconciler_support::{OperatorProcess, create_secrets, event, install_crd, replicas};
use redis::AsyncCommands;
use tiketi_e2e::{TestNamespace, free_port, kube_client, stack_env, unique, wait_until};
use tiketi_operator::crd::TicketingEvent;
use tiketi_shared::keys::EventKeys;

const POLL: Duration = Duration::from_secs(1);

const OPERATOR: &str = env!("CARGO_BIN_EXE_tiketi-operator");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn metrics(port: u16) -> String {
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            return r.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no /metrics on {port}");
}

/// Sum of every labelled series of the metric `name`.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes (API calls other than GET) by resource, from `tiketi_operator_api_requests_total`.
fn writes_by_resource(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        let Some(labels) = l.strip_prefix("tiketi_operator_api_requests_total{") else {
            continue;
        };
        if labels.contains("method=\"get\"") {
            continue;
        }
        let resource = labels
            .split("resource=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        let v: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(resource.to_owned()).or_insert(0.0) += v;
    }
    out
}

fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Creates `events` at once (8 in flight).
async fn create_all(api: &Api<TicketingEvent>, events: impl Iterator<Item = TicketingEvent>) {
    futures::stream::iter(events)
        .map(|tev| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &tev).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

/// Waits until at least `count` events of `api` say Ready=True.
async fn wait_ready(api: &Api<TicketingEvent>, count: usize) {
    wait_until(
        &format!("{count} events Ready"),
        Duration::from_secs(1800),
        || async {
            let list = api.list(&ListParams::default()).await?;
            Ok(list
                .items
                .iter()
                .filter(|t| {
                    tiketi_operator::status::find(t, tiketi_operator::status::types::READY)
                        .is_some_and(|c| c.status == "True")
                })
                .count()
                >= count)
        },
    )
    .await
    .unwrap();
}

async fn reaction(client: &Client, redis_url: &str) {
    let ns = TestNamespace::create(client, "bench-reaction").await.unwrap();
    create_secrets(client, &ns.name).await.unwrap();
    let eid = unique("bench-reaction");
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let tev = event("reaction", Utc::now() - TimeDelta::minutes(1), |v| {
        v["spec"]["eventId"] = eid.clone().into();
        v["spec"]["queue"]["maxReplicas"] = 100.into();
        v["spec"]["queue"]["scaling"] = serde_json::json!({
            "pollInterval": "1s",
            "scaleOut": {"steps": [{"signal": "queueDepth", "above": 10, "add": 1}], "cooldown": "0s"},
            "scaleIn": {"when": {"signal": "queueDepth", "below": 1}, "stabilizationWindow": "1h"}
        });
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    let op = OperatorProcess::start(OPERATOR, &ns.name, free_port().unwrap(), "warn");
    wait_until("the event's Deployments", Duration::from_secs(60), || async {
        Ok(deployments.get_opt("reaction-queue").await?.is_some())
    })
    .await
    .unwrap();
    // Let the first ticks settle (SignalsHealthy written).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Baseline: one spec.replicas write to a Deployment of our own, server-side apply.
    let scratch: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "baseline"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "baseline"}},
                 "template": {"metadata": {"labels": {"app": "baseline"}},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}}}
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &scratch)
        .await
        .unwrap();
    let mut base = Vec::new();
    for i in 0..20 {
        let body = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "baseline"}, "spec": {"replicas": i % 2}});
        let t = Instant::now();
        deployments
            .patch(
                "baseline",
                &PatchParams::apply("bench").force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap();
        base.push(t.elapsed());
    }
    base.sort();

    let trials: usize = std::env::var("TIKETI_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let mut conn = redis::Client::open(redis_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = EventKeys::new(&eid).queue();
    let mut lat = Vec::new();
    for _ in 0..trials {
        // A pseudo-random phase against the 1 s tick grid.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let jitter = Duration::from_millis(u64::from(nanos.wrapping_mul(2_654_435_761) % 1000));
        tokio::time::sleep(jitter).await;
        let before = replicas(&deployments.get("reaction-queue").await.unwrap());
        let members: Vec<(f64, String)> = (0..20).map(|i| (f64::from(i), format!("u{i}"))).collect();
        let t0 = Instant::now();
        let _: () = conn.zadd_multiple(&key, &members).await.unwrap();
        loop {
            let r = replicas(&deployments.get("reaction-queue").await.unwrap());
            if r > before {
                lat.push(t0.elapsed());
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no reaction within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _: () = conn.del(&key).await.unwrap();
        // The next tick must see the empty queue before the next trial.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    lat.sort();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let mean = lat.iter().sum::<Duration>() / u32::try_from(lat.len()).unwrap();
    println!("== reaction latency: ZADD crossing a step → Deployment spec.replicas changed ==");
    println!(
        "trials {trials}, pollInterval {} ms, cooldown 0 s",
        POLL.as_millis()
    );
    println!(
        "p50 {:.0} ms  p99 {:.0} ms  mean {:.0} ms  min {:.0} ms  max {:.0} ms",
        ms(p50),
        ms(p99),
        ms(mean),
        ms(lat[0]),
        ms(lat[lat.len() - 1])
    );
    println!(
        "as a multiple of pollInterval: p50 {:.2}×  p99 {:.2}×  (expected ≈ 0.5× wait for the tick + the write)",
        p50.as_secs_f64() / POLL.as_secs_f64(),
        p99.as_secs_f64() / POLL.as_secs_f64()
    );
    println!(
        "baseline, one spec.replicas apply straight to the API server: p50 {:.1} ms  p99 {:.1} ms  (reaction p50 = {:.0}× it)",
        ms(percentile(&base, 0.5)),
        ms(percentile(&base, 0.99)),
        p50.as_secs_f64() / percentile(&base, 0.5).as_secs_f64()
    );
    println!("for comparison (documented defaults, not measured here): HPA sync 15 s, KEDA polling 30 s");
    drop(op);
    let _: () = conn.del(&key).await.unwrap();
    ns.delete().await.unwrap();
}

async fn memory(client: &Client) {
    let n: usize = std::env::var("TIKETI_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let ns = TestNamespace::create(client, "bench-memory").await.unwrap();
    create_secrets(client, &ns.name).await.unwrap();
    let port = free_port().unwrap();
    let op = OperatorProcess::start(OPERATOR, &ns.name, port, "warn");
    let _ = metrics(port).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_rss, _) = op.memory_kib();

    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let run = unique("mem");
    println!("== operator resident memory with up to {n} TicketingEvents ==");
    println!("RSS idle (empty namespace) {:.1} MiB", idle_rss as f64 / 1024.0);
    // Two sizes in one run (half, then all): the slope between them is the cost of one more
    // event, free of what the first reconciles leave in the allocator.
    let mut points: Vec<(usize, u64)> = Vec::new();
    let started = Instant::now();
    for (from, to) in [(0, n / 2), (n / 2, n)] {
        let events = (from..to).map(|i| {
            event(&format!("ev-{i:05}"), Utc::now() + TimeDelta::days(30), |v| {
                v["spec"]["eventId"] = format!("{run}-{i}").into();
            })
        });
        create_all(&api, events).await;
        wait_ready(&api, to).await;
        let reconciled = started.elapsed();
        // Settled: the last readiness changes reconciled (no reconcile for 5 s, at most 5 min),
        // then the autoscaler ticks over all of them for a while with nothing to change.
        let settle = Instant::now();
        let mut seen = metric_value(&metrics(port).await, "tiketi_operator_reconciliations_total");
        while settle.elapsed() < Duration::from_secs(300) {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = metric_value(&metrics(port).await, "tiketi_operator_reconciliations_total");
            if now == seen {
                break;
            }
            seen = now;
        }
        let before = metrics(port).await;
        let cpu_before = op.cpu_time();
        tokio::time::sleep(Duration::from_secs(20)).await;
        let cpu = op.cpu_time().saturating_sub(cpu_before);
        let after = metrics(port).await;
        let requests = |text: &str| metric_sum(text, "tiketi_operator_api_requests_total");
        let calls = requests(&after) - requests(&before);
        let w0 = writes_by_resource(&before);
        let written: Vec<(String, f64)> = writes_by_resource(&after)
            .into_iter()
            .map(|(r, v)| {
                let d = v - w0.get(&r).copied().unwrap_or(0.0);
                (r, d)
            })
            .filter(|(_, d)| *d > 0.0)
            .collect();
        let writes: f64 = written.iter().map(|(_, d)| d).sum();
        let by_resource: Vec<String> = written.iter().map(|(r, d)| format!("{r} {d:.0}")).collect();
        let (rss, hwm) = op.memory_kib();
        let ticks = metric_value(&after, "tiketi_operator_autoscaler_tick_duration_seconds_count")
            - metric_value(&before, "tiketi_operator_autoscaler_tick_duration_seconds_count");
        let tick_sum = metric_value(&after, "tiketi_operator_autoscaler_tick_duration_seconds_sum")
            - metric_value(&before, "tiketi_operator_autoscaler_tick_duration_seconds_sum");
        let series = after
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        println!(
            "{to} events (all Ready {:.0} s after the first create; 2 Deployments, 2 Services, 2 PDBs, 1 ConfigMap each): \
             RSS {:.1} MiB (peak {:.1} MiB), {:.2}× idle, {:.1} KiB per event over idle; \
             {series} metric series ({} KiB exposition)",
            reconciled.as_secs_f64(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            rss as f64 / idle_rss.max(1) as f64,
            (rss.saturating_sub(idle_rss)) as f64 / to.max(1) as f64,
            after.len() / 1024,
        );
        if ticks > 0.0 {
            println!(
                "  autoscaler tick over {to} events: mean {:.1} ms ({ticks:.0} ticks in 20 s; 2 s poll); \
                 the operator used {:.2} s of CPU in those 20 s ({:.1} ms per tick); \
                 API calls in those 20 s: {calls:.0}, of them writes {writes:.0} ({})",
                tick_sum / ticks * 1e3,
                cpu.as_secs_f64(),
                ms(cpu) / ticks,
                if by_resource.is_empty() {
                    "none".to_owned()
                } else {
                    by_resource.join(", ")
                },
            );
        }
        points.push((to, rss));
    }
    if let [(n1, r1), (n2, r2)] = points[..]
        && n2 > n1
    {
        let slope = (r2 as f64 - r1 as f64) / (n2 - n1) as f64;
        println!(
            "slope {n1} → {n2} events: {slope:.1} KiB per event; at this slope 1,000 events ≈ {:.1} MiB, 10,000 ≈ {:.1} MiB",
            (r2 as f64 + slope * (1_000.0 - n2 as f64)) / 1024.0,
            (r2 as f64 + slope * (10_000.0 - n2 as f64)) / 1024.0,
        );
    }
    // Clean up: the operator removes its finalizers as the events go. A busy API server may drop
    // the connection of a large delete: retried until the list is empty.
    let _ = wait_until("events deleted", Duration::from_secs(600), || async {
        let _ = api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        Ok(api.list(&ListParams::default()).await?.items.is_empty())
    })
    .await;
    drop(op);
    ns.delete().await.unwrap();
}

/// Ready Deployments of `api` (every replica ready) among `names`.
async fn ready_deployments(api: &Api<Deployment>, names: &std::collections::HashSet<String>) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else {
        return 0;
    };
    list.items
        .iter()
        .filter(|d| names.contains(&d.metadata.name.clone().unwrap_or_default()))
        .filter(|d| {
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= want
        })
        .count()
}

/// Convergence: `TIKETI_BENCH_EVENTS` (default 200) events created at once until every one is
/// Ready, next to the stack's own cost in the same run: as many bare Deployments as the events
/// have (two each, the pod template the operator built, one replica) created at once until every
/// one is ready. The difference is the operator's share.
async fn convergence(client: &Client) {
    let n: usize = std::env::var("TIKETI_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ns = TestNamespace::create(client, "bench-converge").await.unwrap();
    create_secrets(client, &ns.name).await.unwrap();
    let port = free_port().unwrap();
    let op = OperatorProcess::start(OPERATOR, &ns.name, port, "warn");
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let run = unique("conv");
    let far = Utc::now() + TimeDelta::days(30);
    let make = |i: usize| {
        event(&format!("cv-{i:05}"), far, |v| {
            v["spec"]["eventId"] = format!("{run}-{i}").into();
        })
    };
    // The pod template the operator builds, taken from one event, for the baseline.
    api.create(&PostParams::default(), &make(n)).await.unwrap();
    wait_until("a template Deployment", Duration::from_secs(60), || async {
        Ok(deployments.get_opt(&format!("cv-{n:05}-queue")).await?.is_some())
    })
    .await
    .unwrap();
    let mut template = deployments.get(&format!("cv-{n:05}-queue")).await.unwrap();
    template.metadata = Default::default();
    template.status = None;

    println!("== convergence: {n} TicketingEvents created at once, until all Ready ==");
    // Baseline: 2n bare Deployments, 1 replica each, created at once, until all ready.
    let names: std::collections::HashSet<String> = (0..2 * n).map(|i| format!("bare-{i:05}")).collect();
    let started = Instant::now();
    futures::stream::iter(names.clone())
        .map(|name| {
            let deployments = deployments.clone();
            let mut d = template.clone();
            async move {
                // Its own selector (the operator's would select the template event's pods).
                let labels = std::collections::BTreeMap::from([("bench-bare".to_owned(), name.clone())]);
                d.metadata.name = Some(name);
                if let Some(spec) = d.spec.as_mut() {
                    spec.replicas = Some(1);
                    spec.selector.match_labels = Some(labels.clone());
                    spec.template.metadata.get_or_insert_with(Default::default).labels = Some(labels);
                }
                deployments.create(&PostParams::default(), &d).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    wait_until(
        "all bare Deployments ready",
        Duration::from_secs(1800),
        || async { Ok(ready_deployments(&deployments, &names).await >= names.len()) },
    )
    .await
    .unwrap();
    let bare = started.elapsed();
    for name in &names {
        let _ = deployments.delete(name, &DeleteParams::background()).await;
    }

    // The operator: n events created at once, until every one says Ready=True.
    let started = Instant::now();
    create_all(&api, (0..n).map(make)).await;
    // n + 1: the template event created first is one of them.
    wait_ready(&api, n + 1).await;
    let operated = started.elapsed();
    let calls = metrics(port).await;
    println!(
        "baseline: {} bare Deployments (1 replica) created at once, all ready in {:.1} s = {:.1} ms per 2 Deployments",
        names.len(),
        bare.as_secs_f64(),
        ms(bare) / n as f64
    );
    println!(
        "operator: {n} events (2 Deployments, 2 Services, 2 PDBs, 1 ConfigMap each) all Ready in {:.1} s = {:.1} ms per event, {:.2}× the baseline; {} reconciles",
        operated.as_secs_f64(),
        ms(operated) / n as f64,
        operated.as_secs_f64() / bare.as_secs_f64(),
        metric_value(&calls, "tiketi_operator_reconciliations_total")
    );
    let _ = wait_until("events deleted", Duration::from_secs(600), || async {
        let _ = api
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        Ok(api.list(&ListParams::default()).await?.items.is_empty())
    })
    .await;
    drop(op);
    ns.delete().await.unwrap();
}

#[tokio::main]
async fn main() {
    let client = kube_client().await.unwrap();
    let redis_url = stack_env("REDIS_URL").unwrap();
    install_crd(&client).await.unwrap();
    let which = std::env::var("TIKETI_BENCH_ONLY").unwrap_or_default();
    if which.is_empty() || which == "reaction" {
        reaction(&client, &redis_url).await;
    }
    if which.is_empty() || which == "memory" {
        memory(&client).await;
    }
    if which.is_empty() || which == "convergence" {
        convergence(&client).await;
    }
}
