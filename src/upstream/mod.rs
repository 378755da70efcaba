//! The provider side: one shared, pooled HTTP client that classifies one title (or a pack of
//! them) in the Responses or Chat Completions protocol, retrying transient failures, over one or
//! more endpoints (keys, deployments, providers), each under its own adaptive limit on calls in
//! flight and a pacer that rides its rate limit. Each attempt goes to the endpoint with the least
//! load per weight that is not benched. Knows the wire protocol; knows nothing about batches or
//! HTTP callers.

mod answer;
mod body;
mod chat;
mod decode;
mod endpoint;
mod error;
mod fair;
mod headers;
mod limiter;
mod logprobs;
mod net;
mod pacer;
mod pool;
pub mod pricing;
pub mod reasoning;
mod responses;
mod retry;
mod settings;
pub mod templates;
mod usage;

pub use body::RequestBody;
pub use endpoint::BENCH_FOR;
pub use error::{BuildError, TransportError, UpstreamError};
pub use fair::{BACKGROUND, with_share};
pub use headers::RateHeaders;
pub use limiter::{AdaptiveLimiter, Congestion, LimiterSnapshot};
pub use net::lookup as lookup_host;
pub use pool::{EndpointHealth, Saturation, UpstreamClient, with_tier};
pub use reasoning::{EffortSetting, ReasoningSettings};
pub use retry::{Decision, Failure, GiveUp, ItemDeadline, RETRY_REASONS, RetryPolicy};
pub use settings::{
    AuthStyle, ConfidenceSource, EndpointSettings, Http2, ServiceTier, Transport, UpstreamApi,
    UpstreamSettings,
};
pub use usage::{Prediction, Tier, Usage};
