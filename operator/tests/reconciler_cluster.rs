//! The reconciler against the real local API server (`e2e/stack up`; KUBECONFIG from the
//! environment). Each test creates its own namespace, runs the operator in-process scoped to it,
//! and waits on conditions with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod reconciler_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Api, ResourceExt};
use reconciler_support::*;
use tiketi_e2e::{TestNamespace, kube_client, wait_until};
use tiketi_operator::crd::{Phase, TicketingEvent};
use tiketi_operator::status::{reasons, types};

fn label(name: &str) -> ListParams {
    ListParams::default().labels(&format!("tiketi.gg/event={name}"))
}

#[tokio::test]
async fn children_are_owned_secured_ready_and_cleaned_up() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-children").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let tev = event("concert", Utc::now() + TimeDelta::days(30), |v| {
        v["spec"]["queue"]["minReplicas"] = 2.into();
        v["spec"]["reservation"]["minReplicas"] = 2.into();
        // The finalizer an older operator put on its events: this one removes it.
        v["metadata"]["finalizers"] = serde_json::json!([tiketi_operator::reconciler::LEGACY_FINALIZER]);
    });
    let created = api.create(&PostParams::default(), &tev).await.unwrap();
    let uid = created.uid().unwrap();

    let tev = wait_tev(
        &api,
        "concert",
        "Ready with 2/2 pods each",
        Duration::from_secs(45),
        |t| {
            condition_is(t, types::READY, "True")
                && t.status
                    .as_ref()
                    .and_then(|s| s.queue.as_ref())
                    .and_then(|q| q.pods.as_deref())
                    == Some("2/2")
        },
    )
    .await
    .unwrap();
    let status = tev.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Scheduled));
    assert_eq!(status.observed_generation, tev.metadata.generation);
    assert_eq!(status.reservation.as_ref().unwrap().pods.as_deref(), Some("2/2"));
    assert!(status.next_transition_at.is_some());
    assert!(condition_is(&tev, types::INVALID_SPEC, "False"));
    assert!(
        tev.finalizers().is_empty(),
        "the legacy finalizer was kept: {:?}",
        tev.finalizers()
    );

    // Every child: owned by the event (controller reference), labelled.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let owned = |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
        refs.iter()
            .any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "TicketingEvent")
    };
    let ds = deployments.list(&label("concert")).await.unwrap().items;
    assert_eq!(
        ds.iter().map(|d| d.name_any()).collect::<BTreeSet<_>>(),
        ["concert-queue", "concert-reservation"].map(String::from).into()
    );
    for d in &ds {
        assert!(owned(d.owner_references()), "{} not owned", d.name_any());
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (
                sc.run_as_non_root,
                sc.read_only_root_filesystem,
                sc.allow_privilege_escalation
            ),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert!(
            c.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .sleep
                .is_some()
        );
        assert!(
            pod.topology_spread_constraints
                .as_ref()
                .unwrap()
                .iter()
                .any(|t| t.topology_key == "topology.kubernetes.io/zone")
        );
        let env = c.env.as_ref().unwrap();
        let redis = env.iter().find(|e| e.name == "TIKETI_REDIS_URL").unwrap();
        assert_eq!(
            redis
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "tiketi-redis"
        );
        // spec.replicas belongs to the scaler's field manager, not the reconciler's.
        let mf = d.metadata.managed_fields.as_ref().unwrap();
        let owns_replicas = |m: &str| {
            mf.iter().any(|f| {
                f.manager.as_deref() == Some(m)
                    && f.fields_v1
                        .as_ref()
                        .is_some_and(|v| v.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
            })
        };
        assert!(
            owns_replicas("tiketi-scaler"),
            "scaler owns spec.replicas: {mf:?}"
        );
        assert!(
            !owns_replicas("tiketi-operator"),
            "the reconciler gave spec.replicas up"
        );
    }
    for s in services.list(&label("concert")).await.unwrap().items {
        assert!(owned(s.owner_references()));
    }
    let pdb_list = pdbs.list(&label("concert")).await.unwrap().items;
    assert_eq!(pdb_list.len(), 2);
    assert!(pdb_list.iter().all(|p| owned(p.owner_references())));
    let cm = cms.get("concert-config").await.unwrap();
    assert!(owned(cm.owner_references()));
    let cfg = tiketi_shared::config::parse_str(&cm.data.unwrap()["event.json"])
        .unwrap()
        .remove(0);
    assert_eq!(cfg.event_id, "concert");
    assert_eq!(cfg.inventory.total(), 200);

    // Pods Ready on the KWOK nodes, spread over zones.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let list = pods
        .list(&ListParams::default().labels("tiketi.gg/event=concert,tiketi.gg/component=queue"))
        .await
        .unwrap();
    let ready: Vec<_> = list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect();
    assert_eq!(ready.len(), 2, "two Ready queue pods");
    assert!(ready.iter().all(|p| {
        p.spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref()
            .is_some_and(|n| n.starts_with("kwok-node"))
    }));

    // kubectl get tev shows the columns.
    let out = tokio::process::Command::new("kubectl")
        .args(["get", "tev", "-n", &ns.name])
        .output()
        .await
        .expect("kubectl on PATH (e2e/stack env)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PHASE") && text.contains("QUEUE-PODS") && text.contains("RESERVATION-PODS"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("concert") && l.contains("Scheduled") && l.contains("2/2")),
        "{text}"
    );

    // A `kubectl scale` is reported and undone, not fought silently.
    deployments
        .patch_scale(
            "concert-queue",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    wait_until(
        "the operator to restore 2 replicas",
        Duration::from_secs(90),
        || async {
            let d = deployments.get("concert-queue").await?;
            let evs = events_of(&client, &ns.name, "concert").await?;
            Ok(replicas(&d) == 2
                && evs
                    .iter()
                    .any(|(t, r, _)| t == "Warning" && r == reasons::REPLICAS_OVERRIDDEN))
        },
    )
    .await
    .unwrap();

    // A deleted child comes back.
    services
        .delete("concert-reservation", &DeleteParams::default())
        .await
        .unwrap();
    wait_until("the Service to be recreated", Duration::from_secs(20), || async {
        Ok(services.get_opt("concert-reservation").await?.is_some())
    })
    .await
    .unwrap();
    event_seen(&client, &ns.name, "concert", |(_, r, _)| r == reasons::CREATED).await;
    event_seen(&client, &ns.name, "concert", |(_, r, n)| {
        r == reasons::PHASE_CHANGED && n.contains("Scheduled")
    })
    .await;

    // Deletion removes every child, also with the operator scaled to zero: no finalizer waits
    // for it, the garbage collector follows the owner references. The collector is the
    // controller-manager's, shared with every other test's namespace teardown, hence the margin.
    op.stop().await.unwrap();
    api.delete("concert", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the event and all its children to be gone",
        Duration::from_secs(90),
        || async {
            let lp = label("concert");
            Ok(api.get_opt("concert").await?.is_none()
                && deployments.list(&lp).await?.items.is_empty()
                && services.list(&lp).await?.items.is_empty()
                && cms.list(&lp).await?.items.is_empty()
                && pdbs.list(&lp).await?.items.is_empty())
        },
    )
    .await
    .unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn prewarm_ramps_in_steps_and_is_ready_before_on_sale() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-prewarm").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let on_sale = Utc::now() + TimeDelta::seconds(40);
    let tev = event("flash", on_sale, |v| {
        v["spec"]["saleEndsAt"] = serde_json::json!(on_sale + TimeDelta::hours(1));
        v["spec"]["prewarm"] = serde_json::json!({
            "leadTime": "30s", "rampSteps": 3, "holdFor": "10m",
            "queue": {"replicas": 4}, "reservation": {"replicas": 7}
        });
    });
    api.create(&PostParams::default(), &tev).await.unwrap();

    // Sample the reservation Deployment until the sale opens (plus a little).
    let mut seen: Vec<(i32, chrono::DateTime<Utc>)> = Vec::new();
    let mut phases: Vec<Phase> = Vec::new();
    let mut ready_at_target_before_sale = false;
    let deadline = Instant::now() + Duration::from_secs(55);
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out; replicas seen {seen:?}, phases {phases:?}"
        );
        if let Some(d) = deployments.get_opt("flash-reservation").await.unwrap() {
            let r = replicas(&d);
            if seen.last().map(|x| x.0) != Some(r) {
                seen.push((r, Utc::now()));
            }
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            if r == 7 && ready == 7 && Utc::now() < on_sale {
                ready_at_target_before_sale = true;
            }
        }
        let t = api.get("flash").await.unwrap();
        if let Some(p) = t.status.as_ref().and_then(|s| s.phase)
            && phases.last() != Some(&p)
        {
            phases.push(p);
        }
        if phases.last() == Some(&Phase::OnSale) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let values: Vec<i32> = seen.iter().map(|x| x.0).collect();
    assert_eq!(
        values,
        vec![1, 3, 5, 7],
        "min, then three ramp steps (1 + ⌈6·k/3⌉)"
    );
    assert_eq!(phases, vec![Phase::Scheduled, Phase::PreWarming, Phase::OnSale]);
    assert!(
        ready_at_target_before_sale,
        "7 Ready reservation pods before onSaleAt"
    );
    // Step k starts at onSaleAt - 30s + (k-1)·10s; allow the poll interval and API latency.
    for (k, (_, at)) in seen.iter().skip(1).enumerate() {
        let start = on_sale - TimeDelta::seconds(30) + TimeDelta::seconds(10 * k as i64);
        let late = (*at - start).num_milliseconds();
        println!(
            "ramp step {} observed {late} ms after its boundary (200 ms sampling)",
            k + 1
        );
        assert!(
            (0..3000).contains(&late),
            "step {} applied {late} ms after its boundary",
            k + 1
        );
    }
    let q = deployments.get("flash-queue").await.unwrap();
    assert_eq!(replicas(&q), 4);
    let t = wait_tev(
        &api,
        "flash",
        "pods 7/7 in status",
        Duration::from_secs(10),
        |t| {
            t.status
                .as_ref()
                .and_then(|s| s.reservation.as_ref())
                .and_then(|r| r.pods.as_deref())
                == Some("7/7")
        },
    )
    .await
    .unwrap();
    let s = t.status.unwrap();
    assert_eq!(s.reservation.as_ref().unwrap().desired_replicas, Some(7));
    // Pre-warm steps are recorded but start no cooldown: the first surge step may follow at once.
    assert!(s.reservation.as_ref().unwrap().last_scale_time.is_some());
    assert_eq!(s.reservation.as_ref().unwrap().last_scale_out_time, None);
    let decisions = s.recent_decisions.unwrap();
    assert!(decisions.iter().any(|d| d.component == "reservation"
        && d.from == 5
        && d.to == 7
        && d.reason.contains("pre-warm step 3/3")));
    event_seen(&client, &ns.name, "flash", |(_, r, n)| {
        r == reasons::SCALED_OUT && n.starts_with("ScaledOut reservation 5→7")
    })
    .await;
    event_seen(&client, &ns.name, "flash", |(_, r, n)| {
        r == reasons::PHASE_CHANGED && n.starts_with("PreWarming → OnSale")
    })
    .await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn edit_reschedules_and_the_end_pins_min_replicas() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-edit").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let far = Utc::now() + TimeDelta::hours(2);
    let tev = event("moved", far, |v| {
        v["spec"]["windDown"] = "3s".into();
        v["spec"]["prewarm"] = serde_json::json!({
            "leadTime": "1h", "rampSteps": 2, "holdFor": "2s", "queue": {"replicas": 3}, "reservation": {"replicas": 3}
        });
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    let t = wait_tev(&api, "moved", "Scheduled", Duration::from_secs(20), |t| {
        t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Scheduled)
    })
    .await
    .unwrap();
    let next = t.status.unwrap().next_transition_at.unwrap();
    assert_eq!(next, far - TimeDelta::hours(1), "wakes at the start of pre-warm");

    // Move the sale to now: pre-warm is due at once, then the sale, its end and the wind-down.
    let now = Utc::now();
    let on_sale = now + TimeDelta::seconds(2);
    let patch =
        serde_json::json!({"spec": {"onSaleAt": on_sale, "saleEndsAt": on_sale + TimeDelta::seconds(4)}});
    api.patch("moved", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    wait_tev(
        &api,
        "moved",
        "PreWarming at the full target after the edit",
        Duration::from_secs(10),
        |t| {
            t.status.as_ref().and_then(|s| s.phase) == Some(Phase::PreWarming)
                && t.status
                    .as_ref()
                    .and_then(|s| s.queue.as_ref())
                    .and_then(|q| q.desired_replicas)
                    == Some(3)
        },
    )
    .await
    .unwrap();
    wait_tev(
        &api,
        "moved",
        "Closing after saleEndsAt",
        Duration::from_secs(15),
        |t| t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Closing),
    )
    .await
    .unwrap();
    let t = wait_tev(&api, "moved", "Closed", Duration::from_secs(15), |t| {
        t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Closed)
    })
    .await
    .unwrap();
    let s = t.status.unwrap();
    assert_eq!(s.next_transition_at, None, "nothing left to wake up for");
    wait_until("Closed pins min replicas", Duration::from_secs(10), || async {
        Ok(replicas(&deployments.get("moved-queue").await?) == 1
            && replicas(&deployments.get("moved-reservation").await?) == 1)
    })
    .await
    .unwrap();
    event_seen(&client, &ns.name, "moved", |(_, r, n)| {
        r == reasons::SCALED_IN && n.starts_with("ScaledIn queue 3→1")
    })
    .await;
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn missing_secret_is_invalid_spec_and_deploys_nothing_until_it_exists() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-secret").await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &event("nosecret", Utc::now() + TimeDelta::days(1), |_| {}),
    )
    .await
    .unwrap();
    let t = wait_tev(&api, "nosecret", "InvalidSpec", Duration::from_secs(20), |t| {
        condition_is(t, types::INVALID_SPEC, "True")
    })
    .await
    .unwrap();
    let ready = tiketi_operator::status::find(&t, types::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", reasons::INVALID_SPEC)
    );
    let invalid = tiketi_operator::status::find(&t, types::INVALID_SPEC).unwrap();
    assert_eq!(invalid.reason, reasons::MISSING_SECRET);
    assert!(
        invalid.message.contains(r#"Secret "tiketi-auth" does not exist"#),
        "{}",
        invalid.message
    );
    assert_eq!(t.status.as_ref().unwrap().phase, Some(Phase::Failed));
    event_seen(&client, &ns.name, "nosecret", |(ty, r, _)| {
        ty == "Warning" && r == reasons::INVALID_SPEC
    })
    .await;
    // Nothing was deployed, not even the ConfigMap.
    let lp = label("nosecret");
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The Secrets appear: the operator notices on its retry and deploys.
    create_secrets(&client, &ns.name).await.unwrap();
    wait_tev(
        &api,
        "nosecret",
        "a valid, deployed event",
        Duration::from_secs(40),
        |t| {
            condition_is(t, types::INVALID_SPEC, "False")
                && t.status.as_ref().and_then(|s| s.phase) == Some(Phase::Scheduled)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        Api::<Deployment>::namespaced(client.clone(), &ns.name)
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn invalid_manifests_are_refused_or_marked_invalid() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-invalid").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    // With its probe server, so readiness and the panic counter are read as the kubelet would.
    let port = tiketi_e2e::free_port().unwrap();
    let op = Operator::start_opts(&client, &ns.name, |o| {
        o.metrics_addr = Some(([127, 0, 0, 1], port).into());
    });
    let ar = ApiResource::erase::<TicketingEvent>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/fixtures/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus holds at least 20 manifests");
    let (mut refused, mut marked) = (0, 0);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let obj: DynamicObject = serde_yaml::from_str(&text).unwrap();
        let name = obj.name_any();
        if let Some(fragment) = first.strip_prefix("# expect: ") {
            let err = dynamic
                .create(&PostParams::default(), &obj)
                .await
                .expect_err(&format!("{} must be refused", path.display()));
            let msg = err.to_string();
            assert!(
                msg.contains(fragment),
                "{}: expected {fragment:?} in {msg}",
                path.display()
            );
            refused += 1;
        } else if let Some(fragment) = first.strip_prefix("# expect-invalid-spec: ") {
            dynamic.create(&PostParams::default(), &obj).await.unwrap();
            let t = wait_tev(
                &api,
                &name,
                &format!("{name} InvalidSpec"),
                Duration::from_secs(20),
                |t| condition_is(t, types::INVALID_SPEC, "True"),
            )
            .await
            .unwrap();
            let msg = &tiketi_operator::status::find(&t, types::INVALID_SPEC)
                .unwrap()
                .message;
            assert!(
                msg.contains(fragment),
                "{}: expected {fragment:?} in {msg}",
                path.display()
            );
            // Nothing deployed half-way: no child of any kind.
            let lp = label(&name);
            let children = [
                Api::<Deployment>::namespaced(client.clone(), &ns.name)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .len(),
                Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .len(),
                Api::<Service>::namespaced(client.clone(), &ns.name)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .len(),
                Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns.name)
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .len(),
            ];
            assert_eq!(
                children,
                [0; 4],
                "{}: children were created (Deployments, ConfigMaps, Services, PDBs)",
                path.display()
            );
            marked += 1;
        } else {
            panic!("{} has no expectation line", path.display());
        }
    }
    assert!(refused >= 30 && marked >= 5, "refused {refused}, marked {marked}");
    // No input of the corpus may take the operator down (it used to panic on huge durations),
    // not even one of its tasks: still running, Ready, no panic counted, a tick still ticking.
    assert!(
        op.is_running(),
        "the operator stopped while reconciling the corpus"
    );
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    let code = ready.status();
    assert!(
        code.is_success(),
        "/readyz {code}: {}",
        ready.text().await.unwrap_or_default()
    );
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let panics: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("tiketi_operator_panics_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(panics.is_empty(), "panics counted: {panics:?}");
    println!(
        "corpus: {refused} refused by the API server, {marked} marked InvalidSpec; operator Ready, 0 panics"
    );
    teardown(&client, ns, op).await.unwrap();
}

#[tokio::test]
async fn restarted_operator_picks_up_without_a_replica_change() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-restart").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    // On sale since a minute, pre-warm floor still held: 3 reservation replicas.
    let tev = event("live", Utc::now() - TimeDelta::minutes(1), |v| {
        v["spec"]["prewarm"] = serde_json::json!({
            "leadTime": "10m", "rampSteps": 2, "holdFor": "1h", "queue": {"replicas": 2}, "reservation": {"replicas": 3}
        });
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    let first = Operator::start(&client, &ns.name);
    wait_tev(&api, "live", "Ready on sale", Duration::from_secs(40), |t| {
        condition_is(t, types::READY, "True")
            && t.status.as_ref().and_then(|s| s.phase) == Some(Phase::OnSale)
    })
    .await
    .unwrap();
    first.stop().await.unwrap();
    let before = deployments.get("live-reservation").await.unwrap();
    assert_eq!(replicas(&before), 3);
    let scaled_before = events_of(&client, &ns.name, "live")
        .await
        .unwrap()
        .iter()
        .filter(|(_, r, _)| r.starts_with("Scaled"))
        .count();

    let second = Operator::start(&client, &ns.name);
    // Prove the new process reconciled: it restores a deleted child.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    cms.delete("live-config", &DeleteParams::default()).await.unwrap();
    wait_until(
        "the new operator to recreate the ConfigMap",
        Duration::from_secs(30),
        || async { Ok(cms.get_opt("live-config").await?.is_some()) },
    )
    .await
    .unwrap();
    let after = deployments.get("live-reservation").await.unwrap();
    assert_eq!(replicas(&after), 3);
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "the Deployment spec did not change"
    );
    let scaled_after = events_of(&client, &ns.name, "live")
        .await
        .unwrap()
        .iter()
        .filter(|(_, r, _)| r.starts_with("Scaled"))
        .count();
    assert_eq!(scaled_after, scaled_before, "no scaling after restart");
    teardown(&client, ns, second).await.unwrap();
}

#[tokio::test]
async fn event_id_cannot_change_once_created() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-eventid").await.unwrap();
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let tev = event("fixed", Utc::now() + TimeDelta::days(30), |v| {
        v["spec"]["eventId"] = "fixed-2030".into();
    });
    api.create(&PostParams::default(), &tev).await.unwrap();
    for patch in [
        serde_json::json!({"spec": {"eventId": "other-2030"}}),
        serde_json::json!({"spec": {"eventId": null}}),
    ] {
        let err = api
            .patch("fixed", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err("eventId changed");
        assert!(err.to_string().contains("spec.eventId is immutable"), "{err}");
    }
    // Other fields stay editable.
    let ok = serde_json::json!({"spec": {"windDown": "45m"}});
    api.patch("fixed", &PatchParams::default(), &Patch::Merge(&ok))
        .await
        .unwrap();
    ns.delete().await.unwrap();
}

/// Starts the operator in `ns`, applies the event `name` and returns the operator with the
/// InvalidSpec message the event gets.
async fn refused(client: &kube::Client, ns: &str, name: &str) -> (Operator, String) {
    let op = Operator::start(client, ns);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &event(name, Utc::now() + TimeDelta::days(30), |_| {}),
    )
    .await
    .unwrap();
    let t = wait_tev(&api, name, "InvalidSpec=True", Duration::from_secs(20), |t| {
        condition_is(t, types::INVALID_SPEC, "True")
    })
    .await
    .unwrap();
    let msg = tiketi_operator::status::find(&t, types::INVALID_SPEC)
        .unwrap()
        .message
        .clone();
    (op, msg)
}

