//! Prometheus metrics of the reservation service. Every label is a bounded set: outcomes are
//! fixed strings, routes are axum's matched path templates, events are the configured events.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
    pub status_class: &'static str,
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

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub holds: Family<OutcomeLabels, Counter>,
    pub confirms: Family<OutcomeLabels, Counter>,
    pub releases: Family<OutcomeLabels, Counter>,
    pub conflicts: Family<ConflictLabels, Counter>,
    pub idempotent_replays: Counter,
    pub request_duration: LatencyFamily,
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
            request_duration: Family::new_with_constructor(latency_histogram),
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
            "request_duration_seconds",
            "HTTP request latency by route and status class",
            m.request_duration.clone(),
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
