//! A batch of titles in, one result per title out, in input order. Titles that cannot be sent
//! (empty, too long) get their error without an upstream call; the rest fan out, at most
//! `request_concurrency` at a time for this batch, through single-flight and the cache to the
//! shared upstream client. Each result is reported as it completes (for streaming) and collected
//! in order (for the plain answer).

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
}

/// The process is saturated: the batch could not start within `admission_wait`. Nothing was
/// sent upstream, so the caller can retry elsewhere without losing or duplicating anything.
#[derive(Debug, thiserror::Error)]
#[error("every upstream slot stayed busy for {}s", .waited.as_secs_f64())]
pub struct Overloaded {
    pub waited: Duration,
}

/// Proof that a batch was admitted (`Classifier::admit`): only an admitted batch is classified,
/// so the capacity check happens exactly once, where a refusal can still be a status code.
/// It carries the batch's share of the upstream slots, which its admission already queued under.
#[derive(Debug)]
pub struct Admitted {
    share: u64,
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
}

impl ItemError {
    /// The stable machine-readable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TitleEmpty => "title_empty",
            Self::TitleTooLong { .. } => "title_too_long",
            Self::Upstream(e) => e.last.code(),
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

    /// Admits a batch of `titles`: refused when none of the upstream capacity frees up within
    /// the admission wait. A batch with nothing to send (every title rejected up front) needs
    /// no capacity and is always admitted.
    pub async fn admit(&self, titles: &[String]) -> Result<Admitted, Overloaded> {
        // The batch's calls queue as one share, so the batches waiting for upstream slots
        // take turns instead of the oldest queue going first; its admission queues under the
        // same share, so many batches arriving at once do not wait behind each other's checks.
        let admitted = Admitted {
            share: self.batches.fetch_add(1, Ordering::Relaxed),
        };
        if titles.iter().all(|t| self.check_title(t).is_err()) {
            return Ok(admitted);
        }
        let wait = self.limits.admission_wait;
        let has_capacity = with_share(admitted.share, self.upstream().has_capacity_within(wait));
        if has_capacity.await {
            Ok(admitted)
        } else {
            Err(Overloaded { waited: wait })
        }
    }

    /// Classifies every title, in input order. An admitted batch never fails as a whole: each
    /// failure is that item's error. Dropping the future (the caller went away) drops its
    /// queued and in-flight calls.
    pub async fn classify_batch(
        &self,
        admitted: Admitted,
        taxonomy: &Taxonomy,
        titles: &[String],
    ) -> BatchOutcome {
        self.classify_batch_with(admitted, taxonomy, titles, |_, _| {})
            .await
    }

    /// Like `classify_batch`, and calls `on_item(index, result)` as each item completes.
    pub async fn classify_batch_with(
        &self,
        admitted: Admitted,
        taxonomy: &Taxonomy,
        titles: &[String],
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
        let outcome = with_share(admitted.share, self.run_batch(taxonomy, titles, on_item))
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
        while let Some(answers) = in_flight.next().await {
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

        let span = tracing::Span::current();
        span.record("hnc.cache_hits", cache_hits);
        span.record("hnc.single_flight_hits", shared);
        let from_upstream = to_send.len() as u64 - cache_hits - shared;
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
