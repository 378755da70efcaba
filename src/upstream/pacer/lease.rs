//! Turns from the budget every replica on one endpoint shares (`HNC_REDIS_URL`): a lease is a
//! block of calls spread over a short span, taken in one Redis round trip and handed out to this
//! replica's callers.
//!
//! Invariants (each has a test below):
//! - A block hands out at most its `calls` turns, `spacing` apart, in order.
//! - A turn whose moment has passed is dropped, never used late: a burst above the shared rate
//!   would follow.
//! - Where tokens are counted, a block never hands out more than it leased.
//! - One caller at a time asks Redis (the block's tokio lock is held across the round trip);
//!   callers that queued behind it are counted, and the next lease is sized for them.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use tokio::time::Instant;

use crate::coord::{Lease, SharedBudget};

/// A shared lease covers at most this much of the budget's schedule (and at most
/// `MAX_LEASE_CALLS` calls): long enough to take several calls per Redis round trip, short
/// enough that replicas interleave finely.
const LEASE_WINDOW: Duration = Duration::from_millis(50);
const MAX_LEASE_CALLS: u32 = 64;

/// The replica's side of a shared budget.
#[derive(Debug)]
pub(super) struct Shared {
    pub budget: SharedBudget,
    /// The calls leased and not yet handed out. A tokio lock: it is held across the lease's
    /// round trip, so one lease serves every caller that queued behind it.
    pub block: tokio::sync::Mutex<Block>,
    /// Callers waiting for the block: how many calls the next lease asks for.
    pub waiting: AtomicUsize,
    /// Tokens estimated and not used, given back with the next lease.
    pub refund: AtomicU64,
    /// Until when the budget refused this replica's job calls (booked ahead by interactive
    /// ones): further job calls wait for it before they take an upstream slot.
    pub background_blocked_until: std::sync::Mutex<Option<Instant>>,
}

/// Leased calls, spread evenly over the lease's span.
#[derive(Debug)]
pub(super) struct Block {
    start: Instant,
    spacing: Duration,
    next: u32,
    calls: u32,
    tokens_left: u64,
    /// Whether tokens are counted (a token limit is known).
    counts_tokens: bool,
    /// When it was leased and how many of its turns were taken: the replica's own demand,
    /// which sizes the next lease.
    leased_at: Instant,
    taken: u32,
}

impl Block {
    pub fn empty() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            spacing: Duration::ZERO,
            next: 0,
            calls: 0,
            tokens_left: 0,
            counts_tokens: false,
            leased_at: now,
            taken: 0,
        }
    }

    /// Calls a second this replica took turns at while the block lasted.
    pub fn demand(&self, now: Instant) -> f64 {
        let elapsed = (now - self.leased_at).as_secs_f64().max(1e-3);
        f64::from(self.taken) / elapsed
    }

    /// The next leased turn for a call of `tokens`, if the block still has one. Turns already
    /// in the past are dropped (not used late, which would burst above the shared rate).
    pub fn take(&mut self, tokens: u64, now: Instant) -> Option<Instant> {
        if !self.spacing.is_zero() && now > self.start {
            let passed = ((now - self.start).as_secs_f64() / self.spacing.as_secs_f64()) as u32;
            self.next = self.next.max(passed);
        }
        if self.next >= self.calls || (self.counts_tokens && tokens > self.tokens_left) {
            return None;
        }
        let turn = self.start + self.spacing * self.next;
        self.next += 1;
        self.taken += 1;
        self.tokens_left = self.tokens_left.saturating_sub(tokens);
        Some(turn.max(now))
    }
}

impl Shared {
    pub fn new(budget: SharedBudget) -> Self {
        Self {
            budget,
            block: tokio::sync::Mutex::new(Block::empty()),
            waiting: AtomicUsize::new(0),
            refund: AtomicU64::new(0),
            background_blocked_until: std::sync::Mutex::new(None),
        }
    }
}

