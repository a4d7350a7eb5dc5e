//! Pure builders of an event's children: the ConfigMap with `event.json`, and per component a
//! Deployment, a Service and a PodDisruptionBudget. No client here; the reconciler applies what
//! these return. Secrets are referenced through `secretKeyRef`, never copied.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use tiketi_shared::config::{
    CONFIG_FILE_NAME, EventConfig, GeneralAdmission, Inventory, QueueSettings, ReservationSettings,
    SeatedSection,
};

use crate::crd::{
    Component, MAX_SPEC_DURATION, MIN_SERVICE_DURATION, PullPolicy, TicketingEvent, parse_duration_within,
    secret_keys,
};

/// Label holding the owning TicketingEvent's name on every child (orphan clean-up selects on it).
pub const EVENT_LABEL: &str = "tiketi.gg/event";
/// Label holding the component (queue | reservation) on Deployments, Services, PDBs and pods.
pub const COMPONENT_LABEL: &str = "tiketi.gg/component";
/// Annotation on every child: a hash of the object the operator applies (`spec.replicas` is
/// only in it at creation; afterwards the scaler owns that field). A reconcile compares it with the child as the
/// operator's watch cache shows it and applies only what differs, so an unchanged event costs
/// no write.
pub const APPLIED_HASH_ANNOTATION: &str = "tiketi.gg/applied-hash";

/// Sets [`APPLIED_HASH_ANNOTATION`] on `obj` (computed without it).
fn stamp<K: Resource + serde::Serialize>(obj: &mut K) {
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(APPLIED_HASH_ANNOTATION);
    }
    let hash = serde_json::to_vec(&*obj).map_or_else(|_| String::new(), |b| format!("{:016x}", fnv1a(&b)));
    obj.meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
}

