//! The whole autoscaler tick at 1,000 and 10,000 TicketingEvents with nothing to change: the
//! operator's own loop (`Autoscaler::tick`: the event cache, the pipelined signal read from the
//! stack's real Redis, the decision of every component, the book, the metrics, the status
//! throttle) in this process, against the 2 s poll interval it must fit in. The baseline in the
//! same run is the signal read alone (one pipeline for every event, as `autoscaler_tick` prints).
//!
//! The Kubernetes API is a stand-in here (a counting `tower` service that answers the Deployment
//! and Secret reads the loop makes once per event, and accepts its status writes): 10,000 events
//! with their Deployments do not fit the local stack on two cores. The real API server shows the
//! same thing at 200 events in `autoscaler_loop` (memory section: 0 API calls in 20 s settled)
//! and in the stack test `an_unchanged_event_costs_at_most_three_calls_and_no_write_per_reconcile_or_tick`.
//!
//! `REDIS_URL=… cargo bench -p tiketi-operator --bench loop_tick` (or e2e/bench/autoscaler.sh).
//! Prints figures and ratios; asserts only that a settled tick sends nothing to the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/reconciler_support/mod.rs"]
mod reconciler_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher};
use reconciler_support::event;
use tiketi_operator::autoscale::{Autoscaler, AutoscalerOptions, StoreChanges};
use tiketi_operator::crd::TicketingEvent;
use tiketi_operator::events::EventPublisher;
use tiketi_operator::leader::LeaderState;
use tiketi_operator::metrics::Metrics;
use tiketi_operator::reconciler::{ChildStores, Context};
use tiketi_operator::secrets::{Secrets, Watched};
use tiketi_operator::signals::SignalReader;

const NS: &str = "bench";
const SIZES: [usize; 2] = [1_000, 10_000];
const POLL: Duration = Duration::from_secs(2);
/// Each size is measured over WINDOWS windows of WINDOW (whole polls each); the median is the
/// figure and the spread is printed next to it (CPU time on a shared VM moves between runs).
const WINDOW: Duration = Duration::from_secs(10);
const WINDOWS: usize = 3;

/// Requests the stand-in API answered, by "METHOD resource".
type Calls = Arc<Mutex<BTreeMap<String, u64>>>;

fn json_response(status: u16, v: &serde_json::Value) -> http::Response<kube::client::Body> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(v).unwrap()))
        .unwrap()
}

/// The stand-in API: a Deployment whose replicas (1) the scaler wrote, the Redis Secret, and the
/// events themselves (a status write answers with the event); anything else is a 404.
fn stand_in_api(redis_url: &str, events: Arc<HashMap<String, serde_json::Value>>) -> (Client, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("tiketi-redis".into()),
            namespace: Some(NS.into()),
            resource_version: Some("1".into()),
            ..Default::default()
        },
        data: Some(
            [(
                "url".to_owned(),
                k8s_openapi::ByteString(redis_url.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    let secret = serde_json::to_value(&secret).unwrap();
    let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let parts: Vec<String> = req.uri().path().split('/').map(str::to_owned).collect();
        let method = req.method().to_string();
        let resource = match parts.iter().position(|p| p == "namespaces") {
            Some(i) => parts.get(i + 2).cloned().unwrap_or_default(),
            None => "other".into(),
        };
        *seen
            .lock()
            .unwrap()
            .entry(format!("{method} {resource}"))
            .or_default() += 1;
        let name = parts
            .iter()
            .rev()
            .find(|p| *p != "status")
            .cloned()
            .unwrap_or_default();
        let reply = match resource.as_str() {
            "deployments" => json_response(
                200,
                &serde_json::json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": name, "namespace": NS, "managedFields": [
                        {"manager": "tiketi-scaler", "operation": "Apply", "fieldsType": "FieldsV1",
                         "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
                    "spec": {"replicas": 1, "selector": {}, "template": {}}
                }),
            ),
            "secrets" => json_response(200, &secret),
            "ticketingevents" => match events.get(&name) {
                Some(ev) => json_response(200, ev),
                None => json_response(404, &serde_json::json!({"kind": "Status", "code": 404})),
            },
            _ => json_response(404, &serde_json::json!({"kind": "Status", "code": 404})),
        };
        async move { Ok::<_, std::convert::Infallible>(reply) }
    });
    (Client::new(service, NS), calls)
}

/// An event on sale for two hours (pre-warm over), 1 replica per component, keys under `id`.
fn on_sale(i: usize, run: &str) -> TicketingEvent {
    let mut tev = event(&format!("ev-{i:05}"), Utc::now() - TimeDelta::hours(2), |v| {
        v["metadata"]["namespace"] = NS.into();
        v["metadata"]["uid"] = format!("uid-{i}").into();
        v["metadata"]["resourceVersion"] = "1".into();
        v["metadata"]["generation"] = 1.into();
        v["spec"]["eventId"] = format!("{run}-{i}").into();
        v["spec"]["saleEndsAt"] = serde_json::json!(Utc::now() + TimeDelta::hours(2));
        v["status"] = serde_json::json!({
            "phase": "OnSale", "observedGeneration": 1,
            "queue": {"desiredReplicas": 1}, "reservation": {"desiredReplicas": 1}
        });
    });
    tev.metadata.namespace = Some(NS.into());
    tev
}

