//! The one upstream client of the process: every endpoint, the choice of endpoint for each
//! attempt, and the one retry loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::body::RequestBody;
use super::endpoint::{Attempt, Endpoint};
use super::endpoint::{Profile, Templates};
use super::error::{BuildError, TransportError, UpstreamError};
use super::limiter::LimiterSnapshot;
use super::retry::{Decision, Failure, GiveUp, ItemDeadline, RetryPolicy};
use super::settings::{ConfidenceSource, ServiceTier, UpstreamSettings};
use super::usage::{Prediction, Usage};
use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::taxonomy::{AnswerForm, Taxonomies, Taxonomy};

tokio::task_local! {
    /// The tier a job's lane asks for (`flex`), over the configured one.
    static LANE_TIER: ServiceTier;
}

/// Runs `future` with its calls asking for `tier` (a job's flex lane), whatever
/// `HNC_SERVICE_TIER` says.
pub async fn with_tier<F: std::future::Future>(tier: ServiceTier, future: F) -> F::Output {
    LANE_TIER.scope(tier, future).await
}

fn lane_tier() -> Option<ServiceTier> {
    LANE_TIER.try_with(|t| *t).ok()
}

/// Refusals of a parameter one item may learn from and go again after (logprobs, the effort,
/// `max_tokens`): each teaches the endpoint once, so more means a provider that keeps refusing
/// what it listed.
const MAX_LEARNT_REFUSALS: u32 = 4;

/// The span of one call, with the GenAI semantic conventions (only when traces are exported;
/// titles only with `HNC_TRACE_CONTENT=true`).
fn call_span(
    endpoint: &Endpoint,
    attempt: u32,
    tier: Option<ServiceTier>,
    titles: &[&str],
    queued: Duration,
) -> tracing::Span {
    if !crate::telemetry::tracing_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "upstream call",
        otel.name = format!("chat {}", endpoint.model()),
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "openai",
        gen_ai.system = "openai",
        gen_ai.request.model = endpoint.model(),
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.response.id = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        hnc.attempt = attempt,
        hnc.upstream = endpoint.name(),
        hnc.items = titles.len(),
        hnc.queue_wait_ms = queued.as_secs_f64() * 1000.0,
        hnc.service_tier = tier.map(ServiceTier::name),
        hnc.titles = tracing::field::Empty,
    );
    if crate::telemetry::trace_content() {
        span.record("hnc.titles", tracing::field::debug(titles));
    }
    span
}

fn record_outcome<T>(span: &tracing::Span, attempt: &Attempt<T>) {
    if span.is_disabled() {
        return;
    }
    span.record("gen_ai.usage.input_tokens", attempt.usage.input_tokens);
    span.record("gen_ai.usage.output_tokens", attempt.usage.output_tokens);
    if let Some(status) = attempt.status {
        span.record("http.response.status_code", status);
    }
    if let Err(error) = &attempt.result {
        span.record("error.type", error.code());
    }
}

/// One endpoint's state: what `/healthz` details and the metrics say of the provider. None
/// of it makes the replica unready: every replica shares the provider.
#[derive(Debug, Clone)]
pub struct EndpointHealth<'a> {
    pub name: &'a str,
    /// Left out after a refused key or quota, or failures in a row.
    pub benched: bool,
    /// How long its connections have failed to open, while they do.
    pub unreachable_for: Option<Duration>,
    /// The last opening's failure, while they do.
    pub last_error: Option<String>,
}

/// Why a failed call goes again at once, outside the retry budget.
#[derive(Debug, Clone, Copy)]
enum AtOnce {
    /// Its logprobs were missing or unreadable: asked again for a written confidence.
    Written,
    /// The cap cut it short while the model reasoned: asked again with more room to think.
    Roomier,
    /// The provider refused a parameter, and the endpoint asks otherwise now.
    Learnt,
}

/// See `UpstreamClient::saturation`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    pub ratio: f64,
    /// Calls holding a slot while they wait for the rate limit.
    pub waiting_for_rate_limit: usize,
}

fn least_loaded<'e>(endpoints: impl Iterator<Item = &'e Endpoint>) -> Option<&'e Endpoint> {
    endpoints.min_by(|a, b| a.load().total_cmp(&b.load()))
}

