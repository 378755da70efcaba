//! What the simulator accepts and answers, in OpenAI's shapes. Validation is strict on purpose:
//! a request the real API would reject must be rejected here too (400 with OpenAI's error body),
//! so the client cannot drift from the real protocol while every test stays green.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{LazyLock, Mutex};

use axum::Json;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::models::{Effort, Family, family, offers_flex};
use crate::tokens;

/// An error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent with the error: `retry-after-ms`, `x-ratelimit-*`.
    /// Boxed: a `HeaderMap` is large and errors are the rare path.
    pub headers: Box<HeaderMap>,
}

impl OpenAiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code,
            headers: Box::default(),
        }
    }

    pub fn invalid(message: impl Into<String>, param: &str, code: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_owned()).filter(|p| !p.is_empty()),
            code,
            headers: Box::default(),
        }
    }

    fn missing(param: &str) -> Self {
        Self::invalid(
            format!("Missing required parameter: '{param}'."),
            param,
            Some("missing_required_parameter"),
        )
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, *self.headers.clone(), Json(self.body())).into_response()
    }
}

/// What the simulator needs from a valid request.
#[derive(Debug)]
pub struct SimRequest {
    pub model: String,
    /// The user message: one title, or for a packed request its items (`pack`).
    pub title: String,
    /// Input tokens as OpenAI bills them (o200k_base): every message with its framing, and the
    /// answer's schema, which structured outputs put in front of the model too.
    pub input_tokens: u64,
    /// What comes before the title (other messages, the schema): its tokens and a digest of it,
    /// for the prompt cache (`super::cache`).
    pub prefix_tokens: u64,
    pub prefix_digest: u64,
    /// What the rate limiter charges it: like OpenAI's, an estimate from the characters sent
    /// (four a token) plus the most the answer may use, before anything is tokenized.
    pub rate_limit_tokens: u64,
    /// The schema's `topic` enum: the labels the answer must come from.
    pub labels: Vec<String>,
    /// For a packed request, the titles by id, and how the answer names each.
    pub pack: Option<Pack>,
    /// The `service_tier` asked for, checked: `auto`, `default`, `flex` or `priority`.
    pub service_tier: Option<String>,
    /// Whether the schema asks the model to write a `confidence` beside the topic.
    pub written_confidence: bool,
    /// Logprobs asked for: `Some(n)` returns each token's logprob with `n` alternatives.
    pub logprobs: Option<u8>,
    /// How the model thinks: its family, and the effort it reasons at (sent, or its default).
    pub reasoning: Reasoning,
    /// The answer's cap, reasoning included (`max_output_tokens`, `max_completion_tokens` or
    /// `max_tokens`); `None` when the request sets none.
    pub max_output: Option<u64>,
}

/// How the model of a request thinks.
#[derive(Debug, Clone, Copy)]
pub struct Reasoning {
    pub family: Family,
    /// The effort it reasons at: the one sent, else the family's default; `None` for a model
    /// that does not reason.
    pub effort: Option<Effort>,
    /// Chat at effort `none` under `max_completion_tokens`: gpt-5.4 is reported to ignore the
    /// effort then and think until the cap; the simulator plays that.
    pub burns_cap: bool,
}

/// The effort a request sends at `param` (`reasoning.effort`, `reasoning_effort`), checked as
/// OpenAI checks it for `model`; and the effort the model then reasons at.
fn reasoning(
    sent: Option<&Value>,
    param: &str,
    model: &str,
) -> Result<(Option<Effort>, Reasoning), OpenAiError> {
    let family = family(model);
    let sent = match sent {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(Effort::parse(name).ok_or_else(|| {
            let all: Vec<String> = Effort::ALL.iter().map(|(n, _)| format!("'{n}'")).collect();
            OpenAiError::invalid(
                format!(
                    "Invalid value: '{name}'. Supported values are: {}.",
                    all.join(", ")
                ),
                param,
                Some("invalid_value"),
            )
        })?),
        Some(_) => {
            return Err(OpenAiError::invalid(
                format!("Invalid type for '{param}': expected a string."),
                param,
                Some("invalid_type"),
            ));
        }
    };
    // A model the table does not know takes any effort, as a compatible server would.
    if let Some(effort) = sent.filter(|_| family != Family::Unknown) {
        let efforts = family.efforts();
        if efforts.is_empty() {
            return Err(unsupported_parameter(param));
        }
        if !efforts.contains(&effort) {
            let listed: Vec<String> = efforts.iter().map(|e| format!("'{e}'")).collect();
            let listed = match listed.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) if rest.len() == 1 => format!("{} and {last}", rest[0]),
                Some((last, rest)) => format!("{}, and {last}", rest.join(", ")),
                None => String::new(),
            };
            return Err(OpenAiError::invalid(
                format!(
                    "Unsupported value: '{effort}' is not supported with the '{model}' model. Supported values are: {listed}."
                ),
                param,
                Some("unsupported_value"),
            ));
        }
    }
    let effort = if family.reasons() {
        sent.or(family.default_effort())
    } else {
        None
    };
    Ok((
        sent,
        Reasoning {
            family,
            effort,
            burns_cap: false,
        },
    ))
}

