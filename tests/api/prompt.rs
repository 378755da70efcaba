//! The prompt's fixed prefix: examples from `HNC_EXAMPLES_FILE` in it, and the provider's prompt
//! cache billing it at the cached price once it passes 1,024 tokens.

use crate::helpers::{data_lines, scratch, spawn_simulated, startup_error};

/// The first `n` items of the gold set, as an examples file.
fn examples_file(test: &str, n: usize) -> String {
    let path = scratch(test).join("examples.jsonl");
    let lines = data_lines("hn_gold_300.jsonl")[..n].join("\n");
    std::fs::write(&path, lines).unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn examples_past_1024_tokens_are_billed_at_the_cached_price_after_the_first_call() {
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(40).collect();
    let plain = spawn_simulated(&["--max-in-flight", "1"]).await;
    let without = plain.classify(&titles).await;
    plain.shutdown().await;
    let file = examples_file("examples-cached", 80);
    let app = spawn_simulated(&["--examples-file", &file, "--max-in-flight", "1"]).await;

    let with = app.classify(&titles).await;

    assert_eq!(with.errors, 0);
    assert_eq!(
        without.usage.cached_input_tokens, 0,
        "a short prompt is never cached"
    );
    let (input, cached) = (with.usage.input_tokens, with.usage.cached_input_tokens);
    assert!(input > 40 * 1024, "80 examples make a long prefix: {input}");
    // Every call but the first: the simulator has served the prefix once.
    assert!(
        cached >= 39 * 1024 && cached % 128 == 0,
        "{cached} of {input}"
    );
    let per_input_token = |u: &hn_classifier::api::body::UsageView| {
        u.cost_usd.unwrap() / (u.input_tokens + u.output_tokens) as f64
    };
    assert!(
        per_input_token(&with.usage) < per_input_token(&without.usage) * 0.5,
        "cached input costs a quarter of fresh input"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_example_with_a_label_the_taxonomy_lacks_stops_start_up_naming_it() {
    let path = scratch("examples-bad").join("examples.jsonl");
    std::fs::write(&path, "{\"title\": \"Rust 2.0\", \"label\": \"sports\"}\n").unwrap();
    let error = startup_error(&["--simulate", "--examples-file", path.to_str().unwrap()]).await;
    assert!(error.contains("HNC_EXAMPLES_FILE"), "{error}");
    assert!(error.contains("\"sports\""), "{error}");
    let missing = startup_error(&["--simulate", "--examples-file", "/nonexistent/x.jsonl"]).await;
    assert!(missing.contains("HNC_EXAMPLES_FILE"), "{missing}");
}
