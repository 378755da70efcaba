//! Jobs that outlive the request: a caller submits titles, the service keeps them (in the Redis
//! the replicas share, or on one replica's disk) and classifies them in the background, in
//! rounds through the same pipeline as `/classify-batch` (retries, pacing, packing, cache), and
//! the caller polls and downloads the results in input order. In Redis any replica finishes
//! any job, taking over the chunks of one that died within seconds (`shared`); on disk a restart
//! on the same data directory resumes every job where it stopped (`disk`).
//!
//! A round runs at background priority: its calls take an upstream slot only while no
//! interactive batch waits for one, and they are not counted against interactive admission, so
//! interactive batches are never refused to make room for a job.

mod disk;
mod job;
mod shared;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use disk::DiskStore;
pub use job::{
    Created, Gauges, ItemOutcome, Job, JobCounts, JobStatus, JobUsage, JobView, NewJob, ResultLine,
    StoreError,
};
use job::{Delivered, Delivery, Work};
use shared::SharedStore;
use webhooks::{SCHEDULE, Webhooks};

use crate::coord::RedisSettings;

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
/// Tries at writing a round's results before its titles are left to go again: with the backoff
/// (0.25 s doubling to 5 s), about a minute.
const RECORD_ATTEMPTS: u32 = 16;

/// The jobs of this process: where they are kept, and a wake-up for the runner.
#[derive(Debug)]
pub struct Jobs {
    store: Store,
    wake: Notify,
}

/// Where jobs are kept: the two stores answer the same questions; only `disk` blocks (SQLite),
/// so its calls run off the async threads.
#[derive(Debug)]
enum Store {
    Disk(Arc<DiskStore>),
    Shared(SharedStore),
}

/// Runs one store operation: `$disk` on the SQLite store off the async threads, `$shared`
/// awaited on the Redis one. The captures each needs are cloned into `$disk`'s closure first.
macro_rules! on_store {
    ($self:expr, |$d:ident| $disk:expr, |$s:ident| $shared:expr) => {
        match &$self.store {
            Store::Disk(store) => {
                let $d = store.clone();
                crate::tasks::spawn_blocking(move || $disk)
                    .await
                    .expect("a store operation does not panic")
            }
            Store::Shared($s) => $shared.await,
        }
    };
}

