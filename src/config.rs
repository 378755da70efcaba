//! The settings of `serve` and `sim`, parsed once at start-up (clap derive with `env`) and
//! resolved into the typed settings of the layers below. Every `serve` setting is both a flag
//! and an environment variable; a bad value stops the process with a message that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::classify::{BatchLimits, CacheSettings};
use crate::coord::RedisSettings;
use crate::gold::{self, Fields, GoldError};
use crate::secret::Secret;
use crate::sim::SimConfig;
use crate::taxonomy::{Taxonomies, TaxonomyError};
use crate::upstream::pricing::{PriceFileError, PriceTable};
use crate::upstream::{
    AuthStyle, ConfidenceSource, EffortSetting, EndpointSettings, Http2, ReasoningSettings,
    RetryPolicy, ServiceTier, Transport, UpstreamApi, UpstreamSettings,
};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Settings of `hn-classifier serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on [default: 0.0.0.0:8000, or 0.0.0.0:$PORT when only PORT is set]
    #[arg(long, env = "HNC_LISTEN", value_name = "HNC_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Bearer tokens allowed to call `/classify-batch`, comma-separated. Empty: open to anyone
    /// who can reach the port (a warning is logged).
    #[arg(
        long,
        env = "HNC_API_KEYS",
        value_name = "HNC_API_KEYS",
        hide_env_values = true
    )]
    pub api_keys: Option<Secret>,

    /// A file of bearer tokens, one per line (a mounted secret); added to HNC_API_KEYS.
    #[arg(long, env = "HNC_API_KEYS_FILE", value_name = "HNC_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,

    /// Where one replica keeps jobs (`POST /jobs`) without Redis, in a SQLite file
    /// (`jobs.sqlite3`) locked to one process; a restart on the same directory resumes them:
    /// mount a volume here. Unused with HNC_REDIS_URL (jobs are kept there); with neither,
    /// jobs are off.
    #[arg(long, env = "HNC_DATA_DIR", value_name = "HNC_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// The key that signs job webhooks (Standard Webhooks): `whsec_` and base64 of 24 to 64
    /// random bytes. Unset = a job's `callback_url` is refused.
    #[arg(
        long,
        env = "HNC_WEBHOOK_SECRET",
        value_name = "HNC_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,

    /// Let `callback_url` name loopback, private and link-local addresses (a receiver inside
    /// the cluster); off, a caller cannot make the service probe its own network.
    #[arg(long, env = "HNC_WEBHOOK_ALLOW_PRIVATE", value_name = "HNC_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// The most titles one job may hold.
    #[arg(long, env = "HNC_MAX_JOB_TITLES", value_name = "HNC_MAX_JOB_TITLES", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_job_titles: u32,

    /// The most jobs one key may have queued or running at once.
    #[arg(long, env = "HNC_MAX_OPEN_JOBS", value_name = "HNC_MAX_OPEN_JOBS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_open_jobs: u32,

    /// How long the deadline planner expects the Batch API to take for a job's batch, seconds:
    /// OpenAI's completion window (24 h) unless you know your batches finish sooner.
    #[arg(long, env = "HNC_BATCH_WINDOW_S", value_name = "HNC_BATCH_WINDOW_S", default_value = "86400", value_parser = parse_seconds)]
    pub batch_window: Duration,

    /// What every lane keeps in hand before a job's deadline, seconds: a deadline is met live
    /// with this much to spare, and a batch is escalated to live this much early.
    #[arg(long, env = "HNC_DEADLINE_MARGIN_S", value_name = "HNC_DEADLINE_MARGIN_S", default_value = "60", value_parser = parse_seconds)]
    pub deadline_margin: Duration,

    /// How often a job's batch on the Batch API is looked at, seconds.
    #[arg(long, env = "HNC_BATCH_POLL_S", value_name = "HNC_BATCH_POLL_S", default_value = "5", value_parser = parse_seconds)]
    pub batch_poll: Duration,

    /// Items per minute each key may classify (a minute's worth may come at once); unset = no quota.
    #[arg(
        long,
        env = "HNC_QUOTA_ITEMS_PER_MIN",
        value_name = "HNC_QUOTA_ITEMS_PER_MIN"
    )]
    pub quota_items_per_min: Option<std::num::NonZeroU32>,

    /// Redis or Valkey (`redis://` or `rediss://`, Redis >= 7) shared by every replica: one
    /// provider budget per endpoint, quotas across replicas, a second level of the result
    /// cache, and the jobs (any replica finishes any job; turn its append-only file on).
    /// Unset: each replica paces, counts and caches alone.
    #[arg(
        long,
        env = "HNC_REDIS_URL",
        value_name = "HNC_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,

    /// The longest one Redis command may take before the replica decides alone (and tries
    /// Redis again a second later).
    #[arg(long, env = "HNC_REDIS_TIMEOUT_MS", value_name = "HNC_REDIS_TIMEOUT_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(
        long,
        env = "HNC_REDIS_PREFIX",
        value_name = "HNC_REDIS_PREFIX",
        default_value = "hnc"
    )]
    pub redis_prefix: String,

    /// Serve `/metrics` on this address instead of the main one (keep it off the public port).
    #[arg(long, env = "HNC_METRICS_LISTEN", value_name = "HNC_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Port to listen on when HNC_LISTEN is not set (the convention of PaaS platforms).
    #[arg(long, env = "PORT", value_name = "PORT")]
    pub port: Option<u16>,

    /// The provider's API key. Required unless --simulate.
    #[arg(
        long,
        env = "OPENAI_API_KEY",
        value_name = "OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<Secret>,

    /// Base URL of the OpenAI-compatible API, version included.
    #[arg(long, env = "OPENAI_BASE_URL", value_name = "OPENAI_BASE_URL", default_value = DEFAULT_BASE_URL, value_parser = parse_base_url)]
    pub openai_base_url: String,

    /// Wire protocol: `responses` (OpenAI's Responses API) or `chat` (Chat Completions, for
    /// OpenAI-compatible servers such as vLLM, llama.cpp server, Ollama, Azure OpenAI).
    #[arg(long, env = "HNC_UPSTREAM_API", value_name = "HNC_UPSTREAM_API", value_parser = api_parser(), default_value = "responses")]
    pub upstream_api: UpstreamApi,

    /// How the key is sent: `bearer` (`Authorization: Bearer`) or `api-key` (Azure OpenAI).
    #[arg(long, env = "HNC_UPSTREAM_AUTH", value_name = "HNC_UPSTREAM_AUTH", value_parser = named(AuthStyle::NAMES), default_value = "bearer")]
    pub upstream_auth: AuthStyle,

    /// A query string added to every upstream call, e.g. Azure's `api-version=2024-10-21`.
    #[arg(long, env = "HNC_UPSTREAM_QUERY", value_name = "HNC_UPSTREAM_QUERY")]
    pub upstream_query: Option<String>,

    /// A TOML file of several upstream endpoints (`[[upstream]]` tables: name, api_key_env or
    /// api_key_file, and optionally base_url, api, auth, query, model, weight, max_in_flight,
    /// rpm_limit, tpm_limit). Replaces the single endpoint of OPENAI_*; unset fields take the
    /// values of the single-endpoint settings.
    #[arg(long, env = "HNC_UPSTREAMS", value_name = "HNC_UPSTREAMS")]
    pub upstreams: Option<std::path::PathBuf>,

    /// A PEM file of one or more CA certificates to trust for the upstream, besides the
    /// compiled-in roots and the operating system's store: a private CA (an internal vLLM or
    /// Azure endpoint) or a TLS-inspecting proxy.
    #[arg(
        long,
        env = "HNC_UPSTREAM_CA_FILE",
        value_name = "HNC_UPSTREAM_CA_FILE"
    )]
    pub upstream_ca_file: Option<PathBuf>,

    /// When to call the provider over HTTP/2, many calls per connection, instead of one
    /// HTTP/1.1 connection per call in flight (far less memory with thousands in flight):
    /// `auto` over https when the server agrees (ALPN), `true` over http:// too (h2c), `false`
    /// never. The bare flag means `true`.
    #[arg(long, env = "HNC_UPSTREAM_HTTP2", value_name = "HNC_UPSTREAM_HTTP2", value_parser = named(Http2::NAMES), default_value = "auto", num_args = 0..=1, default_missing_value = "true")]
    pub upstream_http2: Http2,

    /// With HTTP/2, the most calls on one connection (OpenAI allows about 100).
    #[arg(long, env = "HNC_UPSTREAM_STREAMS_PER_CONNECTION", value_name = "HNC_UPSTREAM_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub upstream_streams_per_connection: u32,

    /// How often, in seconds, an HTTP/2 connection to the upstream is PINGed; one whose PING
    /// goes unanswered for HNC_UPSTREAM_PING_TIMEOUT_S is replaced, and its calls are retried.
    #[arg(long, env = "HNC_UPSTREAM_PING_INTERVAL_S", value_name = "HNC_UPSTREAM_PING_INTERVAL_S", default_value = "10", value_parser = parse_seconds)]
    pub upstream_ping_interval: Duration,

    /// How long, in seconds, a PING's answer may take (see HNC_UPSTREAM_PING_INTERVAL_S).
    #[arg(long, env = "HNC_UPSTREAM_PING_TIMEOUT_S", value_name = "HNC_UPSTREAM_PING_TIMEOUT_S", default_value = "5", value_parser = parse_seconds)]
    pub upstream_ping_timeout: Duration,

    /// Seconds after which an HTTP/2 connection to the upstream takes no new calls (those on it
    /// finish) and is replaced by a fresh one, so a DNS change of the provider is picked up.
    #[arg(long, env = "HNC_UPSTREAM_MAX_CONNECTION_AGE_S", value_name = "HNC_UPSTREAM_MAX_CONNECTION_AGE_S", default_value = "300", value_parser = parse_seconds)]
    pub upstream_max_connection_age: Duration,

    /// The largest upstream response body read, in bytes; a larger one fails its call with an
    /// error that names this cap. Answers are small: the default leaves room for a pack of
    /// hundreds.
    #[arg(long, env = "HNC_UPSTREAM_MAX_RESPONSE_BYTES", value_name = "HNC_UPSTREAM_MAX_RESPONSE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(1024..))]
    pub upstream_max_response_bytes: u32,

    /// `service_tier` sent with every call: `auto`, `default`, `flex` (batch prices on the live
    /// API, slower, sometimes refused for capacity) or `priority` (faster, at a premium).
    /// Unset: not sent. Cost is priced at the tier the response says served the call.
    #[arg(long, env = "HNC_SERVICE_TIER", value_name = "HNC_SERVICE_TIER", value_parser = named(ServiceTier::NAMES))]
    pub service_tier: Option<ServiceTier>,

    /// With flex, a call refused for capacity (429 `resource_unavailable`) or timed out goes again
    /// at once at the default tier, without spending the retry budget.
    #[arg(long, env = "HNC_FLEX_FALLBACK", value_name = "HNC_FLEX_FALLBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub flex_fallback: bool,

    /// Where an item's confidence comes from: `logprobs` (the probability the model gave the
    /// label's tokens, renormalised over the taxonomy; the model writes the label only) or
    /// `self` (the number the model writes). With `logprobs`, a model that refuses them is asked
    /// for a written confidence instead, and `upstream_confidence_from_logprobs` reads 0.
    #[arg(long, env = "HNC_CONFIDENCE", value_name = "HNC_CONFIDENCE", default_value = "logprobs", value_parser = confidence_parser())]
    pub confidence: ConfidenceSource,

    /// The reasoning effort sent to a model that reasons (`reasoning.effort`, Chat's
    /// `reasoning_effort`): `auto` sends the lowest the model accepts (`none` on gpt-5.1 and
    /// later, `minimal` on gpt-5/-mini/-nano, `low` on the o-series) and nothing to a model that
    /// does not reason; `off` never sends one (the model's default applies); a value sends that
    /// effort. A 400 refusing it teaches the endpoint one the model takes.
    #[arg(long, env = "HNC_REASONING_EFFORT", value_name = "HNC_REASONING_EFFORT", default_value = "auto", value_parser = named(EffortSetting::NAMES))]
    pub reasoning_effort: EffortSetting,

    /// Output tokens left for reasoning on top of the answer's, on a model that reasons at the
    /// effort sent (its reasoning counts against the same cap). Unset: by effort (minimal 256,
    /// low 1024, medium 4096, high 8192, xhigh 16384; none 0). An answer the cap cuts short
    /// while the model reasoned is sent again once with four times the room (at least 2048).
    #[arg(long, env = "HNC_REASONING_TOKENS", value_name = "HNC_REASONING_TOKENS", value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub reasoning_tokens: Option<u32>,

    /// Model to call.
    #[arg(
        long,
        env = "OPENAI_MODEL",
        value_name = "OPENAI_MODEL",
        default_value = "gpt-5.4-nano"
    )]
    pub openai_model: String,

    /// Most upstream calls in flight for one request.
    #[arg(long, env = "HNC_REQUEST_CONCURRENCY", value_name = "HNC_REQUEST_CONCURRENCY", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub request_concurrency: u32,

    /// Most upstream calls in flight at each upstream endpoint (its adaptive limit starts here
    /// and never exceeds it); several endpoints (HNC_UPSTREAMS) each have their own.
    #[arg(long, env = "HNC_MAX_IN_FLIGHT", value_name = "HNC_MAX_IN_FLIGHT", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,

    /// Requests per minute to stay under (besides what the provider announces); unset = none.
    #[arg(long, env = "HNC_RPM_LIMIT", value_name = "HNC_RPM_LIMIT", value_parser = clap::value_parser!(u64).range(1..))]
    pub rpm_limit: Option<u64>,

    /// Tokens per minute to stay under (besides what the provider announces); unset = none.
    #[arg(long, env = "HNC_TPM_LIMIT", value_name = "HNC_TPM_LIMIT", value_parser = clap::value_parser!(u64).range(1..))]
    pub tpm_limit: Option<u64>,

    /// A TOML file of token prices per model (USD per million input, cached_input and output
    /// tokens), replacing or adding to the built-in ones.
    #[arg(long, env = "HNC_PRICES_FILE", value_name = "HNC_PRICES_FILE")]
    pub prices_file: Option<std::path::PathBuf>,

    /// A TOML file of taxonomies (`[[taxonomy]]` tables with `name`, `labels` and optional
    /// `instructions`; optional top-level `default`), served beside the built-in `hn-topics`.
    #[arg(long, env = "HNC_TAXONOMIES", value_name = "HNC_TAXONOMIES")]
    pub taxonomies: Option<std::path::PathBuf>,

    /// Labelled titles the default taxonomy's prompts show before each title (few-shot), in the
    /// gold set's format: JSON Lines with `title` and `label`. They sit in the fixed prefix of
    /// every call, which OpenAI bills at the cached price once it passes 1,024 tokens.
    #[arg(long, env = "HNC_EXAMPLES_FILE", value_name = "HNC_EXAMPLES_FILE")]
    pub examples_file: Option<std::path::PathBuf>,

    /// Titles per upstream call (1 = off). Packing several titles into one call divides the
    /// requests (and the per-call prompt) by up to this; items missing or invalid in a packed
    /// answer are retried alone.
    #[arg(long, env = "HNC_PACK_SIZE", value_name = "HNC_PACK_SIZE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pack_size: u32,

    /// Entries of the result cache (0 = off). Repeated titles are answered without a call.
    #[arg(
        long,
        env = "HNC_CACHE_ENTRIES",
        value_name = "HNC_CACHE_ENTRIES",
        default_value_t = 0
    )]
    pub cache_entries: u64,

    /// How long a cached result is served, seconds.
    #[arg(long, env = "HNC_CACHE_TTL_S", value_name = "HNC_CACHE_TTL_S", default_value = "3600", value_parser = parse_seconds)]
    pub cache_ttl: Duration,

    /// Longest a batch waits for its first upstream slot before a 503 `overloaded`, seconds.
    #[arg(long, env = "HNC_ADMISSION_WAIT_S", value_name = "HNC_ADMISSION_WAIT_S", default_value = "10", value_parser = parse_seconds)]
    pub admission_wait: Duration,

    /// Most titles in one request.
    #[arg(long, env = "HNC_MAX_BATCH", value_name = "HNC_MAX_BATCH", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_batch: u32,

    /// Longest title, in characters after trimming (not bytes).
    #[arg(long, env = "HNC_MAX_TITLE_CHARS", value_name = "HNC_MAX_TITLE_CHARS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_title_chars: u32,

    /// Longest a client may take to send its request headers, seconds (slow clients).
    #[arg(long, env = "HNC_HEADER_READ_TIMEOUT_S", value_name = "HNC_HEADER_READ_TIMEOUT_S", default_value = "10", value_parser = parse_seconds)]
    pub header_read_timeout: Duration,

    /// Longest one request may take, body upload included, seconds. A batch's deadline is a
    /// little less (5%, 1 to 10 s): the items not done by then answer `deadline_exceeded` in a
    /// complete answer, so a 504 `request_timeout` only comes from a body too slow to upload.
    #[arg(long, env = "HNC_REQUEST_TIMEOUT_S", value_name = "HNC_REQUEST_TIMEOUT_S", default_value = "300", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// Largest request body, in bytes.

    #[arg(long, env = "HNC_MAX_BODY_BYTES", value_name = "HNC_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_body_bytes: u32,

    /// After SIGTERM, seconds to keep serving normally (readiness already 503) before refusing
    /// new batches, for load balancers that poll readiness.
    #[arg(long, env = "HNC_DRAIN_DELAY_S", value_name = "HNC_DRAIN_DELAY_S", default_value = "0", value_parser = parse_seconds_or_zero)]
    pub drain_delay: Duration,

    /// After SIGTERM (and the drain delay), seconds the running batches have to finish; the
    /// items still undone then answer `shutting_down` in complete answers, and the process
    /// exits. Keep the platform's grace period (terminationGracePeriodSeconds, fly.toml's
    /// kill_timeout) above the drain delay plus this plus 10 s.
    #[arg(long, env = "HNC_SHUTDOWN_TIMEOUT_S", value_name = "HNC_SHUTDOWN_TIMEOUT_S", default_value = "60", value_parser = parse_seconds_or_zero)]
    pub shutdown_timeout: Duration,

    /// Serve with the built-in simulator of the OpenAI API instead of a real provider: no key, no
    /// network, deterministic keyword labels.
    #[arg(long, env = "HNC_SIMULATE")]
    pub simulate: bool,

    #[command(flatten)]
    pub tuning: UpstreamTuning,

    #[command(flatten)]
    pub sim: SimConfig,

    #[command(flatten)]
    pub log: LogConfig,
}

