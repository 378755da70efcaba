//! The provider side: one shared, pooled HTTP client that classifies one title (or a pack of
//! them) in the Responses or Chat Completions protocol, retrying transient failures, under a
//! process-wide adaptive limit on calls in flight and a pacer that rides the provider's rate
//! limit. Knows the wire protocol; knows nothing about batches or HTTP callers.

mod chat;
mod error;
mod headers;
mod limiter;
mod pacer;
pub mod pricing;
pub mod responses;
mod retry;

use std::collections::HashMap;
use std::ops::AddAssign;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;

pub use error::UpstreamError;
use error::scrub_secrets;
use headers::RateHeaders;
pub use limiter::{AdaptiveLimiter, Congestion, LimiterSnapshot};
use pacer::Pacer;
use pricing::Price;
use responses::{PackTemplate, RequestTemplate};
pub use retry::{Decision, Failure, GiveUp, RetryPolicy};

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::taxonomy::{Taxonomies, Taxonomy};

/// Which wire protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamApi {
    /// OpenAI's Responses API (`POST /responses`): the default for OpenAI.
    Responses,
    /// Chat Completions (`POST /chat/completions`): for OpenAI-compatible servers (vLLM,
    /// llama.cpp server, Ollama, Azure OpenAI).
    Chat,
}

impl UpstreamApi {
    fn path(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::Chat => "chat/completions",
        }
    }
}

/// Where and how to call the provider; parsed once from the service config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Secret,
    pub api: UpstreamApi,
    pub model: String,
    /// Deadline of one HTTP call, connect to last byte.
    pub call_timeout: Duration,
    /// Ceiling of calls in flight across every batch of this process (the adaptive limit's
    /// starting point and maximum).
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// Requests and tokens per minute to stay under, besides what the provider announces.
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    /// The model's token prices, when known: what `cost_usd` is computed from.
    pub price: Option<Price>,
    /// Titles per upstream call (1 = no packing).
    pub pack_size: usize,
}

/// A validated answer: a label of the taxonomy and a confidence in 0..=1.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub topic: Arc<str>,
    pub confidence: f64,
}

/// What calls cost: tokens as the provider counted them, and how many HTTP calls were made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub upstream_requests: u64,
}

impl Usage {
    /// The tokens one response reports (its request is counted by the caller).
    fn billed(input_tokens: u64, cached_input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            input_tokens,
            cached_input_tokens,
            output_tokens,
            upstream_requests: 0,
        }
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
    }
}

/// The one client of the process: cheap to share behind `Arc`, holds the connection pool.
#[derive(Debug)]
pub struct UpstreamClient {
    http: reqwest::Client,
    url: String,
    /// Marked sensitive, so `Debug` of the client or a request never shows it.
    authorization: HeaderValue,
    api_key: Secret,
    /// The request templates of every taxonomy, by `Taxonomy::key`: built once at start-up.
    templates: HashMap<Arc<str>, Templates>,
    model: String,
    pack_size: usize,
    call_timeout: Duration,
    retry: RetryPolicy,
    limiter: AdaptiveLimiter,
    pacer: Pacer,
    metrics: Arc<Metrics>,
    price: Option<Price>,
    /// Set when the provider rejected our credentials or quota: until then, readiness is false.
    unusable_until: Mutex<Option<Instant>>,
}

/// One taxonomy's request templates, for one title and for packs.
#[derive(Debug)]
struct Templates {
    single: RequestTemplate,
    packs: PackTemplate,
}

/// How long a replica reports itself unready after the provider refused its key or quota.
/// Readiness would otherwise stay false for good: unready replicas get no traffic to retest it.
const UNUSABLE_FOR: Duration = Duration::from_secs(30);

