//! The event configurations this replica serves, loaded from `TIKETI_EVENT_CONFIG` and reloaded
//! when the files change. Change detection polls modification times and sizes every couple of
//! seconds: a ConfigMap volume update swaps a symlink, which plain polling sees without a
//! file-watcher dependency. A configuration that fails to load leaves the previous one in force.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tiketi_shared::config::{self, EventConfig};

type Map = BTreeMap<String, Arc<EventConfig>>;

#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<RwLock<Arc<Map>>>,
}

impl Events {
    pub fn from_map(map: BTreeMap<String, EventConfig>) -> Self {
        let events = Self::default();
        events.replace(map);
        events
    }

    /// The event's configuration (shared, not copied: this is on every request's path).
    pub fn get(&self, event: &str) -> Option<Arc<EventConfig>> {
        self.snapshot().get(event).cloned()
    }

    pub fn snapshot(&self) -> Arc<Map> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, map: BTreeMap<String, EventConfig>) {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *g = Arc::new(map.into_iter().map(|(k, v)| (k, Arc::new(v))).collect());
    }

    /// Loads `path` now (logging, not failing, when it cannot) and then reloads it on change
    /// until the task is dropped.
    pub async fn watch(self, path: PathBuf, every: Duration) {
        let mut seen = fingerprint(&path);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let now = fingerprint(&path);
            if now != seen {
                seen = now;
                self.reload(&path);
            }
        }
    }

    /// Reads `path` and replaces the configuration; on failure keeps the old one and says so.
    pub fn reload(&self, path: &Path) -> bool {
        match config::load(path) {
            Ok(map) => {
                tracing::info!(path = %path.display(), events = ?map.keys().collect::<Vec<_>>(), "event configuration loaded");
                self.replace(map);
                true
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "event configuration not loaded; keeping the previous one");
                false
            }
        }
    }
}

/// (path, mtime, len) of the file or of every entry of the directory, symlinks followed.
fn fingerprint(path: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).ok();
        (
            p.to_path_buf(),
            m.as_ref().and_then(|m| m.modified().ok()),
            m.map(|m| m.len()).unwrap_or(0),
        )
    };
    let mut out = vec![stat(path)];
    if let Ok(entries) = std::fs::read_dir(path) {
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        out.extend(files.iter().map(|p| stat(p)));
    }
    out
}
