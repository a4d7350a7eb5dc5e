//! Seat rules with no Redis or SQL in sight: validating a hold request against the inventory and
//! the per-user cap, the idempotency fingerprint of a confirm, the inventory-change guard (never
//! remove a sold seat) and the availability arithmetic. Everything here is tested with plain values.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use tiketi_shared::config::SeatSpec;

/// Value a seat's Redis lock takes once the seat is sold (no TTL). A hold id is a UUID, so the two
/// can never be confused.
pub const SOLD_MARKER: &str = "sold";

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Status of one seat in the seat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SeatStatus {
    Available,
    Held,
    Sold,
}

/// Sold / held / available counts of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub total: u64,
    pub sold: u64,
    pub held: u64,
    pub available: u64,
}

impl Counts {
    /// Nothing is left to sell: every place is sold. Seats that are merely held are not "gone",
    /// because holds expire.
    pub fn sold_out(&self) -> bool {
        self.total > 0 && self.sold >= self.total
    }

    pub fn from_statuses(statuses: &[SeatStatus]) -> Self {
        let mut c = Counts {
            total: statuses.len() as u64,
            ..Counts::default()
        };
        for s in statuses {
            match s {
                SeatStatus::Available => c.available += 1,
                SeatStatus::Held => c.held += 1,
                SeatStatus::Sold => c.sold += 1,
            }
        }
        c
    }
}

/// Combines what PostgreSQL (sold) and Redis (lock values) say about one seat. PostgreSQL is the
/// truth for "sold"; a Redis sold marker counts too, because the reader endpoint may lag the writer.
pub fn seat_status(sold_in_db: bool, redis_value: Option<&str>) -> SeatStatus {
    match (sold_in_db, redis_value) {
        (true, _) | (false, Some(SOLD_MARKER)) => SeatStatus::Sold,
        (false, Some(_)) => SeatStatus::Held,
        (false, None) => SeatStatus::Available,
    }
}

/// Why a hold request is refused before touching Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldRequestError {
    #[error("a hold needs at least one seat")]
    Empty,
    #[error("seat {0:?} is listed more than once")]
    Duplicate(String),
    #[error("{} seat(s) requested but at most {max} may be held per user", .requested)]
    TooMany { requested: usize, max: u32 },
    #[error("unknown seats: {0:?}")]
    UnknownSeats(Vec<String>),
}

impl HoldRequestError {
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Empty => "no-seats",
            Self::Duplicate(_) => "duplicate-seats",
            Self::TooMany { .. } => "too-many-seats",
            Self::UnknownSeats(_) => "unknown-seats",
        }
    }
}

/// Validates the requested seats against the event's seat index and the per-user cap. Returns
/// the seats in request order.
pub fn validate_hold_request<V>(
    seats: &[String],
    index: &HashMap<String, V>,
    max_per_user: u32,
) -> Result<Vec<String>, HoldRequestError> {
    if seats.is_empty() {
        return Err(HoldRequestError::Empty);
    }
    if seats.len() > max_per_user as usize {
        return Err(HoldRequestError::TooMany {
            requested: seats.len(),
            max: max_per_user,
        });
    }
    let mut seen = BTreeSet::new();
    for s in seats {
        if !seen.insert(s.as_str()) {
            return Err(HoldRequestError::Duplicate(s.clone()));
        }
    }
    let unknown: Vec<String> = seats
        .iter()
        .filter(|s| !index.contains_key(s.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(HoldRequestError::UnknownSeats(unknown));
    }
    Ok(seats.to_vec())
}

/// Checks an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn valid_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// What an idempotency record is keyed on besides (user, key): the request it answered. A second
/// request with the same key and a different fingerprint is refused with 422.
pub fn confirm_fingerprint(hold_id: &uuid::Uuid) -> String {
    format!("POST /v1/holds/{hold_id}/confirm")
}

/// Sold seats that a new inventory would remove: a non-empty result refuses the change.
pub fn removed_sold_seats<'a>(
    new_inventory: impl IntoIterator<Item = &'a SeatSpec>,
    sold: &[String],
) -> Vec<String> {
    let keep: BTreeSet<&str> = new_inventory.into_iter().map(|s| s.id.as_str()).collect();
    let mut gone: Vec<String> = sold
        .iter()
        .filter(|s| !keep.contains(s.as_str()))
        .cloned()
        .collect();
    gone.sort();
    gone.dedup();
    gone
}

