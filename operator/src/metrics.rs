//! The operator's Prometheus metrics (names in one place). Labels are bounded: namespace and
//! event come from TicketingEvents that exist (series are removed when one is deleted); component,
//! phase, direction and reason are fixed sets.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{AdmissionSpec, Component, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub namespace: String,
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// `reconcile` or the name of a supervised task (`autoscaler`, `server`, `leader-election`).
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub namespace: String,
    pub event: String,
    pub component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub event: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub namespace: String,
    pub event: String,
    pub component: &'static str,
    /// `up` or `down` ([`crate::autoscaler::Direction::metric_label`]).
    pub direction: &'static str,
    /// A fixed kind (schedule, scaleOut, scaleIn, fallback, …), never free text.
    pub reason: &'static str,
}

/// A Kubernetes Event reason (one of `status::reasons`, a fixed set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// Every autoscaler decision, holds included: `direction` up/down/hold, `reason` one of the
/// decision reasons (`StepAbove`, `ScaleOutCooldown`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AutoscalerDecisionLabels {
    pub namespace: String,
    pub event: String,
    pub component: &'static str,
    pub direction: &'static str,
    pub reason: &'static str,
}

/// A signal read that failed: which signal kind and why (bounded sets).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalErrorLabels {
    pub signal: &'static str,
    pub reason: &'static str,
}

/// Every metric the operator core exports.
#[derive(Clone)]
pub struct Metrics {
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub phase: Family<PhaseLabels, Gauge>,
    pub desired_replicas: Family<ComponentLabels, Gauge>,
    pub ready_replicas: Family<ComponentLabels, Gauge>,
    pub needed_replicas: Family<ComponentLabels, Gauge>,
    pub admission_rate: Family<EventLabels, Gauge>,
    pub admission_max_active: Family<EventLabels, Gauge>,
    pub scaling_decisions: Family<DecisionLabels, Counter>,
    pub leader: Gauge,
    pub queue_depth: Family<EventLabels, Gauge>,
    pub active_users: Family<EventLabels, Gauge>,
    pub signals_healthy: Family<EventLabels, Gauge>,
    pub signal_errors: Family<SignalErrorLabels, Counter>,
    pub autoscaler_decisions: Family<AutoscalerDecisionLabels, Counter>,
    pub autoscaler_tick_duration: Histogram,
    pub autoscaler_events: Gauge,
    pub panics: Family<TaskLabels, Counter>,
    pub events_suppressed: Family<ReasonLabels, Counter>,
    pub secret_reads: Counter,
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// Bumped whenever the per-event gauges are dropped ([`Metrics::forget_event_gauges`]):
    /// an [`EventSeries`] resolved before then resolves again.
    gauges_dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// An API call the operator sent (watches left out), by HTTP method and resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub method: &'static str,
    pub resource: &'static str,
}

impl ApiRequestLabels {
    /// The labels of a request (bounded sets: anything the operator does not call is "other").
    pub fn of(method: &axum::http::Method, path: &str) -> Self {
        use axum::http::Method;
        let method = match *method {
            Method::GET => "get",
            Method::POST => "post",
            Method::PUT => "put",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "other",
        };
        Self {
            method,
            resource: resource_of(path),
        }
    }
}

