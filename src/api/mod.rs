//! The HTTP edge: routes, the tower layers around them, and the state they share. Knows HTTP and
//! JSON; hands titles to `classify` and turns its outcome into the contract's bodies.

mod auth;
pub mod body;
mod classify;
mod docs;
mod error;
mod extract;
mod jobs;
mod openapi;
mod probes;
mod state;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, Request, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Level;

pub use crate::jobs::JobView;
pub use auth::{ClientId, ClientKeys, Quotas};
pub use error::ApiError;
pub use jobs::{JobList, JobRequest};
pub use openapi::{ApiDoc, document_json, document_json_for};
pub use state::{AppState, JobLimits, RequestStarted};
pub use stream::NDJSON;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The service's routes and layers over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.max_body_bytes;
    let request_timeout = state.request_timeout;

    let mut routes = Router::new()
        // Only classification spends credits: probes and metrics stay open for the platform.
        .route(
            "/classify-batch",
            post(classify::classify_batch)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .route(
            "/jobs",
            post(jobs::submit)
                .get(jobs::list)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .route(
            "/jobs/{id}",
            get(jobs::get_job)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .route(
            "/jobs/{id}/results",
            get(jobs::results)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .route(
            "/jobs/{id}/cancel",
            post(jobs::cancel)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_key)),
        )
        .route("/taxonomies", get(classify::list_taxonomies))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz));
    if state.metrics_on_main_port {
        routes = routes.route("/metrics", get(probes::metrics));
    }
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
        // The viewer comes from the binary too: the page works offline.
        .route("/docs", get(docs::page))
        .route("/docs/scalar.js", get(docs::viewer));
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // After the fallbacks, so 404 and 405 are counted too: by matched route, never the raw
        // path (`unmatched` for a path no route has), so metrics cardinality stays bounded.
        .layer(middleware::from_fn_with_state(state.clone(), track_http))
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
                    .on_response(
                        |response: &axum::http::Response<axum::body::Body>,
                         latency: std::time::Duration,
                         span: &tracing::Span| {
                            record_status(response, latency, span);
                            DefaultOnResponse::new()
                                .level(Level::INFO)
                                .on_response(response, latency, span);
                        },
                    ),
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
        .route("/metrics", get(probes::metrics))
        .with_state(state)
}

/// Admits a request with a valid bearer token (or anyone, when no keys are configured) and
/// records who it is on the request's span and in its extensions.
async fn require_key(
    State(state): State<Arc<AppState>>,
    mut request: Request<axum::body::Body>,
    next: Next,
) -> Result<Response, ApiError> {
    let client = if state.client_keys.is_open() {
        ClientId::anonymous()
    } else {
        let token = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        state
            .client_keys
            .identify(token.as_bytes())
            .ok_or(ApiError::Unauthorized)?
    };
    tracing::Span::current().record("client", client.as_str());
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

async fn track_http(
    State(state): State<Arc<AppState>>,
    route: Option<MatchedPath>,
    mut request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let started = Instant::now();
    request.extensions_mut().insert(RequestStarted(started));
    let response = next.run(request).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // HTTP semantic conventions for the trace; the short names stay for the logs.
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id,
        client = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        otel.name = format!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::adopt_parent(&span, request.headers());
    span
}

/// Records the status on the request's span (`http.response.status_code`).
fn record_status(
    response: &axum::http::Response<axum::body::Body>,
    _latency: std::time::Duration,
    span: &tracing::Span,
) {
    span.record("http.response.status_code", response.status().as_u16());
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}
