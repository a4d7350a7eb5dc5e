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
