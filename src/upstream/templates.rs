//! Requests for one title and for a pack of titles, in the Responses or the Chat Completions
//! envelope: the parts that are the same for every title are serialised once per taxonomy and
//! endpoint; reading an answer goes through the protocol's body, then the shared checks.

use serde::Serialize;
use serde_json::value::RawValue;

use super::answer::{validate_answer, validate_pack};
use super::body::{Frame, RequestBody};
use super::decode::Output;
use super::error::UpstreamError;
use super::logprobs::TOP_LOGPROBS;
use super::reasoning::{ChatCap, Thinking};
use super::settings::UpstreamApi;
use super::usage::{Prediction, Usage};
use super::{chat, responses};
use crate::taxonomy::{AnswerForm, PackKeys, Taxonomy};

/// Enough for `{"topic":"business_startups_career","confidence":0.85}` with room to spare, small
/// enough that a runaway answer costs little. OpenAI's minimum is 16. A model that reasons gets
/// room to think on top (`Thinking::room`): its reasoning tokens count against the same cap.
pub const MAX_OUTPUT_TOKENS: u32 = 64;

/// The parts of a request that are the same for every title, serialised once.
#[derive(Debug)]
pub struct RequestTemplate {
    api: UpstreamApi,
    /// What the model writes: the label alone (the confidence from logprobs), or a confidence
    /// too.
    form: AnswerForm,
    model: String,
    thinking: Thinking,
    /// What every call reserves of a TPM budget besides its title (`fixed_tokens`).
    fixed_tokens: u64,
    /// The envelope (instructions, the answer format in the protocol's shape, limits) around
    /// the title.
    frame: Frame,
}

/// The answer format for a strict json_schema named `name`, in `api`'s shape.
fn answer_format(api: UpstreamApi, name: &str, schema: serde_json::Value) -> Box<RawValue> {
    let value = match api {
        UpstreamApi::Responses => serde_json::json!({
            "format": { "type": "json_schema", "name": name, "strict": true, "schema": schema }
        }),
        UpstreamApi::Chat => chat::response_format(name, schema),
    };
    RawValue::from_string(value.to_string()).expect("a serde_json Value is valid JSON")
}

/// The prompt of a call: the system prompt, what the model writes, and the key of the prompt
/// cache its fixed prefix goes to.
#[derive(Clone, Copy)]
struct Prompt<'a> {
    instructions: &'a str,
    form: AnswerForm,
    cache_key: &'a str,
}

/// The prompt cache key of a taxonomy's prompts for one title (`kind` "one") or for packs
/// ("pack"): its name and version, so a changed prompt starts a new cache.
fn cache_key(taxonomy: &Taxonomy, kind: &str) -> String {
    format!("hnc/{}/{kind}", taxonomy.key())
}

/// One request in `api`'s envelope: the system prompt first and the content last (so calls
/// share the longest prefix the provider can cache), the answer format, the reasoning effort,
/// and the logprobs the confidence is read from when the model writes the label only. The
/// prompt cache key goes to the Responses API only: Chat Completions is also what compatible
/// servers speak, and some refuse a parameter they do not know; OpenAI caches a repeated prefix
/// without the key too. `max_tokens` is the answer's cap, room to think included.
fn envelope(
    api: UpstreamApi,
    model: &str,
    prompt: Prompt<'_>,
    content: &str,
    format: &RawValue,
    (max_tokens, thinking): (u32, &Thinking),
) -> Vec<u8> {
    let Prompt {
        instructions,
        form,
        cache_key,
    } = prompt;
    let logprobs = form == AnswerForm::LabelOnly;
    let top_logprobs = logprobs.then_some(TOP_LOGPROBS);
    let effort = thinking.effort.map(|e| e.name());
    let chat_cap = thinking.chat_cap();
    let mut body = Vec::new();
    let written = match api {
        UpstreamApi::Responses => serde_json::to_writer(
            &mut body,
            &responses::Request {
                model,
                instructions,
                input: [responses::InputMessage {
                    role: "user",
                    content,
                }],
                text: format,
                store: false,
                prompt_cache_key: cache_key,
                max_output_tokens: max_tokens,
                reasoning: effort.map(|effort| responses::Reasoning { effort }),
                include: logprobs.then_some(responses::INCLUDE_LOGPROBS),
                top_logprobs,
            },
        ),
        UpstreamApi::Chat => serde_json::to_writer(
            &mut body,
            &chat::Request {
                model,
                messages: [
                    chat::Message {
                        role: "system",
                        content: instructions,
                    },
                    chat::Message {
                        role: "user",
                        content,
                    },
                ],
                response_format: format,
                max_tokens: (chat_cap == Some(ChatCap::MaxTokens)).then_some(max_tokens),
                max_completion_tokens: (chat_cap == Some(ChatCap::MaxCompletionTokens))
                    .then_some(max_tokens),
                reasoning_effort: effort,
                logprobs: logprobs.then_some(true),
                top_logprobs,
            },
        ),
    };
    written.expect("the request types always serialise");
    body
}

