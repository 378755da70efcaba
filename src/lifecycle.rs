//! Graceful shutdown bookkeeping: which batches are running and whether the process is draining.
//! On SIGTERM readiness turns 503 at once, running batches finish, new ones are refused, and the
//! server stops when the last batch has answered; batches still running at the shutdown
//! deadline are cut (`cut_batches`): their undone items answer `shutting_down`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Cheap to clone: every clone is the same process's bookkeeping.
#[derive(Debug, Default, Clone)]
pub struct Lifecycle(Arc<State>);

#[derive(Debug, Default)]
struct State {
    draining: AtomicBool,
    refusing: AtomicBool,
    batches: AtomicUsize,
    idle: Notify,
    /// Cancelled at the shutdown deadline: running batches stop and answer what they have.
    cut: CancellationToken,
}

impl Lifecycle {
    /// Registers a batch, or `None` when the process no longer takes new work. The guard owns
    /// its share of the bookkeeping, so it can move into a streamed answer.
    pub fn admit(&self) -> Option<BatchGuard> {
        self.0.batches.fetch_add(1, Ordering::SeqCst);
        let guard = BatchGuard {
            lifecycle: self.clone(),
        };
        // Checked after counting, so `wait_idle` cannot miss a batch admitted concurrently.
        (!self.0.refusing.load(Ordering::SeqCst)).then_some(guard)
    }

    /// Readiness goes false; batches are still taken until `refuse_new_batches`.
    pub fn begin_drain(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
    }

    pub fn refuse_new_batches(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        self.0.refusing.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    pub fn batches_in_flight(&self) -> usize {
        self.0.batches.load(Ordering::SeqCst)
    }

    /// Tells every running batch to stop now and answer what it has.
    pub fn cut_batches(&self) {
        self.0.cut.cancel();
    }

    /// Resolves when batches are to stop (`cut_batches`).
    pub fn batches_cut(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.cut.clone().cancelled_owned()
    }

    /// Resolves once no batch is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            if self.0.batches.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held for the life of one batch.
#[derive(Debug)]
pub struct BatchGuard {
    lifecycle: Lifecycle,
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        if self.lifecycle.0.batches.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.lifecycle.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_after_drain_and_waits_for_running_batches() {
        let l = Lifecycle::default();
        let running = l.admit().unwrap();
        l.refuse_new_batches();
        assert!(l.admit().is_none());
        assert_eq!(l.batches_in_flight(), 1);
        let waiter = l.wait_idle();
        drop(running);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap();
    }
}
