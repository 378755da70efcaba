//! Every way a whole request can fail, in one enum with one status match. The body is always
//! `{"error":{"code","message"}}` with a stable `code`; messages say what to fix.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),

    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },

    #[error("expected `Content-Type: application/json`")]
    UnsupportedMediaType,

    #[error("{0}")]
    Validation(String),

    #[error("unknown taxonomy {name:?}; known: {known}")]
    UnknownTaxonomy { name: String, known: String },

    #[error("no route for {0}")]
    NotFound(String),

    #[error("method not allowed on this route")]
    MethodNotAllowed,

    #[error("a valid `Authorization: Bearer <key>` header is required")]
    Unauthorized,

    #[error("this key's quota of items per minute is used up; retry in {}s", retry_after_secs(.retry_after))]
    QuotaExceeded { retry_after: Duration },

    #[error("the request took longer than the {}s limit", .0.as_secs_f64())]
    RequestTimeout(Duration),

    #[error("the service is shutting down; retry on another replica")]
    ShuttingDown,

    #[error("the service is at capacity ({0}); retry shortly or on another replica")]
    Overloaded(#[from] crate::classify::Overloaded),

    #[error("jobs are off: set HNC_DATA_DIR to a directory where they are kept")]
    JobsNotConfigured,

    #[error("no job {0:?} for this key")]
    JobNotFound(String),

    #[error("the job has {titles} titles; the limit is {limit} (HNC_MAX_JOB_TITLES)")]
    JobTooLarge { titles: usize, limit: usize },

    #[error(
        "this key has {limit} jobs queued or running, the limit (HNC_MAX_OPEN_JOBS); wait for one to end"
    )]
    TooManyOpenJobs { limit: u64 },

    #[error("the job store failed: {0}")]
    JobStore(#[from] crate::jobs::StoreError),

    #[error(
        "the deadline cannot be met even live at the whole rate budget; the earliest that can: {earliest}"
    )]
    DeadlineUnreachable { earliest: String },
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_)
            | Self::UnknownTaxonomy { .. }
            | Self::DeadlineUnreachable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ShuttingDown | Self::Overloaded(_) | Self::JobsNotConfigured => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::JobNotFound(_) => StatusCode::NOT_FOUND,
            Self::JobTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyOpenJobs { .. } => StatusCode::TOO_MANY_REQUESTS,
            // Redis away is a wait, not a fault: the caller tries again.
            Self::JobStore(crate::jobs::StoreError::Redis(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::JobStore(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Validation(_) => "validation_failed",
            Self::UnknownTaxonomy { .. } => "unknown_taxonomy",
            Self::NotFound(_) => "not_found",
            Self::Unauthorized => "unauthorized",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::RequestTimeout(_) => "request_timeout",

            Self::MethodNotAllowed => "method_not_allowed",
            Self::ShuttingDown => "shutting_down",
            Self::Overloaded(_) => "overloaded",
            Self::JobsNotConfigured => "jobs_not_configured",
            Self::JobNotFound(_) => "job_not_found",
            Self::JobTooLarge { .. } => "job_too_large",
            Self::TooManyOpenJobs { .. } => "too_many_open_jobs",
            Self::JobStore(crate::jobs::StoreError::Redis(_)) => "job_store_unavailable",
            Self::JobStore(_) => "job_store_failed",
            Self::DeadlineUnreachable { .. } => "deadline_unreachable",
        }
    }
}

/// The body of every whole-request error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `validation_failed`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// What to fix, naming the field and the bound.
    pub message: String,
    /// With `deadline_unreachable`: the earliest deadline that could be met (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_deadline: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                earliest_deadline: match &self {
                    Self::DeadlineUnreachable { earliest } => Some(earliest.clone()),
                    _ => None,
                },
            },
        };

        let mut response = (self.status(), Json(body)).into_response();
        let headers = response.headers_mut();
        match self {
            Self::ShuttingDown => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Overloaded(why) => {
                let wait = retry_after_secs(&why.retry_after());
                headers.insert(header::RETRY_AFTER, HeaderValue::from(wait));
            }
            Self::QuotaExceeded { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(&retry_after)),
                );
            }
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"hn-classifier\""),
                );
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up, at least one: what `Retry-After` carries.
fn retry_after_secs(wait: &Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}
