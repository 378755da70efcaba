//! `/jobs`: submit titles as a job, poll it, download its results, cancel it, list them. The
//! work is `crate::jobs`'; this is its HTTP face. A job belongs to the key that submitted it:
//! another key's job answers 404, as if it did not exist.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
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
use crate::jobs::plan::{MAX_AHEAD, Plan, parse_deadline, parse_within};
use crate::jobs::{Created, JobView, Jobs, NewJob, ResultLine};

/// The most result lines one answer holds: a larger job is downloaded in several, each from
/// the index after the last line of the one before.
const RESULTS_PER_ANSWER: u32 = 10_000;

/// At most this many metadata entries, each key and value this long.
const MAX_METADATA: usize = 16;
const MAX_METADATA_CHARS: usize = 512;

/// `{"titles": [...]}`, optionally with `"taxonomy"` and `"metadata"` (a small string map
/// returned as given).
#[derive(Debug, Deserialize, ToSchema)]
pub struct JobRequest {
    /// 1 to `HNC_MAX_JOB_TITLES` titles; bad ones get per-item errors, as in `/classify-batch`.
    #[schema(example = json!(["Show HN: A fast JSON parser in Rust"]), min_items = 1)]
    pub titles: Vec<String>,
    pub taxonomy: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Where the job's end is posted (`http` or `https`), signed as Standard Webhooks says with
    /// `HNC_WEBHOOK_SECRET`; not to loopback, private or link-local addresses unless
    /// `HNC_WEBHOOK_ALLOW_PRIVATE` is set.
    #[schema(example = "https://example.com/hooks/hn-classifier")]
    pub callback_url: Option<String>,
    /// When the job must be done (RFC 3339): the service picks the cheapest lane that meets
    /// it (the Batch API, flex or live). At most one of `deadline` and `complete_within`.
    #[schema(example = "2026-12-08T06:00:00Z")]
    pub deadline: Option<String>,
    /// The same as a time from now: `"90m"`, `"30h"`.
    #[schema(example = "30h")]
    pub complete_within: Option<String>,
    /// Return the plan (lane, estimated cost and finish, why) and create nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A 200 to `POST /jobs`: the job an earlier submission with the same `Idempotency-Key` made,
/// or a dry run's plan.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SubmitAnswer {
    Job(Box<JobView>),
    DryRun(DryRun),
}

/// What a dry run answers: the plan a job of these titles would get, nothing created.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    /// Always true.
    pub dry_run: bool,
    pub titles: u64,
    pub plan: Plan,
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
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    pub limit: Option<u32>,
    /// Jobs older than this job id (the previous page's `next`).
    #[param(nullable = false)]
    pub before: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// The first index to return (default 0): where an interrupted download resumes.
    #[param(nullable = false)]
    pub from: Option<u64>,
}

/// A query string that does not parse is a 422 naming the parameter, like a bad body.
fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::Validation(e.body_text()))
}

fn jobs(state: &AppState) -> Result<&Arc<Jobs>, ApiError> {
    state.jobs.as_ref().ok_or(ApiError::JobsNotConfigured)
}

fn not_found(id: &str) -> ApiError {
    ApiError::JobNotFound(id.to_owned())
}

