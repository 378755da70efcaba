//! What the direct approaches call, and the client they call it with: the service's own,
//! built from the same settings as `serve` builds it.

use std::sync::Arc;

use serde::Serialize;

use super::error::BenchError;
use crate::config::UpstreamTuning;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::taxonomy::Taxonomies;
use crate::upstream::pricing::PriceTable;
use crate::upstream::{
    AuthStyle, ConfidenceSource, EndpointSettings, Http2, ReasoningSettings, Transport,
    UpstreamApi, UpstreamClient, UpstreamSettings,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approach {
    Pool,
    Async,
    Sharded,
    Service,
    /// Not a throughput approach: the latency the service adds, open loop (`--rates`).
    Latency,
}

impl Approach {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pool => "pool",
            Self::Async => "async",
            Self::Sharded => "sharded",
            Self::Service => "service",
            Self::Latency => "latency",
        }
    }
}

/// Where the direct approaches send their calls.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub url: String,
    pub key: Secret,
    pub api: UpstreamApi,
    pub model: String,
    pub http2: bool,
    /// Call timeout and retries, from the same settings (and defaults) as `serve`'s.
    pub tuning: UpstreamTuning,
}

/// The service's own upstream client, tuned as `serve` would be, for `max_in_flight`.
pub fn upstream_client(
    target: &UpstreamTarget,
    max_in_flight: usize,
) -> Result<UpstreamClient, BenchError> {
    let settings = UpstreamSettings {
        endpoints: vec![EndpointSettings {
            name: "bench".to_owned(),
            base_url: target.url.clone(),
            api_key: target.key.clone(),
            auth: AuthStyle::Bearer,
            query: None,
            api: target.api,
            model: target.model.clone(),
            weight: 1,
            max_in_flight: max_in_flight.max(1),
            rpm_limit: None,
            tpm_limit: None,
            price: PriceTable::default().price_of(&target.model),
        }],
        call_timeout: target.tuning.upstream_timeout,
        retry: target.tuning.retry_policy(),
        pack_size: 1,
        confidence: ConfidenceSource::default(),
        reasoning: ReasoningSettings::default(),
        service_tier: None,
        flex_fallback: true,
        extra_roots: Vec::new(),
        // One HTTP/2 connection per client: `sharded --http2` means one connection per shard.
        transport: Transport {
            http2: if target.http2 {
                Http2::Always
            } else {
                Http2::Never
            },
            streams_per_connection: max_in_flight.max(1),
            ..Transport::default()
        },
    };
    Ok(UpstreamClient::new(
        settings,
        &Taxonomies::default(),
        Arc::new(Metrics::new()),
    )?)
}