/// How hard each upstream call is tried. Shared by `serve` and `bench`, so both run with the
/// same defaults from this one definition.
#[derive(Debug, Clone, Args)]
pub struct UpstreamTuning {
    /// Deadline of one upstream call, in seconds.
    #[arg(long, env = "HNC_UPSTREAM_TIMEOUT_S", value_name = "HNC_UPSTREAM_TIMEOUT_S", default_value = "20", value_parser = parse_seconds)]
    pub upstream_timeout: Duration,

    /// Attempts after the first for a transient failure (timeout, connection error, 408, 409,
    /// 429, 5xx).
    #[arg(long, env = "HNC_MAX_RETRIES", value_name = "HNC_MAX_RETRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_retries: u32,

    /// Wall time one item may take from its first attempt, retries and waits included, seconds.
    #[arg(long, env = "HNC_ITEM_DEADLINE_S", value_name = "HNC_ITEM_DEADLINE_S", default_value = "60", value_parser = parse_seconds)]
    pub item_deadline: Duration,

    /// Attempts after the first for an answer that is not the schema's JSON or did not
    /// complete (usually a one-off, such as a truncated answer), within the item deadline;
    /// 0 = never. A refusal or a label outside the taxonomy is final either way.
    #[arg(long, env = "HNC_OUTPUT_RETRIES", value_name = "HNC_OUTPUT_RETRIES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=5))]
    pub output_retries: u32,
}

