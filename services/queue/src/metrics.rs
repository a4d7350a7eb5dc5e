//! Prometheus metrics of the queue service. Labels are bounded: event ids come from the event
//! configuration (a handful per replica), routes are axum's matched path templates.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tiketi_shared::http::RequestDurations;

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
    /// `http_request_duration_seconds{method,route,status_class}` of the API routes, the same
    /// histogram as the reservation service's (`tiketi_shared::http::track_requests` records it).
    pub requests: RequestDurations,
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
            requests: RequestDurations::default(),
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
            tiketi_shared::http::REQUEST_DURATION_HELP,
            m.requests.family(),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::{Method, StatusCode};
    use std::time::Duration;

    #[test]
    fn the_request_histogram_has_the_shared_name_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.requests.observe(
            &Method::POST,
            "/v1/events/{event}/queue",
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(3),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let name = format!("tiketi_queue_{}_count", tiketi_shared::http::REQUEST_DURATION);
        assert!(
            text.contains(&format!(
                r#"{name}{{method="POST",route="/v1/events/{{event}}/queue",status_class="5xx"}} 1"#
            )),
            "{text}"
        );
    }
}