/// The 400 for a parameter the model does not take (`top_logprobs`, `temperature`, an effort
/// to a model that does not reason, `max_tokens` to one that does).
fn unsupported_parameter(param: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!("Unsupported parameter: '{param}' is not supported with this model."),
        param,
        Some("unsupported_parameter"),
    )
}

/// `temperature` and `top_p` where the model takes them: where it gives logprobs (the
/// gpt-5.1+ family only at effort `none`, the older reasoning models never).
fn check_sampling(
    obj: &Map<String, Value>,
    family: Family,
    sent: Option<Effort>,
) -> Result<(), OpenAiError> {
    for param in ["temperature", "top_p"] {
        let set = obj.get(param).is_some_and(|v| !v.is_null());
        if set && !family.logprobs_with(sent) {
            return Err(unsupported_parameter(param));
        }
    }
    Ok(())
}

/// The titles of a packed request and the shape its schema gives the answer.
#[derive(Debug, PartialEq)]
pub struct Pack {
    pub shape: PackShape,
    /// Each title with its id as the request wrote it (`3`, or the key `03`).
    pub items: Vec<(String, String)>,
}

/// How a packed answer names its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackShape {
    /// `{"items": [{"id": 3, "topic": ...}, ...]}`, for an array of `{"id", "title"}` items.
    Items,
    /// `{"03": topic, ...}`, one required property per id, for an object from ids to titles.
    Keyed,
}

/// `top_logprobs` as OpenAI checks it: an integer from 0 to 20.
fn top_logprobs(obj: &Map<String, Value>) -> Result<Option<u8>, OpenAiError> {
    match obj.get("top_logprobs") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= 20)
            .map(|n| Some(n as u8))
            .ok_or_else(|| {
                OpenAiError::invalid(
                    "Invalid 'top_logprobs': expected an integer between 0 and 20.",
                    "top_logprobs",
                    Some("invalid_value"),
                )
            }),
    }
}

/// Responses: logprobs come with `include: ["message.output_text.logprobs"]`, `top_logprobs`
/// alternatives each; a model gives them at the efforts `Family::logprobs_with` says.
fn responses_logprobs(
    obj: &Map<String, Value>,
    (family, sent): (Family, Option<Effort>),
) -> Result<Option<u8>, OpenAiError> {
    let top = top_logprobs(obj)?;
    let include = match obj.get("include") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values.iter().map(Value::as_str).collect(),
        Some(_) => vec![None],
    };
    if let Some(bad) = include
        .iter()
        .find(|v| v.is_none_or(|v| !RESPONSES_INCLUDABLE.contains(&v)))
    {
        return Err(OpenAiError::invalid(
            format!(
                "Invalid value: '{}'. Supported values are: {}.",
                bad.unwrap_or("(not a string)"),
                RESPONSES_INCLUDABLE.join(", ")
            ),
            "include",
            Some("invalid_value"),
        ));
    }
    let included = include.contains(&Some("message.output_text.logprobs"));
    if (included || top.is_some()) && !family.logprobs_with(sent) {
        return Err(unsupported_parameter("top_logprobs"));
    }
    Ok(included.then_some(top.unwrap_or(0)))
}

/// What a Responses request may `include`.
const RESPONSES_INCLUDABLE: [&str; 8] = [
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
    "message.output_text.logprobs",
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "web_search_call.results",
];

/// Chat Completions: `logprobs: true`, and `top_logprobs` only with it.
fn chat_logprobs(
    obj: &Map<String, Value>,
    (family, sent): (Family, Option<Effort>),
) -> Result<Option<u8>, OpenAiError> {
    let top = top_logprobs(obj)?;
    let asked = match obj.get("logprobs") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(asked)) => *asked,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "Invalid type for 'logprobs': expected a boolean.",
                "logprobs",
                Some("invalid_type"),
            ));
        }
    };
    if (asked || top.is_some()) && !family.logprobs_with(sent) {
        return Err(unsupported_parameter("logprobs"));
    }
    if top.is_some() && !asked {
        return Err(OpenAiError::invalid(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            "top_logprobs",
            Some("invalid_value"),
        ));
    }
    Ok(asked.then_some(top.unwrap_or(0)))
}

/// The tier asked for, if any and valid: flex only for the models OpenAI offers it for.
fn service_tier(obj: &Map<String, Value>, model: &str) -> Result<Option<String>, OpenAiError> {
    match obj.get("service_tier") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(t)) if t == "flex" && !offers_flex(model) => Err(OpenAiError::invalid(
            format!(
                "Flex is not available for this model: '{model}'. Use the default service tier, or a model that supports flex processing."
            ),
            "service_tier",
            Some("invalid_value"),
        )),
        Some(Value::String(t)) if ["auto", "default", "flex", "priority"].contains(&t.as_str()) => {
            Ok(Some(t.clone()))
        }
        Some(_) => Err(OpenAiError::invalid(
            "Invalid value for 'service_tier': expected one of 'auto', 'default', 'flex', 'priority'.",
            "service_tier",
            Some("invalid_value"),
        )),
    }
}

