//! `hn-classifier classify FILE`: a file of titles through a running service, in batches with
//! bounded concurrency, each batch streamed (NDJSON) so progress moves as items complete;
//! results are written in input order as JSONL or CSV and flushed batch by batch, so an
//! interrupted run resumes where it stopped (titles already in the output are skipped).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use crate::api::body::{ClassifyBatchRequest, StreamLine, UsageView};
use crate::config::ServeConfig;
use crate::secret::Secret;
use crate::startup::{Application, StartupError};
use crate::upstream::{Decision, RateHeaders, RetryPolicy, UpstreamError};

#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyFileConfig {
    /// Titles, one per line; or JSON Lines (a `.jsonl` file, or with --field) with the title in
    /// a field.
    pub input: PathBuf,

    #[command(flatten)]
    pub service: ServiceArgs,

    /// Where to write results [default: beside INPUT, its extension replaced by
    /// `.classified.jsonl` or `.classified.csv`: data/titles.txt -> data/titles.classified.jsonl].
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    #[arg(long, value_enum, default_value_t = OutputFormat::Jsonl)]
    pub format: OutputFormat,

    /// Titles per request.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub batch_size: u32,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// The JSON field holding the title, for JSON Lines input [default: title].
    #[arg(long)]
    pub field: Option<String>,

    /// Through the provider's Batch API instead of the live one: half the price, answers within
    /// 24 h (usually minutes). Straight to the provider configured like `serve` (OPENAI_*,
    /// HNC_PACK_SIZE), or the built-in simulator with --simulate; the state (files, batches,
    /// which lines they hold) is kept in OUTPUT.batch-state.json, so an interrupted run resumes
    /// its batches and never submits (or pays for) a line twice.
    #[arg(long)]
    pub batch_api: bool,

    /// With --batch-api, what happens to items a batch did not answer (a failed line, an
    /// invalid answer, an expired batch): another batch, the live API, or an error row.
    #[arg(long, value_enum, default_value_t = Fallback::Batch, requires = "batch_api")]
    pub fallback: Fallback,

    /// With --batch-api, cancel the batches of the interrupted run for OUTPUT and forget them.
    #[arg(long, requires = "batch_api")]
    pub cancel: bool,

    /// With --batch-api, seconds between two looks at the batches' progress.
    #[arg(long, default_value_t = 10.0, requires = "batch_api")]
    pub poll_s: f64,

    /// With --batch-api, most requests in one batch (OpenAI's limit: 50,000).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=50_000), requires = "batch_api")]
    pub batch_max_requests: u32,
}

/// What `--batch-api` does with items its batch did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    /// A follow-up batch of those items (each alone), up to four more rounds.
    Batch,
    /// The live API, through the pipeline in this process.
    Live,
    /// An error row (`error_code` `batch_failed`).
    None,
}

/// Where a client command (`classify`, `eval`) sends its titles: a running service, or the
/// service's pipeline in this process.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// The service to send them to: one URL, or several replicas (repeat --url, or a comma
    /// list in HNC_URL). Batches are spread over them; a batch a replica fails (connection
    /// refused or reset, 429, 5xx, a stream cut short) is sent again to another, whole.
    #[arg(
        long = "url",
        env = "HNC_URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8000"
    )]
    pub urls: Vec<String>,

    /// Bearer token for a service with HNC_API_KEYS set.
    #[arg(long, env = "HNC_CLIENT_KEY", hide_env_values = true)]
    pub api_key: Option<Secret>,

    /// Straight to the provider, no running service needed: the service's pipeline runs inside
    /// this process (on loopback), configured from the same environment as `serve`
    /// (OPENAI_API_KEY, OPENAI_MODEL, HNC_UPSTREAMS, HNC_PACK_SIZE, ...). --url is ignored.
    #[arg(long)]
    pub direct: bool,

    /// Like --direct, on the built-in simulator (no key, no network): for demos and tests.
    #[arg(long, conflicts_with = "direct")]
    pub simulate: bool,

    /// Longest one batch keeps being sent again while the service answers "not now" (429, 503
    /// overloaded or draining), seconds.
    #[arg(long, default_value_t = DEFAULT_BATCH_DEADLINE_S, value_parser = parse_deadline)]
    pub batch_deadline_s: f64,
}

const DEFAULT_BATCH_DEADLINE_S: f64 = 600.0;

fn parse_deadline(value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| format!("{value:?} is not a number of seconds above 0"))
}

impl ServiceArgs {
    /// A running service at `url`.
    pub fn remote(url: String) -> Self {
        Self {
            urls: vec![url],
            api_key: None,
            direct: false,
            simulate: false,
            batch_deadline_s: DEFAULT_BATCH_DEADLINE_S,
        }
    }

