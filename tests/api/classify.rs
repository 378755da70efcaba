//! The happy path and its guarantees: every title gets one result, in input order.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;

use crate::helpers::*;

#[tokio::test]
async fn thousand_real_titles_as_twenty_concurrent_batches_all_come_back_labelled() {
    let app = spawn_simulated(&[]).await;
    let titles = data_lines("hn_titles_1000.txt");
    assert_eq!(titles.len(), 1000);

    let responses = join_all(titles.chunks(50).map(|batch| app.classify(batch))).await;

    let mut labelled = 0;
    for response in &responses {
        assert_eq!(response.errors, 0);
        for item in &response.results {
            assert!(item.error.is_none(), "{:?}", item.error);
            assert!(HN_LABELS.contains(&item.topic.as_deref().unwrap()));
            assert!((0.0..=1.0).contains(&item.confidence.unwrap()));
            labelled += 1;
        }
        assert_eq!(response.usage.upstream_requests, 50);
        assert!(
            response.usage.input_tokens > 50 * 50,
            "prompt tokens are counted"
        );
    }
    assert_eq!(labelled, 1000);
    let stats = app.sim_stats().await;
    assert_eq!(stats["requests_total"], 1000);
    app.shutdown().await;
}

#[tokio::test]
async fn results_keep_input_order_when_calls_finish_out_of_order() {
    // Latency varies by title, so calls complete in a different order than they were sent.
    let upstream = spawn_fake_upstream_with_delay(echo_reply, |t| {
        std::time::Duration::from_millis((echo_answer(t).1 * 20.0) as u64)
    })
    .await;
    let app = spawn_against(&upstream, &[]).await;
    let titles = data_lines("hn_titles_1000.txt")[..300].to_vec();

    let response = app.classify(&titles).await;

    for (title, item) in titles.iter().zip(&response.results) {
        let (topic, confidence) = echo_answer(title);
        assert_eq!(item.topic.as_deref(), Some(topic), "{title}");
        assert_eq!(item.confidence, Some(confidence), "{title}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn every_nasty_title_gets_exactly_one_result_and_no_server_error() {
    let app = spawn_simulated(&[]).await;
    let titles = data_lines("nasty_titles.txt");
    assert_eq!(titles.len(), 70);

    let response = app.classify(&titles).await;

    for (i, item) in response.results.iter().enumerate() {
        let line = i + 1;
        match line {
            32 => assert_eq!(
                item.error_code.as_deref(),
                Some("title_empty"),
                "line {line}"
            ),
            69 | 70 => assert_eq!(
                item.error_code.as_deref(),
                Some("title_too_long"),
                "line {line}"
            ),
            _ => assert!(
                item.topic
                    .as_deref()
                    .is_some_and(|t| HN_LABELS.contains(&t)),
                "line {line}: {item:?}"
            ),
        }
    }
    assert_eq!(response.errors, 3);
    app.shutdown().await;
}

#[tokio::test]
async fn empty_and_overlong_titles_fail_alone_while_the_rest_is_classified() {
    let app = spawn_simulated(&["--max-title-chars", "10"]).await;
    // Ten crabs are 10 characters but 40 bytes: the limit counts characters.
    let crabs = "🦀".repeat(10);
    let titles = [
        "Rust 2.0",
        " \t\u{3000} ",
        &crabs,
        "elevenchars",
        "  padded  ",
    ];

    let response = app.classify(&titles).await;

    let codes: Vec<_> = response
        .results
        .iter()
        .map(|r| r.error_code.as_deref())
        .collect();
    assert_eq!(
        codes,
        [
            None,
            Some("title_empty"),
            None,
            Some("title_too_long"),
            None
        ]
    );
    assert!(
        response.results[3]
            .error
            .as_deref()
            .unwrap()
            .contains("11 characters")
    );
    assert_eq!(response.errors, 2);
    assert_eq!(
        response.usage.upstream_requests, 3,
        "rejected titles are never sent"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn the_simulator_never_sees_more_calls_in_flight_than_request_concurrency() {
    let app = spawn_app(config(&[
        "--simulate",
        "--sim-latency-ms",
        "200",
        "--sim-latency-sigma",
        "0.2",
        "--request-concurrency",
        "8",
    ]))
    .await;
    let titles = &data_lines("hn_titles_1000.txt")[..200];

    app.classify(titles).await;

    let stats = app.sim_stats().await;
    assert_eq!(stats["requests_total"], 200);
    assert_eq!(
        stats["max_in_flight"], 8,
        "the bound is used, and never exceeded"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_simulated(&[]).await;
    let given = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "abc-123");
    let made = app.post_raw("{}", Some("application/json")).await;
    assert_eq!(
        made.headers()["x-request-id"].len(),
        36,
        "a UUID, on error responses too"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_outstanding_upstream_calls() {
    let app = spawn_app(config(&[
        "--simulate",
        "--sim-latency-ms",
        "300",
        "--sim-latency-sigma",
        "0",
        "--request-concurrency",
        "10",
    ]))
    .await;
    let titles = data_lines("hn_titles_1000.txt")[..200].to_vec();
    let request = app
        .client
        .post(app.url("/classify-batch"))
        .json(&serde_json::json!({ "titles": titles }));
    // Give up after about two rounds of calls: the batch needs twenty.
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(700), request.send()).await;
    assert!(gave_up.is_err(), "the batch cannot have finished yet");

    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let stats = app.sim_stats().await;
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert!(
        stats["cancelled"].as_u64().unwrap() >= 1,
        "in-flight calls were abandoned: {stats}"
    );
    let sent = stats["requests_total"].as_u64().unwrap() + stats["cancelled"].as_u64().unwrap();
    assert!(sent <= 40, "the remaining titles were never sent: {stats}");
    app.shutdown().await;
}

/// An upstream that hangs up every connection 150 ms after accepting it (no GOAWAY, no
/// `Connection: close`), and how many it accepted.
async fn hanging_up_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let app = axum::Router::new().route(
        "/v1/responses",
        axum::routing::post(
            |axum::Json(request): axum::Json<serde_json::Value>| async move {
                echo_reply(request["input"][0]["content"].as_str().unwrap_or(""), 1)
            },
        ),
    );
    hn_classifier::tasks::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            hn_classifier::tasks::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                let serving = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                let _ = tokio::time::timeout(Duration::from_millis(150), serving).await;
            });
        }
    });
    (format!("http://{addr}/v1"), accepted)
}

