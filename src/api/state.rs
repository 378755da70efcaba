//! What every handler shares: built once at start-up, behind `Arc`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{ClientKeys, Quotas};
use crate::classify::Classifier;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// When the request arrived (before its body was read): what a batch's deadline counts from.
#[derive(Debug, Clone, Copy)]
pub struct RequestStarted(pub Instant);

/// Everything a handler needs, built once at start-up and shared behind `Arc`.
#[derive(Debug)]
pub struct AppState {
    pub classifier: Classifier,
    /// Draining and running-batch bookkeeping for graceful shutdown.
    pub lifecycle: Lifecycle,
    /// The body limit, repeated here so a 413 can say what it is.
    pub max_body_bytes: usize,
    /// The whole request's deadline, body upload included.
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// False when `/metrics` is served on its own port instead.
    pub metrics_on_main_port: bool,
    /// Bearer tokens allowed to classify; empty = open.
    pub client_keys: ClientKeys,
    pub quotas: Quotas,
}
