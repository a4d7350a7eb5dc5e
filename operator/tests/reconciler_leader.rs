//! Leader election on a real Lease: one leader at a time, hand-over on release, and a follower
//! that never writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod reconciler_support;

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use reconciler_support::*;
use tiketi_e2e::{TestNamespace, kube_client, wait_until};
use tiketi_operator::crd::TicketingEvent;
use tiketi_operator::leader::{LeaderConfig, elect};
use tokio::sync::watch;

fn fast(ns: &str, identity: &str) -> LeaderConfig {
    let mut c = LeaderConfig::new(ns, "tiketi-operator", identity);
    c.lease_duration = Duration::from_secs(3);
    c.renew_deadline = Duration::from_secs(2);
    c.retry_period = Duration::from_millis(300);
    c
}

#[tokio::test]
async fn one_leader_and_handover_on_release() {
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "tev-lease").await.unwrap();
    let (stop_a, rx_a) = watch::channel(false);
    let (stop_b, rx_b) = watch::channel(false);
    let (a, run_a) = elect(
        client.clone(),
        fast(&ns.name, "a"),
        tiketi_operator::runtime::shutdown_signal(rx_a),
    );
    let run_a = tokio::spawn(run_a);
    wait_until("a to lead", Duration::from_secs(10), || async {
        Ok(a.is_leader())
    })
    .await
    .unwrap();
    let (b, run_b) = elect(
        client.clone(),
        fast(&ns.name, "b"),
        tiketi_operator::runtime::shutdown_signal(rx_b),
    );
    let run_b = tokio::spawn(run_b);
    wait_until("b to know it follows", Duration::from_secs(10), || async {
        Ok(b.known())
    })
    .await
    .unwrap();
    // For longer than a lease duration, b stays a follower while a renews.
    for _ in 0..20 {
        assert!(a.is_leader() && !b.is_leader(), "exactly one leader");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get("tiketi-operator")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("a"));
    // a shuts down and releases: b takes over well before the lease would have expired on its own.
    stop_a.send_replace(true);
    run_a.await.unwrap();
    assert!(!a.is_leader());
    wait_until("b to take over", Duration::from_secs(3), || async {
        Ok(b.is_leader())
    })
    .await
    .unwrap();
    let lease = Api::<Lease>::namespaced(client.clone(), &ns.name)
        .get("tiketi-operator")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    stop_b.send_replace(true);
    run_b.await.unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_follower_does_not_write_until_it_leads() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-follower").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    // Someone else holds the Lease (a long one).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let held: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "tiketi-operator"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                 "renewTime": k8s_openapi::jiff::Timestamp::now().to_string()}
    }))
    .unwrap();
    leases.create(&PostParams::default(), &held).await.unwrap();
    let op = Operator::start_with(&client, &ns.name, Some(fast(&ns.name, "follower")));
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &event("quiet", Utc::now() + TimeDelta::days(1), |_| {}),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let lp = ListParams::default().labels("tiketi.gg/event=quiet");
    // Two seconds: many reconcile opportunities, and the follower must not have used any of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        deployments.list(&lp).await.unwrap().items.is_empty(),
        "a follower deployed"
    );
    assert!(
        api.get("quiet").await.unwrap().status.is_none(),
        "a follower wrote status"
    );
    // The other holder goes away: the follower takes over and reconciles what it missed.
    leases
        .delete("tiketi-operator", &DeleteParams::default())
        .await
        .unwrap();
    wait_tev(
        &api,
        "quiet",
        "the new leader to reconcile",
        Duration::from_secs(20),
        |t| t.status.is_some(),
    )
    .await
    .unwrap();
    wait_until("children deployed", Duration::from_secs(10), || async {
        Ok(deployments.list(&lp).await?.items.len() == 2)
    })
    .await
    .unwrap();
    teardown(&client, ns, op).await.unwrap();
}

