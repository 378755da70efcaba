//! The provider's rate limits as OpenAI enforces them: requests and tokens per minute, each a
//! token bucket holding one second's worth (limit/60) and refilled continuously. Hand-written
//! rather than `governor` because the simulator must report what is left and when it refills in
//! the `x-ratelimit-*` headers, which `governor` does not expose.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

#[derive(Debug)]
pub struct Bucket {
    /// Per minute, as configured and reported in `x-ratelimit-limit-*`.
    limit: u64,
    capacity: f64,
    per_second: f64,
    available: f64,
    refilled_at: Instant,
}

impl Bucket {
    pub fn per_minute(limit: u64) -> Self {
        let per_second = limit as f64 / 60.0;
        // At least one whole unit, or a limit under 60/min could never admit anything.
        let capacity = per_second.max(1.0);
        Self {
            limit,
            capacity,
            per_second,
            available: capacity,
            refilled_at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.available = (self.available + elapsed * self.per_second).min(self.capacity);
        self.refilled_at = now;
    }

    /// Whether `cost` fits now (without taking it), or how long until it will.
    pub fn check(&mut self, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let cost = cost.min(self.capacity);
        if self.available >= cost {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (cost - self.available) / self.per_second,
            ))
        }
    }

    pub fn take(&mut self, cost: f64) {
        self.available = (self.available - cost.min(self.capacity)).max(0.0);
    }

    /// Adds `x-ratelimit-{limit,remaining,reset}-{kind}` to `headers`.
    pub fn write_headers(&self, kind: &str, headers: &mut HeaderMap) {
        let until_full =
            Duration::from_secs_f64((self.capacity - self.available) / self.per_second);
        let mut put = |name: String, value: String| {
            headers.insert(
                HeaderName::try_from(name).expect("static header names are valid"),
                HeaderValue::try_from(value)
                    .expect("numbers and durations are valid header values"),
            );
        };
        put(format!("x-ratelimit-limit-{kind}"), self.limit.to_string());
        put(
            format!("x-ratelimit-remaining-{kind}"),
            (self.available.floor() as u64).to_string(),
        );
        put(
            format!("x-ratelimit-reset-{kind}"),
            format_reset(until_full),
        );
    }
}

/// OpenAI's duration style: `12ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_one_second_of_the_limit_and_refills_continuously() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(600); // 10 a second
        for _ in 0..10 {
            b.check(1.0, t0).unwrap();
            b.take(1.0);
        }
        let wait = b.check(1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(b.check(1.0, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn formats_resets_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(12)), "12ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
