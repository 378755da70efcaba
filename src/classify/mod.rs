//! A batch of titles in, one result per title out, in input order. Titles that cannot be sent
//! (empty, too long) get their error without an upstream call; the rest fan out to the shared
//! upstream client with at most `request_concurrency` calls in flight for this batch.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::upstream::{Failure, Prediction, Slot, UpstreamClient, Usage};

/// Bounds on what one request may ask for; the API validates against these.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most titles in one request.
    pub max_batch: usize,
    /// Longest title, in characters (Unicode scalar values) after trimming, not bytes.
    pub max_title_chars: usize,
    /// Most upstream calls in flight for one request.
    pub request_concurrency: usize,
    /// Longest a batch waits for its first upstream slot before it is refused as overloaded.
    pub admission_wait: Duration,
}

/// The process is saturated: the batch could not start within `admission_wait`. Nothing was
/// sent upstream, so the caller can retry elsewhere without losing or duplicating anything.
#[derive(Debug, thiserror::Error)]
#[error("every upstream slot stayed busy for {}s", .waited.as_secs_f64())]
pub struct Overloaded {
    pub waited: Duration,
}

/// Why one item has no label.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("the title is empty after trimming whitespace")]
    TitleEmpty,
    #[error("the title is {chars} characters long; the limit is {max}")]
    TitleTooLong { chars: usize, max: usize },
    #[error(transparent)]
    Upstream(#[from] Failure),
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

pub type ItemResult = Result<Prediction, ItemError>;

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
    upstream: Arc<UpstreamClient>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

impl Classifier {
    pub fn new(upstream: Arc<UpstreamClient>, limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            upstream,
            limits,
            metrics,
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// Classifies every title. Once started a batch never fails as a whole: each failure is that
    /// item's error. It is refused before it starts when no upstream slot frees up within the
    /// admission wait. Dropping the returned future (the caller went away) drops the queued and
    /// in-flight calls with it.
    pub async fn classify_batch(&self, titles: &[String]) -> Result<BatchOutcome, Overloaded> {
        let span = tracing::info_span!(
            "batch",
            items = titles.len(),
            errors = tracing::field::Empty
        );
        let outcome = self.run_batch(titles).instrument(span.clone()).await?;
        span.record("errors", outcome.errors());
        for result in &outcome.results {
            let label = result.as_ref().map_or_else(ItemError::code, |_| "ok");
            self.metrics.items.with_label_values(&[label]).inc();
        }
        let limiter = self.upstream.limiter().snapshot();
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
        Ok(outcome)
    }

    async fn run_batch(&self, titles: &[String]) -> Result<BatchOutcome, Overloaded> {
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

        // A window of at most `concurrency` calls: start one as each finishes. Built by hand rather
        // than with `buffer_unordered` over a closure, whose borrowing futures trip the compiler's
        // `Send` check inside axum handlers.
        let concurrency = self.limits.request_concurrency.max(1);
        let mut waiting = to_send.into_iter();
        let mut in_flight = FuturesUnordered::new();
        if let Some((index, title)) = waiting.next() {
            let wait = self.limits.admission_wait;
            let first = self
                .upstream
                .try_reserve(wait)
                .await
                .ok_or(Overloaded { waited: wait })?;
            in_flight.push(self.classify_one(index, title, Some(first)));
        }
        for (index, title) in waiting.by_ref().take(concurrency - 1) {
            in_flight.push(self.classify_one(index, title, None));
        }
        let mut usage = Usage::default();
        while let Some((index, (result, call_usage))) = in_flight.next().await {
            usage += call_usage;
            slots[index] = Some(result);
            if let Some((index, title)) = waiting.next() {
                in_flight.push(self.classify_one(index, title, None));
            }
        }

        let results = slots
            .into_iter()
            .map(|slot| slot.expect("every index is either rejected up front or sent exactly once"))
            .collect();
        Ok(BatchOutcome { results, usage })
    }

    async fn classify_one<'s>(
        &'s self,
        index: usize,
        title: &str,
        slot: Option<Slot<'s>>,
    ) -> (usize, (ItemResult, Usage)) {
        let (result, usage) = self.upstream.classify(title, slot).await;
        (index, (result.map_err(ItemError::from), usage))
    }

    /// The title as it will be sent (trimmed of Unicode whitespace), or why it will not be.
    fn check_title<'t>(&self, title: &'t str) -> Result<&'t str, ItemError> {
        let trimmed = title.trim();
        if trimmed.is_empty() {
            return Err(ItemError::TitleEmpty);
        }
        let (chars, max) = (trimmed.chars().count(), self.limits.max_title_chars);
        if chars > max {
            return Err(ItemError::TitleTooLong { chars, max });
        }
        Ok(trimmed)
    }
}
