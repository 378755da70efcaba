//! What the upstream side is configured with: the endpoints, the protocol each speaks, how the
//! key is sent, the transport, timeouts and retries. Plain data, filled in once at start-up by
//! `config` (or by `bench`); no command-line parsing here.

use std::time::Duration;

use tokio_rustls::rustls::pki_types::CertificateDer;

use super::reasoning::ReasoningSettings;
use super::retry::RetryPolicy;
pub use super::usage::ConfidenceSource;
use super::usage::Price;
use crate::models;
use crate::secret::Secret;

/// Which wire protocol the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamApi {
    /// OpenAI's Responses API (`POST /responses`): the default for OpenAI.
    Responses,
    /// Chat Completions (`POST /chat/completions`): for OpenAI-compatible servers (vLLM,
    /// llama.cpp server, Ollama, Azure OpenAI).
    Chat,
}

impl UpstreamApi {
    /// Every protocol by its name in settings (`HNC_UPSTREAM_API`, the upstreams file).
    pub const NAMES: [(&'static str, Self); 2] =
        [("responses", Self::Responses), ("chat", Self::Chat)];

    /// The path after the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Self::Responses => "responses",
            Self::Chat => "chat/completions",
        }
    }
}

/// How the key is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
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

impl AuthStyle {
    /// Every style by its name in settings (`HNC_UPSTREAM_AUTH`, the upstreams file).
    pub const NAMES: [(&'static str, Self); 2] =
        [("bearer", Self::Bearer), ("api-key", Self::ApiKey)];
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
    /// Roots trusted besides the compiled-in ones and the operating system's
    /// (`HNC_UPSTREAM_CA_FILE`): a private CA, a TLS-inspecting proxy.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// `service_tier` sent with every call (`None`: not sent, the provider's default).
    pub service_tier: Option<ServiceTier>,
    /// With flex, a call the provider has no capacity for (429 `resource_unavailable`) or that
    /// timed out goes again at once at the default tier, without spending the retry budget.
    pub flex_fallback: bool,
    /// Where an item's confidence comes from.
    pub confidence: ConfidenceSource,
    /// The reasoning effort sent, and the room left to think.
    pub reasoning: ReasoningSettings,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::AnswerForm;
    use crate::upstream::reasoning::Thinking;

    #[test]
    fn only_flex_is_limited_and_models_known_to_refuse_logprobs_write_their_confidence() {
        assert!(!ServiceTier::Flex.offered_by("gpt-4.1-mini"));
        assert!(ServiceTier::Flex.offered_by("gpt-5-mini"));
        assert!(ServiceTier::Priority.offered_by("gpt-4.1-mini"));
        let form = |model| ConfidenceSource::Logprobs.form_for(&Thinking::default_for(model));
        assert_eq!(form("gpt-5-mini"), AnswerForm::LabelAndConfidence);
        assert_eq!(form("gpt-4.1-mini"), AnswerForm::LabelOnly);
        assert_eq!(form("gpt-5.4-nano"), AnswerForm::LabelOnly);
    }
}

/// OpenAI's service tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceTier {
    Auto,
    Default,
    /// Batch prices on the live API, slower, sometimes refused for capacity.
    Flex,
    /// Faster, at a premium.
    Priority,
}

impl ServiceTier {
    pub const NAMES: [(&'static str, Self); 4] = [
        ("auto", Self::Auto),
        ("default", Self::Default),
        ("flex", Self::Flex),
        ("priority", Self::Priority),
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("auto", |(n, _)| n)
    }

    /// Whether OpenAI serves `model` at this tier. Only flex is limited (`models::FLEX_MODELS`): a
    /// model outside them is refused at start-up rather than sent calls OpenAI answers with a
    /// 400, or quietly served and billed at the default tier.
    pub fn offered_by(self, model: &str) -> bool {
        self != Self::Flex || models::offers_flex(model)
    }
}

/// When calls travel over HTTP/2: many calls share a connection, a few KiB each, where HTTP/1.1
/// needs a connection (about 23 KiB of buffers) per call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http2 {
    /// Over `https://` when the server agrees to it (ALPN), as OpenAI does; HTTP/1.1 over
    /// `http://`, which is what local OpenAI-compatible servers speak.
    #[default]
    Auto,
    /// Over `http://` too (prior knowledge: the server must speak h2c).
    Always,
    /// HTTP/1.1 only.
    Never,
}

impl Http2 {
    /// Every choice by its name in settings (`HNC_UPSTREAM_HTTP2`).
    pub const NAMES: [(&'static str, Self); 3] = [
        ("auto", Self::Auto),
        ("true", Self::Always),
        ("false", Self::Never),
    ];
}

/// How calls travel to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub http2: Http2,
    /// With HTTP/2, the most calls on one connection (OpenAI allows about 100), fewer when the
    /// server's SETTINGS_MAX_CONCURRENT_STREAMS says so.
    pub streams_per_connection: usize,
    /// How often an HTTP/2 connection is PINGed, and how long its answer may take before the
    /// connection counts as dead and is replaced: a connection a NAT or load balancer dropped
    /// without a word would otherwise take calls until TCP gives up, minutes later.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// The largest response body read; a larger one fails its call, naming the cap.
    pub max_response_bytes: usize,
    /// An HTTP/2 connection takes no new streams past this age (its calls finish on it), so the
    /// next opening resolves the host again: a DNS change of the provider reaches the pool.
    pub max_connection_age: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Self {
            http2: Http2::Auto,
            streams_per_connection: 100,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

impl Transport {
    /// Whether calls to a URL over TLS (`https`) or not ask for HTTP/2. Over TLS it is only
    /// offered: a server that picks HTTP/1.1 gets HTTP/1.1.
    pub fn http2_for(&self, https: bool) -> bool {
        match self.http2 {
            Http2::Auto => https,
            Http2::Always => true,
            Http2::Never => false,
        }
    }
}
