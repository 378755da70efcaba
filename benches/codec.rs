//! Micro-benchmarks of the per-call work the service does besides waiting: encoding a request
//! (one title, or a pack of 20), estimating its tokens for the pacer, and reading the provider's
//! answer back through every check; and what an o200k count costs the simulator.
//! `cargo bench --bench codec`; figures in docs/BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hn_classifier::taxonomy::{AnswerForm, Taxonomy};
use hn_classifier::upstream::UpstreamApi;
use hn_classifier::upstream::reasoning::Thinking;
use hn_classifier::upstream::templates::{PackTemplate, RequestTemplate};
use serde_json::json;

/// The answers below carry a written confidence.
const WRITTEN: AnswerForm = AnswerForm::LabelAndConfidence;

const TITLE: &str = "Show HN: A fast JSON parser in Rust that beats simd-json on small documents";

fn responses_body(text: &str) -> Vec<u8> {
    json!({
        "id": "resp_1", "object": "response", "status": "completed", "model": "gpt-4.1-mini",
        "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 312, "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens": 15, "total_tokens": 327}
    })
    .to_string()
    .into_bytes()
}

fn chat_body(text: &str) -> Vec<u8> {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text, "refusal": null}}],
        "usage": {"prompt_tokens": 312, "completion_tokens": 15, "total_tokens": 327}
    })
    .to_string()
    .into_bytes()
}

fn codec(c: &mut Criterion) {
    let taxonomy = Taxonomy::hn_topics();
    let answer = r#"{"topic":"programming_dev_tools","confidence":0.87}"#;
    for (name, api, body) in [
        ("responses", UpstreamApi::Responses, responses_body(answer)),
        ("chat", UpstreamApi::Chat, chat_body(answer)),
    ] {
        let template = RequestTemplate::new(
            api,
            "gpt-4.1-mini",
            &taxonomy,
            WRITTEN,
            Thinking::default_for("gpt-4.1-mini"),
        );
        c.bench_function(&format!("{name}/encode one title"), |b| {
            b.iter(|| template.encode(black_box(TITLE)))
        });
        c.bench_function(&format!("{name}/decode and check one answer"), |b| {
            b.iter(|| {
                let (result, _) = template.decode(black_box(&body), &taxonomy);
                result.expect("a valid answer")
            })
        });
    }

    // The label-only answer with logprobs as OpenAI sends them: every token with its bytes and
    // 20 alternatives, each with its bytes.
    let tokens = [
        "{\"",
        "topic",
        "\":\"",
        "programming",
        "_dev",
        "_tools",
        "\"}",
    ];
    let alternatives: Vec<String> = taxonomy
        .labels()
        .map(|l| l.to_string())
        .chain((0..10).map(|i| format!("alt{i}")))
        .collect();
    let logprobs: Vec<_> = tokens
        .iter()
        .map(|t| {
            let top: Vec<_> = alternatives
                .iter()
                .enumerate()
                .map(|(r, a)| json!({"token": a, "logprob": -1.0 - r as f64 * 0.37, "bytes": a.as_bytes()}))
                .collect();
            json!({"token": t, "logprob": -0.01, "bytes": t.as_bytes(), "top_logprobs": top})
        })
        .collect();
    let text: String = tokens.concat();
    let mut with_logprobs: serde_json::Value =
        serde_json::from_slice(&responses_body(&text)).unwrap();
    with_logprobs["output"][0]["content"][0]["logprobs"] = json!(logprobs);
    let with_logprobs = with_logprobs.to_string().into_bytes();
    let label_only = RequestTemplate::new(
        UpstreamApi::Responses,
        "gpt-4.1-mini",
        &taxonomy,
        AnswerForm::LabelOnly,
        Thinking::default_for("gpt-4.1-mini"),
    );
    c.bench_function(
        "responses/parse that body into a JSON value, for scale",
        |b| {
            b.iter(|| {
                serde_json::from_slice::<serde_json::Value>(black_box(&with_logprobs)).unwrap()
            })
        },
    );
    c.bench_function(
        "responses/decode one label-only answer with logprobs",
        |b| {
            b.iter(|| {
                let (result, _) = label_only.decode(black_box(&with_logprobs), &taxonomy);
                result.expect("a valid answer")
            })
        },
    );

    c.bench_function("tokens/count one title (o200k)", |b| {
        b.iter(|| hn_classifier::tokens::count(black_box(TITLE)))
    });
    let prompt = taxonomy.instructions(AnswerForm::LabelOnly);
    c.bench_function("tokens/count the label-only prompt (o200k)", |b| {
        b.iter(|| hn_classifier::tokens::count(black_box(prompt)))
    });
    c.bench_function("responses/estimate one title's tokens for the pacer", |b| {
        b.iter(|| label_only.estimated_tokens(black_box(TITLE)))
    });

    let titles: Vec<String> = (0..20).map(|i| format!("{TITLE} #{i}")).collect();
    let titles: Vec<&str> = titles.iter().map(String::as_str).collect();
    let packs = PackTemplate::new(
        UpstreamApi::Responses,
        "gpt-4.1-mini",
        &taxonomy,
        20,
        WRITTEN,
        Thinking::default_for("gpt-4.1-mini"),
    );
    let items: Vec<_> = (0..20)
        .map(|id| json!({"id": id, "topic": "programming_dev_tools", "confidence": 0.8}))
        .collect();
    let pack_body = responses_body(&json!({ "items": items }).to_string());
    c.bench_function("responses/encode a pack of 20", |b| {
        b.iter(|| packs.encode(black_box(&titles)))
    });
    c.bench_function("responses/decode and check a pack of 20", |b| {
        b.iter(|| {
            let (result, _) = packs.decode(black_box(&pack_body), &taxonomy, 20);
            result.expect("a valid pack")
        })
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
