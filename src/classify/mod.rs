//! A batch of titles in, one result per title out, in input order. Titles that cannot be sent
//! (empty, too long) get their error without an upstream call; the rest fan out, at most
//! `request_concurrency` at a time for this batch, through single-flight and the cache to the
//! shared upstream client. Each result is reported as it completes (for streaming) and collected
//! in order (for the plain answer). A batch has a deadline and can be cut short (shutdown): the
//! items not done then get `deadline_exceeded` or `shutting_down`, so the answer is always
//! complete. Admission refuses a batch the provider's rate limit cannot serve within its
//! deadline behind the batches already admitted, before anything is paid for.

mod dedupe;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use dedupe::{Answer, Dedupe};
pub use dedupe::{CacheSettings, Source};

use crate::coord::SharedCache;
use crate::metrics::Metrics;
use crate::taxonomy::{Taxonomies, Taxonomy};
use crate::upstream::{Failure, Prediction, UpstreamClient, Usage, with_share};

/// Bounds on what one request may ask for; the API validates against these.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most titles in one request.
    pub max_batch: usize,
    /// Longest title, in characters (Unicode scalar values) after trimming, not bytes.
    pub max_title_chars: usize,
    /// Most upstream calls in flight for one request.
    pub request_concurrency: usize,
    /// Longest a batch waits for upstream capacity before it is refused as overloaded.
    pub admission_wait: Duration,
    /// Longest a batch runs, from its request's arrival: the items not done by then answer
    /// `deadline_exceeded`. Below the request timeout, so the answer is always complete.
    pub batch_deadline: Duration,
}

/// The request timeout less this share of it (at least a second, at most ten) is a batch's
/// deadline: room to write the answer before the timeout would cut it.
const ANSWER_MARGIN: f64 = 0.05;

impl BatchLimits {
    /// The deadline of a batch whose request may take `request_timeout`.
    pub fn deadline_within(request_timeout: Duration) -> Duration {
        let margin = request_timeout
            .mul_f64(ANSWER_MARGIN)
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        request_timeout
            .saturating_sub(margin)
            .max(request_timeout / 2)
    }
}

/// The batch cannot start now. Nothing was sent upstream (nor charged to the caller's quota),
/// so the caller can retry elsewhere or later without losing or duplicating anything.
#[derive(Debug, thiserror::Error)]
pub enum Overloaded {
    /// The process is saturated: no upstream slot freed up within the admission wait.
    #[error("every upstream slot stayed busy for {}s", .waited.as_secs_f64())]
    SlotsBusy { waited: Duration },
    /// The provider's rate limit is committed to the batches already admitted for longer than
    /// this batch's deadline allows.
    #[error(
        "the provider's rate limit is committed to batches already running for about {}s; this \
         batch's {calls} calls would not finish within its {}s deadline",
        .ahead.as_secs(), .deadline.as_secs()
    )]
    RateBudget {
        calls: u64,
        ahead: Duration,
        deadline: Duration,
    },
}

impl Overloaded {
    /// When trying again makes sense.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::SlotsBusy { .. } => Duration::from_secs(1),
            Self::RateBudget { ahead, .. } => *ahead,
        }
    }
}

/// Why a batch stopped before every item was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Its deadline passed (`BatchLimits::batch_deadline`).
    Deadline(Duration),
    /// The replica is shutting down and its shutdown deadline passed.
    Shutdown,
}

/// Proof that a batch was admitted (`Classifier::admit`): only an admitted batch is classified,
/// so the capacity check happens exactly once, where a refusal can still be a status code.
/// It carries the batch's share of the upstream slots, which its admission already queued under,
/// and its calls in the count of those admitted and not yet made.
#[derive(Debug)]
pub struct Admitted {
    share: u64,
    pending: Pending,
}

/// A batch's calls not yet made, counted in the classifier's total until they are (or the
/// batch ends).
#[derive(Debug)]
struct Pending {
    left: AtomicU64,
    all: Arc<AtomicU64>,
}

impl Pending {
    fn new(calls: u64, all: &Arc<AtomicU64>) -> Self {
        all.fetch_add(calls, Ordering::Relaxed);
        Self {
            left: AtomicU64::new(calls),
            all: all.clone(),
        }
    }

    /// One call made.
    fn made(&self) {
        if self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            self.all.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.all
            .fetch_sub(self.left.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Why one item has no label.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("the title is empty after trimming whitespace")]
    TitleEmpty,
    #[error("the title is {chars} characters long; the limit is {max}")]
    TitleTooLong { chars: usize, max: usize },
    /// Shared: items asking the same question at once get the same failure.
    #[error(transparent)]
    Upstream(Arc<Failure>),
    #[error(
        "the batch's deadline of {}s passed before this item was done; send it again",
        .0.as_secs_f64()
    )]
    DeadlineExceeded(Duration),
    #[error("the replica shut down before this item was done; send it again")]
    ShuttingDown,
}

