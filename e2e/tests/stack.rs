//! Proves the local stack is real: an API server with a controller-manager, a scheduler and three
//! KWOK nodes over three zones; Redis; PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use tiketi_e2e::{TestNamespace, kube_client, stack_env, unique, wait_until};

const ZONES: [&str; 3] = ["ap-northeast-2a", "ap-northeast-2b", "ap-northeast-2c"];

#[tokio::test]
async fn three_ready_nodes_carry_the_zone_labels() {
    let client = kube_client().await.unwrap();
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .unwrap();
    let mut zones = BTreeSet::new();
    for node in &nodes {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(
            ready.as_deref(),
            Some("True"),
            "node {} is not Ready",
            node.name_any()
        );
        zones.insert(
            node.labels()
                .get("topology.kubernetes.io/zone")
                .cloned()
                .unwrap_or_default(),
        );
    }
    assert_eq!(nodes.items.len(), 3);
    assert_eq!(zones, ZONES.iter().map(|z| z.to_string()).collect());
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "app", "image": "tiketi.gg/never-pulled:1"}],
                    "topologySpreadConstraints": [{
                        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchLabels": {"app": name}}
                    }]
                }
            }
        }
    }))
    .unwrap()
}

async fn wait_ready_replicas(api: &Api<Deployment>, name: &str, want: i32) {
    wait_until(
        &format!("{name} readyReplicas == {want}"),
        Duration::from_secs(60),
        || async {
            let d = api.get(name).await?;
            Ok(d.status.and_then(|s| s.ready_replicas).unwrap_or(0) == want)
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn deployments_become_ready_scale_and_spread_over_zones() {
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "stack-deploy").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(&PostParams::default(), &deployment("web", 3))
        .await
        .unwrap();
    wait_ready_replicas(&api, "web", 3).await;

    let scale = serde_json::json!({"spec": {"replicas": 5}});
    api.patch_scale("web", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .unwrap();
    wait_ready_replicas(&api, "web", 5).await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let listed = pods.list(&ListParams::default().labels("app=web")).await.unwrap();
    let nodes: BTreeSet<_> = listed
        .iter()
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let running = listed
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    assert_eq!(running, 5);
    assert!(
        nodes.len() > 1,
        "pods landed on {nodes:?}; the spread constraint should use several zones"
    );
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn server_side_apply_round_trips_a_configmap() {
    let client = kube_client().await.unwrap();
    let ns = TestNamespace::create(&client, "stack-ssa").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"},
        "data": {"event.json": "{\"eventId\":\"x\"}"}
    });
    let pp = PatchParams::apply("tiketi-stack-test").force();
    api.patch("settings", &pp, &Patch::Apply(&cm)).await.unwrap();
    let got = api.get("settings").await.unwrap();
    assert_eq!(got.data.unwrap()["event.json"], "{\"eventId\":\"x\"}");
    let managers: Vec<_> = got
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"tiketi-stack-test".to_string()),
        "{managers:?}"
    );
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_crd_applied_from_yaml_becomes_established() {
    let client = kube_client().await.unwrap();
    let group = format!("{}.stack.tiketi.gg", unique("g"));
    let yaml = format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{size: {{type: integer, minimum: 1}}}}}}
"#
    );
    let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let name = crd.name_any();
    api.patch(
        &name,
        &PatchParams::apply("tiketi-stack-test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait_until("the CRD to be Established", Duration::from_secs(30), || async {
        let c = api.get(&name).await?;
        Ok(c.status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await
    .unwrap();
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn redis_answers_ping_and_sorted_sets() {
    let url = stack_env("REDIS_URL").unwrap();
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    let key = format!("tiketi-stack-test:{}", unique("z"));
    let _: () = redis::pipe()
        .zadd(&key, "b", 2)
        .zadd(&key, "a", 1)
        .zadd(&key, "c", 3)
        .ignore()
        .query_async(&mut con)
        .await
        .unwrap();
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(members, ["a", "b", "c"]);
    let card: i64 = redis::cmd("ZCARD").arg(&key).query_async(&mut con).await.unwrap();
    assert_eq!(card, 3);
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut con).await.unwrap();
}

#[tokio::test]
async fn postgres_runs_a_transaction() {
    let url = stack_env("DATABASE_URL").unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let table = unique("stack_tx").replace('-', "_");
    sqlx::query(&format!("CREATE TABLE {table} (id int primary key)"))
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (1), (2)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (3)"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let ids: Vec<i32> = sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        ids,
        [3],
        "the rolled-back rows must be gone and the committed one kept"
    );
    let dup = sqlx::query(&format!("INSERT INTO {table} VALUES (3)"))
        .execute(&pool)
        .await;
    assert!(dup.is_err(), "the primary key must refuse a duplicate");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}
