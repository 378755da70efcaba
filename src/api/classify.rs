//! `POST /classify-batch` and `GET /taxonomies`: the handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use super::auth::ClientId;
use super::body::{ClassifyBatchRequest, ClassifyBatchResponse, TaxonomiesResponse, TaxonomyView};
use super::error::{ApiError, ErrorBody};
use super::extract::ValidJson;
use super::state::{AppState, RequestStarted};
use super::stream;
use crate::classify::Cut;
use crate::lifecycle::Lifecycle;
use crate::taxonomy::Taxonomy;

/// Classify a batch of titles: one result per title, in input order.
///
/// With `Accept: application/x-ndjson` the answer streams instead: one line per item as it
/// completes, `{"index": i, "topic", "confidence", "error", ...}`, then
/// `{"done": true, "num_items", "errors", "usage"}`. Identical titles in flight share one
/// upstream call; with the cache on, repeats are answered with `"cached": true` and no call.
///
/// The answer is always complete: items not done by the batch's deadline (a little under
/// `HNC_REQUEST_TIMEOUT_S`) answer `deadline_exceeded`, and at shutdown's deadline
/// `shutting_down`. A batch that the provider's rate limit cannot serve in time behind those
/// already running is refused at once (503 `overloaded`, with `Retry-After`), before anything
/// is paid for or charged to the key's quota.
#[utoipa::path(
    post,
    path = "/classify-batch",
    tag = "classify",
    request_body = ClassifyBatchRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Every title's result, in input order", body = ClassifyBatchResponse),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: keys are configured and none was valid", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
        (status = 422, description = "`validation_failed` or `unknown_taxonomy`", body = ErrorBody),
        (status = 429, description = "`quota_exceeded` (with Retry-After)", body = ErrorBody),
        (status = 503, description = "`overloaded` or `shutting_down` (with Retry-After)", body = ErrorBody),
        (status = 504, description = "`request_timeout`", body = ErrorBody),
    )
)]
pub async fn classify_batch(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    Extension(RequestStarted(started)): Extension<RequestStarted>,
    headers: HeaderMap,
    ValidJson(request): ValidJson<ClassifyBatchRequest>,
) -> Result<Response, ApiError> {
    let taxonomy = resolve_taxonomy(&state, request.taxonomy.as_deref())?;
    // Every refusal happens here, while the answer can still carry a status code, and the
    // quota is charged last: a batch shed as shutting down or overloaded costs the caller
    // nothing. The guard lives as long as the batch (moved into the stream when there is one).
    let batch = state.lifecycle.admit().ok_or(ApiError::ShuttingDown)?;
    let admitted = state.classifier.admit(&request.titles).await?;
    state.quotas.take(&client, request.titles.len()).await?;
    state
        .metrics
        .client_items
        .with_label_values(&[client.as_str()])
        .inc_by(request.titles.len() as u64);

    let deadline = state.classifier.limits().batch_deadline;
    let cut = cut_at(started + deadline, deadline, state.lifecycle.clone());
    if stream::wants_ndjson(&headers) {
        return Ok(stream::respond(
            state,
            batch,
            admitted,
            taxonomy,
            request.titles,
            cut,
        ));
    }
    let outcome = state
        .classifier
        .classify_batch(admitted, &taxonomy, &request.titles, cut)
        .await;
    Ok(Json(ClassifyBatchResponse::new(&outcome)).into_response())
}

/// When a batch stops: its deadline (`deadline` after its request arrived, at `at`), or the
/// shutdown deadline, whichever comes first.
async fn cut_at(at: Instant, deadline: std::time::Duration, lifecycle: Lifecycle) -> Cut {
    tokio::select! {
        () = tokio::time::sleep_until(at.into()) => Cut::Deadline(deadline),
        () = lifecycle.batches_cut() => Cut::Shutdown,
    }
}

/// The taxonomy a request named, or the default one.
pub(super) fn resolve_taxonomy(
    state: &AppState,
    name: Option<&str>,
) -> Result<Arc<Taxonomy>, ApiError> {
    let taxonomies = state.classifier.taxonomies();
    let Some(name) = name else {
        return Ok(taxonomies.default_taxonomy().clone());
    };
    taxonomies
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::UnknownTaxonomy {
            name: name.to_owned(),
            known: taxonomies.names().join(", "),
        })
}

/// The taxonomies this service classifies into: names, versions, labels and descriptions.
#[utoipa::path(
    get,
    path = "/taxonomies",
    tag = "classify",
    responses((status = 200, body = TaxonomiesResponse))
)]
pub async fn list_taxonomies(State(state): State<Arc<AppState>>) -> Json<TaxonomiesResponse> {
    let taxonomies = state.classifier.taxonomies();
    Json(TaxonomiesResponse {
        default: taxonomies.default_taxonomy().name().to_owned(),
        taxonomies: taxonomies
            .iter()
            .map(|t| TaxonomyView::from(t.as_ref()))
            .collect(),
    })
}