impl ItemError {
    /// The stable machine-readable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TitleEmpty => "title_empty",
            Self::TitleTooLong { .. } => "title_too_long",
            Self::Upstream(e) => e.last.code(),
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The item error codes that asking again cannot change: the title itself, or the model's
/// considered answer. Every other code (unreachable, rate-limited, a deadline, a shutdown, ...)
/// is transient, and `classify` sends such a row again when it is run again.
pub const FINAL_CODES: [&str; 6] = [
    "title_empty",
    "title_too_long",
    "model_refused",
    "off_taxonomy",
    "confidence_out_of_range",
    "upstream_response_too_large",
];

/// Whether an item that failed with `code` is worth sending again later.
pub fn is_transient(code: &str) -> bool {
    !FINAL_CODES.contains(&code)
}

impl From<Cut> for ItemError {
    fn from(cut: Cut) -> Self {
        match cut {
            Cut::Deadline(after) => Self::DeadlineExceeded(after),
            Cut::Shutdown => Self::ShuttingDown,
        }
    }
}

/// A label for one item, and whether it came from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Classified {
    pub prediction: Prediction,
    pub cached: bool,
}

pub type ItemResult = Result<Classified, ItemError>;

/// Everything a batch produced: `results[i]` belongs to `titles[i]`.
#[derive(Debug)]
pub struct BatchOutcome {
    pub results: Vec<ItemResult>,
    pub usage: Usage,
}

impl BatchOutcome {
    pub fn errors(&self) -> usize {
        self.results.iter().filter(|r| r.is_err()).count()
    }
}

/// The batch engine, shared by every request.
#[derive(Debug)]
pub struct Classifier {
    dedupe: Dedupe,
    /// Numbers each batch: its share of the upstream slots.
    batches: AtomicU64,
    /// Calls of the admitted batches not yet made: what the rate limit is committed to.
    pending_calls: Arc<AtomicU64>,
    /// The same for jobs' rounds, kept apart: they yield to interactive batches.
    background_calls: Arc<AtomicU64>,
    taxonomies: Taxonomies,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

impl Classifier {
    pub fn new(
        upstream: Arc<UpstreamClient>,
        taxonomies: Taxonomies,
        limits: BatchLimits,
        cache: Option<CacheSettings>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dedupe: Dedupe::new(upstream, cache),
            batches: AtomicU64::new(1),
            pending_calls: Arc::new(AtomicU64::new(0)),
            background_calls: Arc::new(AtomicU64::new(0)),
            taxonomies,
            limits,
            metrics,
        }
    }

