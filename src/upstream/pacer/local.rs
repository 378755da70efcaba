//! The local schedule: when this replica's next call may start by the request rate, by the
//! token rate and after a `retry-after` pause. Used alone, and whenever the shared budget's
//! Redis does not answer.
//!
//! Invariants (each has a test below):
//! - A turn is never earlier than a turn booked before it: calls start in booking order.
//! - Two turns by the request rate are at least one request's interval apart at the share they
//!   were booked at; by the token rate, the interval of the earlier call's tokens.
//! - No turn starts before the pause.
//! - Tokens given back move the token schedule earlier, never before now.
//!
//! One `std::sync::Mutex` holds it (in `Pacer`), never across an await.

use std::time::Duration;

use tokio::time::Instant;

/// The rates a turn is booked at: the lower of configured and announced limits, and the share.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub share: f64,
}

#[derive(Debug)]
pub(super) struct Schedule {
    /// Earliest start of the next call by the request rate and by the token rate.
    next_by_requests: Instant,
    next_by_tokens: Instant,
    paused_until: Instant,
}

impl Schedule {
    pub fn new(now: Instant) -> Self {
        Self {
            next_by_requests: now,
            next_by_tokens: now,
            paused_until: now,
        }
    }

    /// The earliest a call could start if it booked now.
    pub fn earliest(&self, now: Instant, limits: Limits) -> Instant {
        let mut earliest = now.max(self.paused_until);
        if limits.rpm.is_some() {
            earliest = earliest.max(self.next_by_requests);
        }
        if limits.tpm.is_some() {
            earliest = earliest.max(self.next_by_tokens);
        }
        earliest
    }

    /// Books the next start for a call of `tokens` and returns it.
    pub fn reserve(&mut self, tokens: u64, now: Instant, limits: Limits) -> Instant {
        let mut start = now.max(self.paused_until);
        if let Some(rpm) = limits.rpm {
            start = start.max(self.next_by_requests);
            self.next_by_requests = start + interval(1.0, rpm, limits.share);
        }
        if let Some(tpm) = limits.tpm {
            start = start.max(self.next_by_tokens);
            self.next_by_tokens = start + interval(tokens as f64, tpm, limits.share);
        }
        start
    }

    /// No call starts before `until`.
    pub fn pause_until(&mut self, until: Instant) {
        self.paused_until = self.paused_until.max(until);
    }

    /// `unused` tokens of a call's estimate were not spent: the token schedule moves back by
    /// their interval, but not before now.
    pub fn give_back(&mut self, unused: u64, now: Instant, limits: Limits) {
        if let Some(tpm) = limits.tpm {
            let back = interval(unused as f64, tpm, limits.share);
            self.next_by_tokens = self
                .next_by_tokens
                .checked_sub(back)
                .unwrap_or(now)
                .max(now);
        }
    }
}

/// Time one call of `cost` units takes up under a per-minute `limit` used at `share`.
pub(super) fn interval(cost: f64, per_minute: u64, share: f64) -> Duration {
    Duration::from_secs_f64(cost * 60.0 / (per_minute as f64 * share))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_SECOND_100: Limits = Limits {
        rpm: Some(6000),
        tpm: None,
        share: 1.0,
    };

    #[test]
    fn turns_never_go_back_and_keep_their_interval() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        let mut last = now;
        for i in 0..50 {
            // Callers arrive at jittered moments, some before the schedule's next turn.
            let at = now + Duration::from_micros(i * 3_000 % 7_000);
            let share = if i < 25 { 1.0 } else { 0.5 };
            let start = schedule.reserve(
                1,
                at,
                Limits {
                    share,
                    ..PER_SECOND_100
                },
            );
            if i > 0 {
                let least = interval(1.0, 6000, if i <= 25 { 1.0 } else { 0.5 });
                assert!(start >= last + least, "turn {i} within its interval");
            }
            assert!(start >= at, "never before the caller came");
            last = start;
        }
    }

    #[test]
    fn no_turn_starts_in_a_pause() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        schedule.pause_until(now + Duration::from_millis(300));
        schedule.pause_until(now + Duration::from_millis(100)); // a shorter pause does not shorten it
        let unlimited = Limits {
            rpm: None,
            tpm: None,
            share: 1.0,
        };
        assert_eq!(
            schedule.reserve(1, now, unlimited),
            now + Duration::from_millis(300)
        );
        assert_eq!(
            schedule.earliest(now, unlimited),
            now + Duration::from_millis(300)
        );
    }

    #[test]
    fn tokens_given_back_move_the_schedule_earlier_but_not_before_now() {
        let limits = Limits {
            rpm: None,
            tpm: Some(60_000), // 1000 tokens a second
            share: 1.0,
        };
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        schedule.reserve(800, now, limits);
        assert_eq!(
            schedule.earliest(now, limits),
            now + Duration::from_millis(800)
        );
        schedule.give_back(300, now, limits);
        assert_eq!(
            schedule.earliest(now, limits),
            now + Duration::from_millis(500)
        );
        schedule.give_back(10_000, now, limits);
        assert_eq!(schedule.earliest(now, limits), now, "not before now");
    }
}
