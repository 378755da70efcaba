//! The checks every answer goes through, whatever the protocol: the model's JSON must be exactly
//! the schema's, its label one of the taxonomy's, and its confidence within 0..=1 (written by the
//! model, or read from the logprobs of the label's tokens); a packed answer is checked entry by
//! entry. An answer that fails is an error, never a guessed label.

use serde::Deserialize;

use super::decode::Output;
use super::error::UpstreamError;
use super::logprobs::{Spelled, topic_values};
use super::usage::Prediction;
use crate::taxonomy::{AnswerForm, Taxonomy};

/// The model's answer as the schema demands it: these fields, each once. `confidence` is there
/// exactly when the form asks the model to write it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    topic: String,
    confidence: Option<f64>,
}

/// Parses the model's JSON and checks it against the taxonomy, so an invented label or an
/// impossible confidence becomes an error, never a result. Shared by every wire protocol.
pub fn validate_answer(
    output: &Output,
    taxonomy: &Taxonomy,
    form: AnswerForm,
) -> Result<Prediction, UpstreamError> {
    // Checked first: without logprobs the answer cannot be read in this form, whatever it says.
    let read = match form {
        AnswerForm::LabelAndConfidence => None,
        AnswerForm::LabelOnly => Some(read_confidence(output, taxonomy)?),
    };
    let answer: Answer = serde_json::from_str(&output.text)
        .map_err(|e| UpstreamError::InvalidOutput(e.to_string()))?;
    let confidence = match read {
        None => written(answer.confidence)?,
        Some(read) => {
            label_only(answer.confidence)?;
            let topic = known_label(&answer.topic, taxonomy)?;
            let at = topic_values(&output.text).first().copied().ok_or(
                UpstreamError::LogprobsUnreadable("no topic value in the answer"),
            )?;
            read(at, topic)?
        }
    };
    checked_prediction(&answer.topic, confidence, taxonomy)
}

/// The written confidence, which the form requires.
fn written(confidence: Option<f64>) -> Result<f64, UpstreamError> {
    confidence.ok_or_else(|| UpstreamError::InvalidOutput("missing field `confidence`".to_owned()))
}

/// The label-only form has no written confidence: one is an answer outside the schema.
fn label_only(confidence: Option<f64>) -> Result<(), UpstreamError> {
    match confidence {
        None => Ok(()),
        Some(_) => Err(UpstreamError::InvalidOutput(
            "unknown field `confidence`, the schema asks for the topic only".to_owned(),
        )),
    }
}

fn known_label<'t>(topic: &str, taxonomy: &'t Taxonomy) -> Result<&'t str, UpstreamError> {
    taxonomy
        .label(topic)
        .map(|l| l.as_ref())
        .ok_or_else(|| UpstreamError::OffTaxonomy(truncate(topic, 100)))
}

/// A reader of the label's confidence from `output`'s logprobs, by the value's byte offset.
fn read_confidence<'o>(
    output: &'o Output,
    taxonomy: &'o Taxonomy,
) -> Result<impl Fn(usize, &str) -> Result<f64, UpstreamError> + 'o, UpstreamError> {
    let tokens = output
        .logprobs
        .as_deref()
        .ok_or(UpstreamError::NoLogprobs("none were sent"))?;
    let spelled = Spelled::parse(tokens, &output.text).ok_or(UpstreamError::LogprobsUnreadable(
        "the tokens do not spell the answer",
    ))?;
    let labels: Vec<&str> = taxonomy.labels().map(|l| l.as_ref()).collect();
    Ok(move |at: usize, topic: &str| {
        spelled
            .label_share(at, topic, &labels)
            .ok_or(UpstreamError::LogprobsUnreadable(
                "none usable at the label's position",
            ))
    })
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

/// A packed answer: `{"items": [{"id", "topic"[, "confidence"]}, ...]}`, nothing else.
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
    confidence: Option<f64>,
}

/// Checks a packed answer entry by entry: an id outside `0..n` is ignored, an id answered twice
/// counts for neither, and an invalid entry leaves its slot empty. Only text that is not the
/// packed JSON at all fails the whole pack, or, in the label-only form, an answer without the
/// logprobs its confidences are read from.
pub fn validate_pack(
    output: &Output,
    taxonomy: &Taxonomy,
    n: usize,
    form: AnswerForm,
) -> Result<Vec<Option<Prediction>>, UpstreamError> {
    let read = match form {
        AnswerForm::LabelAndConfidence => None,
        AnswerForm::LabelOnly => Some(read_confidence(output, taxonomy)?),
    };
    let answer: PackAnswer = serde_json::from_str(&output.text)
        .map_err(|e| UpstreamError::InvalidOutput(e.to_string()))?;
    let values = topic_values(&output.text);
    if read.is_some() && values.len() != answer.items.len() {
        return Err(UpstreamError::LogprobsUnreadable(
            "the topics could not be located",
        ));
    }
    let mut slots: Vec<Option<Prediction>> = vec![None; n];
    let mut seen = vec![0u32; n];
    for (position, item) in answer.items.into_iter().enumerate() {
        let Some(index) = usize::try_from(item.id).ok().filter(|i| *i < n) else {
            continue;
        };
        seen[index] += 1;
        let confidence = match &read {
            None => written(item.confidence),
            Some(read) => label_only(item.confidence)
                .and_then(|()| known_label(&item.topic, taxonomy))
                .and_then(|topic| read(values[position], topic)),
        };
        slots[index] = confidence
            .and_then(|c| checked_prediction(&item.topic, c, taxonomy))
            .ok();
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
