//! Jobs that outlive the request: a caller submits titles, the service keeps them on disk and
//! classifies them in the background, in rounds through the same pipeline as `/classify-batch`
//! (retries, pacing, packing, cache), and the caller polls and downloads the results in input
//! order. A restart on the same data directory resumes every job where it stopped.
//!
//! A round runs at background priority: its calls take an upstream slot only while no
//! interactive batch waits for one, and they are not counted against interactive admission, so
//! interactive batches are never refused to make room for a job.

mod job;
mod store;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

pub use job::{ItemOutcome, Job, JobCounts, JobStatus, JobUsage, JobView, NewJob, ResultLine};
pub use store::{Created, Gauges, JobStore, StoreError};
use store::{Delivered, Work};
use webhooks::{SCHEDULE, Webhooks};

use crate::classify::{Classifier, Cut, is_transient};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// Titles sent to the pipeline in one round: small enough that a round's admission does not
/// wait long behind interactive batches, large enough to keep packs and slots full.
const ROUND: u32 = 200;
/// Rounds a title with a transient error (an outage, a deadline) takes before its error is its
/// result: each waits out the item deadline of an outage first, so ten rounds ride out about
/// ten minutes of one. A shutdown or a drain does not count.
const MAX_ATTEMPTS: u32 = 10;
/// How long the runner waits before asking again for room or for work.
const IDLE: Duration = Duration::from_millis(250);

/// The jobs of this process: the store, and a wake-up for the runner.
#[derive(Debug)]
pub struct Jobs {
    store: Arc<JobStore>,
    wake: Notify,
}

/// A store operation, off the async threads (SQLite blocks).
async fn blocking<T: Send + 'static>(
    store: &Arc<JobStore>,
    op: impl FnOnce(&JobStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    crate::tasks::spawn_blocking(move || op(&store))
        .await
        .expect("a store operation does not panic")
}

