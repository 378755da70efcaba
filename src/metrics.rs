//! Prometheus metrics under the names docs/observability.md lists. One registry per application, held in its
//! state rather than a global recorder, so two apps in one process (tests) never mix counts.
//! Gauges that mirror live state (calls in flight, the adaptive limit, running batches) are read
//! at scrape time rather than kept in step on every change.

use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 1 ms to a minute: LLM calls sit in the hundreds of milliseconds, batches longer.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By matched route (never the raw path) and status code.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    /// Items by outcome: `ok` or the per-item `error_code`.
    pub items: IntCounterVec,
    pub batches_in_flight: IntGauge,
    /// Items accepted, by client identity (`key-xxxxxxxx`, never the key; `anonymous` if open).
    pub client_items: IntCounterVec,
    /// Upstream calls by endpoint name and HTTP status, or `timeout` / `transport`.
    pub upstream_requests: IntCounterVec,
    /// 1 while an endpoint is benched (refused key or quota, or failing), by endpoint name.
    pub upstream_benched: IntGaugeVec,
    /// Seconds since an endpoint's connections stopped opening (0 while they open), by endpoint.
    pub upstream_unreachable_seconds: prometheus::GaugeVec,
    pub upstream_duration: Histogram,
    /// Retries by the error code that caused them.
    pub upstream_retries: IntCounterVec,
    pub upstream_resent: IntCounterVec,
    pub upstream_in_flight: IntGauge,
    pub upstream_concurrency_limit: IntGauge,
    /// Tokens the provider counted, by `input` / `cached_input` / `output` and model.
    pub upstream_tokens: IntCounterVec,
    /// USD at the configured prices, by model (only models with a known price).
    pub upstream_cost: CounterVec,
    /// Answers by where they came from: `upstream`, `cache`, `single_flight`.
    pub answers: IntCounterVec,
    /// 1 while `/readyz` would answer ready (started and not draining; the provider's state
    /// does not enter into it).
    pub service_ready: IntGauge,
    /// The share of each endpoint's rate limit its pacer aims for (0.98 at most).
    pub upstream_rate_share: prometheus::GaugeVec,
    /// Calls queued for a local slot (`upstream_in_flight` counts those holding one).
    pub upstream_queued: IntGauge,
    /// Calls holding a slot while they wait for the provider's rate limit.
    pub upstream_rate_limit_waiting: IntGauge,
    /// The autoscaling signal: this replica's busy share of its own capacity (see
    /// `UpstreamClient::saturation`); above 1 when calls queue for a slot.
    pub replica_saturation: Gauge,
    /// Commands sent to the shared Redis, by operation (`budget_lease`, `quota_take`, ...).
    pub redis_commands: IntCounterVec,
    /// Redis commands that failed or timed out, by operation: each switched the replica to
    /// deciding alone for a second.
    pub redis_errors: IntCounterVec,
    /// 1 while budget, quotas and cache are shared through Redis, 0 while this replica decides
    /// alone (Redis unset reads 0 as well).
    pub redis_coordinated: IntGauge,
    /// 1 while an endpoint's confidences come from logprobs, 0 while its model writes them.
    pub upstream_confidence_from_logprobs: IntGaugeVec,
    /// Answers whose logprobs came unreadable or not at all (each asked again for a written
    /// confidence), by endpoint.
    pub upstream_logprobs_unreadable: IntCounterVec,
    /// Job webhook attempts by outcome: `delivered`, `retried`, `failed` (given up).
    pub job_webhooks: IntCounterVec,
    /// Jobs kept by this replica, by status; titles pending in its open jobs; the age of its
    /// oldest open job (0 with none).
    pub jobs: IntGaugeVec,
    pub job_titles_pending: IntGauge,
    pub job_oldest_open_seconds: Gauge,
    /// Background tasks of the process (`crate::tasks`): connection drivers, server connections.
    pub background_tasks: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let seconds = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec())
        };
        let metrics = Self {
            http_requests: IntCounterVec::new(
                Opts::new(
                    "http_server_requests_total",
                    "HTTP requests answered, by matched route and status.",
                ),
                &["route", "status"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                seconds(
                    "http_server_request_duration_seconds",
                    "Time to answer an HTTP request, by matched route.",
                ),
                &["route"],
            )
            .expect("valid metric"),
            items: IntCounterVec::new(
                Opts::new(
                    "classify_items_total",
                    "Items classified, by outcome (ok or the error code).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            client_items: IntCounterVec::new(
                Opts::new(
                    "classify_client_items_total",
                    "Items accepted, by client identity (a hash prefix of the key, never the key).",
                ),
                &["client"],
            )
            .expect("valid metric"),
            batches_in_flight: IntGauge::new(
                "classify_batches_in_flight",
                "Batches being classified now.",
            )
            .expect("valid metric"),
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "upstream_requests_total",
                    "Calls to the provider, by endpoint and HTTP status, timeout or transport.",
                ),
                &["upstream", "status"],
            )
            .expect("valid metric"),
            upstream_benched: IntGaugeVec::new(
                Opts::new(
                    "upstream_benched",
                    "1 while an endpoint is left out after refusals or repeated failures.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upstream_unreachable_seconds: prometheus::GaugeVec::new(
                Opts::new(
                    "upstream_unreachable_seconds",
                    "Seconds since the endpoint's connections stopped opening (refused, DNS, TLS, proxy); 0 while they open.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upstream_duration: Histogram::with_opts(seconds(
                "upstream_request_duration_seconds",
                "Time one call to the provider took.",
            ))
            .expect("valid metric"),
            upstream_retries: IntCounterVec::new(
                Opts::new(
                    "upstream_retries_total",
                    "Calls retried, by the error code that caused the retry.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            upstream_resent: IntCounterVec::new(
                Opts::new(
                    "upstream_unprocessed_resent_total",
                    "Requests the server never processed (refused by GOAWAY or REFUSED_STREAM, or \
                     on a closing connection), sent again at once: not failures, not retries.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upstream_in_flight: IntGauge::new(
                "upstream_in_flight",
                "Calls to the provider in flight now.",
            )
            .expect("valid metric"),
            upstream_concurrency_limit: IntGauge::new(
                "upstream_concurrency_limit",
                "The adaptive limit on calls in flight.",
            )
            .expect("valid metric"),
            upstream_tokens: IntCounterVec::new(
                Opts::new(
                    "upstream_tokens_total",
                    "Tokens the provider counted, by kind (input; cached_input, the part of input its cache served; output; reasoning, the part of output spent thinking) and model.",
                ),
                &["kind", "model"],
            )
            .expect("valid metric"),
            upstream_cost: CounterVec::new(
                Opts::new(
                    "upstream_cost_usd_total",
                    "What the provider's calls cost at the configured prices, by model.",
                ),
                &["model"],
            )
            .expect("valid metric"),
            answers: IntCounterVec::new(
                Opts::new(
                    "classify_answers_total",
                    "Answers by source: upstream (a call of its own), cache, single_flight (another item's call).",
                ),
                &["source"],
            )
            .expect("valid metric"),
            service_ready: IntGauge::new(
                "service_ready",
                "1 while the replica is ready (started and not draining, whatever the provider's state).",
            )
            .expect("valid metric"),
            upstream_rate_share: prometheus::GaugeVec::new(
                Opts::new(
                    "upstream_rate_share",
                    "Share of the endpoint's rate limit its pacer aims for (0.98 at most; lower after 429s).",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upstream_queued: IntGauge::new(
                "upstream_queued",
                "Calls queued for a local upstream slot.",
            )
            .expect("valid metric"),
            upstream_rate_limit_waiting: IntGauge::new(
                "upstream_rate_limit_waiting",
                "Calls holding a slot while they wait for the provider's rate limit.",
            )
            .expect("valid metric"),
            replica_saturation: Gauge::new(
                "replica_saturation",
                "Busy share of this replica's own capacity (calls at the provider, plus calls queued for a slot unless the rate limit holds them, over the limit): the autoscaling signal.",
            )
            .expect("valid metric"),
            redis_commands: IntCounterVec::new(
                Opts::new(
                    "redis_commands_total",
                    "Commands sent to the shared Redis, by operation.",
                ),
                &["op"],
            )
            .expect("valid metric"),
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "redis_errors_total",
                    "Redis commands that failed or timed out, by operation.",
                ),
                &["op"],
            )
            .expect("valid metric"),
            redis_coordinated: IntGauge::new(
                "redis_coordinated",
                "1 while budget, quotas and cache are shared through Redis; 0 while deciding alone.",
            )
            .expect("valid metric"),
            upstream_confidence_from_logprobs: IntGaugeVec::new(
                Opts::new(
                    "upstream_confidence_from_logprobs",
                    "1 while an endpoint's confidences come from logprobs, 0 while its model writes them (HNC_CONFIDENCE=self, or a model that refuses logprobs).",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            upstream_logprobs_unreadable: IntCounterVec::new(
                Opts::new(
                    "upstream_logprobs_unreadable_total",
                    "Answers asked for logprobs that came without them or with logprobs that do not spell the text; each is asked again for a written confidence (a second call).",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            jobs: IntGaugeVec::new(
                Opts::new("jobs", "Jobs kept by this replica (HNC_DATA_DIR), by status."),
                &["status"],
            )
            .expect("valid metric"),
            job_titles_pending: IntGauge::new(
                "job_titles_pending",
                "Titles of queued and running jobs not classified yet.",
            )
            .expect("valid metric"),
            job_oldest_open_seconds: Gauge::new(
                "job_oldest_open_seconds",
                "Seconds since the oldest queued or running job was submitted; 0 with none.",
            )
            .expect("valid metric"),
            job_webhooks: IntCounterVec::new(
                Opts::new(
                    "job_webhook_deliveries_total",
                    "Job webhook attempts by outcome: delivered (a 2xx), retried (tried again later), failed (the schedule ran out).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            background_tasks: IntGauge::new(
                "background_tasks",
                "Background tasks running in the process (connection drivers, server connections).",
            )
            .expect("valid metric"),
            registry,
        };
        metrics.register_all();
        // Series whose labels are known now start at 0 (the others: `start_at_zero`).
        for source in ["upstream", "cache", "single_flight"] {
            metrics.answers.with_label_values(&[source]);
        }
        metrics.items.with_label_values(&["ok"]);
        metrics
    }

    fn register_all(&self) {
        let collectors: [Box<dyn prometheus::core::Collector>; 31] = [
            Box::new(self.upstream_confidence_from_logprobs.clone()),
            Box::new(self.job_webhooks.clone()),
            Box::new(self.jobs.clone()),
            Box::new(self.job_titles_pending.clone()),
            Box::new(self.job_oldest_open_seconds.clone()),
            Box::new(self.upstream_logprobs_unreadable.clone()),
            Box::new(self.background_tasks.clone()),
            Box::new(self.answers.clone()),
            Box::new(self.service_ready.clone()),
            Box::new(self.upstream_unreachable_seconds.clone()),
            Box::new(self.upstream_rate_share.clone()),
            Box::new(self.upstream_queued.clone()),
            Box::new(self.upstream_rate_limit_waiting.clone()),
            Box::new(self.replica_saturation.clone()),
            Box::new(self.redis_commands.clone()),
            Box::new(self.redis_errors.clone()),
            Box::new(self.redis_coordinated.clone()),
            Box::new(self.upstream_benched.clone()),
            Box::new(self.upstream_cost.clone()),
            Box::new(self.client_items.clone()),
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.items.clone()),
            Box::new(self.batches_in_flight.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.upstream_retries.clone()),
            Box::new(self.upstream_resent.clone()),
            Box::new(self.upstream_in_flight.clone()),
            Box::new(self.upstream_concurrency_limit.clone()),
            Box::new(self.upstream_tokens.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("each metric registered once");
        }
    }

    /// Creates the series with a known set of labels at 0, so that an alert or a dashboard on
    /// them sees 0 from start-up rather than no series until the first count.
    pub fn start_at_zero(&self, retry_reasons: &[&str], redis_ops: &[&str], job_statuses: &[&str]) {
        for reason in retry_reasons {
            self.upstream_retries.with_label_values(&[reason]);
        }
        for op in redis_ops {
            self.redis_commands.with_label_values(&[op]);
            self.redis_errors.with_label_values(&[op]);
        }
        for outcome in ["delivered", "retried", "failed"] {
            self.job_webhooks.with_label_values(&[outcome]);
        }
        for status in job_statuses {
            self.jobs.with_label_values(&[status]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_designed_names() {
        let m = Metrics::new();
        m.http_requests
            .with_label_values(&["/classify-batch", "200"])
            .inc();
        m.items.with_label_values(&["ok"]).inc_by(3);
        m.upstream_tokens
            .with_label_values(&["input", "gpt-4.1-mini"])
            .inc_by(120);
        m.upstream_duration.observe(0.3);
        let text = m.encode();
        for name in [
            "http_server_requests_total{route=\"/classify-batch\",status=\"200\"} 1",
            "classify_items_total{outcome=\"ok\"} 3",
            "upstream_tokens_total{kind=\"input\",model=\"gpt-4.1-mini\"} 120",
            "upstream_request_duration_seconds_count 1",
            "classify_batches_in_flight 0",
            "upstream_concurrency_limit 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
