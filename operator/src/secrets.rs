//! The one reader of Secret data, for the reconciler (validation: the auth keys, the URLs) and
//! the autoscaler (the Redis URL and CA of every event, every tick).
//!
//! A metadata-only watch of Secrets (`runtime::run`) says which Secrets exist and at which
//! resourceVersion. The data of a Secret an event refers to is read with one GET the first time
//! and again only when the watch shows a new resourceVersion; a Secret the synced watch does not
//! know does not exist (no GET). So a steady-state reconcile and a steady tick read no Secret from
//! the API server, a rotated Secret is seen within the watch's delay, and the operator never
//! caches data of a Secret no event refers to. Before the watch has synced (start-up, tests
//! without it) every read is a GET.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt as _};

/// The keys of one Secret and their bytes (`data`, with `stringData` merged in).
pub type Data = BTreeMap<String, Vec<u8>>;

/// What the metadata watch shows of Secrets.
pub type MetaStore = Store<PartialObjectMeta<Secret>>;

/// One metadata watch: the namespace it covers (None: all), its store, and whether its initial
/// list has arrived (set by the watch stream on `InitDone`; the store's own readiness future
/// must not be polled by a second waiter).
#[derive(Clone)]
pub struct Watched {
    pub namespace: Option<String>,
    pub store: MetaStore,
    pub synced: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
struct Cached {
    resource_version: Option<String>,
    data: Arc<Data>,
}

/// Secret data through the metadata watch; cheap to clone (one shared cache).
#[derive(Clone)]
pub struct Secrets {
    client: Client,
    meta: Vec<Watched>,
    cache: Arc<Mutex<HashMap<(String, String), Cached>>>,
    reads: prometheus_client::metrics::counter::Counter,
}

impl Secrets {
    /// `meta`: the metadata watches. Empty: every Secret anywhere is read with a GET (tests).
    /// Otherwise only the namespaces they cover may be read.
    pub fn new(client: Client, meta: Vec<Watched>) -> Self {
        Self {
            client,
            meta,
            cache: Arc::default(),
            reads: Default::default(),
        }
    }

    /// Counts the GETs in `reads` (`tiketi_operator_secret_reads_total`).
    pub fn counting(mut self, reads: prometheus_client::metrics::counter::Counter) -> Self {
        self.reads = reads;
        self
    }

    /// None when Secrets in `ns` may be read; otherwise why not, naming the rule.
    pub fn refuses(&self, ns: &str) -> Option<String> {
        if self.meta.is_empty() || self.covering(ns).is_some() {
            return None;
        }
        let allowed: Vec<&str> = self.meta.iter().filter_map(|w| w.namespace.as_deref()).collect();
        Some(format!(
            "the operator reads Secrets only in namespaces {} (--secret-namespaces, chart value secretNamespaces), not in {ns:?}",
            allowed.join(", ")
        ))
    }

    fn covering(&self, ns: &str) -> Option<&Watched> {
        self.meta
            .iter()
            .find(|w| w.namespace.as_deref().is_none_or(|n| n == ns))
    }

    /// What the synced watch says of `ns/name`: `Some(None)` = it does not exist,
    /// `Some(Some(rv))` = it exists at that resourceVersion, `None` = not synced (ask the API).
    fn watched(&self, ns: &str, name: &str) -> Option<Option<String>> {
        let meta = self.covering(ns)?;
        if !meta.synced.load(Ordering::Acquire) {
            return None;
        }
        let key = ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(ns);
        Some(
            meta.store
                .get(&key)
                .map(|s| s.resource_version().unwrap_or_default()),
        )
    }

    /// The data of Secret `ns/name`; `None` when it does not exist.
    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<Arc<Data>>, kube::Error> {
        if let Some(why) = self.refuses(ns) {
            return Err(kube::Error::Service(why.into()));
        }
        let key = (ns.to_owned(), name.to_owned());
        let watched = self.watched(ns, name);
        match &watched {
            Some(None) => {
                self.lock().remove(&key);
                return Ok(None);
            }
            Some(Some(rv)) => {
                if let Some(c) = self.lock().get(&key)
                    && c.resource_version.as_deref() == Some(rv.as_str())
                {
                    return Ok(Some(c.data.clone()));
                }
            }
            None => {}
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        self.reads.inc();
        let Some(secret) = api.get_opt(name).await? else {
            self.lock().remove(&key);
            return Ok(None);
        };
        let resource_version = secret.resource_version();
        let data = Arc::new(data_of(secret));
        if watched.is_some() {
            self.lock().insert(
                key,
                Cached {
                    resource_version,
                    data: data.clone(),
                },
            );
        }
        Ok(Some(data))
    }

    /// One key of Secret `ns/name` as trimmed UTF-8, or a message naming what is missing.
    pub async fn value(&self, ns: &str, name: &str, key: &str) -> Result<String, String> {
        if let Some(known) = self.value_known(ns, name, key) {
            return known;
        }
        let data = Box::pin(self.get(ns, name))
            .await
            .map_err(|e| format!("reading Secret {ns}/{name}: {e}"))?;
        key_of(data, ns, name, key)
    }

    /// [`Self::value`] when the watch and the cache answer without the API (every steady
    /// read: the autoscaler asks for every event every tick); None when a GET is needed.
    pub fn value_known(&self, ns: &str, name: &str, key: &str) -> Option<Result<String, String>> {
        if let Some(why) = self.refuses(ns) {
            return Some(Err(format!("reading Secret {ns}/{name}: {why}")));
        }
        let rv = self.watched(ns, name)?;
        let mut cache = self.lock();
        let data = match rv {
            None => {
                cache.remove(&(ns.to_owned(), name.to_owned()));
                None
            }
            Some(rv) => {
                let c = cache.get(&(ns.to_owned(), name.to_owned()))?;
                if c.resource_version.as_deref() != Some(rv.as_str()) {
                    return None;
                }
                Some(c.data.clone())
            }
        };
        drop(cache);
        Some(key_of(data, ns, name, key))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Cached>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One key of a Secret's data as trimmed UTF-8, or a message naming what is missing.
fn key_of(data: Option<Arc<Data>>, ns: &str, name: &str, key: &str) -> Result<String, String> {
    let data = data.ok_or_else(|| format!("Secret {ns}/{name} does not exist"))?;
    let bytes = data
        .get(key)
        .ok_or_else(|| format!("Secret {ns}/{name} has no key {key:?}"))?;
    std::str::from_utf8(bytes)
        .map(|s| s.trim().to_owned())
        .map_err(|_| format!("Secret {ns}/{name} key {key:?} is not UTF-8"))
}

/// `data` with `stringData` merged in (what a Pod would see).
fn data_of(secret: Secret) -> Data {
    let mut d: Data = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in secret.string_data.unwrap_or_default() {
        d.insert(k, v.into_bytes());
    }
    d
}

/// Drops from a watched Secret's metadata what no reader uses (only existence and
/// resourceVersion are read; the name and namespace key it).
pub fn trim_meta(s: &mut PartialObjectMeta<Secret>) {
    s.managed_fields_mut().clear();
    s.metadata.annotations = None;
    s.metadata.labels = None;
    s.metadata.owner_references = None;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_merged_over_data() {
        let s: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"},
            "data": {"a": "YQ==", "b": "Yg=="},
            "stringData": {"b": "B"}
        }))
        .unwrap();
        let d = data_of(s);
        assert_eq!(d["a"], b"a");
        assert_eq!(d["b"], b"B");
    }
}
