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

mod batch;
mod clock;
mod disk;
mod job;
pub mod plan;
mod shared;
pub mod webhooks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::batch_api::openai::{BatchClient, BatchObject};
pub use clock::{now_ms, rfc3339};
use disk::DiskStore;
pub use job::LaneUsage;
use job::{BatchState, BatchWork, Delivered, Delivery, Work, Written};
pub use job::{
    Created, Gauges, ItemOutcome, Job, JobCounts, JobStatus, JobUsage, JobView, NewJob, ResultLine,
    StoreError,
};
use plan::{Demand, Lane, Lanes, Offer, Plan, Unreachable};
use shared::SharedStore;
use webhooks::{SCHEDULE, Webhooks};

use crate::coord::RedisSettings;

use crate::classify::{Classifier, Cut, is_transient};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::upstream::{ServiceTier, Tier};

/// Why a look at a job's batch stopped: it is tried again at the next poll.
#[derive(Debug, thiserror::Error)]
enum LaneError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] crate::batch_api::openai::BatchApiError),
    #[error("another replica holds the job's batch now")]
    Lost,
}

/// Looks in a row that may fail before a job's batch is made; then its titles go live.
const MAX_BATCH_FAILURES: u32 = 3;
/// A batch's answers are written this many at a time (one script or transaction each), so a
/// large batch never holds Redis for long.
const BATCH_WRITE: usize = 1_000;

