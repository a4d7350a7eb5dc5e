//! The one TicketingEvent the unit tests start from. Each test states only what it depends on,
//! as a JSON merge patch (RFC 7386: objects merge, anything else replaces, null removes).

use super::TicketingEvent;

/// The smallest valid event: one seat, images `q` and `r`, Secrets `redis`, `db`, `auth`.
const BASE: &str = r#"
apiVersion: tiketi.gg/v1alpha1
kind: TicketingEvent
metadata: {name: e, namespace: n}
spec:
  onSaleAt: 2026-12-01T02:00:00Z
  inventory: {sections: [{name: A, rows: 1, seatsPerRow: 1}]}
  queue: {image: q}
  reservation: {image: r}
  redis: {urlSecretRef: {name: redis, key: url}}
  database: {secretRef: {name: db}}
  auth: {secretRef: {name: auth}}
"#;

/// [`BASE`] with `patch` merged in.
#[allow(clippy::expect_used)]
pub(crate) fn event(patch: serde_json::Value) -> TicketingEvent {
    let base: serde_yaml::Value = serde_yaml::from_str(BASE).expect("the base fixture parses");
    let mut doc = serde_json::to_value(base).expect("YAML is JSON");
    merge(&mut doc, patch);
    serde_json::from_value(doc).expect("the patched fixture is a TicketingEvent")
}

fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_merges_objects_replaces_the_rest_and_removes_nulls() {
        let t = event(serde_json::json!({
            "metadata": {"name": "x"},
            "spec": {"queue": {"minReplicas": 3}, "inventory": {"sections": [{"name": "B", "rows": 2, "seatsPerRow": 2}]}, "redis": {"tls": true}}
        }));
        assert_eq!(
            (t.metadata.name.as_deref(), t.metadata.namespace.as_deref()),
            (Some("x"), Some("n"))
        );
        assert_eq!((t.spec.queue.image.as_str(), t.spec.queue.min_replicas), ("q", 3));
        assert_eq!(t.spec.inventory.sections[0].name, "B");
        assert!(t.spec.redis.tls);
        let t = event(
            serde_json::json!({"spec": {"prewarm": {"queue": {"replicas": 4}, "reservation": {"replicas": 2}}}}),
        );
        assert!(t.spec.prewarm.is_some());
        let t = event(serde_json::json!({"metadata": {"namespace": null}}));
        assert_eq!(t.metadata.namespace, None);
    }
}
