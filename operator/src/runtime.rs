//! Wires the operator together: leader election, the Controller with its watches, the autoscaler
//! loop over the Controller's cache, and the metrics/health server, all stopping on one shutdown
//! signal. `main` and the cluster tests call
//! [`run`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt as _;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::autoscale::{Autoscaler, AutoscalerOptions};
use crate::crd::TicketingEvent;
use crate::events::EventPublisher;
use crate::leader::{self, LeaderConfig, LeaderState};
use crate::metrics::Metrics;
use crate::reconciler::{self, Context};
use crate::server::{self, Readiness};

/// Label every child carries; the child watches select on it.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=tiketi-operator";

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch one namespace, or all when `None`.
    pub namespace: Option<String>,
    /// Read Secrets only in these namespaces; empty: wherever events are watched.
    pub secret_namespaces: Vec<String>,
    /// Serve /metrics, /healthz, /readyz here; `None` = no server (tests).
    pub metrics_addr: Option<SocketAddr>,
    /// Leader election; `None` = always leader (a single replica).
    pub leader: Option<LeaderConfig>,
    /// This replica's identity (Events' reportingInstance).
    pub identity: String,
    /// The autoscaler loop's settings.
    pub autoscaler: AutoscalerOptions,
}

/// A shutdown signal: resolves once `rx` turns true (or its sender is gone).
/// Drops from a cached TicketingEvent what no reader of the cache uses, or what repeats another
/// field.
pub fn trim_cached(tev: &mut TicketingEvent) {
    tev.managed_fields_mut().clear();
    if let Some(a) = tev.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    let generation = tev.metadata.generation;
    if let Some(s) = tev.status.as_mut() {
        s.recent_decisions = None;
        // The last good spec is a copy of the spec while the current generation is the good one.
        if s.last_good_generation.is_some() && s.last_good_generation == generation {
            s.last_good_spec = None;
        }
    }
}

/// Bound of every API call except the watches (a reconcile makes a few; the autoscaler bounds
/// one event's calls at 5 s, the Lease calls at what is left of the renew deadline).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call [`with_request_timeout`] cut short.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: no answer from the API server within {timeout:?}")]
pub struct CallTimeout {
    pub method: String,
    pub path: String,
    pub timeout: Duration,
}

/// A fixed metric label for a kube error that says what failed: the API server refused the
/// request (`api_refused`, 4xx), had a conflict (`conflict`), failed (`api_error`, 5xx), did not
/// answer in time (`api_timeout`), the write was not sent because this replica does not lead
/// (`not_leader`), or the connection failed (`kube`).
pub fn kube_error_label(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) if s.code == 409 => "conflict",
        kube::Error::Api(s) if (400..500).contains(&s.code) => "api_refused",
        kube::Error::Api(_) => "api_error",
        kube::Error::Service(b) if b.downcast_ref::<crate::leader::NotLeader>().is_some() => "not_leader",
        kube::Error::Service(b) if b.downcast_ref::<CallTimeout>().is_some() => "api_timeout",
        _ => "kube",
    }
}

/// `client` with every request bounded by `timeout`: a call until its whole response has arrived
/// (the body is read here, within the same bound), a watch until its headers arrive (the API
/// server sends them at once and the stream then runs on past the bound; the watcher's own
/// timeout covers an open stream). The watches' LIST pages are calls, so an API server that
/// accepts a list or a watch and never answers — or sends the headers of a list page and stalls
/// its body — fails it within `timeout` and the watcher retries, instead of waiting for ever.
pub fn with_request_timeout(client: Client, timeout: Duration) -> Client {
    use http_body_util::BodyExt;
    let default_ns = client.default_namespace().to_owned();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        async move {
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let watch = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
            let call = async {
                let res = client.send(req).await?;
                if watch {
                    return Ok(res);
                }
                let (parts, body) = res.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, kube::Error>(axum::http::Response::from_parts(parts, body.into()))
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(res) => res.map_err(tower::BoxError::from),
                Err(_) => Err(tower::BoxError::from(CallTimeout {
                    method: method.to_string(),
                    path,
                    timeout,
                })),
            }
        }
    });
    Client::new(service, default_ns)
}

