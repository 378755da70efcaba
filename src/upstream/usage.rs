//! What a call produced and what it cost: a checked prediction, and the tokens, requests and
//! USD of the calls behind it.

use std::ops::AddAssign;
use std::sync::Arc;

use serde::Deserialize;

use super::reasoning::Thinking;
use crate::taxonomy::AnswerForm;

/// A validated answer: a label of the taxonomy, a confidence in 0..=1, and where that
/// confidence came from (the two kinds are never mixed under one mark).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub topic: Arc<str>,
    pub confidence: f64,
    pub source: ConfidenceSource,
}

/// Where an item's `confidence` comes from.
/// Also the mark every answer carries (`confidence_source`), by the same names.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub enum ConfidenceSource {
    /// The probability the model gave the label's tokens (logprobs), renormalised over the
    /// taxonomy; the model writes the label only. An endpoint whose model gives no logprobs
    /// (known, or learnt from its first refusal) falls back to `Written`.
    #[default]
    #[serde(rename = "logprobs")]
    Logprobs,
    /// The number the model writes beside the label.
    #[serde(rename = "self")]
    Written,
}

impl ConfidenceSource {
    /// Every source by its name in settings (`HNC_CONFIDENCE`).
    pub const NAMES: [(&'static str, Self); 2] =
        [("logprobs", Self::Logprobs), ("self", Self::Written)];

    /// The source's name in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Logprobs => "logprobs",
            Self::Written => "self",
        }
    }

    /// What a call that sends `thinking` asks the model to write: the label only while its
    /// confidence can come from logprobs, a written confidence too otherwise (as asked, or for
    /// a model that gives no logprobs at that effort).
    pub fn form_for(self, thinking: &Thinking) -> AnswerForm {
        match self {
            Self::Logprobs if thinking.logprobs() => AnswerForm::LabelOnly,
            _ => AnswerForm::LabelAndConfidence,
        }
    }

    /// The source of the confidence an answer in `form` carries.
    pub fn of(form: AnswerForm) -> Self {
        match form {
            AnswerForm::LabelOnly => Self::Logprobs,
            AnswerForm::LabelAndConfidence => Self::Written,
        }
    }
}

/// What calls cost: tokens as the provider counted them, and how many HTTP calls were made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// The part of `output_tokens` the model spent thinking before it answered.
    pub reasoning_tokens: u64,
    pub upstream_requests: u64,
    /// USD at the prices of the models that answered.
    cost_usd: f64,
    /// A call went to a model without a known price: the cost is then unknown.
    unpriced: bool,
}

impl Usage {
    /// The tokens one response reports (its request is counted by the caller).
    pub fn billed(input_tokens: u64, cached_input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            cached_input_tokens,
            output_tokens,
            ..Self::default()
        }
    }

    /// The same, with `reasoning` of the output tokens spent thinking.
    pub fn with_reasoning(mut self, reasoning: u64) -> Self {
        self.reasoning_tokens = reasoning.min(self.output_tokens);
        self
    }

    /// The same tokens, counted as `requests` calls.
    pub fn with_requests(mut self, requests: u64) -> Self {
        self.upstream_requests = requests;
        self
    }

    /// Prices these tokens at `price`; without one, the cost becomes unknown.
    pub fn price_at(&mut self, price: Option<Price>) {
        match price {
            Some(price) => self.cost_usd += price.cost(self),
            None => self.unpriced = true,
        }
    }

    /// Adds a cost already priced elsewhere (the live pipeline's, for a batch run's fallback).
    pub fn add_cost(&mut self, usd: f64) {
        self.cost_usd += usd;
    }

    /// What the calls cost in USD; `None` when a model without a known price answered one.
    pub fn cost_usd(&self) -> Option<f64> {
        (!self.unpriced).then_some(self.cost_usd)
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens += rhs.input_tokens;
        self.cached_input_tokens += rhs.cached_input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.reasoning_tokens += rhs.reasoning_tokens;
        self.upstream_requests += rhs.upstream_requests;
        self.cost_usd += rhs.cost_usd;
        self.unpriced |= rhs.unpriced;
    }
}

/// USD per million tokens for one model, at the standard tier, and what the other tiers cost
/// as a multiple of it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_input: f64,
    pub output: f64,
    /// The Batch API's price as a multiple of the standard one [default: 0.5].
    #[serde(default)]
    pub batch: Option<f64>,
    /// The flex tier's [default: 0.5, OpenAI's batch price on the live API].
    #[serde(default)]
    pub flex: Option<f64>,
    /// The priority tier's [default: 1.75, OpenAI's premium for gpt-4.1 and gpt-5 models].
    #[serde(default)]
    pub priority: Option<f64>,
}

/// What served a call, for its price: the live API at a service tier, or the Batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    #[default]
    Standard,
    Flex,
    Priority,
    Batch,
}

impl Tier {
    /// The tier a response's `service_tier` names (`default`, `auto` and unknown: standard).
    pub fn served(name: Option<&str>) -> Self {
        match name {
            Some("flex") => Self::Flex,
            Some("priority") => Self::Priority,
            _ => Self::Standard,
        }
    }
}

impl Price {
    /// Standard prices with the default multiples for the other tiers.
    pub const fn list(input: f64, cached_input: f64, output: f64) -> Self {
        Self {
            input,
            cached_input,
            output,
            batch: None,
            flex: None,
            priority: None,
        }
    }

    /// The prices at `tier`.
    pub fn at(&self, tier: Tier) -> Self {
        let factor = match tier {
            Tier::Standard => 1.0,
            Tier::Batch => self.batch.unwrap_or(0.5),
            Tier::Flex => self.flex.unwrap_or(0.5),
            Tier::Priority => self.priority.unwrap_or(1.75),
        };
        Self {
            input: self.input * factor,
            cached_input: self.cached_input * factor,
            output: self.output * factor,
            ..*self
        }
    }

    /// The cost of `usage` in USD.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let fresh = usage.input_tokens - cached;
        (fresh as f64 * self.input
            + cached as f64 * self.cached_input
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}
