//! Riding the provider's limits and faults with nothing lost: retries, the adaptive limit,
//! pacing, fairness between batches, and refusing work the process cannot start.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use futures::future::join_all;

use crate::helpers::*;

#[tokio::test]
async fn under_the_fault_matrix_every_item_comes_back_in_order_and_only_final_faults_fail() {
    let titles = data_lines("hn_titles.txt")[..3000].to_vec();
    let clean = spawn_simulated(&[]).await;
    let faulty = spawn_simulated(&[
        "--sim-error-rate",
        "0.10",
        "--sim-hang-rate",
        "0.01",
        "--sim-garbage-rate",
        "0.02",
        "--sim-refusal-rate",
        "0.01",
        "--sim-burst-every-s",
        "1",
        "--sim-burst-ms",
        "100",
        // Long enough that no real answer times out on a busy 2-core machine (a timed-out
        // garbage answer would be retried and no longer fail its item); hangs cost this much.
        "--upstream-timeout",
        "1.5",
        // Five retries: with 11% of calls failing transiently, four failures in a row would
        // befall about one item in 3000 by chance; six in a row, one item in about 200 runs.
        "--max-retries",
        "5",
    ])
    .await;

    let expected = join_all(titles.chunks(500).map(|b| clean.classify(b))).await;
    let got = join_all(titles.chunks(500).map(|b| faulty.classify(b))).await;

    let (mut garbage, mut refusals, mut exhausted) = (0, 0, 0);
    for (want, got) in expected.iter().zip(&got) {
        for (want, got) in want.results.iter().zip(&got.results) {
            match got.error_code.as_deref() {
                None => assert_eq!(
                    got.topic, want.topic,
                    "same title, same label: order is kept"
                ),
                Some("invalid_output") => garbage += 1,
                Some("model_refused") => refusals += 1,
                Some(code) => {
                    let error = got.error.as_deref().unwrap();
                    assert!(error.contains("gave up after"), "{code}: {error}");
                    exhausted += 1;
                }
            }
        }
    }
    let stats = faulty.sim_stats().await;
    // Garbage is asked again once (HNC_OUTPUT_RETRIES=1): an item fails for it only when both
    // of its answers were garbage, about 2% of 2% of the items.
    let garbage_answers = stats["faults"]["garbage"].as_u64().unwrap();
    eprintln!(
        "fault matrix: {} item errors of {} ({garbage} invalid output from {garbage_answers} garbage answers, {refusals} refusals, {exhausted} exhausted)",
        garbage + refusals + exhausted,
        titles.len()
    );
    assert!(
        garbage * 2 <= garbage_answers && garbage <= 12,
        "garbage is retried once: {garbage} items failed for {garbage_answers} garbage answers"
    );
    assert_eq!(
        refusals, stats["faults"]["refusal"],
        "each refusal fails its item, once"
    );
    assert!(
        exhausted <= 2,
        "transient faults are retried away ({exhausted} exhausted): {stats}"
    );
    assert!(
        stats["faults"]["server_error"].as_u64().unwrap() > 200,
        "faults were injected: {stats}"
    );
    assert!(stats["faults"]["hang"].as_u64().unwrap() > 10, "{stats}");
    assert!(
        stats["faults"]["burst_429"].as_u64().unwrap() > 0,
        "{stats}"
    );
    clean.shutdown().await;
    faulty.shutdown().await;
}

#[tokio::test]
async fn a_600_rpm_provider_is_ridden_for_thirty_seconds_without_an_item_error() {
    let app = spawn_simulated(&["--sim-rpm", "600", "--sim-latency-ms", "50"]).await;
    let titles = &data_lines("hn_titles.txt")[..300];

    let response = app.classify(titles).await;

    let stats = app.sim_stats().await;
    assert_eq!(response.errors, 0, "{stats}");
    assert_eq!(stats["by_status"]["200"], 300);
    app.shutdown().await;
}

