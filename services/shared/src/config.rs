//! The event configuration the operator writes into each event's ConfigMap and the services read
//! from `TIKETI_EVENT_CONFIG`. One JSON object per event (camelCase). `TIKETI_EVENT_CONFIG` may name
//! a file holding one object or an array of them, or a directory whose `*.json` files each hold one
//! (hidden entries such as a ConfigMap volume's `..data` are skipped).
//!
//! Also the one way every tiketi flag that is a duration is written: [`parse_duration`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// File name of the event configuration inside the ConfigMap the operator writes.
pub const CONFIG_FILE_NAME: &str = "event.json";

/// Hard bound on the seats of one event (also enforced by the CRD schema).
pub const MAX_SEATS_PER_EVENT: u64 = 200_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventConfig {
    pub event_id: String,
    pub on_sale_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale_ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub queue: QueueSettings,
    #[serde(default)]
    pub reservation: ReservationSettings,
    #[serde(default)]
    pub inventory: Inventory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueSettings {
    /// Users admitted per second at most.
    pub rate_per_second: u32,
    /// Users admitted at once at most.
    pub max_active: u32,
    /// How long an admission (and its token) lasts.
    pub token_ttl_seconds: u64,
    /// A waiting user who has not polled or streamed for this long loses their place.
    pub heartbeat_timeout_seconds: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            rate_per_second: 50,
            max_active: 2000,
            token_ttl_seconds: 600,
            heartbeat_timeout_seconds: 120,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReservationSettings {
    /// How long a hold keeps its seats.
    pub hold_ttl_seconds: u64,
    /// Seats one user may hold at once.
    pub max_seats_per_user: u32,
}

impl Default for ReservationSettings {
    fn default() -> Self {
        Self {
            hold_ttl_seconds: 300,
            max_seats_per_user: 4,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub sections: Vec<SeatedSection>,
    #[serde(default)]
    pub general_admission: Vec<GeneralAdmission>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeatedSection {
    pub name: String,
    pub rows: u32,
    pub seats_per_row: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_tier: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GeneralAdmission {
    pub name: String,
    pub capacity: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_tier: Option<String>,
}

/// One sellable place: a numbered seat or one unit of a general-admission area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatSpec {
    /// Stable id: `<section>-<row>-<seat>` for seats, `<area>-<n>` for general admission.
    pub id: String,
    pub section: String,
    pub row: Option<u32>,
    pub number: u32,
    pub price_tier: Option<String>,
}

impl Inventory {
    /// Places in all sections and areas; saturates (never wraps) so the bound check sees a sum
    /// past `u64::MAX` as too large.
    pub fn total(&self) -> u64 {
        let seated = self
            .sections
            .iter()
            .map(|s| u64::from(s.rows) * u64::from(s.seats_per_row));
        let ga = self.general_admission.iter().map(|g| u64::from(g.capacity));
        seated.chain(ga).fold(0, u64::saturating_add)
    }

    /// Every sellable place, in a stable order.
    pub fn seats(&self) -> impl Iterator<Item = SeatSpec> + '_ {
        let seated = self.sections.iter().flat_map(|s| {
            (1..=s.rows).flat_map(move |row| {
                (1..=s.seats_per_row).map(move |n| SeatSpec {
                    id: format!("{}-{}-{}", s.name, row, n),
                    section: s.name.clone(),
                    row: Some(row),
                    number: n,
                    price_tier: s.price_tier.clone(),
                })
            })
        });
        let ga = self.general_admission.iter().flat_map(|g| {
            (1..=g.capacity).map(move |n| SeatSpec {
                id: format!("{}-{}", g.name, n),
                section: g.name.clone(),
                row: None,
                number: n,
                price_tier: g.price_tier.clone(),
            })
        });
        seated.chain(ga)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read event configuration {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event configuration {path} is not valid: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("event configuration {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// The longest token lifetime, heartbeat timeout or hold: 30 days (the CRD's 720h).
pub const MAX_DURATION_SECONDS: u64 = 30 * 24 * 3600;

impl EventConfig {
    /// Checks what serde cannot: names, bounds and time order.
    pub fn validate(&self) -> Result<(), String> {
        if !is_dns_label(&self.event_id) {
            return Err(format!(
                "eventId {:?} is not a DNS label (a-z, 0-9, '-', at most 63)",
                self.event_id
            ));
        }
        if let Some(end) = self.sale_ends_at
            && end <= self.on_sale_at
        {
            return Err("saleEndsAt must be after onSaleAt".into());
        }
        if self.queue.rate_per_second == 0 || self.queue.max_active == 0 || self.queue.token_ttl_seconds == 0
        {
            return Err("queue.ratePerSecond, maxActive and tokenTtlSeconds must be positive".into());
        }
        // 0 would drop every waiting user at each sweep (every second).
        if self.queue.heartbeat_timeout_seconds == 0 {
            return Err("queue.heartbeatTimeoutSeconds must be at least 1".into());
        }
        if self.reservation.hold_ttl_seconds == 0 || self.reservation.max_seats_per_user == 0 {
            return Err("reservation.holdTtlSeconds and maxSeatsPerUser must be positive".into());
        }
        // The CRD's bound too; the services add these to clocks, where a larger one overflows.
        for (name, secs) in [
            ("queue.tokenTtlSeconds", self.queue.token_ttl_seconds),
            (
                "queue.heartbeatTimeoutSeconds",
                self.queue.heartbeat_timeout_seconds,
            ),
            ("reservation.holdTtlSeconds", self.reservation.hold_ttl_seconds),
        ] {
            if secs > MAX_DURATION_SECONDS {
                return Err(format!(
                    "{name} is {secs}, above {MAX_DURATION_SECONDS} (30 days)"
                ));
            }
        }
        if self.inventory.total() > MAX_SEATS_PER_EVENT {
            return Err(format!(
                "inventory has {} places, above the bound {MAX_SEATS_PER_EVENT}",
                self.inventory.total()
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        let all_names = self
            .inventory
            .sections
            .iter()
            .map(|s| &s.name)
            .chain(self.inventory.general_admission.iter().map(|g| &g.name));
        for name in all_names {
            if name.is_empty()
                || name.len() > 32
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "section name {name:?} must be 1-32 ASCII letters, digits or '_'"
                ));
            }
            if !names.insert(name) {
                return Err(format!("section name {name:?} is used twice"));
            }
        }
        Ok(())
    }
}

/// True when `s` is an RFC 1123 DNS label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Loads every event configuration under `path` (file or directory), keyed by event id.
pub fn load(path: &Path) -> Result<BTreeMap<String, EventConfig>, ConfigError> {
    let display = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    let mut out = BTreeMap::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.') && name.ends_with(".json")
            })
            .collect();
        files.sort();
        for file in files {
            for cfg in parse_file(&file)? {
                out.insert(cfg.event_id.clone(), cfg);
            }
        }
    } else {
        for cfg in parse_file(path)? {
            out.insert(cfg.event_id.clone(), cfg);
        }
    }
    Ok(out)
}

fn parse_file(path: &Path) -> Result<Vec<EventConfig>, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: display.clone(),
        source,
    })?;
    let configs = parse_str(&text).map_err(|source| ConfigError::Parse {
        path: display.clone(),
        source,
    })?;
    for c in &configs {
        c.validate().map_err(|problem| ConfigError::Invalid {
            path: display.clone(),
            problem,
        })?;
    }
    Ok(configs)
}

/// The value parser of every duration flag of the services (`value_parser = parse_duration`):
/// humantime, like the operator's flags and the TicketingEvent spec — `250ms`, `2s`, `1m`,
/// `1h30m`, `1h 30m`, `1.5s`. A number without a unit is refused (is `1000` milliseconds or
/// seconds?), except `0`, which is zero in every unit. At most 30 days: the services add these
/// to clocks, where a far larger one overflows.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s != "0" && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!(
            "{s:?} has no unit: write a duration with one, like \"250ms\", \"2s\", \"1m\" or \"1h30m\""
        ));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like \"250ms\", \"2s\", \"1m\" or \"1h30m\" ({e})"))?;
    if d > Duration::from_secs(MAX_DURATION_SECONDS) {
        return Err(format!("{s:?} is longer than 30 days"));
    }
    Ok(d)
}