/// CPU time this process has used (user + system), from /proc/self/stat (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let redis_url =
        std::env::var("REDIS_URL").expect("REDIS_URL must point at a Redis (eval \"$(e2e/stack env)\")");
    // Logging as the operator sets it up (JSON, info): its per-event spans cost what they cost.
    tiketi_shared::telemetry::init_with("info,kube=warn", Some(true));
    let run = format!("bench-loop-{}", std::process::id());
    println!(
        "== the whole autoscaler tick with nothing to change (real Redis, stand-in API; {} s poll) ==",
        POLL.as_secs()
    );
    println!(
        "(median of {WINDOWS} windows of {} s each; the windows' range of % of poll next to it)",
        WINDOW.as_secs()
    );
    println!(
        "{:>7}  {:>17}  {:>15}  {:>12}  {:>15}  {:>14}  {:>15}  {:>11}",
        "events",
        "signal read ms",
        "loop CPU ms/poll",
        "% of poll",
        "range % of poll",
        "µs per event",
        "vs signal read",
        "API calls"
    );
    // TIKETI_BENCH_EVENTS=N runs one size (e.g. under a profiler).
    let sizes: Vec<usize> = match std::env::var("TIKETI_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => vec![n],
        None => SIZES.to_vec(),
    };
    for n in sizes {
        let events: Vec<TicketingEvent> = (0..n).map(|i| on_sale(i, &run)).collect();
        let by_name: HashMap<String, serde_json::Value> = events
            .iter()
            .map(|e| (e.metadata.name.clone().unwrap(), serde_json::to_value(e).unwrap()))
            .collect();
        let (client, calls) = stand_in_api(&redis_url, Arc::new(by_name));

        let (store, mut writer) = reflector::store::<TicketingEvent>();
        for e in &events {
            writer.apply_watcher_event(&watcher::Event::Apply(e.clone()));
        }
        let (secret_store, mut secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
        let mut meta = PartialObjectMeta::<Secret>::default();
        meta.metadata.name = Some("tiketi-redis".into());
        meta.metadata.namespace = Some(NS.into());
        meta.metadata.resource_version = Some("1".into());
        secret_writer.apply_watcher_event(&watcher::Event::Apply(meta));
        let secrets = Secrets::new(
            client.clone(),
            vec![Watched {
                namespace: Some(NS.into()),
                store: secret_store,
                synced: Arc::new(AtomicBool::new(true)),
            }],
        );
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let ctx = Arc::new(Context::new(
            client.clone(),
            EventPublisher::new(client.clone(), "tiketi-operator", "bench"),
            metrics,
            LeaderState::always(),
            secrets,
            ChildStores::default(),
        ));
        let mut loop_ = Autoscaler::new(ctx, store, StoreChanges::default(), AutoscalerOptions::default());

        // Warm up: the first ticks adopt every Deployment, read the Secret once and write each
        // event's first status; then nothing is left to do.
        let warm_until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < warm_until {
            let wake = loop_.tick().await;
            tokio::time::sleep_until(wake.into()).await;
        }
        calls.lock().unwrap().clear();

        // Baseline in the same run: the signal read alone for the same events.
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.spec.event_id_or(e.metadata.name.as_deref().unwrap_or_default()))
            .collect();
        let target = tiketi_shared::redis::RedisArgs::new(redis_url.as_str());
        let mut reader = SignalReader::connect(&target, Duration::from_secs(10)).unwrap();
        let _ = reader.read_in_order(&ids).await;
        let mut reads = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let _ = reader.read_in_order(&ids).await;
            reads.push(t.elapsed());
        }
        reads.sort();
        let read = reads[reads.len() / 2];

        let mut windows = Vec::with_capacity(WINDOWS);
        for _ in 0..WINDOWS {
            let cpu_before = cpu_time();
            let started = Instant::now();
            while started.elapsed() < WINDOW {
                let wake = loop_.tick().await;
                tokio::time::sleep_until(wake.into()).await;
            }
            let cpu = cpu_time().saturating_sub(cpu_before);
            let polls = started.elapsed().as_secs_f64() / POLL.as_secs_f64();
            windows.push(cpu.as_secs_f64() / polls);
        }
        windows.sort_by(f64::total_cmp);
        let per_poll = windows[windows.len() / 2];
        let pct = |v: f64| v / POLL.as_secs_f64() * 100.0;
        let sent = calls.lock().unwrap().clone();
        let total: u64 = sent.values().sum();
        println!(
            "{:>7}  {:>17.1}  {:>15.1}  {:>11.2}%  {:>15}  {:>14.2}  {:>14.1}×  {:>11}",
            n,
            ms(read),
            per_poll * 1e3,
            pct(per_poll),
            format!("{:.2}–{:.2}", pct(windows[0]), pct(windows[windows.len() - 1])),
            per_poll * 1e6 / n as f64,
            per_poll / read.as_secs_f64(),
            if total == 0 {
                "0".to_owned()
            } else {
                format!("{total} {sent:?}")
            },
        );
        assert_eq!(total, 0, "a settled tick sent API calls: {sent:?}");
    }
}
