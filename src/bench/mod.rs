//! `hn-classifier bench`: load that reproduces the reference study's comparisons. Approaches:
//! `async` (one async client calling the provider with N calls in flight) and `service` (batches
//! POSTed to `/classify-batch` with N batches in flight, like the reference client). Both run
//! against the built-in simulator started in-process unless a URL is given. Every item is checked
//! (answered with a label of the taxonomy, or counted as an error); each run is appended to
//! `RESULTS_DIR/APPROACH.csv` with its settings and time.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use futures::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::api::ClassifyBatchResponse;
use crate::config::{Cli, Command};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::sim::{SimConfig, SimServer};
use crate::startup::Application;
use crate::taxonomy::{Taxonomies, Taxonomy};
use crate::upstream::{
    AuthStyle, EndpointSettings, RetryPolicy, UpstreamApi, UpstreamClient, UpstreamSettings, Usage,
    pricing,
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchConfig {
    #[arg(long, value_enum, default_value_t = Approach::Service)]
    pub approach: Approach,

    /// OpenAI-compatible base URL for `async` [default: the built-in simulator, in-process].
    #[arg(long)]
    pub upstream_url: Option<String>,

    /// The key for --upstream-url.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Model for `async` (also what cost is computed from).
    #[arg(long, default_value = "gpt-4.1-mini")]
    pub model: String,

    /// The protocol --upstream-url speaks (`async`): `chat` for llama.cpp, vLLM, Ollama.
    #[arg(long, value_enum, default_value_t = UpstreamApi::Responses)]
    pub upstream_api: UpstreamApi,

    /// A running service for `service` [default: one started in-process on the simulator].
    #[arg(long)]
    pub service_url: Option<String>,

    /// Items per run (the titles file is cycled if shorter).
    #[arg(long, default_value_t = 3000)]
    pub items: usize,

    /// Runs per setting.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,

    /// Calls in flight (`async`) or batches in flight (`service`); a comma list sweeps.
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub concurrency: Vec<usize>,

    /// Titles per request (`service`).
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,

    #[arg(long, default_value = "data/hn_titles_1000.txt")]
    pub titles: PathBuf,

    /// Where the CSV files go.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,

    #[command(flatten)]
    pub sim: SimConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approach {
    Async,
    Service,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing results: {0}")]
    Csv(#[from] csv::Error),
    #[error("could not start the in-process simulator or service: {0}")]
    Start(String),
    #[error("--upstream-url needs a key (OPENAI_API_KEY or --api-key)")]
    MissingKey,
}

/// One run's figures: a row of `APPROACH.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub ran_at_utc: String,
    pub approach: Approach,
    pub target: String,
    pub items: usize,
    pub concurrency: usize,
    pub batch_size: usize,
    pub sim_latency_ms: f64,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub errors: usize,
    /// Per item (`async`) or per batch (`service`).
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Calls the provider received per 1000 items: below 1000 when single-flight shared
    /// repeated titles, or with packing.
    pub upstream_requests_per_1k: f64,
    pub input_tokens_per_1k: f64,
    pub output_tokens_per_1k: f64,
    pub cost_usd_per_1k: Option<f64>,
}

/// Runs every setting `repeat` times, appends each run to its CSV file, and returns the runs.
pub async fn run(config: &BenchConfig) -> Result<Vec<RunResult>, BenchError> {
    let titles = load_titles(&config.titles, config.items)?;
    let target = Target::start(config).await?;
    let mut results = Vec::new();
    for &concurrency in &config.concurrency {
        for _ in 0..config.repeat {
            let (url, measured) = match &target {
                Target::Upstream { client, url, .. } => {
                    (url, run_async(client, &titles, concurrency).await)
                }
                Target::Service { url, .. } => (
                    url,
                    run_service(url, &titles, concurrency, config.batch_size).await,
                ),
            };
            let result = measured.into_result(config, url, titles.len(), concurrency);
            append_csv(&config.results_dir, &result)?;
            results.push(result);
        }
    }
    Ok(results)
}

/// "approach c=N: items/s ..." for each run, then the best run.
pub fn report(results: &[RunResult]) -> String {
    let mut lines: Vec<String> = results
        .iter()
        .map(|r| {
            let cost = r.cost_usd_per_1k.map_or("unknown".to_owned(), |c| format!("${c:.4}"));
            format!(
                "{:?} concurrency={} items={} wall={:.2}s items/s={:.1} errors={} p50={:.0}ms p95={:.0}ms p99={:.0}ms per 1000 items: {:.0} upstream requests, {:.0} in / {:.0} out tokens, cost {}",
                r.approach, r.concurrency, r.items, r.wall_s, r.items_per_s, r.errors, r.p50_ms, r.p95_ms, r.p99_ms,
                r.upstream_requests_per_1k,
                r.input_tokens_per_1k, r.output_tokens_per_1k, cost
            )
        })
        .collect();
    if let Some(best) = results
        .iter()
        .max_by(|a, b| a.items_per_s.total_cmp(&b.items_per_s))
    {
        lines.push(format!(
            "best: {:?} at concurrency {}: {:.1} items/s",
            best.approach, best.concurrency, best.items_per_s
        ));
    }
    lines.join("\n")
}

/// What the load goes to, and what keeps it alive for the bench's duration.
enum Target {
    Upstream {
        client: Box<UpstreamClient>,
        url: String,
        _sim: Option<SimServer>,
    },
    Service {
        url: String,
        _app: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
        _sim: Option<SimServer>,
    },
}

impl Target {
    async fn start(config: &BenchConfig) -> Result<Self, BenchError> {
        match config.approach {
            Approach::Async => {
                let (url, key, sim) = match &config.upstream_url {
                    Some(url) => (
                        url.clone(),
                        config.api_key.clone().ok_or(BenchError::MissingKey)?,
                        None,
                    ),
                    None => {
                        let sim = start_sim(&config.sim).await?;
                        (sim.base_url(), Secret::new("sim-key"), Some(sim))
                    }
                };
                let max = config.concurrency.iter().copied().max().unwrap_or(1);
                let client = Box::new(upstream_client(
                    &url,
                    key,
                    config.upstream_api,
                    &config.model,
                    max,
                )?);
                Ok(Self::Upstream {
                    client,
                    url,
                    _sim: sim,
                })
            }
            Approach::Service => match &config.service_url {
                Some(url) => Ok(Self::Service {
                    url: url.trim_end_matches('/').to_owned(),
                    _app: None,
                    _sim: None,
                }),
                None => {
                    let sim = start_sim(&config.sim).await?;
                    let (addr, app) = start_service(&sim.base_url()).await?;
                    Ok(Self::Service {
                        url: format!("http://{addr}"),
                        _app: Some(app),
                        _sim: Some(sim),
                    })
                }
            },
        }
    }
}

async fn start_sim(config: &SimConfig) -> Result<SimServer, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Start(e.to_string()))?;
    SimServer::spawn(config, listener).map_err(|e| BenchError::Start(e.to_string()))
}

