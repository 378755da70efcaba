//! Several upstream endpoints (HNC_UPSTREAMS): load spread by weight and free capacity, an
//! endpoint that refuses its key benched while the others carry every item, per-endpoint metrics;
//! and Azure OpenAI's `api-key` header and `api-version` query.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hn_classifier::sim::SimServer;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::helpers::{
    HN_LABELS, config, data_lines, echo_reply, get, openai_error, scratch, spawn_app,
    spawn_fake_upstream, spawn_sim, startup_error,
};

/// An HNC_UPSTREAMS file naming each `(name, base_url, extra)` with a key in a file.
fn upstreams_file(test: &str, upstreams: &[(&str, String, &str)]) -> String {
    let dir = scratch(test);
    let key = dir.join("key");
    std::fs::write(&key, "sk-test-upstream-key-42\n").unwrap();
    let mut toml = String::new();
    for (name, url, extra) in upstreams {
        toml.push_str(&format!(
            "[[upstream]]\nname = {name:?}\nbase_url = {url:?}\napi_key_file = {:?}\n{extra}\n",
            key.to_str().unwrap()
        ));
    }
    let path = dir.join("upstreams.toml");
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_rate_limited_simulators_share_the_work_and_no_item_is_lost() {
    let slow = spawn_sim(&[
        "--sim-latency-ms",
        "5",
        "--sim-rpm",
        "3000",
        "--sim-seed",
        "1",
    ])
    .await;
    let fast = spawn_sim(&[
        "--sim-latency-ms",
        "5",
        "--sim-rpm",
        "6000",
        "--sim-seed",
        "2",
    ])
    .await;
    let file = upstreams_file(
        "two-sims",
        &[
            ("slow", slow.base_url(), ""),
            ("fast", fast.base_url(), "weight = 2"),
        ],
    );
    let app = spawn_app(config(&["--upstreams", &file])).await;
    let titles: Vec<String> = data_lines("hn_titles_1000.txt")
        .into_iter()
        .take(400)
        .collect();

    let body = app.classify(&titles).await;

    assert_eq!(
        body.errors,
        0,
        "{:?}",
        body.results.iter().find(|r| r.error.is_some())
    );
    assert!(
        body.results
            .iter()
            .all(|r| HN_LABELS.contains(&r.topic.as_deref().unwrap()))
    );
    let served = |sim: &SimServer| {
        let stats = sim.stats().snapshot(false);
        stats.by_status.get(&200).copied().unwrap_or(0)
    };
    let (served_slow, served_fast) = (served(&slow), served(&fast));
    assert_eq!(served_slow + served_fast, 400);
    assert!(
        served_slow >= 40 && served_fast >= 40,
        "slow {served_slow}, fast {served_fast}"
    );
    let (_, metrics) = get(&app.url("/metrics")).await;
    for name in ["slow", "fast"] {
        assert!(
            metrics.contains(&format!(
                "upstream_requests_total{{status=\"200\",upstream=\"{name}\"}}"
            )),
            "{metrics}"
        );
    }
    assert!(!metrics.contains("sk-test-upstream-key-42"));
}

fn always_401(_title: &str, _call: usize) -> Response {
    openai_error(
        StatusCode::UNAUTHORIZED,
        "Incorrect API key provided: sk-test-**********-42.",
        "invalid_request_error",
        Some("invalid_api_key"),
    )
}

/// Answers normally for its first 20 calls, then as if the key had been revoked.
fn revoked_after_20_calls(title: &str, call: usize) -> Response {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    if CALLS.fetch_add(1, Ordering::Relaxed) < 20 {
        echo_reply(title, call)
    } else {
        always_401(title, call)
    }
}

#[tokio::test]
async fn an_endpoint_that_starts_refusing_its_key_is_benched_and_the_other_carries_every_item() {
    let revoked = spawn_fake_upstream(revoked_after_20_calls).await;
    let good = spawn_sim(&["--sim-latency-ms", "5"]).await;
    let file = upstreams_file(
        "refusing",
        &[
            ("revoked", revoked.base_url(), ""),
            ("good", good.base_url(), ""),
        ],
    );
    let app = spawn_app(config(&["--upstreams", &file])).await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(100).collect();

    let first = app.classify(&titles).await;
    assert_eq!(
        first.errors,
        0,
        "{:?}",
        first.results.iter().find(|r| r.error.is_some())
    );
    let calls = revoked.total_calls();
    assert!(calls > 20, "it served, then refused: {calls} calls");

    // Benched: the next batch does not touch it, and the replica stays ready.
    let second = app.classify(&titles[..50]).await;
    assert_eq!(second.errors, 0);
    assert_eq!(revoked.total_calls(), calls);
    let (status, _) = get(&app.url("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, metrics) = get(&app.url("/metrics")).await;
    assert!(
        metrics.contains("upstream_benched{upstream=\"revoked\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("upstream_benched{upstream=\"good\"} 0"));
    assert!(metrics.contains("upstream_requests_total{status=\"401\",upstream=\"revoked\"}"));
    // Which key served an item is for metrics only: results carry nothing about it.
    let text = serde_json::to_string(&first.results).unwrap();
    assert!(!text.contains("revoked") && !text.contains("good"));
}

#[tokio::test]
async fn with_every_endpoint_refused_items_fail_with_the_providers_reason_and_health_says_so() {
    let refusing = spawn_fake_upstream(always_401).await;
    let file = upstreams_file("all-refused", &[("revoked", refusing.base_url(), "")]);
    let app = spawn_app(config(&["--upstreams", &file])).await;
    let body = app.classify(&["Rust 1.90 released"]).await;
    assert_eq!(
        body.results[0].error_code.as_deref(),
        Some("upstream_rejected")
    );
    // The provider's state is in the health details, not in readiness: every replica shares it.
    let (status, _) = get(&app.url("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, health) = get(&app.url("/healthz")).await;
    assert!(health.contains(r#""upstream":"unavailable""#), "{health}");
    assert!(
        health.contains(r#"{"name":"revoked","state":"benched"}"#),
        "{health}"
    );
}

#[tokio::test]
async fn a_bad_upstreams_file_stops_start_up_naming_the_setting() {
    let dir = scratch("bad-upstreams");
    let path = dir.join("u.toml");
    std::fs::write(
        &path,
        "[[upstream]]\nname = \"a\"\napi_key_env = \"HNC_TEST_UNSET_KEY_VARIABLE\"\n",
    )
    .unwrap();
    let error = startup_error(&["--upstreams", path.to_str().unwrap()]).await;
    assert!(error.contains("HNC_UPSTREAMS"), "{error}");
    assert!(
        error.contains("HNC_TEST_UNSET_KEY_VARIABLE is not set"),
        "{error}"
    );
}

/// Azure OpenAI: the key in `api-key` (no bearer), the deployment in the path, `api-version`
/// in the query. Anything else is answered 401 or 404, as Azure would.
async fn azure_chat(uri: Uri, headers: HeaderMap, Json(request): Json<Value>) -> Response {
    if headers.get("api-key").map(|v| v.as_bytes()) != Some(b"azure-key-1") {
        return openai_error(
            StatusCode::UNAUTHORIZED,
            "Access denied",
            "invalid_request_error",
            None,
        );
    }
    assert!(
        headers.get("authorization").is_none(),
        "no bearer token for Azure"
    );
    if uri.query() != Some("api-version=2024-10-21") {
        return (StatusCode::NOT_FOUND, "Resource not found").into_response();
    }
    assert_eq!(request["response_format"]["type"], "json_schema");
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "{\"topic\":\"other\",\"confidence\":0.5}", "refusal": null}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 9, "total_tokens": 129}
    }))
    .into_response()
}

#[tokio::test]
async fn azure_deployments_get_the_api_key_header_and_the_api_version_query() {
    let router = axum::Router::new().route(
        "/openai/deployments/classifier/chat/completions",
        post(azure_chat),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    hn_classifier::tasks::spawn(async move { axum::serve(listener, router).await });
    let base = format!("http://{addr}/openai/deployments/classifier");
    let app = spawn_app(config(&[
        "--openai-base-url",
        &base,
        "--openai-api-key",
        "azure-key-1",
        "--confidence",
        "self",
        "--upstream-api",
        "chat",
        "--upstream-auth",
        "api-key",
        "--upstream-query",
        "api-version=2024-10-21",
    ]))
    .await;
    let body = app
        .classify(&["Show HN: A tiny SQLite clone", "Ask HN: Who is hiring?"])
        .await;
    assert_eq!(body.errors, 0, "{:?}", body.results);
    assert_eq!(body.results[0].topic.as_deref(), Some("other"));
    assert_eq!(body.usage.input_tokens, 240);
}
