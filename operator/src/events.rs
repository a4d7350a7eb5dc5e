//! Kubernetes Events (events.k8s.io/v1) about TicketingEvents. kube-runtime's `Recorder` folds
//! Events with the same reason into one series and keeps the first note, which would hide every
//! replica change after the first ("ScaledOut reservation 3→5" then "5→7"); each decision here
//! is its own Event, as the design asks.

use chrono::Utc;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt};

use crate::crd::TicketingEvent;

pub use kube::runtime::events::EventType;

/// Publishes Events as one reporting controller instance; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    client: Client,
    controller: String,
    instance: String,
}

impl EventPublisher {
    pub fn new(client: Client, controller: impl Into<String>, instance: impl Into<String>) -> Self {
        Self {
            client,
            controller: controller.into(),
            instance: instance.into(),
        }
    }

    /// Publishes one Event about `tev`; a failure is logged, never fatal (Events are best effort).
    pub async fn publish(
        &self,
        tev: &TicketingEvent,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let Some(ns) = tev.namespace() else { return };
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
    fn bounded_cuts_on_char_boundaries() {
        assert_eq!(bounded("abc", 10), "abc");
        let b = bounded(&"é".repeat(100), 11);
        assert!(b.len() <= 11 && b.ends_with("..."));
    }
}