impl UpstreamTuning {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.max_retries, self.item_deadline)
            .with_output_retries(self.output_retries)
    }
}

/// Settings of `hn-classifier sim`.
#[derive(Debug, Clone, Args)]
pub struct SimServeConfig {
    /// Address the simulator listens on.
    #[arg(
        long,
        env = "HNC_SIM_LISTEN",
        value_name = "HNC_SIM_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub sim: SimConfig,

    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log line format. Filter with RUST_LOG (default `info`).
    #[arg(long, env = "HNC_LOG_FORMAT", value_name = "HNC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

pub use crate::telemetry::LogFormat;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "OPENAI_API_KEY is not set, and the service will not serve made-up labels.\n\
         Set OPENAI_API_KEY to call the provider, or run offline on the built-in simulator:\n    \
         hn-classifier serve --simulate"
    )]
    MissingApiKey,
    #[error(transparent)]
    Prices(#[from] PriceFileError),
    #[error("HNC_TAXONOMIES")]
    Taxonomies(#[from] TaxonomyError),
    #[error("HNC_UPSTREAMS {path}")]
    Upstreams {
        path: PathBuf,
        #[source]
        source: UpstreamsFileError,
    },
    #[error("HNC_UPSTREAM_CA_FILE {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error(
        "HNC_SERVICE_TIER={tier}: OpenAI does not offer it for {models}; it offers it for {offered}.\n\
         Set HNC_SERVICE_TIER=default, or pick one of those models; the Batch lane \
         (`classify --batch-api`) is half price on any model."
    )]
    TierNotOffered {
        tier: &'static str,
        models: String,
        offered: &'static str,
    },
    #[error("HNC_EXAMPLES_FILE {path}")]
    Examples {
        path: PathBuf,
        #[source]
        source: ExamplesError,
    },
    #[error("HNC_API_KEYS_FILE {path}")]
    ApiKeysFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with the HNC_EXAMPLES_FILE file: unreadable, or an example the default