impl SimRequest {
    /// The tier that serves it, as the response's `service_tier` says.
    pub fn served_tier(&self) -> &'static str {
        match self.service_tier.as_deref() {
            Some("flex") => "flex",
            Some("priority") => "priority",
            _ => "default",
        }
    }
}

/// The titles of a packed request's user message: `[{"id", "title"}, ...]`, or for a keyed
/// answer one per key the schema requires (strict mode writes exactly those, in order), looked
/// up in the message's `{id: title}`. Anything else is one title with id 0 (or, keyed, every
/// required key with an empty title), as a model would read it.
fn pack_items(shape: PackShape, keys: &[String], content: &str) -> Pack {
    #[derive(serde::Deserialize)]
    struct Item {
        id: u64,
        title: String,
    }
    let items = match shape {
        PackShape::Items => serde_json::from_str::<Vec<Item>>(content)
            .ok()
            .map(|items| {
                items
                    .into_iter()
                    .map(|i| (i.id.to_string(), i.title))
                    .collect()
            }),
        PackShape::Keyed => {
            let titles = serde_json::from_str::<Map<String, Value>>(content).unwrap_or_default();
            let title = |key: &String| titles.get(key).and_then(Value::as_str).unwrap_or("");
            Some(
                keys.iter()
                    .map(|k| (k.clone(), title(k).to_owned()))
                    .collect(),
            )
        }
    };
    Pack {
        shape,
        items: items.unwrap_or_else(|| vec![("0".to_owned(), content.to_owned())]),
    }
}

const RESPONSES_PARAMS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "text",
    "store",
    "max_output_tokens",
    "temperature",
    "top_p",
    "metadata",
    "user",
    "previous_response_id",
    "reasoning",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "truncation",
    "include",
    "stream",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "background",
    "max_tool_calls",
    "top_logprobs",
    "conversation",
    "prompt",
];

const CHAT_PARAMS: &[&str] = &[
    "model",
    "messages",
    "response_format",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "user",
    "metadata",
    "store",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "service_tier",
    "reasoning_effort",
    "prompt_cache_key",
    "safety_identifier",
];

/// Validates a `POST /v1/responses` body.
pub fn parse_responses(body: &Value) -> Result<SimRequest, OpenAiError> {
    let obj = object_with_known_keys(body, RESPONSES_PARAMS)?;
    let model = required_string(obj, "model")?;
    reject_streaming(obj)?;
    if let Some(max) = obj.get("max_output_tokens") {
        check_min_tokens(max, "max_output_tokens", 16)?;
    }
    let instructions = optional_string(obj, "instructions")?;
    let input = obj
        .get("input")
        .ok_or_else(|| OpenAiError::missing("input"))?;
    let mut prefix = Prefix::new(&model);
    if let Some(instructions) = instructions {
        prefix.add_message(instructions);
    }
    let title = responses_input(input, &mut prefix)?;
    let format = obj
        .get("text")
        .and_then(|t| t.get("format"))
        .ok_or_else(|| OpenAiError::missing("text.format"))?;
    let shape = check_json_schema(format, "text.format")?;
    let effort = obj.get("reasoning").map(|r| match r {
        Value::Object(r) => r.get("effort").unwrap_or(&Value::Null),
        other => other,
    });
    let (sent, reasoning) = reasoning(effort, "reasoning.effort", &model)?;
    let logprobs = responses_logprobs(obj, (reasoning.family, sent))?;
    check_sampling(obj, reasoning.family, sent)?;
    let service_tier = service_tier(obj, &model)?;
    prefix.add(&format.to_string());
    Ok(SimRequest {
        model,
        pack: shape.pack.map(|pack| pack_items(pack, &shape.keys, &title)),
        input_tokens: prefix.tokens + title_tokens(&title),
        rate_limit_tokens: prefix
            .rate_limit_tokens(&title, max_output(obj, &["max_output_tokens"])),
        prefix_tokens: prefix.tokens,
        prefix_digest: prefix.digest(),
        title,
        labels: shape.labels,
        service_tier,
        written_confidence: shape.confidence,
        logprobs,
        reasoning,
        max_output: obj.get("max_output_tokens").and_then(Value::as_u64),
    })
}