/// The hash a child carries (see [`APPLIED_HASH_ANNOTATION`]).
pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(APPLIED_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Pod template annotation: hash of event.json, so a configuration change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "tiketi.gg/config-hash";
/// Where the ConfigMap is mounted; TIKETI_EVENT_CONFIG points at this directory.
pub const CONFIG_DIR: &str = "/etc/tiketi";
/// Where `spec.redis.caSecretRef` is mounted (its key as [`REDIS_CA_FILE`]).
pub const REDIS_CA_DIR: &str = "/etc/tiketi-redis-ca";
pub const REDIS_CA_FILE: &str = "ca.crt";
/// The port both services listen on inside the pod.
pub const HTTP_PORT: i32 = 8080;
/// Seconds the preStop hook waits, so endpoints drop the pod before it stops accepting.
pub const PRE_STOP_SECONDS: i64 = 10;
/// Grace period: preStop plus the services' own drain.
pub const TERMINATION_GRACE_SECONDS: i64 = 45;
/// Non-root uid/gid the containers run as (distroless "nonroot").
pub const RUN_AS_USER: i64 = 65532;

/// Every object an event needs, named and labelled, with owner references set.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub deployments: Vec<(Component, Deployment)>,
    pub services: Vec<Service>,
    pub pdbs: Vec<PodDisruptionBudget>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("TicketingEvent has no {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Duration(#[from] crate::crd::DurationError),
    #[error("event configuration is invalid: {0}")]
    Config(String),
    #[error("cannot serialize event configuration: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Name of a component's Deployment, Service and PodDisruptionBudget.
pub fn component_name(tev_name: &str, c: Component) -> String {
    format!("{tev_name}-{c}")
}

/// Name of the event's ConfigMap.
pub fn config_map_name(tev_name: &str) -> String {
    format!("{tev_name}-config")
}

/// The event configuration the services read (shape owned by `tiketi_shared::config`).
pub fn event_config(tev: &TicketingEvent) -> Result<EventConfig, BuildError> {
    let name = tev
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::Missing("metadata.name"))?;
    let s = &tev.spec;
    // Whole seconds of at least one (the services count seconds: 500 ms would become 0).
    let secs = |field, v: &str| {
        parse_duration_within(field, v, MIN_SERVICE_DURATION, MAX_SPEC_DURATION).map(|d| d.as_secs())
    };
    for (field, value) in [
        (
            "spec.queue.admission.ratePerSecond",
            u64::from(s.queue.admission.rate_per_second),
        ),
        (
            "spec.queue.admission.maxActive",
            u64::from(s.queue.admission.max_active),
        ),
        (
            "spec.reservation.maxSeatsPerUser",
            u64::from(s.reservation.max_seats_per_user),
        ),
    ] {
        if value == 0 {
            return Err(BuildError::Config(format!("{field} must be at least 1")));
        }
    }
    let cfg = EventConfig {
        event_id: s.event_id_or(name),
        on_sale_at: s.on_sale_at,
        sale_ends_at: s.sale_ends_at,
        queue: QueueSettings {
            rate_per_second: s.queue.admission.rate_per_second,
            max_active: s.queue.admission.max_active,
            token_ttl_seconds: secs("spec.queue.admission.tokenTtl", &s.queue.admission.token_ttl)?,
            // Below 1 s every waiting user would be dropped each sweep.
            heartbeat_timeout_seconds: secs(
                "spec.queue.admission.heartbeatTimeout",
                &s.queue.admission.heartbeat_timeout,
            )?,
        },
        reservation: ReservationSettings {
            hold_ttl_seconds: secs("spec.reservation.holdTtl", &s.reservation.hold_ttl)?,
            max_seats_per_user: s.reservation.max_seats_per_user,
        },
        inventory: Inventory {
            sections: s
                .inventory
                .sections
                .iter()
                .map(|x| SeatedSection {
                    name: x.name.clone(),
                    rows: x.rows,
                    seats_per_row: x.seats_per_row,
                    price_tier: x.price_tier.clone(),
                })
                .collect(),
            general_admission: s
                .inventory
                .general_admission
                .iter()
                .map(|g| GeneralAdmission {
                    name: g.name.clone(),
                    capacity: g.capacity,
                    price_tier: g.price_tier.clone(),
                })
                .collect(),
        },
    };
    cfg.validate().map_err(BuildError::Config)?;
    Ok(cfg)
}

/// Builds every child of `tev`. `create_replicas` is set for Deployments that do not exist yet
/// (their first replicas); for existing ones `spec.replicas` is left out, because the scaler's
/// field manager owns it.
pub fn build(
    tev: &TicketingEvent,
    create_replicas: &BTreeMap<Component, i32>,
) -> Result<Children, BuildError> {
    let name = tev
        .metadata
        .name
        .clone()
        .ok_or(BuildError::Missing("metadata.name"))?;
    let namespace = tev
        .metadata
        .namespace
        .clone()
        .ok_or(BuildError::Missing("metadata.namespace"))?;
    let owner = tev
        .controller_owner_ref(&())
        .ok_or(BuildError::Missing("metadata.uid"))?;
    let cfg = event_config(tev)?;
    let json = serde_json::to_string_pretty(&cfg).map_err(BuildError::Serialize)?;
    let hash = format!("{:016x}", fnv1a(json.as_bytes()));

    let config_map = ConfigMap {
        metadata: meta(&config_map_name(&name), &namespace, &owner, event_labels(&name)),
        data: Some(BTreeMap::from([(CONFIG_FILE_NAME.to_string(), json)])),
        ..Default::default()
    };
    let mut deployments = Vec::new();
    let mut services = Vec::new();
    let mut pdbs = Vec::new();
    for c in Component::ALL {
        let labels = component_labels(&name, c);
        let cname = component_name(&name, c);
        // A new Deployment's hash covers its first replicas, so the next reconcile applies it
        // once more without them and the operator's manager lets the field go to the scaler's.
        let mut d = deployment(
            tev,
            c,
            &cname,
            &namespace,
            &owner,
            &hash,
            create_replicas.get(&c).copied(),
        );
        stamp(&mut d);
        deployments.push((c, d));
        services.push(Service {
            metadata: meta(&cname, &namespace, &owner, labels.clone()),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(&name, c)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        pdbs.push(PodDisruptionBudget {
            metadata: meta(&cname, &namespace, &owner, labels),
            spec: Some(PodDisruptionBudgetSpec {
                // One pod at a time: a node drain during the sale never takes out a whole component.
                max_unavailable: Some(IntOrString::Int(1)),
                selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&name, c)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut config_map = config_map;
    stamp(&mut config_map);
    services.iter_mut().for_each(stamp);
    pdbs.iter_mut().for_each(stamp);
    Ok(Children {
        config_map,
        deployments,
        services,
        pdbs,
    })
}

fn meta(name: &str, namespace: &str, owner: &OwnerReference, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    }
}

/// Labels on every child of an event.
pub fn event_labels(tev_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (EVENT_LABEL.into(), tev_name.into()),
        ("app.kubernetes.io/instance".into(), tev_name.into()),
        ("app.kubernetes.io/part-of".into(), "tiketi".into()),
        ("app.kubernetes.io/managed-by".into(), "tiketi-operator".into()),
    ])
}

fn selector_labels(tev_name: &str, c: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (EVENT_LABEL.into(), tev_name.into()),
        (COMPONENT_LABEL.into(), c.as_str().into()),
    ])
}

fn component_labels(tev_name: &str, c: Component) -> BTreeMap<String, String> {
    let mut l = event_labels(tev_name);
    l.insert(COMPONENT_LABEL.into(), c.as_str().into());
    l.insert("app.kubernetes.io/name".into(), format!("tiketi-{c}"));
    l.insert("app.kubernetes.io/component".into(), c.as_str().into());
    l
}

fn deployment(
    tev: &TicketingEvent,
    c: Component,
    name: &str,
    namespace: &str,
    owner: &OwnerReference,
    config_hash: &str,
    replicas: Option<i32>,
) -> Deployment {
    let tev_name = tev.name_any();
    let labels = component_labels(&tev_name, c);
    Deployment {
        metadata: meta(name, namespace, owner, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&tev_name, c)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.into(),
                        config_hash.into(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod_spec(tev, c, &tev_name)),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_spec(tev: &TicketingEvent, c: Component, tev_name: &str) -> PodSpec {
    let s = &tev.spec;
    let (image, pull, resources) = match c {
        Component::Queue => (&s.queue.image, s.queue.image_pull_policy, &s.queue.resources),
        Component::Reservation => (
            &s.reservation.image,
            s.reservation.image_pull_policy,
            &s.reservation.resources,
        ),
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let spread = |key: &str| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.into(),
        // ScheduleAnyway: a zone outage must not leave the sale without pods.
        when_unsatisfiable: "ScheduleAnyway".into(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector_labels(tev_name, c)),
            ..Default::default()
        }),
        ..Default::default()
    };
    PodSpec {
        containers: vec![Container {
            name: c.as_str().into(),
            image: Some(image.clone()),
            image_pull_policy: pull.map(|p| PullPolicy::as_str(p).to_string()),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            env: Some(env(tev, c)),
            resources: Some(resources.clone().unwrap_or_else(|| default_resources(c))),
            readiness_probe: Some(probe("/readyz", 5, 2)),
            liveness_probe: Some(probe("/healthz", 10, 3)),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    sleep: Some(SleepAction {
                        seconds: PRE_STOP_SECONDS,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUN_AS_USER),
                run_as_group: Some(RUN_AS_USER),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volume_mounts: Some(
                vec![
                    VolumeMount {
                        name: "config".into(),
                        mount_path: CONFIG_DIR.into(),
                        read_only: Some(true),
                        ..Default::default()
                    },
                    VolumeMount {
                        name: "tmp".into(),
                        mount_path: "/tmp".into(),
                        ..Default::default()
                    },
                ]
                .into_iter()
                .chain(tev.spec.redis.ca_secret_ref.as_ref().map(|_| VolumeMount {
                    name: "redis-ca".into(),
                    mount_path: REDIS_CA_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }],
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        topology_spread_constraints: Some(vec![
            spread("topology.kubernetes.io/zone"),
            spread("kubernetes.io/hostname"),
        ]),
        volumes: Some(
            vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: config_map_name(tev_name),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("64Mi".into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(tev.spec.redis.ca_secret_ref.as_ref().map(|ca| Volume {
                name: "redis-ca".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ca.name.clone()),
                    items: Some(vec![KeyToPath {
                        key: ca.key.clone(),
                        path: REDIS_CA_FILE.into(),
                        ..Default::default()
                    }]),
                    default_mode: Some(0o444),
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .collect(),
        ),
        ..Default::default()
    }
}

fn default_resources(c: Component) -> ResourceRequirements {
    let memory = match c {
        Component::Queue => "128Mi",
        Component::Reservation => "256Mi",
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("250m".into())),
            ("memory".into(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity(memory.into()))])),
        ..Default::default()
    }
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn secret(name: &str, secret: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `TIKETI_*` environment of a component's container.
fn env(tev: &TicketingEvent, c: Component) -> Vec<EnvVar> {
    let s = &tev.spec;
    let auth = &s.auth.secret_ref.name;
    let mut env = vec![
        plain("TIKETI_LISTEN", format!("[::]:{HTTP_PORT}")),
        plain("TIKETI_EVENT_CONFIG", CONFIG_DIR),
        plain("TIKETI_LOG_FORMAT", "json"),
        plain("TIKETI_REDIS_CLUSTER", s.redis.cluster_mode.to_string()),
        plain("TIKETI_REDIS_TLS", s.redis.tls.to_string()),
        secret(
            "TIKETI_REDIS_URL",
            &s.redis.url_secret_ref.name,
            &s.redis.url_secret_ref.key,
            false,
        ),
        secret("TIKETI_JWT_SECRET", auth, secret_keys::JWT_SECRET, false),
        secret(
            "TIKETI_ADMISSION_SECRET",
            auth,
            secret_keys::ADMISSION_SECRET,
            false,
        ),
    ];
    if s.redis.ca_secret_ref.is_some() {
        env.push(plain(
            "TIKETI_REDIS_CA_FILE",
            format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}"),
        ));
    }
    if c == Component::Queue {
        let hops = s.queue.trusted_proxy_hops.unwrap_or(0);
        env.push(plain("TIKETI_TRUSTED_PROXY_HOPS", hops.to_string()));
    }
    if c == Component::Reservation {
        let db = &s.database.secret_ref.name;
        env.push(secret(
            "TIKETI_DATABASE_URL",
            db,
            secret_keys::DATABASE_URL,
            false,
        ));
        env.push(secret(
            "TIKETI_DATABASE_READ_URL",
            db,
            secret_keys::DATABASE_READ_URL,
            true,
        ));
    }
    env
}

/// FNV-1a, 64 bit: a stable content hash (std's hasher may change between Rust releases, which
/// would roll every pod on an operator upgrade).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tev() -> TicketingEvent {
        crate::crd::fixture::event(serde_json::json!({
            "metadata": {"name": "iu-2026-seoul", "namespace": "tickets", "uid": "0b9c3c8e-0000-4000-8000-000000000001"},
            "spec": {
                "eventId": "iu-seoul",
                "onSaleAt": "2026-12-01T11:00:00+09:00",
                "inventory": {
                    "sections": [{"name": "A", "rows": 2, "seatsPerRow": 3, "priceTier": "vip"}],
                    "generalAdmission": [{"name": "floor", "capacity": 4}]
                },
                "queue": {"image": "tiketi/queue:0.1", "admission": {"ratePerSecond": 80, "tokenTtl": "7m"}},
                "reservation": {
                    "image": "tiketi/reservation:0.1",
                    "imagePullPolicy": "IfNotPresent",
                    "holdTtl": "4m",
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}
                },
                "redis": {"urlSecretRef": {"name": "redis-creds", "key": "uri"}, "clusterMode": true},
                "database": {"secretRef": {"name": "db-creds"}},
                "auth": {"secretRef": {"name": "auth-keys"}}
            }
        }))
    }

    fn deployment_of(ch: &Children, c: Component) -> &Deployment {
        &ch.deployments.iter().find(|(x, _)| *x == c).unwrap().1
    }

    fn env_of(d: &Deployment) -> BTreeMap<String, EnvVar> {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn a_private_redis_ca_is_mounted_and_named_to_both_services() {
        let mut t = tev();
        t.spec.redis.tls = true;
        t.spec.redis.ca_secret_ref = Some(crate::crd::SecretKeySelector {
            name: "redis-ca".into(),
            key: "ca.pem".into(),
        });
        let ch = build(&t, &BTreeMap::new()).unwrap();
        for c in Component::ALL {
            let d = deployment_of(&ch, c);
            assert_eq!(
                env_of(d)["TIKETI_REDIS_CA_FILE"].value.as_deref(),
                Some("/etc/tiketi-redis-ca/ca.crt")
            );
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let vol = pod
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == "redis-ca")
                .unwrap();
            let secret = vol.secret.as_ref().unwrap();
            assert_eq!(secret.secret_name.as_deref(), Some("redis-ca"));
            let item = &secret.items.as_ref().unwrap()[0];
            assert_eq!((item.key.as_str(), item.path.as_str()), ("ca.pem", "ca.crt"));
            let mount = pod.containers[0]
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.name == "redis-ca")
                .unwrap();
            assert_eq!(
                (mount.mount_path.as_str(), mount.read_only),
                (REDIS_CA_DIR, Some(true))
            );
        }
        // Without one: nothing mounted, the built-in roots (ElastiCache).
        let ch = build(&tev(), &BTreeMap::new()).unwrap();
        let d = deployment_of(&ch, Component::Queue);
        assert!(!env_of(d).contains_key("TIKETI_REDIS_CA_FILE"));
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert!(pod.volumes.as_ref().unwrap().iter().all(|v| v.name != "redis-ca"));
    }

    #[test]
    fn config_map_holds_the_shared_event_config() {
        let ch = build(&tev(), &BTreeMap::new()).unwrap();
        assert_eq!(
            ch.config_map.metadata.name.as_deref(),
            Some("iu-2026-seoul-config")
        );
        let json = &ch.config_map.data.as_ref().unwrap()[CONFIG_FILE_NAME];
        let cfg = tiketi_shared::config::parse_str(json).unwrap().remove(0);
        cfg.validate().unwrap();
        assert_eq!(cfg.event_id, "iu-seoul");
        assert_eq!(cfg.on_sale_at.to_rfc3339(), "2026-12-01T02:00:00+00:00");
        assert_eq!(cfg.queue.rate_per_second, 80);
        assert_eq!(cfg.queue.token_ttl_seconds, 420);
        assert_eq!(cfg.reservation.hold_ttl_seconds, 240);
        assert_eq!(cfg.inventory.total(), 10);
        // No credential ends up in the ConfigMap.
        assert!(!json.contains("redis-creds") && !json.contains("auth-keys"));
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let t = tev();
        let ch = build(&t, &BTreeMap::new()).unwrap();
        let metas = std::iter::once(&ch.config_map.metadata)
            .chain(ch.deployments.iter().map(|(_, d)| &d.metadata))
            .chain(ch.services.iter().map(|s| &s.metadata))
            .chain(ch.pdbs.iter().map(|p| &p.metadata));
        let mut n = 0;
        for m in metas {
            n += 1;
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "TicketingEvent");
            assert_eq!(owner.api_version, "tiketi.gg/v1alpha1");
            assert_eq!(owner.controller, Some(true));
            assert_eq!(owner.uid, "0b9c3c8e-0000-4000-8000-000000000001");
            assert_eq!(m.labels.as_ref().unwrap()[EVENT_LABEL], "iu-2026-seoul");
            assert_eq!(m.namespace.as_deref(), Some("tickets"));
        }
        assert_eq!(n, 7);
    }

    #[test]
    fn pod_spec_carries_every_setting() {
        let ch = build(&tev(), &BTreeMap::new()).unwrap();
        for c in Component::ALL {
            let d = deployment_of(&ch, c);
            assert_eq!(
                d.metadata.name.as_deref(),
                Some(format!("iu-2026-seoul-{c}").as_str())
            );
            assert_eq!(
                d.spec.as_ref().unwrap().replicas,
                None,
                "replicas belong to the scaler"
            );
            let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let ct = &pod.containers[0];
            assert_eq!(
                ct.readiness_probe
                    .as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .as_deref(),
                Some("/readyz")
            );
            assert_eq!(
                ct.liveness_probe
                    .as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .as_deref(),
                Some("/healthz")
            );
            let pre_stop = ct.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
            assert_eq!(pre_stop.sleep.as_ref().unwrap().seconds, PRE_STOP_SECONDS);
            let sc = ct.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_non_root, Some(true));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert!(
                ct.resources
                    .as_ref()
                    .unwrap()
                    .requests
                    .as_ref()
                    .unwrap()
                    .contains_key("cpu")
            );
            let spread = pod.topology_spread_constraints.as_ref().unwrap();
            assert!(
                spread
                    .iter()
                    .any(|t| t.topology_key == "topology.kubernetes.io/zone")
            );
            let mounts = ct.volume_mounts.as_ref().unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m.mount_path == CONFIG_DIR && m.read_only == Some(true))
            );
            let env = env_of(d);
            assert_eq!(env["TIKETI_EVENT_CONFIG"].value.as_deref(), Some(CONFIG_DIR));
            assert_eq!(env["TIKETI_LISTEN"].value.as_deref(), Some("[::]:8080"));
            let redis = env["TIKETI_REDIS_URL"]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!((redis.name.as_str(), redis.key.as_str()), ("redis-creds", "uri"));
            let jwt = env["TIKETI_JWT_SECRET"]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            assert_eq!((jwt.name.as_str(), jwt.key.as_str()), ("auth-keys", "jwtSecret"));
            assert!(
                env["TIKETI_ADMISSION_SECRET"].value.is_none(),
                "secrets never inline"
            );
            assert_eq!(env["TIKETI_REDIS_CLUSTER"].value.as_deref(), Some("true"));
            assert_eq!(
                env.contains_key("TIKETI_DATABASE_URL"),
                c == Component::Reservation
            );
        }
        let r = deployment_of(&ch, Component::Reservation);
        let ct = &r
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(ct.image.as_deref(), Some("tiketi/reservation:0.1"));
        assert_eq!(ct.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            ct.resources.as_ref().unwrap().requests.as_ref().unwrap()["memory"],
            Quantity("1Gi".into())
        );
        let read = &env_of(r)["TIKETI_DATABASE_READ_URL"];
        let sel = read.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!(
            (sel.name.as_str(), sel.key.as_str(), sel.optional),
            ("db-creds", "readUrl", Some(true))
        );
    }

    #[test]
    fn replicas_only_for_new_deployments() {
        let ch = build(&tev(), &BTreeMap::from([(Component::Queue, 5)])).unwrap();
        assert_eq!(
            deployment_of(&ch, Component::Queue)
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            Some(5)
        );
        assert_eq!(
            deployment_of(&ch, Component::Reservation)
                .spec
                .as_ref()
                .unwrap()
                .replicas,
            None
        );
    }

    #[test]
    fn config_change_changes_the_pod_template_hash() {
        let hash = |t: &TicketingEvent| {
            let ch = build(t, &BTreeMap::new()).unwrap();
            let d = deployment_of(&ch, Component::Queue).clone();
            d.spec.unwrap().template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
        };
        let a = tev();
        let mut b = tev();
        assert_eq!(hash(&a), hash(&b));
        b.spec.reservation.hold_ttl = "6m".into();
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn services_and_pdbs_select_the_component_pods() {
        let ch = build(&tev(), &BTreeMap::new()).unwrap();
        for (svc, pdb) in ch.services.iter().zip(&ch.pdbs) {
            let sel = svc.spec.as_ref().unwrap().selector.clone().unwrap();
            assert_eq!(
                pdb.spec
                    .as_ref()
                    .unwrap()
                    .selector
                    .as_ref()
                    .unwrap()
                    .match_labels
                    .as_ref(),
                Some(&sel)
            );
            let d = ch
                .deployments
                .iter()
                .find(|(_, d)| d.metadata.name == svc.metadata.name)
                .unwrap();
            let pod_labels =
                d.1.spec
                    .as_ref()
                    .unwrap()
                    .template
                    .metadata
                    .as_ref()
                    .unwrap()
                    .labels
                    .clone()
                    .unwrap();
            assert!(sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
        }
    }
}
