//! The checks every answer goes through, whatever the protocol: the model's JSON must be exactly
//! the schema's, its label one of the taxonomy's and its confidence within 0..=1; a packed answer
//! is checked entry by entry. An answer that fails is an error, never a guessed label.

use serde::Deserialize;

use super::error::UpstreamError;
use super::usage::Prediction;
use crate::taxonomy::Taxonomy;

/// The model's answer as the schema demands it: exactly these two fields, each once.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    topic: String,
    confidence: f64,
}

/// Parses the model's JSON and checks it against the taxonomy, so an invented label or an
/// impossible confidence becomes an error, never a result. Shared by every wire protocol.
pub fn validate_answer(text: &str, taxonomy: &Taxonomy) -> Result<Prediction, UpstreamError> {
    let answer: Answer =
        serde_json::from_str(text).map_err(|e| UpstreamError::InvalidOutput(e.to_string()))?;
    checked_prediction(&answer.topic, answer.confidence, taxonomy)
}

fn checked_prediction(
    topic: &str,
    confidence: f64,
    taxonomy: &Taxonomy,
) -> Result<Prediction, UpstreamError> {
    let topic = taxonomy
        .label(topic)
        .ok_or_else(|| UpstreamError::OffTaxonomy(truncate(topic, 100)))?;
    if !(0.0..=1.0).contains(&confidence) {
        return Err(UpstreamError::ConfidenceOutOfRange(confidence));
    }
    Ok(Prediction {
        topic: topic.clone(),
        confidence,
    })
}

/// A packed answer: `{"items": [{"id", "topic", "confidence"}, ...]}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackAnswer {
    items: Vec<PackItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackItem {
    id: u64,
    topic: String,
    confidence: f64,
}

/// Checks a packed answer entry by entry: an id outside `0..n` is ignored, an id answered twice
/// counts for neither, and an invalid entry leaves its slot empty. Only text that is not the
/// packed JSON at all fails the whole pack.
pub fn validate_pack(
    text: &str,
    taxonomy: &Taxonomy,
    n: usize,
) -> Result<Vec<Option<Prediction>>, UpstreamError> {
    let answer: PackAnswer =
        serde_json::from_str(text).map_err(|e| UpstreamError::InvalidOutput(e.to_string()))?;
    let mut slots: Vec<Option<Prediction>> = vec![None; n];
    let mut seen = vec![0u32; n];
    for item in answer.items {
        let Some(index) = usize::try_from(item.id).ok().filter(|i| *i < n) else {
            continue;
        };
        seen[index] += 1;
        slots[index] = checked_prediction(&item.topic, item.confidence, taxonomy).ok();
    }
    for (slot, count) in slots.iter_mut().zip(seen) {
        if count > 1 {
            *slot = None;
        }
    }
    Ok(slots)
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}