/// One HTTP call's outcome, with what the response said besides its body.
struct Attempt<T> {
    result: Result<T, UpstreamError>,
    usage: Usage,
    headers: RateHeaders,
    /// The HTTP status, when a response arrived.
    status: Option<u16>,
    latency: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl UpstreamClient {
    pub fn new(
        settings: UpstreamSettings,
        taxonomies: &Taxonomies,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {}", settings.api_key.expose()))
                .map_err(|_| BuildError::InvalidApiKey)?;
        authorization.set_sensitive(true);
        // HTTP/1.1 keep-alive pool sized for the ceiling: one HTTP/2 connection caps at ~100
        // concurrent streams at OpenAI, so a pool of HTTP/1.1 connections scales further.
        let http = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(settings.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .connect_timeout(settings.call_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("hn-classifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url: format!(
                "{}/{}",
                settings.base_url.trim_end_matches('/'),
                settings.api.path()
            ),
            authorization,
            templates: taxonomies
                .iter()
                .map(|t| {
                    let templates = Templates {
                        single: RequestTemplate::new(settings.api, &settings.model, t),
                        packs: PackTemplate::new(
                            settings.api,
                            &settings.model,
                            t,
                            settings.pack_size,
                        ),
                    };
                    (t.key().clone(), templates)
                })
                .collect(),
            model: settings.model,
            pack_size: settings.pack_size.max(1),
            api_key: settings.api_key,
            call_timeout: settings.call_timeout,
            retry: settings.retry,
            limiter: AdaptiveLimiter::new(settings.max_in_flight),
            pacer: Pacer::new(settings.rpm_limit, settings.tpm_limit),
            metrics,
            price: settings.price,
            unusable_until: Mutex::new(None),
        })
    }

    /// False for a while after the provider rejected our key (401/403) or quota.
    pub fn is_usable(&self) -> bool {
        let until = *self.unusable_until.lock().expect("health lock poisoned");
        until.is_none_or(|at| Instant::now() >= at)
    }

    /// The adaptive limit's state, for logs and metrics.
    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.limiter
    }

