//! The HTTP edge: routes, the tower layers around them, and the state they share. Knows HTTP and
//! JSON; hands titles to `classify` and turns its outcome into the contract's bodies.

mod auth;
mod classify;
mod error;
mod extract;
mod openapi;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;
use utoipa::{OpenApi, ToSchema};
use utoipa_scalar::{Scalar, Servable};

pub use auth::{ClientId, ClientKeys, Quotas};
pub use classify::{ClassifyBatchRequest, ClassifyBatchResponse, ItemView, UsageView};
pub use error::ApiError;
pub use openapi::{ApiDoc, document_json, document_json_for};

use crate::classify::Classifier;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

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

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The service's routes and layers over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    let request_timeout = state.request_timeout;

    let mut routes = Router::new()
        // Only classification spends credits: probes and metrics stay open for the platform.
        .route(
            "/classify-batch",
            post(classify::classify_batch).route_layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_key,
            )),
        )
        .route("/taxonomies", get(classify::list_taxonomies))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.metrics_on_main_port {
        routes = routes.route("/metrics", get(metrics));
    }
    let openapi = ApiDoc::openapi();
    let document = Arc::new(document_json_for(state.classifier.taxonomies()));
    let routes = routes
        .route(
            "/openapi.json",
            get(|| async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.as_str().to_owned(),
                )
            }),
        )
        // The page is static HTML; the browser loads the Scalar viewer from its CDN when opened.
        .merge(Scalar::with_url("/docs", openapi));
    let routes = routes
        // Counted by matched route, never the raw path, so metrics cardinality stays bounded.
        .route_layer(middleware::from_fn_with_state(state.clone(), track_http))
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
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            // Innermost: the deadline covers reading the body and the whole batch; when it fires
            // the handler is dropped, and with it the batch's upstream calls.
            .layer(HandleErrorLayer::new(
                move |_: tower::BoxError| async move { ApiError::RequestTimeout(request_timeout) },
            ))
            .layer(tower::timeout::TimeoutLayer::new(request_timeout)),
    )
}

/// `/metrics` alone, for a separate port (`HNC_METRICS_LISTEN`).
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn track_http(
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Prometheus text. Gauges of live state are read now, so they are exact at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = &state.metrics;
    let upstream = state.classifier.upstream();
    let limiter = upstream.limiter_snapshot();
    m.upstream_in_flight.set(limiter.in_flight as i64);
    m.upstream_concurrency_limit.set(limiter.limit as i64);
    for (name, benched) in upstream.endpoint_health() {
        m.upstream_benched
            .with_label_values(&[name])
            .set(i64::from(benched));
    }
    m.batches_in_flight
        .set(state.lifecycle.batches_in_flight() as i64);
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], m.encode())
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
        client = tracing::field::Empty,
    )
}

/// `{"status": ...}`: what the probes answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok`, `ready`, `draining` or `upstream_unusable`.
    pub status: &'static str,
}

fn status(code: StatusCode, status: &'static str) -> (StatusCode, Json<StatusBody>) {
    (code, Json(StatusBody { status }))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = StatusBody)))]
pub(super) async fn healthz() -> impl IntoResponse {
    status(StatusCode::OK, "ok")
}

/// Readiness: false while draining, or while the provider refuses our key or quota, so load
/// balancers send the work elsewhere.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = StatusBody),
        (status = 503, description = "`draining` or `upstream_unusable`", body = StatusBody)
    )
)]
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.lifecycle.is_draining() {
        status(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.classifier.upstream().is_usable() {
        status(StatusCode::SERVICE_UNAVAILABLE, "upstream_unusable")
    } else {
        status(StatusCode::OK, "ready")
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