/// `serve` on a loopback port against `upstream`, with the default settings.
async fn start_service(
    upstream: &str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>), BenchError> {
    let args = [
        "hn-classifier",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--openai-base-url",
        upstream,
        "--openai-api-key",
        "sim-key",
    ];
    let Command::Serve(config) = Cli::try_parse_from(args)
        .map_err(|e| BenchError::Start(e.to_string()))?
        .command
    else {
        unreachable!("parsed as serve")
    };
    let app = Application::build(config)
        .await
        .map_err(|e| BenchError::Start(e.to_string()))?;
    let addr = app.local_addr();
    Ok((addr, tokio::spawn(app.run(std::future::pending()))))
}

fn upstream_client(
    url: &str,
    key: Secret,
    api: UpstreamApi,
    model: &str,
    max_in_flight: usize,
) -> Result<UpstreamClient, BenchError> {
    let settings = UpstreamSettings {
        endpoints: vec![EndpointSettings {
            name: "bench".to_owned(),
            base_url: url.to_owned(),
            api_key: key,
            auth: AuthStyle::Bearer,
            query: None,
            api,
            model: model.to_owned(),
            weight: 1,
            max_in_flight,
            rpm_limit: None,
            tpm_limit: None,
            price: pricing::price_of(model, None).ok().flatten(),
        }],
        call_timeout: Duration::from_secs(20),
        retry: RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            item_deadline: Duration::from_secs(60),
        },
        pack_size: 1,
    };
    UpstreamClient::new(settings, &Taxonomies::default(), Arc::new(Metrics::new()))
        .map_err(|e| BenchError::Start(e.to_string()))
}

fn load_titles(path: &Path, items: usize) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.to_owned(),
        source,
    })?;
    let titles: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok(titles
        .iter()
        .cycle()
        .take(items)
        .map(|t| (*t).to_owned())
        .collect())
}

