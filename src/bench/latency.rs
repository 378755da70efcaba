//! `--approach latency`: what the service adds to one call. One-title requests at fixed rates,
//! open loop (each is sent at its scheduled time whatever the others are doing, and timed from
//! that time, so a stall shows as latency instead of as a slower send rate), first to the
//! service, then straight to the same upstream with the same body the service would send; the
//! difference of the percentiles is the service's own cost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use super::error::BenchError;
use super::result::{append_csv, percentile_ms};
use super::target::UpstreamTarget;
use crate::taxonomy::Taxonomy;
use crate::upstream::templates::RequestTemplate;

/// One target at one rate: a row of `latency.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub ran_at_utc: String,
    /// `service` or `direct`.
    pub target: &'static str,
    pub rate_per_s: u32,
    pub duration_s: f64,
    pub sent: usize,
    pub errors: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// How one request is made.
enum Call {
    Service {
        client: reqwest::Client,
        url: String,
    },
    Direct {
        client: reqwest::Client,
        url: String,
        target: UpstreamTarget,
        template: Box<RequestTemplate>,
    },
}

impl Call {
    /// Whether the answer was a 2xx with a label.
    async fn send(&self, title: &str) -> bool {
        let sent = match self {
            Self::Service { client, url } => {
                client
                    .post(url)
                    .json(&serde_json::json!({ "titles": [title] }))
                    .send()
                    .await
            }
            Self::Direct {
                client,
                url,
                target,
                template,
            } => {
                client
                    .post(url)
                    .bearer_auth(target.key.expose())
                    .header("content-type", "application/json")
                    .body(template.encode(title).to_vec())
                    .send()
                    .await
            }
        };
        match sent {
            Ok(response) if response.status().is_success() => response.bytes().await.is_ok(),
            _ => false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Service { .. } => "service",
            Self::Direct { .. } => "direct",
        }
    }
}

/// Runs every rate against the service at `service_url` and straight to `upstream`, prints a
/// line per rate with the added latency, and appends the rows to `latency.csv`.
pub async fn study(
    service_url: &str,
    upstream: &UpstreamTarget,
    rates: &[u32],
    duration: Duration,
    titles: &[String],
    results_dir: &Path,
) -> Result<Vec<LatencyRow>, BenchError> {
    let taxonomy = Taxonomy::hn_topics();
    let calls = [
        Arc::new(Call::Service {
            client: reqwest::Client::new(),
            url: format!("{service_url}/classify-batch"),
        }),
        Arc::new(Call::Direct {
            client: reqwest::Client::new(),
            url: format!(
                "{}/{}",
                upstream.url.trim_end_matches('/'),
                upstream.api.path()
            ),
            template: Box::new(RequestTemplate::new(
                upstream.api,
                &upstream.model,
                &taxonomy,
            )),
            target: upstream.clone(),
        }),
    ];
    let titles: Arc<[String]> = titles.into();
    let mut rows = Vec::new();
    for &rate in rates {
        let mut pair = Vec::new();
        for call in &calls {
            warm_up(call, &titles).await;
            let row = open_loop(call.clone(), rate.max(1), duration, titles.clone()).await;
            append_csv(results_dir, "latency.csv", &row)?;
            pair.push(row);
        }
        eprintln!("{}", line(&pair[0], &pair[1]));
        rows.extend(pair);
    }
    Ok(rows)
}

/// Connections open and code paths warm before anything is timed.
async fn warm_up(call: &Call, titles: &[String]) {
    for title in titles.iter().cycle().take(200) {
        call.send(title).await;
    }
}

async fn open_loop(
    call: Arc<Call>,
    rate: u32,
    duration: Duration,
    titles: Arc<[String]>,
) -> LatencyRow {
    let n = ((f64::from(rate) * duration.as_secs_f64()) as usize).max(1);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + period.mul_f64(i as f64);
        // The timer wakes at millisecond ticks: every send due by then leaves at once, and is
        // still timed from its own scheduled moment.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let (call, titles) = (call.clone(), titles.clone());
        handles.push(tokio::spawn(async move {
            let ok = call.send(&titles[i % titles.len()]).await;
            (at.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut errors = 0;
    for handle in handles {
        let (latency, ok) = handle.await.unwrap_or((Duration::MAX, false));
        errors += usize::from(!ok);
        latencies.push(latency);
    }
    latencies.sort_unstable();
    LatencyRow {
        ran_at_utc: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        target: call.name(),
        rate_per_s: rate,
        duration_s: duration.as_secs_f64(),
        sent: n,
        errors,
        p50_ms: percentile_ms(&latencies, 0.50),
        p90_ms: percentile_ms(&latencies, 0.90),
        p99_ms: percentile_ms(&latencies, 0.99),
        p999_ms: percentile_ms(&latencies, 0.999),
    }
}

fn line(service: &LatencyRow, direct: &LatencyRow) -> String {
    let added = |s: f64, d: f64| format!("{:+.3}", s - d);
    format!(
        "latency {}/s x {}s: service p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms ({} errors); direct p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms ({} errors); added p50 {} p90 {} p99 {} p99.9 {} ms",
        service.rate_per_s,
        service.duration_s,
        service.p50_ms,
        service.p90_ms,
        service.p99_ms,
        service.p999_ms,
        service.errors,
        direct.p50_ms,
        direct.p90_ms,
        direct.p99_ms,
        direct.p999_ms,
        direct.errors,
        added(service.p50_ms, direct.p50_ms),
        added(service.p90_ms, direct.p90_ms),
        added(service.p99_ms, direct.p99_ms),
        added(service.p999_ms, direct.p999_ms),
    )
}