#[tokio::test]
async fn a_small_batch_is_not_starved_by_a_large_one() {
    let app = spawn_simulated(&[
        "--sim-latency-ms",
        "50",
        "--sim-latency-sigma",
        "0",
        "--max-in-flight",
        "10",
    ])
    .await;
    let titles = data_lines("hn_titles.txt");
    let (large, small) = (&titles[..500], &titles[500..505]);

    let started = Instant::now();
    let large_done = async {
        app.classify(large).await;
        started.elapsed()
    };
    let small_done = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.classify(small).await;
        started.elapsed()
    };
    let (large_at, small_at) = tokio::join!(large_done, small_done);

    assert!(
        small_at < large_at / 2,
        "small done at {small_at:?}, large at {large_at:?}"
    );
    app.shutdown().await;
}

fn limited_once(title: &str, call: usize) -> Response {
    if call == 1 {
        let mut response = openai_error(
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit reached. Please try again in 300ms.",
            "requests",
            Some("rate_limit_exceeded"),
        );
        response.headers_mut().insert("retry-after-ms", 300.into());
        return response;
    }
    echo_reply(title, call)
}

#[tokio::test]
async fn a_429_with_retry_after_ms_is_retried_no_sooner_than_asked() {
    let upstream = spawn_fake_upstream(limited_once).await;
    let app = spawn_against(&upstream, &[]).await;

    let response = app.classify(&["patience"]).await;

    assert_eq!(response.errors, 0);
    assert_eq!(response.usage.upstream_requests, 2);
    let times = upstream.call_times("patience");
    assert_eq!(times.len(), 2);
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_millis(300), "retried after {gap:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_batch_that_cannot_start_in_time_is_refused_as_overloaded() {
    let app = spawn_simulated(&[
        "--sim-latency-ms",
        "1000",
        "--sim-latency-sigma",
        "0",
        "--max-in-flight",
        "1",
        "--admission-wait",
        "0.2",
    ])
    .await;
    let busy = app.post_titles(&["one", "two"]);
    let late = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.post_raw(r#"{"titles":["three"]}"#, Some("application/json"))
            .await
    };
    let ((busy_status, _), late) = tokio::join!(busy, late);

    assert_eq!(busy_status, StatusCode::OK);
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(late.headers()["retry-after"], "1");
    let body: serde_json::Value = late.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    let stats = app.sim_stats().await;
    assert_eq!(
        stats["requests_total"], 2,
        "the refused batch sent nothing upstream"
    );
    app.shutdown().await;
}

/// A connection that goes silent mid-call (a NAT or load balancer dropped it without a word) is
/// found by its PINGs and replaced: the calls that were on it are retried on a fresh one, none is
/// lost, and the endpoint is not benched for one connection's death.
#[tokio::test]
async fn a_black_holed_connection_is_replaced_and_its_calls_retried() {
    let sim = spawn_sim(&["--sim-latency-ms", "400", "--sim-latency-sigma", "0.01"]).await;
    let relay = BlackHoleRelay::start(sim.addr()).await;
    let url = format!("http://{}/v1", relay.addr);
    let app = spawn_app(config(&[
        "--openai-base-url",
        &url,
        "--openai-api-key",
        "sk-test",
        "--upstream-http2",
        "--upstream-ping-interval",
        "0.5",
        "--upstream-ping-timeout",
        "0.25",
    ]))
    .await;
    let titles = data_lines("hn_titles.txt")[..40].to_vec();
    // Opens the connection.
    assert_eq!(app.classify(&titles[..2]).await.errors, 0);
    let calls = app.classify(&titles);
    let silence = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        relay.silence();
        Instant::now()
    };
    let (answer, silenced_at) = tokio::join!(calls, silence);
    let took = silenced_at.elapsed();
    assert_eq!(answer.errors, 0, "{answer:?}");
    assert!(answer.results.iter().all(|r| r.topic.is_some()));
    // Well inside the 20 s call timeout: the PING check found it, not a call's timeout.
    assert!(took < Duration::from_secs(10), "{took:?}");
    eprintln!("black hole: every call answered {took:?} after the silence");
    let metrics = get(&app.url("/metrics")).await.1;
    assert!(
        metrics.contains("upstream_benched{upstream=\"default\"} 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("benched"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    app.shutdown().await;
}
