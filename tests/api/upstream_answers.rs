//! Provider answers that must become per-item errors, never a guessed label or a failed batch.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::helpers::*;

/// Answers chosen by the title's text.
fn troublesome(title: &str, call: usize) -> Response {
    let answer = |text: &str| Json(completed(text)).into_response();
    match title {
        "refusal" => {
            let mut body = completed("");
            body["output"][0]["content"] =
                json!([{"type": "refusal", "refusal": "I can't help with that."}]);
            Json(body).into_response()
        }
        "incomplete" => {
            let mut body = completed("{\"topic\":\"oth");
            body["status"] = json!("incomplete");
            body["incomplete_details"] = json!({"reason": "max_output_tokens"});
            Json(body).into_response()
        }
        "invalid json" => answer("Sure! The topic is AI."),
        "truncated once" if call == 1 => answer("{\"topic\":\"oth"),
        "off enum" => answer(r#"{"topic":"hacked","confidence":1.0}"#),
        "confidence too high" => answer(r#"{"topic":"other","confidence":1.5}"#),
        "extra field" => answer(r#"{"topic":"other","confidence":0.5,"reason":"x"}"#),
        "http 400" => openai_error(
            StatusCode::BAD_REQUEST,
            "Invalid schema for response_format",
            "invalid_request_error",
            Some("invalid_json_schema"),
        ),
        "http 401" => openai_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided: sk-test***-123. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        "http 500" => (StatusCode::INTERNAL_SERVER_ERROR, "<html>oops</html>").into_response(),
        "http 429 quota" => openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        _ => echo_reply(title, call),
    }
}

#[tokio::test]
async fn unusable_answers_become_per_item_errors_and_the_batch_still_answers_200() {
    let upstream = spawn_fake_upstream(troublesome).await;
    let app = spawn_against(&upstream, &[]).await;
    let cases = [
        ("A fine title", None, ""),
        ("refusal", Some("model_refused"), "I can't help with that."),
        (
            "incomplete",
            Some("response_incomplete"),
            "max_output_tokens",
        ),
        ("invalid json", Some("invalid_output"), "not valid JSON"),
        ("off enum", Some("off_taxonomy"), "\"hacked\""),
        (
            "confidence too high",
            Some("confidence_out_of_range"),
            "1.5",
        ),
        (
            "extra field",
            Some("invalid_output"),
            "unknown field `reason`",
        ),
        (
            "http 400",
            Some("upstream_rejected"),
            "HTTP 400 (invalid_json_schema)",
        ),
        (
            "http 401",
            Some("upstream_rejected"),
            "Incorrect API key provided: [redacted]",
        ),
        (
            "http 500",
            Some("upstream_server_error"),
            "gave up after 4 attempts (retry budget exhausted)",
        ),
        (
            "http 429 quota",
            Some("upstream_quota_exhausted"),
            "You exceeded your current quota",
        ),
    ];
    let titles: Vec<&str> = cases.iter().map(|c| c.0).collect();

    let response = app.classify(&titles).await;

    for ((title, code, message), item) in cases.iter().zip(&response.results) {
        assert_eq!(item.error_code.as_deref(), *code, "{title}: {item:?}");
        if code.is_some() {
            assert!(
                item.topic.is_none() && item.confidence.is_none(),
                "{title}: no guessed label"
            );
            let error = item.error.as_deref().unwrap();
            assert!(
                error.contains(message),
                "{title}: {error:?} lacks {message:?}"
            );
        }
    }
    assert_eq!(
        response.results[0].topic.as_deref(),
        Some(echo_answer("A fine title").0)
    );
    assert_eq!(response.errors, cases.len() - 1);
    assert_eq!(
        upstream.total_calls(),
        cases.len() + 3 + 3,
        "one call per title, but 4 for the 500 and 2 for each invalid or incomplete answer"
    );
    assert_eq!(
        upstream.call_times("http 429 quota").len(),
        1,
        "insufficient_quota is final"
    );
    let quota = response.results.last().unwrap().error.as_deref().unwrap();
    assert!(
        !quota.contains("attempts"),
        "a final error on the first attempt says nothing of retries: {quota}"
    );
    let body = serde_json::to_string(&response).unwrap();
    assert!(
        !body.contains("sk-test"),
        "no part of a key reaches the caller: {body}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_slow_upstream_is_a_timeout_error_for_that_item_only() {
    let upstream = spawn_fake_upstream_with_delay(echo_reply, |t| {
        if t == "slow" {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        }
    })
    .await;
    let app = spawn_against(&upstream, &["--upstream-timeout", "0.3"]).await;

    let response = app.classify(&["fast", "slow"]).await;

    assert!(response.results[0].error.is_none());
    assert_eq!(
        response.results[1].error_code.as_deref(),
        Some("upstream_timeout")
    );
    assert!(
        response.results[1]
            .error
            .as_deref()
            .unwrap()
            .contains("0.3s")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_per_item_error() {
    // Bind and drop a listener, so the port is (almost certainly) closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let app = spawn_app(config(&[
        "--openai-base-url",
        &url,
        "--openai-api-key",
        "k",
        "--confidence",
        "self",
    ]))
    .await;

    let response = app.classify(&["a", "b"]).await;

    assert_eq!(response.errors, 2);
    assert!(
        response
            .results
            .iter()
            .all(|r| r.error_code.as_deref() == Some("upstream_unreachable"))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_answer_cut_off_once_is_asked_again_and_only_once() {
    let upstream = spawn_fake_upstream(troublesome).await;
    let app = spawn_against(&upstream, &[]).await;
    let response = app
        .classify(&["truncated once", "invalid json", "refusal"])
        .await;
    let codes: Vec<Option<&str>> = response
        .results
        .iter()
        .map(|r| r.error_code.as_deref())
        .collect();
    assert_eq!(codes, [None, Some("invalid_output"), Some("model_refused")]);
    assert_eq!(upstream.call_times("truncated once").len(), 2);
    assert_eq!(
        upstream.call_times("invalid json").len(),
        2,
        "one retry, no more"
    );
    assert_eq!(
        upstream.call_times("refusal").len(),
        1,
        "a refusal is final"
    );
}

#[tokio::test]
async fn with_output_retries_off_a_cut_off_answer_is_final() {
    let upstream = spawn_fake_upstream(troublesome).await;
    let app = spawn_against(&upstream, &["--output-retries", "0"]).await;
    let response = app.classify(&["truncated once"]).await;
    assert_eq!(
        response.results[0].error_code.as_deref(),
        Some("invalid_output")
    );
    assert_eq!(upstream.call_times("truncated once").len(), 1);
}