#[tokio::test]
async fn a_deployment_it_does_not_own_is_never_adopted() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-adopt").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    // Someone else's Deployment with the name the event's queue would get.
    let theirs: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "taken-queue", "labels": {"app": "theirs"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}},
                              "spec": {"containers": [{"name": "c", "image": "theirs:1"}]}}}
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &theirs).await.unwrap();
    let (op, msg) = refused(&client, &ns.name, "taken").await;
    assert!(
        msg.contains("\"taken-queue\" already exists and is not owned"),
        "{msg}"
    );
    let d = deployments.get("taken-queue").await.unwrap();
    assert!(
        d.metadata.owner_references.unwrap_or_default().is_empty(),
        "adopted"
    );
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("theirs:1"),
        "overwritten"
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .get_opt(&tiketi_operator::children::config_map_name("taken"))
            .await
            .unwrap()
            .is_none()
    );
    teardown(&client, ns, op).await.unwrap();
}

/// The same for the other children: someone else's Service with the name of the event's
/// reservation Service is refused, left untouched, and nothing is deployed.
#[tokio::test]
async fn a_service_it_does_not_own_is_never_adopted() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-adopt-svc").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let theirs: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "held-reservation", "labels": {"app": "theirs"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    services.create(&PostParams::default(), &theirs).await.unwrap();
    let (op, msg) = refused(&client, &ns.name, "held").await;
    assert!(
        msg.contains("Service \"held-reservation\" already exists and is not owned"),
        "{msg}"
    );
    let svc = services.get("held-reservation").await.unwrap();
    assert!(
        svc.metadata.owner_references.unwrap_or_default().is_empty(),
        "adopted"
    );
    assert_eq!(
        svc.spec.unwrap().selector.unwrap().get("app").map(String::as_str),
        Some("theirs"),
        "overwritten"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.list(&label("held")).await.unwrap().items.is_empty(),
        "deployed half-way"
    );
    teardown(&client, ns, op).await.unwrap();
}

