//! The one place that starts background tasks. Every task goes through one process-wide
//! `TaskTracker`, so none is invisible: `/metrics` shows how many are alive
//! (`background_tasks`), which is how a leak of connection drivers or server connections shows
//! before memory does. `clippy.toml` disallows a bare `tokio::spawn` (and the runtime's and
//! `JoinSet`'s) everywhere else. Not counted: the tasks hyper's server spawns per HTTP/2 stream
//! through its executor, inside a connection task that is.

use std::future::Future;
use std::sync::LazyLock;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

static TASKS: LazyLock<Tasks> = LazyLock::new(Tasks::default);

/// A set of tracked tasks: the process has one (`TASKS`); tests make their own.
#[derive(Debug, Default)]
struct Tasks(TaskTracker);

impl Tasks {
    fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.spawn(future)
    }

    fn alive(&self) -> usize {
        self.0.len()
    }
}

/// Starts `future` on the runtime, tracked.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TASKS.spawn(future)
}

/// Runs `work` on the blocking pool, tracked.
pub fn spawn_blocking<F, T>(work: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    TASKS.0.spawn_blocking(work)
}

/// Tasks of this process still running (every app in the process: tests run several).
pub fn alive() -> usize {
    TASKS.alive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_is_counted_while_it_runs_and_not_after() {
        let tasks = Tasks::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tasks.spawn(async move {
            let _ = released.await;
        });
        assert_eq!(tasks.alive(), 1);
        release.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(tasks.alive(), 0);
    }
}
