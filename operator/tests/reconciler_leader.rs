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
    assert!(
        api.get("quiet").await.unwrap().metadata.finalizers.is_none(),
        "a follower added its finalizer"
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