/// Outcome of the hold script, decoded from its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Held,
    /// These seats are locked by another hold or sold.
    Taken(Vec<String>),
    /// The user already holds `current` seats; adding the request would pass the cap.
    OverCap {
        current: u64,
    },
    /// The queue has admitted users for this event and this user is not (or no longer) one of
    /// them: left the line, or the admission expired.
    NotAdmitted,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn index(ids: &[&str]) -> HashMap<String, usize> {
        ids.iter().enumerate().map(|(i, s)| (s.to_string(), i)).collect()
    }

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hold_requests_are_validated_with_named_problems() {
        let idx = index(&["A-1-1", "A-1-2", "A-1-3"]);
        type Case = (Vec<String>, Result<Vec<String>, HoldRequestError>);
        let table: Vec<Case> = vec![
            (v(&["A-1-2", "A-1-1"]), Ok(v(&["A-1-2", "A-1-1"]))),
            (v(&[]), Err(HoldRequestError::Empty)),
            (
                v(&["A-1-1", "A-1-1"]),
                Err(HoldRequestError::Duplicate("A-1-1".into())),
            ),
            (
                v(&["A-1-1", "Z-9-9", "A-1-2"]),
                Err(HoldRequestError::UnknownSeats(v(&["Z-9-9"]))),
            ),
            (
                v(&["A-1-1", "A-1-2", "A-1-3", "A-1-4"]),
                Err(HoldRequestError::TooMany { requested: 4, max: 3 }),
            ),
        ];
        for (input, want) in table {
            assert_eq!(validate_hold_request(&input, &idx, 3), want, "{input:?}");
        }
        assert_eq!(HoldRequestError::Empty.slug(), "no-seats");
    }

    #[test]
    fn seat_status_prefers_postgres_and_sold_markers() {
        assert_eq!(seat_status(true, None), SeatStatus::Sold);
        assert_eq!(seat_status(true, Some("some-hold")), SeatStatus::Sold);
        assert_eq!(seat_status(false, Some(SOLD_MARKER)), SeatStatus::Sold);
        assert_eq!(seat_status(false, Some("3f1c…")), SeatStatus::Held);
        assert_eq!(seat_status(false, None), SeatStatus::Available);
    }

    #[test]
    fn counts_add_up_and_sold_out_means_all_sold() {
        use SeatStatus::*;
        let c = Counts::from_statuses(&[Sold, Held, Available, Sold]);
        assert_eq!(
            c,
            Counts {
                total: 4,
                sold: 2,
                held: 1,
                available: 1
            }
        );
        assert_eq!(c.sold + c.held + c.available, c.total);
        assert!(!c.sold_out());
        assert!(
            !Counts::from_statuses(&[Sold, Held]).sold_out(),
            "held seats can come back"
        );
        assert!(Counts::from_statuses(&[Sold, Sold]).sold_out());
        assert!(!Counts::default().sold_out());
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(valid_idempotency_key("8b1c-attempt-1"));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"x".repeat(256)));
        assert!(valid_idempotency_key(&"x".repeat(255)));
        let a = uuid::Uuid::new_v4();
        assert_ne!(
            confirm_fingerprint(&a),
            confirm_fingerprint(&uuid::Uuid::new_v4())
        );
        assert_eq!(confirm_fingerprint(&a), confirm_fingerprint(&a));
    }

    #[test]
    fn an_inventory_change_may_not_remove_a_sold_seat() {
        let inv = tiketi_shared::config::Inventory {
            sections: vec![tiketi_shared::config::SeatedSection {
                name: "A".into(),
                rows: 1,
                seats_per_row: 2,
                price_tier: None,
            }],
            general_admission: vec![],
        };
        let seats: Vec<SeatSpec> = inv.seats().collect();
        assert!(removed_sold_seats(&seats, &v(&["A-1-2", "A-1-1"])).is_empty());
        assert_eq!(
            removed_sold_seats(&seats, &v(&["A-1-3", "B-1-1", "A-1-3"])),
            v(&["A-1-3", "B-1-1"])
        );
        assert!(removed_sold_seats(&seats, &[]).is_empty());
    }
}