    /// Whether the pipeline runs in this process (`--direct` or `--simulate`).
    pub fn in_process(&self) -> bool {
        self.direct || self.simulate
    }

    /// The target: the service at `--url`, or the pipeline in this process with the
    /// environment's `serve` settings as `adjust` changes them.
    pub async fn connect(
        &self,
        adjust: impl FnOnce(ServeConfig) -> ServeConfig,
    ) -> Result<Target, ClientError> {
        let deadline = Duration::from_secs_f64(self.batch_deadline_s);
        if !self.in_process() {
            return Ok(Target::remote(&self.urls, self.api_key.clone(), deadline));
        }
        let serve = ServeConfig::from_env().map_err(ClientError::Settings)?;
        Box::pin(Target::in_process(adjust(serve), self.simulate, deadline)).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message}")]
    Input {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("could not reach {url}")]
    Http { url: String, source: reqwest::Error },
    #[error(
        "nothing answers at {url} (connection refused). Start the service there with \
         `hn-classifier serve` (add --simulate to try it offline), or classify without one: \
         --direct (the provider, from OPENAI_API_KEY) or --simulate"
    )]
    NotRunning {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the service answered {status}: {body}")]
    Service { status: u16, body: String },
    #[error("the service's stream broke off")]
    StreamRead(#[source] LinesCodecError),
    #[error("the service's stream has a line that is not the contract's")]
    StreamLine(#[source] serde_json::Error),
    #[error("the service's stream is incomplete: {0}")]
    StreamIncomplete(&'static str),
    #[error("writing CSV")]
    Csv(#[from] csv::Error),
    #[error("the serve settings in the environment are invalid")]
    Settings(#[source] clap::Error),
    #[error("could not start the in-process service")]
    Start(#[from] StartupError),
}

/// One result row as written to the output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub title: String,
    pub topic: Option<String>,
    pub confidence: Option<f64>,
    pub error: Option<String>,
    pub error_code: Option<String>,
}

/// What a run did.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    /// Titles already in the output, skipped.
    pub skipped: usize,
    pub items: usize,
    pub errors: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub upstream_requests: u64,
    /// `None` when the service had no price for its model.
    pub cost_usd: Option<f64>,
    /// Where the rows went.
    pub output: Option<PathBuf>,
}

impl Summary {
    /// A one-line report, with tokens and cost per 1000 items.
    pub fn report(&self) -> String {
        let per_k = |x: f64| {
            if self.items == 0 {
                0.0
            } else {
                x * 1000.0 / self.items as f64
            }
        };
        let cost = self
            .cost_usd
            .map_or("unknown".to_owned(), |c| format!("${:.4}", per_k(c)));
        format!(
            "{} items ({} errors, {} skipped as already done); per 1000 items: {:.0} input and {:.0} output tokens, {:.0} upstream requests, cost {}",
            self.items,
            self.errors,
            self.skipped,
            per_k(self.input_tokens as f64),
            per_k(self.output_tokens as f64),
            per_k(self.upstream_requests as f64),
            cost
        )
    }
}

/// Runs the whole file; `progress` draws a bar on a terminal.
pub async fn classify_file(
    config: &ClassifyFileConfig,
    progress: bool,
) -> Result<Summary, ClientError> {
    let target = Box::pin(config.service.connect(|serve| serve)).await?;
    let titles = read_titles(&config.input, config.field.as_deref())?;
    let output = config
        .output
        .clone()
        .unwrap_or_else(|| default_output(&config.input, config.format));
    let done = count_done(&output, config.format)?.min(titles.len());
    let mut writer = RowWriter::open(&output, config.format, done == 0)?;
    let bar = crate::progress::bar((titles.len() - done) as u64, progress, "classify");
    let batches = Batches {
        size: config.batch_size as usize,
        concurrency: config.concurrency as usize,
    };
    let mut summary = target
        .classify(&titles[done..], batches, &bar, |rows| writer.write(rows))
        .await?;
    summary.skipped = done;
    summary.output = Some(output);
    bar.finish_and_clear();
    Ok(summary)
}

/// How titles are sent: `size` per request, `concurrency` requests at once.
#[derive(Debug, Clone, Copy)]
pub struct Batches {
    pub size: usize,
    pub concurrency: usize,
}

/// Where batches go: a running service, or the service's pipeline started in this process
/// (`--direct`: retries, limits, pacing, packing and the cache come with it).
pub struct Target {
    /// At least one, without a trailing slash.
    urls: Vec<String>,
    api_key: Option<Secret>,
    /// Where the next batch starts: batches are dealt round-robin over the replicas.
    next: AtomicUsize,
    /// How long one batch may be retried while the service says "not now".
    deadline: Duration,
    /// The in-process pipeline's upstream slots and per-batch concurrency and pack size: what
    /// caps how many batches are sent at once, so the command never overloads its own service.
    pipeline: Option<Pipeline>,
    /// The in-process service, stopped when the target is dropped.
    _in_process: Option<InProcess>,
}

#[derive(Debug, Clone, Copy)]
struct Pipeline {
    max_in_flight: usize,
    request_concurrency: usize,
    pack_size: usize,
}

impl Pipeline {
    /// Batches of `size` titles whose calls fit in the slots together (at least one).
    fn batches_that_fit(&self, size: usize) -> usize {
        let calls = size
            .div_ceil(self.pack_size.max(1))
            .min(self.request_concurrency)
            .max(1);
        (self.max_in_flight / calls).max(1)
    }
}

impl Target {
    /// Running replicas at `urls` (one or more).
    fn remote(urls: &[String], api_key: Option<Secret>, deadline: Duration) -> Self {
        let mut urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            urls.push("http://127.0.0.1:8000".to_owned());
        }
        Self {
            urls,
            api_key,
            next: AtomicUsize::new(0),
            deadline,
            pipeline: None,
            _in_process: None,
        }
    }

    /// The pipeline with `config`'s settings (on the built-in simulator with `simulate`).
    async fn in_process(
        config: ServeConfig,
        simulate: bool,
        deadline: Duration,
    ) -> Result<Self, ClientError> {
        let pipeline = Pipeline {
            max_in_flight: config.max_in_flight as usize,
            request_concurrency: config.request_concurrency as usize,
            pack_size: config.pack_size as usize,
        };
        let service = Box::pin(InProcess::start(config, simulate)).await?;
        Ok(Self {
            urls: vec![service.url.clone()],
            api_key: None,
            next: AtomicUsize::new(0),
            deadline,
            pipeline: Some(pipeline),
            _in_process: Some(service),
        })
    }

    /// Batches at once: as asked, but in process no more than the pipeline's slots take.
    fn concurrency(&self, batches: Batches) -> usize {
        let wanted = batches.concurrency.max(1);
        self.pipeline
            .map_or(wanted, |p| wanted.min(p.batches_that_fit(batches.size)))
    }

    /// Classifies `titles` in order; `on_rows` gets each batch's rows, in input order, as soon
    /// as the batches before it are done (so a file can be flushed batch by batch).
    pub async fn classify(
        &self,
        titles: &[String],
        batches: Batches,
        bar: &ProgressBar,
        mut on_rows: impl FnMut(&[Row]) -> Result<(), ClientError>,
    ) -> Result<Summary, ClientError> {
        let client = reqwest::Client::new();
        let mut summary = Summary {
            cost_usd: Some(0.0),
            ..Summary::default()
        };
        let mut answers = futures::stream::iter(titles.chunks(batches.size.max(1)))
            .map(|batch| send_batch(&client, self, batch, bar))
            .buffered(self.concurrency(batches));
        while let Some(answer) = answers.next().await {
            let answer = answer?;
            on_rows(&answer.rows)?;
            summary.add(&answer.rows, &answer.usage);
        }
        Ok(summary)
    }
}

impl Summary {
    fn add(&mut self, rows: &[Row], usage: &UsageView) {
        self.items += rows.len();
        self.errors += rows.iter().filter(|r| r.error.is_some()).count();
        self.input_tokens += usage.input_tokens;
        self.output_tokens += usage.output_tokens;
        self.upstream_requests += usage.upstream_requests;
        self.cost_usd = self.cost_usd.zip(usage.cost_usd).map(|(a, b)| a + b);
    }
}

/// The service's pipeline inside this process, on a loopback port. Stopped when dropped.
struct InProcess {
    url: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl InProcess {
    async fn start(config: ServeConfig, simulate: bool) -> Result<Self, ClientError> {
        let app = Application::build_in_process(config, simulate).await?;
        let url = format!("http://{}", app.local_addr());
        let server = tokio::spawn(app.run(std::future::pending()));
        Ok(Self { url, server })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub(crate) fn default_output(input: &Path, format: OutputFormat) -> PathBuf {
    let extension = match format {
        OutputFormat::Jsonl => "classified.jsonl",
        OutputFormat::Csv => "classified.csv",
    };
    input.with_extension(extension)
}

pub(crate) fn read_titles(path: &Path, field: Option<&str>) -> Result<Vec<String>, ClientError> {
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    let jsonl = field.is_some() || path.extension().is_some_and(|e| e == "jsonl");
    let field = field.unwrap_or("title");
    let mut titles = Vec::new();
    for (number, line) in BufReader::new(File::open(path).map_err(io)?)
        .lines()
        .enumerate()
    {
        let line = line.map_err(io)?;
        if !jsonl {
            titles.push(line);
            continue;
        }
        let bad = |message: String| ClientError::Input {
            path: path.to_owned(),
            line: number + 1,
            message,
        };
        let value: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        let title = value
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("no string field `{field}`")))?;
        titles.push(title.to_owned());
    }
    Ok(titles)
}

/// Rows already written by an earlier run (the resume point).
pub(crate) fn count_done(output: &Path, format: OutputFormat) -> Result<usize, ClientError> {
    let file = match File::open(output) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ClientError::Io {
                path: output.to_owned(),
                source,
            });
        }
    };
    Ok(match format {
        OutputFormat::Jsonl => BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.is_empty())
            .count(),
        OutputFormat::Csv => csv::Reader::from_reader(file).records().count(),
    })
}