/// The resource (and subresource) a namespaced API path names, from the kinds the operator
/// calls: `/api/v1/namespaces/ns/secrets/x` → `secrets`,
/// `/apis/tiketi.gg/v1alpha1/namespaces/ns/ticketingevents/x/status` → `ticketingevents/status`.
fn resource_of(path: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "ticketingevents",
        "deployments",
        "services",
        "configmaps",
        "poddisruptionbudgets",
        "secrets",
        "events",
        "leases",
        "customresourcedefinitions",
    ];
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 2 => &parts[i + 2..],
        _ => match parts.first() {
            Some(&"api") => parts.get(2..).unwrap_or_default(),
            Some(&"apis") => parts.get(3..).unwrap_or_default(),
            _ => &[][..],
        },
    };
    let Some(kind) = rest.first().and_then(|r| KNOWN.iter().find(|k| *k == r)) else {
        return "other";
    };
    match (*kind, rest.get(2).copied()) {
        ("ticketingevents", Some("status")) => "ticketingevents/status",
        ("deployments", Some("status")) => "deployments/status",
        _ => kind,
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `tiketi_operator` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            reconciliations: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            phase: Family::default(),
            desired_replicas: Family::default(),
            ready_replicas: Family::default(),
            needed_replicas: Family::default(),
            admission_rate: Family::default(),
            admission_max_active: Family::default(),
            scaling_decisions: Family::default(),
            leader: Gauge::default(),
            queue_depth: Family::default(),
            active_users: Family::default(),
            signals_healthy: Family::default(),
            signal_errors: Family::default(),
            autoscaler_decisions: Family::default(),
            autoscaler_tick_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            autoscaler_events: Gauge::default(),
            panics: Family::default(),
            events_suppressed: Family::default(),
            secret_reads: Counter::default(),
            api_requests: Family::default(),
            gauges_dropped: Default::default(),
        };
        let r = registry.sub_registry_with_prefix("tiketi_operator");
        r.register(
            "reconciliations",
            "Reconciliations of TicketingEvents",
            m.reconciliations.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations by error kind",
            m.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            m.reconcile_duration.clone(),
        );
        r.register(
            "event_phase",
            "1 for the current phase of each event, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "desired_replicas",
            "Replicas the operator asks for, per event and component",
            m.desired_replicas.clone(),
        );
        r.register(
            "ready_replicas",
            "Ready replicas per event and component",
            m.ready_replicas.clone(),
        );
        r.register(
            "needed_replicas",
            "Replicas the capacity need asks for (signal × (1 + headroom) / perReplica), per event and component; absent without a capacity or a fresh signal",
            m.needed_replicas.clone(),
        );
        r.register(
            "admission_rate_per_second",
            "Users the event's queue may admit per second (spec.queue.admission.ratePerSecond in force)",
            m.admission_rate.clone(),
        );
        r.register(
            "admission_max_active",
            "Users the event may have admitted at once (spec.queue.admission.maxActive in force)",
            m.admission_max_active.clone(),
        );
        r.register(
            "scaling_decisions",
            "Replica changes by component, direction and reason kind",
            m.scaling_decisions.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        r.register(
            "queue_depth",
            "Users waiting in the event's queue at the last good signal read",
            m.queue_depth.clone(),
        );
        r.register(
            "active_users",
            "Admitted users whose admission has not expired, at the last good signal read",
            m.active_users.clone(),
        );
        r.register(
            "signals_healthy",
            "1 while every signal the event's policies use is fresh, 0 otherwise",
            m.signals_healthy.clone(),
        );
        r.register(
            "signal_errors",
            "Failed signal reads by signal kind and reason",
            m.signal_errors.clone(),
        );
        r.register(
            "autoscaler_decisions",
            "Autoscaler decisions (holds included) by component, direction and reason",
            m.autoscaler_decisions.clone(),
        );
        r.register(
            "autoscaler_tick_duration_seconds",
            "One autoscaler tick: read every due event's signals, decide, apply",
            m.autoscaler_tick_duration.clone(),
        );
        r.register(
            "panics",
            "Panics caught, by task (a reconcile panic fails that reconcile; a task panic makes /healthz fail)",
            m.panics.clone(),
        );
        r.register(
            "events_suppressed",
            "Kubernetes Events not published by the spam filter (over 25 per event and reason, then 1 per 10 s)",
            m.events_suppressed.clone(),
        );
        r.register(
            "secret_reads",
            "Secret data read from the API server (a GET per new resourceVersion; 0 in steady state)",
            m.secret_reads.clone(),
        );
        r.register(
            "api_requests",
            "API calls sent to the Kubernetes API server by HTTP method and resource (watches and the leader Lease left out; writes refused because this replica does not lead are not sent)",
            m.api_requests.clone(),
        );
        r.register(
            "autoscaler_events",
            "Events the autoscaler looked at in its last tick",
            m.autoscaler_events.clone(),
        );
        m
    }

    /// Starts a timer that records the reconcile duration when dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciliations.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    pub fn set_phase(&self, namespace: &str, event: &str, phase: Phase) {
        for p in [
            Phase::Scheduled,
            Phase::PreWarming,
            Phase::OnSale,
            Phase::SoldOut,
            Phase::Closing,
            Phase::Closed,
            Phase::Failed,
        ] {
            let labels = PhaseLabels {
                namespace: namespace.into(),
                event: event.into(),
                phase: p.as_str(),
            };
            // Only the current phase is exposed (at 1): every reader compares `== 1`, and six
            // zero series per event are six thousand at a thousand events.
            if p == phase {
                self.phase.get_or_create(&labels).set(1);
            } else {
                self.phase.remove(&labels);
            }
        }
    }

    /// The capacity need of a component; `None` removes the series (no capacity, no fresh signal).
    pub fn set_need(&self, namespace: &str, event: &str, c: Component, need: Option<u32>) {
        let labels = ComponentLabels {
            namespace: namespace.into(),
            event: event.into(),
            component: c.as_str(),
        };
        match need {
            Some(n) => {
                self.needed_replicas.get_or_create(&labels).set(i64::from(n));
            }
            None => {
                self.needed_replicas.remove(&labels);
            }
        }
    }

    /// The admission limits in force, for dashboards and runbooks to set the measured admission
    /// rate and active users against.
    pub fn set_admission(&self, namespace: &str, event: &str, admission: &AdmissionSpec) {
        let labels = EventLabels {
            namespace: namespace.into(),
            event: event.into(),
        };
        self.admission_rate
            .get_or_create(&labels)
            .set(i64::from(admission.rate_per_second));
        self.admission_max_active
            .get_or_create(&labels)
            .set(i64::from(admission.max_active));
    }

    pub fn set_replicas(&self, namespace: &str, event: &str, c: Component, desired: i32, ready: i32) {
        let labels = ComponentLabels {
            namespace: namespace.into(),
            event: event.into(),
            component: c.as_str(),
        };
        self.desired_replicas
            .get_or_create(&labels)
            .set(i64::from(desired));
        self.ready_replicas.get_or_create(&labels).set(i64::from(ready));
    }

    /// Drops every per-event gauge (a replica that stepped down no longer knows; the leader's
    /// series are the truth, and a stale `event_phase{phase="Failed"}` here would keep alerts
    /// firing). Counters stay: they are this replica's history.
    pub fn forget_event_gauges(&self) {
        self.gauges_dropped
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.phase.clear();
        self.desired_replicas.clear();
        self.ready_replicas.clear();
        self.needed_replicas.clear();
        self.admission_rate.clear();
        self.admission_max_active.clear();
        self.queue_depth.clear();
        self.active_users.clear();
        self.signals_healthy.clear();
    }

    /// The series the autoscaler sets for one event on every tick (see [`EventSeries`]).
    pub fn event_series(&self, namespace: String, event: String) -> EventSeries {
        let labels = EventLabels { namespace, event };
        EventSeries {
            generation: self.gauges_dropped.load(std::sync::atomic::Ordering::Acquire),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            active_users: self.active_users.get_or_create(&labels).clone(),
            signals_healthy: self.signals_healthy.get_or_create(&labels).clone(),
            need: Vec::new(),
            decisions: Vec::new(),
            labels,
        }
    }

    /// Drops every series of a deleted event.
    pub fn forget_event(&self, namespace: &str, event: &str) {
        for p in [
            Phase::Scheduled,
            Phase::PreWarming,
            Phase::OnSale,
            Phase::SoldOut,
            Phase::Closing,
            Phase::Closed,
            Phase::Failed,
        ] {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                event: event.into(),
                phase: p.as_str(),
            });
        }
        for c in Component::ALL {
            let labels = ComponentLabels {
                namespace: namespace.into(),
                event: event.into(),
                component: c.as_str(),
            };
            self.desired_replicas.remove(&labels);
            self.ready_replicas.remove(&labels);
            self.needed_replicas.remove(&labels);
            for direction in [
                crate::autoscaler::Direction::Up,
                crate::autoscaler::Direction::Down,
            ]
            .map(crate::autoscaler::Direction::metric_label)
            {
                for reason in crate::scaler::kinds::ALL {
                    self.scaling_decisions.remove(&DecisionLabels {
                        namespace: namespace.into(),
                        event: event.into(),
                        component: c.as_str(),
                        direction,
                        reason,
                    });
                }
            }
        }
        let labels = EventLabels {
            namespace: namespace.into(),
            event: event.into(),
        };
        self.queue_depth.remove(&labels);
        self.active_users.remove(&labels);
        self.admission_rate.remove(&labels);
        self.admission_max_active.remove(&labels);
        self.signals_healthy.remove(&labels);
        // Decision series carry free combinations of direction and reason; drop them all.
        for c in Component::ALL {
            for direction in ["up", "down", "hold"] {
                for reason in crate::autoscaler::Reason::ALL {
                    self.autoscaler_decisions.remove(&AutoscalerDecisionLabels {
                        namespace: namespace.into(),
                        event: event.into(),
                        component: c.as_str(),
                        direction,
                        reason: reason.label(),
                    });
                }
            }
        }
    }
}

