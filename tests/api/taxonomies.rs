//! Taxonomies from a TOML file: listed at /taxonomies, chosen per request, each with its own
//! strict schema (the simulator validates it and answers from its enum), kept apart in the cache.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    HN_LABELS, TestApp, data_lines, get, json_of, scratch, spawn_simulated, startup_error,
};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/taxonomies.toml");

async fn post(app: &TestApp, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .post(app.url("/classify-batch"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

fn topics(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r["error"].is_null(), "{r}");
            r["topic"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_listing_shows_every_taxonomy_with_its_labels_and_the_default() {
    let app = spawn_simulated(&["--taxonomies", EXAMPLE]).await;
    let body = json_of(app.client.get(app.url("/taxonomies"))).await;
    assert_eq!(body["default"], "hn-topics");
    let names: Vec<&str> = body["taxonomies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hn-topics", "sentiment", "post-kind"]);
    let sentiment = &body["taxonomies"][1];
    assert_eq!(sentiment["labels"][0]["name"], "positive");
    assert!(
        sentiment["labels"][0]["description"]
            .as_str()
            .unwrap()
            .contains("launches")
    );
    assert_eq!(sentiment["version"].as_str().unwrap().len(), 8);
    assert_eq!(
        body["taxonomies"][2]["labels"][6],
        json!({"name": "other", "description": ""})
    );

    // The served OpenAPI document lists exactly the names this service accepts.
    let (_, document) = get(&app.url("/openapi.json")).await;
    let document: Value = serde_json::from_str(&document).unwrap();
    assert_eq!(
        document["components"]["schemas"]["ClassifyBatchRequest"]["properties"]["taxonomy"]["enum"],
        json!(["hn-topics", "sentiment", "post-kind", null])
    );
}

#[tokio::test]
async fn a_request_names_its_taxonomy_and_gets_labels_from_it_alone() {
    let app = spawn_simulated(&["--taxonomies", EXAMPLE]).await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(60).collect();
    let (status, body) = post(&app, json!({"taxonomy": "sentiment", "titles": titles})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sentiment: HashSet<String> = topics(&body).into_iter().collect();
    assert!(sentiment.is_subset(&HashSet::from(
        ["positive", "negative", "neutral"].map(String::from)
    )));
    assert_eq!(body["num_items"], 60);

    let (_, body) = post(&app, json!({"taxonomy": "hn-topics", "titles": titles})).await;
    assert!(
        topics(&body)
            .iter()
            .all(|t| HN_LABELS.contains(&t.as_str()))
    );
    let (_, body) = post(&app, json!({"titles": titles})).await;
    assert!(
        topics(&body)
            .iter()
            .all(|t| HN_LABELS.contains(&t.as_str()))
    );
}

#[tokio::test]
async fn packed_calls_carry_the_named_taxonomys_schema() {
    let app = spawn_simulated(&["--taxonomies", EXAMPLE, "--pack-size", "8"]).await;
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(40).collect();
    let (status, body) = post(&app, json!({"taxonomy": "post-kind", "titles": titles})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let kinds = [
        "show_hn", "ask_hn", "news", "tutorial", "opinion", "release", "other",
    ];
    assert!(topics(&body).iter().all(|t| kinds.contains(&t.as_str())));
    assert_eq!(body["usage"]["upstream_requests"], 5);
}

#[tokio::test]
async fn an_unknown_taxonomy_is_refused_naming_the_known_ones_before_any_call() {
    let app = spawn_simulated(&["--taxonomies", EXAMPLE]).await;
    let (status, body) = post(&app, json!({"taxonomy": "sentimental", "titles": ["a"]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "unknown_taxonomy");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"sentimental\""), "{message}");
    assert!(
        message.contains("hn-topics, sentiment, post-kind"),
        "{message}"
    );
    assert_eq!(app.sim_stats().await["requests_total"], 0);
}

#[tokio::test]
async fn the_cache_never_answers_one_taxonomy_with_anothers_label() {
    let app = spawn_simulated(&["--taxonomies", EXAMPLE, "--cache-entries", "100"]).await;
    let titles = ["Show HN: A tiny SQLite clone in Rust"];
    let (_, first) = post(&app, json!({"taxonomy": "sentiment", "titles": titles})).await;
    let (_, second) = post(&app, json!({"taxonomy": "post-kind", "titles": titles})).await;
    let (_, again) = post(&app, json!({"taxonomy": "sentiment", "titles": titles})).await;
    assert!(first["results"][0].get("cached").is_none());
    assert!(second["results"][0].get("cached").is_none(), "{second}");
    assert_eq!(again["results"][0]["cached"], true);
    assert_eq!(again["results"][0]["topic"], first["results"][0]["topic"]);
    assert_eq!(app.sim_stats().await["requests_total"], 2);
}

#[tokio::test]
async fn a_bad_taxonomy_file_stops_start_up_naming_the_setting_and_the_fault() {
    let path = scratch("bad-taxonomies").join("dup.toml");
    std::fs::write(
        &path,
        "[[taxonomy]]\nname = \"s\"\nlabels = [\"yes\", \"no\", \"yes\"]\n",
    )
    .unwrap();
    let error = startup_error(&["--simulate", "--taxonomies", path.to_str().unwrap()]).await;
    assert!(error.contains("HNC_TAXONOMIES"), "{error}");
    assert!(
        error.contains("label \"yes\" appears more than once"),
        "{error}"
    );
}