/// Appends rows in order, flushing after each batch.
pub(crate) enum RowWriter {
    Jsonl(BufWriter<File>, PathBuf),
    /// Boxed: the CSV writer's buffer makes it much larger than the other variant.
    Csv(Box<csv::Writer<File>>),
}

impl RowWriter {
    pub(crate) fn open(
        path: &Path,
        format: OutputFormat,
        fresh: bool,
    ) -> Result<Self, ClientError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ClientError::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(match format {
            OutputFormat::Jsonl => Self::Jsonl(BufWriter::new(file), path.to_owned()),
            OutputFormat::Csv => Self::Csv(Box::new(
                csv::WriterBuilder::new()
                    .has_headers(fresh)
                    .from_writer(file),
            )),
        })
    }

    pub(crate) fn write(&mut self, rows: &[Row]) -> Result<(), ClientError> {
        match self {
            Self::Jsonl(out, path) => {
                let io = |source| ClientError::Io {
                    path: path.clone(),
                    source,
                };
                for row in rows {
                    serde_json::to_writer(&mut *out, row).map_err(|e| io(e.into()))?;
                    out.write_all(b"\n").map_err(io)?;
                }
                out.flush().map_err(io)
            }
            Self::Csv(out) => {
                for row in rows {
                    out.serialize(row)?;
                }
                out.flush().map_err(|e| ClientError::Csv(e.into()))
            }
        }
    }
}

