//! The bodies on the wire, in one place: what `/classify-batch` and `/taxonomies` take and
//! answer, and the NDJSON lines of a streamed batch. The service serialises them; its clients
//! (`classify`, `bench`) and the tests decode the same types, so the contract has one definition.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use validator::{Validate, ValidationError};

use crate::classify::{BatchLimits, BatchOutcome, ItemResult};
use crate::taxonomy::Taxonomy;
use crate::upstream::{ConfidenceSource, Usage};

/// `{"titles": [...]}`, optionally with `"taxonomy"`. Unknown fields are ignored, so clients may
/// send more over time.
#[derive(Debug, Serialize, Deserialize, Validate, ToSchema)]
#[validate(context = BatchLimits)]
pub struct ClassifyBatchRequest {
    /// The label set to classify into (see `GET /taxonomies`); the service's default when
    /// absent. An unknown name is refused with 422 `unknown_taxonomy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "hn-topics")]
    pub taxonomy: Option<String>,
    /// The texts to classify, 1 to `HNC_MAX_BATCH` (default 2000) of them. Each is trimmed of
    /// Unicode whitespace; an empty one, or one over `HNC_MAX_TITLE_CHARS` (default 1000)
    /// characters, gets a per-item error.
    #[validate(custom(function = "validate_batch_size", use_context))]
    #[schema(min_items = 1, max_items = 2000, example = json!(["Show HN: A fast JSON parser in Rust"]))]
    pub titles: Vec<String>,
}

fn validate_batch_size(titles: &[String], limits: &BatchLimits) -> Result<(), ValidationError> {
    if (1..=limits.max_batch).contains(&titles.len()) {
        return Ok(());
    }
    let message = format!(
        "must hold 1 to {} titles, got {}",
        limits.max_batch,
        titles.len()
    );
    Err(ValidationError::new("batch_size").with_message(message.into()))
}

/// The answer: `results[i]` belongs to `titles[i]`. The reference client reads `results`,
/// `num_items` and `errors`; everything else is additive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassifyBatchResponse {
    /// One per title, in input order.
    pub results: Vec<ItemView>,
    pub num_items: usize,
    /// How many results are errors.
    pub errors: usize,
    pub usage: UsageView,
}

/// One item: a topic and confidence, or an error with its stable code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemView {
    /// A label of the taxonomy; null on error.
    #[schema(example = "programming_dev_tools")]
    pub topic: Option<String>,
    /// In 0..=1; null on error.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub confidence: Option<f64>,
    /// Where `confidence` came from: `logprobs` (the probability the model gave the label) or
    /// `self` (the number the model wrote); absent on error. Answers of one kind are never
    /// served for the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_source: Option<ConfidenceSource>,
    /// What went wrong; null on success.
    pub error: Option<String>,
    /// A stable code for the error (docs/http-api.md lists them); absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// True when the answer came from the result cache (no upstream call, 0 tokens); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// What the batch cost at the provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` the provider served from its prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `output_tokens` a reasoning model spent thinking (billed as output).
    #[serde(default)]
    pub reasoning_tokens: u64,
    pub upstream_requests: u64,
    /// USD at the model's prices (built in, or `HNC_PRICES_FILE`); null for a model without one.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

impl From<&ItemResult> for ItemView {
    fn from(result: &ItemResult) -> Self {
        match result {
            Ok(c) => Self {
                topic: Some(c.prediction.topic.to_string()),
                confidence: Some(c.prediction.confidence),
                confidence_source: Some(c.prediction.source),
                error: None,
                error_code: None,
                cached: c.cached,
            },
            Err(e) => Self::failed(e.to_string(), e.code()),
        }
    }
}

impl ItemView {
    fn failed(message: String, code: &str) -> Self {
        Self {
            topic: None,
            confidence: None,
            confidence_source: None,
            error: Some(message),
            error_code: Some(code.to_owned()),
            cached: false,
        }
    }
}

impl UsageView {
    pub fn new(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            reasoning_tokens: u.reasoning_tokens,
            upstream_requests: u.upstream_requests,
            // To a ten-billionth of a dollar: below that it is float noise, not money.
            cost_usd: u.cost_usd().map(|usd| (usd * 1e10).round() / 1e10),
        }
    }
}

impl ClassifyBatchResponse {
    pub fn new(outcome: &BatchOutcome) -> Self {
        Self {
            results: outcome.results.iter().map(ItemView::from).collect(),
            num_items: outcome.results.len(),
            errors: outcome.errors(),
            usage: UsageView::new(outcome.usage),
        }
    }
}

/// One line of a streamed batch: an item as it completes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemLine {
    pub index: usize,
    #[serde(flatten)]
    pub item: ItemView,
}

/// The last line of a streamed batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct DoneLine {
    /// Always true: what tells this line from an item's.
    pub done: bool,
    pub num_items: usize,
    pub errors: usize,
    pub usage: UsageView,
}

/// Any line of a streamed batch, as a client reads it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StreamLine {
    // First: an item line never has `done`, a done line always has it.
    Done(DoneLine),
    Item(ItemLine),
}

/// Every taxonomy a request may name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaxonomiesResponse {
    /// The one a request gets when it names none.
    pub default: String,
    pub taxonomies: Vec<TaxonomyView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaxonomyView {
    #[schema(example = "hn-topics")]
    pub name: String,
    /// Changes whenever the prompt or the labels change; cached answers never cross versions.
    pub version: String,
    pub labels: Vec<LabelView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelView {
    pub name: String,
    /// The one line the prompt gives the model; empty when none was written.
    pub description: String,
}

impl From<&Taxonomy> for TaxonomyView {
    fn from(t: &Taxonomy) -> Self {
        Self {
            name: t.name().to_owned(),
            version: t.version().to_owned(),
            labels: t
                .described_labels()
                .iter()
                .map(|l| LabelView {
                    name: l.name.to_string(),
                    description: l.description.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod properties {
    use std::time::Duration;

    use proptest::prelude::*;
    use validator::ValidateArgs;

    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_batch: 2000,
        max_title_chars: 1000,
        request_concurrency: 50,
        admission_wait: Duration::from_secs(1),
        batch_deadline: Duration::from_secs(290),
    };

    proptest! {
        #[test]
        fn arbitrary_bodies_decode_or_fail_without_panicking(body in ".{0,300}") {
            if let Ok(request) = serde_json::from_str::<ClassifyBatchRequest>(&body) {
                let _ = request.validate_with_args(&LIMITS);
            }
        }

        #[test]
        fn any_strings_in_a_batch_of_valid_size_pass(titles in proptest::collection::vec(any::<String>(), 1..40)) {
            let body = serde_json::json!({ "titles": titles }).to_string();
            let request: ClassifyBatchRequest = serde_json::from_str(&body).unwrap();
            prop_assert!(request.validate_with_args(&LIMITS).is_ok());
            prop_assert_eq!(request.titles, titles);
        }

        #[test]
        fn batches_outside_the_bounds_fail_naming_the_field(n in prop_oneof![Just(0usize), 2001usize..2050]) {
            let request = ClassifyBatchRequest { taxonomy: None, titles: vec![String::new(); n] };
            let errors = request.validate_with_args(&LIMITS).unwrap_err();
            prop_assert!(errors.field_errors().contains_key("titles"));
        }
    }
}
