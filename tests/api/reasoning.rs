//! The models people pick now: the gpt-5.x family and the o-series reason before they answer.
//! Against the simulator, which plays them as OpenAI does (efforts per family, reasoning tokens
//! drawn per effort, `incomplete` at the cap, the 400s for what a model does not take), in both
//! protocols: every title answered, one call each at the defaults, reasoning tokens counted and
//! priced, and the confidence's source on every result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::response::IntoResponse;
use axum::routing::post;
use hn_classifier::api::body::ClassifyBatchResponse;
use hn_classifier::upstream::ConfidenceSource;
use hn_classifier::upstream::pricing::PriceTable;
use serde_json::Value;

use crate::helpers::*;

const PROTOCOLS: [&str; 2] = ["responses", "chat"];

fn sources(response: &ClassifyBatchResponse) -> Vec<Option<ConfidenceSource>> {
    response
        .results
        .iter()
        .map(|r| r.confidence_source)
        .collect()
}

/// What the response's usage costs at `model`'s list price.
fn priced(response: &ClassifyBatchResponse, model: &str) -> f64 {
    let price = PriceTable::default().price_of(model).unwrap();
    let u = &response.usage;
    let fresh = u.input_tokens - u.cached_input_tokens;
    (fresh as f64 * price.input
        + u.cached_input_tokens as f64 * price.cached_input
        + u.output_tokens as f64 * price.output)
        / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_models_classify_a_thousand_titles_with_one_call_each_at_the_defaults() {
    let titles = data_lines("hn_titles_1000.txt");
    for (model, source, reasons) in [
        ("gpt-5.4-nano", ConfidenceSource::Logprobs, false),
        ("gpt-5-mini", ConfidenceSource::Written, true),
        ("o4-mini", ConfidenceSource::Written, true),
    ] {
        for api in PROTOCOLS {
            let app = spawn_simulated(&["--openai-model", model, "--upstream-api", api]).await;
            let response = app.classify(&titles).await;
            let at = format!("{model} over {api}");
            assert_eq!(response.errors, 0, "{at}");
            assert_eq!(
                response.usage.upstream_requests, 1000,
                "{at}: no resend for lack of room or a refused parameter"
            );
            assert_eq!(sources(&response), vec![Some(source); 1000], "{at}");
            let reasoning = response.usage.reasoning_tokens;
            assert_eq!(reasoning > 0, reasons, "{at}: {reasoning} reasoning tokens");
            assert!(reasoning < response.usage.output_tokens, "{at}");
            let cost = response.usage.cost_usd.unwrap();
            assert!(
                (cost - priced(&response, model)).abs() < 1e-9,
                "{at}: {cost} priced with the reasoning tokens as output"
            );
            assert_eq!(
                metric(&app, "upstream_tokens_total", "kind=\"reasoning\"").await,
                reasoning as f64,
                "{at}"
            );
            let faults = &app.sim_stats().await["faults"];
            assert!(faults.get("max_output_tokens").is_none(), "{at}: {faults}");
            app.shutdown().await;
        }
    }
}

#[tokio::test]
async fn flex_works_on_the_flex_models_at_half_the_price() {
    let titles = data_lines("hn_titles.txt")[..100].to_vec();
    for model in ["gpt-5.4-nano", "gpt-5-mini"] {
        let standard = spawn_simulated(&["--openai-model", model]).await;
        let flex = spawn_simulated(&["--openai-model", model, "--service-tier", "flex"]).await;
        let (a, b) = (
            standard.classify(&titles).await,
            flex.classify(&titles).await,
        );
        assert_eq!((a.errors, b.errors), (0, 0), "{model}");
        let ratio = b.usage.cost_usd.unwrap() / priced(&b, model);
        assert!(
            (ratio - 0.5).abs() < 1e-9,
            "{model}: flex at {ratio} of list"
        );
        standard.shutdown().await;
        flex.shutdown().await;
    }
}

#[tokio::test]
async fn an_effort_the_model_does_not_take_costs_a_call_and_is_replaced_by_one_it_lists() {
    let titles = data_lines("hn_titles.txt")[..50].to_vec();
    for api in PROTOCOLS {
        // gpt-5.1 and later take none, low, medium, high: not minimal.
        let app = spawn_simulated(&[
            "--openai-model",
            "gpt-5.4-nano",
            "--upstream-api",
            api,
            "--reasoning-effort",
            "minimal",
        ])
        .await;
        let first = app.classify(&titles[..1]).await;
        assert_eq!(first.errors, 0, "{api}");
        assert_eq!(
            first.usage.upstream_requests, 2,
            "{api}: one refused, one answered"
        );
        let rest = app.classify(&titles[1..]).await;
        assert_eq!(rest.errors, 0, "{api}");
        assert_eq!(rest.usage.upstream_requests, 49, "{api}: learnt for good");
        assert!(
            rest.usage.reasoning_tokens > 0,
            "{api}: now at low, it reasons"
        );
        assert_eq!(
            sources(&rest),
            vec![Some(ConfidenceSource::Written); 49],
            "{api}: no logprobs at low"
        );
        assert_eq!(
            metric(&app, "upstream_retries_total", "reasoning_effort_refused").await,
            1.0
        );
        assert_eq!(app.sim_stats().await["by_status"]["400"], 1, "{api}");
        app.shutdown().await;
    }
}

#[tokio::test]
async fn an_effort_other_than_none_asks_no_logprobs_of_a_model_that_gives_none_then() {
    let titles = data_lines("hn_titles.txt")[..40].to_vec();
    for api in PROTOCOLS {
        let app = spawn_simulated(&[
            "--openai-model",
            "gpt-5.4-mini",
            "--upstream-api",
            api,
            "--reasoning-effort",
            "low",
        ])
        .await;
        let response = app.classify(&titles).await;
        assert_eq!(response.errors, 0, "{api}");
        assert_eq!(
            response.usage.upstream_requests, 40,
            "{api}: nothing refused"
        );
        assert_eq!(
            sources(&response),
            vec![Some(ConfidenceSource::Written); 40]
        );
        assert!(app.sim_stats().await["by_status"].get("400").is_none());
        app.shutdown().await;
    }
}

#[tokio::test]
async fn an_answer_the_cap_cuts_short_while_reasoning_goes_again_once_with_more_room() {
    let titles = data_lines("hn_titles.txt")[..80].to_vec();
    for api in PROTOCOLS {
        // o4-mini at low reasons 64 to 768 tokens: most answers overrun a room of 100.
        let app = spawn_simulated(&[
            "--openai-model",
            "o4-mini",
            "--upstream-api",
            api,
            "--reasoning-tokens",
            "100",
        ])
        .await;
        let response = app.classify(&titles[..40]).await;
        assert_eq!(response.errors, 0, "{api}");
        let cut = app.sim_stats().await["faults"]["max_output_tokens"]
            .as_u64()
            .unwrap();
        assert!(cut >= 1, "{api}: {cut} answers cut short");
        assert_eq!(
            response.usage.upstream_requests,
            40 + cut,
            "{api}: each cut answer costs one more call, and only one"
        );
        assert_eq!(
            metric(&app, "upstream_retries_total", "more_room_to_think").await,
            cut as f64
        );
        let later = app.classify(&titles[40..]).await;
        assert_eq!(later.errors, 0, "{api}");
        assert_eq!(
            later.usage.upstream_requests, 40,
            "{api}: the endpoint learnt the room, later calls are not cut"
        );
        app.shutdown().await;
    }
}

/// A compatible server that refuses `max_tokens` as OpenAI does for a reasoning model in Chat,
/// and otherwise answers with a written confidence; it counts the refusals.
async fn refusing_max_tokens() -> (String, Arc<AtomicUsize>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let router = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(request): Json<Value>| {
            let count = count.clone();
            async move {
                if request.get("max_tokens").is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::json!({"error": {
                        "message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                        "type": "invalid_request_error", "param": "max_tokens",
                        "code": "unsupported_parameter"}});
                    return (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response();
                }
                assert!(request.get("max_completion_tokens").is_some());
                let title = request["messages"][1]["content"].as_str().unwrap();
                let (topic, confidence) = echo_answer(title);
                let text = serde_json::json!({"topic": topic, "confidence": confidence});
                Json(serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text.to_string()}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10}
                }))
                .into_response()
            }
        }),
    );
    (on_loopback(router).await, refused)
}