struct BatchAnswer {
    rows: Vec<Row>,
    usage: UsageView,
}

/// Rounds over every replica after the first for a batch they all fail (unreachable, 5xx other
/// than 503, a broken stream); "not now" answers (429, 503) are bounded by the deadline alone
/// (`--batch-deadline-s`).
const BATCH_RETRIES: u32 = 4;

/// Why one attempt at a batch failed.
enum Attempt {
    /// The answer would be the same from any replica (a 4xx): the batch fails.
    Final(ClientError),
    /// This replica could not answer now; another may. `status` is what it answered, if it
    /// answered at all.
    Replica {
        error: ClientError,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

/// One batch over NDJSON. Each attempt goes to the next replica; a batch is only ever taken
/// from one complete answer, so a replica that dies mid-stream costs a resend, never a
/// duplicated or missing row. After a whole round of refusals the crate's retry policy waits.
async fn send_batch(
    client: &reqwest::Client,
    target: &Target,
    titles: &[String],
    bar: &ProgressBar,
) -> Result<BatchAnswer, ClientError> {
    let body = serde_json::to_vec(&ClassifyBatchRequest {
        taxonomy: None,
        titles: titles.to_vec(),
    })
    .expect("a request body always serialises");
    let policy = RetryPolicy::new(BATCH_RETRIES, target.deadline);
    let deadline = Instant::now() + target.deadline;
    let replicas = target.urls.len();
    let first = target.next.fetch_add(1, Ordering::Relaxed);
    let mut rounds_failed = 0;
    for attempt in 0.. {
        let url = &target.urls[(first + attempt) % replicas];
        let (error, status, retry_after) =
            match attempt_batch(client, target, url, &body, titles, bar).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Replica {
                    error,
                    status,
                    retry_after,
                }) => (error, status, retry_after),
            };
        tracing::debug!(replica = %url, %error, "batch failed at a replica");
        if (attempt + 1) % replicas != 0 {
            continue;
        }
        // Every replica refused this round: wait as the policy says. A 429 or a 503 (overloaded,
        // draining) means "not now": like a provider's 429 for rate it waits for the deadline,
        // not the budget; anything else (unreachable, other 5xx, a broken stream) spends it.
        let not_now = matches!(status, Some(429 | 503));
        if !not_now {
            rounds_failed += 1;
        }
        let refusal = UpstreamError::Http {
            status: if not_now { 429 } else { status.unwrap_or(502) },
            code: None,
            message: String::new(),
            retry_after,
            should_retry: None,
        };
        match policy.decide(&refusal, rounds_failed, 0, deadline) {
            Decision::RetryAfter(delay) => tokio::time::sleep(delay).await,
            Decision::GiveUp(_) => return Err(error),
        }
    }
    unreachable!("the loop returns")
}

