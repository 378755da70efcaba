//! `POST /classify-batch`: the request and response bodies and the handler.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use validator::{Validate, ValidationError};

use super::AppState;
use super::auth::ClientId;
use super::error::ApiError;
use super::extract::ValidJson;
use crate::classify::{BatchLimits, BatchOutcome, ItemResult};
use crate::upstream::Usage;

/// `{"titles": [...]}`. Unknown fields are ignored, so clients may send more over time.
#[derive(Debug, Deserialize, Validate)]
#[validate(context = BatchLimits)]
pub struct ClassifyBatchRequest {
    #[validate(custom(function = "validate_batch_size", use_context))]
    pub titles: Vec<String>,
}

fn validate_batch_size(titles: &[String], limits: &BatchLimits) -> Result<(), ValidationError> {
    if (1..=limits.max_batch).contains(&titles.len()) {
        return Ok(());
    }
    let message = format!(
        "must hold 1 to {} titles, got {}",
        limits.max_batch,
        titles.len()
    );
    Err(ValidationError::new("batch_size").with_message(message.into()))
}

/// The answer: `results[i]` belongs to `titles[i]`. The reference client reads `results`,
/// `num_items` and `errors`; everything else is additive.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClassifyBatchResponse {
    pub results: Vec<ItemView>,
    pub num_items: usize,
    pub errors: usize,
    pub usage: UsageView,
}

/// One item: a topic and confidence, or an error with its stable code.
#[derive(Debug, Serialize, Deserialize)]
pub struct ItemView {
    pub topic: Option<String>,
    pub confidence: Option<f64>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UsageView {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub upstream_requests: u64,
}

impl From<&ItemResult> for ItemView {
    fn from(result: &ItemResult) -> Self {
        match result {
            Ok(p) => Self {
                topic: Some(p.topic.to_string()),
                confidence: Some(p.confidence),
                error: None,
                error_code: None,
            },
            Err(e) => Self {
                topic: None,
                confidence: None,
                error: Some(e.to_string()),
                error_code: Some(e.code().to_owned()),
            },
        }
    }
}

impl From<Usage> for UsageView {
    fn from(u: Usage) -> Self {
        Self {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            upstream_requests: u.upstream_requests,
        }
    }
}

impl From<&BatchOutcome> for ClassifyBatchResponse {
    fn from(outcome: &BatchOutcome) -> Self {
        Self {
            results: outcome.results.iter().map(ItemView::from).collect(),
            num_items: outcome.results.len(),
            errors: outcome.errors(),
            usage: outcome.usage.into(),
        }
    }
}

pub async fn classify_batch(
    State(state): State<Arc<AppState>>,
    Extension(client): Extension<ClientId>,
    ValidJson(request): ValidJson<ClassifyBatchRequest>,
) -> Result<Json<ClassifyBatchResponse>, ApiError> {
    state.quotas.take(&client, request.titles.len())?;
    state
        .metrics
        .client_items
        .with_label_values(&[client.as_str()])
        .inc_by(request.titles.len() as u64);

    let _batch = state.lifecycle.admit().ok_or(ApiError::ShuttingDown)?;
    let outcome = state.classifier.classify_batch(&request.titles).await?;
    Ok(Json(ClassifyBatchResponse::from(&outcome)))
}
