//! Prometheus metrics of the reservation service. Every label is a bounded set: outcomes are
//! fixed strings, routes are axum's matched path templates, events are the configured events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tiketi_shared::http::RequestDurations;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    /// `hold` (Redis lock taken) or `confirm` (PostgreSQL constraint or live lock refused it).
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: &'static str,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeatLabels {
    pub event: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    pub dependency: &'static str,
}

pub struct Metrics {
    pub holds: Family<OutcomeLabels, Counter>,
    pub confirms: Family<OutcomeLabels, Counter>,
    pub releases: Family<OutcomeLabels, Counter>,
    pub conflicts: Family<ConflictLabels, Counter>,
    pub idempotent_replays: Counter,
    /// `http_request_duration_seconds{method,route,status_class}` of the API routes, the same
    /// histogram as the queue's (`tiketi_shared::http::track_requests` records it).
    pub request_duration: RequestDurations,
    pub pool_connections: Family<PoolLabels, Gauge>,
    pub inventory_refused: Family<EventLabels, Counter>,
    pub seats: Family<SeatLabels, Gauge>,
    pub dependency_errors: Family<DependencyLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            holds: Family::default(),
            confirms: Family::default(),
            releases: Family::default(),
            conflicts: Family::default(),
            idempotent_replays: Counter::default(),
            request_duration: RequestDurations::default(),
            pool_connections: Family::default(),
            inventory_refused: Family::default(),
            seats: Family::default(),
            dependency_errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("tiketi_reservation");
        r.register("holds", "Hold requests by outcome", m.holds.clone());
        r.register("confirms", "Confirm requests by outcome", m.confirms.clone());
        r.register("releases", "Release requests by outcome", m.releases.clone());
        r.register("conflicts", "Seats found taken, by stage", m.conflicts.clone());
        r.register(
            "idempotent_replays",
            "Confirms answered from a stored Idempotency-Key record",
            m.idempotent_replays.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            tiketi_shared::http::REQUEST_DURATION_HELP,
            m.request_duration.family(),
        );
        r.register(
            "db_pool_connections",
            "PostgreSQL pool connections by pool and state (open, idle, max)",
            m.pool_connections.clone(),
        );
        r.register(
            "inventory_refused",
            "Inventory changes refused because they would remove sold seats",
            m.inventory_refused.clone(),
        );
        r.register("seats", "Seats by status (as last computed)", m.seats.clone());
        r.register(
            "dependency_errors",
            "Redis or PostgreSQL calls that failed or timed out",
            m.dependency_errors.clone(),
        );
        m
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
        m.request_duration.observe(
            &Method::POST,
            "/v1/events/{event}/holds",
            StatusCode::CREATED,
            Duration::from_millis(3),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let name = format!(
            "tiketi_reservation_{}_count",
            tiketi_shared::http::REQUEST_DURATION
        );
        assert!(
            text.contains(&format!(
                r#"{name}{{method="POST",route="/v1/events/{{event}}/holds",status_class="2xx"}} 1"#
            )),
            "{text}"
        );
    }
}