async fn attempt_batch(
    client: &reqwest::Client,
    target: &Target,
    base: &str,
    body: &[u8],
    titles: &[String],
    bar: &ProgressBar,
) -> Result<BatchAnswer, Attempt> {
    let url = format!("{base}/classify-batch");
    let mut request = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", crate::api::NDJSON)
        .body(body.to_vec());
    if let Some(key) = &target.api_key {
        request = request.bearer_auth(key.expose());
    }
    let unreachable = |source: reqwest::Error| Attempt::Replica {
        error: if source.is_connect() {
            ClientError::NotRunning {
                url: base.to_owned(),
                source,
            }
        } else {
            ClientError::Http {
                url: url.clone(),
                source,
            }
        },
        status: None,
        retry_after: None,
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        return read_stream(response, titles, bar)
            .await
            .map_err(|error| Attempt::Replica {
                error,
                status: None,
                retry_after: None,
            });
    }
    let retry_after = RateHeaders::parse(response.headers()).retry_after;
    let error = ClientError::Service {
        status,
        body: response.text().await.unwrap_or_default(),
    };
    if status == 429 || status >= 500 {
        Err(Attempt::Replica {
            error,
            status: Some(status),
            retry_after,
        })
    } else {
        Err(Attempt::Final(error))
    }
}

/// Reads a streamed batch: one row per index, then the summary line.
async fn read_stream(
    response: reqwest::Response,
    titles: &[String],
    bar: &ProgressBar,
) -> Result<BatchAnswer, ClientError> {
    let mut counted = 0;
    let read = read_rows(response, titles, bar, &mut counted).await;
    if read.is_err() {
        // The batch will be sent again: its items are not done.
        bar.dec(counted);
    }
    read
}

async fn read_rows(
    response: reqwest::Response,
    titles: &[String],
    bar: &ProgressBar,
    counted: &mut u64,
) -> Result<BatchAnswer, ClientError> {
    let bytes = response.bytes_stream().map_err(std::io::Error::other);
    let mut lines = FramedRead::new(StreamReader::new(bytes), LinesCodec::new());
    let mut rows: Vec<Option<Row>> = (0..titles.len()).map(|_| None).collect();
    let mut usage = None;
    while let Some(line) = lines.next().await {
        let line = line.map_err(ClientError::StreamRead)?;
        match serde_json::from_str(&line).map_err(ClientError::StreamLine)? {
            StreamLine::Done(done) => usage = Some(done.usage),
            StreamLine::Item(item) => {
                let slot = rows
                    .get_mut(item.index)
                    .ok_or(ClientError::StreamIncomplete(
                        "an item line without a valid index",
                    ))?;
                let view = item.item;
                *slot = Some(Row {
                    title: titles[item.index].clone(),
                    topic: view.topic,
                    confidence: view.confidence,
                    error: view.error,
                    error_code: view.error_code,
                });
                bar.inc(1);
                *counted += 1;
            }
        }
    }
    let usage = usage.ok_or(ClientError::StreamIncomplete("no summary line"))?;
    let rows =
        rows.into_iter()
            .collect::<Option<Vec<Row>>>()
            .ok_or(ClientError::StreamIncomplete(
                "an item is missing from the stream",
            ))?;
    Ok(BatchAnswer { rows, usage })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_process_the_batches_at_once_fit_the_pipelines_slots() {
        let slow_local = Pipeline {
            max_in_flight: 4,
            request_concurrency: 50,
            pack_size: 5,
        };
        assert_eq!(
            slow_local.batches_that_fit(50),
            1,
            "10 packed calls > 4 slots"
        );
        let defaults = Pipeline {
            max_in_flight: 512,
            request_concurrency: 50,
            pack_size: 1,
        };
        assert_eq!(defaults.batches_that_fit(500), 10);
        assert_eq!(defaults.batches_that_fit(20), 25);
    }
}
