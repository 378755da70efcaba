//! What every handler shares: built once at start-up, behind `Arc`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::{ClientKeys, Quotas};
use crate::classify::Classifier;
use crate::jobs::Jobs;
use crate::jobs::webhooks::Webhooks;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// When the request arrived (before its body was read): what a batch's deadline counts from.
#[derive(Debug, Clone, Copy)]
pub struct RequestStarted(pub Instant);

/// The bounds of a job submission (`HNC_MAX_JOB_TITLES`, `HNC_MAX_OPEN_JOBS`).
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    pub max_titles: usize,
    /// Jobs queued or running per key.
    pub max_open: u64,
}

/// Everything a handler needs, built once at start-up and shared behind `Arc`.
#[derive(Debug)]
pub struct AppState {
    /// Shared with the job runner.
    pub classifier: Arc<Classifier>,
    /// The jobs kept on disk, with `HNC_DATA_DIR`.
    pub jobs: Option<Arc<Jobs>>,
    pub job_limits: JobLimits,
    /// Signing key and address policy of job webhooks, with `HNC_WEBHOOK_SECRET`.
    pub webhooks: Option<Webhooks>,
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
