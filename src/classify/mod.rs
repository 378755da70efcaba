//! A batch of titles in, one result per title out, in input order. Titles that cannot be sent
//! (empty, too long) get their error without an upstream call; the rest fan out to the shared
//! upstream client with at most `request_concurrency` calls in flight for this batch.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::Instrument;

use crate::upstream::{Prediction, UpstreamClient, UpstreamError, Usage};

/// Bounds on what one request may ask for; the API validates against these.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most titles in one request.
    pub max_batch: usize,
    /// Longest title, in characters (Unicode scalar values) after trimming, not bytes.
    pub max_title_chars: usize,
    /// Most upstream calls in flight for one request.
    pub request_concurrency: usize,
}

/// Why one item has no label.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("the title is empty after trimming whitespace")]
    TitleEmpty,
    #[error("the title is {chars} characters long; the limit is {max}")]
    TitleTooLong { chars: usize, max: usize },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ItemError {
    /// The stable machine-readable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TitleEmpty => "title_empty",
            Self::TitleTooLong { .. } => "title_too_long",
            Self::Upstream(e) => e.code(),
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
}

impl Classifier {
    pub fn new(upstream: Arc<UpstreamClient>, limits: BatchLimits) -> Self {
        Self { upstream, limits }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn upstream(&self) -> &UpstreamClient {
        &self.upstream
    }

    /// Classifies every title. Never fails as a whole: each failure is that item's error.
    /// Dropping the returned future (the caller went away) drops the in-flight calls with it.
    pub async fn classify_batch(&self, titles: &[String]) -> BatchOutcome {
        let span = tracing::info_span!(
            "batch",
            items = titles.len(),
            errors = tracing::field::Empty
        );
        let outcome = self.run_batch(titles).instrument(span.clone()).await;
        span.record("errors", outcome.errors());
        outcome
    }

    async fn run_batch(&self, titles: &[String]) -> BatchOutcome {
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
        for (index, title) in waiting.by_ref().take(concurrency) {
            in_flight.push(self.classify_one(index, title));
        }
        let mut usage = Usage::default();
        while let Some((index, (result, call_usage))) = in_flight.next().await {
            usage += call_usage;
            slots[index] = Some(result);
            if let Some((index, title)) = waiting.next() {
                in_flight.push(self.classify_one(index, title));
            }
        }

        let results = slots
            .into_iter()
            .map(|slot| slot.expect("every index is either rejected up front or sent exactly once"))
            .collect();
        BatchOutcome { results, usage }
    }

    async fn classify_one(&self, index: usize, title: &str) -> (usize, (ItemResult, Usage)) {
        let (result, usage) = self.upstream.classify(title).await;
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
