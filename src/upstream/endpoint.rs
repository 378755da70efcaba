//! One provider endpoint: a base URL and a key, with its own protocol, model, adaptive limit,
//! pacer and health. It makes one HTTP call and learns from it; choosing an endpoint and retrying
//! belong to the pool (`UpstreamClient`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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
use super::reasoning::{ReasoningSettings, Thinking};
use super::settings::{AuthStyle, ConfidenceSource, EndpointSettings, Transport, UpstreamApi};
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

/// Unreadable logprobs in a row (no readable ones between) after which the endpoint says, once,
/// that its logprobs keep failing.
const UNREADABLE_WARN_AFTER: u32 = 20;

/// One taxonomy's request templates, for one title and for packs.
#[derive(Debug)]
pub struct Templates {
    pub single: RequestTemplate,
    pub packs: PackTemplate,
}

/// Every taxonomy's templates in one form, by `Taxonomy::key`.
type ByTaxonomy = HashMap<Arc<str>, Templates>;

/// What an endpoint's calls ask now, with their templates built once: replaced whole when a
/// refusal teaches the endpoint to ask otherwise. A call reads it once per attempt and decodes
/// its answer with the same one, whatever the endpoint switches to meanwhile.
#[derive(Debug)]
pub struct Profile {
    pub thinking: Thinking,
    /// Whether calls ask for the label only and read the confidence from logprobs.
    pub logprobs: bool,
    /// With the confidence written by the model, and (while `logprobs`) with the label only.
    written: ByTaxonomy,
    label_only: ByTaxonomy,
    /// The same, with more room to think: for the one retry of an answer the cap cut short
    /// while the model reasoned.
    roomier_written: ByTaxonomy,
    roomier_label_only: ByTaxonomy,
}

impl Profile {
    /// What calls ask the model to write: the label only while its confidence comes from
    /// logprobs, a written confidence too otherwise.
    pub fn form(&self) -> AnswerForm {
        if self.logprobs {
            AnswerForm::LabelOnly
        } else {
            AnswerForm::LabelAndConfidence
        }
    }

    /// The templates of `form`, with more room to think when `roomier`.
    pub fn templates(&self, taxonomy: &Taxonomy, form: AnswerForm, roomier: bool) -> &Templates {
        let set = match (form, roomier) {
            (AnswerForm::LabelOnly, false) if self.logprobs => &self.label_only,
            (AnswerForm::LabelOnly, true) if self.logprobs => &self.roomier_label_only,
            (_, false) => &self.written,
            (_, true) => &self.roomier_written,
        };
        set.get(taxonomy.key())
            .expect("every taxonomy the API accepts had its templates built")
    }
}

/// What a profile is built from besides what it asks: fixed at start-up.
#[derive(Debug)]
struct ProfileBuilder {
    api: super::settings::UpstreamApi,
    model: String,
    taxonomies: Taxonomies,
    pack_size: usize,
    confidence: ConfidenceSource,
    reasoning: ReasoningSettings,
}

impl ProfileBuilder {
    /// The profile asking with `thinking`, for logprobs unless `refused` (the model refused them
    /// once) or the model gives none at that effort.
    fn build(&self, thinking: Thinking, refused: bool) -> Profile {
        let logprobs =
            self.confidence == ConfidenceSource::Logprobs && thinking.logprobs() && !refused;
        let templates = |form, thinking: Thinking| -> ByTaxonomy {
            self.taxonomies
                .iter()
                .map(|t| {
                    let templates = Templates {
                        single: RequestTemplate::new(self.api, &self.model, t, form, thinking),
                        packs: PackTemplate::new(
                            self.api,
                            &self.model,
                            t,
                            self.pack_size,
                            form,
                            thinking,
                        ),
                    };
                    (t.key().clone(), templates)
                })
                .collect()
        };
        let label_only = |thinking| {
            if logprobs {
                templates(AnswerForm::LabelOnly, thinking)
            } else {
                HashMap::new()
            }
        };
        let roomier = thinking.roomier();
        Profile {
            thinking,
            logprobs,
            written: templates(AnswerForm::LabelAndConfidence, thinking),
            label_only: label_only(thinking),
            roomier_written: templates(AnswerForm::LabelAndConfidence, roomier),
            roomier_label_only: label_only(roomier),
        }
    }
}