/// The id of piece `n` of what batch `id` answered: the same on every read of it.
fn piece_id(id: &str, n: usize) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{id}\u{0}{n}").as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("a digest has 8 bytes"))
}

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
    lanes: Lanes,
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
    pub fn on_disk(dir: &Path, lanes: Lanes) -> Result<Self, StoreError> {
        let store = Store::Disk(Arc::new(DiskStore::open(dir)?));
        Ok(Self::with(store, lanes))
    }

    /// Jobs in the Redis the replicas share.
    pub fn shared(settings: &RedisSettings, lanes: Lanes) -> Result<Self, StoreError> {
        let store = Store::Shared(SharedStore::new(settings, ROUND)?);
        Ok(Self::with(store, lanes))
    }

    fn with(store: Store, lanes: Lanes) -> Self {
        Self {
            store,
            wake: Notify::new(),
            lanes,
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
        written: Written,
    ) -> Result<(), StoreError> {
        let (job_id, claim) = (work.job_id.clone(), work.claim.clone());
        on_store!(
            self,
            |d| d.record(&job_id, &outcomes, &usage, written),
            |s| s.record(&job_id, claim.as_ref(), &outcomes, &usage, written)
        )
    }

    async fn batch_jobs(&self) -> Result<Vec<BatchWork>, StoreError> {
        on_store!(self, |d| d.batch_jobs(), |s| s.batch_jobs())
    }

    async fn pending_titles(&self, job_id: String) -> Result<Vec<(u64, String)>, StoreError> {
        on_store!(self, |d| d.pending_titles(&job_id), |s| s
            .pending_titles(&job_id))
    }

    async fn set_batch(&self, job_id: String, state: BatchState) -> Result<(), StoreError> {
        on_store!(self, |d| d.set_batch(&job_id, &state), |s| s
            .set_batch(&job_id, &state))
    }

    async fn leave_batch(&self, job_id: String) -> Result<(), StoreError> {
        on_store!(self, |d| d.leave_batch(&job_id), |s| s.leave_batch(&job_id))
    }

    /// Whether this replica looks at `job_id`'s batch now (one process owns a disk store).
    async fn lock_batch(&self, job_id: &str) -> Result<bool, StoreError> {
        match &self.store {
            Store::Disk(_) => Ok(true),
            Store::Shared(s) => s.lock_batch(job_id, self.batch_hold()).await,
        }
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
            let renewed =
                tokio::time::timeout(shared::LEASE / 3, store.heartbeat(&work.job_id, claim));
            match renewed.await {
                Ok(Ok(shared::Held::Yes)) => {}
                Ok(Ok(shared::Held::Ended)) => {
                    tracing::info!(hnc.job = %work.job_id, "the job ended (cancelled) while a round of it ran; its results are kept");
                    return std::future::pending().await;
                }
                Ok(Ok(shared::Held::Lapsed)) => {
                    tracing::warn!(hnc.job = %work.job_id, chunk = claim.chunk, "a job chunk's claim lapsed; another replica may have taken it");
                    return std::future::pending().await;
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "a job chunk's claim could not be renewed")
                }
                Err(_) => tracing::warn!("a job chunk's claim could not be renewed in time"),
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
            let (outcomes, usage, (lane, live_cost)) = tokio::select! {
                done = round => done,
                () = self.keep_claim(&work) => unreachable!("a claim is kept until the round ends"),
            };
            // A fresh id a round, the same on every try of its write.
            let written = Written {
                lane,
                live_cost,
                round: rand::random(),
                leaves_batch: false,
            };
            // The claim is kept while the results are written too: a write that waits out a
            // Redis restart must not let another replica take the chunk and pay for it again.
            tokio::select! {
                _ = self.record_paid(&work, outcomes, usage, written) => {}
                () = self.keep_claim(&work) => unreachable!("a claim is kept until it is released"),
            }
            // Held until the results are written: a drain waits for them.
            drop(guard);
        }
    }

    /// Looks at the jobs on the Batch API lane every poll until the replica drains: uploads a
    /// job's titles and creates its batch (once: where it is is kept with the job), reads
    /// what the batch answered when it ends, and cancels it when the deadline comes too close
    /// or the job is cancelled (what it finished is kept). What the batch did not answer goes
    /// to live rounds.
    pub async fn run_batches(self: Arc<Self>, classifier: Arc<Classifier>, lifecycle: Lifecycle) {
        while !lifecycle.is_draining() {
            match self.batch_jobs().await {
                Ok(jobs) => {
                    for work in jobs {
                        let job_id = work.job_id.clone();
                        if !matches!(self.lock_batch(&job_id).await, Ok(true)) {
                            continue;
                        }
                        let span = tracing::info_span!("job batch", hnc.job = %job_id);
                        let step = Box::pin(self.batch_step(&classifier, work));
                        let step = tracing::Instrument::instrument(step, span);
                        // Held while the step runs (a large upload, a slow provider); a step
                        // whose hold another replica took is stopped where it is.
                        let stepped = tokio::select! {
                            stepped = step => stepped,
                            () = self.keep_batch_lock(&job_id) => Err(LaneError::Lost),
                        };
                        if let Err(error) = stepped {
                            tracing::warn!(hnc.job = %job_id, %error, "a job's batch step failed; tried again at the next poll");
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "the job store failed; batches wait"),
            }
            // In slices, so a drain does not wait out a whole poll.
            let next = tokio::time::Instant::now() + self.lanes.poll;
            while !lifecycle.is_draining() && tokio::time::Instant::now() < next {
                tokio::time::sleep_until(next.min(tokio::time::Instant::now() + IDLE)).await;
            }
        }
    }

    /// One look at a job's batch: create it, or read it when it ended, or cancel it when the
    /// job was cancelled or the rest would no longer finish live in time. When the deadline
    /// comes too close and the Batch API does not answer, the titles go live anyway: the
    /// deadline comes first.
    async fn batch_step(
        &self,
        classifier: &Arc<Classifier>,
        work: BatchWork,
    ) -> Result<(), LaneError> {
        let upstream = classifier.upstream();
        let (base_url, key, path) = upstream.batch_target();
        let client = BatchClient::new(base_url, key);
        let Some(taxonomy) = classifier.taxonomies().get(&work.taxonomy).cloned() else {
            // Live rounds answer each title with `unknown_taxonomy`.
            return Ok(self.leave_batch(work.job_id).await?);
        };
        let offer = offer(classifier, self.lanes);
        let late = batch::must_escalate(&work, &offer, upstream.pack_size(), now_ms());
        let mut state = work.state.clone();
        let Some(batch_id) = state.batch_id.clone() else {
            if late || work.cancelled {
                // Not made yet: nothing to stop at the provider.
                return Ok(self.leave_batch(work.job_id).await?);
            }
            let submitted = self
                .submit_batch(classifier, &client, &taxonomy, path, &work)
                .await;
            if let Err(error) = submitted {
                state.failures += 1;
                if state.failures >= MAX_BATCH_FAILURES {
                    tracing::warn!(hnc.job = %work.job_id, %error, "the Batch API failed the job's batch {MAX_BATCH_FAILURES} times; its titles go live");
                    return Ok(self.leave_batch(work.job_id).await?);
                }
                self.set_batch(work.job_id.clone(), state).await?;
                return Err(error);
            }
            return Ok(());
        };
        let batch = match client.retrieve(&batch_id).await {
            Ok(batch) => batch,
            Err(error) if late => {
                tracing::warn!(hnc.job = %work.job_id, %error, "the Batch API does not answer and the deadline is near: the titles go live");
                return Ok(self.leave_batch(work.job_id).await?);
            }
            Err(error) => return Err(error.into()),
        };
        if batch.is_terminal() {
            return self
                .read_batch(classifier, &client, taxonomy, &work, &batch)
                .await;
        }
        if (late || work.cancelled) && !state.cancelled {
            if work.cancelled {
                tracing::info!(hnc.job = %work.job_id, "the job was cancelled: its batch is cancelled, what it finished is kept");
            } else {
                tracing::info!(hnc.job = %work.job_id, pending = work.pending, "a job's batch is cancelled to meet the deadline: what it finished is kept, the rest goes live");
            }
            client.cancel(&batch_id).await?;
            state.cancelled = true;
            self.set_batch(work.job_id, state).await?;
        }
        Ok(())
    }

    /// Reads what an ended batch answered and writes it in pieces, the last one moving the job
    /// off the Batch API lane (its titles not answered go live). Each piece's id comes from
    /// the batch's, so answers read again after a crash are not counted twice.
    async fn read_batch(
        &self,
        classifier: &Arc<Classifier>,
        client: &BatchClient,
        taxonomy: Arc<crate::taxonomy::Taxonomy>,
        work: &BatchWork,
        batch: &BatchObject,
    ) -> Result<(), LaneError> {
        let mut files = Vec::new();
        for file in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            files.push(client.content(file).await?);
        }
        let reader = classifier.clone();
        let (outcomes, usage) = crate::tasks::spawn_blocking(move || {
            batch::read_answers(reader.upstream(), &taxonomy, &files)
        })
        .await
        .expect("reading answers does not panic");
        tracing::info!(hnc.job = %work.job_id, status = %batch.status, answered = outcomes.len(), "a job's batch ended; what it did not answer goes live");
        if let Some(took) = batch.turnaround() {
            let model = classifier.upstream().first_model().to_owned();
            self.note_turnaround(model, took).await;
        }
        let live_cost = classifier
            .upstream()
            .price()
            .map(|p| p.at(Tier::Standard).cost(&usage));
        let pieces: Vec<Vec<(u64, ItemOutcome)>> = if outcomes.is_empty() {
            vec![Vec::new()]
        } else {
            outcomes
                .chunks(BATCH_WRITE)
                .map(<[(u64, ItemOutcome)]>::to_vec)
                .collect()
        };
        let last = pieces.len() - 1;
        for (n, piece) in pieces.into_iter().enumerate() {
            // The usage goes with the first piece, once.
            let (usage, live_cost) = if n == 0 {
                (usage.into(), live_cost)
            } else {
                (JobUsage::default(), Some(0.0))
            };
            let written = Written {
                lane: Lane::Batch,
                live_cost,
                round: piece_id(&batch.id, n),
                leaves_batch: n == last,
            };
            if !self
                .record_paid(&work.as_round(), piece, usage, written)
                .await
            {
                // Read again at the next look; the pieces written are not counted twice.
                return Ok(());
            }
        }
        Ok(())
    }

    /// Uploads the titles of `work` not done yet and creates their batch, keeping each id as
    /// soon as it is known; a batch created just before a crash is found by its metadata and
    /// adopted rather than created twice, and a creation is sent once (never retried blind).
    /// Titles the checks refuse get their error at once.
    async fn submit_batch(
        &self,
        classifier: &Arc<Classifier>,
        client: &BatchClient,
        taxonomy: &Arc<crate::taxonomy::Taxonomy>,
        path: &'static str,
        work: &BatchWork,
    ) -> Result<(), LaneError> {
        let mut state = work.state.clone();
        let file_id = match state.file_id.clone() {
            Some(id) => id,
            None => {
                let titles = self.pending_titles(work.job_id.clone()).await?;
                let max_chars = classifier.limits().max_title_chars;
                let (writer, taxonomy) = (classifier.clone(), taxonomy.clone());
                let (jsonl, rejected) = crate::tasks::spawn_blocking(move || {
                    batch::input_file(writer.upstream(), &taxonomy, &titles, max_chars, path)
                })
                .await
                .expect("writing the file does not panic");
                if !rejected.is_empty() {
                    let written = Written {
                        lane: Lane::Batch,
                        live_cost: Some(0.0),
                        round: piece_id(&format!("{}-rejected", work.job_id), 0),
                        leaves_batch: jsonl.is_empty(),
                    };
                    self.record_paid(&work.as_round(), rejected, JobUsage::default(), written)
                        .await;
                }
                if jsonl.is_empty() {
                    return Ok(());
                }
                self.relock(&work.job_id).await?;
                let name = format!("hnc-{}.jsonl", work.job_id);
                let id = client.upload(&name, jsonl).await?;
                state.file_id = Some(id.clone());
                self.set_batch(work.job_id.clone(), state.clone()).await?;
                id
            }
        };
        self.relock(&work.job_id).await?;
        let adopted = client.list().await?.into_iter().find(|b| {
            b.metadata
                .as_ref()
                .is_some_and(|m| m["hnc_job"] == work.job_id.as_str())
                && !b.hit_token_limit()
        });
        let batch = match adopted {
            Some(batch) => batch,
            None => {
                let metadata = serde_json::json!({"hnc_job": work.job_id});
                client.create_once(&file_id, path, metadata).await?
            }
        };
        if batch.hit_token_limit() {
            // The provider's queue for this model is full: live rounds take the titles.
            tracing::info!(hnc.job = %work.job_id, "the Batch API refused the job's batch for its enqueued-token limit; the titles go live");
            return Ok(self.leave_batch(work.job_id.clone()).await?);
        }
        tracing::info!(hnc.job = %work.job_id, batch = %batch.id, "a job's batch is created");
        state.batch_id = Some(batch.id);
        state.failures = 0;
        Ok(self.set_batch(work.job_id.clone(), state).await?)
    }

    /// How long a replica holds a job's batch without renewing: a replica that died lets go
    /// after it.
    fn batch_hold(&self) -> Duration {
        (self.lanes.poll * 6).max(Duration::from_secs(1))
    }

    /// Renews the hold on `job_id`'s batch every third of it; returns when it was lost.
    async fn keep_batch_lock(&self, job_id: &str) {
        loop {
            tokio::time::sleep(self.batch_hold() / 3).await;
            if let Ok(false) = self.lock_batch(job_id).await {
                return;
            }
        }
    }

    /// Renews this replica's hold on a job's batch before a step that spends or creates:
    /// another replica that took it over meanwhile stops this one.
    async fn relock(&self, job_id: &str) -> Result<(), LaneError> {
        match self.lock_batch(job_id).await? {
            true => Ok(()),
            false => Err(LaneError::Lost),
        }
    }

    /// Writes a round's results, trying again for a while when the store does not answer (a
    /// Redis restart): they were paid for. `false` when it gave up (the titles go again in a
    /// later round; a batch's answers are read again at the next look).
    async fn record_paid(
        &self,
        work: &Work,
        outcomes: Vec<(u64, ItemOutcome)>,
        usage: JobUsage,
        written: Written,
    ) -> bool {
        let mut wait = IDLE;
        for attempt in 1..=RECORD_ATTEMPTS {
            match self.record(work, outcomes.clone(), usage, written).await {
                Ok(()) => return true,
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
        false
    }

    /// One round of a job's titles through the pipeline, once it is admitted (waiting while the
    /// service is at capacity), in the lane its plan and deadline call for now: each title's
    /// outcome, what the calls cost, and the lane with what they would have cost live.
    async fn round(
        &self,
        classifier: &Classifier,
        lifecycle: &Lifecycle,
        work: &Work,
    ) -> (Vec<(u64, ItemOutcome)>, JobUsage, (Lane, Option<f64>)) {
        let pack = classifier.upstream().pack_size();
        let (lane, urgent) = lane_now(work, &offer(classifier, self.lanes), pack, now_ms());
        let Some(taxonomy) = classifier.taxonomies().get(&work.taxonomy).cloned() else {
            let outcomes = work
                .items
                .iter()
                .map(|(index, _, _)| {
                    let line = ResultLine::error(
                        *index,
                        "unknown_taxonomy",
                        "the job's taxonomy is no longer configured",
                    );
                    (*index, ItemOutcome::Done(line))
                })
                .collect();
            return (outcomes, JobUsage::default(), (lane, Some(0.0)));
        };
        let titles: Vec<String> = work.items.iter().map(|(_, t, _)| t.clone()).collect();
        let admitted = if urgent {
            classifier.admit_urgent(&titles)
        } else {
            classifier.admit_in_background(&titles)
        };
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
        // Boxed: a batch's future is large, and the round's would hold two of them.
        let batch = Box::pin(classifier.classify_batch(admitted, &taxonomy, &titles, cut));
        let outcome = match lane {
            Lane::Flex => crate::upstream::with_tier(ServiceTier::Flex, batch).await,
            Lane::Live | Lane::Batch => batch.await,
        };
        let live_cost = classifier
            .upstream()
            .price()
            .map(|p| p.at(Tier::Standard).cost(&outcome.usage));
        let outcomes = work
            .items
            .iter()
            .zip(&outcome.results)
            .map(|((index, _, attempts), result)| {
                let line = match result {
                    Ok(c) => ResultLine::of(*index, &c.prediction),
                    // Stopped by the replica (a drain), or never reached at background priority
                    // before the round's deadline (interactive traffic had the budget): neither
                    // is the title's failure, and neither uses up its attempts.
                    Err(e) if e.code() == "shutting_down" || e.code() == "deadline_exceeded" => {
                        return (*index, ItemOutcome::Again { counted: false });
                    }
                    Err(e) if is_transient(e.code()) && attempts + 1 < MAX_ATTEMPTS => {
                        return (*index, ItemOutcome::Again { counted: true });
                    }
                    Err(e) => ResultLine::error(*index, e.code(), &e.to_string()),
                };
                (*index, ItemOutcome::Done(line))
            })
            .collect();
        (outcomes, outcome.usage.into(), (lane, live_cost))
    }
}

/// What the service offers a job now: this replica's view of the rate budget (the whole of it,
/// with a shared budget), the model's price and tiers, the Batch API's expected turnaround.
pub fn offer(classifier: &Classifier, lanes: Lanes) -> Offer {
    let upstream = classifier.upstream();
    let model = upstream.first_model();
    Offer {
        calls_per_s: upstream.request_rate(),
        tokens_per_s: upstream.token_rate(),
        price: upstream.price(),
        flex: ServiceTier::Flex.offered_by(model),
        batch: Some(lanes.batch_window),
        batch_observed: false,
        margin: lanes.margin,
    }
}

impl Jobs {
    /// The plan for `titles` with `deadline_ms`, made off the async threads (the titles'
    /// tokens are counted): the cheapest lane that meets it, or the earliest deadline that
    /// could be met. The Batch API's turnaround is what its batches for this model took of
    /// late (the longest of the last few, doubled), when any completed, below the window.
    pub async fn plan(
        &self,
        classifier: Arc<Classifier>,
        taxonomy: Arc<crate::taxonomy::Taxonomy>,
        titles: Arc<Vec<String>>,
        deadline_ms: Option<i64>,
    ) -> Result<Plan, Unreachable> {
        let model = classifier.upstream().first_model().to_owned();
        let seen = match &self.store {
            Store::Disk(d) => {
                let d = d.clone();
                crate::tasks::spawn_blocking(move || d.turnaround(&model))
                    .await
                    .expect("a store operation does not panic")
            }
            Store::Shared(s) => s.turnaround(&model).await,
        };
        let mut offer = offer(&classifier, self.lanes);
        if let Ok(Some(took)) = seen {
            let observed = (took.max(Duration::from_secs(1)) * 2).min(self.lanes.batch_window);
            offer.batch = Some(observed);
            offer.batch_observed = observed < self.lanes.batch_window;
        }
        plan_with(classifier, taxonomy, titles, deadline_ms, offer).await
    }

    /// Notes how long a completed batch of `model` took, for later plans.
    async fn note_turnaround(&self, model: String, took: Duration) {
        let noted = on_store!(self, |d| d.note_turnaround(&model, took), |s| s
            .note_turnaround(&model, took));
        if let Err(error) = noted {
            tracing::warn!(%error, "a batch's turnaround could not be noted");
        }
    }
}

async fn plan_with(
    classifier: Arc<Classifier>,
    taxonomy: Arc<crate::taxonomy::Taxonomy>,
    titles: Arc<Vec<String>>,
    deadline_ms: Option<i64>,
    offer: Offer,
) -> Result<Plan, Unreachable> {
    crate::tasks::spawn_blocking(move || {
        let max_chars = classifier.limits().max_title_chars;
        let checked: Vec<&str> = titles
            .iter()
            .filter_map(|t| crate::classify::check_title(t, max_chars).ok())
            .collect();
        let (calls, input_tokens, output_tokens) =
            classifier.upstream().estimate(&taxonomy, &checked);
        let demand = Demand {
            titles: titles.len() as u64,
            calls,
            input_tokens,
            output_tokens,
        };
        plan::plan(&demand, &offer, now_ms(), deadline_ms)
    })
    .await
    .expect("planning does not panic")
}

/// The lane a round of `work` takes now, and whether it is urgent (interactive priority):
/// the plan's lane while the rest of the job would still finish live in time, live once it
/// would not (a flex job near its deadline goes live); a live job runs at background priority
/// until its deadline needs the whole budget.
fn lane_now(work: &Work, offer: &Offer, pack_size: usize, now_ms: i64) -> (Lane, bool) {
    let planned = work.plan.as_ref().map_or(Lane::Live, |p| p.lane);
    let Some(deadline_ms) = work.deadline_ms else {
        return (planned, false);
    };
    let left = Duration::from_millis(u64::try_from(deadline_ms - now_ms).unwrap_or(0));
    let rest = plan::rest(work.plan.as_ref(), work.pending, pack_size);
    let live_needs = offer.live_needs(offer.live_time(&rest).0);
    match planned {
        Lane::Flex if left >= live_needs + offer.margin => (Lane::Flex, false),
        _ => (Lane::Live, left < live_needs * 2),
    }
}