/// One async client, `concurrency` calls in flight.
async fn run_async(client: &UpstreamClient, titles: &[String], concurrency: usize) -> Measured {
    let taxonomy = &Taxonomy::hn_topics();
    let started = Instant::now();
    let outcomes: Vec<(bool, Usage, Duration)> = futures::stream::iter(titles)
        .map(|title| async move {
            let t0 = Instant::now();
            let (result, usage) = client.classify(taxonomy, title).await;
            (result.is_ok(), usage, t0.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed();
    let mut usage = Usage::default();
    let mut latencies = Vec::with_capacity(outcomes.len());
    let mut errors = 0;
    for (ok, u, latency) in outcomes {
        usage += u;
        latencies.push(latency);
        errors += usize::from(!ok);
    }
    let cost = usage.cost_usd();
    Measured {
        approach: Approach::Async,
        wall,
        errors,
        latencies,
        usage,
        cost,
    }
}

/// Batches of `batch_size` POSTed with `concurrency` in flight; every item checked.
async fn run_service(
    url: &str,
    titles: &[String],
    concurrency: usize,
    batch_size: usize,
) -> Measured {
    let client = reqwest::Client::new();
    let taxonomy = Taxonomy::hn_topics();
    let endpoint = format!("{url}/classify-batch");
    let started = Instant::now();
    let outcomes: Vec<(usize, Option<ClassifyBatchResponse>, Duration)> =
        futures::stream::iter(titles.chunks(batch_size.max(1)))
            .map(|batch| {
                let (client, endpoint) = (&client, &endpoint);
                async move {
                    let t0 = Instant::now();
                    let sent = client
                        .post(endpoint)
                        .json(&serde_json::json!({ "titles": batch }))
                        .send()
                        .await;
                    let body = match sent {
                        Ok(r) if r.status().is_success() => {
                            r.json::<ClassifyBatchResponse>().await.ok()
                        }
                        _ => None,
                    };
                    (batch.len(), body, t0.elapsed())
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let wall = started.elapsed();
    let (mut errors, mut usage, mut cost, mut latencies) =
        (0, Usage::default(), Some(0.0), Vec::new());
    for (sent, body, latency) in outcomes {
        latencies.push(latency);
        let Some(body) = body else {
            errors += sent;
            continue;
        };
        // Answered means: one result per title, each a label of the taxonomy or an error.
        let answered = body.results.len() == sent;
        errors += if answered { 0 } else { sent };
        errors += body
            .results
            .iter()
            .filter(|r| {
                r.error.is_some()
                    || r.topic
                        .as_deref()
                        .is_none_or(|t| taxonomy.label(t).is_none())
            })
            .count();
        let mut reported = Usage::billed(
            body.usage.input_tokens,
            body.usage.cached_input_tokens,
            body.usage.output_tokens,
        );
        reported.upstream_requests = body.usage.upstream_requests;
        usage += reported;
        cost = cost.zip(body.usage.cost_usd).map(|(a, b)| a + b);
    }
    Measured {
        approach: Approach::Service,
        wall,
        errors,
        latencies,
        usage,
        cost,
    }
}

/// What one run observed, before it becomes a CSV row.
struct Measured {
    approach: Approach,
    wall: Duration,
    errors: usize,
    /// Per item (`async`) or per batch (`service`).
    latencies: Vec<Duration>,
    usage: Usage,
    cost: Option<f64>,
}

impl Measured {
    fn into_result(
        self,
        config: &BenchConfig,
        target: &str,
        items: usize,
        concurrency: usize,
    ) -> RunResult {
        let Self {
            approach,
            wall,
            errors,
            mut latencies,
            usage,
            cost,
        } = self;
        latencies.sort_unstable();
        let percentile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let per_1k = |x: f64| {
            if items == 0 {
                0.0
            } else {
                x * 1000.0 / items as f64
            }
        };
        RunResult {
            ran_at_utc: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            approach,
            target: target.to_owned(),
            items,
            concurrency,
            batch_size: if approach == Approach::Service {
                config.batch_size
            } else {
                1
            },
            sim_latency_ms: config.sim.latency_median_ms,
            wall_s: wall.as_secs_f64(),
            items_per_s: items as f64 / wall.as_secs_f64().max(1e-9),
            errors,
            p50_ms: percentile(0.50),
            p95_ms: percentile(0.95),
            p99_ms: percentile(0.99),
            upstream_requests_per_1k: per_1k(usage.upstream_requests as f64),
            input_tokens_per_1k: per_1k(usage.input_tokens as f64),
            output_tokens_per_1k: per_1k(usage.output_tokens as f64),
            cost_usd_per_1k: cost.map(per_1k),
        }
    }
}

fn append_csv(dir: &Path, result: &RunResult) -> Result<(), BenchError> {
    let io = |source| BenchError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = match result.approach {
        Approach::Async => "async.csv",
        Approach::Service => "service.csv",
    };
    let path = dir.join(name);
    let fresh = !path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    let mut writer = csv::WriterBuilder::new()
        .has_headers(fresh)
        .from_writer(file);
    writer.serialize(result)?;
    writer.flush().map_err(io)?;
    Ok(())
}
