//! A counting semaphore that hands a freed permit to the waiting shares in turn (round robin)
//! instead of first come first served, so a batch with fifty calls queued cannot hold a later
//! one-title batch behind all fifty: its first call waits for about one freed slot. A share is
//! the caller's task-local key (`with_share`), which `classify` sets per batch; callers without
//! one share a key. A share marked `BACKGROUND` (a job's round) gets a permit only while no
//! other share waits: jobs use the slots interactive batches leave. Ours because tokio's
//! `Semaphore` is strictly FIFO and no crate queues fairly by key.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

tokio::task_local! {
    static SHARE: u64;
}

/// Runs `future` with its calls queued under `key` (one key per batch).
pub async fn with_share<F: Future>(key: u64, future: F) -> F::Output {
    SHARE.scope(key, future).await
}

/// The bit that marks a share as background: served only when no other share waits.
pub const BACKGROUND: u64 = 1 << 63;

/// Whether the caller runs under a background share (a job's round).
pub fn in_background() -> bool {
    current_share() & BACKGROUND != 0
}

fn current_share() -> u64 {
    SHARE.try_with(|key| *key).unwrap_or(0)
}

#[derive(Debug)]
pub struct FairSemaphore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    /// Each share's waiters, oldest first.
    queues: HashMap<u64, VecDeque<oneshot::Sender<()>>>,
    /// The shares with waiters, in the order they get the next permits.
    turns: VecDeque<u64>,
    /// The same for background shares, served only when `turns` is empty.
    background_turns: VecDeque<u64>,
}

impl State {
    /// Hands one permit to the next share's oldest live waiter (a background share's only when
    /// no other waits), or keeps it free.
    fn grant(&mut self) {
        loop {
            let (key, background) = match self.turns.pop_front() {
                Some(key) => (key, false),
                None => match self.background_turns.pop_front() {
                    Some(key) => (key, true),
                    None => break,
                },
            };
            let Some(queue) = self.queues.get_mut(&key) else {
                continue;
            };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.queues.remove(&key);
            } else if background {
                self.background_turns.push_back(key);
            } else {
                self.turns.push_back(key);
            }
            // A waiter that went away (its caller was cancelled) refuses the permit.
            if waiter.is_some_and(|w| w.send(()).is_ok()) {
                return;
            }
        }
        self.free += 1;
    }

    fn anyone_waits(&self) -> bool {
        !self.turns.is_empty() || !self.background_turns.is_empty()
    }
}

impl FairSemaphore {
    pub fn new(permits: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: permits,
                ..State::default()
            }),
        }
    }

    /// A permit: at once when one is free and nobody waits, else when this share's turn comes.
    pub async fn acquire(&self) -> FairPermit<'_> {
        let receiver = {
            let mut s = self.lock();
            if s.free > 0 && !s.anyone_waits() {
                s.free -= 1;
                return FairPermit { semaphore: self };
            }
            let (sender, receiver) = oneshot::channel();
            let key = current_share();
            let state = &mut *s;
            let queue = state.queues.entry(key).or_default();
            if queue.is_empty() {
                if key & BACKGROUND != 0 {
                    state.background_turns.push_back(key);
                } else {
                    state.turns.push_back(key);
                }
            }
            queue.push_back(sender);
            receiver
        };
        let mut waiting = Waiting {
            receiver: Some(receiver),
            semaphore: self,
        };
        let receiver = waiting.receiver.as_mut().expect("set above");
        receiver
            .await
            .expect("a waiter's sender is kept until it is granted");
        waiting.receiver = None;
        FairPermit { semaphore: self }
    }

    /// Adds `n` permits, each handed to a waiter if there is one.
    pub fn add_permits(&self, n: usize) {
        let mut s = self.lock();
        for _ in 0..n {
            s.grant();
        }
    }

    /// Removes up to `n` free permits; returns how many.
    pub fn forget_permits(&self, n: usize) -> usize {
        let mut s = self.lock();
        let removed = n.min(s.free);
        s.free -= removed;
        removed
    }

    #[cfg(test)]
    pub fn available_permits(&self) -> usize {
        self.lock().free
    }

    fn release(&self) {
        self.lock().grant();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fair semaphore lock poisoned")
    }
}

/// A held permit, given back (to the next share in turn) when dropped unless forgotten.
#[derive(Debug)]
pub struct FairPermit<'s> {
    semaphore: &'s FairSemaphore,
}

impl FairPermit<'_> {
    /// Retires the permit instead of giving it back.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for FairPermit<'_> {
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

/// A queued acquisition; if its caller is cancelled after the permit was sent, the permit goes
/// back instead of being lost.
struct Waiting<'s> {
    receiver: Option<oneshot::Receiver<()>>,
    semaphore: &'s FairSemaphore,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut receiver) = self.receiver.take() {
            receiver.close();
            if receiver.try_recv().is_ok() {
                self.semaphore.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::FutureExt;

    use super::*;

    /// The order in which `calls` (share, call) got a permit, queued in that order behind one
    /// held permit; shares are reported without the background bit.
    async fn grant_order(calls: &[(u64, u32)]) -> Vec<(u64, u32)> {
        let semaphore = Arc::new(FairSemaphore::new(1));
        let held = semaphore.acquire().await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for &(share, call) in calls {
            let (semaphore, order) = (semaphore.clone(), order.clone());
            tasks.push(crate::tasks::spawn(with_share(share, async move {
                let permit = semaphore.acquire().await;
                order.lock().unwrap().push((share & !BACKGROUND, call));
                drop(permit);
            })));
            tokio::task::yield_now().await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        order.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_freed_permit_goes_to_the_next_share_in_turn_not_the_oldest_waiter() {
        // Share 1 queues five calls, then share 2 queues one.
        let order = grant_order(&[(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)]).await;
        assert_eq!(order[..2], [(1, 0), (2, 0)], "{order:?}");
        assert_eq!(order.len(), 6);
    }

    #[tokio::test]
    async fn a_background_share_gets_a_permit_only_while_no_other_waits() {
        // A job's round queues three calls first, then two interactive batches one each.
        let job = BACKGROUND | 7;
        let order = grant_order(&[(job, 0), (job, 1), (job, 2), (1, 0), (2, 0)]).await;
        assert_eq!(order, [(1, 0), (2, 0), (7, 0), (7, 1), (7, 2)]);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_loses_no_permit() {
        let semaphore = FairSemaphore::new(1);
        let held = semaphore.acquire().await;
        let mut waiting = Box::pin(semaphore.acquire());
        assert!(waiting.as_mut().now_or_never().is_none());
        drop(held);
        drop(waiting);
        assert_eq!(semaphore.available_permits(), 1);
        assert!(semaphore.acquire().now_or_never().is_some());
    }
}
