//! One provider endpoint: a base URL and a key, with its own protocol, model, adaptive limit,
//! pacer and health. It makes one HTTP call and learns from it; choosing an endpoint and retrying
//! belong to the pool (`UpstreamClient`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Uri;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use serde::Deserialize;
use tokio_rustls::rustls::RootCertStore;

use super::body::RequestBody;
use super::error::scrub_secrets;
use super::error::{BuildError, TransportError, UpstreamError};
use super::headers::RateHeaders;
use super::limiter::{AdaptiveLimiter, Congestion};
use super::net::{Answer, Connections, Connector, Limits, Liveness, Outage, Proxies};
use super::pacer::Pacer;
use super::settings::{AuthStyle, ConfidenceSource, EndpointSettings, Transport};
use super::templates::{PackTemplate, RequestTemplate};
use super::usage::Price;
use super::usage::{Tier, Usage};
use crate::coord::{Coordinator, SharedBudget};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::taxonomy::{AnswerForm, Taxonomies, Taxonomy};

const USER_AGENT_VALUE: &str = concat!("hn-classifier/", env!("CARGO_PKG_VERSION"));

/// How long an endpoint is left out after the provider refused its key or quota, or after
/// `BENCH_AFTER_FAILURES` server errors in a row. Not for good: a benched endpoint gets no
/// traffic to prove it recovered, so it is tried again after this.
pub const BENCH_FOR: Duration = Duration::from_secs(30);
/// The longest a connection's opening (TCP, proxy, TLS, handshake) may take, within the call's
/// own timeout.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Server errors or timeouts in a row that bench an endpoint.
const BENCH_AFTER_FAILURES: u32 = 5;

/// One taxonomy's request templates, for one title and for packs.
#[derive(Debug)]
pub struct Templates {
    pub single: RequestTemplate,
    pub packs: PackTemplate,
}

#[derive(Debug)]
pub struct Endpoint {
    name: String,
    /// The connections, which send every call with the key's header (marked sensitive, so
    /// `Debug` never shows it).
    http: Connections,
    /// The call's URL: what the shared budget is keyed by.
    url: String,
    api_key: Secret,
    model: String,
    weight: u32,
    /// The request templates of every taxonomy, by `Taxonomy::key`, built once at start-up:
    /// with the confidence written by the model, and (unless the model is known to refuse
    /// logprobs) with the label only, its confidence from logprobs.
    written: HashMap<Arc<str>, Templates>,
    label_only: HashMap<Arc<str>, Templates>,
    /// Whether calls ask for the label only and read the confidence from logprobs; cleared for
    /// good by the model's first refusal of them.
    logprobs: AtomicBool,
    limiter: AdaptiveLimiter,
    pacer: Pacer,
    price: Option<Price>,
    benched_until: Mutex<Option<Instant>>,
    failures_in_a_row: AtomicU32,
}

/// One HTTP call's outcome, with what the response said besides its body.
pub struct Attempt<T> {
    pub result: Result<T, UpstreamError>,
    pub usage: Usage,
    pub headers: RateHeaders,
    /// The HTTP status, when a response arrived.
    pub status: Option<u16>,
    pub latency: Duration,
    /// The tier the response says served the call: what it is priced at.
    pub served: Tier,
}

