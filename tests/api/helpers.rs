//! Test harness: the real application on 127.0.0.1:0, against the built-in simulator or a small
//! in-process fake upstream, plus request helpers. Logs stay quiet unless TEST_LOG is set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::net::TcpListener as StdListener;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use hn_classifier::api::body::ClassifyBatchResponse;
use hn_classifier::cli::{Cli, Command};
use hn_classifier::config::ServeConfig;
use hn_classifier::sim::SimServer;
use hn_classifier::startup::Application;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const HN_LABELS: [&str; 10] = [
    "ai_ml_agents",
    "programming_dev_tools",
    "infra_cloud_ops",
    "hardware_electronics",
    "security_privacy",
    "business_startups_career",
    "science_math_research",
    "society_policy_economy",
    "culture_media_games",
    "other",
];

pub fn data_lines(file: &str) -> Vec<String> {
    let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .map(str::to_owned)
        .collect()
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("debug")
                .with_test_writer()
                .init();
        }
    });
}

/// `serve` flags on top of `--listen 127.0.0.1:0`, parsed exactly as the binary parses them.
pub fn config(extra: &[&str]) -> ServeConfig {
    let args = [
        &["hn-classifier", "serve", "--listen", "127.0.0.1:0"],
        extra,
    ]
    .concat();
    match Cli::try_parse_from(args).expect("valid test flags").command {
        Command::Serve(c) => c,
        _ => unreachable!("parsed as serve"),
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The in-process simulator's address, when there is one.
    pub sim_addr: Option<SocketAddr>,
    /// The metrics port, when `--metrics-listen` gave `/metrics` its own.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The app on the in-process simulator, with extra flags.
pub async fn spawn_simulated(extra: &[&str]) -> TestApp {
    spawn_app(config(
        &[&["--simulate", "--sim-latency-ms", "0"], extra].concat(),
    ))
    .await
}

/// The app against `upstream` (a fake), with extra flags. The fakes answer as a model asked for
/// a written confidence does (`--confidence self`); `confidence.rs` covers the logprobs side.
pub async fn spawn_against(upstream: &FakeUpstream, extra: &[&str]) -> TestApp {
    let url = upstream.base_url();
    spawn_app(config(
        &[
            &[
                "--openai-base-url",
                url.as_str(),
                "--openai-api-key",
                "sk-test-key-123",
                "--confidence",
                "self",
            ],
            extra,
        ]
        .concat(),
    ))
    .await
}

pub async fn spawn_app(config: ServeConfig) -> TestApp {
    init_logs();
    let app = Application::build(config).await.expect("app builds");
    let addr = app.local_addr();
    let sim_addr = app.simulator().map(|s| s.addr());
    let metrics_addr = app.metrics_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = hn_classifier::tasks::spawn(app.run(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::new(),
        sim_addr,
        metrics_addr,
        stop: Some(stop),
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_raw(
        &self,
        body: impl Into<reqwest::Body>,
        content_type: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.client.post(self.url("/classify-batch")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        req.send().await.expect("request sent")
    }

    /// POSTs `{"titles": titles}` and returns the status and JSON body.
    pub async fn post_titles<S: AsRef<str>>(&self, titles: &[S]) -> (StatusCode, Value) {
        let titles: Vec<&str> = titles.iter().map(AsRef::as_ref).collect();
        let response = self
            .post_raw(
                json!({ "titles": titles }).to_string(),
                Some("application/json"),
            )
            .await;
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    /// POSTs titles that must all come back, and returns the parsed 200 body.
    pub async fn classify<S: AsRef<str>>(&self, titles: &[S]) -> ClassifyBatchResponse {
        let (status, body) = self.post_titles(titles).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let parsed: ClassifyBatchResponse = serde_json::from_value(body).expect("contract body");
        assert_eq!(parsed.results.len(), titles.len());
        assert_eq!(parsed.num_items, titles.len());
        parsed
    }

    pub async fn sim_stats(&self) -> Value {
        let sim = self.sim_addr.expect("a simulated app");
        self.client
            .get(format!("http://{sim}/_sim/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Starts the drain, as SIGTERM would, without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Drains and waits until the server has stopped.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("drains in time")
            .expect("server task")
            .expect("server result");
    }
}

/// A simulator on its own port (for several apps to share), with `hn-classifier sim` flags.
pub async fn spawn_sim(flags: &[&str]) -> SimServer {
    let args = [&["hn-classifier", "sim"], flags].concat();
    let config = match Cli::try_parse_from(args).expect("valid sim flags").command {
        Command::Sim(c) => c.sim,
        _ => unreachable!("parsed as sim"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    SimServer::spawn(&config, listener).expect("sim starts")
}

/// Sends `request` and reads its JSON answer, whatever the status.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

/// GETs `url` and returns the status and body text.
pub async fn get(url: &str) -> (StatusCode, String) {
    let response = reqwest::get(url).await.expect("GET sent");
    (response.status(), response.text().await.unwrap())
}

/// What the fake upstream answers for a title on its `n`th call (1-based).
pub type Reply = fn(&str, usize) -> Response;

/// A small OpenAI-shaped server whose answers the test chooses per title and attempt.
pub struct FakeUpstream {
    addr: SocketAddr,
    calls: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

impl FakeUpstream {
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Calls received, all titles together.
    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().map(Vec::len).sum()
    }

    /// When each call for `title` arrived.
    pub fn call_times(&self, title: &str) -> Vec<Instant> {
        self.calls
            .lock()
            .unwrap()
            .get(title)
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Clone)]
struct FakeState {
    reply: Reply,
    delay: fn(&str) -> Duration,
    calls: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

pub async fn spawn_fake_upstream(reply: Reply) -> FakeUpstream {
    spawn_fake_upstream_with_delay(reply, |_| Duration::ZERO).await
}

pub async fn spawn_fake_upstream_with_delay(
    reply: Reply,
    delay: fn(&str) -> Duration,
) -> FakeUpstream {
    let calls = Arc::default();
    let state = FakeState {
        reply,
        delay,
        calls: Arc::clone(&calls),
    };
    let router = axum::Router::new()
        .route("/v1/responses", post(fake_responses))
        .with_state(state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    hn_classifier::tasks::spawn(async move { axum::serve(listener, router).await });
    FakeUpstream { addr, calls }
}

async fn fake_responses(State(state): State<FakeState>, Json(request): Json<Value>) -> Response {
    let title = request["input"][0]["content"]
        .as_str()
        .expect("one user message")
        .to_owned();
    let n = {
        let mut calls = state.calls.lock().unwrap();
        let times = calls.entry(title.clone()).or_default();
        times.push(Instant::now());
        times.len()
    };
    tokio::time::sleep((state.delay)(&title)).await;
    (state.reply)(&title, n)
}

/// An OpenAI error body with `status`.
pub fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

/// A completed Responses body whose message is `text`.
pub fn completed(text: &str) -> Value {
    json!({
        "id": "resp_test", "object": "response", "status": "completed",
        "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}]}],
        "usage": {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
    })
}

/// A stable pseudo-label and confidence for a title, so a result identifies its title.
pub fn echo_answer(title: &str) -> (&'static str, f64) {
    let h = title.bytes().fold(0xcbf29ce484222325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    (HN_LABELS[(h % 10) as usize], (h % 1000) as f64 / 1000.0)
}

pub fn echo_reply(title: &str, _call: usize) -> Response {
    let (topic, confidence) = echo_answer(title);
    Json(completed(
        &json!({"topic": topic, "confidence": confidence}).to_string(),
    ))
    .into_response()
}

/// A scratch directory for one test's files.
pub fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hnc-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Why `serve` with these flags refuses to start.
pub async fn startup_error(flags: &[&str]) -> String {
    match Application::build(config(flags)).await {
        Ok(_) => panic!("start-up should have been refused with {flags:?}"),
        Err(error) => hn_classifier::cli::report(&error),
    }
}

/// Starts the binary on port 0 and reads its address from the "serving" log line.
pub fn start_binary(args: &[&str]) -> (Child, String) {
    start_binary_with(args, &[])
}

/// `start_binary`, with extra environment variables.
pub fn start_binary_with(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hn-classifier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("OPENAI_API_KEY")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut lines = stderr.lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the binary logs before exiting")
            .unwrap();
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if log["message"] == "serving" {
            break log["addr"].as_str().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

pub fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A TCP relay to `to` whose connections open so far can be made to go silent: nothing more
/// forwarded either way, nothing closed, as when a NAT or load balancer drops a connection
/// without a word. Connections opened afterwards pass.
pub struct BlackHoleRelay {
    pub addr: SocketAddr,
    silenced: Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHoleRelay {
    pub async fn start(to: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced = Arc::new(AtomicBool::new(false));
        let flag = silenced.clone();
        hn_classifier::tasks::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                // Only connections open before the silence are silenced.
                let hole = (!flag.load(Ordering::SeqCst)).then(|| flag.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                hn_classifier::tasks::spawn(pump(cr, sw, hole.clone()));
                hn_classifier::tasks::spawn(pump(sr, cw, hole));
            }
        });
        Self { addr, silenced }
    }

    /// Silences every connection open now.
    pub fn silence(&self) {
        self.silenced
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if hole
            .as_ref()
            .is_some_and(|h| h.load(std::sync::atomic::Ordering::SeqCst))
        {
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// `router` served on a loopback port: its base URL.
pub async fn on_loopback(router: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    hn_classifier::tasks::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/v1")
}

/// The sum of every series of `name` (with `labels` inside its braces, if any) in `/metrics`.
pub async fn metric(app: &TestApp, name: &str, labels: &str) -> f64 {
    let (_, text) = get(&app.url("/metrics")).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `redis-server` of its own on a free loopback port, stopped when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// With an append-only file in this directory (`appendfsync always`): a restart keeps
    /// what was written.
    aof_dir: Option<std::path::PathBuf>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that keeps an append-only file in `dir`, as docs/deploying.md asks for jobs.
    pub fn with_aof(dir: &std::path::Path) -> Self {
        Self::start_with(Some(dir.to_owned()))
    }

    fn start_with(aof_dir: Option<std::path::PathBuf>) -> Self {
        let port = free_port();
        let mut redis = Self {
            port,
            child: None,
            aof_dir,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port, and waits until it answers: empty, or with
    /// what its append-only file kept.
    pub fn restart(&mut self) {
        let mut command = std::process::Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        match &self.aof_dir {
            None => command.args(["--appendonly", "no"]),
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(dir),
        };
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's redis-server package; .ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        // Answering PING, not only accepting: while it loads its append-only file, Redis
        // accepts connections and answers LOADING.
        while !self.pongs() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pongs(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG"
    }

    /// Kills the server at once (SIGKILL): nothing is said to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill redis-server");
            child.wait().expect("reap redis-server");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