/// Parses one object or an array of objects.
pub fn parse_str(text: &str) -> Result<Vec<EventConfig>, serde_json::Error> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str(text)
    } else {
        Ok(vec![serde_json::from_str(text)?])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
        "eventId": "iu-2026-seoul",
        "onSaleAt": "2026-12-01T02:00:00Z",
        "queue": {"ratePerSecond": 50, "maxActive": 2000, "tokenTtlSeconds": 600, "heartbeatTimeoutSeconds": 120},
        "reservation": {"holdTtlSeconds": 300, "maxSeatsPerUser": 4},
        "inventory": {"sections": [{"name": "A", "rows": 2, "seatsPerRow": 3, "priceTier": "vip"}],
                      "generalAdmission": [{"name": "floor", "capacity": 4}]}
    }"#;

    #[test]
    fn parses_and_enumerates_seats() {
        let cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.validate().unwrap();
        assert_eq!(cfg.inventory.total(), 10);
        let ids: Vec<_> = cfg.inventory.seats().map(|s| s.id).collect();
        assert_eq!(ids.len(), 10);
        assert_eq!(ids[0], "A-1-1");
        assert_eq!(ids[5], "A-2-3");
        assert_eq!(ids[9], "floor-4");
    }

    #[test]
    fn refuses_bad_input_naming_the_problem() {
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.event_id = "Not_A_Label".into();
        assert!(cfg.validate().unwrap_err().contains("eventId"));
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.queue.heartbeat_timeout_seconds = 0;
        assert!(cfg.validate().unwrap_err().contains("heartbeatTimeoutSeconds"));
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.queue.heartbeat_timeout_seconds = MAX_DURATION_SECONDS;
        cfg.reservation.hold_ttl_seconds = MAX_DURATION_SECONDS;
        cfg.validate().unwrap();
        cfg.queue.heartbeat_timeout_seconds = u64::MAX;
        assert!(
            cfg.validate()
                .unwrap_err()
                .contains("heartbeatTimeoutSeconds is 18446744073709551615")
        );
        // Sizes whose sum passes u64::MAX (and would wrap to 10) are too large, not 10 places.
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        let huge = |rows| SeatedSection {
            name: format!("S{rows}"),
            rows,
            seats_per_row: u32::MAX,
            price_tier: None,
        };
        cfg.inventory.sections = vec![huge(u32::MAX), huge(2)];
        cfg.inventory.general_admission[0].capacity = 11;
        assert_eq!(cfg.inventory.total(), u64::MAX);
        assert!(cfg.validate().unwrap_err().contains("above the bound"));
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.queue.token_ttl_seconds = MAX_DURATION_SECONDS + 1;
        assert!(cfg.validate().unwrap_err().contains("tokenTtlSeconds"));
        let mut cfg = parse_str(EXAMPLE).unwrap().remove(0);
        cfg.reservation.hold_ttl_seconds = MAX_DURATION_SECONDS + 1;
        assert!(cfg.validate().unwrap_err().contains("holdTtlSeconds"));
        let err = parse_str(r#"{"eventId":"x","onSaleAt":"2026-12-01T02:00:00Z","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn durations_are_humantime_with_a_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration(" 1m ").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("720h").unwrap(),
            Duration::from_secs(MAX_DURATION_SECONDS)
        );
        for huge in ["721h", "10000000000000000000s"] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("longer than 30 days"), "{huge}: {err}");
        }
        for bare in ["1000", "3", "1.5"] {
            let err = parse_duration(bare).unwrap_err();
            assert!(
                err.contains("no unit") && err.contains("\"250ms\"") && err.contains("\"2s\""),
                "{err}"
            );
        }
        for bad in ["", "soon", "5 parsecs", "-1s", "1000 ms later"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("\"250ms\"") && err.contains("\"2s\""),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn loads_a_directory_skipping_hidden_entries() {
        let dir = std::env::temp_dir().join(format!("tiketi-cfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..data")).unwrap();
        std::fs::write(dir.join("event.json"), EXAMPLE).unwrap();
        std::fs::write(dir.join(".hidden.json"), "garbage").unwrap();
        let all = load(&dir).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["iu-2026-seoul"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
