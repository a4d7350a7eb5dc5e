//! Group commit: requests of one kind (hold claims, confirms, the confirms' context reads) are
//! queued, and one drainer task takes them off the queue batch after batch, deciding each batch
//! in one statement and one transaction, until the queue is empty.
//!
//! One statement of a kind runs at a time: the requests that arrive meanwhile share the next one,
//! so PostgreSQL pays one round trip, one plan execution and one commit for many. At low load a
//! batch is one request and nothing waits. Only while the running statement has taken longer than
//! [`STALL`] (waiting on a lock, say) may more start, up to `max_running`. A batch never holds two
//! requests that share a key (a user, a seat of an event): the later one waits, in order, for a
//! later batch, so the members of one transaction never wait on each other.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::RandomState;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a statement runs before the queue may start another beside it.
pub(super) const STALL: Duration = Duration::from_millis(10);

/// A queued request.
pub(super) trait Member: Send + 'static {
    /// Its request gave up (timed out): nothing is decided for it.
    fn abandoned(&self) -> bool;
    /// The keys it must not share a batch with (none for a read).
    fn keys(&self, hasher: &RandomState) -> Vec<u64>;
}

/// How a queue batched so far (statements that returned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Statements run.
    pub statements: u64,
    /// Requests those statements decided.
    pub requests: u64,
    /// The most requests one statement decided.
    pub largest: u64,
}

pub(super) struct Group<P> {
    state: Mutex<State<P>>,
    max_running: usize,
    max_batch: usize,
    hasher: RandomState,
    stats: Mutex<BatchStats>,
}

struct State<P> {
    pending: VecDeque<P>,
    running: usize,
    /// When the latest statement started.
    last_start: Option<Instant>,
}

impl<P: Member> Group<P> {
    pub(super) fn new(max_running: usize, max_batch: usize) -> Self {
        Self {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                running: 0,
                last_start: None,
            }),
            max_running: max_running.max(1),
            max_batch: max_batch.max(1),
            hasher: RandomState::new(),
            stats: Mutex::new(BatchStats::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<P>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `p` and starts a drainer running `decide` when none runs (or when the running ones
    /// are stalled and fewer than `max_running` run).
    pub(super) fn submit<F, Fut>(self: &Arc<Self>, p: P, decide: F)
    where
        F: Fn(Vec<P>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let lead = {
            let mut q = self.lock();
            q.pending.push_back(p);
            let stalled = q.last_start.is_some_and(|t| t.elapsed() >= STALL);
            let lead = q.running == 0 || (q.running < self.max_running && stalled);
            if lead {
                q.running += 1;
            }
            lead
        };
        if lead {
            tokio::spawn(self.clone().drain(decide));
        }
    }

    /// Decides queued requests batch after batch until the queue is empty.
    async fn drain<F, Fut>(self: Arc<Self>, decide: F)
    where
        F: Fn(Vec<P>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut slot = DrainerSlot(Some(self.clone()));
        loop {
            let batch = {
                let mut q = self.lock();
                let batch = self.next_batch(&mut q);
                if batch.is_empty() {
                    // Under the lock: a request queued from now on finds the slot free.
                    q.running -= 1;
                    slot.0 = None;
                    return;
                }
                q.last_start = Some(Instant::now());
                batch
            };
            decide(batch).await;
        }
    }

    /// Takes the next batch off the queue, oldest first; a request sharing a key with one already
    /// taken waits, in order, for a later batch. Empty only when no request that still waits is
    /// queued (the drainer then ends): requests that gave up are dropped on the way and do not
    /// count towards the scan bound, so after an outage a queue front of abandoned requests
    /// cannot end the drainer with live ones behind it.
    fn next_batch(&self, q: &mut State<P>) -> Vec<P> {
        let mut batch = Vec::new();
        let mut keys: HashSet<u64> = HashSet::new();
        let mut deferred = Vec::new();
        let mut scanned = 0;
        while batch.len() < self.max_batch && scanned < 4 * self.max_batch {
            let Some(p) = q.pending.pop_front() else { break };
            if p.abandoned() {
                continue;
            }
            scanned += 1;
            let mine = p.keys(&self.hasher);
            if mine.iter().any(|k| keys.contains(k)) {
                deferred.push(p);
            } else {
                keys.extend(mine);
                batch.push(p);
            }
        }
        for p in deferred.into_iter().rev() {
            q.pending.push_front(p);
        }
        batch
    }

    /// Counts a statement that returned, deciding `requests`.
    pub(super) fn count(&self, requests: u64) {
        let mut st = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        st.statements += 1;
        st.requests += requests;
        st.largest = st.largest.max(requests);
    }

    pub(super) fn stats(&self) -> BatchStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Gives the drainer's slot back if its task ends without doing so (a panic).
struct DrainerSlot<P: Member>(Option<Arc<Group<P>>>);

impl<P: Member> Drop for DrainerSlot<P> {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.lock().running -= 1;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::hash::BuildHasher;

    use tokio::sync::oneshot;

    use super::*;

    struct Req {
        user: String,
        reply: oneshot::Sender<()>,
    }

    impl Member for Req {
        fn abandoned(&self) -> bool {
            self.reply.is_closed()
        }
        fn keys(&self, hasher: &RandomState) -> Vec<u64> {
            vec![hasher.hash_one(&self.user)]
        }
    }

    fn req(user: &str) -> (Req, oneshot::Receiver<()>) {
        let (reply, rx) = oneshot::channel();
        (
            Req {
                user: user.into(),
                reply,
            },
            rx,
        )
    }

    #[test]
    fn abandoned_requests_at_the_front_do_not_hide_the_live_ones_behind_them() {
        let group = Group::new(1, 4);
        let mut q = group.lock();
        // An outage's leftovers: 100 requests that gave up (their receivers dropped), more than
        // the scan bound (4 x 4), then two live ones.
        for k in 0..100 {
            let (p, rx) = req(&format!("gone-{k}"));
            drop(rx);
            q.pending.push_back(p);
        }
        let mut live = Vec::new();
        for k in 0..2 {
            let (p, rx) = req(&format!("live-{k}"));
            live.push(rx);
            q.pending.push_back(p);
        }
        let batch = group.next_batch(&mut q);
        let users: Vec<&str> = batch.iter().map(|p| p.user.as_str()).collect();
        assert_eq!(users, ["live-0", "live-1"]);
        assert!(q.pending.is_empty());
        assert!(group.next_batch(&mut q).is_empty());
    }

    #[test]
    fn requests_sharing_a_key_wait_for_a_later_batch_in_order() {
        let group = Group::new(1, 8);
        let mut q = group.lock();
        let mut rxs = Vec::new();
        for user in ["a", "b", "a", "c", "a"] {
            let (p, rx) = req(user);
            rxs.push(rx);
            q.pending.push_back(p);
        }
        let users = |b: Vec<Req>| b.into_iter().map(|p| p.user).collect::<Vec<_>>();
        assert_eq!(users(group.next_batch(&mut q)), ["a", "b", "c"]);
        assert_eq!(users(group.next_batch(&mut q)), ["a"]);
        assert_eq!(users(group.next_batch(&mut q)), ["a"]);
        assert!(group.next_batch(&mut q).is_empty());
    }
}
