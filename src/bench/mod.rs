//! `hn-classifier bench`: load that reproduces the reference study's comparison of four
//! approaches. `pool` (blocking calls from N OS threads), `async` (one async client, N calls in
//! flight), `sharded` (K clients with their own connection pools, N in flight in all) call the
//! provider directly; `service` POSTs batches to `/classify-batch`, N batches in flight, like the
//! reference client. Direct approaches go to the built-in simulator, started in-process, unless
//! `--upstream-url` is given; `service` goes to `--service-url`, or to a `serve` child process
//! bench starts (so its CPU seconds and peak RSS are measured alone). Every item is checked
//! (answered with a label of the taxonomy, or counted as an error); each run is appended to
//! `RESULTS_DIR/APPROACH.csv`, and the best run per approach is drawn in `chart.png`/`.svg`.

mod approaches;
mod chart;
mod error;
mod latency;
mod result;
mod service;
mod target;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::net::TcpListener;

use approaches::Measured;
pub use error::BenchError;
pub use result::{RunResult, best_per_approach, report};
use result::{append_csv, line, percentile_ms};
use service::{ProcessUsage, ServiceProcess};
use target::upstream_client;
pub use target::{Approach, UpstreamTarget};

use crate::config::UpstreamTuning;
use crate::secret::Secret;
use crate::sim::{SimConfig, SimServer};
use crate::upstream::UpstreamApi;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchConfig {
    /// Approaches to run, in order; a comma list compares them in one run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "service")]
    pub approach: Vec<Approach>,

    /// OpenAI-compatible base URL for the direct approaches [default: the built-in simulator,
    /// in-process].
    #[arg(long)]
    pub upstream_url: Option<String>,

    /// The key for --upstream-url.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Model for the direct approaches (also what cost is computed from).
    #[arg(long, default_value = "gpt-4.1-mini")]
    pub model: String,

    /// The protocol --upstream-url speaks: `chat` for llama.cpp, vLLM, Ollama.
    #[arg(long, value_parser = crate::config::api_parser(), default_value = "responses")]
    pub upstream_api: UpstreamApi,

    /// Clients of `sharded`, each with its own connection pool.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,

    /// `sharded` over HTTP/2 (prior knowledge): one multiplexed connection per shard.
    #[arg(long)]
    pub http2: bool,

    /// A running service for `service` [default: `serve` started by bench as a child process,
    /// on the simulator].
    #[arg(long)]
    pub service_url: Option<String>,

    /// The `hn-classifier` binary to start for `service` [default: this one].
    #[arg(long)]
    pub service_binary: Option<PathBuf>,

    /// Items per run (the titles file is cycled if shorter).
    #[arg(long, default_value_t = 3000)]
    pub items: usize,

    /// Runs per setting.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,

    /// Threads (`pool`), calls in flight (`async`, `sharded`) or batches in flight (`service`);
    /// a comma list sweeps.
    #[arg(long, value_delimiter = ',', default_value = "50")]
    pub concurrency: Vec<usize>,

    /// Requests per second for `latency`: one-title requests, open loop, each rate to the
    /// service and then straight to the upstream; a comma list runs them in turn.
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    pub rates: Vec<u32>,

    /// Seconds each `latency` rate runs per target.
    #[arg(long, default_value_t = 10.0)]
    pub duration_s: f64,

    /// Titles per request (`service`).
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,

    /// Titles to send, one per line (cycled when shorter than --items).
    #[arg(long, default_value = "data/hn_titles_1000.txt")]
    pub titles: PathBuf,

    /// Where the CSV files and the chart go.
    #[arg(long, default_value = "bench-results")]
    pub results_dir: PathBuf,

    #[command(flatten)]
    pub tuning: UpstreamTuning,

    #[command(flatten)]
    pub sim: SimConfig,
}

/// Runs every approach at every concurrency `repeat` times, appends each run to its CSV file,
/// draws the chart, and returns the runs.
pub async fn run(config: &BenchConfig) -> Result<Vec<RunResult>, BenchError> {
    let titles = load_titles(&config.titles, config.items)?;
    // One simulator for every approach that needs it, so all of them meet the same one.
    let needs_sim = config.approach.iter().any(|a| match a {
        Approach::Service => config.service_url.is_none(),
        Approach::Latency => config.service_url.is_none() || config.upstream_url.is_none(),
        _ => config.upstream_url.is_none(),
    });
    let sim = if needs_sim {
        Some(start_sim(&config.sim).await?)
    } else {
        None
    };
    let mut results = Vec::new();
    for &approach in &config.approach {
        if approach == Approach::Latency {
            latency_study(config, sim.as_ref(), &titles).await?;
            continue;
        }
        let target = Target::start(approach, config, sim.as_ref()).await?;
        for &concurrency in &config.concurrency {
            for _ in 0..config.repeat {
                let bar = crate::progress::bar(titles.len() as u64, true, approach.name());
                let cpu_at_start = target.service().map(ServiceProcess::begin);
                let measured = target.measure(config, &titles, concurrency, &bar).await?;
                bar.finish_and_clear();
                let process = target
                    .service()
                    .zip(cpu_at_start)
                    .and_then(|(s, cpu)| s.usage_since(cpu));
                let result =
                    measured.into_result(config, &target, titles.len(), concurrency, process);
                eprintln!("{}", line(&result));
                let file = format!("{}.csv", result.approach.name());
                append_csv(&config.results_dir, &file, &result)?;
                results.push(result);
            }
        }
    }
    if !results.is_empty() {
        chart::draw(&config.results_dir, &best_per_approach(&results))?;
    }
    Ok(results)
}