/// With `--secret-namespaces` (chart value `secretNamespaces`) the operator reads Secrets only
/// there: an event elsewhere is InvalidSpec naming the rule, its Secrets are never read, and
/// nothing is deployed.
#[tokio::test]
async fn secrets_outside_the_allowed_namespaces_are_never_read() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-secret-scope").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let op = Operator::start_opts(&client, &ns.name, |o| {
        o.secret_namespaces = vec!["tiketi-secrets-elsewhere".into()];
    });
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &event("scoped", Utc::now() + TimeDelta::days(30), |_| {}),
    )
    .await
    .unwrap();
    let t = wait_tev(&api, "scoped", "InvalidSpec=True", Duration::from_secs(20), |t| {
        condition_is(t, types::INVALID_SPEC, "True")
    })
    .await
    .unwrap();
    let invalid = tiketi_operator::status::find(&t, types::INVALID_SPEC).unwrap();
    assert_eq!(invalid.reason, reasons::INVALID_SPEC);
    assert!(
        invalid
            .message
            .contains("only in namespaces tiketi-secrets-elsewhere")
            && invalid.message.contains("--secret-namespaces")
            && invalid.message.contains(&ns.name),
        "{}",
        invalid.message
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments.list(&label("scoped")).await.unwrap().items.is_empty(),
        "deployed without its Secrets"
    );
    teardown(&client, ns, op).await.unwrap();
}

