//! The four ways to push titles through the provider that the reference study compared, each
//! measured the same way: wall time, every item checked, latencies, tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;
use rand::Rng;

use super::error::BenchError;
use super::target::{Approach, UpstreamTarget, upstream_client};
use crate::api::body::{ItemView, UsageView};
use crate::taxonomy::{AnswerForm, Taxonomy};
use crate::upstream::pricing::PriceTable;
use crate::upstream::reasoning::Thinking;
use crate::upstream::templates::RequestTemplate;
use crate::upstream::{UpstreamClient, Usage};

/// What one run observed, before it becomes a CSV row.
pub struct Measured {
    pub approach: Approach,
    pub wall: Duration,
    pub errors: usize,
    /// Per item (`pool`, `async`, `sharded`) or per batch (`service`).
    pub latencies: Vec<Duration>,
    pub usage: Usage,
    pub cost: Option<f64>,
}

impl Measured {
    /// Folds per-item outcomes `(answered with a label, usage, latency)`.
    fn from_items(
        approach: Approach,
        wall: Duration,
        outcomes: Vec<(bool, Usage, Duration)>,
    ) -> Self {
        let mut usage = Usage::default();
        let mut latencies = Vec::with_capacity(outcomes.len());
        let mut errors = 0;
        for (ok, u, latency) in outcomes {
            usage += u;
            latencies.push(latency);
            errors += usize::from(!ok);
        }
        Self {
            approach,
            wall,
            errors,
            latencies,
            cost: usage.cost_usd(),
            usage,
        }
    }
}

/// `pool`: one blocking client shared by `threads` OS threads, each sending one call at a time,
/// like a thread pool around the provider's synchronous SDK. Retries 429, 5xx and transport
/// failures three times (retry-after honoured, else jittered backoff), as that SDK does.
pub async fn pool(
    target: &UpstreamTarget,
    titles: &[String],
    threads: usize,
    bar: &ProgressBar,
) -> Result<Measured, BenchError> {
    let target = target.clone();
    let titles = Arc::new(titles.to_vec());
    let bar = bar.clone();
    // The blocking client owns a runtime of its own: it must be built and dropped outside ours.
    crate::tasks::spawn_blocking(move || run_pool(&target, &titles, threads.max(1), &bar))
        .await
        .map_err(BenchError::Panicked)?
}

fn run_pool(
    target: &UpstreamTarget,
    titles: &[String],
    threads: usize,
    bar: &ProgressBar,
) -> Result<Measured, BenchError> {
    let taxonomy = Taxonomy::hn_topics();
    // The reference client's request: the model writes its confidence.
    let template = RequestTemplate::new(
        target.api,
        &target.model,
        &taxonomy,
        AnswerForm::LabelAndConfidence,
        Thinking::default_for(&target.model),
    );
    let price = PriceTable::default().price_of(&target.model);
    let url = format!("{}/{}", target.url.trim_end_matches('/'), target.api.path());
    let client = reqwest::blocking::Client::builder()
        .pool_max_idle_per_host(threads)
        .timeout(target.tuning.upstream_timeout)
        .build()?;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let outcomes: Vec<(bool, Usage, Duration)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(title) = titles.get(index) else {
                            return done;
                        };
                        let t0 = Instant::now();
                        let body = template.encode(title).to_vec();
                        let (ok, mut usage) = match blocking_call(&client, &url, target, &body) {
                            Ok((bytes, calls)) => {
                                let (result, mut usage) = template.decode(&bytes, &taxonomy);
                                usage.upstream_requests = calls;
                                (result.is_ok(), usage)
                            }
                            Err(calls) => (false, Usage::default().with_requests(calls)),
                        };
                        usage.price_at(price);
                        done.push((ok, usage, t0.elapsed()));
                        bar.inc(1);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a pool thread panicked"))
            .collect()
    });
    Ok(Measured::from_items(
        Approach::Pool,
        started.elapsed(),
        outcomes,
    ))
}