/// A TCP proxy in front of the API server that can be stalled: while stalled, bytes are held
/// (connections stay open, nothing answers), the way a throttled or partitioned API server looks.
struct StallProxy {
    addr: std::net::SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallProxy {
    async fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let flag = flag.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let pump =
                        |mut r: tokio::net::tcp::OwnedReadHalf,
                         mut w: tokio::net::tcp::OwnedWriteHalf,
                         flag: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let Ok(n) = r.read(&mut buf).await else { return };
                                if n == 0 {
                                    return;
                                }
                                while flag.load(Ordering::Acquire) {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                    tokio::join!(pump(ri, wo, flag.clone()), pump(ro, wi, flag));
                });
            }
        });
        Self { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::Release);
    }
}

#[tokio::test]
async fn a_leader_behind_a_stalled_api_steps_down_before_the_standby_leads() {
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "tev-stall").await.unwrap();
    // a talks to the API server through the proxy, b directly.
    let mut config = kube::Config::infer().await.unwrap();
    let upstream = format!(
        "{}:{}",
        config.cluster_url.host().unwrap(),
        config.cluster_url.port_u16().unwrap()
    );
    let proxy = StallProxy::start(upstream).await;
    config.cluster_url = format!("https://{}", proxy.addr).parse().unwrap();
    let proxied = kube::Client::try_from(config).unwrap();
    let (_stop_a, rx_a) = watch::channel(false);
    let (stop_b, rx_b) = watch::channel(false);
    let (a, run_a) = elect(
        proxied,
        fast(&ns.name, "a"),
        tiketi_operator::runtime::shutdown_signal(rx_a),
    );
    let run_a = tokio::spawn(run_a);
    wait_until("a to lead", Duration::from_secs(10), || async {
        Ok(a.is_leader())
    })
    .await
    .unwrap();
    let (b, run_b) = elect(
        client.clone(),
        fast(&ns.name, "b"),
        tiketi_operator::runtime::shutdown_signal(rx_b),
    );
    let run_b = tokio::spawn(run_b);
    wait_until("b to know it follows", Duration::from_secs(10), || async {
        Ok(b.known())
    })
    .await
    .unwrap();

    // Stall a's API server: its renewals hang. It must stop leading within the renew deadline
    // (2 s) of its last renewal, and b may lead only after the lease duration (3 s) — never both.
    let stalled_at = std::time::Instant::now();
    proxy.stall(true);
    let mut a_stepped_down = None;
    let mut b_led = None;
    while stalled_at.elapsed() < Duration::from_secs(10) {
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(
            !(la && lb),
            "two leaders at {:?} after the stall",
            stalled_at.elapsed()
        );
        if !la && a_stepped_down.is_none() {
            a_stepped_down = Some(stalled_at.elapsed());
        }
        if lb && b_led.is_none() {
            b_led = Some(stalled_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let down = a_stepped_down.expect("a never stepped down behind a stalled API server");
    let up = b_led.expect("b never took over");
    assert!(
        down <= Duration::from_millis(2_100),
        "a stepped down only after {down:?}"
    );
    assert!(up > down, "b led at {up:?}, before a stepped down at {down:?}");
    println!("stalled API server: leader stepped down after {down:?}, standby led after {up:?}");

    proxy.stall(false);
    stop_b.send_replace(true);
    run_b.await.unwrap();
    run_a.abort();
    ns.delete().await.unwrap();
}

/// Writes each operator sent (after every check of its own), as (when, method, path).
type WriteLog = std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String, String)>>>;

/// `client` that logs every write it sends and, once `hang_leases` is set, never answers a Lease
/// call (the election's renewals hang while every other call works: a throttled Lease, a
/// partition of one path).
fn recording(
    client: kube::Client,
    hang_leases: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (kube::Client, WriteLog) {
    use axum::http::Method;
    let log: WriteLog = Default::default();
    let writes = log.clone();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        let path = req.uri().path().to_owned();
        let lease = path.contains("/leases");
        let hang = lease && hang_leases.load(std::sync::atomic::Ordering::SeqCst);
        if !lease && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            writes
                .lock()
                .unwrap()
                .push((std::time::Instant::now(), req.method().to_string(), path));
        }
        async move {
            if hang {
                futures::future::pending::<()>().await;
            }
            client.send(req).await.map_err(tower::BoxError::from)
        }
    });
    (kube::Client::new(service, "default"), log)
}

