//! JSON bodies of the HTTP API (also the OpenAPI schemas).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Counts, SeatStatus};

/// `POST /v1/events/{event}/holds` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"seats": ["A-1-1", "A-1-2"]}))]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// Seat ids from the seat map (`<section>-<row>-<seat>` or `<area>-<n>`), all held or none.
    #[schema(min_items = 1, max_items = 64)]
    pub seats: Vec<String>,
}

/// A live hold.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub hold_id: Uuid,
    pub event_id: String,
    pub user_id: String,
    pub seats: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// A confirmed order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: Uuid,
    pub event_id: String,
    pub hold_id: Uuid,
    pub user_id: String,
    pub seats: Vec<String>,
    /// `confirmed` (or `cancelled`, which only an operator sets).
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// One seat of the seat map.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Seat {
    pub id: String,
    pub section: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u32>,
    pub number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_tier: Option<String>,
    pub status: SeatStatus,
}

/// `GET /v1/events/{event}/seats`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatMap {
    pub event_id: String,
    pub counts: Counts,
    pub sold_out: bool,
    /// When this snapshot was taken; it is cached for about a second.
    pub as_of: DateTime<Utc>,
    pub seats: Vec<Seat>,
}

/// `GET /v1/events/{event}/availability`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    pub event_id: String,
    pub total: u64,
    pub sold: u64,
    pub held: u64,
    pub available: u64,
    pub sold_out: bool,
    pub as_of: DateTime<Utc>,
}

/// Body of `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}