/// Connections the upstream closed are opened again, over HTTP/1.1 and HTTP/2 alike: a second
/// round of calls after every connection of the first was dropped loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_are_opened_again() {
    let titles = data_lines("hn_titles.txt")[..50].to_vec();
    for http2 in [false, true] {
        let (url, accepted) = hanging_up_upstream().await;
        let mut flags = vec![
            "--openai-base-url",
            url.as_str(),
            "--openai-api-key",
            "sk-test",
            "--confidence",
            "self",
        ];
        if http2 {
            flags.extend([
                "--upstream-http2",
                "--upstream-streams-per-connection",
                "10",
            ]);
        }
        let app = spawn_app(config(&flags)).await;
        for round in 0..2 {
            let answer = app.classify(&titles).await;
            assert_eq!(answer.errors, 0, "http2 {http2}, round {round}: {answer:?}");
            for (title, result) in titles.iter().zip(&answer.results) {
                assert_eq!(result.topic.as_deref(), Some(echo_answer(title).0));
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let opened = accepted.load(Ordering::Relaxed);
        assert!(
            opened >= 2,
            "http2 {http2}: the second round reconnected ({opened} connections)"
        );
        app.shutdown().await;
    }
}

/// HNC_UPSTREAM_HTTP2: many calls share each connection (here at most 40 per connection, so
/// 200 in flight need 5), and every title still comes back labelled, in order.
#[tokio::test]
async fn calls_can_travel_over_http2_several_per_connection() {
    let app = spawn_simulated(&[
        "--upstream-http2",
        "--upstream-streams-per-connection",
        "40",
        "--max-in-flight",
        "200",
        "--sim-latency-ms",
        "20",
    ])
    .await;
    let titles = data_lines("hn_titles.txt")[..400].to_vec();
    let responses = join_all(titles.chunks(100).map(|batch| app.classify(batch))).await;
    for (response, batch) in responses.iter().zip(titles.chunks(100)) {
        assert_eq!(response.errors, 0);
        assert_eq!(response.results.len(), batch.len());
    }
    assert_eq!(app.sim_stats().await["requests_total"], 400);
    app.shutdown().await;
}
