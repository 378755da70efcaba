//! A built-in simulator of the OpenAI API (`POST /v1/responses`, `POST /v1/chat/completions`):
//! the offline default for demos, tests and load tests. Deterministic labels from a keyword
//! classifier, log-normal latency, strict request validation, and a stats route tests assert on.

mod keywords;
mod protocol;
mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use protocol::OpenAiError;
use protocol::SimRequest;
pub use stats::{SimStats, StatsSnapshot};

/// Simulator knobs, shared by `hn-classifier sim` and `serve --simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimConfig {
    /// Median latency of one call, in milliseconds (0 answers at once).
    #[arg(
        long = "sim-latency-ms",
        env = "HNC_SIM_LATENCY_MS",
        default_value_t = 5.0
    )]
    pub latency_median_ms: f64,

    /// Spread of the log-normal latency (sigma of the underlying normal).
    #[arg(
        long = "sim-latency-sigma",
        env = "HNC_SIM_LATENCY_SIGMA",
        default_value_t = 0.5
    )]
    pub latency_sigma: f64,

    /// Seed of the random number generator, so runs repeat.
    #[arg(long = "sim-seed", env = "HNC_SIM_SEED", default_value_t = 42)]
    pub seed: u64,
}

impl SimConfig {
    /// No latency at all: for tests that measure the service, not the wait.
    pub fn instant() -> Self {
        Self {
            latency_median_ms: 0.0,
            latency_sigma: 0.0,
            seed: 42,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    #[error("--sim-latency-ms (HNC_SIM_LATENCY_MS) must be a finite number >= 0, got {0}")]
    Latency(f64),
    #[error("--sim-latency-sigma (HNC_SIM_LATENCY_SIGMA) must be a finite number >= 0, got {0}")]
    Sigma(f64),
}

/// Shared by every simulator request.
#[derive(Debug)]
struct Sim {
    latency: Option<LogNormal<f64>>,
    rng: Mutex<StdRng>,
    next_id: AtomicU64,
    stats: Arc<SimStats>,
}

impl Sim {
    fn new(config: &SimConfig) -> Result<Self, SimConfigError> {
        if !(config.latency_median_ms.is_finite() && config.latency_median_ms >= 0.0) {
            return Err(SimConfigError::Latency(config.latency_median_ms));
        }
        if !(config.latency_sigma.is_finite() && config.latency_sigma >= 0.0) {
            return Err(SimConfigError::Sigma(config.latency_sigma));
        }
        let latency = (config.latency_median_ms > 0.0).then(|| {
            LogNormal::new(config.latency_median_ms.ln(), config.latency_sigma)
                .expect("checked: finite median > 0 and sigma >= 0")
        });
        Ok(Self {
            latency,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            next_id: AtomicU64::new(1),
            stats: Arc::default(),
        })
    }

    fn sample_latency(&self) -> Duration {
        let Some(dist) = &self.latency else {
            return Duration::ZERO;
        };
        let ms = dist.sample(&mut *self.rng.lock().expect("rng lock poisoned"));
        // Capped so a far tail sample cannot stall a test for minutes.
        Duration::from_secs_f64((ms / 1000.0).min(60.0))
    }
}

/// Which wire protocol a route speaks.
#[derive(Clone, Copy)]
enum Api {
    Responses,
    Chat,
}

/// The simulator's routes, over its state.
fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route(
            "/v1/responses",
            post(|s, h, b| answer(Api::Responses, s, h, b)),
        )
        .route(
            "/v1/chat/completions",
            post(|s, h, b| answer(Api::Chat, s, h, b)),
        )
        .route("/_sim/stats", get(stats))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(sim)
}

async fn answer(
    api: Api,
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = sim.stats.begin();
    let result = handle(api, &sim, &headers, &body).await;
    let response = match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.into_response(),
    };
    call.finish(response.status().as_u16());
    response
}

async fn handle(
    api: Api,
    sim: &Sim,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, OpenAiError> {
    check_auth(headers)?;
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        OpenAiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
            "",
            None,
        )
    })?;
    let request = match api {
        Api::Responses => protocol::parse_responses(&value)?,
        Api::Chat => protocol::parse_chat(&value)?,
    };
    sim.stats.count_title(&request.title);
    tokio::time::sleep(sim.sample_latency()).await;
    Ok(respond(api, sim, &request))
}

fn respond(api: Api, sim: &Sim, request: &SimRequest) -> Value {
    let (topic, confidence) = keywords::classify(&request.title, &request.labels);
    let text = json!({"topic": topic, "confidence": confidence}).to_string();
    let id = sim.next_id.fetch_add(1, Ordering::Relaxed);
    let input = protocol::estimate_tokens(request.prompt_chars + request.title.chars().count());
    let output = protocol::estimate_tokens(text.len());
    match api {
        Api::Responses => protocol::responses_body(id, &request.model, &text, input, output),
        Api::Chat => protocol::chat_body(id, &request.model, &text, input, output),
    }
}

/// A bearer token must be there, as the real API demands; any non-empty token is accepted.
fn check_auth(headers: &HeaderMap) -> Result<(), OpenAiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.trim().is_empty());
    match token {
        Some(_) => Ok(()),
        None => Err(OpenAiError {
            status: axum::http::StatusCode::UNAUTHORIZED,
            message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }),
    }
}

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    titles: bool,
}

async fn stats(State(sim): State<Arc<Sim>>, Query(q): Query<StatsQuery>) -> Json<StatsSnapshot> {
    Json(sim.stats.snapshot(q.titles))
}

/// A simulator serving on a bound socket, until `shutdown` is cancelled.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
}

impl SimServer {
    /// Starts serving on `listener` in a background task.
    pub fn spawn(config: &SimConfig, listener: TcpListener) -> Result<Self, SimConfigError> {
        let sim = Arc::new(Sim::new(config)?);
        let stats = sim.stats.clone();
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let serve =
                axum::serve(listener, router(sim)).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(error) = serve.await {
                tracing::error!(%error, "simulator stopped");
            }
        });
        Ok(Self {
            addr,
            stats,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a client uses, API version included.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Waits until the server stops (when `shutdown` is cancelled).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
