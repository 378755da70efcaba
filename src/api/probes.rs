//! What the platform polls: liveness, readiness and the Prometheus text.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
use crate::upstream::EndpointHealth;

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
    for endpoint in upstream.health() {
        m.upstream_benched
            .with_label_values(&[endpoint.name])
            .set(i64::from(endpoint.benched));
        let unreachable = endpoint.unreachable_for.unwrap_or_default();
        m.upstream_unreachable_seconds
            .with_label_values(&[endpoint.name])
            .set(unreachable.as_secs_f64());
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
    let ready = !state.lifecycle.is_draining();
    m.service_ready.set(i64::from(ready));
    m.batches_in_flight
        .set(state.lifecycle.batches_in_flight() as i64);
    m.background_tasks.set(crate::tasks::alive() as i64);
    if let Some(jobs) = &state.jobs
        && let Ok(gauges) = jobs.gauges().await
    {
        for status in crate::jobs::JobStatus::ALL {
            let count = gauges.by_status.iter().find(|(s, _)| *s == status);
            m.jobs
                .with_label_values(&[status.name()])
                .set(count.map_or(0, |(_, n)| *n as i64));
        }
        m.job_titles_pending.set(gauges.titles_pending as i64);
        let age_ms = gauges.oldest_open_at_ms.map_or(0, |at| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
                - at
        });
        m.job_oldest_open_seconds.set(age_ms.max(0) as f64 / 1000.0);
    }
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], m.encode())
}

/// `{"status": ...}`: what `/readyz` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ready` or `draining`.
    pub status: &'static str,
}

/// What `/healthz` answers: the process is alive, and what it sees of the provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok`: the process answers.
    pub status: &'static str,
    /// `ok` (every endpoint reachable and in use), `degraded` (some benched or unreachable) or
    /// `unavailable` (none can be used now: calls wait within their deadlines).
    pub upstream: &'static str,
    pub endpoints: Vec<EndpointView>,
}

/// One upstream endpoint's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointView {
    pub name: String,
    /// `ok`, `benched` (left out after a refused key or quota or failures in a row; tried
    /// again after 30 s) or `unreachable` (connections fail to open).
    pub state: &'static str,
    /// Seconds its connections have failed to open, while they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable_for_s: Option<f64>,
    /// Why the last opening failed, while they fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<EndpointHealth<'_>> for EndpointView {
    fn from(e: EndpointHealth<'_>) -> Self {
        let state = if e.unreachable_for.is_some() {
            "unreachable"
        } else if e.benched {
            "benched"
        } else {
            "ok"
        };
        Self {
            name: e.name.to_owned(),
            state,
            unreachable_for_s: e
                .unreachable_for
                .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
            last_error: e.last_error,
        }
    }
}

/// Liveness: the process answers (always 200). The details say what it sees of the provider:
/// an outage, a benched endpoint or a refused key shows here and in the metrics, never in
/// readiness.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = HealthBody)))]
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<HealthBody> {
    let endpoints: Vec<EndpointView> = state
        .classifier
        .upstream()
        .health()
        .into_iter()
        .map(EndpointView::from)
        .collect();
    let ok = endpoints.iter().filter(|e| e.state == "ok").count();
    let upstream = match ok {
        n if n == endpoints.len() => "ok",
        0 => "unavailable",
        _ => "degraded",
    };
    Json(HealthBody {
        status: "ok",
        upstream,
        endpoints,
    })
}

/// Readiness: whether this replica takes work. 503 only while it drains; never because of the
/// provider, which every replica shares: a probe on it would take them all out of the load
/// balancer at once, turning a provider blip into a total outage (`/healthz` has the provider's
/// state).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", body = StatusBody),
        (status = 503, description = "`draining`", body = StatusBody)
    )
)]
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let (code, status) = if state.lifecycle.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    (code, Json(StatusBody { status }))
}