/// One call with up to three retries; the 2xx body and the number of calls made, or the
/// number of calls made when every one failed.
fn blocking_call(
    client: &reqwest::blocking::Client,
    url: &str,
    target: &UpstreamTarget,
    body: &[u8],
) -> Result<(Vec<u8>, u64), u64> {
    const ATTEMPTS: u32 = 4;
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(url)
            .bearer_auth(target.key.expose())
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send();
        let retry_after = match sent {
            Ok(r) if r.status().is_success() => match r.bytes() {
                Ok(bytes) => return Ok((bytes.to_vec(), u64::from(attempt))),
                Err(_) => None,
            },
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .map(Duration::from_secs_f64),
            Ok(_) => return Err(u64::from(attempt)),
            Err(_) => None,
        };
        if attempt < ATTEMPTS {
            let backoff = Duration::from_millis(250 << (attempt - 1))
                .mul_f64(rand::rng().random_range(0.5..1.0));
            std::thread::sleep(retry_after.unwrap_or(backoff));
        }
    }
    Err(u64::from(ATTEMPTS))
}

/// `async`: one async client (the service's own upstream client: pooled, retrying, adaptive)
/// with `concurrency` calls in flight.
pub async fn single_client(
    client: &UpstreamClient,
    titles: &[String],
    concurrency: usize,
    bar: &ProgressBar,
) -> Measured {
    let started = Instant::now();
    let outcomes = classify_all(client, titles.iter(), concurrency, bar).await;
    Measured::from_items(Approach::Async, started.elapsed(), outcomes)
}

/// `sharded`: `shards` independent clients, each with its own connection pool (HTTP/2 when
/// asked), limit and pacer, the titles dealt round-robin, `concurrency` in flight in all.
pub async fn sharded(
    target: &UpstreamTarget,
    titles: &[String],
    concurrency: usize,
    shards: usize,
    bar: &ProgressBar,
) -> Result<Measured, BenchError> {
    let shards = shards.clamp(1, concurrency.max(1));
    let per_shard = concurrency.max(1).div_ceil(shards);
    let clients = (0..shards)
        .map(|_| upstream_client(target, per_shard))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let runs = clients.iter().enumerate().map(|(shard, client)| {
        let mine = titles.iter().skip(shard).step_by(shards);
        classify_all(client, mine, per_shard, bar)
    });
    let outcomes = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(Measured::from_items(
        Approach::Sharded,
        started.elapsed(),
        outcomes,
    ))
}

async fn classify_all<'t>(
    client: &UpstreamClient,
    titles: impl Iterator<Item = &'t String>,
    concurrency: usize,
    bar: &ProgressBar,
) -> Vec<(bool, Usage, Duration)> {
    let taxonomy = &Taxonomy::hn_topics();
    futures::stream::iter(titles)
        .map(|title| async move {
            let t0 = Instant::now();
            let (result, usage) = client.classify(taxonomy, title).await;
            bar.inc(1);
            (result.is_ok(), usage, t0.elapsed())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

/// `service`: batches of `batch_size` POSTed with `concurrency` in flight, like the reference
/// study's client; every item checked.
pub async fn service(
    url: &str,
    titles: &[String],
    concurrency: usize,
    batch_size: usize,
    bar: &ProgressBar,
) -> Measured {
    let client = reqwest::Client::new();
    let taxonomy = Taxonomy::hn_topics();
    let endpoint = format!("{url}/classify-batch");
    let started = Instant::now();
    let outcomes: Vec<(usize, Option<BatchReply>, Duration)> =
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
                        Ok(r) if r.status().is_success() => r.json::<BatchReply>().await.ok(),
                        _ => None,
                    };
                    bar.inc(batch.len() as u64);
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
        // A service that reports no usage (the Python reference) leaves tokens and cost unknown.
        match body.usage {
            Some(u) => {
                usage += Usage::billed(u.input_tokens, u.cached_input_tokens, u.output_tokens)
                    .with_requests(u.upstream_requests);
                cost = cost.zip(u.cost_usd).map(|(a, b)| a + b);
            }
            None => cost = None,
        }
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

/// A `/classify-batch` answer as the bench reads it: the service's own item and usage types,
/// with `usage` optional so services that share only the reference contract (`results`,
/// `num_items`, `errors`: the Python reference) can be measured too.
#[derive(serde::Deserialize)]
struct BatchReply {
    results: Vec<ItemView>,
    #[serde(default)]
    usage: Option<UsageView>,
}