/// Validates a `POST /v1/chat/completions` body.
pub fn parse_chat(body: &Value) -> Result<SimRequest, OpenAiError> {
    let obj = object_with_known_keys(body, CHAT_PARAMS)?;
    let model = required_string(obj, "model")?;
    reject_streaming(obj)?;
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(max) = obj.get(key) {
            check_min_tokens(max, key, 1)?;
        }
    }
    let messages = obj
        .get("messages")
        .ok_or_else(|| OpenAiError::missing("messages"))?
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            OpenAiError::invalid("'messages' must be a non-empty array.", "messages", None)
        })?;
    let mut prefix = Prefix::new(&model);
    let title = last_user_text(messages, "messages", &mut prefix)?;
    let format = obj
        .get("response_format")
        .ok_or_else(|| OpenAiError::missing("response_format"))?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(OpenAiError::invalid(
            "The simulator needs response_format.type 'json_schema'.",
            "response_format.type",
            None,
        ));
    }
    let schema = format
        .get("json_schema")
        .ok_or_else(|| OpenAiError::missing("response_format.json_schema"))?;
    let shape = check_json_schema(schema, "response_format.json_schema")?;
    let (sent, mut reasoning) = reasoning(obj.get("reasoning_effort"), "reasoning_effort", &model)?;
    if reasoning.family.reasons() && obj.contains_key("max_tokens") {
        let mut refused = unsupported_parameter("max_tokens");
        refused.message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".to_owned();
        return Err(refused);
    }
    reasoning.burns_cap = sent == Some(Effort::None)
        && matches!(reasoning.family, Family::Gpt5Point { .. })
        && obj.contains_key("max_completion_tokens");
    let logprobs = chat_logprobs(obj, (reasoning.family, sent))?;
    check_sampling(obj, reasoning.family, sent)?;
    prefix.add(&schema.to_string());
    let service_tier = service_tier(obj, &model)?;
    Ok(SimRequest {
        model,
        pack: shape.pack.map(|pack| pack_items(pack, &shape.keys, &title)),
        input_tokens: prefix.tokens + title_tokens(&title),
        rate_limit_tokens: prefix.rate_limit_tokens(
            &title,
            max_output(obj, &["max_completion_tokens", "max_tokens"]),
        ),
        prefix_tokens: prefix.tokens,
        prefix_digest: prefix.digest(),
        title,
        labels: shape.labels,
        service_tier,
        written_confidence: shape.confidence,
        logprobs,
        reasoning,
        max_output: ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_u64)),
    })
}

fn object_with_known_keys<'v>(
    body: &'v Value,
    known: &[&str],
) -> Result<&'v Map<String, Value>, OpenAiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| OpenAiError::invalid("The request body must be a JSON object.", "", None))?;
    if let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(OpenAiError::invalid(
            format!("Unknown parameter: '{unknown}'."),
            unknown,
            Some("unknown_parameter"),
        ));
    }
    Ok(obj)
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String, OpenAiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(OpenAiError::missing(key)),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(OpenAiError::invalid(
            format!("Invalid type for '{key}': expected a non-empty string."),
            key,
            Some("invalid_type"),
        )),
    }
}

fn optional_string<'v>(
    obj: &'v Map<String, Value>,
    key: &str,
) -> Result<Option<&'v str>, OpenAiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(OpenAiError::invalid(
            format!("Invalid type for '{key}': expected a string."),
            key,
            Some("invalid_type"),
        )),
    }
}

fn reject_streaming(obj: &Map<String, Value>) -> Result<(), OpenAiError> {
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(OpenAiError::invalid(
            "The simulator does not stream.",
            "stream",
            None,
        ));
    }
    Ok(())
}

fn check_min_tokens(value: &Value, key: &str, min: u64) -> Result<(), OpenAiError> {
    match value.as_u64() {
        Some(n) if n >= min => Ok(()),
        _ => Err(OpenAiError::invalid(
            format!("Invalid '{key}': integer below minimum value. Expected a value >= {min}."),
            key,
            Some("integer_below_min_value"),
        )),
    }
}

/// The title from `input`: a plain string, or the last user message of an item list (the others
/// go to the prefix).
fn responses_input(input: &Value, prefix: &mut Prefix) -> Result<String, OpenAiError> {
    match input {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::Array(items) if !items.is_empty() => last_user_text(items, "input", prefix),
        _ => Err(OpenAiError::invalid(
            "Invalid 'input': expected a non-empty string or array of input items.",
            "input",
            Some("invalid_type"),
        )),
    }
}

/// The text of the last user message; the others go to the prefix.
fn last_user_text(
    messages: &[Value],
    param: &str,
    prefix: &mut Prefix,
) -> Result<String, OpenAiError> {
    let mut texts = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "system" | "developer" | "assistant")) {
            return Err(OpenAiError::invalid(
                format!("Invalid value for '{param}[{i}].role'."),
                &format!("{param}[{i}].role"),
                Some("invalid_value"),
            ));
        }
        let text = message_text(m.get("content")).ok_or_else(|| {
            OpenAiError::invalid(
                format!("Invalid '{param}[{i}].content': expected a string or text parts."),
                &format!("{param}[{i}].content"),
                Some("invalid_type"),
            )
        })?;
        texts.push((role == Some("user"), text));
    }
    let last_user = texts
        .iter()
        .rposition(|(is_user, _)| *is_user)
        .ok_or_else(|| OpenAiError::invalid("No user message to answer.", param, None))?;
    for (_, (_, text)) in texts.iter().enumerate().filter(|(i, _)| *i != last_user) {
        prefix.add_message(text);
    }
    Ok(texts.swap_remove(last_user).1)
}

fn message_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Option<Vec<_>>>()
            .map(|t| t.join("")),
        _ => None,
    }
}

