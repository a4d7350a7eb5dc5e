//! Kubernetes Events (events.k8s.io/v1) about TicketingEvents. kube-runtime's `Recorder` folds
//! Events with the same reason into one series and keeps the first note, which would hide every
//! replica change after the first ("ScaledOut reservation 3→5" then "5→7"); each decision here
//! is its own Event, as the design asks.
//!
//! A flood is cut like client-go's spam filter does: per (event, reason) a token bucket of
//! [`SpamFilter::BURST`] Events refilled one per [`SpamFilter::REFILL`]; what is over it is not
//! published (the decision is still in `status.recentDecisions`, the log and the metrics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::TicketingEvent;

pub use kube::runtime::events::EventType;

/// Per key, a token bucket: [`Self::BURST`] Events at once, then one per [`Self::REFILL`].
#[derive(Debug, Default)]
pub struct SpamFilter {
    buckets: HashMap<(String, String), (f64, Instant)>,
}

impl SpamFilter {
    pub const BURST: f64 = 25.0;
    pub const REFILL: Duration = Duration::from_secs(10);
    /// Buckets full again for this long are forgotten (bounded memory).
    const IDLE: Duration = Duration::from_secs(3_600);

    /// Takes a token for (`object`, `reason`) at `now`; false when the bucket is empty.
    pub fn allow(&mut self, object: &str, reason: &str, now: Instant) -> bool {
        if self.buckets.len() > 10_000 {
            self.buckets
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < Self::IDLE);
        }
        let (tokens, at) = self
            .buckets
            .entry((object.to_owned(), reason.to_owned()))
            .or_insert((Self::BURST, now));
        let refilled = now.saturating_duration_since(*at).as_secs_f64() / Self::REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(Self::BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Publishes Events as one reporting controller instance; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
    spam: Arc<Mutex<SpamFilter>>,
    suppressed: Option<
        prometheus_client::metrics::family::Family<
            crate::metrics::ReasonLabels,
            prometheus_client::metrics::counter::Counter,
        >,
    >,
}

impl EventPublisher {
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
            spam: Arc::default(),
            suppressed: None,
        }
    }

    /// Counts the Events the spam filter holds back in `metrics` (`events_suppressed_total`).
    pub fn counting(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.suppressed = Some(metrics.events_suppressed.clone());
        self
    }

    /// Publishes one Event about `tev`; a failure is logged, never fatal (Events are best effort).
    pub async fn publish(
        &self,
        tev: &TicketingEvent,
        type_: EventType,
        reason: &'static str,
        action: &str,
        note: String,
    ) {
        let Some(ns) = tev.namespace() else { return };
        let object = tev.uid().unwrap_or_else(|| format!("{ns}/{}", tev.name_any()));
        let allowed =
            self.spam
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allow(&object, reason, Instant::now());
        if !allowed {
            if let Some(c) = &self.suppressed {
                c.get_or_create(&crate::metrics::ReasonLabels { reason }).inc();
            }
            tracing::debug!(event = %tev.name_any(), %reason, %note, "Event not published: rate-limited");
            return;
        }
        let now = Utc::now();
        let micro = k8s_openapi::jiff::Timestamp::from_microsecond(now.timestamp_micros())
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    tev.name_any(),
                    now.timestamp_nanos_opt().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(micro)),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            reason: Some(reason.into()),
            action: Some(action.into()),
            note: Some(bounded(&note, 1024)),
            regarding: Some(tev.object_ref(&())),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(bounded(&self.instance, 128)),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(event = %tev.name_any(), %reason, error = %e, "cannot publish Event");
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max.saturating_sub(3);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spam_filter_allows_a_burst_then_one_per_refill_per_object_and_reason() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let burst = SpamFilter::BURST as usize;
        assert!((0..burst).all(|_| f.allow("e1", "ScaledOut", t0)));
        assert!(!f.allow("e1", "ScaledOut", t0), "over the burst");
        assert!(f.allow("e1", "ScaledIn", t0), "another reason has its own bucket");
        assert!(f.allow("e2", "ScaledOut", t0), "another event has its own bucket");
        assert!(!f.allow("e1", "ScaledOut", t0 + SpamFilter::REFILL / 2));
        assert!(f.allow("e1", "ScaledOut", t0 + SpamFilter::REFILL));
        assert!(!f.allow("e1", "ScaledOut", t0 + SpamFilter::REFILL));
        // Quiet for long enough: the whole burst again, never more.
        let later = t0 + SpamFilter::REFILL * 1_000;
        assert!((0..burst).all(|_| f.allow("e1", "ScaledOut", later)));
        assert!(!f.allow("e1", "ScaledOut", later));
    }

    #[test]
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("abc", 10), "abc");
        let b = bounded(&"é".repeat(100), 11);
        assert!(b.len() <= 11 && b.ends_with("..."));
    }
}