    /// Backs the result cache with the cache every replica shares (a second level).
    pub fn share_cache(mut self, shared: SharedCache) -> Self {
        self.dedupe = self.dedupe.with_shared(shared);
        self
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn upstream(&self) -> &UpstreamClient {
        self.dedupe.upstream()
    }

    /// The taxonomies requests may name.
    pub fn taxonomies(&self) -> &Taxonomies {
        &self.taxonomies
    }

    /// Admits a batch of `titles`: refused when the provider's known rate limit is committed
    /// to the batches already admitted for longer than this one's deadline, or when none of
    /// the upstream capacity frees up within the admission wait. A batch with nothing to send
    /// (every title rejected up front) needs no capacity and is always admitted; so is a batch
    /// with nothing ahead of it, however long it needs (what its deadline leaves undone
    /// answers `deadline_exceeded`, and is sent again by the caller).
    pub async fn admit(&self, titles: &[String]) -> Result<Admitted, Overloaded> {
        let sendable = titles
            .iter()
            .filter(|t| self.check_title(t).is_ok())
            .count();
        let calls = sendable.div_ceil(self.upstream().pack_size()) as u64;
        if let Some(rate) = self.upstream().request_rate() {
            let ahead = self.pending_calls.load(Ordering::Relaxed);
            let deadline = self.limits.batch_deadline;
            let needs = Duration::from_secs_f64((ahead + calls) as f64 / rate.max(1e-3));
            if ahead > 0 && needs > deadline {
                return Err(Overloaded::RateBudget {
                    calls,
                    ahead: Duration::from_secs_f64(ahead as f64 / rate.max(1e-3))
                        .max(Duration::from_secs(1)),
                    deadline,
                });
            }
        }
        // The batch's calls queue as one share, so the batches waiting for upstream slots
        // take turns instead of the oldest queue going first; its admission queues under the
        // same share, so many batches arriving at once do not wait behind each other's checks.
        let admitted = Admitted {
            share: self.batches.fetch_add(1, Ordering::Relaxed),
            pending: Pending::new(calls, &self.pending_calls),
        };
        if sendable == 0 {
            return Ok(admitted);
        }
        let wait = self.limits.admission_wait;
        let has_capacity = with_share(admitted.share, self.upstream().has_capacity_within(wait));
        if has_capacity.await {
            Ok(admitted)
        } else {
            Err(Overloaded::SlotsBusy { waited: wait })
        }
    }

    /// The calls `titles` make: the sendable ones, in packs.
    fn calls_for(&self, titles: &[String]) -> u64 {
        let sendable = titles
            .iter()
            .filter(|t| self.check_title(t).is_ok())
            .count();
        sendable.div_ceil(self.upstream().pack_size()) as u64
    }

    /// Admits a job's round at background priority: its calls take an upstream slot only while
    /// no interactive batch waits for one, and they do not count in the rate budget that
    /// interactive admission checks, so a job never gets an interactive batch refused.
    pub fn admit_in_background(&self, titles: &[String]) -> Admitted {
        let calls = self.calls_for(titles);
        Admitted {
            share: self.batches.fetch_add(1, Ordering::Relaxed) | crate::upstream::BACKGROUND,
            pending: Pending::new(calls, &self.background_calls),
        }
    }

    /// Admits a job's round that its deadline has made urgent: its calls queue as an
    /// interactive batch's do (no background bit) and count in the rate budget interactive
    /// admission checks, but it is never refused: a job due soon takes the whole budget.
    pub fn admit_urgent(&self, titles: &[String]) -> Admitted {
        let calls = self.calls_for(titles);
        Admitted {
            share: self.batches.fetch_add(1, Ordering::Relaxed),
            pending: Pending::new(calls, &self.pending_calls),
        }
    }

    /// Classifies every title, in input order, until `cut` resolves: the items not done then
    /// get its error. An admitted batch never fails as a whole: each failure is that item's
    /// error. Dropping the future (the caller went away) drops its queued and in-flight calls.
    pub async fn classify_batch(
        &self,
        admitted: Admitted,
        taxonomy: &Taxonomy,
        titles: &[String],
        cut: impl Future<Output = Cut>,
    ) -> BatchOutcome {
        self.classify_batch_with(admitted, taxonomy, titles, cut, |_, _| {})
            .await
    }

    /// Like `classify_batch`, and calls `on_item(index, result)` as each item completes.
    pub async fn classify_batch_with(
        &self,
        admitted: Admitted,
        taxonomy: &Taxonomy,
        titles: &[String],
        cut: impl Future<Output = Cut>,
        on_item: impl FnMut(usize, &ItemResult),
    ) -> BatchOutcome {
        let span = tracing::info_span!(
            "batch",
            items = titles.len(),
            taxonomy = taxonomy.name(),
            errors = tracing::field::Empty,
            trace_id = crate::telemetry::current_trace_id(),
            hnc.cache_hits = tracing::field::Empty,
            hnc.single_flight_hits = tracing::field::Empty,
        );
        let run = self.run_batch(taxonomy, titles, &admitted.pending, cut, on_item);
        let outcome = with_share(admitted.share, run)
            .instrument(span.clone())
            .await;
        span.record("errors", outcome.errors());
        for result in &outcome.results {
            let label = result.as_ref().map_or_else(ItemError::code, |_| "ok");
            self.metrics.items.with_label_values(&[label]).inc();
        }
        let limiter = self.upstream().limiter_snapshot();
        span.in_scope(|| {
            tracing::info!(
                upstream_requests = outcome.usage.upstream_requests,
                input_tokens = outcome.usage.input_tokens,
                output_tokens = outcome.usage.output_tokens,
                limit = limiter.limit,
                in_flight = limiter.in_flight,
                waiting = limiter.waiting,
                "batch classified"
            );
        });
        outcome
    }

    async fn run_batch(
        &self,
        taxonomy: &Taxonomy,
        titles: &[String],
        pending: &Pending,
        cut: impl Future<Output = Cut>,
        mut on_item: impl FnMut(usize, &ItemResult),
    ) -> BatchOutcome {
        let mut slots: Vec<Option<ItemResult>> = Vec::with_capacity(titles.len());
        let mut to_send = Vec::with_capacity(titles.len());
        for (index, title) in titles.iter().enumerate() {
            match self.check_title(title) {
                Ok(clean) => {
                    slots.push(None);
                    to_send.push((index, clean));
                }
                Err(e) => slots.push(Some(Err(e))),
            }
        }
        for (index, slot) in slots.iter().enumerate() {
            if let Some(result) = slot {
                on_item(index, result);
            }
        }

        // Units of work: one title, or a pack of up to `pack_size` titles for one call. A window
        // of at most `request_concurrency` units runs at once: start one as each finishes. Built
        // by hand rather than with `buffer_unordered` over a closure, whose borrowing futures
        // trip the compiler's `Send` check inside axum handlers.
        let pack_size = self.upstream().pack_size();
        let mut units = to_send.chunks(pack_size).map(<[(usize, &str)]>::to_vec);
        let mut in_flight = FuturesUnordered::new();
        for unit in units.by_ref().take(self.limits.request_concurrency.max(1)) {
            in_flight.push(self.classify_unit(taxonomy, unit));
        }
        let mut usage = Usage::default();
        let (mut cache_hits, mut shared) = (0u64, 0u64);
        tokio::pin!(cut);
        let mut stopped = None;
        loop {
            let answers = tokio::select! {
                // Answers first: one that is ready when the cut comes is kept.
                biased;
                next = in_flight.next() => match next {
                    Some(answers) => answers,
                    None => break,
                },
                why = &mut cut => {
                    stopped = Some(why);
                    break;
                }
            };
            pending.made();
            for (index, answer) in answers {
                usage += answer.usage;
                cache_hits += u64::from(answer.source == Source::Cache);
                shared += u64::from(answer.source == Source::Shared);
                let result = match answer.result {
                    Ok(prediction) => Ok(Classified {
                        prediction,
                        cached: answer.source == Source::Cache,
                    }),
                    Err(failure) => Err(ItemError::Upstream(failure)),
                };
                on_item(index, &result);
                slots[index] = Some(result);
            }
            if let Some(unit) = units.next() {
                in_flight.push(self.classify_unit(taxonomy, unit));
            }
        }
        // Cut short: the calls still out are dropped (cancelled), and every item not done
        // answers why, so the answer stays complete.
        drop(in_flight);
        let mut cut_items = 0;
        if let Some(why) = stopped {
            for (index, slot) in slots.iter_mut().enumerate() {
                if slot.is_none() {
                    let result = Err(ItemError::from(why));
                    on_item(index, &result);
                    *slot = Some(result);
                    cut_items += 1;
                }
            }
            tracing::warn!(?why, items = cut_items, "batch cut short");
        }

        let span = tracing::Span::current();
        span.record("hnc.cache_hits", cache_hits);
        span.record("hnc.single_flight_hits", shared);
        let from_upstream = to_send.len() as u64 - cache_hits - shared - cut_items;
        for (source, n) in [
            ("upstream", from_upstream),
            ("cache", cache_hits),
            ("single_flight", shared),
        ] {
            self.metrics.answers.with_label_values(&[source]).inc_by(n);
        }
        let results = slots
            .into_iter()
            .map(|slot| slot.expect("every index is either rejected up front or sent exactly once"))
            .collect();
        BatchOutcome { results, usage }
    }

    /// One title through single-flight, or several through one packed call.
    async fn classify_unit(
        &self,
        taxonomy: &Taxonomy,
        unit: Vec<(usize, &str)>,
    ) -> Vec<(usize, Answer)> {
        if let [(index, title)] = unit[..] {
            return vec![(index, self.dedupe.classify(taxonomy, title).await)];
        }
        let titles: Vec<&str> = unit.iter().map(|(_, title)| *title).collect();
        // Boxed: a pack's future is larger than a single title's, and every unit would
        // otherwise be allocated at the larger size whether packing is on or not.
        let answers = Box::pin(self.dedupe.classify_pack(taxonomy, &titles)).await;
        unit.into_iter()
            .map(|(index, _)| index)
            .zip(answers)
            .collect()
    }

    /// The title as it will be sent (trimmed of Unicode whitespace), or why it will not be.
    fn check_title<'t>(&self, title: &'t str) -> Result<&'t str, ItemError> {
        check_title(title, self.limits.max_title_chars)
    }
}

/// The title as it will be sent (trimmed of Unicode whitespace), or why it will not be: the
/// check every lane applies before anything is sent (the Batch API lane too).
pub fn check_title(title: &str, max_title_chars: usize) -> Result<&str, ItemError> {
    let trimmed = title.trim();
    if trimmed.is_empty() {
        return Err(ItemError::TitleEmpty);
    }
    let (chars, max) = (trimmed.chars().count(), max_title_chars);
    if chars > max {
        return Err(ItemError::TitleTooLong { chars, max });
    }
    Ok(trimmed)
}