/// `latency`: the service (given, or a child process on the simulator) against the same
/// upstream called directly.
async fn latency_study(
    config: &BenchConfig,
    sim: Option<&SimServer>,
    titles: &[String],
) -> Result<(), BenchError> {
    let service = Target::start(Approach::Service, config, sim).await?;
    let Target::Async(upstream) = Target::start(Approach::Async, config, sim).await? else {
        unreachable!("the async approach's target is an upstream")
    };
    let duration = std::time::Duration::from_secs_f64(config.duration_s.max(0.1));
    latency::study(
        service.url(),
        &upstream,
        &config.rates,
        duration,
        titles,
        &config.results_dir,
    )
    .await?;
    Ok(())
}

/// What the load goes to, and what keeps it alive for the bench's duration.
enum Target {
    Pool(UpstreamTarget),
    Async(UpstreamTarget),
    Sharded(UpstreamTarget, usize),
    Service {
        url: String,
        process: Option<ServiceProcess>,
    },
}

impl Target {
    async fn start(
        approach: Approach,
        config: &BenchConfig,
        sim: Option<&SimServer>,
    ) -> Result<Self, BenchError> {
        if approach == Approach::Service {
            return Ok(match (&config.service_url, sim) {
                (Some(url), _) => Self::Service {
                    url: url.trim_end_matches('/').to_owned(),
                    process: None,
                },
                (None, Some(sim)) => {
                    let binary = match &config.service_binary {
                        Some(path) => path.clone(),
                        None => std::env::current_exe().map_err(BenchError::CurrentExe)?,
                    };
                    let process = ServiceProcess::start(&binary, &sim.base_url()).await?;
                    Self::Service {
                        url: process.url.clone(),
                        process: Some(process),
                    }
                }
                (None, None) => unreachable!("a simulator is started when no service URL is given"),
            });
        }
        let (url, key) = match (&config.upstream_url, sim) {
            (Some(url), _) => (
                url.clone(),
                config.api_key.clone().ok_or(BenchError::MissingKey)?,
            ),
            (None, Some(sim)) => (sim.base_url(), Secret::new("sim-key")),
            (None, None) => unreachable!("a simulator is started when no upstream URL is given"),
        };
        let upstream = UpstreamTarget {
            url,
            key,
            api: config.upstream_api,
            model: config.model.clone(),
            http2: config.http2 && approach == Approach::Sharded,
            tuning: config.tuning.clone(),
        };
        Ok(match approach {
            Approach::Pool => Self::Pool(upstream),
            Approach::Async => Self::Async(upstream),
            Approach::Sharded => Self::Sharded(upstream, config.shards.max(1)),
            Approach::Service | Approach::Latency => unreachable!("handled above"),
        })
    }

    fn service(&self) -> Option<&ServiceProcess> {
        match self {
            Self::Service { process, .. } => process.as_ref(),
            _ => None,
        }
    }

    fn url(&self) -> &str {
        match self {
            Self::Pool(t) | Self::Async(t) | Self::Sharded(t, _) => &t.url,
            Self::Service { url, .. } => url,
        }
    }

    async fn measure(
        &self,
        config: &BenchConfig,
        titles: &[String],
        concurrency: usize,
        bar: &indicatif::ProgressBar,
    ) -> Result<Measured, BenchError> {
        match self {
            Self::Pool(t) => approaches::pool(t, titles, concurrency, bar).await,
            Self::Async(t) => {
                let client = upstream_client(t, concurrency)?;
                Ok(approaches::single_client(&client, titles, concurrency, bar).await)
            }
            Self::Sharded(t, shards) => {
                approaches::sharded(t, titles, concurrency, *shards, bar).await
            }
            Self::Service { url, .. } => {
                Ok(approaches::service(url, titles, concurrency, config.batch_size, bar).await)
            }
        }
    }
}

async fn start_sim(config: &SimConfig) -> Result<SimServer, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::Bind)?;
    Ok(SimServer::spawn(config, listener)?)
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

impl Measured {
    fn into_result(
        self,
        config: &BenchConfig,
        target: &Target,
        items: usize,
        concurrency: usize,
        process: Option<ProcessUsage>,
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
        let percentile = |q: f64| percentile_ms(&latencies, q);
        let per_1k = |x: f64| {
            if items == 0 {
                0.0
            } else {
                x * 1000.0 / items as f64
            }
        };
        let (shards, http2) = match target {
            Target::Sharded(t, shards) => (*shards, t.http2),
            _ => (1, false),
        };
        RunResult {
            ran_at_utc: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            approach,
            target: target.url().to_owned(),
            items,
            concurrency,
            batch_size: if approach == Approach::Service {
                config.batch_size
            } else {
                1
            },
            shards,
            http2,
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
            reasoning_tokens_per_1k: per_1k(usage.reasoning_tokens as f64),
            cost_usd_per_1k: cost.map(per_1k),
            service_cpu_s: process.map(|p| p.cpu_s),
            items_per_cpu_s: process
                .filter(|p| p.cpu_s > 0.0)
                .map(|p| items as f64 / p.cpu_s),
            service_peak_rss_mib: process.map(|p| p.peak_rss_mib),
        }
    }
}