/// taxonomy cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ExamplesError {
    #[error(transparent)]
    Read(#[from] GoldError),
    #[error(transparent)]
    Taxonomy(#[from] TaxonomyError),
}

/// What is wrong with the HNC_UPSTREAMS file.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamsFileError {
    #[error("could not read it")]
    Read(#[source] std::io::Error),
    #[error("not a valid upstreams file")]
    Parse(#[source] toml::de::Error),
    #[error("no [[upstream]] tables")]
    Empty,
    #[error("upstream {0:?} is defined twice")]
    Duplicate(String),
    #[error("upstream {0:?}: set exactly one of api_key_env and api_key_file")]
    KeySource(String),
    #[error("upstream {name:?}: the environment variable {var} is not set")]
    KeyEnvUnset { name: String, var: String },
    #[error("upstream {name:?}: api_key_file {path}")]
    KeyFile {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0:?}: the key is empty")]
    KeyEmpty(String),
    #[error("upstream {name:?}: base_url {reason}")]
    BaseUrl { name: String, reason: String },
    #[error("upstream {0:?}: weight and max_in_flight must be at least 1")]
    NoShare(String),
}

impl ServeConfig {
    /// The `serve` settings from the environment alone, no flags: what `classify --direct`
    /// runs the service's pipeline with.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(Parser)]
        #[command(no_binary_name = true)]
        struct EnvOnly {
            #[command(flatten)]
            serve: ServeConfig,
        }
        EnvOnly::try_parse_from(std::iter::empty::<String>()).map(|e| e.serve)
    }

    /// HNC_LISTEN if set, else all interfaces on PORT if set, else 0.0.0.0:8000.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], self.port.unwrap_or(8000))))
    }

    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch: self.max_batch as usize,
            max_title_chars: self.max_title_chars as usize,
            request_concurrency: self.request_concurrency as usize,
            admission_wait: self.admission_wait,
            batch_deadline: BatchLimits::deadline_within(self.request_timeout),
        }
    }

    /// Every client key from HNC_API_KEYS and HNC_API_KEYS_FILE; blank entries ignored.
    pub fn client_keys(&self) -> Result<Vec<Secret>, ConfigError> {
        let mut keys: Vec<Secret> = Vec::new();
        let mut add = |text: &str, separator: char| {
            keys.extend(
                text.split(separator)
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(Secret::new),
            );
        };
        if let Some(list) = &self.api_keys {
            add(list.expose(), ',');
        }
        if let Some(path) = &self.api_keys_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::ApiKeysFile {
                    path: path.clone(),
                    source,
                })?;
            add(&text, '\n');
        }
        Ok(keys)
    }

    /// The built-in taxonomy plus those of HNC_TAXONOMIES, validated, with the examples of
    /// HNC_EXAMPLES_FILE in the default one.
    pub fn taxonomies(&self) -> Result<Taxonomies, ConfigError> {
        let taxonomies = match &self.taxonomies {
            Some(path) => Taxonomies::load(path)?,
            None => Taxonomies::default(),
        };
        let Some(path) = &self.examples_file else {
            return Ok(taxonomies);
        };
        let examples = |source| ConfigError::Examples {
            path: path.clone(),
            source,
        };
        let fields = Fields {
            title: "title".to_owned(),
            label: "label".to_owned(),
            alt: "alt".to_owned(),
        };
        let items = gold::read(path, &fields, None).map_err(|e| examples(e.into()))?;
        taxonomies
            .with_default_examples(items.into_iter().map(|i| (i.title, i.label)))
            .map_err(|e| examples(e.into()))
    }

    /// The result cache, when `HNC_CACHE_ENTRIES` is above 0.
    pub fn cache(&self) -> Option<CacheSettings> {
        (self.cache_entries > 0).then_some(CacheSettings {
            max_entries: self.cache_entries,
            ttl: self.cache_ttl,
        })
    }

    /// Upstream settings for the real provider (one endpoint from OPENAI_*, or the endpoints
    /// of HNC_UPSTREAMS), or for the simulator at `sim_base_url`. Resolved once, at start-up.
    /// The certificates of HNC_UPSTREAM_CA_FILE (none when unset).
    fn extra_roots(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let Some(path) = &self.upstream_ca_file else {
            return Ok(Vec::new());
        };
        let bad = |reason: String| ConfigError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let roots = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if roots.is_empty() {
            return Err(bad("no PEM certificate in it".to_owned()));
        }
        Ok(roots)
    }

    /// The shared store, when `HNC_REDIS_URL` is set.
    /// The deadline planner's settings.
    pub fn lanes(&self) -> crate::jobs::plan::Lanes {
        crate::jobs::plan::Lanes {
            batch_window: self.batch_window,
            margin: self.deadline_margin,
            poll: self.batch_poll,
        }
    }

    pub fn redis(&self) -> Option<RedisSettings> {
        self.redis_url.clone().map(|url| RedisSettings {
            url,
            timeout: Duration::from_millis(self.redis_timeout_ms),
            prefix: self.redis_prefix.clone(),
        })
    }

    pub fn upstream_settings(
        &self,
        sim_base_url: Option<String>,
    ) -> Result<UpstreamSettings, ConfigError> {
        let prices = PriceTable::load(self.prices_file.as_deref())?;
        let endpoints = match (sim_base_url, &self.upstreams) {
            (Some(url), _) => {
                vec![self.endpoint("simulator", url, Secret::new("sim-key"), &prices)]
            }
            (None, Some(path)) => self.endpoints_from_file(path, &prices).map_err(|source| {
                ConfigError::Upstreams {
                    path: path.clone(),
                    source,
                }
            })?,
            (None, None) => {
                let key = self
                    .openai_api_key
                    .clone()
                    .ok_or(ConfigError::MissingApiKey)?;
                vec![self.endpoint("default", self.openai_base_url.clone(), key, &prices)]
            }
        };
        Ok(UpstreamSettings {
            endpoints,
            call_timeout: self.tuning.upstream_timeout,
            retry: self.tuning.retry_policy(),
            pack_size: self.pack_size as usize,
            service_tier: self.service_tier,
            flex_fallback: self.flex_fallback,
            confidence: self.confidence,
            reasoning: ReasoningSettings {
                effort: self.reasoning_effort,
                room: self.reasoning_tokens,
            },
            extra_roots: self.extra_roots()?,
            transport: Transport {
                http2: self.upstream_http2,
                streams_per_connection: self.upstream_streams_per_connection as usize,
                ping_interval: self.upstream_ping_interval,
                ping_timeout: self.upstream_ping_timeout,
                max_response_bytes: self.upstream_max_response_bytes as usize,
                max_connection_age: self.upstream_max_connection_age,
            },
        })
    }

    /// Refuses the live path's service tier where an OpenAI endpoint's model is not offered it,
    /// naming the models. Other providers' endpoints are left to their own rules; the simulator
    /// (`simulated`) answers as OpenAI does. The Batch lane sends no tier and skips this.
    pub fn check_tier(
        &self,
        endpoints: &[EndpointSettings],
        simulated: bool,
    ) -> Result<(), ConfigError> {
        let Some(tier) = self.service_tier else {
            return Ok(());
        };
        let openai = |e: &&EndpointSettings| simulated || e.base_url.contains("//api.openai.com");
        let refused: Vec<&str> = endpoints
            .iter()
            .filter(openai)
            .map(|e| e.model.as_str())
            .filter(|model| !tier.offered_by(model))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(ConfigError::TierNotOffered {
            tier: tier.name(),
            models: refused.join(", "),
            offered: crate::models::FLEX_MODELS,
        })
    }

    /// One endpoint with the single-endpoint settings.
    fn endpoint(
        &self,
        name: &str,
        base_url: String,
        api_key: Secret,
        prices: &PriceTable,
    ) -> EndpointSettings {
        EndpointSettings {
            name: name.to_owned(),
            base_url,
            api_key,
            auth: self.upstream_auth,
            query: self.upstream_query.clone(),
            api: self.upstream_api,
            model: self.openai_model.clone(),
            weight: 1,
            max_in_flight: self.max_in_flight as usize,
            rpm_limit: self.rpm_limit,
            tpm_limit: self.tpm_limit,
            price: prices.price_of(&self.openai_model),
        }
    }

    fn endpoints_from_file(
        &self,
        path: &Path,
        prices: &PriceTable,
    ) -> Result<Vec<EndpointSettings>, UpstreamsFileError> {
        let text = std::fs::read_to_string(path).map_err(UpstreamsFileError::Read)?;
        let file: UpstreamsFile = toml::from_str(&text).map_err(UpstreamsFileError::Parse)?;
        if file.upstream.is_empty() {
            return Err(UpstreamsFileError::Empty);
        }
        let mut names = std::collections::HashSet::new();
        let mut endpoints = Vec::with_capacity(file.upstream.len());
        for entry in file.upstream {
            if !names.insert(entry.name.clone()) {
                return Err(UpstreamsFileError::Duplicate(entry.name));
            }
            let key = entry.key()?;
            let base_url = match &entry.base_url {
                Some(url) => parse_base_url(url).map_err(|reason| UpstreamsFileError::BaseUrl {
                    name: entry.name.clone(),
                    reason,
                })?,
                None => self.openai_base_url.clone(),
            };
            let mut endpoint = self.endpoint(&entry.name, base_url, key, prices);
            if let Some(model) = entry.model {
                endpoint.price = prices.price_of(&model);
                endpoint.model = model;
            }
            endpoint.api = entry.api.unwrap_or(endpoint.api);
            endpoint.auth = entry.auth.unwrap_or(endpoint.auth);
            endpoint.query = entry.query.or(endpoint.query);
            endpoint.weight = entry.weight.unwrap_or(1);
            endpoint.max_in_flight = entry.max_in_flight.unwrap_or(endpoint.max_in_flight);
            endpoint.rpm_limit = entry.rpm_limit.or(endpoint.rpm_limit);
            endpoint.tpm_limit = entry.tpm_limit.or(endpoint.tpm_limit);
            if endpoint.weight == 0 || endpoint.max_in_flight == 0 {
                return Err(UpstreamsFileError::NoShare(endpoint.name));
            }
            endpoints.push(endpoint);
        }
        Ok(endpoints)
    }
}

