//! OpenAI's Responses API on the wire: the request body, and the walk over `output[]` that finds
//! the answer. `output_text` is a convenience of the official SDKs, not a wire field, so the JSON
//! answer is read from the message item's `output_text` content part.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::decode::{Output, decode_with, is_nonempty_array};
use super::error::UpstreamError;
use super::usage::Usage;

/// What `include` asks for to get each output token's logprob.
pub(super) const INCLUDE_LOGPROBS: [&str; 1] = ["message.output_text.logprobs"];

#[derive(Serialize)]
pub(super) struct Request<'a> {
    pub model: &'a str,
    pub instructions: &'a str,
    pub input: [InputMessage<'a>; 1],
    pub text: &'a RawValue,
    /// The API stores responses by default; we never read them back.
    pub store: bool,
    /// Routes calls that share the prompt's fixed prefix to the same cache: the taxonomy's
    /// version and the kind of prompt (one title, or a pack).
    pub prompt_cache_key: &'a str,
    pub max_output_tokens: u32,
    /// The effort a reasoning model thinks at; absent for a model that does not reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<Reasoning>,
    /// With `top_logprobs`: the logprob of each output token and its likeliest alternatives,
    /// where the label's confidence is read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub include: Option<[&'static str; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<u8>,
}

#[derive(Serialize)]
pub(super) struct Reasoning {
    pub effort: &'static str,
}

#[derive(Serialize)]
pub(super) struct InputMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

#[derive(Deserialize)]
struct Response {
    status: Option<String>,
    incomplete_details: Option<IncompleteDetails>,
    #[serde(default)]
    output: Vec<OutputItem>,
    usage: Option<ResponseUsage>,
}

#[derive(Deserialize)]
struct IncompleteDetails {
    reason: Option<String>,
}

/// An item of `output[]`: a `message` is ours to read; reasoning items, tool calls and whatever
/// the API adds later are not. Plain structs with the `type` as a field rather than tagged
/// enums: serde buffers a tagged enum's fields, and the raw logprobs cannot be read from a
/// buffer.
#[derive(Deserialize)]
struct OutputItem {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Option<Vec<ContentPart>>,
}

/// A part of a message: `output_text` (with its logprobs when asked) or a `refusal`.
#[derive(Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    logprobs: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ResponseUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<InputTokensDetails>,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: Option<OutputTokensDetails>,
}

#[derive(Deserialize)]
struct OutputTokensDetails {
    /// The part of `output_tokens` the model spent thinking (billed as output).
    #[serde(default)]
    reasoning_tokens: u64,
}

#[derive(Deserialize)]
struct InputTokensDetails {
    /// Prompt tokens served from the provider's cache (billed at the cached price).
    #[serde(default)]
    cached_tokens: u64,
}

/// The model's text from a completed Responses API body, and the tokens either way.
pub(super) fn decode_text(body: &[u8]) -> (Result<Output, UpstreamError>, Usage) {
    decode_with(
        body,
        |r: &Response| {
            r.usage.as_ref().map_or_else(Usage::default, |u| {
                let cached = u
                    .input_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.cached_tokens);
                let reasoning = u
                    .output_tokens_details
                    .as_ref()
                    .map_or(0, |d| d.reasoning_tokens);
                Usage::billed(u.input_tokens, cached, u.output_tokens).with_reasoning(reasoning)
            })
        },
        completed_text,
    )
}

fn completed_text(response: Response) -> Result<Output, UpstreamError> {
    let status = response.status.unwrap_or_default();
    if status != "completed" {
        return Err(UpstreamError::NotCompleted {
            status,
            reason: response.incomplete_details.and_then(|d| d.reason),
        });
    }
    message_text(response.output)
}

/// The text of the first message item's `output_text` part, or the refusal it carries instead.
fn message_text(output: Vec<OutputItem>) -> Result<Output, UpstreamError> {
    let messages = output.into_iter().filter(|item| item.kind == "message");
    for part in messages.flat_map(|m| m.content.unwrap_or_default()) {
        match (part.kind.as_str(), part.text, part.refusal) {
            ("output_text", Some(text), _) => {
                // An empty list is what a provider sends when it was not asked.
                let logprobs = part.logprobs.filter(|l| is_nonempty_array(l));
                return Ok(Output { text, logprobs });
            }
            ("refusal", _, Some(refusal)) => return Err(UpstreamError::Refusal(refusal)),
            _ => {}
        }
    }
    Err(UpstreamError::MalformedResponse(
        "no message item with output_text in `output`".to_owned(),
    ))
}