impl Endpoint {
    pub fn new(
        settings: EndpointSettings,
        transport: Transport,
        roots: &Arc<RootCertStore>,
        call_timeout: Duration,
        taxonomies: &Taxonomies,
        pack_size: usize,
        confidence: ConfidenceSource,
    ) -> Result<Self, BuildError> {
        let (header, value) = match settings.auth {
            AuthStyle::Bearer => (
                AUTHORIZATION,
                format!("Bearer {}", settings.api_key.expose()),
            ),
            AuthStyle::ApiKey => (
                HeaderName::from_static("api-key"),
                settings.api_key.expose().to_owned(),
            ),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| BuildError::InvalidApiKey)?;
        value.set_sensitive(true);
        let mut url = format!(
            "{}/{}",
            settings.base_url.trim_end_matches('/'),
            settings.api.path()
        );
        if let Some(query) = settings.query.as_deref().filter(|q| !q.is_empty()) {
            url = format!("{url}?{}", query.trim_start_matches('?'));
        }
        let uri: Uri = url.parse().map_err(|_| BuildError::InvalidUrl)?;
        let http2 = transport.http2_for(uri.scheme_str() == Some("https"));
        let connector = Connector::new(
            &uri,
            http2,
            roots,
            call_timeout.min(OPEN_TIMEOUT),
            &Proxies::from_env(),
        )?;
        let mut headers = http::HeaderMap::new();
        headers.insert(header, value);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let limits = Limits {
            http2_streams: http2.then_some(transport.streams_per_connection),
            max_in_flight: settings.max_in_flight,
            liveness: Liveness {
                interval: transport.ping_interval,
                timeout: transport.ping_timeout,
            },
            open_timeout: call_timeout.min(OPEN_TIMEOUT),
            max_connection_age: transport.max_connection_age,
            max_response_bytes: transport.max_response_bytes,
        };
        let http = Connections::new(connector, uri, headers, limits)?;
        let templates = |form| {
            taxonomies
                .iter()
                .map(|t| {
                    let templates = Templates {
                        single: RequestTemplate::new(settings.api, &settings.model, t, form),
                        packs: PackTemplate::new(settings.api, &settings.model, t, pack_size, form),
                    };
                    (t.key().clone(), templates)
                })
                .collect()
        };
        let form = confidence.form_for(&settings.model);
        let known_refusal =
            confidence == ConfidenceSource::Logprobs && form == AnswerForm::LabelAndConfidence;
        if known_refusal {
            tracing::info!(
                upstream = %settings.name,
                model = %settings.model,
                "this model does not return logprobs: it writes its confidence"
            );
        }
        let logprobs = form == AnswerForm::LabelOnly;
        let written = templates(AnswerForm::LabelAndConfidence);
        let label_only = if logprobs {
            templates(AnswerForm::LabelOnly)
        } else {
            HashMap::new()
        };
        Ok(Self {
            name: settings.name,
            http,
            url,
            api_key: settings.api_key,
            model: settings.model,
            weight: settings.weight.max(1),
            written,
            label_only,
            logprobs: AtomicBool::new(logprobs),
            limiter: AdaptiveLimiter::new(settings.max_in_flight),
            pacer: Pacer::new(settings.rpm_limit, settings.tpm_limit),
            price: settings.price,
            benched_until: Mutex::new(None),
            failures_in_a_row: AtomicU32::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Paces this endpoint by the budget every replica on the same URL and key shares.
    pub fn share_budget(&mut self, coordinator: &Arc<Coordinator>) {
        let budget = SharedBudget::new(coordinator.clone(), &self.url, &self.api_key);
        let local = std::mem::replace(&mut self.pacer, Pacer::new(None, None));
        self.pacer = local.with_shared_budget(budget);
    }

    /// Requests sent again because the server never processed them.
    pub fn resent(&self) -> u64 {
        self.http.resent()
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn limiter(&self) -> &AdaptiveLimiter {
        &self.limiter
    }

    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub fn price(&self) -> Option<Price> {
        self.price
    }

    /// What calls ask the model to write now: the label only while it returns logprobs, else a
    /// written confidence too.
    pub fn form(&self) -> AnswerForm {
        if self.logprobs.load(Ordering::Relaxed) {
            AnswerForm::LabelOnly
        } else {
            AnswerForm::LabelAndConfidence
        }
    }

    /// The templates of `form` (the label-only ones exist while the endpoint may use them: a
    /// call built with them is decoded with them even after a switch).
    pub fn templates(&self, taxonomy: &Taxonomy, form: AnswerForm) -> &Templates {
        let templates = match form {
            AnswerForm::LabelOnly if !self.label_only.is_empty() => &self.label_only,
            _ => &self.written,
        };
        templates
            .get(taxonomy.key())
            .expect("every taxonomy the API accepts had its templates built at start-up")
    }

    /// Whether the confidence of this endpoint's answers comes from logprobs now.
    pub fn uses_logprobs(&self) -> bool {
        self.logprobs.load(Ordering::Relaxed)
    }

    /// The model refused logprobs, or answered without them: from now on it is asked for a
    /// written confidence. Said once, in the log; `upstream_confidence_from_logprobs` reads 0.
    pub fn stop_logprobs(&self, why: &UpstreamError) {
        if self.logprobs.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                upstream = %self.name,
                model = %self.model,
                error = %why,
                "no logprobs from this model: its answers carry a written confidence from now on"
            );
        }
    }

    /// About how long a call sent here now waits behind those already here: calls in flight or
    /// queued over the rate the endpoint serves them at (its rate limit if known, else its
    /// concurrency limit over its round trip), scaled by weight. The pool sends the next call
    /// where this is lowest. Queue length alone is not enough: a call committed to a slower
    /// endpoint's queue waits longer behind the same number of calls.
    pub fn load(&self) -> f64 {
        let s = self.limiter.snapshot();
        let mut rate = self.limiter.throughput();
        if let Some(paced) = self.pacer.request_rate() {
            rate = rate.min(paced);
        }
        (s.in_flight + s.waiting + 1) as f64 / (rate.max(1e-3) * f64::from(self.weight))
    }

    /// When the endpoint is left out until, if it is.
    pub fn benched_until(&self) -> Option<Instant> {
        let until = *self.benched_until.lock().expect("health lock poisoned");
        until.filter(|at| Instant::now() < *at)
    }

    pub fn is_benched(&self) -> bool {
        self.benched_until().is_some()
    }

    /// Waits while no connection to the endpoint can be had (openings failing, none live),
    /// with the other calls, for the one probe's outcome. False when `by` comes first; the
    /// error then is `unreachable`.
    pub async fn wait_usable(&self, by: Instant) -> bool {
        self.http.wait_usable(by).await
    }

    /// Why no connection can be opened now, while none can.
    pub fn unreachable(&self) -> Option<UpstreamError> {
        let error = self.http.blocked()?;
        Some(UpstreamError::Transport(TransportError::Shared(error)))
    }

    /// Since when, and why, the endpoint cannot be reached, while it cannot.
    pub fn outage(&self) -> Option<Outage> {
        self.http.outage()
    }

    fn bench(&self, why: &str) {
        *self.benched_until.lock().expect("health lock poisoned") =
            Some(Instant::now() + BENCH_FOR);
        tracing::warn!(upstream = %self.name, why, bench_s = BENCH_FOR.as_secs(), "upstream benched");
    }

    /// Feeds one attempt to the metrics, the limiter, the pacer and the health flag.
    pub fn learn<T>(&self, attempt: &Attempt<T>, metrics: &Metrics) {
        let status = match (&attempt.status, &attempt.result) {
            (Some(code), _) => code.to_string(),
            (None, Err(UpstreamError::Timeout(_))) => "timeout".to_owned(),
            (None, _) => "transport".to_owned(),
        };
        metrics
            .upstream_requests
            .with_label_values(&[&self.name, &status])
            .inc();
        metrics
            .upstream_duration
            .observe(attempt.latency.as_secs_f64());
        let usage = &attempt.usage;
        for (kind, tokens) in [
            ("input", usage.input_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("output", usage.output_tokens),
        ] {
            metrics
                .upstream_tokens
                .with_label_values(&[kind, &self.model])
                .inc_by(tokens);
        }
        if let Some(price) = &self.price {
            metrics
                .upstream_cost
                .with_label_values(&[&self.model])
                .inc_by(price.cost(usage));
        }

        let rate_limited = attempt
            .result
            .as_ref()
            .is_err_and(UpstreamError::is_rate_limited);
        match &attempt.result {
            _ if rate_limited => self.limiter.on_congestion(Congestion::RateLimited),
            Err(UpstreamError::Timeout(_)) => self.limiter.on_congestion(Congestion::Timeout),
            Ok(_) => self.limiter.on_success(attempt.latency),
            Err(_) => {}
        }
        let answered = attempt.status.is_some_and(|s| (200..300).contains(&s));
        let sent_at = tokio::time::Instant::now() - attempt.latency;
        self.pacer
            .observe(&attempt.headers, rate_limited, answered, sent_at);
        self.track_health(&attempt.result);
    }

    /// Benches the endpoint when the provider refuses its key or quota, or after several server
    /// errors or timeouts in a row; any answer from the provider clears the streak.
    fn track_health<T>(&self, result: &Result<T, UpstreamError>) {
        match result {
            Err(e) if e.is_refusal_of_key() => self.bench("the provider refused the key or quota"),
            // One dead connection is not a failing endpoint: its calls go out again on a fresh
            // one, and if that cannot be opened, the openings' failures count.
            Err(UpstreamError::Transport(e)) if e.is_connection_replaced() => {}
            Err(UpstreamError::Timeout(_) | UpstreamError::Transport(_))
            | Err(UpstreamError::Http { status: 500.., .. }) => {
                let streak = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= BENCH_AFTER_FAILURES {
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    self.bench("server errors or timeouts in a row");
                }
            }
            Err(_) => self.failures_in_a_row.store(0, Ordering::Relaxed),
            Ok(_) => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                *self.benched_until.lock().expect("health lock poisoned") = None;
            }
        }
    }

    /// One HTTP call of `body` within `timeout`, its 2xx body read by `decode`.
    pub async fn call<T>(
        &self,
        body: RequestBody,
        timeout: Duration,
        decode: impl FnOnce(&[u8]) -> (Result<T, UpstreamError>, Usage),
    ) -> Attempt<T> {
        let started = Instant::now();
        let failed = |error, headers, status| Attempt {
            result: Err(error),
            usage: Usage::default(),
            headers,
            status,
            latency: started.elapsed(),
            served: Tier::Standard,
        };
        let Answer {
            status,
            headers,
            body,
        } = match tokio::time::timeout(timeout, self.http.send(body)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                return failed(UpstreamError::Transport(e), RateHeaders::default(), None);
            }
            Err(_) => {
                return failed(
                    UpstreamError::Timeout(timeout),
                    RateHeaders::default(),
                    None,
                );
            }
        };
        let headers = RateHeaders::parse(&headers);
        if !status.is_success() {
            let error = self.http_error(status.as_u16(), &body, &headers);
            return failed(error, headers, Some(status.as_u16()));
        }
        let (result, usage) = decode(&body);
        Attempt {
            result,
            usage,
            headers,
            status: Some(status.as_u16()),
            latency: started.elapsed(),
            served: served_tier(&body),
        }
    }

    /// A non-2xx answer, read as OpenAI's `{"error":{"message","type","param","code"}}` when it is
    /// one, with anything key-like scrubbed from the message.
    fn http_error(&self, status: u16, body: &[u8], headers: &RateHeaders) -> UpstreamError {
        #[derive(Deserialize)]
        struct Envelope {
            error: ErrorBody,
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            message: Option<String>,
            code: Option<String>,
            param: Option<String>,
        }
        let (code, message, param) = match serde_json::from_slice::<Envelope>(body) {
            Ok(e) => (
                e.error.code,
                e.error.message.unwrap_or_default(),
                e.error.param,
            ),
            Err(_) => (None, not_json_message(status, body), None),
        };
        let message = scrub_secrets(&message, self.api_key.expose());
        let logprobs_param = matches!(
            param.as_deref(),
            Some("top_logprobs" | "logprobs" | "include")
        );
        // Only a request that asked for logprobs is refused for them, whatever the endpoint
        // uses by the time the answer comes.
        if status == 400 && logprobs_param {
            return UpstreamError::LogprobsRefused(message);
        }
        UpstreamError::Http {
            status,
            code,
            message,
            retry_after: headers.retry_after,
            should_retry: headers.should_retry,
        }
    }
}

/// The message of an error answer that is not OpenAI's JSON: a proxy's 407 says which setting
/// to check, an HTML page (a proxy's, a gateway's, a load balancer's) is named by its title
/// rather than quoted as markup, anything else is its first 200 characters.
fn not_json_message(status: u16, body: &[u8]) -> String {
    if status == 407 {
        return super::error::PROXY_CREDENTIALS.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let start = text
        .trim_start()
        .get(..15)
        .unwrap_or("")
        .to_ascii_lowercase();
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        let title = html_title(&text)
            .map(|t| format!(" titled {t:?}"))
            .unwrap_or_default();
        return format!(
            "an HTML page{title} instead of the provider's JSON: a proxy, gateway or load \
             balancer answered (check OPENAI_BASE_URL and the proxy settings)"
        );
    }
    text.chars().take(200).collect()
}

/// The text of an HTML page's `<title>`, whitespace collapsed, at most 100 characters.
fn html_title(page: &str) -> Option<String> {
    let lower = page.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let title: String = page[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!title.is_empty()).then(|| title.chars().take(100).collect())
}

/// The `service_tier` a 2xx body names (standard when it names none); its `id` and `model` go
/// on the call's span (`gen_ai.response.*`) when traces are exported.
fn served_tier(body: &[u8]) -> Tier {
    #[derive(Deserialize)]
    struct Served<'a> {
        #[serde(borrow, default)]
        service_tier: Option<&'a str>,
        #[serde(borrow, default)]
        id: Option<&'a str>,
        #[serde(borrow, default)]
        model: Option<&'a str>,
    }
    let Ok(served) = serde_json::from_slice::<Served>(body) else {
        return Tier::Standard;
    };
    let span = tracing::Span::current();
    if !span.is_disabled() {
        if let Some(id) = served.id {
            span.record("gen_ai.response.id", id);
        }
        if let Some(model) = served.model {
            span.record("gen_ai.response.model", model);
        }
    }
    Tier::served(served.service_tier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_page_that_is_not_json_becomes_a_message_a_person_can_act_on() {
        let squid = br#"<!DOCTYPE html PUBLIC "-//W3C//DTD HTML 4.01//EN">
<html><head><title>ERROR: Cache Access Denied</title></head><body>...</body></html>"#;
        let proxy = not_json_message(407, squid);
        assert!(
            proxy.contains("HTTPS_PROXY, HTTP_PROXY or ALL_PROXY"),
            "{proxy}"
        );
        assert!(!proxy.contains('<'), "{proxy}");
        let gateway =
            b"<html>\n<head><title>502 Bad\n  Gateway</title></head>\n<body>nginx</body></html>";
        let page = not_json_message(502, gateway);
        assert!(
            page.starts_with("an HTML page titled \"502 Bad Gateway\""),
            "{page}"
        );
        assert!(!page.contains("<body>"), "{page}");
        assert_eq!(
            not_json_message(500, b"upstream connect error"),
            "upstream connect error"
        );
    }
}
