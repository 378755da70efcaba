//! Spacing calls so a replica rides the provider's rate limit instead of bouncing off it. The
//! rate is the lower of the configured limits (`HNC_RPM_LIMIT`, `HNC_TPM_LIMIT`) and those the
//! provider announces in `x-ratelimit-limit-*`, times a share that backs off when 429s still come
//! (other replicas on the same key) and creeps back up on success. A 429's `retry-after` pauses
//! every call. Hand-written because `governor`'s quota is fixed at construction and this rate
//! moves at run time.
//!
//! With a shared budget (`HNC_REDIS_URL`), turns come from the budget every replica on the same
//! endpoint leases from, a block of calls per round trip; the local schedule takes over at once
//! whenever Redis does not answer.
//!
//! Three parts: this module keeps the limits and the share and decides which schedule a call
//! uses; `local` is the replica's own schedule, `lease` the shared budget's blocks. Locks: one
//! `std::sync::Mutex` for the limits, share and local schedule (never held across an await),
//! the tokio `booking` queue for callers past the booking horizon, and the tokio lock of the
//! leased block (held across a lease's round trip). The std mutex is a leaf: held briefly, never
//! across an await and never while another lock is taken, so no lock order can deadlock.

mod lease;
mod local;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use self::lease::{Block, Shared, lease_size};
use self::local::{Limits, Schedule};
use super::headers::RateHeaders;
use crate::coord::{Lease, LeaseRequest, SharedBudget};

/// The most of an announced limit we aim for: headroom for jitter between us and the provider.
const MAX_SHARE: f64 = 0.98;
const MIN_SHARE: f64 = 0.05;
/// A 429 cuts the share by 15%, at most every quarter second: replicas that all start at the
/// full announced limit get down to their fair part within a couple of seconds.
const SHARE_CUT: f64 = 0.85;
const SHARE_CUT_COOLDOWN: Duration = Duration::from_millis(250);
/// Successes raise the share by 2% of the limit per second, however many calls that is, so the
/// probing back up is gentle whatever the rate.
const SHARE_GROWTH_PER_SECOND: f64 = 0.02;
/// Turns are booked at most this far ahead; later callers queue (in order) until the schedule
/// comes within reach. Without it, hundreds of calls holding slots would book seconds of turns
/// at the old rate, and a cut of the share (another replica on the key) would only take effect
/// after them: a 429 storm that feeds itself.
const BOOKING_HORIZON: Duration = Duration::from_millis(100);
/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);
/// A background call (a job's) books a turn only while fewer calls than this wait for one, so
/// an interactive call never finds more than this many job calls booked ahead of it.
const BACKGROUND_QUEUE: usize = 2;
/// A job call refused by the shared budget asks again after at most this long.
const MAX_BACKGROUND_WAIT: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Pacer {
    configured_rpm: Option<u64>,
    configured_tpm: Option<u64>,
    state: Mutex<PaceState>,
    shared: Option<Shared>,
    /// Calls holding a slot while they wait for their turn: waiting for the provider's budget,
    /// which more replicas cannot shorten.
    waiting: AtomicUsize,
    /// The queue (first come, first served) of callers not yet within `BOOKING_HORIZON`.
    booking: tokio::sync::Mutex<()>,
    /// The provider answered without announcing any limit: nothing for the shared budget to
    /// learn.
    open: AtomicBool,
}

#[derive(Debug)]
struct PaceState {
    announced_rpm: Option<u64>,
    announced_tpm: Option<u64>,
    share: f64,
    last_share_cut: Option<Instant>,
    /// When the share last grew (or was cut): growth is by elapsed time.
    share_changed_at: Instant,
    schedule: Schedule,
}

