//! Prometheus metrics of the queue service. Labels are bounded: event ids come from the event
//! configuration (a handful per replica), routes are axum's matched path templates.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JoinLabels {
    pub event: String,
    /// new | repeat | prequeue | admitted | sold_out | closed
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub joins: Family<JoinLabels, Counter>,
    pub admissions: Family<EventLabel, Counter>,
    pub dropped: Family<EventLabel, Counter>,
    pub depth: Family<EventLabel, Gauge>,
    pub prequeue_depth: Family<EventLabel, Gauge>,
    pub active_users: Family<EventLabel, Gauge>,
    pub leader: Family<EventLabel, Gauge>,
    pub streams: Gauge,
    pub requests: Family<RequestLabels, Histogram>,
    pub redis_errors: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ReasonLabel, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            joins: Family::default(),
            admissions: Family::default(),
            dropped: Family::default(),
            depth: Family::default(),
            prequeue_depth: Family::default(),
            active_users: Family::default(),
            leader: Family::default(),
            streams: Gauge::default(),
            requests: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 14))),
            redis_errors: Family::default(),
            rate_limited: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tiketi_queue");
        r.register("joins", "Join requests by outcome", m.joins.clone());
        r.register(
            "admissions",
            "Users moved from the queue to the active set",
            m.admissions.clone(),
        );
        r.register(
            "dropped",
            "Waiting users dropped for missing heartbeats",
            m.dropped.clone(),
        );
        r.register(
            "depth",
            "Waiting users (ZCARD of the queue), as last seen",
            m.depth.clone(),
        );
        r.register(
            "prequeue_depth",
            "Users in the pre-queue, as last seen",
            m.prequeue_depth.clone(),
        );
        r.register(
            "active_users",
            "Admitted users whose admission has not expired",
            m.active_users.clone(),
        );
        r.register(
            "admission_leader",
            "1 while this replica holds the admission lease",
            m.leader.clone(),
        );
        r.register("sse_streams", "Open server-sent-event streams", m.streams.clone());
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            m.requests.clone(),
        );
        r.register(
            "redis_errors",
            "Failed Redis calls by kind",
            m.redis_errors.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused with 429 by scope",
            m.rate_limited.clone(),
        );
        m
    }

    pub fn event(event: &str) -> EventLabel {
        EventLabel {
            event: event.to_owned(),
        }
    }
}

/// Records a request's latency when dropped, so early returns are measured too.
pub struct RequestTimer {
    started: Instant,
    family: Family<RequestLabels, Histogram>,
    labels: Option<RequestLabels>,
}

impl RequestTimer {
    pub fn start(family: &Family<RequestLabels, Histogram>) -> Self {
        Self {
            started: Instant::now(),
            family: family.clone(),
            labels: None,
        }
    }

    pub fn set(&mut self, labels: RequestLabels) {
        self.labels = Some(labels);
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            self.family
                .get_or_create(&labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}