/// Submit titles as a job: `202 Accepted`, `Location: /jobs/{id}`, and the job.
///
/// The titles are kept (in the replicas' Redis, or on disk with `HNC_DATA_DIR`) and classified
/// in the background, through the same pipeline as `/classify-batch`, as capacity allows, in
/// the cheapest lane that meets the job's `deadline` when it has one; a restart resumes the
/// job. With an `Idempotency-Key` header, a retried submission returns the job the first one
/// made (200). With `"dry_run": true`, 200 and the plan, nothing created. With
/// `Content-Type: application/x-ndjson` the body is one `{"title": "..."}` per line, and the
/// options come from the query string.
#[utoipa::path(
    post,
    path = "/jobs",
    tag = "jobs",
    request_body(content(
        (JobRequest = "application/json"),
        (String = "application/x-ndjson")
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried submission return the same job"), SubmitQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 202, description = "The job, accepted", body = JobView),
        (status = 200, description = "The job an earlier submission with the same `Idempotency-Key` made, or a dry run's plan", body = SubmitAnswer),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 413, description = "`job_too_large` (over `HNC_MAX_JOB_TITLES`) or `payload_too_large`", body = ErrorBody),
        (status = 422, description = "`validation_failed`, `unknown_taxonomy` or `deadline_unreachable` (with `earliest_deadline`)", body = ErrorBody),
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
    // The query's options apply to NDJSON bodies; a JSON body's are in it, but a query that
    // does not parse is refused either way.
    let _: SubmitQuery = query(Query::try_from_uri(request.uri()))?;
    let request = if super::stream::wants_ndjson_body(&headers) {
        ndjson_request(request, &state).await?
    } else {
        let Json(request) = Json::<JobRequest>::from_request(request, &state)
            .await
            .map_err(|r| rejection_to_error(r, state.max_body_bytes))?;
        request
    };
    check(&state, &request)?;
    let taxonomy = super::classify::resolve_taxonomy(&state, request.taxonomy.as_deref())?;
    let deadline_ms = deadline_of(&request)?;
    if state.lifecycle.is_draining() {
        return Err(ApiError::ShuttingDown);
    }
    let callback_url = match request.callback_url {
        None => None,
        Some(url) => {
            let webhooks = state.webhooks.as_ref().ok_or_else(|| {
                ApiError::Validation(
                    "callback_url: webhooks are off; set HNC_WEBHOOK_SECRET on the service"
                        .to_owned(),
                )
            })?;
            if let Some(why) = webhooks.refusal(&url).await {
                return Err(ApiError::Validation(format!("callback_url: {why}")));
            }
            Some(url)
        }
    };
    let planned = jobs.plan(
        state.classifier.clone(),
        taxonomy.clone(),
        std::sync::Arc::new(request.titles.clone()),
        deadline_ms,
    );
    if request.dry_run {
        let plan = planned.await.map_err(unreachable)?;
        let body = DryRun {
            dry_run: true,
            titles: request.titles.len() as u64,
            plan,
        };
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let owner = client.as_str().to_owned();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // A retried submission gets its job back before any limit or quota is counted again.
    if let Some(key) = &key
        && let Some(job) = jobs.by_key(owner.clone(), key.clone()).await?
    {
        let location = format!("/jobs/{}", job.id);
        let view = JobView::from(job);
        return Ok((StatusCode::OK, [(header::LOCATION, location)], Json(view)).into_response());
    }
    let plan = planned.await.map_err(unreachable)?;
    let open = jobs.open_jobs(owner.clone()).await?;
    if open >= state.job_limits.max_open {
        return Err(ApiError::TooManyOpenJobs {
            limit: state.job_limits.max_open,
        });
    }
    state.quotas.take(&client, request.titles.len()).await?;
    let n = request.titles.len();
    let created = jobs
        .create(NewJob {
            owner,
            taxonomy: taxonomy.name().to_owned(),
            metadata: request.metadata,
            callback_url,
            titles: request.titles,
            idempotency_key: key,
            deadline_ms,
            plan,
        })
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

/// Options of an NDJSON submission, which has no JSON object to hold them.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// With an NDJSON body: the taxonomy (as `"taxonomy"` in a JSON body).
    #[param(nullable = false)]
    pub taxonomy: Option<String>,
    /// With an NDJSON body: the callback URL (as `"callback_url"` in a JSON body).
    #[param(nullable = false)]
    pub callback_url: Option<String>,
    /// With an NDJSON body: when the job must be done (as `"deadline"` in a JSON body).
    #[param(nullable = false)]
    pub deadline: Option<String>,
    /// With an NDJSON body: the same as a time from now (as `"complete_within"`).
    #[param(nullable = false)]
    pub complete_within: Option<String>,
    /// With an NDJSON body: return the plan and create nothing (as `"dry_run"`).
    #[param(nullable = false)]
    pub dry_run: Option<bool>,
    /// With an NDJSON body: the metadata, as a JSON object of strings (as `"metadata"` in a
    /// JSON body), e.g. `{"run":"nightly"}` URL-encoded.
    #[param(nullable = false, example = json!("{\"run\":\"nightly\"}"))]
    pub metadata: Option<String>,
}

/// A submission as NDJSON lines `{"title": "..."}` (`Content-Type: application/x-ndjson`), for
/// a job too big to build as one JSON body; its options come from the query string.
async fn ndjson_request(request: Request, state: &AppState) -> Result<JobRequest, ApiError> {
    let options: SubmitQuery = query(Query::try_from_uri(request.uri()))?;
    let metadata = match options.metadata.as_deref() {
        None => BTreeMap::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            ApiError::Validation(format!("metadata: a JSON object of strings ({e})"))
        })?,
    };
    let limit = state.max_body_bytes;
    let bytes = axum::body::to_bytes(request.into_body(), limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::InvalidJson("the body is not UTF-8".to_owned()))?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        title: String,
    }
    let titles = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str::<Line>(line)
                .map(|l| l.title)
                .map_err(|e| ApiError::Validation(format!("line {}: {e}", n + 1)))
        })
        .collect::<Result<Vec<String>, _>>()?;
    Ok(JobRequest {
        titles,
        taxonomy: options.taxonomy,
        metadata,
        callback_url: options.callback_url,
        deadline: options.deadline,
        complete_within: options.complete_within,
        dry_run: options.dry_run.unwrap_or(false),
    })
}

