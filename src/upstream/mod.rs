//! The provider side: one shared, pooled HTTP client that classifies one title per call, with a
//! per-call timeout and a process-wide ceiling on calls in flight. Knows the wire protocol; knows
//! nothing about batches or HTTP callers.

mod error;
pub mod responses;

use std::ops::AddAssign;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio::sync::Semaphore;

pub use error::UpstreamError;
use error::scrub_secrets;
use responses::RequestTemplate;

use crate::secret::Secret;
use crate::taxonomy::Taxonomy;

/// Where and how to call the provider; parsed once from the service config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Base URL up to and including the API version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Secret,
    pub model: String,
    /// Deadline of one HTTP call, connect to last byte.
    pub call_timeout: Duration,
    /// Calls in flight across every batch of this process.
    pub max_in_flight: usize,
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
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub upstream_requests: u64,
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Self) {
        self.input_tokens += rhs.input_tokens;
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
    template: RequestTemplate,
    taxonomy: Arc<Taxonomy>,
    call_timeout: Duration,
    in_flight: Semaphore,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the API key contains characters not allowed in an HTTP header")]
    InvalidApiKey,
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

impl UpstreamClient {
    pub fn new(settings: UpstreamSettings, taxonomy: Arc<Taxonomy>) -> Result<Self, BuildError> {
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
            url: format!("{}/responses", settings.base_url.trim_end_matches('/')),
            authorization,
            template: RequestTemplate::new(&settings.model, &taxonomy),
            api_key: settings.api_key,
            taxonomy,
            call_timeout: settings.call_timeout,
            in_flight: Semaphore::new(settings.max_in_flight),
        })
    }

    pub fn taxonomy(&self) -> &Taxonomy {
        &self.taxonomy
    }

    /// Classifies one title with one HTTP call. Waits for a slot under the process-wide ceiling
    /// first (FIFO, so concurrent batches interleave rather than queue behind each other).
    pub async fn classify(&self, title: &str) -> (Result<Prediction, UpstreamError>, Usage) {
        let _slot = self
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let (result, mut usage) = self.call(title).await;
        usage.upstream_requests = 1;
        if let Err(error) = &result {
            tracing::debug!(error.code = error.code(), %error, "upstream call failed");
        }
        (result, usage)
    }

    async fn call(&self, title: &str) -> (Result<Prediction, UpstreamError>, Usage) {
        let sent = self
            .http
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .timeout(self.call_timeout)
            .body(self.template.encode(title))
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return (Err(self.transport_error(e)), Usage::default()),
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return (Err(self.transport_error(e)), Usage::default()),
        };
        if !status.is_success() {
            return (
                Err(self.http_error(status.as_u16(), &body)),
                Usage::default(),
            );
        }
        responses::decode(&body, &self.taxonomy)
    }

    fn transport_error(&self, error: reqwest::Error) -> UpstreamError {
        if error.is_timeout() {
            UpstreamError::Timeout(self.call_timeout)
        } else {
            UpstreamError::Transport(error.without_url())
        }
    }

    /// A non-2xx answer, read as OpenAI's `{"error":{"message","type","param","code"}}` when it is
    /// one, with anything key-like scrubbed from the message.
    fn http_error(&self, status: u16, body: &[u8]) -> UpstreamError {
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
        }
    }
}