/// The HNC_UPSTREAMS file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamsFile {
    #[serde(default)]
    upstream: Vec<UpstreamEntry>,
}

/// One `[[upstream]]` table. The key is never in the file itself: it names an environment
/// variable or a file (a mounted secret).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamEntry {
    name: String,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    base_url: Option<String>,
    api: Option<UpstreamApi>,
    auth: Option<AuthStyle>,
    query: Option<String>,
    model: Option<String>,
    weight: Option<u32>,
    max_in_flight: Option<usize>,
    rpm_limit: Option<u64>,
    tpm_limit: Option<u64>,
}

impl UpstreamEntry {
    fn key(&self) -> Result<Secret, UpstreamsFileError> {
        let name = || self.name.clone();
        let key = match (&self.api_key_env, &self.api_key_file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| UpstreamsFileError::KeyEnvUnset {
                    name: name(),
                    var: var.clone(),
                })?
            }
            (None, Some(path)) => {
                std::fs::read_to_string(path).map_err(|source| UpstreamsFileError::KeyFile {
                    name: name(),
                    path: path.clone(),
                    source,
                })?
            }
            _ => return Err(UpstreamsFileError::KeySource(name())),
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(UpstreamsFileError::KeyEmpty(name()));
        }
        Ok(Secret::new(key))
    }
}