/// The deadline a submission gives, as `deadline` or `complete_within`, in ms since the epoch.
fn deadline_of(request: &JobRequest) -> Result<Option<i64>, ApiError> {
    let now = crate::jobs::now_ms();
    let too_far = |field: &str| {
        ApiError::Validation(format!(
            "{field}: at most {} days ahead",
            MAX_AHEAD.as_secs() / 86_400
        ))
    };
    match (&request.deadline, &request.complete_within) {
        (Some(_), Some(_)) => Err(ApiError::Validation(
            "deadline, complete_within: give one of them, not both".to_owned(),
        )),
        (Some(at), None) => {
            let at =
                parse_deadline(at).map_err(|e| ApiError::Validation(format!("deadline: {e}")))?;
            if at.saturating_sub(now) > MAX_AHEAD.as_millis() as i64 {
                return Err(too_far("deadline"));
            }
            Ok(Some(at))
        }
        (None, Some(within)) => {
            let within = parse_within(within)
                .map_err(|e| ApiError::Validation(format!("complete_within: {e}")))?;
            if within > MAX_AHEAD {
                return Err(too_far("complete_within"));
            }
            Ok(Some(now + within.as_millis() as i64))
        }
        (None, None) => Ok(None),
    }
}

/// A deadline nothing can meet: 422 with the earliest one that could be.
fn unreachable(why: crate::jobs::plan::Unreachable) -> ApiError {
    ApiError::DeadlineUnreachable {
        earliest: crate::jobs::rfc3339(why.earliest_ms),
    }
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
        (status = 503, description = "`jobs_not_configured`", body = ErrorBody),
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
/// from `?from=N` up to the first title not done yet (of an ended job, every title done), at
/// most 10,000 lines an answer. A download continues, or resumes after an interruption, with
/// `from` set to the index after the last line it has.
#[utoipa::path(
    get,
    path = "/jobs/{id}/results",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), ResultsQuery),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "NDJSON lines; CSV (`index,topic,confidence,confidence_source,error,error_code`) with `Accept: text/csv`", content((String = "application/x-ndjson"), (String = "text/csv"))),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `from` is not a number", body = ErrorBody),
        (status = 503, description = "`jobs_not_configured`", body = ErrorBody),
    )
)]
pub async fn results(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    headers: HeaderMap,
    Path(id): Path<String>,
    params: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let from = query(params)?.from.unwrap_or(0);
    if from > i64::MAX as u64 {
        return Err(ApiError::Validation(format!(
            "from: {from} is past the largest index, {}",
            i64::MAX
        )));
    }
    let lines = jobs(&state)?
        .results(
            client.as_str().to_owned(),
            id.clone(),
            from,
            RESULTS_PER_ANSWER,
        )
        .await?
        .ok_or_else(|| not_found(&id))?;
    if wants_csv(&headers) {
        return Ok(([(header::CONTENT_TYPE, "text/csv")], csv_of(&lines)?).into_response());
    }
    let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        body.push_str(&line);
        body.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, super::stream::NDJSON)], body).into_response())
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/csv"))
}

/// The result lines as CSV: `index,topic,confidence,confidence_source,error,error_code`.
fn csv_of(lines: &[String]) -> Result<String, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let bad = |e: String| ApiError::JobStore(crate::jobs::StoreError::Corrupt(e));
    /// Every column on every row (the NDJSON line leaves absent ones out).
    #[derive(Serialize)]
    struct CsvRow {
        index: u64,
        topic: Option<String>,
        confidence: Option<f64>,
        confidence_source: Option<&'static str>,
        error: Option<String>,
        error_code: Option<String>,
    }
    for line in lines {
        let line: ResultLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let row = CsvRow {
            index: line.index,
            topic: line.topic,
            confidence: line.confidence,
            confidence_source: line.confidence_source.map(|s| s.name()),
            error: line.error,
            error_code: line.error_code,
        };
        writer.serialize(row).map_err(|e| bad(e.to_string()))?;
    }
    let bytes = writer.into_inner().map_err(|e| bad(e.to_string()))?;
    if bytes.is_empty() {
        // No row yet: the header alone, which serialising writes only with the first row.
        return Ok("index,topic,confidence,confidence_source,error,error_code\n".to_owned());
    }
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 fields is UTF-8"))
}

/// Cancel a job: no new round starts; the round in flight finishes, and what is done stays
/// (billed once).
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = JobView),
        (status = 404, description = "`job_not_found`", body = ErrorBody),
        (status = 503, description = "`jobs_not_configured`", body = ErrorBody),
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
    responses(
        (status = 200, body = JobList),
        (status = 422, description = "`validation_failed`: `limit` outside 1 to 100", body = ErrorBody),
        (status = 503, description = "`jobs_not_configured`", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let query = query(params)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit: {limit} is outside 1 to 100"
        )));
    }
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
