//! Service tiers on the live path: `HNC_SERVICE_TIER` is sent, the cost is priced at the tier the
//! response says served the call, and flex calls refused for capacity move to the default tier
//! without losing an item. Flex for a model OpenAI does not offer it for stops start-up.

use serde_json::json;

use crate::helpers::{data_lines, json_of, spawn_sim, spawn_simulated, startup_error};

/// A model OpenAI offers flex for (an older one, beside the default, gpt-5.4-nano).
const FLEX_MODEL: [&str; 2] = ["--openai-model", "gpt-5-mini"];

async fn cost_of(flags: &[&str], titles: &[String]) -> (f64, usize, serde_json::Value) {
    let app = spawn_simulated(flags).await;
    let outcome = app.classify(titles).await;
    let stats = app.sim_stats().await;
    let cost = outcome
        .usage
        .cost_usd
        .expect("the simulator's model has a price");
    app.shutdown().await;
    (cost, outcome.errors, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flex_costs_half_and_gives_way_to_the_default_tier_when_refused() {
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(300).collect();
    let (standard, errors, _) = cost_of(&FLEX_MODEL, &titles).await;
    assert_eq!(errors, 0);

    let (flex, errors, stats) = cost_of(
        &[
            FLEX_MODEL[0],
            FLEX_MODEL[1],
            "--service-tier",
            "flex",
            "--sim-flex-unavailable-rate",
            "0.3",
        ],
        &titles,
    )
    .await;

    assert_eq!(
        errors, 0,
        "every refused flex call went again at the default tier"
    );
    let refused = stats["faults"]["flex_unavailable"].as_u64().unwrap_or(0);
    assert!((50..=130).contains(&refused), "about 30% refused: {stats}");
    // Served at flex (half price) for ~70%, at default for the rest.
    let ratio = flex / standard;
    assert!(
        (0.55..0.8).contains(&ratio),
        "flex cost {ratio:.3} of standard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_fallback_a_refused_flex_call_is_retried_as_flex() {
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(100).collect();
    let (_, _, stats) = cost_of(
        &[
            FLEX_MODEL[0],
            FLEX_MODEL[1],
            "--service-tier",
            "flex",
            "--flex-fallback",
            "false",
            "--sim-flex-unavailable-rate",
            "0.3",
            "--max-retries",
            "8",
        ],
        &titles,
    )
    .await;
    let refused = stats["faults"]["flex_unavailable"].as_u64().unwrap_or(0);
    let answered = stats["by_status"]["200"].as_u64().unwrap();
    assert_eq!(answered, 100);
    assert!(
        refused > 10,
        "refused calls were asked again at flex: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_is_priced_at_its_premium() {
    let titles: Vec<String> = data_lines("hn_titles.txt").into_iter().take(100).collect();
    let (standard, _, _) = cost_of(&["--service-tier", "default"], &titles).await;
    let (priority, _, _) = cost_of(&["--service-tier", "priority"], &titles).await;
    let ratio = priority / standard;
    assert!((ratio - 1.75).abs() < 1e-6, "{ratio}");
}

#[tokio::test]
async fn flex_for_a_model_not_offered_it_stops_start_up_naming_the_models_that_are() {
    let error = startup_error(&[
        "--simulate",
        "--service-tier",
        "flex",
        "--openai-model",
        "gpt-4.1-mini",
    ])
    .await;
    assert!(error.contains("HNC_SERVICE_TIER=flex"), "{error}");
    assert!(error.contains("gpt-4.1-mini"), "{error}");
    assert!(
        error.contains("o4-mini") && error.contains("gpt-5-mini"),
        "{error}"
    );
    assert!(error.contains("--batch-api"), "{error}");
    let other = [
        "--simulate",
        "--service-tier",
        "flex",
        "--openai-model",
        "gpt-4o",
    ];
    let error = startup_error(&other).await;
    assert!(error.contains("for gpt-4o;"), "{error}");
}

#[tokio::test]
async fn the_simulator_refuses_flex_as_openai_does() {
    let sim = spawn_sim(&[]).await;
    let ask = |model: &str| {
        reqwest::Client::new()
            .post(format!("{}/chat/completions", sim.base_url()))
            .bearer_auth("sim-key")
            .json(&json!({
                "model": model, "service_tier": "flex",
                "messages": [{"role": "user", "content": "Rust 2.0"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "t", "strict": true, "schema": {
                    "type": "object", "properties": {"topic": {"type": "string", "enum": ["a", "b"]}},
                    "required": ["topic"], "additionalProperties": false
                }}}
            }))
    };
    let refused = json_of(ask("gpt-4.1-mini")).await;
    assert_eq!(refused["error"]["param"], "service_tier", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-4.1-mini")
    );
    let served = json_of(ask("o4-mini")).await;
    assert_eq!(served["service_tier"], "flex", "{served}");
}
