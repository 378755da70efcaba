//! A built-in simulator of the OpenAI API (`POST /v1/responses`, `POST /v1/chat/completions`):
//! the offline default for demos, tests and load tests. Deterministic labels from a keyword
//! classifier, log-normal latency, strict request validation, the provider's rate limits and
//! faults on demand, and a stats route tests assert on.

mod batch;
mod cache;
mod faults;
mod keywords;
mod limits;
mod protocol;
mod stats;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, LogNormal};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use batch::BatchSimConfig;
use faults::Fault;
pub use faults::FaultConfig;
use limits::Bucket;
pub use protocol::OpenAiError;
use protocol::SimRequest;
pub use stats::{SimStats, StatsSnapshot};

use crate::tokens;

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

    /// Requests per minute before 429 `rate_limit_exceeded` (0 = unlimited).
    #[arg(long = "sim-rpm", env = "HNC_SIM_RPM", default_value_t = 0)]
    pub rpm: u64,

    /// Tokens per minute before 429 `rate_limit_exceeded` (0 = unlimited).
    #[arg(long = "sim-tpm", env = "HNC_SIM_TPM", default_value_t = 0)]
    pub tpm: u64,

    #[command(flatten)]
    pub faults: FaultConfig,

    /// Share of `service_tier: "flex"` calls refused with 429 `resource_unavailable`.
    #[arg(
        long = "sim-flex-unavailable-rate",
        env = "HNC_SIM_FLEX_UNAVAILABLE_RATE",
        default_value_t = 0.0
    )]
    pub flex_unavailable_rate: f64,

    #[command(flatten)]
    pub batch: BatchSimConfig,
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
    faults: FaultConfig,
    /// RPM and TPM buckets, checked and charged together.
    limits: Mutex<RateLimits>,
    flex_unavailable_rate: f64,
    started: Instant,
    prompt_cache: cache::PromptCache,
}

#[derive(Debug)]
struct RateLimits {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

impl RateLimits {
    /// Charges one request of `tokens` if both buckets have room; else the limit that refused
    /// it and how long until it would not.
    fn try_charge(&mut self, tokens: f64, now: Instant) -> Result<(), (&'static str, Duration)> {
        let mut buckets = [
            ("requests", self.requests.as_mut(), 1.0),
            ("tokens", self.tokens.as_mut(), tokens),
        ];
        let refused = buckets
            .iter_mut()
            .filter_map(|(kind, bucket, cost)| {
                Some((*kind, bucket.as_mut()?.check(*cost, now).err()?))
            })
            .max_by_key(|(_, wait)| *wait);
        if let Some(refused) = refused {
            return Err(refused);
        }
        for (_, bucket, cost) in buckets.iter_mut() {
            if let Some(bucket) = bucket {
                bucket.take(*cost);
            }
        }
        Ok(())
    }