impl Pacer {
    pub fn new(configured_rpm: Option<u64>, configured_tpm: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            configured_rpm: configured_rpm.filter(|r| *r > 0),
            configured_tpm: configured_tpm.filter(|t| *t > 0),
            state: Mutex::new(PaceState {
                announced_rpm: None,
                announced_tpm: None,
                share: MAX_SHARE,
                last_share_cut: None,
                share_changed_at: now,
                schedule: Schedule::new(now),
            }),
            shared: None,
            waiting: AtomicUsize::new(0),
            booking: tokio::sync::Mutex::new(()),
            open: AtomicBool::new(false),
        }
    }

    /// The same pacer, taking its turns from `budget` while Redis answers.
    pub fn with_shared_budget(self, budget: SharedBudget) -> Self {
        Self {
            shared: Some(Shared::new(budget)),
            ..self
        }
    }

    /// For a background call, before it takes an upstream slot: waits while other calls wait
    /// for a turn, and while the shared budget refuses job calls (booked ahead by interactive
    /// calls on any replica). Turns are booked in the order calls ask, so a job's calls asking
    /// freely would book the rate limit ahead of every interactive call that comes after them;
    /// held here instead, without a slot, they take the turns nobody else asks for and never
    /// keep a slot from an interactive batch. Without a known rate nothing waits for turns.
    pub async fn make_way(&self) {
        loop {
            let blocked = self
                .shared
                .as_ref()
                .and_then(|s| *s.background_blocked_until.lock().expect("never poisoned"));
            match blocked {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.min(Instant::now() + MAX_BACKGROUND_WAIT)).await;
                }
                _ => break,
            }
        }
        let Some(rate) = self.request_rate() else {
            return;
        };
        let pause = Duration::from_secs_f64((1.0 / rate.max(1e-3)).clamp(0.005, 0.05));
        while self.waiting.load(Ordering::Relaxed) >= BACKGROUND_QUEUE {
            tokio::time::sleep(pause).await;
        }
    }

    pub async fn wait_turn(&self, tokens: u64) {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = scopeguard(&self.waiting);
        let shared_turn = match &self.shared {
            // While Redis is out, calls pace locally without queueing on the lease; one call a
            // second tries Redis again.
            // Boxed, like the cache's futures: a lease's Redis round trip is a large future
            // that every call in flight would otherwise carry.
            Some(shared) if shared.budget.may_send() && !self.is_unlimited() => {
                Box::pin(self.shared_turn(shared, tokens)).await
            }
            _ => None,
        };
        let start = match shared_turn {
            Some(start) => start,
            None => self.local_turn(tokens).await,
        };
        // Only a wait of a timer tick or more goes through the timer: its wheel ticks in
        // milliseconds, so a sleep until now or a few microseconds on would add up to a
        // millisecond. Starting a fraction of a tick early leaves the rate as booked (each turn
        // still takes its interval) and the provider's buckets hold a second's worth.
        if start > Instant::now() + TIMER_TICK {
            tokio::time::sleep_until(start).await;
        }
    }

    /// A turn from the shared budget, or `None` when Redis does not answer.
    async fn shared_turn(&self, shared: &Shared, tokens: u64) -> Option<Instant> {
        let background = super::fair::in_background();
        'queue: loop {
            shared.waiting.fetch_add(1, Ordering::Relaxed);
            let queued = scopeguard(&shared.waiting);
            let mut block = shared.block.lock().await;
            // Taken back however the wait ends: a caller cancelled in the queue must not make
            // every later lease larger.
            drop(queued);
            loop {
                if let Some(turn) = block.take(tokens, Instant::now()) {
                    return Some(turn);
                }
                let waiting = shared.waiting.load(Ordering::Relaxed) as u32 + 1;
                let calls = lease_size(block.demand(Instant::now()), waiting, self.request_rate());
                let request = {
                    let s = self.lock();
                    LeaseRequest {
                        rpm: min_limit(self.configured_rpm, s.announced_rpm),
                        tpm: min_limit(self.configured_tpm, s.announced_tpm),
                        open: self.open.load(Ordering::Relaxed),
                        share: s.share,
                        calls,
                        tokens: tokens * u64::from(calls),
                        refund: shared.refund.swap(0, Ordering::Relaxed),
                        background,
                    }
                };
                let Some(lease) = shared.budget.lease(request).await else {
                    shared.refund.fetch_add(request.refund, Ordering::Relaxed);
                    return None;
                };
                self.learn_limits(&lease);
                let asked_at = Instant::now();
                if lease.calls == 0 {
                    shared.refund.fetch_add(request.refund, Ordering::Relaxed);
                    if background {
                        // The budget is booked ahead (interactive calls, on any replica): this job
                        // call lets go of the block, so this replica's interactive calls can lease,
                        // and asks again when the budget frees up.
                        drop(block);
                        let wait = lease.delay.clamp(TIMER_TICK, MAX_BACKGROUND_WAIT);
                        *shared
                            .background_blocked_until
                            .lock()
                            .expect("never poisoned") = Some(Instant::now() + wait);
                        tokio::time::sleep(wait).await;
                        continue 'queue;
                    }
                    // Another replica is learning the limits from the provider: ask again shortly,
                    // still holding the block, so one caller asks for all of this replica's.
                    tokio::time::sleep(lease.delay).await;
                    continue;
                }
                *block = Block::leased(&lease, asked_at, tokens);
            }
        }
    }

    /// Limits other replicas learned from the provider count as announced here too.
    fn learn_limits(&self, lease: &Lease) {
        let mut s = self.lock();
        s.announced_rpm = s.announced_rpm.or(lease.rpm);
        s.announced_tpm = s.announced_tpm.or(lease.tpm);
    }

    /// Books this call's turn on the local schedule, once the schedule is within
    /// `BOOKING_HORIZON`: the turn reflects the share as it is then, not as it was when the call
    /// started waiting. The booking queue is a tokio lock: callers past the horizon wait in it
    /// in order, and it is held across their sleep.
    async fn local_turn(&self, tokens: u64) -> Instant {
        let _queue = self.booking.lock().await;
        loop {
            let now = Instant::now();
            let earliest = {
                let s = self.lock();
                s.schedule.earliest(now, self.limits(&s))
            };
            if earliest <= now + BOOKING_HORIZON {
                return self.reserve(tokens, now);
            }
            tokio::time::sleep_until(earliest - BOOKING_HORIZON).await;
        }
    }

    /// Books the next start time for a call of `tokens` and returns it.
    fn reserve(&self, tokens: u64, now: Instant) -> Instant {
        let mut s = self.lock();
        let limits = self.limits(&s);
        s.schedule.reserve(tokens, now, limits)
    }

    /// Gives back what a call did not use of its estimate: `estimated` tokens were reserved,
    /// `used` were counted by the provider.
    pub fn settle(&self, estimated: u64, used: u64) {
        let unused = estimated.saturating_sub(used);
        if unused == 0 {
            return;
        }
        if let Some(shared) = &self.shared
            && shared.budget.may_send()
        {
            shared.refund.fetch_add(unused, Ordering::Relaxed);
            return;
        }
        let mut s = self.lock();
        let limits = self.limits(&s);
        s.schedule.give_back(unused, Instant::now(), limits);
    }

    /// The rates turns are booked at now.
    fn limits(&self, s: &PaceState) -> Limits {
        Limits {
            rpm: min_limit(self.configured_rpm, s.announced_rpm),
            tpm: min_limit(self.configured_tpm, s.announced_tpm),
            share: s.share,
        }
    }

    /// No limit configured and the provider announces none: nothing to share.
    fn is_unlimited(&self) -> bool {
        self.open.load(Ordering::Relaxed)
            && self.configured_rpm.is_none()
            && self.configured_tpm.is_none()
    }

    /// Calls waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The share of the known limits this pacer aims for now (0.98 at most; lower after 429s).
    pub fn share(&self) -> f64 {
        self.lock().share
    }

    /// Requests per second the pacer lets through now, when a request limit is known.
    pub fn request_rate(&self) -> Option<f64> {
        let s = self.lock();
        min_limit(self.configured_rpm, s.announced_rpm).map(|rpm| rpm as f64 * s.share / 60.0)
    }

    /// Tokens a second at the token limit (configured or announced) and the current share.
    pub fn token_rate(&self) -> Option<f64> {
        let s = self.lock();
        min_limit(self.configured_tpm, s.announced_tpm).map(|tpm| tpm as f64 * s.share / 60.0)
    }

    /// Learns from a response's headers; `rate_limited` when it was a 429 for rate, `answered`
    /// when the provider answered the call (2xx); `sent_at` when the call left.
    pub fn observe(
        &self,
        headers: &RateHeaders,
        rate_limited: bool,
        answered: bool,
        sent_at: Instant,
    ) {
        if answered && headers.limit_requests.is_none() && headers.limit_tokens.is_none() {
            self.open.store(true, Ordering::Relaxed);
        }
        if let Some(shared) = &self.shared
            && let (true, Some(wait)) = (rate_limited, headers.retry_after)
        {
            shared.budget.pause(wait);
        }
        let mut s = self.lock();
        s.announced_rpm = headers
            .limit_requests
            .filter(|r| *r > 0)
            .or(s.announced_rpm);
        s.announced_tpm = headers.limit_tokens.filter(|t| *t > 0).or(s.announced_tpm);
        let now = Instant::now();
        if rate_limited {
            if let Some(wait) = headers.retry_after {
                s.schedule.pause_until(now + wait);
            }
            // Only a call sent at the current share says the share is too high: the 429s of
            // calls sent before the last cut (a start-up burst, their retries) say nothing new.
            if s.last_share_cut
                .is_none_or(|at| sent_at >= at && now - at >= SHARE_CUT_COOLDOWN)
            {
                s.last_share_cut = Some(now);
                s.share_changed_at = now;
                s.share = (s.share * SHARE_CUT).max(MIN_SHARE);
                tracing::info!(
                    share = s.share,
                    "rate limited upstream: pacing at a smaller share of the limit"
                );
            }
        } else {
            let elapsed = (now - s.share_changed_at).as_secs_f64();
            s.share = (s.share + SHARE_GROWTH_PER_SECOND * elapsed).min(MAX_SHARE);
            s.share_changed_at = now;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PaceState> {
        self.state.lock().expect("pacer lock poisoned")
    }
}

/// Decrements `counter` when dropped, however the wait ends (a cancelled caller included).
fn scopeguard(counter: &AtomicUsize) -> impl Drop + '_ {
    struct Decrement<'a>(&'a AtomicUsize);
    impl Drop for Decrement<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Decrement(counter)
}

fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_limits_nobody_waits() {
        let p = Pacer::new(None, None);
        let now = Instant::now();
        assert_eq!(p.reserve(100, now), now);
        assert_eq!(p.reserve(100, now), now);
    }

    #[tokio::test]
    async fn a_call_that_need_not_wait_is_let_through_without_the_timer() {
        use futures::FutureExt;
        let p = Pacer::new(Some(6000), None);
        // The first call's turn is now: ready on the first poll, not at the timer's next tick.
        assert!(p.wait_turn(1).now_or_never().is_some());
        assert!(
            p.wait_turn(1).now_or_never().is_none(),
            "the second waits its 10 ms"
        );
    }

    #[test]
    fn spaces_calls_at_the_configured_rate_less_headroom() {
        let p = Pacer::new(Some(6000), None); // 100 a second
        let now = Instant::now();
        let starts: Vec<_> = (0..3).map(|_| p.reserve(1, now)).collect();
        let gap = (starts[2] - starts[1]).as_secs_f64();
        assert!((gap - 0.01 / MAX_SHARE).abs() < 1e-6, "{gap}");
    }

    #[test]
    fn learns_the_announced_limit_and_pauses_on_retry_after() {
        let p = Pacer::new(None, None);
        let headers = RateHeaders {
            limit_requests: Some(600),
            retry_after: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        p.observe(&headers, true, false, Instant::now());
        let now = Instant::now();
        let first = p.reserve(1, now);
        assert!(
            first >= now + Duration::from_millis(250),
            "paused by retry-after"
        );
        let second = p.reserve(1, now);
        assert!(
            (second - first).as_secs_f64() > 0.1,
            "paced at about 10 a second"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_reaches_calls_already_waiting_beyond_the_booking_horizon() {
        let p = std::sync::Arc::new(Pacer::new(Some(6000), None)); // 10.2 ms apart at 98%
        let started = Instant::now();
        let calls: Vec<_> = (0..40)
            .map(|_| {
                let p = p.clone();
                crate::tasks::spawn(async move {
                    p.wait_turn(1).await;
                    Instant::now()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        p.observe(&RateHeaders::default(), true, false, Instant::now()); // share -15%
        let mut last = started;
        for call in calls {
            last = last.max(call.await.unwrap());
        }
        // Booked all at once, 40 turns would end at 0.40 s whatever the cut; booked within
        // 100 ms of their turn, the 30 or so after the horizon go 12 ms apart.
        let took = (last - started).as_secs_f64();
        assert!(took > 0.44, "{took}");
    }

    #[test]
    fn token_rate_paces_large_calls() {
        let p = Pacer::new(None, Some(60_000)); // 1000 tokens a second
        let now = Instant::now();
        p.reserve(500, now);
        let second = p.reserve(500, now);
        assert!((second - now).as_secs_f64() > 0.5);
    }
}