#[tokio::test]
async fn chat_learns_max_completion_tokens_from_the_first_refusal_of_max_tokens() {
    let (url, refused) = refusing_max_tokens().await;
    let app = spawn_app(config(&[
        "--openai-base-url",
        &url,
        "--openai-api-key",
        "k",
        "--upstream-api",
        "chat",
        "--openai-model",
        "a-deployment-name",
        "--confidence",
        "self",
    ]))
    .await;
    let titles = data_lines("hn_titles.txt")[..30].to_vec();
    let first = app.classify(&titles[..1]).await;
    let rest = app.classify(&titles[1..]).await;
    assert_eq!((first.errors, rest.errors), (0, 0));
    assert_eq!(refused.load(Ordering::SeqCst), 1, "learnt for good");
    assert_eq!(rest.usage.upstream_requests, 29);
    assert_eq!(
        metric(&app, "upstream_retries_total", "max_tokens_refused").await,
        1.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn written_confidences_are_never_cached_where_logprobs_are_asked_for() {
    // Every answer comes without logprobs: each is asked again for a written confidence.
    let upstream = spawn_fake_upstream(echo_reply).await;
    let url = upstream.base_url();
    let app = spawn_app(config(&[
        "--openai-base-url",
        &url,
        "--openai-api-key",
        "k",
        "--cache-entries",
        "1000",
    ]))
    .await;
    let titles = data_lines("hn_titles.txt")[..10].to_vec();
    let first = app.classify(&titles).await;
    let again = app.classify(&titles).await;
    assert_eq!((first.errors, again.errors), (0, 0));
    assert!(again.results.iter().all(|r| !r.cached));
    assert_eq!(sources(&again), vec![Some(ConfidenceSource::Written); 10]);
    assert_eq!(again.usage.upstream_requests, 20);
    app.shutdown().await;
}