impl Jobs {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Arc::new(JobStore::open(dir)?),
            wake: Notify::new(),
        })
    }

    pub async fn create(&self, job: NewJob) -> Result<Created, StoreError> {
        let created = blocking(&self.store, move |s| s.create(&job)).await?;
        self.wake.notify_one();
        Ok(created)
    }

    pub async fn get(&self, owner: String, id: String) -> Result<Option<Job>, StoreError> {
        blocking(&self.store, move |s| s.get(&owner, &id)).await
    }

    pub async fn list(
        &self,
        owner: String,
        limit: u32,
        before: Option<String>,
    ) -> Result<Vec<Job>, StoreError> {
        blocking(&self.store, move |s| {
            s.list(&owner, limit, before.as_deref())
        })
        .await
    }

    /// `owner`'s job made with idempotency key `key`, if there is one.
    pub async fn by_key(&self, owner: String, key: String) -> Result<Option<Job>, StoreError> {
        blocking(&self.store, move |s| s.by_key(&owner, &key)).await
    }

    pub async fn open_jobs(&self, owner: String) -> Result<u64, StoreError> {
        blocking(&self.store, move |s| s.open_jobs(&owner)).await
    }

    pub async fn cancel(&self, owner: String, id: String) -> Result<Option<Job>, StoreError> {
        blocking(&self.store, move |s| s.cancel(&owner, &id)).await
    }

    /// Jobs by status, titles pending and the oldest open job, for the metrics.
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        blocking(&self.store, JobStore::gauges).await
    }

    /// Result lines of `owner`'s job `id` from `from`, up to the first title not done; `None`
    /// for a job not found.
    pub async fn results(
        &self,
        owner: String,
        id: String,
        from: u64,
        max: u32,
    ) -> Result<Option<Vec<String>>, StoreError> {
        blocking(&self.store, move |s| s.results(&owner, &id, from, max)).await
    }

    /// Sends the webhooks of ended jobs until the replica drains, each until a 2xx answers it
    /// or the schedule runs out; a restart picks up the ones still pending.
    pub async fn deliver_webhooks(
        self: Arc<Self>,
        webhooks: Webhooks,
        lifecycle: Lifecycle,
        metrics: Arc<Metrics>,
    ) {
        while !lifecycle.is_draining() {
            let due = match blocking(&self.store, |s| s.due_deliveries(16)).await {
                Ok(due) => due,
                Err(error) => {
                    tracing::warn!(%error, "the job store failed; webhooks wait");
                    Vec::new()
                }
            };
            if due.is_empty() {
                tokio::time::sleep(IDLE * 2).await;
                continue;
            }
            let sends = due.into_iter().map(|d| {
                let webhooks = &webhooks;
                async move {
                    let sent = webhooks.deliver(&d.url, &d.id, &d.body).await;
                    let outcome = match sent {
                        Ok(()) => Delivered::Yes,
                        Err(error) => {
                            let wait = SCHEDULE.get(d.attempts as usize);
                            let next_at_ms = wait.map(|w| store::now_ms() + w.as_millis() as i64);
                            tracing::warn!(webhook.id = %d.id, attempt = d.attempts + 1, %error, retry = next_at_ms.is_some(), "webhook not delivered");
                            Delivered::No { error, next_at_ms }
                        }
                    };
                    (d.id, outcome)
                }
            });
            for (id, outcome) in futures::future::join_all(sends).await {
                let label = match &outcome {
                    Delivered::Yes => "delivered",
                    Delivered::No {
                        next_at_ms: Some(_),
                        ..
                    } => "retried",
                    Delivered::No {
                        next_at_ms: None, ..
                    } => "failed",
                };
                metrics.job_webhooks.with_label_values(&[label]).inc();
                let recorded =
                    blocking(&self.store, move |s| s.record_delivery(&id, &outcome)).await;
                if let Err(error) = recorded {
                    tracing::warn!(%error, "a webhook's outcome could not be written; it is sent again");
                }
            }
        }
    }

    /// Classifies the jobs' titles in rounds until the replica drains: the oldest job first.
    pub async fn run(self: Arc<Self>, classifier: Arc<Classifier>, lifecycle: Lifecycle) {
        loop {
            if lifecycle.is_draining() {
                return;
            }
            let Some(guard) = lifecycle.admit() else {
                return;
            };
            let work = match blocking(&self.store, |s| s.next_work(ROUND)).await {
                Ok(Some(work)) if !work.items.is_empty() => work,
                Ok(_) => {
                    drop(guard);
                    let _ = tokio::time::timeout(IDLE * 4, self.wake.notified()).await;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "the job store failed; trying again");
                    drop(guard);
                    tokio::time::sleep(IDLE * 4).await;
                    continue;
                }
            };
            let job_id = work.job_id.clone();
            let span =
                tracing::info_span!("job round", hnc.job = %job_id, hnc.items = work.items.len());
            let round = self.round(&classifier, &lifecycle, work);
            let (outcomes, usage) = tracing::Instrument::instrument(round, span).await;
            let recorded =
                blocking(&self.store, move |s| s.record(&job_id, &outcomes, &usage)).await;
            // Held until the results are written: a drain waits for them.
            drop(guard);
            if let Err(error) = recorded {
                tracing::warn!(%error, "a job round's results could not be written; they go again");
                tokio::time::sleep(IDLE * 4).await;
            }
        }
    }

    /// One round of a job's titles through the pipeline, once it is admitted (waiting while the
    /// service is at capacity): each title's outcome, and what the calls cost.
    async fn round(
        &self,
        classifier: &Classifier,
        lifecycle: &Lifecycle,
        work: Work,
    ) -> (Vec<(u64, ItemOutcome)>, JobUsage) {
        let Some(taxonomy) = classifier.taxonomies().get(&work.taxonomy).cloned() else {
            let outcomes = work
                .items
                .iter()
                .map(|(index, _, _)| {
                    let line = error_line(
                        *index,
                        "unknown_taxonomy",
                        "the job's taxonomy is no longer configured",
                    );
                    (*index, ItemOutcome::Done(line))
                })
                .collect();
            return (outcomes, JobUsage::default());
        };
        let titles: Vec<String> = work.items.iter().map(|(_, t, _)| t.clone()).collect();
        let admitted = classifier.admit_in_background(&titles);
        let deadline = classifier.limits().batch_deadline;
        let cut = {
            let lifecycle = lifecycle.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep(deadline) => Cut::Deadline(deadline),
                    () = lifecycle.batches_cut() => Cut::Shutdown,
                }
            }
        };
        let outcome = classifier
            .classify_batch(admitted, &taxonomy, &titles, cut)
            .await;
        let outcomes = work
            .items
            .iter()
            .zip(&outcome.results)
            .map(|((index, _, attempts), result)| {
                let line = match result {
                    Ok(c) => ResultLine {
                        index: *index,
                        topic: Some(c.prediction.topic.to_string()),
                        confidence: Some(c.prediction.confidence),
                        confidence_source: Some(c.prediction.source),
                        error: None,
                        error_code: None,
                    },
                    Err(e) if e.code() == "shutting_down" => {
                        return (*index, ItemOutcome::Again { counted: false });
                    }
                    Err(e) if is_transient(e.code()) && attempts + 1 < MAX_ATTEMPTS => {
                        return (*index, ItemOutcome::Again { counted: true });
                    }
                    Err(e) => error_line(*index, e.code(), &e.to_string()),
                };
                (*index, ItemOutcome::Done(line))
            })
            .collect();
        (outcomes, outcome.usage.into())
    }
}

fn error_line(index: u64, code: &str, message: &str) -> ResultLine {
    ResultLine {
        index,
        topic: None,
        confidence: None,
        confidence_source: None,
        error: Some(message.to_owned()),
        error_code: Some(code.to_owned()),
    }
}