/// Checks a `json_schema` format the way strict mode does and returns the `topic` enum.
fn check_json_schema(format: &Value, param: &str) -> Result<AnswerShape, OpenAiError> {
    let bad = |what: &str, at: &str| schema_error(param, what, at);
    if param == "text.format" && format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err(bad("the simulator needs type 'json_schema'.", "type"));
    }
    let name = format
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name_ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(bad("'name' must match ^[a-zA-Z0-9_-]{1,64}$.", "name"));
    }
    if format.get("strict").and_then(Value::as_bool) != Some(true) {
        return Err(bad("the simulator needs 'strict': true.", "strict"));
    }
    let schema = format
        .get("schema")
        .ok_or_else(|| OpenAiError::missing(&format!("{param}.schema")))?;
    let properties = strict_object(schema, param, "schema")?;
    if !properties.contains_key("items") && !properties.contains_key("topic") {
        return keyed_pack(schema, properties, param);
    }
    // A packed answer: {"items": [{"id", "topic", "confidence"}, ...]}.
    if let Some(items) = properties.get("items") {
        let entry = items.get("items").unwrap_or(&Value::Null);
        let entry_properties = strict_object(entry, param, "schema.properties.items.items")?;
        let labels = topic_enum(
            entry_properties,
            param,
            "schema.properties.items.items.properties.topic",
        )?;
        return Ok(AnswerShape {
            labels,
            pack: Some(PackShape::Items),
            keys: Vec::new(),
            confidence: entry_properties.contains_key("confidence"),
        });
    }
    let labels = topic_enum(properties, param, "schema.properties.topic")?;
    Ok(AnswerShape {
        labels,
        pack: None,
        confidence: properties.contains_key("confidence"),
        keys: Vec::new(),
    })
}

/// A packed answer keyed by id: `{"0": topic, "1": topic, ...}`, every property a `$ref` to
/// `#/$defs/topic`, a string enum of the labels.
fn keyed_pack(
    schema: &Value,
    properties: &Map<String, Value>,
    param: &str,
) -> Result<AnswerShape, OpenAiError> {
    let reference = json!({ "$ref": "#/$defs/topic" });
    if properties.is_empty() {
        return Err(schema_error(
            param,
            "the simulator needs 'topic', 'items' or one property per id.",
            "schema.properties",
        ));
    }
    if let Some((key, _)) = properties.iter().find(|(_, p)| **p != reference) {
        return Err(schema_error(
            param,
            "each id's property must be {\"$ref\": \"#/$defs/topic\"}.",
            &format!("schema.properties.{key}"),
        ));
    }
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .ok_or_else(|| schema_error(param, "'$defs' must define 'topic'.", "schema.$defs"))?;
    let labels = topic_enum(defs, param, "schema.$defs.topic")?;
    let keys = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(AnswerShape {
        labels,
        pack: Some(PackShape::Keyed),
        confidence: false,
        keys,
    })
}

/// What the answer must look like: which labels, one answer or a pack of them, and whether the
/// model writes a confidence.
#[derive(Debug)]
struct AnswerShape {
    labels: Vec<String>,
    pack: Option<PackShape>,
    confidence: bool,
    /// A keyed pack's ids, as the schema requires them.
    keys: Vec<String>,
}

fn schema_error(param: &str, what: &str, at: &str) -> OpenAiError {
    OpenAiError::invalid(
        format!("Invalid schema: {what}"),
        &format!("{param}.{at}"),
        Some("invalid_json_schema"),
    )
}

/// An object schema as strict mode demands it (`additionalProperties: false`, every property
/// required); its properties.
fn strict_object<'v>(
    schema: &'v Value,
    param: &str,
    at: &str,
) -> Result<&'v Map<String, Value>, OpenAiError> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err(schema_error(
            param,
            "an answer must be of type 'object'.",
            &format!("{at}.type"),
        ));
    }
    if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
        return Err(schema_error(
            param,
            "'additionalProperties' is required to be supplied and to be false.",
            at,
        ));
    }
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            schema_error(
                param,
                "'properties' must be an object.",
                &format!("{at}.properties"),
            )
        })?;
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(missing) = properties.keys().find(|k| !required.contains(&k.as_str())) {
        return Err(schema_error(
            param,
            &format!(
                "'required' is required to include every key in properties; missing '{missing}'."
            ),
            &format!("{at}.required"),
        ));
    }
    Ok(properties)
}

fn topic_enum(
    properties: &Map<String, Value>,
    param: &str,
    at: &str,
) -> Result<Vec<String>, OpenAiError> {
    let labels: Vec<String> = properties
        .get("topic")
        .and_then(|t| t.get("enum"))
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() {
        return Err(schema_error(
            param,
            "the simulator needs a 'topic' property with a non-empty string enum.",
            at,
        ));
    }
    Ok(labels)
}

/// The answer's limit the request sets (the first of `keys` present), or 64 when it sets none.
fn max_output(obj: &Map<String, Value>, keys: &[&str]) -> u64 {
    keys.iter()
        .find_map(|k| obj.get(*k).and_then(Value::as_u64))
        .unwrap_or(64)
}

