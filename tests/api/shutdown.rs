//! Graceful shutdown of the real binary: SIGTERM mid-batch.

use std::process::Command;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::Value;

use crate::helpers::{data_lines, sigterm, start_binary};

#[tokio::test]
async fn sigterm_lets_the_running_batch_finish_turns_readiness_off_and_exits_zero() {
    // 20 titles, 2 at a time, 200 ms each: about two seconds of work.
    let (mut child, addr) = start_binary(&[
        "--simulate",
        "--sim-latency-ms",
        "200",
        "--sim-latency-sigma",
        "0",
        "--request-concurrency",
        "2",
    ]);
    let client = reqwest::Client::new();
    let titles = data_lines("hn_titles_1000.txt")[..20].to_vec();
    let batch = hn_classifier::tasks::spawn({
        let (client, url) = (client.clone(), format!("http://{addr}/classify-batch"));
        async move {
            let response = client
                .post(url)
                .json(&serde_json::json!({"titles": titles}))
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = client
        .post(format!("http://{addr}/classify-batch"))
        .json(&serde_json::json!({"titles": ["late"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"]["code"],
        "shutting_down"
    );

    let (status, body) = batch.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["num_items"], 20);
    assert_eq!(body["errors"], 0);
    let exit = hn_classifier::tasks::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
}

#[tokio::test]
async fn the_binary_refuses_to_start_without_a_key_and_says_how_to_run_offline() {
    let output = Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OPENAI_API_KEY is not set"), "{stderr}");
    assert!(
        stderr.contains("hn-classifier serve --simulate"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_the_variable_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["serve", "--simulate"])
        .env("HNC_MAX_BATCH", "lots")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("HNC_MAX_BATCH"), "{stderr}");
}