    /// `x-ratelimit-*` for the configured limits.
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (kind, bucket) in [("requests", &self.requests), ("tokens", &self.tokens)] {
            if let Some(bucket) = bucket {
                bucket.write_headers(kind, &mut headers);
            }
        }
        headers
    }
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
            faults: config.faults.clone(),
            limits: Mutex::new(RateLimits {
                requests: (config.rpm > 0).then(|| Bucket::per_minute(config.rpm)),
                tokens: (config.tpm > 0).then(|| Bucket::per_minute(config.tpm)),
            }),
            started: Instant::now(),
            flex_unavailable_rate: config.flex_unavailable_rate,
            prompt_cache: cache::PromptCache::default(),
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
fn router(sim: Arc<Sim>, batch: BatchSimConfig, seed: u64) -> Router {
    let answerer = sim.clone();
    let answer_line: batch::LineAnswer =
        Arc::new(move |url: &str, body: &Value| answer_line(&answerer, url, body));
    let batches = Arc::new(batch::BatchApi::new(
        batch,
        seed,
        answer_line,
        sim.stats.clone(),
    ));
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
        .merge(batch::router(batches))
}

/// One line of a batch, answered as the live route answers (same labels, same bodies), without
/// its latency, rate limits or faults: the Batch API has its own queue and its own faults.
fn answer_line(sim: &Sim, url: &str, body: &Value) -> Result<Value, OpenAiError> {
    let api = match url {
        "/v1/chat/completions" => Api::Chat,
        _ => Api::Responses,
    };
    let request = match api {
        Api::Responses => protocol::parse_responses(body)?,
        Api::Chat => protocol::parse_chat(body)?,
    };
    let input_tokens = request.input_tokens;
    Ok(respond(api, sim, &request, input_tokens, Fault::None))
}

async fn answer(
    api: Api,
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = sim.stats.begin();
    let response = handle(api, &sim, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    call.finish(response.status().as_u16());
    response
}

async fn handle(
    api: Api,
    sim: &Sim,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, OpenAiError> {
    protocol::check_auth(headers)?;
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
    match &request.pack {
        Some(pack) => pack.items.iter().for_each(|(_, title)| {
            sim.stats.count_title(title);
        }),
        None => {
            sim.stats.count_title(&request.title);
        }
    }
    let input_tokens = request.input_tokens;
    let limit_headers = sim.admit(&request)?;
    if request.service_tier.as_deref() == Some("flex") && sim.draw_flex_unavailable() {
        sim.stats.count_fault("flex_unavailable");
        return Err(OpenAiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("resource_unavailable"),
            "Resource unavailable: flex processing has no capacity right now. Please retry later or use the default service tier.",
        ));
    }
    let fault = sim.draw_fault();
    match fault {
        Fault::ServerError(status) => {
            sim.stats.count_fault(fault.name());
            return Err(server_error(status));
        }
        // Never answers; the client's timeout (or disconnect) ends the call.
        Fault::Hang => {
            sim.stats.count_fault(fault.name());
            std::future::pending::<()>().await;
        }
        Fault::None | Fault::Garbage | Fault::Refusal => {}
    }
    let latency = sim.sample_latency();
    // A zero latency answers at once: the timer's millisecond ticks would add one.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // Counted once the answer is about to leave, not when drawn: a client that gave up during
    // the latency never saw this garbage or refusal.
    if fault != Fault::None && fault != Fault::Hang {
        sim.stats.count_fault(fault.name());
    }
    let body = respond(api, sim, &request, input_tokens, fault);
    Ok((limit_headers, Json(body)).into_response())
}

fn respond(api: Api, sim: &Sim, request: &SimRequest, input_tokens: u64, fault: Fault) -> Value {
    const REFUSAL: &str = "I'm sorry, but I can't help with that request.";
    let id = sim.next_id.fetch_add(1, Ordering::Relaxed);
    let (text, logprobs) = match fault {
        Fault::Garbage => writer::write_text(
            "Sure! Here is the classification you asked for: it is about computers.",
            request.logprobs,
        ),
        _ => writer::write_answer(request),
    };
    let answer_tokens = tokens::count(&text);
    let reasoning = sim.draw_reasoning(request);
    let output_tokens = answer_tokens + reasoning;
    let model = &request.model;
    let cut = request
        .max_output
        .filter(|cap| reasoning + answer_tokens > *cap);
    let mut body = match (api, fault, cut) {
        // As OpenAI does: the cap counts the reasoning too, and an answer it cuts short is
        // billed for every token up to it.
        (Api::Responses, _, Some(cap)) => {
            sim.stats.count_fault("max_output_tokens");
            protocol::responses_incomplete_body(id, model, input_tokens, cap)
        }
        (Api::Chat, _, Some(cap)) => {
            sim.stats.count_fault("max_output_tokens");
            let mut body = protocol::chat_body(id, model, "", input_tokens, cap);
            body["choices"][0]["finish_reason"] = json!("length");
            body
        }
        (Api::Responses, Fault::Refusal, None) => {
            protocol::responses_refusal_body(id, model, REFUSAL, input_tokens, output_tokens)
        }
        (Api::Chat, Fault::Refusal, None) => {
            protocol::chat_refusal_body(id, model, REFUSAL, input_tokens, output_tokens)
        }
        (Api::Responses, _, None) => {
            protocol::responses_body_with(id, model, (&text, logprobs), input_tokens, output_tokens)
        }
        (Api::Chat, _, None) => {
            protocol::chat_body_with(id, model, (&text, logprobs), input_tokens, output_tokens)
        }
    };
    if request.reasoning.effort.is_some() || cut.is_some() {
        let spent = cut.map_or(reasoning, |cap| reasoning.min(cap));
        protocol::set_reasoning_tokens(&mut body, spent);
    }
    // As OpenAI does: the tier that served the call, whatever was asked, and the part of the
    // prompt its cache served.
    body["service_tier"] = json!(request.served_tier());
    let cached = sim
        .prompt_cache
        .serve(request.prefix_digest, request.prefix_tokens);
    let cached = json!({ "cached_tokens": cached });
    match api {
        Api::Responses => body["usage"]["input_tokens_details"] = cached,
        Api::Chat => body["usage"]["prompt_tokens_details"] = cached,
    }
    body
}

impl Sim {
    /// Quota, 429 bursts, then the RPM/TPM buckets: the `x-ratelimit-*` headers for the answer,
    /// or the 429 the real API would send.
    fn admit(&self, request: &SimRequest) -> Result<HeaderMap, OpenAiError> {
        if self
            .faults
            .draw_quota(&mut *self.rng.lock().expect("rng lock poisoned"))
        {
            self.stats.count_fault("insufficient_quota");
            return Err(OpenAiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
                "You exceeded your current quota, please check your plan and billing details.",
            ));
        }
        if let Some(left) = self.faults.burst_left(self.started.elapsed()) {
            self.stats.count_fault("burst_429");
            return Err(rate_limited(
                &request.model,
                "requests",
                left,
                HeaderMap::new(),
            ));
        }
        // Like OpenAI, a request is charged an estimate of its prompt plus the most it may
        // write, before anything is tokenized.
        let token_cost = request.rate_limit_tokens as f64;
        let (refused, headers) = {
            let mut limits = self.limits.lock().expect("limits lock poisoned");
            let refused = limits.try_charge(token_cost, Instant::now()).err();
            (refused, limits.headers())
        };
        match refused {
            None => Ok(headers),
            Some((kind, wait)) => {
                self.stats.count_fault("rate_limited");
                Err(rate_limited(&request.model, kind, wait, headers))
            }
        }
    }

    /// The tokens the model spends thinking before it answers, drawn by the effort it reasons
    /// at (ranges chosen to look like what such models report for a one-line label, and to fit
    /// the service's default room at each effort); the whole cap where the model is reported to
    /// burn it (`Reasoning::burns_cap`).
    fn draw_reasoning(&self, request: &SimRequest) -> u64 {
        use crate::models::Effort;
        use rand::Rng;
        if request.reasoning.burns_cap {
            return request.max_output.unwrap_or(0);
        }
        let range = match request.reasoning.effort {
            None | Some(Effort::None) => return 0,
            Some(Effort::Minimal) => 0..=128,
            Some(Effort::Low) => 64..=768,
            Some(Effort::Medium) => 256..=3072,
            Some(Effort::High) => 1024..=7168,
            Some(Effort::Xhigh) => 2048..=14336,
        };
        self.rng
            .lock()
            .expect("rng lock poisoned")
            .random_range(range)
    }

    fn draw_flex_unavailable(&self) -> bool {
        use rand::Rng;
        self.flex_unavailable_rate > 0.0
            && self.rng.lock().expect("rng lock poisoned").random::<f64>()
                < self.flex_unavailable_rate
    }

    fn draw_fault(&self) -> Fault {
        self.faults
            .draw(&mut *self.rng.lock().expect("rng lock poisoned"))
    }
}

/// OpenAI's 429 for a rate limit, with `retry-after-ms` and `retry-after` set to `wait`.
fn rate_limited(
    model: &str,
    kind: &'static str,
    wait: Duration,
    mut headers: HeaderMap,
) -> OpenAiError {
    let ms = wait.as_millis().max(1);
    headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
    headers.insert(RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000) as u64));
    let per_minute = if kind == "requests" {
        "requests per min (RPM)"
    } else {
        "tokens per min (TPM)"
    };
    let mut error = OpenAiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        kind,
        Some("rate_limit_exceeded"),
        format!(
            "Rate limit reached for {model} in organization org-sim on {per_minute}. Please try again in {ms}ms."
        ),
    );
    error.headers = Box::new(headers);
    error
}

fn server_error(status: u16) -> OpenAiError {
    OpenAiError::new(
        StatusCode::from_u16(status).expect("500, 502 or 503"),
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    )
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
        let (batch, seed) = (config.batch.clone(), config.seed);
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        crate::tasks::spawn(async move {
            let app = router(sim, batch, seed);
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
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
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
