//! Fewer calls and earlier answers: streaming results as they complete, one upstream call per
//! distinct title in flight, and the result cache.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::*;

async fn post_ndjson(app: &TestApp, titles: &[&str]) -> reqwest::Response {
    let response = app
        .client
        .post(app.url("/classify-batch"))
        .header("accept", "application/x-ndjson")
        .json(&json!({ "titles": titles }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    response
}

fn slow_for_slow(title: &str) -> Duration {
    if title == "slow" {
        Duration::from_millis(1500)
    } else {
        Duration::ZERO
    }
}

#[tokio::test]
async fn ndjson_streams_each_item_as_it_completes_then_a_summary() {
    let upstream = spawn_fake_upstream_with_delay(echo_reply, slow_for_slow).await;
    let app = spawn_against(&upstream, &[]).await;
    let titles = ["slow", "fast one", "   ", "fast two"];
    let mut response = post_ndjson(&app, &titles).await;

    let first = response.chunk().await.unwrap().expect("a first chunk");
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(
        !first.contains("\"done\""),
        "the fast items arrive before the slow one: {first}"
    );

    let mut text = first;
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), titles.len() + 1);
    let done = lines.last().unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(
        (done["num_items"].as_u64(), done["errors"].as_u64()),
        (Some(4), Some(1))
    );
    assert_eq!(done["usage"]["upstream_requests"], 3);
    let items = &lines[..titles.len()];
    let indexes: BTreeSet<u64> = items.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(indexes, (0..4).collect(), "each index exactly once");
    assert_eq!(
        items.last().unwrap()["index"],
        0,
        "the slow item comes last"
    );
    for line in items {
        let title = titles[line["index"].as_u64().unwrap() as usize];
        match title.trim() {
            "" => assert_eq!(line["error_code"], "title_empty"),
            t => assert_eq!(line["topic"], echo_answer(t).0),
        }
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_cancels_the_rest() {
    let app = spawn_simulated(&[
        "--sim-latency-ms",
        "300",
        "--sim-latency-sigma",
        "0",
        "--request-concurrency",
        "5",
    ])
    .await;
    let titles = data_lines("hn_titles_1000.txt");
    let titles: Vec<&str> = titles[..100].iter().map(String::as_str).collect();
    let mut response = post_ndjson(&app, &titles).await;
    response.chunk().await.unwrap().expect("a first line");
    drop(response);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = app.sim_stats().await;
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert!(
        stats["requests_total"].as_u64().unwrap() + stats["cancelled"].as_u64().unwrap() <= 20,
        "{stats}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn fifty_copies_of_one_title_make_one_upstream_call() {
    let app = spawn_simulated(&["--sim-latency-ms", "100"]).await;
    let titles = vec!["Show HN: I built a rocket-fast JSON parser in Rust"; 50];

    let response = app.classify(&titles).await;

    assert_eq!(response.errors, 0);
    assert_eq!(response.usage.upstream_requests, 1);
    let topics: BTreeSet<_> = response.results.iter().map(|r| r.topic.clone()).collect();
    assert_eq!(topics.len(), 1, "every copy gets the same answer");
    assert_eq!(app.sim_stats().await["requests_total"], 1);
    app.shutdown().await;
}

#[tokio::test]
async fn identical_titles_in_concurrent_batches_share_calls() {
    let app = spawn_simulated(&["--sim-latency-ms", "200", "--sim-latency-sigma", "0"]).await;
    let titles = data_lines("hn_titles_1000.txt")[..40].to_vec();

    let responses = join_all((0..3).map(|_| app.classify(&titles))).await;

    assert!(responses.iter().all(|r| r.errors == 0));
    let calls: u64 = responses.iter().map(|r| r.usage.upstream_requests).sum();
    assert_eq!(
        calls, 40,
        "one call per distinct title across the three batches"
    );
    assert_eq!(app.sim_stats().await["requests_total"], 40);
    app.shutdown().await;
}

#[tokio::test]
async fn with_the_cache_on_a_repeated_batch_makes_no_call_and_costs_no_tokens() {
    let app = spawn_simulated(&["--cache-entries", "1000", "--cache-ttl", "60"]).await;
    let titles = data_lines("hn_titles_1000.txt")[..30].to_vec();

    let first = app.classify(&titles).await;
    let second = app.classify(&titles).await;

    assert_eq!(
        app.sim_stats().await["requests_total"],
        30,
        "the second batch made no call"
    );
    assert!(first.results.iter().all(|r| !r.cached));
    assert!(second.results.iter().all(|r| r.cached));
    assert_eq!(
        (
            second.usage.upstream_requests,
            second.usage.input_tokens,
            second.usage.output_tokens
        ),
        (0, 0, 0)
    );
    for (a, b) in first.results.iter().zip(&second.results) {
        assert_eq!((&a.topic, a.confidence), (&b.topic, b.confidence));
    }
    app.shutdown().await;
}

#[tokio::test]
async fn without_the_cache_a_repeated_batch_calls_again() {
    let app = spawn_simulated(&[]).await;
    let titles = data_lines("hn_titles_1000.txt")[..10].to_vec();
    app.classify(&titles).await;
    let second = app.classify(&titles).await;
    assert_eq!(second.usage.upstream_requests, 10);
    assert_eq!(app.sim_stats().await["requests_total"], 20);
    app.shutdown().await;
}

fn with_cached_prompt(title: &str, _call: usize) -> axum::response::Response {
    let (topic, confidence) = echo_answer(title);
    let mut body = completed(&json!({"topic": topic, "confidence": confidence}).to_string());
    body["usage"] = json!({"input_tokens": 1000, "input_tokens_details": {"cached_tokens": 600}, "output_tokens": 20});
    axum::response::IntoResponse::into_response(axum::Json(body))
}

#[tokio::test]
async fn cost_is_priced_by_model_with_cached_input_at_the_cached_price() {
    let upstream = spawn_fake_upstream(with_cached_prompt).await;
    let app = spawn_against(&upstream, &["--openai-model", "gpt-4.1-mini"]).await;

    let response = app.classify(&["one", "two"]).await;

    let usage = &response.usage;
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens
        ),
        (2000, 1200, 40)
    );
    // gpt-4.1-mini: $0.40 per million input, $0.10 cached input, $1.60 output.
    let expected = (800.0 * 0.40 + 1200.0 * 0.10 + 40.0 * 1.60) / 1e6;
    assert!(
        (usage.cost_usd.unwrap() - expected).abs() < 1e-12,
        "{:?}",
        usage.cost_usd
    );
    app.shutdown().await;

    let unpriced = spawn_against(&upstream, &["--openai-model", "my-private-model"]).await;
    assert_eq!(
        unpriced.classify(&["one"]).await.usage.cost_usd,
        None,
        "no made-up price"
    );
    unpriced.shutdown().await;
}

#[tokio::test]
async fn packing_five_titles_per_call_gives_the_same_labels_with_a_fifth_of_the_calls() {
    let titles = data_lines("hn_titles_1000.txt")[..50].to_vec();
    let single = spawn_simulated(&[]).await;
    let packed = spawn_simulated(&["--pack-size", "5"]).await;

    let one_by_one = single.classify(&titles).await;
    let in_packs = packed.classify(&titles).await;

    assert_eq!(in_packs.errors, 0);
    assert_eq!(in_packs.usage.upstream_requests, 10);
    assert_eq!(packed.sim_stats().await["requests_total"], 10);
    for (a, b) in one_by_one.results.iter().zip(&in_packs.results) {
        assert_eq!(
            (&a.topic, a.confidence),
            (&b.topic, b.confidence),
            "same label, in order"
        );
    }
    assert!(
        in_packs.usage.input_tokens < one_by_one.usage.input_tokens / 2,
        "the prompt is paid once per pack"
    );
    single.shutdown().await;
    packed.shutdown().await;
}

/// Answers packs badly: drops the first item and gives the second an invented label.
fn careless_packer(content: &str, call: usize) -> axum::response::Response {
    let Ok(items) = serde_json::from_str::<Vec<Value>>(content) else {
        return echo_reply(content, call);
    };
    let answers: Vec<Value> = items
        .iter()
        .skip(1)
        .map(|item| {
            let (topic, confidence) = echo_answer(item["title"].as_str().unwrap());
            let topic = if item["id"] == 1 { "hacked" } else { topic };
            json!({"id": item["id"], "topic": topic, "confidence": confidence})
        })
        .collect();
    let text = json!({ "items": answers }).to_string();
    axum::response::IntoResponse::into_response(axum::Json(completed(&text)))
}

#[tokio::test]
async fn items_a_packed_answer_gets_wrong_are_retried_alone_and_none_is_lost() {
    let upstream = spawn_fake_upstream(careless_packer).await;
    let app = spawn_against(&upstream, &["--pack-size", "5"]).await;
    let titles = ["alpha", "bravo", "charlie", "delta", "echo"];

    let response = app.classify(&titles).await;

    assert_eq!(response.errors, 0);
    for (title, item) in titles.iter().zip(&response.results) {
        assert_eq!(item.topic.as_deref(), Some(echo_answer(title).0), "{title}");
    }
    assert_eq!(
        response.usage.upstream_requests, 3,
        "one pack, then the two it got wrong alone"
    );
    assert_eq!(upstream.call_times("alpha").len(), 1);
    assert_eq!(upstream.call_times("bravo").len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn packed_nasty_titles_each_come_back_once() {
    let app = spawn_simulated(&["--pack-size", "20"]).await;
    let titles = data_lines("nasty_titles.txt");

    let response = app.classify(&titles).await;

    assert_eq!(response.errors, 3, "the empty and the two over-long titles");
    assert_eq!(
        response.usage.upstream_requests, 4,
        "67 titles in packs of 20"
    );
    app.shutdown().await;
}