/// Two whole operators on one Lease. The leader's Lease calls hang while all its other calls
/// work: it stops writing within the renew deadline, the standby writes only after it took the
/// Lease, and at no instant do both write (every write either sends is logged as it is sent).
#[tokio::test]
async fn a_leader_whose_lease_hangs_stops_writing_before_the_standby_starts() {
    use redis::AsyncCommands as _;
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-two-writers").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let eid = tiketi_e2e::unique("two-writers");
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    // On sale, a queue that grows all the time: the leader writes status (and scales) every tick.
    let tev = event("busy", Utc::now() - TimeDelta::minutes(1), |v| {
        v["spec"]["eventId"] = eid.clone().into();
        v["spec"]["queue"]["scaling"] = serde_json::json!({
            "pollInterval": "250ms",
            "scaleOut": {"steps": [{"signal": "queueDepth", "above": 50, "add": 1}], "cooldown": "1s"},
            "scaleIn": {"when": {"signal": "queueDepth", "below": 10}, "remove": 1,
                        "stabilizationWindow": "1m", "cooldown": "10m"}
        });
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    let url = tiketi_e2e::stack_env("REDIS_URL").unwrap();
    let queue_key = tiketi_shared::keys::EventKeys::new(&eid).queue();
    let feeder = {
        let mut conn = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let key = queue_key.clone();
        tokio::spawn(async move {
            for i in 0u64.. {
                let _: () = conn.zadd(&key, format!("u{i}"), i).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let hang_a = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client_a, writes_a) = recording(client.clone(), hang_a.clone());
    let (client_b, writes_b) = recording(client.clone(), Default::default());
    let start = |c: &kube::Client, id: &str| {
        Operator::start_opts(c, &ns.name, |o| {
            o.leader = Some(fast(&ns.name, id));
            o.autoscaler.status_interval = Duration::from_millis(200);
        })
    };
    let a = start(&client_a, "a");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = || async {
        Ok::<_, kube::Error>(
            leases
                .get_opt("tiketi-operator")
                .await?
                .and_then(|l| l.spec?.holder_identity),
        )
    };
    wait_until("a to lead", Duration::from_secs(10), || async {
        Ok(holder().await? == Some("a".into()))
    })
    .await
    .unwrap();
    let b = start(&client_b, "b");
    // a writes while it leads (the event is on sale and its queue grows).
    wait_until("a to write", Duration::from_secs(20), || async {
        Ok(writes_a.lock().unwrap().len() >= 5)
    })
    .await
    .unwrap();

    let hung_at = std::time::Instant::now();
    hang_a.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_until("b to take over and write", Duration::from_secs(20), || async {
        Ok(holder().await? == Some("b".into())
            && writes_b.lock().unwrap().iter().any(|(t, _, _)| *t > hung_at))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let last_a = writes_a.lock().unwrap().iter().map(|(t, _, _)| *t).max().unwrap();
    let first_b = writes_b
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _, _)| *t)
        .min()
        .expect("b never wrote");
    let a_after: Vec<_> = writes_a
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| *t > hung_at + Duration::from_millis(2_100))
        .map(|(t, m, p)| format!("{m} {p} at +{:?}", t.duration_since(hung_at)))
        .collect();
    assert!(a_after.is_empty(), "a wrote past its renew deadline: {a_after:?}");
    assert!(
        last_a < first_b,
        "both wrote: a's last write {:?} after the hang, b's first {:?}",
        last_a.saturating_duration_since(hung_at),
        first_b.saturating_duration_since(hung_at)
    );
    println!(
        "Lease calls of the leader hung: its last write {:?} after, the standby's first write {:?} after ({} and {} writes)",
        last_a.saturating_duration_since(hung_at),
        first_b.saturating_duration_since(hung_at),
        writes_a.lock().unwrap().len(),
        writes_b.lock().unwrap().len()
    );

    feeder.abort();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = conn.del(&queue_key).await.unwrap();
    hang_a.store(false, std::sync::atomic::Ordering::SeqCst);
    a.stop().await.unwrap();
    teardown(&client, ns, b).await.unwrap();
}
