//! The provider side: one shared, pooled HTTP client that classifies one title (or a pack of
//! them) in the Responses or Chat Completions protocol, retrying transient failures, over one or
//! more endpoints (keys, deployments, providers), each under its own adaptive limit on calls in
//! flight and a pacer that rides its rate limit. Each attempt goes to the endpoint with the least
//! load per weight that is not benched. Knows the wire protocol; knows nothing about batches or
//! HTTP callers.

mod chat;
mod endpoint;
mod error;
mod headers;
mod limiter;
mod pacer;
pub mod pricing;
pub mod responses;
mod retry;

use std::ops::AddAssign;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use endpoint::BENCH_FOR;
use endpoint::{Attempt, Endpoint};
pub use error::UpstreamError;
pub use headers::RateHeaders;
pub use limiter::{AdaptiveLimiter, Congestion, LimiterSnapshot};
use pricing::Price;
pub use retry::{Decision, Failure, GiveUp, RetryPolicy};

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::taxonomy::{Taxonomies, Taxonomy};

/// Which wire protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamApi {
    /// OpenAI's Responses API (`POST /responses`): the default for OpenAI.
    Responses,
    /// Chat Completions (`POST /chat/completions`): for OpenAI-compatible servers (vLLM,
    /// llama.cpp server, Ollama, Azure OpenAI).
    Chat,
}

impl UpstreamApi {
    /// The path after the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::Chat => "chat/completions",
        }
    }
}

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY`: OpenAI and most compatible servers.
    #[default]
    Bearer,
    /// `api-key: KEY`: Azure OpenAI.
    ApiKey,
}

/// One endpoint: where to call, with which key, protocol and model, and how much of the
/// traffic it takes. Parsed once from the service config.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Shown in metrics and logs (never the key).
    pub name: String,
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Secret,
    pub auth: AuthStyle,
    /// Appended to every call's URL, e.g. Azure's `api-version=2024-10-21`.
    pub query: Option<String>,
    pub api: UpstreamApi,
    pub model: String,
    /// Relative share of the traffic, against the other endpoints' weights.
    pub weight: u32,
    /// Ceiling of this endpoint's calls in flight (its adaptive limit's start and maximum).
    pub max_in_flight: usize,
    /// Requests and tokens per minute to stay under, besides what the provider announces.
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    /// The model's token prices, when known: what `cost_usd` is computed from.
    pub price: Option<Price>,
}

/// Everything the upstream side needs; parsed once from the service config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// At least one.
    pub endpoints: Vec<EndpointSettings>,
    /// Deadline of one HTTP call, connect to last byte.
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    /// Titles per upstream call (1 = no packing).
    pub pack_size: usize,
    pub transport: Transport,
}

/// How calls travel to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A keep-alive pool of HTTP/1.1 connections, one per call in flight: the default, and what
    /// every OpenAI-compatible server speaks. Costs about 16 KiB of buffers per connection.
    Http1,
    /// HTTP/2, at most `streams_per_connection` calls on one connection (OpenAI allows about
    /// 100), as many connections as the endpoint's ceiling needs: far less memory per call in
    /// flight. Over `http://` it assumes the server speaks HTTP/2 (prior knowledge); over
    /// `https://` it is negotiated, falling back to HTTP/1.1.
    Http2 { streams_per_connection: usize },
}

/// A validated answer: a label of the taxonomy and a confidence in 0..=1.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub topic: Arc<str>,
    pub confidence: f64,
}

/// What calls cost: tokens as the provider counted them, and how many HTTP calls were made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
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

    /// What the calls cost in USD; `None` when a model without a known price answered one.
    pub fn cost_usd(&self) -> Option<f64> {
        (!self.unpriced).then_some(self.cost_usd)
    }
}

