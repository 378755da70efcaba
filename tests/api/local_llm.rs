//! End to end against a real model no one here wrote: llama.cpp's `llama-server` with Gemma 3
//! 270M, built and started by `scripts/e2e-local-llm.sh`, which passes its base URL in
//! `HNC_E2E_LLM_URL`. Ignored in the plain test run (it needs that server); the script runs it
//! with `--ignored`, and without the variable it fails rather than passing silently.
//!
//! A 270M base model labels badly and often breaks the confidence range, so these tests assert
//! on transport, schema validity and enum membership, never on which label comes back.

use std::collections::HashMap;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HN_LABELS, TestApp, config, data_lines, spawn_app};

/// Per-item codes a real model's answer may earn; anything else (timeouts, transport, 5xx) is
/// the plumbing failing, and fails the test.
const MODEL_FAULTS: [&str; 5] = [
    "confidence_out_of_range",
    "invalid_output",
    "response_incomplete",
    "off_taxonomy",
    "model_refused",
];

fn server_url() -> String {
    std::env::var("HNC_E2E_LLM_URL").expect(
        "HNC_E2E_LLM_URL is not set: run scripts/e2e-local-llm.sh, which builds and starts \
         llama-server and then runs these tests",
    )
}

async fn app_on_local_model(pack_size: &str) -> TestApp {
    let url = server_url();
    spawn_app(config(&[
        "--openai-base-url",
        &url,
        "--openai-api-key",
        "no-key-needed",
        "--upstream-api",
        "chat",
        "--openai-model",
        "gemma-3-270m",
        "--pack-size",
        pack_size,
        "--upstream-timeout",
        "120",
        "--item-deadline",
        "600",
        "--request-timeout",
        "900",
    ]))
    .await
}

/// Classifies `titles`, checks every item is a label of the taxonomy or a model fault, and
/// returns the labels (None where the model's answer was unusable) and the body.
async fn classify_checked(app: &TestApp, titles: &[String]) -> (Vec<Option<String>>, Value) {
    let response = app
        .client
        .post(app.url("/classify-batch"))
        .json(&json!({ "titles": titles }))
        .send()
        .await
        .expect("the service answers");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), titles.len(), "one result per title");
    assert_eq!(body["num_items"], titles.len());
    let mut faults: HashMap<String, usize> = HashMap::new();
    let labels = results
        .iter()
        .map(|r| match r["topic"].as_str() {
            Some(topic) => {
                assert!(HN_LABELS.contains(&topic), "{r}");
                let confidence = r["confidence"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&confidence), "{r}");
                assert!(r["error"].is_null(), "{r}");
                Some(topic.to_owned())
            }
            None => {
                let code = r["error_code"].as_str().unwrap();
                assert!(MODEL_FAULTS.contains(&code), "a plumbing failure: {r}");
                assert!(!r["error"].as_str().unwrap().is_empty());
                *faults.entry(code.to_owned()).or_default() += 1;
                None
            }
        })
        .collect::<Vec<_>>();
    let valid = labels.iter().flatten().count();
    println!(
        "{valid}/{} items valid; model faults {faults:?}; usage {}",
        titles.len(),
        body["usage"]
    );
    // The server's own token counts, summed: nonzero, and at least one call per title.
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
    (labels, body)
}

#[tokio::test]
#[ignore = "needs llama-server: run scripts/e2e-local-llm.sh"]
async fn fifty_real_titles_through_a_real_model_each_answered_or_a_clear_item_error() {
    let app = app_on_local_model("1").await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(50).collect();
    let (_, body) = classify_checked(&app, &titles).await;
    assert!(body["usage"]["upstream_requests"].as_u64().unwrap() >= 50);
}

/// Issue 7's open question: how often a packed call gives the label a single call gives. Printed,
/// not asserted: it measures the model, not our code.
#[tokio::test]
#[ignore = "needs llama-server: run scripts/e2e-local-llm.sh"]
async fn packed_and_single_calls_agree_this_often_on_a_real_model() {
    let titles: Vec<String> = data_lines("hn_titles.txt")
        .into_iter()
        .skip(50)
        .take(20)
        .collect();
    let single = app_on_local_model("1").await;
    let packed = app_on_local_model("5").await;
    let (alone, _) = classify_checked(&single, &titles).await;
    let (together, body) = classify_checked(&packed, &titles).await;
    let calls = body["usage"]["upstream_requests"].as_u64().unwrap();
    let both: Vec<(&String, &String)> = alone
        .iter()
        .zip(&together)
        .filter_map(|(a, b)| Some((a.as_ref()?, b.as_ref()?)))
        .collect();
    let agree = both.iter().filter(|(a, b)| a == b).count();
    println!(
        "packing 5 per call: {calls} calls for {} titles; both valid for {} titles, same label \
         for {agree} of them",
        titles.len(),
        both.len()
    );
}
