//! The checks every answer goes through, whatever the protocol: the model's JSON must be exactly
//! the schema's, its label one of the taxonomy's, and its confidence within 0..=1 (written by the
//! model, or read from the logprobs of the label's tokens); a packed answer is checked entry by
//! entry. An answer that fails is an error, never a guessed label.

use serde::Deserialize;

use super::decode::Output;
use super::error::UpstreamError;
use super::logprobs::{Spelled, topic_values};
use super::usage::{ConfidenceSource, Prediction};
use crate::taxonomy::{AnswerForm, PackKeys, Taxonomy};

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
    checked_prediction(
        &answer.topic,
        (confidence, ConfidenceSource::of(form)),
        taxonomy,
    )
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
    (confidence, source): (f64, ConfidenceSource),
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
        source,
    })
}

/// A packed answer with written confidences: `{"items": [{"id", "topic", "confidence"}, ...]}`,
/// nothing else.
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

/// Checks a packed answer entry by entry: an id outside the pack is ignored, an id answered
/// twice counts for neither, and an invalid entry leaves its slot empty. Only text that is not
/// the packed JSON at all fails the whole pack, or, in the label-only form, an answer without the
/// logprobs its confidences are read from.
pub fn validate_pack(
    output: &Output,
    taxonomy: &Taxonomy,
    n: usize,
    form: AnswerForm,
) -> Result<Vec<Option<Prediction>>, UpstreamError> {
    let mut slots = Slots::new(n);
    match form {
        AnswerForm::LabelAndConfidence => {
            let answer: PackAnswer = serde_json::from_str(&output.text)
                .map_err(|e| UpstreamError::InvalidOutput(e.to_string()))?;
            for item in answer.items {
                let index = usize::try_from(item.id).ok().filter(|i| *i < n);
                slots.fill(index, || {
                    let confidence = written(item.confidence)?;
                    checked_prediction(
                        &item.topic,
                        (confidence, ConfidenceSource::Written),
                        taxonomy,
                    )
                });
            }
        }
        AnswerForm::LabelOnly => {
            let read = read_confidence(output, taxonomy)?;
            let entries = keyed_strings(&output.text).ok_or_else(|| {
                UpstreamError::InvalidOutput("not an object from ids to topics".to_owned())
            })?;
            let keys = PackKeys::new(n);
            for entry in entries {
                slots.fill(keys.index(&entry.key), || {
                    let topic = known_label(&entry.value, taxonomy)?;
                    let confidence = read(entry.value_at, topic)?;
                    checked_prediction(topic, (confidence, ConfidenceSource::Logprobs), taxonomy)
                });
            }
        }
    }
    Ok(slots.into_predictions())
}

/// A pack's answers by item, with how often each was answered: an item answered twice is
/// answered for neither.
struct Slots {
    predictions: Vec<Option<Prediction>>,
    answered: Vec<u32>,
}

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            predictions: vec![None; n],
            answered: vec![0; n],
        }
    }

    /// Records the answer for item `index` (ignored when the id named no item).
    fn fill(
        &mut self,
        index: Option<usize>,
        answer: impl FnOnce() -> Result<Prediction, UpstreamError>,
    ) {
        if let Some(index) = index {
            self.answered[index] += 1;
            self.predictions[index] = answer().ok();
        }
    }

    fn into_predictions(mut self) -> Vec<Option<Prediction>> {
        for (slot, count) in self.predictions.iter_mut().zip(self.answered) {
            if count > 1 {
                *slot = None;
            }
        }
        self.predictions
    }
}

/// One member of a flat JSON object of strings, with the byte offset where its value's text
/// starts (the logprobs of the label are read from there).
struct KeyedString {
    key: String,
    value: String,
    value_at: usize,
}

/// The members of `text` when it is a JSON object whose values are all strings, in the order
/// written and with duplicates kept (a map would hide an id answered twice). `None` for anything
/// else.
fn keyed_strings(text: &str) -> Option<Vec<KeyedString>> {
    let bytes = text.as_bytes();
    let skip = |mut at: usize| {
        while bytes
            .get(at)
            .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        {
            at += 1;
        }
        at
    };
    let mut at = skip(0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    at = skip(at + 1);
    if bytes.get(at) == Some(&b'}') {
        return (skip(at + 1) == bytes.len()).then_some(members);
    }
    loop {
        let (key, after) = json_string(text, at)?;
        at = skip(after);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip(at + 1);
        let (value, after) = json_string(text, at)?;
        members.push(KeyedString {
            key,
            value,
            value_at: at + 1,
        });
        at = skip(after);
        match bytes.get(at) {
            Some(b',') => at = skip(at + 1),
            Some(b'}') => return (skip(at + 1) == bytes.len()).then_some(members),
            _ => return None,
        }
    }
}

/// The JSON string starting at byte `at` of `text`, unescaped, and the offset just past it.
fn json_string(text: &str, at: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let mut end = at + 1;
    loop {
        match bytes.get(end)? {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
    let value = serde_json::from_str(text.get(at..=end)?).ok()?;
    Some((value, end + 1))
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Option<Vec<(String, String, usize)>> {
        keyed_strings(text).map(|m| {
            m.into_iter()
                .map(|m| (m.key, m.value, m.value_at))
                .collect()
        })
    }

    #[test]
    fn keyed_strings_reads_escapes_and_json_whitespace_and_keeps_duplicates() {
        let text = "{ \"00\" :\t\"a\\\"b\\\\c\" ,\r\n\"0\\u0031\":\"x\",\"00\":\"y\" }";
        let read = members(text).unwrap();
        assert_eq!(read[0].0, "00");
        assert_eq!(read[0].1, "a\"b\\c");
        assert_eq!(
            &text[read[0].2..read[0].2 + 2],
            "a\\",
            "the value's text starts there"
        );
        assert_eq!((read[1].0.as_str(), read[1].1.as_str()), ("01", "x"));
        assert_eq!(read[2].0, "00", "a duplicate is kept, not merged");
        assert_eq!(members("{}"), Some(vec![]));
    }

    #[test]
    fn keyed_strings_refuses_anything_but_an_object_of_strings() {
        for text in [
            "",
            "[]",
            "{\"0\":1}",
            "{\"0\":\"a\",}",
            "{\"0\":\"a\"} {}",
            "{\"0\" \"a\"}",
            "{\"0\":\"a}",
            "{\"0\":\"a\"\u{c}}",
            "{0:\"a\"}",
        ] {
            assert!(members(text).is_none(), "{text:?}");
        }
    }
}