impl RequestTemplate {
    pub fn new(
        api: UpstreamApi,
        model: &str,
        taxonomy: &Taxonomy,
        form: AnswerForm,
        thinking: Thinking,
    ) -> Self {
        let instructions = taxonomy.instructions(form);
        let format = answer_format(api, taxonomy.name(), taxonomy.answer_schema(form));
        let cache_key = cache_key(taxonomy, "one");
        let prompt = Prompt {
            instructions,
            form,
            cache_key: &cache_key,
        };
        let cap = MAX_OUTPUT_TOKENS + thinking.room;
        Self {
            api,
            form,
            model: model.to_owned(),
            thinking,
            fixed_tokens: fixed_tokens(instructions, &format, cap),
            frame: Frame::new(|title| {
                envelope(api, model, prompt, title, &format, (cap, &thinking))
            }),
        }
    }

    /// What the model is asked to write.
    pub fn form(&self) -> AnswerForm {
        self.form
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// What the calls say of reasoning.
    pub fn thinking(&self) -> &Thinking {
        &self.thinking
    }

    /// Tokens the provider may count against a TPM limit for `title`: the prompt and schema, the
    /// title, and the most the answer may use (`fixed_tokens`). The pacer gives back what the
    /// call did not use once its usage is known.
    pub fn estimated_tokens(&self, title: &str) -> u64 {
        self.fixed_tokens + estimated(title)
    }

    /// The JSON body for one title.
    pub fn encode(&self, title: &str) -> RequestBody {
        self.frame.around(title)
    }

    /// Reads a 2xx body into a prediction. Tokens are reported even when the answer is
    /// unusable: they were billed all the same.
    pub fn decode(
        &self,
        body: &[u8],
        taxonomy: &Taxonomy,
    ) -> (Result<Prediction, UpstreamError>, Usage) {
        let (output, usage) = decode_text(self.api, body);
        let checked = output.and_then(|o| validate_answer(&o, taxonomy, self.form));
        (checked, usage)
    }
}

/// What a call reserves of a TPM budget besides its content: its prompt and answer format (the
/// schema counts too), estimated from their length, and the most the answer may use.
///
/// An estimate from characters, as OpenAI's rate limiter itself makes one when a call arrives
/// (it does not tokenize; billing does, and the pacer gives back what a call's reported usage
/// did not spend). Counting in o200k here would map the 3.1 MB vocabulary table into the
/// service's memory (peak RSS at 10,000 calls in flight measured 64-65 MiB against 59-61 MiB,
/// over the 64 MiB target) to refine a reservation the provider's own count settles anyway.
fn fixed_tokens(instructions: &str, format: &RawValue, max_tokens: u32) -> u64 {
    estimated(instructions) + estimated(format.get()) + u64::from(max_tokens)
}

/// Tokens of `text` as a rate limiter estimates them: four characters (bytes, here) a token.
fn estimated(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// The model's text in `api`'s response shape, and the tokens either way.
fn decode_text(api: UpstreamApi, body: &[u8]) -> (Result<Output, UpstreamError>, Usage) {
    match api {
        UpstreamApi::Responses => responses::decode_text(body),
        UpstreamApi::Chat => chat::decode_text(body),
    }
}

/// The parts of a packed request that are the same for every pack: the prompt, and the schema
/// for each pack size up to the maximum, serialised once.
#[derive(Debug)]
pub struct PackTemplate {
    api: UpstreamApi,
    form: AnswerForm,
    /// The envelopes around packs of 1..=max titles (index `n - 1`): each has its own answer
    /// format and output limit, so its own fixed tokens.
    frames: Vec<(Frame, u64)>,
}

/// A pack's titles as the label-only form sends them: `{"00": title, "01": title, ...}`.
struct Keyed<'a>(&'a [&'a str]);

impl Serialize for Keyed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let keys = PackKeys::new(self.0.len());
        serializer.collect_map(self.0.iter().enumerate().map(|(i, t)| (keys.key(i), t)))
    }
}

/// A pack's titles as the written-confidence form sends them: `[{"id": 0, "title": title}, ...]`.
struct Items<'a>(&'a [&'a str]);

impl Serialize for Items<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Item<'a> {
            id: usize,
            title: &'a str,
        }
        serializer.collect_seq(
            self.0
                .iter()
                .enumerate()
                .map(|(id, title)| Item { id, title }),
        )
    }
}

