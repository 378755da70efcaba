//! The Chat Completions API on the wire, for OpenAI-compatible servers (vLLM, llama.cpp server,
//! Ollama, Azure OpenAI): a system and a user message, `response_format` json_schema (strict),
//! and `choices[0].message` read back. The templates and the answer checks are shared with the
//! Responses API (`templates.rs`, `answer.rs`); only the envelope differs.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::decode::{Output, decode_with};
use super::error::UpstreamError;
use super::usage::Usage;

#[derive(Serialize)]
pub(super) struct Request<'a> {
    pub model: &'a str,
    pub messages: [Message<'a>; 2],
    pub response_format: &'a RawValue,
    /// `max_tokens` for compatible servers (every one knows it); `max_completion_tokens` for
    /// OpenAI, whose reasoning models refuse `max_tokens`; neither at effort `none` there
    /// (`reasoning::Thinking::chat_cap`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<&'static str>,
    /// With `top_logprobs`: each output token's logprob and its likeliest alternatives, where
    /// the label's confidence is read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u8>,
}

#[derive(Serialize)]
pub(super) struct Message<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// `response_format` for a strict json_schema named `name`.
pub(super) fn response_format(name: &str, schema: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "json_schema",
        "json_schema": { "name": name, "strict": true, "schema": schema }
    })
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ChoiceMessage>,
    finish_reason: Option<String>,
    logprobs: Option<ChoiceLogprobs>,
}

#[derive(Deserialize)]
struct ChoiceLogprobs {
    content: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptTokensDetails>,
    completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Deserialize)]
struct CompletionTokensDetails {
    /// The part of `completion_tokens` the model spent thinking (billed as output).
    #[serde(default)]
    reasoning_tokens: u64,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// The model's text from `choices[0]`, and the tokens either way. A refusal, or a finish reason
/// of `length` (cut off) or `content_filter`, is an error, never a partial answer.
pub(super) fn decode_text(body: &[u8]) -> (Result<Output, UpstreamError>, Usage) {
    decode_with(
        body,
        |r: &Response| {
            r.usage.as_ref().map_or_else(Usage::default, |u| {
                let cached = u
                    .prompt_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.cached_tokens);
                let reasoning = u
                    .completion_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.reasoning_tokens);
                Usage::billed(u.prompt_tokens, cached, u.completion_tokens)
                    .with_reasoning(reasoning)
            })
        },
        |r| choice_text(r.choices),
    )
}

fn choice_text(choices: Vec<Choice>) -> Result<Output, UpstreamError> {
    let choice = choices
        .into_iter()
        .next()
        .ok_or_else(|| UpstreamError::MalformedResponse("no `choices`".to_owned()))?;
    let message = choice
        .message
        .ok_or_else(|| UpstreamError::MalformedResponse("no `choices[0].message`".to_owned()))?;
    if let Some(refusal) = message.refusal.filter(|r| !r.is_empty()) {
        return Err(UpstreamError::Refusal(refusal));
    }
    if let Some(reason @ ("length" | "content_filter")) = choice.finish_reason.as_deref() {
        return Err(UpstreamError::NotCompleted {
            status: "finish_reason".to_owned(),
            reason: Some(reason.to_owned()),
        });
    }
    let text = message.content.ok_or_else(|| {
        UpstreamError::MalformedResponse("no `choices[0].message.content`".to_owned())
    })?;
    let logprobs = choice
        .logprobs
        .and_then(|l| l.content)
        .filter(|l| super::decode::is_nonempty_array(l));
    Ok(Output { text, logprobs })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn body(message: serde_json::Value, finish_reason: &str) -> Vec<u8> {
        json!({
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 90, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 10}}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn reads_the_first_choice_and_its_usage() {
        let (text, usage) = decode_text(&body(
            json!({"role": "assistant", "content": "{}", "refusal": null}),
            "stop",
        ));
        assert_eq!(text.unwrap().text, "{}");
        assert_eq!(
            (
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens
            ),
            (90, 10, 12)
        );
    }

    #[test]
    fn refusals_truncation_and_filtering_are_errors() {
        let refused = decode_text(&body(json!({"content": null, "refusal": "no"}), "stop")).0;
        assert_eq!(refused.unwrap_err().code(), "model_refused");
        let cut = decode_text(&body(json!({"content": "{\"topic\":\"oth"}), "length"))
            .0
            .unwrap_err();
        assert_eq!(cut.code(), "response_incomplete");
        assert!(cut.to_string().contains("length"));
        let filtered = decode_text(&body(json!({"content": ""}), "content_filter")).0;
        assert_eq!(filtered.unwrap_err().code(), "response_incomplete");
        assert_eq!(
            decode_text(b"{\"choices\": []}").0.unwrap_err().code(),
            "upstream_malformed"
        );
    }
}