/// A parser of the names in `names` (the enums live in `upstream/`, which knows no command line).
fn named<T: Copy + Send + Sync + 'static, const N: usize>(
    names: [(&'static str, T); N],
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(names.map(|(name, _)| name)).map(move |given| {
        names
            .iter()
            .find(|(name, _)| *name == given)
            .expect("clap checked it is one of the names")
            .1
    })
}

/// `responses` or `chat`: for `HNC_UPSTREAM_API` and `bench --upstream-api`.
pub fn api_parser() -> impl TypedValueParser<Value = UpstreamApi> {
    named(UpstreamApi::NAMES)
}

/// `logprobs` or `self`: for `HNC_CONFIDENCE` and `eval --confidences`.
pub fn confidence_parser() -> impl TypedValueParser<Value = ConfidenceSource> {
    named(ConfidenceSource::NAMES)
}

fn parse_base_url(value: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("the scheme must be http or https".to_owned());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

fn parse_seconds(value: &str) -> Result<Duration, String> {
    let d = parse_seconds_or_zero(value)?;
    if d.is_zero() {
        return Err("must be more than 0 seconds".to_owned());
    }
    Ok(d)
}

fn parse_seconds_or_zero(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{value:?} is not a duration from 0 to a few centuries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_is_used_only_when_listen_is_not_set() {
        #[derive(Parser)]
        struct Serve {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let parse = |args: &[&str]| {
            let c = Serve::try_parse_from([&["serve"], args].concat()).unwrap();
            c.serve.listen_addr().to_string()
        };
        assert_eq!(parse(&["--port", "9999"]), "0.0.0.0:9999");
        assert_eq!(
            parse(&["--port", "9999", "--listen", "127.0.0.1:1"]),
            "127.0.0.1:1"
        );
    }

    #[test]
    fn durations_reject_garbage_and_zero() {
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_base_url("ftp://x").is_err());
        assert_eq!(parse_base_url("http://h:1/v1/").unwrap(), "http://h:1/v1");
    }
}
