//! Where batches go: one running service, several replicas, or the service's pipeline started in
//! this process. Batches are dealt round-robin over the replicas; a batch a replica fails
//! (unreachable, 429, 5xx, a stream cut short) is sent again to the next one, whole.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;

use super::error::ClientError;
use super::ndjson::{BatchAnswer, read_batch};
use super::rows::{Row, Summary};
use crate::api::body::{ClassifyBatchRequest, UsageView};
use crate::config::ServeConfig;
use crate::secret::Secret;
use crate::startup::Application;
use crate::upstream::{RateHeaders, RetryPolicy};

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
    /// Longest an answer may go without a byte before the replica counts as stuck.
    read_timeout: Option<Duration>,
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
    pub(super) fn remote(urls: &[String], api_key: Option<Secret>, deadline: Duration) -> Self {
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
            read_timeout: None,
            pipeline: None,
            _in_process: None,
        }
    }

    /// The pipeline with `config`'s settings (on the built-in simulator with `simulate`).
    pub(super) async fn in_process(
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
            read_timeout: None,
            pipeline: Some(pipeline),
            _in_process: Some(service),
        })
    }

    /// The same target, giving up on an answer that goes `timeout` without a byte (the batch
    /// then goes to the next replica).
    pub fn with_read_timeout(self, timeout: Duration) -> Self {
        Self {
            read_timeout: Some(timeout),
            ..self
        }
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
        let mut client = reqwest::Client::builder();
        if let Some(timeout) = self.read_timeout {
            client = client.read_timeout(timeout);
        }
        let client = client.build().map_err(|source| ClientError::Http {
            url: self.urls[0].clone(),
            source,
        })?;
        let mut summary = Summary {
            cost_usd: Some(0.0),
            ..Summary::default()
        };
        let mut answers = futures::stream::iter(titles.chunks(batches.size.max(1)))
            .map(|batch| self.send_batch(&client, batch, bar))
            .buffered(self.concurrency(batches));
        while let Some(answer) = answers.next().await {
            let answer = answer?;
            on_rows(&answer.rows)?;
            summary.add(&answer.rows, &answer.usage);
        }
        Ok(summary)
    }

    /// One batch over NDJSON. Each attempt goes to the next replica; a batch is only ever taken
    /// from one complete answer, so a replica that dies mid-stream costs a resend, never a
    /// duplicated or missing row. After a whole round of refusals, `Rounds` says how long to wait.
    async fn send_batch(
        &self,
        client: &reqwest::Client,
        titles: &[String],
        bar: &ProgressBar,
    ) -> Result<BatchAnswer, ClientError> {
        let body = serde_json::to_vec(&ClassifyBatchRequest {
            taxonomy: None,
            titles: titles.to_vec(),
        })
        .expect("a request body always serialises");
        let mut rounds = Rounds::new(self.deadline);
        let replicas = self.urls.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for attempt in 0.. {
            let url = &self.urls[(first + attempt) % replicas];
            let refused = match self.attempt(client, url, &body, titles, bar).await {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Final(error)) => return Err(error),
                Err(Attempt::Replica(refused)) => refused,
            };
            tracing::debug!(replica = %url, error = %refused.error, "batch failed at a replica");
            if (attempt + 1) % replicas != 0 {
                continue;
            }
            match rounds.wait_after(&refused) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(refused.error),
            }
        }
        unreachable!("the loop returns")
    }

    async fn attempt(
        &self,
        client: &reqwest::Client,
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
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let unreachable = |source: reqwest::Error| {
            Attempt::Replica(Refused::without_answer(if source.is_connect() {
                ClientError::NotRunning {
                    url: base.to_owned(),
                    source,
                }
            } else {
                ClientError::Http {
                    url: url.clone(),
                    source,
                }
            }))
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return read_batch(response, titles, bar)
                .await
                .map_err(|error| Attempt::Replica(Refused::without_answer(error)));
        }
        let retry_after = RateHeaders::parse(response.headers()).retry_after;
        let error = ClientError::Service {
            status,
            body: response.text().await.unwrap_or_default(),
        };
        if status == 429 || status >= 500 {
            Err(Attempt::Replica(Refused {
                error,
                // 429, or 503 (overloaded, draining): "not now", not "broken".
                not_now: matches!(status, 429 | 503),
                retry_after,
            }))
        } else {
            Err(Attempt::Final(error))
        }
    }
}

