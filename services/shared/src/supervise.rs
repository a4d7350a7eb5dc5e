//! Background loops that must run until shutdown (the queue's admission loop and stream hub, the
//! reservation's count publisher and connection keeper). One that ends early — a panic, or a
//! return it should never take — would leave the replica serving requests while, say, nobody is
//! admitted any more, and nothing in Kubernetes would notice. Instead the replica shuts down
//! (drain as on SIGTERM) and exits non-zero (the caller turns [`Supervisor::ended`] into an
//! error), so the kubelet restarts it.

use std::future::Future;

use tokio::sync::watch;

/// Watches the loops spawned through [`Supervisor::spawn`].
#[derive(Clone)]
pub struct Supervisor {
    ended: watch::Sender<Option<&'static str>>,
    stopping: watch::Receiver<bool>,
}

/// Tells the supervisor when its loop ends, however it ends (its future is dropped on return, on
/// a panic while unwinding, and on abort).
struct Ending {
    name: &'static str,
    ended: watch::Sender<Option<&'static str>>,
    stopping: watch::Receiver<bool>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        if !*self.stopping.borrow() {
            self.ended.send_if_modified(|first| {
                let was_none = first.is_none();
                first.get_or_insert(self.name);
                was_none
            });
        }
    }
}

impl Supervisor {
    /// `stopping` turns true when the replica shuts down: a loop that ends after that is expected.
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        let (ended, _) = watch::channel(None);
        Self { ended, stopping }
    }

    /// Spawns `task`, a loop meant to run until shutdown, named `name` in the logs.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let ending = Ending {
            name,
            ended: self.ended.clone(),
            stopping: self.stopping.clone(),
        };
        tokio::spawn(async move {
            let _ending = ending;
            task.await;
        })
    }

    /// Resolves with the name of the first loop that ended before shutdown (never, if none does).
    pub fn first_ended(&self) -> impl Future<Output = &'static str> + Send + 'static {
        let mut ended = self.ended.subscribe();
        async move {
            loop {
                if let Some(name) = *ended.borrow_and_update() {
                    tracing::error!(
                        task = name,
                        "a background loop ended before shutdown; shutting down so the replica is restarted"
                    );
                    return name;
                }
                if ended.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// The first loop that ended before shutdown, if any.
    pub fn ended(&self) -> Option<&'static str> {
        *self.ended.borrow()
    }
}

/// `shutdown`, or the first of `supervisor`'s loops ending early, whichever comes first.
pub fn shutdown_or_loop_ended(
    shutdown: impl Future<Output = ()> + Send + 'static,
    supervisor: &Supervisor,
) -> impl Future<Output = ()> + Send + 'static {
    let ended = supervisor.first_ended();
    async move {
        tokio::select! {
            () = shutdown => {},
            _ = ended => {},
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_loop_that_panics_or_returns_early_ends_the_wait_and_is_named() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let sup = Supervisor::new(stop_rx);
        let forever = sup.spawn("forever", std::future::pending());
        let waiting = tokio::spawn(shutdown_or_loop_ended(std::future::pending(), &sup));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing ended yet");
        assert_eq!(sup.ended(), None);

        sup.spawn("admission", async { panic!("a bug in the loop") });
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sup.ended(), Some("admission"));

        // The first one stays named; a loop returning early counts too.
        let (_stop2, stop_rx2) = watch::channel(false);
        let sup2 = Supervisor::new(stop_rx2);
        sup2.spawn("publisher", async {});
        tokio::time::timeout(Duration::from_secs(5), sup2.first_ended())
            .await
            .unwrap();
        assert_eq!(sup2.ended(), Some("publisher"));
        assert_eq!(sup.ended(), Some("admission"));

        // Loops ending at shutdown (returning or aborted) are expected.
        let (stop3_tx, stop3_rx) = watch::channel(false);
        let sup3 = Supervisor::new(stop3_rx);
        let mut stop = sup3.stopping.clone();
        let ends = sup3.spawn("hub", async move {
            let _ = stop.changed().await;
        });
        let aborted = sup3.spawn("keeper", std::future::pending());
        stop3_tx.send(true).unwrap();
        ends.await.unwrap();
        aborted.abort();
        let _ = aborted.await;
        assert_eq!(sup3.ended(), None);

        stop_tx.send(true).unwrap();
        forever.abort();
    }
}
