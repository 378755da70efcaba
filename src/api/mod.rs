//! The HTTP edge: routes, the tower layers around them, and the state they share. Knows HTTP and
//! JSON; hands titles to `classify` and turns its outcome into the contract's bodies.

mod classify;
mod error;
mod extract;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderName, Request, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use classify::{ClassifyBatchRequest, ClassifyBatchResponse, ItemView, UsageView};
pub use error::ApiError;

use crate::classify::Classifier;
use crate::lifecycle::Lifecycle;

/// Everything a handler needs, built once at start-up and shared behind `Arc`.
#[derive(Debug)]
pub struct AppState {
    pub classifier: Classifier,
    /// Draining and running-batch bookkeeping for graceful shutdown.
    pub lifecycle: Lifecycle,
    /// The body limit, repeated here so a 413 can say what it is.
    pub max_body_bytes: usize,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The service's routes and layers over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    let routes = Router::new()
        .route("/classify-batch", post(classify::classify_batch))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // The JSON extractor reads the body under this limit and we turn its 413 into ours.
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);

    routes.layer(
        ServiceBuilder::new()
            // Outermost: take the caller's x-request-id or make one, before anything logs.
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            // One span per request carrying the id, so every log line of the request has it.
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
            // Echo the id on the response, errors included.
            .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
    )
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
    )
}

/// Liveness: the process answers.
async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: false while draining, so load balancers stop sending new work.
async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.lifecycle.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
