//! How the simulated model writes an answer: token by token, with each token's logprob and its
//! likeliest alternatives when the request asks for them. JSON punctuation comes as sure tokens;
//! each label is one token whose probability is the keyword classifier's confidence, the rest
//! spread over the other labels (most on a few, as a model's would be), so a client that
//! renormalises over the labels reads the classifier's confidence back.

use serde_json::{Value, json};

use super::keywords;
use super::protocol::{PackShape, SimRequest};

/// The answer's text and, when asked, its tokens' logprobs in the shape both protocols use.
pub fn write_answer(request: &SimRequest) -> (String, Option<Value>) {
    let mut writer = Writer {
        labels: &request.labels,
        top: request.logprobs,
        text: String::new(),
        tokens: Vec::new(),
    };
    let close = if request.written_confidence {
        Close::WithConfidence
    } else {
        Close::Object
    };
    match &request.pack {
        Some(pack) => {
            let (open, end, close) = match pack.shape {
                PackShape::Items => ("{\"items\":[", "]}", close),
                PackShape::Keyed => ("{", "}", Close::String),
            };
            writer.sure(open);
            for (position, (id, title)) in pack.items.iter().enumerate() {
                if position > 0 {
                    writer.sure(",");
                }
                let key = match pack.shape {
                    PackShape::Items => format!("{{\"id\":{id},\"topic\":\""),
                    PackShape::Keyed => format!("{}:\"", json!(id)),
                };
                writer.sure(&key);
                writer.entry(title, close);
            }
            writer.sure(end);
        }
        None => {
            writer.sure("{\"topic\":\"");
            writer.entry(&request.title, close);
        }
    }
    let logprobs = request.logprobs.map(|_| Value::Array(writer.tokens));
    (writer.text, logprobs)
}

/// `text` as one token the model was sure of, with its logprob when asked: what a faulty answer
/// (the garbage fault) carries, as a real model's would.
pub fn write_text(text: &str, top: Option<u8>) -> (String, Option<Value>) {
    let mut writer = Writer {
        labels: &[],
        top,
        text: String::new(),
        tokens: Vec::new(),
    };
    writer.sure(text);
    (writer.text, top.map(|_| Value::Array(writer.tokens)))
}

/// What follows a label: the end of its string, of its object, or a written confidence and the
/// end of its object.
#[derive(Clone, Copy)]
enum Close {
    String,
    Object,
    WithConfidence,
}

struct Writer<'a> {
    labels: &'a [String],
    /// Alternatives per token, when logprobs were asked for.
    top: Option<u8>,
    text: String,
    tokens: Vec<Value>,
}

impl Writer<'_> {
    /// A token the model was sure of.
    fn sure(&mut self, token: &str) {
        self.push(token, 0.0, vec![(token.to_owned(), 0.0)]);
    }

    /// The label for `title`, then what closes it.
    fn entry(&mut self, title: &str, close: Close) {
        let (topic, confidence) = keywords::classify(title, self.labels);
        let spread = spread(
            self.labels,
            &topic,
            confidence,
            keywords::fnv1a(title.as_bytes()),
        );
        self.push(&topic, confidence.ln(), spread);
        match close {
            Close::WithConfidence => self.sure(&format!("\",\"confidence\":{confidence}}}")),
            Close::Object => self.sure("\"}"),
            Close::String => self.sure("\""),
        }
    }

    fn push(&mut self, token: &str, logprob: f64, mut alternatives: Vec<(String, f64)>) {
        self.text.push_str(token);
        let Some(top) = self.top else { return };
        alternatives.sort_by(|a, b| b.1.total_cmp(&a.1));
        alternatives.truncate(usize::from(top));
        let entry = |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
        let mut value = entry(token, logprob);
        value["top_logprobs"] = alternatives.iter().map(|(t, lp)| entry(t, *lp)).collect();
        self.tokens.push(value);
    }
}

/// A label as it is written inside a JSON string.
fn in_json(label: &str) -> String {
    let quoted = serde_json::to_string(label).expect("a string always serialises");
    quoted[1..quoted.len() - 1].to_owned()
}

/// Every label with its logprob: `chosen` at `confidence`, the rest of the mass over the others,
/// halving from one picked by `seed` on.
fn spread(labels: &[String], chosen: &str, confidence: f64, seed: u64) -> Vec<(String, f64)> {
    let others: Vec<&String> = labels.iter().filter(|l| *l != chosen).collect();
    let mut spread = vec![(in_json(chosen), confidence.ln())];
    if others.is_empty() {
        return spread;
    }
    let first = (seed % others.len() as u64) as usize;
    let weights: Vec<f64> = (0..others.len()).map(|r| 0.5f64.powi(r as i32)).collect();
    let total: f64 = weights.iter().sum();
    for (rank, weight) in weights.iter().enumerate() {
        let label = others[(first + rank) % others.len()];
        let p = (1.0 - confidence) * weight / total;
        spread.push((in_json(label), p.ln()));
    }
    spread
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(logprobs: Option<u8>, written_confidence: bool) -> SimRequest {
        SimRequest {
            model: "gpt-4.1-mini".into(),
            title: "Critical OpenSSH vulnerability allows remote code execution".into(),
            input_tokens: 0,
            prefix_tokens: 0,
            prefix_digest: 0,
            rate_limit_tokens: 0,
            labels: ["security_privacy", "other", "ai_ml_agents"]
                .map(String::from)
                .to_vec(),
            pack: None,
            service_tier: None,
            written_confidence,
            logprobs,
            reasoning: super::super::protocol::Reasoning {
                family: crate::models::Family::Classic,
                effort: None,
                burns_cap: false,
            },
            max_output: None,
        }
    }

    #[test]
    fn the_tokens_spell_the_text_and_the_label_carries_the_confidence() {
        let (text, logprobs) = write_answer(&request(Some(20), false));
        assert_eq!(text, "{\"topic\":\"security_privacy\"}");
        let tokens = logprobs.unwrap();
        let spelled: String = tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        assert_eq!(spelled, text);
        let label = &tokens[1];
        let (_, confidence) =
            keywords::classify(&request(None, false).title, &request(None, false).labels);
        assert!((label["logprob"].as_f64().unwrap().exp() - confidence).abs() < 1e-12);
        let mass: f64 = label["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!((mass - 1.0).abs() < 1e-9, "every label listed: {mass}");
    }

    #[test]
    fn a_written_confidence_and_no_logprobs_unless_asked() {
        let (text, logprobs) = write_answer(&request(None, true));
        assert!(logprobs.is_none());
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["topic"], "security_privacy");
        assert!(answer["confidence"].as_f64().is_some());
        let (_, few) = write_answer(&request(Some(2), false));
        assert_eq!(few.unwrap()[1]["top_logprobs"].as_array().unwrap().len(), 2);
    }
}