/// Records the elapsed time into the reconcile histogram on drop.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The series the autoscaler sets for one event on every tick, found once per event and kept
/// (a gauge or counter handle shares its value with the family's series): at 10,000 events,
/// building the label strings and finding them in the families on every tick cost a tenth of
/// the tick. After the per-event gauges were dropped (this replica stepped down) the handles
/// would point at series no longer exported, so [`EventSeries::refresh`] finds them again.
#[derive(Clone, Debug)]
pub struct EventSeries {
    generation: u64,
    labels: EventLabels,
    queue_depth: Gauge,
    active_users: Gauge,
    signals_healthy: Gauge,
    need: Vec<(Component, Option<Gauge>)>,
    decisions: Vec<((Component, &'static str, &'static str), Counter)>,
}

impl EventSeries {
    /// Finds the gauges again if they were dropped since they were found.
    pub fn refresh(&mut self, m: &Metrics) {
        let now = m.gauges_dropped.load(std::sync::atomic::Ordering::Acquire);
        if now != self.generation {
            let decisions = std::mem::take(&mut self.decisions);
            *self = m.event_series(self.labels.namespace.clone(), self.labels.event.clone());
            // Counters are never dropped with the gauges: their handles stay good.
            self.decisions = decisions;
        }
    }

    pub fn labels(&self) -> &EventLabels {
        &self.labels
    }