/// Parses a 2xx body as a protocol's response `R`: the model's text, and the tokens it reports,
/// which count even when the answer is unusable (they were billed all the same).
fn decode_with<R: serde::de::DeserializeOwned>(
    body: &[u8],
    usage: impl Fn(&R) -> Usage,
    text: impl FnOnce(R) -> Result<String, UpstreamError>,
) -> (Result<String, UpstreamError>, Usage) {
    match serde_json::from_slice::<R>(body) {
        Ok(response) => {
            let usage = usage(&response);
            (text(response), usage)
        }
        Err(e) => (
            Err(UpstreamError::MalformedResponse(e.to_string())),
            Usage::default(),
        ),
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens += rhs.input_tokens;
        self.cached_input_tokens += rhs.cached_input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.upstream_requests += rhs.upstream_requests;
        self.cost_usd += rhs.cost_usd;
        self.unpriced |= rhs.unpriced;
    }
}

fn least_loaded<'e>(endpoints: impl Iterator<Item = &'e Endpoint>) -> Option<&'e Endpoint> {
    endpoints.min_by(|a, b| a.load().total_cmp(&b.load()))
}

/// The one client of the process: cheap to share behind `Arc`, holds every endpoint (each with
/// its connections).
#[derive(Debug)]
pub struct UpstreamClient {
    endpoints: Vec<Endpoint>,
    /// The endpoints' models, joined: what cache keys hold, so answers of another set of
    /// models are never served.
    models: String,
    pack_size: usize,
    call_timeout: Duration,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    #[error("no upstream endpoint is configured")]
    NoEndpoints,
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl UpstreamClient {
    pub fn new(
        settings: UpstreamSettings,
        taxonomies: &Taxonomies,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        if settings.endpoints.is_empty() {
            return Err(BuildError::NoEndpoints);
        }
        let pack_size = settings.pack_size.max(1);
        let endpoints = settings
            .endpoints
            .into_iter()
            .map(|e| {
                Endpoint::new(
                    e,
                    settings.transport,
                    settings.call_timeout,
                    taxonomies,
                    pack_size,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut models: Vec<&str> = endpoints.iter().map(Endpoint::model).collect();
        models.sort_unstable();
        models.dedup();
        Ok(Self {
            models: models.join("+"),
            endpoints,
            pack_size,
            call_timeout: settings.call_timeout,
            retry: settings.retry,
            metrics,
        })
    }

    /// False while every endpoint is benched (refused key or quota, or failing): readiness.
    pub fn is_usable(&self) -> bool {
        self.endpoints.iter().any(|e| !e.is_benched())
    }

    /// Calls in flight, waiting, and the adaptive limits, summed over the endpoints.
    pub fn limiter_snapshot(&self) -> LimiterSnapshot {
        self.endpoints.iter().map(|e| e.limiter().snapshot()).fold(
            LimiterSnapshot {
                limit: 0,
                in_flight: 0,
                waiting: 0,
            },
            |a, b| LimiterSnapshot {
                limit: a.limit + b.limit,
                in_flight: a.in_flight + b.in_flight,
                waiting: a.waiting + b.waiting,
            },
        )
    }

    /// Each endpoint's name and whether it is benched now, for metrics.
    pub fn endpoint_health(&self) -> impl Iterator<Item = (&str, bool)> {
        self.endpoints.iter().map(|e| (e.name(), e.is_benched()))
    }

    /// Whether a slot frees up within `wait` at the endpoint the next call would go to (it is
    /// released at once): how a batch finds out, before it starts, that the process is
    /// saturated. Waiters queue FIFO, so a true answer means the batch's calls are next in line.
    pub async fn has_capacity_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.pick(None).limiter().acquire())
            .await
            .is_ok()
    }

    /// Every endpoint's model, joined: for cache and single-flight keys.
    pub fn model(&self) -> &str {
        &self.models
    }

    /// The endpoint for the next attempt: the shortest expected wait among those not benched,
    /// preferring one other than `avoid` (the one that just failed). With every endpoint
    /// benched, the one whose bench ends first, so calls keep probing.
    fn pick(&self, avoid: Option<&Endpoint>) -> &Endpoint {
        // The common case, one endpoint, needs no comparing (and no locks taken to compare).
        if let [only] = &self.endpoints[..] {
            return only;
        }
        let is_avoided = |e: &Endpoint| avoid.is_some_and(|a| std::ptr::eq(a, e));
        let usable = || self.endpoints.iter().filter(|e| !e.is_benched());
        least_loaded(usable().filter(|e| !is_avoided(e)))
            .or_else(|| least_loaded(usable()))
            .or_else(|| self.endpoints.iter().min_by_key(|e| e.benched_until()))
            .expect("at least one endpoint, checked at start-up")
    }

    /// Classifies one title into `taxonomy`, retrying transient failures as the policy allows.
    /// Tokens of every attempt count.
    pub async fn classify(
        &self,
        taxonomy: &Taxonomy,
        title: &str,
    ) -> (Result<Prediction, Failure>, Usage) {
        self.with_retries(
            |e| {
                let template = &e.templates(taxonomy).single;
                (template.encode(title), template.estimated_tokens(title))
            },
            |e, body| e.templates(taxonomy).single.decode(body, taxonomy),
        )
        .await
    }

    /// Classifies several titles in one call (packing), with the same retries. A slot is `None`
    /// where the model's answer for that title was missing or invalid.
    pub async fn classify_pack(
        &self,
        taxonomy: &Taxonomy,
        titles: &[&str],
    ) -> (Result<Vec<Option<Prediction>>, Failure>, Usage) {
        let n = titles.len();
        self.with_retries(
            |e| e.templates(taxonomy).packs.encode(titles),
            |e, body| e.templates(taxonomy).packs.decode(body, taxonomy, n),
        )
        .await
    }

    /// The most titles one packed call takes.
    pub fn pack_size(&self) -> usize {
        self.pack_size
    }

    /// One request, each attempt sent to the endpoint `pick` chooses, under its limiter and
    /// pacer, and retried as the policy allows. A refused key or quota moves the request to
    /// another endpoint at once, without spending the retry budget.
    async fn with_retries<T>(
        &self,
        encode: impl Fn(&Endpoint) -> (Vec<u8>, u64),
        decode: impl Fn(&Endpoint, &[u8]) -> (Result<T, UpstreamError>, Usage),
    ) -> (Result<T, Failure>, Usage) {
        let mut usage = Usage::default();
        let mut deadline = None;
        let mut attempts = 0;
        // Failures that spend the retry budget: a 429 for rate waits out the deadline instead.
        let mut budgeted_failures = 0;
        let mut failed_at: Option<&Endpoint> = None;
        loop {
            let endpoint = self.pick(failed_at);
            let slot = endpoint.limiter().acquire().await;
            let (body, tokens) = encode(endpoint);
            endpoint.pacer().wait_turn(tokens).await;
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.retry.item_deadline);
            attempts += 1;
            let timeout = self
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let attempt: Attempt<T> = endpoint.call(body, timeout, |b| decode(endpoint, b)).await;
            let mut spent = attempt.usage.with_requests(1);
            spent.price_at(endpoint.price());
            usage += spent;
            endpoint.learn(&attempt, &self.metrics);
            drop(slot);

            let error = match attempt.result {
                Ok(value) => return (Ok(value), usage),
                Err(error) => error,
            };
            failed_at = Some(endpoint);
            if error.is_refusal_of_key() && self.is_usable() {
                tracing::debug!(
                    upstream = endpoint.name(),
                    error.code = error.code(),
                    "moving to another endpoint"
                );
                continue;
            }
            if !error.is_rate_limited() {
                budgeted_failures += 1;
            }
            match self.retry.decide(&error, budgeted_failures, deadline) {
                Decision::GiveUp(gave_up) => {
                    tracing::debug!(error.code = error.code(), %error, attempts, %gave_up, "upstream call failed");
                    return (
                        Err(Failure {
                            attempts,
                            gave_up,
                            last: error,
                        }),
                        usage,
                    );
                }
                Decision::RetryAfter(delay) => {
                    self.metrics
                        .upstream_retries
                        .with_label_values(&[error.code()])
                        .inc();
                    tracing::debug!(error.code = error.code(), %error, attempts, delay_ms = delay.as_millis() as u64, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
