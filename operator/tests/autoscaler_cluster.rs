//! The autoscaler loop against the real local stack: the API server (Deployments on KWOK nodes),
//! the stack's Redis, and private redis-server processes for SIGSTOP. Each test has its own
//! namespace and a unique eventId, so its Redis keys are its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod reconciler_support;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use reconciler_support::*;
use redis::AsyncCommands;
use tiketi_e2e::{PrivateRedis, TestNamespace, free_port, kube_client, stack_env, unique, wait_until};
use tiketi_operator::crd::{Phase, TicketingEvent};
use tiketi_operator::status::{reasons, types};
use tiketi_shared::keys::EventKeys;

/// A queue policy with second-scale numbers: +2 above 50 waiting, +5 above 200.
fn queue_policy(out_cooldown: &str, window: &str, in_cooldown: &str) -> serde_json::Value {
    serde_json::json!({
        "pollInterval": "500ms",
        "scaleOut": {
            "steps": [
                {"signal": "queueDepth", "above": 50, "add": 2},
                {"signal": "queueDepth", "above": 200, "add": 5}
            ],
            "cooldown": out_cooldown
        },
        "scaleIn": {"when": {"signal": "queueDepth", "below": 10}, "remove": 1,
                    "stabilizationWindow": window, "cooldown": in_cooldown},
        "fallback": {"afterStale": "3s", "replicas": 6}
    })
}

/// An event on sale since a minute, queue 1..10 replicas with `policy`, keys under `event_id`.
fn on_sale_event(name: &str, event_id: &str, policy: serde_json::Value) -> TicketingEvent {
    event(name, Utc::now() - TimeDelta::minutes(1), |v| {
        v["spec"]["eventId"] = event_id.into();
        v["spec"]["saleEndsAt"] = serde_json::json!(Utc::now() + TimeDelta::hours(1));
        v["spec"]["queue"]["scaling"] = policy;
    })
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Sets the waiting queue to exactly `n` members.
async fn set_queue(conn: &mut redis::aio::MultiplexedConnection, event_id: &str, n: usize) {
    let key = EventKeys::new(event_id).queue();
    let _: () = conn.del(&key).await.unwrap();
    if n > 0 {
        let members: Vec<(f64, String)> = (0..n).map(|i| (i as f64, format!("user-{i}"))).collect();
        let _: () = conn.zadd_multiple(&key, &members).await.unwrap();
    }
}

async fn clear_keys(url: &str, event_id: &str) {
    let k = EventKeys::new(event_id);
    let mut c = redis(url).await;
    let _: () = c
        .del(&[k.queue(), k.active(), k.sold_out(), k.counts()])
        .await
        .unwrap();
}

async fn queue_replicas(deployments: &Api<Deployment>, name: &str) -> i32 {
    replicas(&deployments.get(&format!("{name}-queue")).await.unwrap())
}

/// Waits until the queue Deployment has `want` replicas; returns when that was first seen.
async fn wait_replicas(deployments: &Api<Deployment>, name: &str, want: i32, timeout: Duration) -> Instant {
    wait_until(
        &format!("{name}-queue to have {want} replicas"),
        timeout,
        || async { Ok(queue_replicas(deployments, name).await == want) },
    )
    .await
    .unwrap();
    Instant::now()
}

fn queue_status(t: &TicketingEvent) -> tiketi_operator::crd::ComponentStatus {
    t.status
        .as_ref()
        .and_then(|s| s.queue.clone())
        .unwrap_or_default()
}

fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_milliseconds() as f64 / 1000.0
}