/// The one client of the process: cheap to share behind `Arc`, holds every endpoint (each with
/// its connections).
#[derive(Debug)]
pub struct UpstreamClient {
    endpoints: Vec<Endpoint>,
    /// The endpoints' models, joined: what cache keys hold, so answers of another set of
    /// models are never served.
    models: String,
    confidence: ConfidenceSource,
    pack_size: usize,
    call_timeout: Duration,
    retry: RetryPolicy,
    service_tier: Option<ServiceTier>,
    flex_fallback: bool,
    metrics: Arc<Metrics>,
}

/// Flex calls are slower (OpenAI suggests long timeouts): their call timeout is this many times
/// the configured one.
const FLEX_TIMEOUT_FACTOR: u32 = 3;

impl UpstreamClient {
    pub fn new(
        settings: UpstreamSettings,
        taxonomies: &Taxonomies,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BuildError> {
        if settings.endpoints.is_empty() {
            return Err(BuildError::NoEndpoints);
        }
        let pack_size = settings.pack_size.max(1);
        let roots = super::net::trusted_roots(&settings.extra_roots);
        let endpoints = settings
            .endpoints
            .into_iter()
            .map(|e| {
                Endpoint::new(
                    e,
                    settings.transport,
                    &roots,
                    settings.call_timeout,
                    taxonomies,
                    pack_size,
                    (settings.confidence, settings.reasoning),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        for endpoint in &endpoints {
            // At 0 from start-up, so a rate over it is 0 rather than no series.
            metrics
                .upstream_logprobs_unreadable
                .with_label_values(&[endpoint.name()]);
        }
        let mut models: Vec<&str> = endpoints.iter().map(Endpoint::model).collect();
        models.sort_unstable();
        models.dedup();
        Ok(Self {
            models: models.join("+"),
            confidence: settings.confidence,
            endpoints,
            pack_size,
            call_timeout: settings.call_timeout,
            retry: settings.retry,
            service_tier: settings.service_tier,
            flex_fallback: settings.flex_fallback,
            metrics,
        })
    }

    /// Paces every endpoint by the budget shared with the other replicas through Redis.
    pub fn share_budgets(mut self, coordinator: &Arc<Coordinator>) -> Self {
        for endpoint in &mut self.endpoints {
            endpoint.share_budget(coordinator);
        }
        self
    }

    /// False while every endpoint is benched (refused key or quota, or failing).
    pub fn is_usable(&self) -> bool {
        self.endpoints.iter().any(|e| !e.is_benched())
    }

    /// Each endpoint's state now, for `/healthz` and the metrics.
    pub fn health(&self) -> Vec<EndpointHealth<'_>> {
        self.endpoints
            .iter()
            .map(|e| {
                let outage = e.outage();
                EndpointHealth {
                    name: e.name(),
                    benched: e.is_benched(),
                    unreachable_for: outage.as_ref().map(|o| o.since.elapsed()),
                    last_error: outage.map(|o| {
                        UpstreamError::Transport(TransportError::Shared(o.last_error)).to_string()
                    }),
                }
            })
            .collect()
    }

    /// Calls in flight, waiting, and the adaptive limits, summed over the endpoints.
    pub fn limiter_snapshot(&self) -> LimiterSnapshot {
        self.endpoints.iter().map(|e| e.limiter().snapshot()).fold(
            LimiterSnapshot {
                limit: 0,
                in_flight: 0,
                waiting: 0,
            },
            |a, b| LimiterSnapshot {
                limit: a.limit + b.limit,
                in_flight: a.in_flight + b.in_flight,
                waiting: a.waiting + b.waiting,
            },
        )
    }

    /// How busy this replica is by its own capacity, for autoscaling: calls in flight at the
    /// provider, plus calls queued for a slot unless the provider's rate limit is what holds
    /// them, over the limit on calls in flight. Waits for the rate limit are left out: more
    /// replicas on the same key cannot shorten them. 1.0 means every slot is busy.
    pub fn saturation(&self) -> Saturation {
        let mut busy = 0;
        let mut limit = 0;
        let mut paced = 0;
        for endpoint in &self.endpoints {
            let slots = endpoint.limiter().snapshot();
            let pacing = endpoint.pacer().waiting();
            let queued = if pacing == 0 { slots.waiting } else { 0 };
            busy += slots.in_flight.saturating_sub(pacing) + queued;
            limit += slots.limit;
            paced += pacing;
        }
        Saturation {
            ratio: busy as f64 / limit.max(1) as f64,
            waiting_for_rate_limit: paced,
        }
    }

    /// Each endpoint's name and how many requests it sent again because the server never
    /// processed them.
    pub fn resent(&self) -> impl Iterator<Item = (&str, u64)> {
        self.endpoints.iter().map(|e| (e.name(), e.resent()))
    }

    /// Each endpoint's name and whether its confidences come from logprobs now.
    pub fn confidence_from_logprobs(&self) -> impl Iterator<Item = (&str, bool)> {
        self.endpoints.iter().map(|e| (e.name(), e.uses_logprobs()))
    }

    /// Each endpoint's name and the share of its rate limit its pacer aims for now.
    pub fn pacer_shares(&self) -> impl Iterator<Item = (&str, f64)> {
        self.endpoints.iter().map(|e| (e.name(), e.pacer().share()))
    }

    /// Whether a slot frees up within `wait` at the endpoint the next call would go to (it is
    /// released at once): how a batch finds out, before it starts, that the process is
    /// saturated. Waiters queue FIFO, so a true answer means the batch's calls are next in line.
    pub async fn has_capacity_within(&self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.pick(None).limiter().acquire())
            .await
            .is_ok()
    }

    /// Every endpoint's model, joined: for cache and single-flight keys.
    pub fn model(&self) -> &str {
        &self.models
    }

    /// The kind of confidence a call made now asks for: from logprobs when so configured and
    /// an endpoint still asks for them. Cache and single-flight keys hold it, so an answer is
    /// served only where its kind is asked for.
    pub fn asks_for(&self) -> ConfidenceSource {
        let logprobs = self.confidence == ConfidenceSource::Logprobs
            && self.endpoints.iter().any(Endpoint::uses_logprobs);
        if logprobs {
            ConfidenceSource::Logprobs
        } else {
            ConfidenceSource::Written
        }
    }

    /// The endpoint for the next attempt: the shortest expected wait among those not benched,
    /// preferring one that can be reached now and one other than `avoid` (the one that just
    /// failed). With every endpoint
    /// benched, the one whose bench ends first, so calls keep probing.
    fn pick(&self, avoid: Option<&Endpoint>) -> &Endpoint {
        // The common case, one endpoint, needs no comparing (and no locks taken to compare).
        if let [only] = &self.endpoints[..] {
            return only;
        }
        let is_avoided = |e: &Endpoint| avoid.is_some_and(|a| std::ptr::eq(a, e));
        let usable = || self.endpoints.iter().filter(|e| !e.is_benched());
        // One that can be reached now first: a call sent to an unreachable one would wait.
        let reachable = || usable().filter(|e| e.unreachable().is_none());
        least_loaded(reachable().filter(|e| !is_avoided(e)))
            .or_else(|| least_loaded(usable().filter(|e| !is_avoided(e))))
            .or_else(|| least_loaded(usable()))
            .or_else(|| self.endpoints.iter().min_by_key(|e| e.benched_until()))
            .expect("at least one endpoint, checked at start-up")
    }

    /// Classifies one title into `taxonomy`, retrying transient failures as the policy allows.
    /// Tokens of every attempt count.
    pub async fn classify(
        &self,
        taxonomy: &Taxonomy,
        title: &str,
    ) -> (Result<Prediction, Failure>, Usage) {
        self.with_retries(
            &[title],
            taxonomy,
            |t| (t.single.encode(title), t.single.estimated_tokens(title)),
            |t, body| t.single.decode(body, taxonomy),
        )
        .await
    }

    /// Classifies several titles in one call (packing), with the same retries. A slot is `None`
    /// where the model's answer for that title was missing or invalid.
    pub async fn classify_pack(
        &self,
        taxonomy: &Taxonomy,
        titles: &[&str],
    ) -> (Result<Vec<Option<Prediction>>, Failure>, Usage) {
        let n = titles.len();
        self.with_retries(
            titles,
            taxonomy,
            |t| t.packs.encode(titles),
            |t, body| t.packs.decode(body, taxonomy, n),
        )
        .await
    }

    /// Calls a second this replica's pacers let through now, summed over the endpoints, when
    /// every endpoint's request limit is known (configured, or announced by the provider).
    pub fn request_rate(&self) -> Option<f64> {
        self.endpoints
            .iter()
            .map(|e| e.pacer().request_rate())
            .sum::<Option<f64>>()
    }

    /// The most titles one packed call takes.
    pub fn pack_size(&self) -> usize {
        self.pack_size
    }

    /// Where a job's Batch API lane sends its file: the first endpoint's base URL, key and API
    /// path.
    pub fn batch_target(&self) -> (&str, &crate::secret::Secret, &'static str) {
        self.endpoints[0].batch_target()
    }

    /// The request body for `titles` in one call (one title, or a pack), as a live call would
    /// send it: one line of a Batch API file.
    pub fn batch_body(&self, taxonomy: &Taxonomy, titles: &[&str]) -> Vec<u8> {
        let profile = self.endpoints[0].profile();
        let templates = profile.templates(taxonomy, profile.form(), false);
        match titles {
            [one] => templates.single.encode(one).to_vec(),
            many => templates.packs.encode(many).0.to_vec(),
        }
    }

    /// Reads a Batch API answer to `batch_body(titles)` with the same checks as a live one: a
    /// prediction for each title it answered well, and its usage at the Batch price.
    pub fn read_batch_answer(
        &self,
        taxonomy: &Taxonomy,
        body: &[u8],
        n: usize,
    ) -> (Vec<Option<Prediction>>, Usage) {
        let profile = self.endpoints[0].profile();
        let templates = profile.templates(taxonomy, profile.form(), false);
        let (predictions, usage) = match n {
            1 => {
                let (result, usage) = templates.single.decode(body, taxonomy);
                (vec![result.ok()], usage)
            }
            n => {
                let (result, usage) = templates.packs.decode(body, taxonomy, n);
                (result.unwrap_or_else(|_| vec![None; n]), usage)
            }
        };
        let mut usage = usage.with_requests(1);
        usage.price_at(self.price().map(|p| p.at(super::usage::Tier::Batch)));
        (predictions, usage)
    }

    /// The first endpoint's list price, when known: what the deadline planner prices with.
    pub fn price(&self) -> Option<super::pricing::Price> {
        self.endpoints[0].price()
    }

    /// The first endpoint's model: which tiers and lanes the planner may offer.
    pub fn first_model(&self) -> &str {
        self.endpoints[0].model()
    }

    /// Tokens a second this replica's pacers let through now, when every endpoint's token
    /// limit is known.
    pub fn token_rate(&self) -> Option<f64> {
        self.endpoints
            .iter()
            .map(|e| e.pacer().token_rate())
            .sum::<Option<f64>>()
    }

    /// What classifying `titles` (checked ones) would ask of the provider, for the deadline
    /// planner: the calls (packs of the pack size), their input tokens counted in o200k (each
    /// call's request text, which holds its prompt, schema and titles: a little above what the
    /// provider counts, JSON quoting included) and the answers' tokens (an answer's size for
    /// each title). Reasoning tokens are not foreseen.
    pub fn estimate(&self, taxonomy: &Taxonomy, titles: &[&str]) -> (u64, u64, u64) {
        let profile = self.endpoints[0].profile();
        let form = profile.form();
        let templates = profile.templates(taxonomy, form, false);
        let size = self.pack_size.max(1);
        // The request text around its titles, by how many a call holds: counted once.
        let mut frames: std::collections::HashMap<usize, u64> = std::collections::HashMap::new();
        let mut frame = |pack: &[&str]| -> u64 {
            *frames.entry(pack.len()).or_insert_with(|| {
                let body = match pack {
                    [one] => templates.single.encode(one).to_vec(),
                    many => templates.packs.encode(many).0.to_vec(),
                };
                let text = String::from_utf8_lossy(&body);
                let own: u64 = pack.iter().map(|t| crate::tokens::count(t)).sum();
                crate::tokens::count(&text).saturating_sub(own)
            })
        };
        let label = taxonomy.labels().next().map_or("other", |l| &**l);
        let answer = crate::tokens::count(&match form {
            AnswerForm::LabelOnly => format!(r#"{{"id":"a1","topic":"{label}"}},"#),
            AnswerForm::LabelAndConfidence => {
                format!(r#"{{"id":"a1","topic":"{label}","confidence":0.87}},"#)
            }
        });
        let (mut calls, mut input) = (0, 0);
        for pack in titles.chunks(size) {
            calls += 1;
            input += frame(pack) + pack.iter().map(|t| crate::tokens::count(t)).sum::<u64>();
        }
        (calls, input, titles.len() as u64 * answer)
    }

    /// An item's failure: `attempts`, why it stopped, the last error, and how long since its
    /// deadline started.
    fn failure(
        &self,
        attempts: u32,
        gave_up: GiveUp,
        last: UpstreamError,
        deadline: Option<&ItemDeadline>,
    ) -> Failure {
        Failure {
            attempts,
            gave_up,
            elapsed: deadline.map_or(Duration::ZERO, |d| d.elapsed(&self.retry)),
            last,
        }
    }

    /// Whether `error` sends the call again at once, outside the retry budget, and why: none of
    /// these costs an item. `profile` is what the call asked with; `reasoning` the tokens its
    /// answer spent thinking, `roomier` whether it already had more room.
    fn goes_again_at_once(
        &self,
        endpoint: &Endpoint,
        profile: &Profile,
        error: &UpstreamError,
        (reasoning, roomier): (u64, bool),
        learnt: &mut u32,
    ) -> Option<AtOnce> {
        if error.is_unusable_logprobs() {
            endpoint.note_logprobs(false, &self.metrics);
            return Some(AtOnce::Written);
        }
        if error.is_cut_at_cap() && reasoning > 0 && !roomier {
            endpoint.learn_more_room(profile, error);
            return Some(AtOnce::Roomier);
        }
        if error.is_refused_parameter()
            && *learnt < MAX_LEARNT_REFUSALS
            && endpoint.learn_refusal(profile, error)
        {
            *learnt += 1;
            return Some(AtOnce::Learnt);
        }
        None
    }

    /// One request, each attempt sent to the endpoint `pick` chooses, under its limiter and
    /// pacer, and retried as the policy allows. A refused key or quota moves the request to
    /// another endpoint at once, without spending the retry budget. While the endpoint cannot
    /// be reached, the request waits (with every other) for its one probe, within the item's
    /// deadline, before it takes a slot or a turn of the rate limit.
    async fn with_retries<T>(
        &self,
        titles: &[&str],
        taxonomy: &Taxonomy,
        encode: impl Fn(&Templates) -> (RequestBody, u64),
        decode: impl Fn(&Templates, &[u8]) -> (Result<T, UpstreamError>, Usage),
    ) -> (Result<T, Failure>, Usage) {
        let mut usage = Usage::default();
        let mut deadline: Option<ItemDeadline> = None;
        let mut attempts = 0;
        // The last failure, for the answer when the deadline runs out between attempts.
        // Boxed: kept across every later await, and rare.
        let mut last_error: Option<Box<UpstreamError>> = None;
        // Failures that spend the retry budget: a 429 for rate waits out the deadline instead.
        let mut budgeted_failures = 0;
        let mut unreachable_failures = 0;
        let mut output_failures = 0;
        let mut failed_at: Option<&Endpoint> = None;
        let mut tier = lane_tier().or(self.service_tier);
        let mut written_only = false;
        // After an answer the cap cut short while the model reasoned: more room, once.
        let mut roomier = false;
        let mut learnt_refusals = 0;
        loop {
            let endpoint = self.pick(failed_at);
            if endpoint.unreachable().is_some() {
                let by = deadline
                    .get_or_insert_with(|| ItemDeadline::start(&self.retry))
                    .at();
                // Boxed: rare, and every call's future would otherwise carry room for it.
                if !Box::pin(endpoint.wait_usable(by)).await {
                    let last = last_error
                        .map(|e| *e)
                        .or_else(|| endpoint.unreachable())
                        .unwrap_or_else(|| {
                            let why =
                                "the upstream could not be reached within the item's deadline";
                            UpstreamError::Transport(TransportError::Connect(why.into()))
                        });
                    tracing::debug!(error.code = last.code(), %last, attempts, "upstream unreachable until the item's deadline");
                    return (
                        Err(self.failure(
                            attempts,
                            GiveUp::DeadlineReached,
                            last,
                            deadline.as_ref(),
                        )),
                        usage,
                    );
                }
            }
            if let (Some(d), Some(_)) = (&deadline, &last_error)
                && Instant::now() >= d.at()
            {
                let last = *last_error.expect("checked above");
                return (
                    Err(self.failure(attempts, GiveUp::DeadlineReached, last, deadline.as_ref())),
                    usage,
                );
            }
            let queued_at = Instant::now();
            if super::fair::in_background() {
                endpoint.pacer().make_way().await;
            }
            let slot = endpoint.limiter().acquire().await;
            // Read once per attempt: the answer is decoded as it was asked, whatever the
            // endpoint switches to meanwhile.
            let profile = endpoint.profile();
            let form = if written_only {
                AnswerForm::LabelAndConfidence
            } else {
                profile.form()
            };
            let templates = profile.templates(taxonomy, form, roomier);
            let (body, tokens) = encode(templates);
            let body = body.with_service_tier(tier);
            endpoint.pacer().wait_turn(tokens).await;
            let deadline = match &mut deadline {
                None => deadline.insert(ItemDeadline::start(&self.retry)),
                // Waiting for a slot or a turn of the rate limit is queueing, not being stuck.
                Some(d) => {
                    d.extend(queued_at.elapsed());
                    d
                }
            };
            attempts += 1;
            let call_timeout = match tier {
                Some(ServiceTier::Flex) => self.call_timeout * FLEX_TIMEOUT_FACTOR,
                _ => self.call_timeout,
            };
            let timeout = call_timeout.min(deadline.at().saturating_duration_since(Instant::now()));
            let span = call_span(endpoint, attempts, tier, titles, queued_at.elapsed());
            let attempt: Attempt<T> = endpoint
                .call(body, timeout, |b| decode(templates, b))
                .instrument(span.clone())
                .await;
            record_outcome(&span, &attempt);
            let mut spent = attempt.usage.with_requests(1);
            spent.price_at(endpoint.price().map(|p| p.at(attempt.served)));
            usage += spent;
            endpoint.learn(&attempt, &self.metrics);
            if attempt.status.is_some() {
                let used = attempt.usage.input_tokens + attempt.usage.output_tokens;
                endpoint.pacer().settle(tokens, used);
            }
            drop(slot);

            let asked_logprobs = form == AnswerForm::LabelOnly;
            let error = match attempt.result {
                Ok(value) => {
                    if asked_logprobs {
                        endpoint.note_logprobs(true, &self.metrics);
                    }
                    return (Ok(value), usage);
                }
                Err(error) => error,
            };
            if let Some(reason) = self.goes_again_at_once(
                endpoint,
                &profile,
                &error,
                (attempt.usage.reasoning_tokens, roomier),
                &mut learnt_refusals,
            ) {
                match reason {
                    AtOnce::Written => written_only = true,
                    AtOnce::Roomier => roomier = true,
                    AtOnce::Learnt => {}
                }
                let label = match reason {
                    AtOnce::Roomier => "more_room_to_think",
                    _ => error.code(),
                };
                self.metrics
                    .upstream_retries
                    .with_label_values(&[label])
                    .inc();
                // Kept, so the item's deadline is checked before the next attempt as after any
                // other failure.
                last_error = Some(Box::new(error));
                continue;
            }
            let flex_gave_way =
                error.is_flex_unavailable() || matches!(error, UpstreamError::Timeout(_));
            if tier == Some(ServiceTier::Flex) && self.flex_fallback && flex_gave_way {
                // No flex capacity now: the default tier at once, the retry budget untouched.
                tier = Some(ServiceTier::Default);
                self.metrics
                    .upstream_retries
                    .with_label_values(&["flex_fallback"])
                    .inc();
                continue;
            }
            failed_at = Some(endpoint);
            if error.is_refusal_of_key() && self.is_usable() {
                tracing::debug!(
                    upstream = endpoint.name(),
                    error.code = error.code(),
                    "moving to another endpoint"
                );
                continue;
            }
            if error.is_output_fault() {
                output_failures += 1;
            } else if error.is_unreachable() {
                // Waited out within the deadline: counted only to grow the backoff.
                unreachable_failures += 1;
            } else if error.is_rate_limited() {
                // The provider said "not now": the call and the wait it asks for do not count.
                let wait = error.retry_after().unwrap_or(self.retry.max_backoff);
                deadline.extend(attempt.latency + wait);
            } else {
                budgeted_failures += 1;
            }
            let failures = if error.is_unreachable() {
                unreachable_failures
            } else {
                budgeted_failures
            };
            match self
                .retry
                .decide(&error, failures, output_failures, deadline.at())
            {
                Decision::GiveUp(gave_up) => {
                    tracing::debug!(error.code = error.code(), %error, attempts, %gave_up, "upstream call failed");
                    return (
                        Err(self.failure(attempts, gave_up, error, Some(deadline))),
                        usage,
                    );
                }
                Decision::RetryAfter(delay) => {
                    self.metrics
                        .upstream_retries
                        .with_label_values(&[error.code()])
                        .inc();
                    tracing::debug!(error.code = error.code(), %error, attempts, delay_ms = delay.as_millis() as u64, "retrying");
                    // An output retry asks again at once, without a trip through the timer; an
                    // unreachable endpoint is waited for at the loop's top, with the other calls,
                    // and the probe's success ends that wait early.
                    let waits_for_probe =
                        error.is_unreachable() && endpoint.unreachable().is_some();
                    if !delay.is_zero() && !waits_for_probe {
                        tokio::time::sleep(delay).await;
                    }
                    last_error = Some(Box::new(error));
                }
            }
        }
    }
}
