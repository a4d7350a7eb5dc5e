//! The Redis key layout. This is the only place a key is spelled; the operator and both services
//! import it. Every key of an event shares the hash tag `{<event>}` so that, in Redis Cluster mode,
//! all of an event's keys live in one slot and multi-key scripts and pipelines stay legal.

/// Prefix of every key tiketi writes.
pub const PREFIX: &str = "tiketi";

/// The keys of one event. Construct with [`EventKeys::new`]; methods return owned key strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventKeys {
    base: String,
}

impl EventKeys {
    pub fn new(event_id: &str) -> Self {
        // `{PREFIX}:{{{event_id}}}:`, without the formatting machinery: the operator names
        // every event's keys on every tick.
        let mut base = String::with_capacity(PREFIX.len() + event_id.len() + 4);
        base.push_str(PREFIX);
        base.push_str(":{");
        base.push_str(event_id);
        base.push_str("}:");
        Self { base }
    }

    /// The hash tag shared by every key of this event, e.g. `{iu-2026-seoul}`; used to group
    /// pipelines per cluster slot.
    pub fn hash_tag(&self) -> &str {
        let inner = &self.base[PREFIX.len() + 1..];
        &inner[..inner.len() - 1]
    }

    fn key(&self, suffix: &str) -> String {
        let mut key = String::with_capacity(self.base.len() + suffix.len());
        key.push_str(&self.base);
        key.push_str(suffix);
        key
    }

    /// Sorted set of waiting users; its ZCARD is the `queueDepth` signal.
    pub fn queue(&self) -> String {
        self.key("queue")
    }

    /// Sorted set of admitted users, score = admission expiry in unix ms; members with score ≥ now
    /// are the `activeUsers` signal.
    pub fn active(&self) -> String {
        self.key("active")
    }

    /// Sorted set of users who joined before the on-sale time (the pre-queue), shuffled into the
    /// queue at the on-sale instant.
    pub fn prequeue(&self) -> String {
        self.key("prequeue")
    }

    /// Present while some queue replica could not serve heartbeats (shed under overload, or
    /// Redis too slow), with PX = the heartbeat timeout: the admitting replica sweeps nobody
    /// meanwhile, so an overload never costs a waiting user their place.
    pub fn heartbeats_shed(&self) -> String {
        self.key("heartbeats-shed")
    }

    /// Monotonic counter handing out queue sequence numbers (the FIFO score).
    pub fn seq(&self) -> String {
        self.key("seq")
    }

    /// Hash of per-user queue state (user → JSON), e.g. the ticket a user holds in line.
    pub fn users(&self) -> String {
        self.key("users")
    }

    /// Sorted set of waiting users by last heartbeat (unix ms); stale members lose their place.
    pub fn heartbeats(&self) -> String {
        self.key("heartbeats")
    }

    /// Counter of users admitted so far ("admitted up to"), broadcast to streams.
    pub fn admitted_total(&self) -> String {
        self.key("admitted-total")
    }

    /// The admission lease: exactly one queue replica admits at a time. Value = holder id.
    pub fn admission_lease(&self) -> String {
        self.key("admission-lease")
    }

    /// Fencing counter incremented on every lease acquisition.
    pub fn admission_fence(&self) -> String {
        self.key("admission-fence")
    }

    /// Hash `{last, credit}` of the admission rate limiter. It lives in Redis, not in the admitting
    /// replica, so a replica that takes over the lease continues the rate instead of bursting.
    pub fn admission_rate(&self) -> String {
        self.key("admission-rate")
    }

    /// Record of the pre-queue shuffle (seed and time) so it can be audited.
    pub fn shuffle(&self) -> String {
        self.key("shuffle")
    }

    /// Hash of availability counts written by the reservation service: `sold`, `held`,
    /// `available`, `total`, `updatedAt`.
    pub fn counts(&self) -> String {
        self.key("counts")
    }

    /// Present (value "1") once the event is sold out; the queue closes when it sees it.
    pub fn sold_out(&self) -> String {
        self.key("sold-out")
    }

    /// Lock on one seat while a hold is live. Value = hold id.
    pub fn seat_hold(&self, seat: &str) -> String {
        self.key(&format!("seat:{seat}"))
    }

    /// One hold's record (JSON), expiring with the hold.
    pub fn hold(&self, hold_id: &str) -> String {
        self.key(&format!("hold:{hold_id}"))
    }

    /// Sorted set of the event's seats under a live hold, score = lock expiry (unix ms), kept by the
    /// reservation service's hold scripts; `ZCOUNT <now> +inf` is the held count without reading
    /// every seat key.
    pub fn held_seats(&self) -> String {
        self.key("held-seats")
    }

    /// Set of seats a user currently holds (for the per-user cap).
    pub fn user_holds(&self, user: &str) -> String {
        self.key(&format!("user-holds:{user}"))
    }
}

/// Parses the event id back out of a key written by [`EventKeys`].
pub fn event_of_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?.strip_prefix(":{")?;
    let end = rest.find("}:")?;
    Some(&rest[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn contract_keys_are_spelled_as_designed() {
        let k = EventKeys::new("iu-2026-seoul");
        assert_eq!(k.queue(), "tiketi:{iu-2026-seoul}:queue");
        assert_eq!(k.active(), "tiketi:{iu-2026-seoul}:active");
        assert_eq!(k.seat_hold("A-1-2"), "tiketi:{iu-2026-seoul}:seat:A-1-2");
        assert_eq!(k.hash_tag(), "{iu-2026-seoul}");
    }

    #[test]
    fn every_key_is_documented_in_the_contracts() {
        let doc = include_str!("../../../docs/contracts.md");
        let k = EventKeys::new("<event>");
        for key in [
            k.queue(),
            k.prequeue(),
            k.active(),
            k.seq(),
            k.users(),
            k.heartbeats(),
            k.heartbeats_shed(),
            k.admitted_total(),
            k.admission_lease(),
            k.admission_fence(),
            k.admission_rate(),
            k.shuffle(),
            k.counts(),
            k.sold_out(),
            k.seat_hold("<seat>"),
            k.hold("<hold>"),
            k.held_seats(),
            k.user_holds("<user>"),
        ] {
            assert!(
                doc.contains(&format!("`{key}`")),
                "{key} is not in docs/contracts.md"
            );
        }
    }

    #[test]
    fn every_key_shares_the_hash_tag() {
        let k = EventKeys::new("e1");
        for key in [
            k.queue(),
            k.active(),
            k.prequeue(),
            k.counts(),
            k.sold_out(),
            k.hold("h"),
        ] {
            assert!(key.contains("{e1}"), "{key}");
            assert_eq!(event_of_key(&key), Some("e1"));
        }
    }
}