/// Answers whose logprobs could not be read, in a row: said once, loudly, when they keep
/// failing.
#[derive(Debug, Default)]
struct UnreadableStreak {
    in_a_row: AtomicU32,
    warned: AtomicBool,
}

#[derive(Debug)]
pub struct Endpoint {
    name: String,
    /// The connections, which send every call with the key's header (marked sensitive, so
    /// `Debug` never shows it).
    http: Connections,
    /// The call's URL: what the shared budget is keyed by.
    url: String,
    /// The base URL and the API's path under it: where a job's Batch API lane sends its file.
    base_url: String,
    api: UpstreamApi,
    api_key: Secret,
    model: String,
    weight: u32,
    /// What calls ask now (effort, caps, logprobs), with their templates.
    profile: ArcSwap<Profile>,
    builder: ProfileBuilder,
    /// Held while a refusal is learnt from, so two calls refused at once rebuild once.
    learning: Mutex<()>,
    /// Set by the model's first refusal of logprobs; never cleared.
    logprobs_refused: AtomicBool,
    unreadable: UnreadableStreak,
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
        (confidence, reasoning): (ConfidenceSource, ReasoningSettings),
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
        let openai = uri.host() == Some("api.openai.com");
        let http = Connections::new(connector, uri, headers, limits)?;
        let builder = ProfileBuilder {
            api: settings.api,
            model: settings.model.clone(),
            taxonomies: taxonomies.clone(),
            pack_size,
            confidence,
            reasoning,
        };
        let profile = builder.build(Thinking::new(&settings.model, openai, reasoning), false);
        let effort = profile.thinking.effort.map(|e| e.name());
        tracing::info!(
            upstream = %settings.name,
            model = %settings.model,
            reasoning_effort = effort.unwrap_or("(not sent)"),
            room_to_think = profile.thinking.room,
            confidence = if profile.logprobs { "logprobs" } else { "self" },
            "upstream endpoint"
        );
        Ok(Self {
            name: settings.name,
            http,
            url,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api: settings.api,
            api_key: settings.api_key,
            model: settings.model,
            weight: settings.weight.max(1),
            profile: ArcSwap::from_pointee(profile),
            builder,
            learning: Mutex::new(()),
            logprobs_refused: AtomicBool::new(false),
            unreadable: UnreadableStreak::default(),
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

    /// The base URL, the key and the API path (`/v1/responses`): what the Batch API needs.
    pub fn batch_target(&self) -> (&str, &Secret, &'static str) {
        let path = match self.api {
            UpstreamApi::Responses => "/v1/responses",
            UpstreamApi::Chat => "/v1/chat/completions",
        };
        (&self.base_url, &self.api_key, path)
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

    /// What calls ask now, with their templates.
    pub fn profile(&self) -> Arc<Profile> {
        self.profile.load_full()
    }

    /// Whether the confidence of this endpoint's answers comes from logprobs now.
    pub fn uses_logprobs(&self) -> bool {
        self.profile.load().logprobs
    }

    /// Learns from the provider's refusal of a parameter `asked` sent (logprobs, the effort,
    /// `max_tokens`): later calls ask otherwise. True when the call should go again at once:
    /// the endpoint asks otherwise now (this refusal taught it, or another call's already had).
    /// Said once per change, in the log.
    pub fn learn_refusal(&self, asked: &Profile, why: &UpstreamError) -> bool {
        let _learning = self.learning.lock().expect("learning lock poisoned");
        let now = self.profile.load_full();
        let reasoning = self.builder.reasoning;
        // Compared part by part: another call may have changed another part meanwhile, and
        // this refusal must still be learnt from.
        let thinking = match why {
            UpstreamError::LogprobsRefused(_) => {
                self.logprobs_refused.store(true, Ordering::Relaxed);
                if !now.logprobs {
                    return true;
                }
                now.thinking
            }
            UpstreamError::EffortRefused(_) if now.thinking.effort != asked.thinking.effort => {
                return true;
            }
            UpstreamError::EffortRefused(message) => {
                now.thinking.after_effort_refused(message, reasoning)
            }
            UpstreamError::MaxTokensRefused(_)
                if now.thinking.chat_cap != asked.thinking.chat_cap =>
            {
                return true;
            }
            UpstreamError::MaxTokensRefused(_) => now.thinking.after_max_tokens_refused(),
            _ => return false,
        };
        self.replace_profile(&now, thinking, why)
    }

    /// Learns from an answer the cap cut short while the model reasoned at the room `asked`
    /// gave (a model the table does not know to reason: an Azure deployment's name, a new
    /// model): later calls get the larger room, so only the first few pay for a second call.
    pub fn learn_more_room(&self, asked: &Profile, why: &UpstreamError) {
        let _learning = self.learning.lock().expect("learning lock poisoned");
        let now = self.profile.load_full();
        if now.thinking.room == asked.thinking.room {
            self.replace_profile(&now, now.thinking.roomier(), why);
        }
    }

    /// Puts the profile that asks with `thinking` in place of `now`, if it asks otherwise; true
    /// when the endpoint asks otherwise now. Said in the log, as a warning.
    fn replace_profile(&self, now: &Profile, thinking: Thinking, why: &UpstreamError) -> bool {
        let refused = self.logprobs_refused.load(Ordering::Relaxed);
        let logprobs_now = now.logprobs && !refused;
        if thinking == now.thinking && logprobs_now == now.logprobs {
            return false;
        }
        let next = self.builder.build(thinking, refused);
        tracing::warn!(
            upstream = %self.name,
            model = %self.model,
            error = %why,
            reasoning_effort = next.thinking.effort.map_or("(not sent)", |e| e.name()),
            room_to_think = next.thinking.room,
            confidence = if next.logprobs { "logprobs" } else { "self" },
            "the provider refused or cut a call short: calls ask otherwise from now on"
        );
        self.profile.store(Arc::new(next));
        true
    }

    /// Counts an answer whose logprobs could not be read (`readable` false) or could: after
    /// `UNREADABLE_WARN_AFTER` in a row, says once, loudly, what the likely cause is. Each such
    /// answer costs a second call for a written confidence.
    pub fn note_logprobs(&self, readable: bool, metrics: &Metrics) {
        if readable {
            // Read first: every answer passes here, and a store would bounce the cache line
            // between the cores even when the streak is already 0.
            if self.unreadable.in_a_row.load(Ordering::Relaxed) != 0 {
                self.unreadable.in_a_row.store(0, Ordering::Relaxed);
            }
            return;
        }
        metrics
            .upstream_logprobs_unreadable
            .with_label_values(&[&self.name])
            .inc();
        let streak = self.unreadable.in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= UNREADABLE_WARN_AFTER && !self.unreadable.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                upstream = %self.name,
                model = %self.model,
                in_a_row = streak,
                "this endpoint's logprobs keep failing to read: every answer is asked again for a \
                 written confidence, a second call each. Likely cause: a chat template whose \
                 tokens do not spell the text it emits (llama-server: start it with \
                 --chat-template, e.g. gemma, not the default jinja one), or a server that \
                 ignores the logprobs parameters. Set HNC_CONFIDENCE=self to stop asking."
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
            ("reasoning", usage.reasoning_tokens),
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
        // A refused parameter the endpoint can send otherwise. Only a request that sent it is
        // refused for it, whatever the endpoint sends by the time the answer comes.
        if status == 400 {
            match param.as_deref() {
                Some("top_logprobs" | "logprobs" | "include") => {
                    return UpstreamError::LogprobsRefused(message);
                }
                Some("reasoning.effort" | "reasoning_effort" | "reasoning") => {
                    return UpstreamError::EffortRefused(message);
                }
                Some("max_tokens") => return UpstreamError::MaxTokensRefused(message),
                _ => {}
            }
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
