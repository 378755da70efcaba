//! `/jobs`: submit titles as a job, poll it, download its results, cancel it, list them. The
//! work is `crate::jobs`'; this is its HTTP face. A job belongs to the key that submitted it:
//! another key's job answers 404, as if it did not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::ClientId;
use super::error::{ApiError, ErrorBody};
use super::extract::rejection_to_error;
use super::state::AppState;
use crate::jobs::{Created, Job, JobCounts, JobStatus, JobUsage, Jobs};

/// At most this many metadata entries, each key and value this long.
const MAX_METADATA: usize = 16;
const MAX_METADATA_CHARS: usize = 512;

/// `{"titles": [...]}`, optionally with `"taxonomy"` and `"metadata"` (a small string map
/// returned as given).
#[derive(Debug, Deserialize, ToSchema)]
pub struct JobRequest {
    /// 1 to `HNC_MAX_JOB_TITLES` titles; bad ones get per-item errors, as in `/classify-batch`.
    #[schema(example = json!(["Show HN: A fast JSON parser in Rust"]))]
    pub titles: Vec<String>,
    pub taxonomy: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A job: where it is, how far, and what it cost so far.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
            counts: job.counts,
            usage: job.usage,
        }
    }
}

fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// The caller's jobs, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `before` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// At most this many (1 to 100, default 20).
    pub limit: Option<u32>,
    /// Jobs older than this job id (the previous page's `next`).
    pub before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResultsQuery {
    /// The first index to return (default 0): where an interrupted download resumes.
    pub from: Option<u64>,
}

fn jobs(state: &AppState) -> Result<&Arc<Jobs>, ApiError> {
    state.jobs.as_ref().ok_or(ApiError::JobsNotConfigured)
}

fn not_found(id: &str) -> ApiError {
    ApiError::JobNotFound(id.to_owned())
}

/// Submit titles as a job: `202 Accepted`, `Location: /jobs/{id}`, and the job.
///
/// The titles are kept on disk (`HNC_DATA_DIR`) and classified in the background, through the
/// same pipeline as `/classify-batch`, as capacity allows; a restart resumes the job. With an
/// `Idempotency-Key` header, a retried submission returns the job the first one made (200).
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    request_body = JobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried submission return the same job")),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "The job, accepted", body = JobView),
        (status = 200, description = "The job an earlier submission with the same `Idempotency-Key` made", body = JobView),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 413, description = "`job_too_large` (over `HNC_MAX_JOB_TITLES`) or `payload_too_large`", body = ErrorBody),
        (status = 422, description = "`validation_failed` or `unknown_taxonomy`", body = ErrorBody),
        (status = 429, description = "`too_many_open_jobs` (`HNC_MAX_OPEN_JOBS`) or `quota_exceeded`", body = ErrorBody),
        (status = 503, description = "`jobs_not_configured` (no `HNC_DATA_DIR`) or `shutting_down`", body = ErrorBody),
    )
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let jobs = jobs(&state)?.clone();
    let Json(request) = Json::<JobRequest>::from_request(request, &state)
        .await
        .map_err(|r| rejection_to_error(r, state.max_body_bytes))?;
    check(&state, &request)?;
    let taxonomy = super::classify::resolve_taxonomy(&state, request.taxonomy.as_deref())?;
    if state.lifecycle.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let owner = client.as_str().to_owned();
    let open = jobs.open_jobs(owner.clone()).await?;
    if open >= state.job_limits.max_open {
        return Err(ApiError::TooManyOpenJobs {
            limit: state.job_limits.max_open,
        });
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if key.is_none() {
        state.quotas.take(&client, request.titles.len()).await?;
    }
    let titles = request.titles;
    let n = titles.len();
    let created = jobs
        .create(
            owner,
            (taxonomy.name().to_owned(), request.metadata),
            titles,
            key,
        )
        .await?;
    let (status, job) = match created {
        Created::New(job) => {
            state
                .metrics
                .client_items
                .with_label_values(&[client.as_str()])
                .inc_by(n as u64);
            (StatusCode::ACCEPTED, job)
        }
        Created::Existing(job) => (StatusCode::OK, job),
    };
    let location = format!("/jobs/{}", job.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(JobView::from(job)),
    )
        .into_response())
}

/// The checks of a submission that need no store: size, titles, metadata.
fn check(state: &AppState, request: &JobRequest) -> Result<(), ApiError> {
    let max = state.job_limits.max_titles;
    if request.titles.len() > max {
        return Err(ApiError::JobTooLarge {
            titles: request.titles.len(),
            limit: max,
        });
    }
    if request.titles.is_empty() {
        return Err(ApiError::Validation(
            "titles: at least 1 title is required".to_owned(),
        ));
    }
    let too_long = |s: &String| s.chars().count() > MAX_METADATA_CHARS;
    if request.metadata.len() > MAX_METADATA
        || request
            .metadata
            .iter()
            .any(|(k, v)| too_long(k) || too_long(v))
    {
        return Err(ApiError::Validation(format!(
            "metadata: at most {MAX_METADATA} entries, keys and values at most {MAX_METADATA_CHARS} characters"
        )));
    }
    Ok(())
}

/// A job: status, counts and usage.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 404, description = "`job_not_found` (also another key's job)", body = ErrorBody),
    )
)]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = jobs(&state)?
        .get(client.as_str().to_owned(), id.clone())
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(job.into()))
}

/// A job's results so far, in input order, as NDJSON: one line per title, `{"index", "topic",
/// "confidence", "confidence_source", "error", "error_code"}` as `/classify-batch` gives them,
/// from `?from=N` up to the first title not done yet. A download that stopped resumes with
/// `from` set to the next index.
#[utoipa::path(
    get,
    path = "/jobs/{id}/results",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), ResultsQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "NDJSON lines", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
pub async fn results(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    Path(id): Path<String>,
    Query(query): Query<ResultsQuery>,
) -> Result<Response, ApiError> {
    let from = query.from.unwrap_or(0);
    let lines = jobs(&state)?
        .results(client.as_str().to_owned(), id.clone(), from, u32::MAX)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, super::stream::NDJSON)], body).into_response())
}

/// Cancel a job: what is pending is not sent; what is done stays, and is billed once.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = jobs(&state)?
        .cancel(client.as_str().to_owned(), id.clone())
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(job.into()))
}

/// The caller's jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/jobs",
    tag = "jobs",
    params(ListQuery),
    security((), ("bearer" = [])),
    responses((status = 200, body = JobList))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    Query(query): Query<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let page = jobs(&state)?
        .list(client.as_str().to_owned(), limit + 1, query.before)
        .await?;
    let more = page.len() > limit as usize;
    let jobs: Vec<JobView> = page
        .into_iter()
        .take(limit as usize)
        .map(JobView::from)
        .collect();
    let next = more.then(|| jobs.last().map(|j| j.id.clone())).flatten();
    Ok(Json(JobList { jobs, next }))
}