/// Why one attempt at a batch failed.
enum Attempt {
    /// The answer would be the same from any replica (a 4xx): the batch fails.
    Final(ClientError),
    /// This replica could not answer now; another may.
    Replica(Refused),
}

/// A replica's failure to answer a batch.
struct Refused {
    error: ClientError,
    /// It answered "not now" (429, 503): busy or draining, not broken.
    not_now: bool,
    /// The wait it asked for, if any.
    retry_after: Option<Duration>,
}

impl Refused {
    /// Unreachable, or a stream cut short: spends the budget.
    fn without_answer(error: ClientError) -> Self {
        Self {
            error,
            not_now: false,
            retry_after: None,
        }
    }
}

/// Rounds over every replica after the first for a batch they all fail (unreachable, 5xx other
/// than 503, a broken stream); "not now" rounds are bounded by the deadline alone
/// (`--batch-deadline-s`), as a provider's 429 for rate is in the upstream retry policy.
const BATCH_RETRIES: u32 = 4;

/// When a batch every replica refused is sent again, and when it gives up.
struct Rounds {
    failed: u32,
    deadline: Instant,
    /// Its backoff only: full jitter from 250 ms, doubling up to 8 s.
    backoff: RetryPolicy,
}

impl Rounds {
    fn new(deadline: Duration) -> Self {
        Self {
            failed: 0,
            deadline: Instant::now() + deadline,
            backoff: RetryPolicy::new(BATCH_RETRIES, deadline),
        }
    }

    /// The wait before the next round after the last replica of this one refused, or `None`
    /// to give up: the budget of failed rounds is spent, or the wait would pass the deadline.
    fn wait_after(&mut self, refused: &Refused) -> Option<Duration> {
        if !refused.not_now {
            self.failed += 1;
            if self.failed > BATCH_RETRIES {
                return None;
            }
        }
        let delay = refused
            .retry_after
            .unwrap_or_else(|| self.backoff.backoff(self.failed.max(1)));
        (Instant::now() + delay < self.deadline).then_some(delay)
    }
}

impl Summary {
    fn add(&mut self, rows: &[Row], usage: &UsageView) {
        self.items += rows.len();
        self.errors += rows.iter().filter(|r| r.error.is_some()).count();
        self.input_tokens += usage.input_tokens;
        self.cached_input_tokens += usage.cached_input_tokens;
        self.output_tokens += usage.output_tokens;
        self.reasoning_tokens += usage.reasoning_tokens;
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
        let app = Box::pin(Application::build_in_process(config, simulate)).await?;
        let url = format!("http://{}", app.local_addr());
        let server = crate::tasks::spawn(app.run(std::future::pending()));
        Ok(Self { url, server })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.server.abort();
    }
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

    fn refused(not_now: bool, retry_after_ms: Option<u64>) -> Refused {
        Refused {
            error: ClientError::StreamIncomplete("test"),
            not_now,
            retry_after: retry_after_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn failed_rounds_spend_the_budget_and_not_now_rounds_only_the_deadline() {
        let mut rounds = Rounds::new(Duration::from_secs(600));
        for _ in 0..BATCH_RETRIES {
            assert!(rounds.wait_after(&refused(false, None)).is_some());
        }
        for _ in 0..20 {
            let wait = rounds.wait_after(&refused(true, Some(5)));
            assert_eq!(wait, Some(Duration::from_millis(5)), "the asked wait");
        }
        assert_eq!(rounds.wait_after(&refused(false, None)), None, "spent");
    }

    #[test]
    fn a_wait_past_the_deadline_gives_up() {
        let mut rounds = Rounds::new(Duration::from_secs(1));
        assert_eq!(rounds.wait_after(&refused(true, Some(2_000))), None);
        let mut rounds = Rounds::new(Duration::from_secs(10));
        let backoff = rounds.wait_after(&refused(false, None)).unwrap();
        assert!(backoff <= Duration::from_millis(250), "{backoff:?}");
    }
}