/// The tokens of the title's message and of the reply's opening.
fn title_tokens(title: &str) -> u64 {
    tokens::count(title) + tokens::PER_MESSAGE + tokens::REPLY_PRIMING
}

/// What comes before the title in the prompt (other messages, the answer format's schema), in
/// order: its tokens, and a digest of the model and every part, which is what a provider's
/// prompt cache matches.
struct Prefix {
    tokens: u64,
    chars: usize,
    digest: std::collections::hash_map::DefaultHasher,
}

impl Prefix {
    fn new(model: &str) -> Self {
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        model.hash(&mut digest);
        Self {
            tokens: 0,
            chars: 0,
            digest,
        }
    }

    /// The request as a rate limiter estimates it: the prefix's and the title's characters, four
    /// a token, and the most the answer may use.
    fn rate_limit_tokens(&self, title: &str, max_output: u64) -> u64 {
        ((self.chars + title.len()) as u64).div_ceil(4) + max_output
    }

    fn add_message(&mut self, text: &str) {
        self.add(text);
        self.tokens += tokens::PER_MESSAGE;
    }

    fn add(&mut self, text: &str) {
        let (n, digest) = repeated_text_tokens(text);
        self.tokens += n;
        self.chars += text.len();
        digest.hash(&mut self.digest);
    }

    fn digest(&self) -> u64 {
        self.digest.finish()
    }
}

/// The tokens of a text requests repeat (a system prompt, a schema), counted once per text, and
/// the text's digest: the simulator must not spend on counting what the service spends on
/// classifying. Keyed by the digest, so the memo holds numbers, not the texts; cleared whole
/// when it reaches 1,024 texts.
fn repeated_text_tokens(text: &str) -> (u64, u64) {
    static COUNTS: LazyLock<Mutex<HashMap<u64, u64>>> = LazyLock::new(Mutex::default);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    let digest = hasher.finish();
    if let Some(n) = COUNTS.lock().expect("never poisoned").get(&digest) {
        return (*n, digest);
    }
    let n = tokens::count(text);
    let mut counts = COUNTS.lock().expect("never poisoned");
    if counts.len() >= 1024 {
        counts.clear();
    }
    counts.insert(digest, n);
    (n, digest)
}

/// A `completed` Responses API body whose message carries `text`.
pub fn responses_body(
    id: u64,
    model: &str,
    text: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    responses_body_with(id, model, (text, None), input_tokens, output_tokens)
}

/// A `completed` Responses API body whose message carries `text` and, when asked, its tokens'
/// logprobs.
pub fn responses_body_with(
    id: u64,
    model: &str,
    (text, logprobs): (&str, Option<Value>),
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    let mut part = json!({"type": "output_text", "text": text, "annotations": []});
    if let Some(logprobs) = logprobs {
        part["logprobs"] = logprobs;
    }
    json!({
        "id": format!("resp_sim{id:016x}"),
        "object": "response",
        "created_at": unix_now(),
        "status": "completed",
        "error": null,
        "incomplete_details": null,
        "model": model,
        "output": [{
            "type": "message",
            "id": format!("msg_sim{id:016x}"),
            "status": "completed",
            "role": "assistant",
            "content": [part]
        }],
        "store": false,
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens
        }
    })
}

/// An `incomplete` Responses API body: the cap was reached while the model reasoned, so there
/// is a reasoning item and no message.
pub fn responses_incomplete_body(id: u64, model: &str, input_tokens: u64, cap: u64) -> Value {
    let mut body = responses_body(id, model, "", input_tokens, cap);
    body["status"] = json!("incomplete");
    body["incomplete_details"] = json!({"reason": "max_output_tokens"});
    body["output"] =
        json!([{"type": "reasoning", "id": format!("rs_sim{id:016x}"), "summary": []}]);
    body
}

/// Records that `reasoning` of a body's output tokens were spent thinking, where each protocol
/// says it; a Responses body gets the reasoning item it would carry, before the message.
pub fn set_reasoning_tokens(body: &mut Value, reasoning: u64) {
    if body["object"] == "response" {
        body["usage"]["output_tokens_details"] = json!({ "reasoning_tokens": reasoning });
        let output = body["output"]
            .as_array_mut()
            .expect("a response body has output");
        if output.first().is_some_and(|item| item["type"] == "message") {
            let id = body["id"]
                .as_str()
                .unwrap_or_default()
                .replace("resp_", "rs_");
            let item = json!({"type": "reasoning", "id": id, "summary": []});
            body["output"]
                .as_array_mut()
                .expect("checked")
                .insert(0, item);
        }
    } else {
        body["usage"]["completion_tokens_details"] = json!({ "reasoning_tokens": reasoning });
    }
}

/// A `completed` Responses API body whose message is a refusal.
pub fn responses_refusal_body(
    id: u64,
    model: &str,
    refusal: &str,
    input_tokens: u64,
    output_tokens: u64,
) -> Value {
    let mut body = responses_body(id, model, "", input_tokens, output_tokens);
    body["output"][0]["content"] = json!([{"type": "refusal", "refusal": refusal}]);
    body
}

