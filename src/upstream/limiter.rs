//! One endpoint's ceiling on upstream calls in flight (each endpoint has its own, shared by every
//! batch of the process), adapted to what the provider takes:
//! AIMD on outcomes. It starts at the configured maximum (no ramp-up when nothing pushes back),
//! cuts by 10% on a 429 or a timeout (at most once per observed round trip, so one burst counts
//! once), and grows back by about one slot per round trip of successes. Waiters queue on a
//! `FairSemaphore`: a freed slot goes to the waiting batches in turn, so a small batch is not
//! held behind a large one's queue. Ours because no crate does AIMD on outcomes over a fair
//! semaphore.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::fair::{FairPermit, FairSemaphore};

const DECREASE: f64 = 0.9;
const MIN_COOLDOWN: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct AdaptiveLimiter {
    semaphore: FairSemaphore,
    state: Mutex<LimitState>,
    waiting: AtomicUsize,
    in_flight: AtomicUsize,
}

#[derive(Debug)]
struct LimitState {
    limit: f64,
    max: usize,
    /// Permits that exist (free or held): `limit` rounded down, less `debt` once paid.
    issued: usize,
    /// Permits to retire as they come back, after a cut larger than the free permits.
    debt: usize,
    last_cut: Option<Instant>,
    /// Smoothed latency of successful calls: the cooldown between two cuts.
    round_trip: Duration,
}

/// A point-in-time view, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterSnapshot {
    pub limit: usize,
    pub in_flight: usize,
    pub waiting: usize,
}

/// Why the limit was cut.
#[derive(Debug, Clone, Copy)]
pub enum Congestion {
    RateLimited,
    Timeout,
}

impl AdaptiveLimiter {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            semaphore: FairSemaphore::new(max),
            state: Mutex::new(LimitState {
                limit: max as f64,
                max,
                issued: max,
                debt: 0,
                last_cut: None,
                round_trip: MIN_COOLDOWN,
            }),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot, the waiting batches taking turns.
    pub async fn acquire(&self) -> Slot<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let waited = Counted(&self.waiting);
        let permit = self.semaphore.acquire().await;
        drop(waited);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Slot {
            permit: Some(permit),
            limiter: self,
        }
    }

    /// A call succeeded after `latency`: grow by about one slot per round trip of successes.
    pub fn on_success(&self, latency: Duration) {
        let mut s = self.lock();
        s.round_trip = s.round_trip.mul_f64(0.9) + latency.mul_f64(0.1);
        if s.limit < s.max as f64 {
            s.limit = (s.limit + 1.0 / s.limit).min(s.max as f64);
            self.resize(&mut s);
        }
    }

    /// The provider pushed back: cut by 10%, unless already cut within the last round trip.
    pub fn on_congestion(&self, why: Congestion) {
        let mut s = self.lock();
        let cooldown = s.round_trip.max(MIN_COOLDOWN);
        if s.last_cut.is_some_and(|at| at.elapsed() < cooldown) {
            return;
        }
        s.last_cut = Some(Instant::now());
        s.limit = (s.limit * DECREASE).max(1.0);
        self.resize(&mut s);
        tracing::info!(
            reason = ?why,
            limit = s.issued,
            in_flight = self.in_flight.load(Ordering::Relaxed),
            waiting = self.waiting.load(Ordering::Relaxed),
            "upstream concurrency limit cut"
        );
    }

    /// Calls per second this limit allows at the observed round trip: the endpoint's capacity
    /// when no rate limit is known.
    pub fn throughput(&self) -> f64 {
        let s = self.lock();
        s.issued.max(1) as f64 / s.round_trip.max(Duration::from_millis(1)).as_secs_f64()
    }

    pub fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            limit: self.lock().issued,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.state.lock().expect("limiter lock poisoned")
    }

    /// Brings the permits in line with `limit`: adds when it grew (paying off debt first),
    /// retires free permits when it shrank and owes the rest.
    fn resize(&self, s: &mut LimitState) {
        let target = s.limit.floor() as usize;
        if target > s.issued {
            let grow = target - s.issued;
            let repaid = grow.min(s.debt);
            s.debt -= repaid;
            self.semaphore.add_permits(grow - repaid);
        } else if target < s.issued {
            let shrink = s.issued - target;
            let retired = self.semaphore.forget_permits(shrink);
            s.debt += shrink - retired;
        }
        s.issued = target;
    }
}

/// Takes one off a counter when dropped: a waiter cancelled while queued stops counting too.
struct Counted<'c>(&'c AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One call's place under the limit; returned (or retired, after a cut) when dropped.
#[derive(Debug)]
pub struct Slot<'l> {
    permit: Option<FairPermit<'l>>,
    limiter: &'l AdaptiveLimiter,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::Relaxed);
        let permit = self
            .permit
            .take()
            .expect("a slot holds its permit until dropped");
        let mut s = self.limiter.lock();
        if s.debt > 0 {
            s.debt -= 1;
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cut_takes_effect_as_slots_come_back_and_successes_grow_it_again() {
        let limiter = AdaptiveLimiter::new(10);
        let held: Vec<_> = futures::future::join_all((0..10).map(|_| limiter.acquire())).await;
        limiter.on_congestion(Congestion::RateLimited);
        assert_eq!(limiter.snapshot().limit, 9);
        drop(held);
        assert_eq!(
            limiter.semaphore.available_permits(),
            9,
            "one permit retired on return"
        );

        limiter.on_congestion(Congestion::RateLimited);
        assert_eq!(
            limiter.snapshot().limit,
            9,
            "a second cut within the cooldown is ignored"
        );

        for _ in 0..20 {
            limiter.on_success(Duration::from_millis(1));
        }
        assert_eq!(
            limiter.snapshot().limit,
            10,
            "grows back, never past the maximum"
        );
        assert_eq!(limiter.semaphore.available_permits(), 10);
    }

    #[tokio::test]
    async fn never_cuts_below_one() {
        let limiter = AdaptiveLimiter::new(2);
        for _ in 0..50 {
            limiter.lock().last_cut = None;
            limiter.on_congestion(Congestion::Timeout);
        }
        assert_eq!(limiter.snapshot().limit, 1);
        let _slot = limiter.acquire().await;
        assert_eq!(limiter.snapshot().in_flight, 1);
    }
}
