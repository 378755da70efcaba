//! What the platform polls: liveness, readiness and the Prometheus text.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;

/// Prometheus text. Gauges of live state are read now, so they are exact at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = &state.metrics;
    let upstream = state.classifier.upstream();
    let limiter = upstream.limiter_snapshot();
    m.upstream_in_flight.set(limiter.in_flight as i64);
    m.upstream_concurrency_limit.set(limiter.limit as i64);
    m.upstream_queued.set(limiter.waiting as i64);
    let saturation = upstream.saturation();
    m.replica_saturation.set(saturation.ratio);
    m.upstream_rate_limit_waiting
        .set(saturation.waiting_for_rate_limit as i64);
    for (name, benched) in upstream.endpoint_health() {
        m.upstream_benched
            .with_label_values(&[name])
            .set(i64::from(benched));
    }
    for (name, resent) in upstream.resent() {
        let counter = m.upstream_resent.with_label_values(&[name]);
        counter.inc_by(resent.saturating_sub(counter.get()));
    }
    for (name, on) in upstream.confidence_from_logprobs() {
        m.upstream_confidence_from_logprobs
            .with_label_values(&[name])
            .set(i64::from(on));
    }
    for (name, share) in upstream.pacer_shares() {
        m.upstream_rate_share.with_label_values(&[name]).set(share);
    }
    let ready = !state.lifecycle.is_draining() && upstream.is_usable();
    m.service_ready.set(i64::from(ready));
    m.batches_in_flight
        .set(state.lifecycle.batches_in_flight() as i64);
    m.background_tasks.set(crate::tasks::alive() as i64);
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], m.encode())
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
pub async fn healthz() -> impl IntoResponse {
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
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.lifecycle.is_draining() {
        status(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !state.classifier.upstream().is_usable() {
        status(StatusCode::SERVICE_UNAVAILABLE, "upstream_unusable")
    } else {
        status(StatusCode::OK, "ready")
    }
}