/// A new leader (here: a restarted operator) finds `spec.replicas` written by this operator's
/// scaler while `status.desiredReplicas` is stale (the previous leader's status write never
/// landed). It adopts them: no revert to the stale value, no `ReplicasOverridden` (a write by
/// another manager is still reported and undone: `children_are_owned_secured_ready_and_cleaned_up`).
#[tokio::test]
async fn a_new_leader_adopts_the_replicas_the_scaler_wrote() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-adopt-replicas")
        .await
        .unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let op = Operator::start(&client, &ns.name);
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &event("adopt", Utc::now() + TimeDelta::days(30), |_| {}),
    )
    .await
    .unwrap();
    wait_tev(
        &api,
        "adopt",
        "queue desiredReplicas 1",
        Duration::from_secs(45),
        |t| {
            t.status
                .as_ref()
                .and_then(|s| s.queue.as_ref())
                .and_then(|q| q.desired_replicas)
                == Some(1)
        },
    )
    .await
    .unwrap();
    op.stop().await.unwrap();

    // What a leader that died between its Deployment write and its status write leaves behind.
    deployments
        .patch(
            "adopt-queue",
            &PatchParams::apply(tiketi_operator::field_managers::SCALER).force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "adopt-queue"}, "spec": {"replicas": 3}
            })),
        )
        .await
        .unwrap();
    let op = Operator::start(&client, &ns.name);
    // The restarted operator reconciles (Ready again) and keeps 3 for a while.
    wait_tev(
        &api,
        "adopt",
        "Ready after the restart",
        Duration::from_secs(45),
        |t| condition_is(t, types::READY, "True"),
    )
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let d = deployments.get("adopt-queue").await.unwrap();
        assert_eq!(replicas(&d), 3, "the scaler's own replicas were reverted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let evs = events_of(&client, &ns.name, "adopt").await.unwrap();
    assert!(
        !evs.iter().any(|(_, r, _)| r == reasons::REPLICAS_OVERRIDDEN),
        "adoption reported as an override: {evs:?}"
    );
    teardown(&client, ns, op).await.unwrap();
}

