//! What a job is, as stored and as answered: its status, counts and usage, and one title's
//! result line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::upstream::{ConfidenceSource, Usage};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every status, for the metrics' labels.
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub(super) fn parse(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// How far a job is: `done` counts titles with a result (an error included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub total: u64,
    pub done: u64,
    pub errors: u64,
    pub pending: u64,
}

/// What a job's calls cost so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobUsage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub upstream_requests: u64,
    /// USD; null when a model without a known price answered one of its calls.
    pub cost_usd: Option<f64>,
}

impl From<Usage> for JobUsage {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            cached_input_tokens: u.cached_input_tokens,
            output_tokens: u.output_tokens,
            reasoning_tokens: u.reasoning_tokens,
            upstream_requests: u.upstream_requests,
            cost_usd: u.cost_usd(),
        }
    }
}

/// A job as submitted.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub owner: String,
    pub taxonomy: String,
    pub metadata: BTreeMap<String, String>,
    /// Checked against the address policy before it gets here.
    pub callback_url: Option<String>,
    pub titles: Vec<String>,
    pub idempotency_key: Option<String>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub taxonomy: String,
    pub metadata: BTreeMap<String, String>,
    pub callback_url: Option<String>,
    pub counts: JobCounts,
    pub usage: JobUsage,
}

/// One title's result, as `GET /jobs/{id}/results` gives it: one NDJSON line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    pub index: u64,
    pub topic: Option<String>,
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence_source: Option<ConfidenceSource>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// What a round did with one title.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Done(ResultLine),
    /// A transient error with attempts left: the title goes again in a later round. Not
    /// `counted` against its attempts when the replica itself stopped it (a shutdown, a
    /// drain): a rolling deploy must not use them up.
    Again {
        counted: bool,
    },
}

/// A job: where it is, how far, and what it cost so far.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobView {
    #[schema(example = "job_5f0c3a9e1d2b4c6a")]
    pub id: String,
    pub status: JobStatus,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub taxonomy: String,
    pub metadata: BTreeMap<String, String>,
    /// Where the job's end is posted, signed (Standard Webhooks); absent when none was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    pub counts: JobCounts,
    pub usage: JobUsage,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            id: job.id,
            status: job.status,
            created_at: rfc3339(job.created_at_ms),
            finished_at: job.finished_at_ms.map(rfc3339),
            taxonomy: job.taxonomy,
            metadata: job.metadata,
            callback_url: job.callback_url,
            counts: job.counts,
            usage: job.usage,
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("HNC_DATA_DIR {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("HNC_DATA_DIR {path} is in use by another process: one process a data directory")]
    Locked { path: String },
    #[error("the job store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Redis did not answer, or answered an error: the caller may try again.
    #[error("the job store (redis): {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the job store holds a result it cannot read: {0}")]
    Corrupt(String),
}

/// What `create` did: made the job, or found the one an earlier request with the same
/// idempotency key made.
#[derive(Debug)]
pub enum Created {
    New(Job),
    Existing(Job),
}

/// A job's titles to classify next.
#[derive(Debug)]
pub struct Work {
    pub job_id: String,
    pub taxonomy: String,
    /// (index, title, attempts so far), in input order.
    pub items: Vec<(u64, String, u32)>,
    /// In Redis, the chunk of the job this replica holds (with heartbeats) while it works on
    /// it; on disk, one process owns every job and nothing is claimed.
    pub claim: Option<Claim>,
}

/// A replica's hold on one chunk of a job's titles: it lapses unless renewed, and then another
/// replica takes the chunk over.
#[derive(Debug, Clone)]
pub struct Claim {
    pub chunk: u64,
    pub token: String,
}

/// What the metrics say of the jobs.
#[derive(Debug)]
pub struct Gauges {
    pub by_status: Vec<(JobStatus, u64)>,
    pub titles_pending: u64,
    pub oldest_open_at_ms: Option<i64>,
}

/// A webhook to send.
#[derive(Debug)]
pub struct Delivery {
    pub id: String,
    pub url: String,
    pub body: String,
    pub attempts: u32,
}

/// How a delivery went.
#[derive(Debug)]
pub enum Delivered {
    Yes,
    /// Failed; tried again after `retry_in`, or given up (`None`).
    No {
        error: String,
        retry_in: Option<std::time::Duration>,
    },
}