/// How many calls to lease: what this replica takes in `LEASE_WINDOW` at its recent `demand`
/// (calls a second), at least the callers `waiting` now, and at most `LEASE_WINDOW` of the whole
/// budget's rate (`per_second`, when a limit is known), between 1 and `MAX_LEASE_CALLS`.
pub(super) fn lease_size(demand: f64, waiting: u32, per_second: Option<f64>) -> u32 {
    let window = LEASE_WINDOW.as_secs_f64();
    let by_budget = per_second.map_or(1, |rate| (rate * window) as u32);
    let wanted = ((demand * window).ceil() as u32).max(waiting);
    wanted.min(by_budget).clamp(1, MAX_LEASE_CALLS)
}

impl Block {
    /// The turns of `lease`, asked for at `asked_at` for calls of `tokens` each.
    pub fn leased(lease: &Lease, asked_at: Instant, tokens: u64) -> Self {
        Self {
            start: asked_at + lease.delay,
            spacing: lease.span / lease.calls,
            next: 0,
            calls: lease.calls,
            tokens_left: tokens * u64::from(lease.calls),
            counts_tokens: lease.tpm.is_some(),
            leased_at: asked_at,
            taken: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(calls: u32, spacing_ms: u64, tokens_left: Option<u64>) -> (Block, Instant) {
        let now = Instant::now();
        let block = Block {
            start: now,
            spacing: Duration::from_millis(spacing_ms),
            next: 0,
            calls,
            tokens_left: tokens_left.unwrap_or(0),
            counts_tokens: tokens_left.is_some(),
            leased_at: now,
            taken: 0,
        };
        (block, now)
    }

    #[test]
    fn a_block_hands_out_its_turns_in_order_and_no_more() {
        let (mut b, now) = block(4, 10, None);
        let turns: Vec<Instant> = std::iter::from_fn(|| b.take(1, now)).collect();
        let gaps: Vec<u128> = turns
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(turns.len(), 4);
        assert_eq!(gaps, [10, 10, 10]);
    }

    #[test]
    fn a_turn_whose_moment_passed_is_dropped_not_used_late() {
        let (mut b, now) = block(10, 10, None);
        let later = now + Duration::from_millis(35);
        // At 35 ms the turns at 0, 10 and 20 ms are gone; the one at 30 ms is now.
        let turn = b.take(1, later).unwrap();
        assert_eq!(turn, later, "the current turn starts now, not at 30 ms");
        let next = b.take(1, later).unwrap();
        assert_eq!(next - now, Duration::from_millis(40));
        let rest = std::iter::from_fn(|| b.take(1, later)).count();
        assert_eq!(
            rest, 5,
            "turns 5..9 remain: 0..2 were dropped, not used late"
        );
    }

    #[test]
    fn counted_tokens_never_exceed_the_lease() {
        let (mut b, now) = block(10, 1, Some(1_000));
        assert!(b.take(600, now).is_some());
        assert!(b.take(600, now).is_none(), "400 left");
        assert!(b.take(400, now).is_some());
        let (mut uncounted, now) = block(2, 1, None);
        assert!(
            uncounted.take(1_000_000, now).is_some(),
            "no token limit known"
        );
    }

    #[test]
    fn a_lease_is_sized_by_demand_and_waiting_callers_within_the_budgets_window() {
        // 1000 calls a second budget: at most 50 in a 50 ms window.
        assert_eq!(
            lease_size(200.0, 1, Some(1000.0)),
            10,
            "this replica's demand"
        );
        assert_eq!(
            lease_size(0.0, 30, Some(1000.0)),
            30,
            "the callers waiting now"
        );
        assert_eq!(
            lease_size(10_000.0, 1, Some(1000.0)),
            50,
            "the budget's window"
        );
        assert_eq!(lease_size(1e6, 1, Some(1e6)), MAX_LEASE_CALLS);
        assert_eq!(lease_size(0.0, 0, None), 1, "at least one");
    }

    #[test]
    fn the_demand_is_turns_taken_over_time_leased() {
        let (mut b, now) = block(100, 1, None);
        for _ in 0..20 {
            b.take(1, now);
        }
        let demand = b.demand(now + Duration::from_millis(100));
        assert!((demand - 200.0).abs() < 1e-6, "{demand}");
    }
}
