//! Where `confidence` comes from (`HNC_CONFIDENCE`): by default the probability the model gave
//! the label's tokens, read from the provider's logprobs; a model that refuses logprobs costs a
//! call, never an item, and writes its confidence from then on; an answer without readable
//! logprobs costs its own second call. Every result says which kind it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::Value;

use hn_classifier::api::body::ClassifyBatchResponse;
use hn_classifier::upstream::ConfidenceSource;

use crate::helpers::*;

/// The app against a provider at `url` (base URL with `/v1`), confidence by default.
async fn app_against(url: &str) -> TestApp {
    spawn_app(config(&["--openai-base-url", url, "--openai-api-key", "k"])).await
}

/// OpenAI's 400 for a model that does not do logprobs.
fn logprobs_refusal() -> axum::response::Response {
    let body = serde_json::json!({"error": {
        "message": "Unsupported parameter: 'top_logprobs' is not supported with this model.",
        "type": "invalid_request_error", "param": "top_logprobs",
        "code": "unsupported_parameter"}});
    (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response()
}

#[tokio::test]
async fn by_default_the_confidence_is_read_from_logprobs_and_the_answers_are_shorter() {
    let titles = data_lines("hn_titles.txt")[..200].to_vec();
    let logprobs = spawn_simulated(&[]).await;
    let written = spawn_simulated(&["--confidence", "self"]).await;

    let read = logprobs.classify(&titles).await;
    let wrote = written.classify(&titles).await;

    assert_eq!((read.errors, wrote.errors), (0, 0));
    // The simulator's logprobs put its classifier's confidence on the label: renormalised over
    // the taxonomy, the service reads the same number the model would have written.
    for ((a, b), title) in read.results.iter().zip(&wrote.results).zip(&titles) {
        assert_eq!(
            (&a.topic, a.confidence),
            (&b.topic, b.confidence),
            "{title}"
        );
    }
    let (short, long) = (read.usage.output_tokens, wrote.usage.output_tokens);
    assert!(
        (short as f64) < 0.75 * long as f64,
        "label-only answers: {short} output tokens against {long}"
    );
    assert_eq!(
        metric(&logprobs, "upstream_confidence_from_logprobs", "").await,
        1.0
    );
    assert_eq!(
        metric(&written, "upstream_confidence_from_logprobs", "").await,
        0.0
    );
    let marks = |r: &ClassifyBatchResponse| -> Vec<Option<ConfidenceSource>> {
        r.results.iter().map(|i| i.confidence_source).collect()
    };
    assert_eq!(
        marks(&read),
        vec![Some(ConfidenceSource::Logprobs); titles.len()]
    );
    assert_eq!(
        marks(&wrote),
        vec![Some(ConfidenceSource::Written); titles.len()]
    );
    logprobs.shutdown().await;
    written.shutdown().await;
}

#[tokio::test]
async fn packed_calls_and_chat_completions_read_the_same_confidences() {
    let titles = data_lines("hn_titles.txt")[200..260].to_vec();
    let single = spawn_simulated(&[]).await;
    let packed = spawn_simulated(&["--pack-size", "7"]).await;
    let chat = spawn_simulated(&["--upstream-api", "chat", "--pack-size", "5"]).await;
    let expected = single.classify(&titles).await;
    for app in [&packed, &chat] {
        let got = app.classify(&titles).await;
        assert_eq!(got.errors, 0);
        for (a, b) in got.results.iter().zip(&expected.results) {
            assert_eq!((&a.topic, a.confidence), (&b.topic, b.confidence));
        }
    }
    for app in [single, packed, chat] {
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_model_known_to_refuse_logprobs_writes_its_confidence_from_the_first_call() {
    let app = spawn_simulated(&["--openai-model", "gpt-5-mini"]).await;
    let titles = data_lines("hn_titles.txt")[..30].to_vec();
    let response = app.classify(&titles).await;
    assert_eq!(response.errors, 0);
    assert_eq!(response.usage.upstream_requests, 30, "no call refused");
    assert_eq!(
        metric(&app, "upstream_confidence_from_logprobs", "").await,
        0.0
    );
    app.shutdown().await;
}

/// A provider whose model refuses the logprobs parameters with OpenAI's 400, and otherwise
/// answers with a written confidence; it counts the refusals.
async fn refusing_upstream() -> (String, Arc<AtomicUsize>) {
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    let router = axum::Router::new().route(
        "/v1/responses",
        post(move |Json(request): Json<Value>| {
            let count = count.clone();
            async move {
                if request.get("top_logprobs").is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                    return logprobs_refusal();
                }
                let title = request["input"][0]["content"].as_str().unwrap().to_owned();
                echo_reply(&title, 1)
            }
        }),
    );
    (on_loopback(router).await, refused)
}

#[tokio::test]
async fn a_model_that_refuses_logprobs_costs_a_call_and_never_an_item() {
    let (url, refused) = refusing_upstream().await;
    let app = app_against(&url).await;
    let titles = data_lines("hn_titles.txt")[..40].to_vec();
    let first = app.classify(&titles).await;
    let refusals = refused.load(Ordering::SeqCst);
    let again = app.classify(&titles[..5]).await;

    assert_eq!((first.errors, again.errors), (0, 0));
    for (result, title) in first.results.iter().zip(&titles) {
        assert_eq!(
            (result.topic.as_deref(), result.confidence),
            (Some(echo_answer(title).0), Some(echo_answer(title).1))
        );
    }
    assert!(refusals >= 1, "the first calls asked for logprobs");
    assert_eq!(refused.load(Ordering::SeqCst), refusals, "learnt for good");
    assert_eq!(
        metric(&app, "upstream_confidence_from_logprobs", "").await,
        0.0
    );
    assert_eq!(
        metric(&app, "upstream_retries_total", "logprobs_refused").await,
        refusals as f64
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_answer_without_logprobs_is_asked_again_alone_and_never_switches_the_endpoint() {
    let upstream = spawn_fake_upstream(echo_reply).await;
    let url = upstream.base_url();
    let app = app_against(&url).await;
    let titles = data_lines("hn_titles.txt")[..25].to_vec();
    let response = app.classify(&titles).await;
    assert_eq!(response.errors, 0);
    assert!(
        response
            .results
            .iter()
            .all(|r| r.confidence_source == Some(ConfidenceSource::Written)),
        "each answer is marked with the kind it holds"
    );
    assert_eq!(
        response.usage.upstream_requests, 50,
        "each title's call asked for logprobs, then once more for a written confidence"
    );
    assert_eq!(
        metric(&app, "upstream_retries_total", "logprobs_missing").await,
        25.0
    );
    assert_eq!(
        metric(&app, "upstream_logprobs_unreadable_total", "").await,
        25.0
    );
    assert_eq!(
        metric(&app, "upstream_confidence_from_logprobs", "").await,
        1.0,
        "only a refusal (400) switches the endpoint"
    );
    app.shutdown().await;
}

/// A Responses body whose label-only answer carries `label` with probability `p` (the rest on
/// `other`), its tokens spelling the text unless `misspelled`.
fn label_only_body(label: &str, p: f64, misspelled: bool) -> Value {
    let token = |t: &str, lp: f64, top: Value| serde_json::json!({"token": t, "logprob": lp, "top_logprobs": top});
    let open = if misspelled {
        "{\"topic\": \""
    } else {
        "{\"topic\":\""
    };
    let tokens = serde_json::json!([
        token(open, 0.0, serde_json::json!([])),
        token(
            label,
            p.ln(),
            serde_json::json!([{"token": label, "logprob": p.ln()}, {"token": "other", "logprob": (1.0 - p).ln()}])
        ),
        token("\"}", 0.0, serde_json::json!([])),
    ]);
    let text = format!("{{\"topic\":\"{label}\"}}");
    let mut body = completed(&text);
    body["output"][0]["content"][0]["logprobs"] = tokens;
    body
}

/// A provider serving label-only answers with logprobs after `delay_ms`, except that it refuses
/// logprobs for the title "refuse me" (at once) and misspells the tokens for "misspell me";
/// requests without logprobs get a written confidence.
async fn mixed_upstream(delay_ms: u64) -> String {
    let router = axum::Router::new().route(
        "/v1/responses",
        post(move |Json(request): Json<Value>| async move {
            let title = request["input"][0]["content"].as_str().unwrap().to_owned();
            if request.get("top_logprobs").is_none() {
                return echo_reply(&title, 1);
            }
            if title == "refuse me" {
                return logprobs_refusal();
            }
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            Json(label_only_body(
                "security_privacy",
                0.8,
                title == "misspell me",
            ))
            .into_response()
        }),
    );
    on_loopback(router).await
}

#[tokio::test]
async fn calls_in_flight_when_the_endpoint_switches_are_read_as_they_were_asked() {
    let url = mixed_upstream(300).await;
    let app = app_against(&url).await;
    let mut titles: Vec<String> = data_lines("hn_titles.txt")[..10].to_vec();
    titles.insert(0, "refuse me".to_owned());
    let response = app.classify(&titles).await;
    // The refusal switched the endpoint while the other ten were out asking for logprobs: they
    // come back label-only and are read so, not as answers missing a written confidence.
    assert_eq!(response.errors, 0, "{:?}", response.results);
    assert_eq!(
        response.results[0].confidence,
        Some(echo_answer("refuse me").1)
    );
    for result in &response.results[1..] {
        assert_eq!(result.confidence, Some(0.8));
    }
    assert_eq!(
        metric(&app, "upstream_confidence_from_logprobs", "").await,
        0.0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn logprobs_that_cannot_be_read_cost_that_call_only() {
    let url = mixed_upstream(0).await;
    let app = app_against(&url).await;
    let response = app.classify(&["misspell me", "A title"]).await;
    assert_eq!(response.errors, 0);
    assert_eq!(
        response.results[0].confidence,
        Some(echo_answer("misspell me").1)
    );
    assert_eq!(response.results[1].confidence, Some(0.8));
    assert_eq!(
        metric(&app, "upstream_retries_total", "logprobs_unreadable").await,
        1.0
    );
    assert_eq!(
        metric(&app, "upstream_confidence_from_logprobs", "").await,
        1.0,
        "the endpoint keeps asking for logprobs"
    );
    app.shutdown().await;
}
