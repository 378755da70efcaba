//! `ValidJson<T>`: decodes a JSON body and validates it against the configured limits, so a
//! handler only ever sees valid input and every rejection comes back in our error shape.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use validator::{ValidateArgs, ValidationErrors};

use super::error::ApiError;
use super::state::AppState;
use crate::classify::BatchLimits;

pub struct ValidJson<T>(pub T);

impl<T> FromRequest<Arc<AppState>> for ValidJson<T>
where
    T: DeserializeOwned + for<'a> ValidateArgs<'a, Args = &'a BatchLimits>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state)
            .await
            .map_err(|r| rejection_to_error(r, state.max_body_bytes))?;
        let limits = state.classifier.limits();
        value
            .validate_with_args(&limits)
            .map_err(|e| ApiError::Validation(describe(&e)))?;
        Ok(Self(value))
    }
}

pub(super) fn rejection_to_error(rejection: JsonRejection, limit: usize) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        // Wrong types or a missing field: the inner serde_path_to_error message names the field.
        JsonRejection::JsonDataError(e) => ApiError::Validation(data_error(&inner_message(&e))),
        JsonRejection::JsonSyntaxError(e) => ApiError::InvalidJson(inner_message(&e)),
        r if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { limit }
        }
        r => ApiError::InvalidJson(r.body_text()),
    }
}

/// What a body of the wrong shape gets told. serde reads a struct from an array too, and its
/// message then names our type ("expected struct ClassifyBatchRequest with 2 elements"): say
/// what was expected instead.
fn data_error(message: &str) -> String {
    let top_level = message.starts_with('[') || message.contains("expected struct");
    if top_level {
        return r#"the body must be a JSON object with a "titles" array, like {"titles": ["a title", "another"]}"#
            .to_owned();
    }
    // A missing field has no path before it: named first, like every other field's message.
    match message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
    {
        Some((field, _)) => format!("{field}: {message}"),
        None => message.to_owned(),
    }
}

/// The text of the error layer that names the field, e.g. "titles[1]: invalid type: integer
/// `3`, expected a string at line 1 column 15", without axum's generic prefix.
fn inner_message(error: &dyn std::error::Error) -> String {
    // The path lives on the serde_path_to_error layer, the one just above serde_json's own error.
    let mut layer = error;
    while let Some(inner) = layer.source().filter(|inner| inner.source().is_some()) {
        layer = inner;
    }
    layer.to_string()
}

/// "field: message" for each failed rule.
fn describe(errors: &ValidationErrors) -> String {
    errors
        .field_errors()
        .iter()
        .flat_map(|(field, errs)| {
            errs.iter().map(move |e| match &e.message {
                Some(m) => format!("{field}: {m}"),
                None => format!("{field}: failed the `{}` rule", e.code),
            })
        })
        .collect::<Vec<_>>()
        .join("; ")
}