async fn on_sale_and_healthy(api: &Api<TicketingEvent>, name: &str) -> TicketingEvent {
    wait_tev(
        api,
        name,
        "OnSale with SignalsHealthy=True",
        Duration::from_secs(45),
        |t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(Phase::OnSale)
                && condition_is(t, types::SIGNALS_HEALTHY, "True")
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn queue_depth_steps_out_and_scales_in_only_after_window_and_cooldown() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-steps").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let eid = unique("as-steps");
    let mut conn = redis(&url).await;
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &on_sale_event("steps", &eid, queue_policy("4s", "3s", "5s")),
    )
    .await
    .unwrap();
    on_sale_and_healthy(&api, "steps").await;
    assert_eq!(queue_replicas(&deployments, "steps").await, 1);

    // Past the first step: 1 → 3.
    let pushed = Instant::now();
    set_queue(&mut conn, &eid, 100).await;
    let seen = wait_replicas(&deployments, "steps", 3, Duration::from_secs(10)).await;
    println!("ZADD → spec.replicas 1→3 in {} ms", (seen - pushed).as_millis());
    let t = wait_tev(
        &api,
        "steps",
        "queueDepth 100 in status",
        Duration::from_secs(10),
        |t| {
            t.status.as_ref().and_then(|s| s.queue_depth) == Some(100)
                && queue_status(t).last_scale_out_time.is_some()
        },
    )
    .await
    .unwrap();
    let first_out = queue_status(&t).last_scale_out_time.unwrap();
    event_seen(&client, &ns.name, "steps", |(ty, r, n)| {
        ty == "Normal" && r == reasons::SCALED_OUT && n == "ScaledOut queue 1→3: queueDepth 100 > 50"
    })
    .await;

    // Past the second step inside the cooldown: held at 3 until 4 s after the first, then 3 → 8.
    set_queue(&mut conn, &eid, 300).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = queue_replicas(&deployments, "steps").await;
        if r == 8 {
            break;
        }
        assert_eq!(r, 3, "only the second step may change replicas");
        assert!(Instant::now() < deadline, "no second scale-out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = wait_tev(
        &api,
        "steps",
        "the second lastScaleOutTime",
        Duration::from_secs(10),
        |t| queue_status(t).last_scale_out_time > Some(first_out),
    )
    .await
    .unwrap();
    let second_out = queue_status(&t).last_scale_out_time.unwrap();
    let gap = secs_between(first_out, second_out);
    println!("second scale-out {gap:.2} s after the first (cooldown 4 s)");
    assert!(gap >= 3.7, "scale-out inside the cooldown: {gap} s");
    let decisions = t.status.as_ref().unwrap().recent_decisions.clone().unwrap();
    assert_eq!((decisions[0].from, decisions[0].to), (3, 8), "{decisions:?}");
    assert_eq!(decisions[0].reason, "queueDepth 300 > 200");

    // Empty queue: belowSince appears, and the first scale-in comes only after the 3 s window
    // and the 5 s cooldown since the last scale-out.
    set_queue(&mut conn, &eid, 0).await;
    let t = wait_tev(
        &api,
        "steps",
        "belowSince recorded",
        Duration::from_secs(10),
        |t| queue_status(t).below_since.is_some(),
    )
    .await
    .unwrap();
    let below_since = queue_status(&t).below_since.unwrap();
    assert_eq!(
        queue_replicas(&deployments, "steps").await,
        8,
        "scaled in before the window"
    );
    wait_replicas(&deployments, "steps", 7, Duration::from_secs(20)).await;
    let t = wait_tev(&api, "steps", "lastScaleInTime", Duration::from_secs(10), |t| {
        queue_status(t).last_scale_in_time.is_some()
    })
    .await
    .unwrap();
    let first_in = queue_status(&t).last_scale_in_time.unwrap();
    let after_out = secs_between(second_out, first_in);
    let after_below = secs_between(below_since, first_in);
    println!("first scale-in {after_out:.2} s after the last scale-out, {after_below:.2} s after belowSince");
    assert!(after_out >= 4.7, "scale-in inside the cooldown: {after_out} s");
    assert!(after_below >= 2.7, "scale-in before the window: {after_below} s");
    // The next one waits for the cooldown again.
    wait_replicas(&deployments, "steps", 6, Duration::from_secs(20)).await;
    let t = wait_tev(
        &api,
        "steps",
        "a second lastScaleInTime",
        Duration::from_secs(10),
        |t| queue_status(t).last_scale_in_time > Some(first_in),
    )
    .await
    .unwrap();
    let between = secs_between(first_in, queue_status(&t).last_scale_in_time.unwrap());
    assert!(between >= 4.7, "second scale-in {between} s after the first");
    event_seen(&client, &ns.name, "steps", |(_, r, n)| {
        r == reasons::SCALED_IN && n.starts_with("ScaledIn queue 8→7: queueDepth 0 < 10 for")
    })
    .await;
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn a_paused_redis_never_scales_in_falls_back_and_recovers() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-stale").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let private = PrivateRedis::start(&[]).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let s: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "private-redis"}, "stringData": {"url": private.url()}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let eid = unique("as-stale");
    let mut conn = redis(&private.url()).await;
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let mut tev = on_sale_event("stale", &eid, queue_policy("2s", "2s", "2s"));
    tev.spec.redis.url_secret_ref.name = "private-redis".into();
    api.create(&PostParams::default(), &tev).await.unwrap();
    on_sale_and_healthy(&api, "stale").await;

    set_queue(&mut conn, &eid, 100).await;
    wait_replicas(&deployments, "stale", 3, Duration::from_secs(10)).await;
    // The surge is over and Redis stops answering at the same moment: an HPA would read "no
    // load"; we must hold, then raise to the fallback, and never go below 3.
    set_queue(&mut conn, &eid, 0).await;
    private.signal("-STOP").unwrap();
    let stopped = Instant::now();
    let mut lowest = i32::MAX;
    let mut fallback_seen = None;
    while stopped.elapsed() < Duration::from_secs(9) {
        let r = queue_replicas(&deployments, "stale").await;
        lowest = lowest.min(r);
        if r == 6 && fallback_seen.is_none() {
            fallback_seen = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lowest >= 3, "scaled in on stale data: {lowest}");
    let fallback_after = fallback_seen.expect("raised to fallback.replicas 6");
    println!(
        "fallback to 6 replicas {} ms after SIGSTOP (afterStale 3 s)",
        fallback_after.as_millis()
    );
    assert!(
        fallback_after >= Duration::from_secs(3),
        "fallback before afterStale"
    );
    let t = api.get("stale").await.unwrap();
    let c = tiketi_operator::status::find(&t, types::SIGNALS_HEALTHY).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "Timeout"),
        "{c:?}"
    );
    assert!(c.message.contains("timed out"), "{}", c.message);
    event_seen(&client, &ns.name, "stale", |(ty, r, _)| {
        ty == "Warning" && r == reasons::SIGNALS_UNHEALTHY
    })
    .await;

    // Recovery on the next good tick, then scale-in resumes from the fallback.
    private.signal("-CONT").unwrap();
    let resumed = Instant::now();
    wait_tev(
        &api,
        "stale",
        "SignalsHealthy=True again",
        Duration::from_secs(10),
        |t| condition_is(t, types::SIGNALS_HEALTHY, "True"),
    )
    .await
    .unwrap();
    println!(
        "SignalsHealthy=True {} ms after SIGCONT",
        resumed.elapsed().as_millis()
    );
    wait_replicas(&deployments, "stale", 5, Duration::from_secs(15)).await;
    event_seen(&client, &ns.name, "stale", |(_, r, _)| {
        r == reasons::SIGNALS_RECOVERED
    })
    .await;
    teardown(&client, ns, op).await.unwrap();
}