    /// Whether a slot under the process-wide limit frees up within `wait` (it is released at
    /// once): how a batch finds out, before it starts, that the process is saturated. Waiters
    /// queue FIFO, so a true answer means the batch's calls are next in line.
    pub async fn has_capacity_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.limiter.acquire())
            .await
            .is_ok()
    }

    /// The model's token prices, when known.
    pub fn price(&self) -> Option<Price> {
        self.price
    }

    /// The model name, for cache and single-flight keys.
    pub fn model(&self) -> &str {
        &self.model
    }

    fn templates(&self, taxonomy: &Taxonomy) -> &Templates {
        self.templates
            .get(taxonomy.key())
            .expect("every taxonomy the API accepts had its templates built at start-up")
    }

    /// Classifies one title into `taxonomy`, retrying transient failures as the policy allows.
    /// Tokens of every attempt count.
    pub async fn classify(
        &self,
        taxonomy: &Taxonomy,
        title: &str,
    ) -> (Result<Prediction, Failure>, Usage) {
        let template = &self.templates(taxonomy).single;
        let body = template.encode(title);
        let tokens = template.estimated_tokens(title);
        self.with_retries(body, tokens, |b| template.decode(b, taxonomy))
            .await
    }

    /// Classifies several titles in one call (packing), with the same retries. A slot is `None`
    /// where the model's answer for that title was missing or invalid.
    pub async fn classify_pack(
        &self,
        taxonomy: &Taxonomy,
        titles: &[&str],
    ) -> (Result<Vec<Option<Prediction>>, Failure>, Usage) {
        let packs = &self.templates(taxonomy).packs;
        let (body, tokens) = packs.encode(titles);
        let n = titles.len();
        self.with_retries(body, tokens, |b| packs.decode(b, taxonomy, n))
            .await
    }

    /// The most titles one packed call takes.
    pub fn pack_size(&self) -> usize {
        self.pack_size
    }

    /// One request, sent under the limiter and the pacer and retried as the policy allows.
    async fn with_retries<T>(
        &self,
        body: Vec<u8>,
        tokens: u64,
        decode: impl Fn(&[u8]) -> (Result<T, UpstreamError>, Usage),
    ) -> (Result<T, Failure>, Usage) {
        let mut usage = Usage::default();
        let mut deadline = None;
        let mut attempts = 0;
        // Failures that spend the retry budget: a 429 for rate waits out the deadline instead.
        let mut budgeted_failures = 0;
        loop {
            let slot = self.limiter.acquire().await;
            self.pacer.wait_turn(tokens).await;
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.retry.item_deadline);
            attempts += 1;
            let timeout = self
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now()));
            let attempt = self.call(body.clone(), timeout, &decode).await;
            usage += attempt.usage;
            usage.upstream_requests += 1;
            self.learn(&attempt);
            drop(slot);

            let error = match attempt.result {
                Ok(value) => return (Ok(value), usage),
                Err(error) => error,
            };
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

    /// Feeds one attempt to the metrics, the limiter, the pacer and the health flag.
    fn learn<T>(&self, attempt: &Attempt<T>) {
        let m = &self.metrics;
        let status = match (&attempt.status, &attempt.result) {
            (Some(code), _) => code.to_string(),
            (None, Err(UpstreamError::Timeout(_))) => "timeout".to_owned(),
            (None, _) => "transport".to_owned(),
        };
        m.upstream_requests.with_label_values(&[&status]).inc();
        m.upstream_duration.observe(attempt.latency.as_secs_f64());
        let usage = &attempt.usage;
        let model = self.model.as_str();
        for (kind, tokens) in [
            ("input", usage.input_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("output", usage.output_tokens),
        ] {
            m.upstream_tokens
                .with_label_values(&[kind, model])
                .inc_by(tokens);
        }
        if let Some(price) = &self.price {
            m.upstream_cost
                .with_label_values(&[model])
                .inc_by(price.cost(usage));
        }

        let rate_limited = attempt
            .result
            .as_ref()
            .is_err_and(UpstreamError::is_rate_limited);
        match &attempt.result {
            _ if rate_limited => self.limiter.on_congestion(Congestion::RateLimited),
            Err(UpstreamError::Timeout(_)) => self.limiter.on_congestion(Congestion::Timeout),
            Ok(_) => self.limiter.on_success(attempt.latency),
            Err(_) => {}
        }
        self.pacer.observe(&attempt.headers, rate_limited);
        self.track_health(&attempt.result);
    }

    fn track_health<T>(&self, result: &Result<T, UpstreamError>) {
        let refused = match result {
            Err(e @ UpstreamError::Http { status, .. }) => {
                matches!(status, 401 | 403) || e.code() == "upstream_quota_exhausted"
            }
            _ => false,
        };
        let mut until = self.unusable_until.lock().expect("health lock poisoned");
        if refused {
            *until = Some(Instant::now() + UNUSABLE_FOR);
            tracing::warn!("the provider refused our key or quota: reporting unready");
        } else if result.is_ok() {
            *until = None;
        }
    }

    /// One HTTP call of `body` within `timeout`, its 2xx body read by `decode`.
    async fn call<T>(
        &self,
        body: Vec<u8>,
        timeout: Duration,
        decode: impl Fn(&[u8]) -> (Result<T, UpstreamError>, Usage),
    ) -> Attempt<T> {
        let started = Instant::now();
        let sent = self
            .http
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let failed = |error, headers, status| Attempt {
            result: Err(error),
            usage: Usage::default(),
            headers,
            status,
            latency: started.elapsed(),
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => return failed(transport_error(e, timeout), RateHeaders::default(), None),
        };
        let status = response.status();
        let headers = RateHeaders::parse(response.headers());
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return failed(transport_error(e, timeout), headers, Some(status.as_u16())),
        };
        if !status.is_success() {
            let error = self.http_error(status.as_u16(), &body, &headers);
            return failed(error, headers, Some(status.as_u16()));
        }
        let (result, usage) = decode(&body);
        Attempt {
            result,
            usage,
            headers,
            status: Some(status.as_u16()),
            latency: started.elapsed(),
        }
    }

    /// A non-2xx answer, read as OpenAI's `{"error":{"message","type","param","code"}}` when it is
    /// one, with anything key-like scrubbed from the message.
    fn http_error(&self, status: u16, body: &[u8], headers: &RateHeaders) -> UpstreamError {
        #[derive(Deserialize)]
        struct Envelope {
            error: ErrorBody,
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            message: Option<String>,
            code: Option<String>,
        }
        let (code, message) = match serde_json::from_slice::<Envelope>(body) {
            Ok(e) => (e.error.code, e.error.message.unwrap_or_default()),
            Err(_) => (
                None,
                String::from_utf8_lossy(body).chars().take(200).collect(),
            ),
        };
        UpstreamError::Http {
            status,
            code,
            message: scrub_secrets(&message, self.api_key.expose()),
            retry_after: headers.retry_after,
            should_retry: headers.should_retry,
        }
    }
}

fn transport_error(error: reqwest::Error, timeout: Duration) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout(timeout)
    } else {
        UpstreamError::Transport(error.without_url())
    }
}
