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
use crate::upstream::ConfidenceSource;
use crate::upstream::reasoning::Thinking;
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
    /// How late the 99th percentile send left its scheduled moment: the load generator's own
    /// health. Above `SATURATED_LAG_MS` the machine could not keep the rate, and the
    /// percentiles measure it rather than the target.
    pub send_lag_p99_ms: f64,
}

/// A send leaving this late (p99) means the load generator, not the target, set the pace: the
/// timer wakes at millisecond ticks, so a healthy generator stays within a tick or two.
const SATURATED_LAG_MS: f64 = 5.0;

impl LatencyRow {
    fn saturated(&self) -> bool {
        self.send_lag_p99_ms > SATURATED_LAG_MS
    }
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
            // The body the service sends, by default.
            template: Box::new(RequestTemplate::new(
                upstream.api,
                &upstream.model,
                &taxonomy,
                ConfidenceSource::default().form_for(&Thinking::default_for(&upstream.model)),
                Thinking::default_for(&upstream.model),
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
        handles.push(crate::tasks::spawn(async move {
            let lag = at.elapsed();
            let ok = call.send(&titles[i % titles.len()]).await;
            (at.elapsed(), lag, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut lags = Vec::with_capacity(n);
    let mut errors = 0;
    for handle in handles {
        let (latency, lag, ok) = handle
            .await
            .unwrap_or((Duration::MAX, Duration::MAX, false));
        errors += usize::from(!ok);
        latencies.push(latency);
        lags.push(lag);
    }
    latencies.sort_unstable();
    lags.sort_unstable();
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
        send_lag_p99_ms: percentile_ms(&lags, 0.99),
    }
}

fn line(service: &LatencyRow, direct: &LatencyRow) -> String {
    let added = |s: f64, d: f64| format!("{:+.3}", s - d);
    let warning = if service.saturated() || direct.saturated() {
        format!(
            "WARNING: the load generator fell behind its schedule at {}/s (p99 send lag: service \
             {:.1} ms, direct {:.1} ms; healthy is under {SATURATED_LAG_MS} ms): this machine \
             cannot drive this rate, so the added latency is its noise, not the service's. \
             Use a lower rate or a quieter machine.\n",
            service.rate_per_s, service.send_lag_p99_ms, direct.send_lag_p99_ms
        )
    } else {
        String::new()
    };
    warning
        + &format!(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &'static str, p50_ms: f64, send_lag_p99_ms: f64) -> LatencyRow {
        LatencyRow {
            ran_at_utc: String::new(),
            target,
            rate_per_s: 3000,
            duration_s: 10.0,
            sent: 30_000,
            errors: 0,
            p50_ms,
            p90_ms: p50_ms,
            p99_ms: p50_ms,
            p999_ms: p50_ms,
            send_lag_p99_ms,
        }
    }

    #[test]
    fn a_generator_that_fell_behind_is_named_before_the_figures() {
        let healthy = line(&row("service", 1.3, 0.9), &row("direct", 1.0, 1.1));
        assert!(!healthy.contains("WARNING"), "{healthy}");
        assert!(healthy.contains("added p50 +0.300"), "{healthy}");
        let saturated = line(&row("service", 2821.0, 2400.0), &row("direct", 1.0, 1.2));
        assert!(
            saturated.starts_with("WARNING: the load generator fell behind its schedule at 3000/s"),
            "{saturated}"
        );
    }
}
