//! The one place that decides whether a failed call is tried again, and when. Hand-written rather
//! than `backon`: the delay must come from the provider's `retry-after-ms` when it sends one, its
//! `x-should-retry` overrides our verdict, every item has a deadline, and the final error must say
//! how many attempts were made and why it stopped.

use std::fmt;
use std::time::{Duration, Instant};

use rand::Rng;

use super::error::UpstreamError;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// First backoff ceiling; doubles per attempt up to `max_backoff` (full jitter below it).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Wall time one item may take from its first attempt, retries and waits included.
    pub item_deadline: Duration,
    /// Attempts after the first for an answer that is not the schema's JSON or did not
    /// complete: usually a one-off (a truncated answer), so asking again almost always works.
    pub output_retries: u32,
}

/// An item's total life, waits for the rate limit included, is at most this many deadlines: the
/// backstop for a provider that says "not now" forever.
const RATE_LIMIT_PATIENCE: u32 = 5;

/// When an item gives up. It counts time in calls and in backoff after failures; time queued for
/// a slot or for a turn of the provider's rate limit, and a 429's requested wait, move it later
/// (up to `RATE_LIMIT_PATIENCE` deadlines from the first attempt), so replicas converging on one
/// key lose no item while the provider is healthy.
#[derive(Debug, Clone, Copy)]
pub struct ItemDeadline {
    at: Instant,
    latest: Instant,
}

impl ItemDeadline {
    pub fn start(policy: &RetryPolicy) -> Self {
        let now = Instant::now();
        Self {
            at: now + policy.item_deadline,
            latest: now + policy.item_deadline * RATE_LIMIT_PATIENCE,
        }
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// Since it started under `policy` (`latest` is a fixed span after the start: no field of
    /// its own, since every call's future carries one of these).
    pub fn elapsed(&self, policy: &RetryPolicy) -> Duration {
        let started = self.latest - policy.item_deadline * RATE_LIMIT_PATIENCE;
        started.elapsed()
    }

    /// Moves the deadline later by `waited`, which did not count.
    pub fn extend(&mut self, waited: Duration) {
        self.at = (self.at + waited).min(self.latest);
    }
}

/// Why an item stopped being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The outcome is final: retrying cannot change it (a refusal, a 400, exhausted quota).
    Final,
    RetriesExhausted,
    DeadlineReached,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Final => "not retryable",
            Self::RetriesExhausted => "retry budget exhausted",
            Self::DeadlineReached => "item deadline reached",
        })
    }
}

/// An item's failure after everything the policy allowed.
#[derive(Debug, thiserror::Error)]
pub struct Failure {
    pub attempts: u32,
    pub gave_up: GiveUp,
    /// From the item's first attempt (or its first wait for an unreachable endpoint) to giving
    /// up: said when the deadline ended it, so a caller sees how long it was waited for.
    pub elapsed: Duration,
    #[source]
    pub last: UpstreamError,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.last)?;
        if self.gave_up == GiveUp::DeadlineReached {
            let s = if self.attempts == 1 { "" } else { "s" };
            write!(
                f,
                "; gave up after {} attempt{s} in {:.1}s ({})",
                self.attempts,
                self.elapsed.as_secs_f64(),
                self.gave_up
            )?;
        } else if self.gave_up != GiveUp::Final || self.attempts > 1 {
            let s = if self.attempts == 1 { "" } else { "s" };
            write!(
                f,
                "; gave up after {} attempt{s} ({})",
                self.attempts, self.gave_up
            )?;
        }
        Ok(())
    }
}

/// Less left than this before the deadline, an unreachable upstream is not waited for again.
const MIN_LAST_WAIT: Duration = Duration::from_millis(50);

/// Every `reason` label `upstream_retries_total` can carry: the codes of the errors the policy
/// retries, `flex_fallback` (a flex call sent again at the default tier), the logprobs faults (a
/// call sent again asking for a written confidence), the parameters a refusal taught the
/// endpoint to send otherwise, and `more_room_to_think` (an answer the cap cut short while the
/// model reasoned, sent again with a larger cap).
pub const RETRY_REASONS: [&str; 14] = [
    "upstream_timeout",
    "upstream_unreachable",
    "upstream_rate_limited",
    "upstream_server_error",
    "upstream_rejected",
    "invalid_output",
    "response_incomplete",
    "flex_fallback",
    "logprobs_refused",
    "logprobs_missing",
    "logprobs_unreadable",
    "reasoning_effort_refused",
    "max_tokens_refused",
    "more_room_to_think",
];

/// What to do after a failed attempt.
#[derive(Debug, PartialEq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp(GiveUp),
}