/// The value of the sample `name` (no labels) in an exposition.
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A reconcile of an event that did not change reads its two Deployments and writes nothing:
/// the children are compared with the operator's metadata caches (applied-hash annotation),
/// orphans are found there too, replicas and status only when they differ.
#[tokio::test]
async fn an_unchanged_event_costs_at_most_three_calls_and_no_write_per_reconcile_or_tick() {
    let client = kube_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "tev-steady").await.unwrap();
    create_secrets(&client, &ns.name).await.unwrap();
    let (recording, log) = recording_client(client.clone());
    let port = tiketi_e2e::free_port().unwrap();
    let op = Operator::start_opts(&recording, &ns.name, |o| {
        o.metrics_addr = Some(([127, 0, 0, 1], port).into());
    });
    let api: Api<TicketingEvent> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &event("steady", Utc::now() + TimeDelta::days(30), |_| {}),
    )
    .await
    .unwrap();
    wait_tev(&api, "steady", "Ready=True", Duration::from_secs(60), |t| {
        condition_is(t, types::READY, "True") && condition_is(t, types::PROGRESSING, "False")
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || async { reqwest::get(&metrics_url).await.unwrap().text().await.unwrap() };
    let first = scrape().await;
    let before = metric(&first, "tiketi_operator_reconciliations_total");
    let ticks_before = metric(&first, "tiketi_operator_autoscaler_tick_duration_seconds_count");
    log.lock().unwrap().clear();
    // Each touch (a label the reconciler watches) triggers a reconcile of the unchanged event.
    for i in 0..5 {
        let patch = serde_json::json!({"metadata": {"labels": {"example.com/touch": i.to_string()}}});
        api.patch("steady", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let last = scrape().await;
    let reconciles = metric(&last, "tiketi_operator_reconciliations_total") - before;
    // The autoscaler ticked over the settled event all along (queue empty, nothing to change)
    // and wrote nothing either: no status heartbeat.
    let ticks = metric(&last, "tiketi_operator_autoscaler_tick_duration_seconds_count") - ticks_before;
    assert!(ticks >= 3.0, "{ticks} autoscaler ticks in 7.5 s");
    let calls = log.lock().unwrap().clone();
    let writes: Vec<&(String, String)> = calls.iter().filter(|(m, _)| m != "GET").collect();
    println!(
        "{reconciles} reconciles of an unchanged event: {} API calls ({:.1} per reconcile), {} writes",
        calls.len(),
        calls.len() as f64 / reconciles.max(1.0),
        writes.len()
    );
    assert!(reconciles >= 5.0, "{reconciles} reconciles for 5 touches");
    assert!(writes.is_empty(), "writes for an unchanged event: {writes:?}");
    assert!(
        calls.len() as f64 <= 3.0 * reconciles,
        "{} calls for {reconciles} reconciles: {calls:?}",
        calls.len()
    );
    // A replacement (a restart, or a new leader) finds the status it would write already there:
    // taking over a settled event costs no write either.
    op.stop().await.unwrap();
    let (recording, log) = recording_client(client.clone());
    let op = Operator::start_opts(&recording, &ns.name, |_| {});
    tokio::time::sleep(Duration::from_secs(6)).await;
    let writes: Vec<(String, String)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _)| m != "GET")
        .cloned()
        .collect();
    assert!(
        writes.is_empty(),
        "a new operator rewrote a settled event: {writes:?}"
    );
    teardown(&client, ns, op).await.unwrap();
}