const OPERATOR: &str = env!("CARGO_BIN_EXE_tiketi-operator");

#[tokio::test]
async fn a_killed_operator_is_replaced_by_one_that_honours_the_cooldown() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-restart").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let eid = unique("as-restart");
    let mut conn = redis(&url).await;
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &on_sale_event("restart", &eid, queue_policy("15s", "1m", "10m")),
    )
    .await
    .unwrap();
    let first = OperatorProcess::start(OPERATOR, &ns.name, free_port().unwrap(), "info,kube=warn");
    on_sale_and_healthy(&api, "restart").await;
    set_queue(&mut conn, &eid, 100).await;
    wait_replicas(&deployments, "restart", 3, Duration::from_secs(10)).await;
    let t = wait_tev(
        &api,
        "restart",
        "lastScaleOutTime",
        Duration::from_secs(10),
        |t| queue_status(t).last_scale_out_time.is_some(),
    )
    .await
    .unwrap();
    let first_out = queue_status(&t).last_scale_out_time.unwrap();
    first.kill();

    // The surge grows while no operator runs; the replacement must wait out the cooldown.
    set_queue(&mut conn, &eid, 300).await;
    let port = free_port().unwrap();
    let second = OperatorProcess::start(OPERATOR, &ns.name, port, "info,kube=warn");
    let started = Utc::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = queue_replicas(&deployments, "restart").await;
        if r == 8 {
            break;
        }
        assert_eq!(r, 3, "replicas changed other than by the second step");
        assert!(Instant::now() < deadline, "the new operator never scaled out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = Utc::now();
    let after_first = secs_between(first_out, seen);
    println!(
        "new process started {:.1} s after the first scale-out; scaled 3→8 {after_first:.2} s after it (cooldown 15 s)",
        secs_between(first_out, started)
    );
    assert!(
        after_first >= 14.7,
        "the restarted operator ignored the cooldown ({after_first} s)"
    );
    assert!(
        secs_between(started, seen) > 1.0,
        "the new process decided before reading status?"
    );

    // Its /metrics show the signal and the decisions.
    let metrics = reqwest_get(&format!("http://127.0.0.1:{port}/metrics")).await;
    let ns_label = format!("namespace=\"{}\",event=\"restart\"", ns.name);
    assert!(
        metrics.contains(&format!("tiketi_operator_queue_depth{{{ns_label}}} 300")),
        "{metrics}"
    );
    assert!(
        metrics.contains("tiketi_operator_autoscaler_decisions_total{")
            && metrics.contains("reason=\"ScaleOutCooldown\""),
        "{metrics}"
    );
    assert!(metrics.contains("tiketi_operator_autoscaler_tick_duration_seconds_count"));

    // Secrets come through the metadata watch: ticks every 500 ms and reconciles read no Secret
    // from the API server while nothing changes; a new version is read once it is seen.
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let (reads, ticks) = (
        sample(&metrics, "tiketi_operator_secret_reads_total"),
        sample(&metrics, "tiketi_operator_autoscaler_tick_duration_seconds_count"),
    );
    assert!(reads <= 6.0, "{reads} Secret reads for 3 Secrets");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = reqwest_get(&metrics_url).await;
    assert!(
        sample(&later, "tiketi_operator_autoscaler_tick_duration_seconds_count") >= ticks + 4.0,
        "the autoscaler did not tick"
    );
    assert_eq!(
        sample(&later, "tiketi_operator_secret_reads_total"),
        reads,
        "Secret GETs while nothing changed"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let rotated = serde_json::json!({"stringData": {"rotatedAt": Utc::now().to_rfc3339()}});
    secrets
        .patch(
            "tiketi-redis",
            &Default::default(),
            &kube::api::Patch::Merge(&rotated),
        )
        .await
        .unwrap();
    wait_until(
        "the new Secret version to be read",
        Duration::from_secs(10),
        || async {
            Ok(sample(
                &reqwest_get(&metrics_url).await,
                "tiketi_operator_secret_reads_total",
            ) > reads)
        },
    )
    .await
    .unwrap();
    println!("Secret GETs: {reads} at start, {reads} after 3 s of ticks, +1 version read after a rotation");
    drop(second);
    clear_keys(&url, &eid).await;
    api.delete("restart", &Default::default()).await.unwrap();
    ns.delete().await.unwrap();
}

/// The value of the unlabelled sample `name` in a Prometheus text exposition (0 when absent).
fn sample(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn reqwest_get(url: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        match reqwest::get(url).await {
            Ok(r) => return r.text().await.unwrap(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {url}: {last}");
}

#[tokio::test]
async fn sold_out_with_an_empty_queue_ends_the_sale_early() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-soldout").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let eid = unique("as-soldout");
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let mut tev = on_sale_event("soldout", &eid, queue_policy("2s", "2s", "2s"));
    tev.spec.wind_down = "10m".into();
    api.create(&PostParams::default(), &tev).await.unwrap();
    on_sale_and_healthy(&api, "soldout").await;

    // Still people in line: sold out, but the sale stays open until they are told.
    let k = EventKeys::new(&eid);
    let mut conn = redis(&url).await;
    set_queue(&mut conn, &eid, 5).await;
    let _: () = conn.set(k.sold_out(), "1").await.unwrap();
    let _: () = conn
        .hset_multiple(
            k.counts(),
            &[
                ("sold", "200"),
                ("held", "0"),
                ("available", "0"),
                ("total", "200"),
            ],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = api.get("soldout").await.unwrap();
    assert_eq!(t.status.as_ref().unwrap().phase, Some(Phase::OnSale));
    assert_eq!(t.status.as_ref().unwrap().sold_out_at, None);

    set_queue(&mut conn, &eid, 0).await;
    let t = wait_tev(&api, "soldout", "phase SoldOut", Duration::from_secs(15), |t| {
        t.status.as_ref().and_then(|s| s.phase) == Some(Phase::SoldOut)
    })
    .await
    .unwrap();
    assert!(t.status.as_ref().unwrap().sold_out_at.is_some());
    event_seen(&client, &ns.name, "soldout", |(_, r, n)| {
        r == reasons::SOLD_OUT && n.contains("200 sold")
    })
    .await;
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

/// What every test below starts with: a namespace with the Secrets, an operator watching it, a
/// unique eventId and a Redis connection.
struct Stage {
    client: kube::Client,
    ns: TestNamespace,
    url: String,
    eid: String,
    conn: redis::aio::MultiplexedConnection,
    op: Operator,
    api: Api<TicketingEvent>,
    deployments: Api<Deployment>,
}

impl Stage {
    async fn new(prefix: &str) -> Self {
        let client = kube_client().await.unwrap();
        install_crd(&client).await.unwrap();
        let ns = TestNamespace::create(&client, prefix).await.unwrap();
        create_secrets(&client, &ns.name).await.unwrap();
        let url = stack_env("REDIS_URL").unwrap();
        let conn = redis(&url).await;
        let op = Operator::start(&client, &ns.name);
        let api = Api::namespaced(client.clone(), &ns.name);
        let deployments = Api::namespaced(client.clone(), &ns.name);
        Self {
            eid: unique(prefix),
            client,
            ns,
            url,
            conn,
            op,
            api,
            deployments,
        }
    }
}

/// A queue policy with a capacity: 10,000 waiting users per replica (+20 %), no steps, a
/// stabilization window of `window`.
fn capacity_policy(window: &str) -> serde_json::Value {
    serde_json::json!({
        "pollInterval": "500ms",
        "capacity": {"signal": "queueDepth", "perReplica": 10000, "headroomPercent": 20},
        "scaleOut": {"steps": []},
        "scaleIn": {"stabilizationWindow": window, "cooldown": "1s"},
        "fallback": {"afterStale": "3s", "replicas": 6}
    })
}

/// Every distinct value of the queue Deployment's replicas until `want` is seen, sampled every
/// 100 ms (the writes happen at most once per 500 ms poll).
async fn replica_path(deployments: &Api<Deployment>, name: &str, want: i32, timeout: Duration) -> Vec<i32> {
    let start = Instant::now();
    let mut path = vec![queue_replicas(deployments, name).await];
    while *path.last().unwrap() != want {
        assert!(
            start.elapsed() < timeout,
            "{name}-queue never reached {want}: {path:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = queue_replicas(deployments, name).await;
        if path.last() != Some(&r) {
            path.push(r);
        }
    }
    path
}

#[tokio::test]
async fn a_capacity_goes_to_the_need_in_one_decision_and_back_to_the_floor_after_the_window() {
    let Stage {
        client,
        ns,
        url,
        eid,
        mut conn,
        op,
        api,
        deployments,
    } = Stage::new("as-capacity").await;
    api.create(
        &PostParams::default(),
        &on_sale_event("cap", &eid, capacity_policy("4s")),
    )
    .await
    .unwrap();
    on_sale_and_healthy(&api, "cap").await;
    assert_eq!(queue_replicas(&deployments, "cap").await, 1);

    // 60,000 waiting: ceil(60,000 × 1.2 / 10,000) = 8, in one write.
    set_queue(&mut conn, &eid, 60_000).await;
    let up = replica_path(&deployments, "cap", 8, Duration::from_secs(10)).await;
    assert_eq!(up, vec![1, 8], "straight to the need");
    let t = wait_tev(&api, "cap", "status.queue.need 8", Duration::from_secs(10), |t| {
        queue_status(t).need == Some(8)
    })
    .await
    .unwrap();
    assert_eq!(
        queue_status(&t).last_scale_reason.as_deref(),
        Some("queueDepth 60,000 needs 8 at 10,000/replica (+20%)")
    );
    event_seen(&client, &ns.name, "cap", |(_, r, n)| {
        r == "ScaledOut" && n.contains("queue 1→8: queueDepth 60,000 needs 8 at 10,000/replica (+20%)")
    })
    .await;

    // Empty: down to the floor in one decision, once the window (4 s) has passed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let emptied = Instant::now();
    set_queue(&mut conn, &eid, 0).await;
    let down = replica_path(&deployments, "cap", 1, Duration::from_secs(20)).await;
    let took = emptied.elapsed();
    assert!(down.len() <= 3, "at most two decisions down: {down:?}");
    assert_eq!(down, vec![8, 1], "down to the floor at once: {down:?}");
    assert!(
        took >= Duration::from_millis(3_500),
        "scaled in {took:?} after emptying, inside the 4 s window"
    );
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn a_pre_queue_raises_the_pre_warm_floor_before_the_on_sale() {
    let Stage {
        client,
        ns,
        url,
        eid,
        mut conn,
        op,
        api,
        deployments,
    } = Stage::new("as-prequeue").await;
    let k = EventKeys::new(&eid);
    let _: () = conn.del(k.prequeue()).await.unwrap();
    let on_sale_at = Utc::now() + TimeDelta::seconds(90);
    let tev = event("pre", on_sale_at, |v| {
        v["spec"]["eventId"] = eid.clone().into();
        v["spec"]["prewarm"] = serde_json::json!({
            "leadTime": "10m", "rampSteps": 1, "holdFor": "1m", "expectedGrowth": 1.5,
            "queue": {"replicas": 2}, "reservation": {"replicas": 1}
        });
        v["spec"]["queue"]["scaling"] = capacity_policy("30s");
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    wait_tev(
        &api,
        "pre",
        "PreWarming with SignalsHealthy=True",
        Duration::from_secs(45),
        |t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(Phase::PreWarming)
                && condition_is(t, types::SIGNALS_HEALTHY, "True")
        },
    )
    .await
    .unwrap();
    wait_replicas(&deployments, "pre", 2, Duration::from_secs(10)).await;

    // 30,000 in the pre-queue: ceil(30,000 × 1.5 × 1.2 / 10,000) = 6 before the on-sale.
    let members: Vec<(f64, String)> = (0..30_000).map(|i| (f64::from(i), format!("pre-{i}"))).collect();
    let _: () = conn.zadd_multiple(k.prequeue(), &members).await.unwrap();
    wait_replicas(&deployments, "pre", 6, Duration::from_secs(10)).await;
    wait_until("6 Ready queue pods", Duration::from_secs(30), || async {
        let d = deployments.get("pre-queue").await?;
        Ok(d.status.and_then(|s| s.ready_replicas) == Some(6))
    })
    .await
    .unwrap();
    assert!(
        Utc::now() < on_sale_at,
        "the pods were Ready only after the on-sale"
    );
    let t = wait_tev(
        &api,
        "pre",
        "status.queue.prewarmReplicas 6",
        Duration::from_secs(10),
        |t| queue_status(t).prewarm_replicas == Some(6),
    )
    .await
    .unwrap();
    assert_eq!(t.status.as_ref().unwrap().pre_queue_depth, Some(30_000));
    event_seen(&client, &ns.name, "pre", |(_, _, n)| {
        n.contains("pre-warm raised to 6: preQueueDepth 30,000 × 1.5 / 10,000 (+20%)")
    })
    .await;
    let _: () = conn.del(k.prequeue()).await.unwrap();
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn a_restart_inside_the_scale_in_window_keeps_the_window() {
    let Stage {
        client,
        ns,
        url,
        eid,
        mut conn,
        op,
        api,
        deployments,
    } = Stage::new("as-capwin").await;
    api.create(
        &PostParams::default(),
        &on_sale_event("capwin", &eid, capacity_policy("12s")),
    )
    .await
    .unwrap();
    on_sale_and_healthy(&api, "capwin").await;
    set_queue(&mut conn, &eid, 60_000).await;
    wait_replicas(&deployments, "capwin", 8, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Empty the queue, then replace the operator 3 s into the 12 s window.
    set_queue(&mut conn, &eid, 0).await;
    let emptied = Instant::now();
    let t = wait_tev(
        &api,
        "capwin",
        "the need history in status",
        Duration::from_secs(5),
        |t| {
            let h = queue_status(t).need_history.unwrap_or_default();
            h.first().map(|m| m.replicas) == Some(8) && h.len() >= 2
        },
    )
    .await
    .unwrap();
    let eight_seen = queue_status(&t).need_history.unwrap()[0].at;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(emptied.elapsed())).await;
    op.stop().await.unwrap();
    assert_eq!(queue_replicas(&deployments, "capwin").await, 8);
    let op = Operator::start(&client, &ns.name);
    wait_replicas(&deployments, "capwin", 1, Duration::from_secs(40)).await;
    let took = emptied.elapsed();
    // Not before the 8 left the window it was seen in (the new operator read it from status),
    // and not a whole window after the restart plus the window again.
    let left_window = eight_seen + TimeDelta::seconds(12);
    assert!(
        Utc::now() >= left_window,
        "scaled in before the need of 8 left the window"
    );
    assert!(
        took >= Duration::from_secs(11),
        "scaled in {took:?} after emptying, inside the 12 s window"
    );
    assert!(took < Duration::from_secs(30), "scale-in took {took:?}");
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn a_restart_inside_a_step_policys_window_keeps_the_evidence() {
    let Stage {
        client,
        ns,
        url,
        eid,
        mut conn,
        op,
        api,
        deployments,
    } = Stage::new("as-stepwin").await;
    // Evidence continues across gaps up to max(freshness 1 s, afterStale 6 s) = 6 s; the
    // queue stays at 0, so only the heartbeat (every 3 s while the evidence runs) rewrites
    // `signalsObservedAt` — with the 60 s heartbeat alone the new operator restarted it.
    let mut policy = queue_policy("1s", "16s", "1s");
    policy["fallback"]["afterStale"] = "6s".into();
    api.create(&PostParams::default(), &on_sale_event("stepwin", &eid, policy))
        .await
        .unwrap();
    on_sale_and_healthy(&api, "stepwin").await;
    set_queue(&mut conn, &eid, 100).await;
    wait_replicas(&deployments, "stepwin", 3, Duration::from_secs(10)).await;
    set_queue(&mut conn, &eid, 0).await;
    let emptied = Instant::now();
    wait_tev(
        &api,
        "stepwin",
        "belowSince in status",
        Duration::from_secs(5),
        |t| queue_status(t).below_since.is_some(),
    )
    .await
    .unwrap();
    // Replace the operator 10 s into the 16 s window.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(emptied.elapsed())).await;
    op.stop().await.unwrap();
    assert_eq!(queue_replicas(&deployments, "stepwin").await, 3);
    let op = Operator::start(&client, &ns.name);
    wait_replicas(&deployments, "stepwin", 2, Duration::from_secs(40)).await;
    let took = emptied.elapsed();
    println!("step policy, operator replaced 10 s into a 16 s window: scaled in {took:?} after emptying");
    assert!(
        took >= Duration::from_secs(15),
        "scaled in {took:?} after emptying, inside the window"
    );
    // A restarted evidence would scale in no sooner than 10 + 16 = 26 s.
    assert!(
        took < Duration::from_secs(23),
        "scale-in took {took:?}: the new operator restarted the evidence"
    );
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn a_live_sale_keeps_running_on_its_last_good_spec() {
    let Stage {
        client,
        ns,
        url,
        eid,
        mut conn,
        op,
        api,
        deployments,
    } = Stage::new("as-lastgood").await;
    api.create(
        &PostParams::default(),
        &on_sale_event("good", &eid, capacity_policy("4s")),
    )
    .await
    .unwrap();
    on_sale_and_healthy(&api, "good").await;
    let generation = api.get("good").await.unwrap().metadata.generation.unwrap();

    // 1. The auth Secret is deleted mid-sale: InvalidSpec=True says why, the sale goes on.
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .delete("tiketi-auth", &Default::default())
        .await
        .unwrap();
    let t = wait_tev(&api, "good", "InvalidSpec=True", Duration::from_secs(20), |t| {
        condition_is(t, types::INVALID_SPEC, "True")
    })
    .await
    .unwrap();
    let cond = tiketi_operator::status::find(&t, types::INVALID_SPEC).unwrap();
    assert!(
        cond.message.contains("\"tiketi-auth\" does not exist")
            && cond
                .message
                .contains(&format!("keeping the spec of generation {generation} in force")),
        "{}",
        cond.message
    );
    assert_eq!(
        t.status.as_ref().unwrap().phase,
        Some(Phase::OnSale),
        "not frozen as Failed"
    );
    set_queue(&mut conn, &eid, 60_000).await;
    wait_replicas(&deployments, "good", 8, Duration::from_secs(10)).await;
    event_seen(&client, &ns.name, "good", |(ty, r, n)| {
        ty == "Warning" && r == reasons::INVALID_SPEC && n.contains("keeping the spec")
    })
    .await;

    // 2. The Secret comes back and an edit builds a Deployment the API server refuses (requests
    // above limits: only its dry run finds it): the old spec keeps scaling.
    create_secrets(&client, &ns.name).await.unwrap();
    let patch = serde_json::json!({"spec": {"queue": {"resources": {
        "requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}
    }}}});
    api.patch(
        "good",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    wait_tev(
        &api,
        "good",
        "InvalidSpec=True for the refused Deployment",
        Duration::from_secs(20),
        |t| {
            tiketi_operator::status::find(t, types::INVALID_SPEC).is_some_and(|c| {
                c.status == "True"
                    && c.message.contains("the API server refuses Deployment")
                    && c.message.contains("keeping the spec")
            })
        },
    )
    .await
    .unwrap();
    set_queue(&mut conn, &eid, 0).await;
    wait_replicas(&deployments, "good", 1, Duration::from_secs(20)).await;

    // The Deployment still runs the last good spec's resources.
    let d = deployments.get("good-queue").await.unwrap();
    let requests = d.spec.unwrap().template.spec.unwrap().containers[0]
        .resources
        .clone()
        .and_then(|r| r.requests)
        .unwrap_or_default();
    assert_ne!(
        requests.get("memory").map(|q| q.0.as_str()),
        Some("2Gi"),
        "the refused spec was applied"
    );

    // 3. Fixed: valid again, the new generation is the good one.
    let patch = serde_json::json!({"spec": {"queue": {"resources": null}}});
    api.patch(
        "good",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let t = wait_tev(&api, "good", "InvalidSpec=False", Duration::from_secs(20), |t| {
        condition_is(t, types::INVALID_SPEC, "False")
    })
    .await
    .unwrap();
    assert!(t.status.as_ref().unwrap().last_good_generation > Some(generation));
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

/// SIGTERM (the shutdown signal) while the autoscaler is scaling out: work stops first, the
/// Lease is released after, so no write of `spec.replicas` follows the release. The order is read
/// from the API server's own sequence (resourceVersions are etcd revisions in this stack).
#[tokio::test]
async fn shutdown_during_a_scale_out_releases_the_lease_after_the_last_write() {
    use futures::StreamExt as _;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt as _, watcher};

    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-sigterm").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let mut conn = redis(&url).await;
    let eid = unique("as-sigterm");
    let mut leader = tiketi_operator::leader::LeaderConfig::new(&ns.name, "tiketi-operator", "sigterm-test");
    leader.lease_duration = Duration::from_secs(15);
    leader.renew_deadline = Duration::from_secs(10);
    leader.retry_period = Duration::from_millis(500);
    let op = Operator::start_with(&client, &ns.name, Some(leader));
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let policy = serde_json::json!({
        "pollInterval": "250ms",
        "capacity": {"signal": "queueDepth", "perReplica": 10, "headroomPercent": 0},
        "scaleOut": {"steps": []},
        "scaleIn": {"stabilizationWindow": "1h", "cooldown": "1h"}
    });
    let mut tev = on_sale_event("term", &eid, policy);
    tev.spec.queue.max_replicas = 1000;
    api.create(&PostParams::default(), &tev).await.unwrap();
    on_sale_and_healthy(&api, "term").await;

    // Every spec change of the queue Deployment (generation moves) and every Lease update, with
    // their resourceVersions.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, u64, String)>();
    let rv = |o: &kube::core::ObjectMeta| {
        o.resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let dtx = tx.clone();
    let dwatch = tokio::spawn(
        watcher(
            deployments.clone(),
            watcher::Config::default().fields("metadata.name=term-queue"),
        )
        .applied_objects()
        .for_each(move |d| {
            if let Ok(d) = &d {
                let g = d.metadata.generation.unwrap_or(0);
                let _ = dtx.send(("deployment", rv(&d.metadata), format!("{g}/{}", replicas(d))));
            }
            async {}
        }),
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let lwatch = tokio::spawn(
        watcher(
            leases,
            watcher::Config::default().fields("metadata.name=tiketi-operator"),
        )
        .applied_objects()
        .for_each(move |l| {
            if let Ok(l) = &l {
                let holder = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                let _ = tx.send(("lease", rv(&l.metadata), holder));
            }
            async {}
        }),
    );

    // A queue that keeps growing: a new need (and a write) every poll.
    let mut depth = 50;
    for _ in 0..8 {
        depth += 40;
        set_queue(&mut conn, &eid, depth).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // SIGTERM while the writes go on.
    let grow = {
        let url = url.clone();
        let eid = eid.clone();
        tokio::spawn(async move {
            let mut conn = redis(&url).await;
            for i in 0..20 {
                set_queue(&mut conn, &eid, 400 + i * 40).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.stop().await.unwrap();
    grow.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    dwatch.abort();
    lwatch.abort();

    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    seen.sort_by_key(|e| e.1);
    // The release: the first Lease update after which nobody holds it.
    let release = seen
        .iter()
        .find(|(k, _, holder)| *k == "lease" && holder.is_empty())
        .map(|e| e.1)
        .unwrap_or_else(|| panic!("the Lease was never released: {seen:?}"));
    let mut last_gen = None;
    let mut writes = Vec::new();
    for (k, v, what) in &seen {
        if *k == "deployment" {
            let g = what.split('/').next().unwrap().to_owned();
            if last_gen.as_ref().is_some_and(|p| p != &g) {
                writes.push((*v, what.clone()));
            }
            last_gen = Some(g);
        }
    }
    assert!(
        writes.len() >= 3,
        "the autoscaler was scaling out while it stopped: {seen:?}"
    );
    assert!(
        writes.iter().all(|(v, _)| *v < release),
        "spec.replicas written after the Lease was released (rv {release}): {writes:?}"
    );
    let mut c = redis(&url).await;
    let _: () = redis::AsyncCommands::del(&mut c, EventKeys::new(&eid).queue())
        .await
        .unwrap();
    clear_keys(&url, &eid).await;
    ns.delete().await.unwrap();
}

/// A ValidatingAdmissionPolicy (and its binding) that refuses every status write of
/// TicketingEvents in `ns` while it exists.
async fn refuse_status_writes(
    client: &kube::Client,
    ns: &str,
) -> impl std::future::Future<Output = ()> + use<> {
    use kube::api::DynamicObject;
    use kube::discovery::ApiResource;
    let gvk = |kind: &str| {
        ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            kind,
        ))
    };
    let (policy_ar, binding_ar) = (
        gvk("ValidatingAdmissionPolicy"),
        gvk("ValidatingAdmissionPolicyBinding"),
    );
    let policies: Api<DynamicObject> = Api::all_with(client.clone(), &policy_ar);
    let bindings: Api<DynamicObject> = Api::all_with(client.clone(), &binding_ar);
    let name = format!("refuse-status-{ns}");
    let policy: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": ["tiketi.gg"], "apiVersions": ["*"],
                "operations": ["CREATE", "UPDATE"], "resources": ["ticketingevents/status"]
            }]},
            "validations": [{"expression": "false", "message": "status writes refused by the test"}]
        }
    }))
    .unwrap();
    let binding: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        }
    }))
    .unwrap();
    policies.create(&PostParams::default(), &policy).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    async move {
        let _ = bindings.delete(&name, &Default::default()).await;
        let _ = policies.delete(&name, &Default::default()).await;
    }
}

#[tokio::test]
async fn a_refused_status_write_does_not_scale_out_again_inside_the_cooldown() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-nostatus").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let eid = unique("as-nostatus");
    let mut conn = redis(&url).await;
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &on_sale_event("nostatus", &eid, queue_policy("45s", "1m", "10m")),
    )
    .await
    .unwrap();
    let op = Operator::start(&client, &ns.name);
    on_sale_and_healthy(&api, "nostatus").await;

    let allow = refuse_status_writes(&client, &ns.name).await;
    // The policy takes effect within a moment: wait until a status write is refused.
    let probe = serde_json::json!({"status": {"queueDepth": 0}});
    wait_until("status writes to be refused", Duration::from_secs(10), || async {
        Ok(api
            .patch_status("nostatus", &Default::default(), &kube::api::Patch::Merge(&probe))
            .await
            .is_err())
    })
    .await
    .unwrap();

    // One step (1 → 3): the Deployment write lands, the status write with the cooldown does not.
    set_queue(&mut conn, &eid, 100).await;
    wait_replicas(&deployments, "nostatus", 3, Duration::from_secs(10)).await;
    assert!(
        queue_status(&api.get("nostatus").await.unwrap())
            .last_scale_out_time
            .is_none(),
        "a status write got through the policy"
    );
    // 8 s of ticks every 500 ms with the queue still above the step: the cooldown (45 s) is
    // kept from the write that landed, so no second step.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            queue_replicas(&deployments, "nostatus").await,
            3,
            "scaled out again inside the cooldown while status could not be written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A leader change while status is still refused: the new leader knows nothing of the change
    // but what the Deployment carries (replicas and, in the same write, the cooldown instant).
    let d = deployments.get("nostatus-queue").await.unwrap();
    assert!(
        d.annotations()
            .contains_key(tiketi_operator::scaler::cooldown_annotations::LAST_SCALE_OUT),
        "the scale-out's instant is not on the Deployment: {:?}",
        d.annotations()
    );
    op.stop().await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            queue_replicas(&deployments, "nostatus").await,
            3,
            "a new leader scaled out again inside the cooldown it could only learn from the Deployment"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Status writes allowed again: the decision and its cooldown reach the status (recorded by
    // the new leader from what it adopted).
    allow.await;
    let t = wait_tev(
        &api,
        "nostatus",
        "the scale-out in status",
        Duration::from_secs(15),
        |t| {
            let q = queue_status(t);
            q.last_scale_out_time.is_some() && q.desired_replicas == Some(3)
        },
    )
    .await
    .unwrap();
    assert_eq!(queue_replicas(&deployments, "nostatus").await, 3);
    println!(
        "status refused for 8 s after a scale-out: replicas stayed 3, lastScaleOutTime {:?} once allowed",
        queue_status(&t).last_scale_out_time
    );
    clear_keys(&url, &eid).await;
    teardown(&client, ns, op).await.unwrap();
}

/// The operator's client with a switch: while on, every request whose path names `marker`
/// hangs (accepted, never answered), the way one event's calls look behind a stalled API server
/// or a slow admission webhook. Everything else passes.
fn client_stalling(
    client: kube::Client,
    marker: &'static str,
) -> (kube::Client, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let on = std::sync::Arc::new(AtomicBool::new(false));
    let switch = on.clone();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        let hang = switch.load(Ordering::SeqCst) && req.uri().path().contains(marker);
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            client.send(req).await.map_err(tower::BoxError::from)
        }
    });
    (kube::Client::new(service, "default"), on)
}

/// Sum of the samples of `name` whose labels contain `labels`.
fn sum_samples(exposition: &str, name: &str, labels: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One event whose API calls hang holds only itself: the other event's decisions go on at its
/// poll interval (before, every tick waited for every event, so each tick lasted the 5 s bound).
#[tokio::test]
async fn a_hung_event_does_not_hold_the_others() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "as-hung").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let url = stack_env("REDIS_URL").unwrap();
    let (fine_id, hung_id) = (unique("as-fine"), unique("as-hung"));
    let mut conn = redis(&url).await;
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    for (name, id) in [("fine", &fine_id), ("hung", &hung_id)] {
        api.create(
            &PostParams::default(),
            &on_sale_event(name, id, queue_policy("1s", "1m", "10m")),
        )
        .await
        .unwrap();
    }
    let (stalling, stall) = client_stalling(client.clone(), "/hung");
    let port = free_port().unwrap();
    let op = Operator::start_opts(&stalling, &ns.name, |o| {
        o.metrics_addr = Some(([127, 0, 0, 1], port).into());
    });
    on_sale_and_healthy(&api, "fine").await;
    on_sale_and_healthy(&api, "hung").await;

    // "hung" wants to scale and every call it makes hangs; "fine" is read in the same ticks.
    stall.store(true, std::sync::atomic::Ordering::SeqCst);
    set_queue(&mut conn, &hung_id, 100).await;
    set_queue(&mut conn, &fine_id, 100).await;
    let asked = Instant::now();
    wait_replicas(&deployments, "fine", 3, Duration::from_secs(10)).await;
    let reacted = asked.elapsed();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let fine = "event=\"fine\"";
    let before = sum_samples(
        &reqwest_get(&metrics_url).await,
        "tiketi_operator_autoscaler_decisions_total",
        fine,
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = sum_samples(
        &reqwest_get(&metrics_url).await,
        "tiketi_operator_autoscaler_decisions_total",
        fine,
    );
    let decided = after - before;
    println!(
        "with every call of \"hung\" hanging: \"fine\" scaled 1→3 {:.2} s after its queue grew, and was decided {decided} times in 6 s (2 components, 500 ms poll)",
        reacted.as_secs_f64()
    );
    // 6 s at 500 ms is 12 ticks × 2 components; a tick held by the hung event's 5 s bound would
    // allow about 2 ticks.
    assert!(
        decided >= 12.0,
        "\"fine\" was decided only {decided} times in 6 s"
    );
    stall.store(false, std::sync::atomic::Ordering::SeqCst);
    clear_keys(&url, &fine_id).await;
    clear_keys(&url, &hung_id).await;
    teardown(&client, ns, op).await.unwrap();
}