/// Output tokens a packed answer may use per title, on top of a fixed allowance.
const PACK_OUTPUT_TOKENS_PER_TITLE: u32 = 24;

fn pack_output_tokens(n: usize) -> u32 {
    16 + PACK_OUTPUT_TOKENS_PER_TITLE * n as u32
}

impl PackTemplate {
    pub fn new(
        api: UpstreamApi,
        model: &str,
        taxonomy: &Taxonomy,
        max: usize,
        form: AnswerForm,
        thinking: Thinking,
    ) -> Self {
        let name = format!("{}_pack", taxonomy.name());
        let instructions = taxonomy.packed_instructions(form);
        let cache_key = cache_key(taxonomy, "pack");
        let prompt = Prompt {
            instructions: &instructions,
            form,
            cache_key: &cache_key,
        };
        let frames = (1..=max.max(1))
            .map(|n| {
                let format = answer_format(api, &name, taxonomy.packed_schema(n, form));
                let max_tokens = pack_output_tokens(n) + thinking.room;
                let fixed = fixed_tokens(&instructions, &format, max_tokens);
                let frame = Frame::new(|items| {
                    envelope(api, model, prompt, items, &format, (max_tokens, &thinking))
                });
                (frame, fixed)
            })
            .collect();
        Self { api, form, frames }
    }

    /// The JSON body for `titles` (at most the template's maximum), and the tokens it may cost.
    pub fn encode(&self, titles: &[&str]) -> (RequestBody, u64) {
        let content = match self.form {
            AnswerForm::LabelOnly => serde_json::to_string(&Keyed(titles)),
            AnswerForm::LabelAndConfidence => serde_json::to_string(&Items(titles)),
        }
        .expect("strings always serialise");
        let n = titles.len().clamp(1, self.frames.len());
        let (frame, fixed) = &self.frames[n - 1];
        (frame.around(&content), fixed + estimated(&content))
    }

