//! What a job is, as stored and as answered: its status, counts and usage, and one title's
//! result line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::clock::rfc3339;
use super::plan::{Lane, Plan};
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
    /// When it must be done (ms since the epoch), if it must.
    pub deadline_ms: Option<i64>,
    /// The lane chosen for it, and why.
    pub plan: Plan,
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
    pub deadline_ms: Option<i64>,
    /// `None` for a job made before plans were (it runs live).
    pub plan: Option<Plan>,
    /// What each lane did so far.
    pub lanes: BTreeMap<Lane, LaneUsage>,
}

/// What one lane did for a job: titles answered, tokens, calls, and the cost at its price
/// beside what the same calls would have cost live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LaneUsage {
    pub titles: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub upstream_requests: u64,
    /// USD at the lane's price; null when a model without a known price answered.
    pub cost_usd: Option<f64>,
    /// USD the same calls would have cost on the live standard tier.
    pub live_cost_usd: Option<f64>,
}

impl LaneUsage {
    /// Adds a round's `titles` (newly answered) and its calls' usage; `live_cost` is what those
    /// calls would have cost live (`None`: not known).
    pub fn add(&mut self, titles: u64, usage: &JobUsage, live_cost: Option<f64>) {
        let first = self.titles == 0 && self.upstream_requests == 0;
        self.titles += titles;
        self.input_tokens += usage.input_tokens;
        self.cached_input_tokens += usage.cached_input_tokens;
        self.output_tokens += usage.output_tokens;
        self.reasoning_tokens += usage.reasoning_tokens;
        self.upstream_requests += usage.upstream_requests;
        let sum = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (None, b) if first => b,
            _ => None,
        };
        self.cost_usd = sum(self.cost_usd, usage.cost_usd);
        self.live_cost_usd = sum(self.live_cost_usd, live_cost);
    }
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

impl ResultLine {
    /// The line of a title classified as `p`.
    pub fn of(index: u64, p: &crate::upstream::Prediction) -> Self {
        Self {
            index,
            topic: Some(p.topic.to_string()),
            confidence: Some(p.confidence),
            confidence_source: Some(p.source),
            error: None,
            error_code: None,
        }
    }

    /// The line of a title whose error is its result.
    pub fn error(index: u64, code: &str, message: &str) -> Self {
        Self {
            index,
            topic: None,
            confidence: None,
            confidence_source: None,
            error: Some(message.to_owned()),
            error_code: Some(code.to_owned()),
        }
    }
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
    /// RFC 3339, when the job was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The lane chosen when the job was submitted, its estimates, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// What each lane did so far (`live`, `flex`, `batch`), with what the same calls would
    /// have cost live.
    #[serde(default)]
    pub lanes: BTreeMap<Lane, LaneUsage>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            deadline: job.deadline_ms.map(rfc3339),
            plan: job.plan,
            lanes: job.lanes,
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
    /// The job's deadline and plan, and titles not done yet: which lane this round takes.
    pub deadline_ms: Option<i64>,
    pub plan: Option<Plan>,
    pub pending: u64,
    /// In Redis, the chunk of the job this replica holds (with heartbeats) while it works on
    /// it; on disk, one process owns every job and nothing is claimed.
    pub claim: Option<Claim>,
}

/// How many of a model's latest batch turnarounds the planner looks at (the longest counts).
pub const TURNAROUNDS: u32 = 5;

/// A job on the Batch API lane: what a look at its batch needs.
#[derive(Debug, Clone)]
pub struct BatchWork {
    pub job_id: String,
    pub taxonomy: String,
    pub deadline_ms: Option<i64>,
    pub plan: Option<Plan>,
    /// Titles not done yet.
    pub pending: u64,
    /// The job was cancelled: its batch is cancelled at the provider and what it finished
    /// kept (paid for).
    pub cancelled: bool,
    pub state: BatchState,
}

impl BatchWork {
    /// The job as a round's results are written for it: no titles claimed.
    pub fn as_round(&self) -> Work {
        Work {
            job_id: self.job_id.clone(),
            taxonomy: self.taxonomy.clone(),
            items: Vec::new(),
            deadline_ms: self.deadline_ms,
            plan: self.plan.clone(),
            pending: self.pending,
            claim: None,
        }
    }
}

/// How a round's results are written: the lane that answered them, what the same calls would
/// have cost live, the round's id (written once: a write that goes again after a lost reply, or
/// a batch's answers read again after a crash, is not counted twice), and whether the job
/// leaves the Batch API lane with them (in the same transaction or script).
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub lane: Lane,
    pub live_cost: Option<f64>,
    pub round: u64,
    pub leaves_batch: bool,
}

/// Where a job's batch is: its uploaded file and its batch, kept with the job so that a
/// restart, or another replica, polls the same batch rather than creating (and paying for)
/// another.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchState {
    pub file_id: Option<String>,
    pub batch_id: Option<String>,
    /// Asked to stop (the deadline came too close): what it finished is kept, the rest goes
    /// live.
    #[serde(default)]
    pub cancelled: bool,
    /// Looks in a row that failed before the batch was made: after a few the titles go live.
    #[serde(default)]
    pub failures: u32,
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