/// A Chat Completions body whose message is a refusal.
pub fn chat_refusal_body(
    id: u64,
    model: &str,
    refusal: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Value {
    let mut body = chat_body(id, model, "", prompt_tokens, completion_tokens);
    body["choices"][0]["message"]["content"] = Value::Null;
    body["choices"][0]["message"]["refusal"] = json!(refusal);
    body
}

/// A Chat Completions body whose one choice carries `text`.
pub fn chat_body(
    id: u64,
    model: &str,
    text: &str,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Value {
    chat_body_with(id, model, (text, None), prompt_tokens, completion_tokens)
}

/// A Chat Completions body whose one choice carries `text` and, when asked, its tokens'
/// logprobs.
pub fn chat_body_with(
    id: u64,
    model: &str,
    (text, logprobs): (&str, Option<Value>),
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Value {
    let logprobs = logprobs.map_or(
        Value::Null,
        |content| json!({"content": content, "refusal": null}),
    );
    json!({
        "id": format!("chatcmpl-sim{id:016x}"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": logprobs,
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A bearer token must be there, as the real API demands; any non-empty token is accepted.
pub fn check_auth(headers: &HeaderMap) -> Result<(), OpenAiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.trim().is_empty());
    match token {
        Some(_) => Ok(()),
        None => Err(OpenAiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::{AnswerForm, Taxonomy};
    use crate::upstream::templates::RequestTemplate;

    fn our_request() -> Value {
        serde_json::from_slice(
            &RequestTemplate::new(
                crate::upstream::UpstreamApi::Responses,
                "gpt-4.1-mini",
                &Taxonomy::hn_topics(),
                AnswerForm::LabelOnly,
                crate::upstream::reasoning::Thinking::default_for("gpt-4.1-mini"),
            )
            .encode("A title")
            .to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn accepts_what_our_client_sends() {
        let req = parse_responses(&our_request()).unwrap();
        assert_eq!(req.title, "A title");
        assert_eq!(req.labels.len(), 10);
        assert!(req.input_tokens > 100);
    }

    #[test]
    fn rejects_what_the_real_api_rejects() {
        type Mutation = fn(&mut Value);
        let cases: [(&str, Mutation); 7] = [
            ("model", |r| {
                r.as_object_mut().unwrap().remove("model");
            }),
            ("input", |r| {
                r.as_object_mut().unwrap().remove("input");
            }),
            ("text.format", |r| {
                r.as_object_mut().unwrap().remove("text");
            }),
            ("text.format.strict", |r| {
                r["text"]["format"]["strict"] = json!(false)
            }),
            ("text.format.schema", |r| {
                r["text"]["format"]["schema"]["additionalProperties"] = json!(true)
            }),
            ("text.format.schema.required", |r| {
                r["text"]["format"]["schema"]["required"] = json!([])
            }),
            ("bogus", |r| r["bogus"] = json!(1)),
        ];
        for (param, mutate) in cases {
            let mut req = our_request();
            mutate(&mut req);
            let err = parse_responses(&req).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
        }
    }

    #[test]
    fn logprobs_are_checked_as_openai_checks_them_and_refused_by_reasoning_models() {
        let ours = parse_responses(&our_request()).unwrap();
        assert_eq!(ours.logprobs, Some(20));
        assert!(!ours.written_confidence);
        let mut too_many = our_request();
        too_many["top_logprobs"] = json!(21);
        assert_eq!(
            parse_responses(&too_many).unwrap_err().param.as_deref(),
            Some("top_logprobs")
        );
        let mut reasoning = our_request();
        reasoning["model"] = json!("gpt-5-mini");
        let refused = parse_responses(&reasoning).unwrap_err();
        assert_eq!(refused.code, Some("unsupported_parameter"));
        assert_eq!(refused.param.as_deref(), Some("top_logprobs"));
        let chat = json!({
            "model": "m",
            "messages": [{"role": "user", "content": "Rust 2.0"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": true,
                "schema": Taxonomy::hn_topics().answer_schema(AnswerForm::LabelOnly)}},
            "top_logprobs": 5,
        });
        assert_eq!(
            parse_chat(&chat).unwrap_err().param.as_deref(),
            Some("top_logprobs"),
            "top_logprobs needs logprobs: true"
        );
        let mut asked = chat.clone();
        asked["logprobs"] = json!(true);
        assert_eq!(parse_chat(&asked).unwrap().logprobs, Some(5));
    }

    #[test]
    fn reasoning_models_are_checked_as_openai_checks_them() {
        let chat = |model: &str, extra: Value| {
            let mut request = json!({
                "model": model,
                "messages": [{"role": "user", "content": "Rust 2.0"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": true,
                    "schema": Taxonomy::hn_topics().answer_schema(AnswerForm::LabelAndConfidence)}},
            });
            for (k, v) in extra.as_object().unwrap() {
                request[k] = v.clone();
            }
            parse_chat(&request)
        };
        let refused = |r: Result<SimRequest, OpenAiError>| {
            let e = r.unwrap_err();
            (
                e.param.unwrap_or_default(),
                e.code.unwrap_or_default(),
                e.message,
            )
        };
        let (param, code, message) =
            refused(chat("gpt-5.1", json!({"reasoning_effort": "minimal"})));
        assert_eq!(
            (param.as_str(), code),
            ("reasoning_effort", "unsupported_value")
        );
        assert!(
            message.ends_with("Supported values are: 'none', 'low', 'medium', and 'high'."),
            "{message}"
        );
        let (param, code, _) = refused(chat("gpt-4.1", json!({"reasoning_effort": "low"})));
        assert_eq!(
            (param.as_str(), code),
            ("reasoning_effort", "unsupported_parameter")
        );
        let (param, _, message) = refused(chat("o4-mini", json!({"max_tokens": 64})));
        assert_eq!(param, "max_tokens");
        assert!(message.contains("Use 'max_completion_tokens' instead"));
        let logprobs = json!({"reasoning_effort": "low", "logprobs": true});
        assert_eq!(refused(chat("gpt-5.4-nano", logprobs)).0, "logprobs");
        let sampled = json!({"reasoning_effort": "low", "temperature": 0});
        assert_eq!(refused(chat("gpt-5.4-nano", sampled)).0, "temperature");
        let at_none = json!({"reasoning_effort": "none", "logprobs": true, "temperature": 0});
        let ok = chat("gpt-5.4-nano", at_none.clone()).unwrap();
        assert_eq!(ok.reasoning.effort, Some(Effort::None));
        assert!(!ok.reasoning.burns_cap);
        let mut capped = at_none;
        capped["max_completion_tokens"] = json!(64);
        assert!(
            chat("gpt-5.4-nano", capped).unwrap().reasoning.burns_cap,
            "as reported: none under max_completion_tokens thinks until the cap"
        );
        let unsent = chat("gpt-5-mini", json!({})).unwrap();
        assert_eq!(unsent.reasoning.effort, Some(Effort::Medium), "the default");
        let mut responses = our_request();
        responses["model"] = json!("gpt-5.4-nano");
        responses["reasoning"] = json!({"effort": "xhigh"});
        responses.as_object_mut().unwrap().remove("include");
        responses.as_object_mut().unwrap().remove("top_logprobs");
        assert_eq!(
            parse_responses(&responses).unwrap().reasoning.effort,
            Some(Effort::Xhigh)
        );
        responses["model"] = json!("gpt-5.1");
        assert_eq!(
            parse_responses(&responses).unwrap_err().param.as_deref(),
            Some("reasoning.effort")
        );
    }

    #[test]
    fn accepts_our_packed_requests_and_reads_their_items() {
        let template = crate::upstream::templates::PackTemplate::new(
            crate::upstream::UpstreamApi::Responses,
            "m",
            &Taxonomy::hn_topics(),
            5,
            AnswerForm::LabelAndConfidence,
            crate::upstream::reasoning::Thinking::default_for("m"),
        );
        let (body, _) = template.encode(&["Rust 2.0", "A GPU"]);
        let req = parse_responses(&serde_json::from_slice(&body.to_vec()).unwrap()).unwrap();
        let items = vec![
            ("0".to_owned(), "Rust 2.0".to_owned()),
            ("1".to_owned(), "A GPU".to_owned()),
        ];
        assert_eq!(
            req.pack,
            Some(Pack {
                shape: PackShape::Items,
                items: items.clone()
            })
        );
        assert_eq!(req.labels.len(), 10);
        let keyed = crate::upstream::templates::PackTemplate::new(
            crate::upstream::UpstreamApi::Chat,
            "m",
            &Taxonomy::hn_topics(),
            5,
            AnswerForm::LabelOnly,
            crate::upstream::reasoning::Thinking::default_for("m"),
        );
        let (body, _) = keyed.encode(&["Rust 2.0", "A GPU"]);
        let req = parse_chat(&serde_json::from_slice(&body.to_vec()).unwrap()).unwrap();
        let shape = PackShape::Keyed;
        assert_eq!(req.pack, Some(Pack { shape, items }));
        assert_eq!(req.labels.len(), 10);
    }

    #[test]
    fn chat_requests_are_validated_too() {
        let schema = json!({"name": "hn_topic", "strict": true, "schema": Taxonomy::hn_topics().answer_schema(AnswerForm::LabelAndConfidence)});
        let mut req = json!({
            "model": "m",
            "messages": [{"role": "system", "content": "classify"}, {"role": "user", "content": "Rust 2.0"}],
            "response_format": {"type": "json_schema", "json_schema": schema},
        });
        let parsed = parse_chat(&req).unwrap();
        let schema_tokens = tokens::count(&schema.to_string());
        // "class|ify" and "Rust| |2|.|0" are 2 and 5 tokens, each message framed by 3, the reply
        // by 3.
        assert_eq!(
            (parsed.title.as_str(), parsed.input_tokens),
            ("Rust 2.0", 2 + 5 + 3 + 3 + 3 + schema_tokens)
        );
        req["response_format"] = json!({"type": "json_object"});
        assert!(parse_chat(&req).is_err());
    }
}
