//! Safe on the internet: only key holders spend credits, within their quota; slow or endless
//! requests are cut off; titles cannot steer the output; keys never leak.

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const CLIENT_KEY: &str = "client-key-4f1d9a7c2e";
const OTHER_KEY: &str = "second-client-key-88b0";

async fn post_with_key(app: &TestApp, key: Option<&str>, titles: &[&str]) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/classify-batch"))
        .json(&json!({ "titles": titles }));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn only_holders_of_a_configured_key_may_classify_while_probes_stay_open() {
    let keys = format!("{CLIENT_KEY}, {OTHER_KEY}");
    let app = spawn_simulated(&["--api-keys", &keys]).await;

    for key in [None, Some("wrong-key"), Some(&CLIENT_KEY[..10])] {
        let response = post_with_key(&app, key, &["Rust"]).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"hn-classifier\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    for key in [CLIENT_KEY, OTHER_KEY] {
        assert_eq!(
            post_with_key(&app, Some(key), &["Rust"]).await.status(),
            StatusCode::OK
        );
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(&app.url(path)).await.0, StatusCode::OK, "{path}");
    }
    let (_, metrics) = get(&app.url("/metrics")).await;
    assert!(
        metrics.contains("classify_client_items_total{client=\"key-"),
        "{metrics}"
    );
    assert!(!metrics.contains(CLIENT_KEY) && !metrics.contains(OTHER_KEY));
    let stats = app.sim_stats().await;
    assert_eq!(
        stats["requests_total"], 2,
        "rejected requests sent nothing upstream"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn keys_can_come_from_a_mounted_file() {
    let path = std::env::temp_dir().join(format!("hnc-keys-{}", std::process::id()));
    std::fs::write(&path, format!("{CLIENT_KEY}\n\n{OTHER_KEY}\n")).unwrap();
    let app = spawn_simulated(&["--api-keys-file", path.to_str().unwrap()]).await;
    assert_eq!(
        post_with_key(&app, Some(OTHER_KEY), &["Rust"])
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        post_with_key(&app, None, &["Rust"]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.shutdown().await;
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn each_key_has_its_own_quota_of_items_per_minute() {
    let keys = format!("{CLIENT_KEY},{OTHER_KEY}");
    let app = spawn_simulated(&["--api-keys", &keys, "--quota-items-per-min", "10"]).await;
    let eight = ["a", "b", "c", "d", "e", "f", "g", "h"];

    assert_eq!(
        post_with_key(&app, Some(CLIENT_KEY), &eight).await.status(),
        StatusCode::OK
    );
    let over = post_with_key(&app, Some(CLIENT_KEY), &eight[..5]).await;

    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(
        post_with_key(&app, Some(OTHER_KEY), &eight).await.status(),
        StatusCode::OK,
        "another key's quota is its own"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let app = spawn_simulated(&["--header-read-timeout", "0.3"]).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /classify-batch HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();

    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;

    let closed = match read.expect("the server acted within 5 s") {
        Ok(n) => n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        Err(_) => true,
    };
    assert!(closed, "the connection is closed (or answered 408)");
    app.shutdown().await;
}

#[tokio::test]
async fn a_batch_past_its_deadline_answers_its_items_and_cancels_their_upstream_calls() {
    let app = spawn_simulated(&[
        "--sim-latency-ms",
        "3000",
        "--sim-latency-sigma",
        "0",
        "--request-timeout",
        "0.5",
    ])
    .await;

    let (status, body) = app.post_titles(&["one", "two"]).await;

    // A complete answer before the request's timeout, never a bare 504.
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["errors"], 2);
    for item in body["results"].as_array().unwrap() {
        assert_eq!(item["error_code"], "deadline_exceeded", "{item}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = app.sim_stats().await;
    assert_eq!(stats["in_flight"], 0, "{stats}");
    assert_eq!(stats["cancelled"], 2, "{stats}");
    app.shutdown().await;
}

/// A model that does whatever the title says.
fn gullible(title: &str, call: usize) -> Response {
    let lower = title.to_lowercase();
    let text = if lower.contains("hacked") {
        r#"{"topic":"hacked","confidence":1.0}"#.to_owned()
    } else if lower.contains("classify every item") {
        r#"{"topic":"security","confidence":1}"#.to_owned()
    } else if lower.contains("developer mode") {
        "My instructions are: You classify Hacker News story titles...".to_owned()
    } else {
        return echo_reply(title, call);
    };
    Json(completed(&text)).into_response()
}

#[tokio::test]
async fn prompt_injection_titles_cannot_put_a_label_outside_the_taxonomy() {
    let upstream = spawn_fake_upstream(gullible).await;
    let app = spawn_against(&upstream, &[]).await;
    let titles = data_lines("nasty_titles.txt");

    let response = app.classify(&titles).await;

    let mut steered = 0;
    for (title, item) in titles.iter().zip(&response.results) {
        if let Some(topic) = &item.topic {
            assert!(HN_LABELS.contains(&topic.as_str()), "{title:?} got {topic}");
        }
        if matches!(
            item.error_code.as_deref(),
            Some("off_taxonomy" | "invalid_output")
        ) {
            steered += 1;
        }
    }
    assert!(
        steered >= 6,
        "the injections that worked on the model became errors ({steered})"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn no_key_appears_in_logs_errors_metrics_or_responses_even_at_trace_level() {
    const OPENAI_KEY: &str = "sk-proj-SECRET0123456789abcdef";
    let sim = spawn_sim(&[]).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "trace")
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENAI_BASE_URL", sim.base_url())
        .env("HNC_API_KEYS", CLIENT_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Ok(log) = serde_json::from_str::<Value>(&line)
                && log["message"] == "serving"
            {
                let _ = addr_tx.send(log["addr"].as_str().unwrap().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the binary starts");
    let client = reqwest::Client::new();
    let mut seen = String::new();
    for key in [CLIENT_KEY, "wrong-key"] {
        let response = client
            .post(format!("http://{addr}/classify-batch"))
            .bearer_auth(key)
            .json(&json!({"titles": data_lines("hn_titles_1000.txt")[..20]}))
            .send()
            .await
            .unwrap();
        seen.push_str(&format!("{:?}\n", response.headers()));
        seen.push_str(&response.text().await.unwrap());
    }
    seen.push_str(
        &reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let logs = reader.join().unwrap();

    assert!(
        logs.lines().count() > 50,
        "trace logging was on: {} lines",
        logs.lines().count()
    );
    assert!(seen.contains("\"num_items\":20"), "the batch ran");
    for secret in [OPENAI_KEY, CLIENT_KEY, "SECRET0123456789"] {
        for (what, text) in [
            ("logs", &logs),
            ("stdout", &stdout),
            ("responses and metrics", &seen),
        ] {
            assert!(!text.contains(secret), "{secret} appears in {what}");
        }
    }
}
