//! Wire types of the HTTP API (also the OpenAPI schemas).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::ShuffleRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// In line (or in the pre-queue before the on-sale time).
    Waiting,
    /// Admitted: `admission` carries the token for the reservation service.
    Admitted,
    /// The sale has ended (`saleEndsAt` passed).
    Closed,
    /// Everything is sold; the queue no longer admits.
    SoldOut,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtaRange {
    pub min_seconds: u64,
    pub max_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    /// Signed admission token (JWT): send it as `X-Admission-Token` to the reservation service.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub expires_at_ms: i64,
}

/// A user's standing in an event's waiting room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub event_id: String,
    pub state: State,
    /// 1-based place in line; absent in the pre-queue (the order is drawn at the on-sale time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// True while waiting in the pre-queue, before the on-sale time.
    pub pre_queue: bool,
    /// Users in the pre-queue (only while in it): the place after the draw is uniform in 1..=this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_queue_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_range: Option<EtaRange>,
    pub on_sale_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
    /// Poll again after this many seconds (streams push instead).
    pub poll_after_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub event_id: String,
    pub on_sale_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// waiting users (the operator's `queueDepth` signal)
    pub queue_depth: u64,
    pub pre_queue_depth: u64,
    /// admitted users whose admission has not expired (`activeUsers`)
    pub active_users: u64,
    pub admitted_total: u64,
    pub sold_out: bool,
    pub rate_per_second: u32,
    pub max_active: u32,
    /// Admissions per second measured over the last 30 s, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_rate_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<ShuffleRecord>,
}
