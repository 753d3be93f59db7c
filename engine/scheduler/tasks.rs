//! [`Tasks`]: the one owner of the gateway's tokio tasks. The scheduler creates it; the API
//! server and the webhook worker get handles on it ([`Tasks::child`]). Every task of the
//! gateway is spawned through it and stops on its token, and [`Tasks::shutdown`] waits for
//! all of them.
//!
//! Outside it only these start tasks or threads of their own: the store's writer thread,
//! the plugin runtime (its threads and runtime), the API's bulk pool (its runtime), and the
//! simulator (`comfy::sim`, a separate server). `tests/it/tidy.rs` checks it.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on the gateway's task tracker and a stop token. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// A new owner: no task yet, not stopping.
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// A handle on the same tracker whose token is a child of this one: stopped with it,
    /// or alone ([`Tasks::stop`]) by a part that ends before the rest (the API server).
    pub fn child(&self) -> Tasks {
        Tasks { tracker: self.tracker.clone(), stop: self.stop.child_token() }
    }

    /// Spawn `task` on the tracker. It should end soon after [`Tasks::token`] is cancelled.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// The token this handle's tasks stop on.
    pub fn token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Cancel this handle's token (and its children's); the tasks end on their own.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// How many tasks of the tracker are running (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Cancel this handle's token and wait until every task of the tracker ended (tasks
    /// spawned while waiting are waited for too).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::Tasks;

    /// A child's tasks stop with the child or with the owner; the owner's shutdown waits
    /// for every task of every handle.
    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_and_waits_for_the_tasks_of_every_handle() {
        let owner = Tasks::new();
        let child = owner.child();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, tasks) in [("owner", owner.clone()), ("child", child.clone())] {
            let (token, tx) = (tasks.token().clone(), tx.clone());
            tasks.spawn(async move {
                token.cancelled().await;
                // Work after the stop that shutdown must wait for.
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                tx.send(name).unwrap();
            });
        }
        drop(tx);
        child.stop();
        assert!(!owner.token().is_cancelled(), "a child stops alone");
        owner.shutdown().await;
        let mut ended = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
        ended.sort_unstable();
        assert_eq!(ended, ["child", "owner"]);
        assert!(rx.try_recv().is_err());
    }
}