impl RetryPolicy {
    /// `max_retries` within `item_deadline`, with the standard backoff: full jitter from 250 ms,
    /// doubling up to 8 s.
    /// No retry of invalid output; see `with_output_retries`.
    pub fn new(max_retries: u32, item_deadline: Duration) -> Self {
        Self {
            max_retries,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
            item_deadline,
            output_retries: 0,
        }
    }

    /// The same policy, asking again up to `retries` times after invalid or incomplete output.
    pub fn with_output_retries(self, retries: u32) -> Self {
        Self {
            output_retries: retries,
            ..self
        }
    }

    /// What to do after `error`, the `failures`th failure that counts against the budget (rate
    /// limits do not count: they are bounded by the deadline), with `output_failures` answers
    /// so far that were invalid or incomplete (they have a budget of their own).
    pub fn decide(
        &self,
        error: &UpstreamError,
        failures: u32,
        output_failures: u32,
        deadline: Instant,
    ) -> Decision {
        if error.is_output_fault() {
            // Asked again at once: nothing was overloaded, the answer was just unusable.
            return if output_failures > self.output_retries {
                Decision::GiveUp(GiveUp::Final)
            } else if Instant::now() >= deadline {
                Decision::GiveUp(GiveUp::DeadlineReached)
            } else {
                Decision::RetryAfter(Duration::ZERO)
            };
        }
        if !error.is_retryable() {
            return Decision::GiveUp(GiveUp::Final);
        }
        // A 429 for rate means "not now", not "broken": it is bounded by the deadline alone, so
        // replicas converging on a shared limit do not lose items while they do. So is an
        // upstream that cannot be reached (refused, reset, DNS, TLS, a proxy down): a short
        // outage costs waiting, not items.
        let waits_out = error.is_rate_limited() || error.is_unreachable();
        if failures > self.max_retries && !waits_out {
            return Decision::GiveUp(GiveUp::RetriesExhausted);
        }
        let delay = error
            .retry_after()
            .unwrap_or_else(|| self.backoff(failures.max(1)));
        let now = Instant::now();
        if now + delay < deadline {
            return Decision::RetryAfter(delay);
        }
        // An unreachable upstream is waited for up to the deadline itself: it may be back by
        // then, and the item answers at its deadline, not early.
        if error.is_unreachable() && deadline > now + MIN_LAST_WAIT {
            return Decision::RetryAfter(deadline - now);
        }
        Decision::GiveUp(GiveUp::DeadlineReached)
    }

    /// Full jitter: uniform in 0..min(max, base * 2^(attempts-1)).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let ceiling = self
            .base_backoff
            .saturating_mul(1 << attempts.saturating_sub(1).min(16))
            .min(self.max_backoff);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }
}