    /// Reads a 2xx body for a pack of `n` titles: one slot per id, `None` where the model's
    /// entry is missing, duplicated or invalid (those titles are retried alone by the caller).
    pub fn decode(
        &self,
        body: &[u8],
        taxonomy: &Taxonomy,
        n: usize,
    ) -> (Result<Vec<Option<Prediction>>, UpstreamError>, Usage) {
        let (output, usage) = decode_text(self.api, body);
        let checked = output.and_then(|o| validate_pack(&o, taxonomy, n, self.form));
        (checked, usage)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Reads a Responses API 2xx body into a prediction.
    pub(super) fn decode(
        body: &[u8],
        taxonomy: &Taxonomy,
    ) -> (Result<Prediction, UpstreamError>, Usage) {
        let (output, usage) = super::decode_text(UpstreamApi::Responses, body);
        let form = AnswerForm::LabelAndConfidence;
        (
            output.and_then(|o| validate_answer(&o, taxonomy, form)),
            usage,
        )
    }

    fn body(status: &str, content: Value) -> Vec<u8> {
        json!({
            "id": "resp_1", "object": "response", "status": status,
            "output": [
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": content}
            ],
            "usage": {"input_tokens": 120, "input_tokens_details": {"cached_tokens": 64}, "output_tokens": 14, "total_tokens": 134}
        })
        .to_string()
        .into_bytes()
    }

    fn decode_text(text: &str) -> Result<Prediction, UpstreamError> {
        let b = body(
            "completed",
            json!([{"type": "output_text", "text": text, "annotations": []}]),
        );
        decode(&b, &Taxonomy::hn_topics()).0
    }

    #[test]
    fn encodes_strict_schema_store_false_and_one_user_message() {
        let t = Taxonomy::hn_topics();
        let req: Value = serde_json::from_slice(
            &RequestTemplate::new(
                UpstreamApi::Responses,
                "gpt-4.1-mini",
                &t,
                AnswerForm::LabelAndConfidence,
                crate::upstream::reasoning::Thinking::default_for("gpt-4.1-mini"),
            )
            .encode("Hello \"HN\"")
            .to_vec(),
        )
        .unwrap();
        assert_eq!(req["store"], false);
        let key = format!("hnc/hn-topics@{}/one", t.version());
        assert_eq!(req["prompt_cache_key"], json!(key));
        assert_eq!(
            req["input"],
            json!([{"role": "user", "content": "Hello \"HN\""}])
        );
        assert_eq!(req["text"]["format"]["strict"], true);
        assert_eq!(req["text"]["format"]["name"], "hn-topics");
        assert_eq!(
            req["text"]["format"]["schema"],
            t.answer_schema(AnswerForm::LabelAndConfidence)
        );
        assert!(req.get("top_logprobs").is_none() && req.get("include").is_none());
        assert_eq!(req["max_output_tokens"], MAX_OUTPUT_TOKENS);
    }

    #[test]
    fn reads_the_message_item_after_other_items_and_counts_tokens() {
        let b = body(
            "completed",
            json!([{"type": "output_text", "text": "{\"topic\":\"other\",\"confidence\":0.5}"}]),
        );
        let (result, usage) = decode(&b, &Taxonomy::hn_topics());
        let p = result.unwrap();
        assert_eq!((&*p.topic, p.confidence), ("other", 0.5));
        assert_eq!(
            (
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens
            ),
            (120, 64, 14)
        );
    }

    #[test]
    fn every_unusable_answer_is_an_error_with_its_code() {
        let cases = [
            ("not json", "invalid_output"),
            ("{\"topic\":\"hacked\",\"confidence\":1.0}", "off_taxonomy"),
            (
                "{\"topic\":\"other\",\"confidence\":1.5}",
                "confidence_out_of_range",
            ),
            (
                "{\"topic\":\"other\",\"confidence\":-0.1}",
                "confidence_out_of_range",
            ),
            (
                "{\"topic\":\"other\",\"confidence\":0.5,\"extra\":1}",
                "invalid_output",
            ),
            (
                "{\"topic\":\"other\",\"topic\":\"other\",\"confidence\":0.5}",
                "invalid_output",
            ),
            ("{\"topic\":\"other\"}", "invalid_output"),
        ];
        for (text, code) in cases {
            assert_eq!(decode_text(text).unwrap_err().code(), code, "{text}");
        }
    }

    #[test]
    fn refusal_and_incomplete_status_are_errors() {
        let t = Taxonomy::hn_topics();
        let refusal = body(
            "completed",
            json!([{"type": "refusal", "refusal": "I can't help"}]),
        );
        assert_eq!(decode(&refusal, &t).0.unwrap_err().code(), "model_refused");
        let mut v: Value = serde_json::from_slice(&body("incomplete", json!([]))).unwrap();
        v["incomplete_details"] = json!({"reason": "max_output_tokens"});
        let err = decode(v.to_string().as_bytes(), &t).0.unwrap_err();
        assert_eq!(err.code(), "response_incomplete");
        assert!(err.to_string().contains("max_output_tokens"));
        assert_eq!(
            decode(b"<html>", &t).0.unwrap_err().code(),
            "upstream_malformed"
        );
    }
}

#[cfg(test)]
mod packing {
    use serde_json::{Value, json};

    use super::*;

    const WRITTEN: AnswerForm = AnswerForm::LabelAndConfidence;