impl Jobs {
    /// Jobs on this replica's disk, in `dir`.
    pub fn on_disk(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::with(Store::Disk(Arc::new(DiskStore::open(dir)?))))
    }

    /// Jobs in the Redis the replicas share.
    pub fn shared(settings: &RedisSettings) -> Result<Self, StoreError> {
        Ok(Self::with(Store::Shared(SharedStore::new(
            settings, ROUND,
        )?)))
    }

    fn with(store: Store) -> Self {
        Self {
            store,
            wake: Notify::new(),
        }
    }

    pub async fn create(&self, job: NewJob) -> Result<Created, StoreError> {
        let created = on_store!(self, |d| d.create(&job), |s| s.create(job))?;
        self.wake.notify_one();
        Ok(created)
    }

    pub async fn get(&self, owner: String, id: String) -> Result<Option<Job>, StoreError> {
        on_store!(self, |d| d.get(&owner, &id), |s| s.get(&owner, &id))
    }

    pub async fn list(
        &self,
        owner: String,
        limit: u32,
        before: Option<String>,
    ) -> Result<Vec<Job>, StoreError> {
        on_store!(self, |d| d.list(&owner, limit, before.as_deref()), |s| s
            .list(&owner, limit, before.as_deref()))
    }

    /// `owner`'s job made with idempotency key `key`, if there is one.
    pub async fn by_key(&self, owner: String, key: String) -> Result<Option<Job>, StoreError> {
        on_store!(self, |d| d.by_key(&owner, &key), |s| s.by_key(&owner, &key))
    }

    pub async fn open_jobs(&self, owner: String) -> Result<u64, StoreError> {
        on_store!(self, |d| d.open_jobs(&owner), |s| s.open_jobs(&owner))
    }

    pub async fn cancel(&self, owner: String, id: String) -> Result<Option<Job>, StoreError> {
        on_store!(self, |d| d.cancel(&owner, &id), |s| s.cancel(&owner, &id))
    }

    /// Jobs by status, titles pending and the oldest open job, for the metrics (in Redis: of
    /// every replica).
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        on_store!(self, |d| d.gauges(), |s| s.gauges())
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
        on_store!(self, |d| d.results(&owner, &id, from, max), |s| s
            .results(&owner, &id, from, max))
    }

    async fn next_work(&self) -> Result<Option<Work>, StoreError> {
        on_store!(self, |d| d.next_work(ROUND), |s| s.next_work())
    }

    async fn record(
        &self,
        work: &Work,
        outcomes: Vec<(u64, ItemOutcome)>,
        usage: JobUsage,
    ) -> Result<(), StoreError> {
        let (job_id, claim) = (work.job_id.clone(), work.claim.clone());
        on_store!(self, |d| d.record(&job_id, &outcomes, &usage), |s| s
            .record(&job_id, claim.as_ref(), &outcomes, &usage))
    }

    async fn due_deliveries(&self) -> Result<Vec<Delivery>, StoreError> {
        on_store!(self, |d| d.due_deliveries(16), |s| s.due_deliveries(16))
    }

    async fn record_delivery(&self, id: String, outcome: Delivered) -> Result<(), StoreError> {
        on_store!(self, |d| d.record_delivery(&id, &outcome), |s| s
            .record_delivery(&id, &outcome))
    }

    /// Renews this replica's claim on `work`'s chunk every third of the lease until `until`
    /// ends (nothing to renew on disk). A lapsed claim is logged: another replica may be
    /// classifying the same titles, and only the first result of each counts.
    async fn keep_claim(&self, work: &Work) {
        let (Store::Shared(store), Some(claim)) = (&self.store, &work.claim) else {
            return std::future::pending().await;
        };
        let mut beat = tokio::time::interval(shared::LEASE / 3);
        beat.tick().await;
        loop {
            beat.tick().await;
            match store.heartbeat(&work.job_id, claim).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(hnc.job = %work.job_id, chunk = claim.chunk, "a job chunk's claim lapsed; another replica may have taken it");
                    return std::future::pending().await;
                }
                Err(error) => tracing::warn!(%error, "a job chunk's claim could not be renewed"),
            }
        }
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
            let due = match self.due_deliveries().await {
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
                            let retry_in = SCHEDULE.get(d.attempts as usize).copied();
                            tracing::warn!(webhook.id = %d.id, attempt = d.attempts + 1, %error, retry = retry_in.is_some(), "webhook not delivered");
                            Delivered::No { error, retry_in }
                        }
                    };
                    (d.id, outcome)
                }
            });
            for (id, outcome) in futures::future::join_all(sends).await {
                let label = match &outcome {
                    Delivered::Yes => "delivered",
                    Delivered::No {
                        retry_in: Some(_), ..
                    } => "retried",
                    Delivered::No { retry_in: None, .. } => "failed",
                };
                metrics.job_webhooks.with_label_values(&[label]).inc();
                let recorded = self.record_delivery(id, outcome).await;
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
            let work = match self.next_work().await {
                // A claimed chunk with nothing left (its claimant died after writing its
                // results) goes through as an empty round, which releases it.
                Ok(Some(work)) if !work.items.is_empty() || work.claim.is_some() => work,
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
            let span = tracing::info_span!("job round", hnc.job = %work.job_id, hnc.items = work.items.len());
            let round =
                tracing::Instrument::instrument(self.round(&classifier, &lifecycle, &work), span);
            let (outcomes, usage) = tokio::select! {
                done = round => done,
                () = self.keep_claim(&work) => unreachable!("a claim is kept until the round ends"),
            };
            self.record_paid(&work, outcomes, usage).await;
            // Held until the results are written: a drain waits for them.
            drop(guard);
        }
    }

    /// Writes a round's results, trying again for a while when the store does not answer (a
    /// Redis restart): they were paid for. Given up, the titles go again in a later round.
    async fn record_paid(&self, work: &Work, outcomes: Vec<(u64, ItemOutcome)>, usage: JobUsage) {
        let mut wait = IDLE;
        for attempt in 1..=RECORD_ATTEMPTS {
            match self.record(work, outcomes.clone(), usage).await {
                Ok(()) => return,
                Err(error) if attempt < RECORD_ATTEMPTS => {
                    tracing::warn!(%error, attempt, "a job round's results could not be written yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(error) => {
                    tracing::warn!(%error, "a job round's results could not be written; they go again");
                }
            }
        }
    }

    /// One round of a job's titles through the pipeline, once it is admitted (waiting while the
    /// service is at capacity): each title's outcome, and what the calls cost.
    async fn round(
        &self,
        classifier: &Classifier,
        lifecycle: &Lifecycle,
        work: &Work,
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
