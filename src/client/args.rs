//! The arguments of the client commands: `classify FILE`, and where `classify` and `eval` send
//! their titles.

use std::path::PathBuf;
use std::time::Duration;

use super::error::ClientError;
use super::files::Output;
use super::replicas::Target;
use super::rows::OutputFormat;
use crate::config::ServeConfig;
use crate::secret::Secret;

#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyFileConfig {
    /// Titles, one per line; or JSON Lines (a `.jsonl` or `.ndjson` file, or with --field) with
    /// the title in a field.
    pub input: PathBuf,

    #[command(flatten)]
    pub service: ServiceArgs,

    /// Where to write results [default: beside INPUT, its extension replaced by
    /// `.classified.jsonl` or `.classified.csv`: data/titles.txt -> data/titles.classified.jsonl].
    #[arg(long, short)]
    pub output: Option<PathBuf>,

    /// The output's format [default: what --output's extension says (.csv, .jsonl), else jsonl].
    /// A format that contradicts the extension is refused.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,

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

    /// As one job of the service at --url (`POST /jobs`, the service needs HNC_DATA_DIR): it
    /// runs there whether or not this command stays; the results are downloaded in input order
    /// as they come. Running the command again finds the same job (keyed by the input's
    /// digest) and resumes the download after the rows already written.
    #[arg(long, conflicts_with = "batch_api")]
    pub job: bool,

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

    /// Longest a batch's answer may go without a byte, seconds: a replica alive but stuck is
    /// then given up on and the batch sent to the next. Above the service's batch deadline (a
    /// little under its HNC_REQUEST_TIMEOUT_S, 300 s), the longest a healthy replica can be
    /// silent (a provider away, or a rate limit that holds every item back).
    #[arg(long, default_value_t = DEFAULT_READ_TIMEOUT_S, value_parser = parse_deadline)]
    pub read_timeout_s: f64,
}

const DEFAULT_BATCH_DEADLINE_S: f64 = 600.0;
const DEFAULT_READ_TIMEOUT_S: f64 = 300.0;

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
            read_timeout_s: DEFAULT_READ_TIMEOUT_S,
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
        let read_timeout = Duration::from_secs_f64(self.read_timeout_s);
        if !self.in_process() {
            let target = Target::remote(&self.urls, self.api_key.clone(), deadline);
            return Ok(target.with_read_timeout(read_timeout));
        }
        let serve = ServeConfig::from_env().map_err(ClientError::Settings)?;
        let target = Box::pin(Target::in_process(adjust(serve), self.simulate, deadline)).await?;
        Ok(target.with_read_timeout(read_timeout))
    }
}

impl ClassifyFileConfig {
    /// Where the rows go, in which format: `--output` and `--format`, checked together.
    pub fn output_file(&self) -> Result<Output, ClientError> {
        Output::new(&self.input, self.output.clone(), self.format)
    }
}