impl UpstreamError {
    /// Transient failures are retried: timeouts, connection errors, 408, 409, 429 and 5xx, unless
    /// the provider says otherwise (`x-should-retry`) or the quota is gone (`insufficient_quota`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Transport(e) => !e.is_final(),
            Self::Http {
                code: Some(code), ..
            } if code == "insufficient_quota" => false,
            Self::Http {
                should_retry: Some(verdict),
                ..
            } => *verdict,
            Self::Http { status, .. } => matches!(status, 408 | 409 | 429) || *status >= 500,
            Self::Refusal(_)
            | Self::NotCompleted { .. }
            | Self::MalformedResponse(_)
            | Self::InvalidOutput(_)
            | Self::OffTaxonomy(_)
            | Self::ConfidenceOutOfRange(_)
            | Self::LogprobsRefused(_)
            | Self::NoLogprobs(_)
            | Self::LogprobsUnreadable(_)
            | Self::EffortRefused(_)
            | Self::MaxTokensRefused(_) => false,
        }
    }

    /// The upstream could not be reached: no connection opened (refused, reset while opening,
    /// DNS, TLS, a proxy down), so nothing was sent or paid for. Waited out within the item's
    /// deadline rather than spending the retry budget. An exchange that broke off after the
    /// request left (a reset, a PING unanswered) may have been processed, and billed: it spends
    /// the budget as before. A proxy that refuses our credentials is final.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_before_sending() && !e.is_final())
    }

    /// An answer that came back but is not usable as it is: not the schema's JSON, or a
    /// response that did not complete. A refusal or an off-taxonomy label is the model's
    /// considered answer and stays final.
    pub fn is_output_fault(&self) -> bool {
        matches!(self, Self::InvalidOutput(_) | Self::NotCompleted { .. })
    }

    /// The provider refused a parameter the endpoint can do without or send otherwise
    /// (logprobs, the reasoning effort, `max_tokens`): the endpoint learns, and the call goes
    /// again at once outside the retry budget.
    pub fn is_refused_parameter(&self) -> bool {
        matches!(
            self,
            Self::LogprobsRefused(_) | Self::EffortRefused(_) | Self::MaxTokensRefused(_)
        )
    }

    /// This answer's logprobs are missing or cannot be read: this call goes again at once with
    /// a written confidence; the endpoint keeps asking for logprobs.
    pub fn is_unusable_logprobs(&self) -> bool {
        matches!(self, Self::NoLogprobs(_) | Self::LogprobsUnreadable(_))
    }

    /// An answer the output cap cut short (`incomplete` for `max_output_tokens`, Chat's
    /// `length`).
    pub fn is_cut_at_cap(&self) -> bool {
        matches!(self, Self::NotCompleted { reason: Some(r), .. }
            if r == "max_output_tokens" || r == "length")
    }

    /// The provider refused the key itself (401, 403) or its quota: another key may work,
    /// this one will not for a while.
    pub fn is_refusal_of_key(&self) -> bool {
        match self {
            Self::Http { status, code, .. } => {
                matches!(status, 401 | 403) || code.as_deref() == Some("insufficient_quota")
            }
            _ => false,
        }
    }

    /// A 429 for rate (not for quota, nor flex capacity): the provider is busy, not refusing.
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::Http { status: 429, .. })
            && self.is_retryable()
            && !self.is_flex_unavailable()
    }

    /// The flex tier has no capacity for the call now (429 `resource_unavailable`): the default
    /// tier has, at its own price.
    pub fn is_flex_unavailable(&self) -> bool {
        matches!(self, Self::Http { status: 429, code: Some(code), .. } if code == "resource_unavailable")
    }

    /// The provider's requested wait, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::error::TransportError;

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 3,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        item_deadline: Duration::from_secs(60),
        output_retries: 1,
    };

    fn http(
        status: u16,
        code: Option<&str>,
        retry_after_ms: Option<u64>,
        should_retry: Option<bool>,
    ) -> UpstreamError {
        UpstreamError::Http {
            status,
            code: code.map(str::to_owned),
            message: String::new(),
            retry_after: retry_after_ms.map(Duration::from_millis),
            should_retry,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn transient_failures_retry_and_final_ones_do_not() {
        for status in [408, 409, 429, 500, 502, 503] {
            assert!(http(status, None, None, None).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 422] {
            assert!(!http(status, None, None, None).is_retryable(), "{status}");
        }
        assert!(!http(429, Some("insufficient_quota"), None, Some(true)).is_retryable());
        assert!(!http(500, None, None, Some(false)).is_retryable());
        assert!(http(400, None, None, Some(true)).is_retryable());
        assert!(UpstreamError::Timeout(Duration::from_secs(1)).is_retryable());
        // A call lost with a connection that stopped answering PINGs goes again on a fresh one;
        // an answer over the size cap would be as large again.
        let lost = TransportError::Unresponsive(Duration::from_secs(5));
        assert!(UpstreamError::Transport(lost).is_retryable());
        assert!(!UpstreamError::Transport(TransportError::TooLarge(1024)).is_retryable());
        assert_eq!(
            UpstreamError::Transport(TransportError::TooLarge(1024)).code(),
            "upstream_response_too_large"
        );
        assert!(!UpstreamError::Refusal("no".into()).is_retryable());
    }

    #[test]
    fn honours_retry_after_and_stops_at_the_budget_or_the_deadline() {
        let e = http(429, Some("rate_limit_exceeded"), Some(300), None);
        assert_eq!(
            POLICY.decide(&e, 1, 0, far()),
            Decision::RetryAfter(Duration::from_millis(300))
        );
        assert_eq!(
            POLICY.decide(&e, 9, 0, far()),
            Decision::RetryAfter(Duration::from_millis(300)),
            "a rate limit waits for the deadline, not the retry budget"
        );
        let server_error = http(503, None, Some(300), None);
        assert_eq!(
            POLICY.decide(&server_error, 4, 0, far()),
            Decision::GiveUp(GiveUp::RetriesExhausted)
        );
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            POLICY.decide(&e, 1, 0, soon),
            Decision::GiveUp(GiveUp::DeadlineReached)
        );
    }

    #[test]
    fn invalid_or_incomplete_output_is_asked_again_within_its_own_budget() {
        let invalid = UpstreamError::InvalidOutput("EOF while parsing".into());
        let incomplete = UpstreamError::NotCompleted {
            status: "incomplete".into(),
            reason: None,
        };
        for e in [&invalid, &incomplete] {
            assert_eq!(
                POLICY.decide(e, 0, 1, far()),
                Decision::RetryAfter(Duration::ZERO)
            );
            assert_eq!(
                POLICY.decide(e, 0, 2, far()),
                Decision::GiveUp(GiveUp::Final)
            );
            let never = POLICY.with_output_retries(0);
            assert_eq!(
                never.decide(e, 0, 1, far()),
                Decision::GiveUp(GiveUp::Final)
            );
        }
        for considered in [
            UpstreamError::Refusal("no".into()),
            UpstreamError::OffTaxonomy("hacked".into()),
        ] {
            assert_eq!(
                POLICY.decide(&considered, 0, 1, far()),
                Decision::GiveUp(GiveUp::Final)
            );
        }
    }

    #[test]
    fn waits_for_the_rate_limit_move_the_deadline_up_to_a_backstop() {
        let mut deadline = ItemDeadline::start(&POLICY);
        let first = deadline.at();
        deadline.extend(Duration::from_secs(10));
        assert_eq!(deadline.at(), first + Duration::from_secs(10));
        deadline.extend(Duration::from_secs(10_000));
        assert_eq!(
            deadline.at(),
            first + POLICY.item_deadline * (RATE_LIMIT_PATIENCE - 1)
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        for attempt in 1..=6 {
            let ceiling =
                Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
            for _ in 0..100 {
                assert!(POLICY.backoff(attempt) <= ceiling);
            }
        }
    }

    #[test]
    fn the_final_message_says_how_many_attempts_and_why() {
        let f = Failure {
            attempts: 4,
            gave_up: GiveUp::RetriesExhausted,
            elapsed: Duration::from_secs(3),
            last: http(503, None, None, None),
        };
        assert!(
            f.to_string()
                .ends_with("gave up after 4 attempts (retry budget exhausted)"),
            "{f}"
        );
        let refusal = Failure {
            attempts: 1,
            gave_up: GiveUp::Final,
            elapsed: Duration::ZERO,
            last: UpstreamError::Refusal("no".into()),
        };
        assert_eq!(
            refusal.to_string(),
            "the model refused to classify the title: no"
        );
    }

    #[test]
    fn an_unreachable_upstream_is_waited_for_until_the_deadline_not_a_count_of_attempts() {
        let refused = UpstreamError::Transport(TransportError::Connect("refused".into()));
        assert!(refused.is_unreachable());
        assert!(matches!(
            POLICY.decide(&refused, 50, 0, far()),
            Decision::RetryAfter(_)
        ));
        // A wait never passes the deadline: the last one runs to the deadline itself, so the
        // item answers at it, not early.
        for _ in 0..100 {
            let in_a_second = Instant::now() + Duration::from_secs(1);
            let Decision::RetryAfter(wait) = POLICY.decide(&refused, 20, 0, in_a_second) else {
                panic!("waits for the deadline")
            };
            assert!(wait <= Duration::from_secs(1), "{wait:?}");
        }
        assert_eq!(
            POLICY.decide(&refused, 20, 0, Instant::now()),
            Decision::GiveUp(GiveUp::DeadlineReached)
        );
        let too_large = UpstreamError::Transport(TransportError::TooLarge(1024));
        assert!(!too_large.is_unreachable());
        let broken = UpstreamError::Transport(TransportError::Body("reset".into()));
        assert!(
            !broken.is_unreachable(),
            "sent, maybe billed: the budget applies"
        );
        assert_eq!(
            POLICY.decide(&broken, 4, 0, far()),
            Decision::GiveUp(GiveUp::RetriesExhausted)
        );
        let at_deadline = Failure {
            attempts: 9,
            gave_up: GiveUp::DeadlineReached,
            elapsed: Duration::from_millis(60_040),
            last: refused,
        };
        assert!(
            at_deadline
                .to_string()
                .ends_with("gave up after 9 attempts in 60.0s (item deadline reached)"),
            "{at_deadline}"
        );
    }

    #[test]
    fn every_retried_error_has_its_reason_listed_for_the_metrics() {
        let errors = [
            UpstreamError::Timeout(Duration::from_secs(1)),
            UpstreamError::Transport(TransportError::Connect("refused".into())),
            UpstreamError::Transport(TransportError::Unresponsive(Duration::from_secs(5))),
            http(408, None, None, None),
            http(409, None, None, None),
            http(429, None, None, None),
            http(500, None, None, None),
            http(400, None, None, Some(true)),
            UpstreamError::InvalidOutput("{".into()),
            UpstreamError::NotCompleted {
                status: "incomplete".into(),
                reason: None,
            },
        ];
        for error in errors {
            let retried = matches!(POLICY.decide(&error, 1, 1, far()), Decision::RetryAfter(_));
            assert!(retried, "{error} is retried");
            assert!(RETRY_REASONS.contains(&error.code()), "{}", error.code());
        }
    }
}