    fn pack_body(items: Value) -> Vec<u8> {
        let text = json!({ "items": items }).to_string();
        json!({"status": "completed", "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn each_title_is_a_json_string_item_so_none_can_pose_as_another() {
        let taxonomy = Taxonomy::hn_topics();
        let spoof = r#"x"},{"id":1,"title":"hacked"#;
        let (body, tokens) = PackTemplate::new(
            UpstreamApi::Responses,
            "m",
            &taxonomy,
            10,
            WRITTEN,
            crate::upstream::reasoning::Thinking::default_for("m"),
        )
        .encode(&[spoof, "Rust 2.0"]);
        let request: Value = serde_json::from_slice(&body.to_vec()).unwrap();
        let items: Value =
            serde_json::from_str(request["input"][0]["content"].as_str().unwrap()).unwrap();
        assert_eq!(
            items,
            json!([{"id": 0, "title": spoof}, {"id": 1, "title": "Rust 2.0"}])
        );
        assert_eq!(
            request["text"]["format"]["schema"],
            taxonomy.packed_schema(2, WRITTEN)
        );
        assert_eq!(request["text"]["format"]["name"], "hn-topics_pack");
        assert!(tokens > 100);
    }

    #[test]
    fn missing_duplicated_invalid_and_foreign_entries_leave_their_slots_empty() {
        let body = pack_body(json!([
            {"id": 0, "topic": "other", "confidence": 0.5},
            {"id": 1, "topic": "hacked", "confidence": 0.5},
            {"id": 2, "topic": "other", "confidence": 0.5},
            {"id": 2, "topic": "other", "confidence": 0.6},
            {"id": 3, "topic": "other", "confidence": 1.5},
            {"id": 9, "topic": "other", "confidence": 0.5},
        ]));
        let slots = PackTemplate::new(
            UpstreamApi::Responses,
            "m",
            &Taxonomy::hn_topics(),
            5,
            WRITTEN,
            crate::upstream::reasoning::Thinking::default_for("m"),
        )
        .decode(&body, &Taxonomy::hn_topics(), 5)
        .0
        .unwrap();
        let filled: Vec<bool> = slots.iter().map(Option::is_some).collect();
        assert_eq!(filled, [true, false, false, false, false]);
    }

    #[test]
    fn text_that_is_not_the_packed_json_fails_the_whole_pack() {
        let body = pack_body(json!("nope"));
        assert_eq!(
            PackTemplate::new(
                UpstreamApi::Responses,
                "m",
                &Taxonomy::hn_topics(),
                2,
                WRITTEN,
                crate::upstream::reasoning::Thinking::default_for("m")
            )
            .decode(&body, &Taxonomy::hn_topics(), 2)
            .0
            .unwrap_err()
            .code(),
            "invalid_output"
        );
    }
    /// A keyed answer whose every label token had `p` against `ai_ml_agents`'s `1 - p`.
    fn keyed_body(entries: &[(&str, &str)], p: f64) -> Vec<u8> {
        let sure = |t: &str| json!({"token": t, "logprob": 0.0, "top_logprobs": [{"token": t, "logprob": 0.0}]});
        let mut tokens = vec![sure("{")];
        for (i, (key, label)) in entries.iter().enumerate() {
            let open = format!("{}\"{key}\":\"", if i > 0 { "," } else { "" });
            tokens.push(sure(&open));
            tokens.push(json!({"token": label, "logprob": p.ln(), "top_logprobs": [
                {"token": label, "logprob": p.ln()},
                {"token": "ai_ml_agents", "logprob": (1.0 - p).ln()},
            ]}));
            tokens.push(sure("\""));
        }
        tokens.push(sure("}"));
        let text: String = tokens
            .iter()
            .map(|t| t["token"].as_str().unwrap())
            .collect();
        json!({"status": "completed", "output": [{"type": "message", "content": [
            {"type": "output_text", "text": text, "logprobs": tokens}
        ]}]})
        .to_string()
        .into_bytes()
    }

    fn keyed_slots(body: &[u8], n: usize) -> Result<Vec<Option<Prediction>>, UpstreamError> {
        let t = Taxonomy::hn_topics();
        PackTemplate::new(
            UpstreamApi::Responses,
            "m",
            &t,
            n,
            AnswerForm::LabelOnly,
            crate::upstream::reasoning::Thinking::default_for("m"),
        )
        .decode(body, &t, n)
        .0
    }

    #[test]
    fn label_only_packs_send_and_answer_an_object_keyed_by_id() {
        let taxonomy = Taxonomy::hn_topics();
        let titles: Vec<String> = (0..12).map(|i| format!("title {i}")).collect();
        let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
        let (body, _) = PackTemplate::new(
            UpstreamApi::Chat,
            "m",
            &taxonomy,
            20,
            AnswerForm::LabelOnly,
            crate::upstream::reasoning::Thinking::default_for("m"),
        )
        .encode(&titles);
        let request: Value = serde_json::from_slice(&body.to_vec()).unwrap();
        let content = request["messages"][1]["content"].as_str().unwrap();
        assert!(
            content.starts_with(r#"{"00":"title 0","01":"title 1","#),
            "{content}"
        );
        assert!(content.ends_with(r#""11":"title 11"}"#), "{content}");
        let schema = &request["response_format"]["json_schema"]["schema"];
        assert_eq!(*schema, taxonomy.packed_schema(12, AnswerForm::LabelOnly));
        assert!(
            request.get("prompt_cache_key").is_none(),
            "Chat Completions, which compatible servers speak, gets no parameter only OpenAI knows"
        );
    }

    #[test]
    fn keyed_answers_fill_each_named_slot_once_with_the_labels_probability() {
        let entries = [
            ("00", "other"),
            ("01", "other"),
            ("01", "other"),
            ("02", "hacked"),
            ("3", "other"),
            ("99", "other"),
            ("04", "security_privacy"),
        ];
        let slots = keyed_slots(&keyed_body(&entries, 0.75), 12).unwrap();
        let filled: Vec<usize> = (0..12).filter(|i| slots[*i].is_some()).collect();
        assert_eq!(filled, [0, 4]);
        let first = slots[0].as_ref().unwrap();
        assert_eq!((first.topic.as_ref(), first.confidence), ("other", 0.75));
    }

    #[test]
    fn a_keyed_answer_that_is_not_an_object_of_strings_fails_the_whole_pack() {
        for text in [
            r#"{"0": 1}"#,
            r#"["other"]"#,
            r#"{"0":"other"} x"#,
            r#"{"0":"other",}"#,
        ] {
            let body = json!({"status": "completed", "output": [{"type": "message", "content": [
                {"type": "output_text", "text": text, "logprobs": [{"token": text, "logprob": 0.0, "top_logprobs": []}]}
            ]}]});
            let err = keyed_slots(body.to_string().as_bytes(), 2).unwrap_err();
            assert_eq!(err.code(), "invalid_output", "{text}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::tests::decode;
    use super::*;

    fn answer_body(text: &str) -> Vec<u8> {
        json!({"status": "completed", "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}]})
            .to_string()
            .into_bytes()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_yield_a_label(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (result, _) = decode(&body, &Taxonomy::hn_topics());
            // Random bytes are not a completed response with valid JSON output.
            prop_assert!(result.is_err());
        }

        #[test]
        fn any_model_text_yields_a_taxonomy_label_or_an_error(text in ".{0,200}") {
            let taxonomy = Taxonomy::hn_topics();
            if let Ok(p) = decode(&answer_body(&text), &taxonomy).0 {
                prop_assert!(taxonomy.label(&p.topic).is_some());
                prop_assert!((0.0..=1.0).contains(&p.confidence));
            }
        }

        #[test]
        fn every_label_with_a_confidence_in_range_is_accepted(index in 0usize..10, confidence in 0.0f64..=1.0) {
            let taxonomy = Taxonomy::hn_topics();
            let label = taxonomy.labels().nth(index).unwrap().to_string();
            let text = json!({"topic": label, "confidence": confidence}).to_string();
            let p = decode(&answer_body(&text), &taxonomy).0.unwrap();
            prop_assert_eq!(&*p.topic, label.as_str());
            prop_assert_eq!(p.confidence, confidence);
        }

        #[test]
        fn out_of_range_confidence_and_unknown_labels_are_rejected(
            label in "[a-z_]{1,24}",
            confidence in prop_oneof![-1e9f64..-1e-9, (1.0f64 + 1e-9)..1e9],
        ) {
            let taxonomy = Taxonomy::hn_topics();
            let text = json!({"topic": "other", "confidence": confidence}).to_string();
            prop_assert_eq!(decode(&answer_body(&text), &taxonomy).0.unwrap_err().code(), "confidence_out_of_range");
            prop_assume!(taxonomy.label(&label).is_none());
            let text = json!({"topic": label, "confidence": 0.5}).to_string();
            prop_assert_eq!(decode(&answer_body(&text), &taxonomy).0.unwrap_err().code(), "off_taxonomy");
        }
    }
}
