//! Faults that do not answer: the provider (the simulator as its own process) killed mid-run
//! and started again on the same port; deadlines that are kept; a client that stops reading.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use hn_classifier::api::body::ClassifyBatchResponse;
use serde_json::{Value, json};

use crate::helpers::{TestApp, config, data_lines, get, spawn_app, spawn_simulated};

/// `hn-classifier sim` on a fixed loopback port, so that it can be killed (SIGKILL: its
/// connections reset, nothing answers) and started again at the same address.
pub struct Provider {
    pub addr: SocketAddr,
    flags: Vec<String>,
    child: Option<Child>,
}

impl Provider {
    pub fn start(flags: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut provider = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            child: None,
        };
        provider.restart();
        provider
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on the same port, and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
            .args(["sim", "--listen", &self.addr.to_string()])
            .args(&self.flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "sim listens");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The app against `provider`, with extra flags.
pub async fn spawn_against_provider(provider: &Provider, extra: &[&str]) -> TestApp {
    let url = provider.base_url();
    let base = [
        "--openai-base-url",
        url.as_str(),
        "--openai-api-key",
        "sk-sim",
    ];
    spawn_app(config(&[&base[..], extra].concat())).await
}

/// `batches` of `size` distinct real titles posted at once (plain JSON); each answer's status
/// and body.
async fn post_batches(app: &TestApp, batches: usize, size: usize) -> Vec<(StatusCode, Value)> {
    let titles = data_lines("hn_titles.txt");
    let requests = (0..batches).map(|b| {
        let batch: Vec<String> = (0..size)
            .map(|i| format!("{} #{b}-{i}", titles[(b * size + i) % titles.len()]))
            .collect();
        let request = app
            .client
            .post(app.url("/classify-batch"))
            .json(&json!({ "titles": batch }));
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    futures::future::join_all(requests).await
}

/// Kills the provider `after` into a run, keeps it down for `outage`, starts it again, and
/// checks `/readyz` every 100 ms meanwhile: the statuses it saw.
async fn outage(
    app: &TestApp,
    provider: &mut Provider,
    after: Duration,
    outage: Duration,
) -> Vec<StatusCode> {
    tokio::time::sleep(after).await;
    provider.kill();
    let down = Instant::now();
    let mut readiness = Vec::new();
    while down.elapsed() < outage {
        readiness.push(get(&app.url("/readyz")).await.0);
        let (_, health) = get(&app.url("/healthz")).await;
        assert!(health.contains("\"status\":\"ok\""), "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    provider.restart();
    readiness
}

async fn an_outage_costs_no_item(seconds: u64, extra: &[&str]) {
    let mut provider = Provider::start(&["--sim-latency-ms", "200", "--sim-latency-sigma", "0"]);
    let app = spawn_against_provider(&provider, extra).await;
    // 8 batches of 100 at once, 50 calls in flight each: about 3 s of work at 200 ms a call.
    let (answers, readiness) = tokio::join!(
        post_batches(&app, 8, 100),
        outage(
            &app,
            &mut provider,
            Duration::from_millis(700),
            Duration::from_secs(seconds)
        )
    );
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["num_items"], 100);
        let errors: Vec<&Value> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["error"].is_null())
            .collect();
        assert!(
            errors.is_empty(),
            "a {seconds} s outage lost items: {errors:?}"
        );
    }
    assert!(
        readiness.iter().all(|s| *s == StatusCode::OK),
        "readiness stays on through the provider's outage: {readiness:?}"
    );
    let (_, health) = get(&app.url("/healthz")).await;
    assert!(health.contains("\"upstream\":\"ok\""), "{health}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_three_second_outage_of_the_provider_costs_waiting_not_items() {
    an_outage_costs_no_item(3, &[]).await;
}

#[tokio::test]
async fn a_ten_second_outage_of_the_provider_costs_waiting_not_items() {
    an_outage_costs_no_item(10, &[]).await;
}

#[tokio::test]
async fn over_http2_a_three_second_outage_costs_no_item_either() {
    an_outage_costs_no_item(3, &["--upstream-http2", "true"]).await;
}

#[tokio::test]
async fn with_a_short_item_deadline_a_long_outage_answers_every_item_at_its_deadline() {
    let mut provider = Provider::start(&["--sim-latency-ms", "50"]);
    let app = spawn_against_provider(&provider, &["--item-deadline", "2"]).await;
    assert_eq!(app.classify(&["warm up the connections"]).await.errors, 0);
    provider.kill();

    let started = Instant::now();
    let answers = post_batches(&app, 1, 40).await;
    let took = started.elapsed();

    let (status, body) = &answers[0];
    assert_eq!(*status, StatusCode::OK, "{body}");
    let body: ClassifyBatchResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(body.num_items, 40);
    assert_eq!(body.errors, 40);
    for item in &body.results {
        assert_eq!(item.error_code.as_deref(), Some("upstream_unreachable"));
        let error = item.error.as_deref().unwrap();
        assert!(
            error.contains("could not connect"),
            "the last cause: {error}"
        );
        // "...; gave up after N attempts in 2.0s (item deadline reached)"
        let waited: f64 = error
            .split(" in ")
            .last()
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("says how long it waited: {error}"));
        assert!((1.9..2.6).contains(&waited), "at its deadline: {error}");
    }
    assert!(took < Duration::from_secs(5), "none later: {took:?}");
    let (_, health) = get(&app.url("/healthz")).await;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["upstream"], "unavailable", "{health}");
    assert_eq!(health["endpoints"][0]["state"], "unreachable", "{health}");
    assert!(
        health["endpoints"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{health}"
    );
    let (_, metrics) = get(&app.url("/metrics")).await;
    let unreachable = metrics
        .lines()
        .find(|l| l.starts_with("upstream_unreachable_seconds{"))
        .unwrap();
    assert!(!unreachable.ends_with(" 0"), "{unreachable}");
    assert_eq!(get(&app.url("/readyz")).await.0, StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn two_large_batches_over_a_slow_rate_limit_get_complete_answers_or_an_early_refusal() {
    let provider = Provider::start(&["--sim-latency-ms", "0", "--sim-rpm", "600"]);
    // 600 calls a minute is 10 a second: a batch of 300 needs 30 s, its deadline is 5 s.
    let app =
        spawn_against_provider(&provider, &["--rpm-limit", "600", "--request-timeout", "6"]).await;
    let started = Instant::now();
    let (first, second) = tokio::join!(post_batches(&app, 1, 300), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answers = post_batches(&app, 1, 300).await;
        (answers, started.elapsed())
    });
    let (status, body) = &first[0];
    assert_eq!(
        *status,
        StatusCode::OK,
        "a complete answer, never a 504: {body}"
    );
    let body: ClassifyBatchResponse = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(body.results.len(), 300);
    let done = body.results.iter().filter(|r| r.error.is_none()).count();
    let late = body
        .results
        .iter()
        .filter(|r| r.error_code.as_deref() == Some("deadline_exceeded"))
        .count();
    assert!(done > 0, "what the deadline allowed was done");
    assert_eq!(done + late, 300, "the rest answers deadline_exceeded");
    assert_eq!(
        body.usage.upstream_requests as usize, done,
        "nothing paid for is lost"
    );

    let ((status, refused), when) = (&second.0[0], second.1);
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "overloaded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{refused}"
    );
    assert!(when < Duration::from_secs(2), "refused at once: {when:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_refused_batch_is_not_charged_to_the_keys_quota() {
    let app = spawn_simulated(&[
        "--sim-latency-ms",
        "2000",
        "--max-in-flight",
        "1",
        "--admission-wait",
        "0.2",
        "--quota-items-per-min",
        "10",
    ])
    .await;
    let busy = {
        let request = app
            .client
            .post(app.url("/classify-batch"))
            .json(&json!({"titles": ["one slow title"]}));
        hn_classifier::tasks::spawn(async move { request.send().await.unwrap().status() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let (status, body) = app.post_titles(&["a", "b", "c", "d", "e"]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "overloaded");
    }
    assert_eq!(busy.await.unwrap(), StatusCode::OK);
    // 25 items were refused; had they been charged, 9 more would be over the quota of 10.
    let (status, body) = app
        .post_titles(&["1", "2", "3", "4", "5", "6", "7", "8", "9"])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_streaming_client_that_stops_reading_does_not_pause_its_batch() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_simulated(&["--sim-latency-ms", "20", "--request-concurrency", "10"]).await;
    let titles: Vec<String> = data_lines("hn_titles_1000.txt")[..200].to_vec();
    let body = serde_json::to_vec(&json!({ "titles": titles })).unwrap();
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /classify-batch HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         accept: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&body).await.unwrap();
    // Not a byte read: 200 titles at 10 at a time and 20 ms each take about 0.4 s.
    let started = Instant::now();
    loop {
        let stats = app.sim_stats().await;
        if stats["by_status"]["200"] == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the batch went on without a reader: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            answer.extend_from_slice(&chunk[..n]);
            if n == 0 || answer.windows(12).any(|w| w == b"\"done\":true,") {
                break;
            }
        }
    });
    read.await.expect("the buffered lines arrive");
    let text = String::from_utf8_lossy(&answer);
    let items = text.matches("\"index\":").count();
    assert_eq!(items, 200, "every line was kept for the reader");
    app.shutdown().await;
}