/// `client` counting every request it sends in `api_requests_total{method}`.
pub fn counted(
    client: Client,
    requests: prometheus_client::metrics::family::Family<
        crate::metrics::ApiRequestLabels,
        prometheus_client::metrics::counter::Counter,
    >,
) -> Client {
    let default_ns = client.default_namespace().to_owned();
    let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
        let client = client.clone();
        requests
            .get_or_create(&crate::metrics::ApiRequestLabels::of(
                req.method(),
                req.uri().path(),
            ))
            .inc();
        async move { client.send(req).await.map_err(tower::BoxError::from) }
    });
    Client::new(service, default_ns)
}

/// Reconciles in flight at once (kube-runtime's default is unbounded).
pub const RECONCILE_CONCURRENCY: u16 = 8;
/// Trailing debounce of reconcile triggers per event.
pub const RECONCILE_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

pub async fn shutdown_signal(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A metadata-only watch of one kind of child, summarised into a [`reconciler::ChildIndex`]:
/// what the reconciler compares before applying and deletes orphans from, without a GET or LIST.
fn child_cache<K>(
    client: &Client,
    ns: Option<&str>,
    cfg: watcher::Config,
) -> (
    reconciler::ChildIndex,
    impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let index = reconciler::ChildIndex::default();
    let stream = watcher(api::<PartialObjectMeta<K>>(client, ns), cfg)
        .default_backoff()
        .inspect_ok({
            let index = index.clone();
            move |ev| index.apply(ev)
        })
        .touched_objects();
    (index, stream)
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until `shutdown` turns true.
pub async fn run(client: Client, opts: RunOptions, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let RunOptions {
        namespace,
        secret_namespaces,
        metrics_addr,
        leader: leader_cfg,
        identity,
        autoscaler,
    } = opts;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // Every task is supervised: a panic is logged, counted and fails /healthz and /readyz.
    let failed = crate::supervise::Failures::default();

    // The Lease is released only after the controller and the autoscaler have stopped (SIGTERM:
    // stop work first, then release), so a standby never writes while this replica still does.
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (leader_state, election) = match leader_cfg {
        Some(cfg) => {
            let release = async move {
                let _ = release_rx.await;
            };
            let (state, fut) = leader::elect(client.clone(), cfg, release);
            let task = crate::supervise::spawn("leader-election", fut, &failed, &metrics);
            (state, Some(task))
        }
        None => (LeaderState::always(), None),
    };
    {
        // Mirror leadership into the metric; on stepping down, drop the per-event gauges.
        let mut rx = leader_state.subscribe();
        let m = metrics.clone();
        let mirror = async move {
            let mut was = false;
            loop {
                let leads = *rx.borrow_and_update() == Some(true);
                m.leader.set(i64::from(leads));
                if was && !leads {
                    m.forget_event_gauges();
                }
                was = leads;
                if rx.changed().await.is_err() {
                    break;
                }
            }
        };
        crate::supervise::spawn("leader-metric", mirror, &failed, &metrics);
    }

    let ns = namespace.as_deref();
    // Every call is bounded (kube's client has no read timeout, and retries throttling for
    // minutes): a hung API server fails that call, not the loop waiting on it. And every write
    // is sent only while this replica leads at that instant (`guard_writes`). The watches' list
    // pages and watch requests are bounded until their headers arrive (`watches`).
    let calls = leader::guard_writes(
        counted(
            with_request_timeout(client.clone(), API_CALL_TIMEOUT),
            metrics.api_requests.clone(),
        ),
        leader_state.clone(),
    );
    let watches = with_request_timeout(client.clone(), API_CALL_TIMEOUT);
    // A Secret an event refers to that is deleted, created or changed reconciles that event at
    // once (a deleted Secret mid-sale shows as InvalidSpec=True with the last good spec kept; a
    // recreated one ends it). Metadata only: which Secrets exist and at which resourceVersion;
    // the data of the referenced ones is read once per version (`crate::secrets`).
    // One watch per namespace Secrets may be read in (`secret_namespaces`), else one over the
    // events' scope. Each has its own store: a watch's relist replaces its whole store.
    let scopes: Vec<Option<String>> = if secret_namespaces.is_empty() {
        vec![namespace.clone()]
    } else {
        secret_namespaces.iter().cloned().map(Some).collect()
    };
    let mut watched = Vec::new();
    let mut secret_streams = Vec::new();
    for scope in scopes {
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = watcher(
            api::<PartialObjectMeta<Secret>>(&watches, scope.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(crate::secrets::trim_meta)
        .reflect(writer)
        .inspect_ok({
            let synced = synced.clone();
            move |ev| {
                if matches!(ev, watcher::Event::InitDone) {
                    synced.store(true, Ordering::Release);
                }
            }
        })
        .touched_objects()
        .boxed();
        secret_streams.push(stream);
        watched.push(crate::secrets::Watched {
            namespace: scope,
            store,
            synced,
        });
    }
    let secrets_watch = futures::stream::select_all(secret_streams);
    let secrets = crate::secrets::Secrets::new(calls.clone(), watched).counting(metrics.secret_reads.clone());

    let events = EventPublisher::new(calls.clone(), "tiketi-operator", identity).counting(&metrics);
    // The children, metadata only: they trigger reconciles of their owner and are what a
    // reconcile compares its desired children with (no GET or LIST of them in steady state).
    let children = watcher::Config::default().labels(MANAGED_BY);
    let (config_maps, cm_stream) = child_cache::<ConfigMap>(&watches, ns, children.clone());
    let (services, svc_stream) = child_cache::<Service>(&watches, ns, children.clone());
    let (pdbs, pdb_stream) = child_cache::<PodDisruptionBudget>(&watches, ns, children.clone());
    let (deployments, deploy_stream) = child_cache::<Deployment>(&watches, ns, children);
    let ctx = Arc::new(Context::new(
        calls.clone(),
        events,
        metrics.clone(),
        leader_state.clone(),
        secrets,
        reconciler::ChildStores {
            config_maps,
            services,
            pdbs,
            deployments,
        },
    ));

    // Every time this replica becomes leader, reconcile everything.
    let mut became_leader = leader_state.subscribe();
    let leader_gained = async_stream_from_watch(&mut became_leader);
    // The autoscaler and the scaler write status every few seconds during a sale; only changes
    // the reconciler acts on may trigger it (see `reconcile_relevant`). One store serves the
    // Controller and the autoscaler loop.
    let (store, writer) = reflector::store();
    let changes = crate::autoscale::StoreChanges::default();
    let events_stream = watcher(
        api::<TicketingEvent>(&watches, ns),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    // The cache keeps what the operator reads: not managedFields (a field list per writer, grown
    // by every status writer), not kubectl's last-applied copy of the whole object, not
    // status.recentDecisions (the scaler composes it from a fresh GET of the status).
    .modify(trim_cached)
    .reflect(writer)
    // A deleted event's metric series go with it (its children go with the garbage collector).
    .inspect_ok({
        let metrics = metrics.clone();
        let changes = changes.clone();
        move |ev| {
            // After `reflect`: the store holds the change when the autoscaler sees the count.
            changes.bump();
            if let watcher::Event::Delete(t) = ev {
                metrics.forget_event(&t.namespace().unwrap_or_default(), &t.name_any());
            }
        }
    })
    .applied_objects()
    .predicate_filter(reconcile_relevant, PredicateConfig::default());
    let secret_refs = store.clone();
    // Bounded concurrency: every reconcile in flight holds its own API connection (TLS state
    // and buffers) in the client's pool, so an unbounded fan-out over N events costs memory in
    // proportion to N. A short trailing debounce folds the burst of child updates a scale-out
    // produces (pods turning Ready) into one reconcile; the autoscaler does not wait for it.
    let controller = Controller::for_stream(events_stream, store)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(RECONCILE_CONCURRENCY)
                .debounce(RECONCILE_DEBOUNCE),
        )
        .watches_stream(secrets_watch, move |s: PartialObjectMeta<Secret>| {
            let (sns, sname) = (s.namespace(), s.name_any());
            secret_refs
                .state()
                .into_iter()
                .filter(|t| t.namespace() == sns && reconciler::required_secrets(t).contains_key(&sname))
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        })
        .owns_stream(deploy_stream)
        .owns_stream(svc_stream)
        .owns_stream(cm_stream)
        .owns_stream(pdb_stream)
        .reconcile_all_on(leader_gained)
        .graceful_shutdown_on(shutdown_signal(shutdown.clone()));

    let synced = Arc::new(AtomicBool::new(false));
    {
        let store = controller.store();
        let synced = synced.clone();
        let sync = async move {
            // Re-poll with a timeout: the store's readiness is a oneshot channel that wakes only
            // its latest poller, and the Controller's applier polls it too, so a single await here
            // could sleep forever even after the initial list arrived.
            loop {
                match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
                    Ok(Ok(())) => {
                        synced.store(true, Ordering::Release);
                        tracing::info!("initial TicketingEvent watch synced");
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
        };
        crate::supervise::spawn("watch-sync", sync, &failed, &metrics);
    }
    let autoscaler = crate::supervise::spawn(
        "autoscaler",
        Autoscaler::new(ctx.clone(), controller.store(), changes, autoscaler).run(shutdown.clone()),
        &failed,
        &metrics,
    );
    let server = metrics_addr.map(|addr| {
        let app = server::router(
            Arc::new(registry),
            Readiness {
                watches_synced: synced,
                leader: leader_state,
                failed: failed.clone(),
            },
        );
        let serve = server::serve(addr, app, shutdown_signal(shutdown.clone()));
        let dead = failed.clone();
        let task = async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the /metrics, /healthz and /readyz server failed");
                dead.record(format!("task server failed: {e}"));
            }
        };
        crate::supervise::spawn("server", task, &failed, &metrics)
    });

    controller
        .run(reconciler::reconcile_guarded, reconciler::error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                // Reconcile errors are already reported by error_policy; these are watch/queue errors.
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
        })
        .await;
    tracing::info!("controller stopped");
    autoscaler.await?;
    let _ = release_tx.send(());
    if let Some(h) = server {
        h.await?;
    }
    if let Some(h) = election {
        h.await?;
    }
    Ok(())
}

/// What of a TicketingEvent the reconciler depends on: the spec (generation), deletion and
/// finalizers, labels and annotations, and `status.soldOutAt` (the autoscaler ends the sale with
/// it). Status writes that change nothing of these (signals, decisions, conditions) do not
/// trigger a reconcile; owned Deployments, schedule requeues and leadership still do.
pub fn reconcile_relevant(tev: &TicketingEvent) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let m = &tev.metadata;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.uid.hash(&mut h);
    m.generation.hash(&mut h);
    m.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond())
        .hash(&mut h);
    m.finalizers.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    let status = tev.status.as_ref();
    status.and_then(|s| s.sold_out_at).hash(&mut h);
    // A status the reconciler has not written yet (created, or status cleared by hand).
    status.and_then(|s| s.phase).map(|p| p.as_str()).hash(&mut h);
    Some(h.finish())
}

/// A stream that yields once each time the watched leadership turns true.
fn async_stream_from_watch(
    rx: &mut watch::Receiver<Option<bool>>,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    let rx = rx.clone();
    futures::stream::unfold((rx, false), |(mut rx, mut was)| async move {
        loop {
            let now = *rx.borrow_and_update() == Some(true);
            if now && !was {
                return Some(((), (rx, true)));
            }
            was = now;
            rx.changed().await.ok()?;
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tev() -> TicketingEvent {
        crate::crd::fixture::event(serde_json::json!({
            "metadata": {"uid": "u1", "generation": 1},
            "status": {"phase": "OnSale", "queueDepth": 10}
        }))
    }

    #[tokio::test]
    async fn every_call_sent_is_counted_by_method() {
        // An "API server" answering 404 to everything (what is counted is what was sent).
        let server = tower::service_fn(|_req: axum::http::Request<kube::client::Body>| {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#;
            let res = axum::http::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(body.as_bytes().to_vec()))
                .unwrap();
            futures::future::ready(Ok::<_, tower::BoxError>(res))
        });
        let requests = prometheus_client::metrics::family::Family::default();
        let api: Api<ConfigMap> = Api::namespaced(counted(Client::new(server, "ns"), requests.clone()), "ns");
        let patch = kube::api::Patch::Merge(serde_json::json!({"data": {"a": "b"}}));
        assert!(api.get_opt("x").await.unwrap().is_none());
        assert!(api.get_opt("y").await.unwrap().is_none());
        assert!(api.patch("x", &Default::default(), &patch).await.is_err());
        let count = |method| {
            requests
                .get_or_create(&crate::metrics::ApiRequestLabels {
                    method,
                    resource: "configmaps",
                })
                .get()
        };
        assert_eq!((count("get"), count("patch"), count("delete")), (2, 1, 0));
    }

    #[tokio::test]
    async fn a_call_the_api_server_never_answers_fails_within_the_timeout() {
        // An API server that accepts the request and never answers (a stalled connection).
        let hung = tower::service_fn(|_req: axum::http::Request<kube::client::Body>| {
            futures::future::pending::<Result<axum::http::Response<kube::client::Body>, tower::BoxError>>()
        });
        let client = with_request_timeout(Client::new(hung, "default"), Duration::from_millis(200));
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        fails_within_the_200ms_bound(api.get("x")).await;
    }

    /// `call` (through a client bounded at 200 ms) fails with the bound's error well within 2 s.
    async fn fails_within_the_200ms_bound<T: std::fmt::Debug>(
        call: impl std::future::Future<Output = kube::Result<T>>,
    ) {
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call waited past its timeout")
            .expect_err("a call the API server never finishes cannot succeed");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            err.to_string()
                .contains("no answer from the API server within 200ms"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_watch_the_api_server_never_answers_fails_within_the_timeout_and_is_retried() {
        use futures::StreamExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        // An API server that accepts every request (the watcher's first LIST) and never answers.
        let sent = Arc::new(AtomicUsize::new(0));
        let seen = sent.clone();
        let hung = tower::service_fn(move |_req: axum::http::Request<kube::client::Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<Result<axum::http::Response<kube::client::Body>, tower::BoxError>>()
        });
        let client = with_request_timeout(Client::new(hung, "default"), Duration::from_millis(200));
        let mut stream = watcher(
            Api::<ConfigMap>::namespaced(client, "ns"),
            watcher::Config::default(),
        )
        .boxed();
        // The watcher first says it starts a list (Init), then the list fails within the bound;
        // the watcher goes on (a new LIST) rather than ending.
        let mut errors = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while errors.len() < 2 {
                match stream.next().await.expect("the watch ended") {
                    Ok(watcher::Event::Init) => {}
                    Ok(ev) => panic!("{ev:?}"),
                    Err(e) => errors.push(e.to_string()),
                }
            }
        })
        .await
        .expect("the watch waited on the hung API server past its timeout");
        assert!(
            errors[0].contains("no answer from the API server within 200ms"),
            "{errors:?}"
        );
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }

    /// An API server that answers with headers and then the given body chunks, the last one
    /// followed by a body that never ends; `watch=true` requests and the others get their own.
    fn stalling_server(list: Vec<(u64, String)>, watch: Vec<(u64, String)>) -> Client {
        use futures::StreamExt;
        let service = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let is_watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            let chunks = if is_watch { watch.clone() } else { list.clone() };
            let body = futures::stream::iter(chunks)
                .then(|(after_ms, text)| async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(text))
                })
                .chain(futures::stream::pending());
            let res = axum::http::Response::new(axum::body::Body::from_stream(body));
            futures::future::ready(Ok::<_, tower::BoxError>(res))
        });
        with_request_timeout(Client::new(service, "default"), Duration::from_millis(200))
    }

    #[tokio::test]
    async fn a_list_whose_body_stalls_after_the_headers_fails_within_the_timeout() {
        let client = stalling_server(
            vec![(0, r#"{"apiVersion":"v1","kind":"ConfigMapList","#.to_owned())],
            vec![],
        );
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        fails_within_the_200ms_bound(api.list(&Default::default())).await;
    }

    #[tokio::test]
    async fn a_watch_stream_runs_on_past_the_timeout_once_its_headers_arrived() {
        use futures::StreamExt;
        let event = |name: &str, rv: &str| {
            format!(
                r#"{{"type":"ADDED","object":{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}","namespace":"ns","resourceVersion":"{rv}"}}}}}}"#
            ) + "\n"
        };
        // The second event comes 500 ms after the headers, past the 200 ms bound.
        let client = stalling_server(vec![], vec![(0, event("a", "1")), (500, event("b", "2"))]);
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let mut stream = api
            .watch(&Default::default(), "0")
            .await
            .expect("the watch's headers arrived")
            .boxed();
        let mut names = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while names.len() < 2 {
                match stream.next().await.expect("the watch ended") {
                    Ok(kube::api::WatchEvent::Added(cm)) => names.push(cm.metadata.name.unwrap()),
                    other => panic!("{other:?}"),
                }
            }
        })
        .await
        .expect("the second event never came");
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_cache_keeps_the_last_good_spec_only_while_it_differs_from_the_spec() {
        let with_good = |good_generation: i64| {
            let mut t = tev();
            let s = t.status.as_mut().unwrap();
            s.last_good_spec = Some(serde_json::to_value(&t.spec).unwrap());
            s.last_good_generation = Some(good_generation);
            trim_cached(&mut t);
            t
        };
        // Generation 1 is the good one: the copy goes; the event in force is the event itself.
        let current = with_good(1);
        assert!(current.status.as_ref().unwrap().last_good_spec.is_none());
        assert!(matches!(current.in_force(), std::borrow::Cow::Borrowed(_)));
        // An older generation is kept in force: its spec stays.
        assert!(with_good(0).status.unwrap().last_good_spec.is_some());
    }

    #[test]
    fn only_what_the_reconciler_uses_triggers_it() {
        let base = reconcile_relevant(&tev());
        // The autoscaler's and the scaler's routine writes do not.
        let mut t = tev();
        let s = t.status.as_mut().unwrap();
        s.queue_depth = Some(9_000);
        s.active_users = Some(40);
        s.signals_observed_at = Some(chrono::Utc::now());
        s.queue = Some(crate::crd::ComponentStatus {
            desired_replicas: Some(7),
            ..Default::default()
        });
        assert_eq!(reconcile_relevant(&t), base);
        // A spec edit, the end of the sale, and deletion do.
        let mut t = tev();
        t.metadata.generation = Some(2);
        assert_ne!(reconcile_relevant(&t), base);
        let mut t = tev();
        t.status.as_mut().unwrap().sold_out_at = Some(chrono::Utc::now());
        assert_ne!(reconcile_relevant(&t), base);
        let mut t = tev();
        t.metadata.finalizers = Some(vec!["example.com/keep".into()]);
        assert_ne!(reconcile_relevant(&t), base);
    }
}