    pub fn queue_depth(&self) -> &Gauge {
        &self.queue_depth
    }

    pub fn active_users(&self) -> &Gauge {
        &self.active_users
    }

    pub fn signals_healthy(&self) -> &Gauge {
        &self.signals_healthy
    }

    /// `tiketi_operator_autoscaler_decisions_total` for one component, direction and reason.
    pub fn decision(
        &mut self,
        m: &Metrics,
        c: Component,
        direction: &'static str,
        reason: &'static str,
    ) -> &Counter {
        let key = (c, direction, reason);
        let i = match self.decisions.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let counter = m
                    .autoscaler_decisions
                    .get_or_create(&AutoscalerDecisionLabels {
                        namespace: self.labels.namespace.clone(),
                        event: self.labels.event.clone(),
                        component: c.as_str(),
                        direction,
                        reason,
                    })
                    .clone();
                self.decisions.push((key, counter));
                self.decisions.len() - 1
            }
        };
        &self.decisions[i].1
    }

    /// The capacity need of a component; `None` removes the series (as [`Metrics::set_need`]).
    pub fn set_need(&mut self, m: &Metrics, c: Component, need: Option<u32>) {
        // An entry: what this handle did last (Some: the series' gauge; None: removed it).
        let at = self.need.iter().position(|(k, _)| *k == c);
        match (need, at.map(|i| &self.need[i].1)) {
            (Some(n), Some(Some(gauge))) => {
                gauge.set(i64::from(n));
                return;
            }
            (None, Some(None)) => return,
            _ => {}
        }
        let gauge = need.map(|n| {
            let gauge = m
                .needed_replicas
                .get_or_create(&ComponentLabels {
                    namespace: self.labels.namespace.clone(),
                    event: self.labels.event.clone(),
                    component: c.as_str(),
                })
                .clone();
            gauge.set(i64::from(n));
            gauge
        });
        if gauge.is_none() {
            m.set_need(&self.labels.namespace, &self.labels.event, c, None);
        }
        match at {
            Some(i) => self.need[i].1 = gauge,
            None => self.need.push((c, gauge)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.set_phase("ns", "ev", Phase::PreWarming);
        m.set_replicas("ns", "ev", Component::Queue, 5, 3);
        m.set_admission("ns", "ev", &AdmissionSpec::default());
        drop(m.reconcile_timer());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"tiketi_operator_event_phase{namespace="ns",event="ev",phase="PreWarming"} 1"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tiketi_operator_admission_rate_per_second{namespace="ns",event="ev"} 50"#),
            "{out}"
        );
        assert!(
            out.contains(r#"tiketi_operator_admission_max_active{namespace="ns",event="ev"} 2000"#),
            "{out}"
        );
        // Only the current phase: a phase change moves the one series.
        assert!(!out.contains(r#"phase="OnSale""#), "{out}");
        m.set_phase("ns", "ev", Phase::OnSale);
        let mut moved = String::new();
        prometheus_client::encoding::text::encode(&mut moved, &registry).unwrap();
        assert!(moved.contains(r#"tiketi_operator_event_phase{namespace="ns",event="ev",phase="OnSale"} 1"#));
        assert!(!moved.contains(r#"phase="PreWarming""#), "{moved}");
        assert!(
            out.contains(
                r#"tiketi_operator_desired_replicas{namespace="ns",event="ev",component="queue"} 5"#
            )
        );
        assert!(out.contains("tiketi_operator_reconcile_duration_seconds_count 1"));
        m.forget_event("ns", "ev");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(!out.contains(r#"event="ev""#));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod forget_tests {
    use super::*;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn a_deleted_event_and_a_step_down_leave_no_stale_series() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.set_replicas("ns", "iu", Component::Queue, 8, 6);
        m.set_need("ns", "iu", Component::Queue, Some(8));
        m.set_phase("ns", "iu", Phase::Failed);
        m.set_admission("ns", "iu", &AdmissionSpec::default());
        m.scaling_decisions
            .get_or_create(&DecisionLabels {
                namespace: "ns".into(),
                event: "iu".into(),
                component: "queue",
                direction: "up",
                reason: crate::scaler::kinds::SCALE_OUT,
            })
            .inc();
        assert!(text(&registry).contains("event=\"iu\""));
        m.forget_event("ns", "iu");
        assert!(!text(&registry).contains("event=\"iu\""), "{}", text(&registry));

        m.set_phase("ns", "iu", Phase::Failed);
        m.set_replicas("ns", "iu", Component::Queue, 8, 6);
        m.set_admission("ns", "iu", &AdmissionSpec::default());
        m.forget_event_gauges();
        let t = text(&registry);
        assert!(
            !t.contains("tiketi_operator_event_phase{")
                && !t.contains("tiketi_operator_desired_replicas{")
                && !t.contains("tiketi_operator_admission_rate_per_second{"),
            "{t}"
        );
    }

    #[test]
    fn kept_series_handles_show_in_the_registry_and_survive_a_step_down() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        let mut series = m.event_series("ns".into(), "iu".into());
        series.queue_depth().set(120);
        series.set_need(&m, Component::Queue, Some(7));
        series
            .decision(&m, Component::Queue, "hold", "WithinThresholds")
            .inc();
        series
            .decision(&m, Component::Queue, "hold", "WithinThresholds")
            .inc();
        let t = text(&registry);
        assert!(
            t.contains(r#"tiketi_operator_queue_depth{namespace="ns",event="iu"} 120"#),
            "{t}"
        );
        assert!(
            t.contains(r#"tiketi_operator_needed_replicas{namespace="ns",event="iu",component="queue"} 7"#),
            "{t}"
        );
        assert!(t.contains(r#"reason="WithinThresholds"} 2"#), "{t}");

        // Need gone: the series goes (and is made again when a need returns).
        series.set_need(&m, Component::Queue, None);
        assert!(!text(&registry).contains("tiketi_operator_needed_replicas{"));
        series.set_need(&m, Component::Queue, Some(3));
        assert!(text(&registry).contains(r#"component="queue"} 3"#));

        // Stepping down drops the gauges; a refreshed handle exports them again, the counter
        // keeps counting where it was.
        m.forget_event_gauges();
        assert!(!text(&registry).contains("tiketi_operator_queue_depth{"));
        series.refresh(&m);
        series.queue_depth().set(5);
        series.set_need(&m, Component::Queue, Some(4));
        series
            .decision(&m, Component::Queue, "hold", "WithinThresholds")
            .inc();
        let t = text(&registry);
        assert!(
            t.contains(r#"tiketi_operator_queue_depth{namespace="ns",event="iu"} 5"#),
            "{t}"
        );
        assert!(t.contains(r#"component="queue"} 4"#), "{t}");
        assert!(t.contains(r#"reason="WithinThresholds"} 3"#), "{t}");
    }

    #[test]
    fn api_paths_are_labelled_with_their_resource() {
        let of = |m: &str, p: &str| {
            let l = ApiRequestLabels::of(&m.parse().unwrap(), p);
            (l.method, l.resource)
        };
        assert_eq!(of("GET", "/api/v1/namespaces/ns/secrets/x"), ("get", "secrets"));
        assert_eq!(
            of(
                "PATCH",
                "/apis/tiketi.gg/v1alpha1/namespaces/ns/ticketingevents/e/status"
            ),
            ("patch", "ticketingevents/status")
        );
        assert_eq!(
            of("PATCH", "/apis/apps/v1/namespaces/ns/deployments/d"),
            ("patch", "deployments")
        );
        assert_eq!(
            of("GET", "/apis/apps/v1/namespaces/ns/deployments"),
            ("get", "deployments")
        );
        assert_eq!(
            of("POST", "/apis/events.k8s.io/v1/namespaces/ns/events"),
            ("post", "events")
        );
        assert_eq!(
            of("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x"),
            ("get", "customresourcedefinitions")
        );
        assert_eq!(
            of("GET", "/apis/tiketi.gg/v1alpha1/ticketingevents"),
            ("get", "ticketingevents")
        );
        assert_eq!(of("PROPFIND", "/version"), ("other", "other"));
        assert_eq!(of("GET", "/api/v1/namespaces/ns/pods/p"), ("get", "other"));
    }
}
